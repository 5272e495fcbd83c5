"""Segment files of the write-ahead log on disk: creating, syncing, listing and recovering them.

`wal.py` contains the public `WAL` class and its write path. This module contains the
file-system steps that must survive a crash and the start-up scan that decides
which damage is a torn tail and which is corruption.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rayconf.errors import StorageError, WALCorruption
from rayconf.store import wal_format
from rayconf.store.wal_format import Damage, Record

logger = logging.getLogger(__name__)

_RECOVERY_ADVICE = (
    "Records after this point may have been acknowledged, so the log cannot be repaired "
    "automatically. Restore this member's data directory from a snapshot, or remove the "
    "member from the cluster and add it back with an empty data directory."
)


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file: its position `seq` in the log, the caller's `tag` and its path."""

    seq: int
    tag: int
    path: Path


@dataclass(frozen=True, slots=True)
class Recovery:
    """Result of `recover_directory`: the files, oldest first, and their records in order."""

    segments: list[Segment]
    records: list[Record]
    # Size of the last file after any torn tail was truncated, where appends continue.
    last_segment_bytes: int


class DurableIO:
    """File-system steps that must survive a crash, each with the fsyncs it needs.

    `fsyncs` counts every fsync and fdatasync of a file or directory.
    """

    def __init__(self) -> None:
        self.fsyncs = 0

    def sync_data(self, fd: int) -> None:
        """Flush the data of an open file, and its size, to stable storage."""
        _flush_to_storage(fd, data_only=True)
        self.fsyncs += 1

    def sync_file(self, fd: int) -> None:
        _flush_to_storage(fd, data_only=False)
        self.fsyncs += 1

    def sync_directory(self, directory: Path) -> None:
        """Fsync a directory so that files created or deleted in it stay so after a crash."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _flush_to_storage(fd, data_only=False)
        finally:
            os.close(fd)
        self.fsyncs += 1

    def create_directory(self, directory: Path) -> None:
        """Create `directory` and any missing parents, fsyncing each new entry's parent."""
        missing: list[Path] = []
        candidate = directory.absolute()
        while not candidate.exists():
            missing.append(candidate)
            candidate = candidate.parent
        os.makedirs(directory, exist_ok=True)
        for created in reversed(missing):
            self.sync_directory(created.parent)

    def create_segment_file(self, segment: Segment) -> int:
        """Create a segment file with its header and fsync it and the directory.

        Returns a file descriptor opened for appending.
        """
        fd = os.open(
            segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        try:
            write_all(fd, wal_format.encode_file_header(segment.seq, segment.tag))
            self.sync_file(fd)
            self.sync_directory(segment.path.parent)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def rewrite_file_header(self, segment: Segment) -> None:
        """Replace a torn file header, and anything after it, with a fresh header."""
        fd = os.open(segment.path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            write_all(fd, wal_format.encode_file_header(segment.seq, segment.tag))
            self.sync_file(fd)
        finally:
            os.close(fd)

    def truncate(self, path: Path, size_bytes: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size_bytes)
            self.sync_file(fd)
        finally:
            os.close(fd)


def lock_directory(directory: Path) -> int:
    """Take an exclusive flock(2) on `directory/LOCK` and return its fd, which releases it when closed.

    flock locks belong to an open file description, so a second `WAL` in the same
    process is stopped as well as another process.
    """
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(
            f"write-ahead log directory {directory} is already open in another WAL object "
            "or process. Close that one first, because two writers would corrupt the log."
        ) from None
    return fd


def recover_directory(directory: Path, initial_tag: int, durable_io: DurableIO) -> Recovery:
    """Read every segment file in order, repair a torn tail of the last one, and return the records.

    A directory without segment files gets a first file with seq 0 and `initial_tag`.

    Raises:
        WALCorruption: a file is missing from the sequence, or a file header or
            record fails a check anywhere but in the torn tail of the last file.
    """
    segments = list_segments(directory)
    if not segments:
        segment = Segment(0, initial_tag, directory / wal_format.segment_file_name(0, initial_tag))
        os.close(durable_io.create_segment_file(segment))
        logger.info("created write-ahead log %s", segment.path)
        return Recovery([segment], [], wal_format.FILE_HEADER_BYTES)

    records: list[Record] = []
    last_segment_bytes = 0
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        data = segment.path.read_bytes()

        header_damage = wal_format.check_file_header(data, segment.seq, segment.tag)
        if header_damage is not None:
            if not (header_damage.torn and is_last):
                raise _corruption(segment.path, header_damage, is_last)
            # A crash came between creating the file and syncing its header, so the
            # file never held a synced record.
            logger.warning(
                "write-ahead log file %s has a torn header (%s); rewriting the header",
                segment.path,
                header_damage.reason,
            )
            durable_io.rewrite_file_header(segment)
            last_segment_bytes = wal_format.FILE_HEADER_BYTES
            continue

        scan = wal_format.scan_records(data)
        records.extend(scan.records)
        last_segment_bytes = scan.valid_end_bytes
        if scan.damage is None:
            continue
        if not (scan.damage.torn and is_last):
            raise _corruption(segment.path, scan.damage, is_last)
        logger.warning(
            "write-ahead log file %s has a torn tail at byte offset %d (%s); "
            "truncating %d bytes after the last valid record",
            segment.path,
            scan.damage.offset_bytes,
            scan.damage.reason,
            len(data) - scan.valid_end_bytes,
        )
        durable_io.truncate(segment.path, scan.valid_end_bytes)

    return Recovery(segments, records, last_segment_bytes)


def list_segments(directory: Path) -> list[Segment]:
    """Return the segment files in `directory`, oldest first.

    Raises:
        WALCorruption: the seqs have a gap, so a file in the middle is missing.
    """
    segments: list[Segment] = []
    for entry in os.scandir(directory):
        parsed = wal_format.parse_segment_file_name(entry.name)
        if parsed is None:
            if entry.name.endswith(wal_format.SEGMENT_SUFFIX):
                logger.warning("ignoring %s: not a write-ahead log file name", entry.path)
            continue
        seq, tag = parsed
        segments.append(Segment(seq, tag, Path(entry.path)))
    segments.sort(key=lambda segment: segment.seq)

    for previous, segment in zip(segments, segments[1:]):
        if segment.seq == previous.seq:
            raise WALCorruption(
                f"write-ahead log files {previous.path.name} and {segment.path.name} in "
                f"{directory} have the same seq {segment.seq:#x}. {_RECOVERY_ADVICE}",
                path=str(segment.path),
                offset_bytes=0,
            )
        if segment.seq != previous.seq + 1:
            raise WALCorruption(
                f"write-ahead log file {segment.path} follows {previous.path.name}, so the "
                f"files with seq {previous.seq + 1:#x} to {segment.seq - 1:#x} are missing. "
                f"{_RECOVERY_ADVICE}",
                path=str(segment.path),
                offset_bytes=0,
            )
    return segments


def _corruption(path: Path, damage: Damage, is_last: bool) -> WALCorruption:
    where = "" if is_last else ", in a file that is not the last one"
    return WALCorruption(
        f"write-ahead log file {path} is damaged at byte offset {damage.offset_bytes}: "
        f"{damage.reason}{where}. {_RECOVERY_ADVICE}",
        path=str(path),
        offset_bytes=damage.offset_bytes,
    )


def _flush_to_storage(fd: int, *, data_only: bool) -> None:
    if sys.platform == "darwin":
        # fsync(2) on macOS leaves data in the drive's write cache and F_FULLFSYNC
        # flushes it. Go's os.File.Sync does the same, with the same fallback for
        # file systems that reject F_FULLFSYNC.
        # NOTE: the test suite runs on Linux only, so this branch has not been run.
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError as error:
            if error.errno != errno.ENOTSUP:
                raise
        os.fsync(fd)
    elif data_only:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.write(fd, view[written:])
