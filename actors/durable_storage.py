"""The Raft log of one replica on disk: a write-ahead log plus MVCC snapshots.

A replica's data directory holds:

- `wal/`: the write-ahead log (`rayconf.store.wal`) with three record types:
  log entries, hard states, and snapshot markers.
- `snapshots/snapshot-<index>/`: MVCC snapshots (`rayconf.store.snapshot`), each
  with `snapshot-<index>.raft.json` beside it, which contains the Raft metadata:
  index, term and membership.

Reads go to an in-memory `MemoryStorage` that mirrors what is durable, so the
Raft core never waits on disk.

Which snapshot counts. A snapshot is written in full (files, then metadata,
each fsynced) before a marker for it is appended to the log, as etcd does. At
start-up the newest snapshot whose marker is in the log is the one loaded. A
crash between the files and the marker leaves a snapshot that nothing trusts.

Two marker kinds. A COMPACT marker records a snapshot this replica took of its
own state: the log entries after it stay valid. An INSTALL marker records a
snapshot received from the leader: it replaces the whole log, so replay drops
every entry recorded before it.

Compaction rewrites rather than trims. After a snapshot at index S,
`compact(S)` starts a new log file, writes into it the marker, the hard state
and every entry above S, syncs, and deletes every older file. The rewritten
tail is what the caller keeps after S, which is small.

Nothing is pickled: entries, hard states and markers are msgpack arrays, and
the Raft metadata is JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from rayconf.actors.raft.storage import MemoryStorage
from rayconf.actors.raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Ready,
    Snapshot,
    SnapshotMetadata,
)
from rayconf.errors import SnapshotCorruption, StorageError, WALCorruption
from rayconf.store import snapshot as mvcc_snapshot
from rayconf.store.mvcc import MVCC
from rayconf.store.wal import WAL

logger = logging.getLogger(__name__)

RECORD_ENTRY = 1
RECORD_HARD_STATE = 2
RECORD_SNAPSHOT = 3

MARKER_COMPACT = "compact"
MARKER_INSTALL = "install"

# Snapshots kept on disk; older ones are deleted once a newer one has its marker.
SNAPSHOTS_KEPT = 2


@dataclass(frozen=True, slots=True)
class Recovered:
    """State that `DurableStorage.open` found on disk."""

    snapshot_directory: Path | None
    snapshot_metadata: SnapshotMetadata
    entry_count: int
    hard_state: HardState


class DurableStorage:
    """Raft `Storage` for one replica, persisted to its data directory.

    The Raft core reads through the `MemoryStorage` methods. The replica writes
    with `persist(ready)` before it sends the Ready's messages, and with
    `create_snapshot` and `compact` after it applied entries.
    """

    def __init__(self, directory: Path, wal: WAL, memory: MemoryStorage, snapshot_directory: Path | None) -> None:
        self.directory = directory
        self.memory = memory
        self._wal = wal
        self._snapshots = directory / "snapshots"
        self._snapshot_directory = snapshot_directory
        # Packed bytes of the current snapshot, built on the first request from the core.
        self._packed: tuple[int, bytes] | None = None
        # Extra time each log fsync takes, a fault knob that fault-injection runs set
        # to mimic a slow disk. Zero in production.
        self.fsync_delay_ms = 0

    # --- Opening. ---

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> tuple[DurableStorage, Recovered]:
        """Open or create the data directory and rebuild the log as it was last synced."""
        path = Path(directory)
        (path / "snapshots").mkdir(parents=True, exist_ok=True)
        wal, records = WAL.open(path / "wal")
        try:
            markers = [_decode(payload) for kind, payload in records if kind == RECORD_SNAPSHOT]
            trusted = {(marker[1], marker[2]) for marker in markers}
            snapshot_directory, metadata = _newest_trusted_snapshot(path / "snapshots", trusted)
            memory, hard_state, count = _replay(records, metadata, path / "wal")
        except BaseException:
            wal.close()
            raise
        storage = cls(path, wal, memory, snapshot_directory)
        logger.info(
            "opened replica log %s: snapshot at %d, %d entries after it, term %d, commit %d",
            path, metadata.index, count, hard_state.term, hard_state.commit,
        )
        return storage, Recovered(snapshot_directory, metadata, count, hard_state)

    def load_state(self) -> MVCC:
        """Return the MVCC state of the trusted snapshot, or an empty state."""
        if self._snapshot_directory is None:
            return MVCC()
        return mvcc_snapshot.load(self._snapshot_directory)

    # --- Storage reads, for the Raft core. ---

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.memory.initial_state()

    def entries(self, low: int, high: int, max_size_bytes: int) -> list[Entry]:
        return self.memory.entries(low, high, max_size_bytes)

    def term(self, index: int) -> int:
        return self.memory.term(index)

    def first_index(self) -> int:
        return self.memory.first_index()

    def last_index(self) -> int:
        return self.memory.last_index()

    def snapshot(self) -> Snapshot:
        """Return the current snapshot with its data packed for InstallSnapshot."""
        current = self.memory.snapshot()
        if current.is_empty() or self._snapshot_directory is None:
            return current
        index = current.metadata.index
        if self._packed is None or self._packed[0] != index:
            self._packed = (index, mvcc_snapshot.pack(self._snapshot_directory))
        return Snapshot(metadata=current.metadata, data=self._packed[1])

    # --- Writes, by the replica. ---

    def bootstrap(self, voters: tuple[str, ...], learners: tuple[str, ...] = ()) -> None:
        """Write the founding membership of a new cluster as the first log entries."""
        self.memory.bootstrap(voters, learners)
        entries = self.memory.entries(1, self.memory.last_index() + 1, 2**63)
        records = [(RECORD_ENTRY, _encode_entry(entry)) for entry in entries]
        records.append((RECORD_HARD_STATE, _encode_hard_state(self.memory.hard_state)))
        self._wal.append_and_sync(records)

    def persist(self, ready: Ready) -> None:
        """Make the snapshot, entries and hard state of `ready` durable, in that order.

        One fsync covers the batch when `ready.must_sync` is set or a snapshot
        arrived; the replica sends the Ready's messages only after this returns.
        """
        records: list[tuple[int, bytes]] = []
        if ready.snapshot is not None and not ready.snapshot.is_empty():
            records.append(self._install(ready.snapshot))
        for entry in ready.entries:
            records.append((RECORD_ENTRY, _encode_entry(entry)))
        if ready.hard_state is not None:
            records.append((RECORD_HARD_STATE, _encode_hard_state(ready.hard_state)))
        if records:
            self._wal.append(records)
            if ready.must_sync or records[0][0] == RECORD_SNAPSHOT:
                self._wal.sync()
                if self.fsync_delay_ms:
                    # Blocks the caller as a slow fsync does.
                    time.sleep(self.fsync_delay_ms / 1000)
        if ready.entries:
            self.memory.append(ready.entries)
        if ready.hard_state is not None:
            self.memory.set_hard_state(ready.hard_state)

    def _install(self, snapshot: Snapshot) -> tuple[int, bytes]:
        metadata = snapshot.metadata
        directory = mvcc_snapshot.unpack(snapshot.data, self._snapshots)
        if directory.name != mvcc_snapshot.snapshot_name(metadata.index):
            raise SnapshotCorruption(
                f"received snapshot {directory.name} does not match its Raft index {metadata.index}",
                path=str(directory),
            )
        _write_metadata(self._snapshots, metadata)
        self.memory.apply_snapshot(Snapshot(metadata=metadata))
        self._snapshot_directory = directory
        logger.info("installed snapshot at index %d term %d from the leader", metadata.index, metadata.term)
        return RECORD_SNAPSHOT, _encode_marker(MARKER_INSTALL, metadata)

    def create_snapshot(self, state: MVCC, conf_state: ConfState) -> SnapshotMetadata:
        """Save `state` at its applied index as the newest snapshot and mark it in the log."""
        index = state.applied_index
        directory = mvcc_snapshot.save(state, self._snapshots)
        created = self.memory.create_snapshot(index, conf_state, b"")
        _write_metadata(self._snapshots, created.metadata)
        self._wal.append_and_sync([(RECORD_SNAPSHOT, _encode_marker(MARKER_COMPACT, created.metadata))])
        self._snapshot_directory = directory
        self._delete_old_snapshots()
        logger.info("took snapshot at index %d (revision %d)", index, state.revision)
        return created.metadata

    def compact(self, index: int) -> None:
        """Drop log entries up to `index`, which the current snapshot must cover."""
        current = self.memory.snapshot().metadata
        if index > current.index:
            raise StorageError(
                f"cannot compact the log to {index}: the newest snapshot is at {current.index}; "
                "take a snapshot first"
            )
        self.memory.compact(index)
        tail = self.memory.entries(index + 1, self.memory.last_index() + 1, 2**63) \
            if self.memory.last_index() > index else []
        self._wal.cut(index + 1)
        records = [(RECORD_SNAPSHOT, _encode_marker(MARKER_COMPACT, current))]
        records.append((RECORD_HARD_STATE, _encode_hard_state(self.memory.hard_state)))
        records.extend((RECORD_ENTRY, _encode_entry(entry)) for entry in tail)
        self._wal.append_and_sync(records)
        self._wal.purge(self._wal.segments()[-1].seq)
        logger.info("compacted the log to index %d, kept %d entries", index, len(tail))

    def _delete_old_snapshots(self) -> None:
        names = sorted(p.name for p in self._snapshots.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))
        for name in names[:-SNAPSHOTS_KEPT]:
            shutil.rmtree(self._snapshots / name)
            (self._snapshots / f"{name}.raft.json").unlink(missing_ok=True)

    def statistics(self) -> dict[str, int]:
        wal = self._wal.statistics()
        return {
            "first_index": self.memory.first_index(),
            "last_index": self.memory.last_index(),
            "snapshot_index": self.memory.snapshot().metadata.index,
            "wal_files": wal.files,
            "wal_fsyncs": wal.fsyncs,
            "wal_records_appended": wal.records_appended,
        }

    def close(self) -> None:
        self._wal.close()


# --- Replay. ---


def _replay(records: list[Any], metadata: SnapshotMetadata, wal_path: Path) -> tuple[MemoryStorage, HardState, int]:
    """Rebuild the log after the trusted snapshot from the records in log order."""
    entries: list[Entry] = []
    hard_state = HardState()
    for kind, payload in records:
        if kind == RECORD_ENTRY:
            entry = _decode_entry(payload)
            while entries and entries[-1].index >= entry.index:
                entries.pop()
            entries.append(entry)
        elif kind == RECORD_HARD_STATE:
            hard_state = _decode_hard_state(payload)
        elif kind == RECORD_SNAPSHOT:
            marker = _decode(payload)
            if marker[0] == MARKER_INSTALL:
                entries = []
        else:
            raise WALCorruption(
                f"write-ahead log {wal_path} has a record of unknown type {kind}; it was written by "
                "another program or a newer rayconf",
                path=str(wal_path),
                offset_bytes=0,
            )

    memory = MemoryStorage()
    if metadata.index:
        memory.apply_snapshot(Snapshot(metadata=metadata))
    after = [entry for entry in entries if entry.index > metadata.index]
    if after and after[0].index != metadata.index + 1:
        raise WALCorruption(
            f"write-ahead log {wal_path} resumes at index {after[0].index} but the snapshot ends at "
            f"{metadata.index}; restore this member from another replica",
            path=str(wal_path),
            offset_bytes=0,
        )
    memory.append(after)
    memory.set_hard_state(hard_state)
    return memory, hard_state, len(after)


def _newest_trusted_snapshot(
    snapshots: Path, trusted: set[tuple[int, int]]
) -> tuple[Path | None, SnapshotMetadata]:
    candidates = sorted(snapshots.glob("snapshot-*.raft.json"), reverse=True)
    for metadata_path in candidates:
        metadata = _read_metadata(metadata_path)
        directory = snapshots / metadata_path.name.removesuffix(".raft.json")
        if (metadata.index, metadata.term) in trusted and directory.is_dir():
            return directory, metadata
        logger.warning("ignoring snapshot %s: no marker for it in the write-ahead log", directory)
    return None, SnapshotMetadata()


# --- Encoding. ---


def _encode_entry(entry: Entry) -> bytes:
    packed: bytes = msgpack.packb([entry.index, entry.term, entry.type.value, entry.data], use_bin_type=True)
    return packed


def _decode_entry(payload: bytes) -> Entry:
    index, term, kind, data = _decode(payload)
    return Entry(index=index, term=term, type=EntryType(kind), data=data)


def _encode_hard_state(hard_state: HardState) -> bytes:
    packed: bytes = msgpack.packb([hard_state.term, hard_state.vote, hard_state.commit], use_bin_type=True)
    return packed


def _decode_hard_state(payload: bytes) -> HardState:
    term, vote, commit = _decode(payload)
    return HardState(term=term, vote=vote, commit=commit)


def _encode_marker(kind: str, metadata: SnapshotMetadata) -> bytes:
    packed: bytes = msgpack.packb([kind, metadata.index, metadata.term], use_bin_type=True)
    return packed


def _decode(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.exceptions.UnpackException) as exc:
        # The WAL checked this record's CRC, so a decode failure means another format.
        raise StorageError(f"a write-ahead log record passed its checksum but is not valid msgpack: {exc}") from exc


def _write_metadata(snapshots: Path, metadata: SnapshotMetadata) -> None:
    conf = metadata.conf_state
    document = {
        "index": metadata.index,
        "term": metadata.term,
        "conf_state": {
            "voters": list(conf.voters),
            "learners": list(conf.learners),
            "voters_outgoing": list(conf.voters_outgoing),
            "learners_next": list(conf.learners_next),
            "auto_leave": conf.auto_leave,
        },
    }
    path = snapshots / f"{mvcc_snapshot.snapshot_name(metadata.index)}.raft.json"
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(json.dumps(document, sort_keys=True).encode())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    descriptor = os.open(snapshots, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_metadata(path: Path) -> SnapshotMetadata:
    try:
        document = json.loads(path.read_bytes())
        conf = document["conf_state"]
        return SnapshotMetadata(
            index=int(document["index"]),
            term=int(document["term"]),
            conf_state=ConfState(
                voters=tuple(conf["voters"]),
                learners=tuple(conf["learners"]),
                voters_outgoing=tuple(conf["voters_outgoing"]),
                learners_next=tuple(conf["learners_next"]),
                auto_leave=bool(conf["auto_leave"]),
            ),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotCorruption(
            f"cannot read snapshot metadata {path}: {exc}; restore this member from another replica",
            path=str(path),
        ) from exc
