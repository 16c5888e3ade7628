"""PSGD-Kron (Li 2015, 2022): a Kronecker-factored preconditioner learned by its own stochastic fit.

Each param leaf of shape :math:`(d_1, \\dots, d_n)` gets one factor :math:`Q_k` per dimension: a
:math:`d_k \\times d_k` upper-triangular matrix, or a diagonal (a vector of :math:`d_k` numbers) for
large, unit or memory-saving dimensions; scalars get one scalar factor. The preconditioner is
:math:`P = Q^\\top Q` with :math:`Q = Q_1 \\otimes \\dots \\otimes Q_n`, applied mode by mode, and the
factors are fitted on a random subset of steps so that :math:`P` whitens the (momentum of the) gradient.
The fit runs inside a ``jax.lax.cond``: under ``jit`` the other steps do not pay for it.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_psgd_kron(key=0), jz.scale_by_learning_rate(1e-3))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    ScalarOrSchedule,
    StateMismatchError,
    Updates,
    expects_state,
    init_only,
    safe_increment,
    static_only,
    zero_count,
)
from jaxopt_zoo.sharding import (
    AxisName,
    check_partition_specs,
    gathered,
    leaf_specs,
    local_block,
    local_placements,
    whole_leaf,
)
from jaxopt_zoo.storage import StateDtype, resolve, with_storage
from jaxopt_zoo.transforms.kronecker import mode_product, stack_of_eyes
from jaxopt_zoo.transforms.noise import resolve_key

__all__ = ["ScaleByPsgdKronState", "precond_update_prob_schedule", "scale_by_psgd_kron"]

MEMORY_SAVE_MODES = (None, "one_diag", "smart_one_diag", "one_triu", "all_diag")
_RELATIVE_DAMPING = float(np.sqrt(np.finfo(np.float32).eps))  # psgd-jax's damping of the fitted input
_MAX_RMS = 1.1  # psgd-jax caps the RMS of each preconditioned leaf at 1.1
_HIGHEST = jax.lax.Precision.HIGHEST
Factors = tuple[jax.Array, ...]  # one param's Kronecker factors, one per dimension (one scalar for a scalar)


def precond_update_prob_schedule(
    max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001, flat_start: float = 500
) -> Any:
    """psgd-jax's schedule of the preconditioner update probability: flat, then an exponential decay to a floor.

    .. math::

        p(t) = \\min\\big(\\max\\big(p_{max}\\, e^{-\\lambda (t - t_0)},\\ p_{min}\\big),\\ p_{max}\\big)

    of the 0-based step count :math:`t`: 1 up to step 500 (501 steps), then decaying to 0.03 (reached near step
    4000) with the defaults, psgd-jax 0.2.9's. psgd-jax evaluates it at the 1-based step, so its decay starts one
    step later. heavyball 3.2.1's default is :math:`\\max(0.03, 0.999^{\\max(t - 1000, 0)})`
    (``precond_update_prob_schedule(decay=-np.log(0.999), flat_start=1000)`` here, up to that step).

    Args:
        max_prob: :math:`p_{max} \\in [0, 1]`, the probability up to step :math:`t_0`, and the ceiling after.
        min_prob: :math:`p_{min} \\in [0, 1]`, the floor the decay stops at.
        decay: :math:`\\lambda \\ge 0`, the rate of the exponential decay per step.
        flat_start: :math:`t_0 \\ge 0`, the step count from which the probability decays.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.precond_update_prob_schedule()
        >>> [round(float(schedule(count)), 4) for count in (0, 500, 1500, 10_000)]
        [1.0, 1.0, 0.3679, 0.03]
    """
    owner = "precond_update_prob_schedule"
    validation.fraction(owner, "max_prob", max_prob)
    validation.fraction(owner, "min_prob", min_prob)
    validation.non_negative(owner, "decay", decay)
    validation.non_negative(owner, "flat_start", flat_start)

    def schedule(count):
        return jnp.minimum(jnp.maximum(max_prob * jnp.exp(-decay * (count - flat_start)), min_prob), max_prob)

    return schedule


def _triangular_dims(shape: tuple[int, ...], max_size: int, min_ndim: int, mode: str | None) -> list[bool]:
    # Which dims get a dense upper-triangular factor (the others a diagonal one), as psgd-jax and heavyball choose.
    diagonal = [mode == "all_diag"] * len(shape)
    if shape and mode in ("one_diag", "smart_one_diag"):
        largest = len(shape) - 1 - int(np.argmax(shape[::-1]))  # the last of the largest dims
        ordered = sorted(shape)
        if mode == "one_diag" or (len(shape) > 1 and ordered[-1] > ordered[-2]):
            diagonal[largest] = True
    if shape and mode == "one_triu":
        diagonal = [True] * len(shape)
        diagonal[int(np.argmin(shape))] = False
    return [not (d or size == 1 or size > max_size or len(shape) < min_ndim) for size, d in zip(shape, diagonal)]


def _along(x: jax.Array, q: jax.Array, k: int) -> jax.Array:
    # A diagonal factor (a vector, or a scalar for a scalar leaf) broadcast along mode k of x.
    return q if q.ndim == 0 else q.reshape([-1 if i == k else 1 for i in range(x.ndim)])


def _apply(qs: tuple[jax.Array, ...], x: jax.Array, transpose: bool = False) -> jax.Array:
    """:math:`x \\times_1 Q_1 \\cdots \\times_n Q_n` (each factor acting on its mode), or with :math:`Q_k^\\top`."""
    for k, q in enumerate(qs):
        if q.ndim < 2:
            x = x * _along(x, q, k)
    return mode_product(x, [q if q.ndim == 2 else None for q in qs], transpose=transpose)


def _solve_transposed(qs: tuple[jax.Array, ...], v: jax.Array) -> jax.Array:
    """:math:`v \\times_1 Q_1^{-\\top} \\cdots \\times_n Q_n^{-\\top}`, by triangular solves."""
    for k, q in enumerate(qs):
        if q.ndim < 2:
            v = v / _along(v, q, k)
        else:
            moved = jnp.moveaxis(v, k, 0)
            flat = jax.lax.linalg.triangular_solve(q, moved.reshape(q.shape[0], -1), left_side=True, lower=False,
                                                   transpose_a=True)
            v = jnp.moveaxis(flat.reshape(moved.shape), 0, k)
    return v


def _gram(x: jax.Array, q: jax.Array, k: int) -> jax.Array:
    # The mode-k second moment of x: X_(k) X_(k)^T for a dense factor, its diagonal for a diagonal one.
    if q.ndim < 2:
        return jnp.sum(x * x, axis=tuple(i for i in range(x.ndim) if i != k))
    flat = jnp.moveaxis(x, k, 0).reshape(q.shape[0], -1)
    return jnp.matmul(flat, flat.T, precision=_HIGHEST)


def _norm_lower_bound(a: jax.Array) -> jax.Array:
    """psgd-jax's cheap lower bound of the spectral norm of a symmetric matrix: the largest row, multiplied twice."""
    scale = jnp.max(jnp.abs(a))
    b = a / jnp.where(scale > 0, scale, 1)
    row = jax.lax.dynamic_index_in_dim(b, jnp.argmax(jnp.sum(b * b, axis=1)), 0, keepdims=False)
    x = jnp.matmul(b, row, precision=_HIGHEST)
    norm = jnp.linalg.norm(x)
    return scale * jnp.linalg.norm(jnp.matmul(b, x / jnp.where(norm > 0, norm, 1), precision=_HIGHEST))


@tree.once_per_shape  # as _direction and _cached_direction: lr and damping meet arrays only
def _fit(h: jax.Array, qs: tuple[jax.Array, ...], v: jax.Array, lr: Any, damping: Any) -> tuple[jax.Array, ...]:
    """One step of the whitening fit of the factors on the pair (probe v, input h), after balancing them."""
    if h.size == 0:
        return qs
    # Under Explicit mesh axes the fit works on whole arrays, as every device's factors are whole: a leaf split along
    # one factor's dimension leaves the other factors' second moments contracting over it (a diagonal factor keeps
    # its mode's split, which the dense factors' matrix products cannot take).
    h, v = gathered(h)[0], gathered(v)[0]
    if len(qs) > 1:  # equal max-norms; P is unchanged
        norms = jnp.stack([jnp.max(jnp.abs(q)) for q in qs])
        qs = tuple(q * (jnp.exp(jnp.mean(jnp.log(norms))) / n) for q, n in zip(qs, norms))
    h = h.astype(qs[0].dtype)
    h = h + (_RELATIVE_DAMPING * jnp.mean(jnp.abs(h)) + damping) * v
    a, b = _apply(qs, h), _solve_transposed(qs, v)
    tiny = jnp.finfo(qs[0].dtype).tiny
    new = []
    for k, q in enumerate(qs):
        t1, t2 = _gram(a, q, k), _gram(b, q, k)
        if q.ndim < 2:
            new.append(q - lr * (t1 - t2) * q / (jnp.max(jnp.abs(t1 + t2)) + tiny))
        else:
            step = jnp.triu(t1 - t2) / (_norm_lower_bound(t1 + t2) + tiny)
            new.append(q - lr * jnp.matmul(step, q, precision=_HIGHEST))
    return tuple(new)


def _finite_or_kept(new: tuple[jax.Array, ...], old: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    # A fit on a NaN or infinite gradient is skipped: its factors would stay non-finite for good.
    finite = jnp.all(jnp.stack([jnp.isfinite(q).all() for q in new]))
    return tuple(jnp.where(finite, n, o) for n, o in zip(new, old))


def _laid_out_like(new: jax.Array, old: jax.Array) -> jax.Array:
    # Under Explicit mesh axes: a fitted diagonal factor keeps the state's layout, an update its gradient's.
    want = jax.typeof(old).sharding
    return new if jax.typeof(new).sharding == want else jax.sharding.reshard(new, want)


@tree.once_per_shape
def _direction(m: jax.Array, qs: tuple[jax.Array, ...]) -> jax.Array:
    """:math:`P m = Q^\\top Q m`, its RMS capped at 1.1."""
    return m if m.size == 0 else _capped(_apply(qs, _apply(qs, m.astype(qs[0].dtype)), transpose=True))


def _capped(u: jax.Array) -> jax.Array:
    # psgd-jax's cap of the preconditioned leaf's RMS.
    return u / jnp.maximum(1.0, tree.root(jnp.mean(u * u)) / _MAX_RMS)


def _preconditioner(qs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """The per-dimension factors of :math:`P`: :math:`Q_k^\\top Q_k` (a diagonal one's entries squared)."""
    return tuple(q * q if q.ndim < 2 else jnp.matmul(q.T, q, precision=_HIGHEST) for q in qs)


@tree.once_per_shape
def _cached_direction(m: jax.Array, ps: tuple[jax.Array, ...]) -> jax.Array:
    """:func:`_direction` from :func:`_preconditioner`'s factors: one product per dimension instead of two."""
    return m if m.size == 0 else _capped(_apply(ps, m.astype(ps[0].dtype)))


def _first_scale(g: jax.Array, qs: tuple[jax.Array, ...], first: jax.Array, damping: Any) -> tuple[jax.Array, ...]:
    # Li's initial scale (E|g|^4 + damping^4)^(-1/8) of Q, spread evenly over the factors, on the first step only;
    # 1 for a leaf whose first gradient is 0 (a zero-initialised layer), where it would be 1/damping^(1/2).
    # Where the float32 sum of g^4 overflows (entries above ~1e8 to 3e9, by the leaf's size; the scale was 0 and
    # every later step NaN) or underflows (entries below ~1e-10: it was 1, as for a zero gradient), it is formed
    # from g / s with s = max(max|g|, damping), both ratios at most 1: s^(-1/2) (E|g/s|^4 + (damping/s)^4)^(-1/8).
    g = g.astype(qs[0].dtype)
    fourth = jnp.mean(g**4)
    scale = (fourth + damping**4) ** (-1 / 8)
    largest = jnp.max(jnp.abs(g), initial=0.0)  # (a zero-size leaf: 0)
    s = jnp.maximum(largest, damping)
    s = jnp.where(s > 0, s, 1.0)
    rescaled = s**-0.5 * (jnp.mean((g / s) ** 4) + (damping / s) ** 4) ** (-1 / 8)
    scale = jnp.where(jnp.isfinite(fourth) & (fourth > 0), scale, rescaled)
    scale = jnp.where(first & jnp.isfinite(scale) & (largest > 0), scale, 1.0) ** (1 / len(qs))
    return tuple(q * scale for q in qs)


def _probes(key: jax.Array, leaves: list, qs: tuple[Factors, ...]) -> list:
    """One float32 standard normal vector as long as all params together, cut into the leaves in tree order
    (``None`` updates keep their place), each piece in its factors' dtype: one draw for the whole tree."""
    shapes = [_param_shape(q) for q in qs]
    sizes = [0 if s is None else int(np.prod(s)) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    return [None if g is None else flat[end - n:end].reshape(s).astype(q[0].dtype)
            for g, s, n, end, q in zip(leaves, shapes, sizes, np.cumsum(sizes), qs)]


def _param_shape(factors: tuple[jax.Array, ...]) -> tuple[int, ...] | None:
    # The shape of the param the factors precondition; None for a None param's empty entry.
    if not factors:
        return None
    return tuple(q.shape[0] for q in factors) if factors[0].ndim else ()


def _checked_factors(owner: str, leaves: list, qs: Any,
                     triangular: Callable[[tuple[int, ...]], Any]) -> tuple[Factors, ...]:
    """``qs`` after checking it against the updates' leaves (``jax.tree.leaves(updates, is_leaf=tree.is_none)``):
    one entry per leaf, each the factors of a param shaped like its update, triangular (2-D) or diagonal (1-D) as
    ``triangular(shape)`` says for each dimension."""
    if not isinstance(qs, tuple) or len(qs) != len(leaves):
        count = len(qs) if isinstance(qs, tuple) else type(qs).__name__
        raise ValueError(f"{owner}: the updates tree does not match the preconditioner factors (state.qs): the "
                         f"updates have {len(leaves)} leaves, state.qs holds factors for {count}. Build the state "
                         "with init on params shaped like the updates.")
    for g, factors in zip(leaves, qs):
        shape = _param_shape(factors)
        if g is not None and jnp.shape(g) != shape:
            raise ValueError(f"{owner}: an update of shape {jnp.shape(g)} meets preconditioner factors of a "
                             f"param of shape {shape}. Pass updates shaped like the params the state was built for.")
        if g is not None and jnp.ndim(g) and [q.ndim == 2 for q in factors] != list(triangular(shape)):
            raise StateMismatchError(
                f"{owner}: the factors of a param of shape {shape} in state.qs are "
                f"{['triangular' if q.ndim == 2 else 'diagonal' for q in factors]}, where this transformation keeps "
                f"{['triangular' if t else 'diagonal' for t in triangular(shape)]}: the state was built by an init "
                "with other options (max_size_triangular, min_ndim_triangular, memory_save_mode). Build it with this "
                "transformation's init.")
    return qs


def _checked_cache(owner: str, qs: tuple[Factors, ...], ps: Any) -> tuple[Factors, ...]:
    # The cached products must pair with the factors one for one (a state built with cached=False has None).
    shapes = lambda fs: [[jnp.shape(x) for x in f] for f in fs]  # noqa: E731
    if not isinstance(ps, tuple) or shapes(ps) != shapes(qs):
        raise ValueError(f"{owner}: cached=True needs a state built by this transformation's init (state.ps holding "
                         f"Q^T Q for every factor), got state.ps={type(ps).__name__}.")
    return ps


class ScaleByPsgdKronState(NamedTuple):
    """The step count, the PRNG key data (``jax.random.key_data``) the next step splits, the momentum ``mu``
    (shaped like the params; ``None`` when ``b1`` is a literal 0) and the Kronecker factors ``qs``: a flat tuple
    with one entry per param leaf, in ``jax.tree.leaves(params, is_leaf=lambda x: x is None)`` order, each the
    tuple of that param's factors (``()`` for a ``None`` param). Not a tree shaped like the params: Flax NNX
    would turn a container held as a param's value into a mapping, changing the state's structure. With
    ``cached=True``, ``ps`` holds :math:`Q_k^\\top Q_k` in the same layout (``None`` otherwise)."""

    count: jax.Array
    key: jax.Array
    mu: Updates
    qs: tuple[Factors, ...]
    ps: tuple[Factors, ...] | None = None


@static_only("max_size_triangular", "min_ndim_triangular")
@init_only("key", "precond_init_scale")
def scale_by_psgd_kron(
    b1: jax.typing.ArrayLike = 0.9,
    preconditioner_update_probability: ScalarOrSchedule = precond_update_prob_schedule(),
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    precond_lr: jax.typing.ArrayLike = 0.1,
    precond_init_scale: jax.typing.ArrayLike | None = None,
    mu_dtype: StateDtype = None,
    *,
    key: jax.Array | int = 0,
    damping: jax.typing.ArrayLike = 1e-9,
    cached: bool = False,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """PSGD-Kron (Li 2015, 2022): the (momentum of the) gradient whitened by a learned Kronecker-factored :math:`P`.

    With momentum :math:`m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t`, :math:`\\hat m_t = m_t / (1 - \\beta_1^t)`
    and :math:`P = Q^\\top Q`, :math:`Q = Q_1 \\otimes \\cdots \\otimes Q_n` (one factor per dimension,
    :math:`\\times_k` acting on mode :math:`k`):

    .. math::

        u_t = \\frac{P \\hat m_t}{\\max(1,\\ \\mathrm{rms}(P \\hat m_t) / 1.1)}, \\qquad
        P \\hat m = \\hat m \\times_1 Q_1^\\top Q_1 \\cdots \\times_n Q_n^\\top Q_n .

    Before :math:`u_t` is formed, with probability :math:`p(t)` (one uniform draw per step), the factors are
    fitted to whiten :math:`h = \\hat m_t` (or :math:`g_t`): with a probe :math:`v \\sim \\mathcal N(0, I)`,
    :math:`h \\leftarrow h + (\\sqrt{\\epsilon_{32}}\\, \\mathrm{mean}|h| + \\delta) v`,
    :math:`A = h \\times_k Q_k`, :math:`B = v \\times_k Q_k^{-\\top}` and, for each factor,

    .. math::

        Q_k \\leftarrow Q_k - \\eta_Q \\frac{\\mathrm{triu}(A_{(k)} A_{(k)}^\\top - B_{(k)} B_{(k)}^\\top)}
        {\\lVert A_{(k)} A_{(k)}^\\top + B_{(k)} B_{(k)}^\\top \\rVert_{lb}} Q_k

    (a step on the Lie group of invertible upper-triangular matrices towards
    :math:`E[h^\\top P h + v^\\top P^{-1} v]`'s minimum, :math:`P = E[h h^\\top]^{-1/2}`), its norm a lower
    bound of the spectral norm (psgd-jax's); a diagonal factor takes the diagonals, normalised by their max.
    The factors are first balanced to equal max-norms (:math:`P` unchanged). A dimension gets a diagonal factor
    when its size is 1 or above ``max_size_triangular``, when the leaf has fewer than ``min_ndim_triangular``
    dims (so vectors are diagonal by default), or by ``memory_save_mode``: ``"one_diag"`` (the largest dim),
    ``"all_diag"`` (psgd-jax), ``"smart_one_diag"`` (the largest dim if strictly largest), ``"one_triu"`` (all
    but the smallest dim; heavyball). Scalars have one scalar factor.

    Randomness: the state keeps PRNG key data (``jax.random.key_data``; ``key=0`` by default, as psgd-jax
    fixes its seed). Each step splits the key into (next key, draw key, probe key); the fit happens when
    ``jax.random.uniform(draw_key, (), float32) < p(count)``, and its probes are one
    ``jax.random.normal(probe_key, (N,), float32)`` over all :math:`N` param entries, cut into the leaves in
    tree order (a ``None`` update keeps its leaf's place) and cast to each leaf's factor dtype. The fit and its
    probes run inside ``jax.lax.cond``: under ``jit`` the other steps do not pay for them (under ``vmap`` with
    a batched state both branches run).

    ``cached=True`` (heavyball's ``cached``) keeps :math:`P_k = Q_k^\\top Q_k` in the state (``ps``), formed
    when the factors change (a fit, the first step's scale), and forms :math:`P \\hat m = \\hat m \\times_1 P_1
    \\cdots \\times_n P_n`: one product per dimension instead of two on every step, for
    :math:`\\sum_k d_k^2` more numbers of state per param. The same rule, rounded differently. Forming the
    products costs about what they save on a fitted step, so the gain grows as :math:`p` falls (on a 1024 x 1024
    and a 512 x 2048 leaf on 2 CPU cores: 0.84x the step time at :math:`p = 0.1`, 1.08x at :math:`p = 1`).
    heavyball uses its cache only while :math:`p < 0.5`; here it is kept whenever asked for.

    Storage and layout: the factors are float32 (float64 for float64 params) whatever the params' dtype, and
    take no storage option: the triangular solves lose accuracy with the factors' condition number, and the
    multiplicative Lie-group steps (relative changes of about ``precond_lr`` times a normalised matrix, smaller
    late in training) fall below bfloat16's resolution (:math:`2^{-8}`). The momentum takes one (``mu_dtype``:
    a dtype, ``jz.StochasticBF16()`` or ``jz.Blockwise8Bit()``). The factors need whole arrays: under ``jit``
    on sharded params the partitioner computes them exactly; inside ``shard_map``, with ``axis_name`` and
    ``partition_specs``, each device gathers the leaves, forms the whole update with its replicated factors
    (every device the same fit) and keeps its block; a leaf that is a shard raises without them.
    :func:`jaxopt_zoo.init_sharded` shards the momentum like its param and replicates the factors and their
    cached products (they are small: :math:`\\sum_k d_k^2` numbers per param); under Explicit mesh axes the fit
    gathers its gradient (or momentum) and probe whole and keeps the factors replicated, and each update is laid
    out like its gradient; under Auto axes XLA's partitioner lays
    out the new factors (it may split them like the param, and the step then compiles a second time for them:
    pin them with ``out_shardings=jz.state_shardings(tx, params)``). Complex params raise (use
    :func:`jaxopt_zoo.combine.split_real_and_imaginary`); a param with a zero dimension passes through. The
    factors live outside the params' tree (``state.qs`` is a flat tuple, one entry per param leaf in
    ``jax.tree.leaves`` order), so that Flax NNX keeps the state's structure from step to step.

    Differences from psgd-jax 0.2.9's ``scale_by_kron`` (the definition followed): (1) the update is drawn at
    random with probability :math:`p(t)` (Li's psgd_torch, psgd-jax up to 0.2.7) where 0.2.9 updates
    deterministically every :math:`1/p` steps, and the draws come from the ``key`` in the state, not a fixed
    seed; (2) ``precond_init_scale=None`` (the default, as Li's and heavyball's) sets :math:`Q = s I` on the
    first step with Li's :math:`s = (\\mathrm{mean}|g_1|^4 + \\delta^4)^{-1/8}`, per leaf (Li takes the max of
    :math:`\\mathrm{mean}|g|^4` over all leaves; 1 where the first gradient is 0, as for a zero-initialised
    layer, whose scale would otherwise be :math:`\\delta^{-1/2}` and its steps capped for hundreds of fits, or
    holds a NaN or infinity; where float32's :math:`\\mathrm{mean}\\, g^4` over- or underflows it is formed from
    :math:`g / \\max|g|`); psgd-jax's default is 1.0;
    (3) the damping adds an absolute :math:`\\delta` (``damping``, Li's 1e-9) to psgd-jax's relative one, so
    that a leaf whose gradient stays zero does not grow its factors without bound; (4) factors are balanced on
    every fit (heavyball) instead of with probability 0.01 (same :math:`P`); (5) schedules see the 0-based
    step count (psgd-jax's, the 1-based); (6) every product of the fit and of :math:`P \\hat m` is at full
    float32 precision (psgd-jax fits at TF32 on GPUs); (7) a fit whose new factors are not finite (a NaN or
    infinite gradient) is skipped, as Shampoo and SOAP skip such statistics (psgd-jax and heavyball keep the NaN
    factors for good; the momentum here is Adam's, so guard it with :func:`jaxopt_zoo.apply_if_finite`); no
    ``precond_dtype``, ``scanned_layers``, ``lax_map_*`` options; psgd-jax's ``preconditioner_lr`` and
    ``preconditioner_init_scale`` are ``precond_lr``/``precond_init_scale`` here (heavyball's names). heavyball
    3.2.1's ``PSGDKron`` differs more: a running lower bound (EMA 0.9) of a power-iteration eigenvalue as the fit's
    normaliser, elementwise damping, a trust-region clip of the update, ``max_size_triangular=2048``, and an
    automatic initial scale that is the square root of Li's, :math:`(\\mathrm{mean}\\, g^4)^{-1/16}`.

    Args:
        b1: momentum decay :math:`\\beta_1 \\in [0, 1)`; a literal 0 keeps no momentum.
        preconditioner_update_probability: :math:`p \\in [0, 1]`, or a schedule of the step count
            (default: :func:`precond_update_prob_schedule`).
        max_size_triangular: dims larger than this (>= 1) get diagonal factors.
        min_ndim_triangular: leaves with fewer dims get diagonal factors only.
        memory_save_mode: ``None``, ``"one_diag"``, ``"smart_one_diag"``, ``"one_triu"`` or ``"all_diag"``.
        momentum_into_precond_update: fit :math:`P` to the momentum :math:`\\hat m_t` (else to :math:`g_t`).
        precond_lr: the fit's step size :math:`\\eta_Q > 0`.
        precond_init_scale: :math:`Q_0 = s I` for a number :math:`s > 0`; ``None``: from the first gradient.
        mu_dtype: storage of the momentum (see :mod:`jaxopt_zoo.storage`).
        key: an integer seed (in :math:`[0, 2^{32} - 1]` without ``jax_enable_x64``) or a ``jax.random.key``
            for the update draws and probes.
        damping: :math:`\\delta \\ge 0`, the absolute damping of the fitted input (Li's default).
        cached: keep :math:`Q_k^\\top Q_k` in the state, as above.
        axis_name: inside ``shard_map``, the mesh axes the params may be split over.
        partition_specs: inside ``shard_map``, the ``PartitionSpec`` of each update leaf (the params' ``in_specs``;
            a tree or a prefix of one).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_psgd_kron(preconditioner_update_probability=1.0, key=0)
        >>> params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> [[q.shape for q in qs] for qs in state.qs]  # in leaf order: "b" a diagonal factor; "w" dense ones
        [[(2,)], [(3, 3), (2, 2)]]
        >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5), "b": jnp.zeros(2)}, state)
        >>> bool(jnp.all(jnp.isfinite(updates["w"]))), updates["b"]
        (True, Array([0., 0.], dtype=float32))

    References:
        Li, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS 2018 (arXiv:1512.04202);
        Li, "Black Box Lie Group Preconditioners for SGD", 2022 (arXiv:2211.04422).
    """
    owner = "scale_by_psgd_kron"
    validation.decay_rate(owner, "b1", b1)
    probability = preconditioner_update_probability
    if not callable(probability):
        validation.fraction(owner, "preconditioner_update_probability", probability)
    max_size = _static_size(owner, "max_size_triangular", max_size_triangular, 1)
    min_ndim = _static_size(owner, "min_ndim_triangular", min_ndim_triangular, 0)
    if memory_save_mode not in MEMORY_SAVE_MODES:
        raise ValueError(f"{owner}: memory_save_mode must be one of {MEMORY_SAVE_MODES}, got {memory_save_mode!r}.")
    validation.flag(owner, "momentum_into_precond_update", momentum_into_precond_update)
    validation.positive(owner, "precond_lr", precond_lr)
    if precond_init_scale is not None:
        validation.positive(owner, "precond_init_scale", precond_init_scale)
    validation.epsilon(owner, "damping", damping)
    validation.flag(owner, "cached", cached)
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)
    mu_store = resolve(owner, "mu_dtype", mu_dtype)
    initial_key = resolve_key(owner, key, None)
    impl = _key_impl(key)
    has_mu = not validation.is_literal_zero(b1)

    def triangular(shape: tuple[int, ...]) -> tuple[bool, ...]:
        return _triangular_dims(shape, max_size, min_ndim, memory_save_mode)

    def init(params):
        def factors(p):
            return _initial_factors(owner, p, precond_init_scale, max_size, min_ndim, memory_save_mode)

        mu = tree.moments_like(params) if has_mu else None
        if tree.is_params_placeholder(params):  # tree.map_params: the factors are per-parameter parts too
            qs = ps = params
        else:  # flat, outside the params' tree (see ScaleByPsgdKronState)
            qs = tuple(() if p is None else factors(p) for p in jax.tree.leaves(params, is_leaf=tree.is_none))
            ps = tuple(map(_preconditioner, qs)) if cached else None
        return ScaleByPsgdKronState(zero_count(), jax.random.key_data(initial_key()), mu, qs, ps if cached else None)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef = jax.tree.flatten(updates, is_leaf=tree.is_none)
        # Inside shard_map every device forms the whole update from the gathered leaves and keeps its block of it.
        placements = local_placements(owner, leaves, leaf_specs(owner, partition_specs, updates), axis_name,
                                      "the Kronecker factors need whole arrays") or [None] * len(leaves)
        whole = lambda xs: [None if x is None else whole_leaf(x, at) for x, at in zip(xs, placements)]  # noqa: E731
        leaves = whole(leaves)
        qs = _checked_factors(owner, leaves, state.qs, triangular)
        if has_mu:  # the flat factors cannot tell two trees with leaves of the same shapes apart; the momentum can
            tree.check_same_structure(owner, updates, state.mu, "the momentum (state.mu)")
        count = safe_increment(state.count)
        next_key, draw_key, probe_key = jax.random.split(jax.random.wrap_key_data(state.key, impl=impl), 3)
        mu = tree.update_moment(updates, state.mu, b1, 1) if has_mu else None
        m_hat = whole(treedef.flatten_up_to(tree.bias_correction(mu, b1, count))) if has_mu else leaves
        if precond_init_scale is None:  # on the first step only: its reductions over every leaf are skipped after
            first_scaled = lambda qs: tuple(  # noqa: E731
                q if g is None else _first_scale(g, q, jnp.asarray(True), damping) for g, q in zip(leaves, qs))
            qs = jax.lax.cond(state.count == 0, first_scaled, lambda qs: qs, qs)
        fit_to = m_hat if momentum_into_precond_update else leaves

        def fit(qs):
            probes = _probes(probe_key, leaves, qs)
            fitted = lambda q, h, v: tuple(map(_laid_out_like, _fit(h, q, v, precond_lr, damping), q))  # noqa: E731
            return tuple(q if g is None else _finite_or_kept(fitted(q, h, v), q)
                         for g, q, h, v in zip(leaves, qs, fit_to, probes))

        p = probability(state.count) if callable(probability) else probability
        fitting = jax.random.uniform(draw_key, (), jnp.float32) < p
        qs = jax.lax.cond(fitting, fit, lambda qs: qs, qs)
        ps = None
        if cached:  # formed again only where the factors changed: a fit, or the first step's scale
            changed = fitting | (state.count == 0) if precond_init_scale is None else fitting
            formed = lambda qs, ps: tuple(tuple(map(_laid_out_like, _preconditioner(q), old)) for q, old in zip(qs, ps))
            ps = jax.lax.cond(changed, formed, lambda _, ps: ps, qs, _checked_cache(owner, qs, state.ps))
        direction, factors = (_direction, qs) if ps is None else (_cached_direction, ps)
        # Updates in the gradients' dtype, float16 widened (tree.moment_dtype), as the library's other rules.
        new_updates = [None if g is None else local_block(
                           _laid_out_like(direction(m, f).astype(tree.moment_dtype(g.dtype)), g), at)
                       for g, m, f, at in zip(leaves, m_hat, factors, placements)]
        return treedef.unflatten(new_updates), ScaleByPsgdKronState(count, jax.random.key_data(next_key), mu, qs, ps)

    tx = GradientTransformation(init, update)
    if has_mu:
        tx = with_storage(tx, signed={"mu": mu_store})
    return expects_state(owner, tx, ScaleByPsgdKronState)


def _initial_factors(owner: str, p: Any, init_scale: Any, max_size: int, min_ndim: int,
                     mode: str | None) -> tuple[jax.Array, ...]:
    # Q_0 = s I spread evenly over the factors (s = 1 until the first gradient sets it), float32 or wider.
    validation.refuse_complex(owner, p)
    dtype = jnp.promote_types(tree.moment_dtype(jnp.result_type(p)), jnp.float32)
    scale = jnp.asarray(1.0 if init_scale is None else init_scale, dtype) ** (1 / max(1, jnp.ndim(p)))
    if jnp.ndim(p) == 0:
        return (scale,)
    shape = tuple(jnp.shape(p))
    dense = _triangular_dims(shape, max_size, min_ndim, mode)
    return tuple(scale * (stack_of_eyes(1, d, dtype)[0] if t else jnp.ones(d, dtype)) for d, t in zip(shape, dense))


def _key_impl(key: Any) -> Any:
    # The PRNG implementation of a typed key (its data is kept in the state); None: the default, for a seed.
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return jax.random.key_impl(key) if typed else None


def _static_size(owner: str, name: str, value: Any, minimum: int) -> int:
    # A size that decides the state's shapes: a Python integer, never traced (nor injected).
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{owner}: {name} decides the factors' shapes, so it cannot be traced or injected; pass "
                         f"static_args=({name!r},) to jz.inject_hyperparams.")
    return validation.whole_number(owner, name, value, minimum)
