"""Sphinx configuration of jaxopt_zoo's documentation site: ``python -m sphinx -W -b html docs docs/_build/html``."""

from __future__ import annotations

import functools
import importlib
import pathlib
import sys

import sphinx.util.inspect
from sphinx.util.nodes import make_refnode

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

import api_pages  # noqa: E402  (docs/api_pages.py: the API reference's pages, written below)
import gallery as examples_gallery  # noqa: E402  (docs/gallery.py; not "gallery": conf.py's names are config values)

project = "jaxopt_zoo"
author = "the jaxopt_zoo authors"
copyright = "2026, the jaxopt_zoo authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' Args:/Returns:/Example: sections
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax shipped inside the build: the math renders with no internet
    "myst_parser",  # the guides are Markdown (docs/guides/*.md), readable unbuilt too
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 2

exclude_patterns = ["_build", "design.md", "gallery/_outputs"]
html_theme = "furo"
html_title = "jaxopt_zoo"
html_static_path = ["_static"]
html_css_files = ["math.css"]
templates_path: list[str] = []

autodoc_typehints = "description"  # types under the argument list, keeping signatures short
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # NS_COEFFICIENTS, not (3.4445, -4.775, 2.0315)
# Annotations as written (the modules use postponed annotations), not expanded: "jax.typing.ArrayLike", not
# "Array | ndarray | bool | number | bool | int | float | complex" on 126 arguments.
autodoc_type_aliases = {name: name for name in ("jax.typing.ArrayLike", "jax.typing.DTypeLike", "Schedule",
                                                 "ScalarOrSchedule", "MaskOrFn", "Params", "Updates", "OptState")}
# Inside a union or a generic (ArrayLike | None) Sphinx 9 writes such an alias with its repr,
# "TypeAliasForwardRef('jax.typing.ArrayLike')": its name instead.
if hasattr(sphinx.util.inspect, "TypeAliasForwardRef"):
    sphinx.util.inspect.TypeAliasForwardRef.__repr__ = lambda self: self.name
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False  # "adam(learning_rate, ...)", not "jaxopt_zoo.adam(...)"
python_use_unqualified_type_names = True
suppress_warnings = ["config.cache"]


@functools.cache  # a build asks 4,192 times for 219 paths, most through failing imports
def _object_at(path: str) -> object | None:
    """The Python object a dotted path names (``jaxopt_zoo.transforms.momo.MomoState``), or None."""
    module, attribute = path, ""
    while module:
        try:
            return functools.reduce(getattr, filter(None, attribute.split(".")), importlib.import_module(module))
        except (ImportError, AttributeError, ValueError):
            module, _, head = module.rpartition(".")
            attribute = f"{head}.{attribute}"
    return None


def _link_to_documented_name(app, env, node, contnode):
    """A cross-reference Sphinx could not resolve, to an object the reference documents under the name users write:
    ``jaxopt_zoo.transforms.momo.MomoState`` or a bare ``apply_every`` in a module's text is the entry
    ``jaxopt_zoo.MomoState`` or ``jaxopt_zoo.apply_every`` (the very same object; ``jaxopt_zoo.torch.adam`` is not
    ``jaxopt_zoo.adam``)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    name = target.rpartition(".")[2]
    objects = env.get_domain("py").objects
    for path in (target, f"{node.get('py:module')}.{target}", f"jaxopt_zoo.{target}"):
        if not path.startswith("jaxopt_zoo."):  # never import anything else to look a name up
            continue
        obj = _object_at(path)
        if obj is None:
            continue
        for documented in (f"jaxopt_zoo.{name}", f"jaxopt_zoo.torch.{name}"):
            if documented in objects and _object_at(documented) is obj:
                entry = objects[documented]
                return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, documented)
    return None


def _write_generated_pages(app) -> None:
    api_pages.write(HERE / "api")
    examples_gallery.write(app.config.gallery)


def setup(app) -> None:
    app.add_config_value("gallery", "full", "env")  # -D gallery=fast|off: see docs/gallery.py
    app.connect("builder-inited", _write_generated_pages)
    app.connect("missing-reference", _link_to_documented_name)
