"""Combining transformations: in sequence (``chain``, ``named_chain``) and on a subset (``masked``)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo.base import GradientTransformation, OptState, Params, StateMismatchError, check_state, set_to_zero
from jaxopt_zoo.tree import is_none, is_params_placeholder


def _takes_extra_args(transformation: Any) -> bool:
    # Ours always take **extra_args; an Optax GradientTransformation may not,
    # and then it must not be handed any.
    try:
        parameters = inspect.signature(transformation.update).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _as_transformation(owner: str, transformation: Any) -> GradientTransformation:
    if not (callable(getattr(transformation, "init", None)) and callable(getattr(transformation, "update", None))):
        raise TypeError(
            f"{owner}: expected gradient transformations (objects with init and update), got {transformation!r}."
        )
    if _takes_extra_args(transformation):
        return GradientTransformation(transformation.init, transformation.update)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return transformation.update(updates, state, params)

    return GradientTransformation(transformation.init, update)


def chain(*transformations: GradientTransformation) -> GradientTransformation:
    """Apply transformations one after another: :math:`u = f_n(\\ldots f_1(g))`.

    The state is the tuple of the members' states. Extra keyword arguments of
    ``update`` reach every member; an Optax member that takes none gets none.
    (Inside ``optax.chain`` the reverse does not hold: Optax hands extra args
    only to its own ``GradientTransformationExtraArgs``, so ours get none
    there. Put Optax members in ``jaxopt_zoo.chain`` to forward them.)

    Example:
        >>> import jaxopt_zoo as jz
        >>> adamw = jz.chain(jz.scale_by_adam(), jz.add_decayed_weights(1e-4), jz.scale_by_learning_rate(1e-3))
    """
    members = [_as_transformation("chain", t) for t in transformations]

    def init(params):
        return tuple(member.init(params) for member in members)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, (tuple, list)) or len(state) != len(members):
            length = len(state) if isinstance(state, (tuple, list)) else "?"
            raise ValueError(
                f"chain: expected the state of {len(members)} transformations (a tuple from this chain's init), "
                f"got {type(state).__name__} of length {length}."
            )
        new_state = []
        for index, (member, member_state) in enumerate(zip(members, state)):
            try:
                updates, member_state = member.update(updates, member_state, params, **extra_args)
            except StateMismatchError as error:
                raise StateMismatchError(f"chain: member {index + 1} of {len(members)}: {error}") from None
            new_state.append(member_state)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def named_chain(*named_transformations: tuple[str, GradientTransformation]) -> GradientTransformation:
    """:func:`chain` whose state is a dict keyed by the given names (in order).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.named_chain(("adam", jz.scale_by_adam()), ("lr", jz.scale_by_learning_rate(1e-3)))
        >>> # state["adam"].mu is the first moment
    """
    names = [name for name, _ in named_transformations]
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"named_chain: names must be distinct strings, got {names}.")
    members = {name: _as_transformation("named_chain", t) for name, t in named_transformations}

    def init(params):
        return {name: member.init(params) for name, member in members.items()}

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, dict) or sorted(state) != sorted(members):
            raise ValueError(
                f"named_chain: expected a state dict with keys {names}, got "
                f"{sorted(state) if isinstance(state, dict) else type(state).__name__}."
            )
        new_state = {}
        for name, member in members.items():
            try:
                updates, new_state[name] = member.update(updates, state[name], params, **extra_args)
            except StateMismatchError as error:
                raise StateMismatchError(f"named_chain: member {name!r}: {error}") from None
        return updates, new_state

    return GradientTransformation(init, update)


class MaskedNode(NamedTuple):
    """Stands in for a masked-out subtree: it has no leaves, so it keeps no state."""


class MaskedState(NamedTuple):
    """The inner transformation's state, over the masked-in leaves only."""

    inner_state: OptState


def _as_static_bool(leaf: Any) -> bool:
    # Python/NumPy bools, and concrete JAX bool scalars; a traced mask cannot select leaves.
    if isinstance(leaf, (bool, np.bool_)):
        return bool(leaf)
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.shape == () and leaf.dtype == bool:
        return bool(leaf)
    raise ValueError(f"masked: mask leaves must be booleans known before tracing, got {leaf!r}.")


def _mask_tree(mask: Any, tree: Any) -> Any:
    mask_tree = mask(tree) if callable(mask) else mask
    return jax.tree.map(_as_static_bool, mask_tree)


def _select(mask_tree: Any, tree: Any, owner: str = "masked", what: str = "mask") -> Any:
    if is_params_placeholder(tree):  # tree.map_params finding the per-parameter parts of a state
        return tree
    try:
        return jax.tree.map(lambda keep, sub: sub if keep else MaskedNode(), mask_tree, tree)
    except ValueError as error:
        raise ValueError(f"{owner}: the {what} must have the params' structure (or a prefix of it): {error}") from None


def masked(inner: GradientTransformation, mask: Any | Callable[[Params], Any]) -> GradientTransformation:
    """Apply ``inner`` only where ``mask`` is ``True``; other updates pass unchanged.

    :math:`u_i = f(g)_i` where :math:`\\text{mask}_i`, else :math:`u_i = g_i`.
    Masked-out leaves keep no state in ``inner``.

    A callable mask is applied to the params (to the updates only when
    ``update`` gets no params), so ``None`` update leaves do not change the
    mask. Deviations from Optax: Optax applies it to the updates; Optax's
    ``mask_compatible_extra_args`` is not supported yet (extra args reach
    ``inner`` unmasked).

    Args:
        inner: the transformation to apply to the selected leaves.
        mask: a tree of bools with the params' structure (or a prefix of it),
            or a callable that builds one from the params.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.masked(jz.add_decayed_weights(1e-4), {"w": True, "b": False})
    """
    inner = _as_transformation("masked", inner)

    def init(params):
        mask_tree = _mask_tree(mask, params)
        return MaskedState(inner.init(_select(mask_tree, params)))

    def update(updates, state, params=None, **extra_args):
        check_state("masked", state, MaskedState)
        mask_tree = _mask_tree(mask, updates if params is None else params)
        selected_params = None if params is None else _select(mask_tree, params)
        new, inner_state = inner.update(_select(mask_tree, updates), state.inner_state, selected_params, **extra_args)
        merged = jax.tree.map(lambda keep, n, old: n if keep else old, mask_tree, new, updates)
        return merged, MaskedState(inner_state)

    return GradientTransformation(init, update)


def freeze(mask: Any | Callable[[Params], Any]) -> GradientTransformation:
    """Zero the updates where ``mask`` is ``True``, so those parameters never change.

    Recipe: ``masked(set_to_zero(), mask)``. Chain it with an optimizer (after
    it, so the frozen leaves' updates are dropped; or wrap the optimizer in
    :func:`partition` to keep no optimizer state for them).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.adam(1e-3), jz.freeze({"encoder": True, "head": False}))
    """
    return masked(set_to_zero(), mask)


class PartitionState(NamedTuple):
    """The state of each labelled group's transformation, keyed by label."""

    inner_states: dict


def partition(
    transforms: dict[Any, GradientTransformation], param_labels: Any | Callable[[Params], Any]
) -> GradientTransformation:
    """Apply a different transformation to each group of parameters: :math:`u_i = f_{\\ell(i)}(g)_i`.

    Each transformation sees (and keeps state for) only the leaves that carry
    its label, as :func:`masked` with the mask ``labels == label``.

    Args:
        transforms: label -> transformation.
        param_labels: a tree of labels with the params' structure (or a prefix
            of it), or a callable building one from the params.

    Example:
        >>> import jax, jaxopt_zoo as jz
        >>> labels = lambda params: jax.tree.map(lambda p: "decay" if p.ndim > 1 else "plain", params)
        >>> tx = jz.partition({"decay": jz.adamw(1e-3), "plain": jz.adam(1e-3)}, labels)
    """
    if not isinstance(transforms, dict) or not transforms:
        raise ValueError(f"partition: transforms must be a non-empty dict of label -> transformation, got {transforms!r}.")
    members = {label: _as_transformation("partition", tx) for label, tx in transforms.items()}

    def labels_for(tree: Any) -> Any:
        labels = param_labels(tree) if callable(param_labels) else param_labels
        unknown = sorted({repr(x) for x in jax.tree.leaves(labels) if x not in members})
        if unknown:
            raise ValueError(
                f"partition: labels {', '.join(unknown)} have no transformation; "
                f"the transforms are labelled {', '.join(sorted(repr(k) for k in members))}."
            )
        _select(jax.tree.map(lambda label: True, labels), tree, "partition", "labels")  # structure check
        return labels

    def group(labels: Any, label: Any) -> GradientTransformation:
        return masked(members[label], jax.tree.map(lambda x: x == label, labels))

    def init(params):
        labels = labels_for(params)
        return PartitionState({label: group(labels, label).init(params) for label in members})

    def update(updates, state, params=None, **extra_args):
        check_state("partition", state, PartitionState)
        labels = labels_for(updates if params is None else params)
        new_states = {}
        for label in members:
            updates, new_states[label] = group(labels, label).update(
                updates, state.inner_states[label], params, **extra_args
            )
        return updates, PartitionState(new_states)

    return GradientTransformation(init, update)


class RealImaginaryPair(NamedTuple):
    """A complex leaf seen as two real arrays, by :func:`split_real_and_imaginary`."""

    real: jax.Array
    imaginary: jax.Array


def _split_complex(x: Any) -> Any:
    return RealImaginaryPair(x.real, x.imag) if x is not None and jnp.iscomplexobj(x) else x


def _merge_complex(x: Any) -> Any:
    return jax.lax.complex(x.real, x.imaginary) if isinstance(x, RealImaginaryPair) else x


def split_real_and_imaginary(inner: GradientTransformation) -> GradientTransformation:
    """Apply ``inner`` to each complex leaf's real and imaginary parts as two real leaves.

    :math:`u = f(\\Re g) + i \\, f(\\Im g)` leaf-wise for elementwise rules: a
    second moment becomes :math:`(\\Re g)^2` and :math:`(\\Im g)^2` kept apart,
    as ``torch.optim`` treats complex parameters (``view_as_real``), instead of
    :math:`|g|^2`. Real leaves pass to ``inner`` unchanged, so for real params
    the state is exactly ``inner``'s. Optax has the same wrapper in ``optax.contrib``
    (with its state wrapped in one more NamedTuple).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.split_real_and_imaginary(jz.adam(1e-3))
        >>> params = jnp.ones(2, jnp.complex64)
        >>> updates, state = tx.update(jnp.array([1 + 0j, 0 + 1j]), tx.init(params), params)
        >>> updates.dtype
        dtype('complex64')
    """
    inner = _as_transformation("split_real_and_imaginary", inner)

    def init(params):
        return inner.init(jax.tree.map(_split_complex, params))

    def update(updates, state, params=None, **extra_args):
        split_params = None if params is None else jax.tree.map(_split_complex, params, is_leaf=is_none)
        new, state = inner.update(jax.tree.map(_split_complex, updates, is_leaf=is_none), state, split_params, **extra_args)
        return jax.tree.map(_merge_complex, new, is_leaf=lambda x: isinstance(x, RealImaginaryPair)), state

    return GradientTransformation(init, update)
