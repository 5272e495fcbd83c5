"""Storage engine benchmarks: the MVCC state machine alone, in one process.

Each figure is operations per second of wall time over a fixed count, after
a warm-up. Memory is measured in a child process as the growth of its
resident set size, so allocator overhead is counted as a user would see it.
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa

from rayconf.store.keys import prefix_end
from rayconf.store.mvcc import MVCC
from rayconf.store.records import Command, Put, RangeRequest, Txn

SMALL_KEYS = 1_000_000
OPERATIONS = 200_000
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"


def small_key(number: int) -> bytes:
    return f"/app{number % 100:02d}/svc{number % 1000:03d}/key{number:07d}".encode()


def rate(count: int, started: float) -> float:
    return count / (time.perf_counter() - started)


def throughput() -> dict[str, float]:
    """Measure puts/s, gets/s, prefix ranges/s and history reads/s."""
    state = MVCC()
    keys = [small_key(number) for number in range(100_000)]
    value = b"v" * 16

    started = time.perf_counter()
    for index, key in enumerate(keys * 2, start=1):
        state.apply(index, [Command(Txn(success=(Put(key, value),)))])
    puts = rate(len(keys) * 2, started)

    generator = random.Random(1)
    probes = [generator.choice(keys) for _ in range(OPERATIONS)]
    started = time.perf_counter()
    for key in probes:
        state.get(key)
    gets = rate(len(probes), started)

    live = state.versions.live
    started = time.perf_counter()
    for key in probes:
        live.get(key)
    dict_gets = rate(len(probes), started)

    # Each prefix is the directory of a stored key, which contains 100 keys.
    prefixes = [key[: key.rindex(b"/") + 1] for key in probes[:20_000]]
    started = time.perf_counter()
    returned = 0
    for prefix in prefixes:
        returned += len(state.range(RangeRequest(prefix, prefix_end(prefix))).kvs)
    ranges = rate(len(prefixes), started)

    state.flush()
    history_probes = probes[:20_000]
    started = time.perf_counter()
    for key in history_probes:
        state.history(key)
    histories = rate(len(history_probes), started)

    return {
        "puts_per_s": round(puts),
        "gets_per_s": round(gets),
        "raw_dict_gets_per_s": round(dict_gets),
        "prefix_ranges_per_s": round(ranges),
        "keys_per_prefix_range": round(returned / len(prefixes), 1),
        "history_reads_per_s": round(histories),
    }


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(kind: str, corpus: str) -> dict[str, float]:
    """Run in a child process: load keys, return RSS growth per key beyond key and value bytes.

    The growth includes the Python objects that contain each key and value, so
    their headers count as overhead. Only the key and value bytes do not.
    """
    # tracemalloc's own tables inflate the RSS, so one child measures RSS
    # (the million small keys) and the other traces allocations (the corpus,
    # whose few hundred keys are below the RSS page and arena granularity).
    traced = kind != "small"
    gc.collect()
    if traced:
        tracemalloc.start()
    before = resident_bytes() if not traced else tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes()
    if kind == "small":
        items = [(small_key(number), b"v" * 16) for number in range(SMALL_KEYS)]
    else:
        root = Path(corpus)
        items = [("/corpus/" + str(path.relative_to(root))).encode() for path in sorted(root.rglob("*"))
                 if path.is_file()]
        items = [(key, (root / key.decode()[len("/corpus/"):]).read_bytes()) for key in items]
    payload = sum(len(key) + len(value) for key, value in items)
    count = len(items)
    state = MVCC()
    for start in range(0, len(items), 128):
        batch = items[start:start + 128]
        state.apply(start // 128 + 1, [Command(Txn(success=tuple(Put(k, v) for k, v in batch)))])
    del batch, items
    gc.collect()
    if traced:
        grown = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - before
        tracemalloc.stop()
    else:
        grown = resident_bytes() - before
    return {
        "method": "tracemalloc + Arrow pool" if traced else "resident set size",
        "keys": count,
        "payload_bytes": payload,
        "growth_bytes": grown,
        "overhead_bytes_per_key": round((grown - payload) / count, 1),
    }


def memory(kind: str, corpus: Path) -> dict[str, float]:
    command = [sys.executable, "-c",
               f"import json, bench.bench_store as b; print(json.dumps(b.memory_child({kind!r}, {str(corpus)!r})))"]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def run() -> dict[str, object]:
    corpus = Path(os.environ.get("RAYCONF_CORPUS", DEFAULT_CORPUS))
    results: dict[str, object] = {"throughput": throughput(), "memory_small_keys": memory("small", corpus)}
    if corpus.is_dir():
        results["memory_corpus"] = memory("corpus", corpus)
    else:
        results["memory_corpus"] = f"skipped: corpus folder {corpus} not found; set RAYCONF_CORPUS"
    return results
