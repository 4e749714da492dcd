"""The reference job, connect.nomad ("countdash"): parsed, defaulted and printed as Nomad would."""

from __future__ import annotations

import json

from yurt.jobspec import load
from yurt.structs.duration import HOUR, MINUTE, SECOND

from .conftest import SEED, FIXTURES, run_yurt


def output_json() -> dict:
    res = run_yurt("job", "run", "-output", str(SEED))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["Job"]


def test_seed_is_unchanged_copy():
    assert (FIXTURES / "connect.nomad").read_text() == SEED.read_text()


def test_seed_validates():
    res = run_yurt("job", "validate", str(SEED))
    assert res.returncode == 0, res.stderr
    assert "Job validation successful" in res.stdout
    assert res.stderr == ""


def test_job_level_defaults():
    job = output_json()
    assert job["ID"] == job["Name"] == "countdash"
    assert job["Region"] == "global"
    assert job["Namespace"] == "default"
    assert job["Type"] == "service"
    assert job["Priority"] == 50
    assert job["Datacenters"] == ["dc1"]
    assert job["NodePool"] == "default"
    assert job["Update"]["MaxParallel"] == 1
    assert job["Update"]["Stagger"] == 30 * SECOND
    assert job["Update"]["HealthCheck"] == "checks"
    assert job["Update"]["MinHealthyTime"] == 10 * SECOND
    assert job["Update"]["HealthyDeadline"] == 5 * MINUTE
    assert job["Update"]["ProgressDeadline"] == 10 * MINUTE
    assert [g["Name"] for g in job["TaskGroups"]] == ["api", "dashboard"]


def test_group_defaults():
    for group in output_json()["TaskGroups"]:
        assert group["Count"] == 1
        assert group["RestartPolicy"] == {"Attempts": 2, "Interval": 30 * MINUTE, "Delay": 15 * SECOND,
                                          "Mode": "fail", "RenderTemplates": False}
        rp = group["ReschedulePolicy"]
        assert (rp["Attempts"], rp["Interval"], rp["Delay"], rp["DelayFunction"], rp["MaxDelay"], rp["Unlimited"]) \
            == (0, 0, 30 * SECOND, "exponential", HOUR, True)
        assert group["EphemeralDisk"]["SizeMB"] == 300
        assert group["Update"]["MaxParallel"] == 1
        assert group["Migrate"]["MaxParallel"] == 1


def test_task_defaults():
    for group in output_json()["TaskGroups"]:
        (task,) = group["Tasks"]
        assert task["Driver"] == "docker"
        assert task["Resources"]["CPU"] == 100
        assert task["Resources"]["MemoryMB"] == 300
        assert task["KillTimeout"] == 5 * SECOND
        assert task["LogConfig"]["MaxFiles"] == 10
        assert task["LogConfig"]["MaxFileSizeMB"] == 10
        assert task["RestartPolicy"]["Attempts"] == 2


def test_ports_and_networks_placed_as_nomad():
    api, dash = output_json()["TaskGroups"]
    assert api["Networks"][0]["Mode"] == "bridge"
    assert not api["Networks"][0]["ReservedPorts"] and not api["Networks"][0]["DynamicPorts"]
    (port,) = dash["Networks"][0]["ReservedPorts"]
    assert port["Label"] == "http" and port["Value"] == 9002 and port["To"] == 9002
    assert port["HostNetwork"] == "default"
    assert not dash["Networks"][0]["DynamicPorts"]


def test_services_and_connect():
    api, dash = output_json()["TaskGroups"]
    (svc,) = api["Services"]
    assert svc["Name"] == "count-api" and svc["PortLabel"] == "9001"
    assert svc["Provider"] == "consul" and svc["AddressMode"] == "auto" and svc["OnUpdate"] == "require_healthy"
    assert svc["Connect"]["SidecarService"] is not None
    (dsvc,) = dash["Services"]
    (up,) = dsvc["Connect"]["SidecarService"]["Proxy"]["Upstreams"]
    assert up["DestinationName"] == "count-api" and up["LocalBindPort"] == 8080


def test_runtime_references_stay_literal():
    api, dash = output_json()["TaskGroups"]
    assert dash["Tasks"][0]["Env"] == {"COUNTING_SERVICE_URL": "http://${NOMAD_UPSTREAM_ADDR_count_api}"}
    assert api["Tasks"][0]["Config"] == {"image": "hashicorpnomad/counter-api:v1"}


def test_output_round_trips_through_the_model():
    job = load(SEED.read_text(), "connect.nomad").job
    doc = job.to_document()
    again = load(json.dumps(doc), "connect.json").job
    assert again == job
    assert again.to_document() == doc
