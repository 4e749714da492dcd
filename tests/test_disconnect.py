"""`disconnect { stop_on_client_after }` (and the older `stop_after_client_disconnect`) on a real
client-only agent whose server goes away: the group that asks for it is stopped by the client
itself once no heartbeat has been answered that long; a group that does not ask keeps running.
When the server is back, the client reports why it stopped it.

(The servers' side, a lost allocation replaced only once its client has surely stopped it, is in
tests/test_scheduler_reconcile.py.)
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from .agent_util import AgentProcess, register, wait_for
from .test_client_only import ClientAgent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw_exec tasks write as root into tmp_path")


def job(tmp: str) -> str:
    def group(name: str, extra: str) -> str:
        return f'''
  group "{name}" {{
    {extra}
    constraint {{
      attribute = "${{node.unique.name}}"
      value     = "client-only"
    }}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", "echo $$ > {tmp}/{name}.pid; exec sleep 600"]
      }}
    }}
  }}'''
    return ('job "cut" {\n  datacenters = ["dc1"]'
            + group("stops", 'disconnect {\n      stop_on_client_after = "3s"\n    }')
            + group("stays", "") + "\n}\n")


def alive(pid_file: str) -> bool:
    try:
        pid = int(open(pid_file).read())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sleep")


def test_a_cut_off_client_stops_the_groups_that_ask_for_it(tmp_path):
    data_dir = tempfile.mkdtemp(prefix="yurt-cut-")
    server = AgentProcess(data_dir=data_dir, extra=["-node", "cut-srv"]).start()
    client = ClientAgent([f"127.0.0.1:{server.port}"]).start()
    try:
        with server.api() as api:
            register(api, job(str(tmp_path)))
            for name in ("stops", "stays"):
                wait_for(lambda n=name: alive(f"{tmp_path}/{n}.pid"), timeout=90, what=f"group {name} running")
        server.kill()   # SIGKILL: the client's heartbeats find no server from now on
        wait_for(lambda: not alive(f"{tmp_path}/stops.pid"), timeout=90,
                 what="the client stopping the group with stop_on_client_after")
        assert "no server answered for 3s (stop_on_client_after): stopping it" in client.log()
        assert alive(f"{tmp_path}/stays.pid"), "the group without it was stopped too"

        server = AgentProcess(data_dir=data_dir, port=server.port, extra=["-node", "cut-srv"]).start()
        with server.api() as api:
            def reported() -> list[str]:
                out = []
                for a in api.get("/v1/job/cut/allocations").json():
                    if a["TaskGroup"] == "stops":
                        full = api.get(f"/v1/allocation/{a['ID']}").json()
                        out += [e["DisplayMessage"] for e in full["TaskStates"]["t"]["Events"]]
                return out
            wait_for(lambda: any("Client disconnected from the servers for 3s (stop_on_client_after)" in m
                                 for m in reported()), timeout=90, what="the client's report of why it stopped it")
            assert alive(f"{tmp_path}/stays.pid")
            api.delete("/v1/job/cut", params={"purge": "true"})
    finally:
        client.close()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("group_lines,job_type,words", [
    ('disconnect {\n      lost_after = "1h"\n      stop_on_client_after = "1m"\n    }', "service",
     "disconnect cannot have both lost_after and stop_on_client_after"),
    ('stop_after_client_disconnect = "1m"\n    disconnect {\n      stop_on_client_after = "1m"\n    }', "service",
     "stop_after_client_disconnect and a disconnect block cannot both be set (as in Nomad): write disconnect "
     "{ stop_on_client_after } only"),
    ('max_client_disconnect = "1h"\n    disconnect {\n      lost_after = "1h"\n    }', "service",
     "max_client_disconnect and a disconnect block cannot both be set"),
    ('disconnect {\n      stop_on_client_after = "-1m"\n    }', "service", "stop_on_client_after -1m is negative: use 0 or more"),
    ('disconnect {\n      reconcile = "newest"\n    }', "service",
     'reconcile "newest" is not an option: use one of best_score, longest_running, keep_original, keep_replacement'),
    ('disconnect {\n      stop_on_client_after = "1m"\n    }', "system",
     "stop_on_client_after only applies to service and batch jobs"),
])
def test_bad_disconnect_blocks_are_refused_at_their_place(group_lines, job_type, words):
    from yurt.jobspec import JobspecError, load
    text = (f'job "d" {{\n  type = "{job_type}"\n  group "g" {{\n    {group_lines}\n    task "t" {{\n'
            '      driver = "raw_exec"\n      config {\n        command = "/bin/true"\n      }\n    }\n  }\n}\n')
    with pytest.raises(JobspecError) as info:
        load(text, "d.nomad")
    errors = [str(p) for p in info.value.problems if p.severity == "error"]
    assert any(words in e and e.startswith("d.nomad:") and 'group "g"' in e for e in errors), errors


def test_a_disconnect_block_round_trips_as_nomads_json():
    from yurt.jobspec import load
    text = ('job "d" {\n  group "g" {\n    disconnect {\n      stop_on_client_after = "90s"\n    }\n'
            '    task "t" {\n      driver = "raw_exec"\n      config {\n        command = "/bin/true"\n      }\n'
            '    }\n  }\n}\n')
    loaded = load(text, "d.nomad")
    assert loaded.warnings == []
    doc = loaded.job.to_document()
    assert doc["Job"]["TaskGroups"][0]["Disconnect"]["StopOnClientAfter"] == 90_000_000_000
    again = load(__import__("json").dumps(doc), "d.json").job
    assert again.task_groups[0].stop_on_client_after() == 90_000_000_000
