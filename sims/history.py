"""Client histories of key-value operations, as the linearizability checker reads them.

A history is a list of `Operation` records: who called what, when the call
started and returned on one shared clock, what came back, and whether the
operation took effect. Simulated clients build it through `HistoryRecorder`;
`save_history` and `load_history` keep it as JSON so that a failing run can be
checked again without rerunning it.

Status has three values:

- `ok`: the client saw a response, and `output` contains it.
- `failed`: the operation certainly did not take effect (for example, the
  request was rejected before it was proposed). The checker drops it.
- `unknown`: the client saw no response (a timeout or a crash), so the operation
  may have taken effect at any time after its call, or never. Its return time is
  infinity and its output is None.

Keys and values are bytes, as in the store. A value of None means "absent".
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

Value = Union[bytes, None]

HISTORY_FORMAT = "rayconf-history"
HISTORY_FORMAT_VERSION = 1

# A bound on the recorder's memory. One operation takes an estimated 300 bytes
# plus its keys and values.
MAX_RECORDED_OPERATIONS_DEFAULT = 1_000_000


# --- Inputs ---


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-swap: write `new` only if the key's value equals `expected`.

    `expected=None` means "the key is absent", which makes this a create.
    """

    key: bytes
    expected: Value
    new: bytes


CompareOp = Literal["=", "!="]


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn guard on one key's value. `value=None` means the key is absent."""

    key: bytes
    op: CompareOp
    value: Value


TxnOp = Union[Get, Put, Delete]


@dataclass(frozen=True, slots=True)
class Txn:
    """An etcd-style transaction: if every compare is true, run `success`, else `failure`.

    The branch runs its operations in order, so a get reads the values that the
    puts and deletes before it in the same branch wrote.
    """

    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...] = ()


Input = Union[Get, Put, Delete, Cas, Txn]


# --- Outputs ---


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Output of a get: the value read, None if the key was absent."""

    value: Value


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Output of a put or a delete, which carries nothing the checker compares."""


@dataclass(frozen=True, slots=True)
class CasResult:
    succeeded: bool


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Output of a txn: which branch ran, and the values its gets read in order."""

    succeeded: bool
    reads: tuple[Value, ...] = ()


Output = Union[ReadResult, WriteResult, CasResult, TxnResult]

_OUTPUT_TYPE_BY_INPUT: dict[type, type] = {
    Get: ReadResult,
    Put: WriteResult,
    Delete: WriteResult,
    Cas: CasResult,
    Txn: TxnResult,
}


class OpStatus(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation with its real-time interval and outcome.

    The constructor checks these invariants and raises ValueError when one is
    broken. The call time is at most the return time. An `ok` operation has an
    output of the type that matches its input. `failed` and `unknown`
    operations have no output. An `unknown` operation has `return_time ==
    math.inf`.
    """

    client_id: int
    op_id: int
    call_time: float
    return_time: float
    input: Input
    output: Output | None
    status: OpStatus = OpStatus.OK

    def __post_init__(self) -> None:
        if not self.call_time <= self.return_time:
            raise ValueError(
                f"operation {self.op_id}: call_time {self.call_time} is after "
                f"return_time {self.return_time}. Take both from one clock"
            )
        if type(self.input) not in _OUTPUT_TYPE_BY_INPUT:
            raise ValueError(
                f"operation {self.op_id}: invalid input {self.input!r}, expected a Get, "
                f"Put, Delete, Cas or Txn"
            )
        if self.status is OpStatus.OK:
            expected_type = _OUTPUT_TYPE_BY_INPUT[type(self.input)]
            if type(self.output) is not expected_type:
                raise ValueError(
                    f"operation {self.op_id}: output {self.output!r} does not match "
                    f"input {format_input(self.input)}, expected a {expected_type.__name__}"
                )
            if isinstance(self.input, Txn):
                _validate_txn_reads(self.op_id, self.input, self.output)
        elif self.output is not None:
            raise ValueError(
                f"operation {self.op_id}: a {self.status.value} operation has no output, "
                f"got {self.output!r}"
            )
        if self.status is OpStatus.UNKNOWN and self.return_time != math.inf:
            raise ValueError(
                f"operation {self.op_id}: an unknown operation may take effect at any "
                f"later time, so its return_time must be math.inf, not {self.return_time}"
            )


def _validate_txn_reads(op_id: int, txn: Txn, output: Output | None) -> None:
    assert isinstance(output, TxnResult)
    branch = txn.success if output.succeeded else txn.failure
    get_count = sum(1 for item in branch if isinstance(item, Get))
    if len(output.reads) != get_count:
        raise ValueError(
            f"operation {op_id}: txn output has {len(output.reads)} reads, but the "
            f"{'success' if output.succeeded else 'failure'} branch has {get_count} gets"
        )


def keys_of(op_input: Input) -> tuple[bytes, ...]:
    """Return the keys an input reads or writes, in first-use order, without repeats."""
    if isinstance(op_input, Txn):
        keys = [compare.key for compare in op_input.compares]
        keys += [item.key for item in op_input.success + op_input.failure]
        return tuple(dict.fromkeys(keys))
    return (op_input.key,)


# --- Text rendering ---


def format_value(value: Value) -> str:
    return "<absent>" if value is None else repr(value)


def format_input(op_input: Input) -> str:
    if isinstance(op_input, Get):
        return f"get({op_input.key!r})"
    if isinstance(op_input, Put):
        return f"put({op_input.key!r}, {op_input.value!r})"
    if isinstance(op_input, Delete):
        return f"delete({op_input.key!r})"
    if isinstance(op_input, Cas):
        return (
            f"cas({op_input.key!r}, expected={format_value(op_input.expected)}, "
            f"new={op_input.new!r})"
        )
    compares = ", ".join(
        f"{compare.key!r} {compare.op} {format_value(compare.value)}"
        for compare in op_input.compares
    )
    success = ", ".join(format_input(item) for item in op_input.success)
    failure = ", ".join(format_input(item) for item in op_input.failure)
    return f"txn(if [{compares}] then [{success}] else [{failure}])"


def format_output(operation: Operation) -> str:
    output = operation.output
    if output is None:
        return operation.status.value
    if isinstance(output, ReadResult):
        return format_value(output.value)
    if isinstance(output, WriteResult):
        return "ok"
    if isinstance(output, CasResult):
        return "succeeded" if output.succeeded else "not succeeded"
    reads = ", ".join(format_value(value) for value in output.reads)
    branch = "succeeded" if output.succeeded else "not succeeded"
    return f"{branch}, reads [{reads}]"


# --- Recording ---


@dataclass(slots=True)
class _PendingCall:
    client_id: int
    call_time: float
    input: Input


class HistoryRecorder:
    """Thread-safe recorder that builds a history from concurrent clients.

    A client calls `invoke` just before it sends a request, and one of
    `complete`, `fail` or `unknown` once the outcome is known. Times come from
    `clock`, which must be the one clock every client shares, so a simulation
    passes its simulated clock. `invoke` raises ValueError once
    `max_operations` operations were invoked.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_operations: int = MAX_RECORDED_OPERATIONS_DEFAULT,
    ) -> None:
        self._clock = clock
        self._max_operations = max_operations
        self._lock = threading.Lock()
        self._next_op_id = 0
        self._pending: dict[int, _PendingCall] = {}
        self._finished: list[Operation] = []

    def invoke(self, client_id: int, op_input: Input) -> int:
        """Record the call of an operation and return its op id."""
        with self._lock:
            if self._next_op_id >= self._max_operations:
                raise ValueError(
                    f"history is full at max_operations={self._max_operations}. Raise the "
                    f"limit or record a shorter run"
                )
            op_id = self._next_op_id
            self._next_op_id += 1
            self._pending[op_id] = _PendingCall(client_id, self._clock(), op_input)
            return op_id

    def complete(self, op_id: int, output: Output) -> None:
        """Record that the operation returned `output` and took effect."""
        self._finish(op_id, output, OpStatus.OK)

    def fail(self, op_id: int) -> None:
        """Record that the operation certainly did not take effect."""
        self._finish(op_id, None, OpStatus.FAILED)

    def unknown(self, op_id: int) -> None:
        """Record that the operation may or may not have taken effect."""
        self._finish(op_id, None, OpStatus.UNKNOWN)

    def pending_op_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._pending)

    def history(self) -> list[Operation]:
        """Return every operation in op id order.

        Operations still pending are returned as `unknown`, because a client
        that never saw a response cannot tell whether they took effect.
        """
        with self._lock:
            operations = list(self._finished)
            for op_id, call in self._pending.items():
                operations.append(
                    Operation(
                        call.client_id, op_id, call.call_time, math.inf, call.input, None,
                        OpStatus.UNKNOWN,
                    )
                )
        return sorted(operations, key=lambda operation: operation.op_id)

    def _finish(self, op_id: int, output: Output | None, status: OpStatus) -> None:
        with self._lock:
            call = self._pending.get(op_id)
            if call is None:
                raise ValueError(
                    f"operation {op_id} is not pending: it was never invoked or was "
                    f"already finished"
                )
            return_time = math.inf if status is OpStatus.UNKNOWN else self._clock()
            # Built before the pop, so an invalid output leaves the call pending.
            operation = Operation(
                call.client_id, op_id, call.call_time, return_time, call.input, output, status
            )
            del self._pending[op_id]
            self._finished.append(operation)


# --- JSON ---
#
# Bytes are base64 strings and None is null. An infinite return time is null,
# because JSON has no infinity.


def _encode_bytes(value: Value) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def _decode_bytes(text: Any, where: str) -> Value:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a base64 string or null, got {text!r}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError(f"{where}: invalid base64 {text!r}: {error}") from error


def _decode_required_bytes(text: Any, where: str) -> bytes:
    value = _decode_bytes(text, where)
    if value is None:
        raise ValueError(f"{where}: missing bytes value")
    return value


def _input_to_json(op_input: Input) -> dict[str, Any]:
    if isinstance(op_input, Get):
        return {"kind": "get", "key": _encode_bytes(op_input.key)}
    if isinstance(op_input, Put):
        return {
            "kind": "put",
            "key": _encode_bytes(op_input.key),
            "value": _encode_bytes(op_input.value),
        }
    if isinstance(op_input, Delete):
        return {"kind": "delete", "key": _encode_bytes(op_input.key)}
    if isinstance(op_input, Cas):
        return {
            "kind": "cas",
            "key": _encode_bytes(op_input.key),
            "expected": _encode_bytes(op_input.expected),
            "new": _encode_bytes(op_input.new),
        }
    return {
        "kind": "txn",
        "compares": [
            {"key": _encode_bytes(c.key), "op": c.op, "value": _encode_bytes(c.value)}
            for c in op_input.compares
        ],
        "success": [_input_to_json(item) for item in op_input.success],
        "failure": [_input_to_json(item) for item in op_input.failure],
    }


def _input_from_json(doc: dict[str, Any], where: str) -> Input:
    kind = doc.get("kind")
    key_where = f"{where}.key"
    if kind == "get":
        return Get(_decode_required_bytes(doc.get("key"), key_where))
    if kind == "put":
        return Put(
            _decode_required_bytes(doc.get("key"), key_where),
            _decode_required_bytes(doc.get("value"), f"{where}.value"),
        )
    if kind == "delete":
        return Delete(_decode_required_bytes(doc.get("key"), key_where))
    if kind == "cas":
        return Cas(
            _decode_required_bytes(doc.get("key"), key_where),
            _decode_bytes(doc.get("expected"), f"{where}.expected"),
            _decode_required_bytes(doc.get("new"), f"{where}.new"),
        )
    if kind == "txn":
        compares = []
        for i, item in enumerate(doc.get("compares", [])):
            op = item.get("op")
            if op not in ("=", "!="):
                raise ValueError(f"{where}.compares[{i}].op: expected '=' or '!=', got {op!r}")
            compares.append(
                Compare(
                    _decode_required_bytes(item.get("key"), f"{where}.compares[{i}].key"),
                    op,
                    _decode_bytes(item.get("value"), f"{where}.compares[{i}].value"),
                )
            )
        branches: list[tuple[TxnOp, ...]] = []
        for name in ("success", "failure"):
            branch = []
            for i, item in enumerate(doc.get(name, [])):
                parsed = _input_from_json(item, f"{where}.{name}[{i}]")
                if not isinstance(parsed, (Get, Put, Delete)):
                    raise ValueError(
                        f"{where}.{name}[{i}]: a txn branch may contain only get, put and delete"
                    )
                branch.append(parsed)
            branches.append(tuple(branch))
        return Txn(tuple(compares), branches[0], branches[1])
    raise ValueError(f"{where}.kind: unknown input kind {kind!r}")


def _output_to_json(output: Output | None) -> dict[str, Any] | None:
    if output is None:
        return None
    if isinstance(output, ReadResult):
        return {"kind": "read", "value": _encode_bytes(output.value)}
    if isinstance(output, WriteResult):
        return {"kind": "write"}
    if isinstance(output, CasResult):
        return {"kind": "cas", "succeeded": output.succeeded}
    return {
        "kind": "txn",
        "succeeded": output.succeeded,
        "reads": [_encode_bytes(value) for value in output.reads],
    }


def _output_from_json(doc: dict[str, Any] | None, where: str) -> Output | None:
    if doc is None:
        return None
    kind = doc.get("kind")
    if kind == "read":
        return ReadResult(_decode_bytes(doc.get("value"), f"{where}.value"))
    if kind == "write":
        return WriteResult()
    if kind == "cas":
        return CasResult(bool(doc["succeeded"]))
    if kind == "txn":
        reads = tuple(
            _decode_bytes(value, f"{where}.reads[{i}]")
            for i, value in enumerate(doc.get("reads", []))
        )
        return TxnResult(bool(doc["succeeded"]), reads)
    raise ValueError(f"{where}.kind: unknown output kind {kind!r}")


def history_to_json(operations: Iterable[Operation]) -> dict[str, Any]:
    return {
        "format": HISTORY_FORMAT,
        "version": HISTORY_FORMAT_VERSION,
        "operations": [
            {
                "client_id": op.client_id,
                "op_id": op.op_id,
                "call_time": op.call_time,
                "return_time": None if op.return_time == math.inf else op.return_time,
                "status": op.status.value,
                "input": _input_to_json(op.input),
                "output": _output_to_json(op.output),
            }
            for op in operations
        ],
    }


def history_from_json(doc: dict[str, Any]) -> list[Operation]:
    """Parse a document made by `history_to_json`.

    Raises ValueError that names the invalid field.
    """
    if doc.get("format") != HISTORY_FORMAT or doc.get("version") != HISTORY_FORMAT_VERSION:
        raise ValueError(
            f"not a {HISTORY_FORMAT} version {HISTORY_FORMAT_VERSION} document: "
            f"format={doc.get('format')!r}, version={doc.get('version')!r}"
        )
    operations = []
    for i, item in enumerate(doc.get("operations", [])):
        where = f"operations[{i}]"
        try:
            return_time = item.get("return_time")
            operation = Operation(
                client_id=int(item["client_id"]),
                op_id=int(item["op_id"]),
                call_time=float(item["call_time"]),
                return_time=math.inf if return_time is None else float(return_time),
                input=_input_from_json(item["input"], f"{where}.input"),
                output=_output_from_json(item.get("output"), f"{where}.output"),
                status=OpStatus(item["status"]),
            )
        except KeyError as error:
            raise ValueError(f"{where}: missing field {error}") from error
        except (TypeError, AttributeError) as error:
            raise ValueError(f"{where}: invalid record {item!r}: {error}") from error
        operations.append(operation)
    return operations


def save_history(path: str | Path, operations: Sequence[Operation]) -> None:
    Path(path).write_text(json.dumps(history_to_json(operations), indent=1), encoding="utf-8")


def load_history(path: str | Path) -> list[Operation]:
    return history_from_json(json.loads(Path(path).read_text(encoding="utf-8")))


# --- Generated histories ---


def generate_linearizable_history(
    rng: random.Random,
    *,
    client_count: int,
    key_count: int,
    operation_count: int,
    latency_max: float = 1.0,
    think_time_max: float = 0.5,
    txn_ratio: float = 0.0,
    unknown_ratio: float = 0.0,
    failed_ratio: float = 0.0,
) -> list[Operation]:
    """Build a random history that is linearizable by construction.

    Each client runs its operations one after another. Every operation gets a
    linearization point inside its call interval, and the operations are applied
    to a plain dict in the order of those points, which sets their outputs. An
    `unknown` operation takes effect at its point or not at all, with equal
    odds, and a `failed` one never does. Inputs are about 40% gets, 30% puts, 8%
    deletes and 22% cas, after `txn_ratio` of two-key txns. Every write has a
    value of its own. Op ids follow call time.
    """
    if client_count < 1 or key_count < 1 or operation_count < 0:
        raise ValueError(
            f"invalid generator settings: client_count and key_count must be at least 1 "
            f"and operation_count at least 0, got {client_count}, {key_count}, "
            f"{operation_count}"
        )
    slots: list[tuple[float, int, float, float]] = []
    for client_id in range(client_count):
        count = operation_count // client_count + (client_id < operation_count % client_count)
        now = rng.uniform(0.0, think_time_max)
        for _ in range(count):
            call_time = now + rng.uniform(0.0, think_time_max)
            point = call_time + rng.uniform(0.0, latency_max)
            return_time = point + rng.uniform(0.0, latency_max)
            slots.append((point, client_id, call_time, return_time))
            now = return_time
    slots.sort()

    keys = [b"/k/%03d" % i for i in range(key_count)]
    store: dict[bytes, bytes] = {}
    records: list[tuple[float, int, float, Input, Output | None, OpStatus]] = []
    for sequence_number, (_, client_id, call_time, return_time) in enumerate(slots):
        op_input = _random_input(rng, keys, store, sequence_number, txn_ratio)
        roll = rng.random()
        if roll < failed_ratio:
            records.append((call_time, client_id, return_time, op_input, None, OpStatus.FAILED))
        elif roll < failed_ratio + unknown_ratio:
            if rng.random() < 0.5:
                _apply_to_dict(store, op_input)
            records.append((call_time, client_id, math.inf, op_input, None, OpStatus.UNKNOWN))
        else:
            output = _apply_to_dict(store, op_input)
            records.append((call_time, client_id, return_time, op_input, output, OpStatus.OK))

    records.sort(key=lambda record: record[0])
    return [
        Operation(client_id, op_id, call_time, return_time, op_input, output, status)
        for op_id, (call_time, client_id, return_time, op_input, output, status) in enumerate(
            records
        )
    ]


def _random_input(
    rng: random.Random, keys: list[bytes], store: dict[bytes, bytes], sequence_number: int,
    txn_ratio: float,
) -> Input:
    key = rng.choice(keys)
    new_value = b"v%d" % sequence_number
    if len(keys) >= 2 and rng.random() < txn_ratio:
        first, second = rng.sample(keys, 2)
        guess = store.get(first) if rng.random() < 0.5 else rng.choice([None, b"v0"])
        return Txn(
            compares=(Compare(first, "=", guess),),
            success=(Put(first, new_value), Put(second, new_value + b"b"), Get(second)),
            failure=(Get(first), Get(second)),
        )
    roll = rng.random()
    if roll < 0.40:
        return Get(key)
    if roll < 0.70:
        return Put(key, new_value)
    if roll < 0.78:
        return Delete(key)
    expected = store.get(key) if rng.random() < 0.5 else rng.choice([None, b"v0"])
    return Cas(key, expected, new_value)


def _apply_to_dict(store: dict[bytes, bytes], op_input: Input) -> Output:
    """Apply an input to a plain dict, which is the generator's sequential reference."""
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
    reads: list[Value] = []
    for item in op_input.success if succeeded else op_input.failure:
        if isinstance(item, Get):
            reads.append(store.get(item.key))
        else:
            _apply_to_dict(store, item)
    return TxnResult(succeeded, tuple(reads))
