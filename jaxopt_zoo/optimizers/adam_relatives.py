"""Adam's relatives as Optax's aliases: Adamax (and AdamaxW), RAdam, Yogi, AdaBelief and Adan."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import (
    add_decayed_weights,
    scale_by_acprop,
    scale_by_adopt,
    scale_by_adamax,
    scale_by_adan,
    scale_by_belief,
    scale_by_learning_rate,
    scale_by_radam,
    scale_by_yogi,
)

__all__ = ["adabelief", "adamax", "adamaxw", "adan", "radam", "yogi"]
__all__ += ["acprop", "adopt"]


@document_args(scale_by_adamax, scale_by_learning_rate)
def adamax(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adamax (Kingma & Ba 2015, section 7.1): :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\hat m_t / u_t`,
    :math:`u_t = \\max(\\beta_2 u_{t-1}, |g_t| + \\varepsilon)`.

    Recipe: ``chain(scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    scale_by_learning_rate(learning_rate))``; the rule and its deviations from Optax are those of
    :func:`jaxopt_zoo.scale_by_adamax`. ``mu_dtype`` and ``nu_dtype`` are additions to ``optax.adamax``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adamax(2e-3)

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """
    validation.learning_rate("adamax", learning_rate)
    _adamax_options("adamax", b1, b2, eps, mu_dtype, nu_dtype)
    return chain(
        scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_adamax, add_decayed_weights, scale_by_learning_rate)
def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adamax with decoupled weight decay:
    :math:`\\theta_{t+1} = \\theta_t - \\alpha_t (\\hat m_t / u_t + \\lambda \\theta_t)`.

    The decay is multiplied by the learning rate, as in Optax and PyTorch. Recipe:
    ``chain(scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``, as
    ``optax.adamaxw``; ``mu_dtype`` and ``nu_dtype`` are additions.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adamaxw(2e-3, weight_decay=1e-2)

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    validation.learning_rate("adamaxw", learning_rate)
    _adamax_options("adamaxw", b1, b2, eps, mu_dtype, nu_dtype)
    validation.scalar_or_schedule("adamaxw", "weight_decay", weight_decay)
    return chain(
        scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def _adamax_options(owner: str, b1: Any, b2: Any, eps: Any, mu_dtype: Any, nu_dtype: Any) -> None:
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)


@document_args(scale_by_radam, scale_by_learning_rate)
def radam(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Rectified Adam (Liu et al. 2020): Adam's step times the rectification :math:`r_t` once
    :math:`\\rho_t \\ge` ``threshold``, plain bias-corrected momentum before.

    Recipe: ``chain(scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov,
    mu_dtype=mu_dtype, nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))``, as
    ``optax.radam``. The rule and its deviations from Optax (notably :math:`\\rho_t` computed without
    cancellation, so float32 runs differ from Optax's by Optax's rounding error) are those of
    :func:`jaxopt_zoo.scale_by_radam`; ``mu_dtype`` and ``nu_dtype`` are additions. PyTorch's
    variant (:math:`\\varepsilon` before the bias correction) is ``jz.torch.radam``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.radam(1e-3)

    References:
        Liu, Jiang, He, Chen, Liu, Gao & Han, "On the Variance of the Adaptive Learning Rate and
        Beyond", ICLR 2020.
    """
    validation.learning_rate("radam", learning_rate)
    validation.adam_options("radam", b1, b2, eps, eps_root, nesterov)
    validation.rectification_threshold("radam", threshold)
    validation.state_dtypes("radam", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_yogi, scale_by_learning_rate)
def yogi(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-3,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Yogi (Zaheer et al. 2018):
    :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\hat m_t / (\\sqrt{\\hat v_t} + \\varepsilon)` with the
    additive second moment :math:`v_t = v_{t-1} - (1-\\beta_2) \\operatorname{sign}(v_{t-1} - g_t^2) g_t^2`.

    Recipe: ``chain(scale_by_yogi(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    scale_by_learning_rate(learning_rate))``, as ``optax.yogi`` (so ``eps_root=0`` and both moments
    start at 1e-6); see :func:`jaxopt_zoo.scale_by_yogi`. ``mu_dtype`` and ``nu_dtype`` are additions.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.yogi(1e-2)

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018.
    """
    validation.learning_rate("yogi", learning_rate)
    validation.decay_rate("yogi", "b1", b1)
    validation.decay_rate("yogi", "b2", b2)
    validation.epsilon("yogi", "eps", eps)
    validation.state_dtypes("yogi", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_yogi(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_belief, scale_by_learning_rate)
def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """AdaBelief (Zhuang et al. 2020):
    :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\hat m_t / (\\sqrt{\\hat s_t} + \\varepsilon)` with
    :math:`s_t = \\beta_2 s_{t-1} + (1 - \\beta_2)(g_t - m_t)^2 + \\bar\\varepsilon`.

    Recipe: ``chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov, mu_dtype=mu_dtype,
    nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))``, as ``optax.adabelief`` (whose
    defaults ``eps = eps_root = 1e-16`` differ from the paper's 1e-8 and 0); see
    :func:`jaxopt_zoo.scale_by_belief`. ``mu_dtype`` and ``nu_dtype`` are additions.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adabelief(1e-3)

    References:
        Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan, "AdaBelief Optimizer: Adapting
        Stepsizes by the Belief in Observed Gradients", NeurIPS 2020.
    """
    validation.learning_rate("adabelief", learning_rate)
    validation.adam_options("adabelief", b1, b2, eps, eps_root, nesterov)
    validation.belief_b1("adabelief", b1)
    validation.state_dtypes("adabelief", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_adan, add_decayed_weights, scale_by_learning_rate)
def adan(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.98,
    b2: jax.typing.ArrayLike = 0.92,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    m_dtype: StateDtype = None,
    v_dtype: StateDtype = None,
    n_dtype: StateDtype = None,
    g_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adan (Xie et al. 2022): :math:`\\theta_{t+1} = \\theta_t - \\alpha_t (u_t + \\lambda \\theta_t)`, with
    :math:`u_t` the Nesterov-momentum direction of :func:`jaxopt_zoo.scale_by_adan`.

    Recipe: ``chain(scale_by_adan(b1, b2, b3, eps, eps_root, ...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, as ``optax.adan`` (note ``eps_root=1e-8`` here, 0 in the
    transformation). The weight decay is decoupled and multiplied by the learning rate, as Optax computes it
    and as the authors' code does with ``no_prox=True``; the paper's Algorithm 1 (and the formula in Optax's
    docstring) apply it proximally, :math:`\\theta_{t+1} = (\\theta_t - \\alpha u_t) / (1 + \\lambda\\alpha)`,
    which agrees to first order in :math:`\\lambda\\alpha`. The storage options are additions.

    Args:
        m_dtype: storage of the gradient moment: a storage (see :mod:`jaxopt_zoo.storage`).
        v_dtype: storage of the gradient-difference moment, as for ``m_dtype``.
        n_dtype: storage of the squared moment, as for ``m_dtype``.
        g_dtype: storage of the previous gradient, as for ``m_dtype``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adan(1e-3, weight_decay=0.02)

    References:
        Xie, Zhou, Li, Lin & Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
        Models", IEEE TPAMI 2024 (arXiv:2208.06677, 2022).
    """
    validation.learning_rate("adan", learning_rate)
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        validation.decay_rate("adan", name, value)
    validation.epsilon("adan", "eps", eps)
    validation.epsilon("adan", "eps_root", eps_root)
    validation.scalar_or_schedule("adan", "weight_decay", weight_decay)
    validation.state_dtypes("adan", m_dtype=m_dtype, v_dtype=v_dtype, n_dtype=n_dtype, g_dtype=g_dtype)
    return chain(
        scale_by_adan(b1, b2, b3, eps, eps_root, m_dtype=m_dtype, v_dtype=v_dtype, n_dtype=n_dtype, g_dtype=g_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_adopt, scale_by_learning_rate)
def adopt(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9999,
    eps: jax.typing.ArrayLike = 1e-6,
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = lambda count: count**0.25,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """ADOPT (Taniguchi et al. 2024): :math:`\\theta_{t+1} = \\theta_t - \\alpha_t m_t` with
    :math:`m_t = \\beta_1 m_{t-1} + (1 - \\beta_1)
    \\operatorname{clip}(g_t / \\max(\\sqrt{v_{t-1}}, \\varepsilon), c_t)`.

    The first call only records :math:`v_0 = g_0^2` (the params do not move); see
    :func:`jaxopt_zoo.scale_by_adopt` for the rule. Recipe: ``chain(scale_by_adopt(b1, b2, eps, mu_dtype,
    nesterov=nesterov, use_clipping=use_clipping, clip_value_fn=clip_value_fn, nu_dtype=nu_dtype),
    scale_by_learning_rate(learning_rate))``, as ``optax.contrib.adopt``. The paper's default
    :math:`\\beta_2 = 0.9999` works because :math:`v_{t-1}` excludes :math:`g_t`.

    Differences from ``optax.contrib.adopt``: those of :func:`jaxopt_zoo.scale_by_adopt` (``eps=0`` gives 0,
    not NaN, where :math:`v_{t-1} = 0`; ``nu_dtype`` is an addition; with ``use_clipping`` complex params
    raise at ``init``, where Optax's clip fails at the first update).

    Args:
        clip_value_fn: :math:`c_t` as a function of the int32 step count (default :math:`t^{1/4}`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> from jaxopt_zoo.optimizers.adam_relatives import adopt
        >>> tx = adopt(1e-3, mu_dtype=jz.StochasticBF16())

    References:
        Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate",
        NeurIPS 2024.
    """
    owner = "adopt"
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.flag(owner, "nesterov", nesterov)
    validation.flag(owner, "use_clipping", use_clipping)
    if not callable(clip_value_fn):
        raise ValueError(f"{owner}: clip_value_fn must be a function of the step count, got {clip_value_fn!r}.")
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    tx = chain(
        scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov, use_clipping=use_clipping,
                       clip_value_fn=clip_value_fn, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )
    why = "use_clipping=True clips each entry to [-c, c], which a complex one has no place in: pass use_clipping=False"
    return validation.refusing_complex(owner, tx, why) if use_clipping else tx


@document_args(scale_by_acprop, add_decayed_weights, scale_by_learning_rate)
def acprop(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """ACProp (Zhuang et al. 2021): :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\big(g_t / (\\sqrt{\\hat s_{t-1}}
    + \\varepsilon) + \\lambda \\theta_t\\big)`, with AdaBelief's centred second moment taken one step late.

    Recipe: ``chain(scale_by_acprop(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``, as
    ``optax.contrib.acprop`` (the decay is multiplied by the learning rate; the authors' code decays
    decoupled, by :math:`1 - \\alpha\\lambda`, before the step, the same to first order).

    Differences from ``optax.contrib.acprop``: the second moment is centred on the updated mean
    :math:`m_t` (the paper, the authors' code and Optax's own docstring), where Optax's code uses
    :math:`m_{t-1}`; see :func:`jaxopt_zoo.scale_by_acprop`. ``mu_dtype`` and ``nu_dtype`` are additions.

    Args:
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added to the second moment every step.

    Example:
        >>> from jaxopt_zoo.optimizers.adam_relatives import acprop
        >>> tx = acprop(1e-3, weight_decay=1e-2)

    References:
        Zhuang, Ding, Tang, Dvornek, Tatikonda & Duncan, "Momentum Centering and Asynchronous Update for
        Adaptive Gradient Methods", NeurIPS 2021 (arXiv:2110.05454).
    """
    owner = "acprop"
    validation.learning_rate(owner, learning_rate)
    validation.belief_b1(owner, b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_acprop(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
