"""The optimizer recipes: float64 references, Optax bit for bit, and jit/vmap/grad behaviour."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import assert_trees_close, assert_trees_equal, grad_fn, make_params, run_ours, run_reference

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
    iterates, _ = run_ours(ours(), params)
    assert_trees_close(iterates, expected(params), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs, _ = CASES[name]
    params = make_params(jnp.float32)
    our_iterates, our_state = run_ours(ours(), params)
    their_iterates, their_state = run_ours(theirs(), params)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))


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
    tx = CASES[name][0]()
    batch = [make_params(seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
    state = jax.vmap(tx.init)(stacked)
    separate = [(p, tx.init(p)) for p in batch]
    for t in range(1, 6):
        grads = jax.tree.map(jax.vmap(lambda q: grad_fn(q, t, jnp)), stacked)
        updates, state = jax.jit(jax.vmap(tx.update))(grads, state, stacked)
        stacked = jz.apply_updates(stacked, updates)
        for i, (p, s) in enumerate(separate):
            g = jax.tree.map(lambda x: grad_fn(x, t, jnp), p)
            u, s = tx.update(g, s, p)
            separate[i] = (jz.apply_updates(p, u), s)
    for i, (p, _) in enumerate(separate):
        assert_trees_close(jax.tree.map(lambda x: x[i], stacked), p, rtol=1e-5, atol=1e-6)


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
    ours = jax.grad(lambda rate: _loss_after_steps(optimizer, rate, params))(lr)

    def reference_loss(rate):
        finals = run_reference(ref(rate), params, steps=6)[-1]
        return sum(np.sum(p**2) for p in jax.tree.leaves(finals))

    h = 1e-6
    central = (reference_loss(lr + h) - reference_loss(lr - h)) / (2 * h)
    assert abs(float(ours) - central) <= 1e-6 * max(1.0, abs(central))
    assert abs(central) > 1e-3  # the learning rate really matters here


def test_sgd_rejects_nesterov_without_momentum():
    with pytest.raises(ValueError, match="sgd: nesterov=True needs a momentum"):
        jz.sgd(0.1, nesterov=True)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.sgd(-0.1), r"learning_rate must be >= 0, got -0\.1"),
        (lambda: jz.sgd(0.1, momentum=-0.9), r"trace: decay must be >= 0"),
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


def test_adadelta_without_learning_rate_descends_where_optax_ascends():
    params = {"x": jnp.asarray([2.0, -3.0])}
    loss = lambda p: jnp.sum(p["x"] ** 2)

    def final_loss(tx):
        p, state = params, tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            p = jz.apply_updates(p, updates)
        return float(loss(p))

    assert final_loss(jz.adadelta()) < float(loss(params))
    assert final_loss(optax.adadelta()) > float(loss(params))  # the deviation this guards


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
    updates, state = step(params, state, jax.tree.map(jnp.ones_like, params))
    assert jax.tree.structure(updates) == jax.tree.structure(params)
