"""Train an equivariant interatomic potential (NequIP-style, flax) on energies and forces with e3nn_fast and optax.

Default (no arguments): generates real data offline -- Langevin molecular dynamics of a periodic 32-atom fcc copper
cell at 800 K with ASE's EMT calculator, labelled with EMT energies and forces and cached under ~/.cache/e3nn_fast --
then trains for a few minutes on a CPU and reports held-out energy and force MAEs::

    python examples/train_potential.py

On molecular DFT data (revised MD17 aspirin; the ``_test.xyz`` file next to a ``_train.xyz`` one is used as the
held-out set), a longer run on a GPU::

    python examples/train_potential.py --data ../shared/data/rmd17_aspirin_train.xyz --cutoff 5 \\
        --steps 20000 --batch-size 8 --features 64 --lmax 2 --layers 3 --backend auto

Over several devices (``potential/parallel.py``): ``--devices N`` trains data-parallel (each batch split over N
devices, parameters replicated); ``--graph-parallel`` trains on one large EMT copper cell (10,976 atoms, generated
offline and cached) split atom-wise over the devices with ``e3nn_fast.sharding``.  On a CPU the script asks JAX for
N host devices itself (the same as ``XLA_FLAGS=--xla_force_host_platform_device_count=N``)::

    python examples/train_potential.py --devices 8 --batch-size 8
    python examples/train_potential.py --devices 8 --graph-parallel --steps 20

Several processes or hosts (``jax.distributed``): the same command in every process, plus ``--coordinator host:port
--num-processes P --process-id i`` (or the ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
environment variables; ``--distributed`` alone lets JAX detect a SLURM / Open MPI cluster).

Outputs (``--output``, default ``runs/potential``): ``checkpoint.msgpack`` (``--resume`` continues from it),
``learning_curves.png`` and ``summary.json`` (MAEs and time per step, also for e3nn-jax when it is installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the potential/ modules next to this script

import e3nn_fast as e3nn  # noqa: E402
from potential import checkpoint, data, graphs, model, plots, timing, training  # noqa: E402

EMT_CUTOFF, MOLECULE_CUTOFF = 4.0, 5.0  # Å


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    group = parser.add_argument_group("data")
    group.add_argument("--data", help="extended XYZ with energies and forces (default: generate EMT copper MD)")
    group.add_argument("--test-data", help="held-out XYZ (default: the _test.xyz next to a _train.xyz --data, "
                                           "else --num-test frames held out of --data)")
    group.add_argument("--num-train", type=int, help="use at most this many training frames")
    group.add_argument("--num-test", type=int, default=100, help="held-out frames to evaluate on (default 100)")
    group.add_argument("--md-frames", type=int, default=300, help="EMT MD snapshots to generate (default 300)")
    group.add_argument("--md-temperature", type=float, default=800.0, help="EMT MD temperature in K (default 800)")
    group.add_argument("--cache", help="where generated data is cached (default ~/.cache/e3nn_fast)")
    group.add_argument("--cutoff", type=float, help=f"neighbour cutoff in Å (default {EMT_CUTOFF} for EMT, "
                                                    f"{MOLECULE_CUTOFF} for --data)")
    group = parser.add_argument_group("model")
    group.add_argument("--features", type=int, default=16, help="channels per irrep (default 16)")
    group.add_argument("--lmax", type=int, default=2, help="highest spherical harmonic degree (default 2)")
    group.add_argument("--layers", type=int, default=2, help="message-passing layers (default 2)")
    group.add_argument("--num-basis", type=int, default=8, help="radial Bessel functions (default 8)")
    group.add_argument("--radial-hidden", type=int, default=32, help="width of the radial MLP (default 32)")
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, help="total training steps (default 1000; 20 with --graph-parallel)")
    group.add_argument("--batch-size", type=int, default=4, help="graphs per batch (default 4)")
    group.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (default 5e-3)")
    group.add_argument("--warmup", type=int, default=50, help="warm-up steps (default 50)")
    group.add_argument("--energy-weight", type=float, default=1.0, help="loss weight of energy per atom (default 1)")
    group.add_argument("--forces-weight", type=float, default=1.0, help="loss weight of forces (default 1)")
    group.add_argument("--eval-every", type=int, default=200, help="evaluate every this many steps (default 200)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--backend", default="auto", choices=["auto", "reference", "jnp", "pallas"],
                       help="e3nn_fast executors (default auto)")
    group = parser.add_argument_group(
        "devices and hosts",
        "On a CPU, --devices N makes this script start JAX with N host devices (jax_num_cpu_devices, the setting behind "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N); that only works while JAX has not started, so when "
        "calling main() from Python after using JAX, set XLA_FLAGS before importing jax instead.")
    group.add_argument("--devices", type=int, help="data-parallel training over N devices per process: a mesh over a "
                                                   "'batch' axis, parameters replicated, every batch split into N "
                                                   "parts (--batch-size must be a multiple of all devices)")
    group.add_argument("--graph-parallel", action="store_true",
                       help="train on one large EMT Cu cell split by atoms over the devices (all local devices unless "
                            "--devices): partition_graph, halo exchange, psum of the energy")
    group.add_argument("--supercell-repeat", type=int, default=14,
                       help="--graph-parallel cell: 4*R^3 atoms (default 14: 10,976 atoms)")
    group.add_argument("--supercell-frames", type=int, default=4,
                       help="--graph-parallel frames; the last is held out (default 4)")
    group.add_argument("--halo-mode", default="halo", choices=["halo", "all_gather"],
                       help="how each device gets remote atoms' features (default halo)")
    group.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                       help="host:port of process 0 for jax.distributed.initialize (default $JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, default=_env_int("JAX_NUM_PROCESSES"),
                       help="number of processes (default $JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, default=_env_int("JAX_PROCESS_ID"),
                       help="this process, 0 .. num-processes-1 (default $JAX_PROCESS_ID)")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() and let JAX detect the cluster (SLURM, Open MPI, ...)")
    group = parser.add_argument_group("outputs")
    group.add_argument("--output", default="runs/potential", help="output folder (default runs/potential)")
    group.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    group.add_argument("--checkpoint-every", type=int, default=500, help="save every this many steps (default 500)")
    group.add_argument("--no-compare", action="store_true", help="skip the e3nn-jax time-per-step comparison")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 20 if args.graph_parallel else 1000
    for name in ("steps", "batch_size", "num_test", "md_frames", "eval_every", "devices", "supercell_repeat"):
        if getattr(args, name) is None:
            continue
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.graph_parallel and args.supercell_frames < 2:
        parser.error("--supercell-frames must be >= 2 (the last frame is held out)")
    if args.coordinator and (args.num_processes is None or args.process_id is None):
        parser.error("--coordinator needs --num-processes and --process-id (or JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    return args


def _env_int(name: str):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def parallel_requested(args) -> bool:
    return args.devices is not None or args.graph_parallel or bool(args.coordinator) or args.distributed


def load_frames(args) -> tuple[list, list, str]:
    """(train frames, test frames, description of the data)."""
    if args.data is None:
        start = time.perf_counter()
        frames = data.cached_emt_dataset(args.md_frames, cache_dir=args.cache, temperature_K=args.md_temperature)
        print(f"EMT copper MD: {len(frames)} frames of {frames[0].num_atoms} atoms at {args.md_temperature:g} K "
              f"({time.perf_counter() - start:.1f} s, cached)")
        train, test = data.split(frames, args.num_test, seed=args.seed)
        return train[: args.num_train], test, f"EMT Cu{frames[0].num_atoms} MD {args.md_temperature:g} K"
    train = data.read_xyz(args.data, limit=args.num_train)
    test_path = args.test_data
    if test_path is None and "_train" in Path(args.data).name:
        candidate = Path(args.data).with_name(Path(args.data).name.replace("_train", "_test"))
        test_path = str(candidate) if candidate.is_file() else None
    if test_path is not None:
        test = data.read_xyz(test_path, limit=args.num_test)
    else:
        train, test = data.split(train, args.num_test, seed=args.seed)
    return train, test, Path(args.data).stem


def model_setup(train_frames, metadata=None):
    """``(config, species table, reference energies)``: a checkpoint's when its metadata is given (same species and
    model), else fitted to the training frames with no model configuration yet (``None``)."""
    if metadata is not None:
        return (model.ModelConfig(**metadata["model"]), np.asarray(metadata["species"]),
                np.asarray(metadata["reference_energies"]))
    table = data.species_table(train_frames)
    return None, table, data.fit_reference_energies(train_frames, table)


def prepare(args, metadata=None):
    """Frames -> graphs, and the model configuration: from the training data, or from a checkpoint's metadata."""
    train_frames, test_frames, description = load_frames(args)
    config, table, e0 = model_setup(train_frames, metadata)  # --resume: the checkpoint's species and model
    cutoff = config.cutoff if config else args.cutoff or (EMT_CUTOFF if args.data is None else MOLECULE_CUTOFF)
    train_graphs = [graphs.build_graph(f, cutoff, table, e0) for f in train_frames]
    test_graphs = [graphs.build_graph(f, cutoff, table, e0) for f in test_frames]
    if config is None:
        config = model.ModelConfig(
            num_species=len(table), cutoff=cutoff, features=args.features, lmax=args.lmax, num_layers=args.layers,
            num_basis=args.num_basis, radial_hidden=args.radial_hidden,
            avg_num_neighbours=graphs.average_num_neighbours(train_graphs),
            energy_scale=graphs.forces_rms(train_graphs),
        )
    print(f"data: {description}; {len(train_graphs)} train / {len(test_graphs)} test graphs, "
          f"species Z={table.tolist()}, reference energies {np.round(e0, 4).tolist()} eV, "
          f"{config.avg_num_neighbours:.1f} neighbours/atom")
    metadata = {"model": dataclasses.asdict(config), "species": table.tolist(), "reference_energies": e0.tolist(),
                "data": description}
    return train_graphs, test_graphs, config, metadata


def resumable_batches(train_graphs, batch_size, budget, seed: int, step: int):
    """The training batches from ``step`` on: the same sequence as an uninterrupted run."""
    batches_per_epoch = -(-len(train_graphs) // batch_size)
    batches = training.infinite_batches(train_graphs, batch_size, budget, seed, start_epoch=step // batches_per_epoch)
    for _ in range(step % batches_per_epoch):
        next(batches)
    return batches


def print_metrics(name: str, metrics: dict, num_frames: int) -> None:
    print(f"{name}: energy MAE {metrics['energy_mae_meV_per_atom']:.2f} meV/atom, "
          f"force MAE {metrics['forces_mae_meV_per_A']:.1f} meV/Å  ({num_frames} frames)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if parallel_requested(args):
        return main_parallel(args)
    platform = jax.devices()[0].platform
    if args.backend == "pallas" and platform == "cpu":
        raise SystemExit("--backend pallas needs a GPU or TPU; on a CPU use auto, jnp or reference")
    output = Path(args.output)
    checkpoint_path = output / "checkpoint.msgpack"
    print(f"jax {jax.__version__} on {platform}; e3nn_fast backend {args.backend}")

    payload, stored = checkpoint.read_checkpoint(checkpoint_path) if args.resume else (None, None)
    train_graphs, test_graphs, config, metadata = prepare(args, stored)
    budget = graphs.padding_budget(train_graphs + test_graphs, args.batch_size)
    print(f"model: {metadata['model']}\npadded batch: {budget}")

    potential = model.Potential(e3nn=e3nn, config=config)
    weights = training.LossWeights(energy=args.energy_weight, forces=args.forces_weight)
    optimizer = training.make_optimizer(args.lr, args.steps, args.warmup)
    first_batch = graphs.pad_and_batch(train_graphs[: args.batch_size], budget)
    with e3nn.backend(args.backend):
        params = model.init_params(potential, first_batch, seed=args.seed)
    state = training.TrainState(params, optimizer.init(params), 0, training.History())
    if payload is not None:
        state = checkpoint.restore_state(payload, params, state.opt_state)
        print(f"resumed from {checkpoint_path} at step {state.step}")
    print(f"{sum(np.size(p) for p in jax.tree_util.tree_leaves(state.params))} parameters")

    train_step = training.make_train_step(potential, optimizer, weights)
    predict = training.make_predict(potential)
    batches = resumable_batches(train_graphs, args.batch_size, budget, args.seed, state.step)

    def evaluate(params, graph_list=test_graphs):
        return training.evaluate(predict, params, graph_list, args.batch_size, budget)

    start = time.perf_counter()
    with e3nn.backend(args.backend):  # executors are chosen while a function is traced (its first call)
        state, step_s = training.train(
            state, train_step, batches, args.steps, evaluate, args.eval_every,
            on_checkpoint=lambda s: checkpoint.save_checkpoint(checkpoint_path, s, metadata),
            checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
        )
        checkpoint.save_checkpoint(checkpoint_path, state, metadata)
        train_s = time.perf_counter() - start
        test_metrics = evaluate(state.params)
        train_metrics = evaluate(state.params, train_graphs[: len(test_graphs)])
    print(f"\ntrained to step {state.step} in {train_s:.1f} s; {1000 * step_s:.1f} ms per step ({args.backend})")
    print_metrics("test ", test_metrics, len(test_graphs))
    print_metrics("train", train_metrics, min(len(train_graphs), len(test_graphs)))
    plots.plot_learning_curves(state.history, output / "learning_curves.png",
                               title=f"{metadata['data']}: {config.features} features, lmax {config.lmax}, "
                                     f"{config.num_layers} layers")

    summary = {"data": metadata["data"], "steps": state.step, "train_seconds": train_s, "step_ms": 1000 * step_s,
               "backend": args.backend, "test": test_metrics, "train": train_metrics, "model": metadata["model"],
               "batch": budget._asdict(), "device": str(jax.devices()[0])}
    if not args.no_compare:
        summary["timing"] = compare_with_e3nn_jax(config, state.params, first_batch, optimizer, weights, args.backend)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {checkpoint_path}, {output / 'learning_curves.png'}, {output / 'summary.json'}")
    return summary


def compare_with_e3nn_jax(config, params, batch, optimizer, weights, backend: str) -> dict:
    """Time one training step of this model on e3nn_fast and, if installed, on e3nn_jax (same params and batch)."""
    candidates = {"e3nn_fast": (e3nn, backend)}
    e3nn_jax = timing.import_e3nn_jax()
    if e3nn_jax is not None:
        candidates["e3nn_jax"] = (e3nn_jax, None)
    results = timing.compare_train_steps(candidates, config, params, batch, optimizer, weights)
    for name, result in results.items():
        print(f"time per training step, {name:9s}: {1000 * result['step_s']:7.1f} ms "
              f"(compile {result['compile_s']:.1f} s)")
    if "e3nn_jax" in results:
        print(f"speed-up: {results['e3nn_jax']['step_s'] / results['e3nn_fast']['step_s']:.2f}x")
    return results

# --- several devices and hosts ---------------------------------------------------------------------------------------


def main_parallel(args) -> dict:
    """--devices / --graph-parallel / several processes: start JAX accordingly, then train on a mesh."""
    from potential import parallel

    if args.devices is not None:
        parallel.request_cpu_devices(args.devices)  # before JAX starts; harmless on a GPU or TPU host
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.distributed)
    platform = jax.devices()[0].platform
    if args.backend == "pallas" and platform == "cpu":
        raise SystemExit("--backend pallas needs a GPU or TPU; on a CPU use auto, jnp or reference")
    placement = parallel.Placement(parallel.select_devices(args.devices), "graph" if args.graph_parallel else "batch")
    lead = jax.process_index() == 0
    args.no_compare = True  # the e3nn-jax timing comparison is single-device
    args.no_progress = args.no_progress or not lead
    print(f"jax {jax.__version__} on {platform}; process {jax.process_index()} of {jax.process_count()}; mesh "
          f"{dict(placement.mesh.shape)} ({len(jax.local_devices())} local devices); backend {args.backend}")
    if args.graph_parallel:
        return _train_graph_parallel(args, placement, lead)
    return _train_data_parallel(args, placement, lead)


def _train_data_parallel(args, placement, lead: bool) -> dict:
    from potential import parallel

    if args.batch_size % placement.size:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {placement.size} devices")
    output = Path(args.output)
    payload, stored = checkpoint.read_checkpoint(output / "checkpoint.msgpack") if args.resume else (None, None)
    train_graphs, test_graphs, config, metadata = prepare(args, stored)
    budget = graphs.padding_budget(train_graphs + test_graphs, args.batch_size)  # one device: init, evaluation
    shard_budget = graphs.padding_budget(train_graphs + test_graphs, args.batch_size // placement.size)
    print(f"model: {metadata['model']}\npadded batch per device: {shard_budget} x {placement.size} devices")
    potential = model.Potential(e3nn=e3nn, config=config)
    weights = training.LossWeights(energy=args.energy_weight, forces=args.forces_weight)
    optimizer = training.make_optimizer(args.lr, args.steps, args.warmup)
    first_batch = graphs.pad_and_batch(train_graphs[: args.batch_size], budget)
    state = _initial_state(args, potential, first_batch, optimizer, payload, placement)
    train_step = parallel.make_data_parallel_step(potential, optimizer, weights, placement)
    batches = parallel.data_parallel_batches(train_graphs, args.batch_size, placement.size, shard_budget, args.seed,
                                             state.step)
    predict = training.make_predict(potential)

    def evaluate(params, graph_list=test_graphs):  # on this process's first device, with its copy of the parameters
        return training.evaluate(predict, placement.local(params), graph_list, args.batch_size, budget)

    train_subset = train_graphs[: len(test_graphs)]
    return _run(args, state, train_step, batches, evaluate, lambda p: evaluate(p, train_subset), metadata, config,
                placement, lead, len(test_graphs), len(train_subset), "data parallel")


def _train_graph_parallel(args, placement, lead: bool) -> dict:
    from potential import parallel

    output = Path(args.output)
    payload, stored = checkpoint.read_checkpoint(output / "checkpoint.msgpack") if args.resume else (None, None)
    start = time.perf_counter()
    frames = data.cached_emt_supercell(args.supercell_frames, args.supercell_repeat, cache_dir=args.cache,
                                       seed=args.seed)
    print(f"EMT copper cell: {len(frames)} frames of {frames[0].num_atoms} atoms "
          f"({time.perf_counter() - start:.1f} s, cached); the last frame is held out")
    train_frames = frames[:-1]  # the last frame is held out
    config, table, e0 = model_setup(train_frames, stored)
    cutoff = config.cutoff if config else args.cutoff or EMT_CUTOFF
    all_graphs = [graphs.build_graph(f, cutoff, table, e0) for f in frames]
    train_graphs, test_graphs = all_graphs[:-1], all_graphs[-1:]
    if config is None:
        config = model.ModelConfig(
            num_species=len(table), cutoff=cutoff, features=args.features, lmax=args.lmax, num_layers=args.layers,
            num_basis=args.num_basis, radial_hidden=args.radial_hidden,
            avg_num_neighbours=graphs.average_num_neighbours(train_graphs),
            energy_scale=graphs.forces_rms(train_graphs),
        )
    description = f"EMT Cu{frames[0].num_atoms} cell"
    metadata = {"model": dataclasses.asdict(config), "species": table.tolist(), "reference_energies": e0.tolist(),
                "data": description}
    # Host side, the same in every process: every frame partitioned with common capacities (edge slots and halo
    # rows per shard), hence one partition shape and pytree structure: the training step compiles once.
    host = parallel.common_graph_inputs(all_graphs, placement.size)
    part = host[0].partition
    print(f"graph parallel over {placement.size} devices ({args.halo_mode}): {part.num_nodes} atoms, "
          f"{part.num_edges} edges; per device {part.nodes_per_shard} atoms, {part.edges_per_shard} edge slots, "
          f"{part.halo_rows_per_shard} halo rows from shard distances {list(part.halo_offsets)}")
    placed = [parallel.place_graph(h, placement) for h in host]
    placed_train, placed_test = placed[:-1], placed[-1:]

    potential = model.Potential(e3nn=e3nn, config=config)
    sharded = parallel.GraphParallelPotential(e3nn=e3nn, config=config, axis_name=placement.axis, mode=args.halo_mode)
    weights = training.LossWeights(energy=args.energy_weight, forces=args.forces_weight)
    optimizer = training.make_optimizer(args.lr, args.steps, args.warmup)
    state = _initial_state(args, potential, _tiny_batch(train_graphs[0]), optimizer, payload, placement)
    train_step = parallel.make_graph_parallel_step(sharded, optimizer, weights, placement)
    batches = (placed_train[i % len(placed_train)] for i in itertools.count(state.step))
    errors = parallel.make_graph_parallel_errors(sharded, placement)

    def evaluate(params, which="test"):
        chosen, graph_list = (placed_test, test_graphs) if which == "test" else (placed_train, train_graphs)
        return parallel.graph_parallel_metrics(errors, params, chosen, [g.num_nodes for g in graph_list])

    return _run(args, state, train_step, batches, evaluate, lambda p: evaluate(p, "train"), metadata, config,
                placement, lead, len(test_graphs), len(train_graphs), "graph parallel")


def _tiny_batch(graph):
    """Two atoms and no edges of ``graph``: enough to initialise parameters (their shapes do not depend on sizes)."""
    tiny = graphs.Graph(species=graph.species[:2], positions=graph.positions[:2], senders=np.zeros(0, np.int32),
                        receivers=np.zeros(0, np.int32), shifts=np.zeros((0, 3)), energy=0.0, forces=graph.forces[:2])
    return graphs.pad_and_batch([tiny], graphs.PaddingBudget(num_nodes=3, num_edges=1, num_graphs=2))


def _initial_state(args, potential, batch, optimizer, payload, placement):
    """Parameters initialised (or restored) on this process's first device, then replicated over the mesh."""
    with e3nn.backend(args.backend), jax.default_device(jax.local_devices()[0]):
        params = model.init_params(potential, batch, seed=args.seed)
    state = training.TrainState(params, optimizer.init(params), 0, training.History())
    if payload is not None:
        state = checkpoint.restore_state(payload, params, state.opt_state)
        print(f"resumed at step {state.step}")
    print(f"{sum(np.size(p) for p in jax.tree_util.tree_leaves(state.params))} parameters")
    state.params, state.opt_state = placement.replicate(state.params), placement.replicate(state.opt_state)
    return state


def _run(args, state, train_step, batches, evaluate, evaluate_train, metadata, config, placement, lead,
         num_test: int, num_train: int, layout: str) -> dict:
    """The training loop, final metrics and outputs (files written by process 0 only)."""
    output = Path(args.output)
    checkpoint_path = output / "checkpoint.msgpack"

    def local_state(s):
        return dataclasses.replace(s, params=placement.local(s.params), opt_state=placement.local(s.opt_state))

    def save(s):
        if lead:
            checkpoint.save_checkpoint(checkpoint_path, local_state(s), metadata)

    start = time.perf_counter()
    with e3nn.backend(args.backend):
        state, step_s = training.train(state, train_step, batches, args.steps, evaluate, args.eval_every,
                                       on_checkpoint=save, checkpoint_every=args.checkpoint_every,
                                       progress=not args.no_progress)
        save(state)
        train_s = time.perf_counter() - start
        test_metrics = evaluate(state.params)
        train_metrics = evaluate_train(state.params)
    print(f"\ntrained to step {state.step} in {train_s:.1f} s; {1000 * step_s:.1f} ms per step ({layout}, "
          f"{placement.size} devices, {jax.process_count()} process(es))")
    print_metrics("test ", test_metrics, num_test)
    print_metrics("train", train_metrics, num_train)
    summary = {"data": metadata["data"], "steps": state.step, "train_seconds": train_s, "step_ms": 1000 * step_s,
               "backend": args.backend, "layout": layout, "devices": placement.size,
               "processes": jax.process_count(), "test": test_metrics, "train": train_metrics,
               "model": metadata["model"], "device": str(jax.devices()[0]), "loss": state.history.loss}
    if lead:
        plots.plot_learning_curves(state.history, output / "learning_curves.png",
                                   title=f"{metadata['data']} ({layout}, {placement.size} devices): "
                                         f"{config.features} features, lmax {config.lmax}, {config.num_layers} layers")
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {checkpoint_path}, {output / 'learning_curves.png'}, {output / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
