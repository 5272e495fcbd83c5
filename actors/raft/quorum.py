"""Quorum arithmetic for majority and joint configurations.

A joint configuration is two majority configurations, incoming and outgoing, and
needs a majority in each: its commit index is the smaller of the two, and a vote is
won only when both are won. An empty majority configuration agrees to everything,
which lets a non-joint configuration be a joint one with an empty outgoing half.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from rayconf.actors.raft.types import NodeId

# Commit index of an empty configuration: larger than any real index, so that it
# never limits the minimum taken over the halves of a joint configuration.
INDEX_MAX = 2**63

AckedIndex = Callable[[NodeId], int]


class VoteResult(enum.Enum):
    PENDING = "pending"
    LOST = "lost"
    WON = "won"


def majority_committed_index(voters: frozenset[NodeId], acked_index: AckedIndex) -> int:
    """Return the largest index that a majority of `voters` has acknowledged."""
    if not voters:
        return INDEX_MAX
    acked = sorted((acked_index(node_id) for node_id in voters), reverse=True)
    quorum_size = len(voters) // 2 + 1
    return acked[quorum_size - 1]


def majority_vote_result(voters: frozenset[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """Return WON when a majority granted, LOST when a majority can no longer grant."""
    if not voters:
        return VoteResult.WON
    granted = 0
    missing = 0
    for node_id in voters:
        vote = votes.get(node_id)
        if vote is None:
            missing += 1
        elif vote:
            granted += 1
    quorum_size = len(voters) // 2 + 1
    if granted >= quorum_size:
        return VoteResult.WON
    if granted + missing >= quorum_size:
        return VoteResult.PENDING
    return VoteResult.LOST


@dataclass(slots=True)
class JointConfig:
    """Voters of the incoming configuration and, while joint, of the outgoing one."""

    incoming: set[NodeId] = field(default_factory=set)
    outgoing: set[NodeId] = field(default_factory=set)

    def is_joint(self) -> bool:
        return bool(self.outgoing)

    def ids(self) -> set[NodeId]:
        return self.incoming | self.outgoing

    def committed_index(self, acked_index: AckedIndex) -> int:
        incoming = majority_committed_index(frozenset(self.incoming), acked_index)
        outgoing = majority_committed_index(frozenset(self.outgoing), acked_index)
        return min(incoming, outgoing)

    def vote_result(self, votes: Mapping[NodeId, bool]) -> VoteResult:
        incoming = majority_vote_result(frozenset(self.incoming), votes)
        outgoing = majority_vote_result(frozenset(self.outgoing), votes)
        if incoming is outgoing:
            return incoming
        if VoteResult.LOST in (incoming, outgoing):
            return VoteResult.LOST
        return VoteResult.PENDING

    def copy(self) -> JointConfig:
        return JointConfig(set(self.incoming), set(self.outgoing))


def votes_from_acks(acked: Iterable[NodeId]) -> dict[NodeId, bool]:
    return {node_id: True for node_id in acked}
