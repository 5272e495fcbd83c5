"""The watch hub actor: follows a replica's committed stream and serves watch sessions.

A hub belongs to one data center and is named `hub-<data center>-h<n>`. Like
a shard store, it keeps its own MVCC copy, fed by long polls of
`committed_since` on a replica of its data center (others when none
responds), and loads the replica's snapshot when it is behind the compacted
log. Each applied revision goes to `WatchHubCore`, which keeps the window,
the subscription index and the watcher queues (see `watch_core.py`).

Clients do not get a call per watch. A client process opens one session and
sends one `poll(session_id, max_wait_s, paused)` at a time, which returns the
items of all its watches at once, waiting up to `max_wait_s` when there are
none. A hub restart loses every session: the next call raises
`SessionExpired`, and the client resumes each watch on a new session from the
last revision it delivered.

With auth enabled, each watch is created with its user's token, and the hub
checks it against its own copy of the auth state. It rejects a watch whose
key or prefix the user may not read. At each poll it drops events of keys
the user may no longer read, and cancels the watches of revoked tokens.

Ray calls on this async actor interleave only at `await` points, so each core
method runs whole, and a revision is queued for every watcher before any
poll can see it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from rayconf.actors.auth_guard import authorize_read
from rayconf.actors.stream_follower import (
    apply_streamed_entry,
    follow_replicas,
    load_streamed_snapshot,
    poll_committed,
)
from rayconf.actors.watch_core import WatchHubCore
from rayconf.actors.watch_records import (
    CancelReason,
    HubSettings,
    PollReply,
    SessionExpired,
    WatchBatch,
    WatchCancel,
    WatchItem,
    WatchRequest,
)
from rayconf.errors import AuthError, Compacted, InvalidRequest, Unavailable
from rayconf.store.mvcc import MVCC
from rayconf.store.records import TxnResponse

logger = logging.getLogger(__name__)

FOLLOW_WAIT_S = 1.0
FOLLOW_ENTRIES_MAX = 1000
# A poll waits at most this long, whatever the client requests, so a client
# that vanished keeps no call open for long.
POLL_WAIT_MAX_S = 10.0
# Period of the housekeeping task: progress notifications and session expiry.
TICK_S = 0.25
# A create waits this long for a freshly started hub to catch up with its replica.
READY_WAIT_S = 10.0
HUB_NAME_PREFIX = "hub-"


def hub_actor_name(data_center: str, number: int) -> str:
    return f"{HUB_NAME_PREFIX}{data_center}-h{number}"


@ray.remote
class WatchHubActor:
    """One watch hub of one data center."""

    def __init__(self, name: str, data_center: str, replicas: list[str], namespace: str,
                 settings: HubSettings | None = None, data_directory: str | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self.name = name
        self.data_center = data_center
        # Replicas to follow, the preferred (same data center) first.
        self.replicas = replicas
        self.namespace = namespace
        self.settings = settings or HubSettings()
        self.state = MVCC()
        self.following = ""
        self.core = WatchHubCore(self.settings, self.state, on_ready=self._wake_session)
        self._session_events: dict[str, asyncio.Event] = {}
        # (session id, watch id) -> (user, user generation) of watches created with auth enabled.
        self._watch_users: dict[tuple[str, int], tuple[str, int]] = {}
        self._catch_up_wake = asyncio.Event()
        # Set once the hub has applied what its replica had applied when the hub started.
        self._ready = asyncio.Event()
        # Notified after each batch of applied entries.
        self._applied = asyncio.Condition()
        self._started = time.monotonic()
        # Snapshots received from the replica; only the newest is kept. The same
        # folder is reused after a restart, so restarts leave nothing behind.
        root = Path(data_directory) if data_directory else Path(tempfile.gettempdir()) / f"rayconf-{namespace}"
        self._scratch = root / "hubs" / name
        self._scratch.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_event_loop()
        self._tasks = [loop.create_task(self._follow()), loop.create_task(self._catch_up()),
                       loop.create_task(self._housekeeping())]
        logger.info("watch hub %s up in %s, following %s", name, data_center, replicas)

    # --- Following the committed stream. ---

    async def _follow(self) -> None:
        await follow_replicas("hub", self.name, self.replicas, self._follow_replica)

    async def _follow_replica(self, member: str) -> None:
        from rayconf.actors.transport import replica_actor_name

        handle = ray.get_actor(replica_actor_name(member), namespace=self.namespace)
        self.following = member
        ready_index = 0
        if not self._ready.is_set():
            status = await handle.status.remote()
            ready_index = int(status["applied_index"])
        while True:
            reply = await poll_committed(handle, self.state.applied_index, FOLLOW_ENTRIES_MAX, FOLLOW_WAIT_S)
            if reply["snapshot"] is not None:
                self._load_snapshot(reply["snapshot"])
            for index, entry_type, data in reply["entries"]:
                self._apply(index, entry_type, data)
            if not self._ready.is_set() and self.state.applied_index >= ready_index:
                self._ready.set()
                logger.info("hub %s caught up at revision %d", self.name, self.state.revision)
            self._catch_up_wake.set()
            async with self._applied:
                self._applied.notify_all()

    def _load_snapshot(self, packed: bytes) -> None:
        self.state = load_streamed_snapshot(packed, self._scratch)
        self.core.reset(self.state)
        logger.info("hub %s loaded a snapshot at index %d, revision %d",
                    self.name, self.state.applied_index, self.state.revision)

    def _apply(self, index: int, entry_type: str, data: bytes) -> None:
        result = apply_streamed_entry(self.state, index, entry_type, data)
        if isinstance(result, TxnResponse) and result.events and not result.duplicate:
            self.core.apply_revision(result.revision, result.events)

    # --- Background work. ---

    async def _catch_up(self) -> None:
        """Serve unsynced watchers round by round, yielding between rounds."""
        while True:
            served = self.core.catch_up_round()
            if served:
                await asyncio.sleep(0)
                continue
            self._catch_up_wake.clear()
            try:
                await asyncio.wait_for(self._catch_up_wake.wait(), timeout=0.1)
            except asyncio.TimeoutError:
                pass

    async def _housekeeping(self) -> None:
        reported: dict[str, int] = {}
        while True:
            await asyncio.sleep(TICK_S)
            for session_id in self.core.tick():
                event = self._session_events.pop(session_id, None)
                if event is not None:
                    event.set()
                logger.info("hub %s dropped idle session %s", self.name, session_id)
            counters = {key: self.core.counters[key] for key in ("lagging_cancels", "compacted_cancels")}
            if counters != reported:
                logger.info("hub %s cancels so far: %s", self.name, counters)
                reported = counters

    def _wake_session(self, session_id: str) -> None:
        event = self._session_events.get(session_id)
        if event is not None:
            event.set()

    # --- Calls from watch clients. ---

    async def open_session(self, session_id: str) -> dict[str, Any]:
        self.core.open_session(session_id)
        self._session_events[session_id] = asyncio.Event()
        return {"hub": self.name, "revision": self.core.revision}

    async def create_watches(self, session_id: str, requests: list[tuple[int, WatchRequest]],
                             min_revision: int = 0, tokens: dict[int, str] | None = None) -> list[Any]:
        """Add watches; return per watch its first revision, or a COMPACTED or PERMISSION_DENIED `WatchCancel`.

        With `min_revision`, the hub first waits until it has applied that
        revision, so a watch "from now" starts after a write the client made.
        `tokens` maps watch ids to their users' tokens when auth is enabled.
        """
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=READY_WAIT_S)
            await asyncio.wait_for(self._wait_revision(min_revision), timeout=READY_WAIT_S)
            if self.state.auth.enabled:
                # Auth changes carry no key revision, so `min_revision` cannot
                # order them; the leader's commit index does.
                await asyncio.wait_for(self._wait_commit_index(), timeout=READY_WAIT_S)
        except asyncio.TimeoutError:
            raise Unavailable(f"hub {self.name} did not reach revision {max(min_revision, 1)} and catch up with "
                              f"its replica within {READY_WAIT_S} s (it is at revision {self.state.revision}); "
                              "retry or use another hub") from None
        results: list[Any] = []
        for watch_id, request in requests:
            try:
                user = authorize_read(self.state.auth, (tokens or {}).get(watch_id), request.key, request.range_end)
            except AuthError as error:
                logger.info("hub %s rejected watch %d of session %s: %s", self.name, watch_id, session_id, error)
                results.append(WatchCancel(CancelReason.PERMISSION_DENIED, str(error), error_type=type(error).__name__,
                                           user=getattr(error, "user", "")))
                continue
            if user:
                self._watch_users[(session_id, watch_id)] = (user, self.state.auth.users[user].generation)
            try:
                results.append(self.core.create(session_id, watch_id, request))
            except Compacted as error:
                # A cancel record in the reply, rather than a raised error, lets the
                # other watches of the same call be created; the client raises it.
                results.append(WatchCancel(CancelReason.COMPACTED, str(error), resume_revision=request.start_revision,
                                           compact_revision=error.compact_revision))
        self._catch_up_wake.set()
        return results

    async def _wait_commit_index(self) -> None:
        """Wait until this hub has applied what the leader had committed when the call began."""
        from rayconf.actors.transport import replica_actor_name

        for member in self.replicas:
            try:
                handle = ray.get_actor(replica_actor_name(member), namespace=self.namespace)
                index: int = await handle.read_index.remote(READY_WAIT_S)
                break
            except (ValueError, ray.exceptions.RayError) as error:
                logger.info("hub %s: replica %s gave no read index: %s", self.name, member, type(error).__name__)
        else:
            raise Unavailable(f"hub {self.name} found no replica to confirm the auth state; retry")
        async with self._applied:
            while self.state.applied_index < index:
                await self._applied.wait()

    async def _wait_revision(self, revision: int) -> None:
        async with self._applied:
            while self.state.revision < revision:
                await self._applied.wait()

    async def cancel_watches(self, session_id: str, watch_ids: list[int]) -> None:
        for watch_id in watch_ids:
            self.core.cancel(session_id, watch_id)
            self._watch_users.pop((session_id, watch_id), None)

    async def request_progress(self, session_id: str, watch_ids: list[int] | None = None) -> None:
        self.core.request_progress(session_id, watch_ids)

    async def poll(self, session_id: str, max_wait_s: float, paused: list[int] | None = None) -> PollReply:
        """Return the items of every watch of the session, waiting up to `max_wait_s` for some."""
        deadline = time.monotonic() + min(max(max_wait_s, 0.0), POLL_WAIT_MAX_S)
        paused_ids = frozenset(paused or ())
        if session_id not in self.core.sessions:
            raise SessionExpired(f"session {session_id} is unknown to hub {self.name}; open a new session "
                                 "and resume the watches")
        while True:
            event = self._session_events.setdefault(session_id, asyncio.Event())
            event.clear()
            reply = self._filter_for_users(session_id, self.core.take(session_id, paused_ids))
            if reply.items:
                self._catch_up_wake.set()
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return reply
            try:
                await asyncio.wait_for(event.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass

    async def close_session(self, session_id: str) -> None:
        self.core.close_session(session_id)
        self._session_events.pop(session_id, None)
        for key in [key for key in self._watch_users if key[0] == session_id]:
            del self._watch_users[key]

    def _filter_for_users(self, session_id: str, reply: PollReply) -> PollReply:
        """Drop events each watch's user may not read now, and cancel watches of revoked users.

        A watch created while auth was disabled has no user. Its client gets a
        CLOSED cancel instead of its events, and re-creates the watch from the
        same revision with its token, which the hub then checks.
        """
        auth = self.state.auth
        if not auth.enabled:
            return reply
        for watch_id, items in list(reply.items.items()):
            owner = self._watch_users.get((session_id, watch_id))
            if owner is None:
                if not any(isinstance(item, WatchCancel) for item in items):
                    logger.info("hub %s closed watch %d of session %s: it has no user and auth is enabled",
                                self.name, watch_id, session_id)
                    self.core.cancel(session_id, watch_id)
                    reply.items[watch_id] = [WatchCancel(CancelReason.CLOSED, "auth was enabled after the watch "
                                                         "was created; re-create it with a token")]
                continue
            user_name, generation = owner
            user = auth.users.get(user_name)
            if user is None or user.generation != generation:
                logger.info("hub %s cancelled watch %d of session %s: the token of user %r was revoked",
                            self.name, watch_id, session_id, user_name)
                self.core.cancel(session_id, watch_id)
                del self._watch_users[(session_id, watch_id)]
                reply.items[watch_id] = [WatchCancel(CancelReason.PERMISSION_DENIED,
                                                     f"the token of user {user_name!r} was revoked; log in "
                                                     "again and watch again",
                                                     error_type="AuthenticationFailed", user=user_name)]
                continue
            delivered: list[WatchItem] = []
            for item in items:
                if isinstance(item, WatchBatch) and item.events:
                    events = tuple(event for event in item.events
                                   if auth.allows(user_name, "read", event.kv.key, None))
                    if not events:
                        continue
                    item = dataclasses.replace(item, events=events)
                delivered.append(item)
            reply.items[watch_id] = delivered
        return reply

    async def statistics(self) -> dict[str, Any]:
        return {
            "hub": self.name,
            "data_center": self.data_center,
            "following": self.following,
            "ready": self._ready.is_set(),
            "uptime_s": round(time.monotonic() - self._started, 1),
            **self.core.statistics(),
            **{f"index_{key}": value for key, value in self.core.index.statistics().items()},
        }

    async def history_events(self, start_revision: int, key: bytes = b"",
                             range_end: bytes | None = b"", token: str | None = None) -> list[Any]:
        """Return the hub's MVCC events from `start_revision`; raises `Compacted` at or below the compact revision.

        With auth enabled, the token's user needs read on the whole key or range.
        """
        authorize_read(self.state.auth, token, key, range_end)
        return self.state.events(start_revision, key, range_end)

    async def ping(self) -> str:
        return self.name


# --- Life cycle, until the cluster spec creates hubs itself. ---


def hub_names(spec: Any, hubs_per_data_center: int) -> dict[str, list[str]]:
    """Return the hub names of every data center of `spec`, for `hubs_per_data_center` hubs each."""
    return {dc.name: [hub_actor_name(dc.name, number) for number in range(1, hubs_per_data_center + 1)]
            for dc in spec.data_centers}


def find_hub(spec: Any, name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=spec.namespace)
    except ValueError:
        return None


def running_hubs(spec: Any) -> dict[str, list[str]]:
    """Return the names of the hubs that exist now, per data center, from Ray's named actors."""
    names = sorted(entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
                   if entry["namespace"] == spec.namespace and entry["name"].startswith(HUB_NAME_PREFIX))
    found: dict[str, list[str]] = {}
    for dc in spec.data_centers:
        prefix = f"{HUB_NAME_PREFIX}{dc.name}-h"
        found[dc.name] = [name for name in names if name.startswith(prefix) and name[len(prefix):].isdigit()]
    return found


def start_hubs(spec: Any, hubs_per_data_center: int = 1, *, settings: HubSettings | None = None,
               ready_timeout_s: float = 30.0) -> list[str]:
    """Create the missing hubs of `spec`, wait until each responds, and return every hub name."""
    from rayconf.actors.cluster import RESOURCE_PER_ACTOR

    if hubs_per_data_center < 1:
        raise InvalidRequest(f"hubs_per_data_center is {hubs_per_data_center}; give 1 or more")
    names: list[str] = []
    for dc in spec.data_centers:
        for name in hub_names(spec, hubs_per_data_center)[dc.name]:
            names.append(name)
            if find_hub(spec, name) is not None:
                continue
            WatchHubActor.options(  # type: ignore[attr-defined]
                name=name,
                namespace=spec.namespace,
                lifetime="detached",
                max_restarts=-1,
                num_cpus=0,
                resources={dc.name: RESOURCE_PER_ACTOR},
            ).remote(name, dc.name, spec.replicas_near(dc.name), spec.namespace, settings)
    ray.get([find_hub(spec, name).ping.remote() for name in names], timeout=ready_timeout_s)
    logger.info("watch hubs up: %s", names)
    return names


def stop_hubs(spec: Any, *, timeout_s: float = 30.0) -> list[str]:
    """Kill every hub of `spec` and wait until their names are free; return their names."""
    stopped = [name for names in running_hubs(spec).values() for name in names]
    for name in stopped:
        handle = find_hub(spec, name)
        if handle is not None:
            ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while any(find_hub(spec, name) is not None for name in stopped):
        if time.monotonic() > deadline:
            raise Unavailable(f"hubs {stopped} were killed but their names are still taken after {timeout_s} s")
        time.sleep(0.05)
    logger.info("stopped watch hubs %s", stopped)
    return stopped
