"""Deployments end to end on a real agent, through the API: a first run and an update roll out
and end successful with the version stable; canaries wait for a promotion (or promote
themselves); a broken version fails its deployment and, with auto_revert, the last stable
version runs again (a task that exits at once, a check that never passes); a progress deadline;
pause and resume; manual health; revert, stable and scale, and their refusals."""

from __future__ import annotations

import httpx
import pytest

from .agent_util import AgentProcess, allocs, register, wait_for

FAST = {"max_parallel": "1", "min_healthy_time": '"1s"', "healthy_deadline": '"20s"', "progress_deadline": '"40s"'}


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


@pytest.fixture
def api(agent):
    with agent.api() as c:
        yield c


def job(name: str, *, arg: str = "3600", count: int = 2, update: dict | None = None, command: str = "/bin/sleep",
        extra_group: str = "", reschedule: str = "reschedule {\n      attempts = 0\n      unlimited = false\n    }") -> str:
    settings = "\n    ".join(f"{k} = {v}" for k, v in {**FAST, **(update or {})}.items())
    return f'''
job "{name}" {{
  update {{
    {settings}
  }}
  group "g" {{
    count = {count}
    {reschedule}
    {extra_group}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "{command}"
        args    = ["{arg}"]
      }}
      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
}}
'''


def latest(api: httpx.Client, job_id: str) -> dict | None:
    return api.get(f"/v1/job/{job_id}/deployment").json()


def status_is(api: httpx.Client, job_id: str, status: str, version: int | None = None):
    """The job's newest deployment (of `version`) once it has `status`."""
    def check():
        for d in api.get(f"/v1/job/{job_id}/deployments").json():
            if version is None or d["JobVersion"] == version:
                return d if d["Status"] == status else None
        return None
    return check


def running_versions(api: httpx.Client, job_id: str) -> list[int]:
    return sorted(a["JobVersion"] for a in allocs(api, job_id)
                  if a["ClientStatus"] == "running" and a["DesiredStatus"] == "run")


def stable_versions(api: httpx.Client, job_id: str) -> set[int]:
    return {v["Version"] for v in api.get(f"/v1/job/{job_id}/versions").json()["Versions"] if v["Stable"]}


def test_a_run_and_a_rolling_update_end_successful_and_stable(api):
    register(api, job("roll"))
    d0 = wait_for(status_is(api, "roll", "successful", 0), 60, what="the first deployment to succeed")
    assert d0["TaskGroups"]["g"]["DesiredTotal"] == 2 and d0["TaskGroups"]["g"]["HealthyAllocs"] == 2
    assert stable_versions(api, "roll") == {0}
    register(api, job("roll", arg="3601"))
    d1 = wait_for(status_is(api, "roll", "successful", 1), 90, what="the update's deployment to succeed")
    assert d1["ID"] != d0["ID"] and d1["TaskGroups"]["g"]["PlacedAllocs"] == 2
    assert running_versions(api, "roll") == [1, 1]
    assert stable_versions(api, "roll") == {0, 1}
    listed = {d["ID"] for d in api.get("/v1/deployments").json()}
    assert {d0["ID"], d1["ID"]} <= listed
    assert [d["ID"] for d in api.get("/v1/job/roll/deployments").json()] == [d1["ID"], d0["ID"]]
    assert {a["DeploymentID"] for a in api.get(f"/v1/deployment/allocations/{d1['ID']}").json()} == {d1["ID"]}


CANARY_SERVICE = '''service {
      name        = "can-svc"
      tags        = ["live"]
      canary_tags = ["canary"]
    }'''


def tags_by_alloc(api: httpx.Client) -> dict[str, list[str]]:
    return {e["ServiceMeta"]["alloc_id"]: e["ServiceTags"] for e in api.get("/v1/catalog/service/can-svc").json()}


def test_canary_waits_for_promotion_then_rolls_the_rest(api):
    register(api, job("can", update={"canary": "1"}, extra_group=CANARY_SERVICE))
    wait_for(status_is(api, "can", "successful", 0), 60, what="the first deployment")
    register(api, job("can", arg="3601", update={"canary": "1"}, extra_group=CANARY_SERVICE))
    d = wait_for(lambda: (lambda d: d if d and d["JobVersion"] == 1 and d["TaskGroups"]["g"]["HealthyAllocs"] == 1
                          else None)(latest(api, "can")), 60, what="a healthy canary")
    assert d["Status"] == "running" and d["StatusDescription"] == "Deployment is running but requires manual promotion"
    assert running_versions(api, "can") == [0, 0, 1], "the canary runs beside both old allocations"
    (canary,) = d["TaskGroups"]["g"]["PlacedCanaries"]
    tags = wait_for(lambda: (lambda t: t if len(t) == 3 else None)(tags_by_alloc(api)), 30, what="3 registrations")
    assert tags[canary] == ["canary"] and sorted(v for k, v in tags.items() if k != canary) == [["live"], ["live"]]
    r = api.put(f"/v1/deployment/promote/{d['ID']}", json={"DeploymentID": d["ID"], "All": True})
    assert r.status_code == 200, r.text
    wait_for(lambda: tags_by_alloc(api).get(canary) == ["live"], 30, what="the promoted canary's usual tags")
    wait_for(status_is(api, "can", "successful", 1), 60, what="the promoted deployment to finish")
    assert running_versions(api, "can") == [1, 1]
    r = api.put(f"/v1/deployment/promote/{d['ID']}", json={"DeploymentID": d["ID"], "All": True})
    assert r.status_code == 400 and "terminal" in r.text


def test_auto_promote(api):
    register(api, job("autop", update={"canary": "1", "auto_promote": "true"}))
    wait_for(status_is(api, "autop", "successful", 0), 60, what="the first deployment")
    register(api, job("autop", arg="3601", update={"canary": "1", "auto_promote": "true"}))
    d = wait_for(status_is(api, "autop", "successful", 1), 90, what="the canary deployment to promote itself")
    assert d["TaskGroups"]["g"]["Promoted"] is True
    assert running_versions(api, "autop") == [1, 1]


def test_a_version_whose_task_exits_fails_and_auto_reverts(api):
    register(api, job("rev", update={"auto_revert": "true"}))
    wait_for(status_is(api, "rev", "successful", 0), 60, what="the first deployment")
    register(api, job("rev", command="/bin/false", arg="x", update={"auto_revert": "true"},
                      extra_group='restart {\n      attempts = 0\n      mode = "fail"\n    }'))
    failed = wait_for(status_is(api, "rev", "failed", 1), 60, what="the broken version's deployment to fail")
    desc = failed["StatusDescription"]
    assert desc.startswith("Failed due to unhealthy allocations (allocation ") and 'task "t" failed' in desc, desc
    assert desc.endswith(" - rolling back to job version 0"), desc
    wait_for(status_is(api, "rev", "successful", 2), 90, what="the rollback (version 2) to succeed")
    versions = api.get("/v1/job/rev/versions").json()["Versions"]
    v2 = next(v for v in versions if v["Version"] == 2)
    assert v2["TaskGroups"][0]["Tasks"][0]["Config"]["command"] == "/bin/sleep", "version 2 is version 0 again"
    assert running_versions(api, "rev") == [2, 2]


NEVER_PASSES = '''service {
      name = "never-passes"
      port = "http"
      check {
        type     = "http"
        path     = "/"
        interval = "1s"
        timeout  = "1s"
      }
    }
    network {
      port "http" {}
    }'''


def test_a_check_that_never_passes_fails_at_the_healthy_deadline_and_reverts(api):
    # a deadline long enough for the check to have run (and said why) on a loaded machine
    update = {"auto_revert": "true", "healthy_deadline": '"10s"', "progress_deadline": '"0"'}
    register(api, job("chk", update=update))
    wait_for(status_is(api, "chk", "successful", 0), 60, what="the first deployment (no check)")
    register(api, job("chk", arg="3601", update=update, extra_group=NEVER_PASSES))
    failed = wait_for(status_is(api, "chk", "failed", 1), 60, what="the deployment to fail on its check")
    desc = failed["StatusDescription"]
    assert desc.startswith("Failed due to unhealthy allocations (allocation "), desc
    assert 'check "service: "never-passes" check" of service "never-passes" is critical: Get http' in desc, desc
    assert desc.endswith(" - rolling back to job version 0"), desc
    wait_for(status_is(api, "chk", "successful", 2), 90, what="the rollback to succeed")


def test_progress_deadline(api):
    """An unhealthy allocation that may be replaced does not fail the deployment by itself; no
    progress by the group's deadline does."""
    update = {"healthy_deadline": '"4s"', "progress_deadline": '"8s"'}
    register(api, job("prog", update=update))
    wait_for(status_is(api, "prog", "successful", 0), 60, what="the first deployment")
    register(api, job("prog", arg="3601", update=update, extra_group=NEVER_PASSES, reschedule=""))
    failed = wait_for(status_is(api, "prog", "failed", 1), 60, what="the deployment to miss its progress deadline")
    desc = failed["StatusDescription"]
    assert desc.startswith("Failed due to progress deadline (allocation "), desc
    assert 'of service "never-passes" is critical' in desc, desc


def test_pause_resume_fail_and_manual_health(api):
    register(api, job("man", update={"health_check": '"manual"'}))
    d = wait_for(lambda: latest(api, "man"), 30, what="the deployment")
    r = api.put(f"/v1/deployment/pause/{d['ID']}", json={"DeploymentID": d["ID"], "Pause": True})
    assert r.status_code == 200, r.text
    assert latest(api, "man")["Status"] == "paused"
    r = api.put(f"/v1/deployment/pause/{d['ID']}", json={"DeploymentID": d["ID"], "Pause": False})
    assert r.status_code == 200 and r.json()["EvalID"]
    ids = [a["ID"] for a in allocs(api, "man")]
    r = api.put(f"/v1/deployment/allocation-health/{d['ID']}",
                json={"DeploymentID": d["ID"], "HealthyAllocationIDs": ids})
    assert r.status_code == 200, r.text
    wait_for(status_is(api, "man", "successful", 0), 30, what="manual health to finish the deployment")
    r = api.put(f"/v1/deployment/fail/{d['ID']}")
    assert r.status_code == 400 and "can't fail terminal deployment" in r.text
    r = api.put(f"/v1/deployment/pause/{d['ID']}", json={"DeploymentID": "other", "Pause": True})
    assert r.status_code == 400 and "Deployment ID does not match" in r.text
    assert api.get("/v1/deployment/nope").status_code == 404


def test_revert_stable_and_scale(api):
    register(api, job("ver", count=1))
    wait_for(status_is(api, "ver", "successful", 0), 60, what="version 0")
    register(api, job("ver", count=1, arg="3601"))
    wait_for(status_is(api, "ver", "successful", 1), 60, what="version 1")
    r = api.put("/v1/job/ver/revert", json={"JobID": "ver", "JobVersion": 1})
    assert r.status_code == 400 and "can't revert to current version" in r.text
    r = api.put("/v1/job/ver/revert", json={"JobID": "ver", "JobVersion": 7})
    assert r.status_code == 404 and "no version 7" in r.text
    r = api.put("/v1/job/ver/revert", json={"JobID": "ver", "JobVersion": 0, "EnforcePriorVersion": 0})
    assert r.status_code == 400 and "Current job has version 1; enforcing version 0" in r.text
    r = api.put("/v1/job/ver/revert", json={"JobID": "ver", "JobVersion": 0})
    assert r.status_code == 200, r.text
    wait_for(status_is(api, "ver", "successful", 2), 60, what="the revert's deployment")
    r = api.put("/v1/job/ver/stable", json={"JobID": "ver", "JobVersion": 2, "Stable": False})
    assert r.status_code == 200
    assert 2 not in stable_versions(api, "ver")
    r = api.put("/v1/job/ver/scale", json={"Count": 3, "Target": {"Group": "g"}})
    assert r.status_code == 200, r.text
    wait_for(lambda: len(running_versions(api, "ver")) == 3, 60, what="three allocations")
    scale = api.get("/v1/job/ver/scale").json()
    assert scale["TaskGroups"]["g"]["Desired"] == 3 and scale["TaskGroups"]["g"]["Running"] == 3
    r = api.put("/v1/job/ver/scale", json={"Count": 1, "Target": {"Group": "nope"}})
    assert r.status_code == 400 and 'no group "nope"' in r.text


def test_scale_outside_the_scaling_bounds_and_during_a_deployment_is_refused(api):
    register(api, job("bnd", count=2, extra_group="scaling {\n      min = 1\n      max = 3\n    }",
                      update={"min_healthy_time": '"15s"'}))
    d = wait_for(lambda: latest(api, "bnd"), 30, what="the deployment")
    assert d["Status"] == "running"
    r = api.put("/v1/job/bnd/scale", json={"Count": 3, "Target": {"Group": "g"}})
    assert r.status_code == 400 and "job scaling blocked due to active deployment" in r.text
    wait_for(status_is(api, "bnd", "successful", 0), 60, what="the deployment to finish")
    r = api.put("/v1/job/bnd/scale", json={"Count": 4, "Target": {"Group": "g"}})
    assert r.status_code == 400 and "more than its scaling max 3" in r.text
    r = api.put("/v1/job/bnd/scale", json={"Count": 0, "Target": {"Group": "g"}})
    assert r.status_code == 400 and "less than its scaling min 1" in r.text
    assert api.get("/v1/job/bnd").json()["TaskGroups"][0]["Count"] == 2, "nothing changed"
