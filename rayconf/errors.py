"""Typed errors raised by every part of rayconf.

Errors cross Ray actor calls, which pickle them: pickle rebuilds an exception
from its message alone and then restores its attributes, so every keyword
argument here has a default.

Each message names the offending value and the next step. Callers catch the
narrowest class they can handle; `RayconfError` is the base of them all.
Several classes also derive from a builtin (`ValueError`, `KeyError`) so that
generic code that catches the builtin keeps working.
"""

from __future__ import annotations


class RayconfError(Exception):
    """Base class of every error that rayconf raises on purpose."""


# --- Bad input: the request is wrong and retrying it unchanged cannot help. ---


class InvalidRequest(RayconfError, ValueError):
    """A request is malformed: a wrong type, an unknown field or a bad range."""


class InvalidKey(InvalidRequest):
    """A key or path breaks a naming rule; `rule` names which one."""

    def __init__(self, message: str, *, key: bytes | str = b"", rule: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.rule = rule


class ValueTooLarge(InvalidRequest):
    """A value is above `max_value_bytes`."""

    def __init__(self, message: str, *, size_bytes: int = 0, limit_bytes: int = 0) -> None:
        super().__init__(message)
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class TooManyOperations(InvalidRequest):
    """A transaction has more operations than `max_txn_ops` allows."""


# --- Revisions. ---


class Compacted(RayconfError):
    """The requested revision is below the compaction point and its history is gone.

    `compact_revision` is the oldest revision that can still be read; resume
    or re-read from it.
    """

    def __init__(self, message: str, *, compact_revision: int = 0, requested_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
        self.requested_revision = requested_revision


class FutureRevision(RayconfError):
    """The requested revision is above the newest revision of the store."""

    def __init__(self, message: str, *, current_revision: int = 0, requested_revision: int = 0) -> None:
        super().__init__(message)
        self.current_revision = current_revision
        self.requested_revision = requested_revision


# --- Transactions. ---


class TxnFailed(RayconfError):
    """A compare-and-swap found a different value, so nothing was written.

    `revision` is the store revision at which the compare was evaluated and
    `current` is the key's value at that revision, when the caller asked for it.
    """

    def __init__(self, message: str, *, revision: int = 0, current: object = None) -> None:
        super().__init__(message)
        self.revision = revision
        self.current = current


# --- Durability and files on disk. ---


class StorageError(RayconfError):
    """A file of the data directory cannot be read or written."""


class WALCorruption(StorageError):
    """A write-ahead log record before the tail fails its checksum.

    Start-up stops here instead of guessing, because records after the damage
    may have been acknowledged. `path` and `offset_bytes` locate the record.
    """

    def __init__(self, message: str, *, path: str = "", offset_bytes: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.offset_bytes = offset_bytes


class SnapshotCorruption(StorageError):
    """A snapshot file is missing, truncated or fails its checksum."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class ChunkMissing(StorageError):
    """A chunk of a large value is not in this member's chunk store; `digest` is its sha256 in hex."""

    def __init__(self, message: str, *, digest: str = "") -> None:
        super().__init__(message)
        self.digest = digest


class ChunkCorrupt(StorageError):
    """A chunk's bytes do not match the sha256 that names it; `path` locates the bad copy, if on disk."""

    def __init__(self, message: str, *, digest: str = "", path: str = "") -> None:
        super().__init__(message)
        self.digest = digest
        self.path = path


# --- Availability. ---


class Unavailable(RayconfError):
    """No quorum or no reachable member could serve the request; retry later."""


class NotLeader(Unavailable):
    """The member that was asked is not the leader; `leader_hint` names the leader it last heard from, if any."""

    def __init__(self, message: str, *, leader_hint: str | None = None) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


# --- Access control. Messages name users and roles, never a password or a token. ---


class AuthError(RayconfError):
    """Base class of the access-control errors."""


class AuthenticationFailed(AuthError):
    """The caller is not authenticated: no credentials, a wrong password, or a bad, expired or revoked token.

    `user` names the user the credentials claimed, when known.
    """

    def __init__(self, message: str, *, user: str = "") -> None:
        super().__init__(message)
        self.user = user


class TooManyLoginAttempts(AuthenticationFailed):
    """Logins of `user` failed too often; the next attempt is accepted after `retry_after_s`."""

    def __init__(self, message: str, *, user: str = "", retry_after_s: float = 0.0) -> None:
        super().__init__(message, user=user)
        self.retry_after_s = retry_after_s


class PermissionDenied(AuthError):
    """The authenticated user lacks the right for the request; `user` and `right` name them."""

    def __init__(self, message: str, *, user: str = "", right: str = "") -> None:
        super().__init__(message)
        self.user = user
        self.right = right
