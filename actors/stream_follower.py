"""Following a replica's committed stream: the part that shard stores and watch hubs share.

Both keep their own MVCC state, fed by `ReplicaActor.committed_since`. They
apply each streamed entry the same way every replica does, load a packed
snapshot when they fall behind the replica's compacted log, and move to the
next replica on their list when the one they follow fails.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ray

from rayconf.actors.raft.types import EntryType
from rayconf.errors import InvalidRequest, RayconfError, Unavailable
from rayconf.store import snapshot as mvcc_snapshot
from rayconf.store.codec import decode_command
from rayconf.store.mvcc import MVCC, ApplyResult

logger = logging.getLogger(__name__)

# Pause before following the next replica after one failed.
RETRY_DELAY_S = 0.2
# Time a poll may take beyond its own wait before the follower moves on to the
# next replica. A paused process or a lost node fails no call, it only stops
# replying. The margin leaves room for a snapshot reply on a busy machine.
POLL_REPLY_MARGIN_S = 10.0


async def poll_committed(handle: Any, after_index: int, entries_max: int, wait_s: float) -> dict[str, Any]:
    """Return `committed_since` of the replica behind `handle`, or raise `Unavailable` if it does not reply."""
    try:
        reply: dict[str, Any] = await asyncio.wait_for(
            handle.committed_since.remote(after_index, entries_max, wait_s), timeout=wait_s + POLL_REPLY_MARGIN_S)
    except asyncio.TimeoutError:
        raise Unavailable(f"the replica did not reply to a poll within {wait_s + POLL_REPLY_MARGIN_S} s") from None
    return reply


def apply_streamed_entry(state: MVCC, index: int, entry_type: str, data: bytes) -> ApplyResult | None:
    """Apply one committed entry to `state`; return the command's result, or None for other entries.

    Conf changes, the leader's empty entries and undecodable entries advance
    the applied index without a command, as on the replicas themselves.
    """
    if index <= state.applied_index:
        return None
    if entry_type != EntryType.NORMAL.value or not data:
        state.apply(index, [])
        return None
    try:
        command = decode_command(data)
    except InvalidRequest:
        state.apply(index, [])
        return None
    return state.apply(index, [command])[0]


def load_streamed_snapshot(packed: bytes, scratch: Path) -> MVCC:
    """Unpack a snapshot from the replica into `scratch`, load it, and delete older snapshots there."""
    directory = mvcc_snapshot.unpack(packed, scratch)
    state = mvcc_snapshot.load(directory)
    for older in scratch.iterdir():
        if older != directory:
            shutil.rmtree(older, ignore_errors=True)
    return state


async def follow_replicas(kind: str, name: str, replicas: list[str],
                          follow_one: Callable[[str], Awaitable[None]]) -> None:
    """Run `follow_one(member)` on each replica in turn, forever, moving on when one fails."""
    while True:
        for member in replicas:
            try:
                await follow_one(member)
            except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError, ValueError) as error:
                logger.warning("%s %s lost replica %s: %s", kind, name, member, type(error).__name__)
            except RayconfError as error:
                logger.warning("%s %s stopped following %s: %s", kind, name, member, error)
            await asyncio.sleep(RETRY_DELAY_S)
