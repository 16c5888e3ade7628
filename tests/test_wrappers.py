"""inject_hyperparams, apply_if_finite, MultiSteps, lookahead, ema_params and map_params:
against the equivalent unwrapped computation, against Optax, under jit, through serialization."""

from __future__ import annotations

import inspect
from typing import NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import assert_trees_close, assert_trees_equal, grad_fn, make_params, run_ours, run_together

SEEDS = {
    "sgd": lambda: jz.sgd(0.05, momentum=0.9),
    "adagrad": lambda: jz.adagrad(0.1),
    "adadelta": lambda: jz.adadelta(1.0),
    "rmsprop": lambda: jz.rmsprop(0.01, momentum=0.5),
    "adam": lambda: jz.adam(0.01),
    "amsgrad": lambda: jz.amsgrad(0.01),
    "adamw": lambda: jz.adamw(0.01, weight_decay=0.1),
    "nadam": lambda: jz.nadam(0.01),
    "lars": lambda: jz.lars(0.5, trust_coefficient=0.02),
    "lamb": lambda: jz.lamb(0.01, weight_decay=0.1),
    "chain": lambda: jz.chain(jz.clip_by_global_norm(1.0), jz.scale_by_adam(), jz.scale_by_learning_rate(0.01)),
    "torch.adam": lambda: jz.torch.adam(lr=0.01, amsgrad=True),
}

INJECTED = {
    "sgd": (jz.sgd, dict(learning_rate=0.05, momentum=0.9), optax.sgd),
    "adagrad": (jz.adagrad, dict(learning_rate=0.1), optax.adagrad),
    "rmsprop": (jz.rmsprop, dict(learning_rate=0.01, momentum=0.5), optax.rmsprop),
    "adam": (jz.adam, dict(learning_rate=0.01), optax.adam),
    "adamw": (jz.adamw, dict(learning_rate=0.01, weight_decay=0.1), optax.adamw),
    "lamb": (jz.lamb, dict(learning_rate=0.01, weight_decay=0.1), optax.lamb),
    "lars": (jz.lars, dict(learning_rate=0.5, trust_coefficient=0.02), optax.lars),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_injected_hyperparams_follow_the_unwrapped_optimizer(name):
    factory, kwargs, optax_factory = INJECTED[name]
    params = make_params()
    (injected, state), (plain, _) = run_together([jz.inject_hyperparams(factory)(**kwargs), factory(**kwargs)], params)
    assert_trees_close(injected, plain, rtol=1e-5, atol=1e-6)  # arrays vs Python floats round apart
    theirs, _ = run_ours(optax.inject_hyperparams(optax_factory)(**kwargs), params)
    assert_trees_equal(injected, theirs)  # float32 params: both keep float32 hyperparameters
    assert state.hyperparams["learning_rate"].dtype == jnp.float32


def test_changing_the_learning_rate_does_not_recompile():
    tx = jz.inject_hyperparams(jz.adamw)(learning_rate=0.01, weight_decay=0.1)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    params = make_params()
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    before = params
    params, state = step(params, state, grads)
    first_move = float(before["scale"] - params["scale"])
    state.hyperparams["learning_rate"] = jnp.asarray(0.001, jnp.float32)
    before = params
    params, state = step(params, state, grads)
    second_move = float(before["scale"] - params["scale"])
    assert len(traces) == 1
    assert second_move < first_move / 5  # the new rate took effect


def test_injected_schedule_is_evaluated_each_step_and_recorded():
    schedule = jz.linear_schedule(0.1, 0.0, 10)
    tx = jz.inject_hyperparams(jz.sgd)(learning_rate=schedule)
    params = make_params()
    state = tx.init(params)
    recorded = []
    for _ in range(4):
        _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
        recorded.append(float(state.hyperparams["learning_rate"]))
    np.testing.assert_allclose(recorded, [0.1, 0.09, 0.08, 0.07], rtol=1e-6)
    (injected, _), (plain, _) = run_together([tx, jz.sgd(schedule)], params)
    assert_trees_close(injected, plain, rtol=1e-6, atol=1e-7)


def test_hyperparams_stay_float32_with_bfloat16_params():
    params = make_params(jnp.bfloat16)
    tx = jz.inject_hyperparams(jz.adam)(learning_rate=1e-3)
    iterates, state = run_ours(tx, params, steps=3)
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values() if jnp.issubdtype(v.dtype, jnp.floating))
    assert float(state.hyperparams["b2"]) == pytest.approx(0.999, rel=1e-7)  # bfloat16 would round it to 1
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(iterates[-1]))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.inner_state[0].mu))
    for tx in (jz.inject_hyperparams(jz.sgd)(0.1, 0.9), jz.inject_hyperparams(jz.clip_by_global_norm)(0.1)):
        updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))  # as the unwrapped ones


def test_any_numeric_hyperparameter_may_be_a_schedule():
    b1 = jz.linear_schedule(0.9, 0.5, 10)
    tx = jz.inject_hyperparams(jz.scale_by_adam)(b1=b1, b2=0.99)
    params = make_params()
    _, state = run_ours(tx, params, steps=4)
    assert float(state.hyperparams["b1"]) == pytest.approx(0.9 - 0.4 * 3 / 10)
    with pytest.raises(ValueError, match=r"b1 must be in \[0, 1\)"):
        jz.inject_hyperparams(jz.scale_by_adam)(b1=lambda count: 1.5)


def test_only_numeric_hyperparameters_are_injected_or_scheduled():
    """A dtype class and a mask function are callables, but not schedules: they stay static."""
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    grads = {"w": jnp.full(3, 0.5), "b": jnp.full(2, 0.5)}
    tx = jz.inject_hyperparams(jz.adam)(learning_rate=1e-3, mu_dtype=jnp.bfloat16)
    state = tx.init(params)
    assert "mu_dtype" not in state.hyperparams and state.inner_state[0].mu["w"].dtype == jnp.bfloat16

    mask = lambda p: {"w": True, "b": False}  # decay w only
    injected = jz.inject_hyperparams(jz.adamw)(learning_rate=0.1, weight_decay=0.5, mask=mask)
    plain = jz.adamw(0.1, weight_decay=0.5, mask=mask)
    expected, _ = plain.update(grads, plain.init(params), params)
    for update in (injected.update, jax.jit(injected.update)):  # eagerly, and under jit without static_args
        updates, _ = update(grads, injected.init(params), params)
        assert "mask" not in injected.init(params).hyperparams
        # float32 hyperparameter arrays round 1 - b2**t apart from Python floats: a few ulps of the update
        np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(expected["w"]), rtol=2e-5)
        np.testing.assert_allclose(np.asarray(updates["b"]), np.asarray(expected["b"]), rtol=2e-5)
    assert float(expected["w"][0]) != float(expected["b"][0])  # the mask matters here



def test_an_optional_real_hyperparameter_takes_a_schedule():
    """sgd's and rmsprop's momentum is None by default: a schedule for it reached sgd as a function ("momentum
    must be a finite real number"), where Optax schedules it (PyTorch's CyclicLR cycles momentum). Optional
    options that are not real numbers (counts, keys, masks, dtypes) stay static."""
    params, grads = {"w": jnp.ones(3)}, {"w": jnp.full(3, 0.5)}
    for factory in (jz.sgd, jz.rmsprop):
        tx = jz.inject_hyperparams(factory)(learning_rate=0.1, momentum=lambda count: 0.5 + 0.1 * count)
        state = tx.init(params)
        for t in range(3):  # the state keeps the value of the step just taken, at count t
            _, state = jax.jit(tx.update)(grads, state, params)
            assert float(state.hyperparams["momentum"]) == pytest.approx(0.5 + 0.1 * t)
    from jaxopt_zoo.wrappers import _takes_numbers

    static = [(jz.graft, "max_block_dim"), (jz.noisy_sgd, "seed"), (jz.schedule_free_sgd, "warmup_steps"),
              (jz.adamw, "mask"), (jz.adam, "mu_dtype"), (jz.add_noise, "key")]
    taking = [(jz.sgd, "momentum"), (jz.adadelta, "learning_rate"), (jz.soap, "shampoo_b2")]
    parameter = lambda f, name: inspect.signature(f).parameters[name]  # noqa: E731
    assert not any(_takes_numbers(parameter(f, name)) for f, name in static)
    assert all(_takes_numbers(parameter(f, name)) for f, name in taking)

def test_required_functions_stay_static_and_lookahead_can_be_injected():
    # masked's mask and partition's param_labels are required: they were taken for schedules and called with the
    # step count; lookahead's updates (LookaheadParams of plain gradients) failed the cast back to their dtypes.
    params, grads = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, {"w": jnp.full((2, 3), 0.5), "b": jnp.full(3, 0.5)}
    matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    labels = lambda p: jax.tree.map(lambda x: "sgd" if x.ndim > 1 else "adam", p)
    cases = [
        (jz.masked, (jz.sgd(0.1), matrices), (), params),
        (jz.partition, ({"sgd": jz.sgd(0.1), "adam": jz.adam(0.1)}, labels), (), params),
        (jz.lookahead, (jz.sgd(0.1), 2, 0.5), ("sync_period",), jz.LookaheadParams.init_synced(params)),
    ]
    for factory, args, static, p in cases:
        injected, plain = jz.inject_hyperparams(factory, static_args=static)(*args), factory(*args)
        state = injected.init(p)
        assert not {"mask", "param_labels"} & set(state.hyperparams)
        assert_trees_equal(jax.jit(injected.update)(grads, state, p)[0], plain.update(grads, plain.init(p), p)[0])


# Every factory declaring init-only arguments (jz.init_only): the other arguments it needs, and two values of each
# init-only argument. Per-example gradients (a leading batch axis) for the DP-SGD pair.
INIT_ONLY = {
    "adagrad": (jz.adagrad, dict(learning_rate=0.1), dict(initial_accumulator_value=(0.1, 3.0))),
    "scale_by_rss": (jz.scale_by_rss, {}, dict(initial_accumulator_value=(0.1, 3.0))),
    "scale_by_yogi": (jz.scale_by_yogi, {}, dict(initial_accumulator_value=(1e-6, 3.0))),
    "torch.adagrad": (jz.torch.adagrad, dict(lr=0.1), dict(initial_accumulator_value=(0.0, 3.0))),
    "rmsprop": (jz.rmsprop, dict(learning_rate=0.1), dict(initial_scale=(0.0, 3.0))),
    "scale_by_rms": (jz.scale_by_rms, {}, dict(initial_scale=(0.0, 3.0))),
    "scale_by_stddev": (jz.scale_by_stddev, {}, dict(initial_scale=(0.0, 3.0))),
    "rprop": (jz.rprop, {}, dict(learning_rate=(0.01, 0.5))),
    "scale_by_rprop": (jz.scale_by_rprop, {}, dict(learning_rate=(0.01, 0.5))),
    "scale_by_resilient_step": (jz.scale_by_resilient_step, {}, dict(learning_rate=(0.01, 0.5))),
    "torch.rprop": (jz.torch.rprop, {}, dict(lr=(0.01, 0.5))),
    "dadapt_adamw": (jz.dadapt_adamw, {}, dict(estim_lr0=(1e-6, 1e-2))),
    "scale_by_dadapt_adamw": (jz.scale_by_dadapt_adamw, {}, dict(estim_lr0=(1e-6, 1e-2))),
    "cocob": (jz.cocob, {}, dict(eps=(1e-8, 1.0))),
    "scale_by_cocob": (jz.scale_by_cocob, {}, dict(eps=(1e-8, 1.0))),
    "dowg": (jz.dowg, {}, dict(init_estim_sq_dist=(1e-4, 1.0))),
    "scale_by_dowg": (jz.scale_by_dowg, {}, dict(init_estim_sq_dist=(1e-4, 1.0))),
    "scale_by_distance_over_gradients": (jz.scale_by_distance_over_gradients, {}, dict(reps_rel=(1e-6, 0.5))),
    "psgd_kron": (jz.psgd_kron, {}, dict(key=(0, 7), precond_init_scale=(1.0, 3.0))),
    "scale_by_psgd_kron": (jz.scale_by_psgd_kron, {}, dict(key=(0, 7), precond_init_scale=(1.0, 3.0))),
    "add_noise": (jz.add_noise, dict(eta=0.5, gamma=0.55), dict(key=(0, 7), seed=(0, 7))),
    "noisy_sgd": (jz.noisy_sgd, dict(learning_rate=0.1), dict(key=(0, 7), seed=(0, 7))),
    "differentially_private_aggregate": (jz.differentially_private_aggregate,
                                         dict(l2_norm_clip=1.0, noise_multiplier=0.5), dict(key=(0, 7), seed=(0, 7))),
    "dpsgd": (jz.dpsgd, dict(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=0.5), dict(seed=(0, 7))),
}


def test_the_init_only_table_lists_every_declaring_factory():
    declaring = {f"{prefix}{name}" for namespace, prefix in ((jz, ""), (jz.torch, "torch."))
                 for name in namespace.__all__ if getattr(getattr(namespace, name), "init_only_args", None)}
    declaring -= {name.removeprefix("torch.") for name in declaring if name.startswith("torch.")
                  and getattr(jz.torch, name.removeprefix("torch.")) is getattr(jz, name.removeprefix("torch."), None)}
    assert declaring == set(INIT_ONLY)
    assert all(set(values) == INIT_ONLY[name][0].init_only_args for name, (_, _, values) in INIT_ONLY.items())


@pytest.mark.filterwarnings("ignore:.*seed.*:DeprecationWarning")
@pytest.mark.parametrize("name", list(INIT_ONLY))
def test_init_only_arguments_are_read_by_init_alone_and_not_injected(name):
    """An argument declared init-only changes nothing after init (so the declaration is true), and
    inject_hyperparams keeps it out of state.hyperparams, where Optax injects it and an edit does nothing."""
    factory, required, values = INIT_ONLY[name]
    per_example = name in ("differentially_private_aggregate", "dpsgd")
    params = {"w": jnp.asarray([1.0, -2.0, 0.5]), "m": jnp.asarray([[0.5, 1.0], [-1.0, 2.0]])}
    for arg, (first, second) in values.items():
        built = factory(**required, **{arg: first})
        state = built.init(params)
        for t in range(2):  # two steps from the same state: init's value, then the other value
            grads = jax.tree.map(lambda p: jnp.sin(p + t) + 0.1 * p, params)
            if per_example:
                grads = jax.tree.map(lambda g: jnp.stack([g, -0.5 * g]), grads)
            expected, next_state = built.update(grads, state, params)
            actual, other_state = factory(**required, **{arg: second}).update(grads, state, params)
            assert_trees_equal(*(jax.tree.map(_key_data, (u, s)) for u, s in ((actual, other_state),
                                                                                 (expected, next_state))))
            state = next_state
        injected = jz.inject_hyperparams(factory)(**required, **{arg: first})
        assert arg not in injected.init(params).hyperparams


def _key_data(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def test_momo_reads_an_edited_lower_bound():
    # Without adapt_lower_bound MoMo read the copy of lower_bound that init stored: an injected edit did nothing.
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    loss = lambda p: jnp.sum(p["w"] ** 2) + 1.0
    for factory in (jz.momo, jz.momo_adam):
        tx = jz.inject_hyperparams(factory)(learning_rate=1.0, lower_bound=0.0)
        state = tx.init(params)
        _, state = tx.update(jax.grad(loss)(params), state, params, value=loss(params))
        state.hyperparams["lower_bound"] = jnp.asarray(0.9, jnp.float32)
        edited, _ = tx.update(jax.grad(loss)(params), state, params, value=loss(params))
        plain = factory(learning_rate=1.0, lower_bound=0.9)
        expected, _ = plain.update(jax.grad(loss)(params), state.inner_state, params, value=loss(params))
        assert_trees_close(edited, expected, rtol=1e-6, atol=0)
        unedited = factory(learning_rate=1.0, lower_bound=0.0).update(
            jax.grad(loss)(params), state.inner_state, params, value=loss(params))[0]
        assert not np.allclose(np.asarray(edited["w"]), np.asarray(unedited["w"]))


@pytest.mark.parametrize("inject", [jz.inject_hyperparams, jz.inject_stateful_hyperparams])
@pytest.mark.parametrize("factory", [jz.prodigy, jz.dowg], ids=["prodigy", "dowg"])
def test_a_state_made_of_an_injected_hyperparameter_can_be_donated(inject, factory):
    # Prodigy keeps d_0 (estim_lr0) and DoWG its first estimate as state leaves: given the injected arrays, they were
    # the very buffers of the hyperparams, and a donated step raised "Attempt to donate the same buffer twice".
    params = {"w": jnp.ones((3, 4))}
    tx = inject(factory)(learning_rate=1.0)
    step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.ones_like, p), s, p), donate_argnums=(1,))
    state = tx.init(params)
    assert len({id(x) for x in jax.tree.leaves(state)}) == len(jax.tree.leaves(state))
    jax.block_until_ready(step(params, state))


def test_an_integer_for_a_real_hyperparameter_is_injected_as_a_float():
    # jz.torch's momentum=0 was an int32 array: editing it to 0.9 needed a float array and compiled the step again.
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    tx = jz.inject_hyperparams(jz.torch.sgd)(lr=0.1, momentum=0, weight_decay=np.int64(0))
    state = tx.init(params)
    assert state.hyperparams["momentum"].dtype == state.hyperparams["weight_decay"].dtype == jnp.float32
    step = jax.jit(tx.update)
    _, state = step(params, state, params)
    state.hyperparams["momentum"] = jnp.asarray(0.9, jnp.float32)
    _, state = step(params, state, params)  # torch's buffer starts here, at g
    updates, _ = step(params, state, params)  # then 0.9 g + g
    np.testing.assert_allclose(updates["w"], -0.1 * 1.9 * np.asarray(params["w"]), rtol=1e-6)
    assert step._cache_size() == 1
    muon = jz.inject_hyperparams(jz.muon)(learning_rate=0.1, ns_steps=3).init({"w": jnp.ones((2, 3))})
    assert muon.hyperparams["ns_steps"].dtype == jnp.int32  # a count stays an integer


def test_integers_that_decide_the_program_stay_static_and_traced_name_static_args():
    # galore's rank, lbfgs' memory_size, soap's precondition_frequency are checked as whole numbers when built,
    # which a traced value cannot be: inject_hyperparams keeps them static (jz.static_only; each had to be named in
    # static_args, one error at a time), and traced by hand the message names the fix, not "got JitTracer".
    params = {"w": jnp.ones((4, 8))}
    tx = jz.inject_hyperparams(jz.lbfgs)(learning_rate=0.1, memory_size=3, linesearch=None)
    jax.jit(tx.update)(params, tx.init(params), params)
    assert "memory_size" not in tx.init(params).hyperparams and jz.lbfgs.static_only_args == {"memory_size"}
    for factory, names in ((jz.shampoo, 2), (jz.soap, 2), (jz.psgd_kron, 2), (jz.galore, 2), (jz.adafactor, 1)):
        assert len(factory.static_only_args) == names, factory
    with pytest.raises(ValueError, match=r"^lbfgs: memory_size must be a concrete integer, not traced, got .*"
                                         r"pass static_args=\('memory_size',\)"):
        jax.jit(lambda m: jz.lbfgs(0.1, memory_size=m, linesearch=None).init(params))(3)


def test_static_args_and_hyperparam_dtype():
    tx = jz.inject_hyperparams(jz.rmsprop, static_args=("momentum",))(learning_rate=0.01, momentum=0.9)
    state = tx.init(make_params())
    assert "momentum" not in state.hyperparams and "learning_rate" in state.hyperparams
    tx = jz.inject_hyperparams(jz.sgd, hyperparam_dtype=jnp.bfloat16)(learning_rate=0.01)
    assert tx.init(make_params()).hyperparams["learning_rate"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\), got Array\(1"):  # 0.999 rounds to 1 in bfloat16
        jz.inject_hyperparams(jz.adam, hyperparam_dtype=jnp.bfloat16)(learning_rate=0.01).init(make_params())


def test_inject_hyperparams_reports_bad_input():
    with pytest.raises(ValueError, match=r"inject_hyperparams: static_args \['lr'\] are not parameters of adam"):
        jz.inject_hyperparams(jz.adam, static_args="lr")
    with pytest.raises(ValueError, match=r"learning_rate must be >= 0, got -1\.0"):
        jz.inject_hyperparams(jz.adam)(learning_rate=-1.0)


def _nan_at(params, step):
    grads = jax.tree.map(lambda p: grad_fn(p, step, jnp).astype(p.dtype), params)
    grads["dense"]["w"] = grads["dense"]["w"].at[0, 0].set(jnp.nan)
    return grads


def test_apply_if_finite_skips_non_finite_steps_exactly():
    params = make_params()
    params["dense"]["b"] = params["dense"]["b"].at[0].set(-0.0)
    tx = jz.apply_if_finite(jz.adam(0.01), max_consecutive_errors=2)
    step = jax.jit(tx.update)
    state = tx.init(params)
    updates, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    params = jz.apply_updates(params, updates)
    for bad in range(1, 3):
        updates, new_state = step(_nan_at(params, bad), state, params)
        new_params = jz.apply_updates(params, updates)
        assert_trees_equal(new_params, params)  # bit for bit, -0.0 included
        assert_trees_equal(new_state.inner_state, state.inner_state)
        assert int(new_state.notfinite_count) == bad and int(new_state.total_notfinite) == bad
        assert not bool(new_state.last_finite)
        state = new_state
    # A third non-finite step in a row exceeds max_consecutive_errors=2: it is applied.
    updates, state = step(_nan_at(params, 3), state, params)
    assert bool(jnp.isnan(jz.apply_updates(params, updates)["dense"]["w"][0, 0]))
    assert int(state.notfinite_count) == 3


def test_apply_if_finite_counts_like_optax_and_resets_on_a_finite_step():
    params = make_params()
    ours, theirs = jz.apply_if_finite(jz.sgd(0.1), 5), optax.apply_if_finite(optax.sgd(0.1), 5)
    s1, s2 = ours.init(params), theirs.init(params)
    for t in range(1, 7):
        grads = _nan_at(params, t) if t in (2, 3, 5) else jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = theirs.update(grads, s2, params)
        np.testing.assert_array_equal(np.asarray(u1["scale"]), np.asarray(u2["scale"]))
        assert (int(s1.notfinite_count), int(s1.total_notfinite)) == (int(s2.notfinite_count), int(s2.total_notfinite))
    assert int(s1.total_notfinite) == 3 and int(s1.notfinite_count) == 0


def test_apply_if_finite_applies_every_non_finite_step_after_max_skipped_until_a_finite_one():
    # The docstring said "after more than max ... the next non-finite step": it is every one after exactly max.
    params = {"w": jnp.ones(1)}
    nan, finite = {"w": jnp.asarray([jnp.nan])}, {"w": jnp.asarray([1.0])}
    tx = jz.apply_if_finite(jz.sgd(1.0), max_consecutive_errors=2)
    state, applied = tx.init(params), []
    for grads in (nan, nan, nan, nan, finite, nan):
        updates, state = tx.update(grads, state, params)
        applied.append(not bool(jnp.all(updates["w"] == 0)))
    assert applied == [False, False, True, True, True, False]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_multisteps_applies_the_mean_gradient_once_every_k(dtype):
    params = make_params(dtype)
    k = 4
    tx = jz.MultiSteps(jz.adam(0.01), every_k_schedule=k)
    state = tx.init(params)
    step = jax.jit(tx.update)
    micro = [jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(dtype), params) for t in range(1, k + 1)]
    for i, grads in enumerate(micro):
        updates, state = step(grads, state, params)
        emitted = i == k - 1
        assert bool(tx.has_updated(state)) == emitted
        if not emitted:
            assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    mean = jax.tree.map(lambda *gs: (sum(g.astype(jnp.float32) for g in gs) / k).astype(dtype), *micro)
    single, _ = jz.adam(0.01).update(mean, jz.adam(0.01).init(params), params)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2e-2, atol=1e-4)  # updates are ~1e-2
    assert_trees_close(updates, single, **tolerance)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.acc_grads))


def test_multisteps_matches_optax_bit_for_bit_with_a_schedule_of_k():
    params = make_params()
    every_k = lambda step: jnp.where(step < 2, 2, 3)
    ours = jz.MultiSteps(jz.adamw(0.01), every_k).gradient_transformation()
    theirs = optax.MultiSteps(optax.adamw(0.01), every_k).gradient_transformation()
    (a, state), (b, _) = run_together([ours, theirs], params, steps=13)
    assert_trees_equal(a, b)
    assert (int(state.gradient_step), int(state.mini_step)) == (5, 0)  # 2 + 2 + 3 + 3 + 3 = 13 micro-steps


def test_multisteps_skips_with_optax_skip_functions_and_python_bools():
    params = make_params()
    grads = [jax.tree.map(lambda p: grad_fn(p, t, jnp), params) for t in range(1, 6)]
    grads[2] = _nan_at(params, 3)
    ours = jz.MultiSteps(jz.adam(0.01), 2, should_skip_update_fn=optax.skip_not_finite)
    theirs = optax.MultiSteps(optax.adam(0.01), 2, should_skip_update_fn=optax.skip_not_finite)
    python_bool = jz.MultiSteps(
        jz.adam(0.01), 2, should_skip_update_fn=lambda g, step, p: (bool(any(np.isnan(np.asarray(x)).any() for x in jax.tree.leaves(g))), ())
    )
    s1, s2, s3 = ours.init(params), theirs.init(params), python_bool.init(params)
    for g in grads:
        u1, s1 = jax.jit(ours.update)(g, s1, params)
        u2, s2 = jax.jit(theirs.update)(g, s2, params)
        u3, s3 = python_bool.update(g, s3, params)
        assert_trees_equal(u1, u2)
        assert_trees_close(u3, u1, rtol=1e-6)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(u3))
    assert int(s1.gradient_step) == int(s3.gradient_step) == 2  # 4 finite micro-steps, k = 2


def test_multisteps_sum_matches_optax():
    params = make_params()
    a, _ = run_ours(jz.MultiSteps(jz.sgd(0.01), 3, use_grad_mean=False).gradient_transformation(), params, steps=9)
    b, _ = run_ours(optax.MultiSteps(optax.sgd(0.01), 3, use_grad_mean=False).gradient_transformation(), params, steps=9)
    assert_trees_equal(a, b)


def test_multisteps_keeps_a_none_leaf_frozen_with_its_accumulator_and_inner_state():
    # It used to hand the inner optimizer the leaf's stale accumulator: the frozen param moved.
    tx = jz.MultiSteps(jz.sgd(0.1, momentum=0.9), every_k_schedule=2)
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    state = tx.init(params)
    for t in (1, 2):  # one applied step with both leaves: a history for b
        _, state = tx.update(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), state, params)
    for t in (3, 4):  # b frozen for a whole cycle, the second call applying it
        updates, new_state = tx.update({"w": grad_fn(params["w"], t, jnp), "b": None}, state, params)
        assert updates["b"] is None
        assert_trees_equal(new_state.acc_grads["b"], state.acc_grads["b"])
        assert_trees_equal(new_state.inner_opt_state[0].trace["b"], state.inner_opt_state[0].trace["b"])
        state = new_state
    assert int(state.gradient_step) == 2


def test_multisteps_names_a_gradient_tree_unlike_its_accumulator():
    # MultiSteps(lookahead(...)) accumulates LookaheadParams-shaped gradients (Optax's raises JAX's bare error).
    params = {"w": jnp.ones(3)}
    tx = jz.MultiSteps(jz.lookahead(jz.sgd(0.1), 2, 0.5), every_k_schedule=2)
    state = tx.init(jz.LookaheadParams.init_synced(params))
    with pytest.raises(ValueError, match=r"^MultiSteps: the updates tree does not match the accumulated gradients"):
        tx.update(params, state)


def test_multisteps_rejects_bad_k():
    with pytest.raises(ValueError, match="MultiSteps: every_k_schedule must be an integer >= 1, got 0"):
        jz.MultiSteps(jz.sgd(0.1), 0)


def _lookahead_reference(params, sync_period, alpha, steps, lr=0.05):
    # Zhang et al. (2019), Algorithm 1, as two nested loops over plain SGD on grad_fn.
    slow = fast = np.asarray(params, np.float64)
    t, out = 0, []
    while t < steps:
        for _ in range(sync_period):
            t += 1
            fast = fast - lr * grad_fn(fast, t)
            if t % sync_period == 0:
                slow = slow + alpha * (fast - slow)
                fast = slow
            out.append(fast)
            if t == steps:
                break
    return out


def test_lookahead_matches_the_nested_loops_and_optax(x64):
    start = make_params(jnp.float64)["dense"]["w"]
    tx = jz.lookahead(jz.sgd(0.05), sync_period=3, slow_step_size=0.5)
    params = jz.LookaheadParams.init_synced(start)
    state = tx.init(params)
    theirs_tx = optax.lookahead(optax.sgd(0.05), 3, 0.5)
    theirs_params, theirs_state = optax.LookaheadParams.init_synced(start), theirs_tx.init(optax.LookaheadParams.init_synced(start))
    expected = _lookahead_reference(start, 3, 0.5, 10)
    for t in range(1, 11):
        updates, state = tx.update(grad_fn(params.fast, t, jnp), state, params)
        params = jz.apply_updates(params, updates)
        np.testing.assert_allclose(params.fast, expected[t - 1], rtol=1e-12)
        u2, theirs_state = theirs_tx.update(grad_fn(theirs_params.fast, t, jnp), theirs_state, theirs_params)
        theirs_params = optax.apply_updates(theirs_params, u2)
        np.testing.assert_array_equal(np.asarray(params.fast), np.asarray(theirs_params.fast))


def test_lookahead_reset_state_matches_optax_and_params_can_be_donated():
    start = make_params()
    ours, theirs = jz.lookahead(jz.adam(0.05), 3, 0.5, reset_state=True), optax.lookahead(optax.adam(0.05), 3, 0.5, reset_state=True)
    p1 = jz.LookaheadParams.init_synced(start)
    p2 = optax.LookaheadParams(jax.tree.map(jnp.copy, start), jax.tree.map(jnp.copy, start))
    s1, s2 = ours.init(p1), theirs.init(p2)
    step = jax.jit(lambda p, s, g: (lambda u, s: (jz.apply_updates(p, u), s))(*ours.update(g, s, p)), donate_argnums=(0, 1))
    for t in range(1, 8):
        p1, s1 = step(p1, s1, jax.tree.map(lambda x: grad_fn(x, t, jnp), p1.fast))
        u2, s2 = theirs.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p2.fast), s2, p2)
        p2 = optax.apply_updates(p2, u2)
        assert_trees_close(p1.fast, p2.fast, rtol=1e-6)


def test_lookahead_passes_a_none_update_through_and_keeps_both_copies_of_its_param():
    tx = jz.lookahead(jz.sgd(0.1, momentum=0.9), sync_period=2, slow_step_size=0.5)
    params = jz.LookaheadParams.init_synced({"w": jnp.ones(3), "frozen": jnp.full(2, 4.0)})
    without = jz.LookaheadParams.init_synced({"w": jnp.ones(3)})
    sgd_state = jz.sgd(0.1, momentum=0.9).init({"w": jnp.ones(3)})
    state, state_without = tx.init(params), jz.LookaheadState(sgd_state, jnp.zeros([], jnp.int32))
    for t in range(4):  # two sync steps
        grads = {"w": jnp.full(3, 1.0 + t), "frozen": None}
        updates, state = tx.update(grads, state, params)
        assert updates.fast["frozen"] is None and updates.slow["frozen"] is None
        params = jz.apply_updates(params, updates)
        expected, state_without = tx.update({"w": grads["w"]}, state_without, without)
        without = jz.apply_updates(without, expected)
        assert_trees_equal((params.fast["w"], params.slow["w"]), (without.fast["w"], without.slow["w"]))
    assert_trees_equal((params.fast["frozen"], params.slow["frozen"]), (jnp.full(2, 4.0), jnp.full(2, 4.0)))


def test_lookahead_reports_bad_input():
    with pytest.raises(ValueError, match="lookahead: sync_period must be an integer >= 1, got 0"):
        jz.lookahead(jz.sgd(0.1), 0, 0.5)
    with pytest.raises(ValueError, match=r"lookahead: slow_step_size must be in \[0, 1\]"):
        jz.lookahead(jz.sgd(0.1), 2, 1.5)
    with pytest.raises(ValueError, match="params must be LookaheadParams"):
        jz.lookahead(jz.sgd(0.1), 2, 0.5).init(make_params())
    # Gradients given as LookaheadParams, or shaped otherwise than the fast params: a raw pytree error inside JAX.
    tx = jz.lookahead(jz.sgd(0.1), 2, 0.5)
    params = jz.LookaheadParams.init_synced({"w": jnp.zeros((2, 3))})
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"^lookahead: the updates are the gradients of the fast params"):
        tx.update(jz.LookaheadParams(params.fast, params.fast), state, params)
    with pytest.raises(ValueError, match=r"^lookahead: the updates tree does not match the fast params"):
        tx.update({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, state, params)


def test_ema_params_keeps_a_float32_average_of_bfloat16_params():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    tx = jz.ema_params(0.999)
    state = tx.init(params)
    moved = {"w": jnp.full(4, 2.0, jnp.bfloat16)}
    update = jax.jit(tx.update)
    for _ in range(3000):
        _, state = update(jax.tree.map(jnp.zeros_like, moved), state, moved)
    assert state.ema["w"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(state.ema["w"]), 2.0 - 0.999**3000, rtol=1e-3)


def test_ema_params_tracks_the_average_of_the_iterates(x64):
    params = make_params(jnp.float64)
    tx = jz.chain(jz.adam(0.05), jz.ema_params(0.9))
    iterates, state = run_ours(tx, params, steps=20)
    expected = jax.tree.map(np.asarray, params)
    for iterate in iterates:
        expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * np.asarray(p), expected, iterate)
    assert_trees_close(state[-1].ema, expected, rtol=1e-12)



@pytest.mark.parametrize("start, every", [(1, 1), (4, 3), (30, 1)])
def test_swa_params_is_pytorchs_averaged_model(start, every, x64):
    """The equal-weight average of the iterates from step ``start`` on, every ``every`` steps, as PyTorch's
    AveragedModel.update_parameters keeps it (tests/reference.py); (30, 1): no step averaged in 20."""
    params = make_params(jnp.float64)
    tx = jz.chain(jz.adam(0.05), jz.swa_params(start, every))
    iterates, state = run_ours(tx, params, steps=20)
    leaves = [jax.tree.leaves(iterate) for iterate in iterates]
    expected = [reference.swa_average([leaf[i] for leaf in leaves], start, every) for i in range(len(leaves[0]))]
    assert int(state[-1].n_averaged) == expected[0][1] == max(0, (20 - start) // every + 1)
    average = [np.asarray(params_leaf) if n == 0 else a
               for params_leaf, (a, n) in zip(jax.tree.leaves(params), expected)]  # before any: the initial params
    assert_trees_close(jax.tree.leaves(state[-1].average), average, rtol=1e-13)


def test_swa_params_averages_bfloat16_params_as_held_in_float32():
    # 1 / (n + 1) in bfloat16 is off by up to 0.4%: the average is float32, of the params as apply_updates rounds them.
    params = {"w": jnp.linspace(-1, 1, 5).astype(jnp.bfloat16), "skip": None}
    tx = jz.swa_params(every=2)
    state, update, held = tx.init(params), jax.jit(tx.update), []
    for t in range(1, 41):
        updates = {"w": jnp.full(5, 0.01 * (-1) ** t, jnp.bfloat16) * t, "skip": None}
        _, state = update(updates, state, params)
        params = jz.apply_updates(params, updates)
        held.append(np.asarray(params["w"], np.float64))
    assert state.average["w"].dtype == jnp.float32 and state.average["skip"] is None
    expected, n = reference.swa_average(held, 1, 2)
    assert int(state.n_averaged) == n == 20
    np.testing.assert_allclose(np.asarray(state.average["w"]), expected, rtol=1e-6, atol=1e-7)


def test_swa_params_reports_bad_input():
    with pytest.raises(ValueError, match="swa_params: start must be an integer >= 1, got 0"):
        jz.swa_params(0)
    with pytest.raises(ValueError, match="swa_params: every must be an integer >= 1, got 2.5"):
        jz.swa_params(every=2.5)
    with pytest.raises(ValueError, match="swa_params needs the parameters"):
        tx = jz.swa_params()
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))

@pytest.mark.parametrize(
    "tx",
    [
        jz.chain(jz.clip_by_global_norm(1.0), jz.adam(1e-2)),
        jz.chain(jz.clip_by_global_norm(1.0), jz.masked(jz.adam(1e-2), {"dense": True, "scale": False})),
        jz.chain(jz.clip_by_global_norm(1.0), jz.partition({"a": jz.adam(1e-2), "s": jz.sgd(0.1)}, {"dense": "a", "scale": "s"})),
    ],
    ids=["chain", "masked", "partition"],
)
def test_map_params_touches_only_per_parameter_state(tx):
    params = make_params()
    _, state = run_ours(tx, params, steps=3)
    doubled = jz.tree.map_params(tx, lambda x: 2 * x, state)
    is_count = lambda path: "count" in jax.tree_util.keystr(path)
    for (path, new), old in zip(jax.tree_util.tree_flatten_with_path(doubled)[0], jax.tree.leaves(state)):
        expected = old if is_count(path) else 2 * old
        np.testing.assert_array_equal(np.asarray(new), np.asarray(expected), err_msg=jax.tree_util.keystr(path))
    assert any(is_count(p) for p, _ in jax.tree_util.tree_flatten_with_path(doubled)[0])


WRAPPERS = {
    "inject_hyperparams": lambda make: jz.inject_hyperparams(lambda learning_rate: jz.chain(make(), jz.scale(learning_rate)))(learning_rate=1.0),
    "apply_if_finite": lambda make: jz.apply_if_finite(make(), 3),
    "MultiSteps": lambda make: jz.MultiSteps(make(), 2),
    "masked": lambda make: jz.masked(make(), {"dense": True, "scale": False}),
    "ema_params": lambda make: jz.chain(make(), jz.ema_params(0.9)),
    "swa_params": lambda make: jz.chain(make(), jz.swa_params(2)),
}


@pytest.mark.parametrize("seed", list(SEEDS))
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_wrapper_composes_with_seed_and_survives_serialization(wrapper, seed):
    tx = WRAPPERS[wrapper](SEEDS[seed])
    step = jax.jit(tx.update)  # one program for both runs

    def run(interrupted: bool) -> list:
        params = make_params()
        state = tx.init(params)
        trajectory = []
        for t in range(1, 7):
            if interrupted and t == 4:  # save and restore mid-run, into a fresh template
                blob = flax.serialization.to_bytes(state)
                state = flax.serialization.from_bytes(tx.init(params), blob)
            updates, state = step(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), state, params)
            params = jz.apply_updates(params, updates)
            trajectory.append(params)
        return trajectory, state  # (ema_params' and swa_params' averages are in the state only)

    trajectory, state = run(interrupted=True)
    assert_trees_equal((trajectory, state), run(interrupted=False))
    assert not np.allclose(np.asarray(trajectory[-1]["dense"]["w"]), np.asarray(make_params()["dense"]["w"]))


def test_tree_map_params_maps_a_lookahead_state():
    # Optax's lookahead_test maps its state: here init refused the placeholder ("params must be LookaheadParams").
    params = {"x": jnp.asarray(3.0), "y": jnp.asarray([-3.0, 1.0])}
    tx = jz.lookahead(jz.adam(0.1), sync_period=3, slow_step_size=0.5)
    state = tx.init(jz.LookaheadParams.init_synced(params))
    halved = jz.tree_map_params(tx, lambda x: x.astype(jnp.bfloat16), state)
    assert halved.fast_state[0].mu["y"].dtype == jnp.bfloat16 and halved.fast_state[0].count.dtype == jnp.int32


def test_inject_hyperparams_given_a_stateful_schedule_is_inject_stateful_hyperparams():
    # As in Optax (its schedules tests): it called the schedule with the step count, "'ArrayImpl' object has no
    # attribute 'total'".
    class Total(NamedTuple):
        total: jax.Array

    class Accumulating:  # the rate is the sum of the addenda seen so far
        def init(self):
            return Total(jnp.zeros([], jnp.float32))

        def update(self, state, **extra_args):
            return Total(state.total + extra_args["addendum"])

        def __call__(self, state, **extra_args):
            return state.total

    params = (jnp.ones(3),)
    tx = jz.inject_hyperparams(jz.scale)(step_size=Accumulating())
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(params, state, params, addendum=jnp.float32(0.3))
    assert isinstance(state, jz.InjectStatefulHyperparamsState)
    np.testing.assert_allclose(updates[0], 0.3 * np.ones(3), rtol=1e-6)  # the second step's rate, 0.3
    np.testing.assert_allclose(state.hyperparams["step_size"], 0.3, rtol=1e-6)
