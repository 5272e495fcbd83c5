"""Binary encoding of commands for the Raft log and the write-ahead log.

Commands are encoded as msgpack arrays with a leading format number. msgpack
carries bytes as bytes, so keys and values need no escaping, and decoding
builds only plain lists, numbers, strings and bytes: nothing on disk is
pickled, and a damaged or hostile entry cannot run code. `decode_command`
checks the exact type of every field and raises `InvalidRequest` naming the
field. `encode_command` applies the same checks before it encodes, so every
replica can decode every entry that a leader proposes.
"""

from __future__ import annotations

from typing import Any, NoReturn

import msgpack

from rayconf.errors import InvalidRequest
from rayconf.store.records import (
    AuthChange,
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

# The integer range of msgpack: int64 for negative numbers, uint64 for the rest.
_MSGPACK_INT_MIN = -(2**63)
_MSGPACK_INT_MAX = 2**64 - 1
# time_ms is milliseconds since the Unix epoch in a signed 64-bit integer.
TIME_MS_MAX = 2**63 - 1

_SHOWN_CHARS_MAX = 120

# msgpack raises these errors with an empty message (seen with msgpack 1.2.4), so
# the decoder adds its own detail.
_UNPACK_ERROR_DETAILS: dict[type[Exception], str] = {
    msgpack.exceptions.FormatError: "the data contains a byte that msgpack does not define, such as 0xc1",
    msgpack.exceptions.StackError: "arrays or maps are nested deeper than msgpack's limit",
}


def encode_command(command: Command) -> bytes:
    """Encode `command` as msgpack bytes that `decode_command` accepts.

    Raises `InvalidRequest` when `command` has a field that `decode_command`
    would reject, such as a non-bool `prev_kv` or a Compare target that is not
    a `CompareTarget` member.
    """
    fields = _command_fields(command)
    # A committed entry that some replica cannot decode would be skipped, so the
    # decoder's checks run here, before the command enters the log.
    _parse_command(fields)
    try:
        encoded: bytes = msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # The checks above leave only text that UTF-8 cannot encode, such as a lone surrogate.
        raise InvalidRequest(
            f"cannot encode command {_show(command)}: {type(exc).__name__}: {exc}. "
            "Give request_id, principal and note as valid Unicode text"
        ) from exc
    return encoded


def decode_command(data: bytes) -> Command:
    """Decode bytes from `encode_command`.

    Raises `InvalidRequest` when `data` is not bytes, is not msgpack, or has a
    field of the wrong type or range. Integer fields must be `int` and flags
    must be `bool`, with no conversion.
    """
    if not isinstance(data, bytes):
        raise InvalidRequest(
            f"decode_command takes bytes, got {type(data).__name__} {_show(data)}. "
            "Pass the bytes that encode_command returned"
        )
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except ValueError as exc:
        # FormatError, StackError, ExtraData and UnicodeDecodeError all derive from ValueError.
        detail = str(exc) or _UNPACK_ERROR_DETAILS.get(type(exc), "msgpack gave no detail")
        raise InvalidRequest(
            f"command is not valid msgpack: {type(exc).__name__}: {detail}. Input ({len(data)} bytes): "
            f"{_show(data)}. Pass only bytes that encode_command returned"
        ) from exc
    return _parse_command(fields)


# --- Encoding: records to msgpack fields. ---


def _command_fields(command: object) -> list[Any]:
    if not isinstance(command, Command):
        raise InvalidRequest(f"encode_command takes a Command, got {type(command).__name__} {_show(command)}")
    body = command.body
    if isinstance(body, Compact):
        encoded_body: list[Any] = ["compact", body.revision]
    elif isinstance(body, AuthChange):
        encoded_body = ["auth", body.action, body.name, body.role, body.key, body.range_end, body.permission,
                        body.password_hash, body.salt, body.secret]
    elif isinstance(body, Txn):
        compares = _sequence("txn compares", body.compares)
        success = _sequence("txn success", body.success)
        failure = _sequence("txn failure", body.failure)
        encoded_body = [
            "txn",
            [_compare_fields(f"compares[{index}]", item) for index, item in enumerate(compares)],
            [_operation_fields(f"success[{index}]", item) for index, item in enumerate(success)],
            [_operation_fields(f"failure[{index}]", item) for index, item in enumerate(failure)],
        ]
    else:
        raise InvalidRequest(f"command body is {type(body).__name__} {_show(body)}, expected a Txn, Compact or AuthChange")
    return [COMMAND_FORMAT, encoded_body, command.request_id, command.principal, command.time_ms, command.note]


def _sequence(field: str, items: object) -> tuple[Any, ...] | list[Any]:
    if not isinstance(items, (tuple, list)):
        raise InvalidRequest(f"{field} is {type(items).__name__} {_show(items)}, expected a tuple")
    return items


def _compare_fields(field: str, compare: object) -> list[Any]:
    if not isinstance(compare, Compare):
        raise InvalidRequest(f"txn {field} is {type(compare).__name__} {_show(compare)}, expected a Compare")
    if not isinstance(compare.target, CompareTarget):
        raise InvalidRequest(
            f"txn {field} target is {_show(compare.target)}, expected a CompareTarget member "
            "such as CompareTarget.VALUE"
        )
    if not isinstance(compare.op, CompareOp):
        raise InvalidRequest(
            f"txn {field} op is {_show(compare.op)}, expected a CompareOp member such as CompareOp.EQUAL"
        )
    return [compare.key, compare.target.value, compare.op.value, compare.operand]


def _operation_fields(field: str, operation: object) -> list[Any]:
    if isinstance(operation, Put):
        return ["put", operation.key, operation.value, operation.prev_kv]
    if isinstance(operation, DeleteRange):
        return ["delete", operation.key, operation.range_end, operation.prev_kv]
    if isinstance(operation, RangeRequest):
        return [
            "range",
            operation.key,
            operation.range_end,
            operation.limit,
            operation.revision,
            operation.keys_only,
            operation.count_only,
        ]
    raise InvalidRequest(
        f"txn {field} is {type(operation).__name__} {_show(operation)}, expected a Put, DeleteRange or RangeRequest"
    )


# --- Decoding: msgpack fields to records, with exact type checks. ---


def _parse_command(fields: object) -> Command:
    items = _list("command", fields, 6, "[format, body, request_id, principal, time_ms, note]")
    format_number, body, request_id, principal, time_ms, note = items
    if type(format_number) is not int or format_number != COMMAND_FORMAT:
        _reject("command format", format_number, f"the int {COMMAND_FORMAT}, the only format this build reads")
    body_items = _list("command body", body, None, "['txn', ...] or ['compact', revision]")
    kind = body_items[0]
    if kind == "compact":
        revision = _list("compact body", body_items, 2, "['compact', revision]")[1]
        decoded_body: Txn | Compact | AuthChange = Compact(_int("compact revision", revision, 0, _MSGPACK_INT_MAX))
    elif kind == "auth":
        decoded_body = _parse_auth_change(body_items)
    elif kind == "txn":
        _, compares, success, failure = _list("txn body", body_items, 4, "['txn', compares, success, failure]")
        compare_items = _list("txn compares", compares, None, "of compares", empty=True)
        success_items = _list("txn success", success, None, "of operations", empty=True)
        failure_items = _list("txn failure", failure, None, "of operations", empty=True)
        decoded_body = Txn(
            compares=tuple(_parse_compare(f"compares[{index}]", item) for index, item in enumerate(compare_items)),
            success=tuple(_parse_operation(f"success[{index}]", item) for index, item in enumerate(success_items)),
            failure=tuple(_parse_operation(f"failure[{index}]", item) for index, item in enumerate(failure_items)),
        )
    else:
        _reject("command body kind", kind, "'txn', 'compact' or 'auth'")
    return Command(
        decoded_body,
        request_id=_str("request_id", request_id),
        principal=_str("principal", principal),
        time_ms=_int("time_ms", time_ms, 0, TIME_MS_MAX),
        note=_str("note", note),
    )


def _parse_auth_change(items: list[Any]) -> AuthChange:
    shape = "['auth', action, name, role, key, range_end, permission, password_hash, salt, secret]"
    _, action, name, role, key, range_end, permission, password_hash, salt, secret = _list(
        "auth body", items, 10, shape)
    return AuthChange(
        _str("auth action", action),
        name=_str("auth name", name),
        role=_str("auth role", role),
        key=_bytes("auth key", key),
        range_end=_optional_bytes("auth range_end", range_end),
        permission=_str("auth permission", permission),
        password_hash=_bytes("auth password_hash", password_hash),
        salt=_bytes("auth salt", salt),
        secret=_bytes("auth secret", secret),
    )


def _parse_compare(field: str, item: object) -> Compare:
    key, target_value, op_value, operand = _list(f"txn {field}", item, 4, "[key, target, op, operand]")
    target = _enum_member(f"txn {field} target", CompareTarget, target_value)
    op = _enum_member(f"txn {field} op", CompareOp, op_value)
    decoded_operand: bytes | int
    if target is CompareTarget.VALUE:
        decoded_operand = _bytes(f"txn {field} operand", operand)
    else:
        decoded_operand = _int(f"txn {field} operand", operand, _MSGPACK_INT_MIN, _MSGPACK_INT_MAX)
    return Compare(_bytes(f"txn {field} key", key), target, op, decoded_operand)


def _parse_operation(field: str, item: object) -> Operation:
    kind = _list(f"txn {field}", item, None, "['put' | 'delete' | 'range', ...]")[0]
    if kind == "put":
        _, key, value, prev_kv = _list(f"txn {field} put", item, 4, "['put', key, value, prev_kv]")
        return Put(
            _bytes(f"txn {field} put key", key),
            _bytes(f"txn {field} put value", value),
            _bool(f"txn {field} put prev_kv", prev_kv),
        )
    if kind == "delete":
        _, key, range_end, prev_kv = _list(f"txn {field} delete", item, 4, "['delete', key, range_end, prev_kv]")
        return DeleteRange(
            _bytes(f"txn {field} delete key", key),
            _optional_bytes(f"txn {field} delete range_end", range_end),
            _bool(f"txn {field} delete prev_kv", prev_kv),
        )
    if kind == "range":
        shape = "['range', key, range_end, limit, revision, keys_only, count_only]"
        _, key, range_end, limit, revision, keys_only, count_only = _list(f"txn {field} range", item, 7, shape)
        return RangeRequest(
            _bytes(f"txn {field} range key", key),
            _optional_bytes(f"txn {field} range range_end", range_end),
            _int(f"txn {field} range limit", limit, 0, _MSGPACK_INT_MAX),
            _int(f"txn {field} range revision", revision, 0, _MSGPACK_INT_MAX),
            _bool(f"txn {field} range keys_only", keys_only),
            _bool(f"txn {field} range count_only", count_only),
        )
    _reject(f"txn {field} kind", kind, "'put', 'delete' or 'range'")


def _list(field: str, value: object, length: int | None, shape: str, *, empty: bool = False) -> list[Any]:
    """Return `value` if it is a list of `length` items, or of any length when `length` is None.

    An empty list passes only when `empty` is set.
    """
    if type(value) is not list:
        _reject(field, value, f"a list {shape}")
    if length is not None and len(value) != length:
        _reject(field, value, f"a list of {length} items {shape}")
    if not value and not empty:
        _reject(field, value, f"a non-empty list {shape}")
    return value


def _int(field: str, value: object, minimum: int, maximum: int) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        _reject(field, value, f"an int in {minimum}..{maximum}")
    return value


def _bool(field: str, value: object) -> bool:
    if type(value) is not bool:
        _reject(field, value, "True or False")
    return value


def _bytes(field: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        _reject(field, value, "bytes")
    return value


def _optional_bytes(field: str, value: object) -> bytes | None:
    if value is not None and not isinstance(value, bytes):
        _reject(field, value, "bytes or None")
    return value


def _str(field: str, value: object) -> str:
    if not isinstance(value, str):
        _reject(field, value, "a str")
    return value


def _enum_member(field: str, enum_type: type[CompareTarget] | type[CompareOp], value: object) -> Any:
    values = [member.value for member in enum_type]
    if not isinstance(value, str) or value not in values:
        _reject(field, value, f"one of {values}")
    return enum_type(value)


def _reject(field: str, value: object, expected: str) -> NoReturn:
    raise InvalidRequest(f"invalid {field} in command: {_show(value)} ({type(value).__name__}), expected {expected}")


def _show(value: object) -> str:
    shown = repr(value)
    if len(shown) > _SHOWN_CHARS_MAX:
        shown = shown[: _SHOWN_CHARS_MAX - 3] + "..."
    return shown


# --- Range requests on their own, for the stores' read channel. ---


def range_request_fields(request: RangeRequest) -> list[Any]:
    """Return `request` as the msgpack-ready list that `parse_range_request` reads."""
    return _operation_fields("read", request)


def parse_range_request(fields: object) -> RangeRequest:
    """Rebuild a `RangeRequest` from `range_request_fields` output, checking every field's type."""
    operation = _parse_operation("read", fields)
    if not isinstance(operation, RangeRequest):
        _reject("read kind", type(operation).__name__, "'range'")
    return operation
