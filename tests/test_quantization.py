"""Block-wise 8-bit moments: the quantizer against its float64 reference, memory, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo import quantization, storage
from tests import reference

Q8 = jz.Blockwise8Bit(max_shards=1)  # blocks of up to 256 whatever the device count


# Jitted, as an optimizer's step runs them: eager 8-bit operations compile one by one for each shape,
# which made up most of this file's time.
QUANTIZE = jax.jit(quantization.quantize, static_argnums=(1, 2, 3))
DEQUANTIZE = jax.jit(quantization.dequantize)


def quantize(x, num_blocks, signed, step=0):
    """(codes shaped like x, scales (..., num_blocks), the stored leaf) of ``x`` in ``num_blocks`` blocks."""
    stored = QUANTIZE(jnp.asarray(x), 1, x.shape[-1] // num_blocks, signed, step)
    codes, scales = quantization.unpack(stored)
    return np.asarray(codes).reshape(x.shape), np.asarray(scales), stored


def moments(shape, seed=0, signed=True):
    # Magnitudes spread over eight decades, as Adam's moments are, with the sign random.
    rng = np.random.default_rng(seed)
    x = 10.0 ** rng.uniform(-8, 0, shape) * rng.choice([-1.0, 1.0], shape)
    return (x if signed else np.abs(x)).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape, num_blocks", [((8, 512), 2), ((4, 300), 3), ((3, 5, 1000), 8), ((4096,), 16)])
def test_quantize_matches_float64_reference(signed, shape, num_blocks):
    x = moments(shape, seed=len(shape), signed=signed)
    codes, our_scales, q = quantize(x, num_blocks, signed)
    ours = codes.astype(np.int64)
    assert q.dtype == (jnp.int8 if signed else jnp.uint8) and codes.shape == shape
    assert q.shape == shape[:-1] + (1, shape[-1] // num_blocks + 4, num_blocks)  # one group
    down, scales = reference.quantize_blockwise(x, num_blocks, signed, code=rounded("down"))
    up, _ = reference.quantize_blockwise(x, num_blocks, signed, code=rounded("up"))
    np.testing.assert_array_equal(our_scales, scales.astype(np.float32))
    # Stochastic rounding: each code is one of the two neighbours of x / scale (float32 x / scale
    # can fall on the other side of a grid value than float64's: then it is off by one more).
    outside = (ours != down) & (ours != up)
    assert np.mean(outside) < 1e-3 and np.abs(ours - down)[outside].max(initial=0) <= 2
    between = (down != up) & (down != 0)  # between two codes (below the smallest one, ups are as rare as |x| is small)
    assert 0.3 < np.mean(ours[between] == up[between]) < 0.7  # both directions happen
    restored = reference.dequantize_blockwise(ours, scales, signed)
    np.testing.assert_allclose(np.asarray(DEQUANTIZE(q)), restored, rtol=1e-6, atol=0)


def rounded(direction):
    return lambda y, signed: reference.float_code(y, signed, rounding=direction)


@pytest.mark.parametrize("signed", [True, False])
def test_stochastic_rounding_is_unbiased(signed):
    """A value between two codes, at 2**16 positions: the mean of what is stored is the value."""
    value = 0.3 if not signed else -0.3  # between the codes 0.28125 and 0.3125
    # vary the values by ulps, so that the mean covers many distinct draws
    x = (value * (1 + 1e-3 * np.random.default_rng(0).uniform(-1, 1, (64, 1024)))).astype(np.float32)
    x[:, ::256] = 1.0 if not signed else -1.0  # each block's absmax, stored exactly
    _, _, q = quantize(x, 4, signed)
    stored = np.asarray(DEQUANTIZE(q), np.float64)[np.abs(x) < 1]
    assert set(np.abs(np.unique(stored))) == {0.28125, 0.3125}  # only the two neighbours
    assert abs(stored.mean() - value) < 3e-3 * abs(value)  # about four standard errors
    nearest = reference.float_value(reference.float_code(np.array([value]), signed), signed)[0]
    assert abs(nearest - value) > 0.03 * abs(value)  # what rounding to nearest would store everywhere


def test_stochastic_rounding_below_the_smallest_signed_code_is_unbiased():
    """Between 0 and the smallest code (1.25 * 2**-16 of the scale), a first moment rounds up with probability
    |x| / smallest: the rounding of the float bits took the gap to start at the float below that code and stored 0
    for it, so that everything below 1.125 * 2**-16 read back as 0 (a mean of 0.22 * x at 1.15 * 2**-16)."""
    smallest = reference.float_value(np.array([1]), True)[0]
    for fraction in (0.1, 0.5, 0.75):
        # Spread by 30%, so that the mean covers many distinct draws (the random bits hash the value's bits).
        x = (-fraction * smallest * np.random.default_rng(0).uniform(0.7, 1.3, (64, 1024))).astype(np.float32)
        x[:, ::256] = -1.0  # each block's absmax
        _, _, q = quantize(x, 4, True)
        stored = np.asarray(DEQUANTIZE(q), np.float64)[np.abs(x) < 0.5]
        assert set(np.unique(stored)) <= {0.0, -smallest}
        p = np.mean(np.abs(x[np.abs(x) < 0.5])) / smallest
        assert abs(np.mean(stored == -smallest) - p) < 4 * np.sqrt(p * (1 - p) / stored.size), (fraction, stored.mean())


def test_a_slowly_decaying_second_moment_is_not_lost():
    """Zero gradients except one large element per block: the others' v must decay by b2 each step."""
    tx = jz.scale_by_adam(b2=0.999, mu_dtype=Q8, nu_dtype=Q8)
    rng = np.random.default_rng(100)
    g = np.zeros((64, 512), np.float32)  # 32,000 walks: their mean moves by ~0.3% between seeds (ratio ~1.01)
    # One element keeps each block's maximum (and so its scale) steady. The scales differ between blocks, so
    # the stored values do too: elements of equal value round alike, and with few distinct values the mean
    # below would measure a handful of rounding draws instead of the rounding's bias.
    g[:, ::256] = rng.uniform(1, 2, (64, 2))
    state = tx.init({"w": jnp.zeros(g.shape)})
    step = jax.jit(tx.update)
    warm = np.random.default_rng(0).uniform(0.5, 1.5, g.shape).astype(np.float32)
    _, state = step({"w": jnp.asarray(np.maximum(warm, g))}, state)
    v0 = np.asarray(storage.read_leaf(state.nu["w"]), np.float64)
    for _ in range(300):
        _, state = step({"w": jnp.asarray(g)}, state)
    v = np.asarray(storage.read_leaf(state.nu["w"]), np.float64)
    others = g == 0
    # Each element's stored v walks randomly around its true value; their mean must not drift.
    # Rounding to nearest would keep every code as it was: a mean ratio of 1 / 0.999**300 = 1.35.
    ratio = v[others].sum() / (v0[others].sum() * 0.999**300)
    assert 0.97 < ratio < 1.03, ratio


@pytest.mark.parametrize("signed", [True, False])
def test_every_code_decodes_to_its_reference_value(signed):
    codes = np.arange(-128, 128) if signed else np.arange(256)  # the reserved non-finite code included
    dtype = jnp.int8 if signed else jnp.uint8
    decode, encode = jax.jit(quantization.decode), jax.jit(quantization.encode, static_argnums=1)
    values = decode(jnp.asarray(codes, dtype))
    np.testing.assert_array_equal(np.asarray(values, np.float64), reference.float_value(codes, signed))
    assert np.sum(~np.isfinite(np.asarray(values))) == 1  # only the reserved code
    # and encoding each value gives its code back
    np.testing.assert_array_equal(np.asarray(encode(values, signed), np.int64), codes)
    bad = encode(jnp.asarray([np.nan, np.inf, -np.inf], jnp.float32), signed)
    assert np.all(np.asarray(bad) == reference.NON_FINITE_CODE[signed])  # every non-finite value: the reserved code


@pytest.mark.parametrize("signed", [True, False])
def test_quantization_error_is_bounded(signed):
    x = moments((64, 512), seed=3, signed=signed)
    _, scales, q = quantize(x, 2, signed)
    error = np.abs(np.asarray(DEQUANTIZE(q), np.float64) - x)
    scale = np.repeat(np.asarray(scales, np.float64), 256, axis=-1)
    smallest = reference.float_value(np.array([1]), signed)[0] * scale
    in_range = np.abs(x) >= smallest
    # at most one 1/8 mantissa step, relative, inside the range; below it, at most the smallest code
    assert np.all(error[in_range] <= 2**-3 * np.abs(x[in_range]) * (1 + 1e-6))
    assert np.all(error[~in_range] <= smallest[~in_range])
    if not signed:
        assert np.all(np.asarray(DEQUANTIZE(q))[x > 0] > 0)  # no positive moment becomes 0


def test_requantizing_a_dequantized_moment_changes_nothing():
    _, _, q = quantize(moments((16, 768)), 3, True)
    for step in (0, 1, 7):  # whatever the random draws: a value on the grid rounds to itself
        _, _, again = quantize(np.asarray(DEQUANTIZE(q)), 3, True, step)
        np.testing.assert_array_equal(np.asarray(again), np.asarray(q))


# Compiled once per shape for the NaN and inf cases.
ADAM_8BIT = jz.scale_by_adam(mu_dtype=Q8, nu_dtype=Q8)
ADAM_8BIT_INIT, ADAM_8BIT_UPDATE = jax.jit(ADAM_8BIT.init), jax.jit(ADAM_8BIT.update)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("shape", [(16, 512), (16, 600), (64, 4096)])
def test_a_non_finite_gradient_never_reads_back_as_a_finite_moment(bad, shape):
    """fp32 Adam keeps a NaN or inf moment where the gradient had one; 8-bit Adam must not store a finite value.

    (An earlier block maximum let XLA:CPU skip NaNs, so a NaN gradient was stored as a finite m and v = 0.)
    """
    g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    where = [(1, 7), (2, 0), (2, 255), (3, 256), (4, 599 % shape[1])]
    for row, column in where:
        g[row, column] = bad
    g[5, :200] = bad
    _, state = ADAM_8BIT_UPDATE({"w": jnp.asarray(g)}, ADAM_8BIT_INIT({"w": jnp.zeros(shape)}))
    for moment in (state.mu["w"], state.nu["w"]):
        stored = np.asarray(DEQUANTIZE(moment))
        for row, column in [*where, (5, 100)]:
            assert not np.isfinite(stored[row, column]), (row, column, stored[row, column])
        np.testing.assert_array_equal(np.isfinite(stored[6:]), True)  # rows without one are untouched


def test_an_overflowing_square_in_a_block_of_zeros_reads_back_as_inf_and_the_next_step_is_finite():
    """A block whose only non-zero second moments are infinite has a scale of 0: its infinities read back as NaN
    (``inf * 0``) and the next step wrote NaN into the params. As with float32 moments: +inf, and an update of 0."""
    g = np.zeros((16, 512), np.float32)
    g[1, 7] = 3e19  # its square overflows in a block of zeros
    g[2, :256] = 1e30  # a whole block overflows
    state = ADAM_8BIT_INIT({"w": jnp.zeros(g.shape)})
    _, state = ADAM_8BIT_UPDATE({"w": jnp.asarray(g)}, state)
    nu = np.asarray(DEQUANTIZE(state.nu["w"]))
    assert nu[1, 7] == np.inf and np.all(nu[2, :256] == np.inf), (nu[1, 7], nu[2, :4])
    assert np.all(nu[3:] == 0) and np.all(nu[1, 8:] == 0)
    updates, _ = ADAM_8BIT_UPDATE({"w": jnp.full(g.shape, 1e-3)}, state)
    updates = np.asarray(updates["w"])
    assert np.all(np.isfinite(updates)), np.argwhere(~np.isfinite(updates))[:4]
    assert updates[1, 7] == 0 and np.all(updates[2, :256] == 0)


def test_adam_step_matches_float64_reference_step_by_step():
    """Each step: dequantize the state, Adam in float64, quantize with the reference; compare with ours."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    tx = jz.scale_by_adam(b1, b2, eps, mu_dtype=Q8, nu_dtype=Q8)
    params = {"w": jnp.zeros((16, 512))}
    state = tx.init(params)
    rng = np.random.default_rng(0)
    column_scale = 10.0 ** rng.uniform(-4, 0, 512)
    step = jax.jit(tx.update)
    for t in range(1, 8):
        g = (rng.standard_normal((16, 512)) * column_scale).astype(np.float32)
        m_old = reference.dequantize_blockwise(*codes_and_scales(state.mu["w"]), True)
        v_old = reference.dequantize_blockwise(*codes_and_scales(state.nu["w"]), False)
        m = b1 * m_old + (1 - b1) * g
        v = b2 * v_old + (1 - b2) * g.astype(np.float64) ** 2
        expected_update = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        m_down, m_scales = reference.quantize_blockwise(m, 2, True, code=rounded("down"))
        m_up, _ = reference.quantize_blockwise(m, 2, True, code=rounded("up"))
        v_down, v_scales = reference.quantize_blockwise(v, 2, False, code=rounded("down"))
        v_up, _ = reference.quantize_blockwise(v, 2, False, code=rounded("up"))

        updates, state = step({"w": jnp.asarray(g)}, state)
        np.testing.assert_allclose(np.asarray(updates["w"]), expected_update, rtol=2e-5, atol=1e-6)
        (m_codes, m_ours), (v_codes, v_ours) = codes_and_scales(state.mu["w"]), codes_and_scales(state.nu["w"])
        np.testing.assert_allclose(m_ours, m_scales, rtol=1e-6)
        np.testing.assert_allclose(v_ours, v_scales, rtol=1e-6)
        for codes, down, up in [(m_codes, m_down, m_up), (v_codes, v_down, v_up)]:
            outside = (codes != down) & (codes != up)
            assert np.mean(outside) < 2e-3 and np.abs(codes - down)[outside].max(initial=0) <= 2, t


def codes_and_scales(stored):
    """(int64 codes shaped like the param, float64 scales) of a stored 8-bit leaf."""
    codes, scales = quantization.unpack(stored)
    return np.asarray(codes, np.int64).reshape(*codes.shape[:-2], -1), np.asarray(scales, np.float64)


def adam_moments(spread, steps=200, shape=(64, 1024), seed=0):
    """Adam's float64 moments after ``steps`` noisy gradients; each element's scale is
    :math:`10^{N(-2, \\text{spread})}`, so ``spread`` is how many decades the magnitudes in a block span."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.normal(-2, spread, shape)
    signal = rng.standard_normal(shape) * scale
    m = np.zeros(shape)
    v = np.zeros(shape)
    for _ in range(steps):
        g = signal + 3 * scale * rng.standard_normal(shape)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
    return m, v


def direction_error(m, v, quantize_m, quantize_v):
    """Median relative error of Adam's direction m / (sqrt(v) + eps) after quantizing m and v."""
    exact = m / (np.sqrt(v) + 1e-8)
    approx = quantize_m(m) / (np.sqrt(quantize_v(v)) + 1e-8)
    return np.median(np.abs(approx - exact) / np.abs(exact))


@pytest.mark.parametrize("spread", [0.0, 0.3, 1.0])
def test_float_code_against_the_dynamic_tree_code_on_adam_moments(spread):
    """The paper's table code against ours, both with blocks of 256, on Adam's moments.

    Measured median direction errors (ours / table): 2.2% / 1.2% when every element
    of a block has the same scale, 2.2% / 1.7% at 0.3 decades of spread, 2.4% / 11%
    at one decade: the table is finer near the block's maximum, ours keeps its
    precision at every magnitude.
    """
    m, v = adam_moments(spread)
    num_blocks = m.shape[-1] // 256

    def ours(signed):
        return lambda x: reference.dequantize_blockwise(*reference.quantize_blockwise(x, num_blocks, signed), signed)

    def dynamic_tree(signed):
        table = reference.dynamic_tree_values(signed)
        index = lambda y, _signed: reference.nearest_code(y, table)
        value = lambda codes, _signed: table[codes]
        return lambda x: reference.dequantize_blockwise(
            *reference.quantize_blockwise(x, num_blocks, signed, code=index), signed, value=value
        )

    ours_error = direction_error(m, v, ours(True), ours(False))
    tree_error = direction_error(m, v, dynamic_tree(True), dynamic_tree(False))
    assert ours_error < 0.025
    assert ours_error < 2 * tree_error
    if spread >= 1:
        assert ours_error < tree_error / 3, (ours_error, tree_error)


def test_adam_8bit_state_bytes_per_parameter():
    shape = (1024, 4096)
    state = jz.scale_by_adam(mu_dtype=Q8, nu_dtype=Q8).init({"w": jnp.zeros(shape)})
    n = shape[0] * shape[1]
    scales = shape[0] * (shape[1] // 256) * 4
    assert storage.state_bytes(state) == 4 + 2 * (n + scales)  # count, codes, scales
    assert storage.state_bytes(state) / n <= 2.1
    fp32 = jz.scale_by_adam().init({"w": jnp.zeros(shape)})
    assert storage.state_bytes(fp32) == 4 + 8 * n


def test_leaves_below_min_size_stay_float32_and_others_are_quantized():
    params = {
        "small": jnp.zeros((63, 64), jnp.bfloat16),
        "edge": jnp.zeros((16, 256)),
        "scalar": jnp.zeros(()),
        "wide": jnp.zeros((2, 5000)),
    }
    state = jz.scale_by_adam(mu_dtype=Q8, nu_dtype=Q8).init(params)
    assert state.mu["small"].dtype == jnp.float32 and state.mu["scalar"].dtype == jnp.float32
    assert state.mu["edge"].dtype == jnp.int8 and state.mu["edge"].shape == (16, 1, 256 + 4, 1)
    assert state.nu["wide"].dtype == jnp.uint8 and state.nu["wide"].shape == (2, 1, 250 + 4, 20)  # 5000 = 20 x 250


def test_bfloat16_moments_for_every_moment_keeping_transform():
    bf16 = jnp.bfloat16
    params = {"w": jnp.ones((8, 8))}
    grads = {"w": jnp.full((8, 8), 0.5)}
    for tx in [
        jz.trace(0.9, accumulator_dtype=bf16),
        jz.scale_by_adam(mu_dtype=bf16, nu_dtype=bf16),
        jz.scale_by_amsgrad(mu_dtype=bf16, nu_dtype=bf16),
        jz.scale_by_rms(nu_dtype=bf16),
        jz.scale_by_stddev(mu_dtype=bf16, nu_dtype=bf16),
        jz.scale_by_rss(accumulator_dtype=bf16),
        jz.scale_by_adadelta(accumulator_dtype=bf16),
    ]:
        updates, state = tx.update(grads, tx.init(params))
        floats = [x for x in jax.tree.leaves(state) if x.ndim]
        assert floats and all(x.dtype == bf16 for x in floats), tx
        assert np.all(np.isfinite(np.asarray(updates["w"], np.float32)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_size": 0}, "block_size must be between 16 and 65536, got 0"),
        ({"block_size": 8}, "block_size must be between 16 and 65536, got 8"),
        ({"block_size": 1 << 17}, "block_size must be between 16 and 65536"),
        ({"block_size": 256.0}, "block_size must be an integer, got 256.0"),
        ({"block_size": True}, "block_size must be an integer"),
        ({"min_size": -1}, "min_size must be at least 0, got -1"),
    ],
)
def test_bad_block_size_or_min_size_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jz.Blockwise8Bit(**kwargs)


@pytest.mark.parametrize(
    "value, message",
    [
        (jnp.int8, "mu_dtype must be a floating dtype such as jnp.bfloat16.*Blockwise8Bit"),
        (jnp.float8_e4m3fn, "mu_dtype=float8_e4m3fn has no per-block scale.*Blockwise8Bit"),
        ("8bit", "mu_dtype must be a floating dtype"),
        (jz.Blockwise8Bit, "mu_dtype must be a floating dtype"),  # the class, not an instance
    ],
)
def test_bad_storage_dtype_raises(value, message):
    with pytest.raises(ValueError, match=message):
        jz.scale_by_adam(mu_dtype=value)


def test_complex_params_with_8bit_storage_raise_naming_the_path():
    with pytest.raises(ValueError, match=r"\['z'\].*Blockwise8Bit stores real floating moments.*complex64"):
        jz.scale_by_adam(mu_dtype=Q8).init({"z": jnp.zeros((64, 128), jnp.complex64)})


@pytest.mark.parametrize("signed", [True, False])
def test_finite_values_never_take_the_reserved_code(signed):
    """Every block's largest element encodes 1.0 (or just below), the top code, with every rounding draw.

    Over many blocks and draws, every finite value reads back finite and within one code of itself: only
    an infinity or a NaN takes the reserved code.
    """
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 2.0, (64, 4096)).astype(np.float32) * (1 if not signed else rng.choice([-1, 1], (64, 4096)))
    for step in range(20):
        _, _, q = quantize(x, 16, signed, step)
        stored = np.asarray(DEQUANTIZE(q))
        assert np.all(np.isfinite(stored)), step
        np.testing.assert_allclose(stored, x, rtol=0.13)


def test_a_zero_moment_is_encoded_on_the_device_not_by_the_compiler():
    """jit(init) must encode its zeros when it runs: XLA's constant folder took four minutes on a 16M moment.

    The optimization barrier in Blockwise8Bit.create is what keeps the constant from the folder.
    """
    tx = jz.adam(1e-3, mu_dtype=Q8, nu_dtype=Q8)
    assert "optimization_barrier" in jax.jit(tx.init).lower({"w": jnp.zeros((64, 1024))}).as_text()


def test_an_eager_init_and_step_compile_a_few_programs_per_leaf_not_one_per_operation():
    # nnx.Optimizer initialises eagerly. Each of the ~20 operations of an 8-bit encoding compiled once per leaf
    # shape: ten 8-bit leaves of different shapes took 25 s to initialise (XLA's default flags), now 3.
    requests = []  # programs lowered to be compiled (or read from .jax_cache/)

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            requests.append(event)

    params = {"a": jnp.ones((41, 256)), "b": jnp.ones((43, 512))}  # shapes no other test compiles for
    tx = jz.scale_by_adam(mu_dtype=jz.Blockwise8Bit(min_size=0), nu_dtype=jz.Blockwise8Bit(min_size=0))
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        state = tx.init(params)
        at_init = len(requests)
        tx.update(params, state)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert all(quantization.is_encoded(x) for x in (*state.mu.values(), *state.nu.values()))
    assert at_init <= 8, at_init  # 2 leaves, 2 moments: one encoding each, and the zeros (was 96)
    assert len(requests) - at_init <= 40, len(requests) - at_init  # mostly Adam's operations on 2 shapes (was 78)
