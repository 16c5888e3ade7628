"""The classic optimizers: SGD (momentum, Nesterov), Adagrad, Adadelta, RMSprop, the Adam family, LARS and LAMB."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.docstrings import args_entries, document_args
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, identity, init_only
from jaxopt_zoo.combine import chain, masked
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.transforms import (
    add_decayed_weights,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
    scale_by_trust_ratio,
    trace,
)
from jaxopt_zoo.transforms.adaptive import check_rms_options

# Options of several aliases whose transformations name them otherwise, or describe them in their own terms.
_ALIAS_ARGUMENTS = {
    "weight_decay_mask": "where the weight decay applies: the ``mask`` of :func:`~jaxopt_zoo.add_decayed_weights`\n"
                         "(``None`` or ``True``: everywhere).",
    "trust_ratio_mask": "where the trust ratio applies: the ``mask`` of :func:`~jaxopt_zoo.masked` (``True``:\n"
                        "everywhere); elsewhere the update is not rescaled.",
    "nesterov": "use Nesterov momentum: step by the momentum's input plus :math:`\\mu b_t` (see\n"
                ":func:`~jaxopt_zoo.trace`).",
}


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    .. math::

        b_t = g_t + \\mu b_{t-1}, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\cdot
        \\begin{cases} g_t + \\mu b_t & \\text{nesterov} \\\\ b_t & \\text{momentum} \\\\
        g_t & \\text{no momentum.} \\end{cases}

    Recipe: ``chain(trace(momentum, nesterov, accumulator_dtype=accumulator_dtype),
    scale_by_learning_rate(learning_rate))``. Deviations from Optax: ``nesterov=True``
    without a ``momentum`` raises (Optax ignores it silently); ``accumulator_dtype``
    may also be ``Blockwise8Bit()`` (8-bit momentum), and is checked even without a momentum.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        momentum: :math:`\\mu \\ge 0`; ``None`` for plain SGD.
        nesterov: use Nesterov momentum.
        accumulator_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.sgd(0.1, momentum=0.9, nesterov=True)
        >>> tx_8bit = jz.sgd(0.1, momentum=0.9, accumulator_dtype=jz.Blockwise8Bit())

    References:
        Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """
    validation.learning_rate("sgd", learning_rate)
    if momentum is not None:
        validation.non_negative("sgd", "momentum", momentum)
    validation.nesterov_needs_momentum("sgd", momentum, nesterov)
    validation.state_dtypes("sgd", accumulator_dtype=accumulator_dtype)
    if momentum is None:
        return chain(identity(), scale_by_learning_rate(learning_rate))
    return chain(
        trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_adam, scale_by_learning_rate)
def adam(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = False,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adam (Kingma & Ba 2015):
    :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\hat m_t / (\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon)`.

    The moments and their bias correction are those of :func:`jaxopt_zoo.scale_by_adam`.
    Recipe: ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
    scale_by_learning_rate(learning_rate))``. ``nu_dtype`` is an addition to Optax, and
    either storage may be ``Blockwise8Bit()`` (8-bit moments, see :mod:`jaxopt_zoo.quantization`).

    Args:
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adam(1e-3)

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """
    validation.learning_rate("adam", learning_rate)
    validation.adam_options("adam", b1, b2, eps, eps_root, nesterov)
    validation.state_dtypes("adam", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_adam, add_decayed_weights, scale_by_learning_rate)
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    .. math::

        \\theta_{t+1} = \\theta_t - \\alpha_t \\big(\\hat m_t / (\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon)
        + \\lambda \\theta_t\\big)

    The decay is multiplied by the learning rate, as in Optax (PyTorch's
    ``AdamW`` does the same: :math:`\\theta \\leftarrow \\theta - \\alpha\\lambda\\theta`).
    Recipe: ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.
    ``nu_dtype`` is an addition to Optax, and either storage may be ``Blockwise8Bit()``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adamw(1e-3, weight_decay=1e-2)
        >>> tx_8bit = jz.adamw(1e-3, mu_dtype=jz.Blockwise8Bit(), nu_dtype=jz.Blockwise8Bit())

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    validation.learning_rate("adamw", learning_rate)
    validation.adam_options("adamw", b1, b2, eps, eps_root, nesterov)
    validation.scalar_or_schedule("adamw", "weight_decay", weight_decay)
    validation.state_dtypes("adamw", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@document_args(adam)
def nadam(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = True,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """NAdam (Dozat 2016): :func:`adam` with Nesterov momentum, in Optax's form.

    .. math::

        \\hat m_t = \\beta_1 m_t / (1 - \\beta_1^{t+1}) + (1 - \\beta_1) g_t / (1 - \\beta_1^t), \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\hat m_t / (\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon)

    Recipe: ``adam(..., nesterov=True)``. As in Optax (a ``partial`` of ``adam``
    there), ``nesterov=False`` gives back plain Adam. ``nu_dtype`` is an addition
    to Optax, and either storage may be ``Blockwise8Bit()``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.nadam(1e-3)

    References:
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
    """
    validation.learning_rate("nadam", learning_rate)
    validation.adam_options("nadam", b1, b2, eps, eps_root, nesterov)
    validation.state_dtypes("nadam", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype)


@document_args(adamw)
def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """NAdamW: :func:`nadam` with decoupled weight decay, as :func:`adamw` adds it to :func:`adam`.

    Recipe: ``adamw(..., nesterov=True)``. ``nu_dtype`` is an addition to Optax,
    and either storage may be ``Blockwise8Bit()``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.nadamw(1e-3, weight_decay=1e-2)

    References:
        Dozat 2016; Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    validation.learning_rate("nadamw", learning_rate)
    validation.adam_options("nadamw", b1, b2, eps, eps_root, nesterov)
    validation.scalar_or_schedule("nadamw", "weight_decay", weight_decay)
    validation.state_dtypes("nadamw", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return adamw(
        learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=nesterov, nu_dtype=nu_dtype
    )


@document_args(scale_by_amsgrad, scale_by_learning_rate)
def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """AMSGrad (Reddi et al. 2018) in Optax's convention: the maximum is over bias-corrected :math:`v_t`.

    :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\hat m_t
    / (\\sqrt{\\hat v^{\\max}_t + \\bar\\varepsilon} + \\varepsilon)`,
    :math:`\\hat v^{\\max}_t = \\max(\\hat v^{\\max}_{t-1}, v_t / (1 - \\beta_2^t))`. For PyTorch's
    convention use :func:`jaxopt_zoo.torch.adam` with ``amsgrad=True``.
    Recipe: ``chain(scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, bias_correction_mu,
    bias_correction_nu, nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))``.
    ``nu_dtype`` is an addition to Optax, and either storage may be ``Blockwise8Bit()``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.amsgrad(1e-3)

    References:
        Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018.
    """
    validation.learning_rate("amsgrad", learning_rate)
    validation.adam_options("amsgrad", b1, b2, eps, eps_root, False)
    validation.flag("amsgrad", "bias_correction_mu", bias_correction_mu)
    validation.flag("amsgrad", "bias_correction_nu", bias_correction_nu)
    validation.state_dtypes("amsgrad", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@init_only("initial_accumulator_value")
@document_args(scale_by_rss, scale_by_learning_rate)
def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adagrad (Duchi et al. 2011):
    :math:`\\theta_{t+1} = \\theta_t - \\alpha_t g_t / \\sqrt{a + \\sum_{s \\le t} g_s^2 + \\varepsilon}`.

    Recipe: ``chain(scale_by_rss(initial_accumulator_value, eps, accumulator_dtype=accumulator_dtype),
    scale_by_learning_rate(learning_rate))``. ``accumulator_dtype`` is an addition to Optax.
    For PyTorch's form (eps outside the root, ``lr_decay``) see :func:`jaxopt_zoo.torch.adagrad`.

    Args:
        accumulator_dtype: storage of the sum of squares: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adagrad(0.1)

    References:
        Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
        Optimization", JMLR 2011.
    """
    validation.learning_rate("adagrad", learning_rate)
    validation.non_negative("adagrad", "initial_accumulator_value", initial_accumulator_value)
    validation.epsilon("adagrad", "eps", eps)
    validation.state_dtypes("adagrad", accumulator_dtype=accumulator_dtype)
    return chain(
        scale_by_rss(initial_accumulator_value, eps, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


@document_args(scale_by_adadelta, add_decayed_weights, scale_by_learning_rate, _ALIAS_ARGUMENTS)
def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | Callable[[Params], Any] | None = None,
    *,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adadelta (Zeiler 2012): :math:`\\theta_{t+1} = \\theta_t - \\alpha_t u_t` with :math:`u_t` from
    :func:`scale_by_adadelta`.

    The weight decay is added to the gradient first (L2, as in Optax and PyTorch).
    Recipe: ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_adadelta(rho, eps, accumulator_dtype=accumulator_dtype), scale_by_learning_rate(learning_rate))``.

    ``learning_rate=None`` is the paper's rate of 1, as for every optimizer here
    (see :func:`~jaxopt_zoo.transforms.scale_by_learning_rate`).
    ``accumulator_dtype`` is an addition to Optax. ``eps`` must be positive:
    Optax accepts ``eps=0``, with which every step is 0 (see :func:`scale_by_adadelta`).
    Deviation from Optax for complex params: :math:`g^2` is :math:`|g|^2`, so both running means
    are real (Optax squares the complex number, so its "mean square" is complex).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adadelta()   # the paper's rule, no learning rate to tune

    References:
        Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    validation.learning_rate("adadelta", learning_rate)
    validation.fraction("adadelta", "rho", rho)
    validation.epsilon("adadelta", "eps", eps, allow_zero=False, why_positive=" (with eps=0 every step is 0: the mean square of the steps starts at 0 and stays there)")
    validation.scalar_or_schedule("adadelta", "weight_decay", weight_decay)
    validation.state_dtypes("adadelta", accumulator_dtype=accumulator_dtype)
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_adadelta(rho, eps, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


@init_only("initial_scale")
@document_args(scale_by_rms, scale_by_learning_rate, _ALIAS_ARGUMENTS)
def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    nu_dtype: StateDtype = None,
    mu_dtype: StateDtype = None,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """RMSprop (Tieleman & Hinton 2012), plain or centered (Graves 2013), with optional momentum.

    .. math::

        \\theta_{t+1} = \\theta_t - b_t, \\qquad b_t = \\mu b_{t-1} + \\alpha_t \\, u_t

    with :math:`u_t` from :func:`scale_by_rms` (or :func:`scale_by_stddev` when
    ``centered``) and :math:`\\mu = 0` without momentum. As in Optax the
    learning rate is applied before the momentum; PyTorch applies it after
    (see :func:`jaxopt_zoo.torch.rmsprop`), which differs under a schedule.
    Recipe: ``chain(scaling, scale_by_learning_rate(learning_rate), trace(momentum, nesterov,
    accumulator_dtype=accumulator_dtype))`` with ``scaling`` either ``scale_by_rms(decay, eps,
    initial_scale, eps_in_sqrt, bias_correction, nu_dtype=nu_dtype)`` or, when ``centered``,
    ``scale_by_stddev(..., mu_dtype=mu_dtype, nu_dtype=nu_dtype)``. ``nu_dtype``, ``mu_dtype``
    and ``accumulator_dtype`` are additions to Optax; each is checked even where the recipe
    does not use it. Deviation from Optax: ``nesterov=True`` without a ``momentum`` raises
    (Optax ignores it silently), as in :func:`sgd`.

    Args:
        centered: scale by :func:`scale_by_stddev` (centered RMSprop) instead of :func:`scale_by_rms`.
        momentum: :math:`\\mu \\ge 0`, the momentum applied after the learning rate; ``None`` for none.
        nu_dtype: storage of the mean square: a storage (see :mod:`jaxopt_zoo.storage`).
        mu_dtype: storage of the mean (``centered`` only): a storage (see :mod:`jaxopt_zoo.storage`); in low
            precision the centering magnifies its rounding (:func:`scale_by_stddev`).
        accumulator_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.rmsprop(1e-3, centered=True, momentum=0.9)

    References:
        Tieleman & Hinton, "Lecture 6.5 - RMSProp", 2012. Graves, "Generating Sequences With
        Recurrent Neural Networks", 2013.
    """
    validation.learning_rate("rmsprop", learning_rate)
    check_rms_options("rmsprop", decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    if momentum is not None:
        validation.non_negative("rmsprop", "momentum", momentum)
    validation.flag("rmsprop", "centered", centered)
    validation.nesterov_needs_momentum("rmsprop", momentum, nesterov)
    validation.state_dtypes("rmsprop", nu_dtype=nu_dtype, mu_dtype=mu_dtype, accumulator_dtype=accumulator_dtype)
    options = (decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    if centered:
        scaling = scale_by_stddev(*options, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    else:
        scaling = scale_by_rms(*options, nu_dtype=nu_dtype)
    return chain(
        scaling,
        scale_by_learning_rate(learning_rate),
        identity() if momentum is None else trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
    )


@document_args(add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate, _ALIAS_ARGUMENTS, trace,
               momentum=args_entries(trace).get("decay", ""))  # no docstrings under python -OO
def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | Callable[[Params], Any] = True,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 0.0,
    trust_ratio_mask: Any | Callable[[Params], Any] = True,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    *,
    axis_name: AxisName = None,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """LARS (You et al. 2017): SGD with momentum on layer-wise trust-ratio-scaled steps.

    For each parameter leaf :math:`\\theta` (with :math:`\\lambda` the weight decay, :math:`\\eta` the trust
    coefficient):

    .. math::

        d_t = g_t + \\lambda \\theta_t, \\qquad
        b_t = \\mu b_{t-1} + \\alpha_t \\frac{\\eta \\|\\theta_t\\|}{\\|d_t\\| + \\varepsilon} d_t, \\qquad
        \\theta_{t+1} = \\theta_t - b_t.

    Recipe: ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
    masked(scale_by_trust_ratio(trust_coefficient=..., eps=...), trust_ratio_mask),
    scale_by_learning_rate(learning_rate), trace(momentum, nesterov, accumulator_dtype=accumulator_dtype))``.
    ``axis_name`` (an addition to Optax) makes the norms exact inside
    ``shard_map``; see :func:`scale_by_trust_ratio`. ``accumulator_dtype`` is an addition to Optax.

    Args:
        accumulator_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.lars(0.1, weight_decay=1e-4)

    References:
        You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017.
    """
    owner = "lars"
    validation.learning_rate(owner, learning_rate)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.non_negative(owner, "trust_coefficient", trust_coefficient)
    validation.non_negative(owner, "eps", eps)
    validation.non_negative(owner, "momentum", momentum)
    validation.flag(owner, "nesterov", nesterov)
    validation.axis_name(owner, axis_name)
    validation.state_dtypes(owner, accumulator_dtype=accumulator_dtype)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps, axis_name=axis_name), trust_ratio_mask),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
    )


@document_args(scale_by_adam, add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate)
def lamb(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    axis_name: AxisName = None,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """LAMB (You et al. 2020): Adam steps rescaled layer-wise by a trust ratio.

    .. math::

        r_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon} + \\lambda \\theta_t, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\frac{\\|\\theta_t\\|}{\\|r_t\\|} r_t

    per parameter leaf (the ratio is 1 where either norm is zero). For the
    variant of widely used LAMB code, build it from the pieces:
    ``chain(scale_by_adam(b1, b2, eps, bias_correction=False), add_decayed_weights(wd),
    scale_by_trust_ratio(max_param_norm=10.0), scale_by_learning_rate(lr))``.
    Recipe: ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_trust_ratio(axis_name=axis_name),
    scale_by_learning_rate(learning_rate))``.
    ``axis_name`` (an addition to Optax) makes the norms exact inside
    ``shard_map``; see :func:`scale_by_trust_ratio`. ``mu_dtype`` and ``nu_dtype``
    are additions to Optax.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.lamb(1e-3, weight_decay=1e-2)

    References:
        You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020.
    """
    validation.learning_rate("lamb", learning_rate)
    validation.adam_options("lamb", b1, b2, eps, eps_root, False)
    validation.scalar_or_schedule("lamb", "weight_decay", weight_decay)
    validation.axis_name("lamb", axis_name)
    validation.state_dtypes("lamb", mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(axis_name=axis_name),
        scale_by_learning_rate(learning_rate),
    )
