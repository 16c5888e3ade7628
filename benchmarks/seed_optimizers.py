"""The seed optimizers, each with its Optax twin, shared by run.py and convergence.py.

Each entry builds ours and Optax's optimizer from a learning rate (a float, or
a traced scalar when a benchmark vmaps over rates). Every other argument is
left at its default, which both libraries share.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import optax

import jaxopt_zoo as jz

MakeOptimizer = Callable[[Any], Any]  # learning rate -> GradientTransformation (ours or Optax's)


class SeedOptimizer(NamedTuple):
    ours: MakeOptimizer
    optax: MakeOptimizer
    learning_rate: float  # a typical rate, for benchmarks where only the cost of a step matters


SEED_OPTIMIZERS: dict[str, SeedOptimizer] = {
    "sgd": SeedOptimizer(jz.sgd, optax.sgd, 1e-2),
    "momentum": SeedOptimizer(lambda lr: jz.sgd(lr, momentum=0.9), lambda lr: optax.sgd(lr, momentum=0.9), 1e-2),
    "nesterov": SeedOptimizer(
        lambda lr: jz.sgd(lr, momentum=0.9, nesterov=True),
        lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
        1e-2,
    ),
    "adagrad": SeedOptimizer(jz.adagrad, optax.adagrad, 1e-2),
    # Keyword for ours: jz.adadelta's learning rate defaults to None (descent at rate 1), Optax's ascends.
    "adadelta": SeedOptimizer(lambda lr: jz.adadelta(learning_rate=lr), optax.adadelta, 1.0),
    "rmsprop": SeedOptimizer(jz.rmsprop, optax.rmsprop, 1e-3),
    "adam": SeedOptimizer(jz.adam, optax.adam, 1e-3),
    "amsgrad": SeedOptimizer(jz.amsgrad, optax.amsgrad, 1e-3),
    "adamw": SeedOptimizer(jz.adamw, optax.adamw, 1e-3),
    "nadam": SeedOptimizer(jz.nadam, optax.nadam, 1e-3),
    "lars": SeedOptimizer(jz.lars, optax.lars, 1e-2),
    "lamb": SeedOptimizer(jz.lamb, optax.lamb, 1e-3),
}


def select(names: str | None) -> dict[str, SeedOptimizer]:
    """The optimizers named in a comma-separated list (all of them for ``None``), in the table's order."""
    if names is None:
        return dict(SEED_OPTIMIZERS)
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SEED_OPTIMIZERS))
    if unknown:
        raise SystemExit(f"unknown optimizers {unknown}; choose from {', '.join(SEED_OPTIMIZERS)}")
    return {name: pair for name, pair in SEED_OPTIMIZERS.items() if name in wanted}
