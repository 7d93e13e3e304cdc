# Each target bootstraps .venv when it is missing. torch==2.13.0 comes from the local CPU wheel.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench venv

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@bash scripts/system_deps.sh
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/leaninfer demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q --runslow

lint: $(STAMP)
	$(BIN)/ruff check src tests

bench: $(STAMP)
	$(BIN)/leaninfer bench decode --json reports/decode.json
