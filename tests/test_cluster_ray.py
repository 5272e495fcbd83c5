"""The replicated cluster on a real local Ray instance: actors, disks and restarts."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterator

import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.replica_core import ReplicaSettings
from rayconf.clients.client import Client
from rayconf.errors import Compacted, InvalidKey, InvalidRequest, TooManyOperations, TxnFailed, Unavailable, ValueTooLarge
from rayconf.store.records import KeyValue, Put, Txn


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-data")
    # Small snapshot settings, so that a short test compacts the log.
    built = dataclasses.replace(
        cluster.default_spec(str(data), namespace="rayconf-test", tick_ms=20),
        settings=ReplicaSettings(snapshot_interval_entries=200, compaction_margin_entries=5),
    )
    with cluster.local_cluster(built):
        yield built


@pytest.fixture
def client(spec: ClusterSpec) -> Client:
    return Client(spec, timeout_s=20.0, principal="tester")


def test_put_get_and_history(client: Client) -> None:
    first = client.put("/app/db/timeout", b"30", note="initial")
    second = client.put("/app/db/timeout", b"45", note="raise it")
    assert second.revision == first.revision + 1
    kv = client.get("/app/db/timeout")
    assert kv is not None and kv.value == b"45"
    old = client.get("/app/db/timeout", revision=first.revision)
    assert old is not None and old.value == b"30"
    notes = [entry.change.note for entry in client.history("/app/db/timeout") if entry.change]
    assert notes[-2:] == ["initial", "raise it"]
    principals = {entry.change.principal for entry in client.history("/app/db/timeout") if entry.change}
    assert principals == {"tester"}


def test_prefix_range_and_delete(client: Client) -> None:
    for name in ("a", "b", "c"):
        client.put(f"/svc/range/{name}", name.encode())
    assert client.range("/svc/range").count == 3
    assert client.delete("/svc/range", prefix=True).deleted == 3
    assert client.range("/svc/range").count == 0


def test_cas_conflict_raises(client: Client) -> None:
    client.put("/flags/new-ui", b"off")
    client.cas("/flags/new-ui", b"off", b"on")
    with pytest.raises(TxnFailed) as raised:
        client.cas("/flags/new-ui", b"off", b"on")
    assert raised.value.current == b"on"


def test_invalid_path_rejected_locally(client: Client) -> None:
    with pytest.raises(InvalidKey):
        client.put("/bad//path", b"x")


def test_serializable_read_on_every_member(spec: ClusterSpec, client: Client) -> None:
    written = client.put("/read/here", b"v")
    for member in spec.members():
        handle = cluster.find_replica(spec, member)
        deadline = time.monotonic() + 10
        while True:
            from rayconf.store.records import RangeRequest
            response = ray.get(handle.read.remote(RangeRequest(b"/read/here"), "serializable"))
            if response.revision >= written.revision or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.kvs and response.kvs[0].value == b"v"
        linearizable = ray.get(handle.read.remote(RangeRequest(b"/read/here"), "linearizable"))
        assert linearizable.kvs[0].value == b"v"


def test_leader_restart_keeps_acknowledged_writes(spec: ClusterSpec, client: Client) -> None:
    acknowledged = {f"/durable/{n}": str(n).encode() for n in range(20)}
    for key, value in acknowledged.items():
        client.put(key, value)
    leader = cluster.status(spec)["leader"]
    ray.kill(cluster.find_replica(spec, leader), no_restart=False)
    client.put("/durable/after", b"restart")
    for key, value in acknowledged.items():
        kv = client.get(key)
        assert kv is not None and kv.value == value
    new_leader = cluster.status(spec)["leader"]
    assert new_leader
    deadline = time.monotonic() + 30
    while True:
        members = cluster.status(spec)["members"]
        restarted = members[leader]
        if restarted.get("health") == "ok" and restarted["applied_index"] >= members[new_leader]["applied_index"]:
            break
        assert time.monotonic() < deadline, f"the killed replica did not come back and catch up: {restarted}"
        time.sleep(0.2)
    assert restarted["uptime_s"] < 30


def test_down_and_up_recovers_data(spec: ClusterSpec, client: Client) -> None:
    written = client.put("/persist/me", b"yes")
    started = time.monotonic()
    cluster.down(spec)
    status = cluster.up(spec)
    assert status["leader"]
    for member, info in status["members"].items():
        assert info["uptime_s"] <= time.monotonic() - started + 0.5, f"{member} was not restarted by up"
    kv = Client(spec, timeout_s=20.0).get("/persist/me")
    assert kv is not None and kv.value == b"yes"
    assert kv.mod_revision == written.revision
    assert all(info["revision"] >= written.revision for info in status["members"].values())


def _set_blocked(spec: ClusterSpec, blocked: list[tuple[str, str]]) -> None:
    cluster.set_faults(spec, blocked)


def test_cut_off_data_center_serves_stale_reads(spec: ClusterSpec, client: Client) -> None:
    client.put("/part/flag", b"before")
    far = Client(spec, data_center="dc-c", timeout_s=3.0, session=False)
    deadline = time.monotonic() + 20
    while (far.get("/part/flag", consistency="serializable") or KeyValue(b"", b"", 0, 0, 0)).value != b"before":
        assert time.monotonic() < deadline, "the dc-c store never caught up"
        time.sleep(0.1)

    cut = [(a, b) for a in spec.members() for b in spec.members()
           if a != b and "dc-c" in (spec.data_center_of(a), spec.data_center_of(b))]
    _set_blocked(spec, cut)
    try:
        written = client.put("/part/flag", b"after")
        time.sleep(1.0)
        stale = far.get("/part/flag", consistency="serializable")
        assert stale is not None and stale.value == b"before"
        assert far.last_read["revision"] < written.revision
        assert far.last_read["age_ms"] >= 500
        started = time.monotonic()
        with pytest.raises(Unavailable):
            far.get("/part/flag")
        assert time.monotonic() - started < 3.0 + 5.0
        with pytest.raises(Unavailable):
            far.get("/part/flag", consistency=200)
    finally:
        _set_blocked(spec, [])
    deadline = time.monotonic() + 30
    while True:
        try:
            healed = far.get("/part/flag")
        except Unavailable:
            healed = None
        if healed is not None and healed.value == b"after":
            break
        assert time.monotonic() < deadline, "dc-c did not catch up after healing"
        time.sleep(0.2)


def test_session_reads_own_writes_in_other_data_center(spec: ClusterSpec) -> None:
    writer = Client(spec, data_center="dc-b", timeout_s=20.0)
    written = writer.put("/session/key", b"mine")
    seen = writer.get("/session/key", consistency="serializable")
    assert seen is not None and seen.value == b"mine"
    assert writer.last_read["revision"] >= written.revision


def test_async_client_coalesces_reads(spec: ClusterSpec) -> None:
    import asyncio

    from rayconf.clients.async_client import AsyncClient

    async def scenario() -> tuple[list[bytes | None], int]:
        client = AsyncClient(spec, timeout_s=20.0)
        await client.put("/async/a", b"1")
        await client.cas("/async/a", b"1", b"2")
        calls_before = client.read_calls
        results = await asyncio.gather(*(client.get("/async/a") for _ in range(64)))
        return [kv.value if kv else None for kv in results], client.read_calls - calls_before

    values, calls = asyncio.run(scenario())
    assert values == [b"2"] * 64
    assert calls < 64


def test_client_ls_lists_children(client: Client) -> None:
    client.put("/tree/a/x", b"1")
    client.put("/tree/a/y/z", b"2")
    client.put("/tree/b", b"3")
    assert [entry.name for entry in client.ls("/tree/")] == [b"a/", b"b"]
    assert [entry.name for entry in client.ls("/tree/a")] == [b"x", b"y/"]


BAD_WRITES = [
    pytest.param(lambda c: c.put("/too/big", b"x" * (10 * 1024 * 1024 + 1)), ValueTooLarge, id="oversized value"),
    pytest.param(lambda c: c.put("/bad//path", b"x"), InvalidKey, id="invalid path"),
    pytest.param(lambda c: c.put("/wrong/type", "text"), InvalidRequest, id="str value"),
    pytest.param(lambda c: c.txn(Txn(success=tuple(Put(f"/many/{n}".encode(), b"") for n in range(129)))),
                 TooManyOperations, id="too many txn operations"),
    pytest.param(lambda c: c.put(b"", b"x"), InvalidKey, id="empty raw key"),
]


@pytest.mark.parametrize(("call", "error"), BAD_WRITES)
def test_bad_write_changes_nothing(spec: ClusterSpec, client: Client, call, error) -> None:  # type: ignore[no-untyped-def]
    written = client.put("/guard/key", b"kept")
    deadline = time.monotonic() + 20
    while True:
        before = {member: info["revision"] for member, info in cluster.status(spec)["members"].items()}
        if all(revision >= written.revision for revision in before.values()):
            break
        assert time.monotonic() < deadline, f"members did not apply revision {written.revision}: {before}"
        time.sleep(0.05)
    with pytest.raises(error):
        call(client)
    after = {member: info["revision"] for member, info in cluster.status(spec)["members"].items()}
    assert after == before
    kv = client.get("/guard/key")
    assert kv is not None and kv.value == b"kept"


def test_store_loads_snapshot_when_behind(spec: ClusterSpec, client: Client) -> None:
    store = cluster.find_store(spec, "dc-a-s1")
    followed = cluster.find_replica(spec, "dc-a-1")
    # A member compacts its log up to its applied index less the margin, and
    # a follower may not have applied the last put yet. So write and snapshot
    # until the store's replica has compacted the start of its log away.
    deadline = time.monotonic() + 30
    while ray.get(followed.status.remote())["log_first_index"] <= 1:
        assert time.monotonic() < deadline, "the store's replica never compacted its log"
        client.put("/snap/filler", b"x")
        for member in spec.members():
            ray.get(cluster.find_replica(spec, member).take_snapshot.remote())
    ray.kill(store, no_restart=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            kv = client.get("/snap/filler", consistency="serializable")
            if kv is not None:
                break
        except Unavailable:
            pass
        assert time.monotonic() < deadline, "the restarted store never caught up"
        time.sleep(0.2)
    assert cluster.status(spec)["stores"]["dc-a-s1"]["snapshots_loaded"] >= 1
    scratch = Path(spec.data_directory) / "stores" / "dc-a-s1"
    assert len(list(scratch.iterdir())) == 1


def test_compacted_read_error_crosses_ray(client: Client) -> None:
    first = client.put("/compact/me", b"1")
    client.put("/compact/me", b"2")
    latest = client.put("/compact/me", b"3")
    client.compact(latest.revision)
    with pytest.raises(Compacted) as raised:
        client.get("/compact/me", revision=first.revision)
    assert raised.value.compact_revision == latest.revision


def test_client_watch_through_default_hub(client: Client) -> None:
    from rayconf.clients.watch import close_streams

    try:
        with client.watch("/watched/", prev_kv=True) as changes:
            client.put("/watched/a", b"1")
            client.put("/watched/a", b"2")
            batches = []
            deadline = time.monotonic() + 20
            while len(batches) < 2:
                assert time.monotonic() < deadline, f"only {batches} arrived"
                batch = changes.get(timeout_s=1.0)
                if batch is not None and batch.events:
                    batches.append(batch)
        values = [batch.events[0].kv.value for batch in batches]
        assert values == [b"1", b"2"]
        assert batches[1].events[0].prev_kv is not None
        assert batches[1].events[0].prev_kv.value == b"1"
        assert batches[0].revision < batches[1].revision
    finally:
        close_streams()
