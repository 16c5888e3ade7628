"""jaxopt_zoo: composable, jit-able gradient transformations and optimizers for JAX.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_adam(), jz.add_decayed_weights(1e-4), jz.scale_by_learning_rate(1e-3))

``jaxopt_zoo.torch`` holds the ``torch.optim``-compatible constructors.
"""

from jaxopt_zoo import quantization, rounding, schedules, sharding, storage, torch, transforms, tree, validation
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
    set_to_zero,
    stateless,
)
from jaxopt_zoo.combine import (
    MaskedNode,
    MaskedState,
    PartitionState,
    RealImaginaryPair,
    chain,
    freeze,
    masked,
    named_chain,
    partition,
    split_real_and_imaginary,
)
from jaxopt_zoo.wrappers import (
    ApplyIfFiniteState,
    EmaParamsState,
    InjectHyperparamsState,
    LookaheadParams,
    LookaheadState,
    MultiSteps,
    MultiStepsState,
    apply_if_finite,
    ema_params,
    inject_hyperparams,
    lookahead,
)
from jaxopt_zoo.quantization import Blockwise8Bit
from jaxopt_zoo.storage import StochasticBF16
from jaxopt_zoo.sharding import check_state_shardings, init_sharded, state_shardings
from jaxopt_zoo.optimizers import adadelta, adagrad, adam, adamw, amsgrad, lamb, lars, nadam, nadamw, rmsprop, sgd
from jaxopt_zoo.optimizers import lion, sign_sgd, signum
from jaxopt_zoo.optimizers import adabelief, adamax, adamaxw, adan, radam, yogi
from jaxopt_zoo.optimizers import fromage, novograd
from jaxopt_zoo.schedules import *  # noqa: F403  (the names listed in schedules.__all__)
from jaxopt_zoo.transforms import *  # noqa: F403  (the names listed in transforms.__all__)

__version__ = "0.1.0"

__all__ = [
    "Blockwise8Bit",
    "StochasticBF16",
    "check_state_shardings",
    "init_sharded",
    "state_shardings",
    "ApplyIfFiniteState",
    "EmaParamsState",
    "EmptyState",
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
    "adadelta",
    "adagrad",
    "adam",
    "adamw",
    "amsgrad",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "ema_params",
    "freeze",
    "identity",
    "inject_hyperparams",
    "lamb",
    "lars",
    "lookahead",
    "masked",
    "nadam",
    "nadamw",
    "named_chain",
    "partition",
    "rmsprop",
    "safe_increment",
    "set_to_zero",
    "sgd",
    "split_real_and_imaginary",
    "stateless",
    "lion",
    "sign_sgd",
    "signum",
    "adabelief",
    "adamax",
    "adamaxw",
    "radam",
    "yogi",
    "adan",
    "fromage",
    "novograd",
    *schedules.__all__,
    *transforms.__all__,
]
# The modules quantization, rounding, schedules, storage, torch, transforms, tree and validation are attributes (jz.torch.adam, ...)
# but stay out of __all__, so that `from jaxopt_zoo import *` cannot shadow the real torch.
