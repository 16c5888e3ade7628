"""Single gradient transformations, importable one by one.

    >>> from jaxopt_zoo.transforms import trace, nesterov, scale_by_adam
"""

from jaxopt_zoo.transforms.adaptive import (
    ScaleByAdaDeltaState,
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from jaxopt_zoo.transforms.clipping import adaptive_grad_clip, clip, clip_by_block_rms, clip_by_global_norm, unitwise_norm
from jaxopt_zoo.transforms.momentum import DampenedTraceState, TraceState, nesterov, trace
from jaxopt_zoo.transforms.scaling import ScaleByScheduleState, scale, scale_by_learning_rate, scale_by_schedule
from jaxopt_zoo.transforms.trust_ratio import scale_by_trust_ratio
from jaxopt_zoo.transforms.weight_decay import WeightDecayScheduleState, add_decayed_weights

__all__ = [
    "DampenedTraceState",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "TraceState",
    "WeightDecayScheduleState",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "nesterov",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_amsgrad",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "trace",
    "unitwise_norm",
]
