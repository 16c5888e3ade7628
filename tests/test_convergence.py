"""Every optimizer, with its defaults and a stated learning rate, minimizes a quadratic and Rosenbrock."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxopt_zoo as jz


def rosenbrock(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def quadratic(p):
    return 0.5 * jnp.sum(jnp.asarray([1.0, 10.0]) * p**2)


def final_loss(tx, loss, start, steps):
    def step(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return (jz.apply_updates(p, updates), state), None

    p = jnp.asarray(start, jnp.float32)
    (p, _), _ = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), None, length=steps))(p, tx.init(p))
    return float(loss(p))


# name: (factory of the learning rate, rate on Rosenbrock, steps there, rate on the quadratic)
OPTIMIZERS = {
    "sgd": (jz.sgd, 1e-3, 20_000, 0.1),
    "sgd_momentum": (lambda lr: jz.sgd(lr, momentum=0.9), 1e-3, 5_000, 0.01),
    "sgd_nesterov": (lambda lr: jz.sgd(lr, momentum=0.9, nesterov=True), 1e-3, 5_000, 0.01),
    "adagrad": (jz.adagrad, 1.0, 5_000, 0.3),
    "adadelta": (jz.adadelta, 0.01, 20_000, 0.3),
    "rmsprop": (jz.rmsprop, 1e-3, 5_000, 1e-3),
    "adam": (jz.adam, 0.01, 5_000, 0.03),
    "adamw": (jz.adamw, 0.01, 5_000, 0.03),
    "amsgrad": (jz.amsgrad, 0.3, 5_000, 0.1),
    "nadam": (jz.nadam, 0.01, 5_000, 0.03),
    "nadamw": (jz.nadamw, 0.01, 5_000, 0.03),
    "lars": (jz.lars, 1.0, 5_000, 1.0),
    # One 2-vector is one layer, so LAMB's step stays near lr * |p|: it needs a decaying rate.
    "lamb": (jz.lamb, lambda t: 0.03 * 0.999**t, 10_000, 0.01),
    "torch.sgd": (lambda lr: jz.torch.sgd(lr, momentum=0.9), 1e-3, 5_000, 0.01),
    "torch.adagrad": (jz.torch.adagrad, 0.3, 20_000, 0.3),
    "torch.adadelta": (jz.torch.adadelta, 0.01, 20_000, 0.3),
    "torch.rmsprop": (jz.torch.rmsprop, 1e-3, 5_000, 3e-3),
    "torch.adam": (jz.torch.adam, 0.01, 5_000, 0.03),
    "torch.adamw": (jz.torch.adamw, 1e-3, 20_000, 0.03),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_minimizes_rosenbrock(name):
    make, rate, steps, _ = OPTIMIZERS[name]
    assert rosenbrock(jnp.asarray([-1.2, 1.0])) > 20
    assert final_loss(make(rate), rosenbrock, [-1.2, 1.0], steps) < 1e-3


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_minimizes_a_quadratic(name):
    make, _, _, rate = OPTIMIZERS[name]
    assert final_loss(make(rate), quadratic, [1.0, -1.5], 2_000) < 1e-4
