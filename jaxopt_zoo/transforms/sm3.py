"""SM3 (Anil et al. 2019): an Adagrad-like second moment kept as one accumulator per slice of each axis.

For a param of shape :math:`(n_1, \\ldots, n_k)` SM3 keeps :math:`n_1 + \\cdots + n_k`
numbers instead of :math:`n_1 \\cdots n_k`: for each axis, the largest accumulated
squared gradient in each slice along it. An entry's second moment is the smallest
of the accumulators of the slices through it, an upper bound of its own Adagrad sum.
Its parts, the accumulators ``mu`` and the momentum ``nu``, take storage options.

    >>> import jaxopt_zoo as jz
    >>> from jaxopt_zoo.transforms.sm3 import scale_by_sm3
    >>> tx = jz.chain(scale_by_sm3(0.9), jz.scale(-0.1))
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state
from jaxopt_zoo.sharding import AxisName, split_axes
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = ["ScaleBySM3State", "scale_by_sm3"]


def _other_axes(axis: int, ndim: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a != axis)


def _along(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    # The shape that broadcasts an accumulator of `axis` against the whole param: 1 on every other axis.
    return tuple(n if a == axis else 1 for a, n in enumerate(shape))


class ScaleBySM3State(NamedTuple):
    """The accumulators ``mu`` and the momentum ``nu``, shaped like the params; ``count``: see
    :func:`~jaxopt_zoo.storage.with_storage`. ``mu`` is a flat tuple with one entry per param leaf, in
    ``jax.tree.leaves(params)`` order (``None`` params included, as ``()``), each entry a tuple of
    accumulators: for a scalar or a vector one accumulator shaped like it, for more dims one vector per axis.
    Kept outside the params' tree so that Flax NNX, which wraps each param leaf in a Variable, keeps their
    tuples (Optax's per-param lists become ``nnx.State`` after the first update there)."""

    mu: tuple[tuple[jax.Array, ...], ...]
    nu: Updates
    count: jax.Array | None = None


def scale_by_sm3(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """SM3-II (Anil et al. 2019) with the cover of each axis's slices, and momentum, as Optax has it.

    For a param of :math:`k \\ge 2` dims, with :math:`\\mu^{(a)}` the accumulator vector of axis
    :math:`a` and :math:`c = 1` if :math:`\\beta_2 = 1` else :math:`1 - \\beta_2`:

    .. math::

        \\nu_t(i) &= c \\, g_t(i)^2 + \\beta_2 \\min_a \\mu^{(a)}_{t-1}(i_a), \\qquad
        \\mu^{(a)}_t(r) = \\max_{i: i_a = r} \\nu_t(i), \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) \\, g_t / \\sqrt{\\nu_t + \\varepsilon}
        \\ \\ (0 \\text{ where } \\nu_t = 0), \\qquad u_t = m_t;

    for a scalar or a vector :math:`\\nu_t = c \\, g_t^2 + \\beta_2 \\nu_{t-1}` entrywise (Adagrad's
    sum when :math:`\\beta_2 = 1`). The update is the momentum itself.

    Numerically identical to ``optax.scale_by_sm3`` in float32, with the same state leaves in the same order.
    Deviations from Optax: ``mu`` is a flat tuple outside the params' tree (see :class:`ScaleBySM3State`; Optax's
    is a params-shaped tree of lists, which inside ``flax.nnx.Optimizer`` become ``nnx.State`` objects after
    the first update: a jitted step compiles twice and a checkpoint stops matching a fresh optimizer's); a scalar param works (its accumulator is a one-element list holding a
    0-d array; Optax raises ``IndexError``); an eager ``init`` on params sharded over a mesh with Auto axes
    lays each accumulator out along its axis, as a jitted step returns it (under ``nnx.Optimizer`` Optax's
    raises); a ``None`` update keeps its state; a float16 param's
    state is float32 (see :func:`jaxopt_zoo.tree.moments_like`). ``mu_dtype``, ``nu_dtype`` and
    ``axis_name`` are additions (named after the state's fields: here ``mu`` is the second moment).
    Complex params raise at ``init``, as in Optax; :func:`~jaxopt_zoo.split_real_and_imaginary`
    runs it on their real and imaginary parts.

    Args:
        b1: :math:`\\beta_1 \\in [0, 1)`, the decay of the momentum.
        b2: :math:`\\beta_2 \\in [0, 1]`, the decay of the accumulators (1: none, the paper's rule).
        eps: :math:`\\varepsilon \\ge 0`, added under the root.
        mu_dtype: storage of the accumulators: a storage (see :mod:`jaxopt_zoo.storage`); they are
            vectors per axis, so a dtype is usually enough (a vector param's is as large as it).
        nu_dtype: storage of the momentum, likewise.
        axis_name: inside ``shard_map``, the mesh axes the gradients may be sharded over: each slice's
            maximum is taken over the shards it is split across (lay the state out with
            ``jz.state_shardings``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.transforms.sm3 import scale_by_sm3
        >>> tx = scale_by_sm3(b1=0.0)
        >>> g = jnp.array([[1.0, -2.0], [3.0, 0.0]])
        >>> state = tx.init(g)
        >>> updates, state = tx.update(g, state)
        >>> state.mu  # of the one param: the largest g^2 of each row, then of each column
        ((Array([4., 9.], dtype=float32), Array([9., 4.], dtype=float32)),)

    References:
        Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive Optimization", NeurIPS 2019.
    """
    owner = "scale_by_sm3"
    validation.decay_rate(owner, "b1", b1)
    beta2 = validation.fraction(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)
    axis_name = validation.axis_name(owner, axis_name)
    # The weight of g^2: formed in Python as Optax does (1 - 0.9 there is not float32's 1 - 0.9).
    new_weight = (1.0 if beta2 == 1.0 else 1.0 - b2) if beta2 is not None else jnp.where(b2 == 1.0, 1.0, 1.0 - b2)

    def accumulators(p):
        validation.refuse_complex(owner, p, "as in Optax")
        dtype = tree.moment_dtype(jnp.result_type(p))
        if jnp.ndim(p) == 0:
            return (jnp.zeros((), dtype),)
        # Reduced from the param abstractly, so that each accumulator keeps the sharding of its axis.
        slices = lambda a: jax.eval_shape(lambda x: jnp.sum(x, axis=_other_axes(a, jnp.ndim(x))), p)
        sharding = getattr(p, "sharding", None)
        if not isinstance(p, jax.core.Tracer) and isinstance(sharding, NamedSharding):
            # A concrete param (an eager init, as nnx.Optimizer's) reduces to a replicated shape where any mesh axis
            # is Auto; a jitted step returned each accumulator split like its axis, and compiled a second time. The
            # spec as a step writes it: without a trailing None on Auto axes, one entry per dimension otherwise.
            spec = (*sharding.spec, *[None] * jnp.ndim(p))
            entries = lambda a: [spec[a]] if spec[a] is not None or sharding.mesh.explicit_axes else []
            along = lambda a: NamedSharding(sharding.mesh, PartitionSpec(*entries(a)))
            return tuple(jnp.zeros(jnp.shape(p)[a], dtype, device=along(a)) for a in range(jnp.ndim(p)))
        return tuple(jnp.zeros_like(slices(a), dtype=dtype) for a in range(jnp.ndim(p)))

    def init(params):
        if tree.is_params_placeholder(params):  # tree.map_params: the accumulators are per-parameter parts too
            return ScaleBySM3State(params, tree.moments_like(params))
        leaves = jax.tree.leaves(params, is_leaf=tree.is_none)  # flat, outside the params' tree (see the state)
        return ScaleBySM3State(tuple(() if p is None else accumulators(p) for p in leaves), tree.moments_like(params))

    def second_moment(g, mu):
        # v_t: the new squared gradient on top of the smallest accumulator of the slices through each entry.
        if jnp.ndim(g) < 2:
            previous = mu[0]
        else:
            previous = functools.reduce(jnp.minimum, [jnp.reshape(m, _along(jnp.shape(g), a)) for a, m in enumerate(mu)])
        return new_weight * tree.abs_sq(g) + b2 * previous

    def slice_maxima(g, v, mu):
        if jnp.ndim(g) < 2:
            return (v,)
        maxima = []
        for a, m in enumerate(mu):
            split = split_axes(owner, g, m, axis_name)  # the mesh axes this slice is split across
            local = jnp.max(v, axis=_other_axes(a, jnp.ndim(g)), initial=0.0 if v.size == 0 else None)  # v >= 0
            maxima.append(jax.lax.pmax(local, split) if split else local)
        return tuple(maxima)

    def leaf(g, mu, m):
        if g is None:  # a frozen param: its state is handed back as it came (with_storage keeps it bit for bit)
            return m, mu
        shape = jnp.shape(g)
        expected = [shape] if len(shape) < 2 else [(n,) for n in shape]
        if [jnp.shape(x) for x in mu] != expected:
            raise ValueError(
                f"{owner}: a gradient of shape {shape} needs accumulators of shapes {expected}, the state has "
                f"{[jnp.shape(x) for x in mu]}. Pass updates shaped like the params the state was initialised with."
            )
        v = second_moment(g, mu)
        scaled = g * jnp.where(v > 0, jax.lax.rsqrt(v + eps), 0.0)
        return (1 - b1) * scaled + b1 * m, slice_maxima(g, v, mu)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.nu, "the momentum (state.nu)")
        grads, structure = jax.tree.flatten(updates, is_leaf=tree.is_none)
        if len(grads) != len(state.mu):
            raise ValueError(f"{owner}: the updates have {len(grads)} leaves but the state has accumulators for "
                             f"{len(state.mu)}; pass updates shaped like the params given to init.")
        momenta = structure.flatten_up_to(state.nu)
        momentum, mu = zip(*map(leaf, grads, state.mu, momenta)) if grads else ((), ())
        new_updates = jax.tree.unflatten(structure, [None if g is None else m for g, m in zip(grads, momentum)])
        return new_updates, state._replace(mu=tuple(mu), nu=jax.tree.unflatten(structure, momentum))

    tx = with_storage(GradientTransformation(init, update), signed={"nu": nu_dtype}, non_negative={"mu": mu_dtype})
    return expects_state(owner, tx, ScaleBySM3State)
