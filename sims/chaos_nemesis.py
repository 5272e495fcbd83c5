"""The Ray nemesis: faults injected into a running chaos cluster, one at a time.

Each fault is injected, held for a while, then healed, and logged as a
`FaultRecord` with the data centers that had no quorum while it lasted
(those get counted in the availability figures). Kinds:

| kind | what happens |
|---|---|
| `partition` | a `NetworkFault` of the topology (isolate one data center, split brain, bridge, one-way loss, the leader's data center isolated) becomes the replicas' partition table |
| `kill` | `ray.kill(..., no_restart=False)` of a replica (the leader half the time), a shard store or a watch hub; Ray restarts it and it recovers from disk |
| `pause` | SIGSTOP of a replica process (the leader half the time), a store or a hub, SIGCONT when healed, as a long garbage-collection pause |
| `slow-fsync` | every log fsync of one replica (the leader half the time) takes 200 ms longer |
| `dc-loss` | the Ray node of one data center is removed and its actor processes killed, then a new node with the same resource and data directory is added |

Partitions cut only Raft traffic between replicas: clients and shard stores
still reach every replica. `heal_all` undoes whatever is still in effect,
and the run calls it in a `finally`, so a failing run leaves no process
stopped and no node missing.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from dataclasses import dataclass, field

import ray

from rayconf.errors import InvalidRequest, Unavailable
from rayconf.sims import chaos_topology as topo
from rayconf.sims.chaos_cluster import RayChaosCluster, kill_process, pause_process, resume_process

logger = logging.getLogger(__name__)

SLOW_FSYNC_DELAY_MS = 200


class ChaosFault(str, enum.Enum):
    PARTITION = "partition"
    KILL = "kill"
    PAUSE = "pause"
    SLOW_FSYNC = "slow-fsync"
    DC_LOSS = "dc-loss"


def parse_chaos_faults(text: str) -> tuple[ChaosFault, ...]:
    """Parse `--faults` of a Ray run: "all", "none" or a comma list of fault kinds."""
    if text.strip() == "all":
        return tuple(ChaosFault)
    if text.strip() == "none":
        return ()
    kinds = []
    for part in text.split(","):
        name = part.strip()
        try:
            kinds.append(ChaosFault(name))
        except ValueError:
            raise InvalidRequest(f"fault kind {name!r} is unknown for a Ray run; use all, none or a comma list "
                                 f"of {[kind.value for kind in ChaosFault]}") from None
    return tuple(dict.fromkeys(kinds))


@dataclass(slots=True)
class FaultRecord:
    """One injected fault: what, when (monotonic seconds), and which data centers lost their quorum."""

    kind: str
    description: str
    started_s: float
    healed_s: float = 0.0
    no_quorum: frozenset[str] = field(default_factory=frozenset)


class RayNemesis:
    """Injects and heals faults on one `RayChaosCluster`."""

    def __init__(self, chaos: RayChaosCluster, topology: topo.Topology, seed: int) -> None:
        self.chaos = chaos
        self.topology = topology
        self.rng = random.Random(seed)
        self.log: list[FaultRecord] = []
        # Whatever `heal` must undo for the fault in effect.
        self._paused_pids: list[int] = []
        self._slow_members: list[str] = []
        self._lost_data_centers: list[str] = []
        self._partitioned = False

    # --- Injection. ---

    def inject(self, kind: ChaosFault) -> FaultRecord:
        """Inject one fault of `kind`, log it and return its record; `heal` ends it."""
        if kind is ChaosFault.PARTITION:
            record = self._partition()
        elif kind is ChaosFault.KILL:
            record = self._kill()
        elif kind is ChaosFault.PAUSE:
            record = self._pause()
        elif kind is ChaosFault.SLOW_FSYNC:
            record = self._slow_fsync()
        else:
            record = self.lose_data_center(self.rng.choice(self.topology.data_centers()))
        return record

    def _started(self, record: FaultRecord) -> FaultRecord:
        self.log.append(record)
        logger.info("fault injected: %s (%s)", record.kind, record.description)
        return record

    def _leader_or_random_member(self) -> str:
        leader = self.chaos.leader()
        if leader and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(self.chaos.spec.members())

    def _random_actor(self) -> tuple[str, str]:
        """Return (kind, name) of a replica (the leader half the time), a store or a hub."""
        choice = self.rng.random()
        if choice < 0.5:
            return "replica", self._leader_or_random_member()
        if choice < 0.75:
            return "store", self.rng.choice(self.chaos.spec.stores())
        hubs = [hub for dc in self.chaos.spec.data_centers for hub in dc.hub_names()]
        return "hub", self.rng.choice(hubs)

    def _partition(self) -> FaultRecord:
        leader = self.chaos.leader()
        leader_dc = self.chaos.spec.data_center_of(leader) if leader else ""
        fault = topo.random_partition(self.topology, self.rng, leader_dc)
        return self.partition(fault)

    def partition(self, fault: topo.NetworkFault) -> FaultRecord:
        self.chaos.set_blocked(topo.blocked_pairs(self.topology, fault))
        self._partitioned = True
        no_quorum = frozenset(topo.data_centers_without_quorum(self.topology, fault))
        return self._started(FaultRecord(f"partition/{fault.kind}", fault.description, time.monotonic(),
                                         no_quorum=no_quorum))

    def _kill(self) -> FaultRecord:
        kind, name = self._random_actor()
        handle = self.chaos.actor_handle(kind, name)
        leader = self.chaos.leader()
        if handle is not None:
            ray.kill(handle, no_restart=False)
        role = " (the leader)" if name == leader else ""
        return self._started(FaultRecord(f"kill/{kind}", f"{kind} {name}{role} killed, Ray restarts it",
                                         time.monotonic()))

    def _pause(self) -> FaultRecord:
        kind, name = self._random_actor()
        leader = self.chaos.leader()
        try:
            pid = self.chaos.actor_pid(kind, name)
        except (Unavailable, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
            return self._started(FaultRecord(f"pause/{kind}", f"{kind} {name} not paused: {type(error).__name__}",
                                             time.monotonic()))
        try:
            pause_process(pid)
        except ProcessLookupError:
            return self._started(FaultRecord(f"pause/{kind}", f"{kind} {name} not paused: process {pid} exited",
                                             time.monotonic()))
        self._paused_pids.append(pid)
        role = " (the leader)" if name == leader else ""
        # The store and hub of a stopped replica's data center follow that replica
        # first, so that data center reaches the quorum through nothing else.
        no_quorum: frozenset[str] = frozenset()
        if kind == "replica":
            no_quorum = frozenset({self.chaos.spec.data_center_of(name)})
        return self._started(FaultRecord(f"pause/{kind}", f"{kind} {name}{role} process {pid} stopped (SIGSTOP)",
                                         time.monotonic(), no_quorum=no_quorum))

    def _slow_fsync(self) -> FaultRecord:
        member = self._leader_or_random_member()
        handle = self.chaos.actor_handle("replica", member)
        try:
            if handle is not None:
                ray.get(handle.set_fsync_delay.remote(SLOW_FSYNC_DELAY_MS), timeout=10.0)
                self._slow_members.append(member)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
            return self._started(FaultRecord("slow-fsync", f"fsyncs of {member} not slowed: {type(error).__name__}",
                                             time.monotonic()))
        return self._started(FaultRecord("slow-fsync", f"log fsyncs of {member} take {SLOW_FSYNC_DELAY_MS} ms longer",
                                         time.monotonic()))

    def lose_data_center(self, data_center: str) -> FaultRecord:
        """Remove the Ray node of `data_center` and kill its actor processes; `heal` adds the node back.

        Removing a node kills its raylet, but an actor's worker process only
        exits once it notices, which took seconds on a loaded machine. Until
        then it kept serving its peers directly, so the nemesis kills the
        processes itself (SIGKILL), as a power loss would.
        """
        pids = self._actor_pids_in(data_center)
        self.chaos.remove_data_center(data_center)
        for pid in pids:
            kill_process(pid)
        self._lost_data_centers.append(data_center)
        return self._started(FaultRecord("dc-loss", f"Ray node of {data_center} removed with its actors",
                                         time.monotonic(), no_quorum=frozenset({data_center})))

    def _actor_pids_in(self, data_center: str) -> list[int]:
        spec = self.chaos.spec
        actors = [("replica", member) for member in spec.members() if spec.data_center_of(member) == data_center]
        actors += [("store", store) for store in spec.stores_in(data_center)]
        actors += [("hub", hub) for dc in spec.data_centers if dc.name == data_center for hub in dc.hub_names()]
        pids = []
        for kind, name in actors:
            try:
                pids.append(self.chaos.actor_pid(kind, name))
            except (Unavailable, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
                # An actor that is down already has no process to kill.
                logger.info("no process of %s %s to kill: %s", kind, name, type(error).__name__)
        return pids

    # --- Healing. ---

    def heal(self, record: FaultRecord | None = None) -> None:
        """End every fault in effect; mark `record` healed now."""
        if self._partitioned:
            self.chaos.set_blocked(set())
            self._partitioned = False
        while self._paused_pids:
            resume_process(self._paused_pids.pop())
        while self._slow_members:
            member = self._slow_members.pop()
            handle = self.chaos.actor_handle("replica", member)
            if handle is None:
                continue
            try:
                ray.get(handle.set_fsync_delay.remote(0), timeout=10.0)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
                # A restarted replica starts with no delay, so nothing is left to undo.
                logger.info("could not clear the fsync delay of %s: %s", member, type(error).__name__)
        while self._lost_data_centers:
            self.chaos.add_data_center(self._lost_data_centers.pop())
        if record is not None:
            record.healed_s = time.monotonic()
            logger.info("fault healed: %s after %.1f s", record.kind, record.healed_s - record.started_s)

    def heal_all(self) -> None:
        """End every fault in effect, whatever failed before; used in `finally` blocks."""
        self.heal(None)
