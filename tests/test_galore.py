"""GaLore (scale_by_galore, galore): Optax bit for bit, the paper's float64 reference, SVD only at refresh
steps under jit, None leaves, storage through the base optimizer, vmap, inject_hyperparams, sharding."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
)

D = jz.GaLoreDimensionNumbers
MASK = {"dense": {"w": True, "b": False}, "scale": True, "tall": False, "cube": True}
# One spec per leaf: the wide matrix as it is, the 3-D leaf as a (2 * 4, 3) matrix, the rest unprojected.
TREE_SPEC = {"dense": {"w": D(), "b": None}, "scale": None, "tall": None, "cube": D((0, 2), 1)}


def galore_params(dtype=jnp.float32):
    """make_params' wide (3, 4) matrix, vector and scalar, plus a tall (6, 3) matrix and a (2, 3, 4) leaf."""
    rng = np.random.default_rng(1)
    extra = {"tall": rng.normal(size=(6, 3)), "cube": rng.normal(size=(2, 3, 4))}
    return make_params(dtype) | {name: jnp.asarray(x, dtype) for name, x in extra.items()}


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


@functools.cache
def _compiled_run(tx, steps, batched):
    def step(carry, t):
        params, state = carry
        gradient = lambda p: grad_fn(p, t, jnp).astype(p.dtype)  # noqa: E731
        grads = jax.tree.map(jax.vmap(gradient) if batched else gradient, params)
        updates, state = (jax.vmap(tx.update) if batched else tx.update)(grads, state, params)
        params = jz.apply_updates(params, updates)
        return (params, state), (params, state)

    def run(params):
        state = (jax.vmap(tx.init) if batched else tx.init)(params)
        return jax.lax.scan(step, (params, state), jnp.arange(1, steps + 1))[1]

    return jax.jit(run)


def trajectory(tx, params, steps=20, batched=False):
    """``steps`` steps on conftest's ``grad_fn`` as ONE compiled program (init, then grads, update and
    apply_updates in a scan; cached per optimizer object), so that a case compiles once and runs nothing
    eagerly. Returns the iterates and the states after each step, stacked along a leading axis."""
    return _compiled_run(tx, steps, batched)(params)


# Every option on and off, 20 jitted float32 steps: trajectories and states equal to Optax's, bit for bit.
# name: (factory of ours and Optax's given the library, the params)
OPTAX_CASES = {
    # A rank-1 projection refreshed every 3 steps, scaled; Lion inside; masked weight decay; one spec per leaf:
    # a wide matrix, a 3-D leaf as a (2 * 4, 3) matrix, and unprojected leaves (a tall matrix, a vector, a scalar).
    "galore": (
        lambda lib: lib.galore(
            0.05, rank=1, update_proj_gap=3, scale=0.5, base_optimizer=(jz if lib is jz else optax).scale_by_lion(0.8),
            weight_decay=0.1, mask=MASK, weight_dimension_numbers=TREE_SPEC,
        ),
        galore_params,
    ),
}


@functools.cache
def optax_case(name):
    """Ours and Optax's optimizer of a case, built once: tests that reuse one reuse its compiled steps."""
    factory, params = OPTAX_CASES[name]
    return factory(jz), factory(optax.contrib), params()


@functools.cache
def our_trajectory(name):
    ours, _, params = optax_case(name)
    return trajectory(ours, params)


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    _, theirs, params = optax_case(name)
    our_iterates, our_states = our_trajectory(name)
    their_iterates, their_states = trajectory(theirs, params)
    assert_trees_equal(our_iterates, their_iterates)
    # The states after every step; Optax keeps (0, 0) projectors for the unprojected leaves (we keep None).
    assert_trees_equal(jax.tree.leaves(our_states), [x for x in jax.tree.leaves(their_states) if x.shape[1:] != (0, 0)])
    assert our_states[0].projector["tall"] is None
    assert not np.allclose(np.asarray(our_iterates["dense"]["w"][-1]), np.asarray(params["dense"]["w"]))


def _per_leaf_reference(params, make_reference, steps=20):
    """The reference's iterates leaf by leaf, ``make_reference(path)`` giving each leaf's rule."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [
        reference.trajectory(make_reference(jax.tree_util.keystr(path)), np.asarray(leaf, np.float64), grad_fn, steps)
        for path, leaf in leaves
    ]
    return [jax.tree.unflatten(treedef, [path[i] for path in paths]) for i in range(steps)]


def test_matches_the_papers_float64_reference(x64):
    # Algorithm 2 in NumPy, 20 steps, 4 refreshes, the SVD in float64 (svd_dtype=None): the default spec (the
    # wide and the tall matrix projected; the 3-D leaf, the vector and the scalar take plain Adam), Optax's own
    # Adam as the base optimizer, a scale, weight decay and a schedule.
    params = galore_params(jnp.float64)
    options = dict(learning_rate=decaying, rank=2, update_proj_gap=5, scale=0.7, weight_decay=0.1)
    tx = jz.galore(**options, base_optimizer=optax.scale_by_adam(b2=0.9), svd_dtype=None)
    iterates, _ = trajectory(tx, params)
    expected = _per_leaf_reference(params, lambda path: reference.galore(**options, b2=0.9))
    per_step = [jax.tree.map(lambda x, i=i: x[i], iterates) for i in range(20)]
    assert_trees_close(per_step, expected, rtol=1e-9, atol=1e-12)


# --- the SVD only at refresh steps ------------------------------------------------------------


def _svd_sites(jaxpr, in_cond=False):
    """(inside a cond branch?) for every SVD in ``jaxpr`` and the jaxprs nested in it."""
    sites = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "svd":
            sites.append(in_cond)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    sites += _svd_sites(inner, in_cond or eqn.primitive.name == "cond")
    return sites


def test_svd_runs_only_in_the_refresh_branch_of_a_cond():
    tx, _, params = optax_case("galore")  # update_proj_gap=3; "w" and "cube" projected
    assert _svd_sites(jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr) == [True, True]
    projectors = np.asarray(our_trajectory("galore")[1][0].projector["cube"][:8])  # after steps 1..8
    changed = [not np.array_equal(a, b) for a, b in zip(projectors, projectors[1:])]
    assert changed == [False, False, True, False, False, True, False]  # refreshed at counts 0, 3, 6


# --- None leaves, storage, vmap, inject_hyperparams --------------------------------------------


def test_none_update_keeps_param_projector_and_8bit_state_bit_for_bit():
    # A (64, 32) matrix at rank 4: Adam's moments are (4, 32), quantized (a small min_size). Three steps, then
    # one with a None gradient for the matrix, in one compiled program.
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=8), jnp.float32)}
    q8 = jz.Blockwise8Bit(min_size=64, max_shards=1)
    tx = jz.galore(1e-2, rank=4, base_optimizer=jz.scale_by_adam(mu_dtype=q8, nu_dtype=q8))

    @jax.jit
    def run(params):
        iterates, states = _compiled_run(tx, 3, False).__wrapped__(params)
        params, state = jax.tree.map(lambda x: x[-1], (iterates, states))
        updates, new_state = tx.update({"w": None, "b": grad_fn(params["b"], 4, jnp)}, state, params)
        return iterates, state, updates["b"], new_state

    iterates, state, update_b, new_state = run(params)
    old, new = state[0], new_state[0]
    assert is_encoded(old.base_optimizer_state.mu["w"]) and is_encoded(old.base_optimizer_state.nu["w"])
    assert not np.allclose(iterates["w"][-1], params["w"]) and not np.allclose(update_b, 0)
    for a, b in [(old.projector["w"], new.projector["w"]),
                 (old.base_optimizer_state.mu["w"], new.base_optimizer_state.mu["w"]),
                 (old.base_optimizer_state.nu["w"], new.base_optimizer_state.nu["w"])]:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


def test_vmap_over_parameter_sets_equals_separate_runs():
    # 20 steps of three param sets at once (the step count is batched too, so the cond becomes a select).
    tx, _, params = optax_case("galore")
    batch = [params] + [jax.tree.map(lambda x, s=s: x * s, params) for s in (-0.5, 2.0)]
    stacked, _ = trajectory(tx, jax.tree.map(lambda *xs: jnp.stack(xs), *batch), batched=True)
    separate = [our_trajectory("galore")[0]] + [trajectory(tx, p)[0] for p in batch[1:]]  # one compiled program
    for i, expected in enumerate(separate):
        assert_trees_close(jax.tree.map(lambda x: x[:, i], stacked), expected, rtol=1e-5, atol=1e-6)


def test_inject_hyperparams_with_static_rank_and_gap_gives_the_plain_trajectory():
    # The "galore" case's optimizer; rank and update_proj_gap fix shapes and so must stay static.
    injected = jz.inject_hyperparams(jz.galore, static_args=("rank", "update_proj_gap"))(
        0.05, rank=1, update_proj_gap=3, scale=0.5, base_optimizer=jz.scale_by_lion(0.8), weight_decay=0.1, mask=MASK,
        weight_dimension_numbers=TREE_SPEC,
    )
    iterates, states = trajectory(injected, optax_case("galore")[2])
    assert_trees_close(iterates, our_trajectory("galore")[0], rtol=1e-6, atol=1e-7)
    assert set(states.hyperparams) == {"learning_rate", "scale", "weight_decay"}


def test_shapes_of_optax_examples_and_map_params():
    # Optax's attention example: (512, 8, 64) as a (512, 512) matrix, projected on the left.
    attn = jax.ShapeDtypeStruct((512, 8, 64), jnp.float32)
    state = jax.eval_shape(jz.galore(0.01, rank=16, weight_dimension_numbers={"a": D(0, (1, 2))}).init, {"a": attn})
    assert state[0].projector["a"].shape == (512, 16) and state[0].base_optimizer_state.mu["a"].shape == (16, 512)
    # tree_map_params sees the placeholder init (no leaves), as in Optax.
    tx, _, params = optax_case("galore")
    state = jax.eval_shape(tx.init, params)
    assert jax.tree.leaves(jz.tree.map_params(tx, lambda x: x, state)) == jax.tree.leaves(state)


# --- sharding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_sharded_donated_jit_matches_the_reference_and_shard_map_asks_for_whole_matrices(axis_type):
    from tests.test_sharding import SPECS, make_mesh, place, step_fn
    from tests.test_sharding import make_params as sharding_params

    # Every matrix read transposed (one spec, Optax's class), on the 2 x 4 mesh of test_sharding.py. On Explicit
    # axes each projected leaf is gathered for its SVD (Optax's, and this library's before, raised there).
    options = dict(learning_rate=1e-2, rank=4, update_proj_gap=2, weight_decay=1e-2)
    tx = jz.galore(**options, weight_dimension_numbers=optax.contrib.GaLoreDimensionNumbers(1, 0))
    mesh = make_mesh(getattr(jax.sharding.AxisType, axis_type))
    params = place(sharding_params(), mesh)
    state = jz.init_sharded(tx, params)
    mu = state[0].base_optimizer_state.mu
    assert mu["b1"].sharding.is_equivalent_to(params["b1"].sharding, 1) and mu["w1"].shape == (4, 16)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, t):
        return step_fn(tx)(params, state, jax.tree.map(lambda p: grad_fn(p, t, jnp), params))

    with jax.set_mesh(mesh):
        for t in range(1, 4):
            params, state = step(params, state, t)
    assert params["w1"].sharding.is_equivalent_to(NamedSharding(mesh, SPECS["w1"]), 2)
    expected = _per_leaf_reference(
        sharding_params(), lambda path: reference.galore(**options, axes=((1,), (0,)) if "w" in path else None), steps=3
    )[-1]
    assert_trees_close(params, expected, rtol=1e-4, atol=1e-5)
    specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    local = jax.shard_map(step_fn(tx), mesh=mesh, in_specs=(SPECS, specs, SPECS), out_specs=(SPECS, specs))
    with pytest.raises(ValueError, match="scale_by_galore: inside shard_map, an array of local shape"):
        jax.jit(local).trace(params, state, params)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.galore(-0.1), r"^galore: learning_rate must be >= 0, got -0.1"),
        (lambda: jz.galore(0.1, rank=0), r"^galore: rank must be an integer >= 1, got 0"),
        (lambda: jz.galore(0.1, rank=2.5), r"^galore: rank must be an integer >= 1, got 2.5"),
        (lambda: jz.galore(0.1, update_proj_gap=0), r"^galore: update_proj_gap must be an integer >= 1, got 0"),
        (lambda: jz.galore(0.1, scale="x"), r"^galore: scale must be a finite real number"),
        (lambda: jz.galore(0.1, weight_decay=-1.0), r"^galore: weight_decay must be >= 0, got -1.0"),
        (lambda: jz.galore(0.1, svd_dtype=jnp.int32), r"^galore: svd_dtype must be a floating dtype"),
        (lambda: jz.scale_by_galore(rank=-1), r"^scale_by_galore: rank must be an integer >= 1, got -1"),
        (lambda: jz.scale_by_galore(update_proj_gap=2**31), r"^scale_by_galore: update_proj_gap must be at most"),
        (lambda: jz.scale_by_galore(weight_dimension_numbers=D(0, 1)).init({"w": jnp.ones((2, 3, 4))}),
         r"^scale_by_galore: every axis must be a reduction or an output axis"),
        (lambda: jz.scale_by_galore(weight_dimension_numbers=D(0, (0, 1))).init({"w": jnp.ones((2, 3))}),
         r"^scale_by_galore: reduction_axis \(0,\) and output_axis \(0, 1\) must be disjoint"),
        (lambda: jz.scale_by_galore(weight_dimension_numbers={"w": D()}).init({"w": jnp.ones(3)}),
         r"^scale_by_galore: a leaf projected by GaLore must have at least 2 dimensions, got shape \(3,\)"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_a_state_from_another_optimizer_is_refused():
    params = galore_params()
    with pytest.raises(ValueError, match="expected GaLoreState"):
        jz.galore(0.1).update(params, jz.adamw(0.1).init(params), params)
    with pytest.raises(TypeError, match="scale_by_galore: expected gradient transformations"):
        jz.scale_by_galore(base_optimizer="adam")


def test_dimension_numbers_naming_an_axis_outside_the_leaf_raise():
    # They wrapped around (axis 2 of a 2-D leaf was taken as axis 0) instead of raising (review of issue 18).
    tx = jz.scale_by_galore(rank=1, weight_dimension_numbers=jz.GaLoreDimensionNumbers(reduction_axis=2, output_axis=1))
    with pytest.raises(ValueError, match=r"scale_by_galore: .* names axes outside a leaf of shape \(4, 3\)"):
        tx.init({"w": jnp.ones((4, 3))})


@pytest.mark.parametrize("svd_dtype", [jnp.float32, None], ids=["float32_svd", "gradient_dtype_svd"])
def test_complex_params_are_refused_where_they_would_be_projected(svd_dtype):
    # The float32 SVD dropped the imaginary part, and with svd_dtype=None P^T was not conjugated: a silently wrong
    # projection. A complex leaf that is not projected still goes to the base optimizer as it is.
    tx = jz.galore(0.1, rank=1, svd_dtype=svd_dtype)
    message = (r"^scale_by_galore: complex params are not supported \(GaLore's projections are real: .*; a leaf of "
               r"dtype complex64\); wrap the optimizer in jz\.combine\.split_real_and_imaginary\.$")
    with pytest.raises(ValueError, match=message):
        tx.init({"w": jnp.ones((4, 3), jnp.complex64)})
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3, jnp.complex64)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=message):
        tx.update({"w": jnp.ones((4, 3), jnp.complex64), "b": jnp.ones(3, jnp.complex64)}, state, params)
    updates, _ = tx.update({"w": jnp.ones((4, 3)), "b": jnp.full(3, 1j, jnp.complex64)}, state, params)
    assert updates["b"].dtype == jnp.complex64


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_bfloat16_gradients_of_float32_params_keep_a_float32_projector(jit):
    # Mixed precision: the refreshed projector was cast to the gradient's bfloat16 and the kept one was float32,
    # so lax.cond refused the two branches (TypeError).
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    tx = jz.scale_by_galore(rank=1, update_proj_gap=2)
    step = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    grads = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.ones(3)}
    half = jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads)
    for _ in range(3):  # a refresh, a kept projector, a refresh
        updates, state = step(half, state)
        assert updates["w"].dtype == jnp.bfloat16 and state.projector["w"].dtype == jnp.float32
    # The same steps on the gradients' values in float32, up to the bfloat16 rounding of the update.
    expected, full_state = None, tx.init(params)
    for _ in range(3):
        expected, full_state = tx.update(jax.tree.map(lambda g: g.astype(jnp.bfloat16).astype(jnp.float32), grads),
                                         full_state)
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), np.asarray(expected["w"]), rtol=1e-2)
    np.testing.assert_allclose(np.asarray(state.projector["w"]), np.asarray(full_state.projector["w"]), rtol=1e-6)
