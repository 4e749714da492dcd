"""What `yurt doctor` reports about this machine as a client: the client's preflight checks,
whether bridge networking can work, and the node attributes the checks give the scheduler.
(The CLI renders it; it reaches the client's internals only through the agent, which is the
package that assembles them.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yurt.client.preflight import Check, bridge_ready, preflight_attributes, run_checks


@dataclass
class Diagnosis:
    ready: bool
    checks: list[Check]
    attributes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"Ready": self.ready, "Checks": [c.to_json() for c in self.checks],
                "Attributes": self.attributes}


def diagnose() -> Diagnosis:
    checks = run_checks()
    return Diagnosis(bridge_ready(checks), checks, preflight_attributes(checks))
