"""Optax's rprop and the small element-wise / whole-leaf transforms: scale_by_rprop, rprop, scale_gradient,
normalize_by_update_norm, centralize, keep_params_nonnegative, zero_nans. Optax bit for bit, float64
references, storage, None leaves, jit/donation/vmap/inject_hyperparams, shard_map, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.transforms.constrain import NonNegativeParamsState, ZeroNansState, keep_params_nonnegative, zero_nans
from jaxopt_zoo.transforms.rprop import ScaleByRpropState, scale_by_rprop
from jaxopt_zoo.transforms.scaling import centralize, normalize_by_update_norm, scale_gradient
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    assert_vmap_matches_separate_runs,
    grad_fn,
    make_params,
    run_ours,
    run_reference,
    run_together,
)
from jaxopt_zoo.storage import read_leaf
from tests.test_optimizers import assert_updates_close, check_eight_bit_state, eight_bit_params

Q8 = jz.Blockwise8Bit()
RPROP_OPTIONS = (0.05, 0.3, 1.5, 1e-3, 0.2)


def with_nans(grads, t):
    """Every third step, NaN in the first entry of every array leaf (for zero_nans)."""
    return jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan) if t % 3 == 0 else g, grads)


def run_with_nans(tx, params, steps=20, jit=True):
    state, iterates = tx.init(params), []
    update = jax.jit(tx.update) if jit else tx.update
    for t in range(1, steps + 1):
        grads = with_nans(jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params), t)
        updates, state = update(grads, state, params)
        params = jz.apply_updates(params, updates)
        iterates.append(params)
    return iterates, state


# Every option on and off: jitted float32 trajectories and states against Optax's, bit for bit.
OPTAX_CASES = {
    "rprop": (lambda: jz.rprop(0.05), lambda: optax.rprop(0.05)),
    "rprop_options": (lambda: jz.rprop(*RPROP_OPTIONS), lambda: optax.rprop(*RPROP_OPTIONS)),
    "scale_by_rprop_min_0": (
        lambda: jz.chain(scale_by_rprop(0.5, 0.2, 2.0, 0.0, 1.0), jz.scale(-0.1)),
        lambda: optax.chain(optax.scale_by_rprop(0.5, 0.2, 2.0, 0.0, 1.0), optax.scale(-0.1)),
    ),
    "normalize_by_update_norm": (
        lambda: normalize_by_update_norm(-0.1),
        lambda: optax.normalize_by_update_norm(-0.1),
    ),
    "normalize_by_update_norm_eps": (
        lambda: jz.chain(normalize_by_update_norm(2.0, eps=0.5), jz.sgd(0.05)),
        lambda: optax.chain(optax.normalize_by_update_norm(2.0, eps=0.5), optax.sgd(0.05)),
    ),
    "centralize": (
        lambda: jz.chain(centralize(), jz.sgd(0.05, momentum=0.9)),
        lambda: optax.chain(optax.centralize(), optax.sgd(0.05, momentum=0.9)),
    ),
    "keep_params_nonnegative": (
        lambda: jz.chain(jz.sgd(0.3), keep_params_nonnegative()),
        lambda: optax.chain(optax.sgd(0.3), optax.keep_params_nonnegative()),
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, theirs = OPTAX_CASES[name]
    params = make_params(jnp.float32)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([ours(), theirs()], params, steps=20)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert not np.allclose(np.asarray(our_iterates[-1]["dense"]["w"]), np.asarray(params["dense"]["w"]))


def test_zero_nans_matches_optax_bit_for_bit_with_nans():
    params = make_params(jnp.float32)
    ours, our_state = run_with_nans(jz.chain(zero_nans(), jz.sgd(0.05)), params, steps=21)
    theirs, their_state = run_with_nans(optax.chain(optax.zero_nans(), optax.sgd(0.05)), params, steps=21)
    assert_trees_equal(ours, theirs)
    assert_trees_equal(our_state[0].found_nan, their_state[0].found_nan)
    assert all(bool(x) for x in jax.tree.leaves(our_state[0].found_nan))  # step 21 had NaNs everywhere
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(ours[-1]))


def test_rprop_state_has_optaxs_fields_and_its_first_update_is_zero():
    params = jnp.ones(3)
    tx = jz.rprop(0.05)
    state = tx.init(params)
    assert isinstance(state[0], ScaleByRpropState) and state[0].count is None
    assert set(optax.ScaleByRpropState._fields) <= set(state[0]._fields)
    updates, _ = tx.update(jnp.array([1.0, -2.0, 0.5]), state, params)
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(3, np.float32))  # Optax's one-step lag


# Each rule against its float64 NumPy reference, eagerly in float64, over 25 steps.
REFERENCE_CASES = {
    "rprop": (lambda: jz.rprop(0.05), reference.optax_rprop(0.05)),
    "rprop_options": (lambda: jz.rprop(*RPROP_OPTIONS), reference.optax_rprop(*RPROP_OPTIONS)),
    "centralize": (lambda: jz.chain(centralize(), jz.sgd(0.05)), reference.centralized_sgd(0.05)),
    "keep_params_nonnegative": (lambda: jz.chain(jz.sgd(0.3), keep_params_nonnegative()), reference.nonnegative_sgd(0.3)),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_matches_float64_reference(name, x64):
    ours, ref = REFERENCE_CASES[name]
    params = make_params(jnp.float64)
    iterates, _ = run_ours(ours(), params)
    assert_trees_close(iterates, run_reference(ref, params), rtol=1e-10, atol=1e-13)


def test_normalize_by_update_norm_matches_float64_reference(x64):
    params = make_params(jnp.float64)
    iterates, _ = run_ours(normalize_by_update_norm(-0.1, eps=1e-3), params, jit=False)
    ref = reference.normalized_gd(0.1, eps=1e-3)
    leaves, treedef = jax.tree.flatten(params)
    leaves = [np.asarray(x, np.float64) for x in leaves]
    for t, ours in enumerate(iterates, start=1):
        deltas = ref([grad_fn(x, t) for x in leaves])
        leaves = [x + d for x, d in zip(leaves, deltas)]
        assert_trees_close(ours, jax.tree.unflatten(treedef, leaves), rtol=1e-10, atol=1e-13)


def test_zero_nans_matches_float64_reference(x64):
    params = make_params(jnp.float64)
    ours, state = run_with_nans(jz.chain(zero_nans(), jz.sgd(0.05)), params, jit=False)
    ref = reference.zero_nans_sgd(0.05)
    leaves, treedef = jax.tree.flatten(params)
    states = [ref.init(np.asarray(x)) for x in leaves]
    leaves = [np.asarray(x, np.float64) for x in leaves]
    for t, it in enumerate(ours, start=1):
        for i, x in enumerate(leaves):
            g = np.asarray(with_nans(jnp.asarray(grad_fn(x, t)), t))
            delta, states[i] = ref.update(g, states[i], x, t)
            leaves[i] = x + delta
        assert_trees_close(it, jax.tree.unflatten(treedef, leaves), rtol=1e-10, atol=1e-13)
    assert [bool(x) for x in jax.tree.leaves(state[0].found_nan)] == [s["found_nan"] for s in states]


# --- scale_gradient ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.0, 1.0, -2.5])
def test_scale_gradient_matches_optax(scale):
    x = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}

    def loss(fn):  # sum(sin(a)) + b^2 of the tree passed through fn
        def value(x):
            y = fn(x, scale)
            return jnp.sum(jnp.sin(y["a"])) + y["b"] ** 2

        return value

    assert_trees_equal(loss(scale_gradient)(x), loss(optax.scale_gradient)(x))  # the identity forward
    ours, theirs = jax.grad(loss(scale_gradient))(x), jax.grad(loss(optax.scale_gradient))(x)
    assert_trees_equal(ours, theirs)
    assert_trees_close(ours, {"a": scale * jnp.cos(x["a"]), "b": scale * 2 * x["b"]}, rtol=1e-6)


def test_scale_gradient_takes_a_traced_scale_and_keeps_the_cotangent_dtype():
    x = jnp.array([1.0, 2.0], jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda x, s: jnp.sum(scale_gradient(x, s).astype(jnp.float32) ** 2)))
    g = grad(x, jnp.float32(0.5))
    assert g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g, np.float32), [1.0, 2.0])
    # And its own derivative with respect to the scale is zero (the scale acts only backwards).
    assert float(jax.grad(lambda s: jnp.sum(scale_gradient(jnp.ones(2), s)))(2.0)) == 0.0


# --- storage options, None leaves ----------------------------------------------------------------


@pytest.mark.parametrize("storage", [jnp.bfloat16, jz.StochasticBF16()], ids=["bfloat16", "stochastic"])
def test_rprop_bfloat16_storages(storage):
    params = make_params()
    (expected, _), (iterates, state) = run_together([
        jz.rprop(0.05),
        jz.rprop(0.05, step_size_dtype=storage, prev_dtype=storage),
    ], params, steps=6)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((state[0].step_sizes, state[0].prev_updates)))
    assert (state[0].count is None) == (storage is jnp.bfloat16)
    assert_trees_close(iterates[-1], expected[-1], rtol=0, atol=0.01)


@pytest.mark.parametrize("name", ["rprop", "zero_nans"])
def test_none_update_keeps_param_and_state_bit_for_bit(name):
    # rprop with both moments in 8 bits: the large "w" is quantized, "b" stays float32 (and matches float32 rprop).
    tx = jz.rprop(0.01, step_size_dtype=Q8, prev_dtype=Q8) if name == "rprop" else zero_nans()
    plain = jz.rprop(0.01) if name == "rprop" else zero_nans()
    params = eight_bit_params()
    state, update = tx.init(params), jax.jit(tx.update)
    plain_state, plain_update = plain.init(params), jax.jit(plain.update)
    for t in (1, 2, 3):
        grads = with_nans(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), t)
        updates, state = update(grads, state, params)
        expected, plain_state = plain_update(grads, plain_state, params)
        np.testing.assert_array_equal(updates["b"], expected["b"])
        params = jz.apply_updates(params, updates)
    if name == "rprop":
        check_eight_bit_state(state, (1, 1))
        assert_updates_close({"w": read_leaf(state[0].step_sizes["w"])}, {"w": plain_state[0].step_sizes["w"]}, 0.02)
        assert jz.storage.state_bytes(state) < 0.3 * jz.storage.state_bytes(plain_state)
    grads = {"w": None, "b": grad_fn(params["b"], 4, jnp)}
    updates, new_state = update(grads, state, params)
    assert updates["w"] is None and updates["b"] is not None
    kept = [(a, b) for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(new_state))
            if path[-1] == jax.tree_util.DictKey("w")]
    assert kept
    for a, b in kept:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)
    if name == "zero_nans":
        assert bool(new_state.found_nan["w"]) and not bool(new_state.found_nan["b"])


def test_stateless_ones_pass_none_through():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    grads = {"w": None, "b": jnp.array([1.0, -2.0, 2.0])}
    for tx in (centralize(), normalize_by_update_norm(), keep_params_nonnegative()):
        updates, state = tx.update(grads, tx.init(params), params)
        assert updates["w"] is None and updates["b"] is not None and state == NonNegativeParamsState()


# --- jit with donation, vmap, inject_hyperparams --------------------------------------------------


def test_jitted_donated_rprop_steps_match_eager_steps():
    tx = jz.rprop(0.05)
    params = make_params()
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    eager, donated = (params, tx.init(params)), (params, tx.init(params))
    for t in range(1, 4):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), eager[0])
        u, s = tx.update(grads, eager[1], eager[0])
        eager = (jz.apply_updates(eager[0], u), s)
        u, s = step(donated[0], donated[1], grads)
        donated = (jz.apply_updates(donated[0], u), s)
    assert_trees_close(donated, eager, rtol=1e-6)


def test_vmap_over_parameter_sets_equals_separate_runs():
    tx = jz.chain(zero_nans(), centralize(), jz.rprop(0.05))
    assert_vmap_matches_separate_runs(tx, [make_params(seed=s) for s in range(2)], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "factory, hyperparams",
    [
        (jz.rprop, dict(learning_rate=0.05, eta_minus=0.3, eta_plus=1.5, min_step_size=1e-3, max_step_size=0.2)),
        (normalize_by_update_norm, dict(scale_factor=-0.1, eps=1e-3)),
    ],
    ids=["rprop", "normalize_by_update_norm"],
)
def test_inject_hyperparams_gives_the_plain_trajectory(factory, hyperparams):
    params = make_params()
    expected, _ = run_ours(factory(**hyperparams), params, steps=8, jit=False)
    injected, state = run_ours(jz.inject_hyperparams(factory)(**hyperparams), params, steps=8, jit=False)
    assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)
    assert set(state.hyperparams) == set(hyperparams) - getattr(factory, "init_only_args", set())


# --- shard_map: the whole-array reductions are exact with axis_name ------------------------------

AXES = ("data", "model")
SPECS = {"w": P("data", "model"), "v": P("model"), "s": P()}


def _shard_map_step(tx, axis_specs=SPECS):
    mesh = jax.make_mesh((2, 4), AXES, devices=jax.devices("cpu")[:8])
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32),
              "v": jnp.linspace(-1.0, 1.0, 8), "s": jnp.asarray(0.5)}
    grads = with_nans(jax.tree.map(lambda p: grad_fn(p, 3, jnp), params), 3)
    step = lambda g: tx.update(g, tx.init(g), None)[0]
    local = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(axis_specs,), out_specs=axis_specs))
    placed = {k: jax.device_put(g, NamedSharding(mesh, axis_specs[k])) for k, g in grads.items()}
    return local(placed), jax.jit(step)(grads)


@pytest.mark.parametrize(
    "name, tx",
    [
        ("normalize_by_update_norm", normalize_by_update_norm(-0.1, axis_name=AXES)),
        ("centralize", centralize(axis_name=AXES, partition_specs=SPECS)),
        ("zero_nans", zero_nans(axis_name=AXES)),
    ],
)
def test_shard_map_with_axis_name_matches_one_device(name, tx):
    if name == "normalize_by_update_norm":
        tx = jz.chain(zero_nans(axis_name=AXES), tx)
    sharded, single = _shard_map_step(tx)
    assert_trees_close(sharded, single, rtol=1e-6, atol=1e-7)


def test_shard_map_without_axis_name_raises_for_a_sharded_leaf():
    for tx in (normalize_by_update_norm(), centralize(), zero_nans()):
        with pytest.raises(ValueError, match="inside shard_map") as error:
            _shard_map_step(tx)
        assert "has no axis_name option" not in str(error.value)  # each of them has one
    with pytest.raises(ValueError, match=r"centralize: .*Pass axis_name= \(the shard_map axes\) and partition_specs="):
        _shard_map_step(centralize())


def test_centralize_inside_shard_map_rows_split_only_and_a_misspelt_axis():
    # Only the rows of w split: per-shard row means are exact (axis_name=()).
    specs = {"w": P("data", None), "v": P(), "s": P()}
    sharded, single = _shard_map_step(centralize(axis_name=()), specs)
    assert_trees_close(sharded, single, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"^centralize: axis_name=\('modle',\) names \['modle'\]"):
        _shard_map_step(centralize(axis_name="modle"))
    # Without partition_specs, a named axis may split the rows (here "data" does: per-row means would mix rows).
    for axis_name in (AXES, "data", "model"):
        with pytest.raises(ValueError, match=r"^centralize: inside shard_map, a leaf of local shape \(\d+, \d+\) "
                                             r"varies over mesh axes .* Pass partition_specs="):
            _shard_map_step(centralize(axis_name=axis_name))


def test_centralize_with_partition_specs_averages_only_over_axes_splitting_rows_entries():
    # One axis splits the rows of one leaf and the columns of another: no axis_name alone is right for both.
    mesh = jax.make_mesh((2, 4), AXES, devices=jax.devices("cpu")[:8])
    rng = np.random.default_rng(1)
    grads = {"rows": rng.normal(size=(8, 4)), "cols": rng.normal(size=(4, 8)), "w": rng.normal(size=(4, 8, 2)),
             "b": rng.normal(size=(8,)), "none": None}
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
    specs = {"rows": P(("model", "data")), "cols": P(None, ("data", "model")), "w": P("data", "model"),
             "b": P("model"), "none": None}
    tx = centralize(axis_name=AXES, partition_specs=specs)
    local = jax.jit(jax.shard_map(lambda g: tx.update(g, tx.init(g))[0], mesh=mesh, in_specs=(specs,),
                                  out_specs=specs))
    placed = jax.tree.map(lambda g, s: None if g is None else jax.device_put(g, NamedSharding(mesh, s)), grads, specs,
                          is_leaf=lambda x: x is None)
    expected = jax.tree.map(np.asarray, centralize().update(grads, jz.EmptyState())[0])
    assert_trees_close(local(placed), expected, rtol=1e-6, atol=1e-6)
    assert_trees_close(tx.update(grads, jz.EmptyState())[0], expected, rtol=0, atol=0)  # outside shard_map: ignored
    partial = centralize(axis_name="data", partition_specs=specs)
    with pytest.raises(ValueError, match=r"trailing axes over \['model'\], which axis_name=\('data',\) does not"):
        jax.shard_map(lambda g: partial.update(g, jz.EmptyState())[0], mesh=mesh, in_specs=(specs,),
                      out_specs=specs)(placed)


def test_zero_nans_flags_cover_the_whole_array_inside_shard_map():
    mesh = jax.make_mesh((8,), ("x",), devices=jax.devices("cpu")[:8])
    grads = jax.device_put(jnp.zeros(16).at[3].set(jnp.nan), NamedSharding(mesh, P("x")))  # one NaN, on one shard
    tx = zero_nans(axis_name="x")
    flag = jax.jit(jax.shard_map(lambda g: tx.update(g, tx.init(g))[1].found_nan, mesh=mesh,
                                 in_specs=(P("x"),), out_specs=P()))(grads)
    assert bool(flag)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.rprop(-0.1), r"^rprop: learning_rate must be >= 0, got -0.1"),
        (lambda: jz.rprop(lambda t: 0.1), r"^rprop: learning_rate is Rprop's initial step size"),
        (lambda: jz.rprop(0.1, eta_minus=1.5), r"^rprop: eta_minus must be in \(0, 1\), got 1.5"),
        (lambda: jz.rprop(0.1, eta_plus=0.9), r"^rprop: eta_plus must be > 1, got 0.9"),
        (lambda: jz.rprop(0.1, min_step_size=2.0, max_step_size=1.0), r"^rprop: min_step_size must be <= max_step_size"),
        (lambda: jz.rprop(0.1, prev_dtype=jnp.int8), r"^rprop: prev_dtype must be"),
        (lambda: scale_by_rprop(0.1, max_step_size=float("inf")), r"^scale_by_rprop: max_step_size must be a finite"),
        (lambda: scale_by_rprop(0.1, step_size_dtype="x"), r"^scale_by_rprop: step_size_dtype must be"),
        (lambda: normalize_by_update_norm("big"), r"^normalize_by_update_norm: scale_factor must be a finite real"),
        (lambda: normalize_by_update_norm(eps=-1.0), r"^normalize_by_update_norm: eps must be >= 0, got -1.0"),
        (lambda: normalize_by_update_norm(axis_name=3), r"^normalize_by_update_norm: axis_name must be"),
        (lambda: centralize(axis_name=[1]), r"^centralize: axis_name must be"),
        (lambda: zero_nans(axis_name=0), r"^zero_nans: axis_name must be"),
        (lambda: scale_gradient(jnp.ones(2), float("nan")), r"^scale_gradient: scale must be a finite real"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_keep_params_nonnegative_needs_params_and_matching_updates():
    tx = keep_params_nonnegative()
    with pytest.raises(ValueError, match="^keep_params_nonnegative needs the parameters"):
        tx.update(jnp.ones(2), tx.init(None))
    with pytest.raises(ValueError, match="^keep_params_nonnegative: the updates tree does not match the params"):
        tx.update(jnp.ones(2), tx.init(None), jnp.ones(3))


def test_a_state_from_another_optimizer_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match="expected ScaleByRpropState"):
        jz.rprop(0.1).update(params, jz.torch.rprop(0.1).init(params), params)
    with pytest.raises(ValueError, match="expected ZeroNansState"):
        zero_nans().update(params, jz.EmptyState(), params)
    assert ZeroNansState._fields == optax.ZeroNansState._fields
