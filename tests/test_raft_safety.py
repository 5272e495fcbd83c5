"""Randomized runs of a Raft cluster under message loss, duplication, delay,
reordering, partitions, crashes, leader transfers and membership changes, checked
for Raft's safety properties. Each seed reproduces one run. The `slow` tests run
the same checks over a thousand more seeds each.

Checked after every tick:
- election safety: at most one leader per term;
- state machine safety: no two nodes apply different entries at the same index,
  and every node's state is a prefix of a more advanced node's state;
- linearizable reads: a ReadState never has an index below what was committed when
  the read was requested, with ReadIndex rounds and with leases.
Checked after recovery: log matching (committed log prefixes agree), and that the
healed cluster elects one leader and commits a new entry on every member.
"""

from __future__ import annotations

import random

import pytest

from rayconf.actors.raft import (
    LEASE_BASED,
    SAFE,
    Config,
    ConfChange,
    ConfChangeRejected,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ProposalDropped,
)
from rayconf.actors.raft.testing import Network

NODE_IDS = ("n1", "n2", "n3", "n4", "n5")
FAULT_TICKS = 200
RECOVERY_TICKS = 120


def check_election_safety(network: Network) -> None:
    for term, leaders in network.leaders_by_term.items():
        assert len(leaders) <= 1, f"term {term} has leaders {sorted(leaders)}"


def check_state_machine_safety(network: Network) -> None:
    """No two nodes applied different entries at the same index."""
    first_seen: dict[int, tuple[str, object]] = {}
    for member in network.nodes.values():
        for index, entry in member.applied_entries.items():
            seen = first_seen.setdefault(index, (member.node_id, entry))
            assert seen[1] == entry, (
                f"index {index}: {member.node_id} applied {entry}, {seen[0]} applied {seen[1]}"
            )


def check_states_agree(network: Network) -> None:
    """The state of a node that applied fewer entries is a prefix of the others'."""
    members = sorted(network.nodes.values(), key=lambda member: member.applied_index)
    for behind, ahead in zip(members, members[1:]):
        prefix = ahead.state[: len(behind.state)]
        assert behind.state == prefix, (
            f"state of {behind.node_id} (applied {behind.applied_index}) is not a prefix "
            f"of the state of {ahead.node_id} (applied {ahead.applied_index})"
        )


def check_log_matching(network: Network) -> None:
    """Committed prefixes of the running nodes' logs agree entry by entry."""
    logs = {}
    for member in network.up_nodes():
        raft = member.node.raft
        first = raft.log.first_index()
        committed = raft.log.committed
        entries = raft.log.slice(first, committed + 1, 2**63) if committed >= first else []
        logs[member.node_id] = {entry.index: entry for entry in entries}
    names = sorted(logs)
    for position, first_name in enumerate(names):
        for second_name in names[position + 1 :]:
            shared = logs[first_name].keys() & logs[second_name].keys()
            for index in shared:
                assert logs[first_name][index] == logs[second_name][index], (
                    f"committed entry {index} differs between {first_name} and {second_name}"
                )


def issue_random_read(network: Network, rng: random.Random, reads: dict[bytes, int]) -> None:
    """Request a read on a random node and record the commit index it must reach.

    Anything committed anywhere before the request counts, so the bound is the
    largest commit index in memory or in storage over all nodes.
    """
    running = [member.node_id for member in network.up_nodes()]
    if not running:
        return
    committed = [member.storage.hard_state.commit for member in network.nodes.values()]
    committed += [member.node.raft.log.committed for member in network.up_nodes()]
    context = f"read-{len(reads)}".encode()
    try:
        network.nodes[rng.choice(running)].node.read_index(context)
    except ProposalDropped:
        return
    reads[context] = max(committed)


def check_reads_linearizable(network: Network, reads: dict[bytes, int]) -> int:
    """Check and drop every ReadState served so far; return how many there were."""
    served = 0
    for member in network.nodes.values():
        for state in member.read_states:
            required = reads[state.request_context]
            assert state.index >= required, (
                f"{member.node_id} served {state.request_context!r} at index {state.index}, "
                f"but {required} was committed before the read was requested"
            )
            served += 1
        member.read_states.clear()
    return served


def run_random_faults(
    seed: int, with_membership_changes: bool, read_only_option: str = SAFE
) -> Network:
    rng = random.Random(seed)

    def config_factory(node_id: str, node_rng: random.Random) -> Config:
        return Config(node_id=node_id, read_only_option=read_only_option, rng=node_rng)

    voters = NODE_IDS[:3] if with_membership_changes else NODE_IDS
    network = Network(voters, seed=seed, config_factory=config_factory)
    reads: dict[bytes, int] = {}
    reads_served = 0
    network.drop_probability = 0.1
    network.duplicate_probability = 0.05
    network.delay_probability = 0.05
    network.reorder = True
    network.snapshot_interval_entries = 20
    proposal_number = 0
    for tick in range(FAULT_TICKS):
        network.tick()
        roll = rng.random()
        running = [member.node_id for member in network.up_nodes()]
        if roll < 0.04:
            network.partition(rng.sample(sorted(network.nodes), rng.randint(1, 2)))
        elif roll < 0.07:
            network.heal()
        elif roll < 0.09 and len(running) > 2:
            network.crash(rng.choice(running))
        elif roll < 0.10 and network.leaders():
            network.crash(rng.choice(network.leaders()))
        elif roll < 0.14:
            for node_id in sorted(network.nodes):
                if not network.is_up(node_id):
                    network.restart(node_id)
        for leader in network.leaders():
            if rng.random() < 0.02:
                network.nodes[leader].node.transfer_leader(rng.choice(sorted(network.nodes)))
            for _ in range(rng.randint(0, 3)):
                proposal_number += 1
                network.propose(leader, f"seed{seed}-p{proposal_number}".encode())
            if with_membership_changes and rng.random() < 0.05:
                propose_random_conf_change(network, leader, rng)
        for _ in range(rng.randint(0, 2)):
            issue_random_read(network, rng, reads)
        check_election_safety(network)
        check_state_machine_safety(network)
        check_states_agree(network)
        reads_served += check_reads_linearizable(network, reads)
    assert reads_served > 0, "no read was served, so the read check checked nothing"
    return network


def propose_random_conf_change(network: Network, leader: str, rng: random.Random) -> None:
    """Propose adding, promoting or removing members, one or several at a time.
    New members always get a new id (see `Network.add_node`)."""
    conf_state = network.nodes[leader].node.raft.tracker.conf_state()
    if conf_state.voters_outgoing:
        if not conf_state.auto_leave:
            propose_conf_change(network, leader, ConfChange())
        return
    changes: list[ConfChangeSingle] = []
    if len(conf_state.voters) + len(conf_state.learners) < 6 and rng.random() < 0.5:
        new_node = f"n{len(network.nodes) + 1}"
        network.add_node(new_node)
        kind = ConfChangeType.ADD_LEARNER_NODE if rng.random() < 0.3 else ConfChangeType.ADD_NODE
        changes.append(ConfChangeSingle(kind, new_node))
    elif conf_state.learners and rng.random() < 0.5:
        promoted = rng.choice(conf_state.learners)
        changes.append(ConfChangeSingle(ConfChangeType.ADD_NODE, promoted))
    if len(conf_state.voters) > 3 and rng.random() < 0.5:
        removed = rng.choice(conf_state.voters)
        changes.append(ConfChangeSingle(ConfChangeType.REMOVE_NODE, removed))
    if not changes:
        return
    transition = rng.choice(list(ConfChangeTransition))
    propose_conf_change(network, leader, ConfChange(tuple(changes), transition))


def propose_conf_change(network: Network, leader: str, change: ConfChange) -> None:
    try:
        network.nodes[leader].node.propose_conf_change(change)
    except (ConfChangeRejected, ProposalDropped):
        pass  # another change is pending, or a transfer is running: a valid outcome


def recover(network: Network) -> None:
    network.heal()
    network.drop_probability = 0.0
    network.duplicate_probability = 0.0
    network.delay_probability = 0.0
    for node_id in sorted(network.nodes):
        if not network.is_up(node_id):
            network.restart(node_id)
    network.tick(RECOVERY_TICKS)


def check_random_run(
    seed: int, with_membership_changes: bool, read_only_option: str = SAFE
) -> None:
    network = run_random_faults(seed, with_membership_changes, read_only_option)
    recover(network)
    check_election_safety(network)
    check_state_machine_safety(network)
    check_states_agree(network)
    check_log_matching(network)

    leaders = network.leaders()
    assert len(leaders) == 1, f"seed {seed}: leaders after recovery {leaders}"
    assert network.propose(leaders[0], b"after-recovery")
    network.tick(5)
    conf_state = network.nodes[leaders[0]].conf_state
    members = set(conf_state.voters + conf_state.voters_outgoing + conf_state.learners)
    for node_id in sorted(members):
        data = network.applied_data(node_id)
        assert data[-1:] == [b"after-recovery"], f"seed {seed}: {node_id} ends with {data[-1:]}"


@pytest.mark.parametrize("seed", range(24))
def test_random_faults_keep_safety(seed: int) -> None:
    check_random_run(seed, with_membership_changes=False)


@pytest.mark.parametrize("seed", range(16))
def test_random_membership_changes_keep_safety(seed: int) -> None:
    check_random_run(1000 + seed, with_membership_changes=True)


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_keep_lease_reads_linearizable(seed: int) -> None:
    check_random_run(2000 + seed, with_membership_changes=False, read_only_option=LEASE_BASED)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(24, 1024))
def test_random_faults_keep_safety_many_seeds(seed: int) -> None:
    check_random_run(seed, with_membership_changes=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(16, 1016))
def test_random_membership_changes_many_seeds(seed: int) -> None:
    check_random_run(1000 + seed, with_membership_changes=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12, 1012))
def test_lease_reads_linearizable_many_seeds(seed: int) -> None:
    check_random_run(2000 + seed, with_membership_changes=False, read_only_option=LEASE_BASED)
