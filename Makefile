# Two commands: `make run` and `make test`. Everything else is set up on the way.
# `make run` installs what the demo needs and nothing more; `make test` and `make bench` add their extras.
# The first interpreter that is really Python 3.11+ (pyenv shims may exist but not run).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
STAMP  := $(VENV)/.installed

.PHONY: run test bench soak typecheck clean

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (none found on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The service and the demo: the package and its runtime dependencies only.
$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) -e .
	@touch $(RUN_STAMP)

# Development: tests, type checks and benchmarks too (what `make test` and `make bench` need).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[test,bench]'
	@touch $(RUN_STAMP) $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/liberation demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench

soak: $(STAMP)
	$(PY) -m bench soak

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
