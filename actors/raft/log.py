"""The Raft log: stable entries from `Storage` followed by the unstable tail.

Invariant: `applied <= committed <= last_index()`. Committed entries never change. Entries above
`committed` may be replaced when a leader sends a conflicting suffix.
"""

from __future__ import annotations

import logging

from rayconf.actors.raft.errors import StorageCompacted, StorageUnavailable
from rayconf.actors.raft.log_unstable import UnstableLog
from rayconf.actors.raft.storage import NO_SIZE_LIMIT, Storage, limit_entries_size
from rayconf.actors.raft.types import Entry, Snapshot

logger = logging.getLogger(__name__)


class RaftLog:
    __slots__ = ("storage", "unstable", "committed", "applied", "max_applying_size_bytes")

    def __init__(self, storage: Storage, max_applying_size_bytes: int = NO_SIZE_LIMIT) -> None:
        self.storage = storage
        first_index = storage.first_index()
        last_index = storage.last_index()
        self.unstable = UnstableLog(offset=last_index + 1)
        # The snapshot at first_index - 1 is committed and applied by definition.
        self.committed = first_index - 1
        self.applied = first_index - 1
        self.max_applying_size_bytes = max_applying_size_bytes

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, "
            f"unstable_entries={len(self.unstable.entries)})"
        )

    # --- Positions ---

    def first_index(self) -> int:
        index = self.unstable.maybe_first_index()
        if index is not None:
            return index
        return self.storage.first_index()

    def last_index(self) -> int:
        index = self.unstable.maybe_last_index()
        if index is not None:
            return index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """Return the term at `index`. Raises StorageCompacted or StorageUnavailable."""
        if index < self.first_index() - 1:
            raise StorageCompacted(f"index {index} is compacted")
        if index > self.last_index():
            raise StorageUnavailable(f"index {index} is above last index {self.last_index()}")
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (StorageCompacted, StorageUnavailable):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (StorageCompacted, StorageUnavailable):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Return whether a log ending at (last_index, last_term) is at least as
        up to date as this one: a later last term wins, and with equal last terms
        the longer log wins. A node votes only for candidates whose log passes."""
        own_last_term = self.last_term()
        return last_term > own_last_term or (
            last_term == own_last_term and last_index >= self.last_index()
        )

    # --- Appending ---

    def append(self, entries: list[Entry]) -> int:
        """Append entries that follow or replace uncommitted entries; return the
        new last index."""
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        assert after >= self.committed, f"append after {after} is below commit {self.committed}"
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Return the index of the first entry whose term differs from the log's,
        or of the first new entry, or 0 if all entries are already present."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Return the largest `guess <= index` whose term is at most `term` or unknown,
        and the term at `guess` (0 when unknown).

        A follower uses this to build an append rejection hint and the leader to
        pick the next probe, so that one round trip skips a whole divergent term.
        """
        while index > 0:
            try:
                own_term = self.term(index)
            except (StorageCompacted, StorageUnavailable):
                return index, 0
            if own_term <= term:
                return index, own_term
            index -= 1
        return 0, 0

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Append a leader's entries that follow (index, log_term).

        Returns the index of the last new entry, or None when the log has no entry
        (index, log_term), in which case the follower must reject.
        """
        if not self.match_term(index, log_term):
            return None
        last_new_index = index + len(entries)
        conflict_index = self.find_conflict(entries)
        if conflict_index != 0:
            assert conflict_index > self.committed, (
                f"entry {conflict_index} conflicts with the committed log (commit "
                f"{self.committed})"
            )
            self.append(list(entries[conflict_index - (index + 1) :]))
        self.commit_to(min(committed, last_new_index))
        return last_new_index

    # --- Commit and apply ---

    def commit_to(self, index: int) -> None:
        if index <= self.committed:
            return
        assert index <= self.last_index(), (
            f"commit {index} is above last index {self.last_index()}; the log is corrupt "
            "or was truncated"
        )
        self.committed = index

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit up to `max_index` if the entry there is from `term`, the leader's
        current term. Counting replicas of an older-term entry never commits it."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        assert self.applied <= index <= self.committed, (
            f"applied index {index} outside [{self.applied}, {self.committed}]"
        )
        self.applied = index

    def has_next_committed_entries(self) -> bool:
        return self.committed > max(self.applied, self.first_index() - 1)

    def next_committed_entries(self) -> list[Entry]:
        """Return committed entries not yet applied, up to `max_applying_size_bytes`."""
        low = max(self.applied + 1, self.first_index())
        if self.committed + 1 <= low:
            return []
        return self.slice(low, self.committed + 1, self.max_applying_size_bytes)

    # --- Reading ---

    def entries(self, low: int, max_size_bytes: int) -> list[Entry]:
        if low > self.last_index():
            return []
        return self.slice(low, self.last_index() + 1, max_size_bytes)

    def slice(self, low: int, high: int, max_size_bytes: int) -> list[Entry]:
        """Return entries in [low, high) within `max_size_bytes` (at least one).

        Raises StorageCompacted when `low` is compacted.
        """
        if low < self.first_index():
            raise StorageCompacted(f"index {low} is compacted")
        assert high <= self.last_index() + 1, f"slice end {high} above last index"
        if low == high:
            return []
        result: list[Entry] = []
        offset = self.unstable.offset
        if low < offset:
            stored = self.storage.entries(low, min(high, offset), max_size_bytes)
            # The storage returned fewer entries than asked: the size limit cut them.
            if len(stored) < min(high, offset) - low:
                return stored
            result = stored
        if high > offset:
            result = result + self.unstable.slice(max(low, offset), high)
        return limit_entries_size(result, max_size_bytes)

    def all_entries(self) -> list[Entry]:
        """Return every entry from first_index on, for tests and status output."""
        return self.entries(self.first_index(), NO_SIZE_LIMIT)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # --- Persistence and snapshots ---

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: int) -> None:
        self.unstable.stable_snapshot_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        logger.info(
            "log restores snapshot at index %d term %d",
            snapshot.metadata.index,
            snapshot.metadata.term,
        )
        self.committed = snapshot.metadata.index
        self.unstable.restore(snapshot)

    def has_pending_snapshot(self) -> bool:
        return self.unstable.snapshot is not None
