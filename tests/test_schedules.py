"""Schedules against closed forms at many steps, against Optax, and under jit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz

from . import reference

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
    "warmup_constant": (
        lambda: jz.warmup_constant_schedule(0.1, 1.0, 40),
        lambda: optax.warmup_constant_schedule(0.1, 1.0, 40),
        lambda t: 0.1 + 0.9 * min(t, 40) / 40,
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
    # Equal boundaries (a phase of no steps, the middle schedule never runs) are Optax's too; they were refused.
    "join_equal_boundaries": (
        lambda: jz.join_schedules(
            (jz.constant_schedule(1.0), jz.constant_schedule(5.0), jz.linear_schedule(1.0, 0.0, 100)),
            np.array([30, 30]),
        ),
        lambda: optax.join_schedules((optax.constant_schedule(1.0), optax.constant_schedule(5.0),
                                      optax.linear_schedule(1.0, 0.0, 100)), np.array([30, 30])),
        lambda t: 1.0 if t < 30 else 1.0 - min(t - 30, 100) / 100,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_closed_form_and_optax(name):
    ours, theirs, closed_form = CASES[name][0](), CASES[name][1](), CASES[name][2]
    jitted, theirs = jax.jit(ours), jax.jit(theirs)
    for t in STEPS:
        count = jnp.asarray(t, jnp.int32)
        value = float(jitted(count))
        np.testing.assert_allclose(value, closed_form(int(t)), rtol=2e-5, atol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(value, float(theirs(count)), rtol=1e-6, atol=1e-7, err_msg=f"step {t}")


def test_value_is_weakly_typed_where_optaxs_is():
    # linear_schedule(...)(5) was strongly typed float32 where Optax's is weak: the value times a bfloat16 array was
    # float32, not bfloat16 (cosine_decay_schedule also at an int32 count).
    differ = []
    for name, (ours, theirs, _) in CASES.items():
        ours, theirs = ours(), theirs()
        jitted = jax.jit(ours), jax.jit(theirs)  # one trace per kind of step (a Python int is weakly typed)
        for step in (5, 150, jnp.int32(5), jnp.int32(150)):
            for a, b in ((ours(step), theirs(step)), (jitted[0](step), jitted[1](step))):
                a, b = jnp.asarray(a), jnp.asarray(b)
                if (a.dtype, a.weak_type) != (b.dtype, b.weak_type):
                    differ.append((name, repr(step), a.dtype, a.weak_type, b.dtype, b.weak_type))
    assert not differ, differ
    for ours, theirs in ((jz.cosine_decay_schedule, optax.cosine_decay_schedule),  # a Python step beyond int32
                         (lambda *a: jz.exponential_decay(*a, 0.5), lambda *a: optax.exponential_decay(*a, 0.5))):
        assert float(ours(1.0, 100)(2**31)) == float(theirs(1.0, 100)(2**31))


@pytest.mark.parametrize("name", list(CASES))
def test_float64_values_at_an_int32_count_with_x64(name, x64):
    """An int32 count (an optimizer's) divided by an int is float32 even with x64: linear, polynomial,
    exponential and warmup-constant schedules rounded their float64 values to float32 (Optax's do)."""
    values = jax.jit(jax.vmap(CASES[name][0]()))(jnp.asarray(STEPS, jnp.int32))
    assert values.dtype == jnp.float64
    np.testing.assert_allclose(values, [CASES[name][2](int(t)) for t in STEPS], rtol=1e-12, atol=1e-15)


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
        (
            lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 3, [20, 10]),
            r"boundaries must be non-decreasing, got \[20, 10\]",
        ),
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
        (lambda: jz.warmup_constant_schedule(0.0, 1.0, -3), r"warmup_constant_schedule: warmup_steps must be an integer >= 0, got -3"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, 0), r"cyclic_schedule: step_size_up must be an integer >= 1, got 0"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, 10, -1), r"cyclic_schedule: step_size_down must be an integer >= 0, got -1"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, 2.5), r"cyclic_schedule: step_size_up must be an integer >= 1, got 2\.5"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, 2**30, 2**30), r"step_size_up \+ step_size_down must be at most 2147483647"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, mode="exp"), r"mode must be 'triangular', 'triangular2' or 'exp_range', got 'exp'"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, mode="exp_range", gamma=0.0), r"cyclic_schedule: gamma must be > 0, got 0\.0"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, scale_fn=0.5), r"cyclic_schedule: scale_fn must be a function"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, scale_fn=abs, scale_mode="step"), r"scale_mode must be 'cycle' or 'iterations'"),
        (lambda: jz.cyclic_schedule(0.1, 1.0, scale_mode="cycles"), r"scale_mode must be 'cycle' or 'iterations', got 'cycles'"),
        (lambda: jz.cyclic_schedule(float("nan"), 1.0), r"cyclic_schedule: init_value must be a finite real number"),
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


# Traced arguments (issue 15): every numeric argument that is not a step count may be a tracer, so a
# schedule can be built inside vmap (a learning-rate sweep), jit or grad. For each public schedule and
# each such argument: (a function of that argument giving the schedule, two or three concrete values).
TRACED_STEPS = (0, 3, 17, 40, 50, 61, 99, 150, 170, 185, 199, 200, 260)
TRACED_CASES = {
    "constant_schedule.value": (lambda v: jz.constant_schedule(v), [0.1, 0.3]),
    "linear_schedule.init_value": (lambda v: jz.linear_schedule(v, 0.1, 100, 20), [1.0, 2.0]),
    "linear_schedule.end_value": (lambda v: jz.linear_schedule(1.0, v, 100, 20), [0.0, 0.5]),
    "polynomial_schedule.power": (lambda v: jz.polynomial_schedule(1.0, 0.1, v, 100, 10), [0.5, 2.5]),
    "exponential_decay.init_value": (lambda v: jz.exponential_decay(v, 30, 0.5, 15), [1.0, 2.0]),
    "exponential_decay.decay_rate": (lambda v: jz.exponential_decay(1.0, 30, v, staircase=True), [0.5, 0.9]),
    # A floor for a decaying rate, a ceiling for a growing one: one vmap holds both.
    "exponential_decay.decay_rate_with_end_value": (lambda v: jz.exponential_decay(1.0, 50, v, end_value=0.4), [0.5, 2.0]),
    "exponential_decay.end_value": (lambda v: jz.exponential_decay(1.0, 50, 0.5, end_value=v), [0.2, 0.6]),
    "cosine_decay_schedule.init_value": (lambda v: jz.cosine_decay_schedule(v, 200), [1.0, 1.5]),
    "cosine_decay_schedule.alpha": (lambda v: jz.cosine_decay_schedule(1.5, 200, alpha=v), [0.0, 0.1]),
    "cosine_decay_schedule.exponent": (lambda v: jz.cosine_decay_schedule(1.5, 200, exponent=v), [1.0, 2.0]),
    "warmup_cosine_decay_schedule.init_value": (lambda v: jz.warmup_cosine_decay_schedule(v, 1.0, 40, 240), [0.0, 0.1]),
    # 0.0: the zero peak that Optax special-cases (alpha = 0).
    "warmup_cosine_decay_schedule.peak_value": (
        lambda v: jz.warmup_cosine_decay_schedule(0.0, v, 40, 240, end_value=0.05),
        [0.1, 0.2, 0.0],
    ),
    "warmup_cosine_decay_schedule.end_value": (lambda v: jz.warmup_cosine_decay_schedule(0.0, 1.0, 40, 240, v), [0.0, 0.05]),
    "warmup_cosine_decay_schedule.exponent": (
        lambda v: jz.warmup_cosine_decay_schedule(0.0, 1.0, 40, 240, 0.05, exponent=v),
        [1.0, 2.0],
    ),
    "warmup_exponential_decay_schedule.peak_value": (
        lambda v: jz.warmup_exponential_decay_schedule(0.0, v, 40, 50, 0.5, end_value=0.2),
        [1.0, 2.0],
    ),
    "warmup_exponential_decay_schedule.decay_rate": (
        lambda v: jz.warmup_exponential_decay_schedule(0.0, 1.0, 40, 50, v, end_value=0.2),
        [0.5, 0.8],
    ),
    "warmup_constant_schedule.peak_value": (lambda v: jz.warmup_constant_schedule(0.0, v, 40), [1.0, 0.5]),
    "piecewise_constant_schedule.init_value": (lambda v: jz.piecewise_constant_schedule(v, {100: 0.5, 50: 0.1}), [1.0, 3.0]),
    "piecewise_constant_schedule.scale": (lambda v: jz.piecewise_constant_schedule(1.0, {100: v, 50: 0.1}), [0.5, 2.0]),
    "piecewise_interpolate_schedule.linear_scale": (
        lambda v: jz.piecewise_interpolate_schedule("linear", 1.0, {50: v, 150: 0.25}),
        [2.0, 0.5],
    ),
    "piecewise_interpolate_schedule.cosine_init_value": (
        lambda v: jz.piecewise_interpolate_schedule("cosine", v, {100: 0.5}),
        [1.0, 0.3],
    ),
    "linear_onecycle_schedule.peak_value": (lambda v: jz.linear_onecycle_schedule(200, v), [1.0, 0.3]),
    # Fractions whose steps coincide (0.85 is pct_final's default, 0.3 pct_start's, 1 the end) merge, traced or not.
    "linear_onecycle_schedule.pct_start": (lambda v: jz.linear_onecycle_schedule(200, 1.0, pct_start=v),
                                           [0.25, 0.3, 0.4, 0.0, 0.85]),
    "linear_onecycle_schedule.pct_final": (lambda v: jz.linear_onecycle_schedule(200, 1.0, pct_final=v),
                                           [0.7, 0.85, 1.0, 0.3]),
    "linear_onecycle_schedule.div_factor": (lambda v: jz.linear_onecycle_schedule(200, 1.0, div_factor=v), [25.0, 10.0]),
    "linear_onecycle_schedule.final_div_factor": (
        lambda v: jz.linear_onecycle_schedule(200, 1.0, final_div_factor=v),
        [1e4, 10.0],
    ),
    "cosine_onecycle_schedule.peak_value": (lambda v: jz.cosine_onecycle_schedule(200, v), [1.0, 0.3]),
    "cosine_onecycle_schedule.pct_start": (lambda v: jz.cosine_onecycle_schedule(200, 1.0, pct_start=v),
                                           [0.25, 0.3, 0.4, 0.0, 1.0]),
    "cosine_onecycle_schedule.div_factor": (lambda v: jz.cosine_onecycle_schedule(200, 1.0, div_factor=v), [25.0, 10.0]),
    "join_schedules.member_value": (
        lambda v: jz.join_schedules([jz.constant_schedule(v), jz.linear_schedule(v, 0.0, 100)], [30]),
        [1.0, 0.5],
    ),
    "cyclic_schedule.init_value": (lambda v: jz.cyclic_schedule(v, 1.0, 20, 30, "triangular2"), [0.1, 0.5]),
    "cyclic_schedule.peak_value": (lambda v: jz.cyclic_schedule(0.1, v, 20, 30), [1.0, 0.05]),
    "cyclic_schedule.gamma": (lambda v: jz.cyclic_schedule(0.1, 1.0, 20, mode="exp_range", gamma=v), [0.99, 0.995]),
    "sgdr_schedule.peak_value": (
        lambda v: jz.sgdr_schedule([dict(init_value=0.0, peak_value=v, warmup_steps=10, decay_steps=100)] * 3),
        [1.0, 0.5],
    ),
}


def test_traced_cases_cover_every_public_schedule():
    import jaxopt_zoo.schedules as schedules

    assert {name.split(".")[0] for name in TRACED_CASES} == set(schedules.__all__)


@pytest.mark.parametrize("name", list(TRACED_CASES))
def test_schedule_takes_a_traced_argument_under_vmap_and_jit(name):
    make, values = TRACED_CASES[name]
    concrete = np.array([[float(make(v)(t)) for t in TRACED_STEPS] for v in values])
    # Built and run inside vmap: the argument is a batched tracer (a learning-rate sweep). Jitted: one program,
    # not one per batched operation.
    swept = jax.jit(jax.vmap(lambda v: jnp.stack([make(v)(t) for t in TRACED_STEPS])))(jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(np.asarray(swept), concrete, rtol=2e-6, atol=1e-7)
    # Built inside jit with the argument as a jit parameter, the step traced too.
    jitted = jax.jit(lambda v, t: make(v)(t))
    for v, row in zip(values, concrete):
        got = [float(jitted(jnp.float32(v), jnp.int32(t))) for t in TRACED_STEPS]
        np.testing.assert_allclose(got, row, rtol=2e-6, atol=1e-7, err_msg=f"{name}={v}")


def test_gradient_through_a_traced_peak_value():
    # With end_value=0 the schedule is linear in peak_value, so d value / d peak = value / peak.
    # Under jit, as in a jitted meta-learning step: peak_value is traced.
    value_and_grad = jax.jit(jax.value_and_grad(lambda peak, t: jz.warmup_cosine_decay_schedule(0.0, peak, 10, 100)(t)))
    for t in (5, 50, 99):
        value, grad = value_and_grad(0.2, t)
        np.testing.assert_allclose(float(grad), float(value) / 0.2, rtol=1e-6)


@pytest.mark.parametrize(
    "factory, message",
    [
        # A traced argument does not switch off the checks of the concrete ones.
        (
            lambda p: jz.linear_onecycle_schedule(100, p, pct_start=0.9, pct_final=0.5),
            r"linear_onecycle_schedule: pct_final must be >= pct_start, got 0\.5 < 0\.9",
        ),
        (lambda p: jz.warmup_cosine_decay_schedule(0.0, p, 10, 100, end_value="0"), r"end_value must be a finite real number"),
        (lambda r: jz.exponential_decay(1.0, 10, r, end_value=float("nan")), r"exponential_decay: end_value must be a finite"),
        (lambda p: jz.cosine_onecycle_schedule(100, p, pct_start=1.5), r"cosine_onecycle_schedule: pct_start must be in \[0, 1\]"),
        (lambda p: jz.warmup_cosine_decay_schedule(0.0, p, 100, 50), r"decay_steps must be > warmup_steps, got 50 <= 100"),
    ],
)
def test_concrete_arguments_are_checked_next_to_a_traced_one(factory, message):
    with pytest.raises(ValueError, match=message):
        jax.vmap(lambda v: factory(v)(5))(jnp.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=message):
        factory(0.1)


def test_polynomial_schedule_reaches_end_value_exactly_under_jit():
    # Under jit, 1 - tau / T at tau = T came out 2.2e-8 (a multiplication by 1/T), and its square root 1.5e-4.
    schedule = jz.polynomial_schedule(1.0, 0.1, 0.5, 100, 10)
    for t in (110, 111, 300):
        assert float(jax.jit(schedule)(jnp.int32(t))) == float(jnp.float32(0.1)), f"step {t}"


def test_warmup_constant_schedule_without_warmup_is_the_peak_not_optaxs_init_value():
    # Deliberate difference: Optax's warmup_constant_schedule(0.0, 1.0, 0) stays at 0.0 for ever.
    assert float(optax.warmup_constant_schedule(0.0, 1.0, 0)(100)) == 0.0
    assert float(jz.warmup_constant_schedule(0.0, 1.0, 0)(100)) == 1.0


CYCLE = dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=20)
NAN = float("nan")


@pytest.mark.parametrize(
    "factory, message",
    [
        # Composed schedules name themselves and the argument the user wrote, not the schedule they are built from.
        (lambda: jz.warmup_constant_schedule(0.0, NAN, 5), r"^warmup_constant_schedule: peak_value must be a finite real number, got nan"),
        (lambda: jz.warmup_constant_schedule(0.0, "x", 0), r"^warmup_constant_schedule: peak_value must be a finite real number, got 'x'"),
        (lambda: jz.warmup_constant_schedule(None, 1.0, 0), r"^warmup_constant_schedule: init_value must be a finite real number, got None"),
        (lambda: jz.warmup_exponential_decay_schedule(NAN, 1.0, 5, 10, 0.5), r"^warmup_exponential_decay_schedule: init_value must be a finite"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, NAN, 5, 10, 0.5), r"^warmup_exponential_decay_schedule: peak_value must be a finite"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 5, 10, 0.0), r"^warmup_exponential_decay_schedule: decay_rate must be > 0, got 0\.0"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 5, 10, "x"), r"^warmup_exponential_decay_schedule: decay_rate must be a finite"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 5, -1, 0.5), r"^warmup_exponential_decay_schedule: transition_steps must be an integer >= 0, got -1"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 5, 10, 0.5, 1.5), r"^warmup_exponential_decay_schedule: transition_begin must be an integer >= 0, got 1\.5"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 5, 10, 0.5, staircase=1), r"^warmup_exponential_decay_schedule: staircase must be True or False"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 5, 10, 0.5, end_value=NAN), r"^warmup_exponential_decay_schedule: end_value must be a finite"),
        (lambda: jz.warmup_exponential_decay_schedule(0.0, 1.0, 5, 0, 0.5, end_value="x"), r"^warmup_exponential_decay_schedule: end_value must be a finite"),
        (lambda: jz.warmup_cosine_decay_schedule(NAN, 1.0, 5, 20), r"^warmup_cosine_decay_schedule: init_value must be a finite real number, got nan"),
        (lambda: jz.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20, exponent=-1.0), r"^warmup_cosine_decay_schedule: exponent must be >= 0, got -1\.0"),
        (lambda: jz.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20, exponent="x"), r"^warmup_cosine_decay_schedule: exponent must be a finite"),
        # The cosine part's alpha is end_value / peak_value: the message names both.
        (
            lambda: jz.warmup_cosine_decay_schedule(0.0, 1e-300, 5, 20, end_value=3e38),
            r"^warmup_cosine_decay_schedule: end_value / peak_value must be a finite real number, got inf",
        ),
        # The one-cycle schedules' values are quotients of their arguments.
        (
            lambda: jz.linear_onecycle_schedule(100, 3e38, div_factor=1e-300),
            r"^linear_onecycle_schedule: peak_value / div_factor must be a finite real number, got inf",
        ),
        (
            lambda: jz.linear_onecycle_schedule(100, 1.0, div_factor=1e-320),
            r"^linear_onecycle_schedule: peak_value / div_factor must be a finite real number, got inf",
        ),
        (
            lambda: jz.linear_onecycle_schedule(100, 1.0, final_div_factor=1e-320),
            r"^linear_onecycle_schedule: 1 / final_div_factor must be a finite real number, got inf",
        ),
        (  # div_factor * final_div_factor underflows to 0: was a ZeroDivisionError
            lambda: jz.cosine_onecycle_schedule(100, 1e-300, div_factor=1e-200, final_div_factor=1e-200),
            r"^cosine_onecycle_schedule: 1 / \(div_factor \* final_div_factor\) must be a finite real number, got inf",
        ),
        # sgdr_schedule: the cycle and the key.
        (lambda: jz.sgdr_schedule([CYCLE, dict(CYCLE, peak_value=NAN)]), r"^sgdr_schedule: cosine_kwargs\[1\]\['peak_value'\] must be a finite"),
        (lambda: jz.sgdr_schedule([dict(CYCLE, init_value=NAN)]), r"^sgdr_schedule: cosine_kwargs\[0\]\['init_value'\] must be a finite"),
        (lambda: jz.sgdr_schedule([dict(CYCLE, exponent=-1.0)]), r"^sgdr_schedule: cosine_kwargs\[0\]\['exponent'\] must be >= 0"),
        (lambda: jz.sgdr_schedule([dict(CYCLE, end_value="x")]), r"^sgdr_schedule: cosine_kwargs\[0\]\['end_value'\] must be a finite"),
        (lambda: jz.sgdr_schedule([dict(CYCLE, warmup_steps=-1)]), r"^sgdr_schedule: cosine_kwargs\[0\]\['warmup_steps'\] must be an integer >= 0"),
        (
            lambda: jz.sgdr_schedule([CYCLE, dict(CYCLE, decay_steps=5)]),
            r"^sgdr_schedule: cosine_kwargs\[1\]\['decay_steps'\] must be > cosine_kwargs\[1\]\['warmup_steps'\], got 5 <= 5",
        ),
        (
            lambda: jz.sgdr_schedule([dict(CYCLE, peak_value=1e-300, end_value=3e38)]),
            r"^sgdr_schedule: cosine_kwargs\[0\]\['end_value'\] / cosine_kwargs\[0\]\['peak_value'\] must be a finite",
        ),
        # Was a TypeError naming warmup_cosine_decay_schedule.
        (lambda: jz.sgdr_schedule([dict(CYCLE, peak=1.0)]), r"^sgdr_schedule: cosine_kwargs\[0\] must hold warmup_cosine_decay_schedule's arguments"),
        (lambda: jz.sgdr_schedule([dict(init_value=0.0)]), r"^sgdr_schedule: cosine_kwargs\[0\] must hold warmup_cosine_decay_schedule's arguments"),
        (lambda: jz.sgdr_schedule([CYCLE, 1]), r"^sgdr_schedule: cosine_kwargs\[1\] must hold warmup_cosine_decay_schedule's arguments"),
        (lambda: jz.sgdr_schedule(CYCLE), r"^sgdr_schedule: cosine_kwargs must be a sequence of dicts"),
        (lambda: jz.sgdr_schedule(None), r"^sgdr_schedule: cosine_kwargs must be a sequence of dicts"),
        # Checked before the early return for transition_steps=0 (was accepted).
        (lambda: jz.exponential_decay(1.0, 0, 0.5, end_value="x"), r"^exponential_decay: end_value must be a finite real number, got 'x'"),
        (lambda: jz.exponential_decay(1.0, 0, 0.5, end_value=NAN), r"^exponential_decay: end_value must be a finite real number, got nan"),
        # A falsy non-mapping was read as no boundaries; a truthy one was an AttributeError.
        (lambda: jz.piecewise_constant_schedule(1.0, 0.0), r"^piecewise_constant_schedule: boundaries_and_scales must be a mapping"),
        (lambda: jz.piecewise_interpolate_schedule("linear", 1.0, [(10, 0.5)]), r"^piecewise_interpolate_schedule: boundaries_and_scales must be a mapping"),
        (lambda: jz.piecewise_constant_schedule(1.0, {10: 0.5, "20": 0.5}), r"^piecewise_constant_schedule: boundaries_and_scales boundary must be an integer >= 0, got '20'"),
        # join_schedules: a non-iterable was a bare TypeError, no schedules an "expected -1 boundaries", a str
        # boundaries was read as its characters, and the bad element was not named.
        (
            lambda: jz.join_schedules(jz.constant_schedule(1.0), 5),
            r"^join_schedules: schedules must be a non-empty sequence of schedules \(callables of the step count\), "
            r"got <function",
        ),
        (lambda: jz.join_schedules(None, [5]), r"^join_schedules: schedules must be a non-empty sequence .*, got None"),
        (lambda: jz.join_schedules([], []), r"^join_schedules: schedules must be a non-empty sequence .*, got \[\]\.$"),
        (
            lambda: jz.join_schedules([jz.constant_schedule(1.0), 0.5], [5]),
            r"^join_schedules: schedules\[1\] must be a schedule \(a callable of the step count\), got 0\.5\.$",
        ),
        (
            lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 2, 3),
            r"^join_schedules: boundaries must be a sequence of integers, one fewer than the schedules \(1\), got 3\.$",
        ),
        (
            lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 2, None),
            r"^join_schedules: boundaries must be a sequence of integers, .*, got None\.$",
        ),
        (
            lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 2, "5"),
            r"^join_schedules: boundaries must be a sequence of integers, .*, got '5'\.$",
        ),
        (
            lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 3, [5, -1]),
            r"^join_schedules: boundaries\[1\] must be an integer >= 0, got -1\.$",
        ),
        (
            lambda: jz.join_schedules([jz.constant_schedule(1.0)] * 3, (10,)),
            r"^join_schedules: expected 2 boundaries for 3 schedules, got \(10,\)\.$",
        ),
    ],
)
def test_bad_arguments_are_named_as_the_user_wrote_them(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


# PyTorch's CyclicLR, whose float64 reference (tests/reference.py, from its documented policy) equals torch 2.13's
# rates and momenta exactly on these cases. (U, D) = (3, 5) and (5, 2): unequal halves; D = 0: a sawtooth.
CYCLIC_CASES = {
    "triangular": dict(base_lr=0.1, max_lr=1.0, step_size_up=4),
    "triangular2_unequal": dict(base_lr=0.01, max_lr=0.5, step_size_up=3, step_size_down=5, mode="triangular2"),
    "exp_range": dict(base_lr=0.02, max_lr=0.3, step_size_up=5, step_size_down=2, mode="exp_range", gamma=0.97),
    "sawtooth_downwards": dict(base_lr=0.5, max_lr=0.1, step_size_up=3, step_size_down=0),
    "scale_fn_of_cycle": dict(base_lr=0.1, max_lr=1.0, step_size_up=4, step_size_down=3,
                              scale_fn=lambda c: 1 / (1 + 0.1 * c)),
    "scale_fn_of_step": dict(base_lr=0.1, max_lr=1.0, step_size_up=4, step_size_down=3,
                             scale_fn=lambda k: 1 / (1 + 0.1 * k), scale_mode="iterations"),
}


def _cyclic(case, momentum=False):
    kwargs = dict(CYCLIC_CASES[case])
    base, peak = kwargs.pop("base_lr"), kwargs.pop("max_lr")
    return jz.cyclic_schedule(0.9, 0.8, **kwargs) if momentum else jz.cyclic_schedule(base, peak, **kwargs)


@pytest.mark.parametrize("case", list(CYCLIC_CASES))
def test_cyclic_schedule_is_pytorchs_cyclic_lr(case, x64):
    rates, momenta = reference.cyclic_lr(**CYCLIC_CASES[case], steps=60)
    steps = jnp.arange(60, dtype=jnp.int32)
    # In float64 under x64; the momentum that CyclicLR cycles (base 0.8, max 0.9) is the schedule from 0.9 to 0.8.
    np.testing.assert_allclose(jax.jit(jax.vmap(_cyclic(case)))(steps), rates, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(jax.jit(jax.vmap(_cyclic(case, momentum=True)))(steps), momenta, rtol=1e-13)


def test_cyclic_schedule_in_float32_and_far_into_training():
    rates, _ = reference.cyclic_lr(**CYCLIC_CASES["triangular2_unequal"], steps=60)
    schedule = jax.jit(_cyclic("triangular2_unequal"))
    np.testing.assert_allclose([float(schedule(jnp.int32(t))) for t in range(60)], rates, rtol=2e-6, atol=1e-8)
    # Two billion steps in, the position within the cycle is still exact (an integer remainder), also for step sizes
    # given as whole floats (they were kept as floats and the position drifted: 0.352 for 1/3, the review's find).
    for up, down in ((1000, 3000), (1e3, 3000.0)):
        schedule = jax.jit(jz.cyclic_schedule(0.0, 1.0, up, down))
        for t in (2_000_000_250, 2_000_003_000, 2_147_483_647):
            position = t % 4000
            expected = position / 1000 if position <= 1000 else (4000 - position) / 3000
            np.testing.assert_allclose(float(schedule(jnp.int32(t))), expected, rtol=1e-6, atol=1e-7,
                                       err_msg=f"step {t}, step sizes {up}, {down}")
    # A cycle of one step: the cycle number reaches the int32 maximum at the last step (+1 overflowed to NaN there).
    last = jax.jit(jz.cyclic_schedule(0.5, 1.0, 1, 0, "triangular2"))(jnp.int32(2**31 - 1))
    assert np.isfinite(float(last)) and float(last) == 0.5
    assert float(jz.cyclic_schedule(0.1, 1.0, 4, gamma=0.0)(2)) == pytest.approx(0.55)  # gamma unused, as in PyTorch


def test_cyclic_momentum_drives_sgd_through_inject_hyperparams():
    """The guide's recipe for CyclicLR's cycle_momentum: both schedules injected into SGD with momentum, against
    PyTorch's SGD (tests/reference.py) stepped with the rate and momentum of each step."""
    rates, momenta = reference.cyclic_lr(0.05, 0.2, 3, steps=12)
    tx = jz.inject_hyperparams(jz.sgd)(learning_rate=jz.cyclic_schedule(0.05, 0.2, 3),
                                       momentum=jz.cyclic_schedule(0.9, 0.8, 3))
    params, p = jnp.array([1.0, -2.0]), np.array([1.0, -2.0])
    state, b = tx.init(params), None
    for t in range(12):
        g = np.sin(p * (t + 1))
        b = g if b is None else momenta[t] * b + g
        p = p - rates[t] * b
        updates, state = tx.update(jnp.sin(params * (t + 1)), state, params)
        params = jz.apply_updates(params, updates)
        np.testing.assert_allclose(np.asarray(params), p, rtol=2e-6, atol=1e-6, err_msg=f"step {t + 1}")


@pytest.mark.parametrize("make", [lambda scales: jz.piecewise_constant_schedule(1.0, scales),
                                  lambda scales: jz.piecewise_interpolate_schedule("linear", 1.0, scales)],
                         ids=["constant", "interpolate"])
def test_scales_whose_product_overflows_are_refused(make):
    # Each scale is finite, their product is not: NaN at step 10 where the value is 1e20, inf from step 20 (Optax's
    # too).
    with pytest.raises(ValueError, match="up to boundary 20 overflows float32"):
        make({10: 1e20, 20: 1e20})
    assert float(make({10: 1e20, 20: 1e10})(15)) > 1e19
