# Two entry points that work on a fresh machine with Python >= 3.11 and pip:
#   make run    set up .venv and run the daemon: drop files into ./inbox, state in ./crystalline-state
#   make test   set up .venv with the test extras and PyTorch, and run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run sample test bench lock clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# the tests add the bench extra: PyTorch, the reference the engine's parity tests compare against
# (tests/unit/engine/test_torch_parity.py, test_arch_torch.py). A stamp of its own, so that
# `make run` stays without it.
$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/crystalline run

# the offline trainer on the bundled sample text (a separate state directory)
sample: $(BIN)/.installed
	$(BIN)/crystalline train examples/sample.txt --steps 300 --state-dir sample-state

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/crystalline bench

# re-resolve the locked dependency set after a change to pyproject.toml (docs/DEPLOY.md)
lock: $(BIN)/.installed
	$(BIN)/python -m uv lock
	$(BIN)/python -m uv export --frozen --quiet --extra postgres --no-emit-project --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
