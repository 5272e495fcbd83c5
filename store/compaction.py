"""Compaction: drop every version that no read at or after a revision can see.

After `compact(versions, R)`, a read at any revision >= R returns what it
returned before, and reads below R are rejected by the caller with
`Compacted`. For each key the rule is the one etcd applies. Every version
above R stays, and so does the newest version at or below R when it is a put,
because it is still visible at R. Everything older goes, tombstones at or
below R included.

The tail is flushed first, then all segments are merged, filtered in one scan
and written back as a single segment, so compaction also bounds the number of
segments.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from rayconf.store.segments import CHANGES_SCHEMA, KIND_PUT, VERSIONS_SCHEMA, Segment, merge_tables
from rayconf.store.versions import VersionStore


def compact(versions: VersionStore, revision: int) -> int:
    """Compact `versions` at `revision`; return the number of version rows removed."""
    versions.flush()
    table = merge_tables([segment.versions for segment in versions.segments], VERSIONS_SCHEMA)
    keys = table.column("key").to_pylist()
    revisions = table.column("revision").to_pylist()
    kinds = table.column("kind").to_pylist()

    keep: list[bool] = []
    kept_low_revisions: set[int] = set()
    kept_for_key = 0
    for position, key in enumerate(keys):
        row_revision = revisions[position]
        last_of_key = position + 1 == len(keys) or keys[position + 1] != key
        if not last_of_key:
            next_revision: float = revisions[position + 1]
        else:
            live = versions.live.get(key)
            next_revision = live.mod_revision if live is not None else float("inf")
        kept = row_revision > revision or (kinds[position] == KIND_PUT and next_revision > revision)
        keep.append(kept)
        if kept:
            kept_for_key += 1
            if row_revision <= revision:
                kept_low_revisions.add(row_revision)
        if last_of_key:
            if kept_for_key == 0 and key not in versions.live:
                versions.all_index.remove(key)
            kept_for_key = 0

    for record in versions.live.values():
        if record.mod_revision <= revision:
            kept_low_revisions.add(record.mod_revision)

    kept_versions = table.filter(pa.array(keep, type=pa.bool_())) if keep else table
    changes = merge_tables([segment.changes for segment in versions.segments], CHANGES_SCHEMA, by_key=False)
    change_revisions = changes.column("revision")
    retained = pc.or_(
        pc.greater(change_revisions, revision),
        pc.is_in(change_revisions, value_set=pa.array(sorted(kept_low_revisions), type=pa.int64())),
    )
    kept_changes = changes.filter(retained)

    if kept_versions.num_rows or kept_changes.num_rows:
        versions.replace_segments(Segment(kept_versions, kept_changes, versions.next_segment_name()))
    else:
        versions.replace_segments(None)
    return len(keep) - int(kept_versions.num_rows)
