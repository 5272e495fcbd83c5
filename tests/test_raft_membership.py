"""Membership changes and leader transfer: single-step changes, joint consensus,
one pending change at a time, learners, and handing leadership over."""

from __future__ import annotations

import pytest

from rayconf.actors.raft import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    ProposalDropped,
    StateType,
)
from rayconf.actors.raft.confchange import Changer
from rayconf.actors.raft.testing import Network

ELECTION_TIMEOUT_TICKS = 10

ADD = ConfChangeType.ADD_NODE
ADD_LEARNER = ConfChangeType.ADD_LEARNER_NODE
REMOVE = ConfChangeType.REMOVE_NODE


def change(
    *pairs: tuple[ConfChangeType, str],
    transition: ConfChangeTransition = ConfChangeTransition.AUTO,
) -> ConfChange:
    return ConfChange(tuple(ConfChangeSingle(kind, node_id) for kind, node_id in pairs), transition)


def test_single_step_add_voter() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    assert network.propose("a", b"before d")
    network.stabilize()

    network.add_node("d")
    network.nodes["a"].node.propose_conf_change(change((ADD, "d")))
    network.tick(3)

    for node_id in ("a", "b", "c", "d"):
        assert network.nodes[node_id].conf_state.voters == ("a", "b", "c", "d")
    assert network.applied_data("d") == [b"before d"]
    # d now counts: with two nodes down, the other three still commit.
    network.crash("c")
    assert network.propose("a", b"with d")
    network.stabilize()
    assert network.applied_data("d")[-1] == b"with d"


def test_single_step_remove_voter() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")

    network.nodes["a"].node.propose_conf_change(change((REMOVE, "c")))
    network.stabilize()

    assert network.nodes["a"].conf_state.voters == ("a", "b")
    assert "c" not in network.nodes["a"].node.raft.tracker.progress
    # a and b are the whole cluster now, so c's absence does not block commits.
    network.crash("c")
    assert network.propose("a", b"without c")
    network.stabilize()
    assert network.applied_data("b") == [b"without c"]


def test_removed_leader_steps_down() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")

    network.nodes["a"].node.propose_conf_change(change((REMOVE, "a")))
    network.stabilize()
    assert network.state("a") is StateType.FOLLOWER

    network.tick(3 * ELECTION_TIMEOUT_TICKS)
    leaders = network.leaders()
    assert len(leaders) == 1
    assert leaders[0] in ("b", "c")
    assert network.nodes[leaders[0]].conf_state.voters == ("b", "c")


def test_second_conf_change_rejected_while_first_pending() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.add_node("d")
    network.add_node("e")

    network.nodes["a"].node.propose_conf_change(change((ADD, "d")))
    with pytest.raises(ConfChangeRejected, match="not applied yet"):
        network.nodes["a"].node.propose_conf_change(change((ADD, "e")))

    network.stabilize()
    network.nodes["a"].node.propose_conf_change(change((ADD, "e")))
    network.stabilize()
    assert network.nodes["a"].conf_state.voters == ("a", "b", "c", "d", "e")


def test_change_removing_every_voter_is_rejected() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")

    with pytest.raises(ConfChangeRejected, match="removes all voters"):
        network.nodes["a"].node.propose_conf_change(
            change((REMOVE, "a"), (REMOVE, "b"), (REMOVE, "c"))
        )
    assert network.nodes["a"].node.raft.pending_conf_index <= network.nodes["a"].applied_index


def test_simple_change_of_two_voters_is_rejected() -> None:
    network = Network(["a", "b", "c"], seed=1)
    changer = Changer(network.nodes["a"].node.raft.tracker, last_index=10)

    # Changing two voters in one step could split the majorities. A ConfChange
    # with AUTO transition goes through a joint configuration instead.
    with pytest.raises(ConfChangeRejected, match="one voter"):
        changer.simple((ConfChangeSingle(ADD, "d"), ConfChangeSingle(REMOVE, "c")))
    assert ConfChange((ConfChangeSingle(ADD, "d"), ConfChangeSingle(REMOVE, "c"))).enters_joint()


def test_learner_receives_log_and_is_promoted() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.add_node("d")
    network.nodes["a"].node.propose_conf_change(change((ADD_LEARNER, "d")))
    network.stabilize()
    assert network.nodes["a"].conf_state.learners == ("d",)
    assert network.propose("a", b"for the learner")
    network.tick(3)
    assert network.applied_data("d") == [b"for the learner"]

    network.nodes["a"].node.propose_conf_change(change((ADD, "d")))
    network.stabilize()

    assert network.nodes["d"].conf_state.voters == ("a", "b", "c", "d")
    assert network.nodes["d"].conf_state.learners == ()


def run_until(network: Network, condition: object, deliveries_max: int = 10_000) -> None:
    assert callable(condition)
    for _ in range(deliveries_max):
        if condition():
            return
        network.process_readies()
        network.deliver_one()
    raise AssertionError("condition not reached")


def test_joint_change_survives_leader_crash() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.add_node("d")
    network.add_node("e")

    # Replace c with d and e: {a, b, c} -> {a, b, d, e} through a joint config.
    network.nodes["a"].node.propose_conf_change(change((ADD, "d"), (ADD, "e"), (REMOVE, "c")))

    def leader_is_joint() -> bool:
        return bool(network.nodes["a"].conf_state.voters_outgoing)

    run_until(network, leader_is_joint)
    # a applied the joint configuration and may have proposed to leave it, but the
    # proposal was not persisted or sent yet when it crashes.
    final = ConfState(voters=("a", "b", "d", "e"))
    network.crash("a")
    network.queue.clear()
    for node_id in ("b", "c", "d", "e"):
        assert network.nodes[node_id].conf_state != final
    network.tick(4 * ELECTION_TIMEOUT_TICKS)

    leaders = network.leaders()
    assert len(leaders) == 1
    new_leader = leaders[0]
    assert network.nodes[new_leader].conf_state == final
    network.restart("a")
    network.tick(3)
    for node_id in ("a", "b", "d", "e"):
        assert network.nodes[node_id].conf_state == final
    assert network.propose(new_leader, b"after the change")
    network.stabilize()
    for node_id in ("a", "b", "d", "e"):
        assert network.applied_data(node_id)[-1] == b"after the change"


def test_explicit_joint_config_waits_for_leave() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.add_node("d")

    network.nodes["a"].node.propose_conf_change(
        change((ADD, "d"), transition=ConfChangeTransition.JOINT_EXPLICIT)
    )
    network.tick(3)
    joint = network.nodes["a"].conf_state
    assert joint.voters == ("a", "b", "c", "d")
    assert joint.voters_outgoing == ("a", "b", "c")
    with pytest.raises(ConfChangeRejected, match="joint"):
        network.nodes["a"].node.propose_conf_change(change((REMOVE, "b")))

    network.nodes["a"].node.propose_conf_change(ConfChange())
    network.stabilize()
    assert network.nodes["a"].conf_state == ConfState(voters=("a", "b", "c", "d"))


def test_demoted_voter_becomes_learner_when_joint_is_left() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.add_node("d")

    network.nodes["a"].node.propose_conf_change(change((ADD, "d"), (ADD_LEARNER, "c")))
    network.tick(3)

    assert network.nodes["a"].conf_state == ConfState(voters=("a", "b", "d"), learners=("c",))
    assert network.nodes["c"].node.raft.is_learner


# --- Leader transfer ---


def test_leader_transfer_to_up_to_date_follower() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    term_before = network.term("a")

    network.nodes["a"].node.transfer_leader("b")
    network.stabilize()

    assert network.leaders() == ["b"]
    assert network.term("b") == term_before + 1
    assert network.nodes["a"].node.raft.lead == "b"


def test_leader_transfer_waits_for_transferee_to_catch_up() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.crash("c")
    for number in range(5):
        assert network.propose("a", f"put {number}".encode())
    network.stabilize()
    network.restart("c")

    network.nodes["a"].node.transfer_leader("c")
    with pytest.raises(ProposalDropped, match="transferring"):
        network.nodes["a"].node.propose(b"during transfer")
    network.tick(3)

    assert network.leaders() == ["c"]
    assert len(network.applied_data("c")) == 5
    assert network.propose("c", b"after transfer")
    network.stabilize()
    assert network.applied_data("a")[-1] == b"after transfer"


def test_leader_transfer_aborts_after_election_timeout() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.crash("c")

    network.nodes["a"].node.transfer_leader("c")
    assert network.nodes["a"].node.status().lead_transferee == "c"
    network.tick(ELECTION_TIMEOUT_TICKS)

    assert network.leaders() == ["a"]
    assert network.nodes["a"].node.status().lead_transferee == ""
    assert network.propose("a", b"accepted again")
    network.stabilize()
    assert network.applied_data("b") == [b"accepted again"]


def test_leader_transfer_to_learner_is_ignored() -> None:
    network = Network(["a", "b"], learners=["l"], seed=1)
    network.elect("a")

    network.nodes["a"].node.transfer_leader("l")
    network.stabilize()

    assert network.leaders() == ["a"]
    assert network.nodes["a"].node.status().lead_transferee == ""
