"""Gradient noise: add_noise (Neelakantan et al., 2015).

Annealed Gaussian noise is added to every update; its variance decays as a
power of the step count. The state holds the step count and a PRNG key, split
once per step exactly as Optax splits it, so the draws are Optax's bit for bit.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.add_noise(0.01, 0.55, key=0), jz.scale_by_learning_rate(1e-2))
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, expects_state, init_only, safe_increment, zero_count
from jaxopt_zoo.sharding import require_whole_arrays

__all__ = ["AddNoiseState", "add_noise"]


def _is_typed_key(key) -> bool:
    return isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def resolve_key(owner: str, key, seed):
    """The key a random transformation starts from, checked: ``key`` (an integer seed or a typed key), or Optax's
    deprecated ``seed`` (with a warning), or seed 0 when neither is given (with a warning, as Optax). Returned as a
    function that ``init`` calls: an integer seed becomes a key array only there, once per ``init``."""
    if seed is not None:
        warnings.warn(f'{owner}: "seed" is deprecated (as in Optax); pass key.', DeprecationWarning, stacklevel=3)
        if key is not None:
            raise ValueError(f"{owner}: give key or seed, not both (got key={key!r}, seed={seed!r}).")
        _check_seed(owner, "seed", seed)
        key = seed
    if key is None:
        warnings.warn(f"{owner}: no key given; using seed 0, as Optax does. Pass key= for other draws.", stacklevel=3)
        key = 0
    _check_seed(owner, "key", key)
    # A typed key is copied: a state holding the caller's own key would lose it to a donated step, and the next
    # init would hand out the deleted buffer.
    return lambda: jnp.array(key, copy=True) if _is_typed_key(key) else jax.random.key(key)


def _check_seed(owner: str, name: str, value) -> None:
    # An integer seed JAX takes exactly (one that it would truncate collides with another's draws), or a typed key.
    validation.random_seed(owner, name, value)


def _noise_like(key: jax.Array, updates):
    """Standard normal noise shaped like each non-``None`` update, one key per leaf split from ``key``.

    The keys are ``jax.random.split(key, n)`` over the ``n`` array leaves in tree
    order, and each leaf draws in its own dtype and sharding, as ``optax.tree.random_like``.
    """
    leaves, treedef = jax.tree.flatten(updates)  # None is an empty subtree here: it gets no key
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, x.shape, x.dtype, out_sharding=jax.typeof(x).sharding) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noise)


class AddNoiseState(NamedTuple):
    """The step count (for the annealing) and the PRNG key the next step splits."""

    count: jax.Array
    rng_key: jax.Array


@init_only("key", "seed")
def add_noise(
    eta: jax.typing.ArrayLike,
    gamma: jax.typing.ArrayLike,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    """Annealed Gaussian gradient noise (Neelakantan et al. 2015).

    .. math::

        u_t = g_t + \\sigma_t \\, \\xi_t, \\qquad \\xi_t \\sim \\mathcal{N}(0, I), \\qquad
        \\sigma_t^2 = \\frac{\\eta}{t^{\\gamma}}, \\quad t = 1, 2, \\dots

    Each step splits the state's key into the next key and a sampling key, and
    the sampling key into one key per update leaf (in tree order), which draws
    standard normal noise in the leaf's dtype. The paper writes
    :math:`(1 + t)^{\\gamma}` with :math:`t` counted from 0: the same schedule.

    Numerically identical to ``optax.add_noise``, draws included (same key, same
    splits). ``key`` is an integer seed or a key from ``jax.random.key``;
    ``seed`` is Optax's deprecated spelling of an integer ``key``, and no key at
    all means seed 0 with a warning, as in Optax. Deviations from Optax: bad
    ``eta``, ``gamma`` or ``key`` raise when the transformation is built, an
    integer ``key`` outside :math:`[0, 2^{32} - 1]` too (without ``jax_enable_x64``
    JAX keeps its low 32 bits, so ``key=2**32`` would draw what ``key=0`` draws);
    integer and bool updates are made float32 before the noise is added (Optax
    fails: ``jax.random.normal`` draws no integers); a
    ``None`` update stays ``None`` and draws no key (as Optax's tree utilities
    do); inside ``shard_map`` a leaf sharded over the manual axes raises
    (each shard would draw its own copy of the same noise instead of its
    part of the whole array's); each ``init`` gets its own copy of a typed
    key (Optax's state holds the caller's key, which a donated step deletes:
    the next ``init`` then fails).

    Args:
        eta: :math:`\\eta \\ge 0`, the variance of the noise at the first step.
        gamma: :math:`\\gamma \\ge 0`, the decay exponent of the variance.
        key: an integer seed (in :math:`[0, 2^{32} - 1]` without ``jax_enable_x64``) or a ``jax.random.key``.
        seed: deprecated: an integer seed; give ``key`` instead.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.add_noise(eta=0.01, gamma=0.55, key=0)
        >>> state = tx.init(jnp.zeros(3))
        >>> updates, state = tx.update(jnp.ones(3), state)
        >>> bool(jnp.all(jnp.abs(updates - 1.0) < 0.5)), int(state.count)
        (True, 1)

    References:
        Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks", 2015 (arXiv:1511.06807).
    """
    owner = "add_noise"
    validation.non_negative(owner, "eta", eta)
    validation.non_negative(owner, "gamma", gamma)
    initial_key = resolve_key(owner, key, seed)

    def init(params):
        del params
        return AddNoiseState(zero_count(), initial_key())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        require_whole_arrays(owner, updates, operation="each shard would draw its own copy of the same noise")
        # Integer and bool updates in float32 (as jz.adam's): they cannot take Gaussian noise, nor keep it untruncated.
        updates = tree.map_updates(tree.as_inexact, updates)
        count = safe_increment(state.count)
        std = jnp.sqrt(eta / count**gamma)
        next_key, sample_key = jax.random.split(state.rng_key)
        noise = _noise_like(sample_key, updates)
        return tree.map_updates(lambda g, xi: g + std * xi, updates, noise), AddNoiseState(count, next_key)

    return expects_state(owner, GradientTransformation(init, update), AddNoiseState)
