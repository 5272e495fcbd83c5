"""Keys: hierarchical path rules, prefix ranges and directory children.

The engine stores keys as bytes, as etcd does, so any key can pass through.
The native API and the command line speak paths such as
`/app/service/database/timeout`; `validate_path` enforces their rules and
names the rule a path breaks.

A prefix query is the half-open byte range `[prefix, prefix_end(prefix))`.
An empty end (`b""`) means "to the end of the key space", as in etcd.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from sortedcontainers import SortedList

from rayconf.errors import InvalidKey, InvalidRequest

# The largest key the engine accepts. etcd sets no such limit; a bound keeps the
# sorted index and every log entry small. Settable per cluster through Limits.
MAX_KEY_BYTES_DEFAULT = 1024

# Open end of a range: every key from `start` on.
RANGE_END_OPEN = b""


def prefix_end(prefix: bytes) -> bytes:
    """Return the smallest key above every key that starts with `prefix`.

    Trailing 0xFF bytes cannot be incremented, so they are dropped and the byte
    before them is incremented. A prefix made only of 0xFF bytes, or an empty
    prefix, has no such key and returns `RANGE_END_OPEN`. Raises `InvalidKey`
    when `prefix` is not bytes.
    """
    if not isinstance(prefix, bytes):
        _reject_prefix_type(prefix)
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return RANGE_END_OPEN
    end[-1] += 1
    return bytes(end)


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """Return whether `key` lies in `[start, end)`, where an empty end is open."""
    return key >= start and (end == RANGE_END_OPEN or key < end)


def validate_path(path: str | bytes, *, max_key_bytes: int = MAX_KEY_BYTES_DEFAULT) -> bytes:
    """Check a hierarchical key path and return it encoded as UTF-8 bytes.

    Rules: absolute (starts with `/`), `/`-separated, no empty segment (so no
    `//` and no trailing `/`), no `.` or `..` segment, valid UTF-8, no control
    characters, at most `max_key_bytes` bytes. Raises `InvalidKey` naming the
    rule that the path breaks, and `InvalidRequest` when `max_key_bytes` is not
    a positive int.
    """
    _check_max_key_bytes(max_key_bytes)
    raw = _encode_path(path)
    text = raw.decode("utf-8")
    if text == "":
        _reject(path, "absolute", "is empty. Give an absolute path such as '/app/x'")
    if len(raw) > max_key_bytes:
        _reject(path, "length", f"is {len(raw)} bytes, above max_key_bytes ({max_key_bytes}); shorten the path")
    if not text.startswith("/"):
        _reject(path, "absolute", f"must start with '/'; write it as {'/' + text!r}")
    if text == "/":
        _reject(path, "empty-segment", "is the root, which is a directory and cannot hold a value")
    _check_segments(path, text[1:].split("/"))
    return raw


def validate_directory(path: str | bytes, *, max_key_bytes: int = MAX_KEY_BYTES_DEFAULT) -> bytes:
    """Check a directory path for listings and return it with a trailing `/`.

    `/` is the root directory; `/app` and `/app/` both mean the directory `/app/`.
    The returned path, trailing `/` included, is at most `max_key_bytes` bytes.
    The other rules are those of `validate_path`, and errors show `path` as given.
    """
    _check_max_key_bytes(max_key_bytes)
    raw = _encode_path(path)
    text = raw.decode("utf-8")
    if text == "/":
        return raw
    if text == "":
        _reject(path, "absolute", "is empty. Give an absolute directory path such as '/' or '/app'")
    directory = raw if raw.endswith(b"/") else raw + b"/"
    if len(directory) > max_key_bytes:
        _reject(
            path,
            "length",
            f"is {len(directory)} bytes as a directory with its trailing '/', above max_key_bytes "
            f"({max_key_bytes}). Shorten the path",
        )
    if not text.startswith("/"):
        _reject(path, "absolute", f"must start with '/'; write it as {'/' + text!r}")
    _check_segments(path, directory.decode("utf-8")[1:-1].split("/"))
    return directory


def _check_max_key_bytes(max_key_bytes: object) -> None:
    if type(max_key_bytes) is not int or max_key_bytes < 1:
        raise InvalidRequest(
            f"max_key_bytes is {max_key_bytes!r} ({type(max_key_bytes).__name__}), expected a positive "
            f"int such as the default {MAX_KEY_BYTES_DEFAULT}"
        )


def _encode_path(path: str | bytes) -> bytes:
    if isinstance(path, bytes):
        try:
            path.decode("utf-8")
        except UnicodeDecodeError as exc:
            _reject(path, "utf-8", f"is not valid UTF-8 at byte {exc.start}; send paths as UTF-8 text")
        return path
    if isinstance(path, str):
        try:
            return path.encode("utf-8")
        except UnicodeEncodeError as exc:
            _reject(path, "utf-8", f"has a character that UTF-8 cannot encode at position {exc.start}")
    raise InvalidKey(
        f"key path must be str or bytes, got {type(path).__name__}; pass the path as text such as '/app/x'",
        key=b"",
        rule="type",
    )


def _check_segments(path: str | bytes, segments: list[str]) -> None:
    for position, segment in enumerate(segments, start=1):
        if segment == "":
            _reject(path, "empty-segment", f"has an empty segment at position {position}; remove the extra '/'")
        if segment in (".", ".."):
            _reject(path, "dot-segment", f"has a {segment!r} segment at position {position}; write the resolved path")
        for char in segment:
            if ord(char) < 0x20 or ord(char) == 0x7F:
                _reject(path, "control-character", f"has control character {char!r} in segment {position}; remove it")


def _reject_prefix_type(prefix: object) -> NoReturn:
    shown = repr(prefix)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    fix = "Encode text with .encode() first" if isinstance(prefix, str) else "Pass a prefix such as b'/app/'"
    raise InvalidKey(
        f"key prefix {shown} is {type(prefix).__name__}, expected bytes. {fix}",
        key=b"",
        rule="type",
    )


def _reject(path: str | bytes, rule: str, detail: str) -> NoReturn:
    shown = path if isinstance(path, str) else path.decode("utf-8", errors="backslashreplace")
    if len(shown) > 80:
        shown = shown[:77] + "..."
    key = path if isinstance(path, bytes) else path.encode("utf-8", errors="surrogatepass")
    raise InvalidKey(f"invalid key path {shown!r}: it {detail}", key=key, rule=rule)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One immediate child of a directory listing.

    `name` is the child's segment, with a trailing `/` when it is a directory.
    A key such as `/a` and a directory `/a/` are listed as two entries.
    """

    name: bytes
    key: bytes
    is_directory: bool


def iter_children(index: SortedList, directory: bytes) -> Iterator[DirectoryEntry]:
    """Yield the immediate children of `directory` (ending in `/`) in key order.

    Each subdirectory costs one bisection into `index`: the walk jumps over the
    subtree instead of visiting its keys.
    """
    assert directory.endswith(b"/"), "a directory path ends with '/'"
    end = prefix_end(directory)
    position = index.bisect_left(directory)
    while position < len(index):
        key: bytes = index[position]
        if end != RANGE_END_OPEN and key >= end:
            return
        rest = key[len(directory):]
        slash = rest.find(b"/")
        if slash < 0:
            yield DirectoryEntry(name=rest, key=key, is_directory=False)
            position += 1
            continue
        subdirectory = directory + rest[: slash + 1]
        yield DirectoryEntry(name=rest[: slash + 1], key=subdirectory, is_directory=True)
        after = prefix_end(subdirectory)
        if after == RANGE_END_OPEN:
            return
        position = index.bisect_left(after)
