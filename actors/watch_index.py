"""The data structures of a watch hub: the subscription index and the revision window.

`SubscriptionIndex` maps a key to every subscription that covers it. Exact
keys sit in a dict. Prefixes sit in a dict keyed by the prefix, with a count
of subscriptions per prefix length. Matching one event therefore costs one
dict lookup per distinct prefix length in use, plus one for the exact key,
whatever the number of watchers. Configuration paths reuse a few depths, so
the number of distinct lengths stays small. A trie over path segments would
do the same work but cannot serve byte prefixes that end inside a segment.

`RevisionWindow` keeps the events of the most recent revisions, grouped by
revision, for resumes that start inside it.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from rayconf.store.records import Event

logger = logging.getLogger(__name__)

Subscriber = TypeVar("Subscriber")


class SubscriptionIndex(Generic[Subscriber]):
    """Subscriptions by exact key and by prefix; subscribers are compared by identity."""

    def __init__(self) -> None:
        self._exact: dict[bytes, set[Subscriber]] = {}
        self._prefixes: dict[bytes, set[Subscriber]] = {}
        # Subscriptions per prefix length. A length is dropped when its count reaches 0.
        self._prefix_lengths: Counter[int] = Counter()
        self._lengths_sorted: list[int] = []
        self.size = 0

    def add(self, subscriber: Subscriber, key: bytes, *, prefix: bool) -> None:
        table = self._prefixes if prefix else self._exact
        members = table.setdefault(key, set())
        assert subscriber not in members, "a subscriber is indexed at most once per key"
        members.add(subscriber)
        if prefix:
            self._prefix_lengths[len(key)] += 1
            if self._prefix_lengths[len(key)] == 1:
                self._lengths_sorted = sorted(self._prefix_lengths)
        self.size += 1

    def remove(self, subscriber: Subscriber, key: bytes, *, prefix: bool) -> None:
        table = self._prefixes if prefix else self._exact
        members = table.get(key)
        if members is None or subscriber not in members:
            return
        members.discard(subscriber)
        if not members:
            del table[key]
        if prefix:
            self._prefix_lengths[len(key)] -= 1
            if self._prefix_lengths[len(key)] == 0:
                del self._prefix_lengths[len(key)]
                self._lengths_sorted = sorted(self._prefix_lengths)
        self.size -= 1

    def match(self, key: bytes) -> Iterator[Subscriber]:
        """Yield every subscriber whose key or prefix covers `key`, each once."""
        exact = self._exact.get(key)
        if exact:
            yield from exact
        for length in self._lengths_sorted:
            if length > len(key):
                break
            members = self._prefixes.get(key[:length])
            if members:
                yield from members

    def statistics(self) -> dict[str, int]:
        return {
            "subscriptions": self.size,
            "exact_keys": len(self._exact),
            "prefixes": len(self._prefixes),
            "prefix_lengths": len(self._lengths_sorted),
        }


@dataclass(frozen=True, slots=True)
class RevisionEvents:
    """Every event of one revision, in the order the transaction made them, with prev_kv."""

    revision: int
    events: tuple[Event, ...]


class RevisionWindow:
    """The last `revisions_max` revisions, with a record of which revisions it covers.

    Invariant: the window contains every revision in `(covered_after, last]`,
    where `last` is its newest revision. Revisions are strictly increasing, so
    revisions with no entry in that range had no events. When full, appending
    drops the oldest revision and moves `covered_after` up to it.
    """

    def __init__(self, revisions_max: int, covered_after: int = 0) -> None:
        assert revisions_max >= 1
        self.revisions_max = revisions_max
        self.covered_after = covered_after
        self._revisions: deque[RevisionEvents] = deque()

    def append(self, revision: int, events: tuple[Event, ...]) -> None:
        newest = self._revisions[-1].revision if self._revisions else self.covered_after
        assert revision > newest, f"revision {revision} is not above the window's newest {newest}"
        if len(self._revisions) == self.revisions_max:
            self.covered_after = self._revisions.popleft().revision
        self._revisions.append(RevisionEvents(revision, events))

    def reset(self, covered_after: int) -> None:
        """Drop every revision; the window then covers revisions above `covered_after` only."""
        self._revisions.clear()
        self.covered_after = covered_after

    def covers(self, start_revision: int) -> bool:
        return start_revision > self.covered_after

    def since(self, start_revision: int) -> Iterator[RevisionEvents]:
        """Yield the revisions at or above `start_revision`, oldest first; requires `covers`."""
        assert self.covers(start_revision), f"revision {start_revision} is older than the window"
        revisions = self._revisions
        if not revisions or revisions[-1].revision < start_revision:
            return
        # Revisions have no holes inside a busy window, so an offset guess is usually exact.
        position = max(0, len(revisions) - 1 - (revisions[-1].revision - start_revision))
        while position > 0 and revisions[position - 1].revision >= start_revision:
            position -= 1
        while revisions[position].revision < start_revision:
            position += 1
        yield from itertools.islice(revisions, position, None)

    def __len__(self) -> int:
        return len(self._revisions)

    @property
    def oldest_revision(self) -> int:
        return self._revisions[0].revision if self._revisions else 0
