"""An in-memory cluster of RawNodes for tests and simulations.

`Network` drives every node the way a replica would. It persists each Ready to a
`MemoryStorage`, queues the Ready's messages, applies committed entries to a small
state machine (the list of applied payloads) and calls `advance`.

Messages wait in one queue and pass a fault filter on delivery: blocked links,
crashed nodes, random drops, duplicates, delays of several ticks and reordering.
All random choices come from one seeded `random.Random`, so a seed reproduces a
run. A crash keeps only what the storage persisted. A restart builds a new RawNode
from it and replays the committed log after the latest snapshot.

The network also records the checks that Raft's safety properties need: the
leaders seen per term and the entry each node applied at each index.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rayconf.actors.raft.config import Config
from rayconf.actors.raft.errors import ConfChangeRejected, ProposalDropped, StepPeerNotFound
from rayconf.actors.raft.rawnode import RawNode
from rayconf.actors.raft.storage import MemoryStorage
from rayconf.actors.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    NodeId,
    ReadState,
    StateType,
)

logger = logging.getLogger(__name__)

ConfigFactory = Callable[[NodeId, random.Random], Config]
MessageFilter = Callable[[Message], bool]

# Maximum message deliveries per `stabilize` call; reaching it means the cluster
# kept sending, which is a bug in a test without ticks.
STABILIZE_DELIVERIES_MAX = 200_000


def default_config(node_id: NodeId, rng: random.Random) -> Config:
    return Config(node_id=node_id, election_timeout_ticks=10, heartbeat_interval_ticks=1, rng=rng)


@dataclass(slots=True)
class MemoryNode:
    """One member: its RawNode (None while crashed), storage and applied state."""

    node_id: NodeId
    storage: MemoryStorage
    raw: RawNode | None
    conf_state: ConfState
    applied_index: int = 0
    # The state machine: payloads of the non-empty normal entries applied, in log
    # order. Snapshots contain it, and a restart rebuilds it from the snapshot.
    state: list[bytes] = field(default_factory=list)
    # Every entry this node applied, by index, kept across crashes for the checks.
    # Entries covered by an installed snapshot are missing.
    applied_entries: dict[int, Entry] = field(default_factory=dict)
    read_states: list[ReadState] = field(default_factory=list)

    @property
    def node(self) -> RawNode:
        assert self.raw is not None, f"node {self.node_id} is crashed"
        return self.raw


class Network:
    def __init__(
        self,
        voters: Iterable[NodeId],
        learners: Iterable[NodeId] = (),
        seed: int = 0,
        config_factory: ConfigFactory = default_config,
    ) -> None:
        self.rng = random.Random(seed)
        self.config_factory = config_factory
        voter_ids = tuple(sorted(voters))
        learner_ids = tuple(sorted(learners))
        self.nodes: dict[NodeId, MemoryNode] = {}
        for node_id in voter_ids + learner_ids:
            storage = MemoryStorage()
            storage.bootstrap(voter_ids, learner_ids)
            self.nodes[node_id] = MemoryNode(node_id, storage, None, ConfState())
            self._start(node_id)
        self.queue: list[Message] = []
        self.blocked_links: set[tuple[NodeId, NodeId]] = set()
        self.drop_probability = 0.0
        self.duplicate_probability = 0.0
        self.reorder = False
        # A delayed message waits 1 to `delay_ticks_max` ticks before it is queued again.
        self.delay_probability = 0.0
        self.delay_ticks_max = 20
        self.delayed: list[tuple[int, Message]] = []
        self.tick_count = 0
        # Returns False for a message to drop; set by scenario tests.
        self.message_filter: MessageFilter | None = None
        self.leaders_by_term: dict[int, set[NodeId]] = {}
        # Snapshot and compact a node's storage after this many applied entries.
        self.snapshot_interval_entries: int | None = None
        # Every message sent while recording; see `record_messages`.
        self.sent_messages: list[Message] | None = None
        # Apply the founding configuration on every node.
        self.stabilize()

    # --- Membership of the simulation ---

    def _start(self, node_id: NodeId) -> None:
        member = self.nodes[node_id]
        snapshot = member.storage.snapshot()
        config = self.config_factory(node_id, random.Random(self.rng.getrandbits(64)))
        config.applied = snapshot.metadata.index
        member.raw = RawNode(config, member.storage)
        member.applied_index = snapshot.metadata.index
        member.conf_state = snapshot.metadata.conf_state
        member.state = decode_state(snapshot.data)

    def add_node(self, node_id: NodeId) -> MemoryNode:
        """Start a new, empty node that waits to be contacted by the leader.

        The id must be new. Raft assumes that storage survives, so a removed member
        must not come back under its old id with empty storage: nodes that have not
        applied the removal still count it in their quorums.
        """
        assert node_id not in self.nodes, f"node id {node_id!r} is already used"
        storage = MemoryStorage()
        member = MemoryNode(node_id, storage, None, ConfState())
        self.nodes[node_id] = member
        self._start(node_id)
        return member

    def crash(self, node_id: NodeId) -> None:
        """Stop a node. Only what its storage persisted survives."""
        self.nodes[node_id].raw = None

    def restart(self, node_id: NodeId) -> None:
        assert self.nodes[node_id].raw is None, f"node {node_id} is running"
        self._start(node_id)

    def is_up(self, node_id: NodeId) -> bool:
        member = self.nodes.get(node_id)
        return member is not None and member.raw is not None

    def up_nodes(self) -> list[MemoryNode]:
        return [member for member in self.nodes.values() if member.raw is not None]

    # --- Faults ---

    def cut(self, first: NodeId, second: NodeId) -> None:
        self.blocked_links.add((first, second))
        self.blocked_links.add((second, first))

    def isolate(self, node_id: NodeId) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Replace every blocked link with a partition into `groups`: links between
        nodes of different groups are blocked. Nodes in no group form one more group."""
        self.blocked_links.clear()
        group_of = {node_id: index for index, group in enumerate(groups) for node_id in group}
        for first in self.nodes:
            for second in self.nodes:
                if first != second and group_of.get(first) != group_of.get(second):
                    self.blocked_links.add((first, second))

    def heal(self) -> None:
        self.blocked_links.clear()

    # --- Driving ---

    def process_readies(self) -> bool:
        """Handle one Ready on every running node that has one; return whether any did."""
        progressed = False
        for member in list(self.nodes.values()):
            if member.raw is not None and member.raw.has_ready():
                self._handle_ready(member)
                progressed = True
        return progressed

    def _handle_ready(self, member: MemoryNode) -> None:
        node = member.node
        ready = node.ready()
        if ready.snapshot is not None:
            member.storage.apply_snapshot(ready.snapshot)
        member.storage.append(ready.entries)
        if ready.hard_state is not None:
            member.storage.set_hard_state(ready.hard_state)
        # Persisted: the messages may go out now.
        self.queue.extend(ready.messages)
        if self.sent_messages is not None:
            self.sent_messages.extend(ready.messages)
        if ready.snapshot is not None:
            member.applied_index = ready.snapshot.metadata.index
            member.conf_state = ready.snapshot.metadata.conf_state
            member.state = decode_state(ready.snapshot.data)
        for entry in ready.committed_entries:
            self._apply(member, entry)
        member.read_states.extend(ready.read_states)
        if ready.soft_state is not None and ready.soft_state.state is StateType.LEADER:
            term = node.raft.term
            self.leaders_by_term.setdefault(term, set()).add(member.node_id)
        node.advance(ready)
        conf_changed = any(entry.type is EntryType.CONF_CHANGE for entry in ready.committed_entries)
        self._maybe_snapshot(member, conf_changed)

    def _apply(self, member: MemoryNode, entry: Entry) -> None:
        assert entry.index == member.applied_index + 1, (
            f"{member.node_id} applies {entry.index} after {member.applied_index}"
        )
        previous = member.applied_entries.get(entry.index)
        assert previous is None or previous == entry, (
            f"{member.node_id} applied {entry} at {entry.index}, earlier {previous}"
        )
        member.applied_entries[entry.index] = entry
        member.applied_index = entry.index
        if entry.type is EntryType.NORMAL and entry.data:
            member.state.append(entry.data)
        if entry.type is EntryType.CONF_CHANGE:
            try:
                member.conf_state = member.node.apply_conf_change(ConfChange.decode(entry.data))
            except ConfChangeRejected as error:
                logger.info("%s skips conf change at %d: %s", member.node_id, entry.index, error)

    def _maybe_snapshot(self, member: MemoryNode, conf_changed: bool) -> None:
        interval = self.snapshot_interval_entries
        if interval is None:
            return
        snapshot_index = member.storage.snapshot().metadata.index
        if member.applied_index - snapshot_index >= interval:
            self.compact(member.node_id, member.applied_index)
        elif conf_changed and member.applied_index > snapshot_index:
            # A snapshot sent to a node added since the last snapshot must list it,
            # or the node ignores it (see `Storage.snapshot`).
            member.storage.create_snapshot(
                member.applied_index, member.conf_state, encode_state(member.state)
            )

    def compact(self, node_id: NodeId, index: int) -> None:
        """Snapshot a node's state machine at `index`, its applied index, and
        compact its log up to there."""
        member = self.nodes[node_id]
        assert index == member.applied_index, "the state machine exists only at applied index"
        member.storage.create_snapshot(index, member.conf_state, encode_state(member.state))
        member.storage.compact(index)

    def deliver_one(self) -> bool:
        """Deliver, drop or delay one queued message (a random one when reordering).
        Returns whether the queue had one."""
        if not self.queue:
            return False
        position = self.rng.randrange(len(self.queue)) if self.reorder else 0
        message = self.queue.pop(position)
        if self._drops(message):
            if message.type is MessageType.SNAP and self.is_up(message.from_):
                self.nodes[message.from_].node.report_snapshot(message.to, success=False)
            return True
        if self.delay_probability and self.rng.random() < self.delay_probability:
            release_tick = self.tick_count + self.rng.randint(1, self.delay_ticks_max)
            self.delayed.append((release_tick, message))
            return True
        if self.duplicate_probability and self.rng.random() < self.duplicate_probability:
            self.queue.append(message)
        try:
            self.nodes[message.to].node.step(message)
        except StepPeerNotFound:
            logger.debug("%s ignores response from removed node %s", message.to, message.from_)
        if message.type is MessageType.SNAP and self.is_up(message.from_):
            self.nodes[message.from_].node.report_snapshot(message.to, success=True)
        return True

    def _drops(self, message: Message) -> bool:
        if not self.is_up(message.to):
            return True
        if (message.from_, message.to) in self.blocked_links:
            return True
        if self.message_filter is not None and not self.message_filter(message):
            return True
        return bool(self.drop_probability) and self.rng.random() < self.drop_probability

    def stabilize(self) -> None:
        """Handle Readies and deliver messages until nothing is left to do."""
        for _ in range(STABILIZE_DELIVERIES_MAX):
            progressed = self.process_readies()
            delivered = self.deliver_one()
            if not progressed and not delivered:
                return
        raise AssertionError("network did not stabilize; nodes keep sending messages")

    def tick(self, count: int = 1) -> None:
        """Tick every running node `count` times, stabilizing after each tick."""
        for _ in range(count):
            self.tick_count += 1
            still_delayed: list[tuple[int, Message]] = []
            for release_tick, message in self.delayed:
                if release_tick <= self.tick_count:
                    self.queue.append(message)
                else:
                    still_delayed.append((release_tick, message))
            self.delayed = still_delayed
            for member in self.up_nodes():
                member.node.tick()
            self.stabilize()

    # --- Shortcuts for tests ---

    def record_messages(self) -> list[Message]:
        """Start recording sent messages from now on; return the list they go to."""
        self.sent_messages = []
        return self.sent_messages

    def elect(self, node_id: NodeId) -> None:
        self.nodes[node_id].node.campaign()
        self.stabilize()

    def propose(self, node_id: NodeId, data: bytes) -> bool:
        """Propose on a node; return False if the proposal was dropped."""
        try:
            self.nodes[node_id].node.propose(data)
        except ProposalDropped:
            return False
        return True

    def leaders(self) -> list[NodeId]:
        return sorted(
            member.node_id
            for member in self.up_nodes()
            if member.node.raft.state is StateType.LEADER
        )

    def state(self, node_id: NodeId) -> StateType:
        return self.nodes[node_id].node.raft.state

    def term(self, node_id: NodeId) -> int:
        return self.nodes[node_id].node.raft.term

    def committed(self, node_id: NodeId) -> int:
        return self.nodes[node_id].node.raft.log.committed

    def applied_data(self, node_id: NodeId) -> list[bytes]:
        """Return a node's state machine: the payloads it applied, in log order."""
        return list(self.nodes[node_id].state)


def encode_state(state: list[bytes]) -> bytes:
    return json.dumps([payload.hex() for payload in state]).encode()


def decode_state(data: bytes) -> list[bytes]:
    if not data:
        return []
    return [bytes.fromhex(payload) for payload in json.loads(data)]
