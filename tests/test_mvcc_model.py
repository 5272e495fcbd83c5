"""The MVCC engine and a plain model, driven side by side by hypothesis.

The model keeps every version ever written in one list and serves each read
by replaying it, which is slow but obviously right. The engine runs with a
tiny tail and segment limit so that flushes and segment merges happen all the
time. Every operation's result, or its error type, must match.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rayconf.errors import Compacted, FutureRevision, InvalidRequest, RayconfError
from rayconf.store.keys import RANGE_END_OPEN, in_range, iter_children, prefix_end
from rayconf.store.limits import Limits
from rayconf.store.mvcc import MVCC
from rayconf.store.records import (
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    DeleteRangeResponse,
    Event,
    EventType,
    KeyValue,
    Put,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Txn,
)
from sortedcontainers import SortedList

KEYS = [b"/a", b"/a/b", b"/a/c", b"/a/c/d", b"/b", b"/b/x/y", b"/a\xff", b"\xff", b"\xff\xff"]
PREFIXES = [b"/", b"/a", b"/a/", b"/b/", b"\xff", b"/a\xff"]
VALUES = [b"", b"v1", b"v2", b"\x00\xff", b"long" * 20]

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)


@dataclass
class Version:
    key: bytes
    revision: int
    deleted: bool
    value: bytes = b""
    create_revision: int = 0
    version: int = 0

    def kv(self) -> KeyValue | None:
        if self.deleted:
            return None
        return KeyValue(self.key, self.value, self.create_revision, self.revision, self.version)


@dataclass
class Model:
    """Every version ever written, and nothing clever."""

    revision: int = 1
    compact_revision: int = 0
    versions: list[Version] = field(default_factory=list)
    request_ids: dict[str, tuple[int, bool]] = field(default_factory=dict)

    def at(self, key: bytes, revision: int) -> Version | None:
        found = None
        for version in self.versions:
            if version.key == key and version.revision <= revision:
                found = version
        return found

    def kv_at(self, key: bytes, revision: int) -> KeyValue | None:
        version = self.at(key, revision)
        return version.kv() if version else None

    def state_at(self, revision: int) -> dict[bytes, KeyValue]:
        state = {}
        for key in {v.key for v in self.versions}:
            kv = self.kv_at(key, revision)
            if kv is not None:
                state[key] = kv
        return dict(sorted(state.items()))

    def check_readable(self, revision: int) -> None:
        if revision < self.compact_revision:
            raise Compacted("", compact_revision=self.compact_revision, requested_revision=revision)
        if revision > self.revision:
            raise FutureRevision("", current_revision=self.revision, requested_revision=revision)

    def range(self, request: RangeRequest, pending: dict[bytes, KeyValue] | None = None,
              pending_revision: int = 0) -> RangeResponse:
        revision = request.revision or self.revision
        self.check_readable(revision)
        if pending is not None and request.revision == 0 and pending_revision:
            # A txn's read of its own writes reports the revision they will get.
            revision = pending_revision
        state = pending if pending is not None and request.revision == 0 else self.state_at(revision)
        if request.range_end is None:
            matches = [state[request.key]] if request.key in state else []
        else:
            matches = [kv for key, kv in sorted(state.items()) if in_range(key, request.key, request.range_end)]
        count = len(matches)
        if request.count_only:
            return RangeResponse((), count, False, revision)
        shown = matches[: request.limit] if request.limit else matches
        more = len(shown) < count
        if request.keys_only:
            shown = [KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version) for kv in shown]
        next_key = shown[-1].key + b"\x00" if more and shown else RANGE_END_OPEN
        return RangeResponse(tuple(shown), count, more, revision, next_key)

    def retained(self, version: Version) -> bool:
        if version.revision > self.compact_revision:
            return True
        if version.deleted:
            return False
        later = [v for v in self.versions if v.key == version.key and v.revision > version.revision]
        return not later or later[0].revision > self.compact_revision


def overlapping_writes(branch: tuple) -> bool:
    puts = [op.key for op in branch if isinstance(op, Put)]
    if len(puts) != len(set(puts)):
        return True
    for op in branch:
        if isinstance(op, DeleteRange):
            for key in puts:
                covered = key == op.key if op.range_end is None else in_range(key, op.key, op.range_end)
                if covered:
                    return True
    return False


@st.composite
def ranges(draw: st.DrawFn) -> RangeRequest:
    kind = draw(st.sampled_from(["key", "prefix", "open"]))
    if kind == "key":
        key, end = draw(keys), None
    elif kind == "prefix":
        key = draw(st.sampled_from(PREFIXES))
        end = prefix_end(key)
    else:
        key, end = draw(keys), RANGE_END_OPEN
    return RangeRequest(
        key,
        end,
        limit=draw(st.sampled_from([0, 0, 1, 2])),
        revision=draw(st.sampled_from([0, 0, 1, 2, 3, 5, 8, 13])),
        keys_only=draw(st.booleans()),
        count_only=draw(st.booleans()),
    )


@st.composite
def operations(draw: st.DrawFn) -> Put | DeleteRange | RangeRequest:
    kind = draw(st.sampled_from(["put", "put", "delete", "delete-prefix", "range"]))
    if kind == "put":
        return Put(draw(keys), draw(values), draw(st.booleans()))
    if kind == "delete":
        return DeleteRange(draw(keys), None, draw(st.booleans()))
    if kind == "delete-prefix":
        prefix = draw(st.sampled_from(PREFIXES))
        return DeleteRange(prefix, prefix_end(prefix), draw(st.booleans()))
    request = draw(ranges())
    return RangeRequest(request.key, request.range_end, request.limit, 0 if draw(st.booleans()) else request.revision,
                        request.keys_only, request.count_only)


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    target = draw(st.sampled_from(list(CompareTarget)))
    operand = draw(values) if target is CompareTarget.VALUE else draw(st.integers(0, 6))
    return Compare(draw(keys), target, draw(st.sampled_from(list(CompareOp))), operand)


txns = st.builds(
    Txn,
    compares=st.lists(compares(), max_size=2).map(tuple),
    success=st.lists(operations(), max_size=3).map(tuple),
    failure=st.lists(operations(), max_size=3).map(tuple),
)
request_ids = st.sampled_from(["", "", "", "r1", "r2", "r3"])


class EngineAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = MVCC(Limits(tail_versions_max=3, segments_max=2))
        self.model = Model()

    # --- Writes. ---

    @rule(txn=txns, request_id=request_ids, note=st.sampled_from(["", "rollout"]))
    def run_txn(self, txn: Txn, request_id: str, note: str) -> None:
        expected = self.model_txn(txn, request_id, note)
        actual = self.engine.apply(self.engine.applied_index + 1,
                                   [Command(txn, request_id=request_id, principal="alice", time_ms=7, note=note)])[0]
        if isinstance(expected, type) and issubclass(expected, RayconfError):
            assert isinstance(actual, expected), (actual, expected)
            return
        assert not isinstance(actual, RayconfError), actual
        assert (actual.succeeded, actual.revision, actual.duplicate) == expected[:3]
        if not actual.duplicate:
            assert actual.responses == expected[3]
            assert actual.events == expected[4]

    def model_txn(self, txn: Txn, request_id: str, note: str) -> object:
        model = self.model
        if overlapping_writes(txn.success) or overlapping_writes(txn.failure):
            return InvalidRequest
        if request_id and request_id in model.request_ids:
            revision, succeeded = model.request_ids[request_id]
            return (succeeded, revision, True)
        live = model.state_at(model.revision)
        succeeded = all(self.model_compare(live, c) for c in txn.compares)
        branch = txn.success if succeeded else txn.failure
        for op in branch:
            if isinstance(op, RangeRequest) and op.revision:
                try:
                    model.check_readable(op.revision)
                except RayconfError as error:
                    return type(error)
        new_revision = model.revision + 1
        responses, events, new_versions = [], [], []
        pending = dict(live)
        for op in branch:
            if isinstance(op, Put):
                previous = pending.get(op.key)
                create = previous.create_revision if previous else new_revision
                version = previous.version + 1 if previous else 1
                kv = KeyValue(op.key, op.value, create, new_revision, version)
                pending[op.key] = kv
                new_versions.append(Version(op.key, new_revision, False, op.value, create, version))
                events.append(Event(EventType.PUT, kv, previous))
                responses.append(PutResponse(previous if op.prev_kv else None))
            elif isinstance(op, DeleteRange):
                if op.range_end is None:
                    doomed = [op.key] if op.key in pending else []
                else:
                    doomed = [k for k in sorted(pending) if in_range(k, op.key, op.range_end)]
                previous_kvs = []
                for key in doomed:
                    previous = pending.pop(key)
                    previous_kvs.append(previous)
                    new_versions.append(Version(key, new_revision, True))
                    events.append(Event(EventType.DELETE, KeyValue(key, b"", 0, new_revision, 0), previous))
                responses.append(DeleteRangeResponse(len(doomed), tuple(previous_kvs) if op.prev_kv else ()))
            else:
                responses.append(model.range(op, pending=dict(sorted(pending.items())),
                                             pending_revision=new_revision if new_versions else 0))
        if new_versions:
            model.revision = new_revision
            model.versions.extend(new_versions)
            self.notes = getattr(self, "notes", {})
            self.notes[new_revision] = note
        if request_id:
            model.request_ids[request_id] = (model.revision, succeeded)
        return (succeeded, model.revision, False, tuple(responses), tuple(events))

    @staticmethod
    def model_compare(live: dict[bytes, KeyValue], compare: Compare) -> bool:
        kv = live.get(compare.key)
        if compare.target is CompareTarget.VALUE:
            if kv is None:
                return False
            actual: object = kv.value
        else:
            attribute = {CompareTarget.VERSION: "version", CompareTarget.CREATE_REVISION: "create_revision",
                         CompareTarget.MOD_REVISION: "mod_revision"}[compare.target]
            actual = getattr(kv, attribute) if kv else 0
        return {
            CompareOp.EQUAL: actual == compare.operand,
            CompareOp.NOT_EQUAL: actual != compare.operand,
            CompareOp.LESS: actual < compare.operand,  # type: ignore[operator]
            CompareOp.GREATER: actual > compare.operand,  # type: ignore[operator]
        }[compare.op]

    @rule(key=keys, value=values, request_id=request_ids)
    def put(self, key: bytes, value: bytes, request_id: str) -> None:
        self.run_txn(Txn(success=(Put(key, value, True),)), request_id, "")

    @rule(key=keys, value=values)
    def put_again(self, key: bytes, value: bytes) -> None:
        self.run_txn(Txn(success=(Put(key, value),)), "", "rollout")

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self.run_txn(Txn(success=(DeleteRange(key, None, True),)), "", "")

    @rule(revision=st.integers(0, 20))
    def compact(self, revision: int) -> None:
        expected: type[RayconfError] | None = None
        if revision < 1:
            expected = InvalidRequest
        elif revision <= self.model.compact_revision:
            expected = Compacted
        elif revision > self.model.revision:
            expected = FutureRevision
        actual = self.engine.apply(self.engine.applied_index + 1, [Command(Compact(revision))])[0]
        if expected is not None:
            assert isinstance(actual, expected), actual
            return
        assert not isinstance(actual, RayconfError), actual
        self.model.compact_revision = revision
        assert actual.compact_revision == revision

    @rule()
    def flush(self) -> None:
        before = self.engine.hash_kv()
        self.engine.flush()
        assert self.engine.hash_kv() == before

    # --- Reads. ---

    @rule(request=ranges())
    def range(self, request: RangeRequest) -> None:
        try:
            expected: object = self.model.range(request)
        except RayconfError as error:
            expected = type(error)
        try:
            actual: object = self.engine.range(request)
        except RayconfError as error:
            actual = type(error)
        assert actual == expected

    @rule(directory=st.sampled_from([b"/", b"/a/", b"/b/", b"/a/c/"]), revision=st.sampled_from([0, 2, 4, 6]))
    def ls(self, directory: bytes, revision: int) -> None:
        read_revision = revision or self.model.revision
        try:
            self.model.check_readable(read_revision)
        except RayconfError as error:
            try:
                self.engine.ls(directory, revision)
            except RayconfError as raised:
                assert type(raised) is type(error)
                return
            raise AssertionError("engine listed a directory at an unreadable revision")
        expected = list(iter_children(SortedList(self.model.state_at(read_revision)), directory))
        assert self.engine.ls(directory, revision) == expected

    @rule(key=keys)
    def history(self, key: bytes) -> None:
        versions = [v for v in self.model.versions if v.key == key and self.model.retained(v)]
        actual = self.engine.history(key)
        assert [entry.event.kv.mod_revision for entry in actual] == [v.revision for v in versions]
        previous = None
        for entry, version in zip(actual, versions):
            assert entry.event.type is (EventType.DELETE if version.deleted else EventType.PUT)
            assert entry.event.kv == (version.kv() or KeyValue(key, b"", 0, version.revision, 0))
            assert entry.event.prev_kv == previous
            assert entry.change is not None and entry.change.revision == version.revision
            assert entry.change.principal == "alice"
            assert entry.change.note == self.notes[version.revision]
            previous = version.kv()

    @precondition(lambda self: self.model.revision > 1)
    @rule(data=st.data())
    def events(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(1, self.model.revision + 1))
        prefix = data.draw(st.sampled_from(PREFIXES))
        if start <= self.model.compact_revision:
            try:
                self.engine.events(start, prefix, prefix_end(prefix))
            except Compacted as error:
                assert error.compact_revision == self.model.compact_revision
                return
            raise AssertionError("events below the compact revision were served")
        expected = []
        for version in sorted(self.model.versions, key=lambda v: (v.revision, v.key)):
            if version.revision >= start and in_range(version.key, prefix, prefix_end(prefix)):
                kv = version.kv() or KeyValue(version.key, b"", 0, version.revision, 0)
                previous = self.model.kv_at(version.key, version.revision - 1)
                expected.append(Event(EventType.DELETE if version.deleted else EventType.PUT, kv, previous))
        assert self.engine.events(start, prefix, prefix_end(prefix)) == expected

    @invariant()
    def revisions_agree(self) -> None:
        assert self.engine.revision == self.model.revision
        assert self.engine.compact_revision == self.model.compact_revision


EngineAgainstModel.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_engine_matches_model = EngineAgainstModel.TestCase
