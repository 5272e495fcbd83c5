"""Log replication scenarios: commit, batching, flow control, backtracking,
the rule that a leader commits only entries of its own term, and snapshots."""

from __future__ import annotations

import random

from rayconf.actors.raft import (
    Config,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    StateType,
)
from rayconf.actors.raft.storage import bootstrap_entries
from rayconf.actors.raft.testing import MemoryNode, Network
from rayconf.actors.raft.types import ENTRY_OVERHEAD_BYTES

ELECTION_TIMEOUT_TICKS = 10


def appends_to(messages: list[Message], to: str) -> list[Message]:
    return [m for m in messages if m.type is MessageType.APP and m.to == to]


def test_log_replication_commits_on_every_node() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")

    for number in range(5):
        assert network.propose("a", f"put {number}".encode())
    network.stabilize()

    expected = [f"put {number}".encode() for number in range(5)]
    for node_id in ("a", "b", "c"):
        assert network.applied_data(node_id) == expected
        assert network.committed(node_id) == network.committed("a")


def test_follower_forwards_proposal_to_leader() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")

    assert network.propose("c", b"from a follower")
    network.stabilize()

    assert network.applied_data("a") == [b"from a follower"]


def test_minority_cannot_commit() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    committed_before = network.committed("a")

    network.isolate("a")
    assert network.propose("a", b"never committed")
    network.stabilize()

    assert network.committed("a") == committed_before
    assert network.applied_data("a") == []


def test_append_messages_respect_max_size() -> None:
    max_size_bytes = 300

    def small_messages(node_id: str, rng: random.Random) -> Config:
        return Config(node_id=node_id, max_size_per_msg_bytes=max_size_bytes, rng=rng)

    network = Network(["a", "b", "c"], seed=1, config_factory=small_messages)
    network.elect("a")
    network.crash("c")
    payload = b"x" * 100
    for _ in range(20):
        assert network.propose("a", payload)
    network.stabilize()
    sent = network.record_messages()

    network.restart("c")
    network.tick(3)

    entries_per_message = max_size_bytes // (len(payload) + ENTRY_OVERHEAD_BYTES)
    catch_up = [m for m in appends_to(sent, "c") if m.entries]
    assert catch_up, "c received no entries"
    for message in catch_up:
        assert len(message.entries) <= entries_per_message
    assert network.applied_data("c") == [payload] * 20


def test_replicate_state_caps_inflight_messages() -> None:
    max_inflight_msgs = 3

    def small_window(node_id: str, rng: random.Random) -> Config:
        return Config(node_id=node_id, max_inflight_msgs=max_inflight_msgs, rng=rng)

    network = Network(["a", "b", "c"], seed=1, config_factory=small_window)
    network.elect("a")
    # b receives everything but its acknowledgements are lost.
    network.message_filter = lambda m: not (m.from_ == "b" and m.type is MessageType.APP_RESP)
    sent = network.record_messages()

    for number in range(10):
        assert network.propose("a", f"put {number}".encode())
        network.stabilize()

    with_entries = [m for m in appends_to(sent, "b") if m.entries]
    assert len(with_entries) == max_inflight_msgs
    assert network.nodes["a"].node.status().progress["b"].inflight_msgs == max_inflight_msgs

    # Once acknowledgements flow again, heartbeats unstick the window and b catches up.
    network.message_filter = None
    network.tick(3)
    assert network.applied_data("b") == network.applied_data("a")
    assert len(network.applied_data("b")) == 10


def test_reject_hint_skips_divergent_term() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")

    # a, cut off, appends 30 entries that will never commit, then steps down.
    network.isolate("a")
    for number in range(30):
        assert network.propose("a", f"lost {number}".encode())
    network.stabilize()
    network.tick(3 * ELECTION_TIMEOUT_TICKS)
    new_leaders = network.leaders()
    assert len(new_leaders) == 1
    assert new_leaders[0] != "a"

    for number in range(5):
        assert network.propose(new_leaders[0], f"kept {number}".encode())
    network.stabilize()
    # A further election makes the leader's first probe to a land on an index
    # where a stores a divergent term-2 entry.
    other = "b" if new_leaders[0] == "c" else "c"
    network.nodes[new_leaders[0]].node.transfer_leader(other)
    network.stabilize()
    assert network.leaders() == [other]

    sent = network.record_messages()
    network.heal()
    network.tick(2)

    # Without the hint the leader would step back one entry per rejection, 6 times.
    rejections = [m for m in sent if m.type is MessageType.APP_RESP and m.from_ == "a" and m.reject]
    assert len(rejections) == 1
    assert network.state("a") is StateType.FOLLOWER
    kept = [f"kept {number}".encode() for number in range(5)]
    assert network.applied_data("a") == kept


def start_node_with_log(node_id: str, entries: list[Entry], hard_state: HardState) -> MemoryStorage:
    storage = MemoryStorage()
    storage.append(entries)
    storage.set_hard_state(hard_state)
    return storage


def test_old_term_entry_not_committed_by_counting() -> None:
    """The scenario known as Figure 8 of the Raft paper (Ongaro and Ousterhout, 2014).

    s1 led term 2 and stored its entry (term 2) only on itself. s5 led term 3 and
    stored a different entry at the same index only on itself. s1 leads again in
    term 4 and copies its term-2 entry to s2 and s3, so a majority stores it, but
    the append with s1's own term-4 entry is lost. Counting replicas would commit
    the term-2 entry. Yet s5 can still win term 5 and overwrite it, so the leader
    must not commit it.
    """
    voters = ("s1", "s2", "s3", "s4", "s5")
    founding, _ = bootstrap_entries(voters)
    founding_last = len(founding)
    entry_term_2 = Entry(index=founding_last + 1, term=2, data=b"term 2")
    entry_term_3 = Entry(index=founding_last + 1, term=3, data=b"term 3")
    logs = {node_id: list(founding) for node_id in voters}
    logs["s1"].append(entry_term_2)
    logs["s5"].append(entry_term_3)

    def one_entry_per_message(node_id: str, rng: random.Random) -> Config:
        return Config(
            node_id=node_id,
            pre_vote=False,
            check_quorum=False,
            max_size_per_msg_bytes=1,
            rng=rng,
        )

    network = Network(voters, seed=8, config_factory=one_entry_per_message)
    for node_id in voters:
        storage = start_node_with_log(
            node_id, logs[node_id], HardState(term=3, commit=founding_last)
        )
        conf_state = network.nodes[node_id].conf_state
        network.nodes[node_id] = MemoryNode(node_id, storage, None, conf_state)
        network.restart(node_id)
    network.stabilize()

    # Term 4: s1 reaches only s2 and s3. The first append to each is a probe that
    # they reject; every later append that carries the term-4 entry is lost.
    appends_seen: set[str] = set()

    def lose_term_4_appends(message: Message) -> bool:
        if message.type is not MessageType.APP:
            return True
        first = message.to not in appends_seen
        appends_seen.add(message.to)
        return first or all(entry.term != 4 for entry in message.entries)

    network.partition(["s1", "s2", "s3"], ["s4", "s5"])
    network.message_filter = lose_term_4_appends
    network.nodes["s1"].node.campaign()
    network.stabilize()
    network.tick(2)

    assert network.state("s1") is StateType.LEADER
    assert network.term("s1") == 4
    progress = network.nodes["s1"].node.status().progress
    assert progress["s2"].match == entry_term_2.index
    assert progress["s3"].match == entry_term_2.index
    assert network.committed("s1") == founding_last, "a term-2 entry was committed by counting"

    # s1 crashes; s5 wins term 5 with s2, s3 and s4 and overwrites the entry.
    network.crash("s1")
    network.message_filter = None
    network.heal()
    for _ in range(2):
        if network.state("s5") is not StateType.LEADER:
            network.nodes["s5"].node.campaign()
            network.stabilize()
    assert network.state("s5") is StateType.LEADER
    network.tick(1)

    for node_id in ("s2", "s3", "s4", "s5"):
        assert network.nodes[node_id].applied_entries[entry_term_3.index] == entry_term_3
    assert all(entry.data != b"term 2" for entry in network.nodes["s1"].applied_entries.values())


def test_lagging_follower_catches_up_from_snapshot() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.crash("c")
    for number in range(50):
        assert network.propose("a", f"put {number}".encode())
    network.stabilize()
    for node_id in ("a", "b"):
        network.compact(node_id, network.nodes[node_id].applied_index)
    first_after_compaction = network.nodes["a"].storage.first_index()
    sent = network.record_messages()

    network.restart("c")
    network.tick(3)
    assert network.propose("a", b"after snapshot")
    network.stabilize()

    snapshots = [m for m in sent if m.type is MessageType.SNAP and m.to == "c"]
    assert len(snapshots) == 1
    assert snapshots[0].snapshot is not None
    assert snapshots[0].snapshot.metadata.index == first_after_compaction - 1
    c_storage = network.nodes["c"].storage
    assert c_storage.snapshot().metadata.index == first_after_compaction - 1
    assert network.nodes["c"].conf_state.voters == ("a", "b", "c")
    assert network.applied_data("c")[-1] == b"after snapshot"
    assert network.committed("c") == network.committed("a")
    progress = network.nodes["a"].node.status().progress["c"]
    assert progress.match == network.nodes["a"].node.raft.log.last_index()
