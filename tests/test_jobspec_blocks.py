"""A job using every block Yurt reads: values land where Nomad puts them; JSON equals HCL."""

from __future__ import annotations

import json

import pytest

from yurt.jobspec import JobspecError, load, load_file
from yurt.structs.duration import MINUTE, SECOND

from .conftest import FIXTURES, SEED

EVERYTHING = FIXTURES / "everything.nomad"


@pytest.fixture(scope="module")
def job():
    return load_file(str(EVERYTHING)).job


def test_job_level_values(job):
    assert job.region == "europe" and job.priority == 70 and job.datacenters == ["dc1", "dc2"]
    assert job.meta == {"owner": "TEAM-CACHE"}  # locals, var.x, upper() and a conditional
    assert job.constraints[0].l_target == "${attr.kernel.name}" and job.constraints[0].operand == "="
    assert job.affinities[0].weight == 80
    assert [(t.value, t.percent) for t in job.spreads[0].spread_target] == [("dc1", 70), ("dc2", 30)]


def test_update_and_reschedule_merge_into_group(job):
    (group,) = job.task_groups
    assert group.update.max_parallel == 2 and group.update.min_healthy_time == 15 * SECOND
    assert group.update.auto_revert is True and group.update.progress_deadline == 10 * MINUTE
    # job reschedule (delay, fibonacci, unlimited) merged with the group's (max_delay)
    rp = group.reschedule_policy
    assert (rp.delay, rp.delay_function, rp.max_delay, rp.unlimited) == (10 * SECOND, "fibonacci", 5 * MINUTE, True)


def test_group_values(job):
    (group,) = job.task_groups
    assert group.count == 3
    assert group.constraints[0].operand == "distinct_hosts"
    assert group.restart_policy.mode == "delay" and group.restart_policy.attempts == 5
    assert group.ephemeral_disk.size_mb == 500 and group.ephemeral_disk.sticky is True
    net = group.networks[0]
    assert net.mode == "bridge" and net.hostname == "cache-${NOMAD_ALLOC_INDEX}"
    assert [(p.label, p.value, p.to) for p in net.dynamic_ports] == [("db", 0, 6379)]
    assert [(p.label, p.value, p.to) for p in net.reserved_ports] == [("admin", 8080, -1)]
    assert net.dns.servers == ["1.1.1.1"]


def test_service_check_and_connect(job):
    svc = job.task_groups[0].services[0]
    assert svc.tags == ["cache", "v7"]
    (check,) = svc.checks
    assert check.name == 'service: "redis-cache" check'
    assert (check.interval, check.timeout, check.expose) == (10 * SECOND, 2 * SECOND, True)
    assert check.check_restart.limit == 3 and check.check_restart.grace == 30 * SECOND
    proxy = svc.connect.sidecar_service.proxy
    assert proxy.local_service_port == 6379
    assert [(u.destination_name, u.local_bind_port, u.local_bind_address) for u in proxy.upstreams] == \
        [("db", 5432, ""), ("metrics", 9090, "127.0.0.2")]
    (path,) = proxy.expose.paths
    assert (path.path, path.local_path_port, path.listener_port) == ("/metrics", 9102, "admin")
    assert svc.connect.sidecar_task.resources.cpu == 50
    assert svc.connect.sidecar_task.resources.memory_mb == 64


def test_tasks(job):
    setup, redis = job.task_groups[0].tasks
    assert setup.lifecycle.hook == "prestart" and setup.lifecycle.sidecar is False
    assert redis.user == "redis" and redis.kill_timeout == 20 * SECOND and redis.kill_signal == "SIGTERM"
    assert redis.config == {"image": "redis:7", "args": ["--port", "${NOMAD_PORT_db}"],
                            "mount": [{"type": "bind", "source": "local", "target": "/data"}]}
    assert redis.env == {"MODE": "cache", "MAXMEM": "256", "WHERE": "${node.datacenter}"}
    assert redis.resources.cpu == 500 and redis.resources.memory_mb == 256 and redis.resources.memory_max_mb == 512
    assert redis.log_config.max_files == 4 and redis.log_config.max_file_size_mb == 20
    (tpl,) = redis.templates
    assert tpl.dest_path == "local/redis.conf" and tpl.change_signal == "SIGHUP" and tpl.splay == 5 * SECOND
    assert redis.restart_policy.attempts == 5  # the group's policy
    assert redis.services[0].name == "redis-${NOMAD_TASK_NAME}"


def test_variables_from_the_command_line():
    job = load_file(str(EVERYTHING), {"image": "redis:6", "replicas": "5"}).job
    assert job.task_groups[0].count == 5
    assert job.task_groups[0].tasks[1].config["image"] == "redis:6"


def test_undeclared_variable_is_an_error():
    with pytest.raises(JobspecError, match='variable "nope"'):
        load_file(str(EVERYTHING), {"nope": "1"})


@pytest.mark.parametrize("path", [SEED, EVERYTHING], ids=["seed", "everything"])
def test_json_input_equals_hcl_input(path):
    hcl_job = load_file(str(path)).job
    document = json.dumps(hcl_job.to_document(), indent=2)
    assert load(document, "job.json").job == hcl_job
    bare = json.dumps(hcl_job.to_json())  # a bare job object, as /v1/jobs/parse returns it
    assert load(bare, "job.json").job == hcl_job


def test_handwritten_json_equals_hcl():
    hcl = '''
job "web" {
  datacenters = ["dc1"]
  group "g" {
    count = 2
    network {
      port "http" { static = 8080 }
      port "admin" {}
    }
    task "t" {
      driver = "raw_exec"
      config { command = "sleep" args = ["60"] }
      resources { memory = 64 }
    }
  }
}'''
    js = json.dumps({"Job": {"ID": "web", "Datacenters": ["dc1"], "TaskGroups": [{
        "Name": "g", "Count": 2,
        "Networks": [{"ReservedPorts": [{"Label": "http", "Value": 8080}], "DynamicPorts": [{"Label": "admin"}]}],
        "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "sleep", "args": ["60"]},
                   "Resources": {"MemoryMB": 64}}]}]}})
    assert load(hcl, "web.nomad").job == load(js, "web.json").job


def test_nomad_export_with_fields_yurt_lacks_is_accepted_when_empty():
    doc = load_file(str(SEED)).job.to_document()
    doc["Job"].update({"Periodic": None, "ParameterizedJob": None, "ConsulToken": "", "Multiregion": None})
    doc["Job"]["TaskGroups"][0]["Tasks"][0].update({"Vault": None, "Artifacts": [], "DispatchPayload": None})
    assert load(json.dumps(doc), "x.json").job.id == "countdash"


def test_json_errors_point_at_the_key():
    text = '{\n  "Job": {\n    "ID": "x",\n    "Priorty": 5,\n    "TaskGroups": []\n  }\n}\n'
    with pytest.raises(JobspecError) as e:
        load(text, "x.json")
    first = e.value.problems[0]
    assert (first.pos.line, first.pos.col) == (4, 5)
    assert 'unknown field "Priorty"; did you mean "Priority"?' in first.message
