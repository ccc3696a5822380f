# Every target installs what it needs first, into .venv, from the project's own files.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test test-fast lint format docs demo wheel-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24,<27"
	# torch first and exactly pinned: the CPU build, never a CUDA build pulled by a dependency.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

format: install
	$(BIN)/ruff format src tests benchmarks tools
	$(BIN)/ruff check --fix src tests benchmarks tools

# The site goes to site/; warnings (a broken link, a malformed docstring) fail the build.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

# After `install`, so torch is already the pinned CPU build and nothing pulls another.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

demo: install
	$(BIN)/bayesprune demo --out runs/demo

# The built wheel in a fresh venv without extras: demo, export (one-line error), export extra.
wheel-check:
	PYTHON=$(PYTHON) .ci/wheel-check

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache
