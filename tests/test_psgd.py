"""PSGD-Kron: against a float64 NumPy reference fed the same probes and update draws; float32 and storage
options, None leaves, zero gradients, jit with donation, vmap, inject_hyperparams, sharding, NNX.

The random numbers are inputs: the test draws them by the key protocol that ``scale_by_psgd_kron``'s docstring
states (each step: split the state key into next/draw/probe keys, fit when a float32 uniform draw is below
p(count), probe with one float32 normal vector of all params' size cut into the leaves in tree order) and hands
them to the reference (tests/reference.py), which shares no code with the package. Most cases share one jitted
program (the file's time is mostly XLA compiling).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import (
    SHARD_AXES,
    SHARD_SPECS,
    assert_programs_agree,
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    run_ours,
    shard_map_steps,
    sharded_params,
)

STEPS = 20
SHAPES = {"m": (4, 6), "s": (), "t": (3, 5, 2), "v": (7,)}


def tree_params(names: str, dtype=jnp.float32, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=SHAPES[name]), dtype) for name in names}


def decaying(count):
    return 0.05 / (1.0 + 0.1 * count)


def every_third_skipped(count):
    return jnp.where(count % 3 == 2, 0.0, 1.0)


def run_cases(cases: dict, steps: int) -> dict:
    """``{name: (iterates, final state)}`` for ``{name: (tx, params)}``, all advanced by one jitted step."""

    def step(carry, t):
        out = {}
        for name, (tx, _) in cases.items():
            params, state = carry[name]
            updates, state = tx.update(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), state, params)
            out[name] = (jz.apply_updates(params, updates), state)
        return out

    step = jax.jit(step)
    carry = {name: (params, tx.init(params)) for name, (tx, params) in cases.items()}
    iterates = {name: [] for name in cases}
    for t in range(1, steps + 1):
        carry = step(carry, t)
        for name in cases:
            iterates[name].append(carry[name][0])
    return {name: (iterates[name], carry[name][1]) for name in cases}


# name: (ours, its leaves, reference options, key, p(count) as NumPy sees it, dense-triangular flags per shape)
DEFAULT_DENSE = {(4, 6): [True, True], (): [], (3, 5, 2): [True, True, True], (7,): [False], (8, 16): [True, True],
                 (16,): [False]}
CASES = {
    "default_fit_skipped_every_third_step": (
        lambda: jz.psgd_kron(0.05, preconditioner_update_probability=every_third_skipped, key=1),
        "ms", dict(learning_rate=0.05), 1, lambda c: 0.0 if c % 3 == 2 else 1.0, DEFAULT_DENSE),
    "drawn_half_weight_decay_3d": (
        lambda: jz.psgd_kron(decaying, weight_decay=0.1, preconditioner_update_probability=0.5, key=2),
        "tv", dict(learning_rate=decaying, weight_decay=0.1), 2, lambda c: 0.5, DEFAULT_DENSE),
    # The same rule with Q_k^T Q_k kept in the state (formed on the first step and on each fit).
    "cached": (
        lambda: jz.psgd_kron(decaying, weight_decay=0.1, preconditioner_update_probability=0.5, key=2, cached=True),
        "tvs", dict(learning_rate=decaying, weight_decay=0.1), 2, lambda c: 0.5, DEFAULT_DENSE),
    # No momentum, the fit on the gradient, one dense factor per leaf (a dense vector too), psgd-jax's schedule.
    "options": (
        lambda: jz.psgd_kron(0.05, b1=0.0, max_size_triangular=7, min_ndim_triangular=1, memory_save_mode="one_triu",
                             momentum_into_precond_update=False, precond_lr=0.2, precond_init_scale=0.5, damping=1e-6,
                             key=3,
                             preconditioner_update_probability=jz.precond_update_prob_schedule(0.9, 0.2, 0.2, 5)),
        "mv", dict(learning_rate=0.05, b1=0.0, momentum_into_precond_update=False, precond_lr=0.2,
                   precond_init_scale=0.5, damping=1e-6),
        3, lambda c: min(max(0.9 * np.exp(-0.2 * (c - 5)), 0.2), 0.9),  # psgd-jax's formula, a fast decay
        {(4, 6): [True, False], (7,): [True]}),
}


def random_inputs(seed: int, probability, steps: int, shapes: list, dtype) -> tuple[list, list]:
    """The update draws and probes of each step, by the key protocol of scale_by_psgd_kron's docstring."""
    key, fits, probes = jax.random.key(seed), [], []
    sizes = [int(np.prod(s)) for s in shapes]
    for t in range(1, steps + 1):
        key, draw, probe = jax.random.split(key, 3)
        fits.append(float(jax.random.uniform(draw, (), jnp.float32)) < probability(t - 1))
        flat = np.asarray(jax.random.normal(probe, (sum(sizes),), jnp.float32).astype(dtype), np.float64)
        ends = np.cumsum(sizes)
        probes.append([flat[end - size:end].reshape(s) for s, size, end in zip(shapes, sizes, ends)])
    return fits, probes


def reference_run(name: str, params: dict, steps: int = STEPS) -> tuple[list, list]:
    _, _, options, seed, probability, dense = CASES[name]
    leaves, treedef = jax.tree.flatten(params)
    fits, probes = random_inputs(seed, probability, steps, [x.shape for x in leaves], jnp.result_type(leaves[0]))
    paths = []
    for i, leaf in enumerate(leaves):
        ref = reference.psgd_kron(probes=lambda t, i=i: probes[t - 1][i], fits=lambda t: fits[t - 1],
                                  triangular=dense[leaf.shape], **options)
        paths.append(reference.trajectory(ref, np.asarray(leaf, np.float64), grad_fn, steps))
    return [treedef.unflatten([path[t] for path in paths]) for t in range(steps)], fits


@functools.cache
def float64_runs():
    with jax.enable_x64(True):
        cases = {name: (make(), tree_params(names, jnp.float64)) for name, (make, names, *_) in CASES.items()}
        return jax.tree.map(np.asarray, run_cases(cases, STEPS))


def max_relative_error(actual, expected) -> float:
    pairs = zip(jax.tree.leaves(actual), jax.tree.leaves(expected))
    return max(float(np.max(np.abs(np.asarray(a) - b) / np.maximum(np.abs(b), 1e-3))) for a, b in pairs)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference_with_the_same_probes_and_draws(name, x64):
    iterates, state = float64_runs()[name]
    expected, fits = reference_run(name, tree_params(CASES[name][1], jnp.float64))
    assert 3 <= sum(fits) < STEPS  # fitted on some steps only
    assert all(q.dtype == np.float64 for q in jax.tree.leaves(state[0].qs))
    assert max_relative_error(iterates, expected) < 1e-9


def test_cached_products_are_those_of_the_factors_and_need_a_cached_state(x64):
    _, (state, *_) = float64_runs()["cached"]
    pairs = [(np.asarray(q), np.asarray(p)) for qs, ps in zip(state.qs, state.ps) for q, p in zip(qs, ps)]
    assert {q.ndim for q, _ in pairs} == {0, 1, 2}  # a scalar, diagonal and dense factors
    for q, p in pairs:
        np.testing.assert_allclose(p, q * q if q.ndim < 2 else q.T @ q, rtol=1e-12, atol=1e-300)
    assert float64_runs()["drawn_half_weight_decay_3d"][1][0].ps is None
    plain, cached = jz.scale_by_psgd_kron(), jz.scale_by_psgd_kron(cached=True)
    params = tree_params("tv")
    with pytest.raises(ValueError, match="cached=True needs a state built by this transformation's init"):
        cached.update(params, plain.init(params))


def test_the_fit_changes_the_path(x64):
    # Guards the comparison above against a fit that changes nothing: never fitting gives another path.
    name = "drawn_half_weight_decay_3d"
    expected, _ = reference_run(name, tree_params("tv", jnp.float64))
    _, _, options, _, _, dense = CASES[name]
    never = {}
    for key, leaf in tree_params("tv", jnp.float64).items():
        ref = reference.psgd_kron(probes=None, fits=lambda t: False, triangular=dense[leaf.shape], **options)
        never[key] = reference.trajectory(ref, np.asarray(leaf), grad_fn, STEPS)[-1]
    assert max_relative_error(never, expected[-1]) > 1e-3


def test_schedule_is_psgd_jaxs_formula():
    schedule = jz.precond_update_prob_schedule()
    for count in (0, 499, 500, 501, 1500, 3000, 4000, 10_000):
        expected = min(max(np.exp(-0.001 * (count - 500)), 0.03), 1.0)
        np.testing.assert_allclose(float(schedule(count)), expected, rtol=1e-6)


def test_factor_layout_and_dtypes():
    params = {"w": jnp.ones((3, 9000), jnp.bfloat16), "b": jnp.ones(4), "s": jnp.ones(()), "z": jnp.ones((1, 5))}
    state = jax.jit(jz.scale_by_psgd_kron(precond_init_scale=8.0).init)(params)
    assert isinstance(state.qs, tuple)  # flat, one entry per leaf in tree order: b, s, w, z
    b, s, w, z = jax.tree.map(lambda q: (q.shape, q.dtype), state.qs)
    assert w == (((3, 3), jnp.float32), ((9000,), jnp.float32))  # 9000 > max_size_triangular
    assert b == (((4,), jnp.float32),) and s == (((), jnp.float32),)
    assert z == (((1,), jnp.float32), ((5, 5), jnp.float32))  # a unit dim is diagonal
    np.testing.assert_allclose(np.asarray(state.qs[2][0]), np.sqrt(8.0) * np.eye(3))  # s^(1/ndim) per factor
    assert float(state.qs[1][0]) == 8.0 and state.mu["w"].dtype == jnp.bfloat16
    modes = {None: [2, 2, 2], "one_diag": [2, 1, 2], "smart_one_diag": [2, 1, 2], "all_diag": [1, 1, 1],
             "one_triu": [1, 1, 2]}
    for mode, ndims in modes.items():
        qs = jax.eval_shape(jz.scale_by_psgd_kron(memory_save_mode=mode).init, {"t": jnp.ones((3, 5, 2))}).qs[0]
        assert [q.ndim for q in qs] == ndims, mode
    qs = jax.eval_shape(jz.scale_by_psgd_kron(memory_save_mode="smart_one_diag").init, {"w": jnp.ones((4, 4))}).qs
    assert [q.ndim for q in qs[0]] == [2, 2]  # no strictly largest dim: all dense


# --- float32: the reference, storage, zero gradients, inject_hyperparams (one program) ----------------

Q8 = jz.Blockwise8Bit()


def big_params() -> dict:
    return {"w": jnp.asarray(np.random.default_rng(0).normal(size=(32, 128)), jnp.float32)}  # 8-bit blocks


def zero_params() -> dict:
    return tree_params("m") | {"e": jnp.zeros((0, 3))}  # a param with a zero dimension passes through


@functools.cache
def float32_runs():
    def stored(mu_dtype):
        return jz.psgd_kron(0.02, preconditioner_update_probability=0.5, key=7, mu_dtype=mu_dtype), big_params()

    return run_cases({
        "full": stored(None), "sbf16": stored(jz.StochasticBF16()), "8bit": stored(Q8),
        "zero": (jz.chain(jz.scale(0.0), jz.psgd_kron(0.1, preconditioner_update_probability=1.0)), zero_params()),
    }, steps=10)


@pytest.mark.parametrize("kind", ["sbf16", "8bit"])
def test_stored_momentum_stays_close_to_full_precision(kind):
    (iterates, state), (expected, _) = float32_runs()[kind], float32_runs()["full"]
    ours, full, start = np.asarray(iterates[-1]["w"]), np.asarray(expected[-1]["w"]), np.asarray(big_params()["w"])
    moved = np.max(np.abs(full - start))
    assert np.all(np.isfinite(ours)) and 0 < np.max(np.abs(ours - full)) < 0.05 * moved
    mu = state[0].mu["w"]
    assert is_encoded(mu) if kind == "8bit" else mu.dtype == jnp.bfloat16
    assert all(q.dtype == jnp.float32 for q in jax.tree.leaves(state[0].qs))  # the factors stay float32


def test_zero_gradients_give_no_nan_and_no_step():
    iterates, state = float32_runs()["zero"]
    assert_trees_equal(iterates[-1], zero_params())
    assert all(bool(jnp.all(jnp.isfinite(q))) for q in jax.tree.leaves(state[1][0].qs))
    assert float(jnp.max(state[1][0].qs[1][0])) > 1.0  # "m" (after "e"): the fit did run (Q grows towards 1/damping)



def test_a_fit_on_a_nan_gradient_is_skipped_and_the_factors_stay_as_they_were():
    # One NaN entry made every factor NaN for good, even without momentum (heavyball's tests, session 44's sweep);
    # Shampoo and SOAP skip such statistics. Triangular (6) and diagonal (40 > max_size_triangular) factors.
    tx = jz.scale_by_psgd_kron(b1=0.0, preconditioner_update_probability=1.0, max_size_triangular=8, key=0)
    grads = [jax.random.normal(jax.random.key(i), (6, 40)) for i in range(7)]
    state = tx.init(grads[0])
    update = jax.jit(tx.update)
    for g in grads[:3]:
        _, state = update(g, state)
    _, after_nan = update(grads[3].at[0, 0].set(jnp.nan), state)
    assert_trees_equal(after_nan.qs, state.qs)
    for g in grads[4:]:
        updates, after_nan = update(g, after_nan)
        assert np.all(np.isfinite(updates))

# --- one step shared by None leaves, donation and vmap --------------------------------------------------

TX = jz.psgd_kron(decaying, preconditioner_update_probability=0.5, key=1)


def shared_params(seed: int) -> dict:
    """A (8, 16) matrix and a (16,) vector: shapes the 2 x 4 mesh of the sharding test splits."""
    rng = np.random.default_rng(seed)
    return {"b": jnp.asarray(rng.normal(size=16), jnp.float32), "w": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)}

TX_REFERENCE = dict(learning_rate=decaying), 1, lambda c: 0.5  # its reference options, key and p(count)
SHARED_STEPS = 5


def _step(params, state, t):
    grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
    updates, state = TX.update(grads, state, params)
    return jz.apply_updates(params, updates), state


@functools.cache
def single_steps():
    """The jitted step, donating params and state, and its trajectory (NumPy copies) on three param sets, one after
    the other (the float32 reference test checks it; vmap and None leaves are compared with it); and whether the
    donated inputs were consumed."""
    step = jax.jit(_step, donate_argnums=(0, 1))
    runs, first = [], None
    for seed in range(2):
        params = shared_params(seed)
        carry, path = (params, TX.init(params)), []
        first = first or carry
        for t in range(1, SHARED_STEPS + 1):
            carry = step(*carry, t)
            path.append(jax.device_get(carry))
        runs.append(path)
    return runs, first[0]["w"].is_deleted()


def test_float32_follows_the_float64_reference():
    runs, consumed = single_steps()
    options, seed, probability = TX_REFERENCE
    params = shared_params(0)
    with jax.enable_x64(True):
        fits, probes = random_inputs(seed, probability, SHARED_STEPS, [(16,), (8, 16)], jnp.float32)
    expected = {}
    for i, (name, leaf) in enumerate(params.items()):
        ref = reference.psgd_kron(probes=lambda t, i=i: probes[t - 1][i], fits=lambda t: fits[t - 1],
                                  triangular=DEFAULT_DENSE[leaf.shape], **options)
        expected[name] = reference.trajectory(ref, np.asarray(leaf, np.float64), grad_fn, SHARED_STEPS)[-1]
    final, state = runs[0][-1]
    assert consumed  # the donated step took its inputs' buffers
    assert final["w"].dtype == jnp.float32 and state[0].qs[1][0].dtype == jnp.float32
    assert 0 < sum(fits) < SHARED_STEPS
    assert_trees_close(final, expected, rtol=1e-4, atol=1e-5)


def test_inject_hyperparams_gives_the_plain_trajectory():
    runs, _ = single_steps()
    static = ("max_size_triangular", "min_ndim_triangular")
    tx = jz.inject_hyperparams(jz.psgd_kron, static_args=static)(decaying, preconditioner_update_probability=0.5,
                                                                   key=1)
    params = shared_params(0)
    step = jax.jit(lambda params, state, t: (lambda u, s: (jz.apply_updates(params, u), s))(
        *tx.update(jax.tree.map(lambda p: grad_fn(p, t, jnp), params), state, params)))
    carry = (params, tx.init(params))
    for t in range(1, SHARED_STEPS + 1):
        carry = step(*carry, t)
    assert_trees_close(carry[0], runs[0][-1][0], rtol=1e-5, atol=1e-6)
    assert float(carry[1].hyperparams["learning_rate"]) == pytest.approx(decaying(SHARED_STEPS - 1))
    assert float(carry[1].hyperparams["precond_lr"]) == pytest.approx(0.1)
    # The integers that decide the factors' shapes stay static (jz.static_only): traced, they raised.
    tx = jz.inject_hyperparams(jz.psgd_kron)(learning_rate=0.1)
    jax.eval_shape(tx.update, tree_params("v"), tx.init(tree_params("v")), tree_params("v"))
    assert not {"max_size_triangular", "min_ndim_triangular"} & set(tx.init(tree_params("v")).hyperparams)


def test_vmap_over_parameter_sets_equals_separate_runs():
    runs, _ = single_steps()
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[shared_params(s) for s in range(2)])
    carry = (stacked, jax.vmap(TX.init)(stacked))
    batched = jax.jit(jax.vmap(_step, in_axes=(0, 0, None)))
    for t in range(1, SHARED_STEPS + 1):
        carry = batched(*carry, t)
        for i in range(2):
            assert_trees_close(jax.tree.map(lambda x: x[i], carry[0]), runs[i][t - 1][0], rtol=1e-5, atol=1e-6)


def test_none_update_keeps_its_state_and_leaves_the_others_unchanged():
    runs, _ = single_steps()
    params = shared_params(0)

    @jax.jit
    def step(params, state, t):
        updates, state = TX.update({"b": None, "w": grad_fn(params["w"], t, jnp)}, state, params)
        return jz.apply_updates(params, updates), state, updates

    carry, state0 = (params, TX.init(params)), TX.init(params)
    for t in range(1, SHARED_STEPS + 1):
        *carry, updates = step(*carry, t)
    assert updates["b"] is None
    assert_trees_equal(carry[1][0].qs[0], state0[0].qs[0])  # "b", the first leaf
    assert_trees_equal(carry[1][0].mu["b"], state0[0].mu["b"])
    assert_trees_equal(carry[0]["b"], params["b"])
    # Per-leaf probes keep their place with a None leaf: "w" sees the same probes and draws.
    assert_trees_close(carry[0]["w"], runs[0][-1][0]["w"], rtol=1e-6, atol=1e-7)


def test_bad_trees_and_complex_params_raise():
    tx = jz.scale_by_psgd_kron(key=0)
    params = {"e": jnp.zeros((0, 3)), "w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="scale_by_psgd_kron: complex params are not supported"):
        tx.init({"c": jnp.ones(3, jnp.complex64)})
    with pytest.raises(ValueError, match=r"scale_by_psgd_kron: an update of shape \(3, 2\)"):
        jax.eval_shape(tx.update, {"e": params["e"], "w": jnp.ones((3, 2))}, tx.init(params))
    with pytest.raises(ValueError, match="scale_by_psgd_kron: the updates tree does not match"):
        jax.eval_shape(tx.update, {"w": jnp.ones((2, 2))}, tx.init(params))


# --- sharding ------------------------------------------------------------------------------------------


def test_init_sharded_and_jit_on_sharded_params_equals_one_device():
    # jax.make_mesh's default Explicit axes (under Auto axes the partitioner lays the factors out as it likes).
    runs, _ = single_steps()
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2, devices=jax.devices("cpu")[:8])
    placed = {k: jax.device_put(v, NamedSharding(mesh, SHARD_SPECS[k])) for k, v in shared_params(0).items()}
    state = jz.init_sharded(TX, placed)
    assert state[0].mu["w"].sharding.is_equivalent_to(placed["w"].sharding, 2)
    assert all(q.sharding.is_fully_replicated for q in jax.tree.leaves(state[0].qs))  # factors replicated
    carry = (placed, state)
    with jax.set_mesh(mesh):
        step = jax.jit(_step)
        for t in range(1, SHARED_STEPS + 1):
            carry = step(*carry, t)
    assert carry[0]["w"].sharding.is_equivalent_to(placed["w"].sharding, 2)
    assert all(q.sharding.is_fully_replicated for q in jax.tree.leaves(carry[1][0].qs))
    assert_trees_close(jax.device_get(carry[0]), runs[0][-1][0], rtol=2e-5, atol=1e-6)


def test_a_leaf_split_along_a_diagonal_factors_dimension_fits_under_explicit_axes():
    # Dimension 16 (above max_size_triangular) has a diagonal factor and keeps its split through the fit: the dense
    # factor's second moment then contracted over the split dimension, which raised ShardingTypeError under jit.
    rng = np.random.default_rng(0)
    params = {"e": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), "f": jnp.asarray(rng.normal(size=(8, 16)))}
    specs = {"e": P("model", None), "f": P(None, ("data", "model"))}
    tx = jz.scale_by_psgd_kron(preconditioner_update_probability=1.0, key=1, max_size_triangular=8)
    grads = jax.tree.map(lambda p: jnp.sin(3 * p), params)
    step = jax.jit(tx.update)
    expected = step(grads, step(grads, tx.init(params))[1])[0]
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2, devices=jax.devices("cpu")[:8])
    place = lambda tree: {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}  # noqa: E731
    with jax.set_mesh(mesh):
        state = jz.init_sharded(tx, place(params))
        updates = step(place(grads), step(place(grads), state)[1])[0]
    assert updates["e"].sharding.spec == specs["e"] and updates["f"].sharding.spec == specs["f"]
    assert_programs_agree(jax.device_get(updates), expected)


def test_cached_products_are_replicated_by_init_sharded_and_kept_so_under_explicit_axes():
    tx = jz.scale_by_psgd_kron(preconditioner_update_probability=1.0, key=4, cached=True)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2, devices=jax.devices("cpu")[:8])
    placed = {k: jax.device_put(v, NamedSharding(mesh, SHARD_SPECS[k])) for k, v in shared_params(0).items()}
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), shared_params(0))
    with jax.set_mesh(mesh):
        updates, state = jax.jit(tx.update)(jax.device_put(grads, jax.tree.map(lambda x: x.sharding, placed)),
                                            jz.init_sharded(tx, placed))
    assert all(p.sharding.is_fully_replicated for p in jax.tree.leaves(state.ps))
    expected, _ = jax.jit(tx.update)(grads, tx.init(shared_params(0)))
    assert_trees_close(jax.device_get(updates), expected, rtol=2e-5, atol=1e-6)


def test_shard_map_with_axis_name_equals_one_device_and_without_it_raises():
    # Every device gathers w (8 x 16, split over both axes) and b, fits the same replicated factors (the key is
    # replicated) and keeps its block of the update; the fit happens at p = 1, with the factors cached.
    make = lambda **k: jz.psgd_kron(0.1, preconditioner_update_probability=1.0, key=3, cached=True, **k)  # noqa: E731
    expected = run_ours(make(), sharded_params(), steps=2)[0][-1]
    assert_trees_close(shard_map_steps(make(axis_name=SHARD_AXES, partition_specs=SHARD_SPECS)), expected,
                       rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"scale_by_psgd_kron: inside shard_map, an array of local shape \(4,\) "
                                         r"varies over mesh axes \['model'\]: it is a block of a whole array"):
        shard_map_steps(TX)


# --- NNX ------------------------------------------------------------------------------------------------

# The kernel's larger dim diagonal, its other dense; the factors' products kept (cached) as further flat tuples.
NNX_TX = jz.psgd_kron(1e-2, preconditioner_update_probability=0.5, memory_save_mode="one_diag", key=0, cached=True)
NNX_STEPS = 6


def nnx_data() -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(0), (16, 5))
    return x, jnp.sin(x[:, :3])


def nnx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@functools.cache
def raw_pytree_run() -> list:
    """NNX_TX on the raw param dicts of nnx.Linear(5, 3, rngs=nnx.Rngs(0)), a jitted step in a Python loop: the
    params after each step."""
    nnx = pytest.importorskip("flax.nnx")
    x, y = nnx_data()
    raw = nnx.to_pure_dict(nnx.state(nnx.Linear(5, 3, rngs=nnx.Rngs(0)), nnx.Param))  # plain dicts of arrays

    @jax.jit
    def raw_step(raw, state):  # nnx.Linear is x @ kernel + bias
        grads = jax.grad(lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2))(raw)
        updates, state = NNX_TX.update(grads, state, raw)
        return jz.apply_updates(raw, updates), state

    state, path = NNX_TX.init(raw), []
    for _ in range(NNX_STEPS):
        raw, state = raw_step(raw, state)
        path.append(raw)
    return path


def test_nnx_optimizer_trains_under_nnx_jit_with_one_trace_and_equals_the_raw_pytree_run():
    nnx = pytest.importorskip("flax.nnx")
    x, y = nnx_data()
    model = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, NNX_TX, wrt=nnx.Param)
    traces = []

    @nnx.jit
    def step(model, optimizer):
        traces.append(None)
        loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
        optimizer.update(model, grads)
        return loss

    before = jax.tree.structure(nnx.state(optimizer))
    losses = [float(step(model, optimizer))]
    assert jax.tree.structure(nnx.state(optimizer)) == before  # the factors' containers keep their type
    losses += [float(step(model, optimizer)) for _ in range(NNX_STEPS - 1)]
    assert len(traces) == 1 and losses[-1] < losses[0]
    assert_trees_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), raw_pytree_run()[-1], rtol=1e-5, atol=1e-6)


def test_nnx_steps_in_lax_scan_equal_the_raw_pytree_run():
    # As examples/compare_optimizers.py trains: a scan over nnx.split((model, optimizer)), whose carry must keep
    # its pytree structure. Other XLA programs than the raw run's, so float32 rounding differs a little.
    nnx = pytest.importorskip("flax.nnx")
    x, y = nnx_data()
    model = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    graph, state = nnx.split((model, nnx.Optimizer(model, NNX_TX, wrt=nnx.Param)))

    def step(state, _):
        model, optimizer = nnx.merge(graph, state)
        optimizer.update(model, nnx.grad(nnx_loss)(model, x, y))
        return nnx.state((model, optimizer)), None

    state, _ = jax.jit(lambda state: jax.lax.scan(step, state, length=3))(state)
    model, _ = nnx.merge(graph, state)
    assert_trees_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), raw_pytree_run()[2], rtol=1e-5, atol=1e-6)


def test_a_zero_first_gradient_keeps_the_unit_initial_scale_and_updates_keep_the_params_dtype():
    # Li's scale (mean g^4 + damping^4)^(-1/8) was damping^(-1/2) ~ 3e4 for a zero-initialised layer's zero first
    # gradient (its steps then capped for ~150 fits); and bfloat16 params got float32 updates.
    tx = jz.scale_by_psgd_kron(preconditioner_update_probability=0.0)  # no fit: Q after step 1 is the initial scale
    params = {"zero": jnp.ones((4, 4), jnp.bfloat16), "live": jnp.ones((4, 4), jnp.bfloat16)}
    grads = {"zero": jnp.zeros((4, 4), jnp.bfloat16), "live": jnp.full((4, 4), 0.5, jnp.bfloat16)}
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    live, zero = state.qs  # leaf order: live, zero
    np.testing.assert_allclose(np.asarray(zero[0]), np.eye(4), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(live[0]), np.sqrt(0.5**4) ** (-1 / 8) * np.eye(4), rtol=1e-5)  # s^(1/2)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


def test_a_first_gradient_whose_fourth_powers_overflow_float32_gets_li_s_scale_not_zero():
    """mean(g^4) of 3e9 entries overflows float32: the scale (inf + damping^4)^(-1/8) was 0, every factor 0, and every
    later step NaN (heavyball#55's large first gradients). Formed from g / max|g| there, it is (3e9)^(-1/2)."""
    tx = jz.scale_by_psgd_kron(preconditioner_update_probability=0.0)  # no fit: Q after step 1 is the initial scale
    params, grads = {"w": jnp.ones((4, 3))}, {"w": jnp.full((4, 3), 3e9)}
    step = jax.jit(tx.update)
    updates, state = step(grads, tx.init(params), params)
    q_rows, q_cols = state.qs[0]
    np.testing.assert_allclose(q_rows, 3e9 ** (-1 / 4) * np.eye(4), rtol=1e-5)
    np.testing.assert_allclose(q_cols, 3e9 ** (-1 / 4) * np.eye(3), rtol=1e-5)
    for _ in range(3):
        updates, state = step({"w": jnp.full((4, 3), 0.5)}, state, params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((updates, state.qs)))


def test_a_tiny_nonzero_first_gradient_gets_li_s_scale_not_the_zero_gradient_s():
    """mean(g^4) of 1e-10 entries underflows float32 to 0: the scale was 1, as for a zero gradient, where Li's
    (E|g|^4 + damping^4)^(-1/8) is ~damping^(-1/2) (as at 1e-9)."""
    tx = jz.scale_by_psgd_kron(preconditioner_update_probability=0.0)
    params = {"w": jnp.ones((4, 3))}
    for value in (1e-9, 1e-10, 1e-30):  # (1e-30: (damping / max|g|)^4 must not overflow either)
        _, state = tx.update({"w": jnp.full((4, 3), value)}, tx.init(params), params)
        li = (value**4 + 1e-9**4) ** (-1 / 8)  # float64
        np.testing.assert_allclose(state.qs[0][0], np.sqrt(li) * np.eye(4), rtol=1e-5)
