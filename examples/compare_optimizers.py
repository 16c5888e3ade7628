"""Compare twelve classic jaxopt_zoo optimizers on two classic 2-D functions and on the digits MLP.

    python examples/compare_optimizers.py          # under a minute on 2 CPU cores
    python examples/compare_optimizers.py --fast   # a smoke run (~20 s): few steps, two rates
    python examples/compare_optimizers.py --optimizers adam,lamb   # a subset

Each optimizer is built from its alias with only the learning rate varied, and
every one gets the same learning-rate sweep (one log grid per part); the rate
with the lowest final loss wins, a diverged run never does. Prints the chosen
rates with their losses, with a progress bar on a terminal (one tick per optimizer
and part; none when stderr is not a terminal, as under the tests), and writes two
pictures to examples/output/ (or --output):

    trajectories.png       paths on the Rosenbrock and Beale contours
    digits_comparison.png  training-loss curves of the train_digits.py MLP
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.colors import LogNorm
from tqdm import tqdm
from train_digits import DEFAULT_OUTPUT, Classifier, load_data, loss_and_accuracy  # this script's folder is on sys.path

import jaxopt_zoo as jz

MakeOptimizer = Callable[[jax.Array], jz.GradientTransformation]  # learning rate -> optimizer

OPTIMIZERS: dict[str, MakeOptimizer] = {
    "sgd": jz.sgd,
    "momentum": lambda lr: jz.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: jz.sgd(lr, momentum=0.9, nesterov=True),
    "adagrad": jz.adagrad,
    "adadelta": lambda lr: jz.adadelta(learning_rate=lr),
    "rmsprop": jz.rmsprop,
    "adam": jz.adam,
    "amsgrad": jz.amsgrad,
    "adamw": jz.adamw,
    "nadam": jz.nadam,
    "lars": jz.lars,
    "lamb": jz.lamb,
}
# Twelve distinct colours (tab10 plus two dark ones), and a line style cycle
# so that curves lying on top of each other (adam/adamw, momentum/nesterov) stay apart.
STYLES = {
    name: dict(color=color, linestyle=("-", "--", ":")[i % 3])
    for i, (name, color) in enumerate(zip(OPTIMIZERS, [*plt.cm.tab10.colors, "black", "teal"]))
}


def rosenbrock(p: jax.Array) -> jax.Array:
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def beale(p: jax.Array) -> jax.Array:
    x, y = p[0], p[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


class Problem(NamedTuple):
    name: str
    f: Callable[[jax.Array], jax.Array]
    start: tuple[float, float]
    minimum: tuple[float, float]
    window: tuple[float, float, float, float]  # x_min, x_max, y_min, y_max of the contour plot


PROBLEMS = [
    Problem("Rosenbrock", rosenbrock, (-1.5, 2.0), (1.0, 1.0), (-2.0, 2.5, -1.0, 4.5)),
    Problem("Beale", beale, (1.0, 1.5), (3.0, 0.5), (-1.0, 4.5, -2.0, 2.0)),
]


def best_rate(losses: np.ndarray) -> int:
    """Index of the lowest loss; NaN and inf count as the worst."""
    return int(np.argmin(np.where(np.isfinite(losses), losses, np.inf)))


def descend(
    make: MakeOptimizer, f: Callable, start: jax.Array, steps: int, evaluate_at: Callable | None = None
) -> Callable[[jax.Array], jax.Array]:
    """A function of the learning rate giving the path of `steps` optimizer steps on f (the points
    ``evaluate_at(opt_state, params)``, for optimizers whose training point is not the point to evaluate)."""

    def run(learning_rate: jax.Array) -> jax.Array:
        tx = make(learning_rate)

        def step(carry, _):
            p, state = carry
            updates, state = tx.update(jax.grad(f)(p), state, p)
            p = jz.apply_updates(p, updates)
            return (p, state), p if evaluate_at is None else evaluate_at(state, p)

        _, path = jax.lax.scan(step, (start, tx.init(start)), length=steps)
        return jnp.concatenate([start[None], path])

    return run


def train(
    make: MakeOptimizer,
    initial: nnx.Module,
    data: tuple[jax.Array, ...],
    steps: int,
    evaluate_at: Callable | None = None,
) -> Callable:
    """A function of the learning rate giving the full-batch training losses and the final test accuracy.

    ``evaluate_at(opt_state, params)``, for optimizers whose training point is not the point to evaluate
    (Schedule-Free: ``jz.schedule_free_eval_params``), moves every loss and the accuracy to that point."""
    x_train, y_train, x_test, y_test = data
    # Initialising outside the compiled run keeps the random initialisers out of it (over half the compile time).
    initial_graphdef, initial_params = nnx.split(initial)

    def evaluated(model: nnx.Module, optimizer: nnx.Optimizer) -> nnx.Module:
        if evaluate_at is None:
            return model
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return nnx.merge(graphdef, evaluate_at(optimizer.opt_state, params), rest)

    def run(learning_rate: jax.Array) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(initial_graphdef, initial_params)  # the same starting weights for every optimizer and rate
        optimizer = nnx.Optimizer(model, make(learning_rate), wrt=nnx.Param)
        # Scan over the pure state so the whole run compiles to one XLA loop.
        graphdef, state = nnx.split((model, optimizer))

        def step(state, _):
            model, optimizer = nnx.merge(graphdef, state)
            (loss, _), grads = nnx.value_and_grad(loss_and_accuracy, has_aux=True)(model, x_train, y_train)
            if evaluate_at is not None:
                loss = loss_and_accuracy(evaluated(model, optimizer), x_train, y_train)[0]
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), loss

        state, losses = jax.lax.scan(step, state, length=steps)
        model, optimizer = nnx.merge(graphdef, state)
        return losses, loss_and_accuracy(evaluated(model, optimizer), x_test, y_test)[1]

    return run


def compare_2d(rates: np.ndarray, steps: int, output: pathlib.Path, bar: tqdm) -> None:
    figure, all_axes = plt.subplots(1, len(PROBLEMS), figsize=(14, 7.5))
    for problem, axes in zip(PROBLEMS, all_axes):
        start = jnp.array(problem.start)
        bar.write(f"\n{problem.name}: {steps} steps from {problem.start}, start loss {float(problem.f(start)):.3e}")
        bar.write(f"{'optimizer':<10} {'best lr':>9} {'final loss':>12}")
        x_min, x_max, y_min, y_max = problem.window
        x, y = np.meshgrid(np.linspace(x_min, x_max, 400), np.linspace(y_min, y_max, 400))
        z = np.asarray(problem.f(jnp.stack([x, y])))  # the functions are elementwise in p[0], p[1]
        # Log-spaced levels: both functions span many decades around a flat valley.
        levels = np.logspace(np.log10(max(z.min(), 1e-3)), np.log10(z.max()), 25)
        axes.contour(x, y, z, levels=levels, norm=LogNorm(), cmap="Greys", linewidths=0.6, alpha=0.7)
        for name, make in OPTIMIZERS.items():
            bar.set_postfix_str(f"{problem.name}: {name}")
            paths = np.asarray(jax.jit(jax.vmap(descend(make, problem.f, start, steps)))(jnp.asarray(rates)))
            losses = np.asarray(jax.vmap(problem.f)(jnp.asarray(paths[:, -1])))
            best = best_rate(losses)
            bar.write(f"{name:<10} {rates[best]:>9.3g} {losses[best]:>12.3e}")
            bar.update()
            axes.plot(*paths[best].T, label=f"{name} (lr={rates[best]:.3g})", linewidth=1.6, **STYLES[name])
            axes.plot(*paths[best, -1], "o", color=STYLES[name]["color"], markersize=4)
        axes.plot(*problem.start, "ko", markersize=8, label="start")
        axes.plot(*problem.minimum, "*", color="gold", markeredgecolor="black", markersize=16, label="minimum")
        # Paths that overshoot would otherwise stretch the view and squash the contours.
        axes.set_xlim(x_min, x_max)
        axes.set_ylim(y_min, y_max)
        axes.set_xlabel("x")
        axes.set_ylabel("y")
        axes.set_title(f"{problem.name}: best of {len(rates)} learning rates, {steps} steps")
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=4, fontsize=8, frameon=False)
    figure.suptitle("jaxopt_zoo optimizers on 2-D test functions")
    figure.tight_layout()
    figure.savefig(output / "trajectories.png", dpi=120)
    bar.write(f"trajectories written to {output / 'trajectories.png'}")


def compare_digits(rates: np.ndarray, steps: int, seed: int, output: pathlib.Path, bar: tqdm) -> None:
    x_train, x_test, y_train, y_test = load_data(seed)
    data = tuple(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test))
    initial = Classifier(nnx.Rngs(seed))
    # Averaging the tail keeps a run oscillating at the edge of stability from winning on one lucky step.
    tail = max(1, steps // 10)
    bar.write(f"\ndigits MLP: {steps} full-batch steps on {len(x_train)} images")
    bar.write(f"{'optimizer':<10} {'best lr':>9} {'train loss':>12} {'test acc':>9}")
    figure, axes = plt.subplots(figsize=(10, 6))
    for name, make in OPTIMIZERS.items():
        bar.set_postfix_str(f"digits: {name}")
        losses, accuracies = jax.jit(jax.vmap(train(make, initial, data, steps)))(jnp.asarray(rates))
        losses = np.asarray(losses)
        best = best_rate(losses[:, -tail:].mean(axis=1))
        bar.write(f"{name:<10} {rates[best]:>9.3g} {losses[best, -tail:].mean():>12.3e} {float(accuracies[best]):>9.3f}")
        bar.update()
        label = f"{name} (lr={rates[best]:.3g})"
        axes.plot(np.arange(1, steps + 1), losses[best], label=label, linewidth=1.6, **STYLES[name])
    axes.set_yscale("log")
    axes.set_xlabel("step (full batch)")
    axes.set_ylabel("training cross-entropy loss")
    axes.set_title(f"Digits MLP: each optimizer at its best of {len(rates)} learning rates")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    axes.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.savefig(output / "digits_comparison.png", dpi=120)
    bar.write(f"loss curves written to {output / 'digits_comparison.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="steps on each 2-D function (default 500, --fast 50)")
    parser.add_argument("--digits-steps", type=int, help="full-batch training steps (default 200, --fast 20)")
    parser.add_argument("--fast", action="store_true", help="few steps and two learning rates, for tests")
    parser.add_argument("--seed", type=int, default=0, help="digits train/test split and initial weights")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT, help="folder for the PNGs")
    parser.add_argument("--optimizers", help=f"comma-separated subset of {','.join(OPTIMIZERS)} (default all)")
    args = parser.parse_args()
    for option, value in [("--steps", args.steps), ("--digits-steps", args.digits_steps)]:
        if value is not None and value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    if args.optimizers is not None:
        wanted = [name.strip() for name in args.optimizers.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(OPTIMIZERS))
        if not wanted:
            parser.error(f"--optimizers {args.optimizers!r} names no optimizer; choose from {', '.join(OPTIMIZERS)}")
        if unknown:
            parser.error(f"--optimizers {args.optimizers!r}: unknown names {unknown}; choose from {', '.join(OPTIMIZERS)}")
        OPTIMIZERS = {name: make for name, make in OPTIMIZERS.items() if name in wanted}  # the functions read it
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--output: cannot make the folder {args.output} ({error.strerror})")
    steps_2d = args.steps if args.steps is not None else 50 if args.fast else 500
    steps_digits = args.digits_steps if args.digits_steps is not None else 20 if args.fast else 200
    # Grids wide enough that no optimizer's best rate sits on an edge (LARS and
    # Adadelta want rates of 1 and more, plain SGD on Rosenbrock 1e-3).
    rates_2d = np.array([1e-3, 1e-1]) if args.fast else np.logspace(-4, 2, 13)
    rates_digits = np.array([1e-2, 1e-1]) if args.fast else np.logspace(-3, 2, 6)
    # One tick per optimizer per part (each a compile and a vmapped sweep); disable=None: no bar unless on a terminal.
    with tqdm(total=len(OPTIMIZERS) * (len(PROBLEMS) + 1), desc="comparing", unit="run", disable=None) as bar:
        compare_2d(rates_2d, steps_2d, args.output, bar)
        compare_digits(rates_digits, steps_digits, args.seed, args.output, bar)
