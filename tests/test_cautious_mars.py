"""Cautious masking (C-AdamW, C-Lion, C-SGD) and MARS (MARS-AdamW, MARS-Lion).

Float64 references written from the papers (tests/reference.py, "cautious, mars"), caution off and MARS at
gamma = 0 against the base optimizers bit for bit, storage options, None leaves, jit with donation, vmap,
inject_hyperparams, shard_map without axis_name, bad input, zero gradients and Flax NNX.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import (
    MLP,
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_reference,
    shard_map_steps,
    sharded_params,
)
from tests.test_adam_contrib import encoded_leaves, max_relative_error, run_together
from tests.test_optimizers import assert_updates_close, eight_bit_params

R = reference
Q8 = jz.Blockwise8Bit()
MESH_AXES = ("data", "model")


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


def gamma_ramp(step):
    # A gamma schedule (the paper's gamma_t): 0 at the first step, 0.05 from the fifth on.
    return 0.05 * jnp.minimum(step / 4.0, 1.0)


def gamma_ramp_np(step):
    return 0.05 * min(step / 4.0, 1.0)


def leaf_relative_error(actual, expected) -> float:
    """The largest ``||a - e|| / ||e||`` over the leaves of two trajectories (entrywise ratios blow up near 0)."""
    pairs = zip(jax.tree.leaves(actual), jax.tree.leaves(expected))
    return max(float(np.linalg.norm(np.asarray(a, np.float64) - e) / np.linalg.norm(e)) for a, e in pairs)


def shapes(dtype=jnp.float32) -> dict:
    """conftest's tree (a 3 x 4 matrix, a 4-vector, a scalar) and a 3 x 5 x 2 tensor."""
    rng = np.random.default_rng(1)
    return make_params(dtype) | {"t": jnp.asarray(rng.normal(size=(3, 5, 2)), dtype)}


# --- against the papers, in float64 -------------------------------------------------------------

REFERENCE_CASES = {
    "cautious_adamw": (lambda: jz.cautious_adamw(0.05, 0.8, 0.99, weight_decay=0.3),
                       lambda: R.cautious_adamw(0.05, 0.8, 0.99, weight_decay=0.3)),
    "cautious_adamw_options": (
        lambda: jz.cautious_adamw(decaying, 0.9, 0.99, 1e-6, 1e-8, weight_decay=0.1, nesterov=True),
        lambda: R.cautious_adamw(decaying, 0.9, 0.99, 1e-6, 1e-8, weight_decay=0.1, nesterov=True),
    ),
    "cautious_lion": (lambda: jz.cautious_lion(0.01, weight_decay=0.1),
                      lambda: R.cautious_lion(0.01, 0.9, 0.99, weight_decay=0.1)),
    "cautious_sgd_nesterov": (lambda: jz.cautious_sgd(0.02, momentum=0.8, nesterov=True),
                              lambda: R.cautious_sgd(0.02, 0.8, nesterov=True)),
    "mars_adamw": (lambda: jz.mars_adamw(0.05, weight_decay=0.1), lambda: R.mars_adamw(0.05, weight_decay=0.1)),
    # A clip at 4 that some steps of some leaves reach and others do not, gamma scheduled.
    "mars_adamw_options": (
        lambda: jz.mars_adamw(decaying, 0.9, 0.999, 1e-6, weight_decay=0.2, gamma=gamma_ramp, max_norm=4.0),
        lambda: R.mars_adamw(decaying, 0.9, 0.999, 1e-6, weight_decay=0.2, gamma=gamma_ramp_np, max_norm=4.0),
    ),
    "mars_lion_no_clip": (lambda: jz.mars_lion(0.01, weight_decay=0.1, gamma=0.05, max_norm=None),
                          lambda: R.mars_lion(0.01, weight_decay=0.1, gamma=0.05, max_norm=None)),
}


@functools.cache
def float64_runs():
    with jax.enable_x64(True):
        runs = run_together({name: make() for name, (make, _) in REFERENCE_CASES.items()}, shapes(jnp.float64))
        return jax.tree.map(np.asarray, runs)


@functools.cache
def reference_run(name: str):
    with jax.enable_x64(True):
        return run_reference(REFERENCE_CASES[name][1](), shapes(jnp.float64), steps=20)


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_matches_float64_reference(name, x64):
    iterates, _ = float64_runs()[name]
    assert iterates[0]["dense"]["w"].dtype == np.float64 and len(iterates) == 20
    assert max_relative_error(iterates, reference_run(name)) < 1e-9


def test_the_mask_and_the_correction_change_the_trajectories(x64):
    # The references above would pass for plain AdamW / Lion only if caution and MARS did nothing here.
    params = shapes(jnp.float64)
    adamw = run_reference(R.adam(0.05, 0.8, 0.99, weight_decay=0.3), params, steps=20)
    assert max_relative_error(reference_run("cautious_adamw"), adamw) > 1e-2
    plain = run_reference(R.adam(0.05, 0.95, 0.99, weight_decay=0.1), params, steps=20)
    assert max_relative_error(reference_run("mars_adamw"), plain) > 1e-2
    unclipped = run_reference(R.mars_adamw(0.05, weight_decay=0.1, max_norm=None), params, steps=20)
    assert max_relative_error(reference_run("mars_adamw"), unclipped) > 1e-2


# --- float32: caution off and gamma = 0 are the base optimizers bit for bit ------------------------

C = optax
FLOAT32_CASES = {
    "cautious_adamw_off": lambda: jz.cautious_adamw(0.05, weight_decay=0.3, caution=False),
    "adamw": lambda: jz.adamw(0.05, weight_decay=0.3),
    "optax_adamw": lambda: optax.adamw(0.05, weight_decay=0.3),
    "cautious_lion_off": lambda: jz.cautious_lion(0.01, weight_decay=0.1, caution=False),
    "lion": lambda: jz.lion(0.01, weight_decay=0.1),
    "optax_lion": lambda: optax.lion(0.01, weight_decay=0.1),
    "cautious_sgd_off": lambda: jz.cautious_sgd(0.02, momentum=0.9, caution=False),
    "optax_sgd": lambda: optax.sgd(0.02, momentum=0.9),
    "mars_gamma_0+adamw": lambda: jz.chain(jz.mars_correction(0.0, max_norm=None), jz.adamw(0.05, weight_decay=0.3)),
    # Caution on, and the same wrapped around Optax's transformations.
    "cautious_adamw": lambda: jz.cautious_adamw(0.05, 0.8, 0.99, weight_decay=0.3),
    "cautious(optax)": lambda: optax.chain(jz.cautious(optax.scale_by_adam(0.8, 0.99)),
                                           optax.add_decayed_weights(0.3), optax.scale_by_learning_rate(0.05)),
    "mars_adamw": lambda: jz.mars_adamw(0.05, weight_decay=0.1),
}
BIT_FOR_BIT = [("cautious_adamw_off", "adamw"), ("cautious_adamw_off", "optax_adamw"), ("cautious_lion_off", "lion"),
               ("cautious_lion_off", "optax_lion"), ("cautious_sgd_off", "optax_sgd"), ("mars_gamma_0+adamw", "adamw"),
               ("cautious(optax)", "cautious_adamw")]


@functools.cache
def float32_runs():
    return run_together({name: make() for name, make in FLOAT32_CASES.items()}, shapes())


@pytest.mark.parametrize("ours, theirs", BIT_FOR_BIT, ids=[f"{a}=={b}" for a, b in BIT_FOR_BIT])
def test_caution_off_and_gamma_zero_are_the_base_optimizer_bit_for_bit(ours, theirs):
    our_iterates, their_iterates = float32_runs()[ours][0], float32_runs()[theirs][0]
    assert_trees_equal(our_iterates, their_iterates)
    assert not np.allclose(our_iterates[-1]["dense"]["w"], shapes()["dense"]["w"])


@pytest.mark.parametrize("name", ["cautious_adamw", "mars_adamw"])
def test_float32_follows_the_float64_reference(name):
    iterates = float32_runs()[name][0]
    assert iterates[-1]["t"].dtype == jnp.float32
    # float32 rounding over 20 steps, leaf by leaf (entries near 0 make entrywise ratios meaningless); Adam's
    # eps = 1e-8 step on small second moments amplifies it to ~4e-5 for MARS-AdamW.
    assert leaf_relative_error(iterates, reference_run(name)) < 1e-4


def test_mars_correction_with_gamma_zero_is_the_identity():
    unclipped, clipped = jz.mars_correction(0.0, max_norm=None), jz.mars_correction(0.0)

    @jax.jit
    def three_steps(params, gradient_steps):
        state, small_state, out = unclipped.init(params), clipped.init(params), []
        # The gradients are inputs: computed in here, XLA may compute them twice (for the output and for the
        # update) and an FMA in one of the two copies changes its last bit.
        for grads in gradient_steps:
            small = jax.tree.map(lambda g: g / (10 * jnp.linalg.norm(g)), grads)  # below the clip
            corrected, state = unclipped.update(grads, state)
            small_corrected, small_state = clipped.update(small, small_state)
            out.append((grads, corrected, small, small_corrected))
        return out, clipped.update(grads, small_state)[0]

    steps, large = three_steps(shapes(), [jax.tree.map(lambda p: grad_fn(p, t, jnp), shapes()) for t in range(1, 4)])
    for grads, corrected, small, small_corrected in steps:
        assert_trees_equal(corrected, grads)
        assert_trees_equal(small_corrected, small)
    for leaf in jax.tree.leaves(large):  # above the clip, each leaf alone is scaled to unit norm
        np.testing.assert_allclose(float(jnp.linalg.norm(leaf)), 1.0, rtol=1e-6)


# --- storage options ---------------------------------------------------------------------------

STORED = {
    "cautious_adamw": lambda s: jz.cautious_adamw(1e-2, weight_decay=0.1, mu_dtype=s, nu_dtype=s),
    "mars_adamw": lambda s: jz.mars_adamw(1e-2, weight_decay=0.1, mu_dtype=s, nu_dtype=s, prev_dtype=s),
}
EIGHT_BIT_COUNTS = {"cautious_adamw": (1, 1), "mars_adamw": (2, 1)}  # (int8, uint8): signed, non-negative moments


@functools.cache
def storage_runs():
    kinds = {"full": None, "8bit": Q8, "bf16": jz.StochasticBF16()}
    cases = {(name, kind): make(storage) for name, make in STORED.items() for kind, storage in kinds.items()}
    return run_together(cases, eight_bit_params(), steps=5)


@pytest.mark.parametrize("name", list(STORED))
@pytest.mark.parametrize("kind", ["8bit", "bf16"])
def test_low_bit_state_tracks_full_precision(name, kind):
    (iterates, state), (expected, full_state) = storage_runs()[name, kind], storage_runs()[name, "full"]
    params = eight_bit_params()
    moved = lambda its: jax.tree.map(jnp.subtract, its[-1], params)  # the summed updates
    assert_updates_close(moved(iterates), moved(expected), rtol=0.05)
    if kind == "8bit":
        assert encoded_leaves(state) == EIGHT_BIT_COUNTS[name]
        assert jz.storage.state_bytes(state) < 0.3 * jz.storage.state_bytes(full_state)
    else:
        moments = [x for x in jax.tree.leaves(state) if x.dtype == jnp.bfloat16]
        assert len(moments) == 2 * (3 if name == "mars_adamw" else 2)  # "w" and "b" of every moment


# --- None leaves, jit with donation, vmap, inject_hyperparams ------------------------------------


@pytest.mark.parametrize("name", ["cautious_adamw", "mars_adamw"])
def test_none_update_keeps_param_and_state_bit_for_bit(name):
    tx = STORED[name](jz.StochasticBF16())

    @jax.jit
    def two_steps(params):
        grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
        _, state = tx.update(grads, tx.init(params), params)  # some history first
        return (state, *tx.update(grads | {"t": None}, state, params))

    params = shapes()
    state, updates, new_state = two_steps(params)
    assert updates["t"] is None and updates["dense"]["w"] is not None
    new_params = jz.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params["t"], params["t"])
    is_t = lambda path: jax.tree_util.DictKey("t") in path
    old = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0] if is_t(p)]
    new = [x for p, x in jax.tree_util.tree_flatten_with_path(new_state)[0] if is_t(p)]
    assert len(old) == (3 if name == "mars_adamw" else 2)
    for (_, a), b in zip(old, new):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


@pytest.mark.parametrize("name", ["cautious_adamw", "mars_adamw"])
def test_jitted_steps_donating_params_and_state_follow_the_trajectory(name):
    tx = FLOAT32_CASES[name]()

    def step(p, s, t):
        u, s = tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p)
        return jz.apply_updates(p, u), s

    donated = jax.jit(step, donate_argnums=(0, 1))
    current = jax.tree.map(jnp.copy, shapes())
    state = tx.init(current)
    for t in range(1, 4):
        current, state = donated(current, state, t)
    assert_trees_close(current, float32_runs()[name][0][2], rtol=1e-6, atol=1e-7)


VMAPPED = ["cautious_adamw", "mars_adamw"]


@functools.cache
def vmap_runs():
    """Three steps on a stack of two param sets (vmapped) and on each set alone, all in one jitted program."""
    batch = [shapes()] + [make_params(seed=1) | {"t": 2.0 * shapes()["t"]}]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
    txs = {name: FLOAT32_CASES[name]() for name in VMAPPED}

    def one_step(tx, params, state, t):
        updates, state = tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), params), state, params)
        return jz.apply_updates(params, updates), state

    @jax.jit
    def run():
        out = {}
        for name, tx in txs.items():
            together, separate = (stacked, jax.vmap(tx.init)(stacked)), [(p, tx.init(p)) for p in batch]
            for t in range(1, 4):
                together = jax.vmap(lambda p, s: one_step(tx, p, s, t))(*together)
                separate = [one_step(tx, p, s, t) for p, s in separate]
            out[name] = (together[0], [p for p, _ in separate])
        return out

    return run()


@pytest.mark.parametrize("name", VMAPPED)
def test_vmap_over_parameter_sets_equals_separate_runs(name):
    # The mask's count and the clip's norm are per leaf of each set, never across the vmapped sets.
    together, separate = vmap_runs()[name]
    for i, alone in enumerate(separate):
        assert_trees_close(jax.tree.map(lambda x: x[i], together), alone, rtol=1e-6, atol=1e-7)


@functools.cache
def injected_runs():
    cases = {
        "cautious_adamw": jz.inject_hyperparams(jz.cautious_adamw)(learning_rate=decaying, weight_decay=0.3),
        "mars_adamw": jz.inject_hyperparams(jz.mars_adamw)(learning_rate=0.05, gamma=gamma_ramp, weight_decay=0.1),
        "plain_cautious_adamw": jz.cautious_adamw(decaying, weight_decay=0.3),
        "plain_mars_adamw": jz.mars_adamw(0.05, weight_decay=0.1, gamma=gamma_ramp),
    }
    return run_together(cases, shapes(), steps=6)


@pytest.mark.parametrize("name, scheduled", [("cautious_adamw", "learning_rate"), ("mars_adamw", "gamma")])
def test_inject_hyperparams_with_a_schedule_gives_the_plain_trajectory(name, scheduled):
    injected, state = injected_runs()[name]
    # Injected hyperparameters are float32 arrays (b1, b2, eps, ...), rounded otherwise than Python floats.
    assert leaf_relative_error(injected, injected_runs()["plain_" + name][0]) < 1e-5
    assert scheduled in state.hyperparams and "weight_decay" in state.hyperparams
    assert all(isinstance(value, jax.Array) for value in state.hyperparams.values())


# --- sharding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tx", [jz.cautious_adamw(0.1), jz.mars_adamw(0.1), jz.cautious(jz.trace(0.9))],
                         ids=["cautious_adamw", "mars_adamw", "cautious"])
def test_shard_map_without_axis_name_raises(tx):
    with pytest.raises(ValueError, match="varies over mesh axes"):
        shard_map_steps(tx, steps=1)


def test_init_sharded_state_follows_the_params():
    mesh = jax.make_mesh((2, 4), MESH_AXES, devices=jax.devices("cpu")[:8])
    specs = {"w": jax.sharding.PartitionSpec("data", "model"), "b": jax.sharding.PartitionSpec("model")}
    params = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, specs[k])) for k, v in sharded_params().items()}
    for tx in [jz.cautious_adamw(0.1, axis_name=MESH_AXES), jz.mars_adamw(0.1, prev_dtype=jnp.bfloat16)]:
        state = jz.init_sharded(tx, params)
        jz.check_state_shardings(tx, params, state)
    assert state[0].prev_grad["w"].sharding.spec == specs["w"] and state[0].prev_grad["w"].dtype == jnp.bfloat16


# --- bad input, zero gradients, wrong state ------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.cautious(3.0), r"^cautious: expected gradient transformations"),
        (lambda: jz.cautious(jz.scale_by_adam(), axis_name=3), r"^cautious: axis_name must be None"),
        (lambda: jz.cautious_adamw(-1.0), r"^cautious_adamw: learning_rate must be >= 0, got -1.0"),
        (lambda: jz.cautious_adamw(0.1, b2=1.0), r"^cautious_adamw: b2 must be in \[0, 1\), got 1.0"),
        (lambda: jz.cautious_adamw(0.1, caution=1), r"^cautious_adamw: caution must be True or False"),
        (lambda: jz.cautious_lion(0.1, weight_decay=-1.0), r"^cautious_lion: weight_decay must be >= 0"),
        (lambda: jz.cautious_sgd(0.1, nesterov=True), r"^cautious_sgd: nesterov=True needs a momentum"),
        (lambda: jz.mars_correction(gamma=-0.1), r"^mars_correction: gamma must be >= 0, got -0.1"),
        (lambda: jz.mars_correction(b1=1.0), r"^mars_correction: b1 must be in \[0, 1\), got 1.0"),
        (lambda: jz.mars_correction(max_norm=0.0), r"^mars_correction: max_norm must be > 0, got 0.0"),
        (lambda: jz.mars_correction(prev_dtype=jnp.int8), r"^mars_correction: prev_dtype must be"),
        (lambda: jz.mars_adamw(gamma=float("nan")), r"^mars_adamw: gamma must be a finite real number"),
        (lambda: jz.mars_adamw(prev_dtype="x"), r"^mars_adamw: prev_dtype must be"),
        (lambda: jz.mars_lion(0.1, b1=-0.5), r"^mars_lion: b1 must be in \[0, 1\), got -0.5"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises((ValueError, TypeError), match=message):
        factory()


def test_zero_gradients_give_zero_updates_and_no_nan():
    txs = [jz.cautious_adamw(0.1, eps=0.0, weight_decay=0.0), jz.mars_adamw(0.1, eps=0.0),
           jz.cautious_lion(0.1, weight_decay=0.0)]

    @jax.jit
    def two_steps(params):
        zeros, out = jax.tree.map(jnp.zeros_like, params), []
        for tx in txs:
            state = tx.init(params)
            for _ in range(2):
                updates, state = tx.update(zeros, state, params)
                out.append(updates)
        return out

    for leaf in jax.tree.leaves(two_steps(shapes())):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def test_a_non_finite_direction_is_not_masked_away():
    # apply_if_finite must still see it: the mask multiplies, it does not select.
    tx = jz.cautious(jz.scale_by_adam())
    updates, _ = tx.update(jnp.array([1.0, jnp.nan, -1.0]), tx.init(jnp.zeros(3)))
    assert np.isnan(updates[1]) and np.isfinite(updates[0])


def test_a_state_from_another_transformation_raises():
    params = shapes()
    with pytest.raises(ValueError, match="expected CautiousState"):
        jz.cautious(jz.scale_by_adam()).update(params, jz.scale_by_adam().init(params))
    with pytest.raises(ValueError, match="expected MarsCorrectionState"):
        jz.mars_correction().update(params, jz.scale_by_adam().init(params))


# --- Flax NNX ------------------------------------------------------------------------------------

X = jax.random.normal(jax.random.key(0), (16, 5))
Y = jnp.sin(X.sum(axis=1, keepdims=True))


def test_nnx_optimizer_equals_the_same_transformation_on_the_raw_params():
    tx = jz.chain(jz.mars_correction(max_norm=2.0), jz.cautious_adamw(1e-2, weight_decay=0.1))
    model = MLP(nnx.Rngs(0))
    graphdef, initial = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)  # a twin: nnx_step updates model in place
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    def loss(raw):
        return jnp.mean((nnx.merge(graphdef, raw)(X) - Y) ** 2)

    @jax.jit
    def raw_step(raw, state):
        updates, state = tx.update(jax.grad(loss)(raw), state, raw)
        return jz.apply_updates(raw, updates), state

    raw, state = initial, tx.init(initial)
    for _ in range(3):
        nnx_step(model, optimizer)
        raw, state = raw_step(raw, state)
    assert_trees_equal(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(raw))
    assert not np.allclose(raw["out"]["kernel"][...], initial["out"]["kernel"][...])


def test_bool_gradients_are_masked_like_their_float_values():
    # jnp.sign refused the bool gradient: a TypeError from inside JAX (jz.adamw takes such a leaf).
    grads, params = jnp.array([True, False, True]), jnp.array([1.0, 2.0, 3.0])
    tx = jz.cautious_adamw(0.1)
    np.testing.assert_array_equal(tx.update(grads, tx.init(params), params)[0],
                                  tx.update(grads.astype(jnp.float32), tx.init(params), params)[0])
