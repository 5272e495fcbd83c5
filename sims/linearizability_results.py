"""Verdicts of the linearizability checker: the outcome, the results and the failure report."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rayconf.sims.history import Operation, Value, format_input, format_output, format_value


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
