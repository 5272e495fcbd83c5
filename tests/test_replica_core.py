"""Replica cores on real disks, wired by an in-process message loop.

Each core owns a real data directory with a write-ahead log and snapshots, so a
"crash" here is closing the core and opening a new one on the same directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rayconf.actors.durable_storage import DurableStorage
from rayconf.actors.raft.types import Message
from rayconf.actors.replica_core import ReplicaCore, ReplicaSettings
from rayconf.errors import Unavailable
from rayconf.store.records import Command, Put, Txn, TxnResponse

MEMBERS = ("dc-a", "dc-b", "dc-c")
SETTINGS = ReplicaSettings(snapshot_interval_entries=50, compaction_margin_entries=10)


class Cluster:
    def __init__(self, root: Path, settings: ReplicaSettings = SETTINGS) -> None:
        self.root = root
        self.settings = settings
        self.cores: dict[str, ReplicaCore | None] = {}
        self.down: set[str] = set()
        for number, member in enumerate(MEMBERS):
            self.cores[member] = ReplicaCore(member, root / member, voters=MEMBERS, settings=settings, seed=number)
        self.inbox: list[Message] = []
        self.restarts = 0

    def core(self, member: str) -> ReplicaCore:
        core = self.cores[member]
        assert core is not None
        return core

    def running(self) -> list[ReplicaCore]:
        return [core for member, core in self.cores.items() if core is not None and member not in self.down]

    def step(self, ticks: bool = True) -> None:
        for core in self.running():
            if ticks:
                core.tick()
            self.inbox.extend(core.process_ready().messages)
        messages, self.inbox = self.inbox, []
        for message in messages:
            target = self.cores.get(message.to)
            if target is not None and message.to not in self.down and message.from_ not in self.down:
                target.step(message)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def leader(self) -> ReplicaCore:
        for _ in range(300):
            leaders = [core for core in self.running() if core.is_leader()]
            if len(leaders) == 1:
                return leaders[0]
            self.step()
        raise AssertionError("no single leader after 300 steps")

    def write(self, key: bytes, value: bytes, request_id: str) -> TxnResponse:
        for _ in range(5):
            leader = self.leader()
            try:
                leader.propose(Command(Txn(success=(Put(key, value),)), request_id=request_id))
            except Unavailable:
                self.run(5)
                continue
            for _ in range(100):
                self.step(ticks=False)
                result = leader.take_result(request_id)
                if result is not None:
                    assert isinstance(result, TxnResponse)
                    return result
                self.step()
        raise AssertionError(f"write {request_id} did not commit")

    def crash(self, member: str) -> None:
        self.core(member).close()
        self.cores[member] = None

    def restart(self, member: str) -> None:
        # Each start gets its own seed: equal election timeouts would split every vote.
        self.restarts += 1
        self.cores[member] = ReplicaCore(member, self.root / member, voters=MEMBERS, settings=self.settings,
                                         seed=100 + self.restarts)

    def settle(self, steps: int = 60) -> None:
        self.run(steps)

    def close(self) -> None:
        for core in self.cores.values():
            if core is not None:
                core.close()


@pytest.fixture
def cluster(tmp_path: Path):
    built = Cluster(tmp_path)
    yield built
    built.close()


def test_cluster_elects_and_commits(cluster: Cluster) -> None:
    first = cluster.write(b"/app/a", b"1", "w1")
    second = cluster.write(b"/app/a", b"2", "w2")
    assert second.revision == first.revision + 1
    cluster.settle()
    hashes = {core.state.hash_kv() for core in cluster.running()}
    assert len(hashes) == 1
    for core in cluster.running():
        kv = core.state.get(b"/app/a")
        assert kv is not None and kv.value == b"2"


def test_restarted_member_recovers_from_disk(cluster: Cluster) -> None:
    for number in range(20):
        cluster.write(f"/k/{number}".encode(), b"v", f"w{number}")
    cluster.settle()
    follower = next(core.node_id for core in cluster.running() if not core.is_leader())
    before = cluster.core(follower).state.hash_kv()
    applied = cluster.core(follower).state.applied_index
    cluster.crash(follower)
    cluster.restart(follower)
    restarted = cluster.core(follower)
    assert restarted.state.applied_index <= applied
    cluster.settle()
    assert restarted.state.hash_kv() == before
    assert restarted.storage.last_index() >= applied


def test_whole_cluster_restart_keeps_writes(cluster: Cluster) -> None:
    acknowledged = {}
    for number in range(30):
        key = f"/cfg/{number % 7}".encode()
        cluster.write(key, str(number).encode(), f"w{number}")
        acknowledged[key] = str(number).encode()
    for member in MEMBERS:
        cluster.crash(member)
    for member in MEMBERS:
        cluster.restart(member)
    cluster.leader()
    cluster.settle()
    for core in cluster.running():
        for key, value in acknowledged.items():
            kv = core.state.get(key)
            assert kv is not None and kv.value == value


def test_snapshot_compacts_log_and_survives_restart(cluster: Cluster) -> None:
    for number in range(120):
        cluster.write(f"/s/{number % 9}".encode(), str(number).encode(), f"w{number}")
    cluster.settle()
    leader = cluster.leader()
    assert leader.storage.memory.snapshot().metadata.index >= 50
    assert leader.storage.first_index() > 1
    expected = leader.state.hash_kv()
    member = leader.node_id
    cluster.crash(member)
    cluster.restart(member)
    cluster.settle(100)
    assert cluster.core(member).state.hash_kv() == expected


def test_lagging_member_gets_snapshot(cluster: Cluster) -> None:
    cluster.write(b"/x", b"0", "w-first")
    laggard = next(core.node_id for core in cluster.running() if not core.is_leader())
    cluster.down.add(laggard)
    for number in range(150):
        cluster.write(f"/lag/{number % 11}".encode(), str(number).encode(), f"w{number}")
    leader = cluster.leader()
    assert leader.storage.first_index() > cluster.core(laggard).storage.last_index() + 1
    cluster.down.discard(laggard)
    cluster.settle(200)
    caught_up = cluster.core(laggard)
    assert caught_up.storage.memory.snapshot().metadata.index > 0
    assert caught_up.state.hash_kv() == leader.state.hash_kv()
    # The installed snapshot is what a restart starts from.
    cluster.crash(laggard)
    cluster.restart(laggard)
    cluster.settle(100)
    assert cluster.core(laggard).state.hash_kv() == cluster.leader().state.hash_kv()


def test_retried_proposal_applies_once(cluster: Cluster) -> None:
    first = cluster.write(b"/once", b"v", "same-id")
    retry = cluster.write(b"/once", b"v", "same-id")
    assert retry.duplicate
    assert retry.revision == first.revision
    kv = cluster.leader().state.get(b"/once")
    assert kv is not None and kv.version == 1


def test_torn_wal_tail_loses_only_unsynced(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        for number in range(10):
            cluster.write(f"/t/{number}".encode(), b"v", f"w{number}")
        cluster.settle()
        member = MEMBERS[0]
        last_index = cluster.core(member).storage.last_index()
        cluster.crash(member)
    finally:
        cluster.close()
    wal_files = sorted((tmp_path / member / "wal").glob("*.wal"))
    with open(wal_files[-1], "ab") as handle:
        handle.write(b"\x07\x00\x00")  # a partial record header, as a crash mid-write leaves
    storage, recovered = DurableStorage.open(tmp_path / member)
    try:
        assert storage.last_index() == last_index
        assert os.path.getsize(wal_files[-1]) > 0
    finally:
        storage.close()


def test_lease_read_served_by_leader(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ReplicaSettings(lease_reads=True, snapshot_interval_entries=50,
                                                 compaction_margin_entries=10))
    try:
        cluster.write(b"/lease", b"v", "w-lease")
        leader = cluster.leader()
        leader.read_index(b"lease-read")
        served = []
        for _ in range(20):
            outcome = leader.process_ready()
            served.extend(outcome.read_states)
            if served:
                break
            cluster.step()
        assert [state.request_context for state in served] == [b"lease-read"]
        assert served[0].index >= leader.state.applied_index - 1
    finally:
        cluster.close()


def test_restart_keeps_chunks_of_unapplied_entries(cluster: Cluster) -> None:
    from rayconf.store.manifest import split_value

    manifest, _ = split_value(os.urandom(300), 100)
    cluster.write(b"/docs/early", b"small", "c1")
    cluster.settle()
    follower = next(core.node_id for core in cluster.running() if not core.is_leader())
    cluster.core(follower).take_snapshot()
    cluster.write(b"/docs/large", manifest.encode(), "c2")
    cluster.settle()
    assert cluster.core(follower).unapplied_chunk_digests() == set()
    cluster.crash(follower)
    cluster.restart(follower)
    restarted = cluster.core(follower)
    # The state comes from the snapshot, so the manifest is only in the log until it is applied again.
    assert restarted.state.get(b"/docs/large") is None
    assert restarted.unapplied_chunk_digests() == set(manifest.chunk_digests)
    assert restarted.chunk_scan_due
