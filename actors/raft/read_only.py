"""ReadIndex requests waiting for the leader to confirm that it still leads.

A read is linearizable if it observes every write committed before it started. The
leader records its commit index when a read request arrives, then confirms that no
newer leader exists by getting heartbeat responses from a quorum. Once confirmed,
the read may be served after the state machine has applied the recorded index.

Heartbeats go out in numbered rounds, and the round number travels in the
heartbeat's context and comes back in the response. A request joins the first round
sent after it arrived, and every round the leader sends includes all requests still
waiting. When a quorum acknowledges round R, every request that joined round R or
an earlier one is confirmed, so one round of heartbeats serves all requests that
were waiting when it was sent. A lost round is retried by the next periodic
heartbeat.

Lease-based reads skip the round. A confirmed round sent at tick T means that a
quorum of voters reset their election timers at or after T. With CheckQuorum,
none of them votes for another leader before T + election timeout. So the leader
serves reads without a round while its local tick is below that bound minus a
clock-drift margin. Two cases would break that bound, so they are excluded: a
restarted node, which has forgotten the leader, ignores votes for its first
election timeout; and a leader that has sent MsgTimeoutNow, which voters obey
despite the lease, stops using its lease for the rest of its term.

NOTE: lease reads assume that over one election timeout the tick counts of two
members differ by less than `lease_drift_margin_ticks`. A ticker that falls
behind real time breaks that and can make a lease read stale, so a driver must
derive ticks from a monotonic clock and catch up before each read, as the
replica actor does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from rayconf.actors.raft.types import NodeId

SAFE = "safe"
LEASE_BASED = "lease_based"
READ_ONLY_OPTIONS = (SAFE, LEASE_BASED)

# Round 0 means "not yet sent with any heartbeat round".
NO_ROUND = 0

# Maximum number of unconfirmed rounds kept. Acks for a round older than the kept
# ones are ignored, which only delays reads: a later round confirms them too.
ROUNDS_MAX = 64


@dataclass(slots=True)
class ReadRequest:
    """A read waiting for confirmation. `requester` is NO_NODE for a local read."""

    context: bytes
    requester: NodeId
    commit_index: int
    round: int = NO_ROUND


@dataclass(slots=True)
class HeartbeatRound:
    sent_tick: int
    acks: set[NodeId] = field(default_factory=set)


def encode_round(round_number: int) -> bytes:
    return round_number.to_bytes(8, "big")


def decode_round(context: bytes) -> int | None:
    if len(context) != 8:
        return None
    return int.from_bytes(context, "big")


class ReadOnly:
    """Read requests and heartbeat rounds of one leader term.

    Invariant: `requests` is in arrival order, so their rounds never decrease
    (requests with NO_ROUND come last).
    """

    __slots__ = (
        "option",
        "max_pending",
        "requests",
        "rounds",
        "last_round",
        "lease_start_tick",
        "lease_revoked",
    )

    def __init__(self, option: str, max_pending: int) -> None:
        assert option in READ_ONLY_OPTIONS, f"unknown read_only_option {option!r}"
        self.option = option
        self.max_pending = max_pending
        self.requests: deque[ReadRequest] = deque()
        self.rounds: dict[int, HeartbeatRound] = {}
        self.last_round = NO_ROUND
        # Send tick of the newest round confirmed by a quorum, or 0 for none yet.
        self.lease_start_tick = 0
        # Set once this leader sends MsgTimeoutNow. A delayed MsgTimeoutNow can
        # start an election that voters grant despite the lease, at any later time,
        # so the lease stays unusable for the rest of the term.
        self.lease_revoked = False

    def is_full(self) -> bool:
        return len(self.requests) >= self.max_pending

    def add_request(self, context: bytes, requester: NodeId, commit_index: int) -> None:
        assert not self.is_full(), "read request queue is full; check is_full() first"
        self.requests.append(ReadRequest(context, requester, commit_index))

    def has_unsent_requests(self) -> bool:
        return bool(self.requests) and self.requests[-1].round == NO_ROUND

    def has_waiting_requests(self) -> bool:
        return bool(self.requests)

    def start_round(self, tick: int, self_id: NodeId) -> int:
        """Start a heartbeat round, attach every unsent request to it, count the
        leader's own acknowledgement and return the round number."""
        self.last_round += 1
        round_number = self.last_round
        self.rounds[round_number] = HeartbeatRound(sent_tick=tick, acks={self_id})
        for request in reversed(self.requests):
            if request.round != NO_ROUND:
                break
            request.round = round_number
        while len(self.rounds) > ROUNDS_MAX:
            del self.rounds[min(self.rounds)]
        return round_number

    def acknowledge(self, round_number: int, node_id: NodeId) -> set[NodeId] | None:
        """Record an ack; return the round's acks, or None for an unknown round."""
        heartbeat_round = self.rounds.get(round_number)
        if heartbeat_round is None:
            return None
        heartbeat_round.acks.add(node_id)
        return heartbeat_round.acks

    def confirm(self, round_number: int) -> list[ReadRequest]:
        """Mark `round_number` as confirmed by a quorum; return the requests it serves."""
        heartbeat_round = self.rounds.get(round_number)
        if heartbeat_round is None:
            return []
        self.lease_start_tick = max(self.lease_start_tick, heartbeat_round.sent_tick)
        for number in [number for number in self.rounds if number <= round_number]:
            del self.rounds[number]
        served: list[ReadRequest] = []
        while self.requests:
            request = self.requests[0]
            if request.round == NO_ROUND or request.round > round_number:
                break
            served.append(self.requests.popleft())
        return served

    def lease_valid(self, tick: int, election_timeout_ticks: int, drift_margin_ticks: int) -> bool:
        if self.lease_start_tick == 0 or self.lease_revoked:
            return False
        return tick - self.lease_start_tick < election_timeout_ticks - drift_margin_ticks
