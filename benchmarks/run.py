"""Speed and memory of every seed optimizer against its Optax twin, same process, same inputs.

    python benchmarks/run.py                       # full run: ~20 min on 2 CPU cores, and ~35 more for part kronecker
    python benchmarks/run.py --quick               # smoke test: tiny sizes, one repeat
    python benchmarks/run.py --parts compile --optimizers adam,adamw,lamb
    python benchmarks/run.py --parts step --trees transformer  # step time on one of the three trees

Measures, for each optimizer (ours and Optax's alternately):

* step time of the jitted, donated ``update + apply_updates`` step on three
  trees: one big leaf, 1024 small leaves, and a Flax transformer's params;
* achieved bandwidth: the bytes a step must move over its time, as a fraction
  of a STREAM-triad bandwidth measured in the same run;
* memory from XLA's ``memory_analysis()`` and the optimizer state per parameter;
* compile time (trace + lower, and XLA compile) on the 1024-leaf tree, with
  JAX's caches cleared before each compilation;
* Muon's Newton–Schulz time against its matrix products alone, and layer-sharded Muon's collectives, FLOPs and
  step time on 8 (simulated) devices against Optax's Muon (part ``muon``, benchmarks/muon.py);
* Shampoo, SOAP and PSGD-Kron against AdamW on the transformer tree: step time, refresh time against its
  eigh/QR/products alone, compile time, and their collectives, state and FLOPs per device on 8 (simulated) devices
  with the factors laid out across devices or replicated (part ``kronecker``, benchmarks/kronecker.py; ``--torch-python``
  adds heavyball's SOAP).

Sizes follow the backend: on a GPU/TPU each synthetic tree holds 256M params (16M on CPU). Prints
markdown tables and writes them to --output, rewritten as each section is finished (a run that stops keeps
the sections before). Ratios are ours / Optax, so below 1 means we are faster or smaller. ``--optimizers``
chooses the optimizers of parts step and compile; the other parts run their own fixed sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxopt_zoo as jz
from arguments import at_least, names, writable
from report import machine_header, number, plural, table, without_gc
from seed_optimizers import SLOW_ON_CPU, ExtraArgs, SeedOptimizer, select
# kronecker.py's compile_section under another name: this file has its own compile_section.
from kronecker import compile_section as kronecker_compile_section, kronecker_section, sharded_section
from muon import layer_sharded_section, newton_schulz_section

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab: int
    width: int
    heads: int
    layers: int


@dataclasses.dataclass(frozen=True)
class Sizes:
    single_leaf: tuple[int, int]
    leaves: int
    leaf_shape: tuple[int, int]
    model: ModelConfig
    steps: int  # steps per timed run, between two block_until_ready
    repeats: int
    compile_repeats: int


SIZES = {
    # quick: the smallest trees that still exercise every path (the single leaf is large enough to be stored
    # in 8 bits under 8 devices); compiling the steps is nearly all of its time, and that grows with the leaves.
    "quick": Sizes((256, 256), 4, (32, 32), ModelConfig(256, 32, 2, 1), steps=2, repeats=1, compile_repeats=1),
    # 16M params per tree: big enough to leave the caches, small enough for a few minutes on 2 cores.
    "cpu": Sizes((4096, 4096), 1024, (128, 128), ModelConfig(8192, 512, 8, 6), steps=5, repeats=7, compile_repeats=3),
    # 256M params per tree: long enough steps (~ms) that launch overhead does not hide the bandwidth.
    "accelerator": Sizes(
        (16384, 16384), 1024, (512, 512), ModelConfig(32768, 1024, 16, 12), steps=20, repeats=7, compile_repeats=3
    ),
}


# ---------------------------------------------------------------------------- trees


class Block(nnx.Module):
    """A pre-norm transformer block's layers (only the parameter tree is benchmarked, so no forward pass)."""

    def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)


class Transformer(nnx.Module):
    """A decoder-style language model's layers: embedding, blocks, final norm."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.embed = nnx.Embed(config.vocab, config.width, rngs=rngs)
        self.blocks = nnx.List([Block(config.width, config.heads, rngs) for _ in range(config.layers)])
        self.final_norm = nnx.LayerNorm(config.width, rngs=rngs)


def transformer_shapes(config: ModelConfig) -> Any:
    # eval_shape: the real model's parameter tree (names, shapes, dtypes) without allocating or initialising it.
    abstract = nnx.eval_shape(lambda: Transformer(config, nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def tree_shapes(sizes: Sizes) -> dict[str, Any]:
    """The three benchmark trees as ShapeDtypeStructs, by display name."""
    f32 = jnp.float32
    single = jax.ShapeDtypeStruct(sizes.single_leaf, f32)
    many = {f"w{i:04d}": jax.ShapeDtypeStruct(sizes.leaf_shape, f32) for i in range(sizes.leaves)}
    model = transformer_shapes(sizes.model)
    return {
        f"1 leaf of {millions(single.size)}": {"w": single},
        f"{sizes.leaves} leaves of {thousands(many['w0000'].size)}": many,
        f"transformer ({len(jax.tree.leaves(model))} leaves, {millions(count_params(model))})": model,
    }


def materialize(shapes: Any, key: jax.Array, scale: float) -> Any:
    """Random normal arrays of the given shapes, so norms (LARS, LAMB) and moments are not degenerate."""
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves)])


def count_params(tree: Any) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def tree_bytes(tree: Any) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def millions(n: int) -> str:
    return f"{n / 1e6:.3g}M"


def thousands(n: int) -> str:
    return f"{n / 1e3:.3g}K" if n >= 1000 else str(n)


# ---------------------------------------------------------------------------- steps


def make_step(tx: Any, apply_updates: Callable[[Any, Any], Any], extra_args: ExtraArgs | None = None) -> Callable:
    """The training step minus the gradient: what an optimizer costs per iteration."""

    def step(params, state, grads):
        keywords = {} if extra_args is None else extra_args(params, grads)
        updates, state = tx.update(grads, state, params, **keywords)
        return apply_updates(params, updates), state

    return step


def jitted_step(tx: Any, apply_updates: Callable[[Any, Any], Any], extra_args: ExtraArgs | None = None) -> Callable:
    # Donating params and state lets XLA update them in place, as a real training loop does.
    return jax.jit(make_step(tx, apply_updates, extra_args), donate_argnums=(0, 1))


@dataclasses.dataclass
class Contender:
    """One library's optimizer on one tree: its compiled step, live buffers and measurements."""

    compiled: Any
    memory: Any  # compiled.memory_analysis(), kept after the executable is released
    params: Any
    state: Any
    state_bytes: int
    times: list[float] = dataclasses.field(default_factory=list)

    def run(self, grads: Any, steps: int) -> float:
        """Seconds per step over `steps` steps, feeding each step's outputs (the donated inputs' successors) back."""
        params, state = self.params, self.state
        start = time.perf_counter()
        for _ in range(steps):
            params, state = self.compiled(params, state, grads)
        jax.block_until_ready((params, state))
        elapsed = time.perf_counter() - start
        self.params, self.state = params, state
        return elapsed / steps


def contender(tx: Any, apply_updates: Callable, params: Any, grads: Any, extra_args: ExtraArgs | None = None) -> Contender:
    params = jax.tree.map(jnp.copy, params)  # its own buffers: the step donates them
    # Copied too: Optax's lbfgs init hands out one zeros array for two state leaves, which cannot be donated twice.
    state = jax.tree.map(jnp.copy, tx.init(params))
    compiled = jitted_step(tx, apply_updates, extra_args).lower(params, state, grads).compile()
    return Contender(compiled, compiled.memory_analysis(), params, state, tree_bytes(state))


@dataclasses.dataclass(frozen=True)
class StepResult:
    optimizer: str
    tree: str
    n_params: int
    params_bytes: int
    ours: Contender
    theirs: Contender
    max_difference: float  # largest |ours - Optax's| over the final params: the two ran the same computation

    def moved_bytes(self, c: Contender) -> int:
        """Minimum traffic of one step: read and write the params, read the grads (as big), read and write the state."""
        return 3 * self.params_bytes + 2 * c.state_bytes


def time_pair(name: str, pair: SeedOptimizer, tree: str, params: Any, grads: Any, sizes: Sizes) -> StepResult:
    lr = pair.learning_rate
    runs = [
        contender(pair.ours(lr), jz.apply_updates, params, grads, pair.extra_args),
        contender(pair.optax(lr), optax.apply_updates, params, grads, pair.extra_args),
    ]
    for c in runs:  # first execution: allocations and thread pools, not the optimizer
        c.run(grads, 1)
    for _ in range(sizes.repeats):
        for c in runs:  # alternating, so that drift in the machine's speed hits both alike
            with without_gc():
                c.times.append(c.run(grads, sizes.steps))
    ours, theirs = runs
    pairs = zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params))
    difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs)
    return StepResult(name, tree, count_params(params), tree_bytes(params), ours, theirs, difference)


def release(result: StepResult) -> None:
    # Keep the measurements, free the buffers and executables before the next optimizer's.
    for c in (result.ours, result.theirs):
        c.compiled = c.params = c.state = None


def triad_bandwidth(n: int, sizes: Sizes) -> float:
    """Bytes per second of x <- x + s*y over n float32 elements (STREAM's triad, 12 bytes per element).

    The same pattern as plain SGD (read two arrays, write one, x donated), so
    it is what an optimizer step can hope for on this machine. The scalar is an
    argument, so XLA cannot fold the arithmetic away.
    """
    triad = jax.jit(lambda x, y, s: x + s * y, donate_argnums=0)
    x, y, s = jnp.zeros(n, jnp.float32), jnp.ones(n, jnp.float32), jnp.float32(1e-3)
    x = jax.block_until_ready(triad(x, y, s))
    times = []
    for _ in range(max(sizes.repeats, 3)):
        with without_gc():
            start = time.perf_counter()
            for _ in range(sizes.steps):
                x = triad(x, y, s)
            jax.block_until_ready(x)
            times.append((time.perf_counter() - start) / sizes.steps)
    return 12 * n / statistics.median(times)


# ---------------------------------------------------------------------------- compile time


@dataclasses.dataclass(frozen=True)
class CompileResult:
    optimizer: str
    lower: tuple[list[float], list[float]]  # seconds to trace and lower, ours then Optax's
    compile: tuple[list[float], list[float]]  # seconds of XLA compilation


def compile_once(tx: Any, apply_updates: Callable, shapes: Any, extra_args: ExtraArgs | None = None) -> tuple[float, float]:
    """Seconds to trace+lower and to compile the step, from cold caches."""
    jax.clear_caches()  # else the second library would reuse jitted helpers (norms, casts) the first traced
    state_shapes = jax.eval_shape(tx.init, shapes)
    with without_gc():
        start = time.perf_counter()
        lowered = jitted_step(tx, apply_updates, extra_args).lower(shapes, state_shapes, shapes)
        lowered_at = time.perf_counter()
        lowered.compile()
        return lowered_at - start, time.perf_counter() - lowered_at


def time_compilation(name: str, pair: SeedOptimizer, shapes: Any, repeats: int) -> CompileResult:
    lower: tuple[list[float], list[float]] = ([], [])
    compile_: tuple[list[float], list[float]] = ([], [])
    libraries = [(pair.ours, jz.apply_updates), (pair.optax, optax.apply_updates)]
    for _ in range(repeats):
        for i, (make, apply_updates) in enumerate(libraries):
            # A fresh optimizer each time: nothing of the previous compilation can be reused.
            seconds_lower, seconds_compile = compile_once(make(pair.learning_rate), apply_updates, shapes, pair.extra_args)
            lower[i].append(seconds_lower)
            compile_[i].append(seconds_compile)
    return CompileResult(name, lower, compile_)


# ---------------------------------------------------------------------------- tables


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def noise(times: list[float]) -> float:
    return (max(times) - min(times)) / statistics.median(times)


def step_time_table(results: list[StepResult]) -> str:
    rows = []
    for r in results:
        ours, theirs = statistics.median(r.ours.times), statistics.median(r.theirs.times)
        rows.append([
            r.optimizer, f"{1e3 * ours:.3f}", f"{1e3 * theirs:.3f}", ratio(ours, theirs),
            f"{100 * max(noise(r.ours.times), noise(r.theirs.times)):.0f}%", number(r.max_difference),
        ])
    return table(["optimizer", "ours ms", "optax ms", "ratio", "spread", "max abs diff"], rows)


def bandwidth_table(results: list[StepResult], reference: float) -> str:
    rows = []
    for r in results:
        row: list[object] = [r.optimizer, f"{r.moved_bytes(r.ours) / r.n_params:.1f}"]
        for c in (r.ours, r.theirs):
            achieved = r.moved_bytes(c) / statistics.median(c.times)
            row += [f"{achieved / 1e9:.1f}", f"{100 * achieved / reference:.0f}%"]
        rows.append(row)
    return table(["optimizer", "bytes/param", "ours GB/s", "ours of triad", "optax GB/s", "optax of triad"], rows)


def memory_table(results: list[StepResult]) -> str:
    def mib(c: Contender, field: str) -> str:
        value = getattr(c.memory, field, None)  # peak_memory_in_bytes is recent
        return "n/a" if value is None else f"{value / MIB:.1f}"

    def pair(field: str) -> str:
        return f"{mib(r.ours, field)} / {mib(r.theirs, field)}"

    def temp_ratio(r: StepResult) -> str:
        ours, theirs = (c.memory.temp_size_in_bytes for c in (r.ours, r.theirs))
        return ratio(ours, theirs) if theirs else ("1.00" if ours == theirs else "inf")

    rows = []
    for r in results:
        rows.append([
            r.optimizer,
            f"{r.ours.state_bytes / r.n_params:.2f} / {r.theirs.state_bytes / r.n_params:.2f}",
            pair("argument_size_in_bytes"), pair("output_size_in_bytes"), pair("alias_size_in_bytes"),
            pair("temp_size_in_bytes"), temp_ratio(r),
            pair("peak_memory_in_bytes"),
        ])
    headers = ["optimizer", "state B/param", "arguments MiB", "outputs MiB", "aliased MiB", "temp MiB", "temp ratio",
               "peak MiB"]
    return "Each cell is ours / Optax's.\n\n" + table(headers, rows)


def compile_table(results: list[CompileResult]) -> str:
    rows = []
    for r in results:
        lower = [statistics.median(x) for x in r.lower]
        compile_ = [statistics.median(x) for x in r.compile]
        total = [statistics.median([a + b for a, b in zip(*pair)]) for pair in zip(r.lower, r.compile)]
        rows.append([
            r.optimizer, f"{lower[0]:.3f}", f"{lower[1]:.3f}", f"{compile_[0]:.3f}", f"{compile_[1]:.3f}",
            f"{total[0]:.3f}", f"{total[1]:.3f}", ratio(*total),
        ])
    headers = ["optimizer", "ours lower s", "optax lower s", "ours XLA s", "optax XLA s", "ours total s",
               "optax total s", "ratio"]
    return table(headers, rows)


# ---------------------------------------------------------------------------- main


class Report:
    """Prints each section as it is finished and rewrites the results file with every section so far: a run that
    stops in a later part keeps the earlier parts' tables."""

    def __init__(self, path: pathlib.Path, header: str):
        self.path, self.sections = path, []
        self.add(header)

    def add(self, section: str) -> None:
        self.sections.append(section)
        print(section, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.sections))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def step_sections(report: Report, optimizers: dict[str, SeedOptimizer], sizes: Sizes, shapes: dict[str, Any]) -> None:
    reference_elements = sizes.single_leaf[0] * sizes.single_leaf[1]
    progress(f"triad over {millions(reference_elements)} float32 elements")
    reference = triad_bandwidth(reference_elements, sizes)
    by_tree: dict[str, list[StepResult]] = {}
    for i, (tree, abstract) in enumerate(shapes.items()):
        params = materialize(abstract, jax.random.key(2 * i), 0.02)
        grads = materialize(abstract, jax.random.key(2 * i + 1), 1e-3)
        by_tree[tree] = []
        for name, pair in optimizers.items():
            progress(f"step time: {name} on {tree}")
            result = time_pair(name, pair, tree, params, grads, sizes)
            release(result)
            by_tree[tree].append(result)
        del params, grads

    report.add(
        f"## Step time\n\nMedian seconds per jitted, donated `update + apply_updates` step over "
        f"{plural(sizes.repeats, 'alternating run')} (ours, Optax, ours, ...) of {plural(sizes.steps, 'step')} each; "
        "ratio = ours / Optax. "
        "Spread = (max - min) / median of the runs, the larger of the two; ratios within it are noise. "
        "Max abs diff compares the final params of the two runs (same start, same grads, same number of steps).\n"
    )
    for tree, results in by_tree.items():
        report.add(f"### {tree}\n\n" + step_time_table(results))

    report.add(
        "## Achieved bandwidth\n\n"
        "Bytes a step must move at least, over its median time. "
        "bytes = 2 x params (read, write) + 1 x grads (read) + 2 x optimizer state (read, write), "
        "all float32 here: 12 B/param for SGD, 20 with a momentum buffer, 28 for Adam. "
        "LARS and LAMB need a norm of each leaf before scaling it, so they cannot reach it in one pass. "
        f"Reference: STREAM triad `x <- x + s*y` (x donated, 12 B/element) over {millions(reference_elements)} "
        f"float32 elements, jitted, in this run: **{reference / 1e9:.1f} GB/s**"
        + (" (the device's achievable HBM bandwidth)" if jax.default_backend() != "cpu" else "")
        + ".\n"
    )
    for tree, results in by_tree.items():
        report.add(f"### {tree}\n\n" + bandwidth_table(results, reference))

    report.add(
        "## Memory\n\n"
        "From `compiled.memory_analysis()` of the donated step: arguments (params, state, grads), outputs, "
        "outputs aliased to donated arguments, and XLA's temporary buffers; peak where the backend reports it. "
        "State B/param = bytes of all state leaves / number of params.\n"
    )
    for tree, results in by_tree.items():
        report.add(f"### {tree}\n\n" + memory_table(results))


def compile_section(report: Report, optimizers: dict[str, SeedOptimizer], sizes: Sizes, shapes: Any, tree: str) -> None:
    first = next(iter(optimizers.values()))
    # Discarded compilations: first-use costs (MLIR context, lazy imports) then hit neither side's numbers.
    compile_once(first.ours(first.learning_rate), jz.apply_updates, shapes, first.extra_args)
    compile_once(first.optax(first.learning_rate), optax.apply_updates, shapes, first.extra_args)
    results = []
    for name, pair in optimizers.items():
        progress(f"compile time: {name}")
        results.append(time_compilation(name, pair, shapes, sizes.compile_repeats))
    report.add(
        f"## Compile time\n\nThe donated step on the {tree} tree, from abstract inputs. "
        "lower = tracing the Python code and lowering to StableHLO; XLA = `lowered.compile()`. "
        f"Median of {plural(sizes.compile_repeats, 'alternating compilation')}, each after `jax.clear_caches()` "
        "with the persistent compilation cache off; ratio = ours / Optax of the total.\n\n"
        + compile_table(results)
    )


# ---------------------------------------------------------------------------- low-bit state

FLOOR = "8-bit arithmetic, one pass"
STORAGES: dict[str, Any] = {
    "float32": None,
    "bfloat16": jnp.bfloat16,
    "bfloat16 SR": jz.StochasticBF16(),
    "8-bit": jz.Blockwise8Bit(),
}


def eight_bit_arithmetic(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> jz.GradientTransformation:
    """Not an optimizer: the per-element arithmetic of an 8-bit Adam step in one pass, a lower bound on its time.

    Decodes both moments from their packed leaves (codes and scales, as
    ``Blockwise8Bit`` stores them), updates them, computes the direction and
    encodes both new moments (stochastic rounding with the step-and-position
    hash, non-finite check included) against the old scales, but writes only
    the params: the codes are folded into the update at 1e-30 weight, below
    float32 resolution, so they must be computed and nothing else is stored.
    What it leaves out is what a real step needs on top: the block maxima of the
    new moments and the stores of the packed leaves (codes and scale bytes). One
    kernel writing the params and the packed leaves, which XLA:CPU does not build
    (it emits one loop per output, each recomputing the moments), would take at
    least this long, plus those.
    """
    adam = jz.scale_by_adam(b1, b2, eps, mu_dtype=jz.Blockwise8Bit(), nu_dtype=jz.Blockwise8Bit())
    quantization = jz.quantization

    def blocked(x: jax.Array, like: jax.Array) -> jax.Array:
        return x.reshape(like.shape)

    def leaf(g: jax.Array, mu: jax.Array, nu: jax.Array, step: jax.Array) -> jax.Array:
        m = b1 * quantization.dequantize(mu) + (1 - b1) * g
        v = b2 * quantization.dequantize(nu) + (1 - b2) * g * g
        codes = []
        for x, stored, signed in [(m, mu, True), (v, nu, False)]:
            old_codes, scales = quantization.unpack(stored)
            position = jax.lax.broadcasted_iota(jnp.int32, old_codes.shape, old_codes.ndim - 1)
            inverse = jnp.where(scales > 0, 1 / scales, 0.0)[..., None]
            codes.append(quantization.encode(blocked(x, old_codes) * inverse, signed, step, position).reshape(x.shape))
        return -lr * m / (jnp.sqrt(v) + eps) + 1e-30 * sum(c.astype(jnp.float32) for c in codes)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        step = state.count + 1
        return jax.tree.map(lambda g, m, v: leaf(g, m, v, step), updates, state.mu, state.nu), state

    return jz.GradientTransformation(adam.init, update)


def lowbit_section(report: Report, sizes: Sizes, shapes: dict[str, Any]) -> None:
    """Adam with its moments in float32, bfloat16 (rounded to nearest or stochastically), 8 bits: single-leaf tree."""
    tree, abstract = next(iter(shapes.items()))
    n = count_params(abstract)
    progress(f"low-bit state: triad over {millions(n)} float32 elements")
    reference = triad_bandwidth(n, sizes)
    params = materialize(abstract, jax.random.key(0), 0.02)
    grads = materialize(abstract, jax.random.key(1), 1e-3)
    runs = {}
    for name, storage in STORAGES.items():
        progress(f"low-bit state: adam with {name} moments on {tree}")
        runs[name] = contender(jz.adam(1e-3, mu_dtype=storage, nu_dtype=storage), jz.apply_updates, params, grads)
        runs[name].run(grads, 1)
    progress(f"low-bit state: the 8-bit arithmetic in one pass on {tree}")
    runs[FLOOR] = contender(eight_bit_arithmetic(), jz.apply_updates, params, grads)
    runs[FLOOR].run(grads, 1)
    for _ in range(sizes.repeats):
        for c in runs.values():
            with without_gc():
                c.times.append(c.run(grads, sizes.steps))
    params_bytes = tree_bytes(params)
    base = statistics.median(runs["float32"].times)
    rows = []
    for name, c in runs.items():
        seconds = statistics.median(c.times)
        moved = 3 * params_bytes + (1 if name == FLOOR else 2) * c.state_bytes  # the floor writes no state
        rows.append([
            name, f"{c.state_bytes / n:.3f}", f"{1e3 * seconds:.3f}", f"{seconds / base:.2f}",
            f"{100 * noise(c.times):.0f}%", f"{moved / n:.1f}", f"{moved / seconds / 1e9:.1f}",
            f"{100 * moved / seconds / reference:.0f}%", f"{c.memory.temp_size_in_bytes / MIB:.1f}",
        ])
        c.compiled = c.params = c.state = None
    report.add(
        f"## Low-bit state\n\n`jz.adam(1e-3, mu_dtype=S, nu_dtype=S)` on the {tree} tree, for each storage S, "
        f"{plural(sizes.repeats, 'alternating run')} of {plural(sizes.steps, 'jitted, donated step')}; ratio = time / float32's. "
        "State B/param counts every state array (packed codes and scales, step count). "
        "bfloat16 rounds each write to nearest, bfloat16 SR stochastically (`jz.StochasticBF16`). "
        "bytes/param = 3 x 4 (params read and written, grads read) + 2 x state (read and written), the least a step moves; "
        f"GB/s = that over the median time; triad in this run: {reference / 1e9:.1f} GB/s. "
        "temp = XLA's temporary buffers (`memory_analysis`). "
        f"'{FLOOR}' is not an optimizer but a lower bound on the 8-bit step: its arithmetic (decode, update, "
        "encode both moments against the old scales) in one loop that writes only the params (`eight_bit_arithmetic`); "
        "it leaves out the block maxima and the stores of the packed leaves.\n\n"
        + table(["moments", "state B/param", "ms", "ratio", "spread", "bytes/param", "GB/s", "of triad", "temp MiB"], rows)
    )


PARTS = ("step", "compile", "lowbit", "muon", "kronecker")
TREES = ("single", "many", "transformer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked: a bad value stops here, before any measurement, naming the option."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny trees and one repeat: a smoke test")
    parser.add_argument("--repeats", type=at_least(1),
                        help="timed runs per optimizer and library (default 7, --quick 1)")
    parser.add_argument("--steps", type=at_least(1), help="steps per timed run (default 5 on CPU, 20 on accelerators)")
    parser.add_argument("--compile-repeats", type=at_least(1),
                        help="compilations per optimizer and library (default 3, --quick 1)")
    parser.add_argument("--optimizers", type=names,
                        help="comma-separated subset for parts step and compile, e.g. adam,adamw,lamb (default all; "
                        "on a CPU all but " + ", ".join(sorted(SLOW_ON_CPU)) + "); the other parts run their own "
                        "fixed sets")
    parser.add_argument(
        "--parts", type=names, default=",".join(PARTS),
        help="any of step (time, bandwidth, memory), compile, "
        "lowbit (Adam with float32, bfloat16, bfloat16 SR, 8-bit moments), "
        "muon (Newton-Schulz time against its matrix products alone), "
        "kronecker (Shampoo, SOAP, PSGD-Kron against AdamW on the transformer tree) (default all)",
    )
    parser.add_argument("--torch-python", help="a Python with torch and heavyball: part kronecker times heavyball's SOAP")
    parser.add_argument(
        "--trees", type=names, default=",".join(TREES),
        help="part step's trees: any of single (one big leaf), many (1024 small leaves), transformer (default all)",
    )
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results.md",
                        help="the markdown report, rewritten as each section is finished (default %(default)s)")
    args = parser.parse_args(argv)
    if set(args.parts) - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}; got {', '.join(args.parts)}")
    if set(args.trees) - set(TREES):
        parser.error(f"--trees takes {', '.join(TREES)}; got {', '.join(args.trees)}")
    try:
        args.selected = select(args.optimizers)
    except ValueError as error:
        parser.error(f"--optimizers: {error}")
    writable(parser, "--output", args.output)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Compile times must not come from a cache on disk.
    jax.config.update("jax_enable_compilation_cache", False)
    measure(args)


def measure(args: argparse.Namespace) -> None:
    """The parts ``args`` (from :func:`parse_args`) asks for, each section printed and written as it is finished."""
    parts, trees = set(args.parts), args.trees
    backend = jax.default_backend()
    size = "quick" if args.quick else "cpu" if backend == "cpu" else "accelerator"
    sizes = SIZES[size]
    overrides = {"repeats": args.repeats, "steps": args.steps, "compile_repeats": args.compile_repeats}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    optimizers = args.selected
    if args.optimizers is None and backend == "cpu" and not args.quick:
        optimizers = {name: pair for name, pair in optimizers.items() if name not in SLOW_ON_CPU}
    shapes = tree_shapes(sizes)

    # --optimizers reaches parts step and compile only: the others say which optimizers they run.
    chosen = [p for p in ("step", "compile") if p in parts]
    fixed = [p for p in PARTS if p in parts and p not in chosen]
    report = Report(args.output, machine_header(
        "jaxopt_zoo vs Optax: step time, bandwidth, memory, compile time",
        f"{'quick' if args.quick else 'full'} sizes for {backend}; {plural(sizes.repeats, 'repeat')} of "
        f"{plural(sizes.steps, 'step')}; {plural(sizes.compile_repeats, 'compilation')}; "
        f"parts: {', '.join(p for p in PARTS if p in parts)}"
        + (f"; optimizers of {' and '.join(chosen)}: {', '.join(optimizers)}" if chosen else "")
        + (f"; {', '.join(fixed)}: fixed optimizers, named in {'its' if len(fixed) == 1 else 'their'} sections"
           if fixed else "")
        + ("" if len(set(trees)) == 3 or "step" not in parts else f"; step's trees: {', '.join(trees)}"),
    ))
    if "step" in parts:
        by_kind = dict(zip(TREES, shapes))  # tree_shapes' order
        step_sections(report, optimizers, sizes, {by_kind[t]: shapes[by_kind[t]] for t in by_kind if t in trees})
    if "compile" in parts:
        many = list(shapes)[1]
        compile_section(report, optimizers, sizes, shapes[many], many)
    if "lowbit" in parts:
        lowbit_section(report, sizes, shapes)
    if "muon" in parts:
        report.add(newton_schulz_section(size, sizes.repeats, sizes.steps))
        report.add(layer_sharded_section(size, sizes.repeats, sizes.steps))
    if "kronecker" in parts:
        transformer = list(shapes.values())[2]
        report.add(kronecker_section(transformer, sizes.repeats, torch_python=args.torch_python))
        report.add(kronecker_compile_section(transformer, sizes.compile_repeats))
        report.add(sharded_section(size))
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
