"""Large values on a real local Ray cluster: chunked writes, checked reads, faults and garbage collection."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec, find_replica, find_store
from rayconf.actors.replica_core import ReplicaSettings
from rayconf.clients.async_client import AsyncClient
from rayconf.clients.client import Client
from rayconf.clients.large_values import manifest_of
from rayconf.errors import InvalidRequest, Unavailable, ValueTooLarge
from rayconf.store.limits import MIB
from rayconf.store.manifest import MANIFEST_PREFIX, split_value
from rayconf.store.records import Compare, CompareOp, CompareTarget, Put, RangeRequest, Txn

TEN_MIB = 10 * MIB
# Chunk files younger than this survive garbage collection; short, so tests need not wait long.
GRACE_S = 1.0


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-large")
    built = dataclasses.replace(
        cluster.default_spec(str(data), namespace="rayconf-large-test", tick_ms=20),
        settings=ReplicaSettings(chunk_orphan_grace_s=GRACE_S),
    )
    with cluster.local_cluster(built):
        yield built


@pytest.fixture
def client(spec: ClusterSpec) -> Client:
    return Client(spec, timeout_s=30.0, principal="tester")


def random_value(size_bytes: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size_bytes)


def chunk_files(spec: ClusterSpec, member: str) -> set[bytes]:
    """Return the digests of the chunk files in `member`'s data directory."""
    directory = Path(spec.data_directory) / member / "chunks"
    if not directory.is_dir():
        return set()
    return {bytes.fromhex(path.name) for folder in directory.iterdir() if folder.is_dir()
            for path in folder.iterdir() if not path.name.endswith(".partial")}


def wait_until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_put_get_ten_mib_byte_for_byte(spec: ClusterSpec, client: Client) -> None:
    value = random_value(TEN_MIB, seed=1)
    written = client.put("/docs/routing", value, note="routing table")
    kv = client.get("/docs/routing")
    assert kv is not None
    assert kv.value == value
    assert kv.mod_revision == written.revision
    stale = client.get("/docs/routing", consistency="serializable", min_revision=written.revision)
    assert stale is not None
    assert stale.value == value
    # The writer's cache contains the chunks it uploaded. A client without a
    # cache fetches every chunk from a replica.
    fetched = Client(spec, timeout_s=30.0, chunk_cache_bytes=0).get("/docs/routing")
    assert fetched is not None
    assert fetched.value == value


def test_large_value_reread_from_cache(spec: ClusterSpec, client: Client) -> None:
    first = random_value(3 * MIB, seed=40)
    client.put("/docs/cached", first)
    reader = Client(spec, timeout_s=30.0)
    assert reader.get("/docs/cached").value == first  # type: ignore[union-attr]
    assert reader.large_values.cache.stats()["misses"] == 3
    assert reader.get("/docs/cached").value == first  # type: ignore[union-attr]
    assert reader.large_values.cache.stats()["hits"] == 3

    # Only the chunk that changed is fetched for the next version.
    second = first[:MIB] + random_value(MIB, seed=41) + first[2 * MIB:]
    client.put("/docs/cached", second)
    assert reader.get("/docs/cached").value == second  # type: ignore[union-attr]
    assert reader.large_values.cache.stats()["misses"] == 4

    async def read_async() -> bytes | None:
        aio = AsyncClient(spec, timeout_s=30.0)
        await aio.get("/docs/cached")
        kv = await aio.get("/docs/cached")
        assert aio.large_values.cache.stats()["hits"] >= 3
        return None if kv is None else kv.value

    assert asyncio.run(read_async()) == second


def test_async_client_round_trips_large_value(spec: ClusterSpec) -> None:
    import asyncio

    from rayconf.clients.async_client import AsyncClient

    value = random_value(TEN_MIB, seed=30)

    async def scenario() -> bytes | None:
        client = AsyncClient(spec, timeout_s=30.0)
        await client.put("/docs/async", value)
        kv = await client.get("/docs/async")
        return None if kv is None else kv.value

    assert asyncio.run(scenario()) == value


def test_chunks_on_quorum_when_acknowledged(spec: ClusterSpec, client: Client) -> None:
    value = random_value(3 * MIB + 5, seed=2)
    client.put("/docs/quorum", value)
    manifest, _ = split_value(value, spec.limits.chunk_bytes)
    holders = [member for member in spec.voters() if set(manifest.chunk_digests) <= chunk_files(spec, member)]
    assert len(holders) >= 2, f"only {holders} hold every chunk right after the put"
    wait_until(lambda: all(set(manifest.chunk_digests) <= chunk_files(spec, member) for member in spec.voters()),
               30, "every voter holds every chunk")


def test_raft_log_carries_only_manifests(spec: ClusterSpec, client: Client) -> None:
    written = client.put("/docs/log-size", random_value(TEN_MIB, seed=3))
    leader = find_replica(spec, client.status()["leader"])
    status = ray.get(leader.status.remote())
    reply = ray.get(leader.committed_since.remote(max(0, status["applied_index"] - 3), 10, 0.1))
    assert reply["snapshot"] is None
    sizes = [len(data) for _, _, data in reply["entries"]]
    assert sizes, f"no entries after index {status['applied_index'] - 3}"
    assert max(sizes) < 4096
    assert client.get("/docs/log-size", min_revision=written.revision) is not None


def test_history_returns_every_large_version(client: Client) -> None:
    first = random_value(TEN_MIB, seed=4)
    second = random_value(TEN_MIB, seed=5)
    client.put("/docs/history", first, note="first")
    client.put("/docs/history", second, note="second")
    entries = client.history("/docs/history")
    values = [entry.event.kv.value for entry in entries]
    assert len(values) == 2
    assert values[0] == first
    assert values[1] == second


def test_txn_compares_and_reads_large_values(client: Client) -> None:
    old = random_value(TEN_MIB, seed=6)
    new = random_value(TEN_MIB, seed=7)
    client.put("/docs/txn", old)
    client.cas("/docs/txn", old, new)
    kv = client.get("/docs/txn")
    assert kv is not None
    assert kv.value == new
    guard = Compare(b"/docs/txn", CompareTarget.VALUE, CompareOp.EQUAL, old)
    failed = client.txn(Txn(compares=(guard,), success=(Put(b"/docs/txn", b"small"),),
                            failure=(RangeRequest(b"/docs/txn"),)))
    assert not failed.succeeded
    current = failed.responses[0]
    assert current.kvs[0].value == new  # type: ignore[union-attr]
    replaced = client.txn(Txn(success=(Put(b"/docs/txn", b"small", prev_kv=True),)))
    assert replaced.responses[0].prev_kv.value == new  # type: ignore[union-attr]


def test_watch_event_carries_manifest_and_fetches_value(client: Client) -> None:
    from rayconf.clients.watch import close_streams

    value = random_value(TEN_MIB, seed=8)
    try:
        with client.watch("/watched-large/") as changes:
            written = client.put("/watched-large/doc", value)
            deadline = time.monotonic() + 30
            events = []
            while not events:
                assert time.monotonic() < deadline, "no event arrived"
                batch = changes.get(timeout_s=1.0)
                if batch is not None:
                    events.extend(batch.events)
    finally:
        close_streams()
    kv = events[0].kv
    assert kv.mod_revision == written.revision
    manifest = manifest_of(kv.value)
    assert manifest is not None
    assert manifest.size_bytes == TEN_MIB
    assert manifest.value_digest == hashlib.sha256(value).digest()
    assert len(kv.value) < 1024
    assert client.value_of(kv).value == value


def test_manifest_lookalike_value_round_trips(client: Client) -> None:
    # Such a value travels as chunks, so reading it back never mistakes it for a manifest.
    value = MANIFEST_PREFIX + b"hello"
    client.put("/large/lookalike", value)
    kv = client.get("/large/lookalike")
    assert kv is not None and kv.value == value


def test_note_with_newline_rejected(client: Client) -> None:
    client.put("/large/noted", b"kept")
    before = client.get("/large/noted")
    with pytest.raises(InvalidRequest, match="unprintable character U\\+000A"):
        client.put("/large/noted", b"changed", note="tuning\n 999 root approved")
    assert client.get("/large/noted") == before


def test_value_above_max_rejected_with_size_and_limit(client: Client) -> None:
    with pytest.raises(ValueTooLarge) as raised:
        client.put("/docs/too-big", b"x" * (TEN_MIB + 1))
    assert raised.value.size_bytes == TEN_MIB + 1
    assert raised.value.limit_bytes == TEN_MIB
    assert "max_value_bytes" in str(raised.value)
    assert client.get("/docs/too-big") is None


def test_put_file_and_get_to_file(client: Client, tmp_path: Path) -> None:
    source = tmp_path / "model.json"
    source.write_bytes(random_value(TEN_MIB - 3, seed=9))
    client.put_file("/docs/file", source)
    target = tmp_path / "copy.json"
    assert client.get_to_file("/docs/file", target) is not None
    assert target.read_bytes() == source.read_bytes()
    assert client.get_to_file("/docs/absent", tmp_path / "absent") is None
    assert not (tmp_path / "absent").exists()


def test_put_file_above_max_names_size_and_limit(client: Client, tmp_path: Path) -> None:
    source = tmp_path / "too-big.bin"
    source.write_bytes(b"x" * (TEN_MIB + 1))
    with pytest.raises(ValueTooLarge) as raised:
        client.put_file("/docs/too-big-file", source)
    assert raised.value.size_bytes == TEN_MIB + 1
    assert str(TEN_MIB + 1) in str(raised.value)
    assert client.get("/docs/too-big-file") is None


def test_corrupt_chunk_is_detected_served_and_repaired(spec: ClusterSpec, client: Client) -> None:
    value = random_value(4 * MIB, seed=10)
    client.put("/docs/corrupt", value)
    manifest, _ = split_value(value, spec.limits.chunk_bytes)
    victim = spec.voters()[0]
    wait_until(lambda: set(manifest.chunk_digests) <= chunk_files(spec, victim), 30, f"{victim} holds the chunks")
    digest = manifest.chunk_digests[1]
    path = Path(spec.data_directory) / victim / "chunks" / digest.hex()[:2] / digest.hex()
    damaged = bytearray(path.read_bytes())
    damaged[12345] ^= 0x5A
    path.write_bytes(bytes(damaged))

    # A client in the victim's data center reads chunks from the victim first.
    reader = Client(spec, timeout_s=30.0, data_center=spec.data_center_of(victim))
    kv = reader.get("/docs/corrupt")
    assert kv is not None
    assert kv.value == value
    assert hashlib.sha256(path.read_bytes()).digest() == digest
    statistics = ray.get(find_replica(spec, victim).chunk_statistics.remote())
    assert statistics["corrupt_chunks_repaired"] >= 1


def test_lost_chunk_file_fetched_back_after_compaction(spec: ClusterSpec, client: Client) -> None:
    value = random_value(2 * MIB, seed=14)
    client.put("/docs/lost", value)
    manifest, _ = split_value(value, spec.limits.chunk_bytes)
    victim = spec.voters()[1]
    wait_until(lambda: set(manifest.chunk_digests) <= chunk_files(spec, victim), 30, f"{victim} holds the chunks")
    digest = manifest.chunk_digests[0]
    (Path(spec.data_directory) / victim / "chunks" / digest.hex()[:2] / digest.hex()).unlink()
    assert digest not in chunk_files(spec, victim)

    # The scan after a compaction fetches every chunk that a retained revision names and this member lacks.
    latest = client.put("/docs/lost-marker", b"x")
    client.compact(latest.revision)
    wait_until(lambda: digest in chunk_files(spec, victim), 30, f"{victim} fetches the lost chunk from a peer")
    statistics = ray.get(find_replica(spec, victim).chunk_statistics.remote())
    assert statistics["chunks_fetched_from_peers"] >= 1


def test_small_values_keep_working_during_large_puts(client: Client, spec: ClusterSpec) -> None:
    errors: list[BaseException] = []

    def write_large() -> None:
        writer = Client(spec, timeout_s=60.0)
        try:
            for number in range(4):
                writer.put(f"/load/large-{number}", random_value(TEN_MIB, seed=100 + number))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    thread = threading.Thread(target=write_large)
    thread.start()
    small_reads = 0
    while thread.is_alive():
        client.put("/load/flag", str(small_reads).encode())
        kv = client.get("/load/flag")
        assert kv is not None
        assert kv.value == str(small_reads).encode()
        small_reads += 1
    thread.join()
    assert not errors, errors
    assert small_reads > 0


def thread_nice_values(pid: int) -> set[int]:
    """Return the nice values of the threads of process `pid`, from /proc."""
    values = set()
    for thread in Path(f"/proc/{pid}/task").iterdir():
        fields = (thread / "stat").read_text().rsplit(")", 1)[1].split()
        values.add(int(fields[16]))
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread are Linux's")
def test_nice_values_of_servers_and_chunk_threads(spec: ClusterSpec, client: Client) -> None:
    # The copies of a new large value start the replicas' chunk threads. The
    # put returns once a quorum has the chunks, so the last voter may still copy.
    client.put("/priority/large", random_value(3 * MIB, seed=7))
    pids = {member: ray.get(find_replica(spec, member).status.remote())["pid"] for member in spec.members()}
    wait_until(lambda: all(spec.settings.chunk_io_nice in thread_nice_values(pid) for pid in pids.values()),
               timeout_s=30.0, what="every replica has started its chunk threads")
    for store in spec.stores():
        status = ray.get(find_store(spec, store).status.remote())
        assert status["nice"] == 0, status
        assert thread_nice_values(status["pid"]) == {0}, f"Ray's default worker niceness is 15; {store}"
    for member in spec.members():
        status = ray.get(find_replica(spec, member).status.remote())
        assert status["nice"] == 0, status
        assert thread_nice_values(status["pid"]) == {0, spec.settings.chunk_io_nice}, member


def test_compaction_removes_unreferenced_chunks(spec: ClusterSpec, client: Client) -> None:
    old = random_value(2 * MIB, seed=11)
    new = random_value(2 * MIB, seed=12)
    client.put("/docs/gc", old)
    latest = client.put("/docs/gc", new)
    old_digests = set(split_value(old, spec.limits.chunk_bytes)[0].chunk_digests)
    new_digests = set(split_value(new, spec.limits.chunk_bytes)[0].chunk_digests)
    wait_until(lambda: all(old_digests <= chunk_files(spec, member) for member in spec.voters()), 30,
               "every voter holds the old chunks")
    time.sleep(GRACE_S + 0.5)
    client.compact(latest.revision)
    wait_until(lambda: all(not old_digests & chunk_files(spec, member) for member in spec.voters()), 30,
               "the old chunks are gone on every voter")
    for member in spec.voters():
        assert new_digests <= chunk_files(spec, member)
    kv = client.get("/docs/gc")
    assert kv is not None
    assert kv.value == new


# A client that uploads half of a value's chunks to one voter, as the leader
# does before proposing, reports it and then waits to be killed.
UPLOADER = """
import sys, random
import ray
from rayconf.actors import cluster
from rayconf.clients.client import Client
from rayconf.store.manifest import decode_manifest
cluster.use_loopback()
spec = cluster.default_spec(sys.argv[1], namespace=sys.argv[2], tick_ms=20)
ray.init(address=sys.argv[3], namespace=spec.namespace, log_to_driver=False)
value = random.Random(int(sys.argv[4])).randbytes(10 * 1024 * 1024)
manifest, refs = Client(spec).large_values.upload(value)
digests = list(decode_manifest(manifest).chunk_digests)[:5]
voter = cluster.find_replica(spec, spec.voters()[0])
ray.get(voter.store_chunks.remote(digests, [refs]))
print("uploaded", flush=True)
sys.stdin.read()
"""


def test_killed_uploader_leaks_no_chunks(spec: ClusterSpec, client: Client) -> None:
    seed = 13
    digests = set(split_value(random_value(TEN_MIB, seed), spec.limits.chunk_bytes)[0].chunk_digests)
    address = ray.get_runtime_context().gcs_address
    process = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, spec.data_directory, spec.namespace, address, str(seed)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, RAY_AUTH_MODE="token"),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == "uploaded\n", process.stderr.read() if process.stderr else line
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    orphans = digests & chunk_files(spec, spec.voters()[0])
    assert len(orphans) == 5, "the uploader's chunks should sit on the first voter until collected"

    time.sleep(GRACE_S + 0.5)
    latest = client.put("/docs/after-kill", b"x")
    client.compact(latest.revision)
    wait_until(lambda: all(not digests & chunk_files(spec, member) for member in spec.voters()), 30,
               "the killed uploader's chunks are removed on every voter")
    assert client.get("/docs/killed-uploader") is None


def test_leader_killed_mid_put_is_all_or_nothing(spec: ClusterSpec, client: Client) -> None:
    old = random_value(TEN_MIB, seed=20)
    new = random_value(TEN_MIB, seed=21)
    client.put("/docs/failover", old)
    old_digest = hashlib.sha256(old).digest()
    new_digest = hashlib.sha256(new).digest()
    new_chunks = set(split_value(new, spec.limits.chunk_bytes)[0].chunk_digests)
    outcome: dict[str, object] = {}

    def write() -> None:
        writer = Client(spec, timeout_s=60.0)
        try:
            outcome["revision"] = writer.put("/docs/failover", new).revision
        except Unavailable as error:
            outcome["error"] = error

    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        reader = Client(spec, timeout_s=60.0, session=False)
        while not stop.is_set():
            try:
                kv = reader.get("/docs/failover", consistency="serializable")
            except Unavailable:
                continue
            assert kv is not None
            seen.append(hashlib.sha256(kv.value).digest())

    leader = client.status()["leader"]
    # Cut the leader's outgoing Raft messages, so the put's entry cannot
    # commit before the leader dies; its chunk copies are actor calls and go on.
    ray.get(find_replica(spec, leader).set_faults.remote(
        [(leader, member) for member in spec.members() if member != leader]))
    writer_thread = threading.Thread(target=write)
    reader_thread = threading.Thread(target=read)
    reader_thread.start()
    writer_thread.start()
    wait_until(lambda: sum(new_chunks <= chunk_files(spec, member) for member in spec.voters()) >= 2
               or not writer_thread.is_alive(), 60, "a quorum holds the new value's chunks")
    time.sleep(0.2)
    ray.kill(find_replica(spec, leader), no_restart=False)
    writer_thread.join(timeout=120)
    assert not writer_thread.is_alive()
    time.sleep(1.0)
    stop.set()
    reader_thread.join(timeout=120)

    assert seen, "the reader saw no value"
    assert set(seen) <= {old_digest, new_digest}, "a reader saw a value that is neither the old nor the new one"
    cluster.up(spec)
    kv = Client(spec, timeout_s=60.0).get("/docs/failover")
    assert kv is not None
    if "revision" in outcome:
        assert kv.value == new, "an acknowledged large put was lost"
    else:
        assert "error" in outcome, f"the put neither returned nor failed: {outcome}"
        assert kv.value in (old, new)
