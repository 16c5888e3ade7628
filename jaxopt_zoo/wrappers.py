"""Wrappers around whole optimizers: injected hyperparameters, NaN safety, gradient
accumulation, lookahead, and an exponential or equal-weight (SWA) average of the parameters."""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import storage, tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    check_state,
    safe_increment,
    static_only,
    zero_count,
)
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName, sum_over_shards


class InjectHyperparamsState(NamedTuple):
    """Step count, the current numeric hyperparameters (arrays), and the inner optimizer's state."""

    count: jax.Array
    hyperparams: dict[str, jax.Array]
    inner_state: OptState


def _hyperparam_dtype(params: Params, requested: Any) -> Any:
    # float32, or float64 when the params hold float64: never bfloat16, whose
    # 8-bit mantissa would round a learning rate visibly.
    if requested is not None:
        return requested
    wide = any(jnp.asarray(x).dtype == jnp.float64 for x in jax.tree.leaves(params))
    return jnp.float64 if wide else jnp.float32


def _annotation_names(parameter: inspect.Parameter) -> set[str]:
    # Whole names of the annotation: "Sequence[int]" holds int, "Point" does not.
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return set()
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return set(re.findall(r"\w+", text))


def _takes_numbers(parameter: inspect.Parameter) -> bool:
    # A hyperparameter that may be a schedule: a number by default, required with a numeric annotation
    # (learning_rate: ScalarOrSchedule) or none, or optional (None by default) with a real-number annotation
    # (sgd's momentum: ArrayLike | None, as Optax schedules it). One whose default is a flag or an object, or None
    # for an object, a count or a key (mask, mu_dtype, seed, max_block_dim) never is, nor a required function or
    # object (masked's mask, partition's param_labels).
    default, names = parameter.default, _annotation_names(parameter)
    if default is inspect.Parameter.empty:
        if parameter.annotation is inspect.Parameter.empty:
            return True
        return "Callable" not in names and bool(names & {"ScalarOrSchedule", "Schedule", "ArrayLike", "float", "int"})
    if default is None:
        not_a_real = {"Callable", "int", "str", "Mapping", "Sequence", "Array"}
        return not names & not_a_real and bool(names & {"ScalarOrSchedule", "Schedule", "ArrayLike", "float"})
    return isinstance(default, (int, float)) and not isinstance(default, bool)


def _takes_reals(parameter: inspect.Parameter) -> bool:
    # A real-valued hyperparameter (annotated float or a schedule without int, or a float by default), which a
    # Python or NumPy integer such as jz.torch's momentum=0 must not make an int32 array: an edit to 0.9 would
    # need a float array and a second compilation. Counts (ns_steps: int, patience: ArrayLike = 10) stay ints.
    names = _annotation_names(parameter)
    if "int" in names:
        return False
    default = parameter.default
    return bool(names & {"float", "Number", "ScalarOrSchedule", "Schedule"}) or (
        isinstance(default, float) and not isinstance(default, bool))


def _static_arguments(
    owner: str, inner_factory: Callable[..., GradientTransformation], static_args: str | Iterable[str]
) -> tuple[inspect.Signature, set[str]]:
    """The factory's signature, and the names kept static: ``static_args``, those only ``init`` reads
    (declared with :func:`~jaxopt_zoo.init_only`; an edit of them could change nothing) and those that decide the
    update's program (declared with :func:`~jaxopt_zoo.static_only`; traced, they raise)."""
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    if not static <= set(signature.parameters):
        raise ValueError(
            f"{owner}: static_args {sorted(static - set(signature.parameters))} are not "
            f"parameters of {getattr(inner_factory, '__name__', inner_factory)}."
        )
    declared = getattr(inner_factory, "init_only_args", set()) | getattr(inner_factory, "static_only_args", set())
    return signature, static | declared


def _split_hyperparameters(
    signature: inspect.Signature, static: set[str], arguments: dict[str, Any], *, stateful: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(schedules, numeric, other)``: the factory's arguments that are scheduled, injected as numbers, or static.

    Flags, unset options, classes (``jnp.bfloat16`` is callable, not a schedule), masks, storages and label
    functions stay static; a callable is a schedule only for an argument that takes numbers. With
    ``stateful``, stateful schedules are kept as they are and plain ones wrapped in :class:`WrappedSchedule`.
    """
    schedules, numeric, other = {}, {}, {}
    for name, value in arguments.items():
        if name in static or isinstance(value, (bool, np.bool_, type)) or value is None:
            other[name] = value
        elif stateful and _is_stateful_schedule(value):
            schedules[name] = value
        elif isinstance(value, (int, np.integer)) and _takes_reals(signature.parameters[name]):
            numeric[name] = float(value)
        elif isinstance(value, (int, float, np.ndarray, np.generic, jax.Array)):
            numeric[name] = value
        elif callable(value) and _takes_numbers(signature.parameters[name]):
            schedules[name] = WrappedSchedule(value) if stateful else value
        else:
            other[name] = value
    return schedules, numeric, other


def _in_gradient_dtypes(new_updates: Any, updates: Any) -> Any:
    # Injected float32 hyperparameters must not widen bfloat16 updates. Updates shaped otherwise than the
    # gradients (lookahead's LookaheadParams) are left as they are: their dtypes follow the params'.
    if jax.tree.structure(new_updates, is_leaf=tree.is_none) != jax.tree.structure(updates, is_leaf=tree.is_none):
        return new_updates
    return tree.cast_like(new_updates, updates)


def _state_array(value: Any, dtype: Any) -> jax.Array:
    # A copy: the state must not alias the caller's array (donation would delete it).
    value = jnp.array(value, copy=True)
    return value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value


def _copies(hyperparams: dict[str, jax.Array]) -> dict[str, jax.Array]:
    # For the inner init: a state leaf it makes of a hyperparameter as it is (Prodigy's d_0, DoWG's first estimate)
    # would be the very buffer of the hyperparams' leaf, and a donated step would donate that buffer twice.
    return {k: jnp.copy(v) for k, v in hyperparams.items()}


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformation]:
    """Make an optimizer's numeric hyperparameters part of its state.

    ``inject_hyperparams(jz.adamw)(learning_rate=1e-3, weight_decay=1e-2)`` is
    ``adamw`` whose ``state.hyperparams["learning_rate"]`` can be read and
    edited between steps without recompiling. A hyperparameter given as a
    schedule is evaluated at the step count each step and stored there too.
    Only numeric hyperparameters are injected: a callable is a schedule only
    for an argument that is numeric by default, required and annotated as a
    number or schedule, or ``None`` by default and annotated as a real number
    or schedule (``learning_rate``, ``weight_decay``, ``b1``, :func:`sgd`'s
    ``momentum``, ...; an optional count such as ``warmup_steps`` stays static).
    Booleans, ``None``, strings, dtypes, storages, masks and labels (a callable
    ``mask``, ``param_labels``, required or not) and the names in
    ``static_args`` stay static. Deviation from Optax, which takes
    any callable for a schedule: ``mu_dtype=jnp.bfloat16`` (a callable class)
    or ``mask=fn`` would become a "schedule" there.

    Deviation from Optax: arguments that only ``init`` reads (declared with
    :func:`~jaxopt_zoo.init_only`: Adagrad's ``initial_accumulator_value``,
    RMSprop's ``initial_scale``, Rprop's initial step ``learning_rate``, PRNG
    ``key``/``seed``, ...) stay static and are not in ``state.hyperparams``.
    Optax injects them, and an edit there silently changes nothing. So do the
    integers that decide the update's program (declared with
    :func:`~jaxopt_zoo.static_only`: Shampoo's and SOAP's ``precondition_frequency``
    and ``max_precond_dim``, GaLore's ``rank``, L-BFGS's ``memory_size``, ...),
    which would raise traced (Optax's must be named in ``static_args``).

    Deviation from Optax: hyperparameters are float32 (float64 with float64
    params) whatever the params' dtype, a Python integer given for a real one
    too (``jz.torch.sgd``'s ``momentum=0``: Optax keeps an int32 array, which an
    edit to 0.9 must replace, compiling the step again; counts such as
    ``ns_steps`` stay integers); Optax uses the params' widest dtype,
    where bfloat16 rounds ``b2=0.999`` to 1. With bfloat16 params the
    optimizer's arithmetic therefore runs in float32 (its state keeps its own
    dtypes, and the updates are cast back to the gradients' dtype), so it is
    more accurate than the unwrapped optimizer, not equal to it. With float32
    params the trajectory equals the unwrapped one up to the rounding of a
    hyperparameter array against a Python float. A stateful schedule among the
    arguments makes it :func:`inject_stateful_hyperparams`, as in Optax.

    Args:
        inner_factory: the function that builds the optimizer (``jz.adamw``, an Optax alias, one of your
            own): its signature says which arguments there are; it is called once to check them, then
            with the current hyperparameters at ``init`` and at every ``update``.
        static_args: the name, or names, of ``inner_factory``'s arguments to pass as given, never injected
            (say a count that it needs concrete); a name it does not take raises.
        hyperparam_dtype: the dtype of the floating hyperparameters in the state (integer ones stay
            integers); ``None``: float32, or float64 where a leaf of the params is float64.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.inject_hyperparams(jz.adam)(learning_rate=1e-3)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> # Takes effect at the next step; keep it a float32 array so a jitted step is not retraced.
        >>> state.hyperparams["learning_rate"] = jnp.asarray(1e-4, jnp.float32)
    """
    signature, static = _static_arguments("inject_hyperparams", inner_factory, static_args)

    @functools.wraps(inner_factory)
    def build(*args, **kwargs) -> GradientTransformation:
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        if any(_is_stateful_schedule(v) for k, v in arguments.arguments.items() if k not in static):
            return inject_stateful_hyperparams(inner_factory, static_args, hyperparam_dtype)(*args, **kwargs)
        schedules, numeric, other = _split_hyperparameters(signature, static, arguments.arguments, stateful=False)
        # Bad hyperparameters fail here, not at init; schedules are checked by their first value.
        inner_factory(**other, **numeric, **{k: f(zero_count()) for k, f in schedules.items()})

        def current(hyperparams, count, dtype):
            values = {k: _state_array(v, dtype) for k, v in hyperparams.items() if k not in schedules}
            values.update({k: _state_array(f(count), dtype) for k, f in schedules.items()})
            return values

        def init(params):
            hyperparams = current(numeric, zero_count(), _hyperparam_dtype(params, hyperparam_dtype))
            inner_state = inner_factory(**other, **_copies(hyperparams)).init(params)
            return InjectHyperparamsState(zero_count(), hyperparams, inner_state)

        def update(updates, state, params=None, **extra_args):
            check_state("inject_hyperparams", state, InjectHyperparamsState)
            dtype = _hyperparam_dtype(state.hyperparams, hyperparam_dtype)
            hyperparams = current(state.hyperparams, state.count, dtype)
            inner = as_transformation("inject_hyperparams", inner_factory(**other, **hyperparams))
            new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
            new_updates = _in_gradient_dtypes(new_updates, updates)
            return new_updates, InjectHyperparamsState(safe_increment(state.count), hyperparams, inner_state)

        return GradientTransformation(init, update)

    return build


class ApplyIfFiniteState(NamedTuple):
    """Consecutive and total non-finite steps, whether the last step was finite, and the inner state."""

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: OptState


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int, *, axis_name: AxisName = None
) -> GradientTransformation:
    """Skip steps whose gradients, or the inner optimizer's new state, hold a NaN or an infinity.

    A skipped step returns updates of ``-0.0`` (so ``apply_updates`` leaves
    every parameter bit for bit unchanged, ``-0.0`` included) and keeps the
    inner state exactly as it was; it is counted in ``notfinite_count`` and
    ``total_notfinite``. After ``max_consecutive_errors`` skipped steps in a
    row, every further non-finite step is applied (as in Optax) until a finite
    one resets the count, so that a run that cannot recover fails visibly
    instead of stalling.

    Inside ``shard_map`` every device must take the same decision, so pass
    ``axis_name`` (an addition to Optax), the mesh axes the updates may be
    sharded over: a step is skipped everywhere if any shard is non-finite.

    Deviation from Optax, which looks at the gradients only: finite gradients
    can still overflow a state (a gradient of 2e19 squares to infinity in
    Adam's second moment, freezing that parameter for good), so the new state
    is checked too, 8-bit moments through their codes.

    Args:
        inner: the optimizer to guard (an Optax one too).
        max_consecutive_errors: how many non-finite steps in a row are skipped, at most (0 skips none):
            a whole number in :math:`[0, 2^{31} - 1]`.
        axis_name: ``None``, a mesh axis name or a tuple of them: inside ``shard_map``, the mesh axes the
            updates and the inner state may be sharded over (``()`` lets each device decide on its
            own shards).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.apply_if_finite(jz.adam(1e-3), max_consecutive_errors=5)
    """
    max_consecutive_errors = validation.whole_number(
        "apply_if_finite", "max_consecutive_errors", max_consecutive_errors, 0, validation.INT32_MAX
    )
    inner = as_transformation("apply_if_finite", inner)
    axis_name = validation.axis_name("apply_if_finite", axis_name)

    def init(params):
        return ApplyIfFiniteState(zero_count(), jnp.array(True), zero_count(), inner.init(params))

    def update(updates, state, params=None, **extra_args):
        check_state("apply_if_finite", state, ApplyIfFiniteState)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        leaves = [g for g in jax.tree.leaves(updates) if g is not None]
        bad = [(jnp.any(~jnp.isfinite(g)).astype(jnp.int32), g) for g in leaves]  # non-finite shards
        bad += [(flag.astype(jnp.int32), x) for flag, x in storage.non_finite_leaves(new_inner)]
        finite = sum_over_shards("apply_if_finite", bad, axis_name) == 0
        notfinite_count = jnp.where(finite, 0, safe_increment(state.notfinite_count))
        apply = jnp.logical_or(finite, notfinite_count > max_consecutive_errors)
        new_updates = tree.map_updates(lambda u: jnp.where(apply, u, jnp.full_like(u, -0.0)), new_updates)
        new_inner = jax.tree.map(lambda new, old: jnp.where(apply, new, old), new_inner, state.inner_state)
        total = jnp.where(finite, state.total_notfinite, safe_increment(state.total_notfinite))
        return new_updates, ApplyIfFiniteState(notfinite_count, finite, total, new_inner)

    return GradientTransformation(init, update)


class MultiStepsState(NamedTuple):
    """Micro-step within the current accumulation, applied steps so far, inner state, accumulated gradients."""

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: OptState
    acc_grads: Updates
    skip_state: Any = ()


def _check_first_k(every_k_schedule: Callable[[jax.Array], Any]) -> None:
    # The schedule's value at step 0 is known at construction: k < 1 or a fraction there never emits.
    try:
        first = every_k_schedule(zero_count())
    except Exception as error:  # a schedule that cannot run on a concrete count is checked when traced
        raise ValueError(
            f"MultiSteps: every_k_schedule must be a callable of the int32 step count; calling it at step 0 "
            f"raised {type(error).__name__}: {error}"
        ) from None
    if isinstance(first, jax.core.Tracer):
        return
    try:
        validation.whole_number("MultiSteps", "every_k_schedule(0)", first, 1, validation.INT32_MAX)
    except ValueError:
        raise ValueError(
            f"MultiSteps: every_k_schedule must return a whole number k >= 1 (the number of micro-steps to "
            f"accumulate), but every_k_schedule(0) = {first!r}; with it no update would ever be applied. "
            "Return an integer >= 1 at every step."
        ) from None


class MultiSteps:
    """Gradient accumulation: apply ``opt`` once every ``k`` calls, to the mean of the ``k`` gradients.

    .. math::

        \\bar g_j = \\bar g_{j-1} + (g_j - \\bar g_{j-1}) / j \\ (j = 1..k), \\qquad
        u = \\begin{cases} \\mathrm{opt}(\\bar g_k) & j = k \\\\ 0 & \\text{otherwise} \\end{cases}

    (the sum instead of the mean with ``use_grad_mean=False``). The mean is
    kept in ``accumulator_dtype`` (float32), so bfloat16 micro-batch gradients
    do not lose precision (``accumulator_dtype=None`` keeps the params' dtype).
    ``k`` may be a schedule of the number of applied steps. A constant ``k``
    must be a whole number in ``[1, 2**31 - 1]``, and a schedule's value at step
    0 is checked the same way when ``MultiSteps`` is built (Optax accepts
    ``k = 0``, ``-1`` or ``2.5`` and then never applies an update). Later values
    of a schedule cannot be checked: one that returns less than 1 or a fraction
    at some step stops the updates from then on, silently. Everything is
    computed with ``jnp.where``: no Python control flow inside ``jit``.

    A ``None`` update leaf (a frozen param) stays ``None``, and its
    accumulator and inner state are kept as they were for that call (Optax
    steps it with its stale accumulator); the mean assumes a leaf is given
    at every call of a cycle.

    Same interface as ``optax.MultiSteps``, and the same numbers bit for bit
    under ``jax.jit`` (or ``nnx.jit``, e.g. a jitted ``nnx.Optimizer.update``)
    while the gradients are finite. A non-finite gradient (without a
    ``should_skip_update_fn`` that skips it) differs: here the accumulator
    is reset to zeros at each applied step and the calls in between return
    exact zeros (``jnp.where``), where Optax multiplies by 0 and 1, so its
    accumulator keeps a NaN for good and its in-between updates are NaN.
    Run eagerly, op by op (``nnx.Optimizer.update`` outside ``nnx.jit``), the
    two drift apart in the last bits (with ``adam(1e-2)``, ``k = 3``: equal
    for 5 steps, then about 1e-7 after 30): Optax runs the inner update inside
    ``lax.cond``, which compiles it even eagerly, while here it runs op by op,
    and XLA's compiled arithmetic rounds differently from op-by-op execution.
    The formulas are the same (the same holds for ``adam`` itself run eagerly
    against ``jax.jit(adam)``). Use ``.gradient_transformation()`` (or the
    object itself) as a transformation.

    Args:
        opt: the optimizer applied to the accumulated gradient, every ``k`` calls (an Optax one too).
        every_k_schedule: :math:`k`, the calls accumulated per applied step: a whole number in
            :math:`[1, 2^{31} - 1]`, or a callable of the number of applied steps returning one (checked at 0).
        use_grad_mean: ``True``: apply ``opt`` to the mean of the ``k`` gradients; ``False``: to their sum.
        should_skip_update_fn: ``None``, or ``fn(updates, gradient_step, params) -> (skip, skip_state)``
            (:func:`~jaxopt_zoo.skip_not_finite`, :func:`~jaxopt_zoo.skip_large_updates`): a call whose ``skip`` is
            true leaves the accumulator and the inner state as they were and returns zeros; ``skip_state`` is kept
            in the state.
        accumulator_dtype: the dtype of the accumulated gradient: ``jnp.float32`` (the default, also for float64
            params), another floating dtype, or ``None`` (each param's own).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.MultiSteps(jz.adamw(1e-3), every_k_schedule=4)
        >>> state = tx.init({"w": jnp.zeros(3)})
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[jax.Array], jax.Array],
        use_grad_mean: bool = True,
        should_skip_update_fn: Callable[..., tuple[jax.Array, Any]] | None = None,
        accumulator_dtype: Any = jnp.float32,
    ):
        if not callable(every_k_schedule):
            k = validation.whole_number("MultiSteps", "every_k_schedule", every_k_schedule, 1, validation.INT32_MAX)
            every_k_schedule = lambda step: k
        else:
            _check_first_k(every_k_schedule)
        validation.flag("MultiSteps", "use_grad_mean", use_grad_mean)
        self._opt = as_transformation("MultiSteps", opt)
        self._every_k = every_k_schedule
        self._use_grad_mean = use_grad_mean
        self._should_skip = should_skip_update_fn or (lambda updates, step, params: (jnp.array(False), ()))
        self._dtype = validation.optional_dtype("MultiSteps", "accumulator_dtype", accumulator_dtype)

    @property
    def inner_opt(self) -> GradientTransformation:
        return self._opt

    def _skip(self, updates, step, params) -> tuple[jax.Array, Any]:
        returned = self._should_skip(updates, step, params)
        if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
            raise ValueError("MultiSteps: should_skip_update_fn must return a pair (skip, skip_state), as Optax's do "
                             f"(skip a boolean scalar), got {returned!r}.")
        skip = jnp.asarray(returned[0])  # a Python bool too: ~True would be -2
        if skip.shape != () or skip.dtype != jnp.bool_:
            raise ValueError(f"MultiSteps: should_skip_update_fn must return a boolean scalar, got {skip!r}.")
        return skip, returned[1]

    def init(self, params: Params) -> MultiStepsState:
        _, skip_state = self._skip(tree.zeros_like(params), zero_count(), params)
        return MultiStepsState(
            zero_count(), zero_count(), self._opt.init(params), tree.zeros_like(params, self._dtype), skip_state
        )

    def update(self, updates, state: MultiStepsState, params=None, **extra_args):
        check_state("MultiSteps", state, MultiStepsState)
        tree.check_same_structure("MultiSteps", updates, state.acc_grads, "the accumulated gradients (state.acc_grads)")
        k = self._every_k(state.gradient_step)
        skip, skip_state = self._skip(updates, state.gradient_step, params)
        if self._use_grad_mean:  # Welford's running mean, stable in low precision
            accumulate = lambda g, acc: acc + (g - acc) / (state.mini_step + 1)
        else:
            accumulate = lambda g, acc: g + acc
        acc_grads = tree.map_state(accumulate, updates, state.acc_grads)
        # A None update leaf stays None for the inner optimizer, and its accumulator is kept as it was.
        mean = tree.map_updates(lambda g, acc: acc.astype(jnp.result_type(g)), updates, acc_grads)
        final, inner_state = self._opt.update(mean, state.inner_opt_state, params, **extra_args)
        emit = jnp.logical_and(state.mini_step == k - 1, jnp.logical_not(skip))
        keep = lambda new, old: jnp.where(emit, new, old).astype(jnp.asarray(old).dtype)
        new_state = MultiStepsState(
            mini_step=jnp.where(skip, state.mini_step, safe_increment(state.mini_step) % k),
            gradient_step=jnp.where(emit, safe_increment(state.gradient_step), state.gradient_step),
            inner_opt_state=jax.tree.map(keep, inner_state, state.inner_opt_state),
            acc_grads=tree.map_state(
                lambda g, old, new: jnp.where(skip, old, jnp.where(emit, 0, new)).astype(old.dtype),
                updates, state.acc_grads, acc_grads,
            ),
            skip_state=skip_state,
        )
        return tree.map_updates(lambda u: jnp.where(emit, u, jnp.zeros_like(u)), final), new_state

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """Whether the last call applied the inner optimizer."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulator as a plain :class:`GradientTransformation`."""
        return GradientTransformation(self.init, self.update)


class LookaheadState(NamedTuple):
    """The fast optimizer's state and the steps since the last synchronisation."""

    fast_state: OptState
    steps_since_sync: jax.Array


class LookaheadParams(NamedTuple):
    """Lookahead's two copies of the parameters: ``fast`` (trained) and ``slow`` (averaged)."""

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> "LookaheadParams":
        """Both copies equal to ``params`` (separate buffers, so the params can be donated)."""
        return cls(fast=params, slow=jax.tree.map(lambda p: jnp.array(p, copy=True), params))


def lookahead(
    fast_optimizer: GradientTransformation, sync_period: int, slow_step_size: float, reset_state: bool = False
) -> GradientTransformation:
    """Lookahead (Zhang et al. 2019): every ``k`` fast steps, pull the slow weights towards the fast ones.

    .. math::

        \\phi \\leftarrow \\phi + \\alpha (\\theta_k - \\phi), \\qquad \\theta_0 \\leftarrow \\phi

    The params are :class:`LookaheadParams` (``fast``, ``slow``) and the
    updates returned are for both, so ``apply_updates`` advances both. Same
    interface and numbers as ``optax.lookahead``; ``reset_state`` re-initialises
    the fast optimizer's state at each synchronisation.

    Deviation from Optax: ``init`` given plain params raises (Optax warns and
    treats them as the fast params); updates given as ``LookaheadParams``, or
    shaped otherwise than the fast params, raise naming them (Optax fails inside
    JAX's tree functions).

    Args:
        fast_optimizer: the optimizer of the fast weights, run at every step (an Optax one too).
        sync_period: :math:`k`, the fast steps from one synchronisation to the next: a whole number in
            :math:`[1, 2^{31} - 1]` (1 synchronises at every step).
        slow_step_size: :math:`\\alpha \\in [0, 1]`, how far the slow weights move towards the fast ones
            at a synchronisation (1: all the way; 0: not at all); may be traced.
        reset_state: re-initialise the fast optimizer's state at each synchronisation; a bool.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.lookahead(jz.adam(1e-3), sync_period=5, slow_step_size=0.5)
        >>> params = jz.LookaheadParams.init_synced({"w": jnp.zeros(2)})
        >>> state = tx.init(params)

    References:
        Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019.
    """
    sync_period = validation.whole_number("lookahead", "sync_period", sync_period, 1, validation.INT32_MAX)
    validation.fraction("lookahead", "slow_step_size", slow_step_size)
    validation.flag("lookahead", "reset_state", reset_state)
    fast_optimizer = as_transformation("lookahead", fast_optimizer)

    def init(params):
        if tree.is_params_placeholder(params):  # tree.map_params finding the per-parameter parts of the state
            return LookaheadState(fast_optimizer.init(params), zero_count())
        if not isinstance(params, LookaheadParams):
            raise ValueError(
                "lookahead: params must be LookaheadParams(fast=..., slow=...); "
                "start from LookaheadParams.init_synced(params)."
            )
        return LookaheadState(fast_optimizer.init(params.fast), zero_count())

    def update(updates, state, params=None, **extra_args):
        check_state("lookahead", state, LookaheadState)
        if not isinstance(params, LookaheadParams):
            raise ValueError("lookahead needs the parameters as LookaheadParams(fast=..., slow=...) in update.")
        if isinstance(updates, LookaheadParams):
            raise ValueError(
                "lookahead: the updates are the gradients of the fast params (jax.grad of the loss at params.fast), "
                "not LookaheadParams: the slow params take no gradient."
            )
        tree.check_same_structure("lookahead", updates, params.fast, "the fast params (params.fast)")
        fast_updates, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast, **extra_args)
        sync = state.steps_since_sync == sync_period - 1
        # On a sync step: slow += alpha * (fast + u - slow); fast jumps to the new slow.
        # A None update leaves both copies of its param where they are, sync step or not.
        gap = tree.map_updates(lambda u, f, s: f + u - s, fast_updates, params.fast, params.slow)
        slow_updates = tree.map_updates(lambda d: slow_step_size * sync * d, gap)
        fast_updates = tree.map_updates(lambda u, d: u - sync * (1 - slow_step_size) * d, fast_updates, gap)
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = jax.tree.map(lambda now, new: jnp.where(sync, new, now), fast_state, fresh)
        steps = (state.steps_since_sync + 1) % sync_period
        return LookaheadParams(fast_updates, slow_updates), LookaheadState(fast_state, steps)

    return GradientTransformation(init, update)


def _average_of(params: Params) -> Params:
    # An average's first value: a copy of the params, in float32 at least (bfloat16 rounds its small moves away).
    return jax.tree.map(lambda p: jnp.array(p, dtype=jnp.promote_types(p.dtype, jnp.float32)), params)


class EmaParamsState(NamedTuple):
    """The exponential moving average of the parameters (the evaluation weights)."""

    ema: Params


def ema_params(decay: float) -> GradientTransformation:
    """Keep an exponential moving average of the parameters, for evaluation (Polyak averaging).

    Put it last in a chain, so it sees the final updates :math:`u_t`:

    .. math::

        \\bar\\theta_0 = \\theta_0, \\qquad \\bar\\theta_{t+1} = \\beta \\bar\\theta_t + (1 - \\beta)(\\theta_t + u_t).

    The updates pass through unchanged; read the average from the state's
    ``ema`` field (e.g. ``state[-1].ema`` at the end of a chain). The average is
    kept in float32 at least: in bfloat16, :math:`\\beta = 0.999` rounds to 1 and
    the average would never move.

    Args:
        decay: :math:`\\beta \\in [0, 1]`, the weight of the average so far (0 copies the params, 1 keeps
            the initial ones); may be traced.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.adamw(1e-3), jz.ema_params(0.999))

    References:
        Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", 1992.
    """
    validation.fraction("ema_params", "decay", decay)

    def init(params):
        return EmaParamsState(_average_of(params))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        check_state("ema_params", state, EmaParamsState)
        validation.require_params("ema_params", params)
        tree.check_same_structure("ema_params", updates, params, "the params")
        average = lambda u, e, p: (decay * e + (1 - decay) * (p.astype(e.dtype) + u.astype(e.dtype))).astype(e.dtype)
        return updates, EmaParamsState(tree.map_state(average, updates, state.ema, params))

    return GradientTransformation(init, update)


class SwaParamsState(NamedTuple):
    """The equal-weight average of the parameters (SWA): the steps seen, how many were averaged, the average."""

    count: jax.Array
    n_averaged: jax.Array
    average: Params


@static_only("start", "every")
def swa_params(start: int = 1, every: int = 1) -> GradientTransformation:
    """Keep the equal-weight average of the parameters, for evaluation (Stochastic Weight Averaging).

    Put it last in a chain, so it sees the final updates :math:`u_t`. After step
    :math:`t = 1, 2, \\dots` the params are :math:`\\theta_t = \\theta_{t-1} + u_t`; those of the
    steps :math:`t \\ge` ``start`` with :math:`t -` ``start`` a multiple of ``every`` (as
    :func:`~jaxopt_zoo.apply_updates` forms them, in the params' dtype) are averaged:

    .. math::

        \\bar\\theta \\leftarrow \\bar\\theta + \\frac{\\theta_t - \\bar\\theta}{n + 1}, \\qquad n \\leftarrow n + 1,

    so the first one is taken as it is. The updates pass through unchanged; read the
    average from the state's ``average`` field (``state[-1].average`` at the end of a
    chain) once ``n_averaged`` is at least 1 (before, it holds the initial params).
    It is kept in float32 at least, so that :math:`1 / (n + 1)` is not lost to
    bfloat16's rounding. For an exponential average, see :func:`ema_params`.

    PyTorch's ``AveragedModel(model)`` with ``update_parameters`` called after every
    step from step ``start`` on is ``swa_params(start)``; called at the end of every epoch
    from the ``k``-th on (counting from 1), it is ``swa_params(k * steps_per_epoch,
    every=steps_per_epoch)``. PyTorch's documented loop, ``for epoch in range(epochs)``
    with ``if epoch > swa_start: swa_model.update_parameters(model)`` after each epoch,
    starts after epoch ``swa_start + 2`` counting from 1: ``swa_params((swa_start + 2) *
    steps_per_epoch, every=steps_per_epoch)``.
    As there, batch-norm statistics are not averaged: recompute them with the average
    (PyTorch's ``update_bn``) before evaluating.

    Args:
        start: the first step whose params are averaged, counting the steps from 1: a whole number in
            :math:`[1, 2^{31} - 1]`.
        every: the steps from one averaged step to the next: a whole number in :math:`[1, 2^{31} - 1]`
            (1 averages every step from ``start`` on).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.sgd(0.05, momentum=0.9), jz.swa_params(start=750, every=50))

    References:
        Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", 2018.
        https://arxiv.org/abs/1803.05407
    """
    start = validation.whole_number("swa_params", "start", start, 1, validation.INT32_MAX)
    every = validation.whole_number("swa_params", "every", every, 1, validation.INT32_MAX)

    def init(params):
        return SwaParamsState(zero_count(), zero_count(), _average_of(params))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        check_state("swa_params", state, SwaParamsState)
        validation.require_params("swa_params", params)
        tree.check_same_structure("swa_params", updates, params, "the params")
        count = safe_increment(state.count)
        # In int32: count - start fits, both being in [1, 2**31 - 1].
        take = jnp.logical_and(count >= start, (count - start) % every == 0)

        def average(u, a, p):
            new = jnp.asarray(p + u).astype(p.dtype)  # the params as jz.apply_updates forms them
            if new.dtype != a.dtype:  # rounded as held: XLA would drop the round trip bfloat16 -> float32
                new = jax.lax.optimization_barrier(new).astype(a.dtype)
            moved = jnp.where(state.n_averaged == 0, new, a + (new - a) / (state.n_averaged.astype(a.dtype) + 1))
            return jnp.where(take, moved, a)

        n_averaged = jnp.where(take, safe_increment(state.n_averaged), state.n_averaged)
        return updates, SwaParamsState(count, n_averaged, tree.map_state(average, updates, state.average, params))

    return GradientTransformation(init, update)


class WrappedScheduleState(NamedTuple):
    """A :class:`WrappedSchedule`'s state: the int32 step count."""

    count: jax.Array


class WrappedSchedule:
    """A plain schedule :math:`\\eta(t)` as a stateful one (``init``, ``update``, call), counting its own steps.

    The protocol of a stateful schedule, as :func:`inject_stateful_hyperparams`
    reads it: ``init() -> state``; ``schedule(state, **extra_args)`` is the
    current value; ``update(state, **extra_args) -> state`` advances it. The
    count saturates at the int32 maximum instead of wrapping. Same as
    ``optax.WrappedSchedule``.

    Args:
        schedule_fn: the schedule, a callable of the int32 step count (0 at ``init``); not callable raises
            ``TypeError``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> from jaxopt_zoo.wrappers import WrappedSchedule
        >>> schedule = WrappedSchedule(jz.linear_schedule(1.0, 0.0, 10))
        >>> schedule(schedule.update(schedule.init()))
        Array(0.9, dtype=float32)
    """

    def __init__(self, schedule_fn: Callable[[jax.Array], Any]):
        if not callable(schedule_fn):
            raise TypeError(f"WrappedSchedule: schedule_fn must be a callable of the step count, got {schedule_fn!r}.")
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        return WrappedScheduleState(zero_count())

    def update(self, state: WrappedScheduleState, **extra_args: Any) -> WrappedScheduleState:
        del extra_args
        return WrappedScheduleState(safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args: Any) -> Any:
        del extra_args
        return self.schedule_fn(state.count)


class InjectStatefulHyperparamsState(NamedTuple):
    """Step count, the current numeric hyperparameters, the stateful schedules' states, and the inner state."""

    count: jax.Array
    hyperparams: dict[str, jax.Array]
    hyperparams_states: dict[str, Any]
    inner_state: OptState


def _is_stateful_schedule(value: Any) -> bool:
    return callable(value) and callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))


@document_args(inject_hyperparams)
def inject_stateful_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformation]:
    """:func:`inject_hyperparams` that also takes *stateful* schedules, whose state lives in the optimizer's.

    A stateful schedule (``init()``, ``update(state, **extra_args)``,
    ``schedule(state, **extra_args)``) may follow what ``update`` is given, for
    example ``value=`` (the loss) for a plateau rule. Each step the value
    :math:`\\eta_t = s(\\sigma_t)` is read with the step's extra arguments, the
    inner optimizer runs with it, and then :math:`\\sigma_{t+1} = \\mathrm{update}(\\sigma_t)`.
    A plain schedule becomes a :class:`WrappedSchedule`. Which arguments are
    injected follows :func:`inject_hyperparams` (numbers; schedules only for
    numeric hyperparameters; flags, masks, storages, init-only arguments and
    ``static_args`` stay static), as does the hyperparameter dtype (float32, float64 with float64
    params). The state is :class:`InjectStatefulHyperparamsState`, as Optax's.

    Same numbers as ``optax.inject_stateful_hyperparams`` (and Optax 0.2.8's
    ``inject_hyperparams``, which it forwards to). Deviation from Optax: no
    ``DeprecationWarning``; here it is the wrapper for stateful schedules, and
    :func:`inject_hyperparams` keeps its smaller state.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> from jaxopt_zoo.wrappers import inject_stateful_hyperparams
        >>> tx = inject_stateful_hyperparams(jz.sgd)(learning_rate=jz.linear_schedule(0.1, 0.0, 10))
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> updates, state = tx.update({"w": jnp.ones(2)}, state)
        >>> state.hyperparams_states["learning_rate"].count
        Array(1, dtype=int32)
    """
    owner = "inject_stateful_hyperparams"
    signature, static = _static_arguments(owner, inner_factory, static_args)

    @functools.wraps(inner_factory)
    def build(*args, **kwargs) -> GradientTransformation:
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        schedules, numeric, other = _split_hyperparameters(signature, static, arguments.arguments, stateful=True)
        # Bad hyperparameters fail here; schedules are checked by their first value.
        inner_factory(**other, **numeric, **{k: s(s.init()) for k, s in schedules.items()})

        def init(params):
            dtype = _hyperparam_dtype(params, hyperparam_dtype)
            states = {k: s.init() for k, s in schedules.items()}
            hyperparams = {k: _state_array(v, dtype) for k, v in numeric.items()}
            hyperparams.update({k: _state_array(s(states[k]), dtype) for k, s in schedules.items()})
            inner_state = inner_factory(**other, **_copies(hyperparams)).init(params)
            return InjectStatefulHyperparamsState(zero_count(), hyperparams, states, inner_state)

        def update(updates, state, params=None, **extra_args):
            check_state(owner, state, InjectStatefulHyperparamsState)
            dtype = _hyperparam_dtype(state.hyperparams, hyperparam_dtype)
            hyperparams = {k: _state_array(v, dtype) for k, v in state.hyperparams.items() if k not in schedules}
            hyperparams.update(
                {k: _state_array(s(state.hyperparams_states[k], **extra_args), dtype) for k, s in schedules.items()}
            )
            states = {k: s.update(state.hyperparams_states[k], **extra_args) for k, s in schedules.items()}
            inner = as_transformation(owner, inner_factory(**other, **hyperparams))
            new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
            new_updates = _in_gradient_dtypes(new_updates, updates)
            return new_updates, InjectStatefulHyperparamsState(safe_increment(state.count), hyperparams, states, inner_state)

        return GradientTransformation(init, update)

    return build
