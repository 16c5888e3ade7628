"""Each transform against its float64 NumPy reference and, bit for bit, against Optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo.transforms import nesterov, trace
from tests import reference
from tests.conftest import assert_trees_close, assert_trees_equal, make_params, run_ours, run_reference, run_together

RTOL64 = 1e-11


def decaying(t):
    return 0.1 * 0.95**t


# (our transformation, the float64 reference of the same published rule)
REFERENCE_CASES = {
    "scale": (lambda: jz.scale(-0.05), lambda: reference.sgd(0.05)),
    "ema": (lambda: jz.chain(jz.ema(0.8), jz.scale_by_learning_rate(0.05)), lambda: reference.ema(0.05, 0.8)),
    "ema_biased": (
        lambda: jz.chain(jz.ema(0.8, debias=False), jz.scale_by_learning_rate(0.05)),
        lambda: reference.ema(0.05, 0.8, debias=False),
    ),
    "scale_by_learning_rate": (lambda: jz.scale_by_learning_rate(0.05), lambda: reference.sgd(0.05)),
    "scale_by_learning_rate_schedule": (lambda: jz.scale_by_learning_rate(decaying), lambda: reference.sgd(decaying)),
    "scale_by_schedule": (lambda: jz.scale_by_schedule(lambda t: -decaying(t)), lambda: reference.sgd(decaying)),
    "trace": (
        lambda: jz.chain(trace(0.9), jz.scale_by_learning_rate(0.02)),
        lambda: reference.sgd(0.02, momentum=0.9),
    ),
    "trace_nesterov": (
        lambda: jz.chain(trace(0.9, nesterov=True), jz.scale_by_learning_rate(0.02)),
        lambda: reference.sgd(0.02, momentum=0.9, nesterov=True),
    ),
    "trace_dampening": (
        lambda: jz.chain(trace(0.8, dampening=0.3), jz.scale_by_learning_rate(0.02)),
        lambda: reference.sgd(0.02, momentum=0.8, dampening=0.3),
    ),
    "trace_dampening_nesterov": (
        lambda: jz.chain(trace(0.8, nesterov=True, dampening=0.3), jz.scale_by_learning_rate(0.02)),
        lambda: reference.sgd(0.02, momentum=0.8, dampening=0.3, nesterov=True),
    ),
    "nesterov": (
        lambda: jz.chain(nesterov(0.9), jz.scale_by_learning_rate(0.02)),
        lambda: reference.sgd(0.02, momentum=0.9, nesterov=True),
    ),
    "scale_by_adam": (
        lambda: jz.chain(jz.scale_by_adam(), jz.scale_by_learning_rate(0.01)),
        lambda: reference.adam(0.01),
    ),
    "scale_by_adam_options": (
        lambda: jz.chain(jz.scale_by_adam(0.8, 0.95, 1e-3, 1e-6), jz.scale_by_learning_rate(decaying)),
        lambda: reference.adam(decaying, 0.8, 0.95, 1e-3, 1e-6),
    ),
    "scale_by_adam_nesterov": (
        lambda: jz.chain(jz.scale_by_adam(nesterov=True), jz.scale_by_learning_rate(0.01)),
        lambda: reference.adam(0.01, nesterov=True),
    ),
    "scale_by_adam_without_bias_correction": (
        lambda: jz.chain(jz.scale_by_adam(0.8, 0.95, 1e-3, bias_correction=False), jz.scale_by_learning_rate(0.01)),
        lambda: reference.adam_without_bias_correction(0.01, 0.8, 0.95, 1e-3),
    ),
    "add_decayed_weights": (
        lambda: jz.chain(jz.add_decayed_weights(0.3), jz.scale_by_learning_rate(0.02)),
        lambda: reference.sgd(0.02, decoupled_decay=0.3),
    ),
    **{
        f"scale_by_amsgrad_{mu}_{nu}": (
            lambda mu=mu, nu=nu: jz.chain(jz.scale_by_amsgrad(0.8, 0.95, 1e-6, 1e-9, None, mu, nu), jz.scale_by_learning_rate(0.01)),
            lambda mu=mu, nu=nu: reference.amsgrad(0.01, 0.8, 0.95, 1e-6, 1e-9, mu, nu),
        )
        for mu in (True, False)
        for nu in (True, False)
    },
    "scale_by_amsgrad_correct_after_max": (
        lambda: jz.chain(jz.scale_by_amsgrad(0.8, 0.95, 1e-6, correct_after_max=True), jz.scale_by_learning_rate(0.01)),
        lambda: reference.torch_adam(0.01, (0.8, 0.95), 1e-6, amsgrad=True),
    ),
    **{
        f"scale_by_rss_{inside}": (
            lambda inside=inside: jz.chain(jz.scale_by_rss(0.3, 1e-3, eps_in_sqrt=inside), jz.scale_by_learning_rate(0.1)),
            lambda inside=inside: reference.rss(0.1, 0.3, 1e-3, inside),
        )
        for inside in (True, False)
    },
    "scale_by_rss_zero_accumulator": (
        lambda: jz.chain(jz.scale_by_rss(0.0, 1e-10, eps_in_sqrt=False), jz.scale_by_learning_rate(0.1)),
        lambda: reference.torch_adagrad(0.1),
    ),
    **{
        f"scale_by_{'stddev' if centered else 'rms'}_{inside}_{corrected}_{initial}": (
            lambda centered=centered, inside=inside, corrected=corrected, initial=initial: jz.chain(
                (jz.scale_by_stddev if centered else jz.scale_by_rms)(0.9, 1e-4, initial, inside, corrected),
                jz.scale_by_learning_rate(0.01),
            ),
            lambda centered=centered, inside=inside, corrected=corrected, initial=initial: reference.rms(
                0.01, 0.9, 1e-4, initial, inside, corrected, centered
            ),
        )
        for centered in (False, True)
        for inside in (True, False)
        for corrected in (False, True)
        for initial in (0.0, 1.0)
        # Centered and bias-corrected from a zero start, the variance estimate is exactly
        # 0 at step 1 (m_hat = g, v_hat = g^2): a rounding-level sign decides the step.
        if not (centered and corrected and initial == 0.0)
    },
    "scale_by_adadelta": (
        lambda: jz.chain(jz.scale_by_adadelta(0.8, 1e-4), jz.scale_by_learning_rate(0.5)),
        lambda: reference.adadelta(0.5, 0.8, 1e-4),
    ),
    **{
        f"scale_by_trust_ratio_{ceiling}": (
            lambda ceiling=ceiling: jz.chain(
                jz.scale_by_adam(eps=1e-6), jz.add_decayed_weights(0.1), jz.scale_by_trust_ratio(max_param_norm=ceiling),
                jz.scale_by_learning_rate(0.01),
            ),
            lambda ceiling=ceiling: reference.lamb(0.01, weight_decay=0.1, max_param_norm=ceiling),
        )
        for ceiling in (None, 1.5)
    },
    "add_decayed_weights_schedule": (
        lambda: jz.chain(jz.add_decayed_weights(lambda t: 0.5 / (1 + t)), jz.scale_by_learning_rate(0.02)),
        lambda: reference.sgd(0.02, decoupled_decay=0.0),  # replaced below: decay varies per step
    ),
}


@pytest.mark.parametrize("name", [n for n in REFERENCE_CASES if n != "add_decayed_weights_schedule"])
def test_matches_float64_reference(name, x64):
    ours, ref = REFERENCE_CASES[name]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params, jit=False)
    assert_trees_close(iterates, run_reference(ref(), params), rtol=RTOL64, atol=1e-13)


def test_scheduled_weight_decay_matches_reference(x64):
    def ref():
        def update(g, state, p, t):
            return -0.02 * (g + 0.5 / t * p), state

        return reference.Reference(lambda p: {}, update)

    ours, _ = REFERENCE_CASES["add_decayed_weights_schedule"]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params, jit=False)
    assert_trees_close(iterates, run_reference(ref(), params), rtol=RTOL64, atol=1e-13)


def test_dampening_leaves_the_first_step_undamped(x64):
    # torch: the buffer starts as the first gradient, so step one is plain SGD.
    params = make_params(jnp.float64)
    ((first, *_), _), ((plain, *_), _) = run_together([
        jz.chain(trace(0.9, dampening=0.5), jz.scale_by_learning_rate(0.1)),
        jz.scale_by_learning_rate(0.1),
    ], params, steps=1)
    assert_trees_close(first, plain, rtol=1e-15)


OPTAX_CASES = {
    "scale": (lambda: jz.scale(-0.05), lambda: optax.scale(-0.05)),
    "ema": (lambda: jz.ema(0.8), lambda: optax.ema(0.8)),
    "ema_biased_bf16": (
        lambda: jz.ema(0.8, debias=False, accumulator_dtype=jnp.bfloat16),
        lambda: optax.ema(0.8, debias=False, accumulator_dtype=jnp.bfloat16),
    ),
    "scale_by_learning_rate": (lambda: jz.scale_by_learning_rate(0.05), lambda: optax.scale_by_learning_rate(0.05)),
    "scale_by_learning_rate_schedule": (
        lambda: jz.scale_by_learning_rate(decaying),
        lambda: optax.scale_by_learning_rate(decaying),
    ),
    "scale_by_schedule": (lambda: jz.scale_by_schedule(decaying), lambda: optax.scale_by_schedule(decaying)),
    "trace": (lambda: trace(0.9), lambda: optax.trace(0.9)),
    "trace_nesterov": (lambda: trace(0.9, nesterov=True), lambda: optax.trace(0.9, nesterov=True)),
    "nesterov": (lambda: nesterov(0.9), lambda: optax.trace(0.9, nesterov=True)),
    "trace_bf16_accumulator": (
        lambda: trace(0.9, accumulator_dtype=jnp.bfloat16),
        lambda: optax.trace(0.9, accumulator_dtype=jnp.bfloat16),
    ),
    "scale_by_adam": (lambda: jz.scale_by_adam(), lambda: optax.scale_by_adam()),
    "scale_by_adam_options": (
        lambda: jz.scale_by_adam(0.8, 0.95, 1e-3, 1e-6),
        lambda: optax.scale_by_adam(0.8, 0.95, 1e-3, 1e-6),
    ),
    "scale_by_adam_nesterov": (lambda: jz.scale_by_adam(nesterov=True), lambda: optax.scale_by_adam(nesterov=True)),
    "scale_by_adam_bf16_mu": (
        lambda: jz.scale_by_adam(mu_dtype=jnp.bfloat16),
        lambda: optax.scale_by_adam(mu_dtype=jnp.bfloat16),
    ),
    "scale_by_amsgrad": (lambda: jz.scale_by_amsgrad(), lambda: optax.scale_by_amsgrad()),
    "scale_by_amsgrad_options": (
        lambda: jz.scale_by_amsgrad(0.8, 0.95, 1e-6, 1e-9, jnp.bfloat16, False, False),
        lambda: optax.scale_by_amsgrad(0.8, 0.95, 1e-6, 1e-9, jnp.bfloat16, False, False),
    ),
    "scale_by_rss": (lambda: jz.scale_by_rss(), lambda: optax.scale_by_rss()),
    "scale_by_rss_options": (lambda: jz.scale_by_rss(0.0, 1e-3), lambda: optax.scale_by_rss(0.0, 1e-3)),
    **{
        f"scale_by_{name}_{inside}_{corrected}": (
            lambda name=name, inside=inside, corrected=corrected: getattr(jz, f"scale_by_{name}")(0.8, 1e-4, 0.5, inside, corrected),
            lambda name=name, inside=inside, corrected=corrected: getattr(optax, f"scale_by_{name}")(0.8, 1e-4, 0.5, inside, corrected),
        )
        for name in ("rms", "stddev")
        for inside in (True, False)
        for corrected in (False, True)
    },
    "scale_by_adadelta": (lambda: jz.scale_by_adadelta(0.8, 1e-4), lambda: optax.scale_by_adadelta(0.8, 1e-4)),
    "scale_by_trust_ratio": (
        lambda: jz.chain(jz.scale_by_adam(), jz.scale_by_trust_ratio()),
        lambda: optax.chain(optax.scale_by_adam(), optax.scale_by_trust_ratio()),
    ),
    "scale_by_trust_ratio_options": (
        lambda: jz.scale_by_trust_ratio(0.5, 0.01, 1e-3),
        lambda: optax.scale_by_trust_ratio(0.5, 0.01, 1e-3),
    ),
    "add_decayed_weights": (lambda: jz.add_decayed_weights(0.3), lambda: optax.add_decayed_weights(0.3)),
    "add_decayed_weights_schedule": (
        lambda: jz.add_decayed_weights(decaying),
        lambda: optax.add_decayed_weights(decaying),
    ),
    "add_decayed_weights_mask": (
        lambda: jz.add_decayed_weights(0.3, mask={"dense": {"w": True, "b": False}, "scale": True}),
        lambda: optax.add_decayed_weights(0.3, mask={"dense": {"w": True, "b": False}, "scale": True}),
    ),
    "add_decayed_weights_callable_mask": (
        lambda: jz.add_decayed_weights(0.3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        lambda: optax.add_decayed_weights(0.3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    ),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name, dtype):
    ours, theirs = OPTAX_CASES[name]
    with jax.enable_x64(dtype == jnp.float64):
        params = make_params(dtype)
        (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    # The parameters really moved (the comparison is not of two no-ops).
    assert not np.allclose(np.asarray(our_iterates[-1]["dense"]["w"], np.float32), np.asarray(params["dense"]["w"], np.float32))


def test_complex_adam_matches_optax_bit_for_bit():
    params = {"z": jnp.asarray([1 + 2j, -0.5 + 0.25j, 3 - 1j], jnp.complex64)}
    grads = {"z": jnp.asarray([0.3 - 1j, 2 + 0.5j, -1 + 1j], jnp.complex64)}
    ours, theirs = jz.scale_by_adam(), optax.scale_by_adam()
    s1, s2 = ours.init(params), theirs.init(params)
    # Both jitted, like every comparison here (Optax jits its bias correction
    # internally, and eager complex division rounds differently from fused).
    our_update, their_update = jax.jit(ours.update), jax.jit(theirs.update)
    for _ in range(5):
        u1, s1 = our_update(grads, s1, params)
        u2, s2 = their_update(grads, s2, params)
        assert_trees_equal(u1, u2)
    assert_trees_equal(s1.nu, s2.nu)


STATEFUL = {
    "trace": lambda: trace(0.9),
    "trace_dampening": lambda: trace(0.9, dampening=0.1),
    "nesterov": lambda: nesterov(0.9),
    "scale_by_adam": lambda: jz.scale_by_adam(),
    "scale_by_adam_nesterov": lambda: jz.scale_by_adam(nesterov=True),
    "scale_by_schedule": lambda: jz.scale_by_schedule(decaying),
    "add_decayed_weights_schedule": lambda: jz.add_decayed_weights(decaying),
    "scale_by_amsgrad": lambda: jz.scale_by_amsgrad(),
    "scale_by_amsgrad_correct_after_max": lambda: jz.scale_by_amsgrad(correct_after_max=True),
    "scale_by_rss": lambda: jz.scale_by_rss(),
    "scale_by_rms_corrected": lambda: jz.scale_by_rms(bias_correction=True),
    "scale_by_stddev": lambda: jz.scale_by_stddev(),
    "scale_by_stddev_corrected": lambda: jz.scale_by_stddev(bias_correction=True),
    "scale_by_adadelta": lambda: jz.scale_by_adadelta(),
    "ema": lambda: jz.ema(0.9),
}


def _per_param_leaves(state):
    # Every floating leaf of these states is per-parameter (counts are int32).
    return [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]


@pytest.mark.parametrize("name", list(STATEFUL))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_dtypes_are_kept(name, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        tx = STATEFUL[name]()
        params = make_params(dtype)
        state = tx.init(params)
        for leaf in _per_param_leaves(state):
            assert leaf.dtype == dtype
        iterates, state = run_ours(tx, params, steps=3)
        for leaf in jax.tree.leaves(iterates[-1]) + _per_param_leaves(state):
            assert leaf.dtype == dtype
        counts = [x for x in jax.tree.leaves(state) if jnp.ndim(x) == 0 and jnp.issubdtype(x.dtype, jnp.integer)]
        assert all(c.dtype == jnp.int32 for c in counts)


@pytest.mark.parametrize("name", list(STATEFUL))
def test_state_dtype_does_not_drift_with_other_gradient_dtype(name):
    # bfloat16 params, float32 gradients: the state stays bfloat16 (Optax's would drift to float32).
    params = make_params(jnp.bfloat16)
    for tx in (STATEFUL[name](),):
        state = tx.init(params)
        grads = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), params)
        _, new_state = tx.update(grads, state, params)
        assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


@pytest.mark.parametrize(
    "mu_dtype, nu_dtype", [(jnp.bfloat16, None), (None, jnp.bfloat16), (jnp.bfloat16, jnp.bfloat16), (jnp.float16, jnp.float32)]
)
def test_adam_moment_dtypes_are_honoured(mu_dtype, nu_dtype):
    params = make_params(jnp.float32)
    tx = jz.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    iterates, state = run_ours(tx, params, steps=3)
    for leaf in jax.tree.leaves(state.mu):
        assert leaf.dtype == (mu_dtype or jnp.float32)
    for leaf in jax.tree.leaves(state.nu):
        assert leaf.dtype == (nu_dtype or jnp.float32)
    for leaf in jax.tree.leaves(iterates[-1]):
        assert leaf.dtype == jnp.float32


def test_low_precision_nu_follows_reference_to_its_precision(x64):
    # A bfloat16 second moment is the float64 rule rounded at every step: close, not equal.
    params = make_params(jnp.float64)
    tx = jz.chain(jz.scale_by_adam(nu_dtype=jnp.bfloat16), jz.scale_by_learning_rate(0.01))
    iterates, _ = run_ours(tx, params)
    expected = run_reference(reference.adam(0.01), params)
    assert_trees_close(iterates[-1], expected[-1], rtol=2e-2, atol=2e-3)
    with pytest.raises(AssertionError):
        assert_trees_close(iterates[-1], expected[-1], rtol=1e-9)


@pytest.mark.parametrize("name", list(STATEFUL) + ["scale", "add_decayed_weights"])
def test_none_updates_pass_through_and_keep_state(name):
    tx = STATEFUL[name]() if name in STATEFUL else {"scale": lambda: jz.scale(2.0), "add_decayed_weights": lambda: jz.add_decayed_weights(0.1)}[name]()
    params = make_params(jnp.float32)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params)  # a real step first, so kept state is not just zeros
    grads["dense"]["b"] = None
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert updates["dense"]["b"] is None
    assert updates["dense"]["w"] is not None
    old = jax.tree_util.tree_flatten_with_path(state)[0]
    new = dict(jax.tree_util.tree_flatten_with_path(new_state)[0])
    for path, leaf in old:
        if "'b'" in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(new[path], leaf)
    new_params = jz.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params["dense"]["b"], params["dense"]["b"])


@pytest.mark.parametrize(
    "name",
    ["trace_dampening", "scale_by_adam", "scale_by_adam_nesterov", "scale_by_schedule", "scale_by_amsgrad", "scale_by_rms_corrected"],
)
def test_step_counter_saturates_at_int32_max(name):
    tx = STATEFUL[name]()
    params = make_params(jnp.float32)
    state = tx.init(params)
    top = jnp.iinfo(jnp.int32).max
    state = jax.tree.map(lambda x: jnp.full_like(x, top) if x.dtype == jnp.int32 else x, state)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    counts = [x for x in jax.tree.leaves(state) if x.dtype == jnp.int32]
    assert counts and all(int(c) == top for c in counts)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name, tx", [("add_decayed_weights", jz.add_decayed_weights(1e-4)), ("scale_by_trust_ratio", jz.scale_by_trust_ratio())])
def test_update_without_params_is_reported(name, tx):
    params = make_params()
    with pytest.raises(ValueError, match=f"{name} needs the parameters"):
        tx.update(params, tx.init(params))


def test_trust_ratio_leaves_zero_parameters_and_updates_alone():
    tx = jz.scale_by_trust_ratio(trust_coefficient=0.5)
    params = {"zero": jnp.zeros(3), "p": jnp.full(4, 2.0)}
    updates = {"zero": jnp.ones(3), "p": jnp.zeros(4)}
    out, _ = tx.update(updates, tx.init(params), params)
    np.testing.assert_array_equal(out["zero"], 1.0)
    np.testing.assert_array_equal(out["p"], 0.0)
    out, _ = tx.update({"zero": jnp.ones(3), "p": jnp.ones(4)}, tx.init(params), params)
    np.testing.assert_allclose(out["p"], 0.5 * 4.0 / 2.0)  # 0.5 * ||p|| / ||u||


@pytest.mark.parametrize("min_norm", [0.0, 0.5])
def test_trust_ratio_is_differentiable_at_zero(min_norm):
    # Meta-gradients through an optimizer step must not turn NaN when a norm is clamped.
    tx = jz.scale_by_trust_ratio(min_norm=min_norm)

    def stepped(params, updates):
        out, _ = tx.update(updates, tx.init(params), params)
        return jnp.sum(out * jnp.arange(1.0, 4.0))

    for params, updates in [(jnp.zeros(3), jnp.ones(3)), (jnp.ones(3), jnp.zeros(3)), (jnp.zeros(3), jnp.zeros(3))]:
        for gradient in jax.grad(stepped, argnums=(0, 1))(params, updates):
            assert bool(jnp.all(jnp.isfinite(gradient))), (params, updates, gradient)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.scale_by_learning_rate(-0.1), r"learning_rate must be >= 0, got -0\.1"),
        (lambda: jz.scale_by_learning_rate(float("nan")), r"learning_rate must be a finite real number"),
        (lambda: jz.scale_by_adam(b1=1.0), r"scale_by_adam: b1 must be in \[0, 1\), got 1\.0"),
        (lambda: jz.scale_by_adam(b2=-0.1), r"scale_by_adam: b2 must be in \[0, 1\), got -0\.1"),
        (lambda: jz.scale_by_adam(eps=-1e-8), r"scale_by_adam: eps must be >= 0, got -1e-08"),
        (lambda: jz.scale_by_adam(eps_root=-1.0), r"scale_by_adam: eps_root must be >= 0"),
        (lambda: jz.scale_by_adam(mu_dtype=jnp.int32), r"scale_by_adam: mu_dtype must be a floating dtype"),
        (lambda: jz.scale_by_adam(nu_dtype="nope"), r"scale_by_adam: nu_dtype must be a floating dtype"),
        (lambda: jz.add_decayed_weights(-1e-4), r"add_decayed_weights: weight_decay must be >= 0, got -0\.0001"),
        (lambda: trace("0.9"), r"trace: decay must be a finite real number, got '0\.9' \(str\)"),
        (lambda: trace(None), r"trace: decay must be a finite real number, got None"),
        (lambda: trace(True), r"trace: decay must be a finite real number, got True"),
        (lambda: trace(-0.5), r"trace: decay must be >= 0, got -0\.5"),
        (lambda: trace(0.9, dampening=1.5), r"trace: dampening must be in \[0, 1\], got 1\.5"),
        (lambda: nesterov([0.9]), r"^nesterov: decay must be a finite real number"),
        (lambda: nesterov(-1), r"^nesterov: decay must be >= 0, got -1"),
        (lambda: nesterov(0.9, accumulator_dtype=jnp.int8), r"^nesterov: accumulator_dtype must be a floating dtype"),
        (lambda: jz.scale("x"), r"scale: step_size must be a finite real number"),
        (lambda: jz.scale_by_schedule(0.1), r"scale_by_schedule: step_size_fn must be a callable"),
        (lambda: jz.trace(0.9, accumulator_dtype=jnp.bool_), r"trace: accumulator_dtype must be a floating dtype"),
        (lambda: jz.trace(0.9, 0.9), r"trace: nesterov must be True or False, got 0\.9"),
        (lambda: jz.scale_by_adam(nesterov="yes"), r"scale_by_adam: nesterov must be True or False, got 'yes'"),
        (lambda: jz.scale_by_learning_rate(0.1, flip_sign=1), r"flip_sign must be True or False"),
        (lambda: jz.scale_by_adam(bias_correction=None), r"scale_by_adam: bias_correction must be True or False"),
        (lambda: jz.scale_by_amsgrad(b1=-0.1), r"scale_by_amsgrad: b1 must be in \[0, 1\)"),
        (lambda: jz.scale_by_amsgrad(correct_after_max="torch"), r"correct_after_max must be True or False"),
        (lambda: jz.scale_by_rss(initial_accumulator_value=-0.1), r"scale_by_rss: initial_accumulator_value must be >= 0"),
        (lambda: jz.scale_by_rss(eps=float("inf")), r"scale_by_rss: eps must be a finite real number"),
        (lambda: jz.scale_by_rms(decay=1.2), r"scale_by_rms: decay must be in \[0, 1\], got 1\.2"),
        (lambda: jz.scale_by_stddev(eps=-1.0), r"scale_by_stddev: eps must be >= 0"),
        (lambda: jz.scale_by_rms(1.0, bias_correction=True), r"scale_by_rms: decay=1 with bias_correction=True"),
        (lambda: jz.scale_by_rms(initial_scale=-1.0), r"scale_by_rms: initial_scale must be >= 0"),
        (lambda: jz.scale_by_adadelta(rho=-0.1), r"scale_by_adadelta: rho must be in \[0, 1\], got -0\.1"),
        (lambda: jz.scale_by_trust_ratio(trust_coefficient=-1.0), r"scale_by_trust_ratio: trust_coefficient must be >= 0"),
        (lambda: jz.scale_by_trust_ratio(max_param_norm=0.0), r"scale_by_trust_ratio: max_param_norm must be > 0, got 0\.0"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


PER_PARAMETER = [name for name in STATEFUL if name != "scale_by_schedule"]  # scale_by_schedule keeps only a count


@pytest.mark.parametrize("name", PER_PARAMETER)
def test_mismatched_grads_tree_names_the_paths(name):
    tx = STATEFUL[name]()
    params = make_params()
    state = tx.init(params)
    grads = {"dense": {"w": params["dense"]["w"], "bias": params["dense"]["b"]}, "scale": params["scale"]}
    with pytest.raises(ValueError, match=r"only in updates: \['dense'\]\['bias'\].*only in .*\['dense'\]\['b'\]"):
        tx.update(grads, state, params)


@pytest.mark.parametrize("name", PER_PARAMETER)
def test_mismatched_grad_shapes_are_reported_not_broadcast(name):
    tx = STATEFUL[name]()
    params = make_params()
    grads = jax.tree.map(jnp.ones_like, params)
    grads["dense"]["w"] = jnp.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"shapes differ at \['dense'\]\['w'\] \(2, 3, 4\) vs \(3, 4\)"):
        tx.update(grads, tx.init(params), params)


def test_concrete_low_precision_hyperparameters_are_accepted():
    tx = jz.scale_by_learning_rate(jnp.asarray(0.1, jnp.bfloat16))
    updates, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    np.testing.assert_allclose(updates, -0.1, rtol=1e-2)


INJECTED = {
    "trace_zero_dampening": (optax.inject_hyperparams(jz.trace), dict(decay=0.9, dampening=0.0), lambda: trace(0.9)),
    "trace_dampening": (
        optax.inject_hyperparams(jz.trace),
        dict(decay=0.9, dampening=0.3),
        lambda: trace(0.9, dampening=0.3),
    ),
    "scale_by_adam": (
        optax.inject_hyperparams(jz.scale_by_adam),
        dict(b1=0.8, b2=0.95, eps=1e-6),
        lambda: jz.scale_by_adam(0.8, 0.95, 1e-6),
    ),
    "add_decayed_weights": (
        optax.inject_hyperparams(jz.add_decayed_weights),
        dict(weight_decay=0.0),
        lambda: jz.add_decayed_weights(0.0),
    ),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_hyperparameters_injected_as_arrays_give_the_same_trajectory(name):
    # Hyperparameters arrive as arrays at init and as tracers under jit: the state's
    # structure must not depend on that, and the numbers must match the plain call.
    injected, hyperparameters, plain = INJECTED[name]
    params = make_params()
    (ours, _), (expected, _) = run_together([injected(**hyperparameters), plain()], params)
    assert_trees_close(ours, expected, rtol=1e-5, atol=1e-6)  # float32 arrays vs Python floats round apart
