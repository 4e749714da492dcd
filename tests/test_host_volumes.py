"""Host volumes: `client { host_volume "name" { path, read_only } }` on the node, a group's
`volume "x" { type = "host", source }` and a task's `volume_mount` (Nomad's semantics): the
config, the node's HostVolumes, placement, and a volume written by one allocation and read by
the next (raw_exec, exec, docker)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from yurt.agent.config import AgentConfig, load_file
from yurt.client.fingerprint import fingerprint_node
from yurt.errors import ConfigError
from yurt.jobspec import JobspecError, load
from yurt.structs import ClientHostVolumeConfig, VolumeMount, VolumeRequest

from .agent_util import AgentProcess, allocs, register, wait_for
from .memory_state import MemoryState
from .test_scheduler_helpers import make_job, make_node, placed, run


# -- agent config and node ------------------------------------------------------------------
def test_config_declares_host_volumes(tmp_path):
    (tmp_path / "data").mkdir()
    conf = tmp_path / "agent.hcl"
    conf.write_text(f'client {{\n  enabled = true\n  host_volume "data" {{\n    path = "{tmp_path}/data"\n  }}\n'
                    f'  host_volume "certs" {{\n    path = "{tmp_path}"\n    read_only = true\n  }}\n}}\n')
    cfg = AgentConfig()
    load_file(str(conf), cfg)
    assert cfg.host_volumes == {"data": (str(tmp_path / "data"), False), "certs": (str(tmp_path), True)}
    node = fingerprint_node(tmp_path / "dd", host_volumes=cfg.host_volumes)
    assert node.to_json()["HostVolumes"] == {
        "certs": {"Name": "certs", "Path": str(tmp_path), "ReadOnly": True},
        "data": {"Name": "data", "Path": str(tmp_path / "data"), "ReadOnly": False}}


@pytest.mark.parametrize("body,message", [
    ('path = "/no/such/dir/yurt"', 'client.host_volume "v": path "/no/such/dir/yurt" does not exist'),
    ('', 'client.host_volume "v" has no path'),
    ('path = "relative"', 'path "relative" is not absolute'),
    ('path = "/tmp"\n    size = 3', 'unknown setting "size"'),
])
def test_config_refuses_a_bad_host_volume(tmp_path, body, message):
    conf = tmp_path / "agent.hcl"
    conf.write_text(f'client {{\n  host_volume "v" {{\n    {body}\n  }}\n}}\n')
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_file(str(conf), AgentConfig())


# -- job file -------------------------------------------------------------------------------
def _job(group: str = "", mount: str = "", driver: str = "raw_exec", command: str = "/bin/true",
         args: str = "[]", job_id: str = "vol", type_: str = "batch") -> str:
    return f'''job "{job_id}" {{
  type = "{type_}"
  group "g" {{
{group}
    task "t" {{
      driver = "{driver}"
      config {{
        command = "{command}"
        args    = {args}
      }}
{mount}
    }}
  }}
}}
'''


VOLUME = '    volume "data" {\n      type   = "host"\n      source = "shared"\n    }'
MOUNT = '      volume_mount {\n        volume      = "data"\n        destination = "/srv/data"\n      }'


def test_job_file_volumes_decode_as_nomad_json():
    job = load(_job(VOLUME, MOUNT), "v.nomad").job
    g = job.to_json()["TaskGroups"][0]
    assert g["Volumes"]["data"]["Type"] == "host"
    assert g["Volumes"]["data"]["Source"] == "shared"
    assert g["Volumes"]["data"]["Name"] == "data"
    assert g["Tasks"][0]["VolumeMounts"][0]["Destination"] == "/srv/data"
    assert g["Tasks"][0]["VolumeMounts"][0]["Volume"] == "data"


@pytest.mark.parametrize("group,mount,message", [
    (VOLUME, MOUNT.replace('"data"', '"nope"'), 'volume_mount names volume "nope", which the group does not declare'),
    (VOLUME.replace('"host"', '"csi"'), MOUNT, "csi volumes are not supported by Yurt"),
    (VOLUME.replace('source = "shared"', ''), MOUNT, 'volume "data" has no source'),
    (VOLUME, MOUNT.replace('"/srv/data"', '"../up"'), 'contains ".."'),
])
def test_bad_volumes_are_refused(group, mount, message):
    with pytest.raises(JobspecError) as info:
        load(_job(group, mount), "v.nomad")
    assert message in str(info.value)


def test_nomad_json_volume_fields_are_accepted_and_unused_ones_warned_about():
    from yurt.structs import Job
    doc = load(_job(VOLUME, MOUNT), "v.nomad").job.to_json()
    g = doc["TaskGroups"][0]
    g["Volumes"]["data"].update({"AccessMode": "single-node-writer", "AttachmentMode": "", "PerAlloc": False,
                                 "Sticky": False, "MountOptions": None})
    g["Tasks"][0]["VolumeMounts"][0].update({"PropagationMode": "private", "SELinuxLabel": ""})
    job = Job.model_validate(doc)
    assert job.task_groups[0].volumes["data"].access_mode == "single-node-writer"
    loaded = load(_job(VOLUME.replace('source = "shared"', 'source = "shared"\n      access_mode = "x"'),
                       MOUNT.replace('"/srv/data"', '"/srv/data"\n        selinux_label = "z"')), "v.nomad")
    messages = sorted(w.message for w in loaded.warnings)
    assert len(messages) == 2 and "access_mode has no effect yet" in messages[1] and "selinux_label" in messages[0]


# -- placement ------------------------------------------------------------------------------
def _hv(name: str, read_only: bool = False) -> dict:
    return {name: ClientHostVolumeConfig(name=name, path=f"/srv/{name}", read_only=read_only)}


def _volume_job(read_only: bool = False):
    return make_job("v", driver="raw_exec", config={"command": "true"},
                    group_kw={"volumes": {"data": VolumeRequest(name="data", type="host", source="shared",
                                                                read_only=read_only)}},
                    task_kw={"volume_mounts": [VolumeMount(volume="data", destination="/d")]})


def test_placement_needs_the_host_volume():
    nodes = [make_node(1), make_node(2, host_volumes=_hv("shared")), make_node(3, host_volumes=_hv("other"))]
    state = MemoryState(nodes=nodes)
    job = _volume_job()
    state.upsert_job(job)
    res = run(state, job)
    assert [a.node_id for a in placed(res)] == [nodes[1].id]


def test_read_write_request_needs_a_read_write_host_volume():
    state = MemoryState(nodes=[make_node(1, host_volumes=_hv("shared", read_only=True))])
    job = _volume_job()
    state.upsert_job(job)
    res = run(state, job)
    assert placed(res) == []
    reasons = res.failed_tg_allocs["g"].reasons()
    assert any("missing compatible host volumes" in r and '"shared" is read-only' in r for r in reasons), reasons
    # a read-only request is placed there
    state = MemoryState(nodes=[make_node(1, host_volumes=_hv("shared", read_only=True))])
    job = _volume_job(read_only=True)
    state.upsert_job(job)
    assert len(placed(run(state, job))) == 1


def test_unknown_host_volume_is_a_placement_failure_naming_it():
    state = MemoryState(nodes=[make_node(1), make_node(2)])
    job = _volume_job()
    state.upsert_job(job)
    res = run(state, job)
    assert placed(res) == []
    reasons = res.failed_tg_allocs["g"].reasons()
    assert any('missing compatible host volumes (no host volume "shared")' in r for r in reasons), reasons


@pytest.mark.parametrize("seed", range(6))
def test_sticky_replacement_prefers_the_previous_node(seed):
    from yurt.structs import EphemeralDisk, UpdateStrategy
    nodes = [make_node(i) for i in range(1, 6)]
    state = MemoryState(nodes=nodes)
    job = make_job("s", driver="raw_exec", config={"command": "true"},
                   group_kw={"update": UpdateStrategy(max_parallel=0)})
    job.task_groups[0].ephemeral_disk = EphemeralDisk(size_mb=300, sticky=True)
    state.upsert_job(job)
    (first,) = placed(run(state, job, seed=seed))
    job2 = job.model_copy(deep=True)
    job2.version = 1
    job2.task_groups[0].tasks[0].config = {"command": "false"}   # a destructive update
    state.upsert_job(job2)
    (second,) = placed(run(state, job2, seed=seed + 100))
    assert second.previous_allocation == first.id
    assert second.node_id == first.node_id


# -- a real agent ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def volume_dir():
    d = tempfile.mkdtemp(prefix="yurt-hv-")
    os.chmod(d, 0o777)   # exec tasks run as nobody
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(volume_dir):
    conf = volume_dir.parent / f"{volume_dir.name}.hcl"
    conf.write_text(f'client {{\n  enabled = true\n  host_volume "shared" {{\n    path = "{volume_dir}"\n  }}\n}}\n')
    with AgentProcess(extra=["-config", str(conf)]) as a:
        with a.api() as api:
            wait_for(lambda: [n for n in api.get("/v1/nodes").json() if n["Status"] == "ready"], 30, what="the node")
        yield a
    conf.unlink(missing_ok=True)


def _complete(api, job_id: str, timeout: float = 60) -> dict:
    def done():
        rows = allocs(api, job_id)
        return rows and rows[0]["ClientStatus"] in ("complete", "failed") and rows[0]
    alloc = wait_for(done, timeout, what=f"{job_id} to finish")
    assert alloc["ClientStatus"] == "complete", api.get(f"/v1/allocation/{alloc['ID']}").json()["TaskStates"]
    return alloc


def _log(api, alloc_id: str) -> str:
    r = api.get(f"/v1/client/fs/logs/{alloc_id}", params={"task": "t", "type": "stdout", "plain": "true",
                                                          "origin": "start"})
    return r.text


def test_node_registers_its_host_volumes(agent, volume_dir):
    with agent.api() as api:
        (stub,) = wait_for(lambda: api.get("/v1/nodes").json(), 30, what="the node")
        node = api.get(f"/v1/node/{stub['ID']}").json()
    assert node["HostVolumes"]["shared"]["Path"] == str(volume_dir)
    assert node["HostVolumes"]["shared"]["ReadOnly"] is False


@pytest.mark.parametrize("driver", ["raw_exec", "exec"])
def test_written_by_one_allocation_read_by_the_next(agent, volume_dir, driver):
    # raw_exec: the destination is a symlink in the task dir; exec: a bind mount in its chroot
    where = "${NOMAD_TASK_DIR}/../srv/data" if driver == "raw_exec" else "/srv/data"
    word = f"hello-{driver}-{time.time_ns()}"
    with agent.api() as api:
        register(api, _job(VOLUME, MOUNT, driver=driver, command="/bin/sh", job_id=f"w-{driver}",
                           args=f'["-c", "echo {word} > {where}/note-{driver}"]'))
        _complete(api, f"w-{driver}")
        assert (volume_dir / f"note-{driver}").read_text().strip() == word
        register(api, _job(VOLUME, MOUNT, driver=driver, command="/bin/sh", job_id=f"r-{driver}",
                           args=f'["-c", "cat {where}/note-{driver}"]'))
        alloc = _complete(api, f"r-{driver}")
        assert word in _log(api, alloc["ID"])


def test_read_only_mount_cannot_be_written_by_exec(agent, volume_dir):
    mount = MOUNT.replace('"/srv/data"', '"/srv/data"\n        read_only   = true')
    with agent.api() as api:
        register(api, _job(VOLUME, mount, driver="exec", command="/bin/sh", job_id="ro",
                           args='["-c", "echo x > /srv/data/ro-note || echo refused"]'))
        alloc = _complete(api, "ro")
        assert "refused" in _log(api, alloc["ID"])
    assert not (volume_dir / "ro-note").exists()


def test_unknown_host_volume_leaves_the_job_unplaced(agent):
    with agent.api() as api:
        register(api, _job(VOLUME.replace('"shared"', '"missing"'), MOUNT, job_id="unplaced"))

        def failed():
            evals = api.get("/v1/job/unplaced/evaluations").json()
            return next((e for e in evals if e.get("FailedTGAllocs")), None)
        ev = wait_for(failed, 30, what="a failed placement")
        metric = ev["FailedTGAllocs"]["g"]
        assert any('missing compatible host volumes (no host volume "missing")' in k
                   for k in metric["ConstraintFiltered"]), metric
        assert allocs(api, "unplaced") == []


def test_docker_task_mounts_the_host_volume(volume_dir, tmp_path):
    from . import docker_util
    docker_util.engine()
    (volume_dir / "for-docker").write_text("from the host\n")
    conf = tmp_path / "agent.hcl"
    conf.write_text(f'client {{\n  enabled = true\n  host_volume "shared" {{\n    path = "{volume_dir}"\n  }}\n}}\n')
    a = docker_util.agent(extra=["-config", str(conf)])
    try:
        with a.api() as api:
            wait_for(lambda: [n for n in api.get("/v1/nodes").json() if n["Status"] == "ready"], 30, what="the node")
            code = ("print(open('/srv/data/for-docker').read()); "
                    "open('/srv/data/docker-note', 'w').write('from-docker')")
            job = _job(VOLUME, MOUNT, driver="docker", command="-c", job_id="dock", args=f'["{code}"]')
            # the image's entrypoint is python
            job = job.replace('command = "-c"', f'image = "{docker_util.IMAGES[2]}"\n        command = "-c"')
            register(api, job)
            try:
                alloc = _complete(api, "dock", timeout=120)
            except AssertionError:
                raise AssertionError(str(api.get("/v1/job/dock/evaluations").json()) + str(allocs(api, "dock"))
                                     + a.log()[-3000:]) from None
            assert "from the host" in _log(api, alloc["ID"])
        assert (volume_dir / "docker-note").read_text().strip() == "from-docker"
    finally:
        a.stop()


# -- ephemeral_disk sticky --------------------------------------------------------------------
STICKY = '''job "sticky" {
  group "g" {
    ephemeral_disk {
      sticky = true
    }
    task "t" {
      driver = "raw_exec"
      env {
        VERSION = "%s"
      }
      config {
        command = "/bin/sh"
        args    = ["-c", "echo $VERSION >> $NOMAD_ALLOC_DIR/data/runs; echo $VERSION >> $NOMAD_TASK_DIR/l; echo runs=$(cat $NOMAD_ALLOC_DIR/data/runs | tr '\\\\n' ,) local=$(cat $NOMAD_TASK_DIR/l | tr '\\\\n' ,); sleep 300"]
      }
    }
  }
}
'''


def test_sticky_disk_is_kept_by_the_replacement_on_the_same_node(agent):
    with agent.api() as api:
        register(api, STICKY % "v1")
        first = wait_for(lambda: [a for a in allocs(api, "sticky") if a["ClientStatus"] == "running"], 60,
                         what="v1 running")[0]
        wait_for(lambda: "runs=v1," in _log(api, first["ID"]), 30, what="v1's output")
        register(api, STICKY % "v2")   # a destructive update: a new allocation replaces the first

        def second():
            rows = [a for a in allocs(api, "sticky") if a["ID"] != first["ID"] and a["ClientStatus"] == "running"]
            return rows and rows[0]
        alloc = wait_for(second, 60, what="v2 running")
        assert alloc["PreviousAllocation"] == first["ID"]
        out = wait_for(lambda: "runs=" in _log(api, alloc["ID"]) and _log(api, alloc["ID"]), 30, what="v2's output")
        assert "runs=v1,v2, local=v1,v2," in out
        api.delete("/v1/job/sticky", params={"purge": "true"})
