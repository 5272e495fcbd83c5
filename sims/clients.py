"""Simulated clients: each runs one operation at a time and records it in the history.

A client sends each attempt to one node and waits for a reply or a timeout. Every
attempt of a write carries the same request id, so the MVCC applies it at most
once however many attempts reach the log, as long as the id is among the
`dedup_request_ids_max` latest ones that the MVCC remembers. Outcomes in the history:

- ok: a reply came back, from any attempt of the operation;
- failed: every attempt was dropped before it was proposed or read (no leader
  known, a leader transfer), so the operation certainly had no effect. A read
  that got no answer is failed too, since a read changes nothing;
- unknown: a write with no reply after its last attempt, where at least one
  attempt may have reached the log. A txn that reads and is answered as a
  duplicate is unknown too, because a duplicate carries no read results.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from rayconf.actors.raft import NodeId
from rayconf.sims import history
from rayconf.sims.node import AttemptTag, Reply
from rayconf.sims.workload import (
    ReadRequest,
    Request,
    Workload,
    read_output,
    to_request,
    write_output,
    written_values,
)
from rayconf.store.records import Command, RangeResponse, TxnResponse

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    timeout_ms: int
    attempts_max: int
    think_time_ms_max: int
    retry_backoff_ms_max: int


@dataclass(frozen=True, slots=True)
class AcknowledgedWrite:
    """A write that a client saw succeed: `key` has `value` (None: deleted) at `revision`."""

    op_id: int
    key: bytes
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class ClientTransport:
    """The simulator's side of a client: the clock, the node ids and the links to the nodes."""

    now_ms: Callable[[], int]
    schedule: Callable[[int, Callable[[], None]], None]
    member_ids: Callable[[], list[NodeId]]
    send_read: Callable[[NodeId, AttemptTag, ReadRequest], None]
    send_write: Callable[[NodeId, AttemptTag, Command], None]


@dataclass(slots=True)
class _CurrentOperation:
    op_id: int
    input: history.Input
    request: Request
    command: Command | None
    attempt: int = 0
    last_node: NodeId = ""
    # Write attempts not known to be dropped: any of them may have reached the log,
    # which makes a missing reply unknown.
    attempts_maybe_applied: set[int] = field(default_factory=set)
    # Set while a retry waits for its backoff, so that a timeout and a dropped
    # reply of one attempt start one retry, not two.
    retry_scheduled: bool = False


@dataclass(slots=True)
class ClientStatistics:
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    attempts: int = 0
    timeouts: int = 0


@dataclass(slots=True)
class SimClient:
    client_id: int
    rng: random.Random
    workload: Workload
    recorder: history.HistoryRecorder
    settings: ClientSettings
    transport: ClientTransport
    operations_left: int
    on_done: Callable[[], None]
    acknowledged_writes: list[AcknowledgedWrite] = field(default_factory=list)
    statistics: ClientStatistics = field(default_factory=ClientStatistics)
    current: _CurrentOperation | None = None
    operations_started: int = 0
    # (time in ms, line) for each attempt, reply and timeout, for failure reports.
    attempt_log: list[tuple[int, str]] = field(default_factory=list)

    def _log(self, text: str) -> None:
        self.attempt_log.append((self.transport.now_ms(), f"client {self.client_id} {text}"))

    def start(self) -> None:
        self.transport.schedule(self.rng.randint(0, self.settings.think_time_ms_max), self._next_operation)

    def _next_operation(self) -> None:
        if self.operations_left <= 0:
            self.on_done()
            return
        self.operations_left -= 1
        self.operations_started += 1
        op_input = self.workload.next_input(f"c{self.client_id}-{self.operations_started}")
        op_id = self.recorder.invoke(self.client_id, op_input)
        request = to_request(op_input)
        command = None
        if not isinstance(request, ReadRequest):
            command = Command(
                request.txn,
                request_id=f"c{self.client_id}-op{op_id}",
                principal=f"client-{self.client_id}",
                time_ms=self.transport.now_ms(),
            )
        self.current = _CurrentOperation(op_id, op_input, request, command)
        self._send_attempt()

    def _send_attempt(self) -> None:
        current = self.current
        assert current is not None
        members = self.transport.member_ids()
        choices = [node for node in members if node != current.last_node] or members
        node_id = self.rng.choice(choices)
        current.attempt += 1
        current.retry_scheduled = False
        current.last_node = node_id
        self.statistics.attempts += 1
        tag = AttemptTag(self.client_id, current.op_id, current.attempt)
        kind = "read" if current.command is None else "write"
        self._log(f"op {current.op_id} attempt {current.attempt}: {kind} sent to {node_id}")
        if current.command is None:
            assert isinstance(current.request, ReadRequest)
            self.transport.send_read(node_id, tag, current.request)
        else:
            current.attempts_maybe_applied.add(current.attempt)
            self.transport.send_write(node_id, tag, current.command)
        self.transport.schedule(self.settings.timeout_ms, lambda: self._on_timeout(tag))

    def _on_timeout(self, tag: AttemptTag) -> None:
        current = self.current
        if current is None or current.op_id != tag.op_id or current.attempt != tag.attempt:
            return
        self.statistics.timeouts += 1
        self._log(f"op {tag.op_id} attempt {tag.attempt}: timed out")
        if not current.retry_scheduled:
            self._retry_or_finish()

    def on_reply(self, reply: Reply) -> None:
        current = self.current
        if current is None or current.op_id != reply.tag.op_id:
            return  # a late reply to an operation that is already finished
        self._log(f"op {reply.tag.op_id} attempt {reply.tag.attempt}: {'dropped' if reply.dropped else 'ok'}")
        if reply.dropped:
            current.attempts_maybe_applied.discard(reply.tag.attempt)
            if reply.tag.attempt == current.attempt and not current.retry_scheduled:
                self._retry_or_finish()
            return
        # A reply to any attempt completes the operation, because the writes share
        # a request id and a read taken after the call is inside its interval.
        self._complete(current, reply)

    def _complete(self, current: _CurrentOperation, reply: Reply) -> None:
        self.current = None
        result = reply.result
        if isinstance(current.request, ReadRequest):
            assert isinstance(result, RangeResponse), f"read answered with {result!r}"
            output: history.Output | None = read_output(current.input, current.request, result)
        else:
            assert isinstance(result, TxnResponse), f"write answered with {result!r}"
            output = write_output(current.input, result)
        if output is None:
            self.recorder.unknown(current.op_id)
            self.statistics.unknown += 1
        else:
            self.recorder.complete(current.op_id, output)
            self.statistics.ok += 1
            self.workload.observe(current.input, output)
            if isinstance(result, TxnResponse):
                self._remember_write(current, output, result.revision)
        self._schedule_next()

    def _remember_write(self, current: _CurrentOperation, output: history.Output, revision: int) -> None:
        for key, value in written_values(current.input, output):
            self.acknowledged_writes.append(AcknowledgedWrite(current.op_id, key, value, revision))

    def _retry_or_finish(self) -> None:
        current = self.current
        assert current is not None
        if current.attempt < self.settings.attempts_max:
            backoff_ms = self.rng.randint(1, self.settings.retry_backoff_ms_max)
            current.retry_scheduled = True
            op_id = current.op_id
            self.transport.schedule(backoff_ms, lambda: self._retry(op_id))
            return
        self.current = None
        if current.attempts_maybe_applied:
            self.recorder.unknown(current.op_id)
            self.statistics.unknown += 1
        else:
            self.recorder.fail(current.op_id)
            self.statistics.failed += 1
        self._schedule_next()

    def _retry(self, op_id: int) -> None:
        # A late reply may have completed the operation during the backoff.
        if self.current is not None and self.current.op_id == op_id:
            self._send_attempt()

    def _schedule_next(self) -> None:
        self.transport.schedule(self.rng.randint(0, self.settings.think_time_ms_max), self._next_operation)
