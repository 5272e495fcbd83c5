"""The simulated clock and the queue of timed events that drives a simulation.

Time is an integer count of simulated milliseconds. Nothing in a simulation reads
the wall clock: every node tick, message delivery, client action and fault is an
event in one queue, and the simulator runs the earliest event, moves the clock to
its time, and repeats. Events at the same time run in the order they were
scheduled, so a seed fixes the order of everything.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

Action = Callable[[], None]


class EventQueue:
    """A simulated clock and the events scheduled on it.

    Invariant: `now_ms` never decreases, and no queued event is earlier than it.
    """

    __slots__ = ("now_ms", "_heap", "_sequence", "events_run")

    def __init__(self) -> None:
        self.now_ms = 0
        # (time in ms, sequence number, action): the sequence number breaks ties
        # in scheduling order and keeps actions from being compared.
        self._heap: list[tuple[int, int, Action]] = []
        self._sequence = 0
        self.events_run = 0

    def schedule(self, delay_ms: int, action: Action) -> None:
        """Run `action` `delay_ms` simulated milliseconds from now (0 is allowed)."""
        assert delay_ms >= 0, f"cannot schedule {delay_ms} ms in the past"
        self._sequence += 1
        heapq.heappush(self._heap, (self.now_ms + delay_ms, self._sequence, action))

    def next_time_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def run_next(self) -> bool:
        """Move the clock to the earliest event and run it; return False if none is queued."""
        if not self._heap:
            return False
        time_ms, _, action = heapq.heappop(self._heap)
        assert time_ms >= self.now_ms, "an event is scheduled before the current time"
        self.now_ms = time_ms
        self.events_run += 1
        action()
        return True

    def __len__(self) -> int:
        return len(self._heap)
