"""Shared by the kernel test files: whether this jax can lower any Pallas kernel for a platform from the CPU machine."""

import jax
import jax.numpy as jnp


def pallas_cannot_lower(platform: str):
    """Why this jax cannot lower any Pallas kernel for ``platform`` (a copy kernel), or None when it can."""
    from e3nn_fast.kernels import _pallas_compat as compat

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    try:
        call = compat.pallas_call(kernel, family="aligned", interpret=False,
                                  out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32))
        jax.jit(call).trace(jnp.zeros((8, 128), jnp.float32)).lower(lowering_platforms=(platform,))
    except Exception as error:  # noqa: BLE001 - any failure means this jax cannot lower Pallas there at all
        return f"this jax cannot lower Pallas for {platform}: {type(error).__name__}: {error}"
    return None
