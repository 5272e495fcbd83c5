"""The watch checker on hand-made streams: one good stream and one bad stream per guarantee."""

from __future__ import annotations

import dataclasses

import pytest

from rayconf.actors.watch_records import WatchBatch, WatchRequest
from rayconf.sims.watch_checker import check_watch_stream
from rayconf.store.mvcc import MVCC
from rayconf.store.records import DeleteRange, Event, Put, Txn


@pytest.fixture
def history() -> list[Event]:
    """Revisions 2..6: two keys per txn at 2 and 4, a delete at 5, an unrelated key at 6."""
    state = MVCC()
    state.txn(Txn(success=(Put(b"/a/x", b"1"), Put(b"/a/y", b"1"))))
    state.put(b"/a/x", b"2")
    state.txn(Txn(success=(Put(b"/a/x", b"3"), Put(b"/a/y", b"3"))))
    state.delete(b"/a/y")
    state.put(b"/b", b"other")
    return state.events(1)


REQUEST = WatchRequest.for_prefix(b"/a/", prev_kv=True)


def good_stream(history: list[Event]) -> list[WatchBatch]:
    batches = []
    for revision in range(2, 6):
        batches.append(WatchBatch(revision, tuple(e for e in history if e.kv.mod_revision == revision)))
    batches.append(WatchBatch(6, progress=True))
    return batches


def test_good_stream_passes(history: list[Event]) -> None:
    result = check_watch_stream(REQUEST, 2, good_stream(history), history)
    assert result.ok, result.summary()
    assert result.batches == 4


def test_events_of_revision_in_any_order_pass(history: list[Event]) -> None:
    stream = good_stream(history)
    stream[0] = WatchBatch(2, tuple(reversed(stream[0].events)))
    assert check_watch_stream(REQUEST, 2, stream, history).ok


def test_reordered_batches_fail_ordered(history: list[Event]) -> None:
    stream = good_stream(history)
    stream[1], stream[2] = stream[2], stream[1]
    assert "ordered" in check_watch_stream(REQUEST, 2, stream, history).violations


def test_duplicate_revision_fails_unique(history: list[Event]) -> None:
    stream = good_stream(history)
    stream.insert(2, stream[1])
    assert "unique" in check_watch_stream(REQUEST, 2, stream, history).violations


def test_split_revision_fails_atomic(history: list[Event]) -> None:
    stream = good_stream(history)
    first = stream[0]
    stream[0] = WatchBatch(2, first.events[:1])
    assert "atomic" in check_watch_stream(REQUEST, 2, stream, history).violations


def test_missing_revision_fails_reliable(history: list[Event]) -> None:
    stream = good_stream(history)
    del stream[1]
    violations = check_watch_stream(REQUEST, 2, stream, history).violations
    assert "reliable" in violations
    assert "bookmarkable" in violations


def test_early_start_fails_resumable(history: list[Event]) -> None:
    stream = good_stream(history)
    assert "resumable" in check_watch_stream(REQUEST, 3, stream, history).violations


def test_resume_going_back_fails_resumable(history: list[Event]) -> None:
    result = check_watch_stream(REQUEST, 2, good_stream(history), history,
                                resumes=[("lagging", 4), ("hub restart", 3)])
    assert "resumable" in result.violations


def test_backward_progress_fails_bookmarkable(history: list[Event]) -> None:
    stream = good_stream(history)
    stream.insert(2, WatchBatch(3, progress=True))
    stream.insert(3, WatchBatch(2, progress=True))
    assert "bookmarkable" in check_watch_stream(REQUEST, 2, stream, history).violations


def test_premature_progress_fails_bookmarkable(history: list[Event]) -> None:
    stream = good_stream(history)
    stream.insert(1, WatchBatch(4, progress=True))
    assert "bookmarkable" in check_watch_stream(REQUEST, 2, stream, history).violations


def test_wrong_prev_kv_fails(history: list[Event]) -> None:
    stream = good_stream(history)
    event = stream[1].events[0]
    stream[1] = WatchBatch(3, (dataclasses.replace(event, prev_kv=None),))
    assert "prev_kv" in check_watch_stream(REQUEST, 2, stream, history).violations


def test_prev_kv_without_request_fails(history: list[Event]) -> None:
    request = WatchRequest.for_prefix(b"/a/")
    assert "prev_kv" in check_watch_stream(request, 2, good_stream(history), history).violations


def test_revision_beyond_history_fails(history: list[Event]) -> None:
    stream = good_stream(history)
    stream.append(WatchBatch(9, stream[0].events))
    assert not check_watch_stream(REQUEST, 2, stream, history).ok
