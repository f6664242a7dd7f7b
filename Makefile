# The two commands of a fresh machine are `make demo` and `make test`;
# each installs what it needs first (system packages, .venv, the project),
# and only that: the demo needs none of the test tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# The system packages each command needs, installed with apt-get as root
# (otherwise the missing ones are named, with the command that installs them).
#
# netcat-openbsd curl: the README's tour talks to the VIP with nc and to the
#   admin interface with curl; the demo itself needs nothing but Python.
DEMO_PACKAGES := netcat-openbsd curl
# gcc libc6-dev python3-dev: mypyc compiles the SIP path into C extensions
#   when the project is installed (setup.py); without them it installs as
#   Python, which the demo runs as well.  The tests hold the extensions to
#   the Python they are compiled from, and the benchmarks measure them.
BUILD_PACKAGES := gcc libc6-dev python3-dev
# chromium: the status page is tested in a real headless browser.
# sip-tester kamailio: SIPp registers through the balancer to two Kamailio
#   registrars that the test starts itself.  On a systemd host the package
#   also starts kamailio.service, which binds 127.0.0.1 and the host's own
#   addresses (never 127.0.50.x, the test's), so the two do not conflict.
# iproute2 keepalived curl: the network tests build namespaces with ip, and
#   run a keepalived pair whose check script calls the admin API with curl.
#   The package enables keepalived.service, which does not start without an
#   /etc/keepalived/keepalived.conf (none is shipped); the test's keepalived
#   runs in its own namespaces with its own files.
# haproxy: tests/test_pool_scale.py checks the configurations the
#   100,000-client benchmark writes for it with haproxy -c.
TEST_PACKAGES := $(BUILD_PACKAGES) chromium sip-tester kamailio iproute2 \
                 keepalived curl haproxy
# haproxy: the reference the relay is measured against; nginx-light (HTTP and
# TLS server), wrk, sip-tester (SIPp) and kamailio: the loads and servers;
# gcc also builds bench/loadgen.c and bench/ocsim.c, the load generators.
BENCH_PACKAGES := $(BUILD_PACKAGES) haproxy nginx-light wrk sip-tester kamailio

# One stamp a set of the project's extras (pyproject.toml): none for the
# demo, `test` (pytest, ruff, mypy, mkdocs...) for lint, docs and test,
# `bench` (matplotlib, trustme) for bench.  Each installs the project again,
# so that it is compiled once a command has brought the compiler.
STAMP       := $(VENV)/.installed
TEST_STAMP  := $(VENV)/.test-installed
BENCH_STAMP := $(VENV)/.bench-installed
# The SIP path is compiled in place (setup.py): an edit to it must rebuild
# it, or the stale extension would be imported instead of the edited source.
SIP_SOURCES := $(wildcard src/ocsbal/sip/*.py)
INSTALLED_FROM := pyproject.toml setup.py $(SIP_SOURCES)

.PHONY: install demo test lint docs bench clean \
        demo-packages test-packages bench-packages

# $(call apt-get,PACKAGES): install those of PACKAGES that are missing.
apt-get = missing=""; for p in $(1); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	    else \
	        echo "missing system packages:$$missing (run: sudo apt-get install$$missing)"; \
	    fi; \
	fi

demo-packages:
	@$(call apt-get,$(DEMO_PACKAGES))

test-packages:
	@$(call apt-get,$(TEST_PACKAGES))

bench-packages:
	@$(call apt-get,$(BENCH_PACKAGES))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(STAMP)

$(STAMP): $(INSTALLED_FROM) | demo-packages $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(TEST_STAMP): $(INSTALLED_FROM) | test-packages $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $@

$(BENCH_STAMP): $(INSTALLED_FROM) | bench-packages $(BIN)/python
	$(BIN)/pip install -e '.[bench]'
	touch $@

demo: $(STAMP)
	$(BIN)/python -m ocsbal.demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests examples bench setup.py
	$(BIN)/ruff format --check src tests examples bench setup.py
	$(BIN)/mypy

docs: $(TEST_STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site

test: $(TEST_STAMP) lint docs
	$(BIN)/pytest --cov --cov-report=term-missing:skip-covered

# `make bench BENCH_ARGS=--quick` is a one-minute smoke run that writes no
# results.  POOL_ARGS: the 100,000-client pool, scaled down
# (bench/pool_scale.py --help; at full size:
# POOL_ARGS="--clients 100000 --workers 13 --rate 500").
POOL_ARGS ?= --clients 4000 --steady 20
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(if $(findstring --quick,$(BENCH_ARGS)),,$(BIN)/python bench/pool_scale.py $(POOL_ARGS))

clean:
	rm -rf $(VENV) build dist site .coverage .pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
