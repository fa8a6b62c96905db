# Two commands: `make run` and `make test`. Everything else is set up on the way.
# `make run` installs what the demo needs and nothing more; `make test` and `make bench` add their extras.
# The first interpreter that is really Python 3.11+ (pyenv shims may exist but not run).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
# uv installs what pip would, from PyPI, in seconds (pip took 90 s here for the demo's packages),
# compiled as pip does (every process of the demo would compile them again if the environment
# says not to write bytecode). uv reads UV_DEFAULT_INDEX, not pip's configuration: where uv is
# missing or fails (a machine that reaches only a mirror pip is configured for), pip installs.
PIP     = $(PY) -m pip install --quiet --disable-pip-version-check
INSTALL = install() { \
	if [ -x $(UV) ] && $(UV) pip install --quiet --compile-bytecode --python $(PY) "$$@"; then return 0; fi; \
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null || return 1; \
	echo "uv could not install; pip does" >&2; $(PIP) "$$@"; }; install
RUN_STAMP := $(VENV)/.installed-run
STAMP  := $(VENV)/.installed

.PHONY: run test bench soak typecheck clean

# A venv without pip (ensurepip alone took 15 s), and uv in it, fetched by the interpreter's own
# pip; where that fails, the venv gets pip after all and pip does the installs.
$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (none found on PATH)"; exit 1; }
	$(PYTHON) -m venv --without-pip $(VENV)
	$(PYTHON) -m pip --python $(PY) install --quiet --disable-pip-version-check --root-user-action=ignore uv \
		|| $(PY) -m ensurepip --default-pip >/dev/null

# The service and the demo: the package and its runtime dependencies only.
$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(INSTALL) -e .
	@touch $(RUN_STAMP)

# Development: tests, type checks and benchmarks too (what `make test` and `make bench` need).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(INSTALL) -e '.[test,bench]'
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
