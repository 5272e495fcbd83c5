"""The shard store actor: a read replica of the state, fed by the committed stream.

A store belongs to one data center and follows one replica, preferably the
one in its own data center. It starts from that replica's latest snapshot and
then pulls committed entries with a long poll (`committed_since`): the
replica returns as soon as something new is applied, or after a wait. Pulling
keeps entries in log order, which pushed actor calls would not, and a slow
store never makes a replica buffer for it. A store that falls behind the
replica's compacted log loads a fresh snapshot.

Reads:
- "serializable": the store's state now, with its revision and its age, the
  time since it last heard from its replica. It serves reads even when its data
  center is cut off from the quorum.
- bounded staleness (`max_staleness_ms`): as serializable, but only if the
  age is within the bound. Otherwise it waits for the next poll, up to the
  timeout, then raises `Unavailable`.
- "linearizable": served from the store's read lease when it holds one and
  no write to the keys it reads is in flight (see `store_leases.py`). The
  leader sends the store every new log index, with the key ranges the entry
  may write, and returns no write's result before the store confirmed it,
  so the store serves the read at once, at the exposed index the leader
  last sent.
  Otherwise the store requests a ReadIndex from the leader, then waits
  until it has applied that index. The leader replies from its own lease,
  or confirms with a heartbeat round to a quorum when lease reads are off.
  Either way the store reads at the revision of that log index.

The ReadIndex request goes straight to the leader that the followed replica
names, which saves the replica's forwarding hop: first on the leader's index
channel (`index_channel.py`), a socket that a thread of the leader answers,
with the committed entries the store still lacks; then, when that channel
refuses or cannot be reached, over a Ray call. Lease requests take the same
channel. When the store is cut off from the leader (its own fault filter, or
the followed replica's, blocks the pair) or the leader call fails, the
request goes to the followed replica, which forwards it through Raft. Reads
waiting at the same time share one ReadIndex call: a read joins the next
call that starts after it arrived, never one already in flight, because that
call's index may date from before the read began.

With auth enabled, every read carries a token, checked against the store's
own copy of the auth state once the store has reached the read's index.

Every read may carry `min_revision`: the store waits until it has applied
that revision, which gives a client read-your-writes in any data center.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray

from rayconf.actors.auth_guard import authorize_read
from rayconf.actors.index_channel import IndexChannels
from rayconf.actors.priority import current_nice, warn_if_deprioritized
from rayconf.actors.read_channel import ReadChannelServer
from rayconf.actors.store_leases import WriteRanges, lease_read_target, window_spares
from rayconf.actors.stream_follower import (
    apply_streamed_entry,
    follow_replicas,
    load_streamed_snapshot,
    poll_committed,
)
from rayconf.actors.transport import replica_actor_name
from rayconf.errors import InvalidRequest, NotLeader, RayconfError, Unavailable
from rayconf.store.mvcc import MVCC
from rayconf.store.records import RangeRequest, RangeResponse

logger = logging.getLogger(__name__)

# Maximum wait of one poll for new entries. It also bounds how stale an idle
# store's age reading gets, because each reply refreshes the age.
POLL_WAIT_S = 0.25
POLL_ENTRIES_MAX = 1000
# Pause between lease requests while the leader grants none (unknown, cut off, or refusing).
LEASE_RETRY_S = 0.1
# A held lease is renewed when this fraction of it has passed. While grant
# calls are slow it is renewed sooner, but never within the minimum wait.
LEASE_RENEW_FRACTION = 1 / 3
LEASE_RENEW_MIN_WAIT_S = 0.005
# Recent grant calls whose durations set how early a lease is renewed.
LEASE_CALLS_KEPT = 8
# Time allowed for a lease request; a late grant only shortens the lease.
LEASE_CALL_TIMEOUT_S = 1.0
# Wait between read-point checks when a read's min_revision is above the read point.
MIN_REVISION_POLL_S = 0.02
# Time allowed beyond a call's own timeout before the store gives up on a
# replica whose process does not run (paused, or on a lost node).
CALL_MARGIN_S = 1.0


def store_actor_name(member: str) -> str:
    return f"store-{member}"


@ray.remote
class ShardStoreActor:
    """A read replica of one shard in one data center."""

    def __init__(self, name: str, data_center: str, replicas: list[str], namespace: str,
                 data_directory: str) -> None:
        logging.basicConfig(level=logging.INFO)
        self.name = name
        self.data_center = data_center
        # Replicas to follow, the preferred (same data center) first.
        self.replicas = replicas
        self.namespace = namespace
        self.state = MVCC()
        self.following = ""
        self.snapshots_loaded = 0
        # When the followed replica last heard from a leader, as of its latest reply.
        self.last_contact = 0.0
        # The leader the followed replica named in its latest reply; "" for none known.
        self.leader = ""
        # Blocked (from, to) member pairs: the followed replica's fault filter,
        # as of its latest reply, and the filter set on this store.
        self.replica_blocked: set[tuple[str, str]] = set()
        self.own_blocked: set[tuple[str, str]] = set()
        # Reads that arrived since the ReadIndex call in flight started. Their
        # number is bounded by the actor's concurrent calls (Ray's
        # max_concurrency for async actors) plus the read channel's reads
        # (at most CONNECTION_READS_IN_FLIGHT_MAX per connection).
        self._index_waiters: list[asyncio.Future[int]] = []
        self._index_calls_running = False
        self.read_index_calls = 0
        # Replica handles by member, for ReadIndex calls; a name lookup costs a GCS round trip.
        self._handles: dict[str, Any] = {}
        self.read_index_direct_calls = 0
        self._index_channels = IndexChannels(name, self._index_endpoint)
        # The request for entries that lease reads waiting at the moment share.
        self._catching_up: asyncio.Future[None] | None = None
        # The highest index a ReadIndex read was served at here.
        self._read_index_served = 0
        self.read_index_channel_calls = 0
        # Leader replies whose entries this store applied before its stream brought them.
        self.entries_from_leader = 0
        self._progress = asyncio.Condition()
        # Snapshots received from the replica; only the newest is kept.
        self._scratch = Path(data_directory) / "stores" / name
        self._scratch.mkdir(parents=True, exist_ok=True)
        # The read lease from `_lease_leader` in `_lease_term`, valid until
        # `_lease_expires` (monotonic). `_lease_acked` is the highest log
        # index received from that leader, `_lease_exposed` the highest
        # exposed index, committed and confirmed by every holder.
        self._lease_leader = ""
        self._lease_term = 0
        self._lease_expires = 0.0
        self._lease_acked = 0
        self._lease_exposed = 0
        # Key ranges that entries above `_lease_exposed` may write, as the leader sent them.
        self._lease_writes: dict[int, WriteRanges] = {}
        self.lease_grants = 0
        self.lease_reads = 0
        # Durations of the latest grant calls, in seconds.
        self._lease_call_s: collections.deque[float] = collections.deque(maxlen=LEASE_CALLS_KEPT)
        # Lease reads served while a write to other keys was in flight.
        self.lease_reads_beside_writes = 0
        self.channel = ReadChannelServer(name, self.read_batch)
        self._channel_start = asyncio.get_event_loop().create_task(self._start_channel())
        self._task = asyncio.get_event_loop().create_task(self._follow())
        self._lease_task = asyncio.get_event_loop().create_task(self._keep_lease())
        logger.info("shard store %s up in %s, following %s", name, data_center, replicas)

    # --- Following the committed stream. ---

    async def _follow(self) -> None:
        await follow_replicas("store", self.name, self.replicas, self._follow_replica)

    async def _follow_replica(self, member: str) -> None:
        handle = ray.get_actor(replica_actor_name(member), namespace=self.namespace)
        self.following = member
        while True:
            reply = await poll_committed(handle, self.state.applied_index, POLL_ENTRIES_MAX, POLL_WAIT_S)
            if reply["snapshot"] is not None:
                if reply.get("snapshot_index", 0) > self.state.applied_index:
                    self._load_snapshot(reply["snapshot"])
                continue
            for index, entry_type, data in reply["entries"]:
                apply_streamed_entry(self.state, index, entry_type, data)
            # The store is as fresh as its replica's last word from the leader.
            self.last_contact = time.monotonic() - reply["leader_age_ms"] / 1000
            self.leader = reply["leader"]
            self.replica_blocked = set(map(tuple, reply["blocked"]))
            async with self._progress:
                self._progress.notify_all()

    def _load_snapshot(self, packed: bytes) -> None:
        state = load_streamed_snapshot(packed, self._scratch)
        if state.applied_index <= self.state.applied_index:
            # Entries from the leader arrived while it was unpacked.
            return
        self.state = state
        self.snapshots_loaded += 1
        logger.info("store %s loaded a snapshot at index %d, revision %d",
                    self.name, self.state.applied_index, self.state.revision)

    # --- Reads. ---

    async def _start_channel(self) -> None:
        warn_if_deprioritized(f"store {self.name}")
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            logger.info("store %s opens no read channel: Ray runs with TLS and the channel is not encrypted; "
                        "reads go over Ray calls", self.name)
            return
        try:
            await self.channel.start(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        except OSError as error:
            # Clients then read this store over Ray actor calls.
            logger.error("store %s could not open its read channel (%s); reads go over Ray calls only",
                         self.name, error)

    async def read_channel(self) -> dict[str, Any] | None:
        """Return the host, port and secret of this store's read channel; None when it has none.

        See `actors/read_channel.py`. The secret admits a connection, so it
        is handed out only over this Ray call, and never logged.
        """
        await asyncio.shield(self._channel_start)
        return self.channel.endpoint()

    async def read(self, request: RangeRequest, consistency: str = "linearizable", min_revision: int = 0,
                   max_staleness_ms: int | None = None, timeout_s: float = 5.0,
                   token: str | None = None) -> dict[str, Any]:
        """Serve one range; return the response with the store's revision and age."""
        responses = await self.read_batch([request], consistency, min_revision, max_staleness_ms, timeout_s,
                                          token)
        return responses[0]

    async def read_batch(self, requests: list[RangeRequest], consistency: str = "linearizable",
                         min_revision: int = 0, max_staleness_ms: int | None = None,
                         timeout_s: float = 5.0, token: str | None = None) -> list[dict[str, Any]]:
        """Serve several ranges after one consistency check, shared by all of them."""
        deadline = time.monotonic() + timeout_s
        if consistency == "linearizable":
            # A read pinned to a revision may name one the store has not
            # applied yet, so only reads of the current state skip a window.
            reads = None if any(request.revision for request in requests) else [
                (request.key, request.range_end) for request in requests]
            index = await self._read_point(min_revision, deadline, timeout_s, reads)
        elif consistency == "serializable":
            if max_staleness_ms is not None:
                await self._wait(lambda: self.age_ms() <= max_staleness_ms, deadline,
                                 f"hear from its replica within {max_staleness_ms} ms")
            if min_revision:
                await self._wait(lambda: self.state.revision >= min_revision, deadline,
                                 f"reach revision {min_revision}")
        else:
            raise InvalidRequest(f"consistency {consistency!r} is unknown; use 'linearizable' or 'serializable'")
        for request in requests:
            authorize_read(self.state.auth, token, request.key, request.range_end)
        results = []
        for request in requests:
            if consistency == "linearizable":
                response: RangeResponse = self.state.range_at_index(request, index)
            else:
                response = self.state.range(request)
            results.append({"response": response, "age_ms": self.age_ms(), "store": self.name})
        return results

    async def _read_point(self, min_revision: int, deadline: float, timeout_s: float,
                          reads: list[tuple[bytes, bytes | None]] | None) -> int:
        """Return the log index to serve a linearizable read of `reads` at, applied here, at or above `min_revision`.

        `reads` None means the read may not be served beside a write in flight.

        A `min_revision` that came from a write this client saw acknowledged
        is always covered. One seen only through a serializable read or a
        watch may be ahead of what every reader is allowed to see yet, so
        the read waits for a later read point.
        """
        while True:
            index = await self._lease_read_point(deadline, reads)
            if index is not None and min_revision:
                revision = self.state.revision_at_index(index)
                if revision is None or revision < min_revision:
                    # A ReadIndex gives a later point than the lease, when there is one.
                    index = None
            if index is None:
                index = await self._read_index(timeout_s)
                await self._wait(lambda: self.state.applied_index >= index, deadline, f"apply index {index}")
                self._read_index_served = max(self._read_index_served, index)
            revision = self.state.revision_at_index(index)
            if not min_revision or (revision is not None and revision >= min_revision):
                return index
            if time.monotonic() + MIN_REVISION_POLL_S > deadline:
                raise Unavailable(f"store {self.name} did not reach revision {min_revision} in time "
                                  f"(revision {self.state.revision}); retry or read elsewhere")
            await asyncio.sleep(MIN_REVISION_POLL_S)

    async def _lease_read_point(self, deadline: float, reads: list[tuple[bytes, bytes | None]] | None) -> int | None:
        """Return a read point from the lease, or None when the read must take the ReadIndex path.

        Everything a completed operation saw is at or below the last index
        the leader sent this store (`_lease_acked`). When the exposed index
        the leader sent is at least that, the store reads at the exposed
        index, once it has applied it. Otherwise a write is in flight. If
        no entry in flight may write a key in `reads`, the store still reads
        at the exposed index (see store_leases.py); else the read takes the
        ReadIndex path rather than wait for the write.
        """
        now = time.monotonic()
        target = lease_read_target(now, self._lease_expires, self._lease_acked, self._lease_exposed)
        beside_writes = False
        if target is None:
            # A read beside writes is never served below a ReadIndex this
            # store served, so the revisions it returns do not go back.
            if (now >= self._lease_expires or reads is None or self._lease_exposed < self._read_index_served
                    or not window_spares(self._lease_writes, self._lease_exposed, self._lease_acked, reads)):
                return None
            target = self._lease_exposed
            beside_writes = True
        leader, term = self._lease_leader, self._lease_term

        def applied() -> bool:
            return self.state.applied_index >= target

        if not applied():
            # Whichever brings the entries first: the leader's index channel or the stream.
            self._start_catch_up()
        if not applied() and not await self._wait_until(applied, min(deadline, self._lease_expires)):
            return None
        if (self._lease_leader, self._lease_term) != (leader, term):
            return None
        self.lease_reads += 1
        self.lease_reads_beside_writes += beside_writes
        return min(self._lease_exposed, self.state.applied_index)

    # --- The read lease. ---

    async def _keep_lease(self) -> None:
        """Ask the leader for a read lease and renew it, forever."""
        while True:
            leader = self.leader
            grant = None
            if leader and not self._cut_off(self.following, leader):
                grant = await self._ask_lease(leader)
            if grant is None:
                await asyncio.sleep(LEASE_RETRY_S)
                continue
            await asyncio.sleep(self._lease_renewal_wait_s(grant["duration_s"]))

    def _lease_renewal_wait_s(self, duration_s: float) -> float:
        """Return how long to wait before asking for the next lease, after a grant of `duration_s`.

        Normally a fraction of the lease. When grant calls are slow (a busy
        leader), the next request leaves earlier, so that even a call twice
        as slow as the slowest recent one returns before the lease ends.
        """
        remaining_s = self._lease_expires - time.monotonic()
        slowest_s = max(self._lease_call_s, default=0.0)
        return max(LEASE_RENEW_MIN_WAIT_S, min(duration_s * LEASE_RENEW_FRACTION, remaining_s - 2 * slowest_s))

    async def _ask_lease(self, leader: str) -> dict[str, Any] | None:
        asked = time.monotonic()
        term = self._lease_term if self._lease_leader == leader else 0
        answered, grant = await self._index_channels.grant_lease(leader, self.following, term)
        if not answered:
            try:
                handle = self._replica_handle(leader)
                grant = await asyncio.wait_for(handle.grant_read_lease.remote(self.name, self.following),
                                               timeout=LEASE_CALL_TIMEOUT_S)
            except (TimeoutError, ValueError, ray.exceptions.RayError) as error:
                self._handles.pop(leader, None)
                logger.info("store %s got no read lease from %s: %s", self.name, leader, type(error).__name__)
                return None
        self._lease_call_s.append(time.monotonic() - asked)
        if grant is None:
            return None
        if (grant["leader"], grant["term"]) != (self._lease_leader, self._lease_term):
            self._lease_leader, self._lease_term = grant["leader"], grant["term"]
            self._lease_acked = grant["index"]
            self._lease_exposed = grant["exposed"]
            self._lease_writes.clear()
        else:
            self._lease_acked = max(self._lease_acked, grant["index"])
            self._lease_exposed = max(self._lease_exposed, grant["exposed"])
        self._record_writes(grant.get("writes") or [])
        # Counted from the request, so the lease ends here before it ends on the leader.
        self._lease_expires = asked + grant["duration_s"]
        self.lease_grants += 1
        async with self._progress:
            self._progress.notify_all()
        return grant

    async def lease_update(self, leader: str, term: int, index: int, exposed: int,
                           writes: list[tuple[int, WriteRanges]] | None = None,
                           entries: list[tuple[int, str, bytes]] | None = None) -> bool:
        """Record a new last log index and exposed index from the lease's leader; return whether accepted.

        `writes` gives, for entries the leader proposed in this term, the key
        ranges each may write. `entries` are committed entries up to
        `exposed`, which the store applies if they follow on from its state.
        An update from any other leader or term is rejected, and so is one
        that arrives before its grant: the leader then sends it again. The
        leader counts `index` as confirmed by this store only when this
        returns True.
        """
        if (leader, term) != (self._lease_leader, self._lease_term):
            return False
        self._lease_acked = max(self._lease_acked, index)
        self._lease_exposed = max(self._lease_exposed, exposed)
        self._record_writes(writes or [])
        if entries:
            await self._apply_leader_entries(entries)
        async with self._progress:
            self._progress.notify_all()
        return True

    def _record_writes(self, writes: list[tuple[int, WriteRanges]]) -> None:
        """Keep the write ranges of entries in the window (exposed, acked]; forget those now exposed."""
        for entry_index, ranges in writes:
            if self._lease_exposed < entry_index <= self._lease_acked:
                self._lease_writes[entry_index] = ranges
        # Updates may arrive out of order, so the entries are not kept sorted.
        for entry_index in [entry_index for entry_index in self._lease_writes if entry_index <= self._lease_exposed]:
            del self._lease_writes[entry_index]

    def _replica_handle(self, member: str) -> Any:
        handle = self._handles.get(member)
        if handle is None:
            handle = self._handles[member] = ray.get_actor(replica_actor_name(member), namespace=self.namespace)
        return handle

    async def _read_index(self, timeout_s: float) -> int:
        """Return a ReadIndex from a call that started after this read arrived."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._index_waiters.append(future)
        if not self._index_calls_running:
            self._index_calls_running = True
            asyncio.ensure_future(self._run_index_calls(timeout_s))
        try:
            # The call this read joins may start late, after the one in flight.
            return await asyncio.wait_for(future, timeout=2 * timeout_s + CALL_MARGIN_S)
        except TimeoutError:
            raise Unavailable(f"store {self.name} got no ReadIndex within {2 * timeout_s} s; retry the read") from None

    async def _run_index_calls(self, timeout_s: float) -> None:
        """Make ReadIndex calls one after another while reads wait, each serving all that wait."""
        try:
            while self._index_waiters:
                waiters, self._index_waiters = self._index_waiters, []
                self.read_index_calls += 1
                try:
                    index = await self._ask_read_index(timeout_s)
                except Exception as error:  # every waiter gets the same failure
                    for future in waiters:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for future in waiters:
                    if not future.done():
                        future.set_result(index)
        finally:
            self._index_calls_running = False

    async def _ask_read_index(self, timeout_s: float) -> int:
        leader = self.leader
        if leader and not self._cut_off(self.following, leader):
            answer = await self._index_channels.read_index(leader, self.state.applied_index)
            if answer is not None:
                index, entries = answer
                await self._apply_leader_entries(entries)
                self.read_index_channel_calls += 1
                return index
        if leader and leader != self.following and not self._cut_off(self.following, leader):
            try:
                index = await self._call_read_index(leader, timeout_s)
                self.read_index_direct_calls += 1
                return index
            except (NotLeader, ValueError, ray.exceptions.RayActorError) as error:
                logger.info("store %s falls back to its replica for a ReadIndex: leader %s failed with %s",
                            self.name, leader, type(error).__name__)
        return await self._ask_followed_replica(timeout_s)

    async def _ask_followed_replica(self, timeout_s: float) -> int:
        """Ask the followed replica, then the others in order, for a ReadIndex they forward to the leader.

        A replica that is gone or restarting is skipped, so a store whose own
        replica is down still serves linearizable reads through another one.
        """
        members = list(self.replicas)
        if self.following in members:
            members.remove(self.following)
            members.insert(0, self.following)
        for member in members:
            try:
                return await self._call_read_index(member, timeout_s)
            except ValueError:
                continue
            except ray.exceptions.RayActorError as error:
                logger.warning("store %s skipped replica %s for a ReadIndex: %s", self.name, member,
                               type(error).__name__)
        raise Unavailable(f"store {self.name} found no replica to confirm a linearizable read")

    async def _call_read_index(self, member: str, timeout_s: float) -> int:
        """Call `read_index` on one replica, bounded in time even when its process is paused.

        Raises the rayconf error the replica raised (`Unavailable`, `NotLeader`),
        `ValueError` when no actor has the replica's name, and Ray's actor
        errors when the replica is gone or restarting.
        """
        handle = self._replica_handle(member)
        try:
            index: int = await asyncio.wait_for(handle.read_index.remote(timeout_s), timeout=timeout_s + CALL_MARGIN_S)
        except TimeoutError:
            raise Unavailable(f"replica {member} did not return a ReadIndex within {timeout_s} s") from None
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, RayconfError):
                raise error.cause from None
            raise
        except ray.exceptions.RayActorError:
            # A replica created anew under the same name has a new handle.
            self._handles.pop(member, None)
            raise
        return index

    def _start_catch_up(self) -> None:
        """Start applying the committed entries that the leader's index channel keeps beyond this store's state.

        A lease read that needs entries the stream has not brought yet gets
        them from the leader in one round trip instead. Reads that wait at
        the same time share one request, and keep waiting for the stream too.
        """
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(self._fetch_entries())

    async def _fetch_entries(self) -> None:
        leader = self.leader
        if not leader or self._cut_off(self.following, leader):
            return
        answer = await self._index_channels.read_index(leader, self.state.applied_index)
        if answer is not None:
            await self._apply_leader_entries(answer[1])

    async def _apply_leader_entries(self, entries: list[tuple[int, str, bytes]]) -> None:
        """Apply committed entries from the leader (an index channel reply or a lease update), from the next missing one.

        The stream brings the same entries later, and `apply_streamed_entry`
        skips those already applied. Entries stop at the first gap.
        """
        applied = False
        for index, entry_type, data in entries:
            if index > self.state.applied_index + 1:
                break
            if index == self.state.applied_index + 1:
                apply_streamed_entry(self.state, index, entry_type, data)
                applied = True
        if applied:
            self.entries_from_leader += 1
            async with self._progress:
                self._progress.notify_all()

    async def _index_endpoint(self, member: str) -> dict[str, Any] | None:
        """Return the endpoint of `member`'s index channel, or None when it has none or cannot be asked."""
        try:
            endpoint: dict[str, Any] | None = await asyncio.wait_for(
                self._replica_handle(member).index_channel.remote(), timeout=CALL_MARGIN_S)
        except (TimeoutError, ValueError, ray.exceptions.RayError) as error:
            if not isinstance(error, TimeoutError):
                self._handles.pop(member, None)
            logger.info("store %s got no index channel endpoint from %s: %s", self.name, member,
                        type(error).__name__)
            return None
        return endpoint

    def _cut_off(self, member: str, other: str) -> bool:
        blocked = self.own_blocked | self.replica_blocked
        return (member, other) in blocked or (other, member) in blocked

    async def set_faults(self, blocked: list[tuple[str, str]]) -> None:
        """Block the store's direct calls between these member pairs; an empty list clears it.

        The store speaks for the replica it follows: a pair that names that
        replica and the leader keeps the store from asking the leader directly.
        """
        self.own_blocked = set(map(tuple, blocked))  # type: ignore[arg-type]

    async def _wait_until(self, ready: Any, until: float) -> bool:
        """Wait until `ready()` or the monotonic time `until`; return whether it became ready."""
        async with self._progress:
            while not ready():
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._progress.wait(), timeout=remaining)
                except TimeoutError:
                    pass
        return True

    async def _wait(self, ready: Any, deadline: float, what: str) -> None:
        if not await self._wait_until(ready, deadline):
            raise Unavailable(f"store {self.name} did not {what} in time (revision "
                              f"{self.state.revision}, age {self.age_ms()} ms); retry or read elsewhere")

    def age_ms(self) -> int:
        if not self.last_contact:
            return 2**31
        return int((time.monotonic() - self.last_contact) * 1000)

    async def status(self) -> dict[str, Any]:
        return {
            "store": self.name,
            "pid": os.getpid(),
            # The serving thread's nice value (actors/priority.py).
            "nice": current_nice(),
            "data_center": self.data_center,
            "following": self.following,
            "applied_index": self.state.applied_index,
            "revision": self.state.revision,
            "age_ms": self.age_ms(),
            "snapshots_loaded": self.snapshots_loaded,
            "leader": self.leader,
            "read_index_calls": self.read_index_calls,
            "read_index_direct_calls": self.read_index_direct_calls,
            "read_index_channel_calls": self.read_index_channel_calls,
            "entries_from_leader": self.entries_from_leader,
            "lease_leader": self._lease_leader,
            "lease_remaining_ms": max(0, int((self._lease_expires - time.monotonic()) * 1000)),
            "lease_grants": self.lease_grants,
            "lease_reads": self.lease_reads,
            "lease_reads_beside_writes": self.lease_reads_beside_writes,
            "read_channel": f"{self.channel.host}:{self.channel.port}" if self.channel.port else "",
            "read_channel_reads": self.channel.counters["reads"],
            "read_channel_rejected": self.channel.counters["rejected"],
            "auth_enabled": self.state.auth.enabled,
            "auth_revision": self.state.auth.revision,
        }
