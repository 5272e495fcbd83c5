"""The leader's table of store read leases, without Ray (see actors/store_leases.py)."""

from __future__ import annotations

import pytest

from rayconf.actors.store_leases import LEASE_DRIFT_FRACTION, StoreLeases, lease_duration_s, lease_read_target


def test_exposed_index_is_commit_without_holders() -> None:
    assert StoreLeases().exposed(commit=42, now=0.0) == 42


def test_exposed_index_waits_for_every_active_holder() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    leases.grant("s2", "m2", now=0.0, duration_s=2.0, index=10)
    assert leases.exposed(commit=12, now=0.5) == 10
    leases.acknowledge("s1", index=12, exposed=10)
    assert leases.exposed(commit=12, now=0.5) == 10
    leases.acknowledge("s2", index=11, exposed=10)
    assert leases.exposed(commit=12, now=0.5) == 11
    # s2 lags, until its lease ends.
    assert leases.exposed(commit=12, now=1.5) == 11
    assert leases.exposed(commit=12, now=2.0) == 12
    assert leases.holders == {}


def test_exposed_index_never_passes_commit() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    # The store confirmed an appended entry that has not committed yet.
    leases.acknowledge("s1", index=15, exposed=10)
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
    assert leases.take_unsent(index=10, exposed=10) == ["s1"]
    assert leases.take_unsent(index=10, exposed=10) == []
    assert leases.take_unsent(index=11, exposed=10) == ["s1"]
    # An update that failed is sent again, from what the store confirmed.
    leases.acknowledge("s1", index=10, exposed=10)
    leases.resend("s1")
    assert leases.holders["s1"].sent_index == 10
    assert leases.take_unsent(index=11, exposed=10) == ["s1"]


def test_renewal_does_not_count_as_sent() -> None:
    leases = StoreLeases()
    leases.grant("s1", "m1", now=0.0, duration_s=1.0, index=10)
    leases.take_unsent(index=10, exposed=10)
    leases.grant("s1", "m1", now=0.5, duration_s=1.0, index=12)
    # The renewal sent the store 12, but only an update's reply confirms it.
    assert leases.take_unsent(index=12, exposed=10) == ["s1"]


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
