"""Crashes lose unsynced writes but never an acknowledged one, and restarts rebuild state.

A crash-heavy run crashes a node every 20 to 100 simulated milliseconds, so the
cluster loses its leader, nodes restart from snapshots and replayed logs, and
unsynced hard states vanish. Every acknowledged write must still be on every
member at the revision its client saw.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from rayconf.actors.raft import StateType
from rayconf.sims.config import FaultKind, SimConfig
from rayconf.sims.simulator import Simulation

logging.getLogger("rayconf").setLevel(logging.CRITICAL)

CRASH_HEAVY = SimConfig(
    faults=(FaultKind.CRASH, FaultKind.COMPACT),
    operation_count=150,
    fault_interval_ms_min=20,
    fault_interval_ms_max=100,
    fault_duration_ms_min=50,
    fault_duration_ms_max=500,
)


def test_crash_heavy_seeds_keep_acknowledged_writes() -> None:
    crashes = 0
    writes_lost = 0
    for seed in range(6):
        result = Simulation(replace(CRASH_HEAVY, seed=seed)).run()

        assert result.ok, "\n".join(violation.describe() for violation in result.violations)
        assert result.statistics["acknowledged_writes"] > 0
        assert result.linearizability is not None and result.linearizability.ok
        assert len(set(result.state_hashes.values())) == 1
        crashes += result.faults.get("crash", 0)
        writes_lost += result.statistics["disk_writes_lost"]
    assert crashes >= 30
    assert writes_lost > 0, "no crash lost an unsynced write; the disk model is not exercised"


def test_restart_rebuilds_state_from_snapshot_and_log() -> None:
    simulation = Simulation(SimConfig(seed=4, faults=(), operation_count=80))
    simulation.start_workload()
    simulation.advance(1_500)
    follower = next(node for node in simulation.nodes.values() if node.role is StateType.FOLLOWER)
    assert follower.compact(keep_entries=2)
    simulation.advance(500)
    applied_before = follower.applied_index
    hash_before = follower.mvcc.hash_kv()

    simulation.crash_node(follower)
    simulation.start_node(follower)

    # The MVCC state comes back from the snapshot alone, then the log replays.
    assert follower.disk.live.snapshot().metadata.index > 0
    simulation.process(follower)
    assert follower.applied_index == applied_before
    assert follower.mvcc.hash_kv() == hash_before
    simulation.advance(500)
    assert simulation.checker.violations == []


def test_lagging_node_catches_up_by_snapshot() -> None:
    simulation = Simulation(SimConfig(seed=2, faults=(), operation_count=300))
    simulation.start_workload()
    simulation.advance(300)
    leader = simulation.leader()
    assert leader is not None
    lagging = next(node for node in simulation.nodes.values() if node is not leader)
    simulation.crash_node(lagging)
    simulation.advance(1_000)
    leader = simulation.leader()
    assert leader is not None
    assert leader.compact(keep_entries=0)

    simulation.start_node(lagging)
    # Clients keep writing, so wait for the workload to end and the node to catch up.
    for _ in range(40):
        simulation.advance(250)
        if simulation.clients_running == 0 and lagging.applied_index == leader.applied_index:
            break

    assert simulation.node_counters["snapshots_installed"] >= 1
    assert lagging.applied_index == leader.applied_index
    assert lagging.mvcc.hash_kv() == leader.mvcc.hash_kv()
    assert simulation.checker.violations == []
