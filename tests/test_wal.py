"""Scenario tests of the write-ahead log against real files and real fsync.

Crash tests cut copies of a log at chosen byte offsets to stand in for a crash in
the middle of a write, then check what `WAL.open` recovers.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from rayconf.errors import InvalidRequest, StorageError, ValueTooLarge, WALCorruption
from rayconf.store import wal as wal_module
from rayconf.store import wal_files
from rayconf.store.wal import WAL, Record, Segment
from rayconf.store.wal_files import Recovery
from rayconf.store.wal_format import FILE_HEADER_BYTES, RECORD_HEADER_BYTES, encode_record


def make_record(i: int) -> Record:
    """Return record number `i`, with a type and a length that vary with `i`."""
    payload = f"entry {i};".encode() * (1 + i % 5)
    return Record(i % 256, payload)


def make_records(start: int, count: int) -> list[Record]:
    return [make_record(i) for i in range(start, start + count)]


def record_starts(records: list[Record]) -> list[int]:
    """Return the byte offset of each record in a file that contains exactly `records`."""
    starts: list[int] = []
    offset = FILE_HEADER_BYTES
    for record in records:
        starts.append(offset)
        offset += RECORD_HEADER_BYTES + len(record.payload)
    return starts


def record_end(records: list[Record], index: int) -> int:
    return record_starts(records)[index] + RECORD_HEADER_BYTES + len(records[index].payload)


def segment_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def write_log(directory: Path, batches: list[list[Record]], **settings: int) -> None:
    wal, recovered = WAL.open(directory, **settings)
    assert recovered == []
    with wal:
        for batch in batches:
            wal.append_and_sync(batch)


def reopen_records(directory: Path) -> list[Record]:
    wal, records = WAL.open(directory)
    wal.close()
    return records


# --- Round trip and file layout. ---


def test_empty_directory_gets_first_file(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "wal"
    wal, records = WAL.open(directory, initial_tag=7)
    wal.close()

    assert records == []
    assert [path.name for path in segment_paths(directory)] == [
        "0000000000000000-0000000000000007.wal"
    ]
    assert (directory / "0000000000000000-0000000000000007.wal").stat().st_size == FILE_HEADER_BYTES


def test_round_trip_across_many_files(tmp_path: Path) -> None:
    records = make_records(0, 600)
    wal, _ = WAL.open(tmp_path, segment_bytes_max=1024)
    with wal:
        for first in range(0, len(records), 7):
            wal.append_and_sync(records[first : first + 7], rollover_tag=first)
        segments = wal.segments()

    assert len(segments) >= 10
    assert [segment.seq for segment in segments] == list(range(len(segments)))
    names_on_disk = [path.name for path in segment_paths(tmp_path)]
    assert names_on_disk == [segment.path.name for segment in segments]
    for segment in segments[1:]:
        assert segment.tag % 7 == 0
    recovered = reopen_records(tmp_path)
    assert recovered == records
    assert {record.record_type for record in recovered} == set(range(256))


def test_files_roll_over_only_between_batches(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path, segment_bytes_max=200)
    with wal:
        big_batch = make_records(0, 20)
        wal.append_and_sync(big_batch)
        assert wal.statistics().files == 1
        assert wal.statistics().current_segment_bytes == record_end(big_batch, 19)

        wal.append_and_sync(make_records(20, 1), rollover_tag=42)
        wal.append_and_sync(make_records(21, 1))
        wal.append_and_sync(make_records(22, 1))
        tags = [segment.tag for segment in wal.segments()]

    assert tags[:2] == [0, 42]
    assert reopen_records(tmp_path) == make_records(0, 23)


def test_cut_starts_file_with_tag(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync(make_records(0, 3))
        segment = wal.cut(3)
        wal.append_and_sync(make_records(3, 2))

    assert segment.seq == 1
    assert segment.tag == 3
    assert segment.path.name == "0000000000000001-0000000000000003.wal"
    assert reopen_records(tmp_path) == make_records(0, 5)


def test_cut_syncs_current_file_first(tmp_path: Path) -> None:
    """An older file is synced before the next one exists, so only the last file can be torn."""
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append(make_records(0, 3))
        before = wal.statistics()
        wal.cut(3)
        after = wal.statistics()

    assert before.unsynced_bytes > 0
    assert after.unsynced_bytes == 0
    # One fsync each for the old file, the new file and the directory.
    assert after.fsyncs - before.fsyncs == 3


def test_appends_continue_after_reopen(tmp_path: Path) -> None:
    write_log(tmp_path, [make_records(0, 5)])
    wal, records = WAL.open(tmp_path)
    with wal:
        assert records == make_records(0, 5)
        wal.append_and_sync(make_records(5, 5))

    assert reopen_records(tmp_path) == make_records(0, 10)
    assert len(segment_paths(tmp_path)) == 1


# --- Crashes: torn tails of the last file. ---


def test_torn_tail_at_every_offset(tmp_path: Path) -> None:
    original = tmp_path / "original"
    first_file = make_records(0, 5)
    last_file = make_records(5, 20)
    wal, _ = WAL.open(original)
    with wal:
        wal.append_and_sync(first_file)
        wal.cut(5)
        for record in last_file:
            wal.append_and_sync([record])
    last_name = segment_paths(original)[-1].name
    ends = [record_end(last_file, i) for i in range(len(last_file))]
    cut_from = record_starts(last_file)[-4]

    copy = tmp_path / "copy"
    for cut in range(cut_from, ends[-1] + 1):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(original, copy)
        os.truncate(copy / last_name, cut)

        survivors = [record for record, end in zip(last_file, ends) if end <= cut]
        valid_end = max([FILE_HEADER_BYTES] + [end for end in ends if end <= cut])
        wal, records = WAL.open(copy)
        assert records == first_file + survivors, f"cut at byte {cut}"
        assert (copy / last_name).stat().st_size == valid_end, f"cut at byte {cut}"

        appended = Record(9, b"after the crash")
        wal.append_and_sync([appended])
        wal.close()
        assert reopen_records(copy) == first_file + survivors + [appended], f"cut at byte {cut}"


def test_torn_header_of_new_file_is_rewritten(tmp_path: Path) -> None:
    original = tmp_path / "original"
    write_log(original, [make_records(0, 4)])
    wal, _ = WAL.open(original)
    wal.cut(4)
    wal.close()
    last_name = segment_paths(original)[-1].name

    copy = tmp_path / "copy"
    for cut in range(FILE_HEADER_BYTES):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(original, copy)
        os.truncate(copy / last_name, cut)

        wal, records = WAL.open(copy)
        assert records == make_records(0, 4), f"header cut at byte {cut}"
        wal.append_and_sync([Record(1, b"next")])
        wal.close()
        expected = make_records(0, 4) + [Record(1, b"next")]
        assert reopen_records(copy) == expected, f"header cut at byte {cut}"


def test_zero_filled_new_file_is_rewritten(tmp_path: Path) -> None:
    write_log(tmp_path, [make_records(0, 4)])
    wal, _ = WAL.open(tmp_path)
    last = wal.cut(4)
    wal.close()
    # A crash after the file was allocated but before its header reached the disk.
    last.path.write_bytes(bytes(4096))

    wal, records = WAL.open(tmp_path)
    assert records == make_records(0, 4)
    assert last.path.stat().st_size == FILE_HEADER_BYTES
    wal.append_and_sync([Record(1, b"next")])
    wal.close()
    assert reopen_records(tmp_path) == make_records(0, 4) + [Record(1, b"next")]


@pytest.mark.parametrize("torn_record_bytes", [0, 5, RECORD_HEADER_BYTES + 3])
def test_zero_filled_tail_is_truncated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, torn_record_bytes: int
) -> None:
    """A crash can leave zero-filled pages after the last record, or inside a torn record."""
    records = make_records(0, 10)
    write_log(tmp_path, [records])
    path = segment_paths(tmp_path)[0]
    valid_end = path.stat().st_size
    torn = Record(3, b"x" * 40)
    with path.open("ab") as file:
        file.write(encode_record(torn.record_type, torn.payload)[:torn_record_bytes])
        file.write(bytes(4096))

    with caplog.at_level(logging.WARNING, logger="rayconf.store.wal_files"):
        wal, recovered = WAL.open(tmp_path)
    assert recovered == records
    assert wal.statistics().fsyncs == 1, "the truncation must be fsynced"
    assert path.stat().st_size == valid_end
    assert str(path) in caplog.text
    assert f"byte offset {valid_end}" in caplog.text

    wal.append_and_sync([torn])
    wal.close()
    assert reopen_records(tmp_path) == records + [torn]


def test_valid_header_torn_payload_then_zeros(tmp_path: Path) -> None:
    records = make_records(0, 6)
    write_log(tmp_path, [records])
    path = segment_paths(tmp_path)[0]
    # Zero the second half of the last payload, as if its last page never reached the disk.
    last_start = record_starts(records)[-1]
    end = record_end(records, 5)
    data = bytearray(path.read_bytes())
    middle = (last_start + RECORD_HEADER_BYTES + end) // 2
    data[middle:end] = bytes(end - middle)
    path.write_bytes(bytes(data) + bytes(100))

    assert reopen_records(tmp_path) == records[:5]
    assert path.stat().st_size == last_start


# --- Corruption: damage that is not a torn tail. ---


@pytest.mark.parametrize(
    ("field", "offset_in_record"),
    [
        ("length", 1),
        ("record type", 4),
        ("payload crc", 9),
        ("header crc", 13),
        ("payload", RECORD_HEADER_BYTES + 2),
    ],
)
def test_flipped_byte_raises_corruption(tmp_path: Path, field: str, offset_in_record: int) -> None:
    records = make_records(0, 10)
    write_log(tmp_path, [records])
    path = segment_paths(tmp_path)[0]
    damaged_start = record_starts(records)[4]
    flip_byte(path, damaged_start + offset_in_record)
    damaged_bytes = path.read_bytes()

    with pytest.raises(WALCorruption) as raised:
        WAL.open(tmp_path)

    assert raised.value.path == str(path), field
    assert raised.value.offset_bytes == damaged_start, field
    message = str(raised.value)
    assert str(path) in message
    assert f"byte offset {damaged_start}" in message
    assert "snapshot" in message
    assert path.read_bytes() == damaged_bytes, "a failed open must not modify the file"


def test_every_flipped_byte_is_detected(tmp_path: Path) -> None:
    """A flip before the last record raises. A flip in the last record raises or drops it."""
    original = tmp_path / "original"
    records = make_records(0, 8)
    write_log(original, [records])
    name = segment_paths(original)[0].name
    starts = record_starts(records)
    size = (original / name).stat().st_size

    copy = tmp_path / "copy"
    for offset in range(size):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(original, copy)
        flip_byte(copy / name, offset)
        damaged_index = max([-1] + [i for i, start in enumerate(starts) if start <= offset])
        damaged_start = 0 if damaged_index == -1 else starts[damaged_index]

        try:
            wal, recovered = WAL.open(copy)
        except WALCorruption as error:
            assert error.offset_bytes == damaged_start, f"flip at byte {offset}"
            continue
        wal.close()
        assert damaged_index == len(records) - 1, f"flip at byte {offset} was not detected"
        assert recovered == records[:-1], f"flip at byte {offset}"


@pytest.mark.parametrize("damage", ["truncated", "flipped last byte", "zero tail"])
def test_damage_in_earlier_file_raises(tmp_path: Path, damage: str) -> None:
    records = make_records(0, 8)
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync(records)
        wal.cut(8)
        wal.append_and_sync(make_records(8, 3))
    first = segment_paths(tmp_path)[0]
    size = first.stat().st_size
    if damage == "truncated":
        os.truncate(first, size - 3)
    elif damage == "flipped last byte":
        flip_byte(first, size - 1)
    else:
        with first.open("ab") as file:
            file.write(bytes(512))

    with pytest.raises(WALCorruption) as raised:
        WAL.open(tmp_path)

    assert raised.value.path == str(first)
    expected_offset = size if damage == "zero tail" else record_starts(records)[-1]
    assert raised.value.offset_bytes == expected_offset
    assert "not the last one" in str(raised.value)


@pytest.mark.parametrize("damage", ["magic", "version", "renamed", "zeroed with records"])
def test_bad_file_header_raises(tmp_path: Path, damage: str) -> None:
    write_log(tmp_path, [make_records(0, 5)])
    path = segment_paths(tmp_path)[0]
    if damage == "magic":
        flip_byte(path, 0)
    elif damage == "version":
        data = bytearray(path.read_bytes())
        data[8] = 2
        path.write_bytes(bytes(data))
    elif damage == "renamed":
        path = path.rename(tmp_path / "0000000000000000-0000000000000009.wal")
    else:
        data = bytearray(path.read_bytes())
        data[:FILE_HEADER_BYTES] = bytes(FILE_HEADER_BYTES)
        path.write_bytes(bytes(data))

    with pytest.raises(WALCorruption) as raised:
        WAL.open(tmp_path)

    assert raised.value.path == str(path)
    assert raised.value.offset_bytes == 0


def test_missing_middle_file_raises(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        for tag in (10, 20):
            wal.append_and_sync(make_records(tag, 2))
            wal.cut(tag)
    paths = segment_paths(tmp_path)
    paths[1].unlink()

    with pytest.raises(WALCorruption) as raised:
        WAL.open(tmp_path)

    assert raised.value.path == str(paths[2])
    assert "missing" in str(raised.value)


# --- Segment entries that are not regular files. ---

SECOND_SEGMENT_NAME = "0000000000000001-0000000000000000.wal"


def test_symlinked_segment_target_untouched(tmp_path: Path) -> None:
    """A short target would look like a torn header, which recovery rewrites."""
    directory = tmp_path / "wal"
    write_log(directory, [make_records(0, 3)])
    target = tmp_path / "outside.txt"
    target.write_bytes(b"precious")
    link = directory / SECOND_SEGMENT_NAME
    link.symlink_to(target)

    with pytest.raises(WALCorruption) as raised:
        WAL.open(directory)

    assert raised.value.path == str(link)
    assert str(link) in str(raised.value)
    assert "symbolic link" in str(raised.value)
    assert target.read_bytes() == b"precious"
    assert link.is_symlink()


def test_symlink_to_valid_segment_rejected(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write_log(real, [make_records(0, 3)])
    segment = segment_paths(real)[0]
    directory = tmp_path / "wal"
    directory.mkdir()
    (directory / segment.name).symlink_to(segment)
    data_before = segment.read_bytes()

    with pytest.raises(WALCorruption) as raised:
        WAL.open(directory)

    assert raised.value.path == str(directory / segment.name)
    assert segment.read_bytes() == data_before


def test_directory_named_as_segment_rejected(tmp_path: Path) -> None:
    write_log(tmp_path, [make_records(0, 3)])
    (tmp_path / SECOND_SEGMENT_NAME).mkdir()

    with pytest.raises(WALCorruption) as raised:
        WAL.open(tmp_path)

    assert raised.value.path == str(tmp_path / SECOND_SEGMENT_NAME)
    assert "not a regular file" in str(raised.value)


@pytest.mark.timeout(20)
def test_fifo_named_as_segment_rejected(tmp_path: Path) -> None:
    write_log(tmp_path, [make_records(0, 3)])
    os.mkfifo(tmp_path / SECOND_SEGMENT_NAME)

    with pytest.raises(WALCorruption) as raised:
        WAL.open(tmp_path)

    assert raised.value.path == str(tmp_path / SECOND_SEGMENT_NAME)


def test_segment_swapped_for_symlink_after_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery opens each file without following links, so a swap after the listing fails too."""
    directory = tmp_path / "wal"
    wal, _ = WAL.open(directory)
    with wal:
        wal.append_and_sync(make_records(0, 3))
        wal.cut(3)
    target = tmp_path / "outside.txt"
    target.write_bytes(b"precious")
    list_segments = wal_files.list_segments

    def list_then_swap(listed_directory: Path) -> list[Segment]:
        segments = list_segments(listed_directory)
        segments[-1].path.unlink()
        segments[-1].path.symlink_to(target)
        return segments

    monkeypatch.setattr(wal_files, "list_segments", list_then_swap)
    with pytest.raises(WALCorruption) as raised:
        WAL.open(directory)

    assert raised.value.path == str(segment_paths(directory)[-1])
    assert target.read_bytes() == b"precious"


def test_segment_swapped_for_symlink_after_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "wal"
    write_log(directory, [make_records(0, 3)])
    target = tmp_path / "outside.txt"
    target.write_bytes(b"precious")
    recover_directory = wal_files.recover_directory

    def recover_then_swap(*arguments: Any) -> Recovery:
        recovery = recover_directory(*arguments)
        recovery.segments[-1].path.unlink()
        recovery.segments[-1].path.symlink_to(target)
        return recovery

    monkeypatch.setattr(wal_module, "recover_directory", recover_then_swap)
    with pytest.raises(WALCorruption):
        WAL.open(directory)

    assert target.read_bytes() == b"precious"
    # The failed open released the directory lock.
    monkeypatch.undo()
    (directory / segment_paths(directory)[-1].name).unlink()
    second, records = WAL.open(directory)
    second.close()
    assert records == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_open_segment_file_rejects_non_regular(tmp_path: Path, kind: str) -> None:
    path = tmp_path / SECOND_SEGMENT_NAME
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()

    for flags in (os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(WALCorruption) as raised:
            wal_files.open_segment_file(path, flags)
        assert raised.value.path == str(path), kind
    assert target.read_bytes() == b"precious"


def test_symlinked_lock_file_rejected(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    directory.mkdir()
    target = tmp_path / "elsewhere" / "created-by-lock"
    target.parent.mkdir()
    (directory / "LOCK").symlink_to(target)

    with pytest.raises(StorageError) as raised:
        WAL.open(directory)

    assert str(directory / "LOCK") in str(raised.value)
    assert "symbolic link" in str(raised.value)
    assert not target.exists()


# --- Group commit and statistics. ---


def test_one_fsync_per_batch(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        before = wal.statistics()
        for batch in range(20):
            wal.append_and_sync(make_records(batch * 10, 10))
        after = wal.statistics()

        assert after.fsyncs - before.fsyncs == 20
        assert after.records_appended - before.records_appended == 200
        assert after.unsynced_bytes == 0
        assert after.files == 1

        wal.append(make_records(200, 3))
        wal.append(make_records(203, 3))
        assert wal.statistics().unsynced_bytes > 0
        wal.sync()
        assert wal.statistics().fsyncs - after.fsyncs == 1

        wal.sync()
        wal.append_and_sync([])
        assert wal.statistics().fsyncs - after.fsyncs == 1


def test_close_syncs_appended_records(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append(make_records(0, 3))
    fsyncs_before_close = wal.statistics().fsyncs
    wal.close()

    assert wal.statistics().fsyncs == fsyncs_before_close + 1
    assert reopen_records(tmp_path) == make_records(0, 3)


# --- Purge. ---


def test_purge_removes_old_files_only(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        for tag in range(0, 50, 10):
            if tag:
                wal.cut(tag)
            wal.append_and_sync(make_records(tag, 10))
        assert len(wal.segments()) == 5

        with pytest.raises(InvalidRequest):
            wal.purge(5)
        fsyncs_before = wal.statistics().fsyncs
        removed = wal.purge(2)
        assert [segment.seq for segment in removed] == [0, 1]
        assert wal.statistics().fsyncs - fsyncs_before == 2
        assert wal.purge(1) == []
        assert [segment.seq for segment in wal.segments()] == [2, 3, 4]
        wal.append_and_sync(make_records(50, 1))

    seqs_on_disk = [int(path.name[:16], 16) for path in segment_paths(tmp_path)]
    assert seqs_on_disk == [2, 3, 4]
    assert reopen_records(tmp_path) == make_records(20, 31)


def test_purge_keeps_current_file(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync(make_records(0, 2))
        wal.cut(2)
        removed = wal.purge(1)
        assert [segment.seq for segment in removed] == [0]
        assert wal.statistics().files == 1

    assert reopen_records(tmp_path) == []


# --- Limits and misuse. ---


def test_oversized_record_leaves_log_unchanged(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path, payload_bytes_max=1024)
    with wal:
        wal.append_and_sync(make_records(0, 3))
        before = wal.statistics()
        size_before = wal.segments()[-1].path.stat().st_size

        with pytest.raises(ValueTooLarge) as raised:
            wal.append_and_sync([Record(1, b"ok"), Record(1, bytes(1025))])

        assert raised.value.size_bytes == 1025
        assert raised.value.limit_bytes == 1024
        assert "1025 bytes" in str(raised.value)
        assert "payload_bytes_max (1024 bytes)" in str(raised.value)
        assert wal.statistics() == before
        assert wal.segments()[-1].path.stat().st_size == size_before

        wal.append_and_sync([Record(2, bytes(1024))])

    assert reopen_records(tmp_path) == make_records(0, 3) + [Record(2, bytes(1024))]


@pytest.mark.parametrize(
    "record",
    [(256, b"x"), (-1, b"x"), (True, b"x"), (1, "text"), (1, b"x", 2), (1,), None, b"ab", 5],
)
def test_invalid_record_rejected(tmp_path: Path, record: object) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync([Record(1, b"stored")])
        size_before = wal.segments()[-1].path.stat().st_size

        with pytest.raises(InvalidRequest) as raised:
            wal.append([(1, b"fine"), record])  # type: ignore[list-item]

        assert "record 1" in str(raised.value)
        assert wal.statistics().records_appended == 1
        assert wal.segments()[-1].path.stat().st_size == size_before

    assert reopen_records(tmp_path) == [Record(1, b"stored")]


def test_record_as_list_accepted(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync([[7, b"list"]])  # type: ignore[list-item]

    assert reopen_records(tmp_path) == [Record(7, b"list")]


@pytest.mark.parametrize("records", [None, 5, 1.5])
def test_non_iterable_batch_rejected(tmp_path: Path, records: object) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        with pytest.raises(InvalidRequest) as raised:
            wal.append(records)  # type: ignore[arg-type]

        assert repr(records) in str(raised.value)
        assert "iterable" in str(raised.value)
        assert wal.statistics().records_appended == 0


@pytest.mark.parametrize("keep_from_seq", ["x", None, True, 1.0, -1])
def test_purge_rejects_bad_seq(tmp_path: Path, keep_from_seq: object) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync(make_records(0, 2))
        wal.cut(2)
        wal.append_and_sync(make_records(2, 2))

        with pytest.raises(InvalidRequest) as raised:
            wal.purge(keep_from_seq)  # type: ignore[arg-type]

        assert repr(keep_from_seq) in str(raised.value)
        assert "keep_from_seq" in str(raised.value)
        assert [segment.seq for segment in wal.segments()] == [0, 1]

    assert reopen_records(tmp_path) == make_records(0, 4)


@pytest.mark.parametrize("directory", [None, 5, b"/tmp/fix-wal-bytes", "", "wal\x00dir"])
def test_open_rejects_bad_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, directory: object
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(InvalidRequest) as raised:
        WAL.open(directory)  # type: ignore[arg-type]

    assert repr(directory) in str(raised.value)
    assert list(tmp_path.iterdir()) == []
    assert not Path("/tmp/fix-wal-bytes").exists()


@pytest.mark.parametrize(
    "settings",
    [{"segment_bytes_max": 0}, {"payload_bytes_max": 2**32}, {"initial_tag": -1}],
)
def test_invalid_setting_rejected(tmp_path: Path, settings: dict[str, int]) -> None:
    with pytest.raises(InvalidRequest):
        WAL.open(tmp_path, **settings)


def test_operations_after_close_raise(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.close()
    wal.close()

    calls = {
        "append": lambda: wal.append([Record(1, b"x")]),
        "sync": wal.sync,
        "cut": lambda: wal.cut(1),
        "purge": lambda: wal.purge(0),
        "segments": wal.segments,
    }
    for name, call in calls.items():
        with pytest.raises(StorageError, match="is closed") as raised:
            call()
        assert str(tmp_path) in str(raised.value), name


def test_second_open_of_directory_raises(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with pytest.raises(StorageError, match="already open"):
        WAL.open(tmp_path)
    wal.close()

    second, _ = WAL.open(tmp_path)
    second.close()


# --- I/O failures. ---


def test_failed_write_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync(make_records(0, 2))
        size_before = wal.segments()[-1].path.stat().st_size

        def write_half_then_fail(fd: int, data: bytes) -> None:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(wal_module, "write_all", write_half_then_fail)
            with pytest.raises(StorageError, match="No space left"):
                wal.append(make_records(2, 4))

        assert wal.segments()[-1].path.stat().st_size == size_before
        wal.append_and_sync(make_records(2, 1))

    assert reopen_records(tmp_path) == make_records(0, 3)


def test_failed_fsync_stops_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append(make_records(0, 2))

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", fail)
        patch.setattr(os, "fsync", fail)
        with pytest.raises(StorageError, match="Input/output error"):
            wal.sync()

    with pytest.raises(StorageError, match="stopped accepting writes"):
        wal.append(make_records(2, 1))
    wal.close()

    second, records = WAL.open(tmp_path)
    second.close()
    assert records == make_records(0, 2)
