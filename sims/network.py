"""The simulated network between Raft nodes: delay, loss, duplication, partitions.

Every message gets its own delay, drawn when it is sent. A link delivers in the
order of sending, as a TCP connection does: a message never arrives before one
sent earlier on the same link. With `reorder_probability` a message skips that
rule and also waits an extra random time, which reorders it past later ones.
Loss and duplication are drawn per message. A partition is a set of blocked directed links, checked when a
message arrives, so a partition that starts while a message is in flight still
stops it. `conditions` apply to every link, and `link_conditions` replace them on
single directed links, for example the links of one flaky node. Both change over
a run.

Clients are not on this network: they reach every running node (see
`clients.py`), so a client can still talk to a leader that the partition cut off
from the other nodes, which is the case a stale read needs.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from rayconf.actors.raft import Message, NodeId

logger = logging.getLogger(__name__)

Link = tuple[NodeId, NodeId]


@dataclass(slots=True)
class LinkConditions:
    """Delay and fault rates of the links between nodes."""

    delay_ms_min: int = 1
    delay_ms_max: int = 5
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0
    # Extra delay of a reordered message, drawn from [1, reorder_delay_ms_max].
    reorder_delay_ms_max: int = 30
    # A few messages arrive very late, after elections and membership changes
    # that happened meanwhile. Their extra delay is drawn from [1, long_delay_ms_max].
    long_delay_probability: float = 0.0
    long_delay_ms_max: int = 2_000


class PartitionKind(str, enum.Enum):
    # Two groups that cannot reach each other in either direction.
    SYMMETRIC = "symmetric"
    # Messages from the first group to the second are lost; the other way works.
    ASYMMETRIC = "asymmetric"
    # Two groups cut from each other, except one node of the first group that
    # reaches both.
    BRIDGE = "bridge"
    # The leader (or, without one, any node) is cut from every other node.
    ISOLATE_LEADER = "isolate_leader"


@dataclass(frozen=True, slots=True)
class Partition:
    """A partition as the report shows it: the kind, the groups and the blocked links."""

    kind: PartitionKind
    groups: tuple[tuple[NodeId, ...], ...]
    blocked: frozenset[Link]

    def describe(self) -> str:
        groups = " | ".join(",".join(group) for group in self.groups)
        return f"{self.kind.value} partition [{groups}]"


def symmetric_partition(first: Sequence[NodeId], second: Sequence[NodeId]) -> Partition:
    blocked = {(a, b) for a in first for b in second} | {(b, a) for a in first for b in second}
    return Partition(PartitionKind.SYMMETRIC, (tuple(first), tuple(second)), frozenset(blocked))


def asymmetric_partition(senders: Sequence[NodeId], receivers: Sequence[NodeId]) -> Partition:
    """Block messages from `senders` to `receivers` only."""
    blocked = {(a, b) for a in senders for b in receivers}
    return Partition(PartitionKind.ASYMMETRIC, (tuple(senders), tuple(receivers)), frozenset(blocked))


def bridge_partition(first: Sequence[NodeId], second: Sequence[NodeId], bridge: NodeId) -> Partition:
    """Cut `first` from `second` in both directions, except `bridge`, a member of
    `first` that keeps its links to both groups."""
    assert bridge in first, f"bridge node {bridge} must be in the first group {first}"
    cut_off = [node for node in first if node != bridge]
    blocked = {(a, b) for a in cut_off for b in second} | {(b, a) for a in cut_off for b in second}
    return Partition(PartitionKind.BRIDGE, (tuple(first), tuple(second), (bridge,)), frozenset(blocked))


def isolate_partition(node: NodeId, others: Sequence[NodeId]) -> Partition:
    blocked = {(node, other) for other in others} | {(other, node) for other in others}
    groups = ((node,), tuple(other for other in others if other != node))
    return Partition(PartitionKind.ISOLATE_LEADER, groups, frozenset(blocked))


@dataclass(slots=True)
class NetworkStatistics:
    sent: int = 0
    delivered: int = 0
    dropped_random: int = 0
    dropped_partition: int = 0
    dropped_node_down: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed_long: int = 0


@dataclass(slots=True)
class SimNetwork:
    """Fates of messages between nodes, drawn from one random generator."""

    rng: random.Random
    conditions: LinkConditions = field(default_factory=LinkConditions)
    link_conditions: dict[Link, LinkConditions] = field(default_factory=dict)
    partition: Partition | None = None
    statistics: NetworkStatistics = field(default_factory=NetworkStatistics)
    # Arrival time of the latest in-order message on each link, in simulated ms.
    last_arrival_ms: dict[Link, int] = field(default_factory=dict)

    def delivery_delays_ms(self, message: Message, now_ms: int) -> list[int]:
        """Return the delay of each copy of `message` sent at `now_ms`.

        An empty list means the message is lost on the way. Two entries mean it
        was duplicated.
        """
        self.statistics.sent += 1
        link = (message.from_, message.to)
        conditions = self.link_conditions.get(link, self.conditions)
        if conditions.drop_probability and self.rng.random() < conditions.drop_probability:
            self.statistics.dropped_random += 1
            return []
        copies = 1
        if conditions.duplicate_probability and self.rng.random() < conditions.duplicate_probability:
            copies = 2
            self.statistics.duplicated += 1
        delays = []
        for _ in range(copies):
            delay_ms = self.rng.randint(conditions.delay_ms_min, conditions.delay_ms_max)
            reordered = False
            if conditions.reorder_probability and self.rng.random() < conditions.reorder_probability:
                delay_ms += self.rng.randint(1, conditions.reorder_delay_ms_max)
                self.statistics.reordered += 1
                reordered = True
            if conditions.long_delay_probability and self.rng.random() < conditions.long_delay_probability:
                delay_ms += self.rng.randint(1, conditions.long_delay_ms_max)
                self.statistics.delayed_long += 1
                reordered = True
            if not reordered:
                # In order: wait for the previous in-order message on this link.
                arrival_ms = max(now_ms + delay_ms, self.last_arrival_ms.get(link, 0))
                self.last_arrival_ms[link] = arrival_ms
                delay_ms = arrival_ms - now_ms
            delays.append(delay_ms)
        return delays

    def is_blocked(self, sender: NodeId, receiver: NodeId) -> bool:
        return self.partition is not None and (sender, receiver) in self.partition.blocked

    def heal(self) -> None:
        self.partition = None

    def restore_links(self) -> None:
        """Put every link back to the default conditions."""
        self.conditions = LinkConditions()
        self.link_conditions.clear()
