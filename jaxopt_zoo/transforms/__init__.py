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
from jaxopt_zoo.transforms.clipping import (
    adaptive_grad_clip,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
    unitwise_clip,
    unitwise_norm,
)
from jaxopt_zoo.transforms.momentum import DampenedTraceState, EmaState, TraceState, ema, nesterov, trace
from jaxopt_zoo.transforms.scaling import (
    ScaleByScheduleState,
    centralize,
    normalize_by_update_norm,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_gradient,
)
from jaxopt_zoo.transforms.trust_ratio import scale_by_trust_ratio
from jaxopt_zoo.transforms.weight_decay import WeightDecayScheduleState, add_decayed_weights
from jaxopt_zoo.transforms.orthogonal import MuonDimensionNumbers, MuonState, ScaleByMuonState, newton_schulz, scale_by_muon
from jaxopt_zoo.transforms.rprop import ScaleByResilientStepState, ScaleByRpropState, scale_by_resilient_step, scale_by_rprop
from jaxopt_zoo.transforms.averaging import AverageIteratesState, ScaleByAsgdState, average_iterates, averaged_params, scale_by_asgd
from jaxopt_zoo.transforms.adam_variants import (
    ScaleByAdamaxState,
    ScaleByRAdamState,
    ScaleByScheduledNadamState,
    scale_by_adamax,
    scale_by_adopt,
    scale_by_radam,
    scale_by_scheduled_nadam,
    scale_by_sparse_adam,
)
from jaxopt_zoo.transforms.factored import (
    FactoredState,
    ScaleByFactoredSecondMomentState,
    scale_by_factored_rms,
    relative_step_size,
    scale_by_factored_second_moment,
    scale_by_param_block_rms,
)
from jaxopt_zoo.transforms.lbfgs import TorchLbfgsState, torch_lbfgs
from jaxopt_zoo.transforms.sm3 import ScaleBySM3State, scale_by_sm3
from jaxopt_zoo.transforms.sign import ScaleByLionState, scale_by_lion, scale_by_sign
from jaxopt_zoo.transforms.adam_relatives import (
    ScaleByAdanState,
    ScaleByBeliefState,
    scale_by_acprop,
    scale_by_adan,
    scale_by_belief,
    scale_by_yogi,
)
from jaxopt_zoo.transforms.layerwise import ScaleByNovogradState, scale_by_novograd, scale_by_param_block_norm

__all__ = [
    "AverageIteratesState",
    "DampenedTraceState",
    "EmaState",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAmsgradState",
    "ScaleByAsgdState",
    "ScaleByFactoredSecondMomentState",
    "ScaleByMuonState",
    "MuonDimensionNumbers",
    "MuonState",
    "ScaleByRAdamState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByResilientStepState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "ScaleByScheduledNadamState",
    "TorchLbfgsState",
    "TraceState",
    "WeightDecayScheduleState",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "average_iterates",
    "averaged_params",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "ema",
    "nesterov",
    "newton_schulz",
    "relative_step_size",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_asgd",
    "scale_by_factored_second_moment",
    "scale_by_learning_rate",
    "scale_by_muon",
    "scale_by_param_block_rms",
    "scale_by_radam",
    "scale_by_resilient_step",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_scheduled_nadam",
    "scale_by_sparse_adam",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "torch_lbfgs",
    "trace",
    "unitwise_norm",
    "ScaleByLionState",
    "scale_by_lion",
    "scale_by_sign",
    "ScaleByBeliefState",
    "scale_by_belief",
    "scale_by_yogi",
    "ScaleByAdanState",
    "scale_by_adan",
    "ScaleByNovogradState",
    "scale_by_novograd",
    "scale_by_param_block_norm",
    "ScaleByRpropState",
    "scale_by_rprop",
    "centralize",
    "normalize_by_update_norm",
    "scale_gradient",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "FactoredState",
    "scale_by_factored_rms",
    "unitwise_clip",
    "ScaleBySM3State",
    "scale_by_sm3",
    "scale_by_adopt",
    "scale_by_acprop",
]

# Families added by issue 17; each module lists its public names in its own __all__.
from jaxopt_zoo.transforms import constrain, linesearch, noise, optimistic, parameter_free, polyak
from jaxopt_zoo.transforms.constrain import *  # noqa: E402,F403
from jaxopt_zoo.transforms.linesearch import *  # noqa: E402,F403
from jaxopt_zoo.transforms.noise import *  # noqa: E402,F403
from jaxopt_zoo.transforms.optimistic import *  # noqa: E402,F403
from jaxopt_zoo.transforms.parameter_free import *  # noqa: E402,F403
from jaxopt_zoo.transforms.polyak import *  # noqa: E402,F403

__all__ += [
    *constrain.__all__,
    *linesearch.__all__,
    *noise.__all__,
    *optimistic.__all__,
    *parameter_free.__all__,
    *polyak.__all__,
]

# Families added by issue 18 (Optax's contrib set); each module lists its public names in its own __all__. The
# modules are read under private names: a star import may rebind a module's name to its function (sam.sam).
from jaxopt_zoo.transforms import ademamix as _ademamix, d_adaptation as _d_adaptation  # noqa: E402
from jaxopt_zoo.transforms import dual_averaging as _dual_averaging, galore as _galore, momo as _momo  # noqa: E402
from jaxopt_zoo.transforms import plateau as _plateau, privacy as _privacy, sam as _sam  # noqa: E402
from jaxopt_zoo.transforms import schedule_free as _schedule_free, sophia as _sophia  # noqa: E402
from jaxopt_zoo.transforms.ademamix import *  # noqa: E402,F403
from jaxopt_zoo.transforms.d_adaptation import *  # noqa: E402,F403
from jaxopt_zoo.transforms.dual_averaging import *  # noqa: E402,F403
from jaxopt_zoo.transforms.galore import *  # noqa: E402,F403
from jaxopt_zoo.transforms.momo import *  # noqa: E402,F403
from jaxopt_zoo.transforms.plateau import *  # noqa: E402,F403
from jaxopt_zoo.transforms.privacy import *  # noqa: E402,F403
from jaxopt_zoo.transforms.sam import *  # noqa: E402,F403
from jaxopt_zoo.transforms.schedule_free import *  # noqa: E402,F403
from jaxopt_zoo.transforms.sophia import *  # noqa: E402,F403

for _family in (_ademamix, _d_adaptation, _dual_averaging, _galore, _momo, _plateau, _privacy, _sam, _schedule_free,
                _sophia):
    __all__ += _family.__all__

# Families added by issue 19 (Kronecker-factored preconditioners and their composable extras) and issue 18's
# Gram-space Newton-Schulz.
from jaxopt_zoo.transforms import cautious as _cautious, gram_newton_schulz as _gram_newton_schulz  # noqa: E402
from jaxopt_zoo.transforms import grafting as _grafting, kronecker as _kronecker, mars as _mars  # noqa: E402
from jaxopt_zoo.transforms import psgd as _psgd, shampoo as _shampoo, soap as _soap  # noqa: E402
from jaxopt_zoo.transforms.cautious import *  # noqa: E402,F403
from jaxopt_zoo.transforms.grafting import *  # noqa: E402,F403
from jaxopt_zoo.transforms.gram_newton_schulz import *  # noqa: E402,F403
from jaxopt_zoo.transforms.kronecker import *  # noqa: E402,F403
from jaxopt_zoo.transforms.mars import *  # noqa: E402,F403
from jaxopt_zoo.transforms.psgd import *  # noqa: E402,F403
from jaxopt_zoo.transforms.shampoo import *  # noqa: E402,F403
from jaxopt_zoo.transforms.soap import *  # noqa: E402,F403

for _family in (_cautious, _grafting, _gram_newton_schulz, _kronecker, _mars, _psgd, _shampoo, _soap):
    __all__ += _family.__all__

# optax.transforms also holds Optax's combinators and wrappers; here they live in their own modules (combine,
# wrappers, conditional, monitoring) and at the top level, and are found here too, so that optax.transforms.X is
# jz.transforms.X. Looked up when asked for: those modules import this package.
_AT_THE_TOP_LEVEL = frozenset({
    "ApplyIfFiniteState", "ConditionFn", "ConditionallyMaskState", "ConditionallyTransformState", "MaskedNode",
    "MaskedState", "MonitorState", "MultiSteps", "MultiStepsState", "PartitionState", "ShouldSkipUpdateFunction",
    "SnapshotState", "apply_if_finite", "chain", "conditionally_mask", "conditionally_transform", "flatten", "freeze",
    "masked", "measure_with_ema", "monitor", "named_chain", "partition", "selective_transform", "skip_large_updates",
    "skip_not_finite", "snapshot",
})


def __getattr__(name: str):
    if name in _AT_THE_TOP_LEVEL:
        import jaxopt_zoo

        return getattr(jaxopt_zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
