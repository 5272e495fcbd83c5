"""The leader side of ReadIndex: serving reads, directly, by lease or after a
heartbeat round confirms leadership (see `read_only.py` for the reasoning)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rayconf.actors.raft import replication
from rayconf.actors.raft.errors import ProposalDropped
from rayconf.actors.raft.quorum import VoteResult, votes_from_acks
from rayconf.actors.raft.read_only import LEASE_BASED
from rayconf.actors.raft.types import (
    NO_NODE,
    Message,
    MessageType,
    NodeId,
    ReadState,
    StateType,
)

if TYPE_CHECKING:
    from rayconf.actors.raft.raft import Raft

logger = logging.getLogger(__name__)


def flush_read_requests(raft: Raft) -> None:
    """Start a heartbeat round if read requests wait for one."""
    if raft.state is StateType.LEADER and raft.read_only.has_unsent_requests():
        replication.broadcast_heartbeat(raft)


def maybe_confirm_round(raft: Raft, round_number: int) -> None:
    acks = raft.read_only.acknowledge(round_number, raft.id)
    if acks is None:
        return
    if raft.tracker.config.voters.vote_result(votes_from_acks(acks)) is not VoteResult.WON:
        return
    for request in raft.read_only.confirm(round_number):
        _respond_to_read(raft, request.requester, request.context, request.commit_index)


def _committed_entry_in_current_term(raft: Raft) -> bool:
    return raft.log.term_or_zero(raft.log.committed) == raft.term


def handle_read_index(raft: Raft, message: Message) -> None:
    local = message.from_ in (NO_NODE, raft.id)
    if raft.tracker.is_singleton():
        _respond_to_read(raft, message.from_, message.context, raft.log.committed)
        return
    if not _committed_entry_in_current_term(raft):
        # The commit index of a new leader may lag the real one until it commits
        # an entry of its own term, so reads wait for that.
        if len(raft.pending_read_index_messages) >= raft.config.max_pending_read_requests:
            _drop_read(raft, message, local)
            return
        raft.pending_read_index_messages.append(message)
        return
    _serve_read_index(raft, message, local)


def lease_read_index(raft: Raft) -> int | None:
    """Return the commit index for a read on this leader that its lease covers now, else None.

    It is the index that a local ReadIndex request would get through
    `Ready`, without the round trip. None means that the read must take the
    usual path: not the leader, no entry of its term committed yet, lease
    reads off, or the lease not valid.
    """
    if raft.state is not StateType.LEADER or raft.tracker.is_singleton():
        return None
    if not _committed_entry_in_current_term(raft) or not _lease_covers_reads(raft):
        return None
    return raft.log.committed


def lease_remaining_ticks(raft: Raft) -> int:
    """Return the whole ticks left of the lease that `lease_read_index` relies on; 0 when it returns None.

    A shard store's read lease must end before the leader lease does, because
    no other leader can commit before then. NOTE: a leader transfer ignores
    the leader lease, so the leader must wait until every store lease it
    granted has ended before it sends MsgTimeoutNow. No caller of the replica
    actor can start a transfer yet.
    """
    if lease_read_index(raft) is None:
        return 0
    config = raft.config
    end_tick = raft.read_only.lease_start_tick + config.election_timeout_ticks - config.lease_drift_margin_ticks
    return max(0, end_tick - raft.tick_count)


def _lease_covers_reads(raft: Raft) -> bool:
    config = raft.config
    # During a transfer the transferee may win at any moment, so reads wait for a
    # heartbeat round instead of trusting the lease.
    return (
        config.read_only_option == LEASE_BASED
        and raft.lead_transferee == NO_NODE
        and raft.read_only.lease_valid(
            raft.tick_count, config.election_timeout_ticks, config.lease_drift_margin_ticks
        )
    )


def _serve_read_index(raft: Raft, message: Message, local: bool) -> None:
    if _lease_covers_reads(raft):
        _respond_to_read(raft, message.from_, message.context, raft.log.committed)
        return
    if raft.read_only.is_full():
        _drop_read(raft, message, local)
        return
    raft.read_only.add_request(message.context, message.from_, raft.log.committed)


def _drop_read(raft: Raft, message: Message, local: bool) -> None:
    text = (
        f"{raft.id} has {raft.config.max_pending_read_requests} read requests waiting, "
        "at max_pending_read_requests; retry later"
    )
    if local:
        raise ProposalDropped(text)
    logger.warning("%s drops read request from %s: %s", raft.id, message.from_, text)


def release_pending_read_index_messages(raft: Raft) -> None:
    if not raft.pending_read_index_messages or not _committed_entry_in_current_term(raft):
        return
    waiting = raft.pending_read_index_messages
    raft.pending_read_index_messages = []
    for message in waiting:
        # Local requests that overflow are dropped without raising: their caller
        # returned long ago and waits for a ReadState that will not come.
        _serve_read_index(raft, message, local=False)


def _respond_to_read(raft: Raft, requester: NodeId, context: bytes, index: int) -> None:
    if raft.read_index_cap is not None:
        index = min(index, raft.read_index_cap())
    if requester in (NO_NODE, raft.id):
        raft.read_states.append(ReadState(index=index, request_context=context))
    else:
        raft.send(Message(MessageType.READ_INDEX_RESP, to=requester, index=index, context=context))
