# Every target creates .venv and installs the project (editable, with the test
# extra) when .venv is missing or pyproject.toml changed since the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow bench run typecheck clean

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

# NOTE: the cluster on Ray is not built yet, so `run` installs and then stops
# with a message instead of serving.
run: $(STAMP)
	@echo "make run: the rayconf cluster (replicas and stores on Ray) is not built yet;" >&2
	@echo "the storage engine can be used from Python, see README.md." >&2
	@exit 1

clean:
	rm -rf $(VENV) build *.egg-info
