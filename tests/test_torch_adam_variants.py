"""jz.torch.adamax, nadam and radam (and their transformations) against float64 references and Optax.

tests/reference.py's torch_adamax, torch_nadam and torch_radam follow torch.optim's documented
pseudocode; they were checked against torch 2.13's Adamax, NAdam and RAdam (float64, 25 steps,
the option grid, three shapes: relative difference < 3e-13) when written. torch is not a test
dependency. The parity grid runs eagerly (small trees: cheaper than compiling each option
combination); jit is tested separately.
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo.transforms.adam_variants import _sma_length
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_ours,
    run_reference,
    run_together,
)

NAMES = ["adamax", "nadam", "radam"]
Q8 = jz.Blockwise8Bit()


def schedule(count):
    return 0.02 * 0.9**count


def _check(ours, ref):
    with jax.enable_x64(True):
        params = make_params(jnp.float64)
        iterates, _ = run_ours(ours, params, jit=False)
        assert_trees_close(iterates, run_reference(ref, params), rtol=1e-10, atol=1e-12)


# Every boolean both ways, weight decay on and off, maximize, a schedule, and a non-default value of
# every numeric option (betas, eps, momentum_decay), folded into few runs: each is a compilation.
GRID = {
    "adamax": [dict(lr=schedule, weight_decay=0.1, maximize=True, betas=(0.8, 0.99), eps=0.1)],
    "nadam": [
        dict(lr=0.02, weight_decay=0.1, momentum_decay=0.05),
        dict(lr=schedule, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, betas=(0.8, 0.99), eps=0.1),
    ],
    "radam": [
        # Rectified from step 6 on (rho_6 = 6.4 > 5 with b2 = 0.9).
        dict(lr=schedule, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, betas=(0.8, 0.9), eps=0.1),
        dict(lr=0.02, weight_decay=0.1, betas=(0.5, 0.6)),  # rho_inf = 4 < 5: never rectified
    ],
}
CELLS = [(name, options) for name, cells in GRID.items() for options in cells]


@pytest.mark.parametrize("name, options", CELLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CELLS)])
def test_trajectory_follows_the_torch_reference(name, options):
    _check(getattr(jz.torch, name)(**options), getattr(reference, f"torch_{name}")(**options))


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_torchs(name):
    # Defaults: no weight decay (the step is left out of the chain), no maximize, coupled decay;
    # RAdam rectified from step 6 on.
    _check(getattr(jz.torch, name)(), getattr(reference, f"torch_{name}")())


def test_float32_radam_near_b2_one_follows_the_reference():
    # The direct formula for rho_t (Optax's) gives rho_6 = 5.04 instead of 6.00 here in float32: r_6 30% too small.
    params = make_params()
    iterates, _ = run_ours(jz.torch.radam(lr=0.02, betas=(0.9, 0.9999)), params)
    expected = run_reference(reference.torch_radam(0.02, (0.9, 0.9999)), params)
    assert_trees_close(iterates, expected, rtol=1e-4, atol=1e-6)


def test_sma_length_keeps_float32_precision():
    steps = [*range(1, 40), 100, 1000]
    sma_length = jax.jit(_sma_length)
    for b2 in [0.5, 0.9, 0.99, 0.999, 0.9999, 0.999999]:
        q = Fraction(float(np.float32(b2)))  # the float32 b2 the update sees
        exact = [float((1 + q) / (1 - q) - 2 * t * q**t / (1 - q**t)) for t in steps]
        ours = sma_length(jnp.float32(b2), jnp.asarray(steps, jnp.float32))
        np.testing.assert_allclose(np.asarray(ours), exact, rtol=3e-6, err_msg=f"b2={b2}")


# --- Optax twins --------------------------------------------------------------------------------


def test_adamax_is_optax_adamax_bit_for_bit():
    params = make_params()
    (ours, _), (theirs, _) = run_together([
        jz.torch.adamax(lr=0.02, betas=(0.8, 0.99), eps=1e-3),
        optax.adamax(0.02, 0.8, 0.99, 1e-3),
    ], params)
    assert_trees_equal(ours, theirs)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (
            lambda: jz.chain(
                jz.scale_by_radam(0.8, 0.99, 0.1, 1e-6, 4.0, nesterov=True), jz.scale_by_learning_rate(0.02)
            ),
            lambda: optax.radam(0.02, 0.8, 0.99, 0.1, 1e-6, 4.0, nesterov=True),
        ),
        # Dozat's schedule reaches Optax's constant mu_t = b1 once 0.96^(t psi) underflows.
        (lambda: jz.torch.nadam(lr=0.02, momentum_decay=1e5), lambda: optax.nadam(0.02)),
    ],
    ids=["scale_by_radam", "torch.nadam-psi-1e5"],
)
def test_where_the_rules_coincide_optax_is_followed_in_float64(ours, theirs):
    with jax.enable_x64(True):
        params = make_params(jnp.float64)
        assert_trees_close(run_ours(ours(), params)[0], run_ours(theirs(), params)[0], rtol=1e-10)


# --- storage, None leaves, jit, vmap, inject_hyperparams -----------------------------------------
# Each compilation costs about half a second, so the three optimizers share one program (a partition
# with one optimizer per name) and one set of shapes.


def _by_name(build):
    labels = lambda params: {name: jax.tree.map(lambda _: name, params[name]) for name in NAMES}
    return jz.partition({name: build(name) for name in NAMES}, labels)


def _gradients(params, t):
    # conftest's gradient field; a leaf named "frozen" gets None (no update).
    grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
    return {name: {k: None if k == "frozen" else g for k, g in grads[name].items()} if isinstance(grads[name], dict)
            else grads[name] for name in grads}


def _steps(step, params, state, first, last):
    for t in range(first, last + 1):
        updates, state = step(params, state, _gradients(params, t))
        params = jz.apply_updates(params, updates)
    return params, state, updates


def _with_frozen_moments_of_w(state):
    # The state with each "frozen" leaf's moments replaced by those of "w" (same shape): a history to keep.
    w, frozen = jax.tree_util.DictKey("w"), jax.tree_util.DictKey("frozen")
    leaves = dict(jax.tree_util.tree_flatten_with_path(state)[0])
    swap = lambda path, x: leaves[tuple(w if k == frozen else k for k in path)] if frozen in path else x
    return jax.tree_util.tree_map_with_path(swap, state)


def _leaves_at(tree, key):
    return [x for path, x in jax.tree_util.tree_flatten_with_path(tree)[0] if jax.tree_util.DictKey(key) in path]


@pytest.mark.parametrize(
    "mu_dtype, nu_dtype, rtol", [(jnp.bfloat16, jz.StochasticBF16(), 0.02), (Q8, Q8, 0.05)], ids=["bf16-sr", "8bit"]
)
def test_storage_options_and_none_gradients(mu_dtype, nu_dtype, rtol):
    options = dict(lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(0)
    big = lambda: jnp.asarray(rng.normal(size=(64, 256)), jnp.float32)  # stored in 8 bits; "b" stays float32
    small = lambda: jnp.asarray(rng.normal(size=(8,)), jnp.float32)
    params = {name: {"w": big(), "b": small(), "frozen": big()} for name in NAMES}
    tx = _by_name(lambda name: getattr(jz.torch, name)(**options, mu_dtype=mu_dtype, nu_dtype=nu_dtype))
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    # (jit's init: eagerly, the 8-bit encoding would compile op by op.)
    final, state, _ = _steps(step, params, jax.jit(tx.init)(params), 1, 7)  # RAdam is rectified from step 6 on

    for name in NAMES:
        start = {k: params[name][k] for k in ("w", "b")}
        expected = run_reference(getattr(reference, f"torch_{name}")(**options), start, 7)[-1]
        for k in ("w", "b"):
            moved, expected_move = final[name][k] - start[k], expected[k] - start[k]
            error = float(jnp.linalg.norm(moved - expected_move) / jnp.linalg.norm(expected_move))
            assert error < (1e-5 if k == "b" and mu_dtype is Q8 else rtol), (name, k, error)
        member = state.inner_states[name]
        scalars = [x for x in jax.tree.leaves(member) if x.ndim == 0]
        assert all(x.dtype in (jnp.int32, jnp.float32) for x in scalars)  # counts, NAdam's mu_product
        if mu_dtype is Q8:
            codes = sorted(str(x.dtype) for x in jax.tree.leaves(member) if jz.quantization.is_encoded(x))
            assert codes == ["int8", "int8", "uint8", "uint8"], (name, codes)  # mu signed, nu non-negative
            assert all(x.dtype == jnp.float32 for x in _leaves_at(member, "b"))
        else:
            moments = [x for x in jax.tree.leaves(member) if x.ndim > 0]
            assert len(moments) == 6 and all(x.dtype == jnp.bfloat16 for x in moments), name
    if mu_dtype is Q8:
        full = _by_name(lambda name: getattr(jz.torch, name)()).init(params)
        assert jz.storage.state_bytes(state) < 0.3 * jz.storage.state_bytes(full)

    # A None gradient keeps its param and every state leaf bit for bit, here after giving it a history.
    seeded = _with_frozen_moments_of_w(state)
    assert len(_leaves_at(seeded, "frozen")) == 6 and not np.array_equal(_leaves_at(seeded, "frozen")[0], 0)
    last, new_state, updates = _steps(step, final, seeded, 8, 8)
    assert_trees_equal(_leaves_at(new_state, "frozen"), _leaves_at(seeded, "frozen"))
    for name in NAMES:
        assert updates[name]["frozen"] is None
        assert_trees_equal(last[name]["frozen"], final[name]["frozen"])
        assert not np.array_equal(last[name]["w"], final[name]["w"])


def _small_params(seed=0):
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=(2, 3)), jnp.float32) for name in NAMES}


# eps = 0 everywhere: test_eps_zero_and_zero_gradients_give_no_nan reuses the compiled step.
SMALL = dict(
    adamax=dict(lr=0.02, betas=(0.8, 0.99), eps=0.0, weight_decay=0.1),
    nadam=dict(lr=0.02, eps=0.0, weight_decay=0.1, momentum_decay=0.05, decoupled_weight_decay=True),
    radam=dict(lr=0.02, eps=0.0, weight_decay=0.1, maximize=True),
)
SMALL_TX = _by_name(lambda name: getattr(jz.torch, name)(**SMALL[name]))
DONATED_STEP = jax.jit(lambda p, s, g: SMALL_TX.update(g, s, p), donate_argnums=(1,))


def test_jitted_donated_steps_match_eager_steps():
    params = _small_params()
    eager_params, eager_state, _ = _steps(lambda p, s, g: SMALL_TX.update(g, s, p), params, SMALL_TX.init(params), 1, 8)
    jit_params, jit_state, _ = _steps(DONATED_STEP, params, SMALL_TX.init(params), 1, 8)
    assert_trees_close(jit_params, eager_params, rtol=1e-5, atol=1e-6)
    assert_trees_close(jit_state, eager_state, rtol=1e-5, atol=1e-6)


def test_vmapped_injected_options_match_separate_plain_runs():
    # inject_hyperparams turns every numeric option into an array in the state; vmap runs three trees at once.
    injected = _by_name(lambda name: jz.inject_hyperparams(getattr(jz.torch, name))(**SMALL[name]))
    trees = [_small_params(seed) for seed in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    update = jax.jit(jax.vmap(lambda p, s, g: injected.update(g, s, p)))
    together, state = stacked, jax.vmap(injected.init)(stacked)
    for t in range(1, 9):
        updates, state = update(together, state, jax.vmap(lambda p: _gradients(p, t))(together))
        together = jz.apply_updates(together, updates)
    for i, params in enumerate(trees):
        separate, _, _ = _steps(DONATED_STEP, params, SMALL_TX.init(params), 1, 8)
        assert_trees_close(jax.tree.map(lambda x: x[i], together), separate, rtol=1e-5, atol=1e-6)


def test_eps_zero_and_zero_gradients_give_no_nan():
    # Where a param and all its gradients so far are 0 the denominator is 0: the step is 0, not 0/0.
    params = {name: p.at[0].set(0.0) for name, p in _small_params().items()}
    grads = {name: p.at[0].set(0.0) for name, p in _small_params(1).items()}
    state = SMALL_TX.init(params)
    for _ in range(7):  # RAdam's rectified steps start at 6
        updates, state = DONATED_STEP(params, state, grads)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(updates)), updates
    for name in NAMES:
        assert np.array_equal(updates[name][0], np.zeros(3)), (name, updates[name])
        assert bool(jnp.all(updates[name][1] != 0)), (name, updates[name])


def test_complex_adamax_takes_real_and_imaginary_parts_apart():
    from tests.test_torch import _complex_check

    _complex_check(jz.torch.adamax(lr=0.02, weight_decay=0.1), reference.torch_adamax(0.02, weight_decay=0.1))


def test_nadam_keeps_the_running_product_of_mu_in_its_state():
    tx = jz.scale_by_scheduled_nadam(b1=0.9, momentum_decay=0.05)
    g = jnp.ones(2)
    state, update = tx.init(g), jax.jit(tx.update)
    assert state.mu_product.shape == () and state.mu_product.dtype == jnp.float32 and float(state.mu_product) == 1
    expected = 1.0
    for t in range(1, 4):
        _, state = update(g, state)
        expected *= 0.9 * (1 - 0.5 * 0.96 ** (t * 0.05))
    np.testing.assert_allclose(float(state.mu_product), expected, rtol=1e-6)
    with jax.enable_x64(True):
        assert tx.init(g).mu_product.dtype == jnp.float64


# --- construction-time checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.torch.adamax(lr=-0.1), r"torch\.adamax: lr must be >= 0, got -0\.1"),
        (lambda: jz.torch.adamax(betas=(0.9, 1.0)), r"torch\.adamax: betas\[1\] must be in \[0, 1\), got 1\.0"),
        (lambda: jz.torch.adamax(eps=-1e-8), r"torch\.adamax: eps must be >= 0"),
        (lambda: jz.torch.adamax(weight_decay=-0.1), r"torch\.adamax: weight_decay must be >= 0"),
        (lambda: jz.torch.adamax(maximize=1), r"torch\.adamax: maximize must be True or False"),
        (lambda: jz.torch.nadam(momentum_decay=-4e-3), r"torch\.nadam: momentum_decay must be >= 0, got -0\.004"),
        (lambda: jz.torch.nadam(betas=(-0.1, 0.999)), r"torch\.nadam: betas\[0\] must be in \[0, 1\)"),
        (lambda: jz.torch.nadam(decoupled_weight_decay=1), r"torch\.nadam: decoupled_weight_decay must be True"),
        (lambda: jz.torch.nadam(weight_decay=-0.1, decoupled_weight_decay=True), r"torch\.nadam: weight_decay must"),
        (lambda: jz.torch.radam(betas=(0.9,)), r"torch\.radam: betas must be a pair"),
        (lambda: jz.torch.radam(eps=-1.0), r"torch\.radam: eps must be >= 0"),
        (lambda: jz.torch.radam(eps=1e-45), r"torch\.radam: eps=1e-45 is below float32's smallest normal"),
        (lambda: jz.torch.radam(weight_decay=-1.0), r"torch\.radam: weight_decay must be >= 0"),
        (lambda: jz.torch.radam(decoupled_weight_decay="no"), r"torch\.radam: decoupled_weight_decay must be True"),
        (lambda: jz.scale_by_adamax(b2=1.0), r"scale_by_adamax: b2 must be in \[0, 1\)"),
        (lambda: jz.scale_by_scheduled_nadam(momentum_decay=-1.0), r"scale_by_scheduled_nadam: momentum_decay must"),
        (lambda: jz.scale_by_radam(threshold="five"), r"scale_by_radam: threshold must be a finite real number"),
        (lambda: jz.scale_by_radam(eps_before_correction=1), r"scale_by_radam: eps_before_correction must be True"),
    ],
)
def test_invalid_options_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize("arg", ["mu_dtype", "nu_dtype"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_storage_option_names_the_argument(name, arg):
    with pytest.raises(ValueError, match=rf"^torch\.{name}: {arg}"):
        getattr(jz.torch, name)(**{arg: jnp.int8})


def test_kernel_options_are_accepted():
    jz.torch.adamax(foreach=True, differentiable=True, capturable=True)
    jz.torch.nadam(foreach=False, capturable=True, differentiable=True)
    jz.torch.radam(foreach=None, capturable=True, differentiable=True)


def test_a_state_of_another_rule_is_refused():
    g = jnp.ones(3)
    with pytest.raises(jz.base.StateMismatchError, match="scale_by_adamax: the state does not match"):
        jz.scale_by_adamax().update(g, jz.scale_by_scheduled_nadam().init(g))
    with pytest.raises(jz.base.StateMismatchError, match="scale_by_scheduled_nadam: the state does not match"):
        jz.scale_by_scheduled_nadam().update(g, jz.scale_by_radam().init(g))
