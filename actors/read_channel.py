"""A shard store's read channel: reads over a plain TCP connection instead of a Ray actor call.

Why. A Ray actor call crosses several threads in each process (the caller's
core worker, gRPC pollers, the actor's task thread), and each hand-off waits
for a CPU. On an idle 2-core machine a call costs about 0.8 ms. While the
cores hashed and fsynced large puts, a bare Ray call to an idle actor had a
p99 of 35 to 96 ms. In the same runs a socket round trip between two plain
processes stayed near 1 ms, and a TCP round trip into the event loop of a
Ray actor near 5 ms. Small reads need a short tail most, so stores also
serve them on a socket.

What. Each store listens on its node's address on a port the kernel picks.
A client asks the store for the channel over Ray (`ShardStoreActor.
read_channel`), which returns the host, the port and a 32-byte secret drawn
when the store started. On a new connection each side proves that it has
the secret, with an HMAC over both sides' nonces, and neither sends the
secret itself. So the channel admits the callers that could make that Ray
call, and a client never sends a token to a process that took over a dead
store's port. rayconf's own tokens are then checked per read, as on the Ray
path. Frames are not encrypted, as Ray's calls are not by default, so the
store opens no channel when Ray runs with TLS (`RAY_USE_TLS`).

Protocol. Every frame is a 4-byte big-endian length and a msgpack body.
- handshake: the client sends `[PROTOCOL, client_nonce]`; the store replies
  `[PROTOCOL, store_name, store_nonce, store_proof]`; the client checks the
  proof and sends `[client_proof]`; the store replies `[PROTOCOL, "ok"]`.
  A proof is `proof(secret, side, client_nonce, store_nonce)`. A store that
  rejects the connection sends `[PROTOCOL, "", message]` and closes it. A
  connection that has not finished the handshake within
  `HANDSHAKE_TIMEOUT_S` is closed.
- read, client to store: `[read_id, consistency, min_revision,
  max_staleness_ms or None, timeout_s, token or None, [range request, ...]]`,
  the requests as `store.codec.range_request_fields` writes them.
- reply: `[read_id, True, age_ms, [response, ...]]`. Each response is
  `[kvs, count, more, revision, next_key]`, and each kv is `[key, value,
  create_revision, mod_revision, version]`.
- error reply: `[read_id, False, error_class, message, attributes]`, with a
  `rayconf.errors` class name, or `REPLY_TOO_LARGE` for a reply above the
  frame limit.

A connection carries any number of reads at once, up to the limits below;
replies come back in the order they finish, matched by `read_id`. Nothing
is pickled: a frame decodes to lists, numbers, strings and bytes, and every
field is type-checked. Reads are idempotent, so a client whose connection
breaks retries the read, on a new connection or over Ray.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import ray

from rayconf import errors
from rayconf.errors import InvalidRequest, RayconfError
from rayconf.store.codec import parse_range_request
from rayconf.store.records import KeyValue, RangeRequest, RangeResponse

logger = logging.getLogger(__name__)

PROTOCOL = 2
SECRET_BYTES = 32
NONCE_BYTES = 16
FRAME_HEADER = struct.Struct(">I")
# Handshake frames carry a protocol number, a name, nonces and proofs, so a
# longer one is not from a client.
HANDSHAKE_FRAME_BYTES_MAX = 1024
# A connection that has not finished the handshake by then is closed.
HANDSHAKE_TIMEOUT_S = 5.0
# Connections a store keeps open at once, finished handshakes or not. It
# closes any further one at once.
CONNECTIONS_MAX = 1024
# Rejected connections are counted, and logged at most once per interval.
REJECTION_LOG_INTERVAL_S = 10.0
# The error name of a reply that is too large for a frame; the client then
# sends that read over Ray.
REPLY_TOO_LARGE = "ReplyTooLarge"
# A read frame carries one batch of requests, each with a key and a range
# end of bounded length.
READ_FRAME_BYTES_MAX = 16 * 1024 * 1024
# A reply can hold a whole range of inline values. One above this size goes
# back as a `REPLY_TOO_LARGE` error, and the client reads it over Ray.
REPLY_FRAME_BYTES_MAX = 64 * 1024 * 1024
# Allowances for the framing of one key-value pair and of one response when
# a reply's size is added up, and a margin kept below the limit for the rest.
KV_OVERHEAD_BYTES = 32
RESPONSE_OVERHEAD_BYTES = 64
REPLY_MARGIN_BYTES = 64 * 1024
# A client whose unsent replies do not shrink for this long is cut off.
SEND_TIMEOUT_S = 10.0
# Reads served at once on one connection. At the limit the store reads no
# further frame from that connection until a read finishes.
CONNECTION_READS_IN_FLIGHT_MAX = 64
# Requests in one read frame, as many as the asyncio client puts in a batch.
READ_REQUESTS_MAX = 256
# Maximum wait that a read may request, in seconds.
READ_TIMEOUT_S_MAX = 60.0

# Serves a batch: (requests, consistency, min_revision, max_staleness_ms,
# timeout_s, token) -> one reply dict per request, as `read_batch` returns.
ServeBatch = Callable[[list[RangeRequest], str, int, "int | None", float, "str | None"],
                      Awaitable[list[dict[str, Any]]]]


class ChannelClosed(Exception):
    """The peer closed the connection or broke the protocol."""


class _HandshakeFailed(ChannelClosed):
    """A connection closed, or sent garbage, before it finished the handshake."""


def pack_frame(body: object) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return FRAME_HEADER.pack(len(data)) + data


def unpack_body(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError) as error:
        raise ChannelClosed(f"a frame is not valid msgpack ({type(error).__name__})") from None


async def read_frame(reader: asyncio.StreamReader, size_max: int) -> Any:
    """Read one frame; raise `ChannelClosed` at the end of the stream or for a frame above `size_max`."""
    try:
        header = await reader.readexactly(FRAME_HEADER.size)
        (size,) = FRAME_HEADER.unpack(header)
        if size > size_max:
            raise ChannelClosed(f"a frame of {size} bytes is above the limit of {size_max} bytes")
        return unpack_body(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError) as error:
        raise ChannelClosed(f"the connection ended ({type(error).__name__})") from None


# --- Replies: responses and errors as plain lists. ---


def response_fields(response: RangeResponse) -> list[Any]:
    kvs = [[kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version] for kv in response.kvs]
    return [kvs, response.count, response.more, response.revision, response.next_key]


def parse_response(fields: object) -> RangeResponse:
    """Rebuild a `RangeResponse` from `response_fields` output; raise `ChannelClosed` for any other shape."""
    if not (isinstance(fields, list) and len(fields) == 5):
        raise ChannelClosed("a reply does not have the shape of a range response")
    kvs, count, more, revision, next_key = fields
    try:
        parsed = tuple(KeyValue(_exact(key, bytes), _exact(value, bytes), _exact(create, int), _exact(mod, int),
                                _exact(version, int))
                       for key, value, create, mod, version in kvs)
        return RangeResponse(parsed, _exact(count, int), _exact(more, bool), _exact(revision, int),
                             _exact(next_key, bytes))
    except (TypeError, ValueError) as error:
        raise ChannelClosed(f"a reply does not have the shape of a range response ({error})") from None


def _exact(value: object, kind: type) -> Any:
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


# Attributes of rayconf errors that cross the channel: plain values only.
_ATTRIBUTE_TYPES = (int, float, str, bytes, bool, type(None))


def error_fields(error: BaseException) -> list[Any]:
    """Return `error` as `[class name, message, attributes]`.

    The class named is the nearest one that `rayconf.errors` defines, so a
    subclass defined elsewhere keeps its base's meaning. A failed Ray call
    behind the store becomes `Unavailable`, so clients retry it, as they do
    on the Ray path. Any other unexpected error becomes a `RayconfError`.
    """
    if isinstance(error, RayconfError):
        attributes = {name: value for name, value in vars(error).items()
                      if isinstance(name, str) and isinstance(value, _ATTRIBUTE_TYPES)}
        kind = next(cls for cls in type(error).__mro__ if getattr(errors, cls.__name__, None) is cls)
        return [kind.__name__, str(error), attributes]
    if isinstance(error, (ray.exceptions.RayError, asyncio.TimeoutError)):
        return ["Unavailable", f"the store's call behind the read failed: {type(error).__name__}: {error}", {}]
    return ["RayconfError", f"the store failed to serve the read: {type(error).__name__}: {error}", {}]


def rebuild_error(name: object, message: object, attributes: object) -> RayconfError:
    """Return the rayconf error that `error_fields` described; an unknown class becomes a `RayconfError`."""
    kind = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(kind, type) and issubclass(kind, RayconfError)):
        kind = RayconfError
    error = kind(str(message))
    if isinstance(attributes, dict):
        for attribute, value in attributes.items():
            if isinstance(attribute, str) and not attribute.startswith("_") and isinstance(value, _ATTRIBUTE_TYPES):
                setattr(error, attribute, value)
    return error


# --- The handshake: each side proves that it has the secret without sending it. ---


def proof(secret: bytes, side: bytes, client_nonce: bytes, store_nonce: bytes) -> bytes:
    """Return the HMAC-SHA256 with which `side` (b"client" or b"store") proves it has `secret`."""
    return hmac.new(secret, side + client_nonce + store_nonce, hashlib.sha256).digest()


def _is_nonce(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == NONCE_BYTES


class ClientHandshake:
    """The client's half of the handshake: a nonce out, the server's proof checked, the client's proof back.

    `name` is the server's member name, which its challenge must carry, and
    `role` the word for it in messages ("store", or "replica" for an index channel).
    """

    def __init__(self, name: str, secret: bytes, role: str = "store") -> None:
        self.name = name
        self.role = role
        self.secret = secret
        self.client_nonce = secrets.token_bytes(NONCE_BYTES)

    def hello(self) -> bytes:
        return pack_frame([PROTOCOL, self.client_nonce])

    def answer(self, challenge: object) -> bytes:
        """Check the server's proof in `challenge` and return the client's proof; raise `ChannelClosed` if wrong."""
        if not (isinstance(challenge, list) and len(challenge) == 4 and challenge[0] == PROTOCOL
                and challenge[1] == self.name and isinstance(challenge[2], bytes)
                and isinstance(challenge[3], bytes)):
            raise ChannelClosed(f"{self.role} {self.name} did not accept the connection: {_detail(challenge)}")
        server_nonce = challenge[2]
        expected = proof(self.secret, b"store", self.client_nonce, server_nonce)
        if not hmac.compare_digest(challenge[3], expected):
            raise ChannelClosed(f"the process at the endpoint of {self.role} {self.name} does not have its secret")
        return pack_frame([proof(self.secret, b"client", self.client_nonce, server_nonce)])

    def check_accepted(self, verdict: object) -> None:
        if verdict != [PROTOCOL, "ok"]:
            raise ChannelClosed(f"{self.role} {self.name} did not accept the connection: {_detail(verdict)}")


def handshake_blocking(connection: socket.socket, name: str, secret: bytes, role: str = "store") -> None:
    """Run the client's half of the handshake on a blocking socket; raise `ChannelClosed` if it fails."""
    handshake = ClientHandshake(name, secret, role)
    connection.sendall(handshake.hello())
    connection.sendall(handshake.answer(receive_frame(connection, HANDSHAKE_FRAME_BYTES_MAX)))
    handshake.check_accepted(receive_frame(connection, HANDSHAKE_FRAME_BYTES_MAX))


def receive_frame(connection: socket.socket, size_max: int) -> Any:
    """Read one frame from a blocking socket; raise `ChannelClosed` when the peer closes or it is too large."""
    (size,) = FRAME_HEADER.unpack(_receive_exactly(connection, FRAME_HEADER.size))
    if size > size_max:
        raise ChannelClosed(f"a frame of {size} bytes is above the limit of {size_max} bytes")
    return unpack_body(_receive_exactly(connection, size))


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    parts = []
    remaining = size
    while remaining:
        part = connection.recv(min(remaining, 1 << 20))
        if not part:
            raise ChannelClosed("the peer closed the connection")
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _detail(frame: object) -> str:
    if isinstance(frame, list) and len(frame) == 3 and frame[1] == "":
        return str(frame[2])
    return f"unexpected frame {frame!r:.200}"


# --- The store's side. ---


class ReadChannelServer:
    """The listening socket of one store and the connections it accepted."""

    # Words for messages and logs; the index channel of a replica has its own.
    ROLE = "store"
    CONNECTION = "read connection"
    ENDPOINT_CALL = "ShardStoreActor.read_channel"

    def __init__(self, store: str, serve_batch: ServeBatch) -> None:
        self.store = store
        self.secret = secrets.token_bytes(SECRET_BYTES)
        self._serve_batch = serve_batch
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0
        self.counters = {"connections": 0, "rejected": 0, "reads": 0}
        self._writers: set[asyncio.StreamWriter] = set()
        # Rejected connections since the last warning, and when that warning was logged.
        self._rejected_unlogged = 0
        self._rejection_logged_at = -REJECTION_LOG_INTERVAL_S

    async def start(self, host: str) -> None:
        self._server = await asyncio.start_server(self._connection, host, 0)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("%s %s serves its %ss on %s:%d", self.ROLE, self.store, self.CONNECTION, host, self.port)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    def endpoint(self) -> dict[str, Any] | None:
        """Return what a client needs to connect, or None before the socket listens."""
        if self._server is None:
            return None
        return {"host": self.host, "port": self.port, "secret": self.secret, "protocol": PROTOCOL}

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._writers) >= CONNECTIONS_MAX:
            self._reject(peer, f"the {self.ROLE} already has {CONNECTIONS_MAX} {self.CONNECTION}s")
            writer.close()
            return
        self._writers.add(writer)
        try:
            try:
                accepted = await asyncio.wait_for(self._handshake(reader, writer, peer), HANDSHAKE_TIMEOUT_S)
            except asyncio.TimeoutError:
                self._reject(peer, f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s")
                return
            if accepted:
                self.counters["connections"] += 1
                await self._serve_connection(reader, writer)
        except _HandshakeFailed as error:
            self._reject(peer, str(error))
        except ChannelClosed as error:
            logger.debug("%s %s: %s from %s closed: %s", self.ROLE, self.store, self.CONNECTION, peer, error)
        except Exception:  # one bad connection must not stop the server
            logger.exception("%s %s: %s from %s failed", self.ROLE, self.store, self.CONNECTION, peer)
        finally:
            self._writers.discard(writer)
            if writer.transport.get_write_buffer_size():
                # close() would wait to send the replies that the client does not read.
                writer.transport.abort()
            else:
                writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any) -> bool:
        """Run the store's half of the handshake; return whether the client proved it has the secret.

        Raises `_HandshakeFailed` when the client closes or sends a frame that is not msgpack.
        """
        try:
            hello = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
        except ChannelClosed as error:
            raise _HandshakeFailed(f"no hello: {error}") from None
        if not (isinstance(hello, list) and len(hello) == 2 and type(hello[0]) is int and hello[0] == PROTOCOL
                and _is_nonce(hello[1])):
            await self._send_rejection(writer, peer, f"its hello is not [{PROTOCOL}, nonce]")
            return False
        client_nonce = hello[1]
        store_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(pack_frame([PROTOCOL, self.store, store_nonce,
                                 proof(self.secret, b"store", client_nonce, store_nonce)]))
        await writer.drain()
        try:
            answer = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
        except ChannelClosed as error:
            raise _HandshakeFailed(f"no proof: {error}") from None
        expected = proof(self.secret, b"client", client_nonce, store_nonce)
        if not (isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], bytes)
                and hmac.compare_digest(answer[0], expected)):
            await self._send_rejection(writer, peer, f"its proof does not match the {self.ROLE}'s secret")
            return False
        writer.write(pack_frame([PROTOCOL, "ok"]))
        await writer.drain()
        return True

    async def _send_rejection(self, writer: asyncio.StreamWriter, peer: Any, reason: str) -> None:
        self._reject(peer, reason)
        writer.write(pack_frame([PROTOCOL, "", f"{self.ROLE} {self.store} rejected the {self.CONNECTION}: "
                                 f"{reason}. Ask for its endpoint again ({self.ENDPOINT_CALL})"]))
        await writer.drain()

    def _reject(self, peer: Any, reason: str) -> None:
        """Count a rejected connection; log at most one warning per interval, so a flood cannot fill the log."""
        self.counters["rejected"] += 1
        self._rejected_unlogged += 1
        now = time.monotonic()
        if now - self._rejection_logged_at >= REJECTION_LOG_INTERVAL_S:
            logger.warning("%s %s rejected %d %s(s) since its last such warning, the latest from %s: %s",
                           self.ROLE, self.store, self._rejected_unlogged, self.CONNECTION, peer, reason)
            self._rejected_unlogged = 0
            self._rejection_logged_at = now

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        in_flight = asyncio.Semaphore(CONNECTION_READS_IN_FLIGHT_MAX)
        # One reply is packed and written at a time, once the buffer is below
        # its high-water mark, so a client that reads slowly costs the store
        # about one packed reply more than that mark.
        send_lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                frame = await read_frame(reader, READ_FRAME_BYTES_MAX)
                await in_flight.acquire()
                task = asyncio.ensure_future(self._serve_read(frame, writer, send_lock))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: in_flight.release())
        finally:
            for task in tasks:
                task.cancel()

    async def _serve_read(self, frame: object, writer: asyncio.StreamWriter, send_lock: asyncio.Lock) -> None:
        read_id = frame[0] if isinstance(frame, list) and frame and type(frame[0]) is int else -1
        try:
            if not (isinstance(frame, list) and len(frame) == 7 and read_id >= 0):
                raise InvalidRequest("a read frame must be [read_id, consistency, min_revision, max_staleness_ms, "
                                     "timeout_s, token, requests] with a non-negative integer read_id")
            requests, arguments = parse_read(frame)
            self.counters["reads"] += len(requests)
            replies = await self._serve_batch(requests, *arguments)
            body = _reply_body(read_id, replies)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # every failure goes back to the caller as a typed error
            if not isinstance(error, RayconfError):
                logger.exception("store %s failed to serve read %d", self.store, read_id)
            body = [read_id, False, *error_fields(error)]
        async with send_lock:
            if writer.is_closing():
                return
            if not await drained(writer):
                logger.warning("store %s cut off a read connection from %s: its unsent replies did not shrink "
                               "for %g s", self.store, writer.get_extra_info("peername"), SEND_TIMEOUT_S)
                writer.transport.abort()
                return
            writer.write(pack_frame(body))


async def drained(writer: asyncio.StreamWriter) -> bool:
    """Wait until the write buffer is below its limit; return False when it did not shrink for `SEND_TIMEOUT_S`."""
    size = writer.transport.get_write_buffer_size()
    while True:
        try:
            await asyncio.wait_for(writer.drain(), SEND_TIMEOUT_S)
            return True
        except ConnectionError:
            return False
        except asyncio.TimeoutError:
            shrunk_to = writer.transport.get_write_buffer_size()
            if shrunk_to >= size:
                return False
            size = shrunk_to


def _reply_body(read_id: int, replies: list[dict[str, Any]]) -> list[Any]:
    """Return the reply frame's body, or a `REPLY_TOO_LARGE` error when the keys and values pass the limit.

    The size is added up before anything is copied, so an oversized reply
    costs no memory.
    """
    size_bytes = sum(len(kv.key) + len(kv.value) + KV_OVERHEAD_BYTES
                     for reply in replies for kv in reply["response"].kvs)
    size_bytes += sum(len(reply["response"].next_key) + RESPONSE_OVERHEAD_BYTES for reply in replies)
    if size_bytes > REPLY_FRAME_BYTES_MAX - REPLY_MARGIN_BYTES:
        return [read_id, False, REPLY_TOO_LARGE,
                f"the reply holds about {size_bytes} bytes of keys and values, above the read channel's limit "
                f"of {REPLY_FRAME_BYTES_MAX} bytes", {}]
    age_ms = replies[0]["age_ms"] if replies else 0
    return [read_id, True, age_ms, [response_fields(reply["response"]) for reply in replies]]


def parse_read(frame: list[Any]) -> tuple[list[RangeRequest], tuple[str, int, int | None, float, str | None]]:
    """Check a read frame's fields; raise `InvalidRequest` naming the first bad one."""
    _, consistency, min_revision, staleness_ms, timeout_s, token, requests = frame
    if not isinstance(consistency, str):
        raise InvalidRequest(f"read consistency is {type(consistency).__name__}, expected a string")
    if type(min_revision) is not int or min_revision < 0:
        raise InvalidRequest(f"read min_revision {min_revision!r} is not a non-negative integer")
    if staleness_ms is not None and (type(staleness_ms) is not int or staleness_ms < 0):
        raise InvalidRequest(f"read max_staleness_ms {staleness_ms!r} is not a non-negative integer or None")
    if type(timeout_s) not in (int, float) or not 0 < timeout_s <= READ_TIMEOUT_S_MAX:
        raise InvalidRequest(f"read timeout_s {timeout_s!r} is not a number of seconds in "
                             f"(0, {READ_TIMEOUT_S_MAX:g}]")
    if token is not None and not isinstance(token, str):
        raise InvalidRequest(f"read token is {type(token).__name__}, expected a string or None")
    if not isinstance(requests, list) or not 0 < len(requests) <= READ_REQUESTS_MAX:
        raise InvalidRequest(f"a read frame must carry 1 to {READ_REQUESTS_MAX} range requests")
    return [parse_range_request(fields) for fields in requests], (consistency, min_revision, staleness_ms,
                                                                   float(timeout_s), token)
