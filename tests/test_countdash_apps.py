"""The example apps of examples/countdash, run as real processes, and their job file."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from yurt.jobspec import JobspecError, load, load_file

from .agent_util import free_port, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "countdash"


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def app():
    procs = []

    def start(script: str, **env) -> int:
        port = free_port()
        p = subprocess.Popen([sys.executable, str(EXAMPLE / script)], env={"PORT": str(port), **env},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_for(lambda: get(f"http://127.0.0.1:{port}/health"), what=f"{script} up")
        return port

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_counter_api_counts_requests(app):
    port = app("counter_api.py")
    first = get(f"http://127.0.0.1:{port}/")
    second = get(f"http://127.0.0.1:{port}/")
    assert second["count"] == first["count"] + 1 and first["hostname"]


def test_dashboard_shows_the_upstream_count_or_unreachable(app):
    api = app("counter_api.py")
    dash = app("dashboard.py", COUNTING_SERVICE_URL=f"http://127.0.0.1:{api}")
    a = get(f"http://127.0.0.1:{dash}/api/count")
    b = get(f"http://127.0.0.1:{dash}/api/count")
    assert b["count"] > a["count"] > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{dash}/", timeout=5) as r:
        assert b"Count Dashboard" in r.read()
    dead = app("dashboard.py", COUNTING_SERVICE_URL=f"http://127.0.0.1:{free_port()}")
    assert get(f"http://127.0.0.1:{dead}/api/count") == {"count": -1, "hostname": "[Unreachable]"}


def test_job_file_differs_from_the_seed_only_in_drivers_and_configs():
    job = load_file(str(EXAMPLE / "countdash.nomad")).job
    seed = load_file(str(Path(__file__).parent / "fixtures" / "connect.nomad")).job
    for g, s in zip(job.task_groups, seed.task_groups, strict=True):
        assert g.networks == s.networks and g.services == s.services
        for t, st in zip(g.tasks, s.tasks, strict=True):
            assert t.driver == "exec" and st.driver == "docker"
            assert t.env == st.env and t.name == st.name
    assert "def main()" in job.task_groups[0].tasks[0].config["args"][1]  # file() read the app


def test_file_function_reads_relative_to_the_job_file_only_from_disk(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    job = 'job "f" {\n  meta {\n    a = file("x.txt")\n  }\n  group "g" {\n    task "t" {\n      driver = "raw_exec"\n' \
          '      config { command = "true" }\n    }\n  }\n}\n'
    (tmp_path / "f.nomad").write_text(job)
    assert load_file(str(tmp_path / "f.nomad")).job.meta == {"a": "hello"}
    with pytest.raises(JobspecError, match="only available in job files read from disk"):
        load(job, "f.nomad")
    (tmp_path / "g.nomad").write_text(job.replace("x.txt", "missing.txt"))
    with pytest.raises(JobspecError, match=r'g.nomad:3:9: .*file\("missing.txt"\)'):
        load_file(str(tmp_path / "g.nomad"))
