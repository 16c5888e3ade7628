"""Sharded training on 8 simulated CPU devices (set up in conftest.py).

State laid out like the params after init and after steps, trajectories equal
to the single-device ones under ``jit`` and under ``shard_map``, no all-gather
of parameters in the compiled step, 1/N of the argument bytes per device, and
errors wherever a local-shard answer would be silently wrong.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from tests.conftest import assert_trees_close, grad_fn
from tests.test_momo_sophia import driven, elementwise

AXES = ("data", "model")
# Most bytes are split over all 8 devices; a bias over "model" only, one replicated.
SPECS = {"w1": P("data", "model"), "w2": P("model", "data"), "b1": P("model"), "b2": P()}
SHAPES = {"w1": (16, 32), "w2": (32, 16), "b1": (32,), "b2": (16,)}
STEPS = 4

OPTIMIZERS = {  # name: factory of axis_name (used only by the transforms with reductions)
    "sgd": lambda axes: jz.sgd(0.1),
    "momentum": lambda axes: jz.sgd(0.1, momentum=0.9),
    "nesterov": lambda axes: jz.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda axes: jz.adagrad(0.1),
    "adadelta": lambda axes: jz.adadelta(1.0),
    "rmsprop": lambda axes: jz.rmsprop(1e-2, centered=True, momentum=0.5),
    "adam": lambda axes: jz.adam(1e-2),
    "amsgrad": lambda axes: jz.amsgrad(1e-2),
    "adamw": lambda axes: jz.adamw(1e-2, weight_decay=0.1),
    "nadam": lambda axes: jz.nadam(1e-2),
    "nadamw": lambda axes: jz.nadamw(1e-2),
    "lars": lambda axes: jz.lars(0.5, weight_decay=1e-3, axis_name=axes),
    "lamb": lambda axes: jz.lamb(1e-2, weight_decay=1e-2, axis_name=axes),
    "torch.sgd": lambda axes: jz.torch.sgd(0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "torch.adam": lambda axes: jz.torch.adam(1e-2, amsgrad=True, weight_decay=1e-2),
    "clip_by_global_norm+adamw": lambda axes: jz.chain(jz.clip_by_global_norm(0.5, axis_name=axes), jz.adamw(1e-2)),
    "torch.rprop": lambda axes: jz.torch.rprop(0.05, etas=(0.3, 1.5)),
    "torch.asgd": lambda axes: jz.torch.asgd(0.05, lambd=0.1, t0=2.0, weight_decay=1e-3),
    "torch.adamax": lambda axes: jz.torch.adamax(1e-2, weight_decay=1e-3),
    "torch.sparse_adam": lambda axes: jz.torch.sparse_adam(1e-2, mu_dtype=jz.StochasticBF16()),
    "torch.nadam": lambda axes: jz.torch.nadam(1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
    "torch.radam": lambda axes: jz.torch.radam(1e-2, weight_decay=1e-3),
    "torch.adafactor": lambda axes: jz.torch.adafactor(0.1, weight_decay=1e-2, axis_name=axes),
    "lion": lambda axes: jz.lion(1e-2, weight_decay=1e-2),
    "signum": lambda axes: jz.signum(1e-2, accumulator_dtype=jz.StochasticBF16()),
    # Adafactor unfactored here: these (16, 32) params' (8, 8) shards would make the factored axes ambiguous
    # (that raises); its factored means under shard_map are tested in test_factored.py.
    "adafactor": lambda axes: jz.adafactor(1e-2, momentum=0.9, axis_name=axes),
    "yogi": lambda axes: jz.yogi(1e-2),
    "adabelief": lambda axes: jz.adabelief(1e-2, nesterov=True),
    "adan": lambda axes: jz.adan(1e-2, weight_decay=1e-2),
    "novograd": lambda axes: jz.novograd(1e-2, weight_decay=1e-2, axis_name=axes),
    "fromage": lambda axes: jz.fromage(0.05, axis_name=axes),
    "optimistic_gradient_descent": lambda axes: jz.optimistic_gradient_descent(
        0.05, previous_gradient_dtype=jz.StochasticBF16()
    ),
    "optimistic_adam_v2": lambda axes: jz.optimistic_adam_v2(1e-2, alpha=0.5, beta=1.5),
    # DoG: per-array distances and gradient sums (replicated scalars), the initial params sharded like the params.
    "distance_over_gradients": lambda axes: jz.chain(
        jz.scale_by_distance_over_gradients(1e-2, axis_name=axes), jz.scale(-1.0)
    ),
    "apply_every+adam": lambda axes: jz.chain(jz.apply_every(2, accumulator_dtype=jz.StochasticBF16()), jz.adam(1e-2)),
    "conditionally_mask+adam": lambda axes: jz.conditionally_mask(jz.adam(1e-2), lambda step: step % 3 != 1),
    "rprop": lambda axes: jz.rprop(0.05, 0.3, 1.5),  # Optax's rprop, one step late
    # MoMo's inner products and norm over the whole tree (axis_name), with a loss value passed to each step (a
    # constant: a loss of the local shards would differ between shard_map and one device).
    "momo": lambda axes: driven(jz.momo(0.5, weight_decay=0.1, axis_name=axes), value=4.0),
    "momo_adam": lambda axes: driven(jz.momo_adam(1e-2, adapt_lower_bound=True, axis_name=axes), value=4.0),
    # Sophia's Hutchinson estimate of an elementwise objective is exact on shards too; its key is replicated.
    "sophia": lambda axes: driven(
        jz.sophia(1e-2, update_interval=2, nu_dtype=jz.StochasticBF16()), obj_fn=elementwise
    ),
    # optax.contrib's Adam family: per-parameter moments only, some stochastically rounded (AdEMAMix's two EMAs and
    # two counts, MADGRAD's sums and bfloat16 initial params), no reductions.
    "adopt": lambda axes: jz.adopt(1e-2, mu_dtype=jz.StochasticBF16()),
    "ademamix": lambda axes: jz.ademamix(1e-2, b3=lambda step: 0.99 - 0.09 / (1.0 + step), weight_decay=1e-2),
    "simplified_ademamix": lambda axes: jz.simplified_ademamix(1e-3, alpha=2.0, nu_dtype=jz.StochasticBF16()),
    "acprop": lambda axes: jz.acprop(1e-2, weight_decay=1e-2),
    "madgrad": lambda axes: jz.madgrad(1e-2, weight_decay=1e-3, x0_dtype=jnp.bfloat16),
    # Parameter-free (optax.contrib): global norms (replicated scalars), initial params sharded like the params.
    "dog": lambda axes: jz.dog(init_step=("learning_rate", 1e-2), param_dtype=jz.StochasticBF16(), axis_name=axes),
    "dowg": lambda axes: jz.dowg(weight_decay=1e-3, axis_name=axes),
    "cocob": lambda axes: jz.cocob(weight_decay=1e-3, accumulator_dtype=jz.StochasticBF16()),
    "mechanize+adam": lambda axes: jz.mechanize(jz.adam(1e-2), s_init=1e-2, axis_name=axes),
    # SAM: the params cache sharded like its param, Adam's moments too; normalize's global norm summed over shards.
    "sam+adam": lambda axes: jz.sam(jz.adam(1e-2), jz.chain(jz.normalize(axis_name=axes), jz.sgd(0.05))),
    # Schedule-Free: the iterate z sharded like its param, stochastically rounded; b1, weight sum, max rate replicated.
    "schedule_free_adamw": lambda axes: jz.schedule_free_adamw(1e-2, weight_decay=1e-2, state_dtype=jz.StochasticBF16()),
    # D-adaptation: whole-tree sums (inner products, l1 norm) over shards; 4 per-parameter states incl. a params copy.
    "prodigy": lambda axes: jz.prodigy(0.5, estim_lr0=1e-3, weight_decay=1e-2, axis_name=axes),
    "dadapt_adamw": lambda axes: jz.dadapt_adamw(0.5, estim_lr0=1e-3, grad_sum_dtype=jz.StochasticBF16(), axis_name=axes),
    # Cautious masking: each leaf's count of agreeing entries and its size summed over shards (axis_name).
    "cautious_adamw": lambda axes: jz.cautious_adamw(1e-2, weight_decay=1e-2, axis_name=axes),
    # MARS: each leaf's clip norm over shards; the previous gradient sharded like its param. (Not stochastically
    # rounded here: a norm summed in another order moves a gradient by an ulp, which redraws its rounding.)
    "mars_adamw": lambda axes: jz.mars_adamw(1e-2, weight_decay=1e-2, axis_name=axes),
}


def make_mesh(axis_type: AxisType = AxisType.Auto) -> jax.sharding.Mesh:
    # The simulated CPU devices, even where the default backend is one GPU.
    return jax.make_mesh((2, 4), AXES, axis_types=(axis_type,) * 2, devices=jax.devices("cpu")[:8])


def make_params() -> dict:
    rng = np.random.default_rng(0)
    return {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in SHAPES.items()}


def place(tree: dict, mesh) -> dict:
    return {name: jax.device_put(x, NamedSharding(mesh, SPECS[name])) for name, x in tree.items()}


def gradients(params: dict, t: int) -> dict:
    return {name: grad_fn(p, t, jnp) for name, p in params.items()}


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    return step


def run(step, params, state, place_grads=lambda g: g):
    """The params after each step as NumPy copies (the step may donate its inputs), and the last params and state."""
    trajectory = []
    for t in range(1, STEPS + 1):
        params, state = step(params, state, place_grads(gradients(params, t)))
        trajectory.append(jax.device_get(params))
    return trajectory, params, state


# Each optimizer's steps are compiled once for the whole file: the tests that run a step and the one that
# reads its HLO share the executable (an AOT executable also refuses, instead of recompiling for, params
# or state that come back laid out unlike they went in).


@functools.cache
def optimizer(name, axes=None):
    return OPTIMIZERS[name](axes)


@functools.cache
def sharded_step(name):
    """The donated step on the 2 x 4 mesh, under plain ``jit`` (the partitioner makes every reduction exact)."""
    mesh, tx = make_mesh(), optimizer(name)
    params = place(make_params(), mesh)
    grads = place(gradients(make_params(), 1), mesh)
    return jax.jit(step_fn(tx), donate_argnums=(0, 1)).lower(params, jz.init_sharded(tx, params), grads).compile()


@functools.cache
def single_device_step(name):
    tx, params = optimizer(name), make_params()
    return jax.jit(step_fn(tx)).lower(params, tx.init(params), params).compile()


@functools.cache
def single_device_trajectory(name):
    params = make_params()
    return run(single_device_step(name), params, optimizer(name).init(params))[0]


def assert_laid_out_like_params(tx, state, params, mesh):
    def same_as_param(leaf, param):
        if leaf.shape != param.shape:  # a moment reduced over some dims (Adafactor's factors, a scalar stand-in)
            kept = [a if leaf.ndim == param.ndim and n == m else None
                    for a, n, m in zip(list(param.sharding.spec) + [None] * param.ndim, leaf.shape, param.shape)]
            assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, P(*kept)), leaf.ndim), (leaf.sharding, kept)
            return leaf
        assert leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim), (leaf.sharding, param.sharding)
        return leaf

    def replicated(leaf):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == mesh.size, leaf.sharding
        return leaf

    jz.tree.map_params(tx, same_as_param, state, params, transform_non_params=lambda x: jax.tree.map(replicated, x))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_jit_state_follows_params_and_trajectory_matches_one_device(name):
    mesh = make_mesh()
    tx = optimizer(name)
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    assert_laid_out_like_params(tx, state, params, mesh)

    sharded, final_params, final_state = run(sharded_step(name), params, state, lambda g: place(g, mesh))
    assert_laid_out_like_params(tx, final_state, final_params, mesh)
    assert_trees_close(sharded, single_device_trajectory(name), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_shard_map_trajectory_matches_one_device(name):
    mesh = make_mesh()
    tx = optimizer(name, AXES)
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    local_step = jax.shard_map(
        step_fn(tx), mesh=mesh, in_specs=(SPECS, state_specs, SPECS), out_specs=(SPECS, state_specs)
    )
    sharded, final_params, final_state = run(jax.jit(local_step), params, state, lambda g: place(g, mesh))
    assert_laid_out_like_params(tx, final_state, final_params, mesh)
    assert_trees_close(sharded, single_device_trajectory(name), rtol=2e-5, atol=1e-6)


COLLECTIVES = "all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"


def _collective_sizes(hlo: str) -> list[tuple[str, int]]:
    # Result shapes of collectives, e.g. "f32[16,32]{1,0} all-gather(" -> ("all-gather", 512).
    found = re.findall(rf"\w+\[([\d,]*)\][^ ]* ({COLLECTIVES})(?:-start)?\(", hlo)
    return [(op, int(np.prod([int(d) for d in dims.split(",") if d]))) for dims, op in found]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_step_moves_no_parameter_and_holds_one_eighth(name):
    mesh = make_mesh()
    tx = optimizer(name)
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    grads = place(gradients(make_params(), 1), mesh)
    compiled = sharded_step(name)
    smallest_param = min(int(np.prod(shape)) for shape in SHAPES.values())
    collectives = _collective_sizes(compiled.as_text())
    assert [(op, n) for op, n in collectives if n >= smallest_param] == []  # only scalar norms may travel
    if name in ("lamb", "lars", "clip_by_global_norm+adamw"):
        assert collectives, "the norms need an all-reduce; finding none means the HLO pattern is stale"

    local_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves((params, state, grads)))
    full_bytes = sum(x.nbytes for x in jax.tree.leaves((params, state, grads)))
    unsharded = single_device_step(name)
    sharded_size = compiled.memory_analysis().argument_size_in_bytes
    unsharded_size = unsharded.memory_analysis().argument_size_in_bytes
    # Every array is an argument; a scalar the step never reads (MoMo's lb without adapt_lower_bound) is pruned.
    scalar_bytes = sum(x.nbytes for x in jax.tree.leaves((params, state, grads)) if x.ndim == 0)
    assert unsharded_size >= full_bytes - scalar_bytes
    assert sharded_size <= 1.1 * local_bytes
    # 8-way split but for a 4-way bias and a replicated one: 0.14 of the bytes. Adafactor's factors (n + m
    # numbers per matrix) split only along the dim each keeps, and its scalar stand-ins replicate: 0.16.
    assert sharded_size / unsharded_size < (0.17 if name == "torch.adafactor" else 0.16)


def test_init_sharded_under_explicit_axes_and_for_optax_transformations():
    mesh = make_mesh(AxisType.Explicit)
    params = place(make_params(), mesh)
    cases = [
        (jz.adamw(1e-3), lambda state: state[0].mu),
        (optax.adamw(1e-3), lambda state: state[0].mu),
        (jz.chain(jz.clip_by_global_norm(1.0), jz.lamb(1e-3)), lambda state: state[1][0].mu),
    ]
    for tx, first_moment in cases:
        state = jz.init_sharded(tx, params)
        mu = first_moment(state)
        for name in SPECS:
            assert mu[name].sharding.is_equivalent_to(params[name].sharding, mu[name].ndim)
        jz.check_state_shardings(tx, params, state)


def test_check_state_shardings_names_the_offending_path():
    mesh = make_mesh()
    params = place(make_params(), mesh)
    tx = jz.adam(1e-3)
    state = jz.init_sharded(tx, params)
    wrong = state[0]._replace(nu=state[0].nu | {"w2": jax.device_put(state[0].nu["w2"], NamedSharding(mesh, P()))})
    with pytest.raises(ValueError, match=r"state\[0\]\.nu\['w2'\] is sharded P\(\), expected P\('model', 'data'\)"):
        jz.check_state_shardings(tx, params, (wrong, state[1]))
    jz.check_state_shardings(tx, params, state)


def _in_shard_map(tx, check_vma=True, manual_axes=AXES, axis_type=AxisType.Auto):
    mesh = make_mesh(axis_type)
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    # shard_map's specs name only its manual axes; the partitioner splits the others.
    manual = lambda spec: P(*(axis if axis in manual_axes else None for axis in spec))
    specs = jax.tree.map(lambda s: manual(s.spec), jz.state_shardings(tx, params))
    param_specs = {name: manual(spec) for name, spec in SPECS.items()}
    local = jax.shard_map(step_fn(tx), mesh=mesh, in_specs=(param_specs, specs, param_specs),
                          out_specs=(param_specs, specs), check_vma=check_vma, axis_names=set(manual_axes))
    return jax.jit(local)(params, state, place(gradients(make_params(), 1), mesh))


@pytest.mark.parametrize(
    "tx",
    [jz.clip_by_global_norm(1.0), jz.lamb(1e-3), jz.lars(0.1), jz.clip_by_block_rms(1.0),
     jz.apply_if_finite(jz.sgd(0.1), 3), jz.adaptive_grad_clip(0.1)],
    ids=["clip_by_global_norm", "lamb", "lars", "clip_by_block_rms", "apply_if_finite", "adaptive_grad_clip"],
)
def test_a_local_shard_reduction_without_axis_name_raises(tx):
    with pytest.raises(ValueError, match="varies over mesh axes"):
        _in_shard_map(tx)


def test_axis_name_errors_name_the_problem():
    for tx in [jz.clip_by_global_norm(1.0), jz.clip_by_global_norm(1.0, axis_name=AXES), jz.adaptive_grad_clip(0.1)]:
        with pytest.raises(ValueError, match="check_vma=False"):  # would otherwise be a silent local answer
            _in_shard_map(tx, check_vma=False)
    with pytest.raises(ValueError, match=r"leaves out mesh axes \['model'\]"):
        _in_shard_map(jz.clip_by_global_norm(1.0, axis_name="data"))
    with pytest.raises(ValueError, match=r"names \['modle'\], not axes of the mesh"):
        _in_shard_map(jz.clip_by_global_norm(1.0, axis_name=("data", "modle")))
    with pytest.raises(ValueError, match="axis_name must be None, a mesh axis name or a tuple"):
        jz.clip_by_global_norm(1.0, axis_name=3)


def test_under_pmap_the_reductions_say_to_pass_an_empty_axis_name_and_then_match_one_device():
    # JAX runs pmap as a shard_map that does not track varying values: a reduction cannot tell a replicated array
    # from a shard there. With the gradients pmean-ed, axis_name=() (and P() specs for the Kronecker
    # preconditioners, which need whole arrays) gives each device the one-device answer, as Optax's under pmap.
    params = make_params()
    devices = jax.devices("cpu")[:2]  # conftest's simulated ones: a machine with one accelerator has one device
    on_devices = lambda tree: jax.tree.map(lambda x: jnp.stack([x, 3 * x]), tree)  # noqa: E731
    whole = jax.tree.map(lambda _: P(), params)

    def pmapped(tx):
        def update(g, p):
            g = jax.lax.pmean(g, "batch")
            return tx.update(g, tx.init(p), p)[0]

        return jax.pmap(update, axis_name="batch", devices=devices)(on_devices(gradients(params, 1)),
                                                                     jax.tree.map(lambda x: jnp.stack([x, x]), params))

    with pytest.raises(ValueError, match=r"inside jax.pmap, .* pass axis_name=\(\)"):
        pmapped(jz.clip_by_global_norm(0.1))
    with pytest.raises(ValueError, match=r"Under pmap each device holds whole arrays: axis_name=\(\) and P\(\)"):
        pmapped(jz.shampoo(0.1))
    mean_grads = jax.tree.map(lambda g: 2 * g, gradients(params, 1))  # the mean of g and 3 g
    for ours, one_device in [(jz.clip_by_global_norm(0.1, axis_name=()), jz.clip_by_global_norm(0.1)),
                             (jz.shampoo(0.1, axis_name=(), partition_specs=whole), jz.shampoo(0.1))]:
        on_cpu = jax.device_put((mean_grads, params), devices[0])  # the same backend as the pmap
        expected = jax.jit(lambda g, p, tx=one_device: tx.update(g, tx.init(p), p)[0])(*on_cpu)
        for device in range(2):
            assert_trees_close(jax.tree.map(lambda x: x[device], pmapped(ours)), expected, rtol=1e-6, atol=1e-7)


def test_axis_name_is_exact_under_plain_jit_and_partially_manual_shard_map():
    expected = single_device_trajectory("clip_by_global_norm+adamw")[0]
    tx = OPTIMIZERS["clip_by_global_norm+adamw"](AXES)
    params = make_params()
    assert_trees_close(jax.jit(step_fn(tx))(params, tx.init(params), gradients(params, 1))[0], expected, rtol=1e-6)
    # Only "model" is manual; "data" stays with the partitioner, which is exact by itself.
    partial, _ = _in_shard_map(tx, manual_axes=("model",))
    assert_trees_close(partial, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["momo", "clip_by_global_norm+adamw"])
def test_partially_manual_shard_map_on_explicit_axes_matches_one_device(name):
    # "data" stays Explicit inside the shard_map: a contraction over it (momo's inner products) must be told
    # its result's layout, which only all-Explicit meshes were told before.
    partial, _ = _in_shard_map(OPTIMIZERS[name](AXES), manual_axes=("model",), axis_type=AxisType.Explicit)
    assert_trees_close(partial, single_device_trajectory(name)[0], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "lamb", "clip_by_global_norm+adamw", "adaptive_grad_clip+sgd"])
def test_jit_steps_on_an_explicit_axes_mesh_match_one_device(name):
    make = OPTIMIZERS.get(name, lambda axes: jz.chain(jz.adaptive_grad_clip(0.05), jz.sgd(0.1, momentum=0.9)))
    tx = make(None)
    mesh = make_mesh(AxisType.Explicit)
    params = place(make_params(), mesh)
    sharded, final_params, final_state = run(jax.jit(step_fn(tx)), params, jz.init_sharded(tx, params),
                                             lambda g: place(g, mesh))
    single = make_params()
    expected = run(jax.jit(step_fn(tx)), single, tx.init(single))[0]
    assert_trees_close(sharded, expected, rtol=2e-5, atol=1e-6)
    jz.check_state_shardings(tx, final_params, final_state)


def test_sharded_state_round_trips_through_orbax(tmp_path):
    import orbax.checkpoint as ocp

    mesh = make_mesh()
    tx = jz.lamb(1e-2)
    params = place(make_params(), mesh)
    _, params, state = run(jax.jit(step_fn(tx)), params, jz.init_sharded(tx, params), lambda g: place(g, mesh))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    # The restore target carries the layout: every shard goes straight back to its device.
    target = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        {"params": params, "opt_state": state},
        {"params": {name: x.sharding for name, x in params.items()}, "opt_state": jz.state_shardings(tx, params)},
    )
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    jz.check_state_shardings(tx, restored["params"], restored["opt_state"])
    for ours, saved in zip(jax.tree.leaves(restored), jax.tree.leaves({"params": params, "opt_state": state})):
        assert ours.sharding.is_equivalent_to(saved.sharding, ours.ndim)
        np.testing.assert_array_equal(ours, saved, strict=True)


def test_state_shardings_explains_an_init_it_cannot_trace():
    mesh = make_mesh()
    params = place(make_params(), mesh)
    with pytest.raises(ValueError, match="tracing this transformation's init with sharded types failed"):
        jz.state_shardings(optax.flatten(optax.adam(1e-3)), params)


def test_block_rms_and_per_shard_opt_out_under_shard_map():
    expected = jz.clip_by_block_rms(0.5).update(gradients(make_params(), 1), jz.EmptyState())[0]
    params, _ = _in_shard_map(jz.chain(jz.clip_by_block_rms(0.5, axis_name=AXES), jz.sgd(1.0)))
    assert_trees_close(jax.tree.map(lambda a, b: a - b, make_params(), params), expected, rtol=1e-5, atol=1e-6)
    # axis_name=() asks for per-shard RMS on purpose: a different, local answer, no error.
    local, _ = _in_shard_map(jz.chain(jz.clip_by_block_rms(0.5, axis_name=()), jz.sgd(1.0)))
    assert not np.allclose(local["w1"], params["w1"])
    np.testing.assert_array_equal(local["b2"], params["b2"])  # replicated: its one shard is the whole


def test_apply_if_finite_skips_on_every_device_when_one_shard_is_not_finite():
    mesh = make_mesh()
    tx = jz.apply_if_finite(jz.adam(1e-2), 3, axis_name=AXES)
    params = place(make_params(), mesh)
    state = jz.init_sharded(tx, params)
    specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    local = jax.jit(jax.shard_map(step_fn(tx), mesh=mesh, in_specs=(SPECS, specs, SPECS), out_specs=(SPECS, specs)))
    grads = gradients(make_params(), 1)
    grads["w1"] = grads["w1"].at[0, 0].set(jnp.nan)  # lives on one device only
    new_params, new_state = local(params, state, place(grads, mesh))
    for name in SPECS:
        np.testing.assert_array_equal(new_params[name], params[name])
    assert int(new_state.notfinite_count) == 1 and not bool(new_state.last_finite)


@pytest.mark.parametrize("name", ["muon", "psgd_kron"])
def test_a_state_from_init_sharded_compiles_the_jitted_step_once_under_explicit_axes(name):
    """Under Explicit mesh axes a jitted step returns a replicated vector built from constants (Muon's coefficients,
    PSGD's key) as P(None); init_sharded placed it as P(), the same layout, and the step compiled a second time."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,), devices=jax.devices("cpu")[:8])
    params = {"w": jax.device_put(jnp.ones((4, 8)), NamedSharding(mesh, P(None, "d")))}
    tx = {"muon": lambda: jz.muon(0.02), "psgd_kron": lambda: jz.psgd_kron(1e-3, key=0)}[name]()
    with jax.set_mesh(mesh):
        step = jax.jit(tx.update)
        state = jz.init_sharded(tx, params)
        for _ in range(2):
            _, state = step(params, state, params)
    assert step._cache_size() == 1


def test_a_state_from_init_sharded_compiles_the_jitted_step_once_under_auto_axes():
    """Under Auto mesh axes a jitted step returns a (8, 3) leaf split over rows as P('d'); init_sharded placed the
    state as P('d', None), the sharded types' spelling of the same layout, and the step compiled a second time."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
    params = {"w": jax.device_put(jnp.ones((8, 3)), NamedSharding(mesh, P("d"))),
              "b": jax.device_put(jnp.ones(3), NamedSharding(mesh, P()))}
    tx = jz.adamw(1e-3)
    step = jax.jit(lambda p, s, g: (lambda u, s: (jz.apply_updates(p, u), s))(*tx.update(g, s, p)))
    state = jz.init_sharded(tx, params)
    for _ in range(3):
        params, state = step(params, state, jax.tree.map(lambda x: 0.1 * x, params))
    assert step._cache_size() == 1
