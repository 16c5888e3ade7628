"""Combinators and plumbing (multi_transform, selective_transform, flatten, stateless_with_tree_map,
tree_map_params, with_extra_args_support, inject_stateful_hyperparams), per-example clips and microbatch:
Optax bit for bit, float64 references, None leaves, storage, jit/donation/vmap, shard_map."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo import microbatching
from jaxopt_zoo.base import GradientTransformationExtraArgs, init_empty_state, stateless_with_tree_map
from jaxopt_zoo.combine import (
    MaskedNode,
    MultiTransformState,
    PartitionState,
    flatten,
    multi_transform,
    partition,
    selective_transform,
    tree_map_params,
    with_extra_args_support,
)
from jaxopt_zoo.transforms.clipping import per_example_global_norm_clip, per_example_layer_norm_clip
from jaxopt_zoo.wrappers import (
    InjectStatefulHyperparamsState,
    WrappedSchedule,
    WrappedScheduleState,
    inject_stateful_hyperparams,
)
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

LABELS = {"dense": {"w": "adam", "b": "sgd"}, "scale": "sgd"}
FREEZE = {"dense": {"w": False, "b": True}, "scale": False}


def by_rank(params):
    return jax.tree.map(lambda p: "adam" if p.ndim > 1 else "sgd", params)


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


def optax_inject_stateful(factory, **options):
    with warnings.catch_warnings():  # Optax 0.2.8 marks it deprecated (it forwards to inject_hyperparams)
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.inject_stateful_hyperparams(factory, **options)


# Jitted float32 trajectories and states against Optax's, bit for bit.
OPTAX_CASES = {
    "multi_transform": (
        lambda: multi_transform({"adam": jz.adam(0.05), "sgd": jz.sgd(0.05, 0.9)}, LABELS),
        lambda: optax.multi_transform({"adam": optax.adam(0.05), "sgd": optax.sgd(0.05, 0.9)}, LABELS),
    ),
    "multi_transform_label_fn": (
        lambda: multi_transform({"adam": jz.adamw(decaying), "sgd": jz.sgd(0.05)}, by_rank),
        lambda: optax.multi_transform({"adam": optax.adamw(decaying), "sgd": optax.sgd(0.05)}, by_rank),
    ),
    "selective_transform": (
        lambda: selective_transform(jz.adam(0.05), freeze_mask=FREEZE),
        lambda: optax.selective_transform(optax.adam(0.05), freeze_mask=FREEZE),
    ),
    "selective_transform_nothing_frozen": (
        lambda: selective_transform(jz.sgd(0.05, 0.9, nesterov=True), freeze_mask=False),
        lambda: optax.selective_transform(optax.sgd(0.05, 0.9, nesterov=True), freeze_mask=False),
    ),
    "flatten": (lambda: flatten(jz.adam(0.05)), lambda: optax.flatten(optax.adam(0.05))),
    "flatten_chain": (
        lambda: flatten(jz.chain(jz.clip_by_global_norm(1.0), jz.lion(0.05, weight_decay=0.1))),
        lambda: optax.flatten(optax.chain(optax.clip_by_global_norm(1.0), optax.lion(0.05, weight_decay=0.1))),
    ),
    "stateless_with_tree_map": (
        lambda: jz.chain(stateless_with_tree_map(lambda g, p: g + 0.1 * p), jz.sgd(0.05)),
        lambda: optax.chain(optax.stateless_with_tree_map(lambda g, p: g + 0.1 * p), optax.sgd(0.05)),
    ),
    "with_extra_args_support": (
        lambda: with_extra_args_support(jz.chain(with_extra_args_support(optax.scale_by_adam()), jz.scale(-0.05))),
        lambda: optax.with_extra_args_support(optax.chain(optax.scale_by_adam(), optax.scale(-0.05))),
    ),
    "inject_stateful_hyperparams": (
        lambda: inject_stateful_hyperparams(jz.adamw)(learning_rate=decaying, b1=0.8, weight_decay=0.1),
        lambda: optax_inject_stateful(optax.adamw)(learning_rate=decaying, b1=0.8, weight_decay=0.1),
    ),
    "inject_stateful_hyperparams_static": (
        lambda: inject_stateful_hyperparams(jz.sgd, static_args="momentum")(0.05, momentum=0.9),
        lambda: optax_inject_stateful(optax.sgd, static_args="momentum")(0.05, momentum=0.9),
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs = OPTAX_CASES[name]
    params = make_params(jnp.float32)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert not np.allclose(np.asarray(our_iterates[-1]["dense"]["w"]), np.asarray(params["dense"]["w"]))


def test_state_classes_carry_optax_names():
    assert multi_transform is partition and MultiTransformState is PartitionState
    params = make_params()
    ours = selective_transform(jz.adam(0.05), freeze_mask=FREEZE).init(params)
    theirs = optax.selective_transform(optax.adam(0.05), freeze_mask=FREEZE).init(params)
    assert str(jax.tree.map(jnp.shape, ours)) == str(jax.tree.map(jnp.shape, theirs))  # same classes, fields, leaves
    state = inject_stateful_hyperparams(jz.sgd)(decaying).init(params)
    assert isinstance(state, InjectStatefulHyperparamsState)
    assert state.hyperparams_states == {"learning_rate": WrappedScheduleState(jnp.zeros([], jnp.int32))}
    assert isinstance(with_extra_args_support(jz.sgd(0.1)), GradientTransformationExtraArgs)
    assert init_empty_state(params) == jz.EmptyState()


def test_float64_trajectories_match_the_references(x64):
    params = make_params(jnp.float64)
    adam, sgd = reference.adam(0.05), reference.sgd(0.05, momentum=0.9)
    with_adam, with_sgd = run_reference(adam, params, steps=20), run_reference(sgd, params, steps=20)

    def pick(trees, choice):
        return [jax.tree.map(lambda label, *xs: xs[choice[label]], LABELS, *ts) for ts in zip(*trees)]

    cases = {
        "multi_transform": (multi_transform({"adam": jz.adam(0.05), "sgd": jz.sgd(0.05, 0.9)}, LABELS),
                            pick([with_adam, with_sgd], {"adam": 0, "sgd": 1})),
        "selective_transform": (selective_transform(jz.adam(0.05), freeze_mask=FREEZE),
                                [jax.tree.map(lambda f, a, p: p if f else a, FREEZE, it, params) for it in with_adam]),
        "flatten": (flatten(jz.adam(0.05)), with_adam),
        "inject_stateful_hyperparams": (inject_stateful_hyperparams(jz.sgd)(decaying, 0.9),
                                        run_reference(reference.sgd(decaying, momentum=0.9), params, steps=20)),
    }
    for name, (tx, expected) in cases.items():
        ours, _ = run_ours(tx, params, steps=20)
        assert_trees_close(ours, expected, rtol=1e-9, atol=1e-12)


# --- stateful schedules and extra arguments ---------------------------------------------------


class HalveOnPlateau:
    """A stateful schedule driven by update's ``value=``: halve the rate whenever the loss did not improve."""

    def init(self):
        return {"rate": jnp.asarray(0.1), "best": jnp.asarray(jnp.inf)}

    def update(self, state, value, **extra_args):
        improved = value < state["best"]
        return {"rate": jnp.where(improved, state["rate"], state["rate"] / 2), "best": jnp.minimum(value, state["best"])}

    def __call__(self, state, **extra_args):
        return state["rate"]


def test_stateful_schedule_follows_extra_args_like_optax():
    params = make_params()
    txs = [inject_stateful_hyperparams(jz.sgd)(HalveOnPlateau(), 0.5),
           optax_inject_stateful(optax.sgd)(HalveOnPlateau(), 0.5)]
    runs = []
    for tx in txs:
        p, state, update = params, tx.init(params), jax.jit(tx.update)
        for t in range(1, 21):
            grads = jax.tree.map(lambda x: grad_fn(x, t, jnp), p)
            updates, state = update(grads, state, p, value=jnp.asarray(np.cos(t)))  # not monotone: halvings
            p = jz.apply_updates(p, updates)
        runs.append((p, state))
    assert_trees_equal(runs[0][0], runs[1][0])
    assert_trees_equal(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1]))
    assert float(runs[0][1].hyperparams["learning_rate"]) < 0.1 / 4


def test_wrapped_schedule_counts_its_steps():
    schedule = WrappedSchedule(jz.linear_schedule(1.0, 0.0, 4))
    state = schedule.init()
    values = []
    for _ in range(5):
        values.append(float(schedule(state)))
        state = schedule.update(state, value=1.0)
    assert values == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    saturated = schedule.update(WrappedScheduleState(jnp.asarray(2**31 - 1, jnp.int32)))
    assert int(saturated.count) == 2**31 - 1


def test_with_extra_args_support_drops_them_for_optax_members_only():
    seen = {}

    def update(updates, state, params=None, **extra_args):
        seen.update(extra_args)
        return updates, state

    ours = jz.GradientTransformation(init_empty_state, update)
    assert with_extra_args_support(ours).update(1.0, (), value=2.0)[0] == 1.0 and seen == {"value": 2.0}
    plain = optax.scale(2.0)  # its update takes no extra args
    assert with_extra_args_support(plain).update(jnp.ones(1), plain.init(None), value=2.0)[0] == 2.0
    typed = with_extra_args_support(ours)
    assert with_extra_args_support(typed) is typed


# --- tree_map_params --------------------------------------------------------------------------


def test_tree_map_params_like_optax():
    params = make_params()
    specs = jax.tree.map(lambda p: P(*([None] * p.ndim)), params)
    for ours_tx, theirs_tx in [(jz.adam(1e-3), optax.adam(1e-3)), (jz.sgd(0.1, 0.9), optax.sgd(0.1, 0.9))]:
        ours = tree_map_params(ours_tx, lambda _, s: s, ours_tx.init(params), specs, transform_non_params=lambda _: P())
        theirs = optax.tree_map_params(
            theirs_tx, lambda _, s: s, theirs_tx.init(params), specs, transform_non_params=lambda _: P()
        )
        is_spec = lambda x: isinstance(x, P)
        assert jax.tree.leaves(ours, is_leaf=is_spec) == jax.tree.leaves(theirs, is_leaf=is_spec)
    # is_leaf reaches the stand-ins of masked-out leaves.
    tx = jz.masked(jz.adam(1e-3), FREEZE)
    is_node = lambda x: isinstance(x, MaskedNode)
    mapped = tree_map_params(tx, lambda x, s: None if is_node(x) else s, tx.init(params), specs, is_leaf=is_node)
    assert mapped.inner_state[0].mu == {"dense": {"w": None, "b": P(None)}, "scale": None}
    # 8-bit moments: moving them is fine, recasting raises.
    tx = jz.adam(1e-3, mu_dtype=jz.Blockwise8Bit(min_size=16, block_size=16))
    big = {"w": jnp.ones((4, 256))}
    state = tx.init(big)
    tree_map_params(tx, lambda x: x, state, is_leaf=lambda x: False)
    with pytest.raises(ValueError, match="encoded"):
        tree_map_params(tx, lambda x: x.astype(jnp.float32), state, is_leaf=lambda x: False)


def test_optax_tree_map_params_finds_the_per_parameter_parts_of_our_states():
    # The Optax guide says optax.tree's utilities work alongside: Optax's map_params marks the per-parameter
    # parts with its own placeholder, which the wrappers and the Kronecker inits must take for ours.
    params = {"w": jnp.array([[3.0, 1.0], [0.5, 2.0]]), "b": jnp.array([-3.0])}
    marked = lambda x: "per-parameter"
    codes = jz.Blockwise8Bit(min_size=16, block_size=16, max_shards=1)  # one shard: quantized under 8 devices too
    for tx, p in [
        (jz.masked(jz.adam(0.1), {"w": True, "b": False}), params),
        (jz.partition({"a": jz.adam(0.1), "s": jz.sgd(0.1, 0.9)}, {"w": "a", "b": "s"}), params),
        (jz.lookahead(jz.adam(0.1), 3, 0.5), jz.LookaheadParams.init_synced(params)),
        (jz.adam(0.1, mu_dtype=codes), {"w": jnp.ones((2, 32))}),
        (jz.shampoo(0.1), params),
        (jz.MultiSteps(jz.adam(0.1), 2), params),
    ]:
        state = tx.init(p)
        theirs, ours = optax.tree.map_params(tx, marked, state), tree_map_params(tx, marked, state)
        assert jax.tree.structure(theirs) == jax.tree.structure(ours)
        assert [str(x) for x in jax.tree.leaves(theirs)] == [str(x) for x in jax.tree.leaves(ours)]
        assert "per-parameter" in jax.tree.leaves(ours)
    eight_bit = jz.adam(0.1, mu_dtype=codes).init({"w": jnp.ones((2, 32))})
    assert any(x.dtype == jnp.int8 for x in jax.tree.leaves(eight_bit))  # the case above does hold 8-bit codes


# --- None leaves, storage, jit/donation, vmap -------------------------------------------------


def test_none_updates_pass_through():
    params = make_params()
    grads = jax.tree.map(jnp.ones_like, params) | {"scale": None}
    for tx in [selective_transform(jz.adam(0.05), freeze_mask=FREEZE), stateless_with_tree_map(lambda g, p: 2 * g),
               multi_transform({"adam": jz.adam(0.05), "sgd": jz.sgd(0.05, 0.9)}, LABELS)]:
        state = tx.init(params)
        updates, new_state = jax.jit(tx.update)(grads, state, params)
        assert updates["scale"] is None and updates["dense"]["w"] is not None
    assert stateless_with_tree_map(lambda g, p: 2 * g).update(grads, ())[0]["scale"] is None
    tx = flatten(jz.adam(0.05))
    with pytest.raises(ValueError, match=r"flatten: updates at \['scale'\] are None"):
        tx.update(grads, tx.init(params), params)


def test_flatten_keeps_the_inner_storage():
    storage = jz.Blockwise8Bit(min_size=16, block_size=16)
    params = {"w": jnp.ones((16, 15)), "b": jnp.ones(16)}  # 256 elements: 8-bit blocks of 16 on 8 devices
    tx = flatten(jz.adam(0.05, mu_dtype=storage, nu_dtype=storage))
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    plain = flatten(jz.adam(0.05))
    assert_trees_close(updates, jax.jit(plain.update)(grads, plain.init(params), params)[0], rtol=0.05, atol=1e-3)
    assert state[0].mu.dtype == jnp.int8 and state[0].nu.dtype == jnp.uint8


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_flatten_on_sharded_params_equals_one_device(axis_type):
    # Concatenating leaves split differently is refused on Explicit axes (init_sharded traces init there
    # even for Auto meshes): the flat vector is whole on every device, the updates laid out like the params.
    kind = getattr(jax.sharding.AxisType, axis_type)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(kind, kind), devices=jax.devices("cpu")[:8])
    specs = {"w": P("data", "model"), "b": P("model"), "s": P()}
    params = {"w": jnp.linspace(-1.0, 1.0, 128).reshape(8, 16), "b": jnp.linspace(0.5, 2.0, 16), "s": jnp.asarray(0.3)}
    tx = flatten(jz.adam(0.05))

    def step(p, s):
        updates, s = tx.update(jax.tree.map(lambda x: jnp.sin(3 * x) + x, p), s, p)
        return jz.apply_updates(p, updates), s

    expected = (params, tx.init(params))
    for _ in range(2):
        expected = jax.jit(step)(*expected)
    with jax.set_mesh(mesh):
        placed = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
        sharded = (placed, jz.init_sharded(tx, placed))
        for _ in range(2):
            sharded = jax.jit(step)(*sharded)
    assert_trees_close(sharded[0], expected[0], rtol=1e-6, atol=1e-7)
    assert sharded[0]["w"].sharding.is_equivalent_to(NamedSharding(mesh, specs["w"]), 2)


def test_jit_donation_and_vmap():
    params = make_params()
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
    for tx in [inject_stateful_hyperparams(jz.adam)(decaying)]:
        kept = jax.jit(tx.update)(grads, tx.init(params), params)
        donated = jax.jit(tx.update, donate_argnums=(1,))(grads, tx.init(params), params)
        assert_trees_equal(donated, kept)
    tx = flatten(jz.adam(0.05))
    stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
    batched, _ = jax.jit(jax.vmap(lambda g, p: tx.update(g, tx.init(p), p)))(stacked, stacked)
    single, _ = jax.jit(tx.update)(jax.tree.map(lambda p: 2 * p, params), tx.init(params), params)
    assert_trees_close(jax.tree.map(lambda x: x[1], batched), single, rtol=1e-6)


# --- per-example clips ------------------------------------------------------------------------


def per_example_grads(seed=0, batch=6):
    rng = np.random.default_rng(seed)
    shapes = {"w": (batch, 3, 4), "b": (batch, 4), "s": (batch,)}
    return {k: jnp.asarray(rng.normal(size=s) * (1 + np.arange(batch).reshape((-1,) + (1,) * (len(s) - 1))), jnp.float32)
            for k, s in shapes.items()}


CLIPS = [0.0, 1.5, 4.0, float("inf")]


def test_per_example_clips_match_optax_bit_for_bit():
    grads = per_example_grads()
    ours = jax.jit(lambda g, c: [per_example_global_norm_clip(g, c)] + [
        per_example_layer_norm_clip(g, c, u) for u in (True, False)])
    theirs = jax.jit(lambda g, c: [optax.per_example_global_norm_clip(g, c)] + [
        optax.per_example_layer_norm_clip(g, c, u) for u in (True, False)])
    for clip in CLIPS:
        assert_trees_equal(ours(grads, clip), theirs(grads, clip))
    counts = ours(grads, 4.0)
    assert 0 < int(counts[0][1]) < 6


def test_per_example_clips_match_the_references(x64):
    grads = jax.tree.map(lambda g: g.astype(jnp.float64), per_example_grads(1))
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    clip_all = jax.jit(lambda g, c: (per_example_global_norm_clip(g, c), per_example_layer_norm_clip(g, c, True),
                                     per_example_layer_norm_clip(g, c, False)))
    for clip in CLIPS:
        (sums, clipped), *layerwise = clip_all(grads, clip)
        expected_sums, expected_clipped = reference.per_example_clipped_sum(leaves, clip)
        assert_trees_close(jax.tree.leaves(sums), expected_sums, rtol=1e-12, atol=1e-300)
        assert int(clipped) == expected_clipped
        for uniform, (sums, clipped) in zip((True, False), layerwise):
            expected_sums, expected_clipped = reference.per_example_layer_clipped_sums(leaves, clip, uniform)
            assert_trees_close(jax.tree.leaves(sums), expected_sums, rtol=1e-12, atol=1e-300)
            assert [int(c) for c in jax.tree.leaves(clipped)] == expected_clipped


def test_per_example_clips_keep_none_leaves_and_check_the_batch_axis():
    grads = per_example_grads() | {"frozen": None}
    sums, clipped = per_example_global_norm_clip(grads, 1.0)
    assert sums["frozen"] is None and sums["w"].shape == (3, 4)
    sums, clipped = per_example_layer_norm_clip(grads, 1.0)
    assert sums["frozen"] is None and clipped["frozen"] is None and clipped["w"].shape == ()
    with pytest.raises(ValueError, match="per_example_global_norm_clip: every leaf of grads must have the same batch"):
        per_example_global_norm_clip({"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}, 1.0)


def test_per_example_clips_are_exact_inside_shard_map():
    mesh = jax.make_mesh((2, 4), ("data", "model"), devices=jax.devices("cpu")[:8])
    grads = {"w": per_example_grads()["w"].reshape(6, 12)[:4].repeat(2, axis=1), "b": per_example_grads()["b"][:4]}
    specs = {"w": P("data", "model"), "b": P("data", None)}

    def local(g):
        sums, clipped = per_example_global_norm_clip(g, 3.0, axis_name="model")
        layer_sums, layer_clipped = per_example_layer_norm_clip(g, 3.0, False, axis_name="model")
        # Each device summed its own examples: add the data shards' partial sums.
        return jax.lax.psum((sums, clipped, layer_sums, layer_clipped), "data")

    out_specs = ({"w": P("model"), "b": P()}, P(), {"w": P("model"), "b": P()}, {"w": P(), "b": P()})
    placed = {k: jax.device_put(g, NamedSharding(mesh, specs[k])) for k, g in grads.items()}
    sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out_specs))(placed)
    whole = (*per_example_global_norm_clip(grads, 3.0), *per_example_layer_norm_clip(grads, 3.0, False))
    assert_trees_close(sharded, whole, rtol=1e-5, atol=1e-6)  # float32 sums in another order
    with pytest.raises(ValueError, match="varies over mesh axes"):
        jax.jit(jax.shard_map(lambda g: per_example_global_norm_clip(g, 3.0)[0], mesh=mesh, in_specs=(specs,),
                              out_specs={"w": P("model"), "b": P()}))(placed)


# --- microbatch -------------------------------------------------------------------------------

MB = microbatching.AccumulationType


def features_fun(x, y, *, scale):
    # A per-row output and a reduction, as in a loss with per-example values.
    rows = jnp.tanh(x @ jnp.arange(1.0, 4.0)) * scale + y
    return {"rows": rows, "total": jnp.sum(rows**2), "grad": jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w) * y))(jnp.ones(3))}


ACCUMULATORS = {
    "sum": {"rows": MB.CONCAT, "total": MB.SUM, "grad": MB.SUM},
    "mean": {"rows": MB.CONCAT, "total": MB.MEAN, "grad": MB.MEAN},
    "running_mean": {"rows": MB.CONCAT, "total": MB.RUNNING_MEAN, "grad": MB.RUNNING_MEAN},
}


def to_optax(tree):
    return jax.tree.map(lambda kind: getattr(optax.microbatching.AccumulationType, kind.name), tree)


def test_microbatch_matches_optax_bit_for_bit():
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32), jnp.asarray(rng.normal(size=(12,)), jnp.float32)
    for name, acc in ACCUMULATORS.items():
        ours = microbatching.microbatch(features_fun, 0, 3, acc, argnames="y")
        theirs = optax.microbatch(features_fun, 0, 3, to_optax(acc), argnames="y")
        assert_trees_equal(jax.jit(ours, static_argnames="scale")(x, y=y, scale=2.0),
                           jax.jit(theirs, static_argnames="scale")(x, y=y, scale=2.0))
    # A batch axis that is not 0, one accumulator for the whole output, and an early stop.
    fun = lambda a: a.sum(axis=1)
    ours = jax.jit(microbatching.microbatch(fun, 0, 2, MB.SUM, in_axes=1, num_real_microbatches=2))
    theirs = jax.jit(optax.microbatch(fun, 0, 2, optax.microbatching.AccumulationType.SUM, in_axes=1,
                                      num_real_microbatches=2))
    assert_trees_equal(ours(x.T), theirs(x.T))
    assert microbatching.microbatch(fun, 0, None) is fun


def test_microbatch_refuses_more_real_microbatches_than_the_batch_has():
    # Optax (and this library before) read past the batch: NaN. A traced count stops at the batch's.
    x = jnp.arange(8.0)
    fun = lambda a: jnp.sum(a)
    with pytest.raises(ValueError, match=r"^microbatch: num_real_microbatches=5 is more than the 4 microbatches"):
        microbatching.microbatch(fun, 0, 2, MB.SUM, num_real_microbatches=5)(x)
    traced = jax.jit(lambda x, n: microbatching.microbatch(fun, 0, 2, MB.SUM, num_real_microbatches=n)(x))
    assert float(traced(x, 5)) == float(traced(x, 4)) == 28.0


def test_microbatch_matches_the_reference(x64):
    rng = np.random.default_rng(1)
    batch = rng.normal(size=(12, 3))
    fun = lambda b: jnp.tanh(b * jnp.arange(1.0, 4.0))
    for kind, acc in [("sum", MB.SUM), ("mean", MB.MEAN), ("running_mean", MB.RUNNING_MEAN), ("concat", MB.CONCAT)]:
        ours = microbatching.microbatch(fun, 0, 4, acc)(jnp.asarray(batch))
        expected = reference.microbatched(lambda b: np.tanh(b * np.arange(1.0, 4.0)), batch, 4, kind)
        np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-12)
    # CONCAT gives the rows back in batch order (tanh of a slice may differ from the whole in the last bit).
    np.testing.assert_allclose(microbatching.microbatch(fun, 0, 4, MB.CONCAT)(jnp.asarray(batch)), fun(batch), rtol=1e-15)


LARGEST = microbatching.Accumulator(lambda s: jnp.full_like(s, -jnp.inf), lambda c, x, i: jnp.maximum(c, x),
                                    lambda c: c, lambda xs: xs.max(axis=0))


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_microbatch_inside_a_shard_map_over_some_mesh_axes(axis_type):
    # Manual over "x" (the batch split there), the weights split over the automatic "y": each x-shard's result is
    # its half of the batch microbatched on one device. JAX asserted in zeros_like of the abstract result (Optax's too).
    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(getattr(jax.sharding.AxisType, axis_type),) * 2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(12, 3)), jnp.float32)
    y, w = jnp.linspace(-1.0, 1.0, 12), jax.device_put(jnp.arange(1.0, 9.0), NamedSharding(mesh, P("y")))

    def fun(x, y, w):  # not features_fun's "grad": a gradient for an unvarying input is summed over "x" by JAX itself
        features = features_fun(x, y, scale=2.0)
        return {"rows": features["rows"], "total": features["total"], "largest": jnp.max(jnp.outer(x[:, 0], w), axis=0)}

    for accumulators in ACCUMULATORS.values():
        accumulators = {"rows": accumulators["rows"], "total": accumulators["total"], "largest": LARGEST}
        local = lambda x, y, w: jax.tree.map(lambda r: r[None], microbatching.microbatch(fun, (0, 1), 3, accumulators)(x, y, w))
        with jax.set_mesh(mesh):
            sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("x"), P("x"), P()), out_specs=P("x"),
                                            axis_names={"x"}))(x, y, w)
        halves = [local(x[i * 6:(i + 1) * 6], y[i * 6:(i + 1) * 6], jnp.arange(1.0, 9.0)) for i in (0, 1)]
        assert_trees_close(sharded, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *halves), rtol=1e-6, atol=0)


def test_microbatch_custom_accumulator_and_reshape():
    assert float(microbatching.microbatch(jnp.max, 0, 2, LARGEST)(jnp.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0]))) == 9.0
    np.testing.assert_array_equal(microbatching.reshape_batch_axis(jnp.arange(6), 2),
                                  optax.microbatching.reshape_batch_axis(jnp.arange(6), 2))
    with pytest.raises(ValueError, match="not divisible by microbatch_size=4"):
        microbatching.microbatch(jnp.sum, 0, 4)(jnp.ones(6))
    with pytest.raises(ValueError, match="MEAN needs floating-point"):
        microbatching.microbatch(jnp.sum, 0, 2, MB.MEAN)(jnp.ones(6, jnp.int32))
    # Axes count from the front: a negative one (a bare reshape TypeError before) and a missing one name themselves.
    with pytest.raises(ValueError, match=r"^microbatch: in_axes must be an integer >= 0, got -1"):
        microbatching.microbatch(jnp.sum, 0, 2, in_axes=-1)
    with pytest.raises(ValueError, match=r"^reshape_batch_axis: axis must be an integer >= 0, got -1"):
        microbatching.reshape_batch_axis(jnp.ones((2, 6)), 2, axis=-1)
    with pytest.raises(ValueError, match=r"^reshape_batch_axis: a leaf of shape \(6,\) has no batch axis 1"):
        microbatching.reshape_batch_axis(jnp.ones(6), 2, axis=1)
    with pytest.raises(ValueError, match=r"^microbatch: in_axes gives batch axis 1, but .* has shape \(6,\)"):
        microbatching.microbatch(jnp.sum, 0, 2, in_axes=np.int64(1))(jnp.ones(6))  # a NumPy integer is an axis too


# --- init_sharded: the groups' moments are laid out like their params -------------------------


def test_init_sharded_lays_group_states_out_like_their_params():
    # (Not in test_sharding.OPTIMIZERS: its layout check maps the state with tree.map_params, which cannot
    # pair a masked-out MaskedNode with its param; tree_map_params's is_leaf can.)
    mesh = jax.make_mesh((2, 4), ("data", "model"), devices=jax.devices("cpu")[:8])
    specs = {"w": P("data", "model"), "b": P("model"), "c": P()}
    params = {"w": jnp.ones((4, 8)), "b": jnp.ones(8), "c": jnp.ones(3)}
    placed = {k: jax.device_put(p, NamedSharding(mesh, specs[k])) for k, p in params.items()}
    grads = {k: 0.5 * p for k, p in placed.items()}
    is_node = lambda x: isinstance(x, MaskedNode)
    for tx in [multi_transform({"a": jz.adam(1e-2), "s": jz.sgd(0.1, 0.9)}, {"w": "a", "b": "s", "c": "a"})]:
        state = jz.init_sharded(tx, placed)
        tree_map_params(tx, lambda leaf, p: leaf if is_node(leaf) else (
            None if leaf.sharding.is_equivalent_to(p.sharding, leaf.ndim) else pytest.fail(f"{leaf.sharding}")),
            state, placed, is_leaf=is_node)
        sharded, _ = jax.jit(tx.update)(grads, state, placed)
        single, _ = tx.update(jax.tree.map(np.asarray, grads), tx.init(params), params)
        assert_trees_close(sharded, single, rtol=1e-6)


def test_micro_vmap_and_micro_grad_match_optax_bit_for_bit():
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=3), jnp.float32)
    x, y = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), jnp.asarray(rng.normal(size=8), jnp.float32)
    loss = lambda w, x, y: jnp.mean(jnp.tanh(x @ w) - y) ** 2

    def both(build, kinds):
        clip = lambda g: jax.tree.map(lambda a: a / jnp.maximum(1.0, jnp.linalg.norm(a)), g)
        return (
            build.micro_vmap(lambda a, b: (a * b, jnp.sum(a)), in_axes=(0, None), microbatch_size=2,
                             accumulator=(kinds.CONCAT, kinds.MEAN))(x, w),
            build.micro_grad(loss, batch_argnums=(1, 2), microbatch_size=4, accumulator=kinds.MEAN, transform_fn=clip,
                             metrics_fn=jnp.linalg.norm)(w, x, y),
            build.micro_grad(loss, batch_argnums=(1, 2), keep_batch_dim=False)(w, x[:, None], y[:, None]),
        )

    ours = jax.jit(lambda: both(microbatching, MB))()
    theirs = jax.jit(lambda: both(optax.microbatching, optax.microbatching.AccumulationType))()
    assert_trees_equal(jax.tree.leaves(ours), jax.tree.leaves(theirs))  # the namedtuple classes differ
    assert type(ours[1][1]).__name__ == "Aux" and ours[1][1].metrics.shape == (8,)
