"""A simulated disk that loses unsynced writes when its node crashes.

Each write (log entries, hard state, snapshot, compaction) reaches the node's live
`MemoryStorage` at once, as a write to the page cache would be visible to reads,
and joins a queue of unsynced writes. `sync` replays the queue onto the durable
image, like fsync. `crash` keeps a prefix of the queue, drawn from the run's
random generator, because the operating system may have flushed some of it
before the crash, and drops the rest. `recover` builds a new `MemoryStorage` from
the durable image for the restarted node.

Writes keep their order: a crash never keeps a later write without the earlier
ones, which is what an append-only log file gives. The snapshot's state machine
bytes travel inside the Raft `Snapshot.data`, so one write covers both.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Union

from rayconf.actors.raft import ConfState, Entry, HardState, MemoryStorage, Snapshot

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppendEntries:
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class SetHardState:
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class ApplySnapshot:
    """A snapshot received from the leader; it replaces the whole log."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class CreateSnapshot:
    """A snapshot of this node's own state machine at `index`."""

    index: int
    conf_state: ConfState
    data: bytes


@dataclass(frozen=True, slots=True)
class Compact:
    index: int


Write = Union[AppendEntries, SetHardState, ApplySnapshot, CreateSnapshot, Compact]


def _apply_write(storage: MemoryStorage, write: Write) -> None:
    if isinstance(write, AppendEntries):
        storage.append(write.entries)
    elif isinstance(write, SetHardState):
        storage.set_hard_state(write.hard_state)
    elif isinstance(write, ApplySnapshot):
        storage.apply_snapshot(write.snapshot)
    elif isinstance(write, CreateSnapshot):
        storage.create_snapshot(write.index, write.conf_state, write.data)
    else:
        storage.compact(write.index)


@dataclass(slots=True)
class DiskStatistics:
    writes: int = 0
    syncs: int = 0
    crashes: int = 0
    # Unsynced writes dropped by crashes.
    writes_lost: int = 0


@dataclass(slots=True)
class SimDisk:
    """The stable storage of one node: a live view and a durable image.

    Invariant: replaying `unsynced` onto `durable` gives the contents of `live`.
    """

    live: MemoryStorage = field(default_factory=MemoryStorage)
    durable: MemoryStorage = field(default_factory=MemoryStorage)
    unsynced: list[Write] = field(default_factory=list)
    statistics: DiskStatistics = field(default_factory=DiskStatistics)

    @classmethod
    def bootstrapped(cls, voters: tuple[str, ...]) -> SimDisk:
        """Return a disk holding the founding configuration, already synced."""
        disk = cls()
        disk.live.bootstrap(voters)
        disk.durable.bootstrap(voters)
        return disk

    def write(self, write: Write) -> None:
        _apply_write(self.live, write)
        self.unsynced.append(write)
        self.statistics.writes += 1

    def sync(self) -> None:
        for write in self.unsynced:
            _apply_write(self.durable, write)
        self.unsynced.clear()
        self.statistics.syncs += 1

    def crash(self, rng: random.Random, kept_writes: int | None = None) -> int:
        """Drop a suffix of the unsynced writes; return how many were lost.

        The prefix of `kept_writes` writes (by default a random length drawn from
        `rng`) becomes durable, and `live` is stale until `recover`.
        """
        if kept_writes is None:
            kept_writes = rng.randint(0, len(self.unsynced)) if self.unsynced else 0
        kept_count = min(kept_writes, len(self.unsynced))
        for write in self.unsynced[:kept_count]:
            _apply_write(self.durable, write)
        lost = len(self.unsynced) - kept_count
        self.unsynced.clear()
        self.statistics.crashes += 1
        self.statistics.writes_lost += lost
        return lost

    def recover(self) -> MemoryStorage:
        """Rebuild the live storage from the durable image and return it."""
        assert not self.unsynced, "recover() after crash(), which settles the unsynced writes"
        self.live = copy_storage(self.durable)
        return self.live


def copy_storage(source: MemoryStorage) -> MemoryStorage:
    """Return an independent `MemoryStorage` with the same snapshot, log and hard state."""
    copy = MemoryStorage()
    snapshot = source.snapshot()
    if not snapshot.is_empty():
        copy.apply_snapshot(snapshot)
    first, last = source.first_index(), source.last_index()
    if last >= first:
        copy.append(source.entries(first, last + 1, 2**63))
    copy.set_hard_state(source.initial_state()[0])
    return copy
