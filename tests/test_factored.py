"""Factored second moments (scale_by_factored_rms, adafactor; scale_by_sm3, sm3): Optax bit for bit,
float64 references, storage, None leaves, jit/vmap/inject_hyperparams and shard_map.

The transforms are imported from their modules (jz.adafactor and jz.sm3 are the public aliases)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.quantization import is_encoded
from jaxopt_zoo.transforms.factored import FactoredState, scale_by_factored_rms
from jaxopt_zoo.transforms.sm3 import ScaleBySM3State, scale_by_sm3
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
from tests.test_optimizers import assert_updates_close, eight_bit_params, summed_updates

MASK = {"conv": False, "dense": {"w": True, "b": False}, "scale": True}
Q8 = jz.Blockwise8Bit()
STEPS = 20


def decaying(step):
    return 0.05 / (1.0 + 0.1 * step)


def tree_params(dtype=jnp.float32, scalar=True):
    """conftest's matrix, vector and scalar, and a 3-dim leaf whose factored axes are its last two."""
    params = make_params(dtype)
    params["conv"] = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4)), dtype)
    if not scalar:  # Optax's sm3 raises IndexError on scalar params
        del params["scale"]
    return params


# Every option on and off: jitted float32 trajectories and states against Optax's, bit for bit.
OPTAX_CASES = {
    "adafactor": (lambda m: m.adafactor(), True),
    "adafactor_options": (
        lambda m: m.adafactor(decaying, 3, 0.6, 0, False, 0.5, 0.9, jnp.bfloat16, decaying, 1e-3, True, MASK), True),
    "sm3": (lambda m: m.sm3(0.05), False),
    # Both transforms with their options, in one program: a capped decay (Zhai et al.), then SM3 with b2 < 1.
    "scale_by_factored_rms_decay_rate_fn+scale_by_sm3_b2": (
        lambda m: m.chain(m.scale_by_factored_rms(True, 0.5, 0, 2, 1e-20, lambda t, d: jnp.minimum(0.9, 1.0 - (t + 1.0) ** -d)),
                          m.scale_by_sm3(0.5, 0.9, 1e-3), m.scale(-0.05)), False),
}


class _Ours:  # jz with the transforms of this family under their names
    def __getattr__(self, name):
        return {"scale_by_factored_rms": scale_by_factored_rms, "scale_by_sm3": scale_by_sm3}.get(name) or getattr(jz, name)


OURS = _Ours()


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_matches_optax_bit_for_bit(name):
    factory, scalar = OPTAX_CASES[name]
    params = tree_params(scalar=scalar)
    (our_iterates, our_state), (their_iterates, their_state) = run_together([
        factory(OURS),
        factory(optax),
    ], params, steps=STEPS)
    assert_trees_equal(our_iterates, their_iterates)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert not np.allclose(np.asarray(our_iterates[-1]["conv"]), np.asarray(params["conv"]))


# dtype_momentum=None: Optax's float32 momentum of a complex param drops its imaginary part (ours stays complex64).
COMPLEX_OPTAX_CASES = {
    "adafactor": lambda m: m.adafactor(),
    "adafactor_options": lambda m: m.adafactor(decaying, 3, 0.6, 0, True, 0.5, 0.9, None, decaying, 1e-3, True, MASK),
    "adafactor_unfactored": lambda m: m.adafactor(0.1, factored=False, clipping_threshold=None),
}


@pytest.mark.parametrize("name", list(COMPLEX_OPTAX_CASES))
def test_complex_params_match_optax_bit_for_bit(name):
    # Both square a complex gradient as |g|^2 and keep the moments complex with a zero imaginary part; ours refused
    # complex params, saying Optax squared them as reals.
    params = tree_params()
    params = {"scale": params.pop("scale")} | jax.tree.map(lambda x: jax.lax.complex(x, jnp.cos(3 * x)), params)
    (ours, our_state), (theirs, their_state) = run_together([COMPLEX_OPTAX_CASES[name](m) for m in (jz, optax)], params,
                                                            steps=STEPS)
    assert_trees_equal(ours, theirs)
    assert_trees_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))
    assert all(not np.any(np.imag(x)) for x in jax.tree.leaves(our_state[0]) if jnp.iscomplexobj(x))
    assert not np.allclose(np.asarray(ours[-1]["conv"]), np.asarray(params["conv"]))


def _masked(with_decay, without):
    # The decayed trajectory where MASK is True, the undecayed one elsewhere.
    return [jax.tree.map(lambda keep, a, b: a if keep else b, MASK, x, y) for x, y in zip(with_decay, without)]


# Each rule against its float64 NumPy reference (written from the papers), eagerly in float64.
REFERENCE_CASES = {
    "adafactor_options": (
        lambda: jz.adafactor(decaying, 3, 0.6, 0, True, 0.5, 0.9, jnp.float64, 1e-2, 1e-3, weight_decay_mask=MASK),
        lambda p: _masked(
            run_reference(reference.adafactor(decaying, 3, 0.6, 0, True, 0.5, 0.9, 1e-2, 1e-3), p, STEPS),
            run_reference(reference.adafactor(decaying, 3, 0.6, 0, True, 0.5, 0.9, None, 1e-3), p, STEPS),
        ),
    ),
    "sm3": (lambda: jz.sm3(0.05), lambda p: run_reference(reference.sm3(0.05), p, STEPS)),
    "scale_by_sm3_b2": (
        lambda: jz.chain(scale_by_sm3(0.5, 0.9, 1e-3), jz.scale(-0.05)),
        lambda p: run_reference(reference.sm3(0.05, 0.5, 0.9, 1e-3), p, STEPS),
    ),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_matches_float64_reference(name, x64):
    ours, expected = REFERENCE_CASES[name]
    params = tree_params(jnp.float64)
    iterates, _ = run_ours(ours(), params, STEPS)
    assert_trees_close(iterates, expected(params), rtol=1e-9, atol=1e-13)


def test_state_layout_is_optaxs_but_sm3s_accumulators_are_flat():
    params = tree_params()
    state = scale_by_factored_rms(min_dim_size_to_factor=3).init(params)
    assert isinstance(state, FactoredState)
    shapes = jax.tree.map(jnp.shape, (state.v_row, state.v_col, state.v))
    assert shapes[0] == {"conv": (2, 3), "dense": {"w": (3,), "b": (1,)}, "scale": (1,)}
    assert shapes[1] == {"conv": (2, 4), "dense": {"w": (4,), "b": (1,)}, "scale": (1,)}
    assert shapes[2] == {"conv": (1,), "dense": {"w": (1,), "b": (4,)}, "scale": ()}
    sm3_state = scale_by_sm3().init(params)
    assert isinstance(sm3_state, ScaleBySM3State)
    # One entry per param leaf in jax.tree.leaves order (conv, dense/b, dense/w, scale): Optax's leaves, in its order.
    assert jax.tree.map(jnp.shape, sm3_state.mu) == (((2,), (3,), (4,)), ((4,),), ((3,), (4,)), ((),))
    ours, theirs = (tx.init(tree_params(scalar=False))[0] for tx in (scale_by_sm3(), optax.scale_by_sm3()))
    assert [x.shape for x in jax.tree.leaves(ours)] == [x.shape for x in jax.tree.leaves(theirs)]


def test_step_offset_restarts_the_decay_schedule():
    # Fine-tuning from step 3 (the state's count): the first decay is 1 - 1^(-c) = 0, so v = g^2 + eps,
    # as in Optax (whose decay is NaN while the count is below the offset).
    params = tree_params()
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
    tx = scale_by_factored_rms(step_offset=3, min_dim_size_to_factor=3)
    _, state = jax.jit(tx.update)(grads, tx.init(params)._replace(count=jnp.int32(3)), params)
    np.testing.assert_allclose(state.v["dense"]["b"], grads["dense"]["b"] ** 2 + 1e-30, rtol=1e-6)
    np.testing.assert_allclose(state.v_row["dense"]["w"], np.mean(np.asarray(grads["dense"]["w"]) ** 2, axis=1), rtol=1e-6)
    assert int(state.count) == 4
    # From a fresh state (count 0 < 3) every step takes the schedule's first decay, 0 (Optax's were NaN).
    params = {"w": params["dense"]["w"], "b": params["dense"]["b"]}
    grads = {"w": grads["dense"]["w"], "b": grads["dense"]["b"]}
    for tx in (scale_by_factored_rms(step_offset=3, min_dim_size_to_factor=3), jz.adafactor(1e-2, 3, decay_offset=2.5)):
        state, update = tx.init(params), jax.jit(tx.update)
        for t in range(4):
            updates, state = update(grads, state, params)
            assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates)), (tx, t)
    np.testing.assert_allclose(state[0].v["b"], grads["b"] ** 2 + 1e-30, rtol=1e-6)  # the same gradient each step


def test_sm3_first_step_and_scalar_params():
    # nu = g^2 on the first step: u = (1 - b1) g / sqrt(g^2 + eps), i.e. (1 - b1) sign(g) up to eps; 0 where g = 0.
    grads = {"w": jnp.asarray([[1.0, -2.0], [0.0, 4.0]]), "s": jnp.asarray(-3.0)}
    tx = scale_by_sm3(0.9, eps=0.0)
    updates, state = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], [[0.1, -0.1], [0.0, 0.1]], rtol=1e-6)
    np.testing.assert_allclose(updates["s"], -0.1, rtol=1e-6)
    s, w = state.mu  # in the order of jax.tree.leaves(grads)
    np.testing.assert_array_equal(w[0], [4.0, 16.0])  # each row's largest g^2
    np.testing.assert_array_equal(s[0], 9.0)


# --- storage options ---------------------------------------------------------------------------

# name: factory of the storage, (int8, uint8) 8-bit leaves per quantized param
STORED = {
    "adafactor_variance": (lambda s: jz.adafactor(1e-2, factored=False, variance_dtype=s), (0, 1)),
}


@pytest.mark.parametrize("name", list(STORED))
def test_eight_bit_state(name):
    factory, counts = STORED[name]
    params = eight_bit_params()
    ours, state = summed_updates(factory(Q8), params)
    encoded = [x.dtype for x in jax.tree.leaves(state) if is_encoded(x)]
    assert (encoded.count(jnp.int8), encoded.count(jnp.uint8)) == counts
    expected, full_state = summed_updates(factory(None), params)
    assert_updates_close(ours, expected, rtol=0.05)
    assert jz.storage.state_bytes(state) < 0.5 * jz.storage.state_bytes(full_state)


def test_bfloat16_factors_and_variance():
    params = tree_params()
    tx = jz.adafactor(0.05, 3, factors_dtype=jz.StochasticBF16(), variance_dtype=jnp.bfloat16)
    (iterates, state), (expected, _) = run_together([tx, jz.adafactor(0.05, 3)], params, steps=6)
    moments = [x for x in jax.tree.leaves(state) if x.dtype != jnp.int32]
    assert len(moments) == 12 and all(x.dtype == jnp.bfloat16 for x in moments)
    assert_trees_close(iterates[-1], expected[-1], rtol=0, atol=0.02)


@pytest.mark.parametrize("factory", [lambda: jz.adafactor(0.1, 3, momentum=0.5), lambda: jz.sm3(0.1)], ids=["adafactor", "sm3"])
def test_none_update_keeps_param_and_state_bit_for_bit(factory):
    tx = factory()
    params = tree_params()
    grads = jax.tree.map(lambda p: grad_fn(p, 1, jnp), params)
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params)  # some history first, so the kept state is not all zeros
    updates, new_state = update(dict(grads, conv=None, dense={"w": None, "b": grads["dense"]["b"]}), state, params)
    assert updates["conv"] is None and updates["dense"]["w"] is None
    assert not np.array_equal(jz.apply_updates(params, updates)["scale"], params["scale"])
    frozen = lambda path: bool({jax.tree_util.DictKey("w"), jax.tree_util.DictKey("conv")} & set(path))
    # SM3's accumulators are one entry per param leaf, outside the params' tree: those of the frozen leaves too.
    frozen_leaves = [i for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]) if frozen(path)]
    kept = lambda s: [x for path, x in jax.tree_util.tree_flatten_with_path(s)[0] if frozen(path)] + [
        x for part in s if isinstance(part, ScaleBySM3State) for i in frozen_leaves for x in part.mu[i]]
    assert len(kept(state)) >= 4 and any(np.any(np.asarray(x) != 0) for x in kept(state))
    for a, b in zip(kept(state), kept(new_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


# --- jit with donation, vmap, inject_hyperparams -----------------------------------------------


def test_jitted_donated_steps_match_undonated_steps():
    # Both rules in one program; Adafactor's unused (1,) places are separate buffers, so all can be donated.
    tx = jz.chain(jz.adafactor(1e-2, 3, momentum=0.9), scale_by_sm3(0.5, mu_dtype=jz.StochasticBF16()))
    params = tree_params()
    donated = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    plain = jax.jit(lambda p, s, g: tx.update(g, s, p))
    plain_params, plain_state = params, tx.init(params)
    jit_params, jit_state = params, tx.init(params)
    for t in range(1, 4):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), plain_params)
        u, plain_state = plain(plain_params, plain_state, grads)
        plain_params = jz.apply_updates(plain_params, u)
        given = jit_state
        u, jit_state = donated(jit_params, jit_state, grads)
        jit_params = jz.apply_updates(jit_params, u)
        assert all(x.is_deleted() for x in jax.tree.leaves(given))
    assert_trees_equal(jit_params, plain_params)
    assert_trees_equal(jax.tree.leaves(jit_state), jax.tree.leaves(plain_state))


def test_vmap_over_parameter_sets_equals_separate_runs():
    tx = jz.chain(scale_by_factored_rms(min_dim_size_to_factor=3), jz.scale(-1e-2))
    batch = [tree_params(), jax.tree.map(lambda x: 2.0 * x + 0.5, tree_params())]
    assert_vmap_matches_separate_runs(tx, batch, steps=2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "factory, hyperparams",
    [
        (jz.adafactor, dict(learning_rate=0.05, decay_rate=0.6, clipping_threshold=0.5, momentum=0.8, eps=1e-20)),
        (lambda b1, b2, eps: scale_by_sm3(b1, b2, eps), dict(b1=0.5, b2=0.9, eps=1e-3)),
    ],
    ids=["adafactor", "scale_by_sm3"],
)
def test_inject_hyperparams_gives_the_plain_trajectory(factory, hyperparams):
    params = tree_params()
    expected, _ = run_ours(factory(**hyperparams), params, steps=4)
    # min_dim_size_to_factor decides the state's shapes: it stays static (jz.static_only; traced, it raises).
    injected, state = run_ours(jz.inject_hyperparams(factory)(**hyperparams), params, steps=4)
    assert_trees_close(injected, expected, rtol=1e-6, atol=1e-7)
    assert set(state.hyperparams) - {"decay_offset"} == set(hyperparams) - {"min_dim_size_to_factor"}
    if factory is jz.adafactor:
        with pytest.raises(ValueError, match="adafactor: min_dim_size_to_factor decides which params are factored"):
            jax.jit(lambda m: jz.adafactor(0.05, min_dim_size_to_factor=m).init(params))(2)


# --- axis_name: factored means, slice maxima and every RMS over shards ------------------------------

AXES = ("data", "model")
SPECS = {"w": P("data", "model"), "b": P("model"), "s": P(), "conv": P(None, "data", "model")}


def test_shard_map_with_axis_name_matches_one_device():
    mesh = jax.make_mesh((2, 4), AXES, devices=jax.devices("cpu")[:8])
    rng = np.random.default_rng(2)
    whole = {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
             "s": jnp.asarray(0.7), "conv": jnp.asarray(rng.normal(size=(3, 2, 8)), jnp.float32)}
    place = lambda tree: jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), tree, SPECS)
    # Both rules in one compiled program: Adafactor's factored means and RMS, then SM3's slice maxima.
    make = lambda a: jz.chain(jz.adafactor(0.05, 2, clipping_threshold=0.5, axis_name=a), scale_by_sm3(0.5, axis_name=a))
    tx = make(AXES)
    params, expected = place(whole), whole
    state, expected_state = jz.init_sharded(tx, params), make(None).init(whole)
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))

    def apply(p, s, g, tx=tx):
        updates, s = tx.update(g, s, p)
        return jz.apply_updates(p, updates), s

    in_shard_map = lambda f: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(SPECS, state_specs, SPECS), out_specs=(SPECS, state_specs)))
    local, one_device = in_shard_map(apply), jax.jit(lambda p, s, g: apply(p, s, g, make(None)))
    for t in (1, 2):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), expected)
        params, state = local(params, state, place(grads))
        expected, expected_state = one_device(expected, expected_state, grads)
        assert_trees_close(params, expected, rtol=2e-5, atol=1e-6)
    for without in (jz.adafactor(0.05, 2, clipping_threshold=None, multiply_by_parameter_scale=False), scale_by_sm3()):
        state = jax.eval_shape(without.init, params)  # tracing raises: no state needs to be built
        state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(without, params))
        with pytest.raises(ValueError, match="varies over mesh axes"):  # without axis_name: a shard's answer
            jax.eval_shape(in_shard_map(lambda p, s, g, tx=without: apply(p, s, g, tx)), params, state, place(grads))
    # A (4, 8) param in (2, 2) shards: which axis its row factor lacks cannot be told from the shard.
    tx, tied = make(AXES), dict(whole, w=jnp.ones((4, 8)))
    state = jax.eval_shape(tx.init, place(tied))
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, place(tied)))
    with pytest.raises(ValueError, match=r"local shape \(2, 2\) fits its factors .* along several axes"):
        jax.eval_shape(in_shard_map(apply), place(tied), state, place(tied))


@pytest.mark.parametrize("axis_types", [("Auto", "Auto"), ("Explicit", "Explicit"), ("Explicit", "Auto")])
def test_an_eager_init_lays_the_accumulators_out_as_a_step_returns_them(axis_types):
    # nnx.Optimizer builds its state eagerly: where an axis is Auto, SM3's accumulators came out replicated, the
    # first jitted step returned them split like their axes, and the step compiled a second time.
    mesh = jax.make_mesh((2, 4), AXES, axis_types=tuple(getattr(jax.sharding.AxisType, t) for t in axis_types),
                         devices=jax.devices("cpu")[:8])
    shapes = {"w": (8, 8), "b": (8,), "s": (), "conv": (3, 2, 8)}
    params = {k: jax.device_put(jnp.ones(shape), NamedSharding(mesh, SPECS[k])) for k, shape in shapes.items()}
    tx = jz.sm3(0.1)
    specs = lambda state: [x.sharding.spec for x in jax.tree.leaves(state) if x.ndim]  # noqa: E731
    with jax.set_mesh(mesh):
        eager = tx.init(params)
        assert specs(eager) == specs(jz.init_sharded(tx, params))
        assert specs(jax.jit(lambda s: tx.update(params, s, params)[1])(eager)) == specs(eager)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: jz.adafactor(-1.0), r"^adafactor: learning_rate must be >= 0, got -1.0"),
        (lambda: jz.adafactor(decay_rate=1.5), r"^adafactor: decay_rate must be in \(0, 1\], got 1.5"),
        (lambda: jz.adafactor(min_dim_size_to_factor=2.5), r"^adafactor: min_dim_size_to_factor must be an integer"),
        (lambda: jz.adafactor(clipping_threshold=0.0), r"^adafactor: clipping_threshold must be > 0, got 0.0"),
        (lambda: jz.adafactor(momentum=1.0), r"^adafactor: momentum must be in \[0, 1\), got 1.0"),
        (lambda: jz.adafactor(dtype_momentum=jnp.int8), r"^adafactor: dtype_momentum must be"),
        (lambda: jz.adafactor(eps=-1e-30), r"^adafactor: eps must be >= 0"),
        (lambda: jz.adafactor(factored=1), r"^adafactor: factored must be True or False"),
        (lambda: jz.adafactor(multiply_by_parameter_scale=None), r"^adafactor: multiply_by_parameter_scale must be True or False"),
        (lambda: jz.adafactor(weight_decay_rate=-1.0), r"^adafactor: weight_decay_rate must be >= 0"),
        (lambda: scale_by_factored_rms(decay_rate=0.0), r"^scale_by_factored_rms: decay_rate must be in \(0, 1\], got 0.0"),
        (lambda: scale_by_factored_rms(decay_rate_fn=3), r"^scale_by_factored_rms: decay_rate_fn must be None or a function"),
        (lambda: scale_by_factored_rms(step_offset=-1), r"^scale_by_factored_rms: step_offset must be >= 0"),
        (lambda: scale_by_factored_rms(factors_dtype="x"), r"^scale_by_factored_rms: factors_dtype must be"),
        (lambda: scale_by_factored_rms(axis_name=3), r"^scale_by_factored_rms: axis_name must be None"),
        (lambda: jz.sm3(-0.1), r"^sm3: learning_rate must be >= 0, got -0.1"),
        (lambda: jz.sm3(0.1, momentum=1.0), r"^sm3: momentum must be in \[0, 1\), got 1.0"),
        (lambda: jz.sm3(0.1, nu_dtype=jnp.int8), r"^sm3: nu_dtype must be"),
        (lambda: scale_by_sm3(b2=1.5), r"^scale_by_sm3: b2 must be in \[0, 1\], got 1.5"),
        (lambda: scale_by_sm3(eps=-1.0), r"^scale_by_sm3: eps must be >= 0"),
    ],
)
def test_bad_hyperparameters_name_the_function_the_argument_and_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_bad_updates_and_states_are_refused():
    params = tree_params()
    tx = jz.adafactor(0.1, 3)
    with pytest.raises(ValueError, match="expected FactoredState"):
        scale_by_factored_rms().update(params, scale_by_sm3().init(params), params)
    bad = dict(params, conv=jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"scale_by_factored_rms: a gradient of shape \(2, 3, 5\) does not match its state"):
        tx.update(bad, tx.init(params), params)
    with pytest.raises(ValueError, match=r"scale_by_sm3: the updates tree does not match the momentum"):
        jz.sm3(0.1).update(bad, jz.sm3(0.1).init(params), params)
    with pytest.raises(ValueError, match=r"^sm3: complex params are not supported \(as in Optax; a leaf of "
                       r"dtype complex64\); wrap the optimizer in jz\.combine\.split_real_and_imaginary\.$"):
        jz.sm3(0.1).init({"z": jnp.ones(3, jnp.complex64)})


def test_zero_epsilon_gives_a_zero_step_where_the_second_moment_is_zero():
    # With eps=0 a zero gradient entry (full v) or an all-zero row (factored: an embedding row not in the batch)
    # had a zero denominator: 0 * inf = NaN, which the update clipping then spread over the whole leaf.
    g = jnp.array([[0.5, 0.0], [0.2, -0.1]])
    full = scale_by_factored_rms(factored=False, epsilon=0.0)
    updates, _ = full.update(g, full.init(g), None)
    expected = jnp.where(g == 0, 0.0, jnp.sign(g))  # the first step's v is g^2: g / |g|
    np.testing.assert_array_equal(np.asarray(updates), np.asarray(expected))
    factored = scale_by_factored_rms(epsilon=0.0, min_dim_size_to_factor=1)
    rows = jnp.array([[0.5, 0.3, -0.2], [0.0, 0.0, 0.0]])
    updates, _ = factored.update(rows, factored.init(rows), None)
    assert np.all(np.isfinite(updates)) and np.all(np.asarray(updates[1]) == 0) and np.all(np.asarray(updates[0]) != 0)
    updates, _ = factored.update(jnp.zeros((2, 3)), factored.init(rows), None)  # every row zero: the mean of r is 0
    np.testing.assert_array_equal(np.asarray(updates), np.zeros((2, 3)))
    tx = jz.adafactor(0.01, eps=0.0, min_dim_size_to_factor=1)
    for grads in (g, rows):
        assert np.all(np.isfinite(tx.update(grads, tx.init(grads), jnp.ones_like(grads))[0]))
