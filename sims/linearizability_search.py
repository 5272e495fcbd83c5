"""The Wing-Gong search with Lowe's memoization, run on one partition of a history.

`rayconf.sims.linearizability` describes the algorithm and the three changes beyond Porcupine.
"""

from __future__ import annotations

import time

from rayconf.sims.history import Get, Operation, OpStatus, Txn
from rayconf.sims.linearizability_model import State, _step
from rayconf.sims.linearizability_results import FailureReport, Outcome, PartitionResult

# How many search steps run between two reads of the clock.
_DEADLINE_CHECK_STEPS = 4096


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
