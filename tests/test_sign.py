"""Sign methods (scale_by_sign, scale_by_lion; sign_sgd, signum, lion): Optax bit for bit, float64 references, storage."""

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
from tests.test_optimizers import assert_eight_bit_state_tracks_full_precision, eight_bit_params

MASK = {"dense": {"w": True, "b": False}, "scale": True}
Q8 = jz.Blockwise8Bit()


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


# Every option on and off: jitted float32 trajectories and states against Optax's, bit for bit.
OPTAX_CASES = {
    "sign_sgd_schedule": (lambda: jz.sign_sgd(decaying), lambda: optax.sign_sgd(decaying)),
    "signum": (lambda: jz.signum(0.05), lambda: optax.signum(0.05)),
    "signum_options": (lambda: jz.signum(0.05, 0.5, jnp.bfloat16), lambda: optax.signum(0.05, 0.5, jnp.bfloat16)),
    "lion": (lambda: jz.lion(0.05), lambda: optax.lion(0.05)),
    "lion_options": (
        lambda: jz.lion(0.05, 0.8, 0.95, jnp.bfloat16, 0.3, MASK),
        lambda: optax.lion(0.05, 0.8, 0.95, jnp.bfloat16, 0.3, MASK),
    ),
    "lion_schedule_decay_mask_fn": (
        lambda: jz.lion(decaying, b1=1.0, weight_decay=decaying, mask=lambda p: jax.tree.map(lambda x: x.ndim > 0, p)),
        lambda: optax.lion(decaying, b1=1.0, weight_decay=decaying, mask=lambda p: jax.tree.map(lambda x: x.ndim > 0, p)),
    ),
    "scale_by_lion_smooth": (
        lambda: jz.chain(jz.scale_by_lion(0.7, 0.9, mode="smooth", smooth_beta=3.0), jz.scale(-0.05)),
        lambda: optax.chain(optax.scale_by_lion(0.7, 0.9, mode="smooth", smooth_beta=3.0), optax.scale(-0.05)),
    ),
    "scale_by_lion_refined": (
        lambda: jz.chain(jz.scale_by_lion(mode="refined"), jz.scale(-0.05)),
        lambda: optax.chain(optax.scale_by_lion(mode="refined"), optax.scale(-0.05)),
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


def test_scale_by_sign_matches_optax_on_real_and_complex_leaves():
    grads = {"x": jnp.asarray([0.5, -2.0, 0.0, -0.0]), "z": jnp.asarray([3 - 4j, 0j, -1j], jnp.complex64)}
    ours, theirs = jz.scale_by_sign(), optax.scale_by_sign()
    ours_u, ours_s = jax.jit(ours.update)(grads, ours.init(grads))
    theirs_u, _ = jax.jit(theirs.update)(grads, theirs.init(grads))
    assert_trees_equal(ours_u, theirs_u)
    np.testing.assert_allclose(ours_u["z"], [0.6 - 0.8j, 0, -1j], rtol=1e-6)
    assert ours_s == jz.EmptyState()


def _masked(with_decay, without):
    # The decayed trajectory for w and scale, the undecayed one for b (MASK).
    return [
        {"dense": {"w": a["dense"]["w"], "b": b["dense"]["b"]}, "scale": a["scale"]} for a, b in zip(with_decay, without)
    ]


# Each rule against its float64 NumPy reference (written from the papers), eagerly in float64.
REFERENCE_CASES = {
    "sign_sgd": (lambda: jz.sign_sgd(decaying), lambda p: run_reference(reference.sign_sgd(decaying), p)),
    "signum": (lambda: jz.signum(0.05, 0.8), lambda p: run_reference(reference.sign_sgd(0.05, momentum=0.8), p)),
    "lion_mask": (
        lambda: jz.lion(0.05, 0.8, 0.95, weight_decay=0.3, mask=MASK),
        lambda p: _masked(
            run_reference(reference.lion(0.05, 0.8, 0.95, weight_decay=0.3), p),
            run_reference(reference.lion(0.05, 0.8, 0.95), p),
        ),
    ),
    "scale_by_lion_smooth": (
        lambda: jz.chain(jz.scale_by_lion(0.7, 0.9, mode="smooth", smooth_beta=3.0), jz.scale(-0.05)),
        lambda p: run_reference(reference.lion(0.05, 0.7, 0.9, mode="smooth", smooth_beta=3.0), p),
    ),
    "scale_by_lion_refined": (
        lambda: jz.chain(jz.scale_by_lion(mode="refined"), jz.scale(-0.05)),
        lambda p: run_reference(reference.lion(0.05, mode="refined"), p),
    ),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_matches_float64_reference(name, x64):
    ours, expected = REFERENCE_CASES[name]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params, jit=False)
    assert_trees_close(iterates, expected(params), rtol=1e-10, atol=1e-13)


def test_lion_first_step_follows_the_paper():
    # m_0 = 0: the first update is -lr (sign(g) + wd p); the momentum becomes (1 - b2) g.
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    grads = {"w": jnp.asarray([0.3, 0.2, -4.0])}
    tx = jz.lion(0.1, weight_decay=0.5)
    updates, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1 * (1 + 0.5), -0.1 * (1 - 1.0), -0.1 * (-1 + 0.25)], rtol=1e-6)
    np.testing.assert_allclose(state[0].mu["w"], 0.01 * np.asarray([0.3, 0.2, -4.0]), rtol=1e-6)
    assert int(state[0].count) == 1


# --- storage options ---------------------------------------------------------------------------

# name: factory of the storage, (int8, uint8) 8-bit leaves per quantized param
STORED = {
    "lion": (lambda s: jz.lion(1e-2, weight_decay=0.1, mu_dtype=s), (1, 0)),
    "signum": (lambda s: jz.signum(1e-2, accumulator_dtype=s), (1, 0)),
}


@pytest.mark.parametrize("name", list(STORED))
def test_eight_bit_state(name):
    factory, counts = STORED[name]
    assert_eight_bit_state_tracks_full_precision(factory(Q8), factory(None), counts)


def test_bfloat16_storages():
    # Lion's momentum; signum's accumulator in bfloat16 is compared with Optax above (signum_options).
    factory, _ = STORED["lion"]
    params = make_params()
    expected, _ = run_ours(factory(None), params, steps=6, jit=False)
    for storage in (jnp.bfloat16, jz.StochasticBF16()):
        iterates, state = run_ours(factory(storage), params, steps=6, jit=False)
        moments = [x for x in jax.tree.leaves(state[0]) if x.dtype != jnp.int32]
        assert len(moments) == 3 and all(x.dtype == jnp.bfloat16 for x in moments)
        assert int(state[0].count) == 6  # the step count the stochastic rounding draws from
        assert_trees_close(iterates[-1], expected[-1], rtol=0, atol=0.03)  # at most a few sign flips of 1e-2


@pytest.mark.parametrize("name", ["lion", "signum"])
def test_none_update_keeps_param_and_state_bit_for_bit(name):
    factory, _ = STORED[name]
    params = eight_bit_params()
    tx = factory(Q8)
    state = tx.init(params)
    for t in (1, 2):  # some history first, so the kept state is not all zeros
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        updates, state = tx.update(grads, state, params)
        params = jz.apply_updates(params, updates)
    grads = {"w": None, "b": grad_fn(params["b"], 3, jnp)}
    updates, new_state = tx.update(grads, state, params)
    assert updates["w"] is None
    new_params = jz.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params["w"], params["w"])
    assert not np.array_equal(new_params["b"], params["b"])
    kept = [(a, b) for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(new_state))
            if path[-1] == jax.tree_util.DictKey("w")]
    assert kept and any(is_encoded(a) for a, _ in kept)
    for a, b in kept:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


# --- jit with donation, vmap, inject_hyperparams -----------------------------------------------


def test_jitted_donated_steps_match_eager_steps():
    tx = jz.lion(1e-2, weight_decay=0.1, mu_dtype=jz.StochasticBF16())
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
    assert_trees_close(jit_params, eager_params, rtol=1e-6)
    assert_trees_close(jax.tree.leaves(jit_state), jax.tree.leaves(eager_state), rtol=1e-2, atol=1e-4)


def test_vmap_over_parameter_sets_equals_separate_runs():
    assert_vmap_matches_separate_runs(jz.lion(1e-2, b1=0.8, weight_decay=0.2, mask=MASK))


@pytest.mark.parametrize(
    "factory, hyperparams",
    [
        (jz.lion, dict(learning_rate=0.05, b1=0.8, b2=0.95, weight_decay=0.3)),
        (jz.signum, dict(learning_rate=0.05, beta=0.8)),
        (lambda smooth_beta: jz.scale_by_lion(0.7, mode="smooth", smooth_beta=smooth_beta), dict(smooth_beta=3.0)),
    ],
    ids=["lion", "signum", "scale_by_lion_smooth"],
)
def test_inject_hyperparams_gives_the_plain_trajectory(factory, hyperparams):
    params = make_params()
    expected, _ = run_ours(factory(**hyperparams), params, steps=5, jit=False)
    injected, state = run_ours(jz.inject_hyperparams(factory)(**hyperparams), params, steps=5, jit=False)
    assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)
    assert set(state.hyperparams) == set(hyperparams)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.sign_sgd(-1.0), r"^sign_sgd: learning_rate must be >= 0, got -1.0"),
        (lambda: jz.sign_sgd("fast"), r"^sign_sgd: learning_rate must be a finite real number, got 'fast'"),
        (lambda: jz.signum(0.1, beta=1.0), r"^signum: beta must be in \[0, 1\), got 1.0"),
        (lambda: jz.signum(0.1, accumulator_dtype=jnp.int8), r"^signum: accumulator_dtype must be"),
        (lambda: jz.lion(-0.1), r"^lion: learning_rate must be >= 0, got -0.1"),
        (lambda: jz.lion(0.1, b1=1.5), r"^lion: b1 must be in \[0, 1\], got 1.5"),
        (lambda: jz.lion(0.1, b2=-0.1), r"^lion: b2 must be in \[0, 1\), got -0.1"),
        (lambda: jz.lion(0.1, weight_decay=-1e-3), r"^lion: weight_decay must be >= 0, got -0.001"),
        (lambda: jz.lion(0.1, mu_dtype=jnp.float8_e4m3fn), r"^lion: mu_dtype=float8_e4m3fn has no per-block scale"),
        (lambda: jz.scale_by_lion(b2=1.0), r"^scale_by_lion: b2 must be in \[0, 1\), got 1.0"),
        (lambda: jz.scale_by_lion(mode="soft"), r"^scale_by_lion: mode must be one of 'hard', 'smooth', 'refined', got 'soft'"),
        (lambda: jz.scale_by_lion(mode="smooth", smooth_beta=0.0), r"^scale_by_lion: smooth_beta must be > 0, got 0.0"),
        (lambda: jz.scale_by_lion(mu_dtype="x"), r"^scale_by_lion: mu_dtype must be"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_a_state_from_another_optimizer_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match="expected ScaleByLionState"):
        jz.lion(0.1).update(params, jz.signum(0.1).init(params), params)
