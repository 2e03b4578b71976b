# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU threads for torch; CI machines have 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-slow bench venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || (command -v $(PY) >/dev/null && $(PY) -m venv $(VENV) || python3 -m venv $(VENV))
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/lssvwm demo --out runs/demo --minutes $${DEMO_MINUTES:-14}

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

# The slow suite drives the play page in headless Chromium (Debian's chromium + Playwright, no browser download)
# and generates real Memory Maze episodes (the memory-maze extra, rendered on CPU by Debian's OSMesa).
test-slow: $(STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	@ls /usr/lib/*/libOSMesa.so.8 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libosmesa6)
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/pip install -q playwright
	@$(BIN)/python -c "import memory_maze" 2>/dev/null || $(BIN)/pip install -q -e ".[dev,memory-maze]"
	$(BIN)/python -m pytest -m slow -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run maze ssm rollout inference training play profile processes

clean:
	rm -rf runs benchmarks/results
