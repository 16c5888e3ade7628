"""Factored second moments (Adafactor): running means of squared gradients per row and per column.

For an :math:`n \\times m` gradient, Adafactor (Shazeer & Stern 2018) keeps the
running means of its squares along each row (:math:`n` numbers) and along each
column (:math:`m` numbers) instead of one per element, and estimates the second
moment as their outer product over their mean: :math:`n + m` numbers of state
instead of :math:`n m`. The other pieces of the method are its parameter-scaled
relative step :math:`\\max(\\varepsilon_2, \\operatorname{RMS}(\\theta)) \\rho_t`
(:func:`scale_by_param_block_rms` times :func:`relative_step_size`) and the
clipping of each update's RMS (:func:`~jaxopt_zoo.transforms.clipping.clip_by_block_rms`).
``torch.optim.Adafactor`` is their chain (see :func:`jaxopt_zoo.torch.adafactor`):

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_factored_second_moment(), jz.clip_by_block_rms(1.0),
    ...               jz.scale_by_param_block_rms(1e-3), jz.scale_by_learning_rate(jz.relative_step_size(1e-2)))

Optax's form of the rule is :func:`scale_by_factored_rms` (:math:`\\varepsilon_1` added to
:math:`g^2`, the two largest dims factored, Optax's state layout), which :func:`jaxopt_zoo.adafactor`
chains as Optax does. The family's other sublinear-memory rule, SM3, lives in
:mod:`jaxopt_zoo.transforms.sm3`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    Updates,
    expects_state,
    init_empty_state,
    safe_increment,
    static_only,
    zero_count,
)
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName, axis_size, split_axes, varying_axes
from jaxopt_zoo.storage import StateDtype, resolve, with_storage
from jaxopt_zoo.transforms.layerwise import scale_by_param_block_norm

__all__ = [
    "FactoredState",
    "ScaleByFactoredSecondMomentState",
    "relative_step_size",
    "scale_by_factored_rms",
    "scale_by_factored_second_moment",
    "scale_by_param_block_rms",
]


def _mean(x: jax.Array, axis: int, split: tuple[str, ...], keepdims: bool = True) -> jax.Array:
    # The mean over `axis` of the whole array whose shards along `split` this is one of; 0 over an empty axis
    # (a zero-size param's factors stay 0: a NaN in the state would stop apply_if_finite's every step).
    if x.shape[axis] == 0:
        return jnp.sum(x, axis=axis, keepdims=keepdims)
    if not split:
        return jnp.mean(x, axis=axis, keepdims=keepdims)
    return jax.lax.psum(jnp.sum(x, axis=axis, keepdims=keepdims), split) / (x.shape[axis] * jax.lax.psum(1, split))


def _shaped(shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    # A stand-in of that shape, for tree.check_same_structure; symbolic dimensions too (jax.export with
    # shape polymorphism), which a NumPy array refuses.
    return jax.ShapeDtypeStruct(shape, jnp.bool_)


@dataclasses.dataclass(frozen=True)
class _Leaf:  # one param's results; a dataclass is a leaf to jax.tree, so the results can be unzipped
    update: jax.Array
    row_var: jax.Array
    col_var: jax.Array
    variance: jax.Array


class ScaleByFactoredSecondMomentState(NamedTuple):
    """Step count; for each param of two or more dims its row and column factors (``row_var`` of shape
    ``(..., n, 1)``, ``col_var`` of shape ``(..., 1, m)``), for each scalar or vector its full second
    moment ``variance``; a scalar 0 stands in each unused place."""

    count: jax.Array
    row_var: Updates
    col_var: Updates
    variance: Updates


# Said by PyTorch's Adafactor's refusal of complex params (ours and jz.torch.adafactor's).
TORCH_COMPLEX_WHY = "as torch.optim.Adafactor refuses them"


def scale_by_factored_second_moment(
    beta2_decay: jax.typing.ArrayLike = -0.8,
    eps: jax.typing.ArrayLike | None = None,
    *,
    factors_dtype: StateDtype = None,
    variance_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Divide by the root of a factored second moment, as ``torch.optim.Adafactor`` (Shazeer & Stern 2018).

    With :math:`w_t = t^{\\tau}` (:math:`\\hat\\beta_{2,t} = 1 - w_t`, :math:`\\tau` the ``beta2_decay``),
    for a gradient of two or more dims, factored over its last two (rows :math:`i`, columns :math:`j`):

    .. math::

        R_t &= R_{t-1} + w_t \\big(\\operatorname{mean}_j g_t^2 - R_{t-1}\\big), \\qquad
        C_t = C_{t-1} + w_t \\big(\\operatorname{mean}_i g_t^2 - C_{t-1}\\big), \\\\
        \\hat V_t &= R_t C_t / \\max(\\operatorname{mean}_i R_t, \\varepsilon_1),

    for a scalar or a vector :math:`\\hat V_t = V_t = V_{t-1} + w_t (g_t^2 - V_{t-1})`; then
    :math:`u_t = g_t / \\max\\big(\\sqrt{\\hat V_t}, \\varepsilon_1\\big)`. This is PyTorch's placement
    of :math:`\\varepsilon_1` (a floor on the row mean and on the root); the paper and Optax add it
    to :math:`g_t^2` instead. Optax's ``scale_by_factored_rms`` differs also in factoring only params
    whose two largest dims are both at least ``min_dim_size_to_factor`` (128), over those two dims,
    and in ``decay_rate`` :math:`= -\\tau`. With :math:`\\varepsilon_1 = 0` the update is 0 where
    :math:`\\hat V_t = 0` (PyTorch divides 0 by 0 there). Complex params raise at ``init``, as
    PyTorch's Adafactor refuses them; :func:`~jaxopt_zoo.split_real_and_imaginary` updates their
    real and imaginary parts as real params.

    Args:
        beta2_decay: :math:`\\tau \\le 0`.
        eps: :math:`\\varepsilon_1 \\ge 0`; ``None`` (PyTorch's default) is the machine epsilon of
            each gradient's dtype (PyTorch takes the first param's dtype for all).
        factors_dtype: storage of the row and column factors: a storage (see :mod:`jaxopt_zoo.storage`).
        variance_dtype: storage of the full second moment of scalars and vectors, likewise.
        axis_name: inside ``shard_map``, the mesh axes the gradients may be sharded over: a row or
            column mean whose axis is split is summed over the shards, found as the axes the gradient
            varies over and its factor does not (lay the state out with ``jz.state_shardings``).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_factored_second_moment()
        >>> g = jnp.array([[1.0, -2.0], [3.0, 4.0]])
        >>> state = tx.init(g)
        >>> state.row_var.shape, state.col_var.shape
        ((2, 1), (1, 2))
        >>> updates, state = tx.update(g, state)  # w_1 = 1: the factors of g^2 alone

    References:
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.
    """
    owner = "scale_by_factored_second_moment"
    validation.non_positive(owner, "beta2_decay", beta2_decay)
    if eps is not None and (validation.epsilon(owner, "eps", eps) or 1.0) ** 2 < validation.SMALLEST_NORMAL:
        raise ValueError(f"{owner}: eps={eps!r} is floored at eps**2, denormal in float32 (flushed to 0); pass 0 or at least 1.1e-19.")
    guard = eps is not None and validation.may_be_zero(eps)
    factors_dtype = resolve(owner, "factors_dtype", factors_dtype)
    variance_dtype = resolve(owner, "variance_dtype", variance_dtype)
    axis_name = validation.axis_name(owner, axis_name)

    def zeros(p, factored, shaped):
        # The factors of a param of >= 2 dims reduce it over one axis (so keep its sharding elsewhere);
        # a scalar 0 stands in where a param has no such moment.
        validation.refuse_complex(owner, p, TORCH_COMPLEX_WHY)
        dtype = tree.moment_dtype(jnp.result_type(p))
        return jnp.zeros_like(shaped(p), dtype=dtype) if (jnp.ndim(p) >= 2) == factored else jnp.zeros((), dtype)

    def init(params):
        return ScaleByFactoredSecondMomentState(
            zero_count(),
            tree.map_reshaped(lambda p: zeros(p, True, lambda x: jnp.sum(x, axis=-1, keepdims=True)), params),
            tree.map_reshaped(lambda p: zeros(p, True, lambda x: jnp.sum(x, axis=-2, keepdims=True)), params),
            tree.map_reshaped(lambda p: zeros(p, False, lambda x: x), params),
        )

    def leaf(count, g, r, c, v):
        dtype = jnp.result_type(g)
        eps1 = jnp.finfo(dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32).eps if eps is None else eps
        g2 = tree.abs_sq(g)
        if jnp.ndim(g) >= 2:
            w = count.astype(jnp.promote_types(r.dtype, jnp.float32)) ** beta2_decay
            split_columns, split_rows = split_axes(owner, g, r, axis_name), split_axes(owner, g, c, axis_name)
            if set(split_columns) & set(split_rows):
                raise ValueError(
                    f"{owner}: inside shard_map, a gradient of local shape {g.shape} varies over mesh axes "
                    f"{sorted(set(split_columns) & set(split_rows))} that neither of its factors varies over; "
                    "lay the state out like jz.state_shardings(tx, params)."
                )
            r = r + w * (_mean(g2, -1, split_columns) - r)
            c = c + w * (_mean(g2, -2, split_rows) - c)
            denominator = jnp.maximum(_mean(r, -2, split_rows), eps1)
            v_hat = r * c / (jnp.where(denominator == 0, 1, denominator) if guard else denominator)
        else:
            w = count.astype(jnp.promote_types(v.dtype, jnp.float32)) ** beta2_decay
            v = v_hat = v + w * (g2 - v)
        v_hat = jnp.maximum(v_hat, eps1 * eps1)
        if guard:  # eps1 = 0: 0 where no gradient so far was non-zero, not 0 * inf
            u = jnp.where(v_hat == 0, 0, g * jax.lax.rsqrt(jnp.where(v_hat == 0, 1, v_hat)))
        else:
            u = g * jax.lax.rsqrt(v_hat)
        return _Leaf(u, r, c, v)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        like = jax.tree.map(
            lambda r, c, v: _shaped(r.shape[:-1] + c.shape[-1:] if jnp.ndim(r) >= 2 else jnp.shape(v)),
            state.row_var, state.col_var, state.variance,
        )
        tree.check_same_structure(owner, updates, like, "the second moment (state)")
        count = safe_increment(state.count)
        results = tree.map_updates(lambda g, r, c, v: leaf(count, g, r, c, v), updates, state.row_var, state.col_var, state.variance)
        is_result = lambda x: x is None or isinstance(x, _Leaf)
        # Where the update is None, the state leaf passed in is handed back (with_storage keeps it bit for bit).
        field = lambda name, old: jax.tree.map(lambda o, s: s if o is None else getattr(o, name), results, old, is_leaf=is_result)
        new_state = ScaleByFactoredSecondMomentState(
            count, field("row_var", state.row_var), field("col_var", state.col_var), field("variance", state.variance)
        )
        return jax.tree.map(lambda o: None if o is None else o.update, results, is_leaf=is_result), new_state

    tx = with_storage(
        GradientTransformation(init, tree.through_variables(update)),
        non_negative={"row_var": factors_dtype, "col_var": factors_dtype, "variance": variance_dtype},
    )
    return expects_state(owner, tx, ScaleByFactoredSecondMomentState)


@document_args(scale_by_param_block_norm)
def scale_by_param_block_rms(min_scale: jax.typing.ArrayLike = 1e-3, *, axis_name: AxisName = None) -> GradientTransformation:
    """Multiply each leaf's update by its parameter's RMS, at least ``min_scale``:
    :math:`u \\leftarrow \\max\\big(s, \\operatorname{RMS}(\\theta)\\big) \\, u`.

    Adafactor's parameter scale (Shazeer & Stern 2018, the :math:`\\varepsilon_2` of
    ``torch.optim.Adafactor``). Numerically ``optax.scale_by_param_block_rms``; ``axis_name``
    is an addition.

    Args:
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over, so that
            each RMS is the whole leaf's.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> p = jnp.array([3.0, 4.0])  # RMS sqrt(12.5)
        >>> jz.scale_by_param_block_rms().update(jnp.ones(2), jz.EmptyState(), p)[0]
        Array([3.535..., 3.535...], dtype=float32)
    """
    owner = "scale_by_param_block_rms"
    validation.non_negative(owner, "min_scale", min_scale)
    axis_name = validation.axis_name(owner, axis_name)

    def scale(p):
        if not (axis_name or varying_axes(p)):
            mean_square = jnp.mean(tree.abs_sq(p))  # Optax's operations
        else:
            mean_square = tree.sum_of_squares(p, axis_name, owner) / (p.size * axis_size(owner, p, axis_name))
        clamped = jnp.sqrt(mean_square) <= min_scale
        return jnp.where(clamped, min_scale, jnp.sqrt(jnp.where(clamped, 1.0, mean_square)))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        return tree.map_updates(lambda u, p: u * scale(p), updates, params), state

    return GradientTransformation(init_empty_state, update)


def relative_step_size(max_rate: ScalarOrSchedule = 1e-2) -> Schedule:
    """Adafactor's relative step size as PyTorch takes it: :math:`\\rho_t = \\min(\\gamma_t, 1/\\sqrt{t})`.

    A schedule of the step count (:math:`t - 1`, 0 on the first step). The paper fixes
    :math:`\\gamma = 10^{-2}`; ``torch.optim.Adafactor`` uses its ``lr`` (``max_rate``, a
    constant or a schedule).

    Args:
        max_rate: :math:`\\gamma_t \\ge 0`, the cap of the rate: a number or a schedule of the step count.

    Example:
        >>> import jaxopt_zoo as jz
        >>> rho = jz.relative_step_size(0.5)
        >>> float(rho(0)), float(rho(8))  # min(0.5, 1), min(0.5, 1/3)
        (0.5, 0.333...)
    """
    validation.scalar_or_schedule("relative_step_size", "max_rate", max_rate)

    def schedule(count: jax.Array) -> jax.Array:
        rate = max_rate(count) if callable(max_rate) else max_rate
        return jnp.minimum(rate, 1 / jnp.sqrt(count + 1.0))

    return schedule


def _factored_axes(shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int) -> tuple[int, int] | None:
    # Optax's choice of the axes to factor over: (second largest, largest) when the second largest has at
    # least min_dim_size_to_factor entries; ties are broken as np.argsort breaks them, so we pick as Optax.
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _without_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _state_axes(owner: str, g: jax.Array, row: tuple[int, ...], col: tuple[int, ...], full: tuple[int, ...]) -> tuple[int, int] | None:
    # The factored axes (second largest, largest) of a gradient, read off its state: v_row lacks the largest,
    # v_col the second largest. Inside shard_map the shapes are local, and the largest local dims need not
    # be the global ones, so the state, built from the whole params, decides. Where several axes fit (equal
    # dims), Optax's rule on the shape picks: its choice on whole arrays, a guess on shards, so it raises there.
    shape = jnp.shape(g)
    if full == shape and row == col == (1,):
        return None
    preferred = _factored_axes(shape, True, 0) or (0, 0)
    fits = lambda reduced, skip: [a for a in range(len(shape)) if a != skip and _without_axis(shape, a) == reduced]
    largest = fits(row, None)
    second = fits(col, preferred[1] if preferred[1] in largest else (largest or [None])[0])
    if full != (1,) or not largest or not second:
        raise ValueError(
            f"{owner}: a gradient of shape {shape} does not match its state (v_row {row}, v_col {col}, v {full}). "
            "Pass updates shaped like the params the state was initialised with."
        )
    if (len(largest) > 1 or len(second) > 1) and varying_axes(g):
        raise ValueError(
            f"{owner}: inside shard_map, a gradient shard of local shape {shape} fits its factors (v_row {row}, "
            f"v_col {col}) along several axes of equal size, so which axes of the whole param were factored cannot "
            "be told from the shard. Shard it so that its local dims differ, or raise min_dim_size_to_factor so "
            "that it is not factored."
        )
    largest = preferred[1] if preferred[1] in largest else largest[0]
    second = preferred[0] if preferred[0] in second else second[0]
    return second, largest


def static_size(owner: str, name: str, value: Any) -> int:
    """``min_dim_size_to_factor`` as an int: it decides the state's shapes, so it cannot be traced."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{owner}: {name} decides which params are factored (the state's shapes), so it cannot be traced or "
            f"injected; pass static_args=({name!r},) to jz.inject_hyperparams."
        )
    return validation.whole_number(owner, name, value)


def _power_decay(count: jax.Array, decay_rate: jax.typing.ArrayLike, dtype: jnp.dtype) -> jax.Array:
    # The paper's second-moment decay 1 - (t + 1)^(-decay_rate) of the 0-based count t, in float32 as
    # Optax forms it, or in the moment's dtype where that is wider (float64). A complex param's moment is
    # complex (Optax's layout): the decay is real, at its precision.
    t = jnp.asarray(count + 1, jnp.promote_types(jnp.finfo(dtype).dtype, jnp.float32))
    return 1.0 - t ** (-decay_rate)


class FactoredState(NamedTuple):
    """Step count; for each factored param its row and column second moments ``v_row`` and ``v_col``
    (the param's shape without its largest, resp. second-largest, factored axis), for each other
    param its full second moment ``v``; a ``(1,)`` zero stands in each unused place (Optax's layout)."""

    count: jax.Array
    v_row: Updates
    v_col: Updates
    v: Updates


@static_only("min_dim_size_to_factor")
def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: jax.typing.ArrayLike = 0.8,
    step_offset: jax.typing.ArrayLike = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: jax.typing.ArrayLike = 1e-30,
    decay_rate_fn: Callable[[jax.Array, jax.typing.ArrayLike], jax.Array] | None = None,
    *,
    factors_dtype: StateDtype = None,
    variance_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Divide by the root of a factored second moment, Adafactor's rule as Optax has it (Shazeer & Stern 2018).

    With :math:`\\hat\\beta_t = 1 - (t - t_0 + 1)^{-c}` (:math:`t = 0, 1, \\ldots` the step count,
    :math:`t_0` the ``step_offset``, :math:`c` the ``decay_rate``) and :math:`G = g_t^2 + \\varepsilon_1`,
    for a param whose two largest dims :math:`j` (largest) and :math:`i` both have at least
    ``min_dim_size_to_factor`` entries:

    .. math::

        R_t &= \\hat\\beta_t R_{t-1} + (1 - \\hat\\beta_t) \\operatorname{mean}_j G, \\qquad
        C_t = \\hat\\beta_t C_{t-1} + (1 - \\hat\\beta_t) \\operatorname{mean}_i G, \\\\
        u_t &= g_t \\Big/ \\sqrt{R_t C_t / \\operatorname{mean}_i R_t},

    for every other param :math:`V_t = \\hat\\beta_t V_{t-1} + (1 - \\hat\\beta_t) G` and
    :math:`u_t = g_t / \\sqrt{V_t}`. ``factored=False`` keeps the full :math:`V` for every param.
    ``torch.optim.Adafactor``'s placement of :math:`\\varepsilon_1` and choice of axes is
    :func:`scale_by_factored_second_moment`.

    Numerically identical to ``optax.scale_by_factored_rms`` in float32 and complex64, with the same
    state. A complex gradient's :math:`g_t^2` is :math:`|g_t|^2`, as in Optax; its moments are kept
    in the param's complex dtype with a zero imaginary part (Optax's layout), so the update keeps
    the gradient's phase. Deviations from Optax: ``params`` are not needed (the gradient's shape
    decides the factoring); ``decay_rate_fn=None`` (the default) is the power decay above, computed
    in float32 as Optax does, or in float64 for float64 moments (Optax: float32 always); a custom
    ``decay_rate_fn(count - step_offset, decay_rate)`` is called as in Optax; before ``step_offset``
    (a fresh state's count is 0) the power decay is its first step's, 0, where Optax's is NaN. A
    float16 param's moments are float32 (see :func:`jaxopt_zoo.tree.moments_like`); a ``None``
    update keeps its moments; with ``epsilon=0`` an entry whose gradients were all 0 so far (or, factored,
    a whole such row or column: an embedding row not yet in a batch) steps by 0, as ``jz.adam(eps=0)`` does,
    where Optax's is :math:`0 \\cdot \\infty` = NaN (spread over the leaf by Adafactor's update clipping).
    ``factors_dtype``, ``variance_dtype`` and ``axis_name`` are additions.
    Each update reads the factored axes off the state's shapes (which ``init`` chose from the whole
    params), so that inside ``shard_map`` local shapes do not change the choice; a shard whose
    factors fit along several axes of equal local size (e.g. a ``(32, 16)`` param split into
    ``(8, 8)`` shards) is ambiguous there and raises, rather than guess.

    Args:
        factored: whether to factor params of two or more dims.
        decay_rate: :math:`c \\in (0, 1]`, the exponent of the decay schedule.
        step_offset: :math:`t_0 \\ge 0`, the step the schedule restarts from (e.g. fine-tuning's first).
        min_dim_size_to_factor: factor only params whose two largest dims have at least this many entries.
        epsilon: :math:`\\varepsilon_1 \\ge 0`, added to the squared gradients.
        decay_rate_fn: ``None``, or a function of ``(step, decay_rate)`` returning :math:`\\hat\\beta` (e.g. a capped
            one, Zhai et al. 2021).
        factors_dtype: storage of ``v_row`` and ``v_col``: a storage (see :mod:`jaxopt_zoo.storage`);
            they are small, so a dtype is usually enough.
        variance_dtype: storage of the full second moment ``v``, likewise.
        axis_name: inside ``shard_map``, the mesh axes the gradients may be sharded over: a mean over a
            split axis is summed over the shards (lay the state out with ``jz.state_shardings``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.transforms.factored import scale_by_factored_rms
        >>> tx = scale_by_factored_rms(min_dim_size_to_factor=2)
        >>> g = jnp.array([[1.0, -2.0, 2.0], [3.0, 4.0, 0.0]])
        >>> state = tx.init(g)
        >>> state.v_row.shape, state.v_col.shape, state.v.shape  # rows: mean over the 3 columns
        ((2,), (3,), (1,))
        >>> updates, state = tx.update(g, state)  # first step: the factors of g^2 + eps alone

    References:
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.
        Zhai et al., "Scaling Vision Transformers", CVPR 2022.
    """
    owner = "scale_by_factored_rms"
    validation.flag(owner, "factored", factored)
    if decay_rate_fn is None:
        rate = validation.real_scalar(owner, "decay_rate", decay_rate)
        if rate is not None and not 0.0 < rate <= 1.0:
            raise ValueError(f"{owner}: decay_rate must be in (0, 1], got {decay_rate!r}.")
    elif not callable(decay_rate_fn):
        raise ValueError(f"{owner}: decay_rate_fn must be None or a function (step, decay_rate) -> decay, got {decay_rate_fn!r}.")
    else:
        validation.real_scalar(owner, "decay_rate", decay_rate)
    validation.non_negative(owner, "step_offset", step_offset)
    min_dim_size_to_factor = static_size(owner, "min_dim_size_to_factor", min_dim_size_to_factor)
    validation.epsilon(owner, "epsilon", epsilon)
    guard = validation.may_be_zero(epsilon)
    factors_dtype = resolve(owner, "factors_dtype", factors_dtype)
    variance_dtype = resolve(owner, "variance_dtype", variance_dtype)
    axis_name = validation.axis_name(owner, axis_name)

    def init_leaf(p):
        dtype = tree.moment_dtype(jnp.result_type(p))
        unused = lambda: jnp.zeros((1,), dtype)  # one array each: a state leaf given twice cannot be donated
        axes = _factored_axes(jnp.shape(p), factored, min_dim_size_to_factor)
        if axes is None:
            return _Leaf(unused(), unused(), unused(), jnp.zeros_like(p, dtype=dtype))
        # Reduced from the param abstractly, so that each factor keeps the param's sharding on its other axes.
        without = lambda axis: jnp.zeros_like(jax.eval_shape(lambda x: jnp.sum(x, axis=axis), p), dtype=dtype)
        second, largest = axes
        return _Leaf(unused(), without(largest), without(second), unused())

    def init(params):
        field = lambda name: tree.map_reshaped(lambda p: getattr(init_leaf(p), name), params)
        return FactoredState(zero_count(), field("row_var"), field("col_var"), field("variance"))

    def leaf(count, g, r, c, v):
        axes = _state_axes(owner, g, jnp.shape(r), jnp.shape(c), jnp.shape(v))
        moment = v if axes is None else r
        if decay_rate_fn is None:  # before the offset, each step is the schedule's first (decay 0: v = g^2)
            decay = _power_decay(jnp.maximum(count - step_offset, 0), decay_rate, moment.dtype)
        else:
            decay = decay_rate_fn(count - step_offset, decay_rate)
        g2 = tree.abs_sq(g) + epsilon
        if axes is None:
            v = (decay * v + (1.0 - decay) * g2).astype(v.dtype)
            if not guard:
                return _Leaf(g * v**-0.5, r, c, v)
            # epsilon = 0: where every gradient so far was 0 the step is 0, not 0 * inf (as jz.adam's with eps=0);
            # the inner where keeps a gradient taken through the step finite.
            zero = v == 0
            return _Leaf(jnp.where(zero, 0, g * jnp.where(zero, 1, v) ** -0.5), r, c, v)
        second, largest = axes
        split_largest, split_second = split_axes(owner, g, r, axis_name), split_axes(owner, g, c, axis_name)
        r = (decay * r + (1.0 - decay) * _mean(g2, largest, split_largest, keepdims=False)).astype(r.dtype)
        c = (decay * c + (1.0 - decay) * _mean(g2, second, split_second, keepdims=False)).astype(c.dtype)
        second_in_r = second - 1 if second > largest else second
        if not guard:
            row_factor = (r / _mean(r, second_in_r, split_second)) ** -0.5
            col_factor = c**-0.5
            return _Leaf(g * jnp.expand_dims(row_factor, largest) * jnp.expand_dims(col_factor, second), r, c, v)
        # epsilon = 0: a row or column whose gradients were all 0 so far (an embedding row not yet in a batch) has
        # a 0 factor, and its step is 0 rather than 0 * inf; a 0 mean of r means every row is such a row.
        zero_row, zero_col = r == 0, c == 0
        mean = _mean(r, second_in_r, split_second)
        row_factor = (jnp.where(zero_row, 1, r) / jnp.where(mean == 0, 1, mean)) ** -0.5
        col_factor = jnp.where(zero_col, 1, c) ** -0.5
        zero = jnp.expand_dims(zero_row, largest) | jnp.expand_dims(zero_col, second)
        step = g * jnp.expand_dims(row_factor, largest) * jnp.expand_dims(col_factor, second)
        return _Leaf(jnp.where(zero, 0, step), r, c, v)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        scalars = lambda t: jax.tree.map(lambda x: None if x is None else _shaped(()), t, is_leaf=tree.is_none)
        tree.check_same_structure(owner, scalars(updates), scalars(state.v), "the second moment (state.v)")
        results = tree.map_updates(lambda g, r, c, v: leaf(state.count, g, r, c, v), updates, state.v_row, state.v_col, state.v)
        is_result = lambda x: x is None or isinstance(x, _Leaf)
        # Where the update is None, the state leaf passed in is handed back (with_storage keeps it bit for bit).
        field = lambda name, old: jax.tree.map(lambda o, s: s if o is None else getattr(o, name), results, old, is_leaf=is_result)
        new_state = FactoredState(
            safe_increment(state.count), field("row_var", state.v_row), field("col_var", state.v_col), field("variance", state.v)
        )
        return jax.tree.map(lambda o: None if o is None else o.update, results, is_leaf=is_result), new_state

    tx = with_storage(
        GradientTransformation(init, tree.through_variables(update)),
        non_negative={"v_row": factors_dtype, "v_col": factors_dtype, "v": variance_dtype},
    )
    return expects_state(owner, tx, FactoredState)
