# nanoforge — the README's commands. `make test` on a fresh clone does the whole set-up by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PKGS   := $(sort $(patsubst %/pyproject.toml,%,$(wildcard packages/*/pyproject.toml)))
STAMP  := $(VENV)/.install-stamp
PYTEST_ARGS ?=
SHELL  := bash
.SHELLFLAGS := -o pipefail -c
# pip warns about every missing local index dir in this machine's pip.conf; keep the log readable
QUIET_PIP := 2>&1 | { grep -v '^WARNING: Location' || true; }
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo lint typecheck check-isolated protos bench clean help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install: $(STAMP)  ## create .venv and install every package editable + dev tools (idempotent)
$(STAMP): constraints.txt requirements-dev.txt $(wildcard packages/*/pyproject.toml)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $(QUIET_PIP)
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-dev.txt $(foreach p,$(PKGS),-e "$(p)[test]") $(QUIET_PIP)
	@touch $@

lint: install typecheck  ## ruff + mypy over the whole tree + generated gRPC stubs up to date
	$(BIN)/ruff check .
	$(BIN)/python tools/gen_protos.py --check
	$(BIN)/ruff format --check . || (echo "run: $(BIN)/ruff format ." && exit 1)

# mypy checks every package by import name (packages/<dir>/src/nanoforge/<name>/py.typed), finding the
# others through MYPY_PATH, the src folders joined by ":".
MYPY_PKGS := $(sort $(foreach f,$(wildcard packages/*/src/nanoforge/*/py.typed),$(notdir $(patsubst %/,%,$(dir $(f))))))
MYPY_PATH := $(subst $(eval) ,:,$(wildcard packages/*/src))
typecheck: install  ## mypy over every package (settings: [tool.mypy] in pyproject.toml)
	MYPYPATH=$(MYPY_PATH) $(BIN)/mypy $(addprefix -p nanoforge.,$(MYPY_PKGS))

test: install lint  ## ruff + the default pytest selection (not slow, not gpu)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" -p no:cacheprovider $(PYTEST_ARGS)

check-isolated:  ## each package's tests in a fresh venv with only its declared dependencies
	$(PYTHON) tools/check_isolated.py $(PKGS)

protos: install  ## regenerate the gRPC stubs in packages/api from protos/
	$(BIN)/python tools/gen_protos.py

demo: install  ## the main job on the embedded default corpus (no download, no ../shared)
	$(BIN)/python tools/demo.py

bench: install  ## benchmarks against peers; figures go to docs/BENCHMARKS.md
	$(BIN)/python tools/bench/tokenizer.py

clean:  ## remove venvs and caches
	rm -rf $(VENV) .venv-iso .pytest_cache .ruff_cache .mypy_cache
