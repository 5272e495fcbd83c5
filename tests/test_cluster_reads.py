"""Linearizable reads on a real local Ray instance: the store's path to the leader and the lease.

Stores ask the leader for a ReadIndex on its index channel, or over a Ray
call when the channel is closed, share one call between the reads waiting
at the same time, and honour the partitions of the fault filter. The leader
replies from its lease by default, and a pause of its process must not
stretch that lease, on either path. A concurrent workload whose reads all
take the index channel must stay linearizable.

Store read leases are off here, so every linearizable read takes the
ReadIndex path; tests/test_store_leases.py covers the leases.
"""

from __future__ import annotations

import dataclasses
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
from rayconf.errors import NotLeader, Unavailable
from rayconf.sims import chaos_workload
from rayconf.sims.linearizability import Outcome, check_history
from rayconf.store.records import RangeRequest

TICK_MS = 20
WORKLOAD_S = 6.0


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-data")
    built = cluster.default_spec(str(data), namespace="rayconf-test-reads", tick_ms=TICK_MS)
    assert built.settings.lease_reads, "lease reads are the default"
    built = dataclasses.replace(built, settings=dataclasses.replace(built.settings, store_leases=False))
    with cluster.local_cluster(built):
        yield built


@pytest.fixture
def client(spec: ClusterSpec) -> Client:
    return Client(spec, timeout_s=20.0, principal="tester")


def _leader(spec: ClusterSpec) -> str:
    deadline = time.monotonic() + 20
    while True:
        leader: str = cluster.status(spec)["leader"]
        if leader:
            return leader
        assert time.monotonic() < deadline, "no leader within 20 s"
        time.sleep(0.1)


def _store_status(spec: ClusterSpec, store: str) -> dict[str, Any]:
    status: dict[str, Any] = ray.get(cluster.find_store(spec, store).status.remote())
    return status


def _other_data_center(spec: ClusterSpec, member: str) -> str:
    return next(dc.name for dc in spec.data_centers if dc.name != spec.data_center_of(member))


def _wait_for_store_leader(spec: ClusterSpec, store: str, leader: str) -> None:
    deadline = time.monotonic() + 10
    while _store_status(spec, store)["leader"] != leader:
        assert time.monotonic() < deadline, f"store {store} never learned that {leader} leads"
        time.sleep(0.05)


def test_read_index_over_channel(spec: ClusterSpec, client: Client) -> None:
    leader = _leader(spec)
    data_center = _other_data_center(spec, leader)
    store = spec.stores_in(data_center)[0]
    _wait_for_store_leader(spec, store, leader)
    before = _store_status(spec, store)

    written = client.put("/reads/direct", b"v1")
    reader = Client(spec, data_center=data_center, timeout_s=10.0, session=False)
    for _ in range(5):
        kv = reader.get("/reads/direct")
        assert kv is not None and kv.value == b"v1"
        assert reader.last_read["revision"] >= written.revision

    after = _store_status(spec, store)
    assert after["read_index_channel_calls"] >= before["read_index_channel_calls"] + 5
    assert after["read_index_direct_calls"] == before["read_index_direct_calls"]
    assert ray.get(cluster.find_replica(spec, leader).status.remote())["index_channel"]


def test_read_index_over_ray_when_channel_closed(spec: ClusterSpec, client: Client) -> None:
    leader = _leader(spec)
    data_center = _other_data_center(spec, leader)
    store = spec.stores_in(data_center)[0]
    _wait_for_store_leader(spec, store, leader)
    handle = cluster.find_replica(spec, leader)
    ray.get(handle.__ray_call__.remote(lambda actor: actor._index_server.stop_thread()))
    try:
        before = _store_status(spec, store)
        written = client.put("/reads/direct", b"v2")
        reader = Client(spec, data_center=data_center, timeout_s=10.0, session=False)
        for _ in range(5):
            kv = reader.get("/reads/direct")
            assert kv is not None and kv.value == b"v2"
            assert reader.last_read["revision"] >= written.revision
        after = _store_status(spec, store)
    finally:
        ray.get(handle.__ray_call__.remote(lambda actor: actor._start_index_channel()))

    assert after["read_index_direct_calls"] >= before["read_index_direct_calls"] + 5
    assert after["read_index_channel_calls"] == before["read_index_channel_calls"]


def test_concurrent_reads_share_read_index_call(spec: ClusterSpec, client: Client) -> None:
    written = client.put("/reads/shared", b"shared")
    store_name = spec.stores_in(spec.data_centers[0].name)[0]
    store = cluster.find_store(spec, store_name)
    before = _store_status(spec, store_name)["read_index_calls"]

    calls = 60
    replies = ray.get([store.read.remote(RangeRequest(b"/reads/shared")) for _ in range(calls)])

    for reply in replies:
        assert [kv.value for kv in reply["response"].kvs] == [b"shared"]
        assert reply["response"].revision >= written.revision
    index_calls = _store_status(spec, store_name)["read_index_calls"] - before
    assert 1 <= index_calls < calls // 2


def test_store_honours_replica_only_partition(spec: ClusterSpec, client: Client) -> None:
    # The nemesis may cut the network on the replicas only. A store learns the
    # followed replica's filter from its stream replies, so it stops asking the
    # leader directly from a data center that cannot reach it.
    leader = _leader(spec)
    data_center = _other_data_center(spec, leader)
    cut = [(a, b) for a in spec.members() for b in spec.members()
           if a != b and data_center in (spec.data_center_of(a), spec.data_center_of(b))]
    reader = Client(spec, data_center=data_center, timeout_s=2.0, session=False)
    ray.get([cluster.find_replica(spec, member).set_faults.remote(cut) for member in spec.members()])
    try:
        time.sleep(1.0)  # longer than one poll of the store
        with pytest.raises(Unavailable):
            reader.get("/reads/direct")
    finally:
        ray.get([cluster.find_replica(spec, member).set_faults.remote([]) for member in spec.members()])
    deadline = time.monotonic() + 30
    while True:
        try:
            reader.get("/reads/direct")
            break
        except Unavailable:
            assert time.monotonic() < deadline, f"{data_center} did not recover after healing"


def _pid(handle: Any) -> int:
    pid: int = ray.get(handle.__ray_call__.remote(lambda actor: os.getpid()))
    return pid


def test_resumed_leader_serves_no_stale_read(spec: ClusterSpec, client: Client) -> None:
    # A leader process stopped for much longer than the election timeout loses
    # its lease while it sleeps, and the other voters elect a new leader that
    # takes writes. When the old leader resumes, the first call it runs may be
    # a read that was queued during the pause. Its lease must be judged by the
    # time that passed, not by the ticks its stopped loop did not count.
    client.put("/reads/paused", b"old")
    old_leader = _leader(spec)
    handle = cluster.find_replica(spec, old_leader)
    pid = _pid(handle)
    os.kill(pid, signal.SIGSTOP)
    try:
        # A new client, so the write does not wait on the stopped leader it knew.
        written = Client(spec, timeout_s=20.0).put("/reads/paused", b"new")
        queued_reads = [handle.read.remote(RangeRequest(b"/reads/paused"), "linearizable", 5.0) for _ in range(3)]
        time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    for reference in queued_reads:
        try:
            response = ray.get(reference, timeout=30)
        except ray.exceptions.RayTaskError as error:
            assert isinstance(error.cause, (NotLeader, Unavailable)), error
            continue
        assert [kv.value for kv in response.kvs] == [b"new"]
        assert response.revision >= written.revision
    current = client.get("/reads/paused")
    assert current is not None and current.value == b"new"


def _index_connection(endpoint: dict[str, Any], member: str) -> socket.socket:
    connection = socket.create_connection((endpoint["host"], endpoint["port"]), timeout=30)
    handshake_blocking(connection, member, endpoint["secret"], role="replica")
    return connection


def _receive(connection: socket.socket) -> Any:
    return receive_frame(connection, 1 << 20)


def test_resumed_leader_answers_no_stale_read_point(spec: ClusterSpec, client: Client) -> None:
    # The index channel's thread answers from what the event loop published.
    # A request that waited in the socket while the leader's process was
    # stopped must be refused when it resumes: its lease ended meanwhile,
    # and a new leader has committed a write the old read point lacks.
    client.put("/reads/index-paused", b"old")
    old_leader = _leader(spec)
    handle = cluster.find_replica(spec, old_leader)
    with _index_connection(ray.get(handle.index_channel.remote()), old_leader) as connection:
        deadline = time.monotonic() + 10
        while True:
            connection.sendall(pack_frame([1, "index", 0]))
            reply = _receive(connection)
            if reply[1]:
                break
            assert time.monotonic() < deadline, f"the leader never answered on its index channel: {reply}"
            time.sleep(0.05)
        pid = _pid(handle)
        os.kill(pid, signal.SIGSTOP)
        try:
            written = Client(spec, timeout_s=20.0).put("/reads/index-paused", b"new")
            connection.sendall(pack_frame([2, "index", 0]))
            time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        reply = _receive(connection)

    assert reply[:3] == [2, False, "Unavailable"], reply
    current = client.get("/reads/index-paused")
    assert current is not None and current.value == b"new"
    assert client.last_read["revision"] >= written.revision


def test_workload_through_the_index_channel_is_linearizable(spec: ClusterSpec,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Store leases are off in this module, so every linearizable read asks
    # the leader for a ReadIndex, and the entries in its answers are applied
    # ahead of the stores' streams.
    _leader(spec)
    before = sum(_store_status(spec, store)["read_index_channel_calls"] for store in spec.stores())
    monkeypatch.setattr(chaos_workload, "THINK_TIME_S", 0.005)
    results = chaos_workload.run_clients(spec, WORKLOAD_S)
    assert results.unexpected == []
    history = results.recorder.history()
    assert len(history) > 100
    result = check_history(history, timeout_s=120)
    assert result.outcome is Outcome.LINEARIZABLE, result
    after = sum(_store_status(spec, store)["read_index_channel_calls"] for store in spec.stores())
    assert after > before


def test_store_recovers_from_paused_leader(spec: ClusterSpec) -> None:
    # The store follows the replica of its own data center, which leads. When
    # that process stops, the store stops hearing from it without any call
    # failing. It must move on to another replica, learn the new leader and
    # serve linearizable reads again while the old leader is still stopped.
    leader = _leader(spec)
    data_center = spec.data_center_of(leader)
    pid = _pid(cluster.find_replica(spec, leader))
    os.kill(pid, signal.SIGSTOP)
    try:
        written = Client(spec, timeout_s=30.0).put("/reads/after-pause", b"new leader")
        reader = Client(spec, data_center=data_center, timeout_s=40.0, session=False)
        kv = reader.get("/reads/after-pause")
        assert kv is not None
        assert kv.value == b"new leader"
        assert reader.last_read["revision"] >= written.revision
    finally:
        os.kill(pid, signal.SIGCONT)
