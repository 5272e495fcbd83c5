"""Settings of one Raft node."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rayconf.actors.raft.read_only import LEASE_BASED, READ_ONLY_OPTIONS, SAFE
from rayconf.actors.raft.types import NO_NODE, NodeId
from rayconf.errors import InvalidRequest


@dataclass(slots=True)
class Config:
    """Settings of one Raft node. Times are in ticks of `RawNode.tick`.

    Every member of a cluster should use the same election, PreVote, CheckQuorum
    and read settings: lease-based reads are safe only if every voter runs
    CheckQuorum, because that is what makes followers reject votes while a leader
    is active.
    """

    node_id: NodeId
    # A follower that hears nothing from a leader for a random number of ticks in
    # [election_timeout_ticks, 2 * election_timeout_ticks) starts an election.
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    # Index of the last entry the state machine applied before a restart, so that
    # committed entries up to it are not handed out again. 0 replays everything
    # after the storage's snapshot.
    applied: int = 0
    # Maximum bytes of entries per append message (at least one entry is sent).
    max_size_per_msg_bytes: int = 1024 * 1024
    # Maximum unacknowledged append messages per follower in REPLICATE state.
    max_inflight_msgs: int = 256
    # Maximum bytes of committed entries per Ready (at least one entry). The rest
    # comes in later Readies.
    max_committed_size_per_ready_bytes: int = 64 * 1024 * 1024
    # Maximum payload bytes of appended but uncommitted entries on a leader.
    # Proposals beyond it raise ProposalDropped, except that a leader with nothing
    # uncommitted accepts one proposal of any size. Empty entries are not counted.
    max_uncommitted_entries_size_bytes: int = 64 * 1024 * 1024
    # Maximum read requests waiting on a leader, counted separately for those that
    # wait for the leader's first commit in its term. A local request beyond it
    # raises ProposalDropped. A forwarded one is dropped and its requester times out.
    max_pending_read_requests: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True
    # SAFE confirms each batch of reads with a heartbeat round. LEASE_BASED serves
    # reads from the leader's lease and needs check_quorum.
    read_only_option: str = SAFE
    # Ticks subtracted from the lease to cover tick rates that differ between
    # members. With LEASE_BASED, it must be below election_timeout_ticks.
    lease_drift_margin_ticks: int = 2
    # Randomness for election timeouts. The default is seeded by the operating
    # system, so inject a seeded one for reproducible runs.
    rng: random.Random = field(default_factory=random.Random)

    def validate(self) -> None:
        """Raise InvalidRequest naming the first invalid setting."""
        if self.node_id == NO_NODE:
            raise InvalidRequest("node_id is empty; give each member a non-empty name")
        if self.heartbeat_interval_ticks <= 0:
            raise InvalidRequest(
                f"heartbeat_interval_ticks is {self.heartbeat_interval_ticks}; it must be positive"
            )
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise InvalidRequest(
                f"election_timeout_ticks ({self.election_timeout_ticks}) must be greater than "
                f"heartbeat_interval_ticks ({self.heartbeat_interval_ticks})"
            )
        if self.max_inflight_msgs <= 0:
            raise InvalidRequest(
                f"max_inflight_msgs is {self.max_inflight_msgs}; it must be positive"
            )
        for name in (
            "max_size_per_msg_bytes",
            "max_committed_size_per_ready_bytes",
            "max_uncommitted_entries_size_bytes",
        ):
            if getattr(self, name) <= 0:
                raise InvalidRequest(f"{name} is {getattr(self, name)}; it must be positive")
        if self.max_pending_read_requests <= 0:
            raise InvalidRequest(
                f"max_pending_read_requests is {self.max_pending_read_requests}; "
                "it must be positive"
            )
        if self.read_only_option not in READ_ONLY_OPTIONS:
            raise InvalidRequest(
                f"read_only_option is {self.read_only_option!r}; use one of {READ_ONLY_OPTIONS}"
            )
        if self.read_only_option == LEASE_BASED:
            if not self.check_quorum:
                raise InvalidRequest(
                    "read_only_option 'lease_based' needs check_quorum=True, because "
                    "without it followers may elect a new leader while the lease runs"
                )
            if not 0 <= self.lease_drift_margin_ticks < self.election_timeout_ticks:
                raise InvalidRequest(
                    f"lease_drift_margin_ticks is {self.lease_drift_margin_ticks}; it must be "
                    f"in [0, election_timeout_ticks={self.election_timeout_ticks})"
                )
