"""The storage protocol (``jaxopt_zoo.storage``) through the public API, end to end.

* Flax NNX carries every storage kind (8-bit leaves are single arrays), eagerly
  and under ``nnx.jit``, bit for bit like plain pytrees; Orbax resumes it.
* Stochastic rounding draws anew each step: a moment decaying below one code
  gap per step still decays (8-bit and ``StochasticBF16`` second moments,
  8-bit momentum).
* The default ``Blockwise8Bit()`` fits the shards of any mesh of this machine:
  sharded ``jit`` and ``shard_map`` runs equal the single-device run bit for bit.
* One huge finite gradient freezes its own element only, and ``apply_if_finite``
  skips the step that overflows the state.
* Edge shapes (zero-size, ``(N, 1)``), ``tree.map_params`` on 8-bit codes, and
  ``StochasticBF16``'s rounding rule against a float64 NumPy reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import assert_trees_equal, grad_fn


def read(leaf):
    """The float values of a stored moment leaf: 8-bit codes decoded, arrays as they are."""
    try:
        from jaxopt_zoo.storage import read_leaf
    except ImportError:  # the layout before the storage protocol: QuantizedArray(codes, scales)
        from jaxopt_zoo.quantization import dequantize, is_quantized

        return dequantize(leaf) if is_quantized(leaf) else leaf
    return read_leaf(leaf)


def host_read(leaf) -> np.ndarray:
    return np.asarray(read(leaf), np.float64)


def state_bytes(tree) -> int:
    try:
        from jaxopt_zoo.storage import state_bytes as count
    except ImportError:
        from jaxopt_zoo.quantization import state_bytes as count
    return count(tree)


def host_gradients(params, t: int):
    """conftest's gradient field in float64 on the host, cast to float32: the same for every run with equal params."""
    return jax.tree.map(lambda p: np.asarray(grad_fn(np.asarray(p, np.float64), t), np.float32), params)


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    return step


# --- 1. Flax NNX ----------------------------------------------------------------------------------

STORAGES = {  # built lazily: StochasticBF16 is new
    "none": lambda: None,
    "bfloat16": lambda: jnp.bfloat16,
    "stochastic_bf16": lambda: jz.StochasticBF16(),
    "8bit": lambda: jz.Blockwise8Bit(),
    "8bit_min_size_0": lambda: jz.Blockwise8Bit(min_size=0),
}
NNX_STEPS = 3


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        # kernel: 4096 elements, 8-bit with the default min_size; bias: 8-bit with min_size=0 only
        self.hidden = nnx.Linear(16, 256, rngs=rngs)


def nnx_optimizer(storage, seed: int = 0):
    model = Net(nnx.Rngs(seed))
    return model, nnx.Optimizer(model, jz.adamw(0.1, mu_dtype=storage, nu_dtype=storage), wrt=nnx.Param)


def nnx_update(jit: bool):
    update = lambda model, optimizer, grads: optimizer.update(model, grads)
    return nnx.jit(update) if jit else update


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("kind", list(STORAGES))
def test_nnx_optimizer_matches_plain_pytrees_bit_for_bit(kind, jit):
    storage = STORAGES[kind]()
    model, optimizer = nnx_optimizer(storage)
    update = nnx_update(jit)
    for t in range(1, NNX_STEPS + 1):
        update(model, optimizer, host_gradients(nnx.state(model, nnx.Param), t))

    tx = jz.adamw(0.1, mu_dtype=storage, nu_dtype=storage)
    params = nnx.as_pure(nnx.state(Net(nnx.Rngs(0)), nnx.Param))
    state = tx.init(params)
    step = jax.jit(step_fn(tx)) if jit else step_fn(tx)
    for t in range(1, NNX_STEPS + 1):
        params, state = step(params, state, host_gradients(params, t))

    assert_trees_equal(nnx.as_pure(nnx.state(model, nnx.Param)), params)
    assert_trees_equal(jax.tree.leaves(nnx.as_pure(optimizer.opt_state)), jax.tree.leaves(state))
    if kind.startswith("8bit"):  # the big kernel's moments are one packed int8 / uint8 array each
        adam = nnx.as_pure(optimizer.opt_state)[0]
        assert adam.mu["hidden"]["kernel"].dtype == jnp.int8 and adam.nu["hidden"]["kernel"].dtype == jnp.uint8
        assert state_bytes(adam.mu["hidden"]["kernel"]) < 2 * 16 * 256


def test_orbax_resumes_an_nnx_optimizer_with_8bit_state_bit_for_bit(tmp_path):
    import orbax.checkpoint as ocp

    total, save_at = 4, 2
    storage = jz.Blockwise8Bit(min_size=0)
    update = nnx_update(jit=True)
    model, optimizer = nnx_optimizer(storage)
    manager = ocp.CheckpointManager(tmp_path / "run", options=ocp.CheckpointManagerOptions(max_to_keep=2))
    for t in range(1, total + 1):
        update(model, optimizer, host_gradients(nnx.state(model, nnx.Param), t))
        if t == save_at:
            manager.save(t, args=ocp.args.StandardSave({"model": nnx.state(model), "optimizer": nnx.state(optimizer)}))
            manager.wait_until_finished()
    uninterrupted = nnx.as_pure({"model": nnx.state(model), "optimizer": nnx.state(optimizer)})

    fresh_model, fresh_optimizer = nnx_optimizer(storage, seed=1)  # other initial values: all must come from disk
    target = {"model": nnx.state(fresh_model), "optimizer": nnx.state(fresh_optimizer)}
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))
    nnx.update(fresh_model, restored["model"])
    nnx.update(fresh_optimizer, restored["optimizer"])
    assert int(fresh_optimizer.step[...]) == save_at
    for t in range(save_at + 1, total + 1):
        update(fresh_model, fresh_optimizer, host_gradients(nnx.state(fresh_model, nnx.Param), t))
    resumed = nnx.as_pure({"model": nnx.state(fresh_model), "optimizer": nnx.state(fresh_optimizer)})
    assert_trees_equal(resumed, uninterrupted)
    codes = [x for x in jax.tree.leaves(resumed["optimizer"]) if x.dtype in (jnp.int8, jnp.uint8)]
    assert len(codes) == 4  # mu and nu of the kernel and of the bias


# --- 2. Stochastic rounding draws anew each step --------------------------------------------------

ROWS, COLS, BLOCK = 32, 128, 16  # Blockwise8Bit(block_size=16): blocks of 16 on 1 to 8 devices


def one_big_element_per_block(seed: int = 0) -> np.ndarray:
    """A constant gradient at the first element of each block (different per block), zero elsewhere."""
    g = np.zeros((ROWS, COLS), np.float32)
    g[:, ::BLOCK] = np.random.default_rng(seed).uniform(1, 2, (ROWS, COLS // BLOCK))
    return g


@pytest.mark.parametrize("kind", ["8bit", "stochastic_bf16"])
def test_a_second_moment_decaying_by_a_tenth_of_a_percent_a_step_decays(kind):
    """After a warm-up, 1000 zero-gradient steps: the stored nu must shrink by 0.999**1000 = 0.368 on average.

    The big elements hold each block's nu (and so its scale) at a constant value: their warm-up
    gradient makes nu = g**2 at once, and g every step keeps it there. The others' exact nu is
    0.999 times the stored one each step, a change far below one code (or bfloat16) gap: a rounding
    that draws the same way for the same value every step keeps it where it is.
    """
    storage = jz.Blockwise8Bit(block_size=BLOCK) if kind == "8bit" else jz.StochasticBF16()
    tx = jz.scale_by_adam(b2=0.999, nu_dtype=storage)
    big = one_big_element_per_block()
    others = big == 0
    warm = np.where(big > 0, big * np.sqrt(1000.0), np.random.default_rng(1).uniform(0.5, 1.5, big.shape))
    state = tx.init({"w": jnp.zeros(big.shape)})
    _, state = jax.jit(tx.update)({"w": jnp.asarray(warm, jnp.float32)}, state)
    if kind == "8bit":  # one byte per element and 4 per block
        assert state_bytes(state.nu["w"]) == ROWS * COLS * (1 + 4 / BLOCK)
    v0 = host_read(state.nu["w"])

    @jax.jit
    def thousand_steps(state):
        return jax.lax.fori_loop(0, 1000, lambda i, s: tx.update({"w": jnp.asarray(big)}, s)[1], state)

    v = host_read(thousand_steps(state).nu["w"])
    ratio = v[others].mean() / v0[others].mean()
    assert abs(ratio / 0.999**1000 - 1) < 0.03, (ratio, 0.999**1000)
    np.testing.assert_allclose(v[~others], v0[~others], rtol=0.02)  # the scales did stay put


def test_8bit_momentum_decays_like_its_decay_rate():
    """Heavy-ball momentum with zero gradients after a warm-up: the buffer shrinks by 0.9 a step, then stops.

    As above, one element per block keeps its buffer (and the block's scale) at 10 g; the
    others' buffers must decay like 0.9**t on average and reach 0, so their params stop moving.
    """
    tx = jz.sgd(0.1, momentum=0.9, accumulator_dtype=jz.Blockwise8Bit(block_size=BLOCK))
    big = one_big_element_per_block()
    others = big == 0
    warm = np.where(big > 0, 10 * big, np.random.default_rng(1).normal(size=big.shape)).astype(np.float32)
    step = step_fn(tx)
    params = {"w": jnp.zeros(big.shape)}
    params, state = jax.jit(step)(params, tx.init(params), {"w": jnp.asarray(warm)})
    assert state_bytes(state[0].trace["w"]) == ROWS * COLS * (1 + 4 / BLOCK)
    buffer = lambda s: read(s[0].trace["w"])
    m0 = np.abs(np.asarray(buffer(state)))[others].mean()

    @jax.jit
    def run(params, state):
        def body(carry, _):
            new_params, state = step(*carry, {"w": jnp.asarray(big)})
            moved = jnp.any((new_params["w"] != carry[0]["w"]) & others)
            return (new_params, state), (jnp.mean(jnp.abs(buffer(state)), where=jnp.asarray(others)), moved)

        return jax.lax.scan(body, (params, state), None, length=300)

    (_, state), (means, moved) = run(params, state)
    means = np.asarray(means, np.float64) / m0
    for t in (5, 10, 20, 30):
        assert abs(means[t - 1] / 0.9**t - 1) < 0.05, (t, means[t - 1], 0.9**t)
    assert np.all(np.asarray(buffer(state))[others] == 0)
    moved = np.asarray(moved)
    still = np.sum(moved[200:])
    assert not still, f"params with zero gradients still move at {still} of the last 100 steps"


# --- 3. Sharded runs with the default Blockwise8Bit() equal one device ------------------------------

SHARDED_SHAPE = (16, 512)  # 8192 elements; the last axis splits into 8 shards of 64 or 4 shards of 128
MESHES = {"8": ((8,), ("model",), P(None, "model")), "2x4": ((2, 4), ("data", "model"), P("data", "model"))}
SHARDED_STEPS = 3


def default_8bit_adamw():
    return jz.adamw(1e-2, weight_decay=1e-2, mu_dtype=jz.Blockwise8Bit(), nu_dtype=jz.Blockwise8Bit())


def sharded_setup(mesh_name):
    shape, names, spec = MESHES[mesh_name]
    mesh = jax.make_mesh(shape, names, devices=jax.devices("cpu")[:8])
    specs = {"w": spec, "b": P(spec[-1])}
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    rng = np.random.default_rng(0)
    host = {"w": rng.normal(size=SHARDED_SHAPE), "b": rng.normal(size=SHARDED_SHAPE[-1:])}  # b: float32 moments
    host = {k: v.astype(np.float32) for k, v in host.items()}
    return mesh, specs, shardings, host


def run_steps(step, params, state, place=lambda g: g):
    for t in range(1, SHARDED_STEPS + 1):
        params, state = step(params, state, place(host_gradients(jax.device_get(params), t)))
    return jax.device_get((params, state))


@functools.cache
def one_device_run():
    """The reference for both meshes: the default block length depends on the device count, not the mesh."""
    tx = default_8bit_adamw()
    params = jax.tree.map(lambda x: jax.device_put(x, jax.devices("cpu")[0]), sharded_setup("8")[3])
    return run_steps(jax.jit(step_fn(tx)), params, tx.init(params))


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_sharded_jit_with_the_default_8bit_storage_equals_one_device(mesh_name):
    mesh, specs, shardings, host = sharded_setup(mesh_name)
    tx = default_8bit_adamw()
    params = jax.device_put(host, shardings)
    state = jz.init_sharded(tx, params)
    assert state[0].mu["w"].dtype == jnp.int8 and state[0].nu["w"].dtype == jnp.uint8
    jz.check_state_shardings(tx, params, state)
    sharded = run_steps(jax.jit(step_fn(tx)), params, state, lambda g: jax.device_put(g, shardings))
    single = one_device_run()
    assert_trees_equal(sharded, single)
    assert np.any(np.asarray(sharded[0]["w"]) != host["w"])


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_shard_map_with_the_default_8bit_storage_equals_one_device(mesh_name):
    mesh, specs, shardings, host = sharded_setup(mesh_name)
    tx = default_8bit_adamw()
    params = jax.device_put(host, shardings)
    state = jz.init_sharded(tx, params)
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    local = jax.jit(
        jax.shard_map(step_fn(tx), mesh=mesh, in_specs=(specs, state_specs, specs), out_specs=(specs, state_specs))
    )
    by_shard_map = run_steps(local, params, state, lambda g: jax.device_put(g, shardings))
    assert_trees_equal(by_shard_map, one_device_run())


# --- 4. One huge finite gradient ------------------------------------------------------------------

HUGE = 3e19  # finite, but its square overflows float32: Adam's nu becomes +inf there
HUGE_AT = (3, 300)  # in the block of row 3, columns 256..511
HUGE_SHAPE = (4, 2048)  # 8 shards of 256: blocks of 256 on 1 to 8 devices
HUGE_STEP, HUGE_STEPS = 3, 6
Q256 = jz.Blockwise8Bit(block_size=256)  # blocks of 256 on 1 to 8 devices, before and after the storage protocol


def huge_gradients(spike: bool = True) -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=HUGE_SHAPE).astype(np.float32) for _ in range(HUGE_STEPS)]
    if spike:
        grads[HUGE_STEP - 1][HUGE_AT] = HUGE
    return grads


@functools.cache
def adam_trajectory(eight_bit: bool, spike: bool = True):
    """(updates, mu, nu) after each step of Adam on :func:`huge_gradients`, as float64 host arrays."""
    storage = Q256 if eight_bit else None
    grads = huge_gradients(spike)
    tx = jz.adam(1e-2, mu_dtype=storage, nu_dtype=storage)
    params = {"w": jnp.asarray(np.random.default_rng(3).normal(size=HUGE_SHAPE), jnp.float32)}

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state, updates

    state, out = tx.init(params), []
    if eight_bit:  # one byte per element and 4 per block of 256
        assert state_bytes(state[0].mu["w"]) == np.prod(HUGE_SHAPE) * (1 + 4 / 256)
    for g in grads:
        params, state, updates = step(params, state, {"w": jnp.asarray(g)})
        assert np.all(np.isfinite(np.asarray(params["w"]))), "the params became non-finite"
        out.append((np.asarray(updates["w"]), host_read(state[0].mu["w"]), host_read(state[0].nu["w"])))
    return out


def test_with_float32_state_a_huge_gradient_freezes_its_own_element_only():
    spiked, clean = adam_trajectory(False), adam_trajectory(False, spike=False)
    others = np.ones(HUGE_SHAPE, bool)
    others[HUGE_AT] = False
    for t in range(HUGE_STEP - 1, HUGE_STEPS):
        updates, _, nu = spiked[t]
        assert updates[HUGE_AT] == 0 and np.isinf(nu[HUGE_AT])
        np.testing.assert_array_equal(updates[others], clean[t][0][others])
        assert np.all(updates[others] != 0)


def test_with_8bit_state_a_huge_gradient_freezes_its_own_element_and_poisons_no_neighbour():
    """The huge element freezes as in float32 Adam; no neighbour turns NaN or moves more than float32's would.

    Its block's second moments stay within 30% of float32's (the outlier's +inf is a reserved code, left out
    of the block's scale). Its block's first moments are below 2**-16 of the outlier's and read back as 0
    while it decays (the documented price of one scale per block: each step's first moment is then that
    step's (1 - b1) g alone), so their updates differ from float32's, but stay finite and no larger than
    float32's largest in the block (with 30% for 8-bit error). Every other block stays within 30% of
    float32 in everything (so that the tolerance means something). The old code turned the whole block NaN.
    """
    ours, float32 = adam_trajectory(True), adam_trajectory(False)
    row, col = HUGE_AT
    blocks = lambda x: x.reshape(HUGE_SHAPE[0], -1, 256)  # (rows, blocks, 256): the blocks of Q256
    spiked = np.zeros(blocks(np.zeros(HUGE_SHAPE)).shape[:2], bool)
    spiked[row, col // 256] = True
    failures = []
    for t in range(HUGE_STEP - 1, HUGE_STEPS):
        updates, mu, nu = ours[t]
        assert updates[HUGE_AT] == 0, (t, updates[HUGE_AT])  # frozen, as in float32
        assert not np.isfinite(nu[HUGE_AT]) or nu[HUGE_AT] > 1e30, nu[HUGE_AT]
        for name, a, e in zip(("updates", "mu", "nu"), ours[t], float32[t]):
            a, e = a.copy(), e.copy()
            a[HUGE_AT] = e[HUGE_AT] = 0  # compare the others
            assert np.all(np.isfinite(a)), (t, name)
            error = np.abs(blocks(a) - blocks(e)).max(axis=-1) / np.abs(blocks(e)).max(axis=-1)
            if name == "nu" and error[spiked].max() > 0.3:
                failures.append(f"step {t + 1}, nu of the neighbours: {error[spiked].max():.2f} of the block's largest")
            if name == "updates" and np.abs(blocks(a))[spiked].max() > 1.3 * np.abs(blocks(e))[spiked].max():
                failures.append(f"step {t + 1}: a neighbour's update is larger than any of float32's in the block")
            if error[~spiked].max() > 0.3:
                failures.append(f"step {t + 1}, {name} in another block: {error[~spiked].max():.2f} of the block's largest")
    assert not failures, "; ".join(failures)


def test_apply_if_finite_skips_a_step_that_overflows_the_8bit_state():
    tx = jz.apply_if_finite(jz.adam(1e-2, mu_dtype=Q256, nu_dtype=Q256), 3)
    step = jax.jit(step_fn(tx))
    grads = huge_gradients()
    params = {"w": jnp.asarray(np.random.default_rng(3).normal(size=HUGE_SHAPE), jnp.float32)}
    state = tx.init(params)
    for g in grads[: HUGE_STEP - 1]:
        params, state = step(params, state, {"w": jnp.asarray(g)})
    assert np.all(np.isfinite(np.asarray(grads[HUGE_STEP - 1])))  # the gradients themselves are finite
    new_params, new_state = step(params, state, {"w": jnp.asarray(grads[HUGE_STEP - 1])})
    assert int(new_state.notfinite_count) == 1 and int(new_state.total_notfinite) == 1
    assert not bool(new_state.last_finite)
    assert_trees_equal(new_params, params)
    assert_trees_equal(new_state.inner_state, state.inner_state)
    # A finite step afterwards is applied.
    later_params, later_state = step(new_params, new_state, {"w": jnp.asarray(grads[HUGE_STEP])})
    assert int(later_state.notfinite_count) == 0 and np.any(np.asarray(later_params["w"]) != np.asarray(params["w"]))


# --- 5. Edge shapes and map_params ------------------------------------------------------------------


def test_a_zero_size_param_initialises_and_updates_with_min_size_0():
    storage = jz.Blockwise8Bit(min_size=0)
    tx = jz.adamw(1e-2, mu_dtype=storage, nu_dtype=storage)
    params = {"empty": jnp.zeros((8, 0)), "none": jnp.zeros((0,)), "w": jnp.ones((4, 64))}
    state = tx.init(params)
    step = jax.jit(step_fn(tx))
    new_params = params
    for t in (1, 2):
        new_params, state = step(new_params, state, host_gradients(new_params, t))
    assert new_params["empty"].shape == (8, 0) and new_params["none"].shape == (0,)
    assert np.any(np.asarray(new_params["w"]) != 1)
    assert read(state[0].mu["empty"]).shape == (8, 0)


@pytest.mark.parametrize("min_size", [0, 4096])
def test_an_n_by_1_param_stays_float32_and_costs_4_bytes_per_element(min_size):
    n = 8192
    storage = jz.Blockwise8Bit(min_size=min_size)
    tx = jz.adam(1e-2, mu_dtype=storage, nu_dtype=storage)
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(n, 1)), jnp.float32)}
    state = tx.init(params)
    moments = (state[0].mu["w"], state[0].nu["w"])
    assert state_bytes(moments) <= 2 * 4 * n, state_bytes(moments)
    for leaf in jax.tree.leaves(moments):
        assert leaf.dtype == jnp.float32 and leaf.shape == (n, 1)
    # Kept in float32, it runs exactly like float32 Adam.
    plain = jz.adam(1e-2)
    ours = run_steps(jax.jit(step_fn(tx)), params, state)
    theirs = run_steps(jax.jit(step_fn(plain)), params, plain.init(params))
    assert_trees_equal(ours[0], theirs[0])


@pytest.mark.parametrize("with_float32_leaf", [False, True], ids=["8bit_leaf_only", "with_a_float32_leaf"])
def test_map_params_casting_8bit_codes_raises_or_keeps_the_values(with_float32_leaf):
    """A cast of every per-parameter leaf must not silently turn 8-bit codes into other numbers.

    Either it raises a ValueError naming the 8-bit leaf (``w``), or the cast state's next update is
    the uncast state's to bfloat16 precision. ``b`` (8 elements) is below ``min_size``: its moments
    are float32 arrays, which a cast to bfloat16 may change freely.
    """
    tx = jz.adam(1e-2, mu_dtype=jz.Blockwise8Bit(), nu_dtype=jz.Blockwise8Bit())
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(16, 512)), jnp.float32)}
    if with_float32_leaf:
        params["b"] = jnp.ones(8)
    step = jax.jit(step_fn(tx))
    params, state = step(params, tx.init(params), host_gradients(params, 1))
    try:
        mapped = jz.tree.map_params(tx, lambda x: x.astype(jnp.bfloat16), state)
    except ValueError as error:
        assert "['w']" in str(error), str(error)
        assert "['b']" not in str(error), str(error)  # b's moments are float32, not codes
        return
    grads = host_gradients(params, 2)
    expected, _ = jax.jit(tx.update)(grads, state, params)
    actual, _ = jax.jit(tx.update)(grads, mapped, params)
    for name in params:
        e, a = np.asarray(expected[name], np.float64), np.asarray(actual[name], np.float64)
        np.testing.assert_allclose(a, e, rtol=0, atol=2**-7 * np.abs(e).max(), err_msg=name)


# --- 6. StochasticBF16's rounding --------------------------------------------------------------------


def stochastic_bf16_reference(x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """StochasticBF16's rounding in float64 given its 16 random bits: it adds them below the kept bits, so it rounds
    up when ``noise + dropped >= 2**16``, i.e. when ``(2**16 - 1 - noise) / 2**16`` is below the dropped fraction."""
    return reference.stochastic_rounding(x, (2**16 - 1 - np.asarray(noise, np.float64)) / 2**16, "bfloat16")


def bf16_writes(values, steps) -> np.ndarray:
    """``StochasticBF16().write`` of each value at each step, as float64: shape (len(steps), len(values))."""
    storage = jz.StochasticBF16()
    values = jnp.asarray(values, jnp.float32)
    stored = storage.create(jnp.zeros_like(values), signed=True)
    write = jax.jit(jax.vmap(lambda step: storage.write(values, stored, step)))
    out = write(jnp.asarray(steps, jnp.int32))
    assert out.dtype == jnp.bfloat16
    return np.asarray(storage.read(out), np.float64)


def bf16_neighbours(values):
    reference = stochastic_bf16_reference
    return reference(values, np.zeros(len(values))), reference(values, np.full(len(values), 2**16 - 1))


def test_stochastic_bf16_is_unbiased_and_gives_only_the_two_neighbours():
    # Values at several fractions of a bfloat16 spacing, at several magnitudes and both signs.
    fractions = np.array([0.01, 0.25, 0.5, 0.7, 0.99])
    bases = np.array([1.0, -1.5, 3e-5, -7e20, 2.0**-120])
    spacing = np.exp2(np.floor(np.log2(np.abs(bases))) - 7)
    values = bases[:, None] + np.sign(bases)[:, None] * fractions[None, :] * spacing[:, None]
    values = values.ravel().astype(np.float32)
    n = 20000
    draws = bf16_writes(values, np.arange(n))
    low, high = bf16_neighbours(values)
    assert np.all((draws == low) | (draws == high))
    exact = values.astype(np.float64)
    up = np.abs(high - low)
    p = np.abs(exact - low) / up
    standard_error = up * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - exact), 5 * standard_error + 1e-300)


def test_stochastic_bf16_rounds_the_same_value_differently_at_different_steps():
    values = np.float32(1 + 2**-8) * np.ones(1, np.float32)  # halfway between 1 and 1 + 2**-7
    draws = bf16_writes(values, np.arange(64))[:, 0]
    assert set(draws) == {1.0, 1 + 2**-7}
    # and the same step gives the same rounding
    np.testing.assert_array_equal(bf16_writes(values, np.arange(64))[:, 0], draws)


def test_stochastic_bf16_stores_bfloat16_values_exactly_and_keeps_non_finite_ones():
    exact = np.random.default_rng(0).normal(size=4096).astype(jnp.bfloat16).astype(np.float32) * np.float32(1024)
    exact = np.concatenate([exact, [0.0, -0.0, 2.0**-133, 3.3895314e38, -3.3895314e38]]).astype(np.float32)
    assert np.all(exact.astype(jnp.bfloat16).astype(np.float32) == exact)
    draws = bf16_writes(exact, np.arange(8))
    np.testing.assert_array_equal(draws, np.broadcast_to(exact.astype(np.float64), draws.shape))
    assert np.all(np.signbit(draws[:, len(exact) - 4]))  # -0.0 stays -0.0
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    draws = bf16_writes(special, np.arange(8))
    assert np.all(np.isnan(draws[:, 0])) and np.all(draws[:, 1] == np.inf) and np.all(draws[:, 2] == -np.inf)


def test_stochastic_bf16_matches_the_float64_reference_given_its_random_numbers():
    from jaxopt_zoo import rounding

    rng = np.random.default_rng(5)
    values = np.concatenate([
        rng.normal(size=2048) * np.exp2(rng.integers(-60, 60, 2048)),
        rng.uniform(0, 2.0**-126, 64) * rng.choice([-1, 1], 64),  # subnormal
        [0.0, -0.0, np.nan, np.inf, -np.inf, 3.4e38, -1.17549435e-38],
    ]).astype(np.float32)
    steps = np.arange(4)
    draws = bf16_writes(values, steps)
    bits = jax.lax.bitcast_convert_type(jnp.asarray(values), jnp.uint32)
    for i, step in enumerate(steps):
        expected = stochastic_bf16_reference(values, np.asarray(rounding.random_bits(bits, step) >> 16))
        np.testing.assert_array_equal(draws[i], expected, err_msg=f"step {step}")


# --- a storage of the user's own -------------------------------------------------------------------------------


class _Bfloat16Cast:
    """What mu_dtype=jnp.bfloat16 does, written as a storage object of the user's own."""

    stochastic = False
    encoded = False

    def create(self, value, signed):
        return value.astype(jnp.bfloat16)

    def read(self, stored):
        return stored

    def write(self, value, stored, step):
        return jnp.asarray(value).astype(stored.dtype)


def test_a_storage_object_of_the_users_own_is_used_as_it_is():
    # The module documents the protocol (create, read, write, stochastic, encoded); resolve wrapped such an
    # object as a dtype, and init failed with "Cannot interpret ... as a data type".
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
    own, cast = jz.adam(0.1, mu_dtype=_Bfloat16Cast()), jz.adam(0.1, mu_dtype=jnp.bfloat16)
    states = [tx.init(params) for tx in (own, cast)]
    for t in range(3):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), params)
        (mine, states[0]), (theirs, states[1]) = own.update(grads, states[0], params), cast.update(grads, states[1], params)
        assert_trees_equal((mine, states[0]), (theirs, states[1]))
    class NoFlags:
        create, read, write = _Bfloat16Cast.create, _Bfloat16Cast.read, _Bfloat16Cast.write
    with pytest.raises(ValueError, match=r"^adam: mu_dtype=.* has create, read and write but no boolean stochastic "
                                         r"or encoded flag"):
        jz.adam(0.1, mu_dtype=NoFlags())


# --- complex params ---------------------------------------------------------------------------------------------


def test_a_real_storage_dtype_keeps_a_complex_moment_complex_or_refuses():
    # mu_dtype=jnp.float32 cast a complex param's momentum to float32 and dropped its imaginary part (as Optax's
    # does); LDoG's default float32 copy of the initial params did the same, and its first step was ~600,000x too
    # large. float32 now keeps it as complex64; bfloat16 and StochasticBF16 have no complex form and raise.
    params = {"z": jnp.asarray([1 + 2j, -0.5 + 0.3j], jnp.complex64), "x": jnp.asarray([0.5, -1.0])}
    grads = [jax.tree.map(lambda p: (p * (0.5 - 1j) if jnp.iscomplexobj(p) else p) + t, params) for t in range(3)]

    def run(tx):
        state, out = tx.init(params), []
        for g in grads:
            updates, state = tx.update(g, state, params)
            out.append(updates)
        return out, state

    ldog = jz.scale_by_distance_over_gradients
    for stored, plain in [(jz.adam(0.1, mu_dtype=jnp.float32), jz.adam(0.1)),
                          (jz.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.float32), jz.sgd(0.1, momentum=0.9)),
                          (ldog(), ldog(param_dtype=None))]:
        assert_trees_equal(run(stored), run(plain))
    # A magnitude stays real: Adam's nu in bfloat16 next to a complex64 mu.
    _, state = run(jz.adam(0.1, nu_dtype=jnp.bfloat16))
    assert state[0].nu["z"].dtype == jnp.bfloat16 and state[0].mu["z"].dtype == jnp.complex64
    for storage, message in [(jnp.bfloat16, r"a complex moment cannot be kept in bfloat16: JAX has no complex"),
                             (jz.StochasticBF16(), r"StochasticBF16 stores real bfloat16 numbers, and this complex")]:
        with pytest.raises(ValueError, match=r"^the param at \['z'\]: " + message):
            jz.adam(0.1, mu_dtype=storage).init(params)


# --- gradients taken through optimizer steps --------------------------------------------------------------------


def _loss_after_steps(p0, tx, steps=3):
    p, state = p0, tx.init(p0)
    for _ in range(steps):
        g = jax.grad(lambda q: jnp.sum(jnp.sin(q) * q))(p)
        updates, state = tx.update(g, state, p)
        p = jz.apply_updates(p, updates)
    return jnp.sum(p**2)


def test_a_gradient_through_steps_passes_through_stochastically_rounded_moments():
    # The momentum's share of the gradient: its bit-level rounding has no derivative, and it was silently dropped
    # (14% off at the ends); differentiated as written (straight through), it is float32's up to bfloat16 rounding.
    p0 = jnp.linspace(-1.0, 1.0, 5)
    full = jax.grad(_loss_after_steps)(p0, jz.sgd(0.1, momentum=0.9))
    rounded = jax.grad(_loss_after_steps)(p0, jz.sgd(0.1, momentum=0.9, accumulator_dtype=jz.StochasticBF16()))
    np.testing.assert_allclose(rounded, full, rtol=0.02, atol=2e-3)


def test_a_gradient_through_8bit_moments_raises_naming_the_storages_that_carry_one():
    p0 = jnp.linspace(-1.0, 1.0, 4096)
    tx = jz.sgd(0.1, momentum=0.9, accumulator_dtype=jz.Blockwise8Bit())
    assert jnp.isfinite(_loss_after_steps(p0, tx))  # stepping is unaffected
    with pytest.raises(ValueError, match="Blockwise8Bit: a gradient taken through optimizer steps cannot pass"):
        jax.grad(_loss_after_steps)(p0, tx)


def test_state_bytes_counts_a_typed_random_key_by_its_key_data():
    """dpsgd keeps a typed PRNG key in its state: state_bytes raised (a key dtype has no itemsize)."""
    key = jax.random.key(0)
    expected = jax.random.key_data(key).nbytes + 4 * 6
    assert jz.storage.state_bytes({"key": key, "m": jnp.zeros(6)}) == expected
    tx = jz.dpsgd(1e-2, l2_norm_clip=1.0, noise_multiplier=0.0, seed=0)
    assert jz.storage.state_bytes(tx.init({"w": jnp.zeros((3, 4))})) > 0
