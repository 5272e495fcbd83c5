"""The replica actor: one member of the Raft group, as a Ray actor.

The actor wraps a `ReplicaCore` and gives it a clock and a network. It is an
async actor, so every call and the background loop run on one event loop
thread, and the core, which is synchronous, is never entered by two callers at
once. The loop wakes on every tick and whenever a call brought work, then runs
the Ready contract until the core has nothing left: persist (one fsync),
send, apply, advance.

Restarts. The actor is detached and named, and Ray restarts it after a crash.
A restart runs `__init__` again, which reopens the data directory, so all
state comes back from the write-ahead log and the latest snapshot.

Calls:
- `propose(command)` on the leader waits until the command is applied and
  returns its result. Anywhere else it raises `NotLeader` with a hint.
- `read(request, consistency)` serves a range: "linearizable" confirms
  leadership with ReadIndex and waits until that index is applied here.
  "serializable" reads the local state at once.
- `receive(batch)` takes Raft messages from peers' transports.
- `authenticate(user, password)` returns a token; `issue_token` lets an admin
  mint a long-lived one for a service. With auth enabled, `propose`, `read`
  and `history` need a token (see `auth_guard.py` and docs/auth.md).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import resource
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from rayconf.actors import auth_guard
from rayconf.actors.index_channel import IndexChannelServer
from rayconf.actors.priority import current_nice, warn_if_deprioritized
from rayconf.actors.raft.types import Message, MessageType, NodeId
from rayconf.actors.replica_chunks import ReplicaChunks, chunk_digests_of
from rayconf.actors.replica_core import ReplicaCore, ReplicaSettings
from rayconf.actors.shard_store import store_actor_name
from rayconf.actors.store_leases import (
    WINDOW_ENTRIES_MAX,
    ExposedIndex,
    StoreLeases,
    WriteRanges,
    lease_duration_s,
    window_writes,
    write_ranges,
)
from rayconf.actors.transport import Transport
from rayconf.errors import InvalidRequest, NotLeader, RayconfError, Unavailable
from rayconf.store.auth import SECRET_BYTES, authorize_command, require_admin
from rayconf.store.limits import Limits
from rayconf.store.mvcc import ApplyResult
from rayconf.store.validation import check_command, check_note
from rayconf.store.records import AuthChange, Command, HistoryEntry, RangeRequest, RangeResponse

logger = logging.getLogger(__name__)

# Messages that only a leader sends; their arrival means the leader is reachable.
LEADER_MESSAGE_TYPES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
# Ready rounds per wake-up before the loop yields to pending calls.
READY_ROUNDS_MAX = 64
# Proposals and reads waiting at once; beyond it new ones are rejected as Unavailable.
PENDING_REQUESTS_MAX = 10_000
# Bytes of entries per committed-stream reply (at least one entry is sent).
STREAM_BYTES_MAX = 4 * 1024 * 1024
# Shortest store lease worth granting; a shorter one would end before it arrives.
STORE_LEASE_MIN_S = 0.02
# Bytes of newly exposed entries sent with one lease update; beyond it the store's stream brings them.
LEASE_UPDATE_ENTRY_BYTES_MAX = 1024 * 1024
# A name that no store actor had is refused leases for this long before it is looked up again.
NOT_A_STORE_S = 10.0
# Names kept in the lookup and logging tables; beyond it the tables start afresh.
NOT_STORES_KEPT = 1024
UPDATE_FAILURE_LOG_INTERVAL_S = 10.0


@ray.remote
class ReplicaActor:
    """One Raft member with its data directory."""

    def __init__(
        self,
        member: NodeId,
        data_directory: str,
        voters: tuple[NodeId, ...],
        learners: tuple[NodeId, ...],
        namespace: str,
        tick_ms: int,
        settings: ReplicaSettings,
        limits: Limits | None = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.member = member
        self.tick_s = tick_ms / 1000
        directory = Path(data_directory) / member
        self.core = ReplicaCore(member, directory, voters=voters, learners=learners, settings=settings,
                                seed=int.from_bytes(os.urandom(8), "big"), limits=limits)
        self.chunks = ReplicaChunks(member, directory, namespace, settings.chunk_orphan_grace_s,
                                    settings.chunk_io_nice)
        self.transport = Transport(member, namespace)
        self.core.node.set_read_index_cap(self._exposed_index)
        self._proposals: dict[str, asyncio.Future[ApplyResult]] = {}
        # Results of applied proposals that wait until every store lease holder
        # confirmed their entries: (applied index when taken, future, result).
        self._held_results: list[tuple[int, asyncio.Future[ApplyResult], ApplyResult]] = []
        # A holder that confirms no update for an election timeout loses its lease.
        self.store_leases = StoreLeases(stall_s=settings.election_timeout_ticks * tick_ms / 1000)
        # The key ranges each entry this member proposed in term
        # `_entry_writes_term` may write, until every holder has it exposed.
        self._entry_writes: collections.OrderedDict[int, WriteRanges] = collections.OrderedDict()
        self._entry_writes_term = 0
        self._exposed = ExposedIndex()
        self._store_handles: dict[str, Any] = {}
        # Store names that no actor had, by when that was found; and when a
        # failed lease update to each store was last logged.
        self._not_stores: dict[str, float] = {}
        self._update_failures_logged: dict[str, float] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._started = time.monotonic()
        # When the core is due its next tick, on the monotonic clock.
        self._next_tick = self._started + self.tick_s
        # When a leader's append, heartbeat or snapshot last arrived; 0 for never.
        self._leader_contact = 0.0
        self._logins = auth_guard.LoginLimiter()
        self._index_server = IndexChannelServer(member)
        self._index_server.serve_leases(self.grant_read_lease, asyncio.get_event_loop(), self._renew_read_lease)
        self._start_index_channel()
        self._loop_task = asyncio.get_event_loop().create_task(self._run())
        logger.info("replica actor %s up, data in %s", member, directory)

    # --- The loop. ---

    async def _run(self) -> None:
        warn_if_deprioritized(f"replica {self.member}")
        while True:
            timeout = max(0.0, self._next_tick - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            self._advance_clock()
            try:
                self._drain()
            except RayconfError:
                logger.exception("replica %s failed to process a Ready", self.member)
                raise

    def _advance_clock(self) -> bool:
        """Tick the core once for every tick period that has passed on the monotonic clock; return whether it ticked.

        Ticks follow elapsed time, not the loop's wake-ups: after the process
        was paused (SIGSTOP, a long GC pause) or its loop was blocked, the core
        catches up at once. Reads call this before asking for a ReadIndex, so
        a leader never judges its lease with a clock that stood still.
        """
        now = time.monotonic()
        ticked = False
        while now >= self._next_tick:
            self.core.tick()
            self._next_tick += self.tick_s
            ticked = True
        return ticked

    def _drain(self) -> None:
        for _ in range(READY_ROUNDS_MAX):
            if not self.core.node.has_ready():
                break
            outcome = self.core.process_ready()
            if outcome.committed_entries and self.core.is_leader():
                self._index_server.remember((entry.index, entry.type.value, entry.data)
                                            for entry in outcome.committed_entries)
            self.transport.send(outcome.messages)
            for read_state in outcome.read_states:
                future = self._reads.pop(read_state.request_context, None)
                if future is not None and not future.done():
                    future.set_result(read_state.index)
            self._resolve_proposals()
            if outcome.leader_changed:
                self._fail_reads("the leader changed while the read was waiting")
                self.store_leases.reset_backoff()
        self.transport.flush()
        self._release_held()
        self._resolve_applied()
        self._after_apply_chunks()
        self._push_lease_updates()
        # Renews, or withdraws, the read point that the index channel serves.
        self._exposed_index()

    def _after_apply_chunks(self) -> None:
        core = self.core
        self.chunks.members = list(core.conf_state.voters) + list(core.conf_state.learners)
        if not self.chunks.members:
            return
        digests = core.applied_chunk_digests
        core.applied_chunk_digests = []
        if self.chunks.after_apply(core.state, digests, core.chunk_scan_due, core.unapplied_chunk_digests):
            core.chunk_scan_due = False

    def _resolve_proposals(self) -> None:
        applied = self.core.state.applied_index
        for request_id in list(self._proposals):
            result = self.core.take_result(request_id)
            if result is not None:
                self._held_results.append((applied, self._proposals.pop(request_id), result))

    def _exposed_index(self) -> int:
        """Return the highest committed index that every store lease holder has confirmed (see store_leases.py).

        Every index returned or sent to a client or store comes from here, so
        the index channel's thread gets it first (see index_channel.py).
        """
        term = self.core.term()
        exposed = self._exposed.next(term, self.store_leases.exposed(self.core.commit_index(), time.monotonic()),
                                     self.core.state.applied_index, self.core.applied_entry_in_current_term())
        remaining_ticks = self.core.lease_remaining_ticks()
        lease_ends = 0.0
        if remaining_ticks > 0:
            # Counted from when the current tick was due, so a loop that has
            # not ticked for a while publishes a shorter lease, never a longer one.
            lease_ends = self._next_tick - self.tick_s + lease_duration_s(remaining_ticks, self.tick_s)
        self._index_server.publish(term, lease_ends, exposed)
        return exposed

    def _release_held(self) -> None:
        """Return the results of the proposals whose entries every store lease holder has confirmed."""
        if not self._held_results:
            return
        exposed = self._exposed_index()
        waiting = []
        for index, future, result in self._held_results:
            if index <= exposed:
                if not future.done():
                    future.set_result(result)
            else:
                waiting.append((index, future, result))
        self._held_results = waiting

    def _resolve_applied(self) -> None:
        applied = self.core.state.applied_index
        waiting = []
        for index, future in self._applied_waiters:
            if index <= applied:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((index, future))
        self._applied_waiters = waiting

    def _fail_reads(self, reason: str) -> None:
        for future in self._reads.values():
            if not future.done():
                future.set_exception(Unavailable(f"read on {self.member} not served: {reason}; retry it"))
        self._reads.clear()

    # --- Calls from peers. ---

    async def receive(self, batch: list[Message]) -> None:
        for message in batch:
            if message.type in LEADER_MESSAGE_TYPES:
                self._leader_contact = time.monotonic()
            self.core.step(message)
        # A follower's reply may have advanced the commit index, and with it
        # the exposed index that lease holders need to serve reads again.
        self._push_lease_updates()
        self._wake.set()

    def leader_age_ms(self) -> int:
        """Return the time since this member last heard from a leader; 0 on the leader itself."""
        if self.core.is_leader():
            return 0
        if not self._leader_contact:
            return 2**31
        return int((time.monotonic() - self._leader_contact) * 1000)

    # --- Calls from clients. ---

    async def propose(self, command: Command, timeout_s: float = 5.0,
                      chunk_refs: dict[bytes, Any] | None = None, token: str | None = None) -> ApplyResult:
        """Replicate `command` and return its result once applied here on the leader.

        Raises `NotLeader` when this member is not the leader, and `Unavailable`
        when the command was not applied within `timeout_s`. In that case it
        may still apply later, so retry with the same request id. With auth
        enabled, the principal becomes the user that `token` proves.

        A command whose values are chunk manifests comes with `chunk_refs`,
        the ObjectRefs of the chunks by sha256 digest. The command is proposed
        only after a quorum of voters stored those chunks.
        """
        # A bad command is rejected here, before it costs a log entry on every member.
        check_command(command, self.core.state.limits)
        check_note(command.note)
        command = self._authenticate_command(command, token)
        digests = chunk_digests_of(command, self.core.state.limits)
        if not self.core.is_leader():
            raise NotLeader(f"{self.member} is not the leader; the leader is {self.core.leader or 'unknown'}",
                            leader_hint=self.core.leader or None)
        if len(self._proposals) >= PENDING_REQUESTS_MAX:
            raise Unavailable(f"{self.member} has {len(self._proposals)} proposals waiting; retry later")
        future = self._proposals.get(command.request_id)
        if future is None and digests:
            voters = list(self.core.conf_state.voters)
            await self.chunks.replicate(digests, chunk_refs or {}, voters, timeout_s)
            future = self._proposals.get(command.request_id)
            if not self.core.is_leader():
                raise NotLeader(f"{self.member} lost leadership while storing chunks; the leader is "
                                f"{self.core.leader or 'unknown'}", leader_hint=self.core.leader or None)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._proposals[command.request_id] = future
            self._propose(command)
            # Lease holders hear of the new entry while it replicates, so
            # their replies rarely hold the result back once it commits.
            self._push_lease_updates()
            self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(
                f"request {command.request_id} was not applied within {timeout_s} s on {self.member}; "
                "its outcome is unknown, retry with the same request id"
            ) from None

    def _propose(self, command: Command) -> None:
        """Propose `command` to the Raft core and note the key ranges its entry may write."""
        last_index = self.core.last_index()
        self.core.propose(command)
        if self.core.last_index() != last_index + 1:
            return
        term = self.core.term()
        if term != self._entry_writes_term:
            self._entry_writes.clear()
            self._entry_writes_term = term
        self._entry_writes[last_index + 1] = write_ranges(command)
        # Stores check no wider window, so older entries are of no use even
        # while no store holds a lease to prune them.
        self._prune_entry_writes(last_index + 1 - WINDOW_ENTRIES_MAX)

    def _prune_entry_writes(self, up_to: int) -> None:
        """Forget the write ranges of the entries at or below `up_to`."""
        while self._entry_writes and next(iter(self._entry_writes)) <= up_to:
            self._entry_writes.popitem(last=False)

    async def read(self, request: RangeRequest, consistency: str = "linearizable",
                   timeout_s: float = 5.0, token: str | None = None) -> RangeResponse:
        """Serve a range at the given consistency ("linearizable" or "serializable")."""
        if consistency == "linearizable":
            index = await self._confirm_read_index(timeout_s)
            auth_guard.authorize_read(self.core.state.auth, token, request.key, request.range_end)
            return self.core.state.range_at_index(request, index)
        if consistency != "serializable":
            raise InvalidRequest(f"consistency {consistency!r} is unknown; use 'linearizable' or 'serializable'")
        auth_guard.authorize_read(self.core.state.auth, token, request.key, request.range_end)
        return self.core.state.range(request)

    async def read_index(self, timeout_s: float = 5.0) -> int:
        """Return a log index that a linearizable read must wait for, confirmed by a quorum.

        Shard stores call this, then serve the read once they have applied the index.
        """
        return await self._read_index(timeout_s)

    async def committed_since(self, after_index: int, entries_max: int, wait_s: float) -> dict[str, Any]:
        """Return applied entries after `after_index`, waiting up to `wait_s` for new ones.

        Returns {"snapshot": packed bytes, "snapshot_index": its index,
        "entries": []} when the entries after `after_index` are already
        compacted, so the caller must load the snapshot.
        Every reply also names the leader this member follows and the member
        pairs its fault filter blocks, so a store can reach the leader directly
        and still respect the partitions that tests and the nemesis set.
        """
        storage = self.core.storage
        if after_index + 1 < storage.first_index():
            return self._stream_reply(storage.snapshot(), [])
        if self.core.state.applied_index <= after_index:
            try:
                await asyncio.wait_for(self._wait_applied(after_index + 1), timeout=wait_s)
            except asyncio.TimeoutError:
                return self._stream_reply(None, [])
            if after_index + 1 < storage.first_index():
                return self._stream_reply(storage.snapshot(), [])
        high = min(self.core.state.applied_index, after_index + entries_max) + 1
        entries = storage.entries(after_index + 1, high, STREAM_BYTES_MAX)
        return self._stream_reply(None, [(entry.index, entry.type.value, entry.data) for entry in entries])

    def _stream_reply(self, snapshot: Any, entries: list[tuple[int, str, bytes]]) -> dict[str, Any]:
        return {"snapshot": None if snapshot is None else snapshot.data,
                "snapshot_index": 0 if snapshot is None else snapshot.metadata.index,
                "entries": entries, "leader_age_ms": self.leader_age_ms(),
                "leader": self.core.leader, "blocked": sorted(self.transport.faults.blocked)}

    async def _confirm_read_index(self, timeout_s: float) -> int:
        index = await self._read_index(timeout_s)
        try:
            await asyncio.wait_for(self._wait_applied(index), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.member} did not apply index {index} within {timeout_s} s") from None
        return index

    async def _read_index(self, timeout_s: float) -> int:
        if len(self._reads) >= PENDING_REQUESTS_MAX:
            raise Unavailable(f"{self.member} has {len(self._reads)} reads waiting; retry later")
        if self._advance_clock():
            self._wake.set()
        # A leader inside its lease returns the read point at once, the index
        # the Raft core would return through its next Ready.
        leased = self.core.lease_read_index()
        if leased is not None:
            return min(leased, self._exposed_index())
        context = uuid.uuid4().bytes
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[context] = future
        try:
            self.core.read_index(context)
        except RayconfError as error:
            self._reads.pop(context, None)
            raise Unavailable(f"{self.member} cannot serve a linearizable read now: {error}") from error
        self._wake.set()
        try:
            index = await asyncio.wait_for(future, timeout=timeout_s)
        except asyncio.TimeoutError:
            self._reads.pop(context, None)
            raise Unavailable(f"linearizable read on {self.member} timed out after {timeout_s} s; "
                              "no quorum confirmed the leader") from None
        # The leader's Raft core has already capped the index at its exposed
        # index, also for a read that this member forwarded as a follower.
        return index

    async def _wait_applied(self, index: int) -> None:
        if self.core.state.applied_index >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, future))
        await future

    def _start_index_channel(self) -> None:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            logger.info("replica %s opens no index channel: Ray runs with TLS and the channel is not encrypted",
                        self.member)
            return
        try:
            self._index_server.start_thread(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        except OSError as error:
            # Stores then ask this member for ReadIndex over Ray calls.
            logger.error("replica %s could not open its index channel (%s); ReadIndex goes over Ray calls only",
                         self.member, error)

    async def index_channel(self) -> dict[str, Any] | None:
        """Return the host, port and secret of this member's index channel; None when it has none.

        See `actors/index_channel.py`. Shard stores ask the leader for
        ReadIndex on it. The secret is handed out only over this Ray call.
        """
        return self._index_server.endpoint()

    # --- Read leases of shard stores (see store_leases.py). ---

    async def grant_read_lease(self, store: str, following: str) -> dict[str, Any] | None:
        """Grant `store` a read lease; return its terms, or None when this member cannot grant one now.

        The store counts the returned `duration_s` from when it sent the
        call. None means: not the leader, lease reads or store leases off,
        the leader lease too short, or the fault filter cuts this member off
        from the replica the store follows. The store then reads through ReadIndex.
        """
        settings = self.core.settings
        if not (settings.lease_reads and settings.store_leases) or self._lease_cut_off(following):
            return None
        members = self.core.conf_state
        if following not in (*members.voters, *members.learners) or not await self._is_store(store):
            # Writes wait for every holder, so only a running store of this cluster may hold a lease.
            return None
        if self._advance_clock():
            self._wake.set()
        duration_s = lease_duration_s(self.core.lease_remaining_ticks(), self.tick_s)
        if duration_s < STORE_LEASE_MIN_S:
            return None
        last_index = self.core.last_index()
        if self.store_leases.grant(store, following, time.monotonic(), duration_s, last_index) is None:
            return None
        exposed = self._exposed_index()
        term = self.core.term()
        writes = window_writes(self._entry_writes, exposed, last_index) if term == self._entry_writes_term else []
        return {"leader": self.member, "term": term, "duration_s": duration_s, "index": last_index,
                "exposed": exposed, "writes": writes}

    async def _is_store(self, store: str) -> bool:
        """Return whether a shard store actor named `store` runs in this cluster; a miss is remembered a while."""
        if store in self._store_handles:
            return True
        missed = self._not_stores.get(store)
        if missed is not None and time.monotonic() - missed < NOT_A_STORE_S:
            return False
        try:
            handle = await asyncio.to_thread(ray.get_actor, store_actor_name(store), namespace=self.transport.namespace)
        except ValueError:
            if len(self._not_stores) >= NOT_STORES_KEPT:
                self._not_stores.clear()
            self._not_stores[store] = time.monotonic()
            return False
        self._store_handles[store] = handle
        return True

    def _renew_read_lease(self, store: str, following: str, term: int) -> dict[str, Any] | None:
        """Extend the running lease of `store` from the index channel's thread; None when the loop must grant.

        Runs in that thread, so it reads only what the loop published and
        settings that never change, and changes only the holder's end in the
        locked lease table. It extends a lease of the current `term` up to
        the published end of the leader lease, which already leaves a tick
        and the drift fraction. The store gets the index the leader counts it
        as having confirmed, and the published read point as exposed index.
        """
        settings = self.core.settings
        if not (settings.lease_reads and settings.store_leases) or self._lease_cut_off(following):
            return None
        published_term, lease_ends, read_point = self._index_server.published()
        now = time.monotonic()
        duration_s = lease_ends - now
        if published_term != term or duration_s < STORE_LEASE_MIN_S:
            return None
        acked = self.store_leases.renew(store, following, now, duration_s)
        if acked is None:
            return None
        # The leader counts the store as having every index up to `acked`; a
        # store that missed the grant which set it learns it here.
        return {"leader": self.member, "term": term, "duration_s": duration_s, "index": acked,
                "exposed": read_point, "writes": []}

    def _push_lease_updates(self) -> None:
        """Send each lease holder the last log index and the exposed index it has not been sent yet.

        The last index goes out as soon as an entry is appended, so a holder's
        reply usually arrives while the entry replicates. The exposed index
        goes out as soon as it grows, so holders serve reads from their lease
        again right after a write. Updates to one holder are not serialized:
        a new one leaves while older ones are in flight, and the store keeps
        the maximum of what arrives.
        """
        if not self.store_leases.holders or not self.core.is_leader():
            return
        term = self.core.term()
        last_index = self.core.last_index()
        exposed = self._exposed_index()
        writes = self._entry_writes if term == self._entry_writes_term else {}
        sent = {store: (holder.sent_index, holder.sent_exposed) for store, holder in self.store_leases.holders.items()}
        for store in self.store_leases.take_unsent(last_index, exposed, time.monotonic()):
            holder = self.store_leases.holders[store]
            if self._lease_cut_off(holder.following):
                self.store_leases.resend(store)
                continue
            sent_index, sent_exposed = sent[store]
            new_writes = window_writes(writes, max(sent_index, exposed), last_index)
            # The newly exposed entries go along, so the store need not wait
            # for its stream before it serves reads at the new exposed index.
            entries = self._index_server.entries_between(sent_exposed, exposed, LEASE_UPDATE_ENTRY_BYTES_MAX)
            asyncio.ensure_future(self._send_lease_update(store, term, last_index, exposed, holder.expires,
                                                          new_writes, entries))
        # Every holder has been sent the entries up to the exposed index as exposed.
        self._prune_entry_writes(exposed)

    async def _send_lease_update(self, store: str, term: int, index: int, exposed: int, expires: float,
                                 writes: Sequence[tuple[int, WriteRanges]],
                                 entries: list[tuple[int, str, bytes]]) -> None:
        handle = self._store_handles.get(store)
        try:
            if handle is None:
                handle = self._store_handles[store] = ray.get_actor(store_actor_name(store),
                                                                    namespace=self.transport.namespace)
            timeout = max(self.tick_s, expires - time.monotonic())
            accepted: bool = await asyncio.wait_for(
                handle.lease_update.remote(self.member, term, index, exposed, writes, entries), timeout=timeout)
        except (asyncio.TimeoutError, ValueError, ray.exceptions.RayError) as error:
            if not isinstance(error, asyncio.TimeoutError):
                self._store_handles.pop(store, None)
            self._log_update_failure(store, error)
            if isinstance(error, ValueError):
                # No store has that name any more: none can read under the
                # lease, so writes stop waiting for it.
                self.store_leases.drop(store)
                self._release_held()
                return
            # The lease ends on its own; until then writes wait for this store.
            self.store_leases.resend(store)
            return
        if self.core.term() != term:
            # A reply from an older term confirms nothing about a lease granted in this one.
            return
        if not accepted:
            # The grant has not reached the store yet. The next push, at the
            # latest on the next tick, sends the update again.
            self.store_leases.resend(store)
            return
        self.store_leases.acknowledge(store, index, exposed, time.monotonic())
        self._release_held()
        # Every holder may now have confirmed a committed index: send the new exposed index.
        self._push_lease_updates()

    def _log_update_failure(self, store: str, error: BaseException) -> None:
        """Log a failed lease update, at most once per `UPDATE_FAILURE_LOG_INTERVAL_S` for each store."""
        now = time.monotonic()
        last_logged = self._update_failures_logged.get(store, -UPDATE_FAILURE_LOG_INTERVAL_S)
        if now - last_logged < UPDATE_FAILURE_LOG_INTERVAL_S:
            return
        if len(self._update_failures_logged) >= NOT_STORES_KEPT:
            self._update_failures_logged.clear()
        self._update_failures_logged[store] = now
        logger.info("replica %s: lease update to store %s failed: %s (logged at most every %g s)", self.member,
                    store, type(error).__name__, UPDATE_FAILURE_LOG_INTERVAL_S)

    def _lease_cut_off(self, following: str) -> bool:
        blocked = self.transport.faults.blocked
        return (self.member, following) in blocked or (following, self.member) in blocked

    # --- Chunks of large values. ---

    async def store_chunks(self, digests: list[bytes], refs_box: list[dict[bytes, Any]]) -> int:
        """Copy chunks into this member's chunk store, fsynced; the leader calls it before proposing."""
        return await self.chunks.store_from_refs(digests, refs_box)

    async def read_chunks(self, digests: list[bytes], local_only: bool = False) -> list[Any]:
        """Return ObjectRefs of the chunks, owned by this actor; a bad or missing copy is first repaired from a peer."""
        # NOTE: no token is checked here. Chunks are named by their SHA-256, and
        # only a manifest that the caller was allowed to read names them. Still,
        # a process that calls actors directly with a digest gets the chunk.
        return await self.chunks.read(digests, local_only)

    async def chunk_statistics(self) -> dict[str, int]:
        """Return the chunk store's size and the copy, fetch, repair and collection counters.

        It lists the chunk folder, so it is kept out of `status`, which clients call often.
        """
        return self.chunks.statistics()

    async def history(self, key: bytes, limit: int = 0, token: str | None = None) -> list[HistoryEntry]:
        auth_guard.authorize_read(self.core.state.auth, token, key, None)
        return self.core.state.history(key, limit=limit)

    # --- Access control. ---

    def _authenticate_command(self, command: Command, token: str | None) -> Command:
        """Return `command` with its principal set from `token`, and a fresh secret for auth_enable.

        The permission check here is early rejection only; the state machine
        checks again when it applies the command.
        """
        auth = self.core.state.auth
        if isinstance(command.body, AuthChange) and command.body.action == "auth_enable":
            command = dataclasses.replace(command, body=dataclasses.replace(command.body,
                                                                            secret=os.urandom(SECRET_BYTES)))
        if not auth.enabled:
            return command
        user = auth_guard.authenticated_user(auth, token)
        command = dataclasses.replace(command, principal=user)
        authorize_command(auth, command)
        return command

    async def authenticate(self, user: str, password: str,
                           ttl_s: float = auth_guard.TOKEN_TTL_S_DEFAULT) -> dict[str, Any]:
        """Check a password and return {"token", "expires_ms", "user"}; the token is "" with auth disabled.

        Failed logins are rate-limited per user (see `LoginLimiter`). The
        scrypt check runs in a thread, so the Raft loop keeps ticking.
        """
        auth = self.core.state.auth
        if not auth.enabled:
            return {"token": "", "expires_ms": 0, "user": user}
        self._logins.check(user, time.monotonic())
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, auth_guard.check_login, auth, user,
                                                                     password)
        except RayconfError:
            self._logins.failed(user, time.monotonic())
            logger.warning("replica %s: failed login of user %r", self.member, user)
            raise
        self._logins.succeeded(user)
        return auth_guard.issue_token(auth, found, ttl_s)

    async def issue_token(self, token: str | None, user: str, ttl_s: float) -> dict[str, Any]:
        """Return a token for `user` valid for `ttl_s`, for a service; the caller must be an admin."""
        auth = self.core.state.auth
        if not auth.enabled:
            raise InvalidRequest("auth is disabled, so tokens are not checked; enable auth first")
        require_admin(auth, auth_guard.authenticated_user(auth, token), "issue token")
        found = auth.users.get(user)
        if found is None:
            raise InvalidRequest(f"user {user!r} does not exist; add it with `rayconf user add`")
        logger.info("replica %s issued a token for user %r valid %.0f s", self.member, user, ttl_s)
        return auth_guard.issue_token(auth, found, ttl_s)

    async def auth_info(self, token: str | None = None) -> dict[str, Any]:
        """Return users, roles and permissions (no hashes, salts or secret); an admin's call when auth is on."""
        auth = self.core.state.auth
        require_admin(auth, auth_guard.authenticated_user(auth, token), "user and role listing")
        return auth.describe()

    async def take_snapshot(self) -> int:
        return self.core.take_snapshot()

    async def status(self) -> dict[str, Any]:
        status = self.core.status()
        status["uptime_s"] = round(time.monotonic() - self._started, 1)
        status["leader_age_ms"] = self.leader_age_ms()
        status["pending_proposals"] = len(self._proposals)
        status["pending_reads"] = len(self._reads)
        status["held_results"] = len(self._held_results)
        status["exposed_index"] = self._exposed_index()
        status["store_leases"] = self.store_leases.describe(time.monotonic())
        status["store_leases_granted"] = self.store_leases.granted
        status["transport"] = self.transport.statistics()
        server = self._index_server
        status["index_channel"] = f"{server.host}:{server.port}" if server.port else ""
        status["index_channel_answers"] = server.counters["answers"]
        status["index_channel_refusals"] = server.counters["refusals"]
        status["index_channel_lease_requests"] = server.counters["lease_requests"]
        status["store_lease_stall_rejections"] = self.store_leases.stall_rejections
        status["pid"] = os.getpid()
        # The nice value of the thread that runs Raft (actors/priority.py).
        status["nice"] = current_nice()
        # Peak resident memory of this process, in KiB on Linux.
        status["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        status["auth_enabled"] = self.core.state.auth.enabled
        status["auth_revision"] = self.core.state.auth.revision
        status.update(self._logins.statistics())
        return status

    async def set_faults(self, blocked: list[tuple[NodeId, NodeId]], drop_probability: float = 0.0,
                         delay_ms: int = 0, seed: int = 0) -> None:
        """Set the fault filter on this member's outgoing messages; empty arguments clear it."""
        self.transport.set_faults(set(map(tuple, blocked)), drop_probability, delay_ms, seed)  # type: ignore[arg-type]

    async def set_fsync_delay(self, delay_ms: int) -> None:
        """Make every log fsync of this member take `delay_ms` longer (0 clears it), to mimic a slow disk."""
        if delay_ms < 0:
            raise InvalidRequest(f"fsync delay {delay_ms} ms is negative; give 0 or more milliseconds")
        self.core.storage.fsync_delay_ms = delay_ms

    async def state_hash(self, revision: int) -> tuple[int, int]:
        """Return (applied revision, hash of every version at or below `revision`) for divergence checks."""
        return self.core.state.revision, self.core.state.hash_kv(revision)

    async def ping(self) -> str:
        return self.member
