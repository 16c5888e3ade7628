"""Adam's relatives: scale_by_yogi, scale_by_belief, scale_by_adan and the aliases yogi, adabelief, adan,
adamax, adamaxw and radam.

Oracles: Optax 0.2.8 (bit for bit in float32 where the program is the same, float64 otherwise) and the
float64 NumPy references in tests/reference.py, written from the papers.
"""

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
    assert_trees_close,
    assert_trees_equal,
    assert_vmap_matches_separate_runs,
    grad_fn,
    make_params,
    run_ours,
    run_reference,
    run_together,
)
from tests.test_optimizers import assert_updates_close, check_eight_bit_state, eight_bit_params, summed_updates

MASK = {"dense": {"w": True, "b": False}, "scale": True}
Q8 = jz.Blockwise8Bit()


def _lr(t):
    return 0.02 / (1 + 0.1 * t)


# name: (ours, Optax's): bit for bit in float32, jitted. Every numeric option set off its default in one case
# and left at its default in another; booleans both ways; weight decay with a mask.
BIT_FOR_BIT = {
    "scale_by_yogi": (
        lambda: jz.scale_by_yogi(0.8, 0.99, 1e-2, 1e-6, 0.5), lambda: optax.scale_by_yogi(0.8, 0.99, 1e-2, 1e-6, 0.5)
    ),
    "yogi": (lambda: jz.yogi(0.02), lambda: optax.yogi(0.02)),
    "scale_by_belief_nesterov": (
        lambda: jz.scale_by_belief(0.8, 0.99, 1e-8, 1e-10, nesterov=True),
        lambda: optax.scale_by_belief(0.8, 0.99, 1e-8, 1e-10, nesterov=True),
    ),
    "adabelief": (lambda: jz.adabelief(0.02), lambda: optax.adabelief(0.02)),
    "adamax": (lambda: jz.adamax(0.02), lambda: optax.adamax(0.02)),
    "adamaxw_options": (
        lambda: jz.adamaxw(_lr, 0.8, 0.99, 1e-3, 0.1, MASK),
        lambda: optax.adamaxw(_lr, 0.8, 0.99, 1e-3, 0.1, MASK),
    ),
}


@pytest.mark.parametrize("name", list(BIT_FOR_BIT))
def test_matches_optax_bit_for_bit(name):
    ours, theirs = BIT_FOR_BIT[name]
    params = make_params()
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert not np.allclose(our_iterates[-1]["dense"]["w"], params["dense"]["w"])  # the params really moved


# RAdam: jz.scale_by_radam forms rho_t without Optax's float32 cancellation, so the two agree in float64 only.
RADAM = {
    "radam": (lambda: jz.radam(0.02), lambda: optax.radam(0.02)),
    "radam_options": (
        lambda: jz.radam(_lr, 0.8, 0.99, 0.1, 1e-6, 4.0, nesterov=True),
        lambda: optax.radam(_lr, 0.8, 0.99, 0.1, 1e-6, 4.0, nesterov=True),
    ),
}


@pytest.mark.parametrize("name", list(RADAM))
def test_radam_matches_optax_in_float64(name, x64):
    ours, theirs = RADAM[name]
    params = make_params(jnp.float64)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params)
    assert_trees_close(our_iterates, their_iterates, rtol=1e-9, atol=1e-12)
    assert_trees_close(jax.tree.leaves(our_state), jax.tree.leaves(their_state), rtol=1e-9, atol=1e-12)


# name: (ours, float64 reference from the paper)
REFERENCES = {
    "yogi": (lambda: jz.yogi(_lr, 0.8, 0.99, 1e-5), lambda: reference.yogi(_lr, 0.8, 0.99, 1e-5)),
    "scale_by_yogi": (
        lambda: jz.chain(jz.scale_by_yogi(0.85, 0.995, 1e-4, 1e-7, 0.3), jz.scale_by_learning_rate(0.03)),
        lambda: reference.yogi(0.03, 0.85, 0.995, 1e-4, 1e-7, 0.3),
    ),
    "adabelief": (lambda: jz.adabelief(0.02), lambda: reference.adabelief(0.02)),
    "adabelief_nesterov": (
        lambda: jz.adabelief(_lr, 0.8, 0.99, 1e-8, 1e-10, nesterov=True),
        lambda: reference.adabelief(_lr, 0.8, 0.99, 1e-8, 1e-10, nesterov=True),
    ),
    "adamaxw": (lambda: jz.adamaxw(0.02, weight_decay=0.1), lambda: reference.adamax(0.02, weight_decay=0.1)),
    "radam": (lambda: jz.radam(0.02), lambda: reference.radam(0.02)),
    "radam_options": (
        lambda: jz.radam(_lr, 0.8, 0.99, 0.1, 1e-6, 4.0, nesterov=True),
        lambda: reference.radam(_lr, 0.8, 0.99, 0.1, 1e-6, 4.0, nesterov=True),
    ),
    "adan": (lambda: jz.adan(0.02), lambda: reference.adan(0.02)),
    "adan_options": (
        lambda: jz.chain(
            jz.scale_by_adan(0.9, 0.8, 0.95, 1e-6, 1e-10), jz.add_decayed_weights(0.1), jz.scale_by_learning_rate(_lr)
        ),
        lambda: reference.adan(_lr, 0.9, 0.8, 0.95, 1e-6, 1e-10, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_matches_float64_reference(name, x64):
    ours, ref = REFERENCES[name]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params, jit=False)
    assert_trees_close(iterates, run_reference(ref(), params), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128])
def test_adan_weights_the_difference_by_b2_as_the_authors_code_and_optax_only_on_the_first_step(dtype, x64):
    """The authors' code (sail-sg/Adan) adds beta2 * diff (0.92); Optax 0.2.8 adds (1 - b2) * diff (0.08), which
    this library copied. The reference is the official rule; Optax's agrees on the first step (d = 0) only."""
    params = {"z": jnp.asarray([1.0, -0.5, 3.0], dtype) * (1 + 0.5j if dtype == jnp.complex128 else 1)}
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(size=3) + (1j * rng.normal(size=3) if dtype == jnp.complex128 else 0)  # noqa: E731
    grads = [{"z": jnp.asarray(noise(), dtype)} for _ in range(4)]
    ours, theirs, ref = jz.scale_by_adan(), optax.scale_by_adan(), reference.adan(-1.0, eps_root=0.0)
    s1, s2, s3 = ours.init(params), theirs.init(params), ref.init(np.asarray(params["z"]))
    for t, g in enumerate(grads, start=1):
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = theirs.update(g, s2, params)
        u3, s3 = ref.update(np.asarray(g["z"]), s3, np.asarray(params["z"]), t)
        np.testing.assert_allclose(u1["z"], u3, rtol=1e-12)
        if t == 1:
            np.testing.assert_array_equal(u1["z"], u2["z"])
        else:
            assert np.max(np.abs(np.asarray(u1["z"] - u2["z"]))) > 1e-2


def test_complex_gradients_match_optax_bit_for_bit():
    params = {"z": jnp.asarray([1 + 2j, -0.5 + 0.25j, 3 - 1j], jnp.complex64)}
    grads = [{"z": jnp.asarray([0.3 - 1j, 2 + 0.5j, -1 + 1j], jnp.complex64) * (k + 1)} for k in range(3)]
    # |g|^2 in Yogi's second moment (Adan's |g + b2 d|^2 is in test_adan_weights_the_difference_by_b2).
    pairs = [(jz.scale_by_yogi, optax.scale_by_yogi)]
    for ours, theirs in [(ours(), theirs()) for ours, theirs in pairs]:
        s1, s2 = ours.init(params), theirs.init(params)
        our_update, their_update = jax.jit(ours.update), jax.jit(theirs.update)
        for g in grads:
            u1, s1 = our_update(g, s1, params)
            u2, s2 = their_update(g, s2, params)
            assert_trees_equal(u1, u2)
        assert_trees_equal(jax.tree.leaves(s1), jax.tree.leaves(s2))


# Storage: every moment through every alias.

EIGHT_BIT = {
    "yogi": (lambda: jz.yogi(1e-2, mu_dtype=Q8, nu_dtype=Q8), lambda: jz.yogi(1e-2)),
    "adabelief": (
        lambda: jz.adabelief(1e-2, nesterov=True, mu_dtype=Q8, nu_dtype=Q8), lambda: jz.adabelief(1e-2, nesterov=True)
    ),
    "adan": (
        lambda: jz.adan(1e-2, weight_decay=0.1, m_dtype=Q8, v_dtype=Q8, n_dtype=Q8, g_dtype=Q8),
        lambda: jz.adan(1e-2, weight_decay=0.1),
    ),
}
SIGNED_AND_NON_NEGATIVE = {"yogi": (1, 1), "adabelief": (1, 1), "adan": (3, 1)}  # 8-bit moments per quantized leaf


@pytest.mark.parametrize("name", list(EIGHT_BIT))
def test_eight_bit_state_through_the_alias(name):
    eight_bit, default = EIGHT_BIT[name]
    params = eight_bit_params()
    tx = eight_bit()
    check_eight_bit_state(tx.init(params), SIGNED_AND_NON_NEGATIVE[name])
    ours, state = summed_updates(tx, params)
    check_eight_bit_state(state, SIGNED_AND_NON_NEGATIVE[name])
    expected, full_state = summed_updates(default(), params)
    assert_updates_close(ours, expected, rtol=0.05)
    np.testing.assert_allclose(ours["b"], expected["b"], rtol=1e-6)  # "b" keeps full-precision state
    assert jz.storage.state_bytes(state) < 0.3 * jz.storage.state_bytes(full_state)


@pytest.mark.parametrize(
    "factory",
    [
        lambda **kw: jz.adamax(1e-2, **kw),
        lambda **kw: jz.adamaxw(1e-2, weight_decay=0.1, **kw),
        lambda **kw: jz.radam(1e-2, nesterov=True, **kw),
    ],
    ids=["adamax", "adamaxw", "radam"],
)
def test_storage_options_reach_the_existing_transforms(factory):
    # scale_by_adamax and scale_by_radam's storage is tested with them; here only that the alias passes it on.
    check_eight_bit_state(factory(mu_dtype=Q8, nu_dtype=Q8).init(eight_bit_params()), (1, 1))
    state = factory(mu_dtype=jnp.bfloat16, nu_dtype=jz.StochasticBF16()).init(make_params())
    assert {x.dtype for x in jax.tree.leaves((state[0].mu, state[0].nu))} == {jnp.dtype(jnp.bfloat16)}


SR = jz.StochasticBF16()


@pytest.mark.parametrize(
    "name, storage",
    [
        ("yogi", dict(mu_dtype=jnp.bfloat16, nu_dtype=SR)),
        ("adabelief", dict(mu_dtype=SR, nu_dtype=jnp.bfloat16)),
        ("adan", dict(m_dtype=SR, v_dtype=jnp.bfloat16, n_dtype=SR, g_dtype=jnp.bfloat16)),
    ],
    ids=["yogi", "adabelief", "adan"],
)
def test_bfloat16_moments(name, storage):
    factory = getattr(jz, name)
    params = make_params()
    ours, state = summed_updates(factory(1e-2, **storage), params)
    moments = jax.tree.leaves([getattr(state[0], field.removesuffix("_dtype")) for field in storage])
    assert len(moments) == 3 * len(storage) and all(x.dtype == jnp.bfloat16 for x in moments)
    assert state[0].count.dtype == jnp.int32  # the stochastic rounding's step
    expected, _ = summed_updates(factory(1e-2), params)
    assert_updates_close(ours, expected, rtol=0.05)


@pytest.mark.parametrize("name", list(EIGHT_BIT))
def test_none_update_keeps_param_and_state_bit_for_bit(name):
    tx = EIGHT_BIT[name][0]()  # 8-bit moments on "w": the stored codes must be kept, not re-encoded
    params = eight_bit_params()
    update = jax.jit(tx.update)
    _, before = update(jax.tree.map(lambda p: grad_fn(p, 1, jnp), params), tx.init(params), params)
    updates, state = update({"w": None, "b": grad_fn(params["b"], 2, jnp)}, before, params)
    assert updates["w"] is None
    new_params = jz.apply_updates(params, updates)
    assert_trees_equal(new_params["w"], params["w"])
    assert not np.allclose(new_params["b"], params["b"])
    old = dict(jax.tree_util.tree_flatten_with_path(before)[0])
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    at_w = [(path, leaf) for path, leaf in leaves if getattr(path[-1], "key", None) == "w"]
    assert len(at_w) == sum(SIGNED_AND_NON_NEGATIVE[name]) and all(is_encoded(leaf) for _, leaf in at_w)
    for path, leaf in at_w:
        assert_trees_equal(leaf, old[path])


@pytest.mark.parametrize("name", ["yogi", "adabelief", "adan"])
def test_jitted_donated_step_matches_eager(name):
    tx = getattr(jz, name)(1e-2)
    params = make_params()
    eager_state = tx.init(params)
    jit_state = tx.init(params)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    for t in range(1, 3):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        eager, eager_state = tx.update(grads, eager_state, params)
        jitted, jit_state = step(params, jit_state, grads)
        assert_trees_close(jitted, eager, rtol=1e-5, atol=1e-7)
    assert_trees_close(jax.tree.leaves(jit_state), jax.tree.leaves(eager_state), rtol=1e-5, atol=1e-7)


def test_vmap_over_parameter_sets_equals_separate_runs():
    tx = jz.chain(
        jz.scale_by_yogi(initial_accumulator_value=0.1),
        jz.scale_by_belief(nesterov=True),
        jz.scale_by_adan(),
        jz.scale(-1e-2),
    )
    assert_vmap_matches_separate_runs(tx, steps=2, rtol=1e-5, atol=1e-6)


INJECTED = {
    "yogi": (jz.yogi, dict(learning_rate=0.02, b1=0.8, b2=0.99, eps=1e-3)),
    "adabelief": (jz.adabelief, dict(learning_rate=0.02, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10)),
    "adan": (jz.adan, dict(learning_rate=0.02, b1=0.9, b2=0.8, b3=0.95, eps=1e-6, eps_root=1e-10, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_injected_hyperparams_follow_the_plain_optimizer(name, x64):
    factory, kwargs = INJECTED[name]
    params = make_params(jnp.float64)
    injected, state = run_ours(jz.inject_hyperparams(factory)(**kwargs), params, steps=8, jit=False)
    plain, _ = run_ours(factory(**kwargs), params, steps=8, jit=False)
    assert_trees_close(injected, plain, rtol=1e-12, atol=1e-14)
    assert set(kwargs) <= set(state.hyperparams)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.scale_by_yogi(b1=1.0), r"scale_by_yogi: b1 must be in \[0, 1\), got 1\.0"),
        (lambda: jz.scale_by_yogi(b2=-0.1), r"scale_by_yogi: b2 must be in \[0, 1\), got -0\.1"),
        (lambda: jz.scale_by_yogi(eps=-1e-3), r"scale_by_yogi: eps must be >= 0, got -0\.001"),
        (lambda: jz.scale_by_yogi(eps_root=1e-45), r"scale_by_yogi: eps_root=1e-45 is below float32's smallest normal"),
        (
            lambda: jz.scale_by_yogi(initial_accumulator_value=-1.0),
            r"scale_by_yogi: initial_accumulator_value must be >= 0, got -1\.0",
        ),
        (lambda: jz.scale_by_yogi(mu_dtype=jnp.int8), r"scale_by_yogi: mu_dtype"),
        (lambda: jz.scale_by_belief(b2=1.5), r"scale_by_belief: b2 must be in \[0, 1\), got 1\.5"),
        (lambda: jz.scale_by_belief(eps_root=-1.0), r"scale_by_belief: eps_root must be >= 0, got -1\.0"),
        (lambda: jz.scale_by_belief(nesterov=1), r"scale_by_belief: nesterov must be True or False"),
        (lambda: jz.scale_by_belief(nu_dtype="x"), r"scale_by_belief: nu_dtype"),
        (lambda: jz.yogi(-0.1), r"yogi: learning_rate must be >= 0, got -0\.1"),
        (lambda: jz.yogi(0.1, b1=1.0), r"yogi: b1 must be in \[0, 1\), got 1\.0"),
        (lambda: jz.yogi(0.1, eps="big"), r"yogi: eps must be a finite real number, got 'big'"),
        (lambda: jz.yogi(0.1, nu_dtype=jnp.int8), r"yogi: nu_dtype"),
        (lambda: jz.adabelief(0.1, b2=1.0), r"adabelief: b2 must be in \[0, 1\), got 1\.0"),
        (lambda: jz.adabelief(0.1, eps_root=-1e-16), r"adabelief: eps_root must be >= 0"),
        (lambda: jz.adabelief(0.1, nesterov="yes"), r"adabelief: nesterov must be True or False"),
        (lambda: jz.adabelief(0.1, mu_dtype=jnp.int8), r"adabelief: mu_dtype"),
        (lambda: jz.adamax(None, b1=-0.5), r"adamax: b1 must be in \[0, 1\), got -0\.5"),
        (lambda: jz.adamax(0.1, eps=-1.0), r"adamax: eps must be >= 0, got -1\.0"),
        (lambda: jz.adamax(0.1, nu_dtype=jnp.int8), r"adamax: nu_dtype"),
        (lambda: jz.adamaxw(0.1, b2=1.0), r"adamaxw: b2 must be in \[0, 1\), got 1\.0"),
        (lambda: jz.adamaxw(0.1, weight_decay="0.1"), r"adamaxw: weight_decay"),
        (lambda: jz.adamaxw(-1.0), r"adamaxw: learning_rate must be >= 0, got -1\.0"),
        (lambda: jz.radam(0.1, threshold="5"), r"radam: threshold must be a finite real number, got '5'"),
        (lambda: jz.radam(0.1, threshold=3.0), r"^radam: threshold must be >= 4 \(.*NaN\), got 3\.0"),
        (lambda: jz.scale_by_radam(threshold=2), r"^scale_by_radam: threshold must be >= 4"),
        (lambda: jz.radam(0.1, eps_root=-1.0), r"radam: eps_root must be >= 0, got -1\.0"),
        (lambda: jz.radam(0.1, nesterov=0), r"radam: nesterov must be True or False"),
        (lambda: jz.radam(0.1, mu_dtype="x"), r"radam: mu_dtype"),
        (lambda: jz.scale_by_adan(b3=1.0), r"scale_by_adan: b3 must be in \[0, 1\), got 1\.0"),
        (lambda: jz.scale_by_adan(eps_root=-1.0), r"scale_by_adan: eps_root must be >= 0, got -1\.0"),
        (lambda: jz.scale_by_adan(g_dtype=jnp.int8), r"scale_by_adan: g_dtype"),
        (lambda: jz.adan(0.1, b2=-0.1), r"adan: b2 must be in \[0, 1\), got -0\.1"),
        (lambda: jz.adan(0.1, weight_decay=[0.1]), r"adan: weight_decay"),
        (lambda: jz.adan(0.1, n_dtype="x"), r"adan: n_dtype"),
    ],
)
def test_bad_hyperparameters_name_the_owner_argument_and_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_yogi_and_belief_reject_a_foreign_state():
    params = make_params()
    for tx in (jz.scale_by_belief(), jz.scale_by_yogi(), jz.scale_by_adan()):
        with pytest.raises(jz.base.StateMismatchError, match="scale_by_(belief|yogi|adan): the state does not match"):
            tx.update(params, jz.trace(0.9).init(params), params)
