"""Lease reads beside a write in flight, on a real local Ray instance (see actors/store_leases.py).

A store serves a linearizable read from its lease while a write to other
keys is in flight, and sends a read of the key being written through
ReadIndex. To hold a write in flight long enough to watch, one store is
stopped: the leader returns no result before every lease holder confirmed
the entry, so the write waits until that store's lease ends. The ticks are
slower than the default here, which makes that lease, and the window, last
most of a second.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Iterator

import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.clients.client import Client

TICK_MS = 100


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-windows")
    built = cluster.default_spec(str(data), namespace="rayconf-test-windows", tick_ms=TICK_MS)
    with cluster.local_cluster(built):
        yield built


def _store_status(spec: ClusterSpec, store: str) -> dict[str, Any]:
    status: dict[str, Any] = ray.get(cluster.find_store(spec, store).status.remote())
    return status


def _wait_for_leases(spec: ClusterSpec) -> str:
    deadline = time.monotonic() + 30
    while True:
        leader = cluster.status(spec)["leader"]
        statuses = [_store_status(spec, store) for store in spec.stores()]
        if leader and all(s["lease_leader"] == leader and s["lease_remaining_ms"] > 0 for s in statuses):
            return str(leader)
        assert time.monotonic() < deadline, f"stores never all held a lease: {statuses}"
        time.sleep(0.05)


def test_reads_beside_a_write_in_flight(spec: ClusterSpec) -> None:
    writer = Client(spec, timeout_s=30.0)
    writer.put("/windows/written", b"old")
    writer.put("/windows/other", b"steady")
    leader = _wait_for_leases(spec)
    stopped_dc, reader_dc = [dc.name for dc in spec.data_centers if dc.name != spec.data_center_of(leader)]
    stopped = spec.stores_in(stopped_dc)[0]
    reader_store = spec.stores_in(reader_dc)[0]
    reader = Client(spec, data_center=reader_dc, timeout_s=20.0, session=False)
    before = _store_status(spec, reader_store)
    pid = ray.get(cluster.find_store(spec, stopped).__ray_call__.remote(lambda actor: os.getpid()))
    written: list[Any] = []

    os.kill(pid, signal.SIGSTOP)
    try:
        put = threading.Thread(target=lambda: written.append(writer.put("/windows/written", b"new")))
        put.start()
        seen_written: list[bytes] = []
        while put.is_alive():
            other = reader.get("/windows/other")
            assert other is not None and other.value == b"steady"
            current = reader.get("/windows/written")
            assert current is not None
            seen_written.append(current.value)
        put.join()
    finally:
        os.kill(pid, signal.SIGCONT)

    after = _store_status(spec, reader_store)
    assert after["lease_reads_beside_writes"] > before["lease_reads_beside_writes"], \
        "no read of the other key was served from the lease while the write was in flight"
    assert after["read_index_calls"] > before["read_index_calls"], \
        "reads of the key being written did not take the ReadIndex path"
    if b"new" in seen_written:
        # Once a read saw the new value, no later read may see the old one.
        assert b"old" not in seen_written[seen_written.index(b"new"):]
    assert seen_written[0] == b"old", "the write's result had not left the leader, nor its entry been exposed"
    current = reader.get("/windows/written")
    assert current is not None and current.value == b"new"
    assert reader.last_read["revision"] >= written[0].revision
