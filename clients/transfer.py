"""Bulk operations over a prefix: import a directory, export it back, revert to a revision.

Import and export check everything before they change anything. Import
checks every file's key and size before the first txn, so a bad file stops
it with nothing written. Export checks that every key maps to a file inside
the target directory, and that no key is both a file and a directory, before
it writes the first file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rayconf.clients.client import Client
from rayconf.errors import InvalidKey, InvalidRequest, TxnFailed, ValueTooLarge
from rayconf.store.keys import prefix_end, validate_directory, validate_path
from rayconf.store.limits import Limits
from rayconf.store.records import Compare, CompareOp, CompareTarget, DeleteRange, KeyValue, Put, RangeRequest, Txn

# A txn carries at most this many puts and about this many value bytes, so
# one log entry stays well below the transport's message size.
IMPORT_BATCH_KEYS_MAX = 128
IMPORT_BATCH_BYTES_MAX = 4 * 1024 * 1024
EXPORT_PAGE_KEYS = 500


@dataclass(frozen=True, slots=True)
class TransferSummary:
    keys: int
    bytes: int
    txns: int
    elapsed_s: float
    first_revision: int = 0
    last_revision: int = 0
    skipped_links: int = 0


def import_directory(client: Client, directory: Path, prefix: str, *, note: str = "",
                     progress: bool = True) -> TransferSummary:
    """Put every regular file under `directory` as key `<prefix>/<relative path>`, in batched txns.

    Symbolic links are skipped and counted. The keys and sizes of all files
    are checked first, so an invalid name or an oversized file raises a typed
    error before anything is written.
    """
    if not directory.is_dir():
        raise InvalidRequest(f"import source {directory} is not a directory; give a folder of files")
    base = validate_directory(prefix)
    limits = Limits()
    planned: list[tuple[Path, bytes]] = []
    skipped_links = 0
    for root, folders, names in os.walk(directory):
        folders.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                skipped_links += path.is_symlink()
                continue
            relative = path.relative_to(directory).as_posix()
            try:
                key = validate_path(base.decode("utf-8") + relative)
            except InvalidKey as error:
                raise InvalidKey(f"cannot import {path}: {error}; rename the file. Nothing was imported",
                                 key=error.key, rule=error.rule) from None
            size = path.stat().st_size
            if size > limits.max_value_bytes:
                raise ValueTooLarge(f"cannot import {path}: it is {size} bytes, above max_value_bytes "
                                    f"({limits.max_value_bytes} bytes). Nothing was imported",
                                    size_bytes=size, limit_bytes=limits.max_value_bytes)
            planned.append((path, key))

    started = time.monotonic()
    batch: list[Put] = []
    batch_bytes = 0
    done = total_bytes = txns = 0
    first_revision = last_revision = 0

    def flush() -> None:
        nonlocal batch, batch_bytes, txns, first_revision, last_revision
        if not batch:
            return
        response = client.txn(Txn(success=tuple(batch)), note=note or f"import {directory}")
        first_revision = first_revision or response.revision
        last_revision = response.revision
        txns += 1
        batch, batch_bytes = [], 0

    for path, key in planned:
        value = path.read_bytes()
        if batch and (len(batch) >= IMPORT_BATCH_KEYS_MAX or batch_bytes + len(value) > IMPORT_BATCH_BYTES_MAX):
            flush()
        batch.append(Put(key, value))
        batch_bytes += len(value)
        done += 1
        total_bytes += len(value)
        if progress:
            _progress("import", done, len(planned))
    flush()
    if progress:
        print(file=sys.stderr)
    return TransferSummary(done, total_bytes, txns, time.monotonic() - started, first_revision, last_revision,
                           skipped_links)


def iter_prefix(client: Client, prefix: bytes, *, revision: int = 0) -> Iterator[KeyValue]:
    """Yield every key under `prefix` at one revision, a page at a time."""
    start, end = prefix, prefix_end(prefix)
    while True:
        page = client.range_request(RangeRequest(start, end, limit=EXPORT_PAGE_KEYS, revision=revision))
        revision = page.revision
        yield from page.kvs
        if not page.more:
            return
        start = page.next_key


def export_prefix(client: Client, prefix: str, directory: Path, *, progress: bool = True) -> TransferSummary:
    """Write every key under `prefix` to `directory/<key without prefix>`, byte for byte.

    Files that exist are overwritten and other files in `directory` stay.
    A key that is not a valid path, that would land outside `directory`, or
    that is also a directory of other keys raises `InvalidRequest` before
    any file is written.
    """
    base = validate_directory(prefix)
    started = time.monotonic()
    kvs = list(iter_prefix(client, base))
    target_root = directory.resolve()
    planned: list[tuple[Path, bytes]] = []
    for kv in kvs:
        shown = kv.key.decode("utf-8", errors="backslashreplace")
        try:
            validate_path(kv.key)
        except InvalidKey as error:
            raise InvalidRequest(f"cannot export key {shown!r}: {error}. Nothing was written") from None
        target = (target_root / kv.key[len(base):].decode("utf-8")).resolve()
        if target_root not in target.parents:
            raise InvalidRequest(f"cannot export key {shown!r}: it would be written outside {target_root}. "
                                 "Nothing was written")
        planned.append((target, kv.value))
    files = {target for target, _ in planned}
    for target, _ in planned:
        for parent in target.parents:
            if parent in files:
                raise InvalidRequest(f"cannot export: {parent} would be both a file and a directory, because "
                                     f"keys exist for both. Nothing was written")
    total_bytes = 0
    for number, (target, value) in enumerate(planned, start=1):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(value)
        total_bytes += len(value)
        if progress:
            _progress("export", number, len(planned))
    if progress:
        print(file=sys.stderr)
    return TransferSummary(len(planned), total_bytes, 0, time.monotonic() - started)


def revert(client: Client, key_or_prefix: str, revision: int, *, prefix: bool = False) -> int:
    """Write the values of `revision` back as one new revision; return it (0 if nothing changed).

    Keys that exist now but did not exist at `revision` are deleted. The txn
    compares every key it reads now, so a write that lands between the reads
    and the revert makes it fail with `TxnFailed` instead of being lost.
    """
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise InvalidRequest(f"revert revision is {revision!r}; give a revision of 1 or more")
    if prefix:
        base = validate_directory(key_or_prefix)
        old = {kv.key: kv.value for kv in iter_prefix(client, base, revision=revision)}
        now = {kv.key: kv for kv in iter_prefix(client, base)}
    else:
        key = validate_path(key_or_prefix)
        old_kv = client.get(key, revision=revision)
        current_kv = client.get(key)
        old = {key: old_kv.value} if old_kv else {}
        now = {key: current_kv} if current_kv else {}
    operations: list[Put | DeleteRange] = [Put(key, value) for key, value in sorted(old.items())
                                           if key not in now or now[key].value != value]
    operations += [DeleteRange(key) for key in sorted(now) if key not in old]
    if not operations:
        return 0
    # NOTE: the limit is the engine default; a cluster with another max_txn_ops
    # rejects the txn itself with TooManyOperations.
    max_ops = Limits().max_txn_ops
    if len(operations) > max_ops:
        raise InvalidRequest(
            f"reverting {key_or_prefix} changes {len(operations)} keys, above the txn limit of "
            f"{max_ops}; revert smaller prefixes"
        )
    compares = tuple(
        Compare(operation.key, CompareTarget.MOD_REVISION, CompareOp.EQUAL, now[operation.key].mod_revision)
        if operation.key in now else Compare(operation.key, CompareTarget.VERSION, CompareOp.EQUAL, 0)
        for operation in operations
    )
    response = client.txn(Txn(compares=compares, success=tuple(operations)),
                          note=f"revert {key_or_prefix} to revision {revision}")
    if not response.succeeded:
        raise TxnFailed(f"revert of {key_or_prefix} stopped: a key changed while it ran; run it again",
                        revision=response.revision)
    return response.revision


def _progress(label: str, done: int, total: int) -> None:
    if total:
        width = 30
        filled = width * done // total
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)
    elif done % 50 == 0:
        print(f"\r{label} {done} keys", end="", file=sys.stderr)
