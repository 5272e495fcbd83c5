"""One poll stream per client process and data center, shared by all its watches.

The stream runs an asyncio loop on a daemon thread. That loop makes every
call to the hub: it opens a session, creates watches, and polls the hub with
one call that returns the items of all watches at once. Because only this
loop touches the session, a reconnection never races with a create.

Failures. A dead or restarting hub (`RayActorError`), an unknown session
(`SessionExpired`) or a poll with no reply within `max_wait_s` plus a grace
period all end the session. The stream then opens a new one, on another hub
of the same data center when there is one, and re-creates every watch from
the revision after the last one it delivered. Retries back off exponentially
with jitter, from `BACKOFF_INITIAL_S` to `BACKOFF_MAX_S`, so clients that lost
the same hub do not come back in step.

Back-pressure. A watch whose buffer is full is listed as paused in each poll,
so the hub keeps its events. When the hub's queue for it overflows, the hub
cancels it as lagging, and the stream resumes it once the application has
read half of its buffer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import ray

from rayconf.actors.watch_hub import find_hub, running_hubs
from rayconf.actors.watch_records import CancelReason, SessionExpired, WatchBatch, WatchCancel
from rayconf.errors import AuthenticationFailed, AuthError, Compacted, PermissionDenied, Unavailable

if TYPE_CHECKING:
    from rayconf.actors.cluster import ClusterSpec
    from rayconf.clients.watch import Watch

logger = logging.getLogger(__name__)

T = TypeVar("T")

POLL_WAIT_S = 2.0
# A poll without a reply this long after its wait ended counts as a lost connection.
POLL_GRACE_S = 5.0
CALL_TIMEOUT_S = 15.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
# Errors after which the session is abandoned and every watch resumes on a new one.
SESSION_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.RaySystemError, SessionExpired,
                  Unavailable, asyncio.TimeoutError, ValueError)


@dataclass(slots=True)
class Session:
    hub_name: str
    handle: Any
    session_id: str
    generation: int


class WatchStream:
    """The hub session and poll loop that every watch of one process and data center shares."""

    def __init__(self, spec: ClusterSpec, data_center: str) -> None:
        self.spec = spec
        self.data_center = data_center
        self.watches: dict[int, Watch] = {}
        self.session: Session | None = None
        self.generation = 0
        self.statistics = {"polls": 0, "sessions_opened": 0, "session_failures": 0, "batches": 0,
                           "lagging_cancels": 0, "resumes": 0}
        self._random = random.Random()
        # next() on a count is atomic under the GIL, so threads can share it.
        self._watch_ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._thread_main, name=f"rayconf-watch-{data_center}", daemon=True)
        self._thread.start()

    # --- Calls from other threads. ---

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def new_watch_id(self) -> int:
        return next(self._watch_ids)

    def wake(self) -> None:
        """Wake the poll loop, so it resumes watches whose buffers have room again."""
        if not self._stopped:
            self._loop.call_soon_threadsafe(self._set_wake)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._stopped:
            return
        try:
            self.submit(self._close()).result(timeout=timeout_s)
        except Exception as error:  # noqa: BLE001 - closing is best effort; the hub expires the session anyway
            logger.info("watch stream %s closed with an error: %s", self.data_center, error)
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=timeout_s)

    # --- The loop thread. ---

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._loop.create_task(self._run())
        self._loop.run_forever()

    def _set_wake(self) -> None:
        assert self._wake is not None
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        delay = BACKOFF_INITIAL_S
        while True:
            if not self.watches:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                session = self.session or await self._connect()
                await self._resume_suspended(session)
                await self._poll(session)
                delay = BACKOFF_INITIAL_S
            except SESSION_ERRORS as error:
                self._drop_session(error)
                await asyncio.sleep(delay * (0.5 + self._random.random()))
                delay = min(delay * 2, BACKOFF_MAX_S)

    async def _connect(self) -> Session:
        assert self._connected is not None
        hub_name = self._choose_hub()
        handle = find_hub(self.spec, hub_name)
        if handle is None:
            raise Unavailable(f"watch hub {hub_name} is not running")
        self.generation += 1
        session = Session(hub_name, handle, uuid.uuid4().hex, self.generation)
        await asyncio.wait_for(handle.open_session.remote(session.session_id), CALL_TIMEOUT_S)
        active = [watch for watch in self.watches.values() if watch.wants_hub()]
        if active:
            await self._create(session, active)
        self.session = session
        self.statistics["sessions_opened"] += 1
        self._connected.set()
        logger.info("watch stream %s opened session %s on %s with %d watches", self.data_center,
                    session.session_id, hub_name, len(active))
        return session

    def _choose_hub(self) -> str:
        hubs = running_hubs(self.spec)
        local = hubs.get(self.data_center, [])
        others = [name for dc, names in hubs.items() if dc != self.data_center for name in names]
        candidates = local or others
        if not candidates:
            raise Unavailable(f"no watch hub is running for namespace {self.spec.namespace}; start hubs first")
        return candidates[self._random.randrange(len(candidates))]

    async def _create(self, session: Session, watches: list[Watch]) -> None:
        tokens: dict[int, str] = {}
        for watch in list(watches):
            if watch.token_source is None:
                continue
            try:
                # The source may log in again over Ray, so it runs off the loop thread.
                token = await asyncio.to_thread(watch.token_source)
            except AuthError as error:
                # A failed login ends this watch alone; the stream keeps serving the others.
                logger.info("watch %d failed to log in again: %s", watch.watch_id, error)
                watch.fail(error)
                self.watches.pop(watch.watch_id, None)
                watches.remove(watch)
                continue
            if token:
                tokens[watch.watch_id] = token
        if not watches:
            return
        requests = [(watch.watch_id, watch.hub_request()) for watch in watches]
        min_revision = max(watch.min_revision for watch in watches)
        results = await asyncio.wait_for(
            session.handle.create_watches.remote(session.session_id, requests, min_revision, tokens or None),
            CALL_TIMEOUT_S)
        for watch, result in zip(watches, results):
            if isinstance(result, WatchCancel):
                self._dispatch(watch, result)
            else:
                watch.on_created(int(result), session.generation)

    async def _resume_suspended(self, session: Session) -> None:
        ready = [watch for watch in self.watches.values()
                 if watch.suspended and watch.wants_hub() and watch.generation != session.generation]
        if ready:
            self.statistics["resumes"] += len(ready)
            await self._create(session, ready)

    async def _poll(self, session: Session) -> None:
        assert self._wake is not None
        paused = [watch.watch_id for watch in self.watches.values() if watch.is_paused()]
        reference = session.handle.poll.remote(session.session_id, POLL_WAIT_S, paused)
        poll = asyncio.ensure_future(asyncio.wait_for(reference, POLL_WAIT_S + POLL_GRACE_S))
        while not poll.done():
            # A drained buffer wakes the loop: resume its watch now, beside the poll in flight.
            self._wake.clear()
            wake = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({poll, wake}, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if not poll.done() and self.session is session:
                await self._resume_suspended(session)
        reply = poll.result()
        self.statistics["polls"] += 1
        for watch_id, items in reply.items.items():
            watch = self.watches.get(watch_id)
            if watch is None:
                continue
            for item in items:
                self._dispatch(watch, item)

    def _dispatch(self, watch: Watch, item: WatchBatch | WatchCancel) -> None:
        if isinstance(item, WatchBatch):
            self.statistics["batches"] += 1
            watch.deliver(item)
            return
        if item.reason is CancelReason.COMPACTED:
            watch.fail(Compacted(item.message, compact_revision=item.compact_revision,
                                 requested_revision=item.resume_revision))
            self.watches.pop(watch.watch_id, None)
            return
        if item.reason is CancelReason.PERMISSION_DENIED:
            error_type = AuthenticationFailed if item.error_type == "AuthenticationFailed" else PermissionDenied
            watch.fail(error_type(item.message, user=item.user))
            self.watches.pop(watch.watch_id, None)
            return
        if item.reason is CancelReason.LAGGING:
            self.statistics["lagging_cancels"] += 1
        logger.debug("watch %d cancelled by the hub (%s): %s", watch.watch_id, item.reason.value, item.message)
        watch.suspend(item)

    def _drop_session(self, error: BaseException) -> None:
        session = self.session
        self.session = None
        self.statistics["session_failures"] += 1
        if session is None:
            logger.info("watch stream %s could not open a session: %r", self.data_center, error)
            return
        logger.info("watch stream %s lost session %s on %s: %r; resuming its watches", self.data_center,
                    session.session_id, session.hub_name, error)
        # Tell the old hub to drop the session. If that hub is gone, its idle timeout does the same.
        try:
            session.handle.close_session.remote(session.session_id)
        except Exception:  # noqa: BLE001 - the old hub may already be dead
            pass

    # --- Coroutines that other threads submit. ---

    async def add(self, watch: Watch) -> None:
        """Register `watch` and create it on the hub, reconnecting as often as needed."""
        assert self._wake is not None and self._connected is not None
        self.watches[watch.watch_id] = watch
        self._wake.set()
        while True:
            session = self.session
            if session is None:
                self._connected.clear()
                await self._connected.wait()
                continue
            if watch.generation == session.generation or watch.error is not None:
                return
            try:
                await self._create(session, [watch])
                return
            except SESSION_ERRORS as error:
                if self.session is session:
                    self._drop_session(error)
                    self._wake.set()
                await asyncio.sleep(BACKOFF_INITIAL_S * (0.5 + self._random.random()))

    async def remove(self, watch: Watch) -> None:
        self.watches.pop(watch.watch_id, None)
        session = self.session
        if session is not None:
            try:
                await asyncio.wait_for(session.handle.cancel_watches.remote(session.session_id, [watch.watch_id]),
                                       CALL_TIMEOUT_S)
            except SESSION_ERRORS as error:
                logger.debug("cancel of watch %d failed: %r", watch.watch_id, error)

    async def request_progress(self, watch: Watch) -> None:
        session = self.session
        if session is None:
            return
        try:
            await asyncio.wait_for(session.handle.request_progress.remote(session.session_id, [watch.watch_id]),
                                   CALL_TIMEOUT_S)
        except SESSION_ERRORS as error:
            logger.debug("progress request for watch %d failed: %r", watch.watch_id, error)

    async def _close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            try:
                await asyncio.wait_for(session.handle.close_session.remote(session.session_id), CALL_TIMEOUT_S)
            except SESSION_ERRORS:
                pass
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()


_streams: dict[tuple[str, str], WatchStream] = {}
_streams_lock = threading.Lock()


def stream_for(spec: ClusterSpec, data_center: str) -> WatchStream:
    """Return this process's stream for the namespace and data center, starting it on first use."""
    with _streams_lock:
        key = (spec.namespace, data_center)
        stream = _streams.get(key)
        if stream is None:
            stream = _streams[key] = WatchStream(spec, data_center)
        return stream


def close_streams() -> None:
    """Close every stream of this process; call it before `ray.shutdown()`."""
    with _streams_lock:
        streams = list(_streams.values())
        _streams.clear()
    for stream in streams:
        stream.stop()
