"""Watches on a real local Ray cluster: hubs, resumes, compaction, lagging and hub restarts.

Every delivered stream is checked against the history replayed from a
replica's committed log into a separate MVCC.
"""

from __future__ import annotations

import dataclasses

import threading
import time
from collections.abc import Iterator

import pytest
import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.watch_hub import find_hub, hub_actor_name, start_hubs, stop_hubs
from rayconf.actors.watch_records import HubSettings, WatchBatch, WatchFilter
from rayconf.clients.client import Client
from rayconf.clients.watch import Watch, close_streams, watch
from rayconf.errors import Compacted
from rayconf.sims.watch_checker import check_watch_stream
from rayconf.sims.watch_history import replay_committed_log
from rayconf.store.mvcc import MVCC
from rayconf.store.records import EventType, Put, Txn

SETTINGS = HubSettings(window_revisions_max=20, watch_queue_events_max=30, progress_interval_s=0.5)
HUB = hub_actor_name("dc-a", 1)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSpec]:
    data = tmp_path_factory.mktemp("rayconf-watch")
    built = cluster.default_spec(str(data), namespace="rayconf-watch-test", tick_ms=20)
    # The tests start their own hubs, with small bounds.
    built = dataclasses.replace(built, data_centers=tuple(dataclasses.replace(dc, hubs=0) for dc in built.data_centers))
    cluster.start_local_ray(built, num_cpus=2)
    try:
        cluster.up(built)
        start_hubs(built, 1, settings=SETTINGS)
        yield built
    finally:
        close_streams()
        stop_hubs(built)
        cluster.down(built)
        ray.shutdown()


@pytest.fixture
def client(spec: ClusterSpec) -> Client:
    return Client(spec, timeout_s=20.0)


def replayed_history(spec: ClusterSpec) -> MVCC:
    return replay_committed_log(spec)


def read_until(watched: Watch, revision: int, timeout_s: float = 30.0) -> list[WatchBatch]:
    """Read batches until one at or above `revision` arrives."""
    batches: list[WatchBatch] = []
    deadline = time.monotonic() + timeout_s
    while not batches or batches[-1].revision < revision:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"watch {watched!r} stopped at {batches[-1:]} before revision {revision}"
        batch = watched.get(remaining)
        if batch is not None:
            batches.append(batch)
    return batches


def assert_stream_ok(spec: ClusterSpec, watched: Watch, batches: list[WatchBatch]) -> None:
    history = replayed_history(spec)
    events = history.events(watched.start_revision)
    result = check_watch_stream(watched.request, watched.start_revision, batches, events,
                                resumes=watched.resumes, history_through=history.revision)
    assert result.ok, result.summary()


def test_prefix_key_prev_kv_and_filters(spec: ClusterSpec, client: Client) -> None:
    after = client.put("/pk/db/host", b"a").revision + 1
    with watch(spec, "/pk/db", prev_kv=True, start_revision=after) as everything, \
            watch(spec, "/pk/db/host", prefix=False, start_revision=after) as one_key, \
            watch(spec, "/pk/db", filters=[WatchFilter.NOPUT], start_revision=after) as deletes_only:
        client.put("/pk/db/host", b"b")
        client.txn(Txn(success=(Put(b"/pk/db/port", b"1"), Put(b"/pk/db/user", b"u"), Put(b"/pk/x", b"no"))))
        client.delete("/pk/db/port")
        final = client.put("/pk/db/host", b"c").revision

        batches = read_until(everything, final)
        assert [len(batch.events) for batch in batches] == [1, 2, 1, 1]
        assert batches[0].events[0].prev_kv.value == b"a"
        assert batches[2].events[0].type is EventType.DELETE
        assert_stream_ok(spec, everything, batches)

        keyed = read_until(one_key, final)
        assert [event.kv.value for batch in keyed for event in batch.events] == [b"b", b"c"]
        assert all(event.prev_kv is None for batch in keyed for event in batch.events)

        deleted = read_until(deletes_only, batches[2].revision)
        assert [event.kv.key for batch in deleted for event in batch.events] == [b"/pk/db/port"]


def test_resume_from_window_and_history(spec: ClusterSpec, client: Client) -> None:
    first = client.put("/resume/k", b"0").revision
    for number in range(1, 40):
        last = client.put("/resume/k", str(number).encode()).revision
    near = last - 5
    with watch(spec, "/resume", start_revision=near) as from_window, \
            watch(spec, "/resume", start_revision=first) as from_history:
        window_batches = read_until(from_window, last)
        history_batches = read_until(from_history, last)
    assert [batch.revision for batch in window_batches] == list(range(near, last + 1))
    assert len(history_batches) == 40
    assert history_batches[0].events[0].kv.value == b"0"
    assert_stream_ok(spec, from_history, history_batches)
    statistics = ray.get(find_hub(spec, HUB).statistics.remote())
    assert statistics["history_reads"] >= 1


def test_compaction_ends_old_watch_with_compact_revision(spec: ClusterSpec, client: Client) -> None:
    old = client.put("/compact/k", b"1").revision
    with watch(spec, "/compact", start_revision=old + 1) as live:
        client.put("/compact/k", b"2")
        target = client.put("/compact/k", b"3").revision
        client.compact(target)
        after = client.put("/compact/k", b"4").revision
        assert read_until(live, after)[-1].events[0].kv.value == b"4"
    deadline = time.monotonic() + 10
    while ray.get(find_hub(spec, HUB).statistics.remote())["compact_revision"] < target:
        assert time.monotonic() < deadline, "the hub did not apply the compaction"
        time.sleep(0.05)
    with pytest.raises(Compacted) as raised:
        watch(spec, "/compact", start_revision=old)
    assert raised.value.compact_revision == target


def test_slow_watcher_resumes_while_fast_ones_continue(spec: ClusterSpec, client: Client) -> None:
    fast = [watch(spec, "/lag") for _ in range(3)]
    slow = watch(spec, "/lag", buffer_batches_max=4)
    try:
        for number in range(80):
            last = client.put(f"/lag/k{number % 5}", str(number).encode()).revision
        fast_streams = [read_until(watched, last, timeout_s=20) for watched in fast]
        assert all(len(stream) == 80 for stream in fast_streams)
        slow_stream = read_until(slow, last, timeout_s=30)
        assert any(reason == "lagging" for reason, _ in slow.resumes), slow.resumes
        assert len(slow_stream) == 80
        assert_stream_ok(spec, slow, slow_stream)
        assert_stream_ok(spec, fast[0], fast_streams[0])
    finally:
        for watched in fast + [slow]:
            watched.close()


def test_hub_restart_under_writers_keeps_streams_whole(spec: ClusterSpec, client: Client) -> None:
    watches = [watch(spec, "/storm", prev_kv=True), watch(spec, "/storm/w0"),
               watch(spec, "/storm/w1/k0", prefix=False)]
    failures_before = watches[0].stream.statistics["session_failures"]
    streams: list[list[WatchBatch]] = [[] for _ in watches]
    finals: list[int] = []

    def write(worker: int) -> None:
        writer = Client(spec, timeout_s=20.0)
        for number in range(60):
            finals.append(writer.put(f"/storm/w{worker}/k{number % 3}", str(number).encode()).revision)

    writers = [threading.Thread(target=write, args=(worker,)) for worker in range(2)]
    for thread in writers:
        thread.start()
    time.sleep(0.5)
    ray.kill(find_hub(spec, HUB), no_restart=False)
    for thread in writers:
        thread.join(timeout=60)
    final = max(finals)
    history = replayed_history(spec)
    try:
        for watched, stream in zip(watches, streams):
            wanted = max((event.kv.mod_revision for event in history.events(watched.start_revision)
                          if watched.request.matches_key(event.kv.key)), default=0)
            stream.extend(read_until(watched, wanted, timeout_s=60))
            events = history.events(watched.start_revision)
            result = check_watch_stream(watched.request, watched.start_revision, stream, events,
                                        resumes=watched.resumes, history_through=history.revision)
            assert result.ok, result.summary()
        assert final <= history.revision
        assert watches[0].stream.statistics["session_failures"] > failures_before
        assert ray.get(find_hub(spec, HUB).statistics.remote())["uptime_s"] < 60
    finally:
        for watched in watches:
            watched.close()


def test_progress_notifications_periodic_and_requested(spec: ClusterSpec, client: Client) -> None:
    written = client.put("/progress/k", b"1").revision
    with watch(spec, "/progress", start_revision=written, progress_notify=True) as watched:
        first = watched.get(10.0)
        assert first is not None
        assert first.revision == written
        assert not first.progress
        periodic = watched.get(10.0)
        assert periodic is not None
        assert periodic.progress
        assert periodic.revision >= written
        client.put("/elsewhere/k", b"x")
        watched.request_progress()
        requested = read_until(watched, periodic.revision + 1)
        assert all(batch.progress for batch in requested)
        assert [batch.revision for batch in requested] == sorted(batch.revision for batch in requested)


def test_async_iteration_shares_one_stream(spec: ClusterSpec, client: Client) -> None:
    import asyncio

    from rayconf.clients.watch import awatch

    async def scenario() -> tuple[list[bytes], bool]:
        first = await awatch(spec, "/async-watch/a")
        second = await awatch(spec, "/async-watch/b")
        await asyncio.to_thread(client.put, "/async-watch/a/x", b"1")
        await asyncio.to_thread(client.put, "/async-watch/b/y", b"2")
        values = []
        for watched in (first, second):
            batch = await asyncio.wait_for(watched.__anext__(), timeout=10)
            values.append(batch.events[0].kv.value)
        shared = first.stream is second.stream
        first.close()
        second.close()
        return values, shared

    values, shared = asyncio.run(scenario())
    assert values == [b"1", b"2"]
    assert shared


def test_min_revision_starts_after_own_write(spec: ClusterSpec, client: Client) -> None:
    for attempt in range(5):
        written = client.put("/ryw/k", str(attempt).encode()).revision
        with watch(spec, "/ryw", min_revision=written) as watched:
            assert watched.start_revision == written + 1
