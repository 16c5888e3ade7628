"""Our transformations inside Flax (nnx.Optimizer, linen TrainState), compared with Optax's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import jaxopt_zoo as jz
from jaxopt_zoo.base import init_empty_state
from tests.conftest import MLP, assert_trees_equal
from tests.test_momo_sophia import driven

X = jax.random.normal(jax.random.key(0), (16, 5))
Y = jnp.sin(X.sum(axis=1, keepdims=True))
OPTAX_SM3 = lambda: optax.sm3(1e-2)  # noqa: E731  its state's structure changes inside nnx.Optimizer (ours does not)


def _train_nnx(tx, steps=10, same_structure=True, model=None, **extra):
    model = MLP(nnx.Rngs(0)) if model is None else model
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    fresh = jax.tree.structure(nnx.state(optimizer))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads, **extra)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(steps)]
    # A state whose structure changed after a step compiles the step again, and its checkpoint no longer restores
    # into a freshly built optimizer (Optax's SM3, whose per-param lists become nnx.State objects).
    assert not same_structure or jax.tree.structure(nnx.state(optimizer)) == fresh
    return losses, nnx.state(model, nnx.Param), optimizer


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: jz.adamw(1e-2, weight_decay=0.1), lambda: optax.adamw(1e-2, weight_decay=0.1)),
        (lambda: jz.sgd(0.1, momentum=0.9, nesterov=True), lambda: optax.sgd(0.1, 0.9, nesterov=True)),
        (lambda: jz.torch.adamax(lr=1e-2), lambda: optax.adamax(1e-2)),
        (lambda: jz.lion(1e-3, weight_decay=0.1), lambda: optax.lion(1e-3, weight_decay=0.1)),
        (lambda: jz.muon(1e-2, weight_decay=0.1), lambda: optax.contrib.muon(1e-2, weight_decay=0.1)),
        (lambda: jz.adafactor(1e-2, 4, momentum=0.9), lambda: optax.adafactor(1e-2, 4, momentum=0.9)),
        (lambda: jz.sm3(1e-2), OPTAX_SM3),
        (lambda: jz.adabelief(1e-2, nesterov=True), lambda: optax.adabelief(1e-2, nesterov=True)),
        (lambda: jz.novograd(1e-2, weight_decay=0.1), lambda: optax.novograd(1e-2, weight_decay=0.1)),
        (lambda: jz.noisy_sgd(0.1, key=5), lambda: optax.noisy_sgd(0.1, key=5)),  # a PRNG key in the NNX state
        (lambda: jz.optimistic_adam_v2(1e-2, alpha=0.5), lambda: optax.optimistic_adam_v2(1e-2, alpha=0.5)),
        (
            lambda: jz.chain(jz.scale_by_distance_over_gradients(1e-3), jz.scale(-1.0)),
            lambda: optax.chain(optax.scale_by_distance_over_gradients(1e-3), optax.scale(-1.0)),
        ),
        (
            lambda: jz.conditionally_mask(jz.chain(jz.apply_every(2), jz.adam(1e-2)), lambda step: step % 3 != 2),
            lambda: optax.conditionally_mask(optax.chain(optax.apply_every(2), optax.adam(1e-2)), lambda step: step % 3 != 2),
        ),
        (lambda: jz.combine.flatten(jz.adam(1e-2)), lambda: optax.flatten(optax.adam(1e-2))),
        (
            lambda: jz.combine.multi_transform({"m": jz.adam(1e-2), "v": jz.sgd(0.1)}, lambda p: jax.tree.map(
                lambda x: "m" if x.ndim > 1 else "v", p)),
            lambda: optax.multi_transform({"m": optax.adam(1e-2), "v": optax.sgd(0.1)}, lambda p: jax.tree.map(
                lambda x: "m" if x.ndim > 1 else "v", p)),
        ),
        (lambda: jz.rprop(1e-2), lambda: optax.rprop(1e-2)),
        # GaLore: the (5, 8) and (8, 1) kernels projected at rank 2 (their projectors refreshed every 4 steps).
        (lambda: jz.galore(1e-2, rank=2, update_proj_gap=4), lambda: optax.contrib.galore(1e-2, rank=2, update_proj_gap=4)),
        # Without a line search, L-BFGS needs no value_fn (test_linesearch.py passes one through nnx.Optimizer).
        (lambda: jz.lbfgs(0.1, memory_size=3, linesearch=None), lambda: optax.lbfgs(0.1, memory_size=3, linesearch=None)),
        # Sophia's Hutchinson estimate through nnx.Optimizer (driven: obj_fn= and value= passed to each update).
        (
            lambda: driven(jz.sophia(1e-2, update_interval=2)),
            lambda: driven(optax.contrib.sophia(1e-2, update_interval=2)),
        ),
        (lambda: jz.ademamix(1e-2, b3=0.99, weight_decay=0.1), lambda: optax.contrib.ademamix(1e-2, b3=0.99, weight_decay=0.1)),
        (
            lambda: jz.schedule_free_adamw(1e-2, warmup_steps=3, weight_decay=0.1),
            lambda: optax.contrib.schedule_free_adamw(1e-2, warmup_steps=3, weight_decay=0.1),
        ),
        (lambda: jz.prodigy(0.5, weight_decay=0.1), lambda: optax.contrib.prodigy(0.5, weight_decay=0.1)),
        # Mechanic around Adam: the params' copy x0 and the inner state in the NNX optimizer's state.
        (lambda: jz.mechanize(jz.adam(1e-2), s_init=1e-2), lambda: optax.contrib.mechanize(optax.adam(1e-2), s_init=1e-2)),
        (  # SAM: a copy of the NNX params in the state; every other step is the ascent step
            lambda: jz.sam(jz.adam(1e-2), jz.chain(jz.normalize(), jz.sgd(0.05))),
            lambda: optax.contrib.sam(optax.adam(1e-2), optax.chain(optax.contrib.normalize(), optax.sgd(0.05))),
        ),
    ],
)
def test_nnx_optimizer_trains_like_optax(ours, theirs):
    our_losses, our_params, _ = _train_nnx(ours())
    their_losses, their_params, _ = _train_nnx(theirs(), same_structure=theirs is not OPTAX_SM3)
    assert our_losses == their_losses
    assert our_losses[-1] < our_losses[0]
    assert_trees_equal(jax.tree.leaves(our_params), jax.tree.leaves(their_params))


def test_nnx_optimizer_passes_extra_args_through_chain():
    seen = []

    def update(updates, state, params=None, **extra_args):
        seen.append(sorted(extra_args))
        return updates, state

    tx = jz.chain(jz.GradientTransformation(init_empty_state, update), jz.adam(1e-2))
    _train_nnx(tx, steps=2, value=jnp.asarray(1.0))
    assert seen and all(names == ["value"] for names in seen)


def test_state_keeps_flax_variable_metadata():
    model = MLP(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    state = jz.adam(1e-3).init(params)
    leaves = jax.tree.leaves(state[0].mu, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert leaves and all(isinstance(x, nnx.Param) for x in leaves)


class _Annotated(nnx.Module):
    """MLP's layers with sharding names on their params (``nnx.with_partitioning``), as a model laid out on a mesh."""

    def __init__(self, rngs: nnx.Rngs):
        named = lambda init, names: nnx.with_partitioning(init, names)  # noqa: E731
        kernel, bias = nnx.initializers.lecun_normal(), nnx.initializers.zeros_init()
        self.hidden = nnx.Linear(5, 8, kernel_init=named(kernel, (None, "y")), bias_init=named(bias, ("y",)), rngs=rngs)
        self.out = nnx.Linear(8, 1, kernel_init=named(kernel, (None, None)), bias_init=named(bias, (None,)), rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.tanh(self.hidden(x)))


RESHAPED_STATE = {  # state leaves not shaped like their params: factors, scalars, histories, projections
    "adafactor": lambda: jz.adafactor(1e-2, min_dim_size_to_factor=4),
    "torch.adafactor": lambda: jz.torch.adafactor(1e-2),
    "novograd": lambda: jz.novograd(1e-2),
    "lbfgs": lambda: jz.lbfgs(0.1, memory_size=3, linesearch=None),
    "galore": lambda: jz.galore(1e-2, rank=2),
}


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
@pytest.mark.parametrize("name", list(RESHAPED_STATE))
def test_nnx_optimizer_of_a_model_annotated_for_a_mesh_keeps_reshaped_state_leaves_bare(name, axis_type):
    # A state leaf built from a param inherited its Variable's sharding names, which Flax then laid it out by:
    # nnx.Optimizer raised ("Sharding spec ('y',) ... does not evenly divide", Optax's too). Now it is a bare array,
    # a moment shaped like its param keeps the param's Variable, and the steps are those of the unannotated model.
    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(getattr(jax.sharding.AxisType, axis_type),) * 2,
                         devices=jax.devices("cpu")[:8])
    with jax.set_mesh(mesh):
        sharded = _train_nnx(RESHAPED_STATE[name](), steps=3, model=_Annotated(nnx.Rngs(0)))
    plain = _train_nnx(RESHAPED_STATE[name](), steps=3)
    np.testing.assert_allclose(sharded[0], plain[0], rtol=1e-5)
    for ours, expected in zip(jax.tree.leaves(sharded[1]), jax.tree.leaves(plain[1])):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-6)
    variables = jax.tree.leaves(nnx.state(sharded[2]), is_leaf=lambda x: isinstance(x, nnx.Variable))
    names = [v.get_metadata().get("out_sharding") for v in variables if isinstance(v, nnx.Variable)]
    assert any(names)  # a state leaf shaped like its param keeps the param's names
    assert all(len(n) == jnp.ndim(v.get_value()) for n, v in zip(names, variables) if n), names


@pytest.mark.parametrize("name", list(RESHAPED_STATE))
def test_a_state_of_nnx_variables_steps_as_plain_arrays_do(name):
    # nnx.split's params are Variables, which Optax's rules take: the state leaves these keep bare (not shaped like
    # their params) met the gradients' Variables in one tree map, which raised (adafactor, novograd, galore).
    _, params = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)
    pure = nnx.to_pure_dict(params)
    tx = RESHAPED_STATE[name]()
    extra = dict(value=jnp.asarray(1.0), value_fn=lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)))

    def steps(params):
        grads = jax.tree.map(lambda p: jnp.sin(3 * p), params)
        state = tx.init(params)
        for _ in range(2):
            updates, new_state = jax.jit(
                lambda g, s, p: tx.update(g, s, p, **(dict(extra, grad=g) if name == "lbfgs" else {})))(grads, state,
                                                                                                      params)
            assert jax.tree.structure(new_state) == jax.tree.structure(state)
            state, params = new_state, jz.apply_updates(params, updates)
        return params

    assert_trees_equal(nnx.to_pure_dict(steps(params)), steps(pure))


def test_linen_train_state_trains_like_optax():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))

    net = Net()
    params = net.init(jax.random.key(1), X)

    def train(tx):
        state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=tx)

        @jax.jit
        def step(state):
            grads = jax.grad(lambda p: jnp.mean((state.apply_fn(p, X) - Y) ** 2))(state.params)
            return state.apply_gradients(grads=grads)

        for _ in range(10):
            state = step(state)
        return state

    ours, theirs = train(jz.adamw(1e-2)), train(optax.adamw(1e-2))
    assert_trees_equal(ours.params, theirs.params)
    assert int(ours.step) == 10
    assert not np.allclose(jax.tree.leaves(ours.params)[0], jax.tree.leaves(params)[0])


def test_reshaped_state_of_a_variable_holding_a_tree_is_built_inside_it():
    # nnx.Param((a, b)): tree.map_reshaped once handed the whole tuple to novograd's leaf function.
    params = nnx.State({"pair": nnx.Param((jnp.ones(3), jnp.ones((2, 2))))})
    for name in ("novograd", "adafactor", "lbfgs"):
        state = RESHAPED_STATE[name]().init(params)
        assert len(jax.tree.leaves(state)) > 2, name


# --- jax.export -----------------------------------------------------------------------------------------------------


EXPORTED_STEPS = {
    "adam_8bit": lambda: jz.adam(1e-3, mu_dtype=jz.Blockwise8Bit(min_size=0)),
    "masked_partition": lambda: jz.partition({"a": jz.masked(jz.lion(1e-3), lambda p: {"w": True, "b": False}),
                                              "b": jz.torch.adamw(lr=1e-3)}, {"w": "a", "b": "b"}),
    "multisteps_inject": lambda: jz.MultiSteps(jz.inject_hyperparams(jz.adamw)(learning_rate=1e-3), 2),
    "shampoo": lambda: jz.shampoo(1e-2, precondition_frequency=2),
    "schedule_free": lambda: jz.schedule_free_adamw(1e-3),
}


@pytest.mark.parametrize("name", list(EXPORTED_STEPS))
def test_a_jitted_step_exports_serializes_and_runs_as_the_jitted_step(name):
    """jax.export serializes a step taking and returning a state (Optax's states cannot be: unregistered types)."""
    from jax import export

    tx = EXPORTED_STEPS[name]()
    params = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.ones(4)}

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    state = tx.init(params)
    restored = export.deserialize(export.export(jax.jit(step))(params, state, params).serialize())
    assert_trees_equal(restored.call(params, state, params), jax.jit(step)(params, state, params))


def test_every_optimizers_state_serializes_with_jax_export():
    from jax import export

    from benchmarks.seed_optimizers import SEED_OPTIMIZERS

    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    builders = {name: lambda entry=entry: entry.ours(1e-3) for name, entry in SEED_OPTIMIZERS.items()} | {
        f"torch.{name}": getattr(jz.torch, name) for name in jz.torch.__all__ if name not in ("lbfgs", "muon")} | {
        "torch.lbfgs": lambda: jz.torch.lbfgs(), "torch.muon": lambda: jz.partition(
            {"m": jz.torch.muon(), "a": jz.torch.adamw()}, {"w": "m", "b": "a"}),
        "lookahead": lambda: jz.lookahead(jz.adam(1e-3), 2, 0.5), "sam": lambda: jz.sam(jz.adam(1e-3), jz.sgd(0.1))}
    identity = jax.jit(lambda state: state)
    for name, build in builders.items():
        state = jax.eval_shape(build().init, jz.LookaheadParams.init_synced(params) if name == "lookahead" else params)
        restored = export.deserialize(export.export(identity)(state).serialize())
        assert restored.out_tree == jax.tree.structure(state), name


def test_export_names_are_the_classes_own_and_registering_again_is_harmless():
    import importlib

    from jax import export

    # EmptyState is also public as NormalizeState (and other aliases): it is recorded under its own name.
    blob = export.export(jax.jit(lambda state: state))(jz.scale(2.0).init({"w": jnp.ones(2)})).serialize()
    assert b"jaxopt_zoo.EmptyState" in blob and b"NormalizeState" not in blob
    # Reloading the package (IPython's autoreload) registers nothing twice. JAX allows one registration per class: a
    # user's own, needed before the package registered its states, now raises in JAX and can be dropped.
    importlib.reload(jz)
    with pytest.raises(ValueError, match="Duplicate serialization registration"):
        export.register_namedtuple_serialization(jz.ScaleByAdamState, serialized_name="mine.ScaleByAdamState")
