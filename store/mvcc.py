"""The MVCC state machine: deterministic application of commands at log indexes.

Every replica applies the same committed commands in the same order through
`apply`, so every replica reaches the same state, which `hash_kv` checks. A
command is a txn or a compaction (see `records.py`). A txn that changes at
least one key gets exactly one new revision, shared by all its events. As in
etcd, a txn that changes nothing leaves the revision where it was: only reads,
a failed compare with an empty else branch, or a delete of a missing key.

Bad commands are rejected before they touch anything. The rejection is a
value in the result list rather than an exception, so one bad command in a
batch does not stop the others, and every replica rejects it the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from typing import Union

from rayconf.errors import Compacted, FutureRevision, InvalidRequest, RayconfError, Unavailable
from rayconf.store import reads
from rayconf.store.auth import AuthState, apply_auth_change, authorize_command
from rayconf.store.compaction import compact as compact_versions
from rayconf.store.keys import DirectoryEntry
from rayconf.store.limits import Limits
from rayconf.store.records import (
    AuthChange,
    AuthChangeResponse,
    ChangeRecord,
    Command,
    Compact,
    CompactResponse,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    DeleteRangeResponse,
    Event,
    EventType,
    HistoryEntry,
    KeyValue,
    OperationResponse,
    Put,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Txn,
    TxnResponse,
)
from rayconf.store.segments import merge_segments
from rayconf.store.validation import (
    check_command,
    check_key,
    check_limit_argument,
    check_range,
    check_revision_argument,
    is_int,
)
from rayconf.store.versions import VersionStore, live_to_kv

logger = logging.getLogger(__name__)

ApplyResult = Union[TxnResponse, CompactResponse, AuthChangeResponse, RayconfError]

# A new store is at revision 1 and its first change gets revision 2, as in etcd.
INITIAL_REVISION = 1
# Log indexes at which the revision changed, kept to map a read point (a log
# index) to a revision. When full, the older half is dropped.
REVISION_MARKS_MAX = 65_536


class MVCC:
    """Current state, version history and change records of one shard."""

    def __init__(self, limits: Limits | None = None) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidRequest(f"limits must be a Limits, got {type(limits).__name__}")
        self.limits = limits or Limits()
        self.versions = VersionStore()
        self.revision = INITIAL_REVISION
        # Reads below this revision raise Compacted; 0 means never compacted.
        self.compact_revision = 0
        # Log index of the last applied batch; apply() needs a larger one.
        self.applied_index = 0
        # request id -> (revision, succeeded) of its first application, oldest first.
        self.request_ids: OrderedDict[str, tuple[int, bool]] = OrderedDict()
        # Users, roles and permissions; changed only by AuthChange commands.
        self.auth = AuthState()
        # Parallel arrays of log indexes and revisions for `revision_at_index`.
        # The first pair is where this state started (0, or a snapshot). Each
        # later pair is a batch that changed the revision.
        self._mark_indexes = array("q")
        self._mark_revisions = array("q")

    # --- Writes. ---

    def apply(self, index: int, commands: Sequence[Command]) -> list[ApplyResult]:
        """Apply a batch of committed commands at log `index`; return one result each."""
        if not is_int(index):
            raise InvalidRequest(f"log index {index!r} must be an int")
        if not isinstance(commands, (list, tuple)):
            raise InvalidRequest(f"commands must be a list of Command, got {type(commands).__name__}")
        if index <= self.applied_index:
            raise InvalidRequest(
                f"log index {index} is not above the applied index {self.applied_index}; "
                "each batch must be applied once, in log order"
            )
        if not self._mark_indexes:
            self._mark(self.applied_index, self.revision)
        revision_before = self.revision
        results = [self._apply_one(command) for command in commands]
        self.applied_index = index
        if self.revision != revision_before:
            self._mark(index, self.revision)
        return results

    def _mark(self, index: int, revision: int) -> None:
        if len(self._mark_indexes) >= REVISION_MARKS_MAX:
            del self._mark_indexes[:REVISION_MARKS_MAX // 2]
            del self._mark_revisions[:REVISION_MARKS_MAX // 2]
        self._mark_indexes.append(index)
        self._mark_revisions.append(revision)

    def revision_at_index(self, index: int) -> int | None:
        """Return the revision of this state as it was right after log `index` was applied.

        Returns None when `index` is older than the marks kept, or older than
        the index this state started from (a snapshot's).
        A linearizable read served at a ReadIndex reads at this revision.
        """
        if index >= self.applied_index:
            return self.revision
        position = bisect_right(self._mark_indexes, index)
        if position == 0:
            return None
        return self._mark_revisions[position - 1]

    def execute(self, command: Command) -> TxnResponse | CompactResponse | AuthChangeResponse:
        """Apply one command at the next log index and raise its error, if any."""
        result = self.apply(self.applied_index + 1, [command])[0]
        if isinstance(result, RayconfError):
            raise result
        return result

    def put(self, key: bytes, value: bytes, *, prev_kv: bool = False, **header: object) -> TxnResponse:
        response = self.execute(_command(Txn(success=(Put(key, value, prev_kv),)), header))
        assert isinstance(response, TxnResponse)
        return response

    def delete(
        self, key: bytes, range_end: bytes | None = None, *, prev_kv: bool = False, **header: object
    ) -> TxnResponse:
        response = self.execute(_command(Txn(success=(DeleteRange(key, range_end, prev_kv),)), header))
        assert isinstance(response, TxnResponse)
        return response

    def txn(self, txn: Txn, **header: object) -> TxnResponse:
        response = self.execute(_command(txn, header))
        assert isinstance(response, TxnResponse)
        return response

    def compact(self, revision: int, **header: object) -> CompactResponse:
        response = self.execute(_command(Compact(revision), header))
        assert isinstance(response, CompactResponse)
        return response

    def _apply_one(self, command: Command) -> ApplyResult:
        try:
            check_command(command, self.limits)
        except RayconfError as error:
            return error
        if command.request_id and command.request_id in self.request_ids:
            revision, succeeded = self.request_ids[command.request_id]
            if isinstance(command.body, Compact):
                # A compaction remembers the revision it compacted at.
                return CompactResponse(revision=self.revision, compact_revision=revision, duplicate=True)
            if isinstance(command.body, AuthChange):
                return AuthChangeResponse(revision=self.revision, auth_revision=self.auth.revision, duplicate=True)
            return TxnResponse(succeeded=succeeded, revision=revision, duplicate=True)
        try:
            # Checked at apply time, against the auth state at this log index,
            # so every replica accepts or denies the command alike.
            authorize_command(self.auth, command)
            if isinstance(command.body, Compact):
                result: TxnResponse | CompactResponse | AuthChangeResponse = self._apply_compact(command.body)
                succeeded = True
            elif isinstance(command.body, AuthChange):
                result = self._apply_auth_change(command, command.body)
                succeeded = True
            else:
                result = self._apply_txn(command, command.body)
                succeeded = result.succeeded
        except RayconfError as error:
            return error
        if isinstance(result, CompactResponse):
            remembered = result.compact_revision
        else:
            remembered = result.revision
        self._remember_request(command.request_id, remembered, succeeded)
        self._flush_if_full()
        return result

    def _apply_txn(self, command: Command, txn: Txn) -> TxnResponse:
        succeeded = all(self._compare_holds(compare) for compare in txn.compares)
        branch = txn.success if succeeded else txn.failure
        for operation in branch:
            if isinstance(operation, RangeRequest) and operation.revision:
                self._check_readable(operation.revision)
        new_revision = self.revision + 1
        responses: list[OperationResponse] = []
        events: list[Event] = []
        for operation in branch:
            if isinstance(operation, Put):
                previous, current = self.versions.put(operation.key, operation.value, new_revision)
                events.append(Event(EventType.PUT, current, previous))
                responses.append(PutResponse(previous if operation.prev_kv else None))
            elif isinstance(operation, DeleteRange):
                responses.append(self._delete_range(operation, new_revision, events))
            else:
                # A read of the live state includes this txn's earlier writes, so it
                # reports the revision those writes will have.
                revision = operation.revision or (new_revision if events else self.revision)
                responses.append(reads.range_at(self, operation, revision, live=operation.revision == 0))
        if events:
            self.revision = new_revision
            self.versions.record_change(
                ChangeRecord(new_revision, command.principal, command.time_ms, command.note, command.request_id)
            )
        return TxnResponse(succeeded, self.revision, tuple(responses), tuple(events))

    def _delete_range(self, operation: DeleteRange, revision: int, events: list[Event]) -> DeleteRangeResponse:
        if operation.range_end is None:
            keys = [operation.key] if operation.key in self.versions.live else []
        else:
            keys = list(self.versions.keys_in_range(operation.key, operation.range_end, live_only=True))
        previous_kvs: list[KeyValue] = []
        for key in keys:
            previous = self.versions.delete(key, revision)
            assert previous is not None, "a listed live key has a live version"
            events.append(Event(EventType.DELETE, KeyValue(key, b"", 0, revision, 0), previous))
            previous_kvs.append(previous)
        return DeleteRangeResponse(len(keys), tuple(previous_kvs) if operation.prev_kv else ())

    def _compare_holds(self, compare: Compare) -> bool:
        record = self.versions.live.get(compare.key)
        if compare.target is CompareTarget.VALUE:
            if record is None:
                return False
            actual: bytes | int = record.value
        elif compare.target is CompareTarget.VERSION:
            actual = record.version if record else 0
        elif compare.target is CompareTarget.CREATE_REVISION:
            actual = record.create_revision if record else 0
        else:
            actual = record.mod_revision if record else 0
        operand = compare.operand
        if compare.op is CompareOp.EQUAL:
            return actual == operand
        if compare.op is CompareOp.NOT_EQUAL:
            return actual != operand
        if compare.op is CompareOp.LESS:
            return actual < operand  # type: ignore[operator]
        return actual > operand  # type: ignore[operator]

    def _apply_compact(self, compact: Compact) -> CompactResponse:
        if compact.revision <= self.compact_revision:
            raise Compacted(
                f"revision {compact.revision} is already compacted (compact revision "
                f"{self.compact_revision}); compact at a higher revision",
                compact_revision=self.compact_revision,
                requested_revision=compact.revision,
            )
        if compact.revision > self.revision:
            raise FutureRevision(
                f"cannot compact at revision {compact.revision}: the store is at revision {self.revision}",
                current_revision=self.revision,
                requested_revision=compact.revision,
            )
        removed = compact_versions(self.versions, compact.revision)
        self.compact_revision = compact.revision
        logger.info("compacted at revision %d: removed %d versions", compact.revision, removed)
        return CompactResponse(revision=self.revision, compact_revision=self.compact_revision)

    def _apply_auth_change(self, command: Command, change: AuthChange) -> AuthChangeResponse:
        apply_auth_change(self.auth, change)
        logger.info("applied auth change %s on %r at auth revision %d by %r, note %r", change.action,
                    change.name, self.auth.revision, command.principal, command.note)
        return AuthChangeResponse(revision=self.revision, auth_revision=self.auth.revision)

    def _remember_request(self, request_id: str, revision: int, succeeded: bool) -> None:
        if not request_id:
            return
        self.request_ids[request_id] = (revision, succeeded)
        while len(self.request_ids) > self.limits.dedup_request_ids_max:
            self.request_ids.popitem(last=False)

    def _flush_if_full(self) -> None:
        versions = self.versions
        if max(versions.tail_rows, len(versions.tail_changes)) < self.limits.tail_versions_max:
            return
        versions.flush()
        if len(versions.segments) > self.limits.segments_max:
            versions.replace_segments(merge_segments(versions.segments, versions.next_segment_name()))

    def flush(self) -> None:
        """Move the in-memory tail of superseded versions into an Arrow segment."""
        self.versions.flush()

    # --- Reads. ---

    def range(self, request: RangeRequest) -> RangeResponse:
        check_range(request, self.limits)
        revision = request.revision or self.revision
        self._check_readable(revision)
        return reads.range_at(self, request, revision, live=revision == self.revision)

    def range_at_index(self, request: RangeRequest, index: int) -> RangeResponse:
        """Serve `request` as of log `index`, a linearizable read point, unless it names a revision.

        The state may have applied entries past `index` that are not yet
        exposed to every reader (see actors/store_leases.py), so it reads at
        the revision that `index` left. Raises `Unavailable` when that
        revision is no longer kept; a retry gets a newer read point.
        """
        if request.revision == 0:
            revision = self.revision_at_index(index)
            if revision is None or revision < self.compact_revision:
                raise Unavailable(f"read point {index} is older than this state keeps (applied index "
                                  f"{self.applied_index}); retry the read")
            if revision != self.revision:
                request = dataclasses.replace(request, revision=revision)
        return self.range(request)

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        if revision == 0:
            # The hot path: one checked dict lookup, no request object.
            record = self.versions.live.get(check_key(key, self.limits))
            return None if record is None else live_to_kv(key, record)
        response = self.range(RangeRequest(key, revision=revision))
        return response.kvs[0] if response.kvs else None

    def ls(self, directory: bytes, revision: int = 0) -> list[DirectoryEntry]:
        """List the immediate children of `directory`, a key prefix ending in `/`."""
        check_key(directory, self.limits, "directory")
        if not directory.endswith(b"/"):
            raise InvalidRequest(f"directory {directory!r} must end with '/'; write {directory + b'/'!r}")
        revision = check_revision_argument("ls revision", revision) or self.revision
        self._check_readable(revision)
        return reads.list_children(self, directory, revision)

    def history(self, key: bytes, *, limit: int = 0) -> list[HistoryEntry]:
        """Return the retained versions of `key`, oldest first; `limit` keeps the newest ones."""
        check_key(key, self.limits)
        check_limit_argument("history limit", limit)
        return reads.history(self, key, limit)

    def events(self, start_revision: int, key: bytes = b"", range_end: bytes | None = b"") -> list[Event]:
        """Return every event at `start_revision` or later on `key` or `[key, range_end)`.

        The default is the whole key space. Events are in revision order, and
        in key order within a revision. `start_revision` must be above the
        compact revision: a tombstone at the compact revision itself is gone.
        """
        if not is_int(start_revision) or start_revision < 1:
            raise InvalidRequest(f"start_revision is {start_revision!r}; give a revision of 1 or more")
        if not isinstance(key, bytes):
            raise InvalidRequest(f"key must be bytes, got {type(key).__name__}")
        if range_end is not None and not isinstance(range_end, bytes):
            raise InvalidRequest(f"range_end must be bytes or None, got {type(range_end).__name__}")
        if start_revision <= self.compact_revision:
            raise Compacted(
                f"events from revision {start_revision} are compacted; resume from revision "
                f"{self.compact_revision + 1} or later",
                compact_revision=self.compact_revision,
                requested_revision=start_revision,
            )
        return reads.events_since(self, start_revision, key, range_end)

    def hash_kv(self, revision: int = 0) -> int:
        """Return a hash of every retained version at or below `revision`.

        Two replicas that applied the same commands return the same hash,
        whatever the split of their versions into live, tail and segments.
        """
        revision = check_revision_argument("hash revision", revision) or self.revision
        self._check_readable(revision)
        return reads.hash_versions(self, revision)

    def _check_readable(self, revision: int) -> None:
        if revision < self.compact_revision:
            raise Compacted(
                f"revision {revision} is compacted; the oldest readable revision is {self.compact_revision}",
                compact_revision=self.compact_revision,
                requested_revision=revision,
            )
        if revision > self.revision:
            raise FutureRevision(
                f"revision {revision} is above the current revision {self.revision}; "
                "wait for it to be applied or read at the current revision",
                current_revision=self.revision,
                requested_revision=revision,
            )

    def statistics(self) -> dict[str, int]:
        versions = self.versions
        return {
            "revision": self.revision,
            "compact_revision": self.compact_revision,
            "applied_index": self.applied_index,
            "live_keys": len(versions.live),
            "retained_keys": len(versions.all_index),
            "tail_versions": versions.tail_rows,
            "segments": len(versions.segments),
            "segment_versions": sum(segment.row_count for segment in versions.segments),
            "request_ids": len(self.request_ids),
            "auth_revision": self.auth.revision,
        }


def _command(body: Txn | Compact | AuthChange, header: dict[str, object]) -> Command:
    unknown = set(header) - {"request_id", "principal", "time_ms", "note"}
    if unknown:
        raise InvalidRequest(f"unknown command fields {sorted(unknown)}; use request_id, principal, time_ms, note")
    return Command(body, **header)  # type: ignore[arg-type]
