"""Finding and removing the iptables rules CNI plugins made for allocations.

What the reference plugins leave behind, and how it is recognised:
- portmap: rules in CNI-HOSTPORT-DNAT / CNI-HOSTPORT-SETMARK / CNI-HOSTPORT-MASQ ... with a
  comment ``dnat name: "<net>" id: "<container id>"``, jumping to a chain CNI-DN-<hash>;
- bridge ipMasq: a rule in POSTROUTING with comment ``name: "<net>" id: "<container id>"``
  jumping to CNI-<hash>;
- firewall: rules in CNI-FORWARD matching the container's address (``-d/-s <ip>/32``), no comment.

Only rules whose comment names a UUID-shaped container ID in ``ids`` (or, for CNI-FORWARD,
whose address is in ``ips``) are deleted, then the chains that only those rules jumped to.
Nothing else is touched: an administrator's rules stay.
"""

from __future__ import annotations

import re

from . import iptables
from .iptables import Rule, Ruleset

UUID_IN_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FIREWALL_CHAIN = "CNI-FORWARD"


def comment_ids(rule: Rule) -> set[str]:
    return set(UUID_IN_TEXT.findall(rule.comment))


def alloc_rules(ruleset: Ruleset, ids: set[str], ips: set[str] | frozenset[str] = frozenset()) -> list[Rule]:
    out = []
    for rule in ruleset.rules:
        if comment_ids(rule) & ids:
            out.append(rule)
        elif rule.chain == FIREWALL_CHAIN and ips and _addresses(rule) & ips:
            out.append(rule)
    return out


def _addresses(rule: Rule) -> set[str]:
    found = set()
    for flag in ("-s", "-d", "--source", "--destination"):
        if flag in rule.args:
            i = rule.args.index(flag)
            if i + 1 < len(rule.args):
                found.add(rule.args[i + 1].split("/")[0])
    return found


def purge(ids: set[str], ips: set[str] | frozenset[str] = frozenset(),
          ruleset: Ruleset | None = None) -> list[str]:
    """Delete the allocations' rules and the CNI chains left unreferenced; what was deleted."""
    if not ids and not ips:
        return []
    if ruleset is None:
        try:
            ruleset = iptables.load()
        except iptables.IptablesError:
            return []
    doomed = alloc_rules(ruleset, set(ids), set(ips))
    done: list[str] = []
    for rule in doomed:
        if iptables.delete_rule(rule):
            done.append(f"{rule.table}: {rule.line}")
    # the chains those rules jumped to, when nothing else jumps there any more
    removed = set(doomed)
    for rule in doomed:
        chain = rule.target
        if not chain.startswith("CNI-") or chain in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK",
                                                    "CNI-HOSTPORT-MASQ", FIREWALL_CHAIN, "CNI-ADMIN"):
            continue
        if chain not in ruleset.chains.get(rule.table, set()):
            continue
        others = [r for r in ruleset.referencing(rule.table, chain) if r not in removed]
        if not others and iptables.delete_chain(rule.table, chain):
            done.append(f"{rule.table}: chain {chain}")
            ruleset.chains[rule.table].discard(chain)
    return done
