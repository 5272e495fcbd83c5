"""Request checks that run before a command touches the state.

Every replica runs the same checks on the same command, so a rejected command
is rejected everywhere and leaves every state unchanged.
"""

from __future__ import annotations

from rayconf.errors import InvalidKey, InvalidRequest, TooManyOperations, ValueTooLarge
from rayconf.store.auth import check_auth_change
from rayconf.store.keys import RANGE_END_OPEN
from rayconf.store.limits import MIB, Limits
from rayconf.store.manifest import decode_manifest, is_manifest
from rayconf.store.records import (
    AuthChange,
    Command,
    CompareOp,
    Compact,
    Compare,
    CompareTarget,
    DeleteRange,
    Operation,
    Put,
    RangeRequest,
    Txn,
)


def check_key(key: object, limits: Limits, what: str = "key") -> bytes:
    if not isinstance(key, bytes):
        raise InvalidRequest(f"{what} must be bytes, got {type(key).__name__}; encode the path as UTF-8")
    if not key:
        raise InvalidKey(f"{what} is empty; give a key such as b'/app/x'", key=key, rule="empty")
    if len(key) > limits.max_key_bytes:
        raise InvalidKey(
            f"{what} {_show(key)} is {len(key)} bytes, above max_key_bytes ({limits.max_key_bytes}); shorten it",
            key=key,
            rule="length",
        )
    return key


def check_value(key: bytes, value: object, limits: Limits) -> None:
    if not isinstance(value, bytes):
        raise InvalidRequest(f"value of {_show(key)} must be bytes, got {type(value).__name__}")
    if len(value) > limits.max_value_bytes:
        raise ValueTooLarge(
            f"value of {_show(key)} is {_size(len(value))} ({len(value)} bytes), above max_value_bytes "
            f"({_size(limits.max_value_bytes)}, {limits.max_value_bytes} bytes); raise the limit in the "
            "cluster spec or split the value",
            size_bytes=len(value),
            limit_bytes=limits.max_value_bytes,
        )
    if is_manifest(value):
        _check_manifest(key, value, limits)


def _check_manifest(key: bytes, value: bytes, limits: Limits) -> None:
    """Check a chunked value by the size its manifest declares, which is what a reader will fetch."""
    try:
        manifest = decode_manifest(value)
    except InvalidRequest as error:
        raise InvalidRequest(f"value of {_show(key)}: {error}") from None
    if manifest.size_bytes > limits.max_value_bytes:
        raise ValueTooLarge(
            f"value of {_show(key)} is {_size(manifest.size_bytes)} ({manifest.size_bytes} bytes), above "
            f"max_value_bytes ({_size(limits.max_value_bytes)}, {limits.max_value_bytes} bytes); raise the "
            "limit in the cluster spec or split the value",
            size_bytes=manifest.size_bytes,
            limit_bytes=limits.max_value_bytes,
        )


def check_range_end(key: bytes, range_end: object, limits: Limits) -> None:
    if range_end is None or range_end == RANGE_END_OPEN:
        return
    if not isinstance(range_end, bytes):
        raise InvalidRequest(f"range_end must be bytes or None, got {type(range_end).__name__}")
    if len(range_end) > limits.max_key_bytes + 1:
        raise InvalidKey(f"range_end {_show(range_end)} is longer than max_key_bytes + 1", key=range_end, rule="length")
    if range_end <= key:
        raise InvalidRequest(
            f"range_end {_show(range_end)} is not above key {_show(key)}; an empty range reads nothing, "
            "so pass range_end=None for one key or a larger end"
        )


# Revisions, times and counts are stored as Arrow int64.
INT64_MAX = 2**63 - 1


def is_int(value: object) -> bool:
    """Return whether `value` is an int and not a bool, which Python counts as an int."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_limit_argument(name: str, value: object) -> int:
    """Return `value` if it is a limit argument: 0 for "no limit" or a positive int."""
    if not is_int(value) or not 0 <= value <= INT64_MAX:  # type: ignore[operator]
        raise InvalidRequest(f"{name} is {value!r}; give 0 for no limit or a positive integer")
    return value  # type: ignore[return-value]


def check_revision_argument(name: str, value: object) -> int:
    """Return `value` if it is a revision argument: 0 for "current" or a positive int."""
    if not is_int(value) or not 0 <= value <= INT64_MAX:  # type: ignore[operator]
        raise InvalidRequest(f"{name} is {value!r}; give 0 for the current revision or a positive integer")
    return value  # type: ignore[return-value]


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} is {value!r}; give True or False")


def check_range(request: RangeRequest, limits: Limits) -> None:
    if not isinstance(request, RangeRequest):
        raise InvalidRequest(f"expected a RangeRequest, got {type(request).__name__}")
    check_key(request.key, limits)
    check_range_end(request.key, request.range_end, limits)
    check_limit_argument("range limit", request.limit)
    check_revision_argument("range revision", request.revision)
    check_flag("keys_only", request.keys_only)
    check_flag("count_only", request.count_only)


def check_command(command: Command, limits: Limits) -> None:
    """Raise a typed error if `command` is malformed or breaks a limit."""
    if not isinstance(command, Command):
        raise InvalidRequest(f"expected a Command, got {type(command).__name__}")
    _check_text("request_id", command.request_id, limits.max_request_id_bytes)
    _check_text("principal", command.principal, limits.max_request_id_bytes)
    _check_text("note", command.note, limits.max_note_bytes)
    if not is_int(command.time_ms) or not 0 <= command.time_ms <= INT64_MAX:
        raise InvalidRequest(f"time_ms is {command.time_ms!r}; give milliseconds since the epoch as an int")
    body = command.body
    if isinstance(body, Compact):
        if not is_int(body.revision) or not 1 <= body.revision <= INT64_MAX:
            raise InvalidRequest(f"compact revision is {body.revision!r}; give a revision of 1 or more")
        return
    if isinstance(body, AuthChange):
        check_auth_change(body)
        return
    if not isinstance(body, Txn):
        raise InvalidRequest(f"command body must be Txn, Compact or AuthChange, got {type(body).__name__}")
    check_txn(body, limits)


def check_txn(txn: Txn, limits: Limits) -> None:
    for name, items in (("compares", txn.compares), ("success", txn.success), ("failure", txn.failure)):
        if not isinstance(items, tuple):
            raise InvalidRequest(f"txn {name} must be a tuple, got {type(items).__name__}")
        if len(items) > limits.max_txn_ops:
            raise TooManyOperations(
                f"txn has {len(items)} {name} entries, above max_txn_ops ({limits.max_txn_ops}); "
                "split it into several txns or raise the limit in the cluster spec"
            )
    for compare in txn.compares:
        _check_compare(compare, limits)
    for branch_name, branch in (("success", txn.success), ("failure", txn.failure)):
        for operation in branch:
            _check_operation(operation, limits)
        _check_no_overlap(branch_name, branch)


def _check_compare(compare: object, limits: Limits) -> None:
    if not isinstance(compare, Compare):
        raise InvalidRequest(f"txn compare must be Compare, got {type(compare).__name__}")
    check_key(compare.key, limits, "compare key")
    if not isinstance(compare.target, CompareTarget):
        raise InvalidRequest(f"compare target {compare.target!r} is unknown; use a CompareTarget such as "
                             "CompareTarget.VERSION")
    if not isinstance(compare.op, CompareOp):
        raise InvalidRequest(f"compare op {compare.op!r} is unknown; use a CompareOp such as CompareOp.EQUAL")
    if compare.target is CompareTarget.VALUE:
        check_value(compare.key, compare.operand, limits)
    elif not is_int(compare.operand) or not -INT64_MAX <= compare.operand <= INT64_MAX:  # type: ignore[operator]
        raise InvalidRequest(
            f"compare on {compare.target.value} of {_show(compare.key)} needs an integer operand, "
            f"got {compare.operand!r}"
        )


def _check_operation(operation: object, limits: Limits) -> None:
    if isinstance(operation, Put):
        check_key(operation.key, limits)
        check_value(operation.key, operation.value, limits)
        check_flag("put prev_kv", operation.prev_kv)
    elif isinstance(operation, DeleteRange):
        check_key(operation.key, limits)
        check_range_end(operation.key, operation.range_end, limits)
        check_flag("delete prev_kv", operation.prev_kv)
    elif isinstance(operation, RangeRequest):
        check_range(operation, limits)
    else:
        raise InvalidRequest(f"txn operation must be Put, DeleteRange or RangeRequest, got {type(operation).__name__}")


def _check_no_overlap(branch_name: str, branch: tuple[Operation, ...]) -> None:
    """Reject a branch that writes one key twice, as etcd does.

    With this rule every key changes at most once per revision, so a revision
    has at most one version of each key.
    """
    put_keys: set[bytes] = set()
    deletes: list[DeleteRange] = []
    for operation in branch:
        if isinstance(operation, Put):
            if operation.key in put_keys:
                raise InvalidRequest(f"txn {branch_name} puts {_show(operation.key)} twice; keep one put per key")
            put_keys.add(operation.key)
        elif isinstance(operation, DeleteRange):
            deletes.append(operation)
    for delete in deletes:
        for key in put_keys:
            if _delete_covers(delete, key):
                raise InvalidRequest(
                    f"txn {branch_name} both puts and deletes {_show(key)}; keep one write per key"
                )


def _delete_covers(delete: DeleteRange, key: bytes) -> bool:
    if delete.range_end is None:
        return key == delete.key
    return key >= delete.key and (delete.range_end == RANGE_END_OPEN or key < delete.range_end)


def check_note(note: str) -> None:
    """Raise `InvalidRequest` if a write's note has a character that is not printable.

    A note is one line shown in `rayconf history`, so a newline or a terminal
    escape in it could forge lines there. Clients and the replica that takes
    a proposal check it; the state machine does not, so logs written before
    this check replay unchanged.
    """
    for position, character in enumerate(note):
        if not character.isprintable():
            raise InvalidRequest(f"note has the unprintable character U+{ord(character):04X} at position "
                                 f"{position}; a note is one line of printable text, so remove it")


def _check_text(name: str, value: object, max_bytes: int) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{name} has a character that UTF-8 cannot encode at position {exc.start}; "
                             "remove it") from exc
    if size > max_bytes:
        raise InvalidRequest(f"{name} is {size} bytes, above the limit of {max_bytes}; shorten it")


def _show(key: bytes) -> str:
    text = key.decode("utf-8", errors="backslashreplace")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _size(size_bytes: int) -> str:
    if size_bytes >= MIB:
        return f"{size_bytes / MIB:.1f} MiB"
    if size_bytes >= 1024:
        return f"{size_bytes / 1024:.1f} KiB"
    return f"{size_bytes} bytes"
