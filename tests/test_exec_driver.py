"""The exec driver with real namespaces, chroot and cgroups (needs root on Linux)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from yurt.client import AllocDir, AllocDirHook, AllocRunner, DriverError, TaskConfig
from yurt.client.alloc_state import load
from yurt.client.drivers.exec import ExecDriver
from yurt.client.procs import is_alive
from yurt.structs import Resources, Task

from .test_client_util import Recorder, event_types, make_alloc, wait_for

DRIVER = ExecDriver()
_LACK = DRIVER.missing()
pytestmark = pytest.mark.skipif(bool(_LACK), reason="; ".join(_LACK) or "ok")

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"


def config(tmp_path, script: str, name: str = "task", alloc_id: str | None = None,
           command: str = "/bin/sh", **kw) -> TaskConfig:
    alloc_id = alloc_id or str(uuid.uuid4())
    ad = AllocDir(tmp_path, alloc_id)
    ad.build([name])
    td = ad.task_dir(name)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "NOMAD_TASK_DIR": "/local"}
    cfg = {"command": command, "args": ["-c", script]} if script is not None else {"command": command}
    cfg.update(kw.pop("config", {}))
    return TaskConfig(alloc_id=alloc_id, name=name, env=env, config=cfg, task_dir=td.root,
                      local_dir=td.local, alloc_dir=td.shared, logs_dir=td.logs, **kw)


def out(cfg: TaskConfig, stream: str = "stdout") -> str:
    path = cfg.logs_dir / f"{cfg.name}.{stream}.0"
    return path.read_text() if path.exists() else ""


def run(cfg: TaskConfig, driver: ExecDriver = DRIVER, timeout: float = 60):
    h = driver.start(cfg)
    res = driver.wait(h, timeout)
    assert res is not None, "task did not finish"
    driver.destroy(h)
    return h, res


def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def cgroup_dirs(h) -> list[str]:
    return list(h.state["cgroup"]["paths"].values())


def test_fingerprint_detects_exec():
    fp = DRIVER.fingerprint()
    assert fp.detected and fp.healthy and fp.attributes == {"driver.exec": "1"}
    assert not ExecDriver(enabled=False).fingerprint().detected


def test_task_is_isolated_in_its_chroot(tmp_path):
    script = textwrap.dedent("""
        echo "pids: $(ls /proc | grep -c '^[0-9]*$')"
        echo "uid: $(id -u)"
        echo "host: $(hostname)"
        echo "pwd: $(pwd)"
        echo "task_dir: $NOMAD_TASK_DIR"
        touch /usr/x 2>/dev/null && echo "usr: writable" || echo "usr: read-only"
        touch /etc/x 2>/dev/null && echo "etc: writable" || echo "etc: read-only"
        echo from-task > /local/out.txt
        echo shared > /alloc/data/shared.txt
        echo tmp > /tmp/t && echo "tmp: ok"
        head -c 4 /dev/urandom | wc -c | sed 's/^/urandom: /'
        echo "root: $(ls / | tr '\\n' ' ')"
    """)
    cfg = config(tmp_path, script)
    h = DRIVER.start(cfg)
    during = host_mounts()
    res = DRIVER.wait(h, 60)
    assert res is not None and res.successful(), (res, out(cfg, "stderr"))
    lines = dict(line.split(": ", 1) for line in out(cfg).splitlines())
    assert int(lines["pids"]) <= 5, "the task must not see the host's processes"
    assert lines["uid"] == "65534"
    assert lines["host"] == cfg.alloc_id[:8]
    assert lines["pwd"] == "/local"
    assert lines["task_dir"] == "/local"
    assert lines["usr"] == "read-only" and lines["etc"] == "read-only"
    assert lines["tmp"] == "ok" and lines["urandom"] == "4"
    for d in ("alloc", "local", "secrets", "tmp", "usr", "etc", "dev", "proc"):
        assert d in lines["root"].split()
    assert (cfg.local_dir / "out.txt").read_text() == "from-task\n"
    assert (cfg.alloc_dir / "data" / "shared.txt").read_text() == "shared\n"
    assert not Path("/usr/x").exists()
    assert str(cfg.task_dir) not in during, "the task's mounts must not show on the host"
    DRIVER.destroy(h)
    assert str(cfg.task_dir) not in host_mounts()
    assert not any(os.path.exists(p) for p in cgroup_dirs(h)), "the cgroup must be removed"


def test_cgroup_limits_are_set(tmp_path):
    # the task holds 48 MiB it has written to (so resident), then waits
    code = "import time\nheld = b'x' * (48 << 20)\nprint('ready', flush=True)\ntime.sleep(30)"
    cfg = config(tmp_path, None, command=PYTHON, cpu_shares=321, memory_mb=64, memory_max_mb=128,
                 config={"args": ["-c", code]})
    h = DRIVER.start(cfg)
    try:
        paths = h.state["cgroup"]["paths"]
        if h.state["cgroup"]["version"] == 1:
            assert Path(paths["cpu"], "cpu.shares").read_text().strip() == "321"
            mem = Path(paths["memory"])
            assert int((mem / "memory.limit_in_bytes").read_text()) == 128 * 1024 * 1024
            assert int((mem / "memory.soft_limit_in_bytes").read_text()) == 64 * 1024 * 1024
            procs = (mem / "cgroup.procs").read_text().split()
        else:
            unified = Path(paths["unified"])
            assert int((unified / "memory.max").read_text()) == 128 * 1024 * 1024
            procs = (unified / "cgroup.procs").read_text().split()
        assert str(h.pid) in procs, "the task's init runs inside the cgroup"
        wait_for(lambda: "ready" in out(cfg), what="the task's memory allocated")
        stats = DRIVER.stats(h)
        # the init and the python process under it
        assert h.pid in stats.pids and len(stats.pids) == 2, stats
        # the cgroup's resident memory: the 48 MiB held and the interpreter, within the 128 MiB limit
        assert 48 * 1024 * 1024 <= stats.rss_bytes <= 128 * 1024 * 1024, stats
    finally:
        DRIVER.stop(h, "SIGKILL", 5)
        DRIVER.destroy(h)
    assert not any(os.path.exists(p) for p in cgroup_dirs(h))


def test_memory_limit_oom_kills_the_task(tmp_path):
    cfg = config(tmp_path, None, command=PYTHON, memory_mb=32,
                 config={"args": ["-c", "a = bytearray(200 * 1024 * 1024)"]})
    h, res = run(cfg)
    assert res.oom_killed and not res.successful()
    assert res.signal == signal.SIGKILL
    assert not any(os.path.exists(p) for p in cgroup_dirs(h))


def test_oom_is_reported_as_a_task_event(tmp_path):
    task = Task(name="hog", driver="exec",
                config={"command": PYTHON, "args": ["-c", "a = bytearray(200 * 1024 * 1024)"]},
                resources=Resources(cpu=100, memory_mb=32))
    alloc = make_alloc([task], job_type="batch")
    rec = Recorder()
    runner = AllocRunner(alloc, data_dir=tmp_path, drivers={"exec": DRIVER}, on_update=rec,
                         hooks=[AllocDirHook()])
    runner.run()
    wait_for(lambda: "Terminated" in event_types(runner.task_states()["hog"]), timeout=60,
             what="the task's end")
    runner.stop()
    assert runner.wait(30)
    term = next(e for e in runner.task_states()["hog"].events if e.type == "Terminated")
    assert "OOM Killed" in term.display_message
    assert term.details["oom_killed"] == "true"


def test_alloc_runner_env_points_inside_the_chroot(tmp_path):
    script = 'echo "$NOMAD_ALLOC_DIR $NOMAD_TASK_DIR $NOMAD_SECRETS_DIR $HOME"; ls "$NOMAD_SECRETS_DIR"'
    task = Task(name="env", driver="exec", config={"command": "sh", "args": ["-c", script]},
                resources=Resources(cpu=100, memory_mb=64))
    alloc = make_alloc([task], job_type="batch")
    rec = Recorder()
    runner = AllocRunner(alloc, data_dir=tmp_path, drivers={"exec": DRIVER}, on_update=rec,
                         hooks=[AllocDirHook()])
    runner.run()
    assert runner.wait(60)
    assert rec.last[0] == "complete", runner.task_states()["env"].events
    text = (runner.alloc_dir.logs / "env.stdout.0").read_text()
    assert text == "/alloc /local /secrets /nonexistent\n"


def test_command_not_found_in_the_chroot(tmp_path):
    cfg = config(tmp_path, None, command="nosuchcmd")
    with pytest.raises(DriverError) as e:
        DRIVER.start(cfg)
    assert str(e.value) == ('failed to start: exec: "nosuchcmd": executable file not found in '
                            "the task's chroot ($PATH=/usr/local/bin:/usr/bin:/bin)")
    # a host program outside the chroot_env is not visible either
    program = tmp_path / "host-only"
    shutil.copy("/bin/true", program)
    program.chmod(0o755)
    with pytest.raises(DriverError) as e:
        DRIVER.start(config(tmp_path, None, command=str(program)))
    assert str(e.value) == (f'failed to start: exec: "{program}": executable file not found in '
                            "the task's chroot ($PATH=/usr/local/bin:/usr/bin:/bin)")


def test_unknown_config_key_and_bad_values(tmp_path):
    with pytest.raises(DriverError, match='unknown exec config key "image"'):
        DRIVER.start(config(tmp_path, "true", config={"image": "x"}))
    with pytest.raises(DriverError, match='pid_mode must be "private" or "host"'):
        DRIVER.start(config(tmp_path, "true", config={"pid_mode": "shared"}))
    with pytest.raises(DriverError, match='cap_add: unknown capability "flying"'):
        DRIVER.start(config(tmp_path, "true", config={"cap_add": ["flying"]}))
    with pytest.raises(DriverError, match='user "nosuchuser" does not exist'):
        DRIVER.start(config(tmp_path, "true", user="nosuchuser"))


def test_cgroup_setup_failure_is_a_clear_error(tmp_path):
    broken = tmp_path / "cgroupfs"
    broken.mkdir()
    d = ExecDriver(cgroup_root=broken)
    assert not d.fingerprint().detected
    with pytest.raises(DriverError, match="no cgroup hierarchy mounted at"):
        d.start(config(tmp_path, "true"))


def test_root_task_capabilities_are_bounded(tmp_path):
    cfg = config(tmp_path, "grep CapBnd /proc/self/status", user="root",
                 config={"cap_drop": ["all"]})
    _, res = run(cfg)
    assert res.successful(), out(cfg, "stderr")
    assert out(cfg).split() == ["CapBnd:", "0000000000000000"]
    cfg = config(tmp_path, "grep CapBnd /proc/self/status", user="root")
    run(cfg)
    bounded = int(out(cfg).split()[1], 16)
    assert bounded and not bounded & (1 << 21), "CAP_SYS_ADMIN is not in the defaults"


def test_stop_forwards_the_signal_then_kills(tmp_path):
    cfg = config(tmp_path, "trap 'echo got-int; exit 3' INT; echo ready; while true; do sleep 0.1; done")
    h = DRIVER.start(cfg)
    wait_for(lambda: "ready" in out(cfg), what="task ready")
    DRIVER.stop(h, "SIGINT", 10)
    res = DRIVER.wait(h, 0)
    assert res is not None and res.exit_code == 3
    assert "got-int" in out(cfg)
    DRIVER.destroy(h)

    cfg = config(tmp_path, "trap '' INT TERM; echo ready; while true; do sleep 0.1; done")
    h = DRIVER.start(cfg)
    wait_for(lambda: "ready" in out(cfg), what="task ready")
    DRIVER.stop(h, "SIGTERM", 0.5)
    res = DRIVER.wait(h, 0)
    assert res is not None and res.signal == signal.SIGKILL
    assert not is_alive(h.pid, h.pid_start)
    DRIVER.destroy(h)
    assert not any(os.path.exists(p) for p in cgroup_dirs(h))
    assert str(cfg.task_dir) not in host_mounts()


def test_resolv_conf_and_hostname_from_the_network_hook(tmp_path):
    cfg = config(tmp_path, "cat /etc/resolv.conf; hostname; echo x > /etc/resolv.conf || echo ro",
                 resolv_conf="nameserver 10.9.8.7\n", hostname="web-1")
    _, res = run(cfg)
    assert res.successful()
    assert out(cfg).splitlines() == ["nameserver 10.9.8.7", "web-1", "ro"]
    assert "10.9.8.7" not in Path("/etc/resolv.conf").read_text()


@pytest.fixture
def netns():
    name = f"yurt-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    assert made.returncode == 0, f"ip netns add failed: {made.stderr.strip()}"
    yield f"/var/run/netns/{name}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def test_task_joins_the_group_network_namespace(tmp_path, netns):
    cfg = config(tmp_path, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '", netns=netns)
    _, res = run(cfg)
    assert res.successful(), out(cfg, "stderr")
    assert out(cfg).split() == ["lo"]


AGENT = textwrap.dedent("""
    import json, sys, time
    from yurt.client import AllocDirHook, AllocRunner
    from yurt.client.drivers.exec import ExecDriver
    from yurt.structs import Allocation
    data_dir, alloc_file = sys.argv[1], sys.argv[2]
    alloc = Allocation.model_validate(json.load(open(alloc_file)))
    runner = AllocRunner(alloc, data_dir=data_dir, drivers={"exec": ExecDriver()},
                         hooks=[AllocDirHook()])
    runner.run()
    deadline = time.monotonic() + 60
    while runner.client_status != "running":
        if time.monotonic() > deadline:
            print("NOT RUNNING", runner.client_status, flush=True)
            sys.exit(1)
        time.sleep(0.05)
    print("RUNNING", flush=True)
    time.sleep(3600)  # until the test kills this agent
""")


def test_recover_after_the_agent_is_killed(tmp_path):
    script = ("echo $$ >> /alloc/pids; trap 'echo stopping; exit 0' INT; "
              "while true; do sleep 0.1; done")
    task = Task(name="web", driver="exec", config={"command": "/bin/sh", "args": ["-c", script]},
                resources=Resources(cpu=100, memory_mb=64))
    alloc = make_alloc([task])
    alloc_file = tmp_path / "alloc.json"
    alloc_file.write_text(json.dumps(alloc.to_json()))
    (tmp_path / "agent.py").write_text(AGENT)
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    agent = subprocess.Popen([sys.executable, str(tmp_path / "agent.py"), str(data), str(alloc_file)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert agent.stdout.readline().strip() == "RUNNING"
        handle = load(data, alloc.id).tasks["web"].handle
        assert handle is not None and handle.driver == "exec"
    finally:
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
    assert is_alive(handle.pid, handle.pid_start), "the task must outlive its agent"

    rec = Recorder()
    runner = AllocRunner.restore(data, alloc.id, drivers={"exec": ExecDriver()}, on_update=rec,
                                 hooks=[AllocDirHook()])
    runner.run()
    wait_for(lambda: rec.updates and rec.last[0] == "running", what="running after restore")
    assert runner.task_runners["web"].handle.pid == handle.pid
    assert len((runner.alloc_dir.shared / "pids").read_text().split()) == 1, "no second copy"
    runner.stop()
    assert runner.wait(30)
    states = rec.last[2]
    assert event_types(states["web"])[-3:] == ["Killing", "Terminated", "Killed"]
    assert "stopping" in (runner.alloc_dir.logs / "web.stdout.0").read_text()
    assert not is_alive(handle.pid, handle.pid_start)
    assert not any(os.path.exists(p) for p in handle.state["cgroup"]["paths"].values())
    assert str(runner.alloc_dir.root) not in host_mounts()


def test_host_pid_and_ipc_modes(tmp_path):
    cfg = config(tmp_path, "ls /proc | grep -c '^[0-9]*$'",
                 config={"pid_mode": "host", "ipc_mode": "host"})
    _, res = run(cfg)
    assert res.successful(), out(cfg, "stderr")
    assert int(out(cfg)) > 5, "with pid_mode=host the task sees the host's processes"


def test_signal_reaches_the_task_through_init(tmp_path):
    cfg = config(tmp_path, "trap 'echo got-usr1' USR1; trap 'exit 0' TERM; echo ready; "
                           "while true; do sleep 0.1; done")
    h = DRIVER.start(cfg)
    wait_for(lambda: "ready" in out(cfg), what="task ready")
    DRIVER.signal(h, "SIGUSR1")
    wait_for(lambda: "got-usr1" in out(cfg), what="the signal handled by the task")
    DRIVER.stop(h, "SIGTERM", 10)
    res = DRIVER.wait(h, 0)
    assert res is not None and res.successful()
    DRIVER.destroy(h)
