"""Operations of simulated clients, and their mapping to store requests and history records.

Keys come in groups of two (`/sim/g0/a`, `/sim/g0/b`, ...). Txns and ranges stay
inside one group, so the linearizability checker, which joins the keys that one
operation touches into one partition, checks one small partition per group
instead of one partition over every key.

The operations and their records in the history:

- get: a linearizable read of one key through ReadIndex; a `Get`.
- range: a linearizable read of a whole group through ReadIndex; a `Txn` without
  compares whose success branch gets both keys.
- put and delete: a one-operation txn through the log; a `Put` or `Delete`.
- cas: a txn that puts only if the value is as expected (a version compare of 0
  for "absent"); a `Cas`.
- txn: if the first key has an expected value, put both keys and read the second,
  else read both; a `Txn`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from rayconf.errors import RayconfError
from rayconf.sims import history
from rayconf.store.keys import prefix_end
from rayconf.store.records import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Operation,
    Put,
    RangeRequest,
    RangeResponse,
    Txn,
    TxnResponse,
)

logger = logging.getLogger(__name__)

KEY_PREFIX = b"/sim/"

# Relative weights of the operation kinds that clients draw.
OPERATION_WEIGHTS: dict[str, int] = {"get": 30, "range": 10, "put": 25, "delete": 5, "cas": 18, "txn": 12}


def group_prefix(group: int) -> bytes:
    return KEY_PREFIX + b"g%d/" % group


def group_keys(group: int) -> tuple[bytes, bytes]:
    prefix = group_prefix(group)
    return prefix + b"a", prefix + b"b"


def all_keys(group_count: int) -> list[bytes]:
    return [key for group in range(group_count) for key in group_keys(group)]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A linearizable read that a node serves from its state after ReadIndex."""

    range: RangeRequest
    # Keys whose values the history records, in order.
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A txn that goes through the Raft log."""

    txn: Txn


Request = ReadRequest | WriteRequest


class Workload:
    """A source of random client operations whose writes each carry a value of their own.

    `known_values` contains the latest value a client saw for each key, so that cas
    and txn compares succeed often enough to matter.
    """

    __slots__ = ("rng", "group_count", "known_values", "_weights", "_kinds")

    def __init__(self, rng: random.Random, group_count: int) -> None:
        assert group_count >= 1, "a workload needs at least one key group"
        self.rng = rng
        self.group_count = group_count
        self.known_values: dict[bytes, bytes | None] = {}
        self._kinds = list(OPERATION_WEIGHTS)
        self._weights = [OPERATION_WEIGHTS[kind] for kind in self._kinds]

    def next_input(self, value_tag: str) -> history.Input:
        """Draw one operation; `value_tag` makes the values it writes unique in the run."""
        rng = self.rng
        kind = rng.choices(self._kinds, self._weights)[0]
        group = rng.randrange(self.group_count)
        first, second = group_keys(group)
        key = first if rng.random() < 0.5 else second
        value = value_tag.encode()
        if kind == "get":
            return history.Get(key)
        if kind == "range":
            return history.Txn(compares=(), success=(history.Get(first), history.Get(second)))
        if kind == "put":
            return history.Put(key, value)
        if kind == "delete":
            return history.Delete(key)
        if kind == "cas":
            return history.Cas(key, self._guess(key), value)
        guard = history.Compare(first, "=", self._guess(first))
        return history.Txn(
            compares=(guard,),
            success=(history.Put(first, value), history.Put(second, value + b"b"), history.Get(second)),
            failure=(history.Get(first), history.Get(second)),
        )

    def _guess(self, key: bytes) -> bytes | None:
        if self.rng.random() < 0.8:
            return self.known_values.get(key)
        return None

    def observe(self, op_input: history.Input, output: history.Output) -> None:
        """Remember the values an operation read or wrote, for later guesses."""
        if isinstance(op_input, history.Get) and isinstance(output, history.ReadResult):
            self.known_values[op_input.key] = output.value
        elif isinstance(op_input, history.Put):
            self.known_values[op_input.key] = op_input.value
        elif isinstance(op_input, history.Delete):
            self.known_values[op_input.key] = None
        elif isinstance(op_input, history.Cas) and isinstance(output, history.CasResult):
            if output.succeeded:
                self.known_values[op_input.key] = op_input.new


# --- Mapping to store requests ---


def to_request(op_input: history.Input) -> Request:
    """Return the store request that carries out `op_input`."""
    if isinstance(op_input, history.Get):
        return ReadRequest(RangeRequest(op_input.key), (op_input.key,))
    if isinstance(op_input, history.Put):
        return WriteRequest(Txn(success=(Put(op_input.key, op_input.value),)))
    if isinstance(op_input, history.Delete):
        return WriteRequest(Txn(success=(DeleteRange(op_input.key),)))
    if isinstance(op_input, history.Cas):
        compare = _value_compare(op_input.key, op_input.expected)
        return WriteRequest(Txn(compares=(compare,), success=(Put(op_input.key, op_input.new),)))
    if not op_input.compares and all(isinstance(item, history.Get) for item in op_input.success):
        keys = tuple(item.key for item in op_input.success)
        prefix = _common_group_prefix(keys)
        return ReadRequest(RangeRequest(prefix, prefix_end(prefix)), keys)
    compares = []
    for guard in op_input.compares:
        assert guard.op == "=", "the store has no compare for 'absent or different'; use '='"
        compares.append(_value_compare(guard.key, guard.value))
    return WriteRequest(
        Txn(
            compares=tuple(compares),
            success=tuple(_to_operation(item) for item in op_input.success),
            failure=tuple(_to_operation(item) for item in op_input.failure),
        )
    )


def _value_compare(key: bytes, expected: bytes | None) -> Compare:
    if expected is None:
        return Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)
    return Compare(key, CompareTarget.VALUE, CompareOp.EQUAL, expected)


def _to_operation(item: history.TxnOp) -> Operation:
    if isinstance(item, history.Get):
        return RangeRequest(item.key)
    if isinstance(item, history.Put):
        return Put(item.key, item.value)
    return DeleteRange(item.key)


def _common_group_prefix(keys: tuple[bytes, ...]) -> bytes:
    prefix = keys[0].rsplit(b"/", 1)[0] + b"/"
    assert all(key.startswith(prefix) for key in keys), f"range keys {keys} span several groups"
    return prefix


# --- Mapping store results to history outputs ---


def read_output(op_input: history.Input, request: ReadRequest, response: RangeResponse) -> history.Output:
    values = {kv.key: kv.value for kv in response.kvs}
    reads = tuple(values.get(key) for key in request.keys)
    if isinstance(op_input, history.Get):
        return history.ReadResult(reads[0])
    return history.TxnResult(True, reads)


def write_output(op_input: history.Input, result: TxnResponse | RayconfError) -> history.Output | None:
    """Return the history output of an applied write, or None when it cannot be known.

    A duplicate (a retry whose request id was applied before) carries no read
    responses, so a txn that reads gets None and is recorded as unknown.
    """
    if isinstance(result, RayconfError):
        raise AssertionError(f"the store rejected a simulated request {op_input}: {result}")
    if isinstance(op_input, (history.Put, history.Delete)):
        return history.WriteResult()
    if isinstance(op_input, history.Cas):
        return history.CasResult(result.succeeded)
    assert isinstance(op_input, history.Txn)
    branch = op_input.success if result.succeeded else op_input.failure
    gets = [item for item in branch if isinstance(item, history.Get)]
    if result.duplicate and gets:
        return None
    reads: list[bytes | None] = []
    for item, response in zip(branch, result.responses):
        if isinstance(item, history.Get):
            assert isinstance(response, RangeResponse)
            reads.append(response.kvs[0].value if response.kvs else None)
    return history.TxnResult(result.succeeded, tuple(reads))


def written_values(op_input: history.Input, output: history.Output) -> list[tuple[bytes, bytes | None]]:
    """Return the (key, value) pairs an acknowledged write set; None for a delete."""
    if isinstance(op_input, history.Put):
        return [(op_input.key, op_input.value)]
    if isinstance(op_input, history.Delete):
        return [(op_input.key, None)]
    if isinstance(op_input, history.Cas) and isinstance(output, history.CasResult):
        return [(op_input.key, op_input.new)] if output.succeeded else []
    if isinstance(op_input, history.Txn) and isinstance(output, history.TxnResult):
        branch = op_input.success if output.succeeded else op_input.failure
        final: dict[bytes, bytes | None] = {}
        for item in branch:
            if isinstance(item, history.Put):
                final[item.key] = item.value
            elif isinstance(item, history.Delete):
                final[item.key] = None
        return list(final.items())
    return []
