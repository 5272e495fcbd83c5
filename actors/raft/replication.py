"""The leader side of Raft: proposals, appends, snapshots, heartbeats and leader
transfer. Reads are in `read_index.py`.

These functions take the `Raft` they act on. They are split from `raft.py` by
concern: everything here runs only while the node is leader.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rayconf.actors.raft import read_index
from rayconf.actors.raft.confchange import Changer
from rayconf.actors.raft.errors import (
    ConfChangeRejected,
    ProposalDropped,
    SnapshotTemporarilyUnavailable,
    StorageCompacted,
)
from rayconf.actors.raft.progress import Progress, ProgressState
from rayconf.actors.raft.read_only import decode_round, encode_round
from rayconf.actors.raft.types import (
    NO_NODE,
    ConfChange,
    Entry,
    EntryType,
    Message,
    MessageType,
    NodeId,
)

if TYPE_CHECKING:
    from rayconf.actors.raft.raft import Raft

logger = logging.getLogger(__name__)


def step_leader(raft: Raft, message: Message) -> None:
    kind = message.type
    if kind is MessageType.BEAT:
        broadcast_heartbeat(raft)
    elif kind is MessageType.CHECK_QUORUM:
        _check_quorum(raft)
    elif kind is MessageType.PROP:
        _propose(raft, message)
    elif kind is MessageType.READ_INDEX:
        read_index.handle_read_index(raft, message)
    else:
        progress = raft.tracker.progress.get(message.from_)
        if progress is None:
            logger.debug("%s ignores %s from unknown node %s", raft.id, kind.value, message.from_)
            return
        if kind is MessageType.APP_RESP:
            _handle_append_response(raft, message, progress)
        elif kind is MessageType.HEARTBEAT_RESP:
            _handle_heartbeat_response(raft, message, progress)
        elif kind is MessageType.SNAP_STATUS:
            _handle_snapshot_status(raft, message, progress)
        elif kind is MessageType.UNREACHABLE:
            if progress.state is ProgressState.REPLICATE:
                progress.become_probe()
        elif kind is MessageType.TRANSFER_LEADER:
            _transfer_leader(raft, message.from_, progress)


def _check_quorum(raft: Raft) -> None:
    if not raft.tracker.quorum_active():
        logger.warning(
            "%s steps down at term %d: no quorum was active in the last election timeout",
            raft.id, raft.term,
        )
        raft.become_follower(raft.term, NO_NODE)
        return
    for node_id, progress in raft.tracker.progress.items():
        if node_id != raft.id:
            progress.recent_active = False


# --- Proposals ---


def _propose(raft: Raft, message: Message) -> None:
    assert message.entries, "proposal without entries"
    if raft.id not in raft.tracker.progress:
        raise ProposalDropped(f"{raft.id} is no longer a member; propose to another node")
    if raft.lead_transferee != NO_NODE:
        raise ProposalDropped(
            f"{raft.id} is transferring leadership to {raft.lead_transferee}; retry later"
        )
    local = message.from_ in (NO_NODE, raft.id)
    entries = list(message.entries)
    for position, entry in enumerate(entries):
        if entry.type is not EntryType.CONF_CHANGE:
            continue
        problem = _conf_change_problem(raft, ConfChange.decode(entry.data))
        if problem is None:
            raft.pending_conf_index = raft.log.last_index() + position + 1
            continue
        if local:
            raise ConfChangeRejected(problem)
        # A forwarded proposal has no caller here to raise to, so keep its slot in
        # the batch as an empty entry, as etcd-io/raft does.
        logger.warning(
            "%s replaces a forwarded conf change with an empty entry: %s", raft.id, problem
        )
        entries[position] = Entry()
    if not raft.append_entry(entries):
        raise ProposalDropped(
            f"{raft.id} has {raft.uncommitted_size_bytes} uncommitted bytes and the proposal "
            "would exceed max_uncommitted_entries_size_bytes="
            f"{raft.config.max_uncommitted_entries_size_bytes}; retry after entries commit"
        )
    broadcast_append(raft)


def _conf_change_problem(raft: Raft, change: ConfChange) -> str | None:
    """Return why `change` cannot be proposed now, or None if it can."""
    if raft.pending_conf_index > raft.log.applied:
        return (
            f"a conf change at index {raft.pending_conf_index} is not applied yet "
            f"(applied {raft.log.applied}); wait for it"
        )
    joint = raft.tracker.config.voters.is_joint()
    if joint and not change.leaves_joint():
        return "the configuration is joint; leave it before another change"
    if not joint and change.leaves_joint():
        return "the configuration is not joint; an empty conf change has nothing to leave"
    # Every earlier change is applied, so the tracker contains the newest
    # configuration and a dry run shows whether the change is valid.
    changer = Changer(raft.tracker, raft.log.last_index())
    try:
        if change.leaves_joint():
            changer.leave_joint()
        elif change.enters_joint():
            changer.enter_joint(change.auto_leaves(), change.changes)
        else:
            changer.simple(change.changes)
    except ConfChangeRejected as error:
        return str(error)
    return None


# --- Appends and snapshots ---


def broadcast_append(raft: Raft) -> None:
    for node_id, _ in raft.tracker.visit():
        if node_id != raft.id:
            maybe_send_append(raft, node_id, send_if_empty=True)


def maybe_send_append(raft: Raft, to: NodeId, send_if_empty: bool) -> bool:
    """Send the next entries to `to`, or a snapshot if they are compacted.

    With `send_if_empty` an append without entries is sent too, to carry the commit
    index or to probe. Returns whether a message was sent.
    """
    progress = raft.tracker.progress[to]
    if progress.is_paused():
        return False
    previous_index = progress.next - 1
    # With a full window only empty appends go out. They still reach the follower
    # if the earlier appends were lost, and its response frees the window.
    window_full = progress.state is ProgressState.REPLICATE and progress.inflights.full()
    try:
        previous_term = raft.log.term(previous_index)
        if window_full:
            entries = []
        else:
            entries = raft.log.entries(progress.next, raft.config.max_size_per_msg_bytes)
    except StorageCompacted:
        return _send_snapshot(raft, to, progress)
    if not entries and not send_if_empty:
        return False
    raft.send(
        Message(
            MessageType.APP,
            to=to,
            index=previous_index,
            log_term=previous_term,
            entries=tuple(entries),
            commit=raft.log.committed,
        )
    )
    progress.sent_entries(len(entries))
    return True


def _send_snapshot(raft: Raft, to: NodeId, progress: Progress) -> bool:
    if not progress.recent_active:
        logger.debug("%s delays snapshot to %s: node not recently active", raft.id, to)
        return False
    try:
        snapshot = raft.log.snapshot()
    except SnapshotTemporarilyUnavailable:
        logger.debug("%s delays snapshot to %s: storage has none ready", raft.id, to)
        return False
    assert not snapshot.is_empty(), "entries are compacted but the storage has no snapshot"
    progress.become_snapshot(snapshot.metadata.index)
    logger.info(
        "%s sends snapshot at index %d to %s (match %d)",
        raft.id, snapshot.metadata.index, to, progress.match,
    )
    raft.send(Message(MessageType.SNAP, to=to, snapshot=snapshot))
    return True


def _handle_append_response(raft: Raft, message: Message, progress: Progress) -> None:
    progress.recent_active = True
    sender = message.from_
    if message.reject:
        next_probe_index = message.reject_hint
        if message.log_term > 0:
            # Skip every entry of the leader's log whose term the follower cannot have.
            next_probe_index, _ = raft.log.find_conflict_by_term(
                message.reject_hint, message.log_term
            )
        if progress.maybe_decrease_to(message.index, next_probe_index):
            if progress.state is ProgressState.REPLICATE:
                progress.become_probe()
            maybe_send_append(raft, sender, send_if_empty=True)
        return

    was_paused = progress.is_paused()
    if not (
        progress.maybe_update(message.index)
        or (progress.match == message.index and progress.state is ProgressState.PROBE)
    ):
        return
    if progress.state is ProgressState.PROBE:
        progress.become_replicate()
    elif progress.state is ProgressState.SNAPSHOT and progress.match + 1 >= raft.log.first_index():
        # The follower installed the snapshot and can now take entries.
        progress.become_probe()
        progress.become_replicate()
    elif progress.state is ProgressState.REPLICATE:
        progress.inflights.free_up_to(message.index)
        progress.msg_app_flow_paused = progress.inflights.full()

    if raft.maybe_commit():
        broadcast_append(raft)
    elif was_paused:
        maybe_send_append(raft, sender, send_if_empty=True)
    # Send as many more appends as flow control allows.
    while maybe_send_append(raft, sender, send_if_empty=False):
        pass
    if sender == raft.lead_transferee and progress.match == raft.log.last_index():
        _send_timeout_now(raft, sender)


def _handle_snapshot_status(raft: Raft, message: Message, progress: Progress) -> None:
    if progress.state is not ProgressState.SNAPSHOT:
        return
    if message.reject:
        progress.pending_snapshot = 0
    progress.become_probe()
    # Wait for a heartbeat response before the next append, as the snapshot may
    # still be applying.
    progress.msg_app_flow_paused = True


# --- Heartbeats and reads ---


def broadcast_heartbeat(raft: Raft) -> None:
    """Send one heartbeat round to every node; the round confirms all waiting reads."""
    round_number = raft.read_only.start_round(raft.tick_count, raft.id)
    context = encode_round(round_number)
    for node_id, progress in raft.tracker.visit():
        if node_id == raft.id:
            continue
        # Cap the commit at the follower's match, because beyond it the follower's
        # log may still contain entries from an older leader.
        commit = min(progress.match, raft.log.committed)
        raft.send(Message(MessageType.HEARTBEAT, to=node_id, commit=commit, context=context))
    read_index.maybe_confirm_round(raft, round_number)


def _handle_heartbeat_response(raft: Raft, message: Message, progress: Progress) -> None:
    progress.recent_active = True
    progress.msg_app_flow_paused = False
    if progress.match < raft.log.last_index() or progress.state is ProgressState.PROBE:
        maybe_send_append(raft, message.from_, send_if_empty=True)
    round_number = decode_round(message.context)
    if round_number is None:
        return
    if raft.read_only.acknowledge(round_number, message.from_) is not None:
        read_index.maybe_confirm_round(raft, round_number)


# --- Leader transfer ---


def _transfer_leader(raft: Raft, transferee: NodeId, progress: Progress) -> None:
    if progress.is_learner:
        logger.info("%s ignores transfer to learner %s", raft.id, transferee)
        return
    if raft.lead_transferee != NO_NODE:
        if raft.lead_transferee == transferee:
            return
        logger.info("%s aborts transfer to %s for %s", raft.id, raft.lead_transferee, transferee)
        raft.lead_transferee = NO_NODE
    if transferee == raft.id:
        return
    # The transfer must finish within one election timeout, counted from now.
    raft.election_elapsed = 0
    raft.lead_transferee = transferee
    logger.info("%s starts leader transfer to %s at term %d", raft.id, transferee, raft.term)
    if progress.match == raft.log.last_index():
        _send_timeout_now(raft, transferee)
    else:
        maybe_send_append(raft, transferee, send_if_empty=True)


def _send_timeout_now(raft: Raft, transferee: NodeId) -> None:
    logger.info("%s sends MsgTimeoutNow to %s: its log is up to date", raft.id, transferee)
    raft.read_only.lease_revoked = True
    raft.send(Message(MessageType.TIMEOUT_NOW, to=transferee))
