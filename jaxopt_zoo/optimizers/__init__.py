"""Optax-compatible optimizers, each a ``chain(...)`` recipe of shared transforms, one module per family.

Names, argument names, defaults and numerics are Optax's, so replacing
``optax.X(...)`` with ``jaxopt_zoo.X(...)`` gives the same trajectory.

Each recipe checks every argument under its own name before building its
transforms, so an error names the optimizer and the argument the user wrote
(``sgd: momentum must be >= 0``, not the ``decay`` of the ``trace`` inside).
"""

from jaxopt_zoo.optimizers.classic import (
    adadelta,
    adagrad,
    adam,
    adamw,
    amsgrad,
    lamb,
    lars,
    nadam,
    nadamw,
    rmsprop,
    sgd,
)
from jaxopt_zoo.optimizers.sign import lion, sign_sgd, signum
from jaxopt_zoo.optimizers.adam_relatives import adabelief, adamax, adamaxw, adan, radam, yogi
from jaxopt_zoo.optimizers.layerwise import fromage, novograd

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
    "adamw",
    "amsgrad",
    "lamb",
    "lars",
    "nadam",
    "nadamw",
    "rmsprop",
    "sgd",
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
]
