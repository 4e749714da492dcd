"""Gateways without a machine: the job's gateway block as Consul's config entry, its bad input
refused at its FILE:LINE:COL naming the fix, the injected gateway task, the typed config the
gateway proxy reads, and how an http listener picks a service by Host."""

from __future__ import annotations

import pytest

from yurt.errors import ConfigError
from yurt.jobspec import JobspecError, load
from yurt.mesh.config import from_dict
from yurt.mesh.gateway import GatewayConfig, route
from yurt.server.connect_inject import gateway_warnings, inject_sidecars
from yurt.structs.gateway import gateway_entry

FILE = "gw.nomad"

INGRESS = """job "ig" {
  group "ingress" {
    network {
      mode = "bridge"
      port "inbound" {
        static = 8080
        to     = 8080
      }
      %(ports)s
    }
    service {
      name = "ingress-gw"
      port = "8080"
      connect {
        gateway {
          proxy {
            connect_timeout = "500ms"
          }
          ingress {
            %(ingress)s
          }
        }
      }
    }
  }
}
"""

TCP_LISTENER = """listener {
              port     = 8080
              protocol = "tcp"
              service {
                name = "count-api"
              }
            }"""


def job(ingress: str = TCP_LISTENER, ports: str = "") -> str:
    return INGRESS % {"ingress": ingress, "ports": ports}


def problems(text: str) -> list:
    try:
        return load(text, FILE).warnings
    except JobspecError as e:
        return e.problems


def at(text: str, needle: str, nth: int = 0) -> str:
    """LINE:COL of the nth occurrence of `needle` (its first non-blank character)."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    return f"{text.count(chr(10), 0, i) + 1}:{i - text.rfind(chr(10), 0, i)}"


def test_an_ingress_gateway_group_needs_no_task_and_gets_the_gateway_proxy_task():
    loaded = load(job(), FILE)
    assert loaded.warnings == []
    j = inject_sidecars(loaded.job)
    (task,) = j.task_groups[0].tasks
    assert (task.name, task.kind, task.driver) == ("connect-ingress-ingress-gw", "connect-ingress:ingress-gw",
                                                    "connect-proxy")
    assert task.config["service"] == "ingress-gw"
    assert task.config["connect_timeout_ms"] == 500
    assert task.config["gateway"] == {
        "Kind": "ingress-gateway", "Name": "ingress-gw", "ConnectTimeoutMs": 500,
        "TLS": {"Enabled": False, "TLSMinVersion": ""},
        "Listeners": [{"Port": 8080, "Protocol": "tcp", "Services": [{"Name": "count-api", "Hosts": []}]}]}
    # injecting twice changes nothing
    assert len(inject_sidecars(j).task_groups[0].tasks) == 1
    # and the proxy reads the same entry as its typed config
    cfg = from_dict({"service": "ingress-gw", "gateway": task.config["gateway"]}).validate()
    gw = GatewayConfig.from_entry(cfg.gateway or {})
    assert (gw.kind, gw.listeners[0].port, gw.listeners[0].services[0].name) == ("ingress-gateway", 8080, "count-api")


def test_a_terminating_gateway_gets_its_mtls_port_and_links_its_services():
    text = """job "tg" {
  group "gw" {
    network { mode = "bridge" }
    service {
      name = "legacy-gw"
      connect {
        gateway {
          terminating {
            service {
              name    = "legacy"
            }
            service {
              name    = "billing"
              ca_file = "/etc/ssl/billing-ca.pem"
              sni     = "billing.internal"
            }
          }
        }
      }
    }
  }
}
"""
    j = inject_sidecars(load(text, FILE).job)
    (task,) = j.task_groups[0].tasks
    assert task.name == "connect-terminating-legacy-gw" and task.kind == "connect-terminating:legacy-gw"
    assert task.config["listen"] == "0.0.0.0:${NOMAD_PORT_connect_terminating_legacy_gw}"
    assert [p.label for p in j.task_groups[0].networks[0].dynamic_ports] == ["connect-terminating-legacy-gw"]
    assert [s["Name"] for s in task.config["gateway"]["Services"]] == ["legacy", "billing"]
    assert task.config["gateway"]["Services"][1]["SNI"] == "billing.internal"
    # the job run warns about linked services nobody registered
    warnings = gateway_warnings(j, lambda name: name == "legacy")
    assert len(warnings) == 1 and 'service "billing" is not registered' in warnings[0]
    assert "PUT /v1/catalog/register" in warnings[0]


def test_nomad_json_gateways_make_the_same_entry():
    hcl = load(job(), FILE).job.task_groups[0].services[0].connect.gateway
    nomad_json = {"Proxy": {"ConnectTimeout": 500_000_000},
                  "Ingress": {"TLS": {"Enabled": False},
                              "Listeners": [{"Port": 8080, "Protocol": "tcp", "Services": [{"Name": "count-api"}]}]}}
    assert gateway_entry("ingress-gw", nomad_json) == gateway_entry("ingress-gw", hcl)
    assert gateway_entry("ingress-gw", nomad_json)[1] == []


@pytest.mark.parametrize("ingress,ports,needle,nth,fragment", [
    # a port already used by another listener
    (TCP_LISTENER + "\n" + TCP_LISTENER.replace("count-api", "other"), "", "port     = 8080", 1,
     "listener port 8080 is already used by listener 1 of this gateway: give each listener its own port"),
    # several services on an http listener, one without hosts
    ("""listener {
              port     = 8080
              protocol = "http"
              service {
                name  = "count-api"
                hosts = ["api.example.com"]
              }
              service {
                name = "web"
              }
            }""", "", "listener {", 0, 'web has no hosts: give each service hosts = ["..."]'),
    # a tcp listener carries one service
    ("""listener {
              port = 8080
              service {
                name = "a"
              }
              service {
                name = "b"
              }
            }""", "", "listener {", 0, "a tcp listener carries exactly one"),
    # TLS options Yurt cannot honour are refused by name
    ("""tls {
              enabled       = true
              cipher_suites = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
            }
            """ + TCP_LISTENER, "", "cipher_suites", 0, "cipher_suites cannot be honoured"),
    ("""tls {
              enabled         = true
              tls_min_version = "TLSv1_0"
            }
            """ + TCP_LISTENER, "", "tls_min_version", 0, 'tls_min_version "TLSv1_0" is not known'),
    ("""listener {
              port     = 8080
              protocol = "grpc"
              service {
                name = "a"
              }
            }""", "", 'protocol = "grpc"', 0, 'listener protocol "grpc" is not supported: use "tcp" or "http"'),
    ("""listener {
              port = 8080
              services {
                name = "a"
              }
              bogus = 1
            }""", "", "bogus", 0, 'listener has no "bogus"'),
    ("", "", "ingress {", 0, "an ingress gateway needs at least one listener"),
    ("""listener {
              port = 8080
              service {
                name  = "a"
                hosts = ["a.example.com"]
              }
            }""", "", "hosts", 0, 'hosts only apply to protocol = "http" listeners'),
])
def test_bad_gateway_blocks_are_refused_at_their_place(ingress, ports, needle, nth, fragment):
    text = job(ingress, ports)
    errors = [p for p in problems(text) if p.severity == "error"]
    assert len(errors) == 1, "\n".join(map(str, errors))
    assert fragment in errors[0].message, errors[0].message
    assert str(errors[0].pos) == f"{FILE}:{at(text, needle, nth)}", (str(errors[0]), text)


def test_a_listener_port_taken_by_another_service_of_the_group_is_refused():
    text = job().replace("""  }
}
""", """    service {
      name = "admin"
      port = "8080"
    }
  }
}
""", 1)
    (error,) = [p for p in problems(text) if p.severity == "error"]
    assert 'listener port 8080 is already used by service "admin"' in error.message
    assert "give the listener another port" in error.message


def test_an_unmapped_listener_and_a_mesh_gateway_are_warned_about():
    text = job(TCP_LISTENER + "\n" + TCP_LISTENER.replace("8080", "9090"))
    (warning,) = problems(text)
    assert warning.severity == "warning" and "listener port 9090 is not mapped to the host" in warning.message
    assert 'port "ingress-9090" { static = 9090 to = 9090 }' in warning.message
    assert str(warning.pos) == f"{FILE}:{at(text, 'port     = 9090')}"
    mesh = INGRESS.replace("ingress {\n            %(ingress)s\n          }", "mesh {}").replace(
        "    service {", '    task "t" {\n      driver = "raw_exec"\n      config { command = "/bin/true" }\n    }\n'
        "    service {", 1) % {"ports": ""}
    (warning,) = load(mesh, FILE).warnings
    assert "mesh gateway has no effect yet in Yurt" in warning.message


def test_the_proxy_refuses_a_gateway_entry_it_cannot_serve():
    with pytest.raises(ConfigError, match='gateway Kind "api-gateway" is not served'):
        from_dict({"service": "x", "gateway": {"Kind": "api-gateway"}}).validate()
    with pytest.raises(ConfigError, match="CipherSuites cannot be honoured"):
        GatewayConfig.from_entry({"Kind": "ingress-gateway", "TLS": {"Enabled": True, "CipherSuites": ["x"]},
                                  "Listeners": [{"Port": 1, "Services": [{"Name": "a"}]}]})
    with pytest.raises(ConfigError, match="at least one service"):
        GatewayConfig.from_entry({"Kind": "terminating-gateway", "Services": []})


def test_an_http_listener_routes_by_host_as_consul():
    gw = GatewayConfig.from_entry({"Kind": "ingress-gateway", "Listeners": [
        {"Port": 8080, "Protocol": "http", "Services": [
            {"Name": "api", "Hosts": ["api.example.com", "*.api.example.com"]},
            {"Name": "web", "Hosts": ["web.example.com:8080"]}]},
        {"Port": 8081, "Protocol": "http", "Services": [{"Name": "solo"}]}]})
    lst, solo = gw.listeners

    def name(listener, host: str) -> str | None:
        svc = route(listener, host)
        return svc.name if svc else None

    assert name(lst, "api.example.com") == "api"
    assert name(lst, "API.Example.com:8080") == "api"
    assert name(lst, "v1.api.example.com") == "api"
    assert name(lst, "web.example.com:8080") == "web"
    assert name(lst, "nope.example.com") is None
    # no hosts: Consul's default <service>.ingress.*
    assert name(solo, "solo.ingress.consul") == "solo"
    assert name(solo, "solo.ingress.example.com:8081") == "solo"
    assert name(solo, "other.example.com") is None
    # the edge certificate names the DNS hosts only
    assert gw.edge_hosts() == ["api.example.com", "*.api.example.com", "web.example.com"]


def test_a_static_port_taken_on_the_node_says_which_and_what_to_change():
    """A gateway's host port (or any static port) already used: the scheduler's dimension, as
    Nomad prints it, then what to change."""
    from yurt.structs.alloc import AllocMetric

    metric = AllocMetric.of_placement(evaluated=1, in_pool=1, available={"dc1": 1}, filtered={},
                                      exhausted={"network: reserved port collision inbound=8080": 1}, score_meta=[])
    assert metric.reasons() == [
        "Resources exhausted on 1 node",
        'Dimension "network: reserved port collision inbound=8080" exhausted on 1 node',
        '  host port 8080 is already used on that node (by another allocation, or reserved by the node): '
        'give port "inbound" another static value, or remove static to get a dynamic port']


def test_a_host_mode_listener_on_a_port_the_group_does_not_reserve_is_warned_about():
    text = job().replace('mode = "bridge"', 'mode = "host"')
    assert problems(text) == []   # port "inbound" reserves 8080 on the node
    text = job(TCP_LISTENER.replace("8080", "9191")).replace('mode = "bridge"', 'mode = "host"')
    (warning,) = problems(text)
    assert "listener port 9191 binds on the node itself (network mode host)" in warning.message
    assert 'port "ingress-9191" { static = 9191 }' in warning.message
