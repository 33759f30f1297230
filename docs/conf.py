"""Sphinx configuration for the sktransfer documentation.

Build with ``make docs``; the HTML lands in ``docs/_build/html``.
"""

import os
import re
import shutil
import sys
from pathlib import Path

from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
# Document the source tree this file belongs to, even where another copy of
# sktransfer is installed.
sys.path.insert(0, str(ROOT))

import sktransfer  # noqa: E402

logger = logging.getLogger(__name__)

project = "sktransfer"
copyright = "the sktransfer developers"
release = sktransfer.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# -- API reference ----------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True}
# numpydoc renders the signature's parameters; autodoc's type hints would
# repeat them.
autodoc_typehints = "none"

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = True
numpydoc_xref_ignore = {
    "of", "or", "and", "shape", "default", "optional", "instance", "like",
    "n_samples", "n_features", "n_classes", "dtype", "object", "keyword",
}
# numpydoc's defaults point these at the Python and NumPy glossaries, which
# only intersphinx could reach, and the build runs offline: show them as
# plain names instead of dangling references.
numpydoc_xref_aliases = {
    "bool": ":class:`bool`",
    "array-like": ":obj:`array-like`",
    "array_like": ":obj:`array_like`",
    "iterable": ":obj:`iterable`",
    "sequence": ":obj:`sequence`",
    "Path": "pathlib.Path",
}
# Every public object of sktransfer needs a docstring with a one-line
# summary, every parameter documented (and none that does not exist), a
# Returns section and numpydoc's layout rules. Not enforced: an extended
# summary (ES01), a See Also (SA01) and an Examples section (EX01) on every
# method; GL01, since summaries start on the line of the opening quotes (as
# PEP 257 allows; numpydoc 1.7 rejects it); SS05, a guess at third-person
# verbs that flags "Class probabilities, ..."; and RT02, which rejects
# scikit-learn's named ``self : object``. RT03 (each return value described)
# still has gaps.
numpydoc_validation_checks = {
    "all", "ES01", "EX01", "GL01", "RT02", "RT03", "SA01", "SS05",
}
numpydoc_validation_exclude = {
    # Methods inherited from scikit-learn follow scikit-learn's conventions.
    r"\.(get_params|set_params|score|fit_transform|set_output|"
    r"get_metadata_routing|get_feature_names_out)$",
    # The constructor arguments of these two are not documented yet.
    r"^sktransfer\.(ImageLoadError|BadImagesError)$",
}

# -- Markdown guides (myst-parser) ------------------------------------------
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# -- Examples (sphinx-gallery) ------------------------------------------------
# sphinx-gallery wants a header file inside the examples folder; examples/
# holds only the scripts, so the gallery is built from a copy of them, next to
# a header kept here.
GALLERY_SRC = Path(__file__).resolve().parent / "_build" / "gallery_src"
GALLERY_HEADER = """\
Examples
========

Scripts in the repository's ``examples/`` folder. Each runs on the bundled
emoji drawings, on the CPU and without a network; ``demo.py`` is what
``make demo`` runs.
"""


def _with_title(source):
    """Underline the docstring's first line, which sphinx-gallery shows as the
    page title; the scripts keep a plain one-line summary."""
    lines = source.splitlines(keepends=True)
    if not lines or not lines[0].startswith('"""'):
        return source
    summary = lines[0][3:].rstrip()
    if len(lines) > 1 and set(lines[1].strip()) == {"="}:
        return source  # already has one
    return f'"""{summary}\n{"=" * len(summary)}\n' + "".join(lines[1:])


def _stage_examples():
    if GALLERY_SRC.exists():
        shutil.rmtree(GALLERY_SRC)
    GALLERY_SRC.mkdir(parents=True)
    for script in sorted((ROOT / "examples").glob("*.py")):
        text = _with_title(script.read_text(encoding="utf-8"))
        (GALLERY_SRC / script.name).write_text(text, encoding="utf-8")
    (GALLERY_SRC / "GALLERY_HEADER.rst").write_text(GALLERY_HEADER)


_stage_examples()

# The examples are shown, not run: each one trains a network (10 to 90 s on
# two CPU cores, 5 to 6 minutes for the demo), they print text and draw no
# figure, and tests/test_examples.py already runs every one but the demo.
# ``SKTRANSFER_DOCS_RUN_EXAMPLES=1 make docs`` runs all but the demo and
# shows what they print.
_run_examples = os.environ.get("SKTRANSFER_DOCS_RUN_EXAMPLES") == "1"
sphinx_gallery_conf = {
    "examples_dirs": str(GALLERY_SRC),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/(?!demo\.py$)[^/]+$",
    "plot_gallery": _run_examples,
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
    "backreferences_dir": None,
    "show_memory": False,
}

# -- HTML ---------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"sktransfer {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []


# -- Inherited scikit-learn methods ---------------------------------------------
# get_params, score, set_output, ... are shown with scikit-learn's docstrings,
# whose :ref: and :term: targets live in scikit-learn's own documentation.
# Without intersphinx (the build runs offline) they are shown as plain text.
_SKLEARN_ROLE = re.compile(r":(?:ref|term):`([^`<]*?)\s*(?:<([^`>]*)>)?`", re.DOTALL)


def _plain_sklearn_roles(app, what, name, obj, options, lines):
    module = getattr(obj, "__module__", None) or ""
    if not module.startswith("sklearn"):
        return
    text = "\n".join(lines)
    text = _SKLEARN_ROLE.sub(lambda m: m.group(1).strip() or m.group(2), text)
    lines[:] = text.split("\n")


# -- Every public name is in the API reference ---------------------------------
def _check_public_names_documented(app, env):
    import sktransfer.datasets
    import sktransfer.inspection

    public = [f"sktransfer.{name}" for name in sktransfer.__all__]
    for sub in (sktransfer.datasets, sktransfer.inspection):
        public += [f"{sub.__name__}.{name}" for name in sub.__all__]
    documented = env.get_domain("py").objects
    for name in public:
        if name not in documented:
            logger.warning(
                "%s is public (in __all__) but not in the API reference; add it "
                "to docs/api.rst", name, location="api",
            )


def setup(app):
    app.connect("autodoc-process-docstring", _plain_sklearn_roles)
    app.connect("env-check-consistency", _check_public_names_documented)
