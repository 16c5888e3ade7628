"""MoMo (momo, momo_adam) and Sophia (sophia, hutchinson_estimator_diag_hessian): Optax bit for bit, float64
references from the papers, Optax's weight-decay bug in MoMo, storage, None leaves, jit with donation, vmap,
inject_hyperparams, shard_map and validation (Flax NNX: the row in test_interop.py)."""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from tests import reference
from tests.conftest import (
    assert_trees_close,
    assert_trees_equal,
    grad_fn,
    make_params,
    run_reference,
)

STEPS = 20
MASK = {"dense": {"w": True, "b": False}, "scale": True}


def decaying(step):
    return 0.5 / (1.0 + 0.1 * step)


# --- the objectives ------------------------------------------------------------------------------


def loss_value(params, t, xp=jnp):
    """The loss whose gradient conftest.grad_fn is: sum 0.5 c |p|^2 + drift Re(p) per leaf (plus 2, to stay above 0).

    For a complex p, grad_fn's c p + drift is this loss's gradient in the real pair (Re p, Im p).
    """
    total = 2.0
    for p in jax.tree.leaves(params):
        total = total + xp.sum(xp.real(0.5 * (grad_fn(p, t, xp) + grad_fn(0 * p, t, xp)) * xp.conj(p)))
    return total


def _curvature(x, xp=jnp):
    return xp.reshape(xp.linspace(0.1, 3.0, xp.size(x)), xp.shape(x))


def separable(params):
    """sum 0.5 c x^2 + x^4 / 12: its Hessian is diagonal, c + x^2, so Hutchinson's estimate is exact."""
    return sum(jnp.sum(0.5 * _curvature(x) * x**2 + x**4 / 12) for x in jax.tree.leaves(params))


def coupled(params):
    """The separable objective plus 0.5 (sum x)^2: Hutchinson's estimate then depends on the draws."""
    leaves = jax.tree.leaves(params)
    return separable(params) + 0.5 * sum(jnp.sum(x) for x in leaves) ** 2


def elementwise(params):
    """sum 0.5 x^2 + x^4 / 12: a diagonal Hessian 1 + x^2 that does not depend on the leaf's shape (nor its shards)."""
    return sum(jnp.sum(0.5 * x**2 + x**4 / 12) for x in jax.tree.leaves(params))


def driven(tx, value=None, obj_fn=separable):
    """``tx`` whose update is handed ``value`` (the separable loss at the params when ``None``) and ``obj_fn``,
    for the registries whose steps call ``update(grads, state, params)``."""

    def update(updates, state, params=None, **extra_args):
        loss = obj_fn(params) if value is None else value
        return tx.update(updates, state, params, value=loss, obj_fn=obj_fn)

    return jz.GradientTransformation(tx.init, update)


def run(tx, params, steps=STEPS, jit=True, obj_fn=coupled, donate=False, step=None):
    """Iterates and final state of ``tx`` on conftest's gradients, with ``value=`` the matching loss and ``obj_fn``
    (``step``: an already jitted ``(grads, state, params, value) -> (updates, state)`` of ``tx``)."""
    state = tx.init(params)

    def plain_step(grads, state, params, value):
        return tx.update(grads, state, params, value=value, obj_fn=obj_fn)

    if step is None:
        step = jax.jit(plain_step, donate_argnums=(1,) if donate else ()) if jit else plain_step
    iterates = []
    for t in range(1, steps + 1):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params)
        updates, state = step(grads, state, params, loss_value(params, t))
        params = jz.apply_updates(params, updates)
        iterates.append(params)
    return iterates, state


@pytest.mark.parametrize("name", ["momo", "momo_adam", "sophia", "hutchinson_estimator_diag_hessian"])
def test_same_arguments_and_defaults_as_optax(name):
    ours, theirs = (inspect.signature(getattr(m, name)).parameters for m in (jz, optax.contrib))
    assert list(ours)[: len(theirs)] == list(theirs)
    for arg, parameter in theirs.items():
        if arg != "hessian_diagonal_fn":  # an instance of each library's Hutchinson estimator
            assert ours[arg].default == parameter.default, arg
    assert all(ours[arg].kind is inspect.Parameter.KEYWORD_ONLY for arg in list(ours)[len(theirs):])


def test_state_classes_have_optaxs_fields():
    params = make_params()
    assert jz.momo().init(params)._fields == optax.contrib.MomoState._fields
    assert jz.momo_adam().init(params)._fields == optax.contrib.MomoAdamState._fields
    assert jz.sophia(0.1).init(params)[0]._fields == optax.contrib.SophiaState._fields
    assert jz.hutchinson_estimator_diag_hessian().init(params)._fields == optax.contrib.HutchinsonState._fields


# --- Optax, bit for bit --------------------------------------------------------------------------

HUTCHINSON_3 = {m: m.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(3)) for m in (jz, optax.contrib)}

# Every option on (the defaults are Optax's, above); MoMo's weight decay: see the bug test below.
OPTAX_CASES = {
    "momo": lambda m: m.momo(decaying, 0.8, -1.0, 0.0, True),
    "momo_adam": lambda m: m.momo_adam(decaying, 0.8, 0.99, 1e-6, 0.5, 0.0, True),
    "sophia": lambda m: m.sophia(0.05, 0.9, 0.95, 1e-6, decaying, MASK, 0.5, 0.5, 3, HUTCHINSON_3[m], jnp.bfloat16),
}


@functools.cache
def optax_case_step(name):
    """Our transformation of an Optax case, and its jitted step ``(grads, state, params, value)``."""
    tx = OPTAX_CASES[name](jz)
    return tx, jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v, obj_fn=coupled))


@functools.cache
def optax_case(name):
    """Jitted float32 trajectories and final states: ours, then Optax's (computed once for the file)."""
    params = make_params(jnp.float32)
    tx, step = optax_case_step(name)
    return (*run(tx, params, step=step), *run(OPTAX_CASES[name](optax.contrib), params))


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    ours, our_state, theirs, their_state = optax_case(name)
    assert_trees_equal(ours, theirs)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert not np.allclose(np.asarray(ours[-1]["dense"]["w"]), np.asarray(make_params()["dense"]["w"]))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(ours[-1]))


@pytest.mark.parametrize("factory", [jz.momo, jz.momo_adam])
def test_learning_rate_none_is_a_rate_of_one(factory):
    # As every alias here (tests/test_optimizers.py); it was accepted and then failed at the update (None * float).
    params, loss = {"x": jnp.asarray([2.0, -3.0])}, lambda p: jnp.sum(0.1 * p["x"] ** 2)

    def iterates(tx, p=params, out=()):
        state = tx.init(p)
        for _ in range(3):
            updates, state = tx.update(jax.grad(loss)(p), state, p, value=loss(p))
            p = jz.apply_updates(p, updates)
            out += (p,)
        return out

    assert_trees_equal(iterates(factory(None)), iterates(factory(1.0)))


# --- float64 references (the papers' algorithms) -------------------------------------------------


def _flat(tree):
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return np.concatenate([np.ravel(x.astype(np.result_type(x.dtype, np.float64))) for x in leaves])


def run_momo_reference(ref, params, steps=STEPS):
    """The reference over the whole tree raveled into one vector (its sums are the tree's): the iterates as flat
    vectors, and at each step whether the step size was the learning rate (capped) or the Polyak step."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = np.cumsum([np.size(x) for x in leaves])[:-1]
    x = _flat(params)
    state, iterates, capped = ref.init(x), [], []
    for t in range(1, steps + 1):
        tree = jax.tree.unflatten(treedef, [p.reshape(np.shape(q)) for p, q in zip(np.split(x, sizes), leaves)])
        grads = np.concatenate([np.ravel(grad_fn(p, t, np)) for p in jax.tree.leaves(tree)])
        delta, state = ref.update(grads, state, x, t, float(loss_value(tree, t, np)))
        x = x + delta
        iterates.append(x)
        capped.append(state["capped"])
    return np.stack(iterates), capped


# Every option on, weight decay included: there the paper's step (ours) and Optax's differ (Optax's bug).
MOMO_REFERENCES = {
    "momo": (
        lambda m: m.momo(decaying, 0.8, -1.0, 0.2, True),
        dict(learning_rate=decaying, beta=0.8, lower_bound=-1.0, weight_decay=0.2, adapt_lower_bound=True),
    ),
    "momo_adam": (
        lambda m: m.momo_adam(decaying, 0.8, 0.99, 1e-6, 0.5, 0.1, True),
        dict(learning_rate=decaying, beta=0.8, b2=0.99, eps=1e-6, lower_bound=0.5, weight_decay=0.1,
             adapt_lower_bound=True, adam=True),
    ),  # Optax's momo_adam has the same weight-decay line as its momo: compared with Optax for momo only

}


@pytest.mark.parametrize("name", list(MOMO_REFERENCES))
def test_momo_matches_float64_reference_where_optax_misses_the_weight_decay(name, x64):
    # The paper's proximal step is x+ = (x - tau d / D) / (1 + lr wd); Optax's is x / (1 + lr wd) - tau d / D.
    factory, options = MOMO_REFERENCES[name]
    params = make_params(jnp.float64)
    expected, capped = run_momo_reference(reference.momo(**options), params)
    assert any(capped) and not all(capped)  # both branches of min(lr, Polyak step) are taken
    ours, _ = run(factory(jz), params)
    np.testing.assert_allclose(np.stack([_flat(x) for x in ours]), expected, rtol=1e-10, atol=1e-12)
    assert not np.allclose(expected[-1], _flat(params))
    if name == "momo":
        theirs, _ = run(factory(optax.contrib), params)
        assert np.abs(np.stack([_flat(x) for x in theirs]) - expected).max() > 1e-3


@pytest.mark.parametrize("name", list(MOMO_REFERENCES))
def test_momo_on_complex_params_matches_float64_reference(name, x64):
    # The reference's inner products are Re<x, y> and MoMo-Adam's second moment is |g|^2; the complex square g^2
    # that Optax takes made the second moment negative where g is imaginary.
    # complex128 leaves with a float64 one: the scalars are float64 (tree.scalar_dtype counts complex128 as float64).
    factory, options = MOMO_REFERENCES[name]
    params = make_params(jnp.float64)
    params["dense"] = jax.tree.map(lambda re, im: re + 1j * im, params["dense"], make_params(jnp.float64, 1)["dense"])
    expected, capped = run_momo_reference(reference.momo(**options), params)
    assert not all(capped)  # the Polyak step, built from the inner products, is taken
    ours, state = run(factory(jz), params)
    np.testing.assert_allclose(np.stack([_flat(x) for x in ours]), expected, rtol=1e-10, atol=1e-12)
    assert not np.allclose(expected[-1], _flat(params))
    assert jax.tree.map(lambda x: x.dtype, ours[-1]) == jax.tree.map(lambda x: x.dtype, params)


def test_momo_adam_steps_a_complex_param_as_adam_does():
    # g = 2i: the complex square -4 made the second moment negative, sqrt(v) imaginary and the step -0.01 (real),
    # a quarter turn from Adam's -0.01i. Here the Polyak step is above the cap, so the step is Adam's.
    params, grads = jnp.array([0.5 + 1j], jnp.complex64), jnp.array([2j], jnp.complex64)
    momo_step, state = jz.momo_adam(1e-2).update(grads, jz.momo_adam(1e-2).init(params), params, value=1.0)
    adam_step, _ = jz.adam(1e-2).update(grads, jz.adam(1e-2).init(params), params)
    np.testing.assert_allclose(momo_step, adam_step, rtol=1e-6)
    np.testing.assert_allclose(momo_step, [-0.01j], rtol=1e-4)  # 1 - b2 rounds in float32
    assert np.all(np.real(state.exp_avg_sq) > 0) and np.all(np.imag(state.exp_avg_sq) == 0)


def test_sophia_matches_float64_reference(x64):
    # On the separable objective Hutchinson's estimate is the Hessian's diagonal c + x^2 whatever the draws.
    params = make_params(jnp.float64)
    tx = jz.sophia(decaying, 0.9, 0.95, 1e-6, 0.1, None, 5.0, None, 2)
    iterates, _ = run(tx, params, obj_fn=separable)
    ref = reference.sophia(decaying, lambda x: _curvature(x, np) + x**2, 0.9, 0.95, 1e-6, 0.1, 5.0, None, 2)
    assert_trees_close(iterates, run_reference(ref, params, steps=STEPS), rtol=1e-10, atol=1e-13)


def test_hutchinson_estimate_is_unbiased():
    # E[z * (H z)] = diag(H) for Rademacher z: the mean over 4000 draws is within a few standard errors.
    a = jnp.asarray([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]])
    tx, x = jz.hutchinson_estimator_diag_hessian(), jnp.ones(3)
    keys = jax.random.split(jax.random.key(0), 4000)
    estimate = lambda k: tx.update(x, jz.HutchinsonState(k), x, obj_fn=lambda y: 0.5 * y @ a @ y)[0]  # noqa: E731
    draws = jax.jit(jax.vmap(estimate))(keys)
    np.testing.assert_allclose(draws.mean(axis=0), jnp.diag(a), atol=0.03)
    assert float(draws.std(axis=0).max()) > 0.1  # the off-diagonal terms do enter each draw


def test_hutchinson_of_complex_params_is_the_real_curvature_and_minus_the_mixed_one():
    # f = sum c |x|^2 + 5 Re(x) Im(x): d2f/dRe2 = 2c, d2f/dRe dIm = 5, whatever the signs drawn (diagonal Hessian).
    c = jnp.asarray([1.0, 3.0])
    objective = lambda x: jnp.sum(c * jnp.abs(x) ** 2 + 5 * x.real * x.imag)  # noqa: E731
    x = jnp.asarray([1 + 1j, 2 - 1j], jnp.complex64)
    tx = jz.hutchinson_estimator_diag_hessian()
    diag, _ = tx.update(x, tx.init(x), x, obj_fn=objective)
    np.testing.assert_allclose(diag, 2 * c - 5j, rtol=1e-6)


def test_hutchinson_takes_mixed_precision_params():
    # Each probe is cast to its param's dtype (Optax casts all to the lowest, which jax.jvp refuses).
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
    tx = jz.hutchinson_estimator_diag_hessian()
    objective = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 3)  # noqa: E731
    diag, state = jax.jit(lambda p, s: tx.update(p, s, p, obj_fn=objective))(params, tx.init(params))
    assert diag["a"].dtype == jnp.bfloat16 and diag["b"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(diag["a"], np.float32), 2.0)
    np.testing.assert_allclose(diag["b"], 6.0)
    assert not np.array_equal(state.key, jax.random.PRNGKey(0))  # the key moved on


def test_a_typed_key_state_can_be_built_abstractly_for_a_restore():
    # Orbax and nnx.eval_shape build restore targets with jax.eval_shape(tx.init, ...); with a typed key
    # (jax.random.key, as the docstring suggests) init failed under that trace with a bare AssertionError.
    params = {"w": jnp.ones(3)}
    tx = jz.sophia(0.1, hessian_diagonal_fn=jz.hutchinson_estimator_diag_hessian(jax.random.key(3)))
    abstract, concrete = jax.eval_shape(tx.init, params), tx.init(params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(lambda x: (x.shape, x.dtype), concrete)
    assert jax.random.key_data(jax.jit(tx.init)(params)[0].hessian_fn_state.key).tolist() == \
        jax.random.key_data(jax.random.key(3)).tolist()


# --- storage options, None leaves ----------------------------------------------------------------


def test_eight_bit_momentum_tracks_the_full_precision_run():
    # MoMo's momentum in 8-bit blocks (small ones, so that this (2, 128) leaf qualifies; the vector stays float32).
    q8 = jz.Blockwise8Bit(block_size=16, min_size=256)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(2, 128)), jnp.float32), "b": jnp.asarray(rng.normal(size=4))}
    full, _ = run(jz.momo(0.05), params, steps=6)
    eight_bit, state = run(jz.momo(0.05, mu_dtype=q8), params, steps=6)
    assert is_encoded(state.exp_avg["w"]) and not is_encoded(state.exp_avg["b"])
    for name in params:  # the distance travelled, within 5% (as the 8-bit tests of the other optimizers ask)
        moved, expected = eight_bit[-1][name] - params[name], full[-1][name] - params[name]
        assert float(jnp.linalg.norm(moved - expected) / jnp.linalg.norm(expected)) < 0.05, name


@pytest.mark.parametrize("name", ["momo", "sophia"])
def test_none_update_keeps_param_and_state_bit_for_bit(name):
    # The Optax cases' jitted steps, traced once more for the None leaf: MoMo's sums leave it out, Sophia's
    # Hessian refresh (a cond) does not touch its moment.
    tx, step = optax_case_step(name)
    params = make_params()
    state = tx.init(params)
    for t in (1, 2):  # some history first, so the kept state is not all zeros
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        updates, state = step(grads, state, params, loss_value(params, t))
        params = jz.apply_updates(params, updates)
    grads = jax.tree.map(lambda p: grad_fn(p, 3, jnp), params)
    grads["dense"]["w"] = None
    updates, new_state = step(grads, state, params, loss_value(params, 3))
    assert updates["dense"]["w"] is None
    new_params = jz.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params["dense"]["w"], params["dense"]["w"])
    pairs = list(zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(new_state)))
    moved = [(a, b) for (path, a), b in pairs if path[-1] == jax.tree_util.DictKey("b")]
    assert moved and all(not np.array_equal(a, b) for a, b in moved[:1])  # the other leaves' momentum did move
    kept = [(a, b) for (path, a), b in pairs if path[-1] == jax.tree_util.DictKey("w")]
    assert len(kept) == 2 if name == "sophia" else len(kept) == 1
    for a, b in kept:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


# --- inject_hyperparams (with donation and bfloat16 storage), vmap -------------------------------


# The Optax cases' options, injected (numbers become state) and run jitted with the state donated.
INJECTED = {
    "momo_adam": (dict(learning_rate=decaying, b1=0.8, b2=0.99, eps=1e-6, lower_bound=0.5, weight_decay=0.0,
                       adapt_lower_bound=True), ()),
    "sophia": (dict(learning_rate=0.05, b1=0.9, b2=0.95, eps=1e-6, weight_decay=decaying, weight_decay_mask=MASK,
                    gamma=0.5, clip_threshold=0.5, update_interval=3, hessian_diagonal_fn=HUTCHINSON_3[jz],
                    mu_dtype=jnp.bfloat16), ("update_interval",)),
}


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_a_donated_step_takes_the_fixed_lower_bound_too(name):
    # Without adapt_lower_bound the step reads the bound from its argument; the state's copy (kept as Optax keeps
    # it) must still be read, or its donated buffer is left out of the program.
    tx, params = getattr(jz, name)(0.1, adapt_lower_bound=False, lower_bound=0.25), make_params()
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(1.0)), donate_argnums=(1,))
    given = tx.init(params)
    _, state = step(params, given, params)
    assert [jax.tree_util.keystr(k) for k, x in jax.tree_util.tree_leaves_with_path(given) if not x.is_deleted()] == []
    assert float(state.lb) == 0.25


@pytest.mark.parametrize("name", list(INJECTED))
def test_injected_and_donated_run_gives_the_plain_trajectory(name):
    hyperparams, static = INJECTED[name]
    injected, state = run(jz.inject_hyperparams(getattr(jz, name), static)(**hyperparams), make_params(), donate=True)
    assert {"b1", "eps"} <= set(state.hyperparams)
    # Not bit for bit: the injected numbers are float32 arrays where the plain run folds Python floats, and
    # Sophia's bfloat16 momentum turns some of those last-bit differences into a flipped rounding (~1e-4 a step).
    assert_trees_close(injected, optax_case(name)[0], rtol=1e-3, atol=1e-5 if name == "momo_adam" else 5e-3)


def test_vmap_over_parameter_sets_equals_separate_runs():
    # Three parameter sets stacked: one vmapped step equals the Optax case's jitted step on each set alone
    # (nothing, not the whole-tree sums nor the loss average, mixes the sets).
    tx, step = optax_case_step("momo_adam")
    batch = [make_params(seed=seed) for seed in range(3)]
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    stacked, batched_state = stack(batch), jax.vmap(tx.init)(stack(batch))
    batched_step = jax.jit(jax.vmap(lambda g, s, p, v: tx.update(g, s, p, value=v)))
    states = [tx.init(p) for p in batch]
    for t in range(1, 4):
        grads = [jax.tree.map(lambda p: grad_fn(p, t, jnp), p) for p in batch]
        values = [loss_value(p, t) for p in batch]
        updates, batched_state = batched_step(stack(grads), batched_state, stacked, jnp.stack(values))
        stacked = jz.apply_updates(stacked, updates)
        for i in range(3):
            u, states[i] = step(grads[i], states[i], batch[i], values[i])
            batch[i] = jz.apply_updates(batch[i], u)
    for i in range(3):
        assert_trees_close(jax.tree.map(lambda x: x[i], stacked), batch[i], rtol=1e-5, atol=1e-6)


def test_sophia_prints_its_win_rate_when_asked(capfd):
    # An Optax transformation without **extra_args as the estimator: it gets no obj_fn, and needs none.
    ones = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                        lambda u, s, p=None: (jax.tree.map(jnp.ones_like, u), s))
    tx = jz.sophia(0.05, hessian_diagonal_fn=ones, verbose=True, print_win_rate_every_n_steps=2)
    run(tx, make_params(), steps=2)
    jax.effects_barrier()
    assert capfd.readouterr().out.count("Sophia optimizer win rate:") == 1
    quiet = jz.sophia(0.05, hessian_diagonal_fn=ones, verbose=True)  # every 0 steps: never
    params = make_params()
    assert "debug_callback" not in str(jax.make_jaxpr(lambda p, s: quiet.update(p, s, p))(params, quiet.init(params)))


# --- shard_map: MoMo's whole-tree sums with axis_name -----------------------------------------------
# That momo and momo_adam with axis_name are exact inside shard_map is tested by their rows in test_sharding.py.

AXES = ("data", "model")
SPECS = {"w": P("data", "model"), "b": P("model")}


def test_shard_map_without_axis_name_raises():
    # Traced only (nothing is compiled), with the params and an abstract state laid out on the mesh.
    mesh = jax.make_mesh((2, 4), AXES, devices=jax.devices("cpu")[:8])
    params = {k: jax.device_put(jnp.zeros(shape), NamedSharding(mesh, SPECS[k])) for k, shape in
              (("w", (8, 16)), ("b", (16,)))}
    for tx in (jz.momo(), jz.momo_adam()):
        shardings = jz.state_shardings(tx, params)
        step = jax.shard_map(lambda p, s: tx.update(p, s, p, value=1.0)[0], mesh=mesh,
                             in_specs=(SPECS, jax.tree.map(lambda s: s.spec, shardings)), out_specs=SPECS)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             jax.eval_shape(tx.init, params), shardings)
        with pytest.raises(ValueError, match="varies over mesh axes"):
            jax.jit(step).trace(params, state)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.momo(-1.0), r"^momo: learning_rate must be >= 0, got -1.0"),
        (lambda: jz.momo(beta=1.0), r"^momo: beta must be in \[0, 1\), got 1.0"),
        (lambda: jz.momo(weight_decay=-0.1), r"^momo: weight_decay must be >= 0, got -0.1"),
        (lambda: jz.momo(lower_bound="x"), r"^momo: lower_bound must be a finite real number"),
        (lambda: jz.momo(adapt_lower_bound=1), r"^momo: adapt_lower_bound must be True or False, got 1"),
        (lambda: jz.momo(mu_dtype=jnp.int8), r"^momo: mu_dtype must be"),
        (lambda: jz.momo(axis_name=3), r"^momo: axis_name must be None"),
        (lambda: jz.momo_adam(b2=1.5), r"^momo_adam: b2 must be in \[0, 1\), got 1.5"),
        (lambda: jz.momo_adam(eps=-1e-8), r"^momo_adam: eps must be >= 0"),
        (lambda: jz.momo_adam(nu_dtype="x"), r"^momo_adam: nu_dtype must be"),
        (lambda: jz.scale_by_momo(beta=-0.1), r"^scale_by_momo: beta must be in \[0, 1\)"),
        (lambda: jz.scale_by_momo_adam(b1=2.0), r"^scale_by_momo_adam: b1 must be in \[0, 1\)"),
        (lambda: jz.sophia(-0.1), r"^sophia: learning_rate must be >= 0"),
        (lambda: jz.sophia(0.1, b1=1.0), r"^sophia: b1 must be in \[0, 1\), got 1.0"),
        (lambda: jz.sophia(0.1, gamma=-1.0), r"^sophia: gamma must be >= 0, got -1.0"),
        (lambda: jz.sophia(0.1, clip_threshold=0.0), r"^sophia: clip_threshold must be > 0, got 0.0"),
        (lambda: jz.sophia(0.1, update_interval=0), r"^sophia: update_interval must be an integer >= 1, got 0"),
        (lambda: jz.sophia(0.1, update_interval=2.5), r"^sophia: update_interval must be an integer >= 1"),
        (lambda: jz.sophia(0.1, weight_decay=-1.0), r"^sophia: weight_decay must be >= 0"),
        (lambda: jz.sophia(0.1, mu_dtype=jnp.int8), r"^sophia: mu_dtype must be"),
        (lambda: jz.sophia(0.1, verbose="yes"), r"^sophia: verbose must be True or False"),
        (lambda: jz.sophia(0.1, hessian_diagonal_fn=lambda g: g), r"^scale_by_sophia: expected gradient transfor"),
        (lambda: jz.scale_by_sophia(eps=float("nan")), r"^scale_by_sophia: eps must be a finite real number"),
        (lambda: jz.hutchinson_estimator_diag_hessian(0), r"^hutchinson_estimator_diag_hessian: random_seed must be"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises((ValueError, TypeError), match=message):
        factory()


def test_missing_extra_arguments_say_what_to_pass():
    params = make_params()
    with pytest.raises(ValueError, match=r"scale_by_momo needs the loss value.*value=loss"):
        jz.momo().update(params, jz.momo().init(params), params)
    with pytest.raises(ValueError, match="scale_by_momo_adam needs the parameters"):
        jz.momo_adam().update(params, jz.momo_adam().init(params), value=1.0)
    with pytest.raises(ValueError, match=r"hutchinson_estimator_diag_hessian needs the objective.*obj_fn="):
        jz.sophia(0.1).update(params, jz.sophia(0.1).init(params), params)
    with pytest.raises(ValueError, match="scale_by_sophia needs the parameters"):
        jz.sophia(0.1).update(params, jz.sophia(0.1).init(params), obj_fn=separable)


def test_a_state_from_another_optimizer_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match="expected MomoState"):
        jz.momo().update(params, jz.momo_adam().init(params), params, value=1.0)



# --- bad input at update -------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [jz.momo, jz.momo_adam], ids=["momo", "momo_adam"])
def test_a_loss_that_is_not_a_scalar_is_refused_naming_its_shape(factory):
    """An unreduced loss broadcast into per-element step sizes, and the state's barf took its shape."""
    tx, params = factory(), jnp.ones(3)
    state = tx.init(params)
    for value, shape in ((jnp.array([1.0, 2.0, 3.0]), r"\(3,\)"), (jnp.array([1.0]), r"\(1,\)")):
        with pytest.raises(ValueError, match=rf"^scale_by_momo\w*: value must be a scalar loss .*shape {shape}; "
                                             r"pass the reduced loss .*loss.reshape\(\(\)\)"):
            tx.update(params, state, params, value=value)
    with pytest.raises(ValueError, match=r"value must be a scalar loss .*shape \(3,\)"):  # traced: the same
        jax.eval_shape(lambda v: tx.update(params, state, params, value=v), jnp.ones(3))
    with pytest.raises(ValueError, match="value must be a real scalar loss"):
        tx.update(params, state, params, value="1.0")
    _, new_state = tx.update(params, state, params, value=jnp.asarray(1.0))  # a 0-d array is a scalar
    assert new_state.barf.shape == ()


def test_eps_zero_gives_a_zero_step_where_a_gradient_is_zero_not_nan():
    """0 / (0 + sqrt(0)) was NaN in momo_adam (and through the norm every entry), 0 / max(gamma 0, 0) in sophia."""
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([0.0, 0.3]), "b": jnp.zeros(1)}
    for tx, extra in ((jz.momo_adam(0.1, eps=0.0), dict(value=1.0)),
                      (jz.sophia(0.1, eps=0.0, weight_decay=0.0), dict(obj_fn=separable)),
                      (jz.scale_by_sophia(eps=0.0, gamma=0.0), dict(obj_fn=separable))):
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params, **extra)
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((updates, state))), updates
            assert float(updates["w"][0]) == 0.0 and float(updates["b"][0]) == 0.0
            assert float(updates["w"][1]) != 0.0  # the non-zero gradient still moves
    # A gradient taken through a step stays finite too.
    tx = jz.sophia(0.1, eps=0.0, weight_decay=0.0)
    slope = jax.grad(lambda g: jnp.sum(tx.update(g, tx.init(params), params, obj_fn=separable)[0]["w"] ** 2))(grads)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(slope))


@pytest.mark.parametrize("factory, extra, field", [
    (jz.momo, dict(value=1.0), r"the momentum \(state.exp_avg\)"),
    (jz.momo_adam, dict(value=1.0), r"the momentum \(state.exp_avg\)"),
    (lambda: jz.sophia(0.1), dict(obj_fn=lambda p: jnp.sum(p["w"] ** 2)), r"the momentum \(state.mu\)"),
], ids=["momo", "momo_adam", "sophia"])
def test_a_state_built_for_other_shapes_is_refused_naming_the_paths(factory, extra, field):
    """momo's state grew to the new shape (broadcast), sophia's failed in lax.cond."""
    tx = factory()
    state = tx.init({"w": jnp.zeros((1, 3))})
    params = {"w": jnp.ones((4, 3))}
    with pytest.raises(ValueError, match=rf"the updates tree does not match {field}: shapes differ at "
                                         r"\['w'\] \(4, 3\) vs \(1, 3\)"):
        tx.update({"w": jnp.full((4, 3), 0.5)}, state, params, **extra)


def test_sophia_steps_integer_and_bool_params_in_float32_with_a_zero_curvature():
    """jax.jvp refused the integer probes (Optax's too): now their curvature estimate is 0, and a model holding a
    frozen integer leaf steps its float leaves as without it."""
    loss = lambda p: jnp.sum(p["w"] ** 2 * p["n"].astype(jnp.float32))
    params = {"w": jnp.array([1.0, -2.0]), "n": jnp.array([2, 3], jnp.int32), "f": jnp.array([True, False])}
    grads = {"w": jnp.array([4.0, -12.0]), "n": None, "f": None}
    tx = jz.sophia(0.1, update_interval=1)
    updates, state = tx.update(grads, tx.init(params), params, obj_fn=loss)
    alone_params = {"w": params["w"]}
    alone, alone_state = tx.update({"w": grads["w"]}, tx.init(alone_params), alone_params,
                                   obj_fn=lambda p: jnp.sum(p["w"] ** 2 * jnp.array([2.0, 3.0])))
    assert_trees_equal(updates["w"], alone["w"])
    assert_trees_equal(state[0].nu["w"], alone_state[0].nu["w"])
    assert updates["n"] is None and state[0].nu["n"].dtype == jnp.float32
    # An integer update steps in float32, as jz.adam's.
    hutchinson = jz.hutchinson_estimator_diag_hessian()
    estimate, _ = hutchinson.update(None, hutchinson.init(params), params, obj_fn=loss)
    assert estimate["n"].dtype == jnp.float32 and not bool(jnp.any(estimate["n"])) and not bool(jnp.any(estimate["f"]))
    int_updates, _ = tx.update({"w": grads["w"], "n": jnp.array([1, -1], jnp.int32), "f": None}, tx.init(params),
                               params, obj_fn=loss)
    assert int_updates["n"].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(int_updates["n"])))


@pytest.mark.parametrize("factory", [
    lambda: jz.momo(mu_dtype=jnp.ones(2)),
    lambda: jz.momo_adam(nu_dtype=np.ones(2, np.float16)),
    lambda: jz.sophia(0.1, nu_dtype=jnp.float32(1.0)),
    lambda: jz.adam(1e-3, mu_dtype=jnp.ones(2)),
])
def test_a_dtype_argument_given_an_array_is_refused(factory):
    """jnp.dtype(x) reads x.dtype, so an array was taken as its dtype (mu_dtype=jnp.ones(2) as float32)."""
    with pytest.raises(ValueError, match=r"_dtype must be a dtype such as jnp.bfloat16, got an array of dtype "
                                         r"\w+ and shape \(\d*,?\) \(\w+\); to take an array's dtype, pass x.dtype"):
        factory()
