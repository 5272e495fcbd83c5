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

import enum
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rayconf.sims.history import (
    Cas,
    CasResult,
    Delete,
    Get,
    Operation,
    OpStatus,
    Put,
    ReadResult,
    Txn,
    TxnResult,
    Value,
    format_input,
    format_output,
    format_value,
    keys_of,
)

logger = logging.getLogger(__name__)

# An estimate of the memory this takes: one 10,000-operation partition over 50
# keys grew by about 420 MiB at 1,000,000 cached states (CPython 3.11, x86_64).
MAX_STATES_DEFAULT = 1_000_000

# How many search steps run between two reads of the clock.
_DEADLINE_CHECK_STEPS = 4096

# A model state: the values of a partition's keys, in the partition's key order.
State = tuple[Value, ...]


class Outcome(str, enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not_linearizable"
    # The search stopped at max_states or timeout_s before it reached a verdict.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class FailureReport:
    """Evidence that one partition is not linearizable.

    `linearized` is the longest linearizable prefix the search found, in
    linearization order. `unplaced` is the operation whose return the search
    reached without being able to place it after that prefix. `state_after`
    contains each key's value after `linearized`. `window` contains every operation
    of the partition that was called before `unplaced` returned, which includes
    every operation that could come before it.
    """

    keys: tuple[bytes, ...]
    unplaced: Operation
    linearized: tuple[Operation, ...]
    state_after: tuple[tuple[bytes, Value], ...]
    window: tuple[Operation, ...]

    def render(self) -> str:
        """Render the report as text, one block per client in call-time order."""
        unplaced = self.unplaced
        position = {op.op_id: i + 1 for i, op in enumerate(self.linearized)}
        state = ", ".join(f"{key!r}={format_value(value)}" for key, value in self.state_after)
        lines = [
            f"not linearizable: keys {', '.join(repr(key) for key in self.keys)}",
            f"cannot linearize client {unplaced.client_id} op {unplaced.op_id}: "
            f"{format_input(unplaced.input)} -> {format_output(unplaced)}",
            f"longest linearizable prefix found: {len(self.linearized)} operations, "
            f"state after it: {state}",
            f"operations called before op {unplaced.op_id} returned, per client "
            f"(client, call time, return time, operation, output):",
        ]
        for client_id in sorted({op.client_id for op in self.window}):
            client_ops = sorted(
                (op for op in self.window if op.client_id == client_id),
                key=lambda op: (op.call_time, op.op_id),
            )
            for op in client_ops:
                if op.op_id == unplaced.op_id:
                    mark = "<- cannot be linearized"
                elif op.op_id in position:
                    mark = f"linearized #{position[op.op_id]}"
                else:
                    mark = "not in prefix"
                lines.append(
                    f"  client {op.client_id}  [{op.call_time}, {op.return_time}]  "
                    f"op {op.op_id}: {format_input(op.input)} -> {format_output(op)}  {mark}"
                )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class PartitionResult:
    keys: tuple[bytes, ...]
    operation_count: int
    outcome: Outcome
    # Configurations the search cached, each a linearized set and a model state.
    states_explored: int
    elapsed_s: float
    # "max_states" or "timeout" when the outcome is UNKNOWN, else None.
    bound_reached: str | None
    report: FailureReport | None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Verdict on a whole history, with one result per partition.

    `outcome` is NOT_LINEARIZABLE if any partition is, else UNKNOWN if any
    partition reached a search bound, else LINEARIZABLE.
    """

    outcome: Outcome
    partitions: tuple[PartitionResult, ...]
    operation_count: int
    failed_dropped_count: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.LINEARIZABLE

    @property
    def timed_out(self) -> bool:
        """Whether any partition stopped at `timeout_s`; see `bound_reached` for max_states."""
        return any(partition.bound_reached == "timeout" for partition in self.partitions)

    @property
    def reports(self) -> list[FailureReport]:
        return [p.report for p in self.partitions if p.report is not None]

    def render(self) -> str:
        unknown = [p for p in self.partitions if p.outcome is Outcome.UNKNOWN]
        lines = [
            f"{self.outcome.value}: {self.operation_count} operations "
            f"({self.failed_dropped_count} failed, dropped) in {len(self.partitions)} "
            f"partitions, checked in {self.elapsed_s:.3f} s"
        ]
        for partition in unknown:
            lines.append(
                f"unknown: keys {', '.join(repr(key) for key in partition.keys)} stopped at "
                f"{partition.bound_reached} after {partition.states_explored} states"
            )
        lines.extend(report.render() for report in self.reports)
        return "\n".join(lines)


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


# --- The sequential model ---


def _step(state: State, op: Operation, key_index: dict[bytes, int]) -> State | None:
    """Apply `op` to `state` and return the new state.

    Returns None if the operation's output differs from the model's. The output
    of an unknown operation is never compared.
    """
    op_input = op.input
    output = op.output
    if isinstance(op_input, Get):
        if isinstance(output, ReadResult) and output.value != state[key_index[op_input.key]]:
            return None
        return state
    if isinstance(op_input, Put):
        i = key_index[op_input.key]
        return state[:i] + (op_input.value,) + state[i + 1 :]
    if isinstance(op_input, Delete):
        i = key_index[op_input.key]
        return state[:i] + (None,) + state[i + 1 :]
    if isinstance(op_input, Cas):
        i = key_index[op_input.key]
        swapped = state[i] == op_input.expected
        if isinstance(output, CasResult) and output.succeeded != swapped:
            return None
        return state[:i] + (op_input.new,) + state[i + 1 :] if swapped else state
    return _step_txn(state, op_input, output, key_index)


def _step_txn(
    state: State, txn: Txn, output: object, key_index: dict[bytes, int]
) -> State | None:
    values = list(state)
    succeeded = all(
        (values[key_index[compare.key]] == compare.value) == (compare.op == "=")
        for compare in txn.compares
    )
    reads: list[Value] = []
    for item in txn.success if succeeded else txn.failure:
        i = key_index[item.key]
        if isinstance(item, Get):
            reads.append(values[i])
        elif isinstance(item, Put):
            values[i] = item.value
        else:
            values[i] = None
    if isinstance(output, TxnResult):
        if output.succeeded != succeeded or output.reads != tuple(reads):
            return None
    return tuple(values)


# --- The search ---


def _check_partition(
    keys: tuple[bytes, ...], operations: list[Operation], max_states: int, deadline: float
) -> PartitionResult:
    started = time.monotonic()
    search = _Search(keys, operations, max_states, deadline)
    outcome = search.run()
    report = search.failure_report() if outcome is Outcome.NOT_LINEARIZABLE else None
    return PartitionResult(
        keys=keys,
        operation_count=len(operations),
        outcome=outcome,
        states_explored=search.states_explored,
        elapsed_s=time.monotonic() - started,
        bound_reached=search.bound_reached,
        report=report,
    )


def _is_read_only(op: Operation) -> bool:
    """Return whether the operation never changes the state: a get, or a txn that only gets."""
    if isinstance(op.input, Get):
        return True
    if isinstance(op.input, Txn):
        return all(isinstance(item, Get) for item in op.input.success + op.input.failure)
    return False


def _bitset_positions(operations: list[Operation], is_unknown: list[bool]) -> list[int]:
    """Return each operation's bit in the bitsets of linearized operations.

    Known operations are numbered in call-time order and unknown operations
    apart from them, since the search keeps two bitsets.
    """
    order = sorted(range(len(operations)), key=lambda i: operations[i].call_time)
    bit = [0] * len(operations)
    known_count = unknown_count = 0
    for i in order:
        if is_unknown[i]:
            bit[i] = 1 << unknown_count
            unknown_count += 1
        else:
            bit[i] = 1 << known_count
            known_count += 1
    return bit


def _order_calls_in_runs(
    events: list[tuple[float, int, int]], operations: list[Operation]
) -> None:
    """Reorder each run of consecutive call events into the order the search tries them.

    Every call in a run stays a candidate until the return event after the run,
    so the order changes only the search time, never the verdict.
    """

    def try_order(event: tuple[float, int, int]) -> tuple[bool, bool, float]:
        op = operations[event[2]]
        return (op.status is OpStatus.UNKNOWN, not _is_read_only(op), op.return_time)

    start = 0
    while start < len(events):
        end = start
        while end < len(events) and events[end][1] == 0:
            end += 1
        if end - start > 1:
            events[start:end] = sorted(events[start:end], key=try_order)
        start = end + 1


class _Search:
    """One Wing-Gong search over one partition.

    The event list lives in arrays indexed by node: node 0 is the head sentinel,
    nodes 1..2n are the events in time order, and node 2n+1 is the tail
    sentinel. `match[c]` is the return node of call node `c`, and -1 marks a
    return node.
    """

    def __init__(
        self,
        keys: tuple[bytes, ...],
        operations: list[Operation],
        max_states: int,
        deadline: float,
    ) -> None:
        self.keys = keys
        self.operations = operations
        self.key_index = {key: i for i, key in enumerate(keys)}
        self.max_states = max_states
        self.deadline = deadline
        # Lowe's memoization, extended for unknown operations. The key is the
        # bitset of linearized known operations (compressed by `_visit`) and the
        # model state. The value lists the bitsets of linearized unknown
        # operations seen with that key.
        # A configuration whose unknown set contains a listed one is dominated:
        # the operations it adds could as well come after everything else,
        # where they change nothing that is observed.
        self.cache: dict[tuple[int, int, State], list[int]] = {}
        self.states_explored = 0
        self.bound_reached: str | None = None
        # The deepest point where the search had to backtrack: the linearized
        # op indexes in order, the op whose return stopped it and the state.
        self.best_prefix: list[int] = []
        self.best_unplaced = -1
        self.best_state: State = ()

        # Sort key (time, 0 for call or 1 for return, op index).
        events = []
        for i, op in enumerate(operations):
            events.append((op.call_time, 0, i))
            events.append((op.return_time, 1, i))
        events.sort()
        _order_calls_in_runs(events, operations)
        node_count = len(events) + 2
        self.tail = node_count - 1
        self.next = list(range(1, node_count)) + [-1]
        self.prev = [-1] + list(range(node_count - 1))
        self.op_of = [-1] * node_count
        self.match = [-1] * node_count
        return_node = [0] * len(operations)
        for node, (_, kind, i) in enumerate(events, start=1):
            self.op_of[node] = i
            if kind == 1:
                return_node[i] = node
        for node, (_, kind, i) in enumerate(events, start=1):
            if kind == 0:
                self.match[node] = return_node[i]

    def _lift(self, call: int) -> None:
        """Unlink a call node and its return node from the event list."""
        nxt, prev = self.next, self.prev
        ret = self.match[call]
        nxt[prev[call]] = nxt[call]
        prev[nxt[call]] = prev[call]
        nxt[prev[ret]] = nxt[ret]
        prev[nxt[ret]] = prev[ret]

    def _unlift(self, call: int) -> None:
        """Relink a lifted call and its return, in the reverse order of `_lift`."""
        nxt, prev = self.next, self.prev
        ret = self.match[call]
        nxt[prev[ret]] = ret
        prev[nxt[ret]] = ret
        nxt[prev[call]] = call
        prev[nxt[call]] = call

    def run(self) -> Outcome:
        if time.monotonic() > self.deadline:
            self.bound_reached = "timeout"
            return Outcome.UNKNOWN
        operations, key_index = self.operations, self.key_index
        nxt, op_of, match = self.next, self.op_of, self.match
        is_unknown = [op.status is OpStatus.UNKNOWN for op in operations]
        bit = _bitset_positions(operations, is_unknown)
        head, tail = 0, self.tail
        state: State = (None,) * len(self.keys)
        # Bitsets of the linearized operations, split by status (see `cache`).
        known = 0
        unknown = 0
        # The linearized calls, each with the state before it, so a pop restores
        # both, and whether it is read-only, which makes a pop keep popping.
        calls: list[tuple[int, State, bool]] = []
        read_only = [_is_read_only(op) for op in operations]
        best_depth = -1
        steps = 0
        node = nxt[head]
        # The search ends once every known operation is linearized: the unknown
        # ones still in the list can all come last, where they change nothing seen.
        known_remaining = len(operations) - sum(is_unknown)

        while known_remaining > 0:
            steps += 1
            if steps % _DEADLINE_CHECK_STEPS == 0 and time.monotonic() > self.deadline:
                self.bound_reached = "timeout"
                return Outcome.UNKNOWN
            if match[node] != -1:
                op_index = op_of[node]
                new_state = _step(state, operations[op_index], key_index)
                if new_state is not None:
                    new_known, new_unknown = known, unknown
                    if is_unknown[op_index]:
                        new_unknown |= bit[op_index]
                    else:
                        new_known |= bit[op_index]
                    is_new = self._visit(new_known, new_state, new_unknown)
                    if self.bound_reached is not None:
                        return Outcome.UNKNOWN
                    if is_new:
                        known_remaining -= not is_unknown[op_index]
                        calls.append((node, state, read_only[op_index]))
                        known, unknown, state = new_known, new_unknown, new_state
                        self._lift(node)
                        node = nxt[head]
                        continue
                node = nxt[node]
                continue

            # A return event: its operation was not linearized before it returned.
            if len(calls) > best_depth:
                best_depth = len(calls)
                self.best_prefix = [op_of[call] for call, _, _ in calls]
                self.best_unplaced = op_of[node]
                self.best_state = state
            while True:
                if not calls:
                    return Outcome.NOT_LINEARIZABLE
                call, state, call_read_only = calls.pop()
                op_index = op_of[call]
                if is_unknown[op_index]:
                    unknown &= ~bit[op_index]
                else:
                    known &= ~bit[op_index]
                    known_remaining += 1
                self._unlift(call)
                if not call_read_only:
                    break
            node = nxt[call]

        assert nxt[head] != tail or len(calls) == len(operations)
        return Outcome.LINEARIZABLE

    def _visit(self, known: int, state: State, unknown: int) -> bool:
        """Cache a configuration and return True, unless an earlier one dominates it.

        Sets `bound_reached` and returns False once the cache contains
        `max_states` entries.
        """
        # Known operations get linearized roughly in call order, so `known` is a
        # run of ones below a short tail. Storing the run's length and the tail
        # keeps each cache key small in a long history.
        ones = (~known & (known + 1)).bit_length() - 1
        key = (ones, known >> ones, state)
        seen = self.cache.get(key)
        if seen is not None:
            for earlier_unknown in seen:
                if earlier_unknown & ~unknown == 0:
                    return False
        if self.states_explored >= self.max_states:
            self.bound_reached = "max_states"
            return False
        self.states_explored += 1
        if seen is None:
            self.cache[key] = [unknown]
        else:
            seen.append(unknown)
        return True

    def failure_report(self) -> FailureReport:
        assert self.best_unplaced >= 0, "a failed search always records where it stopped"
        unplaced = self.operations[self.best_unplaced]
        window = tuple(op for op in self.operations if op.call_time <= unplaced.return_time)
        return FailureReport(
            keys=self.keys,
            unplaced=unplaced,
            linearized=tuple(self.operations[i] for i in self.best_prefix),
            state_after=tuple(zip(self.keys, self.best_state)),
            window=window,
        )
