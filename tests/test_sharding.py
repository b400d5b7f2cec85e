"""Beyond one device (issue 17): every op on sharded inputs; graph-parallel message passing (``e3nn_fast.sharding``).

The multi-device checks need 8 fake CPU devices, i.e. ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before
JAX starts.  pytest runs other tests in the same process (whose JAX has long started with one device), so those
checks run in a fresh interpreter: this file executed as a script (``python tests/test_sharding.py GROUP``), one
group per test, each printing one JSON line of measurements that the test asserts on.  Two groups, so that
``pytest -n 2`` runs them side by side.  The partitioning itself (host-side NumPy) and the bad-input errors are tested
in process, and a one-device mesh runs the graph-parallel path in process too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

FAKE_DEVICES = 8
IRREPS_IN = "2x0e+2x1o"
IRREPS_SH = "0e+1o+2e"


def spatial_graph(num_nodes: int, cutoff: float, box: float, seed: int):
    """A radius graph of random points, nodes sorted along x (neighbours on nearby shards)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, box, size=(num_nodes, 3))
    pos = pos[np.argsort(pos[:, 0])]
    return (pos,) + radius_graph(pos, cutoff)


def radius_graph(pos: np.ndarray, cutoff: float):
    """``(senders, receivers)``: every ordered pair of distinct points closer than ``cutoff``."""
    distance = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    senders, receivers = np.nonzero((distance < cutoff) & (distance > 0))
    return senders.astype(np.int32), receivers.astype(np.int32)


def moved_frames(count: int, num_nodes: int, cutoff: float, box: float, seed: int, step: float = 0.2):
    """``count`` frames of one system: the same atoms (same order), each frame's positions a random step from the
    previous one's, so that the neighbour lists differ slightly.  ``[(pos, senders, receivers), ...]``."""
    pos, senders, receivers = spatial_graph(num_nodes, cutoff, box, seed)
    frames, rng = [(pos, senders, receivers)], np.random.default_rng(seed + 100)
    for _ in range(count - 1):
        pos = pos + rng.normal(scale=step, size=pos.shape)
        frames.append((pos,) + radius_graph(pos, cutoff))
    return frames


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# --- the checks run with 8 fake devices (script mode) ------------------------------------------------------------


def _ops_checks() -> dict:
    """Item 1: message passing (edge shards + psum), symmetric contraction and tensor product inside shard_map with
    check_vma=True; batch-sharded NamedSharding inputs under jit give batch-sharded outputs and no all-gather."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import e3nn_fast as e3nn
    from e3nn_fast.sharding import shard_map

    results = {}
    mesh = Mesh(np.array(jax.devices()), ("d",))
    rng = np.random.default_rng(0)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a))) + 0.1 * jnp.sum(f(*a) ** 2)  # not small: relative errors

    # message passing over edge shards, psum'd: the scan-carry bug of the jnp executor
    n, e = 13, 64
    irreps_out = e3nn.message_passing_irreps_out(IRREPS_IN, IRREPS_SH)
    x, sh, w = f32(n, e3nn.Irreps(IRREPS_IN).dim), f32(e, e3nn.Irreps(IRREPS_SH).dim), f32(e, irreps_out.num_irreps)
    s, r = jnp.asarray(rng.integers(0, n, e), jnp.int32), jnp.asarray(rng.integers(0, n, e), jnp.int32)

    def mp(x, sh, w, s, r):
        return e3nn.message_passing(e3nn.IrrepsArray(IRREPS_IN, x), e3nn.IrrepsArray(IRREPS_SH, sh), w, s, r, n,
                                    edge_chunk_size=3).array

    for backend in ("jnp", "reference"):
        with e3nn.backend(backend):
            sharded = shard_map(lambda *a: jax.lax.psum(mp(*a), "d"), mesh=mesh,
                                in_specs=(P(), P("d"), P("d"), P("d"), P("d")), out_specs=P())
            both = jax.jit(lambda x, sh, w: [(f(x, sh, w, s, r), jax.value_and_grad(loss(f), argnums=(0, 1, 2))(
                x, sh, w, s, r)) for f in (mp, sharded)])
            (one, (v1, g1)), (many, (v2, g2)) = both(x, sh, w)
            results[f"mp_shard_map_{backend}"] = [rel(many, one), rel(v2, v1)] + [rel(b, a) for a, b in zip(g1, g2)]

    # symmetric contraction (the multilinear primitive) and tensor product, node-sharded inside shard_map
    channels, species = 4, 3
    weights_shapes = e3nn.symmetric_contraction_weight_shapes("0e+1o+2e", channels, species, (1, 2, 3), "0e+1o")
    xs, sp = f32(16, channels, 9), jnp.asarray(rng.integers(0, species, 16), jnp.int32)
    ws = {k: f32(*v) for k, v in weights_shapes.items()}

    def sc(x, sp, ws):
        return e3nn.symmetric_contraction(e3nn.IrrepsArray("0e+1o+2e", x), sp, ws, (1, 2, 3), "0e+1o").array

    def tp(a, b):
        return e3nn.tensor_product(e3nn.IrrepsArray(IRREPS_IN, a), e3nn.IrrepsArray(IRREPS_SH, b)).array

    sc_sharded = shard_map(sc, mesh=mesh, in_specs=(P("d"), P("d"), P()), out_specs=P("d"))
    tp_sharded = shard_map(tp, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P("d"))
    a, b = f32(16, 8), f32(16, 9)

    @jax.jit
    def per_shard_ops(xs, ws, a, b):
        out = []
        for f in (sc, sc_sharded):
            out.append(jax.value_and_grad(lambda xs, ws: jnp.sum(jnp.sin(f(xs, sp, ws))), argnums=(0, 1))(xs, ws))
        for f in (tp, tp_sharded):
            out.append(jax.value_and_grad(loss(f), argnums=(0, 1))(a, b))
        return out

    (v1, g1), (v2, g2), (v3, g3), (v4, g4) = per_shard_ops(xs, ws, a, b)
    leaves = lambda t: jax.tree_util.tree_leaves(t)
    results["sc_shard_map"] = [rel(v2, v1)] + [rel(q, p) for p, q in zip(leaves(g1), leaves(g2))]
    results["tp_shard_map"] = [rel(v4, v3)] + [rel(q, p) for p, q in zip(leaves(g3), leaves(g4))]

    # NamedSharding on the batch axis under jit: batch-sharded outputs, no all-gather in the compiled program
    batch = NamedSharding(mesh, P("d"))
    put = lambda v: jax.device_put(v, batch)
    graphs, nodes, edges = 8, 6, 20
    gx, gsh, gw = f32(graphs, nodes, 8), f32(graphs, edges, 9), f32(graphs, edges, irreps_out.num_irreps)
    gs = jnp.asarray(rng.integers(0, nodes, (graphs, edges)), jnp.int32)
    gr = jnp.asarray(rng.integers(0, nodes, (graphs, edges)), jnp.int32)
    mp_batch = jax.vmap(lambda x, sh, w, s, r: e3nn.message_passing(
        e3nn.IrrepsArray(IRREPS_IN, x), e3nn.IrrepsArray(IRREPS_SH, sh), w, s, r, nodes).array)
    cases = {
        "tp": (tp, (put(a), put(b)), (0, 1)),
        "sc": (sc, (put(xs), put(sp), ws), (0,)),
        "mp": (mp_batch, (put(gx), put(gsh), put(gw), put(gs), put(gr)), (0, 1, 2)),
    }
    for name, (f, args, argnums) in cases.items():
        def step(*args, f=f, argnums=argnums):
            return f(*args), jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=argnums)(*args)

        compiled = jax.jit(step).lower(*args).compile()
        text = compiled.as_text()
        out, grads = compiled(*args)
        batch_outputs = [out] + list(grads)
        results[f"named_{name}"] = {
            "all_gather": "all-gather" in text,
            "all_to_all": "all-to-all" in text,
            "batch_sharded": all(tuple(v.sharding.spec)[:1] == ("d",) for v in batch_outputs),
            "fully_sharded": all(len(v.sharding.device_set) == FAKE_DEVICES and not v.sharding.is_fully_replicated
                                 for v in batch_outputs),
        }

    # the same forwards on a mesh with explicit axes (jax.make_mesh's default): the species gather says its sharding
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is not None:
        explicit = jax.make_mesh((FAKE_DEVICES,), ("d",), axis_types=(axis_type.Explicit,))
        put = lambda v: jax.device_put(v, NamedSharding(explicit, P("d")))
        forwards = {"tp": (tp, (put(a), put(b))), "sc": (sc, (put(xs), put(sp), ws)),
                    "mp": (mp_batch, (put(gx), put(gsh), put(gw), put(gs), put(gr)))}
        argnums = {"tp": (0, 1), "sc": (0,), "mp": (0, 1, 2)}
        for name, (f, args) in forwards.items():
            compiled = jax.jit(f).lower(*args).compile()
            out = compiled(*args)
            results[f"explicit_{name}"] = {"all_gather": "all-gather" in compiled.as_text(),
                                           "batch_sharded": tuple(out.sharding.spec)[:1] == ("d",)}
            # and the gradients: the primitives' outputs keep their operands' explicit sharding
            grad = jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) ** 2), argnums=argnums[name])).lower(*args).compile()
            grads = grad(*args)
            results[f"explicit_grad_{name}"] = {
                "all_gather": "all-gather" in grad.as_text(),
                "batch_sharded": all(tuple(g.sharding.spec)[:1] == ("d",) for g in grads)}
    return results


def _graph_checks() -> dict:
    """Item 2: graph-parallel message passing over 8 shards, both modes, against one device; forces included."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    import e3nn_fast as e3nn
    from e3nn_fast import sharding

    results = {}
    mesh = Mesh(np.array(jax.devices()), ("g",))
    pos_np, senders, receivers = spatial_graph(num_nodes=61, cutoff=1.8, box=6.0, seed=1)
    num_nodes, num_edges = len(pos_np), len(senders)
    partition = sharding.partition_graph(senders, receivers, num_nodes, FAKE_DEVICES)
    results["sizes"] = dict(nodes_per_shard=partition.nodes_per_shard, edges_per_shard=partition.edges_per_shard,
                            halo_offsets=list(partition.halo_offsets), halo_sizes=list(partition.halo_sizes),
                            num_edges=num_edges)
    rng = np.random.default_rng(2)
    irreps_out = e3nn.message_passing_irreps_out(IRREPS_IN, IRREPS_SH)
    x = jnp.asarray(rng.standard_normal((num_nodes, e3nn.Irreps(IRREPS_IN).dim)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((num_edges, irreps_out.num_irreps)), jnp.float32)
    pos = jnp.asarray(pos_np, jnp.float32)

    def energy(out, x):  # a scalar read of the output that depends on every component
        return jnp.sum(jnp.sin(out)) + 0.1 * jnp.sum(out * out)

    def single(x, pos, w):
        vectors = pos[senders] - pos[receivers]
        sh = e3nn.spherical_harmonics(IRREPS_SH, vectors, True)
        wr = w * jnp.sum(vectors ** 2, axis=-1, keepdims=True)  # radial dependence: forces through the weights too
        out = e3nn.message_passing(e3nn.IrrepsArray(IRREPS_IN, x), sh, wr, senders, receivers, num_nodes)
        return out.array

    def global_api(mode):  # edge vectors computed on the whole graph, then laid out: graph_message_passing
        def f(x, pos, w):
            vectors = pos[senders] - pos[receivers]
            sh = e3nn.spherical_harmonics(IRREPS_SH, vectors, True)
            wr = w * jnp.sum(vectors ** 2, axis=-1, keepdims=True)
            out = sharding.graph_message_passing(
                partition.pad_nodes(e3nn.IrrepsArray(IRREPS_IN, x)), partition.shard_edges(sh),
                partition.shard_edges(wr), partition, mesh, "g", mode=mode)
            return partition.unpad_nodes(out).array
        return f

    def local_api(mode):  # everything per shard in the user's shard_map: edge vectors from exchanged positions
        def per_shard(x, pos, w, part):
            vectors = sharding.gather_senders(pos, part, "g", mode) - sharding.gather_receivers(pos, part)
            sh = e3nn.spherical_harmonics(IRREPS_SH, vectors, True)
            wr = w * jnp.sum(vectors ** 2, axis=-1, keepdims=True)
            out = sharding.local_message_passing(e3nn.IrrepsArray(IRREPS_IN, x), sh, wr, part, "g", mode=mode)
            return out.array

        run = sharding.shard_map(per_shard, mesh=mesh, in_specs=P("g"), out_specs=P("g"))  # check_vma on

        def f(x, pos, w):
            out = run(partition.pad_nodes(x), partition.pad_nodes(pos), partition.shard_edges(w), partition)
            return partition.unpad_nodes(out)
        return f

    variants = {"single": single}
    for mode in sharding.MODES:
        variants[f"global_{mode}"] = global_api(mode)
        variants[f"local_{mode}"] = local_api(mode)

    @jax.jit
    def everything(x, pos, w):
        return {name: (f(x, pos, w), jax.grad(lambda *a: energy(f(*a), a[0]), argnums=(0, 1, 2))(x, pos, w))
                for name, f in variants.items()}

    values = everything(x, pos, w)
    out1, grads1 = values.pop("single")
    for name, (out, grads) in values.items():
        results[name] = {"out": rel(out, out1), "grad_x": rel(grads[0], grads1[0]),
                         "forces": rel(grads[1], grads1[1]), "grad_w": rel(grads[2], grads1[2])}
    results["deterministic"] = _deterministic_checks(mesh, partition, x, pos, w, senders, receivers)
    return results


def _deterministic_checks(mesh, partition, x, pos, w, senders, receivers) -> dict:
    """Forward of ``graph_message_passing(..., deterministic=True)`` against one device's ``message_passing`` with
    the jnp executor and the same edge chunk size: ``{"<mode>_<chunk>": bitwise equal}``.  Chunk 8 is below every
    shard's edge count; the default chunk (64) is above it, so the shards' edges are padded up to one chunk."""
    import jax

    import e3nn_fast as e3nn
    from e3nn_fast import sharding

    num_nodes = x.shape[0]
    sh = e3nn.spherical_harmonics(IRREPS_SH, pos[senders] - pos[receivers], True)
    nodes = e3nn.IrrepsArray(IRREPS_IN, x)
    checks = {"edges_per_shard": partition.edges_per_shard, "default_chunk": sharding.DETERMINISTIC_EDGE_CHUNK}
    for chunk in (8, None):
        with e3nn.backend("jnp"):
            one = jax.jit(lambda: e3nn.message_passing(nodes, sh, w, senders, receivers, num_nodes,
                                                       edge_chunk_size=chunk or sharding.DETERMINISTIC_EDGE_CHUNK))()
        for mode in sharding.MODES:
            many = jax.jit(lambda: partition.unpad_nodes(sharding.graph_message_passing(
                partition.pad_nodes(nodes), partition.shard_edges(sh), partition.shard_edges(w), partition, mesh,
                "g", mode=mode, edge_chunk_size=chunk, deterministic=True)))()
            checks[f"{mode}_{chunk or 'default'}"] = bool(np.array_equal(np.asarray(many.array),
                                                                         np.asarray(one.array)))
    return checks


def _frames_checks() -> dict:
    """Item 1 follow-up: frames of one system (different neighbour lists) partitioned with common capacities share
    one compilation of a jitted energy-and-forces step, and each frame's results equal one device's."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    import e3nn_fast as e3nn
    from e3nn_fast import sharding

    mesh = Mesh(np.array(jax.devices()), ("g",))
    num_nodes = 61
    frames = moved_frames(3, num_nodes, cutoff=1.8, box=6.0, seed=7)
    natural = [sharding.partition_graph(s, r, num_nodes, FAKE_DEVICES) for _, s, r in frames]
    capacity = sharding.common_capacity(natural, headroom=0.1)
    parts = [sharding.partition_graph(s, r, num_nodes, FAKE_DEVICES, **capacity) for _, s, r in frames]
    treedef = lambda t: jax.tree_util.tree_structure(t)
    results = {
        "num_edges": [len(s) for _, s, _ in frames],
        "natural_treedefs_equal": all(treedef(p) == treedef(natural[0]) for p in natural),
        "capacity_treedefs_equal": all(treedef(p) == treedef(parts[0]) for p in parts),
        "edge_counts": [int(np.sum(p.edge_counts)) for p in parts],
    }
    rng = np.random.default_rng(8)
    irreps_out = e3nn.message_passing_irreps_out(IRREPS_IN, IRREPS_SH)
    x = jnp.asarray(rng.standard_normal((num_nodes, e3nn.Irreps(IRREPS_IN).dim)), jnp.float32)
    c = jnp.asarray(rng.standard_normal(irreps_out.num_irreps), jnp.float32)  # per-irrep radial weights

    def energy(out):
        return jnp.sum(jnp.sin(out)) + 0.1 * jnp.sum(out * out)

    def per_shard(x, pos, part):
        vectors = sharding.gather_senders(pos, part, "g") - sharding.gather_receivers(pos, part)
        sh = e3nn.spherical_harmonics(IRREPS_SH, vectors, True)
        out = sharding.local_message_passing(e3nn.IrrepsArray(IRREPS_IN, x), sh,
                                             c * jnp.sum(vectors**2, axis=-1, keepdims=True), part, "g")
        node_mask = jnp.arange(part.nodes_per_shard) + jax.lax.axis_index("g") * part.nodes_per_shard < num_nodes
        return jax.lax.psum(energy(jnp.where(node_mask[:, None], out.array, 0.0)), "g")

    traces = []

    @jax.jit
    def sharded_step(x, pos, part):  # the partition is an argument: one compilation for every frame that fits
        traces.append(1)
        run = sharding.shard_map(per_shard, mesh=mesh, in_specs=P("g"), out_specs=P())
        return jax.value_and_grad(run, argnums=1)(x, pos, part)

    def one_device(x, pos, senders, receivers):
        vectors = pos[senders] - pos[receivers]
        sh = e3nn.spherical_harmonics(IRREPS_SH, vectors, True)
        out = e3nn.message_passing(e3nn.IrrepsArray(IRREPS_IN, x), sh,
                                   c * jnp.sum(vectors**2, axis=-1, keepdims=True), senders, receivers, num_nodes)
        return energy(out.array)

    results["errors"] = []
    for (pos_np, senders, receivers), part in zip(frames, parts):
        pos = jnp.asarray(pos_np, jnp.float32)
        e, grad = sharded_step(part.pad_nodes(x), part.pad_nodes(pos), part)
        e1, grad1 = jax.jit(jax.value_and_grad(one_device, argnums=1))(x, pos, senders, receivers)
        results["errors"].append({"energy": rel(e, e1), "forces": rel(part.unpad_nodes(grad), grad1)})
    results["traces"] = len(traces)
    results["cache_size"] = sharded_step._cache_size() if hasattr(sharded_step, "_cache_size") else None
    return results


def _pallas_checks() -> dict:
    """The Pallas kernels (interpret mode) per shard: fused message passing over edge shards + psum, and the
    symmetric contraction over node shards, inside shard_map with check_vma=False (JAX's Pallas interpreter does not
    type-check varying axes yet); forward and gradients against one device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    import e3nn_fast as e3nn
    from e3nn_fast.sharding import shard_map

    results = {}
    mesh = Mesh(np.array(jax.devices()), ("d",))
    rng = np.random.default_rng(0)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    n, e = 9, 32
    irreps_out = e3nn.message_passing_irreps_out(IRREPS_IN, "0e+1o")
    x, sh, w = f32(n, 8), f32(e, 4), f32(e, irreps_out.num_irreps)
    s, r = jnp.asarray(rng.integers(0, n, e), jnp.int32), jnp.asarray(rng.integers(0, n, e), jnp.int32)

    def mp(x, sh, w, s, r):
        return e3nn.message_passing(e3nn.IrrepsArray(IRREPS_IN, x), e3nn.IrrepsArray("0e+1o", sh), w, s, r, n).array

    weights_shapes = e3nn.symmetric_contraction_weight_shapes("0e+1o", 2, 2, (1, 2), "0e+1o")
    xs, sp = f32(16, 2, 4), jnp.asarray(rng.integers(0, 2, 16), jnp.int32)
    ws = {k: f32(*v) for k, v in weights_shapes.items()}

    def sc(x, sp, ws):
        return e3nn.symmetric_contraction(e3nn.IrrepsArray("0e+1o", x), sp, ws, (1, 2), "0e+1o").array

    with e3nn.backend("pallas-interpret"):
        mp_sharded = shard_map(lambda *a: jax.lax.psum(mp(*a), "d"), mesh=mesh, check_vma=False,
                               in_specs=(P(), P("d"), P("d"), P("d"), P("d")), out_specs=P())
        sc_sharded = shard_map(sc, mesh=mesh, in_specs=(P("d"), P("d"), P()), out_specs=P("d"), check_vma=False)

        @jax.jit
        def run(x, sh, w, xs, ws):
            mp_loss = lambda f: lambda x, sh, w: jnp.sum(f(x, sh, w, s, r) ** 2)
            sc_loss = lambda f: lambda xs, ws: jnp.sum(f(xs, sp, ws) ** 2)
            return ([jax.value_and_grad(mp_loss(f), argnums=(0, 1, 2))(x, sh, w) for f in (mp, mp_sharded)],
                    [jax.value_and_grad(sc_loss(f), argnums=(0, 1))(xs, ws) for f in (sc, sc_sharded)])

        (mp1, mp2), (sc1, sc2) = run(x, sh, w, xs, ws)
    for name, one, many in (("mp", mp1, mp2), ("sc", sc1, sc2)):
        results[name] = [rel(q, p) for p, q in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(many))]
    return results


GROUPS = {"ops": _ops_checks, "graph": _graph_checks, "frames": _frames_checks, "pallas": _pallas_checks}


def _run_group(group: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FAKE_DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("E3NN_FAST_BACKEND", None)
    proc = subprocess.run([sys.executable, __file__, group], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sharded checks {group!r} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ops_on_sharded_inputs():
    results = _run_group("ops")
    for backend in ("jnp", "reference"):  # forward, loss, d/dx, d/dsh, d/dw
        errors = results[f"mp_shard_map_{backend}"]
        assert max(errors[:2]) < 1e-6 and max(errors[2:]) < 1e-5, (backend, errors)
    for name in ("sc_shard_map", "tp_shard_map"):
        assert results[name][0] < 1e-6 and max(results[name][1:]) < 1e-5, (name, results[name])
    for name in ("named_tp", "named_sc", "named_mp"):
        case = results[name]
        assert not case["all_gather"] and not case["all_to_all"], (name, case)
        assert case["fully_sharded"], (name, case)
        assert case["batch_sharded"], (name, case)
    for name in ("explicit_tp", "explicit_sc", "explicit_mp", "explicit_grad_tp", "explicit_grad_sc", "explicit_grad_mp"):
        if name in results:  # JAX with explicit mesh axes
            assert not results[name]["all_gather"] and results[name]["batch_sharded"], (name, results[name])


def test_graph_parallel_matches_one_device():
    results = _run_group("graph")
    sizes = results.pop("sizes")
    deterministic = results.pop("deterministic")
    # deterministic=True: bitwise equal to one device's jnp executor with the same chunk size, below and above the
    # shards' edge counts (the latter pads each shard's edges up to one chunk)
    assert deterministic.pop("edges_per_shard") < deterministic.pop("default_chunk")
    assert set(deterministic) == {f"{mode}_{chunk}" for mode in ("halo", "all_gather") for chunk in (8, "default")}
    assert all(deterministic.values()), deterministic
    # the nodes are sorted along x: a shard reads rows of a few nearby shards only
    assert sum(sizes["halo_sizes"]) < FAKE_DEVICES * sizes["nodes_per_shard"], sizes
    assert set(results) == {f"{api}_{mode}" for api in ("global", "local") for mode in ("halo", "all_gather")}
    for name, errors in results.items():
        assert errors["out"] < 1e-6, (name, errors)
        assert max(errors["grad_x"], errors["forces"], errors["grad_w"]) < 1e-5, (name, errors)


def test_partition_reused_across_frames_compiles_once():
    results = _run_group("frames")
    assert len(set(results["num_edges"])) == 3, results  # the frames' neighbour lists really differ
    assert results["edge_counts"] == results["num_edges"]
    assert results["capacity_treedefs_equal"], results
    assert results["traces"] == 1, results  # one trace, hence one compilation, for three frames
    assert results["cache_size"] in (None, 1), results
    for errors in results["errors"]:
        assert errors["energy"] < 1e-6 and errors["forces"] < 1e-5, results


@pytest.mark.slow
def test_pallas_kernels_per_shard():
    results = _run_group("pallas")
    for name, errors in results.items():  # loss, then the gradients
        assert errors[0] < 1e-6 and max(errors[1:]) < 1e-5, (name, errors)


# --- in process: partitioning, layout, errors, a one-device mesh ---------------------------------------------------


def test_partition_contract():
    from e3nn_fast import sharding

    _, senders, receivers = spatial_graph(num_nodes=37, cutoff=2.0, box=6.0, seed=3)
    num_nodes, shards = 37, 5
    part = sharding.partition_graph(senders, receivers, num_nodes, shards)
    np_, ep, h = part.nodes_per_shard, part.edges_per_shard, part.halo_rows_per_shard
    assert np_ == 8 and part.padded_nodes == 40 and part.padded_edges == shards * ep
    for name in ("edge_ids", "senders", "halo_senders", "receivers"):
        assert getattr(part, name).shape == (shards * ep,) and getattr(part, name).dtype == np.int32
    assert part.halo_rows.shape == (shards * h,)
    ids = part.edge_ids.reshape(shards, ep)
    real = ids >= 0
    assert sorted(ids[real].tolist()) == list(range(len(senders)))  # every edge once
    for p in range(shards):
        kept = ids[p][real[p]]
        assert np.all(np.diff(kept) > 0)  # original order kept within a shard
        assert np.all(receivers[kept] // np_ == p)  # owned by receiver
        assert np.all(part.receivers.reshape(shards, ep)[p][real[p]] == receivers[kept] - p * np_)
        assert np.all(part.receivers.reshape(shards, ep)[p][~real[p]] == np_)  # padding: dropped
        assert np.all(part.senders.reshape(shards, ep)[p][real[p]] == senders[kept])
        # the halo table [own rows, rows received per offset] holds each edge's sender
        table = list(range(p * np_, (p + 1) * np_))
        rows = part.halo_rows.reshape(shards, h)
        start = 0
        for offset, size in zip(part.halo_offsets, part.halo_sizes):
            q = (p - offset) % shards
            table += (rows[q, start : start + size] + q * np_).tolist()
            start += size
        table = np.asarray(table)
        assert np.all(table[part.halo_senders.reshape(shards, ep)[p][real[p]]] == senders[kept])
    assert part.node_mask().sum() == num_nodes
    # static-shape options
    bigger = sharding.partition_graph(senders, receivers, num_nodes, shards, nodes_per_shard=10,
                                      edges_per_shard=len(senders), halo_multiple=4)
    assert bigger.padded_nodes == 50 and bigger.edges_per_shard == len(senders)
    assert all(size % 4 == 0 for size in bigger.halo_sizes)


def test_capacities_fix_the_shapes():
    """Frames of one system partitioned with common capacities: same shapes and tree structure, per-frame edge
    counts in the leaves; a frame that does not fit names the size it needs."""
    import jax
    import jax.numpy as jnp

    from e3nn_fast import sharding

    frames = moved_frames(3, 40, cutoff=2.0, box=6.0, seed=9)
    shards = 4
    natural = [sharding.partition_graph(s, r, 40, shards) for _, s, r in frames[:2]]
    capacity = sharding.common_capacity(natural, headroom=0.5, edge_multiple=8)
    assert set(capacity) == {"nodes_per_shard", "edges_per_shard", "halo_offsets", "halo_capacity"}
    assert capacity["edges_per_shard"] % 8 == 0
    assert capacity["edges_per_shard"] >= 1.5 * max(p.edges_per_shard for p in natural)
    assert set(capacity["halo_offsets"]) == set().union(*(p.halo_offsets for p in natural))
    parts = [sharding.partition_graph(s, r, 40, shards, **capacity) for _, s, r in frames]
    structure = jax.tree_util.tree_structure(parts[0])
    assert all(jax.tree_util.tree_structure(p) == structure for p in parts)
    for (_, s, _), part in zip(frames, parts):
        assert part.num_edges == len(s) and part.edge_counts.shape == (shards,)
        assert part.halo_offsets == capacity["halo_offsets"] and part.halo_sizes == capacity["halo_capacity"]
        edges = np.arange(len(s) * 3.0).reshape(-1, 3) + 1.0  # round trip of an edge array
        np.testing.assert_array_equal(part.unshard_edges(part.shard_edges(edges)), edges)
    assert len({p.num_edges for p in parts}) == 3  # the frames differ

    # on a traced partition the edge count is data: unshard_edges needs a static row count
    (_, s, _), part = frames[1], parts[1]
    edges = jnp.arange(len(s) * 2.0).reshape(-1, 2) + 1.0
    laid = part.shard_edges(edges)
    back = jax.jit(lambda part, laid: part.unshard_edges(laid, num_edges=len(s) + 5))(part, laid)
    np.testing.assert_array_equal(back[: len(s)], edges)
    np.testing.assert_array_equal(back[len(s):], 0.0)
    with pytest.raises(TypeError, match="pass num_edges="):
        jax.jit(lambda part, laid: part.unshard_edges(laid))(part, laid)
    with pytest.raises(TypeError, match="per-frame array leaf"):
        jax.jit(lambda part: part.num_edges)(part)

    # a frame that does not fit: each error names what it needs
    _, s, r = frames[0]
    busiest = natural[0].edges_per_shard
    with pytest.raises(ValueError, match=rf"edges_per_shard >= {busiest}"):
        sharding.partition_graph(s, r, 40, shards, **dict(capacity, edges_per_shard=busiest - 1))
    offset, size = natural[0].halo_offsets[0], natural[0].halo_sizes[0]
    others = tuple(d for d in capacity["halo_offsets"] if d != offset)
    with pytest.raises(ValueError, match=re.escape(f"halo_offsets={others} has no {offset}; add it")):
        sharding.partition_graph(s, r, 40, shards, halo_offsets=others)
    small = tuple(size - 1 if d == offset else c for d, c in zip(capacity["halo_offsets"], capacity["halo_capacity"]))
    with pytest.raises(ValueError, match=rf"halo_capacity={size - 1} for shard distance {offset} is too small.*"
                                         rf"halo_capacity >= {size}"):
        sharding.partition_graph(s, r, 40, shards, **dict(capacity, halo_capacity=small))


def test_layout_round_trips():
    import jax.numpy as jnp

    import e3nn_fast as e3nn
    from e3nn_fast import sharding

    _, senders, receivers = spatial_graph(num_nodes=20, cutoff=2.5, box=5.0, seed=4)
    part = sharding.partition_graph(senders, receivers, 20, 3)
    nodes = e3nn.IrrepsArray("0e+1o", jnp.arange(80.0).reshape(20, 4))
    padded = part.pad_nodes(nodes)
    assert isinstance(padded, e3nn.IrrepsArray) and padded.shape == (part.padded_nodes, 4)
    np.testing.assert_array_equal(part.unpad_nodes(padded).array, nodes.array)
    np.testing.assert_array_equal(np.asarray(padded.array)[20:], 0.0)
    edges = jnp.arange(len(senders) * 2.0).reshape(-1, 2) + 1.0
    laid = part.shard_edges(edges)
    assert laid.shape == (part.padded_edges, 2)
    np.testing.assert_array_equal(np.asarray(laid)[~np.asarray(part.edge_mask())], 0.0)
    np.testing.assert_array_equal(part.unshard_edges(laid), edges)


def test_one_device_mesh_in_process():
    """A one-shard partition runs graph_message_passing on the test process's single device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    import e3nn_fast as e3nn
    from e3nn_fast import sharding

    _, senders, receivers = spatial_graph(num_nodes=15, cutoff=2.5, box=5.0, seed=5)
    part = sharding.partition_graph(senders, receivers, 15, 1)
    assert part.halo_offsets == () and part.halo_rows.shape == (0,)
    mesh = Mesh(np.array(jax.devices()[:1]), ("g",))
    rng = np.random.default_rng(6)
    x = e3nn.IrrepsArray(IRREPS_IN, jnp.asarray(rng.standard_normal((15, 8)), jnp.float32))
    sh = e3nn.IrrepsArray(IRREPS_SH, jnp.asarray(rng.standard_normal((len(senders), 9)), jnp.float32))
    expected = e3nn.message_passing(x, sh, None, senders, receivers, 15)
    for mode in sharding.MODES:
        out = jax.jit(lambda x, sh: sharding.graph_message_passing(
            part.pad_nodes(x), part.shard_edges(sh), None, part, mesh, "g", mode=mode))(x, sh)
        assert out.irreps == expected.irreps
        assert rel(part.unpad_nodes(out).array, expected.array) < 1e-6


def test_bad_input():
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    import e3nn_fast as e3nn
    from e3nn_fast import sharding

    s, r = np.array([0, 1, 2]), np.array([1, 2, 0])
    with pytest.raises(ValueError, match=r"receivers must lie in \[0, num_nodes\).*receivers\[1\] = 5"):
        sharding.partition_graph(s, np.array([1, 5, 0]), 3, 2)
    with pytest.raises(ValueError, match="senders must lie"):
        sharding.partition_graph(np.array([0, -1, 2]), r, 3, 2)
    with pytest.raises(TypeError, match="integer array"):
        sharding.partition_graph(s.astype(float), r, 3, 2)
    with pytest.raises(ValueError, match="same shape"):
        sharding.partition_graph(s, r[:2], 3, 2)
    with pytest.raises(ValueError, match="num_shards must be >= 1"):
        sharding.partition_graph(s, r, 3, 0)
    with pytest.raises(TypeError, match="num_shards must be a static Python int"):
        sharding.partition_graph(s, r, 3, 2.5)
    with pytest.raises(ValueError, match=r"nodes_per_shard=1 is too small.*at least .* = 2"):
        sharding.partition_graph(s, r, 3, 2, nodes_per_shard=1)
    with pytest.raises(ValueError, match=r"edges_per_shard=1 is too small.*edges_per_shard >= 2"):
        sharding.partition_graph(s, r, 3, 2, edges_per_shard=1)
    with pytest.raises(TypeError, match="traced value"):
        jax.jit(lambda s: sharding.partition_graph(s, r, 3, 2))(s)
    with pytest.raises(ValueError, match=r"halo_offsets must lie in \[1, num_shards\)"):
        sharding.partition_graph(s, r, 3, 2, halo_offsets=(2,))
    with pytest.raises(ValueError, match="halo_offsets must be distinct"):
        sharding.partition_graph(s, r, 3, 3, halo_offsets=(1, 1))
    with pytest.raises(TypeError, match="halo_offsets must be a sequence"):
        sharding.partition_graph(s, r, 3, 2, halo_offsets=1)
    with pytest.raises(ValueError, match="one capacity per offset"):
        sharding.partition_graph(s, r, 3, 3, halo_offsets=(1, 2), halo_capacity=(4,))
    with pytest.raises(TypeError, match="halo_capacity must be an int or a sequence"):
        sharding.partition_graph(s, r, 3, 2, halo_capacity=2.5)
    with pytest.raises(TypeError, match="one or more GraphPartitions"):
        sharding.common_capacity([])
    with pytest.raises(ValueError, match="different num_shards"):
        sharding.common_capacity([sharding.partition_graph(s, r, 3, 2), sharding.partition_graph(s, r, 3, 3)])
    with pytest.raises(ValueError, match="headroom must be a number >= 0"):
        sharding.common_capacity(sharding.partition_graph(s, r, 3, 2), headroom=-0.1)

    part = sharding.partition_graph(s, r, 3, 1)
    x = e3nn.IrrepsArray(IRREPS_IN, jnp.zeros((part.padded_nodes, 8)))
    sh = e3nn.IrrepsArray(IRREPS_SH, jnp.zeros((part.padded_edges, 9)))
    mesh = Mesh(np.array(jax.devices()[:1]), ("g",))
    with pytest.raises(ValueError, match="mode='ring' is not supported"):
        sharding.graph_message_passing(x, sh, None, part, mesh, "g", mode="ring")
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        sharding.graph_message_passing(x, sh, None, part, mesh, "nodes")
    with pytest.raises(ValueError, match=r"has 1 device\(s\) but the partition has 2 shards"):
        sharding.graph_message_passing(x, sh, None, sharding.partition_graph(s, r, 3, 2), mesh, "g")
    with pytest.raises(ValueError, match="pad it with partition.pad_nodes"):
        sharding.graph_message_passing(x[:2], sh, None, part, mesh, "g")
    with pytest.raises(ValueError, match="reorder it with partition.shard_edges"):
        sharding.graph_message_passing(x, sh[:1], None, part, mesh, "g")
    with pytest.raises(ValueError, match="edge_weights must have shape"):
        sharding.graph_message_passing(x, sh, jnp.zeros((1, 4)), part, mesh, "g")
    with pytest.raises(TypeError, match="must be a GraphPartition"):
        sharding.graph_message_passing(x, sh, None, {"senders": s}, mesh, "g")
    with pytest.raises(TypeError, match="deterministic must be True or False"):
        sharding.graph_message_passing(x, sh, None, part, mesh, "g", deterministic="yes")
    with pytest.raises(ValueError, match="inside shard_map"):  # a global partition where one shard's is expected
        sharding.local_message_passing(x, sh, None, sharding.partition_graph(s, r, 3, 3), "g")
    with pytest.raises(ValueError, match="num_nodes = 3 rows"):
        part.pad_nodes(jnp.zeros((4, 2)))


if __name__ == "__main__":  # script mode: one group of multi-device checks, results as one JSON line
    print(json.dumps(GROUPS[sys.argv[1]]()))
