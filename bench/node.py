"""One node, many allocations: what a client agent spends to run and supervise them.

    .venv/bin/python bench/node.py [--count 200] [--rest 10] [--only compiled|python]

For each way of supervising tasks, a fresh ``yurt agent -dev`` on loopback (its own data dir and
HTTP port) runs one job of ``--count`` allocations of a small raw_exec task (``sleep``):

- ``compiled``: the default: each task's executor execv's the compiled supervisor
  (src/yurt/client/supervise.c, built into the agent's data dir on first use);
- ``python``: the fallback, as on a machine without a C compiler (``CC`` names no compiler and
  the data dir is new, so the agent cannot build it): the Python executor supervises each task.

Printed for each: the time from the job's registration until all allocations run, the agent's
RSS and CPU at rest (over ``--rest`` seconds once all run), the supervision processes' RSS
(the executor pids from each task's pid file: total and per task), then the ratio python /
compiled. Each agent is stopped and everything it started is killed (by the pids in its task
dirs) before the next; the whole run is bounded (``--timeout`` per mode to all running).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

JOB = "bench-node"
MB = 1024 * 1024


def job(count: int) -> dict[str, Any]:
    return {"Job": {
        "ID": JOB, "Name": JOB, "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{
            "Name": "g", "Count": count,
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": False},
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                       "Config": {"command": "/bin/sleep", "args": ["3600"]},
                       "Resources": {"CPU": 10, "MemoryMB": 10}}],
        }],
    }}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def _proc_stat(pid: int) -> tuple[float, int]:
    """(cpu seconds, rss bytes) of one process."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    cpu = (int(rest[11]) + int(rest[12])) / ticks
    return cpu, int(rest[21]) * os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    try:
        return _proc_stat(pid)[1]
    except (OSError, IndexError, ValueError):
        return 0


def _pid_files(data: Path) -> list[dict[str, Any]]:
    out = []
    for p in (data / "client" / "alloc").glob("*/*/.executor-pid.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            pass
    return out


def _kill_everything(data: Path) -> None:
    for pids in _pid_files(data):
        for sig_target in (-int(pids["task_pid"]), int(pids["executor_pid"])):
            try:
                os.kill(sig_target, signal.SIGKILL)
            except OSError:
                pass


def run_mode(mode: str, count: int, rest: float, timeout: float) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix=f"yurt-bench-node-{mode}-"))
    data = root / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    if mode == "python":
        env["CC"] = str(root / "no-compiler")   # the agent cannot build the supervisor: the fallback
    log = open(root / "agent.log", "ab")
    agent = subprocess.Popen([sys.executable, "-m", "yurt.cli.main", "agent", "-dev", "-http-port", str(port),
                              "-data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _http(url + "/v1/agent/health", timeout=2)
                break
            except OSError:
                if agent.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "agent.log").read_text()[-2000:]
                    raise RuntimeError(f"{mode}: the agent did not start: {tail}") from None
                time.sleep(0.2)
        t0 = time.monotonic()
        start_cpu, _ = _proc_stat(agent.pid)
        _http(url + "/v1/jobs", "PUT", job(count))
        deadline = t0 + timeout
        running = 0
        while True:
            allocs = _http(url + f"/v1/job/{JOB}/allocations")
            running = sum(1 for a in allocs if a["ClientStatus"] == "running")
            if running >= count:
                break
            if time.monotonic() > deadline:
                states: dict[str, int] = {}
                for a in allocs:
                    states[a["ClientStatus"]] = states.get(a["ClientStatus"], 0) + 1
                raise RuntimeError(f"{mode}: {running} of {count} running after {timeout:.0f}s: "
                                   f"allocations {states}; agent log: "
                                   f"{(root / 'agent.log').read_text()[-1500:]}")
            time.sleep(0.25)
        to_running = time.monotonic() - t0
        start_cpu = _proc_stat(agent.pid)[0] - start_cpu
        time.sleep(1.0)   # the last starts' bookkeeping
        cpu0, _ = _proc_stat(agent.pid)
        time.sleep(rest)
        cpu1, agent_rss = _proc_stat(agent.pid)
        supervisors = [int(p["executor_pid"]) for p in _pid_files(data)]
        exes = set()
        for pid in supervisors:
            try:
                exes.add(Path(os.readlink(f"/proc/{pid}/exe")).name)
            except OSError:
                pass
        sup_rss = sum(_rss(pid) for pid in supervisors)
        result = {"to_running_s": to_running, "agent_cpu_to_running_s": start_cpu, "agent_rss_mb": agent_rss / MB,
                  "agent_cpu_pct": 100 * (cpu1 - cpu0) / rest, "supervisors": len(supervisors),
                  "supervision_rss_mb": sup_rss / MB, "per_task_mb": sup_rss / MB / max(1, len(supervisors))}
        print(f"  {mode:8s} supervisors run {', '.join(sorted(exes))}", flush=True)
        try:
            _http(url + f"/v1/job/{JOB}", "DELETE")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                allocs = _http(url + f"/v1/job/{JOB}/allocations")
                if all(a["ClientStatus"] != "running" for a in allocs):
                    break
                time.sleep(0.5)
        except OSError:
            pass
        return result
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGINT)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
        _kill_everything(data)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="allocations on the node (200)")
    ap.add_argument("--rest", type=float, default=10.0, help="seconds of rest measured once all run (10)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds each mode may take to run all (600)")
    ap.add_argument("--only", choices=("compiled", "python"), help="one mode only")
    args = ap.parse_args(argv)
    modes = [args.only] if args.only else ["compiled", "python"]
    print(f"one node, {args.count} allocations of raw_exec sleep; rest measured over {args.rest:g} s")
    results = {}
    for mode in modes:
        r = run_mode(mode, args.count, args.rest, args.timeout)
        results[mode] = r
        print(f"  {mode:8s} all running after {r['to_running_s']:.1f} s "
              f"(the agent's CPU meanwhile: {r['agent_cpu_to_running_s']:.1f} s); "
              f"agent at rest: RSS {r['agent_rss_mb']:.0f} MB, "
              f"CPU {r['agent_cpu_pct']:.1f} %; supervision RSS {r['supervision_rss_mb']:.0f} MB for "
              f"{r['supervisors']} tasks = {r['per_task_mb']:.2f} MB per task", flush=True)
    if len(results) == 2:
        c, p = results["compiled"], results["python"]
        print(f"  python / compiled: supervision RSS {p['supervision_rss_mb'] / c['supervision_rss_mb']:.1f} x, "
              f"time to all running {p['to_running_s'] / c['to_running_s']:.2f} x, "
              f"agent CPU at rest {p['agent_cpu_pct'] / max(c['agent_cpu_pct'], 0.01):.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
