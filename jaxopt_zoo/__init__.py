"""jaxopt_zoo: composable, jit-able gradient transformations and optimizers for JAX.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_adam(), jz.add_decayed_weights(1e-4), jz.scale_by_learning_rate(1e-3))
"""

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    apply_updates,
    identity,
    safe_increment,
    stateless,
)
from jaxopt_zoo.combine import MaskedNode, MaskedState, chain, masked, named_chain
from jaxopt_zoo.optimizers import adam, adamw, sgd
from jaxopt_zoo.transforms import (
    DampenedTraceState,
    ScaleByAdamState,
    ScaleByScheduleState,
    TraceState,
    WeightDecayScheduleState,
    add_decayed_weights,
    nesterov,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_schedule,
    trace,
)

__version__ = "0.1.0"

__all__ = [
    "DampenedTraceState",
    "EmptyState",
    "GradientTransformation",
    "MaskedNode",
    "MaskedState",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "Schedule",
    "TraceState",
    "Updates",
    "WeightDecayScheduleState",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "identity",
    "masked",
    "named_chain",
    "nesterov",
    "safe_increment",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "sgd",
    "stateless",
    "trace",
    "tree",
    "validation",
]
