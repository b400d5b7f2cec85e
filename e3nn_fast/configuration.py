"""Global defaults, read and written through :func:`config`.

The first eight keys are e3nn-jax's, with its defaults, so code that sets them keeps its meaning.  ``backend`` is
e3nn_fast's own: the executor the dispatcher uses (see :mod:`e3nn_fast.dispatch`); its default comes from the
``E3NN_FAST_BACKEND`` environment variable, read once when this module is imported.
"""

from __future__ import annotations

import os
from typing import Any

_DEFAULTS: dict[str, Any] = {
    "irrep_normalization": "component",  # "component" or "norm"
    "path_normalization": "element",  # "element" or "path"
    "gradient_normalization": "path",  # "element", "path" or a float in [0, 1]
    "spherical_harmonics_algorithm": "automatic",
    "spherical_harmonics_normalization": "component",
    "custom_einsum_jvp": False,
    "fused": False,
    "sparse_tp": False,
    "backend": os.environ.get("E3NN_FAST_BACKEND", "auto"),
}

_current: dict[str, Any] = dict(_DEFAULTS)


def config(name: str, value: Any = None) -> Any:
    """Read (``config(name)``) or set (``config(name, value)``) a global default.

    Raises:
        ValueError: ``name`` is not a known option.
    """
    if name not in _current:
        raise ValueError(f"Unknown configuration option {name!r}; known options: {sorted(_current)}")
    if value is None:
        return _current[name]
    _current[name] = value
    return None
