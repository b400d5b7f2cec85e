import jax

# fp64 parity tests need x64; fp32 tests create float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)
