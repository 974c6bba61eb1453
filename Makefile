# Two commands set up a fresh machine and do the work:
#   make quickstart   -> venv + pinned deps, then the main job on the embedded synthetic world
#                        (ARGS="--preset tiny" for a smoke run; OUT=folder)
#   make test         -> venv + pinned deps, then the test suite
PY      ?= python3
VENV    ?= .venv
STAMP   := $(VENV)/.installed
BIN     := $(VENV)/bin
OUT     ?= runs/quickstart
ARGS    ?=

.PHONY: quickstart test lint browser perf setup clean-venv

setup: $(STAMP)

# --compile-bytecode: uv leaves compiling to the first import, and where PYTHONDONTWRITEBYTECODE is set (as on this
# project's machines) that first import never ends: every process, each Ray worker included, compiled ray's and
# torch's sources again (14 s of a 60 s quickstart; Ray Train's two-worker test 70 s -> 28 s with bytecode).
$(STAMP): requirements.txt pyproject.toml Makefile
	$(PY) -m pip install -q uv || $(PY) -m pip install -q --user uv
	$(PY) -m uv venv --allow-existing --python $(PY) $(VENV)
	$(PY) -m uv pip install --compile-bytecode --python $(BIN)/python -r requirements.txt
	$(PY) -m uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/reenact quickstart --out $(OUT) $(ARGS)

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .

# The pose-discrepancy report is checked in a real headless browser: Chromium from Debian, installed when missing
# (needs root and apt-get; elsewhere install it yourself, or the browser test is skipped outside CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium fonts-liberation >/dev/null; } || echo "note: chromium not installed; the report's browser test will skip"

test: lint browser
	$(BIN)/python -m pytest -q tests

perf: $(STAMP)
	$(BIN)/python perf/run_all.py

clean-venv:
	rm -rf $(VENV)
