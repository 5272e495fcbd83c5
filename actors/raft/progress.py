"""The leader's view of each follower, and the membership it is tracked under.

Flow control follows etcd-io/raft (tracker/progress.go, v3.7 pre-release). A
follower is in one of three states. PROBE sends one append at a time and waits for
the response. It is used after a rejection or when the follower's position is
unknown. REPLICATE streams appends optimistically, with at most
`max_inflight_msgs` unacknowledged messages. SNAPSHOT waits for a snapshot to be
installed and sends no appends.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from rayconf.actors.raft.quorum import JointConfig, VoteResult
from rayconf.actors.raft.types import ConfState, NodeId


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Last indexes of the appends sent to one follower and not yet acknowledged.

    At `capacity` messages the follower is paused: the leader sends it only empty
    appends (to learn its position) until an acknowledgement frees room.
    """

    __slots__ = ("capacity", "_last_indexes")

    def __init__(self, capacity: int) -> None:
        assert capacity > 0, f"inflight capacity must be positive, got {capacity}"
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._last_indexes)

    def add(self, last_index: int) -> None:
        assert not self.full(), "inflights are full; check full() before sending"
        assert not self._last_indexes or last_index > self._last_indexes[-1], (
            f"inflight index {last_index} does not grow"
        )
        self._last_indexes.append(last_index)

    def free_up_to(self, index: int) -> None:
        """Free every message whose last index is at most `index`."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def reset(self) -> None:
        self._last_indexes.clear()


@dataclass(slots=True)
class Progress:
    """Replication state of one node as seen by the leader.

    Invariant: `0 <= match < next`. Entries in (match, next) are in flight.
    In SNAPSHOT state `pending_snapshot` is the index of the snapshot sent.
    """

    match: int
    next: int
    inflights: Inflights
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    pending_snapshot: int = 0
    # Whether the node sent anything since the last CheckQuorum round. A new
    # node starts active so that adding it cannot make the leader step down at once.
    recent_active: bool = True
    # PROBE: an append is in flight, so send no other until a response or heartbeat.
    # REPLICATE: the inflight window is full.
    msg_app_flow_paused: bool = False

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # The snapshot may have arrived, so probe from just after it.
            pending_snapshot = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending_snapshot + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def sent_entries(self, entry_count: int) -> None:
        """Update the flow control after an append with `entry_count` entries."""
        if self.state is ProgressState.REPLICATE:
            if entry_count > 0:
                self.next += entry_count
                self.inflights.add(self.next - 1)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state is ProgressState.PROBE and entry_count > 0:
            self.msg_app_flow_paused = True

    def maybe_update(self, index: int) -> bool:
        """Record that the node stores the leader's log up to `index`. Returns
        whether `match` grew, so a stale or duplicate acknowledgement returns False."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.msg_app_flow_paused = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Move `next` back after the node rejected an append at index `rejected`.

        Returns False for a stale rejection. In REPLICATE that is one at or below
        `match`. In PROBE it is one that does not reject the latest probe at `next - 1`.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.SNAPSHOT:
            return True
        return self.msg_app_flow_paused


@dataclass(slots=True)
class TrackerConfig:
    """Membership: voters (possibly joint), learners and the joint-exit plan.

    Invariant: `learners` and `learners_next` are disjoint from `voters.incoming`,
    and `learners_next` is a subset of `voters.outgoing`.
    """

    voters: JointConfig = field(default_factory=JointConfig)
    learners: set[NodeId] = field(default_factory=set)
    learners_next: set[NodeId] = field(default_factory=set)
    auto_leave: bool = False

    def copy(self) -> TrackerConfig:
        return TrackerConfig(
            voters=self.voters.copy(),
            learners=set(self.learners),
            learners_next=set(self.learners_next),
            auto_leave=self.auto_leave,
        )

    def conf_state(self) -> ConfState:
        return ConfState(
            voters=tuple(sorted(self.voters.incoming)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters.outgoing)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )


ProgressMap = dict[NodeId, Progress]


class ProgressTracker:
    """Membership, per-node progress and the votes of the current election."""

    __slots__ = ("config", "progress", "votes", "max_inflight_msgs")

    def __init__(self, max_inflight_msgs: int) -> None:
        self.config = TrackerConfig()
        self.progress: ProgressMap = {}
        self.votes: dict[NodeId, bool] = {}
        self.max_inflight_msgs = max_inflight_msgs

    def visit(self) -> Iterator[tuple[NodeId, Progress]]:
        """Yield every tracked node in sorted id order, for deterministic output."""
        for node_id in sorted(self.progress):
            yield node_id, self.progress[node_id]

    def committed(self) -> int:
        return self.config.voters.committed_index(self._match_of)

    def _match_of(self, node_id: NodeId) -> int:
        progress = self.progress.get(node_id)
        return progress.match if progress is not None else 0

    def is_singleton(self) -> bool:
        return len(self.config.voters.incoming) == 1 and not self.config.voters.outgoing

    def voter_ids(self) -> list[NodeId]:
        return sorted(self.config.voters.ids())

    def quorum_active(self) -> bool:
        """Return whether a quorum of voters was active since the last check."""
        active = {
            node_id: progress.recent_active
            for node_id, progress in self.progress.items()
            if not progress.is_learner
        }
        return self.config.voters.vote_result(active) is VoteResult.WON

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: NodeId, granted: bool) -> None:
        """Record the first vote of `node_id`; later duplicates are ignored."""
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """Return (granted, rejected, result) over the current voters."""
        granted = 0
        rejected = 0
        for node_id in self.config.voters.ids():
            vote = self.votes.get(node_id)
            if vote is None:
                continue
            if vote:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.config.voters.vote_result(self.votes)

    def conf_state(self) -> ConfState:
        return self.config.conf_state()
