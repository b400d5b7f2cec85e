import getpass
import os
import tempfile

import jax

# fp64 parity tests need x64; fp32 tests create float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)

# One persistent compilation cache for the whole run, shared by the pytest-xdist workers and by the interpreters that
# tests start (the environment variables reach those): many eager primitives and small programs are the same in
# every worker, and a cold shared cache made test_irreps_array + test_legacy 13% faster on 2 cores.  JAX keys each
# entry by the program, the jax/jaxlib versions, the backend and the compile options, so a stale entry is never
# reused; programs with host callbacks (interpret-mode kernels) are not cached by JAX at all.
_CACHE = {  # environment variable: (default, type of the jax option)
    "JAX_COMPILATION_CACHE_DIR": (os.path.join(tempfile.gettempdir(), f"e3nn_fast-tests-jax-{getpass.getuser()}"), str),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": ("0", float),
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": ("0", int),
}
for _name, (_default, _type) in _CACHE.items():
    os.environ.setdefault(_name, _default)
    jax.config.update(_name.lower(), _type(os.environ[_name]))
