"""Manifests of large values: what the Raft log stores in place of a value above the inline limit.

A large value is split into chunks of `Limits.chunk_bytes` (the last one may
be shorter), and each chunk is named by its sha256 digest. The manifest lists
the value's size, its sha256 and the digests of its chunks in order. The
stored value of the key is the encoded manifest: `MANIFEST_PREFIX` followed by
a msgpack array. Every layer that does not need the bytes (the MVCC state,
segments, snapshots, shard stores, watch hubs) keeps and compares the manifest
as an ordinary value, and only clients and replicas' chunk stores deal with
chunks.

Content addressing makes the manifest a function of the value and the chunk
size. So two puts of the same bytes store the same manifest, and a txn
compare on a large value works by comparing manifests for equality.

A value that itself starts with `MANIFEST_PREFIX` is always sent as chunks,
whatever its size, so that reading it back can never mistake it for a manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgpack

from rayconf.errors import InvalidRequest
from rayconf.store.segments import KIND_PUT
from rayconf.store.versions import VersionStore

MANIFEST_PREFIX = b"\x00\xffrayconf-manifest\x00"
MANIFEST_FORMAT = 1
DIGEST_BYTES = 32


@dataclass(frozen=True, slots=True)
class Manifest:
    """A large value by reference: its size, its sha256 and its chunks' sha256 digests in order."""

    size_bytes: int
    value_digest: bytes
    chunk_bytes: int
    chunk_digests: tuple[bytes, ...]

    def encode(self) -> bytes:
        fields = [MANIFEST_FORMAT, self.size_bytes, self.value_digest, self.chunk_bytes, list(self.chunk_digests)]
        packed: bytes = msgpack.packb(fields, use_bin_type=True)
        return MANIFEST_PREFIX + packed

    def chunk_size(self, position: int) -> int:
        """Return the size in bytes of chunk `position`; only the last chunk may be shorter."""
        assert 0 <= position < len(self.chunk_digests)
        return min(self.chunk_bytes, self.size_bytes - position * self.chunk_bytes)

    def value_hex(self) -> str:
        return self.value_digest.hex()


def needs_chunks(value: bytes, inline_value_bytes_max: int) -> bool:
    """Return whether `value` must travel as chunks: above the inline limit or shaped like a manifest."""
    return len(value) > inline_value_bytes_max or value.startswith(MANIFEST_PREFIX)


def is_manifest(value: bytes) -> bool:
    return value.startswith(MANIFEST_PREFIX)


def decode_manifest(value: bytes) -> Manifest:
    """Decode a stored manifest; raise `InvalidRequest` naming the field that is wrong."""
    if not is_manifest(value):
        raise InvalidRequest("value is not a chunk manifest: it lacks the manifest prefix")
    try:
        fields = msgpack.unpackb(value[len(MANIFEST_PREFIX):], raw=False, use_list=True)
    except ValueError as exc:
        raise InvalidRequest(f"chunk manifest is not valid msgpack: {type(exc).__name__}: {exc}") from exc
    if type(fields) is not list or len(fields) != 5:
        raise InvalidRequest("chunk manifest must be a list [format, size, value sha256, chunk size, digests]")
    format_number, size_bytes, value_digest, chunk_bytes, digests = fields
    if format_number != MANIFEST_FORMAT:
        raise InvalidRequest(f"chunk manifest format is {format_number!r}; this build reads only {MANIFEST_FORMAT}")
    if type(size_bytes) is not int or size_bytes < 1:
        raise InvalidRequest(f"chunk manifest size is {size_bytes!r}; expected a positive int")
    if type(chunk_bytes) is not int or chunk_bytes < 1:
        raise InvalidRequest(f"chunk manifest chunk size is {chunk_bytes!r}; expected a positive int")
    if not _is_digest(value_digest):
        raise InvalidRequest(f"chunk manifest value sha256 is {value_digest!r}; expected {DIGEST_BYTES} bytes")
    if type(digests) is not list or not all(_is_digest(digest) for digest in digests):
        raise InvalidRequest(f"chunk manifest digests must be a list of {DIGEST_BYTES}-byte sha256 digests")
    expected_chunks = -(-size_bytes // chunk_bytes)
    if len(digests) != expected_chunks:
        raise InvalidRequest(
            f"chunk manifest lists {len(digests)} chunks, but {size_bytes} bytes in chunks of "
            f"{chunk_bytes} bytes make {expected_chunks}"
        )
    return Manifest(size_bytes, value_digest, chunk_bytes, tuple(digests))


def _is_digest(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == DIGEST_BYTES


class ManifestBuilder:
    """Build a manifest from chunks given one at a time, so a file never has to be held whole."""

    def __init__(self, chunk_bytes: int) -> None:
        assert chunk_bytes >= 1
        self.chunk_bytes = chunk_bytes
        self._value_hash = hashlib.sha256()
        self._digests: list[bytes] = []
        self._size_bytes = 0
        self._short_chunk_seen = False

    def add(self, chunk: bytes) -> bytes:
        """Add the next chunk and return its sha256 digest."""
        # Every chunk but the last is full, so a chunk position maps to an offset.
        assert not self._short_chunk_seen, "only the last chunk may be shorter than chunk_bytes"
        assert 1 <= len(chunk) <= self.chunk_bytes
        self._short_chunk_seen = len(chunk) < self.chunk_bytes
        digest = hashlib.sha256(chunk).digest()
        self._value_hash.update(chunk)
        self._digests.append(digest)
        self._size_bytes += len(chunk)
        return digest

    def finish(self) -> Manifest:
        if not self._digests:
            raise InvalidRequest("a chunked value needs at least one byte; store an empty value inline")
        return Manifest(self._size_bytes, self._value_hash.digest(), self.chunk_bytes, tuple(self._digests))


def split_value(value: bytes, chunk_bytes: int) -> tuple[Manifest, list[bytes]]:
    """Split `value` into chunks of `chunk_bytes`; return its manifest and the chunks."""
    builder = ManifestBuilder(chunk_bytes)
    chunks = [value[offset:offset + chunk_bytes] for offset in range(0, len(value), chunk_bytes)]
    for chunk in chunks:
        builder.add(chunk)
    return builder.finish(), chunks


def manifest_digests(values: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the chunk digests of every manifest among `values`; other values are skipped."""
    for value in values:
        if is_manifest(value):
            try:
                manifest = decode_manifest(value)
            except InvalidRequest:
                continue
            yield from manifest.chunk_digests


def referenced_digests(versions: VersionStore) -> set[bytes]:
    """Return the digest of every chunk that a retained version in `versions` names.

    NOTE: this reads every retained value, segments included, so its cost
    grows with the whole history. It runs only after a compaction or a
    snapshot restore, never on the write path.
    """
    values: list[bytes] = [record.value for record in versions.live.values()]
    for rows in versions.tail.values():
        values.extend(row[2] for row in rows if row[1] == KIND_PUT)
    for segment in versions.segments:
        table = segment.versions
        kinds = table.column("kind").to_pylist()
        stored = table.column("value").to_pylist()
        values.extend(value for kind, value in zip(kinds, stored) if kind == KIND_PUT)
    return set(manifest_digests(values))
