"""10,000 watches from 20 processes through one restarted hub, every stream checked.

Slow: run with `pytest -m slow tests/test_watch_scale.py`.
"""

from __future__ import annotations

import dataclasses

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.watch_hub import find_hub, hub_actor_name, start_hubs, stop_hubs
from rayconf.actors.watch_records import HubSettings
from rayconf.clients.client import Client
from rayconf.sims.watch_history import replay_committed_log
from rayconf.store.records import Event

PROCESSES = 20
WATCHES_PER_PROCESS = 500
# 1,000 prefixes, so each one has 10 of the 10,000 watches.
PREFIXES = tuple(f"/scale/p{number:03d}" for number in range(1000))
WRITES_PER_WRITER = 100
HUB = hub_actor_name("dc-a", 1)


@ray.remote(num_cpus=0)
class WatchProcess:
    """One client process with many watches on one shared poll stream."""

    def __init__(self, spec: ClusterSpec, count: int, start_revision: int) -> None:
        from rayconf.clients.watch import watch

        started = time.monotonic()
        self.watches = [watch(spec, PREFIXES[number % len(PREFIXES)], start_revision=start_revision)
                        for number in range(count)]
        self.create_s = time.monotonic() - started

    def create_seconds(self) -> float:
        return self.create_s

    def drain_and_check(self, history: list[Event], through: int, timeout_s: float) -> dict[str, Any]:
        from rayconf.sims.watch_checker import check_watch_stream

        deadline = time.monotonic() + timeout_s
        failures: list[str] = []
        batches = 0
        resumes = 0
        for watched in self.watches:
            wanted = max((event.kv.mod_revision for event in history
                          if watched.request.matches_key(event.kv.key)), default=0)
            stream = []
            # A watch with nothing to receive only drains what already arrived.
            while wanted and (not stream or stream[-1].revision < wanted):
                batch = watched.get(max(0.0, deadline - time.monotonic()))
                if batch is None:
                    break
                stream.append(batch)
            if not wanted:
                while (batch := watched.get(0.0)) is not None:
                    stream.append(batch)
            result = check_watch_stream(watched.request, watched.start_revision, stream, history,
                                        resumes=watched.resumes, history_through=through)
            if not result.ok:
                failures.append(f"watch {watched.watch_id}: {result.summary()}")
            batches += len(stream)
            resumes += len(watched.resumes)
        statistics = self.watches[0].stream.statistics
        for watched in self.watches:
            watched.close()
        return {"failures": failures[:5], "failed": len(failures), "batches": batches, "resumes": resumes,
                "session_failures": statistics["session_failures"], "polls": statistics["polls"]}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-watch-scale")
    built = cluster.default_spec(str(data), namespace="rayconf-watch-scale", tick_ms=20)
    # The tests start their own hubs, with small bounds.
    built = dataclasses.replace(built, data_centers=tuple(dataclasses.replace(dc, hubs=0) for dc in built.data_centers))
    cluster.start_local_ray(built, num_cpus=2)
    try:
        cluster.up(built)
        start_hubs(built, 1, settings=HubSettings(watch_queue_events_max=100))
        yield built
    finally:
        stop_hubs(built)
        cluster.down(built)
        ray.shutdown()


@pytest.mark.slow
def test_ten_thousand_watches_survive_hub_restart(spec: ClusterSpec) -> None:
    client = Client(spec, timeout_s=20.0)
    start = client.put("/scale/start", b"0").revision + 1
    processes = [WatchProcess.remote(spec, WATCHES_PER_PROCESS, start) for _ in range(PROCESSES)]
    create_seconds = ray.get([process.create_seconds.remote() for process in processes], timeout=300)

    def write(worker: int) -> None:
        writer = Client(spec, timeout_s=20.0)
        for number in range(WRITES_PER_WRITER):
            prefix = PREFIXES[(worker * 500 + number * 7) % len(PREFIXES)]
            writer.put(f"{prefix}/k{number % 3}", str(number).encode())

    writers = [threading.Thread(target=write, args=(worker,)) for worker in range(2)]
    written_at = time.monotonic()
    for thread in writers:
        thread.start()
    time.sleep(1.0)
    ray.kill(find_hub(spec, HUB), no_restart=False)
    for thread in writers:
        thread.join(timeout=120)

    history = replay_committed_log(spec)
    events = history.events(start)
    reports = ray.get([process.drain_and_check.remote(events, history.revision, 120.0) for process in processes],
                      timeout=600)
    elapsed_s = time.monotonic() - written_at
    failed = sum(report["failed"] for report in reports)
    print(f"\n{PROCESSES * WATCHES_PER_PROCESS} watches: create {max(create_seconds):.1f} s per process (max), "
          f"{sum(r['batches'] for r in reports)} batches, {sum(r['resumes'] for r in reports)} lag resumes, "
          f"{sum(r['session_failures'] for r in reports)} session failures, writes to checked in {elapsed_s:.1f} s")
    assert failed == 0, [report["failures"] for report in reports if report["failed"]]
    assert all(report["session_failures"] >= 1 for report in reports)
