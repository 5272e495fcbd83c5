"""Data-center topologies as networkx graphs, and network faults as cuts of their links.

A topology is a directed graph whose nodes are data centers and whose edges
are the links between them, one edge per direction. Traffic is routed: data
center A reaches B when a path of live links leads from A to B. Every data
center forwards traffic for others unless a fault marks it as no-transit,
which is how a bridge fault keeps two sides apart while both reach the
bridge.

A `NetworkFault` names the links it cuts (one direction or both) and the data
centers that stop forwarding. `blocked_pairs` turns the graph and a fault into
the (from, to) member pairs that the replicas' transport fault filters drop.

Each builder returns the graph together with the voters of each data center,
so the same description places replicas and computes quorums.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx

from rayconf.errors import InvalidRequest

# Names of the topologies that `build_topology` builds.
TOPOLOGY_NAMES = ("triangle", "witness", "ring")


@dataclass(frozen=True, slots=True)
class Topology:
    """Data centers, their links and the voters placed in each."""

    name: str
    graph: nx.DiGraph
    # Voter member names per data center, in data-center order.
    voters: Mapping[str, tuple[str, ...]]

    def data_centers(self) -> tuple[str, ...]:
        return tuple(self.voters)

    def voter_count(self) -> int:
        return sum(len(members) for members in self.voters.values())


@dataclass(frozen=True, slots=True)
class NetworkFault:
    """A set of cut links and no-transit data centers; empty means a healthy network."""

    kind: str
    # Directed links (from, to) that carry no traffic.
    cut_links: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    # Data centers that still send and receive, but forward nothing for others.
    no_transit: frozenset[str] = field(default_factory=frozenset)
    description: str = ""


def _links(data_centers: Iterable[str], pairs: Iterable[tuple[str, str]]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(data_centers)
    for a, b in pairs:
        graph.add_edge(a, b)
        graph.add_edge(b, a)
    return graph


def triangle() -> Topology:
    """Three data centers, each linked to both others, one voter each."""
    names = ("dc-a", "dc-b", "dc-c")
    return Topology("triangle", _links(names, itertools.combinations(names, 2)),
                    {name: (f"{name}-1",) for name in names})


def two_plus_witness() -> Topology:
    """Two main data centers with two voters each, and a witness data center with one voter."""
    names = ("dc-a", "dc-b", "dc-w")
    voters = {"dc-a": ("dc-a-1", "dc-a-2"), "dc-b": ("dc-b-1", "dc-b-2"), "dc-w": ("dc-w-1",)}
    return Topology("witness", _links(names, itertools.combinations(names, 2)), voters)


def ring() -> Topology:
    """Five data centers in a ring, each linked to its two neighbours, one voter each."""
    names = ("dc-a", "dc-b", "dc-c", "dc-d", "dc-e")
    pairs = [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]
    return Topology("ring", _links(names, pairs), {name: (f"{name}-1",) for name in names})


def build_topology(name: str) -> Topology:
    builders = {"triangle": triangle, "witness": two_plus_witness, "ring": ring}
    if name not in builders:
        raise InvalidRequest(f"topology {name!r} is unknown; choose one of {list(TOPOLOGY_NAMES)}")
    return builders[name]()


# --- Reachability. ---


def reachable(topology: Topology, fault: NetworkFault, source: str, target: str) -> bool:
    """Return whether traffic from `source` reaches `target` under `fault`."""
    if source == target:
        return True
    graph = topology.graph.copy()
    graph.remove_edges_from(fault.cut_links)
    # A no-transit data center may be an end point, never a hop in between.
    hops = [dc for dc in fault.no_transit if dc not in (source, target)]
    graph.remove_nodes_from(hops)
    return bool(nx.has_path(graph, source, target))


def blocked_pairs(topology: Topology, fault: NetworkFault) -> set[tuple[str, str]]:
    """Return the (from, to) voter pairs whose messages `fault` drops."""
    blocked = set()
    for source, target in itertools.permutations(topology.data_centers(), 2):
        if reachable(topology, fault, source, target):
            continue
        for sender in topology.voters[source]:
            for receiver in topology.voters[target]:
                blocked.add((sender, receiver))
    return blocked


def data_centers_without_quorum(topology: Topology, fault: NetworkFault) -> set[str]:
    """Return the data centers whose voters cannot exchange messages with a majority of voters.

    A voter needs a round trip for both elections and replication, so only
    data centers reachable in both directions count towards its majority.
    """
    majority = topology.voter_count() // 2 + 1
    cut_off = set()
    for dc in topology.data_centers():
        partners = [other for other in topology.data_centers()
                    if reachable(topology, fault, dc, other) and reachable(topology, fault, other, dc)]
        if sum(len(topology.voters[other]) for other in partners) < majority:
            cut_off.add(dc)
    return cut_off


# --- Fault builders. ---


def isolate(topology: Topology, data_center: str, kind: str = "isolate") -> NetworkFault:
    """Cut every link of `data_center` in both directions."""
    cut = {(a, b) for a, b in topology.graph.edges if data_center in (a, b)}
    return NetworkFault(kind, frozenset(cut), description=f"{data_center} cut off from every other data center")


def split(topology: Topology, side: Iterable[str]) -> NetworkFault:
    """Cut every link between `side` and the rest, in both directions."""
    group = set(side)
    cut = {(a, b) for a, b in topology.graph.edges if (a in group) != (b in group)}
    rest = sorted(set(topology.data_centers()) - group)
    return NetworkFault("split", frozenset(cut), description=f"{sorted(group)} split from {rest}")


def bridge(topology: Topology, middle: str) -> NetworkFault:
    """Split the other data centers into two sides that both reach `middle` but not each other."""
    others = [dc for dc in topology.data_centers() if dc != middle]
    half = len(others) // 2
    left, right = set(others[:half]), set(others[half:])
    cut = {(a, b) for a, b in topology.graph.edges if (a in left and b in right) or (a in right and b in left)}
    return NetworkFault("bridge", frozenset(cut), frozenset({middle}),
                        f"{sorted(left)} and {sorted(right)} apart, both reach {middle}")


def one_way(topology: Topology, source: str) -> NetworkFault:
    """Drop everything `source` sends to other data centers; what it receives still arrives."""
    cut = {(a, b) for a, b in topology.graph.edges if a == source}
    return NetworkFault("one-way", frozenset(cut), description=f"messages from {source} lost, to it delivered")


def random_partition(topology: Topology, rng: random.Random, leader_data_center: str = "") -> NetworkFault:
    """Draw one partition fault: isolate one, split brain, bridge, one-way loss, or the leader isolated."""
    data_centers = list(topology.data_centers())
    choice = rng.choice(("isolate", "split", "bridge", "one-way", "leader"))
    if choice == "leader" and leader_data_center:
        return isolate(topology, leader_data_center, kind="leader-isolated")
    if choice == "split" and len(data_centers) > 3:
        start = rng.randrange(len(data_centers))
        side = [data_centers[(start + i) % len(data_centers)] for i in range(len(data_centers) // 2)]
        return split(topology, side)
    if choice == "bridge":
        return bridge(topology, rng.choice(data_centers))
    if choice == "one-way":
        return one_way(topology, rng.choice(data_centers))
    return isolate(topology, rng.choice(data_centers))
