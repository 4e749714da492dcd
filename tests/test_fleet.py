"""A large fleet on one server: the heartbeat TTL grows with the number of nodes (Nomad's
`max_heartbeats_per_second`), so the heartbeats a server answers stay bounded.
(bench/scheduler.py --only fleet measures 5,000 nodes; these are the rules it relies on.)"""

from __future__ import annotations

import uuid

import pytest

from yurt.agent.config import AgentConfig, load_file
from yurt.errors import ConfigError

from .agent_util import AgentProcess, wait_for


def test_max_heartbeats_per_second_is_read_and_bad_values_are_refused(tmp_path):
    conf = tmp_path / "agent.hcl"
    conf.write_text("server {\n  enabled = true\n  max_heartbeats_per_second = 12.5\n}\n")
    assert load_file(str(conf), AgentConfig(data_dir=tmp_path)).max_heartbeats_per_second == 12.5
    assert AgentConfig().max_heartbeats_per_second == 50.0      # Nomad's default
    for value in ("0", "-3", '"fast"'):
        conf.write_text(f"server {{\n  enabled = true\n  max_heartbeats_per_second = {value}\n}}\n")
        with pytest.raises(ConfigError) as e:
            load_file(str(conf), AgentConfig(data_dir=tmp_path))
        assert "server.max_heartbeats_per_second" in str(e.value) and str(conf) in str(e.value), str(e.value)


def test_the_heartbeat_ttl_grows_with_the_fleet(tmp_path):
    """With max_heartbeats_per_second = 0.1 a node heartbeating at half its TTL may have
    2 x nodes / 0.1 seconds, counting the nodes the server already follows: the dev agent's own
    node gets the minimum (10 s), the next ones 20 s and 40 s, and a heartbeat once the three are
    known 60 s."""
    conf = tmp_path / "agent.hcl"
    conf.write_text("server {\n  enabled = true\n  max_heartbeats_per_second = 0.1\n}\n")
    with AgentProcess(extra=["-config", str(conf)]) as a, a.api() as api:
        wait_for(lambda: len(api.get("/v1/nodes").json()) == 1, 60, what="the dev agent's node")
        ttls = []
        for _ in range(2):
            node_id, secret = str(uuid.uuid4()), str(uuid.uuid4())
            node = {"ID": node_id, "SecretID": secret, "Name": "fleet-" + node_id[:8], "Datacenter": "dc1",
                    "NodePool": "fleet-test"}
            r = api.put("/v1/internal/node/register", json={"Node": node}, headers={"X-Nomad-Token": secret})
            assert r.status_code == 200, r.text
            ttls.append(r.json()["HeartbeatTTL"])
        assert ttls == [20 * 10**9, 40 * 10**9]
        r = api.put(f"/v1/internal/node/{node_id}/heartbeat", headers={"X-Nomad-Token": secret})
        assert r.status_code == 200, r.text
        assert r.json()["HeartbeatTTL"] == 60 * 10**9
