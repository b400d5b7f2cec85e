"""A tour of e3nn_fast, written exactly as e3nn-jax code is written: ``import e3nn_fast as e3nn``.

Run: ``python examples/quickstart.py``.  It walks through irreps, IrrepsArrays, spherical harmonics, tensor products,
the equivariant gradient and a small haiku network, printing what e3nn-jax prints for the same code.
"""

import jax
import jax.numpy as jnp

import e3nn_fast as e3nn

jnp.set_printoptions(precision=3, suppress=True)


def section(title: str) -> None:
    print(f"\n=== {title}")


def irreps_tour() -> None:
    section("Irreps")
    irreps = e3nn.Irreps("2x0e + 3x1o + 0e")
    print(irreps, "| dim", irreps.dim, "| num_irreps", irreps.num_irreps)
    print("sorted and simplified:", irreps.sort().irreps.simplify())
    print("1o x 1o ->", list(e3nn.Irrep("1o") * e3nn.Irrep("1o")))


def irreps_array_tour() -> None:
    section("IrrepsArray")
    array = e3nn.normal("0e + 1o", jax.random.PRNGKey(0))
    print(array)
    print("norms:", e3nn.norm(array))
    print("total norm:", e3nn.norm(array, per_irrep=False))
    print("tensor square:", e3nn.tensor_square(array))

    x = e3nn.IrrepsArray("2x0e + 1o", jnp.array([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0]]))
    print("x + x =", x + x)
    print("x[..., '1o'] =", x[..., "1o"])
    print("mean over the batch:", e3nn.mean(x, axis=0))
    y = e3nn.IrrepsArray("0e", jnp.array([[2.0], [4.0]]))
    print("concatenate:", e3nn.concatenate([x, y], axis=-1))


def spherical_harmonics_tour() -> None:
    section("Spherical harmonics")
    print("Y^2(0, 0, 1), normalized:", e3nn.sh(2, jnp.array([0.0, 0.0, 1.0]), normalize=True))
    print("Y^2(1, 2, 3), homogeneous polynomial:", e3nn.sh(2, jnp.array([1.0, 2.0, 3.0]), normalize=False))
    vector = e3nn.IrrepsArray("1o", jnp.array([1.0, 2.0, 3.0]))
    print(e3nn.spherical_harmonics("0e + 1o + 2e", vector, normalize=True))


def tensor_product_tour() -> None:
    section("Tensor products and the equivariant gradient")
    x = e3nn.IrrepsArray("2x0e + 1o", jnp.arange(5.0))
    y = e3nn.IrrepsArray("0o + 2o", jnp.arange(6.0))
    print(e3nn.tensor_product(x, y))
    print("irreps only:", e3nn.tensor_product("2x1e + 2e", "2e"))

    def cross_product(x, y):
        return e3nn.tensor_product(x, y)["1e"]

    x = e3nn.IrrepsArray("1o", jnp.array([1.0, 2.0, 0.0]))
    y = e3nn.IrrepsArray("1o", jnp.array([2.0, 2.0, 1.0]))
    print("grad of x cross y wrt x:", e3nn.grad(cross_product)(x, y))

    vector = e3nn.IrrepsArray("1o", jnp.array([1.0, 2.0, 3.0]))
    dY3 = e3nn.grad(lambda v: e3nn.spherical_harmonics("3o", v, False))(vector)
    print("0.18443 * (grad Y^3)[2e]:", 0.18443 * dY3["2e"])
    print("Y^2:                     ", e3nn.spherical_harmonics("2e", vector, False))


def amuse_bouche() -> None:
    section("Amuse-bouche: a haiku network")
    import haiku as hk

    @hk.without_apply_rng
    @hk.transform
    def model(x):
        return e3nn.haiku.Linear("0e + 0o + 1o")(x)

    # Spherical harmonics of a vector times 16 random feature vectors: 5x0e + 1x0o + 7x1o survive the Linear.
    sh = e3nn.spherical_harmonics([0, 1, 2], e3nn.IrrepsArray("1o", jnp.array([1.0, 2.0, 0.0])), False)
    features = e3nn.tensor_product(sh, e3nn.normal("4x0e + 1o + 1e", jax.random.PRNGKey(0), (16,)))
    params = model.init(jax.random.PRNGKey(1), features)
    print(jax.tree_util.tree_map(jnp.shape, params))
    print(model.apply(params, features).shape)


def main() -> None:
    irreps_tour()
    irreps_array_tour()
    spherical_harmonics_tour()
    tensor_product_tour()
    amuse_bouche()


if __name__ == "__main__":
    main()
