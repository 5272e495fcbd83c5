"""The stores' read channel without Ray: frames, checks and errors over a real loopback socket.

A `ReadChannelServer` runs on its own event loop in a thread, in front of a
serving function in place of a store's `read_batch`. The blocking and
asyncio client sides connect to it as they would to a store.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import ray

from rayconf.actors import read_channel
from rayconf.actors.read_channel import (
    NONCE_BYTES,
    PROTOCOL,
    ChannelClosed,
    ReadChannelServer,
    error_fields,
    pack_frame,
    parse_read,
    proof,
    parse_response,
    rebuild_error,
    receive_frame,
    response_fields,
)
from rayconf.clients.client import check_min_revision
from rayconf.clients.read_channel import AsyncReadChannels, ReadChannels, read_frame_body
from rayconf.errors import Compacted, InvalidRequest, PermissionDenied, RayconfError, Unavailable
from rayconf.store.codec import range_request_fields
from rayconf.store.records import KeyValue, RangeRequest, RangeResponse

STORE = "dc-a-s1"
DATA = {b"/app/a": b"1", b"/app/b": b"\x00\xff binary", b"/other": b"x"}


class FakeStore:
    """Serves reads from `DATA`, and raises the errors some keys ask for."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.release = threading.Event()
        self.release.set()
        # The loop the server runs on, set by the fixture.
        self.loop: asyncio.AbstractEventLoop | None = None

    async def read_batch(self, requests: list[RangeRequest], consistency: str, min_revision: int,
                         staleness_ms: int | None, timeout_s: float, token: str | None) -> list[dict[str, Any]]:
        self.calls.append((consistency, min_revision, staleness_ms, timeout_s, token, len(requests)))
        if requests[0].key == b"/slow":
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        if requests[0].key == b"/compacted":
            raise Compacted("revision 3 is compacted; read at 9 or later", compact_revision=9, requested_revision=3)
        if requests[0].key == b"/bug":
            raise KeyError("a bug in the store")
        replies = []
        for request in requests:
            if request.range_end is None:
                keys = [request.key] if request.key in DATA else []
            else:
                keys = sorted(key for key in DATA if request.key <= key < request.range_end)
            kvs = tuple(KeyValue(key, DATA[key], 2, 5, 3) for key in keys)
            replies.append({"response": RangeResponse(kvs, len(kvs), False, 7), "age_ms": 4, "store": STORE})
        return replies


@pytest.fixture
def served() -> Iterator[tuple[FakeStore, ReadChannelServer]]:
    fake = FakeStore()
    loop = asyncio.new_event_loop()
    fake.loop = loop
    server = ReadChannelServer(STORE, fake.read_batch)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start("127.0.0.1"))
        started.set()
        loop.run_forever()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield fake, server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _channels(server: ReadChannelServer) -> ReadChannels:
    channels = ReadChannels(spec=None)  # type: ignore[arg-type]
    channels.endpoints._known[STORE] = server.endpoint()
    return channels


def _connect(server: ReadChannelServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=5)


def _receive(connection: socket.socket) -> Any:
    """Return the next frame, or None once the server has closed the connection."""
    try:
        return receive_frame(connection, 1 << 30)
    except ChannelClosed:
        return None


def test_blocking_reads_return_served_ranges(served: tuple[FakeStore, ReadChannelServer]) -> None:
    fake, server = served
    channels = _channels(server)
    replies = channels.read(STORE, [RangeRequest(b"/app/", b"/app0"), RangeRequest(b"/other")],
                            "serializable", 3, 250, 2.0, "token-1")
    assert replies is not None
    assert [kv.key for kv in replies[0]["response"].kvs] == [b"/app/a", b"/app/b"]
    assert replies[0]["response"].kvs[1] == KeyValue(b"/app/b", DATA[b"/app/b"], 2, 5, 3)
    assert replies[1]["response"].kvs[0].value == b"x"
    assert replies[0]["age_ms"] == 4
    assert replies[0]["store"] == STORE
    assert fake.calls == [("serializable", 3, 250, 2.0, "token-1", 2)]
    assert server.counters["connections"] == 1
    # A second read reuses the connection.
    channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
    assert server.counters["connections"] == 1
    channels.close()


def test_errors_keep_type_and_attributes(served: tuple[FakeStore, ReadChannelServer]) -> None:
    _, server = served
    channels = _channels(server)
    with pytest.raises(Compacted) as caught:
        channels.read(STORE, [RangeRequest(b"/compacted")], "linearizable", 0, None, 2.0, None)
    assert caught.value.compact_revision == 9
    assert caught.value.requested_revision == 3
    with pytest.raises(RayconfError, match="KeyError: 'a bug in the store'"):
        channels.read(STORE, [RangeRequest(b"/bug")], "linearizable", 0, None, 2.0, None)
    # The connection survives both errors.
    replies = channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
    assert replies is not None and replies[0]["response"].kvs[0].key == b"/other"
    assert server.counters["connections"] == 1
    channels.close()


def _handshake(connection: socket.socket, secret: bytes) -> Any:
    """Run the client's half of the handshake with `secret`; return the store's verdict frame."""
    client_nonce = b"n" * NONCE_BYTES
    connection.sendall(pack_frame([PROTOCOL, client_nonce]))
    challenge = _receive(connection)
    assert challenge[:2] == [PROTOCOL, STORE]
    connection.sendall(pack_frame([proof(secret, b"client", client_nonce, challenge[2])]))
    return _receive(connection)


def test_wrong_client_proof_is_rejected(served: tuple[FakeStore, ReadChannelServer]) -> None:
    _, server = served
    with _connect(server) as connection:
        rejection = _handshake(connection, b"guess" * 6)
        assert rejection[0] == PROTOCOL
        assert rejection[1] == ""
        assert "its proof does not match the store's secret" in rejection[2]
        assert _receive(connection) is None, "the store closes a rejected connection"
    assert server.counters["rejected"] == 1
    assert server.counters["connections"] == 0
    assert _channels(server).read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)


def test_client_rejects_store_without_secret(served: tuple[FakeStore, ReadChannelServer]) -> None:
    _, server = served
    # To a client with another secret, the store is an impostor: its proof does not match.
    channels = ReadChannels(spec=None)  # type: ignore[arg-type]
    wrong = {**server.endpoint(), "secret": b"guess" * 6}  # type: ignore[dict-item]
    channels.endpoints.fetch = lambda store, timeout_s: wrong  # type: ignore[method-assign]
    assert channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None) is None, \
        "the client reads over Ray instead"
    assert server.counters["connections"] == 0
    assert server.counters["reads"] == 0, "no read, and so no token, went to the impostor"


def test_silent_connection_is_closed(served: tuple[FakeStore, ReadChannelServer],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, server = served
    monkeypatch.setattr(read_channel, "HANDSHAKE_TIMEOUT_S", 0.2)
    with _connect(server) as connection:
        assert _receive(connection) is None, "the store closes a connection without a handshake"
    assert server.counters["rejected"] == 1


def test_connections_above_limit_are_closed(served: tuple[FakeStore, ReadChannelServer],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, server = served
    monkeypatch.setattr(read_channel, "CONNECTIONS_MAX", 2)
    with _connect(server) as first, _connect(server) as second:
        secret = server.endpoint()["secret"]  # type: ignore[index]
        assert _handshake(first, secret) == [PROTOCOL, "ok"]
        assert _handshake(second, secret) == [PROTOCOL, "ok"]
        with _connect(server) as third:
            assert _receive(third) is None, "a third connection is closed at once"
        assert server.counters["rejected"] == 1
    time.sleep(0.2)
    assert _channels(server).read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)


def test_reply_above_limit_goes_over_ray(served: tuple[FakeStore, ReadChannelServer],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _, server = served
    monkeypatch.setattr(read_channel, "REPLY_FRAME_BYTES_MAX", 100)
    monkeypatch.setattr(read_channel, "REPLY_MARGIN_BYTES", 0)
    channels = _channels(server)
    assert channels.read(STORE, [RangeRequest(b"/app/", b"/app0")], "linearizable", 0, None, 2.0, None) is None
    small = channels.read(STORE, [RangeRequest(b"/missing")], "linearizable", 0, None, 2.0, None)
    assert small is not None, "a reply within the limit still comes over the channel"


@pytest.mark.parametrize("garbage", [
    struct.pack(">I", 10**9),                      # a hello longer than any hello
    struct.pack(">I", 3) + b"\xc1\xc1\xc1",        # bytes msgpack does not define
    pack_frame({"not": "a list"}),
    pack_frame([PROTOCOL]),
    pack_frame([PROTOCOL, b"short nonce"]),
    pack_frame([1, b"n" * NONCE_BYTES]),
], ids=["oversized", "not-msgpack", "map", "no-nonce", "short-nonce", "old-protocol"])
def test_garbage_hello_closes_one_connection(served: tuple[FakeStore, ReadChannelServer], garbage: bytes) -> None:
    _, server = served
    with _connect(server) as connection:
        connection.sendall(garbage)
        while _receive(connection) is not None:
            pass
    deadline = time.monotonic() + 5
    while server.counters["rejected"] == 0:
        assert time.monotonic() < deadline, "the rejected connection was not counted"
        time.sleep(0.01)
    replies = _channels(server).read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
    assert replies is not None and replies[0]["response"].count == 1


def test_bad_read_frames_get_errors(served: tuple[FakeStore, ReadChannelServer]) -> None:
    fake, server = served
    secret = server.endpoint()["secret"]  # type: ignore[index]
    with _connect(server) as connection:
        assert _handshake(connection, secret) == [PROTOCOL, "ok"]
        good = range_request_fields(RangeRequest(b"/other"))
        frames = {
            1: [1, "linearizable", -1, None, 2.0, None, [good]],
            2: [2, "linearizable", 0, None, 0, None, [good]],
            3: [3, "linearizable", 0, None, 2.0, None, []],
            4: [4, "linearizable", 0, None, 2.0, None, [["range", "/text-key", None, 0, 0, False, False]]],
            5: [5, 7, 0, None, 2.0, None, [good]],
            6: [6, "linearizable", 0, "soon", 2.0, None, [good]],
        }
        for frame in frames.values():
            connection.sendall(pack_frame(frame))
        replies = {reply[0]: reply for reply in (_receive(connection) for _ in frames)}
        assert sorted(replies) == sorted(frames)
        for read_id, reply in replies.items():
            assert reply[1] is False, (read_id, reply)
            assert reply[2] == "InvalidRequest", (read_id, reply)
        assert "min_revision -1" in replies[1][3]
        assert "timeout_s 0" in replies[2][3]
        assert "range key" in replies[4][3]
        connection.sendall(pack_frame("no list"))
        assert _receive(connection)[:3] == [-1, False, "InvalidRequest"]
    assert fake.calls == [], "no bad frame reached the store"


def test_replies_arrive_in_finishing_order(served: tuple[FakeStore, ReadChannelServer]) -> None:
    fake, server = served
    fake.release.clear()
    channels = AsyncReadChannels(spec=None)  # type: ignore[arg-type]
    channels.endpoints._known[STORE] = server.endpoint()

    async def scenario() -> list[str]:
        finished = []

        async def read(key: bytes) -> None:
            await channels.read(STORE, [RangeRequest(key)], "linearizable", 0, None, 5.0, None)
            finished.append(key.decode())
        slow = asyncio.ensure_future(read(b"/slow"))
        await asyncio.sleep(0.05)
        await asyncio.gather(*(read(key) for key in (b"/app/a", b"/other")))
        fake.release.set()
        await slow
        return finished
    assert asyncio.run(scenario()) == ["/app/a", "/other", "/slow"]
    assert server.counters["connections"] == 1, "concurrent reads share one connection"


@pytest.mark.parametrize("form", ["blocking", "asyncio"])
def test_unreachable_channel_falls_back_to_ray(served: tuple[FakeStore, ReadChannelServer], form: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    _, server = served
    # Other test modules raise the "rayconf" logger's level, so this test sets its own.
    caplog.set_level(logging.WARNING, logger="rayconf.clients.read_channel")
    channels: ReadChannels | AsyncReadChannels = ReadChannels(spec=None) if form == "blocking" else \
        AsyncReadChannels(spec=None)  # type: ignore[arg-type]
    dead = {**server.endpoint(), "port": _unused_port()}  # type: ignore[dict-item]
    requested = []

    def get(store: str, timeout_s: float) -> dict[str, Any]:
        requested.append(store)
        return dead
    channels.endpoints.fetch = get  # type: ignore[method-assign]

    def read() -> Any:
        if isinstance(channels, ReadChannels):
            return channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
        return asyncio.run(channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None))
    assert read() is None, "the client reads over Ray instead"
    assert requested == [STORE, STORE], "a failed endpoint is requested once more"
    assert channels.endpoints.cached(STORE) == (True, None)
    assert f"cannot reach the read channel of shard store {STORE}" in caplog.text
    assert read() is None, "the store stays on Ray calls for a while"
    assert len(requested) == 2


def test_blocking_read_resends_after_close(served: tuple[FakeStore, ReadChannelServer]) -> None:
    fake, server = served
    channels = _channels(server)
    assert channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
    # The store drops every connection, as a restarted store would have.
    def drop_all() -> None:
        for writer in list(server._writers):
            writer.transport.abort()
    assert fake.loop is not None
    fake.loop.call_soon_threadsafe(drop_all)
    time.sleep(0.2)
    replies = channels.read(STORE, [RangeRequest(b"/app/a")], "linearizable", 0, None, 2.0, None)
    assert replies is not None and replies[0]["response"].kvs[0].key == b"/app/a"
    assert server.counters["connections"] == 2
    assert len(fake.calls) == 2


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_fields_round_trip() -> None:
    response = RangeResponse((KeyValue(b"/k", b"", 1, 2, 1),), 5, True, 9, b"/l")
    assert parse_response(msgpack.unpackb(msgpack.packb(response_fields(response)))) == response
    denied = PermissionDenied("user bob may not read /app", user="bob", right="read")
    rebuilt = rebuild_error(*error_fields(denied))
    assert isinstance(rebuilt, PermissionDenied)
    assert rebuilt.user == "bob"
    assert rebuilt.right == "read"
    assert str(rebuilt) == str(denied)
    # A name that is not a rayconf error class comes back as the base class.
    assert type(rebuild_error("SystemExit", "no", {"code": 1})) is RayconfError


class ExpiredSession(Unavailable):
    """A subclass that `rayconf.errors` does not define."""


def test_error_fields_name_known_classes() -> None:
    assert error_fields(ExpiredSession("gone"))[0] == "Unavailable", "the nearest rayconf class is named"
    name, message, _ = error_fields(ray.exceptions.GetTimeoutError("the replica did not reply"))
    assert name == "Unavailable", "a failed Ray call behind the store is retried, as on the Ray path"
    assert "the replica did not reply" in message
    assert error_fields(KeyError("bug"))[0] == "RayconfError"


def test_parse_read_checks_fields() -> None:
    request = RangeRequest(b"/app/", b"/app0", limit=10, revision=4, keys_only=True)
    requests, arguments = parse_read([1, "serializable", 2, 100, 1.5, "t", [range_request_fields(request)]])
    assert requests == [request]
    assert arguments == ("serializable", 2, 100, 1.5, "t")
    with pytest.raises(InvalidRequest, match="token"):
        parse_read([1, "serializable", 2, 100, 1.5, b"bytes token", [range_request_fields(request)]])


def test_async_connections_belong_to_their_loop(served: tuple[FakeStore, ReadChannelServer]) -> None:
    _, server = served
    channels = AsyncReadChannels(spec=None)  # type: ignore[arg-type]
    channels.endpoints._known[STORE] = server.endpoint()  # type: ignore[assignment]

    async def read_then_close() -> Any:
        replies = await channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
        await channels.close()
        return replies
    assert asyncio.run(read_then_close()) is not None
    assert asyncio.run(read_then_close()) is not None
    assert server.counters["connections"] == 2, "each event loop opens its own connection"
    deadline = time.monotonic() + 5
    while server._writers:
        assert time.monotonic() < deadline, "close() left a connection open"
        time.sleep(0.05)


def test_client_reading_no_replies_is_cut_off(served: tuple[FakeStore, ReadChannelServer],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, server = served
    monkeypatch.setattr(read_channel, "SEND_TIMEOUT_S", 0.3)
    request = range_request_fields(RangeRequest(b"/app/", b"/app0"))
    frames = pack_frame([1, "linearizable", 0, None, 2.0, None, [request]]) * 64
    with _connect(server) as greedy:
        assert _handshake(greedy, server.endpoint()["secret"]) == [PROTOCOL, "ok"]  # type: ignore[index]
        greedy.setblocking(False)
        cut_off = False
        deadline = time.monotonic() + 30
        while not cut_off and time.monotonic() < deadline:
            try:
                greedy.send(frames)
            except BlockingIOError:
                time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
        assert cut_off, "the store kept a connection whose replies were not read"
    replies = _channels(server).read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
    assert replies is not None, "other clients are still served"


def test_read_without_reply_in_time_goes_over_ray(served: tuple[FakeStore, ReadChannelServer]) -> None:
    fake, server = served
    fake.release.clear()
    channels = _channels(server)
    with pytest.raises(Unavailable, match=f"shard store {STORE} did not reply within 1.2 s"):
        channels.read(STORE, [RangeRequest(b"/slow")], "linearizable", 0, None, 0.2, None)
    fake.release.set()
    assert channels.endpoints.cached(STORE) == (True, None), "the next reads go over Ray"


def test_unpackable_read_fields_raise_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="integers from 0 to 2"):
        read_frame_body(1, [RangeRequest(b"/k", revision=2**64)], "linearizable", 0, None, 1.0, None)
    for bad in (-1, True, 1.5, 2**63):
        with pytest.raises(InvalidRequest, match="min_revision"):
            check_min_revision(bad)
    check_min_revision(0)


def test_async_timeout_sends_next_reads_over_ray(served: tuple[FakeStore, ReadChannelServer]) -> None:
    fake, server = served
    fake.release.clear()
    channels = AsyncReadChannels(spec=None)  # type: ignore[arg-type]
    channels.endpoints._known[STORE] = server.endpoint()  # type: ignore[assignment]

    async def scenario() -> Any:
        with pytest.raises(Unavailable, match=f"shard store {STORE} did not reply within 1.2 s"):
            await channels.read(STORE, [RangeRequest(b"/slow")], "linearizable", 0, None, 0.2, None)
        return await channels.read(STORE, [RangeRequest(b"/other")], "linearizable", 0, None, 2.0, None)
    assert asyncio.run(scenario()) is None, "the read after a timeout goes over Ray, not on the stuck connection"
    fake.release.set()
