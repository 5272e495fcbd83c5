"""The version store: every retained version of every key, in three layers.

The layers, newest first:

- `live`: the current version of each existing key, a dict of compact tuples,
  with `live_index`, a sorted list of the same keys, for ranges and listings.
- the tail: versions superseded since the last flush, and tombstones, as
  Python tuples per key, plus the change records of recent revisions.
- segments: older superseded versions and change records in Arrow tables
  (see `segments.py`), oldest segment first.

A version enters the tail only when a newer version or a delete supersedes it,
so a store of a million keys written once keeps them in `live` alone and the
tail stays empty. `all_index` lists every key with any retained version, live
or deleted, and is what reads at an older revision walk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from sortedcontainers import SortedList

from rayconf.store.keys import RANGE_END_OPEN
from rayconf.store.records import ChangeRecord, KeyValue
from rayconf.store.segments import KIND_DELETE, KIND_PUT, Segment, VersionRow, build_segment


class LiveRecord(NamedTuple):
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


def live_to_kv(key: bytes, record: LiveRecord) -> KeyValue:
    return KeyValue(key, record.value, record.create_revision, record.mod_revision, record.version)


def row_to_kv(key: bytes, row: VersionRow) -> KeyValue | None:
    """Return the key-value of a stored row, or None for a tombstone."""
    revision, kind, value, create_revision, version = row
    if kind == KIND_DELETE:
        return None
    return KeyValue(key, value, create_revision, revision, version)


class VersionStore:
    """All retained versions, with lookups by key and revision.

    Invariant: for each key, revisions increase in this order of layers: older
    segments, newer segments, the tail, then the live record.
    """

    def __init__(self) -> None:
        self.live: dict[bytes, LiveRecord] = {}
        self.live_index: SortedList = SortedList()
        self.all_index: SortedList = SortedList()
        self.tail: dict[bytes, list[VersionRow]] = {}
        self.tail_rows = 0
        self.tail_changes: dict[int, ChangeRecord] = {}
        self.segments: list[Segment] = []
        self.segment_sequence = 0

    # --- Writes. ---

    def put(self, key: bytes, value: bytes, revision: int) -> tuple[KeyValue | None, KeyValue]:
        """Make `value` the live version of `key` at `revision`; return (previous, new)."""
        previous = self.live.get(key)
        if previous is None:
            record = LiveRecord(value, revision, revision, 1)
            self.live_index.add(key)
            if not self._is_retained(key):
                self.all_index.add(key)
            previous_kv = None
        else:
            assert previous.mod_revision < revision, "a key changes at most once per revision"
            self._push_tail(key, (previous.mod_revision, KIND_PUT, previous.value,
                                  previous.create_revision, previous.version))
            record = LiveRecord(value, previous.create_revision, revision, previous.version + 1)
            previous_kv = live_to_kv(key, previous)
        self.live[key] = record
        return previous_kv, live_to_kv(key, record)

    def delete(self, key: bytes, revision: int) -> KeyValue | None:
        """Delete `key` at `revision`, leaving a tombstone; return the deleted version."""
        previous = self.live.pop(key, None)
        if previous is None:
            return None
        assert previous.mod_revision < revision, "a key changes at most once per revision"
        self.live_index.remove(key)
        self._push_tail(key, (previous.mod_revision, KIND_PUT, previous.value,
                              previous.create_revision, previous.version))
        self._push_tail(key, (revision, KIND_DELETE, b"", 0, 0))
        return live_to_kv(key, previous)

    def record_change(self, change: ChangeRecord) -> None:
        self.tail_changes[change.revision] = change

    def _push_tail(self, key: bytes, row: VersionRow) -> None:
        self.tail.setdefault(key, []).append(row)
        self.tail_rows += 1

    def _is_retained(self, key: bytes) -> bool:
        position: int = self.all_index.bisect_left(key)
        if position >= len(self.all_index):
            return False
        found: bytes = self.all_index[position]
        return found == key

    # --- Reads. ---

    def version_at(self, key: bytes, revision: int) -> KeyValue | None:
        """Return the version of `key` visible at `revision`, or None if absent then."""
        record = self.live.get(key)
        if record is not None and record.mod_revision <= revision:
            return live_to_kv(key, record)
        found = _last_at_or_below(self.tail.get(key, ()), revision)
        if found is not None:
            return row_to_kv(key, found)
        for segment in reversed(self.segments):
            found = _last_at_or_below(segment.versions_of(key), revision)
            if found is not None:
                return row_to_kv(key, found)
        return None

    def keys_in_range(self, start: bytes, end: bytes, *, live_only: bool) -> Iterator[bytes]:
        index = self.live_index if live_only else self.all_index
        if end == RANGE_END_OPEN:
            return iter(index.irange(minimum=start))
        return iter(index.irange(minimum=start, maximum=end, inclusive=(True, False)))

    def count_live(self, start: bytes, end: bytes) -> int:
        first: int = self.live_index.bisect_left(start)
        last: int = len(self.live_index) if end == RANGE_END_OPEN else self.live_index.bisect_left(end)
        return max(0, last - first)

    def rows_of(self, key: bytes) -> list[VersionRow]:
        """Return every retained row of `key` in revision order, live version last."""
        rows: list[VersionRow] = []
        for segment in self.segments:
            rows.extend(segment.versions_of(key))
        rows.extend(self.tail.get(key, ()))
        record = self.live.get(key)
        if record is not None:
            rows.append((record.mod_revision, KIND_PUT, record.value, record.create_revision, record.version))
        return rows

    def change(self, revision: int) -> ChangeRecord | None:
        change = self.tail_changes.get(revision)
        if change is not None:
            return change
        for segment in reversed(self.segments):
            change = segment.change(revision)
            if change is not None:
                return change
        return None

    def iter_all_rows(self) -> Iterator[tuple[bytes, VersionRow]]:
        """Yield (key, row) for every retained version, in (key, revision) order."""
        for key in self.all_index:
            for row in self.rows_of(key):
                yield key, row

    # --- Segments. ---

    def flush(self) -> Segment | None:
        """Move the tail into a new segment; return it, or None when the tail is empty."""
        if not self.tail_rows and not self.tail_changes:
            return None
        rows = [(key, row) for key, key_rows in self.tail.items() for row in key_rows]
        segment = build_segment(self._next_segment_name(), rows, list(self.tail_changes.values()))
        self.segments.append(segment)
        self.tail.clear()
        self.tail_rows = 0
        self.tail_changes.clear()
        return segment

    def replace_segments(self, segment: Segment | None) -> None:
        self.segments = [] if segment is None else [segment]

    def _next_segment_name(self) -> str:
        self.segment_sequence += 1
        return f"segment-{self.segment_sequence:012d}"

    def next_segment_name(self) -> str:
        return self._next_segment_name()


def _last_at_or_below(rows: Iterable[VersionRow], revision: int) -> VersionRow | None:
    found: VersionRow | None = None
    for row in rows:
        if row[0] > revision:
            break
        found = row
    return found
