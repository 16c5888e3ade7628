"""Every public name of Optax's top level, optax.schedules, optax.transforms and optax.contrib exists here (losses
aside)."""

from __future__ import annotations

import inspect
import types

import optax
import pytest

import jaxopt_zoo as jz

# Names deliberately absent, each with its reason. Losses are found by their module (optax.losses).
EXCLUDED = {
    "losses": "losses are out of scope: optax.losses works alongside jaxopt_zoo unchanged",
    "assignment": "the Hungarian algorithm (a matching solver, not an optimizer); use optax.assignment",
    "experimental": "Optax's unstable staging area; nothing in it is promised",
    "perturbations": "gradient estimators by random perturbation, not optimizers; use optax.perturbations",
    "projections": "projections onto sets, used with any optimizer as they are; use optax.projections",
    "second_order": "Hessian and Fisher diagonals, not optimizers; use optax.second_order",
    "tree_utils": "Optax's deprecated alias of optax.tree; tree helpers are no optimizer surface",
}


def is_loss(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("optax.losses")


def required(namespace) -> list[str]:
    return [
        name
        for name in dir(namespace)
        if not name.startswith("_") and name not in EXCLUDED and not is_loss(getattr(namespace, name))
    ]


@pytest.mark.parametrize(
    "namespace", [optax, optax.schedules, optax.transforms, optax.contrib], ids=lambda m: m.__name__
)
def test_every_optax_name_is_here(namespace):
    missing = [name for name in required(namespace) if not hasattr(jz, name)]
    assert not missing, f"{len(missing)} names of {namespace.__name__} missing from jaxopt_zoo: {missing}"


def test_the_exclusions_are_real_optax_names_and_modules():
    for name in EXCLUDED:
        assert isinstance(getattr(optax, name), types.ModuleType), name
    # The loss rule catches losses and nothing else: every name it drops is a function of optax.losses.
    losses = [name for name in dir(optax) if is_loss(getattr(optax, name))]
    assert "softmax_cross_entropy" in losses and "adam" not in losses
    assert all(callable(getattr(optax.losses, name, None)) for name in losses)


def test_every_contrib_name_is_in_jz_contrib_and_is_the_flat_name():
    # optax.contrib.X -> jz.contrib.X is a one-word change, and jz.X is the same object.
    names = required(optax.contrib)
    missing = [name for name in names if not hasattr(jz.contrib, name)]
    assert not missing, f"missing from jaxopt_zoo.contrib: {missing}"
    assert all(getattr(jz.contrib, name) is getattr(jz, name) for name in names)
    assert sorted(jz.contrib.__all__, key=str.lower) == sorted(names, key=str.lower)


def _same_default(theirs, ours) -> bool:
    if theirs is inspect.Parameter.empty or ours is inspect.Parameter.empty:
        return theirs is ours  # required in both, or optional in both
    if isinstance(theirs, bool) or isinstance(ours, bool):
        return theirs is ours
    if isinstance(theirs, (int, float, str, type(None))):
        return theirs == ours
    return True  # a function, an enum of the other library, a transformation: equal in role, not in identity


@pytest.mark.parametrize(
    "namespace", [optax, optax.schedules, optax.transforms, optax.contrib], ids=lambda m: m.__name__
)
def test_every_optax_argument_is_taken_by_its_name_with_the_same_default(namespace):
    # "Arguments and defaults are the same" (docs/guides/switching_from_optax.md): a call by keyword written for
    # Optax must work here. partition/masked lacked mask_compatible_extra_args, bias_correction took moments=
    # (Optax: moment=), global_norm tree= (Optax: updates=), and scale_by_learning_rate required its rate.
    wrong = []
    for name in required(namespace):
        theirs, ours = getattr(namespace, name), getattr(jz, name)
        if isinstance(theirs, (type, types.ModuleType)) or not callable(theirs):
            continue
        try:
            their_parameters, our_parameters = (inspect.signature(f).parameters for f in (theirs, ours))
        except (TypeError, ValueError):  # no signature to read (a builtin)
            continue
        for parameter in their_parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
                continue
            ours_ = our_parameters.get(parameter.name)
            if ours_ is None:
                wrong.append(f"{name}({parameter.name}=...) is not taken")
            elif not _same_default(parameter.default, ours_.default):
                wrong.append(f"{name}({parameter.name}): default {parameter.default!r} here {ours_.default!r}")
    assert not wrong, wrong


@pytest.mark.parametrize("namespace, ours", [(optax.schedules, jz.schedules), (optax.transforms, jz.transforms)],
                         ids=["schedules", "transforms"])
def test_optax_submodule_names_are_in_the_same_submodule_here(namespace, ours):
    # "Replace optax. by jz.": optax.transforms.masked is jz.transforms.masked, the top-level object; 27 names of
    # optax.transforms and 6 of optax.schedules (inject_hyperparams) were only at the top level.
    missing = [name for name in required(namespace) if not hasattr(ours, name)]
    assert not missing, missing
    assert all(getattr(ours, name) is getattr(jz, name) for name in required(namespace))
