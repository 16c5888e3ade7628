"""Parameter-free step sizes: DoG and DoWG (distance over gradients), COCOB (coin betting), Mechanic.

These rules need no learning rate. DoG's step size is the largest distance
travelled from the initial point divided by the root of the summed squared
gradient norms; DoWG weights each squared gradient norm by the squared
distance; COCOB bets, per coordinate, a fraction of the "wealth" won so far;
Mechanic learns a scale for the updates of any other optimizer.

:func:`scale_by_distance_over_gradients` is Optax core's layer-wise DoG (one
distance and one gradient sum per parameter array); :func:`scale_by_dog` and
:func:`scale_by_dowg` are ``optax.contrib``'s global ones (one number for the
whole tree). Every whole-array or whole-tree reduction takes ``axis_name``, so
that inside ``shard_map`` it is the whole array's or tree's. The copies of the
initial params take the storage option ``param_dtype``.

For the distance rules (DoG, LDoG, DoWG) a copy narrower than the params is
lossy: its rounding :math:`\\tilde x_0 - x_0` adds to :math:`\\|x_t - x_0\\|`,
and at the first step it is all of it. In bfloat16 it is about
:math:`2^{-9} \\|x_0\\|`, so until the params have moved farther than that it
acts as the first distance in place of :math:`r_0` (or :math:`\\bar r_0`): as if
``reps_rel`` were about 2e-3. With the default ``reps_rel=1e-6`` the first steps
are some 1,000 to 2,000 times those of an exact copy (e.g. update norms 0.031
instead of 1.9e-5 for 256 params near 1). A bfloat16 copy therefore suits only
a first distance above its rounding (``reps_rel`` around 1e-2, or an
``init_step`` distance or the root of ``init_estim_sq_dist`` at least that large); keep the
copy in the params' dtype (the default for DoG and DoWG; ``jnp.float32`` for
LDoG) otherwise. :class:`~jaxopt_zoo.storage.StochasticBF16` is no better: the
copy is written once, at ``init``, where it rounds to nearest as plain bfloat16
does. The rounding cannot be taken out afterwards: subtracting its norm
(known at ``init``) from each distance gives a lower bound that stays below
:math:`r_0` while the params move less than the rounding, and DoG then never
grows its step size. 8-bit codes (:class:`~jaxopt_zoo.quantization.Blockwise8Bit`,
3 mantissa bits) round by about 3% of :math:`\\|x_0\\|` (up to 1/8 of each
entry), far above the first distances the DoG authors recommend (``reps_rel``
1e-6 to 1e-4), with the default ``reps_rel=1e-6`` a first step some 30,000
times larger, so the distance rules refuse them, as Prodigy does for its
:math:`x_0`. COCOB's copy takes a dtype only (see :func:`scale_by_cocob`).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.scale_by_distance_over_gradients()
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    OptState,
    Updates,
    expects_state,
    init_only,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import AxisName, sum_over_shards
from jaxopt_zoo.storage import Dtype, StateDtype, resolve, resolve_floating, with_storage

__all__ = [
    "COCOBState",
    "DoGState",
    "DoWGState",
    "MechanicState",
    "ScaleByDistanceOverGradientsState",
    "mechanize",
    "scale_by_cocob",
    "scale_by_distance_over_gradients",
    "scale_by_dog",
    "scale_by_dowg",
]


# --- pieces shared by the DoG variants ------------------------------------------------------------


def _dog_first_distance(rel: jax.typing.ArrayLike, norm_x0: jax.Array) -> jax.Array:
    """DoG's heuristic first distance :math:`r_0 = r_\\epsilon (1 + \\|x_0\\|)` (Ivgi et al. 2023, section 3)."""
    return rel * (1 + norm_x0)


def _dog_step_size(distance: jax.Array, grad_sum_of_squares: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
    """DoG's step size :math:`\\eta = \\bar r / \\sqrt{G + \\epsilon}`."""
    return distance / jnp.sqrt(grad_sum_of_squares + eps)


def _copy(params: Any) -> Any:
    # The state's own buffers: a copy that aliased the params would be deleted when the state is donated.
    return jax.tree.map(lambda p: jnp.array(p, copy=True), params)


def _tree_sum_of_squares(values: Any, axis_name: AxisName, owner: str) -> jax.Array:
    """:math:`\\sum_i \\|x_i\\|^2` over the tree's arrays (``None`` leaves skipped), whole inside ``shard_map``."""
    leaves = [x for x in jax.tree.leaves(values) if x is not None]
    return sum_over_shards(owner, ((jnp.sum(tree.abs_sq(x)), x) for x in leaves), axis_name)


def _scalar_dtype(params: Any) -> jnp.dtype:
    # float32 at least (tree.scalar_dtype): Optax's DoG/DoWG/Mechanic scalars take the params' lowest dtype, so a
    # bfloat16 sum of squared gradient norms stops at 256 and, in a mixed tree, they change dtype at the first step
    # (its Mechanic raises there: lax.clamp of a bfloat16 bound and a float32 h).
    return tree.scalar_dtype(params)


def _arrays(params: Any) -> Any:
    # Python numbers as arrays: a storage casts its copy with .astype, and the distances read each leaf's dtype.
    return jax.tree.map(jnp.asarray, params)


def _check_anchor(owner: str, updates: Any, params: Any, anchor: Any, name: str) -> None:
    """Refuse a copy of the params shaped otherwise than they are (it would broadcast into the distances). Every
    param counts in the distance, also one whose update is ``None``: that one is checked by its param's shape."""
    probe = jax.tree.map(lambda g, p: p if g is None else g, updates, params, is_leaf=tree.is_none)
    tree.check_same_structure(owner, probe, anchor, name)


def _distance_anchor_storage(owner: str, param_dtype: StateDtype, first: str):
    """The storage of DoG's, LDoG's or DoWG's initial params: not 8-bit (see the module docstring)."""
    return resolve_floating(
        owner, "param_dtype", param_dtype,
        f"keeps the initial params as 8-bit codes, whose rounding (about 3% of ||x_0||) is all of ||x_t - x_0|| at "
        f"the first step, so it, not {first}, would set the first step sizes; use None (the params' dtype) or a "
        "floating dtype as wide as the params (a bfloat16 copy, jz.StochasticBF16() too, rounds by about 2^-9 "
        f"||x_0||, which sets the first steps likewise unless {first} is above it).")


# --- layer-wise DoG (Optax core) ------------------------------------------------------------------


class ScaleByDistanceOverGradientsState(NamedTuple):
    """Per array: the largest distance from the start ``max_dist`` (a scalar), the summed squared
    gradient norms ``grad_sum_of_squares`` (shape ``(1,)``, as in Optax), and the initial params
    ``init_params``; ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    max_dist: OptState
    grad_sum_of_squares: OptState
    init_params: OptState
    count: jax.Array | None = None


@init_only("reps_rel")
def scale_by_distance_over_gradients(
    reps_rel: jax.typing.ArrayLike = 1e-6,
    eps: jax.typing.ArrayLike = 1e-8,
    param_dtype: StateDtype = jnp.float32,
    global_scale: jax.typing.ArrayLike = 1.0,
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Distance over gradients, layer-wise (Ivgi et al. 2023, LDoG).

    For each parameter array, with :math:`x_0` its initial value:

    .. math::

        r_0 = r_\\epsilon (1 + \\|x_0\\|), \\qquad
        r_t = \\max(r_{t-1}, \\|x_t - x_0\\|), \\qquad
        G_t = G_{t-1} + \\|g_t\\|^2, \\quad G_0 = 0, \\\\
        u_t = s \\, \\frac{r_t}{\\sqrt{G_t + \\epsilon}} \\, g_t,

    where :math:`r_\\epsilon` is ``reps_rel`` and :math:`s` is ``global_scale``.
    The update has the gradient's sign: chain a negative scale (``global_scale=-1``
    or ``scale(-1)``) to descend. The authors recommend averaging the iterates.

    Numerically identical to ``optax.scale_by_distance_over_gradients`` (states
    included). Deviations from Optax: a scalar param's update keeps shape ``()``
    (Optax's is ``(1,)``, which turns the scalar param into a vector);
    ``max_dist`` keeps the dtype it is created in, the wider of the param's and
    the initial copy's (Optax's changes dtype at the first step where they
    differ, e.g. bfloat16 params); ``param_dtype`` also takes
    ``jz.StochasticBF16()`` (no better than ``jnp.bfloat16`` here) but refuses ``jz.Blockwise8Bit()`` (see
    the module's note on a lossy copy and the first distance); squares of float16
    values are summed in float32 and complex ones as :math:`|x|^2` (Optax sums
    float16 squares, and squares complex values); bad numbers raise when
    built, and a state built for params of other shapes when it meets them (Optax broadcasts
    its copy of the initial params); a Python number param is taken as an array (Optax's ``init``
    fails on it: ``'float' object has no attribute 'astype'``); a ``None`` update keeps its state;
    ``axis_name`` is an addition.

    Args:
        reps_rel: :math:`r_\\epsilon > 0`, the first distance relative to :math:`1 + \\|x_0\\|`
            (1e-4 for models with batch norm, 1e-6 otherwise).
        eps: :math:`\\epsilon \\ge 0`, added under the square root.
        param_dtype: storage of the initial params: a floating dtype, not 8-bit. One narrower than the
            params (bfloat16, or :class:`~jaxopt_zoo.storage.StochasticBF16`, which rounds this copy alike)
            adds its rounding, about :math:`2^{-9} \\|x_0\\|`, to the distances: it sets the first steps
            unless :math:`r_0` is above it (see :mod:`jaxopt_zoo.transforms.parameter_free`).
        global_scale: :math:`s`, a factor on every update (typically 1 or -1).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded
            over, so that each norm is the whole array's.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_distance_over_gradients(reps_rel=0.5, eps=0.0)
        >>> params = jnp.array([3.0, 4.0])
        >>> updates, state = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
        >>> updates  # r_0 = 0.5 (1 + 5) = 3, G_1 = 4: 3 / 2 * g
        Array([0., 3.], dtype=float32)

    References:
        Ivgi, Hinder and Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023 (arXiv:2302.12022).
    """
    owner = "scale_by_distance_over_gradients"
    validation.positive(owner, "reps_rel", reps_rel)
    validation.epsilon(owner, "eps", eps)
    storage = _distance_anchor_storage(owner, param_dtype, "reps_rel")
    validation.real_scalar(owner, "global_scale", global_scale)
    axis_name = validation.axis_name(owner, axis_name)

    def norm(x):
        return tree.root(tree.sum_of_squares(x, axis_name, owner))

    def init(params):
        params = _arrays(params)

        def initial_distance(p):
            # In the dtype the update computes distances in: the param's or the read initial copy's, the wider
            # (its real counterpart for complex params: a distance is real).
            read_dtype = jax.eval_shape(lambda: storage.read(storage.create(p, True))).dtype
            dtype = jnp.finfo(jnp.promote_types(tree.moment_dtype(p.dtype), read_dtype)).dtype
            return _dog_first_distance(reps_rel, norm(p)).astype(dtype)

        return ScaleByDistanceOverGradientsState(
            jax.tree.map(initial_distance, params),
            jax.tree.map(lambda p: jnp.zeros(1), params),  # Optax's shape and default dtype
            params,  # with_storage keeps the copy in param_dtype
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.init_params, "the initial params (state.init_params)")
        farthest = lambda _, d, x, x0: jnp.maximum(d, norm(x - x0)).astype(d.dtype)  # noqa: E731
        max_dist = tree.map_state(farthest, updates, state.max_dist, params, state.init_params)
        accumulate = lambda g, s: s + tree.sum_of_squares(g, axis_name, owner)  # noqa: E731
        g_sos = tree.map_state(accumulate, updates, state.grad_sum_of_squares)

        def step(g, d, s):
            eta = global_scale * _dog_step_size(d, s, eps)
            return eta.reshape(()) * g  # eta has shape (1,): keep g's shape, even for a scalar param

        new_updates = tree.map_updates(step, updates, max_dist, g_sos)
        return new_updates, state._replace(max_dist=max_dist, grad_sum_of_squares=g_sos)

    tx = with_storage(GradientTransformation(init, update), signed={"init_params": storage})
    return expects_state(owner, tx, ScaleByDistanceOverGradientsState)


# --- global DoG and DoWG (optax.contrib) ----------------------------------------------------------

DOG_INIT_STEPS = ("distance", "learning_rate", "heuristic")


def _check_init_step(owner: str, init_step: Any) -> tuple[str, Any]:
    if not (isinstance(init_step, (tuple, list)) and len(init_step) == 2 and init_step[0] in DOG_INIT_STEPS):
        raise ValueError(
            f"{owner}: init_step must be a pair (kind, value) with kind one of "
            f"{', '.join(map(repr, DOG_INIT_STEPS))}, got {init_step!r}."
        )
    kind, value = init_step
    validation.positive(owner, f"init_step's value for {kind!r}", value)
    return kind, value


class DoGState(NamedTuple):
    """Whether the next step is the first (``is_init_step``), the initial params ``init_params``, the largest
    distance from them ``max_dist`` and the summed squared gradient norms ``sum_sq_norm_grads`` (scalars);
    ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    is_init_step: jax.Array
    init_params: Updates
    max_dist: jax.Array
    sum_sq_norm_grads: jax.Array
    count: jax.Array | None = None


def scale_by_dog(
    init_step: tuple[str, jax.typing.ArrayLike],
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    param_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Distance over gradients, global (Ivgi et al. 2023, DoG): one step size for the whole tree.

    With :math:`x_0` the params at ``init`` and norms over the whole tree:

    .. math::

        \\bar r_t = \\max(\\bar r_{t-1}, \\|x_t - x_0\\|), \\qquad
        G_t = G_{t-1} + \\|g_t\\|^2, \\quad G_0 = 0, \\qquad
        u_t = \\frac{\\bar r_t}{\\sqrt{G_t + \\epsilon}} \\, g_t.

    ``init_step`` picks the first step: ``("distance", r)`` sets :math:`\\bar r_0 = r`;
    ``("heuristic", a)`` sets :math:`\\bar r_0 = a (1 + \\|x_0\\|)` (the paper's
    :math:`r_\\epsilon`; ``init`` must then see the real params); ``("learning_rate", lr)``
    sets :math:`\\bar r_0 = 0` and makes the first update ``lr`` times :math:`g_1`. The update has
    the gradient's sign: chain a learning-rate scaling to descend (see :func:`jaxopt_zoo.dog`).

    Numerically identical to ``optax.contrib``'s ``scale_by_dog`` (states included; Optax
    does not export it from ``optax.contrib``). Differences: a bad ``init_step`` or
    number raises when built (Optax raises in ``init`` for a bad kind), and a state built for params
    of other shapes when it meets them (Optax measures the distance from its broadcast copy); ``max_dist`` and
    ``sum_sq_norm_grads`` are float32 (float64 when every param is, :func:`jaxopt_zoo.tree.scalar_dtype`)
    and keep it: Optax creates them in the least precise dtype, so with bfloat16 params the sum stops
    growing at 256, and in a tree of mixed dtypes they change dtype at the first step; ``None`` updates pass through (their params still
    count in the distance); the initial params are a copy (Optax's state holds the params' own buffers, so
    params and state cannot both be donated); ``param_dtype`` (the storage of the initial params, see
    :mod:`jaxopt_zoo.storage`; not 8-bit) and ``axis_name`` are additions.

    Args:
        init_step: ``(kind, value)``, kind one of ``"distance"``, ``"learning_rate"``,
            ``"heuristic"``, value > 0 (1e-6 for ``"heuristic"``, 1e-4 with batch norm).
        eps: :math:`\\epsilon \\ge 0`, added under the square root.
        param_dtype: storage of the initial params: ``None`` (the params' dtype) or a floating dtype, not
            8-bit. One narrower than the params (bfloat16, or :class:`~jaxopt_zoo.storage.StochasticBF16`,
            which rounds this copy alike) adds its rounding, about :math:`2^{-9} \\|x_0\\|`, to the distances:
            it sets the first steps unless the first distance is above it (see
            :mod:`jaxopt_zoo.transforms.parameter_free`).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_dog(("distance", 1.5), eps=0.0)
        >>> params = jnp.array([3.0, 4.0])
        >>> updates, state = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
        >>> updates  # 1.5 / sqrt(4) * g
        Array([0. , 1.5], dtype=float32)

    References:
        Ivgi, Hinder and Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023 (arXiv:2302.12022).
    """
    owner = "scale_by_dog"
    kind, value = _check_init_step(owner, init_step)
    validation.epsilon(owner, "eps", eps)
    storage = _distance_anchor_storage(owner, param_dtype, "init_step")
    axis_name = validation.axis_name(owner, axis_name)

    def init(params):
        params = _arrays(params)
        if kind == "distance":
            r0 = value
        elif kind == "heuristic":
            r0 = _dog_first_distance(value, tree.root(_tree_sum_of_squares(params, axis_name, owner)))
        else:
            r0 = 0.0
        dtype = _scalar_dtype(params)
        return DoGState(jnp.asarray(True), _copy(params), jnp.asarray(r0, dtype), jnp.asarray(0.0, dtype))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        _check_anchor(owner, updates, params, state.init_params, "the initial params (state.init_params)")
        dtype = state.max_dist.dtype
        moved = jax.tree.map(lambda x0, x: x0 - x, state.init_params, params)
        distance = tree.root(_tree_sum_of_squares(moved, axis_name, owner))
        max_dist = jnp.maximum(state.max_dist, distance).astype(dtype)
        sum_sq = (state.sum_sq_norm_grads + _tree_sum_of_squares(updates, axis_name, owner)).astype(dtype)
        rate = _dog_step_size(max_dist, sum_sq, eps)
        if kind == "learning_rate":
            rate = jnp.where(state.is_init_step, value, rate)
        new_updates = tree.map_updates(lambda g: (rate * g).astype(jnp.result_type(g)), updates)
        return new_updates, state._replace(is_init_step=jnp.asarray(False), max_dist=max_dist, sum_sq_norm_grads=sum_sq)

    tx = with_storage(GradientTransformation(init, update), signed={"init_params": storage})
    return expects_state(owner, tx, DoGState)


class DoWGState(NamedTuple):
    """The initial params ``init_params``, the distance-weighted sum of squared gradient norms
    ``weighted_sq_norm_grads`` and the largest squared distance ``estim_sq_dist`` (scalars);
    ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    init_params: Updates
    weighted_sq_norm_grads: jax.Array
    estim_sq_dist: jax.Array
    count: jax.Array | None = None


@init_only("init_estim_sq_dist")
def scale_by_dowg(
    init_estim_sq_dist: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-4,
    *,
    param_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Distance over weighted gradients (Khaled et al. 2023, DoWG): one step size for the whole tree.

    With :math:`x_0` the params at ``init`` and norms over the whole tree:

    .. math::

        \\bar r_t^2 = \\max(\\bar r_{t-1}^2, \\|x_t - x_0\\|^2), \\qquad
        v_t = v_{t-1} + \\bar r_t^2 \\|g_t\\|^2, \\quad v_0 = 0, \\qquad
        u_t = \\frac{\\bar r_t^2}{\\sqrt{v_t} + \\epsilon} \\, g_t,

    from :math:`\\bar r_0^2` = ``init_estim_sq_dist`` (``eps`` when ``None``). The update
    has the gradient's sign: chain a learning-rate scaling to descend (see :func:`jaxopt_zoo.dowg`).

    Numerically identical to ``optax.contrib``'s ``scale_by_dowg`` (states included; Optax
    does not export it from ``optax.contrib``). Differences: bad numbers raise when built, and a
    state built for params of other shapes when it meets them (Optax broadcasts its copy); the
    scalars are float32 at least and keep their dtype (as for :func:`scale_by_dog`); ``None``
    updates pass through; the initial params are a copy (as for :func:`scale_by_dog`: Optax's
    cannot be donated with the params); ``param_dtype`` (not 8-bit) and ``axis_name`` are additions.

    Args:
        init_estim_sq_dist: :math:`\\bar r_0^2 > 0`, a guess of the squared distance to a solution.
        eps: :math:`\\epsilon`, added to the denominator (> 0 when ``init_estim_sq_dist`` is ``None``).
        param_dtype: storage of the initial params: ``None`` (the params' dtype) or a floating dtype, not
            8-bit. One narrower than the params (bfloat16, or :class:`~jaxopt_zoo.storage.StochasticBF16`,
            which rounds this copy alike) adds its rounding, about :math:`2^{-9} \\|x_0\\|`, to the distances:
            it sets the first steps unless the first distance is above it (see
            :mod:`jaxopt_zoo.transforms.parameter_free`).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_dowg(init_estim_sq_dist=4.0, eps=0.0)
        >>> params = jnp.array([3.0, 4.0])
        >>> updates, state = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
        >>> updates  # v = 4 * 4: 4 / 4 * g
        Array([0., 2.], dtype=float32)

    References:
        Khaled, Mishchenko and Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free
        Gradient Descent Method", NeurIPS 2023 (arXiv:2305.16284).
    """
    owner = "scale_by_dowg"
    if init_estim_sq_dist is not None:
        validation.positive(owner, "init_estim_sq_dist", init_estim_sq_dist)
    why = " (it is the first squared distance when init_estim_sq_dist is None)"
    validation.epsilon(owner, "eps", eps, allow_zero=init_estim_sq_dist is not None, why_positive=why)
    storage = _distance_anchor_storage(owner, param_dtype, "init_estim_sq_dist (or eps)")
    axis_name = validation.axis_name(owner, axis_name)
    first = eps if init_estim_sq_dist is None else init_estim_sq_dist

    def init(params):
        params = _arrays(params)
        dtype = _scalar_dtype(params)
        return DoWGState(_copy(params), jnp.asarray(0.0, dtype), jnp.asarray(first, dtype))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        _check_anchor(owner, updates, params, state.init_params, "the initial params (state.init_params)")
        dtype = state.estim_sq_dist.dtype
        moved = jax.tree.map(lambda x0, x: x0 - x, state.init_params, params)
        sq_dist = jnp.maximum(state.estim_sq_dist, _tree_sum_of_squares(moved, axis_name, owner)).astype(dtype)
        grad_sq = _tree_sum_of_squares(updates, axis_name, owner)
        weighted = (sq_dist * grad_sq + state.weighted_sq_norm_grads).astype(dtype)
        rate = sq_dist / (tree.root(weighted) + eps)
        new_updates = tree.map_updates(lambda g: (rate * g).astype(jnp.result_type(g)), updates)
        return new_updates, state._replace(weighted_sq_norm_grads=weighted, estim_sq_dist=sq_dist)

    tx = with_storage(GradientTransformation(init, update), signed={"init_params": storage})
    return expects_state(owner, tx, DoWGState)


# --- COCOB (coin betting) -------------------------------------------------------------------------

def _running_max_abs(g: jax.Array, L: jax.Array) -> jax.Array:
    # max(L, |g|) written as a where: jnp.maximum's derivative tests |g| == max(L, |g|), which XLA's fused program
    # can compute differently on each side (a gradient taken through jitted steps then lost that branch: 1-5% off).
    a = jnp.abs(g)
    return jnp.where(L >= a, L, a)


def _anchor_dtype(owner: str, param_dtype: Any) -> Dtype:
    """COCOB's copy of the initial params: a dtype only, since the params are put back at it every step."""
    start = resolve(owner, "param_dtype", param_dtype)
    if not isinstance(start, Dtype):
        raise ValueError(
            f"{owner}: param_dtype must be None or a floating dtype, got {param_dtype!r}: every step puts the params "
            "back at the initial params plus the bet, so a rounded copy would move them by its rounding error."
        )
    return start


class COCOBState(NamedTuple):
    """Per parameter: the initial params ``init_particles``, the summed negative gradients
    ``cumulative_gradients``, the largest gradient magnitude ``scale``, the summed magnitudes
    ``subgradients`` and the ``reward`` won; ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    init_particles: Updates
    cumulative_gradients: Updates
    scale: Updates
    subgradients: Updates
    reward: Updates
    count: jax.Array | None = None


@init_only("eps")
def scale_by_cocob(
    alpha: jax.typing.ArrayLike = 100.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    accumulator_dtype: StateDtype = None,
    param_dtype: StateDtype = None,
) -> GradientTransformation:
    """COCOB-Backprop (Orabona and Tommasi 2017, Algorithm 2): per-coordinate coin betting.

    For each coordinate, with :math:`w_1` its initial value and :math:`L_0 = \\epsilon`,
    :math:`G_0 = R_0 = \\theta_0 = 0`:

    .. math::

        L_t = \\max(L_{t-1}, |g_t|), \\quad G_t = G_{t-1} + |g_t|, \\quad
        R_t = \\max(R_{t-1} - g_t (w_t - w_1), 0), \\quad \\theta_t = \\theta_{t-1} - g_t, \\\\
        w_{t+1} = w_1 + \\frac{\\theta_t}{L_t \\max(G_t + L_t, \\alpha L_t)} (L_t + R_t),
        \\qquad u_t = w_{t+1} - w_t.

    The update already points downhill (do not negate it); it is unchanged when every
    gradient is multiplied by the same positive number (only :math:`L_0` breaks the tie).

    Numerically identical to ``optax.contrib.scale_by_cocob`` (states included). Differences:
    ``alpha`` and ``eps`` must be > 0 (with ``eps=0`` a coordinate whose gradients are all 0
    gets 0/0); a state built for params of other shapes raises (Optax broadcasts it, and its
    sums grow to the new shape); a float16 param's sums are float32 (see :func:`jaxopt_zoo.tree.moments_like`);
    ``None`` updates pass through and keep their state; :math:`w_1` is a copy of the params (Optax's state
    holds their own buffers, so params and state cannot both be donated); ``accumulator_dtype`` (the storage of
    :math:`\\theta, L, G, R`) and ``param_dtype`` (of :math:`w_1`) are additions. Stored in
    low precision, :math:`G` (a growing sum) wants :class:`~jaxopt_zoo.storage.StochasticBF16`
    rather than plain bfloat16, whose rounding drops small increments. :math:`w_1` takes a
    dtype only (no rounding storage): each step puts the params at :math:`w_1` plus the bet, so
    a copy narrower than the params moves them once by its rounding error.

    Args:
        alpha: :math:`\\alpha > 0`, bounding the fraction of the wealth bet early on.
        eps: :math:`\\epsilon > 0`, the initial :math:`L`.
        accumulator_dtype: storage of the four per-parameter sums (see :mod:`jaxopt_zoo.storage`).
        param_dtype: the dtype of the initial params' copy (``None``: the params' dtype).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_cocob(alpha=2.0)
        >>> params = jnp.array([1.0, -1.0])
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), tx.init(params), params)
        >>> updates  # -g / (|g| max(2|g|, 2|g|)) |g| = -g / (2 |g|)
        Array([-0.5,  0.5], dtype=float32)

    References:
        Orabona and Tommasi, "Training Deep Networks without Learning Rates Through Coin Betting",
        NeurIPS 2017 (arXiv:1705.07795).
    """
    owner = "scale_by_cocob"
    validation.positive(owner, "alpha", alpha)
    validation.epsilon(owner, "eps", eps, allow_zero=False, why_positive=" (it is the first L, a divisor)")
    sums = resolve(owner, "accumulator_dtype", accumulator_dtype)
    start = _anchor_dtype(owner, param_dtype)

    def init(params):
        params = _arrays(params)
        # Each sum its own buffer (one array in several fields could not be donated).
        zeros = lambda: tree.moments_like(params)  # noqa: E731
        return COCOBState(_copy(params), zeros(), tree.moments_like(params, eps), zeros(), zeros())

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.init_particles, "the initial params (state.init_particles)")
        x0 = state.init_particles
        scale = tree.map_state(_running_max_abs, updates, state.scale)
        subgradients = tree.map_state(lambda g, G: G + jnp.abs(g), updates, state.subgradients)
        reward = tree.map_state(lambda g, R, p, p0: jnp.maximum(R - g * (p - p0), 0), updates, state.reward, params, x0)
        theta = tree.map_state(lambda g, C: C - g, updates, state.cumulative_gradients)

        def step(g, p, p0, C, L, G, R):
            return -p + (p0 + C / (L * jnp.maximum(G + L, alpha * L)) * (L + R))

        new_updates = tree.map_updates(step, updates, params, x0, theta, scale, subgradients, reward)
        return new_updates, state._replace(
            cumulative_gradients=theta, scale=scale, subgradients=subgradients, reward=reward
        )

    tx = with_storage(
        GradientTransformation(init, update),
        signed={"init_particles": start, "cumulative_gradients": sums},
        non_negative={"scale": sums, "subgradients": sums, "reward": sums},
    )
    return expects_state(owner, tx, COCOBState)


# --- Mechanic (a learned scale for any optimizer) -------------------------------------------------


class MechanicState(NamedTuple):
    """The wrapped optimizer's state, the step ``count``, per beta the scalars ``r`` (reward),
    ``m`` (largest :math:`|h|`), ``v`` (second moment of :math:`h`) and ``s`` (scale), and
    the reference params ``x0`` (the params at the first update)."""

    base_optimizer_state: OptState
    count: jax.Array
    r: jax.Array
    m: jax.Array
    v: jax.Array
    s: jax.Array
    x0: Updates


def mechanize(
    base_optimizer: Any,
    weight_decay: jax.typing.ArrayLike = 1e-2,
    eps: jax.typing.ArrayLike = 1e-8,
    s_init: jax.typing.ArrayLike = 1e-6,
    num_betas: int = 6,
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Mechanic (Cutkosky, Defazio and Mehta 2023): learn the scale of another optimizer's updates.

    The params are :math:`x_t = x_0 + (\\sum_i s_{t,i}) \\Delta_t`, where :math:`\\Delta_t`
    sums the base optimizer's updates :math:`b_k` and :math:`s` is learned by coin betting
    with one bettor per :math:`\\beta_i = 1 - 10^{-i}`, :math:`i = 1..n`. With
    :math:`S_t = \\sum_i s_{t,i}`, inner products and norms over the whole tree:

    .. math::

        \\Delta_t &= (x_t - x_0) / (S_t + \\epsilon), \\qquad
        \\tilde g_t = g_t + \\lambda S_t \\frac{\\|g_t\\|}{\\|x_t\\| + \\epsilon} x_t, \\qquad
        h_t = -\\langle \\tilde g_t, \\Delta_t \\rangle, \\\\
        m_t &= \\max(\\beta m_{t-1}, |h_t| + \\epsilon), \\qquad
        v_t = \\beta^2 v_{t-1} + h_t^2, \\qquad
        r_t = \\beta r_{t-1} + \\operatorname{clip}(h_t, \\pm m_{t-1}) \\, s_t, \\\\
        s_{t+1} &= \\frac{s_{init} m_t / n + \\max(r_t, 0)}{\\sqrt{v_t} + \\epsilon}, \\qquad
        x_{t+1} = x_0 + S_{t+1} (\\Delta_t + b_t),

    from :math:`r_0 = m_0 = v_0 = 0` and :math:`s_{0,i} = s_{init}`; :math:`x_0` is the params
    at the first update (so params replaced after ``init`` are the reference). The
    update returned is :math:`x_{t+1} - x_t`. (The paper writes :math:`h` with the other
    sign and clips nothing; Optax's clipping and :math:`\\epsilon` are kept.)

    Numerically identical to ``optax.contrib.mechanize`` (states included) for real params.
    Differences: for complex params :math:`h_t` is :math:`\\operatorname{Re}\\langle \\tilde g_t,
    \\Delta_t\\rangle`, the inner product of the real pairs :math:`(\\Re x, \\Im x)`, so the scalars
    stay real and a complex param steps as its real pair would; Optax keeps the complex inner
    product, so its scales turn complex (rotating the step), XLA may fail to compile its clamp of
    complex numbers, and a tree mixing real and complex params fails (``lax.clamp`` of a real bound
    and a complex :math:`h`). Also: bad numbers raise when built, and a state built for params of other
    shapes when it meets them (Optax broadcasts its :math:`x_0` to theirs); ``None`` updates pass through
    (their params still count in :math:`\\|x_t\\|`; Optax fails on them); the scalars are float32
    at least (:func:`jaxopt_zoo.tree.scalar_dtype`) and each update in its param's dtype: Optax
    takes the least precise dtype (bfloat16 sums stop growing), and fails on a tree mixing
    bfloat16 and float32 (``lax.clamp`` of a bfloat16 bound and a float32 :math:`h`);
    ``axis_name`` is an addition. ``base_optimizer`` is any object with ``init`` and ``update``
    (ours or Optax's). :math:`x_0` has no storage option: it stays in the params' dtype, since
    :math:`\\Delta_t` divides its rounding error by :math:`S_t` (which starts near
    ``num_betas * s_init``), so a rounded copy would throw the params far off at once.

    Args:
        base_optimizer: the optimizer whose updates are scaled (its learning rate ~1).
        weight_decay: :math:`\\lambda \\ge 0`, Mechanic's own decay (not the base optimizer's).
        eps: :math:`\\epsilon > 0`.
        s_init: :math:`s_{init} > 0`, the initial scale.
        num_betas: :math:`n \\ge 1`, how many bettors (:math:`\\beta = 0.9, 0.99, \\dots`).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.mechanize(jz.sgd(1.0))
        >>> params = jnp.array([1.0, 2.0])
        >>> updates, state = tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)
        >>> state.s  # after the first step: s_init m / n / eps = 1e-6 * 1e-8 / 6 / 1e-8
        Array([1.6666667e-07, 1.6666667e-07, 1.6666667e-07, 1.6666667e-07,
               1.6666667e-07, 1.6666667e-07], dtype=float32)

    References:
        Cutkosky, Defazio and Mehta, "Mechanic: A Learning Rate Tuner", NeurIPS 2023 (arXiv:2306.00144).
    """
    owner = "mechanize"
    base = as_transformation(owner, base_optimizer)
    validation.non_negative(owner, "weight_decay", weight_decay)
    validation.epsilon(owner, "eps", eps, allow_zero=False, why_positive=" (it keeps the first scale finite)")
    validation.positive(owner, "s_init", s_init)
    num_betas = validation.whole_number(owner, "num_betas", num_betas, 1)
    axis_name = validation.axis_name(owner, axis_name)
    betas = [1.0 - 0.1**i for i in range(1, num_betas + 1)]

    def norm(values):
        return tree.root(_tree_sum_of_squares(values, axis_name, owner))

    def init(params):
        dtype = _scalar_dtype(params)
        zeros = lambda: jnp.zeros([num_betas], dtype)  # noqa: E731
        s = jnp.ones([num_betas], dtype) * s_init
        return MechanicState(base.init(params), zero_count(), zeros(), zeros(), zeros(), s, _copy(params))

    def update(updates, state, params=None, **extra_args):
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        _check_anchor(owner, updates, params, state.x0, "the reference params (state.x0)")
        base_updates, base_state = base.update(updates, state.base_optimizer_state, params, **extra_args)
        # The reference point is the params at the first update: those replaced after init count.
        x0 = jax.tree.map(lambda p, x: jnp.where(state.count == 0, p, x), params, state.x0)
        s_sum = jnp.sum(state.s)
        grad_norm, param_norm = norm(updates), norm(params)
        decay = lambda g, p: g + weight_decay * s_sum * grad_norm / (param_norm + eps) * p  # noqa: E731
        decayed = tree.map_updates(decay, updates, params)
        # The memory-light form: Delta_t is recomputed from the params instead of kept.
        delta_prev = jax.tree.map(lambda x, x0i: (x0i - x) / (s_sum + eps), params, x0)
        # The derivative of the loss along the scale is a real number: for complex params, Re<g, Delta>, the
        # inner product of the real pairs (Re, Im). Optax keeps the complex vdot, which turns its scales complex.
        h = jnp.real(tree.tree_vdot(decayed, delta_prev, axis_name, owner))
        clipped_h = jax.lax.clamp(-state.m, jnp.ones_like(state.m) * h, state.m)
        beta = jnp.array(betas, dtype=state.s.dtype)
        m = jnp.maximum(beta * state.m, jnp.abs(h) + eps)
        v = (beta**2) * state.v + h**2
        r = beta * state.r + clipped_h * state.s
        wealth = (s_init / num_betas) * m + jnp.maximum(0.0, r)
        s = wealth / (tree.root(v) + eps)
        # delta_prev is -Delta_t, so x_{t+1} = x_0 + S_{t+1} (Delta_t + b_t) = x_0 - S_{t+1} (delta_prev - b_t).
        step = lambda u, d, x0i, x: ((x0i - jnp.sum(s) * (d - u)) - x).astype(jnp.result_type(x))  # noqa: E731
        new_updates = tree.map_updates(step, base_updates, delta_prev, x0, params)
        new_state = MechanicState(base_state, safe_increment(state.count), r, m, v, s, x0)
        return new_updates, new_state

    return expects_state(owner, GradientTransformation(init, update), MechanicState)
