"""e3nn_fast.experimental against e3nn_jax.experimental 0.21: same parameter names / shapes / dtypes, e3nn-jax's
parameters give the same outputs in ours, same parameters from the same key, equivariance, clear errors.

The fast set (``-m "not slow"``) covers float64 parity of every layer, the LinearSHTP / voxel equivariance and
the error paths; float32 parity, the graph equivariance and same-key initialisation are marked slow.

Everything numeric runs under ``jax.jit`` (eager dispatch compiles every small op).  Parameters for the parity and
equivariance checks come from ``jax.eval_shape(init)`` filled with random numbers: running ``init`` under jit makes
XLA compile one RNG per parameter, which is slow on CPU; same-key initialisation is checked on small modules.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast
from e3nn_fast.experimental import linear_shtp, point_convolution, transformer, voxel_convolution, voxel_pooling
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.rotation import rand_matrix

e3nn_jax = pytest.importorskip("e3nn_jax")
from e3nn_jax.experimental import linear_shtp as ref_linear_shtp  # noqa: E402
from e3nn_jax.experimental import point_convolution as ref_point_convolution  # noqa: E402
from e3nn_jax.experimental import transformer as ref_transformer  # noqa: E402
from e3nn_jax.experimental import voxel_convolution as ref_voxel_convolution  # noqa: E402
from e3nn_jax.experimental import voxel_pooling as ref_voxel_pooling  # noqa: E402

TOL = {jnp.float64: 1e-10, jnp.float32: 1e-4}
KEY = jax.random.PRNGKey(0)
# float32 parity repeats the float64 compile: part of the slow set (CI runs -m "not slow")
DTYPES = [jnp.float64, pytest.param(jnp.float32, marks=pytest.mark.slow)]


def _rng(seed=0):
    return np.random.RandomState(seed)


def _lib(ours: bool):
    """(the library, its IrrepsArray class)."""
    return (e3nn_fast, IrrepsArray) if ours else (e3nn_jax, e3nn_jax.IrrepsArray)


def _random_params(template, seed=0):
    """Parameters with the names, shapes and dtypes of ``template`` (from ``jax.eval_shape(init)``), random values."""
    rng = _rng(seed)
    return jax.tree_util.tree_map(lambda t: jnp.asarray(rng.randn(*t.shape), t.dtype), template)


def _assert_same_template(ours, ref, same_dtypes=True):
    """Same tree (module / parameter names), shapes and (unless ``same_dtypes=False``) dtypes."""
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        assert a.shape == b.shape
        assert a.dtype == b.dtype or not same_dtypes


def _is_irreps_array(x):
    return isinstance(x, (IrrepsArray, e3nn_jax.IrrepsArray))


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree, is_leaf=_is_irreps_array)


def _check_parity(make, dtype, same_dtypes=True):
    """``make(ours, dtype) -> (init, apply)`` closures over the inputs: same templates, same outputs.

    ``same_dtypes=False``: e3nn-jax promotes float32 to float64 under x64 before creating some parameters, ours
    keeps float32; compare names and shapes only and check that ours stays float32.
    """
    (init_o, apply_o), (init_r, apply_r) = make(True, dtype), make(False, dtype)
    template = jax.eval_shape(init_o)
    _assert_same_template(template, jax.eval_shape(init_r), same_dtypes)
    assert all(t.dtype == dtype for t in jax.tree_util.tree_leaves(template))
    params = _random_params(template)
    ours, ref = _leaves(jax.jit(apply_o)(params)), _leaves(jax.jit(apply_r)(params))
    assert len(ours) == len(ref) > 0
    for a, b in zip(ours, ref):
        assert str(a.irreps) == str(b.irreps)
        assert a.dtype == dtype
        np.testing.assert_allclose(a.array, b.array, rtol=TOL[dtype], atol=TOL[dtype])


def _check_equivariance(pairs, atol):
    for name, (expected, got) in pairs.items():
        np.testing.assert_allclose(got, expected, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# linear_shtp
# ----------------------------------------------------------------------------------------------------------------

SHTP_IN, SHTP_DIM = "2x0e+1o+2x1e+2e", 16
SHTP_CASES = {  # name: (direction irrep, mix, irreps_out)
    "1o-mix": ("1o", True, "3x0e+2x1o+1e+2x2e+2o"),
    "1e-filter": ("1e", False, "0e+1o+1e+2e+2o"),
}
# a generic direction and one inside the gimbal-lock cone around the y axis
DIRECTIONS = np.array([[0.3, -0.5, 0.8], [0.02, -1.3, 0.05]])


def _make_shtp(ours, dtype):
    lib = linear_shtp if ours else ref_linear_shtp
    _, Array = _lib(ours)
    x_values = jnp.asarray(_rng(1).randn(2, SHTP_DIM), dtype)
    d_values = jnp.asarray(DIRECTIONS, dtype)
    modules = {name: (lib.LinearSHTP(out, mix=mix), ird) for name, (ird, mix, out) in SHTP_CASES.items()}

    def init():
        x = Array(SHTP_IN, x_values[0])
        return {name: m.init(KEY, x, Array(ird, d_values[0])) for name, (m, ird) in modules.items()}

    def apply(params):
        x = Array(SHTP_IN, x_values)
        out = {
            name: jax.vmap(lambda a, b, m=m, p=params[name]: m.apply(p, a, b))(x, Array(ird, d_values))
            for name, (m, ird) in modules.items()
        }
        out["shtp"] = jax.vmap(lambda a, b: lib.shtp(a, b, "0e+1o+2e+1e"))(x, Array("1o", d_values))
        return out

    return init, apply


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_shtp_matches_e3nn(dtype):
    _check_parity(_make_shtp, dtype, same_dtypes=dtype == jnp.float64)


@pytest.mark.slow
def test_linear_shtp_same_init_as_e3nn():
    def init(lib, Array):
        return lib.LinearSHTP("0e+1o+1e").init(KEY, Array("0e+1o+2e", jnp.ones(9)), Array("1o", jnp.ones(3)))

    ours, ref = init(linear_shtp, IrrepsArray), init(ref_linear_shtp, e3nn_jax.IrrepsArray)
    _assert_same_template(ours, ref)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(a, b)


@jax.jit
def _shtp_equivariance(params, R):
    x = IrrepsArray(SHTP_IN, jnp.asarray(_rng(2).randn(SHTP_DIM)))
    out = {}
    # one case with the generic direction, the other with the near-pole one (both rotate to generic directions)
    for (name, (ird, mix, irreps_out)), direction in zip(SHTP_CASES.items(), DIRECTIONS):
        module = linear_shtp.LinearSHTP(irreps_out, mix=mix)
        d = IrrepsArray(ird, jnp.asarray(direction))
        y = module.apply(params[name], x, d)
        y_rot = module.apply(params[name], x.transform_by_matrix(R), d.transform_by_matrix(R))
        out[name] = (y.transform_by_matrix(R).array, y_rot.array)
    d = IrrepsArray("1o", jnp.asarray(DIRECTIONS[0]))
    y = linear_shtp.shtp(x, d, "0e+1o+2e+1e")
    y_rot = linear_shtp.shtp(x.transform_by_matrix(R), d.transform_by_matrix(R), "0e+1o+2e+1e")
    out["shtp"] = (y.transform_by_matrix(R).array, y_rot.array)
    return out


@pytest.mark.slow  # equivariance also follows from the parity tests with e3nn-jax
def test_linear_shtp_is_equivariant():
    init, _ = _make_shtp(True, jnp.float64)
    params = _random_params(jax.eval_shape(init))
    R = rand_matrix(jax.random.PRNGKey(5), (), dtype=jnp.float64)
    # a proper rotation, and one composed with the inversion (checks the parity selection rules)
    for Q in (R, -R):
        _check_equivariance(_shtp_equivariance(params, Q), atol=1e-10)


def test_linear_shtp_bad_inputs():
    module = linear_shtp.LinearSHTP("0e+1o")
    x = IrrepsArray("0e+1o", np.ones(4))
    with pytest.raises(ValueError, match="direction must be a single vector"):
        module.init(KEY, x, IrrepsArray("0e+0e+0e", np.ones(3)))
    with pytest.raises(ValueError, match="input must have shape"):
        module.init(KEY, IrrepsArray("0e+1o", np.ones((2, 4))), IrrepsArray("1o", np.ones(3)))
    with pytest.raises(TypeError, match="IrrepsArray"):
        module.init(KEY, np.ones(4), IrrepsArray("1o", np.ones(3)))
    with pytest.raises(ValueError, match="direction must be a single vector"):
        linear_shtp.shtp(x, IrrepsArray("2e", np.ones(5)), "0e")


def test_linear_shtp_unreachable_output_is_zero():
    # a 0e input with a 1o direction cannot produce 0o (e3nn-jax fails here); ours returns zeros for it
    module = linear_shtp.LinearSHTP("0o+1o")
    x, d = IrrepsArray("0e", jnp.ones(1)), IrrepsArray("1o", jnp.array([0.0, 0.0, 1.0]))
    y = jax.jit(lambda: module.apply(module.init(KEY, x, d), x, d))()
    assert str(y.irreps) == "1x0o+1x1o"
    np.testing.assert_array_equal(y.array[:1], 0.0)


# ----------------------------------------------------------------------------------------------------------------
# graph layers: transformer and point convolution
# ----------------------------------------------------------------------------------------------------------------

NUM_NODES, NUM_EDGES, NODE_IRREPS = 5, 12, "2x0e+2x1o"  # even multiplicities: 2 attention heads


def _graph(dtype, R=None):
    """Random graph (src, dst, positions, node features, edge scalars, cutoff); rotated by ``R`` if given."""
    rng = _rng(3)
    src = jnp.asarray(rng.randint(0, NUM_NODES, NUM_EDGES), jnp.int32)
    dst = jnp.asarray(rng.randint(0, NUM_NODES, NUM_EDGES), jnp.int32)
    pos = jnp.asarray(rng.randn(NUM_NODES, 3), dtype)
    feats = jnp.asarray(rng.randn(NUM_NODES, 8), dtype)
    if R is not None:
        pos = pos @ R.T
        feats = IrrepsArray(NODE_IRREPS, feats).transform_by_matrix(R).array
    radial = jnp.asarray(rng.randn(NUM_EDGES, 2), dtype)
    cutoff = jnp.asarray(rng.rand(NUM_EDGES), dtype)
    return src, dst, pos, feats, radial, cutoff


def _graph_modules(ours):
    """Three haiku/flax (init, apply) builders over a graph: transformer, haiku and flax point convolutions."""
    lib, Array = _lib(ours)
    tr_lib = transformer if ours else ref_transformer
    pc_lib = point_convolution if ours else ref_point_convolution
    conv_kw = dict(avg_num_neighbors=2.0, sh_lmax=2, mlp_neurons=(8,))

    def transformer_fn(src, dst, pos, feats, radial, cutoff):
        vectors = Array("1o", pos[dst] - pos[src])
        attr = lib.concatenate([Array("2x0e", radial), lib.spherical_harmonics("1o+2e", vectors, True)])
        module = tr_lib.Transformer("0e+2x1o+1e", [8], jax.nn.gelu, num_heads=2)
        return module(src, dst, cutoff, attr, Array(NODE_IRREPS, feats))

    def conv_haiku_fn(src, dst, pos, feats, radial, cutoff):
        conv = pc_lib.MessagePassingConvolutionHaiku("0e+1o+2e", lambda r: pc_lib.radial_basis(r, 3.0, 4), **conv_kw)
        return conv(Array("1o", pos), Array(NODE_IRREPS, feats), src, dst)

    conv_flax = pc_lib.MessagePassingConvolutionFlax("0e+1o+2e", lambda r: pc_lib.radial_basis(r, 3.0, 4), **conv_kw)

    def flax_args(src, dst, pos, feats, radial, cutoff):
        return Array("1o", pos), Array(NODE_IRREPS, feats), src, dst

    tr = hk.without_apply_rng(hk.transform(transformer_fn))
    hk_conv = hk.without_apply_rng(hk.transform(conv_haiku_fn))
    return {
        "transformer": (lambda g: tr.init(KEY, *g), lambda p, g: tr.apply(p, *g)),
        "conv_haiku": (lambda g: hk_conv.init(KEY, *g), lambda p, g: hk_conv.apply(p, *g)),
        "conv_flax": (lambda g: conv_flax.init(KEY, *flax_args(*g)), lambda p, g: conv_flax.apply(p, *flax_args(*g))),
    }


def _make_graph(ours, dtype):
    modules, graph = _graph_modules(ours), _graph(dtype)

    def init():
        return {name: init(graph) for name, (init, _) in modules.items()}

    def apply(params):
        return {name: apply(params[name], graph) for name, (_, apply) in modules.items()}

    return init, apply


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_layers_match_e3nn(dtype):
    _check_parity(_make_graph, dtype)


@jax.jit
def _graph_equivariance(params, R):
    out = {}
    for name, (_, apply) in _graph_modules(True).items():
        out[name] = (
            apply(params[name], _graph(jnp.float64)).transform_by_matrix(R).array,
            apply(params[name], _graph(jnp.float64, R)).array,
        )
    return out


@pytest.mark.slow
def test_graph_layers_are_equivariant():
    init, _ = _make_graph(True, jnp.float64)
    params = _random_params(jax.eval_shape(init))
    R = rand_matrix(jax.random.PRNGKey(6), (), dtype=jnp.float64)
    _check_equivariance(_graph_equivariance(params, R), atol=1e-9)


def test_graph_layers_bad_inputs():
    src, dst, pos, feats, radial, cutoff = _graph(jnp.float64)
    node_feats = IrrepsArray(NODE_IRREPS, feats)

    def conv(positions, senders):
        def f():
            module = point_convolution.MessagePassingConvolutionHaiku("0e", lambda r: r[:, None], avg_num_neighbors=1.0)
            return module(positions, node_feats, senders, dst)

        return jax.eval_shape(lambda: hk.transform(f).init(KEY))

    with pytest.raises(TypeError, match="positions should be an IrrepsArray"):
        conv(pos, src)
    with pytest.raises(ValueError, match="senders and receivers"):
        conv(IrrepsArray("1o", pos), src[:3])

    def attention(edge_src, num_heads=1):
        def f():
            module = transformer.Transformer("0e", [4], jax.nn.gelu, num_heads=num_heads)
            return module(edge_src, dst, cutoff, IrrepsArray("2x0e", radial), node_feats)

        return jax.eval_shape(lambda: hk.transform(f).init(KEY))

    with pytest.raises(TypeError, match="integer node indices"):
        attention(src.astype(jnp.float64))
    with pytest.raises(ValueError, match=r"edge_src must have shape \(12,\)"):
        attention(src[:5])
    with pytest.raises(ValueError, match="num_heads"):
        attention(src, num_heads=0)


# ----------------------------------------------------------------------------------------------------------------
# voxels: convolution and pooling
# ----------------------------------------------------------------------------------------------------------------

VOXEL_KW = dict(diameter=3.0, num_radial_basis={0: 2, 1: 3, 2: 2}, steps=(1.0, 1.0, 1.2))


def _make_voxel(ours, dtype):
    lib = voxel_convolution if ours else ref_voxel_convolution
    _, Array = _lib(ours)
    rng = _rng(4)
    image_values = jnp.asarray(rng.randn(1, 5, 5, 4, 4), dtype)
    scalar_values = jnp.asarray(rng.randn(1, 4, 4, 3, 1), dtype)
    steps = jnp.asarray([0.9, 1.1, 1.3], dtype)
    # IrrepsArrays are built inside the traced functions: e3nn_fast caches chunks lazily on the object, and a
    # closed-over array whose chunks are first computed under a trace would keep (leak) tracers
    image, scalar_image = lambda: Array("0e+1o", image_values), lambda: Array("0e", scalar_values)

    hk_conv = hk.without_apply_rng(
        hk.transform(
            lambda x, s=None: lib.ConvolutionHaiku("0e+1o+1e+2e", "0e+1o+2e", relative_starts=0.1, **VOXEL_KW)(x, s)
        )
    )
    # 0e inputs with 0e+1o harmonics cannot reach 2e: that block of the output is zero
    flax_conv = lib.ConvolutionFlax("0e+1o+2e", "0e+1o", diameter=2.5, num_radial_basis=2, steps=(1.0, 1.0, 1.0))

    def init():
        return {"haiku": hk_conv.init(KEY, image()), "flax": flax_conv.init(KEY, scalar_image())}

    def apply(params):
        return {
            "haiku": hk_conv.apply(params["haiku"], image()),
            "haiku_steps": hk_conv.apply(params["haiku"], image(), steps),
            "flax": flax_conv.apply(params["flax"], scalar_image()),
        }

    return init, apply


@pytest.mark.parametrize("dtype", DTYPES)
def test_voxel_convolution_matches_e3nn(dtype):
    _check_parity(_make_voxel, dtype)
    init, apply = _make_voxel(True, dtype)
    out = jax.jit(apply)(_random_params(jax.eval_shape(init)))["flax"]
    assert str(out.irreps) == "1x0e+1x1o+1x2e"
    np.testing.assert_array_equal(out.array[..., 4:], 0.0)


@pytest.mark.slow
def test_voxel_convolution_same_init_as_e3nn():
    def init(lib, Array):
        conv = hk.transform(lambda x: lib.ConvolutionHaiku("0e+1o", "0e+1o", 2.0, 2, (1.0, 1.0, 1.0))(x))
        return conv.init(KEY, Array("0e", jnp.ones((1, 3, 3, 3, 1))))

    ours, ref = init(voxel_convolution, IrrepsArray), init(ref_voxel_convolution, e3nn_jax.IrrepsArray)
    _assert_same_template(ours, ref)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(a, b)


# A quarter turn about z maps the (x, y) voxel grid to itself: jnp.rot90 on the x, y axes moves the voxel at
# centred coordinates (u, v) to (-v, u), i.e. the rotation below; the features transform with D(R).
_QUARTER_TURN_Z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _turn(x: IrrepsArray) -> IrrepsArray:
    y = x.transform_by_matrix(jnp.asarray(_QUARTER_TURN_Z))
    return IrrepsArray(y.irreps, jnp.rot90(y.array, 1, axes=(1, 2)))


def _voxel_conv_for_equivariance():
    return hk.without_apply_rng(
        hk.transform(lambda x: voxel_convolution.ConvolutionHaiku("0e+1o+1e+2e", "0e+1o+2e", **VOXEL_KW)(x))
    )


@pytest.mark.slow  # equivariance also follows from the parity tests with e3nn-jax
def test_voxel_convolution_is_equivariant():
    values = jnp.asarray(_rng(5).randn(1, 5, 5, 3, 9))
    conv = _voxel_conv_for_equivariance()
    params = _random_params(jax.eval_shape(lambda: conv.init(KEY, IrrepsArray("0e+1o+2e", values))))

    @jax.jit
    def run(p, values):
        image = IrrepsArray("0e+1o+2e", values)
        return _turn(conv.apply(p, image)).array, conv.apply(p, _turn(image)).array

    expected, got = run(params, values)
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_voxel_convolution_bad_inputs():
    conv = hk.transform(lambda x: voxel_convolution.ConvolutionHaiku("0e", "0e", **VOXEL_KW)(x))
    with pytest.raises(ValueError, match="IrrepsArray"):
        conv.init(KEY, np.ones((1, 3, 3, 3, 1)))
    with pytest.raises(ValueError, match=r"\[batch, x, y, z, irreps.dim\]"):
        conv.init(KEY, IrrepsArray("0e", np.ones((3, 3, 3, 1))))
    bad_radial = hk.transform(
        lambda x: voxel_convolution.ConvolutionHaiku("0e+1o", "0e+1o", 3.0, {0: 2}, (1.0, 1.0, 1.0))(x)
    )
    with pytest.raises(ValueError, match="num_radial_basis"):
        jax.eval_shape(lambda: bad_radial.init(KEY, IrrepsArray("0e", jnp.ones((1, 3, 3, 3, 1)))))


def test_zoom_matches_e3nn():
    x = jnp.asarray(_rng(6).randn(2, 4, 5, 6))
    cases = [
        dict(resize_rate=0.5),
        dict(output_size=(7, 3, 6)),
        dict(resize_rate=(1.5, 0.7, 1.0), interpolation="nearest"),
    ]
    for kw in cases:
        np.testing.assert_allclose(voxel_pooling.zoom(x, **kw), ref_voxel_pooling.zoom(x, **kw), atol=1e-12)

    @jax.jit
    def at_points(x):
        # on a voxel centre, trilinear interpolation gives the voxel back; outside, the border voxel is used
        centre = voxel_pooling.interpolate_trilinear(x, 1.0, 2.0, 3.0)
        return centre, voxel_pooling.interpolate_nearest(x, 1.2, 1.7, 9.0)

    centre, clamped = at_points(x)
    np.testing.assert_allclose(centre, x[:, 1, 2, 3], atol=1e-12)
    np.testing.assert_array_equal(clamped, x[:, 1, 2, 5])


def test_zoom_bad_inputs():
    x = jnp.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="exactly one"):
        voxel_pooling.zoom(x, resize_rate=2.0, output_size=(2, 2, 2))
    with pytest.raises(ValueError, match="exactly one"):
        voxel_pooling.zoom(x)
    with pytest.raises(ValueError, match="interpolation"):
        voxel_pooling.zoom(x, resize_rate=2.0, interpolation="cubic")
    with pytest.raises(ValueError, match="at least 3 axes"):
        voxel_pooling.zoom(jnp.zeros((4, 4)), resize_rate=2.0)
    with pytest.raises(ValueError, match="positive ints"):
        voxel_pooling.zoom(x, output_size=(2, 0, 2))
