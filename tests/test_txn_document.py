"""The JSON form of transactions that `rayconf txn` reads."""

from __future__ import annotations

import json

import pytest

from rayconf.clients.txn_document import parse_txn_document
from rayconf.errors import InvalidKey, InvalidRequest
from rayconf.store.records import CompareOp, CompareTarget, DeleteRange, Put, RangeRequest


def test_full_document_parses() -> None:
    txn = parse_txn_document(json.dumps({
        "compare": [{"key": "/a", "target": "version", "op": ">", "value": 2}],
        "success": [{"put": "/a", "value_base64": "AP8="}, {"delete": "/b/", "prefix": True}],
        "failure": [{"get": "/a"}],
    }))
    assert txn.compares[0].target is CompareTarget.VERSION
    assert txn.compares[0].op is CompareOp.GREATER
    assert txn.success[0] == Put(b"/a", b"\x00\xff")
    assert isinstance(txn.success[1], DeleteRange)
    assert txn.success[1].range_end == b"/b0"
    assert txn.failure[0] == RangeRequest(b"/a")


@pytest.mark.parametrize(
    "document",
    [
        "{not json",
        "[]",
        {"compare": {}},
        {"extra": []},
        {"compare": [{"key": "/a", "value": "x", "colour": "red"}]},
        {"compare": [{"key": "/a", "target": "size", "value": 1}]},
        {"compare": [{"key": "/a", "target": "version", "value": "1"}]},
        {"success": [{"put": "/a", "value": "x", "value_base64": "eA=="}]},
        {"success": [{"put": "/a", "value": "x", "note": "?"}]},
        {"success": [{"delete": "/a/", "prefix": "no"}]},
        {"success": [{"put": "/a"}]},
        {"success": [{"put": "/a", "value_base64": "***"}]},
        {"success": [{"put": "/a", "get": "/b", "value": "x"}]},
        {"success": ["put /a"]},
    ],
)
def test_bad_document_rejected(document: object) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(InvalidRequest):
        parse_txn_document(text)


def test_bad_key_in_document_rejected() -> None:
    with pytest.raises(InvalidKey):
        parse_txn_document(json.dumps({"success": [{"put": "/a//b", "value": "x"}]}))
