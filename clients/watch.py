"""Watches: follow the changes of a key or a prefix as batches of events, one per revision.

    with watch(spec, "/app/db/") as changes:
        for batch in changes:            # or: async for batch in changes
            for event in batch.events:
                print(batch.revision, event.type.name, event.kv.key, event.kv.value)

Each batch contains every matching event of one revision, and batches come in
revision order. A batch with `progress` set and no events is a progress
notification: every matching event up to its revision has been delivered.

A watch remembers the revision after the last one it delivered and resumes
from it by itself after a hub restart, a lost connection or a lagging
cancellation, so the caller sees neither a gap nor a duplicate. It raises
`Compacted` when the revision it needs is compacted. Every watch of one
process and data center shares one session and one poll stream to a hub
(see `watch_stream.py`).

Each watch buffers at most `buffer_batches_max` batches that the caller has
not read. While the buffer is full the hub holds the watch's events, and if
the hub's queue overflows too, the watch is cancelled there and resumed once
the caller has read half of the buffer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.watch_records import WatchBatch, WatchCancel, WatchFilter, WatchRequest
from rayconf.clients.client import to_key
from rayconf.clients.watch_stream import WatchStream, close_streams, stream_for
from rayconf.errors import InvalidRequest, RayconfError, Unavailable
from rayconf.store.keys import validate_directory

logger = logging.getLogger(__name__)

__all__ = ["Watch", "WatchBatch", "WatchFilter", "awatch", "close_streams", "watch"]

BUFFER_BATCHES_MAX = 1_000
CREATE_TIMEOUT_S = 30.0


class Watch:
    """One watch: a sync and async iterator of `WatchBatch`; close it when done."""

    def __init__(self, stream: WatchStream, request: WatchRequest, buffer_batches_max: int,
                 min_revision: int = 0, token_source: Callable[[], str | None] | None = None) -> None:
        if buffer_batches_max < 2:
            raise InvalidRequest(f"buffer_batches_max is {buffer_batches_max}; give 2 or more")
        self.stream = stream
        self.watch_id = stream.new_watch_id()
        self.request = request
        self.buffer_batches_max = buffer_batches_max
        # A watch "from now" starts after this revision at the earliest (read-your-writes).
        self.min_revision = min_revision
        # Returns the current token of the watch's user when auth is enabled; called on each (re)creation.
        self.token_source = token_source
        # The oldest revision not yet delivered; 0 until the hub names the start of a watch "from now".
        self.next_revision = request.start_revision
        # The first revision of the watch, as the hub chose it for a watch "from now".
        self.start_revision = request.start_revision
        self.progress_revision = 0
        # The session generation the watch was last created in; 0 while it is on no hub.
        self.generation = 0
        self.suspended = False
        self.error: RayconfError | None = None
        self.closed = False
        # (reason, revision) of every resume after a cancel by the hub, oldest first.
        self.resumes: list[tuple[str, int]] = []
        self.statistics = {"batches": 0, "progress": 0, "duplicates_dropped": 0}
        self._buffer: deque[WatchBatch] = deque()
        self._condition = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # --- Called by the stream's loop thread. ---

    def hub_request(self) -> WatchRequest:
        return dataclasses.replace(self.request, start_revision=self.next_revision)

    def wants_hub(self) -> bool:
        """Return whether the watch should be on the hub now: open, healthy and with buffer room."""
        if self.closed or self.error is not None:
            return False
        return not self.suspended or len(self._buffer) <= self.buffer_batches_max // 2

    def is_paused(self) -> bool:
        return len(self._buffer) >= self.buffer_batches_max

    def on_created(self, start_revision: int, generation: int) -> None:
        with self._condition:
            if generation < self.generation:
                return
            self.generation = generation
            self.suspended = False
            if not self.start_revision:
                self.start_revision = start_revision
            self.next_revision = max(self.next_revision, start_revision)

    def deliver(self, batch: WatchBatch) -> None:
        with self._condition:
            if batch.progress:
                # A notification never goes back, and never below what was already delivered.
                if batch.revision <= self.progress_revision or batch.revision < self.next_revision - 1:
                    return
                self.progress_revision = batch.revision
                self.next_revision = max(self.next_revision, batch.revision + 1)
                self.statistics["progress"] += 1
            else:
                if batch.revision < self.next_revision:
                    self.statistics["duplicates_dropped"] += 1
                    return
                self.next_revision = batch.revision + 1
                self.statistics["batches"] += 1
            self._buffer.append(batch)
            self._notify()

    def suspend(self, cancel: WatchCancel) -> None:
        with self._condition:
            self.suspended = True
            self.generation = 0
            self.resumes.append((cancel.reason.value, self.next_revision))
            if cancel.resume_revision and cancel.resume_revision != self.next_revision:
                logger.warning("watch %d: the hub asked to resume from %d, the client resumes from %d",
                               self.watch_id, cancel.resume_revision, self.next_revision)

    def fail(self, error: RayconfError) -> None:
        with self._condition:
            self.error = error
            self._notify()

    def _notify(self) -> None:
        self._condition.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    # --- The caller's side. ---

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchBatch:
        with self._condition:
            while True:
                item = self._take()
                if item is not None:
                    return item
                self._condition.wait()

    def get(self, timeout_s: float) -> WatchBatch | None:
        """Return the next batch, or None when none arrives within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while True:
                item = self._take()
                if item is not None:
                    return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        loop = asyncio.get_running_loop()
        while True:
            with self._condition:
                try:
                    item = self._take()
                except StopIteration:
                    raise StopAsyncIteration from None
                if item is not None:
                    return item
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            await future

    def _take(self) -> WatchBatch | None:
        """Pop the next batch; raise the watch's error or StopIteration once nothing is left."""
        if self._buffer:
            batch = self._buffer.popleft()
            if self.suspended and len(self._buffer) == self.buffer_batches_max // 2:
                self.stream.wake()
            return batch
        if self.error is not None:
            raise self.error
        if self.closed:
            raise StopIteration
        return None

    def request_progress(self) -> None:
        """Ask the hub for a progress notification on this watch."""
        self.stream.submit(self.stream.request_progress(self)).result(timeout=CREATE_TIMEOUT_S)

    def close(self) -> None:
        if self.closed:
            return
        with self._condition:
            self.closed = True
            self._notify()
        self.stream.submit(self.stream.remove(self)).result(timeout=CREATE_TIMEOUT_S)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Watch(id={self.watch_id}, key={self.request.key!r}, next_revision={self.next_revision}, "
                f"buffered={len(self._buffer)})")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def watch_request(prefix_or_key: str | bytes, *, prefix: bool = True, start_revision: int = 0,
                  prev_kv: bool = False, filters: Iterable[WatchFilter] = (),
                  progress_notify: bool = False) -> WatchRequest:
    """Build the hub request of a watch. A text prefix is a directory: "/app" watches "/app/…"."""
    options: dict[str, Any] = {"start_revision": start_revision, "prev_kv": prev_kv,
                               "filters": frozenset(filters), "progress_notify": progress_notify}
    if not prefix:
        return WatchRequest(to_key(prefix_or_key), None, **options)
    raw = prefix_or_key if isinstance(prefix_or_key, bytes) else validate_directory(prefix_or_key)
    return WatchRequest.for_prefix(raw, **options)


def watch(spec: ClusterSpec, prefix_or_key: str | bytes, *, prefix: bool = True, start_revision: int = 0,
          prev_kv: bool = False, filters: Iterable[WatchFilter] = (), progress_notify: bool = False,
          min_revision: int = 0, data_center: str | None = None,
          buffer_batches_max: int = BUFFER_BATCHES_MAX, timeout_s: float = CREATE_TIMEOUT_S,
          token_source: Callable[[], str | None] | None = None) -> Watch:
    """Start a watch and return it once a hub has accepted it.

    Without `start_revision`, the watch starts after the hub's current
    revision, which may trail a write this process just made. Pass that
    write's revision as `min_revision` (for example `Client.last_revision`)
    and the hub waits until it has applied it. A `start_revision` replays
    history from that revision first. Raises `Compacted` when
    `start_revision` is compacted and `Unavailable` when no hub accepted the
    watch within `timeout_s`. In asyncio code, use `awatch`.
    """
    request = watch_request(prefix_or_key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv,
                            filters=filters, progress_notify=progress_notify)
    stream = stream_for(spec, _data_center(spec, data_center))
    created = Watch(stream, request, buffer_batches_max, min_revision, token_source)
    try:
        stream.submit(stream.add(created)).result(timeout=timeout_s)
    except TimeoutError:
        stream.submit(stream.remove(created))
        raise Unavailable(f"no watch hub accepted the watch on {request.key!r} within {timeout_s} s; "
                          "check that hubs are running") from None
    if created.error is not None:
        raise created.error
    return created


async def awatch(spec: ClusterSpec, prefix_or_key: str | bytes, **options: Any) -> Watch:
    """Start a watch from asyncio code, without blocking the event loop; see `watch`."""
    return await asyncio.to_thread(watch, spec, prefix_or_key, **options)


def _data_center(spec: ClusterSpec, data_center: str | None) -> str:
    chosen = data_center or os.environ.get("RAYCONF_DATA_CENTER") or spec.data_centers[0].name
    if chosen not in {dc.name for dc in spec.data_centers}:
        raise InvalidRequest(f"data center {chosen!r} is not in the cluster spec; choose one of "
                             f"{[dc.name for dc in spec.data_centers]}")
    return chosen
