"""The follower side: forwarding requests, appending the leader's entries,
heartbeats and installing snapshots."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from rayconf.actors.raft import election
from rayconf.actors.raft.confchange import Changer, restore
from rayconf.actors.raft.errors import ProposalDropped
from rayconf.actors.raft.progress import ProgressTracker
from rayconf.actors.raft.types import NO_NODE, Message, MessageType, ReadState

if TYPE_CHECKING:
    from rayconf.actors.raft.raft import Raft

logger = logging.getLogger(__name__)


def step_follower(raft: Raft, message: Message) -> None:
    kind = message.type
    if kind in (MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER):
        if raft.lead == NO_NODE:
            raise ProposalDropped(
                f"{raft.id} knows no leader at term {raft.term}; retry later"
            )
        # Term 0 again, as for a local request: the leader compares no term, and
        # send() stamps one on a forwarded TRANSFER_LEADER.
        raft.send(replace(message, to=raft.lead, term=0))
    elif kind in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
        raft.election_elapsed = 0
        raft.lead = message.from_
        if kind is MessageType.APP:
            _handle_append_entries(raft, message)
        elif kind is MessageType.HEARTBEAT:
            raft.log.commit_to(message.commit)
            raft.send(
                Message(MessageType.HEARTBEAT_RESP, to=message.from_, context=message.context)
            )
        else:
            _handle_snapshot(raft, message)
    elif kind is MessageType.TIMEOUT_NOW:
        # No pre-vote: the leader asked for this election.
        logger.info("%s starts an election on request of leader %s", raft.id, message.from_)
        election.hup(raft, election.CampaignType.TRANSFER)
    elif kind is MessageType.READ_INDEX_RESP:
        raft.read_states.append(ReadState(index=message.index, request_context=message.context))


def _handle_append_entries(raft: Raft, message: Message) -> None:
    if message.index < raft.log.committed:
        raft.send(Message(MessageType.APP_RESP, to=message.from_, index=raft.log.committed))
        return
    last_new_index = raft.log.maybe_append(
        message.index, message.log_term, message.commit, message.entries
    )
    if last_new_index is not None:
        raft.send(Message(MessageType.APP_RESP, to=message.from_, index=last_new_index))
        return
    hint_index = min(message.index, raft.log.last_index())
    hint_index, hint_term = raft.log.find_conflict_by_term(hint_index, message.log_term)
    raft.send(
        Message(
            MessageType.APP_RESP,
            to=message.from_,
            index=message.index,
            reject=True,
            reject_hint=hint_index,
            log_term=hint_term,
        )
    )


def _handle_snapshot(raft: Raft, message: Message) -> None:
    assert message.snapshot is not None, "SNAP message without a snapshot"
    if _restore(raft, message):
        index = raft.log.last_index()
    else:
        index = raft.log.committed
    raft.send(Message(MessageType.APP_RESP, to=message.from_, index=index))


def _restore(raft: Raft, message: Message) -> bool:
    assert message.snapshot is not None
    metadata = message.snapshot.metadata
    if metadata.index <= raft.log.committed:
        return False
    conf_state = metadata.conf_state
    members = set(conf_state.voters) | set(conf_state.learners) | set(conf_state.voters_outgoing)
    if raft.id not in members:
        # NOTE: the leader keeps resending such a snapshot after each response;
        # `Storage.snapshot` must list every node it is sent to.
        logger.warning(
            "%s ignores snapshot at %d from %s: not a member of %s",
            raft.id, metadata.index, message.from_, conf_state,
        )
        return False
    if raft.log.match_term(metadata.index, metadata.term):
        # The log already has the snapshot's last entry: just commit up to it.
        raft.log.commit_to(metadata.index)
        return False
    raft.log.restore(message.snapshot)
    raft.tracker = ProgressTracker(raft.config.max_inflight_msgs)
    changer = Changer(raft.tracker, raft.log.last_index())
    raft.switch_to_config(*restore(changer, conf_state))
    logger.info("%s restored snapshot at index %d term %d", raft.id, metadata.index, metadata.term)
    return True
