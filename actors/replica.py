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
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import ray

from rayconf.actors.raft.types import Message, MessageType, NodeId
from rayconf.actors.replica_core import ReplicaCore, ReplicaSettings
from rayconf.actors.transport import Transport
from rayconf.errors import InvalidRequest, NotLeader, RayconfError, Unavailable
from rayconf.store.mvcc import ApplyResult
from rayconf.store.validation import check_command
from rayconf.store.records import Command, HistoryEntry, RangeRequest, RangeResponse

logger = logging.getLogger(__name__)

# Messages that only a leader sends; their arrival means the leader is reachable.
LEADER_MESSAGE_TYPES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
# Ready rounds per wake-up before the loop yields to pending calls.
READY_ROUNDS_MAX = 64
# Proposals and reads waiting at once; beyond it new ones are rejected as Unavailable.
PENDING_REQUESTS_MAX = 10_000
# Bytes of entries per committed-stream reply (at least one entry is sent).
STREAM_BYTES_MAX = 4 * 1024 * 1024


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
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.member = member
        self.tick_s = tick_ms / 1000
        directory = Path(data_directory) / member
        self.core = ReplicaCore(member, directory, voters=voters, learners=learners, settings=settings,
                                seed=int.from_bytes(os.urandom(8), "big"))
        self.transport = Transport(member, namespace)
        self._proposals: dict[str, asyncio.Future[ApplyResult]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._started = time.monotonic()
        # When a leader's append, heartbeat or snapshot last arrived; 0 for never.
        self._leader_contact = 0.0
        self._loop_task = asyncio.get_event_loop().create_task(self._run())
        logger.info("replica actor %s up, data in %s", member, directory)

    # --- The loop. ---

    async def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_s
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            while now >= next_tick:
                self.core.tick()
                next_tick += self.tick_s
            try:
                self._drain()
            except RayconfError:
                logger.exception("replica %s failed to process a Ready", self.member)
                raise

    def _drain(self) -> None:
        for _ in range(READY_ROUNDS_MAX):
            if not self.core.node.has_ready():
                break
            outcome = self.core.process_ready()
            self.transport.send(outcome.messages)
            for read_state in outcome.read_states:
                future = self._reads.pop(read_state.request_context, None)
                if future is not None and not future.done():
                    future.set_result(read_state.index)
            self._resolve_proposals()
            if outcome.leader_changed:
                self._fail_reads("the leader changed while the read was waiting")
        self.transport.flush()
        self._resolve_applied()

    def _resolve_proposals(self) -> None:
        for request_id in list(self._proposals):
            result = self.core.take_result(request_id)
            if result is not None:
                future = self._proposals.pop(request_id)
                if not future.done():
                    future.set_result(result)

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
        self._wake.set()

    def leader_age_ms(self) -> int:
        """Return the time since this member last heard from a leader; 0 on the leader itself."""
        if self.core.is_leader():
            return 0
        if not self._leader_contact:
            return 2**31
        return int((time.monotonic() - self._leader_contact) * 1000)

    # --- Calls from clients. ---

    async def propose(self, command: Command, timeout_s: float = 5.0) -> ApplyResult:
        """Replicate `command` and return its result once applied here on the leader.

        Raises `NotLeader` when this member is not the leader, and `Unavailable`
        when the command was not applied within `timeout_s`. In that case it
        may still apply later, so retry with the same request id.
        """
        # A bad command is rejected here, before it costs a log entry on every member.
        check_command(command, self.core.state.limits)
        if not self.core.is_leader():
            raise NotLeader(f"{self.member} is not the leader; the leader is {self.core.leader or 'unknown'}",
                            leader_hint=self.core.leader or None)
        if len(self._proposals) >= PENDING_REQUESTS_MAX:
            raise Unavailable(f"{self.member} has {len(self._proposals)} proposals waiting; retry later")
        future = self._proposals.get(command.request_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._proposals[command.request_id] = future
            self.core.propose(command)
            self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(
                f"request {command.request_id} was not applied within {timeout_s} s on {self.member}; "
                "its outcome is unknown, retry with the same request id"
            ) from None

    async def read(self, request: RangeRequest, consistency: str = "linearizable",
                   timeout_s: float = 5.0) -> RangeResponse:
        """Serve a range at the given consistency ("linearizable" or "serializable")."""
        if consistency == "linearizable":
            await self._confirm_read_index(timeout_s)
        elif consistency != "serializable":
            raise InvalidRequest(f"consistency {consistency!r} is unknown; use 'linearizable' or 'serializable'")
        return self.core.state.range(request)

    async def read_index(self, timeout_s: float = 5.0) -> int:
        """Return a log index that a linearizable read must wait for, confirmed by a quorum.

        Shard stores call this, then serve the read once they have applied the index.
        """
        return await self._read_index(timeout_s)

    async def committed_since(self, after_index: int, entries_max: int, wait_s: float) -> dict[str, Any]:
        """Return applied entries after `after_index`, waiting up to `wait_s` for new ones.

        Returns {"snapshot": packed bytes, "entries": []} when the entries after
        `after_index` are already compacted, so the caller must load the snapshot.
        """
        storage = self.core.storage
        if after_index + 1 < storage.first_index():
            return {"snapshot": storage.snapshot().data, "entries": [], "leader_age_ms": self.leader_age_ms()}
        if self.core.state.applied_index <= after_index:
            try:
                await asyncio.wait_for(self._wait_applied(after_index + 1), timeout=wait_s)
            except asyncio.TimeoutError:
                return {"snapshot": None, "entries": [], "leader_age_ms": self.leader_age_ms()}
            if after_index + 1 < storage.first_index():
                return {"snapshot": storage.snapshot().data, "entries": [], "leader_age_ms": self.leader_age_ms()}
        high = min(self.core.state.applied_index, after_index + entries_max) + 1
        entries = storage.entries(after_index + 1, high, STREAM_BYTES_MAX)
        return {"snapshot": None, "entries": [(entry.index, entry.type.value, entry.data) for entry in entries],
                "leader_age_ms": self.leader_age_ms()}

    async def _confirm_read_index(self, timeout_s: float) -> None:
        index = await self._read_index(timeout_s)
        try:
            await asyncio.wait_for(self._wait_applied(index), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.member} did not apply index {index} within {timeout_s} s") from None

    async def _read_index(self, timeout_s: float) -> int:
        if len(self._reads) >= PENDING_REQUESTS_MAX:
            raise Unavailable(f"{self.member} has {len(self._reads)} reads waiting; retry later")
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
            return await asyncio.wait_for(future, timeout=timeout_s)
        except asyncio.TimeoutError:
            self._reads.pop(context, None)
            raise Unavailable(f"linearizable read on {self.member} timed out after {timeout_s} s; "
                              "no quorum confirmed the leader") from None

    async def _wait_applied(self, index: int) -> None:
        if self.core.state.applied_index >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, future))
        await future

    async def history(self, key: bytes, limit: int = 0) -> list[HistoryEntry]:
        return self.core.state.history(key, limit=limit)

    async def take_snapshot(self) -> int:
        return self.core.take_snapshot()

    async def status(self) -> dict[str, Any]:
        status = self.core.status()
        status["uptime_s"] = round(time.monotonic() - self._started, 1)
        status["leader_age_ms"] = self.leader_age_ms()
        status["pending_proposals"] = len(self._proposals)
        status["pending_reads"] = len(self._reads)
        status["transport"] = self.transport.statistics()
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
