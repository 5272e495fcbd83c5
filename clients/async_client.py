"""The asyncio Python client: the same operations as `Client`, as coroutines.

Concurrent reads are coalesced. Reads issued in the same turn of the event
loop with the same consistency go to the store as one `read_batch` call,
which needs one ReadIndex round for all of them. This is how a process with
many concurrent callers reaches high read throughput without one actor call
and one quorum round per read.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray

from rayconf.actors.cluster import ClusterSpec, find_replica, find_store, status
from rayconf.clients.client import (
    READ_ATTEMPT_TIMEOUT_S,
    Consistency,
    _prefix_key,
    cas_failure,
    cas_guard,
    check_min_revision,
    parse_consistency,
    to_key,
)
from rayconf.clients.chunk_cache import ChunkCache
from rayconf.clients.large_values import CHUNK_CACHE_BYTES, LargeValues
from rayconf.clients.read_channel import AsyncReadChannels
from rayconf.store.manifest import is_manifest
from rayconf.errors import InvalidRequest, NotLeader, RayconfError, Unavailable
from rayconf.store.keys import prefix_end
from rayconf.store.validation import check_note
from rayconf.store.records import (
    Command,
    Compact,
    CompactResponse,
    DeleteRange,
    DeleteRangeResponse,
    HistoryEntry,
    KeyValue,
    Put,
    RangeRequest,
    RangeResponse,
    Txn,
    TxnResponse,
)

T = TypeVar("T")
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# Requests per coalesced read call; a larger batch is split.
READ_BATCH_MAX = 256


@dataclass(slots=True)
class _PendingBatch:
    requests: list[RangeRequest] = field(default_factory=list)
    futures: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)


class AsyncClient:
    """An asyncio connection to one rayconf cluster. See `Client` for the arguments."""

    def __init__(self, spec: ClusterSpec, *, timeout_s: float = 10.0, principal: str = "",
                 data_center: str | None = None, session: bool = True, token: str | None = None,
                 token_source: Callable[[], str | None] | None = None,
                 chunk_cache_bytes: int = CHUNK_CACHE_BYTES, read_channel: bool = True) -> None:
        """See `Client`. With auth enabled, give `token`, or `token_source`, which returns a fresh token.

        `Client.aio` passes its own login as `token_source`, so a client with
        a user and password works in both forms.
        """
        self.spec = spec
        self._token = token
        self._token_source = token_source
        self.timeout_s = timeout_s
        self.principal = principal
        self.data_center = data_center or os.environ.get("RAYCONF_DATA_CENTER") or spec.data_centers[0].name
        if self.data_center not in {dc.name for dc in spec.data_centers}:
            raise InvalidRequest(f"data center {self.data_center!r} is not in the cluster spec")
        self.session = session
        self.last_revision = 0
        self.read_calls = 0
        self._client_id = uuid.uuid4().hex[:16]
        self._sequence = itertools.count(1)
        self._leader = ""
        self._random = random.Random()
        self._batches: dict[tuple[str, str, int | None, int], _PendingBatch] = {}
        self.read_channel = read_channel
        self._channels = AsyncReadChannels(spec) if read_channel else None
        # Chunking and fetching are blocking Ray calls, so they run in a thread.
        self.large_values = LargeValues(spec, data_center=self.data_center, timeout_s=timeout_s,
                                        cache=ChunkCache(chunk_cache_bytes))

    # --- Writes. ---

    async def put(self, key: str | bytes, value: bytes, *, prev_kv: bool = False, note: str = "") -> TxnResponse:
        if not isinstance(value, bytes):
            raise InvalidRequest(f"value must be bytes, got {type(value).__name__}; encode text with .encode()")
        return await self.txn(Txn(success=(Put(to_key(key), value, prev_kv),)), note=note)

    async def delete(self, key: str | bytes, *, prefix: bool = False, prev_kv: bool = False,
                     note: str = "") -> DeleteRangeResponse:
        raw = _prefix_key(key) if prefix else to_key(key)
        response = await self.txn(Txn(success=(DeleteRange(raw, prefix_end(raw) if prefix else None, prev_kv),)),
                                  note=note)
        result = response.responses[0]
        assert isinstance(result, DeleteRangeResponse)
        return result

    async def cas(self, key: str | bytes, expected: bytes | None, value: bytes, *, note: str = "") -> TxnResponse:
        raw = to_key(key)
        response = await self.txn(cas_guard(raw, expected, value), note=note)
        if not response.succeeded:
            raise cas_failure(raw, expected, response)
        return response

    async def txn(self, txn: Txn, *, note: str = "") -> TxnResponse:
        prepared, chunk_refs = await asyncio.to_thread(self.large_values.prepare_txn, txn)
        result = await self._propose(self._command(prepared, note), chunk_refs)
        assert isinstance(result, TxnResponse)
        self.last_revision = max(self.last_revision, result.revision)
        return await asyncio.to_thread(self.large_values.resolve_txn, result)

    async def compact(self, revision: int) -> CompactResponse:
        result = await self._propose(self._command(Compact(revision), ""))
        assert isinstance(result, CompactResponse)
        return result

    def _command(self, body: Txn | Compact, note: str) -> Command:
        if isinstance(note, str):
            check_note(note)
        return Command(body, request_id=f"{self._client_id}:{next(self._sequence)}", principal=self.principal,
                       time_ms=int(time.time() * 1000), note=note)

    async def _current_token(self) -> str | None:
        if self._token_source is None:
            return self._token
        # The source may log in over Ray with a blocking call, so it runs in a thread.
        return await asyncio.to_thread(self._token_source)

    async def _propose(self, command: Command, chunk_refs: dict[bytes, Any] | None = None) -> Any:
        async def attempt() -> Any:
            handle = find_replica(self.spec, await self._find_leader())
            if handle is None:
                self._leader = ""
                raise Unavailable("the leader's replica is not running")
            try:
                token = await self._current_token()
                if chunk_refs:
                    call = handle.propose.remote(command, self.timeout_s / 2, chunk_refs, token=token)
                    return await asyncio.wait_for(call, timeout=self.timeout_s + 1)
                return await asyncio.wait_for(handle.propose.remote(command, token=token), timeout=self.timeout_s)
            except NotLeader as error:
                self._leader = error.leader_hint or ""
                raise
        return await self._retry(attempt, f"request {command.request_id}")

    # --- Reads. ---

    async def get(self, key: str | bytes, *, revision: int = 0, consistency: Consistency = "linearizable",
                  min_revision: int = 0) -> KeyValue | None:
        response = await self.range_request(RangeRequest(to_key(key), revision=revision), consistency, min_revision)
        return response.kvs[0] if response.kvs else None

    async def range(self, prefix: str | bytes, *, limit: int = 0, revision: int = 0, keys_only: bool = False,
                    count_only: bool = False, consistency: Consistency = "linearizable",
                    min_revision: int = 0) -> RangeResponse:
        start = _prefix_key(prefix)
        request = RangeRequest(start, prefix_end(start), limit, revision, keys_only, count_only)
        return await self.range_request(request, consistency, min_revision)

    async def range_request(self, request: RangeRequest, consistency: Consistency = "linearizable",
                            min_revision: int = 0) -> RangeResponse:
        mode, staleness_ms = parse_consistency(consistency)
        check_min_revision(min_revision)
        if self.session:
            min_revision = max(min_revision, self.last_revision)
        stores = self.spec.stores_in(self.data_center)
        if not stores:
            raise Unavailable(f"data center {self.data_center} has no shard store; the async client reads "
                              "only through stores")

        async def attempt() -> RangeResponse:
            store = stores[self._random.randrange(len(stores))]
            reply = await self._coalesced_read(store, request, mode, staleness_ms, min_revision)
            response: RangeResponse = reply["response"]
            return response
        response = await self._retry(attempt, "read")
        if request.keys_only or request.count_only or not any(is_manifest(kv.value) for kv in response.kvs):
            return response
        cached = self.large_values.resolve_range_from_cache(response)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.large_values.resolve_range, response)

    def _coalesced_read(self, store: str, request: RangeRequest, mode: str, staleness_ms: int | None,
                        min_revision: int) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        key = (store, mode, staleness_ms, min_revision)
        batch = self._batches.get(key)
        if batch is None or len(batch.requests) >= READ_BATCH_MAX:
            batch = _PendingBatch()
            self._batches[key] = batch
            loop.call_soon(lambda: asyncio.ensure_future(self._send_batch(key, batch)))
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        batch.requests.append(request)
        batch.futures.append(future)
        return future

    async def _send_batch(self, key: tuple[str, str, int | None, int], batch: _PendingBatch) -> None:
        if self._batches.get(key) is batch:
            del self._batches[key]
        store, mode, staleness_ms, min_revision = key
        self.read_calls += 1
        attempt_s = min(self.timeout_s, READ_ATTEMPT_TIMEOUT_S)
        try:
            token = await self._current_token()
            replies = None
            if self._channels is not None:
                replies = await self._channels.read(store, batch.requests, mode, min_revision, staleness_ms,
                                                    attempt_s, token)
            if replies is None:
                handle = find_store(self.spec, store)
                if handle is None:
                    raise Unavailable(f"shard store {store} is not running")
                replies = await asyncio.wait_for(
                    handle.read_batch.remote(batch.requests, mode, min_revision, staleness_ms, attempt_s, token),
                    timeout=attempt_s + 1,
                )
        except BaseException as error:  # every waiter gets the same failure
            for future in batch.futures:
                if not future.done():
                    future.set_exception(_unwrap(error))
            return
        assert replies is not None
        for future, reply in zip(batch.futures, replies):
            if not future.done():
                future.set_result(reply)

    async def aclose(self) -> None:
        """Close the read connections of the running event loop; the client reconnects on demand."""
        if self._channels is not None:
            await self._channels.close()

    async def history(self, key: str | bytes, *, limit: int = 0) -> list[HistoryEntry]:
        raw = to_key(key)

        async def attempt() -> list[HistoryEntry]:
            handle = find_replica(self.spec, await self._find_leader())
            if handle is None:
                raise Unavailable("the leader's replica is not running")
            entries: list[HistoryEntry] = await handle.history.remote(raw, limit, await self._current_token())
            return entries
        entries = await self._retry(attempt, "history")
        return await asyncio.to_thread(self.large_values.resolve_history, entries)

    async def status(self) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, status, self.spec)

    # --- Leader discovery and retries. ---

    async def _find_leader(self) -> str:
        if not self._leader:
            current = await self.status()
            if not current["leader"]:
                raise Unavailable("no leader is known; a majority of voters may be down or partitioned")
            self._leader = current["leader"]
        return self._leader

    async def _retry(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        deadline = time.monotonic() + self.timeout_s
        delay = BACKOFF_INITIAL_S
        while True:
            try:
                return await attempt()
            except BaseException as raw_error:
                error = _unwrap(raw_error)
                if isinstance(error, NotLeader):
                    self._leader = error.leader_hint or ""
                elif isinstance(error, Unavailable):
                    self._leader = ""
                elif isinstance(error, RayconfError):
                    raise error from None
                else:
                    raise
                if time.monotonic() + delay > deadline:
                    raise Unavailable(f"{what} did not succeed within {self.timeout_s} s: {error}") from error
            await asyncio.sleep(delay * (0.5 + self._random.random()))
            delay = min(delay * 2, BACKOFF_MAX_S)


def _unwrap(error: BaseException) -> BaseException:
    """Return the rayconf error inside a Ray failure, or an `Unavailable` for a lost actor."""
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, RayconfError):
        return error.cause
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, ray.exceptions.RayActorError):
        # A store or hub lost the replica it called (killed or restarting).
        return Unavailable(f"the call failed: {type(error.cause).__name__} behind the actor it called")
    if isinstance(error, (ray.exceptions.RayActorError, asyncio.TimeoutError)):
        return Unavailable(f"the call failed: {type(error).__name__}")
    return error
