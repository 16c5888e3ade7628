"""Tree helpers against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_zoo import tree
from tests.conftest import make_params


def test_zeros_like_keeps_structure_and_takes_dtype():
    params = make_params(jnp.float32)
    zeros = tree.zeros_like(params, jnp.bfloat16)
    assert jax.tree.structure(zeros) == jax.tree.structure(params)
    for z, p in zip(jax.tree.leaves(zeros), jax.tree.leaves(params)):
        assert z.shape == p.shape and z.dtype == jnp.bfloat16 and not np.any(np.asarray(z, np.float32))
    assert all(z.dtype == jnp.float32 for z in jax.tree.leaves(tree.zeros_like(params)))


def test_update_moment_is_the_ema_of_the_power(x64):
    g = {"a": jnp.asarray([1.0, -2.0, 3.0]), "b": None}
    m = {"a": jnp.asarray([0.5, 0.5, 0.5]), "b": jnp.asarray([7.0])}
    for order in (1, 2):
        new = tree.update_moment(g, m, 0.9, order)
        np.testing.assert_allclose(new["a"], 0.1 * np.array([1.0, -2.0, 3.0]) ** order + 0.9 * 0.5, rtol=1e-15)
        np.testing.assert_array_equal(new["b"], m["b"])  # no update: moment kept


def test_second_moment_of_complex_gradient_is_the_squared_modulus(x64):
    g = jnp.asarray([3.0 + 4.0j])
    new = tree.update_moment_per_elem_norm(g, jnp.zeros(1, jnp.float64), 0.5, 2)
    np.testing.assert_allclose(new, [12.5])
    # Optax's update_moment squares the complex number itself: 0.5 * (3 + 4j)^2.
    np.testing.assert_allclose(tree.update_moment(g, jnp.zeros(1, jnp.complex128), 0.5, 2), [0.5 * (3 + 4j) ** 2])


def test_bias_correction_divides_by_one_minus_decay_power(x64):
    moments = {"a": jnp.asarray([2.0, 4.0]), "b": jnp.asarray(1.0, jnp.bfloat16), "c": None}
    out = tree.bias_correction(moments, 0.9, jnp.asarray(3, jnp.int32))
    np.testing.assert_allclose(out["a"], np.array([2.0, 4.0]) / (1 - 0.9**3), rtol=1e-15)
    assert out["b"].dtype == jnp.bfloat16 and out["c"] is None


def test_bias_correction_stays_finite_in_bfloat16_for_high_decay():
    # 0.999 rounds to 1 in bfloat16, so the scalar must be formed before the cast.
    out = tree.bias_correction(jnp.ones(2, jnp.bfloat16), 0.999, jnp.asarray(1, jnp.int32))
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    np.testing.assert_allclose(np.asarray(out, np.float32), 1000.0, rtol=1e-2)


def test_global_norm_matches_numpy(x64):
    params = make_params(jnp.float64)
    expected = np.sqrt(sum(np.sum(np.asarray(p) ** 2) for p in jax.tree.leaves(params)))
    np.testing.assert_allclose(tree.global_norm(params), expected, rtol=1e-14)


def test_cast_and_cast_like():
    params = make_params(jnp.float32)
    low = tree.cast(params, jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(low))
    assert tree.cast(params, None) is params
    back = tree.cast_like(low, params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(back))


def test_check_same_structure_lists_differing_paths():
    a = {"x": 1.0, "y": {"z": 2.0}}
    tree.check_same_structure("demo", a, {"x": 0.0, "y": {"z": 0.0}}, "the state")
    tree.check_same_structure("demo", {"x": None, "y": {"z": 2.0}}, a, "the state")  # None is a leaf
    with pytest.raises(ValueError, match=r"demo: .*only in updates: \['y'\]\['z'\]; paths only in the state: \['y'\]\['w'\]"):
        tree.check_same_structure("demo", a, {"x": 0.0, "y": {"w": 0.0}}, "the state")
    with pytest.raises(ValueError, match="same paths but different containers"):
        tree.check_same_structure("demo", [1.0, 2.0], (1.0, 2.0), "the state")


def test_the_suites_closeness_check_compares_imaginary_parts():
    # It cast both sides to float64, which drops imaginary parts: a test of complex params could not fail there.
    from tests.conftest import assert_trees_close

    assert_trees_close({"z": jnp.asarray([1 + 2j])}, {"z": jnp.asarray([1 + 2j])}, rtol=0)
    with pytest.raises(AssertionError):
        assert_trees_close({"z": jnp.asarray([1 + 2j])}, {"z": jnp.asarray([1 - 2j])}, rtol=1e-6)


def test_scalar_dtype_counts_a_complex_param_by_its_parts(x64):
    # A tree of complex128 params had float32 scalars (only real floating leaves were counted): MoMo's, D-Adapt's
    # and the parameter-free optimizers' step-size estimates lost float64's precision.
    assert tree.scalar_dtype({"z": jnp.ones(2, jnp.complex128)}) == jnp.float64
    assert tree.scalar_dtype({"z": jnp.ones(2, jnp.complex128), "x": jnp.ones(2)}) == jnp.float64
    assert tree.scalar_dtype({"z": jnp.ones(2, jnp.complex64)}) == jnp.float32
    assert tree.scalar_dtype({"z": jnp.ones(2, jnp.complex128), "x": jnp.ones(2, jnp.float32)}) == jnp.float32
