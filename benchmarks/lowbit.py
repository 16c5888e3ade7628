"""Accuracy of low-bit AdamW state: fp32 against 8-bit and bfloat16 moments (rounded to nearest or stochastically),
and against bfloat16 params (rounded either way); same data and init per seed.

    python benchmarks/lowbit.py            # about 20 minutes on 2 CPU cores (937 s for the four moment rows)
    python benchmarks/lowbit.py --quick    # smoke test: two seeds, few steps (< 40 s)
    python benchmarks/lowbit.py --storages fp32,8-bit,8-bit-mu,8-bit-nu   # which moment costs accuracy

Every run is AdamW written as its recipe,
``chain(scale_by_adam(mu_dtype=S, nu_dtype=S), add_decayed_weights(wd, mask=kernels), scale_by_learning_rate(schedule))``,
with the moments' storage ``S`` the only thing that differs between the runs of a seed:

* ``fp32``: float32 moments (the default);
* ``8-bit``: :class:`jaxopt_zoo.Blockwise8Bit` (``max_shards=1``: blocks of up
  to 256 whatever the device count) for both moments (leaves of at least 4096
  elements are quantized, smaller ones stay float32);
* ``bf16``: both moments stored as ``jnp.bfloat16`` (each write rounds to nearest);
* ``bf16-SR``: both moments stored as :class:`jaxopt_zoo.StochasticBF16`,
  bfloat16 written with stochastic rounding (2 bytes per element, like ``bf16``);
* ``bf16-params`` / ``bf16-params-SR`` / ``bf16-params-Kahan``: the model's
  params themselves in bfloat16 (no float32 master copy; float32 moments), each
  step's sum rounded to nearest / stochastically
  (:func:`jaxopt_zoo.round_params_stochastically` last in the chain) / to nearest
  with what it drops carried to the next step in a bfloat16 compensation
  (:func:`jaxopt_zoo.compensate_params_rounding`); the model computes in the
  dtype Flax promotes to;
* ``fp32-ulp``, a control run by default on the digits: fp32 again, with every
  initial weight moved up by one ulp. How far that alone moves the final loss
  shows how much of a ratio is the chaos of training rather than the storage;
* diagnostics, not run by default: ``8-bit-mu`` / ``8-bit-nu`` quantize only
  the first / second moment.

Two tasks, each trained for ``--seeds`` seeds; a seed fixes the initial weights
and the minibatch order, identical for every storage:

* **digits**: a 64-256-256-10 MLP on scikit-learn's bundled digits (the split
  of examples/train_digits.py), minibatches of 64 with a cosine learning rate;
  its two large kernels hold 96% of the parameters, so they really are quantized.
* **char LM**: a 2-layer causal transformer (d_model 128, 4 heads, context 64)
  predicting the next character of Python's own help texts
  (``pydoc_data.topics``, in the standard library, so nothing is downloaded);
  the last tenth of the text is held out.

Reported per task and storage: the final training loss (mean minibatch loss
over the last tenth of the steps) and the held-out loss, as median [min, max]
over the seeds; the ratio of each seed's loss to the fp32 run of the same
seed (median [min, max] over the seeds); for scale, the fp32 seeds' own
spread; the fraction of parameters whose moments are stored as 8-bit codes; and the
optimizer state's bytes per parameter (all state arrays, counts and scales
included). The whole training run of a seed is one jitted ``lax.scan``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
from char_lm import CharLM, cross_entropy, load_text  # noqa: E402  (examples/char_lm.py: the same model and text)
from train_digits import load_data  # noqa: E402

import jaxopt_zoo as jz  # noqa: E402
from jaxopt_zoo.quantization import is_encoded  # noqa: E402
from jaxopt_zoo.storage import state_bytes  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from arguments import at_least, names, writable  # noqa: E402
from report import machine_header, plural, spread, table  # noqa: E402

# Every run here is on one device. Blockwise8Bit's default max_shards is jax.device_count(), which would make
# the blocks depend on how many devices the process sees (under tests/conftest.py's 8 simulated CPU devices a
# 64-wide last axis could not be split into blocks of 16 or more and would stay float32): fix it to one.
EIGHT_BIT = jz.Blockwise8Bit(max_shards=1)
# name: (mu storage, nu storage)
STORAGES: dict[str, tuple[Any, Any]] = {
    "fp32": (None, None),
    "8-bit": (EIGHT_BIT, EIGHT_BIT),
    "bf16": (jnp.bfloat16, jnp.bfloat16),
    "bf16-SR": (jz.StochasticBF16(), jz.StochasticBF16()),
    "8-bit-mu": (EIGHT_BIT, None),
    "8-bit-nu": (None, EIGHT_BIT),
    "fp32-ulp": (None, None),  # control: fp32, with every initial weight moved up by one ulp
    "bf16-params": (jnp.float32, jnp.float32),
    "bf16-params-SR": (jnp.float32, jnp.float32),
    "bf16-params-Kahan": (jnp.float32, jnp.float32),
}
BF16_PARAMS = ("bf16-params", "bf16-params-SR", "bf16-params-Kahan")  # runs whose params are bfloat16 (not moments)
# The one-ulp control is cheap on the digits, where the loss nears 0 and ratios are sensitive.
DEFAULT_STORAGES = {
    "digits": ("fp32", "8-bit", "bf16", "bf16-SR", *BF16_PARAMS, "fp32-ulp"),
    "lm": ("fp32", "8-bit", "bf16", "bf16-SR", *BF16_PARAMS),
}
TARGET = 1.02  # the issue's bar: 8-bit final loss within 2% of fp32's (and the goal for bf16-SR)
JUDGED = ("8-bit", "bf16-SR")  # storages whose per-seed ratios are held against TARGET


def kernels(params: Any) -> Any:
    """Weight-decay mask: matrices (and embeddings) decay, biases and norm scales do not."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def adamw(storage: str, learning_rate: Any, weight_decay: float) -> jz.GradientTransformation:
    """AdamW as its recipe, with the moments stored as ``STORAGES[storage]`` says (and the bfloat16 params'
    rounding changed for ``bf16-params-SR`` and ``bf16-params-Kahan``)."""
    mu_dtype, nu_dtype = STORAGES[storage]
    return jz.chain(
        jz.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        jz.add_decayed_weights(weight_decay, mask=kernels),
        jz.scale_by_learning_rate(learning_rate),
        *([jz.round_params_stochastically()] if storage == "bf16-params-SR" else []),
        *([jz.compensate_params_rounding()] if storage == "bf16-params-Kahan" else []),
    )


# ----------------------------------------------------------------------------- models


class MLP(nnx.Module):
    """64-width-width-10 ReLU MLP: the kernels of the two hidden layers have 64*width and width**2 elements."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(64, width, rngs=rngs)
        self.hidden2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


# ----------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: the compiled runs are cached per task
class Task:
    """A model, its data and its schedule; ``batches(seed)`` is the seed's minibatch order, the same for every storage.

    ``loss(model, data, batch)`` is the loss of one minibatch (``batch`` is one row
    of ``batches``), ``evaluate(model, data)`` the held-out metrics, a dict of scalars.
    """

    name: str
    description: str
    model: Callable[[int], nnx.Module]  # seed -> initial model
    data: tuple[jax.Array, ...]
    batches: Callable[[int], np.ndarray]  # seed -> (steps, ...) minibatch indices
    loss: Callable[[nnx.Module, tuple[jax.Array, ...], jax.Array], jax.Array]
    evaluate: Callable[[nnx.Module, tuple[jax.Array, ...]], dict[str, jax.Array]]
    learning_rate: Any
    weight_decay: float
    steps: int


def digits_task(steps: int, width: int = 256, batch_size: int = 64, peak_rate: float = 3e-3) -> Task:
    x_train, x_test, y_train, y_test = load_data(0)  # the split of examples/train_digits.py
    data = tuple(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test))
    per_epoch = len(x_train) // batch_size

    def batches(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        epochs = [rng.permutation(len(x_train))[: per_epoch * batch_size] for _ in range(-(-steps // per_epoch))]
        return np.concatenate(epochs).reshape(-1, batch_size)[:steps].astype(np.int32)

    def loss(model, data, batch):
        x, y = data[0][batch], data[1][batch]
        return cross_entropy(model(x), y)

    def evaluate(model, data):
        logits = model(data[2])
        return {"held-out loss": cross_entropy(logits, data[3]), "accuracy": jnp.mean(jnp.argmax(logits, -1) == data[3])}

    return Task(
        name="digits",
        description=(
            f"64-{width}-{width}-10 ReLU MLP on scikit-learn's digits ({len(x_train)} training images, "
            f"{len(x_test)} held out), {steps} steps of minibatches of {batch_size} (reshuffled every epoch), "
            f"cosine learning rate from {peak_rate:g} to 0, weight decay 1e-4 on the kernels"
        ),
        model=lambda seed: MLP(width, nnx.Rngs(seed)),
        data=data,
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        learning_rate=jz.cosine_decay_schedule(peak_rate, steps),
        weight_decay=1e-4,
        steps=steps,
    )


def lm_task(
    steps: int,
    d_model: int = 128,
    heads: int = 4,
    layers: int = 2,
    context: int = 64,
    batch_size: int = 16,
    peak_rate: float = 3e-3,
    held_out_windows: int = 256,
) -> Task:
    text = load_text(context, held_out_windows)  # the training text and held-out windows of examples/char_lm.py
    data, train = (text.train, text.held_out), text.train

    def batches(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, len(train) - context - 1, (steps, batch_size)).astype(np.int32)

    def loss(model, data, batch):
        window = jax.vmap(lambda s: jax.lax.dynamic_slice(data[0], (s,), (context + 1,)))(batch)
        return cross_entropy(model(window[:, :-1]), window[:, 1:])

    def evaluate(model, data):
        return {"held-out loss": cross_entropy(model(data[1][:, :-1]), data[1][:, 1:])}

    warmup = max(1, steps // 20)
    return Task(
        name="char LM",
        description=(
            f"{layers}-layer causal transformer (d_model {d_model}, {heads} heads, context {context}, "
            f"vocabulary {text.vocab} characters) on Python's help texts (pydoc_data.topics, {text.characters:,} "
            f"characters; the last 10% held out, {held_out_windows} windows of it evaluated), {steps} steps of "
            f"{batch_size} random windows, learning rate warmed up over {plural(warmup, 'step')} to {peak_rate:g} "
            f"then cosine to 0, weight decay 0.1 on the kernels and embeddings"
        ),
        model=lambda seed: CharLM(text.vocab, d_model, heads, layers, context, nnx.Rngs(seed)),
        data=data,
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        learning_rate=jz.warmup_cosine_decay_schedule(0.0, peak_rate, warmup, steps),
        weight_decay=0.1,
        steps=steps,
    )


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class Run:
    """One task, storage and seed."""

    losses: np.ndarray  # per step (minibatch loss before the step's update)
    metrics: dict[str, float]  # held-out metrics after the last step
    state_bytes: int
    params: int
    quantized_params: int  # parameters whose moments (either of them) are stored as 8-bit codes
    seconds: float  # wall time of the run, compile included for the first seed of a storage
    cpu_seconds: float  # CPU time of this process over the run (all threads): less sensitive to a busy machine

    @property
    def final_loss(self) -> float:
        """Mean minibatch loss over the last tenth of the steps (one noisy minibatch is not a final loss)."""
        return float(self.losses[-max(1, len(self.losses) // 10) :].mean())


def quantized_count(params: Any, state: Any) -> int:
    """Parameters whose Adam moments (mu or nu) are stored as 8-bit codes (one packed int8/uint8 leaf each)."""
    adam = state[0]
    flags = [jax.tree.leaves(jax.tree.map(is_encoded, moment)) for moment in (adam.mu, adam.nu)]
    sizes = [p.size for p in jax.tree.leaves(params)]
    assert all(len(f) == len(sizes) for f in flags), "a moment's tree no longer matches the params'"
    return sum(size for size, mu, nu in zip(sizes, *flags) if mu or nu)


@functools.lru_cache(maxsize=None)
def _compiled(task: Task, storage: str) -> Callable:
    """The jitted training run of ``task`` with ``storage``; it takes the initial params and the batch order."""
    graphdef, _ = nnx.split(task.model(0))
    tx = adamw(storage, task.learning_rate, task.weight_decay)

    def run(params, data, batches):
        def step(carry, batch):
            params, state = carry
            loss, grads = jax.value_and_grad(lambda p: task.loss(nnx.merge(graphdef, p), data, batch))(params)
            updates, state = tx.update(grads, state, params)
            return (jz.apply_updates(params, updates), state), loss

        (params, state), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
        return losses, task.evaluate(nnx.merge(graphdef, params), data), state

    return jax.jit(run)


def train(task: Task, storage: str, seed: int) -> Run:
    _, params = nnx.split(task.model(seed))
    if storage == "fp32-ulp":
        params = jax.tree.map(lambda p: jnp.nextafter(p, jnp.inf), params)
    if storage in BF16_PARAMS:
        params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    start, cpu_start = time.perf_counter(), time.process_time()
    losses, metrics, state = jax.block_until_ready(
        _compiled(task, "fp32" if storage == "fp32-ulp" else storage)(params, task.data, jnp.asarray(task.batches(seed)))
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return Run(
        losses=np.asarray(losses),
        metrics={name: float(value) for name, value in metrics.items()},
        state_bytes=state_bytes(state),
        params=sum(p.size for p in jax.tree.leaves(params)),
        quantized_params=quantized_count(params, state),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


def train_all(task: Task, storages: list[str], seeds: list[int], log: Callable[[str], None] = print) -> dict:
    """``{storage: [Run per seed]}``."""
    runs = {}
    for storage in storages:
        runs[storage] = []
        for seed in seeds:
            run = train(task, storage, seed)
            runs[storage].append(run)
            log(f"{task.name} {storage} seed {seed}: final loss {run.final_loss:.4f}, "
                f"held-out {run.metrics['held-out loss']:.4f}, {run.seconds:.1f} s ({run.cpu_seconds:.1f} s CPU)")
    return runs


def ratios(runs: dict, storage: str, metric: Callable[[Run], float]) -> list[float]:
    """Per seed, ``metric`` of ``storage`` divided by that of the fp32 run of the same seed."""
    return [metric(run) / metric(base) for run, base in zip(runs[storage], runs["fp32"])]


def ratio_cell(values: list[float]) -> str:
    """Median [min, max] of per-seed ratios, to four decimals (a 2% bar needs them)."""
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def results_table(runs: dict) -> str:
    headers = ["storage", "final train loss", "ratio to fp32", "held-out loss",
               "ratio to fp32", *(["accuracy"] if "accuracy" in runs["fp32"][0].metrics else []),
               "quantized params", "state bytes / param"]
    rows = []
    for storage, seeds in runs.items():
        first = seeds[0]
        accuracy = [spread([r.metrics["accuracy"] for r in seeds])] if "accuracy" in first.metrics else []
        rows.append([
            storage,
            spread([r.final_loss for r in seeds]),
            ratio_cell(ratios(runs, storage, lambda r: r.final_loss)),
            spread([r.metrics["held-out loss"] for r in seeds]),
            ratio_cell(ratios(runs, storage, lambda r: r.metrics["held-out loss"])),
            *accuracy,
            f"{first.quantized_params / first.params:.1%}",
            f"{first.state_bytes / first.params:.2f}",
        ])
    return table(headers, rows)


def seed_spread(runs: dict) -> str:
    """How far the fp32 seeds are apart, to judge the ratios against: worst / best final loss among them."""
    final = [r.final_loss for r in runs["fp32"]]
    held_out = [r.metrics["held-out loss"] for r in runs["fp32"]]
    return (f"fp32 across seeds: final train loss max/min {max(final) / min(final):.4f}, "
            f"held-out loss max/min {max(held_out) / min(held_out):.4f}")


def per_seed_ratios(runs: dict, seeds: list[int]) -> str:
    """Every seed's final train loss over fp32's, for every storage but fp32: the cells above give only the extremes."""
    rows = [f"{storage} {', '.join(f'{x:.4f}' for x in ratios(runs, storage, lambda r: r.final_loss))}"
            for storage in runs if storage != "fp32"]
    return f"final train loss / fp32's per seed ({', '.join(map(str, seeds))}): " + "; ".join(rows)


def verdict(runs: dict, storage: str = "8-bit") -> str:
    """Whether ``storage`` met the target, read both ways: on the median over seeds and on every seed."""
    final = lambda r: r.final_loss  # noqa: E731
    per_seed = ratios(runs, storage, final)
    of_medians = statistics.median(map(final, runs[storage])) / statistics.median(map(final, runs["fp32"]))
    met = sum(r <= TARGET for r in per_seed)
    return (f"{storage} against the target (final train loss within {TARGET - 1:.0%} of fp32): median over seeds "
            f"{of_medians:.4f} x fp32's ({'met' if of_medians <= TARGET else 'MISSED'}); per seed met on "
            f"{met}/{len(per_seed)} seeds, worst {max(per_seed):.4f}")


def section(task: Task, runs: dict, seeds: list[int]) -> str:
    first = runs["fp32"][0] if "fp32" in runs else next(iter(runs.values()))[0]
    seconds = sum(r.seconds for seeds_runs in runs.values() for r in seeds_runs)
    cpu_seconds = sum(r.cpu_seconds for seeds_runs in runs.values() for r in seeds_runs)
    lines = [
        f"## {task.name}\n",
        f"{task.description}. {first.params:,} parameters; "
        f"{f'seed {seeds[0]}' if len(seeds) == 1 else f'seeds {seeds[0]}-{seeds[-1]}'}; "
        f"{seconds:.0f} s of training, {cpu_seconds:.0f} s CPU (compile included).\n",
        results_table(runs),
        f"- {seed_spread(runs)}",
        f"- {per_seed_ratios(runs, seeds)}",
    ]
    if "fp32-ulp" in runs:
        worst = max(abs(r - 1) for r in ratios(runs, "fp32-ulp", lambda r: r.final_loss))
        lines.append(f"- control: moving every initial weight by one ulp alone changes the fp32 final train loss by "
                     f"up to {worst:.2%} (chaos of training, not storage)")
    for storage in JUDGED:
        if storage in runs:
            lines.append(f"- {verdict(runs, storage)}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Settings:
    digits_steps: int
    lm_steps: int
    seeds: int
    lm_kwargs: dict = dataclasses.field(default_factory=dict)


FULL = Settings(digits_steps=630, lm_steps=500, seeds=5)  # 630 digits steps: 30 epochs of 21 minibatches
QUICK = Settings(digits_steps=105, lm_steps=60, seeds=2,
                 lm_kwargs=dict(d_model=64, layers=1, context=32, batch_size=16, held_out_windows=64))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked: a bad value stops here, before any training, naming the option."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two seeds, few steps, a tiny LM: a smoke test")
    parser.add_argument("--seeds", type=at_least(1), help="seeds 0..N-1 (default 5, --quick 2)")
    parser.add_argument("--steps", type=at_least(1),
                        help="training steps of both tasks (default digits 630, LM 500; the LM needs >= 2)")
    parser.add_argument("--tasks", type=names, default="digits,lm", help="comma-separated subset of digits,lm")
    parser.add_argument("--storages", type=names,
                        help=f"comma-separated, fp32 first, for every task; from {', '.join(STORAGES)} "
                        "(default all but the 8-bit-mu/-nu diagnostics, fp32-ulp only on the digits)")
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path(__file__).parent / "lowbit.md",
                        help="the markdown report (default %(default)s)")
    args = parser.parse_args(argv)
    if args.storages is not None and (set(args.storages) - set(STORAGES) or args.storages[0] != "fp32"):
        parser.error(f"--storages must start with fp32 and name only {', '.join(STORAGES)}; "
                     f"got {', '.join(args.storages)}")
    if set(args.tasks) - {"digits", "lm"}:
        parser.error(f"--tasks names digits and/or lm; got {', '.join(args.tasks)}")
    if args.steps == 1 and "lm" in args.tasks:
        parser.error("--steps must be >= 2 for task lm, got 1: its schedule warms up over at least one step, "
                     "then decays over the rest")
    writable(parser, "--output", args.output)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.seeds is not None:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    if args.steps is not None:
        settings = dataclasses.replace(settings, digits_steps=args.steps, lm_steps=args.steps)
    storages, tasks = args.storages, args.tasks
    seeds = list(range(settings.seeds))

    start, cpu_start = time.perf_counter(), time.process_time()
    sections = [machine_header(
        "jaxopt_zoo low-bit optimizer state: AdamW with fp32, 8-bit, bf16 and bf16-SR moments, and bf16 params",
        f"{'quick' if args.quick else 'full'}; {plural(len(seeds), 'seed')}, each with the same initial weights and minibatch "
        "order for every storage; cells are median [min, max] over the seeds, ratios are per seed against fp32",
    )]
    print(sections[0], flush=True)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    for name in tasks:
        task = digits_task(settings.digits_steps) if name == "digits" else lm_task(settings.lm_steps, **settings.lm_kwargs)
        chosen = storages if args.storages is not None else DEFAULT_STORAGES[name]
        text = section(task, train_all(task, chosen, seeds, log), seeds)
        print(text, flush=True)
        sections.append(text)
    footer = f"Total {time.perf_counter() - start:.0f} s, {time.process_time() - cpu_start:.0f} s CPU.\n"
    print(footer)
    sections.append(footer)
    args.output.write_text("\n".join(sections))
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
