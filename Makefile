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

.PHONY: help setup check-system contracts-deps contracts-check demo node-demo test crash lint format clean

help:
	@echo "make demo            a local testnet: chain + 4 nodes train a demo job together"
	@echo "make node-demo       start one node in a temporary datadir, show its status, stop it"
	@echo "make test            lint, contract artifact check, and the whole test suite"
	@echo "make crash           the crash-consistency harness alone (tests/crash)"
	@echo "make setup           create .venv and install GFL into it (done by demo/test)"
	@echo "make lint            ruff check, ruff format --check and mypy (strict on gfl/fl, gfl/chain, gfl/scheduler)"
	@echo "make contracts-deps  npm ci in contracts/ (solc, to rebuild the contract)"
	@echo "make clean           remove .venv"

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tui/pyproject.toml
	@$(MAKE) --no-print-directory check-system
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install -e ./tui -e '.[dev]'
	@touch $(STAMP)

# System packages pip cannot provide, checked before anything is installed.
check-system:
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; on Debian: sudo apt-get install python3.11 python3.11-venv" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || { echo "setup: GFL needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "setup: the venv module is missing; on Debian: sudo apt-get install python3.11-venv" >&2; exit 1; }
	@command -v cc >/dev/null || { echo "setup: no C compiler; on Debian: sudo apt-get install build-essential" >&2; exit 1; }
	@ls /usr/include/gmp.h /usr/include/*/gmp.h /usr/local/include/gmp.h 2>/dev/null | grep -q . || { echo "setup: GMP headers missing (fastecdsa needs them); on Debian: sudo apt-get install libgmp-dev" >&2; exit 1; }
	@command -v ip >/dev/null && command -v nft >/dev/null || echo "setup: note: the network tests that build namespaces and NATs (tests/faults/test_partition.py, tests/nat; root only) need ip and nft; on Debian: sudo apt-get install iproute2 nftables" >&2

# Node packages in contracts/: solc (to rebuild the contract) and anvil (a real local
# Ethereum node for the devnet and the anvil variant of the tests). The compiled artifact
# is committed, so a node itself needs neither.
NPM_STAMP := contracts/node_modules/.package-lock.json

contracts-deps: $(NPM_STAMP)

$(NPM_STAMP): contracts/package-lock.json
	@command -v npm >/dev/null || { echo "contracts-deps: npm not found; on Debian: sudo apt-get install nodejs npm" >&2; exit 1; }
	cd contracts && npm ci --no-audit --no-fund
	@touch $(NPM_STAMP)

# Fails when the committed artifact differs from a fresh solc build.
contracts-check: contracts-deps
	cd contracts && npm run --silent check

# The demo: a chain (anvil when installed), 4 node processes on 127.0.0.1, digits split
# among them, a FedAvg job published, trained and checked on chain.
demo: setup
	@command -v npm >/dev/null && $(MAKE) --no-print-directory contracts-deps || echo "(npm not found: using the embedded chain instead of anvil)"
	$(BIN)/gfl devnet --nodes 4 --rounds 5

# A node in a throw-away datadir: init, up in the background, status, stop.
node-demo: setup
	@set -eu; home=$$(mktemp -d); pid=""; \
	trap '[ -n "$$pid" ] && kill $$pid 2>/dev/null; rm -rf "$$home"' EXIT; \
	$(BIN)/gfl init --home "$$home/node" --listen /ip4/127.0.0.1/tcp/0 --api-port 0 --chain embedded; \
	$(BIN)/gfl up --home "$$home/node" > "$$home/up.log" 2>&1 & pid=$$!; \
	echo; echo "--- gfl status"; \
	$(BIN)/gfl status --home "$$home/node" --wait 60 || { cat "$$home/up.log"; exit 1; }; \
	echo; echo "--- gfl stop"; \
	$(BIN)/gfl stop --home "$$home/node"; wait $$pid; pid=""

# Under CI (CI=1, true or yes) a skipped test fails unless tests/skip_policy.py allows it.
test: lint contracts-check
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

# SIGKILLs and torn writes at a few hundred points of chain, checkpoint, blob and database
# writes; each restart must keep everything committed (bench/RESULTS.md, Crash consistency).
crash: setup
	$(BIN)/pytest -p no:cacheprovider -s -q tests/crash $(PYTEST_ARGS)

# py-libp2p pulls in trio-typing, whose stale trio-stubs would hide trio's own types from
# mypy: MYPYPATH points at a folder holding only a link to the installed trio package.
MYPY_PATH := .mypy-path

lint: setup
	$(BIN)/ruff check gfl tests bench tui
	$(BIN)/ruff format --check gfl tests bench tui
	@mkdir -p $(MYPY_PATH) && ln -sfn "$$($(BIN)/python -c 'import trio, os; print(os.path.dirname(trio.__file__))')" $(MYPY_PATH)/trio
	MYPYPATH=$(MYPY_PATH) $(BIN)/mypy

format: setup
	$(BIN)/ruff format gfl tests bench tui

clean:
	rm -rf $(VENV)
