"""jaxopt_zoo: composable, jit-able gradient transformations and optimizers for JAX.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_adam(), jz.add_decayed_weights(1e-4), jz.scale_by_learning_rate(1e-3))

``jaxopt_zoo.torch`` holds the ``torch.optim``-compatible constructors.
"""

from jaxopt_zoo import quantization, rounding, schedules, sharding, storage, torch, transforms, tree, validation
from jaxopt_zoo.base import (
    AdaptiveGradClipState,
    AddDecayedWeightsState,
    ClipByGlobalNormState,
    ClipState,
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    MaskOrFn,
    OptState,
    Params,
    ScalarOrSchedule,
    ScaleByTrustRatioState,
    ScaleState,
    Schedule,
    StatefulSchedule,
    TransformInitFn,
    TransformUpdateExtraArgsFn,
    TransformUpdateFn,
    Updates,
    apply_updates,
    identity,
    init_empty_state,
    init_only,
    safe_increment,
    set_to_zero,
    stateless,
    stateless_with_tree_map,
    static_only,
)
from jaxopt_zoo.tree import bias_correction, global_norm, update_infinity_moment, update_moment, update_moment_per_elem_norm
from jaxopt_zoo.combine import (
    MaskedNode,
    MaskedState,
    MultiTransformState,
    PartitionState,
    RealImaginaryPair,
    chain,
    flatten,
    freeze,
    masked,
    multi_transform,
    named_chain,
    partition,
    selective_transform,
    split_real_and_imaginary,
    SplitRealAndImaginaryState,
    tree_map_params,
    with_extra_args_support,
)
from jaxopt_zoo.wrappers import (
    ApplyIfFiniteState,
    EmaParamsState,
    InjectHyperparamsState,
    InjectStatefulHyperparamsState,
    LookaheadParams,
    LookaheadState,
    MultiSteps,
    MultiStepsState,
    SwaParamsState,
    WrappedSchedule,
    WrappedScheduleState,
    apply_if_finite,
    ema_params,
    inject_hyperparams,
    inject_stateful_hyperparams,
    lookahead,
    swa_params,
)
from jaxopt_zoo.quantization import Blockwise8Bit
from jaxopt_zoo.storage import StochasticBF16, with_storage
from jaxopt_zoo.sharding import check_state_shardings, init_sharded, state_shardings
from jaxopt_zoo import conditional, linalg, microbatching, monitoring, numerics, optimizers
from jaxopt_zoo.conditional import *  # noqa: F403  (each module lists its names in its own __all__)
from jaxopt_zoo.linalg import *  # noqa: F403
from jaxopt_zoo.microbatching import *  # noqa: F403
from jaxopt_zoo.numerics import *  # noqa: F403
from jaxopt_zoo.monitoring import *  # noqa: F403
from jaxopt_zoo.optimizers import *  # noqa: F403  (every Optax-compatible alias)
from jaxopt_zoo.schedules import *  # noqa: F403  (the names listed in schedules.__all__)
from jaxopt_zoo.transforms import *  # noqa: F403  (the names listed in transforms.__all__)
from jaxopt_zoo import contrib  # noqa: E402  (optax.contrib's names, gathered from the flat namespace above)

__version__ = "0.1.0"

__all__ = [
    "Blockwise8Bit",
    "StochasticBF16",
    "with_storage",
    "check_state_shardings",
    "init_sharded",
    "state_shardings",
    "ApplyIfFiniteState",
    "EmaParamsState",
    "SwaParamsState",
    "GradientTransformationExtraArgs",
    "stateless_with_tree_map",
    "init_empty_state",
    "init_only",
    "static_only",
    "multi_transform",
    "MultiTransformState",
    "selective_transform",
    "flatten",
    "tree_map_params",
    "with_extra_args_support",
    "inject_stateful_hyperparams",
    "InjectStatefulHyperparamsState",
    "WrappedSchedule",
    "WrappedScheduleState",
    "AdaptiveGradClipState",
    "AddDecayedWeightsState",
    "ClipByGlobalNormState",
    "ClipState",
    "EmptyState",
    "MaskOrFn",
    "ScaleByTrustRatioState",
    "ScaleState",
    "StatefulSchedule",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "bias_correction",
    "global_norm",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "InjectHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "MultiSteps",
    "MultiStepsState",
    "GradientTransformation",
    "MaskedNode",
    "MaskedState",
    "OptState",
    "PartitionState",
    "Params",
    "RealImaginaryPair",
    "ScalarOrSchedule",
    "Schedule",
    "Updates",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "ema_params",
    "swa_params",
    "freeze",
    "identity",
    "inject_hyperparams",
    "lookahead",
    "masked",
    "named_chain",
    "partition",
    "safe_increment",
    "set_to_zero",
    "split_real_and_imaginary",
    "SplitRealAndImaginaryState",
    "stateless",
    *conditional.__all__,
    *linalg.__all__,
    *microbatching.__all__,
    *numerics.__all__,
    *monitoring.__all__,
    *optimizers.__all__,
    *schedules.__all__,
    *transforms.__all__,
]
# The modules conditional, linalg, microbatching, monitoring, numerics, optimizers, quantization, rounding, schedules, storage, torch,
# transforms, tree and validation are attributes (jz.torch.adam, ...)
# but stay out of __all__, so that `from jaxopt_zoo import *` cannot shadow the real torch.


def _register_states_for_export() -> None:
    # Every NamedTuple of the package (the states and their parts) gets a serialized name, so that a jitted step
    # taking or returning an optimizer state exports with jax.export and serializes (jax.export refuses a tree holding
    # an unregistered type: Optax's states cannot be serialized). A class public under its own name is named as users
    # write it (jaxopt_zoo.ScaleByAdamState; an alias such as NormalizeState = EmptyState does not rename it), the
    # others by their module: the names are what a serialized step records. A class registered already (the package
    # reloaded, or a registration of the user's own) keeps its registration.
    import sys

    from jax import export

    registered = set()
    for module in [m for name, m in sorted(sys.modules.items()) if name == __name__ or name.startswith(__name__ + ".")]:
        for cls in vars(module).values():
            if (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")
                    and cls.__module__ == module.__name__ and cls not in registered):
                registered.add(cls)
                public = globals().get(cls.__name__) is cls
                name = f"{__name__}.{cls.__name__}" if public else f"{cls.__module__}.{cls.__qualname__}"
                try:
                    export.register_namedtuple_serialization(cls, serialized_name=name)
                except ValueError as error:
                    if "Duplicate serialization registration" not in str(error):
                        raise


_register_states_for_export()
