"""Nothing silently ignored: every field Yurt accepts but does not act on yet is named in a
warning ("has no effect yet in Yurt") at its FILE:LINE:COL, and the few that would be unsafe to
ignore are refused. The table is jobspec/ignored.py; here one case per field, then the CLI
(`job validate`, `job run`, `job plan` print "Job Warnings:") and the API's `Warnings`."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from yurt.jobspec import JobspecError, load
from yurt.jobspec.ignored import RULES

from .agent_util import dev_agent
from .conftest import run_yurt

FILE = "warn.nomad"

# A host-mode group with a plain service; {SLOT}s take a case's lines.
PLAIN = '''job "w" {
  {JOB}
  group "api" {
    network {
      port "http" {}
      {NET}
    }
    {GROUP}
    service {
      name = "api"
      port = "http"
      {SERVICE}
      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
        {CHECK}
      }
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
      {TASK}
    }
  }
}
'''

# A bridge group with a Connect service, its sidecar and one upstream.
CONNECT = '''job "w" {
  group "api" {
    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
    }
    service {
      name = "api"
      port = "http"
      connect {
        {CONNECT}
      }
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
    }
  }
}
'''

SIDECAR = '''sidecar_service {
          {SIDECAR}
          proxy {
            {PROXY}
            upstreams {
              destination_name = "db"
              local_bind_port  = 5432
              {UPSTREAM}
            }
          }
        }'''

SVC = 'group "api" > service "api"'
PROXY = f"{SVC} > connect > sidecar_service > proxy"
UPSTREAM = f'{PROXY} > upstreams "db"'
T = 'group "api" > task "web"'


def job_text(slot: str, lines: str) -> str:
    """The job with `lines` in `slot`, every other slot empty."""
    base = PLAIN if slot in ("JOB", "NET", "GROUP", "SERVICE", "CHECK", "TASK") else CONNECT
    if slot in ("SIDECAR", "PROXY", "UPSTREAM"):
        base = base.replace("{CONNECT}", SIDECAR)
    text = base.replace("{" + slot + "}", lines)
    for other in ("JOB", "NET", "GROUP", "SERVICE", "CHECK", "TASK", "CONNECT", "SIDECAR", "PROXY", "UPSTREAM"):
        text = text.replace("{" + other + "}", "")
    return "\n".join(ln for ln in text.splitlines() if ln.strip()) + "\n"


def position(text: str, lines: str, where: str = "") -> str:
    """LINE:COL in the job text of the case's line that holds the field `where` ends with
    (its first line when `where` is not given)."""
    word = where.split(" > ")[-1].split(" ")[0].split("[")[0] if where else ""
    at = text.index(lines)
    for ln in lines.splitlines(keepends=True):
        if ln.strip().startswith(word):
            at += len(ln) - len(ln.lstrip())
            break
        at += len(ln)
    line = text.count("\n", 0, at) + 1
    col = at - (text.rfind("\n", 0, at) + 1) + 1
    return f"{line}:{col}"


# (id, rule path in ignored.RULES, slot, lines, where, fragment of the message)
WARNED = [
    ("job-ui", ("UI",), "JOB", 'ui {\n    description = "An example"\n  }', "ui", "no effect yet in Yurt's web UI"),
    ("update-stagger", ("TaskGroups", "*", "Update", "Stagger"), "GROUP",
     'update {\n      stagger = "10s"\n    }', 'group "api" > update > stagger', "max_parallel allocations at a time"),
    ("group-max-client-disconnect", ("TaskGroups", "*", "MaxClientDisconnect"), "GROUP",
     'max_client_disconnect = "1h"', 'group "api" > max_client_disconnect', "replaced as lost"),
    ("disconnect-lost-after", ("TaskGroups", "*", "Disconnect", "LostAfter"), "GROUP",
     'disconnect {\n      lost_after = "1h"\n    }', 'group "api" > disconnect > lost_after', "replaced as lost"),
    ("disconnect-reconcile", ("TaskGroups", "*", "Disconnect", "Reconcile"), "GROUP",
     'disconnect {\n      reconcile = "keep_original"\n    }', 'group "api" > disconnect > reconcile',
     "which Yurt does not read"),
    ("network-mbits", ("TaskGroups", "*", "Networks", "*", "MBits"), "NET", "mbits = 10",
     'group "api" > network > mbits', "no bandwidth is reserved"),
    ("network-device", ("TaskGroups", "*", "Networks", "*", "Device"), "NET", 'device = "eth0"',
     'group "api" > network > device', "from its network mode"),
    ("network-cidr", ("TaskGroups", "*", "Networks", "*", "CIDR"), "NET", 'cidr = "10.0.0.0/8"',
     'group "api" > network > cidr', "from its network mode"),
    ("network-ip", ("TaskGroups", "*", "Networks", "*", "IP"), "NET", 'ip = "10.0.0.1"',
     'group "api" > network > ip', "from its network mode"),
    ("static-port-ignore-collision", ("TaskGroups", "*", "Networks", "*", "ReservedPorts", "*", "IgnoreCollision"),
     "NET", 'port "admin" {\n        static           = 8080\n        ignore_collision = true\n      }',
     'group "api" > network > port "admin" > ignore_collision', "one allocation per node"),
    ("dynamic-port-ignore-collision", ("TaskGroups", "*", "Networks", "*", "DynamicPorts", "*", "IgnoreCollision"),
     "NET", 'port "debug" {\n        ignore_collision = true\n      }',
     'group "api" > network > port "debug" > ignore_collision', "only applies to static ports"),
    ("resources-cores", ("TaskGroups", "*", "Tasks", "*", "Resources", "Cores"), "TASK",
     "resources {\n        cores = 2\n      }", f"{T} > resources > cores", "ask for cpu (in MHz) instead"),
    ("resources-secrets", ("TaskGroups", "*", "Tasks", "*", "Resources", "SecretsMB"), "TASK",
     "resources {\n        secrets = 20\n      }", f"{T} > resources > secrets", "without a size limit"),
    ("service-address-mode", ("TaskGroups", "*", "Services", "*", "AddressMode"), "SERVICE",
     'address_mode = "host"', f"{SVC} > address_mode", "registered with the node's address"),
    ("service-cluster", ("TaskGroups", "*", "Services", "*", "Cluster"), "SERVICE", 'cluster = "other"',
     f"{SVC} > cluster", "Yurt's own catalog"),
    ("service-kind", ("TaskGroups", "*", "Services", "*", "Kind"), "SERVICE", 'kind = "terminating-gateway"',
     f"{SVC} > kind", "registered as a plain service"),
    ("service-weights", ("TaskGroups", "*", "Services", "*", "Weights"), "SERVICE",
     "weights {\n        passing = 5\n      }", f"{SVC} > weights", "treat every instance alike"),
    ("service-provider-nomad", ("TaskGroups", "*", "Services", "*", "Provider"), "SERVICE", 'provider = "nomad"',
     f"{SVC} > provider", "not Nomad's /v1/services"),
    ("check-address-mode", ("TaskGroups", "*", "Services", "*", "Checks", "*", "AddressMode"), "CHECK",
     'address_mode = "driver"', f'{SVC} > check[0] > address_mode', "the check runs inside"),
    ("check-advertise", ("TaskGroups", "*", "Services", "*", "Checks", "*", "Advertise"), "CHECK",
     'advertise = "10.0.0.1"', f"{SVC} > check[0] > advertise", "advertise has no effect yet"),
    ("check-notes", ("TaskGroups", "*", "Services", "*", "Checks", "*", "Notes"), "CHECK",
     'notes = "see the runbook"', f"{SVC} > check[0] > notes", "registered without them"),
    ("check-tls-server-name", ("TaskGroups", "*", "Services", "*", "Checks", "*", "TLSServerName"), "CHECK",
     'tls_server_name = "api.internal"', f"{SVC} > check[0] > tls_server_name", "verified against the address"),
    ("check-failures-before-warning", ("TaskGroups", "*", "Services", "*", "Checks", "*", "FailuresBeforeWarning"),
     "CHECK", "failures_before_warning = 2", f"{SVC} > check[0] > failures_before_warning",
     "a failing check goes critical"),
    ("sidecar-task-cores", ("TaskGroups", "*", "Services", "*", "Connect", "SidecarTask", "Resources", "Cores"),
     "CONNECT", "sidecar_service {}\n        sidecar_task {\n          resources {\n            cores = 1\n"
     "          }\n        }", f"{SVC} > connect > sidecar_task > resources > cores", "no core is reserved"),
    ("sidecar-task-secrets", ("TaskGroups", "*", "Services", "*", "Connect", "SidecarTask", "Resources", "SecretsMB"),
     "CONNECT", "sidecar_service {}\n        sidecar_task {\n          resources {\n            secrets = 5\n"
     "          }\n        }", f"{SVC} > connect > sidecar_task > resources > secrets", "without a size limit"),
    ("sidecar-disable-default-tcp-check",
     ("TaskGroups", "*", "Services", "*", "Connect", "SidecarService", "DisableDefaultTCPCheck"), "SIDECAR",
     "disable_default_tcp_check = true", f"{SVC} > connect > sidecar_service > disable_default_tcp_check",
     "listening check is always registered"),
    ("upstream-datacenter", ("TaskGroups", "*", "Services", "*", "Connect", "SidecarService", "Proxy", "Upstreams",
                             "*", "Datacenter"), "UPSTREAM", 'datacenter = "dc2"', f"{UPSTREAM} > datacenter",
     "resolved as if it were not set"),
    ("upstream-mesh-gateway", ("TaskGroups", "*", "Services", "*", "Connect", "SidecarService", "Proxy", "Upstreams",
                               "*", "MeshGateway", "Mode"), "UPSTREAM",
     'mesh_gateway {\n                mode = "local"\n              }', f"{UPSTREAM} > mesh_gateway > mode",
     "goes directly to the service's sidecars"),
    ("upstream-config", ("TaskGroups", "*", "Services", "*", "Connect", "SidecarService", "Proxy", "Upstreams",
                         "*", "Config"), "UPSTREAM", 'config {\n                connect_timeout_ms = 500\n              }',
     f"{UPSTREAM} > config", "takes no options from the job"),
    ("upstream-socket-mode", ("TaskGroups", "*", "Services", "*", "Connect", "SidecarService", "Proxy", "Upstreams",
                              "*", "LocalBindSocketMode"), "UPSTREAM", 'local_bind_socket_mode = "0700"',
     f"{UPSTREAM} > local_bind_socket_mode", "upstreams listen on TCP ports"),
]

_UP = ("TaskGroups", "*", "Services", "*", "Connect", "SidecarService", "Proxy", "Upstreams", "*")

_IDB = ("TaskGroups", "*", "Tasks", "*", "Identity")


def _identity(line: str) -> str:
    return "identity {\n        env = true\n        " + line + "\n      }"


REFUSED = [
    ("identity-name", _IDB + ("Name",), "TASK", _identity('name = "vault"'), f"{T} > identity > name",
     "a named identity is not supported"),
    ("identity-aud", _IDB + ("Audience",), "TASK", _identity('aud = ["vault.io"]'), f"{T} > identity > aud",
     "aud is not supported"),
    ("identity-ttl", _IDB + ("TTL",), "TASK", _identity('ttl = "1h"'), f"{T} > identity > ttl",
     "the default identity does not expire"),
    ("identity-filepath", _IDB + ("Filepath",), "TASK", _identity('filepath = "local/t.jwt"'),
     f"{T} > identity > filepath", "the file is secrets/nomad_token"),
    ("identity-change-mode", _IDB + ("ChangeMode",), "TASK", _identity('change_mode = "restart"'),
     f"{T} > identity > change_mode", "change_mode is not supported"),
    ("identity-change-signal", _IDB + ("ChangeSignal",), "TASK", _identity('change_signal = "SIGHUP"'),
     f"{T} > identity > change_signal", "change_signal is not supported"),
    ("identity-service-name", _IDB + ("ServiceName",), "TASK", _identity('service_name = "api"'),
     f"{T} > identity > service_name", "service_name is not supported"),
    ("disconnect-replace-false", ("TaskGroups", "*", "Disconnect", "Replace"), "GROUP",
     'disconnect {\n      replace = false\n    }', 'group "api" > disconnect > replace',
     "so two copies could run"),
    ("upstream-socket-path", _UP + ("LocalBindSocketPath",), "UPSTREAM",
     'local_bind_socket_path = "/tmp/db.sock"', f"{UPSTREAM} > local_bind_socket_path",
     "set local_bind_port instead"),
    ("upstream-destination-peer", _UP + ("DestinationPeer",), "UPSTREAM", 'destination_peer = "other-cluster"',
     f"{UPSTREAM} > destination_peer", "would reach this cluster's service of the same name instead"),
    ("upstream-destination-partition", _UP + ("DestinationPartition",), "UPSTREAM",
     'destination_partition = "finance"', f"{UPSTREAM} > destination_partition", "Yurt has no admin partitions"),
    ("upstream-destination-namespace", _UP + ("DestinationNamespace",), "UPSTREAM",
     'destination_namespace = "prod"', f"{UPSTREAM} > destination_namespace", "Yurt's mesh has one namespace"),
    ("upstream-prepared-query", _UP + ("DestinationType",), "UPSTREAM", 'destination_type = "prepared_query"',
     f"{UPSTREAM} > destination_type", "resolves an upstream by service name only"),
]


def test_every_rule_has_a_case():
    cases = [c[1] for c in WARNED] + [c[1] for c in REFUSED]
    assert len(cases) == len(set(cases)), "one case per rule"
    assert sorted(cases) == sorted(r.path for r in RULES)
    assert sorted(c[1] for c in REFUSED) == sorted(r.path for r in RULES if r.refuse)


def test_the_minimal_jobs_have_no_problem_of_their_own():
    for slot in ("JOB", "CHECK", "SIDECAR"):
        assert load(job_text(slot, ""), FILE).warnings == []


@pytest.mark.parametrize("slot,lines,where,fragment", [c[2:] for c in WARNED], ids=[c[0] for c in WARNED])
def test_ignored_field_is_warned_about_at_its_place(slot, lines, where, fragment):
    text = job_text(slot, lines)
    loaded = load(text, FILE)  # a warning: the job is accepted
    (warning,) = loaded.warnings
    assert str(warning.pos) == f"{FILE}:{position(text, lines, where)}", text
    assert warning.where == where
    assert "in Yurt" in warning.message
    assert fragment in warning.message
    assert warning.severity == "warning"


@pytest.mark.parametrize("slot,lines,where,fragment", [c[2:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_unsafe_field_is_refused_at_its_place(slot, lines, where, fragment):
    text = job_text(slot, lines)
    with pytest.raises(JobspecError) as info:
        load(text, FILE)
    errors = [p for p in info.value.problems if p.severity == "error"]
    assert len(errors) == 1, "\n".join(map(str, errors))
    (error,) = errors
    assert str(error.pos) == f"{FILE}:{position(text, lines, where)}", text
    assert error.where == where
    assert fragment in error.message


def test_defaults_written_out_are_not_warned_about():
    """What Nomad fills in itself (`nomad job run -output`) is not a field set by the user."""
    lines = ('address_mode = "auto"\n      cluster = "default"\n      enable_tag_override = false\n'
             '      provider = "consul"')
    assert load(job_text("SERVICE", lines), FILE).warnings == []
    lines = ('destination_type = "service"\n              destination_namespace = "default"\n'
             '              destination_partition = "default"\n'
             '              mesh_gateway {\n                mode = "none"\n              }')
    assert load(job_text("UPSTREAM", lines), FILE).warnings == []
    assert load(job_text("GROUP", "ephemeral_disk {\n      sticky = false\n    }"), FILE).warnings == []


def test_templates_and_render_templates_take_effect_now():
    """The client's template hook renders them (tests/test_template_hook.py): no warning."""
    assert load(job_text("GROUP", "restart {\n      render_templates = true\n    }"), FILE).warnings == []
    assert load(job_text("TASK", "restart {\n        render_templates = true\n      }"), FILE).warnings == []
    assert load(job_text("TASK", 'template {\n        data        = "x"\n        destination = "local/x.conf"\n'
                                 '      }'), FILE).warnings == []


def test_the_canonical_json_gives_the_same_warnings_once():
    """`yurt job run -output` JSON, read back: the same fields named, defaults not."""
    text = job_text("TASK", "resources {\n        cores = 2\n      }")
    doc = json.dumps(load(text, FILE).job.to_document())
    (warning,) = load(doc, "job.json").warnings
    assert warning.where == f'{T} > resources > cores'


# -- the CLI and the API ----------------------------------------------------------------------

WARNED_JOB = job_text("TASK", "resources {\n        cores = 2\n      }")   # a warned field, as an example
WARNED_AT = position(WARNED_JOB, "cores = 2")
WARNED_WARNING = (f"{T} > resources > cores: cores has no effect yet in Yurt: no core is reserved or pinned, "
                    "and the task gets no CPU reservation; ask for cpu (in MHz) instead")
REFUSED_JOB = job_text("GROUP", 'disconnect {\n      replace = false\n    }')


def test_cli_validate_prints_job_warnings_and_exits_0(tmp_path):
    f = tmp_path / "job.nomad"
    f.write_text(WARNED_JOB)
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "Job validation successful"
    assert res.stderr.splitlines() == ["Job Warnings:", f"* {f}:{WARNED_AT}: {WARNED_WARNING}"]


def test_cli_validate_refuses_an_unsafe_field(tmp_path):
    f = tmp_path / "job.nomad"
    f.write_text(REFUSED_JOB)
    res = run_yurt("job", "validate", str(f))
    assert res.returncode == 1
    at = position(REFUSED_JOB, "replace = false")
    assert f'{f}:{at}: group "api" > disconnect > replace: disconnect replace = false cannot be ' \
           "honoured yet" in res.stderr
    assert res.stdout == ""


@pytest.fixture(scope="module")
def agent():
    with dev_agent() as proc:
        yield proc.url


def cli(agent: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    return run_yurt(*args, cwd=tmp_path, env={"YURT_ADDR": agent, "NO_COLOR": "1"}, timeout=120)


def test_cli_plan_and_run_print_job_warnings_once(agent, tmp_path):
    f = tmp_path / "job.nomad"
    f.write_text(WARNED_JOB.replace('job "w"', 'job "warned"'))
    expected = f"* {f}:{WARNED_AT}: {WARNED_WARNING}"
    plan = cli(agent, tmp_path, "job", "plan", str(f))
    assert plan.returncode == 1, plan.stdout + plan.stderr  # a new job: allocations would be created
    assert plan.stderr.count("Job Warnings:") == 1 and expected in plan.stderr.splitlines(), plan.stderr
    assert "Scheduler dry-run:" in plan.stdout
    run = cli(agent, tmp_path, "job", "run", "-detach", str(f))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr.splitlines() == ["Job Warnings:", expected]
    assert run.stdout.startswith("Job registration successful")


def test_cli_run_refuses_an_unsafe_field_and_registers_nothing(agent, tmp_path):
    f = tmp_path / "job.nomad"
    f.write_text(REFUSED_JOB.replace('job "w"', 'job "refused"'))
    res = cli(agent, tmp_path, "job", "run", "-detach", str(f))
    assert res.returncode == 1
    assert "disconnect replace = false cannot be honoured yet" in res.stderr
    assert httpx.get(f"{agent}/v1/job/refused", timeout=10).status_code == 404


def test_api_register_plan_and_validate_carry_the_warnings(agent):
    """A job sent as JSON (python-nomad, `nomad job run -output`): the same rules, in `Warnings`."""
    doc = load(WARNED_JOB.replace('job "w"', 'job "api-warned"'), FILE).job.to_document()
    with httpx.Client(base_url=agent, timeout=30) as c:
        r = c.put("/v1/jobs", json=doc)
        assert r.status_code == 200, r.text
        assert r.json()["Warnings"] == WARNED_WARNING
        r = c.put("/v1/job/api-warned/plan", json={**doc, "Diff": True})
        assert r.status_code == 200, r.text
        assert r.json()["Warnings"] == WARNED_WARNING
        r = c.put("/v1/validate/job", json=doc)
        assert r.json()["Warnings"] == WARNED_WARNING and r.json()["ValidationErrors"] == []
        # A hand-written JSON job with a refused field: 400, the place and the reason.
        bare = {"Job": {"ID": "api-refused", "TaskGroups": [{
            "Name": "g", "Disconnect": {"Replace": False},
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}]}]}}
        r = c.put("/v1/jobs", json=bare)
        assert r.status_code == 400
        assert 'group "g" > disconnect > replace: disconnect replace = false cannot be honoured' in r.text
        assert c.get("/v1/job/api-refused").status_code == 404


# -- rules that need more than one field ------------------------------------------------------

def script_check_job(driver: str, user: str = "") -> str:
    config = '"/bin/true"' if driver != "docker" else ""
    config_block = f"config {{\n        command = {config}\n      }}" if config else 'config {\n        image = "x"\n      }'
    user_line = f'\n      user   = "{user}"' if user else ""
    return f'''job "w" {{
  group "api" {{
    service {{
      name = "api"
      port = "8080"
      task = "web"
      check {{
        type     = "script"
        command  = "/bin/check"
        interval = "10s"
        timeout  = "2s"
      }}
    }}
    task "web" {{
      driver = "{driver}"{user_line}
      {config_block}
    }}
  }}
}}
'''


@pytest.mark.parametrize("driver,user,what", [
    ("docker", "", 'inside task "web" (driver "docker")'),
    ("exec", "", 'inside task "web" (driver "exec")'),
    ("raw_exec", "nobody", 'as task "web"\'s user "nobody"'),
])
def test_script_check_that_would_escape_its_task_is_refused(driver, user, what):
    text = script_check_job(driver, user)
    with pytest.raises(JobspecError) as info:
        load(text, FILE)
    (error,) = [p for p in info.value.problems if p.severity == "error"]
    at = position(text, 'type     = "script"')
    assert str(error.pos) == f"{FILE}:{at}"
    assert error.where == 'group "api" > service "api" > check[0] > type'
    assert error.message.startswith(f"a script check cannot run {what} in Yurt yet: Yurt runs it on the node "
                                    "as the agent's user, which would escape the task's isolation; use an "
                                    "http or tcp check, or a raw_exec task without user")


def test_script_check_of_a_raw_exec_task_without_user_runs_as_written():
    assert load(script_check_job("raw_exec"), FILE).warnings == []


def test_sidecar_task_config_the_proxy_does_not_read_is_warned_about():
    lines = ('sidecar_service {}\n        sidecar_task {\n          config {\n'
             '            image = "envoyproxy/envoy:v1.29"\n            connect_timeout_ms = 500\n'
             '          }\n        }')
    text = job_text("CONNECT", lines)
    (warning,) = load(text, FILE).warnings
    # a key of an opaque map (config) is located at its block, as driver config keys are
    assert str(warning.pos) == f"{FILE}:{position(text, 'config {')}"
    assert warning.where == f"{SVC} > connect > sidecar_task > config > image"
    assert warning.message.startswith('sidecar_task config "image" has no effect yet in Yurt: the sidecar is '
                                      "Yurt's own proxy (driver \"connect-proxy\"), which reads datacenter, ")


def test_sidecar_task_with_another_driver_is_warned_about():
    lines = ('sidecar_service {}\n        sidecar_task {\n          driver = "docker"\n'
             '          config {\n            image = "envoyproxy/envoy:v1.29"\n          }\n        }')
    text = job_text("CONNECT", lines)
    (warning,) = load(text, FILE).warnings
    assert str(warning.pos) == f"{FILE}:{position(text, 'driver = ')}"
    assert warning.where == f"{SVC} > connect > sidecar_task > driver"
    assert "replaces Yurt's own proxy, and Yurt writes no Envoy bootstrap for it" in warning.message


def test_a_job_for_another_region_is_refused_by_the_server(agent, tmp_path):
    """Nomad forwards a job to the region it names; Yurt runs one region, so a job for another
    would run here instead. "global" (Nomad's default) means this cluster's region."""
    f = tmp_path / "job.nomad"
    f.write_text(job_text("JOB", 'region = "europe"').replace('job "w"', 'job "elsewhere"'))
    assert run_yurt("job", "validate", str(f)).returncode == 0  # offline: the region is not known
    message = ('region: job region "europe" is not this cluster\'s region "global": Yurt runs one region '
               'and does not forward jobs to another; remove region or set it to "global"')
    res = cli(agent, tmp_path, "job", "run", "-detach", str(f))
    assert res.returncode == 1
    assert message in res.stderr
    plan = cli(agent, tmp_path, "job", "plan", str(f))
    assert plan.returncode == 255 and message in plan.stderr
    assert httpx.get(f"{agent}/v1/job/elsewhere", timeout=10).status_code == 404
    f.write_text(job_text("JOB", 'region = "global"').replace('job "w"', 'job "here"'))
    res = cli(agent, tmp_path, "job", "run", "-detach", str(f))
    assert res.returncode == 0, res.stderr


def test_python_nomad_register_gets_the_warnings(agent):
    import nomad

    doc = load(WARNED_JOB.replace('job "w"', 'job "pn-warned"'), FILE).job.to_document()
    n = nomad.Nomad(address=agent, timeout=30)
    resp = n.jobs.register_job(doc)
    assert resp["EvalID"] and resp["Warnings"] == WARNED_WARNING


def test_proxy_config_protocol_takes_effect_and_other_keys_are_warned_about():
    """`proxy { config { protocol = "http" } }` picks the sidecar's HTTP-aware path (mesh/l7.py);
    Yurt's proxy reads no other key, and a protocol it does not speak is refused."""
    assert load(job_text("PROXY", 'config {\n              protocol = "http"\n            }'), FILE).warnings == []
    lines = 'config {\n              protocol = "http"\n              envoy_stats_tags = ["a"]\n            }'
    (warning,) = load(job_text("PROXY", lines), FILE).warnings
    assert 'proxy config "envoy_stats_tags" has no effect yet in Yurt' in warning.message
    with pytest.raises(JobspecError) as info:
        load(job_text("PROXY", 'config {\n              protocol = "grpc"\n            }'), FILE)
    assert 'proxy config protocol "grpc" is not supported' in str(info.value)
