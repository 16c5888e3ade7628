"""Wrappers that record (snapshot, monitor, measure_with_ema): Optax bit for bit, a state that keeps its
structure, storage of the moving average, extra args, jit with donation, inject_hyperparams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests.conftest import assert_trees_close, assert_trees_equal, grad_fn, make_params, run_ours, run_together

STEPS = 20
CLIP = 1.0  # the gradient norms of this trajectory straddle it: some steps are clipped, some are not


def clipped(updates):
    return jz.tree.global_norm(updates) > CLIP


def squares(updates):  # a tree-valued measurement
    return jax.tree.map(lambda u: jnp.sum(u * u), updates)


def ours_monitored(accumulator_dtype=None):
    return jz.chain(
        jz.sgd(0.05, momentum=0.9),
        jz.snapshot("before_clip", jz.tree.global_norm),
        jz.monitor({
            "norm": jz.tree.global_norm,
            "clipped_ema": jz.measure_with_ema(clipped, decay=0.9),
            "squares_ema": jz.measure_with_ema(squares, 0.8, debias=False, accumulator_dtype=accumulator_dtype),
        }),
        jz.clip_by_global_norm(CLIP),
    )


def optax_monitored(accumulator_dtype=None):
    return optax.chain(
        optax.sgd(0.05, momentum=0.9),
        optax.snapshot("before_clip", optax.tree.norm),
        optax.monitor({
            "norm": optax.tree.norm,
            "clipped_ema": optax.measure_with_ema(lambda u: optax.tree.norm(u) > CLIP, decay=0.9),
            "squares_ema": optax.measure_with_ema(squares, 0.8, debias=False, accumulator_dtype=accumulator_dtype),
        }),
        optax.clip_by_global_norm(CLIP),
    )


def measurements(state):
    """The leaves of the snapshot, monitor's measurements and its measure states in the chains above."""
    return jax.tree.leaves((state[1].measurement, state[2].measurements, state[2].measure_states))


@pytest.mark.parametrize("accumulator_dtype", [None, jnp.bfloat16], ids=["default", "bfloat16"])
def test_matches_optax_bit_for_bit(accumulator_dtype):
    params = make_params()
    (our_iterates, our_state), (their_iterates, their_state) = run_together([
        ours_monitored(accumulator_dtype),
        optax_monitored(accumulator_dtype),
    ], params, steps=STEPS)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(measurements(our_state), measurements(their_state))
    assert 0.0 < float(our_state[2].measurements["clipped_ema"]) < 1.0  # clipped at some steps only
    stored = our_state[2].measure_states[2][1].ema  # the measurement is formed before it is stored, as in Optax
    assert stored["dense"]["w"].dtype == (accumulator_dtype or jnp.float32)


def test_the_state_keeps_its_structure_from_init_on():
    # So a lax.scan can carry it (Optax's monitor state gains its measurements at the first update).
    tx, params = ours_monitored(), make_params()
    state = tx.init(params)
    assert set(state[2].measurements) == {"norm", "clipped_ema", "squares_ema"}
    assert state[2].measurements["clipped_ema"].dtype == jnp.float32  # a bool measure's average is a float

    def step(carry, t):
        params, state = carry
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        updates, state = tx.update(grads, state, params)
        return (jz.apply_updates(params, updates), state), None

    (scanned, scanned_state), _ = jax.lax.scan(step, (params, state), jnp.arange(1, STEPS + 1))
    looped, looped_state = run_ours(tx, params, steps=STEPS)
    assert jax.tree.structure(scanned_state) == jax.tree.structure(state)
    assert_trees_close(scanned, looped[-1], rtol=1e-5, atol=1e-6)
    assert_trees_close(measurements(scanned_state), measurements(looped_state), rtol=1e-5, atol=1e-6)


def test_snapshot_reads_the_updates_at_its_place_in_the_chain():
    tx = jz.chain(jz.scale(2.0), jz.snapshot("doubled", lambda u: u), jz.scale(0.5))
    params = {"w": jnp.array([1.0, -3.0]), "frozen": jnp.ones(2)}
    state = tx.init(params)
    np.testing.assert_array_equal(state[1].measurement["doubled"]["w"], params["w"])  # the params at init, as Optax
    updates, state = tx.update({"w": jnp.array([0.5, 1.0]), "frozen": None}, state)
    np.testing.assert_array_equal(state[1].measurement["doubled"]["w"], [1.0, 2.0])
    assert updates["frozen"] is None and state[1].measurement["doubled"]["frozen"] is None


def test_moving_average_storages():
    params = make_params()
    expected = run_ours(ours_monitored(), params, steps=6)[1][2].measurements["squares_ema"]
    for storage in (jz.StochasticBF16(), jz.Blockwise8Bit()):
        state = run_ours(ours_monitored(storage), params, steps=6)[1]
        assert_trees_close(state[2].measurements["squares_ema"], expected, rtol=1e-2)  # formed before it is stored
        stored = state[2].measure_states[2][1].ema
        assert_trees_close(jax.tree.map(jz.storage.read_leaf, stored), expected, rtol=2e-2)


def test_extra_args_reach_every_measure():
    seen = []

    def update(updates, state, params=None, **extra_args):
        seen.append(sorted(extra_args))
        return extra_args["loss"], state

    recorder = jz.GradientTransformation(lambda params: jz.EmptyState(), update)
    tx = jz.monitor({"loss": recorder, "norm": jz.tree.global_norm})
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    assert set(state.measurements) == {"norm"}  # the loss is known at the first update only, as in Optax
    _, state = tx.update(params, state, loss=jnp.asarray(0.25))
    assert float(state.measurements["loss"]) == 0.25 and seen[-1] == ["loss"]


def test_jitted_donated_steps_and_inject_hyperparams():
    params = make_params()
    tx = ours_monitored()
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    state = tx.init(params)
    eager_params, eager_state = params, tx.init(params)
    for t in range(1, 5):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        updates, state = step(params, state, grads)
        params = jz.apply_updates(params, updates)
        updates, eager_state = tx.update(grads, eager_state, eager_params)
        eager_params = jz.apply_updates(eager_params, updates)
    assert_trees_close(measurements(state), measurements(eager_state), rtol=1e-5, atol=1e-6)

    injected = jz.inject_hyperparams(jz.measure_with_ema, static_args="measure")
    plain = jz.monitor({"ema": jz.measure_with_ema(squares, decay=0.8)})
    tx = jz.monitor({"ema": injected(measure=squares, decay=0.8)})
    a = run_ours(plain, make_params(), steps=4)[1].measurements["ema"]
    b = run_ours(tx, make_params(), steps=4)[1].measurements["ema"]
    assert_trees_close(a, b, rtol=1e-6)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: jz.snapshot(3, jz.tree.global_norm), r"^snapshot: measure_name must be a string, got 3"),
        (lambda: jz.snapshot("norm", "global_norm"), r"^snapshot: measure must be a callable"),
        (lambda: jz.monitor([jz.tree.global_norm]), r"^monitor: measures must be a dict"),
        (lambda: jz.monitor({"norm": 3.0}), r"^monitor: measures\['norm'\] must be a callable"),
        (lambda: jz.measure_with_ema(squares, decay=1.0), r"^measure_with_ema: decay must be in \[0, 1\), got 1.0"),
        (lambda: jz.measure_with_ema(squares, 0.9, debias=1), r"^measure_with_ema: debias must be True or False"),
        (lambda: jz.measure_with_ema(squares, 0.9, accumulator_dtype=jnp.int8),
         r"^measure_with_ema: accumulator_dtype"),
    ],
)
def test_bad_arguments_name_the_function_and_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_init_sharded_lays_out_per_parameter_measurements_like_the_params():
    # The measurements were built as replicated zeros from their shapes: a per-parameter measurement sat whole on
    # every device, and the jitted step returned it sharded (a second compilation).
    from jax.sharding import NamedSharding

    from tests.conftest import SHARD_AXES, SHARD_SPECS, sharded_params

    mesh = jax.make_mesh((2, 4), SHARD_AXES, devices=jax.devices("cpu")[:8])
    params = {k: jax.device_put(v, NamedSharding(mesh, SHARD_SPECS[k])) for k, v in sharded_params().items()}
    tx = jz.monitor({"abs": lambda u: jax.tree.map(jnp.abs, u),
                     "abs_ema": jz.measure_with_ema(lambda u: jax.tree.map(jnp.abs, u), decay=0.9)})
    state = jz.init_sharded(tx, params)
    for name in ("abs", "abs_ema"):
        for k, spec in SHARD_SPECS.items():
            assert state.measurements[name][k].sharding.spec == spec, (name, k)
    step = jax.jit(tx.update)
    _, state = step(params, state, params)
    _, state = step(params, state, params)
    assert step._cache_size() == 1
