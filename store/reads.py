"""Read paths of the MVCC state: ranges, listings, history, events and hashes.

Reads at the current revision use the live dict and its sorted index alone.
Reads at an older revision walk every retained key and resolve each one
through the live record, the tail and the segments (see `versions.py`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from sortedcontainers import SortedList

from rayconf.store.keys import RANGE_END_OPEN, DirectoryEntry, in_range, iter_children, prefix_end
from rayconf.store.records import (
    Event,
    EventType,
    HistoryEntry,
    KeyValue,
    RangeRequest,
    RangeResponse,
)
from rayconf.store.segments import KIND_DELETE, KIND_PUT, VersionRow
from rayconf.store.versions import live_to_kv, row_to_kv

if TYPE_CHECKING:
    from rayconf.store.mvcc import MVCC


def range_at(state: MVCC, request: RangeRequest, revision: int, *, live: bool) -> RangeResponse:
    """Serve `request` at `revision`; `live` reads the live state, including a txn's own writes."""
    versions = state.versions
    if request.range_end is None:
        kv = _live_kv(state, request.key) if live else versions.version_at(request.key, revision)
        kvs = (kv,) if kv is not None else ()
        return _shape(request, kvs, len(kvs), more=False, revision=revision)

    start, end = request.key, request.range_end
    if live and request.count_only:
        return _shape(request, (), versions.count_live(start, end), more=False, revision=revision)

    found: list[KeyValue] = []
    count = 0
    limit = request.limit
    for key in versions.keys_in_range(start, end, live_only=live):
        kv = _live_kv(state, key) if live else versions.version_at(key, revision)
        if kv is None:
            continue
        count += 1
        if not request.count_only and (limit == 0 or len(found) < limit):
            found.append(kv)
        elif live:
            # The rest of the count comes from the index, without a walk.
            count = versions.count_live(start, end)
            break
    more = limit > 0 and count > len(found) and not request.count_only
    return _shape(request, tuple(found), count, more=more, revision=revision)


def _live_kv(state: MVCC, key: bytes) -> KeyValue | None:
    record = state.versions.live.get(key)
    return live_to_kv(key, record) if record is not None else None


def _shape(
    request: RangeRequest, kvs: tuple[KeyValue, ...], count: int, *, more: bool, revision: int
) -> RangeResponse:
    if request.count_only:
        kvs = ()
    elif request.keys_only:
        kvs = tuple(KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version) for kv in kvs)
    next_key = kvs[-1].key + b"\x00" if more and kvs else RANGE_END_OPEN
    return RangeResponse(kvs=kvs, count=count, more=more, revision=revision, next_key=next_key)


def list_children(state: MVCC, directory: bytes, revision: int) -> list[DirectoryEntry]:
    versions = state.versions
    if revision == state.revision:
        return list(iter_children(versions.live_index, directory))
    existing = SortedList(
        key
        for key in versions.keys_in_range(directory, prefix_end(directory), live_only=False)
        if versions.version_at(key, revision) is not None
    )
    return list(iter_children(existing, directory))


def history(state: MVCC, key: bytes, limit: int) -> list[HistoryEntry]:
    entries: list[HistoryEntry] = []
    previous: KeyValue | None = None
    for row in state.versions.rows_of(key):
        event = _row_event(key, row, previous)
        entries.append(HistoryEntry(event=event, change=state.versions.change(row[0])))
        previous = row_to_kv(key, row)
    return entries[-limit:] if limit else entries


def _row_event(key: bytes, row: VersionRow, previous: KeyValue | None) -> Event:
    kv = row_to_kv(key, row)
    if kv is None:
        return Event(EventType.DELETE, KeyValue(key, b"", 0, row[0], 0), previous)
    return Event(EventType.PUT, kv, previous)


def events_since(state: MVCC, start_revision: int, key: bytes, range_end: bytes | None) -> list[Event]:
    # NOTE: this scans every live key and every segment row, so it costs O(store
    # size) whatever the range. It serves catch-up below a watch window, not live watches.
    versions = state.versions
    candidates: list[tuple[bytes, VersionRow]] = []
    for segment in versions.segments:
        table = segment.versions
        recent = table.filter(pc.greater_equal(table.column("revision"), start_revision))
        candidates.extend(_table_rows(recent))
    for tail_key, rows in versions.tail.items():
        candidates.extend((tail_key, row) for row in rows if row[0] >= start_revision)
    for live_key, record in versions.live.items():
        if record.mod_revision >= start_revision:
            candidates.append((live_key, (record.mod_revision, KIND_PUT, record.value,
                                          record.create_revision, record.version)))

    events: list[Event] = []
    for row_key, row in sorted(candidates, key=lambda item: (item[1][0], item[0])):
        if not _matches(row_key, key, range_end):
            continue
        previous = versions.version_at(row_key, row[0] - 1)
        events.append(_row_event(row_key, row, previous))
    return events


def _matches(candidate: bytes, key: bytes, range_end: bytes | None) -> bool:
    if range_end is None:
        return candidate == key
    return in_range(candidate, key, range_end)


def hash_versions(state: MVCC, revision: int) -> int:
    """Return an order-independent 64-bit hash of the retained versions at or below `revision`.

    Each row is hashed with BLAKE2b and the row hashes are summed modulo 2**64,
    so the result does not depend on how versions are split across layers.
    """
    versions = state.versions
    total = 0
    count = 0
    for segment in versions.segments:
        for row_key, row in _table_rows(segment.versions):
            if row[0] <= revision:
                total += _row_hash(row_key, row)
                count += 1
    for tail_key, rows in versions.tail.items():
        for tail_row in rows:
            if tail_row[0] <= revision:
                total += _row_hash(tail_key, tail_row)
                count += 1
    for live_key, record in versions.live.items():
        if record.mod_revision <= revision:
            live_row = (record.mod_revision, KIND_PUT, record.value, record.create_revision, record.version)
            total += _row_hash(live_key, live_row)
            count += 1
    header = struct.pack(">QQQ", state.compact_revision, revision, count)
    return (total + int.from_bytes(hashlib.blake2b(header, digest_size=8).digest(), "big")) % (1 << 64)


def _table_rows(table: pa.Table) -> Iterator[tuple[bytes, VersionRow]]:
    """Yield (key, row) for every row of a segment's versions table, in table order."""
    columns = [table.column(name).to_pylist() for name in
               ("key", "revision", "kind", "value", "create_revision", "version")]
    for key, revision, kind, value, create_revision, version in zip(*columns):
        yield key, (revision, kind, value, create_revision, version)


def _row_hash(key: bytes, row: VersionRow) -> int:
    revision, kind, value, create_revision, version = row
    digest = hashlib.blake2b(digest_size=8)
    digest.update(struct.pack(">I", len(key)))
    digest.update(key)
    digest.update(struct.pack(">qbqqI", revision, kind, create_revision, version,
                              len(value)))
    digest.update(value)
    return int.from_bytes(digest.digest(), "big")
