"""Command encoding: round trips, exact field types and typed errors for bad input."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from rayconf.errors import InvalidRequest
from rayconf.store.codec import COMMAND_FORMAT, decode_command, encode_command
from rayconf.store.records import (
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Put,
    RangeRequest,
    Txn,
)

TXN_COMMAND = Command(
    Txn(
        compares=(
            Compare(b"/k", CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"\x00\xff"),
            Compare(b"/k", CompareTarget.MOD_REVISION, CompareOp.LESS, 7),
        ),
        success=(Put(b"/k", b"v", True), DeleteRange(b"/p/", b"/p0", False)),
        failure=(RangeRequest(b"/a", None, 5, 3, True, False),),
    ),
    request_id="c:1",
    principal="svc-deploy",
    time_ms=1_700_000_000_000,
    note="roll out",
)


def command_fields(command: Command = TXN_COMMAND) -> list[Any]:
    """Return the msgpack fields of `command`, for tests that damage one field."""
    fields: list[Any] = msgpack.unpackb(encode_command(command), raw=False)
    return fields


def pack(fields: object) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def decode_error(fields: object) -> str:
    """Decode packed `fields`, expect InvalidRequest and return its message."""
    with pytest.raises(InvalidRequest) as raised:
        decode_command(pack(fields))
    return str(raised.value)


# --- Round trips. ---


@pytest.mark.parametrize(
    "command",
    [
        TXN_COMMAND,
        Command(Compact(9)),
        Command(Compact(0)),
        Command(Txn(), time_ms=2**63 - 1),
        Command(Txn(success=(RangeRequest(b"/a", b"", 0, 0, False, True),))),
        Command(Txn(compares=(Compare(b"/k", CompareTarget.VERSION, CompareOp.GREATER, -1),))),
    ],
)
def test_round_trip(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


# --- decode_command: the argument and the msgpack layer. ---


@pytest.mark.parametrize("data", ["abc", None, 5, bytearray(b"\x90"), memoryview(b"\x90")])
def test_decode_rejects_non_bytes(data: object) -> None:
    with pytest.raises(InvalidRequest) as raised:
        decode_command(data)  # type: ignore[arg-type]

    message = str(raised.value)
    assert type(data).__name__ in message
    assert "encode_command" in message


@pytest.mark.parametrize(
    ("data", "error_name", "detail"),
    [
        (b"\xc1", "FormatError", "0xc1"),
        (b"\x91" * 5000 + b"\x00", "StackError", "nested"),
        (b"", "ValueError", "incomplete input"),
        (b"\x90\x90", "ExtraData", "extra data"),
        (b"\x91\xa2\xff\xfe", "UnicodeDecodeError", "0xff"),
        (b"\x81\xc0\x01", "ValueError", "map key"),
    ],
)
def test_decode_names_msgpack_error(data: bytes, error_name: str, detail: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        decode_command(data)

    message = str(raised.value)
    assert message.startswith("command is not valid msgpack")
    assert f"{error_name}: " in message
    assert detail in message
    assert f"{len(data)} bytes" in message


def test_fuzzed_bytes_raise_invalid_request() -> None:
    valid = encode_command(TXN_COMMAND)
    generator = random.Random(20261204)
    for attempt in range(3000):
        data = bytearray(valid)
        for _ in range(generator.randint(1, 4)):
            data[generator.randrange(len(data))] = generator.randrange(256)
        if attempt % 3 == 0:
            del data[generator.randrange(len(data)) :]
        try:
            decoded = decode_command(bytes(data))
        except InvalidRequest:
            continue
        assert isinstance(decoded, Command), f"attempt {attempt}"


# --- decode_command: exact field types. ---


@pytest.mark.parametrize("format_number", [True, 1.0, 2, "1", None])
def test_decode_rejects_format_number(format_number: object) -> None:
    fields = command_fields()
    fields[0] = format_number

    message = decode_error(fields)
    assert "command format" in message
    assert repr(format_number) in message
    assert str(COMMAND_FORMAT) in message


@pytest.mark.parametrize("time_ms", [True, False, -1, 2**63, 1.5, "0", None])
def test_decode_rejects_time_ms(time_ms: object) -> None:
    fields = command_fields()
    fields[4] = time_ms

    message = decode_error(fields)
    assert "time_ms" in message
    assert repr(time_ms) in message
    assert str(2**63 - 1) in message


@pytest.mark.parametrize(
    ("index", "name"), [(2, "request_id"), (3, "principal"), (5, "note")]
)
def test_decode_rejects_non_str_text(index: int, name: str) -> None:
    fields = command_fields()
    fields[index] = b"bytes"

    message = decode_error(fields)
    assert name in message
    assert "b'bytes'" in message


@pytest.mark.parametrize(
    ("operation", "position", "name"),
    [
        (["put", b"/k", b"v", 1], 3, "prev_kv"),
        (["put", b"/k", b"v", None], 3, "prev_kv"),
        (["delete", b"/k", None, "yes"], 3, "prev_kv"),
        (["range", b"/k", None, 0, 0, 1, False], 5, "keys_only"),
        (["range", b"/k", None, 0, 0, False, 0], 6, "count_only"),
    ],
)
def test_decode_rejects_non_bool_flag(operation: list[Any], position: int, name: str) -> None:
    fields = command_fields()
    fields[1][2] = [operation]

    message = decode_error(fields)
    assert name in message
    assert repr(operation[position]) in message
    assert "True or False" in message


@pytest.mark.parametrize(
    ("operation", "name", "bad_value"),
    [
        (["range", b"/k", None, True, 0, False, False], "limit", True),
        (["range", b"/k", None, -1, 0, False, False], "limit", -1),
        (["range", b"/k", None, 0, 1.0, False, False], "revision", 1.0),
        (["range", b"/k", None, 0, -5, False, False], "revision", -5),
    ],
)
def test_decode_rejects_bad_range_number(operation: list[Any], name: str, bad_value: object) -> None:
    fields = command_fields()
    fields[1][3] = [operation]

    message = decode_error(fields)
    assert name in message
    assert repr(bad_value) in message


@pytest.mark.parametrize(
    "operation",
    [
        ["put", "/k", b"v", False],
        ["put", b"/k", "v", False],
        ["put", b"/k", b"v"],
        ["delete", b"/k", 5, False],
        ["range", b"/k", None, 0, 0, False],
        ["scan", b"/k"],
        [7],
        [],
        "put",
    ],
)
def test_decode_rejects_malformed_operation(operation: object) -> None:
    fields = command_fields()
    fields[1][2] = [operation]

    message = decode_error(fields)
    assert "txn success[0]" in message


@pytest.mark.parametrize("revision", [True, -1, 1.0, None])
def test_decode_rejects_compact_revision(revision: object) -> None:
    fields = command_fields(Command(Compact(4)))
    fields[1][1] = revision

    message = decode_error(fields)
    assert "compact revision" in message
    assert repr(revision) in message


@pytest.mark.parametrize(
    "compare",
    [
        [b"/k", "value", "=", 5],
        [b"/k", "version", "=", b"5"],
        [b"/k", "version", "=", True],
        [b"/k", "size", "=", 5],
        [b"/k", "version", "~", 5],
        [b"/k", ["value"], "=", b"v"],
        ["/k", "value", "=", b"v"],
    ],
)
def test_decode_rejects_malformed_compare(compare: list[Any]) -> None:
    fields = command_fields()
    fields[1][1] = [compare]

    message = decode_error(fields)
    assert "compare" in message


def test_decode_messages_name_type() -> None:
    fields = command_fields()
    fields[4] = True

    message = decode_error(fields)
    assert "bool" in message


# --- encode_command. ---


@pytest.mark.parametrize(
    ("compare", "field", "enum_name"),
    [
        (Compare(b"/k", "value", CompareOp.EQUAL, b"v"), "target", "CompareTarget"),  # type: ignore[arg-type]
        (Compare(b"/k", CompareTarget.VALUE, "=", b"v"), "op", "CompareOp"),  # type: ignore[arg-type]
        (Compare(b"/k", None, None, b"v"), "target", "CompareTarget"),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_non_member_compare(compare: Compare, field: str, enum_name: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        encode_command(Command(Txn(compares=(compare,))))

    message = str(raised.value)
    assert f"txn compares[0] {field} is" in message
    assert f"expected a {enum_name} member" in message


@pytest.mark.parametrize(
    "command",
    [
        Command(Txn(success=(Put(b"/k", b"v", 1),))),  # type: ignore[arg-type]
        Command(Txn(success=(RangeRequest(b"/k", None, -1),))),
        Command(Txn(success=(RangeRequest(b"/k", None, 0, 2**64),))),
        Command(Txn(success=("put",))),  # type: ignore[arg-type]
        Command(Txn(compares=("compare",))),  # type: ignore[arg-type]
        Command(Txn(success=None)),  # type: ignore[arg-type]
        Command("txn"),  # type: ignore[arg-type]
        Command(Compact(True)),
        Command(Txn(), time_ms=-1),
        Command(Txn(), note="\udc80"),
    ],
)
def test_encode_rejects_what_decode_rejects(command: Command) -> None:
    with pytest.raises(InvalidRequest):
        encode_command(command)


def test_encode_rejects_non_command() -> None:
    with pytest.raises(InvalidRequest) as raised:
        encode_command(Txn())  # type: ignore[arg-type]

    assert "Txn" in str(raised.value)
