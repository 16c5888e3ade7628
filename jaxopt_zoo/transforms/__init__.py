"""Single gradient transformations, importable one by one.

    >>> from jaxopt_zoo.transforms import trace, nesterov, scale_by_adam
"""

from jaxopt_zoo.transforms.adaptive import ScaleByAdamState, scale_by_adam
from jaxopt_zoo.transforms.momentum import DampenedTraceState, TraceState, nesterov, trace
from jaxopt_zoo.transforms.scaling import ScaleByScheduleState, scale, scale_by_learning_rate, scale_by_schedule
from jaxopt_zoo.transforms.weight_decay import WeightDecayScheduleState, add_decayed_weights

__all__ = [
    "DampenedTraceState",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "TraceState",
    "WeightDecayScheduleState",
    "add_decayed_weights",
    "nesterov",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "trace",
]
