"""Handover without dropping requests: an allocation of a Connect service is stopped while a
caller sends requests through its sidecar's upstream without pause (a real -dev-connect agent,
bridge namespaces, real sidecars and mTLS, raw_exec apps).

What the stop does (docs/architecture.md, "Running an allocation"): the services leave the
catalog, so the caller's sidecar stops picking the instance; the shutdown delays pass; the
instance's sidecar refuses new connections (a caller's dial that still lands there is retried
on another instance) and lets the accepted ones finish, which the app still answers; only then
is the app stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from .agent_util import AgentProcess, allocs, register, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

# The app: GET / answers {"alloc": <its allocation>}; GET /hold answers only once the file
# <release dir>/<its allocation> exists (a request in flight for as long as the test wants).
APP = r'''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ALLOC = os.environ["NOMAD_ALLOC_ID"]
RELEASE = os.path.join(sys.argv[1], ALLOC)
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/hold":
            print("holding", ALLOC, flush=True)
            while not os.path.exists(RELEASE):
                time.sleep(0.05)
        body = json.dumps({"alloc": ALLOC, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", 9001), Handler).serve_forever()
'''

# The caller: WORKERS threads, each sending one request after the other through the upstream
# listener, each on a new connection, until the stop file exists; progress in a JSON file, the
# totals on stdout.
LOOP = r'''
import json, os, socket, sys, threading, time
stop, progress, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()
ok, failed, by_alloc = 0, [], {}
def save():
    with open(progress + ".tmp", "w") as f:
        json.dump({"ok": ok, "failed": failed, "by_alloc": by_alloc}, f)
    os.replace(progress + ".tmp", progress)
def one():
    with socket.create_connection(("127.0.0.1", 8080), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: slow-api\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise ValueError("answer %r" % data[:200])
    return json.loads(body)["alloc"]
def work():
    global ok
    while not os.path.exists(stop):
        try:
            alloc, error = one(), None
        except Exception as e:
            alloc, error = None, "%.3f %r" % (time.time(), e)
        with lock:
            if error:
                failed.append(error)
            else:
                ok += 1
                by_alloc[alloc] = by_alloc.get(alloc, 0) + 1
            if (ok + len(failed)) % 20 == 0:
                save()
threads = [threading.Thread(target=work) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
save()
print(json.dumps({"ok": ok, "failed": failed, "by_alloc": by_alloc}))
'''
WORKERS = 4

JOB = '''
job "handover" {
  datacenters = ["dc1"]
  group "api" {
    count = 2
    shutdown_delay = "1s"
    network {
      mode = "bridge"
    }
    service {
      name = "slow-api"
      port = "9001"
      connect {
        sidecar_service {}
      }
      check {
        type     = "http"
        path     = "/"
        interval = "1s"
        timeout  = "2s"
      }
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = "%(python)s"
        args    = ["%(app)s", "%(release)s"]
      }
    }
  }
  group "caller" {
    network {
      mode = "bridge"
    }
    service {
      name = "caller"
      port = "9002"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "slow-api"
              local_bind_port  = 8080
            }
          }
        }
      }
    }
    task "idle" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["86400"]
      }
    }
  }
}
'''


def yurt(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "YURT_ADDR": agent.url}, timeout=60)


def running(api, group: str) -> list[dict]:
    return [a for a in allocs(api, "handover") if a["TaskGroup"] == group and a["ClientStatus"] == "running"]


def passing_instances(api) -> set[str]:
    """The allocations whose slow-api sidecar the catalog offers callers (passing)."""
    entries = api.get("/v1/health/connect/slow-api", params={"passing": "1"}).json()
    return {e["Service"]["Meta"]["alloc_id"] for e in entries}


def task_log(api, alloc_id: str, task: str) -> str:
    return api.get(f"/v1/client/fs/logs/{alloc_id}", params={"task": task, "plain": "true"}).text


def in_netns(alloc_id: str, script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", alloc_id, sys.executable, "-c", script, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stopped(api, alloc_id: str) -> dict | None:
    a = api.get(f"/v1/allocation/{alloc_id}").json()
    return a if a["ClientStatus"] not in ("pending", "running") else None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("handover")
    app = tmp / "app.py"
    app.write_text(APP)
    release = tmp / "release"
    release.mkdir()
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    try:
        register(api, JOB % {"python": sys.executable, "app": app, "release": release})
        wait_for(lambda: len(running(api, "api")) == 2 and running(api, "caller"), timeout=120,
                 what="two slow-api instances and the caller running")
        wait_for(lambda: len(passing_instances(api)) == 2, timeout=60, what="both instances passing")
        yield agent, api, tmp
    finally:
        api.delete("/v1/job/handover", params={"purge": "true"})
        api.close()
        agent.stop()


def test_stopping_an_instance_under_load_fails_no_request(mesh):
    agent, api, tmp = mesh
    (caller,) = running(api, "caller")
    before = {a["ID"] for a in running(api, "api")}
    stop, progress = tmp / "stop-loop", tmp / "progress.json"
    loop = in_netns(caller["ID"], LOOP, str(stop), str(progress), str(WORKERS))

    def served() -> dict:
        return json.loads(progress.read_text())

    try:
        wait_for(lambda: set(served()["by_alloc"]) == before, timeout=60, what="requests served by both instances")
        old = sorted(before)[0]
        res = yurt(agent, "alloc", "stop", "-detach", old)
        assert res.returncode == 0, res.stderr
        wait_for(lambda: old not in passing_instances(api), timeout=30, what="the stopped instance out of the catalog")
        new = wait_for(lambda: (lambda p: p if len(p) == 2 and old not in p else None)(passing_instances(api)) and
                       {a["ID"] for a in running(api, "api")} - before, timeout=120, what="the replacement passing")
        (new_id,) = new
        done = wait_for(lambda: stopped(api, old), timeout=120, what="the stopped allocation complete")
        assert (done["DesiredStatus"], done["ClientStatus"]) == ("stop", "complete"), done
        base = served()["by_alloc"].get(new_id, 0)
        wait_for(lambda: served()["by_alloc"].get(new_id, 0) >= base + 50, timeout=60,
                 what="requests served by the replacement")
    finally:
        stop.touch()
        out, err = loop.communicate(timeout=120)
    assert loop.returncode == 0, err
    result = json.loads(out)
    print(f"\nhandover under load ({WORKERS} callers): {result['ok']} requests, {len(result['failed'])} failed, "
          f"by allocation {result['by_alloc']}")
    assert result["failed"] == [], result["failed"][:20]
    assert set(result["by_alloc"]) == before | {new_id}
    # the old instance's stop, as its task events show it: the sidecar waited its
    # shutdown_delay (after the services left the catalog) before anything was killed
    states = api.get(f"/v1/allocation/{old}").json()["TaskStates"]
    sidecar_events = [e["Type"] for e in states["connect-proxy-slow-api"]["Events"]]
    assert "Waiting for shutdown delay" in sidecar_events, sidecar_events
    waiting = next(e for e in states["connect-proxy-slow-api"]["Events"] if e["Type"] == "Waiting for shutdown delay")
    assert waiting["DisplayMessage"] == "Waiting for shutdown_delay of 5s before killing the task."
    web_killing = next(e for e in states["web"]["Events"] if e["Type"] == "Killing")
    sidecar_killing = next(e for e in states["connect-proxy-slow-api"]["Events"] if e["Type"] == "Killing")
    assert waiting["Time"] < web_killing["Time"] < sidecar_killing["Time"]
    log = [json.loads(ln) for ln in task_log(api, old, "connect-proxy-slow-api").splitlines() if ln.startswith("{")]
    assert [e["event"] for e in log if e.get("event") in ("draining", "drained")] == ["draining", "drained", "draining"]


def test_a_request_in_flight_is_answered_when_its_instance_stops(mesh):
    agent, api, tmp = mesh
    (caller,) = running(api, "caller")
    wait_for(lambda: len(passing_instances(api)) == 2, timeout=60, what="two instances passing")
    request = ("import socket\n"
               "s = socket.create_connection(('127.0.0.1', 8080), timeout=300)\n"
               "s.sendall(b'GET /hold HTTP/1.0\\r\\nHost: slow-api\\r\\n\\r\\n')\n"
               "data = b''\n"
               "while True:\n"
               "    chunk = s.recv(65536)\n"
               "    if not chunk:\n"
               "        break\n"
               "    data += chunk\n"
               "import json\n"
               "print(json.dumps(data.decode()))\n")
    held = in_netns(caller["ID"], request)
    try:
        def holding() -> str | None:
            return next((a["ID"] for a in running(api, "api") if "holding" in task_log(api, a["ID"], "web")), None)
        alloc = wait_for(holding, timeout=60, what="an instance holding the request")
        res = yurt(agent, "alloc", "stop", "-detach", alloc)
        assert res.returncode == 0, res.stderr

        def draining() -> bool:
            return any(json.loads(ln).get("event") == "draining"
                       for ln in task_log(api, alloc, "connect-proxy-slow-api").splitlines() if ln.startswith("{"))
        wait_for(draining, timeout=60, what="the stopped instance's sidecar draining")
        # out of the catalog already, service and sidecar, passing or not
        for path in ("/v1/health/service/slow-api", "/v1/health/connect/slow-api"):
            assert alloc not in {e["Service"]["Meta"]["alloc_id"] for e in api.get(path).json()}, path
        # the app still runs: it is stopped only once its sidecar's open connections are done
        web = api.get(f"/v1/allocation/{alloc}").json()["TaskStates"]["web"]
        assert web["State"] == "running" and "Killing" not in [e["Type"] for e in web["Events"]], web
        assert held.poll() is None
        (tmp / "release" / alloc).touch()
        out, err = held.communicate(timeout=60)
    finally:
        if held.poll() is None:
            held.kill()
            held.communicate()
    assert held.returncode == 0, err
    head, _, body = json.loads(out).partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200"), out
    assert json.loads(body) == {"alloc": alloc, "path": "/hold"}
    done = wait_for(lambda: stopped(api, alloc), timeout=120, what="the stopped allocation complete")
    assert (done["DesiredStatus"], done["ClientStatus"]) == ("stop", "complete"), done


ROLLING = '''
job "rolling" {
  datacenters = ["dc1"]
  update {
    max_parallel     = 1
    min_healthy_time = "2s"
    healthy_deadline = "60s"
    progress_deadline = "120s"
  }
  group "api" {
    count = 3
    shutdown_delay = "1s"
    network {
      mode = "bridge"
    }
    service {
      name = "roll-api"
      port = "9001"
      connect {
        sidecar_service {}
      }
      check {
        type     = "http"
        path     = "/"
        interval = "1s"
        timeout  = "2s"
      }
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = "%(python)s"
        args    = ["%(app)s", "%(release)s", "%(version)s"]
      }
    }
  }
  group "caller" {
    network {
      mode = "bridge"
    }
    service {
      name = "roll-caller"
      port = "9002"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "roll-api"
              local_bind_port  = 8081
            }
          }
        }
      }
    }
    task "idle" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["86400"]
      }
    }
  }
}
'''


def test_a_rolling_update_under_load_fails_no_request(mesh):
    """Three instances updated max_parallel = 1 while four callers send requests through the
    upstream: no request fails, and the catalog never offers fewer than two healthy instances."""
    _agent, api, tmp = mesh
    app, release = tmp / "app.py", tmp / "release"

    def job_allocs(group: str) -> list[dict]:
        return [a for a in allocs(api, "rolling") if a["TaskGroup"] == group and a["ClientStatus"] == "running"]

    def healthy() -> set[str]:
        entries = api.get("/v1/health/connect/roll-api", params={"passing": "1"}).json()
        return {e["Service"]["Meta"]["alloc_id"] for e in entries}

    register(api, ROLLING % {"python": sys.executable, "app": app, "release": release, "version": "v1"})
    wait_for(lambda: len(job_allocs("api")) == 3 and job_allocs("caller"), timeout=120, what="the rolling job up")
    wait_for(lambda: len(healthy()) == 3, timeout=60, what="three instances passing")
    wait_for(lambda: (api.get("/v1/job/rolling/deployment").json() or {}).get("Status") == "successful",
             timeout=60, what="the first deployment")
    (caller,) = job_allocs("caller")
    stop, progress = tmp / "stop-rolling", tmp / "rolling.json"
    loop = in_netns(caller["ID"], LOOP.replace("8080", "8081").replace("slow-api", "roll-api"),
                    str(stop), str(progress), str(WORKERS))
    fewest: list[int] = []
    watching = True

    def watch() -> None:
        while watching:
            fewest.append(len(healthy()))

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        wait_for(lambda: progress.exists() and json.loads(progress.read_text())["ok"] >= 50, timeout=60,
                 what="requests flowing")
        watcher.start()
        register(api, ROLLING % {"python": sys.executable, "app": app, "release": release, "version": "v2"})
        d = wait_for(lambda: (lambda d: d if d and d["JobVersion"] == 1 and d["Status"] in ("successful", "failed")
                              else None)(api.get("/v1/job/rolling/deployment").json()), timeout=300,
                     what="the rolling deployment to finish")
        assert d["Status"] == "successful", d
    finally:
        watching = False
        stop.touch()
        out, err = loop.communicate(timeout=120)
        if watcher.is_alive():
            watcher.join(30)
    assert loop.returncode == 0, err
    result = json.loads(out)
    print(f"\nrolling update under load ({WORKERS} callers): {result['ok']} requests, {len(result['failed'])} "
          f"failed; fewest healthy instances seen: {min(fewest)}")
    assert result["failed"] == [], result["failed"][:20]
    assert min(fewest) >= 2, f"the catalog offered {min(fewest)} healthy instances at one point"
    assert sorted(a["JobVersion"] for a in job_allocs("api") if a["DesiredStatus"] == "run") == [1, 1, 1]
    api.delete("/v1/job/rolling", params={"purge": "true"})
