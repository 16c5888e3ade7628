"""Optax's Muon (muon, scale_by_muon, MuonDimensionNumbers, MuonState): Optax bit for bit, float64 references, storage.

Every option case is a label of one jz.partition (and one optax.partition), so that each comparison compiles a
single program: float32 trajectories and states against optax.contrib's bit for bit, and float64 trajectories
against tests/reference.py's muon (written from the papers and Optax's documentation) to 1e-9.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import (
    assert_programs_agree,
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_reference,
)
from jaxopt_zoo.quantization import is_encoded

LR = 0.05
DION = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)


def batched_dims(spec):
    # A (in, heads, out) leaf is one matrix per head; matrices are (in, out); the rest go to Adam.
    return lambda params: jax.tree.map(lambda p: spec(0, 2) if p.ndim == 3 else spec() if p.ndim == 2 else None, params)


# label: (jz.muon and optax.contrib.muon options, reference.muon options). Options are grouped into few labels:
# each label adds to the one program's compile time.
CASES = {
    "default": ({}, {}),
    # A (in, heads, out) leaf orthogonalised per head; muon_weight_dimension_numbers are added per library.
    "batched_options": (
        dict(nesterov=False, adaptive=True, consistent_rms=0.2, weight_decay=0.1, eps=1e-3, preconditioning="spectral",
             beta=0.9, adam_learning_rate=0.01, adam_b1=0.8, adam_b2=0.99, adam_eps_root=1e-6, adam_weight_decay=0.1),
        dict(nesterov=False, adaptive=True, consistent_rms=0.2, weight_decay=0.1, eps=1e-3, preconditioning="spectral",
             beta=0.9, adam_learning_rate=0.01, adam_b1=0.8, adam_b2=0.99, adam_eps_root=1e-6, adam_weight_decay=0.1,
             matrix_axes=((0,), (2,))),
    ),
    # Optax raises for more coefficient rows than steps ("Not enough coeffs") where its slice [-ns_steps:] would run
    # the last rows; ours runs them, so its twin is given those rows.
    "schatten_last_rows": (dict(preconditioning="schatten", ns_coeffs="dion", ns_steps=3),
                           dict(preconditioning="schatten", ns_coeffs=DION[-3:], ns_steps=3)),
    # Optax floors the AOL rescaling at 1e-8 whatever eps is; ours at the eps given: against the reference only
    # (test_float32_matches_optax_bit_for_bit compares "aol" with Optax).
    "aol_eps": (dict(preconditioning="aol", ns_coeffs="dion", eps=50.0),
                dict(preconditioning="aol", ns_coeffs=DION, eps=50.0)),
}
BATCHED = "batched_options"
ONLY_OURS = "aol_eps"


def case_params(dtype, labels):
    rng = np.random.default_rng(7)
    params = {label: {"w": jnp.asarray(rng.normal(size=(3, 4)), dtype)} for label in labels}
    params["default"] = make_params(dtype)  # (test_float32_matches_optax_bit_for_bit adds a tall matrix)
    params[BATCHED] |= {"heads": jnp.asarray(rng.normal(size=(3, 2, 4)), dtype), "b": jnp.ones(3, dtype)}
    return params


def run_jitted(tx, params, steps: int = 20, donate: bool = False):
    """conftest.run_ours with the update applied inside one jitted step and the gradients computed in NumPy;
    ``donate``: the step donates the state (updated in place), and each state handed over must be deleted."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    state, step = jax.jit(tx.init)(params), jax.jit(step, donate_argnums=(1,) if donate else ())
    iterates = []
    for t in range(1, steps + 1):
        grads = jax.tree.map(lambda p: np.asarray(grad_fn(np.asarray(p, np.float64), t), p.dtype), params)
        given = state
        params, state = step(params, state, grads)
        assert not donate or all(x.is_deleted() for x in jax.tree.leaves(given))
        iterates.append(params)
    return iterates, state


def grouped(library, factories):
    return library.partition(factories, {label: label for label in factories})


def both_libraries():
    ours = {label: jz.muon(LR, **options) for label, (options, _) in CASES.items()}
    theirs = {label: optax.contrib.muon(LR, **options) for label, (options, _) in CASES.items()}
    ours[BATCHED] = jz.muon(
        LR, **CASES[BATCHED][0], muon_weight_dimension_numbers=batched_dims(jz.MuonDimensionNumbers))
    theirs[BATCHED] = optax.contrib.muon(
        LR, **CASES[BATCHED][0], muon_weight_dimension_numbers=batched_dims(optax.contrib.MuonDimensionNumbers))
    theirs["schatten_last_rows"] = optax.contrib.muon(LR, **CASES["schatten_last_rows"][1])
    del theirs[ONLY_OURS]
    return grouped(jz, ours), grouped(optax, theirs)


def test_matches_optax_bit_for_bit_and_the_float64_reference(x64):
    ours, theirs = both_libraries()
    params = case_params(jnp.float64, CASES)
    our_iterates, our_state = run_jitted(ours, params)
    without = lambda tree: {label: value for label, value in tree.items() if label != ONLY_OURS}
    their_iterates, their_state = run_jitted(theirs, without(params))
    assert_trees_equal([without(it) for it in our_iterates], their_iterates)
    # count, mu, ns_coeffs; Adam's
    assert_trees_equal(jax.tree.leaves(without(our_state.inner_states)), jax.tree.leaves(their_state.inner_states))
    for label, (_, reference_options) in CASES.items():
        expected = run_reference(reference.muon(LR, **reference_options), params[label], steps=20)
        assert_trees_close([it[label] for it in our_iterates], expected, rtol=1e-9, atol=1e-12)
    assert not any(np.allclose(a, b) for a, b in zip(jax.tree.leaves(our_iterates[-1]), jax.tree.leaves(params)))


MASK = lambda params: jax.tree.map(lambda p: p.shape != (5, 2), params)


def test_float32_matches_optax_bit_for_bit():
    options = dict(mu_dtype=jnp.bfloat16, weight_decay=0.1, weight_decay_mask=MASK, adaptive=True,
                   preconditioning="aol",
                   ns_coeffs="dion")
    params = make_params() | {"tall": jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)), jnp.float32)}
    our_iterates, our_state = run_jitted(jz.muon(LR, **options), params, donate=True)  # in place: the same numbers
    their_iterates, their_state = run_jitted(optax.contrib.muon(LR, **options), params)
    assert_programs_agree(our_iterates, their_iterates)
    assert_programs_agree(jax.tree.leaves(our_state), jax.tree.leaves(their_state))


# --- where Optax's code departs from its documentation -------------------------------------------------------


def test_where_optax_fails_ours_follows_optax_documentation():
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)}
    # weight_dimension_numbers=None "implies that all parameters are 2D matrices": Optax cannot map None over a dict.
    with pytest.raises(ValueError):
        optax.contrib.scale_by_muon().update(params, optax.contrib.scale_by_muon().init(params))
    explicit = optax.contrib.scale_by_muon(weight_dimension_numbers={"w": optax.contrib.MuonDimensionNumbers()})
    # eps = 0 and a zero gradient: 0 (Optax: 0 / 0 = NaN).
    zeros = jax.tree.map(jnp.zeros_like, params)
    at_zero = jz.scale_by_muon(eps=0.0)
    ours, theirs, zero_update = jax.jit(lambda p, z: [tx.update(g, tx.init(p))[0] for tx, g in (
        (jz.scale_by_muon(), p), (explicit, p), (at_zero, z))])(params, zeros)
    assert_trees_equal(ours, theirs)
    assert_trees_equal(zero_update, zeros)
    # More coefficient rows than steps: Optax raises (its check is inverted), ours runs the last ns_steps rows.
    with pytest.raises(ValueError, match="Not enough coeffs"):
        optax.contrib.scale_by_muon(ns_coeffs=DION, ns_steps=3).init(params)


# --- PyTorch's rule is the same transformation --------------------------------------------------------------


def test_torch_muon_is_scale_by_muon_with_pytorchs_options():
    tx = jz.torch.muon(lr=0.02)
    state = tx.init({"w": jnp.ones((3, 4))})
    assert isinstance(state[0], jz.MuonState) and jz.ScaleByMuonState is jz.MuonState
    assert state[0].count is None and state[0].ns_coeffs is None  # PyTorch keeps only the buffer
    assert state[0].momentum_buffer is state[0].mu


# --- storage, None leaves, jit with donation, vmap, inject_hyperparams --------------------------------------


def test_storage_of_the_momentum_and_none_updates():
    # One program: w (16 x 256) with 8-bit momentum, a small matrix with stochastically rounded bfloat16 (and Adam's
    # moments for the vector, likewise).
    rng = np.random.default_rng(3)
    params = {"q8": {"w": jnp.asarray(rng.normal(size=(16, 256)), jnp.float32)},
              "sr": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.ones(4)}}
    stored = grouped(jz, {"q8": jz.muon(LR, mu_dtype=jz.Blockwise8Bit()),
                          "sr": jz.muon(LR, mu_dtype=jz.StochasticBF16(), nu_dtype=jz.StochasticBF16())})
    iterates, state = run_jitted(stored, params, steps=3)
    expected = {label: run_reference(reference.muon(LR), params[label], steps=3)[-1] for label in params}
    muon_state = lambda s, label: s.inner_states[label].inner_state.inner_states["muon"].inner_state[0]
    assert is_encoded(muon_state(state, "q8").mu["q8"]["w"]) and muon_state(state, "q8").mu["q8"]["w"].dtype == jnp.int8
    assert muon_state(state, "sr").mu["sr"]["w"].dtype == jnp.bfloat16 and int(muon_state(state, "sr").count) == 3
    assert jz.storage.state_bytes(muon_state(state, "q8")) < 0.3 * 4 * 16 * 256
    adam_state = state.inner_states["sr"].inner_state.inner_states["adam"].inner_state[0]
    assert adam_state.mu["sr"]["b"].dtype == adam_state.nu["sr"]["b"].dtype == jnp.bfloat16
    for a, b, p in zip(jax.tree.leaves(iterates[-1]), jax.tree.leaves(expected), jax.tree.leaves(params)):
        assert float(jnp.linalg.norm((a - p) - (b - p))) < 0.05 * float(jnp.linalg.norm(b - p))

    # None updates: the param and its stored momentum are kept bit for bit.
    grads = jax.tree.map(jnp.ones_like, params) | {"q8": {"w": None}}
    updates, new_state = jax.jit(stored.update)(grads, state, params)
    assert updates["q8"]["w"] is None
    kept = muon_state(new_state, "q8").mu["q8"]["w"]
    np.testing.assert_array_equal(kept, muon_state(state, "q8").mu["q8"]["w"], strict=True)
    assert not np.array_equal(muon_state(new_state, "sr").mu["sr"]["w"], muon_state(state, "sr").mu["sr"]["w"])


def test_vmap_over_parameter_sets_follows_the_reference_for_each():
    sets = [make_params(seed=s) for s in range(2)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *sets)
    tx = jz.muon(LR, adaptive=True)

    def step(params, state, grads):
        updates, state = jax.vmap(tx.update)(grads, state, params)
        return jz.apply_updates(params, updates), state

    state, step = jax.vmap(tx.init)(stacked), jax.jit(step)
    for t in range(1, 4):
        per_set = lambda q: np.stack([grad_fn(x, t) for x in np.asarray(q, np.float64)]).astype(np.float32)
        grads = jax.tree.map(per_set, stacked)
        stacked, state = step(stacked, state, grads)
    for i, params in enumerate(sets):
        expected = run_reference(reference.muon(LR, adaptive=True), params, steps=3)[-1]
        assert_trees_close(jax.tree.map(lambda x: x[i], stacked), expected, rtol=1e-4, atol=1e-5)


def test_inject_hyperparams_gives_the_plain_trajectory():
    hyperparams = dict(learning_rate=LR, beta=0.9, eps=1e-6, weight_decay=0.1, consistent_rms=0.2)
    params = make_params()
    injected, state = run_jitted(jz.inject_hyperparams(jz.muon)(**hyperparams), params, steps=4)
    expected = run_reference(reference.muon(**hyperparams), params, steps=4)
    assert_trees_close(injected, expected, rtol=1e-4, atol=1e-5)
    assert set(hyperparams) <= set(state.hyperparams)


def test_an_injected_ns_steps_edited_to_a_float_says_how_to_edit_it():
    # The fori_loop over a float step count failed inside JAX, naming nothing the user wrote.
    params = {"w": jnp.ones((3, 4))}
    for factory, options in ((jz.muon, dict(learning_rate=LR)), (jz.torch.muon, {})):
        tx = jz.inject_hyperparams(factory)(ns_steps=3, **options)
        state = tx.init(params)
        state.hyperparams["ns_steps"] = jnp.asarray(4.0)
        owner = "torch.muon" if factory is jz.torch.muon else "scale_by_muon|muon"
        with pytest.raises(ValueError, match=rf"^({owner}): ns_steps must be an integer array, got a float32 one; "
                                             r"with jz.inject_hyperparams edit it as jnp.asarray\(5, jnp.int32\)"):
            jax.jit(tx.update)(params, state, params)
        state.hyperparams["ns_steps"] = jnp.asarray(4, jnp.int32)
        jax.jit(tx.update)(params, state, params)


def test_init_sharded_lays_out_the_state_like_the_params():
    # Each momentum keeps its param's layout; under jit with sharded arrays the partitioner gathers what
    # Newton-Schulz needs, and inside shard_map a sharded leaf raises (both tested in tests/test_torch_muon.py,
    # on the same scale_by_muon).
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=jax.devices("cpu")[:8])
    specs = {"w": jax.sharding.PartitionSpec("data", "model"), "b": jax.sharding.PartitionSpec("model")}
    params = {"w": jnp.ones((16, 32)), "b": jnp.ones(32)}
    placed = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, specs[k])) for k, v in params.items()}
    state = jz.init_sharded(jz.muon(LR, mu_dtype=jz.StochasticBF16()), placed)
    muon_state, adam_state = state.inner_states["muon"].inner_state[0], state.inner_states["adam"].inner_state[0]
    assert muon_state.mu["w"].sharding.spec == specs["w"] and muon_state.mu["w"].dtype == jnp.bfloat16
    assert adam_state.mu["b"].sharding.spec == adam_state.nu["b"].sharding.spec == specs["b"]
    assert muon_state.count.sharding.is_fully_replicated and muon_state.ns_coeffs.sharding.is_fully_replicated


# --- validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.muon(-0.1), r"^muon: learning_rate must be >= 0"),
        (lambda: jz.muon(0.1, beta=1.0), r"^muon: beta must be in \[0, 1\), got 1.0"),
        (lambda: jz.muon(0.1, ns_coeffs="fast"), r"^muon: ns_coeffs must be one of \['dion', 'muon', 'standard'\]"),
        (lambda: jz.muon(0.1, ns_coeffs=(1.0, 2.0)), r"^muon: ns_coeffs must be three numbers"),
        (lambda: jz.muon(0.1, preconditioning="svd"), r"^muon: preconditioning must be one of"),
        (lambda: jz.muon(0.1, ns_steps=2.5), r"^muon: ns_steps must be an integer >= 0"),
        (lambda: jz.muon(0.1, consistent_rms=-1.0), r"^muon: consistent_rms must be >= 0"),
        (lambda: jz.muon(0.1, adam_b2=1.0), r"^muon: adam_b2 must be in \[0, 1\)"),
        (lambda: jz.muon(0.1, mu_dtype=jnp.int8), r"^muon: mu_dtype must be"),
        (lambda: jz.muon(0.1, nu_dtype="x"), r"^muon: nu_dtype must be"),
        (lambda: jz.scale_by_muon(eps=-1.0), r"^scale_by_muon: eps must be >= 0"),
        (lambda: jz.scale_by_muon(adaptive=1), r"^scale_by_muon: adaptive must be True or False"),
        (lambda: jz.scale_by_muon(shape_scale="height"),
         r"^scale_by_muon: shape_scale must be None, 'width' or a number"),
        (lambda: jz.scale_by_muon(ns_dtype=jnp.int32), r"^scale_by_muon: ns_dtype must be a floating dtype"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


DIVERGING = (1.0, -4.775, 2.0315)  # p(1) = -1.74: the singular values grow as 1.74, 9.1, 1.3e5, ...


def test_coefficients_whose_iteration_diverges_are_refused_where_optax_steps_nan():
    # A rank-one gradient (one example through a linear layer) has one singular value, 1 once normalised.
    params = {"w": jnp.asarray(np.outer([1.0, -2.0, 0.5, 1.5], [0.3, 1.0, -1.0, 2.0, 0.1, -0.5]), jnp.float32)}
    theirs = optax.contrib.muon(0.1, ns_coeffs=DIVERGING)
    updates, _ = theirs.update(params, theirs.init(params), params)
    assert not np.isfinite(np.asarray(updates["w"])).all()
    message = (r"muon: ns_coeffs=\(+1.0, -4.775, 2.0315\).* make the Newton-Schulz iteration diverge: a singular value "
               r"of 0.966 or more \(a rank-one gradient's is 1\) reaches 1.28e\+05 after 3 step\(s\)")
    for build in (lambda: jz.muon(0.1, ns_coeffs=DIVERGING), lambda: jz.scale_by_muon(ns_coeffs=DIVERGING),
                  lambda: jz.scale_by_muon(ns_coeffs=[DIVERGING] * 4, ns_steps=4)):
        with pytest.raises(ValueError, match=message):
            build()
    for build in (lambda: jz.torch.muon(ns_coefficients=DIVERGING), lambda: jz.newton_schulz(params["w"], DIVERGING)):
        with pytest.raises(ValueError, match=r"ns_coefficients=\(1.0, -4.775, 2.0315\) make the Newton-Schulz"):
            build()
    # Two steps stay finite (1.74, then 9.1): accepted, and so are every preset and the convergent quintic.
    jz.scale_by_muon(ns_coeffs=DIVERGING, ns_steps=2)
    for preset in ("standard", "muon", "dion"):
        jz.muon(0.1, ns_coeffs=preset, ns_steps=99)
    jz.newton_schulz(params["w"], (15 / 8, -10 / 8, 3 / 8), 99)


def test_leaves_that_are_not_matrices_raise_at_init_naming_the_leaf():
    with pytest.raises(ValueError, match=r"^scale_by_muon: .*the leaf at \['b'\] has shape \(4,\)"):
        jz.scale_by_muon().init({"w": jnp.ones((3, 4)), "b": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"^scale_by_muon: .*disjoint"):
        jz.scale_by_muon(weight_dimension_numbers=jz.MuonDimensionNumbers(0, 0)).init(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="expected MuonState"):
        jz.scale_by_muon().update(jnp.ones((3, 4)), jz.scale_by_lion().init(jnp.ones((3, 4))))
