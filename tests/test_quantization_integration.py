"""8-bit block-wise optimizer state (``jz.Blockwise8Bit``) with the rest of the library and of JAX.

Each test runs a quantized optimizer two ways that must agree and compares the
states leaf by leaf, codes and scales separately: jitted and donated against
eager; ``vmap`` against separate runs; sharded (``jit`` and ``shard_map``)
against one device; inside ``inject_hyperparams`` and ``MultiSteps`` against
the plain optimizer; resumed from an Orbax checkpoint against uninterrupted;
with a skipped NaN step or a ``None`` update against the state it must keep.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import dequantize, is_encoded, unpack
from tests.conftest import assert_trees_equal, grad_fn
from tests.test_sharding import _collective_sizes

# w, v and u have >= min_size (4096) elements and are quantized; u's last axis (200) has blocks of 25
# (the largest divisor of 200 / gcd(200, 8 devices) up to 128); b (32 elements) stays float32.
SHAPES = {"w": (64, 512), "v": (16, 8, 256), "u": (24, 200), "b": (32,)}
QUANTIZED = ("w", "v", "u")
Q = jz.Blockwise8Bit(block_size=128)
STEPS = 3


def adam_chain(q=Q, learning_rate=1e-2, weight_decay=1e-2):
    return jz.chain(
        jz.scale_by_adam(mu_dtype=q, nu_dtype=q),
        jz.add_decayed_weights(weight_decay),
        jz.scale_by_learning_rate(learning_rate),
    )


OPTIMIZERS = {
    "adam": adam_chain,
    "trace": lambda q=Q: jz.chain(jz.trace(0.9, accumulator_dtype=q), jz.scale_by_learning_rate(1e-2)),
    "amsgrad": lambda q=Q: jz.chain(jz.scale_by_amsgrad(mu_dtype=q, nu_dtype=q), jz.scale_by_learning_rate(1e-2)),
}


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in SHAPES.items()}


def gradients(params: dict, t: int) -> dict:
    """conftest's gradient field, computed on the host in float64 so every run sees the same float32 gradients."""
    return {name: np.asarray(grad_fn(np.asarray(p, np.float64), t), np.float32) for name, p in params.items()}


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    return step


# One optimizer object and one jitted init and step per name, shared by the tests so that each
# compiled step (one per input layout) is compiled once.
TX = {name: make() for name, make in OPTIMIZERS.items()}
INIT = {name: jax.jit(tx.init) for name, tx in TX.items()}
STEP = {name: jax.jit(step_fn(tx)) for name, tx in TX.items()}


def leaves_with_paths(tree):
    """(path, leaf) pairs."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def quantized_leaves(tree) -> list:
    return [leaf for _, leaf in leaves_with_paths(tree) if is_encoded(leaf)]


def packed_shape(param_shape, q=Q):
    """The stored 8-bit leaf's shape: the param's with its last axis cut into groups of blocks (codes, then 4 rows
    of scale bytes)."""
    groups, length = q.layout(param_shape)
    return param_shape[:-1] + (groups, length + 4, param_shape[-1] // (groups * length))


def ulp_distance(actual, expected) -> np.ndarray:
    """How many float32 values lie between actual and expected (0: equal, 1: neighbours), elementwise."""
    ordered = lambda x: (lambda i: np.where(i < 0, np.int64(-(2**31)) - i, i))(
        np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    )
    return np.abs(ordered(actual) - ordered(expected))


def assert_ulps(actual, expected, ulps: int, what: str):
    """Elementwise at most ``ulps`` float32 steps apart (0: bitwise, same dtype and shape in any case)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (what, actual.dtype, expected.dtype)
    if ulps == 0 or expected.dtype != np.float32:
        np.testing.assert_array_equal(actual, expected, err_msg=what, strict=True)
        return
    distance = ulp_distance(actual, expected)
    assert distance.max() <= ulps, f"{what}: up to {distance.max()} ulps apart at {np.sum(distance > ulps)} elements"


def assert_states_match(
    actual, expected, *, code_steps: int = 0, ulps: int = 0, rtol: float | None = None, differing: float = 1e-3
):
    """Same structure and dtypes; codes at most ``code_steps`` codes apart at no more than a ``differing``
    fraction of elements; float leaves and scales within ``ulps``, or with ``rtol`` within ``rtol`` times
    the leaf's largest magnitude."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), (_, e) in zip(leaves_with_paths(actual), leaves_with_paths(expected)):
        if is_encoded(e):
            assert is_encoded(a), path
            assert (a.dtype, a.shape) == (e.dtype, e.shape), path
            (a_codes, a_scales), (e_codes, e_scales) = unpack(np.asarray(a)), unpack(np.asarray(e))
            apart = np.abs(np.asarray(a_codes, np.int32) - np.asarray(e_codes, np.int32))
            assert apart.max() <= code_steps, f"{path}.codes: {apart.max()} codes apart at {np.sum(apart > 0)} elements"
            assert np.mean(apart > 0) <= differing, f"{path}.codes: {np.sum(apart > 0)} elements differ"
            if rtol is None:
                assert_ulps(a_scales, e_scales, ulps, f"{path}.scales")
            else:
                assert_close_to_leaf_max(a_scales, e_scales, rtol)
        elif rtol is None or np.asarray(e).dtype != np.float32:
            assert_ulps(a, e, ulps, path)
        else:
            assert np.asarray(a).dtype == np.asarray(e).dtype, path
            assert_close_to_leaf_max(a, e, rtol)


def assert_close_to_leaf_max(actual, expected, rtol: float):
    """|actual - expected| <= rtol * max|expected|, leaf by leaf (None leaves must match)."""
    for (path, a), (_, e) in zip(
        jax.tree_util.tree_flatten_with_path(actual, is_leaf=lambda x: x is None)[0],
        jax.tree_util.tree_flatten_with_path(expected, is_leaf=lambda x: x is None)[0],
    ):
        if e is None:
            assert a is None, path
            continue
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * np.max(np.abs(e)), err_msg=jax.tree_util.keystr(path))


_dequantize = jax.jit(dequantize)


def host_dequantize(q) -> np.ndarray:
    """``dequantize`` of a stored 8-bit leaf held on the host (or anywhere): one compile per shape."""
    return np.asarray(_dequantize(np.asarray(q)))


def assert_moved(state_before, state_after):
    """The quantized moments changed: equality elsewhere is not between two untouched states."""
    before, after = quantized_leaves(state_before), quantized_leaves(state_after)
    assert before and len(before) == len(after)
    assert all(np.any(np.asarray(unpack(b)[0]) != np.asarray(unpack(a)[0])) for b, a in zip(before, after))


def test_the_trees_are_quantized_where_expected():
    for name, make in OPTIMIZERS.items():
        state = jax.eval_shape(make().init, make_params())
        moments = [leaf for path, leaf in leaves_with_paths(state) if "['b']" in path]
        assert moments and all(m.dtype == jnp.float32 and m.shape == (32,) for m in moments), name  # below min_size
        for path, leaf in leaves_with_paths(state):
            param = next((SHAPES[k] for k in QUANTIZED if f"['{k}']" in path), None)
            if param is None:
                assert not is_encoded(leaf), path
                continue
            assert is_encoded(leaf), path
            signed = ".mu" in path or ".trace" in path
            assert leaf.dtype == (jnp.int8 if signed else jnp.uint8), path
            assert leaf.shape == packed_shape(param), path
    assert [packed_shape(SHAPES[k]) for k in QUANTIZED] == [(64, 8, 68, 1), (16, 8, 8, 36, 1), (24, 8, 29, 1)]


# --- jit ------------------------------------------------------------------------------------------


# (code steps, ulps) allowed between a jitted and an eager step from the same inputs. AMSGrad stores
# nu / (1 - b2**t): at t = 3 that divisor is 0.003, a difference of 1 - 0.999**3, and XLA's eager and
# fused float32 pow round 0.999**3 apart, so the eager divisor is ~330 ulps off (float32 leaf b too).
JIT_TOLERANCE = {"adam": (1, 1), "trace": (1, 1), "amsgrad": (1, 400)}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_jitted_donated_steps_match_eager_steps(name):
    """Each step from the same inputs, eager and jitted: states within 1 ulp (codes within one), updates close.

    Updates are compared to 3e-5 of the leaf's largest update rather than to 1 ulp: Adam's direction
    is divided by sqrt(1 - b2**t), and at t = 3 the eager and the fused float32 pow of 0.999 differ by
    ~330 ulps after the cancellation (the float32 leaf ``b`` shows it as much as the quantized ones).
    """
    tx = TX[name]
    params = make_params()
    state = INIT[name](params)

    def step_with_updates(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state, updates

    donated = jax.jit(step_with_updates, donate_argnums=(0, 1))
    first_state = state
    for t in range(1, STEPS + 1):
        grads = gradients(params, t)
        eager_updates, eager_state = tx.update(grads, state, params)
        copies = jax.tree.map(jnp.copy, (params, state))
        new_params, new_state, updates = donated(*copies, grads)
        assert all(x.is_deleted() for x in jax.tree.leaves(copies)), "the params and state were not donated"
        code_steps, ulps = JIT_TOLERANCE[name]
        # Eager and fused arithmetic differ by ulps in places; the stochastic rounding, a hash of each
        # value, then picks the other neighbouring code for those elements.
        assert_states_match(new_state, eager_state, code_steps=code_steps, ulps=ulps, differing=0.25)
        assert_close_to_leaf_max(updates, eager_updates, rtol=3e-5)
        params, state = new_params, new_state
    assert_moved(first_state, state)


# --- vmap -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "trace"])
def test_vmap_over_three_param_trees_matches_three_runs(name):
    tx = TX[name]
    separate = [make_params(seed) for seed in range(3)]
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    batched_params = stack(separate)
    batched_state = jax.jit(jax.vmap(tx.init))(batched_params)
    states = [INIT[name](p) for p in separate]
    assert_states_match(batched_state, stack(states))
    for leaf, param in zip(quantized_leaves(batched_state), [SHAPES[k] for k in ("u", "v", "w")] * 2):
        assert leaf.shape == (3,) + packed_shape(param)  # blocks are per tree, never across the batch

    batched_step = jax.jit(jax.vmap(step_fn(tx)))
    step = STEP[name]
    for t in range(1, STEPS + 1):
        grads = [gradients(p, t) for p in separate]
        batched_params, batched_state = batched_step(batched_params, batched_state, stack(grads))
        runs = [step(p, s, g) for p, s, g in zip(separate, states, grads)]
        separate, states = [r[0] for r in runs], [r[1] for r in runs]
        assert_states_match(batched_state, stack(states), code_steps=1, ulps=1)
        assert_close_to_leaf_max(batched_params, stack(separate), rtol=1e-6)
    assert_moved(INIT[name](make_params()), states[0])
    # The three runs really differ, so stacking them in the wrong order would be caught.
    assert not np.array_equal(quantized_leaves(states[0])[-1], quantized_leaves(states[1])[-1])


# --- sharding -------------------------------------------------------------------------------------

AXES = ("data", "model")
# w's last axis is split 4 ways into 128-element shards: two whole blocks of 64 each.
SPECS = {"w": P(None, "model"), "v": P("data", "model"), "u": P("data"), "b": P("model")}


def make_mesh(axis_type=AxisType.Auto):
    return jax.make_mesh((2, 4), AXES, axis_types=(axis_type,) * 2, devices=jax.devices("cpu")[:8])


def place(tree: dict, mesh, specs=SPECS) -> dict:
    return {name: jax.device_put(x, NamedSharding(mesh, specs[name])) for name, x in tree.items()}


def run(step, params, state, place_grads=lambda g: g, steps=STEPS):
    trajectory = []
    for t in range(1, steps + 1):
        params, state = step(params, state, place_grads(gradients(jax.device_get(params), t)))
        trajectory.append(jax.device_get((params, state)))
    return trajectory, params, state


def one_device_run(name_or_tx, steps=STEPS):
    params = make_params()
    if isinstance(name_or_tx, str):
        return run(STEP[name_or_tx], params, INIT[name_or_tx](params), steps=steps)[0]
    return run(jax.jit(step_fn(name_or_tx)), params, jax.jit(name_or_tx.init)(params), steps=steps)[0]


def same_spec(a: P, b: P) -> bool:
    """Equal PartitionSpecs up to trailing Nones (P("data") is P("data", None))."""
    trim = lambda spec: tuple(spec)[: max((i + 1 for i, axis in enumerate(spec) if axis is not None), default=0)]
    return trim(a) == trim(b)


def assert_quantized_like_params(tx, state, params, specs=SPECS):
    """Codes sharded like their param, scales with the same PartitionSpec, float moments like their param."""
    checked = 0
    for path, leaf in leaves_with_paths(state):
        name = next((k for k in SHAPES if f"['{k}']" in path), None)
        if name is None:  # step counts: replicated scalars
            assert leaf.sharding.is_fully_replicated, path
            continue
        param = params[name]
        # an 8-bit leaf's block axis takes the sharding of the param's last axis
        assert isinstance(leaf.sharding, NamedSharding), (path, leaf.sharding)
        assert same_spec(leaf.sharding.spec, specs[name]) and same_spec(param.sharding.spec, specs[name]), (
            path, leaf.sharding.spec)
        assert leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim), path
        checked += 1
    assert checked >= len(QUANTIZED) + 1
    jz.check_state_shardings(tx, params, state)


@pytest.mark.parametrize(
    "name, axis_type", [("adam", AxisType.Auto), ("trace", AxisType.Auto), ("adam", AxisType.Explicit)]
)
def test_sharded_state_follows_params_and_matches_one_device(name, axis_type):
    mesh = make_mesh(axis_type)
    tx = TX[name]
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    assert_quantized_like_params(tx, state, params)
    expected_shardings = jz.state_shardings(tx, params)
    for expected, leaf in zip(jax.tree.leaves(expected_shardings), jax.tree.leaves(state)):
        assert same_spec(expected.spec, leaf.sharding.spec), (expected.spec, leaf.sharding.spec)

    donated = jax.jit(step_fn(tx), donate_argnums=(0, 1))
    trajectory, params, state = run(donated, params, state, lambda g: place(g, mesh))
    assert_quantized_like_params(tx, state, params)  # three donated steps later
    for (sharded_params, sharded_state), (single_params, single_state) in zip(trajectory, one_device_run(name)):
        assert_states_match(sharded_state, single_state, code_steps=1, ulps=1)
        for a, e in zip(quantized_leaves(sharded_state), quantized_leaves(single_state)):  # one code step: <= 1/8
            np.testing.assert_allclose(host_dequantize(a), host_dequantize(e), rtol=0.125, atol=1e-30)
        assert_close_to_leaf_max(sharded_params, single_params, rtol=1e-6)
    assert_moved(INIT[name](make_params()), trajectory[-1][1])


def test_each_shard_of_the_state_decodes_by_itself():
    """Each device's codes and scales decode to its piece of the moment by themselves: no block crosses a shard."""
    mesh = make_mesh()
    tx = TX["adam"]
    params = place(make_params(), mesh)
    _, _, state = run(STEP["adam"], params, jz.init_sharded(tx, params), lambda g: place(g, mesh))
    for leaf in quantized_leaves(state):
        whole = host_dequantize(leaf)
        per_group = whole.shape[-1] // leaf.shape[-3]  # elements of the param's last axis in a group
        assert len(leaf.addressable_shards) == 8
        for shard in leaf.addressable_shards:
            *outer, groups, _, _ = shard.index  # the shard's groups are a slice of the param's last axis
            start, stop, _ = groups.indices(leaf.shape[-3])
            local = host_dequantize(shard.data)
            np.testing.assert_array_equal(local, whole[(*outer, slice(start * per_group, stop * per_group))], strict=True)


def test_compiled_sharded_step_moves_nothing_of_parameter_size():
    mesh = make_mesh()
    tx = TX["adam"]
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    grads = place(gradients(make_params(), 1), mesh)
    step = jax.jit(step_fn(tx), donate_argnums=(0, 1))
    smallest = min(int(np.prod(shape)) for shape in SHAPES.values())  # 32: a collective of any scales tree is bigger
    collectives = _collective_sizes(step.lower(params, state, grads).compile().as_text())
    assert [(op, n) for op, n in collectives if n >= smallest] == []
    # The pattern does find parameter-sized traffic in this step: gradients laid out across "w"'s shards.
    crossed = place(gradients(make_params(), 1), mesh, SPECS | {"w": P("model", None)})
    resharded = _collective_sizes(step.lower(params, state, crossed).compile().as_text())
    assert [n for _, n in resharded if n >= smallest], resharded


@pytest.mark.parametrize("name", ["adam", "trace"])
def test_shard_map_step_on_local_shards_matches_jit(name):
    mesh = make_mesh()
    tx = TX[name]
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    local = jax.jit(jax.shard_map(step_fn(tx), mesh=mesh, in_specs=(SPECS, specs, SPECS), out_specs=(SPECS, specs)))
    by_shard, final_params, final_state = run(local, params, state, lambda g: place(g, mesh))
    assert_quantized_like_params(tx, final_state, final_params)
    by_jit, _, _ = run(STEP[name], params, state, lambda g: place(g, mesh))
    for (p1, s1), (p2, s2) in zip(by_shard, by_jit):
        assert_states_match(s1, s2, code_steps=1, ulps=1)
        assert_close_to_leaf_max(p1, p2, rtol=1e-6)
    assert_moved(jax.device_get(state), by_shard[-1][1])


def test_blocks_that_would_cross_shards_raise_naming_a_max_shards_that_fits():
    """One group of blocks of 256 (max_shards=1) on w, whose last axis is split into 128-element shards."""
    mesh = make_mesh()
    params = place(make_params(), mesh)
    with pytest.raises(ValueError, match=r"split into 4 shards of 128 elements.*Blockwise8Bit\(max_shards=4\)"):
        jz.init_sharded(adam_chain(jz.Blockwise8Bit(max_shards=1)), params)


def test_blocks_crossing_shards_on_auto_axes_stay_correct():
    """Blocks that cross shards (max_shards=1) on Auto axes stay correct: XLA moves the blocks."""
    mesh = make_mesh()
    tx = adam_chain(jz.Blockwise8Bit(max_shards=1))
    params = place(make_params(), mesh)
    state = jax.jit(tx.init)(params)
    donated = jax.jit(step_fn(tx), donate_argnums=(0, 1))
    trajectory, params, state = run(donated, params, state, lambda g: place(g, mesh))
    for (p1, s1), (p2, s2) in zip(trajectory, one_device_run(tx)):
        assert_states_match(s1, s2, code_steps=1, ulps=1)
        assert_close_to_leaf_max(p1, p2, rtol=1e-6)


# --- inject_hyperparams ---------------------------------------------------------------------------

FACTORIES = {
    "adam": (lambda learning_rate, weight_decay, mu_dtype=None, nu_dtype=None:
             jz.chain(jz.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype), jz.add_decayed_weights(weight_decay),
                      jz.scale_by_learning_rate(learning_rate)),
             dict(learning_rate=1e-2, weight_decay=1e-2), dict(mu_dtype=Q, nu_dtype=Q)),
    "trace": (lambda learning_rate, momentum, dampening=0.0, accumulator_dtype=None:
              jz.chain(jz.trace(momentum, dampening=dampening, accumulator_dtype=accumulator_dtype),
                       jz.scale_by_learning_rate(learning_rate)),
              dict(learning_rate=1e-2, momentum=0.9, dampening=0.25), dict(accumulator_dtype=Q)),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_inject_hyperparams_keeps_the_storage_static_and_the_results(name):
    factory, numbers, storage = FACTORIES[name]
    injected = jz.inject_hyperparams(factory)(**numbers, **storage)
    plain = factory(**numbers, **storage)
    params = make_params()
    state = jax.jit(injected.init)(params)
    assert set(state.hyperparams) == set(numbers)  # the Blockwise8Bit storage is not an array of the state
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
    assert_states_match(state.inner_state, jax.jit(plain.init)(params))

    injected_run = run(jax.jit(step_fn(injected), donate_argnums=(0, 1)), jax.tree.map(jnp.copy, params), state)[0]
    plain_run = run(jax.jit(step_fn(plain)), params, jax.jit(plain.init)(params))[0]
    for (p1, s1), (p2, s2) in zip(injected_run, plain_run):
        # Python floats and float32 arrays of them round apart ((1 - 0.25) in float64, then float32).
        assert_states_match(s1.inner_state, s2, code_steps=1, ulps=1)
        assert_close_to_leaf_max(p1, p2, rtol=1e-6)
    assert_moved(jax.jit(plain.init)(params), plain_run[-1][1])


# --- MultiSteps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "trace"])
def test_multisteps_applies_the_8bit_optimizer_to_the_mean_of_each_three(name):
    """Each applied step is the inner 8-bit optimizer's step on the mean gradient, from the same state."""
    k = 3
    inner = TX[name]
    tx = jz.MultiSteps(inner, every_k_schedule=k)
    params = make_params()
    state = jax.jit(tx.init)(params)
    step, inner_step = jax.jit(tx.update), jax.jit(inner.update)
    for applied in range(STEPS):
        micro = [gradients(params, k * applied + j) for j in range(1, k + 1)]
        start = state.inner_opt_state
        for j, grads in enumerate(micro):
            updates, state = step(grads, state, params)
            if j < k - 1:  # accumulating: no update, the 8-bit state untouched
                assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
                assert_states_match(state.inner_opt_state, start)
        assert bool(tx.has_updated(state)) and int(state.gradient_step) == applied + 1
        mean = {leaf: np.mean([g[leaf] for g in micro], axis=0, dtype=np.float64).astype(np.float32) for leaf in SHAPES}
        expected_updates, expected_state = inner_step(mean, start, params)
        # The accumulator's running mean (Welford's, in float32) is a few ulps from the exact mean; that may move
        # a stored code by one step, never the update (computed from the float32 moments).
        assert_close_to_leaf_max(updates, expected_updates, rtol=1e-5)
        # the mean is summed in another order: ulps apart, so some stochastic roundings differ by a code
        assert_states_match(state.inner_opt_state, expected_state, code_steps=1, rtol=1e-6, differing=0.25)
        params = jz.apply_updates(params, updates)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.acc_grads))
    assert_moved(INIT[name](make_params()), state.inner_opt_state)


# --- Orbax ----------------------------------------------------------------------------------------

CHECKPOINTED = {
    "adam": lambda: OPTIMIZERS["adam"](),
    # Saved after 4 micro-steps of 3: one 8-bit step applied, a half-full accumulator.
    "MultiSteps": lambda: jz.MultiSteps(jz.chain(OPTIMIZERS["adam"](), OPTIMIZERS["trace"]()), every_k_schedule=3),
}


@pytest.mark.parametrize("name", list(CHECKPOINTED))
def test_orbax_resumes_the_8bit_state_bit_for_bit(name, tmp_path):
    import orbax.checkpoint as ocp

    total, save_at = 7, 4
    tx = CHECKPOINTED[name]()
    params = make_params()
    step = jax.jit(step_fn(tx))
    uninterrupted, _, _ = run(step, params, jax.jit(tx.init)(params), steps=total)
    saved_params, saved_state = jax.tree.map(jnp.asarray, uninterrupted[save_at - 1])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": saved_params, "opt_state": saved_state})
    checkpointer.wait_until_finished()

    fresh = CHECKPOINTED[name]()
    target = jax.eval_shape(lambda: {"params": make_params(), "opt_state": fresh.init(make_params())})
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(saved_state)
    assert len(quantized_leaves(restored["opt_state"])) >= 6
    codes_dtypes = [leaf.dtype for leaf in quantized_leaves(restored["opt_state"])]
    assert codes_dtypes == [leaf.dtype for leaf in quantized_leaves(saved_state)]
    assert set(codes_dtypes) == {jnp.dtype("int8"), jnp.dtype("uint8")}
    assert_trees_equal(restored, {"params": saved_params, "opt_state": saved_state})

    params, state = restored["params"], restored["opt_state"]
    for t in range(save_at + 1, total + 1):
        params, state = step(params, state, gradients(params, t))
        assert_trees_equal((params, state), uninterrupted[t - 1])
    assert_moved(saved_state, state)


def test_orbax_restores_the_sharded_8bit_state_into_its_shardings(tmp_path):
    import orbax.checkpoint as ocp

    mesh = make_mesh()
    tx, step = TX["adam"], STEP["adam"]
    params = place(make_params(), mesh)
    _, params, state = run(step, params, jz.init_sharded(tx, params), lambda g: place(g, mesh), steps=2)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    target = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        jax.eval_shape(lambda: {"params": make_params(), "opt_state": tx.init(make_params())}),
        {"params": {name: NamedSharding(mesh, spec) for name, spec in SPECS.items()},
         "opt_state": jz.state_shardings(tx, params)},
    )
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    assert_quantized_like_params(tx, restored["opt_state"], restored["params"])
    for ours, saved in zip(jax.tree.leaves(restored), jax.tree.leaves({"params": params, "opt_state": state})):
        assert ours.sharding.is_equivalent_to(saved.sharding, ours.ndim)
        np.testing.assert_array_equal(ours, saved, strict=True)
    grads = place(gradients(jax.device_get(params), 3), mesh)
    assert_trees_equal(step(restored["params"], restored["opt_state"], grads), step(params, state, grads))


# --- apply_if_finite and None updates -------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "trace"])
def test_apply_if_finite_keeps_the_8bit_state_on_a_nan_step(name):
    tx = jz.apply_if_finite(OPTIMIZERS[name](), max_consecutive_errors=2)
    step = jax.jit(step_fn(tx))
    params = make_params()
    state = jax.jit(tx.init)(params)
    for t in (1, 2):
        params, state = step(params, state, gradients(params, t))
    bad = gradients(params, 3)
    bad["w"][5, 300] = np.nan
    bad["v"][0, 0, 0] = np.inf
    new_params, new_state = step(params, state, bad)
    assert not bool(new_state.last_finite) and int(new_state.notfinite_count) == 1
    assert_trees_equal(new_state.inner_state, state.inner_state)
    assert_trees_equal(new_params, params)
    # The next finite step continues as if the NaN step never came.
    skipped = step(new_params, new_state, gradients(params, 3))
    straight = step(params, state, gradients(params, 3))
    assert_trees_equal((skipped[0], skipped[1].inner_state), (straight[0], straight[1].inner_state))
    assert_moved(state.inner_state, skipped[1].inner_state)


@pytest.mark.parametrize("name", ["adam", "trace"])
def test_a_none_update_keeps_its_8bit_state_leaf(name):
    tx, step = TX[name], STEP[name]
    params = make_params()
    params, state = step(params, INIT[name](params), gradients(params, 1))
    grads = gradients(params, 2) | {"w": None, "b": None}
    new_params, new_state = step(params, state, grads)
    kept = lambda path: "['w']" in path or "['b']" in path
    old = dict(leaves_with_paths(state))
    compared = 0
    for path, leaf in leaves_with_paths(new_state):
        if kept(path):
            assert_trees_equal(leaf, old[path])
            compared += 1
        elif "['v']" in path or "['u']" in path:
            assert is_encoded(leaf) and np.any(np.asarray(leaf) != np.asarray(old[path])), path
    assert compared >= 2
    assert_trees_equal({k: new_params[k] for k in ("w", "b")}, {k: params[k] for k in ("w", "b")})
    updates, _ = jax.eval_shape(tx.update, grads, state, params)
    assert updates["w"] is None and updates["b"] is None and updates["v"].shape == SHAPES["v"]
