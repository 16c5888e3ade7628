"""The protocol pieces: identity, stateless, safe_increment, apply_updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_zoo as jz
from tests.conftest import make_params


def test_identity_returns_updates_and_empty_state():
    tx = jz.identity()
    params = make_params()
    state = tx.init(params)
    assert state == jz.EmptyState() and jax.tree.leaves(state) == []
    updates, new_state = tx.update(params, state, value=1.0)
    assert updates is params and new_state == state


def test_stateless_applies_function_of_updates_and_params():
    tx = jz.stateless(lambda g, p: jax.tree.map(lambda a, b: a * b, g, p))
    params = make_params()
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params, value=3.0)
    jax.tree.map(np.testing.assert_array_equal, updates, params)
    assert state == jz.EmptyState()


def test_stateless_rejects_non_callable():
    with pytest.raises(TypeError, match="stateless: f must be a callable"):
        jz.stateless(3)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint32, jnp.uint8, jnp.float32])
def test_safe_increment_saturates(dtype):
    # uint32 (Optax's tests count with it): its maximum does not fit the int32 a Python int becomes.
    info = jnp.iinfo(dtype) if jnp.issubdtype(dtype, jnp.integer) else jnp.finfo(dtype)
    top = jnp.asarray(info.max, dtype)
    for increment in (jz.safe_increment, jax.jit(jz.safe_increment)):
        assert increment(top) == top
        assert increment(jnp.asarray(5, dtype)) == 6
        assert increment(top).dtype == increment(jnp.asarray(5, dtype)).dtype == dtype


def test_safe_increment_refuses_a_complex_count():
    with pytest.raises(ValueError, match="count must be an integer or real floating array, got dtype complex64"):
        jz.safe_increment(jnp.asarray(1, jnp.complex64))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_apply_updates_keeps_param_dtype(dtype):
    params = make_params(dtype)
    updates = jax.tree.map(lambda p: jnp.full(p.shape, 0.25, jnp.float32), params)
    new = jz.apply_updates(params, updates)
    for p, n in zip(jax.tree.leaves(params), jax.tree.leaves(new)):
        assert n.dtype == dtype
        np.testing.assert_array_equal(n, (p.astype(jnp.float32) + 0.25).astype(dtype))


def test_apply_updates_passes_none_through():
    params = {"a": jnp.ones(2), "b": jnp.ones(3), "c": None}
    new = jz.apply_updates(params, {"a": jnp.ones(2), "b": None, "c": None})
    np.testing.assert_array_equal(new["a"], 2 * jnp.ones(2))
    np.testing.assert_array_equal(new["b"], params["b"])
    assert new["c"] is None


def test_apply_updates_reports_mismatched_trees_and_shapes():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"apply_updates: .*only in updates: \['bias'\]; paths only in the params: \['b'\]"):
        jz.apply_updates(params, {"w": jnp.ones((3, 4)), "bias": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"apply_updates: .*shapes differ at \['w'\] \(2, 3, 4\) vs \(3, 4\)"):
        jz.apply_updates(params, {"w": jnp.ones((2, 3, 4)), "b": jnp.ones(4)})
