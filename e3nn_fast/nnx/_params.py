"""Creating and reading the parameters of the nnx modules.

nnx modules build their parameters in the constructor.  The list of parameters comes from
:func:`e3nn_fast._parameters.record_parameters` (the haiku/linen forward pass, traced once); this file turns that list
into ``nnx.Param`` values and serves them back to the shared forward pass through a ``get_parameter`` callback.

Random keys: a module draws a single key ``rngs.params()`` and gives each parameter the key that
``flax.linen.Module.init({"params": key}, ...)`` would give it (linen folds a hash of the parameter's scope path and
a per-scope counter into the key).  Hence an nnx module and the equivalent linen module initialised with that key
hold the same parameters (up to the rounding of the initialisation scale, which linen computes under ``jit``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core.scope import LazyRng

from e3nn_fast._parameters import ParameterSpec
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray

__all__ = [
    "check_rngs",
    "to_irreps",
    "positive_int",
    "linen_parameter_key",
    "initial_values",
    "create_parameters",
    "parameter_value",
    "densify",
]

# ``parameter_initializer()`` returns a jax-style initializer ``init(key, shape, dtype) -> array`` (as in linen).
InitializerFactory = Callable[[], Callable[[jax.Array, Tuple[int, ...], Any], jax.Array]]


def check_rngs(rngs: Any, owner: str) -> nnx.Rngs:
    """nnx modules need an ``nnx.Rngs`` to draw their initial parameters from."""
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"{owner}: rngs must be an nnx.Rngs (e.g. nnx.Rngs(0)), got {type(rngs).__name__}")
    return rngs


def to_irreps(value: Any, what: str) -> Irreps:
    """``Irreps(value)`` with an error message naming the argument."""
    if value is None:
        raise ValueError(f"{what} is required (nnx modules create their parameters at construction)")
    try:
        return Irreps(value)
    except (ValueError, TypeError, AssertionError) as error:
        raise ValueError(f"{what}: invalid irreps {value!r} ({error})") from error


def positive_int(value: Any, what: str, optional: bool = True) -> Optional[int]:
    """Validate a size argument: a positive int (or None when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, jnp.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def linen_parameter_key(key: jax.Array, *path: Any) -> jax.Array:
    """The key linen's ``init`` hands to a parameter's initialiser.

    ``path`` is the names of the submodules from the root, then the 1-based index of the parameter within its module
    (e.g. ``("Dense_0", 1)`` for the kernel of a linen ``Dense_0``).  Uses flax's own derivation, so it follows
    flax's configuration (``flax_fix_rng_separator``).
    """
    return LazyRng.create(key, *path).as_jax_rng()


def _bucket(n: int) -> int:
    """The next power of two >= ``n`` (at least 8): a handful of compiled samplers serve every module layout."""
    return max(8, 1 << (max(n, 1) - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("size", "dtype"))
def _scaled_normal_rows(keys: jax.Array, stds: jax.Array, *, size: int, dtype: Any) -> jax.Array:
    """Row ``i``: ``size`` standard normals drawn with ``keys[i]``, times ``stds[i]`` (as linen's normal init)."""
    rows = jax.vmap(lambda key: jax.random.normal(key, (size,), dtype))(keys)
    return rows * stds[:, None]


def _stack(arrays: Sequence[jax.Array], concrete: bool) -> jax.Array:
    """Stack (concrete arrays through numpy, so no eager XLA op has to be compiled for this layout)."""
    if not concrete:
        return jnp.stack(arrays)
    if jax.dtypes.issubdtype(arrays[0].dtype, jax.dtypes.prng_key):
        data = np.stack([np.asarray(jax.random.key_data(k)) for k in arrays])
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(arrays[0]))
    return jnp.asarray(np.stack([np.asarray(a) for a in arrays]))


def _default_initial_values(specs: Sequence[ParameterSpec], keys: List[jax.Array], dtype: Any) -> List[jax.Array]:
    """``normal(key_k, shape_k) * std_k`` for every parameter, sampled together.

    With JAX's partitionable threefry (the default) the first ``n`` of ``size`` normals drawn from a key are the
    ``n`` normals that key gives for any shape of ``n`` elements.  So one sampler of a bucketed ``(rows, size)`` shape
    serves all parameters at once, with the values linen's per-parameter ``normal`` initializers produce, and
    building a module compiles nothing new once its bucket has been seen (per-parameter sampling would compile a
    sampler for every new shape: seconds for a model).
    """
    concrete = not any(isinstance(k, jax.core.Tracer) for k in keys)
    padding = _bucket(len(keys)) - len(keys)
    stds = np.asarray([spec.init_std for spec in specs] + [0.0] * padding, dtype=dtype)
    size = _bucket(max(math.prod(spec.shape) for spec in specs))
    rows = _scaled_normal_rows(_stack(keys + keys[:1] * padding, concrete), stds, size=size, dtype=jnp.dtype(dtype))
    if concrete:  # cut on the host: slicing eagerly would compile one XLA op per shape
        rows = np.asarray(rows)
        return [jnp.asarray(rows[i, : math.prod(s.shape)].reshape(s.shape)) for i, s in enumerate(specs)]
    return [rows[i, : math.prod(s.shape)].reshape(s.shape) for i, s in enumerate(specs)]


def initial_values(
    specs: Sequence[ParameterSpec],
    paths: Sequence[Tuple[Any, ...]],
    key: jax.Array,
    dtype: Any,
    parameter_initializer: Optional[InitializerFactory] = None,
) -> List[jax.Array]:
    """Initial value of each parameter, drawn with ``linen_parameter_key(key, *path)``.

    Default: ``normal(stddev=spec.init_std)``, as linen's modules; else the user's ``parameter_initializer()``.
    """
    if not specs:
        return []
    keys = [linen_parameter_key(key, *path) for path in paths]
    if parameter_initializer is not None:
        return [parameter_initializer()(k, spec.shape, dtype) for spec, k in zip(specs, keys)]
    if not jax.config.jax_threefry_partitionable:  # the prefix property above does not hold: one draw per shape
        return [jax.nn.initializers.normal(spec.init_std)(k, spec.shape, dtype) for spec, k in zip(specs, keys)]
    return _default_initial_values(specs, keys, dtype)


def create_parameters(
    specs: Sequence[ParameterSpec],
    rngs: nnx.Rngs,
    dtype: Any,
    parameter_initializer: Optional[InitializerFactory] = None,
) -> nnx.Dict:
    """An ``nnx.Dict`` name -> ``nnx.Param``; the k-th parameter gets the k-th linen key of one ``rngs.params()``."""
    paths = [(k,) for k in range(1, len(specs) + 1)]
    values = initial_values(specs, paths, rngs.params(), dtype, parameter_initializer)
    return nnx.Dict({spec.name: nnx.Param(value) for spec, value in zip(specs, values)})


def parameter_value(
    params: Mapping[str, Any], name: str, shape: Tuple[int, ...], owner: str, built_for: str
) -> jax.Array:
    """The current value of parameter ``name``, checking it has the shape the forward pass expects.

    ``params`` maps names to ``nnx.Param`` (or to arrays: ``value[...]`` reads both).

    A missing name or a wrong shape means the module is called on an input it was not built for: say so.
    """
    if name not in params:
        raise ValueError(
            f"{owner}: this input needs a parameter {name!r} of shape {tuple(shape)} that the module does not have; "
            f"it was built for {built_for} (parameters: {sorted(params)})"
        )
    value = params[name][...]
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"{owner}: this input needs parameter {name!r} with shape {tuple(shape)}, but it has shape "
            f"{tuple(value.shape)}; the module was built for {built_for}"
        )
    return value


def densify(x: Any) -> Any:
    """Forget which blocks of an IrrepsArray are known to be zero (they become explicit zeros).

    nnx modules own a parameter for every block of their input irreps; the shared forward passes would drop zero
    blocks (and the parameters that go with them), renumbering the remaining ones.
    """
    if isinstance(x, IrrepsArray) and any(x.zero_flags):
        return IrrepsArray(x.irreps, x.array)
    return x

