"""pytest-benchmark micro-benchmarks of e3nn_fast's hot functions (compiled, CPU or GPU, fp32).

Not part of CI (``pytest`` collects ``tests/`` only); run explicitly from the repository root::

    python -m pytest bench/test_micro.py --benchmark-only [--benchmark-json out.json]

Each benchmark times one compiled call ended by ``block_until_ready`` after a warm-up call that compiles it, for the
executor ``E3NN_FAST_BACKEND`` selects (default ``auto``).  The whole-workload comparison lives in ``python -m bench``.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import pytest

import e3nn_fast as e3nn

EDGES = 2048


def _compiled(fn, *args):
    """``fn`` jitted and warmed up, as a no-argument callable returning a ready result."""
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    return lambda: jax.block_until_ready(jitted(*args))


def _normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


@pytest.mark.parametrize("features", ["32x0e+32x1o+32x2e", "128x0e+128x1o"])
def test_tensor_product_with_sh(benchmark, features):
    x = _normal(0, (EDGES, e3nn.Irreps(features).dim))
    sh = _normal(1, (EDGES, 16))

    def product(a, b):
        out = e3nn.tensor_product(e3nn.IrrepsArray(features, a), e3nn.IrrepsArray("0e+1o+2e+3o", b),
                                  filter_ir_out=["0e", "1o", "2e", "3o"])
        return out.array

    benchmark(_compiled(product, x, sh))


def test_tensor_product_backward(benchmark):
    features = "32x0e+32x1o+32x2e"
    x = _normal(0, (EDGES, e3nn.Irreps(features).dim))
    sh = _normal(1, (EDGES, 16))

    def loss(a, b):
        out = e3nn.tensor_product(e3nn.IrrepsArray(features, a), e3nn.IrrepsArray("0e+1o+2e+3o", b))
        return jnp.sum(out.array**2)

    benchmark(_compiled(jax.grad(loss, argnums=(0, 1)), x, sh))


@pytest.mark.parametrize("lmax", [3, 8])
def test_spherical_harmonics(benchmark, lmax):
    vectors = _normal(2, (8 * EDGES, 3))

    def harmonics(v):
        return e3nn.spherical_harmonics(list(range(lmax + 1)), e3nn.IrrepsArray("1o", v), normalize=True).array

    benchmark(_compiled(harmonics, vectors))


def test_haiku_linear(benchmark):
    irreps = "128x0e+128x1o+128x2e"
    x = _normal(3, (EDGES, e3nn.Irreps(irreps).dim))
    model = hk.without_apply_rng(hk.transform(lambda a: e3nn.haiku.Linear(irreps)(e3nn.IrrepsArray(irreps, a)).array))
    params = model.init(jax.random.PRNGKey(0), x)
    benchmark(_compiled(model.apply, params, x))


def test_scatter_sum(benchmark):
    irreps = "32x0e+32x1o+32x2e"
    messages = _normal(4, (8 * EDGES, e3nn.Irreps(irreps).dim))
    receivers = jax.random.randint(jax.random.PRNGKey(5), (8 * EDGES,), 0, EDGES)

    def aggregate(m, r):
        return e3nn.scatter_sum(e3nn.IrrepsArray(irreps, m), dst=r, output_size=EDGES).array

    benchmark(_compiled(aggregate, messages, receivers))
