"""Intentions: Consul's precedence table, evaluation order, wildcards, default policy, validation."""

from __future__ import annotations

import pytest

from yurt.server.intentions import (IntentionError, IntentionExists, Intentions, decide, ordered,
                                    precedence)
from yurt.state import StateStore
from yurt.structs import Intention


@pytest.fixture
def store():
    s = StateStore.temporary()
    yield s
    s.close()


@pytest.mark.parametrize("src,dst,prec", [("web", "db", 9), ("*", "db", 8), ("web", "*", 6), ("*", "*", 5)])
def test_precedence_table(src, dst, prec):
    assert precedence(src, dst) == prec


def ix(src: str, dst: str, action: str = "allow") -> Intention:
    return Intention(source_name=src, destination_name=dst, action=action, precedence=precedence(src, dst))


def test_sorted_by_precedence_then_names():
    rows = [ix("*", "*"), ix("web", "*"), ix("b", "db"), ix("*", "db"), ix("a", "db"), ix("a", "api")]
    assert [(i.source_name, i.destination_name) for i in ordered(rows)] == [
        ("a", "api"), ("a", "db"), ("b", "db"), ("*", "db"), ("web", "*"), ("*", "*")]


def test_first_match_in_precedence_order_decides():
    rows = [ix("*", "*", "deny"), ix("web", "db", "allow"), ix("*", "db", "deny")]
    assert decide(rows, "web", "db", True) == (True, "Matched L4 intention: web => db (allow)")
    assert decide(rows, "api", "db", True) == (False, "Matched L4 intention: * => db (deny)")
    assert decide(rows, "api", "cache", True) == (False, "Matched L4 intention: * => * (deny)")
    assert decide([ix("web", "*", "deny"), ix("*", "db")], "web", "db", True)[0] is True  # 8 beats 6


def test_default_policy_when_nothing_matches():
    assert decide([], "web", "db", True) == (True, "Default behavior: no intention matched, default policy allow")
    assert decide([ix("x", "db")], "web", "db", False) == (
        False, "Default behavior: no intention matched, default policy deny")


def test_l7_intentions_deny_l4_connections():
    rows = [Intention(source_name="web", destination_name="db", action="",
                      permissions=[{"Action": "allow", "HTTP": {"PathPrefix": "/"}}], precedence=9)]
    allowed, reason = decide(rows, "web", "db", True)
    assert not allowed and reason.startswith("Matched L7 intention: web => db")


def test_store_operations(store):
    ixs = Intentions(store, default_allow=False)
    a = ixs.upsert_exact("web", "db", {"Action": "allow", "Description": "d"})
    assert (a.precedence, a.description, a.create_index) == (9, "d", a.modify_index)
    b = ixs.upsert_exact("web", "db", {"Action": "deny"})
    assert (b.id, b.create_index, b.action) == (a.id, a.create_index, "deny")
    assert b.modify_index > a.modify_index
    assert ixs.check("web", "db") == (False, "Matched L4 intention: web => db (deny)")
    assert ixs.check("api", "db")[0] is False  # default deny
    ixs.upsert_exact("*", "db", {"Action": "allow"})
    assert ixs.check("api", "db")[0] is True
    assert [i.source_name for i in ixs.match("destination", "db")] == ["web", "*"]
    with pytest.raises(IntentionExists):
        ixs.create({"SourceName": "web", "DestinationName": "db", "Action": "allow"})
    c = ixs.create({"SourceName": "api", "DestinationName": "db", "Action": "allow"})
    assert ixs.get(c.id).source_name == "api"
    ixs.update(c.id, {"Action": "deny"})
    assert ixs.get(c.id).action == "deny"
    ixs.delete_exact("web", "db")
    assert ixs.get_exact("web", "db") is None
    assert store.table_index("intentions") == store.index()


@pytest.mark.parametrize("src,dst,body,match", [
    ("web*", "db", {"Action": "allow"}, "wildcard"),
    ("", "db", {"Action": "allow"}, "source is required"),
    ("web", "db", {"Action": "maybe"}, 'Action must be "allow" or "deny"'),
    ("web", "db", {"Action": "allow", "Permissions": [{"Action": "deny"}]}, "mutually exclusive"),
])
def test_invalid_intentions(store, src, dst, body, match):
    with pytest.raises(IntentionError, match=match):
        Intentions(store).upsert_exact(src, dst, body)


def test_intentions_persist(tmp_path):
    path = str(tmp_path / "s.db")
    with StateStore(path) as s:
        Intentions(s).upsert_exact("web", "db", {"Action": "deny"})
    with StateStore(path) as s:
        assert Intentions(s).check("web", "db") == (False, "Matched L4 intention: web => db (deny)")


def test_mesh_explain_says_what_l7_permissions_let_through(store):
    from types import SimpleNamespace

    from yurt.server.mesh_explain import MeshExplain, l7_summary
    perms = [{"Action": "allow", "HTTP": {"PathPrefix": "/api/", "Methods": ["GET", "HEAD"]}},
             {"Action": "deny", "HTTP": {"PathExact": "/admin", "Header": [{"Name": "x-debug", "Present": True}]}}]
    assert l7_summary(perms, False) == ("GET,HEAD /api/* allow; /admin header x-debug deny; "
                                        "else deny (default policy)")
    ixs = Intentions(store, default_allow=False)
    ixs.upsert_exact("web", "db", {"Permissions": perms})
    explain = MeshExplain(SimpleNamespace(intentions=ixs))   # type: ignore[arg-type]
    got = explain._intention("web", "db")
    assert got["Status"] == "ok", got
    assert got["Detail"].startswith("allowed for some requests (L7 permissions of web => db, precedence 9): GET,HEAD")
    # only deny permissions and a deny default: nothing gets through, and the fix says so
    ixs.upsert_exact("web", "db", {"Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/"}}]})
    got = explain._intention("web", "db")
    assert got["Status"] == "wrong" and got["Detail"].startswith("denied for every request (L7 permissions"), got
    assert "service-intentions" in got["Fix"], got
    # an L4 intention is explained as before
    ixs.upsert_exact("web", "db", {"Action": "allow"})
    assert explain._intention("web", "db")["Detail"].startswith("Matched L4 intention: web => db (allow)")
