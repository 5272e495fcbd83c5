"""Raft messages between replica actors: batched, fire-and-forget, with a fault filter.

Each replica owns one `Transport`. `send` queues messages per destination and
`flush` delivers each queue as one actor call, `receive(batch)`, without
waiting for a reply: Raft retries by itself, so a lost batch costs a round,
never safety. Actor handles are looked up by name and cached. A dead or
restarting peer only produces a failed call, which is logged and counted.

The `FaultFilter` decides per message whether it is delivered, dropped or
delayed. In production it is empty and passes everything. Tests and the
nemesis set partitions (blocked member pairs), a drop probability and a delay.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import ray

from rayconf.actors.raft.types import Message, NodeId

logger = logging.getLogger(__name__)

# Messages kept per destination before the oldest are dropped; Raft resends.
QUEUE_MESSAGES_MAX = 10_000


def replica_actor_name(member: NodeId) -> str:
    return f"replica-{member}"


@dataclass(slots=True)
class FaultFilter:
    """Network faults that a replica applies to its own outgoing messages."""

    # Ordered pairs (from, to) whose messages are dropped.
    blocked: set[tuple[NodeId, NodeId]] = field(default_factory=set)
    drop_probability: float = 0.0
    delay_ms: int = 0
    seed: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def is_inert(self) -> bool:
        return not self.blocked and self.drop_probability == 0.0 and self.delay_ms == 0

    def allows(self, message: Message) -> bool:
        if (message.from_, message.to) in self.blocked:
            return False
        return not (self.drop_probability and self._rng.random() < self.drop_probability)


class Transport:
    """Outgoing Raft messages of one replica actor."""

    def __init__(self, member: NodeId, namespace: str) -> None:
        self.member = member
        self.namespace = namespace
        self.faults = FaultFilter()
        self._queues: dict[NodeId, list[Message]] = defaultdict(list)
        self._handles: dict[NodeId, Any] = {}
        self.sent_batches = 0
        self.dropped_messages = 0
        self.failed_lookups = 0

    def set_faults(self, blocked: set[tuple[NodeId, NodeId]], drop_probability: float, delay_ms: int,
                   seed: int) -> None:
        self.faults = FaultFilter(set(blocked), drop_probability, delay_ms, seed, random.Random(seed))

    def send(self, messages: list[Message]) -> None:
        for message in messages:
            if not self.faults.allows(message):
                self.dropped_messages += 1
                continue
            queue = self._queues[message.to]
            queue.append(message)
            if len(queue) > QUEUE_MESSAGES_MAX:
                del queue[0]
                self.dropped_messages += 1

    def flush(self) -> None:
        """Deliver every queued batch as one call per destination."""
        for destination, queue in list(self._queues.items()):
            if not queue:
                continue
            batch = list(queue)
            queue.clear()
            handle = self._handle(destination)
            if handle is None:
                self.dropped_messages += len(batch)
                continue
            if self.faults.delay_ms:
                asyncio.get_running_loop().call_later(self.faults.delay_ms / 1000, self._deliver, handle, batch)
            else:
                self._deliver(handle, batch)

    def _deliver(self, handle: Any, batch: list[Message]) -> None:
        handle.receive.remote(batch)
        self.sent_batches += 1

    def _handle(self, member: NodeId) -> Any:
        handle = self._handles.get(member)
        if handle is not None:
            return handle
        try:
            handle = ray.get_actor(replica_actor_name(member), namespace=self.namespace)
        except ValueError:
            self.failed_lookups += 1
            if self.failed_lookups % 100 == 1:
                logger.warning("replica %s cannot find peer %s (lookup failures: %d)",
                               self.member, member, self.failed_lookups)
            return None
        self._handles[member] = handle
        return handle

    def forget(self, member: NodeId) -> None:
        """Drop the cached handle of `member`, so the next send looks it up again."""
        self._handles.pop(member, None)

    def statistics(self) -> dict[str, object]:
        return {
            "sent_batches": self.sent_batches,
            "dropped_messages": self.dropped_messages,
            "failed_lookups": self.failed_lookups,
            "faults_inert": self.faults.is_inert(),
        }
