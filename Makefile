# revproxy: every target creates or reuses the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?=

.PHONY: run test lint bench sysdeps clean check loadtest loadtest-broadcast

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,loadtest]'
	touch $(STAMP)

# System tools the tests and benchmark drive (curl, openssl, nginx, wrk); apt-get only when missing.
sysdeps:
	bash scripts/install-system-packages.sh

run: $(STAMP)
ifeq ($(CONFIG),)
	$(PY) -m revproxy demo
else
	$(PY) -m revproxy run -c $(CONFIG)
endif

check: $(STAMP)
	$(PY) -m revproxy check -c $(or $(CONFIG),deploy/examples/demo.toml)

test: $(STAMP) sysdeps
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check revproxy tests bench loadtest
	$(VENV)/bin/ruff format --check revproxy tests bench loadtest
	$(VENV)/bin/mypy revproxy loadtest

bench: $(STAMP) sysdeps
	$(PY) bench/run.py $(BENCH_ARGS)

# Scripted virtual users against the demo (or --host URL); see docs/loadtest.md.
loadtest: $(STAMP)
	$(PY) -m revproxy loadtest $(LOADTEST_ARGS)

# 10,000 clients holding long polls through one proxy on this machine (about 70 s).
loadtest-broadcast: $(STAMP)
	$(PY) -m loadtest.broadcast --clients 10000 $(BROADCAST_ARGS)

clean:
	rm -rf $(VENV) certs/dev .pytest_cache .mypy_cache .ruff_cache
