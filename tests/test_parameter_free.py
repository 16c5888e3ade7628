"""Parameter-free methods (scale_by_dog, scale_by_dowg, scale_by_cocob, mechanize; dog, dowg, cocob):
optax.contrib bit for bit, float64 references from the papers, storage, sharding, wrappers."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import (
    SHARD_AXES,
    shard_map_steps,
    sharded_params,
    assert_trees_close,
    assert_trees_equal,
    assert_vmap_matches_separate_runs,
    grad_fn,
    make_params,
    run_ours,
    run_together,
)
from tests.test_optimizers import assert_updates_close, eight_bit_params, summed_updates

STEPS = 20
MASK = {"dense": {"w": True, "b": False}, "scale": True}
Q8 = jz.Blockwise8Bit()


def decaying(step):
    return 0.5 / (1.0 + 0.1 * step)


def matrices_only(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


# Every option on and off: jitted float32 trajectories and states against optax.contrib's, bit for bit.
OPTAX_CASES = {
    "dog": (lambda: jz.dog(), lambda: optax.contrib.dog()),
    "dog_options": (
        lambda: jz.dog(decaying, ("distance", 1e-2), 1e-6, 0.1, MASK),
        lambda: optax.contrib.dog(decaying, ("distance", 1e-2), 1e-6, 0.1, MASK),
    ),
    "dowg": (lambda: jz.dowg(), lambda: optax.contrib.dowg()),
    "cocob_options": (
        lambda: jz.cocob(decaying, 20.0, 1e-6, 0.1, MASK),
        lambda: optax.contrib.cocob(decaying, 20.0, 1e-6, 0.1, MASK),
    ),
    "mechanize_adam": (
        lambda: jz.mechanize(jz.adam(0.5), 0.1, 1e-6, 1e-2, 3),
        lambda: optax.contrib.mechanize(optax.adam(0.5), 0.1, 1e-6, 1e-2, 3),
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs = OPTAX_CASES[name]
    params = make_params(jnp.float32)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params, steps=STEPS)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert not np.array_equal(np.asarray(our_iterates[-1]["dense"]["w"]), np.asarray(params["dense"]["w"]))


# --- float64: optax.contrib and the references from the papers (tests/reference.py) -----------------


def run_flat_reference(ref, params, steps=STEPS):
    """Iterates of a reference of the whole tree: the leaves flattened into one vector (same norms and inner
    products as the tree), with conftest's gradient field applied leaf by leaf."""
    leaves, treedef = jax.tree.flatten(params)
    shapes = [np.shape(x) for x in leaves]
    cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

    def split(x):
        return [np.reshape(part, shape) for part, shape in zip(np.split(x, cuts), shapes)]

    def grads(x, t):
        return np.concatenate([np.ravel(grad_fn(part, t)) for part in split(x)])

    flat = np.concatenate([np.ravel(reference._float64(x)) for x in leaves])
    return [jax.tree.unflatten(treedef, split(x)) for x in reference.trajectory(ref, flat, grads, steps)]


# name: (ours, Optax's, the reference). The options not covered bit for bit above are here.
FLOAT64_CASES = {
    "dog_first_learning_rate": (
        lambda: jz.dog(decaying, ("learning_rate", 0.05), 1e-6, 0.1),
        lambda: optax.contrib.dog(decaying, ("learning_rate", 0.05), 1e-6, 0.1),
        lambda: reference.dog(decaying, ("learning_rate", 0.05), 1e-6, 0.1),
    ),
    "dowg_options": (
        lambda: jz.dowg(decaying, 1e-3, 1e-6, 0.1),
        lambda: optax.contrib.dowg(decaying, 1e-3, 1e-6, 0.1),
        lambda: reference.dowg(decaying, 1e-3, 1e-6, 0.1),
    ),
    "cocob": (lambda: jz.cocob(), lambda: optax.contrib.cocob(), lambda: reference.cocob()),
    # Optax's Adam inside ours: any object with init and update is a base optimizer.
    "mechanize_optax_adam": (
        lambda: jz.mechanize(optax.adam(decaying), 0.1, 1e-6, 1e-2, 3),
        lambda: optax.contrib.mechanize(optax.adam(decaying), 0.1, 1e-6, 1e-2, 3),
        lambda: reference.mechanic(reference.adam(decaying), 0.1, 1e-6, 1e-2, 3),
    ),
}


@pytest.mark.parametrize("name", list(FLOAT64_CASES))
def test_matches_optax_and_the_paper_in_float64(name, x64):
    ours, theirs, ref = FLOAT64_CASES[name]
    params = make_params(jnp.float64)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params, steps=STEPS)
    assert_trees_close(our_iterates, their_iterates, rtol=1e-9, atol=1e-12)
    assert_trees_close(jax.tree.leaves(our_state), jax.tree.leaves(their_state), rtol=1e-9, atol=1e-12)
    assert_trees_close(our_iterates, run_flat_reference(ref(), params), rtol=1e-9, atol=1e-12)
    assert not np.allclose(np.asarray(our_iterates[-1]["dense"]["w"]), np.asarray(params["dense"]["w"]), rtol=1e-3)


def complex_params():
    """make_params with complex matrix and vector leaves and a real scalar (which keeps the scalars float64)."""
    params = make_params(jnp.float64)
    params["dense"] = jax.tree.map(lambda re, im: re + 1j * im, params["dense"], make_params(jnp.float64, 1)["dense"])
    return params


def assert_complex_trees_close(actual, expected, rtol, atol):
    # conftest's assert_trees_close compares in float64, which drops the imaginary parts.
    jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol),
                 actual, expected)


def test_mechanize_on_complex_params_matches_the_paper_in_float64(x64):
    # h, the loss's derivative along the scale, is Re<g~, Delta>. The complex vdot made h complex, and lax.clamp
    # refused it. (Optax's keeps that complex h: it fails on this tree, and on complex leaves alone its scales are
    # complex, or XLA cannot compile its complex clamp.)
    params = complex_params()
    ref = reference.mechanic(reference.sgd(decaying, 0.9), 0.1, 1e-6, 1e-2, 3)
    [(iterates, state)] = run_together([jz.mechanize(jz.sgd(decaying, 0.9), 0.1, 1e-6, 1e-2, 3)], params, STEPS)
    assert_complex_trees_close(iterates, run_flat_reference(ref, params), rtol=1e-9, atol=1e-12)
    assert not np.allclose(np.asarray(iterates[-1]["dense"]["w"]), np.asarray(params["dense"]["w"]), rtol=1e-3)
    assert state.s.dtype == jnp.float64 and np.all(np.asarray(state.s) > 0)


def test_mechanize_on_complex_params_is_mechanize_on_their_real_pairs(x64):
    # Every norm and inner product of a complex leaf is its real pair's. The base is Adam on the pairs on both sides
    # (a complex Adam's |g|^2 would differ from the pairs' own second moments).
    on_complex = jz.mechanize(jz.split_real_and_imaginary(jz.adam(decaying)), 0.1, 1e-6, 1e-2, 3)
    on_pairs = jz.split_real_and_imaginary(jz.mechanize(jz.adam(decaying), 0.1, 1e-6, 1e-2, 3))
    (ours, state), (pairs, _) = run_together([on_complex, on_pairs], complex_params(), steps=STEPS)
    assert_complex_trees_close(ours, pairs, rtol=1e-10, atol=1e-13)
    assert not np.allclose(np.asarray(ours[-1]["dense"]["w"]), np.asarray(ours[0]["dense"]["w"]), rtol=1e-3)


def test_ldog_keeps_real_distances_of_complex_params(x64):
    # Its max_dist of a complex leaf was kept complex (the param's dtype): a distance is real. Two steps by hand:
    # eta_t = max(r_eps, |x_t - x_0|) / sqrt(sum of |g|^2 so far + eps), r_eps = reps_rel (1 + |x_0|).
    x0 = np.asarray([1 + 2j, -0.5 + 1j, 3 - 1j])
    g1, g2 = np.asarray([0.5 - 1j, 2 + 0.5j, -1 + 1j]), np.asarray([1j, -1 + 0.5j, 0.5])
    tx = jz.scale_by_distance_over_gradients(reps_rel=0.1, eps=1e-8)
    state = tx.init(jnp.asarray(x0))
    u1, state = tx.update(jnp.asarray(g1), state, jnp.asarray(x0))
    u2, state = tx.update(jnp.asarray(g2), state, jnp.asarray(x0 + np.asarray(u1)))
    r = 0.1 * (1 + np.linalg.norm(x0))
    sq1 = np.sum(np.abs(g1) ** 2)
    np.testing.assert_allclose(u1, r / np.sqrt(sq1 + 1e-8) * g1, rtol=1e-12)
    d = max(r, np.linalg.norm(np.asarray(u1)))
    np.testing.assert_allclose(u2, d / np.sqrt(sq1 + np.sum(np.abs(g2) ** 2) + 1e-8) * g2, rtol=1e-12)
    assert state.max_dist.dtype == jnp.float64


def test_dog_heuristic_first_distance_is_relative_to_the_initial_norm():
    params = {"a": jnp.array([3.0]), "b": jnp.array([[4.0]])}
    state = jz.scale_by_dog(("heuristic", 0.5)).init(params)
    np.testing.assert_allclose(state.max_dist, 0.5 * (1 + 5.0))
    assert state.max_dist.dtype == jnp.float32 and bool(state.is_init_step)


# --- None updates, the first update's params, storage -------------------------------------------


def two_steps_freezing_the_scalar(tx, params, init_params=None):
    """The state after a full step and a step whose "scale" update is None, with both steps' updates."""
    state = tx.init(params if init_params is None else init_params)
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
    first, state = tx.update(grads, state, params)
    params = jz.apply_updates(params, first)
    grads = jax.tree.map(lambda p: grad_fn(p, 2, jnp), params) | {"scale": None}
    second, new_state = tx.update(grads, state, params)
    assert second["scale"] is None
    assert all(u.shape == p.shape for u, p in zip(jax.tree.leaves(second["dense"]), jax.tree.leaves(params["dense"])))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(second))
    return state, new_state


def test_none_updates_pass_through_mechanize_and_cocob_which_start_from_the_params_at_the_first_update():
    # Params replaced after init (a pretrained checkpoint) are Mechanic's reference point, as in Optax; the
    # frozen param's COCOB sums are kept as they are.
    params = make_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    state, new_state = two_steps_freezing_the_scalar(jz.mechanize(jz.cocob(), s_init=1e-2), params, init_params=zeros)
    assert_trees_equal(state.x0, params)
    assert int(state.count) == 1
    inner, new_inner = state.base_optimizer_state[2], new_state.base_optimizer_state[2]
    for old, new in zip(inner[1:5], new_inner[1:5]):  # theta, L, G, R
        assert new["scale"] is old["scale"]


def jitted_init(tx):
    # An 8-bit state built eagerly compiles each quantizing operation on its own: slower than one program.
    return jz.GradientTransformation(jax.jit(tx.init), tx.update)


def test_storages():
    # COCOB's sums: theta (signed), L, G, R (non-negative) in 8 bits for "w" ("b" is too small to quantize);
    # the initial params stay float32. The step is a ratio of three of the sums, so their errors add up.
    params = eight_bit_params()
    full, full_state = summed_updates(jz.cocob(weight_decay=1e-3), params)
    ours, state = summed_updates(jitted_init(jz.cocob(weight_decay=1e-3, accumulator_dtype=Q8)), params)
    assert_updates_close(ours, full, rtol=0.1)
    np.testing.assert_array_equal(ours["b"], full["b"])
    codes = [x.dtype for x in jax.tree.leaves(state) if is_encoded(x)]
    assert (codes.count(jnp.int8), codes.count(jnp.uint8)) == (1, 3)
    sums = (state[2].cumulative_gradients, state[2].scale, state[2].subgradients, state[2].reward)
    assert all(is_encoded(x["w"]) and x["b"].dtype == jnp.float32 for x in sums)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[2].init_particles))
    assert jz.storage.state_bytes(state) < 0.5 * jz.storage.state_bytes(full_state)
    # The layouts the other storage options give (the storages themselves are tested in test_storage.py).
    shapes = jax.eval_shape(jz.cocob(accumulator_dtype=jz.StochasticBF16(), param_dtype=jnp.bfloat16).init, params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(shapes[2]) if x.ndim > 0)
    for tx in (jz.dog(param_dtype=jz.StochasticBF16()), jz.dowg(param_dtype=jnp.bfloat16)):
        assert jax.eval_shape(tx.init, params)[1].init_params["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "build, owner, first",
    [
        (lambda s: jz.scale_by_distance_over_gradients(param_dtype=s), "scale_by_distance_over_gradients", "reps_rel"),
        (lambda s: jz.scale_by_dog(("heuristic", 1e-6), param_dtype=s), "scale_by_dog", "init_step"),
        (lambda s: jz.dog(param_dtype=s), "dog", "init_step"),
        (lambda s: jz.scale_by_dowg(param_dtype=s), "scale_by_dowg", r"init_estim_sq_dist \(or eps\)"),
        (lambda s: jz.dowg(1.0, 1e-6, param_dtype=s), "dowg", r"init_estim_sq_dist \(or eps\)"),
    ],
    ids=["ldog", "scale_by_dog", "dog", "scale_by_dowg", "dowg"],
)
def test_distance_rules_refuse_an_eight_bit_copy_of_the_initial_params(build, owner, first):
    # At the first step ||x_t - x_0|| is the copy's rounding alone: 8-bit codes (3 mantissa bits) round x_0 by
    # about 3% of its norm, where the first distance is reps_rel (1 + ||x_0||) with reps_rel 1e-6 to 1e-4.
    # They were accepted, and the first step was some 28,000 times the float32 copy's (as Prodigy's x_0, refused).
    params = eight_bit_params()
    rounding = jz.storage.read_leaf(Q8.create(params["w"], True)) - params["w"]
    assert 0.02 < float(jnp.linalg.norm(rounding) / jnp.linalg.norm(params["w"])) < 0.05  # the message's "about 3%"
    message = rf"^{owner}: param_dtype=Blockwise8Bit\(.*\) keeps the initial params as 8-bit codes, .* not {first},"
    with pytest.raises(ValueError, match=message):
        build(Q8)
    with pytest.raises(ValueError, match=message):
        build(jz.Blockwise8Bit(min_size=1 << 30))  # refused even where every leaf would stay float32
    for storage in (None, jnp.bfloat16, jz.StochasticBF16()):  # the lossy floating copies stay accepted
        build(storage).init(params)


def test_cocob_refuses_a_rounding_storage_for_its_anchor():
    with pytest.raises(ValueError, match="^cocob: param_dtype must be None or a floating dtype"):
        jz.cocob(param_dtype=Q8)
    with pytest.raises(ValueError, match="^scale_by_cocob: param_dtype must be None or a floating dtype"):
        jz.scale_by_cocob(param_dtype=jz.StochasticBF16())


# --- jit with donation, vmap, inject_hyperparams ---------------------------------------------------


def test_jitted_donated_steps_match_undonated_steps():
    tx = jz.mechanize(jz.cocob(accumulator_dtype=jz.StochasticBF16()), s_init=1e-2)  # both layers' state donated
    params = make_params()
    expected, expected_state = run_ours(tx, params, steps=3)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    state = tx.init(params)
    for t in range(1, 4):
        updates, state = step(params, state, jax.tree.map(lambda p: grad_fn(p, t, jnp), params))
        params = jz.apply_updates(params, updates)
    assert_trees_equal(params, expected[-1])
    assert_trees_equal(jax.tree.leaves(state), jax.tree.leaves(expected_state))


def test_vmap_over_parameter_sets_equals_separate_runs():
    # Global norms: each set's own (nothing mixes the sets).
    assert_vmap_matches_separate_runs(jz.dowg(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "factory, hyperparams, static",
    [
        (jz.dog, dict(learning_rate=decaying, eps=1e-6, weight_decay=0.1), ()),
        (jz.mechanize, dict(base_optimizer=jz.cocob(), weight_decay=0.1, s_init=1e-2, num_betas=3), "num_betas"),
    ],
    ids=["dog", "mechanize"],
)
def test_inject_hyperparams_gives_the_plain_trajectory(factory, hyperparams, static):
    params = make_params()
    expected, _ = run_ours(factory(**hyperparams), params, steps=4, jit=False)
    injected, _ = run_ours(jz.inject_hyperparams(factory, static)(**hyperparams), params, steps=4, jit=False)
    assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)


# --- shard_map: whole-tree norms and inner products with axis_name -----------------------------------

AXES = SHARD_AXES


def test_shard_map_with_axis_name_is_exact_and_without_it_raises():
    # Mechanic's norms and inner product and DoWG's norms (DoG's are the same helper) over sharded params.
    make = lambda axes: jz.mechanize(jz.dowg(axis_name=axes), s_init=1e-2, axis_name=axes)  # noqa: E731
    expected = run_ours(make(None), sharded_params(), steps=2)[0][-1]
    assert_trees_close(shard_map_steps(make(AXES)), expected, rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="varies over mesh axes"):
        shard_map_steps(make(None), steps=1)


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.dog(init_step=("radius", 1.0)), r"^dog: init_step must be a pair \(kind, value\)"),
        (lambda: jz.dog(init_step=("heuristic", -1.0)), r"^dog: init_step's value for 'heuristic' must be > 0"),
        (lambda: jz.scale_by_dowg(eps=0.0), r"^scale_by_dowg: eps must be > 0 \(it is the first squared distance"),
        (lambda: jz.cocob(eps=0.0), r"^cocob: eps must be > 0 \(it is the first L"),
        (lambda: jz.mechanize(jz.sgd(0.1), eps=0.0), r"^mechanize: eps must be > 0"),
        (lambda: jz.mechanize(jz.sgd(0.1), num_betas=2.5), r"^mechanize: num_betas must be an integer >= 1"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_mechanize_refuses_what_is_not_an_optimizer_and_needs_params():
    with pytest.raises(TypeError, match="^mechanize: expected gradient transformations"):
        jz.mechanize(0.1)
    tx, params = jz.mechanize(jz.sgd(0.1)), make_params()
    with pytest.raises(ValueError, match="mechanize needs the parameters"):
        tx.update(params, tx.init(params))


def test_a_state_from_another_optimizer_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match="expected DoWGState"):
        jz.scale_by_dowg().update(params, jz.scale_by_dog(("distance", 1.0)).init(params), params)


def test_mixed_dtypes_keep_one_state_dtype_where_optax_changes_it_or_fails():
    # Optax keeps the scalars in the params' least precise dtype: its DoG's turn float32 at the first step, and
    # its Mechanic fails (lax.clamp of bfloat16 bounds around a float32 h). Ours are float32 from the start.
    # (Traced only: jax.eval_shape compiles nothing.)
    params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)

    def state_dtypes_before_and_after_a_step(tx):
        state = tx.init(params)
        _, new_state = jax.eval_shape(tx.update, grads, state, params)
        return [x.dtype for x in jax.tree.leaves(state)], [x.dtype for x in jax.tree.leaves(new_state)]

    before, after = state_dtypes_before_and_after_a_step(jz.dog(init_step=("distance", 1e-2)))
    their_before, their_after = state_dtypes_before_and_after_a_step(optax.contrib.dog(init_step=("distance", 1e-2)))
    assert before == after and their_before != their_after
    theirs = optax.contrib.mechanize(optax.sgd(0.1))
    with pytest.raises(TypeError, match="clamp"):
        jax.eval_shape(theirs.update, grads, theirs.init(params), params)
    tx = jz.mechanize(jz.sgd(0.1))
    updates, state = jax.eval_shape(tx.update, grads, tx.init(params), params)
    assert state.s.dtype == jnp.float32
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)


def test_mechanize_takes_tuple_params_like_optax():
    # The tree inner product paired leaves by tuple-ness, so a tuple params tree crashed (review of issue 18).
    params = (jnp.array([1.0, 2.0]), jnp.array([3.0, -4.0]))
    ours, theirs = jz.mechanize(jz.sgd(0.1)), optax.contrib.mechanize(optax.sgd(0.1))
    s, r = ours.init(params), theirs.init(params)
    for t in range(3):
        grads = jax.tree.map(lambda p: jnp.cos(p + t), params)
        u, s = ours.update(grads, s, params)
        v, r = theirs.update(grads, r, params)
        assert_trees_equal(u, v)


def test_dog_sum_of_squared_norms_keeps_growing_with_bfloat16_params():
    # Optax keeps the sum in bfloat16, where adding 1 to 256 rounds back to 256; ours is float32.
    params = {"w": jnp.ones(1, jnp.bfloat16)}
    tx = jz.scale_by_dog(init_step=("heuristic", 1e-6))
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(300):
        _, state = step({"w": jnp.ones(1, jnp.bfloat16)}, state, params)
    assert state.sum_sq_norm_grads.dtype == jnp.float32 and float(state.sum_sq_norm_grads) == 300.0


@pytest.mark.parametrize(
    "build, owner, field",
    [
        (jz.cocob, "scale_by_cocob", r"the initial params \(state\.init_particles\)"),
        (jz.dog, "scale_by_dog", r"the initial params \(state\.init_params\)"),
        (jz.dowg, "scale_by_dowg", r"the initial params \(state\.init_params\)"),
        (jz.scale_by_distance_over_gradients, "scale_by_distance_over_gradients",
         r"the initial params \(state\.init_params\)"),
        (lambda: jz.mechanize(jz.sgd(1.0)), "mechanize", r"the reference params \(state\.x0\)"),
    ],
    ids=["cocob", "dog", "dowg", "ldog", "mechanize"],
)
def test_a_state_built_for_other_shapes_is_refused_not_broadcast(build, owner, field):
    # The (1, 3) copy of the initial params was broadcast against the (4, 3) params: COCOB's and Mechanic's
    # states grew, and DoG and DoWG measured distances from the broadcast copy.
    tx = build()
    state = tx.init({"w": jnp.zeros((1, 3))})
    message = rf"^{owner}: the updates tree does not match {field}: shapes differ at \['w'\] \(4, 3\) vs \(1, 3\)"
    with pytest.raises(ValueError, match=message):
        tx.update({"w": jnp.full((4, 3), 0.5)}, state, {"w": jnp.ones((4, 3))})


@pytest.mark.parametrize("build", [jz.dog, jz.dowg, lambda: jz.mechanize(jz.sgd(1.0))],
                         ids=["dog", "dowg", "mechanize"])
def test_a_param_with_a_none_update_is_checked_against_the_copy_too(build):
    # Its param still counts in the distance (or in ||x_t||), so a (4, 3) param against a (1, 3) copy broadcast.
    tx = build()
    state = tx.init({"w": jnp.zeros((1, 3)), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"shapes differ at \['w'\] \(4, 3\) vs \(1, 3\)"):
        tx.update({"w": None, "b": jnp.ones(2)}, state, {"w": jnp.ones((4, 3)), "b": jnp.ones(2)})


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_ldog_takes_python_number_params(param_dtype):
    # The copy in param_dtype was made with .astype, which a Python float lacks (AttributeError).
    tx = jz.scale_by_distance_over_gradients(reps_rel=0.5, eps=0.0, param_dtype=param_dtype)
    updates, state = tx.update({"w": 0.5}, tx.init({"w": 1.5}), {"w": 1.5})
    np.testing.assert_allclose(float(updates["w"]), 0.5 * 2.5 / 0.5 * 0.5)  # r_0 = 0.5 (1 + 1.5), G_1 = 0.25
    assert state.init_params["w"].dtype == param_dtype


def test_a_bfloat16_copy_sets_the_first_distance_and_the_eight_bit_refusal_does_not_recommend_it():
    # Documented limitation: the copy's rounding (about 2^-9 ||x_0||) is all of ||x_1 - x_0|| at the first step,
    # so it takes r_0's place; StochasticBF16 rounds this once-written copy to nearest, as bfloat16 does. The
    # refusal of 8-bit copies recommended jz.StochasticBF16() as the way out.
    params = jax.random.normal(jax.random.key(0), (256,)) * 0.5 + 1
    grads = jnp.full(256, 0.01)

    def first_step_norm(param_dtype):
        tx = jz.dog(1.0, param_dtype=param_dtype)
        return float(jnp.linalg.norm(tx.update(grads, tx.init(params), params)[0]))

    exact, rounded = first_step_norm(None), first_step_norm(jnp.bfloat16)
    assert first_step_norm(jz.StochasticBF16()) == rounded
    r0 = 1e-6 * (1 + float(jnp.linalg.norm(params)))  # reps_rel (1 + ||x_0||)
    np.testing.assert_allclose(exact, r0, rtol=1e-5)
    rounding = float(jnp.linalg.norm(params.astype(jnp.bfloat16).astype(jnp.float32) - params))
    np.testing.assert_allclose(rounded, rounding, rtol=1e-5)
    assert 2**-11 < rounding / float(jnp.linalg.norm(params)) < 2**-8  # "about 2^-9 ||x_0||"
    with pytest.raises(ValueError, match=r"; use None \(the params' dtype\) or a floating dtype as wide as the params "
                       r"\(a bfloat16 copy, jz\.StochasticBF16\(\) too, rounds by about 2\^-9 \|\|x_0\|\|"):
        jz.dog(param_dtype=Q8)
