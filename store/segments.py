"""Version segments: immutable Arrow tables of superseded versions.

A segment has two tables. `versions` has one row per superseded version or
tombstone, sorted by (key, revision); `changes` has one change record per
revision, sorted by revision. On disk each table is an Arrow IPC file whose
record batches are compressed with LZ4 frames. In memory the tables are
decompressed once at load, so lookups cost no I/O.

Segments are ordered by age: every version in a newer segment was superseded
after every version of the same key in an older one, which is why a lookup
walks segments from newest to oldest and stops at the first hit.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from rayconf.errors import SnapshotCorruption
from rayconf.store.keys import RANGE_END_OPEN
from rayconf.store.records import ChangeRecord

# One stored version of a key: (revision, kind, value, create_revision, version).
# kind is 0 for a put and 1 for a tombstone; a tombstone has value b"" and zeros.
VersionRow = tuple[int, int, bytes, int, int]
KIND_PUT = 0
KIND_DELETE = 1

VERSIONS_SCHEMA = pa.schema(
    [
        # Large binary for keys too: millions of 1 KiB keys pass 2 GiB, the limit
        # of the 32-bit offsets of plain binary.
        ("key", pa.large_binary()),
        ("revision", pa.int64()),
        ("kind", pa.int8()),
        # Large binary: a segment of many 10 MiB values passes 2 GiB of value bytes.
        ("value", pa.large_binary()),
        ("create_revision", pa.int64()),
        ("version", pa.int64()),
    ]
)
CHANGES_SCHEMA = pa.schema(
    [
        ("revision", pa.int64()),
        ("principal", pa.string()),
        ("time_ms", pa.int64()),
        ("note", pa.string()),
        ("request_id", pa.string()),
    ]
)
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")

class _BinaryColumnView(Sequence[bytes]):
    """Index access to a binary Arrow array straight from its buffers, for `bisect`.

    Slicing the offsets and data buffers costs a fraction of a microsecond per
    element, where `array[i].as_py()` builds a scalar object first and costs
    several times more.
    """

    def __init__(self, array: pa.Array) -> None:
        assert array.type == pa.large_binary(), "keys are large binary, with 64-bit offsets"
        assert array.null_count == 0, "keys are never null"
        _, offsets, data = array.buffers()
        self._length = len(array)
        self._offsets = memoryview(offsets).cast("q")[array.offset:array.offset + self._length + 1] \
            if offsets is not None else memoryview(b"").cast("q")
        self._data = memoryview(data) if data is not None else memoryview(b"")

    def __len__(self) -> int:
        return self._length

    # Only integer positions are supported, because bisect never slices.
    def __getitem__(self, position: int) -> bytes:  # type: ignore[override]
        if not 0 <= position < self._length:
            raise IndexError(position)
        return bytes(self._data[self._offsets[position]:self._offsets[position + 1]])


def _int64_view(array: pa.Array) -> memoryview:
    """Return a non-null int64 Arrow array as a memoryview of Python ints, for `bisect`."""
    assert array.type == pa.int64(), "revisions are int64"
    assert array.null_count == 0, "revisions are never null"
    buffer = array.buffers()[1]
    if buffer is None:
        return memoryview(b"").cast("q")
    return memoryview(buffer).cast("q")[array.offset:array.offset + len(array)]


class Segment:
    """One immutable segment in memory; `name` also names its files on disk."""

    __slots__ = ("versions", "changes", "name", "_keys", "_change_revisions")

    def __init__(self, versions: pa.Table, changes: pa.Table, name: str) -> None:
        self.versions = versions.combine_chunks()
        self.changes = changes.combine_chunks()
        self.name = name
        self._keys = _BinaryColumnView(self._column(self.versions, "key"))
        self._change_revisions = _int64_view(self._column(self.changes, "revision"))

    @staticmethod
    def _column(table: pa.Table, name: str) -> pa.Array:
        column = table.column(name)
        return column.chunk(0) if column.num_chunks else pa.array([], type=column.type)

    @property
    def row_count(self) -> int:
        return int(self.versions.num_rows)

    def versions_of(self, key: bytes) -> list[VersionRow]:
        """Return the rows of `key` in revision order."""
        first = bisect.bisect_left(self._keys, key)
        last = bisect.bisect_right(self._keys, key, lo=first)
        return self._rows(first, last)

    def iter_range(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, VersionRow]]:
        """Yield (key, row) for every key in `[start, end)`, in (key, revision) order."""
        first = bisect.bisect_left(self._keys, start)
        last = self.row_count if end == RANGE_END_OPEN else bisect.bisect_left(self._keys, end, lo=first)
        if first >= last:
            return
        keys = self.versions.column("key").slice(first, last - first).to_pylist()
        for key, row in zip(keys, self._rows(first, last)):
            yield key, row

    def keys(self) -> list[bytes]:
        keys: list[bytes] = self.versions.column("key").to_pylist()
        return keys

    def change(self, revision: int) -> ChangeRecord | None:
        position = bisect.bisect_left(self._change_revisions, revision)
        if position >= len(self._change_revisions) or self._change_revisions[position] != revision:
            return None
        row = self.changes.slice(position, 1).to_pylist()[0]
        return ChangeRecord(**row)

    def _rows(self, first: int, last: int) -> list[VersionRow]:
        if first >= last:
            return []
        part = self.versions.slice(first, last - first)
        return list(
            zip(
                part.column("revision").to_pylist(),
                part.column("kind").to_pylist(),
                part.column("value").to_pylist(),
                part.column("create_revision").to_pylist(),
                part.column("version").to_pylist(),
            )
        )


def build_segment(
    name: str,
    rows: Sequence[tuple[bytes, VersionRow]],
    changes: Sequence[ChangeRecord],
) -> Segment:
    """Build a segment from (key, row) pairs and change records, sorting both."""
    ordered = sorted(rows, key=lambda item: (item[0], item[1][0]))
    versions = pa.table(
        {
            "key": pa.array([key for key, _ in ordered], type=pa.large_binary()),
            "revision": pa.array([row[0] for _, row in ordered], type=pa.int64()),
            "kind": pa.array([row[1] for _, row in ordered], type=pa.int8()),
            "value": pa.array([row[2] for _, row in ordered], type=pa.large_binary()),
            "create_revision": pa.array([row[3] for _, row in ordered], type=pa.int64()),
            "version": pa.array([row[4] for _, row in ordered], type=pa.int64()),
        },
        schema=VERSIONS_SCHEMA,
    )
    return Segment(versions=versions, changes=changes_table(changes), name=name)


def changes_table(changes: Sequence[ChangeRecord]) -> pa.Table:
    ordered = sorted(changes, key=lambda change: change.revision)
    return pa.table(
        {
            "revision": pa.array([c.revision for c in ordered], type=pa.int64()),
            "principal": pa.array([c.principal for c in ordered], type=pa.string()),
            "time_ms": pa.array([c.time_ms for c in ordered], type=pa.int64()),
            "note": pa.array([c.note for c in ordered], type=pa.string()),
            "request_id": pa.array([c.request_id for c in ordered], type=pa.string()),
        },
        schema=CHANGES_SCHEMA,
    )


def segment_files(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.versions.arrow", directory / f"{name}.changes.arrow"


def write_segment(directory: Path, segment: Segment) -> list[Path]:
    """Write both tables of `segment` as LZ4-compressed Arrow IPC files and fsync them."""
    versions_path, changes_path = segment_files(directory, segment.name)
    write_table(versions_path, segment.versions)
    write_table(changes_path, segment.changes)
    return [versions_path, changes_path]


def read_segment(directory: Path, name: str) -> Segment:
    versions_path, changes_path = segment_files(directory, name)
    versions = read_table(versions_path, VERSIONS_SCHEMA)
    changes = read_table(changes_path, CHANGES_SCHEMA)
    return Segment(versions=versions, changes=changes, name=name)


def write_table(path: Path, table: pa.Table) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(temporary), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema, options=_WRITE_OPTIONS) as writer:
            writer.write_table(table)
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    # The file is read into memory whole rather than memory-mapped, so no
    # table buffer can outlive a closed mapping.
    try:
        table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise SnapshotCorruption(
            f"cannot read Arrow file {path}: {exc}; restore the member from another replica's snapshot",
            path=str(path),
        ) from exc
    for column_name in table.column_names:
        if table.column(column_name).null_count:
            raise SnapshotCorruption(f"Arrow file {path} has null values in column {column_name!r}; "
                                     "restore the member from another replica", path=str(path))
    if not table.schema.equals(schema):
        raise SnapshotCorruption(
            f"Arrow file {path} has schema {table.schema}, expected {schema}; it was written by another format",
            path=str(path),
        )
    return table


def merge_tables(tables: Sequence[pa.Table], schema: pa.Schema, *, by_key: bool = True) -> pa.Table:
    """Concatenate tables of one schema and sort them by (key, revision) or by revision."""
    if not tables:
        return schema.empty_table()
    merged = pa.concat_tables(tables)
    if by_key:
        return merged.sort_by([("key", "ascending"), ("revision", "ascending")])
    return merged.sort_by([("revision", "ascending")])


def merge_segments(segments: Sequence[Segment], name: str) -> Segment:
    """Merge segments into one; used when there are more than `segments_max` of them."""
    return Segment(
        versions=merge_tables([s.versions for s in segments], VERSIONS_SCHEMA),
        changes=merge_tables([s.changes for s in segments], CHANGES_SCHEMA, by_key=False),
        name=name,
    )
