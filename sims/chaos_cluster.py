"""A multi-node Ray cluster on this machine with one Ray node per data center.

`RayChaosCluster` starts a head node (the control plane, GCS and the driver;
it offers no data-center resource) and one worker node per data center that
offers the custom resource `<data center>` (for example `dc-a`), which places
that data center's replica, shard store and watch hub actors there. Every
node binds to 127.0.0.1 and runs without the dashboard.

All nodes share this machine's file system, so a data center's node can be
removed and added again "with its disk": the actors Ray restarts on the new
node reopen the same data directory.

The class also finds actor processes (for SIGSTOP and SIGCONT) and the head's
GCS process.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec, DataCenter
from rayconf.actors.replica_core import ReplicaSettings
from rayconf.actors.watch_hub import find_hub
from rayconf.errors import Unavailable
from rayconf.sims.chaos_topology import Topology

logger = logging.getLogger(__name__)

# CPUs each Ray node offers. The rayconf actors ask for none; the CPU lets the
# node run the driver's helper tasks.
NODE_CPUS = 1
# Object store per node; rayconf moves small values only.
NODE_OBJECT_STORE_BYTES = 100 * 1024 * 1024
# A chaos run keeps the whole log, so the watch check can replay it from index 1.
CHAOS_SNAPSHOT_INTERVAL_ENTRIES = 1_000_000
WAIT_FOR_LEADER_S = 60.0


def chaos_spec(topology: Topology, data_directory: str, namespace: str = "rayconf-chaos",
               tick_ms: int = 20) -> ClusterSpec:
    """Return the cluster spec of `topology`: its voters, one shard store and one watch hub per data center."""
    data_centers = tuple(DataCenter(name, voters=members, stores=1, hubs=1) for name, members in topology.voters.items())
    return ClusterSpec(
        data_centers=data_centers,
        data_directory=str(Path(data_directory).resolve()),
        namespace=namespace,
        tick_ms=tick_ms,
        settings=ReplicaSettings(snapshot_interval_entries=CHAOS_SNAPSHOT_INTERVAL_ENTRIES),
    )


class RayChaosCluster:
    """The Ray nodes of one chaos run and the rayconf actors on them."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.ray_cluster: Cluster | None = None
        # The Ray node of each data center; absent while the data center is lost.
        self.nodes: dict[str, Any] = {}

    # --- Life cycle. ---

    def start(self) -> None:
        """Start the head and one node per data center, connect this process, and bring the actors up."""
        cluster.use_loopback()
        self.ray_cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False, "node_ip_address": "127.0.0.1",
                            "object_store_memory": NODE_OBJECT_STORE_BYTES},
        )
        for dc in self.spec.data_centers:
            self.add_data_center(dc.name)
        ray.init(address=self.ray_cluster.address, namespace=self.spec.namespace, log_to_driver=False,
                 logging_level=logging.ERROR)
        cluster.up(self.spec, wait_for_leader_s=WAIT_FOR_LEADER_S)
        logger.info("chaos cluster up: %d data centers, leader %s", len(self.nodes), self.leader())

    def stop(self) -> None:
        """Stop the actors and every Ray node this object started."""
        try:
            if ray.is_initialized():
                cluster.down(self.spec)
        finally:
            ray.shutdown()
            if self.ray_cluster is not None:
                self.ray_cluster.shutdown()
                self.ray_cluster = None
            self.nodes.clear()

    def add_data_center(self, data_center: str) -> None:
        """Start the Ray node of `data_center`; Ray then restarts that data center's actors on it."""
        assert self.ray_cluster is not None, "start the cluster first"
        assert data_center not in self.nodes, f"{data_center} already has a node"
        self.nodes[data_center] = self.ray_cluster.add_node(
            num_cpus=NODE_CPUS, resources={data_center: 1.0}, node_ip_address="127.0.0.1",
            object_store_memory=NODE_OBJECT_STORE_BYTES)

    def remove_data_center(self, data_center: str) -> None:
        """Kill the Ray node of `data_center` and every actor on it, as a data-center failure does."""
        assert self.ray_cluster is not None, "start the cluster first"
        node = self.nodes.pop(data_center)
        self.ray_cluster.remove_node(node, allow_graceful=False)

    # --- Cluster state. ---

    def leader(self) -> str:
        return str(cluster.status(self.spec, timeout_s=2.0)["leader"])

    def wait_for_leader(self, timeout_s: float = WAIT_FOR_LEADER_S) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.leader()
            if leader:
                return leader
            if time.monotonic() > deadline:
                raise Unavailable(f"no leader within {timeout_s} s; members: "
                                  f"{cluster.status(self.spec)['members']}")
            time.sleep(0.2)

    def wait_until_running(self, timeout_s: float = WAIT_FOR_LEADER_S) -> None:
        """Wait until every replica, store and hub responds and a leader is known.

        Faults are injected one at a time on a settled cluster: a replica that
        is still restarting would miss the partition table of the next fault.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            current = cluster.status(self.spec, timeout_s=2.0)
            actors = {**current["members"], **current["stores"], **current["hubs"]}
            waiting = sorted(name for name, info in actors.items() if info.get("health") != "ok")
            if current["leader"] and not waiting:
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"actors {waiting} did not respond within {timeout_s} s after the faults healed "
                                  f"(leader {current['leader']!r})")
            time.sleep(0.2)

    def set_blocked(self, blocked: set[tuple[str, str]]) -> None:
        """Set the partition table on every running replica; unreachable replicas are skipped and logged."""
        pairs = sorted(blocked)
        pending = {}
        for member in self.spec.members():
            handle = cluster.find_replica(self.spec, member)
            if handle is not None:
                pending[member] = handle.set_faults.remote(pairs)
        for member, reference in pending.items():
            try:
                ray.get(reference, timeout=5.0)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
                logger.warning("could not set faults on %s: %s", member, type(error).__name__)

    # --- Actor processes. ---

    def actor_handle(self, kind: str, name: str) -> Any:
        """Return the handle of a replica ("replica", member name), store or hub, or None."""
        if kind == "replica":
            return cluster.find_replica(self.spec, name)
        if kind == "store":
            return cluster.find_store(self.spec, name)
        return find_hub(self.spec, name)

    def actor_pid(self, kind: str, name: str, timeout_s: float = 10.0) -> int:
        """Return the operating-system process id of a running actor."""
        handle = self.actor_handle(kind, name)
        if handle is None:
            raise Unavailable(f"{kind} {name} is not running, so it has no process to signal")
        pid: int = ray.get(handle.__ray_call__.remote(lambda actor: os.getpid()), timeout=timeout_s)
        return pid

    def gcs_pid(self) -> int:
        """Return the process id of the head node's GCS server."""
        assert self.ray_cluster is not None and self.ray_cluster.head_node is not None
        processes = self.ray_cluster.head_node.all_processes[ray._private.ray_constants.PROCESS_TYPE_GCS_SERVER]
        return int(processes[0].process.pid)


def pause_process(pid: int) -> None:
    """Stop a process this run started (SIGSTOP), as a long garbage-collection pause does."""
    os.kill(pid, signal.SIGSTOP)


def resume_process(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def kill_process(pid: int) -> None:
    """Kill a process this run started (SIGKILL); one that already exited is ignored."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
