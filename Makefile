# Everything a fresh machine needs: `make test` and `make demo` install what they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
YURT := $(VENV)/bin/yurt
# Debian packages the tests and the demo use: the CNI plugins, iptables and iproute2 for bridge networking.
DEBS := containernetworking-plugins iptables iproute2

.PHONY: test demo bench deps clean

.stamp-debs:
	@if [ -n "$(DEBS)" ]; then \
	  missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	@touch $@

.stamp-venv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c 'import yurt, hcl2, pydantic, click, rich, fastapi, uvicorn, httpx, pytest, hypothesis, nomad'
	@touch $@

deps: .stamp-debs .stamp-venv

test: deps
	$(PY) -m pytest -q -p no:cacheprovider

# The countdash job on a dev agent with the service mesh; prints the dashboard's URL and runs
# until Ctrl-C (DEMO_SECONDS=N to stop by itself). Needs root, like Nomad's -dev-connect.
demo: deps
	examples/countdash/demo.sh

# Benchmarks (not part of the tests): the scheduler, and the sidecar proxy against HAProxy.
BENCH_DEBS := nginx haproxy wrk
bench: deps
	@missing=$$(for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(PY) bench/scheduler.py
	$(PY) bench/proxy.py

clean:
	rm -rf $(VENV) .stamp-* build *.egg-info src/*.egg-info
