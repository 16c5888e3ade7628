"""GaLore (Zhao et al. 2024): gradients projected onto a low-rank subspace, the optimizer run there.

A weight matrix's gradient :math:`G \\in \\mathbb{R}^{m \\times n}` is projected
onto the span of its top :math:`r` singular vectors, a base optimizer (Adam by
default) keeps its moments in that :math:`r`-dimensional space, and its output
is projected back. The projector is refreshed from an SVD every
``update_proj_gap`` steps, so the moments cost :math:`r \\min(m, n)` numbers
instead of :math:`mn` (the shorter side is kept, as in Optax; see
:func:`scale_by_galore` for how this differs from the paper). Leaves that are
not matrices go to the base optimizer unprojected.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.galore(1e-3, rank=64, update_proj_gap=200)
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    OptState,
    Updates,
    expects_state,
    safe_increment,
    static_only,
    zero_count,
)
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import explicit_layout, gathered, require_whole_arrays
from jaxopt_zoo.transforms.adaptive import scale_by_adam

__all__ = [
    "GaLoreDimensionNumbers",
    "GaLoreState",
    "scale_by_galore",
]


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a weight form the rows (``reduction_axis``) and the columns (``output_axis``) of its matrix.

    A leaf of shape ``(embed, heads, head_dim)`` with ``reduction_axis=0,
    output_axis=(1, 2)`` is projected as the ``(embed, heads * head_dim)``
    matrix. Every axis must be in exactly one of the two. Optax's class, same
    fields and defaults.
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


DimensionNumbersSpec = GaLoreDimensionNumbers | Any | Callable[[Any], Any] | None

COMPLEX_WHY = ("GaLore's projections are real: an SVD in a real svd_dtype drops a complex matrix's imaginary part, "
               "and P^T is not conjugated")


class _MatrixView(NamedTuple):
    """How a leaf is read as an (m, n) matrix and written back, and on which side it is projected."""

    order: tuple[int, ...]  # the leaf's axes, reduction axes first
    grouped_shape: tuple[int, ...]  # the leaf's shape in that order
    rows: int
    cols: int
    rank: int  # min(rank, m, n)

    @property
    def left(self) -> bool:
        # Project the longer side away: P is (m, r) for a tall matrix, (n, r) for a wide one.
        return self.rows >= self.cols

    @property
    def projector_shape(self) -> tuple[int, int]:
        return (self.rows if self.left else self.cols, self.rank)

    @property
    def low_rank_shape(self) -> tuple[int, int]:
        return (self.rank, self.cols) if self.left else (self.rows, self.rank)

    def to_matrix(self, x: jax.Array) -> jax.Array:
        return x.transpose(self.order).reshape(self.rows, self.cols)

    def from_matrix(self, x: jax.Array) -> jax.Array:
        inverse = tuple(sorted(range(len(self.order)), key=lambda i: self.order[i]))
        return x.reshape(self.grouped_shape).transpose(inverse)


def _axes(owner: str, axis: Sequence[int] | int, shape: tuple[int, ...], dims: GaLoreDimensionNumbers) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if any(not -len(shape) <= a < len(shape) for a in axes):
        raise ValueError(f"{owner}: {dims} names axes outside a leaf of shape {shape}.")
    return tuple(int(a) % len(shape) for a in axes)


def _matrix_view(owner: str, shape: tuple[int, ...], dims: GaLoreDimensionNumbers, rank: int) -> _MatrixView:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"{owner}: a leaf projected by GaLore must have at least 2 dimensions, got shape {shape}.")
    reduction, output = _axes(owner, dims.reduction_axis, shape, dims), _axes(owner, dims.output_axis, shape, dims)
    if set(reduction) & set(output):
        raise ValueError(
            f"{owner}: reduction_axis {reduction} and output_axis {output} must be disjoint ({dims} for shape {shape})."
        )
    if len(set(reduction) | set(output)) != ndim:
        raise ValueError(
            f"{owner}: every axis must be a reduction or an output axis; {dims} leaves some of shape {shape} out."
        )
    rows, cols = math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)
    order = reduction + output
    return _MatrixView(order, tuple(shape[a] for a in order), rows, cols, min(rank, rows, cols))


def _is_spec(x: Any) -> bool:
    # Optax's GaLoreDimensionNumbers (another class with the same fields) is accepted too.
    return isinstance(x, tuple) and getattr(type(x), "_fields", None) == GaLoreDimensionNumbers._fields


def _dimension_numbers(spec: DimensionNumbersSpec, leaves_of: Any) -> Any:
    """Per leaf of ``leaves_of``: the GaLoreDimensionNumbers of its matrix, or None where it is not projected.

    ``None``: the 2-D leaves, as (rows, columns). One GaLoreDimensionNumbers:
    every leaf of 2 or more dimensions. A function: called on the tree. A
    tree: its leaves, one per leaf of ``leaves_of``. A ``None`` update is never
    projected.
    """
    if spec is None:
        spec = jax.tree.map(lambda x: GaLoreDimensionNumbers() if jnp.ndim(x) == 2 else None, leaves_of)
    elif _is_spec(spec):
        spec = jax.tree.map(lambda x, d=spec: d if jnp.ndim(x) >= 2 else None, leaves_of)
    elif tree.is_function_of_params(spec):
        spec = spec(leaves_of)
    return jax.tree.map(lambda x, d: None if x is None else d, leaves_of, spec, is_leaf=tree.is_none)


def _projected(leaves_of: Any, views: Any) -> Any:
    # The leaves that are projected (None elsewhere).
    return jax.tree.map(lambda x, view: None if view is None else x, leaves_of, views, is_leaf=tree.is_none)


def _views(owner: str, dims: Any, leaves_of: Any, rank: int) -> Any:
    return jax.tree.map(
        lambda x, d: None if x is None or d is None else _matrix_view(owner, jnp.shape(x), d, rank),
        leaves_of,
        dims,
        is_leaf=tree.is_none,
    )


def _top_singular_vectors(matrix: jax.Array, view: _MatrixView, svd_dtype: Any, dtype: Any) -> jax.Array:
    """The new projector, in ``dtype`` (the state's): the top-``r`` left (tall matrix) or right (wide) singular
    vectors, as columns."""
    compute_dtype = jnp.promote_types(matrix.dtype, jnp.float32) if svd_dtype is None else svd_dtype
    u, _, vh = jnp.linalg.svd(matrix.astype(compute_dtype), full_matrices=False)
    vectors = u[:, : view.rank] if view.left else vh[: view.rank, :].T
    return vectors.astype(dtype)


def _project(matrix: jax.Array, projector: jax.Array, view: _MatrixView) -> jax.Array:
    return projector.T @ matrix if view.left else matrix @ projector


def _project_back(low_rank: jax.Array, projector: jax.Array, view: _MatrixView) -> jax.Array:
    return projector @ low_rank if view.left else low_rank @ projector.T


def check_options(owner: str, rank: Any, update_proj_gap: Any, scale: Any, base_optimizer: Any, svd_dtype: Any):
    """GaLore's options checked under ``owner``'s name: ``(rank, update_proj_gap, svd_dtype)`` as used."""
    rank = validation.whole_number(owner, "rank", rank, minimum=1)
    update_proj_gap = validation.whole_number(owner, "update_proj_gap", update_proj_gap, 1, validation.INT32_MAX)
    validation.real_scalar(owner, "scale", scale)
    if base_optimizer is not None:
        as_transformation(owner, base_optimizer)
    if svd_dtype is not None:
        svd_dtype = validation.optional_dtype(owner, "svd_dtype", svd_dtype)
    return rank, update_proj_gap, svd_dtype


class GaLoreState(NamedTuple):
    """Step count, the base optimizer's state (in the projected space) and each leaf's projector ``P``.

    A leaf that is not projected has no projector (``None``) and a base state shaped like it.
    """

    count: jax.Array
    base_optimizer_state: OptState
    projector: Updates


@static_only("rank", "update_proj_gap")
def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: jax.typing.ArrayLike = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_dimension_numbers: DimensionNumbersSpec = None,
    *,
    svd_dtype: jax.typing.DTypeLike | None = jnp.float32,
) -> GradientTransformation:
    """GaLore (Zhao et al. 2024): run ``base_optimizer`` on low-rank projections of the matrix gradients.

    For a leaf seen as a matrix :math:`G_t \\in \\mathbb{R}^{m \\times n}`, with
    :math:`k = \\min(r, m, n)` and :math:`T` the ``update_proj_gap``:

    .. math::

        U \\Sigma V^\\top = \\operatorname{svd}(G_t) \\text{ when } t \\bmod T = 0, \\qquad
        P_t = U_{:, :k} \\;(m \\ge n) \\text{ or } V_{:, :k} \\;(m < n), \\text{ else } P_t = P_{t-1},

        R_t = P_t^\\top G_t \\;(m \\ge n) \\text{ or } G_t P_t \\;(m < n), \\qquad
        N_t = \\rho_t(R_t), \\qquad
        u_t = \\alpha\\, P_t N_t \\;(m \\ge n) \\text{ or } \\alpha\\, N_t P_t^\\top \\;(m < n),

    where :math:`t = 0, 1, \\ldots` counts steps, :math:`\\rho` is
    ``base_optimizer`` (``scale_by_adam()`` by default), whose state lives in the
    :math:`k`-dimensional space and is carried over a refresh of :math:`P`
    unchanged (the paper's Algorithm 2), and :math:`\\alpha` is ``scale``. Leaves
    that are not projected go to :math:`\\rho` as they are, and :math:`\\alpha`
    does not apply to them. Which leaves are matrices, and how, is
    ``weight_dimension_numbers``: ``None`` projects every 2-D leaf (rows,
    columns); one :class:`~jaxopt_zoo.GaLoreDimensionNumbers` applies to every leaf of 2 or
    more dimensions; a tree gives one per leaf (``None`` to skip it); a function
    of the tree returns such a tree. ``base_optimizer`` sees ``params=None``: use
    one that does not read the params (``scale_by_adam``, ``scale_by_lion``, ...),
    and put weight decay after this transformation (see :func:`jaxopt_zoo.galore`).

    Deviation from the paper's Algorithm 2 and its official code (the default
    ``"std"`` projector), as in Optax: the side projected away is the longer
    one. Here a tall :math:`G` (:math:`m \\ge n`) becomes :math:`P^\\top G`,
    :math:`k \\times n`, and the base optimizer's moments cost
    :math:`k \\min(m, n)` numbers; there it becomes :math:`G V_{:, :k}`,
    :math:`m \\times k`, at :math:`k \\max(m, n)` (the official code's
    ``"reverse_std"`` is the rule here). At a refresh both keep the same
    rank-:math:`k` part of :math:`G`, but an elementwise base optimizer (Adam)
    normalises other coordinates (:math:`k \\times n` here, :math:`m \\times k`
    there), so the updates differ.

    Under ``jax.jit`` the SVD runs only at a refresh step: it sits in one branch
    of a ``lax.cond``, the other keeps :math:`P`. (Under ``vmap`` over the state
    the step count is batched and ``cond`` becomes a select: both run.) The SVD
    and the projections span whole matrices, so inside ``shard_map`` the
    projected leaves must be whole (a sharded one raises); under ``jax.jit`` with
    sharded arrays the partitioner gathers what the SVD needs on Auto mesh axes,
    and on Explicit ones each projected leaf is gathered and its update laid out
    like it again (Optax's SVD of a split leaf is refused there).

    Storage: the base optimizer's moments take its own storage options (e.g.
    ``scale_by_adam(mu_dtype=jz.Blockwise8Bit())``), on the projected shapes. The
    projector :math:`P` is kept in the param's dtype (Optax: the gradient's; the
    same unless they differ), computed by an SVD in ``svd_dtype``: it is replaced
    whole at every refresh, not accumulated, so rounding does not build up in it,
    and it is a fraction :math:`k / \\min(m, n)` of the param's size; an 8-bit code
    would break its orthonormality. Gradients in another dtype than the params
    (bfloat16 gradients of float32 params, mixed precision) are projected in the
    wider of the two (what the base optimizer sees) and the update comes back in
    the gradient's dtype; Optax's step fails there (its ``cond`` gets a bfloat16
    new projector and the float32 kept one).

    Complex params raise (at ``init``, and a complex gradient at ``update``) where they
    would be projected: the projector is real, so the SVD would drop the imaginary
    part (Optax's does so silently). Wrap the optimizer in
    ``jz.combine.split_real_and_imaginary``; leaves that are not projected may be complex.

    Numerically identical to ``optax.contrib.scale_by_galore``, with the same
    state leaves but one: a leaf that is not projected has no projector
    (``None``) where Optax keeps a ``(0, 0)`` array, which Orbax refuses to
    save (``Cannot save arrays with zero size``). Other differences:
    ``svd_dtype`` is an addition (``None``: the
    gradient's dtype, at least float32; Optax always runs the SVD in float32,
    also for float64 gradients); a ``None`` update stays ``None`` and keeps its
    projector and base state; ``update`` forwards its extra keyword arguments to
    ``base_optimizer`` (Optax forwards none); a non-integer ``rank`` raises
    ``ValueError`` (Optax: ``TypeError``) and ``update_proj_gap`` must be a
    positive integer (Optax does not check it); axis errors name this function.
    A gradient taken through its steps is NaN where a refresh meets an all-zero gradient matrix (repeated
    singular values: the projector has no derivative there), as Optax's.

    Args:
        rank: :math:`r \\ge 1`, the rank of the projection (clipped to :math:`\\min(m, n)` per leaf).
        update_proj_gap: :math:`T \\ge 1`, the steps between SVD refreshes of :math:`P` (the first step refreshes).
        scale: :math:`\\alpha`, the factor on the projected leaves' updates.
        base_optimizer: the transformation run in the projected space; ``None``: ``scale_by_adam()``.
            Any object with ``init`` and ``update`` (Optax's too).
        weight_dimension_numbers: which leaves are matrices and how (see above).
        svd_dtype: the dtype the SVD runs in; ``None`` for the gradient's dtype (at least float32).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_galore(rank=2, update_proj_gap=10)
        >>> params = {"w": jnp.ones((8, 3)), "b": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> state.projector["w"].shape, state.base_optimizer_state.mu["w"].shape  # P is (8, 2); Adam's moments (2, 3)
        ((8, 2), (2, 3))
        >>> updates, state = tx.update({"w": jnp.eye(8, 3), "b": jnp.ones(3)}, state)
        >>> updates["w"].shape, int(state.count)
        ((8, 3), 1)

    References:
        Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024,
        arXiv:2403.03507.
    """
    owner = "scale_by_galore"
    rank, update_proj_gap, svd_dtype = check_options(owner, rank, update_proj_gap, scale, base_optimizer, svd_dtype)
    base = scale_by_adam() if base_optimizer is None else as_transformation(owner, base_optimizer)

    def init(params):
        if not jax.tree.leaves(params):  # e.g. the placeholder tree.map_params initialises with
            return GaLoreState(zero_count(), base.init(params), params)
        views = _views(owner, _dimension_numbers(weight_dimension_numbers, params), params, rank)
        validation.refuse_complex(owner, _projected(params, views), COMPLEX_WHY)

        def projector(p, view):  # None where a leaf is not projected (Optax: a (0, 0) array, which Orbax cannot save)
            return None if view is None else jnp.zeros(view.projector_shape, p.dtype)

        def low_rank_stand_in(p, view):  # what the base optimizer is initialised on
            return jnp.zeros_like(p) if view is None else jnp.zeros(view.low_rank_shape, p.dtype)

        projectors = tree.map_reshaped(projector, params, views)
        stand_ins = tree.map_reshaped(low_rank_stand_in, params, views)
        return GaLoreState(zero_count(), base.init(stand_ins), projectors)

    def update(updates, state, params=None, **extra_args):
        del params
        shapeless = lambda t: jax.tree.map(lambda x: None if x is None else 0, t, is_leaf=tree.is_none)
        # A None projector is a leaf not projected (a None param's own None is checked by the base optimizer).
        projected = jax.tree.map(lambda x: 0, state.projector, is_leaf=tree.is_none)
        tree.check_same_structure(owner, shapeless(updates), projected, "state.projector")
        views = _views(owner, _dimension_numbers(weight_dimension_numbers, updates), updates, rank)
        matrices = _projected(updates, views)
        validation.refuse_complex(owner, matrices, COMPLEX_WHY)
        require_whole_arrays(owner, matrices)
        refresh = state.count % update_proj_gap == 0

        # On Explicit mesh axes a projected leaf is gathered whole (the SVD and the products span the matrix) and
        # its update laid out like it again; on Auto axes the partitioner does both. The projector keeps the
        # state's dtype (the param's) in both branches: with bfloat16 gradients of float32 params (mixed
        # precision) the new one was bfloat16 and the kept one float32.
        def new_projector(g, p, view):
            if g is None or view is None:
                return p
            matrix = view.to_matrix(gathered(g)[0])
            return jax.lax.cond(refresh, lambda: _top_singular_vectors(matrix, view, svd_dtype, p.dtype), lambda: p)

        def project(g, p, view):
            return g if g is None or view is None else _project(view.to_matrix(gathered(g)[0]), p, view)

        def project_back(u, p, g, view):
            if u is None or view is None:
                return u
            update = (scale * view.from_matrix(_project_back(u, p, view))).astype(g.dtype)
            split = explicit_layout(g)
            return update if split is None else jax.sharding.reshard(update, split)

        projectors = jax.tree.map(new_projector, updates, state.projector, views, is_leaf=tree.is_none)
        low_rank = jax.tree.map(project, updates, projectors, views, is_leaf=tree.is_none)
        low_rank_updates, base_state = base.update(low_rank, state.base_optimizer_state, None, **extra_args)
        new_updates = jax.tree.map(project_back, low_rank_updates, projectors, updates, views, is_leaf=tree.is_none)
        return new_updates, GaLoreState(safe_increment(state.count), base_state, projectors)

    return expects_state(owner, GradientTransformation(init, tree.through_variables(update)), GaLoreState)
