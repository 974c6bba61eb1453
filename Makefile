# Two commands set up a fresh machine and do the work:
#   make quickstart   -> venv + pinned deps, then the main job on the embedded synthetic world
#   make test         -> venv + pinned deps, then the test suite
PY      ?= python3
VENV    ?= .venv
STAMP   := $(VENV)/.installed
BIN     := $(VENV)/bin
OUT     ?= runs/quickstart

.PHONY: quickstart test lint perf setup clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m pip install -q uv || $(PY) -m pip install -q --user uv
	$(PY) -m uv venv --allow-existing --python $(PY) $(VENV)
	$(PY) -m uv pip install --python $(BIN)/python -r requirements.txt
	$(PY) -m uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/reenact quickstart --out $(OUT)

lint: $(STAMP)
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q tests

perf: $(STAMP)
	$(BIN)/python perf/run_all.py

clean-venv:
	rm -rf $(VENV)
