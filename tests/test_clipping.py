"""Clipping transforms against float64 NumPy references and, bit for bit, against Optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import assert_trees_equal, make_params

CASES = {
    "clip": (lambda: jz.clip(0.5), lambda: optax.clip(0.5), lambda g, p: reference.clip_elementwise(g, 0.5)),
    "clip_by_global_norm_active": (
        lambda: jz.clip_by_global_norm(1.0),
        lambda: optax.clip_by_global_norm(1.0),
        lambda g, p: reference.clip_global_norm(g, 1.0),
    ),
    "clip_by_global_norm_inactive": (
        lambda: jz.clip_by_global_norm(100.0),
        lambda: optax.clip_by_global_norm(100.0),
        lambda g, p: reference.clip_global_norm(g, 100.0),
    ),
    "clip_by_block_rms": (
        lambda: jz.clip_by_block_rms(0.7),
        lambda: optax.clip_by_block_rms(0.7),
        lambda g, p: reference.clip_block_rms(g, 0.7),
    ),
    "adaptive_grad_clip": (
        lambda: jz.adaptive_grad_clip(0.3),
        lambda: optax.adaptive_grad_clip(0.3),
        lambda g, p: reference.adaptive_clip(g, p, 0.3),
    ),
}


def _grads(params, scale=3.0):
    return jax.tree.map(lambda p: scale * jnp.sin(7 * p + 1), params)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name, x64):
    ours, _, expected = CASES[name]
    params = make_params(jnp.float64)
    grads = _grads(params)
    updates, _ = ours().update(grads, ours().init(params), params)
    leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]
    for got, want in zip(leaves(updates), expected(leaves(grads), leaves(params))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax_bit_for_bit(name, dtype):
    ours, theirs, _ = CASES[name]
    params = make_params(dtype)
    grads = _grads(params)
    a, _ = jax.jit(ours().update)(grads, ours().init(params), params)
    b, _ = jax.jit(theirs().update)(grads, theirs().init(params), params)
    assert_trees_equal(a, b)


def test_clipping_actually_clips():
    params = make_params()
    grads = _grads(params, scale=10.0)
    updates, _ = jz.clip_by_global_norm(1.0).update(grads, jz.EmptyState())
    np.testing.assert_allclose(float(jz.tree.global_norm(updates)), 1.0, rtol=1e-5)
    updates, _ = jz.clip(0.5).update(grads, jz.EmptyState())
    assert max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(updates)) == 0.5


def test_none_updates_pass_through():
    params = make_params()
    grads = _grads(params)
    grads["dense"]["b"] = None
    for tx in (jz.clip(0.5), jz.clip_by_global_norm(1.0), jz.clip_by_block_rms(0.5), jz.adaptive_grad_clip(0.1)):
        updates, _ = tx.update(grads, tx.init(params), params)
        assert updates["dense"]["b"] is None


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.clip(-1.0), r"clip: max_delta must be >= 0, got -1\.0"),
        (lambda: jz.clip_by_global_norm("1"), r"clip_by_global_norm: max_norm must be a finite real number"),
        (lambda: jz.clip_by_block_rms(-0.1), r"clip_by_block_rms: threshold must be > 0, got -0\.1"),
        (lambda: jz.adaptive_grad_clip(-0.1), r"adaptive_grad_clip: clipping must be >= 0"),
    ],
)
def test_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_adaptive_grad_clip_needs_params_and_known_unit_axes():
    tx = jz.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match="adaptive_grad_clip needs the parameters"):
        tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.ones(3)}))
    six_d = {"w": jnp.ones((2, 2, 2, 2, 2, 2))}
    with pytest.raises(ValueError, match=r"cannot tell the units of a parameter of shape \(2, 2, 2, 2, 2, 2\); pass axis"):
        tx.update(six_d, tx.init(six_d), six_d)


def test_global_norm_clip_at_a_max_norm_injected_as_zero_keeps_zero_gradients_zero():
    """max_norm = 0 is refused when built, but a schedule or an edit can reach it: zero gradients gave 0/0 = NaN
    under jit (Optax's too). A gradient whose norm equals max_norm is kept as it is."""
    tx = jz.inject_hyperparams(jz.clip_by_global_norm)(max_norm=jz.linear_schedule(1.0, 0.0, 1))
    zeros = {"w": jnp.zeros(3)}
    step = jax.jit(tx.update)
    state = tx.init(zeros)
    for _ in range(2):
        updates, state = step(zeros, state)
    assert float(state.hyperparams["max_norm"]) == 0.0
    np.testing.assert_array_equal(updates["w"], 0.0)
    grads = {"w": jnp.asarray([3.0, 4.0, 0.0])}
    np.testing.assert_array_equal(jz.clip_by_global_norm(5.0).update(grads, ())[0]["w"], grads["w"])
    # Eagerly the injected 0 rebuilds the transformation with max_norm=0, which was refused: the same zeros.
    state = tx.init(zeros)
    for _ in range(2):
        updates, state = tx.update(zeros, state)
    np.testing.assert_array_equal(updates["w"], 0.0)
    np.testing.assert_array_equal(jz.clip_by_global_norm(0.0).update(grads, ())[0]["w"], 0.0)
