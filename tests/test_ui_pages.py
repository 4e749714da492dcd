"""The web UI's pages over HTTP, on one real agent with ACLs on: who may see them (token by
?token=, the login form's cookie, or the API's headers), the plain "not found" page, HTML
escaping of every user-controlled string, placement failures, and the blocking query behind
the live refresh. The browser tests (tests/test_ui_browser.py) drive the same pages in chromium.
"""

from __future__ import annotations

import re
import threading

import pytest

from yurt.api.ui import draw_graph, service_graph
from yurt.structs import ServiceRegistration

from .agent_util import AgentProcess, register

EVIL = '<script>alert("x")</script>'
JOB = '''job "xss<b>job" {
  name = "<img src=x onerror=alert(1)>"
  meta {
    owner = "<script>alert(\\"x\\")</script>"
  }
  group "g&<i>" {
    constraint {
      attribute = "${attr.kernel.name}"
      value     = "plan9"
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["300"]
      }
    }
  }
}
'''
JOB_ID = "xss<b>job"
READER = 'namespace "default" {\n  policy = "read"\n}\nnode {\n  policy = "read"\n}\n'


@pytest.fixture(scope="module")
def agent():
    with AgentProcess(extra=["-acl-enabled"]) as a:
        yield a


@pytest.fixture(scope="module")
def root(agent) -> str:
    m = re.search(r"ACL Token: ([0-9a-f-]{36})", agent.log())
    assert m, agent.log()[:2000]
    return m.group(1)


@pytest.fixture(scope="module")
def api(agent, root):
    with agent.api() as c:
        c.headers["X-Nomad-Token"] = root
        register(c, JOB)
        yield c


@pytest.fixture(scope="module")
def browser(agent):
    """A client that is not the API's: no token header, cookies kept."""
    with agent.api() as c:
        yield c


def test_pages_need_a_token_with_read_rights(agent, api, browser, root):
    browser.cookies.clear()
    r = browser.get("/ui/jobs")
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
    assert "Permission denied" in r.text and 'href="/ui/login?next=%2Fui%2Fjobs"' in r.text
    assert JOB_ID not in r.text and "xss" not in r.text
    # the assets are served to anyone: the login page needs them
    assert browser.get("/ui/static/ui.css").status_code == 200
    assert browser.get("/ui/static/ui.js").status_code == 200
    assert browser.get("/ui/static/../ui.py").status_code == 404
    # a wrong token: refused, and not kept
    r = browser.get("/ui/login", params={"token": "00000000-0000-0000-0000-000000000000", "next": "/ui/nodes"})
    assert r.status_code == 403 and "ACL token not found" in r.text and "yurt-ui-token" not in r.headers.get(
        "set-cookie", "")
    r = browser.get("/ui/jobs", params={"token": "00000000-0000-0000-0000-000000000000"})
    assert r.status_code == 403 and "ACL token not found" in r.text
    # the login form: the token is kept in a cookie, then every page answers
    r = browser.get("/ui/login", params={"token": root, "next": "/ui/nodes"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/nodes"
    assert "yurt-ui-token=" in r.headers["set-cookie"] and "samesite=strict" in r.headers["set-cookie"].lower()
    for path in ("/ui/jobs", "/ui/nodes", "/ui/services", f"/ui/job/{JOB_ID}"):
        assert browser.get(path).status_code == 200, path
    # logging out forgets it
    assert browser.get("/ui/logout").status_code == 303
    assert browser.get("/ui/jobs").status_code == 403
    # ?token= works once and is kept
    r = browser.get("/ui/jobs", params={"token": root})
    assert r.status_code == 200 and JOB_ID.replace("<", "&lt;").replace(">", "&gt;") in r.text
    assert browser.get("/ui/nodes").status_code == 200
    browser.cookies.clear()
    # the API's header works too
    assert browser.get("/ui/nodes", headers={"X-Nomad-Token": root}).status_code == 200
    # the login page sends nobody off-site
    r = browser.get("/ui/login", params={"token": root, "next": "https://example.com/"})
    assert r.headers["location"] == "/ui/jobs"
    browser.cookies.clear()


def test_a_read_only_token_sees_jobs_and_nodes_but_not_the_services(api, browser, root):
    assert api.put("/v1/acl/policy/ui-reader", json={"Name": "ui-reader", "Rules": READER}).status_code == 200
    secret = api.put("/v1/acl/token", json={"Name": "ui", "Policies": ["ui-reader"]}).json()["SecretID"]
    h = {"X-Nomad-Token": secret}
    assert browser.get("/ui/jobs", headers=h).status_code == 200
    assert browser.get(f"/ui/job/{JOB_ID}", headers=h).status_code == 200
    assert browser.get("/ui/nodes", headers=h).status_code == 200
    r = browser.get("/ui/services", headers=h)
    assert r.status_code == 403 and "this page needs service &#34;*&#34; read" in r.text
    # a token for another namespace only: the jobs page lists none of default's, a job there is refused
    other = 'namespace "other" {\n  policy = "read"\n}\n'
    assert api.put("/v1/acl/policy/ui-other", json={"Name": "ui-other", "Rules": other}).status_code == 200
    secret = api.put("/v1/acl/token", json={"Name": "other", "Policies": ["ui-other"]}).json()["SecretID"]
    h = {"X-Nomad-Token": secret}
    r = browser.get("/ui/jobs", headers=h)
    assert r.status_code == 200 and "xss" not in r.text and "No jobs are registered" in r.text
    r = browser.get(f"/ui/job/{JOB_ID}", params={"namespace": "default"}, headers=h)
    assert r.status_code == 403 and "this page needs namespace &#34;default&#34; capability read-job" in r.text
    assert 'href="/ui/login?next=%2Fui%2Fjob%2Fxss%3Cb%3Ejob%3Fnamespace%3Ddefault"' in r.text
    # which leads back to the page once logged in with a token that may
    r = browser.get("/ui/login", params={"token": root, "next": f"/ui/job/{JOB_ID}?namespace=default"},
                    follow_redirects=True)
    assert r.status_code == 200 and '<h1 id="job-title">xss&lt;b&gt;job' in r.text
    browser.cookies.clear()


def test_unknown_job_allocation_and_page_show_not_found(api, browser, root):
    for path, what in ((f"/ui/job/nope?token={root}", 'There is no job &#34;nope&#34; in namespace &#34;default&#34;.'),
                       (f"/ui/allocation/nope?token={root}", 'There is no allocation &#34;nope&#34;.'),
                       (f"/ui/no/such/page?token={root}", "There is no page at /ui/no/such/page.")):
        r = browser.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in r.text and what in r.text
        assert '<a href="/ui/jobs" id="back">' in r.text
        assert "Traceback" not in r.text
    # the live refresh of a job that went away gets the same answer
    assert browser.get("/ui/job/nope", params={"fragment": "1", "index": "1", "token": root}).status_code == 404
    browser.cookies.clear()


def test_user_strings_are_escaped_everywhere(api, browser, root):
    h = {"X-Nomad-Token": root}
    for path in ("/ui/jobs", f"/ui/job/{JOB_ID}"):
        r = browser.get(path, headers=h)
        assert r.status_code == 200, path
        for raw in (EVIL, "<img src=x", "xss<b>job", "g&<i>"):
            assert raw not in r.text, (path, raw)
        assert "xss&lt;b&gt;job" in r.text
    page = browser.get(f"/ui/job/{JOB_ID}", headers=h).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page          # meta.owner
    assert "&lt;img src=x onerror=alert(1)&gt;" in page                      # the job's name
    assert 'href="/ui/job/xss%3Cb%3Ejob?namespace=default"' in browser.get("/ui/jobs", headers=h).text
    # the evaluation's placement failure, as `yurt job status` shows it
    assert "g&amp;&lt;i&gt;</b>: 1 not placed" in page
    assert "constraint <code>${attr.kernel.name} = plan9</code> filtered 1" in page


def test_service_graph_is_escaped_and_coloured_by_verdict():
    def svc(name: str, **kw) -> ServiceRegistration:
        return ServiceRegistration.model_validate({"ID": name + "-1", "Service": name, "Node": "n1", **kw})
    evil = "web<script>"
    rows = [svc(evil), svc("db"),
            svc(evil + "-sidecar-proxy", Kind="connect-proxy",
                Proxy={"DestinationServiceName": evil, "Upstreams": [{"DestinationName": "db", "LocalBindPort": 1},
                                                                     {"DestinationName": "cache"}]})]
    graph = service_graph(rows, lambda s: "passing" if s.service == "db" else "critical",
                          lambda src, dst: (dst != "db", f"{src} => {dst}"))
    assert [s["name"] for s in graph["services"]] == ["cache", "db", evil]
    svg = draw_graph(graph)
    assert "<script>" not in svg and "web&lt;script&gt;" in svg
    assert re.search(r'<g class="edge denied" data-source="web&lt;script&gt;" data-destination="db" '
                     r'data-verdict="denied">.*?stroke="#d23c3c"', svg)
    assert re.search(r'<g class="edge allowed" data-source="web&lt;script&gt;" data-destination="cache"'
                     r'.*?stroke="#2e9e52"', svg)
    assert '<g class="service passing" data-service="db">' in svg and "1/1 instances passing" in svg
    assert '<g class="service none" data-service="cache">' in svg   # an upstream nobody registered yet


def test_live_refresh_is_a_blocking_query_on_what_the_page_shows(api, browser, root):
    h = {"X-Nomad-Token": root}
    first = browser.get("/ui/jobs", params={"fragment": "1", "index": "0"}, headers=h)
    assert first.status_code == 200 and "<!doctype" not in first.text   # the changing part only
    index = int(first.headers["x-yurt-index"])
    answer: dict = {}

    def ask() -> None:
        answer["r"] = browser.get("/ui/jobs", params={"fragment": "1", "index": str(index), "wait": "60s"},
                                  headers=h, timeout=90)

    t = threading.Thread(target=ask)
    t.start()
    register(api, JOB.replace('job "xss<b>job"', 'job "later"'))
    t.join(90)
    r = answer["r"]
    assert r.status_code == 200 and int(r.headers["x-yurt-index"]) > index
    assert 'data-job="later"' in r.text
