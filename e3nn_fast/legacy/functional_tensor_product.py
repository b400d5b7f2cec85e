"""``FunctionalTensorProduct``: the legacy tensor product defined by an explicit list of instructions.

The instructions are normalised once (:mod:`e3nn_fast.legacy.path_weights`) and turned into a
:class:`~e3nn_fast.path_description.TensorProductDescription` whose path coefficients carry every constant; the
products themselves run through :func:`e3nn_fast.tensor_products.run_paths`, so the dispatcher may hand them to an
optimised executor.  Weights are not owned by the object: they are passed to every call, either as one flat array
(the weighted instructions' ``path_shape`` blocks concatenated in instruction order) or as a list with one array per
weighted instruction.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast.errors import InvalidValueError
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks, split_by_sizes, zeros
from e3nn_fast.legacy.instruction import Instruction
from e3nn_fast.legacy.path_weights import irrep_normalization_name, normalization_exponent, normalize_path_weights
from e3nn_fast.path_description import TensorProductDescription, make_path

InstructionSpec = Tuple  # (i_in1, i_in2, i_out, connection_mode, has_weight[, path_weight])


def _parse_instruction(spec, irreps_in1: Irreps, irreps_in2: Irreps, irreps_out: Irreps) -> Instruction:
    """An un-normalised :class:`Instruction` from a user tuple, with its indices checked."""
    if isinstance(spec, Instruction) or isinstance(spec, str) or len(spec) not in (5, 6):
        raise ValueError(
            "Each instruction must be a tuple (i_in1, i_in2, i_out, connection_mode, has_weight[, path_weight]), "
            f"got {spec!r}"
        )
    i_in1, i_in2, i_out, mode, has_weight = spec[:5]
    path_weight = spec[5] if len(spec) == 6 else 1.0
    checks = (("i_in1", i_in1, irreps_in1), ("i_in2", i_in2, irreps_in2), ("i_out", i_out, irreps_out))
    for name, index, irreps in checks:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(irreps):
            raise ValueError(f"Instruction {tuple(spec)}: {name}={index!r} is not a segment index of {irreps}")
    return Instruction(
        int(i_in1),
        int(i_in2),
        int(i_out),
        mode,
        bool(has_weight),
        path_weight,
        None,
        irreps_in1[i_in1].mul,
        irreps_in2[i_in2].mul,
        irreps_out[i_out].mul,
    )


def _per_segment(values: Optional[Sequence[float]], irreps: Irreps, name: str) -> list:
    """One variance per segment of ``irreps`` (default 1)."""
    if values is None:
        return [1.0] * len(irreps)
    values = list(values)
    if len(values) != len(irreps):
        raise ValueError(f"{name} needs one value per segment of {irreps} ({len(irreps)}), got {len(values)}")
    return values


def _computes(ins: Instruction, irreps_in1: Irreps, irreps_in2: Irreps, irreps_out: Irreps) -> bool:
    """Whether an instruction touches only non-empty segments (the others contribute nothing but still consume
    their weights, of size 0, and still count in the path normalisation, as in e3nn-jax)."""
    return irreps_in1[ins.i_in1].dim * irreps_in2[ins.i_in2].dim * irreps_out[ins.i_out].dim > 0


def _describe(instructions: Sequence[Instruction], irreps_in1, irreps_in2, irreps_out):
    """The executed paths and, for each, the position of its weights among the weighted instructions (or None)."""
    weighted = [i for i, ins in enumerate(instructions) if ins.has_weight]
    paths, weight_index = [], []
    for i, ins in enumerate(instructions):
        if not _computes(ins, irreps_in1, irreps_in2, irreps_out):
            continue
        paths.append(
            make_path(
                irreps_in1, irreps_in2, irreps_out, ins.i_in1, ins.i_in2, ins.i_out, ins.connection_mode,
                ins.path_weight, ins.has_weight,
            )
        )
        weight_index.append(weighted.index(i) if ins.has_weight else None)
    return TensorProductDescription(irreps_in1, irreps_in2, irreps_out, tuple(paths)), weight_index


def _checked_description(instructions: Sequence[Instruction], irreps_in1, irreps_in2, irreps_out):
    """:func:`_describe`, with a connection mode that the multiplicities of its segments cannot satisfy (or a
    weightless ``uvw``) reported as an :class:`InvalidValueError`: e3nn-jax asserts on these (when called), so code
    written against it may catch ``AssertionError``."""
    try:
        return _describe(instructions, irreps_in1, irreps_in2, irreps_out)
    except ValueError as error:
        raise InvalidValueError(f"FunctionalTensorProduct: {error}; fix the instruction or the irreps") from error


def _output_mask(instructions: Sequence[Instruction], irreps_out: Irreps) -> jax.Array:
    """Output components written by some instruction with a non-zero constant and no empty dimension."""
    written = {ins.i_out for ins in instructions if ins.path_weight != 0 and 0 not in ins.path_shape}
    mask = [np.full(mul_ir.dim, i in written, dtype=bool) for i, mul_ir in enumerate(irreps_out)]
    return jnp.asarray(np.concatenate(mask + [np.zeros(0, dtype=bool)]))


def _common_dtype(*trees):
    """The dtype the computation runs in: the promoted dtype of every array, integers promoted to float32."""
    leaves = jax.tree_util.tree_leaves(trees)
    dtype = jnp.result_type(*leaves) if leaves else jnp.dtype(jnp.float32)
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.dtype(jnp.float32)


class FunctionalTensorProduct:
    r"""Tensor product of two inputs defined by explicit instructions (e3nn's legacy API).

    Args:
        irreps_in1, irreps_in2, irreps_out: irreps of the two inputs and of the output.
        instructions: tuples ``(i_in1, i_in2, i_out, connection_mode, has_weight[, path_weight])``: the segments
            coupled, the connection mode (``uvw``, ``uvu``, ``uvv``, ``uuw``, ``uuu``, ``uvuv``, ``uvu<v``,
            ``u<vw``), whether the path has learned weights and an extra factor (default 1).
        in1_var, in2_var, out_var: variance of each segment of the inputs / the output (default 1).
        irrep_normalization: ``component``, ``norm`` or ``none`` (default ``config("irrep_normalization")``).
        path_normalization: ``element``, ``path`` or an exponent in [0, 1] (default from ``config``): how the paths
            into one output segment share its variance.
        gradient_normalization: ``element``, ``path`` or an exponent in [0, 1] (default from ``config``): how much
            of a weighted path's scale is a constant rather than the initial size of its weights.

    Attributes:
        instructions: the normalised :class:`Instruction` list (``path_weight`` is the constant of each path,
            ``weight_std`` the standard deviation to initialise its weights with).
        output_mask: boolean array over the output components that some path can write.
        description: the :class:`~e3nn_fast.path_description.TensorProductDescription` that is executed.
    """

    irreps_in1: Irreps
    irreps_in2: Irreps
    irreps_out: Irreps
    instructions: List[Instruction]
    output_mask: jax.Array

    def __init__(
        self,
        irreps_in1: Irreps,
        irreps_in2: Irreps,
        irreps_out: Irreps,
        instructions: List[InstructionSpec],
        in1_var: Optional[List[float]] = None,
        in2_var: Optional[List[float]] = None,
        out_var: Optional[List[float]] = None,
        irrep_normalization: str = None,
        path_normalization: Union[str, float] = None,
        gradient_normalization: Union[str, float] = None,
    ):
        self.irreps_in1 = Irreps(irreps_in1)
        self.irreps_in2 = Irreps(irreps_in2)
        self.irreps_out = Irreps(irreps_out)
        raw = [_parse_instruction(spec, self.irreps_in1, self.irreps_in2, self.irreps_out) for spec in instructions]
        self.instructions = normalize_path_weights(
            raw,
            self.irreps_in1,
            self.irreps_in2,
            self.irreps_out,
            _per_segment(in1_var, self.irreps_in1, "in1_var"),
            _per_segment(in2_var, self.irreps_in2, "in2_var"),
            _per_segment(out_var, self.irreps_out, "out_var"),
            irrep_normalization_name(irrep_normalization),
            normalization_exponent(path_normalization, "path_normalization"),
            normalization_exponent(gradient_normalization, "gradient_normalization"),
        )
        self.description, self._path_weight_index = _checked_description(
            self.instructions, self.irreps_in1, self.irreps_in2, self.irreps_out
        )
        self.output_mask = _output_mask(self.instructions, self.irreps_out)

    # -- weights -------------------------------------------------------------------------------------------------

    @property
    def weighted_instructions(self) -> List[Instruction]:
        """The instructions that take learned weights, in the order the weights are given."""
        return [ins for ins in self.instructions if ins.has_weight]

    def split_weights(self, weights: Union[jax.Array, Sequence[jax.Array]]) -> List[jax.Array]:
        """One array of shape ``path_shape`` per weighted instruction, from a flat array or a list (checked)."""
        expected = self.weighted_instructions
        if isinstance(weights, (list, tuple)):
            if len(weights) != len(expected):
                raise InvalidValueError(
                    f"{self.__class__.__name__}: got {len(weights)} weight arrays, "
                    f"expected {len(expected)} (one per weighted instruction)"
                )
            for k, (w, ins) in enumerate(zip(weights, expected)):
                if tuple(jnp.shape(w)) != tuple(ins.path_shape):
                    raise InvalidValueError(
                        f"{self.__class__.__name__}: weights[{k}] has shape {tuple(jnp.shape(w))}, "
                        f"expected {ins.path_shape} for {ins}"
                    )
            return [jnp.asarray(w) for w in weights]
        weights = jnp.asarray(weights)
        total = sum(math.prod(ins.path_shape) for ins in expected)
        if weights.ndim != 1 or weights.size != total:
            raise InvalidValueError(
                f"{self.__class__.__name__}: flat weights must have shape ({total},), got {weights.shape} "
                "(use jax.vmap to map over a batch of weights)"
            )
        sizes = [math.prod(ins.path_shape) for ins in expected]
        pieces = split_by_sizes(weights, sizes, 0, jnp)
        return [piece.reshape(ins.path_shape) for piece, ins in zip(pieces, expected)]

    # -- inputs --------------------------------------------------------------------------------------------------

    def _as_input(self, x, irreps: Irreps, name: str) -> IrrepsArray:
        """``x`` re-cut into ``irreps``; a plain array of the right size is taken to have these irreps."""
        if not isinstance(x, IrrepsArray):
            x = jnp.asarray(x)
            if x.ndim == 0 or x.shape[-1] != irreps.dim:
                raise ValueError(f"{self.__class__.__name__}: {name} has shape {x.shape}, expected (..., {irreps.dim})")
            return IrrepsArray(irreps, x)
        if x.irreps.simplify() != irreps.simplify():
            raise InvalidValueError(
                f"{self.__class__.__name__}: {name} has irreps {x.irreps}, expected {irreps} (up to regrouping)"
            )
        return x.rechunk(irreps)

    def _run(self, weights_list, input1: IrrepsArray, input2: IrrepsArray, dtype) -> IrrepsArray:
        """Evaluate the paths on inputs of one common leading shape (weights unbatched, one per instruction)."""
        from e3nn_fast.tensor_products import run_paths  # imported here: tensor_products imports much of the package

        leading_shape = input1.shape[:-1]
        if self.irreps_in1.dim == 0 or self.irreps_in2.dim == 0 or self.irreps_out.dim == 0:
            return zeros(self.irreps_out, leading_shape, dtype)
        input1, input2 = input1.astype(dtype), input2.astype(dtype)
        weights = [None if k is None else weights_list[k].astype(dtype) for k in self._path_weight_index]
        chunks = run_paths(self.description, weights, input1.chunks, input2.chunks, leading_shape)
        return from_chunks(self.irreps_out, chunks, leading_shape, dtype)

    def evaluate(self, weights, input1: IrrepsArray, input2: IrrepsArray) -> IrrepsArray:
        """Like :meth:`left_right` but for inputs with any leading axes (they broadcast); the weights are shared.

        This is what ``jax.vmap(left_right)`` over the inputs computes, in one executor call (an e3nn_fast
        extension; the haiku ``FullyConnectedTensorProduct`` uses it).
        """
        input1 = self._as_input(input1, self.irreps_in1, "input1")
        input2 = self._as_input(input2, self.irreps_in2, "input2")
        weights_list = self.split_weights(weights)
        try:
            leading_shape = jnp.broadcast_shapes(input1.shape[:-1], input2.shape[:-1])
        except ValueError as error:
            raise ValueError(
                f"{self.__class__.__name__}: leading shapes {input1.shape[:-1]} and {input2.shape[:-1]} "
                "do not broadcast"
            ) from error
        input1 = input1.broadcast_to(leading_shape + (-1,))
        input2 = input2.broadcast_to(leading_shape + (-1,))
        return self._run(weights_list, input1, input2, _common_dtype(weights_list, input1.array, input2.array))

    # -- public calls --------------------------------------------------------------------------------------------

    def left_right(
        self,
        weights: Union[List[jax.Array], jax.Array],
        input1: IrrepsArray,
        input2: IrrepsArray = None,
        *,
        custom_einsum_jvp: bool = None,
        fused: bool = None,
        sparse: bool = None,
    ) -> IrrepsArray:
        r"""The tensor product of one ``input1`` with one ``input2`` (1-D; use ``jax.vmap`` for batches).

        Args:
            weights: flat array or list of arrays, one per weighted instruction; omit it (call
                ``left_right(input1, input2)``) when no instruction is weighted.
            input1, input2: IrrepsArrays of ``irreps_in1`` / ``irreps_in2`` (any re-cut of them).
            custom_einsum_jvp, fused, sparse: accepted for compatibility; the executor is chosen by the dispatcher.

        Returns:
            IrrepsArray of ``irreps_out``; segments no path writes are flagged zero.
        """
        del custom_einsum_jvp, fused, sparse
        if input2 is None:
            weights, input1, input2 = [], weights, input1
        input1 = self._as_input(input1, self.irreps_in1, "input1")
        input2 = self._as_input(input2, self.irreps_in2, "input2")
        weights_list = self.split_weights(weights)
        for name, x in (("input1", input1), ("input2", input2)):
            if x.ndim != 1:
                raise InvalidValueError(
                    f"{self.__class__.__name__}.left_right: {name} has shape {x.shape}, expected a 1-D array; "
                    f"use jax.vmap to map over {name}"
                )
        return self._run(weights_list, input1, input2, _common_dtype(weights_list, input1.array, input2.array))

    def right(
        self,
        weights: List[jax.Array],
        input2: IrrepsArray = None,
        *,
        custom_einsum_jvp: bool = None,
    ) -> jax.Array:
        r"""The linear map ``input1 -> left_right(weights, input1, input2)`` as a matrix.

        Args:
            weights: flat array or list of arrays, one per weighted instruction (omit when none is weighted).
            input2: 1-D IrrepsArray of ``irreps_in2``.
            custom_einsum_jvp: accepted for compatibility.

        Returns:
            Array of shape ``(irreps_in1.dim, irreps_out.dim)``.
        """
        del custom_einsum_jvp
        if input2 is None:
            weights, input2 = [], weights
        input2 = self._as_input(input2, self.irreps_in2, "input2")
        weights_list = self.split_weights(weights)
        if input2.ndim != 1:
            raise InvalidValueError(
                f"{self.__class__.__name__}.right: input2 has shape {input2.shape}, expected a 1-D array; "
                "use jax.vmap to map over input2"
            )
        dtype = _common_dtype(weights_list, input2.array)
        dim1 = self.irreps_in1.dim
        # The product is linear in input1: evaluate it on the basis vectors of input1 as one batch.
        basis = IrrepsArray(self.irreps_in1, jnp.eye(dim1, dtype=dtype))
        return self._run(weights_list, basis, input2.broadcast_to((dim1, -1)), dtype).array

    def _path_elements(self, weighted_only: bool) -> int:
        """Entries of all the path shapes (one per coupled channel triple), optionally of weighted paths only."""
        return sum(math.prod(ins.path_shape) for ins in self.instructions if ins.has_weight or not weighted_only)

    def __repr__(self) -> str:
        # the format of e3nn-jax 0.21, which tests and users may compare against
        signature = " x ".join(str(irreps.simplify()) for irreps in (self.irreps_in1, self.irreps_in2))
        counts = f"{self._path_elements(False)} paths | {self._path_elements(True)} weights"
        return f"{type(self).__name__}({signature} -> {self.irreps_out.simplify()} | {counts})"
