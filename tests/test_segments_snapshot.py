"""Arrow segments and snapshots on real files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rayconf.errors import SnapshotCorruption
from rayconf.store import snapshot
from rayconf.store.keys import prefix_end
from rayconf.store.limits import Limits
from rayconf.store.mvcc import MVCC
from rayconf.store.records import ChangeRecord, RangeRequest
from rayconf.store.segments import KIND_DELETE, KIND_PUT, build_segment, read_segment, write_segment


def busy_state(seed: int = 7, writes: int = 600) -> MVCC:
    generator = random.Random(seed)
    state = MVCC(Limits(tail_versions_max=50, segments_max=3))
    for number in range(writes):
        key = f"/svc/{generator.randrange(40)}/conf".encode()
        if generator.random() < 0.15:
            state.delete(key, principal="ops")
        else:
            state.put(key, generator.randbytes(generator.randrange(1, 64)), principal="deployer",
                      note=f"change {number}", request_id=f"req-{number}")
        if number == 300:
            state.compact(state.revision - 100)
    return state


def test_segment_round_trip(tmp_path: Path) -> None:
    rows = [(b"/b", (5, KIND_PUT, b"x", 3, 2)), (b"/a", (2, KIND_PUT, b"\x00" * 10, 2, 1)),
            (b"/a", (4, KIND_DELETE, b"", 0, 0)), (b"/b", (3, KIND_PUT, b"w", 3, 1))]
    changes = [ChangeRecord(4, "bob", 11, "n", "r4"), ChangeRecord(2, "alice", 10, "", "")]
    segment = build_segment("segment-000000000001", rows, changes)
    paths = write_segment(tmp_path, segment)
    loaded = read_segment(tmp_path, segment.name)
    assert loaded.versions.equals(segment.versions)
    assert loaded.changes.equals(segment.changes)
    assert loaded.versions_of(b"/a") == [(2, KIND_PUT, b"\x00" * 10, 2, 1), (4, KIND_DELETE, b"", 0, 0)]
    assert [key for key, _ in loaded.iter_range(b"/b", b"/c")] == [b"/b", b"/b"]
    assert loaded.change(4) == ChangeRecord(4, "bob", 11, "n", "r4")
    assert loaded.change(3) is None
    assert [path.name for path in paths] == ["segment-000000000001.versions.arrow",
                                             "segment-000000000001.changes.arrow"]


def test_segments_are_lz4_compressed(tmp_path: Path) -> None:
    rows = [(f"/k/{i:06d}".encode(), (i + 2, KIND_PUT, b"a" * 200, 2, i + 1)) for i in range(2000)]
    segment = build_segment("segment-000000000002", rows, [])
    versions_path, _ = write_segment(tmp_path, segment)
    raw_bytes = sum(len(key) + len(row[2]) for key, row in rows)
    assert versions_path.stat().st_size < raw_bytes / 4


def test_snapshot_restores_same_state(tmp_path: Path) -> None:
    state = busy_state()
    hash_before = state.hash_kv()
    directory = snapshot.save(state, tmp_path)
    restored = snapshot.load(directory, Limits(tail_versions_max=50, segments_max=3))
    assert restored.hash_kv() == hash_before
    assert restored.statistics() == state.statistics()
    request = RangeRequest(b"/svc/", prefix_end(b"/svc/"))
    assert restored.range(request) == state.range(request)
    for key in [f"/svc/{n}/conf".encode() for n in range(40)]:
        assert restored.history(key) == state.history(key)
    for revision in range(state.compact_revision, state.revision + 1, 37):
        assert restored.hash_kv(revision) == state.hash_kv(revision)
    # The restored state goes on identically.
    for target in (state, restored):
        target.put(b"/svc/new", b"v", request_id="req-599")
        target.put(b"/svc/1/conf", b"w")
    assert restored.hash_kv() == state.hash_kv()


def test_snapshot_pack_unpack(tmp_path: Path) -> None:
    state = busy_state(seed=3, writes=200)
    directory = snapshot.save(state, tmp_path / "a")
    unpacked = snapshot.unpack(snapshot.pack(directory), tmp_path / "b")
    assert snapshot.load(unpacked).hash_kv() == state.hash_kv()
    assert snapshot.latest(tmp_path / "b") == unpacked


def test_snapshot_corruption_detected(tmp_path: Path) -> None:
    directory = snapshot.save(busy_state(writes=100), tmp_path)
    live = directory / "live.arrow"
    data = bytearray(live.read_bytes())
    data[len(data) // 2] ^= 0x01
    live.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruption) as raised:
        snapshot.load(directory)
    assert "live.arrow" in str(raised.value)


def test_snapshot_missing_manifest(tmp_path: Path) -> None:
    directory = snapshot.save(busy_state(writes=10), tmp_path)
    (directory / snapshot.MANIFEST).unlink()
    with pytest.raises(SnapshotCorruption):
        snapshot.load(directory)


def test_snapshot_manifest_missing_field(tmp_path: Path) -> None:
    directory = snapshot.save(busy_state(writes=10), tmp_path)
    manifest_path = directory / snapshot.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["revision"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotCorruption) as raised:
        snapshot.load(directory)
    assert "'revision'" in str(raised.value)


def test_unpack_rejects_path_escape(tmp_path: Path) -> None:
    import msgpack

    hostile = msgpack.packb({"name": "snapshot-1", "files": {"../escape": b"x"}}, use_bin_type=True)
    with pytest.raises(SnapshotCorruption):
        snapshot.unpack(hostile, tmp_path)
    assert not (tmp_path / "escape").exists()


def test_flush_and_merge_keep_hash() -> None:
    state = MVCC(Limits(tail_versions_max=10, segments_max=2))
    hashes = []
    for number in range(300):
        state.put(f"/k/{number % 17}".encode(), str(number).encode())
        if number % 50 == 49:
            hashes.append((state.revision, state.hash_kv()))
    assert state.statistics()["segments"] <= 3
    for revision, expected in hashes:
        assert state.hash_kv(revision) == expected
