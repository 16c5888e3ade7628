"""Low-precision params that keep small updates: round_params_stochastically (bfloat16 and float16 params rounded
stochastically through the updates) and compensate_params_rounding (Kahan summation). Float64 references (given the
same random numbers), unbiased draws, training where rounding to nearest stalls (plain pytrees and Flax NNX), other
leaves passed through, storage, jit/vmap/donation, sharded jit and shard_map against one device, inject_hyperparams,
bad input. (Orbax resume: tests/test_checkpoint.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo import rounding
from jaxopt_zoo.transforms.constrain import RoundParamsStochasticallyState
from tests import reference
from tests.conftest import assert_trees_equal, assert_vmap_matches_separate_runs, make_params

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
# The two ways of keeping small updates, for the tests they share; the second with a storage option.
KEEPERS = {"stochastic": jz.round_params_stochastically,
           "compensated": lambda: jz.compensate_params_rounding(jz.StochasticBF16())}


def uniforms(sums: np.ndarray, step: int, dtype: str) -> np.ndarray:
    """The uniform numbers in [0, 1) the rounding to ``dtype`` draws for each float32 value at ``step``, in the
    reference's convention (up when below the dropped fraction): bfloat16 adds 16 random bits below its kept bits,
    float16 compares 24 random bits with the fraction."""
    bits = np.asarray(rounding.random_bits(jax.lax.bitcast_convert_type(jnp.asarray(sums), jnp.uint32), step))
    if dtype == "bfloat16":
        return (2**16 - 1 - (bits >> 16).astype(np.float64)) / 2**16
    return (bits >> 8).astype(np.float64) / 2**24


def params_and_updates(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Params of ``dtype`` over its whole range (subnormal, zero, near the largest, infinite) and float32 updates
    from far below half a spacing to several spacings, with a NaN, an overflow and a sign change."""
    rng = np.random.default_rng(1)
    finfo = jnp.finfo(DTYPES[dtype])
    n = 3000
    # From float16's subnormals; bfloat16's (and its steps near them) are float32 subnormals, which XLA flushes to 0
    # (rounding to nearest too).
    smallest = finfo.smallest_subnormal if dtype == "float16" else 2.0**-100
    magnitudes = np.exp2(rng.uniform(np.log2(float(smallest)), np.log2(float(finfo.max)) - 1, n))
    params = (rng.choice([-1.0, 1.0], n) * magnitudes).astype(DTYPES[dtype])
    params = np.concatenate([np.asarray(params, np.float32), [0.0, -0.0, float(finfo.max), np.inf, 1.0, 1.0, 1.0]])
    relative = np.exp2(rng.uniform(-16, 3, n)) * rng.choice([-1.0, 1.0], n)
    updates = np.concatenate([params[:n] * relative, [1e-8, -3e-3, float(finfo.max) / 64, 1.0, np.nan, -1.0, -2.5]])
    return params.astype(DTYPES[dtype]), updates.astype(np.float32)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_matches_the_float64_reference_given_its_random_numbers(dtype):
    params, updates = params_and_updates(dtype)
    tx = jz.round_params_stochastically()
    update = jax.jit(lambda u, s, p: tx.update(u, s, p)[0])
    with np.errstate(over="ignore"):  # the largest float16 or bfloat16 plus a 64th of it overflows (to inf)
        sums = np.asarray(params, np.float32) + updates  # in float32, as the transformation adds them
    for step in (0, 1, 7):
        ours = update(jnp.asarray(updates), RoundParamsStochasticallyState(jnp.int32(step)), jnp.asarray(params))
        assert ours.dtype == jnp.float32
        expected = reference.round_params_stochastically(params, updates, uniforms(sums, step, dtype), dtype)
        np.testing.assert_array_equal(np.asarray(ours, np.float64), expected, err_msg=f"step {step}")
        # Applied (by ours, by Optax's), the params are the reference's stochastic rounding, in their dtype.
        rounded = reference.stochastic_rounding(sums, uniforms(sums, step, dtype), dtype)
        for applied in (jz.apply_updates(params, ours), optax.apply_updates(params, ours)):
            assert applied.dtype == DTYPES[dtype]
            np.testing.assert_array_equal(np.asarray(applied, np.float64), rounded, err_msg=f"step {step}")


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_draws_are_unbiased_and_only_the_two_neighbours(dtype):
    # Updates at several fractions of a spacing from params at several magnitudes, both signs.
    bits = {"bfloat16": 8, "float16": 11}[dtype]
    bases = np.array([1.0, -1.5, 3e-3, -700.0])
    spacing = np.exp2(np.floor(np.log2(np.abs(bases))) - (bits - 1))
    fractions = np.array([0.01, 0.25, 0.5, 0.7, 0.99])
    params = np.repeat(bases, len(fractions)).astype(DTYPES[dtype])
    updates = (np.sign(bases)[:, None] * fractions * spacing[:, None]).ravel().astype(np.float32)
    tx, n = jz.round_params_stochastically(), 4000
    draw = jax.jit(jax.vmap(lambda step: jz.apply_updates(
        params, tx.update(jnp.asarray(updates), RoundParamsStochasticallyState(step), jnp.asarray(params))[0])))
    draws = np.asarray(draw(jnp.arange(n, dtype=jnp.int32)), np.float64)
    exact = np.asarray(params, np.float64) + updates
    low = np.asarray(params, np.float64)
    high = low + np.sign(bases).repeat(len(fractions)) * spacing.repeat(len(fractions))
    assert np.all((draws == low) | (draws == high))
    p = fractions[None, :].repeat(len(bases), 0).ravel()
    standard_error = np.abs(high - low) * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - exact), 5 * standard_error)


def descend(tx, w0, target, steps):
    """``steps`` jitted steps of ``tx`` on 0.5 * sum((w - target)**2); the last params as float32."""

    def step(carry, _):
        w, state = carry
        updates, state = tx.update((w.astype(jnp.float32) - target).astype(w.dtype), state, w)  # as jax.grad gives
        return (jz.apply_updates(w, updates), state), None

    (w, _), _ = jax.lax.scan(step, (w0, tx.init(w0)), length=steps)
    return w.astype(jnp.float32)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_low_precision_params_train_where_rounding_to_nearest_stalls(dtype):
    # Every step moves w by lr (w - target) = 5e-4 at first, below half the spacing of params in [1, 2) (2**-8 for
    # bfloat16, 2**-11 = 4.9e-4 for float16): rounded to nearest, they never move.
    lr, steps = {"bfloat16": (1e-2, 300), "float16": (1e-3, 3000)}[dtype]
    w0 = jnp.asarray((1 + np.arange(128) / 128), DTYPES[dtype])
    target = w0.astype(jnp.float32) - 0.05 * (1 + np.arange(128) % 3)
    sgd, rounded = jz.sgd(lr), jz.chain(jz.sgd(lr), jz.round_params_stochastically())
    run = jax.jit(lambda: [descend(tx, w0, target, steps) for tx in (sgd, rounded)] + [
        descend(sgd, w0.astype(jnp.float32), target, steps)])
    nearest, stochastic, float32 = run()
    loss = lambda w: float(jnp.mean((w - target) ** 2))
    start = loss(w0.astype(jnp.float32))
    assert loss(nearest) == start
    assert loss(float32) < 0.01 * start and loss(stochastic) < 0.01 * start


class BFloat16Model(nnx.Module):
    def __init__(self, w0):
        self.w = nnx.Param(w0)

    def __call__(self, target):
        return 0.5 * jnp.sum((self.w[...].astype(jnp.float32) - target) ** 2)


@pytest.mark.parametrize("keeper", list(KEEPERS))
def test_nnx_optimizer_trains_a_bfloat16_model_as_the_plain_pytree_run(keeper):
    w0 = jnp.asarray(1 + np.arange(128) / 128, jnp.bfloat16)
    target = w0.astype(jnp.float32) - 0.05
    tx = jz.chain(jz.sgd(1e-2), KEEPERS[keeper]())
    model = BFloat16Model(w0)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: m(target))(model)
        optimizer.update(model, grads)

    for _ in range(40):
        step(model, optimizer)
    assert model.w[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(model.w[...], np.float32), np.asarray(descend(tx, w0, target, 40)))
    assert float(jnp.mean(model.w[...].astype(jnp.float32) - w0.astype(jnp.float32))) < -0.01  # it moved


def test_other_leaves_keep_their_updates_and_none_stays_none():
    params = {"f32": jnp.ones(3), "c64": jnp.ones(2, jnp.complex64), "i32": jnp.arange(3), "none": None,
              "bf16": jnp.ones(2, jnp.bfloat16)}
    updates = {"f32": jnp.full(3, 1e-3), "c64": jnp.full(2, 1e-3j, jnp.complex64), "i32": jnp.zeros(3, jnp.int32),
               "none": None, "bf16": None}
    tx = jz.round_params_stochastically()
    out, state = tx.update(updates, tx.init(params), params)
    for name in ("f32", "c64", "i32"):
        assert out[name] is updates[name]
    assert out["none"] is None and out["bf16"] is None
    assert int(state.count) == 1


@pytest.mark.parametrize("keeper", list(KEEPERS))
def test_jit_with_donation_and_vmap_equal_eager_steps(keeper):
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), make_params())
    # float32 momentum (bfloat16 by default, like the params): under jit XLA may skip rounding bfloat16 intermediates.
    tx = jz.chain(jz.sgd(3e-3, momentum=0.9, accumulator_dtype=jnp.float32), KEEPERS[keeper]())

    def step(params, state, t):
        grads = jax.tree.map(lambda p: jnp.sin(t + p.astype(jnp.float32)), params)
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    donated = jax.jit(step, donate_argnums=(0, 1))
    eager, jitted = (params, tx.init(params)), (jax.tree.map(jnp.copy, params), tx.init(params))
    for t in range(6):
        eager, jitted = step(*eager, t), donated(*jitted, t)
        assert_trees_equal(jitted, eager)
    assert_vmap_matches_separate_runs(KEEPERS[keeper](), [
        jax.tree.map(lambda p: p.astype(jnp.bfloat16), make_params(seed=s)) for s in range(3)], rtol=0, atol=0)


@pytest.mark.parametrize("keeper", list(KEEPERS))
def test_sharded_jit_and_shard_map_equal_one_device(keeper):
    mesh = jax.make_mesh((2, 4), ("data", "model"), devices=jax.devices("cpu")[:8])
    specs = {"w": P("data", "model"), "b": P("model")}
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(8, 16)), jnp.bfloat16), "b": jnp.asarray(rng.normal(size=16),
                                                                                         jnp.bfloat16)}
    grads = {"w": jnp.asarray(rng.normal(size=(8, 16)) * 1e-3, jnp.float32),
             "b": jnp.asarray(rng.normal(size=16) * 1e-3, jnp.float32)}
    tx = KEEPERS[keeper]()

    def steps(params, state, grads):
        for _ in range(3):
            updates, state = tx.update(grads, state, params)
            params = jz.apply_updates(params, updates)
        return params, state

    expected = jax.jit(steps)(params, tx.init(params), grads)
    put = lambda tree: {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
    sharded_params, sharded_grads = put(params), put(grads)
    state = jz.init_sharded(tx, sharded_params)
    jz.check_state_shardings(tx, sharded_params, state)  # a compensation laid out like its param
    assert_trees_equal(jax.jit(steps)(sharded_params, state, sharded_grads), expected)
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, sharded_params))
    mapped = jax.jit(jax.shard_map(steps, mesh=mesh, in_specs=(specs, state_specs, specs),
                                   out_specs=(specs, state_specs)))
    assert_trees_equal(mapped(sharded_params, state, sharded_grads), expected)


@pytest.mark.parametrize("keeper", ["round_params_stochastically", "compensate_params_rounding"])
def test_inject_hyperparams_gives_the_plain_steps(keeper):
    params = {"w": jnp.asarray([1.0, 1.5, -3.0], jnp.bfloat16)}
    plain, injected = getattr(jz, keeper)(), jz.inject_hyperparams(getattr(jz, keeper))()
    updates = {"w": jnp.full(3, 2e-3)}
    ours, state = injected.update(updates, injected.init(params), params)
    theirs, _ = plain.update(updates, plain.init(params), params)
    assert_trees_equal(ours, theirs)
    assert state.hyperparams == {}


def test_bad_input_names_the_transformation():
    tx = jz.round_params_stochastically()
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match="^round_params_stochastically needs the parameters"):
        tx.update({"w": jnp.ones(2)}, tx.init(params))
    with pytest.raises(ValueError, match="^round_params_stochastically: the updates tree does not match the params"):
        tx.update({"v": jnp.ones(2)}, tx.init(params), params)
    with pytest.raises(jz.base.StateMismatchError, match="^round_params_stochastically: the state does not match"):
        tx.update({"w": jnp.ones(2)}, jz.sgd(0.1).init(params), params)


# --- compensate_params_rounding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, compensation_dtype, update_dtype", [
    ("bfloat16", None, "float32"), ("float16", None, "float32"), ("bfloat16", "float32", "float32"),
    ("bfloat16", None, "bfloat16")])
def test_compensated_params_match_the_float64_reference(dtype, compensation_dtype, update_dtype):
    rng = np.random.default_rng(3)
    params = np.concatenate([rng.normal(size=200) * np.exp2(rng.integers(-8, 8, 200)), [0.0, -0.0, 1.0, 1.0]])
    params = np.asarray(params.astype(DTYPES[dtype]), np.float32)
    # Updates from far below half a spacing to several spacings, the last param with a NaN at step 5.
    updates = [(rng.normal(size=params.size) * np.abs(params) * np.exp2(rng.uniform(-14, 2, params.size)))
               .astype(DTYPES.get(update_dtype, np.float32)) for _ in range(12)]
    updates[5][-1] = np.nan
    tx = jz.compensate_params_rounding(None if compensation_dtype is None else jnp.float32)

    @jax.jit
    def step(p, state, u):
        u, state = tx.update(u, state, p)
        return jz.apply_updates(p, u), state

    p, state = jnp.asarray(params, DTYPES[dtype]), tx.init(jnp.asarray(params, DTYPES[dtype]))
    # The compensation of a float16 param is float32 by default (a float16 one would flush small values).
    expected = reference.compensated_params(params, updates, dtype,
                                            compensation_dtype or ("float32" if dtype == "float16" else None),
                                            update_dtype)
    for t, (u, (theta, c)) in enumerate(zip(updates, expected)):
        p, state = step(p, state, jnp.asarray(u))
        np.testing.assert_array_equal(np.asarray(p, np.float64), theta, err_msg=f"params at step {t}")
        np.testing.assert_array_equal(np.asarray(state.compensation, np.float64), c, err_msg=f"c at step {t}")
    assert p.dtype == DTYPES[dtype] and state.compensation.dtype == (jnp.float32 if compensation_dtype or
                                                                     dtype == "float16" else DTYPES[dtype])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_compensated_params_follow_float32_params_where_rounding_to_nearest_stalls(dtype):
    lr, steps = {"bfloat16": (1e-2, 300), "float16": (1e-3, 3000)}[dtype]
    w0 = jnp.asarray((1 + np.arange(128) / 128), DTYPES[dtype])
    target = w0.astype(jnp.float32) - 0.05 * (1 + np.arange(128) % 3)
    kahan = jz.chain(jz.sgd(lr), jz.compensate_params_rounding())
    compensated, float32 = jax.jit(lambda: (descend(kahan, w0, target, steps),
                                            descend(jz.sgd(lr), w0.astype(jnp.float32), target, steps)))()
    # Within a spacing of the float32 run everywhere (its params are float32's, rounded, plus what c carries).
    spacing = 2.0 ** -{"bfloat16": 7, "float16": 10}[dtype]
    np.testing.assert_array_less(np.abs(np.asarray(compensated) - np.asarray(float32)), spacing)


def test_compensation_storage_leaves_and_bad_input():
    params = {"bf16": jnp.ones(3, jnp.bfloat16), "f32": jnp.ones(2), "i32": jnp.arange(2),
              "c64": jnp.ones(2, jnp.complex64), "frozen": jnp.ones(2, jnp.bfloat16)}
    updates = {"bf16": jnp.full(3, 1e-3), "f32": jnp.full(2, 1e-9), "i32": jnp.zeros(2, jnp.int32),
               "c64": jnp.full(2, 1e-3j, jnp.complex64), "frozen": None}
    for storage, stored in ((None, jnp.bfloat16), (jz.StochasticBF16(), jnp.bfloat16), (jnp.float32, jnp.float32)):
        tx = jz.compensate_params_rounding(storage)
        state = tx.init(params)
        out, new = tx.update(updates, state, params)
        assert new.compensation["bf16"].dtype == stored
        assert float(out["bf16"][0]) == 0.0 and abs(float(new.compensation["bf16"][0]) - 1e-3) < 1e-5  # carried
        assert float(out["f32"][0]) == float(jnp.float32(1.0) + jnp.float32(1e-9)) - 1.0  # float32's rounding too
        assert out["i32"] is updates["i32"] and out["c64"] is updates["c64"] and out["frozen"] is None
        assert new.compensation["frozen"] is state.compensation["frozen"]  # a None update keeps its leaf
    tx = jz.compensate_params_rounding()
    with pytest.raises(ValueError, match="^compensate_params_rounding needs the parameters"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
    with pytest.raises(jz.base.StateMismatchError, match="^compensate_params_rounding: the state does not match"):
        tx.update({"w": jnp.ones(2)}, jz.sgd(0.1, momentum=0.9).init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="^compensate_params_rounding: compensation_dtype"):
        jz.compensate_params_rounding(jnp.int8)


@pytest.mark.parametrize("keeper", list(KEEPERS))
def test_updates_keep_their_dtype_inside_optaxs_conditional_wrappers(keeper):
    # bfloat16 gradients of bfloat16 params: the updates stay bfloat16 (float32 ones broke optax.apply_if_finite's
    # and conditionally_mask's cond, whose other branch keeps the incoming dtype), landing where float32 ones would.
    params = {"w": jnp.asarray(1 + np.arange(64) / 64, jnp.bfloat16)}
    grads = {"w": jnp.asarray(np.linspace(-3e-3, 3e-3, 64), jnp.bfloat16)}
    build = lambda: jz.chain(jz.sgd(1.0), KEEPERS[keeper]())  # noqa: E731
    plain = build()
    updates, _ = plain.update(grads, plain.init(params), params)
    wide, _ = plain.update(jax.tree.map(lambda g: g.astype(jnp.float32), grads), plain.init(params), params)
    assert updates["w"].dtype == jnp.bfloat16 and wide["w"].dtype == jnp.float32
    assert_trees_equal(jz.apply_updates(params, updates), jz.apply_updates(params, wide))
    for wrapped in (optax.apply_if_finite(build(), 3), optax.conditionally_mask(build(), lambda count: count >= 0)):
        assert_trees_equal(jax.jit(wrapped.update)(grads, wrapped.init(params), params)[0], updates)


@pytest.mark.parametrize("keeper", list(KEEPERS))
def test_a_gradient_through_the_step_passes_the_rounding_as_the_identity(keeper):
    # d(theta + u')/du = 1, the derivative of the rounding's expectation (stochastic rounding's bit operations gave 0).
    params = jnp.asarray([1.0, 2.0, -3.0], jnp.bfloat16)
    tx = KEEPERS[keeper]()
    moved = lambda u: jz.apply_updates(params, tx.update(u, tx.init(params), params)[0]).astype(jnp.float32)  # noqa
    np.testing.assert_array_equal(jax.jacobian(moved)(jnp.asarray([0.3, -0.7, 1e-3])), np.eye(3))
    # At every order: the Hessian of half the squared params is the identity (second derivatives were 0).
    half_square = lambda u: 0.5 * jnp.sum(moved(u) ** 2)  # noqa: E731
    np.testing.assert_array_equal(jax.hessian(half_square)(jnp.asarray([0.3, -0.7, 1e-3])), np.eye(3))


def test_compensation_leaves_non_finite_sums_as_rounding_to_nearest_does():
    params = jnp.asarray([jnp.inf, jnp.inf, -jnp.inf, 1.0, 1.0], jnp.bfloat16)
    updates = jnp.asarray([1.0, -jnp.inf, 2.0, jnp.nan, jnp.inf])
    tx = jz.compensate_params_rounding()
    out, _ = tx.update(updates, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(jz.apply_updates(params, out), np.float32),
                                  np.asarray(jz.apply_updates(params, updates), np.float32))  # inf, nan, -inf, nan, inf
    # A step that overflows, then a finite one: the param stays infinite (an infinite compensation made it NaN).
    p, state = jnp.asarray([3e38], jnp.bfloat16), tx.init(jnp.asarray([3e38], jnp.bfloat16))
    for u in (jnp.asarray([1e38]), jnp.asarray([1.0])):
        out, state = tx.update(u, state, p)
        p = jz.apply_updates(p, out)
    assert float(p[0]) == np.inf


def test_a_python_float_update_leaf_is_taken_as_an_array():
    # AttributeError: 'float' object has no attribute 'astype' (sgd and keep_params_nonnegative take such leaves).
    from jaxopt_zoo import rounding

    params = {"a": jnp.asarray(1.0, jnp.bfloat16)}
    for tx in (jz.round_params_stochastically(), jz.compensate_params_rounding()):
        updates, _ = tx.update({"a": 0.5}, tx.init(params), params)
        assert float(updates["a"]) == 0.5  # 1.5 is a bfloat16: nothing to round
    assert float(rounding.to_bfloat16(1.0, 0)) == 1.0 and float(rounding.to_float16(0.5, 0)) == 0.5
