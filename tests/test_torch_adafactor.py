"""jz.torch.adafactor (torch.optim.Adafactor) and the transformations of jaxopt_zoo/transforms/factored.py.

tests/reference.py's torch_adafactor follows torch.optim.Adafactor's documented algorithm. It was checked
by hand against torch 2.13's own Adafactor (CPU, float64, both its for-loop and foreach kernels) over 25
steps of this gradient field on params of shapes (3, 4), (4,), (), (2, 3, 5), (5, 2, 3) and (1, 6), on a
64-point grid of lr, beta2_decay, eps, d, weight_decay and maximize: largest difference 4.4e-13 relative
to each leaf's largest entry (2.8e-10 element by element, at an entry of 1.9e-6 passing through zero).

Most compiled programs are shared between tests (compiling dominates their cost): the float32 trajectory
with OPTIONS is run once and serves the reference, Optax, inject_hyperparams and shard_map comparisons.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import STEPS, assert_trees_close, assert_trees_equal, grad_fn, run_ours, run_reference


def make_params(dtype=jnp.float32, seed: int = 0) -> dict:
    """A matrix, a vector, a scalar and a 3-D param (factored over its last two dims; Optax would take
    its dims 0 and 2, its largest). Every dim splits evenly over the 2 x 4 mesh below."""
    rng = np.random.default_rng(seed)
    return {
        "dense": {"w": jnp.asarray(rng.normal(size=(4, 8)), dtype), "b": jnp.asarray(rng.normal(size=(8,)), dtype)},
        "scale": jnp.asarray(rng.normal(), dtype),
        "conv": jnp.asarray(rng.normal(size=(8, 2, 4)), dtype),
    }


def _stacked(iterates):
    return jax.tree.map(lambda *xs: np.stack(xs), *iterates)


# --- the option grid, against the float64 reference ----------------------------------------------

# lr 0.5 makes rho_t = min(lr, 1/sqrt(t)) switch at t = 4; eps1 = 0.3 and eps2 = 2.0 are floors that act
# (eps1 on the row mean and on sqrt(V)), eps1 = 0 takes the guarded path; d = 1.5 clips less than 1.
GRID = list(itertools.product([1e-2, 0.5], [-0.8, -0.5], [0.0, 1e-8, 0.3], [1e-3, 2.0], [1.0, 1.5], [0.0, 0.1]))
NAMES = ("lr", "beta2_decay", "eps1", "eps2", "d", "weight_decay")


def test_option_grid_follows_torchs_algorithm(x64):
    # All 96 numeric combinations in one compiled program: the options are vmapped arrays. The literal
    # forms (eps1=None, a dropped zero weight decay) and maximize=True are run by the next test.
    params = make_params(jnp.float64)

    def trajectory(lr, beta2_decay, eps1, eps2, d, weight_decay):
        tx = jz.torch.adafactor(lr, beta2_decay, (eps1, eps2), d, weight_decay)

        def step(carry, t):
            p, state = carry
            updates, state = tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), state, p)
            p = jz.apply_updates(p, updates)
            return (p, state), p

        return jax.lax.scan(step, (params, tx.init(params)), jnp.arange(1.0, STEPS + 1))[1]

    columns = [jnp.asarray(column, jnp.float64) for column in zip(*GRID)]
    paths = jax.jit(jax.vmap(trajectory))(*columns)
    for i, values in enumerate(GRID):
        options = dict(zip(NAMES, values))
        eps = (options.pop("eps1"), options.pop("eps2"))
        expected = run_reference(reference.torch_adafactor(eps=eps, **options), params)
        assert_trees_close(jax.tree.map(lambda x: x[i], paths), _stacked(expected), rtol=1e-10, atol=1e-12)


def schedule(count):
    return 0.5 * 0.9**count  # above 1/sqrt(t) at first, below it from t = 12


@pytest.mark.parametrize(
    "options", [dict(), dict(lr=schedule, weight_decay=0.1, maximize=True)], ids=["defaults", "schedule-decay-maximize"]
)
def test_literal_options_follow_torchs_algorithm(x64, options):
    # eps1=None is float64's machine epsilon here; the default weight decay 0 drops its step.
    params = make_params(jnp.float64)
    ours, _ = run_ours(jz.torch.adafactor(**options), params)
    assert_trees_close(ours, run_reference(reference.torch_adafactor(**options), params), rtol=1e-10, atol=1e-12)


def test_eps1_zero_gives_zero_steps_where_torch_divides_zero_by_zero():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    tx = jz.torch.adafactor(eps=(0.0, 1e-3))
    zeros = jax.tree.map(jnp.zeros_like, params)
    assert_trees_equal(jax.jit(tx.update)(zeros, tx.init(params), params)[0], zeros)


# Non-default options in float32, where rho_t = lr (as Optax's fixed rate): one compiled update and one
# trajectory, shared by the float32, Optax, vmap, inject_hyperparams and shard_map tests.
OPTIONS = dict(lr=0.1, beta2_decay=-0.5, eps=(None, 1e-3), d=1.5, weight_decay=0.1)
TX = jz.torch.adafactor(**OPTIONS)
INIT, UPDATE = jax.jit(TX.init), jax.jit(TX.update)


@functools.cache
def float32_trajectory() -> list:
    return run_ours(jz.GradientTransformation(INIT, UPDATE), make_params(), jit=False)[0]


def test_float32_follows_the_reference_to_float32_tolerance():
    expected = run_reference(reference.torch_adafactor(**OPTIONS, dtype=np.float32), make_params())
    assert_trees_close(float32_trajectory(), expected, rtol=2e-4, atol=2e-5)


# --- Optax's twin ------------------------------------------------------------------------------------


def test_optax_adafactor_agrees_where_the_conventions_coincide():
    # min_dim_size_to_factor=1: Optax factors every param of >= 2 dims over its two largest dims (the
    # last two of "w"); decay_rate = -beta2_decay; clipping_threshold = d; rho_t = lr while t <= 1 / lr^2;
    # weight_decay_rate = lr * weight_decay; its parameter-scale floor is PyTorch's default eps2, 1e-3.
    theirs, _ = run_ours(
        optax.adafactor(0.1, min_dim_size_to_factor=1, decay_rate=0.5, clipping_threshold=1.5, weight_decay_rate=0.01),
        make_params(),
    )
    ours = float32_trajectory()
    without_conv = lambda iterates: [{k: v for k, v in p.items() if k != "conv"} for p in iterates]
    assert_trees_close(without_conv(ours), without_conv(theirs), rtol=1e-5, atol=1e-6)
    # The documented difference: the (8, 2, 4) param is factored over dims (0, 2) by Optax, (1, 2) by PyTorch.
    assert not np.allclose(ours[-1]["conv"], theirs[-1]["conv"], rtol=1e-3, atol=0)


def test_scale_by_param_block_rms_is_optaxs():
    params = {"w": make_params()["conv"], "tiny": jnp.full((3,), 1e-4)}  # tiny's RMS is below min_scale: clamped
    updates = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
    ours = jz.scale_by_param_block_rms(2e-3).update(updates, jz.EmptyState(), params)[0]
    theirs = optax.scale_by_param_block_rms(2e-3).update(updates, optax.EmptyState(), params)[0]
    assert_trees_equal(ours, theirs)


def test_relative_step_size_is_the_smaller_of_the_rate_and_one_over_root_t():
    rho = jz.relative_step_size(schedule)
    for count in (0, 3, 4, 20):
        assert float(rho(jnp.int32(count))) == pytest.approx(min(schedule(count), 1 / np.sqrt(count + 1)), rel=1e-6)


# --- storage, None leaves, jit, vmap, inject_hyperparams ------------------------------------------------


def storage_params() -> dict:
    """col_var of "w" (1, 4096) and the variance of "v" (4096,) are large enough for 8 bits; "b" is not."""
    rng = np.random.default_rng(2)
    return {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in
            {"w": (4, 4096), "v": (4096,), "b": (8,)}.items()}


Q8 = jz.Blockwise8Bit()
STORAGES = {  # every storage on some moment: (factors_dtype, variance_dtype) = (8 bits, SR bfloat16), (bfloat16, bfloat16)
    "8-bit-sr": jz.torch.adafactor(lr=0.1, weight_decay=0.1, factors_dtype=Q8, variance_dtype=jz.StochasticBF16()),
    "bfloat16": jz.torch.adafactor(lr=0.1, weight_decay=0.1, factors_dtype=jnp.bfloat16, variance_dtype=jnp.bfloat16),
}
UPDATES = {name: jax.jit(tx.update) for name, tx in STORAGES.items()}


def test_storage_options():
    # None (the params' dtype) is every other test's state; here each stored run against the float64 reference.
    params = storage_params()
    expected = run_reference(reference.torch_adafactor(lr=0.1, weight_decay=0.1), params, steps=3)[-1]
    for name, tx in STORAGES.items():
        ours, state = run_ours(jz.GradientTransformation(jax.jit(tx.init), UPDATES[name]), params, steps=3, jit=False)
        for key in ("w", "v", "b"):
            error = float(np.linalg.norm(ours[-1][key] - expected[key]) / np.linalg.norm(expected[key] - params[key]))
            assert error < 0.02, (name, key, error)  # of the distance moved
        moments = state[0]
        if name == "8-bit-sr":
            assert is_encoded(moments.col_var["w"]) and moments.col_var["w"].dtype == jnp.uint8  # non-negative codes
            assert not is_encoded(moments.row_var["w"]) and moments.row_var["w"].dtype == jnp.float32  # (4, 1): too small
            assert moments.variance["v"].dtype == moments.variance["b"].dtype == jnp.bfloat16
        else:
            assert {x.dtype for x in jax.tree.leaves(moments[1:])} == {jnp.dtype(jnp.bfloat16)}


def test_none_update_keeps_the_param_and_every_state_leaf():
    params = storage_params()
    tx = STORAGES["8-bit-sr"]
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
    _, state = UPDATES["8-bit-sr"](grads, jax.jit(tx.init)(params), params)
    updates, new_state = jax.jit(tx.update)({"w": None, "v": grads["v"], "b": None}, state, params)
    assert updates["w"] is None and updates["b"] is None
    new_params = jz.apply_updates(params, updates)
    assert_trees_equal((new_params["w"], new_params["b"]), (params["w"], params["b"]))
    for old, new in zip(state[0][1:], new_state[0][1:]):  # row_var, col_var, variance (8-bit and SR leaves)
        assert_trees_equal((old["w"], old["b"]), (new["w"], new["b"]))
    assert not np.array_equal(new_state[0].variance["v"], state[0].variance["v"])


def test_jitted_donated_steps_match_eager_steps():
    params = {"conv": make_params()["conv"], "b": make_params()["dense"]["b"]}  # few shapes: few eager ops to compile
    state = TX.init(params)
    step = jax.jit(lambda p, s, g: TX.update(g, s, p), donate_argnums=(1,))
    for t in range(1, 3):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        eager_updates, eager_state = TX.update(grads, state, params)
        copy = jax.tree.map(jnp.copy, state)
        updates, state = step(params, copy, grads)
        assert all(x.is_deleted() for x in jax.tree.leaves(copy))
        assert_trees_close((updates, state), (eager_updates, eager_state), rtol=1e-6, atol=1e-7)
        params = jz.apply_updates(params, updates)


def test_vmap_over_param_trees_matches_separate_runs():
    trees = [make_params(seed=0), make_params(seed=1)]
    batched = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    state, update = jax.jit(jax.vmap(TX.init))(batched), jax.jit(jax.vmap(TX.update))
    states = [INIT(p) for p in trees]
    for t in range(1, 3):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), trees)
        updates, state = update(jax.tree.map(lambda *xs: jnp.stack(xs), *grads), state, batched)
        for i in range(2):
            expected, states[i] = UPDATE(grads[i], states[i], trees[i])
            assert_trees_close(jax.tree.map(lambda x: x[i], updates), expected, rtol=1e-6, atol=1e-7)
            trees[i] = jz.apply_updates(trees[i], expected)
        batched = jz.apply_updates(batched, updates)


def test_a_step_exported_for_any_number_of_rows_is_the_jitted_step():
    # jax.export with a symbolic dimension (an embedding of any vocabulary): only row and column means, which need
    # no static size; the structure check's stand-in arrays were NumPy's, which refuse a symbolic dimension.
    rows = jax.export.symbolic_shape("rows")[0]
    shaped = {"emb": jax.ShapeDtypeStruct((rows, 4), jnp.float32), "b": jax.ShapeDtypeStruct((4,), jnp.float32)}

    def step(params, state, grads):
        updates, state = TX.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    exported = jax.export.export(jax.jit(step))(shaped, jax.eval_shape(TX.init, shaped), shaped)
    params = {"emb": jnp.arange(12.0).reshape(3, 4) / 7, "b": jnp.ones(4)}
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
    assert_trees_equal(exported.call(params, INIT(params), grads), jax.jit(step)(params, INIT(params), grads))


def test_options_injected_as_arrays_give_the_same_trajectory():
    injected, _ = run_ours(jz.inject_hyperparams(jz.torch.adafactor)(**OPTIONS), make_params(), steps=10)
    assert_trees_close(injected, float32_trajectory()[:10], rtol=1e-5, atol=1e-6)


def test_nnx_state_keeps_variable_metadata_where_a_leaf_is_shaped_like_its_param():
    # Only there: a factor or a scalar stand-in with the param's sharding names would be laid out by them (see
    # tests/test_interop.py's annotated model).
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = jz.torch.adafactor().init(nnx.state(model, nnx.Param))
    for field in state[0][1:]:
        leaves = jax.tree.leaves(field, is_leaf=lambda x: isinstance(x, nnx.Variable))
        assert len(leaves) == 2
        assert [isinstance(x, nnx.Param) for x in leaves] == [field is state[0].variance and x.shape == (2,) for x in leaves]


# --- axis_name: row and column means over shards, and every RMS ------------------------------------------

AXES = ("data", "model")
# "w" has its rows over "model" and its columns over "data"; "conv" its leading dim over "data" (both of
# its factors vary there) and its columns over "model".
SPECS = {"dense": {"w": P("model", "data"), "b": P("model")}, "scale": P(), "conv": P("data", None, "model")}


def test_shard_map_with_axis_name_matches_one_device():
    mesh = jax.make_mesh((2, 4), AXES, devices=jax.devices("cpu")[:8])
    place = lambda tree: jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), tree, SPECS)

    def step(tx):
        def apply(p, s, g):
            updates, s = tx.update(g, s, p)
            return jz.apply_updates(p, updates), s

        return apply

    in_shard_map = lambda tx, state_specs: jax.jit(jax.shard_map(
        step(tx), mesh=mesh, in_specs=(SPECS, state_specs, SPECS), out_specs=(SPECS, state_specs)))
    tx = jz.torch.adafactor(**OPTIONS, axis_name=AXES)
    params = place(make_params())
    state = jz.init_sharded(tx, params)
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    local = in_shard_map(tx, state_specs)
    for t, expected in zip(range(1, 3), float32_trajectory()):  # one device, the same options without axis_name
        grads = place(jax.tree.map(lambda p: grad_fn(p, t, jnp), params))
        params, state = local(params, state, grads)
        assert_trees_close(params, expected, rtol=2e-5, atol=1e-6)

    with pytest.raises(ValueError, match="varies over mesh axes"):  # without axis_name: a shard's answer
        in_shard_map(jz.torch.adafactor(**OPTIONS), state_specs)(params, state, grads)


# --- bad options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lr=-1e-2), r"torch\.adafactor: lr must be >= 0, got -0\.01"),
        (dict(beta2_decay=0.5), r"torch\.adafactor: beta2_decay must be <= 0, got 0\.5"),
        (dict(eps=1e-3), r"torch\.adafactor: eps must be a pair \(eps1, eps2\)"),
        (dict(eps=(-1e-3, 1e-3)), r"torch\.adafactor: eps\[0\] must be >= 0"),
        (dict(eps=(1e-20, 1e-3)), r"torch\.adafactor: eps\[0\]=1e-20 squared is denormal"),
        (dict(eps=(None, -1.0)), r"torch\.adafactor: eps\[1\] must be >= 0"),
        (dict(d=0.5), r"torch\.adafactor: d must be >= 1, got 0\.5"),
        (dict(weight_decay=-0.1), r"torch\.adafactor: weight_decay must be >= 0"),
        (dict(maximize=1), r"torch\.adafactor: maximize must be True or False"),
        (dict(factors_dtype=jnp.int8), r"torch\.adafactor: factors_dtype"),
        (dict(variance_dtype="x"), r"torch\.adafactor: variance_dtype"),
        (dict(axis_name=3), r"torch\.adafactor: axis_name must be None"),
    ],
)
def test_invalid_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        jz.torch.adafactor(**options)


def test_complex_params_are_refused_as_in_pytorch():
    # The recipe names itself, and both messages say the way out (the transform's named neither).
    params = {"z": jnp.ones((2, 3), jnp.complex64)}
    remedy = r"torch\.optim\.Adafactor refuses them; a leaf of dtype complex64\); wrap the optimizer in jz\.combine\."
    with pytest.raises(ValueError, match=r"^torch\.adafactor: complex params are not supported \(as " + remedy):
        jz.torch.adafactor().init(params)
    with pytest.raises(ValueError, match=r"^scale_by_factored_second_moment: complex params are not supported \(as "
                       + remedy):
        jz.scale_by_factored_second_moment().init(params)
    tx = jz.split_real_and_imaginary(jz.torch.adafactor())
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["z"].dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(updates["z"])))


def test_a_state_of_other_shapes_raises_naming_the_paths():
    tx = jz.scale_by_factored_second_moment()
    state = tx.init({"w": jnp.ones((3, 4))})
    with pytest.raises(ValueError, match=r"shapes differ at \['w'\] \(4, 3\) vs \(3, 4\)"):
        tx.update({"w": jnp.ones((4, 3))}, state)
