"""Argument checks of `WAL`, and the encoding of a checked batch of records."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from rayconf.errors import InvalidRequest, ValueTooLarge
from rayconf.store import wal_format

MIB = 1024 * 1024


def _encode_batch(
    records: Iterable[tuple[int, bytes]], payload_bytes_max: int
) -> tuple[bytes, int]:
    """Check every record of a batch, then return the encoded batch and its record count."""
    try:
        items = iter(records)
    except TypeError:
        raise InvalidRequest(
            f"records is {_show(records)} ({type(records).__name__}), expected an iterable of "
            "(record_type, payload) tuples such as [(1, b'payload')]"
        ) from None

    chunks: list[bytes] = []
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidRequest(
                f"record {index} of the batch is {_show(item)}, expected a "
                "(record_type, payload) tuple such as (1, b'payload')"
            )
        record_type, payload = item
        if isinstance(record_type, bool) or not isinstance(record_type, int):
            raise InvalidRequest(
                f"record {index} has record type {record_type!r}, expected an int in "
                f"0..{wal_format.RECORD_TYPE_MAX}"
            )
        if not 0 <= record_type <= wal_format.RECORD_TYPE_MAX:
            raise InvalidRequest(
                f"record {index} has record type {record_type}, which is outside "
                f"0..{wal_format.RECORD_TYPE_MAX}"
            )
        if not isinstance(payload, bytes):
            raise InvalidRequest(
                f"record {index} has a payload of type {type(payload).__name__}, expected "
                "bytes. Encode the payload to bytes first"
            )
        if len(payload) > payload_bytes_max:
            raise ValueTooLarge(
                f"write-ahead log record of {_format_bytes(len(payload))} is above "
                f"payload_bytes_max ({_format_bytes(payload_bytes_max)}). "
                "Split the payload or raise payload_bytes_max.",
                size_bytes=len(payload),
                limit_bytes=payload_bytes_max,
            )
        chunks.append(wal_format.encode_record(record_type, payload))
    return b"".join(chunks), len(chunks)


def _log_directory(directory: object) -> Path:
    """Return `directory` as a Path, or raise InvalidRequest naming what is wrong with it."""
    try:
        text = os.fspath(directory) if isinstance(directory, (str, os.PathLike)) else None
    except TypeError:
        text = None
    if not isinstance(text, str):
        raise InvalidRequest(
            f"write-ahead log directory is {_show(directory)} ({type(directory).__name__}), "
            "expected a str or pathlib.Path such as 'data/wal'"
        )
    if text == "":
        raise InvalidRequest(
            "write-ahead log directory is '' (empty). Give a path such as 'data/wal', or '.' for "
            "the current directory"
        )
    if "\x00" in text:
        raise InvalidRequest(
            f"write-ahead log directory {text!r} contains a NUL character, which no path can "
            "contain. Remove it"
        )
    return Path(text)


def _show(value: object) -> str:
    shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return shown


def _validate_int(name: str, value: int, minimum: int, maximum: int) -> None:
    in_range = isinstance(value, int) and minimum <= value <= maximum
    if isinstance(value, bool) or not in_range:
        raise InvalidRequest(f"{name} is {value!r}, expected an int in {minimum}..{maximum}")


def _format_bytes(size: int) -> str:
    if size >= MIB:
        return f"{size / MIB:.1f} MiB ({size} bytes)"
    return f"{size} bytes"
