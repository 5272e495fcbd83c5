"""Benchmark of the linearizability checker on generated 10,000-operation histories.

Each scenario generates a linearizable history (seeded, so every run checks the
same history) with 10 clients over 50 keys and times `check_history` on it:

- `per_key`: single-key operations only, so the checker splits the history
  into one partition per key.
- `txn_joined`: 5% of operations are two-key txns, which join all 50 keys into
  one partition that is searched as a whole.
- `txn_joined_unknown`: as `txn_joined`, with 1% of operations of unknown outcome.

Run it as a script to print the figures as JSON.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import sys
import time
from typing import Any

from rayconf.sims.history import generate_linearizable_history
from rayconf.sims.linearizability import check_history

OPERATION_COUNT = 10_000
CLIENT_COUNT = 10
KEY_COUNT = 50
SEED = 10_000
REPEATS = 3
# Per check; a scenario that reaches it reports outcome "unknown".
TIMEOUT_S = 120.0

SCENARIOS: dict[str, dict[str, float]] = {
    "per_key": {"txn_ratio": 0.0, "unknown_ratio": 0.0},
    "txn_joined": {"txn_ratio": 0.05, "unknown_ratio": 0.0},
    "txn_joined_unknown": {"txn_ratio": 0.05, "unknown_ratio": 0.01},
}


def run_scenario(name: str, txn_ratio: float, unknown_ratio: float) -> dict[str, Any]:
    operations = generate_linearizable_history(
        random.Random(SEED),
        client_count=CLIENT_COUNT,
        key_count=KEY_COUNT,
        operation_count=OPERATION_COUNT,
        txn_ratio=txn_ratio,
        unknown_ratio=unknown_ratio,
        failed_ratio=0.01,
    )
    check_s = []
    result = None
    for repeat in range(REPEATS):
        started = time.perf_counter()
        result = check_history(operations, timeout_s=TIMEOUT_S)
        check_s.append(time.perf_counter() - started)
        print(
            f"{name}: run {repeat + 1}/{REPEATS}: {result.outcome.value} in {check_s[-1]:.3f} s",
            file=sys.stderr,
        )
    assert result is not None
    return {
        "txn_ratio": txn_ratio,
        "unknown_ratio": unknown_ratio,
        "outcome": result.outcome.value,
        "partitions": len(result.partitions),
        "states_explored": sum(p.states_explored for p in result.partitions),
        "check_s_min": min(check_s),
        "check_s_median": statistics.median(check_s),
        "operations_per_s": OPERATION_COUNT / min(check_s),
    }


def run() -> dict[str, Any]:
    """Time the checker on each scenario and return the figures."""
    figures: dict[str, Any] = {
        "benchmark": "linearizability checker",
        "operations": OPERATION_COUNT,
        "clients": CLIENT_COUNT,
        "keys": KEY_COUNT,
        "seed": SEED,
        "repeats": REPEATS,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "scenarios": {},
    }
    for name, settings in SCENARIOS.items():
        figures["scenarios"][name] = run_scenario(name, **settings)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
