# Everything a fresh machine needs: `make test` and `make demo` install what they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
YURT := $(VENV)/bin/yurt
# Debian packages the tests and the demo use: the CNI plugins, iptables and iproute2 for bridge networking;
# podman (with runc) as the container engine behind the docker driver, through its Docker-compatible API;
# etcd (the server, /usr/bin/etcd, and etcdctl) for highly available servers: the state store's tests run
# a loopback etcd cluster (tests/etcd_cluster.py) and `yurt lab` runs an etcd member on each server host.
# chromium and chromium-driver: the web UI's tests drive a real headless browser (selenium).
# gcc and libc6-dev: the agent compiles the task supervisor (src/yurt/client/supervise.c) on first use.
# git: git:: artifact sources (src/yurt/client/artifact_hook.py).
DEBS := containernetworking-plugins iptables iproute2 podman runc catatonit curl openssl etcd-server etcd-client \
	chromium chromium-driver gcc libc6-dev git
# The engine the docker driver's tests and `make images` use: podman's socket, unless DOCKER_HOST says otherwise.
PODMAN_SOCK := /run/podman/podman.sock
ENGINE := $(or $(DOCKER_HOST),unix://$(PODMAN_SOCK))

# Test files run in parallel, this many at a time (tests/conftest.py keeps the ones that share a
# fixed resource on one worker); most of a test's time is spent waiting for agents and etcd.
TEST_WORKERS ?= 3

.PHONY: test lint demo bench deps clean podman images supervisor

.stamp-debs: Makefile
	@if [ -n "$(DEBS)" ]; then \
	  missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	@touch $@

.stamp-venv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c 'import yurt, hcl2, pydantic, click, rich, fastapi, uvicorn, httpx, jinja2, pytest, xdist, hypothesis, nomad, docker, prometheus_client, mypy, importlinter, selenium'
	$(VENV)/bin/ruff --version >/dev/null
	@touch $@

deps: .stamp-debs .stamp-venv supervisor

# The compiled task supervisor, built into the user's cache as drivers made without an agent's
# data dir use it (an agent builds its own into <data dir>/client/bin on first use, by source hash).
supervisor: .stamp-debs .stamp-venv
	@$(PY) -c 'from yurt.client.supervise import default_supervisor as d; import sys; s = d(); b = s.binary(); print("supervisor:", b or s.error); sys.exit(0 if b else 1)'

# podman's Docker API service (configured for this machine, started in the background if not running).
# Not root: nothing is set up, and the docker driver's tests skip, saying why.
podman: deps
	@if [ -n "$(DOCKER_HOST)" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then scripts/podman-setup.sh; \
	else echo "make podman: not root, podman's service is not set up (the docker driver's tests will skip)"; fi

# hashicorpnomad/counter-api:v1, hashicorpnomad/counter-dashboard:v1 and yurt/pause:1, built locally
# from examples/countdash (no registry needed); kept when present (FORCE=1 rebuilds them).
images: podman
	@if [ -n "$(DOCKER_HOST)" ] || [ "$$(id -u)" = 0 ]; then \
	  DOCKER_HOST=$(ENGINE) $(PY) images/build.py $(if $(FORCE),--force); fi

# The design's rules, checked by tools (configured, with the reason for each rule, in pyproject.toml):
# ruff (style that hides bugs, and bugs), mypy (the core's types), import-linter (the package table:
# who may import whom). All three run, so one pass shows every finding; any finding fails the build.
lint: deps
	@status=0; \
	echo "ruff check"; $(VENV)/bin/ruff check || status=1; \
	echo "mypy"; $(VENV)/bin/mypy || status=1; \
	echo "lint-imports"; $(VENV)/bin/lint-imports || status=1; \
	exit $$status

test: deps lint images
	YURT_TEST_DOCKER_HOST=$(ENGINE) $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The countdash job on a dev agent with the service mesh; prints the dashboard's URL and runs
# until Ctrl-C (DEMO_SECONDS=N to stop by itself). Needs root, like Nomad's -dev-connect.
demo: deps
	examples/countdash/demo.sh

# Benchmarks (not part of the tests; bench/README.md says what each measures, against what, and the
# last figures): the scheduler (pure, through the server, over HTTP with 5,000 nodes heartbeating
# and watching, SQLite and etcd; failover; the fleet), the state store's writes against SQLite
# alone, the sidecar proxy against HAProxy, the etcd clients etcd3gw and aetcd side by side (a
# client not installed is skipped: pip install aetcd etcd3gw), and one node running 200
# allocations (compiled supervisor vs Python executor).
BENCH_DEBS := nginx haproxy wrk
bench: deps
	@missing=$$(for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(PY) bench/scheduler.py
	$(PY) bench/state_store.py
	$(PY) bench/proxy.py
	$(PY) bench/etcd_clients.py
	$(PY) bench/node.py

clean:
	rm -rf $(VENV) .stamp-* build *.egg-info src/*.egg-info .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
