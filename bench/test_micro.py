"""pytest-benchmark micro-benchmarks: one benchmark per core op x pass x executor, e3nn-jax alongside, to compare a
change against a saved run.

Not part of CI (``pytest`` collects ``tests/`` only); run explicitly from the repository root, a few minutes on two
CPU cores::

    python -m pytest bench/test_micro.py --benchmark-only --benchmark-autosave --benchmark-storage=bench/results/micro
    # ... change something, then compare with the last saved run:
    python -m pytest bench/test_micro.py --benchmark-only --benchmark-storage=bench/results/micro \\
        --benchmark-compare --benchmark-compare-fail=median:10%

Benchmarks are named ``test_micro[<op>-<pass>-<executor>]`` and grouped by op and pass, so the executors and e3nn-jax
of one op and pass sit in one table.  The ops and the passes reuse the harness's workloads (:mod:`bench.workloads`,
:mod:`bench.fused`) and passes (:mod:`bench.passes`), at the small sizes of :data:`OPS`:

* ops: ``tp_sh`` (``tensor_product`` of features with the spherical harmonics of edge vectors, per-edge weights;
  harmonics computed inside, so ``forces`` differentiates through both), ``tp_fc_edge`` (a fully connected
  ``uvw`` product with per-edge flat weights under ``vmap``, DiffDock's convolution), ``message_passing``,
  ``symmetric_contraction``, ``linear`` (haiku ``Linear``) and ``sh`` (``spherical_harmonics``, l <= 3);
* passes: ``fwd``, ``fwd+bwd`` and ``forces`` (the double backward of force training); ``linear`` has no ``forces``
  (a linear map's gradient in its input does not depend on the input: the double backward is zero);
* executors: e3nn_fast's ``reference``, ``jnp`` and ``pallas`` (the executor forced with ``e3nn_fast.backend``; a
  benchmark is skipped where the op has no such executor, since dispatch would fall back to the reference, and
  ``pallas`` only runs on a GPU/TPU), and ``e3nn-jax`` (skipped when not installed).  e3nn-jax has no fused message
  passing: its benchmark is the composition a model writes with it (gather, ``tensor_product`` times the weights,
  ``scatter_sum``), as in the harness; its symmetric contraction is ``e3nn_jax.haiku.SymmetricTensorProduct``.

Each benchmark times one call of the compiled pass ended by ``block_until_ready``, after a compile and a warm-up call
that are not timed; ``extra_info`` records the compile seconds and the size.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import devices, timing
from bench.backends import FUSED_API
from bench.passes import PASSES, cotangent_like
from bench.workloads import E3NN_API, WORKLOADS

# op -> (harness workload, size, e3nn_fast dispatch op whose executors are benchmarked, API of e3nn_fast's builder)
OPS = {
    "tp_sh": ("sh-tp", 256, "tensor_product", E3NN_API),
    "tp_fc_edge": ("diffdock", 64, "tensor_product", E3NN_API),
    "message_passing": ("mp-mace-medium", 352, "message_passing", FUSED_API),
    "symmetric_contraction": ("sc-mace", 32, "symmetric_contraction", FUSED_API),
    "linear": ("linear-128", 256, "linear", E3NN_API),
    "sh": ("sh-l3", 8192, "spherical_harmonics", E3NN_API),
}
EXECUTORS = ("reference", "jnp", "pallas", "e3nn-jax")
NO_FORCES = {"linear"}


@functools.lru_cache(maxsize=None)
def _inputs(op: str):
    """The op's inputs and a cotangent for its output (fp32, made once per op and shared by every benchmark)."""
    workload, size, _, _ = OPS[op]
    workload = WORKLOADS[workload]
    inputs = workload.make_inputs(size, jnp.float32, jax.random.PRNGKey(0))
    build = workload.builders[E3NN_API]
    import e3nn_fast

    cotangent = cotangent_like(build(e3nn_fast), inputs, jax.random.PRNGKey(1))
    return inputs, (*inputs.arrays, cotangent)


def _skip_reason(op: str, pass_name: str, executor: str):
    if pass_name == "forces" and op in NO_FORCES:
        return f"{op}: no forces pass (its double backward is zero)"
    if executor == "e3nn-jax":
        try:
            import e3nn_jax  # noqa: F401
        except ImportError:
            return "e3nn-jax is not installed"
        return None
    import e3nn_fast  # noqa: F401  (registers every op's executors)
    from e3nn_fast import dispatch

    dispatch_op = OPS[op][2]
    if executor not in dispatch.available(dispatch_op):
        return f"no {executor!r} executor for {dispatch_op} (dispatch would run the reference)"
    if executor == "pallas" and not devices.is_accelerator():
        return "pallas needs a GPU/TPU (interpret mode is never timed)"
    return None


def _library_and_context(op: str, executor: str):
    """(library, builder API, context entered while tracing) of one executor."""
    if executor == "e3nn-jax":
        import e3nn_jax

        return e3nn_jax, E3NN_API, None
    import e3nn_fast

    return e3nn_fast, OPS[op][3], lambda: e3nn_fast.backend(executor)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("op", list(OPS))
def test_micro(benchmark, op, pass_name, executor):
    reason = _skip_reason(op, pass_name, executor)
    if reason is not None:
        pytest.skip(reason)
    workload_name, size, _, _ = OPS[op]
    workload = WORKLOADS[workload_name]
    inputs, args = _inputs(op)
    lib, api, context = _library_and_context(op, executor)
    if context is None:
        forward = workload.builders[api](lib)
    else:
        with context():
            forward = workload.builders[api](lib)
    compiled = timing.compile_function(workload.passes(forward, inputs)[pass_name], args, context)
    result = timing.run_once(compiled, args)  # the warm-up call, untimed
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(result))

    benchmark.group = f"{op} {pass_name}"
    benchmark.extra_info.update(op=op, workload=workload_name, size=size, unit=workload.unit, executor=executor,
                                compile_s=compiled.compile_s)
    benchmark(lambda: jax.block_until_ready(compiled.run(*args)))
