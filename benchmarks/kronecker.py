"""Shampoo, SOAP and PSGD-Kron against AdamW: step time and refresh time on run.py's transformer tree, and the
sharded step's collectives and per-device state on 8 devices (issue 19).

    python benchmarks/run.py --parts kronecker     # part of run.py's default parts
    python benchmarks/kronecker.py --size cpu      # this part alone (quick, cpu or accelerator sizes)

Each optimizer's jitted, donated ``update + apply_updates`` step is compiled three times on the transformer's
params: as used (SOAP and Shampoo refresh every 10th step; PSGD-Kron fits its preconditioner with probability
0.1), refreshing at every step, and refreshing at no step after the first. The three are timed alternately with
AdamW's step, in runs of 10 steps for the steps as used and AdamW's (one refresh per run; each step of a run has its
own fixed random gradient) and of 2 steps for the other two, medians over the repeats. The *average* step is the
measured one as used; *plain* and *refresh* are the other two. Issue 19's goal: average <= 1.5x AdamW's.

The refresh's extra time (refresh - plain) is set against a *floor*: its linear algebra alone, jitted, on the same
factor shapes. SOAP's floor is, for each factor, the product :math:`L Q` and its QR, and the first moment's rotation
out of the old bases and into the new ones (two mode products per rotated dimension); Shampoo's is an ``eigh`` of
each factor (what the ``"eigh"`` root costs at least; the default coupled Newton root runs a data-dependent number
of products, so it is compared with the same floor). fraction = floor / extra: 1 would mean the rest is free.
PSGD-Kron has no refresh in this sense (its fit is a few triangular solves and products per step it runs).

:func:`compile_section` (alone: ``--compile-only``): the seconds each step as used takes to trace and lower, and
for XLA to compile, against AdamW's.

With ``--torch-python`` naming a Python with torch and heavyball, heavyball's ``SOAP`` steps the same shapes on the
same device (same settings where they exist: frequency 10, no frequency schedule, no torch.compile), for reference.

:func:`sharded_section`: on 8 devices (simulated on a CPU, in a subprocess when this process has fewer), one compiled
step of Shampoo and SOAP on matrices split over a 2 x 4 mesh, under ``jit`` (Auto and Explicit axes) and inside
``shard_map``, with the factor blocks laid out across the devices by :func:`jaxopt_zoo.init_sharded` or replicated:
collectives and their bytes, state and FLOPs per device.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

import jaxopt_zoo as jz
from arguments import at_least
from report import run_on_8_cpu_devices, table, without_gc

FREQUENCY = 10
GOAL = 1.5  # average step / AdamW's step (issue 19)
NEVER = 2**30  # a refresh interval no run reaches


def optimizers(frequency: int) -> dict[str, jz.GradientTransformation]:
    """The contenders refreshing every ``frequency`` steps (PSGD-Kron: with probability 1 / frequency)."""
    return {
        "AdamW": jz.adamw(1e-3, weight_decay=0.01),
        # Blocks of at most 1024, as Shampoo's: at SOAP's default (10000) the CPU tree's 8192 x 512 embedding would
        # get an 8192 x 8192 factor (a 1.1 TFLOP QR at each refresh, tens of seconds on a CPU; add the row to see).
        "SOAP": jz.soap(3e-3, precondition_frequency=frequency, max_precond_dim=1024),
        # The official code's and heavyball's rule: dimensions above max_precond_dim are not rotated (heavyball's row).
        "SOAP, larger dims unrotated": jz.soap(3e-3, precondition_frequency=frequency, max_precond_dim=1024,
                                               blocking=False),
        "Shampoo": jz.shampoo(1e-3, precondition_frequency=frequency),
        "Shampoo, eigh root": jz.shampoo(1e-3, precondition_frequency=frequency, inverse_root="eigh"),
        "PSGD-Kron": jz.psgd_kron(1e-3, preconditioner_update_probability=0.0 if frequency == NEVER else 1 / frequency),
    }


def update_step(tx: jz.GradientTransformation) -> Callable[..., Any]:
    """``tx``'s update and ``apply_updates`` as one step, ``(params, state, grads) -> (params, state)``; a new
    function at each call, so that nothing is reused from an earlier compile."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    return step


def donated_step(tx: jz.GradientTransformation) -> Any:
    """:func:`update_step` jitted, donating the params and state."""
    return jax.jit(update_step(tx), donate_argnums=(0, 1))


class Stepper:
    """One compiled, donated step with its own params and state."""

    def __init__(self, tx: jz.GradientTransformation, params: Any, grads: list[Any]):
        self.params = jax.tree.map(jnp.copy, params)
        self.state = jax.tree.map(jnp.copy, tx.init(self.params))
        self.compiled = donated_step(tx).lower(self.params, self.state, grads[0]).compile()
        self.times: list[float] = []
        self.run(grads[:1])  # the first step: SOAP's eigh, Shampoo's first roots, allocations

    def run(self, grads: list[Any]) -> None:
        """One timed run: a step with each gradient in turn."""
        params, state = self.params, self.state
        start = time.perf_counter()
        for g in grads:
            params, state = self.compiled(params, state, g)
        jax.block_until_ready((params, state))
        self.times.append((time.perf_counter() - start) / len(grads))
        self.params, self.state = params, state


def soap_floor(shapes: Any, max_precond_dim: int) -> Callable[[], Any]:
    """SOAP's refresh work alone: per factor L Q and its QR, the moment's rotation out of and into the bases."""
    stacks = []
    for leaf in jax.tree.leaves(shapes):
        if leaf.ndim < 2:
            continue  # vectors are not rotated (precondition_1d=False)
        for n, *dims in jz.block_layout(leaf.shape, max_precond_dim, merge=False).stack_shapes:
            stacks.append((n, tuple(dims)))
    key = iter(jax.random.split(jax.random.key(0), 4 * len(stacks)))
    operands = []
    for n, dims in stacks:
        eye = [jnp.broadcast_to(jnp.eye(d), (n, d, d)) for d in dims]
        stats = [jax.random.normal(next(key), (n, d, d)) for d in dims]
        operands.append((jax.random.normal(next(key), (n, *dims)), stats, eye))

    @jax.jit
    def floor(operands):
        out = []
        for moment, stats, bases in operands:
            new = [jz.stacked_qr(jnp.matmul(s, q, precision="highest")) for s, q in zip(stats, bases)]
            rotate = jax.vmap(lambda x, old, new: jz.mode_product(jz.mode_product(x, old), new, transpose=True))
            out.append((new, rotate(moment, bases, new)))
        return out

    return lambda: floor(operands)


def shampoo_floor(shapes: Any, max_precond_dim: int) -> Callable[[], Any]:
    """Shampoo's refresh work at least: an eigh of each factor (lax.map over the blocks on CPU, as its roots do)."""
    factors = []
    for leaf in jax.tree.leaves(shapes):
        if leaf.ndim < 2:
            continue  # vectors are grafted, not preconditioned (precondition_1d=False)
        for n, *dims in jz.block_layout(leaf.shape, max_precond_dim, merge=True).stack_shapes:
            for d in dims:
                a = jax.random.normal(jax.random.key(len(factors)), (n, d, d))
                factors.append(a @ jnp.swapaxes(a, -1, -2) + jnp.eye(d))
    floor = jax.jit(lambda factors: [jz.stacked_eigh(f) for f in factors])
    return lambda: floor(factors)


FLOORS = {"SOAP": soap_floor, "Shampoo": shampoo_floor, "Shampoo, eigh root": shampoo_floor}


def time_floor(floor: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(floor())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(floor())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavyball_step(torch_python: str, shapes: Any, repeats: int) -> float | str:
    """Median seconds per heavyball SOAP step on the same shapes, run by ``torch_python``; a reason when it cannot."""
    request = json.dumps({"shapes": [list(x.shape) for x in jax.tree.leaves(shapes)], "repeats": repeats,
                          "frequency": FREQUENCY,
                          "max_precond_dim": 1024})
    script = pathlib.Path(__file__).with_name("heavyball_step.py")
    try:
        done = subprocess.run([torch_python, str(script), request], capture_output=True, text=True)
    except OSError as error:
        return f"not run ({error.strerror}: {torch_python})"
    if done.returncode:
        return f"not run ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
    return float(done.stdout.strip().splitlines()[-1])


def kronecker_section(shapes: Any, repeats: int, names: list[str] | None = None, torch_python: str | None = None) -> str:
    """The markdown section: step times against AdamW (first of ``names``, default all), refresh times against their
    floors, heavyball's SOAP."""
    params = jax.tree.map(lambda s: 0.02 * jax.random.normal(jax.random.key(0), s.shape, s.dtype), shapes)
    # A different gradient at each step of a run: with one, each factor would stay of that gradient's rank and the
    # Newton root would run all its iterations on it (real gradients fill the factors).
    grads = [jax.tree.map(lambda s, k=k: 1e-3 * jax.random.normal(k, s.shape, s.dtype), shapes)
             for k in jax.random.split(jax.random.key(1), FREQUENCY)]
    names = names or list(optimizers(FREQUENCY))
    if names[0] != "AdamW":
        raise ValueError(f"kronecker_section: names must start with 'AdamW', the baseline, got {names!r}.")
    rows, refresh_rows = [], []
    adamw = None
    for name in names:
        print(f"kronecker: {name}", file=sys.stderr, flush=True)
        variants = [Stepper(optimizers(f)[name], params, grads) for f in ((FREQUENCY, 1, NEVER) if name != "AdamW" else (FREQUENCY,))]
        for _ in range(repeats):
            for v, run in zip(variants, (grads, *[grads[:2]] * 2)):  # alternating: drift hits each alike
                with without_gc():
                    v.run(run)  # every step of the refresh and plain variants is alike: runs of 2 steps
        average, *split = (statistics.median(v.times[1:]) for v in variants)
        del variants
        if name == "AdamW":
            adamw = average
            rows.append([name, f"{1e3 * average:.1f}", "1", "", ""])
            continue
        refresh, plain = split
        goal = "met" if average / adamw <= GOAL else "not met"
        rows.append([name, f"{1e3 * average:.1f}", f"{average / adamw:.2f} ({goal})", f"{1e3 * plain:.1f}",
                     f"{1e3 * refresh:.1f}"])
        if name in FLOORS:
            floor = FLOORS[name](shapes, 1024)
            floor_time = time_floor(floor, repeats)
            extra = refresh - plain
            refresh_rows.append([name, f"{1e3 * extra:.1f}", f"{1e3 * floor_time:.1f}",
                                 f"{floor_time / extra:.2f}" if extra > 0 else "n/a"])
    text = (
        f"## Kronecker preconditioners: step time against AdamW\n\n"
        f"A tree of {len(jax.tree.leaves(shapes))} leaves, {sum(x.size for x in jax.tree.leaves(shapes)):,} params "
        f"(run.py: its transformer's); milliseconds per jitted, donated step, medians of {repeats} alternating runs "
        f"of {FREQUENCY} steps (2 for plain and refresh). "
        f"Average: refreshing every {FREQUENCY}th step (PSGD-Kron: fitting with probability 1/{FREQUENCY}); "
        f"plain: no refresh; refresh: refreshing every step. Goal: average <= {GOAL}x AdamW's.\n\n"
        + table(["optimizer", "average ms", "/ AdamW", "plain ms", "refresh ms"], rows)
        + "\n### Refresh time against its linear algebra alone\n\n"
        "extra = refresh - plain; floor = the refresh's products, QRs (SOAP) or eighs (Shampoo) alone on the same "
        "factor shapes; fraction = floor / extra.\n\n"
        + table(["optimizer", "extra ms", "floor ms", "fraction"], refresh_rows)
    )
    if torch_python:
        hb = heavyball_step(torch_python, shapes, repeats)
        ours = ", ".join(f"{r[0]}: {r[1]} ms" for r in rows if r[0].startswith("SOAP"))
        ours = f" (ours: {ours})" if ours else ""
        shown = f"{1e3 * hb:.1f} ms per step{ours}" if isinstance(hb, float) else hb
        text += (f"\n### heavyball's SOAP on the same shapes and device\n\nheavyball.SOAP (frequency {FREQUENCY}, no "
                 f"frequency schedule, max_precond_dim 1024: larger dimensions are not rotated, where ours are "
                 f"blocked; no merged dims, no torch.compile), same repeats: {shown}.\n")
    return text


def compile_section(shapes: Any, repeats: int, names: list[str] | None = None) -> str:
    """The markdown section: each optimizer's step (as used: refreshing every FREQUENCY steps) traced and lowered,
    then compiled by XLA, in seconds (medians of ``repeats`` fresh compiles), against AdamW's (first of ``names``)."""
    names = names or list(optimizers(FREQUENCY))
    if names[0] != "AdamW":
        raise ValueError(f"compile_section: names must start with 'AdamW', the baseline, got {names!r}.")
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes)
    rows, adamw = [], None
    for name in names:
        print(f"kronecker compile: {name}", file=sys.stderr, flush=True)
        tx = optimizers(FREQUENCY)[name]
        state = jax.eval_shape(tx.init, params)
        lowering, compiling = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            lowered = donated_step(tx).lower(params, state, params)
            middle = time.perf_counter()
            lowered.compile()
            lowering.append(middle - start)
            compiling.append(time.perf_counter() - middle)
        lower, compile_ = statistics.median(lowering), statistics.median(compiling)
        adamw = adamw or lower + compile_
        rows.append([name, f"{lower:.2f}", f"{compile_:.2f}", f"{(lower + compile_) / adamw:.1f}"])
    cache = ("JAX's persistent compilation cache off, as by default" if jax.config.jax_compilation_cache_dir is None
             else "JAX's persistent compilation cache on: a repeat may read the first compile back")
    return (
        f"### Compile time against AdamW\n\n"
        f"The same tree; seconds to trace and lower each optimizer's jitted, donated step (as used) and for XLA to "
        f"compile it, medians of {repeats} fresh compiles ({cache}).\n\n"
        + table(["optimizer", "trace + lower s", "compile s", "total / AdamW"], rows)
    )


# Square matrices split P("data", "model") over 2 x 4 devices, cut into blocks of BLOCK[size]: 16 blocks each.
SHARDED = {"quick": (1, 64, 16), "cpu": (4, 1024, 256), "accelerator": (4, 4096, 1024)}  # (matrices, rows, block)


def sharded_measurements(size: str) -> list[list[str]]:
    """One compiled, donated step per optimizer and layout on the 2 x 4 mesh (needs 8 devices): collectives and their
    bytes per device, state bytes per device, FLOPs per device."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from muon import collectives

    count, n, block = SHARDED[size]
    axes, split = ("data", "model"), PartitionSpec("data", "model")
    rows = []
    for kind in ("Auto", "Auto, partition_specs", "Explicit", "shard_map"):
        axis_type = AxisType.Explicit if kind == "Explicit" else AxisType.Auto
        mesh = jax.make_mesh((2, 4), axes, axis_types=(axis_type,) * 2, devices=jax.devices()[:8])
        put = lambda x: jax.device_put(x, NamedSharding(mesh, split))  # noqa: E731
        params = {f"w{i}": put(0.02 * jax.random.normal(jax.random.key(i), (n, n))) for i in range(count)}
        grads = {k: put(1e-3 * jax.random.normal(jax.random.key(100 + i), (n, n))) for i, k in enumerate(params)}
        param_specs = {k: split for k in params}
        local = {"shard_map": dict(axis_name=axes, partition_specs=param_specs),
                 "Auto, partition_specs": dict(partition_specs=param_specs)}.get(kind, {})
        shampoo = lambda: jz.shampoo(1e-3, precondition_frequency=FREQUENCY, max_precond_dim=block,  # noqa: E731
                                     inverse_root="eigh", **local)
        variants = {
            "AdamW": (jz.adamw(1e-3), False),
            "Shampoo, factor blocks across devices": (shampoo(), False),
            "Shampoo, factors replicated": (shampoo(), True),
            "SOAP, factor blocks across devices": (jz.soap(3e-3, max_precond_dim=block, **local), False),
            "SOAP, factors replicated": (jz.soap(3e-3, max_precond_dim=block, **local), True),
        }
        for name, (tx, replicate) in variants.items():
            if kind == "Auto, partition_specs" and (name == "AdamW" or replicate):
                continue  # AdamW takes no specs; replicated factors are sliced on the way in: the same program
            state = jz.init_sharded(tx, params)
            state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
            if replicate:  # the layout before issue 19's rule: every (blocks, d, d) stack whole on every device
                whole = NamedSharding(mesh, PartitionSpec())
                state = jax.tree.map(lambda x: jax.device_put(x, whole) if x.ndim == 3 else x, state)
                state_specs = jax.tree.map(lambda x: x.sharding.spec, state)

            step = update_step(tx)
            if kind == "shard_map":  # each device's blocks of the params, gradients and state
                step = jax.shard_map(step, mesh=mesh, in_specs=(param_specs, state_specs, param_specs),
                                     out_specs=(param_specs, state_specs))
            with jax.set_mesh(mesh):
                compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
            found = collectives(compiled.as_text())
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            state_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
            rows.append([kind, name, ", ".join(f"{k} {c}" for k, (c, _) in sorted(found.items())) or "none",
                         f"{sum(b for _, b in found.values()) / 2**20:.2f}", f"{state_bytes / 2**20:.2f}",
                         f"{cost.get('flops', float('nan')) / 1e6:.1f}"])
    return rows


def sharded_section(size: str) -> str:
    """The report section; run in a fresh process with 8 simulated CPU devices when this one has fewer."""
    if jax.device_count() < 8:
        if jax.default_backend() != "cpu":
            return "### Kronecker factors on 8 devices\n\nSkipped: needs 8 devices.\n"
        return run_on_8_cpu_devices(__file__, "--size", size, "--sharded-only")
    count, n, block = SHARDED[size]
    return (
        "### Kronecker factors on 8 devices\n\n"
        f"One jitted, donated step on {count} float32 {'matrix' if count == 1 else 'matrices'} of {n} x {n}, each "
        f"split `P('data', 'model')` over a 2 x 4 mesh of simulated CPU devices and cut into 16 blocks of {block} x {block} (Shampoo with the eigh "
        "root, refreshing every 10th step; SOAP's defaults), with the factors laid out by `init_sharded` (2 blocks' "
        "factors per device) or replicated as before that rule, under `jit` on Auto axes (without and with the "
        "params' `partition_specs`) and on Explicit mesh axes, and inside `shard_map` (with `axis_name` and "
        "`partition_specs`, on Auto axes). From the compiled per-device program: its collectives "
        "(both branches of the refresh cond count) and the bytes of their results, the state on one device, XLA's "
        "`cost_analysis()` FLOPs on one device (a cond's branches counted as XLA counts them).\n\n"
        + table(["mesh axes / shard_map", "optimizer", "collectives", "MiB moved per device", "state MiB per device",
                 "MFLOP per device"], sharded_measurements(size))
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["quick", "cpu", "accelerator"], default="quick",
                        help="run.py's transformer tree and the 8-device matrices at this size (default %(default)s)")
    parser.add_argument("--repeats", type=at_least(1), default=5,
                        help="timed runs and compiles, medians taken (default %(default)s)")
    parser.add_argument("--torch-python", help="a Python with torch and heavyball, for heavyball's SOAP")
    parser.add_argument("--sharded-only", action="store_true", help="only the 8-device section")
    parser.add_argument("--compile-only", action="store_true", help="only the compile times")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.sharded_only:
        print(sharded_section(args.size))
        return
    from run import SIZES, transformer_shapes

    shapes = transformer_shapes(SIZES[args.size].model)
    if not args.compile_only:
        print(kronecker_section(shapes, args.repeats, torch_python=args.torch_python))
    print(compile_section(shapes, args.repeats))
    if not args.compile_only:
        print(sharded_section(args.size))


if __name__ == "__main__":
    main()
