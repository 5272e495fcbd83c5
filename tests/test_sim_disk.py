"""The simulated disk keeps synced writes across a crash and loses a suffix of the rest."""

from __future__ import annotations

import random

from rayconf.actors.raft import Entry, HardState
from rayconf.sims.disk import AppendEntries, SetHardState, SimDisk, copy_storage

VOTERS = ("n1", "n2", "n3")


def disk_with_synced_and_unsynced_writes() -> SimDisk:
    """Bootstrap (entries 1-3), then entry 4 synced, then entries 5-6 and term 3 unsynced."""
    disk = SimDisk.bootstrapped(VOTERS)
    disk.write(AppendEntries((Entry(index=4, term=2, data=b"synced"),)))
    disk.write(SetHardState(HardState(term=2, vote="n1", commit=4)))
    disk.sync()
    disk.write(AppendEntries((Entry(index=5, term=3, data=b"a"), Entry(index=6, term=3, data=b"b"))))
    disk.write(SetHardState(HardState(term=3, vote="n2", commit=4)))
    return disk


def test_unsynced_writes_visible_before_crash() -> None:
    disk = disk_with_synced_and_unsynced_writes()
    assert disk.live.last_index() == 6
    assert disk.live.initial_state()[0].term == 3
    assert disk.durable.last_index() == 4


def test_crash_loses_every_unsynced_write() -> None:
    disk = disk_with_synced_and_unsynced_writes()

    lost = disk.crash(random.Random(0), kept_writes=0)
    storage = disk.recover()

    assert lost == 2
    assert storage.last_index() == 4
    assert storage.entries(4, 5, 2**63)[0].data == b"synced"
    assert storage.initial_state()[0] == HardState(term=2, vote="n1", commit=4)
    assert disk.statistics.writes_lost == 2


def test_crash_keeps_prefix_in_order() -> None:
    disk = disk_with_synced_and_unsynced_writes()

    disk.crash(random.Random(0), kept_writes=1)
    storage = disk.recover()

    # The entries were written first, so they survive without the later hard state.
    assert storage.last_index() == 6
    assert storage.initial_state()[0].term == 2


def test_random_crash_recovers_some_prefix() -> None:
    full = [(4, 2), (6, 2), (6, 3)]  # (last index, term) after 0, 1 and 2 kept writes
    seen = set()
    for seed in range(40):
        disk = disk_with_synced_and_unsynced_writes()
        disk.crash(random.Random(seed))
        storage = disk.recover()
        outcome = (storage.last_index(), storage.initial_state()[0].term)
        assert outcome in full
        seen.add(outcome)
    assert seen == set(full)


def test_synced_writes_survive_crash() -> None:
    disk = disk_with_synced_and_unsynced_writes()
    disk.sync()

    assert disk.crash(random.Random(0), kept_writes=0) == 0
    storage = disk.recover()

    assert storage.last_index() == 6
    assert storage.initial_state()[0].term == 3


def test_recovered_storage_independent_of_durable_image() -> None:
    disk = disk_with_synced_and_unsynced_writes()
    disk.crash(random.Random(0), kept_writes=0)
    storage = disk.recover()

    storage.append([Entry(index=5, term=9, data=b"new")])

    assert disk.durable.last_index() == 4
    assert copy_storage(disk.durable).last_index() == 4
