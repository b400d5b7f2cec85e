"""BatchNorm (haiku and flax.linen): parameter/state names, training and evaluation outputs and running statistics
identical to e3nn-jax, masks, zero chunks, equivariance and bad input."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_jax

from e3nn_fast.batchnorm import batch_norm
from e3nn_fast.flax.batchnorm import BatchNorm as FlaxBatchNorm
from e3nn_fast.haiku.batchnorm import BatchNorm as HaikuBatchNorm
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.utils import assert_equivariant

IRREPS = "2x0e + 0o + 2x1o + 0e + 2e"
# keyword arguments shared by both frameworks
CONFIGS = [
    {},
    dict(normalization="norm", reduce="max"),
    dict(affine=False, momentum=0.3, eps=1e-2),
    dict(instance=True, affine=False, normalization="norm"),
]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def random_inputs(irreps, shape, dtype, seed=0):
    irreps = str(Irreps(irreps))
    array = 2.0 + np.random.default_rng(seed).normal(size=shape + (Irreps(irreps).dim,))
    array = jnp.asarray(array.astype(dtype))
    return IrrepsArray(irreps, array), e3nn_jax.IrrepsArray(irreps, array)


def assert_trees_close(ours, ref, dtype, exact=False):
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype
        if exact:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol(dtype))


def assert_same(ours, ref, dtype):
    assert str(ours.irreps) == str(ref.irreps)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(ours.array), np.asarray(ref.array), **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_haiku_batchnorm_matches_e3nn_jax(kwargs, dtype):
    ours = hk.without_apply_rng(hk.transform_with_state(lambda x, t: HaikuBatchNorm(**kwargs)(x, t)))
    ref = hk.without_apply_rng(hk.transform_with_state(lambda x, t: e3nn_jax.haiku.BatchNorm(**kwargs)(x, t)))
    x, x_ref = random_inputs(IRREPS, (6, 3), dtype)
    key = jax.random.PRNGKey(0)
    (params, state), (ref_params, ref_state) = ours.init(key, x, True), ref.init(key, x_ref, True)
    assert_trees_close((params, state), (ref_params, ref_state), dtype, exact=True)
    if not kwargs.get("instance"):
        assert list(state["batch_norm"]) == ["running_mean", "running_var"]
        assert state["batch_norm"]["running_mean"].shape == (3,) and state["batch_norm"]["running_var"].shape == (7,)
    if kwargs.get("affine", True):
        assert params["batch_norm"]["weight"].shape == (7,) and params["batch_norm"]["bias"].shape == (3,)

    # two training steps then evaluation, starting from e3nn-jax's parameters and state
    for step in range(2):
        x, x_ref = random_inputs(IRREPS, (6, 3), dtype, seed=step + 1)
        (y, state), (y_ref, ref_state) = ours.apply(ref_params, ref_state, x, True), ref.apply(
            ref_params, ref_state, x_ref, True
        )
        assert_same(y, y_ref, dtype)
        assert_trees_close(state, ref_state, dtype)
    (y, _), (y_ref, _) = ours.apply(ref_params, ref_state, x, False), ref.apply(ref_params, ref_state, x_ref, False)
    assert_same(y, y_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_flax_batchnorm_matches_e3nn_jax(kwargs, dtype):
    ours, ref = FlaxBatchNorm(**kwargs), e3nn_jax.flax.BatchNorm(**kwargs)
    x, x_ref = random_inputs(IRREPS, (5, 2), dtype)
    key = jax.random.PRNGKey(0)
    variables, ref_variables = ours.init(key, x), ref.init(key, x_ref)
    assert_trees_close(variables, ref_variables, dtype, exact=True)
    if kwargs.get("affine", True):
        assert variables["params"]["weights"].dtype == dtype and variables["params"]["biases"].shape == (3,)
    if not kwargs.get("instance"):
        assert variables["batch_stats"]["mean"].shape == (3,) and variables["batch_stats"]["var"].shape == (7,)

    mask = jnp.array([True, True, False, True, True])
    for call_kwargs in [{}, dict(mask=mask)]:
        x, x_ref = random_inputs(IRREPS, (5, 2), dtype, seed=1)
        (y, updates), (y_ref, ref_updates) = (
            ours.apply(ref_variables, x, mutable=["batch_stats"], **call_kwargs),
            ref.apply(ref_variables, x_ref, mutable=["batch_stats"], **call_kwargs),
        )
        assert_same(y, y_ref, dtype)
        assert_trees_close(updates, ref_updates, dtype)  # empty for instance norm
        if not kwargs.get("instance"):
            ref_variables = {**ref_variables, **ref_updates}
            # evaluation: no statistics update, so no mutable collection needed (e3nn-jax 0.21 requires one and
            # updates the statistics even then; its output is the same)
            y = ours.apply(ref_variables, x, use_running_average=True)
            y_ref, _ = ref.apply(ref_variables, x_ref, use_running_average=True, mutable=["batch_stats"])
            assert_same(y, y_ref, dtype)
            _, updates = ours.apply(ref_variables, x, use_running_average=True, mutable=["batch_stats"])
            assert_trees_close(updates, {"batch_stats": ref_variables["batch_stats"]}, dtype, exact=True)


def test_batchnorm_normalizes():
    """After training-mode batch norm (component normalisation, no eps), the scalars have zero mean and every irrep
    copy has unit mean squared component over the batch."""
    x, _ = random_inputs("2x0e + 3x1o", (200,), np.float64)
    y, new_mean, new_var = batch_norm(
        x, jnp.zeros(2), jnp.ones(5), None, None, normalization="component", reduce="mean", instance=False,
        use_running_average=False, momentum=0.1, eps=0.0,
    )  # fmt: skip
    np.testing.assert_allclose(y.array[:, :2].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(jnp.mean(y.chunks[1] ** 2, axis=(0, 2)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(new_mean, 0.1 * x.array[:, :2].mean(0), rtol=1e-12)


def test_batchnorm_zero_chunks_and_extra_axes():
    x = from_chunks("0e + 1o + 0e", [jnp.ones((4, 2, 1, 1)) * 3.0, None, jnp.arange(8.0).reshape(4, 2, 1, 1)], (4, 2))
    x_ref = e3nn_jax.from_chunks(
        "0e + 1o + 0e", [jnp.ones((4, 2, 1, 1)) * 3.0, None, jnp.arange(8.0).reshape(4, 2, 1, 1)], (4, 2)
    )
    ours = hk.without_apply_rng(hk.transform_with_state(lambda x: HaikuBatchNorm()(x)))
    ref = hk.without_apply_rng(hk.transform_with_state(lambda x: e3nn_jax.haiku.BatchNorm()(x)))
    params, state = ref.init(None, x_ref)
    (y, new_state), (y_ref, ref_state) = ours.apply(params, state, x), ref.apply(params, state, x_ref)
    assert y.zero_flags == (False, True, False) and y.shape == (4, 2, 5)
    assert_same(y, y_ref, np.float64)
    assert_trees_close(new_state, ref_state, np.float64)


def test_batchnorm_irreps_argument_rechunks():
    x, x_ref = random_inputs("3x0e + 2x1e", (4,), np.float64)
    ours = hk.without_apply_rng(hk.transform_with_state(lambda x: HaikuBatchNorm(irreps="0e + 2x0e + 1e + 1e")(x)))
    ref = hk.without_apply_rng(
        hk.transform_with_state(lambda x: e3nn_jax.haiku.BatchNorm(irreps="0e + 2x0e + 1e + 1e")(x))
    )
    params, state = ref.init(None, x_ref)
    (y, _), (y_ref, _) = ours.apply(params, state, x), ref.apply(params, state, x_ref)
    assert_same(y, y_ref, np.float64)


def test_batchnorm_equivariance_jit_grad():
    model = hk.without_apply_rng(hk.transform_with_state(lambda x, t: HaikuBatchNorm(instance=True)(x, t)))
    x, _ = random_inputs(IRREPS, (4, 3), np.float64)
    params, state = model.init(None, x, True)
    params = {"batch_norm": {"weight": jnp.linspace(0.5, 2.0, 7), "bias": jnp.array([0.1, -0.2, 0.3])}}

    def normalize(x):
        return model.apply(params, state, x, True)[0]

    assert_equivariant(jax.jit(normalize), jax.random.PRNGKey(0), x, atol=1e-9, rtol=1e-9)
    flax_model = FlaxBatchNorm()
    variables = flax_model.init(jax.random.PRNGKey(0), x)
    assert_equivariant(
        jax.jit(lambda x: flax_model.apply(variables, x, mutable=["batch_stats"])[0]), jax.random.PRNGKey(1), x
    )

    jitted = jax.jit(lambda p, s, x: model.apply(p, s, x, True))
    np.testing.assert_allclose(jitted(params, state, x)[0].array, normalize(x).array, rtol=1e-12)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, state, x, True)[0].array ** 3)))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_batchnorm_bad_input():
    x, _ = random_inputs("0e + 1o", (3,), np.float64)

    def haiku_call(inputs=x, **kwargs):
        return hk.transform_with_state(lambda x: HaikuBatchNorm(**kwargs)(x)).init(None, inputs)

    with pytest.raises(ValueError, match="reduce"):
        haiku_call(reduce="median")
    with pytest.raises(TypeError, match="reduce"):
        haiku_call(reduce=max)
    with pytest.raises(ValueError, match="normalization"):
        haiku_call(normalization="integral")
    with pytest.raises(ValueError, match="eps"):
        haiku_call(eps=2.0)
    for momentum in (2.0, -0.1):  # extrapolating running averages
        with pytest.raises(ValueError, match="momentum"):
            haiku_call(momentum=momentum)
        with pytest.raises(ValueError, match="momentum"):
            FlaxBatchNorm(momentum=momentum).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="batch"):
        haiku_call(inputs=IrrepsArray("0e + 1o", jnp.ones(4)))
    with pytest.raises(ValueError, match="reduce"):
        FlaxBatchNorm(reduce="sum").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="mask"):
        FlaxBatchNorm().init(jax.random.PRNGKey(0), x, mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="instance"):
        FlaxBatchNorm(instance=True).init(jax.random.PRNGKey(0), x, use_running_average=True)
    with pytest.raises(ValueError, match="running_var"):
        batch_norm(
            x, jnp.zeros(1), jnp.ones(3), None, None, normalization="norm", reduce="mean", instance=False,
            use_running_average=False, momentum=0.1, eps=1e-4,
        )  # fmt: skip
