"""The alloc dir, rotating logs and the raw_exec driver with its detached executor (real processes)."""

from __future__ import annotations

import os
import signal
import stat
import sys

import pytest

from yurt.client import AllocDir, DriverError, RawExecDriver, TaskConfig, TaskHandle
from yurt.client.logrotate import FileRotator
from yurt.client.procs import is_alive

from .test_client_util import wait_for

MB = 1024 * 1024


def test_alloc_dir_layout_and_destroy(tmp_path):
    ad = AllocDir(tmp_path, "a1")
    ad.build(["web", "proxy"])
    root = tmp_path / "alloc" / "a1"
    for sub in ("alloc/logs", "alloc/tmp", "alloc/data", "web/local", "web/secrets", "web/tmp",
                "proxy/local", "proxy/secrets", "proxy/tmp"):
        assert (root / sub).is_dir(), sub
    assert stat.S_IMODE(os.stat(root / "web" / "secrets").st_mode) == 0o700
    ad.build(["web", "proxy"])  # idempotent
    with pytest.raises(ValueError):
        ad.task_dir("alloc")
    ad.destroy()
    assert not root.exists()


def test_rotator_rolls_over_and_keeps_max_files(tmp_path):
    r = FileRotator(tmp_path, "t.stdout", max_files=3, max_size=10)
    r.write(b"a" * 25)  # .0 (10) .1 (10) .2 (5)
    r.write(b"b" * 20)  # .2 full, .3 (10), .4 (5); .0 and .1 purged
    r.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["t.stdout.2", "t.stdout.3", "t.stdout.4"]
    assert (tmp_path / "t.stdout.2").read_bytes() == b"a" * 5 + b"b" * 5
    assert (tmp_path / "t.stdout.4").read_bytes() == b"b" * 5
    # a new rotator (a restarted task) appends to the newest file
    r = FileRotator(tmp_path, "t.stdout", max_files=3, max_size=10)
    r.write(b"c" * 3)
    r.close()
    assert (tmp_path / "t.stdout.4").read_bytes() == b"b" * 5 + b"c" * 3


def config(tmp_path, command, args=(), name="task", **kw) -> TaskConfig:
    ad = AllocDir(tmp_path, "alloc-1")
    ad.build([name])
    td = ad.task_dir(name)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GREETING": "hi"}
    return TaskConfig(alloc_id="alloc-1", name=name, env=env,
                      config={"command": command, "args": list(args)}, task_dir=td.root,
                      local_dir=td.local, alloc_dir=td.shared, logs_dir=td.logs, **kw)


def test_raw_exec_runs_in_task_dir_with_env_and_logs(tmp_path):
    d = RawExecDriver()
    cfg = config(tmp_path, "sh", ["-c", 'echo "$GREETING from $(pwd)"; echo oops >&2; exit 7'])
    h = d.start(cfg)
    assert h.pid > 0 and h.executor_pid > 0 and h.pid != h.executor_pid
    res = d.wait(h, 20)
    assert res is not None and res.exit_code == 7 and res.signal == 0 and not res.successful()
    assert (cfg.logs_dir / "task.stdout.0").read_text() == f"hi from {cfg.local_dir}\n"
    assert (cfg.logs_dir / "task.stderr.0").read_text() == "oops\n"
    d.destroy(h)


def test_raw_exec_missing_command_fails_start(tmp_path):
    d = RawExecDriver()
    with pytest.raises(DriverError) as e:
        d.start(config(tmp_path, "nosuchcmd"))
    assert str(e.value) == 'failed to start: exec: "nosuchcmd": executable file not found in $PATH'


def test_raw_exec_disabled_fingerprint():
    assert RawExecDriver(enabled=True).fingerprint().attributes == {"driver.raw_exec": "1"}
    fp = RawExecDriver(enabled=False).fingerprint()
    assert not fp.detected and not fp.attributes


def test_raw_exec_log_rotation_in_megabytes(tmp_path):
    d = RawExecDriver()
    cfg = config(tmp_path, "sh", ["-c", "head -c 3670016 /dev/zero"], max_files=2, max_file_size_mb=1)
    h = d.start(cfg)
    res = d.wait(h, 30)
    assert res is not None and res.exit_code == 0
    names = sorted(n for n in os.listdir(cfg.logs_dir) if n.startswith("task.stdout"))
    assert names == ["task.stdout.2", "task.stdout.3"]  # .0 and .1 deleted beyond max_files
    assert (cfg.logs_dir / "task.stdout.2").stat().st_size == MB
    assert (cfg.logs_dir / "task.stdout.3").stat().st_size == 512 * 1024


def test_stop_with_trapped_signal_exits_gracefully(tmp_path):
    d = RawExecDriver()
    script = "trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done"
    cfg = config(tmp_path, "sh", ["-c", script])
    h = d.start(cfg)
    wait_for(lambda: "ready" in (cfg.logs_dir / "task.stdout.0").read_text(), what="ready")
    d.stop(h, "SIGTERM", 10)
    res = d.wait(h, 0)
    assert res is not None and res.exit_code == 3 and res.signal == 0
    assert "got TERM" in (cfg.logs_dir / "task.stdout.0").read_text()
    assert not is_alive(h.pid, h.pid_start)


def test_stop_sigkills_a_task_that_ignores_the_signal(tmp_path):
    d = RawExecDriver()
    script = "trap '' INT TERM; echo ready; while true; do sleep 0.1; done"
    cfg = config(tmp_path, "sh", ["-c", script])
    h = d.start(cfg)
    wait_for(lambda: "ready" in (cfg.logs_dir / "task.stdout.0").read_text(), what="ready")
    d.stop(h, "SIGINT", 0.5)
    res = d.wait(h, 0)
    assert res is not None and res.signal == signal.SIGKILL
    assert not is_alive(h.pid, h.pid_start)


def test_recover_from_a_serialized_handle(tmp_path):
    d = RawExecDriver()
    cfg = config(tmp_path, sys.executable, ["-c", "import time; print('up', flush=True); time.sleep(60)"])
    h = d.start(cfg)
    other = RawExecDriver()  # as a new agent would: no child objects, just the handle
    h2 = TaskHandle.from_dict(h.to_dict())
    other.recover(h2)
    assert other.wait(h2, 0.2) is None
    assert other.stats(h2).rss_bytes > 0
    other.stop(h2, "SIGINT", 5)
    res = other.wait(h2, 0)
    assert res is not None and (res.signal == signal.SIGINT or res.exit_code != 0)
    d.wait(h, 5)
    # a handle whose executor is gone and left no status cannot be recovered
    gone = TaskHandle.from_dict({**h.to_dict(), "executor_pid": 999999999,
                                 "task_dir": str(tmp_path / "nowhere")})
    with pytest.raises(DriverError):
        other.recover(gone)
