"""`yurt alloc exec`: a command run inside a running task over Nomad's websocket protocol
(/v1/client/allocation/<id>/exec), through the CLI and spoken directly; with a pty that follows
resizes; refused clearly for a finished allocation; relayed from an agent that does not run it."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest
from websockets.sync.client import connect as ws_connect

from yurt.client.drivers.exec import ExecDriver

from .agent_util import AgentProcess, allocs, purge_jobs, register, wait_for
from .conftest import run_yurt
from .test_agent_core import sh_job
from .test_tls_api import mtls_cluster, pki  # noqa: F401 -- the HTTPS cluster's fixtures

EXEC_LACKS = ExecDriver().missing()

CHROOT_JOB = '''
job "ex-chroot" {
  group "g" {
    task "t" {
      driver = "exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "printf hello > /local/greeting.txt; exec sleep 86400"]
      }
    }
  }
}
'''


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a
        with a.api() as api:
            purge_jobs(api)


def _running(api, job: str) -> dict:
    (alloc,) = wait_for(lambda: [a for a in allocs(api, job) if a["ClientStatus"] == "running"], timeout=60,
                        what=f"{job} running")
    return alloc


@pytest.fixture(scope="module")
def raw(agent):
    with agent.api() as api:
        # raw_exec's working directory is the task's local/ ($NOMAD_TASK_DIR)
        register(api, sh_job("ex-raw", "echo marker > here.txt; exec sleep 600"))
        alloc = _running(api, "ex-raw")
    wait_for(lambda: run_yurt("alloc", "exec", "-address", agent.url, alloc["ID"], "ls").stdout
             .split().count("here.txt") == 1, timeout=30, what="the task's file written")
    return alloc


def exec_yurt(agent, *args: str, input: bytes | None = None):
    return run_yurt("alloc", "exec", "-address", agent.url, *args, input=input)


def session(url: str, alloc_id: str, command: list[str], tty: bool = False, task: str = ""):
    query = urlencode({"task": task, "tty": str(tty).lower(), "command": json.dumps(command)})
    return ws_connect(url.replace("http://", "ws://") + f"/v1/client/allocation/{alloc_id}/exec?{query}",
                      open_timeout=30)


def frames(ws) -> tuple[bytes, bytes, int | None]:
    out, err, code = b"", b"", None
    for message in ws:
        frame = json.loads(message)
        if "stdout" in frame:
            out += base64.b64decode(frame["stdout"].get("data") or "")
        if "stderr" in frame:
            err += base64.b64decode(frame["stderr"].get("data") or "")
        if frame.get("exited"):
            code = frame["result"]["exit_code"]
    return out, err, code


def test_ls_in_the_tasks_working_directory(agent, raw):
    r = exec_yurt(agent, raw["ID"][:8], "ls")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["here.txt"]
    r = exec_yurt(agent, raw["ID"], "sh", "-c", 'ls "$NOMAD_TASK_DIR"; pwd')
    assert r.stdout.split()[0] == "here.txt" and r.stdout.split()[1].endswith("/t/local"), r.stdout
    # the task's environment: its NOMAD_ variables
    r = exec_yurt(agent, "-task", "t", raw["ID"], "sh", "-c", "echo $NOMAD_ALLOC_ID $NOMAD_TASK_NAME")
    assert r.stdout.split() == [raw["ID"], "t"], r.stderr


def test_stdin_is_passed_and_the_exit_code_comes_back(agent, raw):
    r = exec_yurt(agent, raw["ID"], "sh", "-c", "read x; echo got $x; echo oops >&2; exit 7", input=b"ping\n")
    assert (r.returncode, r.stdout, r.stderr) == (7, "got ping\n", "oops\n")
    r = exec_yurt(agent, raw["ID"], "cat", input=b"a\nb\n")
    assert (r.returncode, r.stdout) == (0, "a\nb\n")
    # -i=false: the command's stdin is closed at once
    r = exec_yurt(agent, "-i=false", raw["ID"], "cat", input=b"never read\n")
    assert (r.returncode, r.stdout) == (0, "")
    # -job: a running allocation of the job
    r = exec_yurt(agent, "-job", "ex-raw", "sh", "-c", "exit 3")
    assert r.returncode == 3, r.stderr


def test_a_missing_command_fails_with_its_message(agent, raw):
    r = exec_yurt(agent, raw["ID"], "/no/such/command")
    assert r.returncode == 1
    assert "/no/such/command" in r.stderr and "No such file" in r.stderr


def test_tty_is_a_pty_that_follows_resizes(agent, raw):
    with session(agent.url, raw["ID"], ["/bin/sh"], tty=True) as ws:
        ws.send(json.dumps({"tty_size": {"height": 33, "width": 111}}))
        script = b"tty; stty size; exit 5\n"
        ws.send(json.dumps({"stdin": {"data": base64.b64encode(script).decode()}}))
        out, _err, code = frames(ws)
    text = out.decode(errors="replace")
    assert code == 5
    assert "/dev/pts/" in text
    assert "33 111" in text


def test_the_protocol_spoken_directly(agent, raw):
    with session(agent.url, raw["ID"], ["sh", "-c", "cat; echo done >&2"]) as ws:
        ws.send(json.dumps({"stdin": {"data": base64.b64encode(b"hello\n").decode()}}))
        ws.send(json.dumps({"stdin": {"close": True}}))
        out, err, code = frames(ws)
    assert (out, err, code) == (b"hello\n", b"done\n", 0)


def test_bad_requests_are_refused_with_the_reason(agent, raw):
    from websockets.exceptions import ConnectionClosed
    with session(agent.url, raw["ID"], []) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 1008 and "command must be a non-empty JSON array" in ws.close_reason
    with session(agent.url, raw["ID"], ["ls"], task="nope") as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert 'has no task "nope"' in ws.close_reason


def test_exec_into_a_finished_allocation_is_refused(agent):
    with agent.api() as api:
        register(api, sh_job("ex-done", "echo finished", kind="batch"))
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "ex-done") if a["ClientStatus"] == "complete"],
                            timeout=60, what="batch job complete")
    r = exec_yurt(agent, alloc["ID"], "ls")
    assert r.returncode == 1
    assert "is complete: alloc exec needs a running task" in r.stderr
    # the API says so too, to a caller that does not check first
    from websockets.exceptions import ConnectionClosed
    with session(agent.url, alloc["ID"], ["ls"]) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 1008 and "alloc exec needs a running task" in ws.close_reason


@pytest.mark.skipif(bool(EXEC_LACKS), reason="; ".join(EXEC_LACKS) or "ok")
def test_exec_driver_runs_the_command_in_the_tasks_chroot_and_namespaces(agent):
    with agent.api() as api:
        register(api, CHROOT_JOB)
        alloc = _running(api, "ex-chroot")
    wait_for(lambda: exec_yurt(agent, alloc["ID"], "ls", "/local").stdout.split() == ["greeting.txt"],
             timeout=30, what="ls /local in the chroot")
    r = exec_yurt(agent, alloc["ID"], "ls", "-a", "/")   # the chroot: the task dir with its binds
    assert {"alloc", "local", "secrets", "usr"} <= set(r.stdout.split()), r.stdout
    assert "root" not in r.stdout.split()
    r = exec_yurt(agent, alloc["ID"], "cat", "/local/greeting.txt")
    assert r.stdout == "hello"
    # the task's user, its environment, and its own pid namespace (the sleep is not far from 1)
    r = exec_yurt(agent, alloc["ID"], "sh", "-c", 'id -un; echo "$NOMAD_TASK_DIR"; cat /proc/1/cmdline | tr "\\0" " "')
    assert r.returncode == 0, r.stderr
    user, task_dir = r.stdout.split("\n")[:2]
    assert (user, task_dir) == ("nobody", "/local")
    # the task's cgroup (its limits) holds the command too
    r = exec_yurt(agent, alloc["ID"], "sh", "-c", "for p in /proc/[0-9]*; do [ \"$(head -c 5 $p/cmdline)\" = sleep ] && "
                  "cat $p/cgroup; done; cat /proc/self/cgroup")
    lines = r.stdout.split()
    task_cgroup, own = lines[:len(lines) // 2], lines[len(lines) // 2:]
    assert task_cgroup == own and any(alloc["ID"] in line for line in own), r.stdout
    r = exec_yurt(agent, alloc["ID"], "sh", "-c", "read x; echo got $x", input=b"chroot\n")
    assert r.stdout == "got chroot\n"


def test_an_agent_that_does_not_run_the_allocation_relays_the_session():
    from .mesh_agent import MeshAgent
    from .test_client_only import ClientAgent

    server = MeshAgent().start()
    client = ClientAgent([f"127.0.0.1:{server.port}"]).start()
    other = ClientAgent([f"127.0.0.1:{server.port}"])
    try:
        with client.api() as api:
            register(api, sh_job("ex-far", "exec sleep 600"))
            alloc = _running(api, "ex-far")
        other.start()
        # the server-only agent runs nothing: it relays to the client's agent
        r = exec_yurt(server, alloc["ID"], "sh", "-c", "read x; echo far $x; exit 4", input=b"away\n")
        assert (r.returncode, r.stdout) == (4, "far away\n"), r.stderr
        with session(server.url, alloc["ID"], ["/bin/sh"], tty=True) as ws:
            ws.send(json.dumps({"tty_size": {"height": 20, "width": 70}}))
            ws.send(json.dumps({"stdin": {"data": base64.b64encode(b"stty size; exit\n").decode()}}))
            out, _err, code = frames(ws)
        assert code == 0 and "20 70" in out.decode()
        # errors of the agent that runs it come back as they are
        from websockets.exceptions import ConnectionClosed
        with session(server.url, alloc["ID"], ["ls"], task="nope") as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv()
            assert ws.close_code == 1008 and 'has no task "nope"' in ws.close_reason
        # a client-only agent that does not run it: to its server, which relays to the node's agent
        r = exec_yurt(other, alloc["ID"], "sh", "-c", "echo two hops; exit 9")
        assert (r.returncode, r.stdout) == (9, "two hops\n"), r.stderr
    finally:
        other.close()
        with server.api() as api:
            api.delete("/v1/job/ex-far", params={"purge": "true"})
            wait_for(lambda: all(a["ClientStatus"] != "running" for a in api.get("/v1/allocations").json()),
                     timeout=60, what="the allocation stopped")
        client.close()
        server.close()


def test_docker_task_runs_the_command_with_the_engines_exec():
    from .docker_util import agent as docker_agent
    from .docker_util import engine
    from .test_docker_driver import py_job

    engine()
    agent = docker_agent()
    try:
        with agent.api() as api:
            register(api, py_job("ex-docker", "import time; time.sleep(600)"))
            alloc = _running(api, "ex-docker")
        code = "import os, sys; print('got', input()); os.listdir('/local'); print('err', file=sys.stderr); sys.exit(6)"
        r = exec_yurt(agent, alloc["ID"], "python3.11", "-c", code, input=b"box\n")
        assert (r.returncode, r.stdout, r.stderr) == (6, "got box\n", "err\n"), r.stderr
        script = "import os, sys; input(); s = os.get_terminal_size(); print(s.lines, s.columns, os.isatty(0)); sys.exit(2)"
        with session(agent.url, alloc["ID"], ["/usr/bin/python3.11", "-c", script], tty=True) as ws:
            ws.send(json.dumps({"tty_size": {"height": 25, "width": 90}}))
            ws.send(json.dumps({"stdin": {"data": base64.b64encode(b"go\n").decode()}}))
            out, _err, exit_code = frames(ws)
        assert exit_code == 2 and "25 90 True" in out.decode(), out
    finally:
        with agent.api() as api:
            api.delete("/v1/job/ex-docker", params={"purge": "true"})
            wait_for(lambda: all(a["ClientStatus"] != "running" for a in api.get("/v1/allocations").json()),
                     timeout=60, what="the allocation stopped")
        agent.stop()


def test_with_acls_exec_needs_the_alloc_exec_capability(tmp_path):
    import re
    config = tmp_path / "acl.hcl"
    config.write_text("acl {\n  enabled = true\n}\n")
    with AgentProcess(extra=["-acl-enabled", "-config", str(config)]) as agent:
        root = re.search(r"ACL Token: ([0-9a-f-]{36})", agent.log()).group(1)
        env = {"NOMAD_TOKEN": root, "YURT_TOKEN": ""}
        policy = tmp_path / "read.hcl"
        policy.write_text('namespace "default" {\n  policy = "read"\n}\n')
        assert run_yurt("acl", "policy", "apply", "-address", agent.url, "readonly", str(policy), env=env).returncode == 0
        made = run_yurt("acl", "token", "create", "-address", agent.url, "-name", "reader", "-policy", "readonly",
                        env=env)
        reader = re.search(r"Secret ID\s+= (\S+)", made.stdout).group(1)
        with agent.api() as api:
            api.headers["X-Nomad-Token"] = root
            register(api, sh_job("ex-acl", "exec sleep 600"))
            alloc = _running(api, "ex-acl")
        r = run_yurt("alloc", "exec", "-address", agent.url, alloc["ID"], "echo", "hi", env=env)
        assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
        # the reader may see the allocation but not run commands in it
        r = run_yurt("alloc", "exec", "-address", agent.url, alloc["ID"], "echo", "hi", env={**env, "NOMAD_TOKEN": reader})
        assert r.returncode == 1
        assert 'Permission denied: this needs namespace "default" capability alloc-exec' in r.stderr
        with agent.api() as api:
            api.delete("/v1/job/ex-acl", params={"purge": "true"}, headers={"X-Nomad-Token": root})
            wait_for(lambda: all(a["ClientStatus"] != "running" for a in
                                 api.get("/v1/allocations", headers={"X-Nomad-Token": root}).json()),
                     timeout=60, what="the allocation stopped")


def test_the_cli_on_a_terminal_gives_the_command_one_of_its_size(agent, raw):
    import fcntl
    import os
    import struct
    import subprocess
    import termios
    import time

    from .conftest import YURT
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([*YURT, "alloc", "exec", "-address", agent.url, raw["ID"], "/bin/sh"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))   # its terminal: SIGWINCH
    os.close(slave)
    out = b""
    try:
        time.sleep(3)
        os.write(master, b"stty size; tty\r")
        time.sleep(2)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))   # SIGWINCH: resized
        time.sleep(1)
        os.write(master, b"stty size; exit 3\r")
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                out += os.read(master, 4096)
            except OSError:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = out.decode(errors="replace")
    assert proc.returncode == 3, text
    assert "30 100" in text and "/dev/pts/" in text and "40 120" in text, text


def test_over_https_with_client_certificates_the_server_relays_to_the_client_agent(mtls_cluster, pki):  # noqa: F811
    server, _client = mtls_cluster
    flags = ["-address", server.url, "-ca-cert", str(pki / "yurt-agent-ca.pem"),
             "-client-cert", str(pki / "global-cli-yurt.pem"), "-client-key", str(pki / "global-cli-yurt-key.pem")]
    with server.api() as api:
        register(api, sh_job("ex-tls", "exec sleep 600"))
        alloc = _running(api, "ex-tls")
    # the CLI speaks wss:// with its certificate; the server relays over wss:// with its own
    r = run_yurt("alloc", "exec", *flags, alloc["ID"], "sh", "-c", "read x; echo tls $x", input=b"ok\n")
    assert (r.returncode, r.stdout) == (0, "tls ok\n"), r.stderr
    r = run_yurt("alloc", "exec", *flags[:2], alloc["ID"], "true")   # no CA: the reason, not a trace
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.startswith("Error:"), r.stderr


def test_a_caller_that_hangs_up_ends_the_command(agent, raw):
    import os
    with session(agent.url, raw["ID"], ["sh", "-c", "echo $$; exec sleep 300"]) as ws:
        frame = json.loads(ws.recv(timeout=30))
        pid = int(base64.b64decode(frame["stdout"]["data"]))
        assert os.path.exists(f"/proc/{pid}")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30, what="the command killed")
    # the agent goes on serving sessions
    r = exec_yurt(agent, raw["ID"], "echo", "still here")
    assert r.stdout == "still here\n"
