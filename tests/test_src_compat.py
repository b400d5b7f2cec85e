"""``e3nn_fast._src``: e3nn-jax's private module paths serve aliases of e3nn_fast objects, also as ``e3nn_jax._src``.

Also the two functions first made public for them: ``parity_function`` and ``is_zero_in_zero`` (same answers as
e3nn-jax's, and the single parity test that ``scalar_activation`` and ``SphericalSignal.apply`` rely on).
"""

import importlib
import subprocess
import sys
import textwrap

import e3nn_jax
import e3nn_jax._src.activation as ref_activation
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import e3nn_fast
from e3nn_fast import activation, configuration, graph, harmonics, irreps, irreps_array, s2grid, so3, utils

# module under ``_src`` -> {served name: the e3nn_fast object it must be}
SERVED = {
    "activation": {
        name: getattr(activation, name)
        for name in [
            "soft_odd",
            "normalize_function",
            "parity_function",
            "is_zero_in_zero",
            "scalar_activation",
            "norm_activation",
            "soft_normalization",
        ]
    },
    "config": {"config": configuration.config, "__default_conf": configuration._DEFAULTS},
    "irreps": {name: getattr(irreps, name) for name in ["Irrep", "MulIrrep", "Irreps", "IntoIrrep", "IntoIrreps"]},
    "irreps_array": {"IrrepsArray": irreps_array.IrrepsArray},
    "so3": {name: getattr(so3, name) for name in ["change_basis_real_to_complex", "clebsch_gordan", "generators"]},
    "scatter": {name: getattr(graph, name) for name in ["scatter_sum", "scatter_mean", "scatter_max", "index_add"]},
    "spherical_harmonics": {"spherical_harmonics": harmonics.spherical_harmonics, "sh": harmonics.sh},
    "s2grid": {
        name: getattr(s2grid, name)
        for name in [
            "SphericalSignal",
            "betas_to_spherical_signal",
            "from_s2grid",
            "get_s2fft_grid_resolution",
            "legendre_transform_from_s2grid",
            "legendre_transform_to_s2grid",
            "m0_values_to_irrepsarray",
            "s2_dirac",
            "s2_irreps",
            "to_s2grid",
            "to_s2point",
        ]
    },
    "utils.test": {
        name: getattr(utils, name)
        for name in ["assert_equivariant", "equivariance_test", "assert_output_dtype_matches_input_dtype"]
    },
}


@pytest.mark.parametrize("module_name", sorted(SERVED))
def test_served_names_are_the_e3nn_fast_objects(module_name):
    module = importlib.import_module(f"e3nn_fast._src.{module_name}")
    assert sorted(module.__all__) == sorted(SERVED[module_name])
    for name, expected in SERVED[module_name].items():
        assert getattr(module, name) is expected, name


@pytest.mark.parametrize("module_name", sorted(SERVED))
def test_served_names_live_at_the_same_path_in_e3nn_jax(module_name):
    """Only real e3nn-jax 0.21 paths are served: each name exists in the e3nn-jax module of the same path."""
    reference = importlib.import_module(f"e3nn_jax._src.{module_name}")
    missing = [name for name in SERVED[module_name] if not hasattr(reference, name)]
    assert not missing, f"e3nn_jax._src.{module_name} has no {missing}"


def test_default_configuration_covers_e3nn_jax_options():
    """e3nn-jax's tests reset the configuration from ``__default_conf``: same options, same defaults (plus ours)."""
    from e3nn_fast._src.config import __default_conf as ours

    reference = importlib.import_module("e3nn_jax._src.config").__dict__["__default_conf"]
    assert {key: ours[key] for key in reference} == reference


def test_private_imports_resolve_when_e3nn_jax_is_aliased():
    """``sys.modules["e3nn_jax"] = e3nn_fast`` then ``from e3nn_jax._src.<module> import ...``: e3nn_fast's objects.

    Run in a subprocess so that the e3nn-jax oracle of this process is untouched.  The submodules are found through
    ``e3nn_fast.__path__``; the real e3nn-jax must never be imported.
    """
    script = textwrap.dedent(
        """
        import importlib, os, sys
        import e3nn_fast
        sys.modules["e3nn_jax"] = e3nn_fast

        from e3nn_jax._src.activation import is_zero_in_zero, parity_function, scalar_activation
        from e3nn_jax._src.utils.test import assert_output_dtype_matches_input_dtype
        from e3nn_jax._src.config import __default_conf
        import e3nn_jax._src.activation as act_module
        import e3nn_jax._src.scatter

        assert parity_function is e3nn_fast.activation.parity_function
        assert is_zero_in_zero is e3nn_fast.activation.is_zero_in_zero
        assert scalar_activation is e3nn_fast.scalar_activation
        assert assert_output_dtype_matches_input_dtype is e3nn_fast.utils.assert_output_dtype_matches_input_dtype
        assert __default_conf is e3nn_fast.configuration._DEFAULTS
        assert act_module.normalize_function is e3nn_fast.normalize_function
        assert e3nn_jax._src.scatter.scatter_sum is e3nn_fast.scatter_sum

        for name in sys.argv[1:]:  # every served module, each name the same object as under e3nn_fast._src
            aliased = importlib.import_module("e3nn_jax._src." + name)
            direct = importlib.import_module("e3nn_fast._src." + name)
            assert aliased.__all__ == direct.__all__, name
            for attr in direct.__all__:
                assert getattr(aliased, attr) is getattr(direct, attr), (name, attr)

        package_dir = os.path.dirname(e3nn_fast.__file__)
        for name, module in list(sys.modules.items()):
            if name.startswith("e3nn_jax."):
                assert os.path.dirname(module.__file__).startswith(package_dir), (name, module.__file__)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *sorted(SERVED)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ----------------------------------------------------------------------------------------------------------------
# parity_function and is_zero_in_zero
# ----------------------------------------------------------------------------------------------------------------

FUNCTIONS = {
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "abs": jnp.abs,
    "square": lambda x: x**2,
    "cube": lambda x: x**3,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "soft_odd": e3nn_fast.soft_odd,
    "zero": jnp.zeros_like,
    "one": jnp.ones_like,
    "odd_within_tolerance": lambda x: x + 1e-6,  # |phi(x) + phi(-x)| = 2e-6 < 1e-5: counted odd
    "even_within_tolerance": lambda x: x**2 + 1e-6 * x,
    "odd_beyond_tolerance": lambda x: x + 1e-4,
    "odd_but_broken_beyond_10": lambda x: jnp.where(x > 10.5, 1.0, x),  # only [-10, 10] is sampled
    "nan": lambda x: x * jnp.nan,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_parity_function_matches_e3nn_jax(name):
    phi = FUNCTIONS[name]
    result = activation.parity_function(phi)
    assert type(result) is int
    assert result == ref_activation.parity_function(phi)


def test_parity_function_values():
    assert activation.parity_function(jnp.tanh) == -1
    assert activation.parity_function(jnp.cos) == 1
    assert activation.parity_function(jax.nn.gelu) == 0
    assert activation.parity_function(jnp.zeros_like) == 1  # both even and odd: reported even


def test_parity_function_under_jit():
    """The check runs eagerly even while tracing, so it can decide irreps inside a jitted function."""

    @jax.jit
    def f(x):
        return x * activation.parity_function(jnp.sin) + activation.parity_function(jnp.cos)

    assert float(f(2.0)) == -1.0


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_is_zero_in_zero_matches_e3nn_jax(name):
    phi = FUNCTIONS[name]
    result = activation.is_zero_in_zero(phi)
    assert type(result) is bool
    assert result == bool(ref_activation.is_zero_in_zero(phi))


@pytest.mark.parametrize("function", [activation.parity_function, activation.is_zero_in_zero])
@pytest.mark.parametrize("bad", [None, 3, "tanh"])
def test_non_callable_is_a_type_error(function, bad):
    with pytest.raises(TypeError, match=f"{function.__name__}: expected a callable"):
        function(bad)


def _spy_on_parity_function(monkeypatch):
    """Replace ``e3nn_fast.activation.parity_function`` by a recording wrapper; return the list of functions seen."""
    seen = []
    original = activation.parity_function

    def spy(phi):
        seen.append(phi)
        return original(phi)

    monkeypatch.setattr(activation, "parity_function", spy)
    return seen


def test_scalar_activation_decides_odd_blocks_with_parity_function(monkeypatch):
    seen = _spy_on_parity_function(monkeypatch)
    x = e3nn_fast.IrrepsArray("0e + 0o + 0o", jnp.array([0.5, -0.3, 0.7]))
    y = e3nn_fast.scalar_activation(x, [jnp.tanh, jnp.cos, jnp.sin], normalize_act=False)
    assert y.irreps == "0e + 0e + 0o"
    assert seen == [jnp.cos, jnp.sin]  # only the odd blocks ask, in order
    x_ref = e3nn_jax.IrrepsArray("0e + 0o + 0o", jnp.array([0.5, -0.3, 0.7]))
    ref = e3nn_jax.scalar_activation(x_ref, [jnp.tanh, jnp.cos, jnp.sin], normalize_act=False)
    assert str(ref.irreps) == str(y.irreps)
    np.testing.assert_allclose(y.array, ref.array)


def test_spherical_signal_apply_checks_parity_with_parity_function(monkeypatch):
    seen = _spy_on_parity_function(monkeypatch)
    signal = e3nn_fast.SphericalSignal(jnp.ones((6, 11)), "soft", p_val=-1, p_arg=-1)
    signal.apply(jnp.tanh)
    assert seen == [jnp.tanh]
    with pytest.raises(ValueError, match="neither"):
        signal.apply(jax.nn.gelu)
