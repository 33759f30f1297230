"""The API reference lists every public name, and each documents itself."""

import re
from pathlib import Path

import pytest

import sktransfer
import sktransfer.datasets
import sktransfer.inspection

API_RST = Path(__file__).resolve().parents[1] / "docs" / "api.rst"
MODULES = [sktransfer, sktransfer.datasets, sktransfer.inspection]
PUBLIC = [
    (module, name)
    for module in MODULES
    for name in module.__all__
    if name != "__version__"
]


def _listed_names():
    """Names under each ``currentmodule`` of api.rst, qualified by it."""
    listed, current = set(), None
    for line in API_RST.read_text().splitlines():
        if match := re.match(r"\.\. currentmodule:: (\S+)", line):
            current = match[1]
        elif match := re.fullmatch(r" {3}(\w+)", line):
            listed.add(f"{current}.{match[1]}")
    return listed


@pytest.mark.parametrize(
    "module, name", PUBLIC, ids=[f"{m.__name__}.{n}" for m, n in PUBLIC]
)
def test_public_name_is_in_the_api_reference(module, name):
    assert f"{module.__name__}.{name}" in _listed_names(), (
        f"{module.__name__}.{name} is public but missing from docs/api.rst"
    )


@pytest.mark.parametrize(
    "module, name", PUBLIC, ids=[f"{m.__name__}.{n}" for m, n in PUBLIC]
)
def test_public_name_has_a_numpydoc_docstring(module, name):
    doc = getattr(module, name).__doc__ or ""
    assert doc.strip(), f"{name} has no docstring"
    if not isinstance(getattr(module, name), type) or not issubclass(
        getattr(module, name), Exception
    ):
        assert re.search(r"^\s*Examples\n\s*-{8}", doc, re.M), (
            f"{name} has no Examples section"
        )


def test_version_is_documented():
    assert ".. data:: __version__" in API_RST.read_text()
