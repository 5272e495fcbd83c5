"""Snapshots: the whole MVCC state at an applied log index, on disk.

A snapshot is a directory `snapshot-<applied index>` holding:

- `live.arrow`: the current version of every key, sorted by key;
- the version segments, two Arrow files each (see `segments.py`), after the
  in-memory tail has been flushed into a segment;
- `request_ids.arrow`: the request ids remembered for deduplication, oldest first;
- `auth.msgpack`: users, roles, permissions and the token secret (see `auth.py`);
- `manifest.json`: counters, segment names, and the size and SHA-256 of every file.

It is written into a temporary directory, every file and the directory are
fsynced, and only then is it renamed into place, so a crash leaves either the
whole snapshot or none. Loading checks every size and checksum before it
builds any state. `pack` and `unpack` turn a snapshot into one byte string
and back, for Raft's InstallSnapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import NoReturn, TypedDict, cast

import msgpack
import pyarrow as pa
import pyarrow.compute as pc

from rayconf.errors import InvalidRequest, SnapshotCorruption
from rayconf.store.auth import AuthState
from rayconf.store.limits import Limits
from rayconf.store.mvcc import MVCC
from rayconf.store.segments import read_segment, read_table, write_segment, write_table
from rayconf.store.versions import LiveRecord

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_SNAPSHOT_NAME = re.compile(r"snapshot-[0-9]{16}")
_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MANIFEST = "manifest.json"
AUTH_FILE = "auth.msgpack"

LIVE_SCHEMA = pa.schema(
    [
        ("key", pa.large_binary()),
        ("value", pa.large_binary()),
        ("create_revision", pa.int64()),
        ("mod_revision", pa.int64()),
        ("version", pa.int64()),
    ]
)
REQUEST_IDS_SCHEMA = pa.schema([("request_id", pa.string()), ("revision", pa.int64()), ("succeeded", pa.bool_())])


class FileDescription(TypedDict):
    """Size in bytes and SHA-256 hex digest of one snapshot file."""

    bytes: int
    sha256: str


class Manifest(TypedDict):
    """Contents of `manifest.json`."""

    format: int
    applied_index: int
    revision: int
    compact_revision: int
    segments: list[str]
    segment_sequence: int
    files: dict[str, FileDescription]


def snapshot_name(applied_index: int) -> str:
    return f"snapshot-{applied_index:016d}"


def save(state: MVCC, parent: Path) -> Path:
    """Write `state` as a snapshot under `parent` and return its directory."""
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / snapshot_name(state.applied_index)
    temporary = parent / (final.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()

    state.flush()
    versions = state.versions
    keys = list(versions.live_index)
    records = [versions.live[key] for key in keys]
    write_table(temporary / "live.arrow", pa.table(
        {
            "key": pa.array(keys, type=pa.large_binary()),
            "value": pa.array([r.value for r in records], type=pa.large_binary()),
            "create_revision": pa.array([r.create_revision for r in records], type=pa.int64()),
            "mod_revision": pa.array([r.mod_revision for r in records], type=pa.int64()),
            "version": pa.array([r.version for r in records], type=pa.int64()),
        },
        schema=LIVE_SCHEMA,
    ))
    request_ids = list(state.request_ids.items())
    write_table(temporary / "request_ids.arrow", pa.table(
        {
            "request_id": pa.array([item[0] for item in request_ids], type=pa.string()),
            "revision": pa.array([item[1][0] for item in request_ids], type=pa.int64()),
            "succeeded": pa.array([item[1][1] for item in request_ids], type=pa.bool_()),
        },
        schema=REQUEST_IDS_SCHEMA,
    ))
    for segment in versions.segments:
        write_segment(temporary, segment)
    # NOTE: the token secret is stored here in the clear, as in the write-ahead
    # log; protect the data directory as a credential.
    _write_synced(temporary / AUTH_FILE, state.auth.to_bytes())

    manifest: Manifest = {
        "format": SNAPSHOT_FORMAT,
        "applied_index": state.applied_index,
        "revision": state.revision,
        "compact_revision": state.compact_revision,
        "segments": [segment.name for segment in versions.segments],
        "segment_sequence": versions.segment_sequence,
        "files": {path.name: _describe(path) for path in sorted(temporary.iterdir())},
    }
    _write_synced(temporary / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    _fsync_directory(temporary)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_directory(parent)
    logger.info("saved snapshot %s at revision %d (%d live keys)", final, state.revision, len(keys))
    return final


def load(directory: Path | str, limits: Limits | None = None) -> MVCC:
    """Build an MVCC state from the snapshot in `directory`, checking everything first.

    Every file named in the manifest must match its size and SHA-256, and the
    manifest must name exactly the files a snapshot has. The tables must
    contain what the manifest promises: no nulls, sorted unique live keys, and
    no revision above the snapshot's. Any mismatch raises `SnapshotCorruption`.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_files(directory, manifest)

    state = MVCC(limits)
    state.applied_index = manifest["applied_index"]
    state.revision = manifest["revision"]
    state.compact_revision = manifest["compact_revision"]
    versions = state.versions
    live = read_table(directory / "live.arrow", LIVE_SCHEMA)
    _require(live.combine_chunks(), directory / "live.arrow", manifest["revision"])
    columns = [live.column(name).to_pylist() for name in LIVE_SCHEMA.names]
    keys = columns[0]
    if any(earlier >= later for earlier, later in zip(keys, keys[1:])):
        raise SnapshotCorruption(f"snapshot file {directory / 'live.arrow'} has unsorted or repeated keys",
                                 path=str(directory / "live.arrow"))
    for key, value, create_revision, mod_revision, version in zip(*columns):
        versions.live[key] = LiveRecord(value, create_revision, mod_revision, version)
    versions.live_index.update(keys)
    versions.segments = [read_segment(directory, name) for name in manifest["segments"]]
    for segment in versions.segments:
        _require(segment.versions, directory / segment.name, manifest["revision"])
    versions.segment_sequence = manifest["segment_sequence"]
    retained = set(keys)
    for segment in versions.segments:
        retained.update(segment.keys())
    versions.all_index.update(retained)
    request_table = read_table(directory / "request_ids.arrow", REQUEST_IDS_SCHEMA)
    _require(request_table.combine_chunks(), directory / "request_ids.arrow", manifest["revision"])
    for row in request_table.to_pylist():
        state.request_ids[row["request_id"]] = (row["revision"], row["succeeded"])
    if AUTH_FILE in manifest["files"]:
        try:
            state.auth = AuthState.from_bytes((directory / AUTH_FILE).read_bytes())
        except InvalidRequest as error:
            raise SnapshotCorruption(f"snapshot file {directory / AUTH_FILE} is malformed: {error}",
                                     path=str(directory / AUTH_FILE)) from error
    logger.info("loaded snapshot %s at revision %d (%d live keys)", directory, state.revision, len(versions.live))
    return state


def check_files(directory: Path, manifest: Manifest) -> None:
    """Check that the manifest names exactly the snapshot's files and that each matches."""
    expected_names = {"live.arrow", "request_ids.arrow"}
    # Snapshots written before access control existed have no auth file.
    if AUTH_FILE in manifest["files"]:
        expected_names.add(AUTH_FILE)
    for name in manifest["segments"]:
        expected_names.update({f"{name}.versions.arrow", f"{name}.changes.arrow"})
    if set(manifest["files"]) != expected_names:
        raise SnapshotCorruption(
            f"snapshot manifest in {directory} lists files {sorted(manifest['files'])}, expected "
            f"{sorted(expected_names)}; restore the member from another replica",
            path=str(directory / MANIFEST),
        )
    for name, expected in manifest["files"].items():
        path = directory / name
        actual = _describe(path) if path.is_file() and not path.is_symlink() else None
        if actual != expected:
            raise SnapshotCorruption(
                f"snapshot file {path} is missing or fails its checksum "
                f"(expected {expected}, found {actual}); restore the member from another replica",
                path=str(path),
            )


def _require(table: pa.Table, path: Path, revision: int) -> None:
    """Raise `SnapshotCorruption` if `table` has nulls or a revision above `revision`."""
    for column_name in table.column_names:
        if table.column(column_name).null_count:
            raise SnapshotCorruption(f"snapshot file {path} has null values in column {column_name!r}",
                                     path=str(path))
    for column_name in ("revision", "mod_revision", "create_revision"):
        if column_name in table.column_names and table.num_rows:
            highest = pc.max(table.column(column_name)).as_py()
            if highest > revision:
                raise SnapshotCorruption(
                    f"snapshot file {path} has {column_name} {highest}, above the snapshot revision {revision}",
                    path=str(path),
                )


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SnapshotCorruption(
            f"cannot read snapshot manifest {path}: {exc}; restore the member from another replica",
            path=str(path),
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotCorruption(
            f"snapshot manifest {path} has format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
            f"expected {SNAPSHOT_FORMAT}",
            path=str(path),
        )
    for field_name, field_type in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(field_name), field_type) or isinstance(manifest.get(field_name), bool):
            _bad_manifest(path, f"a missing or malformed field {field_name!r}")
    if type(manifest["format"]) is not int:
        _bad_manifest(path, f"format {manifest['format']!r}, which is not an integer")
    if manifest["revision"] < 1 or not 0 <= manifest["compact_revision"] <= manifest["revision"]:
        _bad_manifest(path, f"revision {manifest['revision']} and compact revision "
                            f"{manifest['compact_revision']}, which are inconsistent")
    if manifest["applied_index"] < 0 or manifest["segment_sequence"] < 0:
        _bad_manifest(path, "a negative applied_index or segment_sequence")
    segments = manifest["segments"]
    if len(set(map(str, segments))) != len(segments) or not all(
        isinstance(name, str) and _SEGMENT_NAME.fullmatch(name) for name in segments
    ):
        _bad_manifest(path, f"invalid or repeated segment names {segments!r}")
    for name, description in manifest["files"].items():
        if not isinstance(description, dict) or set(description) != {"bytes", "sha256"}:
            _bad_manifest(path, f"a malformed description of file {name!r}")
    return cast(Manifest, manifest)


def _bad_manifest(path: Path, problem: str) -> NoReturn:
    raise SnapshotCorruption(
        f"snapshot manifest {path} has {problem}; restore the member from another replica", path=str(path)
    )


_SEGMENT_NAME = re.compile(r"segment-[0-9]{12}")

_MANIFEST_FIELDS: dict[str, type] = {
    "applied_index": int,
    "revision": int,
    "compact_revision": int,
    "segments": list,
    "segment_sequence": int,
    "files": dict,
}


def latest(parent: Path) -> Path | None:
    """Return the newest complete snapshot under `parent`, or None."""
    if not parent.is_dir():
        return None
    names = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith("snapshot-")
                   and not p.name.endswith(".tmp"))
    return parent / names[-1] if names else None


def pack(directory: Path) -> bytes:
    """Return the snapshot in `directory` as one byte string (msgpack map of file name to bytes)."""
    read_manifest(directory)
    files = {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}
    packed: bytes = msgpack.packb({"name": directory.name, "files": files}, use_bin_type=True)
    return packed


def unpack(data: bytes, parent: Path) -> Path:
    """Write a packed snapshot under `parent`, check it, and return its directory."""
    try:
        unpacked = msgpack.unpackb(data, raw=False)
        name, files = unpacked["name"], unpacked["files"]
    except (ValueError, KeyError, TypeError, msgpack.exceptions.UnpackException) as exc:
        raise SnapshotCorruption(f"packed snapshot is malformed: {type(exc).__name__}: {exc!r}",
                                 path=str(parent)) from exc
    if not isinstance(name, str) or not _SNAPSHOT_NAME.fullmatch(name) or not isinstance(files, dict):
        raise SnapshotCorruption(f"packed snapshot has an invalid name {name!r}", path=str(parent))
    parent.mkdir(parents=True, exist_ok=True)
    temporary = parent / (name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        for file_name, content in files.items():
            if not isinstance(file_name, str) or not _SAFE_FILE_NAME.fullmatch(file_name):
                raise SnapshotCorruption(f"packed snapshot has an invalid file name {file_name!r}",
                                         path=str(parent))
            if not isinstance(content, bytes):
                raise SnapshotCorruption(f"packed snapshot file {file_name!r} is {type(content).__name__}, "
                                         "not bytes", path=str(parent))
            _write_synced(temporary / file_name, content)
        _fsync_directory(temporary)
        # Check the new snapshot completely before it replaces anything.
        check_files(temporary, read_manifest(temporary))
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    final = parent / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_directory(parent)
    return final


def _describe(path: Path) -> FileDescription:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

