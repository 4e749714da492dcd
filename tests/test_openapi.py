"""An API that describes itself: every write route declares its JSON request body in
/openapi.json, the document is valid OpenAPI, and a schema-driven fuzzer (schemathesis) run
against a real agent gets no 5xx from any operation."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from yurt.api.app import create_app

from .agent_util import AgentProcess

WRITES = {"PUT", "POST", "PATCH", "DELETE"}

# Write routes that take no body, each with its reason. (DELETE takes none anywhere: Nomad's and
# Consul's deletes say what they delete in the path and the query.)
BODYLESS = {
    ("PUT", "/v1/system/gc"): "Nomad's forced GC takes nothing",
    ("POST", "/v1/system/gc"): "Nomad's forced GC takes nothing",
    ("PUT", "/v1/job/{job_id}/periodic/force"): "Nomad's periodic force takes nothing",
    ("POST", "/v1/job/{job_id}/periodic/force"): "Nomad's periodic force takes nothing",
    ("PUT", "/v1/allocation/{alloc_id}/stop"): "Nomad's alloc stop: the allocation is in the path",
    ("POST", "/v1/allocation/{alloc_id}/stop"): "Nomad's alloc stop: the allocation is in the path",
    ("PUT", "/v1/node/{node_id}/purge"): "the node is in the path",
    ("POST", "/v1/node/{node_id}/purge"): "the node is in the path",
    ("PUT", "/v1/agent/servers"): "the servers are ?address= query parameters, as Nomad's",
    ("POST", "/v1/agent/servers"): "the servers are ?address= query parameters, as Nomad's",
    ("PUT", "/v1/internal/node/{node_id}/heartbeat"): "a heartbeat is the request itself",
    ("PUT", "/v1/internal/alloc/{alloc_id}/identity"): "the allocation in the path, the node in ?node=",
    ("PUT", "/v1/agent/service/deregister/{service_id}"): "Consul's: the service is in the path",
    ("PUT", "/v1/agent/check/deregister/{check_id}"): "Consul's: the check is in the path",
    ("PUT", "/v1/agent/service/maintenance/{service_id}"): "Consul's: ?enable= and ?reason=",
    ("PUT", "/v1/client/gc"): "Nomad's client GC: the node in ?node_id=",
    ("PUT", "/v1/client/allocation/{alloc_id}/gc"): "the allocation is in the path",
    ("PUT", "/v1/session/destroy/{session_id}"): "Consul's: the session is in the path",
    ("PUT", "/v1/session/renew/{session_id}"): "Consul's: the session is in the path",
}


def _app():
    agent = SimpleNamespace(config=SimpleNamespace(acl_enabled=False, http_max_request_bytes=10 * 1024 * 1024))
    return create_app(agent)


def _openapi_path(path: str) -> str:
    """A route's path as the document names it ({check_id:path} is {check_id} there)."""
    import re
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _flat(routes):
    """The app's routes, the included routers' routes in place of the routers."""
    for route in routes:
        sub = getattr(route, "original_router", None)
        if sub is not None:
            yield from _flat(sub.routes)
        else:
            yield route


def test_every_write_route_declares_its_body():
    app = _app()
    doc = app.openapi()
    missing = []
    writes = 0
    routed = set()
    for route in _flat(app.routes):
        if not getattr(route, "include_in_schema", False):
            continue
        for method in sorted(set(getattr(route, "methods", ())) & WRITES):
            path = _openapi_path(route.path)
            routed.add((method, path))
            op = doc["paths"][path][method.lower()]
            if method == "DELETE" or (method, path) in BODYLESS:
                continue
            writes += 1
            # JSON, or raw bytes where the route takes them (Consul's KV values)
            content = op.get("requestBody", {}).get("content", {})
            schema = (content.get("application/json") or content.get("application/octet-stream") or {}).get("schema")
            if not schema:
                missing.append(f"{method} {path}")
    assert not missing, f"write routes with no request body in /openapi.json: {missing}"
    assert writes >= 27
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m.upper() in WRITES}
    assert routed == documented


def test_the_bodyless_list_names_real_routes():
    doc = _app().openapi()
    stale = [f"{m} {p}" for m, p in BODYLESS if m.lower() not in doc["paths"].get(p, {})]
    assert not stale, f"BODYLESS names routes that do not exist: {stale}"


def test_the_document_is_valid_openapi_with_every_reference_resolved():
    from openapi_spec_validator import validate
    doc = _app().openapi()
    validate(doc)
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    import re
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', text))
    assert refs <= set(schemas), f"unresolved references: {sorted(refs - set(schemas))}"
    register = doc["paths"]["/v1/jobs"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert register == {"$ref": "#/components/schemas/JobRegisterRequest"}
    assert schemas["JobRegisterRequest"]["properties"]["Job"] == {"$ref": "#/components/schemas/Job"}
    assert "TaskGroups" in schemas["Job"]["properties"]


def test_no_two_models_of_one_name():
    from yurt.api import openapi
    _app()
    assert openapi.clashes() == [], "two different request-body models share these names: rename one"


def test_two_models_of_one_name_are_noted(monkeypatch):
    from pydantic import BaseModel

    from yurt.api import openapi
    monkeypatch.setattr(openapi, "_DEFS", {})
    monkeypatch.setattr(openapi, "_CLASHES", [])

    class Thing(BaseModel):
        a: int

    first = openapi.body(Thing)
    assert first["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Thing"}
    assert openapi.body(Thing) == first   # the same one again: fine
    Same = Thing

    class Thing(BaseModel):  # type: ignore[no-redef]  # another model of that name
        b: str

    assert Same is not Thing
    assert openapi.clashes() == []
    openapi.body(Thing)
    assert openapi.clashes() == ["Thing"]
    assert openapi._DEFS["Thing"]["properties"] == {"a": {"title": "A", "type": "integer"}}   # the first kept


# -- the fuzzer ---------------------------------------------------------------------------------

# Operations the fuzzer does not call, each with its reason.
SKIP = {
    ("GET", "/v1/event/stream"): "streams events until the client leaves",
    ("GET", "/v1/agent/monitor"): "streams the agent's log until the client leaves",
    ("GET", "/v1/client/fs/stream/{alloc_id}"): "with ?follow=true streams until the client leaves",
    ("GET", "/v1/client/fs/logs/{alloc_id}"): "with ?follow=true streams until the client leaves",
    # the ACL routes answer 400 on an agent without ACLs (the only kind that serves /openapi.json);
    # on one with ACLs, bootstrap would take the agent's management token away from the test
    ("PUT", "/v1/acl/bootstrap"): "would end the agent's anonymous access (with ACLs on)",
    ("POST", "/v1/acl/bootstrap"): "would end the agent's anonymous access (with ACLs on)",
    # purging the agent's own node would stop its client from running anything (the generated
    # node IDs are random: a guard, as the agent's node ID is one list away)
    ("PUT", "/v1/node/{node_id}/purge"): "purging the agent's own node leaves its client homeless",
    ("POST", "/v1/node/{node_id}/purge"): "purging the agent's own node leaves its client homeless",
}
EXAMPLES = int(os.environ.get("YURT_FUZZ_EXAMPLES", "12"))   # per operation and mode (positive, negative)
REAL_DRIVERS = ("raw_exec", "exec", "docker", "podman", "java", "qemu")


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


def _runs_something(body) -> bool:
    """A generated job whose task would run a real driver: never registered (the fuzzer does not
    run random programs on the test host)."""
    if not isinstance(body, (dict, list)):
        return False
    text = json.dumps(body, default=str)
    return any(f'"{d}"' in text for d in REAL_DRIVERS)


def test_what_the_fuzzer_found_is_a_400_naming_the_rule(agent):
    """The 5xx the fuzzer found first, each now the caller's error with what to fix."""
    with agent.api() as api:
        # a service name that cannot be in a SPIFFE ID (non-ASCII), for a leaf certificate
        r = api.get("/v1/agent/connect/ca/leaf/%C3%A9t%C3%A9")
        assert r.status_code == 400 and 'service name "été"' in r.text and "SPIFFE" in r.text, r.text
        assert "X-Consul-Index" in r.headers
        assert api.get("/v1/agent/connect/ca/leaf/web_1.v2-x").status_code == 200
        # bodies of the wrong shape
        for path in ("/v1/job/x/stable", "/v1/job/x/revert", "/v1/job/x/scale"):
            r = api.put(path, json=7)
            assert (r.status_code, r.text) == (400, "the body must be a JSON object, not int: 7"), path
        r = api.put("/v1/connect/ca/configuration", json={"Config": [1]})
        assert r.status_code == 400 and "Config must be an object" in r.text
        r = api.post("/v1/connect/intentions", json=[])
        assert r.status_code == 400 and "must be a JSON object" in r.text
        r = api.put("/v1/agent/service/register", json={"Name": "x", "Checks": 5})
        assert r.status_code == 400 and "Checks must be a list" in r.text
        r = api.put("/v1/agent/service/register", json={"Name": "x", "Check": {"HTTP": 5}})
        assert r.status_code == 400 and 'check "service:x"' in r.text
        r = api.put("/v1/catalog/deregister", json={"Node": "n", "ServiceID": ["a"]})
        assert r.status_code == 400 and "ServiceID must be a string" in r.text
        r = api.put("/v1/connect/intentions/exact", params={"source": "a", "destination": "b"},
                    json={"Permissions": ["x"]})
        assert r.status_code == 400 and "Permissions must be a list of objects" in r.text
        # an empty duration string in a job (parse_duration read its first character)
        r = api.put("/v1/job/x/plan", json={"Job": {"ID": "x", "Name": "x", "TaskGroups": [
            {"Name": "g", "RestartPolicy": {"Delay": ""}}]}})
        assert r.status_code == 400 and 'invalid duration ""' in r.text, r.text


def test_the_fuzzer_finds_no_server_error(agent):
    """schemathesis generates cases from /openapi.json for every operation (but SKIP), valid ones
    and invalid ones, EXAMPLES of each, derandomized (the same cases every run), and calls the
    agent with each: no answer may be a 5xx. Every failing operation is reported together, with
    the agent's log (where the traceback is) named."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, assume, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(agent.url + "/openapi.json")
    failures: list[str] = []
    calls = 0
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()
        key = (op.method.upper(), op.path)
        if key in SKIP:
            continue
        ran += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def call(case) -> None:
                nonlocal calls
                assume(not _runs_something(getattr(case, "body", None)))
                calls += 1
                response = case.call(base_url=agent.url, timeout=30)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                call()
            except Unsatisfiable:   # nothing to make invalid (no body, no parameters of a type)
                if mode is GenerationMode.POSITIVE:
                    failures.append(f"{key[0]} {key[1]}: no case could be generated")
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - every operation's failure is reported together
                failures.append(f"{key[0]} {key[1]} ({mode.value}): {str(e)[:1500]}")
    assert ran > 80 and calls > 500, (ran, calls)
    assert not failures, "\n\n".join(failures) + f"\n\nthe agent's log: {agent.log_path}"
    assert agent.proc is not None and agent.proc.poll() is None   # the agent lived through it
