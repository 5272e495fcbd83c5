"""Linearizability checker for key-value client histories.

The search is Wing and Gong's algorithm with Lowe's memoization, in the form
that Porcupine (github.com/anishathalye/porcupine, checker.go) uses:

- The history becomes a doubly linked list of call and return events sorted by
  time. At equal times calls come before returns, so two operations that touch
  at one instant count as concurrent. Operation A precedes B only if A returned
  strictly before B was called.
- Walking the list from the front, the search tries each call it meets as the
  next operation in the linearization. It steps a sequential key-value model
  with the call. If the output matches, it removes ("lifts") the call and its
  return from the list and starts again from the front.
- Meeting a return event means that operation was not linearized before it
  returned, so the search backtracks: it pops the last linearized call, restores
  the model state and puts the call back.
- A cache of (set of linearized operations, model state) pairs, the set held as
  an int bitset, prunes every configuration that was explored before. Two
  configurations with the same set and state have the same future.

Linearizability is local (Herlihy and Wing), so a history is linearizable if and
only if its restriction to each object is. Operations on one key form one
partition. A txn joins all its keys into one partition (union-find over keys),
which is checked as a whole with a model state that is a tuple of the values of
those keys.

An operation of unknown outcome has return time infinity, so its return event
stays at the end of the list: it can be linearized at any point after its call,
and the model accepts any output for it. Failed operations are dropped before
the search.

Three changes go beyond Porcupine. The first two skip configurations whose
outcome another configuration decides, and the third only changes the order in
which the search tries candidates. A test compares the verdicts with an
exhaustive search on small histories.

- Unknown operations. Placing one after every known operation is the same as
  leaving it out, because nothing observes it there. So the search succeeds
  once every known operation is linearized, and the cache keeps linearized
  known and unknown operations apart. A configuration is pruned when one seen
  before has the same known set and state and a subset of its unknown set,
  since the extra unknown operations could as well move to the end.
- Read-only operations (a get, or a txn whose branches only get). Once one
  matches the current state, linearizing it at once is never worse than later:
  moving it earlier keeps every state and every real-time order. So when the
  search backtracks over such an operation, it keeps backtracking instead of
  trying the other candidates at that point.
- Candidate order. The calls between two return events are all candidates at
  once, so their order in the list is free. Read-only calls come first,
  unknown calls last, and the rest by earliest return, which makes the search
  meet the linearizable orders sooner.

The search is exponential in the worst case. `max_states` bounds the cache
per partition and `timeout_s` bounds the wall-clock time of the whole check.
When a bound is reached, the partition's outcome is `unknown` and its
`bound_reached` names the bound.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence

from rayconf.sims.history import Operation, OpStatus, keys_of
# The results, the model and the search live in their own modules. This module
# re-exports their public names, so imports from it keep working.
from rayconf.sims.linearizability_model import State as State
from rayconf.sims.linearizability_results import (
    CheckResult as CheckResult,
    FailureReport as FailureReport,
    Outcome as Outcome,
    PartitionResult as PartitionResult,
)
from rayconf.sims.linearizability_search import _check_partition

logger = logging.getLogger(__name__)

# An estimate of the memory this takes: one 10,000-operation partition over 50
# keys grew by about 420 MiB at 1,000,000 cached states (CPython 3.11, x86_64).
MAX_STATES_DEFAULT = 1_000_000


def check_history(
    operations: Iterable[Operation],
    *,
    max_states: int = MAX_STATES_DEFAULT,
    timeout_s: float | None = None,
) -> CheckResult:
    """Check that a key-value history is linearizable, partition by partition.

    `max_states` bounds the memoization cache of each partition, which bounds
    memory. `timeout_s` bounds the whole check, and partitions not finished by
    then get the outcome UNKNOWN. Every partition is checked even after one
    fails, so the result reports all failures. Raises ValueError on duplicate
    op ids.
    """
    if max_states < 1:
        raise ValueError(f"max_states must be at least 1, got {max_states}")
    started = time.monotonic()
    deadline = math.inf if timeout_s is None else started + timeout_s
    all_operations = list(operations)
    seen_op_ids: set[int] = set()
    for op in all_operations:
        if op.op_id in seen_op_ids:
            raise ValueError(
                f"op id {op.op_id} appears twice in the history; give every operation its "
                f"own id, because the failure report names operations by id"
            )
        seen_op_ids.add(op.op_id)
    live_operations = [op for op in all_operations if op.status is not OpStatus.FAILED]

    results = []
    for keys, partition in partition_by_keys(live_operations):
        results.append(_check_partition(keys, partition, max_states, deadline))

    if any(result.outcome is Outcome.NOT_LINEARIZABLE for result in results):
        outcome = Outcome.NOT_LINEARIZABLE
    elif any(result.outcome is Outcome.UNKNOWN for result in results):
        outcome = Outcome.UNKNOWN
    else:
        outcome = Outcome.LINEARIZABLE
    elapsed_s = time.monotonic() - started
    logger.info(
        "checked %d operations in %d partitions: %s in %.3f s",
        len(all_operations), len(results), outcome.value, elapsed_s,
    )
    return CheckResult(
        outcome=outcome,
        partitions=tuple(results),
        operation_count=len(all_operations),
        failed_dropped_count=len(all_operations) - len(live_operations),
        elapsed_s=elapsed_s,
    )


def partition_by_keys(
    operations: Sequence[Operation],
) -> list[tuple[tuple[bytes, ...], list[Operation]]]:
    """Split operations into groups whose key sets are disjoint.

    Keys that one operation touches together end up in one group (union-find).
    Groups come sorted by their smallest key, each with its sorted keys. Txns
    that touch no key form one group with no keys.
    """
    parent: dict[bytes, bytes] = {}

    def find(key: bytes) -> bytes:
        root = key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:
            parent[key], key = root, parent[key]
        return root

    for op in operations:
        keys = keys_of(op.input)
        for key in keys:
            parent.setdefault(key, key)
        for key in keys[1:]:
            root_a, root_b = find(keys[0]), find(key)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)

    groups: dict[bytes | None, list[Operation]] = {}
    for op in operations:
        keys = keys_of(op.input)
        root = find(keys[0]) if keys else None
        groups.setdefault(root, []).append(op)
    members: dict[bytes, list[bytes]] = {}
    for key in parent:
        members.setdefault(find(key), []).append(key)

    partitions = []
    for root, group in groups.items():
        keys = tuple(sorted(members[root])) if root is not None else ()
        partitions.append((keys, group))
    partitions.sort(key=lambda item: item[0])
    return partitions
