"""JSON documents of histories, with `save_history` and `load_history` for files.

Bytes are base64 strings and None is null. An infinite return time is null,
because JSON has no infinity.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
    TxnOp,
    TxnResult,
    Value,
    WriteResult,
)

HISTORY_FORMAT = "rayconf-history"
HISTORY_FORMAT_VERSION = 1


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
