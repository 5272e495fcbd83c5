"""`RawNode`, the caller's handle on one Raft node.

The caller owns the clock, the storage, the transport and the state machine. A
driver loop looks like this::

    node.tick()                      # every tick interval
    node.step(message)               # for each message from the transport
    if node.has_ready():
        ready = node.ready()
        persist(ready)               # snapshot, entries, hard state; sync if must_sync
        send(ready.messages)
        apply(ready)                 # snapshot, committed entries, conf changes
        node.advance(ready)

See `Ready` for the exact order and why it matters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from rayconf.actors.raft import read_index
from rayconf.actors.raft.config import Config
from rayconf.actors.raft.errors import (
    ProposalDropped,
    ReadyNotAdvanced,
    StepLocalMessage,
    StepPeerNotFound,
)
from rayconf.actors.raft.progress import ProgressState
from rayconf.actors.raft.raft import Raft
from rayconf.actors.raft.storage import Storage
from rayconf.actors.raft.types import (
    LOCAL_MESSAGE_TYPES,
    RESPONSE_MESSAGE_TYPES,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    Ready,
    SoftState,
    StateType,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool
    recent_active: bool
    inflight_msgs: int


@dataclass(frozen=True, slots=True)
class Status:
    """A copy of a node's state for debugging and monitoring. `progress` is empty
    unless the node is leader."""

    id: NodeId
    hard_state: HardState
    soft_state: SoftState
    applied: int
    last_index: int
    conf_state: ConfState
    lead_transferee: NodeId
    progress: dict[NodeId, ProgressStatus] = field(default_factory=dict)


class RawNode:
    """A Raft node driven by the caller: no threads, no clock, no I/O.

    `propose`, `propose_conf_change`, `read_index` and `transfer_leader` only start
    work. Proposals show up as committed entries, and reads as `ReadState`s, in later
    Readies. A proposal can still be lost after it was accepted, for example when
    its leader is deposed, so callers match committed entries to proposals and
    retry on timeout.
    """

    def __init__(self, config: Config, storage: Storage) -> None:
        """Start a node from what `storage` contains.

        A founding member of a new cluster needs the entries and hard state from
        `storage.bootstrap_entries` first. A member added later starts from empty
        storage and receives the log from the leader. After a restart, pass the
        state machine's applied index in `config.applied`. Raises InvalidRequest
        for invalid settings.
        """
        self.raft = Raft(config, storage)
        self._previous_soft_state = self.raft.soft_state()
        self._previous_hard_state = self.raft.hard_state()
        self._outstanding_ready: Ready | None = None

    # --- Input ---

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (after a PreVote round when pre_vote is enabled)."""
        self.raft.step(Message(MessageType.HUP, from_=self.raft.id))

    def step(self, message: Message) -> None:
        """Process a message from the network.

        Raises StepLocalMessage for a local-only type and StepPeerNotFound for a
        response from an unknown node. A forwarded proposal or read that cannot be
        accepted is dropped and logged, as its sender retries on timeout.
        """
        if message.type in LOCAL_MESSAGE_TYPES:
            raise StepLocalMessage(
                f"{message.type.value} from {message.from_!r} is a local message type; "
                "the network must not deliver it"
            )
        known = message.from_ in self.raft.tracker.progress
        if message.type in RESPONSE_MESSAGE_TYPES and not known:
            raise StepPeerNotFound(
                f"{message.type.value} from {message.from_!r}, which is not a tracked member"
            )
        try:
            self.raft.step(message)
        except ProposalDropped as error:
            logger.debug("%s dropped forwarded %s: %s", self.raft.id, message.type.value, error)

    def propose(self, data: bytes) -> None:
        """Propose a normal entry. Raises ProposalDropped if it cannot be accepted."""
        self.raft.step(Message(MessageType.PROP, entries=(Entry(data=data),)))

    def propose_conf_change(self, change: ConfChange) -> None:
        """Propose a membership change. Raises ProposalDropped, or ConfChangeRejected
        on the leader when the change is invalid or another one is still pending."""
        entry = Entry(type=EntryType.CONF_CHANGE, data=change.encode())
        self.raft.step(Message(MessageType.PROP, entries=(entry,)))

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Apply a committed conf change; return the new membership.

        Call it for each CONF_CHANGE entry when applying it. For a change that
        the current configuration does not allow, it raises ConfChangeRejected and
        changes nothing. Every member raises the same way, so the caller can skip
        that entry. A leader that removes or demotes itself steps down here.
        """
        return self.raft.apply_conf_change(change)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; a `ReadState` with `context` follows.

        Raises ProposalDropped when no leader is known or the queue is full. The
        request is silently lost if leadership changes before it is served, so
        callers retry on timeout.
        """
        self.raft.step(Message(MessageType.READ_INDEX, context=context))

    def lease_read_index(self) -> int | None:
        """Return the read point for a local read that the leader lease covers now, or None.

        With None, use `read_index`. The caller must have ticked the node up
        to the current time, because the lease is measured in ticks.
        """
        return read_index.lease_read_index(self.raft)

    def set_read_index_cap(self, cap: Callable[[], int] | None) -> None:
        """Cap every ReadIndex result, local or forwarded by a follower, at `cap()`. None removes the cap."""
        self.raft.read_index_cap = cap

    def lease_remaining_ticks(self) -> int:
        """Return the ticks left of the leader lease, 0 when `lease_read_index` would return None."""
        return read_index.lease_remaining_ticks(self.raft)

    def transfer_leader(self, transferee: NodeId) -> None:
        """Ask the leader to hand leadership to `transferee` once its log is caught up.

        Proposals are rejected during the transfer, which is aborted after an
        election timeout.
        """
        self.raft.step(Message(MessageType.TRANSFER_LEADER, from_=transferee))

    def report_unreachable(self, node_id: NodeId) -> None:
        """Tell the leader that a message to `node_id` could not be delivered."""
        self.raft.step(Message(MessageType.UNREACHABLE, from_=node_id))

    def report_snapshot(self, node_id: NodeId, success: bool) -> None:
        """Tell the leader whether sending a snapshot to `node_id` finished.

        The transport must call it for every SNAP message it handles: with
        success=True once the message is delivered and success=False when it is
        dropped. Until then the leader sends that node no appends, so a snapshot
        whose response is lost would stall the node forever.
        """
        self.raft.step(Message(MessageType.SNAP_STATUS, from_=node_id, reject=not success))

    # --- Output ---

    def has_ready(self) -> bool:
        """Return whether `ready` has work. False while a Ready awaits `advance`."""
        if self._outstanding_ready is not None:
            return False
        raft = self.raft
        if raft.soft_state() != self._previous_soft_state:
            return True
        hard_state = raft.hard_state()
        if not hard_state.is_empty() and hard_state != self._previous_hard_state:
            return True
        if raft.log.has_pending_snapshot() or raft.log.unstable.entries:
            return True
        if raft.messages or raft.read_states or raft.log.has_next_committed_entries():
            return True
        return raft.state is StateType.LEADER and raft.read_only.has_unsent_requests()

    def ready(self) -> Ready:
        """Collect the pending work. Raises ReadyNotAdvanced if the previous Ready
        was not passed to `advance`."""
        if self._outstanding_ready is not None:
            raise ReadyNotAdvanced(
                "ready() called twice; call advance() with the previous Ready first"
            )
        raft = self.raft
        # Reads that arrived since the previous Ready share one heartbeat round.
        read_index.flush_read_requests(raft)

        soft_state = raft.soft_state()
        hard_state = raft.hard_state()
        entries = tuple(raft.log.unstable.entries)
        committed_entries = tuple(raft.log.next_committed_entries())
        snapshot = raft.log.unstable.snapshot
        term_or_vote_changed = (
            hard_state.term != self._previous_hard_state.term
            or hard_state.vote != self._previous_hard_state.vote
        )
        ready = Ready(
            soft_state=soft_state if soft_state != self._previous_soft_state else None,
            hard_state=hard_state if hard_state != self._previous_hard_state else None,
            read_states=tuple(raft.read_states),
            entries=entries,
            snapshot=snapshot,
            committed_entries=committed_entries,
            messages=tuple(raft.messages),
            must_sync=bool(entries) or snapshot is not None or term_or_vote_changed,
        )
        raft.messages = []
        raft.read_states = []
        raft.reduce_uncommitted_size(committed_entries)
        self._previous_soft_state = soft_state
        self._previous_hard_state = hard_state
        self._outstanding_ready = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """Mark `ready` as persisted, sent and applied."""
        if ready is not self._outstanding_ready:
            raise ReadyNotAdvanced("advance() must get the Ready returned by the last ready()")
        log = self.raft.log
        if ready.snapshot is not None:
            log.stable_snapshot_to(ready.snapshot.metadata.index)
            log.applied_to(ready.snapshot.metadata.index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)
        self._outstanding_ready = None
        self.raft.maybe_auto_leave_joint()

    def status(self) -> Status:
        raft = self.raft
        progress: dict[NodeId, ProgressStatus] = {}
        if raft.state is StateType.LEADER:
            for node_id, tracked in raft.tracker.visit():
                progress[node_id] = ProgressStatus(
                    match=tracked.match,
                    next=tracked.next,
                    state=tracked.state,
                    is_learner=tracked.is_learner,
                    recent_active=tracked.recent_active,
                    inflight_msgs=len(tracked.inflights),
                )
        return Status(
            id=raft.id,
            hard_state=raft.hard_state(),
            soft_state=raft.soft_state(),
            applied=raft.log.applied,
            last_index=raft.log.last_index(),
            conf_state=raft.tracker.conf_state(),
            lead_transferee=raft.lead_transferee,
            progress=progress,
        )


__all__ = ["ProgressStatus", "RawNode", "Status"]
