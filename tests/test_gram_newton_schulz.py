"""Gram Newton–Schulz (gram_newton_schulz, _gram_orthogonalize): the plain quintic iteration run on the Gram matrix.

In float64 it must equal tests/reference.py's plain quintic iteration (written from the math, with no Gram matrix)
to rounding, on wide, tall and square matrices, with one or per-step coefficient rows, with and without restarts;
in float32 it stays within rounding of jz.newton_schulz, and its restarts are what keeps a long iteration accurate.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo.transforms.orthogonal import NS_COEFFICIENTS, _orthogonalize
from tests import reference
from tests.conftest import assert_trees_close, assert_trees_equal

gns_module = importlib.import_module("jaxopt_zoo.transforms.gram_newton_schulz")
_gram_orthogonalize = gns_module._gram_orthogonalize

CONVERGENT = (15 / 8, -10 / 8, 3 / 8)
DION = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
SHAPES = {"wide": (4, 9), "tall": (9, 4), "square": (5, 5), "aspect_1.5": (4, 6)}


def matrices(dtype, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=shape), dtype) for name, shape in SHAPES.items()}


def spread_spectrum(rows: int, cols: int, smallest: float, seed: int = 1) -> np.ndarray:
    """A rows x cols matrix (rows <= cols) with singular values log-spaced from 1 down to ``smallest``."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, rows)))
    return u @ np.diag(np.logspace(0, np.log10(smallest), rows)) @ v.T


# (coefficients, ns_steps, restarts, reference rows): the default restarts, none, and a restart before every step.
CASES = {
    "default": (NS_COEFFICIENTS, 5, None, [NS_COEFFICIENTS] * 5),
    "dion_rows": (DION, 5, None, DION),
    "dion_rows_reference_restart": (DION, 5, (2,), DION),
    "convergent_no_restarts": (CONVERGENT, 8, (), [CONVERGENT] * 8),
    "convergent_every_step": (CONVERGENT, 8, tuple(range(1, 8)), [CONVERGENT] * 8),
    "one_step": (NS_COEFFICIENTS, 1, None, [NS_COEFFICIENTS]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_float64_equals_the_plain_quintic_iteration(x64, case):
    coefficients, steps, restarts, rows = CASES[case]
    for name, g in matrices(jnp.float64).items():
        ours = jz.gram_newton_schulz(g, coefficients, steps, restarts=restarts)
        expected = reference.quintic_newton_schulz(np.asarray(g), rows)
        assert ours.dtype == jnp.float64 and ours.shape == g.shape
        np.testing.assert_allclose(np.asarray(ours), expected, rtol=0, atol=1e-10, err_msg=name)
        assert np.abs(expected - np.asarray(g) / np.linalg.norm(np.asarray(g))).max() > 0.1  # it did move


def test_eps_floors_the_norm_and_zero_steps_only_normalise(x64):
    g = matrices(jnp.float64)["wide"]
    norm = float(jnp.linalg.norm(g))
    big = 10 * norm  # max(||G||, eps) = eps: the singular values start 10 times smaller
    np.testing.assert_allclose(
        jz.gram_newton_schulz(g, eps=big), reference.quintic_newton_schulz(np.asarray(g), [NS_COEFFICIENTS] * 5, big),
        atol=1e-10,
    )
    np.testing.assert_allclose(jz.gram_newton_schulz(g, ns_steps=0), g / norm, atol=1e-15)


def test_convergent_coefficients_approach_the_polar_factor(x64):
    # The polar factor U V^T is the fixed point; the error shrinks with the steps (1.875 per step on the smallest
    # singular value, then quadratically), so 5 steps are visibly short of it and 24 are at it.
    spread = {"spread": jnp.asarray(spread_spectrum(4, 9, 0.01)),
              "spread_tall": jnp.asarray(spread_spectrum(4, 7, 0.01).T)}
    for name, g in (matrices(jnp.float64, seed=3) | spread).items():
        polar = reference.polar_factor(np.asarray(g))
        start = np.linalg.svd(np.asarray(g), compute_uv=False)
        assert start.min() > 0.005 * np.linalg.norm(start), name  # the premise: 24 steps suffice
        np.testing.assert_allclose(jz.gram_newton_schulz(g, CONVERGENT, 24), polar, atol=1e-9, err_msg=name)
        if name in spread:
            assert np.abs(np.asarray(jz.gram_newton_schulz(g, CONVERGENT, 5)) - polar).max() > 1e-3, name


def test_float32_stays_within_rounding_of_newton_schulz():
    # The same polynomial, its products grouped differently: each product rounds at ~6e-8, and the default
    # coefficients amplify what lands on the smallest singular directions by up to a^5 ~ 490 (measured: at most
    # 1.4e-6 on these matrices), hence 1e-5.
    long = jnp.asarray(np.random.default_rng(5).normal(size=(16, 64)), jnp.float32)
    for name, g in (matrices(jnp.float32) | {"long": long}).items():
        for coefficients, steps in ((NS_COEFFICIENTS, 5), (CONVERGENT, 12), (DION, 5)):
            ours = jz.gram_newton_schulz(g, coefficients, steps)
            assert ours.dtype == jnp.float32
            np.testing.assert_allclose(ours, jz.newton_schulz(g, coefficients, steps), atol=1e-5, err_msg=name)


def test_restarts_keep_a_long_float32_iteration_accurate():
    # Rounding leaves R's eigenvalues slightly negative and 30 convergent steps amplify them (and Q's growth on the
    # small singular directions) without restarts; with the default restarts (every 3 steps) the result is as
    # close to the polar factor as the plain iteration's (measured: 2e-5 and 4e-5; without restarts 7e-2).
    g = spread_spectrum(6, 16, 1e-4)
    polar, g32 = reference.polar_factor(g), jnp.asarray(g, jnp.float32)
    error = lambda o: np.abs(np.asarray(o, np.float64) - polar).max()
    plain = error(jz.newton_schulz(g32, CONVERGENT, 30))
    assert error(jz.gram_newton_schulz(g32, CONVERGENT, 30)) < max(2 * plain, 1e-4)
    assert error(jz.gram_newton_schulz(g32, CONVERGENT, 30, restarts=())) > 1e-3


def test_zero_matrix_gives_zero():
    @jax.jit
    def run(zero, steps):
        return [(jz.gram_newton_schulz(zero, eps=eps), jz.gram_newton_schulz(zero.T, CONVERGENT, steps, eps=eps).T)
                for eps in (1e-7, 0.0)]

    for dtype in (jnp.float32, jnp.bfloat16):
        zero = jnp.zeros((3, 5), dtype)
        assert_trees_equal(run(zero, jnp.asarray(4)), [(zero, zero)] * 2)


def test_traced_steps_jit_and_vmap_match_the_unrolled_iteration(x64):
    g = matrices(jnp.float64)["wide"]
    looped = jax.jit(jz.gram_newton_schulz, static_argnames="restarts")
    for restarts in (None, (), (2, 5)):
        for steps in (0, 7):
            np.testing.assert_allclose(
                looped(g, CONVERGENT, jnp.asarray(steps), restarts=restarts),
                jz.gram_newton_schulz(g, CONVERGENT, steps, restarts=restarts), atol=1e-12,
                err_msg=f"{restarts} {steps}",
            )
    stack = jnp.stack([g, 2 * g[::-1], jnp.cos(g)])
    batched = jax.jit(jax.vmap(jz.gram_newton_schulz))(stack)
    for i in range(3):
        np.testing.assert_allclose(batched[i], jz.gram_newton_schulz(stack[i]), atol=1e-12)


def test_dtypes():
    g = matrices(jnp.float32)["wide"]
    assert jz.gram_newton_schulz(g.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    half = jz.gram_newton_schulz(g.astype(jnp.float16))  # iterated in float32 (widened), cast back
    assert half.dtype == jnp.float16
    np.testing.assert_allclose(half, jz.gram_newton_schulz(g.astype(jnp.float16).astype(jnp.float32)), atol=2e-3)
    wide = jz.gram_newton_schulz(g.astype(jnp.bfloat16), dtype=jnp.float32)
    np.testing.assert_array_equal(wide, jz.gram_newton_schulz(g.astype(jnp.bfloat16).astype(jnp.float32)).astype(
        jnp.bfloat16))


def test_drop_in_for_the_frobenius_path(x64):
    # _gram_orthogonalize(x, coefficients, ns_steps, eps, eps_floor) is orthogonal._orthogonalize's "frobenius"
    # path: Optax's ||X|| + eps (eps_floor=False) or PyTorch's max(||X||, eps), rows, a traced step count.
    def three(g, coefficients, steps, eps, eps_floor):
        coefficients = jnp.asarray(coefficients, g.dtype)
        return (_orthogonalize(g, coefficients, steps, "frobenius", eps, eps_floor),
                _gram_orthogonalize(g, coefficients, steps, eps, eps_floor, min_aspect_ratio=1),
                _gram_orthogonalize(g, coefficients, steps, eps, eps_floor))

    traced = jax.jit(lambda g, steps: three(g, CONVERGENT, steps, 10.0, True))
    for name, g in matrices(jnp.float64).items():
        runs = {"traced": traced(g, jnp.asarray(6))}
        for coefficients in (NS_COEFFICIENTS, DION):
            for eps, eps_floor in ((10.0, False), (10.0, True)):  # ||G|| + 10 and max(||G||, 10)
                runs[len(coefficients), eps_floor] = three(g, coefficients, 5, eps, eps_floor)
        for case, (expected, forced, dispatched) in runs.items():
            np.testing.assert_allclose(forced, expected, atol=1e-10, err_msg=f"{name} {case}")
            # By default the Gram iteration runs only where it needs fewer flops (long side >= 1.5 short side).
            gram = max(g.shape) >= 1.5 * min(g.shape)
            assert_trees_equal(dispatched, forced if gram else expected)


def test_bad_input_raises_naming_it():
    with pytest.raises(ValueError, match=r"gram_newton_schulz: x must be a 2-D array, got shape \(3,\)"):
        jz.gram_newton_schulz(jnp.ones(3))
    with pytest.raises(ValueError, match=r"gram_newton_schulz: x must be a 2-D array, got shape \(2, 3, 4\)"):
        jz.gram_newton_schulz(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="gram_newton_schulz: x must be real, got complex64"):
        jz.gram_newton_schulz(jnp.ones((2, 2), jnp.complex64))
    for restarts in ((0,), (-1,), (1.5,), (True,), 3, "ab"):
        with pytest.raises(ValueError, match="gram_newton_schulz: restarts must be None or step indices >= 1"):
            jz.gram_newton_schulz(jnp.ones((2, 3)), restarts=restarts)


# --- as Muon's iteration (scale_by_muon(ns_method="gram")) -----------------------------------------------


def _muon_run(ns_method, dtype, steps=4, **options):
    rng = np.random.default_rng(3)
    params = {"wide": jnp.asarray(rng.normal(size=(4, 12)), dtype), "tall": jnp.asarray(rng.normal(size=(10, 3)), dtype),
              "square": jnp.asarray(rng.normal(size=(4, 5)), dtype)}
    tx = jz.scale_by_muon(ns_method=ns_method, **options)
    state, outputs, update = tx.init(params), [], jax.jit(tx.update)
    for t in range(steps):
        grads = jax.tree.map(lambda p: jnp.sin(p * (t + 1)), params)
        updates, state = update(grads, state)
        outputs.append(updates)
    return outputs


def test_muon_with_the_gram_iteration_is_muon_up_to_rounding(x64):
    # float64: the same polynomial (the 4 x 5 leaf, below the aspect ratio, runs the plain iteration either way).
    assert_trees_close(_muon_run("gram", jnp.float64), _muon_run("plain", jnp.float64), rtol=1e-10, atol=1e-12)
    rows = dict(ns_coeffs="dion", ns_steps=5, eps_floor=True)
    assert_trees_close(_muon_run("gram", jnp.float64, **rows), _muon_run("plain", jnp.float64, **rows),
                       rtol=1e-10, atol=1e-12)


def test_muon_with_the_gram_iteration_in_float32_and_bad_options():
    assert_trees_close(_muon_run("gram", jnp.float32, steps=2), _muon_run("plain", jnp.float32, steps=2),
                       rtol=0, atol=2e-5)
    assert jz.muon(0.02, ns_method="gram") is not None
    with pytest.raises(ValueError, match="scale_by_muon: ns_method must be one of 'plain', 'gram', got 'fast'"):
        jz.scale_by_muon(ns_method="fast")
    with pytest.raises(ValueError, match="ns_method='gram'.*preconditioning='aol'"):
        jz.scale_by_muon(ns_method="gram", preconditioning="aol")


def test_muon_runs_the_gram_iteration_only_on_matrices_long_enough():
    def products(ns_method, shape):
        tx = jz.scale_by_muon(ns_method=ns_method)
        g = jnp.ones(shape)
        return str(jax.make_jaxpr(tx.update)(g, tx.init(g))).count("dot_general")

    assert products("gram", (4, 12)) != products("plain", (4, 12))  # the Gram path was taken
    assert products("gram", (4, 5)) == products("plain", (4, 5))  # below the aspect ratio: the plain iteration


def test_a_float16_iteration_of_a_matrix_with_a_large_norm_is_not_silently_zero():
    # ||G||_F = 362 here: its float16 sum of squares overflowed to inf and G / inf gave an all-zero update.
    g = jnp.asarray(np.random.default_rng(4).normal(size=(128, 1024)), jnp.float32)
    for orthogonalize in (jz.newton_schulz, jz.gram_newton_schulz):
        np.testing.assert_allclose(orthogonalize(g, dtype=jnp.float16), orthogonalize(g), atol=3e-3)
    tx = jz.scale_by_muon(ns_dtype=jnp.float16)
    update, _ = tx.update(g, tx.init(g))
    assert float(jnp.abs(update).max()) > 0.05


@pytest.mark.parametrize("bad, name", [(dict(ns_steps=-1), "ns_steps"), (dict(ns_steps=2.5), "ns_steps"),
                                       (dict(eps=-1.0), "eps"), (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
                                       (dict(dtype=jnp.int32), "dtype")])
def test_both_iterations_name_a_bad_argument(bad, name):
    for orthogonalize in (jz.newton_schulz, jz.gram_newton_schulz):
        with pytest.raises(ValueError, match=f"{orthogonalize.__name__}: {name}"):
            orthogonalize(jnp.ones((2, 3)), **bad)


@pytest.mark.parametrize("fn", [jz.newton_schulz, jz.gram_newton_schulz], ids=["plain", "gram"])
def test_bfloat16_iterations_keep_the_coefficients_unrounded(fn):
    """In bfloat16 the coefficients (3.4445, -4.775, 2.0315) round to (3.4375, -4.78125, 2.03125), another polynomial:
    both iterations keep them in float32 (the Gram one rounded them, the plain one did before it too)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 64))
    exact = jnp.asarray(NS_COEFFICIENTS)
    rounded = exact.astype(jnp.bfloat16).astype(jnp.float32)
    assert not bool(jnp.all(rounded == exact))
    assert not bool(jnp.all(fn(x, exact, 5, dtype=jnp.bfloat16) == fn(x, rounded, 5, dtype=jnp.bfloat16)))
