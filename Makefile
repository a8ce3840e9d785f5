# GFL: set-up, demo and tests.  `make demo` and `make test` are all a fresh machine needs.
#
# `make setup` creates .venv, installs torch first (CPU-usable pins), then the project
# with its dev extras. It is skipped when nothing changed (stamp file), so every other
# target may depend on it.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gfl-setup
TORCH := torch==2.14.1 torchvision==0.29.1
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for the smaller CPU-only wheels
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: help setup check-system contracts-deps demo test lint format clean

help:
	@echo "make demo            start a node in a temporary datadir, show its status, stop it"
	@echo "make test            run the test suite"
	@echo "make setup           create .venv and install GFL into it (done by demo/test)"
	@echo "make lint            ruff check"
	@echo "make contracts-deps  npm ci in contracts/ (solc, to rebuild the contract)"
	@echo "make clean           remove .venv"

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(MAKE) --no-print-directory check-system
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install -e '.[dev]'
	@touch $(STAMP)

# System packages pip cannot provide, checked before anything is installed.
check-system:
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; on Debian: sudo apt-get install python3.11 python3.11-venv" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || { echo "setup: GFL needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "setup: the venv module is missing; on Debian: sudo apt-get install python3.11-venv" >&2; exit 1; }
	@command -v cc >/dev/null || { echo "setup: no C compiler; on Debian: sudo apt-get install build-essential" >&2; exit 1; }
	@ls /usr/include/gmp.h /usr/include/*/gmp.h /usr/local/include/gmp.h 2>/dev/null | grep -q . || { echo "setup: GMP headers missing (fastecdsa needs them); on Debian: sudo apt-get install libgmp-dev" >&2; exit 1; }

# Node packages for rebuilding contracts/ (solc); the compiled artifact is committed,
# so nodes and tests do not need this.
contracts-deps:
	@if [ -f contracts/package-lock.json ]; then \
	  command -v npm >/dev/null || { echo "contracts-deps: npm not found; on Debian: sudo apt-get install nodejs npm" >&2; exit 1; }; \
	  npm ci --prefix contracts; \
	else echo "contracts-deps: no contracts/package-lock.json, nothing to install"; fi

# A node in a throw-away datadir: init, up in the background, status, stop.
demo: setup
	@set -eu; home=$$(mktemp -d); pid=""; \
	trap '[ -n "$$pid" ] && kill $$pid 2>/dev/null; rm -rf "$$home"' EXIT; \
	$(BIN)/gfl init --home "$$home/node" --listen /ip4/127.0.0.1/tcp/0 --api-port 0 --chain embedded; \
	$(BIN)/gfl up --home "$$home/node" > "$$home/up.log" 2>&1 & pid=$$!; \
	echo; echo "--- gfl status"; \
	$(BIN)/gfl status --home "$$home/node" --wait 60 || { cat "$$home/up.log"; exit 1; }; \
	echo; echo "--- gfl stop"; \
	$(BIN)/gfl stop --home "$$home/node"; wait $$pid; pid=""

test: setup
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

lint: setup
	$(BIN)/ruff check gfl tests bench

format: setup
	$(BIN)/ruff format gfl tests bench

clean:
	rm -rf $(VENV)
