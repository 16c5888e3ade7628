"""Wrappers that decide when an update happens (apply_every, conditionally_mask/transform, MultiSteps' skip
functions, incremental/periodic_update): Optax bit for bit on every branch, float64 references, storage."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    assert_vmap_matches_separate_runs,
    grad_fn,
    make_params,
    run_ours,
    run_reference,
)
from tests.test_optimizers import check_eight_bit_state, eight_bit_params

STEPS = 20
NAN_STEPS = (4, 9, 10)  # a lone non-finite micro-step and two in a row


def every_third_but_first(step):
    return step % 3 != 1


def gradients(params, t, nan=False):
    grads = jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params)
    if nan:  # one entry of the matrix only: the rest of the tree stays finite
        grads["dense"]["w"] = grads["dense"]["w"].at[1, 2].set(jnp.nan if t % 2 else jnp.inf)
    return grads


def run(tx, params, steps=STEPS, nan_steps=()):
    """The jitted trajectory of ``tx`` (params after each step) and its last state; NaNs at ``nan_steps``."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    iterates = []
    for t in range(1, steps + 1):
        updates, state = update(gradients(params, t, t in nan_steps), state, params)
        params = jz.apply_updates(params, updates)
        iterates.append(params)
    return iterates, state


def large(max_squared_norm, **kwargs):
    return functools.partial(jz.skip_large_updates, max_squared_norm=max_squared_norm, **kwargs)


# name: (ours, theirs, steps with non-finite gradients). Each covers both branches of its wrapper.
OPTAX_CASES = {
    "apply_every": (
        lambda: jz.chain(jz.apply_every(3), jz.adam(0.05)),
        lambda: optax.chain(optax.apply_every(3), optax.adam(0.05)),
        (),
    ),
    "apply_every_k1": (
        lambda: jz.chain(jz.apply_every(), jz.sgd(0.05)),
        lambda: optax.chain(optax.apply_every(), optax.sgd(0.05)),
        (),
    ),
    "conditionally_mask": (
        lambda: jz.conditionally_mask(jz.adam(0.05), every_third_but_first),
        lambda: optax.conditionally_mask(optax.adam(0.05), every_third_but_first),
        (),
    ),
    "conditionally_transform": (
        lambda: jz.chain(jz.conditionally_transform(jz.scale_by_adam(), lambda s: s % 2 == 0), jz.scale(-0.05)),
        lambda: optax.chain(
            optax.conditionally_transform(optax.scale_by_adam(), lambda s: s % 2 == 0), optax.scale(-0.05)
        ),
        (),
    ),
    "MultiSteps_skip_not_finite": (
        lambda: jz.MultiSteps(jz.adam(0.05), 2, should_skip_update_fn=jz.skip_not_finite),
        lambda: optax.MultiSteps(optax.adam(0.05), 2, should_skip_update_fn=optax.skip_not_finite),
        NAN_STEPS,
    ),
    # Squared gradient norms run from ~320 to ~480 on this trajectory: some micro-steps pass, some are skipped.
    "MultiSteps_skip_large_updates": (
        lambda: jz.MultiSteps(jz.adam(0.05), 3, should_skip_update_fn=large(400.0)),
        lambda: optax.MultiSteps(
            optax.adam(0.05), 3,
            should_skip_update_fn=functools.partial(optax.skip_large_updates, max_squared_norm=400.0),
        ),
        NAN_STEPS,
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs, nan_steps = OPTAX_CASES[name]
    params = make_params()
    our_iterates, our_state = run(ours(), params, nan_steps=nan_steps)
    their_iterates, their_state = run(theirs(), params, nan_steps=nan_steps)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    before = [params] + our_iterates
    moved = [not np.array_equal(a["dense"]["w"], b["dense"]["w"]) for a, b in zip(before, our_iterates)]
    if name not in ("apply_every_k1", "conditionally_transform"):  # those two move at every step
        assert any(moved) and not all(moved), "both branches (an update and none) must be taken"
    if name == "conditionally_transform":  # scale_by_adam ran at every other step only
        assert int(our_state[0].inner_state.count) == STEPS // 2


def test_multisteps_skip_functions_take_both_branches_and_record_why():
    params = make_params()
    tx = jz.MultiSteps(jz.sgd(0.05), 3, should_skip_update_fn=large(400.0))
    state, update = tx.init(params), jax.jit(tx.update)
    seen = []
    for t in range(1, STEPS + 1):
        _, state = update(gradients(params, t, t in NAN_STEPS), state, params)
        seen.append((bool(state.skip_state["should_skip"]), float(state.skip_state["norm_squared"])))
    assert any(skip for skip, _ in seen) and not all(skip for skip, _ in seen)
    assert all(skip == (not norm < 400.0) for skip, norm in seen)
    assert all(skip and not np.isfinite(norm) for (skip, norm), t in zip(seen, range(1, STEPS + 1)) if t in NAN_STEPS)


# --- float64 references ------------------------------------------------------------------------


def test_apply_every_matches_float64_reference(x64):
    params = make_params(jnp.float64)
    iterates, _ = run_ours(jz.chain(jz.apply_every(3), jz.sgd(0.05)), params, steps=STEPS)
    expected = run_reference(reference.apply_every_sgd(0.05, 3), params, STEPS)
    assert_trees_close(iterates, expected, rtol=1e-12, atol=1e-14)


def test_polyak_average_and_target_copy_match_float64_references(x64):
    params = make_params(jnp.float64)
    iterates, _ = run_ours(jz.sgd(0.05, momentum=0.9), params, steps=STEPS, jit=False)
    average, target = params, params
    averages, targets = [], []
    for n, p in enumerate(iterates, start=1):
        average = jz.incremental_update(p, average, step_size=0.1)
        target = jz.periodic_update(p, target, steps=n, update_period=4)
        averages.append(average)
        targets.append(target)
    as_tree = lambda per_leaf: [jax.tree.unflatten(jax.tree.structure(params), leaves) for leaves in zip(*per_leaf)]
    leaves = lambda trees, i: [jax.tree.leaves(x)[i] for x in trees]
    initial = jax.tree.leaves(params)
    expected_averages = as_tree([reference.polyak_average(leaves(iterates, i), x, 0.1) for i, x in enumerate(initial)])
    expected_targets = as_tree([reference.target_copy(leaves(iterates, i), x, 4) for i, x in enumerate(initial)])
    assert_trees_close(averages, expected_averages, rtol=1e-12, atol=1e-14)
    assert_trees_equal(targets, jax.tree.map(jnp.asarray, expected_targets))


def test_incremental_and_periodic_update_match_optax_and_pass_none_leaves():
    new, old = make_params(seed=1), make_params(seed=2)
    jitted = jax.jit(lambda n, o, s: (jz.incremental_update(n, o, 0.3), jz.periodic_update(n, o, s, 3)))
    optaxed = jax.jit(lambda n, o, s: (optax.incremental_update(n, o, 0.3), optax.periodic_update(n, o, s, 3)))
    for steps in (0, 1, 3, 5):
        assert_trees_equal(jitted(new, old, steps), optaxed(new, old, steps))
    with_none = new | {"scale": None}
    average, target = jitted(with_none, old, 3)
    assert average["scale"] is None and target["scale"] is None
    batched = jax.vmap(lambda s: jz.periodic_update(new, old, s, 3))(jnp.arange(3))  # one decision per example
    np.testing.assert_array_equal(batched["scale"], [new["scale"], old["scale"], old["scale"]])


# --- None leaves, storage, extra args ----------------------------------------------------------


def test_none_updates_pass_through_and_keep_state_bit_for_bit():
    params = {"w": make_params()["dense"]["w"], "b": make_params()["dense"]["b"]}
    for tx, accumulator in [
        (jz.apply_every(2, accumulator_dtype=jz.StochasticBF16()), lambda s: s.grad_acc),
        (jz.conditionally_mask(jz.trace(0.9), lambda s: s % 2 == 0), lambda s: s.inner_state.trace),
        (jz.conditionally_transform(jz.trace(0.9), lambda s: s % 2 == 1), lambda s: s.inner_state.trace),
    ]:
        update = jax.jit(tx.update)
        state = tx.init(params)
        for t in (1, 2, 3):  # some history first, so the kept state is not all zeros
            grads = {"w": None if t == 3 else grad_fn(params["w"], t, jnp), "b": grad_fn(params["b"], t, jnp)}
            before = accumulator(state)["w"]
            updates, state = update(grads, state, params)
            params = jz.apply_updates(params, updates)
        assert updates["w"] is None and updates["b"] is not None
        np.testing.assert_array_equal(np.asarray(accumulator(state)["w"]), np.asarray(before), strict=True)
    with_none = {"w": None, "b": jnp.array([jnp.nan, 3.0])}
    assert int(jz.skip_not_finite(with_none, 0, None)[1]["num_not_finite"]) == 1
    _, info = jz.skip_large_updates(with_none | {"b": jnp.array([4.0, 3.0])}, 0, None, 1.0)
    assert float(info["norm_squared"]) == 25.0


@pytest.mark.parametrize("storage", [jnp.bfloat16, jz.StochasticBF16()], ids=["bfloat16", "stochastic"])
def test_apply_every_accumulator_storages(storage):
    params = make_params()
    expected, _ = run_ours(jz.chain(jz.apply_every(3), jz.sgd(0.05)), params, steps=6)
    iterates, state = run_ours(jz.chain(jz.apply_every(3, accumulator_dtype=storage), jz.sgd(0.05)), params, steps=6)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[0].grad_acc))
    assert_trees_close(iterates, expected, rtol=2e-2, atol=2e-3)


def test_apply_every_eight_bit_accumulator():
    params = eight_bit_params()
    tx = jz.apply_every(2, accumulator_dtype=jz.Blockwise8Bit())
    state, update = jax.jit(tx.init)(params), jax.jit(tx.update)  # eager 8-bit init compiles op by op
    check_eight_bit_state(state, (1, 0))
    grads = [{k: grad_fn(p, t, jnp) for k, p in params.items()} for t in (1, 2)]
    held, state = update(grads[0], state)
    summed, state = update(grads[1], state)
    check_eight_bit_state(state, (1, 0))
    assert float(jnp.abs(held["w"]).max()) == 0.0
    # The emitted sum is computed before it is stored: only the first gradient went through the 8-bit code.
    exact = grads[0]["w"] + grads[1]["w"]
    assert float(jnp.linalg.norm(summed["w"] - exact) / jnp.linalg.norm(exact)) < 0.02
    np.testing.assert_allclose(summed["b"], grads[0]["b"] + grads[1]["b"], rtol=1e-6)


def test_extra_args_reach_the_predicate_only_when_forwarded():
    params = {"w": jnp.ones(2)}
    for wrapper in (jz.conditionally_mask, jz.conditionally_transform):
        forwarded = wrapper(jz.sgd(1.0), lambda step, loss: loss < 1.0, forward_extra_args=True)
        taken, _ = forwarded.update(params, forwarded.init(params), params, loss=jnp.asarray(0.5))
        np.testing.assert_array_equal(taken["w"], -params["w"])
        kept, _ = forwarded.update(params, forwarded.init(params), params, loss=jnp.asarray(2.0))
        assert float(kept["w"][0]) == (0.0 if wrapper is jz.conditionally_mask else 1.0)
        plain = wrapper(jz.sgd(1.0), lambda step: step == 0)  # extra args reach the inner only
        plain.update(params, plain.init(params), params, loss=jnp.asarray(0.5))


def test_a_non_scalar_decision_and_a_foreign_state_are_refused():
    tx = jz.conditionally_mask(jz.sgd(0.1), lambda step: jnp.stack([step > 0, step > 1]))
    message = r"conditionally_mask: should_transform_fn must return a boolean scalar, got bool\[2\]"
    with pytest.raises(ValueError, match=message):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
    numeric = jz.conditionally_mask(jz.sgd(1.0), lambda step: (step + 1) % 2)  # a number, read as != 0 (lax.cond's way)
    updates, state = numeric.update({"w": jnp.ones(2)}, numeric.init({"w": jnp.ones(2)}))
    np.testing.assert_array_equal(updates["w"], [-1.0, -1.0])
    assert float(numeric.update({"w": jnp.ones(2)}, state)[0]["w"][0]) == 0.0
    other = jz.conditionally_transform(jz.sgd(0.1), lambda step: step == 0)
    with pytest.raises(ValueError, match="expected ConditionallyMaskState"):
        tx.update({"w": jnp.ones(2)}, other.init({"w": jnp.ones(2)}))
    with pytest.raises(ValueError, match="expected ApplyEvery"):
        jz.apply_every(2).update({"w": jnp.ones(2)}, jz.EmptyState())


# --- jit with donation, vmap, inject_hyperparams, shard_map ------------------------------------


def test_jitted_donated_steps_match_undonated_ones():
    tx = jz.chain(
        jz.apply_every(2, accumulator_dtype=jz.StochasticBF16()),
        jz.conditionally_mask(jz.adam(0.05), every_third_but_first),
    )
    params = make_params()
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    state = tx.init(params)
    expected, expected_state = run_ours(tx, params, steps=5)
    for t in range(1, 6):
        updates, state = step(params, state, jax.tree.map(lambda p: grad_fn(p, t, jnp), params))
        params = jz.apply_updates(params, updates)
    assert_trees_equal(params, expected[-1])
    assert_trees_equal(jax.tree.leaves(state), jax.tree.leaves(expected_state))


def test_vmap_over_parameter_sets_equals_separate_runs():
    tx = jz.chain(jz.apply_every(2), jz.conditionally_transform(jz.trace(0.9), lambda s: s % 3 == 0), jz.scale(-0.1))
    assert_vmap_matches_separate_runs(tx, steps=4)


def test_inject_hyperparams_gives_the_plain_trajectory():
    params = make_params()
    expected, _ = run_ours(jz.chain(jz.apply_every(3), jz.sgd(0.05)), params, steps=7, jit=False)
    injected, state = run_ours(jz.chain(jz.inject_hyperparams(jz.apply_every)(k=3), jz.sgd(0.05)), params, steps=7)
    assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)
    assert set(state[0].hyperparams) == {"k"} and state[0].hyperparams["k"].dtype == jnp.int32


def test_skip_functions_are_exact_inside_shard_map():
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices("cpu")[:8])
    grads = {"w": jnp.arange(16.0).at[3].set(jnp.nan), "b": jnp.arange(8.0)}
    specs = {"w": P("data"), "b": P()}
    placed = {k: jax.device_put(g, NamedSharding(mesh, specs[k])) for k, g in grads.items()}

    def both(g, axis_name):
        return (
            jz.skip_not_finite(g, 0, None, axis_name=axis_name),
            jz.skip_large_updates(g, 0, None, 1e4, axis_name=axis_name),
        )

    in_shard_map = lambda axis_name: jax.jit(
        jax.shard_map(functools.partial(both, axis_name=axis_name), mesh=mesh, in_specs=(specs,), out_specs=P())
    )
    local = in_shard_map("data")
    (skip, info), (large_skip, large_info) = local(placed)
    assert bool(skip) and int(info["num_not_finite"]) == 1
    finite = placed | {"w": jax.device_put(jnp.arange(16.0), NamedSharding(mesh, P("data")))}
    (skip, info), (large_skip, large_info) = local(finite)
    assert not bool(skip) and not bool(large_skip)
    assert float(large_info["norm_squared"]) == float(jnp.sum(jnp.arange(16.0) ** 2) + jnp.sum(jnp.arange(8.0) ** 2))
    assert not bool(large_skip)
    unnamed = in_shard_map(None)
    with pytest.raises(ValueError, match="skip_not_finite: inside shard_map"):
        unnamed(finite)
