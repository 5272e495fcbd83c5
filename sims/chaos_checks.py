"""Checks of a chaos run after its faults healed.

- convergence: one leader, and every replica applied the same index, within a timeout;
- state hashes: every replica's `hash_kv` at one revision is equal;
- durability: every acknowledged write is in every replica's committed log at
  the revision the client was given;
- linearizability: the recorded history, by `rayconf.sims.linearizability`;
- watches: each watch stream, by `rayconf.sims.watch_checker`, against the
  leader's committed log replayed into a fresh MVCC.

Each check returns violation messages grouped by kind; an empty dict passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.watch_records import WatchBatch
from rayconf.clients.watch import Watch
from rayconf.errors import RayconfError, Unavailable
from rayconf.sims.chaos_workload import AcknowledgedWrite
from rayconf.sims.history import Operation
from rayconf.sims.linearizability import CheckResult, Outcome, check_history
from rayconf.sims.watch_checker import check_watch_stream
from rayconf.sims.watch_history import replay_committed_log
from rayconf.store.mvcc import MVCC

logger = logging.getLogger(__name__)

CONVERGENCE_TIMEOUT_S = 90.0
WATCH_DRAIN_TIMEOUT_S = 30.0
# Violations kept per kind; the rest are counted in the last message.
MESSAGES_PER_KIND_MAX = 5

Violations = dict[str, list[str]]


def add_violation(violations: Violations, kind: str, message: str) -> None:
    messages = violations.setdefault(kind, [])
    if len(messages) < MESSAGES_PER_KIND_MAX:
        messages.append(message)


class WatchReader(threading.Thread):
    """A thread that reads one watch until stopped and keeps every batch the watch delivered."""

    def __init__(self, name: str, watched: Watch, stop: threading.Event) -> None:
        super().__init__(name=f"watch-reader-{name}", daemon=True)
        self.watched = watched
        self.stop = stop
        self.batches: list[WatchBatch] = []
        self.error: RayconfError | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                batch = self.watched.get(0.1)
            except RayconfError as error:
                self.error = error
                return
            if batch is not None:
                self.batches.append(batch)

    def wait_for(self, revision: int, timeout_s: float) -> bool:
        """Return whether a batch at or above `revision` arrived within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.batches and self.batches[-1].revision >= revision:
                return True
            if self.error is not None:
                return False
            time.sleep(0.05)
        return False


def wait_for_convergence(spec: ClusterSpec, timeout_s: float = CONVERGENCE_TIMEOUT_S) -> tuple[str, dict[str, Any]]:
    """Wait for a leader and for every replica to apply the same index; return (leader, member statuses).

    Raises `Unavailable` with the last statuses when that takes longer than `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        current = cluster.status(spec)
        members = current["members"]
        applied = {member: info.get("applied_index") for member, info in members.items()}
        healthy = all(info.get("health") == "ok" for info in members.values())
        if current["leader"] and healthy and len(set(applied.values())) == 1:
            return current["leader"], members
        if time.monotonic() > deadline:
            raise Unavailable(f"replicas did not converge within {timeout_s} s: leader {current['leader']!r}, "
                              f"applied indexes {applied}")
        time.sleep(0.25)


def check_state_hashes(spec: ClusterSpec, revision: int) -> Violations:
    """Compare every replica's hash of all versions at or below `revision`."""
    violations: Violations = {}
    hashes = {}
    for member in spec.members():
        handle = cluster.find_replica(spec, member)
        _, hashes[member] = ray.get(handle.state_hash.remote(revision), timeout=30.0)
    if len(set(hashes.values())) > 1:
        add_violation(violations, "state-hash", f"replicas disagree at revision {revision}: {hashes}")
    return violations


def replay_all(spec: ClusterSpec) -> dict[str, MVCC]:
    """Replay every replica's committed log into its own MVCC."""
    return {member: replay_committed_log(spec, member) for member in spec.members()}


def check_durability(replayed: dict[str, MVCC], acknowledged: Sequence[AcknowledgedWrite]) -> Violations:
    """Check that each acknowledged change is in every replica's log at the acknowledged revision."""
    violations: Violations = {}
    for member, state in replayed.items():
        found = {(event.kv.mod_revision, event.type, event.kv.key, event.kv.value) for event in state.events(1)}
        lost = [write for write in acknowledged
                if any((write.revision, kind, key, value) not in found for kind, key, value in write.changes)]
        for write in lost:
            add_violation(violations, "durability",
                          f"{member} lacks acknowledged {write.request} at revision {write.revision}")
    return violations


def check_linearizability(history: Sequence[Operation], timeout_s: float) -> tuple[Violations, CheckResult]:
    result = check_history(history, timeout_s=timeout_s)
    violations: Violations = {}
    if result.outcome is Outcome.NOT_LINEARIZABLE:
        for partition in result.partitions:
            if partition.outcome is Outcome.NOT_LINEARIZABLE:
                add_violation(violations, "linearizability", f"keys {list(partition.keys)} are not linearizable")
    return violations, result


def check_watches(readers: dict[str, WatchReader], reference: MVCC) -> Violations:
    """Drain each watch up to the reference's last matching revision, then check its stream."""
    violations: Violations = {}
    for name, reader in readers.items():
        watched = reader.watched
        events = reference.events(watched.start_revision)
        last = max((event.kv.mod_revision for event in events if watched.request.matches_key(event.kv.key)),
                   default=0)
        if not reader.wait_for(last, WATCH_DRAIN_TIMEOUT_S):
            tail = reader.batches[-1].revision if reader.batches else 0
            add_violation(violations, "watch/stalled",
                          f"watch {name} stopped at revision {tail}, below {last}; error {reader.error!r}")
            continue
        result = check_watch_stream(watched.request, watched.start_revision, reader.batches, events,
                                    resumes=watched.resumes, history_through=reference.revision)
        for guarantee, messages in result.violations.items():
            for message in messages:
                add_violation(violations, f"watch/{guarantee}", f"watch {name}: {message}")
    return violations
