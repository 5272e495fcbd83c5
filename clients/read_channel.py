"""The client's side of the stores' read channels (see `actors/read_channel.py`).

`ReadChannels` serves the blocking `Client`. Each thread keeps its own
connection to each store, so one thread's read does not wait for another's.
`AsyncReadChannels` serves `AsyncClient`: one connection per store and event
loop carries every batch at once, and a reader task hands each reply to the
batch that waits for it.

Both learn a store's endpoint with one Ray call and keep it while it works.
- When a connection cannot be opened, the client requests the store's
  endpoint once more, since a restarted store listens on a new port with a new secret.
  When the store names the same endpoint, or the new one fails too, the
  client logs a warning and reads that store over Ray calls for
  `OVER_RAY_S`.
- A store that has no channel names no endpoint, and the client reads it
  over Ray calls for `OVER_RAY_S` before it requests the endpoint again.
- A reply too large for a frame sends that one read over Ray.
- A read that gets no reply in time raises `Unavailable` naming the store,
  and the store's reads go over Ray calls for `OVER_RAY_S`. A store whose
  process is paused fails those too, but one whose channel alone is stuck
  keeps serving.
- A connection that breaks during a read raises `Unavailable` naming the
  store, which the clients' retry loops treat like a failed actor call. The
  blocking client first sends the read once more on a new connection when
  the broken one had served reads before: the store may have closed it or
  restarted since. Reads change nothing, so sending one twice is safe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
import time
import weakref
from typing import Any

import ray

from rayconf.actors.cluster import ClusterSpec, find_store
from rayconf.actors.read_channel import (
    HANDSHAKE_FRAME_BYTES_MAX,
    REPLY_FRAME_BYTES_MAX,
    REPLY_TOO_LARGE,
    ChannelClosed,
    ClientHandshake,
    handshake_blocking,
    pack_frame,
    parse_response,
    read_frame,
    receive_frame,
    rebuild_error,
)
from rayconf.errors import InvalidRequest, Unavailable
from rayconf.store.codec import range_request_fields
from rayconf.store.records import RangeRequest

# Maximum wait for a TCP connection to open. A shorter attempt timeout cuts it shorter.
CONNECT_TIMEOUT_S = 2.0
# A store whose channel cannot be reached, or that has none, is read over
# Ray calls for this long before the client tries its channel again.
OVER_RAY_S = 30.0

logger = logging.getLogger(__name__)


def read_frame_body(request_id: int, requests: list[RangeRequest], mode: str, min_revision: int,
                    staleness_ms: int | None, attempt_s: float, token: str | None) -> bytes:
    """Pack a read frame; raise `InvalidRequest` for a field that msgpack cannot carry, such as 2**64."""
    try:
        return pack_frame([request_id, mode, min_revision, staleness_ms, attempt_s, token,
                           [range_request_fields(request) for request in requests]])
    except (OverflowError, TypeError, ValueError) as error:
        raise InvalidRequest(f"cannot send the read {requests[0]!r:.200}: {type(error).__name__}: {error}. "
                             "Give revision, limit and min_revision as integers from 0 to 2**64 - 1") from None


def replies_of(store: str, reply: object) -> list[dict[str, Any]] | None:
    """Turn a reply frame into one reply dict per request, or raise the error it carries.

    Returns None for a reply too large for the channel: the caller sends that
    read over Ray.
    """
    if not isinstance(reply, list) or len(reply) < 2:
        raise ChannelClosed("a reply frame is not a list")
    if reply[1] is True and len(reply) == 4:
        age_ms, responses = reply[2], reply[3]
        if type(age_ms) is not int or not isinstance(responses, list):
            raise ChannelClosed("a reply frame has the wrong field types")
        return [{"response": parse_response(fields), "age_ms": age_ms, "store": store} for fields in responses]
    if reply[1] is False and len(reply) == 5:
        if reply[2] == REPLY_TOO_LARGE:
            return None
        raise rebuild_error(reply[2], reply[3], reply[4])
    raise ChannelClosed("a reply frame has neither a result nor an error")


def _no_reply(store: str, wait_s: float) -> Unavailable:
    return Unavailable(f"shard store {store} did not reply within {wait_s:g} s; retry, or read through another "
                       "data center (Client(..., data_center=...))")


class _Endpoints:
    """Endpoints of the stores' channels, learnt over Ray; shared by threads and event loops."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._known: dict[str, dict[str, Any]] = {}
        # Stores read over Ray calls until this monotonic time: their channel
        # could not be reached, or they have none.
        self._over_ray_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def cached(self, store: str) -> tuple[bool, dict[str, Any] | None]:
        """Return whether `store` has a cached entry, and its endpoint (None: read over Ray)."""
        with self._lock:
            until = self._over_ray_until.get(store)
            if until is not None:
                if time.monotonic() < until:
                    return True, None
                del self._over_ray_until[store]
            return store in self._known, self._known.get(store)

    def get(self, store: str, timeout_s: float) -> dict[str, Any] | None:
        known, endpoint = self.cached(store)
        if known:
            return endpoint
        endpoint = self.fetch(store, timeout_s)
        with self._lock:
            if endpoint is None:
                self._over_ray_until[store] = time.monotonic() + OVER_RAY_S
            else:
                self._known[store] = endpoint
        return endpoint

    def fetch(self, store: str, timeout_s: float) -> dict[str, Any] | None:
        """Ask `store` for its channel's endpoint over Ray."""
        handle = find_store(self.spec, store)
        if handle is None:
            raise Unavailable(f"shard store {store} is not running")
        try:
            endpoint = ray.get(handle.read_channel.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise Unavailable(f"shard store {store} did not reply within {timeout_s:g} s to a request for its "
                              "read channel; retry, or read through another data center "
                              "(Client(..., data_center=...))") from None
        found: dict[str, Any] | None = endpoint
        return found

    def forget(self, store: str) -> None:
        with self._lock:
            self._known.pop(store, None)

    def read_over_ray(self, store: str, error: BaseException) -> None:
        """Send `store`'s reads over Ray for `OVER_RAY_S`, because its channel could not be reached."""
        logger.warning("cannot reach the read channel of shard store %s (%s); reading over Ray calls for "
                       "%g s", store, error, OVER_RAY_S)
        with self._lock:
            self._known.pop(store, None)
            self._over_ray_until[store] = time.monotonic() + OVER_RAY_S


class ReadChannels:
    """Blocking reads over the stores' channels, one connection per thread and store."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.endpoints = _Endpoints(spec)
        self._local = threading.local()
        self._ids = itertools.count(1)

    def read(self, store: str, requests: list[RangeRequest], mode: str, min_revision: int,
             staleness_ms: int | None, attempt_s: float, token: str | None) -> list[dict[str, Any]] | None:
        """Serve `requests` on `store`'s channel; None when the client should read over Ray instead."""
        for _ in range(2):
            connection, reused = self._connection(store, attempt_s)
            if connection is None:
                return None
            request_id = next(self._ids)
            frame = read_frame_body(request_id, requests, mode, min_revision, staleness_ms, attempt_s, token)
            try:
                connection.settimeout(attempt_s + 1)
                connection.sendall(frame)
                reply = receive_frame(connection, REPLY_FRAME_BYTES_MAX)
                break
            except socket.timeout:
                self._drop(store)
                # The store may be busy on this channel only (a client that
                # reads no replies fills it), so the retry goes over Ray.
                error = _no_reply(store, attempt_s + 1)
                self.endpoints.read_over_ray(store, error)
                raise error from None
            except (OSError, ChannelClosed) as error:
                self._drop(store)
                if reused:
                    # The store may have closed an idle connection, or restarted: reads are
                    # idempotent, so send once more on a new connection.
                    continue
                raise Unavailable(f"the read connection to shard store {store} failed: {error}") from None
        if not (isinstance(reply, list) and reply and reply[0] == request_id):
            self._drop(store)
            raise Unavailable(f"shard store {store} returned another read's reply for read {request_id}")
        try:
            return replies_of(store, reply)
        except ChannelClosed as error:
            self._drop(store)
            raise Unavailable(f"shard store {store} sent a malformed reply: {error}") from None

    def _connection(self, store: str, attempt_s: float) -> tuple[socket.socket | None, bool]:
        """Return this thread's connection to `store` and whether it was open already; None to read over Ray."""
        connections: dict[str, socket.socket] = self._local.__dict__.setdefault("connections", {})
        connection = connections.get(store)
        if connection is not None:
            if self.endpoints.cached(store) == (True, None):
                # Another thread sent this store's reads over Ray; this thread follows.
                self._drop(store)
                return None, False
            return connection, True
        failed: dict[str, Any] | None = None
        error: BaseException | None = None
        # A cached endpoint may be stale (the store restarted), so after a
        # failure the client requests its endpoint once more.
        for _ in range(2):
            endpoint = self.endpoints.get(store, attempt_s)
            if endpoint is None:
                return None, False
            if endpoint == failed:
                break
            try:
                connection = self._connect(store, endpoint, attempt_s)
            except (OSError, ChannelClosed) as failure:
                failed, error = endpoint, failure
                self.endpoints.forget(store)
                continue
            connections[store] = connection
            return connection, False
        assert error is not None
        self.endpoints.read_over_ray(store, error)
        return None, False

    def _connect(self, store: str, endpoint: dict[str, Any], attempt_s: float) -> socket.socket:
        """Open a connection and run the handshake.

        Raises `OSError` when no connection opens, `ChannelClosed` when the
        handshake fails, and `Unavailable` when the store accepted the
        connection but did not reply in time (its process may be paused).
        """
        connection = socket.create_connection((endpoint["host"], endpoint["port"]),
                                              timeout=min(CONNECT_TIMEOUT_S, attempt_s))
        try:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.settimeout(attempt_s + 1)
            handshake_blocking(connection, store, endpoint["secret"])
        except socket.timeout:
            connection.close()
            raise _no_reply(store, attempt_s + 1) from None
        except BaseException:
            connection.close()
            raise
        return connection

    def _drop(self, store: str) -> None:
        connections: dict[str, socket.socket] = self._local.__dict__.setdefault("connections", {})
        connection = connections.pop(store, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close this thread's connections; other threads' close when their threads end."""
        for connection in self._local.__dict__.pop("connections", {}).values():
            connection.close()


class _AsyncConnection:
    """One connection to one store on one event loop, with the reads waiting on it."""

    def __init__(self, store: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.store = store
        self.writer = writer
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.task = asyncio.ensure_future(self._receive(reader))

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = ChannelClosed("the connection was closed")
        try:
            while True:
                reply = await read_frame(reader, REPLY_FRAME_BYTES_MAX)
                waiter = self.waiting.pop(reply[0], None) if isinstance(reply, list) and reply else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        except (ChannelClosed, OSError) as failure:
            error = failure
        finally:
            self.close(error)

    def close(self, error: BaseException) -> None:
        self.closed = True
        self.writer.close()
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(Unavailable(f"the read connection to shard store {self.store} failed: "
                                                 f"{error}"))
        self.waiting.clear()


class _LoopConnections:
    """The connections of one event loop, and those being opened, so that concurrent batches share one."""

    def __init__(self) -> None:
        self.open: dict[str, _AsyncConnection] = {}
        self.opening: dict[str, asyncio.Future[_AsyncConnection | None]] = {}


class AsyncReadChannels:
    """Reads over the stores' channels for an asyncio client: one connection per store and event loop."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.endpoints = _Endpoints(spec)
        # Connections belong to the loop that opened them; a closed loop's entry is removed.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = \
            weakref.WeakKeyDictionary()
        self._ids = itertools.count(1)

    async def read(self, store: str, requests: list[RangeRequest], mode: str, min_revision: int,
                   staleness_ms: int | None, attempt_s: float,
                   token: str | None) -> list[dict[str, Any]] | None:
        """Serve `requests` on `store`'s channel; None when the client should read over Ray instead."""
        connection = await self._connection(store, attempt_s)
        if connection is None:
            return None
        request_id = next(self._ids)
        frame = read_frame_body(request_id, requests, mode, min_revision, staleness_ms, attempt_s, token)
        if connection.closed:
            raise Unavailable(f"the read connection to shard store {store} closed as it opened; retry")
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        connection.waiting[request_id] = waiter
        connection.writer.write(frame)
        try:
            reply = await asyncio.wait_for(waiter, timeout=attempt_s + 1)
        except asyncio.TimeoutError:
            # As in `ReadChannels.read`: the retry goes over Ray, and the
            # connection, which may be stuck, is closed.
            error = _no_reply(store, attempt_s + 1)
            connection.close(error)
            self.endpoints.read_over_ray(store, error)
            raise error from None
        try:
            return replies_of(store, reply)
        except ChannelClosed as error:
            connection.close(error)
            raise Unavailable(f"shard store {store} sent a malformed reply: {error}") from None

    async def close(self) -> None:
        """Close the running loop's connections."""
        connections = self._loops.pop(asyncio.get_running_loop(), None)
        if connections is None:
            return
        for connection in connections.open.values():
            connection.close(ChannelClosed("the client closed it"))
            connection.task.cancel()

    async def _connection(self, store: str, attempt_s: float) -> _AsyncConnection | None:
        loop = asyncio.get_running_loop()
        for old in [old for old in self._loops if old.is_closed()]:
            # Its connections refer to it, so the weak key alone would keep it.
            del self._loops[old]
        connections = self._loops.setdefault(loop, _LoopConnections())
        connection = connections.open.get(store)
        if connection is not None and self.endpoints.cached(store) == (True, None):
            connection.close(ChannelClosed("the store's reads go over Ray for a while"))
            del connections.open[store]
            return None
        if connection is not None and not connection.closed:
            return connection
        opening = connections.opening.get(store)
        if opening is None:
            opening = asyncio.ensure_future(self._open(store, attempt_s))
            connections.opening[store] = opening
            opening.add_done_callback(lambda _: connections.opening.pop(store, None))
        opened = await asyncio.shield(opening)
        if opened is not None and self._loops.get(loop) is not connections:
            # close() ran while the connection opened.
            opened.close(ChannelClosed("the client closed it"))
            return None
        if opened is not None:
            connections.open[store] = opened
        return opened

    async def _open(self, store: str, attempt_s: float) -> _AsyncConnection | None:
        failed: dict[str, Any] | None = None
        error: BaseException | None = None
        # As in `ReadChannels._connection`: after a failure the endpoint is requested once more.
        for _ in range(2):
            known, endpoint = self.endpoints.cached(store)
            if not known:
                endpoint = await asyncio.to_thread(self.endpoints.get, store, attempt_s)
            if endpoint is None:
                return None
            if endpoint == failed:
                break
            try:
                return await self._connect(store, endpoint, attempt_s)
            except (OSError, asyncio.TimeoutError, ChannelClosed) as failure:
                failed, error = endpoint, failure
                self.endpoints.forget(store)
        assert error is not None
        self.endpoints.read_over_ray(store, error)
        return None

    async def _connect(self, store: str, endpoint: dict[str, Any], attempt_s: float) -> _AsyncConnection:
        """As `ReadChannels._connect`, on the running event loop."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(endpoint["host"], endpoint["port"]),
                                                timeout=min(CONNECT_TIMEOUT_S, attempt_s))
        try:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handshake = ClientHandshake(store, endpoint["secret"])
            writer.write(handshake.hello())
            challenge = await asyncio.wait_for(read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX), timeout=attempt_s + 1)
            writer.write(handshake.answer(challenge))
            verdict = await asyncio.wait_for(read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX), timeout=attempt_s + 1)
            handshake.check_accepted(verdict)
        except asyncio.TimeoutError:
            writer.close()
            raise _no_reply(store, attempt_s + 1) from None
        except BaseException:
            writer.close()
            raise
        return _AsyncConnection(store, reader, writer)
