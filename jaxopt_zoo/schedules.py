"""Learning-rate schedules: pure, jit-safe functions of the int32 step count (0 on the first step).

Names, arguments and values are Optax's, and :func:`cyclic_schedule` is PyTorch's
``CyclicLR``, which Optax lacks. Deviations: arguments that make no
sense raise a ``ValueError`` naming them (a negative step count, boundaries out
of order, a non-positive decay rate), where Optax logs and falls back to a
constant schedule or to ``transition_begin=0``.

Every numeric argument that is not a step count (values, rates, scales,
``alpha``, exponents, the one-cycle fractions and factors) may be a traced JAX
value, so a schedule can be built inside ``jax.vmap`` (a learning-rate sweep),
``jax.jit`` or ``jax.grad`` (Optax raises for a traced ``peak_value`` of
``warmup_cosine_decay_schedule``, a traced ``decay_rate`` of
``exponential_decay`` with an ``end_value``, and traced one-cycle fractions).
A traced value cannot be checked at construction; a concrete one is.
Step counts (``transition_steps``, ``transition_begin``, ``decay_steps``,
``warmup_steps``, boundaries) shape the schedule and must be concrete Python or
NumPy integers no larger than ``2**31 - 1``: the step count is int32, so a larger
one is refused at construction (Optax accepts it and overflows at the first call).
With ``jax_enable_x64`` a schedule's value at an int32 count is float64 (Optax's
linear, polynomial, exponential and interpolating schedules round it to float32).
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import Schedule
from jaxopt_zoo.docstrings import document_args

__all__ = [
    "warmup_constant_schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cyclic_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]


_STEPS = "a concrete whole number in :math:`[0, 2^{31} - 1]`"
_VALUE = "a finite real scalar, which may be traced"

# The arguments the schedules share, by name, each with one meaning: document_args fills the schedules' Args:
# sections from these (an entry of a schedule's own wins). A "\n" starts a continuation line of the entry.
SCHEDULE_ARGUMENTS: Mapping[str, str] = types.MappingProxyType({
    "init_value": f":math:`\\eta_0`, the value the schedule starts from: {_VALUE}.",
    "end_value": f":math:`\\eta_1`, the value from step ``transition_begin + transition_steps`` on:\n{_VALUE}.",
    "transition_steps": ":math:`T`, the steps the move from ``init_value`` to ``end_value`` takes:\n"
                        f"{_STEPS}; 0 gives the constant ``init_value``.",
    "transition_begin": ":math:`t_0`, the step at which the transition starts, the value being\n"
                        f"``init_value`` up to it: {_STEPS}.",
    "exponent": ":math:`e \\ge 0`, the power of the half-cosine factor (which falls from 1 to 0 over the\n"
                f"decay): above 1 the value falls faster at first, 0 keeps it where the decay starts;\n{_VALUE}.",
    "boundaries_and_scales": "``{step: scale}``, or ``None`` for none: the value at each such step is\n"
                             "``init_value`` times the scales of that step and of the earlier ones, and it stays\n"
                             "so after the last. Steps: concrete whole numbers in :math:`[0, 2^{31} - 1]`;\n"
                             "scales: finite reals >= 0, which may be traced.",
})

# The arguments of the schedules that start with a linear warm-up (taking precedence over SCHEDULE_ARGUMENTS).
WARMUP_ARGUMENTS: Mapping[str, str] = types.MappingProxyType({
    "init_value": "the value at step 0, where the linear warm-up starts (unused when\n"
                  f"``warmup_steps`` is 0): {_VALUE}.",
    "peak_value": f"the value the warm-up reaches at step ``warmup_steps``, where what follows\nstarts: {_VALUE}.",
    "warmup_steps": "the length of the linear warm-up from ``init_value`` to ``peak_value``:\n"
                    f"{_STEPS}; 0 skips the warm-up, starting at ``peak_value``.",
})


_OWN_NAMES: Mapping[str, str] = types.MappingProxyType({})
"""The builders' ``names``: each argument under its own name. A composed schedule passes the names its user
wrote instead (``warmup_constant_schedule``'s ``peak_value`` is the warm-up's ``end_value``), so that its
messages name them."""


def _derived(owner: str, name: str, numerator, denominator):
    """``numerator / denominator`` of checked arguments, as Optax computes it; refused, under ``name``
    (``"end_value / peak_value"``), when it is not a finite number."""
    try:
        value = numerator / denominator
    except ZeroDivisionError:  # a product of positive floats that underflowed to 0
        value = math.inf
    validation.real_scalar(owner, name, value)
    return value


def _steps(owner: str, name: str, value: int, minimum: int = 0) -> int:
    # Optax also takes NumPy integers and integral floats (1e4) for step counts. They are
    # compared with the int32 step count, so one beyond int32 would overflow at the first call.
    return validation.whole_number(owner, name, value, minimum, validation.INT32_MAX)


def constant_schedule(value: jax.typing.ArrayLike) -> Schedule:
    """:math:`\\eta_t = v`.

    Args:
        value: :math:`v`, the value at every step (returned as given): a finite real scalar, which may be traced.

    Example:
        >>> import jaxopt_zoo as jz
        >>> float(jz.constant_schedule(0.1)(100))
        0.1
    """
    validation.real_scalar("constant_schedule", "value", value)
    return lambda count: value


@document_args(SCHEDULE_ARGUMENTS)
def polynomial_schedule(
    init_value: jax.typing.ArrayLike,
    end_value: jax.typing.ArrayLike,
    power: jax.typing.ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial decay from ``init_value`` to ``end_value`` over ``transition_steps``:

    .. math::

        \\eta_t = (\\eta_0 - \\eta_1) \\Big(1 - \\frac{\\tau}{T}\\Big)^{p} + \\eta_1, \\qquad
        \\tau = \\operatorname{clip}(t - t_0, 0, T).

    ``transition_steps=0`` gives the constant ``init_value`` (as in Optax).
    ``init_value``, ``end_value`` and ``power`` may be traced; the step counts
    must be concrete. Deviation: the value is exactly ``end_value`` from
    :math:`\\tau = T` on, also under ``jit`` (Optax's jitted schedule stays
    :math:`1.5 \\cdot 10^{-4}` above it for :math:`p = 0.5`, :math:`T = 100`).

    Args:
        power: :math:`p \\ge 0` (1 is linear; 0 keeps ``init_value`` throughout, :math:`0^0` being 1):
            a finite real scalar, which may be traced.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)
        >>> float(schedule(5))
        0.25
    """
    return _polynomial("polynomial_schedule", init_value, end_value, power, transition_steps, transition_begin)


def _as_real(steps: Any, weak_integers: bool = False) -> jax.Array:
    # An int32 step count divided by an int is float32 even with jax_enable_x64, which rounded float64 values;
    # in the default float dtype instead (float32 without x64: the same bits as the division's own conversion).
    # A Python step stays weakly typed, as in Optax (the value times a bfloat16 array is bfloat16), and may pass
    # int32's range; with weak_integers an integer array too (Optax's cosine decay).
    if isinstance(steps, numbers.Real):
        return jnp.asarray(float(steps))
    steps = jnp.asarray(steps)
    if jax.typeof(steps).weak_type or (weak_integers and jnp.issubdtype(steps.dtype, jnp.integer)):
        return steps * 1.0
    return steps.astype(jnp.result_type(float))


def _polynomial(
    owner: str, init_value, end_value, power, transition_steps: int, transition_begin: int, names=_OWN_NAMES
) -> Schedule:
    for name, value in (("init_value", init_value), ("end_value", end_value)):
        validation.real_scalar(owner, names.get(name, name), value)
    validation.non_negative(owner, names.get("power", "power"), power)  # a negative power is infinite at the end
    transition_steps = _steps(owner, names.get("transition_steps", "transition_steps"), transition_steps)
    transition_begin = _steps(owner, names.get("transition_begin", "transition_begin"), transition_begin)
    if transition_steps == 0:
        return lambda count: init_value

    def schedule(count):
        elapsed = _as_real(jnp.clip(count - transition_begin, 0, transition_steps))
        # Exactly 0 at the end: under jit XLA divides by the constant T as a multiplication by 1/T, which
        # leaves 1 - T/T at 2e-8, and a power of 0.5 would turn that into 1.5e-4 above end_value (as Optax does).
        fraction = jnp.where(elapsed >= transition_steps, 0.0, 1 - elapsed / transition_steps)
        return (init_value - end_value) * fraction**power + end_value

    return schedule


@document_args(SCHEDULE_ARGUMENTS)
def linear_schedule(
    init_value: jax.typing.ArrayLike, end_value: jax.typing.ArrayLike, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation: :func:`polynomial_schedule` with :math:`p = 1`.

    ``init_value`` and ``end_value`` may be traced; the step counts must be concrete.

    Example:
        >>> import jaxopt_zoo as jz
        >>> float(jz.linear_schedule(0.0, 1.0, transition_steps=4)(1))
        0.25
    """
    return _polynomial("linear_schedule", init_value, end_value, 1, transition_steps, transition_begin)


@document_args(WARMUP_ARGUMENTS)
def warmup_constant_schedule(
    init_value: jax.typing.ArrayLike, peak_value: jax.typing.ArrayLike, warmup_steps: int
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then ``peak_value`` for good.

    :math:`\\eta_t = \\eta_0 + (\\eta_{peak} - \\eta_0)\\min(t, T)/T`.

    Deliberate difference: ``warmup_steps=0`` gives the constant ``peak_value``
    (no warmup); Optax returns the constant ``init_value``, which never reaches the peak.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
        >>> [float(schedule(t)) for t in (0, 2, 4, 100)]
        [0.0, 0.5, 1.0, 1.0]
    """
    names = {"end_value": "peak_value", "transition_steps": "warmup_steps"}
    schedule = _polynomial("warmup_constant_schedule", init_value, peak_value, 1, warmup_steps, 0, names)
    return (lambda count: peak_value) if warmup_steps == 0 else schedule


@document_args(SCHEDULE_ARGUMENTS)
def exponential_decay(
    init_value: jax.typing.ArrayLike,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: jax.typing.ArrayLike | None = None,
) -> Schedule:
    """:math:`\\eta_t = \\eta_0 \\, r^{(t - t_0)/T}` after ``transition_begin`` (:math:`\\eta_0` before).

    ``staircase`` floors the exponent; ``end_value`` bounds the value (a floor
    when decaying, a ceiling when :math:`r > 1`). ``transition_steps=0`` gives
    the constant ``init_value`` (as in Optax). Deviation: ``decay_rate`` must be
    positive (Optax returns a constant for 0). ``init_value``, ``decay_rate``
    and ``end_value`` may be traced (Optax raises for a traced ``decay_rate``
    with an ``end_value``); the step counts must be concrete.

    Args:
        transition_steps: :math:`T`, the steps over which the value is multiplied by ``decay_rate`` once:
            a concrete whole number in :math:`[0, 2^{31} - 1]`; 0 turns the decay off (the value stays
            where it starts, whatever ``end_value``).
        decay_rate: :math:`r > 0`, the factor per ``transition_steps`` steps (below 1 the value decays,
            above 1 it grows): a finite real scalar, which may be traced.
        staircase: ``True`` rounds the exponent down to a whole number, so that the value changes once
            every ``transition_steps`` steps instead of at every step; a bool.
        end_value: ``None`` (no bound), or a bound on the decay's value: a floor when ``decay_rate < 1``,
            else a ceiling (for a traced rate, chosen when the schedule runs), applied at every step of
            the decay, those before ``transition_begin`` included: a finite real scalar, which may be traced.

    Example:
        >>> import jaxopt_zoo as jz
        >>> float(jz.exponential_decay(1.0, transition_steps=10, decay_rate=0.5)(20))
        0.25
    """
    return _exponential(
        "exponential_decay", init_value, transition_steps, decay_rate, transition_begin, staircase, end_value
    )


def _exponential(
    owner: str, init_value, transition_steps, decay_rate, transition_begin, staircase, end_value, names=_OWN_NAMES
) -> Schedule:
    validation.real_scalar(owner, names.get("init_value", "init_value"), init_value)
    rate = validation.positive(owner, "decay_rate", decay_rate)
    validation.flag(owner, "staircase", staircase)
    transition_steps = _steps(owner, "transition_steps", transition_steps)
    transition_begin = _steps(owner, "transition_begin", transition_begin)
    if end_value is not None:
        validation.real_scalar(owner, "end_value", end_value)
    if transition_steps == 0:
        return lambda count: init_value
    if end_value is None:
        bound = None
    elif rate is not None:
        bound = jnp.maximum if rate < 1.0 else jnp.minimum
    else:  # a traced rate: a floor when it decays, a ceiling when it grows, chosen when the schedule runs

        def bound(value, end):
            return jnp.where(decay_rate < 1.0, jnp.maximum(value, end), jnp.minimum(value, end))


    def schedule(count):
        elapsed = _as_real(count - transition_begin)
        exponent = elapsed / transition_steps
        if staircase:
            exponent = jnp.floor(exponent)
        value = jnp.where(elapsed <= 0, init_value, init_value * jnp.power(decay_rate, exponent))
        return value if bound is None else bound(value, end_value)

    return schedule


@document_args(SCHEDULE_ARGUMENTS)
def cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    decay_steps: int,
    alpha: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    """Cosine decay (Loshchilov & Hutter 2017):

    .. math::

        \\eta_t = \\eta_0 \\Big((1 - \\alpha) \\big(\\tfrac{1}{2}(1 + \\cos(\\pi \\min(t, T) / T))\\big)^{e} + \\alpha\\Big).

    ``init_value``, ``alpha`` and ``exponent`` may be traced; ``decay_steps`` must be concrete.

    Args:
        decay_steps: :math:`T`, the steps the decay takes, from ``init_value`` at step 0 to
            ``alpha * init_value`` at step :math:`T`, where it stays: a concrete whole number in
            :math:`[1, 2^{31} - 1]`.
        alpha: :math:`\\alpha`, the final value as a fraction of ``init_value`` (0 decays to 0): a finite real
            scalar, which may be traced.

    Example:
        >>> import jaxopt_zoo as jz
        >>> round(float(jz.cosine_decay_schedule(1.0, decay_steps=10)(5)), 6)
        0.5
    """
    return _cosine("cosine_decay_schedule", init_value, decay_steps, alpha, exponent)


def _cosine(owner: str, init_value, decay_steps: int, alpha, exponent, names=_OWN_NAMES) -> Schedule:
    for name, value in (("init_value", init_value), ("alpha", alpha)):
        validation.real_scalar(owner, names.get(name, name), value)
    validation.non_negative(owner, names.get("exponent", "exponent"), exponent)
    decay_steps = _steps(owner, names.get("decay_steps", "decay_steps"), decay_steps, minimum=1)

    def schedule(count):
        # A float count avoids int32 overflow in count / decay_steps for huge step numbers; an integer count gives
        # a weakly typed value, as Optax's cosine does.
        count = jnp.minimum(_as_real(count, weak_integers=True), decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * count / decay_steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def _listed(owner: str, name: str, value, what: str) -> list:
    # A str would be read as its characters, and a non-iterable would fail with a bare TypeError.
    if not isinstance(value, (str, bytes)):
        try:
            return list(value)
        except TypeError:
            pass
    raise ValueError(f"{owner}: {name} must be {what}, got {value!r}.")


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]`` on, each seeing steps counted from its own start.

    The ``boundaries`` must be concrete integers; the schedules may close over traced values.
    Deviations from ``optax.join_schedules``, which checks nothing: bad arguments raise a
    ``ValueError`` when built (Optax fails at the first call, with a ``TypeError`` or an
    ``IndexError``), as do decreasing boundaries (with which Optax's schedule silently skips
    some schedules and cuts others short). Equal boundaries are accepted, as in Optax: the
    schedules between them never run. Any iterables are accepted, not only sequences.

    Args:
        schedules: a non-empty sequence of schedules (callables of the step count).
        boundaries: integers >= 0 in non-decreasing order, one fewer than the schedules: the
            steps at which each next schedule takes over.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.join_schedules([jz.constant_schedule(1.0), jz.linear_schedule(1.0, 0.0, 10)], [5])
        >>> float(schedule(10))
        0.5
    """
    owner = "join_schedules"
    what = "a non-empty sequence of schedules (callables of the step count)"
    written, schedules = schedules, _listed(owner, "schedules", schedules, what)
    if not schedules:
        raise ValueError(f"{owner}: schedules must be {what}, got {written!r}.")
    for i, later in enumerate(schedules):
        if not callable(later):
            raise ValueError(
                f"{owner}: schedules[{i}] must be a schedule (a callable of the step count), got {later!r}."
            )
    what = f"a sequence of integers, one fewer than the schedules ({len(schedules) - 1})"
    written, boundaries = boundaries, _listed(owner, "boundaries", boundaries, what)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{owner}: expected {len(schedules) - 1} boundaries for {len(schedules)} schedules, got {written!r}."
        )
    for i, boundary in enumerate(boundaries):
        _steps(owner, f"boundaries[{i}]", boundary)
    if any(b < a for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"{owner}: boundaries must be non-decreasing, got {written!r}.")

    def schedule(count):
        value = schedules[0](count)
        for boundary, later in zip(boundaries, schedules[1:]):
            value = jnp.where(count < boundary, value, later(count - boundary))
        return value

    return schedule


def _checked_boundaries(owner: str, boundaries_and_scales: Mapping[int, float] | None) -> list[tuple[int, float]]:
    if boundaries_and_scales is None:
        return []
    if not isinstance(boundaries_and_scales, Mapping):
        raise ValueError(
            f"{owner}: boundaries_and_scales must be a mapping of step to scale (a dict) or None, "
            f"got {boundaries_and_scales!r}."
        )
    for boundary, factor in boundaries_and_scales.items():  # checked before sorting: a str key cannot be sorted
        _steps(owner, "boundaries_and_scales boundary", boundary)
        checked = validation.real_scalar(owner, f"the scale at boundary {boundary}", factor)
        if checked is not None and checked < 0:
            raise ValueError(f"{owner}: scales must be >= 0, got {factor!r} at boundary {boundary}.")
    return sorted(boundaries_and_scales.items())


def _check_products(owner: str, init_value, items: list[tuple[int, float]]) -> None:
    """Refuse scales whose running product from ``init_value`` overflows the default float dtype (concrete ones):
    the schedule's value would be inf from there on, and NaN before (0 * inf selects it out)."""
    values = [init_value] + [factor for _, factor in items]
    if any(isinstance(v, jax.core.Tracer) for v in values):
        return
    dtype = jnp.result_type(float)
    product = float(init_value)
    for boundary, factor in items:
        product *= float(factor)
        if not abs(product) <= float(jnp.finfo(dtype).max):
            raise ValueError(f"{owner}: init_value times the scales up to boundary {boundary} overflows {dtype} "
                             f"(boundaries_and_scales={dict(items)!r}).")


@document_args(SCHEDULE_ARGUMENTS)
def piecewise_constant_schedule(
    init_value: jax.typing.ArrayLike, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    """:math:`\\eta_t = \\eta_0 \\prod_{b \\le t} s_b`: multiply by ``scale`` from each ``boundary`` on.

    ``init_value`` and the scales may be traced; the boundaries must be concrete integers. Concrete scales whose
    running product overflows the float dtype raise ``ValueError`` (Optax's value is NaN before that boundary and
    inf from it); traced ones are not checked.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.piecewise_constant_schedule(1.0, {10: 0.1, 20: 0.1})
        >>> [round(float(schedule(t)), 4) for t in (0, 10, 25)]
        [1.0, 0.1, 0.01]
    """
    owner = "piecewise_constant_schedule"
    validation.real_scalar(owner, "init_value", init_value)
    items = _checked_boundaries(owner, boundaries_and_scales)
    _check_products(owner, init_value, items)

    def schedule(count):
        value = init_value
        for boundary, factor in items:
            reached = 1 - jnp.maximum(0.0, jnp.sign(boundary - count))  # 1 from the boundary on
            value = value * (1 - reached) + reached * factor * value
        return value

    return schedule


@document_args(SCHEDULE_ARGUMENTS)
def piecewise_interpolate_schedule(
    interpolate_type: str, init_value: jax.typing.ArrayLike, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    """Like :func:`piecewise_constant_schedule`, but moving linearly or along a half cosine
    from one value to the next between boundaries (and constant after the last).
    ``init_value`` and the scales may be traced; the boundaries must be concrete integers. Concrete scales whose
    running product overflows the float dtype raise ``ValueError``, as for :func:`piecewise_constant_schedule`.

    Args:
        interpolate_type: ``"linear"`` or ``"cosine"``: how the value moves from one boundary's value to
            the next, along a straight line or a half cosine.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.piecewise_interpolate_schedule("linear", 1.0, {10: 0.5})
        >>> float(schedule(5))
        0.75
    """
    owner = "piecewise_interpolate_schedule"
    if interpolate_type not in ("linear", "cosine"):
        raise ValueError(f"{owner}: interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}.")
    validation.real_scalar(owner, "init_value", init_value)
    items = _checked_boundaries(owner, boundaries_and_scales)
    _check_products(owner, init_value, items)
    return _interpolated(interpolate_type, init_value, tuple(b for b, _ in items), tuple(s for _, s in items))


def _interpolated(interpolate_type: str, init_value, boundaries: tuple, factors: tuple) -> Schedule:
    # boundaries: increasing step numbers, Python ints or traced integer scalars; factors: scales, maybe traced.
    def interpolate(start, end, fraction):
        if interpolate_type == "linear":
            return (end - start) * fraction + start
        return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * fraction) + 1)

    def schedule(count):
        bounds = jnp.stack((0,) + boundaries)
        values = jnp.cumprod(jnp.stack((init_value,) + factors))
        inside = jnp.logical_and(bounds[:-1] <= count, count < bounds[1:])
        fraction = _as_real(count - bounds[:-1]) / jnp.maximum(bounds[1:] - bounds[:-1], 1)
        # Selected, not multiplied by 0 or 1: a value of inf (traced scales) makes 0 * inf NaN elsewhere.
        pieces = jnp.where(inside, interpolate(values[:-1], values[1:], fraction), 0.0)
        return jnp.sum(pieces) + jnp.where(bounds[-1] <= count, values[-1], 0.0)

    return schedule


def _onecycle_checks(
    owner: str, transition_steps: int, peak_value, fractions: Iterable[tuple[str, float]], div_factor, final_div_factor
) -> list[float | None]:
    """Check the arguments of a one-cycle schedule; the fractions as floats (``None`` where traced)."""
    _steps(owner, "transition_steps", transition_steps, minimum=1)
    validation.real_scalar(owner, "peak_value", peak_value)
    checked = [validation.fraction(owner, name, value) for name, value in fractions]
    validation.positive(owner, "div_factor", div_factor)
    validation.positive(owner, "final_div_factor", final_div_factor)
    return checked


def _onecycle(interpolate_type: str, init_value, transition_steps: int, fractions, factors) -> Schedule:
    """The one-cycle ``piecewise_interpolate_schedule``: a boundary at ``int(pct * transition_steps)`` per fraction.

    The arguments are checked, ``init_value`` and the ``factors`` too (by :func:`_derived`).
    With concrete fractions this is Optax's construction (boundaries that coincide
    merge, as dict keys do: the later factor is kept). A traced fraction's boundary is computed when the
    schedule runs, as ``floor(pct * transition_steps)`` in the fraction's dtype, and merges the same way, so that
    traced and concrete fractions give the same values.
    """
    transition_steps = int(transition_steps)
    if not any(isinstance(pct, jax.core.Tracer) for pct in fractions):
        boundaries = [int(pct * transition_steps) for pct in fractions] + [transition_steps]
        items = sorted(dict(zip(boundaries, factors)).items())
        return _interpolated(interpolate_type, init_value, tuple(b for b, _ in items), tuple(s for _, s in items))
    boundaries = tuple(
        jnp.floor(jnp.asarray(pct, jnp.result_type(float)) * transition_steps).astype(jnp.int32) for pct in fractions
    ) + (transition_steps,)
    # A boundary that a later one equals is dropped, as a dict key overwritten: it moves onto the boundary before
    # it (an empty interval) and scales by 1, so the later one's interval starts there.
    kept, factors_kept, before = [], [], 0
    for i, (b, factor) in enumerate(zip(boundaries, factors)):
        dropped = jnp.any(jnp.stack([b == later for later in boundaries[i + 1:]])) if i + 1 < len(boundaries) else False
        before = jnp.where(dropped, before, b)
        kept.append(before)
        factors_kept.append(jnp.where(dropped, 1.0, factor))
    return _interpolated(interpolate_type, init_value, tuple(kept), tuple(factors_kept))


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: jax.typing.ArrayLike,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """One-cycle policy (Smith & Topin 2017), linear: up from ``peak/div_factor`` to ``peak`` by
    ``pct_start``, back down by ``pct_final``, then to ``peak/div_factor/final_div_factor`` at the end.

    Every argument but ``transition_steps`` may be traced. A traced fraction turns
    into its step as ``floor(pct * transition_steps)`` in float32, which can be one
    step later than Optax's float64 ``int(pct * transition_steps)`` when the
    product lies within float32 rounding below a whole number (``0.29 * 100``);
    ``pct_final >= pct_start`` is checked only when both are concrete.

    Args:
        transition_steps: :math:`T`, the length of the whole cycle, after which the value stays at its
            final ``peak_value / (div_factor * final_div_factor)``: a concrete whole number in
            :math:`[1, 2^{31} - 1]`. A fraction whose step ``int(pct * T)`` is another's, or :math:`T`,
            merges with it, as in Optax: only the later move is kept (so a fraction of 1 changes the final
            value), traced or not.
        peak_value: the value at the top of the cycle, step ``int(pct_start * transition_steps)``: a finite
            real scalar, which may be traced.
        pct_start: the fraction of ``transition_steps`` spent rising from ``peak_value / div_factor`` to
            ``peak_value``: in :math:`[0, 1]`, and may be traced.
        pct_final: the fraction of ``transition_steps`` at whose step the value is back down at
            ``peak_value / div_factor``, to fall from there to the final value: in :math:`[0, 1]` and
            ``>= pct_start``, and may be traced.
        div_factor: the cycle rises from ``peak_value / div_factor`` (its value at step 0, unless
            ``int(pct_start * transition_steps)`` is 0): a finite real > 0, which may be traced.
        final_div_factor: the final value, from step ``transition_steps`` on, is ``final_div_factor`` times
            smaller than ``peak_value / div_factor``: a finite real > 0, which may be traced.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.linear_onecycle_schedule(100, peak_value=1.0)
        >>> float(schedule(30))
        1.0
    """
    owner = "linear_onecycle_schedule"
    start, final = _onecycle_checks(
        owner, transition_steps, peak_value, (("pct_start", pct_start), ("pct_final", pct_final)), div_factor, final_div_factor
    )
    if start is not None and final is not None and final < start:
        raise ValueError(f"{owner}: pct_final must be >= pct_start, got {pct_final!r} < {pct_start!r}.")
    return _onecycle(
        "linear",
        _derived(owner, "peak_value / div_factor", peak_value, div_factor),
        transition_steps,
        (pct_start, pct_final),
        (
            div_factor,
            _derived(owner, "1 / div_factor", 1.0, div_factor),
            _derived(owner, "1 / final_div_factor", 1.0, final_div_factor),
        ),
    )


@document_args(linear_onecycle_schedule)
def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: jax.typing.ArrayLike,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """One-cycle policy (Smith & Topin 2017), cosine: up to ``peak`` by ``pct_start``, then down to
    ``peak/(div_factor * final_div_factor)`` at ``transition_steps``, along half cosines.

    Every argument but ``transition_steps`` may be traced, with the same rule for a
    traced ``pct_start`` as in :func:`linear_onecycle_schedule`.

    Example:
        >>> import jaxopt_zoo as jz
        >>> round(float(jz.cosine_onecycle_schedule(100, peak_value=1.0)(30)), 6)
        1.0
    """
    owner = "cosine_onecycle_schedule"
    _onecycle_checks(owner, transition_steps, peak_value, (("pct_start", pct_start),), div_factor, final_div_factor)
    return _onecycle(
        "cosine",
        _derived(owner, "peak_value / div_factor", peak_value, div_factor),
        transition_steps,
        (pct_start,),
        (div_factor, _derived(owner, "1 / (div_factor * final_div_factor)", 1.0, div_factor * final_div_factor)),
    )


def cyclic_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: jax.typing.ArrayLike = 1.0,
    scale_fn: Callable[[jax.Array], jax.typing.ArrayLike] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    """Cyclical learning rates (Smith 2017), PyTorch's ``CyclicLR``: up from ``init_value`` to ``peak_value``
    in ``step_size_up`` steps, back down in ``step_size_down`` (default ``step_size_up``), over and over:

    .. math::

        \\eta_t = \\eta_0 + (\\eta_1 - \\eta_0)\\, h_t\\, s, \\qquad
        h_t = \\begin{cases} r / U & r \\le U \\\\ (U + D - r) / D & r > U \\end{cases}, \\qquad
        r = t \\bmod (U + D),

    where :math:`\\eta_0`, :math:`\\eta_1` are ``init_value``, ``peak_value`` and :math:`U`, :math:`D` the step
    sizes, with the amplitude's scale :math:`s = 1` (``mode="triangular"``), :math:`2^{-(c - 1)}` in cycle
    :math:`c = \\lfloor t / (U + D) \\rfloor + 1` (``"triangular2"``), or :math:`\\gamma^t` (``"exp_range"``).
    A ``scale_fn`` replaces ``mode``: it is called with :math:`c` (``scale_mode="cycle"``) or with :math:`t`
    (``"iterations"``) as a float array and must be written in ``jax.numpy``.

    PyTorch's ``CyclicLR(base_lr, max_lr, ...)`` stepped once per optimizer step is
    ``cyclic_schedule(base_lr, max_lr, ...)``; its ``cycle_momentum`` (on by default) cycles momentum
    inversely, which is ``cyclic_schedule(max_momentum, base_momentum, ...)`` given to
    :func:`inject_hyperparams` as the momentum. Deviations: the step sizes must be whole numbers of steps
    (PyTorch takes floats) and ``step_size_up`` at least 1. The values and ``gamma`` may be traced.

    Args:
        init_value: :math:`\\eta_0`, the value at the start of every cycle (PyTorch's ``base_lr``): a finite real
            scalar, which may be traced.
        peak_value: :math:`\\eta_1`, the value ``step_size_up`` steps into a cycle before the amplitude is scaled
            by :math:`s` (PyTorch's ``max_lr``): a finite real scalar, which may be traced.
        step_size_up: :math:`U`, the steps from the bottom of a cycle to its top: a concrete whole number
            in :math:`[1, 2^{31} - 1]`.
        step_size_down: :math:`D`, the steps from the top back down; ``None`` means ``step_size_up``, and 0
            drops back to ``init_value`` at once (a sawtooth): a concrete whole number >= 0, with
            :math:`U + D \\le 2^{31} - 1`.
        mode: the amplitude's scale :math:`s`, as above: ``"triangular"``, ``"triangular2"`` or
            ``"exp_range"``; unused when ``scale_fn`` is given.
        gamma: :math:`\\gamma`, the base of ``mode="exp_range"``'s scale: > 0 there, and may be traced;
            unused by the other modes and with a ``scale_fn``.
        scale_fn: ``None`` (``mode`` decides), or a function returning the scale :math:`s` of the cycle
            or of the step (see ``scale_mode``), in place of ``mode``.
        scale_mode: what ``scale_fn`` is called with: ``"cycle"`` (:math:`c`, 1 in the first cycle) or
            ``"iterations"`` (the step :math:`t`); unused without ``scale_fn``, but checked.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.cyclic_schedule(0.1, 1.0, step_size_up=4)
        >>> [round(float(schedule(t)), 3) for t in (0, 2, 4, 6, 8)]
        [0.1, 0.55, 1.0, 0.55, 0.1]

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", 2017. https://arxiv.org/abs/1506.01186
    """
    owner = "cyclic_schedule"
    validation.real_scalar(owner, "init_value", init_value)
    validation.real_scalar(owner, "peak_value", peak_value)
    up = _steps(owner, "step_size_up", step_size_up, minimum=1)
    down = up if step_size_down is None else _steps(owner, "step_size_down", step_size_down)
    if up + down > validation.INT32_MAX:
        raise ValueError(f"{owner}: step_size_up + step_size_down must be at most {validation.INT32_MAX} (the int32 "
                         f"step count), got {up} + {down}.")
    if scale_mode not in ("cycle", "iterations"):
        raise ValueError(f"{owner}: scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}.")
    if scale_fn is None:
        if mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(f"{owner}: mode must be 'triangular', 'triangular2' or 'exp_range', got {mode!r}.")
        (validation.positive if mode == "exp_range" else validation.real_scalar)(owner, "gamma", gamma)
        scale_fn = {"triangular": lambda c: 1.0, "triangular2": lambda c: 0.5 ** (c - 1),
                    "exp_range": lambda t: gamma**t}[mode]
        scale_mode = "iterations" if mode == "exp_range" else "cycle"
    elif not callable(scale_fn):
        raise ValueError(f"{owner}: scale_fn must be a function of the cycle or the step (or None), got {scale_fn!r}.")

    def schedule(count):
        cycle, position = jnp.divmod(jnp.asarray(count), up + down)
        height = jnp.where(position <= up, _as_real(position) / up, _as_real(up + down - position) / max(down, 1))
        scale = scale_fn(_as_real(cycle) + 1 if scale_mode == "cycle" else _as_real(count))  # (cycle + 1 may overflow)
        return init_value + (peak_value - init_value) * height * scale

    return schedule


@document_args(WARMUP_ARGUMENTS, SCHEDULE_ARGUMENTS)
def warmup_cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine decay to
    ``end_value`` at ``decay_steps`` (counted from step 0, warm-up included).

    The values and ``exponent`` may be traced (Optax raises for a traced
    ``peak_value``); ``warmup_steps`` and ``decay_steps`` must be concrete.

    Args:
        decay_steps: the step at which the cosine decay reaches ``end_value``, counted from step 0 (so the
            decay takes ``decay_steps - warmup_steps`` steps): a concrete whole number greater than
            ``warmup_steps`` and at most :math:`2^{31} - 1`.
        end_value: the value from step ``decay_steps`` on (unused when ``peak_value`` is 0: the decay is
            then 0 throughout): a finite real scalar, which may be traced.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
        >>> round(float(schedule(5)), 6), round(float(schedule(60)), 6)
        (0.5, 0.5)
    """
    return _warmup_cosine(
        "warmup_cosine_decay_schedule", init_value, peak_value, warmup_steps, decay_steps, end_value, exponent
    )


def _warmup_cosine(
    owner: str, init_value, peak_value, warmup_steps: int, decay_steps: int, end_value, exponent, names=_OWN_NAMES
) -> Schedule:
    def name(argument):
        return names.get(argument, argument)

    warmup = _polynomial(
        owner, init_value, peak_value, 1, warmup_steps, 0,
        {"init_value": name("init_value"), "end_value": name("peak_value"), "transition_steps": name("warmup_steps")},
    )
    if _steps(owner, name("decay_steps"), decay_steps) <= warmup_steps:
        raise ValueError(
            f"{owner}: {name('decay_steps')} must be > {name('warmup_steps')}, got {decay_steps!r} <= {warmup_steps!r}."
        )
    peak = validation.real_scalar(owner, name("peak_value"), peak_value)
    validation.real_scalar(owner, name("end_value"), end_value)
    if peak is not None:
        quotient = f"{name('end_value')} / {name('peak_value')}"
        alpha = 0.0 if peak == 0.0 else _derived(owner, quotient, end_value, peak_value)
    else:  # traced: the cosine part is 0 * ... = 0 for a zero peak whatever alpha is, so any finite alpha does
        alpha = end_value / jnp.where(peak_value == 0.0, 1.0, peak_value)
    decay = _cosine(
        owner, peak_value, decay_steps - warmup_steps, alpha, exponent,
        {"init_value": name("peak_value"), "exponent": name("exponent")},
    )
    return join_schedules([warmup, decay], [warmup_steps])


@document_args(WARMUP_ARGUMENTS, exponential_decay, SCHEDULE_ARGUMENTS)
def warmup_exponential_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: jax.typing.ArrayLike | None = None,
) -> Schedule:
    """Linear warm-up to ``peak_value`` over ``warmup_steps``, then :func:`exponential_decay` from there.

    The values and ``decay_rate`` may be traced; the step counts must be concrete.

    Args:
        transition_begin: the steps after the warm-up during which the value stays ``peak_value``
            before the decay starts: a concrete whole number in :math:`[0, 2^{31} - 1]`.

    Example:
        >>> import jaxopt_zoo as jz
        >>> schedule = jz.warmup_exponential_decay_schedule(0.0, 1.0, 10, transition_steps=10, decay_rate=0.5)
        >>> float(schedule(30))
        0.25
    """
    owner = "warmup_exponential_decay_schedule"
    names = {"end_value": "peak_value", "transition_steps": "warmup_steps"}
    warmup = _polynomial(owner, init_value, peak_value, 1, warmup_steps, 0, names)
    names = {"init_value": "peak_value"}
    decay = _exponential(owner, peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value, names)
    return join_schedules([warmup, decay], [warmup_steps])


def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, jax.typing.ArrayLike]]) -> Schedule:
    """SGDR, warm restarts (Loshchilov & Hutter 2017): one :func:`warmup_cosine_decay_schedule`
    per entry of ``cosine_kwargs``, run back to back. The values may be traced, as in
    :func:`warmup_cosine_decay_schedule`; the step counts must be concrete.

    Args:
        cosine_kwargs: the cycles, in order: an iterable (not a dict) of one or more dicts of
            :func:`~jaxopt_zoo.warmup_cosine_decay_schedule`'s arguments (``init_value``, ``peak_value``,
            ``warmup_steps`` and ``decay_steps``; ``end_value`` and ``exponent`` optional). Each cycle lasts
            its ``decay_steps`` and counts steps from its own start, which must be at most
            :math:`2^{31} - 1`; after the last cycle its ``end_value`` stays.

    Example:
        >>> import jaxopt_zoo as jz
        >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)
        >>> schedule = jz.sgdr_schedule([cycle, cycle])
        >>> float(schedule(11))  # one step into the second warm-up
        0.5
    """
    owner = "sgdr_schedule"
    if isinstance(cosine_kwargs, Mapping) or not isinstance(cosine_kwargs, Iterable):
        raise ValueError(
            f"{owner}: cosine_kwargs must be a sequence of dicts of warmup_cosine_decay_schedule's arguments, "
            f"one per cycle, got {cosine_kwargs!r}."
        )
    signature = inspect.signature(warmup_cosine_decay_schedule)
    schedules, boundaries, start = [], [], 0
    for i, kwargs in enumerate(cosine_kwargs):
        bound, why = None, ""
        try:
            bound = signature.bind(**kwargs) if isinstance(kwargs, Mapping) else None
        except TypeError as error:  # a missing or an unknown key
            why = f" ({error})"
        if bound is None:
            raise ValueError(
                f"{owner}: cosine_kwargs[{i}] must hold warmup_cosine_decay_schedule's arguments "
                f"{tuple(signature.parameters)} (end_value and exponent optional), got {kwargs!r}{why}."
            )
        bound.apply_defaults()
        names = {argument: f"cosine_kwargs[{i}][{argument!r}]" for argument in signature.parameters}
        schedules.append(_warmup_cosine(owner, **bound.arguments, names=names))
        start += bound.arguments["decay_steps"]
        boundaries.append(start)
    if len(boundaries) > 1 and boundaries[-2] > validation.INT32_MAX:
        raise ValueError(
            f"{owner}: the cycles' decay_steps add up to {boundaries[-2]} before the last cycle, beyond the "
            f"int32 step count ({validation.INT32_MAX}); use fewer or shorter cycles."
        )
    if not schedules:
        raise ValueError(f"{owner}: cosine_kwargs must hold at least one cycle, got none.")
    return join_schedules(schedules, boundaries[:-1])


# optax.schedules also holds inject_hyperparams and its kin (jaxopt_zoo.wrappers here, and the top level): found here
# too, so that optax.schedules.X is jz.schedules.X. Looked up when asked for: wrappers imports this module.
_AT_THE_TOP_LEVEL = frozenset({"InjectHyperparamsState", "InjectStatefulHyperparamsState", "StatefulSchedule",
                               "WrappedSchedule", "inject_hyperparams", "inject_stateful_hyperparams"})


def __getattr__(name: str):
    if name in _AT_THE_TOP_LEVEL:
        import jaxopt_zoo

        return getattr(jaxopt_zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
