"""Errors raised by the Raft core.

They derive from the `rayconf.errors` classes so that callers can catch them with
the rest of rayconf's errors.
"""

from __future__ import annotations

from rayconf.errors import InvalidRequest, RayconfError, Unavailable


class RaftError(RayconfError):
    """Base class of the errors raised by the Raft core."""


class ProposalDropped(RaftError, Unavailable):
    """A proposal or read request was not accepted: no leader is known, a leader
    transfer is in progress, this node is not a member, or a size or queue limit is
    reached. Retry later, after a leader is known."""


class ConfChangeRejected(RaftError, InvalidRequest):
    """A membership change would leave an invalid configuration."""


class StepLocalMessage(RaftError, InvalidRequest):
    """A local-only message type (HUP, BEAT, ...) arrived from the network."""


class StepPeerNotFound(RaftError, InvalidRequest):
    """A response arrived from a node that this node does not track."""


class ReadyNotAdvanced(RaftError):
    """`RawNode.ready` was called before the previous Ready was passed to `advance`."""


class StorageCompacted(RaftError):
    """A log index at or below the storage's compaction point was requested."""


class StorageUnavailable(RaftError):
    """A log index above the storage's last index was requested."""


class SnapshotOutOfDate(RaftError):
    """A snapshot at or below the storage's current snapshot index was given."""


class SnapshotTemporarilyUnavailable(RaftError):
    """The storage cannot produce a snapshot right now; the leader retries later."""
