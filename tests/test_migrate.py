"""ephemeral_disk `migrate = true` across nodes: a replacement on another node waits for the
previous allocation to stop, downloads its snapshot (`/v1/client/allocation/<id>/snapshot`,
forwarded by the server to the previous node's agent) and starts with its alloc/data and local/.
Two real agents on loopback: a server+client one (node "mig-a") and a client-only one."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from .agent_util import AgentProcess, allocs, register, task_events, wait_for
from .test_client_only import ClientAgent

SCRIPT = ('echo run >> "$NOMAD_ALLOC_DIR/data/runs"; echo local >> "$NOMAD_TASK_DIR/mark"; '
          'echo "data $(wc -l < "$NOMAD_ALLOC_DIR/data/runs") local $(wc -l < "$NOMAD_TASK_DIR/mark")"; '
          'exec sleep 600')


def job(node: str) -> str:
    escaped = SCRIPT.replace("\\", "\\\\").replace('"', '\\"')
    return f'''
job "mig" {{
  group "g" {{
    constraint {{
      attribute = "${{node.unique.name}}"
      value     = "{node}"
    }}
    ephemeral_disk {{
      migrate = true
    }}
    reschedule {{
      attempts  = 0
      unlimited = false
    }}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", "{escaped}"]
      }}
      resources {{
        memory = 32
      }}
    }}
  }}
}}
'''


@pytest.fixture(scope="module")
def cluster():
    data_dir = tempfile.mkdtemp(prefix="yurt-mig-")
    server = AgentProcess(data_dir=data_dir, extra=["-node", "mig-a"]).start()
    client = None
    try:
        client = ClientAgent([f"127.0.0.1:{server.port}"]).start()
        with server.api() as api:
            wait_for(lambda: {n["Name"] for n in api.get("/v1/nodes").json() if n["Status"] == "ready"}
                     >= {"mig-a", "client-only"}, timeout=60, what="both nodes ready")
        yield server, client
    finally:
        with server.api() as api:
            api.delete("/v1/job/mig", params={"purge": "true"})
        if client is not None:
            client.close()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def running(api, node: str) -> dict:
    return wait_for(lambda: next((a for a in allocs(api, "mig") if a["ClientStatus"] == "running"
                                  and a["NodeName"] == node), None), timeout=90, what=f"mig running on {node}")


def output(api, alloc_id: str) -> str:
    return wait_for(lambda: api.get(f"/v1/client/fs/logs/{alloc_id}",
                                    params={"task": "t", "plain": "true"}).text.strip(), what="the task's output")


def test_migrate_moves_the_disk_across_nodes_and_back(cluster):
    server, _client = cluster
    with server.api() as api:
        register(api, job("mig-a"))
        first = running(api, "mig-a")
        assert output(api, first["ID"]) == "data 1 local 1"
        # a running allocation has no snapshot yet; an unknown one is not found
        r = api.get(f"/v1/client/allocation/{first['ID']}/snapshot")
        assert r.status_code == 409 and "still running" in r.text
        assert api.get("/v1/client/allocation/00000000-0000-0000-0000-000000000000/snapshot").status_code == 404

        register(api, job("client-only"))   # to the client-only node: from the server's node
        second = running(api, "client-only")
        assert second["PreviousAllocation"] == first["ID"]
        assert output(api, second["ID"]) == "data 2 local 2"
        messages = [e["DisplayMessage"] for e in task_events(api, second["ID"], "t")]
        assert "Migrating data from previous allocation" in messages

        register(api, job("mig-a"))   # and back: the server forwards to the client-only agent
        third = running(api, "mig-a")
        assert output(api, third["ID"]) == "data 3 local 3"
        r = api.get(f"/v1/client/allocation/{second['ID']}/snapshot")
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"


def test_snapshot_round_trip_and_unsafe_entries_skipped(tmp_path):
    import io
    import tarfile

    from yurt.client.allocdir import AllocDir, restore_snapshot, write_snapshot

    old = AllocDir(tmp_path, "old")
    old.build(["t"])
    (old.shared / "data" / "d").write_text("data")
    (old.task_dir("t").local / "l").write_text("local")
    (old.task_dir("t").secrets / "s").write_text("secret")
    buf = io.BytesIO()
    write_snapshot(old, ["t"], buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert not [n for n in tar.getnames() if "secrets" in n]
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for name in ("alloc/data/../../../escape", "/tmp/abs", "t/secrets/s", "alloc/logs/x", "other/local/x"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("alloc/data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    new = AllocDir(tmp_path / "n", "new")
    new.build(["t"])
    buf.seek(0)
    assert restore_snapshot(new, ["t"], buf) == 2
    assert (new.shared / "data" / "d").read_text() == "data"
    assert (new.task_dir("t").local / "l").read_text() == "local"
    evil.seek(0)
    assert restore_snapshot(new, ["t"], evil) == 0
    assert not (new.shared / "data" / "link").exists() and not (new.task_dir("t").secrets / "s").exists()
    assert not list(tmp_path.rglob("escape"))


def test_migrate_with_acls_on(tmp_path):
    """The same move with ACLs on: the replacement's node fetches the snapshot with its own node
    secret, through the server, from the previous node's client-only agent, which checks it."""
    import re

    import httpx
    conf = tmp_path / "acl.hcl"
    conf.write_text("acl {\n  enabled = true\n}\n")
    data_dir = tempfile.mkdtemp(prefix="yurt-mig-acl-")
    server = AgentProcess(data_dir=data_dir, extra=["-node", "mig-a", "-acl-enabled", "-config", str(conf)]).start()
    client = None
    try:
        m = re.search(r"ACL Token: ([0-9a-f-]{36})", server.log())
        root = m.group(1) if m else httpx.put(f"{server.url}/v1/acl/bootstrap").json()["SecretID"]
        client = ClientAgent([f"127.0.0.1:{server.port}"])
        with open(client.config, "a") as f:
            f.write("acl {\n  enabled = true\n}\n")
        client.start()
        with httpx.Client(base_url=server.url, timeout=30, headers={"X-Nomad-Token": root}) as api:
            wait_for(lambda: {n["Name"] for n in api.get("/v1/nodes").json() if n["Status"] == "ready"}
                     >= {"mig-a", "client-only"}, timeout=60, what="both nodes ready")
            anonymous = httpx.get(f"{server.url}/v1/client/allocation/00000000-0000-0000-0000-000000000000/snapshot")
            assert anonymous.status_code == 403, anonymous.text
            register(api, job("client-only"))
            first = running(api, "client-only")
            assert output(api, first["ID"]) == "data 1 local 1"
            register(api, job("mig-a"))   # from the client-only node's agent, with ACLs on
            second = running(api, "mig-a")
            assert second["PreviousAllocation"] == first["ID"]
            assert output(api, second["ID"]) == "data 2 local 2"
            messages = [e["DisplayMessage"] for e in task_events(api, second["ID"], "t")]
            assert "Migrating data from previous allocation" in messages
            api.delete("/v1/job/mig", params={"purge": "true"})
    finally:
        if client is not None:
            client.close()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
