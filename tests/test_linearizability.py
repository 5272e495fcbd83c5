"""Scenarios for the history format and the linearizability checker.

Times in the hand-written histories are small integers on one shared clock.
Operation A precedes B only when A returns strictly before B is called.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import pytest

from rayconf.sims.history import (
    Cas,
    CasResult,
    Compare,
    Delete,
    Get,
    HistoryRecorder,
    Input,
    Operation,
    OpStatus,
    Output,
    Put,
    ReadResult,
    Txn,
    TxnResult,
    WriteResult,
    generate_linearizable_history,
    load_history,
    save_history,
)
from rayconf.sims.linearizability import Outcome, check_history, partition_by_keys

X = b"/app/x"
Y = b"/app/y"


class HistoryBuilder:
    """History builder that numbers operations in the order they are added."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def ok(
        self, client_id: int, call_time: float, return_time: float, op_input: Input, output: Output
    ) -> Operation:
        return self._add(client_id, call_time, return_time, op_input, output, OpStatus.OK)

    def failed(
        self, client_id: int, call_time: float, return_time: float, op_input: Input
    ) -> Operation:
        return self._add(client_id, call_time, return_time, op_input, None, OpStatus.FAILED)

    def unknown(self, client_id: int, call_time: float, op_input: Input) -> Operation:
        return self._add(client_id, call_time, math.inf, op_input, None, OpStatus.UNKNOWN)

    def _add(
        self,
        client_id: int,
        call_time: float,
        return_time: float,
        op_input: Input,
        output: Output | None,
        status: OpStatus,
    ) -> Operation:
        op = Operation(
            client_id, len(self.operations), call_time, return_time, op_input, output, status
        )
        self.operations.append(op)
        return op


def max_concurrency(operations: list[Operation]) -> int:
    events = sorted(
        [(op.call_time, 1) for op in operations] + [(op.return_time, -1) for op in operations],
        key=lambda event: (event[0], -event[1]),
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


# --- Rejected histories ---


def test_read_misses_completed_write() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"a"), WriteResult())
    history.ok(2, 2, 3, Get(X), ReadResult(None))

    result = check_history(history.operations)

    assert result.outcome is Outcome.NOT_LINEARIZABLE
    assert not result.ok


def test_concurrent_read_of_old_value_accepted() -> None:
    # The same read as above, but called before the put returned, may come first.
    history = HistoryBuilder()
    history.ok(1, 0, 2, Put(X, b"a"), WriteResult())
    history.ok(2, 1, 3, Get(X), ReadResult(None))

    assert check_history(history.operations).ok


def test_cas_lost_update() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"a"), WriteResult())
    history.ok(2, 2, 5, Cas(X, b"a", b"b"), CasResult(True))
    history.ok(3, 2, 5, Cas(X, b"a", b"c"), CasResult(True))

    result = check_history(history.operations)

    assert result.outcome is Outcome.NOT_LINEARIZABLE


def test_cas_one_winner_accepted() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"a"), WriteResult())
    history.ok(2, 2, 5, Cas(X, b"a", b"b"), CasResult(True))
    history.ok(3, 2, 5, Cas(X, b"a", b"c"), CasResult(False))
    history.ok(1, 6, 7, Get(X), ReadResult(b"b"))

    assert check_history(history.operations).ok


def test_read_of_value_never_written() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"a"), WriteResult())
    history.ok(2, 0, 3, Get(X), ReadResult(b"never-written"))

    assert check_history(history.operations).outcome is Outcome.NOT_LINEARIZABLE


def test_stale_read_after_delete() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"a"), WriteResult())
    history.ok(1, 2, 3, Delete(X), WriteResult())
    history.ok(2, 4, 5, Get(X), ReadResult(b"a"))

    assert check_history(history.operations).outcome is Outcome.NOT_LINEARIZABLE


def test_txn_observes_torn_state() -> None:
    # The writer sets both keys in one txn, so no reader may see one without
    # the other, even while the writer is still in flight.
    history = HistoryBuilder()
    history.ok(1, 0, 4, Txn((), (Put(X, b"1"), Put(Y, b"1"))), TxnResult(True, ()))
    history.ok(2, 1, 3, Txn((), (Get(X), Get(Y))), TxnResult(True, (b"1", None)))

    result = check_history(history.operations)

    assert result.outcome is Outcome.NOT_LINEARIZABLE
    assert len(result.partitions) == 1
    assert result.partitions[0].keys == (X, Y)


def test_txn_atomic_read_accepted() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 4, Txn((), (Put(X, b"1"), Put(Y, b"1"))), TxnResult(True, ()))
    history.ok(2, 1, 3, Txn((), (Get(X), Get(Y))), TxnResult(True, (b"1", b"1")))
    history.ok(3, 1, 3, Txn((), (Get(X), Get(Y))), TxnResult(True, (None, None)))
    compare = Compare(X, "=", b"1")
    history.ok(3, 5, 6, Txn((compare,), (Delete(Y), Get(Y)), (Get(X),)), TxnResult(True, (None,)))
    history.ok(2, 7, 8, Get(Y), ReadResult(None))

    assert check_history(history.operations).ok


# --- Accepted histories ---


def test_six_clients_overlapping_puts_gets() -> None:
    # Latency far above think time keeps all six clients in flight at once.
    operations = generate_linearizable_history(
        random.Random(6),
        client_count=6,
        key_count=2,
        operation_count=600,
        latency_max=5.0,
        think_time_max=0.05,
    )

    result = check_history(operations)

    assert max_concurrency(operations) == 6
    assert result.ok, result.render()


def test_unknown_put_took_effect() -> None:
    history = HistoryBuilder()
    history.unknown(1, 0, Put(X, b"a"))
    history.ok(2, 1, 2, Get(X), ReadResult(None))
    history.ok(2, 5, 6, Get(X), ReadResult(b"a"))
    history.ok(2, 7, 8, Get(X), ReadResult(b"a"))

    assert check_history(history.operations).ok


def test_unknown_put_never_took_effect() -> None:
    history = HistoryBuilder()
    history.unknown(1, 0, Put(X, b"a"))
    history.unknown(1, 1, Cas(X, None, b"b"))
    history.ok(2, 5, 6, Get(X), ReadResult(None))
    history.ok(2, 7, 8, Put(X, b"c"), WriteResult())
    history.ok(2, 9, 10, Get(X), ReadResult(b"c"))

    assert check_history(history.operations).ok


def test_unknown_put_not_before_call() -> None:
    history = HistoryBuilder()
    history.ok(2, 0, 1, Get(X), ReadResult(b"a"))
    history.unknown(1, 2, Put(X, b"a"))

    assert check_history(history.operations).outcome is Outcome.NOT_LINEARIZABLE


def test_failed_operations_dropped() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"a"), WriteResult())
    history.failed(2, 2, 3, Put(X, b"b"))
    history.failed(3, 2, 3, Delete(X))
    history.ok(1, 4, 5, Get(X), ReadResult(b"a"))

    result = check_history(history.operations)

    assert result.ok
    assert result.failed_dropped_count == 2


def test_read_of_failed_write_rejected() -> None:
    history = HistoryBuilder()
    history.failed(1, 0, 3, Put(X, b"b"))
    history.ok(2, 1, 2, Get(X), ReadResult(b"b"))

    assert check_history(history.operations).outcome is Outcome.NOT_LINEARIZABLE


# --- Generated histories ---


@pytest.mark.parametrize("seed", range(40))
def test_generated_history_accepted_then_mutated(seed: int) -> None:
    rng = random.Random(seed)
    operations = generate_linearizable_history(
        rng,
        client_count=5,
        key_count=4,
        operation_count=250,
        txn_ratio=0.1,
        unknown_ratio=0.03,
        failed_ratio=0.03,
    )

    result = check_history(operations)
    assert result.ok, result.render()

    reads = [
        i
        for i, op in enumerate(operations)
        if isinstance(op.input, Get) and op.status is OpStatus.OK
    ]
    victim = rng.choice(reads)
    mutated = list(operations)
    mutated[victim] = dataclasses.replace(
        operations[victim], output=ReadResult(b"never-written")
    )

    mutated_result = check_history(mutated)
    assert mutated_result.outcome is Outcome.NOT_LINEARIZABLE
    assert len(mutated_result.reports) == 1
    victim_key = operations[victim].input.key  # type: ignore[union-attr]
    assert victim_key in mutated_result.reports[0].keys


def test_generator_output_covers_every_kind() -> None:
    operations = generate_linearizable_history(
        random.Random(1),
        client_count=3,
        key_count=3,
        operation_count=400,
        txn_ratio=0.1,
        unknown_ratio=0.05,
        failed_ratio=0.05,
    )

    kinds = {type(op.input) for op in operations}
    statuses = {op.status for op in operations}
    assert kinds == {Get, Put, Delete, Cas, Txn}
    assert statuses == set(OpStatus)
    assert any(isinstance(op.output, CasResult) and op.output.succeeded for op in operations)
    assert any(isinstance(op.output, TxnResult) and not op.output.succeeded for op in operations)


def apply_reference(store: dict[bytes, bytes], op_input: Input) -> Output:
    """Apply one input to a dict, written apart from the checker's model."""
    if isinstance(op_input, Get):
        return ReadResult(store.get(op_input.key))
    if isinstance(op_input, Put):
        store[op_input.key] = op_input.value
        return WriteResult()
    if isinstance(op_input, Delete):
        store.pop(op_input.key, None)
        return WriteResult()
    if isinstance(op_input, Cas):
        if store.get(op_input.key) != op_input.expected:
            return CasResult(False)
        store[op_input.key] = op_input.new
        return CasResult(True)
    succeeded = all(
        (store.get(compare.key) == compare.value) == (compare.op == "=")
        for compare in op_input.compares
    )
    reads = []
    for item in op_input.success if succeeded else op_input.failure:
        output = apply_reference(store, item)
        if isinstance(output, ReadResult):
            reads.append(output.value)
    return TxnResult(succeeded, tuple(reads))


def is_linearizable_by_enumeration(operations: list[Operation]) -> bool:
    """Try every order that respects real time. Unknown operations may also be left out."""
    live = [op for op in operations if op.status is not OpStatus.FAILED]

    def extend(done: frozenset[int], store: dict[bytes, bytes]) -> bool:
        if all(i in done or op.status is OpStatus.UNKNOWN for i, op in enumerate(live)):
            return True
        for i, op in enumerate(live):
            if i in done:
                continue
            if any(
                j not in done and other.return_time < op.call_time
                for j, other in enumerate(live)
            ):
                continue
            next_store = dict(store)
            output = apply_reference(next_store, op.input)
            if op.status is OpStatus.OK and output != op.output:
                continue
            if extend(done | {i}, next_store):
                return True
        return False

    return extend(frozenset(), {})


def corrupt_outputs(rng: random.Random, operations: list[Operation]) -> list[Operation]:
    """Change zero to two outputs, so that some histories stop being linearizable."""
    corrupted = list(operations)
    for _ in range(rng.choice([0, 1, 2])):
        i = rng.randrange(len(corrupted))
        output = corrupted[i].output
        if isinstance(output, ReadResult):
            output = ReadResult(rng.choice([None, b"v1", b"v2", b"v3"]))
        elif isinstance(output, CasResult):
            output = CasResult(not output.succeeded)
        elif isinstance(output, TxnResult):
            output = TxnResult(output.succeeded, tuple(rng.choice([None, v]) for v in output.reads))
        else:
            continue
        corrupted[i] = dataclasses.replace(corrupted[i], output=output)
    return corrupted


def test_small_histories_match_enumeration() -> None:
    # The checker's changes beyond Porcupine skip configurations, so compare verdicts
    # with an exhaustive search on histories small enough to enumerate.
    verdicts = []
    for seed in range(600):
        rng = random.Random(seed)
        operations = generate_linearizable_history(
            rng,
            client_count=rng.choice([2, 3, 4]),
            key_count=rng.choice([1, 2, 3]),
            operation_count=7,
            latency_max=2.0,
            txn_ratio=0.25,
            unknown_ratio=rng.choice([0.0, 0.2, 0.4]),
            failed_ratio=0.1,
        )
        operations = corrupt_outputs(rng, operations)

        expected = is_linearizable_by_enumeration(operations)
        result = check_history(operations)

        assert result.ok == expected, f"seed {seed}:\n{result.render()}"
        verdicts.append(expected)
    assert verdicts.count(False) > 50
    assert verdicts.count(True) > 50


def random_small_operation(rng: random.Random, keys: list[bytes], op_id: int) -> Operation:
    """Draw an operation with a random output, from values that often repeat."""
    values = [None, b"a", b"b"]
    key = rng.choice(keys)
    roll = rng.random()
    op_input: Input
    output: Output
    if roll < 0.3:
        op_input, output = Get(key), ReadResult(rng.choice(values))
    elif roll < 0.55:
        op_input, output = Put(key, rng.choice([b"a", b"b"])), WriteResult()
    elif roll < 0.65:
        op_input, output = Delete(key), WriteResult()
    elif roll < 0.85:
        op_input = Cas(key, rng.choice(values), rng.choice([b"a", b"b"]))
        output = CasResult(rng.random() < 0.5)
    else:
        compare = Compare(key, rng.choice(["=", "!="]), rng.choice(values))
        other_key = rng.choice(keys)
        op_input = Txn((compare,), (Put(other_key, b"a"), Get(key)), (Get(other_key),))
        output = TxnResult(rng.random() < 0.5, (rng.choice(values),))

    client_id = rng.randrange(3)
    call_time = rng.uniform(0.0, 10.0)
    return_time = call_time + rng.uniform(0.0, 6.0)
    status_roll = rng.random()
    if status_roll < 0.2:
        return Operation(client_id, op_id, call_time, math.inf, op_input, None, OpStatus.UNKNOWN)
    if status_roll < 0.27:
        return Operation(client_id, op_id, call_time, return_time, op_input, None, OpStatus.FAILED)
    return Operation(client_id, op_id, call_time, return_time, op_input, output)


def test_random_small_histories_match_enumeration() -> None:
    # Repeated values make equal states common, which exercises the cache.
    verdicts = []
    for seed in range(1500):
        rng = random.Random(seed)
        keys = [X, Y][: rng.choice([1, 2])]
        operations = [random_small_operation(rng, keys, i) for i in range(rng.choice([5, 7, 9]))]

        expected = is_linearizable_by_enumeration(operations)
        result = check_history(operations)

        assert result.ok == expected, f"seed {seed}:\n{result.render()}"
        verdicts.append(expected)
    assert verdicts.count(False) > 100
    assert verdicts.count(True) > 100


# --- Failure report ---


def test_report_names_unplaced_operation() -> None:
    history = HistoryBuilder()
    history.ok(3, 0, 1, Put(X, b"a"), WriteResult())
    history.ok(3, 2, 3, Delete(X), WriteResult())
    history.ok(5, 0, 2, Get(X), ReadResult(None))
    stale = history.ok(7, 4, 6, Get(X), ReadResult(b"a"))

    result = check_history(history.operations)

    assert len(result.reports) == 1
    report = result.reports[0]
    assert report.unplaced == stale
    assert {op.op_id for op in report.linearized} == {0, 1, 2}
    assert report.state_after == ((X, None),)
    text = report.render()
    print(text)
    assert f"cannot linearize client 7 op {stale.op_id}: get(b'/app/x') -> b'a'" in text
    assert "client 7  [4, 6]" in text
    assert "<- cannot be linearized" in text
    client_lines = [line for line in text.splitlines() if line.startswith("  client")]
    assert [line.split()[1] for line in client_lines] == ["3", "3", "5", "7"]
    assert text in result.render()


# --- Bounds ---


def test_state_bound_gives_unknown() -> None:
    operations = generate_linearizable_history(
        random.Random(2), client_count=6, key_count=1, operation_count=200, latency_max=5.0
    )

    result = check_history(operations, max_states=10)

    assert result.outcome is Outcome.UNKNOWN
    assert not result.timed_out
    assert not result.ok
    assert result.partitions[0].bound_reached == "max_states"
    assert result.partitions[0].states_explored == 10


def test_time_budget_gives_unknown() -> None:
    operations = generate_linearizable_history(
        random.Random(3), client_count=4, key_count=5, operation_count=200
    )

    result = check_history(operations, timeout_s=0.0)

    assert result.outcome is Outcome.UNKNOWN
    assert result.timed_out
    assert {p.bound_reached for p in result.partitions} == {"timeout"}


# --- Partitions ---


def test_txn_joins_keys_into_partition() -> None:
    z = b"/app/z"
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"1"), WriteResult())
    history.ok(1, 2, 3, Put(z, b"1"), WriteResult())
    history.ok(2, 0, 1, Txn((Compare(Y, "!=", None),), (Get(X),)), TxnResult(False, ()))

    partitions = partition_by_keys(history.operations)

    assert [keys for keys, _ in partitions] == [(X, Y), (z,)]
    assert [len(group) for _, group in partitions] == [2, 1]


# --- History format ---


def test_recorder_statuses_and_pending() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    recorder = HistoryRecorder(clock)
    put_id = recorder.invoke(1, Put(X, b"a"))
    get_id = recorder.invoke(2, Get(X))
    lost_id = recorder.invoke(3, Delete(X))
    rejected_id = recorder.invoke(4, Put(Y, b"b"))
    crashed_id = recorder.invoke(5, Cas(X, b"a", b"c"))
    recorder.complete(put_id, WriteResult())
    recorder.complete(get_id, ReadResult(b"a"))
    recorder.unknown(lost_id)
    recorder.fail(rejected_id)

    assert recorder.pending_op_ids() == [crashed_id]
    history = recorder.history()
    assert [op.op_id for op in history] == [0, 1, 2, 3, 4]
    assert [op.status for op in history] == [
        OpStatus.OK, OpStatus.OK, OpStatus.UNKNOWN, OpStatus.FAILED, OpStatus.UNKNOWN
    ]
    assert (history[0].call_time, history[0].return_time) == (1.0, 6.0)
    assert history[2].return_time == math.inf
    assert check_history(history).ok
    with pytest.raises(ValueError, match="not pending"):
        recorder.complete(put_id, WriteResult())


def test_recorder_rejects_invalid_calls() -> None:
    recorder = HistoryRecorder(max_operations=2)
    get_id = recorder.invoke(1, Get(X))

    with pytest.raises(ValueError, match="does not match"):
        recorder.complete(get_id, WriteResult())
    assert recorder.pending_op_ids() == [get_id]

    recorder.invoke(2, Get(X))
    with pytest.raises(ValueError, match="max_operations=2"):
        recorder.invoke(3, Get(X))


def test_duplicate_op_ids_rejected() -> None:
    history = HistoryBuilder()
    history.ok(1, 0, 1, Put(X, b"a"), WriteResult())
    duplicate = dataclasses.replace(history.operations[0], client_id=2)

    with pytest.raises(ValueError, match="op id 0 appears twice"):
        check_history([history.operations[0], duplicate])


def test_operation_rejects_mismatched_output() -> None:
    with pytest.raises(ValueError, match="does not match"):
        Operation(1, 0, 0, 1, Get(X), WriteResult())
    with pytest.raises(ValueError, match="math.inf"):
        Operation(1, 0, 0, 1, Get(X), None, OpStatus.UNKNOWN)
    with pytest.raises(ValueError, match="after return_time"):
        Operation(1, 0, 2, 1, Get(X), ReadResult(None))
    with pytest.raises(ValueError, match="branch has 1 gets"):
        Operation(1, 0, 0, 1, Txn((), (Get(X),)), TxnResult(True, ()))


def test_json_round_trip(tmp_path: Path) -> None:
    history = HistoryBuilder()
    binary = bytes(range(256))
    history.ok(1, 0, 1.5, Put(X, binary), WriteResult())
    history.ok(2, 0.25, 2, Get(X), ReadResult(binary))
    history.ok(2, 3, 4, Cas(X, None, b"n"), CasResult(False))
    history.failed(3, 3, 4, Delete(Y))
    history.unknown(4, 5, Put(Y, b"\x00"))
    txn = Txn(
        (Compare(X, "=", binary), Compare(Y, "!=", None)),
        (Put(Y, b"t"), Get(Y)),
        (Delete(X), Get(X), Get(Y)),
    )
    history.ok(1, 6, 7, txn, TxnResult(False, (None, None)))
    path = tmp_path / "history.json"

    save_history(path, history.operations)
    loaded = load_history(path)

    assert loaded == history.operations
    assert "Infinity" not in path.read_text()


@pytest.mark.parametrize(
    ("original", "replacement", "message"),
    [
        ('"kind": "get"', '"kind": "scan"', r"operations\[0\]\.input\.kind: unknown input kind"),
        ('"key": "L2FwcC94"', '"key": "not base64!"', r"operations\[0\]\.input\.key: invalid base64"),
        ('"op_id": 0,', "", r"operations\[0\]: missing field 'op_id'"),
        ('"version": 1', '"version": 2', "not a rayconf-history version 1 document"),
    ],
)
def test_json_rejects_invalid_document(
    tmp_path: Path, original: str, replacement: str, message: str
) -> None:
    path = tmp_path / "history.json"
    save_history(path, [Operation(1, 0, 0, 1, Get(X), ReadResult(None))])
    text = path.read_text()
    assert original in text
    path.write_text(text.replace(original, replacement))

    with pytest.raises(ValueError, match=message):
        load_history(path)


# --- Scale ---


def test_ten_thousand_operations() -> None:
    operations = generate_linearizable_history(
        random.Random(10_000),
        client_count=10,
        key_count=50,
        operation_count=10_000,
        unknown_ratio=0.01,
        failed_ratio=0.01,
    )

    started = time.perf_counter()
    result = check_history(operations, timeout_s=120.0)
    elapsed_s = time.perf_counter() - started

    print(f"checked 10,000 operations, 10 clients, 50 keys in {elapsed_s:.2f} s")
    assert result.outcome is Outcome.LINEARIZABLE, result.render()
    assert len(result.partitions) == 50


def test_ten_thousand_operations_one_partition() -> None:
    # Two-key txns join all 50 keys, so the search runs over one partition.
    operations = generate_linearizable_history(
        random.Random(10_001),
        client_count=10,
        key_count=50,
        operation_count=10_000,
        txn_ratio=0.05,
        failed_ratio=0.01,
    )

    started = time.perf_counter()
    result = check_history(operations, timeout_s=120.0)
    elapsed_s = time.perf_counter() - started

    print(f"checked 10,000 operations, 10 clients, 50 keys in one partition in {elapsed_s:.2f} s")
    assert result.outcome is Outcome.LINEARIZABLE, result.render()
    assert len(result.partitions) == 1
