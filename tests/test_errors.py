"""Every rayconf error survives pickling, as it must to cross a Ray actor call."""

from __future__ import annotations

import pickle

import pytest

from rayconf import errors

SAMPLES = [
    errors.InvalidRequest("bad"),
    errors.InvalidKey("bad key", key=b"/a", rule="length"),
    errors.ValueTooLarge("big", size_bytes=11, limit_bytes=10),
    errors.TooManyOperations("many"),
    errors.Compacted("gone", compact_revision=7, requested_revision=3),
    errors.FutureRevision("later", current_revision=5, requested_revision=9),
    errors.TxnFailed("cas", revision=4, current=b"x"),
    errors.StorageError("disk"),
    errors.WALCorruption("crc", path="/d/0.wal", offset_bytes=42),
    errors.SnapshotCorruption("sha", path="/d/snap"),
    errors.ChunkMissing("absent", digest="ab" * 32),
    errors.ChunkCorrupt("bad", digest="cd" * 32, path="/d/chunks/cd/cdcd"),
    errors.Unavailable("no quorum"),
    errors.NotLeader("follower", leader_hint="dc-b-1"),
    errors.AuthError("auth"),
    errors.AuthenticationFailed("login", user="alice"),
    errors.TooManyLoginAttempts("slow down", user="alice", retry_after_s=2.0),
    errors.PermissionDenied("no", user="alice", right="write"),
]


@pytest.mark.parametrize("error", SAMPLES, ids=lambda error: type(error).__name__)
def test_error_survives_pickle(error: errors.RayconfError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


def test_every_error_class_sampled() -> None:
    classes = {value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, errors.RayconfError)} - {errors.RayconfError}
    assert classes <= {type(error) for error in SAMPLES}
