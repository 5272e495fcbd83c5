"""A checker of the watch guarantees, for one delivered stream against the store's history.

The guarantees are etcd's:
- ordered: batch revisions strictly increase;
- unique: no revision, and so no event, is delivered twice;
- atomic: a delivered revision carries every matching event of that revision;
- reliable: no matching revision between the start and the last revision the
  stream vouched for (its last batch or progress notification) is missing;
- resumable: the stream starts at the requested start revision, and every
  resume started right after the last revision delivered before it;
- bookmarkable: progress notifications never go backwards, and each one comes
  after every matching event at or below its revision.
It also checks prev_kv: each event's previous version must be the store's,
and absent unless the watch requested it.

The history is every event of the store from the watch's start revision on,
as `MVCC.events(start_revision)` returns it (revision order). Events of a
revision are compared as multisets, because a hub delivers them in the order
the transaction made them and the history lists them in key order.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rayconf.actors.watch_records import WatchBatch, WatchRequest
from rayconf.store.records import Event, EventType, KeyValue

logger = logging.getLogger(__name__)

# Violations listed per check before the rest are only counted.
VIOLATIONS_PER_CHECK_MAX = 5


@dataclass(slots=True)
class WatchCheckResult:
    """Violations found per guarantee; the stream passes when there are none."""

    violations: dict[str, list[str]] = field(default_factory=dict)
    # Violations beyond VIOLATIONS_PER_CHECK_MAX, per guarantee.
    omitted: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    events: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, guarantee: str, message: str) -> None:
        found = self.violations.setdefault(guarantee, [])
        if len(found) < VIOLATIONS_PER_CHECK_MAX:
            found.append(message)
        else:
            self.omitted[guarantee] += 1

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.batches} batches, {self.events} events"
        lines = [f"{guarantee}: {'; '.join(messages)}"
                 + (f" (+{self.omitted[guarantee]} more)" if self.omitted[guarantee] else "")
                 for guarantee, messages in sorted(self.violations.items())]
        return "\n".join(lines)


def expected_by_revision(request: WatchRequest, history: Iterable[Event], start_revision: int) -> dict[int, list[Event]]:
    """Return the events `request` must deliver per revision, from `start_revision` on."""
    expected: dict[int, list[Event]] = {}
    for revision, group in itertools.groupby(history, key=lambda event: event.kv.mod_revision):
        if revision < start_revision:
            continue
        selected = request.select(list(group))
        if selected:
            expected[revision] = list(selected)
    return expected


def check_watch_stream(request: WatchRequest, start_revision: int, stream: Sequence[WatchBatch],
                       history: Sequence[Event], *, resumes: Sequence[tuple[str, int]] = (),
                       history_through: int = 0) -> WatchCheckResult:
    """Check `stream`, delivered for `request` from `start_revision`, against `history`.

    `resumes` lists (reason, revision) for each resume the client made, in
    order. `history_through` is the store revision up to which the history
    is complete (default: its last event). No batch may claim a later one.
    """
    result = WatchCheckResult()
    expected = expected_by_revision(request, history, start_revision)
    through = history_through or (history[-1].kv.mod_revision if history else 0)
    _check_order(stream, start_revision, result)
    _check_contents(stream, expected, through, result)
    _check_progress(stream, expected, result)
    _check_reliable(stream, expected, start_revision, result)
    _check_resumes(stream, resumes, start_revision, result)
    result.batches = sum(1 for batch in stream if not batch.progress)
    result.events = sum(len(batch.events) for batch in stream)
    return result


def _check_order(stream: Sequence[WatchBatch], start_revision: int, result: WatchCheckResult) -> None:
    seen: set[int] = set()
    previous = 0
    for position, batch in enumerate(stream):
        if batch.progress:
            continue
        if batch.revision in seen:
            result.add("unique", f"revision {batch.revision} delivered again at position {position}")
        seen.add(batch.revision)
        if batch.revision <= previous:
            result.add("ordered", f"revision {batch.revision} at position {position} follows revision {previous}")
        previous = max(previous, batch.revision)
        if batch.revision < start_revision:
            result.add("resumable", f"revision {batch.revision} is below the start revision {start_revision}")
        if not batch.events:
            result.add("atomic", f"revision {batch.revision} was delivered as an empty batch")


def _check_contents(stream: Sequence[WatchBatch], expected: dict[int, list[Event]], through: int,
                    result: WatchCheckResult) -> None:
    for batch in stream:
        if batch.progress:
            if batch.events:
                result.add("bookmarkable", f"progress notification at {batch.revision} carries events")
            continue
        if batch.revision > through:
            result.add("reliable", f"revision {batch.revision} is above the store's history ({through})")
            continue
        wanted = expected.get(batch.revision)
        if wanted is None:
            result.add("reliable", f"revision {batch.revision} was delivered but has no matching event")
            continue
        for event in batch.events:
            if event.kv.mod_revision != batch.revision:
                result.add("atomic", f"an event of revision {event.kv.mod_revision} is in batch {batch.revision}")
        delivered = Counter(_event_key(event) for event in batch.events)
        target = Counter(_event_key(event) for event in wanted)
        if delivered == target:
            continue
        missing = target - delivered
        extra = delivered - target
        wrong_prev = {key[1] for key in missing} & {key[1] for key in extra}
        if wrong_prev and {key[:3] for key in missing} == {key[:3] for key in extra}:
            result.add("prev_kv", f"revision {batch.revision}: keys {sorted(wrong_prev)} have a "
                                  "prev_kv that differs from the store's")
        elif missing:
            result.add("atomic", f"revision {batch.revision} is split: {sum(missing.values())} of its "
                                 f"{len(wanted)} events are missing")
        else:
            result.add("unique", f"revision {batch.revision} carries {sum(extra.values())} unexpected events")


EventKey = tuple[EventType, bytes, KeyValue, "KeyValue | None"]


def _event_key(event: Event) -> EventKey:
    return (event.type, event.kv.key, event.kv, event.prev_kv)


def _check_progress(stream: Sequence[WatchBatch], expected: dict[int, list[Event]], result: WatchCheckResult) -> None:
    delivered: set[int] = set()
    last_progress = 0
    for batch in stream:
        if not batch.progress:
            delivered.add(batch.revision)
            continue
        if batch.revision < last_progress:
            result.add("bookmarkable", f"progress went back from {last_progress} to {batch.revision}")
        last_progress = max(last_progress, batch.revision)
        missing = [revision for revision in expected if revision <= batch.revision and revision not in delivered]
        if missing:
            result.add("bookmarkable", f"progress at {batch.revision} came before revisions {missing[:5]}")


def _check_reliable(stream: Sequence[WatchBatch], expected: dict[int, list[Event]], start_revision: int,
                    result: WatchCheckResult) -> None:
    horizon = max((batch.revision for batch in stream), default=0)
    delivered = {batch.revision for batch in stream if not batch.progress}
    missing = sorted(revision for revision in expected
                     if start_revision <= revision <= horizon and revision not in delivered)
    if missing:
        result.add("reliable", f"{len(missing)} matching revisions up to {horizon} are missing, "
                               f"first {missing[:5]}")


def _check_resumes(stream: Sequence[WatchBatch], resumes: Sequence[tuple[str, int]], start_revision: int,
                   result: WatchCheckResult) -> None:
    previous = start_revision
    for reason, revision in resumes:
        if revision < previous:
            result.add("resumable", f"a resume ({reason}) from {revision} goes back before {previous}")
        previous = revision
    first = next((batch.revision for batch in stream if not batch.progress), None)
    if first is not None and first < start_revision:
        result.add("resumable", f"the first revision {first} is below the start revision {start_revision}")
