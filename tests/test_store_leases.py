"""The leader's table of store read leases, without Ray (see actors/store_leases.py)."""

from __future__ import annotations

import pytest

from rayconf.actors import store_leases
from rayconf.actors.store_leases import (
    LEASE_DRIFT_FRACTION,
    ExposedIndex,
    StoreLeases,
    lease_duration_s,
    lease_read_target,
    ranges_overlap,
    window_spares,
    window_writes,
    write_ranges,
)
from rayconf.store.records import AuthChange, Command, Compact, DeleteRange, Put, RangeRequest, Txn


def test_exposed_index_is_commit_without_holders() -> None:
    assert StoreLeases().exposed(commit=42, now=0.0) == 42


def test_exposed_index_waits_for_every_active_holder() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    leases.grant("s2", "m2", now=0.0, duration_s=2.0, index=10)
    assert leases.exposed(commit=12, now=0.5) == 10
    leases.acknowledge("s1", index=12, exposed=10, now=0.5)
    assert leases.exposed(commit=12, now=0.5) == 10
    leases.acknowledge("s2", index=11, exposed=10, now=0.5)
    assert leases.exposed(commit=12, now=0.5) == 11
    # s2 lags, until its lease ends.
    assert leases.exposed(commit=12, now=1.5) == 11
    assert leases.exposed(commit=12, now=2.0) == 12
    assert leases.holders == {}


def test_exposed_index_never_passes_commit() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    # The store confirmed an appended entry that has not committed yet.
    leases.acknowledge("s1", index=15, exposed=10, now=0.5)
    assert leases.exposed(commit=12, now=0.5) == 12


def test_renewal_keeps_what_the_store_confirmed() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    # The store may still serve under its current lease with the indexes it
    # had, so a renewal at a higher index does not count as confirmed.
    holder = leases.grant("s1", "m1", now=0.5, duration_s=1.0, index=20)
    assert holder.acked == 10
    assert holder.expires == 1.5
    assert leases.exposed(commit=20, now=0.6) == 10


def test_grant_after_expiry_starts_at_the_granted_index() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    holder = leases.grant("s1", "m1", now=3.0, duration_s=1.0, index=30)
    assert holder.acked == 30
    assert leases.exposed(commit=31, now=3.1) == 30


def test_updates_sent_once_until_resent() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    # The grant carried index 10 but no exposed index yet.
    assert leases.take_unsent(index=10, exposed=10, now=0.1) == ["s1"]
    assert leases.take_unsent(index=10, exposed=10, now=0.1) == []
    assert leases.take_unsent(index=11, exposed=10, now=0.1) == ["s1"]
    # An update that failed is sent again, from what the store confirmed.
    leases.acknowledge("s1", index=10, exposed=10, now=0.5)
    leases.resend("s1")
    assert leases.holders["s1"].sent_index == 10
    assert leases.take_unsent(index=11, exposed=10, now=0.1) == ["s1"]


def test_renewal_does_not_count_as_sent() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    leases.take_unsent(index=10, exposed=10, now=0.1)
    leases.grant("s1", "m1", now=0.5, duration_s=1.0, index=12)
    # The renewal sent the store 12, but only an update's reply confirms it.
    assert leases.take_unsent(index=12, exposed=10, now=0.1) == ["s1"]


def test_lease_duration_leaves_tick_and_drift() -> None:
    assert lease_duration_s(remaining_ticks=5, tick_s=0.05) == pytest.approx(4 * 0.05 * (1 - LEASE_DRIFT_FRACTION))
    assert lease_duration_s(remaining_ticks=1, tick_s=0.05) == 0.0
    assert lease_duration_s(remaining_ticks=0, tick_s=0.05) == 0.0


def test_lease_read_target_rules() -> None:
    assert lease_read_target(now=1.0, expires=2.0, acked=10, exposed=10) == 10
    # A write is in flight: index 11 was sent, but not yet exposed.
    assert lease_read_target(now=1.0, expires=2.0, acked=11, exposed=10) is None
    # The lease has ended on the store's clock.
    assert lease_read_target(now=2.0, expires=2.0, acked=10, exposed=10) is None


def _command(body: Txn | Compact | AuthChange) -> Command:
    return Command(body=body, request_id="r1")


def test_write_ranges_cover_both_branches_of_a_txn() -> None:
    txn = Txn(success=(Put(b"/a", b"1"), RangeRequest(b"/r"), DeleteRange(b"/d/", b"/d0")),
              failure=(Put(b"/b", b"2"), DeleteRange(b"/e")))
    assert write_ranges(_command(txn)) == ((b"/a", None), (b"/d/", b"/d0"), (b"/b", None), (b"/e", None))
    assert write_ranges(_command(Txn(success=(RangeRequest(b"/r"),)))) == (), "a read-only txn writes nothing"


def test_compaction_and_auth_changes_may_write_everything() -> None:
    assert write_ranges(_command(Compact(revision=5))) is None
    assert write_ranges(_command(AuthChange(action="enable"))) is None


@pytest.mark.parametrize("first, second, overlap", [
    ((b"/a", None), (b"/a", None), True),
    ((b"/a", None), (b"/b", None), False),
    ((b"/a", None), (b"/a\x00", None), False),
    ((b"/app/", b"/app0"), (b"/app/x", None), True),
    ((b"/app/", b"/app0"), (b"/app0", None), False),
    ((b"/app/", b"/app0"), (b"/ap", b"/app/"), False),
    ((b"/app/", b"/app0"), (b"/ap", b"/app/\x00"), True),
    ((b"/m", b""), (b"/z", None), True),
    ((b"/m", b""), (b"/a", b"/m"), False),
    ((b"", b""), (b"/anything", None), True),
    ((b"/z", b"/a"), (b"/m", None), False),
])
def test_ranges_overlap(first: tuple[bytes, bytes | None], second: tuple[bytes, bytes | None],
                        overlap: bool) -> None:
    assert ranges_overlap(first, second) is overlap
    assert ranges_overlap(second, first) is overlap


def test_window_spares_unwritten_keys() -> None:
    writes = {11: ((b"/big/1", None),), 12: ((b"/big/2", None),)}
    assert window_spares(writes, exposed=10, acked=12, reads=[(b"/small", None)])
    assert window_spares(writes, exposed=10, acked=10, reads=[(b"/big/1", None)]), "an empty window spares all"
    assert not window_spares(writes, exposed=10, acked=12, reads=[(b"/big/2", None)])
    assert not window_spares(writes, exposed=10, acked=12, reads=[(b"/small", None), (b"/big/", b"/big0")])
    assert not window_spares(writes, exposed=10, acked=13, reads=[(b"/small", None)]), "13 is unknown"
    assert not window_spares({**writes, 13: None}, exposed=10, acked=13, reads=[(b"/small", None)])


def test_window_spares_nothing_beyond_its_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_leases, "WINDOW_ENTRIES_MAX", 2)
    writes = {index: ((b"/other", None),) for index in range(1, 10)}
    assert window_spares(writes, exposed=5, acked=7, reads=[(b"/small", None)])
    assert not window_spares(writes, exposed=5, acked=8, reads=[(b"/small", None)])
    assert window_writes(writes, after=2, last=9) == [(8, ((b"/other", None),)), (9, ((b"/other", None),))]


def test_window_writes_lists_known_entries_in_order() -> None:
    writes = {4: None, 6: ((b"/a", None),), 9: ()}
    assert window_writes(writes, after=3, last=8) == [(4, None), (6, ((b"/a", None),))]
    assert window_writes(writes, after=8, last=8) == []


def test_renewal_only_extends_running_lease() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    assert leases.renew("s1", "m1", now=0.5, duration_s=1.0) == 10, "the store learns what the leader counts"
    assert leases.holders["s1"].expires == 1.5
    assert leases.renew("s1", "m2", now=0.6, duration_s=1.0) is None, "another followed replica needs a grant"
    assert leases.renew("s2", "m1", now=0.6, duration_s=1.0) is None, "a store without a lease needs a grant"
    assert leases.renew("s1", "m1", now=1.5, duration_s=1.0) is None, "an ended lease needs a grant"
    assert leases.holders["s1"].expires == 1.5
    assert leases.holders["s1"].acked == 10, "a renewal confirms no index"


def test_renewal_after_lost_grant() -> None:
    # The lease ended, the loop granted a new one at index 20, and its reply
    # never reached the store, which still has 10. Writes up to 20 may have
    # completed without it, so a renewal must raise the store to 20.
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    leases.grant("s1", "m1", now=2.0, duration_s=1.0, index=20)
    assert leases.renew("s1", "m1", now=2.5, duration_s=1.0) == 20


def test_renewal_never_shortens_a_lease() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=2.0, index=10)
    assert leases.renew("s1", "m1", now=0.5, duration_s=0.5) == 10
    assert leases.holders["s1"].expires == 2.0


def test_silent_holder_loses_lease() -> None:
    # The store keeps requesting renewals, but the updates to it time out
    # (each failure resends from what it confirmed). Its lease must end, so
    # that writes stop waiting for it.
    leases = StoreLeases(stall_s=1.0)
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    assert leases.take_unsent(index=11, exposed=10, now=0.2) == ["s1"]
    leases.resend("s1")
    assert leases.take_unsent(index=11, exposed=10, now=0.5) == ["s1"]
    assert leases.renew("s1", "m1", now=0.9, duration_s=1.0) == 10, "unconfirmed for 0.7 s of 1 s"
    assert leases.renew("s1", "m1", now=1.3, duration_s=1.0) is None, "unconfirmed for 1.1 s"
    assert leases.grant("s1", "m1", now=1.3, duration_s=1.0, index=11) is None, "nor does the loop extend it"
    assert leases.stall_rejections == 1, "grants are counted, renewals on the channel's thread not"
    assert leases.exposed(commit=11, now=1.8) == 10
    # The lease ends where the last renewal put it; then the write is exposed.
    assert leases.exposed(commit=11, now=1.9) == 11
    # No new lease for stall_s after the end, so writes are not held again at once.
    assert leases.grant("s1", "m1", now=2.0, duration_s=1.0, index=11) is None
    holder = leases.grant("s1", "m1", now=3.0, duration_s=1.0, index=11)
    assert holder is not None
    assert holder.acked == 11, "a new lease starts at the granted index"


def stall(leases: StoreLeases, start: float, duration_s: float = 5.0) -> float:
    """Grant s1 a lease at `start`, leave an update unconfirmed until it stalls; return the lease's end."""
    holder = leases.grant("s1", "m1", now=start, duration_s=duration_s, index=10)
    assert holder is not None, start
    leases.take_unsent(index=holder.sent_index + 1, exposed=10, now=start)
    assert leases.renew("s1", "m1", now=start + leases.stall_s + 0.1, duration_s=1.0) is None
    return holder.expires


def test_stalls_in_row_double_wait() -> None:
    leases = StoreLeases(stall_s=1.0)
    start = 0.0
    for wait_s in (1.0, 2.0, 4.0):
        end = stall(leases, start=start)
        assert leases.grant("s1", "m1", now=end + wait_s - 0.1, duration_s=5.0, index=11) is None, wait_s
        start = end + wait_s
    assert leases.stall_rejections == 3


def test_late_reply_keeps_the_backoff() -> None:
    leases = StoreLeases(stall_s=1.0)
    end = stall(leases, start=0.0)
    # A reply to the stalled lease does not prove the store works again.
    leases.acknowledge("s1", index=11, exposed=10, now=end - 0.5)
    assert leases.grant("s1", "m1", now=end + 0.5, duration_s=1.0, index=11) is None


def test_working_lease_resets_the_backoff() -> None:
    leases = StoreLeases(stall_s=1.0)
    end = stall(leases, start=0.0)
    assert leases.grant("s1", "m1", now=end + 1.0, duration_s=1.0, index=11) is not None
    leases.take_unsent(index=12, exposed=11, now=end + 1.1)
    leases.acknowledge("s1", index=12, exposed=11, now=end + 1.2)
    # The next stall waits stall_s again, not twice that.
    second_end = stall(leases, start=end + 3.0)
    assert leases.grant("s1", "m1", now=second_end + 0.9, duration_s=1.0, index=12) is None
    assert leases.grant("s1", "m1", now=second_end + 1.0, duration_s=1.0, index=12) is not None


def test_backoff_wait_capped() -> None:
    leases = StoreLeases(stall_s=10.0)
    start = 0.0
    for wait_s in (10.0, 20.0, store_leases.STALL_BACKOFF_MAX_S, store_leases.STALL_BACKOFF_MAX_S):
        end = stall(leases, start=start, duration_s=20.0)
        assert leases.grant("s1", "m1", now=end + wait_s - 0.1, duration_s=1.0, index=11) is None, wait_s
        start = end + wait_s


def test_backoff_streak_forgotten_after_quiet() -> None:
    leases = StoreLeases(stall_s=1.0)
    end = stall(leases, start=0.0)
    # Long after the wait ended, a new stall starts the doubling over.
    start = end + 1.0 + store_leases.STALL_BACKOFF_MAX_S + 1.0
    second_end = stall(leases, start=start)
    assert leases.grant("s1", "m1", now=second_end + 1.0, duration_s=1.0, index=11) is not None


def test_reset_and_drop_forget_backoff() -> None:
    leases = StoreLeases(stall_s=1.0)
    end = stall(leases, start=0.0)
    leases.reset_backoff()
    assert leases.grant("s1", "m1", now=end, duration_s=1.0, index=11) is not None
    leases.holders.clear()
    end = stall(leases, start=end + 2.0)
    leases.drop("s1")
    assert leases.grant("s1", "m1", now=end, duration_s=1.0, index=11) is not None


def test_short_leases_inherit_unconfirmed_update() -> None:
    # Leases shorter than stall_s, as with the defaults (about 0.36 s against
    # 0.5 s): a store that never confirms must not start each one afresh.
    leases = StoreLeases(stall_s=0.5)
    leases.grant("s1", "m1", now=0.0, duration_s=0.36, index=10)
    leases.take_unsent(index=11, exposed=10, now=0.1)
    assert leases.exposed(commit=11, now=0.4) == 11, "the lease ended at 0.36"
    assert leases.grant("s1", "m1", now=0.4, duration_s=0.36, index=11) is not None
    assert leases.renew("s1", "m1", now=0.55, duration_s=0.3) == 11, "unconfirmed for 0.45 s"
    assert leases.renew("s1", "m1", now=0.65, duration_s=0.3) is None, "unconfirmed for 0.55 s"
    # A store that comes back long after its lease ended starts afresh.
    fresh = StoreLeases(stall_s=0.5)
    fresh.grant("s1", "m1", now=0.0, duration_s=0.36, index=10)
    fresh.take_unsent(index=11, exposed=10, now=0.1)
    assert fresh.grant("s1", "m1", now=5.0, duration_s=0.36, index=11) is not None
    assert fresh.renew("s1", "m1", now=5.2, duration_s=0.3) == 11


def test_late_asker_still_backed_off() -> None:
    # It never confirms, and each request reaches the leader after its last
    # lease ended, so no lease is ever renewed.
    leases = StoreLeases(stall_s=0.5)
    assert leases.grant("s1", "m1", now=0.0, duration_s=0.36, index=10) is not None
    leases.take_unsent(index=11, exposed=10, now=0.1)
    assert leases.grant("s1", "m1", now=0.4, duration_s=0.36, index=11) is not None, "waited 0.3 s"
    assert leases.grant("s1", "m1", now=0.8, duration_s=0.36, index=11) is None, "waited 0.7 s"
    assert leases.grant("s1", "m1", now=1.2, duration_s=0.36, index=11) is None, "backing off"
    assert leases.grant("s1", "m1", now=1.3, duration_s=0.36, index=11) is not None


def test_late_reply_clears_carry() -> None:
    leases = StoreLeases(stall_s=0.5)
    leases.grant("s1", "m1", now=0.0, duration_s=0.36, index=10)
    leases.take_unsent(index=11, exposed=10, now=0.3)
    assert leases.exposed(commit=11, now=0.37) == 11, "the lease ended"
    leases.acknowledge("s1", index=11, exposed=10, now=0.4)
    assert leases.grant("s1", "m1", now=0.66, duration_s=0.36, index=11) is not None
    assert leases.renew("s1", "m1", now=0.9, duration_s=0.3) == 11, "nothing waits since 0.3"


def test_one_reply_per_lease_still_doubles() -> None:
    leases = StoreLeases(stall_s=1.0)
    end = stall(leases, start=0.0)
    # The next lease confirms its first update, then stalls: no clean end, so the wait doubles.
    holder = leases.grant("s1", "m1", now=end + 1.0, duration_s=5.0, index=11)
    assert holder is not None
    leases.take_unsent(index=12, exposed=11, now=end + 1.0)
    leases.acknowledge("s1", index=12, exposed=11, now=end + 1.1)
    leases.take_unsent(index=13, exposed=12, now=end + 1.2)
    assert leases.renew("s1", "m1", now=end + 2.3, duration_s=1.0) is None
    second_end = holder.expires
    assert leases.grant("s1", "m1", now=second_end + 1.9, duration_s=1.0, index=13) is None
    assert leases.grant("s1", "m1", now=second_end + 2.0, duration_s=1.0, index=13) is not None


def test_stall_limit_from_table() -> None:
    # The replica sets the limit to an election timeout, whatever the
    # remaining leader lease that a renewal requests.
    leases = StoreLeases(stall_s=2.0)
    leases.grant("s1", "m1", now=0.0, duration_s=5.0, index=10)
    leases.take_unsent(index=11, exposed=10, now=0.1)
    assert leases.renew("s1", "m1", now=1.5, duration_s=0.2) == 10, "unconfirmed for 1.4 s of 2 s"
    assert leases.grant("s1", "m1", now=2.0, duration_s=0.2, index=11) is not None, "unconfirmed for 1.9 s"
    assert leases.renew("s1", "m1", now=2.2, duration_s=0.2) is None, "unconfirmed for 2.1 s"


def test_holder_under_steady_writes_keeps_lease() -> None:
    # Updates leave faster than the replies return, so some update always
    # waits; each reply restarts the clock.
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    for step in range(1, 40):
        now = step * 0.1
        leases.take_unsent(index=10 + step, exposed=10 + step - 1, now=now)
        leases.acknowledge("s1", index=10 + step - 1, exposed=10 + step - 2, now=now)
        assert leases.renew("s1", "m1", now=now, duration_s=1.0) is not None, now
    assert leases.holders["s1"].unconfirmed_since == pytest.approx(3.9)
    leases.acknowledge("s1", index=49, exposed=48, now=4.0)
    assert leases.holders["s1"].unconfirmed_since is None, "every update sent is confirmed"


def test_new_leader_exposed_index_uncapped() -> None:
    # The old leader completed a write at 5. The new leader has commit 6 but
    # has applied only 4, none of its own term: capping at 4 would miss it.
    exposed = ExposedIndex()
    assert exposed.next(term=3, exposed=6, applied=4, applied_in_term=False) == 6
    assert exposed.next(term=3, exposed=6, applied=6, applied_in_term=True) == 6


def test_exposed_index_capped_and_monotonic() -> None:
    exposed = ExposedIndex()
    assert exposed.next(term=2, exposed=10, applied=8, applied_in_term=True) == 8
    assert exposed.next(term=2, exposed=12, applied=11, applied_in_term=True) == 11
    assert exposed.next(term=2, exposed=12, applied=9, applied_in_term=False) == 12
    assert exposed.next(term=2, exposed=13, applied=10, applied_in_term=True) == 12, "not below 12, handed out"
    assert exposed.next(term=3, exposed=9, applied=9, applied_in_term=True) == 9, "a new term starts afresh"


def test_dropped_holder_releases_exposed_index() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=10.0, index=10)
    assert leases.exposed(commit=20, now=1.0) == 10
    leases.drop("s1")
    assert leases.exposed(commit=20, now=1.0) == 20
    leases.drop("s1")
