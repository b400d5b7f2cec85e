"""Per-device memory of graph-parallel message passing (``e3nn_fast.sharding``) on 1, 2, 4 and 8 shards.

MACE-large's convolution (``128x0e+128x1o+128x2e (x) 0e+1o+2e+3o -> 128x(0e+1o+2e+3o)``, per-edge weights) on one
large graph: random atoms in a box at a density giving ~``--neighbours`` neighbours within the cutoff, nodes sorted
along x (so that a shard's neighbours are on nearby shards).  For every shard count and mode (``halo``,
``all_gather``) the forward and the forward + backward (gradients w.r.t. node features, harmonics and weights) are
compiled, never run, and XLA's ``memory_analysis()`` of the compiled per-device program is reported: arguments,
outputs and temporaries of one device, in MiB.  One device without sharding (plain ``message_passing``) is the
baseline.  Times on fake CPU devices mean nothing, so none are taken.

    python bench/sharding_memory.py                      # 12,000 atoms, ~26 neighbours (~310k edges)
    python bench/sharding_memory.py --nodes 2000 --shards 1 2 --passes fwd   # quick look

Fake devices: when ``XLA_FLAGS`` does not already ask for them, the script sets
``--xla_force_host_platform_device_count`` to the largest shard count before JAX starts (``--platform cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=12_000, help="atoms (default 12,000)")
    parser.add_argument("--neighbours", type=float, default=26.0, help="mean neighbours per atom (default 26)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--modes", nargs="+", default=["halo", "all_gather"], choices=["halo", "all_gather"])
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--irreps-in", default="128x0e+128x1o+128x2e")
    parser.add_argument("--irreps-sh", default="0e+1o+2e+3o")
    parser.add_argument("--filter", default="0e+1o+2e+3o", help="output irreps kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS to use (default cpu: fake devices)")
    return parser.parse_args(argv)


def radius_graph_sorted(num_nodes: int, neighbours: float, seed: int):
    """Random atoms in a cube, sorted along x, and every ordered pair closer than the cutoff that gives ~neighbours
    neighbours per atom (chunked NumPy, no extra dependency)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    box = 10.0 * (num_nodes / 1000.0) ** (1.0 / 3.0)
    pos = rng.uniform(0.0, box, size=(num_nodes, 3))
    pos = pos[np.argsort(pos[:, 0])]
    cutoff = (3.0 * neighbours * box**3 / (4.0 * np.pi * num_nodes)) ** (1.0 / 3.0)
    senders, receivers = [], []
    chunk = 1024
    for start in range(0, num_nodes, chunk):
        block = pos[start : start + chunk]
        # atoms are sorted along x: only a window of them can be within the cutoff
        lo = np.searchsorted(pos[:, 0], block[0, 0] - cutoff)
        hi = np.searchsorted(pos[:, 0], block[-1, 0] + cutoff, side="right")
        d2 = ((block[:, None, :] - pos[None, lo:hi, :]) ** 2).sum(-1)
        r, s = np.nonzero((d2 < cutoff**2) & (d2 > 0))
        receivers.append(r + start)
        senders.append(s + lo)
    return pos, np.concatenate(senders).astype(np.int32), np.concatenate(receivers).astype(np.int32), cutoff


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", args.platform)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        flag = f"--xla_force_host_platform_device_count={max(args.shards)}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import e3nn_fast as e3nn
    from e3nn_fast import sharding

    devices = jax.devices()
    if len(devices) < max(args.shards):
        sys.exit(f"need {max(args.shards)} devices, JAX sees {len(devices)} (XLA_FLAGS={os.environ.get('XLA_FLAGS')})")
    _, senders, receivers, cutoff = radius_graph_sorted(args.nodes, args.neighbours, args.seed)
    num_nodes, num_edges = args.nodes, len(senders)
    irreps_in, irreps_sh = e3nn.Irreps(args.irreps_in), e3nn.Irreps(args.irreps_sh)
    irreps_out = e3nn.message_passing_irreps_out(irreps_in, irreps_sh, args.filter)
    print(f"graph: {num_nodes} nodes, {num_edges} edges ({num_edges / num_nodes:.1f} per node, cutoff {cutoff:.2f}); "
          f"{irreps_in} (x) {irreps_sh} -> {irreps_out.dim} columns, {irreps_out.num_irreps} weights per edge; "
          f"jax {jax.__version__}, {jax.default_backend()}", flush=True)
    mib = lambda b: b / 2**20

    def measure(fn, shapes):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*shapes).compile()
        seconds = time.perf_counter() - start
        stats = compiled.memory_analysis()
        arg, out, temp = stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.temp_size_in_bytes
        alias = getattr(stats, "alias_size_in_bytes", 0)
        return dict(arguments=mib(arg), outputs=mib(out), temp=mib(temp), total=mib(arg + out + temp - alias),
                    compile_s=seconds, all_gather="all-gather" in compiled.as_text())

    def passes(forward):
        def loss(*a):
            return jnp.sum(forward(*a) ** 2)

        return {"fwd": forward, "fwd+bwd": jax.value_and_grad(loss, argnums=(0, 1, 2))}

    rows = []

    def report(row):
        rows.append(row)
        print(f"{row['shards']:>2} shards  {row['mode']:<10} {row['pass']:<8} per device: arguments "
              f"{row['arguments']:8.1f}  outputs {row['outputs']:8.1f}  temp {row['temp']:8.1f}  total "
              f"{row['total']:8.1f} MiB  (compile {row['compile_s']:.0f} s{', all-gather' if row['all_gather'] else ''}"
              f"{row.get('note', '')})", flush=True)

    f32 = jnp.float32
    # the baseline: one device, plain message passing on the unpartitioned graph
    s, r = jnp.asarray(senders), jnp.asarray(receivers)

    def plain(x, sh, w):
        out = e3nn.message_passing(e3nn.IrrepsArray(irreps_in, x), e3nn.IrrepsArray(irreps_sh, sh), w, s, r,
                                   num_nodes, filter_ir_out=args.filter)
        return out.array

    shapes = [jax.ShapeDtypeStruct((num_nodes, irreps_in.dim), f32),
              jax.ShapeDtypeStruct((num_edges, irreps_sh.dim), f32),
              jax.ShapeDtypeStruct((num_edges, irreps_out.num_irreps), f32)]
    for name in args.passes:
        report(dict(shards=1, mode="none", **{"pass": name}, **measure(passes(plain)[name], shapes)))

    for count in args.shards:
        part = sharding.partition_graph(senders, receivers, num_nodes, count)
        halo = part.halo_rows_per_shard
        print(f"{count} shards: {part.nodes_per_shard} nodes and {part.edges_per_shard} edges per shard "
              f"({part.padded_edges - num_edges} padding edges), halo {halo} rows per shard "
              f"over offsets {list(part.halo_offsets)}", flush=True)
        mesh = Mesh(np.array(devices[:count]), ("g",))
        spec = NamedSharding(mesh, P("g"))
        sharded = [jax.ShapeDtypeStruct((part.padded_nodes, irreps_in.dim), f32, sharding=spec),
                   jax.ShapeDtypeStruct((part.padded_edges, irreps_sh.dim), f32, sharding=spec),
                   jax.ShapeDtypeStruct((part.padded_edges, irreps_out.num_irreps), f32, sharding=spec)]
        for mode in args.modes:
            def forward(x, sh, w, part=part, mesh=mesh, mode=mode):
                out = sharding.graph_message_passing(
                    e3nn.IrrepsArray(irreps_in, x), e3nn.IrrepsArray(irreps_sh, sh), w, part, mesh, "g", mode=mode,
                    filter_ir_out=args.filter)
                return out.array

            for name in args.passes:
                report(dict(shards=count, mode=mode, **{"pass": name}, halo_rows=halo,
                            **measure(passes(forward)[name], sharded)))

    print()
    print(markdown(rows, args))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(nodes=num_nodes, edges=num_edges, irreps_in=str(irreps_in), irreps_sh=str(irreps_sh),
                           filter=args.filter, jax=jax.__version__, rows=rows), handle, indent=1)


def markdown(rows, args) -> str:
    """Per-device totals (MiB) as a table: one row per shard count, one column per mode and pass; in brackets the
    fraction of the one-device, unsharded total of the same pass."""
    columns = [(mode, name) for mode in args.modes for name in args.passes]
    by_key = {(row["shards"], row["mode"], row["pass"]): row for row in rows}
    head = "| shards | halo rows per shard | " + " | ".join(f"{mode} {name}" for mode, name in columns) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(columns)]
    base = {name: by_key[(1, "none", name)]["total"] for name in args.passes if (1, "none", name) in by_key}
    lines.append("| 1, plain `message_passing` | - | " + " | ".join(
        f"{base[name]:,.0f}" if name in base else "" for _, name in columns) + " |")
    for count in args.shards:
        cells, halo = [], ""
        for mode, name in columns:
            row = by_key.get((count, mode, name))
            if row is None:
                cells.append("")
                continue
            halo = f"{row.get('halo_rows', 0):,}"
            fraction = f" ({row['total'] / base[name]:.2f})" if name in base else ""
            cells.append(f"{row['total']:,.0f}{fraction}")
        lines.append(f"| {count} | {halo} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
