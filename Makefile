# Every target creates .venv and installs the project (editable, with the test
# extra) when .venv is missing or pyproject.toml changed since the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow bench sim chaos run typecheck clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# mypy cannot follow the editable install's import hook, so it reads the
# package through a tree of directory links that mirrors the package-dir map.
TYPECHECK_TREE := build/typecheck/rayconf

typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p $(TYPECHECK_TREE)
	for path in rayconf/*; do ln -s "$$PWD/$$path" $(TYPECHECK_TREE)/; done
	for folder in store actors clients sims; do ln -s "$$PWD/$$folder" $(TYPECHECK_TREE)/$$folder; done
	MYPYPATH=build/typecheck $(BIN)/python -m mypy --strict --cache-dir build/typecheck/.mypy_cache -p rayconf.store -p rayconf.actors.raft

bench: $(STAMP)
	$(BIN)/python -m bench

# 10,000 seeds of the deterministic simulator, an estimated hour on 2 cores.
# Failing seeds leave their history and report in sim-failures/.
sim: $(STAMP)
	$(BIN)/rayconf sim --seeds 10000 --nodes 5 --faults all

# 30 minutes of fault injection on a local multi-node Ray cluster (see docs/chaos.md).
# A failing run leaves its history and report in sim-failures/.
chaos: $(STAMP)
	$(BIN)/rayconf sim --ray --duration 1800 --faults all

# Serves the embedded default cluster in the foreground until Ctrl-C.
run: $(STAMP)
	$(BIN)/rayconf serve

clean:
	rm -rf $(VENV) build *.egg-info
