"""Key path rules, prefix range ends and directory listings."""

from __future__ import annotations

import pytest
from sortedcontainers import SortedList

from rayconf.errors import InvalidKey
from rayconf.store.keys import (
    RANGE_END_OPEN,
    DirectoryEntry,
    iter_children,
    prefix_end,
    validate_directory,
    validate_path,
)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("app/x", "absolute"),
        ("/", "empty-segment"),
        ("/app//x", "empty-segment"),
        ("/app/x/", "empty-segment"),
        ("/app/./x", "dot-segment"),
        ("/app/../x", "dot-segment"),
        ("/app/\x00x", "control-character"),
        ("/app/\nx", "control-character"),
        (b"/app/\xff", "utf-8"),
        ("/" + "a" * 1024, "length"),
        ("/\udc80", "utf-8"),
    ],
)
def test_invalid_path_names_rule(path: str | bytes, rule: str) -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_path(path)
    assert raised.value.rule == rule
    assert "invalid key path" in str(raised.value)


def test_invalid_path_type_rejected() -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_path(42)  # type: ignore[arg-type]
    assert raised.value.rule == "type"


@pytest.mark.parametrize(
    "path",
    ["/app", "/app/service/database/timeout", "/ünïcode/ключ", "/a b/c-d_e.f", "/" + "a" * 1023, "/..x/x.."],
)
def test_valid_paths_accepted(path: str) -> None:
    assert validate_path(path) == path.encode("utf-8")


def test_path_length_counts_utf8_bytes() -> None:
    with pytest.raises(InvalidKey):
        validate_path("/" + "é" * 512, max_key_bytes=1024)


@pytest.mark.parametrize(
    ("directory", "expected"),
    [("/", b"/"), ("/app", b"/app/"), ("/app/", b"/app/"), ("/app/svc", b"/app/svc/")],
)
def test_directory_paths_end_with_slash(directory: str, expected: bytes) -> None:
    assert validate_directory(directory) == expected


def test_directory_with_empty_segment_rejected() -> None:
    with pytest.raises(InvalidKey):
        validate_directory("/app//")


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"/app/", b"/app0"),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\x00", b"\x01"),
        (b"\xfe\xff", b"\xff"),
        (b"\xff", RANGE_END_OPEN),
        (b"\xff\xff", RANGE_END_OPEN),
        (b"", RANGE_END_OPEN),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def test_prefix_end_bounds_every_key_with_prefix() -> None:
    prefixes = [b"a\xff", b"\x00\xff\xff", b"/app/", b"z"]
    suffixes = [b"", b"\x00", b"\xff", b"\xff\xff\xff", b"/x"]
    for prefix in prefixes:
        end = prefix_end(prefix)
        for suffix in suffixes:
            assert prefix + suffix < end
        assert not end.startswith(prefix)


def test_children_of_directory() -> None:
    index = SortedList([b"/a", b"/a-x", b"/a/b", b"/a/c/d", b"/a/c/e/f", b"/a/g", b"/b/x", b"/c"])
    assert list(iter_children(index, b"/")) == [
        DirectoryEntry(b"a", b"/a", False),
        DirectoryEntry(b"a-x", b"/a-x", False),
        DirectoryEntry(b"a/", b"/a/", True),
        DirectoryEntry(b"b/", b"/b/", True),
        DirectoryEntry(b"c", b"/c", False),
    ]
    assert list(iter_children(index, b"/a/")) == [
        DirectoryEntry(b"b", b"/a/b", False),
        DirectoryEntry(b"c/", b"/a/c/", True),
        DirectoryEntry(b"g", b"/a/g", False),
    ]
    assert list(iter_children(index, b"/zzz/")) == []


def test_children_skip_whole_subtrees() -> None:
    index = SortedList([b"/big/" + str(i).encode() + b"/leaf" for i in range(1000)] + [b"/big/z"])
    entries = list(iter_children(index, b"/big/"))
    assert len(entries) == 1001
    assert entries[-1] == DirectoryEntry(b"z", b"/big/z", False)


def test_children_of_directory_under_0xff() -> None:
    index = SortedList([b"\xff/a", b"\xff/b/c", b"\xff\xff"])
    assert list(iter_children(index, b"\xff/")) == [
        DirectoryEntry(b"a", b"\xff/a", False),
        DirectoryEntry(b"b/", b"\xff/b/", True),
    ]
