"""Run every benchmark, print the figures and save them as JSON.

Usage: `python -m bench [store|checker|cluster|watch|sim|large ...]`. Figures go to standard output
and to `bench/results/latest.json`; `docs/benchmarks.md` records them with
the machine and the command.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import bench_checker, bench_cluster, bench_large, bench_sim, bench_store, bench_watch

SUITES = {
    "store": bench_store.run,
    "checker": bench_checker.run,
    "cluster": bench_cluster.run,
    "watch": bench_watch.run,
    "sim": bench_sim.run,
    "large": bench_large.run,
}


def machine() -> dict[str, object]:
    with open("/proc/meminfo") as handle:
        memory_kib = int(handle.readline().split()[1])
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
    }


def main(arguments: list[str]) -> int:
    chosen = arguments or list(SUITES)
    unknown = [name for name in chosen if name not in SUITES]
    if unknown:
        print(f"unknown benchmark {unknown}; choose from {sorted(SUITES)}", file=sys.stderr)
        return 2
    results: dict[str, object] = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    for name in chosen:
        print(f"running {name} benchmarks ...", flush=True)
        started = time.perf_counter()
        results[name] = SUITES[name]()
        print(f"{name}: done in {time.perf_counter() - started:.1f} s", flush=True)
        print(json.dumps(results[name], indent=2), flush=True)
    output = Path(__file__).resolve().parent / "results" / "latest.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
