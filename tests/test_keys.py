"""Key path rules, prefix range ends and directory listings."""

from __future__ import annotations

import pytest
from sortedcontainers import SortedList

from rayconf.errors import InvalidKey, InvalidRequest
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


# --- Bad arguments. ---


@pytest.mark.parametrize("prefix", [5, [1, 2], "ab", None, bytearray(b"ab"), memoryview(b"ab")])
def test_prefix_end_rejects_non_bytes(prefix: object) -> None:
    with pytest.raises(InvalidRequest) as raised:
        prefix_end(prefix)  # type: ignore[arg-type]

    message = str(raised.value)
    assert type(prefix).__name__ in message
    assert "bytes" in message


def test_prefix_end_str_suggests_encode() -> None:
    with pytest.raises(InvalidRequest) as raised:
        prefix_end("ab")  # type: ignore[arg-type]

    assert "'ab'" in str(raised.value)
    assert ".encode()" in str(raised.value)


@pytest.mark.parametrize("max_key_bytes", ["x", -1, 0, True, 1.5, None])
def test_invalid_max_key_bytes_rejected(max_key_bytes: object) -> None:
    for validate in (validate_path, validate_directory):
        with pytest.raises(InvalidRequest) as raised:
            validate("/a", max_key_bytes=max_key_bytes)  # type: ignore[arg-type]
        assert not isinstance(raised.value, InvalidKey)
        assert "max_key_bytes" in str(raised.value)
        assert repr(max_key_bytes) in str(raised.value)


def test_empty_path_message_gives_valid_example() -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_path("")

    message = str(raised.value)
    assert raised.value.rule == "absolute"
    assert "empty" in message
    assert "'/app/x'" in message
    assert "write it as '/'" not in message


def test_empty_directory_rejected() -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_directory("")

    assert raised.value.rule == "absolute"
    assert "empty" in str(raised.value)


@pytest.mark.parametrize(("directory", "position"), [("//", 1), ("/app//", 2), ("//app", 1), ("/a//b/", 2)])
def test_directory_empty_segment_shows_input(directory: str, position: int) -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_directory(directory)

    message = str(raised.value)
    assert raised.value.rule == "empty-segment"
    assert f"invalid key path {directory!r}" in message
    assert f"empty segment at position {position}" in message
    assert "root" not in message


def test_directory_length_cites_real_limit() -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_directory("/" + "a" * 1023)

    message = str(raised.value)
    assert raised.value.rule == "length"
    assert "max_key_bytes (1024)" in message
    assert "1025 bytes" in message


@pytest.mark.parametrize(("directory", "expected"), [("/" + "a" * 1022, b"/" + b"a" * 1022 + b"/"), ("/" + "a" * 1022 + "/", b"/" + b"a" * 1022 + b"/")])
def test_directory_at_length_limit_accepted(directory: str, expected: bytes) -> None:
    assert validate_directory(directory) == expected


@pytest.mark.parametrize(("directory", "rule"), [("app", "absolute"), ("/app/../x", "dot-segment"), ("/a\x00/", "control-character"), (b"/\xff/", "utf-8")])
def test_invalid_directory_names_rule(directory: str | bytes, rule: str) -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_directory(directory)
    assert raised.value.rule == rule
