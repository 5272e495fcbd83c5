"""The client's chunk cache: bounded in bytes, least recently used out first."""

from __future__ import annotations

import hashlib

import pytest

from rayconf.clients.chunk_cache import CHECKED_MANIFESTS_MAX, ChunkCache
from rayconf.errors import InvalidRequest


def chunk(number: int, size_bytes: int = 100) -> tuple[bytes, bytes]:
    data = bytes([number % 256]) * size_bytes
    return hashlib.sha256(data).digest(), data


def test_evicts_least_recently_used() -> None:
    cache = ChunkCache(capacity_bytes=300)
    (d1, c1), (d2, c2), (d3, c3), (d4, c4) = (chunk(n) for n in range(4))
    for digest, data in ((d1, c1), (d2, c2), (d3, c3)):
        cache.add(digest, data)
    assert cache.get(d1) == c1  # d1 is now the most recently used
    cache.add(d4, c4)
    assert cache.get(d2) is None
    assert [cache.get(d) for d in (d1, d3, d4)] == [c1, c3, c4]
    assert cache.stats()["bytes"] == 300
    assert cache.stats()["hits"] == 4
    assert cache.stats()["misses"] == 1


def test_chunk_larger_than_capacity_is_not_kept() -> None:
    cache = ChunkCache(capacity_bytes=50)
    digest, data = chunk(1)
    cache.add(digest, data)
    assert cache.get(digest) is None
    assert cache.stats()["bytes"] == 0


def test_zero_capacity_keeps_nothing() -> None:
    cache = ChunkCache(capacity_bytes=0)
    digest, data = chunk(1)
    cache.add(digest, data)
    cache.mark_checked(b"manifest")
    assert cache.get(digest) is None
    assert not cache.is_checked(b"manifest")


def test_chunk_added_twice_counted_once() -> None:
    cache = ChunkCache(capacity_bytes=1000)
    digest, data = chunk(1)
    cache.add(digest, data)
    cache.add(digest, data)
    assert cache.stats()["bytes"] == 100


def test_checked_manifests_are_bounded() -> None:
    cache = ChunkCache(capacity_bytes=1)
    for number in range(CHECKED_MANIFESTS_MAX + 1):
        cache.mark_checked(number)
    assert not cache.is_checked(0)
    assert cache.is_checked(CHECKED_MANIFESTS_MAX)


@pytest.mark.parametrize("capacity", [-1, "64MiB", 1.5, None, True])
def test_invalid_capacity_rejected(capacity: object) -> None:
    with pytest.raises(InvalidRequest, match="give 0 to turn the cache off"):
        ChunkCache(capacity_bytes=capacity)  # type: ignore[arg-type]
