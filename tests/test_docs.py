"""Every docstring example runs, and every public name has a docstring."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import jaxopt_zoo as jz

MODULES = [
    "jaxopt_zoo",
    "jaxopt_zoo.base",
    "jaxopt_zoo.combine",
    "jaxopt_zoo.tree",
    "jaxopt_zoo.validation",
    "jaxopt_zoo.optimizers",
    "jaxopt_zoo.schedules",
    "jaxopt_zoo.quantization",
    "jaxopt_zoo.rounding",
    "jaxopt_zoo.storage",
    "jaxopt_zoo.sharding",
    "jaxopt_zoo.transforms",
    "jaxopt_zoo.wrappers",
    "jaxopt_zoo.transforms.adaptive",
    "jaxopt_zoo.transforms.clipping",
    "jaxopt_zoo.transforms.momentum",
    "jaxopt_zoo.transforms.scaling",
    "jaxopt_zoo.transforms.trust_ratio",
    "jaxopt_zoo.transforms.weight_decay",
    "jaxopt_zoo.torch",
]
WITHOUT_EXAMPLES = {"jaxopt_zoo.tree", "jaxopt_zoo.validation"}  # internal helpers, tested in test_tree.py


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
    assert result.attempted > 0 or name in WITHOUT_EXAMPLES


TYPE_ALIASES = {"OptState", "Params", "ScalarOrSchedule", "Schedule", "Updates"}


@pytest.mark.parametrize("name", sorted(set(jz.__all__) - TYPE_ALIASES))
def test_public_names_are_documented(name):
    obj = getattr(jz, name)
    assert inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj)
    assert obj.__doc__ and obj.__doc__.strip(), f"jaxopt_zoo.{name} has no docstring of its own"


@pytest.mark.parametrize("name", jz.torch.__all__)
def test_torch_functions_are_documented(name):
    assert getattr(jz.torch, name).__doc__.strip()
