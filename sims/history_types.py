"""Types of history operations (inputs, outputs, `OpStatus`, `Operation`) and their text rendering.

`rayconf.sims.history` describes the three statuses and re-exports every public name here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal, Union

Value = Union[bytes, None]


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
