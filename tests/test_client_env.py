"""Task environment (Nomad's client/taskenv): variables, the cleaning rule, interpolation."""

from __future__ import annotations

from pathlib import Path

from yurt.client import AllocDir, build_task_env, clean_env_var, interpolate
from yurt.jobspec.defaults import canonicalize
from yurt.structs import (AllocatedCpuResources, AllocatedMemoryResources, AllocatedPortMapping,
                          AllocatedResources, AllocatedSharedResources, AllocatedTaskResources,
                          Allocation, ConsulConnect, ConsulProxy, ConsulSidecarService,
                          ConsulUpstream, Job, Node, Service, Task, TaskGroup)

ALLOC_ID = "4f1b2c3d-aaaa-bbbb-cccc-0123456789ab"


def node() -> Node:
    return Node(id="node-uuid-1", name="client-1", datacenter="dc2", node_class="gpu",
                attributes={"kernel.name": "linux", "nomad.region": "europe"},
                meta={"rack": "r42"})


def alloc(task: Task) -> Allocation:
    group = TaskGroup(
        name="api", meta={"group_key": "g", "shared": "from-group"}, tasks=[task],
        services=[Service(name="count-dashboard", port_label="9002", connect=ConsulConnect(
            sidecar_service=ConsulSidecarService(proxy=ConsulProxy(upstreams=[
                ConsulUpstream(destination_name="count-api", local_bind_port=8080)]))))])
    job = Job(id="countdash", name="countdash", meta={"job-key": "j", "shared": "from-job"},
              task_groups=[group])
    canonicalize(job)
    return Allocation(
        id=ALLOC_ID, name="countdash.api[3]", job_id="countdash", job=job, task_group="api",
        allocated_resources=AllocatedResources(
            tasks={task.name: AllocatedTaskResources(
                cpu=AllocatedCpuResources(cpu_shares=250),
                memory=AllocatedMemoryResources(memory_mb=128, memory_max_mb=256))},
            shared=AllocatedSharedResources(ports=[
                AllocatedPortMapping(label="http", value=23456, to=9001, host_ip="10.0.0.5"),
                AllocatedPortMapping(label="connect-proxy-count-api", value=21000, to=0,
                                     host_ip="10.0.0.5"),
            ])))


def build(task: Task, tmp_path: Path, host_env=None) -> dict[str, str]:
    a = alloc(task)
    td = AllocDir(tmp_path, a.id).task_dir(task.name)
    return build_task_env(a, task, td, node(), host_env=host_env or {"PATH": "/usr/bin:/bin",
                                                                      "HOME": "/root",
                                                                      "NOMAD_TASK_NAME": "host"})


def test_clean_env_var_keeps_dots_and_replaces_the_rest():
    assert clean_env_var("connect-proxy-count-api") == "connect_proxy_count_api"
    assert clean_env_var("a.b-c d/e") == "a.b_c_d_e"
    assert clean_env_var("9lives") == "_lives"
    assert clean_env_var("ok_Name9") == "ok_Name9"


def test_base_variables(tmp_path):
    env = build(Task(name="web", driver="raw_exec", meta={"task_key": "t"}), tmp_path)
    root = tmp_path / "alloc" / ALLOC_ID
    assert env["NOMAD_ALLOC_ID"] == ALLOC_ID
    assert env["NOMAD_SHORT_ALLOC_ID"] == "4f1b2c3d"
    assert env["NOMAD_ALLOC_NAME"] == "countdash.api[3]"
    assert env["NOMAD_ALLOC_INDEX"] == "3"
    assert env["NOMAD_ALLOC_DIR"] == str(root / "alloc")
    assert env["NOMAD_TASK_DIR"] == str(root / "web" / "local")
    assert env["NOMAD_SECRETS_DIR"] == str(root / "web" / "secrets")
    assert env["NOMAD_JOB_ID"] == env["NOMAD_JOB_NAME"] == "countdash"
    assert env["NOMAD_GROUP_NAME"] == "api"
    assert env["NOMAD_TASK_NAME"] == "web"  # the host's NOMAD_TASK_NAME does not win
    assert env["NOMAD_DC"] == "dc2"
    assert env["NOMAD_REGION"] == "europe"
    assert env["NOMAD_NAMESPACE"] == "default"
    assert env["NOMAD_CPU_LIMIT"] == "250"
    assert env["NOMAD_MEMORY_LIMIT"] == "128"
    assert env["NOMAD_MEMORY_MAX_LIMIT"] == "256"
    assert env["PATH"] == "/usr/bin:/bin" and env["HOME"] == "/root"  # host env passes through


def test_meta_is_merged_raw_and_uppercased_and_cleaned(tmp_path):
    env = build(Task(name="web", driver="raw_exec", meta={"task_key": "t", "shared": "from-task"}),
                tmp_path)
    assert env["NOMAD_META_task_key"] == env["NOMAD_META_TASK_KEY"] == "t"
    assert env["NOMAD_META_group_key"] == env["NOMAD_META_GROUP_KEY"] == "g"
    assert env["NOMAD_META_shared"] == env["NOMAD_META_SHARED"] == "from-task"
    # "job-key" is cleaned: NOMAD_META_ is a cleaned prefix
    assert env["NOMAD_META_job_key"] == env["NOMAD_META_JOB_KEY"] == "j"
    assert "NOMAD_META_job-key" not in env


def test_port_variables_and_the_cleaning_rule(tmp_path):
    env = build(Task(name="web", driver="raw_exec"), tmp_path)
    assert env["NOMAD_PORT_http"] == "9001"  # "to" wins for the port to bind
    assert env["NOMAD_ALLOC_PORT_http"] == "9001"
    assert env["NOMAD_HOST_PORT_http"] == "23456"
    assert env["NOMAD_IP_http"] == env["NOMAD_HOST_IP_http"] == "10.0.0.5"
    assert env["NOMAD_ADDR_http"] == env["NOMAD_HOST_ADDR_http"] == "10.0.0.5:23456"

    label = "connect-proxy-count-api"
    # cleaned prefixes: the cleaned key replaces the raw one
    for prefix in ("NOMAD_PORT_", "NOMAD_HOST_PORT_", "NOMAD_IP_", "NOMAD_ADDR_"):
        assert prefix + "connect_proxy_count_api" in env, prefix
        assert prefix + label not in env, prefix
    assert env["NOMAD_PORT_connect_proxy_count_api"] == "21000"
    # other prefixes keep the dashes
    assert env["NOMAD_ALLOC_PORT_" + label] == "21000"
    assert env["NOMAD_HOST_IP_" + label] == "10.0.0.5"
    assert env["NOMAD_HOST_ADDR_" + label] == "10.0.0.5:21000"
    assert "NOMAD_ALLOC_PORT_connect_proxy_count_api" not in env


def test_upstream_variables_raw_and_cleaned(tmp_path):
    env = build(Task(name="dashboard", driver="raw_exec"), tmp_path)
    for name in ("count-api", "count_api"):
        assert env[f"NOMAD_UPSTREAM_ADDR_{name}"] == "127.0.0.1:8080"
        assert env[f"NOMAD_UPSTREAM_IP_{name}"] == "127.0.0.1"
        assert env[f"NOMAD_UPSTREAM_PORT_{name}"] == "8080"


def test_task_env_is_interpolated_and_overrides_host_env(tmp_path):
    task = Task(name="web", driver="raw_exec", env={
        "COUNTING_SERVICE_URL": "http://${NOMAD_UPSTREAM_ADDR_count_api}",
        "LISTEN": "${NOMAD_IP_http}:${NOMAD_PORT_http}",
        "NODE": "${node.unique.id}/${node.unique.name}/${node.datacenter}/${node.class}/${node.region}",
        "ATTR": "${attr.kernel.name}", "RACK": "${meta.rack}",
        "HOME": "/home/app", "FROM_HOST": "${PATH}",
        "UNKNOWN": "${nope} and ${attr.missing}", "PLAIN": "no refs",
        "my-dashed.var": "kept",
    })
    env = build(task, tmp_path)
    assert env["COUNTING_SERVICE_URL"] == "http://127.0.0.1:8080"
    assert env["LISTEN"] == "10.0.0.5:9001"
    assert env["NODE"] == "node-uuid-1/client-1/dc2/gpu/europe"
    assert env["ATTR"] == "linux"
    assert env["RACK"] == "r42"
    assert env["HOME"] == "/home/app"
    assert env["FROM_HOST"] == "/usr/bin:/bin"
    assert env["UNKNOWN"] == "${nope} and ${attr.missing}"
    assert env["PLAIN"] == "no refs"
    assert env["my-dashed.var"] == "kept"  # not a cleaned prefix


def test_interpolate_recurses_through_lists_and_dicts():
    env = {"NOMAD_PORT_http": "8080", "NOMAD_TASK_DIR": "/t/local"}
    config = {"command": "${NOMAD_TASK_DIR}/bin/app",
              "args": ["-listen", ":${NOMAD_PORT_http}", "-dc=${node.datacenter}", 7],
              "nested": {"list": [{"k": "${meta.rack}"}], "flag": True, "x": "${unknown.ref}"}}
    out = interpolate(config, env, node())
    assert out == {"command": "/t/local/bin/app",
                   "args": ["-listen", ":8080", "-dc=dc2", 7],
                   "nested": {"list": [{"k": "r42"}], "flag": True, "x": "${unknown.ref}"}}
    assert config["command"] == "${NOMAD_TASK_DIR}/bin/app"  # the input is not changed
    assert interpolate("${NOMAD_PORT_http}", env) == "8080"
