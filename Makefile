# Two commands: `make run` and `make test`. Everything else is set up on the way.
# The first interpreter that is really Python 3.11+ (pyenv shims may exist but not run).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench soak typecheck clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (none found on PATH)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $(STAMP)

run: $(STAMP)
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
