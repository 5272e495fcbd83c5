"""Records of the storage engine: key-values, events, requests and responses.

Revision fields follow etcd: `create_revision` is the revision that created
the key (reset by a delete and a new put), `mod_revision` the revision of its
latest change, `version` 1 on create and +1 per put. A deleted key has no
record. Its delete shows as an `Event` of type DELETE whose `kv` carries the
key and the delete revision, with the other fields zero.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

from rayconf.store.keys import RANGE_END_OPEN


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One change of one key at one revision, as watches and history report it."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """Change record of a revision: who made it, when by the leader's wall clock, and why."""

    revision: int
    principal: str
    time_ms: int
    note: str
    request_id: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One version of a key with the change record of its revision."""

    event: Event
    change: ChangeRecord | None


# --- Requests. ---


class CompareTarget(enum.Enum):
    VALUE = "value"
    VERSION = "version"
    CREATE_REVISION = "create_revision"
    MOD_REVISION = "mod_revision"


class CompareOp(enum.Enum):
    EQUAL = "="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn guard on one key: `<target of key> <op> <operand>`.

    A missing key has version, create_revision and mod_revision 0 and no value,
    as in etcd: a VALUE compare on a missing key is false for every operator,
    so `version = 0` is the way to ask "absent".
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRange:
    """Delete `key` alone when `range_end` is None, else every key in `[key, range_end)`."""

    key: bytes
    range_end: bytes | None = None
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """Read `key` alone when `range_end` is None, else `[key, range_end)`.

    `limit` 0 means no limit. `revision` 0 means the current revision.
    """

    key: bytes
    range_end: bytes | None = None
    limit: int = 0
    revision: int = 0
    keys_only: bool = False
    count_only: bool = False


Operation = Union[Put, DeleteRange, RangeRequest]


@dataclass(frozen=True, slots=True)
class Txn:
    """If every compare holds, run `success` in order, else `failure` in order."""

    compares: tuple[Compare, ...] = ()
    success: tuple[Operation, ...] = ()
    failure: tuple[Operation, ...] = ()


@dataclass(frozen=True, slots=True)
class Compact:
    """Drop every version that is not visible at `revision` or later."""

    revision: int


@dataclass(frozen=True, slots=True)
class AuthChange:
    """One change of the access-control state; `action` is a member of `AUTH_ACTIONS`.

    Only the fields the action uses are set. A password travels only as its
    scrypt hash and salt, so no log entry or snapshot contains it. `secret` is
    the token signing key that `auth_enable` installs.
    """

    action: str
    name: str = ""
    role: str = ""
    key: bytes = b""
    range_end: bytes | None = None
    permission: str = ""
    # Left out of repr, so a logged or raised command shows no credential material.
    password_hash: bytes = field(default=b"", repr=False)
    salt: bytes = field(default=b"", repr=False)
    secret: bytes = field(default=b"", repr=False)


AUTH_ACTIONS = (
    "auth_enable",
    "auth_disable",
    "user_add",
    "user_delete",
    "user_passwd",
    "user_grant_role",
    "user_revoke_role",
    "role_add",
    "role_delete",
    "role_grant_permission",
    "role_revoke_permission",
)


@dataclass(frozen=True, slots=True)
class Command:
    """One replicated request: a txn, a compaction or an auth change, with its change metadata.

    `request_id` makes a retried command apply at most once; empty means the
    caller does not need that protection. `time_ms` is the leader's wall clock
    at proposal, so every replica records the same time.
    """

    body: Txn | Compact | AuthChange
    request_id: str = ""
    principal: str = ""
    time_ms: int = 0
    note: str = ""


# --- Responses. ---


@dataclass(frozen=True, slots=True)
class RangeResponse:
    """Keys read at `revision`. When `more` is set, read on from `next_key`."""

    kvs: tuple[KeyValue, ...]
    count: int
    more: bool
    revision: int
    next_key: bytes = RANGE_END_OPEN


@dataclass(frozen=True, slots=True)
class PutResponse:
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteRangeResponse:
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


OperationResponse = Union[PutResponse, DeleteRangeResponse, RangeResponse]


@dataclass(frozen=True, slots=True)
class TxnResponse:
    """Outcome of a txn. `revision` is the store revision after it ran.

    `duplicate` is set when the request id had been applied before: then only
    `succeeded` and `revision` are those of the first application, and
    `responses` is empty.
    """

    succeeded: bool
    revision: int
    responses: tuple[OperationResponse, ...] = ()
    events: tuple[Event, ...] = field(default=(), compare=False)
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class AuthChangeResponse:
    """Outcome of an auth change: the auth revision it was applied at.

    Auth changes are numbered by their own counter, as in etcd, so that every
    key revision keeps at least one event for watches. For a `duplicate`,
    `auth_revision` is the current auth revision, not that of the first
    application, because request ids remember key revisions only.
    """

    revision: int
    auth_revision: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class CompactResponse:
    """Outcome of a compaction. `duplicate` is set when its request id had been applied before."""

    revision: int
    compact_revision: int
    duplicate: bool = False
