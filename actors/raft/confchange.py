"""Membership changes: single-step changes and joint consensus.

A simple change adds, removes, promotes or demotes at most one voter, which keeps
every majority of the old voters overlapping every majority of the new ones. Any
larger change goes through a joint configuration. First decisions need a majority
of the old voters and one of the new voters (enter joint), then of the new voters
alone (leave joint). The rules match etcd-io/raft (confchange/confchange.go, v3.7
pre-release).

Every function works on copies and returns a new configuration and progress map,
so a rejected change leaves the tracker untouched.
"""

from __future__ import annotations

from rayconf.actors.raft.errors import ConfChangeRejected
from rayconf.actors.raft.progress import (
    Inflights,
    Progress,
    ProgressMap,
    ProgressTracker,
    TrackerConfig,
)
from rayconf.actors.raft.types import (
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    NodeId,
)


class Changer:
    """Computes configurations that follow the tracker's current one.

    New nodes start with `next = max(last_index, 1)`, so the leader probes them at
    its last index first.
    """

    __slots__ = ("tracker", "last_index")

    def __init__(self, tracker: ProgressTracker, last_index: int) -> None:
        self.tracker = tracker
        self.last_index = last_index

    def enter_joint(
        self, auto_leave: bool, changes: tuple[ConfChangeSingle, ...]
    ) -> tuple[TrackerConfig, ProgressMap]:
        config, progress = self._copy()
        if config.voters.is_joint():
            raise ConfChangeRejected("configuration is already joint; leave it first")
        if not config.voters.incoming:
            raise ConfChangeRejected("cannot make a zero-voter configuration joint")
        config.voters.outgoing = set(config.voters.incoming)
        self._apply(config, progress, changes)
        config.auto_leave = auto_leave
        return self._checked(config, progress)

    def leave_joint(self) -> tuple[TrackerConfig, ProgressMap]:
        config, progress = self._copy()
        if not config.voters.is_joint():
            raise ConfChangeRejected("configuration is not joint; nothing to leave")
        for node_id in config.learners_next:
            config.learners.add(node_id)
            progress[node_id].is_learner = True
        config.learners_next = set()
        for node_id in config.voters.outgoing:
            if node_id not in config.voters.incoming and node_id not in config.learners:
                del progress[node_id]
        config.voters.outgoing = set()
        config.auto_leave = False
        return self._checked(config, progress)

    def simple(self, changes: tuple[ConfChangeSingle, ...]) -> tuple[TrackerConfig, ProgressMap]:
        config, progress = self._copy()
        if config.voters.is_joint():
            raise ConfChangeRejected("cannot apply a simple change in a joint configuration")
        before = set(config.voters.incoming)
        self._apply(config, progress, changes)
        changed_voters = before ^ config.voters.incoming
        if len(changed_voters) > 1:
            raise ConfChangeRejected(
                f"a simple change may change one voter, this one changes "
                f"{sorted(changed_voters)}; use a joint configuration"
            )
        return self._checked(config, progress)

    # --- Helpers ---

    def _copy(self) -> tuple[TrackerConfig, ProgressMap]:
        progress: ProgressMap = {}
        for node_id, original in self.tracker.progress.items():
            # Shallow copy: inflights stay shared, which is fine because a change
            # never touches them and the old map is discarded once the new is used.
            progress[node_id] = Progress(
                match=original.match,
                next=original.next,
                inflights=original.inflights,
                is_learner=original.is_learner,
                state=original.state,
                pending_snapshot=original.pending_snapshot,
                recent_active=original.recent_active,
                msg_app_flow_paused=original.msg_app_flow_paused,
            )
        return self.tracker.config.copy(), progress

    def _apply(
        self, config: TrackerConfig, progress: ProgressMap, changes: tuple[ConfChangeSingle, ...]
    ) -> None:
        for change in changes:
            if not change.node_id:
                continue
            if change.type is ConfChangeType.ADD_NODE:
                self._make_voter(config, progress, change.node_id)
            elif change.type is ConfChangeType.ADD_LEARNER_NODE:
                self._make_learner(config, progress, change.node_id)
            elif change.type is ConfChangeType.REMOVE_NODE:
                self._remove(config, progress, change.node_id)
        if not config.voters.incoming:
            raise ConfChangeRejected("the change removes all voters")

    def _make_voter(self, config: TrackerConfig, progress: ProgressMap, node_id: NodeId) -> None:
        existing = progress.get(node_id)
        if existing is None:
            self._init_progress(config, progress, node_id, is_learner=False)
            return
        existing.is_learner = False
        config.learners.discard(node_id)
        config.learners_next.discard(node_id)
        config.voters.incoming.add(node_id)

    def _make_learner(self, config: TrackerConfig, progress: ProgressMap, node_id: NodeId) -> None:
        existing = progress.get(node_id)
        if existing is None:
            self._init_progress(config, progress, node_id, is_learner=True)
            return
        if existing.is_learner:
            return
        # Remove the node as a voter, but keep its progress: it stays tracked.
        self._remove(config, progress, node_id)
        progress[node_id] = existing
        if node_id in config.voters.outgoing:
            # A voter of the outgoing half becomes a learner only when joint is left.
            config.learners_next.add(node_id)
        else:
            existing.is_learner = True
            config.learners.add(node_id)

    def _remove(self, config: TrackerConfig, progress: ProgressMap, node_id: NodeId) -> None:
        if node_id not in progress:
            return
        config.voters.incoming.discard(node_id)
        config.learners.discard(node_id)
        config.learners_next.discard(node_id)
        # A voter of the outgoing half keeps its progress until joint is left.
        if node_id not in config.voters.outgoing:
            del progress[node_id]

    def _init_progress(
        self, config: TrackerConfig, progress: ProgressMap, node_id: NodeId, is_learner: bool
    ) -> None:
        if is_learner:
            config.learners.add(node_id)
        else:
            config.voters.incoming.add(node_id)
        progress[node_id] = Progress(
            match=0,
            next=max(self.last_index, 1),
            inflights=Inflights(self.tracker.max_inflight_msgs),
            is_learner=is_learner,
        )

    def _checked(
        self, config: TrackerConfig, progress: ProgressMap
    ) -> tuple[TrackerConfig, ProgressMap]:
        check_invariants(config, progress)
        return config, progress


def check_invariants(config: TrackerConfig, progress: ProgressMap) -> None:
    """Raise AssertionError when the configuration and progress map disagree."""
    for node_id in config.voters.ids() | config.learners | config.learners_next:
        assert node_id in progress, f"node {node_id!r} has no progress"
    for node_id in config.learners_next:
        assert node_id in config.voters.outgoing, f"learner_next {node_id!r} is not outgoing"
        assert not progress[node_id].is_learner, f"learner_next {node_id!r} already a learner"
    for node_id in config.learners:
        assert node_id not in config.voters.outgoing, f"learner {node_id!r} is outgoing voter"
        assert node_id not in config.voters.incoming, f"learner {node_id!r} is voter"
        assert progress[node_id].is_learner, f"learner {node_id!r} is not marked learner"
    if not config.voters.is_joint():
        assert not config.learners_next, "learners_next outside a joint configuration"
        assert not config.auto_leave, "auto_leave outside a joint configuration"


def restore(changer: Changer, conf_state: ConfState) -> tuple[TrackerConfig, ProgressMap]:
    """Build the configuration of `conf_state` from an empty tracker.

    A joint state is rebuilt by first adding the outgoing voters one at a time and
    then entering joint with the changes that produce the incoming half.
    """
    add = ConfChangeType.ADD_NODE
    add_learner = ConfChangeType.ADD_LEARNER_NODE
    remove = ConfChangeType.REMOVE_NODE
    outgoing = [ConfChangeSingle(add, node_id) for node_id in conf_state.voters_outgoing]
    incoming: list[ConfChangeSingle] = []
    incoming += [ConfChangeSingle(remove, node_id) for node_id in conf_state.voters_outgoing]
    incoming += [ConfChangeSingle(add, node_id) for node_id in conf_state.voters]
    incoming += [ConfChangeSingle(add_learner, node_id) for node_id in conf_state.learners]
    incoming += [ConfChangeSingle(add_learner, node_id) for node_id in conf_state.learners_next]

    tracker = changer.tracker
    if not outgoing:
        for change in incoming:
            tracker.config, tracker.progress = changer.simple((change,))
    else:
        for change in outgoing:
            tracker.config, tracker.progress = changer.simple((change,))
        tracker.config, tracker.progress = changer.enter_joint(
            conf_state.auto_leave, tuple(incoming)
        )
    return tracker.config, tracker.progress
