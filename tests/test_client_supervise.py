"""The compiled task supervisor (client/supervise.c): what the executor becomes once a task runs.

Real processes throughout: the drivers start tasks through the Python executor, which execv's
the supervisor built from the package's source; the tests check it is that binary that runs
(/proc/<pid>/exe), then what a user sees: rotated log files (as `alloc logs` reads them),
signals reaching the task, the exit status and signal, the group killed, OOM kills with the
exec driver, an agent killed and restarted re-attaching, the Python fallback without a
compiler, and the memory a node spends supervising 100 tasks.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from yurt.client import AllocDir, RawExecDriver, TaskConfig
from yurt.client.drivers.exec import ExecDriver
from yurt.client.logrotate import FileRotator
from yurt.client.procs import is_alive, read_json, start_time
from yurt.client.supervise import Supervisor

from .agent_util import AgentProcess, allocs, register, wait_for

MB = 1024 * 1024


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory) -> Supervisor:
    sup = Supervisor(tmp_path_factory.mktemp("bin"))
    if sup.binary() is None:
        pytest.fail(f"the supervisor does not build here: {sup.error}")
    return sup


def exe(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def supervised_by(pid: int, binary: str | None) -> None:
    """The executor writes the pid file, then execv's the supervisor: wait for that."""
    wait_for(lambda: exe(pid) == binary, timeout=20, interval=0.02, what=f"{pid} running {binary}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def config(tmp_path, script: str, name: str = "task", **kw) -> TaskConfig:
    alloc_id = str(uuid.uuid4())
    ad = AllocDir(tmp_path, alloc_id)
    ad.build([name])
    td = ad.task_dir(name)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return TaskConfig(alloc_id=alloc_id, name=name, env=env, config={"command": "/bin/sh", "args": ["-c", script]},
                      task_dir=td.root, local_dir=td.local, alloc_dir=td.shared, logs_dir=td.logs, **kw)


def log(cfg: TaskConfig, stream: str = "stdout") -> str:
    path = cfg.logs_dir / f"{cfg.name}.{stream}.0"
    return path.read_text() if path.exists() else ""


# --- the driver with the supervisor ------------------------------------------------------------


def test_supervisor_rotates_logs_like_the_python_rotator(tmp_path, supervisor):
    d = RawExecDriver(supervisor=supervisor)
    script = ('i=0; while [ $i -lt 300 ]; do echo "line $i of the output"; i=$((i+1)); done; '
              'echo to-stderr >&2; while [ ! -e go ]; do sleep 0.05; done')
    cfg = config(tmp_path, script, max_files=3, max_file_size_bytes=1000)
    h = d.start(cfg)
    supervised_by(h.executor_pid, supervisor.binary())
    (Path(cfg.local_dir) / "go").touch()
    res = d.wait(h, 30)
    assert res is not None and res.exit_code == 0 and res.signal == 0
    expected = "".join(f"line {i} of the output\n" for i in range(300)).encode()
    ref = tmp_path / "reference"
    r = FileRotator(ref, "task.stdout", 3, 1000)
    r.write(expected)
    r.close()
    names = sorted(n for n in os.listdir(cfg.logs_dir) if n.startswith("task.stdout."))
    assert names == sorted(os.listdir(ref))
    for name in names:
        assert (cfg.logs_dir / name).read_bytes() == (ref / name).read_bytes(), name
    assert log(cfg, "stderr") == "to-stderr\n"
    d.destroy(h)


def test_supervisor_forwards_signals_and_records_the_signal(tmp_path, supervisor):
    d = RawExecDriver(supervisor=supervisor)
    cfg = config(tmp_path, "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.1; done")
    h = d.start(cfg)
    supervised_by(h.executor_pid, supervisor.binary())
    wait_for(lambda: "ready" in log(cfg), timeout=20, what="the task ready")
    os.kill(h.executor_pid, signal.SIGUSR1)   # to the supervisor: passed on to the task's group
    wait_for(lambda: "got-usr1" in log(cfg), timeout=20, what="SIGUSR1 forwarded to the task")
    assert is_alive(h.pid, h.pid_start)
    os.kill(h.executor_pid, signal.SIGTERM)
    res = d.wait(h, 20)
    assert res is not None and res.signal == signal.SIGTERM and res.exit_code == 0
    status = read_json(Path(h.task_dir) / ".executor-status.json")
    assert set(status) == {"exit_code", "signal", "oom_killed", "finished_at"}
    assert status["signal"] == signal.SIGTERM and status["oom_killed"] is False
    d.destroy(h)


def test_supervisor_records_the_exit_code_and_kills_the_group(tmp_path, supervisor):
    d = RawExecDriver(supervisor=supervisor)
    cfg = config(tmp_path, 'sleep 600 & echo $! > left-behind; while [ ! -e go ]; do sleep 0.05; done; exit 7')
    h = d.start(cfg)
    supervised_by(h.executor_pid, supervisor.binary())
    pidfile = Path(cfg.local_dir) / "left-behind"
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=20, what="the background sleep")
    orphan = int(pidfile.read_text())
    assert is_alive(orphan)
    (Path(cfg.local_dir) / "go").touch()
    res = d.wait(h, 20)
    assert res is not None and res.exit_code == 7 and res.signal == 0 and not res.oom_killed
    wait_for(lambda: not is_alive(orphan), timeout=10, what="what the task left in its group killed")
    d.destroy(h)


def test_a_task_killed_by_a_signal(tmp_path, supervisor):
    d = RawExecDriver(supervisor=supervisor)
    cfg = config(tmp_path, "echo up; exec sleep 600")
    h = d.start(cfg)
    wait_for(lambda: "up" in log(cfg), timeout=20, what="the task up")
    os.kill(h.pid, signal.SIGKILL)
    res = d.wait(h, 20)
    assert res is not None and res.signal == signal.SIGKILL and res.exit_code == 0
    wait_for(lambda: not is_alive(h.executor_pid, h.executor_start), timeout=10, what="the supervisor gone")
    d.destroy(h)


_EXEC = ExecDriver()
_EXEC_LACK = _EXEC.missing()


@pytest.mark.skipif(bool(_EXEC_LACK), reason="; ".join(_EXEC_LACK) or "ok")
def test_exec_task_oom_killed_under_the_supervisor(tmp_path, supervisor):
    d = ExecDriver(supervisor=supervisor)
    alloc_id = str(uuid.uuid4())
    ad = AllocDir(tmp_path, alloc_id)
    ad.build(["hog"])
    td = ad.task_dir("hog")
    script = "echo started; while [ ! -e /local/go ]; do sleep 0.05; done; exec /usr/bin/python3 -c 'a = bytearray(200 * 1024 * 1024)'"
    cfg = TaskConfig(alloc_id=alloc_id, name="hog", env={"PATH": "/usr/bin:/bin"},
                     config={"command": "/bin/sh", "args": ["-c", script]}, task_dir=td.root,
                     local_dir=td.local, alloc_dir=td.shared, logs_dir=td.logs, memory_mb=32)
    h = d.start(cfg)
    try:
        supervised_by(h.executor_pid, supervisor.binary())
        wait_for(lambda: "started" in log(cfg), timeout=30, what="the task started")
        (Path(td.local) / "go").touch()
        res = d.wait(h, 60)
        assert res is not None and res.oom_killed and res.signal == signal.SIGKILL
        assert read_json(Path(h.task_dir) / ".executor-status.json")["oom_killed"] is True
        assert not any(os.path.exists(p) for p in h.state["cgroup"]["paths"].values()), "cgroup removed"
    finally:
        d.destroy(h)


def test_without_a_compiler_the_python_executor_supervises(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    caplog.set_level(logging.WARNING, logger="yurt.client.supervise")
    sup = Supervisor(tmp_path / "bin")
    assert sup.binary() is None
    assert Supervisor(tmp_path / "bin").binary() is None   # a second agent object: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "no-such-cc" in warnings[0] and "apt-get install gcc" in warnings[0]
    d = RawExecDriver(supervisor=sup)
    cfg = config(tmp_path, "echo from-python; while [ ! -e go ]; do sleep 0.05; done; exit 3")
    h = d.start(cfg)
    assert exe(h.executor_pid) == os.path.realpath(sys.executable) or "python" in exe(h.executor_pid)
    wait_for(lambda: "from-python" in log(cfg), timeout=20, what="the task's output")
    (Path(cfg.local_dir) / "go").touch()
    res = d.wait(h, 20)
    assert res is not None and res.exit_code == 3
    d.destroy(h)


# --- an agent -----------------------------------------------------------------------------------

LOGGER_JOB = '''
job "logger" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "seq 1 400000; echo $$ > $NOMAD_ALLOC_DIR/pid; while true; do sleep 1; done"]
      }
      logs {
        max_files     = 2
        max_file_size = 1
      }
      resources {
        memory = 16
      }
    }
  }
}
'''


def _task_dirs(data: Path) -> list[Path]:
    return sorted(p.parent for p in (data / "client" / "alloc").glob("*/*/.executor-pid.json"))


def _kill_left(data: Path) -> None:
    """What a failed test would leave running (an agent with a data dir keeps its tasks)."""
    for d in _task_dirs(data):
        pids = read_json(d / ".executor-pid.json") or {}
        for target in (-int(pids.get("task_pid", 0)), int(pids.get("executor_pid", 0))):
            if target and abs(target) > 1:
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass


def test_agent_killed_and_restarted_reattaches_the_supervised_task(tmp_path):
    data = tmp_path / "data"
    agent = AgentProcess(data_dir=str(data)).start()
    try:
        with agent.api() as api:
            register(api, LOGGER_JOB)
            (alloc,) = wait_for(lambda: [a for a in allocs(api, "logger") if a["ClientStatus"] == "running"],
                                timeout=60, what="the logger running")
        pidfile = data / "client" / "alloc" / alloc["ID"] / "alloc" / "pid"
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30, what="the task's pid")
        task_pid = int(pidfile.read_text())
        task_start = start_time(task_pid)   # pids wrap at 32768 here: a busy run can reuse this one
        (task_dir,) = _task_dirs(data)
        pids = read_json(task_dir / ".executor-pid.json")
        (binary,) = (data / "client" / "bin").glob("yurt-supervise-*")   # built into the client's data dir
        supervised_by(pids["executor_pid"], str(binary))

        agent.kill(signal.SIGKILL)
        assert is_alive(task_pid, task_start) and is_alive(pids["executor_pid"], pids["executor_start"])
        agent = AgentProcess(data_dir=str(data), port=agent.port).start()
        with agent.api() as api:
            wait_for(lambda: [a for a in allocs(api, "logger") if a["ClientStatus"] == "running"]
                     == [a for a in allocs(api, "logger")], timeout=60, what="the logger still running")
            assert [a["ID"] for a in allocs(api, "logger")] == [alloc["ID"]]
            assert pidfile.read_text().strip() == str(task_pid), "the task was not started again"
            # the supervisor rotated 2.7 MB through 1 MB files, keeping 2: what `alloc logs` reads
            full = "".join(f"{i}\n" for i in range(1, 400001))
            logs = sorted(os.listdir(data / "client" / "alloc" / alloc["ID"] / "alloc" / "logs"))
            assert [n for n in logs if n.startswith("t.stdout.")] == ["t.stdout.1", "t.stdout.2"]
            out = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "plain": "true"}).text
            assert out == full[MB:]
            r = api.delete("/v1/job/logger")
            assert r.status_code == 200, r.text
            wait_for(lambda: all(a["ClientStatus"] == "complete" for a in allocs(api, "logger")),
                     timeout=60, what="the logger stopped")
        assert not is_alive(task_pid, task_start) and not is_alive(pids["executor_pid"], pids["executor_start"])
        status = read_json(task_dir / ".executor-status.json")
        assert status is not None and status["signal"] in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
    finally:
        agent.stop()
        _kill_left(data)


MANY_JOB = '''
job "many" {
  group "g" {
    count = 100
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["600"]
      }
      resources {
        cpu    = 10
        memory = 10
      }
    }
  }
}
'''


def test_supervising_100_tasks_costs_at_most_8_mb_each(tmp_path):
    data = tmp_path / "data"
    try:
        _run_many(data)
    finally:
        _kill_left(data)


def _run_many(data: Path) -> None:
    with AgentProcess(data_dir=str(data)) as agent, agent.api() as api:
        register(api, MANY_JOB)
        wait_for(lambda: sum(a["ClientStatus"] == "running" for a in allocs(api, "many")) == 100,
                 timeout=300, interval=1, what="100 tasks running")
        dirs = _task_dirs(data)
        assert len(dirs) == 100
        supervisors = [read_json(d / ".executor-pid.json")["executor_pid"] for d in dirs]
        (binary,) = (data / "client" / "bin").glob("yurt-supervise-*")
        for p in supervisors:
            supervised_by(p, str(binary))
        total_kb = sum(rss_kb(p) for p in supervisors)
        assert total_kb / 100 <= 8 * 1024, f"{total_kb / 100 / 1024:.1f} MB per task"
        r = api.delete("/v1/job/many")
        assert r.status_code == 200, r.text
        wait_for(lambda: all(a["ClientStatus"] == "complete" for a in allocs(api, "many")),
                 timeout=120, interval=1, what="the 100 tasks stopped")
        wait_for(lambda: not any(is_alive(p) for p in supervisors), timeout=60, what="every supervisor gone")
