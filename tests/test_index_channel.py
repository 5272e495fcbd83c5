"""The leader's index channel without Ray: published read points, kept entries, refusals, over loopback.

An `IndexChannelServer` runs in its own thread, as in a replica actor. The
test plays the replica's event loop, which publishes read points and hands
over applied entries, and a store's `IndexChannels` asks for ReadIndex on
its own event loop.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rayconf.actors import index_channel, read_channel
from rayconf.actors.index_channel import IndexChannels, IndexChannelServer
from rayconf.actors.read_channel import ChannelClosed, handshake_blocking, pack_frame, receive_frame
from rayconf.errors import Unavailable

MEMBER = "dc-a-1"
STORE = "dc-b-s1"


@pytest.fixture
def server() -> Iterator[IndexChannelServer]:
    started = IndexChannelServer(MEMBER)
    started.start_thread("127.0.0.1")
    yield started
    started.stop_thread()


def _entries(first: int, last: int, size: int = 3) -> list[tuple[int, str, bytes]]:
    return [(index, "normal", bytes([index % 256]) * size) for index in range(first, last + 1)]


def _ask(server: IndexChannelServer, applied_index: int,
         secret: bytes | None = None) -> tuple[IndexChannels, Any]:
    """Request one ReadIndex from `server` with a new store-side client; return the client and its result."""
    endpoint = server.endpoint()
    assert endpoint is not None
    if secret is not None:
        endpoint = {**endpoint, "secret": secret}

    async def fetch(member: str) -> dict[str, Any] | None:
        assert member == MEMBER
        return endpoint

    channels = IndexChannels(STORE, fetch)

    async def run() -> Any:
        try:
            return await channels.read_index(MEMBER, applied_index)
        finally:
            channels.close()

    return channels, asyncio.run(run())


def _lease(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


def test_answer_carries_read_point_and_missing_entries(server: IndexChannelServer) -> None:
    server.remember(_entries(1, 10))
    server.publish(term=2, lease_ends=_lease(), read_point=8)

    _, answer = _ask(server, applied_index=5)

    assert answer == (8, _entries(6, 8))
    assert server.counters["answers"] == 1


def test_answer_without_entries(server: IndexChannelServer) -> None:
    server.remember(_entries(20, 30))
    server.publish(term=2, lease_ends=_lease(), read_point=30)

    assert _ask(server, applied_index=30)[1] == (30, [])
    assert _ask(server, applied_index=40)[1] == (30, []), "a store ahead of the read point gets none"
    assert _ask(server, applied_index=10)[1] == (30, []), "entries 11 to 19 are not kept"
    assert _ask(server, applied_index=19)[1] == (30, _entries(20, 30))


def test_entries_stop_at_the_reply_limit(server: IndexChannelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_channel, "REPLY_ENTRY_BYTES_MAX", 10)
    server.remember(_entries(1, 5, size=4))
    server.publish(term=1, lease_ends=_lease(), read_point=5)

    assert server.read_index(0) == (5, _entries(1, 2, size=4))
    monkeypatch.setattr(index_channel, "REPLY_ENTRY_BYTES_MAX", 1)
    assert server.read_index(0) == (5, []), "an entry above the limit alone stays for the stream to bring"


def test_ended_lease_refused(server: IndexChannelServer) -> None:
    server.publish(term=3, lease_ends=time.monotonic() - 0.001, read_point=12)

    channels, answer = _ask(server, applied_index=0)

    assert answer is None
    assert server.counters["refusals"] == 1
    with pytest.raises(Unavailable, match=f"replica {MEMBER} has no valid leader lease"):
        server.read_index(0)


def test_withdrawn_read_point_is_refused(server: IndexChannelServer) -> None:
    server.publish(term=3, lease_ends=_lease(), read_point=12)
    server.publish(term=3, lease_ends=0.0, read_point=12)

    assert _ask(server, applied_index=0)[1] is None


def test_read_point_never_falls_within_a_term(server: IndexChannelServer) -> None:
    server.publish(term=4, lease_ends=_lease(), read_point=50)
    server.publish(term=4, lease_ends=_lease(), read_point=40)
    assert server.read_index(100)[0] == 50

    server.publish(term=5, lease_ends=_lease(), read_point=45)
    assert server.read_index(100)[0] == 45, "a new term starts from what its leader computed"


def test_kept_entries_limits_and_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_channel, "RECENT_ENTRIES_MAX", 4)
    monkeypatch.setattr(index_channel, "RECENT_BYTES_MAX", 1000)
    kept = IndexChannelServer(MEMBER)
    kept.publish(term=1, lease_ends=_lease(), read_point=100)

    kept.remember(_entries(1, 6))
    assert kept.read_index(2)[1] == _entries(3, 6), "only the last four entries are kept"
    assert kept.read_index(1)[1] == []

    kept.remember(_entries(50, 51))
    assert kept.read_index(49)[1] == _entries(50, 51), "a snapshot restore leaves a gap, and older entries go"
    assert kept.read_index(5)[1] == []

    kept.remember([(52, "normal", b"x" * 999)])
    assert kept.read_index(50)[1] == [], "entries beyond the byte limit go, oldest first"
    assert kept.read_index(51)[1] == [(52, "normal", b"x" * 999)]


def test_wrong_secret_rejected(server: IndexChannelServer) -> None:
    server.publish(term=1, lease_ends=_lease(), read_point=3)

    channels, answer = _ask(server, applied_index=0, secret=b"\x00" * 32)

    assert answer is None
    assert channels._over_ray_until[MEMBER] > time.monotonic()
    deadline = time.monotonic() + 5
    while server.counters["rejected"] == 0:
        assert time.monotonic() < deadline, "the wrong proof was not counted"
        time.sleep(0.01)


def test_member_without_a_channel_is_asked_over_ray() -> None:
    async def fetch(member: str) -> dict[str, Any] | None:
        return None

    channels = IndexChannels(STORE, fetch)
    assert asyncio.run(channels.read_index(MEMBER, 0)) is None
    assert channels._over_ray_until[MEMBER] > time.monotonic()


def _handshake(server: IndexChannelServer) -> socket.socket:
    endpoint = server.endpoint()
    assert endpoint is not None
    connection = socket.create_connection((endpoint["host"], endpoint["port"]), timeout=5)
    handshake_blocking(connection, MEMBER, endpoint["secret"], role="replica")
    return connection


def _receive(connection: socket.socket) -> Any:
    """Return the next frame, or None once the server has closed the connection."""
    try:
        return receive_frame(connection, 1 << 30)
    except ChannelClosed:
        return None


@pytest.mark.parametrize("request_body", [
    [1], [1, 0], [1, "index"], [1, "index", -2], [1, "index", "5"], [True, "index", 5], [-1, "index", 5],
    "hello", [1, "index", 2, 3], [1, "lease", "s"], [1, "lease", "", "m"], [1, "lease", "s", 7],
    [1, "lease", "s" * 300, "m", 1], [1, "lease", "s", "m"], [1, "lease", "s", "m", -1], [1, "lease", "s", "m", "4"],
    [1, "write", 5],
])
def test_malformed_request_closes_the_connection(server: IndexChannelServer, request_body: object) -> None:
    server.publish(term=1, lease_ends=_lease(), read_point=3)
    with _handshake(server) as connection:
        connection.sendall(pack_frame(request_body))
        assert _receive(connection) is None
    with _handshake(server) as connection:
        connection.sendall(pack_frame([7, "index", 0]))
        assert _receive(connection) == [7, True, 3, []], "the server still answers others"


class FakeReplicaLoop:
    """An event loop in a thread that grants leases as a replica's loop would, recording each request."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.requests: list[tuple[str, str, bool]] = []
        self.grant: dict[str, Any] | None = {
            "leader": MEMBER, "term": 4, "duration_s": 0.27, "index": 30, "exposed": 28,
            "writes": [(29, ((b"/app/a", None), (b"/app/b/", b"/app/b0"))), (30, None)]}
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def grant_read_lease(self, store: str, following: str) -> dict[str, Any] | None:
        self.requests.append((store, following, threading.current_thread() is self.thread))
        return self.grant

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _grant(server: IndexChannelServer, term: int = 0) -> tuple[bool, dict[str, Any] | None]:
    endpoint = server.endpoint()

    async def fetch(member: str) -> dict[str, Any] | None:
        return endpoint

    async def run() -> tuple[bool, dict[str, Any] | None]:
        channels = IndexChannels(STORE, fetch)
        try:
            return await channels.grant_lease(MEMBER, "dc-b-1", term)
        finally:
            channels.close()

    return asyncio.run(run())


def test_lease_is_granted_on_the_replica_loop(server: IndexChannelServer) -> None:
    replica = FakeReplicaLoop()
    try:
        server.serve_leases(replica.grant_read_lease, replica.loop)
        assert _grant(server) == (True, replica.grant)
        replica.grant = None
        assert _grant(server) == (True, None), "a member that grants none says so"
    finally:
        replica.stop()
    assert replica.requests == [(STORE, "dc-b-1", True)] * 2
    assert server.counters["lease_requests"] == 2


def test_lease_renewal_in_thread(server: IndexChannelServer) -> None:
    replica = FakeReplicaLoop()
    renewals: list[tuple[str, str, int, bool]] = []
    renewal = {"leader": MEMBER, "term": 4, "duration_s": 0.2, "index": 0, "exposed": 29, "writes": []}

    def renew(store: str, following: str, term: int) -> dict[str, Any] | None:
        renewals.append((store, following, term, threading.current_thread() is replica.thread))
        return renewal if term == 4 else None

    try:
        server.serve_leases(replica.grant_read_lease, replica.loop, renew)
        assert _grant(server, term=4) == (True, renewal)
        assert replica.requests == [], "a renewal does not wait for the replica's loop"
        assert _grant(server, term=3) == (True, replica.grant), "a lease of another term is granted by the loop"
        assert _grant(server, term=0) == (True, replica.grant), "so is a first lease"
    finally:
        replica.stop()
    assert renewals == [(STORE, "dc-b-1", 4, False), (STORE, "dc-b-1", 3, False)]
    assert len(replica.requests) == 2
    assert server.counters["lease_renewals"] == 1


def test_lease_without_granter_uses_ray(server: IndexChannelServer) -> None:
    assert _grant(server) == (False, None)


def test_malformed_grant_is_not_used() -> None:
    replica = FakeReplicaLoop()
    bad = IndexChannelServer(MEMBER)
    bad.start_thread("127.0.0.1")
    try:
        bad.serve_leases(replica.grant_read_lease, replica.loop)
        replica.grant = {"leader": MEMBER, "term": -1, "duration_s": 0.27, "index": 30, "exposed": 28,
                         "writes": []}
        assert _grant(bad) == (False, None)
    finally:
        bad.stop_thread()
        replica.stop()


def test_oversized_request_closes_the_connection(server: IndexChannelServer) -> None:
    with _handshake(server) as connection:
        connection.sendall(struct.pack(">I", 10_000) + b"\x00" * 10_000)
        assert _receive(connection) is None


@pytest.mark.parametrize("entries", [
    "not a list",
    [[2, "normal", b"x"]],
    [[1, "normal", b"x"], [3, "normal", b"y"]],
    [[1, "normal", "text"]],
    [[1, 7, b"x"]],
    [[1, "normal", b"x"], [2, "normal", b"y"], [3, "normal", b"z"]],
])
def test_store_rejects_answers_that_break_the_protocol(entries: object) -> None:
    with pytest.raises(index_channel.ChannelClosed):
        index_channel._parse_answer(MEMBER, 0, 2, entries)


@pytest.mark.parametrize("writes", [
    "none", [[0, None]], [[3]], [[3, "all"]], [[3, [[b"/a"]]]], [[3, [["/a", None]]]], [[3, [[b"/a", 5]]]],
])
def test_store_rejects_malformed_write_ranges(writes: object) -> None:
    assert index_channel._parse_writes(writes) is None


def test_store_parses_write_ranges() -> None:
    assert index_channel._parse_writes([[3, [[b"/a", None], [b"/b", b""]]], [4, None], [5, []]]) == [
        (3, ((b"/a", None), (b"/b", b""))), (4, None), (5, ())]


def test_store_rejects_bad_read_point() -> None:
    for read_point in (-1, 2.5, "3", None, True):
        with pytest.raises(index_channel.ChannelClosed):
            index_channel._parse_answer(MEMBER, 0, read_point, [])


def test_stopped_server_refuses_connections() -> None:
    stopped = IndexChannelServer(MEMBER)
    stopped.start_thread("127.0.0.1")
    endpoint = stopped.endpoint()
    assert endpoint is not None
    stopped.stop_thread()
    with pytest.raises(OSError):
        socket.create_connection((endpoint["host"], endpoint["port"]), timeout=2).close()


def test_silent_connection_is_closed(server: IndexChannelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_channel, "CONNECTION_IDLE_S", 0.3)
    with _handshake(server) as connection:
        assert _receive(connection) is None, "the server closes a connection that sends no request"


def test_peer_that_reads_no_reply_is_cut_off(server: IndexChannelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_channel, "SEND_TIMEOUT_S", 0.3)
    big = 1024 * 1024 - 64
    server.remember([(1, "normal", b"x" * big)])
    server.publish(term=1, lease_ends=_lease(600), read_point=1)
    with _handshake(server) as connection:
        connection.settimeout(2)
        for request_id in range(64):
            connection.sendall(pack_frame([request_id, "index", 0]))
        time.sleep(1.0)
        received = 0
        closed = False
        try:
            while part := connection.recv(1 << 20):
                received += len(part)
            closed = True
        except ConnectionError:
            closed = True
        except socket.timeout:
            pass
    assert closed, "the server kept a connection whose peer read no reply"
    assert received < 32 * big, "the server sent most replies to a peer that read none"
    with _handshake(server) as other:
        other.sendall(pack_frame([1, "index", 1]))
        assert _receive(other) == [1, True, 1, []], "other connections are served"
