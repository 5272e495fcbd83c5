"""The simulator's checkers catch broken runs and report what broke.

The first tests feed `SafetyChecker` reports that break one property each. The
later ones plant a bug in the simulated nodes (a double apply, a read served
without ReadIndex) or in the record of acknowledged writes, and expect the run
to fail with a report that names the evidence.
"""

from __future__ import annotations

import logging

from rayconf.actors.raft import Entry, MemoryStorage
from rayconf.sims.clients import AcknowledgedWrite
from rayconf.sims.config import SimConfig
from rayconf.sims.invariants import SafetyChecker
from rayconf.sims.node import BUG_DOUBLE_APPLY, BUG_STALE_READ
from rayconf.sims.runner import render_report
from rayconf.sims.simulator import Simulation

logging.getLogger("rayconf").setLevel(logging.CRITICAL)


def new_checker() -> SafetyChecker:
    return SafetyChecker(clock=lambda: 7)


def storage_with(entries: list[Entry]) -> MemoryStorage:
    storage = MemoryStorage()
    storage.append(entries)
    return storage


def test_two_leaders_one_term_caught() -> None:
    checker = new_checker()
    storage = storage_with([Entry(1, 1)])

    checker.leader_elected("n1", 3, storage)
    checker.leader_elected("n2", 3, storage)

    assert [violation.kind for violation in checker.violations] == ["election_safety"]
    assert "n2 became leader of term 3, which n1 already leads" in checker.violations[0].describe()


def test_repeated_leader_report_accepted() -> None:
    checker = new_checker()
    storage = storage_with([Entry(1, 1)])

    checker.leader_elected("n1", 3, storage)
    checker.leader_elected("n1", 3, storage)
    checker.leader_elected("n2", 4, storage)

    assert checker.violations == []


def test_conflicting_entries_break_log_matching() -> None:
    checker = new_checker()
    first = storage_with([Entry(1, 1), Entry(2, 2, data=b"x")])
    second = storage_with([Entry(1, 1), Entry(2, 2, data=b"y")])

    checker.entries_persisted("n1", (Entry(2, 2, data=b"x"),), first)
    checker.entries_persisted("n2", (Entry(2, 2, data=b"y"),), second)

    assert [violation.kind for violation in checker.violations] == ["log_matching"]


def test_different_previous_term_breaks_log_matching() -> None:
    checker = new_checker()
    first = storage_with([Entry(1, 1), Entry(2, 3)])
    second = storage_with([Entry(1, 2), Entry(2, 3)])

    checker.entries_persisted("n1", (Entry(2, 3),), first)
    checker.entries_persisted("n2", (Entry(2, 3),), second)

    assert [violation.kind for violation in checker.violations] == ["log_matching"]
    assert "follows term 2 on n2 but term 1 on n1" in checker.violations[0].detail


def test_different_applied_entries_caught() -> None:
    checker = new_checker()

    checker.entry_applied("n1", Entry(1, 1, data=b"a"))
    checker.entry_applied("n2", Entry(1, 1, data=b"b"))

    assert [violation.kind for violation in checker.violations] == ["state_machine_safety"]


def test_index_applied_twice_caught() -> None:
    checker = new_checker()
    checker.node_started("n1", 0)

    checker.entry_applied("n1", Entry(1, 1))
    checker.entry_applied("n1", Entry(1, 1))

    assert [violation.kind for violation in checker.violations] == ["state_machine_safety"]
    assert "applied index 1, expected 2" in checker.violations[0].detail


def test_leader_missing_committed_entry_caught() -> None:
    checker = new_checker()
    checker.entry_applied("n1", Entry(1, 1))
    checker.entry_applied("n1", Entry(2, 1, data=b"committed"))

    checker.leader_elected("n2", 2, storage_with([Entry(1, 1)]))

    assert [violation.kind for violation in checker.violations] == ["leader_completeness"]


def test_hash_mismatch_caught() -> None:
    checker = new_checker()

    checker.state_hashed("n1", 5, 0x1234)
    checker.state_hashed("n2", 5, 0x1234)
    checker.state_hashed("n3", 5, 0x9999)

    assert [violation.kind for violation in checker.violations] == ["state_hash_mismatch"]
    assert checker.hashes_compared == 2


# --- Planted bugs in whole runs ---


def test_double_apply_caught_by_hash_check() -> None:
    result = Simulation(SimConfig(seed=0, faults=(), injected_bug=BUG_DOUBLE_APPLY)).run()

    assert not result.ok
    violation = result.violations[0]
    assert violation.kind == "state_hash_mismatch"
    assert "hash_kv" in violation.detail
    assert "n1" in violation.detail


def test_stale_read_caught_by_linearizability_check() -> None:
    failing = []
    for seed in range(10):
        result = Simulation(SimConfig(seed=seed, injected_bug=BUG_STALE_READ)).run()
        if not result.ok:
            failing.append(result)

    assert failing, "ten seeds with reads served from local state found no stale read"
    result = failing[0]
    assert [violation.kind for violation in result.violations] == ["linearizability"]
    report = render_report(result)
    assert "not linearizable" in report
    assert "cannot be linearized" in report
    assert f"--seed-start {result.config.seed}" in report


def test_lost_acknowledged_write_caught() -> None:
    simulation = Simulation(SimConfig(seed=3, faults=()))
    result = simulation.run()
    assert result.ok
    real_write = simulation.clients[0].acknowledged_writes[0]

    simulation.clients[0].acknowledged_writes.append(
        AcknowledgedWrite(op_id=9999, key=real_write.key, value=b"never written", revision=real_write.revision)
    )
    simulation._check_durability()

    violation = simulation.checker.violations[-1]
    assert violation.kind == "durability"
    assert "op 9999 was acknowledged" in violation.detail
