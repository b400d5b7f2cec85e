"""The e3nn_fast benchmark harness: ``python -m bench`` (or ``e3nn-fast-bench``).

One concept per module:

============== =====================================================================================================
``workloads``  the workload registry: published tensor-product configurations, spherical harmonics and a NequIP-style
               training step, each sized per suite (``tiny`` for tests, ``quick`` for a CPU, ``full`` for a GPU)
``fused``      the fused-op workloads: message passing (MACE-large/-medium, NequIP-benzene) and MACE's symmetric
               contraction, e3nn_fast's fused ops against the op by op composition and e3nn-jax
``model``      the NequIP-style model and its graphs (rMD17 aspirin when present, else generated EMT copper) for the training-step workload
``passes``     the three timed passes derived from a forward function: fwd, fwd+bwd, forces (double backward)
``backends``   the backend registry: e3nn_fast executors, e3nn-jax, cuequivariance-jax (whichever import)
``costs``      FLOPs and bytes of a workload, counted from e3nn_fast's path descriptions
``devices``    device identification, the table of device peaks and the CPU probe
``timing``     compile, warm up, time (median, ``block_until_ready``) and memory of one compiled function
``runner``     runs a suite: every workload x pass x backend, into result rows (errors become rows, not crashes)
``report``     results.json, results.md, speedup.png and roofline.png; JSON lines streamed row by row
``device``     one timed session on a lent GPU: parts in their own processes and time limits, numerics first
``device_numerics``  every kernel family against the float64 reference on the device (fp32, fp64, bf16)
``cue``        cuequivariance-jax implementations of the workloads (its CUDA ``uniform_1d`` method where it applies)
``sm90_resources``  offline sm_90 compile of every kernel (registers, spills, shared memory, programs per SM)
============== =====================================================================================================

``bench/test_micro.py`` holds pytest-benchmark micro-benchmarks of the hot functions (run it explicitly:
``python -m pytest bench/test_micro.py``); ``bench/device_session.sh`` runs :mod:`bench.device` on a lent GPU.
"""

HARNESS_VERSION = "1"
