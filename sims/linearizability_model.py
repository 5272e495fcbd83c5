"""The sequential key-value model that the linearizability search steps through."""

from __future__ import annotations

from rayconf.sims.history import (
    Cas,
    CasResult,
    Delete,
    Get,
    Operation,
    Put,
    ReadResult,
    Txn,
    TxnResult,
    Value,
)

# A model state: the values of a partition's keys, in the partition's key order.
State = tuple[Value, ...]


def _step(state: State, op: Operation, key_index: dict[bytes, int]) -> State | None:
    """Apply `op` to `state` and return the new state.

    Returns None if the operation's output differs from the model's. The output
    of an unknown operation is never compared.
    """
    op_input = op.input
    output = op.output
    if isinstance(op_input, Get):
        if isinstance(output, ReadResult) and output.value != state[key_index[op_input.key]]:
            return None
        return state
    if isinstance(op_input, Put):
        i = key_index[op_input.key]
        return state[:i] + (op_input.value,) + state[i + 1 :]
    if isinstance(op_input, Delete):
        i = key_index[op_input.key]
        return state[:i] + (None,) + state[i + 1 :]
    if isinstance(op_input, Cas):
        i = key_index[op_input.key]
        swapped = state[i] == op_input.expected
        if isinstance(output, CasResult) and output.succeeded != swapped:
            return None
        return state[:i] + (op_input.new,) + state[i + 1 :] if swapped else state
    return _step_txn(state, op_input, output, key_index)


def _step_txn(
    state: State, txn: Txn, output: object, key_index: dict[bytes, int]
) -> State | None:
    values = list(state)
    succeeded = all(
        (values[key_index[compare.key]] == compare.value) == (compare.op == "=")
        for compare in txn.compares
    )
    reads: list[Value] = []
    for item in txn.success if succeeded else txn.failure:
        i = key_index[item.key]
        if isinstance(item, Get):
            reads.append(values[i])
        elif isinstance(item, Put):
            values[i] = item.value
        else:
            values[i] = None
    if isinstance(output, TxnResult):
        if output.succeeded != succeeded or output.reads != tuple(reads):
            return None
    return tuple(values)
