"""One simulated replica: a Raft `RawNode`, an MVCC state machine and a `SimDisk`.

The node handles each `Ready` in the documented order. It writes the snapshot,
entries and hard state to its disk and syncs when `must_sync` is set. Then it
hands the messages to the network, applies the snapshot and the committed entries
to its MVCC state, and calls `advance`.

A crash drops the RawNode and the MVCC state. A restart rebuilds both from the
durable part of the disk. The MVCC state comes from the latest snapshot, and
then from the committed entries after it, which the RawNode hands out again
because its `applied` starts at the snapshot's index.

The node also serves clients. A write is proposed and answered when this node
applies the entry that carries its request id. A read asks for a ReadIndex and is
answered from the local state once that index is applied. MVCC snapshots travel
inside Raft snapshots as the bytes of `rayconf.store.snapshot.pack`.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rayconf.actors.raft import (
    ConfChange,
    ConfChangeRejected,
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    NodeId,
    ProposalDropped,
    RawNode,
    Snapshot,
    StateType,
)
from rayconf.errors import RayconfError
from rayconf.sims.disk import AppendEntries, ApplySnapshot, Compact, CreateSnapshot, SetHardState, SimDisk
from rayconf.sims.invariants import SafetyChecker
from rayconf.store import snapshot as store_snapshot
from rayconf.store.codec import decode_command, encode_command
from rayconf.store.mvcc import MVCC
from rayconf.store.records import Command, CompactResponse, RangeRequest, RangeResponse, TxnResponse

logger = logging.getLogger(__name__)

# Test-only faults planted in the node to show that the checkers catch them.
BUG_DOUBLE_APPLY = "double_apply"  # the first node applies every put twice
BUG_STALE_READ = "stale_read"  # every node serves reads without ReadIndex
INJECTED_BUGS = (BUG_DOUBLE_APPLY, BUG_STALE_READ)


@dataclass(frozen=True, slots=True)
class AttemptTag:
    """Names one attempt of one client operation; a reply carries it back."""

    client_id: int
    op_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A node's response to one attempt.

    `dropped` means the request was not proposed or read (no leader known, leader
    transfer in progress), so this attempt certainly had no effect.
    """

    tag: AttemptTag
    dropped: bool
    result: TxnResponse | RangeResponse | RayconfError | None = None


@dataclass(frozen=True, slots=True)
class NodeSettings:
    election_timeout_ticks: int
    heartbeat_interval_ticks: int
    # Take `hash_kv` after every n-th applied index; 1 hashes after every index.
    hash_interval_entries: int
    injected_bug: str | None
    read_only_option: str
    # Flow control of the Raft core; small values split appends and Readies.
    max_size_per_msg_bytes: int
    max_inflight_msgs: int
    max_committed_size_per_ready_bytes: int


@dataclass(slots=True)
class _PendingRead:
    tag: AttemptTag
    request: RangeRequest
    # The ReadIndex, known once the leader confirmed it; -1 until then.
    read_index: int = -1


SendMessages = Callable[[tuple[Message, ...]], None]
SendReply = Callable[[Reply], None]


class SimNode:
    """A replica in the simulation. `raw` is None while the node is down."""

    def __init__(
        self,
        node_id: NodeId,
        disk: SimDisk,
        settings: NodeSettings,
        checker: SafetyChecker,
        send_messages: SendMessages,
        send_reply: SendReply,
        scratch_directory: Path,
        counters: Counter[str],
    ) -> None:
        self.node_id = node_id
        self.disk = disk
        self.settings = settings
        self.checker = checker
        self.send_messages = send_messages
        self.send_reply = send_reply
        self.scratch_directory = scratch_directory
        # Shared by every node of the simulation: snapshots, restarts, conf changes.
        self.counters = counters
        self.raw: RawNode | None = None
        self.mvcc = MVCC()
        self.conf_state = ConfState()
        self.term = 0
        self.role = StateType.FOLLOWER
        self.lead: NodeId = ""
        # Bumped on every start, so that events of an earlier life are ignored.
        self.incarnation = 0
        self.pending_writes: dict[str, AttemptTag] = {}
        self.pending_reads: dict[bytes, _PendingRead] = {}
        self.confirmed_reads: list[_PendingRead] = []
        self._read_sequence = 0
        self._hashed_revision = -1
        self._last_hash = 0

    # --- Life cycle ---

    @property
    def is_up(self) -> bool:
        return self.raw is not None

    @property
    def applied_index(self) -> int:
        return self.mvcc.applied_index

    def start(self, rng: random.Random) -> None:
        """Start from the durable part of the disk, with `rng` for election timeouts."""
        assert self.raw is None, f"{self.node_id} is already running"
        storage = self.disk.recover()
        snapshot = storage.snapshot()
        if snapshot.is_empty():
            self.mvcc = MVCC()
            self.conf_state = ConfState()
        else:
            self._restore_state(snapshot)
        config = Config(
            node_id=self.node_id,
            election_timeout_ticks=self.settings.election_timeout_ticks,
            heartbeat_interval_ticks=self.settings.heartbeat_interval_ticks,
            max_size_per_msg_bytes=self.settings.max_size_per_msg_bytes,
            max_inflight_msgs=self.settings.max_inflight_msgs,
            max_committed_size_per_ready_bytes=self.settings.max_committed_size_per_ready_bytes,
            read_only_option=self.settings.read_only_option,
            applied=snapshot.metadata.index,
            rng=rng,
        )
        self.raw = RawNode(config, storage)
        self.term = storage.initial_state()[0].term
        self.role = StateType.FOLLOWER
        self.lead = ""
        self.incarnation += 1
        self.counters["node_starts"] += 1
        self.checker.node_started(self.node_id, snapshot.metadata.index)
        logger.info("%s started at applied index %d, term %d", self.node_id, self.applied_index, self.term)

    def crash(self, rng: random.Random) -> int:
        """Stop the node; return how many unsynced disk writes the crash lost."""
        assert self.raw is not None, f"{self.node_id} is already down"
        self.raw = None
        self.role = StateType.FOLLOWER
        self.lead = ""
        self.pending_writes.clear()
        self.pending_reads.clear()
        self.confirmed_reads.clear()
        lost = self.disk.crash(rng)
        logger.info("%s crashed, losing %d unsynced writes", self.node_id, lost)
        return lost

    # --- Ready handling ---

    def process_readies(self) -> int:
        """Handle Readies until none is left; return how many were handled."""
        handled = 0
        raw = self.raw
        while raw is not None and raw.has_ready():
            self._handle_ready(raw)
            handled += 1
            raw = self.raw
        return handled

    def _handle_ready(self, raw: RawNode) -> None:
        # NOTE: a Ready is handled in one event, so a crash never falls between its
        # sync and its send. The network's message loss covers that case.
        ready = raw.ready()
        disk = self.disk
        # 1. Persist, and sync before any message that depends on it goes out.
        if ready.snapshot is not None:
            disk.write(ApplySnapshot(ready.snapshot))
        if ready.entries:
            disk.write(AppendEntries(ready.entries))
        if ready.hard_state is not None:
            disk.write(SetHardState(ready.hard_state))
            self.term = ready.hard_state.term
        if ready.must_sync:
            disk.sync()

        if ready.entries:
            self.checker.entries_persisted(self.node_id, ready.entries, disk.live)
        if ready.soft_state is not None:
            became_leader = ready.soft_state.state is StateType.LEADER and self.role is not StateType.LEADER
            self.role = ready.soft_state.state
            self.lead = ready.soft_state.lead
            if became_leader:
                logger.info("%s became leader of term %d", self.node_id, self.term)
                self.checker.leader_elected(self.node_id, self.term, disk.live)

        # 2. Send.
        if ready.messages:
            self.send_messages(ready.messages)

        # 3. Apply.
        conf_changed = False
        if ready.snapshot is not None:
            self._install_snapshot(ready.snapshot)
        for entry in ready.committed_entries:
            conf_changed |= self._apply_entry(raw, entry)
        for read_state in ready.read_states:
            pending = self.pending_reads.pop(read_state.request_context, None)
            if pending is not None:
                pending.read_index = read_state.index
                self.confirmed_reads.append(pending)
        self._serve_confirmed_reads()

        # 4. Advance.
        raw.advance(ready)
        if conf_changed and disk.live.snapshot().metadata.index > 0:
            # The leader sends its latest snapshot to members whose entries are
            # compacted, and a node ignores a snapshot that does not list it, so
            # a snapshot must follow every membership change once there is one.
            self._write_snapshot(compact_keep_entries=None)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        self._restore_state(snapshot)
        self.counters["snapshots_installed"] += 1
        self.checker.node_started(self.node_id, snapshot.metadata.index)
        self._record_hash(snapshot.metadata.index, force=True)
        logger.info("%s installed snapshot at index %d", self.node_id, snapshot.metadata.index)

    def _restore_state(self, snapshot: Snapshot) -> None:
        directory = self.scratch_directory / f"{self.node_id}-restore"
        try:
            self.mvcc = store_snapshot.load(store_snapshot.unpack(snapshot.data, directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        assert self.mvcc.applied_index == snapshot.metadata.index, (
            f"snapshot at index {snapshot.metadata.index} holds state applied to {self.mvcc.applied_index}"
        )
        self.conf_state = snapshot.metadata.conf_state
        self._hashed_revision = -1

    def _apply_entry(self, raw: RawNode, entry: Entry) -> bool:
        """Apply one committed entry; return whether it was a membership change."""
        is_conf_change = entry.type is EntryType.CONF_CHANGE
        if is_conf_change:
            try:
                self.conf_state = raw.apply_conf_change(ConfChange.decode(entry.data))
                self.counters["conf_changes_applied"] += 1
            except ConfChangeRejected as error:
                logger.info("%s skips conf change at %d: %s", self.node_id, entry.index, error)
            self.mvcc.apply(entry.index, [])
        elif entry.data:
            self._apply_command(entry.index, decode_command(entry.data))
        else:
            self.mvcc.apply(entry.index, [])
        self.checker.entry_applied(self.node_id, entry)
        if entry.index % self.settings.hash_interval_entries == 0:
            self._record_hash(entry.index, force=False)
        return is_conf_change

    def _apply_command(self, index: int, command: Command) -> None:
        commands = [command]
        if self.settings.injected_bug == BUG_DOUBLE_APPLY and self.node_id.endswith("1"):
            # Planted bug: a second copy without its request id escapes deduplication.
            commands.append(replace(command, request_id=""))
        result = self.mvcc.apply(index, commands)[0]
        tag = self.pending_writes.pop(command.request_id, None)
        if tag is not None:
            assert not isinstance(result, CompactResponse), "simulated clients never compact"
            self.send_reply(Reply(tag, dropped=False, result=result))

    def _record_hash(self, index: int, *, force: bool) -> None:
        # hash_kv only changes with the revision, so an unchanged revision reuses it.
        if force or self.mvcc.revision != self._hashed_revision:
            self._last_hash = self.mvcc.hash_kv()
            self._hashed_revision = self.mvcc.revision
        self.checker.state_hashed(self.node_id, index, self._last_hash)

    def _serve_confirmed_reads(self) -> None:
        if not self.confirmed_reads:
            return
        waiting = []
        for pending in self.confirmed_reads:
            if pending.read_index <= self.applied_index:
                self._serve_read(pending.tag, pending.request)
            else:
                waiting.append(pending)
        self.confirmed_reads = waiting

    def _serve_read(self, tag: AttemptTag, request: RangeRequest) -> None:
        self.send_reply(Reply(tag, dropped=False, result=self.mvcc.range(request)))

    # --- Snapshots and compaction ---

    def _pack_state(self) -> bytes:
        directory = self.scratch_directory / f"{self.node_id}-save"
        try:
            return store_snapshot.pack(store_snapshot.save(self.mvcc, directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _write_snapshot(self, compact_keep_entries: int | None) -> bool:
        """Snapshot the MVCC state at the applied index and sync it; with
        `compact_keep_entries`, also drop the log before the last that many
        entries. Return False when the stored snapshot is already that new."""
        storage = self.disk.live
        index = self.applied_index
        if index <= storage.snapshot().metadata.index:
            return False
        self.disk.write(CreateSnapshot(index, self.conf_state, self._pack_state()))
        self.counters["snapshots_taken"] += 1
        if compact_keep_entries is not None:
            compact_index = index - compact_keep_entries
            if compact_index >= storage.first_index():
                self.disk.write(Compact(compact_index))
        # Synced at once: a restart needs a hard state whose commit is at least
        # the snapshot's index, and that hard state is among the earlier writes.
        self.disk.sync()
        return True

    def compact(self, keep_entries: int) -> bool:
        """Snapshot the state machine and compact the log; return whether it did."""
        assert self.raw is not None, f"{self.node_id} is down"
        done = self._write_snapshot(compact_keep_entries=keep_entries)
        if done:
            logger.info("%s compacted its log at applied index %d", self.node_id, self.applied_index)
        return done

    # --- Client requests ---

    def submit_write(self, tag: AttemptTag, command: Command) -> None:
        assert self.raw is not None, f"{self.node_id} is down"
        try:
            self.raw.propose(encode_command(command))
        except ProposalDropped as error:
            logger.debug("%s drops write %s: %s", self.node_id, command.request_id, error)
            self.send_reply(Reply(tag, dropped=True))
            return
        self.pending_writes[command.request_id] = tag

    def submit_read(self, tag: AttemptTag, request: RangeRequest) -> None:
        assert self.raw is not None, f"{self.node_id} is down"
        if self.settings.injected_bug == BUG_STALE_READ:
            # Planted bug: serve from local state, which may be behind the leader.
            self._serve_read(tag, request)
            return
        self._read_sequence += 1
        context = f"{self.node_id}/{self.incarnation}/{self._read_sequence}".encode()
        try:
            self.raw.read_index(context)
        except ProposalDropped as error:
            logger.debug("%s drops read of %r: %s", self.node_id, request.key, error)
            self.send_reply(Reply(tag, dropped=True))
            return
        self.pending_reads[context] = _PendingRead(tag, request)
