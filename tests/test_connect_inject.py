"""The sidecar task and port the server injects for `connect { sidecar_service {} }`."""

from __future__ import annotations

from yurt.jobspec import load, load_file
from yurt.server.connect_inject import inject_sidecars
from yurt.structs.duration import SECOND

from .conftest import SEED


def test_seed_gets_one_proxy_task_and_port_per_connect_service():
    job = inject_sidecars(load_file(str(SEED)).job)
    api, dash = job.task_groups
    (proxy,) = [t for t in api.tasks if t.kind]
    assert proxy.name == "connect-proxy-count-api" and proxy.kind == "connect-proxy:count-api"
    assert proxy.lifecycle.hook == "prestart" and proxy.lifecycle.sidecar is True
    assert proxy.driver == "connect-proxy"
    assert proxy.config["local_port"] == 9001
    assert proxy.config["listen"] == "0.0.0.0:${NOMAD_PORT_connect_proxy_count_api}"
    assert proxy.resources.cpu < 250 and proxy.resources.memory_mb < 128  # lighter than Envoy's defaults
    assert proxy.config["metrics_addr"] == "0.0.0.0:${NOMAD_PORT_connect_proxy_count_api_metrics}"
    assert [(p.label, p.to) for p in api.networks[0].dynamic_ports] == [("connect-proxy-count-api", -1),
                                                                        ("connect-proxy-count-api-metrics", -1)]
    (dproxy,) = [t for t in dash.tasks if t.kind]
    assert dproxy.config["upstreams"] == [{"destination_name": "count-api", "local_bind_address": "127.0.0.1",
                                           "local_bind_port": 8080}]
    assert [p.label for p in dash.networks[0].ports()] == ["http", "connect-proxy-count-dashboard",
                                                           "connect-proxy-count-dashboard-metrics"]


def test_injection_is_idempotent():
    once = inject_sidecars(load_file(str(SEED)).job)
    twice = inject_sidecars(once.model_copy(deep=True))
    assert once == twice


def test_sidecar_task_merges_over_the_injected_task():
    text = SEED.read_text().replace("sidecar_service {}", '''sidecar_service {}
        sidecar_task {
          kill_timeout = "9s"
          env {
            LOG = "debug"
          }
          resources {
            memory = 96
          }
        }''', 1)
    job = inject_sidecars(load(text, "x.nomad").job)
    (proxy,) = [t for t in job.task_groups[0].tasks if t.kind]
    assert proxy.kill_timeout == 9 * SECOND and proxy.env == {"LOG": "debug"}
    assert proxy.resources.memory_mb == 96 and proxy.resources.cpu == 50  # cpu kept from the injected task


def test_groups_without_connect_are_untouched():
    text = 'job "p" {\n  group "g" {\n    network {\n      port "http" {}\n    }\n    task "t" {\n' \
           '      driver = "raw_exec"\n      config { command = "true" }\n    }\n  }\n}\n'
    job = load(text, "p.nomad").job
    assert inject_sidecars(job.model_copy(deep=True)) == job
