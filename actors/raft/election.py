"""Elections: vote requests, PreVote, campaigns and the candidate roles.

With `pre_vote` set, a node first runs a PreVote round. It requests votes for the
term it would move to but keeps its own term. A node that cannot win, for example
one cut off from the cluster, therefore never raises the cluster's term. It becomes
a real candidate only when a quorum would grant its vote.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from rayconf.actors.raft import follower, replication
from rayconf.actors.raft.errors import ProposalDropped
from rayconf.actors.raft.quorum import VoteResult
from rayconf.actors.raft.storage import NO_SIZE_LIMIT
from rayconf.actors.raft.types import (
    NO_NODE,
    EntryType,
    Message,
    MessageType,
    NodeId,
    StateType,
    vote_response_type,
)

if TYPE_CHECKING:
    from rayconf.actors.raft.raft import Raft

logger = logging.getLogger(__name__)

# Context of a VOTE sent after MsgTimeoutNow: voters grant it even while they still
# hear from the current leader, because that leader asked for the election.
CAMPAIGN_TRANSFER_CONTEXT = b"campaign_transfer"


class CampaignType(enum.Enum):
    PRE_ELECTION = "pre_election"
    ELECTION = "election"
    TRANSFER = "transfer"


def handle_vote_request(raft: Raft, message: Message) -> None:
    can_vote = (
        raft.vote == message.from_
        or (raft.vote == NO_NODE and raft.lead == NO_NODE)
        or (message.type is MessageType.PRE_VOTE and message.term > raft.term)
    )
    response_type = vote_response_type(message.type)
    # A learner answers too. The candidate counts only the voters of its own
    # configuration, and that configuration may already have promoted this node:
    # a promotion can commit on the other voters before this node has it, and
    # then the remaining voters may need this node's vote to elect anyone.
    if can_vote and raft.log.is_up_to_date(message.index, message.log_term):
        # The response carries the request's term: for a pre-vote this node's
        # own term is lower, and the pre-candidate must count the grant.
        raft.send(Message(response_type, to=message.from_, term=message.term))
        if message.type is MessageType.VOTE:
            raft.election_elapsed = 0
            raft.vote = message.from_
    else:
        raft.send(Message(response_type, to=message.from_, term=raft.term, reject=True))


def hup(raft: Raft, campaign_type: CampaignType) -> None:
    if raft.state is StateType.LEADER:
        return
    if not raft.promotable():
        logger.warning("%s cannot campaign: it is not a voter", raft.id)
        return
    if _has_unapplied_conf_changes(raft):
        logger.warning(
            "%s cannot campaign at term %d: committed conf changes are not applied yet",
            raft.id, raft.term,
        )
        return
    _campaign(raft, campaign_type)


def _has_unapplied_conf_changes(raft: Raft) -> bool:
    low = max(raft.log.applied + 1, raft.log.first_index())
    if low > raft.log.committed:
        return False
    entries = raft.log.slice(low, raft.log.committed + 1, NO_SIZE_LIMIT)
    return any(entry.type is EntryType.CONF_CHANGE for entry in entries)


def _campaign(raft: Raft, campaign_type: CampaignType) -> None:
    if campaign_type is CampaignType.PRE_ELECTION:
        raft.become_pre_candidate()
        vote_type = MessageType.PRE_VOTE
        term = raft.term + 1
    else:
        raft.become_candidate()
        vote_type = MessageType.VOTE
        term = raft.term
    if _poll(raft, raft.id, vote_response_type(vote_type), True) is VoteResult.WON:
        # Only possible with a single voter.
        if campaign_type is CampaignType.PRE_ELECTION:
            _campaign(raft, CampaignType.ELECTION)
        else:
            raft.become_leader()
        return
    context = CAMPAIGN_TRANSFER_CONTEXT if campaign_type is CampaignType.TRANSFER else b""
    for node_id in raft.tracker.voter_ids():
        if node_id == raft.id:
            continue
        raft.send(
            Message(
                vote_type,
                to=node_id,
                term=term,
                index=raft.log.last_index(),
                log_term=raft.log.last_term(),
                context=context,
            )
        )


def _poll(raft: Raft, node_id: NodeId, response_type: MessageType, granted: bool) -> VoteResult:
    raft.tracker.record_vote(node_id, granted)
    granted_count, rejected_count, result = raft.tracker.tally_votes()
    logger.debug(
        "%s has %d %s grants and %d rejections at term %d",
        raft.id, granted_count, response_type.value, rejected_count, raft.term,
    )
    return result


def step_candidate(raft: Raft, message: Message) -> None:
    own_response_type = (
        MessageType.PRE_VOTE_RESP
        if raft.state is StateType.PRE_CANDIDATE
        else MessageType.VOTE_RESP
    )
    kind = message.type
    if kind in (MessageType.PROP, MessageType.READ_INDEX):
        raise ProposalDropped(f"{raft.id} is campaigning at term {raft.term}; no leader")
    if kind in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
        # A leader of this term exists.
        raft.become_follower(message.term, message.from_)
        follower.step_follower(raft, message)
    elif kind is own_response_type:
        result = _poll(raft, message.from_, kind, not message.reject)
        if result is VoteResult.WON:
            if raft.state is StateType.PRE_CANDIDATE:
                _campaign(raft, CampaignType.ELECTION)
            else:
                raft.become_leader()
                replication.broadcast_append(raft)
        elif result is VoteResult.LOST:
            raft.become_follower(raft.term, NO_NODE)
