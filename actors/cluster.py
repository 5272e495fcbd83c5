"""Cluster spec and life cycle: `up`, `status` and `down` of the replica actors.

A spec names the data centers, the voters and learners in each, the data
directory and the Raft timing. Each member becomes a detached actor named
`replica-<member>` in the spec's Ray namespace. It is placed by the custom
resource `dc-<data center>`, which the Ray node of that data center must
offer. The embedded default is three data centers (dc-a, dc-b, dc-c) with one
voter each, on one local Ray instance that offers all three resources.

`up` is idempotent: it finds the actors that exist and creates the rest.
`down` stops the actors and keeps their data, so the next `up` recovers it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants

from rayconf.actors.priority import check_nice
from rayconf.actors.replica import ReplicaActor
from rayconf.actors.replica_core import ReplicaSettings
from rayconf.actors.shard_store import ShardStoreActor, store_actor_name
from rayconf.actors.watch_hub import WatchHubActor, find_hub, hub_actor_name
from rayconf.actors.transport import replica_actor_name
from rayconf.errors import InvalidRequest, Unavailable
from rayconf.store.limits import Limits

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "rayconf"
# The fraction of a data center's resource that one actor takes, so that any
# number of members fit on a node that offers the resource with quantity 1.
RESOURCE_PER_ACTOR = 0.001


@dataclass(frozen=True, slots=True)
class DataCenter:
    name: str
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    # Shard stores (read replicas) in this data center.
    stores: int = 0
    # Watch hubs in this data center.
    hubs: int = 0

    def store_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}-s{number}" for number in range(1, self.stores + 1))

    def hub_names(self) -> tuple[str, ...]:
        return tuple(hub_actor_name(self.name, number) for number in range(1, self.hubs + 1))


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Everything `up` needs to create or find the cluster."""

    data_centers: tuple[DataCenter, ...]
    data_directory: str = "./rayconf-data"
    namespace: str = DEFAULT_NAMESPACE
    # 50 ms ticks with a 10-tick election timeout give elections in 0.5 to 1 s.
    tick_ms: int = 50
    settings: ReplicaSettings = field(default_factory=ReplicaSettings)
    # Request limits, including the inline limit and chunk size of large
    # values; every replica and client of the cluster uses the same ones.
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        members = self.members()
        if not self.voters():
            raise InvalidRequest("the cluster spec has no voters; give at least one data center a voter")
        duplicates = sorted({member for member in members if members.count(member) > 1})
        if duplicates:
            raise InvalidRequest(f"member names {duplicates} appear more than once in the cluster spec")
        if self.tick_ms < 1:
            raise InvalidRequest(f"tick_ms is {self.tick_ms}; give a positive number of milliseconds")
        check_nice("settings.chunk_io_nice", self.settings.chunk_io_nice)

    def voters(self) -> tuple[str, ...]:
        return tuple(member for dc in self.data_centers for member in dc.voters)

    def learners(self) -> tuple[str, ...]:
        return tuple(member for dc in self.data_centers for member in dc.learners)

    def members(self) -> list[str]:
        return list(self.voters() + self.learners())

    def stores(self) -> tuple[str, ...]:
        return tuple(store for dc in self.data_centers for store in dc.store_names())

    def stores_in(self, data_center: str) -> tuple[str, ...]:
        return tuple(store for dc in self.data_centers if dc.name == data_center for store in dc.store_names())

    def replicas_near(self, data_center: str) -> list[str]:
        """Return every member, those of `data_center` first, for a store to follow."""
        local = [m for dc in self.data_centers if dc.name == data_center for m in dc.voters + dc.learners]
        return local + [member for member in self.members() if member not in local]

    def data_center_of(self, member: str) -> str:
        for dc in self.data_centers:
            if member in dc.voters or member in dc.learners:
                return dc.name
        raise InvalidRequest(f"member {member!r} is not in the cluster spec")


def default_spec(data_directory: str = "./rayconf-data", namespace: str = DEFAULT_NAMESPACE,
                 tick_ms: int = 50, lease_reads: bool = True, store_leases: bool = True) -> ClusterSpec:
    """Return the embedded default: dc-a, dc-b and dc-c with one voter, shard store and watch hub each."""
    return ClusterSpec(
        data_centers=tuple(DataCenter(name, voters=(f"{name}-1",), stores=1, hubs=1) for name in ("dc-a", "dc-b", "dc-c")),
        data_directory=str(Path(data_directory).resolve()),
        namespace=namespace,
        tick_ms=tick_ms,
        settings=ReplicaSettings(lease_reads=lease_reads, store_leases=store_leases),
    )


def resources_for(spec: ClusterSpec) -> dict[str, float]:
    """Return the custom resources a single local Ray node needs to host `spec`."""
    return {dc.name: 1.0 for dc in spec.data_centers}


def use_loopback() -> None:
    """Make Ray in this process, and in the processes it starts, use 127.0.0.1 only.

    Call it before `ray.init` for a local instance, or before connecting to
    one. It is wrong for a Ray cluster that spans several machines.
    """
    # Ray 2.60 replaces a node address of 127.0.0.1 by the machine's outward
    # address (services.resolve_ip_for_localhost) unless it runs in its
    # single-machine mode, which RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 selects.
    # Ray reads that variable when it is imported, so the constant it sets is
    # changed here too; the processes this one starts inherit the variable.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def is_local_address(address: str) -> bool:
    """Return whether a Ray address names this machine's loopback (or "auto")."""
    host = address.rsplit(":", 1)[0]
    return address == "auto" or host in ("localhost", "::1", "[::1]") or host.startswith("127.")


# Ray returns call results up to this size inside the reply and puts larger
# ones in its object store, which costs a store write and a fetch. With Ray's
# default of 100 KiB, a batch of 64 reads of 14 KB files goes through the
# object store, and its round trip doubles. Read batches and committed-stream
# replies stay well below this value.
RAY_INLINE_RESULT_BYTES_MAX = 4 * 1024 * 1024


def ray_system_config() -> dict[str, int]:
    """Return the Ray system settings rayconf wants on the Ray instances it starts.

    For a Ray cluster started with `ray start`, pass the same settings with
    `--system-config` on the head node.
    """
    # Ray runs actors at nice 15 by default, behind every process at nice 0,
    # clients included. rayconf's actors are servers (actors/priority.py).
    return {"max_direct_call_object_size": RAY_INLINE_RESULT_BYTES_MAX, "worker_niceness": 0}


def start_local_ray(spec: ClusterSpec, *, num_cpus: int = 2) -> None:
    """Start a local Ray instance that offers every data center resource of `spec`.

    It binds to 127.0.0.1, so no traffic leaves the machine, and runs without
    the dashboard.
    """
    use_loopback()
    ray.init(
        # "local" starts a new instance even when another one runs on this
        # machine; without it, Ray attaches to the newest instance it finds.
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace=spec.namespace,
        resources=resources_for(spec),
        log_to_driver=False,
        logging_level=logging.ERROR,
        _node_ip_address="127.0.0.1",
        _system_config=ray_system_config(),
    )


@contextlib.contextmanager
def local_cluster(spec: ClusterSpec, *, num_cpus: int = 2) -> Iterator[dict[str, Any]]:
    """Start a local Ray instance and the cluster of `spec`, yield its status, and stop both on exit.

    The data directory stays, as with `down`.
    """
    start_local_ray(spec, num_cpus=num_cpus)
    try:
        yield up(spec)
    finally:
        try:
            down(spec)
        finally:
            ray.shutdown()


def find_replica(spec: ClusterSpec, member: str) -> Any:
    try:
        return ray.get_actor(replica_actor_name(member), namespace=spec.namespace)
    except ValueError:
        return None


def find_store(spec: ClusterSpec, store: str) -> Any:
    try:
        return ray.get_actor(store_actor_name(store), namespace=spec.namespace)
    except ValueError:
        return None


def up(spec: ClusterSpec, *, wait_for_leader_s: float = 30.0) -> dict[str, Any]:
    """Create the missing replica actors of `spec`, wait for a leader, return the status."""
    created = []
    for member in spec.members():
        if find_replica(spec, member) is not None:
            continue
        data_center = spec.data_center_of(member)
        ReplicaActor.options(  # type: ignore[attr-defined]
            name=replica_actor_name(member),
            namespace=spec.namespace,
            lifetime="detached",
            max_restarts=-1,
            num_cpus=0,
            resources={data_center: RESOURCE_PER_ACTOR},
        ).remote(member, spec.data_directory, spec.voters(), spec.learners(), spec.namespace, spec.tick_ms,
                 spec.settings, spec.limits)
        created.append(member)
    for dc in spec.data_centers:
        for store in dc.store_names():
            if find_store(spec, store) is not None:
                continue
            ShardStoreActor.options(  # type: ignore[attr-defined]
                name=store_actor_name(store),
                namespace=spec.namespace,
                lifetime="detached",
                max_restarts=-1,
                num_cpus=0,
                resources={dc.name: RESOURCE_PER_ACTOR},
            ).remote(store, dc.name, spec.replicas_near(dc.name), spec.namespace, spec.data_directory)
            created.append(store)
        for hub in dc.hub_names():
            if find_hub(spec, hub) is not None:
                continue
            WatchHubActor.options(  # type: ignore[attr-defined]
                name=hub,
                namespace=spec.namespace,
                lifetime="detached",
                max_restarts=-1,
                num_cpus=0,
                resources={dc.name: RESOURCE_PER_ACTOR},
            ).remote(hub, dc.name, spec.replicas_near(dc.name), spec.namespace, None, spec.data_directory)
            created.append(hub)
    if created:
        logger.info("created replicas %s in namespace %s", created, spec.namespace)
    deadline = time.monotonic() + wait_for_leader_s
    while True:
        current = status(spec)
        if current["leader"]:
            return current
        if time.monotonic() > deadline:
            raise Unavailable(
                f"no leader elected within {wait_for_leader_s} s; members: {current['members']}. "
                "Check that a majority of voters is running"
            )
        time.sleep(0.1)


def status(spec: ClusterSpec, *, timeout_s: float = 2.0) -> dict[str, Any]:
    """Return the leader, term and per-member health of the cluster, with its stores and hubs."""
    hubs = [hub for dc in spec.data_centers for hub in dc.hub_names()]
    members = _ask_each(spec.members(), lambda name: find_replica(spec, name), "status", timeout_s)
    stores = _ask_each(list(spec.stores()), lambda name: find_store(spec, name), "status", timeout_s)
    hub_statistics = _ask_each(hubs, lambda name: find_hub(spec, name), "statistics", timeout_s)

    leaders = {info.get("leader") for info in members.values() if info.get("role") == "leader"}
    leader = leaders.pop() if len(leaders) == 1 else ""
    terms = [info["term"] for info in members.values() if "term" in info]
    # The leader has applied every committed auth change. Without a leader, any member reports.
    reporter: dict[str, Any] = members.get(leader) or next((info for info in members.values() if "auth_enabled" in info), {})
    auth = "unknown"
    if reporter:
        auth = "enabled" if reporter.get("auth_enabled") else "disabled"
    return {
        "leader": leader,
        "term": max(terms) if terms else 0,
        "members": members,
        "stores": stores,
        "hubs": hub_statistics,
        "auth": auth,
    }


def set_faults(spec: ClusterSpec, blocked: list[tuple[str, str]], *, drop_probability: float = 0.0,
               delay_ms: int = 0, seed: int = 0) -> None:
    """Set the same fault filter on every replica and store of `spec`; empty arguments clear it.

    `blocked` contains ordered (from, to) member pairs. Replicas drop their Raft
    messages between them; a store blocks its direct ReadIndex calls for the
    pairs that name the replica it follows.
    """
    calls = []
    for member in spec.members():
        handle = find_replica(spec, member)
        if handle is not None:
            calls.append(handle.set_faults.remote(blocked, drop_probability, delay_ms, seed))
    for store in spec.stores():
        handle = find_store(spec, store)
        if handle is not None:
            calls.append(handle.set_faults.remote(blocked))
    ray.get(calls)


def _ask_each(names: list[str], find: Any, method: str, timeout_s: float) -> dict[str, Any]:
    """Call `method` on every named actor at once; report each as ok, missing or unreachable."""
    answers: dict[str, Any] = {}
    pending = {}
    for name in names:
        handle = find(name)
        if handle is None:
            answers[name] = {"health": "missing"}
        else:
            pending[name] = getattr(handle, method).remote()
    for name, reference in pending.items():
        try:
            answers[name] = {"health": "ok", **ray.get(reference, timeout=timeout_s)}
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as error:
            answers[name] = {"health": "unreachable", "error": type(error).__name__}
    return {name: answers[name] for name in names}


def down(spec: ClusterSpec, *, timeout_s: float = 30.0) -> list[str]:
    """Stop every replica actor of `spec` and wait until their names are free.

    The data directories stay, so the next `up` recovers the cluster from them.
    """
    stopped = []
    hubs = [hub for dc in spec.data_centers for hub in dc.hub_names()]
    for hub in hubs:
        handle = find_hub(spec, hub)
        if handle is not None:
            ray.kill(handle, no_restart=True)
    for store in spec.stores():
        handle = find_store(spec, store)
        if handle is not None:
            ray.kill(handle, no_restart=True)
    for member in spec.members():
        handle = find_replica(spec, member)
        if handle is not None:
            ray.kill(handle, no_restart=True)
            stopped.append(member)
    deadline = time.monotonic() + timeout_s
    while (
        any(find_replica(spec, member) is not None for member in stopped)
        or any(find_store(spec, store) is not None for store in spec.stores())
        or any(find_hub(spec, hub) is not None for hub in hubs)
    ):
        if time.monotonic() > deadline:
            raise Unavailable(f"replicas {stopped} were killed but their names are still taken after {timeout_s} s")
        time.sleep(0.05)
    logger.info("stopped replicas %s", stopped)
    return stopped
