"""Numerically safe scalars and small distributions that optimizers and their users share.

Each is Optax's function of the same name (``optax.safe_norm``, ...), with the
same arguments and values.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import jax.scipy.stats.norm

from jaxopt_zoo.base import safe_increment
from jaxopt_zoo.tree import abs_sq

__all__ = ["MultiNormalDiagFromLogScale", "multi_normal", "safe_int32_increment", "safe_norm", "safe_root_mean_squares"]

safe_int32_increment = safe_increment  # Optax's older name for the saturating step counter


def safe_norm(
    x: jax.typing.ArrayLike,
    min_norm: jax.typing.ArrayLike,
    ord: int | float | str | None = None,  # noqa: A002  (jnp.linalg.norm's and Optax's name)
    axis: int | tuple[int, ...] | None = None,
    keepdims: bool = False,
) -> jax.Array:
    """:math:`\\max(\\|x\\|, n_{min})` whose gradient is 0, not NaN, where :math:`\\|x\\| \\le n_{min}`.

    Args:
        x: the array whose norm is taken.
        min_norm: :math:`n_{min}`, the least value returned.
        ord: the norm's order, as :func:`jax.numpy.linalg.norm` takes it (``None``: the Euclidean norm, of all
            elements without ``axis``).
        axis: the axes the norm is taken over, as :func:`jax.numpy.linalg.norm` takes them.
        keepdims: keep the reduced axes, with size 1.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxopt_zoo as jz
        >>> float(jz.safe_norm(jnp.asarray([3.0, 4.0]), 1.0)), float(jz.safe_norm(jnp.zeros(2), 1.0))
        (5.0, 1.0)
        >>> jax.grad(lambda x: jz.safe_norm(x, 1e-6))(jnp.zeros(2))
        Array([0., 0.], dtype=float32)
    """
    x = jnp.asarray(x)
    small = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=True) <= min_norm
    # Both branches of a where are differentiated, and the norm of 0 has a NaN
    # gradient: where the bound wins, take the norm of a harmless stand-in.
    norm = jnp.linalg.norm(jnp.where(small, jnp.ones_like(x), x), ord=ord, axis=axis, keepdims=keepdims)
    return jnp.where(small if keepdims else jnp.squeeze(small, axis), min_norm, norm)


def safe_root_mean_squares(x: jax.typing.ArrayLike, min_rms: jax.typing.ArrayLike) -> jax.Array:
    """:math:`\\max(\\sqrt{\\mathrm{mean}(|x|^2)}, r_{min})` whose gradient is 0, not NaN, where the bound wins.

    Args:
        x: the array, whose elements are all averaged.
        min_rms: :math:`r_{min}`, the least value returned.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxopt_zoo as jz
        >>> float(jz.safe_root_mean_squares(jnp.asarray([1.0, -1.0]), 1e-3))
        1.0
    """
    x = jnp.asarray(x)
    small = jnp.sqrt(jnp.mean(abs_sq(x))) <= min_rms
    return jnp.where(small, min_rms, jnp.sqrt(jnp.mean(abs_sq(jnp.where(small, jnp.ones_like(x), x)))))


class MultiNormalDiagFromLogScale:
    """A normal distribution with diagonal covariance, parametrised by its mean and the log of its scale.

    ``params`` are ``[loc, log_scale]``, the arrays a gradient estimator
    differentiates; ``sample(shape, key)`` draws ``shape + param_shape`` values;
    ``log_prob(x)`` sums the log-density over the parameter axes.

    Args:
        loc: the mean, an array (broadcast with ``log_scale`` to the parameter shape).
        log_scale: the natural log of the standard deviation, an array broadcastable with ``loc``.
    """

    def __init__(self, loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike):
        self._mean = jnp.asarray(loc)
        self._log_scale = jnp.asarray(log_scale)
        self._scale = jnp.exp(self._log_scale)
        self._param_shape = jax.lax.broadcast_shapes(self._mean.shape, self._scale.shape)

    def sample(self, shape: Sequence[int], key: jax.Array) -> jax.Array:
        return jax.random.normal(key, tuple(shape) + self._param_shape) * self._scale + self._mean

    def log_prob(self, x: jax.typing.ArrayLike) -> jax.Array:
        per_element = jax.scipy.stats.norm.logpdf(x, loc=self._mean, scale=self._scale)
        return jnp.sum(per_element, axis=tuple(range(-len(self._param_shape), 0)))

    @property
    def log_scale(self) -> jax.Array:
        return self._log_scale

    @property
    def params(self) -> list[jax.Array]:
        return [self._mean, self._log_scale]


def multi_normal(loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike) -> MultiNormalDiagFromLogScale:
    """The diagonal normal distribution with mean ``loc`` and scale ``exp(log_scale)``.

    Args:
        loc: the mean of each coordinate.
        log_scale: the log of each coordinate's standard deviation, broadcast with ``loc`` to the parameter shape.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxopt_zoo as jz
        >>> dist = jz.multi_normal(jnp.zeros(3), jnp.zeros(3))
        >>> dist.sample((5,), jax.random.key(0)).shape
        (5, 3)
        >>> round(float(dist.log_prob(jnp.zeros(3))), 4)  # 3 * log(1 / sqrt(2 pi))
        -2.7568
    """
    return MultiNormalDiagFromLogScale(loc, log_scale)
