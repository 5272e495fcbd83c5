"""The reference history for watch checks: a replica's committed log replayed into a fresh MVCC.

The replay shares nothing with a watch hub but the MVCC code, so a checker
that compares hub streams with it does not compare the hub with itself.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from rayconf.actors import cluster
from rayconf.actors.raft.types import EntryType
from rayconf.errors import InvalidRequest, Unavailable
from rayconf.store.codec import decode_command
from rayconf.store.mvcc import MVCC

logger = logging.getLogger(__name__)

REPLAY_ENTRIES_MAX = 1000


def replay_committed_log(spec: cluster.ClusterSpec, member: str = "", *, timeout_s: float = 30.0) -> MVCC:
    """Replay the committed log of `member` (default: the leader) from index 1 into a new MVCC.

    Raises `Unavailable` when the log is already compacted into a snapshot,
    because the events before the snapshot are then no longer in the log.
    """
    member = member or cluster.status(spec)["leader"]
    handle: Any = cluster.find_replica(spec, member)
    if handle is None:
        raise Unavailable(f"replica {member!r} is not running; pass a running member or wait for a leader")
    state = MVCC()
    while True:
        reply = ray.get(handle.committed_since.remote(state.applied_index, REPLAY_ENTRIES_MAX, 0.0),
                        timeout=timeout_s)
        if reply["snapshot"] is not None:
            raise Unavailable(f"replica {member} compacted its log into a snapshot, so the history before "
                              f"index {state.applied_index + 1} cannot be replayed")
        if not reply["entries"]:
            return state
        for index, entry_type, data in reply["entries"]:
            state.apply(index, _commands(index, entry_type, data))


def _commands(index: int, entry_type: str, data: bytes) -> list[Any]:
    if entry_type != EntryType.NORMAL.value or not data:
        return []
    try:
        return [decode_command(data)]
    except InvalidRequest as error:
        # Replicas skip an undecodable entry the same way, so the replay stays in step.
        logger.warning("replay skipped undecodable entry %d: %s", index, error)
        return []
