"""The few iptables operations networking needs: chains, rules, and reading ``iptables-save``.

Every call waits for the xtables lock (``-w``) because the CNI plugins change the same tables
concurrently. Rules are read back from ``iptables-save`` (one ``-A CHAIN ...`` line each), so a
rule can be deleted with exactly the arguments it was saved with.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class IptablesError(Exception):
    pass


def binary(name: str = "iptables") -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def run(*args: str, table: str = "filter", check: bool = True) -> subprocess.CompletedProcess:
    exe = binary()
    if exe is None:
        raise IptablesError("iptables is not installed: apt-get install iptables")
    proc = subprocess.run([exe, "-w", "-t", table, *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise IptablesError(f"iptables -t {table} {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def chain_exists(table: str, chain: str) -> bool:
    return run("-S", chain, table=table, check=False).returncode == 0


def ensure_chain(table: str, chain: str) -> None:
    if not chain_exists(table, chain):
        proc = run("-N", chain, table=table, check=False)
        if proc.returncode != 0 and not chain_exists(table, chain):  # lost a race: fine if it exists
            raise IptablesError(f"cannot create chain {chain} in table {table}: {proc.stderr.strip()}")


def rule_exists(table: str, chain: str, rule: list[str]) -> bool:
    return run("-C", chain, *rule, table=table, check=False).returncode == 0


def ensure_rule(table: str, chain: str, rule: list[str]) -> None:
    """Append ``rule`` to ``chain`` unless an identical rule is already there."""
    if not rule_exists(table, chain, rule):
        run("-A", chain, *rule, table=table)


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    args: tuple[str, ...]  # everything after "-A CHAIN"
    line: str              # as iptables-save printed it

    @property
    def target(self) -> str:
        for flag in ("-j", "-g"):
            if flag in self.args:
                i = self.args.index(flag)
                if i + 1 < len(self.args):
                    return self.args[i + 1]
        return ""

    @property
    def comment(self) -> str:
        if "--comment" in self.args:
            i = self.args.index("--comment")
            if i + 1 < len(self.args):
                return self.args[i + 1]
        return ""


@dataclass
class Ruleset:
    chains: dict[str, set[str]]   # table -> chain names (built-in and user-defined)
    rules: list[Rule]

    def referencing(self, table: str, chain: str) -> list[Rule]:
        return [r for r in self.rules if r.table == table and r.target == chain]


def save_text() -> str:
    exe = binary("iptables-save")
    if exe is None:
        raise IptablesError("iptables-save is not installed: apt-get install iptables")
    proc = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise IptablesError(f"iptables-save: {proc.stderr.strip()}")
    return proc.stdout


def parse_save(text: str) -> Ruleset:
    chains: dict[str, set[str]] = {}
    rules: list[Rule] = []
    table = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            chains.setdefault(table, set())
        elif line.startswith(":") and table:
            chains[table].add(line[1:].split()[0])
        elif line.startswith("-A ") and table:
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            rules.append(Rule(table, words[1], tuple(words[2:]), line))
    return Ruleset(chains, rules)


def load() -> Ruleset:
    return parse_save(save_text())


def delete_rule(rule: Rule) -> bool:
    return run("-D", rule.chain, *rule.args, table=rule.table, check=False).returncode == 0


def delete_chain(table: str, chain: str) -> bool:
    run("-F", chain, table=table, check=False)
    return run("-X", chain, table=table, check=False).returncode == 0
