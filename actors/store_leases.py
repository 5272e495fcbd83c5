"""Read leases that a leader grants to shard stores, so that they serve linearizable reads alone.

Without a lease, a store's linearizable read requests a ReadIndex from the
leader: one more round trip, across data centers when the leader is
elsewhere. With a lease, the store serves the read from its own state.
Writes pay for it: while a store holds a lease, the leader sends it every
new log index and waits for its reply before a write's result leaves the
leader. The idea comes from "Paxos Quorum Leases" (Moraru, Andersen and
Kaminsky, SoCC 2014). Here every store holds a lease on every key, so every
write waits for every holder: the simple variant that the paper improves on
by leasing each key to a quorum only.

The rules, where C is the leader's commit index:

- The leader sends each holder its last log index as soon as it appends an
  entry, so the reply usually arrives while the entry replicates. It keeps,
  per holder, the highest index the store has confirmed (`acked`). The
  *exposed index* is E = min(C, acked of every holder whose lease has not
  ended). A write's result is returned only once E reaches its index, and a
  ReadIndex returns min(C, E). So everything that a completed operation has
  seen is at or below every holder's `acked`.
- A store that holds a lease serves a linearizable read that begins at
  time t at a point X with acked(t) <= X <= E, when the last E the leader
  sent it is at least its own acked. That is so unless a write is in flight,
  and then the read takes the ReadIndex path. The store reads at the
  revision of log index X. Every read elsewhere is also served at or below
  E, so what it returns never goes missing from a later read.
- The leader sends a new E as soon as it grows, so holders serve reads from
  their lease again right after a write.
- A lease never outlives the leader lease (the Raft core's lease_read_index),
  and no other leader can commit before that ends. So a new leader, which
  has no record of the old holders, cannot expose an entry that an old
  holder lacks. An index sent
  to a holder may never commit, when the leader loses its term. The holder
  then reads through ReadIndex until a new leader grants it a lease.
- The leader counts a lease from when it grants it, the store from when it
  sent the request, so the store's lease ends first. Both leave room for
  clock drift.

A holder that stops responding delays writes until its lease ends, at
most one leader lease (the election timeout less the drift margin). Neither
a grant nor a renewal extends a lease whose store has confirmed no update
for an election timeout while one waits (`stall_s`), so a store that still
requests renewals but no longer confirms updates delays writes by at
most an election timeout and a leader lease. That store then gets no new
lease for a while, which doubles with each stall in a row up to
`STALL_BACKOFF_MAX_S`, so writes are not held again at once. An update left
unconfirmed when a lease ends counts against the store's next lease, since
a lease is shorter than an election timeout.

Writes in flight to other keys. With each new log index the leader also
sends the key ranges that the entry may write (`write_ranges`), when it
proposed that entry in its current term; for any other entry the store
has no ranges and assumes every key. A read that finds a write in flight
is still served from the lease, at the exposed index X it was sent, when
no entry in the window (X, acked] may write a key it reads
(`window_spares`). Any write to those keys that completed before the read
began is at or below the leader's exposed index, so at or below acked; it
is not in the window, so it is at or below X. And no read anywhere has seen
those keys at a later state than X's, because every such state lies in the
window too. So the values read are linearizable, key by key, as a
linearizability checker partitions a history. The read's revision is X's,
though, and can be below the revision of a write to other keys that has
completed. A client that needs its own writes covered sends
`min_revision`, which a point below it never satisfies.

This module contains the leader's table and is free of Ray, so it is tested
alone. The replica actor sends the calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rayconf.store.records import AuthChange, Command, Compact, DeleteRange, Put

# The key ranges one log entry may write, each (key, range_end) as in a
# RangeRequest: range_end None for the key alone, b"" for every key from
# `key` on. None for an entry that may change anything a read returns.
WriteRanges = tuple[tuple[bytes, bytes | None], ...] | None

logger = logging.getLogger(__name__)

# Fraction of a lease taken off for clock-rate differences between leader and store.
LEASE_DRIFT_FRACTION = 0.1
# Maximum wait, after a stalled lease ends, before its store may hold a lease again.
STALL_BACKOFF_MAX_S = 30.0
# Widest window (log entries) that a read checks for writes to its keys; a
# read that finds a wider one takes the ReadIndex path.
WINDOW_ENTRIES_MAX = 1024


@dataclass(slots=True)
class Holder:
    """One store's lease, as the leader records it."""

    following: str
    # When the lease ends on the leader's monotonic clock.
    expires: float
    # Highest log index the store has confirmed receiving.
    acked: int
    # Highest exposed index the store has confirmed receiving.
    acked_exposed: int = 0
    # Highest log index and exposed index sent to the store, confirmed or not.
    sent_index: int = 0
    sent_exposed: int = 0
    # When the oldest unconfirmed update was sent, reset by each confirmation.
    # None while the store has confirmed every update sent.
    unconfirmed_since: float | None = None
    # Whether this lease has stalled, so that it is extended no more.
    stalled: bool = False

    def unconfirmed_for(self, now: float) -> float:
        """Return how long an update has waited for the store's confirmation; 0.0 when none waits."""
        # One read of the field, which the event loop may change meanwhile.
        since = self.unconfirmed_since
        return 0.0 if since is None else now - since


class StoreLeases:
    """The leader's table of store read leases.

    The replica's event loop makes every change but one: the index channel's
    thread may extend a lease that has not ended (`renew`), or mark it
    stalled and set its store's backoff. So granting, renewing and dropping
    ended leases hold one lock, and the thread adds and removes no holder.
    """

    def __init__(self, stall_s: float = 1.0) -> None:
        if not stall_s > 0:
            raise ValueError(f"stall_s is {stall_s!r}; give a positive number of seconds")
        self.holders: dict[str, Holder] = {}
        self.granted = 0
        # How long a holder may leave an update unconfirmed and still have its lease extended.
        self.stall_s = stall_s
        # Stores whose last lease stalled: (no new lease before, the wait that set it).
        self._backoff: dict[str, tuple[float, float]] = {}
        # Stores whose lease ended with an update unconfirmed: (unconfirmed since,
        # lease end). A new lease soon after inherits the first, so that a store
        # whose leases are shorter than `stall_s` cannot start each one afresh.
        self._carried: dict[str, tuple[float, float]] = {}
        # Grants rejected because of a stall or its backoff.
        self.stall_rejections = 0
        self._lock = threading.Lock()

    def grant(self, store: str, following: str, now: float, duration_s: float, index: int) -> Holder | None:
        """Record a lease for `store` until `now + duration_s`; return its record, or None for a stalled store.

        A new holder starts at `index`, which the grant sends the store. A
        renewal keeps `acked` as it is: only the store's replies to updates
        raise it, because the store may still be serving reads under its
        current lease with the indexes it had before this grant arrives. A
        running lease whose store has left an update unconfirmed for
        `stall_s` is not extended, so that it ends and writes stop waiting
        for that store. That store then gets no new lease for a wait that
        doubles with each stall in a row, up to `STALL_BACKOFF_MAX_S`; a
        lease that ends with every update confirmed resets it.
        """
        with self._lock:
            granted, warning = self._grant(store, following, now, duration_s, index)
            if granted is None:
                self.stall_rejections += 1
            else:
                self.granted += 1
        if warning:
            logger.warning("%s", warning)
        return granted

    def _grant(self, store: str, following: str, now: float, duration_s: float,
               index: int) -> tuple[Holder | None, str | None]:
        """Do the work of `grant` under the lock; return the holder, or None, and a warning to log."""
        holder = self.holders.get(store)
        if holder is not None and holder.expires > now:
            stalled, warning = self._check_stall(store, holder, now)
            if stalled:
                return None, warning
            holder.following = following
            holder.expires = max(holder.expires, now + duration_s)
            return holder, None
        if holder is not None:
            self._carry(store, self.holders.pop(store))
        if now < self._backoff.get(store, (0.0, 0.0))[0]:
            return None, None
        holder = Holder(following, now, index, sent_index=index)
        carried = self._carried.pop(store, None)
        if carried is not None and now - carried[1] <= self.stall_s:
            # An update has waited since before this lease. If that is a
            # stall, the lease never starts and the backoff counts from now.
            holder.unconfirmed_since = carried[0]
            stalled, warning = self._check_stall(store, holder, now)
            if stalled:
                return None, warning
        holder.expires = now + duration_s
        self.holders[store] = holder
        return holder, None

    def renew(self, store: str, following: str, now: float, duration_s: float) -> int | None:
        """Extend the lease of `store` to `now + duration_s` if it has not ended; return its `acked`, or None.

        Only a lease for the same followed replica is extended. Anything else
        needs a grant, which only the event loop makes. The store must take
        the returned `acked` as received: it may have missed the grant that
        set it, and writes up to it may have completed without waiting for
        the store. A stalled holder is not renewed, as in `grant`. Safe to
        call from another thread: the holder stays in the table until its
        new end.
        """
        warning = None
        acked = None
        with self._lock:
            holder = self.holders.get(store)
            if holder is not None and holder.expires > now and holder.following == following:
                stalled, warning = self._check_stall(store, holder, now)
                if not stalled:
                    holder.expires = max(holder.expires, now + duration_s)
                    self.granted += 1
                    acked = holder.acked
        if warning:
            logger.warning("%s", warning)
        return acked

    def _check_stall(self, store: str, holder: Holder, now: float) -> tuple[bool, str | None]:
        """Return whether the lease of `holder` has stalled, and at its first stall set the backoff and a warning."""
        if holder.stalled:
            return True, None
        waited_s = holder.unconfirmed_for(now)
        if waited_s <= self.stall_s:
            return False, None
        holder.stalled = True
        not_before, previous_s = self._backoff.get(store, (0.0, 0.0))
        if now - not_before > STALL_BACKOFF_MAX_S:
            # The last stall is long past: start the doubling over.
            previous_s = 0.0
        wait_s = min(max(self.stall_s, 2 * previous_s), STALL_BACKOFF_MAX_S)
        self._backoff[store] = (holder.expires + wait_s, wait_s)
        return True, (f"store {store} confirmed no lease update for {waited_s:.1f} s while one waited: its lease "
                      f"is not extended (it ends in {holder.expires - now:.1f} s), and the store gets no new lease "
                      f"for {wait_s:.1f} s after that")

    def _carry(self, store: str, ended: Holder) -> None:
        """Record how the lease of `ended` finished: clean, which resets the backoff, or with an update waiting."""
        if ended.stalled:
            return
        since = ended.unconfirmed_since
        if since is None:
            # Every update of a whole lease was confirmed: the store works.
            self._backoff.pop(store, None)
        else:
            self._carried[store] = (since, ended.expires)

    def reset_backoff(self) -> None:
        """Forget every stall and carried update; the replica calls it when the leader changes."""
        with self._lock:
            self._backoff.clear()
            self._carried.clear()

    def exposed(self, commit: int, now: float) -> int:
        """Return the exposed index: `commit`, or less while an active holder has not confirmed it."""
        self.drop_expired(now)
        return min([commit] + [holder.acked for holder in self.holders.values()])

    def drop_expired(self, now: float) -> None:
        with self._lock:
            for store in [store for store, holder in self.holders.items() if holder.expires <= now]:
                self._carry(store, self.holders.pop(store))

    def drop(self, store: str) -> None:
        """Forget the lease of `store`, which no longer exists; writes stop waiting for it."""
        with self._lock:
            self.holders.pop(store, None)
            self._backoff.pop(store, None)
            self._carried.pop(store, None)

    def acknowledge(self, store: str, index: int, exposed: int, now: float) -> None:
        """Record that `store` accepted an update carrying `index` and `exposed`."""
        holder = self.holders.get(store)
        if holder is not None:
            holder.acked = max(holder.acked, index)
            holder.acked_exposed = max(holder.acked_exposed, exposed)
            caught_up = holder.acked >= holder.sent_index and holder.acked_exposed >= holder.sent_exposed
            holder.unconfirmed_since = None if caught_up else now
        elif store in self._carried:
            # A late reply to an ended lease: the update it carried is confirmed.
            with self._lock:
                self._carried.pop(store, None)

    def take_unsent(self, index: int, exposed: int, now: float) -> list[str]:
        """Return the holders not yet sent `index` or `exposed`, and mark both as sent to them."""
        stores = [store for store, holder in self.holders.items()
                  if holder.sent_index < index or holder.sent_exposed < exposed]
        for store in stores:
            holder = self.holders[store]
            holder.sent_index = max(holder.sent_index, index)
            holder.sent_exposed = max(holder.sent_exposed, exposed)
            if holder.unconfirmed_since is None:
                holder.unconfirmed_since = now
        return stores

    def resend(self, store: str) -> None:
        """Forget what was sent to `store` beyond what it confirmed, so the next push sends it again."""
        holder = self.holders.get(store)
        if holder is not None:
            holder.sent_index = holder.acked
            holder.sent_exposed = holder.acked_exposed

    def describe(self, now: float) -> dict[str, dict[str, int]]:
        return {store: {"acked": holder.acked, "expires_in_ms": int((holder.expires - now) * 1000)}
                for store, holder in self.holders.items() if holder.expires > now}


class ExposedIndex:
    """The exposed index a leader hands out: capped at its applied index once that is safe, never falling in a term.

    The cap lets the index channel's thread hold every entry up to the read
    point it serves. It is safe once the applied index has reached the
    leader's first entry of its term: every entry of an earlier term is then
    applied, and so is every write of this term whose result has left. Before
    that, a new leader's applied index may lag a write the old leader
    completed, so the cap waits.
    """

    def __init__(self) -> None:
        self.term = 0
        self.handed_out = 0

    def next(self, term: int, exposed: int, applied: int, applied_in_term: bool) -> int:
        """Return the index to hand out now in `term`, given the table's `exposed` and the applied index."""
        if term != self.term:
            self.term, self.handed_out = term, 0
        if applied_in_term:
            exposed = min(exposed, applied)
        self.handed_out = max(self.handed_out, exposed)
        return self.handed_out


def lease_read_target(now: float, expires: float, acked: int, exposed: int) -> int | None:
    """Return the lowest log index a store may serve a lease read at, or None when it must use ReadIndex.

    The store must hold a lease at the read's start (`now` before
    `expires`, on the store's clock). And the exposed index it was sent
    must have reached every index it received (`acked`). Otherwise a write
    is in flight, and a read at the exposed index could miss it.
    """
    if now >= expires or exposed < acked:
        return None
    return acked


def lease_duration_s(remaining_ticks: int, tick_s: float) -> float:
    """Return the lease to grant when the leader lease has `remaining_ticks` whole ticks left.

    The leader's tick count may trail real time by up to one tick, so one
    tick is taken off, and then the drift fraction.
    """
    return max(0.0, (remaining_ticks - 1) * tick_s * (1 - LEASE_DRIFT_FRACTION))


def write_ranges(command: Command) -> WriteRanges:
    """Return the key ranges `command` may write, whichever branch of its txn runs.

    Compactions and auth changes count as writing everything: one changes
    which revisions a read may ask for, the other who may read what.
    """
    body = command.body
    if isinstance(body, (Compact, AuthChange)):
        return None
    ranges: list[tuple[bytes, bytes | None]] = []
    for operation in (*body.success, *body.failure):
        if isinstance(operation, Put):
            ranges.append((operation.key, None))
        elif isinstance(operation, DeleteRange):
            ranges.append((operation.key, operation.range_end))
    return tuple(ranges)


def _bounds(key: bytes, range_end: bytes | None) -> tuple[bytes, bytes | None]:
    """Return the half-open byte interval [start, stop) of a range; stop None is unbounded."""
    if range_end is None:
        return key, key + b"\x00"
    if range_end == b"":
        return key, None
    return key, range_end


def ranges_overlap(first: tuple[bytes, bytes | None], second: tuple[bytes, bytes | None]) -> bool:
    first_start, first_stop = _bounds(*first)
    second_start, second_stop = _bounds(*second)
    if first_stop is not None and first_stop <= first_start:
        return False
    if second_stop is not None and second_stop <= second_start:
        return False
    return ((first_stop is None or second_start < first_stop)
            and (second_stop is None or first_start < second_stop))


def window_spares(writes: Mapping[int, WriteRanges], exposed: int, acked: int,
                  reads: Iterable[tuple[bytes, bytes | None]]) -> bool:
    """Return whether no entry in the window (exposed, acked] may write a key in `reads`.

    `writes` maps indexes to the write ranges the leader sent. An index
    missing from it, or mapped to None, may write anything.
    """
    if acked - exposed > WINDOW_ENTRIES_MAX:
        return False
    reads = list(reads)
    for index in range(exposed + 1, acked + 1):
        ranges = writes.get(index)
        if ranges is None:
            return False
        if any(ranges_overlap(written, read) for written in ranges for read in reads):
            return False
    return True


def window_writes(writes: Mapping[int, WriteRanges], after: int,
                  last: int) -> Sequence[tuple[int, WriteRanges]]:
    """Return the known write ranges of the entries after `after` up to `last`, in index order.

    Only the last `WINDOW_ENTRIES_MAX` entries count, as `window_spares` checks no more.
    """
    first = max(after + 1, last + 1 - WINDOW_ENTRIES_MAX)
    return [(index, writes[index]) for index in range(first, last + 1) if index in writes]
