"""The check that ends the settle phase: the cluster converged after the faults stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayconf.actors.raft import NodeId

if TYPE_CHECKING:
    from rayconf.sims.simulator import Simulation

# How often the settle phase checks whether the cluster converged.
SETTLE_PROBE_INTERVAL_MS = 50


class ConvergenceProbe:
    """Checks, every SETTLE_PROBE_INTERVAL_MS, whether one leader leads every member
    and every member applied the leader's last index."""

    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        self.converged = False
        self.last_reason = "not checked yet"
        # Members of the leader's configuration when the cluster converged.
        self.members: list[NodeId] = []

    def check(self) -> None:
        simulation = self.simulation
        self.last_reason = self._reason_not_converged()
        if not self.last_reason and simulation.clients_running == 0:
            self.converged = True
            return
        simulation.queue.schedule(SETTLE_PROBE_INTERVAL_MS, self.check)

    def _reason_not_converged(self) -> str:
        simulation = self.simulation
        leader = simulation.leader()
        if leader is None or leader.raw is None:
            return "no leader"
        status = leader.raw.status()
        if status.hard_state.commit != status.last_index:
            return f"leader {leader.node_id} committed {status.hard_state.commit} of {status.last_index}"
        conf = leader.conf_state
        members = set(conf.voters) | set(conf.learners) | set(conf.voters_outgoing)
        self.members = sorted(members)
        for node_id in self.members:
            node = simulation.nodes.get(node_id)
            if node is None or node.raw is None:
                return f"member {node_id} is not running"
            if node.applied_index != status.last_index:
                return f"member {node_id} applied {node.applied_index}, leader's last index {status.last_index}"
            if node.lead != leader.node_id:
                return f"member {node_id} follows {node.lead or 'nobody'}, not {leader.node_id}"
        return ""

    def describe(self) -> str:
        return f"the cluster did not converge after the faults stopped: {self.last_reason}"
