"""Raft's safety properties and replica agreement, checked while a simulation runs.

Nodes report what they persist, apply and hash, and the checker compares each
report with what every other node reported before. Each check is incremental, so
it runs after every step at a cost that does not grow with the cluster:

- election safety: at most one node becomes leader in a term;
- log matching: two persisted entries with the same index and term hold the same
  command and follow an entry of the same term. By induction over the index,
  their logs are then equal up to that index;
- leader completeness: a new leader's log contains every entry that any node applied
  (applied entries are committed), except entries its snapshot covers;
- state machine safety: no two nodes apply different entries at one index, and
  each node applies indexes one after another;
- replica agreement: the MVCC `hash_kv` that nodes compute after applying an
  index is equal on every node.

The properties are those of figure 3 of the Raft paper (Ongaro and Ousterhout,
"In Search of an Understandable Consensus Algorithm", 2014). A broken property
becomes a `Violation`; the simulator stops at the first one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from rayconf.actors.raft import Entry, MemoryStorage, NodeId, StorageCompacted, StorageUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken property: its kind, when, on which node, and the evidence."""

    kind: str
    time_ms: int
    node_id: NodeId
    detail: str

    def describe(self) -> str:
        return f"{self.kind} at {self.time_ms} ms on {self.node_id or 'cluster'}: {self.detail}"


@dataclass(slots=True)
class _PersistedEntry:
    entry: Entry
    # Term of the entry before it in the log that persisted it; None when compacted.
    previous_term: int | None
    node_id: NodeId


@dataclass(slots=True)
class SafetyChecker:
    """Cluster-wide records of leaders, entries, applied indexes and state hashes."""

    clock: Callable[[], int]
    violations: list[Violation] = field(default_factory=list)
    leaders_by_term: dict[int, NodeId] = field(default_factory=dict)
    # (index, term) -> the first entry persisted there.
    persisted: dict[tuple[int, int], _PersistedEntry] = field(default_factory=dict)
    # index -> (entry, node) of the first application at that index.
    applied: dict[int, tuple[Entry, NodeId]] = field(default_factory=dict)
    # index -> (hash_kv, node) of the first hash taken after applying that index.
    hashes: dict[int, tuple[int, NodeId]] = field(default_factory=dict)
    # Last index each node applied; reset when it restarts or installs a snapshot.
    applied_index_by_node: dict[NodeId, int] = field(default_factory=dict)
    highest_applied_index: int = 0
    elections: int = 0
    hashes_compared: int = 0

    def _violate(self, kind: str, node_id: NodeId, detail: str) -> None:
        violation = Violation(kind, self.clock(), node_id, detail)
        logger.warning("safety violation: %s", violation.describe())
        self.violations.append(violation)

    # --- Reports from nodes ---

    def leader_elected(self, node_id: NodeId, term: int, storage: MemoryStorage) -> None:
        self.elections += 1
        previous = self.leaders_by_term.setdefault(term, node_id)
        if previous != node_id:
            self._violate(
                "election_safety", node_id,
                f"{node_id} became leader of term {term}, which {previous} already leads",
            )
            return
        self._check_leader_completeness(node_id, term, storage)

    def _check_leader_completeness(self, node_id: NodeId, term: int, storage: MemoryStorage) -> None:
        last_index = storage.last_index()
        if self.highest_applied_index > last_index:
            self._violate(
                "leader_completeness", node_id,
                f"leader of term {term} has last index {last_index}, below the applied "
                f"index {self.highest_applied_index}",
            )
            return
        first_index = storage.first_index()
        for index in range(first_index, self.highest_applied_index + 1):
            committed = self.applied.get(index)
            if committed is None:
                continue
            entry, applied_by = committed
            if storage.term(index) != entry.term:
                self._violate(
                    "leader_completeness", node_id,
                    f"leader of term {term} has term {storage.term(index)} at index {index}, "
                    f"but {applied_by} applied an entry of term {entry.term} there",
                )
                return

    def entries_persisted(self, node_id: NodeId, entries: tuple[Entry, ...], storage: MemoryStorage) -> None:
        for entry in entries:
            try:
                previous_term: int | None = storage.term(entry.index - 1)
            except (StorageCompacted, StorageUnavailable):
                previous_term = None
            record = _PersistedEntry(entry, previous_term, node_id)
            seen = self.persisted.setdefault((entry.index, entry.term), record)
            if seen is record:
                continue
            if seen.entry != entry:
                self._violate(
                    "log_matching", node_id,
                    f"index {entry.index} term {entry.term}: {node_id} persisted {entry!r}, "
                    f"{seen.node_id} persisted {seen.entry!r}",
                )
                return
            if None not in (seen.previous_term, previous_term) and seen.previous_term != previous_term:
                self._violate(
                    "log_matching", node_id,
                    f"entry at index {entry.index} term {entry.term} follows term {previous_term} "
                    f"on {node_id} but term {seen.previous_term} on {seen.node_id}",
                )
                return

    def node_started(self, node_id: NodeId, applied_index: int) -> None:
        """Record that a node (re)starts or installed a snapshot at `applied_index`."""
        self.applied_index_by_node[node_id] = applied_index

    def entry_applied(self, node_id: NodeId, entry: Entry) -> None:
        expected_index = self.applied_index_by_node.get(node_id, 0) + 1
        if entry.index != expected_index:
            self._violate(
                "state_machine_safety", node_id,
                f"{node_id} applied index {entry.index}, expected {expected_index}",
            )
        self.applied_index_by_node[node_id] = entry.index
        seen = self.applied.setdefault(entry.index, (entry, node_id))
        if seen[0] != entry:
            self._violate(
                "state_machine_safety", node_id,
                f"index {entry.index}: {node_id} applied {entry!r}, {seen[1]} applied {seen[0]!r}",
            )
        self.highest_applied_index = max(self.highest_applied_index, entry.index)

    def state_hashed(self, node_id: NodeId, index: int, state_hash: int) -> None:
        seen = self.hashes.setdefault(index, (state_hash, node_id))
        if seen[1] != node_id:
            self.hashes_compared += 1
        if seen[0] != state_hash:
            self._violate(
                "state_hash_mismatch", node_id,
                f"after index {index}: hash_kv {state_hash:#018x} on {node_id}, "
                f"{seen[0]:#018x} on {seen[1]}",
            )
