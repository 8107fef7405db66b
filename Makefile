# The front door. Every target creates .venv and installs what it needs, so a fresh
# clone with only Python and pip works.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test smoke-extras bench lint generate fmt docs clean history

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cachewise demo

test: $(STAMP)
	$(PY) -m pytest

# Each extra installed alone into a fresh venv, then smoke-tested (not part of pytest).
smoke-extras: $(STAMP)
	$(PY) scripts/smoke_extras.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

# The long history-checker run: every configuration, HISTORY_SECONDS each.
HISTORY_SECONDS ?= 10
history: $(STAMP)
	$(PY) -m tests.history --seconds $(HISTORY_SECONDS)

# The sync front end, Redis backend and breaker are generated from their async
# sources (scripts/unasync.py): `make generate` rewrites them, `make lint` fails
# when one is stale or a substitution went unused.
generate: $(STAMP)
	$(PY) scripts/unasync.py

lint: $(STAMP)
	$(PY) scripts/unasync.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check src tests benchmarks examples scripts
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(PY) -m cachewise invalidation-map cachewise.cli._demo:invalidation_map_app \
		-o docs/cache-invalidation.md

fmt: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples scripts
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
