# The two commands of a fresh machine are `make demo` and `make test`;
# both install what they need first (system packages, .venv, the project).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# netcat-openbsd: the demo tour talks to the VIP with nc.
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
# gcc libc6-dev python3-dev: mypyc compiles the SIP path into C extensions
#   when the project is installed (setup.py); the tests hold them to the
#   Python they are compiled from.
APT_PACKAGES := netcat-openbsd chromium sip-tester kamailio iproute2 keepalived curl \
                gcc libc6-dev python3-dev
STAMP  := $(VENV)/.installed
# The SIP path is compiled in place (setup.py): an edit to it must rebuild
# it, or the stale extension would be imported instead of the edited source.
SIP_SOURCES := $(wildcard src/ocsbal/sip/*.py)

.PHONY: install system-packages demo test lint docs bench clean

install: $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	    else \
	        echo "missing system packages:$$missing (run: sudo apt-get install$$missing)"; \
	    fi; \
	fi

$(STAMP): pyproject.toml setup.py $(SIP_SOURCES) | system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

demo: install
	$(BIN)/python -m ocsbal.demo

lint: install
	$(BIN)/ruff check src tests examples bench setup.py
	$(BIN)/ruff format --check src tests examples bench setup.py
	$(BIN)/mypy

docs: install
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site

test: install lint docs
	$(BIN)/pytest --cov --cov-report=term-missing:skip-covered

# haproxy: the reference the relay is measured against; nginx-light (HTTP and
# TLS server), wrk, sip-tester (SIPp) and kamailio: the loads and servers;
# gcc: bench/loadgen.c, the fixed-rate and SIP load generator.  matplotlib
# (the `bench` extra) draws the chart.  `make bench BENCH_ARGS=--quick` is a
# one-minute smoke run that writes no results.
BENCH_STAMP := $(VENV)/.bench-installed
bench: APT_PACKAGES += haproxy nginx-light wrk sip-tester kamailio gcc libc6-dev
# POOL_ARGS: the seed's pool, scaled down (bench/pool_scale.py --help; at
# full size: POOL_ARGS="--clients 100000 --workers 13 --rate 500").
POOL_ARGS ?= --clients 4000 --steady 20
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(if $(findstring --quick,$(BENCH_ARGS)),,$(BIN)/python bench/pool_scale.py $(POOL_ARGS))

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -e '.[test,bench]'
	touch $@

clean:
	rm -rf $(VENV) build dist site .coverage .pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
