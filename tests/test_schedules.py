"""Schedules against closed forms at many steps, against Optax, and under jit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz

STEPS = np.arange(0, 260, 7)


def cosine(t, total):
    return 0.5 * (1 + math.cos(math.pi * min(t, total) / total))


# name: (our schedule, Optax's, closed form as a Python function of the step)
CASES = {
    "constant": (lambda: jz.constant_schedule(0.3), lambda: optax.constant_schedule(0.3), lambda t: 0.3),
    "linear": (
        lambda: jz.linear_schedule(1.0, 0.1, 100, 20),
        lambda: optax.linear_schedule(1.0, 0.1, 100, 20),
        lambda t: 1.0 + (0.1 - 1.0) * min(max(t - 20, 0), 100) / 100,
    ),
    "polynomial": (
        lambda: jz.polynomial_schedule(1.0, 0.1, 2.5, 100, 10),
        lambda: optax.polynomial_schedule(1.0, 0.1, 2.5, 100, 10),
        lambda t: 0.9 * (1 - min(max(t - 10, 0), 100) / 100) ** 2.5 + 0.1,
    ),
    "exponential": (
        lambda: jz.exponential_decay(2.0, 30, 0.5, 15),
        lambda: optax.exponential_decay(2.0, 30, 0.5, 15),
        lambda t: 2.0 if t <= 15 else 2.0 * 0.5 ** ((t - 15) / 30),
    ),
    "exponential_staircase_end": (
        lambda: jz.exponential_decay(2.0, 30, 0.5, staircase=True, end_value=0.3),
        lambda: optax.exponential_decay(2.0, 30, 0.5, staircase=True, end_value=0.3),
        lambda t: max(2.0 * 0.5 ** (t // 30), 0.3) if t > 0 else 2.0,
    ),
    "exponential_growth_ceiling": (
        lambda: jz.exponential_decay(0.1, 50, 2.0, end_value=0.5),
        lambda: optax.exponential_decay(0.1, 50, 2.0, end_value=0.5),
        lambda t: min(0.1 * 2.0 ** (t / 50), 0.5),
    ),
    "cosine": (
        lambda: jz.cosine_decay_schedule(1.5, 200, alpha=0.1, exponent=2.0),
        lambda: optax.cosine_decay_schedule(1.5, 200, alpha=0.1, exponent=2.0),
        lambda t: 1.5 * (0.9 * cosine(t, 200) ** 2 + 0.1),
    ),
    "warmup_cosine": (
        lambda: jz.warmup_cosine_decay_schedule(0.0, 1.0, 40, 240, end_value=0.05),
        lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, 40, 240, end_value=0.05),
        lambda t: t / 40 if t < 40 else 0.05 + 0.95 * cosine(t - 40, 200),
    ),
    "warmup_exponential": (
        lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 40, 50, 0.5, end_value=0.2),
        lambda: optax.warmup_exponential_decay_schedule(0.0, 1.0, 40, 50, 0.5, end_value=0.2),
        lambda t: t / 40 if t < 40 else max(0.5 ** ((t - 40) / 50), 0.2),
    ),
    "piecewise_constant": (
        lambda: jz.piecewise_constant_schedule(1.0, {100: 0.5, 50: 0.1}),
        lambda: optax.piecewise_constant_schedule(1.0, {100: 0.5, 50: 0.1}),
        lambda t: 1.0 * (0.1 if t >= 50 else 1) * (0.5 if t >= 100 else 1),
    ),
    "piecewise_linear": (
        lambda: jz.piecewise_interpolate_schedule("linear", 1.0, {50: 2.0, 150: 0.25}),
        lambda: optax.piecewise_interpolate_schedule("linear", 1.0, {50: 2.0, 150: 0.25}),
        lambda t: 1 + t / 50 if t < 50 else (2 - 1.5 * (t - 50) / 100 if t < 150 else 0.5),
    ),
    "piecewise_cosine": (
        lambda: jz.piecewise_interpolate_schedule("cosine", 1.0, {100: 0.5}),
        lambda: optax.piecewise_interpolate_schedule("cosine", 1.0, {100: 0.5}),
        lambda t: 0.5 + 0.5 * cosine(t, 100) if t < 100 else 0.5,
    ),
    "linear_onecycle": (
        lambda: jz.linear_onecycle_schedule(200, 1.0),
        lambda: optax.linear_onecycle_schedule(200, 1.0),
        lambda t: np.interp(t, [0, 60, 170, 200], [0.04, 1.0, 0.04, 0.04 / 1e4]),
    ),
    "cosine_onecycle": (
        lambda: jz.cosine_onecycle_schedule(200, 1.0, pct_start=0.25),
        lambda: optax.cosine_onecycle_schedule(200, 1.0, pct_start=0.25),
        lambda t: (1.0 + (0.04 - 1.0) * cosine(t, 50)) if t < 50 else (1.0 / 25e4 + (1.0 - 1.0 / 25e4) * cosine(t - 50, 150) if t < 200 else 1.0 / 25e4),
    ),
    "sgdr": (
        lambda: jz.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100)] * 3),
        lambda: optax.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100)] * 3),
        lambda t: (lambda s: s / 10 if s < 10 else cosine(s - 10, 90))(t % 100 if t < 300 else 100),
    ),
    "join": (
        lambda: jz.join_schedules([jz.constant_schedule(1.0), jz.linear_schedule(1.0, 0.0, 100)], [30]),
        lambda: optax.join_schedules([optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, 100)], [30]),
        lambda t: 1.0 if t < 30 else 1.0 - min(t - 30, 100) / 100,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_closed_form_and_optax(name):
    ours, theirs, closed_form = CASES[name][0](), CASES[name][1](), CASES[name][2]
    jitted = jax.jit(ours)
    for t in STEPS:
        count = jnp.asarray(t, jnp.int32)
        value = float(jitted(count))
        np.testing.assert_allclose(value, closed_form(int(t)), rtol=2e-5, atol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(value, float(theirs(count)), rtol=1e-6, atol=1e-7, err_msg=f"step {t}")


def test_schedule_drives_an_optimizer_under_jit():
    tx = jz.sgd(jz.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20))
    params = jnp.ones(3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    rates = []
    for _ in range(8):
        updates, state = step(jnp.ones(3), state, params)
        rates.append(-float(updates[0]))
    np.testing.assert_allclose(rates[:6], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.linear_schedule(1.0, 0.0, -5), r"linear_schedule: transition_steps must be an integer >= 0, got -5"),
        (lambda: jz.polynomial_schedule(1.0, 0.0, 2, 10, transition_begin=-1), r"transition_begin must be an integer >= 0, got -1"),
        (lambda: jz.exponential_decay(1.0, 10, 0.0), r"exponential_decay: decay_rate must be > 0, got 0\.0"),
        (lambda: jz.exponential_decay(1.0, 10.5, 0.5), r"transition_steps must be an integer"),
        (lambda: jz.exponential_decay(1.0, "10", 0.5), r"transition_steps must be an integer >= 0, got '10'"),
        (lambda: jz.cosine_decay_schedule(1.0, 0), r"cosine_decay_schedule: decay_steps must be an integer >= 1, got 0"),
        (lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 3, [20, 10]), r"boundaries must be strictly increasing, got \[20, 10\]"),
        (lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 3, [10]), r"expected 2 boundaries for 3 schedules"),
        (lambda: jz.piecewise_constant_schedule(1.0, {-10: 0.5}), r"boundary must be an integer >= 0, got -10"),
        (lambda: jz.piecewise_constant_schedule(1.0, {10: -0.5}), r"scales must be >= 0, got -0\.5 at boundary 10"),
        (lambda: jz.piecewise_interpolate_schedule("cubic", 1.0), r"interpolate_type must be 'linear' or 'cosine', got 'cubic'"),
        (lambda: jz.warmup_cosine_decay_schedule(0.0, 1.0, 100, 50), r"decay_steps must be > warmup_steps, got 50 <= 100"),
        (lambda: jz.linear_onecycle_schedule(100, 1.0, pct_start=0.9, pct_final=0.5), r"pct_final must be >= pct_start"),
        (lambda: jz.cosine_onecycle_schedule(0, 1.0), r"transition_steps must be an integer >= 1, got 0"),
        (lambda: jz.sgdr_schedule([]), r"sgdr_schedule: cosine_kwargs must hold at least one cycle"),
        (lambda: jz.constant_schedule("0.1"), r"constant_schedule: value must be a finite real number"),
        (lambda: jz.polynomial_schedule(1.0, 0.0, -1.0, 10), r"polynomial_schedule: power must be >= 0, got -1\.0"),
        (lambda: jz.cosine_decay_schedule(1.0, 10, exponent=-1.0), r"cosine_decay_schedule: exponent must be >= 0"),
        (lambda: jz.linear_onecycle_schedule(100, 1.0, div_factor=0.0), r"linear_onecycle_schedule: div_factor must be > 0"),
        (lambda: jz.cosine_onecycle_schedule(100, 1.0, final_div_factor=-1.0), r"cosine_onecycle_schedule: final_div_factor must be > 0"),
        (lambda: jz.linear_schedule(1.0, 0.0, 10.5), r"transition_steps must be an integer >= 0, got 10\.5"),
    ],
)
def test_senseless_arguments_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_numpy_integers_and_integral_floats_count_as_steps_as_in_optax():
    for ours, theirs in [
        (jz.linear_schedule(1.0, 0.0, np.int64(100)), optax.linear_schedule(1.0, 0.0, np.int64(100))),
        (jz.cosine_decay_schedule(1.0, 1e4), optax.cosine_decay_schedule(1.0, 1e4)),
        (jz.piecewise_constant_schedule(1.0, {np.int64(50): 0.5}), optax.piecewise_constant_schedule(1.0, {np.int64(50): 0.5})),
    ]:
        for t in (0, 60, 5000):
            np.testing.assert_allclose(float(ours(t)), float(theirs(t)), rtol=1e-6)
