"""Arrow segments and snapshots on real files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
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


def _rewrite_manifest(directory: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = directory / snapshot.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


MANIFEST_TAMPERING = [
    pytest.param(lambda m: m.update(revision=-5), id="negative revision"),
    pytest.param(lambda m: m.update(compact_revision=10**6), id="compact above revision"),
    pytest.param(lambda m: m.update(format=True), id="bool format"),
    pytest.param(lambda m: m.update(files={}), id="no files listed"),
    pytest.param(lambda m: m.update(segments=["../../elsewhere/segment-000000000001"]), id="segment path escape"),
    pytest.param(lambda m: m.update(segments=m["segments"] * 2), id="repeated segment"),
    pytest.param(lambda m: m.update(revision=2), id="revision below stored versions"),
    pytest.param(lambda m: m["files"].update({"/etc/hostname": {"bytes": 1, "sha256": "0"}}), id="foreign file"),
]


@pytest.mark.parametrize("change", MANIFEST_TAMPERING)
def test_tampered_manifest_rejected(tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    directory = snapshot.save(busy_state(writes=60), tmp_path)
    _rewrite_manifest(directory, change)
    with pytest.raises(SnapshotCorruption):
        snapshot.load(directory)


def test_bad_unpack_keeps_good_snapshot(tmp_path: Path) -> None:
    import msgpack

    source = snapshot.save(busy_state(writes=40), tmp_path / "source")
    good = snapshot.unpack(snapshot.pack(source), tmp_path / "target")
    expected_hash = snapshot.load(good).hash_kv()
    unpacked = msgpack.unpackb(snapshot.pack(source), raw=False)
    unpacked["files"]["live.arrow"] = b"garbage"
    with pytest.raises(SnapshotCorruption):
        snapshot.unpack(msgpack.packb(unpacked, use_bin_type=True), tmp_path / "target")
    assert snapshot.latest(tmp_path / "target") == good
    assert snapshot.load(good).hash_kv() == expected_hash
    assert not list((tmp_path / "target").glob("*.tmp"))


@pytest.mark.parametrize(
    "files",
    [{"live.arrow": 5}, {"bad\x00name": b"x"}, {"..": b"x"}, {"": b"x"}],
)
def test_unpack_rejects_bad_files(tmp_path: Path, files: dict) -> None:
    import msgpack

    packed = msgpack.packb({"name": "snapshot-0000000000000001", "files": files}, use_bin_type=True)
    with pytest.raises(SnapshotCorruption):
        snapshot.unpack(packed, tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_accepts_text_path(tmp_path: Path) -> None:
    state = busy_state(writes=20)
    directory = snapshot.save(state, tmp_path)
    assert snapshot.load(str(directory)).hash_kv() == state.hash_kv()


def test_segment_keys_use_64_bit_offsets() -> None:
    # Plain binary has 32-bit offsets and overflows past 2 GiB of keys in one segment.
    segment = build_segment("segment-000000000009", [(b"/k", (2, KIND_PUT, b"v", 2, 1))], [])
    assert segment.versions.schema.field("key").type == pa.large_binary()
    assert segment.versions_of(b"/k") == [(2, KIND_PUT, b"v", 2, 1)]
