"""ReadIndex scenarios: quorum confirmation, batching, forwarding, deposed
leaders, and opt-in lease-based reads."""

from __future__ import annotations

import random

from rayconf.actors.raft import LEASE_BASED, Config, MessageType, ReadState, StateType
from rayconf.actors.raft.testing import Network

ELECTION_TIMEOUT_TICKS = 10


def reads(network: Network, node_id: str) -> dict[bytes, int]:
    return {state.request_context: state.index for state in network.nodes[node_id].read_states}


def test_leader_read_index_returns_commit_index() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    assert network.propose("a", b"x")
    network.stabilize()

    network.nodes["a"].node.read_index(b"read-1")
    network.stabilize()

    assert network.nodes["a"].read_states == [ReadState(network.committed("a"), b"read-1")]


def test_read_waits_for_first_commit_of_new_leader() -> None:
    network = Network(["a", "b", "c"], seed=1)
    # a wins, but its empty entry of the new term cannot commit yet.
    network.message_filter = lambda m: m.type is not MessageType.APP_RESP
    network.elect("a")
    network.nodes["a"].node.read_index(b"early")
    network.tick(2)
    assert reads(network, "a") == {}

    network.message_filter = None
    network.tick(2)

    leader_raft = network.nodes["a"].node.raft
    assert leader_raft.log.term(leader_raft.log.committed) == leader_raft.term
    assert reads(network, "a") == {b"early": network.committed("a")}


def test_one_heartbeat_round_serves_several_reads() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.stabilize()
    sent = network.record_messages()

    for number in range(3):
        network.nodes["a"].node.read_index(f"read-{number}".encode())
    network.stabilize()

    heartbeats = [m for m in sent if m.type is MessageType.HEARTBEAT]
    assert sorted(m.to for m in heartbeats) == ["b", "c"]
    assert len({m.context for m in heartbeats}) == 1
    commit = network.committed("a")
    assert reads(network, "a") == {b"read-0": commit, b"read-1": commit, b"read-2": commit}


def test_follower_read_index_is_forwarded_to_leader() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    assert network.propose("a", b"x")
    network.stabilize()

    network.nodes["b"].node.read_index(b"from b")
    network.stabilize()

    assert reads(network, "b") == {b"from b": network.committed("a")}
    assert reads(network, "a") == {}


def test_deposed_leader_serves_no_stale_read() -> None:
    def without_check_quorum(node_id: str, rng: random.Random) -> Config:
        return Config(node_id=node_id, check_quorum=False, rng=rng)

    network = Network(["a", "b", "c"], seed=1, config_factory=without_check_quorum)
    network.elect("a")
    network.isolate("a")
    network.elect("b")
    assert network.propose("b", b"newer write")
    network.stabilize()
    # a still believes it leads, because without CheckQuorum it steps down only
    # when it hears of a higher term.
    assert network.leaders() == ["a", "b"]
    stale_commit = network.committed("a")
    assert stale_commit < network.committed("b")

    network.nodes["a"].node.read_index(b"stale?")
    network.tick(3 * ELECTION_TIMEOUT_TICKS)
    assert reads(network, "a") == {}

    network.heal()
    network.tick(3)
    assert network.leaders() == ["b"]
    assert reads(network, "a") == {}


def test_read_round_lost_is_retried_by_next_heartbeat() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.message_filter = lambda m: m.type is not MessageType.HEARTBEAT_RESP

    network.nodes["a"].node.read_index(b"retried")
    network.stabilize()
    assert reads(network, "a") == {}

    network.message_filter = None
    network.tick(1)
    assert reads(network, "a") == {b"retried": network.committed("a")}


def lease_config(node_id: str, rng: random.Random) -> Config:
    return Config(
        node_id=node_id, read_only_option=LEASE_BASED, lease_drift_margin_ticks=2, rng=rng
    )


def test_lease_read_needs_no_heartbeat_round() -> None:
    network = Network(["a", "b", "c"], seed=1, config_factory=lease_config)
    network.tick(4 * ELECTION_TIMEOUT_TICKS)
    leader = network.leaders()[0]
    sent = network.record_messages()

    network.nodes[leader].node.read_index(b"lease")
    network.stabilize()

    assert reads(network, leader) == {b"lease": network.committed(leader)}
    assert [m for m in sent if m.type is MessageType.HEARTBEAT] == []


def test_lease_ends_drift_margin_before_election_timeout() -> None:
    network = Network(["a", "b", "c"], seed=1, config_factory=lease_config)
    network.tick(4 * ELECTION_TIMEOUT_TICKS)
    leader = network.leaders()[0]
    leader_node = network.nodes[leader].node
    network.isolate(leader)

    # The last round a quorum confirmed was sent on the latest tick. The lease
    # lasts election timeout (10) minus drift margin (2) ticks from that tick.
    network.tick(7)
    leader_node.read_index(b"inside lease")
    network.stabilize()
    assert reads(network, leader) == {b"inside lease": network.committed(leader)}
    # Store read leases are bounded by this count, so it ends with the lease.
    assert leader_node.lease_remaining_ticks() == 1

    network.tick(1)
    assert network.state(leader) is StateType.LEADER
    assert leader_node.lease_remaining_ticks() == 0
    leader_node.read_index(b"after lease")
    network.stabilize()
    assert b"after lease" not in reads(network, leader)


def test_lease_unused_after_leader_transfer_attempt() -> None:
    network = Network(["a", "b", "c"], seed=1, config_factory=lease_config)
    network.tick(4 * ELECTION_TIMEOUT_TICKS)
    leader = network.leaders()[0]
    transferee = "b" if leader != "b" else "c"
    # The MsgTimeoutNow is lost, so the transfer times out and leader stays.
    network.message_filter = lambda m: m.type is not MessageType.TIMEOUT_NOW
    network.nodes[leader].node.transfer_leader(transferee)
    network.tick(ELECTION_TIMEOUT_TICKS + 1)
    network.message_filter = None
    assert network.leaders() == [leader]
    assert network.nodes[leader].node.status().lead_transferee == ""
    sent = network.record_messages()

    network.nodes[leader].node.read_index(b"after transfer")
    network.stabilize()

    # The read waited for a heartbeat round, because a delayed MsgTimeoutNow
    # could still start an election that ignores the lease.
    assert [m for m in sent if m.type is MessageType.HEARTBEAT] != []
    assert reads(network, leader) == {b"after transfer": network.committed(leader)}


def test_restarted_follower_does_not_vote_during_lease() -> None:
    network = Network(["a", "b", "c", "d", "e"], seed=1, config_factory=lease_config)
    network.elect("a")
    # d and e lose contact with a and time out; a keeps its lease through b and c.
    network.partition(["a", "b", "c"], ["d", "e"])
    network.tick(3 * ELECTION_TIMEOUT_TICKS)
    assert network.leaders() == ["a"]

    # b restarts without knowing the leader, then joins d and e.
    network.crash("b")
    network.restart("b")
    network.partition(["a", "c"], ["b", "d", "e"])
    network.nodes["d"].node.campaign()
    network.stabilize()

    # Had b voted, d would lead b and e, commit, and a's lease reads would be stale.
    assert network.leaders() == ["a"]
    network.nodes["a"].node.read_index(b"in lease")
    network.stabilize()
    committed_anywhere = max(network.committed(node_id) for node_id in network.nodes)
    assert reads(network, "a") == {b"in lease": committed_anywhere}


def test_lease_read_index_inside_lease_only() -> None:
    network = Network(["a", "b", "c"], seed=1, config_factory=lease_config)
    network.tick(4 * ELECTION_TIMEOUT_TICKS)
    leader = network.leaders()[0]
    follower = next(node for node in network.nodes if node != leader)
    leader_node = network.nodes[leader].node

    assert leader_node.lease_read_index() == network.committed(leader)
    assert network.nodes[follower].node.lease_read_index() is None

    # The same tick at which a ReadIndex request stops being served from the lease.
    network.isolate(leader)
    network.tick(7)
    assert leader_node.lease_read_index() == network.committed(leader)
    network.tick(1)
    assert network.state(leader) is StateType.LEADER
    assert leader_node.lease_read_index() is None


def test_lease_read_index_needs_term_commit() -> None:
    network = Network(["a", "b", "c"], seed=1, config_factory=lease_config)
    network.tick(4 * ELECTION_TIMEOUT_TICKS)
    old = network.leaders()[0]
    network.isolate(old)
    # The next leader's entry of its own term cannot commit.
    network.message_filter = lambda m: m.type is not MessageType.APP_RESP
    for _ in range(6 * ELECTION_TIMEOUT_TICKS):
        network.tick(1)
        if [node for node in network.leaders() if node != old]:
            break
    new = next(node for node in network.leaders() if node != old)
    network.tick(3)
    raft = network.nodes[new].node.raft
    # Followers reply to heartbeats, so the lease holds, but no entry of the new term is committed.
    assert raft.read_only.lease_valid(raft.tick_count, ELECTION_TIMEOUT_TICKS, 2)
    assert raft.log.term(raft.log.committed) != raft.term
    assert network.nodes[new].node.lease_read_index() is None

    network.message_filter = None
    network.tick(2)
    assert raft.log.term(raft.log.committed) == raft.term
    assert network.nodes[new].node.lease_read_index() == network.committed(new)


def test_lease_read_index_is_none_without_lease_reads() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    network.stabilize()
    assert network.nodes["a"].node.lease_read_index() is None


def test_read_index_cap_bounds_local_and_forwarded_reads() -> None:
    network = Network(["a", "b", "c"], seed=1)
    network.elect("a")
    for number in range(3):
        assert network.propose("a", f"x{number}".encode())
    network.stabilize()
    commit = network.committed("a")
    cap = commit - 2
    network.nodes["a"].node.set_read_index_cap(lambda: cap)

    network.nodes["a"].node.read_index(b"local")
    network.nodes["b"].node.read_index(b"forwarded")
    network.stabilize()

    assert reads(network, "a") == {b"local": cap}
    assert reads(network, "b") == {b"forwarded": cap}
