"""Scatter reductions and radius_graph: parity with e3nn-jax 0.21 and with a numpy loop,
jit, gradients, IrrepsArray inputs, bad input."""

import warnings

import e3nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3nn_fast import graph
from e3nn_fast.irreps_array import IrrepsArray

DTYPES = [jnp.float32, jnp.float64]
OPS = ["sum", "mean", "max"]
OURS = {"sum": graph.scatter_sum, "mean": graph.scatter_mean, "max": graph.scatter_max}
THEIRS = {"sum": e3nn_jax.scatter_sum, "mean": e3nn_jax.scatter_mean, "max": e3nn_jax.scatter_max}
TOL = {jnp.float32: dict(rtol=1e-6, atol=1e-6), jnp.float64: dict(rtol=1e-13, atol=1e-13)}


def _data(shape, dtype, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype=jnp.float64).astype(dtype)


def _np_scatter(op, data, dst, output_size):
    """Straightforward loop: reduce ``data[idx]`` into ``out[dst[idx]]`` for every index of dst."""
    data, dst = np.asarray(data, np.float64), np.asarray(dst)
    tail = data.shape[dst.ndim :]
    out = np.full((output_size,) + tail, -np.inf if op == "max" else 0.0)
    count = np.zeros(output_size)
    for idx in np.ndindex(dst.shape):
        j = dst[idx]
        out[j] = np.maximum(out[j], data[idx]) if op == "max" else out[j] + data[idx]
        count[j] += 1
    if op == "mean":
        out = out / np.maximum(count, 1).reshape((-1,) + (1,) * len(tail))
    return out


def _np_segments(nel, n):
    """Segment id of each element; leftovers beyond sum(nel) go to the last segment."""
    ids = np.repeat(np.arange(len(nel)), nel)
    return np.concatenate([ids, np.full(n - len(ids), len(nel) - 1)]).astype(int)


def _assert_close(ours, expected, dtype):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), **TOL[dtype])


DST = np.array([0, 2, 2, 1, 0, 4, 2])  # row 3 receives nothing (empty group)
NEL = np.array([2, 0, 3, 2])  # segment 1 is empty


# ------------------------------------------------------------------ dst mode


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_scatter_dst_parity(op, dtype):
    x = _data((7, 2, 3), dtype)
    ours = OURS[op](x, dst=jnp.asarray(DST), output_size=6)
    theirs = THEIRS[op](x, dst=jnp.asarray(DST), output_size=6)
    assert ours.dtype == theirs.dtype == dtype
    assert ours.shape == (6, 2, 3)
    _assert_close(ours, theirs, dtype)
    _assert_close(ours, _np_scatter(op, x, DST, 6), dtype)


@pytest.mark.parametrize("op", OPS)
def test_scatter_multidim_dst_and_map_back(op):
    x = _data((3, 4, 2), jnp.float64, seed=1)
    dst = jnp.array([[0, 1, 1, 3], [3, 0, 2, 2], [1, 1, 0, 3]])
    ours = OURS[op](x, dst=dst, output_size=5)
    _assert_close(ours, THEIRS[op](x, dst=dst, output_size=5), jnp.float64)
    _assert_close(ours, _np_scatter(op, x, dst, 5), jnp.float64)
    # map_back: every element gets its group's reduction; the labels themselves are arbitrary.
    labels = dst * 10 - 7
    back = OURS[op](x, dst=labels, map_back=True)
    assert back.shape == x.shape
    _assert_close(back, THEIRS[op](x, dst=labels, map_back=True), jnp.float64)
    _assert_close(back, np.asarray(ours)[np.asarray(dst)], jnp.float64)


def test_scatter_negative_indices_count_from_the_end():
    x = _data((4, 3), jnp.float64)
    dst = jnp.array([-1, 0, -3, 1])
    _assert_close(
        graph.scatter_sum(x, dst=dst, output_size=3),
        e3nn_jax.scatter_sum(x, dst=dst, output_size=3),
        jnp.float64,
    )


@pytest.mark.parametrize("mode", ["drop", "fill", "clip"])
def test_scatter_out_of_range_modes(mode):
    # With an explicit mode, out-of-range indices are legal (dropped or clamped), eager or jitted.
    x = _data((5, 2), jnp.float64)
    dst = jnp.array([0, 3, 7, 1, -9])
    theirs = e3nn_jax.scatter_sum(x, dst=dst, output_size=4, mode=mode)
    _assert_close(graph.scatter_sum(x, dst=dst, output_size=4, mode=mode), theirs, jnp.float64)
    jitted = jax.jit(lambda x, d: graph.scatter_sum(x, dst=d, output_size=4, mode=mode))
    _assert_close(jitted(x, dst), theirs, jnp.float64)


def test_scatter_integer_data_dtype():
    x = jnp.arange(6, dtype=jnp.int32)
    dst = jnp.array([0, 1, 0, 2, 1, 0])
    for op in OPS:
        ours = OURS[op](x, dst=dst, output_size=4)
        theirs = THEIRS[op](x, dst=dst, output_size=4)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------ nel (segment) mode


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_scatter_nel_parity(op, dtype):
    x = _data((7, 3), dtype, seed=2)
    ours = OURS[op](x, nel=jnp.asarray(NEL))
    _assert_close(ours, THEIRS[op](x, nel=jnp.asarray(NEL)), dtype)
    _assert_close(ours, _np_scatter(op, x, _np_segments(NEL, 7), 4), dtype)
    assert ours.dtype == dtype


@pytest.mark.parametrize("op", OPS)
def test_scatter_nel_map_back(op):
    x = _data((7, 3), jnp.float64, seed=3)
    ours = OURS[op](x, nel=jnp.asarray(NEL), map_back=True)
    assert ours.shape == x.shape
    expected = _np_scatter(op, x, _np_segments(NEL, 7), 4)[_np_segments(NEL, 7)]
    _assert_close(ours, expected, jnp.float64)
    if op != "mean":  # e3nn-jax's scatter_mean(nel=..., map_back=True) calls the removed jax.tree_map
        _assert_close(ours, THEIRS[op](x, nel=jnp.asarray(NEL), map_back=True), jnp.float64)


def test_scatter_nel_leftover_elements_go_to_last_segment():
    x = _data((6, 2), jnp.float64, seed=4)
    nel = jnp.array([1, 2])  # 3 elements are not covered by nel
    for op in OPS:
        _assert_close(OURS[op](x, nel=nel), THEIRS[op](x, nel=nel), jnp.float64)
    # The mean still divides by nel, exactly like e3nn-jax.
    np.testing.assert_allclose(graph.scatter_mean(x, nel=nel)[1], np.asarray(x)[1:].sum(0) / 2)


# ------------------------------------------------------------------ jit and gradients


def test_scatter_jit():
    x = _data((7, 3), jnp.float64, seed=5)
    dst, nel = jnp.asarray(DST), jnp.asarray(NEL)

    @jax.jit
    def all_modes(x, dst, nel):
        return [
            graph.scatter_mean(x, dst=dst, output_size=6),
            graph.scatter_max(x, dst=dst, map_back=True),
            graph.scatter_sum(x, nel=nel),
            graph.scatter_mean(x, nel=nel, map_back=True),
        ]

    eager = [
        graph.scatter_mean(x, dst=dst, output_size=6),
        graph.scatter_max(x, dst=dst, map_back=True),
        graph.scatter_sum(x, nel=nel),
        graph.scatter_mean(x, nel=nel, map_back=True),
    ]
    for a, b in zip(all_modes(x, dst, nel), eager):
        _assert_close(a, b, jnp.float64)


def test_scatter_gradients():
    x = _data((7, 3), jnp.float64, seed=6)
    dst = jnp.asarray(DST)

    def loss(x):
        return (
            jnp.sum(graph.scatter_mean(x, dst=dst, output_size=6) ** 2)
            + jnp.sum(jnp.where(jnp.isfinite(m := graph.scatter_max(x, dst=dst, output_size=6)), m, 0.0))
            + jnp.sum(graph.scatter_sum(x, nel=jnp.asarray(NEL), map_back=True) ** 2)
        )

    g = jax.jit(jax.grad(loss))(x)
    assert jnp.all(jnp.isfinite(g))
    # scatter_sum is linear: its gradient is the gather of the output cotangent.
    g_sum = jax.grad(lambda x: jnp.sum(graph.scatter_sum(x, dst=dst, output_size=6) * jnp.arange(6.0)[:, None]))(x)
    np.testing.assert_allclose(g_sum, np.broadcast_to(DST[:, None], (7, 3)))


# ------------------------------------------------------------------ index_add


def test_index_add_is_deprecated_scatter_sum():
    x = _data((7, 2), jnp.float64)
    with pytest.warns(DeprecationWarning, match="scatter_sum"):
        ours = graph.index_add(jnp.asarray(DST), x, out_dim=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = e3nn_jax.index_add(jnp.asarray(DST), x, out_dim=6)
        ours_nel = graph.index_add(input=x, n_elements=jnp.asarray(NEL))
        theirs_nel = e3nn_jax.index_add(input=x, n_elements=jnp.asarray(NEL))
    _assert_close(ours, theirs, jnp.float64)
    _assert_close(ours_nel, theirs_nel, jnp.float64)


# ------------------------------------------------------------------ IrrepsArray inputs


@pytest.mark.parametrize("op", OPS)
def test_scatter_irreps_array(op):
    irreps = "2x0e + 3x0e" if op == "max" else "0e + 1o + 2e"
    x = _data((7, 9 if op != "max" else 5), jnp.float32)
    xi = IrrepsArray(irreps, x)
    for kwargs in [dict(dst=jnp.asarray(DST), output_size=6), dict(nel=jnp.asarray(NEL), map_back=True)]:
        ours = OURS[op](xi, **kwargs)
        assert isinstance(ours, IrrepsArray)
        assert ours.irreps == xi.irreps
        assert ours.array.dtype == jnp.float32
        np.testing.assert_array_equal(ours.array, OURS[op](x, **kwargs))
    theirs = THEIRS[op](e3nn_jax.IrrepsArray(irreps, x), dst=jnp.asarray(DST), output_size=6)
    _assert_close(OURS[op](xi, dst=jnp.asarray(DST), output_size=6).array, theirs.array, jnp.float32)
    # IrrepsArray is a pytree: it goes through jit.
    jitted = jax.jit(lambda a, d: OURS[op](a, dst=d, output_size=6))(xi, jnp.asarray(DST))
    assert isinstance(jitted, IrrepsArray) and jitted.irreps == xi.irreps


def test_scatter_irreps_array_bad_input():
    xi = IrrepsArray("0e + 1o", _data((7, 4), jnp.float64))
    with pytest.raises(ValueError, match="scalar"):
        graph.scatter_max(xi, dst=jnp.asarray(DST), output_size=6)
    with pytest.raises(ValueError, match="scalar"):
        graph.scatter_max(IrrepsArray("0o", _data((7, 1), jnp.float64)), dst=jnp.asarray(DST), output_size=6)
    with pytest.raises(ValueError, match="irreps axis"):
        graph.scatter_sum(xi, dst=jnp.zeros((7, 4), jnp.int32), output_size=2)
    with pytest.raises(ValueError, match="no leading axis"):
        graph.scatter_sum(IrrepsArray("0e + 1o", jnp.ones(4)), nel=jnp.array([4]))


# ------------------------------------------------------------------ bad input


def test_scatter_bad_input():
    x = _data((7, 2), jnp.float64)
    dst, nel = jnp.asarray(DST), jnp.asarray(NEL)
    with pytest.raises(ValueError, match="neither dst nor nel"):
        graph.scatter_sum(x, output_size=3)
    with pytest.raises(ValueError, match="both dst and nel"):
        graph.scatter_sum(x, dst=dst, nel=nel)
    with pytest.raises(ValueError, match=r"dst.shape must be equal to data.shape\[: dst.ndim\]"):
        graph.scatter_sum(x, dst=dst[:5], output_size=6)
    with pytest.raises(ValueError, match="pass output_size="):
        graph.scatter_mean(x, dst=dst)
    with pytest.raises(ValueError, match="with map_back=True"):
        graph.scatter_sum(x, dst=dst, output_size=6, map_back=True)
    with pytest.raises(ValueError, match="together with nel"):
        graph.scatter_sum(x, nel=nel, output_size=4)
    with pytest.raises(ValueError, match="nel must be >= 0"):
        graph.scatter_sum(x, nel=jnp.array([4, -1, 4]))
    with pytest.raises(ValueError, match="exceeds the number of elements"):
        graph.scatter_mean(x, nel=jnp.array([4, 4]))
    with pytest.raises(ValueError, match="nel is empty"):
        graph.scatter_sum(x, nel=jnp.zeros((0,), jnp.int32))
    with pytest.raises(ValueError, match="1-dimensional"):
        graph.scatter_sum(x, nel=jnp.array([[7]]))
    with pytest.raises(ValueError, match=r"dst values \(for output_size=4\) must lie in \[-4, 4\).*max=4"):
        graph.scatter_sum(x, dst=dst, output_size=4)
    with pytest.raises(ValueError, match="min=-8"):
        graph.scatter_max(x, dst=dst.at[0].set(-8), output_size=6)
    with pytest.raises(TypeError, match="dst must be an integer array"):
        graph.scatter_sum(x, dst=dst.astype(jnp.float32), output_size=6)
    with pytest.raises(TypeError, match="dst must be an integer array"):
        graph.scatter_sum(x, dst=dst > 1, output_size=6)
    with pytest.raises(TypeError, match="output_size must be a static Python int"):
        graph.scatter_sum(x, dst=dst, output_size=6.0)
    with pytest.raises(ValueError, match="output_size must be >= 0"):
        graph.scatter_sum(x, dst=dst, output_size=-1)
    with pytest.raises(ValueError, match="mode='wrap' is not valid"):
        graph.scatter_sum(x, dst=dst, output_size=6, mode="wrap")


def test_scatter_out_of_range_under_jit_is_not_checked():
    # Documented: values cannot be checked under jit; the JAX scatter mode decides (here: dropped).
    x = _data((7, 2), jnp.float64)
    f = jax.jit(lambda d: graph.scatter_sum(x, dst=d, output_size=5))
    out = f(jnp.asarray(DST))  # index 5 is out of range but no error is raised
    assert out.shape == (5, 2)


# ------------------------------------------------------------------ radius_graph


def _positions(n=24, dtype=jnp.float64, seed=0):
    return _data((n, 3), dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_parity(dtype, loop):
    pos = _positions(dtype=dtype)
    src, dst = graph.radius_graph(pos, 1.1, loop=loop)
    src_e, dst_e = e3nn_jax.radius_graph(pos, 1.1, loop=loop)
    np.testing.assert_array_equal(src, src_e)
    np.testing.assert_array_equal(dst, dst_e)
    # Independent brute force.
    p = np.asarray(pos, np.float64)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    mask = (d < 1.1) & (loop | ~np.eye(len(p), dtype=bool))
    expected_src, expected_dst = np.nonzero(mask)
    np.testing.assert_array_equal(src, expected_src)
    np.testing.assert_array_equal(dst, expected_dst)


def test_radius_graph_size_fill_batch_and_jit():
    pos = _positions(seed=1)
    batch = jnp.arange(24) // 8
    for kwargs in [
        dict(size=200, fill_src=24, fill_dst=25),
        dict(size=10),
        dict(batch=batch),
        dict(batch=batch, size=150, loop=True),
    ]:
        ours = graph.radius_graph(pos, 1.3, **kwargs)
        theirs = e3nn_jax.radius_graph(pos, 1.3, **kwargs)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)
    src, dst = graph.radius_graph(pos, 1.3, batch=batch)
    assert np.all(np.asarray(batch)[src] == np.asarray(batch)[dst]) and len(src) > 0
    jitted = jax.jit(lambda p: graph.radius_graph(p, 1.3, size=60, fill_src=24))(pos)
    for a, b in zip(jitted, graph.radius_graph(pos, 1.3, size=60, fill_src=24)):
        np.testing.assert_array_equal(a, b)


def test_radius_graph_irreps_array_and_bad_input():
    pos = _positions(n=10, seed=2)
    for a, b in zip(graph.radius_graph(IrrepsArray("1o", pos), 1.5), graph.radius_graph(pos, 1.5)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"pos must have shape \(n, 3\), got \(10, 2\)"):
        graph.radius_graph(pos[:, :2], 1.0)
    with pytest.raises(ValueError, match=r"pos must have shape \(n, 3\)"):
        graph.radius_graph(pos[0], 1.0)
    with pytest.raises(ValueError, match="batch must have shape"):
        graph.radius_graph(pos, 1.0, batch=jnp.zeros(9, jnp.int32))
    with pytest.raises(TypeError, match="size must be a static Python int"):
        graph.radius_graph(pos, 1.0, size=3.5)
