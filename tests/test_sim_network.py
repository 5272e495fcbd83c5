"""Each partition kind blocks exactly the links it should, and the cluster reacts as Raft must.

The scenarios start a 5-node simulation without clients or nemesis, wait for a
leader, cut the network by hand and watch elections, commits and reads.
"""

from __future__ import annotations

import itertools
import random

from rayconf.actors.raft import Message, MessageType, StateType
from rayconf.sims.config import SimConfig
from rayconf.sims.network import (
    LinkConditions,
    PartitionKind,
    SimNetwork,
    asymmetric_partition,
    bridge_partition,
    isolate_partition,
    symmetric_partition,
)
from rayconf.sims.node import AttemptTag, Reply, SimNode
from rayconf.sims.simulator import Simulation
from rayconf.store.records import Command, Put, RangeRequest, Txn

NODES = ["n1", "n2", "n3", "n4", "n5"]
SETTLE_MS = 1_000


def blocked_links(partition_blocked: frozenset[tuple[str, str]]) -> set[tuple[str, str]]:
    return {link for link in itertools.permutations(NODES, 2) if link in partition_blocked}


def test_symmetric_partition_blocks_both_directions() -> None:
    partition = symmetric_partition(["n1", "n2"], ["n3", "n4", "n5"])

    expected = {(a, b) for a in ("n1", "n2") for b in ("n3", "n4", "n5")}
    expected |= {(b, a) for a, b in expected}
    assert partition.kind is PartitionKind.SYMMETRIC
    assert blocked_links(partition.blocked) == expected


def test_asymmetric_partition_blocks_one_direction() -> None:
    partition = asymmetric_partition(["n1"], ["n2", "n3", "n4", "n5"])

    assert blocked_links(partition.blocked) == {("n1", other) for other in NODES[1:]}


def test_bridge_partition_keeps_bridge_links() -> None:
    partition = bridge_partition(["n1", "n2", "n3"], ["n4", "n5"], bridge="n1")

    blocked = blocked_links(partition.blocked)
    for far in ("n4", "n5"):
        assert ("n1", far) not in blocked
        assert (far, "n1") not in blocked
        for near in ("n2", "n3"):
            assert (near, far) in blocked
            assert (far, near) in blocked
    assert ("n2", "n3") not in blocked
    assert ("n4", "n5") not in blocked


def test_isolate_partition_cuts_every_link_of_node() -> None:
    partition = isolate_partition("n3", NODES)

    expected = {("n3", other) for other in NODES if other != "n3"}
    expected |= {(other, "n3") for other in NODES if other != "n3"}
    assert blocked_links(partition.blocked) == expected


def test_lossy_links_drop_duplicate_reorder() -> None:
    network = SimNetwork(random.Random(5), LinkConditions(1, 40, 0.2, 0.2, 0.3, 60))

    outcomes = [network.delivery_delays_ms(Message(MessageType.HEARTBEAT, "n2", "n1"), 0) for _ in range(2_000)]

    assert any(not delays for delays in outcomes)
    assert any(len(delays) == 2 for delays in outcomes)
    assert max(max(delays) for delays in outcomes if delays) > 40
    assert network.statistics.reordered > 0


def test_link_conditions_apply_to_one_link() -> None:
    network = SimNetwork(random.Random(5))
    network.link_conditions[("n1", "n2")] = LinkConditions(drop_probability=1.0)

    flaky = [network.delivery_delays_ms(Message(MessageType.HEARTBEAT, "n2", "n1"), 0) for _ in range(50)]
    reverse = [network.delivery_delays_ms(Message(MessageType.HEARTBEAT, "n1", "n2"), 0) for _ in range(50)]

    assert all(delays == [] for delays in flaky)
    assert all(len(delays) == 1 for delays in reverse)
    network.restore_links()
    assert network.delivery_delays_ms(Message(MessageType.HEARTBEAT, "n2", "n1"), 0) != []


def test_link_delivers_in_order_without_reordering() -> None:
    network = SimNetwork(random.Random(3), LinkConditions(delay_ms_min=1, delay_ms_max=30))

    arrivals_ms = []
    delays_ms = []
    for now_ms in range(100):
        delay_ms = network.delivery_delays_ms(Message(MessageType.APP, "n2", "n1"), now_ms)[0]
        delays_ms.append(delay_ms)
        arrivals_ms.append(now_ms + delay_ms)

    assert arrivals_ms == sorted(arrivals_ms)
    assert len(set(delays_ms)) > 1


# --- Scenarios on a running cluster ---


def started_cluster(seed: int = 1) -> Simulation:
    simulation = Simulation(SimConfig(seed=seed, faults=(), operation_count=0))
    simulation.advance(SETTLE_MS)
    assert simulation.leader() is not None, "no leader after the first second"
    return simulation


def leaders(simulation: Simulation) -> list[SimNode]:
    return [node for node in simulation.nodes.values() if node.role is StateType.LEADER]


def capture_replies(node: SimNode) -> list[Reply]:
    replies: list[Reply] = []
    node.send_reply = replies.append
    return replies


def test_symmetric_split_elects_leader_in_majority() -> None:
    simulation = started_cluster()
    old_leader = simulation.leader()
    assert old_leader is not None
    minority = sorted([old_leader.node_id, next(n for n in NODES if n != old_leader.node_id)])
    majority = [node for node in NODES if node not in minority]

    simulation.network.partition = symmetric_partition(minority, majority)
    simulation.advance(SETTLE_MS)

    current = [node.node_id for node in leaders(simulation)]
    assert len(current) == 1
    assert current[0] in majority
    assert old_leader.role is not StateType.LEADER  # stepped down by CheckQuorum
    assert simulation.network.statistics.dropped_partition > 0


def test_asymmetric_cut_of_leader_output_elects_another() -> None:
    simulation = started_cluster()
    old_leader = simulation.leader()
    assert old_leader is not None
    others = [node for node in NODES if node != old_leader.node_id]

    simulation.network.partition = asymmetric_partition([old_leader.node_id], others)
    simulation.advance(SETTLE_MS)

    new_leader = simulation.leader()
    assert new_leader is not None
    assert new_leader.node_id in others
    assert simulation.network.is_blocked(old_leader.node_id, others[0])
    assert not simulation.network.is_blocked(others[0], old_leader.node_id)


def test_bridge_partition_keeps_cluster_committing() -> None:
    simulation = started_cluster()
    simulation.network.partition = bridge_partition(["n1", "n2", "n3"], ["n4", "n5"], bridge="n1")
    simulation.advance(SETTLE_MS)

    leader = simulation.leader()
    assert leader is not None
    replies = capture_replies(leader)
    tag = AttemptTag(0, 1, 1)
    leader.submit_write(tag, Command(Txn(success=(Put(b"/sim/g0/a", b"bridged"),)), request_id="bridge-1"))
    simulation.process(leader)
    simulation.advance(SETTLE_MS)

    assert [reply.tag for reply in replies] == [tag]
    assert not replies[0].dropped


def test_isolated_leader_serves_nothing() -> None:
    simulation = started_cluster()
    old_leader = simulation.leader()
    assert old_leader is not None
    replies = capture_replies(old_leader)

    simulation.network.partition = isolate_partition(old_leader.node_id, NODES)
    old_leader.submit_read(AttemptTag(0, 1, 1), RangeRequest(b"/sim/g0/a"))
    old_leader.submit_write(
        AttemptTag(0, 2, 1), Command(Txn(success=(Put(b"/sim/g0/a", b"lost"),)), request_id="isolated-1")
    )
    simulation.process(old_leader)
    simulation.advance(SETTLE_MS)

    assert [reply for reply in replies if not reply.dropped] == []
    new_leader = simulation.leader()
    assert new_leader is not None
    assert new_leader.node_id != old_leader.node_id
    assert new_leader.mvcc.get(b"/sim/g0/a") is None


def test_heal_brings_back_single_leader() -> None:
    simulation = started_cluster()
    simulation.network.partition = symmetric_partition(["n1", "n2"], ["n3", "n4", "n5"])
    simulation.advance(SETTLE_MS)

    simulation.network.heal()
    simulation.advance(SETTLE_MS)

    assert len(leaders(simulation)) == 1
    applied = {node.applied_index for node in simulation.nodes.values()}
    assert len(applied) == 1
