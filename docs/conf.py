"""Sphinx configuration of the ferjax documentation (MyST Markdown pages, autodoc API reference).

Build (offline; every warning is an error):
    pip install -e '.[docs]' && sphinx-build -W --keep-going -b html docs docs/_build/html
"""
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # autodoc imports ferjax; no accelerator is needed

import ferjax  # noqa: E402

project = "ferjax"
author = "the ferjax authors"
copyright = "the ferjax authors, Apache-2.0"
version = release = ferjax.__version__  # the one definition of the version: ferjax/__init__.py

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "ferjax_docs"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "results"]

myst_enable_extensions = ["substitution"]
myst_heading_anchors = 4
myst_substitutions = {"version": ferjax.__version__}

smartquotes = False  # flags keep their two hyphens
default_role = "code"  # docstrings write `name` for code, as the Markdown pages do
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True  # "Args:" sections
napoleon_numpy_docstring = False

html_theme = "alabaster"  # ships with Sphinx: no remote fonts or scripts
html_theme_options = {"description": "Facial expression recognition with JAX/Flax", "fixed_sidebar": True}
html_title = f"ferjax {release}"
html_static_path = []
