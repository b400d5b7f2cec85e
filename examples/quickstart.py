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

    def cross_product(v):
        return e3nn.tensor_product(v, v, filter_ir_out="1e")

    print("grad of v x v:", e3nn.grad(cross_product)(e3nn.IrrepsArray("1o", jnp.array([1.0, 0.0, 0.0]))))


def point_cloud_features(points: jnp.ndarray) -> e3nn.IrrepsArray:
    """Invariant, pseudo-scalar and vector features of small point clouds ``(batch, 7, 3)``.

    5 distances (0e), the signed volume spanned by the first three points (0o: it flips sign under inversion) and the
    7 positions relative to the centroid (1o).
    """
    relative = points - points.mean(axis=1, keepdims=True)
    distances = jnp.linalg.norm(relative[:, :5], axis=-1)
    volume = jnp.linalg.det(relative[:, :3])[:, None]
    return e3nn.concatenate(
        [
            e3nn.IrrepsArray("5x0e", distances),
            e3nn.IrrepsArray("0o", volume),
            e3nn.IrrepsArray("7x1o", relative.reshape(points.shape[0], 21)),
        ]
    )


def amuse_bouche() -> None:
    section("A small haiku network")
    import haiku as hk

    @hk.without_apply_rng
    @hk.transform
    def model(points):
        return e3nn.haiku.Linear("0e + 0o + 1o", name="linear")(point_cloud_features(points))

    points = jax.random.normal(jax.random.PRNGKey(1), (16, 7, 3))
    params = model.init(jax.random.PRNGKey(2), points)
    print(jax.tree_util.tree_map(jnp.shape, params))
    output = model.apply(params, points)
    print(output.irreps, output.shape)


def main() -> None:
    irreps_tour()
    irreps_array_tour()
    spherical_harmonics_tour()
    tensor_product_tour()
    amuse_bouche()


if __name__ == "__main__":
    main()
