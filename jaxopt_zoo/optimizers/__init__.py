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
from jaxopt_zoo.optimizers.adam_relatives import acprop, adabelief, adamax, adamaxw, adan, adopt, radam, yogi
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
    "acprop",
    "adabelief",
    "adamax",
    "adamaxw",
    "radam",
    "yogi",
    "adan",
    "adopt",
    "fromage",
    "novograd",
]

# Families added by issue 17; each module lists its public names in its own __all__. The modules are
# read under private names: a star import may rebind a module's name to a function (rprop.rprop).
from jaxopt_zoo.optimizers import factored as _factored, linesearch as _linesearch, noise as _noise  # noqa: E402
from jaxopt_zoo.optimizers import optimistic as _optimistic, polyak as _polyak, rprop as _rprop  # noqa: E402
from jaxopt_zoo.optimizers.factored import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.linesearch import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.noise import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.optimistic import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.polyak import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.rprop import *  # noqa: E402,F403

for _family in (_factored, _linesearch, _noise, _optimistic, _polyak, _rprop):
    __all__ += _family.__all__

# Families added by issue 18 (Optax's contrib set).
from jaxopt_zoo.optimizers import ademamix as _ademamix, d_adaptation as _d_adaptation  # noqa: E402
from jaxopt_zoo.optimizers import dual_averaging as _dual_averaging, galore as _galore, momo as _momo  # noqa: E402
from jaxopt_zoo.optimizers import orthogonal as _orthogonal, parameter_free as _parameter_free  # noqa: E402
from jaxopt_zoo.optimizers import privacy as _privacy, schedule_free as _schedule_free, sophia as _sophia  # noqa: E402
from jaxopt_zoo.optimizers.ademamix import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.d_adaptation import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.dual_averaging import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.galore import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.momo import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.orthogonal import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.parameter_free import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.privacy import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.schedule_free import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.sophia import *  # noqa: E402,F403

for _family in (_ademamix, _d_adaptation, _dual_averaging, _galore, _momo, _orthogonal, _parameter_free, _privacy,
                _schedule_free, _sophia):
    __all__ += _family.__all__

# Families added by issue 19 (Kronecker-factored preconditioners, cautious and MARS variants).
from jaxopt_zoo.optimizers import cautious as _cautious, psgd as _psgd, shampoo as _shampoo, soap as _soap  # noqa: E402
from jaxopt_zoo.optimizers.cautious import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.psgd import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.shampoo import *  # noqa: E402,F403
from jaxopt_zoo.optimizers.soap import *  # noqa: E402,F403

for _family in (_cautious, _psgd, _shampoo, _soap):
    __all__ += _family.__all__
