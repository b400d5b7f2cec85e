"""Equivariant linear maps between irreps: the maths shared by every ``Linear`` module.

An equivariant linear map can only connect input and output blocks that carry the *same* irrep (Schur's lemma), and
on such a pair it acts as a plain ``(mul_in, mul_out)`` matrix applied identically to every component of the irrep.
:class:`FunctionalLinear` lists these connections ("instructions"), fixes their normalisation and applies them to an
:class:`~e3nn_fast.irreps_array.IrrepsArray` given a list of weight matrices.

The second half of this file is the parameter plumbing common to the haiku and flax ``Linear`` modules: how parameters
are named (``'w[i_in,i_out] <in>,<out>'`` and ``'b[i_out] <out>'``, as in e3nn-jax, so checkpoints are interchangeable)
and the four ways weights reach the map (shared, indexed per species, mixed from input scalars, mixed per channel).
Both frameworks call :func:`linear_module_call` with their own ``get_parameter`` callback; nothing else differs.

Normalisation conventions (identical to e3nn-jax, so numbers match):

* ``path_normalization`` ``p`` (``"element"`` = 0, ``"path"`` = 1) sets the fan-in ``alpha`` of an instruction as
  ``1 / (mul_in ** p * sum_{paths to the same output} mul_in' ** (1 - p))``.
* ``gradient_normalization`` ``g`` splits ``sqrt(alpha)`` between a constant factor in the forward pass
  (``path_weight = sqrt(alpha) ** g``) and the initialisation scale (``weight_std = sqrt(alpha) ** (1 - g)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast import dispatch
from e3nn_fast._static_int import static_int
from e3nn_fast.configuration import config
from e3nn_fast.errors import InvalidValueError
from e3nn_fast.graph import check_indices_in_range
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array, from_chunks, split_by_sizes
from e3nn_fast.path_description import describe_linear

__all__ = [
    "Instruction",
    "FunctionalLinear",
    "LinearOptions",
    "linear_module_call",
    "linear_vanilla",
    "linear_indexed",
    "linear_mixed",
    "linear_mixed_per_channel",
    "parameter_name",
    "parse_gradient_normalization",
    "parse_path_normalization",
    "validate_inputs_for_instructions",
]

# ``get_parameter(name, shape, init_std, dtype)`` returns the (possibly freshly initialised) parameter array.
GetParameter = Callable[[str, Tuple[int, ...], Any, Any], jax.Array]

_NORMALIZATION_NAMES = {"element": 0.0, "path": 1.0}


class Instruction(NamedTuple):
    """One connection of a :class:`FunctionalLinear`.

    Attributes:
        i_in: index of the input block in ``irreps_in``, or ``-1`` for a bias (a constant added to the output).
        i_out: index of the output block in ``irreps_out``.
        path_shape: shape of the weight: ``(mul_in, mul_out)``, or ``(irreps_out[i_out].dim,)`` for a bias.
        path_weight: constant multiplying the path in the forward pass.
        weight_std: standard deviation used to initialise the weight (0 for biases: they start at zero).
    """

    i_in: int
    i_out: int
    path_shape: tuple
    path_weight: float
    weight_std: float


def _parse_normalization(value: Union[str, float, None], key: str) -> float:
    """Turn a normalisation setting into its exponent in [0, 1]; ``None`` reads the global default ``key``."""
    if value is None:
        value = config(key)
    if isinstance(value, str):
        if value not in _NORMALIZATION_NAMES:
            raise ValueError(f"{key} must be 'element', 'path' or a float, got {value!r}")
        return _NORMALIZATION_NAMES[value]
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{key} must be 'element', 'path' or a float, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{key} must be 'element', 'path' or a float, got {value!r}") from error


def parse_path_normalization(value: Union[str, float, None]) -> float:
    """``path_normalization`` as a number: ``"element"`` -> 0, ``"path"`` -> 1, ``None`` -> global default."""
    return _parse_normalization(value, "path_normalization")


def parse_gradient_normalization(value: Union[str, float, None]) -> float:
    """``gradient_normalization`` as a number: ``"element"`` -> 0, ``"path"`` -> 1, ``None`` -> global default."""
    return _parse_normalization(value, "gradient_normalization")


def _to_irreps(irreps: Any, what: str) -> Irreps:
    """``Irreps(irreps)`` with an error message that says which argument was malformed."""
    try:
        return Irreps(irreps)
    except (ValueError, TypeError, AssertionError) as error:
        raise ValueError(f"{what}: invalid irreps {irreps!r} ({error})") from error


def _all_connections(irreps_in: Irreps, irreps_out: Irreps) -> List[Tuple[int, int]]:
    """Every (input block, output block) pair carrying the same irrep, in input-major order."""
    return [
        (i_in, i_out)
        for i_in, (_, ir_in) in enumerate(irreps_in)
        for i_out, (_, ir_out) in enumerate(irreps_out)
        if ir_in == ir_out
    ]


def _check_connections(connections: Sequence, irreps_in: Irreps, irreps_out: Irreps) -> List[Tuple[int, int]]:
    """Validate user instructions: pairs of in-range block indices that carry the same irrep."""
    checked = []
    for connection in connections:
        try:
            i_in, i_out = (int(i) for i in connection)
        except (TypeError, ValueError) as error:
            raise ValueError(f"FunctionalLinear: instruction {connection!r} is not a pair (i_in, i_out)") from error
        if not 0 <= i_in < len(irreps_in):
            raise ValueError(f"FunctionalLinear: instruction {connection!r}: i_in out of range for {irreps_in}")
        if not 0 <= i_out < len(irreps_out):
            raise ValueError(f"FunctionalLinear: instruction {connection!r}: i_out out of range for {irreps_out}")
        if irreps_in[i_in].ir != irreps_out[i_out].ir:
            raise ValueError(
                f"FunctionalLinear: instruction {connection!r} connects {irreps_in[i_in].ir} to "
                f"{irreps_out[i_out].ir}; a linear map can only connect identical irreps"
            )
        checked.append((i_in, i_out))
    return checked


def _bias_flags(biases: Union[bool, Sequence[bool], None], irreps_out: Irreps) -> List[bool]:
    """One flag per output block; ``True`` means scalar outputs (only they can carry a bias) get one."""
    if biases is None:
        return [False] * len(irreps_out)
    if isinstance(biases, (bool, np.bool_)):
        return [bool(biases) and ir.is_scalar() for _, ir in irreps_out]
    biases = [bool(b) for b in biases]
    # e3nn-jax asserts on both checks below, hence the AssertionError-compatible class.
    if len(biases) != len(irreps_out):
        raise InvalidValueError(
            f"FunctionalLinear: biases has {len(biases)} entries but irreps_out {irreps_out} has {len(irreps_out)} "
            "blocks; give one flag per output block, or biases=True for every scalar block"
        )
    for flag, (mul, ir) in zip(biases, irreps_out):
        if flag and not ir.is_scalar():
            raise InvalidValueError(
                f"FunctionalLinear: a bias on {mul}x{ir} would break equivariance (only 0e blocks can take one)"
            )
    return biases


def _fit_chunk(path: jax.Array, shape: Tuple[int, ...]) -> jax.Array:
    """Bring one path's contribution to the output chunk shape (broadcast leading axes, or reshape a flat bias)."""
    if path.shape[-2:] == shape[-2:]:
        return jnp.broadcast_to(path, shape)
    return path.reshape(shape)


def _result_dtype(*arrays: Any) -> jnp.dtype:
    """dtype of ``sum(sum(x) for x in leaves)``: JAX's promotion of the given arrays (float32 if there are none)."""
    leaves = jax.tree_util.tree_leaves(arrays)
    if not leaves:
        return jnp.dtype(jnp.float32)
    return jax.eval_shape(lambda xs: sum(jnp.sum(x) for x in xs), leaves).dtype


def _bias_chunk(irreps_out: Irreps, ins: Instruction, w: jax.Array) -> jax.Array:
    """A bias instruction's contribution: biases only exist on scalars, so the flat ``(mul_out,)`` vector is the
    ``(mul_out, 1)`` chunk."""
    mul_out, ir_out = irreps_out[ins.i_out]
    bias = w.reshape(w.shape[:-1] + (mul_out, ir_out.dim))
    return bias if ins.path_weight == 1.0 else ins.path_weight * bias


class FunctionalLinear:
    """Equivariant linear map ``irreps_in -> irreps_out`` whose weights are passed at call time.

    Args:
        irreps_in: input irreps.
        irreps_out: output irreps.
        instructions: pairs ``(i_in, i_out)`` of blocks to connect; default: every pair with the same irrep.
        biases: ``True`` to add a bias on every scalar (``0e``) output, or one flag per output block.
        path_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; default ``config("path_normalization")``.
        gradient_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; default
            ``config("gradient_normalization")``.

    Attributes:
        instructions: the list of :class:`Instruction`, connections first, then biases.
        output_mask: boolean array of size ``irreps_out.dim``, true where some instruction can write.
    """

    irreps_in: Irreps
    irreps_out: Irreps
    instructions: List[Instruction]
    output_mask: jax.Array

    def __init__(
        self,
        irreps_in: Irreps,
        irreps_out: Irreps,
        instructions: Optional[List[Tuple[int, int]]] = None,
        biases: Optional[Union[List[bool], bool]] = None,
        path_normalization: Union[str, float] = None,
        gradient_normalization: Union[str, float] = None,
    ):
        path_normalization = parse_path_normalization(path_normalization)
        gradient_normalization = parse_gradient_normalization(gradient_normalization)
        irreps_in = _to_irreps(irreps_in, "FunctionalLinear irreps_in")
        irreps_out = _to_irreps(irreps_out, "FunctionalLinear irreps_out")

        if instructions is None:
            connections = _all_connections(irreps_in, irreps_out)
        else:
            connections = _check_connections(instructions, irreps_in, irreps_out)

        self.irreps_in = irreps_in
        self.irreps_out = irreps_out
        self.instructions = self._weight_instructions(connections, path_normalization, gradient_normalization)
        self.instructions += [
            Instruction(i_in=-1, i_out=i_out, path_shape=(mul_ir.dim,), path_weight=1.0, weight_std=0.0)
            for i_out, (flag, mul_ir) in enumerate(zip(_bias_flags(biases, irreps_out), irreps_out))
            if flag
        ]
        self.output_mask = self._output_mask()

    def _weight_instructions(
        self, connections: List[Tuple[int, int]], path_normalization: float, gradient_normalization: float
    ) -> List[Instruction]:
        """Instructions for the connections, with the fan-in normalisation described in the module docstring."""
        mul_in = [self.irreps_in[i_in].mul for i_in, _ in connections]

        def fan_in(k: int) -> float:
            # mul_in ** p * sum over paths into the same output of mul_in' ** (1 - p); p=0: total fan-in, p=1: #paths
            i_out = connections[k][1]
            x = mul_in[k] ** path_normalization * sum(
                mul_in[j] ** (1.0 - path_normalization) for j, (_, o) in enumerate(connections) if o == i_out
            )
            return 1 / x if x > 0 else 1.0

        instructions = []
        for k, (i_in, i_out) in enumerate(connections):
            alpha = fan_in(k)
            instructions.append(
                Instruction(
                    i_in=i_in,
                    i_out=i_out,
                    path_shape=(self.irreps_in[i_in].mul, self.irreps_out[i_out].mul),
                    path_weight=math.sqrt(alpha) ** gradient_normalization,
                    weight_std=math.sqrt(alpha) ** (1.0 - gradient_normalization),
                )
            )
        return instructions

    def _output_mask(self) -> jax.Array:
        """Which output components can be non-zero (reached by an instruction with a non-empty weight)."""
        written = {ins.i_out for ins in self.instructions if 0 not in ins.path_shape}
        mask = np.zeros(self.irreps_out.dim, dtype=bool)
        for i_out, s in enumerate(self.irreps_out.slices()):
            mask[s] = i_out in written
        with jax.ensure_compile_time_eval():
            return jnp.asarray(mask)

    @property
    def num_weights(self) -> int:
        """Total number of scalar weights (connections and biases)."""
        return int(sum(math.prod(ins.path_shape) for ins in self.instructions))

    def split_weights(self, weights: jax.Array) -> List[jax.Array]:
        """Cut a flat vector of ``num_weights`` entries into one array of ``path_shape`` per instruction."""
        weights = jnp.asarray(weights)
        if weights.shape != (self.num_weights,):
            raise ValueError(
                f"FunctionalLinear ({self.irreps_in} -> {self.irreps_out}): flat weights must have shape "
                f"({self.num_weights},), got {weights.shape}"
            )
        sizes = [math.prod(ins.path_shape) for ins in self.instructions]
        pieces = split_by_sizes(weights, sizes, 0, jnp)
        return [piece.reshape(ins.path_shape) for piece, ins in zip(pieces, self.instructions)]

    def _weight_list(self, ws: Union[List[jax.Array], jax.Array], batch_ndim: Optional[int]) -> List[jax.Array]:
        """Normalise ``ws`` to one array per instruction and check shapes (``batch_ndim=None``: any leading axes)."""
        if isinstance(ws, Mapping):
            raise TypeError(
                f"FunctionalLinear ({self.irreps_in} -> {self.irreps_out}): weights must be a list with one array per "
                f"instruction (in the order of .instructions) or one flat array of {self.num_weights} numbers, got a "
                f"dict with keys {list(ws)[:4]}; for module parameters pass "
                "[params[parameter_name(lin, ins)] for ins in lin.instructions]"
            )
        if not isinstance(ws, (list, tuple)):
            return self.split_weights(ws)
        if len(ws) != len(self.instructions):
            raise ValueError(
                f"FunctionalLinear ({self.irreps_in} -> {self.irreps_out}): expected {len(self.instructions)} weight "
                f"arrays (one per instruction), got {len(ws)}"
            )
        ws = [jnp.asarray(w) for w in ws]
        for ins, w in zip(self.instructions, ws):
            n = len(ins.path_shape)
            tail_ok = w.ndim >= n and w.shape[w.ndim - n :] == tuple(ins.path_shape)
            lead_ok = batch_ndim is None or w.ndim == n + batch_ndim
            if not (tail_ok and lead_ok):
                raise ValueError(
                    f"FunctionalLinear: weight for instruction {ins.i_in}->{ins.i_out} must have shape "
                    f"{ins.path_shape}, got {w.shape}"
                )
        return ws

    def _check_input(self, input: IrrepsArray) -> IrrepsArray:
        """Accept an IrrepsArray whose irreps are a regrouping-free rechunking of ``irreps_in``."""
        if not isinstance(input, IrrepsArray):
            raise TypeError(f"FunctionalLinear expects an IrrepsArray input, got {type(input).__name__}")
        if input.irreps.simplify() != self.irreps_in.simplify():  # e3nn-jax asserts (in rechunk)
            raise InvalidValueError(
                f"FunctionalLinear: input irreps {input.irreps} are incompatible with irreps_in {self.irreps_in}"
            )
        return input.rechunk(self.irreps_in)

    def _paths(self, ws: List[jax.Array], input: IrrepsArray) -> List[Optional[jax.Array]]:
        """Each instruction's contribution, shaped ``(..., mul_out, ir_out.dim)`` (``None`` for a zero input block).

        Weights may carry leading axes that broadcast against the input's leading axes.
        """
        paths = []
        for ins, w in zip(self.instructions, ws):
            if ins.i_in == -1:
                paths.append(_bias_chunk(self.irreps_out, ins, w))
                continue
            x = input.chunks[ins.i_in]
            if x is None:
                paths.append(None)
                continue
            # The constant goes into the contraction (one fused op, applied to the small weight, not the output).
            # As a weakly typed scalar it promotes like a Python float: it never changes the result dtype.
            spec = ",uw,...ui->...wi" if w.ndim == 2 else ",...uw,...ui->...wi"
            paths.append(jnp.einsum(spec, jnp.asarray(ins.path_weight), w, x))
        return paths

    def aggregate_paths(
        self, paths: List[Optional[jax.Array]], output_shape: Tuple[int, ...], output_dtype
    ) -> IrrepsArray:
        """Sum the paths landing on each output block into an IrrepsArray of leading shape ``output_shape``.

        Output blocks that receive nothing (or only ``None``) become zero chunks.
        """
        output_shape = tuple(output_shape)
        chunks = []
        for i_out, (mul, ir) in enumerate(self.irreps_out):
            shape = output_shape + (mul, ir.dim)
            terms = [
                _fit_chunk(p, shape)
                for ins, p in zip(self.instructions, paths)
                if ins.i_out == i_out and p is not None
            ]
            chunk = None
            for term in terms:
                chunk = term if chunk is None else chunk + term
            chunks.append(chunk)
        # output_dtype only types an all-zero output; otherwise the computed chunks' (promoted) dtype wins.
        return from_chunks(self.irreps_out, chunks, output_shape, output_dtype)

    def apply(self, ws: Union[List[jax.Array], jax.Array], input: IrrepsArray) -> IrrepsArray:
        """Like :meth:`__call__`, but broadcasting: ``input`` of shape ``(..., irreps_in.dim)`` and weights of shape
        ``(..., *path_shape)`` whose leading axes broadcast against the input's."""
        input = self._check_input(input)
        ws = self._weight_list(ws, batch_ndim=None)
        lead_shapes = [input.shape[:-1]]
        lead_shapes += [w.shape[: w.ndim - len(ins.path_shape)] for ins, w in zip(self.instructions, ws)]
        try:
            output_shape = jnp.broadcast_shapes(*lead_shapes)
        except ValueError as error:
            raise ValueError(
                f"FunctionalLinear: leading shapes of input and weights do not broadcast: {lead_shapes}"
            ) from error
        return self._evaluate(ws, input, output_shape)

    def __call__(self, ws: Union[List[jax.Array], jax.Array], input: IrrepsArray) -> IrrepsArray:
        """Apply the map to a single (unbatched) input of shape ``(irreps_in.dim,)``.

        Args:
            ws: one array of ``path_shape`` per instruction, or a flat vector of ``num_weights`` entries.
            input: IrrepsArray with irreps equivalent to ``irreps_in`` (same irreps up to chunking).

        Use ``jax.vmap`` (or :meth:`apply`) for batches.
        """
        input = self._check_input(input)
        if input.ndim != 1:
            raise ValueError(
                f"FunctionalLinear.__call__ takes one unbatched input of shape ({self.irreps_in.dim},), got shape "
                f"{input.shape}; for leading (batch) axes use .apply(ws, input), which broadcasts, or jax.vmap"
            )
        ws = self._weight_list(ws, batch_ndim=0)
        return self._evaluate(ws, input, input.shape[:-1])

    def _evaluate(self, ws: List[jax.Array], input: IrrepsArray, output_shape: Tuple[int, ...]) -> IrrepsArray:
        """The map, by the executor the dispatcher picks (op ``"linear"``)."""
        size = dispatch.problem_size(*output_shape, self.irreps_out.dim)
        return dispatch.executor("linear", size=size)(self, ws, input, output_shape)

    def description(self):
        """The weighted instructions as a :class:`~e3nn_fast.path_description.TensorProductDescription` with the
        constant scalar ``1x0e`` as second input (what the tensor-product kernels execute)."""
        connections = tuple((ins.i_in, ins.i_out, ins.path_weight) for ins in self.instructions if ins.i_in >= 0)
        return describe_linear(self.irreps_in, self.irreps_out, connections)

    def matrix(self, ws: Union[List[jax.Array], jax.Array]) -> jax.Array:
        """Dense matrix ``M`` of shape ``(irreps_in.dim, irreps_out.dim)`` such that ``output = input @ M``.

        Only defined without biases (a bias makes the map affine).
        """
        if any(ins.i_in == -1 for ins in self.instructions):
            # e3nn-jax asserts here, hence the AssertionError-compatible class.
            raise InvalidValueError(
                "FunctionalLinear.matrix: the map has biases, so it is affine and has no matrix; build the "
                "FunctionalLinear without biases to get the matrix of its linear part"
            )
        ws = self._weight_list(ws, batch_ndim=0)
        dtype = _result_dtype(ws)
        output = jnp.zeros((self.irreps_in.dim, self.irreps_out.dim), dtype)
        slices_in, slices_out = self.irreps_in.slices(), self.irreps_out.slices()
        for ins, w in zip(self.instructions, ws):
            mul_in, ir = self.irreps_in[ins.i_in]
            mul_out = self.irreps_out[ins.i_out].mul
            # Components are laid out mul-major, so the block is kron(w, identity on the irrep).
            block = jnp.einsum("uw,ij->uiwj", w, jnp.eye(ir.dim, dtype=dtype))
            block = block.reshape(mul_in * ir.dim, mul_out * ir.dim)
            output = output.at[slices_in[ins.i_in], slices_out[ins.i_out]].add(ins.path_weight * block)
        return output

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out}, "
            f"{len(self.instructions)} instructions, {self.num_weights} weights)"
        )


# --------------------------------------------------------------------------------------------------------------------
# Executors of the dispatcher's op "linear".  The reference is the per-instruction einsum above (on CPU it is also the
# fastest: one small matrix product per instruction).  The kernel executors run the weighted instructions as one
# tensor product with the constant scalar 1 (:meth:`FunctionalLinear.description`), i.e. the fully connected
# kernels, and add the biases as they are.


def _linear_reference(lin: FunctionalLinear, ws: List[jax.Array], input: IrrepsArray, output_shape) -> IrrepsArray:
    return lin.aggregate_paths(lin._paths(ws, input), output_shape, input.dtype)


def _linear_by_tensor_product(executor_name: str):
    """The linear executor that hands the weighted instructions to the ``executor_name`` tensor-product executor."""

    def run(lin: FunctionalLinear, ws: List[jax.Array], input: IrrepsArray, output_shape) -> IrrepsArray:
        weighted = [(ins, w) for ins, w in zip(lin.instructions, ws) if ins.i_in >= 0]
        bias_paths = [_bias_chunk(lin.irreps_out, ins, w) if ins.i_in == -1 else None
                      for ins, w in zip(lin.instructions, ws)]
        out = lin.aggregate_paths(bias_paths, output_shape, input.dtype)
        if not weighted:
            return out
        # weights (..., mul_in, mul_out) -> (..., mul_in, 1, mul_out): the uvw layout with mul2 = 1
        weights = [w[..., :, None, :] for _, w in weighted]
        one = jnp.ones((1, 1), input.dtype)
        chunks1 = [jnp.broadcast_to(c, output_shape + c.shape[-2:]) if c is not None else None for c in input.chunks]
        run_tp = dispatch.implementation("tensor_product", executor_name)
        chunks = run_tp(lin.description(), weights, chunks1, [one])
        products = from_chunks(lin.irreps_out, chunks, output_shape, input.dtype)
        return IrrepsArray(lin.irreps_out, out.array + products.array)

    return run


dispatch.register("linear", "reference", _linear_reference)
dispatch.register("linear", "pallas", _linear_by_tensor_product("pallas"))
dispatch.register("linear", "pallas-interpret", _linear_by_tensor_product("pallas-interpret"))


# --------------------------------------------------------------------------------------------------------------------
# Parameter plumbing shared by e3nn_fast.haiku.Linear and e3nn_fast.flax.Linear.
# Every helper asks ``get_parameter`` for one array per instruction, in instruction order (haiku draws its PRNG keys
# in call order, so the order is part of the checkpoint format), then applies the map with broadcasting.


def parameter_name(lin: FunctionalLinear, ins: Instruction) -> str:
    """e3nn-jax's parameter name for an instruction, e.g. ``'w[0,0] 5x0e,1x0e'`` or ``'b[0] 2x0e'``."""
    if ins.i_in == -1:
        return f"b[{ins.i_out}] {lin.irreps_out[ins.i_out]}"
    return f"w[{ins.i_in},{ins.i_out}] {lin.irreps_in[ins.i_in]},{lin.irreps_out[ins.i_out]}"


def _get_weights(
    lin: FunctionalLinear, get_parameter: GetParameter, lead: Tuple[int, ...], dtype, std_scale: Any = 1.0
) -> List[jax.Array]:
    """One parameter per instruction, of shape ``lead + path_shape``, initialised with ``std_scale * weight_std``."""
    return [
        get_parameter(parameter_name(lin, ins), lead + tuple(ins.path_shape), std_scale * ins.weight_std, dtype)
        for ins in lin.instructions
    ]


def linear_vanilla(input: IrrepsArray, lin: FunctionalLinear, get_parameter: GetParameter) -> IrrepsArray:
    """Weights shared by every element of the batch."""
    return lin.apply(_get_weights(lin, get_parameter, (), input.dtype), input)


def linear_indexed(
    input: IrrepsArray,
    lin: FunctionalLinear,
    get_parameter: GetParameter,
    indices: jax.Array,
    num_indexed_weights: int,
) -> IrrepsArray:
    """``num_indexed_weights`` sets of weights; integer ``indices`` (broadcast with the input) pick one per element.

    Indices follow array indexing: negative ones count from the end.  Concrete indices (outside ``jit``) must lie
    in ``[-num_indexed_weights, num_indexed_weights)``; under ``jit`` they cannot be checked, and an out-of-range
    index is clamped to the nearest set (as ``w[indices]`` does there).
    """
    check_indices_in_range(
        indices, num_indexed_weights, f"Linear: the weight indices (num_indexed_weights={num_indexed_weights})",
        "raise num_indexed_weights to cover every index (e.g. the number of species); under jax.jit indices are "
        "not checked and are clamped",
    )
    ws = _get_weights(lin, get_parameter, (num_indexed_weights,), input.dtype)
    # Gathered weights have shape indices.shape + path_shape; apply() broadcasts them against the input.
    return lin.apply([w[indices] for w in ws], input)


def _mix(weights: jax.Array, ws: List[jax.Array], gradient_normalization: float) -> List[jax.Array]:
    """Contract the last axis of ``weights`` (size d) with the first axis of each parameter.

    Like the last dense layer of an MLP: the ``1/sqrt(d)`` fan-in is split between the forward pass
    (``** g``) and the initialisation (``** (1 - g)``, see :func:`_mixing_std`).
    """
    d = weights.shape[-1]
    scale = jnp.sqrt(1 / d) ** gradient_normalization
    return [scale * jax.lax.dot_general(weights, w, (((weights.ndim - 1,), (0,)), ((), ()))) for w in ws]


def _mixing_std(d: int, gradient_normalization: float) -> jax.Array:
    """Initialisation share of the ``1/sqrt(d)`` fan-in of the mixing contraction."""
    return jnp.sqrt(1 / d) ** (1.0 - gradient_normalization)


def linear_mixed(
    input: IrrepsArray,
    lin: FunctionalLinear,
    get_parameter: GetParameter,
    weights: jax.Array,
    gradient_normalization: float,
) -> IrrepsArray:
    """Weights are a linear function of per-element scalars ``weights`` of shape ``(..., d)``."""
    weights = weights.astype(input.dtype)
    d = weights.shape[-1]
    ws = _get_weights(lin, get_parameter, (d,), input.dtype, _mixing_std(d, gradient_normalization))
    return lin.apply(_mix(weights, ws, gradient_normalization), input)


def linear_mixed_per_channel(
    input: IrrepsArray,
    lin: FunctionalLinear,
    get_parameter: GetParameter,
    weights: jax.Array,
    gradient_normalization: float,
) -> IrrepsArray:
    """Like :func:`linear_mixed` for an input ``(..., channels, irreps)``, with separate weights per channel."""
    if input.ndim < 2:
        raise ValueError(f"weights_per_channel needs an input of shape (..., channels, irreps), got {input.shape}")
    # Mixed weights come out as (..., channels, *path_shape), aligned with the input's (..., channels, irreps).
    weights = weights.astype(input.dtype)
    d, channels = weights.shape[-1], input.shape[-2]
    ws = _get_weights(lin, get_parameter, (d, channels), input.dtype, _mixing_std(d, gradient_normalization))
    return lin.apply(_mix(weights, ws, gradient_normalization), input)


def _instructions_conflict(
    simplify_irreps_internally: bool, channel_out: Optional[int], irreps_in: Optional[Irreps]
) -> Optional[str]:
    """Why explicit instructions cannot be used with these settings (``None`` if they can).

    Instructions name blocks of ``irreps_in`` by position, so the blocks must be known and must reach the map as
    given: no internal regrouping, no channel axis folded into the multiplicities.
    """
    if simplify_irreps_internally:
        return ("explicit instructions index the blocks of irreps_in, which simplify_irreps_internally=True would "
                "merge and reorder; pass simplify_irreps_internally=False")
    if channel_out is not None:
        return (f"explicit instructions cannot be combined with channel_out={channel_out} (the channels are folded "
                "into the blocks); drop one of the two")
    if irreps_in is None:
        return "explicit instructions index the blocks of irreps_in, so irreps_in=... must be given with them"
    return None


def validate_inputs_for_instructions(
    input: IrrepsArray,
    instructions: Optional[List[Tuple[int, int]]],
    simplify_irreps_internally: bool,
    channel_out: Optional[int],
    irreps_in: Optional[Irreps],
) -> None:
    """Check the input irreps against ``irreps_in``, and that explicit instructions are used in a valid setting.

    Without instructions the irreps only need to be equivalent up to regrouping; explicit instructions index blocks,
    so they need the exact ``irreps_in`` and no internal regrouping.
    """
    exact = instructions is not None
    conflict = _instructions_conflict(simplify_irreps_internally, channel_out, irreps_in) if exact else None
    if conflict is not None:
        raise ValueError(f"Linear: {conflict}")
    if irreps_in is None:
        return
    expected = Irreps(irreps_in)
    got = input.irreps
    if (got != expected) if exact else (got.regroup() != expected.regroup()):
        how = "block by block (instructions are given)" if exact else "up to regrouping"
        raise ValueError(
            f"Linear: the input has irreps {got}, which do not match the expected irreps irreps_in={expected} "
            f"({how}); pass an input with those irreps, or change irreps_in"
        )


def optional_size(value: Any, name: str, where: str = "Linear") -> Optional[int]:
    """``None`` or a Python int >= 1, returned as an int: a size that becomes an array dimension (``channel_out``,
    ``num_indexed_weights``, ...), so it must be static; ``where`` names the module in the error."""
    if value is None:
        return None
    size = static_int(value)
    if size is None:
        got = repr(value) if isinstance(value, (bool, np.bool_)) else f"{type(value).__name__} {value!r}"
        raise TypeError(f"{where}: {name} must be None or a positive int, got {got}")
    if size < 1:
        hint = " (the number of weight sets, e.g. of species)" if name == "num_indexed_weights" else ""
        raise ValueError(f"{where}: {name} must be a positive int{hint}, got {size}; pass at least 1, or None")
    return size


@dataclasses.dataclass(frozen=True)
class LinearOptions:
    """Settings of a ``Linear`` module, as given to its constructor (see :func:`linear_module_call`)."""

    irreps_out: Irreps
    irreps_in: Optional[Irreps] = None
    channel_out: Optional[int] = None
    biases: bool = False
    path_normalization: Union[str, float, None] = None
    gradient_normalization: Union[str, float, None] = None
    instructions: Optional[List[Tuple[int, int]]] = None
    num_indexed_weights: Optional[int] = None
    weights_per_channel: bool = False
    force_irreps_out: bool = False
    simplify_irreps_internally: bool = True

    def __post_init__(self):
        optional_size(self.channel_out, "channel_out")
        optional_size(self.num_indexed_weights, "num_indexed_weights")


def _split_arguments(weights_or_input, input_or_none) -> Tuple[Optional[jax.Array], Any]:
    """``module(input)`` or ``module(weights, input)``: return ``(weights or None, input)``."""
    if input_or_none is None:
        return None, weights_or_input
    return weights_or_input, input_or_none


def _scalar_weights(weights: Any) -> jax.Array:
    """External weights/indices as a plain array; an IrrepsArray must be made of scalars only."""
    if isinstance(weights, IrrepsArray):
        if not weights.irreps.is_scalar():
            raise ValueError(f"Linear: weights must be scalar (0e), got irreps {weights.irreps}")
        return weights.array
    return jnp.asarray(weights)


def _compute_input(weights: Optional[jax.Array], input: IrrepsArray) -> IrrepsArray:
    """``input`` in the dtype the map computes in: the promotion of weights and input, float32 when both are
    integers (integer indices with an integer input)."""
    dtype = _result_dtype(weights, input.array)
    return input.astype(jnp.float32 if dtype.kind in "iub" else dtype)


def _map_layout(options: LinearOptions, input: IrrepsArray) -> Tuple[IrrepsArray, Irreps]:
    """The input and output irreps the map itself sees.

    Regrouping makes the parameters independent of how the input was chunked; outputs the input cannot reach are
    left out unless ``force_irreps_out``; ``channel_out`` folds the channel axis into the multiplicities.
    """
    irreps_out = _to_irreps(options.irreps_out, "Linear irreps_out")
    if options.simplify_irreps_internally:
        input, irreps_out = input.remove_zero_chunks().regroup(), irreps_out.simplify()
    if not options.force_irreps_out:
        irreps_out = irreps_out.filter(keep=input.irreps)
    if options.channel_out is None:
        return input, irreps_out
    if options.weights_per_channel:  # e3nn-jax asserts: AssertionError-compatible class
        raise InvalidValueError("Linear: channel_out and weights_per_channel=True cannot be used together; drop one")
    if input.ndim < 2:
        raise ValueError(f"Linear: channel_out needs an input of shape (..., channels, irreps), got {input.shape}")
    return input.axis_to_mul(), options.channel_out * irreps_out


def linear_module_call(
    options: LinearOptions, get_parameter: GetParameter, weights_or_input: Any, input_or_none: Any = None
) -> IrrepsArray:
    """Forward pass of a ``Linear`` module; the framework only supplies ``get_parameter``.

    Steps: pick the compute dtype, lay out input and output irreps (:func:`_map_layout`), check explicit
    instructions, build the :class:`FunctionalLinear`, then apply it with weights obtained the way the options and
    the call say (:func:`_dispatch_weights`), and undo the channel folding.
    """
    weights, input = _split_arguments(weights_or_input, input_or_none)
    weights = None if weights is None else _scalar_weights(weights)
    input, irreps_out = _map_layout(options, _compute_input(weights, as_irreps_array(input)))
    validate_inputs_for_instructions(
        input, options.instructions, options.simplify_irreps_internally, options.channel_out, options.irreps_in
    )
    lin = FunctionalLinear(
        input.irreps,
        irreps_out,
        instructions=options.instructions,
        biases=options.biases,
        path_normalization=options.path_normalization,
        gradient_normalization=options.gradient_normalization,
    )
    output = _dispatch_weights(options, lin, get_parameter, weights, input)

    if options.channel_out is not None:
        output = output.mul_to_axis(options.channel_out)
    if options.force_irreps_out:
        return output.rechunk(_to_irreps(options.irreps_out, "Linear irreps_out"))
    return output


def _dispatch_weights(
    options: LinearOptions,
    lin: FunctionalLinear,
    get_parameter: GetParameter,
    weights: Optional[jax.Array],
    input: IrrepsArray,
) -> IrrepsArray:
    """Shared, indexed or mixed weights, depending on what was passed and on ``num_indexed_weights``."""
    if weights is None:
        if options.weights_per_channel:  # e3nn-jax asserts: AssertionError-compatible class
            raise InvalidValueError(
                "Linear: weights_per_channel=True needs external scalar weights: call module(weights, x)"
            )
        return linear_vanilla(input, lin, get_parameter)

    indexed = options.num_indexed_weights is not None
    if weights.dtype.kind in "iu" and indexed:
        if options.weights_per_channel:  # e3nn-jax asserts: AssertionError-compatible class
            raise InvalidValueError(
                "Linear: weights_per_channel=True does not work with num_indexed_weights (indexed weights are "
                "already per element); drop one of them"
            )
        return linear_indexed(input, lin, get_parameter, weights, options.num_indexed_weights)
    if weights.dtype.kind in "fc" and not indexed:
        gradient_normalization = parse_gradient_normalization(options.gradient_normalization)
        if weights.ndim == 0:
            raise ValueError("Linear: external weights must have shape (..., d), got a scalar")
        mix = linear_mixed_per_channel if options.weights_per_channel else linear_mixed
        return mix(input, lin, get_parameter, weights, gradient_normalization)
    raise ValueError(
        "Linear: external weights must be integers (indices) with num_indexed_weights set, or floats without "
        f"num_indexed_weights; got weights.dtype={weights.dtype}, num_indexed_weights={options.num_indexed_weights}"
    )
