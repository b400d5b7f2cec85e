"""Fused message passing (``e3nn_fast.message_passing``) against the unfused composition it replaces.

The oracle is the literal composition ``scatter_sum(tensor_product(x[senders], sh) * w, dst=receivers, ...)`` on the
reference tensor-product executor.  Graphs have isolated nodes, a node with many incoming edges, self-loops and
jraph-style padding (zero-weight edges into a dummy node, out-of-range and negative receivers), with edge counts that
are not multiples of the chunk.  Everything runs under ``jax.jit`` and inputs are made with numpy.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast as e3nn
from e3nn_fast import dispatch
from e3nn_fast.message_passing import message_passing, message_passing_irreps_out
from e3nn_fast.xla import message_passing as xla_mp
from jaxpr_equations import all_equations

IRREPS_IN = "2x0e+2x1o"
IRREPS_SH = "0e+1o+2e"


def random_graph(seed: int, num_nodes: int = 9, num_real: int = 29, num_pad: int = 6):
    """Senders/receivers with: node ``num_nodes - 2`` isolated, node 0 receiving many edges, self-loops, and padding
    edges (receivers ``num_nodes`` and ``-num_nodes - 3``, dropped under ``mode="drop"``, and zero-weight edges into
    the dummy node ``num_nodes - 1``).  Returns (senders, receivers, padding mask)."""
    rng = np.random.default_rng(seed)
    real = num_nodes - 2  # nodes 0..real-1 are real; real is isolated, real + 1 the dummy
    senders = rng.integers(0, real, num_real)
    receivers = rng.integers(0, real, num_real)
    receivers[: num_real // 3] = 0  # hub
    receivers[-3:] = senders[-3:]  # self-loops
    pad_senders = rng.integers(0, num_nodes, num_pad)
    pad_receivers = np.array([num_nodes, -num_nodes - 3] + [num_nodes - 1] * (num_pad - 2))
    senders = np.concatenate([senders, pad_senders]).astype(np.int32)
    receivers = np.concatenate([receivers, pad_receivers]).astype(np.int32)
    padding = np.arange(num_real + num_pad) >= num_real
    return senders, receivers, padding


def random_inputs(seed, dtype, irreps_in=IRREPS_IN, irreps_sh=IRREPS_SH, filter_ir_out=None, num_nodes=9, **graph):
    senders, receivers, padding = random_graph(seed, num_nodes, **graph)
    rng = np.random.default_rng(seed + 100)
    irreps_in, irreps_sh = e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_sh)
    x = e3nn.IrrepsArray(irreps_in, jnp.asarray(rng.standard_normal((num_nodes, irreps_in.dim)), dtype))
    sh = e3nn.IrrepsArray(irreps_sh, jnp.asarray(rng.standard_normal((len(senders), irreps_sh.dim)), dtype))
    irreps_out = message_passing_irreps_out(irreps_in, irreps_sh, filter_ir_out)
    w = rng.standard_normal((len(senders), irreps_out.num_irreps))
    w[padding & (receivers == num_nodes - 1)] = 0.0  # jraph-style padding: zero weight into the dummy node
    return x, sh, jnp.asarray(w, dtype), jnp.asarray(senders), jnp.asarray(receivers)


def unfused(x, sh, w, senders, receivers, num_nodes, filter_ir_out=None, irrep_normalization=None):
    """The composition NequIP/MACE code writes, on the reference tensor-product executor."""
    with e3nn.backend("reference"):
        messages = e3nn.tensor_product(x[senders], sh, filter_ir_out=filter_ir_out,
                                       irrep_normalization=irrep_normalization)
    if w is not None:
        messages = messages * w
    return e3nn.scatter_sum(messages, dst=receivers, output_size=num_nodes, mode="drop")


def assert_close(a, b, dtype):
    tol = 1e-11 if dtype == jnp.float64 else 2e-4
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0.0))))


def loss_and_grads(fn, num_nodes, **kwargs):
    """One jitted function: the output and the gradients of a nonlinear loss w.r.t. x, sh and w."""

    def loss(x, sh, w, senders, receivers):
        out = fn(x, sh, w, senders, receivers, num_nodes, **kwargs)
        return jnp.sum(jnp.sin(out.array)), out.array

    def both(x, sh, w, senders, receivers):
        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, sh, w, senders, receivers)
        return out, tuple(g.array if isinstance(g, e3nn.IrrepsArray) else g for g in grads)

    return jax.jit(both)


# --- forward and gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,chunk", [(jnp.float32, None), (jnp.float64, 7)])
def test_forward_and_gradients_match_unfused(dtype, chunk):
    x, sh, w, senders, receivers = random_inputs(0, dtype)
    ours = loss_and_grads(message_passing, 9, edge_chunk_size=chunk)(x, sh, w, senders, receivers)
    theirs = loss_and_grads(unfused, 9)(x, sh, w, senders, receivers)
    jax.tree.map(lambda a, b: assert_close(a, b, dtype), ours, theirs)
    out = np.asarray(ours[0])
    assert np.all(out[7] == 0.0)  # isolated node
    assert np.all(out[8] == 0.0)  # dummy node: only zero-weight padding edges


@pytest.mark.parametrize(
    "irreps_in,irreps_sh,filter_ir_out,normalization",
    [("3x0e+2x1o+1x2e", "1x0e+1x1o", ["0e", "1o", "1e"], "component"),
     ("2x1e+1x2e", "2x0e+1o", None, "norm"),  # sh with a multiplicity: uvuv with two channel indices
     ("3x0e", "0e+1o+2e+3o", "0e+1o+2e+3o", "none")],
)
def test_configurations_match_unfused(irreps_in, irreps_sh, filter_ir_out, normalization):
    x, sh, w, senders, receivers = random_inputs(1, jnp.float64, irreps_in, irreps_sh, filter_ir_out)
    kwargs = dict(filter_ir_out=filter_ir_out, irrep_normalization=normalization)
    ours = jax.jit(lambda *a: message_passing(*a, 9, edge_chunk_size=8, **kwargs))(x, sh, w, senders, receivers)
    theirs = unfused(x, sh, w, senders, receivers, 9, **kwargs)
    assert ours.irreps == theirs.irreps
    assert_close(ours.array, theirs.array, jnp.float64)


def test_no_weights_unsorted_irreps_and_num_nodes_default():
    x, sh, _, senders, receivers = random_inputs(2, jnp.float64, "1o+2x0e+1o", "1o+0e")
    ours = jax.jit(lambda *a: message_passing(*a))(x, sh, None, senders, receivers)
    theirs = unfused(x, sh, None, senders, receivers, 9)
    assert ours.irreps == theirs.irreps and ours.shape == (9, theirs.irreps.dim)
    assert_close(ours.array, theirs.array, jnp.float64)


def test_backends_agree_and_reference_executor_registered():
    assert {"reference", "jnp"} <= set(dispatch.available("message_passing"))
    x, sh, w, senders, receivers = random_inputs(3, jnp.float64)
    f = jax.jit(lambda *a: message_passing(*a, 9).array)
    with e3nn.backend("reference"):
        reference = f(x, sh, w, senders, receivers)
        jaxpr = str(jax.make_jaxpr(lambda *a: message_passing(*a, 9).array)(x, sh, w, senders, receivers))
    assert "e3nn_fast_graph_form" not in jaxpr
    jaxpr = str(jax.make_jaxpr(lambda *a: message_passing(*a, 9).array)(x, sh, w, senders, receivers))
    assert "ChunkedForm" in jaxpr  # CPU default: the chunked jnp executor
    assert_close(jax.jit(lambda *a: message_passing(*a, 9).array)(x, sh, w, senders, receivers), reference,
                 jnp.float64)


@pytest.mark.slow  # the reference executor is validated against e3nn-jax in test_tensor_products.py
def test_matches_e3nn_jax():
    e3nn_jax = pytest.importorskip("e3nn_jax")
    x, sh, w, senders, receivers = random_inputs(4, jnp.float64)
    ours = jax.jit(lambda *a: message_passing(*a, 9).array)(x, sh, w, senders, receivers)
    xj = e3nn_jax.IrrepsArray(str(x.irreps), x.array)
    shj = e3nn_jax.IrrepsArray(str(sh.irreps), sh.array)

    @jax.jit
    def theirs(xj, shj, w):
        messages = e3nn_jax.tensor_product(xj[senders], shj) * w
        return e3nn_jax.scatter_sum(messages, dst=receivers, output_size=9, mode="drop").array

    assert_close(ours, theirs(xj, shj, w), jnp.float64)


@pytest.mark.parametrize("backend", ["jnp", "reference", "pallas-interpret"])
def test_empty_graph(backend):
    x, sh, w, _, _ = random_inputs(5, jnp.float64)
    empty = jnp.zeros((0,), jnp.int32)
    with e3nn.backend(backend):
        out = message_passing(x, sh[:0], w[:0], empty, empty, 4)
        grad = jax.grad(lambda x: jnp.sum(message_passing(x, sh[:0], w[:0], empty, empty, 4).array))(x)
    assert out.shape == (4, out.irreps.dim) and not np.any(np.asarray(out.array))
    assert grad.shape == x.shape and not np.any(np.asarray(grad.array))


# --- forces-style double backward --------------------------------------------------------------------------------


def forces_loss(fn, senders, receivers, num_nodes, irreps_sh="0e+1o+2e", **kwargs):
    """Energy from sh(positions), forces = -dE/dpos, loss = |forces|^2: differentiated w.r.t. (x, w, positions)."""

    def energy(positions, x, w):
        vectors = e3nn.IrrepsArray("1o", positions[receivers] - positions[senders])
        sh = e3nn.spherical_harmonics(irreps_sh, vectors, normalize=True, normalization="component")
        out = fn(x, sh, w, senders, receivers, num_nodes, **kwargs)
        return jnp.sum(out.filter(keep="0e").array ** 2) + jnp.sum(jnp.tanh(out.array))

    def loss(positions, x, w):
        forces = -jax.grad(energy)(positions, x, w)
        return jnp.sum(forces**2)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow), jnp.float64])
def test_forces_double_backward_matches_unfused(dtype):
    num_nodes = 8
    rng = np.random.default_rng(6)
    senders, receivers = [], []
    for a in range(num_nodes - 1):  # no self-loops (zero edge vectors have no direction); node 7 isolated
        for b in rng.choice(num_nodes - 1, 3, replace=False):
            if a != b:
                senders.append(a)
                receivers.append(int(b))
    senders, receivers = jnp.asarray(senders, jnp.int32), jnp.asarray(receivers, jnp.int32)
    positions = jnp.asarray(rng.standard_normal((num_nodes, 3)) * 2, dtype)
    x = e3nn.IrrepsArray("2x0e+1x1o", jnp.asarray(rng.standard_normal((num_nodes, 5)), dtype))
    irreps_out = message_passing_irreps_out("2x0e+1x1o", "0e+1o")
    w = jnp.asarray(rng.standard_normal((len(senders), irreps_out.num_irreps)), dtype)
    ours = forces_loss(message_passing, senders, receivers, num_nodes, "0e+1o", edge_chunk_size=5)(positions, x, w)
    theirs = forces_loss(unfused, senders, receivers, num_nodes, "0e+1o")(positions, x, w)
    jax.tree.map(lambda a, b: assert_close(a, b, dtype), ours, theirs)


# --- transformations ---------------------------------------------------------------------------------------------


def test_jvp_and_vmap():
    x, sh, w, senders, receivers = random_inputs(7, jnp.float64)
    rng = np.random.default_rng(8)
    tangents = [jnp.asarray(rng.standard_normal(a.shape)) for a in (x.array, sh.array, w)]

    def run(fn, xa, sha, w):
        return fn(x.irreps and e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(sh.irreps, sha), w, senders,
                  receivers, 9).array

    jvp = lambda fn: jax.jit(lambda *p: jax.jvp(lambda *a: run(fn, *a), p, tuple(tangents)))
    ours = jvp(lambda *a: message_passing(*a, edge_chunk_size=6, mode="drop"))(x.array, sh.array, w)
    theirs = jvp(unfused)(x.array, sh.array, w)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)

    batch_x = jnp.stack([x.array, 2 * x.array, -x.array])
    batch_w = jnp.stack([w, w * 0.5, w])
    vmapped = lambda fn: jax.jit(jax.vmap(lambda xa, w: run(fn, xa, sh.array, w)))
    assert_close(vmapped(lambda *a: message_passing(*a, edge_chunk_size=6, mode="drop"))(batch_x, batch_w),
                 vmapped(unfused)(batch_x, batch_w), jnp.float64)


def _primitive_forms(jaxpr) -> list:
    """The forms of every graph-form contraction in ``jaxpr`` and the jaxprs nested in it."""
    return [(equation.params["form"], equation.params["out_slot"]) for equation in all_equations(jaxpr)
            if equation.primitive.name == "e3nn_fast_graph_form"]


def test_jnp_derivatives_are_contractions_of_the_form():
    """Backward and force passes of the jnp executor: one chunked contraction per slot, no recomputed forward."""
    x, sh, w, senders, receivers = random_inputs(9, jnp.float64)
    run = lambda xa, sha, w: message_passing(e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(sh.irreps, sha), w,
                                             senders, receivers, 9, edge_chunk_size=4, mode="drop").array
    energy = lambda *a: jnp.sum(jnp.sin(run(*a)))
    backward = jax.make_jaxpr(jax.grad(energy, argnums=(0, 1, 2)))(x.array, sh.array, w).jaxpr
    slots = sorted(form.slot_names[slot] for form, slot in _primitive_forms(backward))
    assert slots == ["out", "sh", "w", "x"]  # the forward once, then one contraction per input
    assert "remat" not in str(backward) and "checkpoint" not in str(backward)
    forces = lambda xa, sha, w: jnp.sum(jax.grad(energy, argnums=1)(xa, sha, w) ** 2)
    double = jax.make_jaxpr(jax.grad(forces, argnums=(0, 2)))(x.array, sh.array, w).jaxpr
    forms = _primitive_forms(double)
    assert forms and all(type(form).__name__ == "ChunkedForm" for form, _ in forms)
    # the forward (sin' needs it) and the force (sh slot); the loss's gradient: x and w through the force's two
    # linear slots, and through its cotangent cos(out) an out-slot transpose and x and w once more: 7 scans, no
    # autodiff of a scan
    assert len(forms) == 7, sorted(form.slot_names[slot] for form, slot in forms)


def test_jnp_hessian_and_vmap_of_gradients_match_unfused():
    x, sh, w, senders, receivers = random_inputs(10, jnp.float64)

    def energy(fn, **kwargs):
        def f(xa, sha, w):
            out = fn(e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(sh.irreps, sha), w, senders, receivers, 9,
                     **kwargs)
            return jnp.sum(jnp.sin(out.array))
        return f

    ours, theirs = energy(message_passing, edge_chunk_size=5, mode="drop"), energy(unfused)
    hessian = lambda f: jax.jit(jax.hessian(f, argnums=1))(x.array, sh.array, w)
    assert_close(hessian(ours), hessian(theirs), jnp.float64)
    batch_sh = jnp.stack([sh.array, 0.5 * sh.array, -sh.array])
    per_example = lambda f: jax.jit(jax.vmap(jax.grad(f, argnums=(0, 2)), in_axes=(None, 0, None)))(
        x.array, batch_sh, w)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), per_example(ours), per_example(theirs))
    of_vmap = lambda f: jax.jit(jax.grad(lambda xa, shb, w: jnp.sum(jax.vmap(f, in_axes=(None, 0, None))(xa, shb, w)),
                                         argnums=(0, 1, 2)))(x.array, batch_sh, w)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), of_vmap(ours), of_vmap(theirs))


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_input_raises():
    x, sh, w, senders, receivers = random_inputs(9, jnp.float64)
    with pytest.raises(ValueError, match="senders"):
        message_passing(x, sh, w, senders[:-1], receivers, 9)
    with pytest.raises(ValueError, match="receivers"):
        message_passing(x, sh, w, senders, receivers[:-2], 9)
    with pytest.raises(ValueError, match="edge_weights"):
        message_passing(x, sh, w[:, :-1], senders, receivers, 9)
    with pytest.raises(ValueError, match="edge_weights"):
        message_passing(x, sh, w[:-1], senders, receivers, 9)
    with pytest.raises(TypeError, match="integer"):
        message_passing(x, sh, w, senders.astype(jnp.float32), receivers, 9)
    with pytest.raises(TypeError, match="IrrepsArray"):
        message_passing(x.array, sh, w, senders, receivers, 9)
    with pytest.raises(ValueError, match="shape"):
        message_passing(x[None], sh, w, senders, receivers, 9)
    with pytest.raises(TypeError, match="num_nodes"):
        message_passing(x, sh, w, senders, receivers, 9.0)
    with pytest.raises(ValueError, match="irrep_normalization"):
        message_passing(x, sh, w, senders, receivers, 9, irrep_normalization="bad")
    with pytest.raises(ValueError, match="edge_chunk_size"):
        message_passing(x, sh, w, senders, receivers, 9, edge_chunk_size=0)


# --- memory: no (num_edges, irreps_out.dim) buffer ---------------------------------------------------------------

_SHAPE = re.compile(r"\b(?:f32|f64|bf16|f16)\[([0-9,]*)\]")


def _largest_buffer(hlo_text: str) -> int:
    """Elements of the largest floating-point array shape in an HLO module's text."""
    sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) for dims in _SHAPE.findall(hlo_text)]
    return max(sizes)


def test_compiled_graph_has_no_per_edge_message_buffer():
    """With 3001 edges into 40 nodes and 140 output dims, a (num_edges, irreps_out.dim) buffer (420k elements) would
    dwarf everything else (the largest input, the weights, is 3001 x 20): the unfused path has one, the fused forward
    and backward none."""
    num_nodes, num_edges = 40, 3001
    rng = np.random.default_rng(10)
    irreps_in, irreps_sh = e3nn.Irreps("4x2e"), e3nn.Irreps("3o")
    irreps_out = message_passing_irreps_out(irreps_in, irreps_sh)
    message_elements = num_edges * irreps_out.dim
    x = e3nn.IrrepsArray(irreps_in, jnp.asarray(rng.standard_normal((num_nodes, irreps_in.dim)), jnp.float32))
    sh = e3nn.IrrepsArray(irreps_sh, jnp.asarray(rng.standard_normal((num_edges, irreps_sh.dim)), jnp.float32))
    w = jnp.asarray(rng.standard_normal((num_edges, irreps_out.num_irreps)), jnp.float32)
    senders = jnp.asarray(rng.integers(0, num_nodes, num_edges), jnp.int32)
    receivers = jnp.asarray(rng.integers(0, num_nodes, num_edges), jnp.int32)
    assert message_elements >= 6 * num_edges * max(irreps_out.num_irreps, irreps_sh.dim)

    def forward(fn):
        return lambda x, sh, w: fn(x, sh, w, senders, receivers, num_nodes).array

    def backward(fn):
        return jax.grad(lambda x, sh, w: jnp.sum(jnp.sin(forward(fn)(x, sh, w))), argnums=(0, 1, 2))

    fused = lambda *a: message_passing(*a, edge_chunk_size=256)
    for make in (forward, backward):
        compiled_fused = jax.jit(make(fused)).lower(x, sh, w).compile()
        compiled_unfused = jax.jit(make(unfused)).lower(x, sh, w).compile()
        assert _largest_buffer(compiled_unfused.as_text()) >= message_elements  # the test would see one
        assert _largest_buffer(compiled_fused.as_text()) < message_elements // 4
        fused_temp = compiled_fused.memory_analysis().temp_size_in_bytes
        unfused_temp = compiled_unfused.memory_analysis().temp_size_in_bytes
        assert message_elements * 4 <= unfused_temp, (make.__name__, unfused_temp)
        assert fused_temp < unfused_temp // 4, (make.__name__, fused_temp, unfused_temp)


def test_default_chunk_size():
    assert xla_mp.default_chunk_size(10**6, 1024) == xla_mp.TARGET_CHUNK_ELEMENTS // 1024
    assert xla_mp.default_chunk_size(5, 1024) == 5
    assert xla_mp.default_chunk_size(10**6, 10**7) == xla_mp.MIN_CHUNK


# --- Pallas kernel (interpret mode, tiny sizes) ------------------------------------------------------------------


@pytest.fixture
def small_kernel_blocks(monkeypatch):
    """Blocks of 4 rows: several programs and a padded tail even for tiny graphs."""
    from e3nn_fast.kernels import message_passing as kernel_mp

    monkeypatch.setattr(kernel_mp, "BLOCK_ROWS", 4)
    return kernel_mp


@pytest.mark.parametrize(
    "dtype,weighted", [(jnp.float64, True), pytest.param(jnp.float32, False, marks=pytest.mark.slow)]
)
def test_kernel_forward_and_gradients_match_unfused(small_kernel_blocks, dtype, weighted):
    x, sh, w, senders, receivers = random_inputs(11, dtype, "2x0e+1x1o+1x2e", "0e+1o", num_real=13, num_pad=4)
    w = w if weighted else None
    fn = lambda *a, **k: message_passing(*a, **k)
    with e3nn.backend("pallas-interpret"):
        jaxpr = str(jax.make_jaxpr(lambda *a: message_passing(*a, 9).array)(x, sh, w, senders, receivers))
        ours = loss_and_grads(fn, 9)(x, sh, w, senders, receivers)
    assert "e3nn_fast_graph_form" in jaxpr and "KernelForm" in jaxpr  # the kernels, not a fallback
    theirs = loss_and_grads(unfused, 9)(x, sh, w, senders, receivers)
    jax.tree.map(lambda a, b: assert_close(a, b, dtype), ours, theirs)


def test_kernel_forces_double_backward(small_kernel_blocks):
    num_nodes = 6
    senders = jnp.asarray([0, 1, 2, 3, 4, 1, 2, 0, 3, 4, 0], jnp.int32)
    receivers = jnp.asarray([1, 2, 3, 4, 0, 0, 0, 2, 1, 2, 6], jnp.int32)  # node 5 isolated, last edge dropped
    rng = np.random.default_rng(12)
    positions = jnp.asarray(rng.standard_normal((num_nodes, 3)) * 2)
    x = e3nn.IrrepsArray("2x0e+1x1o", jnp.asarray(rng.standard_normal((num_nodes, 5))))
    w = jnp.asarray(rng.standard_normal((len(senders), message_passing_irreps_out("2x0e+1x1o", "0e+1o").num_irreps)))
    with e3nn.backend("pallas-interpret"):
        ours = forces_loss(message_passing, senders, receivers, num_nodes, "0e+1o", mode="drop")(positions, x, w)
    theirs = forces_loss(unfused, senders, receivers, num_nodes, "0e+1o")(positions, x, w)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)


def test_kernel_jvp_matches_unfused(small_kernel_blocks):
    x, sh, w, senders, receivers = random_inputs(18, jnp.float64, "2x0e+1x1o", "0e+1o", num_real=10, num_pad=2)
    rng = np.random.default_rng(19)
    tangents = tuple(jnp.asarray(rng.standard_normal(a.shape)) for a in (x.array, sh.array, w))

    def jvp(fn):
        def run(xa, sha, w):
            return fn(e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(sh.irreps, sha), w, senders, receivers, 9).array
        return jax.jit(lambda *p: jax.jvp(run, p, tangents))

    with e3nn.backend("pallas-interpret"):
        ours = jvp(functools.partial(message_passing, mode="drop"))(x.array, sh.array, w)
    theirs = jvp(unfused)(x.array, sh.array, w)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)


def test_kernel_vmap_and_bitwise_reproducible(small_kernel_blocks):
    x, sh, w, senders, receivers = random_inputs(13, jnp.float64, "2x0e+1x1o", "0e+1o", num_real=10, num_pad=2)
    batch_w = jnp.stack([w, 0.5 * w])
    # x and sh are arguments, not closed over: IrrepsArray caches its chunks, which must not capture tracers.
    run = lambda x, sh, w: message_passing(x, sh, w, senders, receivers, 9, mode="drop").array
    with e3nn.backend("pallas-interpret"):
        ours = jax.jit(jax.vmap(run, in_axes=(None, None, 0)))(x, sh, batch_w)
        again = jax.jit(jax.vmap(run, in_axes=(None, None, 0)))(x, sh, batch_w)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(again))
    theirs = jnp.stack([unfused(x, sh, wi, senders, receivers, 9).array for wi in batch_w])
    assert_close(ours, theirs, jnp.float64)


def test_kernel_qualifies_and_falls_back():
    from e3nn_fast.kernels.message_passing import qualifies
    from e3nn_fast.reference.message_passing import message_passing_spec

    spec = lambda a, b: message_passing_spec(e3nn.Irreps(a), e3nn.Irreps(b), None, "component")
    assert qualifies(spec("2x0e+1o", "0e+1o+2e"), jnp.float32)
    assert not qualifies(spec("2x0e+1o", "2x0e+1o"), jnp.float32)  # two channel indices: not channelwise
    assert not qualifies(spec("2x0e", "0e"), jnp.int32)
    x, sh, w, senders, receivers = random_inputs(14, jnp.float64, "2x0e", "2x0e+1o", num_real=5, num_pad=2)
    with e3nn.backend("pallas-interpret"):
        assert dispatch.choose("message_passing", qualifies=False) == "jnp"
        out = jax.jit(lambda *a: message_passing(*a, 9).array)(x, sh, w, senders, receivers)
    assert_close(out, unfused(x, sh, w, senders, receivers, 9).array, jnp.float64)


from pallas_lowering import lower_for_platform as _lower_for_platform  # noqa: E402
from pallas_lowering import require_pallas_lowering as _require_pallas_lowering  # noqa: E402
from e3nn_fast.kernels.tuning import override as tuning_override  # noqa: E402


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_kernel_forward_gradient_and_double_backward_lower_for_cuda(dtype):
    """Forward, first and forces-style second derivatives lower to Triton kernels (checked from the CPU machine),
    with no (num_edges, irreps_out.dim) array in the graph."""
    _require_pallas_lowering("cuda")  # fails (never skips) when this jax cannot lower Pallas for CUDA at all
    num_nodes, num_edges = 12, 37
    rng = np.random.default_rng(15)
    senders = jnp.asarray(rng.integers(0, num_nodes, num_edges), jnp.int32)
    receivers = jnp.asarray(rng.integers(0, num_nodes + 2, num_edges), jnp.int32)
    irreps_out = message_passing_irreps_out("5x0e+3x1o", "0e+1o+2e")
    x = e3nn.IrrepsArray("5x0e+3x1o", jnp.asarray(rng.standard_normal((num_nodes, 14)), dtype))
    positions = jnp.asarray(rng.standard_normal((num_nodes, 3)), dtype)
    w = jnp.asarray(rng.standard_normal((num_edges, irreps_out.num_irreps)), dtype)

    def energy(positions, x, w):
        vectors = e3nn.IrrepsArray("1o", positions[receivers % num_nodes] - positions[senders])
        sh = e3nn.spherical_harmonics("0e+1o+2e", vectors, normalize=True)
        out = message_passing(x, sh, w, senders, receivers, num_nodes, mode="drop").array
        return jnp.sum(jnp.sin(out.astype(jnp.float32)))

    def everything(positions, x, w):
        first = jax.grad(energy, argnums=(0, 1, 2))(positions, x, w)
        second = jax.grad(lambda *a: jnp.sum(jax.grad(energy)(*a).astype(jnp.float32) ** 2), argnums=(1, 2))(
            positions, x, w)
        return energy(positions, x, w), first, second

    with e3nn.backend("pallas"):
        text = _lower_for_platform(everything, (positions, x, w), "cuda").as_text()
    assert text.count("triton") >= 8  # forward, three gradients and second-derivative kernels
    assert f"{num_edges}x{irreps_out.dim}x" not in text and f"{num_edges + 1}x{irreps_out.dim}x" not in text


def test_kernel_default_launch_splits_channels_and_matches_unfused(monkeypatch):
    """The default launch shape at small scale: with MIN_CHANNELS shrunk to 2, a 9-node graph of 4 channels falls
    short of the target program count, so the default splits the node kernels into 4-row blocks (a padded tail) x 2
    channel blocks, and the edge kernels likewise where they can.  Forward, gradients and the forces-style double
    backward equal the reference, and the two-block grid is what lowers for CUDA."""
    from e3nn_fast.kernels import message_passing as kernel_mp

    monkeypatch.setattr(kernel_mp, "MIN_CHANNELS", 2)
    x, sh, w, senders, receivers = random_inputs(21, jnp.float64, "4x0e+4x1o", "0e+1o", num_real=11, num_pad=3)
    with e3nn.backend("pallas-interpret"):
        ours = loss_and_grads(message_passing, 9)(x, sh, w, senders, receivers)
    theirs = loss_and_grads(unfused, 9)(x, sh, w, senders, receivers)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)

    real = senders != receivers  # forces need edge vectors with a direction
    s, r = senders[real] % 7, receivers[real] % 7
    keep = s != r
    s, r = s[keep], r[keep]
    rng = np.random.default_rng(22)
    positions = jnp.asarray(rng.standard_normal((9, 3)) * 2)
    w_kept = jnp.asarray(rng.standard_normal((len(s), message_passing_irreps_out("4x0e+4x1o", "0e+1o").num_irreps)))
    with e3nn.backend("pallas-interpret"):
        ours = forces_loss(message_passing, s, r, 9, "0e+1o", mode="drop")(positions, x, w_kept)
    theirs = forces_loss(unfused, s, r, 9, "0e+1o")(positions, x, w_kept)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)

    _require_pallas_lowering("cuda")
    forward = lambda x, sh, w: message_passing(x, sh, w, senders, receivers, 9, mode="drop").array
    with e3nn.backend("pallas"):
        text = _lower_for_platform(forward, (x, sh, w), "cuda").as_text()
    assert re.findall(r"grid_x = (\d+)", text) == ["3"] and re.findall(r"grid_y = (\d+)", text) == ["2"]


def tiled_graph():
    """Edges (shuffled) whose receivers have 9 (two whole tiles of 4 and a lone edge), 5, 4 (one whole tile), 2, 1
    and 0 edges, plus one dropped edge (receiver ``num_nodes``); senders likewise send 8, 5, 4, 3, 1 or 0 edges (the
    x-gradient walks the reversed graph).
    Returns (senders, receivers, num_nodes)."""
    counts = {0: 9, 1: 1, 2: 4, 3: 2, 5: 5, 8: 1}  # node 4 receives nothing; node 8 is out of range for 8 nodes
    receivers = np.repeat(list(counts), list(counts.values()))
    sent = {6: 8, 0: 5, 3: 4, 2: 3, 1: 1, 5: 1}  # nodes 4 and 7 send nothing
    senders = np.random.default_rng(29).permutation(np.repeat(list(sent), list(sent.values())))
    order = np.random.default_rng(30).permutation(len(receivers))
    return jnp.asarray(senders[order], jnp.int32), jnp.asarray(receivers[order], jnp.int32), 8


def tiled_inputs(seed):
    senders, receivers, num_nodes = tiled_graph()
    rng = np.random.default_rng(seed)
    x = e3nn.IrrepsArray("2x0e+1x1o+1x2e", jnp.asarray(rng.standard_normal((num_nodes, 10))))
    sh = e3nn.IrrepsArray("0e+1o", jnp.asarray(rng.standard_normal((len(senders), 4))))
    n_weights = message_passing_irreps_out(x.irreps, sh.irreps).num_irreps
    return x, sh, jnp.asarray(rng.standard_normal((len(senders), n_weights))), senders, receivers, num_nodes


@pytest.mark.parametrize("tile", [2, 4])
def test_kernel_edge_tiles_match_unfused(small_kernel_blocks, tile):
    """``message_passing.edge_tile`` = 2 or 4: rows with 0, 1, fewer than T, exactly T and more than T edges (a
    masked partial last tile) give the reference's output and gradients w.r.t. x, sh and w; the node kernels
    (forward, and the x-gradient over the reversed graph) run tiled."""
    x, sh, w, senders, receivers, num_nodes = tiled_inputs(31)
    fn = functools.partial(message_passing, mode="drop")
    with tuning_override(message_passing__edge_tile=tile), e3nn.backend("pallas-interpret"):
        ours = loss_and_grads(fn, num_nodes)(x, sh, w, senders, receivers)
    theirs = loss_and_grads(unfused, num_nodes)(x, sh, w, senders, receivers)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)
    assert np.all(np.asarray(ours[0])[4] == 0.0)  # no edges: zeros, not a masked lane's product


def test_kernel_edge_tiles_in_every_slot_match_unfused(small_kernel_blocks, monkeypatch):
    """Tiles of 4 forced on the edge launches too (by default they keep one edge per row): the tiled body is right
    for every output slot, the x2 gradient's width-1 planes (a sum over channels) included."""
    monkeypatch.setattr(small_kernel_blocks, "edge_tile", lambda name: 4)
    x, sh, w, senders, receivers, num_nodes = tiled_inputs(32)
    fn = functools.partial(message_passing, mode="drop")
    with e3nn.backend("pallas-interpret"):
        ours = loss_and_grads(fn, num_nodes)(x, sh, w, senders, receivers)
    theirs = loss_and_grads(unfused, num_nodes)(x, sh, w, senders, receivers)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)


def test_kernel_edge_tiles_forces_double_backward(small_kernel_blocks):
    """Forces in the loss with tiles of 4: every kernel slot is an output at least once."""
    senders, receivers, num_nodes = tiled_graph()
    keep = np.asarray(senders != receivers)  # edge vectors need a direction
    senders, receivers = senders[keep], receivers[keep]
    rng = np.random.default_rng(33)
    positions = jnp.asarray(rng.standard_normal((num_nodes, 3)) * 2)
    x = e3nn.IrrepsArray("2x0e+1x1o", jnp.asarray(rng.standard_normal((num_nodes, 5))))
    w = jnp.asarray(rng.standard_normal((len(senders), message_passing_irreps_out("2x0e+1x1o", "0e+1o").num_irreps)))
    with tuning_override(message_passing__edge_tile=4), e3nn.backend("pallas-interpret"):
        ours = forces_loss(message_passing, senders, receivers, num_nodes, "0e+1o", mode="drop")(positions, x, w)
    theirs = forces_loss(unfused, senders, receivers, num_nodes, "0e+1o")(positions, x, w)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float64), ours, theirs)


def test_kernel_edge_tiles_lower_for_cuda():
    """With edge_tile=4 the forward, gradients and forces-style double backward lower to Triton (a failure to lower
    fails the test); the node kernels differ from the one-edge kernels, the edge kernels do not, and edge_tile=1
    lowers exactly the default kernels."""
    _require_pallas_lowering("cuda")
    x, sh, w, senders, receivers, num_nodes = tiled_inputs(34)
    x = e3nn.IrrepsArray(x.irreps, x.array.astype(jnp.float32))
    positions = jnp.asarray(np.random.default_rng(35).standard_normal((num_nodes, 3)), jnp.float32)
    w = w.astype(jnp.float32)

    def energy(positions, x, w):
        vectors = e3nn.IrrepsArray("1o", positions[receivers % num_nodes] - positions[senders] + 0.5)
        sh = e3nn.spherical_harmonics("0e+1o", vectors, normalize=True)
        return jnp.sum(jnp.sin(message_passing(x, sh, w, senders, receivers, num_nodes, mode="drop").array))

    def kernels(**knobs):
        """Kernel name -> the set of distinct Triton configs (IR included) lowered under ``knobs``."""

        def everything(positions, x, w):  # a new function per call: jit would reuse a trace made with other knobs
            second = jax.grad(lambda *a: jnp.sum(jax.grad(energy)(*a) ** 2), argnums=(1, 2))(positions, x, w)
            return energy(positions, x, w), jax.grad(energy, argnums=(0, 1, 2))(positions, x, w), second

        with tuning_override(**knobs), e3nn.backend("pallas"):
            text = _lower_for_platform(everything, (positions, x, w), "cuda").as_text()
        found: dict = {}
        for line in text.splitlines():
            if "xla.gpu.triton" in line:  # one launch; its config (grid, warps, IR bytecode, name) without operands
                config = line[line.index("mhlo.backend_config"):]
                name = re.search(r'name = "(e3nn_message_passing_\w+)"', config).group(1)
                found.setdefault(name, set()).add(config)
        return found

    default, one, tiled = kernels(), kernels(message_passing__edge_tile=1), kernels(message_passing__edge_tile=4)
    assert set(tiled) == {"e3nn_message_passing_out", "e3nn_message_passing_x1", "e3nn_message_passing_x2",
                          "e3nn_message_passing_weights_batched"}
    assert one == default
    for name in tiled:
        assert (tiled[name] == default[name]) == (name in ("e3nn_message_passing_x2",
                                                           "e3nn_message_passing_weights_batched")), name


# --- modules -----------------------------------------------------------------------------------------------------


def test_haiku_and_flax_modules_match_unfused_composition():
    hk = pytest.importorskip("haiku")
    flax = pytest.importorskip("flax")
    from e3nn_fast.flax.message_passing import MessagePassing as FlaxMP
    from e3nn_fast.haiku.message_passing import MessagePassing as HaikuMP

    x, sh, _, senders, receivers = random_inputs(16, jnp.float32, "2x0e+1o", "0e+1o")
    irreps_out = e3nn.Irreps("3x0e+2x1o")
    kept = [ir for _, ir in irreps_out]
    n_weights = message_passing_irreps_out(x.irreps, sh.irreps, kept).num_irreps
    w = jnp.asarray(np.random.default_rng(17).standard_normal((len(senders), n_weights)), jnp.float32)

    def composition(linear):
        messages = unfused(x, sh, w, senders, receivers, 9, filter_ir_out=kept) / 4.0
        return linear(messages)

    @hk.without_apply_rng
    @hk.transform
    def haiku_model(x, sh, w):
        module = HaikuMP(irreps_out, avg_num_neighbors=4.0)
        assert module.num_edge_weights(x.irreps, sh.irreps) == n_weights
        return module(x, sh, w, senders, receivers, 9, mode="drop")

    params = haiku_model.init(jax.random.PRNGKey(0), x, sh, w)
    ours = jax.jit(haiku_model.apply)(params, x, sh, w)
    assert set(params) == {"message_passing/linear"}
    reference = hk.without_apply_rng(hk.transform(lambda: composition(e3nn.haiku.Linear(irreps_out, name="linear"))))
    theirs = reference.apply({"linear": params["message_passing/linear"]})
    assert ours.irreps == irreps_out
    assert_close(ours.array, theirs.array, jnp.float32)

    module = FlaxMP(irreps_out=irreps_out, avg_num_neighbors=4.0)
    variables = module.init(jax.random.PRNGKey(1), x, sh, w, senders, receivers, 9, mode="drop")
    ours = jax.jit(lambda v, x, sh, w: module.apply(v, x, sh, w, senders, receivers, 9, mode="drop"))(
        variables, x, sh, w)
    linear = e3nn.flax.Linear(irreps_out)
    theirs = composition(lambda m: linear.apply({"params": variables["params"]["linear"]}, m))
    assert_close(ours.array, theirs.array, jnp.float32)

    # nnx: same layer, parameters loaded from the linen module
    from flax import nnx

    nnx_module = e3nn.nnx.MessagePassing(x.irreps, sh.irreps, irreps_out, avg_num_neighbors=4.0, rngs=nnx.Rngs(0))
    assert nnx_module.num_edge_weights == n_weights
    nnx.update(nnx_module.linear, {"params": variables["params"]["linear"]})
    ours = nnx_module(x, sh, w, senders, receivers, 9, mode="drop")
    assert_close(ours.array, theirs.array, jnp.float32)
