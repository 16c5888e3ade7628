"""chain, named_chain and masked: composition, extra args, Optax members, state layout."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_zoo as jz
from jaxopt_zoo.base import init_empty_state
from tests.conftest import assert_trees_close, assert_trees_equal, make_params, run_ours, run_together

MASK = {"dense": {"w": True, "b": False}, "scale": True}


def recorder(seen: list):
    """A transformation that records the extra args it receives and doubles the updates."""

    def update(updates, state, params=None, **extra_args):
        seen.append(extra_args)
        return jax.tree.map(lambda g: 2 * g, updates), state

    return jz.GradientTransformation(init_empty_state, update)


def test_chain_applies_members_in_order_and_keeps_their_states():
    params = make_params()
    tx = jz.chain(jz.scale_by_adam(), jz.scale(-0.5), jz.trace(0.9))
    state = tx.init(params)
    assert isinstance(state, tuple) and len(state) == 3
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = tx.update(grads, state, params)
    u1, s1 = jz.scale_by_adam().update(grads, state[0], params)
    u3, s3 = jz.trace(0.9).update(jax.tree.map(lambda u: -0.5 * u, u1), state[2], params)
    assert_trees_equal(updates, u3)
    assert_trees_equal(new_state[0], s1)
    assert_trees_equal(new_state[2], s3)


def test_chain_forwards_extra_args_to_every_member():
    seen = []
    tx = jz.chain(recorder(seen), jz.scale_by_adam(), recorder(seen))
    params = make_params()
    tx.update(params, tx.init(params), params, value=1.5, aux="x")
    assert seen == [{"value": 1.5, "aux": "x"}] * 2


def test_optax_member_in_our_chain_gets_no_extra_args():
    params = make_params()
    tx = jz.chain(jz.scale_by_adam(), optax.scale(-1e-2))  # optax.scale takes no **extra_args
    (ours, _), (theirs, _) = run_together([tx, optax.adam(1e-2)], params)
    assert_trees_equal(ours, theirs)
    updates, _ = tx.update(params, tx.init(params), params, value=1.0)  # must not raise
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_optax_extra_args_member_receives_them():
    seen = []

    def update(updates, state, params=None, **extra_args):
        seen.append(extra_args)
        return updates, state

    tx = jz.chain(optax.GradientTransformationExtraArgs(optax.init_empty_state, update))
    tx.update({}, tx.init({}), value=2.0)
    assert seen == [{"value": 2.0}]


def test_ours_inside_optax_chain():
    params = make_params()
    (ours, _), (theirs, _) = run_together([
        optax.chain(jz.scale_by_adam(), jz.add_decayed_weights(0.1), optax.scale(-1e-2)),
        optax.adamw(1e-2, weight_decay=0.1),
    ], params)
    assert_trees_equal(ours, theirs)


def test_chain_rejects_state_of_another_chain():
    tx = jz.chain(jz.scale_by_adam(), jz.scale(-1.0))
    params = make_params()
    with pytest.raises(ValueError, match="chain: expected the state of 2 transformations"):
        tx.update(params, (tx.init(params)[0],), params)


def test_chain_rejects_non_transformations():
    with pytest.raises(TypeError, match="chain: expected gradient transformations"):
        jz.chain(jz.scale(1.0), lambda g: g)


def test_named_chain_matches_chain_and_names_state():
    params = make_params()
    named = jz.named_chain(("adam", jz.scale_by_adam()), ("lr", jz.scale_by_learning_rate(1e-2)))
    state = named.init(params)
    assert list(state) == ["adam", "lr"]
    assert isinstance(state["adam"], jz.ScaleByAdamState)
    (a, _), (b, _) = run_together([named, jz.adam(1e-2)], params)
    assert_trees_equal(a, b)
    with pytest.raises(ValueError, match="named_chain: names must be distinct"):
        jz.named_chain(("a", jz.identity()), ("a", jz.identity()))


@pytest.mark.parametrize("mask", [MASK, lambda p: jax.tree.map(lambda x: x.ndim != 1, p)])
def test_masked_matches_optax_and_keeps_no_state_for_masked_out(mask):
    params = make_params()
    (ours, our_state), (theirs, _) = run_together([
        jz.chain(jz.masked(jz.scale_by_adam(), mask), jz.scale(-1e-2)),
        optax.chain(optax.masked(optax.scale_by_adam(), mask), optax.scale(-1e-2)),
    ], params)
    assert_trees_equal(ours, theirs)
    inner = our_state[0].inner_state
    assert isinstance(inner.mu["dense"]["b"], jz.MaskedNode)
    assert inner.mu["dense"]["w"].shape == (3, 4)
    # The masked-out leaf got the raw update (-1e-2 * gradient), i.e. plain SGD.
    sgd, _ = run_ours(jz.sgd(1e-2), params)
    np.testing.assert_array_equal(ours[-1]["dense"]["b"], sgd[-1]["dense"]["b"])


def test_masked_accepts_a_prefix_mask():
    params = make_params()
    tx = jz.masked(jz.scale(0.0), {"dense": False, "scale": True})
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))
    assert float(updates["scale"]) == 0.0
    assert np.all(np.asarray(updates["dense"]["w"]) == 1.0)


def test_masked_reports_bad_masks():
    params = make_params()
    with pytest.raises(ValueError, match="masked: the mask must have the params' structure"):
        jz.masked(jz.scale_by_adam(), {"dense": True, "other": True}).init(params)
    with pytest.raises(ValueError, match="masked: mask leaves must be booleans known before tracing, got 1"):
        jz.masked(jz.scale_by_adam(), {"dense": 1, "scale": True}).init(params)
    jz.masked(jz.scale_by_adam(), {"dense": jnp.asarray(True), "scale": False}).init(params)  # concrete arrays are fine


def test_callable_mask_with_none_update_leaves():
    # The mask is built from the params, so a None update leaf does not change it.
    params = make_params()
    tx = jz.adamw(1e-2, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    grads = jax.tree.map(jnp.ones_like, params)
    grads["dense"]["b"] = None
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["dense"]["b"] is None
    full, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_array_equal(updates["dense"]["w"], full["dense"]["w"])


@jax.tree_util.register_pytree_node_class
class CallableModel:
    """A tree whose class is callable, as an Equinox module with a forward pass: a mask of it is a tree."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, x):
        return self.w * x + self.b

    def tree_flatten(self):
        return (self.w, self.b), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def test_a_mask_or_labels_tree_whose_class_is_callable_is_a_tree_not_a_function():
    """It was called as a function of the params ("unsupported operand ... 'Model'"), as Optax did before 0.2.8."""
    params, grads = CallableModel(jnp.ones(2), -jnp.ones(2)), CallableModel(jnp.ones(2), jnp.ones(2))
    mask = CallableModel(True, False)
    updates, _ = jz.masked(jz.scale(-1.0), mask).update(grads, jz.masked(jz.scale(-1.0), mask).init(params))
    np.testing.assert_array_equal(updates.w, -1.0)
    np.testing.assert_array_equal(updates.b, 1.0)
    ours, theirs = jz.adamw(0.1, weight_decay=0.5, mask=mask), optax.adamw(0.1, weight_decay=0.5, mask=mask)
    (ours, _), (theirs, _) = run_together([ours, theirs], params, steps=3)
    assert_trees_equal(ours, theirs)
    labels = jz.partition({"a": jz.sgd(1.0), "b": jz.set_to_zero()}, CallableModel("a", "b"))
    updates, _ = labels.update(grads, labels.init(params), params)
    np.testing.assert_array_equal(updates.w, -1.0)
    np.testing.assert_array_equal(updates.b, 0.0)


def test_masked_accepts_numpy_bools():
    params = make_params()
    tx = jz.masked(jz.scale(0.0), {"dense": np.False_, "scale": np.True_})
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))
    assert float(updates["scale"]) == 0.0 and float(updates["dense"]["b"][0]) == 1.0


def test_split_real_and_imaginary_matches_optax_contrib_and_leaves_real_leaves_alone():
    params = {"z": jnp.asarray([1 + 2j, -0.5 + 0.25j], jnp.complex64), "x": jnp.asarray([1.0, -2.0])}
    grads = {"z": jnp.asarray([0.3 - 1j, 2 + 0.5j], jnp.complex64), "x": jnp.asarray([0.5, 0.1])}
    ours = jz.split_real_and_imaginary(jz.adam(1e-2))
    theirs = optax.contrib.split_real_and_imaginary(optax.adam(1e-2))
    s1, s2 = ours.init(params), theirs.init(params)
    u1_step, u2_step = jax.jit(ours.update), jax.jit(theirs.update)
    for _ in range(5):
        u1, s1 = u1_step(grads, s1, params)
        u2, s2 = u2_step(grads, s2, params)
        assert_trees_equal(u1, u2)
    # The real and imaginary parts have second moments of their own (not |g|^2).
    assert isinstance(s1.inner_state[0].nu["z"], jz.RealImaginaryPair)
    np.testing.assert_allclose(
        s1.inner_state[0].nu["z"].imaginary, (1 - 0.999**5) * np.asarray(grads["z"]).imag ** 2, rtol=1e-4
    )
    # Optax's state: the inner one wrapped in SplitRealAndImaginaryState, leaf for leaf.
    assert isinstance(s1, jz.SplitRealAndImaginaryState) and type(s2).__name__ == "SplitRealAndImaginaryState"
    assert_trees_equal(jax.tree.leaves(s1), jax.tree.leaves(s2))
    plain = jz.adam(1e-2)
    only_real = ours.init({"x": params["x"]}).inner_state
    assert jax.tree.structure(only_real) == jax.tree.structure(plain.init({"x": params["x"]}))
    # jz.torch's recipes keep the inner state unwrapped (PyTorch's layout).
    assert not isinstance(jz.torch.adam().init(params), jz.SplitRealAndImaginaryState)


LABELS = {"dense": {"w": "adam", "b": "sgd"}, "scale": "sgd"}


@pytest.mark.parametrize("labels", [LABELS, lambda p: jax.tree.map(lambda x: "adam" if x.ndim > 1 else "sgd", p)])
def test_partition_matches_optax_and_each_group_keeps_its_own_state(labels):
    params = make_params()
    ours, our_state = run_ours(jz.partition({"adam": jz.adam(1e-2), "sgd": jz.sgd(0.1, 0.9)}, labels), params)
    theirs, _ = run_ours(optax.partition({"adam": optax.adam(1e-2), "sgd": optax.sgd(0.1, 0.9)}, labels), params)
    assert_trees_equal(ours, theirs)
    adam_state = our_state.inner_states["adam"].inner_state[0]
    assert isinstance(adam_state.mu["dense"]["b"], jz.MaskedNode) and adam_state.mu["dense"]["w"].shape == (3, 4)
    # The adam group moved exactly as adam alone would move it.
    alone, _ = run_ours(jz.adam(1e-2), params)
    np.testing.assert_allclose(ours[-1]["dense"]["w"], alone[-1]["dense"]["w"], rtol=1e-6)  # another program: rounding may differ


def test_partition_reports_unknown_labels_and_bad_label_trees():
    params = make_params()
    with pytest.raises(ValueError, match=r"partition: labels 'lamb' have no transformation; the transforms are labelled 'adam', 'sgd'"):
        jz.partition({"adam": jz.adam(1e-2), "sgd": jz.sgd(0.1)}, {"dense": "lamb", "scale": "sgd"}).init(params)
    with pytest.raises(ValueError, match="partition: the labels must have the params' structure"):
        jz.partition({"adam": jz.adam(1e-2)}, {"dense": "adam", "extra": "adam"}).init(params)
    # Labels match transforms by equality, as dict keys do (np.int64(0) is 0).
    tx = jz.partition({0: jz.adam(1e-2), 1: jz.sgd(0.1)}, {"dense": np.int64(0), "scale": np.int64(1)})
    run_ours(tx, params, steps=2)
    with pytest.raises(ValueError, match="partition: transforms must be a non-empty dict"):
        jz.partition({}, LABELS)


def test_freeze_and_set_to_zero():
    params = make_params()
    frozen, state = run_ours(jz.chain(jz.adam(1e-2), jz.freeze({"dense": True, "scale": False})), params)
    np.testing.assert_array_equal(frozen[-1]["dense"]["w"], params["dense"]["w"])
    assert float(frozen[-1]["scale"]) != float(params["scale"])
    theirs, _ = run_ours(optax.chain(optax.adam(1e-2), optax.transforms.freeze({"dense": True, "scale": False})), params)
    assert_trees_equal(frozen, theirs)
    updates, _ = jz.set_to_zero().update(params, jz.EmptyState())
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))


def test_partition_masks_extra_args_shaped_like_the_updates_when_asked_as_optax_does():
    # Optax issue 1649: a line search in one group got the whole tree's grad= (its dot with the group's own
    # direction failed: "dot_general requires contracting dimensions to have the same shape"); the keyword did
    # not exist here. value= and value_fn= are not shaped like the updates and reach the group as they are.
    params = {"l1": {"w": jnp.zeros((5, 6)), "b": jnp.zeros(5)}, "l2": {"w": jnp.zeros((6, 1)), "b": jnp.zeros(1)}}
    grads = jax.tree.map(lambda p: jnp.linspace(0.5, 1.5, p.size).reshape(p.shape), params)
    labels = {"l1": {"w": "w", "b": "b"}, "l2": {"w": "w", "b": "b"}}
    results = []
    for lib in (jz, optax):
        tx = lib.partition(types.MappingProxyType({"w": lib.adam(1.0), "b": lib.chain(
            lib.sgd(1.0), lib.scale_by_backtracking_linesearch(max_backtracking_steps=2))}), labels,
            mask_compatible_extra_args=True)
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params, value=jnp.asarray(0.0), grad=grads,
                                       value_fn=lambda p: jnp.asarray(0.0))
        results.append(updates)
    assert_trees_close(results[0], results[1], rtol=1e-6)  # eagerly: Adam's rounding differs by an ulp


def test_masked_masks_only_the_extra_args_shaped_like_the_updates_when_asked():
    seen = {}

    def update(updates, state, params=None, **extra_args):
        seen.update(extra_args)
        return updates, state

    inner = jz.GradientTransformationExtraArgs(init_empty_state, update)
    params = {"w": jnp.ones(2), "b": jnp.zeros(3)}
    for flag in (True, False):
        tx = jz.masked(inner, {"w": True, "b": False}, mask_compatible_extra_args=flag)
        tx.update(params, tx.init(params), params, grad=params, value=jnp.asarray(2.0))
        assert isinstance(seen["grad"]["b"], jz.MaskedNode) is flag and seen["grad"]["w"] is params["w"]
        assert float(seen["value"]) == 2.0


def test_a_zero_dimensional_numpy_bool_is_a_mask_leaf():
    # Optax's freezing tests pass np.array(True): refused here as "not known before tracing" though it is concrete.
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    tx = jz.masked(jz.sgd(0.5), {"a": np.array(True), "b": np.array(False)})
    updates, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_array_equal(updates["a"], [-0.5, -0.5])
    np.testing.assert_array_equal(updates["b"], [1.0, 1.0, 1.0])  # passed through unchanged


def test_every_transformation_here_is_a_gradient_transformation_extra_args():
    # Optax's chain and aliases are instances of its GradientTransformationExtraArgs, and Optax code checks it.
    assert all(isinstance(tx, jz.GradientTransformationExtraArgs)
               for tx in (jz.adam(1e-3), jz.chain(jz.scale(1.0)), jz.scale(2.0), jz.masked(jz.sgd(1.0), {"a": True})))
    assert not isinstance(optax.scale(1.0), jz.GradientTransformationExtraArgs)
