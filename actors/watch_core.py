"""The watch hub's state machine: sessions, watchers, delivery, catch-up and progress.

The hub actor (`watch_hub.py`) feeds it committed revisions and client calls;
this module does no I/O and imports no Ray, so tests drive it directly.

A watcher is in one of two groups, as in etcd's watchable store:
- synced: it has been sent every revision up to the hub's revision. It sits
  in the subscription index, and each live revision is matched against all
  synced watchers at once (`apply_revision`).
- unsynced: it still needs older revisions (a resume, an old start revision,
  or a future one). `catch_up_round` serves at most `resumes_per_round_max`
  of them per call, from the revision window when it covers the watcher's
  next revision, else from the MVCC history. A watcher moves to the synced
  group once it has reached the hub's revision. Bounding the round is the
  admission control: a reconnection storm of thousands of resumes is spread
  over many rounds while live revisions keep flowing to synced watchers.

Queues. Each watcher queues at most `watch_queue_events_max` events, in whole
revisions. When a live revision does not fit, the watcher is cancelled as
lagging: its queue is dropped, and the cancel carries the oldest revision it
was not sent, from which the client resumes. Catch-up stops at the bound instead and
continues in a later round, so a resume never cancels itself.

Progress notifications. A notification at revision R promises that the
watcher has been sent every event at or below R: for a synced watcher R is
the hub's revision, for an unsynced one the revision before its next one.
The hub never sends a notification at or below the last one it sent to the
same watcher, so on one hub they never go backwards.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rayconf.actors.watch_index import RevisionWindow, SubscriptionIndex
from rayconf.actors.watch_records import (
    CancelReason,
    HubSettings,
    PollReply,
    SessionExpired,
    WatchBatch,
    WatchCancel,
    WatchItem,
    WatchRequest,
)
from rayconf.errors import Compacted, InvalidRequest, Unavailable
from rayconf.store.mvcc import MVCC
from rayconf.store.records import Event

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Watcher:
    session_id: str
    watch_id: int
    request: WatchRequest
    # Unsynced: the oldest revision not yet queued. Synced: unused, the hub's revision + 1 applies.
    next_revision: int
    synced: bool = False
    queue: deque[WatchBatch] = field(default_factory=deque)
    # Events in `queue`: at most watch_queue_events_max, unless one revision alone is larger.
    queued_events: int = 0
    cancel: WatchCancel | None = None
    progress_requested: bool = False
    progress_due_s: float = 0.0
    # The revision of the last progress notification sent. Notifications only go up.
    progress_revision: int = 0

    @property
    def is_prefix(self) -> bool:
        return self.request.range_end is not None


@dataclass(slots=True, eq=False)
class Session:
    session_id: str
    last_poll_s: float
    watchers: dict[int, Watcher] = field(default_factory=dict)
    # Watch ids that may have something to deliver (queued batches, a cancel or a progress).
    pending: set[int] = field(default_factory=set)


class WatchHubCore:
    """Watchers of one hub over one MVCC state; see the module comment for the model."""

    def __init__(self, settings: HubSettings, state: MVCC, *, clock: Callable[[], float] = time.monotonic,
                 on_ready: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock
        # Called with a session id whenever that session gets something to deliver.
        self.on_ready = on_ready or (lambda session_id: None)
        self.sessions: dict[str, Session] = {}
        self.index: SubscriptionIndex[Watcher] = SubscriptionIndex()
        self.window = RevisionWindow(settings.window_revisions_max, covered_after=state.revision)
        # Unsynced watchers in the order they are served. Cancelled ones are skipped when reached.
        self.unsynced: deque[Watcher] = deque()
        self.counters = {"revisions_applied": 0, "events_queued": 0, "lagging_cancels": 0,
                         "compacted_cancels": 0, "catch_ups_served": 0, "history_reads": 0,
                         "progress_sent": 0, "sessions_expired": 0}

    @property
    def revision(self) -> int:
        return self.state.revision

    # --- Sessions and watches. ---

    def open_session(self, session_id: str) -> None:
        if session_id in self.sessions:
            return
        if len(self.sessions) >= self.settings.sessions_max:
            raise Unavailable(f"the hub has {len(self.sessions)} sessions, the maximum (sessions_max); "
                              "use another hub or retry later")
        self.sessions[session_id] = Session(session_id, self.clock())

    def close_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for watcher in session.watchers.values():
            self._unindex(watcher)
            watcher.cancel = WatchCancel(CancelReason.CLOSED, "the session was closed")

    def create(self, session_id: str, watch_id: int, request: WatchRequest) -> int:
        """Add a watch and return the first revision it will deliver.

        Raises `Compacted` when the start revision is at or below the compact
        revision, `SessionExpired` for an unknown session, and `InvalidRequest`
        for a duplicate watch id or a full session.
        """
        session = self._session(session_id)
        if watch_id in session.watchers:
            raise InvalidRequest(f"watch id {watch_id} is already used in session {session_id}")
        if len(session.watchers) >= self.settings.watches_per_session_max:
            raise InvalidRequest(f"session {session_id} has {len(session.watchers)} watches, the maximum "
                                 "(watches_per_session_max); cancel some or open another session")
        start = request.start_revision or self.revision + 1
        if start <= self.state.compact_revision:
            raise Compacted(
                f"watch from revision {start} needs compacted history; the compact revision is "
                f"{self.state.compact_revision}, so watch from {self.state.compact_revision + 1} or later",
                compact_revision=self.state.compact_revision, requested_revision=start)
        watcher = Watcher(session_id, watch_id, request, next_revision=start,
                          progress_due_s=self.clock() + self.settings.progress_interval_s)
        session.watchers[watch_id] = watcher
        session.last_poll_s = self.clock()
        if start == self.revision + 1:
            self._sync(watcher)
        else:
            self.unsynced.append(watcher)
        return start

    def cancel(self, session_id: str, watch_id: int) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        watcher = session.watchers.pop(watch_id, None)
        session.pending.discard(watch_id)
        if watcher is not None:
            self._unindex(watcher)
            watcher.cancel = WatchCancel(CancelReason.CLOSED, "the client cancelled the watch")

    def request_progress(self, session_id: str, watch_ids: list[int] | None = None) -> None:
        """Ask for a progress notification on the next poll, for `watch_ids` or every watch."""
        session = self._session(session_id)
        for watch_id in session.watchers if watch_ids is None else watch_ids:
            watcher = session.watchers.get(watch_id)
            if watcher is not None:
                watcher.progress_requested = True
                self._mark(watcher)

    # --- The committed stream. ---

    def apply_revision(self, revision: int, events: tuple[Event, ...]) -> None:
        """Record one new revision and queue its events for every synced watcher it matches."""
        assert events, "a revision always has at least one event"
        self.window.append(revision, events)
        self.counters["revisions_applied"] += 1
        if not self.index.size:
            return
        matched: dict[Watcher, list[Event]] = {}
        for event in events:
            for watcher in self.index.match(event.kv.key):
                matched.setdefault(watcher, []).append(event)
        for watcher, candidates in matched.items():
            selected = watcher.request.select(candidates)
            if selected:
                self._enqueue_live(watcher, WatchBatch(revision, selected))

    def reset(self, state: MVCC) -> None:
        """Switch to `state`, loaded from a snapshot; every synced watcher catches up from history."""
        next_revision = self.revision + 1
        for session in self.sessions.values():
            for watcher in session.watchers.values():
                if watcher.synced:
                    self._unindex(watcher)
                    watcher.next_revision = next_revision
                    self.unsynced.append(watcher)
        self.state = state
        self.window.reset(covered_after=state.revision)
        logger.info("watch hub core reset to revision %d; %d watchers catch up", state.revision, len(self.unsynced))

    def _enqueue_live(self, watcher: Watcher, batch: WatchBatch) -> None:
        bound = self.settings.watch_queue_events_max
        if watcher.queue and watcher.queued_events + len(batch.events) > bound:
            resume = watcher.queue[0].revision
            self._unindex(watcher)
            watcher.queue.clear()
            watcher.queued_events = 0
            watcher.cancel = WatchCancel(
                CancelReason.LAGGING,
                f"lagging, resume from revision {resume}: watch {watcher.watch_id} had {bound} events "
                "queued (watch_queue_events_max) and the client did not read them in time",
                resume_revision=resume)
            self.counters["lagging_cancels"] += 1
            logger.debug("watch %s/%d cancelled as lagging at revision %d", watcher.session_id,
                         watcher.watch_id, batch.revision)
            self._mark(watcher)
            return
        self._push(watcher, batch)

    def _push(self, watcher: Watcher, batch: WatchBatch) -> None:
        watcher.queue.append(batch)
        watcher.queued_events += len(batch.events)
        self.counters["events_queued"] += len(batch.events)
        self._mark(watcher)

    # --- Catch-up with admission control. ---

    def catch_up_round(self) -> int:
        """Serve up to `resumes_per_round_max` unsynced watchers; return how many were served.

        Watchers waiting for a future revision, or with a full queue, stay in
        line without taking a slot.
        """
        served = 0
        for _ in range(len(self.unsynced)):
            if served >= self.settings.resumes_per_round_max:
                break
            watcher = self.unsynced.popleft()
            if watcher.cancel is not None or watcher.synced or not self._is_live(watcher):
                continue
            if watcher.next_revision > self.revision or watcher.queued_events >= \
                    self.settings.watch_queue_events_max:
                if watcher.next_revision == self.revision + 1:
                    self._sync(watcher)
                else:
                    self.unsynced.append(watcher)
                continue
            served += 1
            self.counters["catch_ups_served"] += 1
            self._catch_up(watcher)
            if watcher.cancel is None and not watcher.synced:
                self.unsynced.append(watcher)
        return served

    def _catch_up(self, watcher: Watcher) -> None:
        if self.window.covers(watcher.next_revision):
            revisions = ((item.revision, watcher.request.select(item.events))
                         for item in self.window.since(watcher.next_revision))
        else:
            try:
                history = self._history(watcher)
            except Compacted as error:
                self._cancel_compacted(watcher, error.compact_revision)
                return
            revisions = ((revision, watcher.request.select(list(group)))
                         for revision, group in itertools.groupby(history, key=lambda event: event.kv.mod_revision))
        bound = self.settings.watch_queue_events_max
        for revision, selected in revisions:
            if selected:
                if watcher.queue and watcher.queued_events + len(selected) > bound:
                    watcher.next_revision = revision
                    return
                self._push(watcher, WatchBatch(revision, selected))
            watcher.next_revision = revision + 1
        watcher.next_revision = self.revision + 1
        self._sync(watcher)

    def _history(self, watcher: Watcher) -> list[Event]:
        # A watch from a revision older than the window is rare and costly,
        # because MVCC.events scans the whole store.
        self.counters["history_reads"] += 1
        request = watcher.request
        return self.state.events(watcher.next_revision, request.key, request.range_end)

    def _cancel_compacted(self, watcher: Watcher, compact_revision: int) -> None:
        watcher.cancel = WatchCancel(
            CancelReason.COMPACTED,
            f"watch {watcher.watch_id} needs revision {watcher.next_revision}, but the store is compacted at "
            f"revision {compact_revision}; watch from {compact_revision + 1} or later",
            resume_revision=watcher.next_revision, compact_revision=compact_revision)
        self.counters["compacted_cancels"] += 1
        self._mark(watcher)

    def _sync(self, watcher: Watcher) -> None:
        assert watcher.next_revision == self.revision + 1
        watcher.synced = True
        self.index.add(watcher, watcher.request.key, prefix=watcher.is_prefix)

    def _unindex(self, watcher: Watcher) -> None:
        if watcher.synced:
            self.index.remove(watcher, watcher.request.key, prefix=watcher.is_prefix)
            watcher.synced = False
            watcher.next_revision = self.revision + 1

    # --- Delivery. ---

    def take(self, session_id: str, paused: frozenset[int] = frozenset()) -> PollReply:
        """Remove and return what each watch of the session has to deliver.

        A paused watch (its client buffer is full) keeps its queue; only a
        cancel with nothing queued before it is delivered for it. Cancelled
        watches leave the session once their cancel is delivered. A reply
        stops adding watches at `reply_events_max` events, and the rest stay
        pending for the next poll.
        """
        session = self._session(session_id)
        now = self.clock()
        session.last_poll_s = now
        items: dict[int, list[WatchItem]] = {}
        events_taken = 0
        for watch_id in list(session.pending):
            if events_taken >= self.settings.reply_events_max:
                break
            watcher = session.watchers.get(watch_id)
            if watcher is None:
                session.pending.discard(watch_id)
                continue
            if watch_id in paused and watcher.queue:
                continue
            delivered: list[WatchItem] = list(watcher.queue)
            watcher.queue.clear()
            watcher.queued_events = 0
            progress = self._progress_item(watcher, now, had_events=bool(delivered))
            if progress is not None:
                delivered.append(progress)
            if watcher.cancel is not None:
                delivered.append(watcher.cancel)
                del session.watchers[watch_id]
            session.pending.discard(watch_id)
            if delivered:
                items[watch_id] = delivered
                events_taken += sum(len(item.events) if isinstance(item, WatchBatch) else 1 for item in delivered)
        return PollReply(items, self.revision)

    def _progress_item(self, watcher: Watcher, now: float, *, had_events: bool) -> WatchBatch | None:
        requested = watcher.progress_requested
        periodic = watcher.request.progress_notify and now >= watcher.progress_due_s and not had_events
        if not (requested or periodic) or watcher.cancel is not None:
            return None
        watcher.progress_requested = False
        watcher.progress_due_s = now + self.settings.progress_interval_s
        complete = self.revision if watcher.synced else watcher.next_revision - 1
        if complete <= watcher.progress_revision:
            return None
        watcher.progress_revision = complete
        self.counters["progress_sent"] += 1
        return WatchBatch(complete, progress=True)

    def tick(self) -> list[str]:
        """Mark due progress notifications and drop idle sessions; return the dropped session ids."""
        now = self.clock()
        expired = [session.session_id for session in self.sessions.values()
                   if now - session.last_poll_s > self.settings.session_ttl_s]
        for session_id in expired:
            self.close_session(session_id)
            self.counters["sessions_expired"] += 1
        for session in self.sessions.values():
            for watcher in session.watchers.values():
                if watcher.request.progress_notify and now >= watcher.progress_due_s:
                    self._mark(watcher)
        return expired

    def _mark(self, watcher: Watcher) -> None:
        session = self.sessions.get(watcher.session_id)
        if session is None:
            return
        session.pending.add(watcher.watch_id)
        self.on_ready(watcher.session_id)

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionExpired(f"session {session_id} is unknown to this hub (it restarted or the session "
                                 "expired); open a new session and resume the watches")
        return session

    def _is_live(self, watcher: Watcher) -> bool:
        session = self.sessions.get(watcher.session_id)
        return session is not None and session.watchers.get(watcher.watch_id) is watcher

    def statistics(self) -> dict[str, int]:
        watchers = sum(len(session.watchers) for session in self.sessions.values())
        return {
            "revision": self.revision,
            "compact_revision": self.state.compact_revision,
            "window_revisions": len(self.window),
            "window_covered_after": self.window.covered_after,
            "sessions": len(self.sessions),
            "watchers": watchers,
            "synced": self.index.size,
            "unsynced": sum(1 for watcher in self.unsynced if watcher.cancel is None),
            **self.counters,
        }
