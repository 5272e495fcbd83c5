"""Write-ahead log: typed, opaque records in a directory of segment files.

The log has no Raft-specific logic. A record is a `bytes` payload with a record type in
0..255 that the caller uses to tell entries, hard state and snapshot markers apart.
Records live in segment files named `{seq:016x}-{tag:016x}.wal`, the naming of
etcd's WAL, where `seq` counts files from 0 and `tag` is an integer that the caller
chooses, such as the Raft index of the first entry in the file. The framing is
described in `wal_format`.

Durability. `append` writes a batch into the page cache and `sync` makes every
record appended so far durable with one fdatasync, so a caller that appends a batch
and then syncs once gets group commit. Nothing that depends on a record may be
acknowledged before `sync` returns. Before a batch, a file that has reached
`segment_bytes_max` is fsynced and closed, and a new file is created and fsynced
together with the directory. A batch never spans two files, so a file can exceed
`segment_bytes_max` by at most one batch.

Recovery. Because an older file is fsynced before the next file exists, a crash can
only interrupt writes at the end of the last file. `WAL.open` therefore truncates a
torn tail of the last file at its last valid record (see `wal_format.Damage` for
what counts as torn). Damage anywhere else means that the disk lost or changed
synced data, and the records after it may have been acknowledged to clients, so
`open` raises `WALCorruption` instead of guessing.

Known limits. A damaged last record looks the same as a torn write, so media damage
to the last record drops it with only a warning in the log. A disk that reorders sector writes inside one
unsynced batch can leave a hole followed by data, and `open` then raises even though
nothing in that batch was acknowledged.

The log is not thread-safe: one owner serializes all calls. A `LOCK` file held with
flock(2) stops a second `WAL` object or process from opening the same directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from rayconf.errors import InvalidRequest, StorageError
from rayconf.store import wal_format
from rayconf.store.wal_format import Record
from rayconf.store.wal_files import (
    DurableIO,
    Segment,
    lock_directory,
    open_segment_file,
    recover_directory,
    write_all,
)
from rayconf.store.wal_validation import MIB, _encode_batch, _log_directory, _validate_int

logger = logging.getLogger(__name__)

__all__ = ["WAL", "Record", "Segment", "WALStatistics"]

SEGMENT_BYTES_MAX_DEFAULT = 64 * MIB
PAYLOAD_BYTES_MAX_DEFAULT = 64 * MIB


@dataclass(frozen=True, slots=True)
class WALStatistics:
    """Counters of one open `WAL`, for tests and debugging.

    Counts start at zero when the log is opened. `fsyncs` counts every file and
    directory fsync since then, including those made while opening.
    """

    records_appended: int
    # Bytes written to segment files by `append`, record headers included.
    bytes_appended: int
    fsyncs: int
    files: int
    # Bytes appended since the last sync, which a crash may still lose.
    unsynced_bytes: int
    current_segment: Segment
    current_segment_bytes: int


class WAL:
    """An open write-ahead log. Create it with `WAL.open`.

    A caller appends a batch, calls `sync`, and only then acknowledges anything
    that depends on the batch. Calls after `close` raise `StorageError`.
    """

    def __init__(
        self,
        *,
        directory: Path,
        segments: list[Segment],
        segment_bytes: int,
        lock_fd: int,
        durable_io: DurableIO,
        segment_bytes_max: int,
        payload_bytes_max: int,
    ) -> None:
        assert segments, "a log always has a current segment"
        self._directory = directory
        # Invariant: seqs are contiguous and the last segment is the one being written.
        self._segments = segments
        self._segment_bytes = segment_bytes
        self._lock_fd: int | None = lock_fd
        self._durable_io = durable_io
        self._segment_bytes_max = segment_bytes_max
        self._payload_bytes_max = payload_bytes_max
        self._file_fd: int | None = open_segment_file(segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._unsynced_bytes = 0
        self._records_appended = 0
        self._bytes_appended = 0
        # The reason that further writes are unsafe, set after a failed write or fsync.
        self._failure: str | None = None

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        payload_bytes_max: int = PAYLOAD_BYTES_MAX_DEFAULT,
        initial_tag: int = 0,
    ) -> tuple[WAL, list[Record]]:
        """Open or create the log in `directory` and return it with every recovered record.

        The records come back in the order they were appended, across all files.
        A torn tail of the last file is truncated and logged. `initial_tag` names
        the first file when the directory contains no segment files yet.

        Raises:
            WALCorruption: a file header or record before the tail is damaged, a
                file is missing, or an entry with a segment file name is not a
                regular file. The message names the file, the offset and what to do.
            StorageError: the directory is already open or cannot be read or written.
            InvalidRequest: `directory` is not a str or path, or a setting is out of range.
        """
        path = _log_directory(directory)
        _validate_int("segment_bytes_max", segment_bytes_max, 1, 2**63)
        _validate_int("payload_bytes_max", payload_bytes_max, 1, wal_format.PAYLOAD_BYTES_LIMIT)
        _validate_int("initial_tag", initial_tag, 0, wal_format.TAG_MAX)

        durable_io = DurableIO()
        try:
            durable_io.create_directory(path)
            lock_fd = lock_directory(path)
        except OSError as error:
            raise StorageError(
                f"failed to open write-ahead log directory {path}: {error}. Check that the "
                "directory is writable by this process."
            ) from error

        try:
            recovery = recover_directory(path, initial_tag, durable_io)
            wal = cls(
                directory=path,
                segments=recovery.segments,
                segment_bytes=recovery.last_segment_bytes,
                lock_fd=lock_fd,
                durable_io=durable_io,
                segment_bytes_max=segment_bytes_max,
                payload_bytes_max=payload_bytes_max,
            )
        except OSError as error:
            os.close(lock_fd)
            raise StorageError(
                f"failed to read or repair the write-ahead log in {path}: {error}. Check that "
                "its files are readable and writable by this process."
            ) from error
        except BaseException:
            os.close(lock_fd)
            raise

        logger.info(
            "opened write-ahead log %s: %d files, %d records recovered, writing to %s",
            path,
            len(recovery.segments),
            len(recovery.records),
            recovery.segments[-1].path.name,
        )
        return wal, recovery.records

    def append(
        self, records: Iterable[tuple[int, bytes]], *, rollover_tag: int | None = None
    ) -> None:
        """Write a batch of `(record_type, payload)` records without syncing them.

        Every record is checked before anything is written, so a rejected batch
        leaves the log unchanged. If the current file has reached
        `segment_bytes_max`, the batch starts a new file tagged `rollover_tag`
        (the tag of the current file when None). The Raft replica passes the index
        of the batch's first entry.

        Raises:
            ValueTooLarge: a payload is above `payload_bytes_max`.
            InvalidRequest: `records` is not iterable, an item is not a
                `(record_type, payload)` pair, a record type is outside 0..255, a
                payload is not bytes or `rollover_tag` is out of range.
            StorageError: the log is closed, or the write failed.
        """
        self._check_open()
        if rollover_tag is not None:
            _validate_int("rollover_tag", rollover_tag, 0, wal_format.TAG_MAX)
        batch, record_count = _encode_batch(records, self._payload_bytes_max)
        if record_count == 0:
            return

        if self._segment_bytes >= self._segment_bytes_max:
            tag = self._segments[-1].tag if rollover_tag is None else rollover_tag
            self._start_segment(tag)
        self._write(batch)
        self._records_appended += record_count
        self._bytes_appended += len(batch)

    def sync(self) -> None:
        """Make every appended record durable with one fsync of the current file.

        Does nothing when no record is waiting. After a failed fsync the kernel may
        have dropped the unsynced pages, so the log stops accepting writes.
        """
        self._check_open()
        if self._unsynced_bytes == 0:
            return
        assert self._file_fd is not None
        try:
            self._durable_io.sync_data(self._file_fd)
        except OSError as error:
            self._fail(f"fsync of {self._segments[-1].path} failed: {error}")
        self._unsynced_bytes = 0

    def append_and_sync(
        self, records: Iterable[tuple[int, bytes]], *, rollover_tag: int | None = None
    ) -> None:
        """Append a batch and make it durable with one fsync.

        A batch that starts a new file adds the fsyncs of the rollover: the old
        file, the new file and the directory.
        """
        self.append(records, rollover_tag=rollover_tag)
        self.sync()

    def cut(self, tag: int) -> Segment:
        """Sync the current file, start a new empty file named with `tag`, and return it."""
        self._check_open()
        _validate_int("tag", tag, 0, wal_format.TAG_MAX)
        self._start_segment(tag)
        return self._segments[-1]

    def purge(self, keep_from_seq: int) -> list[Segment]:
        """Delete every file with a seq below `keep_from_seq`, oldest first, and return them.

        The directory is fsynced after each deletion, so a crash part way through
        leaves a contiguous run of files. The current file is never deleted.

        Raises:
            InvalidRequest: `keep_from_seq` is not an int or is above the seq of the
                current file.
            StorageError: the log is closed or a file cannot be deleted.
        """
        self._check_open()
        current_seq = self._segments[-1].seq
        is_int = isinstance(keep_from_seq, int) and not isinstance(keep_from_seq, bool)
        if not (is_int and 0 <= keep_from_seq <= current_seq):
            raise InvalidRequest(
                f"keep_from_seq is {keep_from_seq!r}, expected an int in 0..{current_seq}. The "
                f"current write-ahead log file has seq {current_seq} and cannot be purged until "
                "cut() starts a newer file."
            )

        removed: list[Segment] = []
        while self._segments[0].seq < keep_from_seq:
            segment = self._segments[0]
            try:
                os.unlink(segment.path)
                self._durable_io.sync_directory(self._directory)
            except OSError as error:
                raise StorageError(
                    f"cannot delete write-ahead log file {segment.path}: {error}"
                ) from error
            self._segments.pop(0)
            removed.append(segment)

        if removed:
            logger.info(
                "purged %d write-ahead log files from %s, seq %#x to %#x",
                len(removed),
                self._directory,
                removed[0].seq,
                removed[-1].seq,
            )
        return removed

    def segments(self) -> list[Segment]:
        """Return the files of the log, oldest first. The last one is the file being written."""
        self._check_open()
        return list(self._segments)

    def statistics(self) -> WALStatistics:
        return WALStatistics(
            records_appended=self._records_appended,
            bytes_appended=self._bytes_appended,
            fsyncs=self._durable_io.fsyncs,
            files=len(self._segments),
            unsynced_bytes=self._unsynced_bytes,
            current_segment=self._segments[-1],
            current_segment_bytes=self._segment_bytes,
        )

    def close(self) -> None:
        """Sync any appended records and close the files. Closing twice does nothing."""
        if self._lock_fd is None:
            return
        try:
            if self._failure is None:
                self.sync()
        finally:
            if self._file_fd is not None:
                os.close(self._file_fd)
                self._file_fd = None
            os.close(self._lock_fd)
            self._lock_fd = None
            logger.info("closed write-ahead log %s", self._directory)

    def __enter__(self) -> WAL:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise StorageError(
                f"write-ahead log {self._directory} is closed. Open it again with WAL.open."
            )
        if self._failure is not None:
            raise StorageError(self._failure_message())

    def _write(self, batch: bytes) -> None:
        assert self._file_fd is not None
        start = self._segment_bytes
        try:
            write_all(self._file_fd, batch)
        except OSError as error:
            path = self._segments[-1].path
            # Cut off the partial batch so that the next batch starts on a record boundary.
            try:
                os.ftruncate(self._file_fd, start)
            except OSError as truncate_error:
                self._fail(
                    f"write to {path} failed ({error}) and truncating it failed ({truncate_error})"
                )
            raise StorageError(f"write to write-ahead log file {path} failed: {error}") from error
        self._segment_bytes += len(batch)
        self._unsynced_bytes += len(batch)

    def _start_segment(self, tag: int) -> None:
        # The old file is synced before the new one exists, so that only the last
        # file can ever have a torn tail.
        self.sync()
        assert self._file_fd is not None
        seq = self._segments[-1].seq + 1
        segment = Segment(seq, tag, self._directory / wal_format.segment_file_name(seq, tag))
        try:
            fd = self._durable_io.create_segment_file(segment)
        except OSError as error:
            self._fail(f"creating {segment.path} failed: {error}")

        os.close(self._file_fd)
        self._file_fd = fd
        self._segments.append(segment)
        self._segment_bytes = wal_format.FILE_HEADER_BYTES
        logger.debug("started write-ahead log file %s", segment.path)

    def _fail(self, reason: str) -> NoReturn:
        self._failure = reason
        logger.error("write-ahead log %s stopped accepting writes: %s", self._directory, reason)
        raise StorageError(self._failure_message())

    def _failure_message(self) -> str:
        return (
            f"write-ahead log {self._directory} stopped accepting writes after an I/O error: "
            f"{self._failure}. Restart the process so that it rereads the log from disk."
        )
