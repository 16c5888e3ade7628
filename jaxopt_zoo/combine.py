"""Combining transformations: in sequence (``chain``, ``named_chain``), on a subset (``masked``, ``freeze``,
``selective_transform``), per group (``partition`` = ``multi_transform``), on one flat vector (``flatten``);
and plumbing: ``with_extra_args_support``, ``tree_map_params``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    StateMismatchError,
    check_state,
    set_to_zero,
)
from jaxopt_zoo import validation
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import explicit_layout, gathered
from jaxopt_zoo.tree import is_function_of_params, is_none, is_params_placeholder, map_params, params_placeholder


def _takes_extra_args(transformation: Any) -> bool:
    # Ours always take **extra_args; an Optax GradientTransformation may not,
    # and then it must not be handed any.
    try:
        parameters = inspect.signature(transformation.update).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def as_transformation(owner: str, transformation: Any) -> GradientTransformation:
    """``transformation`` as one of ours: any object with ``init`` and ``update`` (Optax's too), whose
    ``update`` then takes ``**extra_args`` (dropped for an update that takes none); errors name ``owner``."""
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
    members = [as_transformation("chain", t) for t in transformations]

    def init(params):
        if not is_params_placeholder(params):
            validation.array_leaves("init", params)
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
    members = {name: as_transformation("named_chain", t) for name, t in named_transformations}

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
    if isinstance(leaf, (bool, np.bool_)) or (isinstance(leaf, np.ndarray) and leaf.shape == () and leaf.dtype == bool):
        return bool(leaf)
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.shape == () and leaf.dtype == bool:
        return bool(leaf)
    raise ValueError(f"masked: mask leaves must be booleans known before tracing, got {leaf!r}.")


def _mask_tree(mask: Any, tree: Any) -> Any:
    mask_tree = mask(tree) if is_function_of_params(mask) else mask
    return jax.tree.map(_as_static_bool, mask_tree)


def _select(mask_tree: Any, tree: Any, owner: str = "masked", what: str = "mask") -> Any:
    if is_params_placeholder(tree):  # tree.map_params finding the per-parameter parts of a state
        return tree
    try:
        return jax.tree.map(lambda keep, sub: sub if keep else MaskedNode(), mask_tree, tree)
    except ValueError as error:
        raise ValueError(f"{owner}: the {what} must have the params' structure (or a prefix of it): {error}") from None


def _select_extra_args(extra_args: dict, updates: Any, mask_tree: Any, owner: str) -> dict:
    # Optax's rule: an extra argument with the updates' tree structure is masked like them.
    structure = jax.tree.structure(updates)
    return {k: _select(mask_tree, v, owner) if jax.tree.structure(v) == structure else v for k, v in extra_args.items()}


def masked(
    inner: GradientTransformation, mask: Any | Callable[[Params], Any], *, mask_compatible_extra_args: bool = False
) -> GradientTransformation:
    """Apply ``inner`` only where ``mask`` is ``True``; other updates pass unchanged.

    :math:`u_i = f(g)_i` where :math:`\\text{mask}_i`, else :math:`u_i = g_i`.
    Masked-out leaves keep no state in ``inner``.

    A callable mask is applied to the params (to the updates only when
    ``update`` gets no params), so ``None`` update leaves do not change the
    mask. Deviation from Optax: Optax applies it to the updates.

    Args:
        inner: the transformation to apply to the selected leaves.
        mask: a tree of bools with the params' structure (or a prefix of it),
            or a callable that builds one from the params.
        mask_compatible_extra_args: also mask each extra argument of ``update``
            whose tree structure is the updates' (a gradient passed as
            ``grad=``, per-parameter tags), as Optax does; others (a
            ``value``, a ``value_fn``) reach ``inner`` as they are (unless the
            params are one bare array: then every array argument has their
            structure and is masked too, as in Optax).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.masked(jz.add_decayed_weights(1e-4), {"w": True, "b": False})
    """
    inner = as_transformation("masked", inner)

    def init(params):
        mask_tree = _mask_tree(mask, params)
        return MaskedState(inner.init(_select(mask_tree, params)))

    def update(updates, state, params=None, **extra_args):
        check_state("masked", state, MaskedState)
        mask_tree = _mask_tree(mask, updates if params is None else params)
        selected_params = None if params is None else _select(mask_tree, params)
        if mask_compatible_extra_args:
            extra_args = _select_extra_args(extra_args, updates, mask_tree, "masked")
        new, inner_state = inner.update(_select(mask_tree, updates), state.inner_state, selected_params, **extra_args)
        merged = jax.tree.map(lambda keep, n, old: n if keep else old, mask_tree, new, updates)
        return merged, MaskedState(inner_state)

    return GradientTransformation(init, update)


@document_args(masked)
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
    transforms: Mapping[Any, GradientTransformation],
    param_labels: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Apply a different transformation to each group of parameters: :math:`u_i = f_{\\ell(i)}(g)_i`.

    Each transformation sees (and keeps state for) only the leaves that carry
    its label, as :func:`masked` with the mask ``labels == label``.

    Args:
        transforms: label -> transformation.
        param_labels: a tree of labels with the params' structure (or a prefix
            of it), or a callable building one from the params.
        mask_compatible_extra_args: give each group its own leaves of every
            extra argument shaped like the updates (see :func:`masked`).

    Example:
        >>> import jax, jaxopt_zoo as jz
        >>> labels = lambda params: jax.tree.map(lambda p: "decay" if p.ndim > 1 else "plain", params)
        >>> tx = jz.partition({"decay": jz.adamw(1e-3), "plain": jz.adam(1e-3)}, labels)
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise ValueError(f"partition: transforms must be a non-empty dict of label -> transformation, got {transforms!r}.")
    members = {label: as_transformation("partition", tx) for label, tx in transforms.items()}

    def labels_for(tree: Any) -> Any:
        labels = param_labels(tree) if is_function_of_params(param_labels) else param_labels
        unknown = sorted({repr(x) for x in jax.tree.leaves(labels) if x not in members})
        if unknown:
            raise ValueError(
                f"partition: labels {', '.join(unknown)} have no transformation; "
                f"the transforms are labelled {', '.join(sorted(repr(k) for k in members))}."
            )
        _select(jax.tree.map(lambda label: True, labels), tree, "partition", "labels")  # structure check
        return labels

    def group(labels: Any, label: Any) -> GradientTransformation:
        return masked(members[label], jax.tree.map(lambda x: x == label, labels),
                      mask_compatible_extra_args=mask_compatible_extra_args)

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


class SplitRealAndImaginaryState(NamedTuple):
    """The state of :func:`split_real_and_imaginary`: the inner transformation's, wrapped as Optax wraps it."""

    inner_state: Any


def as_real_pairs(inner: GradientTransformation) -> GradientTransformation:
    """:func:`split_real_and_imaginary` with ``inner``'s state as it is, unwrapped.

    ``jaxopt_zoo.torch``'s recipes use it, so that their states keep PyTorch's layout.
    """
    inner = as_transformation("split_real_and_imaginary", inner)

    def init(params):
        return inner.init(jax.tree.map(_split_complex, params))

    def update(updates, state, params=None, **extra_args):
        split_params = None if params is None else jax.tree.map(_split_complex, params, is_leaf=is_none)
        new, state = inner.update(jax.tree.map(_split_complex, updates, is_leaf=is_none), state, split_params, **extra_args)
        return jax.tree.map(_merge_complex, new, is_leaf=lambda x: isinstance(x, RealImaginaryPair)), state

    return GradientTransformation(init, update)


def split_real_and_imaginary(inner: GradientTransformation) -> GradientTransformation:
    """Apply ``inner`` to each complex leaf's real and imaginary parts as two real leaves.

    :math:`u = f(\\Re g) + i \\, f(\\Im g)` leaf-wise for elementwise rules: a
    second moment becomes :math:`(\\Re g)^2` and :math:`(\\Im g)^2` kept apart,
    as ``torch.optim`` treats complex parameters (``view_as_real``), instead of
    :math:`|g|^2`. Real leaves pass to ``inner`` unchanged. Same numbers and state
    as ``optax.contrib.split_real_and_imaginary``: ``inner``'s state wrapped in
    :class:`SplitRealAndImaginaryState`.

    Args:
        inner: the transformation run on the split leaves (an Optax one too); it sees and keeps state
            for the real and imaginary parts as separate real leaves.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.split_real_and_imaginary(jz.adam(1e-3))
        >>> params = jnp.ones(2, jnp.complex64)
        >>> updates, state = tx.update(jnp.array([1 + 0j, 0 + 1j]), tx.init(params), params)
        >>> updates.dtype
        dtype('complex64')
    """
    pairs = as_real_pairs(inner)

    def update(updates, state, params=None, **extra_args):
        updates, inner_state = pairs.update(updates, state.inner_state, params, **extra_args)
        return updates, SplitRealAndImaginaryState(inner_state)

    return GradientTransformation(lambda params: SplitRealAndImaginaryState(pairs.init(params)), update)


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` as a :class:`~jaxopt_zoo.base.GradientTransformationExtraArgs`: an ``update`` that takes
    (and, where ``tx``'s does not, drops) extra keyword arguments.

    Ours already take them, so they are only re-typed; an Optax transformation
    whose ``update`` has no ``**extra_args`` is wrapped so that the extra
    arguments are not handed to it. Same behaviour as
    ``optax.with_extra_args_support``.

    Args:
        tx: any transformation (an object with ``init`` and ``update``); one that already is a
            :class:`~jaxopt_zoo.GradientTransformationExtraArgs` is returned as it is.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from jaxopt_zoo.combine import with_extra_args_support
        >>> tx = with_extra_args_support(optax.scale(-0.1))
        >>> tx.update(jnp.ones(2), tx.init(jnp.ones(2)), value=1.0)[0]
        Array([-0.1, -0.1], dtype=float32)
    """
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx
    return GradientTransformationExtraArgs(*as_transformation("with_extra_args_support", tx))


MultiTransformState = PartitionState
"""Optax's older name for :class:`PartitionState` (the same class)."""

multi_transform = partition
"""Optax's older name for :func:`partition` (the same function): a transformation per group of parameters."""


def selective_transform(optimizer: GradientTransformation, *, freeze_mask: Any) -> GradientTransformation:
    """Optimize only the parameters not frozen: :math:`u_i = 0` where ``freeze_mask`` is true, else :math:`f(g)_i`.

    Recipe: ``partition({"train": optimizer, "freeze": set_to_zero()}, labels)``
    with the labels read off ``freeze_mask`` (a bool, or a tree of bools with
    the params' structure or a prefix of it), so the frozen leaves keep no
    optimizer state (unlike ``chain(optimizer, freeze(mask))``). Same state and
    numbers as ``optax.selective_transform``. Deviation: the mask's leaves must
    be booleans known before tracing (Optax takes any truthy value).

    Args:
        optimizer: the transformation for the parameters not frozen (an Optax one too).
        freeze_mask: a bool, or a tree of bools with the params' structure (or a prefix of it), ``True``
            where the parameters are frozen (zero updates, no optimizer state): Python or NumPy bools
            or concrete JAX booleans, not a callable.

    Example:
        >>> import jaxopt_zoo as jz
        >>> from jaxopt_zoo.combine import selective_transform
        >>> tx = selective_transform(jz.adam(1e-3), freeze_mask={"encoder": True, "head": False})
    """
    owner = "selective_transform"
    as_transformation(owner, optimizer)
    for leaf in jax.tree.leaves(freeze_mask):
        try:
            _as_static_bool(leaf)
        except ValueError:
            raise ValueError(f"{owner}: freeze_mask leaves must be booleans known before tracing, got {leaf!r}.") from None
    labels = jax.tree.map(lambda frozen: "freeze" if _as_static_bool(frozen) else "train", freeze_mask)
    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)


def _flat_vector(tree: Any) -> jax.Array:
    # On Explicit mesh axes the vector is whole on every device: JAX concatenates only alike-sharded pieces.
    return jnp.concatenate([jnp.reshape(gathered(leaf)[0], [-1]) for leaf in jax.tree.leaves(tree)])


def _unflatten_like(tree: Any, flat: jax.Array) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    ends = np.cumsum([np.size(leaf) for leaf in leaves])[:-1]
    pieces = jnp.split(flat, ends)

    def like(piece, leaf):
        split = explicit_layout(leaf)  # laid out like the leaf again
        piece = jnp.reshape(piece, jnp.shape(leaf))
        return piece if split is None else jax.sharding.reshard(piece, split)

    return jax.tree.unflatten(treedef, [like(piece, leaf) for piece, leaf in zip(pieces, leaves)])


def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Run ``inner`` on one vector: all leaves reshaped to 1-D and concatenated, :math:`u = \\mathrm{unflat}(f(\\mathrm{flat}(g)))`.

    Fewer, larger arrays cost less per-array overhead when a model has many
    small leaves; the state is ``inner``'s state for that vector. The leaves
    are concatenated in tree order (so mixed dtypes are promoted to one).
    Same state and numbers as ``optax.flatten``.

    Deviations from Optax (which fails with a shape error there): a ``None``
    update leaf raises a ``ValueError`` naming it, since a vector has no place
    to leave out; on Explicit mesh axes (and so in :func:`jaxopt_zoo.init_sharded`)
    the vector is whole on every device and the updates are laid out like the
    params again (Optax's concatenation of differently split leaves is refused there).

    Args:
        inner: the transformation run on the flat vector (an Optax one too); its state is that
            vector's.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> from jaxopt_zoo.combine import flatten
        >>> tx = flatten(jz.adam(1e-3))
        >>> state = tx.init({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
        >>> state[0].mu.shape
        (9,)
    """
    inner = as_transformation("flatten", inner)

    def init(params):
        return inner.init(_flat_vector(params))

    def update(updates, state, params=None, **extra_args):
        missing = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(updates, is_leaf=is_none) if g is None]
        if missing:
            raise ValueError(
                f"flatten: updates at {', '.join(missing)} are None; flatten runs its inner transformation on one "
                "vector of all leaves, which cannot leave a parameter out. Pass zeros there, or wrap flatten in "
                "masked/partition to exclude those parameters."
            )
        flat_params = None if params is None else _flat_vector(params)
        flat_updates, state = inner.update(_flat_vector(updates), state, flat_params, **extra_args)
        return _unflatten_like(updates, flat_updates), state

    return GradientTransformation(init, update)


def tree_map_params(
    initable: Any,
    f: Callable[..., Any],
    state: OptState,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> OptState:
    """Apply ``f`` to every leaf of the parts of an optimizer state that are shaped like the params.

    Optax's name and signature for :func:`jaxopt_zoo.tree.map_params` (which
    says how the per-parameter parts are found and which states cannot be
    mapped), plus ``is_leaf``, passed to the tree map over each such part (for
    example ``lambda x: isinstance(x, MaskedNode)`` to reach the stand-ins of a
    masked state). Same results as ``optax.tree_map_params``; 8-bit moments are
    guarded as in :func:`~jaxopt_zoo.tree.map_params`.

    Args:
        initable: the transformation (or its ``init``) that built ``state``: initialised on a
            placeholder to find the parts of the state that are shaped like the params.
        f: the function applied to each leaf of those parts, with the matching leaves of ``rest``
            (trees shaped like the params) as further arguments.
        state: the optimizer state to map.
        transform_non_params: ``None`` (leave them as they are), or the function applied to each leaf of
            the other parts of the state (step counts, hyperparameters).
        is_leaf: ``None``, or a predicate of a node at which the tree map over each per-parameter part
            stops, handing it to ``f`` whole (as ``jax.tree.map``'s ``is_leaf``).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> from jaxopt_zoo.combine import tree_map_params
        >>> tx = jz.adam(1e-3)
        >>> state = tx.init({"w": jnp.ones(3)})
        >>> tree_map_params(tx, lambda x: x.astype(jnp.bfloat16), state)[0].mu["w"].dtype
        dtype(bfloat16)
    """
    if is_leaf is None:
        return map_params(initable, f, state, *rest, transform_non_params=transform_non_params)
    init = initable.init if hasattr(initable, "init") else initable
    marked = init(params_placeholder())

    def keeps_codes(marker, old, new) -> bool:
        # The same guard as map_params: a leaf holding codes must keep its dtype and shape.
        encoded = [x for x in jax.tree.leaves(old) if marker.encoded is not None and marker.encoded(x)]
        if not encoded:
            return True
        pairs = zip(jax.tree.leaves(old), jax.tree.leaves(new))
        same = jax.tree.structure(old) == jax.tree.structure(new)
        return same and all(jnp.result_type(a) == jnp.result_type(b) and jnp.shape(a) == jnp.shape(b)
                            for a, b in pairs if marker.encoded(a))

    def visit(marker, value):
        if not is_params_placeholder(marker):
            return value if transform_non_params is None else transform_non_params(value)
        mapped = jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        if not keeps_codes(marker, value, mapped):
            raise ValueError(
                "tree_map_params: f changed the dtype or shape of a state leaf that holds encoded values (8-bit "
                "codes), which would decode to other values; keep their dtype and shape, or use a floating storage."
            )
        return mapped

    return jax.tree.map(visit, marked, state, is_leaf=is_params_placeholder)
