"""The record of one simulation run: the history, the verdicts and the counters."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from rayconf.actors.raft import NodeId
from rayconf.sims import history
from rayconf.sims.config import SimConfig
from rayconf.sims.invariants import Violation
from rayconf.sims.linearizability import CheckResult


@dataclass(slots=True)
class SimResult:
    """Everything one run produced: the history, the verdicts and the counters."""

    config: SimConfig
    operations: list[history.Operation]
    violations: list[Violation]
    linearizability: CheckResult | None
    statistics: dict[str, int]
    faults: dict[str, int]
    fault_log: list[str]
    state_hashes: dict[NodeId, int]
    # "t=<ms> client <c> op <o> attempt <a>: ..." lines in time order.
    attempt_log: list[str]
    wall_time_s: float
    simulated_time_ms: int

    @property
    def ok(self) -> bool:
        return not self.violations

    def digest(self) -> str:
        """Return a SHA-256 over the history, the fault log and the final state hashes.

        Two runs of one seed must return the same digest, in any process.
        """
        document = {
            "history": history.history_to_json(self.operations),
            "faults": self.fault_log,
            "state_hashes": sorted(self.state_hashes.items()),
            "statistics": sorted(self.statistics.items()),
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()

    def violation_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for violation in self.violations:
            kinds[violation.kind] = kinds.get(violation.kind, 0) + 1
        return kinds
