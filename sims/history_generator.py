"""Random histories that are linearizable by construction, for checker tests and benchmarks."""

from __future__ import annotations

import math
import random

from rayconf.sims.history_types import (
    Cas,
    CasResult,
    Compare,
    Delete,
    Get,
    Input,
    Operation,
    OpStatus,
    Output,
    Put,
    ReadResult,
    Txn,
    TxnResult,
    Value,
    WriteResult,
)


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
