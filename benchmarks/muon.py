"""Muon's Newton–Schulz orthogonalisation against its own matrix products, timed in the same run.

``python benchmarks/run.py --parts muon`` (part of run.py's default parts). For each matrix shape,
:func:`jaxopt_zoo.newton_schulz` (5 steps, the default coefficients, jitted) is timed against a
*floor*: the same 15 matrix products on matrices of the same shapes and dtype, with nothing else
(no normalisation, no transposition, no scaling or sums), each step ``X <- (X X^T)(X X^T) X``
from an X with orthonormal rows so that the values stay near 1. The fraction floor / ours is
how close the orthogonalisation comes to the cost of its products: 1 would mean the rest is free.
Products dominate as n^3 against the rest's n^2, so the fraction is lowest for small matrices.

:func:`layer_sharded_section` (issue 18) compiles a Muon step on a tree of sharded matrices over a 2 x 4 mesh
(8 simulated CPU devices: run as ``python benchmarks/muon.py --size cpu``, or called from a process with fewer
devices, which re-runs this file in a subprocess) and reports, from the compiled HLO, the collectives per step and
their bytes, FLOPs per device and step time of layer-sharded Muon, plain Muon and ``optax.contrib.muon``, and the
error of Optax's Muon inside ``shard_map``.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_zoo as jz
from arguments import at_least
from report import run_on_8_cpu_devices, table, without_gc

GOAL = 0.8  # of the floor (issue 16)
NS_STEPS = 5

# (rows, cols): a wide, a tall (transposed for its iteration) and a square matrix per size.
SHAPES = {
    "quick": [(32, 64)],
    "cpu": [(512, 2048), (2048, 512), (1024, 1024)],
    "accelerator": [(4096, 16384), (16384, 4096), (8192, 8192)],
}


def products_only(x: jax.Array) -> jax.Array:
    """The Newton–Schulz steps' products alone: ``X <- (X X^T)(X X^T) X``, as many times (X wide or square)."""
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = (gram @ gram) @ x
    return x


def orthonormal_rows(rows: int, cols: int, dtype: Any) -> jax.Array:
    """A rows x cols matrix (rows <= cols) with orthonormal rows: the floor's products keep it near itself."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(cols, rows)))
    return jnp.asarray(q.T, dtype)


def seconds_per_call(compiled: Callable, x: jax.Array, calls: int) -> float:
    jax.block_until_ready(compiled(x))
    with without_gc():
        start = time.perf_counter()
        for _ in range(calls):
            out = compiled(x)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / calls


def product_flops(rows: int, cols: int) -> int:
    """Flops of one orthogonalisation's products: per step 2 m^2 n (X X^T) + 2 m^3 (A A) + 2 m^2 n (B X), m <= n."""
    m, n = min(rows, cols), max(rows, cols)
    return NS_STEPS * (4 * m * m * n + 2 * m**3)


def newton_schulz_section(size: str, repeats: int, calls: int) -> str:
    """The report section: for each shape and dtype, ours, the floor and their ratio (median of alternating runs)."""
    dtypes = [jnp.float32] + ([jnp.bfloat16] if jax.default_backend() != "cpu" else [])
    rows_out = []
    for shape in SHAPES[size]:
        for dtype in dtypes:
            g = jnp.asarray(np.random.default_rng(1).normal(size=shape), dtype)
            wide = orthonormal_rows(min(shape), max(shape), dtype)
            ours = jax.jit(jz.newton_schulz).lower(g).compile()
            floor = jax.jit(products_only).lower(wide).compile()
            times: dict[str, list[float]] = {"ours": [], "floor": []}
            for _ in range(repeats):  # alternating, so that drift in the machine's speed hits both alike
                times["ours"].append(seconds_per_call(ours, g, calls))
                times["floor"].append(seconds_per_call(floor, wide, calls))
            mine, base = statistics.median(times["ours"]), statistics.median(times["floor"])
            spread = max((max(t) - min(t)) / statistics.median(t) for t in times.values())
            rows_out.append([
                f"{shape[0]} x {shape[1]}", jnp.dtype(dtype).name, f"{1e3 * mine:.3f}", f"{1e3 * base:.3f}",
                f"{base / mine:.2f}", f"{100 * spread:.0f}%", f"{product_flops(*shape) / base / 1e9:.1f}",
            ])
    return (
        f"## Muon: Newton–Schulz against its products alone\n\n"
        f"`jz.newton_schulz` ({NS_STEPS} steps, jitted) against the same {3 * NS_STEPS} matrix products with nothing "
        "else (`benchmarks/muon.py`: `X <- (X X^T)(X X^T) X` on the wide orientation), median of "
        f"{repeats} alternating runs of {calls} calls each. fraction = products' time / ours (goal >= {GOAL}); "
        "spread = (max - min) / median, the larger of the two. GFLOP/s is the products' rate.\n\n"
        + table(["matrix", "dtype", "ours ms", "products ms", "fraction", "spread", "products GFLOP/s"], rows_out)
    )


# --- layer-sharded Muon (issue 18) ---------------------------------------------------------------------

# (count, rows, cols) of the matrices in the tree, every one split over a (2, 4) mesh as P("data", "model").
SHARDED_TREES = {
    # quick: fewer matrices than devices, in two shapes: each variant's program has the kinds of collectives it has
    # for 8 + 4 matrices (layer sharding pads each shape's stack to one matrix per device: its all-to-alls are
    # the same), compiled in 2.2 s instead of 5.6 (the suite runs this; compiling is nearly all of it).
    "quick": [(2, 32, 32), (1, 32, 64)],
    "cpu": [(8, 256, 256), (4, 256, 1024)],
    "accelerator": [(8, 256, 256), (4, 256, 1024)],
}
MESH_SHAPE = (2, 4)
COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
BYTES = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}


def collectives(hlo: str) -> dict[str, tuple[int, int]]:
    """Per kind of collective in a compiled (per-device) HLO module: (ops, bytes of their results on one device)."""
    found: dict[str, list[int]] = {}
    for line in hlo.splitlines():
        op = next((k for k in COLLECTIVES if f" {k}(" in line or f" {k}-start(" in line), None)
        if op is None or " = " not in line:
            continue
        result = line.split(" = ", 1)[1].split(f" {op}", 1)[0]
        size = sum(BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                   for t, dims in re.findall(r"\b(f32|bf16|f16|f64|s32|u32|pred|s8|u8)\[([\d,]*)\]", result))
        found.setdefault(op, [0, 0])
        found[op][0] += 1
        found[op][1] += size
    return {k: (v[0], v[1]) for k, v in found.items()}


def _sharded_setup(size: str):
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh(MESH_SHAPE, ("data", "model"), axis_types=(AxisType.Auto,) * 2,
                         devices=jax.devices()[:math.prod(MESH_SHAPE)])
    spec = PartitionSpec("data", "model")
    rng = np.random.default_rng(0)
    shapes = {f"w{rows}x{cols}_{i}": (rows, cols) for count, rows, cols in SHARDED_TREES[size] for i in range(count)}
    put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, spec))
    params = {k: put(rng.normal(size=s) / np.sqrt(s[0])) for k, s in shapes.items()}
    grads = {k: put(rng.normal(size=s)) for k, s in shapes.items()}
    return mesh, spec, params, grads


def _one_update_error_of_optax_in_shard_map(mesh, spec, params, grads) -> float:
    """Failure mode (a): optax.contrib.muon's update inside shard_map (each block orthogonalised alone) against
    one device, as ||u_blocks - u|| / ||u|| over the tree."""
    import optax
    from jax.sharding import PartitionSpec

    tx = optax.contrib.muon(1.0)
    one = jax.jit(tx.update)(jax.device_get(grads), tx.init(jax.device_get(params)), jax.device_get(params))[0]
    state = tx.init(params)
    state_specs = jax.tree.map(lambda x: spec if jnp.ndim(x) == 2 else PartitionSpec(), state)
    specs = jax.tree.map(lambda _: spec, params)
    local = jax.shard_map(lambda g, s, p: tx.update(g, s, p)[0], mesh=mesh, in_specs=(specs, state_specs, specs),
                          out_specs=specs)
    blocks = jax.jit(local)(grads, state, params)
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(blocks), jax.tree.leaves(one)))
    den = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(one))
    return math.sqrt(num / den)


def layer_sharded_measurements(size: str, repeats: int, calls: int) -> dict[str, Any]:
    """Compiled step of each variant on the (2, 4) mesh: collectives, FLOPs per device, step time; and the
    error of Optax's Muon inside shard_map. Needs 8 devices (``--xla_force_host_platform_device_count=8``)."""
    import optax

    mesh, spec, params, grads = _sharded_setup(size)
    specs = jax.tree.map(lambda _: spec, params)
    variants = {
        "ours, layer-sharded (partition_specs: all-to-all)": jz.muon(1e-3, layer_sharding=True, partition_specs=specs),
        "ours, layer-sharded (Auto axes, no specs)": jz.muon(1e-3, layer_sharding=True),
        "ours, plain": jz.muon(1e-3),
        "optax.contrib.muon": optax.contrib.muon(1e-3),
    }
    rows = {}
    for name, tx in variants.items():
        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return jz.apply_updates(params, updates), state

        state = jz.init_sharded(tx, params)
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        hlo = compiled.as_text()
        times = []
        p, s = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state)
        p, s = compiled(p, s, grads)
        jax.block_until_ready(p)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                p, s = compiled(p, s, grads)
            jax.block_until_ready(p)
            times.append((time.perf_counter() - start) / calls)
        rows[name] = dict(collectives=collectives(hlo), flops=float(cost.get("flops", float("nan"))),
                          seconds=statistics.median(times), spread=(max(times) - min(times)) / statistics.median(times))
    matrices = [(rows_, cols) for count, rows_, cols in SHARDED_TREES[size] for _ in range(count)]
    return dict(rows=rows, optax_shard_map_error=_one_update_error_of_optax_in_shard_map(mesh, spec, params, grads),
                ns_flops=sum(product_flops(r, c) for r, c in matrices), matrices=matrices, devices=mesh.size)


def layer_sharded_section(size: str, repeats: int, calls: int) -> str:
    """The report section; run in a fresh process with 8 simulated CPU devices when this one has fewer."""
    if jax.device_count() < math.prod(MESH_SHAPE):
        if jax.default_backend() != "cpu":
            return "## Layer-sharded Muon (issue 18)\n\nSkipped: needs 8 devices.\n"
        return run_on_8_cpu_devices(__file__, "--size", size, "--repeats", str(repeats), "--calls", str(calls))
    m = layer_sharded_measurements(size, repeats, calls)
    table_rows = []
    for name, r in m["rows"].items():
        ops = ", ".join(f"{k} {n}" for k, (n, _) in sorted(r["collectives"].items())) or "none"
        total = sum(b for _, b in r["collectives"].values())
        table_rows.append([name, ops, f"{total / 2**10:.1f}", f"{r['flops'] / 1e6:.1f}", f"{1e3 * r['seconds']:.3f}",
                           f"{100 * r['spread']:.0f}%"])
    shapes = ", ".join(f"{count} x ({rows} x {cols})" for count, rows, cols in SHARDED_TREES[size])
    return (
        "## Layer-sharded Muon (issue 18)\n\n"
        f"`benchmarks/muon.py`: one jitted, donated `update + apply_updates` step of Muon on {shapes} float32 "
        f"matrices, each split as `P('data', 'model')` over a {MESH_SHAPE[0]} x {MESH_SHAPE[1]} mesh of "
        f"{m['devices']} simulated CPU devices. From the compiled per-device HLO: the collective ops (kind and count) "
        "and the bytes of their results on one device; XLA's `cost_analysis()` FLOPs of the whole step on one "
        f"device (the Newton–Schulz products of the whole tree: {m['ns_flops'] / 1e6:.1f} MFLOP, so 1/"
        f"{m['devices']} is {m['ns_flops'] / m['devices'] / 1e6:.1f}); step time, median of {repeats} runs of "
        f"{calls} steps (same run, on shared CPU cores: indicative only).\n\n"
        + table(["variant", "collectives per step", "KiB per device", "MFLOP per device", "step ms", "spread"],
                table_rows)
        + f"\n\nOptax's Muon inside `shard_map` on the same blocks (each orthogonalised alone): one update is "
        f"{100 * m['optax_shard_map_error']:.0f}% off the one-device update (relative Frobenius error over the tree).\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="cpu", choices=sorted(SHARDED_TREES),
                        help="the tree of sharded matrices (default %(default)s)")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed runs, median taken (default %(default)s)")
    parser.add_argument("--calls", type=at_least(1), default=5, help="steps per timed run (default %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    print(layer_sharded_section(args.size, args.repeats, args.calls))
