"""The template hook on a real `-dev` agent (raw_exec tasks), and its parts in process.

A template is rendered before its task starts (KV and catalog data, `env = true` variables),
waits for a missing key, renders again when what it read changes (a KV write, the instances of
a service moving) and tells the task per change_mode (restart, signal); a template that cannot
render fails its task with a clear event; a syntax error is refused at `job validate`.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from yurt.client.template_hook import AgentSource, parse_env
from yurt.gotemplate import render
from yurt.jobspec import load

from .agent_util import AgentProcess, allocs, dev_agent, register, task_state, wait_for
from .conftest import run_yurt

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw_exec tasks write as root into tmp_path")


@pytest.fixture(scope="module")
def agent():
    with dev_agent() as proc:
        yield proc


def put_kv(c: httpx.Client, key: str, value: str) -> None:
    r = c.put(f"/v1/kv/{key}", content=value.encode())
    assert r.status_code == 200, r.text


def running_alloc(c: httpx.Client, job: str) -> dict:
    def one() -> dict | None:
        for a in allocs(c, job):
            if a["ClientStatus"] == "running":
                return c.get(f"/v1/allocation/{a['ID']}").json()
        return None
    return wait_for(one, 60, what=f"a running allocation of {job}")



def events(c: httpx.Client, alloc_id: str, task: str) -> list[dict]:
    return task_state(c, alloc_id, task).get("Events") or []


def sh_job(name: str, script: str, templates: str, restart: str = "") -> str:
    return f"""
job "{name}" {{
  type = "service"
  group "g" {{
    restart {{
      attempts = 3
      delay    = "1s"
      mode     = "fail"
      {restart}
    }}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", {json.dumps(script)}]
      }}
      {templates}
    }}
  }}
}}
"""


API_JOB = """
job "tpl-api" {
  group "api" {
    network {
      port "http" {}
    }
    service {
      name = "tpl-count-api"
      port = "http"
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }
    }
  }
}
"""


# -- in process --------------------------------------------------------------------------------

def test_env_template_output_is_key_value_lines():
    assert parse_env("A=1\n# note\n\nexport B = 'two words'\nC=\"x=y\"\n") == {"A": "1", "B": "two words", "C": "x=y"}
    with pytest.raises(ValueError, match="not KEY=value"):
        parse_env("oops\n")


def test_agent_source_reads_kv_and_the_catalog(agent):
    from yurt.api.client import YurtClient
    with httpx.Client(base_url=agent.url, timeout=30) as c, YurtClient(agent.url) as api:
        put_kv(c, "src/a", "A")
        put_kv(c, "src/dir/b", "B")
        src = AgentSource(api, {"HOME_X": "h"})
        out = render('{{ env "HOME_X" }} {{ key "src/a" }} {{ keyOrDefault "src/none" "d" }} '
                     '{{ range ls "src/dir" }}{{ .Key }}={{ .Value }}{{ end }} {{ range services }}{{ .Name }},{{ end }}',
                     src)
        assert out.text.startswith("h A d b=B ")
        missing = render('{{ key "src/none" }}', src)
        assert [d.arg for d in missing.missing] == ["src/none"]


def test_task_hooks_see_every_phase_and_add_env(tmp_path):
    """prestart (each start), poststart, exited, stop; prestart's env reaches the task; a
    TaskHookError fails the task with its message (no traceback)."""
    from yurt.client.task_hooks import TaskHook, TaskHookError
    from yurt.structs import RestartPolicy
    from yurt.structs.duration import MS, SECOND

    from .test_client_util import event_types, logs, make_alloc, sh, start_alloc

    calls: list[str] = []

    class Recording(TaskHook):
        name = "recording"

        def prestart(self, ctx):
            calls.append("prestart")
            ctx.env["FROM_TASK_HOOK"] = f"hooked{calls.count('prestart')}"

        def poststart(self, ctx):
            calls.append("poststart")

        def exited(self, ctx):
            calls.append("exited")

        def stop(self, ctx):
            calls.append("stop")

    task = sh("t", 'echo "$FROM_TASK_HOOK"; exit 1',
              restart_policy=RestartPolicy(attempts=1, interval=60 * SECOND, delay=50 * MS, mode="fail"))
    runner, _ = start_alloc(make_alloc([task], job_type="batch"), tmp_path / "a",
                            task_hooks=[lambda t: Recording()])
    assert runner.wait(30)
    assert calls == ["prestart", "poststart", "exited", "prestart", "poststart", "exited", "stop"]
    assert logs(runner, "t") == "hooked1\nhooked2\n"

    class Refusing(TaskHook):
        name = "refusing"

        def prestart(self, ctx):
            raise TaskHookError("Template failed: nope")

    runner, rec = start_alloc(make_alloc([sh("t", "echo never")], job_type="batch"), tmp_path / "b",
                              task_hooks=[lambda t: Refusing()])
    assert runner.wait(30)
    status, _, states = rec.last
    assert status == "failed" and states["t"].failed
    assert event_types(states["t"])[-1] == "Task hook failed"
    assert states["t"].events[-1].display_message == "Template failed: nope"
    assert not (runner.alloc_dir.logs / "t.stdout.0").exists()


def test_destinations_are_relative_to_the_task_dir_inside_the_alloc_dir(tmp_path):
    from yurt.client.allocdir import AllocDir
    from yurt.client.task_hooks import TaskHookError
    from yurt.client.template_hook import TemplateHook
    from yurt.structs import Task

    class Ctx:
        task_dir = AllocDir(tmp_path, "a1").task_dir("web")
    hook = TemplateHook(None, Task(name="web"))  # type: ignore[arg-type]
    alloc_root = tmp_path / "alloc" / "a1"
    assert hook._inside(Ctx(), "local/x.conf", "destination") == alloc_root / "web" / "local" / "x.conf"
    assert hook._inside(Ctx(), "alloc/shared.conf", "destination") == alloc_root / "alloc" / "shared.conf"
    assert hook._inside(Ctx(), "../alloc/shared.conf", "destination") == alloc_root / "alloc" / "shared.conf"
    with pytest.raises(TaskHookError, match="escapes the allocation directory"):
        hook._inside(Ctx(), "../../x", "destination")


def test_destinations_cannot_escape_the_task_directory():
    text = sh_job("tpl-escape", "true", """
      template {
        data        = "x"
        destination = "../../etc/passwd"
      }""")
    with pytest.raises(Exception, match="escapes the allocation directory"):
        load(text, "job.nomad")


# -- on a real agent ---------------------------------------------------------------------------

def test_file_and_env_templates_are_rendered_before_the_task_starts(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        register(c, API_JOB)
        running_alloc(c, "tpl-api")
        put_kv(c, "app/greeting", "hello")
        templates = """
      template {
        data        = <<EOT
greeting={{ key "app/greeting" }}
{{ range service "tpl-count-api" }}api={{ .Address }}:{{ .Port }}
{{ end }}
EOT
        destination = "local/app.conf"
        perms       = "0640"
        uid         = 65534
        gid         = 65534
      }
      template {
        data        = "GREETING={{ key \\"app/greeting\\" }}\\nTASK_NAME={{ env \\"NOMAD_TASK_NAME\\" }}\\n"
        destination = "secrets/app.env"
        env         = true
      }"""
        script = f'cat $NOMAD_TASK_DIR/app.conf > {out}.tmp; echo "env=$GREETING/$TASK_NAME" >> {out}.tmp; ' \
                 f'stat -c %a:%u:%g $NOMAD_TASK_DIR/app.conf >> {out}.tmp; mv {out}.tmp {out}; sleep 3600'
        register(c, sh_job("tpl-file", script, templates))
        running_alloc(c, "tpl-file")
        text = wait_for(lambda: out.exists() and out.read_text(), 60, what="the task's output")
        assert "greeting=hello\n" in text
        assert "api=" in text and ":" in text.split("api=")[1]
        assert "env=hello/t\n" in text
        assert text.strip().endswith("640:65534:65534")


def test_a_variable_of_the_job_is_read_with_the_workload_identity(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        r = c.put("/v1/var/nomad/jobs/tpl-var", json={"Items": {"db_url": "postgres://db"}})
        assert r.status_code == 200, r.text
        templates = """
      template {
        data        = "DB_URL={{ with nomadVar \\"nomad/jobs/tpl-var\\" }}{{ .db_url }}{{ end }}"
        destination = "secrets/db.env"
        env         = true
      }"""
        register(c, sh_job("tpl-var", f'echo "$DB_URL" > {out}; sleep 3600', templates))
        wait_for(lambda: out.exists() and out.read_text() == "postgres://db\n", 60, what="the variable in the env")


def test_a_missing_key_blocks_the_start_until_it_is_written(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        templates = """
      template {
        data        = "v={{ key \\"app/late\\" }}"
        destination = "local/late.conf"
      }"""
        register(c, sh_job("tpl-late", f"cp $NOMAD_TASK_DIR/late.conf {out}; sleep 3600", templates))
        alloc = wait_for(lambda: allocs(c, "tpl-late"), 30, what="an allocation")[0]
        wait_for(lambda: any(e["Type"] == "Template" and e["DisplayMessage"] == "Missing: kv.block(app/late)"
                             for e in events(c, alloc["ID"], "t")), 30, what="the Missing event")
        assert task_state(c, alloc["ID"], "t").get("State") == "pending"
        assert not out.exists()
        put_kv(c, "app/late", "now")
        wait_for(lambda: out.exists() and out.read_text() == "v=now", 30, what="the rendered file")


def test_a_kv_change_restarts_the_task(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        put_kv(c, "app/restart", "one")
        templates = """
      template {
        data        = "{{ key \\"app/restart\\" }}"
        destination = "local/r.conf"
        change_mode = "restart"
        splay       = "0s"
        wait {
          min = "0s"
          max = "1s"
        }
      }"""
        register(c, sh_job("tpl-restart", f'echo "start $(cat $NOMAD_TASK_DIR/r.conf)" >> {out}; sleep 3600', templates))
        alloc = running_alloc(c, "tpl-restart")
        wait_for(lambda: out.exists() and "start one" in out.read_text(), 30, what="the first start")
        put_kv(c, "app/restart", "two")
        wait_for(lambda: "start two" in out.read_text(), 60, what="the restart with the new value")
        state = wait_for(lambda: (st := task_state(c, alloc["ID"], "t"))["Restarts"] >= 1 and st, 30,
                         what="the restart reported")
        assert any(e["Type"] == "Restart Signaled" and
                   e["DisplayMessage"] == "Template with change_mode restart re-rendered" for e in state["Events"])
        assert not state["Failed"]


def test_a_kv_change_signals_the_task(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        put_kv(c, "app/signal", "one")
        templates = """
      template {
        data          = "{{ key \\"app/signal\\" }}"
        destination   = "local/s.conf"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        splay         = "0s"
        wait {
          min = "0s"
        }
      }"""
        script = (f'trap \'echo "hup $(cat $NOMAD_TASK_DIR/s.conf)" >> {out}\' HUP; echo "start $(cat $NOMAD_TASK_DIR/s.conf)" >> {out}; '
                  'while true; do sleep 0.2; done')
        register(c, sh_job("tpl-signal", script, templates))
        alloc = running_alloc(c, "tpl-signal")
        wait_for(lambda: out.exists() and "start one" in out.read_text(), 30, what="the first start")
        put_kv(c, "app/signal", "two")
        wait_for(lambda: "hup two" in out.read_text(), 60, what="the task's SIGHUP trap")
        state = wait_for(lambda: (st := task_state(c, alloc["ID"], "t")) and any(
            e["Type"] == "Signaling" and "SIGHUP" in e["DisplayMessage"] for e in st["Events"]) and st, 30,
            what="the Signaling event")
        assert state["Restarts"] == 0 and state["State"] == "running"


def test_a_kv_change_runs_the_change_script(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        put_kv(c, "app/script", "one")
        templates = f"""
      template {{
        data        = "{{{{ key \\"app/script\\" }}}}"
        destination = "local/c.conf"
        change_mode = "script"
        change_script {{
          command = "/bin/sh"
          args    = ["-c", "echo script $(cat local/c.conf) $NOMAD_TASK_NAME >> {out}"]
          timeout = "5s"
        }}
        wait {{
          min = "0s"
        }}
      }}"""
        register(c, sh_job("tpl-script", "sleep 3600", templates))
        alloc = running_alloc(c, "tpl-script")
        put_kv(c, "app/script", "two")
        wait_for(lambda: out.exists() and "script two t\n" in out.read_text(), 60, what="the change script")
        state = wait_for(lambda: (st := task_state(c, alloc["ID"], "t")) and any(
            e["Type"] == "Template" and "ran script" in e["DisplayMessage"] for e in st["Events"]) and st, 30,
            what="the script's event")
        assert state["Restarts"] == 0 and state["State"] == "running"


def test_a_template_re_renders_when_the_service_moves(agent, tmp_path):
    """count-api moves (its allocation is replaced, on a new port): the template follows, the task restarts."""
    out = tmp_path / "out.txt"
    with agent.api() as c:
        register(c, API_JOB.replace('"tpl-api"', '"tpl-mover"').replace("tpl-count-api", "tpl-moving-api"))
        api_alloc = running_alloc(c, "tpl-mover")
        templates = """
      template {
        data        = "{{ range service \\"tpl-moving-api\\" }}{{ .Port }}{{ end }}"
        destination = "local/api.conf"
        splay       = "0s"
        wait {
          min = "0s"
        }
      }"""
        register(c, sh_job("tpl-follow", f'echo "start $(cat $NOMAD_TASK_DIR/api.conf)" >> {out}; sleep 3600', templates))
        alloc = running_alloc(c, "tpl-follow")
        first = wait_for(lambda: out.exists() and out.read_text().strip(), 30, what="the first start")
        assert first.startswith("start ") and first != "start"
        r = c.put(f"/v1/allocation/{api_alloc['ID']}/stop")
        assert r.status_code == 200, r.text

        def moved() -> bool:
            lines = out.read_text().strip().splitlines()
            return len(lines) >= 2 and lines[-1] not in (first, "start")
        wait_for(moved, 90, what="a restart with the new port")
        wait_for(lambda: task_state(c, alloc["ID"], "t")["Restarts"] >= 1, 30, what="the restart reported")


def test_error_on_missing_key_fails_the_task_with_a_clear_event(agent):
    with agent.api() as c:
        templates = """
      template {
        data                 = "{{ (parseJSON \\"{}\\").nokey }}"
        destination          = "local/m.conf"
        error_on_missing_key = true
      }"""
        register(c, sh_job("tpl-missing", "sleep 3600", templates))
        alloc = wait_for(lambda: allocs(c, "tpl-missing"), 30, what="an allocation")[0]

        def failed() -> dict | None:
            state = task_state(c, alloc["ID"], "t")
            return state if state.get("State") == "dead" else None
        state = wait_for(failed, 30, what="the task to fail")
        assert state["Failed"]
        (event,) = [e for e in state["Events"] if e["Type"] == "Task hook failed"]
        assert event["DisplayMessage"].startswith("Template failed: template: local/m.conf:1:")
        assert 'map has no entry for key "nokey"' in event["DisplayMessage"]
        assert "Traceback" not in json.dumps(state)


def test_a_re_render_that_fails_kills_the_task(agent):
    """error_on_missing_key: the value read later lacks the key; the task fails, as Nomad's."""
    with agent.api() as c:
        put_kv(c, "app/json", '{"port": 1}')
        templates = """
      template {
        data                 = "{{ (key \\"app/json\\" | parseJSON).port }}"
        destination          = "local/j.conf"
        error_on_missing_key = true
        wait {
          min = "0s"
        }
      }"""
        register(c, sh_job("tpl-refail", "sleep 3600", templates))
        alloc = running_alloc(c, "tpl-refail")
        put_kv(c, "app/json", "{}")

        def failed() -> dict | None:
            state = task_state(c, alloc["ID"], "t")
            return state if state.get("State") == "dead" else None
        state = wait_for(failed, 60, what="the task killed")
        assert state["Failed"]
        assert any(e["Type"] == "Task hook failed" and 'map has no entry for key "port"' in e["DisplayMessage"]
                   for e in state["Events"])


def test_with_acls_the_node_reads_kv_and_the_catalog_for_its_templates(tmp_path):
    import re
    out = tmp_path / "out.txt"
    conf = tmp_path / "acl.hcl"
    conf.write_text('acl {\n  enabled = true\n}\n')
    with AgentProcess(extra=["-acl-enabled", "-config", str(conf)]) as a:
        m = re.search(r"ACL Token: ([0-9a-f-]{36})", a.log())
        assert m, a.log()[:2000]
        with httpx.Client(base_url=a.url, timeout=30, headers={"X-Nomad-Token": m.group(1)}) as c:
            put_kv(c, "acl/app", "secret-ish")
            templates = """
      template {
        data        = "{{ key \\"acl/app\\" }} {{ range services }}{{ .Name }}{{ end }}"
        destination = "local/acl.conf"
      }"""
            register(c, sh_job("tpl-acl", f"cp $NOMAD_TASK_DIR/acl.conf {out}; sleep 3600", templates))
            wait_for(lambda: out.exists() and out.read_text().startswith("secret-ish "), 60,
                     what="the template rendered with the node's identity")
            c.delete("/v1/job/tpl-acl", params={"purge": "true"})


def test_a_source_file_that_is_not_there_fails_the_task_with_a_clear_event(agent):
    with agent.api() as c:
        templates = """
      template {
        source      = "local/missing.tpl"
        destination = "local/out.conf"
      }"""
        register(c, sh_job("tpl-nosource", "sleep 3600", templates))
        alloc = wait_for(lambda: allocs(c, "tpl-nosource"), 30, what="an allocation")[0]
        state = wait_for(lambda: (st := task_state(c, alloc["ID"], "t")).get("State") == "dead" and st, 30,
                         what="the task to fail")
        assert state["Failed"]
        assert state["Events"][-1]["Type"] == "Task hook failed"
        assert state["Events"][-1]["DisplayMessage"] == \
            'Template failed: source "local/missing.tpl": No such file or directory'


def test_a_syntax_error_is_refused_at_validate_with_its_position(tmp_path):
    f = tmp_path / "bad.nomad"
    f.write_text(sh_job("tpl-bad", "true", """
      template {
        data        = <<EOT
line one
{{ key "a" }
EOT
        destination = "local/x.conf"
      }"""))
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 1
    line = f.read_text().splitlines().index('        data        = <<EOT') + 1
    assert (f'{f}:{line}:9: group "g" > task "t" > template "local/x.conf" > data: template data does not '
            'parse: template: local/x.conf:2:11: unexpected "}" in operand') in res.stderr, res.stderr


def test_change_script_outside_raw_exec_is_refused():
    text = sh_job("tpl-script", "true", """
      template {
        data        = "x"
        destination = "local/x.conf"
        change_mode = "script"
        change_script {
          command = "/bin/true"
        }
      }""").replace('"raw_exec"', '"exec"')
    with pytest.raises(Exception, match="change_script cannot run inside task"):
        load(text, "job.nomad")



def test_kv_reads_are_for_operators_and_client_nodes():
    """With ACLs on, a client node's identity reads KV (its templates), as operator:read does."""
    from yurt.api.authz import REQUIREMENTS, check
    from yurt.server.acl import ACL, Identity, Rules, node_rules
    req = REQUIREMENTS[("GET", "/v1/kv/{key:path}")]
    assert check(Identity("node", ACL(node_rules())), req, "*")
    assert check(Identity("token", ACL(Rules(simple={"operator": "read"}))), req, "*")
    assert not check(Identity("token", ACL(Rules(simple={"node": "read"}))), req, "*")
    assert not check(Identity("anonymous", ACL(Rules())), req, "*")
    assert "operator:read" in req.describe("*")
    assert not check(Identity("node", ACL(node_rules())), REQUIREMENTS[("PUT", "/v1/kv/{key:path}")], "*")


REATTACH_AGENT = """
import json, sys, time
from yurt.api.client import YurtClient
from yurt.client import AllocRunner, RawExecDriver
from yurt.client.template_hook import template_hooks
from yurt.structs import Allocation
data_dir, alloc_file, url = sys.argv[1], sys.argv[2], sys.argv[3]
alloc = Allocation.model_validate(json.load(open(alloc_file)))
runner = AllocRunner(alloc, data_dir=data_dir, drivers={"raw_exec": RawExecDriver()},
                     task_hooks=[template_hooks(YurtClient(url))])
runner.run()
deadline = time.monotonic() + 60
while runner.client_status != "running":
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.05)
time.sleep(1)   # the state file (with the handle) is written just after
print("RUNNING", flush=True)
time.sleep(3600)
"""


def test_a_restarted_agent_watches_the_templates_of_the_tasks_it_reattaches(agent, tmp_path):
    """The agent dies, its task runs on; the new agent re-attaches and its template hook watches again."""
    import signal
    import subprocess
    import sys

    from yurt.api.client import YurtClient
    from yurt.client import AllocRunner
    from yurt.client.template_hook import template_hooks
    from yurt.structs import Template, WaitConfig

    from .test_client_util import DRIVERS, make_alloc, sh

    out = tmp_path / "out.txt"
    with agent.api() as c:
        put_kv(c, "app/reattach", "one")
    tpl = Template(embedded_tmpl='{{ key "app/reattach" }}', dest_path="local/r.conf", change_mode="restart",
                   splay=0, wait=WaitConfig(min=0))
    alloc = make_alloc([sh("t", f'echo "start $(cat $NOMAD_TASK_DIR/r.conf)" >> {out}; exec sleep 3600',
                           templates=[tpl])])
    (tmp_path / "alloc.json").write_text(json.dumps(alloc.to_json()))
    (tmp_path / "agent.py").write_text(REATTACH_AGENT)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "agent.py"), str(tmp_path / "data"),
                             str(tmp_path / "alloc.json"), agent.url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "RUNNING"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert out.read_text() == "start one\n"
    with YurtClient(agent.url) as api:
        runner = AllocRunner.restore(tmp_path / "data", alloc.id, drivers=DRIVERS, task_hooks=[template_hooks(api)])
        runner.run()
        try:
            wait_for(lambda: runner.task_runners["t"].is_running(), 30, what="re-attached")
            with agent.api() as c:
                put_kv(c, "app/reattach", "two")
            wait_for(lambda: out.read_text() == "start one\nstart two\n", 60, what="the restart by the new agent")
            assert runner.task_runners["t"].state.restarts == 1
        finally:
            runner.destroy(timeout=30)
