"""jz.torch.muon and the Newton–Schulz transforms against float64 references, Optax, and the rest of JAX.

tests/reference.py's torch_muon follows torch/optim/_muon.py in float64. It was
checked against torch 2.13's own Muon by hand (same gradients, float64 params,
25 steps, the option grid below, torch's bfloat16 cast in its Newton–Schulz
removed so that both run in float64): largest relative difference 6.6e-14.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import assert_trees_close, assert_trees_equal, grad_fn, run_ours, run_reference

SHAPES = {"wide": (3, 5), "tall": (5, 2), "square": (4, 4)}
STEPS = 20
CONVERGENT = (15 / 8, -10 / 8, 3 / 8)  # the quintic whose iteration converges to the polar factor


def matrices(dtype=jnp.float32, seed: int = 0, shapes=SHAPES) -> dict:
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=shape), dtype) for name, shape in shapes.items()}


def labels(params):
    return jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params)


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    return step


def run_compiled(tx, params, steps: int):
    """conftest.run_ours with a jitted init and step, and the gradients computed in NumPy: no eager op to compile."""
    state, step = jax.jit(tx.init)(params), jax.jit(step_fn(tx))
    iterates = []
    for t in range(1, steps + 1):
        grads = jax.tree.map(lambda p: np.asarray(grad_fn(np.asarray(p, np.float64), t), p.dtype), params)
        params, state = step(params, state, grads)
        iterates.append(params)
    return iterates, state


def _check(ours, ref):
    with jax.enable_x64(True):
        params = matrices(jnp.float64)
        iterates, _ = run_compiled(ours, params, STEPS)
        assert_trees_close(iterates, run_reference(ref, params, STEPS), rtol=1e-10, atol=1e-12)


# Every nesterov x adjust_lr_fn pair, with weight decay on and off for each nesterov value and each
# adjust_lr_fn value (compiled: run eagerly, a case took 1.6 s dispatching Newton–Schulz op by op).
GRID = [
    dict(nesterov=n, adjust_lr_fn=a, weight_decay=0.05 * ((i + j) % 2))
    for (i, n), (j, a) in itertools.product(enumerate([False, True]), enumerate([None, "original", "match_rms_adamw"]))
] + [dict(momentum=0.9), dict(momentum=0.0), dict(ns_steps=3), dict(ns_coefficients=CONVERGENT), dict(eps=1e3)]


@pytest.mark.parametrize("options", GRID, ids=str)
def test_follows_the_reference(options):
    # eps=1e3 exceeds every norm here, so the clamp max(|B|, eps) is what divides.
    _check(jz.torch.muon(lr=0.02, **options), reference.torch_muon(0.02, **options))


def test_defaults_are_torchs():
    _check(jz.torch.muon(), reference.torch_muon())


def test_schedule_stands_in_for_an_lr_scheduler():
    schedule = lambda count: 0.02 * 0.9**count
    _check(jz.torch.muon(lr=schedule), reference.torch_muon(schedule))


def test_float32_follows_the_reference_to_float32_tolerance():
    params = matrices()
    iterates, _ = run_compiled(jz.torch.muon(lr=0.02), params, 25)
    assert_trees_close(iterates, run_reference(reference.torch_muon(0.02), params), rtol=1e-4, atol=1e-5)


def test_bfloat16_iteration_is_pytorchs_precision():
    """ns_dtype=jnp.bfloat16: updates within bfloat16's error of the float64 step, and not float32's."""
    params, grads = matrices(), matrices(seed=1)
    for dtype, low, high in [(jnp.bfloat16, 1e-3, 0.3), (None, 0.0, 5e-5)]:  # float32: p + u - p loses ~1e-7 of p
        tx = jz.torch.muon(lr=0.02, ns_dtype=dtype)
        stepped, _ = jax.jit(step_fn(tx))(params, tx.init(params), grads)  # float32: the float32 test's program
        updates = jax.tree.map(lambda a, b: a - b, stepped, params)
        for name, p in params.items():
            delta, _ = reference.torch_muon(0.02).update(
                np.asarray(grads[name], np.float64), {"buf": np.zeros(p.shape)}, np.asarray(p, np.float64), 1
            )
            assert updates[name].dtype == jnp.float32
            error = np.max(np.abs(np.asarray(updates[name], np.float64) - delta)) / np.max(np.abs(delta))
            assert low < error < high, (dtype, name, error)


# --- the Newton–Schulz function ----------------------------------------------------------------------


def test_convergent_coefficients_give_the_polar_factor():
    with jax.enable_x64(True):
        for name, g in matrices(jnp.float64).items():
            u, _, vt = np.linalg.svd(np.asarray(g), full_matrices=False)
            o = jz.newton_schulz(g, CONVERGENT, 30)
            np.testing.assert_allclose(np.asarray(o), u @ vt, atol=1e-9, err_msg=name)
            # Transposing commutes with the iteration; a tall matrix is iterated as its transpose.
            np.testing.assert_allclose(jz.newton_schulz(g.T, CONVERGENT, 30), o.T, atol=1e-14)


def test_default_coefficients_bound_the_singular_values():
    # Keller Jordan's coefficients trade convergence for slope: 5 steps leave the singular values that start
    # above 0.003 of the norm in [0.68, 1.21] (newton_schulz's docstring), near 1 but not at it.
    with jax.enable_x64(True):
        for name, g in matrices(jnp.float64, seed=3).items():
            start = np.linalg.svd(np.asarray(g), compute_uv=False)
            assert start.min() > 0.003 * np.linalg.norm(start), name  # the premise
            s = np.linalg.svd(np.asarray(jz.newton_schulz(g)), compute_uv=False)
            assert 0.68 < s.min() and s.max() < 1.21 and s.max() - s.min() > 0.01, (name, s)


def test_zero_matrix_stays_zero_and_bad_inputs_raise():
    with jax.enable_x64(True):
        zero = jnp.zeros((3, 5), jnp.float64)
        assert_trees_equal(jz.newton_schulz(zero, eps=0.0), zero)  # PyTorch: 0 / 0 = NaN
    with pytest.raises(ValueError, match=r"newton_schulz: x must be a 2-D array, got shape \(3,\)"):
        jz.newton_schulz(jnp.ones(3))
    with pytest.raises(ValueError, match="newton_schulz: x must be real"):
        jz.newton_schulz(jnp.ones((2, 2), jnp.complex64))


# --- Optax's twin ------------------------------------------------------------------------------------


def test_optax_contrib_muon_is_the_same_rule_on_the_transposed_layout():
    """Without nesterov, and with eps out of the way, optax.contrib.muon on W^T is ours on W, transposed.

    Optax's width factor sqrt(max(1, n/m)) is ours, sqrt(max(1, m/n)), on the transpose (its (in, out)
    against PyTorch's (out, in)); its bias correction is a scale that the normalisation removes. Its
    consistent_rms=0.2 is "match_rms_adamw", the same formula on either layout. With nesterov the two
    blends differ (Optax's is bias-corrected): see jz.torch.muon's docstring.
    """
    steps = 4
    with jax.enable_x64(True):
        params = matrices(jnp.float64)
        transposed = jax.tree.map(jnp.transpose, params)
        ours = jz.torch.muon(lr=0.05, weight_decay=0.05, nesterov=False)
        theirs = optax.contrib.muon(0.05, eps=0.0, weight_decay=0.05, nesterov=False)
        iterates, _ = run_ours(ours, params, steps=steps, jit=False)
        p, state = transposed, theirs.init(transposed)
        update = jax.jit(theirs.update)
        for t in range(1, steps + 1):
            grads = jax.tree.map(lambda q: grad_fn(q.T, t, jnp).T, p)  # the same field, in their layout
            updates, state = update(grads, state, p)
            p = optax.apply_updates(p, updates)
        assert_trees_close(jax.tree.map(jnp.transpose, iterates[-1]), p, rtol=1e-9, atol=1e-12)


# --- shapes and options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        ({"w": jnp.ones((2, 3)), "layer": {"bias": jnp.ones(3)}},
         r"the leaf at \['layer'\]\['bias'\] has shape \(3,\)"),
        ({"conv": jnp.ones((3, 3, 2, 4))}, r"the leaf at \['conv'\] has shape \(3, 3, 2, 4\)"),
        ([jnp.ones(())], r"the leaf at \[0\] has shape \(\)"),
        ({"z": jnp.ones((2, 2), jnp.complex64)},
         r"does not support complex parameters \(as torch\.optim\.Muon\); the leaf at \['z'\]"),
    ],
    ids=["bias", "conv", "scalar", "complex"],
)
def test_only_real_matrices_are_accepted(params, message):
    with pytest.raises(ValueError, match=r"^torch\.muon: .*" + message) as refused:
        jz.torch.muon().init(params)
    # Its advice names only what torch.muon takes (it has no weight_dimension_numbers).
    assert "weight_dimension_numbers" not in str(refused.value)
    with pytest.raises(ValueError, match=r"^scale_by_muon: "):
        jz.scale_by_muon().init(params)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lr=-0.1), r"torch\.muon: lr must be >= 0"),
        (dict(weight_decay=-0.1), r"torch\.muon: weight_decay must be >= 0"),
        (dict(momentum=-0.5), r"torch\.muon: momentum must be >= 0"),
        (dict(nesterov=1), r"torch\.muon: nesterov must be True or False"),
        (dict(ns_coefficients=(3.4, -4.7)), r"torch\.muon: ns_coefficients must be three numbers"),
        (dict(ns_coefficients=(3.4, "b", 2.0)), r"torch\.muon: ns_coefficients\[1\] must be a finite real"),
        (dict(eps=-1e-7), r"torch\.muon: eps must be >= 0"),
        (dict(ns_steps=100), r"torch\.muon: ns_steps must be at most 99"),
        (dict(ns_steps=2.5), r"torch\.muon: ns_steps must be an integer >= 0"),
        (dict(adjust_lr_fn="rms"), r"torch\.muon: adjust_lr_fn must be None, 'original' or 'match_rms_adamw'"),
        (dict(ns_dtype=jnp.int8), r"torch\.muon: ns_dtype must be a floating dtype"),
        (dict(mu_dtype=jnp.int8), r"torch\.muon: mu_dtype"),
    ],
)
def test_invalid_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        jz.torch.muon(**options)


# --- storage, None leaves, jit, vmap, inject_hyperparams ---------------------------------------------------

STORAGES = {"bf16": jnp.bfloat16, "sr": jz.StochasticBF16(), "8bit": jz.Blockwise8Bit()}
# 16 x 256 = 4096 elements: stored in 8 bits; "small" stays float32 under the 8-bit storage.
STORAGE_SHAPES = {"bf16": SHAPES["wide"], "sr": SHAPES["tall"], "8bit": (16, 256), "small": SHAPES["square"]}


def _by_storage(**options):
    # One optimizer, one compilation for all the storages: each leaf's buffer in another one.
    return jz.partition({name: jz.torch.muon(lr=0.02, mu_dtype=s, **options) for name, s in STORAGES.items()},
                        lambda params: {name: name for name in STORAGES} | {"small": "8bit"})


def test_storage_of_the_momentum_buffer():
    params = matrices(shapes=STORAGE_SHAPES)
    ours, state = run_compiled(_by_storage(), params, 4)
    expected = run_reference(reference.torch_muon(0.02), params, steps=4)
    buffers = {name: state.inner_states[name].inner_state[0].momentum_buffer[name] for name in STORAGES}
    assert buffers["bf16"].dtype == buffers["sr"].dtype == jnp.bfloat16
    assert jz.quantization.is_encoded(buffers["8bit"]) and buffers["8bit"].dtype == jnp.int8
    small = state.inner_states["8bit"].inner_state[0].momentum_buffer["small"]
    assert small.dtype == jnp.float32 and not jz.quantization.is_encoded(small)
    assert jz.storage.state_bytes(state.inner_states["8bit"]) < 0.3 * 4 * (16 * 256 + 4 * 4)  # float32's bytes
    for name in params:
        moved, reference_moved = ours[-1][name] - params[name], expected[-1][name] - params[name]
        error = float(jnp.linalg.norm(moved - reference_moved) / jnp.linalg.norm(reference_moved))
        assert error < (1e-4 if name == "small" else 0.05), (name, error)


def test_none_update_keeps_its_param_and_its_buffer():
    tx = _by_storage()
    params = matrices(shapes=STORAGE_SHAPES)
    ones = jax.tree.map(lambda p: np.ones(p.shape, np.float32), params)
    _, state = jax.jit(step_fn(tx))(params, jax.jit(tx.init)(params), ones)  # non-zero buffers; the last test's program
    grads = ones | {"8bit": None, "small": None, "sr": None}
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert updates["8bit"] is updates["small"] is updates["sr"] is None
    assert_trees_equal(jz.apply_updates(params, updates)["small"], params["small"])
    # The buffers (8-bit codes and scales, bfloat16); the stochastic rounding's step count advances.
    kept = lambda s: {k: s.inner_states[k].inner_state[0].momentum_buffer for k in ("8bit", "sr")}
    assert_trees_equal(kept(new_state), kept(state))
    assert not np.array_equal(new_state.inner_states["bf16"][0][0].momentum_buffer["bf16"],
                              state.inner_states["bf16"][0][0].momentum_buffer["bf16"])


def _reference_iterates(params, steps, **options):
    return run_reference(reference.torch_muon(**options), params, steps)


def test_jitted_donated_steps_match_eager_steps():
    with jax.enable_x64(True):  # eager float64 arithmetic is the parity tests' (compiled once)
        tx = jz.torch.muon()
        eager_params = matrices(jnp.float64)
        eager_state = tx.init(eager_params)
        step = jax.jit(step_fn(tx), donate_argnums=(0, 1))
        jit_params, jit_state = jax.tree.map(jnp.copy, (eager_params, eager_state))
        for t in range(1, 4):
            grads = jax.tree.map(lambda p: grad_fn(p, t, jnp), eager_params)
            updates, eager_state = tx.update(grads, eager_state, eager_params)
            eager_params = jz.apply_updates(eager_params, updates)
            copies = jit_params, jit_state
            jit_params, jit_state = step(jit_params, jit_state, grads)
            assert all(x.is_deleted() for x in jax.tree.leaves(copies))
        assert_trees_close(jit_params, eager_params, rtol=1e-12, atol=1e-14)
        assert_trees_close(jit_state, eager_state, rtol=1e-12, atol=1e-14)


def test_vmap_over_parameter_sets_equals_separate_runs():
    tx = jz.torch.muon(lr=0.02)
    sets = [matrices(seed=s, shapes={k: SHAPES[k] for k in ("wide", "tall")}) for s in range(2)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *sets)
    state, step = jax.jit(jax.vmap(tx.init))(stacked), jax.jit(jax.vmap(step_fn(tx)))
    for t in range(1, 4):
        stacked_grads = lambda q: np.stack([grad_fn(x, t) for x in np.asarray(q, np.float64)]).astype(np.float32)
        grads = jax.tree.map(stacked_grads, stacked)
        stacked, state = step(stacked, state, grads)
    for i, params in enumerate(sets):
        expected = _reference_iterates(params, 3, lr=0.02)[-1]
        assert_trees_close(jax.tree.map(lambda x: x[i], stacked), expected, rtol=1e-4, atol=1e-5)


def test_options_injected_as_arrays_give_the_same_trajectory():
    # Every numeric option, defaults included, arrives as an array; ns_steps as an int32 one, which
    # makes the iteration a fori_loop.
    params = matrices()
    injected, state = run_compiled(jz.inject_hyperparams(jz.torch.muon)(lr=0.02), params, 5)
    assert state.hyperparams["ns_steps"].dtype == jnp.int32 and state.hyperparams["momentum"].dtype == jnp.float32
    expected, _ = run_compiled(jz.torch.muon(lr=0.02), params, 5)
    assert_trees_close(injected, expected, rtol=1e-5, atol=1e-6)


# --- sharding ----------------------------------------------------------------------------------------------


def test_sharded_jit_keeps_the_layout_and_matches_one_device():
    # jax.make_mesh's default Explicit axes: each matrix is gathered for its iteration.
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices("cpu")[:8])
    tx = jz.torch.muon(lr=0.02)
    params = matrices(shapes={"w": (16, 8), "v": (8, 24)})
    specs = {"w": P("data"), "v": P(None, "data")}
    placed = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
    state = jz.init_sharded(tx, placed)
    step = jax.jit(step_fn(tx))
    for t in range(1, 4):
        grads = {k: np.asarray(grad_fn(np.asarray(p, np.float64), t), np.float32) for k, p in placed.items()}
        grads = {k: jax.device_put(g, NamedSharding(mesh, specs[k])) for k, g in grads.items()}
        placed, state = step(placed, state, grads)
    for k in params:
        assert placed[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), 2)
        assert state[0].momentum_buffer[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), 2)
    assert_trees_close(placed, _reference_iterates(params, 3, lr=0.02)[-1], rtol=1e-4, atol=1e-5)


def test_shard_map_needs_whole_matrices():
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices("cpu")[:8])
    tx = jz.torch.muon(lr=0.02)
    params = matrices(shapes={"tall": SHAPES["tall"]})
    grads = jax.tree.map(lambda p: np.asarray(grad_fn(np.asarray(p, np.float64), 1), np.float32), params)
    specs = jax.tree.map(lambda _: P(), params)
    local = jax.shard_map(lambda g, s, p: tx.update(g, s, p), mesh=mesh, in_specs=(specs, (P(), P(), P()), specs),
                          out_specs=(specs, (P(), P(), P())))
    replicated, _ = jax.jit(local)(grads, tx.init(params), params)  # whole (replicated) matrices: exact
    expected = jax.tree.map(lambda a, b: a - b, _reference_iterates(params, 1, lr=0.02)[0], params)
    assert_trees_close(replicated, expected, rtol=1e-4, atol=1e-6)

    params = {"w": jnp.asarray(np.random.default_rng(3).normal(size=(16, 4)), jnp.float32)}
    grads = jax.tree.map(lambda p: np.asarray(grad_fn(np.asarray(p, np.float64), 1), np.float32), params)
    place = lambda tree: jax.device_put(tree, NamedSharding(mesh, P("data")))
    sharded = lambda tx: jax.jit(jax.shard_map(lambda g, s, p: tx.update(g, s, p)[0], mesh=mesh,
                                               in_specs=(P("data"), P("data"), P("data")), out_specs=P("data")))
    with pytest.raises(ValueError, match=r"scale_by_muon: inside shard_map.*varies over mesh axes \['data'\]") as error:
        sharded(tx)(place(grads), place(tx.init(params)), place(params))
    assert "its orthogonalization would see one shard only. Pass layer_sharding=True" in str(error.value)
    # What the message says: each matrix orthogonalised whole on one device, exact.
    tx = jz.torch.muon(lr=0.02, layer_sharding=True, axis_name="data", partition_specs=P("data"))
    updates = sharded(tx)(place(grads), place(tx.init(params)), place(params))
    expected = jax.tree.map(lambda a, b: a - b, _reference_iterates(params, 1, lr=0.02)[0], params)
    assert_trees_close(updates, expected, rtol=1e-4, atol=1e-6)


# --- Flax -----------------------------------------------------------------------------------------------------


def test_nnx_state_keeps_its_variables_with_muon_for_matrices_and_adamw_for_the_rest():
    from flax import nnx

    model = nnx.Sequential(nnx.Linear(5, 8, rngs=nnx.Rngs(0)), jax.nn.tanh, nnx.Linear(8, 1, rngs=nnx.Rngs(1)))
    tx = jz.partition({"muon": jz.torch.muon(lr=0.05), "adamw": jz.torch.adamw(lr=0.01)}, labels)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    buffer = optimizer.opt_state.inner_states["muon"].inner_state[0].momentum_buffer["layers"][0]["kernel"]
    assert isinstance(buffer, nnx.Variable) and buffer[...].shape == (5, 8)  # the param's Variable metadata kept
    params = nnx.state(model, nnx.Param)
    updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert isinstance(updates["layers"][0]["kernel"], nnx.Variable)
    assert isinstance(state.inner_states["muon"].inner_state[0].momentum_buffer["layers"][2]["kernel"], nnx.Variable)
    # A constant gradient is rank one, ones / sqrt(40) times its norm: each Newton-Schulz step maps its
    # singular value 1 through a s + b s^3 + c s^5. Shape factor 1 (5 x 8), decay 0.1, lr 0.05.
    s = 1.0
    for _ in range(5):
        s = 3.4445 * s - 4.775 * s**3 + 2.0315 * s**5
    kernel = np.asarray(params["layers"][0]["kernel"][...])
    expected = -0.05 * (s * np.ones((5, 8)) / np.sqrt(40) + 0.1 * kernel)
    np.testing.assert_allclose(updates["layers"][0]["kernel"][...], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.95, True)])
def test_bfloat16_iteration_rounds_where_pytorchs_does(momentum, nesterov):
    """PyTorch's bfloat16 Newton-Schulz: each addmm summed in float32 and rounded once, Python-float coefficients.
    Here the coefficients were rounded to bfloat16 (another polynomial) and every operation apart: 3-6% from
    PyTorch's update, and square matrices were iterated on the transpose of PyTorch's (out, in) weight."""
    params, grads = matrices(), matrices(seed=1)
    tx = jz.torch.muon(lr=0.02, momentum=momentum, nesterov=nesterov, ns_dtype=jnp.bfloat16)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for name, p in params.items():
        expected, _ = reference.torch_muon(0.02, momentum=momentum, nesterov=nesterov, bfloat16=True).update(
            np.asarray(grads[name], np.float64), {"buf": np.zeros(p.shape)}, np.asarray(p, np.float64), 1)
        np.testing.assert_allclose(updates[name], expected, rtol=0, atol=1e-6 * np.max(np.abs(expected)), err_msg=name)
