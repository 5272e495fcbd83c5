"""Chunks of large values on a replica: copying them in, serving them, repairing and collecting them.

Write path. The client splits a large value into chunks, `ray.put`s them and
sends their ObjectRefs with the put. Before the leader proposes the entry
that names the chunks, it asks every voter, itself included, to copy them
from the object store into its chunk store (`store_from_refs`). It proposes
only after a quorum of voters has fsynced them. Any quorum that commits the
entry later overlaps that one, so every committed manifest has all its chunks
on at least one member of any quorum. The copies cannot simply keep the
client's objects, because an object dies with the process that put it.

Voters that missed the copy, learners, and members restored from a snapshot
fetch missing chunks from a peer in the background (`ensure_present`), and
on demand when a reader asks for a chunk they lack.

Read path. `read` returns one ObjectRef per chunk, each put by this actor,
which outlives any client. A chunk file that fails its sha256 is deleted,
fetched again from a peer, rewritten, and then served, so the reader gets
good bytes and the bad copy is repaired. The client checks every hash again.

Garbage. After a compaction or snapshot restore, the actor lists the digests
that retained revisions name and deletes other chunk files older than
`chunk_orphan_grace_s`. That covers chunks of compacted revisions and chunks
uploaded for a put that never committed, for example because its client died
mid-upload.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import ray

from rayconf.actors.priority import set_thread_nice
from rayconf.errors import ChunkCorrupt, ChunkMissing, InvalidRequest, RayconfError, StorageError, Unavailable
from rayconf.store.chunk_store import ChunkStore
from rayconf.store.limits import Limits
from rayconf.store.manifest import Manifest, decode_manifest, is_manifest, referenced_digests
from rayconf.store.mvcc import MVCC
from rayconf.store.records import Command, CompareTarget, Put, Txn

logger = logging.getLogger(__name__)

_Result = TypeVar("_Result")

# Chunks copied, fetched or served at once by one replica. With 1 MiB chunks,
# this bounds the chunk bytes in a replica's own heap to a few MiB, however
# many large puts arrive together.
CHUNK_TRANSFERS_MAX = 4
# Time for a peer to answer one chunk fetch.
PEER_FETCH_TIMEOUT_S = 10.0


class ReplicaChunks:
    """The chunk store of one replica and the calls that fill, serve and empty it."""

    def __init__(self, member: str, directory: Path, namespace: str, grace_s: float, io_nice: int = 0) -> None:
        self.member = member
        self.namespace = namespace
        self.grace_s = grace_s
        self.io_nice = io_nice
        self.store = ChunkStore(directory / "chunks")
        self._transfers = asyncio.Semaphore(CHUNK_TRANSFERS_MAX)
        # Chunk file work (hashing, writing, fsync, reading, collecting) runs
        # on these threads at `io_nice`, so it yields the cores (see actors/priority.py).
        self._io = ThreadPoolExecutor(CHUNK_TRANSFERS_MAX + 1, thread_name_prefix=f"chunk-io-{member}",
                                      initializer=functools.partial(set_thread_nice, io_nice))
        self._background: set[asyncio.Task[None]] = set()
        # Chunks being copied from a client's objects right now, which a
        # background fetch of the same chunks from peers skips.
        self._copying: set[bytes] = set()
        self._scan_running = False
        # Voters and learners, for fetching chunks; kept current by the actor.
        self.members: list[str] = []
        self.counters = {"chunks_copied": 0, "chunks_fetched_from_peers": 0, "corrupt_chunks_repaired": 0,
                         "chunks_collected": 0}

    # --- Write path. ---

    async def replicate(self, digests: list[bytes], refs: dict[bytes, Any], voters: list[str],
                        timeout_s: float) -> None:
        """Have a quorum of `voters`, this member among them, store every chunk durably.

        Raises `Unavailable` when no quorum confirmed within `timeout_s`.
        Copies to the remaining voters go on in the background.
        """
        quorum = len(voters) // 2 + 1
        calls: list[asyncio.Future[Any]] = []
        for voter in voters:
            if voter == self.member:
                calls.append(asyncio.ensure_future(self.store_from_refs(digests, [refs])))
                continue
            handle = self._handle(voter)
            if handle is None:
                continue
            calls.append(asyncio.ensure_future(_await_ref(handle.store_chunks.remote(digests, [refs]))))
        confirmed = 0
        failures: list[str] = []
        deadline = time.monotonic() + timeout_s
        pending = set(calls)
        while pending and confirmed < quorum:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for call in done:
                error = call.exception()
                if error is None:
                    confirmed += 1
                else:
                    failures.append(f"{type(error).__name__}: {error}")
        for call in pending:
            call.add_done_callback(_log_background_failure)
        if confirmed < quorum:
            raise Unavailable(
                f"only {confirmed} of {len(voters)} voters stored the {len(digests)} chunks of the value "
                f"within {timeout_s} s (a quorum is {quorum}); errors: {failures[:3]}. The put was not "
                "proposed; retry it"
            )

    async def store_from_refs(self, digests: list[bytes], refs_box: list[dict[bytes, Any]]) -> int:
        """Copy each chunk from its ObjectRef (or, lacking one, from a peer) unless present; return how many were new.

        `refs_box` wraps the refs in a list so that Ray passes them through
        unresolved. Chunks are copied concurrently, at most
        `CHUNK_TRANSFERS_MAX` at a time across all calls.
        """
        refs = refs_box[0] if refs_box else {}
        results = await asyncio.gather(*(self._copy_one(digest, refs.get(digest)) for digest in digests))
        copied = sum(results)
        self.counters["chunks_copied"] += copied
        return copied

    async def _copy_one(self, digest: bytes, ref: Any) -> bool:
        # Refresh the file's age, so garbage collection never removes an old,
        # unreferenced chunk that a new put is about to name. When collection
        # removed it first, it is copied below.
        if self.store.contains(digest) and await self._on_io_thread(self.store.touch, digest):
            return False
        self._copying.add(digest)
        try:
            async with self._transfers:
                if ref is None:
                    data = await self._fetch_from_peers(digest)
                else:
                    try:
                        data = await ref
                    except ray.exceptions.RayError as error:
                        raise Unavailable(
                            f"{self.member} could not copy chunk {digest.hex()} from the client's object "
                            f"({type(error).__name__}); the client may have exited. Retry the put"
                        ) from None
                written: bool = await self._on_io_thread(self.store.write, digest, data)
                return written
        finally:
            self._copying.discard(digest)

    async def _on_io_thread(self, function: Callable[..., _Result], *arguments: Any) -> _Result:
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *arguments)

    # --- Read path. ---

    async def read(self, digests: list[bytes], local_only: bool) -> list[Any]:
        """Return one ObjectRef per chunk, put by this actor, after checking each chunk's hash.

        With `local_only`, a missing or corrupt chunk raises instead of being
        fetched from a peer; peers fetching from each other use it, so a
        chunk that nobody has cannot send requests in a loop.
        """
        return list(await asyncio.gather(*(self._read_one(digest, local_only) for digest in digests)))

    async def _read_one(self, digest: bytes, local_only: bool) -> Any:
        async with self._transfers:
            data = await self._load(digest, local_only)
            # The copy into the object store runs on an I/O thread too.
            return await self._on_io_thread(ray.put, data)

    async def _load(self, digest: bytes, local_only: bool) -> bytes:
        try:
            return await self._on_io_thread(self.store.read, digest)
        except ChunkCorrupt as error:
            logger.warning("replica %s: %s", self.member, error)
            self.store.remove(digest)
            if local_only:
                raise
            data = await self._fetch_from_peers(digest)
            await self._on_io_thread(self.store.write, digest, data)
            self.counters["corrupt_chunks_repaired"] += 1
            return data
        except ChunkMissing:
            if local_only:
                raise
        data = await self._fetch_from_peers(digest)
        await self._on_io_thread(self.store.write, digest, data)
        return data

    async def _fetch_from_peers(self, digest: bytes) -> bytes:
        errors: list[str] = []
        for peer in self._peers():
            handle = self._handle(peer)
            if handle is None:
                continue
            try:
                refs = await asyncio.wait_for(_await_ref(handle.read_chunks.remote([digest], True)),
                                              timeout=PEER_FETCH_TIMEOUT_S)
                data: bytes = await asyncio.wait_for(_await_ref(refs[0]), timeout=PEER_FETCH_TIMEOUT_S)
            except (RayconfError, ray.exceptions.RayError, asyncio.TimeoutError) as error:
                errors.append(f"{peer}: {type(error).__name__}")
                continue
            if hashlib.sha256(data).digest() != digest:
                errors.append(f"{peer}: sent bytes that fail the sha256 check")
                continue
            self.counters["chunks_fetched_from_peers"] += 1
            logger.info("replica %s fetched chunk %s from %s", self.member, digest.hex()[:16], peer)
            return data
        raise ChunkMissing(f"no reachable member has a good copy of chunk {digest.hex()} ({errors})",
                           digest=digest.hex())

    # --- Background work after applying entries. ---

    def after_apply(self, state: MVCC, applied_digests: list[bytes], scan_due: bool,
                    unapplied_digests: Callable[[], set[bytes]]) -> bool:
        """Start background work for what the last entries changed; return whether a due scan started.

        Digests of newly applied manifests are fetched if missing. A scan lists
        what retained revisions and the log's unapplied entries name, collects
        the rest and fetches what is missing.
        """
        if applied_digests:
            self._spawn(self.ensure_present(applied_digests))
        if not scan_due or self._scan_running:
            return False
        self._scan_running = True
        referenced = referenced_digests(state.versions)
        # NOTE: a member that lags by more than the grace period may still
        # delete a chunk that an entry it has not received yet names. It
        # fetches the chunk again from a peer when it applies that entry.
        kept = referenced | unapplied_digests()
        self._spawn(self._scan(referenced, kept))
        return True

    async def ensure_present(self, digests: Iterable[bytes]) -> None:
        """Fetch from peers every chunk in `digests` that this member lacks."""
        for digest in dict.fromkeys(digests):
            if digest in self._copying or self.store.contains(digest):
                continue
            async with self._transfers:
                try:
                    data = await self._fetch_from_peers(digest)
                    await self._on_io_thread(self.store.write, digest, data)
                except (ChunkMissing, ChunkCorrupt, StorageError) as error:
                    logger.warning("replica %s could not fetch chunk %s yet: %s", self.member, digest.hex(), error)

    async def _scan(self, referenced: set[bytes], kept: set[bytes]) -> None:
        try:
            removed = await self._on_io_thread(self.store.collect_garbage, kept, self.grace_s)
            self.counters["chunks_collected"] += len(removed)
            await self.ensure_present(referenced)
        finally:
            self._scan_running = False

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_background_failure)

    # --- Peers. ---

    def _peers(self) -> list[str]:
        return [member for member in self.members if member != self.member]

    def _handle(self, member: str) -> Any:
        from rayconf.actors.transport import replica_actor_name

        try:
            return ray.get_actor(replica_actor_name(member), namespace=self.namespace)
        except ValueError:
            return None

    def statistics(self) -> dict[str, int]:
        return {**self.store.statistics(), **self.counters, "chunk_io_nice": self.io_nice}


async def _await_ref(ref: Any) -> Any:
    return await ref


def _log_background_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.warning("background chunk work failed: %s: %s", type(error).__name__, error)


def chunk_digests_of(command: Command, limits: Limits) -> list[bytes]:
    """Return the chunk digests that `command`'s manifests name, in order and without repeats.

    Raises `InvalidRequest` for a value or compare operand above
    `inline_value_bytes_max` that is not sent as a manifest, and for a
    manifest whose chunk size differs from the cluster's `chunk_bytes`.
    The MVCC state accepts both, so that logs written before these limits
    still replay the same way; new entries are held to them here.
    """
    if not isinstance(command.body, Txn):
        return []
    digests: dict[bytes, None] = {}
    for compare in command.body.compares:
        if compare.target is CompareTarget.VALUE and isinstance(compare.operand, bytes):
            # A compare needs only the manifest, never the chunks behind it.
            _check_large_value(compare.key, compare.operand, limits)
    for branch in (command.body.success, command.body.failure):
        for operation in branch:
            if isinstance(operation, Put):
                manifest = _check_large_value(operation.key, operation.value, limits)
                if manifest is not None:
                    digests.update(dict.fromkeys(manifest.chunk_digests))
    return list(digests)


def _check_large_value(key: bytes, value: bytes, limits: Limits) -> Manifest | None:
    shown = key.decode("utf-8", errors="backslashreplace")
    if not is_manifest(value):
        if len(value) > limits.inline_value_bytes_max:
            raise InvalidRequest(
                f"value of {shown!r} is {len(value)} bytes inline, above inline_value_bytes_max "
                f"({limits.inline_value_bytes_max}); send it as chunks, as the rayconf client does"
            )
        return None
    manifest = decode_manifest(value)
    if manifest.chunk_bytes != limits.chunk_bytes:
        raise InvalidRequest(
            f"value of {shown!r} is split into chunks of {manifest.chunk_bytes} bytes, but this cluster "
            f"uses chunk_bytes {limits.chunk_bytes}; split it again with the cluster's limits"
        )
    return manifest
