# The README's commands are these targets. Everything runs from .venv at the repo root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench soak clean install-service cluster

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make run PORT=9090: the demo on another port.
PORT ?= 8080
run: install
	$(BIN)/watchgw demo --port $(PORT)

# As root on the target host: the venv PREFIX, the config in SYSCONFDIR (kept if present) and the
# units in UNITDIR (deploy/install-service.sh says what and why; README: "Running under systemd").
PREFIX ?= /opt/watchgw
SYSCONFDIR ?= /etc/watchgw
UNITDIR ?= /etc/systemd/system
install-service:
	PY=$(PY) PREFIX=$(PREFIX) SYSCONFDIR=$(SYSCONFDIR) UNITDIR=$(UNITDIR) deploy/install-service.sh

# The simulator (demo), 3 replicas and nginx with deploy/nginx/watchgw.conf on loopback: prints the
# live page's address (README: "Replicas behind a load balancer"); Ctrl-C stops it all.
cluster: install
	$(BIN)/python -m tests.cluster

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench

# Chaos convergence for longer than CI does (SOAK_SECONDS, default 300): prints events, faults,
# resumes, resyncs, mismatches (must be 0) and RSS at start and end.
SOAK_SECONDS ?= 300
soak: install
	$(BIN)/python -m tests.chaos --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
