"""Sophia (Liu et al. 2023): a clipped diagonal-Hessian preconditioner, and its Hutchinson estimator.

Sophia divides a momentum by a moving average of an estimate of the Hessian's
diagonal, refreshed every few steps, and clips the ratio elementwise. The
estimate comes from a separate transformation (``hessian_diagonal_fn``), by
default Hutchinson's, which needs the objective as an extra argument:
``update(grads, state, params, obj_fn=lambda p: loss(p, batch))``.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.scale_by_sophia(update_interval=5)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Updates,
    expects_state,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import AxisName, sum_over_shards, varying_axes
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "HutchinsonState",
    "SophiaState",
    "hutchinson_estimator_diag_hessian",
    "scale_by_sophia",
]


def _varying_like(probe, x):
    """``probe`` marked as varying over the ``shard_map`` axes ``x`` varies over (``jax.jvp`` needs the tangent's
    to match the primal's); outside ``shard_map`` it is returned as it is."""
    missing = tuple(sorted(varying_axes(x) - varying_axes(probe)))
    return jax.lax.pcast(probe, missing, to="varying") if missing else probe


def check_clip(owner: str, eps: Any, clip_threshold: Any) -> None:
    """``clip_threshold`` positive or ``None``, and not ``None`` with a zero ``eps``: the first step divides by
    :math:`\\max(\\gamma h_0, \\epsilon) = 0` (no Hessian estimate yet), and only the clip makes that finite."""
    if clip_threshold is not None:
        validation.positive(owner, "clip_threshold", clip_threshold)
    elif validation.is_literal_zero(eps) or (not isinstance(eps, jax.core.Tracer) and float(eps) == 0):
        raise ValueError(
            f"{owner}: eps=0 with clip_threshold=None would step by +-inf wherever the Hessian estimate is 0 (every "
            "entry on the first step, before any estimate): give eps > 0 (1e-8, the default) or a clip_threshold."
        )


def _differentiable(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class HutchinsonState(NamedTuple):
    """The random key the next probe vectors are drawn from."""

    key: jax.Array


def hutchinson_estimator_diag_hessian(random_seed: jax.Array | None = None) -> GradientTransformation:
    """Hutchinson's unbiased estimate of the Hessian's diagonal: :math:`\\hat h = z \\odot (\\nabla^2 f(x)\\, z)`.

    Each call draws a Rademacher vector :math:`z` (entries :math:`\\pm 1`, one key per param
    leaf, split from the state's key) and forms the Hessian-vector product by forward-over-reverse
    differentiation of ``obj_fn``; :math:`\\mathbb{E}[\\hat h] = \\operatorname{diag}\\nabla^2 f(x)`.
    The incoming updates are ignored; the output is the estimate, shaped like the params. Call it
    with the objective: ``update(updates, state, params, obj_fn=f)``, ``f(params)`` a scalar.

    Numerically identical to ``optax.contrib.hutchinson_estimator_diag_hessian`` (same keys,
    same draws). Differences: each probe leaf is cast to its own param's dtype (Optax casts all to
    the tree's lowest dtype, which fails in ``jax.jvp`` for mixed-precision params); a missing
    ``params`` or ``obj_fn`` raises a ``ValueError`` saying how to call it; an integer
    ``random_seed`` is refused when built (pass ``jax.random.key(seed)``); inside ``shard_map``
    every shard draws its block from the same key, so entries at the same local position on
    different shards get the same sign: the estimate is unbiased when the objective is a sum of
    per-shard terms, and picks up the cross-shard Hessian entries :math:`H_{ii'}` when it couples
    shards (a loss summed over the mesh); ``init`` keeps a copy
    of ``random_seed`` (Optax's state holds the caller's key itself, which a donated step deletes).
    For complex params the probes are real (:math:`\\pm 1`), so the estimate's real part is the curvature along
    the real parts, :math:`\\partial^2 f / \\partial x_r^2`, and its imaginary part
    :math:`-\\partial^2 f / \\partial x_r \\partial x_i` (JAX's complex gradient), as Optax's
    (:func:`jaxopt_zoo.sophia` refuses complex params). Integer and bool params, which have no derivative, get a
    zero estimate in float32 (Optax fails in ``jax.jvp``), so a model holding some (a step counter) can be searched.

    Args:
        random_seed: the first key (``jax.random.PRNGKey(0)`` when ``None``).

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2 * jnp.array([1.0, 3.0]))  # a diagonal Hessian: exact for any z
        >>> tx = jz.hutchinson_estimator_diag_hessian()
        >>> params = jnp.array([1.0, 1.0])
        >>> diag, state = tx.update(params, tx.init(params), params, obj_fn=f)
        >>> diag
        Array([2., 6.], dtype=float32)

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines", Communications in Statistics 1990;
        Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
        Pre-training", ICLR 2024 (arXiv:2305.14342), Algorithm 1.
    """
    owner = "hutchinson_estimator_diag_hessian"
    if random_seed is not None and not (isinstance(random_seed, jax.Array) or hasattr(random_seed, "shape")):
        raise ValueError(
            f"{owner}: random_seed must be a JAX random key such as jax.random.key(0) or "
            f"jax.random.PRNGKey(0), or None; got {random_seed!r}."
        )

    def init(params):
        del params
        # A copy: a donated state must not delete the caller's key (nor share it with another init). jnp.copy, not
        # the array's .copy(): that one fails under a trace (eval_shape, jit) for a typed key (jax.random.key).
        return HutchinsonState(jax.random.PRNGKey(0) if random_seed is None else jnp.copy(jnp.asarray(random_seed)))

    def update(updates, state, params=None, obj_fn=None, **extra_args):
        del updates, extra_args
        validation.require_params(owner, params)
        if obj_fn is None:
            raise ValueError(
                f"{owner} needs the objective: call update(updates, state, params, obj_fn=f) with f(params) "
                "the scalar loss (e.g. obj_fn=lambda p: loss_fn(p, batch))."
            )
        key, subkey = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(subkey, treedef.num_leaves)  # a key for every leaf: the float leaves keep Optax's
        # Drawn in float32 as Optax draws them, then cast to each param's dtype (the values are +-1). An integer or
        # bool param has no derivative: its tangent is float0 (what jax.jvp asks for) and its estimate 0.
        probes = [
            _varying_like(jax.random.rademacher(k, jnp.shape(x), jnp.float32, out_sharding=jax.typeof(x).sharding), x)
            .astype(x.dtype) if _differentiable(x) else np.zeros(jnp.shape(x), jax.dtypes.float0)
            for k, x in zip(keys, leaves)
        ]
        probes = jax.tree.unflatten(treedef, probes)
        hvp = jax.jvp(jax.grad(obj_fn, allow_int=True), (params,), (probes,))[1]
        estimate = jax.tree.map(
            lambda h, z, x: h * z if _differentiable(x) else jnp.zeros(jnp.shape(x), tree.moment_dtype(x.dtype)),
            hvp, probes, params)
        return estimate, HutchinsonState(key)

    return GradientTransformationExtraArgs(init, update)


class SophiaState(NamedTuple):
    """Step ``count``, momentum ``mu``, moving average ``nu`` of the Hessian-diagonal estimates, and
    the estimator's state ``hessian_fn_state`` (Optax's fields, in its order)."""

    count: jax.Array
    mu: Updates
    nu: Updates
    hessian_fn_state: Any


def _win_rate_printer(owner, clip_threshold, every, axis_name):
    """Prints the fraction of unclipped coordinates every ``every`` steps (the authors' diagnostic)."""

    def report(direction, count):
        leaves = [u for u in jax.tree.leaves(direction) if u is not None]
        unclipped = sum_over_shards(owner, ((jnp.sum(jnp.abs(u) < clip_threshold), u) for u in leaves), axis_name)
        size = sum_over_shards(owner, ((jnp.asarray(u.size), u) for u in leaves), axis_name)
        jax.lax.cond(
            (every > 0) & (count % jnp.maximum(every, 1) == 0),
            lambda: jax.debug.print("Sophia optimizer win rate: {}", unclipped / size),
            lambda: None,
        )

    return report


# Said by both Sophias' refusal of complex params.
COMPLEX_WHY = ("Sophia clips m / max(gamma h, eps), which needs ordered, real numbers, and a complex coordinate's "
               "curvature is a 2x2 block, not one number: Hutchinson's real probes see only its real part")


def scale_by_sophia(
    b1: jax.typing.ArrayLike = 0.965,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    gamma: jax.typing.ArrayLike = 0.01,
    clip_threshold: jax.typing.ArrayLike | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: Any = hutchinson_estimator_diag_hessian(),
    mu_dtype: StateDtype = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
    *,
    nu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Sophia's preconditioned, clipped momentum (Liu et al. 2023), Optax's (Levanter's) form.

    With :math:`\\hat h_t` the estimate of ``hessian_diagonal_fn`` and :math:`k` the
    ``update_interval``:

    .. math::

        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        u_t = \\operatorname{clip}\\Big(\\frac{m_t / (1 - \\beta_1^t)}{\\max(\\gamma h_{t-1}, \\epsilon)},
        \\rho\\Big), \\\\
        h_t = \\beta_2 h_{t-1} + (1 - \\beta_2) \\hat h_t \\text{ if } (t - 1) \\bmod k = 0,
        \\text{ else } h_t = h_{t-1},

    from :math:`m_0 = h_0 = 0`, with :math:`\\operatorname{clip}(x, \\rho) = \\max(-\\rho, \\min(x, \\rho))`
    elementwise (none when ``clip_threshold`` is ``None``). The estimator runs at steps
    1, k + 1, 2k + 1, ... and gets the extra arguments of ``update`` (``obj_fn=`` for
    Hutchinson's). The update has the gradient's sign: chain a negative learning rate
    (:func:`jaxopt_zoo.sophia` does).

    Differences from the paper (Algorithm 3), as in Optax and Levanter: the momentum is
    bias-corrected, and the step uses the Hessian average from *before* this step's refresh
    (so the first step, with :math:`h_0 = 0`, is a clipped sign step).

    Numerically identical to ``optax.contrib._sophia.scale_by_sophia`` (states included).
    Differences from Optax: ``nu_dtype`` (storage of the Hessian average: a dtype,
    :class:`~jaxopt_zoo.storage.StochasticBF16`, :class:`~jaxopt_zoo.quantization.Blockwise8Bit`;
    signed, since Hutchinson's estimates can be negative) and ``axis_name`` (for the win rate's
    count inside ``shard_map``) are additions; ``mu_dtype`` also takes the storage objects; with
    ``verbose`` and ``print_win_rate_every_n_steps=0`` nothing is printed (Optax takes the count
    modulo 0); a ``None`` update keeps its momentum and Hessian average; any object with
    ``init``/``update`` is accepted as ``hessian_diagonal_fn``; bad hyperparameters raise when built;
    complex params raise at ``init``, naming this function (wrap it in
    :func:`~jaxopt_zoo.split_real_and_imaginary`): the clip and :math:`\\max(\\gamma h, \\epsilon)`
    need real numbers, and Hutchinson's real probes measure only the curvature along a complex
    coordinate's real part. Optax fails at the first update inside ``jnp.clip`` and, with
    ``clip_threshold=None``, runs on that real-part curvature. With :math:`\\epsilon = 0` a zero momentum
    entry over a zero denominator gives a zero update (Optax's 0/0 is NaN; any other entry over 0 is
    :math:`\\pm\\infty`, clipped to :math:`\\pm\\rho`; ``eps=0`` with ``clip_threshold=None`` raises, as
    its first step would be infinite: Optax's is).
    Updates whose tree or shapes differ from the state's raise naming the paths. Integer and bool params
    step in float32 (as with :func:`jaxopt_zoo.adam`), with Hutchinson's zero estimate for them (no
    derivative); Optax fails in ``jax.jvp``.

    Args:
        b1: :math:`\\beta_1 \\in [0, 1)`, the decay of the momentum.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the Hessian average per refresh (per step it is
            effectively :math:`1 - (1 - \\beta_2)/k`).
        eps: :math:`\\epsilon \\ge 0`, the smallest denominator.
        gamma: :math:`\\gamma \\ge 0`, the scale of the Hessian in the denominator.
        clip_threshold: :math:`\\rho > 0`, the largest update entry, or ``None`` for no clipping.
        update_interval: :math:`k \\ge 1`, steps between Hessian refreshes.
        hessian_diagonal_fn: the estimator: a transformation whose ``update(grads, state, params,
            **extra_args)`` returns the estimate of the Hessian's diagonal (default Hutchinson's).
            Under ``pmap`` or ``shard_map`` it must average its estimate across devices itself.
        mu_dtype: storage of the momentum (see :mod:`jaxopt_zoo.storage`).
        verbose: print the fraction of coordinates not clipped (the "win rate").
        print_win_rate_every_n_steps: how often to print it (0: never).
        nu_dtype: storage of the Hessian average.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over (for the win rate).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = jz.scale_by_sophia()
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(2 * params, tx.init(params), params, obj_fn=f)
        >>> updates  # h_0 = 0: a clipped sign step
        Array([ 1., -1.], dtype=float32)
        >>> state.nu  # (1 - b2) * diag(Hessian)
        Array([0.02, 0.02], dtype=float32)

    References:
        Liu, Li, Hall, Liang and Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
        Language Model Pre-training", ICLR 2024 (arXiv:2305.14342); Levanter's implementation.
    """
    owner = "scale_by_sophia"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    guard = validation.may_all_be_zero(eps)
    validation.non_negative(owner, "gamma", gamma)
    check_clip(owner, eps, clip_threshold)
    if not isinstance(update_interval, jax.core.Tracer):  # an injected (traced) interval is taken as it is
        update_interval = validation.whole_number(owner, "update_interval", update_interval, 1, validation.INT32_MAX)
    hessian = as_transformation(owner, hessian_diagonal_fn)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    validation.flag(owner, "verbose", verbose)
    every = print_win_rate_every_n_steps  # injected (traced): decided at each step
    if not isinstance(every, jax.core.Tracer):
        every = validation.whole_number(owner, "print_win_rate_every_n_steps", every)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)
    axis_name = validation.axis_name(owner, axis_name)
    printing = verbose and clip_threshold is not None and (isinstance(every, jax.core.Tracer) or every > 0)
    report = _win_rate_printer(owner, clip_threshold, every, axis_name) if printing else None

    def init(params):
        validation.refuse_complex(owner, params, COMPLEX_WHY)
        return SophiaState(zero_count(), tree.moments_like(params), tree.moments_like(params), hessian.init(params))

    def refresh_hessian(updates, state, params, extra_args):
        """The Hessian average, refreshed every ``update_interval`` steps (a ``lax.cond``), and the estimator's state.

        Only the leaves with an update enter the ``cond``: the others are handed back as they were.
        """
        nu, treedef = jax.tree.flatten(state.nu)
        live = [i for i, g in enumerate(jax.tree.leaves(updates, is_leaf=tree.is_none)) if g is not None]

        def refresh(hessian_state, live_nu):
            diag, hessian_state = hessian.update(updates, hessian_state, params, **extra_args)
            diag = jax.tree.leaves(diag)
            return hessian_state, [((1 - b2) * diag[i] + b2 * h).astype(h.dtype) for i, h in zip(live, live_nu)]

        hessian_state, live_nu = jax.lax.cond(
            state.count % update_interval == 0,
            refresh,
            lambda hessian_state, live_nu: (hessian_state, live_nu),
            state.hessian_fn_state,
            [nu[i] for i in live],
        )
        for i, h in zip(live, live_nu):
            nu[i] = h
        return jax.tree.unflatten(treedef, nu), hessian_state

    def ratio(m, h):
        denominator = jnp.maximum(gamma * h, eps)
        if not guard:
            return m / denominator
        # With eps = 0 the denominator is 0 where gamma h <= 0 (h_0 = 0, or a negative estimate): 0/0 where m = 0 too,
        # taken as 0 (as jz.adam(eps=0)); +-inf elsewhere, which the clip makes +-rho, with a finite slope.
        empty = (m == 0) & (denominator == 0)
        return jnp.where(empty, 0, tree.divide_with_finite_slope(m, jnp.where(empty, 1, denominator)))

    def update(updates, state, params=None, **extra_args):
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.mu, "the momentum (state.mu)")
        tree.check_same_structure(owner, updates, state.nu, "the Hessian average (state.nu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        mu_hat = tree.bias_correction(mu, b1, count)
        direction = tree.map_updates(lambda g, m, h: ratio(m, h), updates, mu_hat, state.nu)
        if clip_threshold is not None:
            if report is not None:
                report(direction, count)
            direction = tree.map_updates(lambda u: jnp.clip(u, -clip_threshold, clip_threshold), direction)
        nu, hessian_state = refresh_hessian(updates, state, params, extra_args)
        return direction, SophiaState(count, mu, nu, hessian_state)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype, "nu": nu_dtype})
    return expects_state(owner, tx, SophiaState)
