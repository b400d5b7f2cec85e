"""Eager calls of the tensor products run as one cached program (e3nn_fast._eager): same numbers and zero flags as
the traced call, no stale program after a setting changes, and the dispatcher's recorded choices stay complete."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast as e3nn
from e3nn_fast import _eager, dispatch


def _inputs():
    x = e3nn.from_chunks("2x0e + 1o + 2e", [jnp.ones((4, 2, 1)), None, jnp.full((4, 1, 5), 0.5)], (4,), jnp.float32)
    y = e3nn.IrrepsArray("0e + 1o", jnp.arange(16.0, dtype=jnp.float32).reshape(4, 4))
    return x, y


def _program_count(name: str) -> int:
    return sum(1 for key in _eager._programs if key[0].__name__ == name)


def test_eager_call_matches_traced_call_and_keeps_zero_flags():
    x, y = _inputs()
    eager = e3nn.tensor_product(x, y)
    with dispatch.recorded_choices():  # inside a recording block nothing is cached: primitive by primitive
        op_by_op = e3nn.tensor_product(x, y)
    assert eager.irreps == op_by_op.irreps
    assert eager.zero_flags == op_by_op.zero_flags
    assert any(eager.zero_flags) and not all(eager.zero_flags)  # the 1o input block is known zero
    np.testing.assert_allclose(eager.array, op_by_op.array, rtol=1e-6, atol=1e-6)


def test_repeated_eager_calls_reuse_one_program():
    x, y = _inputs()
    first = e3nn.elementwise_tensor_product(x, e3nn.IrrepsArray("2x0e + 1o + 2e", jnp.ones((4, 10))))
    count = _program_count("elementwise_tensor_product")
    second = e3nn.elementwise_tensor_product(x, e3nn.IrrepsArray("2x0e + 1o + 2e", jnp.ones((4, 10))))
    assert _program_count("elementwise_tensor_product") == count >= 1
    np.testing.assert_array_equal(first.array, second.array)
    assert first.zero_flags == second.zero_flags


def test_changed_setting_is_never_served_a_stale_program():
    x, y = _inputs()
    component = e3nn.tensor_product(x, y)
    try:
        e3nn.config("irrep_normalization", "norm")
        norm_default = e3nn.tensor_product(x, y)
    finally:
        e3nn.config("irrep_normalization", "component")
    norm_explicit = e3nn.tensor_product(x, y, irrep_normalization="norm")
    np.testing.assert_allclose(norm_default.array, norm_explicit.array, rtol=1e-6)
    assert not np.allclose(norm_default.array, component.array)


def test_recorded_choices_see_every_eager_call():
    x, y = _inputs()
    e3nn.tensor_product(x, y)  # a cached program exists for this call
    for _ in range(2):
        with dispatch.recorded_choices() as choices:
            e3nn.tensor_product(x, y)
        assert choices and all(op == "tensor_product" for op, _ in choices)


def test_calls_with_tracers_or_bare_irreps_run_as_written():
    x, y = _inputs()
    assert str(e3nn.tensor_product("2x0e + 1o", "1o")) == "1x0e+2x1o+1x1e+1x2e"
    before = len(_eager._programs)
    out = jax.vmap(lambda a, b: e3nn.tensor_square(a).array)(x, y)
    assert out.shape[0] == 4
    assert len(_eager._programs) == before


def test_a_call_that_raises_leaves_no_program_behind():
    x, y = _inputs()
    before = _program_count("tensor_product")
    with pytest.raises(ValueError, match="normalization"):
        e3nn.tensor_product(x, y, irrep_normalization="no-such-normalization")
    assert _program_count("tensor_product") == before
