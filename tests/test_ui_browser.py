"""The web UI in a real headless browser (Debian's chromium through chromium-driver), against
countdash running on a real agent with the mesh: what a person sees on each page, live.

Screenshots go to $YURT_TEST_ARTIFACTS (default /tmp/yurt-ui-shots); with YURT_UPDATE_SCREENSHOTS=1
they are also written to docs/screenshots/, which the README shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from yurt.jobspec import load_file

from .agent_util import AgentProcess, allocs, register, wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking (countdash in the mesh) needs root"),
    pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                       reason="needs Debian's chromium and chromium-driver (make deps installs them)"),
]

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "countdash" / "countdash.nomad"
DASHBOARD = "http://127.0.0.1:9002"
ARTIFACTS = Path(os.environ.get("YURT_TEST_ARTIFACTS") or "/tmp/yurt-ui-shots")
README_SHOTS = ROOT / "docs" / "screenshots"
UNPLACEABLE = '''job "ui-live" {
  type = "batch"
  group "g" {
    constraint {
      attribute = "${attr.kernel.name}"
      value     = "plan9"
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


def count() -> int:
    with urllib.request.urlopen(DASHBOARD + "/api/count", timeout=5) as r:
        return int(json.loads(r.read())["count"])


@pytest.fixture(scope="module")
def cluster():
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    try:   # the agent is stopped (its allocations with it) however the set-up or the tests end
        assert api.put("/v1/jobs", json=load_file(str(JOB)).job.to_document()).status_code == 200
        wait_for(lambda: len([a for a in allocs(api, "countdash") if a["ClientStatus"] == "running"]) == 2,
                 timeout=120, what="countdash running")
        wait_for(lambda: count() > 0, timeout=60, what="the dashboard counting through the mesh")
        yield agent, api
        api.delete("/v1/job/countdash", params={"purge": "true"})
    finally:
        api.close()
        agent.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    """A screenshot of the whole page: a test artifact, and the README's with YURT_UPDATE_SCREENSHOTS=1."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 2400)")
    driver.set_window_size(1400, max(700, int(height) + 160))   # the window's own frame is not the page
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    if os.environ.get("YURT_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(README_SHOTS / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def console_errors(driver) -> list[str]:
    """The page's script errors and refused loads since the last look (a Content-Security-Policy
    violation shows here), but for the network changes of this host (see `settled`)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "ERR_NETWORK_CHANGED" not in e["message"]]


def settled(driver) -> None:
    """Chromium drops a page being loaded when the machine's network changes (allocations' veths
    and bridges come and go on this host, all the more with other tests running beside:
    ERR_NETWORK_CHANGED, "Your connection was interrupted"); such a load is made again. The
    pages' own script retries its blocking queries and log streams the same way."""
    def loaded() -> bool:
        if driver.execute_script("return !!(document.body && (document.body.classList.contains('neterror')"
                                 " || document.getElementById('main-frame-error')))"):
            driver.refresh()
            return False
        return True
    wait_for(loaded, 60, what="the page loaded (chromium kept dropping it as the network changed)")


def load(driver, url: str) -> None:
    driver.get(url)
    settled(driver)


def fresh(read):
    """`read()`, again if it touched an element that went away meanwhile: a live page swaps its
    changing part in place at any moment, so an element found just before a swap is gone by the
    time it is read."""
    from selenium.common.exceptions import StaleElementReferenceException
    for _ in range(20):
        try:
            return read()
        except StaleElementReferenceException:
            continue
    raise AssertionError("the page kept being replaced while it was read")


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By
    return fresh(lambda: " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css)))


def tab(driver, task: str, kind: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f'#log-tabs .log-tab[data-task="{task}"][data-type="{kind}"]')


def running_alloc(api, group: str) -> str:
    (a,) = [a for a in allocs(api, "countdash") if a["TaskGroup"] == group and a["ClientStatus"] == "running"]
    return a["ID"]


def test_jobs_page_shows_countdash_and_its_groups_live(cluster, browser):
    agent, api = cluster
    load(browser, agent.url + "/ui")
    assert browser.current_url.endswith("/ui/jobs")
    assert browser.title == "Jobs · Yurt"
    row = wait_for(lambda: text_of(browser, 'tr.job[data-job="countdash"]'), what="the countdash row")
    assert "running" in row and "service" in row
    assert "api: 1 running" in row and "dashboard: 1 running" in row
    assert console_errors(browser) == []
    shot(browser, "jobs")
    # a job registered while the page is open appears in it, without a reload
    browser.execute_script("window.__sameDocument = 7")
    register(api, UNPLACEABLE)
    try:
        row = wait_for(lambda: (lambda r: r if "g: 1 queued" in r else None)(
            text_of(browser, 'tr.job[data-job="ui-live"]')), timeout=30, what="the new job's row, 1 queued")
        assert "batch" in row and "pending" in row
        assert browser.execute_script("return window.__sameDocument") == 7
    finally:
        api.delete("/v1/job/ui-live", params={"purge": "true"})
    wait_for(lambda: not text_of(browser, 'tr.job[data-job="ui-live"]'), timeout=30, what="the purged job's row gone")


def test_job_page_shows_allocations_evaluations_deployments_versions(cluster, browser):
    agent, api = cluster
    from selenium.webdriver.common.by import By
    load(browser, agent.url + "/ui/jobs")
    fresh(lambda: browser.find_element(By.LINK_TEXT, "countdash").click())
    settled(browser)
    wait_for(lambda: "countdash" in text_of(browser, "#job-title"), what="the job page")
    rows = fresh(lambda: [(r.get_attribute("data-group"), r.text)
                          for r in browser.find_elements(By.CSS_SELECTOR, "#allocations tr.alloc")])
    assert sorted(group for group, _ in rows) == ["api", "dashboard"]
    assert all("running" in text for _, text in rows)
    assert running_alloc(api, "api")[:8] in text_of(browser, "#allocations")
    assert "job-register" in text_of(browser, "#evaluations") and "complete" in text_of(browser, "#evaluations")
    assert "api: count 1" in text_of(browser, "#versions") and "dashboard: count 1" in text_of(browser, "#versions")
    assert text_of(browser, "#deployments")   # the deployment of version 0, with its groups
    shot(browser, "job")


def test_allocation_page_follows_the_live_count_in_stdout(cluster, browser):
    agent, api = cluster
    from selenium.webdriver.common.by import By
    alloc_id = running_alloc(api, "api")
    load(browser, agent.url + f"/ui/allocation/{alloc_id}")
    assert alloc_id[:8] in text_of(browser, "#alloc-title")
    task = text_of(browser, 'section.task[data-task="web"]')
    assert "running" in task and "Started" in task and "exec" in task
    assert text_of(browser, "#alloc-address")   # the allocation's address in its bridge network
    pre = browser.find_element(By.ID, "log")
    assert "on" in tab(browser, "web", "stdout").get_attribute("class")   # the main task's stdout first
    wait_for(lambda: "count " in pre.text, what="count-api's stdout in the page")
    # a count served after the page was loaded shows up in the same page: the log is followed
    later = max(count() for _ in range(3))
    wait_for(lambda: re.search(rf"\bcount {later} served\b", pre.text), timeout=30,
             what=f"'count {later} served' appearing in the followed stdout")
    # the sidecar's stdout: its access log, one JSON line per connection with its verdict
    tab(browser, "connect-proxy-count-api", "stdout").click()
    wait_for(lambda: '"verdict":"allowed"' in pre.text and "served" not in pre.text, timeout=30,
             what="the sidecar's access log in place of count-api's stdout")
    tab(browser, "web", "stdout").click()
    wait_for(lambda: "served" in pre.text and "verdict" not in pre.text, timeout=30, what="count-api's stdout again")
    shot(browser, "allocation")


def test_nodes_page_shows_drivers_resources_and_what_runs_there(cluster, browser):
    agent, api = cluster
    load(browser, agent.url + "/ui/nodes")
    (node,) = api.get("/v1/nodes").json()
    section = wait_for(lambda: text_of(browser, f'section.node[data-node="{node["ID"]}"]'), what="the node")
    assert node["Name"] in section and "ready" in section
    assert "exec" in text_of(browser, "dd.drivers") and "raw_exec" in text_of(browser, "dd.drivers")
    assert "MHz" in section and "MiB" in section
    assert running_alloc(api, "api")[:8] in section and running_alloc(api, "dashboard")[:8] in section
    assert section.count("countdash") >= 2
    shot(browser, "nodes")


def test_services_graph_turns_red_after_a_deny_intention_without_reload(cluster, browser):
    agent, api = cluster
    from selenium.webdriver.common.by import By
    load(browser, agent.url + "/ui/services")
    edge = 'g.edge[data-source="count-dashboard"][data-destination="count-api"]'
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, edge + '[data-verdict="allowed"]'),
             what="a green count-dashboard -> count-api edge")
    for name in ("count-api", "count-dashboard"):
        box = text_of(browser, f'g.service[data-service="{name}"]')
        assert "1/1 instances passing" in box, box
    browser.execute_script("window.__sameDocument = 42")   # gone if the page were reloaded
    r = api.put("/v1/connect/intentions/exact", params={"source": "count-dashboard", "destination": "count-api"},
                json={"Action": "deny"})
    assert r.status_code == 200, r.text
    try:
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, edge + '[data-verdict="denied"]'), timeout=30,
                 what="the edge turning red in the open page")
        assert browser.execute_script("return window.__sameDocument") == 42
        stroke = fresh(lambda: browser.find_element(By.CSS_SELECTOR, edge + " line").get_attribute("stroke"))
        assert stroke == "#d23c3c"
        assert "denied" in text_of(browser, "#edges") and "deny" in text_of(browser, "#intentions")
        assert console_errors(browser) == []
        shot(browser, "services")
    finally:
        api.delete("/v1/connect/intentions/exact", params={"source": "count-dashboard", "destination": "count-api"})
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, edge + '[data-verdict="allowed"]'), timeout=30,
             what="the edge green again once the intention is deleted")


def test_unknown_job_and_allocation_show_a_not_found_page(cluster, browser):
    agent, api = cluster
    from selenium.webdriver.common.by import By
    for path, what in (("/ui/job/no-such-job", 'no job "no-such-job"'),
                       ("/ui/allocation/00000000-0000-0000-0000-000000000000", "no allocation")):
        assert api.get(path).status_code == 404
        load(browser, agent.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"
        assert what in browser.find_element(By.ID, "message").text
        browser.find_element(By.ID, "back").click()
        wait_for(lambda: browser.current_url.endswith("/ui/jobs"), what="back on the jobs page")
