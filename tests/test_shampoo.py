"""Shampoo: scale_by_shampoo and the shampoo alias against a float64 NumPy reference (tests/reference.py, written
from Distributed Shampoo's documented algorithm), blocking, merging, refresh schedule, storage, jit/vmap/NNX,
sharding, non-finite factors and bad input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference as R
from tests.conftest import (
    MLP,
    SHARD_AXES,
    SHARD_SPECS,
    assert_programs_agree,
    assert_trees_close,
    assert_trees_equal,
    assert_vmap_matches_separate_runs,
    run_ours,
    run_reference,
    shard_map_steps,
    sharded_params,
)
from tests.test_adam_contrib import run_together

STEPS = 20
PARAMS1 = {"w": jnp.ones((2, 3))}


def shampoo_params(dtype=jnp.float32, seed: int = 0) -> dict:
    """A matrix blocked at max_precond_dim=4 ((4|3) x (4|1): four stacks), a 3-D leaf that merges ((2, 2, 3) ->
    (4, 3)), a vector and a scalar."""
    rng = np.random.default_rng(seed)
    shapes = {"w": (7, 5), "t": (2, 2, 3), "b": (7,), "s": ()}
    return {k: jnp.asarray(rng.normal(size=shape), dtype) for k, shape in shapes.items()}


def transform(lr, **options):
    return jz.chain(jz.scale_by_shampoo(**options), jz.scale_by_learning_rate(lr))


def by_name(flat, params=None) -> dict:
    """The state's flat per-leaf factors (or roots) keyed like ``params`` (default: shampoo_params())."""
    return jax.tree.unflatten(jax.tree.structure(shampoo_params() if params is None else params), flat)


# Refreshes at 3, 6, 9, ... from a start step (5: refreshes at 5, 6, 9, 12, 15, 18; 2: at 2, 3, 6, ...).
COMMON = dict(precondition_frequency=3, max_precond_dim=4, inverse_root="eigh")  # eigh: exact to 1e-9
CASES = {  # name: (ours, reference)
    "transform_ema_1d": (
        lambda: transform(0.02, b2=0.9, eps=1e-3, start_preconditioning_step=5, precondition_1d=True, **COMMON),
        lambda: R.shampoo(0.02, b2=0.9, eps=1e-3, start_preconditioning_step=5, precondition_1d=True, **COMMON),
    ),
    "transform_sums_unmerged_momentum": (
        lambda: transform(0.02, b1=0.5, eps=1e-3, start_preconditioning_step=2, merge_dims=False,
                          exponent_override=2, **COMMON),
        lambda: R.shampoo(0.02, b1=0.5, eps=1e-3, start_preconditioning_step=2, merge_dims=False,
                          exponent_override=2, **COMMON),
    ),
    "shampoo_adam": (
        lambda: jz.shampoo(0.01, b1=0.9, b2=0.99, eps=1e-4, weight_decay=0.1, start_preconditioning_step=4, **COMMON),
        lambda: R.shampoo(0.01, b1=0.9, b2=0.99, eps=1e-4, weight_decay=0.1, grafting="adam",
                          start_preconditioning_step=4, **COMMON),
    ),
    "shampoo_adam_per_leaf": (
        lambda: jz.shampoo(0.01, b1=0.9, b2=0.99, eps=1e-4, graft_per_block=False, **COMMON),
        lambda: R.shampoo(0.01, b1=0.9, b2=0.99, eps=1e-4, grafting="adam", graft_per_block=False, **COMMON),
    ),
    "shampoo_rmsprop_1d": (
        lambda: jz.shampoo(0.01, b2=1.0, eps=1e-4, grafting="rmsprop", grafting_b2=0.9, precondition_1d=True, **COMMON),
        lambda: R.shampoo(0.01, b1=0.9, b2=1.0, eps=1e-4, grafting="rmsprop", grafting_b2=0.9, precondition_1d=True,
                          **COMMON),
    ),
    "shampoo_adagrad": (
        lambda: jz.shampoo(0.01, b1=0.5, eps=1e-4, grafting="adagrad", grafting_eps=1e-6, **COMMON),
        lambda: R.shampoo(0.01, b1=0.5, b2=0.999, eps=1e-4, grafting="adagrad", grafting_eps=1e-6, **COMMON),
    ),
    "shampoo_sgd_no_merge": (
        lambda: jz.shampoo(0.01, b1=0.0, eps=1e-4, grafting="sgd", merge_dims=False, **COMMON),
        lambda: R.shampoo(0.01, b1=0.0, b2=0.999, eps=1e-4, grafting="sgd", merge_dims=False, **COMMON),
    ),
    # Coupled Newton iterations stop at max|M - I| <= 1e-6, so they agree with the exact root to about 1e-6.
    "newton": (
        lambda: transform(0.02, b2=0.9, eps=1e-3, start_preconditioning_step=5, precondition_1d=True,
                          **(COMMON | dict(inverse_root="newton"))),
        lambda: R.shampoo(0.02, b2=0.9, eps=1e-3, start_preconditioning_step=5, precondition_1d=True, **COMMON),
    ),
}
TOLERANCE = {"newton": 1e-5}


@functools.cache
def float64_runs():
    with jax.enable_x64(True):
        runs = run_together({name: make() for name, (make, _) in CASES.items()}, shampoo_params(jnp.float64), STEPS)
        return jax.tree.map(np.asarray, runs)


def max_error(actual, expected) -> float:
    """The largest error of a leaf relative to that leaf's largest entry, over the iterates."""
    pairs = zip(jax.tree.leaves(actual), jax.tree.leaves(expected))
    return max(float(np.max(np.abs(np.asarray(a) - e)) / np.max(np.abs(e))) for a, e in pairs)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name, x64):
    iterates, _ = float64_runs()[name]
    expected = run_reference(CASES[name][1](), shampoo_params(jnp.float64), steps=STEPS)
    assert iterates[0]["w"].dtype == np.float64
    assert max_error(iterates, expected) < TOLERANCE.get(name, 1e-9)
    # The preconditioner acted: a plain step differs from the reference's (this test can fail).
    plain = run_reference(R.shampoo(0.02, max_precond_dim=4, precondition_frequency=10**6), shampoo_params(jnp.float64),
                          steps=STEPS)
    assert max_error(plain, expected) > 1e-3


def test_float32_stays_close_to_the_float64_reference():
    make, ref = CASES["shampoo_adam"]
    iterates, _ = run_together({"f32": make()}, shampoo_params(), STEPS)["f32"]
    expected = run_reference(ref(), shampoo_params(), steps=STEPS)  # the same float32 start, in float64
    assert iterates[-1]["w"].dtype == jnp.float32
    assert max_error(iterates, expected) < 1e-3


def test_roots_refresh_exactly_on_schedule_and_stats_every_step():
    tx = jz.scale_by_shampoo(eps=1e-3, precondition_frequency=3, start_preconditioning_step=2, max_precond_dim=4,
                             inverse_root="eigh")
    params = shampoo_params()
    state, update = tx.init(params), jax.jit(tx.update)
    refreshed = []
    for t in range(1, 9):
        grads = jax.tree.map(lambda p: jnp.sin(p * t) + 0.1 * t, params)
        old = state
        _, state = update(grads, state, params)
        changed = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(*map(jax.tree.leaves, (a, b))))  # noqa
        assert changed(by_name(state.factors)["w"], by_name(old.factors)["w"])
        if changed(by_name(state.roots)["w"], by_name(old.roots)["w"]):
            refreshed.append(t)
    assert refreshed == [2, 3, 6]  # t == start, then t > start with t % 3 == 0
    roots, factors = by_name(state.roots), by_name(state.factors)
    assert roots["b"] == () and roots["s"] == ()  # vectors and scalars are not preconditioned
    assert [len(stack) for stack in factors["t"]] == [2]  # (2, 2, 3) merged to one (4, 3) block


def test_before_the_start_and_unpreconditioned_leaves_pass_through():
    tx = jz.scale_by_shampoo(b1=0.9, start_preconditioning_step=3, inverse_root="eigh")
    params = shampoo_params()
    grads = jax.tree.map(lambda p: p + 1.0, params)
    update = jax.jit(tx.update)
    updates, state = update(grads, tx.init(params), params)  # step 1: identity roots; b1's EMA debiased = g
    assert_trees_close(updates, grads, rtol=1e-6)
    updates, _ = update(grads, state, params)
    assert_trees_close(updates, grads, rtol=1e-6)


def test_the_alias_takes_the_grafting_step_before_the_start_and_on_scalars():
    # Distributed Shampoo's "grafting method" before start_preconditioning_step; a grafted scalar is Adam's step.
    runs = run_together({"shampoo": jz.shampoo(0.1, eps=1e-4, start_preconditioning_step=3, **COMMON),
                         "adam": jz.adam(0.1)}, shampoo_params(), 4)
    (ours, _), (adam, _) = runs["shampoo"], runs["adam"]
    assert_trees_close(ours[:2], adam[:2], rtol=1e-6)
    np.testing.assert_allclose(ours[3]["s"], adam[3]["s"], rtol=1e-6)
    assert max_error(ours[3]["w"], adam[3]["w"]) > 1e-3


def test_none_leaves_pass_through_and_keep_their_state():
    tx = jz.shampoo(0.01, **COMMON, start_preconditioning_step=1)
    params = shampoo_params()
    state = tx.init(params)
    grads = jax.tree.map(lambda p: p + 1.0, params)
    _, state = jax.jit(tx.update)(grads, state, params)
    partial = grads | {"w": None, "b": None}
    updates, new_state = jax.jit(tx.update)(partial, state, params)
    assert updates["w"] is None and updates["b"] is None and updates["t"] is not None
    old, new = state[0].direction, new_state[0].direction  # chain -> graft -> scale_by_shampoo
    assert_trees_equal(by_name(new.factors)["w"], by_name(old.factors)["w"])
    assert_trees_equal(by_name(new.roots)["w"], by_name(old.roots)["w"])
    assert_trees_equal(new.mu["b"], old.mu["b"])
    assert not np.array_equal(by_name(new.factors)["t"][0][0], by_name(old.factors)["t"][0][0])


def test_jit_with_donation_matches_plain_jit():
    tx = jz.shampoo(0.01, **COMMON, start_preconditioning_step=2)
    params = shampoo_params()

    def run(update):
        p, state = params, tx.init(params)
        for t in range(1, 6):
            grads = jax.tree.map(lambda x: jnp.sin(x * t) + 0.1, p)
            updates, state = update(grads, state, p)
            p = jz.apply_updates(p, updates)
        return p, state

    donated = run(jax.jit(tx.update, donate_argnums=(0, 1)))
    assert_programs_agree(donated, run(jax.jit(tx.update)))


def test_vmap_matches_separate_runs():
    # The update jitted, so that the separate runs do not step eagerly (op by op: slow for eigh and friends).
    tx = jz.shampoo(0.01, eps=1e-4, **COMMON, start_preconditioning_step=2)
    batch = [shampoo_params(seed=s) for s in range(2)]
    assert_vmap_matches_separate_runs(jz.GradientTransformation(tx.init, jax.jit(tx.update)), batch, steps=3,
                                      rtol=1e-5, atol=1e-6)


def test_inject_hyperparams_schedules_the_learning_rate():
    schedule = lambda count: 0.02 / (1.0 + count)  # noqa: E731
    # The block layout and the refresh schedule shape the program: they stay static.
    static = ("precondition_frequency", "max_precond_dim")
    # eps=1e-4: at the default 1e-12 the roots amplify float32 rounding (an injected eps is a float32 array, a
    # Python float is not) into visible differences.
    injected = jz.inject_hyperparams(jz.shampoo, static_args=static)(learning_rate=schedule, eps=1e-4, **COMMON)
    runs = run_together({"injected": injected, "plain": jz.shampoo(schedule, eps=1e-4, **COMMON)}, shampoo_params(), 6)
    # Injected hyperparameters are float32 arrays, not Python floats: roundings differ, then the roots amplify them.
    assert_trees_close(runs["injected"][0], runs["plain"][0], rtol=1e-4, atol=1e-5)
    assert float(runs["injected"][1].hyperparams["learning_rate"]) == pytest.approx(0.02 / 6)
    # precondition_frequency and max_precond_dim shape the program: static without naming them (traced, they raised).
    unstatic = jz.inject_hyperparams(jz.shampoo)(learning_rate=0.1)
    jax.jit(unstatic.update)(PARAMS1, unstatic.init(PARAMS1), PARAMS1)
    assert not {"precondition_frequency", "max_precond_dim"} & set(unstatic.init(PARAMS1).hyperparams)
    with pytest.raises(ValueError, match="shampoo: precondition_frequency shapes .* name it in static_args"):
        jax.jit(lambda f: jz.shampoo(0.1, precondition_frequency=f).update(PARAMS1, jz.shampoo(0.1).init(PARAMS1),
                                                                            PARAMS1))(2)


STORAGES = {"bf16": jnp.bfloat16, "sbf16": jz.StochasticBF16(), "8bit": jz.Blockwise8Bit(min_size=256)}


@functools.cache
def storage_runs():
    # A last axis of 128 so that 8-bit blocks fit (see jz.Blockwise8Bit); 64 cuts it into two blocks.
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 128)), jnp.float32), "b": jnp.asarray(rng.normal(size=128))}
    options = dict(eps=1e-4, precondition_frequency=3, max_precond_dim=64, inverse_root="eigh")
    txs = {name: jz.shampoo(0.01, mu_dtype=store, nu_dtype=store, **options) for name, store in STORAGES.items()}
    return run_together(txs | {"fp32": jz.shampoo(0.01, **options)}, params, 12)


@pytest.mark.parametrize("name", list(STORAGES))
def test_storage_options_run_and_stay_close(name):
    (ours, state), (full, _) = storage_runs()[name], storage_runs()["fp32"]
    # Rounding puts a little of the momentum outside the gradients' span, where the rank-deficient factor R (64 x 64,
    # fed 4 rows a step) has eigenvalues eps: the root scales it up by eps^(-1/4) = 10. Hence 10%, not 1%.
    assert 0 < max_error(ours[-1], full[-1]) < 0.1
    graft_state = state[0]
    for mu in (graft_state.direction.mu["w"], graft_state.magnitude.mu["w"]):  # Shampoo's and Adam's
        assert is_encoded(mu) if name == "8bit" else mu.dtype == jnp.bfloat16
    assert all(f.dtype == jnp.float32 for f in jax.tree.leaves(graft_state.direction.factors))  # factors stay float32


def test_nnx_optimizer_trains_and_equals_the_raw_pytree_run():
    x = jax.random.normal(jax.random.key(0), (16, 5))
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    tx = jz.shampoo(0.05, eps=1e-4, precondition_frequency=2, inverse_root="eigh")  # eps: see the inject test
    model = MLP(nnx.Rngs(0))
    graphdef, params = nnx.split(model)  # the raw pytree, before training
    params = jax.tree.map(jnp.array, params)  # copies
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    @jax.jit
    def raw_step(params, state):
        grads = jax.grad(lambda p: jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(6):  # the raw run first: the model's variables are updated in place below
        params, state = raw_step(params, state)
    losses = [float(step(model, optimizer)) for _ in range(6)]
    assert losses[-1] < losses[0]
    assert_trees_close(nnx.state(model), params, rtol=1e-5, atol=1e-6)


def test_nnx_state_keeps_its_structure_under_scan_and_jit():
    # The per-leaf factors live in a flat tuple outside the params' tree: inside an NNX Variable a tuple comes back
    # from optimizer.update as an nnx.State, which broke jax.lax.scan's carry and made nnx.jit retrace.
    x = jax.random.normal(jax.random.key(1), (8, 3))
    y = jnp.cos(x @ jnp.arange(12.0).reshape(3, 4) / 6)
    # The kernel gets two factors, the bias none (its entry is an empty tuple, which must survive NNX too).
    tx = jz.shampoo(0.05, eps=1e-4, precondition_frequency=1, merge_dims=False, inverse_root="eigh")
    loss = lambda m: jnp.mean((m(x) - y) ** 2)  # noqa: E731
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    raw = jax.tree.map(jnp.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # {"bias", "kernel"} copies

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, carry = nnx.split((model, optimizer))

    def step(carry, _):  # as examples/compare_optimizers.py's train
        model, optimizer = nnx.merge(graphdef, carry)
        optimizer.update(model, nnx.grad(loss)(model))
        return nnx.state((model, optimizer)), None

    carry, _ = jax.lax.scan(step, carry, length=3)
    scanned, _ = nnx.merge(graphdef, carry)

    @jax.jit
    def raw_step(params, state):
        grads = jax.grad(lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    state = tx.init(raw)
    for _ in range(3):
        raw, state = raw_step(raw, state)
    # float32: the scan and the loop compile to different programs, whose roundings the roots amplify a little.
    assert_trees_close(nnx.to_pure_dict(nnx.state(scanned, nnx.Param)), raw, rtol=1e-5, atol=1e-6)

    before = jax.tree.structure(nnx.state(optimizer))
    nnx.jit(lambda model, optimizer: optimizer.update(model, nnx.grad(loss)(model)))(model, optimizer)
    assert jax.tree.structure(nnx.state(optimizer)) == before


def test_map_params_maps_the_factors_and_mu_but_not_the_count():
    tx = jz.shampoo(0.01, max_precond_dim=4)
    state = tx.init(shampoo_params())
    shifted = jz.tree.map_params(tx, lambda x: x + 1, state)
    for old, new in ((state[0].direction, shifted[0].direction), (state[0].magnitude, shifted[0].magnitude)):
        assert int(new.count) == int(old.count) == 0
        for name in ("mu", "factors", "roots") if hasattr(old, "factors") else ("mu", "nu"):
            assert jax.tree.structure(getattr(new, name)) == jax.tree.structure(getattr(old, name))
            for a, b in zip(jax.tree.leaves(getattr(new, name)), jax.tree.leaves(getattr(old, name)), strict=True):
                np.testing.assert_array_equal(a, b + 1)


# --- sharding: factors need whole arrays ---------------------------------------------------------------------
def _mesh(axis_type=AxisType.Auto):
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2, devices=jax.devices("cpu")[:8])


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])  # Explicit: jax.make_mesh's default
@pytest.mark.parametrize("inverse_root", ["eigh", "newton"])
def test_init_sharded_lays_factor_blocks_across_devices_and_jit_equals_one_device(axis_type, inverse_root):
    mesh = _mesh(axis_type)
    # At max_precond_dim 4: w has 16 blocks (8 devices hold 2 each), v 6 (split over "data" only, as v is),
    # u 3 (3 does not divide over 4 "model" devices: replicated); b is a vector (grafted, no factors).
    specs = {"w": P("data", "model"), "v": P("data", None), "u": P("model", None), "b": P("model")}
    shapes = {"w": (16, 16), "v": (8, 12), "u": (12, 4), "b": (16,)}
    rng = np.random.default_rng(0)
    host = {k: jnp.asarray(rng.normal(size=shape), jnp.float32) for k, shape in shapes.items()}
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
    tx = jz.shampoo(0.01, eps=1e-4, precondition_frequency=2, max_precond_dim=4, inverse_root=inverse_root)
    expected = {"w": (P(("data", "model")), 2), "v": (P(("data",)), 3), "u": (P(), 3)}

    def assert_blocks_laid_out(state):
        shampoo_state = state[0].direction
        assert shampoo_state.mu["w"].sharding.spec == specs["w"]
        # factors and roots follow jax.tree.leaves(params) order: b, u, v, w.
        for name, factors, roots in zip("buvw", shampoo_state.factors, shampoo_state.roots, strict=True):
            for f in jax.tree.leaves((factors, roots)):
                spec, local_blocks = expected[name]
                assert f.sharding.is_equivalent_to(NamedSharding(mesh, spec), 3), (name, f.sharding)
                assert f.addressable_shards[0].data.shape[0] == local_blocks, name  # each device's own blocks

    state = jz.init_sharded(tx, params)
    assert_blocks_laid_out(state)

    def run(params, state):
        step = jax.jit(tx.update)
        for t in range(1, 4):  # the roots are refreshed at the second step
            grads = jax.tree.map(lambda p: jnp.sin(p * t) + 0.1, params)
            updates, state = step(grads, state, params)
            params = jz.apply_updates(params, updates)
        return params, state

    sharded, final_state = run(params, state)
    assert_blocks_laid_out(final_state)  # the steps keep them there
    assert_trees_close(sharded, run(host, tx.init(host))[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_precond_dim", [4, 8])
def test_shard_map_with_axis_name_equals_one_device_and_without_it_raises(max_precond_dim):
    # w (8 x 16) split over both axes: at 4 its 8 blocks' factors are shared out, one block per device
    # (state_shardings' layout); at 8 its 2 blocks' factors are whole on every device. The grafting norms and b
    # (a vector: grafted only) take axis_name too.
    make = lambda **k: jz.shampoo(0.1, precondition_frequency=1, max_precond_dim=max_precond_dim, **k)  # noqa: E731
    expected = run_ours(make(), sharded_params(), steps=2)[0][-1]
    assert_trees_close(shard_map_steps(make(axis_name=SHARD_AXES, partition_specs=SHARD_SPECS)), expected,
                       rtol=1e-5, atol=1e-6)  # (two programs: products rounded apart)
    if max_precond_dim == 4:
        with pytest.raises(ValueError, match=r"scale_by_shampoo: inside shard_map, an array of local shape \(4,\) "
                                             r"varies over mesh axes \['model'\]: it is a block of a whole array"):
            shard_map_steps(make(), steps=1)


def test_shard_map_over_some_mesh_axes_equals_one_device():
    # Manual over "model" only ("data" left to the partitioner): w's 8 blocks are shared out over "model", 2 each.
    specs = {"w": P(None, "model"), "b": P("model")}
    tx = jz.scale_by_shampoo(max_precond_dim=4, axis_name="model", partition_specs=specs)
    mesh, params = _mesh(), sharded_params()
    placed = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, placed))
    assert state_specs.factors[1][0][0] == P("model")  # (leaves in tree order: b, w; Auto axes: no trailing Nones)
    local = jax.jit(jax.shard_map(tx.update, mesh=mesh, in_specs=(specs, state_specs), out_specs=(specs, state_specs),
                                  axis_names={"model"}))
    grads = jax.tree.map(lambda p: jnp.sin(3 * p), params)
    expected, _ = jax.jit(tx.update)(grads, tx.init(params))
    updates, _ = local(jax.tree.map(lambda g, p: jax.device_put(g, p.sharding), grads, placed),
                       jz.init_sharded(tx, placed))
    assert_trees_close(updates, expected, rtol=1e-5, atol=1e-6)


def test_shard_map_with_factors_laid_out_otherwise_raises():
    # w's 8 blocks split over "data" only: 4 per device, neither all 8 nor the 1 of a share over both axes.
    tx = jz.scale_by_shampoo(max_precond_dim=4, axis_name=SHARD_AXES, partition_specs=SHARD_SPECS)
    params = sharded_params()
    state = tx.init(params)
    specs = state._replace(count=P(), factors=((), ((P("data"),) * 2,)), roots=((), ((P("data"),) * 2,)))
    local = jax.shard_map(tx.update, mesh=_mesh(), in_specs=(SHARD_SPECS, specs), out_specs=(SHARD_SPECS, specs))
    with pytest.raises(ValueError, match=r"scale_by_shampoo: state.factors holds a stack of 4 blocks for a leaf of "
                                         r"shape \(8, 16\) whose stack has 8 .*jz.state_shardings"):
        jax.jit(local).lower(params, state)



@pytest.mark.parametrize("make", [
    lambda **k: jz.scale_by_shampoo(max_precond_dim=16, inverse_root="eigh", **k),
    lambda **k: jz.scale_by_shampoo(max_precond_dim=16, inverse_root="newton", **k),
    lambda **k: jz.scale_by_soap(max_precond_dim=16, **k),
], ids=["shampoo_eigh", "shampoo_newton", "soap"])
def test_shard_map_with_a_state_built_from_local_shards_raises(make):
    # tx.init inside shard_map sees w's (4, 4) shard (merged into one dimension of 16 by Shampoo): its factors met
    # those of the whole (8, 16) block in a raw "add got incompatible shapes" TypeError (the review of session 43).
    tx = make(axis_name=SHARD_AXES, partition_specs=SHARD_SPECS)
    local_init = jax.shard_map(tx.init, mesh=_mesh(), in_specs=(SHARD_SPECS,), out_specs=P(), check_vma=False)
    state = jax.eval_shape(local_init, sharded_params())
    specs = jax.tree.map(lambda _: P(), state)
    local = jax.shard_map(tx.update, mesh=_mesh(), in_specs=(SHARD_SPECS, specs), out_specs=(SHARD_SPECS, specs))
    with pytest.raises(ValueError, match=r"holds factors of shapes \[\(1, (16, 16|4, 4\), \(1, 4, 4)\)\] for blocks of shape \(8, 16\) "
                                         r"of a leaf of shape \(8, 16\), which take \(blocks, d, d\) for d in "
                                         r"\[8, 16\].*jz.init_sharded\(tx, params\)"):
        jax.jit(local).lower(sharded_params(), state)

def test_partition_specs_not_shaped_like_the_updates_raise():
    tx = jz.scale_by_shampoo(max_precond_dim=4, axis_name=SHARD_AXES, partition_specs={"x": P()})
    with pytest.raises(ValueError, match=r"scale_by_shampoo: partition_specs must be shaped like the updates .* "
                                         r"1 child keys x but .* 2 child keys b w"):
        shard_map_steps(tx, steps=1)


def test_shard_map_on_whole_arrays_needs_no_axis_name():
    mesh = _mesh()
    tx = jz.scale_by_shampoo(max_precond_dim=8)
    x = jnp.arange(64.0).reshape(8, 8) / 64
    whole = jax.jit(jax.shard_map(lambda g: tx.update(g, tx.init(g))[0], mesh=mesh, in_specs=P(), out_specs=P()))
    np.testing.assert_allclose(whole(x), tx.update(x, tx.init(x))[0], rtol=1e-5, atol=1e-6)


# --- non-finite values, zero gradients, empty leaves, bad input ----------------------------------------------
def test_a_non_finite_factor_keeps_the_previous_root():
    tx = jz.scale_by_shampoo(eps=1e-3, precondition_frequency=1, max_precond_dim=4)
    params = shampoo_params()
    grads = jax.tree.map(lambda p: p + 1.0, params)
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params)
    bad = grads | {"w": grads["w"].at[0, 0].set(jnp.nan)}
    _, poisoned = update(bad, state, params)
    # The blocks the NaN reached keep their roots; the others refresh.
    np.testing.assert_array_equal(by_name(poisoned.roots)["w"][0][0][0], by_name(state.roots)["w"][0][0][0])
    assert all(bool(jnp.all(jnp.isfinite(q))) for q in jax.tree.leaves(poisoned.roots))
    assert not np.array_equal(by_name(poisoned.roots)["t"][0][0], by_name(state.roots)["t"][0][0])


def test_a_diverged_newton_root_is_replaced_by_eighs():
    # Newton's iterate on a factor of rank 1 with eps = 1e-12 diverged while staying finite: a constant gradient got
    # entries of 4e10 where the root gives 1/sqrt(6) everywhere, and 100 steps of a rank-1 gradient (the default
    # alias, its roots refreshed at step 100) pointed uphill (cosine -0.03 with the gradient).
    tx = jz.scale_by_shampoo()
    update = tx.update(jnp.ones((2, 3)), tx.init(jnp.ones((2, 3))))[0]
    assert float(jnp.max(jnp.abs(update))) < 1
    assert float(jnp.sum(update) / jnp.linalg.norm(update) / jnp.sqrt(6.0)) > 0.99  # the root's direction: all equal
    tx, a = jz.shampoo(1e-3), np.random.default_rng(0).normal(size=8)
    step = jax.jit(lambda g, s: tx.update(g, s, jnp.zeros((8, 16))))
    state = tx.init(jnp.zeros((8, 16)))
    for t in range(1, 101):
        g = jnp.asarray(np.outer(a * (1 + 0.01 * t), np.ones(16)), jnp.float32)
        update, state = step(g, state)
    assert float(-jnp.sum(update * g) / jnp.linalg.norm(update) / jnp.linalg.norm(g)) > 0.9


def test_apply_if_finite_skips_a_nan_gradient_and_training_continues():
    tx = jz.apply_if_finite(jz.shampoo(0.01, precondition_frequency=2, max_precond_dim=4), 3)
    params = {"w": shampoo_params()["w"]}
    state, update = tx.init(params), jax.jit(tx.update)
    for t in range(1, 7):
        grads = jax.tree.map(lambda p: jnp.sin(p * t) + 0.1, params)
        if t == 3:
            grads = grads | {"w": grads["w"].at[1, 1].set(jnp.nan)}
        updates, state = update(grads, state, params)
        params = jz.apply_updates(params, updates)
    assert int(state.total_notfinite) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_zero_gradients_and_empty_leaves_give_finite_updates():
    tx = jz.shampoo(0.01, precondition_frequency=1, precondition_1d=True)
    params = {"w": jnp.ones((3, 4)), "e": jnp.ones((0, 3)), "b": jnp.ones(3)}
    state, update = tx.init(params), jax.jit(tx.update)
    for _ in range(2):
        updates, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert updates["e"].shape == (0, 3)
    for leaf in jax.tree.leaves(updates):
        assert bool(jnp.all(leaf == 0))


@pytest.mark.parametrize(
    "factory, kwargs, owner, name",
    [
        (jz.scale_by_shampoo, dict(max_precond_dim=0), "scale_by_shampoo", "max_precond_dim"),
        (jz.scale_by_shampoo, dict(precondition_frequency=0), "scale_by_shampoo", "precondition_frequency"),
        (jz.scale_by_shampoo, dict(eps=-1.0), "scale_by_shampoo", "eps"),
        (jz.scale_by_shampoo, dict(eps=0.0), "scale_by_shampoo", "eps"),
        (jz.scale_by_shampoo, dict(b1=1.0), "scale_by_shampoo", "b1"),
        (jz.scale_by_shampoo, dict(b2=1.5), "scale_by_shampoo", "b2"),
        (jz.scale_by_shampoo, dict(inverse_root="svd"), "scale_by_shampoo", "inverse_root"),
        (jz.scale_by_shampoo, dict(exponent_override=0), "scale_by_shampoo", "exponent_override"),
        (jz.scale_by_shampoo, dict(start_preconditioning_step=0), "scale_by_shampoo", "start_preconditioning_step"),
        (jz.scale_by_shampoo, dict(mu_dtype=jnp.int8), "scale_by_shampoo", "mu_dtype"),
        (jz.shampoo, dict(learning_rate=0.1, grafting="lion"), "shampoo", "grafting"),
        (jz.shampoo, dict(learning_rate=0.1, grafting_b2=1.0), "shampoo", "grafting_b2"),
        (jz.shampoo, dict(learning_rate=0.1, max_precond_dim=0), "shampoo", "max_precond_dim"),
        (jz.shampoo, dict(learning_rate=0.1, max_precond_dim=None), "shampoo", "max_precond_dim"),  # named
        (jz.shampoo, dict(learning_rate=0.1, precondition_frequency=None), "shampoo", "precondition_frequency"),
        (jz.shampoo, dict(learning_rate=0.1, graft_per_block="yes"), "shampoo", "graft_per_block"),
        (jz.shampoo, dict(learning_rate=0.1, b2=-0.1), "shampoo", "b2"),
        (jz.scale_by_diagonal_grafting, dict(eps=-1.0), "scale_by_diagonal_grafting", "eps"),
    ],
)
def test_bad_input_raises_naming_the_argument(factory, kwargs, owner, name):
    with pytest.raises(ValueError) as error:
        factory(**kwargs)
    assert str(error.value).startswith(f"{owner}: {name}"), str(error.value)


def test_derivative_of_the_eigh_root_of_a_rank_deficient_statistic_is_central_differences(x64):
    """(G G^T + eps I)^(-1/4) of a rank-2 G G^T of size 5 (the eigenvalue eps three times, as every statistic of fewer
    gradients than its size): eigh's own derivative divides by differences of equal eigenvalues, 26% off here."""
    from jaxopt_zoo.transforms.shampoo import _eigh_root

    rng = np.random.default_rng(0)
    g, dg = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    # Jitted: eagerly each of the few dozen operations would compile apart.
    root = jax.jit(lambda e: _eigh_root(jnp.asarray((g + e * dg) @ (g + e * dg).T)[None], 4, 1e-3))
    _, tangent = jax.jit(lambda e, de: jax.jvp(root, (e,), (de,)))(0.0, 1.0)
    central = (root(1e-6) - root(-1e-6)) / 2e-6
    np.testing.assert_allclose(tangent, central, atol=1e-6 * float(jnp.max(jnp.abs(central))))
    cotangent = rng.normal(size=(1, 5, 5))
    np.testing.assert_allclose(jax.jit(jax.grad(lambda e: jnp.sum(root(e) * cotangent)))(0.0),
                               np.sum(tangent * cotangent), rtol=1e-10)


def test_derivative_of_the_eigh_root_beside_a_distant_eigenvalue_is_finite_and_exact():
    """float32 eigenvalues 1e-9 and 1: l_j / l_i - 1 rounds to -1 and log1p(-1) = -inf, so the divided difference
    written through expm1/log1p was -inf (NaN gradients at rank-deficient statistics beside large ones). Along the
    identity the derivative of B^q is q B^(q-1)."""
    from jaxopt_zoo.transforms.shampoo import _floored_power

    values = np.asarray([1e-9, 0.5, 1.0], np.float32)
    jvp = jax.jit(lambda m, dm: jax.jvp(lambda x: _floored_power(x, -0.25, 1e-12), (m,), (dm,)))
    _, tangent = jvp(jnp.diag(values)[None], jnp.eye(3)[None])
    np.testing.assert_allclose(tangent[0], np.diag(-0.25 * values.astype(np.float64) ** -1.25), rtol=1e-5)
