"""Layer-wise rules (scale_by_novograd, scale_by_param_block_norm, scale_by_param_block_rms; novograd, fromage):
Optax bit for bit, float64 references, storage, jit/vmap/inject_hyperparams, and exact norms inside shard_map."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    assert_vmap_matches_separate_runs,
    grad_fn,
    make_params,
    run_ours,
    run_reference,
    run_together,
)
from tests.test_optimizers import assert_updates_close, eight_bit_params

Q8 = jz.Blockwise8Bit()


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


def tiny_decay(step):
    return 1e-2 * 0.9**step


# Jitted float32 trajectories and states against Optax's, bit for bit, every option on and off (the defaults
# are compared by test_signatures_match_optax). make_params's leaves have norms 2.44 (w), 2.75 (b), 0.54 (scale)
# and RMS 0.70, 1.37, 0.54: the min_scale values below clamp some leaves and not others. (b2 = 0.5 = 1 - b2 is
# where a select of both steps' moments, in place of Optax's cond, gave other last bits: it takes the same program.)
OPTAX_CASES = {
    "novograd": (lambda: jz.novograd(0.01), lambda: optax.novograd(0.01)),
    "novograd_options": (
        lambda: jz.novograd(decaying, 0.8, 0.5, 1e-3, 1e-4, 0.05),
        lambda: optax.novograd(decaying, 0.8, 0.5, 1e-3, 1e-4, 0.05),
    ),
    "fromage": (lambda: jz.fromage(0.05), lambda: optax.fromage(0.05)),
    "fromage_schedule_min_norm": (lambda: jz.fromage(decaying, 0.5), lambda: optax.fromage(decaying, 0.5)),
    "param_block_norm_and_rms_clamped": (
        lambda: jz.chain(jz.scale_by_param_block_norm(2.6), jz.scale_by_param_block_rms(0.9), jz.scale_by_learning_rate(0.01)),
        lambda: optax.chain(optax.scale_by_param_block_norm(2.6), optax.scale_by_param_block_rms(0.9), optax.scale_by_learning_rate(0.01)),
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs = OPTAX_CASES[name]
    params = make_params(jnp.float32)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert not np.allclose(np.asarray(our_iterates[-1]["dense"]["w"]), np.asarray(params["dense"]["w"]))


def test_param_block_scales_clamp_where_the_examples_say():
    # The "clamped" cases really mix clamped and unclamped leaves, so both branches are compared.
    params = make_params()
    norm = lambda x: float(jnp.linalg.norm(x))
    rms = lambda x: float(jnp.sqrt(jnp.mean(x**2)))
    assert norm(params["dense"]["b"]) > 2.6 > max(norm(params["dense"]["w"]), norm(params["scale"]))
    assert rms(params["dense"]["b"]) > 0.9 > max(rms(params["dense"]["w"]), rms(params["scale"]))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (jz.novograd, optax.novograd),
        (jz.scale_by_novograd, optax.scale_by_novograd),
        (jz.fromage, optax.fromage),
        (jz.scale_by_param_block_norm, optax.scale_by_param_block_norm),
        (jz.scale_by_param_block_rms, optax.scale_by_param_block_rms),
    ],
)
def test_signatures_match_optax(ours, theirs):
    # Optax's arguments, in Optax's order and with Optax's defaults; ours adds only keyword-only ones.
    ours_params = list(inspect.signature(ours).parameters.values())
    theirs_params = list(inspect.signature(theirs).parameters.values())
    assert [(p.name, p.default) for p in ours_params[: len(theirs_params)]] == [(p.name, p.default) for p in theirs_params]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours_params[len(theirs_params):])


# Each rule against its float64 NumPy reference (written from the papers), eagerly in float64.
REFERENCE_CASES = {
    "novograd_options": (
        lambda: jz.novograd(decaying, 0.8, 0.5, 1e-3, 1e-4, tiny_decay),
        lambda: reference.novograd(decaying, 0.8, 0.5, 1e-3, 1e-4, tiny_decay),
    ),
    "scale_by_novograd": (
        lambda: jz.chain(jz.scale_by_novograd(0.95, 0.98, eps=0.0, weight_decay=0.01), jz.scale(-0.02)),
        lambda: reference.novograd(0.02, 0.95, 0.98, 0.0, weight_decay=0.01),
    ),
    "fromage": (lambda: jz.fromage(0.05), lambda: reference.fromage(0.05)),
    "fromage_schedule_min_norm": (lambda: jz.fromage(decaying, 0.5), lambda: reference.fromage(decaying, 0.5)),
    "scale_by_param_block_norm": (
        lambda: jz.chain(jz.scale_by_param_block_norm(), jz.scale_by_learning_rate(0.01)),
        lambda: reference.param_block_norm_sgd(0.01),
    ),
    "scale_by_param_block_norm_clamped": (
        lambda: jz.chain(jz.scale_by_param_block_norm(2.6), jz.scale_by_learning_rate(0.01)),
        lambda: reference.param_block_norm_sgd(0.01, 2.6),
    ),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_matches_float64_reference(name, x64):
    ours, expected = REFERENCE_CASES[name]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params)  # jitted: one compile costs less than 25 eager steps here
    assert_trees_close(iterates, run_reference(expected(), params), rtol=1e-10, atol=1e-13)


def test_novograd_first_steps_follow_the_paper():
    # v_1 = ||g||^2, m_1 = g / ||g|| + wd p; then v_2 = b2 v_1 + (1 - b2) ||g_2||^2, m_2 = b1 m_1 + g_2 / sqrt(v_2) + wd p.
    p, g1, g2 = jnp.asarray([1.0, -2.0]), jnp.asarray([3.0, 4.0]), jnp.asarray([0.0, 1.0])
    tx = jz.scale_by_novograd(b1=0.5, b2=0.75, eps=0.0, weight_decay=0.1)
    m1, state = tx.update(g1, tx.init(p), p)
    np.testing.assert_allclose(m1, [0.6 + 0.1, 0.8 - 0.2], rtol=1e-6)
    np.testing.assert_allclose(state.nu, 25.0)
    m2, state = tx.update(g2, state, p)
    v2 = 0.75 * 25 + 0.25
    np.testing.assert_allclose(state.nu, v2, rtol=1e-6)
    np.testing.assert_allclose(m2, 0.5 * np.asarray(m1) + np.asarray([0.0, 1.0]) / np.sqrt(v2) + 0.1 * np.asarray(p), rtol=1e-6)
    assert int(state.count) == 2


def test_novograd_without_eps_gives_zero_not_nan_for_an_all_zero_gradient():
    tx = jz.novograd(0.1, eps=0.0)
    params = {"w": jnp.ones(3), "dead": jnp.ones(2)}
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update({"w": jnp.asarray([1.0, 2.0, 2.0]), "dead": jnp.zeros(2)}, state, params)
        np.testing.assert_array_equal(updates["dead"], [0.0, 0.0])
        np.testing.assert_allclose(updates["w"][0], -0.1 * (1 / 3 if int(state[0].count) == 1 else 1.9 / 3), rtol=1e-6)


def test_novograd_reads_params_only_for_weight_decay():
    grads = {"w": jnp.asarray([3.0, 4.0])}
    updates, _ = jz.novograd(0.1).update(grads, jz.novograd(0.1).init(grads))  # no params needed
    np.testing.assert_allclose(updates["w"], [-0.06, -0.08], rtol=1e-6)
    with pytest.raises(ValueError, match="scale_by_novograd"):
        jz.novograd(0.1, weight_decay=0.1).update(grads, jz.novograd(0.1).init(grads))


def test_novograd_dtypes_with_bfloat16_params():
    params = make_params(jnp.bfloat16)
    tx = jz.novograd(0.01, weight_decay=0.1)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp).astype(p.dtype), params)
    _, new_state = jax.eval_shape(tx.update, grads, state, params)  # the types a step gives, without running it
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert all(x.dtype == jnp.bfloat16 and x.shape == () for x in jax.tree.leaves(new_state[0].nu))
    # A first moment wider than the params (Optax's cond fails on the branches' differing dtypes).
    wide = jz.scale_by_novograd(mu_dtype=jnp.float32)
    updates, wide_state = jax.eval_shape(wide.update, grads, wide.init(params), params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((updates, wide_state.mu)))


# --- storage options ---------------------------------------------------------------------------


def _jitted_steps(tx, params, steps, init_jit=True):
    # (params, state, summed updates) after ``steps`` jitted steps on conftest's gradient field (eager 8-bit
    # init and steps cost several times one compile).
    state = (jax.jit(tx.init) if init_jit else tx.init)(params)
    total, update = jax.tree.map(jnp.zeros_like, params), jax.jit(tx.update)
    for t in range(1, steps + 1):
        updates, state = update(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), state, params)
        total = jax.tree.map(jnp.add, total, updates)
        params = jz.apply_updates(params, updates)
    return params, state, total


def test_eight_bit_first_moment_and_none_updates():
    factory = lambda s: jz.novograd(1e-2, weight_decay=0.1, mu_dtype=s)
    tx, params = factory(Q8), eight_bit_params()
    params, state, ours = _jitted_steps(tx, params, 2)
    for s in (jax.eval_shape(tx.init, params)[0], state[0]):
        assert is_encoded(s.mu["w"]) and s.mu["w"].dtype == jnp.int8
        assert s.mu["b"].dtype == jnp.float32 and s.mu["b"].shape == (8,)  # too small to encode
        assert all(x.dtype == jnp.float32 and x.shape == () for x in jax.tree.leaves(s.nu))
    _, full_state, expected = _jitted_steps(factory(None), eight_bit_params(), 2, init_jit=False)
    assert_updates_close(ours, expected, rtol=0.02)
    np.testing.assert_array_equal(ours["b"], expected["b"])  # "b" keeps full-precision state
    assert jz.storage.state_bytes(state) < 0.3 * jz.storage.state_bytes(full_state)

    # A None update keeps its param and every state leaf (the 8-bit mu, the scalar nu) bit for bit.
    grads = {"w": None, "b": grad_fn(params["b"], 3, jnp)}
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert updates["w"] is None
    new_params = jz.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params["w"], params["w"])
    assert not np.array_equal(new_params["b"], params["b"])
    kept = [(a, b) for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(new_state))
            if path[-1] == jax.tree_util.DictKey("w")]
    assert len(kept) == 2 and any(is_encoded(a) for a, _ in kept)
    for a, b in kept:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)
    for other in (jz.fromage(0.1), jz.scale_by_param_block_norm()):
        assert other.update(grads, other.init(params), params)[0]["w"] is None


def test_bfloat16_storages_and_donated_jitted_steps_match_eager_steps():
    params = make_params()
    factory = lambda s: jz.novograd(1e-2, weight_decay=0.1, mu_dtype=s)
    expected, _ = run_ours(factory(None), params, steps=3)

    def check(final_params, state):
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[0].mu))
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[0].nu))
        assert int(state[0].count) == 3  # the step count the stochastic rounding draws from
        # 3 steps of ~0.01 |m| with m rounded to bfloat16 (relative 2**-8) each time.
        assert_trees_close(final_params, expected[-1], rtol=0, atol=3e-3)

    iterates, state = run_ours(factory(jnp.bfloat16), params, steps=3)
    check(iterates[-1], state)

    # Stochastic rounding, jitted with the state donated, against eager steps.
    tx = factory(jz.StochasticBF16())
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    eager_params, eager_state = params, tx.init(params)
    jit_params, jit_state = params, tx.init(params)
    for t in range(1, 4):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), eager_params)
        u, eager_state = tx.update(grads, eager_state, eager_params)
        eager_params = jz.apply_updates(eager_params, u)
        u, jit_state = step(jit_params, jit_state, grads)
        jit_params = jz.apply_updates(jit_params, u)
    check(jit_params, jit_state)
    # A last-bit difference between the eager and fused float32 values may round the other way: one bfloat16 ulp of m.
    assert_trees_close(jit_params, eager_params, rtol=1e-6, atol=1e-5)
    assert_trees_close(jax.tree.leaves(jit_state), jax.tree.leaves(eager_state), rtol=1e-2, atol=1e-4)


# --- vmap, inject_hyperparams ------------------------------------------------------------------


def test_vmap_over_parameter_sets_equals_separate_runs():
    # Every norm is per parameter set: vmap must not mix the sets.
    tx = jz.chain(jz.scale_by_param_block_norm(0.5), jz.novograd(1e-2, weight_decay=0.1))
    assert_vmap_matches_separate_runs(tx, steps=2)


@pytest.mark.parametrize(
    "factory, hyperparams",
    [
        (jz.novograd, dict(learning_rate=0.01, b1=0.8, b2=0.5, eps=1e-3, eps_root=1e-4, weight_decay=0.05)),
        (jz.fromage, dict(learning_rate=0.05, min_norm=0.5)),
        (lambda min_scale: jz.chain(jz.scale_by_param_block_norm(min_scale), jz.scale(-0.01)), dict(min_scale=2.0)),
    ],
    ids=["novograd", "fromage", "scale_by_param_block_norm"],
)
def test_inject_hyperparams_gives_the_plain_trajectory(factory, hyperparams):
    params = make_params()
    jit = factory is jz.novograd  # eagerly, each step's new novograd would compile its cond again
    expected, _ = run_ours(factory(**hyperparams), params, steps=5, jit=jit)
    injected, state = run_ours(jz.inject_hyperparams(factory)(**hyperparams), params, steps=5, jit=jit)
    assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)
    assert set(state.hyperparams) == set(hyperparams)


# --- shard_map: each norm is the whole array's -------------------------------------------------

AXES = ("data", "model")
SPECS = {"w": P("data", "model"), "b": P("model"), "c": P()}


def _sharded_params():
    rng = np.random.default_rng(0)
    shapes = {"w": (16, 8), "b": (8,), "c": (4,)}
    return {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in shapes.items()}


def _trajectory(tx, mesh=None, steps=3):
    params = _sharded_params()
    if mesh is None:
        step = jax.jit(lambda p, s, g: tx.update(g, s, p))
        state = tx.init(params)
    else:
        params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in params.items()}
        state = jz.init_sharded(tx, params)
        state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
        step = jax.jit(jax.shard_map(lambda p, s, g: tx.update(g, s, p), mesh=mesh,
                                     in_specs=(SPECS, state_specs, SPECS), out_specs=(SPECS, state_specs)))
    iterates = []
    for t in range(1, steps + 1):
        updates, state = step(params, state, {k: grad_fn(v, t, jnp) for k, v in params.items()})
        params = jz.apply_updates(params, updates)
        iterates.append(jax.device_get(params))
    return iterates


def test_shard_map_with_axis_name_matches_one_device():
    mesh = jax.make_mesh((2, 4), AXES, devices=jax.devices("cpu")[:8])
    # (fromage and novograd alone: tests/test_sharding.py's OPTIMIZERS, under jit and shard_map.)
    factory = lambda axes: jz.chain(jz.scale_by_param_block_norm(axis_name=axes), jz.novograd(0.05, weight_decay=0.1, axis_name=axes))
    assert_trees_close(_trajectory(factory(AXES), mesh), _trajectory(factory(None)), rtol=2e-5, atol=1e-6)
    # Without axis_name, a sharded leaf raises instead of using the local shard's norm.
    with pytest.raises(ValueError, match="scale_by_param_block_norm: .*axis_name"):
        _trajectory(jz.scale_by_param_block_norm(), mesh, steps=1)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.novograd(-0.1), r"^novograd: learning_rate must be >= 0, got -0.1"),
        (lambda: jz.novograd(0.1, b1=1.0), r"^novograd: b1 must be in \[0, 1\), got 1.0"),
        (lambda: jz.novograd(0.1, b2=-0.5), r"^novograd: b2 must be in \[0, 1\), got -0.5"),
        (lambda: jz.novograd(0.1, eps=-1e-6), r"^novograd: eps must be >= 0, got -1e-06"),
        (lambda: jz.novograd(0.1, eps_root=float("nan")), r"^novograd: eps_root must be a finite real number, got nan"),
        (lambda: jz.novograd(0.1, weight_decay=-1.0), r"^novograd: weight_decay must be >= 0, got -1.0"),
        (lambda: jz.novograd(0.1, mu_dtype=jnp.int8), r"^novograd: mu_dtype must be"),
        (lambda: jz.novograd(0.1, axis_name=3), r"^novograd: axis_name"),
        (lambda: jz.scale_by_novograd(b1=1.5), r"^scale_by_novograd: b1 must be in \[0, 1\), got 1.5"),
        (lambda: jz.scale_by_novograd(weight_decay="x"), r"^scale_by_novograd: weight_decay must be a finite real number, got 'x'"),
        (lambda: jz.scale_by_novograd(mu_dtype="x"), r"^scale_by_novograd: mu_dtype must be"),
        (lambda: jz.fromage(-1.0), r"^fromage: learning_rate must be >= 0, got -1.0"),
        (lambda: jz.fromage(0.1, min_norm=-1e-6), r"^fromage: min_norm must be >= 0, got -1e-06"),
        (lambda: jz.fromage(0.1, axis_name=["data", 1]), r"^fromage: axis_name"),
        (lambda: jz.scale_by_param_block_norm(-1.0), r"^scale_by_param_block_norm: min_scale must be >= 0, got -1.0"),
        (lambda: jz.scale_by_param_block_norm(axis_name=1.5), r"^scale_by_param_block_norm: axis_name"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_missing_params_and_foreign_state_are_refused():
    params = make_params()
    with pytest.raises(ValueError, match="scale_by_param_block_norm"):
        jz.scale_by_param_block_norm().update(params, jz.EmptyState())
    with pytest.raises(ValueError, match="fromage|scale_by_trust_ratio"):
        jz.fromage(0.1).update(params, jz.fromage(0.1).init(params))
    with pytest.raises(ValueError, match="expected ScaleByNovogradState"):
        jz.novograd(0.1).update(params, jz.sgd(0.1, momentum=0.9).init(params), params)


def test_fromage_without_a_learning_rate_steps_at_rate_one():
    # Optax's fromage(None) fails on None ** 2; ours, like every alias here, reads None as a rate of 1.
    params = {"w": jnp.asarray([3.0, 4.0])}
    grads = {"w": jnp.asarray([0.0, 2.0])}
    updates, _ = jz.fromage(None).update(grads, jz.fromage(None).init(params), params)
    # (p - (||p|| / ||g||) g) / sqrt(2) - p with ||p|| / ||g|| = 2.5
    np.testing.assert_allclose(updates["w"], (np.asarray([3.0, 4.0 - 5.0]) / np.sqrt(2)) - [3.0, 4.0], rtol=1e-6)
