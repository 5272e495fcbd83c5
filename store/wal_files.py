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
import stat
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

# Flags added to every open of a segment file. O_NOFOLLOW makes the open fail on a
# symbolic link, so recovery never reads or rewrites a file outside the directory.
# O_NONBLOCK stops an open of a FIFO from waiting for a writer, and is cleared again
# once the file is known to be regular.
_SEGMENT_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
        fd = open_segment_file(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            write_all(fd, wal_format.encode_file_header(segment.seq, segment.tag))
            self.sync_file(fd)
            self.sync_directory(segment.path.parent)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def rewrite_file_header(self, fd: int, segment: Segment) -> None:
        """Replace a torn file header, and anything after it, with a fresh header.

        `fd` is the segment file, opened for writing without O_APPEND.
        """
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        write_all(fd, wal_format.encode_file_header(segment.seq, segment.tag))
        self.sync_file(fd)

    def truncate(self, fd: int, size_bytes: int) -> None:
        os.ftruncate(fd, size_bytes)
        self.sync_file(fd)


def open_segment_file(path: Path, flags: int) -> int:
    """Open a segment file with `flags` plus O_NOFOLLOW and return its fd.

    New files get mode 0o644 when `flags` contains O_CREAT.

    Raises:
        WALCorruption: `path` is a symbolic link, a directory, a FIFO or anything
            else that is not a regular file.
        OSError: the open failed for another reason.
    """
    try:
        fd = os.open(path, flags | _SEGMENT_OPEN_FLAGS, 0o644)
    except OSError as error:
        # The open fails with ELOOP on a symbolic link, EISDIR on a directory opened
        # for writing and ENXIO on a FIFO without a reader. lstat tells these apart.
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise error from None
        if stat.S_ISREG(mode):
            raise
        raise _not_regular_file(path, mode) from error

    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular_file(path, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_directory(directory: Path) -> int:
    """Take an exclusive flock(2) on `directory/LOCK` and return its fd, which releases it when closed.

    flock locks belong to an open file description, so a second `WAL` in the same
    process is stopped as well as another process.
    """
    lock_path = directory / "LOCK"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise StorageError(
            f"write-ahead log lock file {lock_path} is a symbolic link. Delete it, because "
            "WAL.open creates the lock file itself and does not follow links."
        ) from error
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
        # Only the last file may need a repair, so only it is opened for writing.
        # The repair writes through the fd that was read, never through a new open.
        fd = open_segment_file(segment.path, os.O_RDWR if is_last else os.O_RDONLY)
        try:
            segment_records, last_segment_bytes = _recover_segment(fd, segment, is_last, durable_io)
        finally:
            os.close(fd)
        records.extend(segment_records)

    return Recovery(segments, records, last_segment_bytes)


def _recover_segment(
    fd: int, segment: Segment, is_last: bool, durable_io: DurableIO
) -> tuple[list[Record], int]:
    """Read one segment file and repair a torn tail if it is the last one.

    Returns the records of the file and its size after any repair.
    """
    with open(fd, "rb", closefd=False) as file:
        data = file.read()

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
        durable_io.rewrite_file_header(fd, segment)
        return [], wal_format.FILE_HEADER_BYTES

    scan = wal_format.scan_records(data)
    if scan.damage is None:
        return scan.records, scan.valid_end_bytes
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
    durable_io.truncate(fd, scan.valid_end_bytes)
    return scan.records, scan.valid_end_bytes


def list_segments(directory: Path) -> list[Segment]:
    """Return the segment files in `directory`, oldest first.

    Raises:
        WALCorruption: the seqs have a gap, so a file in the middle is missing, or
            an entry with a segment file name is not a regular file.
    """
    segments: list[Segment] = []
    for entry in os.scandir(directory):
        parsed = wal_format.parse_segment_file_name(entry.name)
        if parsed is None:
            if entry.name.endswith(wal_format.SEGMENT_SUFFIX):
                logger.warning("ignoring %s: not a write-ahead log file name", entry.path)
            continue
        mode = entry.stat(follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular_file(Path(entry.path), mode)
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


def _not_regular_file(path: Path, mode: int) -> WALCorruption:
    if stat.S_ISLNK(mode):
        kind = "a symbolic link"
    elif stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO"
    else:
        kind = f"a file of type {stat.filemode(mode)[0]!r} in ls -l notation"
    return WALCorruption(
        f"write-ahead log file {path} is {kind}, not a regular file. The log reads, truncates "
        "and rewrites only regular files in its own directory. Move the entry out of "
        f"{path.parent}, or replace it with the segment file itself if it points to one.",
        path=str(path),
        offset_bytes=0,
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
