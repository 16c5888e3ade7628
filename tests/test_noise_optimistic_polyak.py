"""Gradient noise, optimistic methods, Polyak steps and DoG: Optax bit for bit, float64 references, storage,
None leaves, jit with donation, vmap, inject_hyperparams, shard_map and validation."""

from __future__ import annotations

import warnings

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
    run_reference,
)
from tests.test_optimizers import (
    assert_eight_bit_state_tracks_full_precision,
    assert_updates_close,
    check_eight_bit_state,
    eight_bit_params,
    summed_updates,
)

STEPS = 20
Q8 = jz.Blockwise8Bit()


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


def quiet(factory):
    """``factory`` with optimistic_adam's deprecation warning silenced (both libraries warn)."""

    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return factory()

    return build


def value_fn(params):
    """An objective value to hand to the Polyak step (any number works for comparing two implementations)."""
    return sum(0.5 * jnp.sum(p * p) for p in jax.tree.leaves(params)) + 0.25


def run_with_value(tx, params, steps=STEPS, jit=True):
    """Like conftest.run_ours, passing ``value=value_fn(params)`` to every update."""
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    iterates = []
    for t in range(1, steps + 1):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params)
        updates, state = update(grads, state, params, value=value_fn(params))
        params = jz.apply_updates(params, updates)
        iterates.append(params)
    return iterates, state


def matrices(dtype=jnp.float32):
    # Optax's DoG turns a scalar param into shape (1,) (its update has the sum's shape): compare without one.
    return make_params(dtype)["dense"]


# name: (ours, Optax's, params, runner). Every option on and off; jitted float32 trajectories and states.
OPTAX_CASES = {
    "noisy_sgd_options": (
        lambda: jz.noisy_sgd(decaying, 0.3, 1.0, jax.random.key(7)),
        lambda: optax.noisy_sgd(decaying, 0.3, 1.0, jax.random.key(7)),
        make_params,
        run_ours,
    ),
    "optimistic_gradient_descent": (
        lambda: jz.optimistic_gradient_descent(0.05),
        lambda: optax.optimistic_gradient_descent(0.05),
        make_params,
        run_ours,
    ),
    "optimistic_gradient_descent_options": (
        lambda: jz.optimistic_gradient_descent(decaying, 0.5, 2.0),
        lambda: optax.optimistic_gradient_descent(decaying, 0.5, 2.0),
        make_params,
        run_ours,
    ),
    # optimism=None (the learning rate); the float64 reference below sets it.
    "optimistic_adam_options": (
        quiet(lambda: jz.optimistic_adam(0.05, None, 0.8, 0.99, 1e-6, 1e-8, jnp.bfloat16, nesterov=False)),
        quiet(lambda: optax.optimistic_adam(0.05, None, 0.8, 0.99, 1e-6, 1e-8, jnp.bfloat16, nesterov=False)),
        make_params,
        run_ours,
    ),
    "optimistic_adam_v2": (
        lambda: jz.optimistic_adam_v2(0.05),
        lambda: optax.optimistic_adam_v2(0.05),
        make_params,
        run_ours,
    ),
    "optimistic_adam_v2_options": (
        lambda: jz.optimistic_adam_v2(decaying, alpha=0.3, beta=1.5, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8,
                                      mu_dtype=jnp.bfloat16, nesterov=False),
        lambda: optax.optimistic_adam_v2(decaying, alpha=0.3, beta=1.5, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8,
                                         mu_dtype=jnp.bfloat16, nesterov=False),
        make_params,
        run_ours,
    ),
    # polyak_sgd's defaults are compared with Optax's in the Flax NNX test below.
    "polyak_sgd_options": (
        lambda: jz.polyak_sgd(0.5, decaying, f_min=2.0, eps=1e-3, variant="sps+"),
        lambda: optax.polyak_sgd(0.5, decaying, f_min=2.0, eps=1e-3, variant="sps+"),
        make_params,
        run_with_value,
    ),
    "polyak_sgd_sps_negative_gap": (
        lambda: jz.polyak_sgd(0.2, 0.5, f_min=3.0),
        lambda: optax.polyak_sgd(0.2, 0.5, f_min=3.0),
        make_params,
        run_with_value,
    ),
    "distance_over_gradients": (
        lambda: jz.chain(jz.scale_by_distance_over_gradients(), jz.scale(-1.0)),
        lambda: optax.chain(optax.scale_by_distance_over_gradients(), optax.scale(-1.0)),
        matrices,
        run_ours,
    ),
    "distance_over_gradients_options": (
        lambda: jz.scale_by_distance_over_gradients(1e-2, 1e-6, jnp.bfloat16, -0.5),
        lambda: optax.scale_by_distance_over_gradients(1e-2, 1e-6, jnp.bfloat16, -0.5),
        matrices,
        run_ours,
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs, make, runner = OPTAX_CASES[name]
    params = make()
    our_iterates, our_state = runner(ours(), params)
    their_iterates, their_state = runner(theirs(), params)
    assert_trees_equal(our_iterates, their_iterates)
    unwrap = lambda state: [jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
                            for x in jax.tree.leaves(state)]
    assert_trees_equal(unwrap(our_state), unwrap(their_state))
    first = jax.tree.leaves(params)[0]
    assert not np.allclose(np.asarray(jax.tree.leaves(our_iterates[-1])[0]), np.asarray(first))


def test_polyak_gap_below_f_min_gives_a_zero_or_negative_step():
    # sps steps backwards when f < f_min (Optax's rule, kept); sps+ does not move.
    params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.5])}
    for variant, expected in (("sps", [-0.5, -0.5]), ("sps+", [0.0, 0.0])):  # sps: gap / ||g||^2 = -0.5 / 0.5
        tx = jz.scale_by_polyak(f_min=1.5, variant=variant)
        updates, _ = tx.update(grads, tx.init(params), params, value=1.0)
        np.testing.assert_allclose(updates["w"], expected)


def test_polyak_zero_gradient_gives_a_zero_step_and_no_nan():
    tx = jz.polyak_sgd()
    params = {"w": jnp.ones(3)}
    updates, _ = jax.jit(tx.update)({"w": jnp.zeros(3)}, tx.init(params), params, value=jnp.asarray(2.0))
    np.testing.assert_array_equal(updates["w"], np.zeros(3, np.float32))


def test_polyak_without_value_says_how_to_pass_it():
    tx = jz.polyak_sgd()
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"^scale_by_polyak needs the objective's value .*value=f\(params\)"):
        tx.update(params, tx.init(params), params)


# --- float64 references (written from the papers), eagerly in float64 --------------------------


def _noise_draws(seed, params, steps):
    """The standard normal draws of each leaf at each step, with Optax's documented key splitting:
    each step splits the key into the next key and a sample key, split again into one key per leaf."""
    leaves = jax.tree.leaves(params)

    @jax.jit
    def draw(key):
        key, sample = jax.random.split(key)
        keys = jax.random.split(sample, len(leaves))
        return key, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]

    key, per_step = jax.random.key(seed), []
    for _ in range(steps):
        key, draws = draw(key)
        per_step.append(draws)
    return [[np.asarray(step[i]) for step in per_step] for i in range(len(leaves))]


def _per_leaf(refs, params, steps=STEPS):
    leaves, treedef = jax.tree.flatten(params)
    paths = [reference.trajectory(r, np.asarray(x, np.float64), grad_fn, steps) for r, x in zip(refs, leaves)]
    return [jax.tree.unflatten(treedef, [path[i] for path in paths]) for i in range(steps)]


REFERENCE_CASES = {
    "noisy_sgd": (
        lambda: jz.noisy_sgd(decaying, 0.3, 0.55, key=11),
        lambda p: _per_leaf([reference.noisy_sgd(decaying, 0.3, 0.55, d) for d in _noise_draws(11, p, STEPS)], p),
    ),
    "optimistic_gradient_descent": (
        lambda: jz.optimistic_gradient_descent(decaying, 0.5, 2.0),
        lambda p: run_reference(reference.optimistic_gradient(decaying, 0.5, 2.0), p, STEPS),
    ),
    "optimistic_adam": (
        quiet(lambda: jz.optimistic_adam(0.05, 0.2, b1=0.8, eps_root=1e-8)),
        lambda p: run_reference(reference.optimistic_adam(1.0, 0.05, 0.2, b1=0.8, eps_root=1e-8), p, STEPS),
    ),
    "optimistic_adam_v2": (
        lambda: jz.optimistic_adam_v2(decaying, alpha=0.3, beta=1.5, b2=0.99, nesterov=False),
        lambda p: run_reference(reference.optimistic_adam(decaying, 0.3, 1.5, b2=0.99, nesterov=False), p, STEPS),
    ),
    "distance_over_gradients": (
        lambda: jz.scale_by_distance_over_gradients(1e-3, 1e-6, jnp.float64, -0.5),
        lambda p: run_reference(reference.distance_over_gradients(1e-3, 1e-6, -0.5), p, STEPS),
    ),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_matches_float64_reference(name, x64):
    ours, expected = REFERENCE_CASES[name]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params, steps=STEPS)  # jitted: one compile is cheaper than eager steps
    assert_trees_close(iterates, expected(params), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(max_learning_rate=0.5, scaling=decaying, f_min=2.0, eps=1e-3, variant="sps+"),
     dict(max_learning_rate=0.2, scaling=0.5, f_min=3.0)],
    ids=["default", "sps+_schedule", "sps_negative_gap"],
)
def test_polyak_sgd_matches_float64_reference(kwargs, x64):
    params = make_params(jnp.float64)
    iterates, _ = run_with_value(jz.polyak_sgd(**kwargs), params)
    leaves, treedef = jax.tree.flatten(params)
    leaves = [np.asarray(x, np.float64) for x in leaves]
    for t, ours in enumerate(iterates, start=1):
        value = float(value_fn(jax.tree.unflatten(treedef, leaves)))
        grads = [grad_fn(x, t) for x in leaves]
        leaves = [x + d for x, d in zip(leaves, reference.polyak_sgd_step(grads, value, t, **kwargs))]
        assert_trees_close(jax.tree.leaves(ours), leaves, rtol=1e-10, atol=1e-13)


def test_distance_over_gradients_keeps_a_scalar_param_scalar():
    params = make_params()
    tx = jz.scale_by_distance_over_gradients()
    updates, state = tx.update(params, tx.init(params), params)
    assert updates["scale"].shape == ()
    assert state.grad_sum_of_squares["scale"].shape == (1,)  # Optax's state layout


def test_distance_over_gradients_needs_params():
    tx = jz.scale_by_distance_over_gradients()
    params = make_params()
    with pytest.raises(ValueError, match="scale_by_distance_over_gradients needs the parameters"):
        tx.update(params, tx.init(params))


# --- storage options ---------------------------------------------------------------------------

def stored_ogd(storage):
    """Optimistic GD with its previous gradient in ``storage`` (Adam's 8-bit moments are tested with adam)."""
    return jz.optimistic_gradient_descent(1e-2, previous_gradient_dtype=storage)


EIGHT_BIT_COUNTS = (1, 0)  # (int8, uint8) leaves per quantized param: the signed previous gradient


def test_eight_bit_state():
    assert_eight_bit_state_tracks_full_precision(stored_ogd(Q8), stored_ogd(None), EIGHT_BIT_COUNTS)


def test_distance_over_gradients_keeps_its_initial_params_in_bfloat16():
    # The bfloat16 copy's rounding (about 2^-9 ||x_0||) adds to ||x_t - x_0||: a first distance r_0 above it keeps
    # the step sizes those of the float32 copy. An 8-bit copy (about 3% of ||x_0||) is refused: test_parameter_free.
    params = eight_bit_params()
    dog = lambda s: jz.chain(jz.scale_by_distance_over_gradients(0.2, param_dtype=s), jz.scale(-1.0))  # noqa: E731
    state = dog(jnp.bfloat16).init(params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[0].init_params))
    ours, state = summed_updates(dog(jnp.bfloat16), params)
    expected, _ = summed_updates(dog(jnp.float32), params)
    assert_updates_close(ours, expected, rtol=0.01)
    assert state[0].max_dist["w"].dtype == jnp.float32


def test_stochastic_bfloat16_storages():
    # Plain bfloat16 storage is compared with Optax above (mu_dtype, param_dtype).
    params, storage = make_params(), jz.StochasticBF16()
    factory = lambda s: jz.optimistic_gradient_descent(1e-2, previous_gradient_dtype=s)  # noqa: E731
    expected, _ = run_ours(factory(None), params, steps=3, jit=False)
    iterates, state = run_ours(factory(storage), params, steps=3, jit=False)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[0].previous_gradient))
    assert int(state[0].count) == 3  # the step count the rounding of the previous gradient draws from
    assert_trees_close(iterates[-1], expected[-1], rtol=0, atol=1e-3)
    # DoG's initial params: read as float32, never written back; with_storage adds the count field.
    dog = jz.scale_by_distance_over_gradients(param_dtype=storage)
    state = dog.init(params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.init_params)) and int(state.count) == 0


def test_none_update_keeps_param_and_state_bit_for_bit():
    factory, counts = stored_ogd, EIGHT_BIT_COUNTS
    params = eight_bit_params()
    tx = factory(Q8)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)  # some history first: the kept state is not zeros
    updates, state = tx.update(grads, state, params)
    params = jz.apply_updates(params, updates)
    updates, new_state = tx.update({"w": None, "b": grad_fn(params["b"], 2, jnp)}, state, params)
    assert updates["w"] is None
    check_eight_bit_state(new_state, counts)
    kept = [(a, b) for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(new_state))
            if path[-1] == jax.tree_util.DictKey("w")]
    assert kept and any(is_encoded(a) for a, _ in kept)
    for a, b in kept:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


@pytest.mark.parametrize(
    "tx",
    [jz.noisy_sgd(0.1, key=0), jz.polyak_sgd(), jz.scale_by_distance_over_gradients()],
    ids=["noisy_sgd", "polyak_sgd", "distance_over_gradients"],
)
def test_none_updates_pass_through(tx):
    params = make_params()
    state = tx.init(params)
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params) | {"scale": None}
    updates, new_state = tx.update(grads, state, params, value=1.0)
    assert updates["scale"] is None
    assert all(u.shape == p.shape for u, p in zip(jax.tree.leaves(updates["dense"]), jax.tree.leaves(params["dense"])))
    if isinstance(new_state, jz.ScaleByDistanceOverGradientsState):
        assert new_state.max_dist["scale"] is state.max_dist["scale"]
        assert new_state.grad_sum_of_squares["scale"] is state.grad_sum_of_squares["scale"]


# --- jit with donation, vmap, inject_hyperparams -----------------------------------------------


def test_jitted_donated_steps_match_eager_steps():
    tx = jz.optimistic_gradient_descent(1e-2, 0.5, 1.5)  # donated: the previous gradient is updated in place
    params = make_params()
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    eager_params, eager_state = params, tx.init(params)
    jit_params, jit_state = params, tx.init(params)
    for t in range(1, 4):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), eager_params)
        u, eager_state = tx.update(grads, eager_state, eager_params)
        eager_params = jz.apply_updates(eager_params, u)
        u, jit_state = step(jit_params, jit_state, grads)
        jit_params = jz.apply_updates(jit_params, u)
    assert_trees_close(jit_params, eager_params, rtol=1e-6, atol=1e-7)
    assert_trees_close(jax.tree.leaves(jit_state), jax.tree.leaves(eager_state), rtol=1e-6, atol=1e-7)


def test_vmap_over_parameter_sets_equals_separate_runs():
    tx = jz.chain(jz.scale_by_distance_over_gradients(1e-3), jz.scale(-1.0))  # a norm per member and leaf
    batch = [{"w": make_params(seed=s)["dense"]["w"]} for s in range(3)]
    assert_vmap_matches_separate_runs(tx, batch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "factory, hyperparams, static",
    [
        (jz.noisy_sgd, dict(learning_rate=0.05, eta=0.2, gamma=0.7, key=4), "key"),
        (jz.optimistic_gradient_descent, dict(learning_rate=decaying, alpha=0.5, beta=2.0), ()),
        (jz.polyak_sgd, dict(max_learning_rate=0.5, scaling=0.7, f_min=0.1, eps=1e-3), ()),
        (jz.scale_by_distance_over_gradients, dict(reps_rel=1e-3, eps=1e-6, global_scale=-0.5), ()),
    ],
    ids=["noisy_sgd", "optimistic_gradient_descent", "polyak_sgd", "distance_over_gradients"],
)
def test_inject_hyperparams_gives_the_plain_trajectory(factory, hyperparams, static):
    params = make_params()
    expected, _ = run_with_value(factory(**hyperparams), params, steps=4, jit=False)
    injected, state = run_with_value(jz.inject_hyperparams(factory, static)(**hyperparams), params, steps=4, jit=False)
    assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)


# --- shard_map: whole-array norms with axis_name ------------------------------------------------

AXES = SHARD_AXES


def _single_device_steps(tx, steps=2):
    params = sharded_params()
    return run_with_value(tx, params, steps=steps)[0][-1]


@pytest.mark.parametrize(
    "make",
    [lambda axes: jz.polyak_sgd(0.5, axis_name=axes),
     lambda axes: jz.chain(jz.scale_by_distance_over_gradients(1e-2, axis_name=axes), jz.scale(-1.0))],
    ids=["polyak_sgd", "distance_over_gradients"],
)
def test_shard_map_with_axis_name_is_exact_and_without_it_raises(make):
    assert_trees_close(shard_map_steps(make(AXES), value_fn=value_fn), _single_device_steps(make(None)), rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="varies over mesh axes"):
        shard_map_steps(make(None), steps=1, value_fn=value_fn)


def test_noise_inside_shard_map_on_sharded_leaves_raises():
    # Each shard would draw the same local noise: refused (under plain jit a sharded leaf draws its part).
    with pytest.raises(ValueError, match="add_noise: inside shard_map.*varies over mesh axes.*, so each shard would draw"):
        shard_map_steps(jz.noisy_sgd(0.1, key=0), steps=1, value_fn=value_fn)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.add_noise(-0.1, 0.55, key=0), r"^add_noise: eta must be >= 0, got -0.1"),
        (lambda: jz.add_noise(0.1, "x", key=0), r"^add_noise: gamma must be a finite real number"),
        (lambda: jz.add_noise(0.1, 0.5, key=1.5), r"^add_noise: key must be an integer seed or a key"),
        (quiet(lambda: jz.add_noise(0.1, 0.5, key=0, seed=1)), r"^add_noise: give key or seed, not both"),
        (lambda: jz.noisy_sgd(-1.0, key=0), r"^noisy_sgd: learning_rate must be >= 0"),
        (lambda: jz.noisy_sgd(0.1, eta=-1.0, key=0), r"^noisy_sgd: eta must be >= 0"),
        (lambda: jz.noisy_sgd(0.1, key=1.5), r"^noisy_sgd: key must be an integer seed or a key"),
        (quiet(lambda: jz.noisy_sgd(0.1, seed=0.5)), r"^noisy_sgd: seed must be an integer seed or a key"),
        (lambda: jz.scale_by_optimistic_gradient(alpha=float("nan")), r"^scale_by_optimistic_gradient: alpha must be"),
        (lambda: jz.optimistic_gradient_descent(0.1, beta=decaying), r"^optimistic_gradient_descent: beta must be"),
        (lambda: jz.optimistic_gradient_descent(0.1, previous_gradient_dtype=jnp.int8),
         r"^optimistic_gradient_descent: previous_gradient_dtype must be"),
        (quiet(lambda: jz.optimistic_adam(decaying)), r"^optimistic_adam: learning_rate must be a number, got a sched"),
        (quiet(lambda: jz.optimistic_adam(0.1, b1=1.0)), r"^optimistic_adam: b1 must be in \[0, 1\)"),
        (lambda: jz.optimistic_adam_v2(0.1, b2=-0.1), r"^optimistic_adam_v2: b2 must be in \[0, 1\)"),
        (lambda: jz.optimistic_adam_v2(0.1, mu_dtype="x"), r"^optimistic_adam_v2: mu_dtype must be"),
        (lambda: jz.optimistic_adam_v2(0.1, nesterov=1), r"^optimistic_adam_v2: nesterov must be True or False"),
        (lambda: jz.scale_by_polyak(variant="sps-"), r"^scale_by_polyak: variant must be one of 'sps', 'sps\+'"),
        (lambda: jz.polyak_sgd(max_learning_rate=-1.0), r"^polyak_sgd: max_learning_rate must be >= 0"),
        (lambda: jz.polyak_sgd(eps=-1.0), r"^polyak_sgd: eps must be >= 0"),
        (lambda: jz.polyak_sgd(scaling=-1.0), r"^polyak_sgd: scaling must be >= 0"),
        (lambda: jz.polyak_sgd(variant="SPS"), r"^polyak_sgd: variant must be one of"),
        (lambda: jz.polyak_sgd(axis_name=3), r"^polyak_sgd: axis_name must be"),
        (lambda: jz.scale_by_distance_over_gradients(reps_rel=0.0), r"^scale_by_distance_over_gradients: reps_rel must"),
        (lambda: jz.scale_by_distance_over_gradients(eps=-1e-8), r"^scale_by_distance_over_gradients: eps must be >="),
        (lambda: jz.scale_by_distance_over_gradients(param_dtype=jnp.int32),
         r"^scale_by_distance_over_gradients: param_dtype must be"),
        (lambda: jz.scale_by_distance_over_gradients(global_scale=None),
         r"^scale_by_distance_over_gradients: global_scale must be a finite real number"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_no_key_warns_and_uses_seed_zero_as_optax_does():
    with pytest.warns(UserWarning, match="no key given"):
        tx = jz.noisy_sgd(0.1)
    with pytest.warns(DeprecationWarning, match="seed"):
        seeded = jz.add_noise(0.01, 0.55, seed=0)
    assert_trees_equal(jax.random.key_data(tx.init({})[0].rng_key), jax.random.key_data(jax.random.key(0)))
    assert_trees_equal(jax.random.key_data(seeded.init({}).rng_key), jax.random.key_data(jax.random.key(0)))


KEYED = {
    "noisy_sgd": lambda key: jz.noisy_sgd(0.1, key=key),
    "dpsgd": lambda key: jz.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=0.5, seed=key),  # Optax's name, a key too
    "psgd_kron": lambda key: jz.psgd_kron(0.1, key=key),
}


@pytest.mark.parametrize("name", list(KEYED))
def test_a_donated_state_leaves_the_callers_key_and_the_next_init_alive(name):
    # The state held the caller's typed key itself: a donated step deleted it, and the next init handed it out.
    key = jax.random.key(3)
    tx, params = KEYED[name](key), {"w": jnp.ones((2, 3))}
    per_example = jax.tree.map(lambda p: jnp.stack([p, -p]), params)  # dpsgd takes a gradient per example
    grads = per_example if name == "dpsgd" else params
    step = jax.jit(lambda s: tx.update(grads, s, params)[1], donate_argnums=0)
    first = step(tx.init(params))
    assert_trees_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))
    second = step(tx.init(params))
    plain = lambda state: [jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
                           for x in jax.tree.leaves(state)]
    assert_trees_equal(plain(first), plain(second))


def test_a_state_from_another_optimizer_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match="expected ScaleByOptimisticGradientState"):
        jz.optimistic_gradient_descent(0.1).update(params, jz.noisy_sgd(0.1, key=0).init(params), params)


def test_orbax_resume_continues_the_same_draws(tmp_path):
    # test_checkpoint.py's helpers compare arrays with NumPy, which typed PRNG keys refuse: checked here.
    import orbax.checkpoint as ocp

    tx, params = jz.noisy_sgd(0.1, eta=0.5, key=jax.random.key(3)), make_params()
    step = jax.jit(lambda p, s, t: tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p))
    state = tx.init(params)
    for t in (1, 2):
        _, state = step(params, state, t)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "ckpt", jax.eval_shape(lambda: tx.init(params)))
    assert jnp.issubdtype(restored[0].rng_key.dtype, jax.dtypes.prng_key)
    assert_trees_equal(jax.random.key_data(restored[0].rng_key), jax.random.key_data(state[0].rng_key))
    assert_trees_equal(step(params, restored, 3)[0], step(params, state, 3)[0])


def test_polyak_sgd_in_flax_nnx_gets_the_loss_as_value_like_optax():
    from flax import nnx

    from tests.test_interop import MLP, X, Y

    def train(tx):
        model = MLP(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
            optimizer.update(model, grads, value=loss)
            return loss

        return [float(step(model, optimizer)) for _ in range(5)], nnx.state(model, nnx.Param)

    (ours, our_params), (theirs, their_params) = train(jz.polyak_sgd()), train(optax.polyak_sgd())
    assert ours == theirs and ours[-1] < ours[0]
    assert_trees_equal(jax.tree.leaves(our_params), jax.tree.leaves(their_params))


def _deprecated_seed(seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return jz.add_noise(0.1, 0.55, seed=seed)


@pytest.mark.parametrize("factory", [lambda k: jz.add_noise(0.1, 0.55, key=k), lambda k: jz.noisy_sgd(0.1, key=k),
                                     _deprecated_seed], ids=["add_noise", "noisy_sgd", "add_noise-seed"])
def test_a_seed_jax_would_truncate_is_refused_and_the_32_bit_range_is_taken(factory):
    """Without x64, JAX keeps a seed's low 32 bits: key=2**40 drew exactly what key=0 draws, -1 what 2**32 - 1 draws."""
    for seed, collides in ((2**32, 0), (2**40, 0), (-1, 2**32 - 1), (-(2**31), 2**31), (np.int64(2**33 + 5), 5)):
        with pytest.raises(ValueError, match=rf"(key|seed) must be an integer seed in \[0, 2\*\*32 - 1\], got "
                                             rf".*{int(seed)}.*what seed {collides} draws"):
            factory(seed)
    with pytest.raises(ValueError, match=r"got 18446744073709551616: without jax_enable_x64 JAX keeps a seed's low "
                                         r"32 bits\. Pass"):  # beyond int64: JAX's own OverflowError
        factory(2**64)
    for seed in (0, 2**31, 2**32 - 1, np.uint32(2**32 - 1)):
        factory(seed)
    with jax.enable_x64(True):  # there JAX keeps 64 bits: every int64 gives its own key
        for seed in (2**40, -1):
            factory(seed)
        with pytest.raises(ValueError, match=r"must be an integer seed in \[-2\*\*63, 2\*\*63 - 1\]"):
            factory(2**63)


def test_integer_and_bool_updates_take_the_noise_in_float32():
    """jax.random.normal draws no integers: add_noise and noisy_sgd failed on an integer update (Optax's too)."""
    params = {"n": jnp.array([1, 2], jnp.int32), "f": jnp.array([True, False]), "w": jnp.ones(2)}
    for tx in (jz.add_noise(0.1, 0.55, key=3), jz.noisy_sgd(0.1, key=3)):
        updates, _ = tx.update(params, tx.init(params), params)
        assert {k: u.dtype for k, u in updates.items()} == {"n": jnp.float32, "f": jnp.float32, "w": jnp.float32}
        # The float leaf draws what it draws beside float leaves (one key per leaf, in tree order).
        floats = {k: v.astype(jnp.float32) for k, v in params.items()}
        assert_trees_equal(updates, tx.update(floats, tx.init(floats), floats)[0])


@pytest.mark.parametrize("factory", [jz.scale_by_polyak, jz.polyak_sgd])
def test_polyak_refuses_a_loss_that_is_not_a_scalar(factory):
    """An unreduced loss gave per-element step sizes (Optax's too)."""
    tx, params = factory(), jnp.ones(3)
    for value, shape in ((jnp.array([1.0, 2.0, 3.0]), r"\(3,\)"), (jnp.array([1.0]), r"\(1,\)")):
        with pytest.raises(ValueError, match=rf"^scale_by_polyak: value must be a scalar loss .*shape {shape}; pass "
                                             r"the reduced loss"):
            tx.update(params, tx.init(params), params, value=value)
    with pytest.raises(ValueError, match=r"value must be a scalar loss .*shape \(2, 1\)"):  # traced alike
        jax.eval_shape(lambda v: tx.update(params, tx.init(params), params, value=v), jnp.ones((2, 1)))
