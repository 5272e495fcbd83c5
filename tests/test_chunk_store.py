"""Manifests, the chunk store and the value limits of large values, without Ray."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from rayconf.errors import ChunkCorrupt, ChunkMissing, InvalidRequest, ValueTooLarge
from rayconf.store.chunk_store import ChunkStore
from rayconf.store.limits import MIB, Limits
from rayconf.store.manifest import (
    MANIFEST_PREFIX,
    ManifestBuilder,
    decode_manifest,
    is_manifest,
    needs_chunks,
    referenced_digests,
    split_value,
)
from rayconf.store.mvcc import MVCC


def test_split_value_round_trips() -> None:
    value = os.urandom(2 * MIB + 17)
    manifest, chunks = split_value(value, MIB)
    assert [len(chunk) for chunk in chunks] == [MIB, MIB, 17]
    assert b"".join(chunks) == value
    assert manifest.size_bytes == len(value)
    assert manifest.value_digest == hashlib.sha256(value).digest()
    assert manifest.chunk_digests == tuple(hashlib.sha256(chunk).digest() for chunk in chunks)
    assert decode_manifest(manifest.encode()) == manifest


def test_manifest_is_function_of_bytes() -> None:
    value = os.urandom(300_000)
    assert split_value(value, 65_536)[0].encode() == split_value(bytes(value), 65_536)[0].encode()
    assert split_value(value, 65_536)[0].encode() != split_value(value[:-1] + b"x", 65_536)[0].encode()


def test_manifest_encoding_is_small() -> None:
    manifest, _ = split_value(os.urandom(10 * MIB), MIB)
    assert len(manifest.encode()) < 500


def test_builder_rejects_short_chunk_before_last() -> None:
    builder = ManifestBuilder(4)
    builder.add(b"ab")
    with pytest.raises(AssertionError):
        builder.add(b"cdef")


@pytest.mark.parametrize("damage", [
    lambda encoded: encoded[:-3],
    lambda encoded: MANIFEST_PREFIX + b"\xc1",
    lambda encoded: MANIFEST_PREFIX + b"\x90",
])
def test_damaged_manifest_raises_invalid_request(damage) -> None:  # type: ignore[no-untyped-def]
    encoded = split_value(b"x" * 100, 10)[0].encode()
    with pytest.raises(InvalidRequest):
        decode_manifest(damage(encoded))


def test_value_shaped_like_manifest_needs_chunks() -> None:
    assert needs_chunks(MANIFEST_PREFIX + b"tiny", inline_value_bytes_max=1024)
    assert needs_chunks(b"x" * 1025, inline_value_bytes_max=1024)
    assert not needs_chunks(b"x" * 1024, inline_value_bytes_max=1024)


def test_limits_reject_inline_limit_above_max() -> None:
    with pytest.raises(InvalidRequest, match="inline_value_bytes_max"):
        Limits(max_value_bytes=MIB, inline_value_bytes_max=2 * MIB)


def test_mvcc_rejects_manifest_above_max_value() -> None:
    state = MVCC(Limits(max_value_bytes=MIB, inline_value_bytes_max=1024, chunk_bytes=1024))
    manifest, _ = split_value(os.urandom(MIB + 1), 1024)
    with pytest.raises(ValueTooLarge) as raised:
        state.put(b"/big", manifest.encode())
    assert raised.value.size_bytes == MIB + 1
    assert raised.value.limit_bytes == MIB
    assert "1.0 MiB" in str(raised.value)
    assert state.get(b"/big") is None


def test_mvcc_rejects_damaged_manifest() -> None:
    state = MVCC()
    with pytest.raises(InvalidRequest, match="/bad"):
        state.put(b"/bad", MANIFEST_PREFIX + b"\x93\x01\x02\x03")
    assert state.get(b"/bad") is None


def test_chunk_store_write_and_read(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(5000)
    digest = hashlib.sha256(data).digest()
    assert store.write(digest, data)
    assert not store.write(digest, data)
    assert store.read(digest) == data
    assert list(store.digests()) == [digest]
    assert store.path_of(digest).parent.name == digest.hex()[:2]


def test_chunk_store_rejects_bytes_of_other_hash(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    with pytest.raises(ChunkCorrupt):
        store.write(hashlib.sha256(b"a").digest(), b"b")
    assert list(store.digests()) == []


def test_chunk_store_detects_corrupt_file(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(5000)
    digest = hashlib.sha256(data).digest()
    store.write(digest, data)
    path = store.path_of(digest)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(ChunkCorrupt) as raised:
        store.read(digest)
    assert raised.value.path == str(path)


def test_chunk_store_missing_chunk(tmp_path: Path) -> None:
    with pytest.raises(ChunkMissing):
        ChunkStore(tmp_path).read(hashlib.sha256(b"none").digest())


def test_garbage_collection_keeps_referenced_and_young(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    kept, orphan, young = (os.urandom(100) for _ in range(3))
    digests = {name: hashlib.sha256(data).digest() for name, data in
               (("kept", kept), ("orphan", orphan), ("young", young))}
    store.write(digests["kept"], kept)
    store.write(digests["orphan"], orphan)
    old = time.time() - 3600
    for name in ("kept", "orphan"):
        os.utime(store.path_of(digests[name]), (old, old))
    store.write(digests["young"], young)
    removed = store.collect_garbage({digests["kept"]}, grace_s=60)
    assert removed == [digests["orphan"]]
    assert store.contains(digests["kept"])
    assert store.contains(digests["young"])
    assert not store.contains(digests["orphan"])


def hour_old_chunk(store: ChunkStore) -> tuple[bytes, bytes]:
    """Write a random chunk whose file is an hour old; return its digest and bytes."""
    data = os.urandom(100)
    digest = hashlib.sha256(data).digest()
    store.write(digest, data)
    old = time.time() - 3600
    os.utime(store.path_of(digest), (old, old))
    return digest, data


def test_touch_restarts_grace_period(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    digest, _ = hour_old_chunk(store)
    assert store.touch(digest) is True
    assert store.collect_garbage(set(), grace_s=60) == []


def test_touch_reports_collected_chunk(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    digest, _ = hour_old_chunk(store)
    assert store.collect_garbage(set(), grace_s=60) == [digest]
    assert store.touch(digest) is False, "the caller must copy the chunk again"


def test_touch_never_loses_to_collection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Collection pauses between its age check and the delete. A touch in that
    # pause must report whether the chunk survives.
    store = ChunkStore(tmp_path)
    digest, _ = hour_old_chunk(store)
    checked = threading.Event()
    unlink = Path.unlink

    def paused_unlink(path: Path, missing_ok: bool = False) -> None:
        checked.set()
        time.sleep(0.2)
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", paused_unlink)
    collector = threading.Thread(target=store.collect_garbage, args=(set(), 60))
    collector.start()
    assert checked.wait(timeout=10)
    touched = store.touch(digest)
    collector.join()
    assert touched == store.contains(digest)


def test_rewrite_refreshes_existing_chunk(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    digest, data = hour_old_chunk(store)
    assert store.write(digest, data) is False
    assert store.collect_garbage(set(), grace_s=60) == []


def test_referenced_digests_follow_compaction() -> None:
    state = MVCC(Limits(tail_versions_max=2, segments_max=2))
    first, _ = split_value(b"a" * 100, 10)
    second, _ = split_value(b"b" * 100, 10)
    state.put(b"/doc", first.encode())
    state.put(b"/doc", second.encode())
    for number in range(5):
        state.put(b"/filler", str(number).encode())
    assert state.versions.segments, "the old manifest must sit in a segment for this test"
    assert referenced_digests(state.versions) == set(first.chunk_digests) | set(second.chunk_digests)
    state.compact(state.revision)
    assert referenced_digests(state.versions) == set(second.chunk_digests)
    state.delete(b"/doc")
    state.put(b"/other", b"x")
    state.compact(state.revision)
    assert referenced_digests(state.versions) == set()


def test_is_manifest_only_by_prefix() -> None:
    assert is_manifest(split_value(b"z" * 20, 10)[0].encode())
    assert not is_manifest(b"plain value")
