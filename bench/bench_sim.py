"""Benchmark of the deterministic simulator: simulated client operations per second of wall time.

Each scenario runs `SEED_COUNT` seeds with the default `SimConfig` (200 client
operations per seed, 6 clients) and reports seeds per second and client
operations per second. The times cover whole runs: the cluster, the faults, the
settle phase and the final checks. `no_faults` shows the cost of the cluster and
the checkers alone, `all_faults` the setting that `make sim` runs.

Run it as a script to print the figures as JSON.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from typing import Any

from rayconf.sims.config import ALL_FAULTS, FaultKind, SimConfig
from rayconf.sims.runner import run_seeds

SEED_COUNT = 40
FIRST_SEED = 50_000
NODE_COUNT = 5

SCENARIOS: dict[str, tuple[FaultKind, ...]] = {
    "no_faults": (),
    "all_faults": ALL_FAULTS,
}


def run_scenario(name: str, faults: tuple[FaultKind, ...]) -> dict[str, Any]:
    config = SimConfig(node_count=NODE_COUNT, faults=faults)
    started = time.perf_counter()
    summary = run_seeds(config, range(FIRST_SEED, FIRST_SEED + SEED_COUNT), out_directory=None)
    wall_s = time.perf_counter() - started
    print(f"{name}: {SEED_COUNT} seeds in {wall_s:.1f} s", file=sys.stderr)
    return {
        "seeds": summary.seeds,
        "failed_seeds": [failed.seed for failed in summary.failed_seeds],
        "operations": summary.operations,
        "operations_ok": summary.operations_ok,
        "elections": summary.elections,
        "faults_injected": sum(summary.faults.values()),
        "simulated_s": summary.simulated_time_ms / 1000,
        "wall_s": wall_s,
        "seeds_per_s": summary.seeds / wall_s,
        "operations_per_s": summary.operations / wall_s,
        "simulated_s_per_wall_s": summary.simulated_time_ms / 1000 / wall_s,
    }


def run() -> dict[str, Any]:
    """Time the simulator on each scenario and return the figures."""
    logging.getLogger("rayconf").setLevel(logging.CRITICAL)
    defaults = SimConfig()
    figures: dict[str, Any] = {
        "benchmark": "deterministic simulator",
        "seeds": SEED_COUNT,
        "first_seed": FIRST_SEED,
        "nodes": NODE_COUNT,
        "operations_per_seed": defaults.operation_count,
        "clients": defaults.client_count,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "scenarios": {},
    }
    for name, faults in SCENARIOS.items():
        figures["scenarios"][name] = run_scenario(name, faults)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
