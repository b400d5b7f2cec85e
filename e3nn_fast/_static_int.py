"""Whole numbers from user arguments that become static sizes (array dimensions, counts, degrees).

One rule for every such argument: a Python int, a NumPy integer or anything else with ``__index__``; not a bool (a
``True`` size is almost always a slip) and not a float, even a whole one (``2.0`` usually comes from arithmetic
that should have stayed integral).  Each caller words its own error, naming the argument and what it is for.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

import numpy as np


def static_int(value: Any) -> Optional[int]:
    """``value`` as a Python int under the rule above, ``None`` if it breaks it."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None
