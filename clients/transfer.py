"""Bulk operations over a prefix: import a directory, export it back, revert to a revision."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rayconf.clients.client import Client
from rayconf.errors import InvalidRequest
from rayconf.store.keys import prefix_end, validate_directory, validate_path
from rayconf.store.limits import Limits
from rayconf.store.records import DeleteRange, KeyValue, Put, RangeRequest, Txn

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


def import_directory(client: Client, directory: Path, prefix: str, *, note: str = "",
                     progress: bool = True) -> TransferSummary:
    """Put every file under `directory` as key `<prefix>/<relative path>`, in batched txns."""
    if not directory.is_dir():
        raise InvalidRequest(f"import source {directory} is not a directory; give a folder of files")
    base = validate_directory(prefix)
    files = sorted(path for path in directory.rglob("*") if path.is_file())
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

    for path in files:
        relative = path.relative_to(directory).as_posix()
        key = validate_path(base.decode() + relative)
        value = path.read_bytes()
        if batch and (len(batch) >= IMPORT_BATCH_KEYS_MAX or batch_bytes + len(value) > IMPORT_BATCH_BYTES_MAX):
            flush()
        batch.append(Put(key, value))
        batch_bytes += len(value)
        done += 1
        total_bytes += len(value)
        if progress:
            _progress("import", done, len(files))
    flush()
    if progress:
        print(file=sys.stderr)
    return TransferSummary(done, total_bytes, txns, time.monotonic() - started, first_revision, last_revision)


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
    """Write every key under `prefix` to `directory/<key without prefix>`, byte for byte."""
    base = validate_directory(prefix)
    started = time.monotonic()
    keys = total_bytes = 0
    for kv in iter_prefix(client, base):
        relative = kv.key[len(base):].decode("utf-8")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(kv.value)
        keys += 1
        total_bytes += len(kv.value)
        if progress:
            _progress("export", keys, 0)
    if progress:
        print(file=sys.stderr)
    return TransferSummary(keys, total_bytes, 0, time.monotonic() - started)


def revert(client: Client, key_or_prefix: str, revision: int, *, prefix: bool = False) -> int:
    """Write the values of `revision` back as one new revision; return it (0 if nothing changed).

    Keys that exist now but did not exist at `revision` are deleted.
    """
    if prefix:
        base = validate_directory(key_or_prefix)
        old = {kv.key: kv.value for kv in iter_prefix(client, base, revision=revision)}
        current = {kv.key: kv.value for kv in iter_prefix(client, base)}
    else:
        key = validate_path(key_or_prefix)
        old_kv = client.get(key, revision=revision)
        current_kv = client.get(key)
        old = {key: old_kv.value} if old_kv else {}
        current = {key: current_kv.value} if current_kv else {}
    operations: list[Put | DeleteRange] = [Put(key, value) for key, value in sorted(old.items())
                                           if current.get(key) != value]
    operations += [DeleteRange(key) for key in sorted(current) if key not in old]
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
    response = client.txn(Txn(success=tuple(operations)), note=f"revert {key_or_prefix} to revision {revision}")
    return response.revision


def _progress(label: str, done: int, total: int) -> None:
    if total:
        width = 30
        filled = width * done // total
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)
    elif done % 50 == 0:
        print(f"\r{label} {done} keys", end="", file=sys.stderr)
