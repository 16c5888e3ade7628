"""Convergence of the seed optimizers on the digits MLP and on Rosenbrock, with one tuning budget for all.

    python benchmarks/convergence.py            # ~1-2 min on 2 CPU cores
    python benchmarks/convergence.py --quick    # smoke test: few steps, three rates, two seeds

Protocol, for each problem and optimizer (ours; Optax's twins follow the same
trajectories, which the tests check):

1. Tune: the same log-spaced learning-rate grid for every optimizer, all rates
   run at once (vmapped; one after another for the Kronecker preconditioners,
   ``REFRESH_UNDER_COND``) from seed 0. The rate with the lowest training loss
   averaged over the last tenth of the steps wins; a diverged run never does.
2. Evaluate: seeds 1..N (not the tuning seed, so that the rate is not graded on
   the run it was picked on) at the chosen rate. On the digits a seed is the
   MLP's initial weights (the train/test split stays fixed, so accuracies are
   comparable); on Rosenbrock it is a starting point drawn around the classic
   (-1.5, 2).

Reports median [min, max] over the seeds of the final training loss, the test
accuracy (digits), and the first step whose loss is below a target, and writes
the tables to --output. Optimizers whose training point is not the point to evaluate
(Schedule-Free) are measured where their authors evaluate them: every loss and
the accuracy at ``schedule_free_eval_params`` (seed_optimizers' ``evaluate_at``).

Every seed optimizer runs but those that read the loss value (polyak_sgd, lbfgs, momo, momo_adam, sophia: their
entries' ``extra_args``), which these training loops do not pass; the report's header says so, and
``--optimizers`` naming one of them is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
from compare_optimizers import best_rate, descend, rosenbrock, train  # noqa: E402
from train_digits import Classifier, load_data  # noqa: E402

from arguments import at_least, names, writable  # noqa: E402
from report import machine_header, number, spread, table  # noqa: E402
from seed_optimizers import SEED_OPTIMIZERS, SeedOptimizer, select  # noqa: E402

ROSENBROCK_START = (-1.5, 2.0)


@dataclasses.dataclass(frozen=True)
class Settings:
    digits_steps: int
    digits_rates: np.ndarray
    digits_target: float  # training cross-entropy
    rosenbrock_steps: int
    rosenbrock_rates: np.ndarray
    rosenbrock_target: float
    seeds: int


FULL = Settings(
    digits_steps=300,
    digits_rates=np.logspace(-4, 2, 13),  # half-decade steps; LARS and Adadelta want rates of 1 and more
    digits_target=0.05,
    rosenbrock_steps=1000,
    rosenbrock_rates=np.logspace(-5, 2, 15),  # plain SGD needs ~1e-4 on Rosenbrock's steep walls
    rosenbrock_target=1e-3,
    seeds=5,
)
QUICK = dataclasses.replace(
    FULL,
    digits_steps=40,
    digits_rates=np.array([1e-3, 3e-2, 1.0]),
    rosenbrock_steps=200,
    rosenbrock_rates=np.array([1e-4, 1e-2, 1.0]),
    seeds=2,
)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One optimizer on one problem: the tuning's choice and the evaluation seeds' results."""

    optimizer: str
    rate: float
    on_grid_edge: bool  # the best rate is the smallest or largest tried: the grid may be too narrow for it
    final_losses: np.ndarray  # per seed
    steps_to_target: np.ndarray  # per seed; inf where never reached
    accuracies: np.ndarray | None = None  # per seed, digits only


def tail_mean(losses: np.ndarray) -> np.ndarray:
    """Mean of the last tenth of each run's losses.

    A run oscillating at the edge of stability then cannot win on one lucky step.
    """
    tail = max(1, losses.shape[-1] // 10)
    return losses[..., -tail:].mean(axis=-1)


def first_below(losses: np.ndarray, target: float) -> np.ndarray:
    """Per run, the first step whose loss is below target (inf if none): losses[..., t] is the loss after t steps."""
    below = losses < target
    return np.where(below.any(axis=-1), below.argmax(axis=-1), np.inf)


# Optimizers that refresh their preconditioners every k steps under lax.cond: under vmap a cond whose
# predicate is batched becomes a select that runs the refresh (eigendecompositions, roots) at every step,
# so their rates and seeds run one after another (lax.map), each run skipping the refresh as it would alone.
REFRESH_UNDER_COND = {"soap", "shampoo", "psgd_kron"}


def over_runs(run: Callable, in_axes: tuple[int | None, int | None], sequential: bool) -> Callable:
    """``run`` over a batch of inputs (``in_axes=(0, None)``) or of rates (``(None, 0)``), jitted."""
    if not sequential:
        return jax.jit(jax.vmap(run, in_axes=in_axes))
    if in_axes == (None, 0):
        return jax.jit(lambda x, rates: jax.lax.map(lambda rate: run(x, rate), rates))
    return jax.jit(lambda xs, rate: jax.lax.map(lambda x: run(x, rate), xs))


def tune_and_evaluate(
    name: str, run: Callable, tuning_input: Any, seed_inputs: Any, rates: np.ndarray, target: float
) -> Outcome:
    """Tune, then evaluate: ``run(input, rate) -> (losses, accuracy)``.

    Over the rates at the tuning input, then over the seeds' inputs at the best rate.
    """
    sequential = name in REFRESH_UNDER_COND
    losses, _ = over_runs(run, (None, 0), sequential)(tuning_input, jnp.asarray(rates))
    best = best_rate(tail_mean(np.asarray(losses)))
    losses, accuracies = over_runs(run, (0, None), sequential)(seed_inputs, jnp.asarray(rates[best]))
    losses = np.asarray(losses)
    return Outcome(
        optimizer=name,
        rate=float(rates[best]),
        on_grid_edge=best in (0, len(rates) - 1),
        final_losses=losses[:, -1],
        steps_to_target=first_below(losses, target),
        accuracies=None if accuracies is None else np.asarray(accuracies),
    )


def digits(optimizers: dict[str, SeedOptimizer], settings: Settings, data: tuple[jax.Array, ...]) -> list[Outcome]:
    """``data`` is ``(x_train, y_train, x_test, y_test)``, as compare_optimizers.train takes it."""
    graphdef, tuning_params = nnx.split(Classifier(nnx.Rngs(0)))
    seed_params = [nnx.split(Classifier(nnx.Rngs(seed)))[1] for seed in range(1, settings.seeds + 1)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *seed_params)
    outcomes = []
    for name, entry in optimizers.items():
        print(f"digits: {name}", file=sys.stderr, flush=True)

        def run(params: Any, rate: jax.Array, entry: SeedOptimizer = entry) -> tuple[jax.Array, jax.Array]:
            # compare_optimizers.train closes over its initial model; merging it here
            # makes the weights an input, so vmap can run several seeds at once.
            model = nnx.merge(graphdef, params)
            return train(entry.ours, model, data, settings.digits_steps, entry.evaluate_at)(rate)

        outcomes.append(
            tune_and_evaluate(name, run, tuning_params, stacked, settings.digits_rates, settings.digits_target)
        )
    return outcomes


def rosenbrock_starts(seeds: int) -> jax.Array:
    """Seed k's starting point: the classic start moved by up to 0.5 in each coordinate."""
    offsets = [np.random.default_rng(seed).uniform(-0.5, 0.5, 2) for seed in range(1, seeds + 1)]
    return jnp.asarray(np.array(ROSENBROCK_START) + np.stack(offsets), jnp.float32)


def rosenbrock_outcomes(optimizers: dict[str, SeedOptimizer], settings: Settings) -> list[Outcome]:
    outcomes = []
    for name, entry in optimizers.items():
        print(f"rosenbrock: {name}", file=sys.stderr, flush=True)

        def run(start: jax.Array, rate: jax.Array, entry: SeedOptimizer = entry) -> tuple[jax.Array, None]:
            path = descend(entry.ours, rosenbrock, start, settings.rosenbrock_steps, entry.evaluate_at)(rate)
            return jax.vmap(rosenbrock)(path), None

        outcomes.append(tune_and_evaluate(
            name, run, jnp.array(ROSENBROCK_START), rosenbrock_starts(settings.seeds),
            settings.rosenbrock_rates, settings.rosenbrock_target,
        ))
    return outcomes


def steps_cell(steps: np.ndarray) -> str:
    shown = ["never" if np.isinf(s) else str(int(s)) for s in (np.median(steps), steps.min(), steps.max())]
    return f"{shown[0]} [{shown[1]}, {shown[2]}]"


def outcome_table(outcomes: list[Outcome], target: float) -> str:
    with_accuracy = outcomes[0].accuracies is not None
    headers = ["optimizer", "learning rate", "final loss", *(["test accuracy"] if with_accuracy else []),
               f"steps to loss < {target:g}", "reached"]
    rows = []
    for o in outcomes:
        accuracy = [spread(o.accuracies.tolist())] if o.accuracies is not None else []
        rate = number(o.rate) + (" (grid edge)" if o.on_grid_edge else "")
        reached = f"{int(np.isfinite(o.steps_to_target).sum())}/{len(o.steps_to_target)}"
        steps = steps_cell(o.steps_to_target)
        rows.append([o.optimizer, rate, spread(o.final_losses.tolist()), *accuracy, steps, reached])
    return table(headers, rows)


def grid(rates: np.ndarray) -> str:
    return f"{len(rates)} rates from {number(rates[0])} to {number(rates[-1])}, log-spaced"


# The loops here (compare_optimizers.py's) pass no keywords to update: the rules that read the loss value (their
# seed_optimizers entry has extra_args: value=, value_fn=, obj_fn=) cannot run in them.
NEEDS_THE_LOSS = [name for name, entry in SEED_OPTIMIZERS.items() if entry.extra_args is not None]
WHY_LEFT_OUT = "they read the loss value (update(..., value=...)), which this benchmark's training loops do not pass"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked: a bad value stops here, before any training, naming the option."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps, three rates, two seeds: a smoke test")
    parser.add_argument("--seeds", type=at_least(1), help="evaluation seeds (default 5, --quick 2)")
    parser.add_argument("--optimizers", type=names,
                        help=f"comma-separated subset, e.g. adam,lamb (default all but {', '.join(NEEDS_THE_LOSS)}: "
                        f"{WHY_LEFT_OUT})")
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path(__file__).parent / "convergence.md",
                        help="the markdown report (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        selected = select(args.optimizers)
    except ValueError as error:
        parser.error(f"--optimizers: {error}")
    refused = [name for name in selected if name in NEEDS_THE_LOSS]
    if args.optimizers is not None and refused:
        parser.error(f"--optimizers: cannot run {', '.join(refused)}: {WHY_LEFT_OUT}")
    args.selected = {name: entry for name, entry in selected.items() if name not in NEEDS_THE_LOSS}
    writable(parser, "--output", args.output)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.seeds is not None:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    optimizers = args.selected

    seeds = "seed 1" if settings.seeds == 1 else f"seeds 1-{settings.seeds}"
    left_out = ("" if args.optimizers is not None else
                f"; left out: {', '.join(NEEDS_THE_LOSS)} ({WHY_LEFT_OUT})")
    sections = [machine_header(
        "jaxopt_zoo convergence: digits MLP and Rosenbrock",
        f"{'quick' if args.quick else 'full'}; tuning on seed 0, evaluation on {seeds}; "
        f"cells are median [min, max] over the evaluation seeds{left_out}",
    )]
    print(sections[0], flush=True)
    x_train, x_test, y_train, y_test = load_data(0)  # the split of train_digits.py and compare_optimizers.py
    data = tuple(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test))
    problems = [
        (f"## Digits MLP\n\n64-128-10 MLP (examples/train_digits.py), {settings.digits_steps} full-batch steps on "
         f"{len(x_train)} images; learning rates tried: {grid(settings.digits_rates)}. Final loss is the training "
         f"cross-entropy at the last step; accuracy is on the {len(x_test)} held-out images.\n",
         lambda: digits(optimizers, settings, data), settings.digits_target),
        (f"## Rosenbrock\n\n(1 - x)^2 + 100 (y - x^2)^2, {settings.rosenbrock_steps} steps; tuning from "
         f"{ROSENBROCK_START}, seeds from it moved by up to 0.5 per coordinate; learning rates tried: "
         f"{grid(settings.rosenbrock_rates)}. The minimum is 0 at (1, 1).\n",
         lambda: rosenbrock_outcomes(optimizers, settings), settings.rosenbrock_target),
    ]
    for heading, solve, target in problems:
        section = heading + "\n" + outcome_table(solve(), target)
        print(section, flush=True)
        sections.append(section)
    args.output.write_text("\n".join(sections))
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
