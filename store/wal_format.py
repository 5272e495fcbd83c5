"""On-disk format of write-ahead log segment files: names, file header, record framing.

Pure functions over bytes, with no file I/O, so the rules for what counts as a torn
tail and what counts as corruption sit in one place and can be tested directly.

A segment file is a file header followed by records::

    file header, 32 bytes, little-endian:
        magic "RCONFWAL" (8) | format_version u16 | flags u16 (zero)
        | seq u64 | tag u64 | crc32 of the 28 bytes before it (u32)

    record, 16-byte header then the payload:
        payload_bytes u32 | record_type u8 | 3 zero bytes | crc32 of payload (u32)
        | crc32 of the 12 header bytes before it (u32) | payload

The header CRC covers the length field, so a damaged length is reported as a bad
record instead of being read as a record that runs past the end of the file.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

FILE_MAGIC = b"RCONFWAL"
FORMAT_VERSION = 1

_FILE_HEADER_BODY = struct.Struct("<8sHHQQ")
_CRC = struct.Struct("<I")
FILE_HEADER_BYTES = _FILE_HEADER_BODY.size + _CRC.size  # 32

_RECORD_HEADER_BODY = struct.Struct("<IB3xI")
RECORD_HEADER_BYTES = _RECORD_HEADER_BODY.size + _CRC.size  # 16

RECORD_TYPE_MAX = 255
TAG_MAX = 2**64 - 1
SEQ_MAX = 2**64 - 1
# The length field is a u32.
PAYLOAD_BYTES_LIMIT = 2**32 - 1

SEGMENT_SUFFIX = ".wal"
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


class Record(NamedTuple):
    """One log record: a caller-defined type in 0..255 and an opaque payload."""

    record_type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """A record or file header that failed a check.

    `offset_bytes` is where the bad record or header starts. `torn` is true when
    the damage looks like a write that a crash interrupted at the end of the file.
    That is a partial header, a length that runs past the end of the file, or a
    bad record followed only by zero bytes up to the end of the file.
    """

    offset_bytes: int
    reason: str
    torn: bool


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Records decoded from one segment file.

    `valid_end_bytes` is the offset just past the last valid record, which is
    where a torn tail gets truncated. `damage` is None when every byte decoded.
    """

    records: list[Record]
    valid_end_bytes: int
    damage: Damage | None


def segment_file_name(seq: int, tag: int) -> str:
    """Return the file name for a segment. Names sort in seq order."""
    assert 0 <= seq <= SEQ_MAX
    assert 0 <= tag <= TAG_MAX
    return f"{seq:016x}-{tag:016x}{SEGMENT_SUFFIX}"


def parse_segment_file_name(name: str) -> tuple[int, int] | None:
    """Return `(seq, tag)` from a segment file name, or None if it is not one."""
    match = _SEGMENT_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1), 16), int(match.group(2), 16)


def encode_file_header(seq: int, tag: int) -> bytes:
    body = _FILE_HEADER_BODY.pack(FILE_MAGIC, FORMAT_VERSION, 0, seq, tag)
    return body + _CRC.pack(zlib.crc32(body))


def check_file_header(data: bytes, seq: int, tag: int) -> Damage | None:
    """Check the file header at the start of `data` against the seq and tag of the name.

    A header is torn when the file is shorter than a header, or when the header
    and everything after it are zero bytes. That happens after a crash between
    creating the file and its first fsync, so nothing in it was ever synced.
    """
    if len(data) < FILE_HEADER_BYTES:
        return Damage(0, f"file is {len(data)} bytes, shorter than its header", torn=True)
    if _is_zero_from(data, 0):
        return Damage(0, "file header and the rest of the file are zero bytes", torn=True)

    body = data[: _FILE_HEADER_BODY.size]
    (crc_stored,) = _CRC.unpack_from(data, _FILE_HEADER_BODY.size)
    if zlib.crc32(body) != crc_stored:
        return Damage(0, "file header checksum mismatch", torn=False)
    magic, version, flags, header_seq, header_tag = _FILE_HEADER_BODY.unpack(body)
    if magic != FILE_MAGIC:
        return Damage(0, f"file magic is {magic!r}, expected {FILE_MAGIC!r}", torn=False)
    if version != FORMAT_VERSION:
        return Damage(
            0,
            f"format version {version} is not supported by this build (version {FORMAT_VERSION})",
            torn=False,
        )
    if flags != 0:
        return Damage(0, f"unknown header flags {flags:#06x}", torn=False)
    if (header_seq, header_tag) != (seq, tag):
        return Damage(
            0,
            f"header names seq {header_seq:#x} and tag {header_tag:#x}, "
            f"but the file name names seq {seq:#x} and tag {tag:#x}",
            torn=False,
        )
    return None


def encode_record(record_type: int, payload: bytes) -> bytes:
    assert 0 <= record_type <= RECORD_TYPE_MAX
    assert len(payload) <= PAYLOAD_BYTES_LIMIT
    body = _RECORD_HEADER_BODY.pack(len(payload), record_type, zlib.crc32(payload))
    return body + _CRC.pack(zlib.crc32(body)) + payload


def scan_records(data: bytes, start_bytes: int = FILE_HEADER_BYTES) -> ScanResult:
    """Decode records from `start_bytes` until the end of `data` or the first bad record.

    Scanning stops at the first damage, since a bad header leaves no trustworthy
    length with which to find the next record. The caller decides whether a torn
    damage may be truncated, which is only safe in the last file of the log.
    """
    records: list[Record] = []
    position = start_bytes
    size = len(data)
    view = memoryview(data)

    while position < size:
        damage = _check_record(data, position)
        if damage is not None:
            return ScanResult(records, position, damage)

        payload_bytes, record_type, _ = _RECORD_HEADER_BODY.unpack_from(data, position)
        payload_start = position + RECORD_HEADER_BYTES
        position = payload_start + payload_bytes
        records.append(Record(record_type, bytes(view[payload_start:position])))

    return ScanResult(records, position, None)


def _check_record(data: bytes, position: int) -> Damage | None:
    """Check the record that starts at `position` and return None when it is valid."""
    size = len(data)
    if size - position < RECORD_HEADER_BYTES:
        return Damage(
            position, f"partial record header of {size - position} bytes at end of file", torn=True
        )

    header_end = position + _RECORD_HEADER_BODY.size
    (header_crc,) = _CRC.unpack_from(data, header_end)
    if zlib.crc32(data[position:header_end]) != header_crc:
        # The length is untrusted, so the record is torn only if nothing but zero
        # bytes follows its header.
        torn = _is_zero_from(data, position + RECORD_HEADER_BYTES)
        return Damage(position, "record header checksum mismatch", torn=torn)

    payload_bytes, _, payload_crc = _RECORD_HEADER_BODY.unpack_from(data, position)
    payload_start = position + RECORD_HEADER_BYTES
    end = payload_start + payload_bytes
    if end > size:
        return Damage(
            position,
            f"record of {payload_bytes} payload bytes runs {end - size} bytes past end of file",
            torn=True,
        )
    if zlib.crc32(memoryview(data)[payload_start:end]) != payload_crc:
        torn = _is_zero_from(data, end)
        return Damage(position, "record payload checksum mismatch", torn=torn)
    return None


def _is_zero_from(data: bytes, start: int) -> bool:
    """Return whether every byte of `data` from `start` to the end is zero."""
    return data.count(0, start) == len(data) - start
