"""The JSON form of a transaction that `rayconf txn` reads.

    {
      "compare": [{"key": "/app/mode", "target": "value", "op": "=", "value": "blue"}],
      "success": [{"put": "/app/mode", "value": "green"}, {"get": "/app/", "prefix": true}],
      "failure": [{"get": "/app/mode"}]
    }

`target` is one of value, version, create_revision, mod_revision; `op` one of
= != < >. A compare on value takes `value` (text) or `value_base64`, the others
take an integer `value`. Operations are `put` (with `value` or
`value_base64`), `delete` and `get`, the last two with an optional `prefix`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from rayconf.clients.client import to_key
from rayconf.errors import InvalidRequest
from rayconf.store.keys import prefix_end, validate_directory
from rayconf.store.records import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Operation,
    Put,
    RangeRequest,
    Txn,
)


def parse_txn_document(text: str) -> Txn:
    """Parse the JSON document into a `Txn`; raise `InvalidRequest` naming the bad field."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidRequest(f"txn document is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise InvalidRequest("txn document must be a JSON object with compare, success and failure lists")
    unknown = set(document) - {"compare", "success", "failure"}
    if unknown:
        raise InvalidRequest(f"txn document has unknown fields {sorted(unknown)}; use compare, success, failure")
    return Txn(
        compares=tuple(_compare(item, f"compare[{n}]") for n, item in enumerate(_list(document, "compare"))),
        success=tuple(_operation(item, f"success[{n}]") for n, item in enumerate(_list(document, "success"))),
        failure=tuple(_operation(item, f"failure[{n}]") for n, item in enumerate(_list(document, "failure"))),
    )


def _list(document: dict[str, Any], name: str) -> list[Any]:
    value = document.get(name, [])
    if not isinstance(value, list):
        raise InvalidRequest(f"txn document field {name!r} must be a list, got {type(value).__name__}")
    return value


def _compare(item: Any, where: str) -> Compare:
    if not isinstance(item, dict) or "key" not in item:
        raise InvalidRequest(f"{where} must be an object with key, target, op and value")
    _only(item, {"key", "target", "op", "value", "value_base64"}, where)
    try:
        target = CompareTarget(item.get("target", "value"))
        op = CompareOp(item.get("op", "="))
    except ValueError as error:
        raise InvalidRequest(f"{where}: {error}; targets are value, version, create_revision, mod_revision "
                             "and ops are = != < >") from error
    if target is CompareTarget.VALUE:
        operand: bytes | int = _value(item, where)
    else:
        number = item.get("value")
        if not isinstance(number, int) or isinstance(number, bool):
            raise InvalidRequest(f"{where}: a compare on {target.value} needs an integer value, got {number!r}")
        operand = number
    return Compare(_key(item["key"], where), target, op, operand)


def _operation(item: Any, where: str) -> Operation:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object such as {{\"put\": \"/k\", \"value\": \"v\"}}")
    kinds = [kind for kind in ("put", "delete", "get") if kind in item]
    if len(kinds) != 1:
        raise InvalidRequest(f"{where} must have exactly one of put, delete or get")
    kind = kinds[0]
    _only(item, {kind, "value", "value_base64"} if kind == "put" else {kind, "prefix"}, where)
    prefix = item.get("prefix", False)
    if not isinstance(prefix, bool):
        raise InvalidRequest(f"{where}: prefix is {prefix!r}; give true or false")
    if kind == "put":
        return Put(_key(item["put"], where), _value(item, where))
    start = _prefix(item[kind], where) if prefix else _key(item[kind], where)
    end = prefix_end(start) if prefix else None
    if kind == "delete":
        return DeleteRange(start, end)
    return RangeRequest(start, end)


def _key(path: Any, where: str) -> bytes:
    if not isinstance(path, str):
        raise InvalidRequest(f"{where}: key must be a path string, got {path!r}")
    return to_key(path)


def _prefix(path: Any, where: str) -> bytes:
    if not isinstance(path, str):
        raise InvalidRequest(f"{where}: prefix must be a path string, got {path!r}")
    return validate_directory(path)


def _only(item: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(item) - allowed
    if unknown:
        raise InvalidRequest(f"{where} has unknown fields {sorted(unknown)}; allowed are {sorted(allowed)}")


def _value(item: dict[str, Any], where: str) -> bytes:
    if "value" in item and "value_base64" in item:
        raise InvalidRequest(f"{where} has both value and value_base64; give one of them")
    if "value_base64" in item:
        try:
            return base64.b64decode(item["value_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as error:
            raise InvalidRequest(f"{where}: value_base64 is not valid base64: {error}") from error
    value = item.get("value")
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}: value must be text (or give value_base64), got {value!r}")
    return value.encode("utf-8")
