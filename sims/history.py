"""Client histories of key-value operations, as the linearizability checker reads them.

A history is a list of `Operation` records: who called what, when the call
started and returned on one shared clock, what came back, and whether the
operation took effect. Simulated clients build it through `HistoryRecorder`;
`save_history` and `load_history` keep it as JSON so that a failing run can be
checked again without rerunning it.

Status has three values:

- `ok`: the client saw a response, and `output` contains it.
- `failed`: the operation certainly did not take effect (for example, the
  request was rejected before it was proposed). The checker drops it.
- `unknown`: the client saw no response (a timeout or a crash), so the operation
  may have taken effect at any time after its call, or never. Its return time is
  infinity and its output is None.

Keys and values are bytes, as in the store. A value of None means "absent".
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# The operation types, the JSON files and the generator live in their own
# modules. This module re-exports their public names, so imports from it keep working.
from rayconf.sims.history_generator import (
    generate_linearizable_history as generate_linearizable_history,
)
from rayconf.sims.history_json import (
    HISTORY_FORMAT as HISTORY_FORMAT,
    HISTORY_FORMAT_VERSION as HISTORY_FORMAT_VERSION,
    history_from_json as history_from_json,
    history_to_json as history_to_json,
    load_history as load_history,
    save_history as save_history,
)
from rayconf.sims.history_types import (
    Cas as Cas,
    CasResult as CasResult,
    Compare as Compare,
    CompareOp as CompareOp,
    Delete as Delete,
    Get as Get,
    Input as Input,
    Operation as Operation,
    OpStatus as OpStatus,
    Output as Output,
    Put as Put,
    ReadResult as ReadResult,
    Txn as Txn,
    TxnOp as TxnOp,
    TxnResult as TxnResult,
    Value as Value,
    WriteResult as WriteResult,
    format_input as format_input,
    format_output as format_output,
    format_value as format_value,
    keys_of as keys_of,
)

# A bound on the recorder's memory. One operation takes an estimated 300 bytes
# plus its keys and values.
MAX_RECORDED_OPERATIONS_DEFAULT = 1_000_000


# --- Recording ---


@dataclass(slots=True)
class _PendingCall:
    client_id: int
    call_time: float
    input: Input


class HistoryRecorder:
    """Thread-safe recorder that builds a history from concurrent clients.

    A client calls `invoke` just before it sends a request, and one of
    `complete`, `fail` or `unknown` once the outcome is known. Times come from
    `clock`, which must be the one clock every client shares, so a simulation
    passes its simulated clock. `invoke` raises ValueError once
    `max_operations` operations were invoked.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_operations: int = MAX_RECORDED_OPERATIONS_DEFAULT,
    ) -> None:
        self._clock = clock
        self._max_operations = max_operations
        self._lock = threading.Lock()
        self._next_op_id = 0
        self._pending: dict[int, _PendingCall] = {}
        self._finished: list[Operation] = []

    def invoke(self, client_id: int, op_input: Input) -> int:
        """Record the call of an operation and return its op id."""
        with self._lock:
            if self._next_op_id >= self._max_operations:
                raise ValueError(
                    f"history is full at max_operations={self._max_operations}. Raise the "
                    f"limit or record a shorter run"
                )
            op_id = self._next_op_id
            self._next_op_id += 1
            self._pending[op_id] = _PendingCall(client_id, self._clock(), op_input)
            return op_id

    def complete(self, op_id: int, output: Output) -> None:
        """Record that the operation returned `output` and took effect."""
        self._finish(op_id, output, OpStatus.OK)

    def fail(self, op_id: int) -> None:
        """Record that the operation certainly did not take effect."""
        self._finish(op_id, None, OpStatus.FAILED)

    def unknown(self, op_id: int) -> None:
        """Record that the operation may or may not have taken effect."""
        self._finish(op_id, None, OpStatus.UNKNOWN)

    def pending_op_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._pending)

    def history(self) -> list[Operation]:
        """Return every operation in op id order.

        Operations still pending are returned as `unknown`, because a client
        that never saw a response cannot tell whether they took effect.
        """
        with self._lock:
            operations = list(self._finished)
            for op_id, call in self._pending.items():
                operations.append(
                    Operation(
                        call.client_id, op_id, call.call_time, math.inf, call.input, None,
                        OpStatus.UNKNOWN,
                    )
                )
        return sorted(operations, key=lambda operation: operation.op_id)

    def _finish(self, op_id: int, output: Output | None, status: OpStatus) -> None:
        with self._lock:
            call = self._pending.get(op_id)
            if call is None:
                raise ValueError(
                    f"operation {op_id} is not pending: it was never invoked or was "
                    f"already finished"
                )
            return_time = math.inf if status is OpStatus.UNKNOWN else self._clock()
            # Built before the pop, so an invalid output leaves the call pending.
            operation = Operation(
                call.client_id, op_id, call.call_time, return_time, call.input, output, status
            )
            del self._pending[op_id]
            self._finished.append(operation)
