"""Schedule-Free (schedule_free, schedule_free_sgd, schedule_free_adamw, schedule_free_eval_params):
Optax bit for bit, float64 references, storage, wrappers, Flax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_ours,
    run_together,
)

SF = optax.contrib


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


def warmup(step):
    return 0.05 * jnp.minimum(step, 6) / 6


# Every option on and off: jitted float32 trajectories, states and evaluation params against Optax's, bit for bit.
OPTAX_CASES = {
    "adamw": (
        lambda: jz.schedule_free_adamw(0.05, weight_decay=0.1),
        lambda: SF.schedule_free_adamw(0.05, weight_decay=0.1),
    ),
    "adamw_options": (
        lambda: jz.schedule_free_adamw(0.05, 5, 0.8, 0.99, 1e-6, 0.05, 1.0, jnp.bfloat16),
        lambda: SF.schedule_free_adamw(0.05, 5, 0.8, 0.99, 1e-6, 0.05, 1.0, jnp.bfloat16),
    ),
    "sgd_options": (
        lambda: jz.schedule_free_sgd(0.05, 5, 0.95, 0.1, 3.0),
        lambda: SF.schedule_free_sgd(0.05, 5, 0.95, 0.1, 3.0),
    ),
    "wrapper_around_optax": (  # an Optax base optimizer inside ours
        lambda: jz.schedule_free(optax.adam(0.05, b1=0.0), 0.05, weight_lr_power=0.0),
        lambda: SF.schedule_free(optax.adam(0.05, b1=0.0), 0.05, weight_lr_power=0.0),
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs = OPTAX_CASES[name]
    params = make_params(jnp.float32)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params, steps=20)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    ours_at_x = jz.schedule_free_eval_params(our_state, our_iterates[-1])
    assert_trees_equal(ours_at_x, SF.schedule_free_eval_params(their_state, their_iterates[-1]))
    assert not np.allclose(our_iterates[-1]["dense"]["w"], params["dense"]["w"])


def _reference_run(ref, params, steps=20):
    """The reference's params (y) after each step and its averaged sequence x at the end, leaf by leaf."""
    leaves, treedef = jax.tree.flatten(params)
    ys, xs = [], []
    for leaf in leaves:
        y, state, path = np.asarray(leaf, np.float64), None, []
        state = ref.init(y)
        for t in range(1, steps + 1):
            delta, state = ref.update(np.asarray(grad_fn(y, t), np.float64), state, y, t)
            y = y + delta
            path.append(y)
        ys.append(path)
        xs.append(state["x"])
    return [jax.tree.unflatten(treedef, [p[i] for p in ys]) for i in range(steps)], jax.tree.unflatten(treedef, xs)


# Each rule against its float64 NumPy reference (the paper's x, y, z kept explicitly), and against Optax, in float64.
REFERENCE_CASES = {
    "sgd_b1_one": (  # y = x: the params are the average itself
        lambda: jz.schedule_free_sgd(0.05, b1=1.0, weight_lr_power=0.5),
        lambda: SF.schedule_free_sgd(0.05, b1=1.0, weight_lr_power=0.5),
        reference.schedule_free(0.05, b1=1.0, weight_lr_power=0.5),
    ),
    # A warmup computed in float64 (jz's and Optax's schedules compute in float32, even with x64). Optax reads the
    # rate of the weights at the 1-based step and the base optimizer's at the 0-based count: one step ahead.
    "wrapper_warmup_decay": (
        lambda: jz.schedule_free(jz.chain(jz.add_decayed_weights(0.1), jz.sgd(warmup)), warmup, weight_lr_power=1.0),
        lambda: SF.schedule_free(
            optax.chain(optax.add_decayed_weights(0.1), optax.sgd(warmup)), warmup, weight_lr_power=1.0
        ),
        reference.schedule_free(warmup, weight_decay=0.1, weight_lr_power=1.0, weight_rate=lambda t: float(warmup(t))),
    ),
    "adamw": (
        lambda: jz.schedule_free_adamw(0.05, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.2),
        lambda: SF.schedule_free_adamw(0.05, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.2),
        reference.schedule_free(0.05, b1=0.8, weight_decay=0.2, adam=True, b2=0.95, eps=1e-3),
    ),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_matches_float64_reference_and_optax(name, x64):
    ours, theirs, ref = REFERENCE_CASES[name]
    params = make_params(jnp.float64)
    iterates, state = run_ours(ours(), params, steps=20)
    expected, x = _reference_run(ref, params)
    assert_trees_close(iterates, expected, rtol=1e-10, atol=1e-13)
    assert_trees_close(jz.schedule_free_eval_params(state, iterates[-1]), x, rtol=1e-9, atol=1e-12)
    assert state.weight_sum.dtype == jnp.float64
    their_iterates, _ = run_ours(theirs(), params, steps=20)
    assert_trees_close(iterates, their_iterates, rtol=1e-12, atol=1e-14)


# --- bfloat16: Optax's lowest-dtype scalars, and what we keep instead ------------------------------


def test_bfloat16_params_keep_float32_scalars_and_a_growing_weight_sum():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    grads = {"w": jnp.full(4, 0.01, jnp.bfloat16)}

    def weight_sum_after(tx, steps=600):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(grads, s, p)
            return (jz.apply_updates(p, u), s), None

        (_, state), _ = jax.lax.scan(body, (params, tx.init(params)), length=steps)
        return state

    ours, theirs = weight_sum_after(jz.schedule_free_sgd(0.1)), weight_sum_after(SF.schedule_free_sgd(0.1))
    assert ours.weight_sum.dtype == ours.b1.dtype == jnp.float32 and float(ours.b1) == pytest.approx(0.9)
    assert float(ours.weight_sum) == pytest.approx(600 * 0.01, rel=1e-5)  # the uniform average's weights
    assert abs(float(theirs.weight_sum) - 600 * 0.01) > 0.1 * 600 * 0.01  # bfloat16: 4.0, where the sum stalls
    assert float(theirs.b1) != pytest.approx(0.9, rel=1e-3)  # 0.898: evaluation then uses another b1
    assert ours.z["w"].dtype == jnp.bfloat16


def test_a_jitted_bfloat16_step_builds_the_params_from_z_as_stored():
    # Under jit XLA may keep a value in float32 where the program rounds it to bfloat16 and widens it back
    # (excess precision): the params' update then used z + dz unrounded, not z as stored (the docstring's
    # promise, on which the next step's recovery of x rests), and the program kept an extra copy of each leaf.
    # b1 = c = 1/2 and params near 1: every float32 operation of the interpolation is exact, so the update is
    # known exactly from the stored y and z whatever XLA reassociates; z's rounding moves it by up to 2**-8.
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(1 + rng.uniform(0, 0.5, size=64), jnp.bfloat16)}
    tx = jz.schedule_free_sgd(0.01, b1=0.5)
    step = jax.jit(lambda p, s, g: (lambda u, s: (u, jz.apply_updates(p, u), s))(*tx.update(g, s, p)))
    grads = lambda: {"w": jnp.asarray(rng.normal(size=64), jnp.bfloat16)}
    _, y1, state1 = step(params, tx.init(params), grads())
    update, _, state2 = step(y1, state1, grads())
    y, z1, z2 = (np.asarray(x["w"], np.float64) for x in (y1, state1.z, state2.z))
    x = 0.5 * ((y - 0.5 * z1) / 0.5) + 0.5 * z2  # c = 1/2: the second of two equal averaging weights
    np.testing.assert_array_equal(np.asarray(update["w"]), (0.5 * x + 0.5 * z2 - y).astype(jnp.bfloat16))


def test_zero_warmup_steps_means_no_warmup():
    # Optax's warmup_constant_schedule(0, lr, 0) stays at 0, so optax.contrib's optimizer never moves; ours trains.
    params, grads = {"w": jnp.ones(2)}, {"w": jnp.ones(2)}
    for tx, moves in ((jz.schedule_free_sgd(0.1, warmup_steps=0), True), (SF.schedule_free_sgd(0.1, 0), False)):
        updates, _ = tx.update(grads, tx.init(params), params)
        assert bool(np.any(np.asarray(updates["w"]) != 0)) == moves


# --- storage options ---------------------------------------------------------------------------


def test_stochastic_bfloat16_iterate_tracks_full_precision():
    params = make_params()
    (expected, _), (iterates, state) = run_together([
        jz.schedule_free_adamw(0.02),
        jz.schedule_free_adamw(0.02, state_dtype=jz.StochasticBF16()),
    ], params, steps=8)
    assert all(z.dtype == jnp.bfloat16 for z in jax.tree.leaves(state.z))
    assert_trees_close(iterates[-1], expected[-1], rtol=0, atol=0.05)
    assert int(state.step_count) == 9  # the 1-based step the stochastic rounding draws from


def test_eight_bit_second_moment_and_a_refused_eight_bit_iterate():
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 512)), jnp.float32)}
    tx = jz.schedule_free_adamw(1e-2, nu_dtype=jz.Blockwise8Bit())
    state = jax.eval_shape(tx.init, params)
    assert state.base_optimizer_state[0].nu["w"].dtype == jnp.uint8 and state.z["w"].dtype == jnp.float32
    wrapper = lambda **kw: jz.schedule_free(jz.sgd(0.1), 0.1, **kw)
    for factory in (jz.schedule_free_adamw, jz.schedule_free_sgd, wrapper):
        with pytest.raises(ValueError, match=r"state_dtype=Blockwise8Bit.*would keep the iterate z as 8-bit codes"):
            factory(state_dtype=jz.Blockwise8Bit())


# --- None leaves, jit with donation, vmap ---------------------------------------------------------


def test_none_update_keeps_param_and_iterate():
    params = make_params()
    tx = jz.schedule_free_adamw(0.05, state_dtype=jz.StochasticBF16())
    update = jax.jit(tx.update)
    state = tx.init(params)
    updates, state = update(params, state, params)  # some history first, so the kept state is not the initial one
    params = jz.apply_updates(params, updates)
    updates, new_state = update(params | {"scale": None}, state, params)
    assert updates["scale"] is None
    assert_trees_equal(new_state.z["scale"], state.z["scale"])
    assert_trees_equal(new_state.base_optimizer_state[0].nu["scale"], state.base_optimizer_state[0].nu["scale"])
    assert not np.array_equal(new_state.z["dense"]["w"], state.z["dense"]["w"])


def test_jitted_donated_steps_match_plain_jitted_steps():
    tx = jz.schedule_free_adamw(0.05, weight_decay=0.1)
    params = make_params()
    state = tx.init(params)
    assert all(z is not p for z, p in zip(jax.tree.leaves(state.z), jax.tree.leaves(params)))

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return jz.apply_updates(p, u), s

    donated = jax.jit(step, donate_argnums=(0, 1))
    plain_params, plain_state = params, state
    donated_params, donated_state = jax.tree.map(jnp.copy, (params, state))
    for t in range(1, 4):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), plain_params)
        plain_params, plain_state = jax.jit(step)(plain_params, plain_state, grads)
        donated_params, donated_state = donated(donated_params, donated_state, grads)
    assert_trees_equal((donated_params, donated_state), (plain_params, plain_state))


def test_vmap_over_parameter_sets_equals_separate_runs():
    # Jitted on both sides, so the same arithmetic: x = (y - (1 - b1) z) / b1 would magnify eager-vs-jit last bits.
    tx = jz.schedule_free_adamw(0.05, warmup_steps=2, weight_decay=0.1)
    batch = [make_params(seed=s) for s in range(2)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
    batched, states = jax.jit(jax.vmap(tx.update)), jax.vmap(tx.init)(stacked)
    single, separate = jax.jit(tx.update), [(p, tx.init(p)) for p in batch]
    for t in (1, 2, 3):
        updates, states = batched(jax.tree.map(jax.vmap(lambda q: grad_fn(q, t, jnp)), stacked), states, stacked)
        stacked = jz.apply_updates(stacked, updates)
        for i, (p, s) in enumerate(separate):
            u, s = single(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p)
            separate[i] = (jz.apply_updates(p, u), s)
    for i, (p, s) in enumerate(separate):
        assert_trees_close(jax.tree.map(lambda x: x[i], (stacked, states)), (p, s), rtol=1e-6, atol=1e-7)


# --- wrappers: inject_hyperparams, MultiSteps ------------------------------------------------------


def test_inject_hyperparams_with_a_scheduled_rate_matches_optax():
    schedule = jz.linear_schedule(0.05, 0.01, 10)
    ours = jz.inject_hyperparams(jz.schedule_free_adamw)(learning_rate=schedule, weight_decay=0.1)
    theirs = optax.inject_hyperparams(SF.schedule_free_adamw)(
        learning_rate=optax.linear_schedule(0.05, 0.01, 10), weight_decay=0.1
    )
    params = make_params()
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours, theirs], params, steps=6)
    # Up to the injected b1, a float32 array on both sides here, against which 1 - b1 rounds like Optax's.
    assert_trees_close(our_iterates, their_iterates, rtol=1e-6, atol=1e-7)
    assert float(our_state.hyperparams["learning_rate"]) == pytest.approx(0.05 - 5 * 0.004)
    # The evaluation params are found inside the wrapper's state (Optax needs the inner state).
    assert_trees_close(
        jz.schedule_free_eval_params(our_state, our_iterates[-1]),
        SF.schedule_free_eval_params(their_state.inner_state, their_iterates[-1]),
        rtol=1e-6, atol=1e-7,
    )


def test_multisteps_matches_optax_bit_for_bit():
    ours = jz.MultiSteps(jz.schedule_free_adamw(0.05, weight_decay=0.1), every_k_schedule=3)
    theirs = optax.MultiSteps(SF.schedule_free_adamw(0.05, weight_decay=0.1), every_k_schedule=3)
    params = make_params()
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours, theirs], params, steps=10)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(
        jz.schedule_free_eval_params(our_state, our_iterates[-1]),
        SF.schedule_free_eval_params(their_state.inner_opt_state, their_iterates[-1]),
    )


# --- Flax: evaluating an NNX model and a linen TrainState at x ---------------------------------------


def test_nnx_and_linen_evaluation_pattern():
    from flax import nnx
    from flax.training import train_state

    x, y = jax.random.normal(jax.random.key(0), (16, 3)), jnp.arange(16.0)[:, None] / 16

    def train_nnx(tx):
        model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer):
            optimizer.update(model, nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model))

        for _ in range(5):
            step(model, optimizer)
        return model, optimizer

    model, optimizer = train_nnx(jz.schedule_free_adamw(0.05))
    eval_params = jz.schedule_free_eval_params(optimizer.opt_state, nnx.state(model, nnx.Param))
    evaluated = nnx.clone(model)
    nnx.update(evaluated, eval_params)  # the model at x, for evaluation; training continues from y
    b1 = float(jax.tree.leaves(optimizer.opt_state.b1)[0])
    zs, ys = jax.tree.leaves(optimizer.opt_state.z), jax.tree.leaves(nnx.state(model, nnx.Param))
    expected = [(y - (1 - b1) * z) / b1 for y, z in zip(ys, zs)]
    assert_trees_close(jax.tree.leaves(nnx.state(evaluated, nnx.Param)), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(evaluated.kernel[...], model.kernel[...])

    # linen: a TrainState's opt_state and params.
    linen_params = {"w": jnp.ones((3, 1))}
    state = train_state.TrainState.create(
        apply_fn=lambda p, x: x @ p["w"], params=linen_params, tx=jz.schedule_free_sgd(0.1)
    )
    loss = lambda s, p: jnp.mean((s.apply_fn(p, x) - y) ** 2)
    step = jax.jit(lambda s: s.apply_gradients(grads=jax.grad(lambda p: loss(s, p))(s.params)))
    for _ in range(3):
        state = step(state)
    at_x = jz.schedule_free_eval_params(state.opt_state, state.params)
    np.testing.assert_allclose(at_x["w"], (state.params["w"] - 0.1 * state.opt_state.z["w"]) / 0.9, rtol=1e-6)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.schedule_free(jz.sgd(0.1), 0.1, b1=0.0), r"^schedule_free: b1 must be in \(0, 1\]"),
        (lambda: jz.schedule_free(jz.sgd(0.1), 0.1, b1=1.5), r"^schedule_free: b1 must be in \[0, 1\], got 1.5"),
        (lambda: jz.schedule_free(jz.sgd(0.1), -0.1), r"^schedule_free: learning_rate must be >= 0, got -0.1"),
        (lambda: jz.schedule_free(jz.sgd(0.1), 0.1, weight_lr_power=-1.0), r"^schedule_free: weight_lr_power must be"),
        (lambda: jz.schedule_free(jz.sgd(0.1), 0.1, state_dtype=jnp.int8), r"^schedule_free: state_dtype must be"),
        (lambda: jz.schedule_free_sgd(warmup_steps=-1), r"^schedule_free_sgd: warmup_steps must be an integer >= 0"),
        (lambda: jz.schedule_free_sgd(decaying, warmup_steps=3), r"^schedule_free_sgd: with warmup_steps, learning_"),
        (lambda: jz.schedule_free_sgd(weight_decay=-1.0), r"^schedule_free_sgd: weight_decay must be >= 0"),
        (lambda: jz.schedule_free_adamw(b1=0.0), r"^schedule_free_adamw: b1 must be in \(0, 1\]"),
        # The rate weights the average: no None (it was refused under schedule_free's name).
        (lambda: jz.schedule_free_adamw(None), r"^schedule_free_adamw: learning_rate must be a finite real number"),
        (lambda: jz.schedule_free_sgd(None), r"^schedule_free_sgd: learning_rate must be a finite real number"),
        (lambda: jz.schedule_free_adamw(b2=1.0), r"^schedule_free_adamw: b2 must be in \[0, 1\), got 1.0"),
        (lambda: jz.schedule_free_adamw(eps=-1.0), r"^schedule_free_adamw: eps must be >= 0"),
        (lambda: jz.schedule_free_adamw(nu_dtype="x"), r"^schedule_free_adamw: nu_dtype must be"),
        (lambda: jz.schedule_free(object(), 0.1), r"^schedule_free: expected gradient transformations"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises((ValueError, TypeError), match=message):
        factory()


def test_a_foreign_state_or_mismatched_params_are_refused():
    params = make_params()
    with pytest.raises(ValueError, match="expected ScheduleFreeState"):
        jz.schedule_free_sgd(0.1).update(params, jz.sgd(0.1).init(params), params)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx = jz.schedule_free_sgd(0.1)
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="requires the state of a schedule_free optimizer"):
        jz.schedule_free_eval_params(jz.adam(0.1).init(params), params)
    with pytest.raises(ValueError, match="do not match the state's z"):
        jz.schedule_free_eval_params(jz.schedule_free_sgd(0.1).init(params), {"w": jnp.ones(2)})


@pytest.mark.parametrize("build", [lambda: jz.schedule_free_sgd(0.1), lambda: jz.schedule_free(jz.sgd(0.1), 0.1),
                                   lambda: jz.schedule_free_sgd(0.1, state_dtype=jz.StochasticBF16())],
                         ids=["schedule_free_sgd", "schedule_free", "stochastic_bf16"])
def test_a_state_built_for_other_shapes_is_refused_not_broadcast(build):
    # A momentum-free base keeps no per-parameter state of its own: z of shape (1, 3) was broadcast to the
    # gradient's (4, 3), and the state grew.
    tx = build()
    state = tx.init({"w": jnp.zeros((1, 3))})
    with pytest.raises(ValueError, match=r"^schedule_free: the updates tree does not match the iterate \(state\.z\): "
                       r"shapes differ at \['w'\] \(4, 3\) vs \(1, 3\)"):
        tx.update({"w": jnp.full((4, 3), 0.5)}, state, {"w": jnp.ones((4, 3))})
