# revproxy: every target creates or reuses the virtual environment it needs.
# The interpreter of the virtual environment: see scripts/choose-python.sh.
HERE := $(dir $(lastword $(MAKEFILE_LIST)))
PYTHON ?= $(shell sh $(HERE)scripts/choose-python.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The forwarding path compiled with mypyc (revproxy/native.py); rebuilt when a source changes.
NATIVE := $(VENV)/.native-stamp
SOURCES := $(shell find revproxy -name '*.py')
CONFIG ?=

.PHONY: run test lint bench sysdeps clean check compile loadtest loadtest-broadcast

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,loadtest]'
	touch $(STAMP)

$(NATIVE): $(STAMP) $(SOURCES)
	$(PY) -c 'import sys, revproxy.native as n; sys.exit(n.build())'
	touch $(NATIVE)

compile: $(NATIVE)

# System tools the tests and benchmark drive (curl, openssl, nginx, wrk); apt-get only when missing.
sysdeps:
	bash scripts/install-system-packages.sh

run: $(NATIVE)
ifeq ($(CONFIG),)
	$(PY) -m revproxy demo
else
	$(PY) -m revproxy run -c $(CONFIG)
endif

check: $(STAMP)
	$(PY) -m revproxy check -c $(or $(CONFIG),deploy/examples/demo.toml)

# The whole suite runs against the compiled forwarding path; the HTTP paths run once more
# as pure Python, the form used where there is no C compiler (about 20 s).
PURE_TESTS := tests/http tests/e2e/test_framing.py tests/e2e/test_keepalive.py \
	tests/e2e/test_smoke.py tests/e2e/test_streaming.py tests/e2e/test_proxy_protocol.py

test: $(NATIVE) sysdeps
	$(PY) -m pytest
	REVPROXY_PURE_PYTHON=1 $(PY) -m pytest -q -p no:cacheprovider $(PURE_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check revproxy tests bench loadtest
	$(VENV)/bin/ruff format --check revproxy tests bench loadtest
	$(VENV)/bin/mypy revproxy loadtest

bench: $(NATIVE) sysdeps
	$(PY) bench/run.py $(BENCH_ARGS)

# Scripted virtual users against the demo (or --host URL); see docs/loadtest.md.
loadtest: $(NATIVE)
	$(PY) -m revproxy loadtest $(LOADTEST_ARGS)

# 10,000 clients holding long polls through one proxy on this machine (about 70 s).
loadtest-broadcast: $(NATIVE)
	$(PY) -m loadtest.broadcast --clients 10000 $(BROADCAST_ARGS)

clean:
	test ! -x $(PY) || $(PY) -c 'import revproxy.native as n; n.remove()'
	rm -rf $(VENV) build certs/dev .pytest_cache .mypy_cache .ruff_cache
