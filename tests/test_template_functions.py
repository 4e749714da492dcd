"""consul-template's file, scratch and connect functions through a real `-dev` agent (raw_exec
tasks), and the client's `template { }` block: the file sandbox and the function denylist.

A template that reads `file "local/seed.txt"` waits until the file is there (another task of the
group writes it), renders, and renders again (restarting its task) when the file changes;
`file "/etc/passwd"` fails the task naming disable_file_sandbox; `writeToFile` is refused by
the default denylist, and works (outside the task directory too) on an agent whose config lifts
both.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from .agent_util import AgentProcess, allocs, dev_agent, register, task_state, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw_exec tasks write as root into tmp_path")


@pytest.fixture(scope="module")
def agent():
    with dev_agent() as proc:
        yield proc



def job(name: str, tasks: str) -> str:
    return f"""
job "{name}" {{
  type = "service"
  group "g" {{
    restart {{
      attempts = 0
      mode     = "fail"
    }}
{tasks}
  }}
}}
"""


def sh_task(name: str, script: str, templates: str = "") -> str:
    return f"""
    task "{name}" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", {json.dumps(script)}]
      }}
      {templates}
    }}"""


def dead(c: httpx.Client, job_id: str, task: str = "t") -> dict:
    alloc = wait_for(lambda: allocs(c, job_id), 30, what="an allocation")[0]

    def failed() -> dict | None:
        state = task_state(c, alloc["ID"], task)
        return state if state.get("State") == "dead" else None
    return wait_for(failed, 60, what=f"the task of {job_id} to fail")


def hook_failure(state: dict) -> str:
    assert state["Failed"]
    messages = [e["DisplayMessage"] for e in state["Events"] if e["Type"] == "Task hook failed"]
    assert messages, state["Events"]
    assert "Traceback" not in json.dumps(state)
    return messages[-1]


def test_file_scratch_and_connect_render_and_a_file_change_renders_again(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        r = c.put("/v1/agent/service/register", json={
            "ID": "tplfn-native-1", "Name": "tplfn-native", "Address": "127.0.0.1", "Port": 4321,
            "Connect": {"Native": True},
            "Check": {"CheckID": "tplfn-native:ttl", "Name": "ttl", "TTL": "1h", "Status": "passing"}})
        assert r.status_code == 200, r.text
        templates = """
      template {
        data        = <<EOT
seed={{ file "local/seed.txt" }}
{{ scratch.Set "name" "v1" }}{{ scratch.MapSet "ports" "b" 2 }}{{ scratch.MapSet "ports" "a" 1 -}}
scratch={{ scratch.Get "name" }} {{ scratch.MapValues "ports" }} {{ scratch.Key "name" }} {{ scratch.Key "nope" }}
{{ range connect "tplfn-native" }}mesh={{ .Name }}@{{ .Address }}:{{ .Port }}
{{ end }}{{ parseJSON "{\\"a\\": {\\"b\\": \\"c\\"}}" | toYAML }}
EOT
        destination = "local/app.conf"
        splay       = "0s"
        wait {
          min = "0s"
        }
      }"""
        seeder = ('sleep 2; mkdir -p $NOMAD_ALLOC_DIR/../t/local; echo -n one > $NOMAD_ALLOC_DIR/../t/local/seed.txt; '
                  f'while [ ! -e {tmp_path}/go ]; do sleep 0.2; done; '
                  'echo -n two > $NOMAD_ALLOC_DIR/../t/local/seed.txt; exec sleep 3600')
        main = f'cat $NOMAD_TASK_DIR/app.conf > {out}.tmp; echo --- >> {out}.tmp; cat {out}.tmp >> {out}; ' \
               'exec sleep 3600'
        register(c, job("tplfn-file", sh_task("seeder", seeder) + sh_task("t", main, templates)))
        alloc = wait_for(lambda: allocs(c, "tplfn-file"), 30, what="an allocation")[0]
        text = wait_for(lambda: out.exists() and out.read_text(), 60, what="the task's first output")
        assert text.startswith("seed=one\nscratch=v1 [1 2] true false\n"), text
        assert "mesh=tplfn-native@127.0.0.1:4321\n" in text
        assert "a:\n  b: c\n" in text
        events = [e["DisplayMessage"] for e in task_state(c, alloc["ID"], "t")["Events"]]
        assert any(m.startswith("Missing: file(") and m.endswith("/t/local/seed.txt)") for m in events), events

        (tmp_path / "go").write_text("")
        wait_for(lambda: "seed=two\n" in out.read_text(), 60, what="a restart with the file's new content")
        wait_for(lambda: task_state(c, alloc["ID"], "t")["Restarts"] >= 1, 30, what="the restart reported")


def test_file_outside_the_task_directory_is_refused_naming_disable_file_sandbox(agent):
    with agent.api() as c:
        templates = """
      template {
        data        = "{{ file \\"/etc/passwd\\" }}"
        destination = "local/p.conf"
      }"""
        register(c, job("tplfn-sandbox", sh_task("t", "sleep 3600", templates)))
        message = hook_failure(dead(c, "tplfn-sandbox"))
        assert message.startswith("Template failed: template: local/p.conf:1:3: ")
        assert "file: '/etc/passwd' is outside of sandbox" in message
        assert "client { template { disable_file_sandbox = true } }" in message


def test_write_to_file_is_refused_by_the_default_denylist(agent):
    with agent.api() as c:
        templates = """
      template {
        data        = "{{ \\"hi\\" | writeToFile \\"local/w.txt\\" \\"\\" \\"\\" \\"0644\\" }}"
        destination = "local/w.conf"
      }"""
        register(c, job("tplfn-deny", sh_task("t", "sleep 3600", templates)))
        message = hook_failure(dead(c, "tplfn-deny"))
        assert "function 'writeToFile' is disabled: the agent's client { template { function_denylist } } lists it" \
            in message


def test_an_agent_config_lifts_the_sandbox_and_the_denylist(tmp_path):
    conf = tmp_path / "agent.hcl"
    conf.write_text('client {\n  enabled = true\n  template {\n    function_denylist    = ["plugin"]\n'
                    '    disable_file_sandbox = true\n  }\n}\n')
    outside = tmp_path / "outside.txt"
    outside.write_text("from outside")
    written = tmp_path / "written.txt"
    out = tmp_path / "out.txt"
    with AgentProcess(extra=["-config", str(conf)]) as a, a.api() as c:
        templates = f"""
      template {{
        data        = "{{{{ file \\"{outside}\\" }}}}{{{{ \\"w\\" | writeToFile \\"{written}\\" \\"\\" \\"\\" \\"0600\\" \\"newline\\" }}}}"
        destination = "local/o.conf"
      }}"""
        register(c, job("tplfn-lifted", sh_task("t", f"cp $NOMAD_TASK_DIR/o.conf {out}; sleep 3600", templates)))
        wait_for(lambda: out.exists() and out.read_text() == "from outside", 60, what="the template rendered")
        assert written.read_text() == "w\n"
        assert oct(written.stat().st_mode & 0o777) == "0o600"
        c.delete("/v1/job/tplfn-lifted", params={"purge": "true"})


def test_node_nodes_ca_roots_and_ca_leaf(agent, tmp_path):
    out = tmp_path / "out.txt"
    with agent.api() as c:
        templates = """
      template {
        data        = <<EOT
{{ with node }}node={{ .Node.Node }} {{ .Node.Address }}{{ end }}
{{ range nodes }}nodes={{ .Node }}
{{ end }}{{ range caRoots }}{{ if .Active }}root={{ .RootCertPEM | trimSpace | printf "%.27s" }}{{ end }}{{ end }}
{{ with caLeaf "tplfn-web" }}leaf={{ .Service }} {{ .ServiceURI }} {{ .CertPEM | printf "%.27s" }} {{ .PrivateKeyPEM | printf "%.10s" }}{{ end }}
EOT
        destination = "local/n.conf"
      }"""
        task = sh_task("t", f"cp $NOMAD_TASK_DIR/n.conf {out}; sleep 3600", templates)
        task = task.replace('      driver = "raw_exec"', '      driver = "raw_exec"\n      service {\n'
                            '        name = "tplfn-web"\n        port = "8080"\n        address_mode = "host"\n      }', 1)
        register(c, job("tplfn-node", task))
        alloc = wait_for(lambda: allocs(c, "tplfn-node"), 30, what="an allocation")[0]
        text = wait_for(lambda: out.exists() and out.read_text(), 60, what="the rendered template")
        node = c.get(f"/v1/node/{alloc['NodeID']}").json()
        assert f"node={node['Name']} " in text, text
        assert f"nodes={node['Name']}\n" in text
        assert "root=-----BEGIN CERTIFICATE-----\n" in text
        assert "leaf=tplfn-web spiffe://" in text and "/svc/tplfn-web -----BEGIN CERTIFICATE----- -----BEGIN" in text


def test_sockaddr_renders_this_hosts_addresses(agent, tmp_path):
    """consul-template's `sockaddr`: a go-sockaddr expression over the client host's addresses."""
    from yurt.gotemplate.sockaddr import default_route_interface
    out = tmp_path / "sockaddr.txt"
    templates = """
      template {
        data        = <<EOT
lo={{ sockaddr `GetAllInterfaces | include "name" "^lo$" | include "type" "ipv4" | attr "address"` }}
default={{ sockaddr `GetDefaultInterfaces | attr "name"` }}
EOT
        destination = "local/addr.conf"
      }"""
    with agent.api() as c:
        register(c, job("tplfn-sockaddr", sh_task("t", f"cp $NOMAD_TASK_DIR/addr.conf {out}; exec sleep 3600",
                                                   templates)))
        text = wait_for(lambda: out.exists() and out.read_text(), 60, what="the rendered addresses")
        assert text == f"lo=127.0.0.1\ndefault={default_route_interface()}\n", text
        templates = """
      template {
        data        = "{{ sockaddr `GetAllInterfaces | math \\"address\\" \\"+1\\"` }}"
        destination = "local/bad.conf"
      }"""
        register(c, job("tplfn-sockaddr-bad", sh_task("t", "sleep 3600", templates)))
        message = hook_failure(dead(c, "tplfn-sockaddr-bad"))
        assert message.startswith("Template failed: template: local/bad.conf:1:3: "), message
        assert "error calling sockaddr: " in message and "go-sockaddr's math is not supported" in message, message
