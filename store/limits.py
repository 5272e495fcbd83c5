"""Limits of the storage engine, set per cluster in its spec."""

from __future__ import annotations

from dataclasses import dataclass

from rayconf.errors import InvalidRequest
from rayconf.store.keys import MAX_KEY_BYTES_DEFAULT

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that every replica enforces in the same way.

    All replicas of a shard must run with equal limits, because a request that
    one replica rejects and another applies would make their states diverge.
    """

    max_key_bytes: int = MAX_KEY_BYTES_DEFAULT
    # 10 MiB: the largest configuration documents (routing tables, model
    # configs) fit. Values above `inline_value_bytes_max` travel as chunks.
    max_value_bytes: int = 10 * MIB
    # Values up to this size travel inline in the Raft log; larger ones are
    # split into chunks of `chunk_bytes` and the log carries only a manifest.
    inline_value_bytes_max: int = 64 * 1024
    chunk_bytes: int = 1 * MIB
    # Per list of a txn (compares, then-ops, else-ops), as etcd's --max-txn-ops (128).
    max_txn_ops: int = 128
    # Request ids remembered for at-most-once application; the oldest is
    # forgotten first, so a retry older than this window may apply twice.
    dedup_request_ids_max: int = 100_000
    # Superseded versions kept as Python objects before they are flushed into
    # an Arrow segment.
    tail_versions_max: int = 50_000
    # Segments kept before they are merged into one.
    segments_max: int = 8
    max_request_id_bytes: int = 128
    max_note_bytes: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "max_key_bytes",
            "max_value_bytes",
            "inline_value_bytes_max",
            "chunk_bytes",
            "max_txn_ops",
            "dedup_request_ids_max",
            "tail_versions_max",
            "segments_max",
            "max_request_id_bytes",
            "max_note_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"limit {name} is {value!r}; set it to a positive integer")
        if self.inline_value_bytes_max > self.max_value_bytes:
            raise InvalidRequest(
                f"inline_value_bytes_max ({self.inline_value_bytes_max}) is above max_value_bytes "
                f"({self.max_value_bytes}); set it to max_value_bytes or less"
            )
