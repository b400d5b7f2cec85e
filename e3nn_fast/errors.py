"""Exception classes for bad input that e3nn-jax rejects with a bare ``assert``.

e3nn-jax checks some arguments with ``assert`` statements, so code written against it (its own test suite included)
may catch ``AssertionError``.  e3nn_fast raises a descriptive ``ValueError`` or ``TypeError`` for the same input
instead; the classes below are *both* that error and an ``AssertionError`` (as numpy's ``AxisError`` is both a
``ValueError`` and an ``IndexError``), so ``except ValueError`` and ``except AssertionError`` both keep working.

Only inputs that e3nn-jax guards with an assert use these classes; everything else raises plain ``ValueError`` /
``TypeError``.
"""

from __future__ import annotations

__all__ = ["InvalidValueError", "InvalidTypeError"]


class InvalidValueError(ValueError, AssertionError):
    """An argument has the right type but an unusable value (where e3nn-jax asserts on it)."""


class InvalidTypeError(TypeError, AssertionError):
    """An argument has the wrong type (where e3nn-jax asserts on it)."""
