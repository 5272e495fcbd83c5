"""Binary encoding of commands for the Raft log and the write-ahead log.

Commands are encoded as msgpack arrays with a leading format number. msgpack
carries bytes as bytes, so keys and values need no escaping, and decoding
builds only plain lists, numbers, strings and bytes: nothing on disk is
pickled, and a damaged or hostile entry cannot run code. `decode_command`
checks the shape of every field and raises `InvalidRequest` naming the field.
"""

from __future__ import annotations

from typing import Any

import msgpack

from rayconf.errors import InvalidRequest
from rayconf.store.records import (
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Operation,
    Put,
    RangeRequest,
    Txn,
)

COMMAND_FORMAT = 1


def encode_command(command: Command) -> bytes:
    body = command.body
    if isinstance(body, Compact):
        encoded_body: list[Any] = ["compact", body.revision]
    else:
        encoded_body = [
            "txn",
            [[c.key, c.target.value, c.op.value, c.operand] for c in body.compares],
            [_encode_operation(op) for op in body.success],
            [_encode_operation(op) for op in body.failure],
        ]
    fields = [COMMAND_FORMAT, encoded_body, command.request_id, command.principal, command.time_ms, command.note]
    encoded: bytes = msgpack.packb(fields, use_bin_type=True)
    return encoded


def _encode_operation(operation: Operation) -> list[Any]:
    if isinstance(operation, Put):
        return ["put", operation.key, operation.value, operation.prev_kv]
    if isinstance(operation, DeleteRange):
        return ["delete", operation.key, operation.range_end, operation.prev_kv]
    return [
        "range",
        operation.key,
        operation.range_end,
        operation.limit,
        operation.revision,
        operation.keys_only,
        operation.count_only,
    ]


def decode_command(data: bytes) -> Command:
    """Decode bytes from `encode_command`; raise `InvalidRequest` on any malformed field."""
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as exc:
        raise InvalidRequest(f"command is not valid msgpack: {exc}") from exc
    _expect(isinstance(fields, list) and len(fields) == 6, "command", fields)
    format_number, body, request_id, principal, time_ms, note = fields
    _expect(format_number == COMMAND_FORMAT, "command format", format_number)
    _expect(isinstance(body, list) and bool(body), "command body", body)
    for name, value in (("request_id", request_id), ("principal", principal), ("note", note)):
        _expect(isinstance(value, str), name, value)
    _expect(isinstance(time_ms, int), "time_ms", time_ms)

    kind = body[0]
    if kind == "compact":
        _expect(len(body) == 2 and isinstance(body[1], int), "compact body", body)
        decoded_body: Txn | Compact = Compact(body[1])
    elif kind == "txn":
        _expect(len(body) == 4 and all(isinstance(part, list) for part in body[1:]), "txn body", body)
        decoded_body = Txn(
            compares=tuple(_decode_compare(item) for item in body[1]),
            success=tuple(_decode_operation(item) for item in body[2]),
            failure=tuple(_decode_operation(item) for item in body[3]),
        )
    else:
        raise InvalidRequest(f"command body kind {kind!r} is unknown; expected 'txn' or 'compact'")
    return Command(decoded_body, request_id=request_id, principal=principal, time_ms=time_ms, note=note)


def _decode_compare(item: Any) -> Compare:
    _expect(isinstance(item, list) and len(item) == 4, "compare", item)
    key, target, op, operand = item
    _expect(isinstance(key, bytes), "compare key", key)
    try:
        return Compare(key, CompareTarget(target), CompareOp(op), operand)
    except ValueError as exc:
        raise InvalidRequest(f"compare {item!r} has an unknown target or operator: {exc}") from exc


def _decode_operation(item: Any) -> Operation:
    _expect(isinstance(item, list) and bool(item), "txn operation", item)
    kind = item[0]
    if kind == "put":
        _expect(len(item) == 4 and isinstance(item[1], bytes) and isinstance(item[2], bytes), "put", item)
        return Put(item[1], item[2], bool(item[3]))
    if kind == "delete":
        _expect(len(item) == 4 and isinstance(item[1], bytes), "delete", item)
        _expect(item[2] is None or isinstance(item[2], bytes), "delete range_end", item[2])
        return DeleteRange(item[1], item[2], bool(item[3]))
    if kind == "range":
        _expect(len(item) == 7 and isinstance(item[1], bytes), "range", item)
        _expect(item[2] is None or isinstance(item[2], bytes), "range range_end", item[2])
        _expect(isinstance(item[3], int) and isinstance(item[4], int), "range limit and revision", item)
        return RangeRequest(item[1], item[2], item[3], item[4], bool(item[5]), bool(item[6]))
    raise InvalidRequest(f"txn operation kind {kind!r} is unknown; expected 'put', 'delete' or 'range'")


def _expect(condition: bool, what: str, value: object) -> None:
    if not condition:
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        raise InvalidRequest(f"malformed {what} in encoded command: {shown}")
