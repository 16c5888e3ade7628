"""SOAP: against a float64 NumPy reference of the official algorithm (blocks, merged dims, 1-D, scalars, refreshes
every 3 steps), the first step, float32, storage options, None leaves, jit with donation, vmap, inject_hyperparams,
NNX, sharding (init_sharded, jit over a mesh, shard_map), non-finite gradients, and the refresh inside a cond."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import MLP, assert_programs_agree, assert_trees_close, assert_trees_equal, grad_fn, make_params

STEPS = 22


def shaped_params(shapes: dict, seed: int = 0, dtype=jnp.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=shape), dtype) for name, shape in shapes.items()}


def gradient(p, t, zero_first: bool):
    # conftest's field; with zero_first, zero at the first step (see FIELDS).
    return grad_fn(p, t) * (0.0 if zero_first and t == 1 else 1.0)


def run_together(cases: dict, steps: int = STEPS) -> dict:
    """``{name: (iterates, final state)}`` of ``cases`` (``name: (tx, params, mode)``), all advanced by one jitted
    step (one compile for the lot: the file's time is mostly XLA compiling). Modes: "plain" (conftest's gradient
    field), "zero_first" (its first gradient 0), "nan_at_5" (step 5's gradient NaN in every leaf), "skip_5" (no
    update at step 5)."""

    def step(carry, t):
        out = {}
        for name, (tx, _, mode) in cases.items():
            params, state = carry[name]
            grads = jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params)
            if mode == "zero_first":
                grads = jax.tree.map(lambda g: jnp.where(t == 1, jnp.zeros_like(g), g), grads)
            if mode == "nan_at_5":
                grads = jax.tree.map(lambda g: jnp.where(t == 5, jnp.nan, g).astype(g.dtype), grads)

            def advance(params, state, grads):
                updates, state = tx.update(grads, state, params)
                return jz.apply_updates(params, updates), state

            if mode == "skip_5":
                out[name] = jax.lax.cond(t == 5, lambda *a: a[:2], advance, params, state, grads)
            else:
                out[name] = advance(params, state, grads)
        return out

    step = jax.jit(step)
    carry = jax.jit(lambda ps: {name: (ps[name], tx.init(ps[name])) for name, (tx, _, _) in cases.items()})(
        {name: params for name, (_, params, _) in cases.items()})
    iterates = {name: [] for name in cases}
    for t in range(1, steps + 1):
        carry = step(carry, t)
        for name in cases:
            iterates[name].append(carry[name][0])
    return {name: (iterates[name], carry[name][1]) for name in cases}


def reference_run(make_reference, params, steps: int = STEPS, zero_first: bool = False):
    leaves, treedef = jax.tree.flatten(params)
    paths = [reference.trajectory(make_reference(), np.asarray(leaf, np.float64),
                                  lambda p, t: gradient(p, t, zero_first), steps) for leaf in leaves]
    return [jax.tree.unflatten(treedef, [path[i] for path in paths]) for i in range(steps)]


def decaying(step):
    return 0.02 / (1.0 + 0.05 * step)


# Two gradient fields. A single gradient of a block with more rows than other entries (a (4, 1) block, a 1-D
# leaf) has statistics G G^T with a null space of 2 or more dimensions, whose eigenbasis is arbitrary: rounding
# decides it, so no two implementations agree there (and Adam's per-coordinate second moment is not invariant to
# it). "generic": the leaves are shaped so that every block's first statistics have a null space of at most one
# dimension (its vector is unique up to sign, to which SOAP is invariant). "zero_first": the first gradient is 0,
# so the first eigh sees the zero matrix (both sides get the identity basis, up to order) and Adam starts in the
# standard basis; by the first refresh (3 more gradients) every block's null space has at most one dimension.
FIELDS = {
    # (8, 7) at 4: blocks (4, 4) and (4, 3); (2, 3, 5) at 4: (2, 3, 4) and (2, 3, 1); at 6 it merges to (6, 5).
    "generic": (dict(w=(8, 7), t=(2, 3, 5), v=(2,), s=()), False),
    # (7, 5) at 4: blocks (4, 4), (4, 1), (3, 4), (3, 1); (2, 2, 5) merges to (4, 5) at 4; 1-D (7,): 4 + 3.
    "zero_first": (dict(w=(7, 5), t=(2, 2, 5), v=(7,), s=()), True),
}
R = reference
CASES = {  # name: (field, ours, the reference with the same options)
    "blocked": ("generic", lambda: jz.soap(decaying, 0.9, 0.95, weight_decay=0.1, precondition_frequency=3,
                                           max_precond_dim=4, precondition_1d=True),
                lambda: R.soap(decaying, 0.9, 0.95, weight_decay=0.1, precondition_frequency=3, max_precond_dim=4,
                               precondition_1d=True)),
    "merged_unblocked_options": (
        "generic",
        lambda: jz.soap(0.01, 0.8, 0.9, 1e-6, 0.0, 3, 6, merge_dims=True, precondition_1d=True, normalize_grads=True,
                        correct_bias=False, shampoo_b2=0.7, blocking=False),
        lambda: R.soap(0.01, 0.8, 0.9, 0.7, 1e-6, precondition_frequency=3, max_precond_dim=6, merge_dims=True,
                       precondition_1d=True, normalize_grads=True, correct_bias=False, blocking=False)),
    "zero_first_blocked_merged": ("zero_first", lambda: jz.soap(0.01, weight_decay=0.1, precondition_frequency=3,
                                                               max_precond_dim=4, merge_dims=True,
                                                               precondition_1d=True),
                                  lambda: R.soap(0.01, weight_decay=0.1, precondition_frequency=3, max_precond_dim=4,
                                                 merge_dims=True, precondition_1d=True)),
    "zero_first_blocked_no_1d": ("zero_first", lambda: jz.chain(jz.scale_by_soap(0.9, 0.99, 0.9, 1e-7, 3, 4),
                                                                jz.scale_by_learning_rate(0.01)),
                                 lambda: R.soap(0.01, 0.9, 0.99, 0.9, 1e-7, precondition_frequency=3,
                                                max_precond_dim=4)),
}


@functools.cache
def float64_runs() -> dict:
    with jax.enable_x64(True):
        cases = {}
        for name, (field, make, _) in CASES.items():
            shapes, zero_first = FIELDS[field]
            cases[name] = (make(), shaped_params(shapes, dtype=jnp.float64), "zero_first" if zero_first else "plain")
        return jax.tree.map(np.asarray, run_together(cases))


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference_of_the_official_algorithm(name, x64):
    field, _, make_reference = CASES[name]
    shapes, zero_first = FIELDS[field]
    iterates, _ = float64_runs()[name]
    expected = reference_run(make_reference, shaped_params(shapes, dtype=jnp.float64), zero_first=zero_first)
    assert iterates[0]["w"].dtype == np.float64
    assert_trees_close(iterates, expected, rtol=1e-9, atol=1e-12)
    moved = np.abs(iterates[-1]["w"] - np.asarray(shaped_params(shapes)["w"], np.float64)).max()
    assert moved > 0.01  # the params moved


def test_the_reference_can_tell_the_deviations_apart(x64):
    # The comparison above can fail: the official code's weight decay (after the step, none on the first) and
    # its unrotated large dimensions (blocking=False) give other trajectories than ours.
    shapes, _ = FIELDS["generic"]
    iterates, _ = float64_runs()["blocked"]
    options = dict(weight_decay=0.1, precondition_frequency=3, max_precond_dim=4, precondition_1d=True)
    for changed in (dict(decay="official"), dict(blocking=False)):
        other = reference_run(lambda: R.soap(decaying, 0.9, 0.95, **options, **changed),
                              shaped_params(shapes, dtype=jnp.float64))
        assert np.abs(np.asarray(iterates[-1]["w"]) - other[-1]["w"]).max() > 1e-4


# --- float32, storage options, the first step, non-finite gradients, injected hyperparameters -----------------

SMALL = dict(w=(4, 7), t=(2, 3, 5), v=(5,), s=(), e=(0, 3))  # e: a zero dimension; no block degenerate at 4 (FIELDS)
TINY = dict(w=(4, 7), v=(5,), e=(0, 3))
Q8 = jz.Blockwise8Bit()


def big_params():
    # A leaf large enough for 8-bit blocks (16384 entries, blocked at 64) and a small one kept in float32.
    return shaped_params(dict(w=(64, 256), b=(8,)))


def soap_at(**options):
    return jz.soap(0.01, precondition_frequency=3, max_precond_dim=options.pop("max_precond_dim", 4), **options)


NUMERIC = dict(learning_rate=0.02, b1=0.9, b2=0.8, eps=1e-6, weight_decay=0.05, shampoo_b2=0.7)


@functools.cache
def float32_runs() -> dict:
    tiny, big = shaped_params(TINY), big_params()
    big_options = dict(max_precond_dim=64, precondition_frequency=2, weight_decay=0.0)
    cases = {
        "nan_guarded": (jz.apply_if_finite(soap_at(), 3), tiny, "nan_at_5"),
        "nan_skipped": (soap_at(), tiny, "skip_5"),
        "nan_bare": (soap_at(), tiny, "nan_at_5"),
        "full": (jz.soap(0.01, **big_options), big, "plain"),
        "8bit": (jz.soap(0.01, **big_options, mu_dtype=Q8, nu_dtype=Q8), big, "plain"),
        "bf16": (jz.soap(0.01, **big_options, mu_dtype=jz.StochasticBF16(), nu_dtype=jnp.bfloat16), big, "plain"),
        "scheduled": (jz.soap(decaying, precondition_frequency=3, max_precond_dim=4), tiny, "plain"),
        "injected": (jz.inject_hyperparams(jz.soap, static_args=("precondition_frequency", "max_precond_dim"))(
            learning_rate=decaying, precondition_frequency=3, max_precond_dim=4), tiny, "plain"),
        # Every numeric hyperparameter injected (traced in the state), against the same values given plainly.
        "all_injected": (jz.inject_hyperparams(jz.soap, static_args=("precondition_frequency", "max_precond_dim"))(
            **NUMERIC, precondition_frequency=3, max_precond_dim=4), tiny, "plain"),
        "all_plain": (jz.soap(**NUMERIC, precondition_frequency=3, max_precond_dim=4), tiny, "plain"),
    }
    return run_together(cases, steps=8)


def test_float32_follows_the_float64_reference():
    iterates, _ = float32_runs()["scheduled"]
    expected = reference_run(lambda: R.soap(decaying, weight_decay=0.01, precondition_frequency=3, max_precond_dim=4),
                             shaped_params(TINY), steps=8)
    assert iterates[-1]["w"].dtype == jnp.float32
    assert_trees_close(iterates, expected, rtol=1e-4, atol=1e-5)


def test_first_step_builds_the_bases_and_leaves_the_params_alone():
    # The official code's first step: factors and bases only, no update (and Adam's count starts at the second).
    # Through the alias, only the weight decay moves the params at the first step (the official code skips the decay
    # too there: a documented difference of the chain).
    iterates, _ = float32_runs()["scheduled"]
    tiny = shaped_params(TINY)
    assert_trees_close(iterates[0], jax.tree.map(lambda p: p - decaying(0) * 0.01 * p, tiny), rtol=1e-7)
    assert not np.allclose(iterates[1]["w"], tiny["w"], rtol=1e-3)
    params = shaped_params(SMALL)
    tx = jz.scale_by_soap(0.9, 0.8, max_precond_dim=7, merge_dims=True)
    g = jax.tree.map(lambda p: grad_fn(p, 1), params)
    updates, state = jax.jit(tx.update)(g, tx.init(params))
    assert_trees_equal(updates, jax.tree.map(jnp.zeros_like, params))
    assert int(state.count) == 1 and not np.any(state.mu["w"]) and not np.any(state.nu["w"])
    # One entry per leaf, in the leaves' order (a dict's: sorted keys), outside the params' tree.
    stats, bases = (dict(zip(sorted(SMALL), x)) for x in (state.stats, state.bases))
    assert isinstance(state.stats, tuple) and len(state.stats) == len(SMALL)
    (left, right), = stats["w"]
    np.testing.assert_allclose(left[0], 0.2 * g["w"] @ g["w"].T, rtol=1e-5)
    np.testing.assert_allclose(right[0], 0.2 * g["w"].T @ g["w"], rtol=1e-5)
    (q_left, _), = bases["w"]
    eigenvalues = np.diag(q_left[0].T @ left[0] @ q_left[0])
    assert np.all(np.diff(eigenvalues) <= 1e-6)  # decreasing
    np.testing.assert_allclose(q_left[0].T @ q_left[0], np.eye(4), atol=1e-6)
    assert [x.shape for x in stats["t"][0]] == [(1, 6, 6), (1, 5, 5)]  # merged to (6, 5)
    assert stats["v"] == ((),) and stats["s"] == ((),) and stats["e"] == ()  # no factors
    assert updates["e"].shape == (0, 3)


def test_a_nan_gradient_skips_the_factors_and_apply_if_finite_skips_the_step():
    runs = float32_runs()
    bare, guarded, skipped = runs["nan_bare"], runs["nan_guarded"], runs["nan_skipped"]
    # Bare: Adam's moments are NaN from then on (Adam's behaviour), the factors and bases stay finite.
    state = bare[1][0]
    for leaf in jax.tree.leaves((state.stats, state.bases)):
        assert np.all(np.isfinite(leaf))
    assert np.isnan(bare[0][-1]["w"]).all()
    # apply_if_finite: the NaN step is skipped, exactly as if it never happened.
    assert_programs_agree(guarded[0], skipped[0])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(guarded[0][-1]))
    assert int(guarded[1].total_notfinite) == 1



def test_a_squared_gradient_beyond_float32_gives_adams_zero_step_not_nan_at_a_refresh():
    # |g| ~ 1e20: g**2 is inf in the second moment, whose entry's update is then 0 (Adam's g / inf). At the next basis
    # refresh its permutation, a product with a one-hot matrix, made inf * 0 = NaN of its whole fibre (the heavyball
    # sweep of session 44). The permutation moves an infinite entry as a gather would.
    from jaxopt_zoo.transforms.soap import _reorder

    x = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    x[1, 2], x[2, 0] = np.inf, np.inf
    for axis, order in ((0, np.array([2, 0, 1])), (1, np.array([3, 2, 0, 1]))):
        np.testing.assert_array_equal(_reorder(jnp.asarray(order), jnp.asarray(x), axis), np.take(x, order, axis))
    tx = jz.scale_by_soap(precondition_frequency=2)
    grads = [jax.random.normal(jax.random.key(i), (8, 4)) * 1e20 for i in range(5)]
    state = tx.init(grads[0])
    for g in grads:
        updates, state = tx.update(g, state)
        assert np.all(np.isfinite(updates)) and np.all(np.abs(updates) <= 1.0 + 1e-6)
    assert np.isinf(state.nu).any()

def test_eight_bit_and_bfloat16_moments_stay_close_to_full_precision():
    runs = float32_runs()
    params = big_params()
    full = runs["full"][0][-1]
    moved = lambda p: jax.tree.map(jnp.subtract, p, params)
    for name, rtol in (("8bit", 0.05), ("bf16", 0.02)):
        ours, state = runs[name][0][-1], runs[name][1][0]
        for key in ("w", "b"):
            a, b = moved(ours)[key], moved(full)[key]
            assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < rtol, (name, key)
    state = runs["8bit"][1][0]
    assert is_encoded(state.mu["w"]) and is_encoded(state.nu["w"]) and not is_encoded(state.mu["b"])
    assert {x.dtype for x in jax.tree.leaves((state.stats, state.bases))} == {jnp.dtype(jnp.float32)}
    state = runs["bf16"][1][0]
    assert state.mu["w"].dtype == state.nu["w"].dtype == jnp.bfloat16
    assert jz.storage.state_bytes(runs["8bit"][1]) < jz.storage.state_bytes(runs["full"][1])


def test_injected_hyperparameters_give_the_plain_trajectory():
    runs = float32_runs()
    assert_trees_close(runs["injected"][0], runs["scheduled"][0], rtol=1e-5, atol=1e-6)  # float32 hyperparameters
    assert_trees_close(runs["all_injected"][0], runs["all_plain"][0], rtol=1e-5, atol=1e-6)
    assert set(NUMERIC) <= set(runs["all_injected"][1].hyperparams)
    # The values matter (the default hyperparameters give another trajectory).
    assert not np.allclose(runs["all_plain"][0][-1]["w"], runs["scheduled"][0][-1]["w"], rtol=1e-3)
    # The last step's rate (count 7) is in the state.
    assert float(runs["injected"][1].hyperparams["learning_rate"]) == pytest.approx(decaying(7), rel=1e-6)


def test_refresh_runs_inside_one_cond_for_the_whole_tree():
    # eigh and QR appear only inside cond branches of the traced update (not at the top level of the step), and
    # in one cond for all leaves: one per leaf made a 128-leaf tree compile ~10% slower.
    tx = soap_at(precondition_1d=True)
    params = shaped_params(SMALL)
    assert sum(jnp.ndim(x) >= 1 for x in jax.tree.leaves(params)) >= 2  # several rotated leaves
    jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
    top = [str(e.primitive) for e in jaxpr.eqns]
    assert top.count("cond") == 1 and not set(top) & {"eigh", "householder_product", "geqrf", "qr", "sort"}
    text = str(jaxpr)
    assert "eigh" in text and ("householder_product" in text or "qr" in text)


@pytest.mark.parametrize("tx, decompositions", [
    (jz.scale_by_soap(max_precond_dim=4), {"lapack_sgeqrf_ffi", "lapack_ssyevd_ffi"}),
    (jz.scale_by_shampoo(max_precond_dim=4, inverse_root="eigh"), {"lapack_ssyevd_ffi"}),
])
def test_cpu_decompositions_take_one_matrix_at_a_time(tx, decompositions):
    # jaxlib's batched CPU QR and eigh wait on XLA's intra-op pool for their pieces: two at once (two leaves) can
    # deadlock a 2-thread pool; SOAP's batched QR did, on the benchmark's transformer. One matrix per LAPACK call.
    params = {"a": jnp.ones((8, 4)), "b": jnp.ones((12, 8))}  # 2 and 6 blocks
    text = jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
    calls = re.findall(r"custom_call @(lapack_\w+)\(.*?num_batch_dims = \"(\d+)\"", text)
    assert {name for name, _ in calls} >= decompositions
    assert all(batch == "0" for _, batch in calls), calls


# --- None leaves, jit with donation, vmap, NNX ---------------------------------------------------------------


@functools.cache
def none_and_donation_runs():
    """From the state after 8 steps: a step whose "w" gradient is None; and 4 donated steps from the start."""
    tx, params = soap_at(), shaped_params(TINY)
    iterates, state = float32_runs()["nan_skipped"][0], float32_runs()["nan_skipped"][1]
    last = iterates[-1]
    grads = {k: None if k == "w" else grad_fn(p, 9, jnp) for k, p in last.items()}
    none_updates, none_state = jax.jit(tx.update)(grads, state, last)

    def step(p, s, t):
        u, s = tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p)
        return jz.apply_updates(p, u), s

    donated = jax.jit(step, donate_argnums=(0, 1))
    current = jax.tree.map(jnp.copy, params)
    current_state = tx.init(current)
    trajectory = []
    for t in range(1, 5):
        current, current_state = donated(current, current_state, t)
        trajectory.append(jax.tree.map(np.asarray, current))  # a copy: the next step donates current
    return (last, state, none_updates, none_state), trajectory


def test_none_update_keeps_param_and_state_bit_for_bit():
    (params, state, updates, new_state), _ = none_and_donation_runs()
    assert updates["w"] is None
    assert not np.array_equal(updates["v"], np.zeros_like(updates["v"]))
    w = sorted(TINY).index("w")  # the factors' entry of "w" (one per leaf, in the leaves' order)
    pick = lambda s: (s.mu["w"], s.nu["w"], s.stats[w], s.bases[w])
    old, new = pick(state[0]), pick(new_state[0])
    assert_trees_equal(new, old)
    assert not np.array_equal(new_state[0].mu["v"], state[0].mu["v"])
    np.testing.assert_array_equal(jz.apply_updates(params, updates)["w"], params["w"])


def test_jitted_steps_donating_params_and_state_follow_the_trajectory():
    _, donated = none_and_donation_runs()
    # The "nan_skipped" run takes the same steps as long as t < 5.
    assert_trees_close(donated, float32_runs()["nan_skipped"][0][:4], rtol=1e-6, atol=1e-7)


def test_vmap_matches_separate_runs():
    # Both inside one jitted program: the vmapped step over two param sets, and each set stepped alone.
    tx = jz.soap(0.01, precondition_frequency=2, max_precond_dim=4)
    batch = [make_params(seed=s) for s in range(2)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)

    def one(p, s, t):
        u, s = tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p)
        return jz.apply_updates(p, u), s

    @jax.jit
    def step(carry, t):
        (vp, vs), alone = carry
        return jax.vmap(lambda p, s: one(p, s, t))(vp, vs), [one(p, s, t) for p, s in alone]

    carry = ((stacked, jax.vmap(tx.init)(stacked)), [(p, tx.init(p)) for p in batch])
    for t in range(1, 6):  # refreshes at counts 0, 2 and 4
        carry = step(carry, t)
    (vp, _), alone = carry
    for i, (p, _) in enumerate(alone):
        assert_trees_close(jax.tree.map(lambda x: x[i], vp), p, rtol=1e-5, atol=1e-6)
    assert not np.allclose(alone[0][0]["dense"]["w"], batch[0]["dense"]["w"])


def test_nnx_optimizer_trains_and_equals_the_raw_pytree_run():
    x = jax.random.normal(jax.random.key(0), (16, 5))
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    # The (5, 6) kernel's 5 x 5 factor is rotated, its 6 and the (6, 1) kernel's 6 are not (above 5): no factor
    # is rank deficient in more than one dimension at the first eigh (see FIELDS), so two programs agree.
    make_tx = lambda: jz.soap(1e-2, precondition_frequency=2, max_precond_dim=5, blocking=False)
    model = MLP(nnx.Rngs(0), width=6)
    params = jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
    loss = lambda m: jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    before = jax.tree.structure(nnx.state(optimizer))
    losses = [float(step(model, optimizer)) for _ in range(6)]
    assert losses[-1] < losses[1]
    # The steps left the optimizer state's structure as it was (else nnx.jit retraces after the first step: see
    # test_nnx_state_keeps_its_structure_so_a_scan_over_steps_runs).
    assert jax.tree.structure(nnx.state(optimizer)) == before

    graphdef = nnx.graphdef(model)
    tx = make_tx()

    @jax.jit
    def raw_step(params, state):
        def pure_loss(p):
            m = nnx.merge(graphdef, nnx.State(p))
            return loss(m)

        grads = jax.grad(pure_loss)(params)
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(6):
        params, state = raw_step(params, state)
    assert_trees_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params, rtol=1e-5, atol=1e-6)


def test_nnx_state_keeps_its_structure_so_a_scan_over_steps_runs():
    # The per-leaf factor containers live outside the params-shaped trees: inside the params' tree each would be the
    # value of an nnx.Param, which NNX hands back as an int-keyed nnx.State after an update, so the carry of a scan
    # over nnx.split((model, optimizer)) (examples/compare_optimizers.py `train`) would change its structure
    # (the nnx.jit test above checks that one step keeps the structure of nnx.state(optimizer)).
    x = jax.random.normal(jax.random.key(1), (8, 3))
    y = jnp.cos(x @ jnp.ones((3, 4)))
    # The (3, 4) kernel gets both factors (G^T G has a one-dimensional null space at the first eigh: see FIELDS),
    # the (4,) bias none; refreshes at counts 0 and 2.
    make_tx = lambda: jz.soap(1e-2, precondition_frequency=2)
    loss = lambda m: jnp.mean((m(x) - y) ** 2)
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    params = jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    graphdef, carry = nnx.split((model, nnx.Optimizer(model, make_tx(), wrt=nnx.Param)))

    def step(carry, _):
        model, optimizer = nnx.merge(graphdef, carry)
        optimizer.update(model, nnx.grad(loss)(model))
        return nnx.state((model, optimizer)), None

    carry, _ = jax.jit(lambda c: jax.lax.scan(step, c, length=3))(carry)
    scanned, _ = nnx.merge(graphdef, carry)

    tx, model_graphdef = make_tx(), nnx.graphdef(model)
    pure_grad = jax.grad(lambda p: loss(nnx.merge(model_graphdef, nnx.State(p))))

    @jax.jit
    def raw_step(params, state):
        updates, state = tx.update(pure_grad(params), state, params)
        return jz.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(3):
        params, state = raw_step(params, state)
    assert state[0].stats[0] == ((),) and len(state[0].stats[1][0]) == 2  # leaves: bias (no factors), kernel
    # Different XLA programs (a scan, single steps): float32 rounding only.
    assert_trees_close(nnx.to_pure_dict(nnx.state(scanned, nnx.Param)), params, rtol=1e-5, atol=1e-6)
    assert not np.allclose(params["kernel"], nnx.to_pure_dict(nnx.state(model, nnx.Param))["kernel"])


# --- sharding: init_sharded, jit over a mesh and shard_map equal one device ---------------------------------------

# Full-rank factors from the first gradient (see FIELDS). At max_precond_dim 8, v has 16 blocks (2 per device),
# w one (replicated factors); b is not rotated.
SHARD_SHAPES = {"w": (8, 8), "v": (32, 32), "b": (12,)}
SHARD_SPECS = {"w": P("data", "model"), "v": P("data", "model"), "b": P("model")}


def assert_factor_blocks_laid_out(soap_state, mesh, names="vw"):
    # stats and bases follow jax.tree.leaves(params) order: b, v, w.
    for name, stats, bases in zip("bvw", soap_state.stats, soap_state.bases, strict=True):
        for f in jax.tree.leaves((stats, bases)) if name in names else ():
            spec, local_blocks = {"v": (P(("data", "model")), 2), "w": (P(), 1)}[name]
            assert f.sharding.is_equivalent_to(NamedSharding(mesh, spec), 3), (name, f.sharding)
            assert f.addressable_shards[0].data.shape[0] == local_blocks, name


def test_sharded_init_jit_and_shard_map_equal_one_device():
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices("cpu")[:8])
    tx = jz.soap(0.01, precondition_frequency=2, max_precond_dim=8)
    params = shaped_params(SHARD_SHAPES)
    placed = {k: jax.device_put(v, NamedSharding(mesh, SHARD_SPECS[k])) for k, v in params.items()}
    state = jz.init_sharded(tx, placed)
    soap_state = state[0]
    assert soap_state.mu["w"].sharding.spec == P("data", "model")
    assert_factor_blocks_laid_out(soap_state, mesh)

    def step(p, s, t):
        u, s = tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p)
        return jz.apply_updates(p, u), s

    both = jax.jit(lambda sharded, single, t: (step(*sharded, t), step(*single, t)))
    sharded, single = (placed, state), (params, tx.init(params))
    for t in range(1, 5):
        sharded, single = both(sharded, single, t)
    assert_trees_close(sharded[0], single[0], rtol=1e-5, atol=1e-6)
    assert sharded[0]["w"].sharding.spec == P("data", "model")
    # The steps keep the split ones there (XLA's partitioner chooses the layout of the jitted step's outputs on Auto
    # axes: it split w's replicated factors too).
    assert_factor_blocks_laid_out(sharded[1][0], mesh, names="v")
    assert not np.allclose(single[0]["w"], params["w"])

    # Explicit mesh axes (sharding in types): each leaf is gathered for its blocks, each device updates its own
    # blocks' moments and factors, the results are scattered back.
    explicit = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2,
                             devices=jax.devices("cpu")[:8])
    typed = {k: jax.device_put(v, NamedSharding(explicit, SHARD_SPECS[k])) for k, v in params.items()}
    with jax.set_mesh(explicit):
        run = (typed, jz.init_sharded(tx, typed))
        explicit_step = jax.jit(step)
        for t in range(1, 5):
            run = explicit_step(*run, t)
    # Each device's blocks go through programs of another batch size, whose float32 rounding v's first eigenbases
    # amplify to ~3e-6 (run in float64, the two agree to 1e-14).
    assert_trees_close(run[0], single[0], rtol=1e-5, atol=1e-5)
    assert run[1][0].mu["w"].sharding.spec == P("data", "model")
    assert_factor_blocks_laid_out(run[1][0], explicit)

    # Inside shard_map: with axis_name and the params' specs, each device gathers the leaves and works its share
    # of v's blocks (w's factors are whole on every device); without them a local block raises.
    specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, placed))
    sharded_tx = jz.soap(0.01, precondition_frequency=2, max_precond_dim=8, axis_name=("data", "model"),
                         partition_specs=SHARD_SPECS)
    def local_step(p, s, g):  # (the gradients come in: grad_fn of a local block is not the block of grad_fn)
        u, s = sharded_tx.update(g, s, p)
        return jz.apply_updates(p, u), s

    local_step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(SHARD_SPECS, specs, SHARD_SPECS),
                                       out_specs=(SHARD_SPECS, specs)))
    run = (placed, state)
    for t in range(1, 5):
        run = local_step(*run, jax.tree.map(lambda x: grad_fn(x, t, jnp), run[0]))
    assert_trees_close(run[0], single[0], rtol=1e-5, atol=1e-5)  # (rounding as under Explicit axes, above)
    # A leaf no basis rotates (the vector b) is stepped where it lies: a step of b alone moves nothing.
    b_tx = jz.soap(0.01, axis_name=("data", "model"), partition_specs={"b": P("model")})
    only_b = {"b": placed["b"]}
    b_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(b_tx, only_b))
    b_step = jax.shard_map(lambda g, s: b_tx.update(g, s, g), mesh=mesh, in_specs=({"b": P("model")}, b_specs),
                           out_specs=({"b": P("model")}, b_specs))
    hlo = jax.jit(b_step).lower(only_b, jz.init_sharded(b_tx, only_b)).compile().as_text()
    assert not re.search("all-gather|all-reduce|all-to-all|collective-permute", hlo)
    local = jax.shard_map(lambda p, s: step(p, s, 1), mesh=mesh, in_specs=(SHARD_SPECS, specs),
                          out_specs=(SHARD_SPECS, specs))
    with pytest.raises(ValueError, match=r"scale_by_soap: inside shard_map, an array of local shape \(3,\) varies "
                                         r"over mesh axes \['model'\]: it is a block of a whole array.*Pass axis_name"):
        jax.jit(local).lower(placed, state)
    # Whole (replicated) arrays inside shard_map are accepted, and give the one-device numbers.
    whole = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P()), out_specs=(P(), P())))
    run = (params, tx.init(params))
    for t in range(1, 5):
        run = whole(*run, t)
    assert_trees_close(run[0], single[0], rtol=1e-5, atol=1e-6)
