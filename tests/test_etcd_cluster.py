"""The loopback etcd cluster the HA tests run on (`tests/etcd_cluster.py`): three real etcd
members; a member killed and restarted rejoins with its data; two of three dead lose the quorum
(what `/health` and `etcdctl` show), and it comes back when they restart; nothing outlives stop()."""

from __future__ import annotations

import os
import shutil

import pytest

from .agent_util import wait_for
from .etcd_cluster import EtcdCluster

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None,
                                reason="etcd is not installed: apt-get install etcd-server etcd-client")


@pytest.fixture
def cluster(tmp_path):
    c = EtcdCluster(tmp_path, members=3)
    try:
        c.wait_healthy(60)
        yield c
    finally:
        c.stop()


def test_three_members_start_healthy(cluster):
    out = cluster.etcdctl("member", "list")
    assert out.returncode == 0, out.stderr
    rows = [line.split(", ") for line in out.stdout.splitlines()]
    assert sorted(r[2] for r in rows) == ["m0", "m1", "m2"]
    assert {r[1] for r in rows} == {"started"}
    assert sorted(r[4] for r in rows) == sorted(cluster.endpoints)
    health = cluster.etcdctl("endpoint", "health")
    assert health.returncode == 0 and health.stderr.count("is healthy") == 3, health


def test_a_killed_member_restarts_on_its_data_and_catches_up(cluster):
    assert cluster.etcdctl("put", "/yurt/a", "1").returncode == 0
    cluster.kill(2)
    assert not cluster.running(2) and cluster.health(2) is None
    # two of three: still a quorum, writes go on (a write in flight when the leader dies times
    # out; retried, it succeeds once a new leader is elected)
    wait_for(lambda: cluster.etcdctl("--command-timeout=2s", "put", "/yurt/b", "2",
                                     endpoints=cluster.endpoints[:2]).returncode == 0, 60, what="a put with m2 dead")
    cluster.start(2)
    cluster.wait_healthy(60)
    # the restarted member serves both keys by itself (serializable: its own copy, no quorum read)
    got = cluster.etcdctl("get", "--prefix", "/yurt/", "--consistency=s", endpoints=[cluster.endpoints[2]])
    assert got.stdout.split() == ["/yurt/a", "1", "/yurt/b", "2"], got


def test_two_of_three_dead_lose_the_quorum_until_they_restart(cluster):
    assert cluster.etcdctl("put", "/yurt/k", "v").returncode == 0
    cluster.kill(0)
    cluster.kill(1)
    wait_for(lambda: cluster.health(2) is False, 30, what="the survivor's /health saying false")
    health = cluster.etcdctl("endpoint", "health", endpoints=[cluster.endpoints[2]], timeout=60)
    assert health.returncode != 0 and "is unhealthy" in health.stderr, health
    cluster.start(0)
    cluster.start(1)
    cluster.wait_healthy(60)
    assert cluster.health(2) is True
    assert cluster.etcdctl("get", "/yurt/k", "--print-value-only").stdout.strip() == "v"
    assert cluster.etcdctl("put", "/yurt/k", "w").returncode == 0


def test_stop_leaves_no_member_behind(tmp_path):
    c = EtcdCluster(tmp_path, members=3)
    try:
        c.wait_healthy(60)
        pids = [c.pid(i) for i in range(3)]
    finally:
        c.stop()
    for pid in pids:
        assert pid is not None and not os.path.exists(f"/proc/{pid}")
    c.stop()   # twice is fine
