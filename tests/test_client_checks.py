"""Health checks run from inside an allocation's network namespace (real namespaces)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import pytest

from yurt.client.checks import CRITICAL, PASSING, WARNING, CheckRunner, CheckSpec, run_script, run_tcp

from .agent_util import free_port, wait_for


@pytest.fixture
def netns():
    name = f"yurt-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    procs = []
    yield name, procs
    for p in procs:
        p.kill()
        p.wait()
    subprocess.run(["ip", "netns", "del", name], check=False)


def collect():
    seen: dict[str, tuple[str, str]] = {}
    lock = threading.Lock()

    def report(check_id, status, output):
        with lock:
            seen[check_id] = (status, output)
    return seen, report


def test_http_check_reaches_a_loopback_only_app_inside_the_namespace(netns):
    name, procs = netns
    port = free_port()
    procs.append(subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-m", "http.server",
                                   "--bind", "127.0.0.1", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    # From the host, 127.0.0.1:port is somebody else (nobody): the app is only in the namespace.
    assert run_tcp(CheckSpec("h", "h", "tcp", port=port, timeout=1)).status == CRITICAL
    seen, report = collect()
    runner = CheckRunner([CheckSpec("web", "web", "http", port=port, path="/", interval=0.2),
                          CheckSpec("closed", "closed", "tcp", port=free_port(), interval=0.2)],
                         f"/var/run/netns/{name}", report=report)
    runner.start()
    try:
        wait_for(lambda: seen.get("web", ("",))[0] == PASSING, what="http check passing")
        assert "200" in seen["web"][1]
        wait_for(lambda: "closed" in seen, what="tcp check ran")
        assert seen["closed"][0] == CRITICAL
    finally:
        runner.stop()


def test_script_check_exit_codes(tmp_path):
    def spec(code):
        return CheckSpec("s", "s", "script", command="/bin/sh", args=["-c", f"echo out; exit {code}"], timeout=5)
    assert run_script(spec(0)).status == PASSING and "out" in run_script(spec(0)).output
    assert run_script(spec(1)).status == WARNING
    assert run_script(spec(2)).status == CRITICAL
    missing = CheckSpec("s", "s", "script", command="/no/such/check")
    assert run_script(missing).status == CRITICAL and "not found" in run_script(missing).output


def test_failures_before_critical_debounce():
    _seen, report = collect()
    port = free_port()
    spec = CheckSpec("t", "t", "tcp", port=port, interval=0.05, initial_status=PASSING, failures_before_critical=3)
    statuses = []
    runner = CheckRunner([spec], "", report=report, on_status=lambda cid, st: statuses.append(st))
    runner.start()
    try:
        wait_for(lambda: len(statuses) >= 5, what="five runs")
    finally:
        runner.stop()
    assert statuses[:3] == [PASSING, PASSING, PASSING] and statuses[3] == CRITICAL
