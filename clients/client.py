"""The synchronous Python client of a rayconf cluster.

The client finds the leader, sends writes to it with a request id, and retries
with jittered exponential backoff on `NotLeader`, `Unavailable` and dead
actors. Retrying a write is safe because the state machine applies a request
id at most once, as long as the id is among the `dedup_request_ids_max`
latest ones it remembers. Reads default to linearizable, and may go to any member.

With auth enabled, the client logs in with `user` and `password` and
sends the token with every call, logging in again when the token expires or
is revoked; or it sends a `token` it was given, such as a service token.

Keys are paths, given as text (`"/app/x"`) or as UTF-8 bytes, and both are
checked by the path rules. A range prefix given as bytes is used as it is.
"""

from __future__ import annotations

import getpass
import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, Union

import ray

from sortedcontainers import SortedList

from rayconf.actors.cluster import ClusterSpec, find_replica, find_store
from rayconf.clients.chunk_cache import ChunkCache
from rayconf.clients.large_values import CHUNK_CACHE_BYTES, LargeValues, manifest_of, value_too_large
from rayconf.clients.read_channel import ReadChannels
from rayconf.errors import AuthenticationFailed, InvalidRequest, NotLeader, RayconfError, TxnFailed, Unavailable
from rayconf.store.keys import DirectoryEntry, iter_children, prefix_end, validate_directory, validate_path
from rayconf.store.validation import check_note
from rayconf.store.records import (
    AuthChange,
    Command,
    Compact,
    CompactResponse,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    DeleteRangeResponse,
    HistoryEntry,
    KeyValue,
    Put,
    RangeRequest,
    RangeResponse,
    Txn,
    TxnResponse,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
CONSISTENCIES = ("linearizable", "serializable")
# "linearizable", "serializable", or the largest acceptable staleness in milliseconds.
Consistency = Union[str, int]


def parse_consistency(consistency: Consistency) -> tuple[str, int | None]:
    """Return (mode, staleness bound in ms or None) for a `consistency` argument."""
    if isinstance(consistency, bool):
        raise InvalidRequest(f"consistency {consistency!r} is invalid; use 'linearizable', 'serializable' or ms")
    if isinstance(consistency, int):
        if consistency < 0:
            raise InvalidRequest(f"staleness bound {consistency} ms is negative; give 0 or more milliseconds")
        return "serializable", consistency
    if consistency not in CONSISTENCIES:
        raise InvalidRequest(f"consistency {consistency!r} is unknown; use one of {CONSISTENCIES} or a "
                             "staleness bound in milliseconds")
    return consistency, None


def check_min_revision(min_revision: object) -> None:
    """Raise `InvalidRequest` unless `min_revision` is an integer from 0 to 2**63 - 1."""
    if type(min_revision) is not int or not 0 <= min_revision < 2**63:
        raise InvalidRequest(f"min_revision {min_revision!r} is invalid; give a revision as an integer, "
                             "or 0 for none")


BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# A token this close to its expiry is renewed before the next call.
TOKEN_RENEW_MARGIN_MS = 10_000
# With auth disabled, a client with a password checks this often whether auth is on.
AUTH_RECHECK_MS = 5_000


# Time one read attempt may take before the client retries it. A store whose
# replica or leader stopped replying needs a few seconds to move on, so a
# read retries within the client's timeout instead of spending all of it on
# one stuck call.
READ_ATTEMPT_TIMEOUT_S = 5.0

def to_key(path: str | bytes) -> bytes:
    """Return the engine key of a path, checked by the path rules; bytes must be UTF-8 paths too.

    The native client writes only hierarchical paths, so every key it
    creates can be listed, exported and addressed from the command line.
    """
    return validate_path(path)


class Client:
    """A connection to one rayconf cluster, through its replica actors."""

    def __init__(self, spec: ClusterSpec, *, timeout_s: float = 10.0, principal: str = "",
                 data_center: str | None = None, session: bool = True, user: str | None = None,
                 password: str | None = None, token: str | None = None,
                 chunk_cache_bytes: int = CHUNK_CACHE_BYTES, read_channel: bool = True) -> None:
        """Connect to the cluster of `spec`.

        Reads go to a shard store of `data_center` (default: the
        RAYCONF_DATA_CENTER environment variable, else the spec's first data
        center), or to a replica when that data center has no store. With
        `session`, every read waits for the newest revision this client wrote.
        `user` with `password`, or `token`, authenticate the client when auth
        is enabled; with auth disabled, `user` is only the recorded principal.
        Up to `chunk_cache_bytes` of the chunks of large values read or
        written stay in memory for later reads; 0 turns that cache off.
        With `read_channel`, reads go to the store over its TCP read channel
        (see `actors/read_channel.py`), else over Ray actor calls.
        """
        self.spec = spec
        self.timeout_s = timeout_s
        self.principal = user or principal
        self.user = user or principal
        # Kept only in memory, to log in again when the token expires.
        self._password = password
        self._token = token
        # Expiry of `_token` in ms since the epoch; 0 when unknown (a token given by the caller).
        self._token_expires_ms = 0
        self.data_center = data_center or os.environ.get("RAYCONF_DATA_CENTER") or spec.data_centers[0].name
        if self.data_center not in {dc.name for dc in spec.data_centers}:
            raise InvalidRequest(f"data center {self.data_center!r} is not in the cluster spec; choose one of "
                                 f"{[dc.name for dc in spec.data_centers]}")
        self.session = session
        # Store, revision and age of the last read, for callers that show staleness.
        self.last_read: dict[str, Any] = {}
        self._aio: Any = None
        self._client_id = uuid.uuid4().hex[:16]
        self._sequence = itertools.count(1)
        self._leader = ""
        self._random = random.Random()
        # The newest revision this client wrote; see `last_revision`.
        self.last_revision = 0
        self.large_values = LargeValues(spec, data_center=self.data_center, timeout_s=timeout_s,
                                        cache=ChunkCache(chunk_cache_bytes))
        self.read_channel = read_channel
        self._channels = ReadChannels(spec) if read_channel else None

    def __repr__(self) -> str:
        # Never shows the password or the token.
        return f"Client(namespace={self.spec.namespace!r}, user={self.user!r}, data_center={self.data_center!r})"

    @property
    def auth(self) -> Any:
        """User, role and auth administration (an `AuthAdmin`)."""
        from rayconf.clients.auth_admin import AuthAdmin
        return AuthAdmin(self)

    # --- Credentials. ---

    def current_token(self) -> str | None:
        """Return the token to send: the caller's, or a login token renewed before it expires."""
        if self._password is None:
            return self._token
        now_ms = int(time.time() * 1000)
        if self._token is None or (self._token_expires_ms and now_ms > self._token_expires_ms - TOKEN_RENEW_MARGIN_MS):
            self.login()
        return self._token

    def login(self) -> None:
        """Log in with the user and password; raises `AuthenticationFailed` or `TooManyLoginAttempts`."""
        if self._password is None:
            raise InvalidRequest("this client has no password; pass user= and password=, or token=")
        handle = find_replica(self.spec, self._find_leader())
        if handle is None:
            raise Unavailable("the leader is not running; retry the login")
        try:
            reply = ray.get(handle.authenticate.remote(self.user, self._password), timeout=self.timeout_s)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, RayconfError):
                raise error.cause from None
            raise
        if reply["token"]:
            self._token, self._token_expires_ms = reply["token"], reply["expires_ms"]
        else:
            # Auth is disabled: no token, and ask again after a while.
            self._token, self._token_expires_ms = "", int(time.time() * 1000) + AUTH_RECHECK_MS

    @property
    def aio(self) -> Any:
        """The asyncio form of this client (an `AsyncClient` with the same settings)."""
        if self._aio is None:
            from rayconf.clients.async_client import AsyncClient
            self._aio = AsyncClient(self.spec, timeout_s=self.timeout_s, principal=self.principal,
                                    data_center=self.data_center, session=self.session,
                                    token_source=self.current_token, read_channel=self.read_channel)
            self._aio.large_values.cache = self.large_values.cache
        return self._aio

    # --- Writes. ---

    def put(self, key: str | bytes, value: bytes, *, prev_kv: bool = False, note: str = "") -> TxnResponse:
        _check_value(value)
        return self.txn(Txn(success=(Put(to_key(key), value, prev_kv),)), note=note)

    def delete(self, key: str | bytes, *, prefix: bool = False, prev_kv: bool = False,
               note: str = "") -> DeleteRangeResponse:
        raw = _prefix_key(key) if prefix else to_key(key)
        end = prefix_end(raw) if prefix else None
        response = self.txn(Txn(success=(DeleteRange(raw, end, prev_kv),)), note=note)
        result = response.responses[0]
        assert isinstance(result, DeleteRangeResponse)
        return result

    def cas(self, key: str | bytes, expected: bytes | None, value: bytes, *, note: str = "") -> TxnResponse:
        """Write `value` only if the key contains `expected` (None: only if the key is absent).

        Raises `TxnFailed` with the current value when the compare fails.
        """
        raw = to_key(key)
        response = self.txn(cas_guard(raw, expected, value), note=note)
        if not response.succeeded:
            raise cas_failure(raw, expected, response)
        return response

    def txn(self, txn: Txn, *, note: str = "") -> TxnResponse:
        """Run `txn`; large values in it travel as chunks, and large values in its responses are fetched."""
        prepared, chunk_refs = self.large_values.prepare_txn(txn)
        command = self._command(prepared, note)
        result = self._propose(command, chunk_refs)
        assert isinstance(result, TxnResponse)
        self.last_revision = max(self.last_revision, result.revision)
        return self.large_values.resolve_txn(result)

    def put_file(self, key: str | bytes, path: str | os.PathLike[str], *, note: str = "") -> TxnResponse:
        """Store the contents of the file at `path` as the value of `key`, reading it one chunk at a time."""
        raw = to_key(key)
        with open(path, "rb") as file:
            size_bytes = os.fstat(file.fileno()).st_size
            if size_bytes > self.spec.limits.max_value_bytes:
                raise value_too_large(raw, size_bytes, self.spec.limits.max_value_bytes)
            if size_bytes <= self.spec.limits.inline_value_bytes_max:
                return self.put(raw, file.read(), note=note)
            manifest, chunk_refs = self.large_values.upload_file(raw, file)
        result = self._propose(self._command(Txn(success=(Put(raw, manifest),)), note), chunk_refs)
        assert isinstance(result, TxnResponse)
        self.last_revision = max(self.last_revision, result.revision)
        return result

    def get_to_file(self, key: str | bytes, path: str | os.PathLike[str], *, revision: int = 0,
                    consistency: Consistency = "linearizable") -> KeyValue | None:
        """Write the value of `key` to `path`, a large value one checked chunk at a time.

        Returns the key-value with its value left as read from the store (a
        manifest for a large value), or None when the key does not exist, in
        which case no file is written.
        """
        response = self.range_request(RangeRequest(to_key(key), revision=revision), consistency,
                                      fetch_values=False)
        if not response.kvs:
            return None
        kv = response.kvs[0]
        manifest = manifest_of(kv.value)
        if manifest is None:
            target = Path(path)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(kv.value)
            partial.replace(target)
        else:
            self.large_values.write_to(manifest, Path(path))
        return kv

    def value_of(self, kv: KeyValue) -> KeyValue:
        """Return `kv` with a large value fetched, for key-values from watch events, which carry only the manifest."""
        return self.large_values.value_of(kv)

    def compact(self, revision: int) -> CompactResponse:
        result = self._propose(self._command(Compact(revision), ""))
        assert isinstance(result, CompactResponse)
        return result

    def _command(self, body: Txn | Compact | AuthChange, note: str) -> Command:
        if isinstance(note, str):
            check_note(note)
        request_id = f"{self._client_id}:{next(self._sequence)}"
        return Command(body, request_id=request_id, principal=self.principal,
                       time_ms=int(time.time() * 1000), note=note)

    def _propose(self, command: Command, chunk_refs: dict[bytes, Any] | None = None) -> Any:
        def attempt() -> Any:
            leader = self._find_leader()
            # NOTE: find_replica looks the name up in the Ray GCS. While the head node is
            # down, this waits even though the replicas keep serving.
            handle = find_replica(self.spec, leader)
            if handle is None:
                self._leader = ""
                raise Unavailable(f"replica {leader} is not running")
            try:
                if chunk_refs:
                    # The leader spends up to half the time copying chunks to
                    # the voters and up to half waiting for the entry to apply.
                    call = handle.propose.remote(command, self.timeout_s / 2, chunk_refs,
                                                 token=self.current_token())
                    return ray.get(call, timeout=self.timeout_s + 1)
                return ray.get(handle.propose.remote(command, token=self.current_token()), timeout=self.timeout_s)
            except NotLeader as error:
                self._leader = error.leader_hint or ""
                raise
        result = self._retry(attempt, f"request {command.request_id}")
        if isinstance(result, RayconfError):
            raise result
        return result

    # --- Watches. ---

    def watch(self, prefix_or_key: str | bytes, **options: Any) -> Any:
        """Watch a prefix (the default) or a key; see `rayconf.clients.watch.watch` for the options.

        The watch reads from a hub in this client's data center. With a
        session, it first waits for the newest revision this client wrote.
        """
        from rayconf.clients.watch import watch

        options.setdefault("data_center", self.data_center)
        if self._password is not None or self._token:
            options.setdefault("token_source", self.current_token)
        if self.session:
            options.setdefault("min_revision", self.last_revision)
        return watch(self.spec, prefix_or_key, **options)

    # --- Reads. ---

    def get(self, key: str | bytes, *, revision: int = 0, consistency: Consistency = "linearizable",
            min_revision: int = 0) -> KeyValue | None:
        response = self.range_request(RangeRequest(to_key(key), revision=revision), consistency, min_revision)
        return response.kvs[0] if response.kvs else None

    def range(self, prefix: str | bytes, *, limit: int = 0, revision: int = 0, keys_only: bool = False,
              count_only: bool = False, consistency: Consistency = "linearizable",
              min_revision: int = 0) -> RangeResponse:
        """Read every key that starts with `prefix` (a text directory path or raw bytes)."""
        start = _prefix_key(prefix)
        request = RangeRequest(start, prefix_end(start), limit, revision, keys_only, count_only)
        return self.range_request(request, consistency, min_revision)

    def ls(self, directory: str | bytes, *, revision: int = 0,
           consistency: Consistency = "linearizable") -> list[DirectoryEntry]:
        """List the immediate children of a directory."""
        start = _prefix_key(directory)
        if not start.endswith(b"/"):
            start += b"/"
        response = self.range_request(RangeRequest(start, prefix_end(start), revision=revision, keys_only=True),
                                      consistency)
        return list(iter_children(SortedList(kv.key for kv in response.kvs), start))

    def range_request(self, request: RangeRequest, consistency: Consistency = "linearizable",
                      min_revision: int = 0, *, fetch_values: bool = True) -> RangeResponse:
        """Serve `request` at `consistency`: "linearizable", "serializable", or a staleness bound in ms.

        Large values come back whole and checked, unless `fetch_values` is
        False, which leaves their manifests in place.
        """
        response = self._range_request(request, consistency, min_revision)
        if not fetch_values or request.keys_only or request.count_only:
            return response
        return self.large_values.resolve_range(response)

    def _range_request(self, request: RangeRequest, consistency: Consistency, min_revision: int) -> RangeResponse:
        mode, staleness_ms = parse_consistency(consistency)
        check_min_revision(min_revision)
        if self.session:
            min_revision = max(min_revision, self.last_revision)
        stores = self.spec.stores_in(self.data_center)

        def attempt() -> RangeResponse:
            if stores:
                store = stores[self._random.randrange(len(stores))]
                attempt_s = min(self.timeout_s, READ_ATTEMPT_TIMEOUT_S)
                replies = None
                if self._channels is not None:
                    token = self.current_token()
                    try:
                        replies = self._channels.read(store, [request], mode, min_revision, staleness_ms,
                                                      attempt_s, token)
                    except AuthenticationFailed as error:
                        raise _TokenRejected(error) from None
                reply = replies[0] if replies is not None else self._read_over_ray(store, request, mode, min_revision,
                                                                       staleness_ms, attempt_s)
                response: RangeResponse = reply["response"]
                self.last_read = {"store": reply["store"], "age_ms": reply["age_ms"], "revision": response.revision}
                return response
            member = self._read_member()
            replica = find_replica(self.spec, member)
            if replica is None:
                raise Unavailable(f"replica {member} is not running")
            response = ray.get(replica.read.remote(request, mode, token=self.current_token()), timeout=self.timeout_s)
            self.last_read = {"replica": member, "age_ms": 0, "revision": response.revision}
            return response
        return self._retry(attempt, "read")

    def _read_over_ray(self, store: str, request: RangeRequest, mode: str, min_revision: int,
                       staleness_ms: int | None, attempt_s: float) -> dict[str, Any]:
        handle = find_store(self.spec, store)
        if handle is None:
            raise Unavailable(f"shard store {store} is not running")
        try:
            reply: dict[str, Any] = ray.get(handle.read.remote(request, mode, min_revision, staleness_ms, attempt_s,
                                                               self.current_token()),
                                            timeout=attempt_s + 1)
        except ray.exceptions.GetTimeoutError:
            # A paused or overloaded store fails no call; it only stops replying.
            raise Unavailable(f"shard store {store} in {self.data_center} did not reply within "
                              f"{attempt_s + 1:g} s; retry, or read through another data center "
                              "(Client(..., data_center=...))") from None
        return reply

    def history(self, key: str | bytes, *, limit: int = 0) -> list[HistoryEntry]:
        raw = to_key(key)

        def attempt() -> list[HistoryEntry]:
            handle = find_replica(self.spec, self._find_leader())
            if handle is None:
                raise Unavailable("the leader is not running")
            entries: list[HistoryEntry] = ray.get(handle.history.remote(raw, limit, self.current_token()),
                                                  timeout=self.timeout_s)
            return entries
        return self.large_values.resolve_history(self._retry(attempt, "history"))

    def close(self) -> None:
        """Close the calling thread's read connections; the client stays usable and reconnects on demand."""
        if self._channels is not None:
            self._channels.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        from rayconf.actors.cluster import status
        return status(self.spec)

    def _read_member(self) -> str:
        return self._leader or self._find_leader()

    # --- Leader discovery and retries. ---

    def _find_leader(self) -> str:
        if self._leader:
            return self._leader
        from rayconf.actors.cluster import status
        current = status(self.spec, timeout_s=min(2.0, self.timeout_s))
        if not current["leader"]:
            raise Unavailable("no leader is known; a majority of voters may be down or partitioned")
        self._leader = current["leader"]
        return self._leader

    def _retry(self, attempt: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.timeout_s
        delay = BACKOFF_INITIAL_S
        logged_in_again = False
        while True:
            try:
                return attempt()
            except ray.exceptions.RayTaskError as error:
                cause = error.cause
                if isinstance(cause, AuthenticationFailed) and self._can_log_in_again(logged_in_again):
                    # The token expired or was revoked: log in once more and retry at once.
                    self._token = None
                    logged_in_again = True
                    continue
                if isinstance(cause, (NotLeader, Unavailable)):
                    last: Exception = cause
                elif isinstance(cause, RayconfError):
                    raise cause from None
                elif isinstance(cause, ray.exceptions.RayActorError):
                    # A store or hub lost the replica it called (killed or restarting).
                    last = Unavailable(f"{what} failed: {type(cause).__name__} behind the actor it called")
                else:
                    raise
            except _TokenRejected as rejected:
                # A store's read channel rejected the token, as the Ray path above does.
                if self._can_log_in_again(logged_in_again):
                    self._token = None
                    logged_in_again = True
                    continue
                raise rejected.error from None
            except (NotLeader, Unavailable) as error:
                last = error
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
                self._leader = ""
                last = Unavailable(f"{what} failed: {type(error).__name__}")
            if isinstance(last, NotLeader):
                self._leader = last.leader_hint or ""
            else:
                self._leader = ""
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"{what} did not succeed within {self.timeout_s} s: {last}") from last
            logger.debug("%s failed (%s); retrying in %.2f s", what, last, delay)
            time.sleep(delay * (0.5 + self._random.random()))
            delay = min(delay * 2, BACKOFF_MAX_S)


    def _can_log_in_again(self, already: bool) -> bool:
        # An empty token means auth was disabled at the last login; it may be on now.
        return not already and self._password is not None and self._token is not None


class _TokenRejected(Exception):
    """A store's read channel rejected the client's token; `error` is the store's `AuthenticationFailed`."""

    def __init__(self, error: AuthenticationFailed) -> None:
        super().__init__(str(error))
        self.error = error


def cas_guard(key: bytes, expected: bytes | None, value: bytes) -> Txn:
    """Return the txn of a compare-and-swap: put if the value (or absence) matches, else read."""
    if not isinstance(value, bytes):
        raise InvalidRequest(f"value must be bytes, got {type(value).__name__}; encode text with .encode()")
    if expected is None:
        guard = Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)
    else:
        guard = Compare(key, CompareTarget.VALUE, CompareOp.EQUAL, expected)
    return Txn(compares=(guard,), success=(Put(key, value),), failure=(RangeRequest(key),))


def cas_failure(key: bytes, expected: bytes | None, response: TxnResponse) -> TxnFailed:
    """Return the `TxnFailed` error of a compare-and-swap whose compare failed."""
    current = None
    if response.responses and isinstance(response.responses[0], RangeResponse):
        kvs = response.responses[0].kvs
        current = kvs[0].value if kvs else None
    shown = key.decode(errors="backslashreplace")
    if expected is None:
        problem = f"the key exists with value {_text(current)}, and it was expected to be absent"
    elif current is None:
        problem = f"the key does not exist, and it was expected to hold {_text(expected)}"
    else:
        problem = f"the value is {_text(current)}, not {_text(expected)}"
    return TxnFailed(
        f"compare-and-swap on {shown!r} failed: {problem}; read it and retry",
        revision=response.revision,
        current=current,
    )


def _text(value: bytes | None) -> str:
    """Return a value for a message: quoted text when it is UTF-8, a size otherwise."""
    if value is None:
        return "nothing"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(value)} bytes of binary data"
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _prefix_key(prefix: str | bytes) -> bytes:
    if isinstance(prefix, bytes):
        return prefix
    return validate_directory(prefix)


def _check_value(value: object) -> None:
    if not isinstance(value, bytes):
        raise InvalidRequest(f"value must be bytes, got {type(value).__name__}; encode text with .encode()")


def connect(spec: ClusterSpec | None = None, **options: Any) -> Client:
    """Connect to a running cluster (the embedded default spec when `spec` is None).

    Ray must already be initialised in this process, or reachable with
    `ray.init(address="auto")`.
    """
    from rayconf.actors.cluster import default_spec, use_loopback
    options.setdefault("principal", getpass.getuser())
    if not ray.is_initialized():
        use_loopback()
        try:
            ray.init(address="auto", namespace=(spec or default_spec()).namespace, log_to_driver=False)
        except ConnectionError as error:
            raise Unavailable(f"no running Ray instance found ({error}); start the cluster with "
                              "`rayconf serve` or `make run`") from error
    return Client(spec or default_spec(), **options)

