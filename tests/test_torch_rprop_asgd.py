"""jz.torch.rprop and jz.torch.asgd (and their transformations) against float64 references of torch.optim.

tests/reference.py's torch_rprop and torch_asgd follow torch.optim's documented algorithms; they were
checked by hand against torch 2.13's Rprop and ASGD (float64, 30 steps, single-tensor and foreach kernels,
the option grids below and a LambdaLR schedule): Rprop equal bit for bit, ASGD (iterates and ``ax``)
within 2.3e-12 relative. torch is not a test dependency.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import STEPS, assert_trees_close, assert_trees_equal, grad_fn, make_params, run_ours, run_reference
from tests.test_optimizers import assert_updates_close, check_eight_bit_state, eight_bit_params, summed_updates
from tests.test_torch import _complex_check

Q8 = jz.Blockwise8Bit()
_averaged_params = jax.jit(jz.averaged_params)  # one compilation rather than op by op (8-bit decoding)


def schedule(count):
    return 0.05 * 0.9**count


def _check(ours, ref, params=None):
    """Eager float64 run of ``ours`` against ``ref`` over conftest's STEPS steps; returns our final state."""
    with jax.enable_x64(True):
        params = make_params(jnp.float64) if params is None else params
        iterates, state = run_ours(ours, params, jit=False)
        assert_trees_close(iterates, run_reference(ref, params), rtol=1e-10, atol=1e-12)
        return state


def _reference_average(ref, params):
    """The reference's averaged iterate ``ax`` after STEPS steps, leaf by leaf."""

    def run(p):
        p = np.asarray(p, np.float64)
        state = ref.init(p)
        for t in range(1, STEPS + 1):
            delta, state = ref.update(np.asarray(grad_fn(p, t), np.float64), state, p, t)
            p = p + delta
        return state["ax"]

    return jax.tree.map(run, params)


# --- Parity with PyTorch's algorithm: every option, a non-default value of each numeric one.

RPROP = [
    dict(lr=0.05),
    dict(lr=0.05, maximize=True),
    dict(lr=0.05, etas=(0.3, 1.5)),
    dict(lr=0.05, step_sizes=(1e-3, 0.2)),
    dict(lr=0.3, step_sizes=(1e-3, 0.2)),  # lr above the largest step: clipped at the first step, as in PyTorch
    dict(lr=1e-5, step_sizes=(1e-3, 0.2), etas=(0.3, 1.5), maximize=True),  # and below the smallest
]


@pytest.mark.parametrize("options", RPROP, ids=str)
def test_rprop_follows_torch(options):
    _check(jz.torch.rprop(**options), reference.torch_rprop(**options))


ASGD = [
    dict(lr=0.05),
    dict(lr=0.05, lambd=0.5),
    dict(lr=0.05, alpha=0.3),
    dict(lr=0.05, t0=5.0),
    dict(lr=0.05, t0=3.5, lambd=0.5),
    dict(lr=0.05, t0=-2.0),  # mu_1 = 1 still: averaging from the second step
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, maximize=True, t0=5.0),
    dict(lr=0.05, lambd=0.5, alpha=0.3, t0=5.0, weight_decay=0.1, maximize=True),
]


@pytest.mark.parametrize("options", ASGD, ids=str)
def test_asgd_follows_torch_and_keeps_its_average(options):
    ref = reference.torch_asgd(**options)
    state = _check(jz.torch.asgd(**options), ref)
    with jax.enable_x64(True):
        expected = _reference_average(ref, make_params(jnp.float64))
        assert_trees_close(jz.averaged_params(state), expected, rtol=1e-10, atol=1e-12)


def test_defaults_are_torchs():
    _check(jz.torch.rprop(), reference.torch_rprop())
    ref = reference.torch_asgd()
    state = _check(jz.torch.asgd(), ref)
    with jax.enable_x64(True):
        # t0 = 1e6: the "average" is the last iterate, copied.
        assert_trees_close(jz.averaged_params(state), _reference_average(ref, make_params(jnp.float64)), rtol=1e-10)


def test_asgd_schedule_acts_as_a_torch_lr_scheduler():
    # eta_{t+1} is formed from step t's rate: the schedule acts one step late, as LambdaLR does in torch.
    ref = reference.torch_asgd(schedule, lambd=0.5, t0=3.0)
    state = _check(jz.torch.asgd(lr=schedule, lambd=0.5, t0=3.0), ref)
    with jax.enable_x64(True):
        expected = _reference_average(ref, make_params(jnp.float64))
        assert_trees_close(jz.averaged_params(state), expected, rtol=1e-10, atol=1e-12)


def test_complex_rprop_parameters_are_updated_as_real_pairs():
    _complex_check(jz.torch.rprop(lr=0.05, maximize=True), reference.torch_rprop(0.05, maximize=True))


def test_complex_asgd_parameters_and_their_average_are_updated_as_real_pairs():
    # As tests/test_torch.py's _complex_check, and the averaged params come back complex.
    rng = np.random.default_rng(3)
    start = rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))
    gradient = lambda z, t: np.linspace(0.5, 3.0, z.size).reshape(z.shape) * z + (1 - 2j) * np.sin(t)
    ref = reference.torch_asgd(0.05, t0=5.0, weight_decay=0.1)
    pairs = np.stack([start.real, start.imag], axis=-1)
    state = ref.init(pairs)
    for t in range(1, STEPS + 1):
        pairs_grad = gradient(pairs[..., 0] + 1j * pairs[..., 1], t)
        delta, state = ref.update(np.stack([pairs_grad.real, pairs_grad.imag], axis=-1), state, pairs, t)
        pairs = pairs + delta
    ours = jz.torch.asgd(lr=0.05, t0=5.0, weight_decay=0.1)
    with jax.enable_x64(True):
        params = jnp.asarray(start, jnp.complex128)
        ours_state, update = ours.init(params), jax.jit(ours.update)
        for t in range(1, STEPS + 1):
            updates, ours_state = update(jnp.asarray(gradient(np.asarray(params), t)), ours_state, params)
            params = jz.apply_updates(params, updates)
        averaged = jz.averaged_params(ours_state)
    assert averaged.dtype == jnp.complex128
    np.testing.assert_allclose(np.asarray(params), pairs[..., 0] + 1j * pairs[..., 1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(averaged), state["ax"][..., 0] + 1j * state["ax"][..., 1], rtol=1e-10, atol=1e-12)


# --- Optax: optax.scale_by_rprop (0.2.8) is one step late; where the rules coincide it is ours delayed.


def _gradient_sequence(shape=(3, 4), steps=8):
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=shape) for _ in range(steps)]
    for t in (3, 6):
        grads[t][0] = 0.0  # zero gradients: a sign product of 0
    return [jnp.asarray(g, jnp.float32) for g in grads]


def test_optax_rprop_is_this_rule_one_step_late():
    ours, theirs = jz.scale_by_resilient_step(0.05, 0.3, 1.5, 1e-3, 0.2), optax.scale_by_rprop(0.05, 0.3, 1.5, 1e-3, 0.2)
    ours_state, their_state = ours.init(jnp.zeros((3, 4))), theirs.init(jnp.zeros((3, 4)))
    ours_update, their_update = jax.jit(ours.update), jax.jit(theirs.update)
    previous = jnp.zeros((3, 4))
    for t, g in enumerate(_gradient_sequence()):
        prev_sign = ours_state.prev
        u, ours_state = ours_update(g, ours_state)
        v, their_state = their_update(g, their_state)
        # The same step sizes, and Optax's update is our previous one, zeroed where the sign flipped now.
        assert_trees_equal(ours_state.step_size, their_state.step_sizes)
        flipped = jnp.sign(g) * prev_sign < 0
        assert_trees_equal(v, jnp.where(flipped, 0.0, previous))
        assert t > 0 or not np.any(np.asarray(v))  # Optax's first update is 0
        previous = u
    assert np.any(np.asarray(previous))


def test_optax_rprop_does_not_clip_an_initial_step_outside_the_bounds():
    g = jnp.ones(3)
    ours, theirs = jz.scale_by_resilient_step(0.5, max_step_size=0.2), optax.scale_by_rprop(0.5, max_step_size=0.2)
    u, state = ours.update(g, ours.init(g))
    _, their_state = theirs.update(g, theirs.init(g))
    np.testing.assert_array_equal(np.asarray(u), np.float32(0.2))  # PyTorch clips every step
    np.testing.assert_array_equal(np.asarray(their_state.step_sizes), np.float32(0.5))


def test_a_nan_gradient_makes_its_step_size_nan_as_in_torch():
    tx = jz.scale_by_resilient_step(0.1)
    state = tx.init(jnp.zeros(3))
    for g in ([1.0, float("nan"), -1.0], [1.0, 1.0, -1.0]):
        u, state = tx.update(jnp.asarray(g), state)
    np.testing.assert_array_equal(np.isnan(np.asarray(state.step_size)), [False, True, False])
    np.testing.assert_allclose(np.asarray(u)[[0, 2]], [0.12, -0.12], rtol=1e-6)



@pytest.mark.parametrize("min_step_size", [1e-6, 0.0])
def test_a_donated_rprop_step_updates_its_state_in_place(min_step_size):
    # XLA:CPU used to recompute the new step sizes inside the parameter update, which kept the old
    # step sizes and signs alive: a copy of each (two state-sized temporaries; Optax's rprop needs one).
    tx = jz.torch.rprop(lr=0.01, step_sizes=(min_step_size, 50.0))
    params = jnp.ones((64, 64))

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < params.nbytes


# --- Learning rates: a schedule is honoured where it can be, refused where it cannot.


def test_rprop_refuses_a_schedule():
    with pytest.raises(ValueError, match=r"^torch\.rprop: lr is Rprop's initial step size, read once at init"):
        jz.torch.rprop(lr=schedule)
    with pytest.raises(ValueError, match=r"^scale_by_resilient_step: learning_rate is Rprop's initial step size"):
        jz.scale_by_resilient_step(schedule)


@pytest.mark.parametrize(
    "factory, options",
    [
        (jz.torch.rprop, dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2))),
        # Every numeric option becomes an array; the schedule, evaluated by the wrapper, acts with the same lag.
        (jz.torch.asgd, dict(lr=schedule, lambd=0.5, alpha=0.3, t0=3.0, weight_decay=0.1)),
    ],
    ids=["rprop", "asgd"],
)
def test_options_injected_as_arrays_give_the_plain_trajectory(factory, options):
    params = make_params()
    injected, state = run_ours(jz.inject_hyperparams(factory)(**options), params, steps=10)
    expected, plain_state = run_ours(factory(**options), params, steps=10, jit=False)
    assert_trees_close(injected, expected, rtol=1e-5, atol=1e-6)
    if factory is jz.torch.asgd:
        assert_trees_close(jz.averaged_params(state), jz.averaged_params(plain_state), rtol=1e-5, atol=1e-6)


# --- Storage options.


def _check_a_none_update_keeps_its_state(tx, state, params, update=None, encoded=True):
    """A None gradient leaf: its update is None, and every state leaf of its param (8-bit codes too) is kept."""
    grads = {"w": None, "b": grad_fn(params["b"], 9, jnp)}
    updates, new_state = (update or jax.jit(tx.update))(grads, state, params)
    assert updates["w"] is None and jz.apply_updates(params, updates)["w"] is params["w"]
    paths = lambda s: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(s)[0]}
    old, new = paths(state), paths(new_state)
    kept = [k for k in old if "['w']" in k]
    assert kept and all(jz.quantization.is_encoded(old[k]) == encoded for k in kept)
    assert all(np.array_equal(np.asarray(new[k]), np.asarray(old[k])) for k in kept)
    assert any(not np.array_equal(np.asarray(new[k]), np.asarray(old[k])) for k in old if "['b']" in k)


def test_a_none_update_keeps_the_average_bit_for_bit():
    # The 8-bit path of a kept leaf is rprop's, in test_storage_options; here the average, eagerly.
    params = {"w": make_params()["dense"]["w"], "b": make_params()["dense"]["b"]}
    tx = jz.torch.asgd(lr=0.05, t0=0)
    _, state = tx.update(jax.tree.map(lambda p: grad_fn(p, 1, jnp), params), tx.init(params), params)
    _check_a_none_update_keeps_its_state(tx, state, params, update=tx.update, encoded=False)


STORAGE = {  # case: (rprop's storage options, asgd's); None is the default, which every other test runs
    "bfloat16": (dict(step_size_dtype=jz.StochasticBF16(), prev_dtype=jnp.bfloat16), dict(ax_dtype=jnp.bfloat16)),
    "8bit": (dict(step_size_dtype=Q8, prev_dtype=Q8), dict(ax_dtype=Q8)),
}


@pytest.mark.parametrize("case", list(STORAGE))
def test_storage_options(case):
    rprop_storage, asgd_storage = STORAGE[case]
    params = eight_bit_params()
    full_rprop, full_rprop_state = summed_updates(jz.torch.rprop(lr=0.05), params)
    ours, state = summed_updates(jz.torch.rprop(lr=0.05, **rprop_storage), params)
    assert_updates_close(ours, full_rprop, rtol=0.05)

    full_asgd, full_asgd_state = summed_updates(jz.torch.asgd(lr=0.05, t0=1.0), params)
    ours_asgd, asgd_state = summed_updates(jz.torch.asgd(lr=0.05, t0=1.0, **asgd_storage), params)
    assert_trees_close(ours_asgd, full_asgd, rtol=1e-6)  # the average does not feed back into the steps
    rtol = 0.05 if case == "8bit" else 0.01  # the average of 5 iterates ~1 in size, in 8 bits or bfloat16
    assert_updates_close(_averaged_params(asgd_state), _averaged_params(full_asgd_state), rtol=rtol)

    if case == "8bit":
        check_eight_bit_state(state, (1, 1))  # prev signed (int8), step sizes non-negative (uint8)
        check_eight_bit_state(asgd_state, (1, 0))
        assert jz.storage.state_bytes(state) < 0.3 * jz.storage.state_bytes(full_rprop_state)
        # The previous gradient's sign (-1, 0 or 1) survives the 8-bit code exactly: the same steps.
        exact, _ = summed_updates(jz.torch.rprop(lr=0.05, prev_dtype=Q8), params)
        assert_trees_equal(exact, full_rprop)
        _check_a_none_update_keeps_its_state(jz.torch.rprop(lr=0.05, **rprop_storage), state, params)
    else:
        dtypes = {x.dtype for x in jax.tree.leaves((state, asgd_state)) if x.ndim}
        assert dtypes == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("bad", [jnp.int8, "x"], ids=["int8", "string"])
@pytest.mark.parametrize(
    "factory, arg", [(jz.torch.rprop, "step_size_dtype"), (jz.torch.rprop, "prev_dtype"), (jz.torch.asgd, "ax_dtype")]
)
def test_bad_storage_option_names_the_argument(factory, arg, bad):
    with pytest.raises(ValueError, match=rf"^torch\.{factory.__name__}: {arg}"):
        factory(**{arg: bad})


# --- jit with donation, vmap, Flax.


FLOAT32 = {  # name: (our options, the reference)
    "rprop": (dict(lr=0.05, etas=(0.3, 1.5)), reference.torch_rprop(0.05, (0.3, 1.5))),
    "asgd": (dict(lr=0.05, lambd=0.5, t0=5.0, weight_decay=0.1), reference.torch_asgd(0.05, 0.5, t0=5.0, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", list(FLOAT32))
def test_jitted_donated_float32_steps_match_eager_steps_and_the_reference(name):
    options, ref = FLOAT32[name]
    tx = getattr(jz.torch, name)(**options)
    params = make_params()
    expected = run_reference(ref, params)
    state = tx.init(params)
    donated = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    for t in range(1, STEPS + 1):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        if t <= 3:
            eager_updates, eager_state = tx.update(grads, state, params)
        copy = jax.tree.map(jnp.copy, state)
        updates, state = donated(params, copy, grads)
        assert all(x.is_deleted() for x in jax.tree.leaves(copy))
        if t <= 3:
            assert_trees_close(updates, eager_updates, rtol=1e-6, atol=1e-7)
            assert_trees_close(state, eager_state, rtol=1e-6, atol=1e-7)
        params = jz.apply_updates(params, updates)
        assert_trees_close(params, expected[t - 1], rtol=2e-4, atol=2e-5)  # float32 against float64


@pytest.mark.parametrize("name", ["rprop", "asgd"])
def test_vmap_over_param_trees_matches_separate_runs(name):
    tx = getattr(jz.torch, name)(lr=0.05, **({"t0": 2.0} if name == "asgd" else {}))
    trees = [make_params(seed=0), make_params(seed=1)]
    batched = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

    def run(params):
        state = tx.init(params)
        for t in range(1, 3):  # two steps: the second reads the state the first wrote
            updates, state = tx.update(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), state, params)
            params = jz.apply_updates(params, updates)
        return params, state

    together, alone = jax.jit(jax.vmap(run))(batched), run  # alone: eagerly
    for i, params in enumerate(trees):
        assert_trees_close(jax.tree.map(lambda x: x[i], together), alone(params), rtol=1e-6, atol=1e-7)


X = jax.random.normal(jax.random.key(0), (16, 5))
Y = jnp.sin(X.sum(axis=1, keepdims=True))


class _MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden, self.out = nnx.Linear(5, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.tanh(self.hidden(x)))


def test_nnx_state_keeps_variable_metadata_and_gives_the_averaged_params():
    model = _MLP(nnx.Rngs(0))
    # 4 params, with 2 per-parameter fields (step_size, prev) and 1 (ax).
    for tx, fields in ((jz.torch.rprop(), 2), (jz.torch.asgd(), 1)):
        leaves = jax.tree.leaves(tx.init(nnx.state(model, nnx.Param)), is_leaf=lambda x: isinstance(x, nnx.Variable))
        assert sum(isinstance(x, nnx.Param) for x in leaves) == 4 * fields
    # averaged_params reads through nnx.Optimizer's wrapping of the state (0 before any step).
    optimizer = nnx.Optimizer(model, jz.torch.asgd(), wrt=nnx.Param)
    averaged = jax.tree.leaves(jz.averaged_params(optimizer.opt_state))
    assert [x.shape for x in averaged] == [x.shape for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    assert not any(np.any(np.asarray(x)) for x in averaged)


def test_linen_train_state_trains():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))

    net = Net()
    params = net.init(jax.random.key(1), X)
    state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=jz.torch.rprop(lr=0.01))
    loss = lambda p: jnp.mean((net.apply(p, X) - Y) ** 2)
    step = jax.jit(lambda state: state.apply_gradients(grads=jax.grad(loss)(state.params)))
    for _ in range(4):
        state = step(state)
    assert int(state.step) == 4 and float(loss(state.params)) < float(loss(params))


# --- Construction-time checks and the averaged-params reader.


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.torch.rprop(lr=-0.1), r"^torch\.rprop: lr must be >= 0, got -0\.1"),
        (lambda: jz.torch.rprop(etas=(1.5, 2.0)), r"^torch\.rprop: etas\[0\] must be in \(0, 1\), got 1\.5"),
        (lambda: jz.torch.rprop(etas=(0.0, 2.0)), r"^torch\.rprop: etas\[0\] must be in \(0, 1\)"),
        (lambda: jz.torch.rprop(etas=(0.5, 1.0)), r"^torch\.rprop: etas\[1\] must be > 1, got 1\.0"),
        (lambda: jz.torch.rprop(etas=0.5), r"^torch\.rprop: etas must be a pair \(etaminus, etaplus\)"),
        (lambda: jz.torch.rprop(step_sizes=(1e-6,)), r"^torch\.rprop: step_sizes must be a pair \(min, max\)"),
        (lambda: jz.torch.rprop(step_sizes=(-1e-6, 50)), r"^torch\.rprop: step_sizes\[0\] must be >= 0"),
        (lambda: jz.torch.rprop(step_sizes=(1.0, 0.5)), r"^torch\.rprop: step_sizes\[0\] must be <= step_sizes\[1\]"),
        (lambda: jz.torch.rprop(maximize=1), r"^torch\.rprop: maximize must be True or False"),
        (lambda: jz.scale_by_resilient_step(eta_plus=0.9), r"^scale_by_resilient_step: eta_plus must be > 1"),
        (lambda: jz.torch.asgd(lr=-0.1), r"^torch\.asgd: lr must be >= 0"),
        (lambda: jz.torch.asgd(weight_decay=-1.0), r"^torch\.asgd: weight_decay must be >= 0"),
        (lambda: jz.torch.asgd(lambd=-1e-4), r"^torch\.asgd: lambd must be >= 0"),
        (lambda: jz.torch.asgd(alpha="x"), r"^torch\.asgd: alpha must be a finite real number"),
        (lambda: jz.torch.asgd(t0=float("inf")), r"^torch\.asgd: t0 must be a finite real number"),
        (lambda: jz.torch.asgd(maximize="yes"), r"^torch\.asgd: maximize must be True or False"),
        (lambda: jz.average_iterates(t0=None), r"^average_iterates: t0 must be a finite real number"),
    ],
)
def test_invalid_options_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_kernel_options_are_accepted():
    jz.torch.rprop(capturable=True, foreach=True, differentiable=True)
    jz.torch.asgd(foreach=False, differentiable=True, capturable=True)


def test_averaged_params_needs_exactly_one_average():
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="exactly one average_iterates state .* found 0"):
        jz.averaged_params(jz.torch.rprop().init(params))
    twice = jz.chain(jz.average_iterates(), jz.average_iterates())
    with pytest.raises(ValueError, match="found 2"):
        jz.averaged_params(twice.init(params))


@pytest.mark.parametrize("ax_dtype", [None, jz.Blockwise8Bit()], ids=["plain", "eight_bit"])
def test_asgd_refuses_a_state_built_for_other_shapes(ax_dtype):
    # The averaged iterate of shape (1, 3) was broadcast to the gradient's (4, 3), and the state grew.
    tx = jz.torch.asgd(ax_dtype=ax_dtype)
    state = tx.init({"w": jnp.zeros((1, 3))})
    with pytest.raises(ValueError, match=r"^average_iterates: the updates tree does not match the averaged iterate "
                       r"\(state\.ax\): shapes differ at \['w'\] \(4, 3\) vs \(1, 3\)"):
        tx.update({"w": jnp.full((4, 3), 0.5)}, state, {"w": jnp.ones((4, 3))})
