"""The agent's leaf certificate cache: renewal window, expiry, and re-issue on root rotation
(clock and randomness injected; the rotation wake-up is asserted by index, not by timing)."""

from __future__ import annotations

import asyncio
import threading
import types

import pytest

from yurt.agent.leaf_cert import LeafCerts, LocalCA, renew_at
from yurt.server.ca import ConnectCA
from yurt.state import StateStore

from .test_ca import Clock


def test_renewal_is_between_60_and_90_percent_of_the_lifetime():
    assert renew_at(1000, 1100, lambda: 0.0) == 1060
    assert renew_at(1000, 1100, lambda: 1.0) == pytest.approx(1090)
    assert renew_at(1000, 1100, lambda: 0.5) == pytest.approx(1075)


@pytest.fixture
def setup():
    store = StateStore.temporary()
    clock = Clock()
    ca = ConnectCA(store, "dc1", clock=clock, leaf_cert_ttl="2m")
    ca.bootstrap()
    leafs = LeafCerts(LocalCA(types.SimpleNamespace(ca=ca, store=store)), "dc1", clock=clock,
                      rand=lambda: 0.5)
    yield store, clock, ca, leafs
    leafs.stop()
    store.close()


def test_cached_until_expiry(setup):
    _store, clock, _ca, leafs = setup
    first = leafs.get("web")
    assert leafs.get("web") is first
    assert first["PrivateKeyPEM"].startswith("-----BEGIN PRIVATE KEY-----")
    clock.advance(121)  # past ValidBefore (NotBefore is now - 1 minute: 60 s left)
    second = leafs.get("web")
    assert second["SerialNumber"] != first["SerialNumber"]
    assert second["ModifyIndex"] > first["ModifyIndex"]


def test_a_blocking_wait_returns_the_certificate_of_the_new_root(setup):
    _store, _clock, ca, leafs = setup
    leafs.start()
    first = leafs.get("web")
    old_root = ca.state().active_root_id
    t = threading.Timer(0.1, ca.rotate)
    t.start()
    new = asyncio.run(leafs.wait("web", first["ModifyIndex"], 60))
    t.join()
    assert new["ModifyIndex"] > first["ModifyIndex"]
    assert ca.state().active_root_id != old_root
    assert new["CertPEM"].count("BEGIN CERTIFICATE") == 2  # leaf + cross-signed root
