"""The Raft state machine: terms, roles, the clock and message dispatch.

`Raft.step` takes one message, updates the state and queues outgoing messages in
`messages`; `Raft.tick` advances the logical clock. Elections live in
`election.py`, the follower side in `follower.py`, and the leader side
(replication, heartbeats, reads, leader transfer) in `replication.py`.

Behaviour follows etcd-io/raft (raft.go, v3.7 pre-release) where this file does not
say otherwise. The main difference is that a node counts its own vote and its own
log at once. That is safe because a Ready is persisted before any of its messages
are sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from rayconf.actors.raft import election, follower, read_index, replication
from rayconf.actors.raft.confchange import Changer, restore
from rayconf.actors.raft.config import Config
from rayconf.actors.raft.errors import ProposalDropped, StorageUnavailable
from rayconf.actors.raft.log import RaftLog
from rayconf.actors.raft.progress import (
    Inflights,
    Progress,
    ProgressMap,
    ProgressTracker,
    TrackerConfig,
)
from rayconf.actors.raft.read_only import LEASE_BASED, ReadOnly
from rayconf.actors.raft.storage import Storage
from rayconf.actors.raft.types import (
    NO_NODE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    SoftState,
    StateType,
)

logger = logging.getLogger(__name__)

VOTE_TYPES = (MessageType.VOTE, MessageType.PRE_VOTE)


class Raft:
    """One node's Raft state. It is not thread-safe, so drive it through `RawNode`."""

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.id = config.node_id
        self.config = config
        self.log = RaftLog(storage, config.max_committed_size_per_ready_bytes)
        self.tracker = ProgressTracker(config.max_inflight_msgs)
        self.term = 0
        self.vote: NodeId = NO_NODE
        self.lead: NodeId = NO_NODE
        self.state = StateType.FOLLOWER
        self.is_learner = False
        # Outgoing messages, sent by the caller after the Ready is persisted.
        self.messages: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_timeout_ticks
        # Ticks since this node started, the clock of the leader lease.
        self.tick_count = 0
        self.lead_transferee: NodeId = NO_NODE
        # Index of the newest conf change proposed by this leader. Another may be
        # proposed only once the log is applied up to it.
        self.pending_conf_index = 0
        self.uncommitted_size_bytes = 0
        self.read_only = ReadOnly(config.read_only_option, config.max_pending_read_requests)
        # Reads that arrived before this leader committed an entry of its term.
        self.pending_read_index_messages: list[Message] = []
        # Upper bound for every ReadIndex result, local or forwarded, or None
        # for none. The replica actor sets it to the index that its shard
        # stores' read leases allow (see actors/store_leases.py).
        self.read_index_cap: Callable[[], int] | None = None

        hard_state, conf_state = storage.initial_state()
        changer = Changer(self.tracker, self.log.last_index())
        self.switch_to_config(*restore(changer, conf_state))
        if not hard_state.is_empty():
            self._load_state(hard_state)
        if config.applied > 0:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NO_NODE)

    # --- State snapshots for Ready ---

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(lead=self.lead, state=self.state)

    def _load_state(self, hard_state: HardState) -> None:
        if hard_state.commit > self.log.last_index():
            raise StorageUnavailable(
                f"stored commit index {hard_state.commit} is above the last stored index "
                f"{self.log.last_index()}; the stored log is truncated or corrupt"
            )
        # A commit below the snapshot index means the caller persisted a snapshot
        # but crashed before the hard state; the snapshot itself is committed.
        self.log.committed = max(self.log.committed, hard_state.commit)
        self.term = hard_state.term
        self.vote = hard_state.vote

    # --- Sending ---

    def send(self, message: Message) -> None:
        """Queue `message`, stamping the sender and, for most types, the term.

        Vote messages and responses carry an explicit term (a pre-vote uses the
        term the candidate would move to). PROP and READ_INDEX keep term 0 because
        they are forwarded requests, treated as local by the leader.
        """
        if message.type in VOTE_TYPES or message.type in (
            MessageType.VOTE_RESP,
            MessageType.PRE_VOTE_RESP,
        ):
            assert message.term != 0, f"{message.type} must carry a term"
        elif message.type not in (MessageType.PROP, MessageType.READ_INDEX):
            assert message.term == 0, f"{message.type} term is set by send()"
            message = replace(message, term=self.term)
        if message.from_ == NO_NODE:
            message = replace(message, from_=self.id)
        self.messages.append(message)

    # --- Role changes ---

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NO_NODE
        self.lead = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self.lead_transferee = NO_NODE
        self.tracker.reset_votes()
        last_index = self.log.last_index()
        for node_id, old in list(self.tracker.progress.items()):
            self.tracker.progress[node_id] = Progress(
                match=last_index if node_id == self.id else 0,
                next=last_index + 1,
                inflights=Inflights(self.config.max_inflight_msgs),
                is_learner=old.is_learner,
                recent_active=False,
            )
        self.pending_conf_index = 0
        self.uncommitted_size_bytes = 0
        self.read_only = ReadOnly(
            self.config.read_only_option, self.config.max_pending_read_requests
        )
        self.pending_read_index_messages = []

    def _reset_randomized_election_timeout(self) -> None:
        timeout = self.config.election_timeout_ticks
        self.randomized_election_timeout = timeout + self.config.rng.randrange(timeout)

    def become_follower(self, term: int, lead: NodeId) -> None:
        previous_lead = self.lead
        self._reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER
        if lead != previous_lead or lead == NO_NODE:
            logger.info("%s became follower at term %d, leader %r", self.id, term, lead)

    def become_pre_candidate(self) -> None:
        assert self.state is not StateType.LEADER, "leader cannot become pre-candidate"
        # A pre-candidate keeps its term and vote, so a failed pre-vote disturbs no one.
        self.tracker.reset_votes()
        self.lead = NO_NODE
        self.state = StateType.PRE_CANDIDATE
        logger.info("%s became pre-candidate at term %d", self.id, self.term)

    def become_candidate(self) -> None:
        assert self.state is not StateType.LEADER, "leader cannot become candidate"
        self._reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE
        logger.info("%s became candidate at term %d", self.id, self.term)

    def become_leader(self) -> None:
        assert self.state is not StateType.FOLLOWER, "follower cannot become leader directly"
        self._reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        own = self.tracker.progress[self.id]
        own.become_replicate()
        own.recent_active = True
        # Conf changes in the log may be unapplied, so wait for them before a new one.
        self.pending_conf_index = self.log.last_index()
        # An entry of the new term lets the leader commit everything before it,
        # because the leader commits by counting replicas only in its own term.
        appended = self.append_entry([Entry()])
        assert appended, "the empty entry of a new leader cannot exceed size limits"
        logger.info("%s became leader at term %d", self.id, self.term)

    # --- Clock ---

    def tick(self) -> None:
        self.tick_count += 1
        if self.state is StateType.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MessageType.HUP, from_=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_timeout_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                self.step(Message(MessageType.CHECK_QUORUM, from_=self.id))
            if self.state is StateType.LEADER and self.lead_transferee != NO_NODE:
                logger.info("%s aborts transfer to %s: timed out", self.id, self.lead_transferee)
                self.lead_transferee = NO_NODE
        if self.state is not StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(MessageType.BEAT, from_=self.id))

    # --- Step ---

    def in_lease(self) -> bool:
        """Return whether this node still trusts a leader and so ignores votes.

        With lease-based reads, a node also ignores votes for its first election
        timeout after start, because it may have acknowledged a lease before it
        crashed and forgot the leader.
        """
        if not self.config.check_quorum:
            return False
        timeout = self.config.election_timeout_ticks
        restart_guard = self.config.read_only_option == LEASE_BASED and self.tick_count < timeout
        return (self.lead != NO_NODE and self.election_elapsed < timeout) or restart_guard

    def step(self, message: Message) -> None:
        """Process one message. Raises ProposalDropped for a proposal or read that
        cannot be accepted now."""
        if message.term > self.term:
            if message.type in VOTE_TYPES:
                forced = message.context == election.CAMPAIGN_TRANSFER_CONTEXT
                if not forced and self.in_lease():
                    logger.debug(
                        "%s ignores %s from %s at term %d: leader %r is active",
                        self.id, message.type.value, message.from_, message.term, self.lead,
                    )
                    return
            if message.type is MessageType.PRE_VOTE:
                pass  # a pre-vote never changes this node's term
            elif message.type is MessageType.PRE_VOTE_RESP and not message.reject:
                pass  # the term moves when the pre-vote wins and the real election starts
            elif message.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
                self.become_follower(message.term, message.from_)
            else:
                self.become_follower(message.term, NO_NODE)
        elif 0 < message.term < self.term:
            self._step_stale(message)
            return

        if message.type is MessageType.HUP:
            campaign_type = (
                election.CampaignType.PRE_ELECTION
                if self.config.pre_vote
                else election.CampaignType.ELECTION
            )
            election.hup(self, campaign_type)
        elif message.type in VOTE_TYPES:
            election.handle_vote_request(self, message)
        elif self.state is StateType.LEADER:
            replication.step_leader(self, message)
        elif self.state in (StateType.CANDIDATE, StateType.PRE_CANDIDATE):
            election.step_candidate(self, message)
        else:
            follower.step_follower(self, message)

    def _step_stale(self, message: Message) -> None:
        if (self.config.check_quorum or self.config.pre_vote) and message.type in (
            MessageType.HEARTBEAT,
            MessageType.APP,
        ):
            # The sender leads an older term. This node may have raised its term
            # while partitioned, and under CheckQuorum its votes are ignored, so
            # respond with the newer term to make the old leader step down.
            self.send(Message(MessageType.APP_RESP, to=message.from_))
        elif message.type is MessageType.PRE_VOTE:
            self.send(
                Message(
                    MessageType.PRE_VOTE_RESP, to=message.from_, term=self.term, reject=True
                )
            )
        else:
            logger.debug(
                "%s ignores %s from %s at stale term %d (current %d)",
                self.id, message.type.value, message.from_, message.term, self.term,
            )

    def promotable(self) -> bool:
        progress = self.tracker.progress.get(self.id)
        return (
            progress is not None and not progress.is_learner and not self.log.has_pending_snapshot()
        )

    # --- Log and membership ---

    def append_entry(self, entries: list[Entry]) -> bool:
        """Append proposals at the leader's term. Returns False, appending nothing,
        above the uncommitted size limit."""
        last_index = self.log.last_index()
        stamped = [
            replace(entry, index=last_index + 1 + offset, term=self.term)
            for offset, entry in enumerate(entries)
        ]
        payload_bytes = sum(len(entry.data) for entry in stamped)
        limit = self.config.max_uncommitted_entries_size_bytes
        if self.uncommitted_size_bytes > 0 and payload_bytes > 0:
            if self.uncommitted_size_bytes + payload_bytes > limit:
                return False
        self.uncommitted_size_bytes += payload_bytes
        new_last_index = self.log.append(stamped)
        self.tracker.progress[self.id].maybe_update(new_last_index)
        self.maybe_commit()
        return True

    def reduce_uncommitted_size(self, entries: tuple[Entry, ...]) -> None:
        if self.state is not StateType.LEADER:
            return
        payload_bytes = sum(len(entry.data) for entry in entries)
        self.uncommitted_size_bytes = max(0, self.uncommitted_size_bytes - payload_bytes)

    def maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum stores. Returns whether it moved."""
        if not self.log.maybe_commit(self.tracker.committed(), self.term):
            return False
        read_index.release_pending_read_index_messages(self)
        return True

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        changer = Changer(self.tracker, self.log.last_index())
        if change.leaves_joint():
            config, progress = changer.leave_joint()
        elif change.enters_joint():
            config, progress = changer.enter_joint(change.auto_leaves(), change.changes)
        else:
            config, progress = changer.simple(change.changes)
        return self.switch_to_config(config, progress)

    def switch_to_config(self, config: TrackerConfig, progress: ProgressMap) -> ConfState:
        self.tracker.config = config
        self.tracker.progress = progress
        conf_state = self.tracker.conf_state()
        own = progress.get(self.id)
        self.is_learner = own is not None and own.is_learner
        logger.info("%s switched to configuration %s", self.id, conf_state)
        if self.state is not StateType.LEADER:
            return conf_state
        if own is None or self.is_learner:
            logger.info("%s steps down: removed or demoted by the new configuration", self.id)
            self.become_follower(self.term, NO_NODE)
            return conf_state
        if self.maybe_commit():
            replication.broadcast_append(self)
        else:
            for node_id, _ in self.tracker.visit():
                if node_id != self.id:
                    replication.maybe_send_append(self, node_id, send_if_empty=False)
        if self.lead_transferee != NO_NODE and self.lead_transferee not in config.voters.ids():
            self.lead_transferee = NO_NODE
        return conf_state

    def maybe_auto_leave_joint(self) -> None:
        """Propose leaving an auto-leave joint configuration once it is applied."""
        if (
            self.state is StateType.LEADER
            and self.tracker.config.auto_leave
            and self.log.applied >= self.pending_conf_index
        ):
            leave = Entry(type=EntryType.CONF_CHANGE, data=ConfChange().encode())
            try:
                self.step(Message(MessageType.PROP, from_=self.id, entries=(leave,)))
            except ProposalDropped as error:
                # Retried on the next advance, for example after a leader transfer ends.
                logger.info("%s could not propose leaving joint configuration: %s", self.id, error)
