"""Unit cases for the pieces under the step functions: storage, the unstable log,
quorum arithmetic and flow control."""

from __future__ import annotations

import pytest

from rayconf.actors.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    MemoryStorage,
    SnapshotOutOfDate,
    StorageCompacted,
    StorageUnavailable,
)
from rayconf.actors.raft.log import RaftLog
from rayconf.actors.raft.log_unstable import UnstableLog
from rayconf.actors.raft.progress import Inflights, Progress, ProgressState
from rayconf.actors.raft.quorum import (
    JointConfig,
    VoteResult,
    majority_committed_index,
    majority_vote_result,
)


def entries(*terms: int, first_index: int = 1) -> list[Entry]:
    return [Entry(index=first_index + offset, term=term) for offset, term in enumerate(terms)]


def test_memory_storage_append_replaces_conflicting_suffix() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 1, 1))

    storage.append(entries(2, 2, first_index=3))

    assert storage.last_index() == 4
    assert [storage.term(index) for index in range(1, 5)] == [1, 1, 2, 2]


def test_memory_storage_compact_keeps_term_of_compacted_index() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 2, 2, 3))
    storage.create_snapshot(3, ConfState(voters=("a",)), b"state")

    storage.compact(3)

    assert storage.first_index() == 4
    assert storage.term(3) == 2
    with pytest.raises(StorageCompacted):
        storage.term(2)
    with pytest.raises(StorageCompacted):
        storage.entries(3, 5, 2**63)
    with pytest.raises(StorageUnavailable):
        storage.entries(4, 7, 2**63)
    with pytest.raises(SnapshotOutOfDate):
        storage.create_snapshot(2, ConfState(voters=("a",)), b"older")


def test_memory_storage_entries_respect_size_but_return_one() -> None:
    storage = MemoryStorage()
    storage.append([Entry(index=index, term=1, data=b"x" * 100) for index in range(1, 6)])

    assert len(storage.entries(1, 6, 1)) == 1
    assert len(storage.entries(1, 6, 2 * Entry(data=b"x" * 100).size_bytes())) == 2


def test_unstable_stable_to_ignores_replaced_entry() -> None:
    unstable = UnstableLog(offset=5)
    unstable.truncate_and_append(entries(1, 1, 1, first_index=5))
    # Before the caller persisted 5..7, a new leader replaced 6 and 7.
    unstable.truncate_and_append(entries(2, 2, first_index=6))

    unstable.stable_to(7, 1)
    assert unstable.offset == 5

    unstable.stable_to(5, 1)
    assert unstable.offset == 6
    assert [entry.term for entry in unstable.entries] == [2, 2]


def test_find_conflict_by_term_skips_higher_terms() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 3, 3, 3, 5))
    log = RaftLog(storage)

    assert log.find_conflict_by_term(6, 4) == (5, 3)
    assert log.find_conflict_by_term(6, 2) == (2, 1)
    assert log.find_conflict_by_term(6, 0) == (0, 0)


def test_majority_committed_index() -> None:
    acked = {"a": 5, "b": 3, "c": 1}

    assert majority_committed_index(frozenset(acked), acked.__getitem__) == 3
    assert majority_committed_index(frozenset({"a", "b"}), acked.__getitem__) == 3


def test_joint_committed_index_is_minimum_of_halves() -> None:
    acked = {"a": 9, "b": 9, "c": 1, "d": 2, "e": 2}
    joint = JointConfig(incoming={"a", "b", "c"}, outgoing={"c", "d", "e"})

    assert joint.committed_index(acked.__getitem__) == 2


def test_joint_vote_needs_both_majorities() -> None:
    joint = JointConfig(incoming={"a", "b", "c"}, outgoing={"c", "d", "e"})

    assert joint.vote_result({"a": True, "b": True}) is VoteResult.PENDING
    assert joint.vote_result({"a": True, "b": True, "d": True, "e": True}) is VoteResult.WON
    assert joint.vote_result({"a": True, "b": True, "d": False, "e": False}) is VoteResult.LOST
    assert majority_vote_result(frozenset(), {}) is VoteResult.WON


def test_probe_ignores_stale_rejection() -> None:
    progress = Progress(match=3, next=8, inflights=Inflights(4))

    assert not progress.maybe_decrease_to(rejected=5, match_hint=4)
    assert progress.maybe_decrease_to(rejected=7, match_hint=4)
    assert progress.next == 5


def test_replicate_window_fills_and_frees() -> None:
    progress = Progress(match=0, next=1, inflights=Inflights(2))
    progress.become_replicate()

    progress.sent_entries(3)
    progress.sent_entries(2)
    assert progress.is_paused()
    assert progress.next == 6

    progress.maybe_update(3)
    progress.inflights.free_up_to(3)
    progress.msg_app_flow_paused = progress.inflights.full()
    assert not progress.is_paused()
    assert progress.state is ProgressState.REPLICATE


def test_conf_change_encoding_round_trips() -> None:
    original = ConfChange(
        (ConfChangeSingle(ConfChangeType.ADD_NODE, "dc1-a"),),
        ConfChangeTransition.JOINT_EXPLICIT,
        b"\x00ctx",
    )

    assert ConfChange.decode(original.encode()) == original
    assert ConfChange.decode(b"") == ConfChange()
