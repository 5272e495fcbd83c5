"""The deterministic cluster simulator: nodes, network, clients and faults in one process.

One seed makes one run. The root `random.Random(seed)` hands out child generators
in a fixed order (network, faults, disks, elections, workload, one per client), so
a change in how one part draws numbers does not shift the others. Every action is
an event on the simulated clock (see `clock.py`), and the simulator handles the
Readies of the node an event touched before it runs the next event, so the safety
checks in `invariants.py` see every step.

A run has three phases:

1. workload: clients run their operations while the nemesis injects faults;
2. settle: faults stop, partitions heal, crashed nodes restart, and the cluster
   must converge: one leader, every member applied the leader's last index;
3. final checks: every acknowledged write is in the final state at its revision
   on every member (durability), the members' state hashes agree, and the client
   history is linearizable.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from rayconf.actors.raft import Message, MessageType, NodeId, StateType, StepPeerNotFound
from rayconf.sims import history
from rayconf.sims.clients import AcknowledgedWrite, ClientSettings, ClientTransport, SimClient
from rayconf.sims.clock import EventQueue
from rayconf.sims.config import FLOW_CONTROL_CHOICES, SimConfig
from rayconf.sims.convergence import SETTLE_PROBE_INTERVAL_MS, ConvergenceProbe
from rayconf.sims.disk import SimDisk
from rayconf.sims.invariants import SafetyChecker, Violation
from rayconf.sims.linearizability import Outcome, check_history
from rayconf.sims.nemesis import Nemesis
from rayconf.sims.network import SimNetwork
from rayconf.sims.node import AttemptTag, NodeSettings, Reply, SimNode
from rayconf.sims.result import SimResult
from rayconf.sims.workload import ReadRequest, Workload
from rayconf.store.records import Command

logger = logging.getLogger(__name__)

# Delay of a client request or reply, drawn from [1, CLIENT_LINK_DELAY_MS_MAX].
CLIENT_LINK_DELAY_MS_MAX = 5


class Simulation:
    """One seeded run; call `run` once."""

    def __init__(self, config: SimConfig) -> None:
        config.validate()
        self.config = config
        root = random.Random(config.seed)
        self.network_rng = random.Random(root.getrandbits(64))
        self.nemesis_rng = random.Random(root.getrandbits(64))
        self.disk_rng = random.Random(root.getrandbits(64))
        self.election_rng = random.Random(root.getrandbits(64))
        self.client_link_rng = random.Random(root.getrandbits(64))
        workload_rng = random.Random(root.getrandbits(64))
        client_rngs = [random.Random(root.getrandbits(64)) for _ in range(config.client_count)]
        flow_control_rng = random.Random(root.getrandbits(64))
        flow_control = {
            name: flow_control_rng.choice(choices) if config.vary_flow_control else choices[-1]
            for name, choices in FLOW_CONTROL_CHOICES.items()
        }

        self.queue = EventQueue()
        self.checker = SafetyChecker(clock=lambda: self.queue.now_ms)
        self.network = SimNetwork(self.network_rng)
        self.recorder = history.HistoryRecorder(clock=lambda: float(self.queue.now_ms))
        # Snapshots pass through files (see `node.py`). A memory file system keeps
        # their fsyncs from dominating the run time where one is available.
        memory_directory = Path("/dev/shm")
        scratch_parent = str(memory_directory) if os.access(memory_directory, os.W_OK) else None
        self._scratch = tempfile.TemporaryDirectory(prefix="rayconf-sim-", dir=scratch_parent)
        self.node_settings = NodeSettings(
            election_timeout_ticks=config.election_timeout_ticks,
            heartbeat_interval_ticks=config.heartbeat_interval_ticks,
            hash_interval_entries=config.hash_interval_entries,
            injected_bug=config.injected_bug,
            read_only_option=config.read_only_option,
            **flow_control,
        )
        self.nodes: dict[NodeId, SimNode] = {}
        self.node_counters: Counter[str] = Counter()
        self.founding_ids = tuple(f"n{number}" for number in range(1, config.node_count + 1))
        for node_id in self.founding_ids:
            self.add_node(node_id, SimDisk.bootstrapped(self.founding_ids))

        workload = Workload(workload_rng, config.key_group_count)
        settings = ClientSettings(
            timeout_ms=config.client_timeout_ms,
            attempts_max=config.client_attempts_max,
            think_time_ms_max=config.client_think_time_ms_max,
            retry_backoff_ms_max=config.client_retry_backoff_ms_max,
        )
        transport = ClientTransport(
            now_ms=lambda: self.queue.now_ms,
            schedule=self.queue.schedule,
            member_ids=self.member_ids,
            send_read=self.send_client_read,
            send_write=self.send_client_write,
        )
        self.clients_running = config.client_count
        self.clients: list[SimClient] = []
        for client_id, client_rng in enumerate(client_rngs):
            share = config.operation_count // config.client_count
            share += client_id < config.operation_count % config.client_count
            self.clients.append(
                SimClient(client_id, client_rng, workload, self.recorder, settings, transport, share, self._client_done)
            )
        self.nemesis = Nemesis(self, self.nemesis_rng)
        self.statistics: dict[str, int] = {"readies": 0, "client_requests_lost": 0}
        self.final_members: list[NodeId] = []

    # --- Nodes ---

    def add_node(self, node_id: NodeId, disk: SimDisk) -> SimNode:
        """Create a node on `disk` and start it."""
        assert node_id not in self.nodes, f"node {node_id} exists"
        node = SimNode(
            node_id,
            disk,
            self.node_settings,
            self.checker,
            send_messages=self._send_messages,
            send_reply=self._send_reply,
            scratch_directory=Path(self._scratch.name),
            counters=self.node_counters,
        )
        self.nodes[node_id] = node
        self.start_node(node)
        return node

    def start_node(self, node: SimNode) -> None:
        node.start(random.Random(self.election_rng.getrandbits(64)))
        incarnation = node.incarnation
        # Each start draws the node's clock rate: its tick interval is off the
        # configured one by up to `tick_drift_ms`, which models clock drift.
        drift_ms = self.config.tick_drift_ms
        interval_ms = self.config.tick_interval_ms + self.election_rng.randint(-drift_ms, drift_ms)
        phase_ms = self.election_rng.randint(1, interval_ms)
        self.queue.schedule(phase_ms, lambda: self._tick(node, incarnation, interval_ms))

    def crash_node(self, node: SimNode) -> None:
        node.crash(self.disk_rng)

    def remove_node(self, node_id: NodeId) -> None:
        """Stop a node that left the cluster for good and forget it."""
        node = self.nodes.pop(node_id)
        if node.is_up:
            node.crash(self.disk_rng)

    def member_ids(self) -> list[NodeId]:
        return sorted(self.nodes)

    def leader(self) -> SimNode | None:
        """Return the running leader of the highest term, if any."""
        leaders = [node for node in self.nodes.values() if node.is_up and node.role is StateType.LEADER]
        return max(leaders, key=lambda node: (node.term, node.node_id)) if leaders else None

    def _tick(self, node: SimNode, incarnation: int, interval_ms: int) -> None:
        if node.raw is None or node.incarnation != incarnation or self.nodes.get(node.node_id) is not node:
            return
        node.raw.tick()
        self.process(node)
        self.queue.schedule(interval_ms, lambda: self._tick(node, incarnation, interval_ms))

    def process(self, node: SimNode) -> None:
        self.statistics["readies"] += node.process_readies()

    # --- Network between nodes ---

    def _send_messages(self, messages: tuple[Message, ...]) -> None:
        for message in messages:
            delays = self.network.delivery_delays_ms(message, self.queue.now_ms)
            for delay_ms in delays:
                self.queue.schedule(delay_ms, functools.partial(self._deliver, message))
            if not delays and message.type is MessageType.SNAP:
                self.queue.schedule(0, functools.partial(self._report_snapshot, message, False))

    def _deliver(self, message: Message) -> None:
        target = self.nodes.get(message.to)
        statistics = self.network.statistics
        if target is None or target.raw is None:
            statistics.dropped_node_down += 1
            delivered = False
        elif self.network.is_blocked(message.from_, message.to):
            statistics.dropped_partition += 1
            delivered = False
        else:
            statistics.delivered += 1
            try:
                target.raw.step(message)
            except StepPeerNotFound:
                logger.debug("%s ignores a response from non-member %s", message.to, message.from_)
            self.process(target)
            delivered = True
        if message.type is MessageType.SNAP:
            self._report_snapshot(message, delivered)

    def _report_snapshot(self, message: Message, delivered: bool) -> None:
        sender = self.nodes.get(message.from_)
        if sender is not None and sender.raw is not None:
            sender.raw.report_snapshot(message.to, delivered)
            self.process(sender)

    # --- Client links ---

    def _client_delay_ms(self) -> int:
        return self.client_link_rng.randint(1, CLIENT_LINK_DELAY_MS_MAX)

    def send_client_read(self, node_id: NodeId, tag: AttemptTag, request: ReadRequest) -> None:
        def arrive() -> None:
            node = self._reachable(node_id)
            if node is not None:
                node.submit_read(tag, request.range)
                self.process(node)

        self.queue.schedule(self._client_delay_ms(), arrive)

    def send_client_write(self, node_id: NodeId, tag: AttemptTag, command: Command) -> None:
        def arrive() -> None:
            node = self._reachable(node_id)
            if node is not None:
                node.submit_write(tag, command)
                self.process(node)

        self.queue.schedule(self._client_delay_ms(), arrive)

    def _reachable(self, node_id: NodeId) -> SimNode | None:
        node = self.nodes.get(node_id)
        if node is None or node.raw is None:
            self.statistics["client_requests_lost"] += 1
            return None
        return node

    def _send_reply(self, reply: Reply) -> None:
        client = self.clients[reply.tag.client_id]
        self.queue.schedule(self._client_delay_ms(), lambda: client.on_reply(reply))

    def _client_done(self) -> None:
        self.clients_running -= 1

    # --- Running ---

    def _run_until(self, done: object, deadline_ms: int) -> bool:
        """Run events until `done()` is true or the clock passes `deadline_ms`;
        return whether `done()` became true. Stops early on a violation."""
        assert callable(done)
        queue = self.queue
        violations = self.checker.violations
        while not done():
            if violations:
                return False
            next_time_ms = queue.next_time_ms()
            if next_time_ms is None or next_time_ms > deadline_ms:
                return False
            try:
                queue.run_next()
            except Exception as error:  # noqa: BLE001 - any exception here is a finding
                self.checker.violations.append(
                    Violation("exception", queue.now_ms, "", f"{error!r}\n{traceback.format_exc()}")
                )
                return False
        return True

    def start_workload(self) -> None:
        """Start the clients and the nemesis; `run` calls it, scenario tests may too."""
        for client in self.clients:
            client.start()
        self.nemesis.start()

    def advance(self, duration_ms: int) -> None:
        """Run every event of the next `duration_ms` simulated milliseconds, for
        scenario tests that drive the cluster step by step."""
        self._run_until(lambda: False, self.queue.now_ms + duration_ms)

    def run(self) -> SimResult:
        started = time.perf_counter()
        config = self.config
        try:
            self.start_workload()
            self._run_until(lambda: self.clients_running == 0, config.workload_time_ms_max)
            workload_end_ms = self.queue.now_ms
            if not self.checker.violations:
                self._settle(workload_end_ms)
            linearizability = None
            if not self.checker.violations:
                self._check_durability()
            operations = self.recorder.history()
            if not self.checker.violations:
                linearizability = check_history(operations, timeout_s=config.check_timeout_s)
                if linearizability.outcome is Outcome.NOT_LINEARIZABLE:
                    self.checker.violations.append(
                        Violation("linearizability", self.queue.now_ms, "", linearizability.render())
                    )
            return SimResult(
                config=config,
                operations=operations,
                violations=list(self.checker.violations),
                linearizability=linearizability,
                statistics=self._collect_statistics(),
                faults=dict(self.nemesis.counts),
                fault_log=list(self.nemesis.log),
                state_hashes={node_id: self.nodes[node_id].mvcc.hash_kv() for node_id in self.final_members},
                attempt_log=self._attempt_log(),
                wall_time_s=time.perf_counter() - started,
                simulated_time_ms=self.queue.now_ms,
            )
        finally:
            self._scratch.cleanup()

    def _settle(self, workload_end_ms: int) -> None:
        self.nemesis.stop()
        deadline_ms = workload_end_ms + self.config.settle_time_ms_max
        probe = ConvergenceProbe(self)
        self.queue.schedule(SETTLE_PROBE_INTERVAL_MS, probe.check)
        converged = self._run_until(lambda: probe.converged, deadline_ms)
        self.final_members = probe.members
        if not converged and not self.checker.violations:
            self.checker.violations.append(
                Violation("no_convergence", self.queue.now_ms, "", probe.describe())
            )

    def _check_durability(self) -> None:
        """Check that every member has each acknowledged write at the revision its client saw."""
        writes: list[AcknowledgedWrite] = [write for client in self.clients for write in client.acknowledged_writes]
        for node_id in self.final_members:
            node = self.nodes[node_id]
            for write in writes:
                found = node.mvcc.get(write.key, revision=write.revision)
                value = None if found is None else found.value
                if value != write.value:
                    self.checker.violations.append(
                        Violation(
                            "durability", self.queue.now_ms, node.node_id,
                            f"op {write.op_id} was acknowledged with {write.key!r}="
                            f"{history.format_value(write.value)} at revision {write.revision}, "
                            f"but {node.node_id} has {history.format_value(value)} there",
                        )
                    )
                    return

    def _attempt_log(self) -> list[str]:
        entries = sorted(entry for client in self.clients for entry in client.attempt_log)
        return [f"t={time_ms}ms {text}" for time_ms, text in entries]

    def _collect_statistics(self) -> dict[str, int]:
        network = self.network.statistics
        statistics = dict(self.statistics)
        statistics.update(self.node_counters)
        # The drawn flow-control limits, so that a report shows them.
        for name in FLOW_CONTROL_CHOICES:
            statistics[f"setting_{name}"] = getattr(self.node_settings, name)
        statistics.update(
            events=self.queue.events_run,
            elections=self.checker.elections,
            hashes_compared=self.checker.hashes_compared,
            highest_applied_index=self.checker.highest_applied_index,
            messages_sent=network.sent,
            messages_delivered=network.delivered,
            messages_dropped=network.dropped_random + network.dropped_partition + network.dropped_node_down,
            messages_duplicated=network.duplicated,
            disk_writes_lost=sum(node.disk.statistics.writes_lost for node in self.nodes.values()),
            acknowledged_writes=sum(len(client.acknowledged_writes) for client in self.clients),
            operations_ok=sum(client.statistics.ok for client in self.clients),
            operations_failed=sum(client.statistics.failed for client in self.clients),
            operations_unknown=sum(client.statistics.unknown for client in self.clients),
        )
        return statistics
