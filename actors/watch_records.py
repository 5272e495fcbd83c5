"""Records that watch hubs and watch clients exchange, and the hub settings.

A watch names one key (`range_end` None) or a prefix (`range_end` the end of
the prefix range). A client process opens one session on a hub and polls it
with one call for all of its watches. Each poll returns, per watch id, a list
of items in order: `WatchBatch` records (all events of one revision, or a
progress notification) and at most one final `WatchCancel`.

This module imports no Ray, so the checker and unit tests can use it alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from rayconf.errors import InvalidRequest, Unavailable
from rayconf.store.keys import RANGE_END_OPEN, prefix_end
from rayconf.store.records import Event, EventType


class WatchFilter(enum.Enum):
    """Event types to leave out of a watch, named as in etcd."""

    NOPUT = "noput"
    NODELETE = "nodelete"


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """The key or prefix of one watch, its start revision and its delivery options.

    `start_revision` 0 means "from the next revision the hub applies".
    """

    key: bytes
    # None watches `key` alone. Otherwise the watch covers `[key, range_end)`, open when empty.
    range_end: bytes | None = None
    start_revision: int = 0
    prev_kv: bool = False
    filters: frozenset[WatchFilter] = frozenset()
    progress_notify: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise InvalidRequest(f"watch key must be bytes, got {type(self.key).__name__}")
        if self.range_end is not None and not isinstance(self.range_end, bytes):
            raise InvalidRequest(f"watch range_end must be bytes or None, got {type(self.range_end).__name__}")
        # The hub indexes prefixes, so a range must be exactly the range of a prefix.
        if self.range_end is not None and self.range_end != prefix_end(self.key):
            raise InvalidRequest(f"watch range [{self.key!r}, {self.range_end!r}) is not a prefix range; "
                                 f"watch a prefix (range_end {prefix_end(self.key)!r}) or one key")
        if isinstance(self.start_revision, bool) or not isinstance(self.start_revision, int) \
                or self.start_revision < 0:
            raise InvalidRequest(f"start_revision is {self.start_revision!r}; give 0 (now) or a revision >= 1")
        unknown = [item for item in self.filters if not isinstance(item, WatchFilter)]
        if unknown:
            raise InvalidRequest(f"watch filters {unknown!r} are unknown; use WatchFilter.NOPUT or NODELETE")

    @classmethod
    def for_prefix(cls, prefix: bytes, **options: object) -> WatchRequest:
        return cls(prefix, prefix_end(prefix) if prefix else RANGE_END_OPEN, **options)  # type: ignore[arg-type]

    def matches_key(self, key: bytes) -> bool:
        if self.range_end is None:
            return key == self.key
        return key >= self.key and (self.range_end == RANGE_END_OPEN or key < self.range_end)

    def select(self, events: tuple[Event, ...] | list[Event]) -> tuple[Event, ...]:
        """Return the events of one revision that this watch delivers, in their order.

        Applies the key range and the filters, and drops `prev_kv` unless the
        watch asked for it.
        """
        selected = []
        for event in events:
            if not self.matches_key(event.kv.key):
                continue
            if event.type is EventType.PUT and WatchFilter.NOPUT in self.filters:
                continue
            if event.type is EventType.DELETE and WatchFilter.NODELETE in self.filters:
                continue
            if event.prev_kv is not None and not self.prev_kv:
                event = Event(event.type, event.kv, None)
            selected.append(event)
        return tuple(selected)


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """All events of one revision for one watch, or a progress notification.

    A progress notification (`progress` set, `events` empty) states that the
    watcher has now received every event it matches at or below `revision`.
    """

    revision: int
    events: tuple[Event, ...] = ()
    progress: bool = False


class CancelReason(enum.Enum):
    LAGGING = "lagging"
    COMPACTED = "compacted"
    CLOSED = "closed"
    PERMISSION_DENIED = "permission_denied"


@dataclass(frozen=True, slots=True)
class WatchCancel:
    """The end of a watch on the hub; the last item the hub sends for that watch id.

    LAGGING: the watcher's queue overflowed; resume from `resume_revision`.
    COMPACTED: the watch needs revisions at or below `compact_revision`.
    CLOSED: the hub dropped the watch (the client cancelled it, or the hub stops).
    PERMISSION_DENIED: the watch's user may not read its prefix, or its token
    was revoked; `message` says which.
    """

    reason: CancelReason
    message: str
    resume_revision: int = 0
    compact_revision: int = 0
    # PERMISSION_DENIED: "AuthenticationFailed" or "PermissionDenied", and the user it concerns.
    error_type: str = ""
    user: str = ""


WatchItem = WatchBatch | WatchCancel


@dataclass(frozen=True, slots=True)
class PollReply:
    """Items per watch id, and the hub's revision when the poll returned."""

    items: dict[int, list[WatchItem]] = field(default_factory=dict)
    hub_revision: int = 0


class SessionExpired(Unavailable):
    """The hub does not know the session, because it restarted or the session timed out.

    The client opens a new session and resumes its watches from their last
    delivered revisions.
    """


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Bounds of one watch hub, each with what happens when it is reached."""

    # Recent revisions kept for resumes. Older ones are served from the MVCC history.
    window_revisions_max: int = 10_000
    # Events queued per watcher. A live revision that does not fit cancels the
    # watcher as lagging. One revision larger than the bound is queued alone.
    watch_queue_events_max: int = 1_000
    # Catching-up watchers (resumes and old start revisions) served per round.
    # The others wait for a later round, so live delivery keeps its turn.
    resumes_per_round_max: int = 64
    # A session that has not polled for this long is dropped with its watches.
    session_ttl_s: float = 30.0
    # Period of progress notifications for watches created with progress_notify.
    progress_interval_s: float = 5.0
    # Watches per session. Creating more raises InvalidRequest.
    watches_per_session_max: int = 100_000
    # Sessions per hub. Opening more raises Unavailable.
    sessions_max: int = 10_000
    # Events per poll reply. The watches that do not fit stay pending, and the
    # client's next poll returns them at once, so one reply never grows past
    # what the client can receive within its poll timeout.
    reply_events_max: int = 20_000

    def __post_init__(self) -> None:
        for name in ("window_revisions_max", "watch_queue_events_max", "resumes_per_round_max",
                     "watches_per_session_max", "sessions_max", "reply_events_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidRequest(f"hub setting {name} is {value!r}; give a positive integer")
        for name in ("session_ttl_s", "progress_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise InvalidRequest(f"hub setting {name} is {value!r}; give a positive number of seconds")
