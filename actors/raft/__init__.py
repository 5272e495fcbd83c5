"""The Raft consensus core of rayconf: a pure state machine shaped like etcd-io/raft.

No Ray, no I/O, no clock, no threads. The caller drives a `RawNode` with ticks and
messages and handles each `Ready`: persist, send, apply, then `advance`. Node ids
are member names (strings); the empty string `NO_NODE` means "no node".

Modules:
- `types`: records and `Ready`; `config`: settings; `errors`.
- `storage`, `log`, `log_unstable`: the log with its unstable tail.
- `progress`, `quorum`: flow control per follower and quorum arithmetic.
- `confchange`: membership changes.
- `read_only`, `read_index`: ReadIndex requests, heartbeat rounds and leases.
- `raft`, `election`, `follower`, `replication`: the step functions.
- `rawnode`: the caller's API. `testing`: an in-memory cluster for tests.
"""

from __future__ import annotations

from rayconf.actors.raft.config import Config
from rayconf.actors.raft.errors import (
    ConfChangeRejected,
    ProposalDropped,
    RaftError,
    ReadyNotAdvanced,
    SnapshotOutOfDate,
    SnapshotTemporarilyUnavailable,
    StepLocalMessage,
    StepPeerNotFound,
    StorageCompacted,
    StorageUnavailable,
)
from rayconf.actors.raft.read_only import LEASE_BASED, SAFE
from rayconf.actors.raft.rawnode import ProgressStatus, RawNode, Status
from rayconf.actors.raft.storage import MemoryStorage, Storage
from rayconf.actors.raft.types import (
    NO_NODE,
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
)

__all__ = [
    "LEASE_BASED",
    "NO_NODE",
    "SAFE",
    "ConfChange",
    "ConfChangeRejected",
    "ConfChangeSingle",
    "ConfChangeTransition",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NodeId",
    "ProgressStatus",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "ReadyNotAdvanced",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDate",
    "SnapshotTemporarilyUnavailable",
    "SoftState",
    "StateType",
    "Status",
    "StepLocalMessage",
    "StepPeerNotFound",
    "Storage",
    "StorageCompacted",
    "StorageUnavailable",
]
