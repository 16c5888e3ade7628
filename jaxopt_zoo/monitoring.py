"""Wrappers that record what passes through a chain, without changing it: snapshot, monitor, measure_with_ema.

A measurement is any function of the updates (a norm, whether a step was
clipped, a histogram); it is kept in the wrapper's state under its name and
read from there after each step (``state[i].measurement[name]`` for
:func:`snapshot`, ``state[i].measurements[name]`` for :func:`monitor`).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.adam(1e-3), jz.snapshot("update_norm", jz.tree.global_norm))
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, OptState, Updates, check_state, stateless
from jaxopt_zoo.combine import as_transformation, chain
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.storage import StateDtype, resolve
from jaxopt_zoo.transforms.momentum import ema

__all__ = [
    "MonitorState",
    "SnapshotState",
    "measure_with_ema",
    "monitor",
    "snapshot",
]

Measure = Callable[[Updates], Any]


def _require_measure(owner: str, name: str, measure: Any) -> None:
    if not callable(measure):
        raise ValueError(f"{owner}: {name} must be a callable of the updates, got {measure!r}.")


class SnapshotState(NamedTuple):
    """The last measurement, under its name: ``{measure_name: measure(updates)}``."""

    measurement: dict[str, Any]


def snapshot(measure_name: str, measure: Measure) -> GradientTransformation:
    """Keep ``measure(updates)`` of the updates reaching this point of a chain; pass them on unchanged.

    .. math::

        u_t = g_t, \\qquad s_t = \\{\\text{name}: m(g_t)\\}, \\qquad s_0 = \\{\\text{name}: m(\\theta_0)\\}.

    The same transformation and state as ``optax.snapshot`` (the state starts
    with the measure of the params, as there). Read it from
    ``state[i].measurement[measure_name]``. Deviation from Optax: a
    ``measure_name`` that is not a string or a ``measure`` that is not
    callable raises when it is built.

    Args:
        measure_name: the key of the measurement in the state's ``measurement`` dict; a string.
        measure: the function of the updates that gives the measurement (any tree of arrays); ``init``
            calls it on the params.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.chain(jz.snapshot("norm_before_clip", jz.tree.global_norm), jz.clip_by_global_norm(1.0))
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> state[0].measurement["norm_before_clip"]
        Array(5., dtype=float32)
    """
    if not isinstance(measure_name, str):
        raise ValueError(f"snapshot: measure_name must be a string, got {measure_name!r}.")
    _require_measure("snapshot", "measure", measure)

    def init(params):
        return SnapshotState({measure_name: measure(params)})

    def update(updates, state, params=None, **extra_args):
        del state, params, extra_args
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init, update)


class MonitorState(NamedTuple):
    """The last measurement of each measure, by name, and the measures' own states (a tuple, in order)."""

    measurements: dict[str, Any]
    measure_states: tuple[OptState, ...]


def _as_measure(name: Any, measure: Any) -> GradientTransformation:
    if not isinstance(name, str):
        raise ValueError(f"monitor: the names of measures must be strings, got {name!r}.")
    if callable(getattr(measure, "init", None)) and callable(getattr(measure, "update", None)):
        return as_transformation("monitor", measure)
    _require_measure("monitor", f"measures[{name!r}]", measure)
    return stateless(lambda updates, params: measure(updates))


def _measurement_shape(measure: GradientTransformation, params: Any) -> Any:
    """The shapes and dtypes ``measure`` returns for updates shaped like ``params``; ``None`` if it cannot tell.

    A measure that reads an extra argument of ``update`` (a loss, say) cannot run
    without it: it has no shape until the first update.
    """
    try:
        return jax.eval_shape(lambda p: measure.update(p, measure.init(p), p)[0], params)
    except Exception:  # noqa: BLE001 (any failure of a dry run means: unknown until the first update)
        return None


def monitor(measures: Mapping[str, GradientTransformation | Measure]) -> GradientTransformation:
    """Record several measurements of the updates, some with state (a moving average); pass the updates on.

    Each measure is a function of the updates or a transformation whose
    *output* is the measurement (:func:`measure_with_ema`). At each step

    .. math::

        u_t = g_t, \\qquad (m^{(j)}_t, s^{(j)}_t) = \\mathrm{measure}_j(g_t, s^{(j)}_{t-1}),

    kept as ``state.measurements[name]`` and ``state.measure_states[j]``
    (extra arguments of ``update`` reach every measure). The same measurements
    and measure states as ``optax.monitor``.

    Deviations from Optax: ``measurements`` holds every name from ``init``
    on, as zeros shaped (and, under :func:`~jaxopt_zoo.init_sharded`, laid out)
    like what the measure returns for updates shaped like the params (Optax's
    starts as ``{}`` and gains its keys at the first update, so its state
    changes structure: a ``lax.scan`` carry, a donated jitted step or a
    checkpoint template built from ``init`` do not match it; a measure that
    reads an extra argument of ``update``, which ``init`` does not have, still
    joins at the first update); a name that is not a string or a measure that
    is neither callable nor a transformation raises when it is built.

    Args:
        measures: a dict from names (strings) to measures, run in its order: functions of the updates,
            or transformations (with ``init`` and ``update``, an Optax one too) whose output updates
            are the measurement.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.chain(
        ...     jz.monitor({"norm": jz.tree.global_norm,
        ...                 "clipped": jz.measure_with_ema(lambda g: jz.tree.global_norm(g) > 1.0, decay=0.5)}),
        ...     jz.clip_by_global_norm(1.0),
        ... )
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> state[0].measurements
        {'norm': Array(5., dtype=float32), 'clipped': Array(1., dtype=float32)}
    """
    if not isinstance(measures, Mapping):
        raise ValueError(f"monitor: measures must be a dict of names to measures, got {measures!r}.")
    transforms = {name: _as_measure(name, measure) for name, measure in measures.items()}

    def init(params):
        states = tuple(t.init(params) for t in transforms.values())
        # Zeros shaped like each measurement, so that the state's structure never changes.
        measurements = {}
        for name, t in transforms.items():
            shape = _measurement_shape(t, params)
            if shape is not None:
                # zeros_like keeps the sharding a traced measurement has under init_sharded's Explicit axes.
                measurements[name] = jax.tree.map(jnp.zeros_like, shape)
        return MonitorState(measurements, states)

    def update(updates, state, params=None, **extra_args):
        check_state("monitor", state, MonitorState)
        measurements, states = {}, []
        for (name, t), measure_state in zip(transforms.items(), state.measure_states):
            measurements[name], new_state = t.update(updates, measure_state, params, **extra_args)
            states.append(new_state)
        return updates, MonitorState(measurements, tuple(states))

    return GradientTransformation(init, update)


@document_args(snapshot, ema)
def measure_with_ema(
    measure: Measure, decay: jax.typing.ArrayLike, debias: bool = True, accumulator_dtype: StateDtype = None
) -> GradientTransformation:
    """A measure for :func:`monitor`: an exponential moving average of ``measure(updates)``.

    .. math::

        a_t = \\beta a_{t-1} + (1 - \\beta)\\, m(g_t), \\quad a_0 = 0, \\qquad
        \\text{output}_t = a_t / (1 - \\beta^t) \\ (\\texttt{debias=True}) \\ \\text{or} \\ a_t .

    It outputs the average (not the updates), so use it inside :func:`monitor`.
    It is ``chain(stateless(measure), ema(decay, debias, accumulator_dtype))``
    with the average shaped like ``measure(params)``: the same state
    (``(EmptyState(), EmaState(count, ema))``) and numbers as
    ``optax.measure_with_ema``.

    Deviations from Optax: the average of a boolean or integer measurement
    (say, whether a step was clipped) is float32 from ``init`` on (Optax's
    starts as that dtype and turns float32 at the first update, a change of
    state structure); ``accumulator_dtype`` also takes the storage objects
    (:class:`~jaxopt_zoo.StochasticBF16`, :class:`~jaxopt_zoo.Blockwise8Bit`);
    ``decay`` must be in ``[0, 1)`` and ``debias`` a bool.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.monitor({"norm_ema": jz.measure_with_ema(jz.tree.global_norm, decay=0.5, debias=False)})
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> state.measurements["norm_ema"]  # (1 - 0.5) * 5
        Array(2.5, dtype=float32)
    """
    _require_measure("measure_with_ema", "measure", measure)
    validation.decay_rate("measure_with_ema", "decay", decay)
    validation.flag("measure_with_ema", "debias", debias)
    moving_average = ema(decay, debias, resolve("measure_with_ema", "accumulator_dtype", accumulator_dtype))
    # The average is shaped like the measurement, not like the params.
    of_measurement = GradientTransformation(lambda params: moving_average.init(measure(params)), moving_average.update)
    return chain(stateless(lambda updates, params: measure(updates)), of_measurement)
