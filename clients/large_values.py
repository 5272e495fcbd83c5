"""Large values on the client: splitting and uploading on writes, fetching and checking on reads.

On a write, every value above the cluster's `inline_value_bytes_max` is split
into chunks of `chunk_bytes`, each chunk is `ray.put` by this process and the
value in the request becomes its manifest (see `rayconf.store.manifest`). The
leader has the voters copy the chunks before it proposes the manifest, so
these objects are needed only until the put returns.

On a read, a manifest found in a response is replaced by the value: the
client asks a replica for the chunks, gets ObjectRefs that the replica owns,
checks each chunk's sha256 and the whole value's sha256, and joins them. A
chunk that fails its check, or a replica that fails, sends the client to the
next replica, those of its own data center first.

Checked chunks, and the chunks this client uploads, stay in a `ChunkCache`
bounded in bytes, so reading a large value again fetches only the chunks
that changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ray

from rayconf.actors.cluster import ClusterSpec, find_replica
from rayconf.clients.chunk_cache import ChunkCache
from rayconf.errors import ChunkCorrupt, ChunkMissing, RayconfError, Unavailable, ValueTooLarge
from rayconf.store.limits import MIB
from rayconf.store.manifest import Manifest, ManifestBuilder, decode_manifest, is_manifest, needs_chunks
from rayconf.store.records import (
    Compare,
    CompareTarget,
    DeleteRangeResponse,
    HistoryEntry,
    KeyValue,
    Operation,
    Put,
    PutResponse,
    RangeResponse,
    Txn,
    TxnResponse,
)

logger = logging.getLogger(__name__)

# Chunks requested from a replica per call while reading. It bounds the chunk
# bytes in a reader's memory before they are written out to ten chunks (10 MiB
# with the default chunk size).
READ_CHUNKS_PER_CALL = 10
# Default bound of a client's chunk cache.
CHUNK_CACHE_BYTES = 64 * MIB


class LargeValues:
    """Chunking and reassembly of large values for one client of one cluster."""

    def __init__(self, spec: ClusterSpec, *, data_center: str, timeout_s: float,
                 cache: ChunkCache | None = None) -> None:
        self.spec = spec
        self.limits = spec.limits
        self.timeout_s = timeout_s
        self.data_center = data_center
        self.cache = cache if cache is not None else ChunkCache(CHUNK_CACHE_BYTES)
        self._random = random.Random()

    # --- Writes. ---

    def prepare_txn(self, txn: Txn) -> tuple[Txn, dict[bytes, Any]]:
        """Return `txn` with large values as manifests, and the ObjectRefs of their chunks by digest.

        Raises `ValueTooLarge` with the size and the limit for a value above
        `max_value_bytes`, before anything is uploaded.
        """
        # Only the size of the caller's bytes is checked here: a value that
        # happens to start with the manifest prefix is sent as chunks like any
        # large value, so it must not be parsed as a manifest.
        for operation in txn.success + txn.failure:
            if (isinstance(operation, Put) and isinstance(operation.value, bytes)
                    and len(operation.value) > self.limits.max_value_bytes):
                raise value_too_large(operation.key, len(operation.value), self.limits.max_value_bytes)
        refs: dict[bytes, Any] = {}
        compares = tuple(self._compare_manifest(compare) for compare in txn.compares)
        success = tuple(self._put_manifest(operation, refs) for operation in txn.success)
        failure = tuple(self._put_manifest(operation, refs) for operation in txn.failure)
        return Txn(compares, success, failure), refs

    def upload(self, value: bytes, key: bytes = b"") -> tuple[bytes, dict[bytes, Any]]:
        """Put the chunks of `value` in the object store; return its encoded manifest and the refs."""
        chunk_bytes = self.limits.chunk_bytes
        chunks = (value[offset:offset + chunk_bytes] for offset in range(0, len(value), chunk_bytes))
        return self.upload_stream(chunks, key)

    def upload_file(self, key: bytes, file: BinaryIO) -> tuple[bytes, dict[bytes, Any]]:
        """Upload a file chunk by chunk, so at most one chunk is in this process's memory at a time.

        Raises `ValueTooLarge` as soon as the file proves larger than `max_value_bytes`.
        """
        return self.upload_stream(iter(lambda: file.read(self.limits.chunk_bytes), b""), key)

    def upload_stream(self, chunks: Iterator[bytes], key: bytes = b"") -> tuple[bytes, dict[bytes, Any]]:
        builder = ManifestBuilder(self.limits.chunk_bytes)
        refs: dict[bytes, Any] = {}
        size_bytes = 0
        for chunk in chunks:
            size_bytes += len(chunk)
            if size_bytes > self.limits.max_value_bytes:
                raise value_too_large(key, size_bytes, self.limits.max_value_bytes, at_least=True)
            digest = builder.add(chunk)
            if digest not in refs:
                refs[digest] = ray.put(chunk)
                self.cache.add(digest, chunk)
        return builder.finish().encode(), refs

    def _put_manifest(self, operation: Operation, refs: dict[bytes, Any]) -> Operation:
        if not isinstance(operation, Put) or not needs_chunks(operation.value, self.limits.inline_value_bytes_max):
            return operation
        manifest, chunk_refs = self.upload(operation.value, operation.key)
        refs.update(chunk_refs)
        return dataclasses.replace(operation, value=manifest)

    def _compare_manifest(self, compare: Compare) -> Compare:
        """Turn a value compare against a large operand into one against its manifest.

        Manifests are a function of the bytes, so equality of manifests is
        equality of values. NOTE: `<` and `>` on a large value compare the
        manifests, which does not follow the order of the values.
        """
        if compare.target is not CompareTarget.VALUE or not isinstance(compare.operand, bytes):
            return compare
        if not needs_chunks(compare.operand, self.limits.inline_value_bytes_max):
            return compare
        builder = ManifestBuilder(self.limits.chunk_bytes)
        chunk_bytes = self.limits.chunk_bytes
        for offset in range(0, len(compare.operand), chunk_bytes):
            builder.add(compare.operand[offset:offset + chunk_bytes])
        return dataclasses.replace(compare, operand=builder.finish().encode())

    # --- Reads. ---

    def value_of(self, kv: KeyValue) -> KeyValue:
        """Return `kv` with its value fetched and checked when it is a manifest, else `kv` itself."""
        if not is_manifest(kv.value):
            return kv
        return dataclasses.replace(kv, value=self.fetch(decode_manifest(kv.value)))

    def resolve_range(self, response: RangeResponse) -> RangeResponse:
        if not any(is_manifest(kv.value) for kv in response.kvs):
            return response
        return dataclasses.replace(response, kvs=tuple(self.value_of(kv) for kv in response.kvs))

    def resolve_range_from_cache(self, response: RangeResponse) -> RangeResponse | None:
        """Return `response` with its large values joined from the cache alone, or None if that cannot be done.

        It makes no Ray call and hashes nothing, so the asyncio client runs it
        in its event loop and sends only the misses to a worker thread.
        """
        kvs = []
        for kv in response.kvs:
            if not is_manifest(kv.value):
                kvs.append(kv)
                continue
            manifest = decode_manifest(kv.value)
            if not self.cache.is_checked(manifest):
                return None
            chunks = [self.cache.get(digest) for digest in manifest.chunk_digests]
            if any(chunk is None for chunk in chunks):
                return None
            kvs.append(dataclasses.replace(kv, value=b"".join(chunks)))  # type: ignore[arg-type]
        return dataclasses.replace(response, kvs=tuple(kvs))

    def resolve_txn(self, response: TxnResponse) -> TxnResponse:
        """Fetch large values in a txn's responses: ranges, and previous values of puts and deletes."""
        resolved: list[Any] = []
        for item in response.responses:
            if isinstance(item, RangeResponse):
                resolved.append(self.resolve_range(item))
            elif isinstance(item, PutResponse) and item.prev_kv is not None:
                resolved.append(PutResponse(self.value_of(item.prev_kv)))
            elif isinstance(item, DeleteRangeResponse) and item.prev_kvs:
                resolved.append(dataclasses.replace(item, prev_kvs=tuple(self.value_of(kv) for kv in item.prev_kvs)))
            else:
                resolved.append(item)
        return dataclasses.replace(response, responses=tuple(resolved))

    def resolve_history(self, entries: list[HistoryEntry]) -> list[HistoryEntry]:
        resolved = []
        for entry in entries:
            event = entry.event
            if is_manifest(event.kv.value) or (event.prev_kv is not None and is_manifest(event.prev_kv.value)):
                prev_kv = None if event.prev_kv is None else self.value_of(event.prev_kv)
                event = dataclasses.replace(event, kv=self.value_of(event.kv), prev_kv=prev_kv)
                entry = dataclasses.replace(entry, event=event)
            resolved.append(entry)
        return resolved

    def fetch(self, manifest: Manifest) -> bytes:
        """Return the whole value of `manifest`, every chunk and the whole checked."""
        return b"".join(self.iter_chunks(manifest))

    def write_to(self, manifest: Manifest, path: Path) -> None:
        """Write the value of `manifest` to `path` chunk by chunk; the file appears only when whole and checked."""
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:
            for chunk in self.iter_chunks(manifest):
                file.write(chunk)
        partial.replace(path)

    def iter_chunks(self, manifest: Manifest) -> Iterator[bytes]:
        """Yield the chunks of `manifest` in order, each checked against its digest.

        Raises `ChunkCorrupt` if the joined bytes fail the value's sha256,
        which only a wrong manifest can cause once every chunk passed. A
        manifest that passed this check once is not hashed again.
        """
        value_hash = None if self.cache.is_checked(manifest) else hashlib.sha256()
        digests = manifest.chunk_digests
        for start in range(0, len(digests), READ_CHUNKS_PER_CALL):
            for chunk in self._cached_or_fetched(list(digests[start:start + READ_CHUNKS_PER_CALL])):
                if value_hash is not None:
                    value_hash.update(chunk)
                yield chunk
        if value_hash is None:
            return
        if value_hash.digest() != manifest.value_digest:
            raise ChunkCorrupt(f"value with sha256 {manifest.value_hex()} reassembled to other bytes; "
                               "its manifest does not match its chunks", digest=manifest.value_hex())
        self.cache.mark_checked(manifest)

    def _cached_or_fetched(self, digests: list[bytes]) -> list[bytes]:
        """Return the chunks of `digests` in order, from the cache where it has them, else from a replica."""
        found = [self.cache.get(digest) for digest in digests]
        missing = list(dict.fromkeys(digest for digest, chunk in zip(digests, found) if chunk is None))
        if not missing:
            return found  # type: ignore[return-value]
        fetched = dict(zip(missing, self._fetch_chunks(missing)))
        for digest, chunk in fetched.items():
            self.cache.add(digest, chunk)
        return [fetched[digest] if chunk is None else chunk for digest, chunk in zip(digests, found)]

    def _fetch_chunks(self, digests: list[bytes]) -> list[bytes]:
        errors: list[str] = []
        for member in self._replicas_in_order():
            handle = find_replica(self.spec, member)
            if handle is None:
                errors.append(f"{member}: not running")
                continue
            try:
                refs = ray.get(handle.read_chunks.remote(digests), timeout=self.timeout_s)
                chunks: list[bytes] = ray.get(refs, timeout=self.timeout_s)
            except ray.exceptions.RayTaskError as error:
                errors.append(f"{member}: {error.cause if isinstance(error.cause, RayconfError) else error}")
                continue
            except ray.exceptions.RayError as error:
                errors.append(f"{member}: {type(error).__name__}")
                continue
            bad = [digest.hex() for digest, chunk in zip(digests, chunks) if hashlib.sha256(chunk).digest() != digest]
            if bad:
                logger.warning("replica %s sent chunks that fail their sha256: %s", member, bad)
                errors.append(f"{member}: chunks {bad} fail their sha256")
                continue
            return chunks
        if errors and all("ChunkMissing" in error or "no reachable member" in error for error in errors):
            raise ChunkMissing(f"no replica could serve chunks {[d.hex()[:16] for d in digests]}: {errors}")
        raise Unavailable(f"no replica served chunks {[d.hex()[:16] for d in digests]}: {errors}; retry the read")

    def _replicas_in_order(self) -> list[str]:
        """Return the members to read chunks from: this data center's first, each group shuffled."""
        local = [member for member in self.spec.replicas_near(self.data_center)
                 if self.spec.data_center_of(member) == self.data_center]
        remote = [member for member in self.spec.members() if member not in local]
        self._random.shuffle(local)
        self._random.shuffle(remote)
        return local + remote


def manifest_of(value: bytes) -> Manifest | None:
    """Return the manifest when `value` is one (as in a watch event for a large value), else None."""
    return decode_manifest(value) if is_manifest(value) else None


def value_too_large(key: bytes, size_bytes: int, limit_bytes: int, *, at_least: bool = False) -> ValueTooLarge:
    """Return the error for a value of `size_bytes` above `limit_bytes`; `at_least` when reading stopped early."""
    shown = key.decode("utf-8", errors="backslashreplace")
    size = f"at least {size_bytes} bytes" if at_least else f"{size_bytes / MIB:.1f} MiB ({size_bytes} bytes)"
    return ValueTooLarge(
        f"value of {shown!r} is {size}, above max_value_bytes ({limit_bytes / MIB:.1f} MiB, {limit_bytes} "
        "bytes); raise the limit in the cluster spec or split the value",
        size_bytes=size_bytes,
        limit_bytes=limit_bytes,
    )
