# Entry points for a fresh clone: each target creates .venv when it is missing.
#   make train ARGS="dataset=fashion"   installs what training needs, then trains
#   make test                           installs the dev extras, runs every test (what CI runs)
#   make test-fast                      the edit loop: pytest -m "not slow", one process per core
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --constraint .ci/constraints.txt

.PHONY: train test test-fast lint format

$(VENV)/.installed-train: pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-train
	$(PIP) -e ".[dev]"
	touch $@

train: $(VENV)/.installed-train
	$(BIN)/python -m lenet_lightning.train $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n auto --dist worksteal $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
