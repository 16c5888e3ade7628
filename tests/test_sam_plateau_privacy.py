"""SAM, normalize, reduce_on_plateau, differential privacy (optax.contrib): Optax bit for bit, float64 references."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from jax.sharding import NamedSharding
from tests import reference
from tests.conftest import (
    USER_XLA_FLAGS,
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_ours,
    run_together,
)

# --- sam and normalize ---------------------------------------------------------------------------


def _adv(ours: bool, rho: float = 0.1, momentum=None):
    lib, normalize = (jz, jz.normalize) if ours else (optax, optax.contrib.normalize)
    return lib.chain(normalize(), lib.sgd(rho, momentum))


SAM_CASES = {  # name: (outer optimizer factory of the library, sam's keyword arguments, adversary's momentum)
    "adam_period_3_no_reset": (lambda lib: lib.adam(0.05), dict(sync_period=3, reset_state=False), 0.5),
    "momentum_reset": (lambda lib: lib.sgd(0.05, momentum=0.9), dict(sync_period=3, reset_state=True), 0.5),
}


@pytest.mark.parametrize("name", list(SAM_CASES))
def test_sam_matches_optax_bit_for_bit(name):
    outer, kwargs, momentum = SAM_CASES[name]
    params = make_params()
    ours, ours_state = run_ours(jz.sam(outer(jz), _adv(True, momentum=momentum), **kwargs), params, steps=20)
    theirs_tx = optax.contrib.sam(outer(optax), _adv(False, momentum=momentum), **kwargs)
    theirs, theirs_state = run_ours(theirs_tx, params, steps=20)
    assert_trees_equal(ours, theirs)
    assert_trees_equal(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state))
    assert type(ours_state).__name__ == "SAMState" and ours_state._fields == theirs_state._fields


_SAM_AS_USERS_COMPILE = """
import jax, jax.numpy as jnp, numpy as np, optax
import jaxopt_zoo as jz

def run(tx, p, steps=12):
    state = tx.init(p)
    @jax.jit
    def step(p, state, t):
        updates, state = tx.update(0.7 * p + jnp.sin(t + p), state, p)
        return optax.apply_updates(p, updates), state

    for t in range(steps):
        p, state = step(p, state, t)
    return p

p = jnp.asarray(np.random.default_rng(0).normal(size=(33, 17)), jnp.float32)
ours = run(jz.sam(jz.sgd(0.05), jz.chain(jz.normalize(), jz.sgd(0.1))), p)
theirs = run(optax.contrib.sam(optax.sgd(0.05), optax.chain(optax.contrib.normalize(), optax.sgd(0.1))), p)
assert bool(jnp.array_equal(ours, theirs)), int(jnp.sum(ours != theirs))
"""


def test_sam_matches_optax_bit_for_bit_as_users_compile():
    """Selecting the floating arrays with jnp.where instead of Optax's blend changed how XLA fuses the step as users
    compile it (XLA's default flags, not the suite's) and the last bit of some entries. In a process of its own."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(USER_XLA_FLAGS))
    result = subprocess.run([sys.executable, "-c", _SAM_AS_USERS_COMPILE], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def _opaque_run(tx, params, steps=20):
    # f(params, j): the gradient of the test field at the adversarial params of step j.
    state, iterates = tx.init(params), []

    @jax.jit
    def step(params, state, t):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        f = lambda p, j: jax.tree.map(lambda x: grad_fn(x, t + 0.5 * (j + 1), jnp), p)
        updates, state = tx.update(grads, state, params, grad_fn=f)
        return optax.apply_updates(params, updates), state

    for t in range(1, steps + 1):
        params, state = step(params, state, t)
        iterates.append(params)
    return iterates, state


def test_sam_opaque_mode_matches_optax_bit_for_bit():
    params = make_params()
    kwargs = dict(sync_period=3, reset_state=True, opaque_mode=True)  # reset off: the transparent cases
    ours, ours_state = _opaque_run(jz.sam(jz.adam(0.05), _adv(True, momentum=0.5), **kwargs), params)
    theirs, theirs_state = _opaque_run(optax.contrib.sam(optax.adam(0.05), _adv(False, momentum=0.5), **kwargs), params)
    assert_trees_equal(ours, theirs)
    assert_trees_equal(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state))
    assert ours_state.cache is None


@pytest.mark.parametrize("sync_period", [2, 3])
def test_sam_matches_the_paper_in_float64(sync_period, x64):
    params = make_params(jnp.float64)
    tx = jz.sam(jz.sgd(0.05), jz.chain(jz.normalize(), jz.sgd(0.1)), sync_period=sync_period)
    iterates, _ = run_ours(tx, params)
    leaves, treedef = jax.tree.flatten(params)
    expected = reference.sam_trajectory(leaves, grad_fn, len(iterates), 0.05, 0.1, sync_period)
    assert_trees_close(iterates, [jax.tree.unflatten(treedef, x) for x in expected], rtol=1e-10, atol=1e-13)


def test_sam_with_sync_period_1_is_the_outer_optimizer_where_optax_is_not():
    # Optax's transparent mode reads the cache of the call before, so each step restarts from the params
    # before the previous step; the outer optimizer alone is what sync_period=1 (no adversarial step) means.
    params = make_params()
    (ours, _), (plain, _) = run_together([
        jz.sam(jz.sgd(0.05), _adv(True), sync_period=1),
        jz.sgd(0.05),
    ], params, steps=3)
    theirs, _ = run_ours(optax.contrib.sam(optax.sgd(0.05), _adv(False), sync_period=1), params, steps=3)
    assert_trees_close(ours, plain, rtol=1e-6, atol=1e-7)
    assert not np.allclose(theirs[-1]["dense"]["w"], plain[-1]["dense"]["w"], rtol=1e-3)


def test_normalize_matches_optax_and_keeps_a_zero_gradient_finite():
    grads = {"a": jnp.asarray([3.0, -1.0]), "b": jnp.asarray([[0.5, 2.0]]), "c": jnp.asarray(-4.0)}
    normalize = jax.jit(jz.normalize().update)
    ours, _ = normalize(grads, jz.NormalizeState())
    theirs, _ = jax.jit(optax.contrib.normalize().update)(grads, optax.contrib.NormalizeState())
    assert_trees_equal(ours, theirs)
    # Many entries: XLA forms Optax's g / sqrt(s) as g * rsqrt(s), which some CPUs round otherwise than a division
    # (a third of these differed in the last bit where a guard stood between the root and the division).
    optax_normalize = jax.jit(optax.contrib.normalize().update)
    for g in np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32):  # a third of the entries differed
        assert_trees_equal(normalize(g, jz.NormalizeState())[0], optax_normalize(g, optax.contrib.NormalizeState())[0])
    zeros = jax.tree.map(jnp.zeros_like, grads)
    assert_trees_equal(normalize(zeros, jz.NormalizeState())[0], zeros)  # Optax: NaN
    # bfloat16 gradients: divided by the float32 norm and rounded once to bfloat16, Optax's quotient rounded
    # (Optax returns it in float32; a bfloat16 norm would have rounded twice).
    low = {"a": jnp.asarray([3.0, 1.1, 0.37], jnp.bfloat16), "b": jnp.asarray([4.0, 2.3])}
    theirs_low = jax.jit(optax.contrib.normalize().update)(low, optax.contrib.NormalizeState())[0]
    theirs_low = jax.tree.map(lambda u, g: u.astype(g.dtype), theirs_low, low)
    assert_trees_equal(normalize(low, jz.NormalizeState())[0], theirs_low)
    with_none = jz.normalize().update({"a": grads["a"], "n": None}, jz.NormalizeState())[0]
    assert with_none["n"] is None
    np.testing.assert_allclose(with_none["a"], grads["a"] / np.sqrt(10.0), rtol=1e-6)


def test_sam_none_update_keeps_its_param_and_state():
    params = make_params()
    tx = jz.sam(jz.adam(0.05), _adv(True))
    state, update = tx.init(params), jax.jit(tx.update)
    for t in (1, 2, 3):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        grads["dense"]["b"] = None
        updates, state = update(grads, state, params)
        assert updates["dense"]["b"] is None
        params = jz.apply_updates(params, updates)
    np.testing.assert_array_equal(params["dense"]["b"], make_params()["dense"]["b"])
    np.testing.assert_array_equal(state.opt_state[0].mu["dense"]["b"], 0.0)


def test_sam_donated_steps_and_vmap_equal_separate_runs():
    # Two parameter sets stepped one by one with params and state donated (init copies the params, so both
    # can be), and together under vmap: the same (the global norm does not mix the sets).
    tx = jz.sam(jz.adam(0.05), _adv(True), sync_period=3)
    step = jax.jit(lambda p, s, g: (lambda u, s: (jz.apply_updates(p, u), s))(*tx.update(g, s, p)),
                   donate_argnums=(0, 1))
    batch, separate = [make_params(), make_params(seed=1)], []
    for params in batch:
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        for t in range(1, 4):
            p, s = step(p, s, jax.tree.map(lambda x: grad_fn(x, t, jnp), p))
        separate.append(p)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
    batched = jax.jit(jax.vmap(lambda p, s, t: tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p),
                               in_axes=(0, 0, None)))
    state = jax.vmap(tx.init)(stacked)
    for t in range(1, 4):
        updates, state = batched(stacked, state, jnp.asarray(t, jnp.int32))
        stacked = jz.apply_updates(stacked, updates)
    for i, expected in enumerate(separate):
        assert_trees_close(jax.tree.map(lambda x: x[i], stacked), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(separate[0]["dense"]["w"], batch[0]["dense"]["w"])


# --- reduce_on_plateau ---------------------------------------------------------------------------

VALUES = [1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.92, 0.5, 0.6, 0.6, 0.61, 0.6, 0.62, 0.4, 0.6, 0.6, 0.7, 0.6, 0.6, 0.6,
          0.45, 0.6, 0.6, 0.6]
PLATEAU_CASES = {
    "defaults_patience_2": dict(patience=2),
    "all_options": dict(factor=0.5, patience=1, rtol=0.05, atol=1e-3, cooldown=2, accumulation_size=2, min_scale=0.2),
}


def _plateau_run(tx, params, values, jit=True):
    state, update = tx.init(params), (jax.jit(tx.update) if jit else tx.update)
    outputs = []
    for t, v in enumerate(values, start=1):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params)
        updates, state = update(grads, state, params, value=v)
        outputs.append((updates, state))
    return outputs


@pytest.mark.parametrize("name", list(PLATEAU_CASES))
def test_reduce_on_plateau_matches_optax_bit_for_bit(name):
    kwargs = PLATEAU_CASES[name]
    params = make_params() | {"scale": make_params()["scale"].astype(jnp.bfloat16)}  # scale: lowest dtype
    ours = _plateau_run(jz.reduce_on_plateau(**kwargs), params, VALUES)
    theirs = _plateau_run(optax.contrib.reduce_on_plateau(**kwargs), params, VALUES)
    for (u, s), (v, r) in zip(ours, theirs):
        assert_trees_equal(u, v)
        assert_trees_equal(tuple(s), tuple(r))
    assert ours[-1][1].scale.dtype == jnp.bfloat16 and ours[-1][1].best_value.dtype == jnp.float32
    assert float(ours[-1][1].scale) < 1.0


@pytest.mark.parametrize("name", list(PLATEAU_CASES))
def test_reduce_on_plateau_matches_the_keras_rule_in_float64(name, x64):
    kwargs = PLATEAU_CASES[name]
    params = make_params(jnp.float64)
    outputs = _plateau_run(jz.reduce_on_plateau(**kwargs), params, VALUES)
    scales = reference.reduce_on_plateau_scales(VALUES, **kwargs)
    np.testing.assert_allclose([float(s.scale) for _, s in outputs], scales, rtol=1e-12)
    for t, ((updates, _), scale) in enumerate(zip(outputs, scales), start=1):
        expected = jax.tree.map(lambda p: scale * grad_fn(np.asarray(p), t), params)
        assert_trees_close(updates, expected, rtol=1e-12)


def test_reduce_on_plateau_of_a_negative_loss_drops_on_a_plateau(x64):
    """A negative loss (a negative log-likelihood) that stays flat or slowly worsens: Optax's (1 - rtol) best lies
    above a negative best, so each value "improved" and the scale never dropped. Relative to |best| it drops."""
    params = {"w": jnp.ones(2, jnp.float64)}
    values = [v - 3.0 for v in VALUES] + [-1.0 + 4e-5 * i for i in range(6)]
    outputs = _plateau_run(jz.reduce_on_plateau(patience=2), params, values)
    scales = [float(s.scale) for _, s in outputs]
    np.testing.assert_allclose(scales, reference.reduce_on_plateau_scales(values, patience=2), rtol=1e-12)
    assert scales[-1] < scales[len(VALUES)]  # the slowly worsening tail drops the scale


def test_reduce_on_plateau_with_rtol_1_records_its_first_value_where_optax_does_not():
    # (1 - rtol) * inf is NaN in Optax at rtol = 1: no value ever improves, and the best stays inf.
    params = {"w": jnp.ones(2)}
    values = [-1.0, -1.0, -3.0, -3.0]
    ours = _plateau_run(jz.reduce_on_plateau(patience=2, rtol=1.0), params, values)
    theirs = _plateau_run(optax.contrib.reduce_on_plateau(patience=2, rtol=1.0), params, values)
    assert float(ours[0][1].best_value) == -1.0 and float(theirs[0][1].best_value) == np.inf
    assert [float(s.scale) for _, s in ours] == pytest.approx([1.0, 1.0, 1.0, 1.0])  # -3 < 0 * (-1) - 0 improves
    np.testing.assert_allclose(reference.reduce_on_plateau_scales(values, patience=2, rtol=1.0), 1.0)


def test_reduce_on_plateau_needs_value_passes_none_and_injects():
    params = {"w": jnp.ones(2), "n": jnp.ones(3)}
    tx = jz.reduce_on_plateau()
    with pytest.raises(ValueError, match="^reduce_on_plateau needs the monitored value"):
        tx.update(params, tx.init(params), params)
    injected = jz.inject_hyperparams(jz.reduce_on_plateau)(factor=0.5, patience=2, min_scale=0.1)
    values = [1.0, 1.0, 1.0, 1.0, 1.0]
    a = _plateau_run(injected, params, values)
    assert_trees_equal([u for u, _ in a], [jax.tree.map(lambda p: s * grad_fn(p, t, jnp), params)
                                           for t, s in enumerate([1, 1, 0.5, 0.5, 0.25], start=1)])
    assert float(a[-1][1].inner_state.scale) == 0.25
    # Inside a chain, value= reaches it; a None update stays None.
    chained = jz.chain(jz.sgd(1.0), jz.reduce_on_plateau(factor=0.5, patience=2))
    state, update = chained.init(params), jax.jit(chained.update)
    for v in values[:3]:
        updates, state = update({"w": jnp.ones(2), "n": None}, state, params, value=v)
    assert updates["n"] is None and float(state[1].scale) == 0.5
    np.testing.assert_array_equal(updates["w"], -0.5)


# --- differential privacy ------------------------------------------------------------------------


def _per_example(params, t, batch=5):
    # Example b's gradient: the test field at step t scaled by (b + 1) / 2, so some are clipped and some not.
    scales = (jnp.arange(batch) + 1.0) / 2
    return jax.tree.map(lambda p: scales.reshape((-1,) + (1,) * p.ndim).astype(p.dtype) * grad_fn(p, t, jnp), params)


def _dp_run(tx, params, steps=20):
    # One jitted step that also builds the per-example gradients (cheaper than building them eagerly).
    @jax.jit
    def step(params, state, t):
        updates, state = tx.update(_per_example(params, t), state, params)
        return jz.apply_updates(params, updates), state

    state, iterates = tx.init(params), []
    for t in range(1, steps + 1):
        params, state = step(params, state, jnp.asarray(t, jnp.int32))
        iterates.append(params)
    return iterates, state


def test_dpsgd_matches_optax_bit_for_bit_noise_included_and_injects():
    # Nesterov momentum on; without momentum the recipe is the aggregate (the float64 test below) and the rate.
    params = make_params()
    ours, ours_state = _dp_run(jz.dpsgd(0.05, 2.0, 0.7, 42, momentum=0.8, nesterov=True), params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Optax's dpsgd passes its own deprecated seed=
        theirs_tx = optax.contrib.dpsgd(0.05, 2.0, 0.7, 42, momentum=0.8, nesterov=True)
    theirs, theirs_state = _dp_run(theirs_tx, params)
    assert_trees_equal(ours, theirs)
    assert_trees_equal(jax.random.key_data(ours_state[0].rng_key), jax.random.key_data(theirs_state[0].rng_key))
    assert_trees_equal(jax.tree.leaves(ours_state[1:]), jax.tree.leaves(theirs_state[1:]))
    # The numeric hyperparameters injected (the seed static): the same trajectory.
    injected, state = _dp_run(
        jz.inject_hyperparams(jz.dpsgd, static_args="seed")(0.05, 2.0, 0.7, 42, momentum=0.8, nesterov=True), params
    )
    assert_trees_close(injected, ours, rtol=1e-5, atol=1e-6)
    assert set(state.hyperparams) == {"learning_rate", "l2_norm_clip", "noise_multiplier", "momentum"}


def test_dpsgd_without_momentum_matches_the_paper(x64):
    # (Optax's numbers: bit for bit in float32 through dpsgd above.)
    params = make_params(jnp.float64)
    ours = jz.dpsgd(1.0, 1.5, 0.8, jax.random.key(7))  # no momentum: minus the aggregate
    s, ours_update = ours.init(params), jax.jit(ours.update)

    @jax.jit
    def gradients_and_draws(params, key, t):
        # The step's draws: one key per leaf in tree order, after the next state's key.
        grads = _per_example(params, t)
        keys = jax.random.split(key, 4)[1:]
        return grads, [jax.random.normal(k, g.shape[1:], g.dtype) for k, g in zip(keys, jax.tree.leaves(grads))]

    for t in range(1, 21):
        grads, noise = gradients_and_draws(params, s[0].rng_key, t)
        u, s = ours_update(grads, s)
        leaves, treedef = jax.tree.flatten(grads)
        expected = reference.dp_aggregate([np.asarray(g) for g in leaves], 1.5, 0.8, noise)
        assert_trees_close(u, jax.tree.unflatten(treedef, [-e for e in expected]), rtol=1e-10, atol=1e-13)
        params = jz.apply_updates(params, jax.tree.map(lambda x: 0.05 * x, u))


def test_dp_aggregate_none_leaves_storage_and_shard_map():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    tx = jz.differentially_private_aggregate(1.0, 0.5, key=0)
    # The momentum's storage: 8-bit for a leaf large enough, float32 for a small one.
    big = jax.eval_shape(lambda: {"w": jnp.ones((64, 256)), "b": jnp.ones(8)})
    state = jax.eval_shape(jz.dpsgd(0.1, 1.0, 0.0, 0, momentum=0.9, accumulator_dtype=jz.Blockwise8Bit()).init, big)
    assert state[1].trace["w"].dtype == jnp.int8 and state[1].trace["b"].dtype == jnp.float32
    # A bfloat16 momentum, stochastically rounded; a None leaf stays None and draws no key.
    grads = {"w": jnp.stack([params["w"] * 0.01, -params["w"] * 0.02]), "b": None}
    dp = jz.dpsgd(0.1, 1.0, 0.0, 0, momentum=0.9, accumulator_dtype=jz.StochasticBF16())
    u, state = jax.jit(dp.update)(grads, dp.init(params), params)
    assert state[1].trace["w"].dtype == jnp.bfloat16 and int(state[1].count) == 1
    assert u["b"] is None and not np.any(np.asarray(state[1].trace["b"], np.float32))  # kept as initialised
    np.testing.assert_allclose(u["w"], -0.1 * (0.01 - 0.02) / 2, rtol=1e-6)
    # Inside shard_map a sharded leaf would get each shard's own copy of the noise: it raises.
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices("cpu")[:2])
    run = jax.shard_map(lambda g: tx.update(g, tx.init(None))[0], mesh=mesh, in_specs=jax.P(None, "data"),
                        out_specs=jax.P("data"))
    with pytest.raises(ValueError, match="^differentially_private_aggregate: inside shard_map"):
        jax.eval_shape(
            run, jax.ShapeDtypeStruct((2, 8), jnp.float32, sharding=NamedSharding(mesh, jax.P(None, "data")))
        )


# --- split_real_and_imaginary against optax.contrib -------------------------------------------------


def test_split_real_and_imaginary_matches_optax_numbers():
    params = {"z": jnp.asarray([1 + 2j, -0.5 + 0.1j, 3 - 1j], jnp.complex64), "x": jnp.asarray([0.3, -0.2])}
    ours_tx = jz.split_real_and_imaginary(jz.adam(0.05))
    theirs_tx = optax.contrib.split_real_and_imaginary(optax.adam(0.05))
    s, r = ours_tx.init(params), theirs_tx.init(params)
    ours_update, theirs_update = jax.jit(ours_tx.update), jax.jit(theirs_tx.update)
    for t in range(1, 21):
        grads = jax.tree.map(lambda p: p * (1 + 0.1 * t) + 0.5j * jnp.sin(t), params)
        grads["x"] = grads["x"].real
        u, s = ours_update(grads, s, params)
        v, r = theirs_update(grads, r, params)
        assert_trees_equal(u, v)
    assert_trees_equal(jax.tree.leaves(s.inner_state), jax.tree.leaves(r.inner_state))


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.sam(jz.sgd(0.1), jz.sgd(0.1), sync_period=0), r"^sam: sync_period must be an integer >= 1, got 0"),
        (lambda: jz.sam(jz.sgd(0.1), jz.sgd(0.1), reset_state=1), r"^sam: reset_state must be True or False"),
        (lambda: jz.sam(jz.sgd(0.1), jz.sgd(0.1), batch_axis_name=3), r"^sam: batch_axis_name must be None"),
        (lambda: jz.normalize(axis_name=3), r"^normalize: axis_name must be None"),
        (lambda: jz.reduce_on_plateau(factor=1.0), r"^reduce_on_plateau: factor must be in \(0, 1\), got 1.0"),
        (lambda: jz.reduce_on_plateau(patience=0), r"^reduce_on_plateau: patience must be an integer >= 1, got 0"),
        (lambda: jz.reduce_on_plateau(rtol=0.0, atol=0.0), r"^reduce_on_plateau: rtol and atol must not both be 0"),
        (lambda: jz.reduce_on_plateau(rtol=1.5), r"^reduce_on_plateau: rtol must be in \[0, 1\], got 1.5"),
        (lambda: jz.reduce_on_plateau(cooldown=1.5), r"^reduce_on_plateau: cooldown must be an integer >= 0"),
        (lambda: jz.differentially_private_aggregate(-1.0, 1.0, 0), r"^differentially_private_aggregate: l2_norm_clip"),
        # An infinite C made the noise's scale C * sigma infinite (NaN with sigma = 0); a string multiplied a str.
        (lambda: jz.differentially_private_aggregate(float("inf"), 0.0, 0),
         r"^differentially_private_aggregate: l2_norm_clip must be a finite real number >= 0, got inf"),
        (lambda: jz.dpsgd(0.1, float("inf"), 1.0, 0), r"^dpsgd: l2_norm_clip must be a finite real number >= 0, got inf"),
        (lambda: jz.dpsgd(0.1, "1.0", 1.0, 0), r"^dpsgd: l2_norm_clip must be a finite real number >= 0, got '1.0'"),
        (lambda: jz.transforms.clipping.per_example_global_norm_clip([jnp.ones((2, 3))], "1.0"),
         r"^per_example_global_norm_clip: l2_norm_clip must be a real number >= 0 \(inf for no clipping\), got '1.0'"),
        (lambda: jz.differentially_private_aggregate(1.0, 1.0, "k"), r"^differentially_private_aggregate: key must be"),
        (lambda: jz.dpsgd(0.1, 1.0, -1.0, 0), r"^dpsgd: noise_multiplier must be >= 0, got -1.0"),
        (lambda: jz.dpsgd(0.1, 1.0, 1.0, 0.5), r"^dpsgd: seed must be an integer seed"),
        # JAX keeps a seed's low 32 bits (without x64): these drew what seed 0, and seed 2**32 - 1, draw.
        (lambda: jz.dpsgd(0.1, 1.0, 1.0, 2**32), r"^dpsgd: seed must be an integer seed in \[0, 2\*\*32 - 1\], got "
         r"4294967296: .*low 32 bits, which would draw what seed 0 draws"),
        (lambda: jz.differentially_private_aggregate(1.0, 1.0, key=-1),
         r"^differentially_private_aggregate: key must be an integer seed in .*got -1: .*what seed 4294967295 draws"),
        (lambda: jz.dpsgd(0.1, 1.0, 1.0, 0, momentum=1.0), r"^dpsgd: momentum must be in \[0, 1\), got 1.0"),
        (lambda: jz.dpsgd(0.1, 1.0, 1.0, 0, nesterov=True), r"^dpsgd: nesterov=True needs a momentum"),
    ],
)
def test_bad_arguments_name_the_function_and_the_argument(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_sam_opaque_mode_needs_grad_fn_and_a_foreign_state_is_refused():
    params = make_params()
    tx = jz.sam(jz.sgd(0.1), _adv(True), opaque_mode=True)
    with pytest.raises(ValueError, match="^sam: opaque_mode=True needs update"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="expected SAMState"):
        tx.update(params, jz.sgd(0.1).init(params), params)


def test_sam_grad_fn_without_opaque_mode_and_dp_without_a_batch_axis_say_what_to_do():
    params = {"w": jnp.ones(2)}
    tx = jz.sam(jz.sgd(0.1), jz.sgd(0.1))
    with pytest.raises(ValueError, match="sam: grad_fn is used only with opaque_mode=True"):
        tx.update(params, tx.init(params), params, grad_fn=lambda p, j: p)
    dp = jz.differentially_private_aggregate(1.0, 0.0, key=0)
    with pytest.raises(ValueError, match="differentially_private_aggregate: updates must be per-example gradients"):
        dp.update({"w": jnp.asarray(1.0)}, dp.init(None))


def test_sam_keeps_an_infinite_outer_state_where_optax_blends_it_to_nan():
    """The blend c a + (1 - c) b made reduce_on_plateau's initial best value +inf NaN (0 * inf), so it never recorded
    one; the outer state now equals the outer optimizer's run alone on the gradients at the adversarial points."""
    loss = lambda p: jnp.sum((p - 3.0) ** 2)
    outer = jz.chain(jz.sgd(0.1), jz.reduce_on_plateau(patience=2))
    tx = jz.sam(outer, jz.sgd(0.05))
    params = theta = jnp.array([1.0, 2.0])
    state, alone = tx.init(params), outer.init(theta)
    for _ in range(4):  # four periods of an ascent step and an outer step
        for _ in range(2):
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = tx.update(grads, state, params, value=value)
            params = jz.apply_updates(params, updates)
        value, grads = jax.value_and_grad(loss)(theta + 0.05 * jax.grad(loss)(theta))
        updates, alone = outer.update(grads, alone, theta, value=value)
        theta = jz.apply_updates(theta, updates)
    assert np.isfinite(float(state.opt_state[1].best_value))
    assert_trees_close(state.opt_state, alone, rtol=1e-6)
    np.testing.assert_allclose(params, theta, rtol=1e-6)


@pytest.mark.parametrize("opaque_mode", [False, True])
def test_sam_refuses_updates_shaped_otherwise_than_the_params_or_its_state(opaque_mode):
    """A state built for other shapes broadcast into a cache of the new shape; an extra gradient key gave JAX's raw
    pytree structure error."""
    tx = jz.sam(jz.sgd(0.1), jz.sgd(0.1), opaque_mode=opaque_mode)
    extra = dict(grad_fn=lambda p, j: p) if opaque_mode else {}
    small, large = {"w": jnp.zeros((1, 3))}, {"w": jnp.ones((4, 3))}
    if not opaque_mode:  # the opaque mode keeps no per-parameter state
        with pytest.raises(ValueError, match=r"^sam: the updates tree does not match the params of the last outer step "
                                             r"\(state.cache\): shapes differ at \['w'\] \(4, 3\) vs \(1, 3\)"):
            tx.update(large, tx.init(small), large, **extra)
    with pytest.raises(ValueError, match=r"^sam: the updates tree does not match the params: paths only in updates: "
                                         r"\['b'\]"):
        tx.update({**small, "b": jnp.ones(2)}, tx.init(small), small, **extra)


def test_reduce_on_plateau_refuses_a_value_that_is_not_a_scalar():
    """An unreduced loss failed inside lax.cond with a message about its branches."""
    tx, params = jz.reduce_on_plateau(), jnp.ones(3)
    for value, shape in ((jnp.array([1.0, 2.0, 3.0]), r"\(3,\)"), (np.array([1.0]), r"\(1,\)")):
        with pytest.raises(ValueError, match=rf"^reduce_on_plateau: value must be a scalar loss .*shape {shape}"):
            tx.update(params, tx.init(params), params, value=value)
