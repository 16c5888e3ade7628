"""Gradients and params of unusual dtypes (issue: no silent wrong answers).

float16 gradients and params: moments and norms are computed in float32, since float16 flushes
squared gradients below ~2e-4 to zero and overflows above 256. Integer and bool params: moments are
float32, never truncated to the param's dtype. bfloat16 keeps Optax's numbers (tested elsewhere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests.conftest import assert_trees_equal

SMALL = 1e-3  # (1 - 0.999) * SMALL**2 = 1e-9: zero in float16, whose smallest subnormal is 6e-8


def float16_and_float32(value, shape=(8,)):
    """The same gradient values as float16 and as float32 (the float16 value, exactly)."""
    g16 = jnp.full(shape, value, jnp.float16)
    return g16, g16.astype(jnp.float32)


def run(tx, params, grads, steps=3):
    state = tx.init(params)
    updates_seen = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        updates_seen.append(updates)
        params = jz.apply_updates(params, updates)
    return updates_seen, state


OPTIMIZERS = {
    "adam": lambda: jz.adam(0.01),
    "amsgrad": lambda: jz.amsgrad(0.01),
    "adagrad": lambda: jz.adagrad(0.01),
    "rmsprop_centered": lambda: jz.rmsprop(0.01, centered=True),
    "adadelta": lambda: jz.adadelta(),
    "lamb": lambda: jz.lamb(0.01),
    "sgd_momentum": lambda: jz.sgd(0.01, momentum=0.9),
    "clip_by_global_norm": lambda: jz.clip_by_global_norm(1.0),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float16_gradients_on_float32_params_give_the_float32_gradients_updates(name):
    """A float16 gradient is a float32 gradient with fewer bits: the updates must be the same numbers."""
    tx = OPTIMIZERS[name]()
    params = {"w": jnp.ones(8, jnp.float32)}
    g16, g32 = float16_and_float32(SMALL)
    ours, _ = run(tx, params, {"w": g16})
    expected, _ = run(tx, params, {"w": g32})
    for a, e in zip(ours, expected):
        np.testing.assert_allclose(np.asarray(a["w"], np.float64), np.asarray(e["w"], np.float64), rtol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float16_params_are_updated_like_float32_params(name):
    """float16 params with float16 gradients: float32 moments, finite updates equal to the float32 run's."""
    tx = OPTIMIZERS[name]()
    g16, g32 = float16_and_float32(SMALL)
    ours, state = run(tx, {"w": jnp.ones(8, jnp.float16)}, {"w": g16})
    expected, _ = run(tx, {"w": jnp.ones(8, jnp.float32)}, {"w": g32})
    for a, e in zip(ours, expected):
        np.testing.assert_allclose(np.asarray(a["w"], np.float64), np.asarray(e["w"], np.float64), rtol=1e-3)
    moments = [x for x in jax.tree.leaves(state) if jnp.ndim(x) and x.shape == (8,)]
    assert all(x.dtype == jnp.float32 for x in moments), [x.dtype for x in moments]


def test_adam_on_float16_params_with_zero_gradients_does_not_step():
    """The old code formed m / (sqrt(v) + eps) in float16, where eps = 1e-8 is 0: 0 / 0 = NaN."""
    updates, _ = run(jz.adam(0.01), {"w": jnp.ones(8, jnp.float16)}, {"w": jnp.zeros(8, jnp.float16)})
    for u in updates:
        np.testing.assert_array_equal(np.asarray(u["w"], np.float32), 0.0)


def test_adam_step_from_a_small_float16_gradient_is_the_learning_rate():
    """The first Adam step is -lr * g / |g|; the old code stepped -1000 (v flushed to 0, so m / eps)."""
    updates, _ = run(jz.adam(0.01), {"w": jnp.ones(8, jnp.float32)}, {"w": jnp.full(8, SMALL, jnp.float16)}, steps=1)
    np.testing.assert_allclose(np.asarray(updates[0]["w"]), -0.01, rtol=1e-4)


def test_global_norm_clip_of_large_float16_gradients():
    """The sum of squares of 16 values of 200 is 640000, past float16's 65504: the old code clipped to 0."""
    g16 = jnp.full(16, 200.0, jnp.float16)
    updates, _ = jz.clip_by_global_norm(1.0).update({"w": g16}, jz.clip_by_global_norm(1.0).init({"w": g16}))
    np.testing.assert_allclose(np.asarray(updates["w"], np.float64), 0.25, rtol=1e-3)  # 200 / 800


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.bool_])
@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "adagrad", "rmsprop_centered"])
def test_integer_and_bool_params_keep_float32_moments(name, dtype):
    """The moments of an integer or bool param are what they would be for float32 params, never truncated."""
    tx = OPTIMIZERS[name]()
    grads = {"w": jnp.asarray([-0.5, 0.25, 0.75, -1.0], jnp.float32)}
    ints = {"w": jnp.asarray([1, 0, 1, 0], dtype)}
    _, state = run(tx, ints, grads, steps=1)  # one step: after it the int params themselves have moved
    _, expected = run(tx, {"w": ints["w"].astype(jnp.float32)}, grads, steps=1)
    assert_trees_equal(state, expected)


@pytest.mark.parametrize("name", ["nadam", "nadamw", "optimistic_adam_v2"])
def test_integer_gradients_step_as_their_float32_values(name):
    """NAdam's correction of g_t divided an int32 gradient by int(1 - b1**t) = 0: steps of +-inf (Optax's too)."""
    tx = {"nadam": lambda: jz.nadam(0.1), "nadamw": lambda: jz.nadamw(0.1),
          "optimistic_adam_v2": lambda: jz.optimistic_adam_v2(0.1)}[name]()
    ints = {"w": jnp.asarray([1, -1, 2, 0], jnp.int32)}
    updates, _ = run(tx, {"w": jnp.ones(4)}, ints, steps=2)
    expected, _ = run(tx, {"w": jnp.ones(4)}, {"w": ints["w"].astype(jnp.float32)}, steps=2)
    assert_trees_equal(updates, expected)


KRONECKER = {
    "soap": lambda: jz.soap(0.01, precondition_frequency=2),
    "shampoo": lambda: jz.shampoo(0.01, precondition_frequency=2, start_preconditioning_step=1),
    "psgd_kron": lambda: jz.psgd_kron(0.01),
}


@pytest.mark.parametrize("name", list(KRONECKER))
def test_kronecker_preconditioners_widen_float16_like_the_moment_keepers(name):
    """A matrix's factors and updates: float16 gradients give the float32 gradients' updates, in float32.

    The old SOAP and Shampoo computed in float32 but returned the update in the gradient's float16,
    rounding it by ~5e-4 relative even on float32 params.
    """
    g16 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)) * SMALL, jnp.float16)
    params = {"w": jnp.ones((4, 3), jnp.float32)}
    ours, _ = run(KRONECKER[name](), params, {"w": g16}, steps=4)
    expected, _ = run(KRONECKER[name](), params, {"w": g16.astype(jnp.float32)}, steps=4)
    for a, e in zip(ours, expected):
        assert a["w"].dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a["w"]), np.asarray(e["w"]), rtol=1e-6, atol=0)
    _, state = run(KRONECKER[name](), {"w": jnp.ones((4, 3), jnp.float16)}, {"w": g16}, steps=4)
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats), [x.dtype for x in floats]


def test_float16_updates_are_float32_and_apply_updates_keeps_float16_params():
    """As the guide says: updates from float32 moments stay float32 (Optax's have the gradients' float16), and
    apply_updates rounds each sum once into the param's float16."""
    params, grads = {"w": jnp.ones(4, jnp.float16)}, {"w": jnp.full(4, 0.01, jnp.float16)}
    tx = jz.adam(0.01)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["w"].dtype == jnp.float32
    stepped = jz.apply_updates(params, updates)
    assert stepped["w"].dtype == jnp.float16
    np.testing.assert_array_equal(stepped["w"], (params["w"].astype(jnp.float32) + updates["w"]).astype(jnp.float16))


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_bfloat16_updates_stay_bfloat16_where_the_step_scalars_are_float32(name):
    # Optax's common test (test_preserve_dtype): MoMo's float32 Polyak step made bfloat16 updates float32.
    params = jnp.asarray([1.0, 2.0], jnp.bfloat16)
    tx = getattr(jz, name)(0.1)
    updates, _ = tx.update(params * 2, tx.init(params), params, value=jnp.sum(params**2))
    assert updates.dtype == jnp.bfloat16


def test_a_complex_moment_dtype_is_its_real_precision_as_optax_users_write_it():
    # Optax's test_explicit_dtype: mu_dtype=jnp.complex64 keeps a complex param's momentum complex there; here it
    # was refused at construction. A real param's moment stays real (Optax would make it complex).
    p = jnp.asarray([1.0 + 1.0j, 2.0 - 1.0j], jnp.complex64)
    g = jnp.asarray([0.5 - 0.5j, 1.0 + 0.25j], jnp.complex64)
    for ours, theirs in ((jz.adam(0.1, mu_dtype=jnp.complex64), optax.adam(0.1, mu_dtype=jnp.complex64)),
                         (jz.sgd(0.1, 0.9, accumulator_dtype=jnp.complex64),
                          optax.sgd(0.1, 0.9, accumulator_dtype=jnp.complex64))):
        np.testing.assert_allclose(ours.update(g, ours.init(p), p)[0], theirs.update(g, theirs.init(p), p)[0],
                                   rtol=1e-6)
    real = jz.adam(0.1, mu_dtype=jnp.complex128).init(jnp.ones(2))
    assert real[0].mu.dtype == jnp.float32  # float64 is not enabled: the real precision, canonicalised
