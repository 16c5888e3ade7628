"""Sharpness-aware minimisation (Foret et al. 2021): sam and normalize.

SAM takes the gradient at an adversarial point near the parameters (a step of
length :math:`\\rho` up the normalised gradient) and applies it at the
parameters themselves. :func:`sam` wraps two optimizers: the adversarial one
(usually ``chain(normalize(), sgd(rho))``) takes the ascent steps, the outer one
the real step; :func:`normalize` is the unit-norm direction.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.sam(jz.sgd(0.01), jz.chain(jz.normalize(), jz.sgd(0.05)))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import EmptyState, GradientTransformation, OptState, Params, apply_updates, check_state
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import AxisName

__all__ = ["NormalizeState", "SAMState", "normalize", "sam"]

NormalizeState = EmptyState
"""The state of :func:`normalize` (it keeps none), under Optax's name."""


def normalize(*, axis_name: AxisName = None) -> GradientTransformation:
    """Scale the updates to unit global norm: :math:`u = g / \\|g\\|`, :math:`\\|g\\| = \\sqrt{\\sum_i \\|g_i\\|^2}`.

    SAM's ascent direction (the first-order solution of its inner maximisation).
    Numerically ``optax.contrib.normalize`` wherever :math:`\\|g\\| > 0`.
    Differences from ``optax.contrib.normalize``: a zero gradient gives a zero
    update (Optax's 0/0 gives NaN, which SAM would add to the params); ``None``
    updates stay ``None``; each update keeps its leaf's dtype (in a tree mixing
    bfloat16 and float32 leaves Optax widens the bfloat16 ones); ``axis_name``
    is an addition.

    Args:
        axis_name: inside ``shard_map``, the mesh axes the updates may be sharded over, so the norm is
            the whole tree's (without it a sharded leaf raises).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.normalize()
        >>> tx.update({"a": jnp.array([3.0]), "b": jnp.array([0.0, 4.0])}, tx.init(None))[0]
        {'a': Array([0.6], dtype=float32), 'b': Array([0. , 0.8], dtype=float32)}

    References:
        Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021 (equation 2).
    """
    axis_name = validation.axis_name("normalize", axis_name)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = tree.map_updates(tree.as_inexact, updates)  # integer squares would wrap, their results truncate
        squares = tree.global_sum_of_squares(updates, axis_name, "normalize")
        # A zero gradient has no direction: divide by 1 there, so the update is 0 instead of 0/0. The guard sits
        # under the root, so that XLA forms g / sqrt(s) as g * rsqrt(s), as in Optax's program (a guard between the
        # two made a third of the entries differ from Optax's in the last bit on some CPUs).
        safe = tree.root(jnp.where(squares == 0, jnp.ones_like(squares), squares))
        # Divided at the norm's precision and rounded once, as Optax does (a bfloat16 norm would round twice).
        return tree.map_updates(lambda g: (g / safe).astype(g.dtype), updates), state

    return GradientTransformation(lambda params: NormalizeState(), update)


class SAMState(NamedTuple):
    """Adversarial steps since the last outer step, both optimizers' states, and the params of the last outer step.

    ``cache`` is ``None`` in opaque mode, where a call to ``update`` takes all
    the adversarial steps at once and no params need to be kept.
    """

    steps_since_sync: jax.Array
    opt_state: OptState
    adv_state: OptState
    cache: Params | None


def _select(cond: jax.Array, if_true: Any, if_false: Any) -> Any:
    """``if_true`` where ``cond``, else ``if_false``, leaf by leaf (``None`` leaves stay ``None``).

    Floating arrays are blended as Optax blends them, ``c a + (1 - c) b``, which XLA compiles to the same bits as
    Optax's program (a ``jnp.where`` changes the fusion, and so the last bit of some steps, as users compile);
    scalars and other leaves (counts, PRNG keys, flags) go through ``jnp.where``: a blended scalar is NaN where the
    branch not taken holds an infinity (``0 * inf``), e.g. ``reduce_on_plateau``'s initial best value.
    """

    def pick(a, b):
        if a is None:
            return None
        if jnp.ndim(a) and jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            return cond * a + (1 - cond) * b
        return jnp.where(cond, a, b)

    return jax.tree.map(pick, if_true, if_false, is_leaf=tree.is_none)


def sam(
    optimizer: GradientTransformation,
    adv_optimizer: GradientTransformation,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> GradientTransformation:
    """Sharpness-aware minimisation (Foret et al. 2021): outer steps with gradients taken at adversarial points.

    With :math:`k` the ``sync_period``, :math:`A` the adversarial optimizer
    (usually normalised SGD with step :math:`\\rho`) and :math:`O` the outer one,
    each period starts from the params :math:`\\theta` of the last outer step:

    .. math::

        \\tilde\\theta_0 = \\theta, \\qquad
        \\tilde\\theta_{j+1} = \\tilde\\theta_j - A(\\nabla L(\\tilde\\theta_j)) \\quad (j < k - 1), \\qquad
        \\theta \\leftarrow \\theta + O(\\nabla L(\\tilde\\theta_{k-1}); \\theta),

    so with :math:`A = -\\rho\\, g / \\|g\\|` and :math:`k = 2` the outer step
    uses the gradient at :math:`\\theta + \\rho\\, \\nabla L / \\|\\nabla L\\|`
    (the paper's SAM). In the default *transparent* mode each call to
    ``update`` is one of the :math:`k` steps: the first :math:`k - 1` return
    the ascent steps, the last returns the step from the adversarial point to
    :math:`\\theta` plus the outer update, so the caller's params are the
    adversarial ones in between (the state keeps :math:`\\theta` in ``cache``).
    In *opaque* mode (``opaque_mode=True``) one call takes all :math:`k`
    steps, calling ``update(..., grad_fn=f)`` with ``f(params, j)`` the
    gradient at ``params`` for adversarial step ``j``; the caller only ever sees
    outer steps. ``reset_state`` re-initialises the adversarial optimizer's
    state after each outer step. ``batch_axis_name`` (opaque mode) ``pmean``\\ s
    each adversarial gradient over that axis.

    Any objects with ``init`` and ``update`` are accepted as the optimizers
    (Optax's too); extra keyword arguments of ``update`` (but ``grad_fn``)
    reach both. ``init`` copies the params into ``cache``, so params and state
    can both be donated.

    Same arguments and numbers as ``optax.contrib.sam``. Differences: with
    ``sync_period=1`` Optax's transparent mode reads the cache written by the
    *previous* call, so each step undoes the step before and applies its own
    update to the params from before it (a bug); here the cache is refreshed
    first, so ``sync_period=1`` is the outer optimizer alone, as in opaque mode.
    Floating arrays of the states and updates are selected as Optax selects them, by
    the blend :math:`c\\,a + (1 - c)\\,b` (so a non-finite entry in the branch not
    taken makes the result NaN, as in Optax); scalars and other leaves by
    ``jnp.where``: Optax's blend made an infinite scalar in the branch not taken NaN
    (the outer optimizer's ``reduce_on_plateau`` lost its initial best value
    :math:`+\\infty` and never recorded one), and fails on PRNG keys (an inner ``add_noise``).
    ``None`` updates stay ``None``. Bad arguments raise when the wrapper is built;
    updates whose tree or shapes differ from the params (or from the params
    cached in the state) raise naming the paths. ``sync_period`` shapes the program: with
    :func:`~jaxopt_zoo.inject_hyperparams`, pass it in ``static_args``. The
    params cache is kept in the params' dtypes (no storage option: it is a copy
    of the params, not a moment).

    Args:
        optimizer: the outer optimizer :math:`O`.
        adv_optimizer: the adversarial optimizer :math:`A` (its updates are negated: an ascent).
        sync_period: :math:`k \\ge 1`, the steps per period: :math:`k - 1` adversarial steps, then an outer one.
        reset_state: whether to re-initialise ``adv_optimizer``'s state after each outer step.
        opaque_mode: take all :math:`k` steps in one call, with the ``grad_fn`` extra argument.
        batch_axis_name: in opaque mode, a ``pmap``/``shard_map`` axis to ``pmean`` the adversarial gradients over.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> loss = lambda p: jnp.sum(p**2)
        >>> tx = jz.sam(jz.sgd(0.1), jz.chain(jz.normalize(), jz.sgd(0.5)))
        >>> params = jnp.array([1.0, 0.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):  # an ascent step to [1.5, 0], then the outer step back at [1, 0]
        ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
        ...     params = jz.apply_updates(params, updates)
        >>> params  # 1 - 0.1 * 2 * 1.5
        Array([0.7, 0. ], dtype=float32)

    References:
        Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021.
    """
    owner = "sam"
    optimizer = as_transformation(owner, optimizer)
    adv_optimizer = as_transformation(owner, adv_optimizer)
    sync_period = validation.whole_number(owner, "sync_period", sync_period, 1, validation.INT32_MAX)
    validation.flag(owner, "reset_state", reset_state)
    validation.flag(owner, "opaque_mode", opaque_mode)
    if batch_axis_name is not None and not isinstance(batch_axis_name, str):
        raise ValueError(f"{owner}: batch_axis_name must be None or an axis name (a str), got {batch_axis_name!r}.")

    def init(params):
        # A copy, so that donating both params and state does not donate one buffer twice.
        cache = None if opaque_mode else jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        return SAMState(jnp.zeros([], jnp.int32), optimizer.init(params), adv_optimizer.init(params), cache)

    def transparent_update(updates, state, params, extra_args):
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.cache, "the params of the last outer step (state.cache)")
        first, last = state.steps_since_sync == 0, state.steps_since_sync == sync_period - 1
        ascent, adv_state = adv_optimizer.update(updates, state.adv_state, params, **extra_args)
        ascent = tree.map_updates(jnp.negative, ascent)
        cache = _select(first, params, state.cache)  # refreshed before use: see sync_period=1 above
        outer, opt_state = optimizer.update(updates, state.opt_state, cache, **extra_args)
        back_and_outer = tree.map_updates(lambda u, c, p: c - p + u, outer, cache, params)
        new_updates = _select(last, back_and_outer, ascent)
        fresh = adv_optimizer.init(params) if reset_state else state.adv_state
        new_state = SAMState(
            (state.steps_since_sync + 1) % sync_period,
            _select(last, opt_state, state.opt_state),
            _select(last, fresh, adv_state),
            cache,
        )
        return new_updates, new_state

    def opaque_update(updates, state, params, extra_args, grad_fn):
        if grad_fn is None:
            raise ValueError(
                f"{owner}: opaque_mode=True needs update(..., grad_fn=f) with f(params, step) the gradient."
            )
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        adv_params, adv_state = params, state.adv_state
        for step in range(sync_period - 1):
            ascent, adv_state = adv_optimizer.update(updates, adv_state, adv_params, **extra_args)
            adv_params = apply_updates(adv_params, tree.map_updates(jnp.negative, ascent))
            updates = grad_fn(adv_params, step)
            if batch_axis_name is not None:
                updates = jax.lax.pmean(updates, axis_name=batch_axis_name)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        new_updates, opt_state = optimizer.update(updates, state.opt_state, params, **extra_args)
        return new_updates, SAMState(jnp.zeros([], jnp.int32), opt_state, adv_state, None)

    def update(updates, state, params=None, *, grad_fn: Callable[[Params, int], Any] | None = None, **extra_args):
        check_state(owner, state, SAMState)
        if opaque_mode:
            return opaque_update(updates, state, params, extra_args, grad_fn)
        if grad_fn is not None:
            raise ValueError(f"{owner}: grad_fn is used only with opaque_mode=True; build sam(..., opaque_mode=True).")
        return transparent_update(updates, state, params, extra_args)

    return GradientTransformation(init, update)
