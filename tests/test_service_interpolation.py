"""Group and task services as Nomad registers them: `${NOMAD_*}`, `${node.*}`, `${attr.*}` and `${meta.*}`
interpolated in the name, tags, meta and the checks' paths and headers; `address`,
`tagged_addresses` and `enable_tag_override` registered as given. A Connect service's name,
its mesh identity, is refused when interpolated."""

from __future__ import annotations

import pytest

from yurt.jobspec import JobspecError, load

from .agent_util import AgentProcess, register, wait_for

JOB = '''
job "interp" {
  meta {
    team = "blue"
  }
  group "web" {
    network {
      port "http" {}
    }
    service {
      name     = "${NOMAD_JOB_NAME}-${NOMAD_GROUP_NAME}"
      port     = "http"
      tags     = ["alloc-${NOMAD_ALLOC_INDEX}", "dc-${node.datacenter}", "team-${NOMAD_META_team}"]
      meta {
        os   = "${attr.kernel.name}"
        port = "${NOMAD_PORT_http}"
      }
      address             = "10.9.8.7"
      enable_tag_override = true
      tagged_addresses {
        wan  = "198.18.0.1"
        lan6 = "10.1.1.1:9000"
      }
      check {
        name     = "health of ${NOMAD_JOB_NAME}"
        type     = "http"
        path     = "/${NOMAD_JOB_NAME}/health.txt"
        header {
          X-Alloc = ["${NOMAD_ALLOC_ID}"]
        }
        interval = "1s"
        timeout  = "1s"
      }
    }
    task "server" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "mkdir -p www/interp && echo ok > www/interp/health.txt && exec python3 -m http.server --bind 127.0.0.1 --directory www $NOMAD_PORT_http"]
      }
      resources {
        memory = 64
      }
      meta {
        role = "front"
      }
      service {
        name = "${NOMAD_TASK_NAME}-svc"
        port = "http"
        tags = ["task-${NOMAD_META_role}", "job-${NOMAD_JOB_NAME}"]
        check {
          type     = "tcp"
          interval = "1s"
          timeout  = "1s"
        }
      }
    }
  }
}
'''


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


def test_a_group_service_is_registered_interpolated(agent):
    with agent.api() as api:
        register(api, JOB)

        def entry():
            rows = api.get("/v1/health/service/interp-web", params={"passing": "true"}).json()
            return rows[0] if rows else None
        # the check passes only if its path was interpolated: /interp/health.txt exists, the literal does not
        e = wait_for(entry, timeout=60, what="interp-web registered and its interpolated check passing")
        svc = e["Service"]
        alloc = api.get(f"/v1/allocation/{api.get('/v1/job/interp/allocations').json()[0]['ID']}").json()
        node = api.get(f"/v1/node/{alloc['NodeID']}").json()
        assert svc["Tags"] == ["alloc-0", f"dc-{node['Datacenter']}", "team-blue"]
        port = next(p["Value"] for p in alloc["AllocatedResources"]["Shared"]["Ports"] if p["Label"] == "http")
        assert svc["Meta"]["os"] == node["Attributes"]["kernel.name"] and svc["Meta"]["port"] == str(port)
        assert svc["Address"] == "10.9.8.7" and svc["Port"] == port
        assert svc["EnableTagOverride"] is True
        assert svc["TaggedAddresses"] == {"wan": {"Address": "198.18.0.1", "Port": port},
                                          "lan6": {"Address": "10.1.1.1", "Port": 9000}}
        (check,) = [c for c in e["Checks"] if c["ServiceID"] == svc["ID"]]
        assert check["Name"] == "health of interp" and check["Status"] == "passing"
        # the task's own service: registered too, interpolated with the task's name and meta
        (t,) = wait_for(lambda: api.get("/v1/health/service/server-svc", params={"passing": "true"}).json(),
                        timeout=60, what="the task service registered and passing")
        assert t["Service"]["Tags"] == ["task-front", "job-interp"] and t["Service"]["Port"] == port
        assert f"-{alloc['ID']}-server-server-svc-" in t["Service"]["ID"]
        api.delete("/v1/job/interp", params={"purge": "true"})


def test_an_interpolated_connect_service_name_is_refused():
    text = '''
job "j" {
  group "g" {
    network {
      mode = "bridge"
      port "http" {}
    }
    service {
      name = "${NOMAD_JOB_NAME}-api"
      port = "http"
      connect {
        sidecar_service {}
      }
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
    }
  }
}
'''
    with pytest.raises(JobspecError) as err:
        load(text, "j.nomad")
    assert "is its identity in the mesh" in str(err.value) and "interpolate its tags or meta instead" in str(err.value)
