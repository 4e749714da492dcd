"""Mesh pieces without sockets: SPIFFE parsing, config, balancing, health entries, TLS material."""

from __future__ import annotations

import json
import ssl

import pytest

from yurt.mesh.balancer import Balancer, Instance, instances_from_health
from yurt.errors import ConfigError
from yurt.mesh.config import from_args, parse_upstream
from yurt.mesh.tls import build_material, parse_spiffe, service_uri

from .meshca import TestCA


def test_parse_spiffe():
    sid = parse_spiffe("spiffe://ABC.yurt/ns/default/dc/dc1/svc/count-api")
    assert sid and sid.trust_domain == "abc.yurt" and sid.service == "count-api" and sid.datacenter == "dc1"
    assert parse_spiffe("spiffe://td/ap/p1/ns/default/dc/dc1/svc/web").service == "web"
    assert parse_spiffe("spiffe://td/ns/default/dc/dc1/svc/we%2Fb").service == "we/b"
    for bad in ("", "http://x/ns/default/dc/dc1/svc/web", "spiffe://td/agent/client/dc/dc1/id/n1",
                "spiffe://td/ns/default/dc/dc1/svc/", "spiffe:///ns/default/dc/dc1/svc/web"):
        assert parse_spiffe(bad) is None, bad
    assert service_uri("td", "dc2", "db") == "spiffe://td/ns/default/dc/dc2/svc/db"


def test_flags_and_config_file(tmp_path):
    cfg = from_args(["-service", "web", "-listen", ":21000", "-local-port", "9001",
                     "-upstream", "api:8080", "-upstream", "db:127.0.0.2:5432", "-dc", "dc2"])
    assert (cfg.listen_addr, cfg.listen_port, cfg.local_port, cfg.datacenter) == ("0.0.0.0", 21000, 9001, "dc2")
    assert [(u.destination, u.local_bind_address, u.local_bind_port) for u in cfg.upstreams] == \
        [("api", "127.0.0.1", 8080), ("db", "127.0.0.2", 5432)]
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"service": "count-dashboard", "upstreams": [
        {"destination_name": "count-api", "local_bind_port": 8080}], "address": "unix:///tmp/a.sock",
        "ready_file": "/tmp/r", "connect_timeout_ms": 500}))
    cfg = from_args(["--config", str(f)])
    assert cfg.service == "count-dashboard" and cfg.listen_port is None and cfg.connect_timeout == 0.5
    assert cfg.upstreams[0].destination == "count-api" and cfg.address == "unix:///tmp/a.sock"
    with pytest.raises(ConfigError):
        from_args(["-service", "web"])
    with pytest.raises(ConfigError):
        from_args(["-service", "web", "-listen", "0.0.0.0:1"])  # no -local-port
    with pytest.raises(ConfigError):
        parse_upstream("api")
    with pytest.raises(ConfigError):
        from_args(["-service", "w", "-upstream", "a:1", "-upstream", "b:1"])  # same port twice


def test_drain_settings(tmp_path):
    """What the connect-proxy driver writes (drained file, drain timeout from the task's
    kill_timeout) and the -drain-timeout flag over it; 5 s by default, never negative."""
    assert from_args(["-service", "web", "-upstream", "api:8080"]).drain_timeout == 5.0
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"service": "web", "upstreams": [{"destination_name": "api", "local_bind_port": 8080}],
                             "drained_file": "/tmp/d", "drain_timeout_ms": 4500}))
    cfg = from_args(["-config", str(f)])
    assert (cfg.drained_file, cfg.drain_timeout) == ("/tmp/d", 4.5)
    assert from_args(["-config", str(f), "-drain-timeout", "30"]).drain_timeout == 30.0
    with pytest.raises(ConfigError, match="-drain-timeout"):
        from_args(["-config", str(f), "-drain-timeout", "-1"])
    f.write_text(json.dumps({"service": "web", "upstreams": [{"destination_name": "api", "local_bind_port": 8080}],
                             "drain_timeout_ms": "soon"}))
    with pytest.raises(ConfigError, match="drain_timeout_ms"):
        from_args(["-config", str(f)])

def test_balancer_least_connections_round_robin():
    b = Balancer()
    a, c = Instance("10.0.0.1", 1, "dc1"), Instance("10.0.0.2", 1, "dc1")
    b.update([a, c])
    picks = [b.pick() for _ in range(4)]
    assert set(picks) == {a, c}
    b.acquire(a)
    assert all(b.pick() == c for _ in range(3))
    assert b.pick({c.key}) == a
    b.release(a)
    assert b.pick({a.key, c.key}) is None
    b.update([])
    assert b.pick() is None


def test_instances_from_health_entries():
    entries = [
        {"Node": {"Address": "10.0.0.1", "Datacenter": "dc1"},
         "Service": {"ID": "s1", "Address": "", "Port": 21000}, "Checks": [{"Status": "passing"}]},
        {"Node": {"Address": "10.0.0.2", "Datacenter": "dc2"},
         "Service": {"ID": "s2", "Address": "172.26.64.5", "Port": 21001}, "Checks": []},
        {"Node": {"Address": "10.0.0.3"}, "Service": {"ID": "s3", "Port": 1}, "Checks": [{"Status": "critical"}]},
    ]
    got = instances_from_health(entries, "dc9")
    assert [(i.address, i.port, i.datacenter) for i in got] == [("10.0.0.1", 21000, "dc1"),
                                                                ("172.26.64.5", 21001, "dc2")]


def test_material_self_check_rejects_mismatched_key_and_foreign_root():
    ca, other = TestCA(), TestCA()
    leaf = ca.leaf("web")
    m = build_material(ca.trust_domain, "web", leaf["CertPEM"], leaf["PrivateKeyPEM"], ca.root_pem)
    assert m.server.minimum_version == ssl.TLSVersion.TLSv1_3 and m.client.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLError):
        build_material(ca.trust_domain, "web", leaf["CertPEM"], leaf["PrivateKeyPEM"], other.root_pem)
    with pytest.raises(ssl.SSLError):
        build_material(ca.trust_domain, "web", leaf["CertPEM"], ca.leaf("web")["PrivateKeyPEM"], ca.root_pem)
