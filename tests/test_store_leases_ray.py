"""Store read leases on a real local Ray instance (see actors/store_leases.py).

A store that holds a lease serves linearizable reads without calling the
leader. These tests check that the lease is used. They check that a write
waits for a holder that stopped responding only until its lease ends, and
that such a holder serves no stale read when it resumes. And a concurrent
workload over every data center must stay linearizable. A holder cut off by a partition is
covered by tests/test_cluster_ray.py, which runs with leases on.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Iterator

import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.read_channel import handshake_blocking, pack_frame, receive_frame
from rayconf.clients.client import Client
from rayconf.errors import Unavailable
from rayconf.sims import chaos_workload
from rayconf.sims.linearizability import Outcome, check_history
from rayconf.store.records import RangeRequest

TICK_MS = 20
WORKLOAD_S = 6.0


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-leases")
    built = cluster.default_spec(str(data), namespace="rayconf-test-leases", tick_ms=TICK_MS)
    assert built.settings.store_leases, "store leases are the default"
    with cluster.local_cluster(built):
        yield built


def _store_status(spec: ClusterSpec, store: str) -> dict[str, Any]:
    status: dict[str, Any] = ray.get(cluster.find_store(spec, store).status.remote())
    return status


def _wait_for_leases(spec: ClusterSpec, stores: tuple[str, ...]) -> str:
    """Wait until every store in `stores` holds a lease from the leader; return the leader."""
    deadline = time.monotonic() + 20
    while True:
        leader = cluster.status(spec)["leader"]
        statuses = [_store_status(spec, store) for store in stores]
        if leader and all(s["lease_leader"] == leader and s["lease_remaining_ms"] > 0 for s in statuses):
            return str(leader)
        assert time.monotonic() < deadline, f"stores never all held a lease: {statuses}"
        time.sleep(0.05)


def _pid(handle: Any) -> int:
    pid: int = ray.get(handle.__ray_call__.remote(lambda actor: os.getpid()))
    return pid


def test_stores_serve_reads_from_lease(spec: ClusterSpec) -> None:
    _wait_for_leases(spec, spec.stores())
    written = Client(spec, timeout_s=20.0).put("/leases/plain", b"v1")
    for data_center in spec.data_centers:
        store = spec.stores_in(data_center.name)[0]
        reader = Client(spec, data_center=data_center.name, timeout_s=20.0, session=False)
        # Right after a write a read takes the ReadIndex path, until the
        # leader has sent the store the new exposed index, within a tick.
        deadline = time.monotonic() + 10
        before = _store_status(spec, store)
        while True:
            reader.get("/leases/plain")
            if _store_status(spec, store)["lease_reads"] > before["lease_reads"]:
                break
            assert time.monotonic() < deadline, f"store {store} served no read from its lease"
            time.sleep(TICK_MS / 1000)
        before = _store_status(spec, store)
        for _ in range(5):
            kv = reader.get("/leases/plain")
            assert kv is not None and kv.value == b"v1"
            assert reader.last_read["revision"] >= written.revision
        after = _store_status(spec, store)
        assert after["lease_reads"] >= before["lease_reads"] + 5
        assert after["read_index_calls"] == before["read_index_calls"]


def test_stopped_holder_serves_no_stale_read(spec: ClusterSpec) -> None:
    writer = Client(spec, timeout_s=30.0)
    writer.put("/leases/stopped", b"old")
    leader = _wait_for_leases(spec, spec.stores())
    victim_dc = next(dc.name for dc in spec.data_centers if dc.name != spec.data_center_of(leader))
    victim = spec.stores_in(victim_dc)[0]
    pid = _pid(cluster.find_store(spec, victim))

    os.kill(pid, signal.SIGSTOP)
    try:
        # The stopped store cannot confirm the commit, so the leader returns
        # the put's result only once that store's lease has ended.
        written = writer.put("/leases/stopped", b"new")
        leader_status = ray.get(cluster.find_replica(spec, leader).status.remote())
        assert victim not in leader_status["store_leases"]

        other = Client(spec, data_center=spec.data_center_of(leader), timeout_s=20.0, session=False)
        kv = other.get("/leases/stopped")
        assert kv is not None
        assert kv.value == b"new"

        # The stopped store fails no call; a reader there gets an error that names it.
        with pytest.raises(Unavailable, match=f"shard store {victim} (in {victim_dc} )?did not reply"):
            Client(spec, data_center=victim_dc, timeout_s=1.0, session=False).get("/leases/stopped")

        # A read sent to the stopped store waits in its queue until the store resumes.
        queued = cluster.find_store(spec, victim).read.remote(RangeRequest(b"/leases/stopped"))
        time.sleep(0.3)
    finally:
        os.kill(pid, signal.SIGCONT)

    reply = ray.get(queued, timeout=30)
    assert [kv.value for kv in reply["response"].kvs] == [b"new"]
    assert reply["response"].revision >= written.revision
    reader = Client(spec, data_center=victim_dc, timeout_s=20.0, session=False)
    kv = reader.get("/leases/stopped")
    assert kv is not None
    assert kv.value == b"new"


def test_workload_is_linearizable(spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    _wait_for_leases(spec, spec.stores())
    before = {store: _store_status(spec, store)["lease_reads"] for store in spec.stores()}
    monkeypatch.setattr(chaos_workload, "THINK_TIME_S", 0.005)
    results = chaos_workload.run_clients(spec, WORKLOAD_S)
    assert results.unexpected == []
    history = results.recorder.history()
    assert len(history) > 100
    result = check_history(history, timeout_s=120)
    assert result.outcome is Outcome.LINEARIZABLE, result
    served = {store: _store_status(spec, store)["lease_reads"] - before[store] for store in spec.stores()}
    assert all(count > 0 for count in served.values()), served


def test_follower_replica_read_sees_last_write(spec: ClusterSpec) -> None:
    # A follower forwards the ReadIndex to the leader, which caps the result
    # at the exposed index. The follower must not lower it to its own commit
    # index, which may lag, nor read past it.
    writer = Client(spec, timeout_s=20.0)
    leader = _wait_for_leases(spec, spec.stores())
    followers = [cluster.find_replica(spec, member) for member in spec.members() if member != leader]
    for number in range(20):
        value = f"v{number}".encode()
        written = writer.put("/leases/follower", value)
        for follower in followers:
            response = ray.get(follower.read.remote(RangeRequest(b"/leases/follower"), "linearizable"))
            assert [kv.value for kv in response.kvs] == [value]
            assert response.revision >= written.revision


def test_lease_only_for_cluster_stores(spec: ClusterSpec) -> None:
    # Every write waits for every holder. So a name that no store has, or a
    # replica's name, must not get a lease, and writes keep their pace.
    leader = _wait_for_leases(spec, spec.stores())
    handle = cluster.find_replica(spec, leader)
    member = spec.members()[0]
    for name in ("ghost-store", member):
        assert ray.get(handle.grant_read_lease.remote(name, member)) is None, name
    assert ray.get(handle.grant_read_lease.remote(spec.stores()[0], "no-such-member")) is None
    endpoint = ray.get(handle.index_channel.remote())
    with socket.create_connection((endpoint["host"], endpoint["port"]), timeout=30) as connection:
        handshake_blocking(connection, leader, endpoint["secret"], role="replica")
        connection.sendall(pack_frame([1, "lease", "ghost-store", member, 0]))
        assert receive_frame(connection, 1 << 20) == [1, True, None]
    began = time.monotonic()
    Client(spec, timeout_s=30.0).put("/leases/ghost", b"written")
    assert time.monotonic() - began < 5.0, "a write waited for a lease nobody holds"
    assert "ghost-store" not in ray.get(handle.status.remote())["store_leases"]
