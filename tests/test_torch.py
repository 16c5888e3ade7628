"""jaxopt_zoo.torch against float64 references of torch.optim's documented algorithms.

tests/reference.py's torch_* functions follow PyTorch's pseudocode; they were
checked against torch 2.13's own optimizers (relative difference < 1e-11 over
the same 25-step trajectories) when written. Every option combination that
changes the rule is covered here.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_ours,
    run_reference,
    run_together,
)


def schedule(count):
    return 0.02 * 0.9**count


SGD = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x)
    for m, d, n, w, x in itertools.product([0, 0.9], [0, 0.3], [False, True], [0, 0.1], [False, True])
    if not (n and (m == 0 or d != 0))
]
ADAGRAD = [
    dict(lr_decay=a, weight_decay=w, initial_accumulator_value=i, maximize=x)
    for a, w, i, x in itertools.product([0, 0.05], [0, 0.1], [0, 0.5], [False, True])
]
ADADELTA = [dict(weight_decay=w, maximize=x) for w, x in itertools.product([0, 0.1], [False, True])]
RMSPROP = [
    dict(centered=c, momentum=m, weight_decay=w, maximize=x)
    for c, m, w, x in itertools.product([False, True], [0, 0.9], [0, 0.1], [False, True])
]
ADAM = [dict(amsgrad=a, weight_decay=w, maximize=x) for a, w, x in itertools.product([False, True], [0, 0.1], [False, True])]


def _check(ours, ref):
    with jax.enable_x64(True):
        params = make_params(jnp.float64)
        iterates, _ = run_ours(ours, params, jit=False)
        assert_trees_close(iterates, run_reference(ref, params), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", SGD, ids=str)
def test_sgd(options):
    ref_args = {k: v for k, v in options.items()}
    _check(jz.torch.sgd(lr=0.02, **options), reference.torch_sgd(0.02, **ref_args))


@pytest.mark.parametrize("options", ADAGRAD, ids=str)
def test_adagrad(options):
    _check(jz.torch.adagrad(lr=0.1, **options), reference.torch_adagrad(0.1, **options))


@pytest.mark.parametrize("options", ADADELTA, ids=str)
def test_adadelta(options):
    _check(jz.torch.adadelta(lr=0.5, **options), reference.torch_adadelta(0.5, **options))


@pytest.mark.parametrize("options", RMSPROP, ids=str)
def test_rmsprop(options):
    _check(jz.torch.rmsprop(lr=0.01, **options), reference.torch_rmsprop(0.01, **options))


@pytest.mark.parametrize("options", ADAM, ids=str)
def test_adam(options):
    _check(jz.torch.adam(lr=0.01, betas=(0.9, 0.99), **options), reference.torch_adam(0.01, (0.9, 0.99), **options))


@pytest.mark.parametrize("options", ADAM, ids=str)
def test_adam_with_decoupled_weight_decay_is_adamw(options):
    ours = jz.torch.adam(lr=0.01, betas=(0.9, 0.99), decoupled_weight_decay=True, **options)
    _check(ours, reference.torch_adam(0.01, (0.9, 0.99), decoupled=True, **options))


@pytest.mark.parametrize("options", ADAM, ids=str)
def test_adamw(options):
    _check(jz.torch.adamw(lr=0.01, betas=(0.9, 0.99), **options), reference.torch_adam(0.01, (0.9, 0.99), decoupled=True, **options))


@pytest.mark.parametrize(
    "ours, ref",
    [
        (lambda: jz.torch.sgd(lr=schedule, momentum=0.9, weight_decay=0.1), lambda: reference.torch_sgd(schedule, 0.9, weight_decay=0.1)),
        (lambda: jz.torch.adagrad(lr=schedule, lr_decay=0.05), lambda: reference.torch_adagrad(schedule, lr_decay=0.05)),
        (lambda: jz.torch.rmsprop(lr=schedule, momentum=0.9), lambda: reference.torch_rmsprop(schedule, momentum=0.9)),
        (lambda: jz.torch.adamw(lr=schedule, weight_decay=0.1), lambda: reference.torch_adam(schedule, weight_decay=0.1, decoupled=True)),
    ],
    ids=["sgd", "adagrad", "rmsprop", "adamw"],
)
def test_schedule_stands_in_for_an_lr_scheduler(ours, ref):
    _check(ours(), ref())


def test_defaults_are_torchs():
    _check(jz.torch.sgd(), reference.torch_sgd(1e-3))
    _check(jz.torch.adagrad(), reference.torch_adagrad(1e-2))
    _check(jz.torch.adadelta(), reference.torch_adadelta())
    _check(jz.torch.rmsprop(), reference.torch_rmsprop())
    _check(jz.torch.adam(), reference.torch_adam())
    _check(jz.torch.adamw(), reference.torch_adam(weight_decay=1e-2, decoupled=True))


def _looked_up(p, t):
    # grad_fn's gradient with many entries 0, as an embedding's: a matrix's rows, a vector's entries and the scalar
    # each take turns at being left out (at step 3 all of them), so frozen moments are read again later.
    g = grad_fn(np.asarray(p, np.float64), t)
    index = np.arange(g.shape[0])[:, None] if g.ndim == 2 else np.arange(g.size).reshape(g.shape)
    return np.where(((index + t) % 3 == 0) | (t == 3), 0.0, g)


@pytest.mark.parametrize(
    "options, dtype, rtol",
    [(dict(), jnp.float64, 1e-10), (dict(lr=0.05, betas=(0.8, 0.99), eps=1e-3, maximize=True), jnp.float64, 1e-10),
     (dict(lr=schedule), jnp.float64, 1e-10), (dict(lr=0.05), jnp.float32, 2e-4)],
    ids=["defaults", "options", "schedule", "float32"],
)
def test_sparse_adam_moves_only_what_has_a_gradient_as_torchs_rule(options, dtype, rtol):
    # tests/reference.py's torch_sparse_adam was checked against torch 2.13's SparseAdam given the same gradients
    # as sparse tensors of their non-zero rows (float64, 25 steps: 1.3e-15 apart).
    with jax.enable_x64(dtype == jnp.float64):
        params = make_params(dtype)
        leaves, treedef = jax.tree.flatten(params)
        expected = [reference.trajectory(reference.torch_sparse_adam(**options), x, _looked_up, 8) for x in leaves]
        tx = jz.torch.sparse_adam(**options)
        state = tx.init(params)
        for t in range(1, 9):
            grads = jax.tree.map(lambda p: jnp.asarray(_looked_up(p, t), dtype), params)
            updates, state = tx.update(grads, state, params)
            moved = jz.apply_updates(params, updates)
            for p, new, g in zip(jax.tree.leaves(params), jax.tree.leaves(moved), jax.tree.leaves(grads)):
                assert np.array_equal(np.asarray(new)[g == 0], np.asarray(p)[g == 0])  # not moved at all
            params = moved
            assert_trees_close(params, jax.tree.unflatten(treedef, [path[t - 1] for path in expected]), rtol=rtol,
                               atol=rtol / 100)


def test_sparse_adam_with_an_injected_eps_of_zero_steps_zero_where_the_second_moment_underflows():
    tx = jz.inject_hyperparams(jz.torch.sparse_adam)(lr=0.1)
    state = tx.init(jnp.zeros(3))
    state.hyperparams["eps"] = jnp.asarray(0.0)  # set in the state and traced, it cannot be checked
    updates, _ = jax.jit(tx.update)(jnp.array([1e-30, 0.0, 2.0]), state)  # (1 - b2) 1e-60 is 0 in float32
    np.testing.assert_allclose(updates, [0.0, 0.0, -0.1], rtol=1e-5)


def test_float32_follows_the_reference_to_float32_tolerance():
    params = make_params(jnp.float32)
    iterates, _ = run_ours(jz.torch.adam(lr=0.01, weight_decay=0.1, amsgrad=True), params)
    expected = run_reference(reference.torch_adam(0.01, weight_decay=0.1, amsgrad=True), params)
    assert_trees_close(iterates, expected, rtol=2e-4, atol=2e-5)


def test_kernel_options_are_accepted():
    for tx in (
        jz.torch.sgd(foreach=True, fused=False, differentiable=True),
        jz.torch.adam(foreach=False, capturable=True, fused=None),
        jz.torch.rmsprop(capturable=True, foreach=True),
    ):
        assert isinstance(tx, jz.GradientTransformation)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.torch.sgd(lr=-0.1), r"torch\.sgd: lr must be >= 0, got -0\.1"),
        (lambda: jz.torch.adam(lr="fast"), r"torch\.adam: lr must be a finite real number"),
        (lambda: jz.torch.sgd(momentum=-0.9), r"torch\.sgd: momentum must be >= 0"),
        (lambda: jz.torch.sgd(momentum=0.9, dampening=0.1, nesterov=True), r"nesterov=True requires a momentum > 0 and zero dampening"),
        (lambda: jz.torch.sgd(nesterov=True), r"nesterov=True requires a momentum > 0"),
        (lambda: jz.torch.sgd(momentum=np.float32(0), nesterov=True), r"nesterov=True requires a momentum > 0"),
        (lambda: jz.torch.sgd(weight_decay=-1.0), r"torch\.sgd: weight_decay must be >= 0"),
        (lambda: jz.torch.sgd(maximize="yes"), r"torch\.sgd: maximize must be True or False"),
        (lambda: jz.torch.adagrad(lr_decay=-0.1), r"torch\.adagrad: lr_decay must be >= 0"),
        (lambda: jz.torch.adagrad(initial_accumulator_value=-1.0), r"initial_accumulator_value must be >= 0"),
        (lambda: jz.torch.adagrad(eps=-1.0), r"torch\.adagrad: eps must be >= 0"),
        (lambda: jz.torch.adadelta(rho=1.1), r"torch\.adadelta: rho must be in \[0, 1\], got 1\.1"),
        (lambda: jz.torch.rmsprop(alpha=1.5), r"torch\.rmsprop: alpha must be in \[0, 1\], got 1\.5"),
        (lambda: jz.torch.rmsprop(eps=-1.0), r"torch\.rmsprop: eps must be >= 0"),
        (lambda: jz.torch.sgd(momentum=0.9, dampening=1.5), r"torch\.sgd: dampening must be in \[0, 1\]"),
        (lambda: jz.torch.rmsprop(momentum=-0.5), r"torch\.rmsprop: momentum must be >= 0"),
        (lambda: jz.torch.adam(betas=(0.9,)), r"torch\.adam: betas must be a pair"),
        (lambda: jz.torch.adam(betas=(1.0, 0.999)), r"torch\.adam: betas\[0\] must be in \[0, 1\), got 1\.0"),
        (lambda: jz.torch.adamw(betas=(0.9, -0.1), amsgrad=True), r"torch\.adamw: betas\[1\] must be in \[0, 1\)"),
        (lambda: jz.torch.adam(betas=(0.9, 1.0), decoupled_weight_decay=True), r"torch\.adam: betas\[1\]"),
        (lambda: jz.torch.adam(eps=-1e-8), r"torch\.adam: eps must be >= 0"),
        (lambda: jz.torch.adam(amsgrad=1), r"torch\.adam: amsgrad must be True or False"),
        (lambda: jz.torch.adamw(weight_decay=-0.01), r"torch\.adamw: weight_decay must be >= 0, got -0\.01"),
    ],
)
def test_invalid_options_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_a_pair_may_be_an_array_of_two_numbers():
    # torch unpacks betas, etas, step_sizes and Adafactor's eps from any sequence of two, a NumPy array included.
    grads = {"w": jnp.asarray([0.3, -2.0, 0.0])}
    for make, options in [(jz.torch.adam, dict(betas=(0.8, 0.9))), (jz.torch.adafactor, dict(eps=(1e-3, 1e-2))),
                          (jz.torch.rprop, dict(etas=(0.4, 1.3), step_sizes=(1e-4, 5.0)))]:
        tx, as_arrays = make(**options), make(**{k: np.asarray(v) for k, v in options.items()})
        assert_trees_equal(tx.update(grads, tx.init(grads), grads)[0],
                           as_arrays.update(grads, as_arrays.init(grads), grads)[0])
    with pytest.raises(ValueError, match=r"torch\.adam: betas must be a pair \(beta1, beta2\), got array\(\[0\.9"):
        jz.torch.adam(betas=np.asarray([0.9, 0.99, 0.999]))


def _complex_check(ours, ref):
    """Complex params follow the reference run on their (real, imaginary) pairs, as torch's view_as_real."""
    rng = np.random.default_rng(3)
    start = rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))
    gradient = lambda z, t: np.linspace(0.5, 3.0, z.size).reshape(z.shape) * z + (1 - 2j) * np.sin(t)
    as_pairs = lambda z: np.stack([z.real, z.imag], axis=-1)
    pairs_grad = lambda x, t: as_pairs(gradient(x[..., 0] + 1j * x[..., 1], t))
    expected = reference.trajectory(ref, as_pairs(start), pairs_grad, 25)[-1]
    with jax.enable_x64(True):
        params = jnp.asarray(start, jnp.complex128)
        state, update = ours.init(params), jax.jit(ours.update)
        for t in range(1, 26):
            updates, state = update(jnp.asarray(gradient(np.asarray(params), t)), state, params)
            params = jz.apply_updates(params, updates)
    np.testing.assert_allclose(as_pairs(np.asarray(params)), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "ours, ref",
    [
        (lambda: jz.torch.sgd(lr=0.02, momentum=0.9, weight_decay=0.1, maximize=True), lambda: reference.torch_sgd(0.02, 0.9, weight_decay=0.1, maximize=True)),
        (lambda: jz.torch.adagrad(lr=0.1, lr_decay=0.05), lambda: reference.torch_adagrad(0.1, lr_decay=0.05)),
        (lambda: jz.torch.adadelta(lr=0.5, weight_decay=0.1), lambda: reference.torch_adadelta(0.5, weight_decay=0.1)),
        (lambda: jz.torch.rmsprop(lr=0.01, centered=True, momentum=0.9), lambda: reference.torch_rmsprop(0.01, centered=True, momentum=0.9)),
        (lambda: jz.torch.adam(lr=0.01, amsgrad=True), lambda: reference.torch_adam(0.01, amsgrad=True)),
        (lambda: jz.torch.adamw(lr=0.01), lambda: reference.torch_adam(0.01, weight_decay=1e-2, decoupled=True)),
    ],
    ids=["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"],
)
def test_complex_parameters_are_updated_as_real_pairs(ours, ref):
    _complex_check(ours(), ref())


INJECTABLE = {
    "sgd": (dict(lr=0.02, momentum=0.9, nesterov=True), dict(lr=0.02, momentum=0.9, nesterov=True)),
    "sgd_dampening_without_momentum": (dict(lr=0.02, dampening=0.3), dict(lr=0.02, dampening=0.3)),
    "sgd_dampening": (dict(lr=0.02, momentum=0.8, dampening=0.3, weight_decay=0.1), dict(lr=0.02, momentum=0.8, dampening=0.3, weight_decay=0.1)),
    "adagrad": (dict(lr=0.1, lr_decay=0.05, weight_decay=0.1), dict(lr=0.1, lr_decay=0.05, weight_decay=0.1)),
    "rmsprop": (dict(lr=0.01, momentum=0.9, centered=True), dict(lr=0.01, momentum=0.9, centered=True)),
    "adam": (dict(lr=0.01, weight_decay=0.1, amsgrad=True), dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    "adamw": (dict(lr=0.01), dict(lr=0.01)),
}


@pytest.mark.parametrize("name", list(INJECTABLE))
def test_options_injected_as_arrays_give_torchs_trajectory(name):
    # inject_hyperparams turns every numeric option (defaults too) into an array.
    options, plain = INJECTABLE[name]
    function = getattr(jz.torch, name.split("_")[0])
    params = make_params()
    (injected, _), (expected, _) = run_together([
        optax.inject_hyperparams(function)(**options),
        function(**plain),
    ], params)
    assert_trees_close(injected, expected, rtol=1e-5, atol=1e-6)


def _momentum_edits(starts_on: bool):
    # 0.9 and 0 in turn, five steps each, from 0 (or from 0.9: nesterov needs a momentum as it is built).
    def momentum(count):
        on = (count // 5) % 2 == (0 if starts_on else 1)
        return jnp.where(on, 0.9, 0.0) if isinstance(count, jax.Array) else 0.9 * on

    return momentum


@pytest.mark.parametrize("name, options, starts_on", [
    ("sgd", dict(dampening=0.3), False), ("sgd", dict(nesterov=True), True), ("rmsprop", dict(centered=True), False),
    ("rmsprop", dict(), True)])
def test_a_momentum_edited_to_and_from_zero_leaves_the_buffer_as_torch_does(name, options, starts_on):
    """PyTorch's SGD starts its buffer (undamped, at the gradient) on the first step with momentum > 0, and neither
    SGD nor RMSprop touches its buffer on a step with momentum 0. An injected momentum raised from 0 used to take a
    buffer one damped step ahead (0.095 for PyTorch's 0.05), and one lowered to 0 and raised again a buffer holding
    only the last gradient."""
    ref = {"sgd": reference.torch_sgd, "rmsprop": reference.torch_rmsprop}[name]
    momentum = _momentum_edits(starts_on)
    ours = jz.inject_hyperparams(getattr(jz.torch, name))(lr=0.02, momentum=momentum, **options)
    _check(ours, ref(0.02, momentum=momentum, **options))


def test_an_array_momentum_keeps_the_updates_in_the_params_dtype():
    # The dampening made an array for the step count was a strong float32: bfloat16 updates came out float32.
    params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    for options in (dict(), dict(dampening=0.1), dict(nesterov=True)):
        tx = jz.torch.sgd(lr=0.1, momentum=jnp.asarray(0.9, jnp.bfloat16), **options)
        updates, state = tx.update(params, tx.init(params), params)
        assert updates["w"].dtype == jnp.bfloat16 and jax.tree.leaves(state)[-1].dtype == jnp.bfloat16, options


@pytest.mark.parametrize("name", jz.torch.__all__)
def test_state_can_be_donated(name):
    tx = getattr(jz.torch, name)()
    params = make_params()
    if name == "muon":  # torch.optim.Muon takes 2-D params only
        params = {"dense": {"w": params["dense"]["w"]}}
    # LBFGS's step evaluates the objective (here sum(p**2) / 2, whose gradient at the params is not
    # the ones below, but that does not matter for donation).
    extra = dict(value_fn=lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)) / 2) if name == "lbfgs" else {}
    step = jax.jit(lambda p, s, g: tx.update(g, s, p, **extra), donate_argnums=(1,))
    state = tx.init(params)
    for _ in range(2):
        given = state
        _, state = step(params, state, jax.tree.map(jnp.ones_like, params))
        # Each donated leaf was taken: one the step never reads is left out of the program and kept.
        assert all(x.is_deleted() for x in jax.tree.leaves(given)), name


# 8-bit state through the torch constructors (the helpers are the aliases' tests').

Q8 = jz.Blockwise8Bit()

# name: (constructor, its options, the storage options, (int8 moments, uint8 moments) per quantized leaf)
EIGHT_BIT = {
    "sgd": ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1), dict(accumulator_dtype=Q8), (1, 0)),
    "sgd_nesterov": ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True), dict(accumulator_dtype=Q8), (1, 0)),
    "adagrad": ("adagrad", dict(lr=0.1, lr_decay=0.01), dict(accumulator_dtype=Q8), (0, 1)),
    "adadelta": ("adadelta", dict(lr=0.5, weight_decay=0.1), dict(accumulator_dtype=Q8), (0, 2)),
    "rmsprop": ("rmsprop", dict(lr=1e-2), dict(nu_dtype=Q8), (0, 1)),
    "rmsprop_momentum": ("rmsprop", dict(lr=1e-2, momentum=0.9), dict(nu_dtype=Q8, accumulator_dtype=Q8), (1, 1)),
    "rmsprop_centered_momentum": (
        "rmsprop",
        dict(lr=1e-2, momentum=0.9, centered=True),
        dict(nu_dtype=Q8, mu_dtype=Q8, accumulator_dtype=Q8),
        (2, 1),
    ),
    "adam": ("adam", dict(lr=1e-2, weight_decay=0.1), dict(mu_dtype=Q8, nu_dtype=Q8), (1, 1)),
    "adam_amsgrad": ("adam", dict(lr=1e-2, amsgrad=True), dict(mu_dtype=Q8, nu_dtype=Q8), (1, 2)),
    "adam_decoupled": (
        "adam",
        dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
        dict(mu_dtype=Q8, nu_dtype=Q8),
        (1, 1),
    ),
    "adamw": ("adamw", dict(lr=1e-2), dict(mu_dtype=Q8, nu_dtype=Q8), (1, 1)),
    "adamw_amsgrad": ("adamw", dict(lr=1e-2, amsgrad=True), dict(mu_dtype=Q8, nu_dtype=Q8), (1, 2)),
    "sparse_adam": ("sparse_adam", dict(lr=1e-2), dict(mu_dtype=Q8, nu_dtype=Q8), (1, 1)),
}


@pytest.mark.parametrize("name", list(EIGHT_BIT))
def test_eight_bit_state(name):
    from tests.test_optimizers import assert_eight_bit_state_tracks_full_precision

    function, options, storage, counts = EIGHT_BIT[name]
    function = getattr(jz.torch, function)
    assert_eight_bit_state_tracks_full_precision(function(**options, **storage), function(**options), counts, b_rtol=1e-6)


def test_eight_bit_state_of_complex_params_quantizes_real_and_imaginary_parts():
    params = {"z": jnp.ones((64, 256), jnp.complex64)}
    state = jz.torch.adam(mu_dtype=Q8, nu_dtype=Q8).init(params)
    codes = [x for x in jax.tree.leaves(state) if jz.quantization.is_encoded(x)]
    assert sorted(str(c.dtype) for c in codes) == ["int8", "int8", "uint8", "uint8"]
    assert all(jz.quantization.dequantize(c).shape == (64, 256) for c in codes)


STORAGE_OPTIONS = [
    ("sgd", dict(momentum=0.9), "accumulator_dtype"),
    ("sgd", dict(), "accumulator_dtype"),  # checked even without a momentum buffer
    ("adagrad", dict(), "accumulator_dtype"),
    ("adadelta", dict(), "accumulator_dtype"),
    *[("rmsprop", dict(centered=True, momentum=0.9), arg) for arg in ("nu_dtype", "mu_dtype", "accumulator_dtype")],
    ("rmsprop", dict(), "mu_dtype"),
    ("rmsprop", dict(), "accumulator_dtype"),
    *[
        (name, dict(amsgrad=amsgrad), arg)
        for name in ("adam", "adamw")
        for amsgrad in (False, True)
        for arg in ("mu_dtype", "nu_dtype")
    ],
    ("sparse_adam", dict(), "mu_dtype"),
    ("sparse_adam", dict(), "nu_dtype"),
]


@pytest.mark.parametrize("bad", [jnp.int8, jnp.float8_e4m3fn, "x"], ids=["int8", "float8", "string"])
@pytest.mark.parametrize(
    "name, options, arg", STORAGE_OPTIONS, ids=[f"{n}-{a}-{i}" for i, (n, _, a) in enumerate(STORAGE_OPTIONS)]
)
def test_bad_storage_option_names_the_argument(name, options, arg, bad):
    with pytest.raises(ValueError, match=rf"^torch\.{name}: {arg}"):
        getattr(jz.torch, name)(**options, **{arg: bad})
