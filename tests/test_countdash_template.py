"""countdash-template.nomad: the dashboard's COUNTING_SERVICE_URL from an env template.

The template lists count-api's instances from the catalog and sets the mesh upstream's address;
when count-api moves (its allocation replaced), the dashboard's template renders again and the
dashboard restarts, still counting through the mesh. Uses countdash's static port 9002: in the
"countdash" serial group (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from yurt.jobspec import load_file

from .agent_util import AgentProcess, allocs, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

JOB = Path(__file__).resolve().parent.parent / "examples" / "countdash" / "countdash-template.nomad"
DASHBOARD = "http://127.0.0.1:9002"


def count() -> dict:
    with urllib.request.urlopen(DASHBOARD + "/api/count", timeout=5) as r:
        return json.loads(r.read())


def counting() -> dict | None:
    c = count()
    return c if c["count"] > 0 else None


def running(api, group: str) -> dict | None:
    for a in allocs(api, "countdash"):
        if a["TaskGroup"] == group and a["ClientStatus"] == "running":
            return a
    return None


def test_the_dashboard_reads_count_api_from_a_template_and_follows_it():
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    try:
        doc = load_file(str(JOB)).job.to_document()
        assert api.put("/v1/jobs", json=doc).status_code == 200
        wait_for(lambda: running(api, "api") and running(api, "dashboard"), timeout=120, what="countdash running")
        wait_for(counting, timeout=60, what="the dashboard counting through the mesh")
        dash = running(api, "dashboard")
        assert dash is not None
        full = api.get(f"/v1/allocation/{dash['ID']}").json()
        events = full["TaskStates"]["dashboard"]["Events"]
        assert [e["Type"] for e in events].index("Started") > 0
        before = full["TaskStates"]["dashboard"]["Restarts"]
        # count-api moves: its allocation is stopped and replaced
        old_api = running(api, "api")
        assert old_api is not None
        assert api.put(f"/v1/allocation/{old_api['ID']}/stop").status_code == 200

        def restarted() -> bool:
            state = api.get(f"/v1/allocation/{dash['ID']}").json()["TaskStates"]["dashboard"]
            return state["Restarts"] > before and any(
                e["Type"] == "Restart Signaled" and "Template" in e["DisplayMessage"] for e in state["Events"])
        wait_for(restarted, timeout=120, what="the dashboard restarted by its template")
        new_api = wait_for(lambda: (a := running(api, "api")) and a["ID"] != old_api["ID"] and a, timeout=120,
                           what="count-api replaced")
        assert new_api
        wait_for(counting, timeout=90, what="the dashboard counting again")
    finally:
        api.delete("/v1/job/countdash", params={"purge": "true"})
        api.close()
        agent.stop()
