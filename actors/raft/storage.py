"""The stable log as the Raft core reads it, and an in-memory implementation.

The core only reads from `Storage`. The caller writes to it while handling a
`Ready` (append entries, set the hard state, apply a snapshot) and compacts it after
taking a snapshot of its state machine.
"""

from __future__ import annotations

from typing import Protocol

from rayconf.actors.raft.errors import (
    SnapshotOutOfDate,
    StorageCompacted,
    StorageUnavailable,
)
from rayconf.actors.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    NodeId,
    Snapshot,
    SnapshotMetadata,
)
from rayconf.errors import InvalidRequest

NO_SIZE_LIMIT = 2**63


def limit_entries_size(entries: list[Entry], max_size_bytes: int) -> list[Entry]:
    """Return the longest prefix of `entries` within `max_size_bytes`, but at least
    one entry, so that one entry above the limit can still be sent."""
    if not entries:
        return entries
    total_bytes = entries[0].size_bytes()
    for count in range(1, len(entries)):
        total_bytes += entries[count].size_bytes()
        if total_bytes > max_size_bytes:
            return entries[:count]
    return entries


class Storage(Protocol):
    """Read access to the persisted log, hard state and latest snapshot.

    Indexes run from `first_index()` to `last_index()`. The entry at
    `first_index() - 1` is compacted, but its term is still available because it is
    the index of the latest snapshot.
    """

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, low: int, high: int, max_size_bytes: int) -> list[Entry]:
        """Return entries in [low, high), cut at `max_size_bytes` but keeping at
        least the first one.

        Raises StorageCompacted if `low` is below `first_index()` and
        StorageUnavailable if `high` is above `last_index() + 1`.
        """
        ...

    def term(self, index: int) -> int:
        """Return the term of the entry at `index`, valid from `first_index() - 1`.

        Raises StorageCompacted or StorageUnavailable outside that range.
        """
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """Return the latest snapshot. May raise SnapshotTemporarilyUnavailable.

        The leader sends this snapshot to followers whose entries are compacted.
        Its ConfState must list every such follower, because a node ignores a
        snapshot of a configuration it is not part of. After adding a member,
        create a new snapshot, or raise SnapshotTemporarilyUnavailable until then.
        """
        ...


def bootstrap_entries(
    voters: tuple[NodeId, ...], learners: tuple[NodeId, ...] = ()
) -> tuple[list[Entry], HardState]:
    """Return the first log entries and hard state of a new cluster.

    Entry i (from 1) adds one member, voters first, at term 1, and all are
    committed. Every founding member stores the same entries, so a member added
    later rebuilds the founding configuration by replaying the log.
    """
    if not voters:
        raise InvalidRequest("a new cluster needs at least one voter")
    changes = [ConfChangeSingle(ConfChangeType.ADD_NODE, node_id) for node_id in voters]
    changes += [ConfChangeSingle(ConfChangeType.ADD_LEARNER_NODE, node_id) for node_id in learners]
    entries = [
        Entry(
            index=position + 1,
            term=1,
            type=EntryType.CONF_CHANGE,
            data=ConfChange(changes=(change,)).encode(),
        )
        for position, change in enumerate(changes)
    ]
    return entries, HardState(term=1, commit=len(entries))


class MemoryStorage:
    """A `Storage` that keeps everything in memory, for tests and simulations.

    A new storage is empty. Call `bootstrap` on each founding member of a new
    cluster; a member that joins later starts empty and gets the log from the leader.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMetadata())
        # _entries[0] is a placeholder at the snapshot's index and term, so
        # _entries[i] has log index i + _entries[0].index.
        self._entries: list[Entry] = [Entry(index=0, term=0)]

    # --- Storage ---

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def entries(self, low: int, high: int, max_size_bytes: int) -> list[Entry]:
        offset = self._entries[0].index
        if low <= offset:
            raise StorageCompacted(f"index {low} is compacted (compacted up to {offset})")
        if high > self.last_index() + 1:
            raise StorageUnavailable(
                f"entries up to {high - 1} requested, last stored index is {self.last_index()}"
            )
        selected = self._entries[low - offset : high - offset]
        return limit_entries_size(selected, max_size_bytes)

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise StorageCompacted(f"index {index} is compacted (compacted up to {offset})")
        if index - offset >= len(self._entries):
            raise StorageUnavailable(
                f"term of {index} requested, last stored index is {self.last_index()}"
            )
        return self._entries[index - offset].term

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- Writes done by the caller ---

    def bootstrap(self, voters: tuple[NodeId, ...], learners: tuple[NodeId, ...] = ()) -> None:
        """Write the founding configuration; see `bootstrap_entries`."""
        if self.last_index() != 0 or not self.hard_state.is_empty():
            raise InvalidRequest(
                f"bootstrap needs empty storage, but it contains entries up to "
                f"{self.last_index()}; bootstrap only the founding members of a new cluster"
            )
        entries, hard_state = bootstrap_entries(voters, learners)
        self.append(entries)
        self.hard_state = hard_state

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log and the snapshot with `snapshot`, received from a leader."""
        if snapshot.metadata.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(
                f"snapshot at {snapshot.metadata.index} is not newer than the stored "
                f"snapshot at {self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(index=snapshot.metadata.index, term=snapshot.metadata.term)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine at applied `index`; return it."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(
                f"snapshot at {index} is not newer than the stored snapshot at "
                f"{self._snapshot.metadata.index}"
            )
        if index > self.last_index():
            raise StorageUnavailable(
                f"snapshot at {index} requested, last stored index is {self.last_index()}"
            )
        metadata = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(metadata=metadata, data=data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Drop entries up to and including `compact_index`, which must already be
        covered by a snapshot so that a lagging follower can still catch up."""
        offset = self._entries[0].index
        if compact_index <= offset:
            raise StorageCompacted(f"index {compact_index} is already compacted (up to {offset})")
        if compact_index > self.last_index():
            raise StorageUnavailable(
                f"compact to {compact_index} requested, last stored index is {self.last_index()}"
            )
        placeholder = Entry(index=compact_index, term=self._entries[compact_index - offset].term)
        self._entries = [placeholder] + self._entries[compact_index - offset + 1 :]

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append `entries`, replacing stored entries at the same or higher indexes."""
        if not entries:
            return
        first_stored = self.first_index()
        last_new = entries[0].index + len(entries) - 1
        if last_new < first_stored:
            return
        new_entries = list(entries)
        if first_stored > new_entries[0].index:
            new_entries = new_entries[first_stored - new_entries[0].index :]
        keep_count = new_entries[0].index - self._entries[0].index
        if keep_count > len(self._entries):
            raise StorageUnavailable(
                f"append at {new_entries[0].index} leaves a gap after last index "
                f"{self.last_index()}"
            )
        self._entries = self._entries[:keep_count] + new_entries
