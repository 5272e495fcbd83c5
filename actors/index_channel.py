"""The leader's index channel: ReadIndex for shard stores over TCP, served off the actor's event loop.

Why. A store serves a linearizable read from its lease unless a write is in
flight (see `store_leases.py`). Then it needs the leader's read point, a
ReadIndex. Over a Ray call that costs little on an idle machine. But while
the cores copy and fsync large values, the calls into the leader queue
inside Ray, and the leader's event loop spends tens of milliseconds at a
time submitting its own Ray calls. A ReadIndex call then had a median of
about 55 ms (docs/benchmarks.md). So the leader answers ReadIndex requests
from stores on a socket, in a thread of its own with its own event loop.

How the thread may answer without the Raft core. The replica's event loop
publishes a *read point* whenever it computes the exposed index, before it
uses that index anywhere: before a write's result leaves, before a lease
holder is sent it, before a ReadIndex returns it. So the published index is
at least everything that a completed operation has seen. With it the loop
publishes when its leader lease ends, on the monotonic clock: counted from
the time the current tick was due, with the same tick and drift margins as
a store's lease (`store_leases.lease_duration_s`). No other leader can
commit anything before then. The thread answers with the published index
while that time has not passed, and refuses otherwise, so the store asks
over Ray as before. A member that is not the leader, or has no lease,
publishes none. The exposed index never falls within a term, so a later
answer is never below an earlier one.

Entries. A store then has to apply the log up to that index before it
reads, and its committed stream is a Ray call too. So the loop also hands
the thread every entry it applies, and the thread keeps the latest ones
(`RECENT_ENTRIES_MAX`, `RECENT_BYTES_MAX`). A request names the store's
applied index, and the reply carries the entries after it up to the read
point, when the thread still holds them all. They are committed, so the
store applies them at once; any it does not get come through its stream.

Leases. A store's read lease runs out when its renewal, a Ray call, takes
longer than the lease; under the same load that happened every few
seconds. So stores also ask for leases on the channel. A lease of the
current term that has not ended, for the same followed replica, the thread
extends itself, up to the published end of the leader lease, in the lock
that guards the lease table (`StoreLeases.renew`). Any other request it
hands to the replica's event loop, which grants it exactly as
`ReplicaActor.grant_read_lease` does.

Protocol. Framing and the handshake are those of the read channel
(`read_channel.py`), with the replica's own secret, handed out by
`ReplicaActor.index_channel`. A store keeps one connection for each kind of
request and sends one request at a time on it. Then:
- ReadIndex: `[request_id, "index", applied_index]`, answered by
  `[request_id, True, index, entries]`, each entry `[index, type, data]` as
  in `ReplicaActor.committed_since`, the list empty when the thread does
  not hold every entry after `applied_index`;
- lease: `[request_id, "lease", store, following, term]`, with the term
  of the lease the store holds from this member (0 for none), answered by
  `[request_id, True, grant]`, where grant is `[leader, term, duration_s,
  index, exposed, writes]` or None as `grant_read_lease` returns, and
  writes is `[[index, [[key, range_end], ...] or None], ...]`. A renewal
  made by the thread carries the index the leader counts the store as
  having confirmed, and no writes;
- either may be answered by `[request_id, False, error_class, message,
  attributes]`, for instance `Unavailable` when the member holds no valid
  leader lease now.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from rayconf.actors.read_channel import (
    HANDSHAKE_FRAME_BYTES_MAX,
    SEND_TIMEOUT_S,
    ChannelClosed,
    ClientHandshake,
    ReadChannelServer,
    drained,
    error_fields,
    pack_frame,
    read_frame,
    rebuild_error,
)
from rayconf.actors.store_leases import WriteRanges
from rayconf.errors import RayconfError, Unavailable

logger = logging.getLogger(__name__)

# A request frame contains an id, a kind and at most two member names and a term.
REQUEST_FRAME_BYTES_MAX = 1024
# Maximum length of a member name in a lease request.
NAME_BYTES_MAX = 256
# Applied entries the thread keeps, by number and by bytes of data.
RECENT_ENTRIES_MAX = 4096
RECENT_BYTES_MAX = 8 * 1024 * 1024
# Bytes of entry data in one reply; a store gets the rest through its stream.
REPLY_ENTRY_BYTES_MAX = 1024 * 1024
# Time for the thread's socket to start listening.
START_TIMEOUT_S = 10.0
# A reply is an index with entries, or a short error.
REPLY_FRAME_BYTES_MAX = REPLY_ENTRY_BYTES_MAX + 1024 * 1024
# Time a store waits to connect, or for one reply, before it sends the request over Ray.
CALL_TIMEOUT_S = 1.0
# After a connection failed or a reply timed out, a store sends its requests to that member over Ray for this long.
OVER_RAY_S = 5.0
# A connection that sends no request for this long is closed; its store opens a new one when it needs it.
CONNECTION_IDLE_S = 600.0


class IndexChannelServer(ReadChannelServer):
    """A replica's index channel: a socket served by a thread with its own event loop."""

    ROLE = "replica"
    CONNECTION = "index connection"
    ENDPOINT_CALL = "ReplicaActor.index_channel"

    def __init__(self, member: str) -> None:
        super().__init__(member, _no_reads)
        # (term, monotonic time the lease ends, read point), in one tuple, so
        # that the thread never reads the parts of two publications.
        self._published: tuple[int, float, int] = (0, 0.0, 0)
        # Applied entries (index, type, data), in log order without gaps.
        # Only the loop changes it; the thread copies it in one call, which
        # no other thread can interrupt under the GIL.
        self._recent: deque[tuple[int, str, bytes]] = deque()
        self._recent_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Grants a lease on the replica's event loop, and extends a running
        # one in this thread; set by `serve_leases`.
        self._grant: Callable[[str, str], Coroutine[Any, Any, dict[str, Any] | None]] | None = None
        self._renew: Callable[[str, str, int], dict[str, Any] | None] | None = None
        self._replica_loop: asyncio.AbstractEventLoop | None = None
        self.counters["answers"] = 0
        self.counters["refusals"] = 0
        self.counters["lease_requests"] = 0
        self.counters["lease_renewals"] = 0

    def serve_leases(self, grant: Callable[[str, str], Coroutine[Any, Any, dict[str, Any] | None]],
                     loop: asyncio.AbstractEventLoop,
                     renew: Callable[[str, str, int], dict[str, Any] | None] | None = None) -> None:
        """Answer lease requests: `renew(store, following, term)` in this thread, else `grant` on `loop`.

        `loop` is the replica's event loop. `renew` extends a running lease
        of that term, or returns None, and then `grant(store, following)`
        runs on the loop.
        """
        self._grant = grant
        self._renew = renew
        self._replica_loop = loop

    def published(self) -> tuple[int, float, int]:
        """Return the published (term, end of the leader lease, read point)."""
        return self._published

    def publish(self, term: int, lease_ends: float, read_point: int) -> None:
        """Publish the read point of `term`, valid until `lease_ends`; lease_ends 0 withdraws it.

        Called only from the replica's event loop. Within a term the read point
        published never falls, even if a caller passes a lower one.
        """
        old_term, _, old_point = self._published
        if term == old_term:
            read_point = max(read_point, old_point)
        self._published = (term, lease_ends, read_point)

    def remember(self, entries: Iterable[tuple[int, str, bytes]]) -> None:
        """Keep entries the loop just applied, dropping the oldest beyond the limits; called from the loop."""
        recent = self._recent
        for entry in entries:
            if recent and entry[0] != recent[-1][0] + 1:
                # A snapshot was restored: the kept entries no longer join up.
                recent.clear()
                self._recent_bytes = 0
            recent.append(entry)
            self._recent_bytes += len(entry[2])
            while len(recent) > RECENT_ENTRIES_MAX or (len(recent) > 1 and self._recent_bytes > RECENT_BYTES_MAX):
                self._recent_bytes -= len(recent.popleft()[2])

    def read_index(self, applied_index: int) -> tuple[int, list[tuple[int, str, bytes]]]:
        """Return the published read point and the kept entries after `applied_index` up to it.

        The entries are empty when the entry right after `applied_index` is
        no longer kept. Raises `Unavailable` when no valid lease covers
        the read point now.
        """
        term, lease_ends, read_point = self._published
        if time.monotonic() >= lease_ends:
            self.counters["refusals"] += 1
            raise Unavailable(f"replica {self.store} has no valid leader lease now (term {term}); "
                              "request the ReadIndex over Ray")
        self.counters["answers"] += 1
        return read_point, self.entries_between(applied_index, read_point, REPLY_ENTRY_BYTES_MAX)

    def entries_between(self, after: int, last: int, size_max: int) -> list[tuple[int, str, bytes]]:
        """Return the kept entries after `after` up to `last`, with at most `size_max` bytes of data.

        Empty when the entry right after `after` is no longer kept, or is
        itself larger than that. Called from the thread and from the loop.
        """
        entries: list[tuple[int, str, bytes]] = []
        recent = self._recent
        if after >= last or not recent or recent[0][0] > after + 1:
            return entries
        # One C-level copy of the tail, which the loop cannot change midway.
        # The loop may have dropped or restarted entries since the check
        # above, so the copy must start at the right index.
        try:
            tail = list(itertools.islice(recent, after + 1 - recent[0][0], None))
        except IndexError:
            # The loop emptied the entries between the check and the copy.
            return entries
        if not tail or tail[0][0] != after + 1:
            return entries
        size = 0
        for entry in tail:
            if entry[0] > last:
                break
            size += len(entry[2])
            if size > size_max:
                break
            entries.append(entry)
        return entries

    def start_thread(self, host: str) -> None:
        """Listen on `host` in a new daemon thread; return once the socket listens, or raise OSError."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start(host))
            except BaseException as error:  # handed to the starting thread
                failure.append(error)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name=f"index-channel-{self.store}", daemon=True).start()
        if not ready.wait(START_TIMEOUT_S):
            raise OSError(f"the index channel of replica {self.store} did not start within {START_TIMEOUT_S:g} s")
        if failure:
            raise OSError(f"the index channel of replica {self.store} could not listen on {host}: {failure[0]}")

    def stop_thread(self) -> None:
        """Close the socket and its connections, then end the thread's loop."""
        loop = self._loop
        if loop is None:
            return
        self._loop = None
        future = asyncio.run_coroutine_threadsafe(self.close(), loop)
        try:
            future.result(timeout=START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                frame = await asyncio.wait_for(read_frame(reader, REQUEST_FRAME_BYTES_MAX), CONNECTION_IDLE_S)
            except asyncio.TimeoutError:
                raise ChannelClosed(f"no request for {CONNECTION_IDLE_S:g} s") from None
            request_id = _request_id(frame)
            try:
                body = [request_id, True, *await self._serve(frame)]
            except RayconfError as error:
                body = [request_id, False, *error_fields(error)]
            writer.write(pack_frame(body))
            # A store sends one request at a time and reads each reply, so
            # a reply that does not leave the buffer means a peer that reads none.
            if not await drained(writer):
                raise ChannelClosed(f"the peer closed the connection or read no reply for {SEND_TIMEOUT_S:g} s")

    async def _serve(self, frame: list[Any]) -> list[Any]:
        """Return the fields of the answer to one checked request, after the id and True."""
        if frame[1] == "index":
            read_point, entries = self.read_index(frame[2])
            return [read_point, entries]
        self.counters["lease_requests"] += 1
        if self._grant is None or self._replica_loop is None:
            raise Unavailable(f"replica {self.store} grants no leases on its index channel; ask over Ray")
        grant = None
        if self._renew is not None and frame[4]:
            grant = self._renew(frame[2], frame[3], frame[4])
        if grant is not None:
            self.counters["lease_renewals"] += 1
        else:
            granted: concurrent.futures.Future[dict[str, Any] | None] = asyncio.run_coroutine_threadsafe(
                self._grant(frame[2], frame[3]), self._replica_loop)
            grant = await asyncio.wrap_future(granted)
        if grant is None:
            return [None]
        writes = [[index, None if ranges is None else [list(pair) for pair in ranges]]
                  for index, ranges in grant["writes"]]
        return [[grant["leader"], grant["term"], grant["duration_s"], grant["index"], grant["exposed"], writes]]


def _request_id(frame: object) -> int:
    """Return the id of a well-formed request; raise `ChannelClosed` naming what is wrong with any other."""
    if not (isinstance(frame, list) and len(frame) >= 2 and type(frame[0]) is int and frame[0] >= 0):
        raise ChannelClosed(f"a request does not start with a non-negative integer id and a kind: {frame!r:.100}")
    if frame[1] == "index":
        if len(frame) == 3 and type(frame[2]) is int and frame[2] >= 0:
            return frame[0]
        raise ChannelClosed(f"an index request is not [id, \"index\", applied_index]: {frame!r:.100}")
    if frame[1] == "lease":
        if (len(frame) == 5 and all(isinstance(name, str) and 0 < len(name) <= NAME_BYTES_MAX for name in frame[2:4])
                and type(frame[4]) is int and frame[4] >= 0):
            return frame[0]
        raise ChannelClosed(f"a lease request is not [id, \"lease\", store, following, term]: {frame!r:.100}")
    raise ChannelClosed(f"a request has the unknown kind {frame[1]!r:.100}; expected \"index\" or \"lease\"")


async def _no_reads(*_: Any) -> list[dict[str, Any]]:
    raise Unavailable("an index channel serves no reads")


class IndexChannels:
    """A store's connections to the index channels of the replicas: one per member and kind, one call at a time."""

    def __init__(self, store: str, fetch_endpoint: Callable[[str], Awaitable[dict[str, Any] | None]]) -> None:
        self.store = store
        self._fetch_endpoint = fetch_endpoint
        self._connections: dict[tuple[str, str], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        # Members asked over Ray until this monotonic time: no channel, or it failed.
        self._over_ray_until: dict[str, float] = {}
        self._locks = {"index": asyncio.Lock(), "lease": asyncio.Lock()}
        self._next_id = 0

    async def read_index(self, member: str, applied_index: int) -> tuple[int, list[tuple[int, str, bytes]]] | None:
        """Ask `member` for a ReadIndex and the entries after `applied_index`; None means: ask over Ray instead.

        None when the member has no channel or could not be reached in time
        (then Ray is used for that member for `OVER_RAY_S`), and when it
        refused because it holds no leader lease now.
        """
        fields = await self._call(member, "index", [applied_index], 2)
        if fields is None:
            return None
        try:
            return _parse_answer(member, applied_index, fields[0], fields[1])
        except ChannelClosed as error:
            self._fail(member, error)
            return None

    async def grant_lease(self, member: str, following: str, term: int) -> tuple[bool, dict[str, Any] | None]:
        """Ask `member` for a read lease; return (True, its grant or None) or (False, None) to ask over Ray.

        `term` is the term of the store's lease from `member`, 0 for none.
        The thread extends a lease of the current term without waiting for
        the replica's event loop. The grant is a dict as
        `ReplicaActor.grant_read_lease` returns it, None when the member grants none now.
        """
        fields = await self._call(member, "lease", [self.store, following, term], 1)
        if fields is None:
            return False, None
        grant = fields[0]
        if grant is None:
            return True, None
        writes = _parse_writes(grant[5]) if isinstance(grant, list) and len(grant) == 6 else None
        if not (isinstance(grant, list) and len(grant) == 6 and isinstance(grant[0], str)
                and all(type(field) is int and field >= 0 for field in (grant[1], grant[3], grant[4]))
                and type(grant[2]) in (int, float) and grant[2] >= 0 and writes is not None):
            self._fail(member, ChannelClosed(f"replica {member} sent a grant that is not [leader, term, "
                                             f"duration_s, index, exposed, writes]: {grant!r:.200}"))
            return False, None
        return True, {"leader": grant[0], "term": grant[1], "duration_s": float(grant[2]), "index": grant[3],
                      "exposed": grant[4], "writes": writes}

    async def _call(self, member: str, kind: str, arguments: list[Any], fields: int) -> list[Any] | None:
        """Send one request of `kind` and return the `fields` fields of its answer; None to ask over Ray."""
        if time.monotonic() < self._over_ray_until.get(member, 0.0):
            return None
        async with self._locks[kind]:
            try:
                return await asyncio.wait_for(self._ask(member, kind, arguments, fields), CALL_TIMEOUT_S)
            except RayconfError as refusal:
                logger.debug("store %s: replica %s rejected a %s request on its channel: %s", self.store,
                             member, kind, refusal)
                return None
            except (OSError, asyncio.TimeoutError, ChannelClosed, ValueError) as error:
                self._fail(member, error)
                return None

    def _fail(self, member: str, error: BaseException) -> None:
        for kind in self._locks:
            self._drop((member, kind))
        self._over_ray_until[member] = time.monotonic() + OVER_RAY_S
        logger.info("store %s asks replica %s over Ray for %g s: its index channel failed (%s: %s)",
                    self.store, member, OVER_RAY_S, type(error).__name__, error)

    async def _ask(self, member: str, kind: str, arguments: list[Any], fields: int) -> list[Any]:
        reader, writer = await self._connection(member, kind)
        self._next_id += 1
        request_id = self._next_id
        writer.write(pack_frame([request_id, kind, *arguments]))
        reply = await read_frame(reader, REPLY_FRAME_BYTES_MAX)
        if not (isinstance(reply, list) and len(reply) >= 2 and reply[0] == request_id and type(reply[1]) is bool):
            raise ChannelClosed(f"replica {member} sent a reply that is not for request {request_id}: {reply!r:.100}")
        if not reply[1]:
            if len(reply) != 5:
                raise ChannelClosed(f"replica {member} sent a malformed error reply: {reply!r:.200}")
            raise rebuild_error(*reply[2:])
        if len(reply) != 2 + fields:
            raise ChannelClosed(f"replica {member} sent {len(reply) - 2} fields for a {kind} request, "
                                f"expected {fields}: {reply!r:.200}")
        return reply[2:]

    async def _connection(self, member: str, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        connection = self._connections.get((member, kind))
        if connection is not None and not connection[1].is_closing():
            return connection
        endpoint = await self._fetch_endpoint(member)
        if endpoint is None:
            raise ChannelClosed(f"replica {member} has no index channel")
        reader, writer = await asyncio.open_connection(endpoint["host"], endpoint["port"])
        try:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handshake = ClientHandshake(member, endpoint["secret"], role="replica")
            writer.write(handshake.hello())
            writer.write(handshake.answer(await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)))
            handshake.check_accepted(await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX))
        except BaseException:
            writer.close()
            raise
        self._connections[(member, kind)] = (reader, writer)
        return reader, writer

    def _drop(self, key: tuple[str, str]) -> None:
        connection = self._connections.pop(key, None)
        if connection is not None:
            connection[1].close()

    def close(self) -> None:
        for key in list(self._connections):
            self._drop(key)


def _parse_writes(fields: object) -> list[tuple[int, WriteRanges]] | None:
    """Return the write ranges of a grant in the form `store_leases` uses, or None when they are malformed."""
    if not isinstance(fields, list):
        return None
    writes: list[tuple[int, WriteRanges]] = []
    for entry in fields:
        if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int and entry[0] > 0):
            return None
        if entry[1] is None:
            writes.append((entry[0], None))
            continue
        if not isinstance(entry[1], list):
            return None
        ranges = []
        for pair in entry[1]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], bytes)
                    and (pair[1] is None or isinstance(pair[1], bytes))):
                return None
            ranges.append((pair[0], pair[1]))
        writes.append((entry[0], tuple(ranges)))
    return writes


def _parse_answer(member: str, applied_index: int, read_point: object,
                  entries: object) -> tuple[int, list[tuple[int, str, bytes]]]:
    """Check an answer's read point and entries; raise `ChannelClosed` naming what is wrong."""
    if type(read_point) is not int or read_point < 0:
        raise ChannelClosed(f"replica {member} sent a read point that is not an index: {read_point!r:.100}")
    if not isinstance(entries, list):
        raise ChannelClosed(f"replica {member} sent entries that are not a list: {entries!r:.100}")
    parsed = []
    expected = applied_index + 1
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3 and type(entry[0]) is int and entry[0] == expected
                and isinstance(entry[1], str) and isinstance(entry[2], bytes)):
            raise ChannelClosed(f"replica {member} sent entry {entry!r:.100}, expected index {expected} as "
                                "[index, type, data]")
        parsed.append((entry[0], entry[1], entry[2]))
        expected += 1
    if parsed and parsed[-1][0] > read_point:
        raise ChannelClosed(f"replica {member} sent entries beyond its read point {read_point}")
    return read_point, parsed
