"""MVCC engine scenarios: etcd revision rules, txns, compaction, bad input."""

from __future__ import annotations

import pytest

from rayconf.errors import (
    Compacted,
    FutureRevision,
    InvalidKey,
    InvalidRequest,
    RayconfError,
    TooManyOperations,
    Unavailable,
    ValueTooLarge,
)
from rayconf.store.codec import decode_command, encode_command
from rayconf.store.keys import prefix_end
from rayconf.store.limits import MIB, Limits
from rayconf.store.mvcc import MVCC, REVISION_MARKS_MAX
from rayconf.store.records import (
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    EventType,
    Put,
    RangeRequest,
    RangeResponse,
    Txn,
)


def test_revisions_follow_etcd() -> None:
    state = MVCC()
    assert state.revision == 1
    assert state.put(b"/a", b"1").revision == 2
    assert state.put(b"/a", b"2").revision == 3
    kv = state.get(b"/a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 3, 2)
    assert state.delete(b"/a").revision == 4
    assert state.get(b"/a") is None
    state.put(b"/a", b"3")
    kv = state.get(b"/a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)


def test_change_free_txn_keeps_revision() -> None:
    state = MVCC()
    state.put(b"/a", b"1")
    assert state.delete(b"/missing").revision == 2
    response = state.txn(Txn(compares=(Compare(b"/a", CompareTarget.VALUE, CompareOp.EQUAL, b"x"),),
                             success=(Put(b"/a", b"y"),)))
    assert not response.succeeded
    assert response.revision == 2
    assert state.history(b"/a")[-1].event.kv.value == b"1"


def test_txn_shares_one_revision() -> None:
    state = MVCC()
    state.put(b"/cfg/a", b"1")
    response = state.txn(Txn(success=(Put(b"/cfg/b", b"2"), DeleteRange(b"/cfg/a"), Put(b"/cfg/c", b"3"))))
    assert response.revision == 3
    assert [event.kv.mod_revision for event in response.events] == [3, 3, 3]
    assert [event.type for event in response.events] == [EventType.PUT, EventType.DELETE, EventType.PUT]


def test_cas_on_mod_revision() -> None:
    state = MVCC()
    written = state.put(b"/flag", b"off").revision
    guard = Compare(b"/flag", CompareTarget.MOD_REVISION, CompareOp.EQUAL, written)
    first = state.txn(Txn(compares=(guard,), success=(Put(b"/flag", b"on"),),
                          failure=(RangeRequest(b"/flag"),)))
    second = state.txn(Txn(compares=(guard,), success=(Put(b"/flag", b"late"),),
                           failure=(RangeRequest(b"/flag"),)))
    assert first.succeeded
    assert not second.succeeded
    assert second.responses[0].kvs[0].value == b"on"  # type: ignore[union-attr]


def test_create_if_absent_with_version_zero() -> None:
    state = MVCC()
    absent = Compare(b"/lock", CompareTarget.VERSION, CompareOp.EQUAL, 0)
    assert state.txn(Txn(compares=(absent,), success=(Put(b"/lock", b"me"),))).succeeded
    assert not state.txn(Txn(compares=(absent,), success=(Put(b"/lock", b"you"),))).succeeded


def test_value_compare_on_missing_key_false() -> None:
    state = MVCC()
    for op in CompareOp:
        compare = Compare(b"/none", CompareTarget.VALUE, op, b"")
        assert not state.txn(Txn(compares=(compare,), success=(Put(b"/x", b"1"),))).succeeded


def test_retried_request_applies_once() -> None:
    state = MVCC()
    first = state.put(b"/counter", b"1", request_id="client-1:7")
    retry = state.put(b"/counter", b"1", request_id="client-1:7")
    assert retry.duplicate
    assert retry.revision == first.revision
    assert state.revision == first.revision
    kv = state.get(b"/counter")
    assert kv is not None
    assert kv.version == 1


def test_request_id_window_forgets_oldest() -> None:
    state = MVCC(Limits(dedup_request_ids_max=2))
    for number in range(3):
        state.put(b"/k", str(number).encode(), request_id=f"r{number}")
    assert list(state.request_ids) == ["r1", "r2"]
    assert not state.put(b"/k", b"again", request_id="r0").duplicate


def test_range_limit_continuation() -> None:
    state = MVCC()
    for number in range(10):
        state.put(f"/p/{number}".encode(), b"v")
    state.put(b"/q", b"outside")
    seen: list[bytes] = []
    start = b"/p/"
    revision = state.revision
    while True:
        page = state.range(RangeRequest(start, prefix_end(b"/p/"), limit=3, revision=revision))
        assert page.count == 10 - len(seen)
        seen.extend(kv.key for kv in page.kvs)
        if not page.more:
            break
        start = page.next_key
    assert seen == [f"/p/{number}".encode() for number in range(10)]


def test_range_keys_only_and_count_only() -> None:
    state = MVCC()
    state.put(b"/p/a", b"value")
    state.put(b"/p/b", b"value")
    keys_only = state.range(RangeRequest(b"/p/", prefix_end(b"/p/"), keys_only=True))
    assert [kv.value for kv in keys_only.kvs] == [b"", b""]
    count_only = state.range(RangeRequest(b"/p/", prefix_end(b"/p/"), count_only=True))
    assert (count_only.count, count_only.kvs) == (2, ())


def test_read_below_compaction_raises_compacted() -> None:
    state = MVCC()
    for number in range(5):
        state.put(b"/k", str(number).encode())
    state.compact(4)
    with pytest.raises(Compacted) as raised:
        state.get(b"/k", revision=3)
    assert raised.value.compact_revision == 4
    assert raised.value.requested_revision == 3
    kv = state.get(b"/k", revision=4)
    assert kv is not None
    assert kv.value == b"2"
    with pytest.raises(Compacted):
        state.events(4)
    with pytest.raises(Compacted):
        state.compact(3)


def test_read_above_revision_raises_future() -> None:
    state = MVCC()
    state.put(b"/k", b"v")
    with pytest.raises(FutureRevision) as raised:
        state.get(b"/k", revision=3)
    assert raised.value.current_revision == 2
    with pytest.raises(FutureRevision):
        state.compact(9)


def test_compaction_drops_history_and_deleted_keys() -> None:
    state = MVCC()
    state.put(b"/gone", b"1")
    state.delete(b"/gone")
    state.put(b"/kept", b"1")
    state.put(b"/kept", b"2")
    state.compact(state.revision)
    assert state.history(b"/gone") == []
    assert [entry.event.kv.value for entry in state.history(b"/kept")] == [b"2"]
    assert state.statistics()["retained_keys"] == 1


def test_history_records_who_and_why() -> None:
    state = MVCC()
    state.put(b"/db/timeout", b"30", principal="alice", time_ms=1_700_000_000_000, note="raise for batch jobs")
    state.delete(b"/db/timeout", principal="bob", time_ms=1_700_000_100_000, note="use the default")
    history = state.history(b"/db/timeout")
    assert [(h.change.principal, h.change.note) for h in history if h.change] == [
        ("alice", "raise for batch jobs"), ("bob", "use the default")]
    assert history[1].event.type is EventType.DELETE
    assert history[1].event.prev_kv is not None
    assert history[1].event.prev_kv.value == b"30"
    assert state.history(b"/db/timeout", limit=1) == history[1:]


BAD_COMMANDS = [
    pytest.param(Command(Txn(success=(Put(b"", b"v"),))), InvalidKey, id="empty key"),
    pytest.param(Command(Txn(success=(Put(b"/" + b"k" * 2000, b"v"),))), InvalidKey, id="long key"),
    pytest.param(Command(Txn(success=(Put(b"/k", b"v" * (MIB + 1)),))), ValueTooLarge, id="large value"),
    pytest.param(Command(Txn(success=(Put(b"/k", "text"),))), InvalidRequest, id="str value"),  # type: ignore[arg-type]
    pytest.param(Command(Txn(success=tuple(Put(f"/k{i}".encode(), b"") for i in range(9)))),
                 TooManyOperations, id="too many ops"),
    pytest.param(Command(Txn(success=(Put(b"/k", b"1"), Put(b"/k", b"2")))), InvalidRequest, id="duplicate put"),
    pytest.param(Command(Txn(success=(Put(b"/p/k", b"1"), DeleteRange(b"/p/", b"/p0")))), InvalidRequest,
                 id="put inside delete"),
    pytest.param(Command(Txn(success=(DeleteRange(b"/b", b"/a"),))), InvalidRequest, id="reversed range"),
    pytest.param(Command(Txn(compares=(Compare(b"/k", CompareTarget.VERSION, CompareOp.EQUAL, b"1"),))),
                 InvalidRequest, id="bytes version operand"),
    pytest.param(Command(Txn(success=(RangeRequest(b"/k", limit=-1),))), InvalidRequest, id="negative limit"),
    pytest.param(Command(Txn(success=(Put(b"/k", b"v"),)), note="n" * 5000), InvalidRequest, id="long note"),
    pytest.param(Command(Compact(0)), InvalidRequest, id="compact zero"),
    pytest.param(Command(Txn(success=(RangeRequest(b"/k", revision=99),), failure=())), FutureRevision,
                 id="txn range in future"),
    pytest.param(Command("put /k"), InvalidRequest, id="not a txn"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("command", "error"), BAD_COMMANDS)
def test_bad_command_changes_nothing(command: Command, error: type[RayconfError]) -> None:
    state = MVCC(Limits(max_value_bytes=MIB, max_txn_ops=8))
    state.put(b"/k", b"stored")
    state.put(b"/p/k", b"stored")
    before = (state.hash_kv(), state.revision, state.statistics())
    result = state.apply(state.applied_index + 1, [command])[0]
    assert isinstance(result, error)
    assert str(result)
    assert (state.hash_kv(), state.revision) == before[:2]
    assert state.get(b"/k") is not None
    assert state.get(b"/k").value == b"stored"  # type: ignore[union-attr]


def test_value_too_large_names_size_and_fix() -> None:
    state = MVCC(Limits(max_value_bytes=10 * MIB))
    with pytest.raises(ValueTooLarge) as raised:
        state.put(b"/app/x", b"x" * int(12.4 * MIB))
    message = str(raised.value)
    assert "12.4 MiB" in message
    assert "10.0 MiB" in message
    assert "max_value_bytes" in message
    assert raised.value.size_bytes == int(12.4 * MIB)


def test_bad_command_in_batch_spares_others() -> None:
    state = MVCC()
    results = state.apply(1, [Command(Txn(success=(Put(b"/a", b"1"),))),
                              Command(Txn(success=(Put(b"", b"bad"),))),
                              Command(Txn(success=(Put(b"/b", b"2"),)))])
    assert isinstance(results[1], InvalidKey)
    assert state.get(b"/a") is not None
    assert state.get(b"/b") is not None


def test_apply_rejects_old_index() -> None:
    state = MVCC()
    state.apply(5, [])
    with pytest.raises(InvalidRequest):
        state.apply(5, [])


def test_codec_round_trip() -> None:
    command = Command(
        Txn(
            compares=(Compare(b"/k", CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"\x00\xff"),
                      Compare(b"/k", CompareTarget.MOD_REVISION, CompareOp.LESS, 7)),
            success=(Put(b"/k", b"v", True), DeleteRange(b"/p/", b"/p0", True)),
            failure=(RangeRequest(b"/a", b"", 5, 3, True, False),),
        ),
        request_id="c:1",
        principal="svc-deploy",
        time_ms=123,
        note="roll out",
    )
    assert decode_command(encode_command(command)) == command
    compact = Command(Compact(9))
    assert decode_command(encode_command(compact)) == compact


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x96\x01\x91\xa3txn\xa0\xa0\x00\xa0",
     b"\x96\x02\x92\xa7compact\x01\xa0\xa0\x00\xa0", b"\x96\x01\x92\xa4drop\x01\xa0\xa0\x00\xa0"],
)
def test_codec_rejects_malformed(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_command(data)


BAD_HEADERS = [
    pytest.param({"time_ms": 2**63}, id="time_ms above int64"),
    pytest.param({"time_ms": True}, id="time_ms bool"),
    pytest.param({"time_ms": -1}, id="time_ms negative"),
    pytest.param({"note": "\udc80"}, id="lone surrogate note"),
    pytest.param({"principal": "\ud800"}, id="lone surrogate principal"),
    pytest.param({"request_id": 7}, id="int request id"),
]


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_bad_header_rejected_in_its_slot(header: dict) -> None:
    state = MVCC(Limits(tail_versions_max=2))
    state.put(b"/k", b"1")
    batch = [Command(Txn(success=(Put(b"/k", b"2"),)), **header), Command(Txn(success=(Put(b"/other", b"x"),)))]
    results = state.apply(state.applied_index + 1, batch)
    assert isinstance(results[0], InvalidRequest)
    assert not isinstance(results[1], RayconfError)
    kv = state.get(b"/k")
    assert kv is not None
    assert kv.value == b"1"
    for number in range(5):
        state.put(b"/k", str(number).encode())
    assert state.statistics()["segments"] >= 1


@pytest.mark.parametrize(
    "compare",
    [
        Compare(b"/k", "version", CompareOp.EQUAL, 2),  # type: ignore[arg-type]
        Compare(b"/k", CompareTarget.VERSION, "=", 2),  # type: ignore[arg-type]
        Compare(b"/k", CompareTarget.VERSION, None, 2),  # type: ignore[arg-type]
        Compare(b"/k", CompareTarget.VERSION, CompareOp.EQUAL, True),
    ],
)
def test_bad_compare_rejected(compare: Compare) -> None:
    state = MVCC()
    state.put(b"/k", b"1")
    result = state.apply(state.applied_index + 1, [Command(Txn(compares=(compare,), success=(Put(b"/k", b"9"),)))])
    assert isinstance(result[0], InvalidRequest)
    kv = state.get(b"/k")
    assert kv is not None
    assert kv.value == b"1"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.ls(b"/a/", revision="x"),
        lambda s: s.ls(b"/a/", revision=-1),
        lambda s: s.ls(b"/a/", revision=1.5),
        lambda s: s.hash_kv("x"),
        lambda s: s.hash_kv(1.5),
        lambda s: s.events("x"),
        lambda s: s.events(None),
        lambda s: s.events(1.5),
        lambda s: s.events(2, "/a"),
        lambda s: s.events(2, b"/a", "/b"),
        lambda s: s.history(b"/a", limit=-1),
        lambda s: s.history(b"/a", limit="x"),
        lambda s: s.range(b"/a"),
        lambda s: s.apply("x", []),
        lambda s: s.apply(9, None),
        lambda s: s.apply(5.5, []),
        lambda s: MVCC(limits="x"),  # type: ignore[arg-type]
    ],
)
def test_bad_read_argument_raises_typed_error(call) -> None:  # type: ignore[no-untyped-def]
    state = MVCC()
    state.put(b"/a/x", b"1")
    before = (state.hash_kv(), state.statistics())
    with pytest.raises(InvalidRequest):
        call(state)
    assert (state.hash_kv(), state.statistics()) == before


def test_duplicate_compact_reports_first_revision() -> None:
    state = MVCC()
    for number in range(5):
        state.put(b"/k", str(number).encode())
    state.compact(3, request_id="compact-1")
    state.put(b"/k", b"later")
    again = state.compact(3, request_id="compact-1")
    assert again.duplicate
    assert again.compact_revision == 3


def test_txn_read_reports_revision_of_own_writes() -> None:
    state = MVCC()
    state.put(b"/a", b"1")
    response = state.txn(Txn(success=(Put(b"/a", b"2"), RangeRequest(b"/a"))))
    read = response.responses[1]
    assert isinstance(read, RangeResponse)
    assert read.revision == response.revision == read.kvs[0].mod_revision


# --- Read points: the revision a log index left (linearizable reads serve at one). ---


def test_revision_at_index_follows_applied_batches() -> None:
    state = MVCC()
    state.put(b"/a", b"1")  # index 1, revision 2
    state.apply(2, [])  # an entry without a command, such as a leader's empty entry
    state.put(b"/a", b"2")  # index 3, revision 3
    assert [state.revision_at_index(index) for index in range(5)] == [1, 2, 2, 3, 3]


def test_range_at_index_reads_past_revision() -> None:
    state = MVCC()
    state.put(b"/a", b"old")  # index 1
    state.put(b"/a", b"new")  # index 2
    old = state.range_at_index(RangeRequest(b"/a"), 1)
    assert old.kvs[0].value == b"old"
    assert old.revision == 2
    assert state.range_at_index(RangeRequest(b"/a"), 2).kvs[0].value == b"new"
    # A request that names a revision keeps it.
    assert state.range_at_index(RangeRequest(b"/a", revision=3), 1).kvs[0].value == b"new"


def test_range_at_index_beyond_marks_unavailable() -> None:
    state = MVCC()
    for index in range(1, REVISION_MARKS_MAX + 10):
        state.put(b"/a", str(index).encode())
    assert state.revision_at_index(1) is None
    with pytest.raises(Unavailable, match="retry the read"):
        state.range_at_index(RangeRequest(b"/a"), 1)
    assert state.range_at_index(RangeRequest(b"/a"), state.applied_index - 1).kvs[0].value == \
        str(state.applied_index - 1).encode()


def test_range_at_index_below_compaction_is_unavailable() -> None:
    state = MVCC()
    state.put(b"/a", b"1")
    state.put(b"/a", b"2")
    state.compact(state.revision)
    with pytest.raises(Unavailable):
        state.range_at_index(RangeRequest(b"/a"), 1)
