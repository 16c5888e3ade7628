"""The optimizer recipes: float64 references, Optax bit for bit, and jit/vmap/grad behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded, unpack
from tests import reference
from tests.conftest import (
    USER_XLA_FLAGS,
    assert_programs_agree,
    assert_trees_close,
    assert_trees_equal,
    assert_vmap_matches_separate_runs,
    grad_fn,
    make_params,
    run_ours,
    run_reference,
    run_together,
)

MASK = {"dense": {"w": True, "b": False}, "scale": True}


def _masked_adamw_reference(params):
    # Decay applies to w and scale but not b: run the two references leaf by leaf.
    with_decay = run_reference(reference.adam(0.01, weight_decay=0.2), params)
    without = run_reference(reference.adam(0.01), params)
    return [
        {"dense": {"w": a["dense"]["w"], "b": b["dense"]["b"]}, "scale": a["scale"]} for a, b in zip(with_decay, without)
    ]


CASES = {
    "sgd": (lambda: jz.sgd(0.05), lambda: optax.sgd(0.05), lambda p: run_reference(reference.sgd(0.05), p)),
    "sgd_momentum": (
        lambda: jz.sgd(0.02, momentum=0.9),
        lambda: optax.sgd(0.02, momentum=0.9),
        lambda p: run_reference(reference.sgd(0.02, momentum=0.9), p),
    ),
    "sgd_nesterov": (
        lambda: jz.sgd(0.02, 0.9, nesterov=True),
        lambda: optax.sgd(0.02, 0.9, nesterov=True),
        lambda p: run_reference(reference.sgd(0.02, momentum=0.9, nesterov=True), p),
    ),
    "adam": (lambda: jz.adam(0.01), lambda: optax.adam(0.01), lambda p: run_reference(reference.adam(0.01), p)),
    "adam_nesterov_eps_root": (
        lambda: jz.adam(0.01, 0.85, 0.99, 1e-6, 1e-8, nesterov=True),
        lambda: optax.adam(0.01, 0.85, 0.99, 1e-6, 1e-8, nesterov=True),
        lambda p: run_reference(reference.adam(0.01, 0.85, 0.99, 1e-6, 1e-8, nesterov=True), p),
    ),
    "adamw": (
        lambda: jz.adamw(0.01, weight_decay=0.2),
        lambda: optax.adamw(0.01, weight_decay=0.2),
        lambda p: run_reference(reference.adam(0.01, weight_decay=0.2), p),
    ),
    "adamw_defaults": (
        lambda: jz.adamw(0.01),
        lambda: optax.adamw(0.01),
        lambda p: run_reference(reference.adam(0.01, weight_decay=1e-4), p),
    ),
    "nadam": (lambda: jz.nadam(0.01), lambda: optax.nadam(0.01), lambda p: run_reference(reference.adam(0.01, nesterov=True), p)),
    "nadam_without_nesterov": (
        lambda: jz.nadam(0.01, nesterov=False),
        lambda: optax.nadam(0.01, nesterov=False),
        lambda p: run_reference(reference.adam(0.01), p),
    ),
    "nadamw": (
        lambda: jz.nadamw(0.01, weight_decay=0.2),
        lambda: optax.nadamw(0.01, weight_decay=0.2),
        lambda p: run_reference(reference.adam(0.01, nesterov=True, weight_decay=0.2), p),
    ),
    "amsgrad": (lambda: jz.amsgrad(0.01), lambda: optax.amsgrad(0.01), lambda p: run_reference(reference.amsgrad(0.01), p)),
    "amsgrad_uncorrected": (
        lambda: jz.amsgrad(0.01, 0.8, 0.9, bias_correction_mu=False, bias_correction_nu=False),
        lambda: optax.amsgrad(0.01, 0.8, 0.9, bias_correction_mu=False, bias_correction_nu=False),
        lambda p: run_reference(reference.amsgrad(0.01, 0.8, 0.9, bias_correction_mu=False, bias_correction_nu=False), p),
    ),
    "adagrad": (lambda: jz.adagrad(0.1), lambda: optax.adagrad(0.1), lambda p: run_reference(reference.rss(0.1), p)),
    "adadelta": (
        lambda: jz.adadelta(0.5, 0.8, 1e-5, weight_decay=0.1),
        lambda: optax.adadelta(0.5, 0.8, 1e-5, weight_decay=0.1),
        lambda p: run_reference(reference.adadelta(0.5, 0.8, 1e-5, weight_decay=0.1), p),
    ),
    "adadelta_default_rate": (
        lambda: jz.adadelta(),
        lambda: optax.adadelta(1.0),  # Optax's adadelta() would ascend: see the deviation test
        lambda p: run_reference(reference.adadelta(), p),
    ),
    **{
        f"rmsprop_{centered}_{momentum}_{nesterov}_{inside}": (
            lambda centered=centered, momentum=momentum, nesterov=nesterov, inside=inside: jz.rmsprop(
                0.01, 0.9, 1e-4, 0.0, inside, centered, momentum, nesterov
            ),
            lambda centered=centered, momentum=momentum, nesterov=nesterov, inside=inside: optax.rmsprop(
                0.01, 0.9, 1e-4, 0.0, inside, centered, momentum, nesterov
            ),
            lambda p, centered=centered, momentum=momentum, nesterov=nesterov, inside=inside: run_reference(
                reference.rms(0.01, 0.9, 1e-4, 0.0, inside, False, centered, momentum, nesterov), p
            ),
        )
        for centered in (False, True)
        for momentum, nesterov in ((None, False), (0.9, False), (0.9, True))
        for inside in (True, False)
    },
    "rmsprop_bias_correction": (
        lambda: jz.rmsprop(0.01, 0.9, 1e-4, 1.0, bias_correction=True, centered=True),
        lambda: optax.rmsprop(0.01, 0.9, 1e-4, 1.0, bias_correction=True, centered=True),
        lambda p: run_reference(reference.rms(0.01, 0.9, 1e-4, 1.0, True, True, True), p),
    ),
    "lars": (
        lambda: jz.lars(0.5, weight_decay=0.01, trust_coefficient=0.02),
        lambda: optax.lars(0.5, weight_decay=0.01, trust_coefficient=0.02),
        lambda p: run_reference(reference.lars(0.5, weight_decay=0.01, trust_coefficient=0.02), p),
    ),
    "lars_nesterov": (
        lambda: jz.lars(0.5, trust_coefficient=0.02, eps=1e-3, momentum=0.8, nesterov=True),
        lambda: optax.lars(0.5, trust_coefficient=0.02, eps=1e-3, momentum=0.8, nesterov=True),
        lambda p: run_reference(reference.lars(0.5, trust_coefficient=0.02, eps=1e-3, momentum=0.8, nesterov=True), p),
    ),
    "lamb": (
        lambda: jz.lamb(0.01, weight_decay=0.1),
        lambda: optax.lamb(0.01, weight_decay=0.1),
        lambda p: run_reference(reference.lamb(0.01, weight_decay=0.1), p),
    ),
    "adamw_mask": (
        lambda: jz.adamw(0.01, weight_decay=0.2, mask=MASK),
        lambda: optax.adamw(0.01, weight_decay=0.2, mask=MASK),
        _masked_adamw_reference,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name, x64):
    ours, _, expected = CASES[name]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params, jit=False)
    assert_trees_close(iterates, expected(params), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs, _ = CASES[name]
    params = make_params(jnp.float32)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))


def test_zero_epsilons_keep_optax_bits():
    # With eps = eps_root = 0 ours gives a step of 0 where the denominator is 0 (Optax: 0/0); elsewhere the guard
    # must not change a bit. It did: a guard around the whole denominator hid m / sqrt(v) from XLA's rewrite into
    # m * rsqrt(v), which Optax's graph gets (ulps from the first steps, 1e-5 apart after 12).
    zero = dict(eps=0.0, eps_root=0.0)
    pairs = [(jz.adam(0.03, nesterov=True, **zero), optax.adam(0.03, nesterov=True, **zero)),
             (jz.amsgrad(0.03, **zero), optax.amsgrad(0.03, **zero)),
             (jz.novograd(0.03, **zero), optax.novograd(0.03, **zero)),
             (jz.ademamix(0.03, alpha=2.0, **zero), optax.contrib.ademamix(0.03, alpha=2.0, **zero))]
    runs = run_together([tx for pair in pairs for tx in pair], make_params(jnp.float32), steps=12)
    for (ours, _), (theirs, _) in zip(runs[::2], runs[1::2]):
        # As users compile (XLA may contract), the where changes which products XLA fuses with their sums there.
        assert_programs_agree(ours, theirs)


def test_readme_quick_start_runs():
    params = make_params()
    tx = jz.chain(jz.scale_by_adam(), jz.add_decayed_weights(1e-4), jz.scale_by_learning_rate(1e-3))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    new_params, _ = step(params, state, jax.tree.map(jnp.ones_like, params))
    assert_trees_close(new_params, jax.tree.map(lambda p: p - 1e-3 * (1 + 1e-4 * p), params), rtol=1e-5)


@pytest.mark.parametrize("factory", [lambda: jz.adamw(1e-3), lambda: jz.sgd(lambda t: 0.1 / (1 + t), 0.9)])
def test_jit_compiles_once(factory):
    tx = factory()
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)  # runs only while tracing
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    params = make_params()
    state = tx.init(params)
    for t in range(1, 4):
        params, state = step(params, state, jax.tree.map(lambda p: grad_fn(p, t, jnp), params))
    assert len(traces) == 1


@pytest.mark.parametrize("name", ["sgd_momentum", "adamw", "adam_nesterov_eps_root"])
def test_vmap_over_parameter_sets_equals_separate_runs(name):
    assert_vmap_matches_separate_runs(CASES[name][0](), steps=5, rtol=1e-5, atol=1e-6)


def _loss_after_steps(optimizer, learning_rate, params, steps=6):
    tx = optimizer(learning_rate)
    state = tx.init(params)
    for t in range(1, steps + 1):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        updates, state = tx.update(grads, state, params)
        params = jz.apply_updates(params, updates)
    return sum(jnp.sum(p**2) for p in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "optimizer, ref",
    [
        (lambda lr: jz.sgd(lr, momentum=0.9), lambda lr: reference.sgd(lr, momentum=0.9)),
        (jz.adam, reference.adam),
        (lambda lr: jz.adamw(lr, weight_decay=0.1), lambda lr: reference.adam(lr, weight_decay=0.1)),
    ],
)
def test_grad_through_steps_wrt_learning_rate(optimizer, ref, x64):
    params = make_params(jnp.float64)
    lr = 0.03
    ours = jax.jit(jax.grad(lambda rate: _loss_after_steps(optimizer, rate, params)))(lr)

    def reference_loss(rate):
        finals = run_reference(ref(rate), params, steps=6)[-1]
        return sum(np.sum(p**2) for p in jax.tree.leaves(finals))

    h = 1e-6
    central = (reference_loss(lr + h) - reference_loss(lr - h)) / (2 * h)
    assert abs(float(ours) - central) <= 1e-6 * max(1.0, abs(central))
    assert abs(central) > 1e-3  # the learning rate really matters here


# Gradients through optimizer steps where some gradient entries, a whole leaf's gradient, a whole step's gradient
# or the distance moved are exactly 0: the square (cube) roots of those sums of squares had an infinite derivative
# there, and the chain rule gave inf * 0 = NaN (Optax's too), as did a division formed before the `where` that
# discards it (MoMo, Polyak). The first step's gradient is all 0, and a zero param has a zero gradient (MADGRAD's
# cube root); the 2-D zero leaf is Muon's all-zero matrix. COCOB's derivative w.r.t. the params was 1-5% off under
# jit with a traced rate (jnp.maximum's derivative compares two differently fused copies of |g|).
THROUGH_ZEROS = {
    "adam": jz.adam,
    "lamb": jz.lamb,
    "adafactor": jz.adafactor,
    "novograd": jz.novograd,
    "adopt": jz.adopt,
    "prodigy": jz.prodigy,
    "dog": jz.dog,
    "clip+block_rms+adam": lambda lr: jz.chain(jz.clip_by_global_norm(1.0), jz.clip_by_block_rms(1.0), jz.adam(lr)),
    "momo": jz.momo,
    "momo_adam": jz.momo_adam,
    "polyak_sgd": lambda lr: jz.polyak_sgd(scaling=lr),
    "madgrad": jz.madgrad,
    "dowg": lambda lr: jz.chain(jz.dowg(), jz.scale(lr)),
    "cocob": jz.cocob,
    "mechanize": lambda lr: jz.mechanize(jz.sgd(lr)),
    "muon": jz.muon,
    "muon_schatten": lambda lr: jz.muon(lr, preconditioning="schatten"),
    "mars_adamw": jz.mars_adamw,
    "psgd_kron": jz.psgd_kron,
    "soap_normalized": lambda lr: jz.soap(lr, normalize_grads=True, max_precond_dim=1, blocking=False),  # no eigh
    "shampoo_eigh": lambda lr: jz.shampoo(lr, eps=1e-4, inverse_root="eigh", precondition_frequency=1),
}


@pytest.mark.parametrize("name", list(THROUGH_ZEROS))
def test_grad_through_steps_with_exactly_zero_gradients_is_finite_and_right(name, x64):
    target = {"w": jnp.array([[1.0, 0.0], [2.0, -1.0]]), "b": jnp.array([0.5, 0.0]), "unused": jnp.zeros((2, 3))}
    weight = {"w": jnp.array([[1.0, 0.0], [1.0, 1.0]]), "b": jnp.array([1.0, 0.0]), "unused": jnp.zeros((2, 3))}

    def loss(p, scale=1.0):
        return scale * sum(jnp.sum(weight[k] * ((p[k] - target[k]) ** 2 + 0.1 * (p[k] - target[k]) ** 4)) for k in p)

    def loss_after_steps(params, rate):
        tx = THROUGH_ZEROS[name](rate)
        state = tx.init(params)

        def step(carry, scale):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, scale)
            updates, state = tx.update(grads, state, params, value=value)
            return (jz.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, state), jnp.array([0.0, 1.0, 1.0]))
        return jnp.sum(jnp.asarray([jnp.sum((x - 0.3) ** 2) for x in jax.tree.leaves(params)]))

    params = {"w": jnp.array([[1.5, 0.5], [-0.5, 2.0]]), "b": jnp.array([1.0, -1.0]), "unused": jnp.zeros((2, 3))}
    value_and_grads = jax.jit(jax.value_and_grad(loss_after_steps, argnums=(0, 1)))  # one program for both
    _, (d_params, d_rate) = value_and_grads(params, 0.1)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(d_params))
    h = 1e-6
    loss_at = lambda p, rate: value_and_grads(p, rate)[0]  # noqa: E731
    central = (loss_at(params, 0.1 + h) - loss_at(params, 0.1 - h)) / (2 * h)
    np.testing.assert_allclose(float(d_rate), float(central), rtol=1e-4, atol=1e-9)
    direction = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(0).uniform(-1, 1, x.shape)), params)
    moved = lambda e: jax.tree.map(lambda x, d: x + e * d, params, direction)  # noqa: E731
    central = (loss_at(moved(h), 0.1) - loss_at(moved(-h), 0.1)) / (2 * h)
    along = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(d_params), jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(along), float(central), rtol=1e-4, atol=1e-9)


_COCOB_THROUGH_JIT = """
import jax, jax.numpy as jnp, numpy as np
import jaxopt_zoo as jz
rng = np.random.default_rng(0)
weights, targets = rng.uniform(0.5, 2, (3, 3, 4)), rng.uniform(-1, 1, (3, 3, 4))

def loss_after_steps(rate, p):
    tx = jz.cocob(rate)
    state = tx.init(p)
    for a, t in zip(weights, targets):
        g = jax.grad(lambda q: jnp.sum(a * (q - t) ** 2 + 0.1 * (q - t) ** 4))(p)
        updates, state = tx.update(g, state, p)
        p = jz.apply_updates(p, updates)
    return jnp.sum((p - 0.3) ** 2)

p0 = jnp.asarray(rng.uniform(-1, 1, (3, 4)))
jitted = jax.jit(jax.grad(loss_after_steps, argnums=1))(1.0, p0)
np.testing.assert_allclose(jitted, jax.grad(loss_after_steps, argnums=1)(1.0, p0), rtol=1e-12)
"""


def test_cocob_grad_wrt_params_under_jit_with_a_traced_rate_is_the_eager_one():
    """COCOB's running max(L, |g|): jnp.maximum's derivative compares |g| with max(L, |g|), and a jitted program
    as users compile it (XLA's default flags, not the suite's) fused the two copies of |g| differently, so the
    branch was dropped: the gradient w.r.t. the params was 1-5% off (Optax's is). In a process of its own."""
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(USER_XLA_FLAGS))
    result = subprocess.run([sys.executable, "-c", _COCOB_THROUGH_JIT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_sgd_rejects_nesterov_without_momentum():
    with pytest.raises(ValueError, match="sgd: nesterov=True needs a momentum"):
        jz.sgd(0.1, nesterov=True)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.sgd(-0.1), r"learning_rate must be >= 0, got -0\.1"),
        (lambda: jz.sgd(0.1, momentum=-0.9), r"sgd: momentum must be >= 0"),
        (lambda: jz.adam(1e-3, b1=1.2), r"b1 must be in \[0, 1\), got 1\.2"),
        (lambda: jz.adam(1e-3, eps=-1.0), r"eps must be >= 0"),
        (lambda: jz.adamw(1e-3, weight_decay=-0.01), r"weight_decay must be >= 0, got -0\.01"),
        (lambda: jz.adamw("fast"), r"learning_rate must be a finite real number, got 'fast'"),
        (lambda: jz.sgd(0.1, 0.9, 0.9), r"sgd: nesterov must be True or False, got 0\.9"),
        (lambda: jz.adam(1e-3, nesterov=1), r"nesterov must be True or False, got 1"),
    ],
)
def test_bad_hyperparameters(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_mismatched_grads_reported_even_for_stateless_sgd():
    params = make_params()
    tx = jz.sgd(0.1)
    grads = {"dense": {"w": params["dense"]["w"], "bias": params["dense"]["b"]}, "scale": params["scale"]}
    updates, _ = tx.update(grads, tx.init(params), params)
    with pytest.raises(ValueError, match=r"only in updates: \['dense'\]\['bias'\]"):
        jz.apply_updates(params, updates)


NONE_LEARNING_RATE = {
    name: getattr(jz, name) for name in
    ("sgd", "adam", "adamw", "nadam", "nadamw", "amsgrad", "adagrad", "adadelta", "rmsprop", "lars", "lamb", "sm3")
}


@pytest.mark.parametrize("name", list(NONE_LEARNING_RATE))
def test_learning_rate_none_descends_at_a_rate_of_one(name):
    """``learning_rate=None`` is a rate of 1 in every alias; Optax's aliases then skip the scaling and climb."""
    params = {"x": jnp.asarray([2.0, -3.0])}
    grads = jax.grad(lambda p: jnp.sum(0.1 * p["x"] ** 2))  # SGD at rate 1 contracts x by 0.8
    factory = NONE_LEARNING_RATE[name]

    def iterates(tx, steps=5):
        p, state, out = params, tx.init(params), []
        for _ in range(steps):
            updates, state = tx.update(grads(p), state, p)
            p = jz.apply_updates(p, updates)
            out.append(p)
        return out

    assert_trees_equal(iterates(factory(None)), iterates(factory(1.0)))
    first = iterates(factory(None), steps=1)[0]["x"]
    assert np.all(np.abs(np.asarray(first)) < np.abs(np.asarray(params["x"])))  # downhill
    if name == "adadelta":  # the deviation this guards, where Optax's own default is None
        optax_first = optax.adadelta().update(grads(params), optax.adadelta().init(params), params)[0]["x"]
        assert np.all(np.sign(np.asarray(optax_first)) == np.sign(np.asarray(params["x"])))  # uphill


@pytest.mark.parametrize("rate", [np.uint32(5), np.uint8(5), np.int64(5), 5], ids=["uint32", "uint8", "int64", "int"])
def test_an_integer_learning_rate_descends_as_its_float(rate):
    # An unsigned NumPy rate times the descent's -1 raised OverflowError (uint32) or wrapped (Optax: the same).
    params = {"x": jnp.asarray([[2.0, -3.0]])}
    for alias in (jz.sgd, jz.sm3):
        updates, _ = alias(rate).update(params, alias(rate).init(params), params)
        assert_trees_equal(updates, alias(5.0).update(params, alias(5.0).init(params), params)[0])


def test_lamb_variant_of_widely_used_code_matches_its_reference(x64):
    tx = jz.chain(
        jz.scale_by_adam(0.9, 0.999, 1e-6, bias_correction=False),
        jz.add_decayed_weights(0.1),
        jz.scale_by_trust_ratio(max_param_norm=1.0),
        jz.scale_by_learning_rate(0.01),
    )
    params = make_params(jnp.float64)
    iterates, _ = run_ours(tx, params)
    expected = run_reference(reference.lamb(0.01, weight_decay=0.1, bias_correction=False, max_param_norm=1.0), params)
    assert_trees_close(iterates, expected, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.rmsprop(0.1, nesterov=True), r"rmsprop: nesterov=True needs a momentum"),
        (lambda: jz.rmsprop(0.1, centered=1), r"rmsprop: centered must be True or False"),
        (lambda: jz.adagrad(0.1, initial_accumulator_value=-1.0), r"initial_accumulator_value must be >= 0"),
        (lambda: jz.adadelta(rho=1.5), r"rho must be in \[0, 1\], got 1\.5"),
        (lambda: jz.lars(0.1, trust_coefficient=-1.0), r"trust_coefficient must be >= 0"),
        (lambda: jz.lamb(0.1, b2=1.0), r"b2 must be in \[0, 1\)"),
        (lambda: jz.amsgrad(-1.0), r"learning_rate must be >= 0"),
        (lambda: jz.nadamw(0.1, weight_decay=-1.0), r"weight_decay must be >= 0"),
    ],
)
def test_bad_hyperparameters_of_the_zoo(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize("name", list(CASES))
def test_state_can_be_donated(name):
    # Users jit the step with donate_argnums; no two state leaves may share a buffer.
    tx = CASES[name][0]()
    params = make_params()
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    updates, state = step(params, state, jax.tree.map(jnp.ones_like, params))
    given = state
    updates, state = step(params, state, jax.tree.map(jnp.ones_like, params))
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    # Each donated leaf was taken: one the step never reads is left out of the program, and on a GPU JAX then
    # warns "Some donated buffers were not usable" at every step.
    unused = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(given)
              if not x.is_deleted()]
    assert not unused, unused


# 8-bit state through the aliases: every storage option reaches its transform.

Q8 = jz.Blockwise8Bit()

# name: (8-bit optimizer, the same with default storage, (int8 moments, uint8 moments) per quantized leaf)
EIGHT_BIT = {
    "sgd_momentum": (lambda: jz.sgd(0.05, 0.9, accumulator_dtype=Q8), lambda: jz.sgd(0.05, 0.9), (1, 0)),
    "sgd_nesterov": (lambda: jz.sgd(0.05, 0.9, True, Q8), lambda: jz.sgd(0.05, 0.9, True), (1, 0)),
    "adam": (lambda: jz.adam(1e-2, mu_dtype=Q8, nu_dtype=Q8), lambda: jz.adam(1e-2), (1, 1)),
    "adamw": (
        lambda: jz.adamw(1e-2, mu_dtype=Q8, nu_dtype=Q8, weight_decay=0.1),
        lambda: jz.adamw(1e-2, weight_decay=0.1),
        (1, 1),
    ),
    "nadam": (lambda: jz.nadam(1e-2, mu_dtype=Q8, nu_dtype=Q8), lambda: jz.nadam(1e-2), (1, 1)),
    "nadamw": (lambda: jz.nadamw(1e-2, mu_dtype=Q8, nu_dtype=Q8), lambda: jz.nadamw(1e-2), (1, 1)),
    "amsgrad": (lambda: jz.amsgrad(1e-2, mu_dtype=Q8, nu_dtype=Q8), lambda: jz.amsgrad(1e-2), (1, 2)),
    "adagrad": (lambda: jz.adagrad(0.1, accumulator_dtype=Q8), lambda: jz.adagrad(0.1), (0, 1)),
    "adadelta": (
        lambda: jz.adadelta(0.5, weight_decay=0.1, accumulator_dtype=Q8),
        lambda: jz.adadelta(0.5, weight_decay=0.1),
        (0, 2),
    ),
    "rmsprop": (lambda: jz.rmsprop(1e-2, nu_dtype=Q8), lambda: jz.rmsprop(1e-2), (0, 1)),
    "rmsprop_momentum": (
        lambda: jz.rmsprop(1e-2, momentum=0.9, nesterov=True, nu_dtype=Q8, accumulator_dtype=Q8),
        lambda: jz.rmsprop(1e-2, momentum=0.9, nesterov=True),
        (1, 1),
    ),
    "rmsprop_centered": (
        lambda: jz.rmsprop(1e-2, centered=True, nu_dtype=Q8, mu_dtype=Q8),
        lambda: jz.rmsprop(1e-2, centered=True),
        (1, 1),
    ),
    "rmsprop_centered_momentum": (
        lambda: jz.rmsprop(1e-2, centered=True, momentum=0.9, nu_dtype=Q8, mu_dtype=Q8, accumulator_dtype=Q8),
        lambda: jz.rmsprop(1e-2, centered=True, momentum=0.9),
        (2, 1),
    ),
    "lars": (
        lambda: jz.lars(0.5, weight_decay=0.01, accumulator_dtype=Q8),
        lambda: jz.lars(0.5, weight_decay=0.01),
        (1, 0),
    ),
    "lamb": (
        lambda: jz.lamb(1e-2, weight_decay=0.1, mu_dtype=Q8, nu_dtype=Q8),
        lambda: jz.lamb(1e-2, weight_decay=0.1),
        (1, 1),
    ),
}


def eight_bit_params():
    """A leaf large enough to be quantized (16384 elements) and one that stays float32."""
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(64, 256)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
    }


def check_eight_bit_state(state, expected_counts):
    """``state`` holds (int8, uint8) 8-bit leaves for "w" as expected, and only float32 arrays for "b"."""
    encoded = [x for x in jax.tree.leaves(state) if is_encoded(x)]
    codes = [x.dtype for x in encoded]
    assert (codes.count(jnp.int8), codes.count(jnp.uint8)) == expected_counts
    assert len(codes) == sum(expected_counts)
    groups, length = jz.Blockwise8Bit().layout((64, 256))  # 8 groups of one block of 32 with 8 devices
    for x in encoded:
        assert x.shape == (64, groups, length + 4, 256 // (groups * length))
        assert unpack(x)[1].dtype == jnp.float32
    paths = jax.tree_util.tree_flatten_with_path(state)[0]
    at_b = [leaf for path, leaf in paths if path and path[-1] == jax.tree_util.DictKey("b")]
    at_w = [leaf for path, leaf in paths if path and path[-1] == jax.tree_util.DictKey("w")]
    assert len(at_b) == len(at_w) == len(encoded)  # every "w" moment is quantized; "b" has as many
    for leaf in at_b:
        assert not is_encoded(leaf) and leaf.dtype == jnp.float32 and leaf.shape == (8,)


def summed_updates(tx, params, steps=5):
    """The sum of ``steps`` jitted updates along the trajectory on conftest's gradient field; each must be finite."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    total = jax.tree.map(jnp.zeros_like, params)
    for t in range(1, steps + 1):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        updates, state = update(grads, state, params)
        for leaf in jax.tree.leaves(updates):
            assert bool(jnp.all(jnp.isfinite(leaf)))
        total = jax.tree.map(jnp.add, total, updates)
        params = jz.apply_updates(params, updates)
    return total, state


def assert_updates_close(ours, reference, rtol):
    for path, a in jax.tree_util.tree_flatten_with_path(ours)[0]:
        b = reference
        for key in path:
            b = b[key.key]
        error = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        assert error < rtol, f"{jax.tree_util.keystr(path)}: relative error {error:.3g}"


def assert_eight_bit_state_tracks_full_precision(eight_bit, full, counts, b_rtol=None):
    """``eight_bit`` keeps the expected 8-bit leaves (``counts``, see :func:`check_eight_bit_state`) before and after
    five steps, its summed updates are within 5% of those of ``full`` (the same optimizer with full-precision
    state), equal on "b" (kept in float32; within ``b_rtol`` if given), in under 0.3 of ``full``'s state bytes."""
    params = eight_bit_params()
    check_eight_bit_state(eight_bit.init(params), counts)
    ours, state = summed_updates(eight_bit, params)
    check_eight_bit_state(state, counts)
    expected, full_state = summed_updates(full, params)
    assert_updates_close(ours, expected, rtol=0.05)
    if b_rtol is None:
        np.testing.assert_array_equal(ours["b"], expected["b"])
    else:
        np.testing.assert_allclose(ours["b"], expected["b"], rtol=b_rtol)
    assert jz.storage.state_bytes(state) < 0.3 * jz.storage.state_bytes(full_state)


@pytest.mark.parametrize("name", list(EIGHT_BIT))
def test_eight_bit_state_through_the_alias(name):
    eight_bit, default, counts = EIGHT_BIT[name]
    assert_eight_bit_state_tracks_full_precision(eight_bit(), default(), counts, b_rtol=1e-6)


STORAGE_OPTIONS = [
    ("sgd", lambda **kw: jz.sgd(0.1, 0.9, **kw), "accumulator_dtype"),
    ("sgd", lambda **kw: jz.sgd(0.1, **kw), "accumulator_dtype"),  # checked even without momentum
    *[
        (name, lambda name=name, **kw: getattr(jz, name)(1e-3, **kw), arg)
        for name in ("adam", "adamw", "nadam", "nadamw", "amsgrad", "lamb")
        for arg in ("mu_dtype", "nu_dtype")
    ],
    ("adagrad", lambda **kw: jz.adagrad(0.1, **kw), "accumulator_dtype"),
    ("adadelta", lambda **kw: jz.adadelta(**kw), "accumulator_dtype"),
    ("lars", lambda **kw: jz.lars(0.1, **kw), "accumulator_dtype"),
    *[("rmsprop", lambda **kw: jz.rmsprop(1e-3, **kw), arg) for arg in ("nu_dtype", "mu_dtype", "accumulator_dtype")],
    ("rmsprop", lambda **kw: jz.rmsprop(1e-3, centered=True, momentum=0.9, **kw), "mu_dtype"),
]


@pytest.mark.parametrize("bad", [jnp.int8, jnp.float8_e4m3fn, "x"], ids=["int8", "float8", "string"])
@pytest.mark.parametrize(
    "owner, factory, arg", STORAGE_OPTIONS, ids=[f"{o}-{a}-{i}" for i, (o, _, a) in enumerate(STORAGE_OPTIONS)]
)
def test_bad_storage_option_names_the_argument(owner, factory, arg, bad):
    with pytest.raises(ValueError, match=rf"^{owner}: {arg}"):
        factory(**{arg: bad})


def test_centered_rmsprop_stays_finite_under_a_steady_gradient():
    # v - m^2 of an unchanging gradient rounds below -eps in float32: Optax's steps are NaN there (10% of these
    # entries after 129 steps of decay 0.9, 18% on the first step of decay 0).
    g = {"w": jnp.asarray(np.random.default_rng(0).uniform(-1.2, 1.2, 20000), jnp.float32)}
    for decay, steps in ((0.0, 1), (0.5, 40), (0.9, 200)):
        tx = jz.rmsprop(0.1, decay=decay, centered=True)
        step = lambda _, carry, tx=tx: tx.update(g, carry[1])
        updates, _ = jax.jit(lambda state, step=step, steps=steps: jax.lax.fori_loop(0, steps, step, (g, state)))(
            tx.init(g))
        assert bool(jnp.all(jnp.isfinite(updates["w"]))), decay


@pytest.mark.parametrize("storage", [Q8, jnp.bfloat16])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_centered_rmsprop_with_low_precision_moments_stays_finite_under_steady_gradients(storage, bias_correction):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(64, 256)), jnp.float32)}
    tx = jz.chain(jz.scale_by_stddev(0.9, bias_correction=bias_correction, mu_dtype=storage, nu_dtype=storage))
    state, update = tx.init(params), jax.jit(tx.update)
    for t in range(50):
        grads = jax.tree.map(lambda p: p * (1 + 0.01 * np.sin(t)), params)
        updates, state = update(grads, state, params)
        assert bool(jnp.all(jnp.isfinite(updates["w"]))), f"non-finite update at step {t + 1}"


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "amsgrad"])
def test_eager_steps_are_optaxs_eager_steps_bit_for_bit(name):
    """Step by step outside jit, as a notebook runs them: Adam's bias correction formed decay**count with the count
    baked in (an integer power, compiled again at every step and rounded otherwise than Optax's jitted one)."""
    params = make_params()
    ours, theirs = (run_ours(lib_tx, params, steps=6, jit=False)[0] for lib_tx in (
        getattr(jz, name)(1e-2), getattr(optax, name)(1e-2)))
    assert_trees_equal(ours, theirs)
