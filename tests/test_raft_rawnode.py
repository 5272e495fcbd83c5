"""The RawNode contract: what a Ready carries, in which order the caller must
handle it, and how a node restarts from what it persisted."""

from __future__ import annotations

import random

import pytest

from rayconf.actors.raft import (
    Config,
    ConfChange,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    ReadyNotAdvanced,
    StateType,
    StepLocalMessage,
)
from rayconf.actors.raft.progress import ProgressState
from rayconf.actors.raft.testing import Network


def new_node(node_id: str) -> tuple[RawNode, MemoryStorage]:
    """Start a member of a new cluster of a, b and c, with the founding
    configuration applied."""
    storage = MemoryStorage()
    storage.bootstrap(("a", "b", "c"))
    node = RawNode(Config(node_id=node_id, pre_vote=False, rng=random.Random(1)), storage)
    persist_and_advance(node, storage)
    return node, storage


def persist_and_advance(node: RawNode, storage: MemoryStorage) -> list[Message]:
    """Handle every pending Ready; return the messages the caller would send."""
    messages: list[Message] = []
    while node.has_ready():
        ready = node.ready()
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        messages.extend(ready.messages)
        for entry in ready.committed_entries:
            if entry.type is EntryType.CONF_CHANGE:
                node.apply_conf_change(ConfChange.decode(entry.data))
        node.advance(ready)
    return messages


def test_candidate_ready_carries_vote_with_requests() -> None:
    node, _ = new_node("a")

    node.campaign()
    ready = node.ready()

    assert ready.hard_state is not None
    assert ready.hard_state.vote == "a"
    assert ready.must_sync
    vote_requests = [m for m in ready.messages if m.type is MessageType.VOTE]
    assert sorted(m.to for m in vote_requests) == ["b", "c"]
    assert all(m.term == ready.hard_state.term for m in vote_requests)


def test_follower_ready_carries_entries_with_append_response() -> None:
    node, storage = new_node("b")
    last_index = storage.last_index()
    leader_term = storage.hard_state.term + 1
    append = Message(
        MessageType.APP,
        to="b",
        from_="a",
        term=leader_term,
        index=last_index,
        log_term=storage.term(last_index),
        # The empty entry that a new leader appends in its term.
        entries=(Entry(index=last_index + 1, term=leader_term),),
        commit=last_index,
    )

    node.step(append)
    ready = node.ready()

    assert [entry.index for entry in ready.entries] == [last_index + 1]
    assert ready.must_sync
    responses = [m for m in ready.messages if m.type is MessageType.APP_RESP]
    assert len(responses) == 1
    assert responses[0].index == last_index + 1
    assert not responses[0].reject


def test_ready_twice_without_advance_raises() -> None:
    node, _ = new_node("a")
    node.campaign()

    node.ready()

    assert not node.has_ready()
    with pytest.raises(ReadyNotAdvanced):
        node.ready()


def test_local_message_from_network_raises() -> None:
    node, _ = new_node("a")

    with pytest.raises(StepLocalMessage):
        node.step(Message(MessageType.HUP, to="a", from_="b"))


def test_proposal_without_leader_raises() -> None:
    node, _ = new_node("a")

    with pytest.raises(ProposalDropped, match="no leader"):
        node.propose(b"x")


def test_restart_recovers_term_vote_and_log() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    assert network.propose("a", b"durable")
    network.stabilize()
    term = network.term("b")
    last_index = network.nodes["b"].node.raft.log.last_index()

    network.crash("b")
    network.restart("b")
    network.stabilize()

    raft = network.nodes["b"].node.raft
    assert raft.term == term
    assert raft.log.last_index() == last_index
    assert raft.state is StateType.FOLLOWER
    assert network.applied_data("b") == [b"durable"]


def test_uncommitted_limit_drops_proposals() -> None:
    def small_limit(node_id: str, rng: random.Random) -> Config:
        return Config(node_id=node_id, max_uncommitted_entries_size_bytes=250, rng=rng)

    network = Network(["a", "b", "c"], seed=1, config_factory=small_limit)
    network.elect("a")
    network.isolate("a")

    accepted = 0
    with pytest.raises(ProposalDropped, match="max_uncommitted_entries_size_bytes"):
        for _ in range(10):
            network.nodes["a"].node.propose(b"x" * 100)
            accepted += 1
    assert accepted == 2

    network.heal()
    network.tick(2)
    assert network.propose("a", b"x" * 100)


def test_committed_entries_split_across_readies() -> None:
    entry_size_bytes = Entry(data=b"x" * 100).size_bytes()

    def small_readies(node_id: str, rng: random.Random) -> Config:
        return Config(
            node_id=node_id, max_committed_size_per_ready_bytes=2 * entry_size_bytes, rng=rng
        )

    network = Network(["a"], seed=1, config_factory=small_readies)
    network.elect("a")
    node = network.nodes["a"].node
    for _ in range(5):
        node.propose(b"x" * 100)

    sizes = []
    while node.has_ready():
        ready = node.ready()
        network.nodes["a"].storage.append(ready.entries)
        if ready.hard_state is not None:
            network.nodes["a"].storage.set_hard_state(ready.hard_state)
        sizes.append(len(ready.committed_entries))
        node.advance(ready)

    assert sizes == [2, 2, 1]


def test_report_unreachable_moves_follower_to_probe() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    assert network.propose("a", b"x")
    network.stabilize()
    assert network.nodes["a"].node.status().progress["b"].state is ProgressState.REPLICATE

    network.nodes["a"].node.report_unreachable("b")

    assert network.nodes["a"].node.status().progress["b"].state is ProgressState.PROBE
