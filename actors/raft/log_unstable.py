"""Log entries and a snapshot that the caller has not yet persisted."""

from __future__ import annotations

from rayconf.actors.raft.types import Entry, Snapshot


class UnstableLog:
    """The tail of the log that lives only in memory until a Ready persists it.

    Invariant: `entries[i]` has log index `i + offset`. When `snapshot` is set,
    `offset == snapshot.metadata.index + 1` at the time it was restored.
    """

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == index:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Forget entries up to `index` once persisted, unless a newer append replaced
        the entry at `index` in the meantime (then its term differs)."""
        stored_term = self.maybe_term(index)
        if stored_term is None or stored_term != term or index < self.offset:
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.metadata.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first_new = entries[0].index
        if first_new == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first_new <= self.offset:
            # Everything unstable is replaced; the log before `first_new` is stable.
            self.offset = first_new
            self.entries = list(entries)
        else:
            del self.entries[first_new - self.offset :]
            self.entries.extend(entries)

    def slice(self, low: int, high: int) -> list[Entry]:
        """Return entries in [low, high), which must lie within the unstable part."""
        upper = self.offset + len(self.entries)
        assert self.offset <= low <= high <= upper, (
            f"unstable slice [{low}, {high}) out of bounds [{self.offset}, {upper})"
        )
        return self.entries[low - self.offset : high - self.offset]
