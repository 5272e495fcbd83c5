"""The chunk store: content-addressed files that hold the chunks of large values on one member.

Each chunk lives in `<directory>/<first two hex digits>/<sha256 hex>`. A write
goes to a temporary file, is fsynced, renamed into place and the folder is
fsynced, so after a crash a chunk file is either whole or absent. A read
checks the sha256 again, because a disk can return other bytes than it was
given, and raises `ChunkCorrupt` instead of returning them.

The store never decides on its own which chunks to keep: the caller passes
the set of digests that retained revisions name to `collect_garbage`. Chunks
younger than a grace period are kept even when nothing names them yet,
because a put copies its chunks to the voters before its manifest is
proposed, and the manifest may still be on its way through the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rayconf.errors import ChunkCorrupt, ChunkMissing, InvalidRequest, StorageError
from rayconf.store.manifest import DIGEST_BYTES

logger = logging.getLogger(__name__)

_TEMPORARY_SUFFIX = ".partial"


class ChunkStore:
    """Chunk files of one member, named by their sha256."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Held while a file's age is refreshed and while garbage collection
        # checks a file's age and deletes it, so that a chunk refreshed for a
        # new put is never deleted as old.
        self._age_lock = threading.Lock()

    def path_of(self, digest: bytes) -> Path:
        _check_digest(digest)
        name = digest.hex()
        return self.directory / name[:2] / name

    def contains(self, digest: bytes) -> bool:
        return self.path_of(digest).is_file()

    def write(self, digest: bytes, data: bytes) -> bool:
        """Store `data` under `digest` durably; return False when the chunk was already there.

        A chunk already there has its age refreshed, as by `touch`. Raises
        `ChunkCorrupt` when `data` does not hash to `digest`, and writes nothing then.
        """
        if hashlib.sha256(data).digest() != digest:
            raise ChunkCorrupt(
                f"chunk {digest.hex()} received {len(data)} bytes whose sha256 is "
                f"{hashlib.sha256(data).hexdigest()}; fetch it again from another member",
                digest=digest.hex(),
            )
        path = self.path_of(digest)
        if self.touch(digest):
            return False
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}{_TEMPORARY_SUFFIX}")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise StorageError(f"cannot write chunk file {path}: {error}; check the disk") from error
        _fsync_directory(path.parent)
        return True

    def touch(self, digest: bytes) -> bool:
        """Mark the chunk as just written, restarting its garbage-collection grace period; return whether it exists."""
        with self._age_lock:
            try:
                os.utime(self.path_of(digest))
            except FileNotFoundError:
                return False
            return True

    def read(self, digest: bytes) -> bytes:
        """Return the chunk's bytes; raise `ChunkMissing` if absent and `ChunkCorrupt` if they fail the hash."""
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {digest.hex()} is not in {self.directory}", digest=digest.hex()) from None
        if hashlib.sha256(data).digest() != digest:
            raise ChunkCorrupt(
                f"chunk file {path} fails its sha256 check ({len(data)} bytes); it will be fetched again "
                "from another member",
                digest=digest.hex(),
                path=str(path),
            )
        return data

    def remove(self, digest: bytes) -> bool:
        """Delete the chunk file; return whether it existed."""
        path = self.path_of(digest)
        with self._age_lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

    def digests(self) -> Iterator[bytes]:
        """Yield the digest of every chunk file, in no particular order."""
        for path in self._files():
            if not path.name.endswith(_TEMPORARY_SUFFIX):
                yield bytes.fromhex(path.name)

    def collect_garbage(self, referenced: set[bytes], grace_s: float, now_s: float | None = None) -> list[bytes]:
        """Delete chunks outside `referenced` whose files are older than `grace_s`; return their digests.

        Leftover temporary files older than the grace period go too.
        """
        cutoff = (time.time() if now_s is None else now_s) - grace_s
        removed: list[bytes] = []
        for path in list(self._files()):
            with self._age_lock:
                try:
                    modified = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if modified > cutoff:
                    continue
                if path.name.endswith(_TEMPORARY_SUFFIX):
                    path.unlink(missing_ok=True)
                    continue
                digest = bytes.fromhex(path.name)
                if digest not in referenced:
                    path.unlink(missing_ok=True)
                    removed.append(digest)
        if removed:
            logger.info("chunk store %s removed %d unreferenced chunks", self.directory, len(removed))
        return removed

    def statistics(self) -> dict[str, int]:
        chunks = 0
        size_bytes = 0
        for path in self._files():
            if path.name.endswith(_TEMPORARY_SUFFIX):
                continue
            chunks += 1
            try:
                size_bytes += path.stat().st_size
            except FileNotFoundError:
                continue
        return {"chunks": chunks, "chunk_bytes": size_bytes}

    def _files(self) -> Iterator[Path]:
        for folder in self.directory.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                yield from folder.iterdir()


def _check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
        raise InvalidRequest(f"a chunk digest is {DIGEST_BYTES} bytes of sha256, got {digest!r}")


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
