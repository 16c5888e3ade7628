"""D-adaptation (prodigy, dadapt_adamw and their transformations): Optax bit for bit, float64 references,
the warmup NaN Optax has, storage, None leaves, donation, vmap, inject_hyperparams, bad input (shard_map, Orbax
and Flax: the rows in test_sharding.py, test_checkpoint.py and test_interop.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_ours,
    run_together,
)
from tests.test_optimizers import assert_updates_close, eight_bit_params

Q8 = jz.Blockwise8Bit()
STEPS = 20


def warmup(step):
    """A linear warmup from 0 (the schedule Optax's docstrings recommend, and on which Optax's runs are NaN)."""
    return jnp.minimum(1.0, step / 5.0)


def decaying(step):
    return 1.0 / (1.0 + 0.1 * step)


PRODIGY_OPTIONS = dict(betas=(0.8, 0.99), beta3=0.9, eps=1e-6, estim_lr0=1e-3, estim_lr_coef=2.0, weight_decay=0.1)
DADAPT_OPTIONS = dict(betas=(0.8, 0.99), eps=1e-6, estim_lr0=1e-3, weight_decay=0.1)

# Every option on and off: (ours, optax.contrib's or None, the float64 reference from the paper).
CASES = {
    "prodigy": (lambda: jz.prodigy(), lambda: optax.contrib.prodigy(), lambda: reference.prodigy()),  # float32 below
    "prodigy_options": (
        lambda: jz.prodigy(decaying, **PRODIGY_OPTIONS, safeguard_warmup=True),
        lambda: optax.contrib.prodigy(decaying, **PRODIGY_OPTIONS, safeguard_warmup=True),
        lambda: reference.prodigy(decaying, **PRODIGY_OPTIONS, safeguard_warmup=True),
    ),
    "dadapt_adamw": (  # float32 below
        lambda: jz.dadapt_adamw(), lambda: optax.contrib.dadapt_adamw(), lambda: reference.dadapt_adamw()
    ),
    "dadapt_adamw_options": (
        lambda: jz.dadapt_adamw(decaying, **DADAPT_OPTIONS),
        lambda: optax.contrib.dadapt_adamw(decaying, **DADAPT_OPTIONS),
        lambda: reference.dadapt_adamw(decaying, **DADAPT_OPTIONS),
    ),
    # A warmup from 0: the first step's s is 0, so d stays d_0, where Optax divides 0 by 0 and its run is NaN.
    "prodigy_warmup": (
        lambda: jz.prodigy(warmup, weight_decay=0.1), lambda: optax.contrib.prodigy(warmup, weight_decay=0.1),
        lambda: reference.prodigy(warmup, weight_decay=0.1),
    ),
    "dadapt_adamw_warmup": (
        lambda: jz.dadapt_adamw(warmup),
        lambda: optax.contrib.dadapt_adamw(warmup),
        lambda: reference.dadapt_adamw(warmup),
    ),
}


def run_tree_reference(ref, params, steps=STEPS):
    """Iterates of a whole-tree reference (one step size for all leaves) on conftest's gradient field."""
    leaves, treedef = jax.tree.flatten(params)
    leaves = [np.asarray(x, np.float64) for x in leaves]
    state, iterates = ref.init(leaves), []
    for t in range(1, steps + 1):
        deltas, state = ref.update([np.asarray(grad_fn(x, t), np.float64) for x in leaves], state, leaves, t)
        leaves = [x + dx for x, dx in zip(leaves, deltas)]
        iterates.append(jax.tree.unflatten(treedef, leaves))
    return iterates, state


@pytest.mark.parametrize("name", [name for name in CASES if name not in ("prodigy", "dadapt_adamw")])
def test_float64_matches_optax_contrib_bit_for_bit_and_the_paper_to_1e_9(name, x64):
    ours, theirs, ref = CASES[name]
    params = make_params(jnp.float64)
    iterates, state = run_ours(ours(), params, STEPS)
    assert state.estim_lr.dtype == jnp.float64
    their_iterates, their_state = run_ours(theirs(), params, STEPS)
    if name.endswith("warmup"):  # Optax's bug: 0/0 at the first step
        assert np.isnan(float(their_state.estim_lr)) and np.isnan(np.asarray(their_iterates[-1]["scale"]))
    else:
        assert_trees_equal(iterates, their_iterates)
        assert_trees_equal(jax.tree.leaves(state), jax.tree.leaves(their_state))
    expected, ref_state = run_tree_reference(ref(), params)
    assert_trees_close(iterates, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(state.estim_lr), ref_state["d"], rtol=1e-9)
    assert ref_state["d"] > 2 * float(ours().init(params).estim_lr)  # the estimate grew: the test is not vacuous


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_float32_matches_optax_contrib_bit_for_bit(name):
    ours, theirs, _ = CASES[name]
    params = make_params(jnp.float32)
    (iterates, state), (their_iterates, their_state) = run_together([ours(), theirs()], params, steps=STEPS)
    assert_trees_equal(iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(state), jax.tree.leaves(their_state))


ROUNDED = jz.StochasticBF16()
FULL = jz.prodigy(0.5, estim_lr0=1e-3, weight_decay=0.1)
# Every per-parameter state in bfloat16, the moments stochastically rounded.
HALF = jz.prodigy(0.5, estim_lr0=1e-3, weight_decay=0.1, exp_avg_dtype=ROUNDED, exp_avg_sq_dtype=ROUNDED,
                  grad_sum_dtype=ROUNDED, params0_dtype=jnp.bfloat16)


def step_of(tx):
    def step(params, state, t):
        updates, state = tx.update(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), state, params)
        return jz.apply_updates(params, updates), state

    return step


@functools.cache
def jitted_step(tx, donate=False):
    """One jitted step on conftest's gradient field, compiled once per optimizer for the whole file."""
    return jax.jit(step_of(tx), donate_argnums=(0, 1) if donate else ())


def run_jitted(tx, params, steps, donate=False, state=None):
    state = tx.init(params) if state is None else state
    for t in range(1, steps + 1):
        params, state = jitted_step(tx, donate)(params, state, t)
    return params, state


# --- storage ------------------------------------------------------------------------------------


def test_eight_bit_moments_and_float_initial_params():
    # The storages are declared once for both rules (_storages); Prodigy adds params0, kept in float32.
    params = eight_bit_params()
    eight_bit = jz.prodigy(0.5, estim_lr0=1e-3, weight_decay=0.1, exp_avg_dtype=Q8, exp_avg_sq_dtype=Q8,
                           grad_sum_dtype=Q8)
    ours, state = run_jitted(eight_bit, params, 2, state=jax.jit(eight_bit.init)(params))  # jitted: no eager encoding
    expected, full_state = run_jitted(FULL, params, 2)
    encoded = [x.dtype for x in jax.tree.leaves(state) if is_encoded(x)]
    assert sorted(map(str, encoded)) == ["int8", "int8", "uint8"]  # exp_avg, grad_sum; exp_avg_sq
    assert state.params0["w"].dtype == jnp.float32
    np.testing.assert_array_equal(state.params0["w"], params["w"])
    moved = lambda new: jax.tree.map(jnp.subtract, new, params)  # noqa: E731
    assert_updates_close(moved(ours), moved(expected), rtol=0.05)  # "b" too: its step size d_t is the whole tree's
    assert jz.storage.state_bytes(state) < 0.5 * jz.storage.state_bytes(full_state)  # 3 of 4 moments quantized


def test_bfloat16_params_keep_float32_scalars_and_bfloat16_updates():
    params = make_params(jnp.bfloat16)
    for tx in (jz.prodigy(), jz.dadapt_adamw()):
        updates, state = jax.eval_shape(lambda p: tx.update(p, tx.init(p), p), params)
        assert state.estim_lr.dtype == state.numerator_weighted.dtype == jnp.float32
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((state.exp_avg, state.grad_sum, updates)))


def test_bfloat16_storages_and_a_none_update_that_keeps_param_and_state_bit_for_bit():
    params = make_params()
    expected, _ = run_jitted(FULL, params, 3)
    params, state = run_jitted(HALF, params, 3)
    per_param = [state.exp_avg, state.exp_avg_sq, state.grad_sum, state.params0]
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(per_param))
    assert state.estim_lr.dtype == jnp.float32 and int(state.count) == 3  # the count the rounding draws from
    assert_trees_close(params, expected, rtol=0.05, atol=0.02)

    # A stochastically rounded leaf written again would be rounded again, with a new draw: kept leaves are not.
    grads = jax.tree.map(lambda p: grad_fn(p, 4, jnp), params)
    grads["dense"]["w"] = None
    updates, new_state = jax.jit(HALF.update)(grads, state, params)
    assert updates["dense"]["w"] is None
    new_params = jz.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params["dense"]["w"], params["dense"]["w"])
    assert not np.array_equal(new_params["dense"]["b"], params["dense"]["b"])
    kept = [(a, b) for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(new_state))
            if path[-1] == jax.tree_util.DictKey("w")]
    assert len(kept) == 4
    for a, b in kept:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


# --- jit with donation, vmap, inject_hyperparams ------------------------------------------------


def test_params_and_state_can_both_be_donated():
    # Optax's params0 is the caller's params array itself: donating both would hand XLA one buffer twice.
    params = make_params()
    state = HALF.init(params)
    assert not any(a is b for a, b in zip(jax.tree.leaves(FULL.init(params).params0), jax.tree.leaves(params)))
    expected = run_jitted(HALF, params, 3, state=state)
    donated = run_jitted(HALF, jax.tree.map(jnp.copy, params), 3, donate=True, state=jax.tree.map(jnp.copy, state))
    assert_trees_equal(donated, expected)


def test_vmap_over_parameter_sets_equals_separate_runs():
    # Each set's d_t is its own: the sums over the tree do not mix the sets.
    batch = [make_params(seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
    state, step = jax.vmap(FULL.init)(stacked), jax.jit(jax.vmap(step_of(FULL), (0, 0, None)))
    for t in range(1, 4):
        stacked, state = step(stacked, state, t)
    for i, params in enumerate(batch):
        expected, expected_state = run_jitted(FULL, params, 3)
        assert_trees_close(jax.tree.map(lambda x: x[i], stacked), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state.estim_lr[i], expected_state.estim_lr, rtol=1e-6)


def test_inject_hyperparams_gives_the_plain_trajectory():
    hyperparams = dict(learning_rate=0.5, estim_lr0=1e-3, weight_decay=0.1)
    params = make_params()
    expected, _ = run_jitted(FULL, params, 5)
    injected, state = run_jitted(jz.inject_hyperparams(jz.prodigy)(**hyperparams), params, 5)
    assert_trees_close(injected, expected, rtol=1e-5, atol=1e-7)
    assert set(state.hyperparams) == {"learning_rate", "eps", "estim_lr0", "estim_lr_coef", "weight_decay"}


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.prodigy(-1.0), r"^prodigy: learning_rate must be >= 0, got -1.0"),
        (lambda: jz.prodigy(betas=0.9), r"^prodigy: betas must be a pair \(b1, b2\), got 0.9"),
        (lambda: jz.prodigy(betas=(0.9, 1.0)), r"^prodigy: betas\[1\] must be in \[0, 1\), got 1.0"),
        (lambda: jz.prodigy(beta3=1.5), r"^prodigy: beta3 must be in \[0, 1\), got 1.5"),
        (lambda: jz.prodigy(eps=-1e-8), r"^prodigy: eps must be >= 0"),
        (lambda: jz.prodigy(estim_lr0=0.0), r"^prodigy: estim_lr0 must be > 0, got 0.0"),
        (lambda: jz.prodigy(estim_lr_coef=0.0), r"^prodigy: estim_lr_coef must be > 0, got 0.0"),
        (lambda: jz.prodigy(weight_decay=-0.1), r"^prodigy: weight_decay must be >= 0, got -0.1"),
        (lambda: jz.prodigy(safeguard_warmup=1), r"^prodigy: safeguard_warmup must be True or False"),
        (lambda: jz.prodigy(params0_dtype=Q8), r"^prodigy: params0_dtype=Blockwise8Bit.* 8-bit codes"),
        (lambda: jz.prodigy(grad_sum_dtype=jnp.int8), r"^prodigy: grad_sum_dtype must be"),
        (lambda: jz.prodigy(axis_name=3), r"^prodigy: axis_name must be None"),
        (lambda: jz.dadapt_adamw(betas=(-0.1, 0.9)), r"^dadapt_adamw: betas\[0\] must be in \[0, 1\), got -0.1"),
        (lambda: jz.dadapt_adamw(estim_lr0=-1.0), r"^dadapt_adamw: estim_lr0 must be > 0"),
        (lambda: jz.dadapt_adamw(exp_avg_sq_dtype="x"), r"^dadapt_adamw: exp_avg_sq_dtype must be"),
        (lambda: jz.scale_by_prodigy(params0_dtype=Q8), r"^scale_by_prodigy: params0_dtype"),
        (lambda: jz.scale_by_dadapt_adamw(weight_decay=-1.0), r"^scale_by_dadapt_adamw: weight_decay must be >= 0"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_a_state_from_another_optimizer_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match="expected ProdigyState"):
        jz.prodigy().update(params, jz.dadapt_adamw().init(params), params)
    with pytest.raises(ValueError, match="scale_by_dadapt_adamw needs the parameters"):
        jz.dadapt_adamw().update(params, jz.dadapt_adamw().init(params))


def test_complex_params_are_refused_with_a_way_out():
    with pytest.raises(ValueError, match="complex params are not supported.*split_real_and_imaginary"):
        jz.prodigy().init({"z": jnp.ones(2, jnp.complex64)})


def test_prodigy_with_a_tiny_first_estimate_steps_by_zero_not_nan():
    # (d_0 g)^2 underflows to 0 and so does d_0 eps (below float32's smallest normal): the denominator was 0 and
    # the step 0/0 = NaN. Such a d_0 is far below the params' rounding, so the params do not move (documented).
    # A denormal d_0 itself is flushed to 0 (d_t / d_0 = 0/0): refused for float32 scalars, not float64's (nor by
    # dadapt_adamw, which does not divide by it).
    params = jnp.array([1.0, -2.0, 0.5])
    with pytest.raises(ValueError, match=r"^scale_by_prodigy: estim_lr0=1e-38 is below the smallest normal float32"):
        jz.prodigy(estim_lr0=1e-38).init(params)
    with jax.enable_x64(True):
        tx = jz.prodigy(estim_lr0=1e-38)
        params64 = params.astype(jnp.float64)
        updates, _ = tx.update(jnp.ones(3, jnp.float64), tx.init(params64), params64)
        assert bool(jnp.all(jnp.isfinite(updates)))
    tx = jz.dadapt_adamw(estim_lr0=1e-39)
    updates, _ = tx.update(jnp.ones(3), tx.init(params), params)
    assert bool(jnp.all(jnp.isfinite(updates)))
    for estim_lr0 in (1e-30, 1e-37):
        tx = jz.prodigy(estim_lr0=estim_lr0)
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(jnp.array([0.5, -1.0, 0.0]), state, params)
            np.testing.assert_array_equal(np.asarray(updates), np.zeros(3))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
