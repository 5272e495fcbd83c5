"""A client's cache of checked chunks, bounded in bytes.

Chunks are named by their sha256, so a chunk never changes: a cached chunk
is as good as one fetched now, whatever the consistency of the read that
named it. Caching them means that a large value read again, as configuration
is, costs one small read of its manifest instead of a transfer of every
chunk. Only chunks that passed their hash check, or that this client hashed
itself on upload, go in.

The cache also remembers manifests whose whole-value hash was checked, so a
value served entirely from the cache is not hashed again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from rayconf.errors import InvalidRequest
from rayconf.store.validation import is_int

# Manifests remembered as checked, each about 40 bytes per chunk.
CHECKED_MANIFESTS_MAX = 4096


class ChunkCache:
    """Least recently used chunks by digest, at most `capacity_bytes` of them; 0 turns caching off.

    Safe to use from several threads: the asyncio client resolves large
    values in worker threads.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if not is_int(capacity_bytes) or capacity_bytes < 0:
            raise InvalidRequest(f"chunk_cache_bytes must be a whole number of bytes, 0 or more, got "
                                 f"{capacity_bytes!r}; give 0 to turn the cache off")
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._checked: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> bytes | None:
        with self._lock:
            chunk = self._chunks.get(digest)
            if chunk is None:
                self.misses += 1
                return None
            self._chunks.move_to_end(digest)
            self.hits += 1
            return chunk

    def add(self, digest: bytes, chunk: bytes) -> None:
        """Keep `chunk`, whose sha256 the caller has checked to be `digest`."""
        if len(chunk) > self.capacity_bytes:
            return
        with self._lock:
            if digest in self._chunks:
                self._chunks.move_to_end(digest)
                return
            self._chunks[digest] = chunk
            self.size_bytes += len(chunk)
            while self.size_bytes > self.capacity_bytes:
                _, evicted = self._chunks.popitem(last=False)
                self.size_bytes -= len(evicted)

    def is_checked(self, manifest: Hashable) -> bool:
        """Return whether the value of this manifest was joined from its chunks and matched its hash."""
        with self._lock:
            if manifest not in self._checked:
                return False
            self._checked.move_to_end(manifest)
            return True

    def mark_checked(self, manifest: Hashable) -> None:
        if not self.capacity_bytes:
            return
        with self._lock:
            self._checked[manifest] = None
            self._checked.move_to_end(manifest)
            while len(self._checked) > CHECKED_MANIFESTS_MAX:
                self._checked.popitem(last=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"chunks": len(self._chunks), "bytes": self.size_bytes, "capacity_bytes": self.capacity_bytes,
                    "hits": self.hits, "misses": self.misses}
