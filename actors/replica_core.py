"""The replica without Ray: a Raft node, its durable log and its MVCC state.

`ReplicaCore` is what a replica actor runs. It is synchronous and single
threaded, takes time as ticks and messages as calls, and hands back what must
go on the network, so the actor, the tests and the simulator drive the same
code. One `process_ready` call runs the whole Ready contract of the Raft core:

1. persist the snapshot, entries and hard state, with one fsync;
2. return the messages, which the caller may send only now;
3. apply committed entries to the MVCC state, in log order;
4. advance the Raft node.

Each committed NORMAL entry carries one encoded `Command`. The result of
applying it is kept under the command's request id until the proposer collects
it with `take_result`. A proposal can be lost when leadership changes, so
proposers time out and retry with the same request id, and the MVCC state
applies a command at most once.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from rayconf.actors.durable_storage import DurableStorage
from rayconf.actors.raft.config import Config
from rayconf.actors.raft.rawnode import RawNode
from rayconf.actors.raft.read_only import LEASE_BASED, SAFE
from rayconf.actors.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    NodeId,
    ReadState,
    StateType,
)
from rayconf.errors import InvalidRequest, RayconfError
from rayconf.store import snapshot as mvcc_snapshot
from rayconf.store.codec import decode_command, encode_command
from rayconf.store.limits import Limits
from rayconf.store.manifest import manifest_digests
from rayconf.store.mvcc import MVCC, ApplyResult
from rayconf.store.records import Command, Compact, Put, Txn

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """Raft and snapshot settings of one replica. Times are in ticks."""

    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    # Take a snapshot after this many entries applied since the last one.
    snapshot_interval_entries: int = 10_000
    # Entries kept in the log below a new snapshot, so slow followers catch up
    # from the log instead of needing the whole snapshot.
    compaction_margin_entries: int = 1_000
    # Results kept for proposers that have not collected them yet, oldest dropped first.
    results_kept_max: int = 100_000
    pre_vote: bool = True
    check_quorum: bool = True
    # Serve ReadIndex from the leader's lease, without a heartbeat round per
    # batch of reads. It relies on the members' clocks running at about the
    # same rate (see the Raft core's lease_drift_margin_ticks). The replica
    # actor ticks by the monotonic clock, so a paused process does not stretch
    # the lease. False confirms every batch with a heartbeat round.
    lease_reads: bool = True
    # Grant shard stores read leases, so they serve linearizable reads without
    # asking the leader (see store_leases.py). Needs lease_reads.
    store_leases: bool = True
    max_inflight_msgs: int = 256
    max_size_per_msg_bytes: int = 1024 * 1024
    # Chunk files that no retained revision names are kept this long, because
    # a put copies its chunks to the voters before its manifest commits.
    chunk_orphan_grace_s: float = 600.0
    # Nice value of the threads that copy, hash, fsync and serve chunks, so
    # that large puts yield the cores to small reads and to Raft (see
    # actors/priority.py).
    chunk_io_nice: int = 10


@dataclass(slots=True)
class ReadyOutcome:
    """Output of one `process_ready` call for the caller."""

    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    applied_index: int = 0
    leader_changed: bool = False
    # The committed entries this round applied, in log order.
    committed_entries: list[Entry] = field(default_factory=list)


class ReplicaCore:
    """One member's Raft node, durable log and state machine."""

    def __init__(
        self,
        node_id: NodeId,
        directory: str | Path,
        *,
        voters: tuple[NodeId, ...] = (),
        learners: tuple[NodeId, ...] = (),
        settings: ReplicaSettings | None = None,
        seed: int | None = None,
        limits: Limits | None = None,
    ) -> None:
        """Open or create the member's data directory and start its Raft node.

        `voters` and `learners` are the founding membership. They are written to
        the log only when the directory is new. A member that joins an existing
        cluster passes neither, and starts empty until the leader contacts it.
        """
        self.node_id = node_id
        self.settings = settings or ReplicaSettings()
        self.storage, recovered = DurableStorage.open(directory)
        self.state = self.storage.load_state()
        if limits is not None:
            self.state.limits = limits
        fresh = recovered.snapshot_directory is None and self.storage.last_index() == 0
        if fresh and voters:
            self.storage.bootstrap(voters, learners)
        self.conf_state: ConfState = recovered.snapshot_metadata.conf_state
        self.node = RawNode(self._config(seed), self.storage)
        self.leader: NodeId = ""
        self.role = StateType.FOLLOWER
        self._results: OrderedDict[str, ApplyResult] = OrderedDict()
        self._applied_since_snapshot = 0
        # Chunk bookkeeping for the actor, which owns the chunk store: digests
        # named by manifests applied since it last looked, and whether a
        # compaction or snapshot restore since then calls for a full scan.
        self.applied_chunk_digests: list[bytes] = []
        self.chunk_scan_due = True
        logger.info(
            "replica %s started at applied index %d, revision %d, log %d..%d",
            node_id, self.state.applied_index, self.state.revision,
            self.storage.first_index(), self.storage.last_index(),
        )

    def _config(self, seed: int | None) -> Config:
        settings = self.settings
        return Config(
            node_id=self.node_id,
            election_timeout_ticks=settings.election_timeout_ticks,
            heartbeat_interval_ticks=settings.heartbeat_interval_ticks,
            applied=self.state.applied_index,
            pre_vote=settings.pre_vote,
            check_quorum=settings.check_quorum,
            max_inflight_msgs=settings.max_inflight_msgs,
            max_size_per_msg_bytes=settings.max_size_per_msg_bytes,
            read_only_option=LEASE_BASED if settings.lease_reads else SAFE,
            rng=random.Random(seed),
        )

    # --- Input. ---

    def tick(self) -> None:
        self.node.tick()

    def step(self, message: Message) -> None:
        try:
            self.node.step(message)
        except RayconfError as error:
            logger.warning("replica %s dropped %s from %s: %s",
                           self.node_id, message.type.value, message.from_, error)

    def propose(self, command: Command) -> None:
        """Propose `command`; raises `ProposalDropped` when this node cannot take it now.

        The command needs a request id, under which `take_result` returns its result.
        """
        if not command.request_id:
            raise InvalidRequest("a proposed command needs a request_id to collect its result")
        self.node.propose(encode_command(command))

    def read_index(self, context: bytes) -> None:
        self.node.read_index(context)

    def lease_read_index(self) -> int | None:
        return self.node.lease_read_index()

    def lease_remaining_ticks(self) -> int:
        return self.node.lease_remaining_ticks()

    def commit_index(self) -> int:
        return self.node.raft.log.committed

    def applied_entry_in_current_term(self) -> bool:
        """Return whether the applied index is at or past the first entry of the current term.

        Terms never fall along the log, so every entry of an earlier term is then applied.
        """
        raft = self.node.raft
        return raft.log.term_or_zero(self.state.applied_index) == raft.term

    def last_index(self) -> int:
        return self.node.raft.log.last_index()

    def term(self) -> int:
        return self.node.raft.term

    def take_result(self, request_id: str) -> ApplyResult | None:
        """Return and forget the result of an applied command, or None if not applied yet here."""
        return self._results.pop(request_id, None)

    # --- The Ready loop. ---

    def process_ready(self) -> ReadyOutcome:
        """Run the Ready contract once; return messages to send and reads that are ready."""
        outcome = ReadyOutcome(applied_index=self.state.applied_index)
        if not self.node.has_ready():
            return outcome
        ready = self.node.ready()
        self.storage.persist(ready)
        outcome.messages = list(ready.messages)
        if ready.soft_state is not None:
            outcome.leader_changed = ready.soft_state.lead != self.leader
            if outcome.leader_changed:
                logger.info("replica %s sees leader %r (role %s)", self.node_id,
                            ready.soft_state.lead, ready.soft_state.state.value)
            self.leader = ready.soft_state.lead
            self.role = ready.soft_state.state
        if ready.snapshot is not None and not ready.snapshot.is_empty():
            self._restore(ready.snapshot.metadata.index, ready.snapshot.metadata.conf_state)
        for entry in ready.committed_entries:
            self._apply(entry)
        outcome.committed_entries = list(ready.committed_entries)
        outcome.read_states = list(ready.read_states)
        self.node.advance(ready)
        self._maybe_snapshot()
        outcome.applied_index = self.state.applied_index
        return outcome

    def _restore(self, index: int, conf_state: ConfState) -> None:
        directory = self.storage.directory / "snapshots" / mvcc_snapshot.snapshot_name(index)
        self.state = mvcc_snapshot.load(directory, self.state.limits)
        self.conf_state = conf_state
        self._applied_since_snapshot = 0
        self.chunk_scan_due = True
        logger.info("replica %s restored snapshot at index %d, revision %d",
                    self.node_id, index, self.state.revision)

    def _apply(self, entry: Entry) -> None:
        if entry.index <= self.state.applied_index:
            return
        if entry.type is EntryType.CONF_CHANGE:
            change = ConfChange.decode(entry.data)
            try:
                self.conf_state = self.node.apply_conf_change(change)
            except RayconfError as error:
                logger.warning("replica %s skipped conf change at %d: %s", self.node_id, entry.index, error)
            self.state.apply(entry.index, [])
        elif not entry.data:
            self.state.apply(entry.index, [])
        else:
            try:
                command = decode_command(entry.data)
            except InvalidRequest as error:
                # Every replica decodes the same bytes the same way, so all skip it.
                logger.error("replica %s skipped undecodable entry %d: %s", self.node_id, entry.index, error)
                self.state.apply(entry.index, [])
            else:
                result = self.state.apply(entry.index, [command])[0]
                self._remember(command.request_id, result)
                self._note_chunks(command)
        self._applied_since_snapshot += 1

    def unapplied_chunk_digests(self) -> set[bytes]:
        """Return the chunk digests that manifests in this member's log after the applied index name.

        Garbage collection must keep these chunks too: after a restart the
        state comes from a snapshot and the newer entries are applied again,
        so the state alone would not name chunks that those entries need.
        """
        low = self.state.applied_index + 1
        high = self.storage.last_index() + 1
        if low >= high:
            return set()
        digests: set[bytes] = set()
        for entry in self.storage.entries(low, high, 2**62):
            if entry.type is not EntryType.NORMAL or not entry.data:
                continue
            try:
                command = decode_command(entry.data)
            except InvalidRequest:
                continue
            if isinstance(command.body, Txn):
                values = [operation.value for branch in (command.body.success, command.body.failure)
                          for operation in branch if isinstance(operation, Put)]
                digests.update(manifest_digests(values))
        return digests

    def _note_chunks(self, command: Command) -> None:
        if isinstance(command.body, Compact):
            self.chunk_scan_due = True
        elif isinstance(command.body, Txn):
            values = [operation.value for branch in (command.body.success, command.body.failure)
                      for operation in branch if isinstance(operation, Put)]
            self.applied_chunk_digests.extend(manifest_digests(values))

    def _remember(self, request_id: str, result: ApplyResult) -> None:
        if not request_id:
            return
        self._results[request_id] = result
        while len(self._results) > self.settings.results_kept_max:
            self._results.popitem(last=False)

    def _maybe_snapshot(self) -> None:
        if self._applied_since_snapshot < self.settings.snapshot_interval_entries:
            return
        self.take_snapshot()

    def take_snapshot(self) -> int:
        """Snapshot the state at its applied index, compact the log below it; return the index."""
        index = self.state.applied_index
        if index <= self.storage.memory.snapshot().metadata.index:
            return index
        self.storage.create_snapshot(self.state, self.conf_state)
        compact_to = index - self.settings.compaction_margin_entries
        if compact_to >= self.storage.first_index():
            self.storage.compact(compact_to)
        self._applied_since_snapshot = 0
        return index

    # --- Introspection. ---

    def is_leader(self) -> bool:
        return self.role is StateType.LEADER

    def status(self) -> dict[str, object]:
        raft_status = self.node.status()
        return {
            "member": self.node_id,
            "role": self.role.value,
            "leader": self.leader,
            "term": raft_status.hard_state.term,
            "commit_index": raft_status.hard_state.commit,
            "applied_index": self.state.applied_index,
            "revision": self.state.revision,
            "compact_revision": self.state.compact_revision,
            "voters": list(self.conf_state.voters),
            "learners": list(self.conf_state.learners),
            **{f"log_{key}": value for key, value in self.storage.statistics().items()},
        }

    def close(self) -> None:
        self.storage.close()
