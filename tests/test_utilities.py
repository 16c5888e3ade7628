"""Optax's utilities (numerics, linear algebra, moment helpers) against Optax and float64 closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests.conftest import assert_trees_equal

X = jnp.asarray([[3.0, -4.0, 0.5], [0.0, 1e-3, -2.0]])


@pytest.mark.parametrize(
    "kwargs", [{}, dict(ord=1), dict(ord=np.inf, axis=1), dict(axis=0, keepdims=True), dict(ord="fro", axis=(0, 1))]
)
def test_safe_norm_matches_optax_in_value_and_gradient(kwargs):
    rows = X.at[1].set(0.0)  # a zero row: its norm is below min_norm and its gradient must be 0, not NaN

    @jax.jit  # both libraries side by side in one program (eagerly, each operation would compile apart)
    def values_and_gradients(x):
        return [[(norm(x, min_norm, **kwargs), jax.grad(lambda y: jnp.sum(norm(y, min_norm, **kwargs)))(x))
                 for norm in (jz.safe_norm, optax.safe_norm)] for min_norm in (0.0, 1e-6, 3.0)]

    for ours, theirs in values_and_gradients(rows):
        assert_trees_equal(ours, theirs)
    assert np.all(np.isfinite(jax.jit(jax.grad(lambda x: jnp.sum(jz.safe_norm(x, 1e-6, axis=1))))(rows)))


def test_safe_root_mean_squares_matches_optax_and_its_closed_form():
    for x in (X, jnp.zeros(4), jnp.asarray([1 + 1j, -2j], jnp.complex64)):
        for min_rms in (1e-6, 2.0):
            ours = jz.safe_root_mean_squares(x, min_rms)
            assert_trees_equal(ours, optax.safe_root_mean_squares(x, min_rms))
            expected = max(np.sqrt(np.mean(np.abs(np.asarray(x, np.complex128)) ** 2)), min_rms)
            np.testing.assert_allclose(float(ours), expected, rtol=1e-6)
    assert float(jax.grad(lambda x: jz.safe_root_mean_squares(x, 1e-6))(jnp.zeros(3))[0]) == 0.0


def test_multi_normal_draws_and_scores_as_optax():
    loc, log_scale = jnp.asarray([0.5, -1.0]), jnp.asarray([0.1, -0.3])
    ours, theirs = jz.multi_normal(loc, log_scale), optax.multi_normal(loc, log_scale)
    key = jax.random.key(3)
    assert_trees_equal(ours.sample((4,), key), theirs.sample((4,), key))
    x = ours.sample((4,), key)
    assert_trees_equal(ours.log_prob(x), theirs.log_prob(x))
    scale = np.exp(np.asarray(log_scale, np.float64))
    z = (np.asarray(x, np.float64) - np.asarray(loc, np.float64)) / scale
    np.testing.assert_allclose(ours.log_prob(x), np.sum(-0.5 * z**2 - np.log(scale) - 0.5 * np.log(2 * np.pi), -1), rtol=1e-5)
    assert_trees_equal(ours.params, theirs.params)


def symmetric_psd(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T + 0.5 * np.eye(n)


def inverse_root(matrix: np.ndarray, p: int) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * values ** (-1.0 / p)) @ vectors.T


def test_power_iteration_finds_the_dominant_eigenpair(x64):
    m = symmetric_psd(5, 0)
    value, vector = jz.power_iteration(jnp.asarray(m), num_iters=1000, error_tolerance=1e-12)
    values, vectors = np.linalg.eigh(m)
    np.testing.assert_allclose(float(value), values[-1], rtol=1e-9)
    np.testing.assert_allclose(abs(np.dot(np.asarray(vector), vectors[:, -1])), 1.0, rtol=1e-9)
    # The matrix as a function of a tree of vectors gives the same pair.
    tree_value, tree_vector = jz.power_iteration(
        lambda v: {"a": jnp.asarray(m) @ v["a"]}, v0={"a": jnp.ones(5)}, num_iters=1000, error_tolerance=1e-12
    )
    np.testing.assert_allclose(float(tree_value), values[-1], rtol=1e-9)


def test_power_iteration_matches_optax_in_float32():
    m = jnp.asarray(symmetric_psd(6, 1), jnp.float32)
    ours, theirs = jz.power_iteration(m, key=jax.random.PRNGKey(4)), optax.power_iteration(m, key=jax.random.PRNGKey(4))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5)
    with pytest.raises(ValueError, match="power_iteration: when matrix is a function, pass v0="):
        jz.power_iteration(lambda v: v)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 6, 8])
def test_matrix_inverse_pth_root_against_the_eigendecomposition(x64, p):
    m = symmetric_psd(4, p)
    root, error = jz.matrix_inverse_pth_root(jnp.asarray(m), p, ridge_epsilon=0.0, error_tolerance=1e-12)
    np.testing.assert_allclose(np.asarray(root), inverse_root(m, p), rtol=1e-8, atol=1e-10)
    assert float(error) < 1e-10


def test_matrix_inverse_pth_root_without_a_ridge_runs_no_power_iteration():
    # lambda_max only scales the ridge: with ridge_epsilon=0 (Shampoo's roots) the program is Newton's loop alone,
    # not also the power iteration's (a loop of up to 100 products, per root, whose result was multiplied by 0).
    m = jnp.asarray(symmetric_psd(4, 2), jnp.float32)
    loops = lambda ridge: jax.jit(  # noqa: E731
        lambda a: jz.matrix_inverse_pth_root(a, 2, ridge_epsilon=ridge)).lower(m).as_text().count("stablehlo.while")
    assert loops(0.0) == 1 < loops(1e-6)
    # Newton roots: one loop per stack of factors, two stacks here, besides the loops of eigh's roots (a fallback for
    # a diverged Newton root; on a CPU, one loop per stack over its blocks).
    params = {"w": jnp.ones((8, 4))}
    loops = lambda shampoo: jax.jit(shampoo.update).lower(params, shampoo.init(params)).as_text().count(  # noqa: E731
        "stablehlo.while")
    eigh_loops = loops(jz.scale_by_shampoo(max_precond_dim=4, inverse_root="eigh"))
    assert loops(jz.scale_by_shampoo(max_precond_dim=4)) == 2 + eigh_loops


def test_matrix_inverse_pth_root_matches_optax_for_powers_of_two_and_differs_where_optax_is_wrong(x64):
    m = jnp.asarray(symmetric_psd(4, 7))
    for p in (2, 4):
        ours, theirs = jz.matrix_inverse_pth_root(m, p), optax.matrix_inverse_pth_root(m, p)
        np.testing.assert_allclose(np.asarray(ours[0]), np.asarray(theirs[0]), rtol=1e-12)
    # Deliberate difference: Optax raises the Newton factor to the power 4 for p=3, and misses the cube root.
    expected = inverse_root(np.asarray(m) + 1e-6 * np.linalg.eigvalsh(np.asarray(m))[-1] * np.eye(4), 3)
    np.testing.assert_allclose(np.asarray(jz.matrix_inverse_pth_root(m, 3)[0]), expected, rtol=1e-6)
    assert not np.allclose(np.asarray(optax.matrix_inverse_pth_root(m, 3)[0]), expected, rtol=1e-2)
    with pytest.raises(ValueError, match=r"matrix_inverse_pth_root: p must be a positive Python integer, got 0"):
        jz.matrix_inverse_pth_root(m, 0)


def test_nnls_matches_optax_and_meets_the_optimality_conditions(x64):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 5)), rng.normal(size=(8,))
    x = jz.nnls(jnp.asarray(a), jnp.asarray(b), iters=2000)
    assert_trees_equal(x, optax.nnls(jnp.asarray(a), jnp.asarray(b), iters=2000))
    # KKT: x >= 0, the gradient A^T(Ax - b) is >= 0, and zero wherever x > 0.
    grad = a.T @ (a @ np.asarray(x) - b)
    assert np.all(np.asarray(x) >= 0) and np.all(grad > -1e-9)
    np.testing.assert_allclose(grad[np.asarray(x) > 1e-9], 0.0, atol=1e-9)
    assert (np.asarray(x) == 0).any()  # this problem has an active constraint
    with pytest.raises(ValueError, match=r"nnls: A must be a matrix"):
        jz.nnls(jnp.ones(3), jnp.ones(3), iters=1)


UPDATES = {"a": jnp.asarray([0.5, -2.0]), "z": jnp.asarray([1 - 2j], jnp.complex64), "none": None}
MOMENTS = {"a": jnp.asarray([0.1, 0.2]), "z": jnp.asarray([0.3 + 0.1j], jnp.complex64), "none": jnp.asarray([7.0])}


@pytest.mark.parametrize("name, extra", [("update_moment", 2), ("update_moment", 1), ("update_moment_per_elem_norm", 2), ("update_infinity_moment", 1e-3)])
def test_moment_helpers_match_optax(name, extra):
    ours = getattr(jz, name)(UPDATES, MOMENTS, 0.9, extra)
    theirs = getattr(optax, name)(UPDATES, MOMENTS, 0.9, extra)
    assert_trees_equal({k: v for k, v in ours.items() if k != "none"}, {k: v for k, v in theirs.items() if k != "none"})
    # Deliberate difference: where the update is None the moment is kept (Optax returns None).
    assert ours["none"] is MOMENTS["none"] and theirs["none"] is None


def test_update_moment_raises_complex_gradients_as_they_are_and_per_elem_norm_takes_the_modulus():
    g = {"z": jnp.asarray([1 - 2j], jnp.complex64)}
    m = {"z": jnp.zeros(1, jnp.complex64)}
    np.testing.assert_allclose(jz.update_moment(g, m, 0.0, 2)["z"], [(1 - 2j) ** 2])
    np.testing.assert_allclose(jz.update_moment_per_elem_norm(g, m, 0.0, 2)["z"], [5.0])


def test_bias_correction_global_norm_and_increment_match_optax():
    count = jnp.asarray(3, jnp.int32)
    assert_trees_equal(jz.bias_correction(MOMENTS["a"], 0.9, count), optax.bias_correction(MOMENTS["a"], 0.9, count))
    tree = {"a": X, "b": jnp.asarray([1.0, 2.0])}
    np.testing.assert_allclose(jz.global_norm(tree), optax.tree.norm(tree), rtol=1e-7)
    top = jnp.asarray(np.iinfo(np.int32).max, jnp.int32)
    assert int(jz.safe_int32_increment(top)) == int(optax.safe_int32_increment(top)) == np.iinfo(np.int32).max


# --- microbatching: bad calls (the rest of microbatch is tested in test_combinators.py) --------------------------


def test_microbatch_names_an_empty_batch_and_positions_the_call_lacks():
    from jaxopt_zoo.microbatching import AccumulationType, microbatch

    with pytest.raises(ValueError, match=r"^microbatch: the batch is empty \(batch size 0 along in_axes=0\); pass at "
                       r"least one microbatch of microbatch_size=2 examples\.$"):
        microbatch(jnp.sum, 0, 2, AccumulationType.MEAN)(jnp.zeros((0,)))  # IndexError from jnp.take
    with pytest.raises(ValueError, match=r"^microbatch: argnums=3 names positional argument 3, but the function was "
                       r"called with 1 positional argument;"):
        microbatch(jnp.sum, 3, 2)(jnp.zeros(4))  # IndexError: tuple index out of range
    with pytest.raises(ValueError, match=r"^microbatch: argnames names the keyword argument 'y', but the function"):
        microbatch(lambda x, y=None: jnp.sum(x), (), 2, argnames="y")(jnp.zeros(4))
    with pytest.raises(ValueError, match=r"^microbatch: argnums must be an int or a sequence of ints, got 0\.5\."):
        microbatch(jnp.sum, 0.5, 2)
    assert float(microbatch(jnp.sum, range(1), 2)(jnp.arange(4.0))) == 6.0  # any sequence, as Optax's
    x = jnp.arange(4.0)
    for argnums in (np.int64(0), (np.int32(0),), [0]):  # TypeError: 'numpy.int64' object is not iterable
        assert float(microbatch(jnp.sum, argnums, 2, AccumulationType.SUM)(x)) == 6.0


def test_micro_grad_names_bad_batch_argnums():
    from jaxopt_zoo.microbatching import micro_grad

    loss = lambda w, x: jnp.sum(w * x)  # noqa: E731
    w, x = jnp.ones(2), jnp.ones((4, 2))
    with pytest.raises(ValueError, match=r"^micro_grad: batch_argnums must name at least one argument"):
        micro_grad(loss, batch_argnums=())  # max() arg is an empty sequence
    with pytest.raises(ValueError, match=r"^micro_grad: batch_argnums must be >= 0"):
        micro_grad(loss, batch_argnums=-1)
    with pytest.raises(ValueError, match=r"^micro_grad: batch_argnums=\(5,\) names positional argument 5, but the "
                       r"function was called with 2 positional arguments\.$"):
        micro_grad(loss, batch_argnums=5)(w, x)
    grads, _ = micro_grad(loss, batch_argnums=np.int64(1))(w, x)
    np.testing.assert_array_equal(np.asarray(grads), np.full(2, 4.0))
