"""The watch hub's state machine without Ray: index, window, queues, catch-up and progress."""

from __future__ import annotations

import dataclasses
import random

import pytest

from rayconf.actors.watch_core import WatchHubCore
from rayconf.actors.watch_index import RevisionWindow, SubscriptionIndex
from rayconf.actors.watch_records import (
    CancelReason,
    HubSettings,
    SessionExpired,
    WatchBatch,
    WatchCancel,
    WatchFilter,
    WatchRequest,
)
from rayconf.errors import Compacted, InvalidRequest
from rayconf.sims.watch_checker import check_watch_stream
from rayconf.store.mvcc import MVCC
from rayconf.store.records import EventType, Put, Txn


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Hub:
    """A core over its own MVCC, with writes that go through both."""

    def __init__(self, **settings: object) -> None:
        self.state = MVCC()
        self.clock = Clock()
        self.core = WatchHubCore(HubSettings(**settings), self.state, clock=self.clock)  # type: ignore[arg-type]
        self.core.open_session("s")
        # Items taken from the session but not yet read by a test, per watch id.
        self.inbox: dict[int, list[WatchBatch | WatchCancel]] = {}

    def put(self, key: bytes, value: bytes = b"v") -> int:
        response = self.state.put(key, value)
        self.core.apply_revision(response.revision, response.events)
        return response.revision

    def txn(self, *keys: bytes) -> int:
        response = self.state.txn(Txn(success=tuple(Put(key, b"t") for key in keys)))
        self.core.apply_revision(response.revision, response.events)
        return response.revision

    def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        response = self.state.delete(key, range_end)
        if response.events:
            self.core.apply_revision(response.revision, response.events)
        return response.revision

    def take(self, watch_id: int, paused: frozenset[int] = frozenset()) -> list[WatchBatch | WatchCancel]:
        """Poll the session once and return its items for `watch_id`, keeping the rest."""
        for other, items in self.core.take("s", paused).items.items():
            self.inbox.setdefault(other, []).extend(items)
        return self.inbox.pop(watch_id, [])


def test_index_matches_exact_and_prefixes() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("all", b"", prefix=True)
    index.add("app", b"/app/", prefix=True)
    index.add("partial", b"/ap", prefix=True)
    index.add("key", b"/app/x", prefix=False)
    assert set(index.match(b"/app/x")) == {"all", "app", "partial", "key"}
    assert set(index.match(b"/apple")) == {"all", "partial"}
    index.remove("partial", b"/ap", prefix=True)
    assert set(index.match(b"/apple")) == {"all"}
    assert index.statistics()["prefix_lengths"] == 2


def test_window_evicts_oldest_and_tracks_coverage() -> None:
    window = RevisionWindow(3, covered_after=1)
    for revision in range(2, 7):
        window.append(revision, ())
    assert window.covered_after == 3
    assert not window.covers(3)
    assert [item.revision for item in window.since(5)] == [5, 6]
    assert [item.revision for item in window.since(4)] == [4, 5, 6]


def test_prefix_watch_with_prev_kv_and_filters() -> None:
    hub = Hub()
    hub.put(b"/app/x", b"1")
    hub.core.create("s", 1, WatchRequest.for_prefix(b"/app/", prev_kv=True))
    hub.core.create("s", 2, WatchRequest.for_prefix(b"/app/", filters=frozenset({WatchFilter.NOPUT})))
    hub.core.create("s", 3, WatchRequest(b"/app/x", filters=frozenset({WatchFilter.NODELETE})))
    hub.put(b"/app/x", b"2")
    hub.put(b"/other", b"z")
    deleted = hub.delete(b"/app/x")

    everything = hub.take(1)
    assert [batch.revision for batch in everything] == [3, deleted]
    assert everything[0].events[0].prev_kv.value == b"1"
    assert everything[1].events[0].type is EventType.DELETE
    deletes_only = hub.take(2)
    assert [batch.revision for batch in deletes_only] == [deleted]
    assert deletes_only[0].events[0].prev_kv is None
    assert [batch.revision for batch in hub.take(3)] == [3]


def test_txn_revision_arrives_as_one_batch() -> None:
    hub = Hub()
    hub.core.create("s", 1, WatchRequest.for_prefix(b"/t/"))
    revision = hub.txn(b"/t/a", b"/t/b", b"/u/c")
    batches = hub.take(1)
    assert len(batches) == 1
    assert batches[0].revision == revision
    assert sorted(event.kv.key for event in batches[0].events) == [b"/t/a", b"/t/b"]


def test_resume_from_window_and_from_history() -> None:
    hub = Hub(window_revisions_max=5)
    first = hub.put(b"/r/a")
    for number in range(10):
        hub.put(b"/r/b", str(number).encode())
    assert not hub.core.window.covers(first)
    hub.core.create("s", 1, WatchRequest.for_prefix(b"/r/", start_revision=first))
    hub.core.create("s", 2, WatchRequest.for_prefix(b"/r/", start_revision=hub.state.revision - 2))
    hub.core.catch_up_round()
    assert [batch.revision for batch in hub.take(1)] == list(range(first, hub.state.revision + 1))
    assert [batch.revision for batch in hub.take(2)] == list(range(hub.state.revision - 2, hub.state.revision + 1))
    assert hub.core.counters["history_reads"] == 1
    hub.put(b"/r/live")
    assert hub.take(1)[0].revision == hub.state.revision


def test_compacted_start_raises_with_compact_revision() -> None:
    hub = Hub()
    for number in range(5):
        hub.put(b"/c/k", str(number).encode())
    hub.state.compact(4)
    with pytest.raises(Compacted) as raised:
        hub.core.create("s", 1, WatchRequest(b"/c/k", start_revision=3))
    assert raised.value.compact_revision == 4
    assert hub.core.create("s", 2, WatchRequest(b"/c/k", start_revision=5)) == 5


def test_slow_watcher_cancelled_as_lagging_while_others_continue() -> None:
    hub = Hub(watch_queue_events_max=4)
    hub.core.create("s", 1, WatchRequest.for_prefix(b"/l/"))
    hub.core.create("s", 2, WatchRequest.for_prefix(b"/l/"))
    revisions = []
    for number in range(4):
        revisions.append(hub.put(b"/l/k", str(number).encode()))
    assert len(hub.take(1, paused=frozenset({2}))) == 4
    revisions.append(hub.put(b"/l/k", b"overflow"))
    slow = hub.take(2, paused=frozenset({2}))
    assert len(slow) == 1 and isinstance(slow[0], WatchCancel)
    assert slow[0].reason is CancelReason.LAGGING
    assert slow[0].resume_revision == revisions[0]
    assert f"resume from revision {revisions[0]}" in slow[0].message
    assert [batch.revision for batch in hub.take(1)] == [revisions[-1]]


def test_catch_up_admits_bounded_resumes_per_round() -> None:
    hub = Hub(resumes_per_round_max=3)
    start = hub.put(b"/s/k")
    hub.put(b"/s/k")
    for watch_id in range(10):
        hub.core.create("s", watch_id, WatchRequest(b"/s/k", start_revision=start))
    assert hub.core.catch_up_round() == 3
    assert hub.core.statistics()["unsynced"] == 7
    while hub.core.catch_up_round():
        pass
    assert hub.core.statistics()["synced"] == 10


def test_progress_on_request_never_goes_back() -> None:
    hub = Hub(progress_interval_s=1.0)
    hub.core.create("s", 1, WatchRequest.for_prefix(b"/p/", progress_notify=True))
    hub.put(b"/elsewhere")
    hub.core.request_progress("s", [1])
    progress = hub.take(1)
    assert progress == [WatchBatch(hub.state.revision, progress=True)]
    hub.core.request_progress("s", [1])
    assert hub.take(1) == []
    hub.put(b"/elsewhere")
    hub.clock.now += 2.0
    hub.core.tick()
    assert hub.take(1) == [WatchBatch(hub.state.revision, progress=True)]


def test_idle_session_expires() -> None:
    hub = Hub(session_ttl_s=5.0)
    hub.core.create("s", 1, WatchRequest(b"/e"))
    hub.clock.now += 6.0
    assert hub.core.tick() == ["s"]
    with pytest.raises(SessionExpired):
        hub.core.take("s")


def test_snapshot_reset_sends_synced_watchers_to_history() -> None:
    hub = Hub()
    hub.core.create("s", 1, WatchRequest.for_prefix(b"/n/"))
    missed = MVCC()
    missed.put(b"/n/a", b"1")
    missed.put(b"/n/b", b"2")
    hub.core.reset(missed)
    hub.core.catch_up_round()
    assert [batch.revision for batch in hub.take(1)] == [2, 3]


@pytest.mark.parametrize("seed", range(6))
def test_random_workload_streams_pass_checker(seed: int) -> None:
    """Random writes, starts, slow readers and resumes: every stream passes the checker."""
    rng = random.Random(seed)
    hub = Hub(window_revisions_max=8, watch_queue_events_max=6, resumes_per_round_max=2)
    keys = [b"/w/a", b"/w/b", b"/w/c/d", b"/x"]
    for key in keys:
        hub.put(key)
    watches: dict[int, dict] = {}
    for watch_id in range(8):
        start = rng.choice([0, 1 + rng.randrange(hub.state.revision)])
        request = WatchRequest.for_prefix(b"/w/", prev_kv=rng.random() < 0.5) if watch_id % 2 else \
            WatchRequest(rng.choice(keys), prev_kv=True)
        request = dataclasses.replace(request, start_revision=start)
        begun = hub.core.create("s", watch_id, request)
        watches[watch_id] = {"request": request, "start": begun, "next": begun, "stream": [], "resumes": []}
    for _ in range(300):
        action = rng.random()
        if action < 0.5:
            rng.choice([lambda: hub.put(rng.choice(keys), str(rng.random()).encode()),
                        lambda: hub.txn(*rng.sample(keys, 2)),
                        lambda: hub.delete(b"/w/", b"/w0")])()
        elif action < 0.7:
            hub.core.catch_up_round()
        else:
            paused = frozenset(watch_id for watch_id in watches if rng.random() < 0.4)
            for watch_id, items in hub.core.take("s", paused).items.items():
                watch = watches[watch_id]
                for item in items:
                    if isinstance(item, WatchBatch):
                        watch["stream"].append(item)
                        watch["next"] = item.revision + 1
                    else:
                        watch["resumes"].append((item.reason.value, watch["next"]))
                        resumed = dataclasses.replace(watch["request"], start_revision=watch["next"])
                        hub.core.create("s", watch_id, resumed)
    history = hub.state.events(1)
    for watch_id, watch in watches.items():
        result = check_watch_stream(watch["request"], watch["start"], watch["stream"], history,
                                    resumes=watch["resumes"], history_through=hub.state.revision)
        assert result.ok, f"watch {watch_id}: {result.summary()}"
    assert hub.core.counters["lagging_cancels"] > 0


def test_non_prefix_range_rejected() -> None:
    with pytest.raises(InvalidRequest):
        WatchRequest(b"/a", b"/c")
    assert WatchRequest.for_prefix(b"").range_end == b""
    assert WatchRequest.for_prefix(b"/a/").range_end == b"/a0"


def test_poll_reply_bounded_by_event_budget() -> None:
    hub = Hub(reply_events_max=10)
    for watch_id in range(8):
        hub.core.create("s", watch_id, WatchRequest.for_prefix(b"/b/"))
    for number in range(3):
        hub.put(b"/b/k", str(number).encode())
    first = hub.core.take("s")
    delivered = sum(len(item.events) for items in first.items.values() for item in items
                    if isinstance(item, WatchBatch))
    assert 10 <= delivered < 24
    second = hub.core.take("s")
    assert set(first.items) | set(second.items) == set(range(8))
    assert not set(first.items) & set(second.items)
    assert all(len(items) == 3 for items in list(first.items.values()) + list(second.items.values()))
