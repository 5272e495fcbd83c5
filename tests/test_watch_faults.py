"""Watches while writers run and Ray restarts a killed watch hub, Raft leader and follower.

Three writer threads put, delete and write two-key transactions under
/faults. Meanwhile the test kills the dc-a watch hub, then the leader, then a
follower together with the hub again, each with `no_restart=False`, so Ray
restarts the actor. Prefix and single-key watches, some with prev_kv, are
read by their own threads the whole time. At the end every stream is checked
against the history replayed from the leader's committed log. Every
acknowledged write must also appear in each stream whose key range covers it.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.watch_hub import find_hub, hub_actor_name, start_hubs, stop_hubs
from rayconf.actors.watch_records import HubSettings, WatchBatch
from rayconf.clients.client import Client
from rayconf.clients.watch import Watch, close_streams, watch
from rayconf.errors import Unavailable
from rayconf.sims.chaos_checks import WatchReader
from rayconf.sims.watch_checker import check_watch_stream
from rayconf.sims.watch_history import replay_committed_log
from rayconf.store.records import DeleteRange, DeleteRangeResponse, Event, EventType, Put, Txn

NAMESPACE = "rayconf-watch-faults"
HUB = hub_actor_name("dc-a", 1)
WRITERS = 3
KEYS_PER_WRITER = 3
# Generous, because a write waits for a new leader after the leader is killed.
CLIENT_TIMEOUT_S = 30.0
# A cap on each writer, so that the log stays far below the replicas' snapshot
# interval (10,000 entries) and can be replayed from index 1.
OPERATIONS_PER_WRITER_MAX = 2_000
RESTART_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0
# Time for the writers between two faults.
WRITE_PAUSE_S = 1.0


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-watch-faults")
    built = cluster.default_spec(str(data), namespace=NAMESPACE, tick_ms=20)
    # The test starts its own hubs, so that progress notifications come every 0.5 s.
    built = dataclasses.replace(built, data_centers=tuple(dataclasses.replace(dc, hubs=0) for dc in built.data_centers))
    cluster.start_local_ray(built, num_cpus=2)
    try:
        cluster.up(built)
        start_hubs(built, 1, settings=HubSettings(progress_interval_s=0.5))
        yield built
    finally:
        close_streams()
        try:
            stop_hubs(built)
        finally:
            cluster.down(built)
            ray.shutdown()


# --- Writers and readers. ---


@dataclass(frozen=True, slots=True)
class AcknowledgedWrite:
    revision: int
    # (event type, key, value) of each key the write changed. The value is b"" for a delete.
    changes: tuple[tuple[EventType, bytes, bytes], ...]
    acknowledged_s: float


class Writer(threading.Thread):
    """A thread that writes to its own keys /faults/w<number>/k<n> until stopped and records each acknowledgement."""

    def __init__(self, spec: ClusterSpec, number: int, stop: threading.Event) -> None:
        super().__init__(name=f"faults-writer-{number}", daemon=True)
        self.spec = spec
        self.number = number
        self.stop = stop
        self.acknowledged: list[AcknowledgedWrite] = []
        self.failures: list[str] = []
        # Deletes that were retried after they had been applied. Their reply does not say whether a key was deleted.
        self.duplicate_deletes = 0

    def key(self, number: int) -> bytes:
        return f"/faults/w{self.number}/k{number}".encode()

    def run(self) -> None:
        client = Client(self.spec, timeout_s=CLIENT_TIMEOUT_S)
        generator = random.Random(self.number)
        for sequence in range(OPERATIONS_PER_WRITER_MAX):
            if self.stop.is_set():
                return
            value = f"{self.number}:{sequence}".encode()
            first = self.key(generator.randrange(KEYS_PER_WRITER))
            second = self.key(generator.randrange(KEYS_PER_WRITER))
            choice = generator.random()
            if choice < 0.6:
                txn = Txn(success=(Put(first, value),))
            elif choice < 0.8:
                txn = Txn(success=(DeleteRange(first, None),))
            elif first != second:
                txn = Txn(success=(Put(first, value), Put(second, value)))
            else:
                txn = Txn(success=(Put(first, value),))
            try:
                response = client.txn(txn)
            except Unavailable as error:
                # Not acknowledged: the write may or may not be in the history.
                self.failures.append(str(error))
                continue
            changes = self.changes(txn, response.responses, response.duplicate)
            if changes is not None:
                self.acknowledged.append(AcknowledgedWrite(response.revision, changes, time.monotonic()))

    def changes(self, txn: Txn, responses: tuple[Any, ...],
                duplicate: bool) -> tuple[tuple[EventType, bytes, bytes], ...] | None:
        """Return the events `txn` made, or None when the reply of a retried delete cannot tell."""
        operation = txn.success[0]
        if isinstance(operation, DeleteRange):
            if duplicate:
                self.duplicate_deletes += 1
                return None
            result = responses[0]
            assert isinstance(result, DeleteRangeResponse)
            return ((EventType.DELETE, operation.key, b""),) if result.deleted else ()
        return tuple((EventType.PUT, put.key, put.value) for put in txn.success if isinstance(put, Put))


# --- Faults. ---


def kill_hub(spec: ClusterSpec) -> float:
    ray.kill(find_hub(spec, HUB), no_restart=False)
    return time.monotonic()


def kill_replica(spec: ClusterSpec, member: str) -> float:
    ray.kill(cluster.find_replica(spec, member), no_restart=False)
    return time.monotonic()


def wait_for_hub_restart(spec: ClusterSpec, killed_s: float) -> None:
    """Wait until the hub runs again in an instance started after `killed_s`."""
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while True:
        handle = find_hub(spec, HUB)
        try:
            uptime_s = ray.get(handle.statistics.remote(), timeout=5.0)["uptime_s"] if handle else None
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            uptime_s = None
        if uptime_s is not None and uptime_s <= time.monotonic() - killed_s:
            return
        assert time.monotonic() < deadline, f"hub {HUB} did not restart within {RESTART_TIMEOUT_S} s"
        time.sleep(0.1)


def wait_for_replica_restart(spec: ClusterSpec, member: str, killed_s: float) -> None:
    """Wait until `member` runs again in an instance started after `killed_s` and a leader is known."""
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while True:
        current = cluster.status(spec)
        info = current["members"][member]
        if current["leader"] and info.get("health") == "ok" and info["uptime_s"] <= time.monotonic() - killed_s:
            return
        assert time.monotonic() < deadline, f"replica {member} did not restart within {RESTART_TIMEOUT_S} s: {info}"
        time.sleep(0.1)


def choose_follower(spec: ClusterSpec) -> str:
    """Return a follower, preferring dc-a-1, the replica that the dc-a hub follows first."""
    leader = cluster.status(spec)["leader"]
    followers = [member for member in spec.replicas_near("dc-a") if member != leader]
    return followers[0]


# --- Checks. ---


def last_matching_revision(watched: Watch, events: list[Event]) -> int:
    return max((event.kv.mod_revision for event in events
                if event.kv.mod_revision >= watched.start_revision and watched.request.matches_key(event.kv.key)),
               default=0)


def missing_acknowledged(watched: Watch, batches: list[WatchBatch],
                         acknowledged: list[AcknowledgedWrite]) -> list[str]:
    """Return the acknowledged changes in the watch's range that its stream lacks."""
    delivered = {(batch.revision, event.type, event.kv.key, event.kv.value)
                 for batch in batches if not batch.progress for event in batch.events}
    missing = []
    for write in acknowledged:
        if write.revision < watched.start_revision:
            continue
        for event_type, key, value in write.changes:
            if watched.request.matches_key(key) and (write.revision, event_type, key, value) not in delivered:
                missing.append(f"{event_type.name} {key!r} at revision {write.revision}")
    return missing


def history_lacks(write: AcknowledgedWrite, events_by_revision: dict[int, list[Event]]) -> bool:
    found = {(event.type, event.kv.key, event.kv.value) for event in events_by_revision.get(write.revision, [])}
    return any(change not in found for change in write.changes)


# --- The test. ---


@pytest.mark.timeout(240)
def test_watches_survive_hub_and_replica_kills(spec: ClusterSpec) -> None:
    client = Client(spec, timeout_s=CLIENT_TIMEOUT_S)
    start = client.put("/faults/start", b"0").revision + 1
    watches: dict[str, Watch] = {
        "all-prev-kv-progress": watch(spec, "/faults", prev_kv=True, progress_notify=True, start_revision=start),
        "writer-0": watch(spec, "/faults/w0", start_revision=start),
        "writer-1-prev-kv": watch(spec, "/faults/w1", prev_kv=True, start_revision=start),
        "key-w2-k0-prev-kv": watch(spec, "/faults/w2/k0", prefix=False, prev_kv=True, start_revision=start),
        "key-w0-k1": watch(spec, "/faults/w0/k1", prefix=False, start_revision=start),
    }
    stream = watches["writer-0"].stream
    session_failures_before = stream.statistics["session_failures"]
    stop_reading = threading.Event()
    stop_writing = threading.Event()
    readers = {name: WatchReader(name, watched, stop_reading) for name, watched in watches.items()}
    writers = [Writer(spec, number, stop_writing) for number in range(WRITERS)]
    kills: dict[str, float] = {}
    started = time.monotonic()
    try:
        for thread in [*readers.values(), *writers]:
            thread.start()
        time.sleep(WRITE_PAUSE_S)

        kills["hub"] = kill_hub(spec)
        wait_for_hub_restart(spec, kills["hub"])
        # A watch from now, created mid-stream, starts wherever the restarted hub is.
        watches["all-from-now"] = watch(spec, "/faults", prev_kv=True)
        readers["all-from-now"] = WatchReader("all-from-now", watches["all-from-now"], stop_reading)
        readers["all-from-now"].start()
        time.sleep(WRITE_PAUSE_S)

        leader = cluster.status(spec)["leader"]
        kills["leader"] = kill_replica(spec, leader)
        wait_for_replica_restart(spec, leader, kills["leader"])
        time.sleep(WRITE_PAUSE_S)

        follower = choose_follower(spec)
        kills["follower"] = kill_replica(spec, follower)
        kills["hub-again"] = kill_hub(spec)
        wait_for_replica_restart(spec, follower, kills["follower"])
        wait_for_hub_restart(spec, kills["hub-again"])
        time.sleep(WRITE_PAUSE_S)
    finally:
        stop_writing.set()
        for writer in writers:
            writer.join(timeout=CLIENT_TIMEOUT_S + 5)

    try:
        assert not any(writer.is_alive() for writer in writers), "a writer did not stop"
        acknowledged = sorted((write for writer in writers for write in writer.acknowledged),
                              key=lambda write: write.revision)
        assert acknowledged, [writer.failures[:3] for writer in writers]
        last_kill_s = max(kills.values())
        assert any(write.acknowledged_s > last_kill_s for write in acknowledged), \
            "no write was acknowledged after the last fault"

        # The reference: the leader's committed log replayed into a fresh MVCC.
        history = replay_committed_log(spec)
        events = history.events(start)
        events_by_revision: dict[int, list[Event]] = {}
        for event in events:
            events_by_revision.setdefault(event.kv.mod_revision, []).append(event)
        assert acknowledged[-1].revision <= history.revision
        lost = [write for write in acknowledged if history_lacks(write, events_by_revision)]
        assert not lost, f"{len(lost)} acknowledged writes are not in the leader's log, first {lost[:3]}"

        for name, watched in watches.items():
            expected_revision = last_matching_revision(watched, events)
            assert readers[name].wait_for(expected_revision, DRAIN_TIMEOUT_S), (
                f"watch {name} stopped at {readers[name].batches[-1:]} before revision {expected_revision}, "
                f"error {readers[name].error!r}, resumes {watched.resumes}")
    finally:
        stop_reading.set()
        for reader in readers.values():
            reader.join(timeout=5)

    for name, watched in watches.items():
        batches = readers[name].batches
        result = check_watch_stream(watched.request, watched.start_revision, batches,
                                    history.events(watched.start_revision), resumes=watched.resumes,
                                    history_through=history.revision)
        assert result.ok, f"watch {name}: {result.summary()}"
        missing = missing_acknowledged(watched, batches, acknowledged)
        assert not missing, f"watch {name} lacks {len(missing)} acknowledged changes, first {missing[:5]}"
    assert any(batch.progress for batch in readers["all-prev-kv-progress"].batches), \
        "the progress_notify watch received no progress notification"
    assert any(event.prev_kv is not None for batch in readers["all-prev-kv-progress"].batches
               for event in batch.events), "the prev_kv watch received no prev_kv"

    # The faults took effect: two hub restarts ended sessions, and each killed actor runs anew.
    assert stream.statistics["session_failures"] >= session_failures_before + 2, stream.statistics
    members = cluster.status(spec)["members"]
    assert members[leader]["uptime_s"] <= time.monotonic() - kills["leader"], members[leader]
    assert members[follower]["uptime_s"] <= time.monotonic() - kills["follower"], members[follower]
    hub_statistics = ray.get(find_hub(spec, HUB).statistics.remote())
    assert hub_statistics["uptime_s"] <= time.monotonic() - kills["hub-again"], hub_statistics
    print(f"\n{len(acknowledged)} acknowledged writes, "
          f"{sum(len(writer.failures) for writer in writers)} unacknowledged, "
          f"{sum(len(reader.batches) for reader in readers.values())} batches in {len(watches)} streams, "
          f"{stream.statistics['session_failures'] - session_failures_before} session failures, "
          f"faults and writes took {last_kill_s - started:.1f} s to the last kill")

    for watched in watches.values():
        watched.close()
