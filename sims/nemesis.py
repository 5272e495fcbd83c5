"""The nemesis: faults drawn from the seed and injected while the workload runs.

Every `fault_interval_ms` (drawn from the configured range) the nemesis picks one
enabled fault kind and injects it. Crashes, partitions and lossy periods end
after a drawn duration. Membership changes, leader transfers and compactions are
one-off requests to the cluster. A fault that does not fit the moment (no
leader, a partition already in place, a quorum's worth of nodes already down) is
skipped and counted as such.

Some bounds keep runs live, and safety does not depend on them:

- at most a minority of the founding voters is down at once;
- one partition is in place at a time;
- the voter count stays at or above 3;
- at most `ADDED_NODES_MAX` nodes join over a run.

Nodes that join get fresh ids, as etcd gives a new member a new id, so no node
id ever returns with an empty disk.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from rayconf.actors.raft import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    NodeId,
    ProposalDropped,
)
from rayconf.sims.config import FaultKind
from rayconf.sims.disk import SimDisk
from rayconf.sims.network import (
    LinkConditions,
    Partition,
    asymmetric_partition,
    bridge_partition,
    isolate_partition,
    symmetric_partition,
)

if TYPE_CHECKING:
    from rayconf.sims.node import SimNode
    from rayconf.sims.simulator import Simulation

logger = logging.getLogger(__name__)

ADDED_NODES_MAX = 4
MIN_VOTERS = 3
# Entries a compaction keeps in the log, drawn from [0, COMPACT_KEEP_ENTRIES_MAX].
COMPACT_KEEP_ENTRIES_MAX = 10
# Delay before an explicit joint configuration is left, drawn from [1, this].
LEAVE_JOINT_DELAY_MS_MAX = 300

LOSSY_CONDITIONS = LinkConditions(
    delay_ms_min=1,
    delay_ms_max=40,
    drop_probability=0.15,
    duplicate_probability=0.1,
    reorder_probability=0.3,
    reorder_delay_ms_max=60,
    long_delay_probability=0.02,
    long_delay_ms_max=2_000,
)


class Nemesis:
    """Injects the configured faults into one simulation and logs each one."""

    def __init__(self, simulation: Simulation, rng: random.Random) -> None:
        self.simulation = simulation
        self.rng = rng
        self.kinds = simulation.config.faults
        self.running = False
        # Injected faults by kind; "<kind>_skipped" counts faults that did not fit.
        self.counts: dict[str, int] = {}
        self.log: list[str] = []
        self.added_nodes = 0
        self.next_node_number = simulation.config.node_count + 1
        # Nodes that were members at some point; once they leave, they are stopped.
        self.ever_members: set[NodeId] = set(simulation.founding_ids)

    # --- Schedule ---

    def start(self) -> None:
        if not self.kinds:
            return
        self.running = True
        self._schedule_next()

    def stop(self) -> None:
        """Stop injecting faults and undo the lasting ones: heal, restore, restart."""
        self.running = False
        simulation = self.simulation
        simulation.network.heal()
        simulation.network.restore_links()
        for node in sorted(simulation.nodes.values(), key=lambda node: node.node_id):
            if not node.is_up:
                simulation.start_node(node)
        self._note("stop: healed the network and restarted every node")

    def _schedule_next(self) -> None:
        config = self.simulation.config
        delay_ms = self.rng.randint(config.fault_interval_ms_min, config.fault_interval_ms_max)
        self.simulation.queue.schedule(delay_ms, self._inject)

    def _duration_ms(self) -> int:
        config = self.simulation.config
        return self.rng.randint(config.fault_duration_ms_min, config.fault_duration_ms_max)

    def _note(self, text: str) -> None:
        line = f"t={self.simulation.queue.now_ms}ms {text}"
        self.log.append(line)
        logger.info("nemesis %s", line)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _inject(self) -> None:
        if not self.running:
            return
        self._retire_removed_nodes()
        kind = self.rng.choice(self.kinds)
        injected = INJECTORS[kind](self)
        self._count(kind.value if injected else f"{kind.value}_skipped")
        self._schedule_next()

    # --- Helpers ---

    def _running_nodes(self) -> list[SimNode]:
        return [node for _, node in sorted(self.simulation.nodes.items()) if node.is_up]

    def _retire_removed_nodes(self) -> None:
        """Stop nodes that were members and that the newest applied configuration no longer lists.

        The newest configuration is that of the node with the highest applied
        index, running or not: applied configurations are committed.
        """
        nodes = self.simulation.nodes.values()
        conf = max(nodes, key=lambda node: (node.applied_index, node.node_id)).conf_state
        members = set(conf.voters) | set(conf.learners) | set(conf.voters_outgoing) | set(conf.learners_next)
        self.ever_members |= members
        for node_id in sorted(self.simulation.nodes):
            if node_id in self.ever_members and node_id not in members:
                self._note(f"retire {node_id}: removed from the configuration")
                self.simulation.remove_node(node_id)

    # --- Faults ---

    def crash(self) -> bool:
        simulation = self.simulation
        down = [node for node in simulation.nodes.values() if not node.is_up]
        if len(down) >= (simulation.config.node_count - 1) // 2:
            return False
        candidates = self._running_nodes()
        if not candidates:
            return False
        node = self.rng.choice(candidates)
        simulation.crash_node(node)
        duration_ms = self._duration_ms()
        self._note(f"crash {node.node_id} for {duration_ms} ms")
        incarnation = node.incarnation

        def restart() -> None:
            current = simulation.nodes.get(node.node_id)
            if current is node and not node.is_up and node.incarnation == incarnation:
                simulation.start_node(node)
                self._note(f"restart {node.node_id}")

        simulation.queue.schedule(duration_ms, restart)
        return True

    def _split(self) -> tuple[list[NodeId], list[NodeId]] | None:
        node_ids = sorted(self.simulation.nodes)
        if len(node_ids) < 2:
            return None
        self.rng.shuffle(node_ids)
        size = self.rng.randint(1, len(node_ids) // 2)
        return sorted(node_ids[:size]), sorted(node_ids[size:])

    def _partition(self, kind: FaultKind) -> bool:
        simulation = self.simulation
        if simulation.network.partition is not None:
            return False
        split = self._split()
        if split is None:
            return False
        first, second = split
        partition: Partition
        if kind is FaultKind.PARTITION:
            partition = symmetric_partition(first, second)
        elif kind is FaultKind.ASYMMETRIC:
            if self.rng.random() < 0.5:
                first, second = second, first
            partition = asymmetric_partition(first, second)
        elif kind is FaultKind.BRIDGE:
            larger, smaller = (first, second) if len(first) >= len(second) else (second, first)
            partition = bridge_partition(larger, smaller, self.rng.choice(larger))
        else:
            leader = simulation.leader()
            target = leader.node_id if leader is not None else self.rng.choice(sorted(simulation.nodes))
            partition = isolate_partition(target, sorted(simulation.nodes))
        simulation.network.partition = partition
        duration_ms = self._duration_ms()
        self._note(f"{partition.describe()} for {duration_ms} ms")

        def heal() -> None:
            if simulation.network.partition is partition:
                simulation.network.heal()
                self._note("heal partition")

        simulation.queue.schedule(duration_ms, heal)
        return True

    def lossy(self) -> bool:
        """Make every link lossy, or only the links to and from one node."""
        network = self.simulation.network
        if network.conditions == LOSSY_CONDITIONS or network.link_conditions:
            return False
        duration_ms = self._duration_ms()
        if self.rng.random() < 0.5:
            network.conditions = LOSSY_CONDITIONS
            self._note(f"lossy links for {duration_ms} ms")
        else:
            flaky = self.rng.choice(sorted(self.simulation.nodes))
            for other in sorted(self.simulation.nodes):
                if other != flaky:
                    network.link_conditions[(flaky, other)] = LOSSY_CONDITIONS
                    network.link_conditions[(other, flaky)] = LOSSY_CONDITIONS
            self._note(f"lossy links of {flaky} for {duration_ms} ms")

        def restore() -> None:
            network.restore_links()
            self._note("links back to normal")

        self.simulation.queue.schedule(duration_ms, restore)
        return True

    def transfer(self) -> bool:
        leader = self.simulation.leader()
        if leader is None or leader.raw is None:
            return False
        voters = [node_id for node_id in leader.conf_state.voters if node_id != leader.node_id]
        if not voters:
            return False
        target = self.rng.choice(sorted(voters))
        leader.raw.transfer_leader(target)
        self.simulation.process(leader)
        self._note(f"transfer leadership {leader.node_id} -> {target}")
        return True

    def compact(self) -> bool:
        candidates = self._running_nodes()
        if not candidates:
            return False
        node = self.rng.choice(candidates)
        keep_entries = self.rng.randint(0, COMPACT_KEEP_ENTRIES_MAX)
        if not node.compact(keep_entries):
            return False
        self._note(f"compact {node.node_id} at {node.applied_index}, keeping {keep_entries} entries")
        return True

    def membership(self) -> bool:
        leader = self.simulation.leader()
        if leader is None or leader.raw is None:
            return False
        conf = leader.conf_state
        if conf.voters_outgoing:
            return self._propose(leader, ConfChange(), "leave joint configuration")
        voters, learners = sorted(conf.voters), sorted(conf.learners)
        options = []
        if self.added_nodes < ADDED_NODES_MAX:
            options.append("add_learner")
        if learners:
            options += ["promote", "remove_learner"]
        if len(voters) > MIN_VOTERS:
            options.append("remove_voter")
        if learners and len(voters) >= MIN_VOTERS:
            options.append("replace_joint")
        if not options:
            return False
        choice = self.rng.choice(options)
        add, remove = ConfChangeType.ADD_NODE, ConfChangeType.REMOVE_NODE

        if choice == "add_learner":
            node_id = f"n{self.next_node_number}"
            self.next_node_number += 1
            self.added_nodes += 1
            # The new node starts empty and waits for the leader to send it the log.
            self.simulation.add_node(node_id, SimDisk())
            single = ConfChangeSingle(ConfChangeType.ADD_LEARNER_NODE, node_id)
            proposed = self._propose(leader, ConfChange((single,)), f"add learner {node_id}")
            if not proposed:
                self.simulation.remove_node(node_id)
            return proposed

        if choice == "promote":
            node_id = self.rng.choice(learners)
            return self._propose(leader, ConfChange((ConfChangeSingle(add, node_id),)), f"promote {node_id}")
        if choice == "remove_learner":
            node_id = self.rng.choice(learners)
            change = ConfChange((ConfChangeSingle(remove, node_id),))
            return self._propose(leader, change, f"remove learner {node_id}")
        if choice == "remove_voter":
            node_id = self.rng.choice(voters)
            return self._propose(leader, ConfChange((ConfChangeSingle(remove, node_id),)), f"remove voter {node_id}")

        # Replace a voter by a learner through a joint configuration.
        incoming, outgoing = self.rng.choice(learners), self.rng.choice(voters)
        explicit = self.rng.random() < 0.5
        transition = ConfChangeTransition.JOINT_EXPLICIT if explicit else ConfChangeTransition.JOINT_IMPLICIT
        change = ConfChange((ConfChangeSingle(add, incoming), ConfChangeSingle(remove, outgoing)), transition)
        proposed = self._propose(leader, change, f"replace {outgoing} with {incoming} ({transition.value})")
        if proposed and explicit:
            self.simulation.queue.schedule(self.rng.randint(1, LEAVE_JOINT_DELAY_MS_MAX), self._leave_joint)
        return proposed

    def _leave_joint(self) -> None:
        leader = self.simulation.leader()
        if not self.running or leader is None or not leader.conf_state.voters_outgoing:
            return
        self._propose(leader, ConfChange(), "leave joint configuration")

    def _propose(self, leader: SimNode, change: ConfChange, description: str) -> bool:
        assert leader.raw is not None
        try:
            leader.raw.propose_conf_change(change)
        except (ConfChangeRejected, ProposalDropped) as error:
            self._note(f"{description} on {leader.node_id}: rejected ({error})")
            return False
        self.simulation.process(leader)
        self._note(f"{description} on {leader.node_id}")
        return True


INJECTORS = {
    FaultKind.CRASH: Nemesis.crash,
    FaultKind.PARTITION: lambda nemesis: nemesis._partition(FaultKind.PARTITION),
    FaultKind.ASYMMETRIC: lambda nemesis: nemesis._partition(FaultKind.ASYMMETRIC),
    FaultKind.BRIDGE: lambda nemesis: nemesis._partition(FaultKind.BRIDGE),
    FaultKind.ISOLATE_LEADER: lambda nemesis: nemesis._partition(FaultKind.ISOLATE_LEADER),
    FaultKind.LOSSY: Nemesis.lossy,
    FaultKind.MEMBERSHIP: Nemesis.membership,
    FaultKind.TRANSFER: Nemesis.transfer,
    FaultKind.COMPACT: Nemesis.compact,
}
