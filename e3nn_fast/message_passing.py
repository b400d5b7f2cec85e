"""Fused equivariant message passing: gather, tensor product with edge attributes, per-edge weights, scatter-sum.

:func:`message_passing` is a drop-in for the convolution NequIP/MACE-style code writes op by op::

    messages = e3nn.tensor_product(node_feats[senders], edge_sh, filter_ir_out=f) * edge_weights
    out = e3nn.scatter_sum(messages, dst=receivers, output_size=num_nodes)

with the same numbers, but without materialising the ``(num_edges, irreps_out.dim)`` messages: the dispatcher picks
an executor that streams over the edges (see :mod:`e3nn_fast.xla.message_passing` for CPU, the ``pallas`` kernels of
:mod:`e3nn_fast.kernels.message_passing` on GPU).  The unfused composition itself is the ``reference`` executor
(:mod:`e3nn_fast.reference.message_passing`).

Receivers follow ``scatter_sum``'s ``dst`` and its ``mode``.  Negative receivers count from the end.  Graph padding as
jraph pads (edges into a dummy node, with zero weight) works unchanged.  A receiver outside ``[-num_nodes, num_nodes)``
is a mistake by default (``mode="promise_in_bounds"``): outside ``jit`` it raises, naming the opt-out; pass
``mode="drop"`` to drop such edges on purpose (padding edges pointing past the last node).  Under ``jit`` nothing can
be checked and such edges are dropped in both modes, whatever the integer dtype (``uint32(2**32 - 1)`` is out of
range, never wrapped to ``-1``).
Senders must index a row of ``node_feats`` (negative values count from the end).  Outside ``jit`` they are checked
and an out-of-range sender raises; a padding edge should send from any real node (e.g. 0) and be neutralised by a
zero weight or a dropped receiver.  Under ``jit`` nothing can be checked: out-of-range senders are clamped to the
nearest row, as ``node_feats[senders]`` does there.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast import dispatch
from e3nn_fast._static_int import static_int
from e3nn_fast.graph import check_indices_in_range, clamp_indices_to_int32, static_size
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.reference import message_passing as reference
from e3nn_fast.reference.message_passing import MessagePassingSpec, message_passing_spec
from e3nn_fast.tensor_products import _as_filter, _irrep_normalization

__all__ = ["message_passing", "message_passing_irreps_out", "layer_filter"]

OP = "message_passing"

#: Values of ``mode``: what out-of-range receivers mean (``scatter_sum``'s names for the same two cases).
RECEIVER_MODES = ("promise_in_bounds", "drop")


def message_passing_irreps_out(irreps_in, irreps_sh, filter_ir_out=None) -> Irreps:
    """The output irreps of :func:`message_passing` (its weights need ``.num_irreps`` columns)."""
    irreps_in, irreps_sh = Irreps(irreps_in).regroup(), Irreps(irreps_sh).regroup()
    spec = message_passing_spec(irreps_in, irreps_sh, _as_filter(filter_ir_out), "component")
    return spec.irreps_out


def layer_filter(filter_ir_out, irreps_out):
    """The message filter of the ``MessagePassing`` layers (haiku, linen, nnx): ``filter_ir_out`` when given, else the
    irreps of ``irreps_out`` when the layer ends with a ``Linear`` to it (the map would drop the other messages
    anyway, so filtering first changes no number and saves their computation), else no filter."""
    if filter_ir_out is not None or irreps_out is None:
        return filter_ir_out
    return [ir for _, ir in Irreps(irreps_out)]


# --- validation ----------------------------------------------------------------------------------------------------


def _irreps_array(value, name: str) -> IrrepsArray:
    if not isinstance(value, IrrepsArray):
        raise TypeError(f"message_passing: {name} must be an IrrepsArray, got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"message_passing: {name} must have shape (rows, irreps.dim), got shape {value.shape}")
    return value


def _concrete_edge_count(num_edges) -> int:
    """The number of edges, which must be a plain integer: the executors cut the edges into chunks of a fixed size.
    A symbolic one (``jax.export`` with a symbolic edge count) gets a named error instead of an inconclusive
    comparison from inside the chunking."""
    count = static_int(num_edges)
    if count is None:
        raise TypeError(
            f"message_passing: the number of edges must be concrete, got the symbolic size {num_edges!r} (jax.export "
            "with a symbolic edge count?); the fused op cuts the edges into chunks of a fixed size. Export with a "
            "fixed (padded) edge count, or compose e3nn.scatter_sum(e3nn.tensor_product(...) * edge_weights, ...), "
            "which takes symbolic sizes"
        )
    return count


def _indices(value, name: str, num_edges: int):
    """``value`` checked to be integers of shape ``(num_edges,)``, still in its own dtype (a NumPy array stays NumPy,
    so that no 64-bit value is wrapped before the range is handled: see :func:`clamp_indices_to_int32`)."""
    value = value if isinstance(value, jax.Array) else np.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"message_passing: {name} must be an integer array, got dtype {value.dtype}")
    if value.shape != (num_edges,):
        raise ValueError(
            f"message_passing: {name} must have shape (num_edges,) = ({num_edges},) like edge_sh, got {value.shape}"
        )
    return value


def _edge_chunk_size(value) -> Optional[int]:
    """``None`` or a positive Python int."""
    if value is None:
        return None
    size = static_int(value)
    if size is None:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"message_passing: edge_chunk_size must be a positive int or None, got {value!r}")
        raise TypeError(
            f"message_passing: edge_chunk_size must be a positive int or None (a whole number of edges per step), "
            f"got {value!r} of type {type(value).__name__}; round it, e.g. edge_chunk_size=int(...)"
        )
    if size < 1:
        raise ValueError(f"message_passing: edge_chunk_size must be a positive int or None, got {size}")
    return size


def _weights(value, num_edges: int, irreps_out: Irreps) -> Optional[jnp.ndarray]:
    if value is None:
        return None
    if isinstance(value, IrrepsArray):
        if any(ir.l != 0 or ir.p != 1 for _, ir in value.irreps):
            raise ValueError(
                f"message_passing: edge_weights as an IrrepsArray must be scalars (0e), got {value.irreps}"
            )
        value = value.array
    value = jnp.asarray(value)
    expected = (num_edges, irreps_out.num_irreps)
    if value.shape != expected:
        raise ValueError(
            f"message_passing: edge_weights must have shape (num_edges, irreps_out.num_irreps) = {expected} "
            f"(one weight per edge and output irrep copy of {irreps_out}), got {value.shape}"
        )
    return value


def _num_nodes(value, default: int) -> int:
    if value is None:
        return default
    return static_size(value, "message_passing: num_nodes")


def _receiver_mode(value) -> str:
    """``mode`` checked: one of :data:`RECEIVER_MODES` (``clip`` and ``fill`` of ``scatter_sum`` have no use here)."""
    if not isinstance(value, str) or value not in RECEIVER_MODES:
        raise ValueError(
            f"message_passing: mode={value!r} is not supported; use 'promise_in_bounds' (the default: receivers "
            "must be in range, checked outside jit) or 'drop' (edges whose receiver is out of range are ignored)"
        )
    return value


def _check_receivers(receivers, num_nodes: int, mode: str) -> None:
    """Under the default mode, concrete receivers outside ``[-num_nodes, num_nodes)`` are an error, not padding."""
    if mode == "drop":
        return
    check_indices_in_range(
        receivers, num_nodes, f"message_passing: receivers (rows of the output, num_nodes={num_nodes})",
        "pass mode='drop' to ignore edges whose receiver is out of range on purpose (padding edges), "
        "or point padding edges at a padding node with a zero weight",
    )


def _float_dtype(*arrays):
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.ones(()).dtype


def normalize_senders(senders, num_inputs: int) -> jnp.ndarray:
    """Senders (any integer dtype) as int32 rows, as ``x[senders]`` reads them under ``jit``: negatives from the end,
    then clamped into range."""
    # Clamped into [-n, n] in their own dtype first, so that no value wraps around when it becomes int32.
    senders = clamp_indices_to_int32(senders, -num_inputs, num_inputs)
    senders = jnp.where(senders < 0, senders + num_inputs, senders)
    return jnp.clip(senders, 0, max(num_inputs - 1, 0))


def normalize_receivers(receivers, num_nodes: int) -> jnp.ndarray:
    """Receivers (any integer dtype) as int32, as ``scatter_sum(..., mode="drop")`` reads them: negatives count from
    the end, and what is still outside ``[0, num_nodes)`` becomes ``num_nodes`` (the executors' mark of a dropped
    edge)."""
    # [-n - 1, n] keeps both kinds of out-of-range values out of range after the int32 conversion.
    receivers = clamp_indices_to_int32(receivers, -num_nodes - 1, num_nodes)
    receivers = jnp.where(receivers < 0, receivers + num_nodes, receivers)
    return jnp.where((receivers >= 0) & (receivers < num_nodes), receivers, num_nodes)


# --- the op --------------------------------------------------------------------------------------------------------


def message_passing(
    node_feats: IrrepsArray,
    edge_sh: IrrepsArray,
    edge_weights,
    senders,
    receivers,
    num_nodes: Optional[int] = None,
    *,
    filter_ir_out=None,
    irrep_normalization: Optional[str] = None,
    edge_chunk_size: Optional[int] = None,
    mode: str = "promise_in_bounds",
) -> IrrepsArray:
    r"""Equivariant convolution: ``out[n] = sum_{e: receivers[e] = n} tensor_product(x[senders[e]], sh[e]) * w[e]``.

    Equal to ``e3nn.scatter_sum(e3nn.tensor_product(node_feats[senders], edge_sh, filter_ir_out=filter_ir_out,
    irrep_normalization=irrep_normalization) * edge_weights, dst=receivers, output_size=num_nodes, mode=mode)``,
    computed without a ``(num_edges, irreps_out.dim)`` array (forward and backward) by the executor the dispatcher
    picks (``with e3nn_fast.backend(...)``).  Differentiable to any order in every input; ``jax.jvp`` and ``vmap``
    work.

    Args:
        node_feats: IrrepsArray ``(num_inputs, irreps_in.dim)`` (usually ``num_inputs == num_nodes``).
        edge_sh: IrrepsArray ``(num_edges, irreps_sh.dim)``, e.g. the spherical harmonics of the edge vectors.
        edge_weights: ``(num_edges, irreps_out.num_irreps)``: one weight per edge and irrep copy of the output (as
            ``IrrepsArray * array`` scales them), e.g. from a radial MLP; a scalar IrrepsArray is accepted; ``None``
            for no weights.  :func:`message_passing_irreps_out` gives ``irreps_out``.
        senders, receivers: integers ``(num_edges,)`` of any integer dtype; negatives count from the end.  Senders
            must lie in ``[-num_inputs, num_inputs)``: checked outside ``jit``, clamped under it.  Receivers must lie
            in ``[-num_nodes, num_nodes)`` unless ``mode="drop"`` (see ``mode``).
        num_nodes: static number of output rows; default ``node_feats.shape[0]``.
        filter_ir_out: keep only these output irreps (as in :func:`e3nn_fast.tensor_product`).
        irrep_normalization: ``"component"`` (default from ``config``), ``"norm"`` or ``"none"``.
        edge_chunk_size: positive int, edges per step of the chunked ``jnp`` executor (its memory bound); ignored by
            the others.
        mode: ``"promise_in_bounds"`` (default): receivers are node rows; concrete ones out of range raise (under
            ``jit`` they cannot be checked and their edges are dropped).  ``"drop"``: edges whose receiver is out of
            range are dropped on purpose (padding), as ``scatter_sum(..., mode="drop")`` does.

    Returns:
        IrrepsArray ``(num_nodes, irreps_out.dim)`` with sorted, regrouped ``irreps_out`` (those of
        ``tensor_product``).

    Raises:
        TypeError: non-IrrepsArray features, non-integer indices, non-int ``num_nodes`` or ``edge_chunk_size``, a
            symbolic number of edges (``jax.export``).
        ValueError: arrays that are not 2-D, edge counts that disagree, weights of the wrong shape, bad
            normalisation or filter, an unknown ``mode``, concrete senders out of range (or receivers, unless
            ``mode="drop"``), ``edge_chunk_size < 1``.
    """
    node_feats = _irreps_array(node_feats, "node_feats")
    edge_sh = _irreps_array(edge_sh, "edge_sh")
    num_edges = _concrete_edge_count(edge_sh.shape[0])
    num_nodes = _num_nodes(num_nodes, node_feats.shape[0])
    senders = _indices(senders, "senders", num_edges)
    receivers = _indices(receivers, "receivers", num_edges)
    mode = _receiver_mode(mode)
    node_feats, edge_sh = node_feats.regroup(), edge_sh.regroup()
    spec = message_passing_spec(
        node_feats.irreps, edge_sh.irreps, _as_filter(filter_ir_out), _irrep_normalization(irrep_normalization)
    )
    weights = _weights(edge_weights, num_edges, spec.irreps_out)
    edge_chunk_size = _edge_chunk_size(edge_chunk_size)
    _check_receivers(receivers, num_nodes, mode)

    dtype = _float_dtype(node_feats.dtype, edge_sh.dtype, *([] if weights is None else [weights.dtype]))
    x, sh = node_feats.array.astype(dtype), edge_sh.array.astype(dtype)
    w = None if weights is None else weights.astype(dtype)
    if node_feats.shape[0] == 0:  # no node to send from: every message is zero
        return IrrepsArray(spec.irreps_out, jnp.zeros((num_nodes, spec.irreps_out.dim), dtype))
    num_inputs = node_feats.shape[0]
    check_indices_in_range(
        senders, num_inputs, f"message_passing: senders (rows of node_feats, {num_inputs} of them)",
        "a padding edge should send from any real node (e.g. 0) with a zero weight, or with an out-of-range receiver "
        "and mode='drop'; under jax.jit senders are not checked and are clamped",
    )
    senders = normalize_senders(senders, num_inputs)
    receivers = normalize_receivers(receivers, num_nodes)

    wanted = dispatch.current_backend()
    name = dispatch.choose(OP, size=dispatch.problem_size(num_edges, spec.irreps_out.dim),
                           qualifies=_qualifies(spec, dtype))
    run = dispatch.implementation(OP, name)
    if name == "jnp":
        out = run(spec, x, sh, w, senders, receivers, num_nodes, chunk_size=edge_chunk_size)
    else:
        out = run(spec, x, sh, w, senders, receivers, num_nodes)
    if wanted == "pallas" and name == "pallas":  # compiling the kernel for CPU must fail clearly (see dispatch)
        out = dispatch.require_accelerator(out, f"the op {OP!r}")
    return IrrepsArray(spec.irreps_out, out)


def _qualifies(spec: MessagePassingSpec, dtype) -> bool:
    """Whether the Pallas kernels implement this configuration (else a forced ``pallas`` backend uses ``jnp``).

    Only asked when a Pallas backend may be chosen, so that other calls never import Pallas.
    """
    if not (dispatch.current_backend().startswith("pallas") or jax.default_backend() != "cpu"):
        return True
    from e3nn_fast.kernels.message_passing import qualifies

    return qualifies(spec, dtype)


dispatch.register(OP, "reference", reference.message_passing)

from e3nn_fast.xla.message_passing import message_passing as _xla_message_passing  # noqa: E402

dispatch.register(OP, "jnp", _xla_message_passing)


def _pallas(spec, x, sh, w, senders, receivers, num_nodes):
    """The ``pallas`` executor (compiled kernels, GPU); Pallas is imported on first use only."""
    from e3nn_fast.kernels.message_passing import message_passing as kernel

    return kernel(spec, x, sh, w, senders, receivers, num_nodes, interpret=False)


def _pallas_interpret(spec, x, sh, w, senders, receivers, num_nodes):
    """The ``pallas-interpret`` executor (the same kernels in interpret mode; CPU testing only)."""
    from e3nn_fast.kernels.message_passing import message_passing as kernel

    return kernel(spec, x, sh, w, senders, receivers, num_nodes, interpret=True)


dispatch.register(OP, "pallas", _pallas)
dispatch.register(OP, "pallas-interpret", _pallas_interpret)
