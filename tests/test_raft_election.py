"""Leader election scenarios: randomized timeouts, PreVote, CheckQuorum, learners."""

from __future__ import annotations

import random

import pytest

from rayconf.actors.raft import (
    Config,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    StateType,
)
from rayconf.actors.raft.testing import Network
from rayconf.errors import InvalidRequest

ELECTION_TIMEOUT_TICKS = 10


def config_without_prevote(node_id: str, rng: random.Random) -> Config:
    return Config(node_id=node_id, pre_vote=False, check_quorum=False, rng=rng)


def test_three_nodes_elect_one_leader() -> None:
    network = Network(["a", "b", "c"], seed=1)

    network.tick(3 * ELECTION_TIMEOUT_TICKS)

    leaders = network.leaders()
    assert len(leaders) == 1
    leader = leaders[0]
    for node_id in ("a", "b", "c"):
        assert network.nodes[node_id].node.raft.lead == leader
        assert network.term(node_id) == network.term(leader)
    # The new leader's empty entry is committed everywhere.
    assert network.committed("a") == network.committed("b") == network.committed("c")


@pytest.mark.parametrize("seed", range(5))
def test_election_converges_for_many_seeds(seed: int) -> None:
    network = Network(["a", "b", "c", "d", "e"], seed=seed)

    network.tick(6 * ELECTION_TIMEOUT_TICKS)

    assert len(network.leaders()) == 1
    for term, leaders in network.leaders_by_term.items():
        assert len(leaders) == 1, f"term {term} has leaders {leaders}"


def test_election_timeout_is_randomized_within_range() -> None:
    storage = MemoryStorage()
    storage.bootstrap(("a", "b", "c"))
    node = RawNode(Config(node_id="a", rng=random.Random(7)), storage)

    timeouts = set()
    for _ in range(200):
        node.raft.become_follower(node.raft.term, "")
        timeouts.add(node.raft.randomized_election_timeout)

    assert min(timeouts) >= ELECTION_TIMEOUT_TICKS
    assert max(timeouts) < 2 * ELECTION_TIMEOUT_TICKS
    assert len(timeouts) > ELECTION_TIMEOUT_TICKS // 2


def test_single_voter_elects_itself_and_commits() -> None:
    network = Network(["solo"], seed=3)

    network.tick(2 * ELECTION_TIMEOUT_TICKS)
    assert network.leaders() == ["solo"]
    assert network.propose("solo", b"x")
    network.stabilize()

    assert network.applied_data("solo") == [b"x"]


def test_prevote_keeps_rejoining_node_from_disrupting_leader() -> None:
    network = Network(["a", "b", "c"], seed=2)
    network.elect("a")
    term_before = network.term("a")

    # c hears nothing for many election timeouts; its pre-votes reach no one.
    network.isolate("c")
    network.tick(5 * ELECTION_TIMEOUT_TICKS)
    assert network.term("c") == term_before, "a pre-candidate must not raise its term"
    assert network.state("c") is not StateType.LEADER

    network.heal()
    network.tick(3 * ELECTION_TIMEOUT_TICKS)

    assert network.leaders() == ["a"]
    assert network.term("a") == term_before
    assert network.nodes["c"].node.raft.lead == "a"


def test_rejoining_node_disrupts_leader_without_prevote() -> None:
    # The counterpart of the PreVote scenario: without PreVote the isolated node
    # raises its term, and on rejoining forces the leader to step down.
    network = Network(["a", "b", "c"], seed=2, config_factory=config_without_prevote)
    network.elect("a")
    term_before = network.term("a")

    network.isolate("c")
    network.tick(5 * ELECTION_TIMEOUT_TICKS)
    assert network.term("c") > term_before

    network.heal()
    network.tick(3 * ELECTION_TIMEOUT_TICKS)
    assert network.term("a") > term_before


def test_follower_in_lease_ignores_vote_requests() -> None:
    network = Network(["a", "b", "c"], seed=4)
    network.elect("a")
    term_before = network.term("a")
    sent = network.record_messages()

    # c campaigns at once, while b and a still hear from leader a.
    network.nodes["c"].node.campaign()
    network.stabilize()

    grants = [
        message
        for message in sent
        if message.type in (MessageType.PRE_VOTE_RESP, MessageType.VOTE_RESP)
        and message.to == "c"
        and not message.reject
    ]
    assert grants == []
    assert network.leaders() == ["a"]
    assert network.term("a") == term_before


def test_check_quorum_steps_down_isolated_leader() -> None:
    network = Network(["a", "b", "c"], seed=5)
    network.elect("a")
    old_term = network.term("a")

    network.isolate("a")
    network.tick(3 * ELECTION_TIMEOUT_TICKS)

    assert network.state("a") is StateType.FOLLOWER
    new_leaders = network.leaders()
    assert len(new_leaders) == 1
    assert new_leaders[0] in ("b", "c")
    assert network.term(new_leaders[0]) > old_term
    with pytest.raises(ProposalDropped):
        network.nodes["a"].node.propose(b"to nobody")


def test_isolated_leader_stays_leader_without_check_quorum() -> None:
    network = Network(["a", "b", "c"], seed=5, config_factory=config_without_prevote)
    network.elect("a")

    network.isolate("a")
    network.tick(3 * ELECTION_TIMEOUT_TICKS)

    assert network.state("a") is StateType.LEADER


def test_learner_never_campaigns() -> None:
    network = Network(["a", "b"], learners=["learner"], seed=6)
    network.elect("a")

    network.isolate("learner")
    network.tick(10 * ELECTION_TIMEOUT_TICKS)

    assert network.state("learner") is StateType.FOLLOWER
    assert network.term("learner") == network.term("a")


def test_learner_vote_does_not_count_toward_quorum() -> None:
    network = Network(["a", "b"], learners=["learner"], seed=6)
    network.elect("a")
    assert network.propose("a", b"replicated to the learner too")
    network.stabilize()
    assert network.applied_data("learner") == [b"replicated to the learner too"]

    # With b down, a's only other contact is the learner, whose vote is not counted.
    network.crash("b")
    network.tick(10 * ELECTION_TIMEOUT_TICKS)

    assert network.leaders() == []
    assert network.state("learner") is StateType.FOLLOWER


def test_lease_based_reads_require_check_quorum() -> None:
    storage = MemoryStorage()
    storage.bootstrap(("a",))
    config = Config(node_id="a", check_quorum=False, read_only_option="lease_based")

    with pytest.raises(InvalidRequest, match="check_quorum"):
        RawNode(config, storage)


def test_stale_leader_steps_down_on_newer_term_response() -> None:
    def prevote_only(node_id: str, rng: random.Random) -> Config:
        return Config(node_id=node_id, check_quorum=False, rng=rng)

    network = Network(["a", "b", "c"], seed=7, config_factory=prevote_only)
    network.elect("a")
    network.isolate("a")
    network.elect("b")
    assert network.leaders() == ["a", "b"]
    stale_term = network.term("a")
    sent = network.record_messages()

    # After healing, a sends a heartbeat at its old term, and b and c respond
    # with their newer term.
    network.heal()
    network.nodes["a"].node.raft.step(Message(MessageType.BEAT, from_="a"))
    network.stabilize()

    newer_term_responses = [
        m for m in sent if m.type is MessageType.APP_RESP and m.to == "a" and m.term > stale_term
    ]
    assert newer_term_responses != []
    assert network.leaders() == ["b"]
    assert network.term("a") == network.term("b")
