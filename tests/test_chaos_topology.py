"""Data-center topologies and their network faults: reachability, blocked replica pairs and quorums."""

from __future__ import annotations

import random

import pytest

from rayconf.errors import InvalidRequest
from rayconf.sims import chaos_topology as topo
from rayconf.sims.chaos_nemesis import ChaosFault, parse_chaos_faults

HEALTHY = topo.NetworkFault("none")


def test_healthy_ring_routes_between_non_neighbours() -> None:
    ring = topo.ring()
    assert not ring.graph.has_edge("dc-a", "dc-c")
    assert topo.reachable(ring, HEALTHY, "dc-a", "dc-c")
    assert topo.blocked_pairs(ring, HEALTHY) == set()
    assert topo.data_centers_without_quorum(ring, HEALTHY) == set()


def test_isolated_data_center_loses_quorum_alone() -> None:
    triangle = topo.triangle()
    fault = topo.isolate(triangle, "dc-c")
    blocked = topo.blocked_pairs(triangle, fault)
    assert ("dc-c-1", "dc-a-1") in blocked
    assert ("dc-a-1", "dc-c-1") in blocked
    assert ("dc-a-1", "dc-b-1") not in blocked
    assert topo.data_centers_without_quorum(triangle, fault) == {"dc-c"}


def test_bridge_keeps_sides_apart_without_transit() -> None:
    triangle = topo.triangle()
    fault = topo.bridge(triangle, "dc-b")
    assert not topo.reachable(triangle, fault, "dc-a", "dc-c")
    assert not topo.reachable(triangle, fault, "dc-c", "dc-a")
    assert topo.reachable(triangle, fault, "dc-a", "dc-b")
    assert topo.reachable(triangle, fault, "dc-c", "dc-b")
    # Each side still reaches two of three voters, so no data center lacks a quorum.
    assert topo.data_centers_without_quorum(triangle, fault) == set()


def test_bridge_in_ring_blocks_the_long_way_round() -> None:
    ring = topo.ring()
    fault = topo.bridge(ring, "dc-a")
    assert not topo.reachable(ring, fault, "dc-b", "dc-d")
    assert topo.reachable(ring, fault, "dc-b", "dc-c")
    assert topo.reachable(ring, fault, "dc-e", "dc-a")


def test_one_way_loss_cuts_only_outgoing() -> None:
    triangle = topo.triangle()
    fault = topo.one_way(triangle, "dc-a")
    blocked = topo.blocked_pairs(triangle, fault)
    assert ("dc-a-1", "dc-b-1") in blocked
    assert ("dc-b-1", "dc-a-1") not in blocked
    # A majority needs round trips, so the sender is the one without a quorum.
    assert topo.data_centers_without_quorum(triangle, fault) == {"dc-a"}


def test_ring_split_brain_leaves_minority_side_without_quorum() -> None:
    ring = topo.ring()
    fault = topo.split(ring, ["dc-a", "dc-b"])
    assert topo.data_centers_without_quorum(ring, fault) == {"dc-a", "dc-b"}
    assert topo.reachable(ring, fault, "dc-c", "dc-e")
    assert not topo.reachable(ring, fault, "dc-b", "dc-c")


def test_witness_topology_quorums() -> None:
    witness = topo.two_plus_witness()
    assert witness.voter_count() == 5
    assert topo.data_centers_without_quorum(witness, topo.isolate(witness, "dc-a")) == {"dc-a"}
    assert topo.data_centers_without_quorum(witness, topo.isolate(witness, "dc-w")) == {"dc-w"}


def test_random_partition_covers_every_kind() -> None:
    rng = random.Random(7)
    ring = topo.ring()
    kinds = {topo.random_partition(ring, rng, "dc-a").kind for _ in range(200)}
    assert kinds == {"isolate", "split", "bridge", "one-way", "leader-isolated"}


def test_unknown_topology_rejected() -> None:
    with pytest.raises(InvalidRequest, match="'square'.*triangle"):
        topo.build_topology("square")


def test_chaos_fault_list_parsing() -> None:
    assert parse_chaos_faults("partition,kill,pause,dc-loss") == (
        ChaosFault.PARTITION, ChaosFault.KILL, ChaosFault.PAUSE, ChaosFault.DC_LOSS)
    assert parse_chaos_faults("all") == tuple(ChaosFault)
    assert parse_chaos_faults("none") == ()
    with pytest.raises(InvalidRequest, match="'crash'"):
        parse_chaos_faults("partition,crash")
