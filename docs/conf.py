"""Sphinx configuration of jaxopt_zoo's documentation site: ``python -m sphinx -W -b html docs docs/_build/html``."""

from __future__ import annotations

import pathlib
import sys

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
html_static_path: list[str] = []
templates_path: list[str] = []

autodoc_typehints = "description"  # types under the argument list, keeping signatures short
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # NS_COEFFICIENTS, not (3.4445, -4.775, 2.0315)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False  # "adam(learning_rate, ...)", not "jaxopt_zoo.adam(...)"
python_use_unqualified_type_names = True
suppress_warnings = ["config.cache"]


def _write_generated_pages(app) -> None:
    api_pages.write(HERE / "api")
    examples_gallery.write(app.config.gallery)


def setup(app) -> None:
    app.add_config_value("gallery", "full", "env")  # -D gallery=fast|off: see docs/gallery.py
    app.connect("builder-inited", _write_generated_pages)
