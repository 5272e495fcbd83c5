"""Cluster benchmarks: read and write latency and throughput on a local Ray cluster.

`run` starts a local Ray instance with `start_local_ray` and the embedded default
cluster (dc-a, dc-b and dc-c with one voter and one shard store each) in a
temporary data directory. It loads a few hundred configuration files from the
corpus, then measures linearizable reads, serializable reads and writes with
three kinds of callers:

- `one_caller_sync`: one synchronous `Client`, as a script or a service thread
  would use it.
- `one_caller_async`: one coroutine on `AsyncClient`, which separates the
  effect of concurrency from the effect of the client.
- `concurrent_async`: `CONCURRENT_CALLERS` coroutines on one `AsyncClient` in
  this process. Their concurrent reads are coalesced into `read_batch` calls.
  The callers stay in step, so each batch carries every caller's read and the
  next batch leaves only when it returns (see `reads_per_batch_call`).

Reads go to the shard store of dc-a, the first data center of the spec.
Writes are puts of corpus values to the loaded keys. Each figure runs for
`MEASURE_S` seconds after a `WARMUP_S` warm-up of the same operations. Latency
is the time one caller waits for one operation, event-loop queueing included.
Throughput is completed operations over the wall time of the phase.

`floor` gives the cost of Ray alone: one call of an actor method that does no
work, and one `ray.get_actor` name lookup, which both clients do before every
actor call. Other jobs on the machine inflate every figure, so the settings
record the load average.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.transport import replica_actor_name
from rayconf.clients.async_client import AsyncClient
from rayconf.clients.client import Client
from rayconf.errors import InvalidKey, RayconfError
from rayconf.store.keys import validate_path

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NAMESPACE = "rayconf-bench"
TICK_MS = 50
# Lease reads are the default; RAYCONF_BENCH_LEASE_READS=0 measures a
# heartbeat round per batch of linearizable reads instead.
LEASE_READS = os.environ.get("RAYCONF_BENCH_LEASE_READS", "1") != "0"
# Store read leases are the default; RAYCONF_BENCH_STORE_LEASES=0 sends every
# linearizable read's ReadIndex to the leader instead.
STORE_LEASES = os.environ.get("RAYCONF_BENCH_STORE_LEASES", "1") != "0"
# Clients read over the stores' TCP read channels by default;
# RAYCONF_BENCH_READ_CHANNEL=0 reads over Ray actor calls instead.
READ_CHANNEL = os.environ.get("RAYCONF_BENCH_READ_CHANNEL", "1") != "0"
RAY_CPUS = 2
KEYS_MAX = 300
VALUE_BYTES_MAX = 1024 * 1024
# Size of the synthetic values that replace the corpus when it has no usable file.
SYNTHETIC_VALUE_BYTES = 1024
KEY_PREFIX = "/bench/"
CONCURRENT_CALLERS = 64
# Puts in flight at once while the keys are loaded.
LOAD_CONCURRENCY = 32
WARMUP_S = 1.0
MEASURE_S = 8.0
FLOOR_CALLS = 2000
CLIENT_TIMEOUT_S = 20.0
SEED = 1

OPERATIONS = ("linearizable_read", "serializable_read", "write")

Item = tuple[str, bytes]


def log(message: str) -> None:
    print(f"bench_cluster: {message}", file=sys.stderr, flush=True)


# --- Keys and values. ---


def corpus_items(root: Path) -> tuple[list[Item], dict[str, Any]]:
    """Pick up to `KEYS_MAX` files spread evenly over the sorted corpus.

    Returns the (key, value) pairs and the counts of files seen and skipped.
    """
    files = sorted(path for path in root.rglob("*") if path.is_file())
    stride = max(1, len(files) // KEYS_MAX)
    items: list[Item] = []
    skipped_large = 0
    skipped_invalid = 0
    for path in files[::stride]:
        if len(items) == KEYS_MAX:
            break
        if path.stat().st_size > VALUE_BYTES_MAX:
            skipped_large += 1
            continue
        key = KEY_PREFIX + path.relative_to(root).as_posix()
        try:
            validate_path(key)
        except InvalidKey:
            skipped_invalid += 1
            continue
        items.append((key, path.read_bytes()))
    return items, {"source": str(root), "files_in_corpus": len(files), "skipped_above_1_mib": skipped_large,
                   "skipped_invalid_path": skipped_invalid}


def synthetic_items() -> list[Item]:
    generator = random.Random(SEED)
    return [(f"{KEY_PREFIX}synthetic/key{number:04d}", generator.randbytes(SYNTHETIC_VALUE_BYTES))
            for number in range(KEYS_MAX)]


def load_keys(spec: ClusterSpec, items: list[Item]) -> float:
    """Put every item through one `AsyncClient` and return the wall time in seconds."""
    async def load() -> None:
        client = AsyncClient(spec, timeout_s=CLIENT_TIMEOUT_S)
        for start in range(0, len(items), LOAD_CONCURRENCY):
            chunk = items[start:start + LOAD_CONCURRENCY]
            await asyncio.gather(*(client.put(key, value) for key, value in chunk))

    started = time.perf_counter()
    asyncio.run(load())
    return time.perf_counter() - started


# --- Statistics. ---


def summarize(latencies_s: list[float], wall_s: float, errors: list[str]) -> dict[str, Any]:
    """Return the count, throughput and latency percentiles (ms) of one phase."""
    figures: dict[str, Any] = {
        "operations": len(latencies_s),
        "errors": len(errors),
        "duration_s": round(wall_s, 3),
        "throughput_per_s": round(len(latencies_s) / wall_s, 1) if wall_s > 0 else 0.0,
    }
    if len(latencies_s) >= 2:
        # 99 cut points: index 49 is the median, index 98 the 99th percentile.
        cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
        figures.update({
            "p50_ms": round(cuts[49] * 1000, 3),
            "p99_ms": round(cuts[98] * 1000, 3),
            "max_ms": round(max(latencies_s) * 1000, 3),
            "mean_ms": round(statistics.fmean(latencies_s) * 1000, 3),
        })
    if errors:
        figures["first_error"] = errors[0]
    return figures


# --- Phases. ---


def run_sync_phase(operation: Callable[[random.Random], object], duration_s: float,
                   generator: random.Random) -> tuple[list[float], float, list[str]]:
    """Call `operation` in a loop for `duration_s` and return the latencies, wall time and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + duration_s
    while True:
        before = time.perf_counter()
        if before >= deadline:
            break
        try:
            operation(generator)
        except RayconfError as error:
            errors.append(f"{type(error).__name__}: {error}")
            continue
        latencies.append(time.perf_counter() - before)
    return latencies, time.perf_counter() - started, errors


async def run_async_phase(operation: Callable[[random.Random], Awaitable[object]], callers: int,
                          duration_s: float) -> tuple[list[float], float, list[str]]:
    """Run `callers` coroutines that each await `operation` in a loop for `duration_s`.

    The wall time ends when the last caller's last operation completes.
    """
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + duration_s

    async def caller(number: int) -> None:
        generator = random.Random(SEED * 1000 + number)
        while True:
            before = time.perf_counter()
            if before >= deadline:
                return
            try:
                await operation(generator)
            except RayconfError as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            latencies.append(time.perf_counter() - before)

    await asyncio.gather(*(caller(number) for number in range(callers)))
    return latencies, time.perf_counter() - started, errors


def leader_counters(spec: ClusterSpec) -> dict[str, int]:
    """Return the leader's fsync and outgoing-batch counters, which a phase reports as differences."""
    current = cluster.status(spec)
    info = current["members"].get(current["leader"], {})
    return {"wal_fsyncs": info.get("log_wal_fsyncs", 0),
            "sent_batches": info.get("transport", {}).get("sent_batches", 0)}


def with_counters(spec: ClusterSpec, figures: dict[str, Any], before: dict[str, int]) -> dict[str, Any]:
    after = leader_counters(spec)
    operations = max(1, figures["operations"])
    figures["leader_wal_fsyncs_per_operation"] = round((after["wal_fsyncs"] - before["wal_fsyncs"]) / operations, 3)
    figures["leader_sent_batches_per_operation"] = round(
        (after["sent_batches"] - before["sent_batches"]) / operations, 3)
    return figures


def measure_sync(spec: ClusterSpec, items: list[Item]) -> dict[str, Any]:
    """Measure each operation kind with one synchronous `Client`."""
    client = Client(spec, timeout_s=CLIENT_TIMEOUT_S, data_center=spec.data_centers[0].name,
                    read_channel=READ_CHANNEL)
    keys = [key for key, _ in items]
    operations: dict[str, Callable[[random.Random], object]] = {
        "linearizable_read": lambda g: client.get(g.choice(keys), consistency="linearizable"),
        "serializable_read": lambda g: client.get(g.choice(keys), consistency="serializable"),
        "write": lambda g: client.put(g.choice(keys), g.choice(items)[1]),
    }
    results = {}
    for name in OPERATIONS:
        generator = random.Random(SEED)
        run_sync_phase(operations[name], WARMUP_S, generator)
        before = leader_counters(spec)
        latencies, wall_s, errors = run_sync_phase(operations[name], MEASURE_S, generator)
        results[name] = with_counters(spec, summarize(latencies, wall_s, errors), before)
        log(f"one caller, sync Client, {name}: {describe(results[name])}")
    return results


def measure_async(spec: ClusterSpec, items: list[Item], callers: int) -> dict[str, Any]:
    """Measure each operation kind with `callers` coroutines on one `AsyncClient`."""
    keys = [key for key, _ in items]
    results: dict[str, Any] = {}

    async def measure() -> None:
        client = AsyncClient(spec, timeout_s=CLIENT_TIMEOUT_S, data_center=spec.data_centers[0].name,
                             read_channel=READ_CHANNEL)
        operations: dict[str, Callable[[random.Random], Awaitable[object]]] = {
            "linearizable_read": lambda g: client.get(g.choice(keys), consistency="linearizable"),
            "serializable_read": lambda g: client.get(g.choice(keys), consistency="serializable"),
            "write": lambda g: client.put(g.choice(keys), g.choice(items)[1]),
        }
        for name in OPERATIONS:
            await run_async_phase(operations[name], callers, WARMUP_S)
            # Status calls block, so they run in a thread and leave the loop free.
            before = await asyncio.to_thread(leader_counters, spec)
            calls_before = client.read_calls
            latencies, wall_s, errors = await run_async_phase(operations[name], callers, MEASURE_S)
            figures = summarize(latencies, wall_s, errors)
            if name != "write":
                figures["read_batch_calls"] = client.read_calls - calls_before
                figures["reads_per_batch_call"] = round(
                    figures["operations"] / max(1, figures["read_batch_calls"]), 1)
            results[name] = await asyncio.to_thread(with_counters, spec, figures, before)
            log(f"{callers} caller(s), AsyncClient, {name}: {describe(results[name])}")

    asyncio.run(measure())
    return results


def measure_floor(spec: ClusterSpec, leader: str) -> dict[str, Any]:
    """Time a no-op actor call on the leader and a `ray.get_actor` lookup, one caller."""
    handle = cluster.find_replica(spec, leader)
    name = replica_actor_name(leader)
    figures = {}
    for label, call in (("actor_call", lambda: ray.get(handle.ping.remote())),
                        ("actor_lookup", lambda: ray.get_actor(name, namespace=spec.namespace))):
        for _ in range(FLOOR_CALLS // 10):
            call()
        latencies = []
        started = time.perf_counter()
        for _ in range(FLOOR_CALLS):
            before = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - before)
        figures[label] = summarize(latencies, time.perf_counter() - started, [])
        log(f"floor, {label}: {describe(figures[label])}")
    return figures


def describe(figures: dict[str, Any]) -> str:
    return (f"{figures['operations']} ops in {figures['duration_s']:.1f} s, "
            f"{figures['throughput_per_s']:.0f}/s, p50 {figures.get('p50_ms', float('nan')):.2f} ms, "
            f"p99 {figures.get('p99_ms', float('nan')):.2f} ms, errors {figures['errors']}")


# --- Goals. ---


def check_goals(results: dict[str, Any]) -> dict[str, Any]:
    """Compare the figures with the targets for one caller and for concurrent callers."""
    single = results["one_caller_sync"]
    concurrent = results["concurrent_async"]
    goals = {
        "linearizable_read_p99_ms_one_caller": (single["linearizable_read"].get("p99_ms"), "max", 5.0),
        "write_p99_ms_one_caller": (single["write"].get("p99_ms"), "max", 50.0),
        f"linearizable_reads_per_s_{CONCURRENT_CALLERS}_callers":
            (concurrent["linearizable_read"]["throughput_per_s"], "min", 20_000.0),
    }
    checked = {}
    for name, (measured, kind, target) in goals.items():
        met = measured is not None and (measured <= target if kind == "max" else measured >= target)
        checked[name] = {"measured": measured, "goal": target, "met": met}
    return checked


# --- Entry point. ---


def prepare_items(corpus: Path) -> tuple[list[Item], dict[str, Any]]:
    """Return the keys and values to load, from the corpus or synthetic when it has no usable file."""
    items: list[Item] = []
    load: dict[str, Any] = {}
    if corpus.is_dir():
        items, load = corpus_items(corpus)
        problem = "has no file of at most 1 MiB with a valid key path"
    else:
        problem = "not found"
    if not items:
        message = (f"corpus folder {corpus} {problem}, so the keys get synthetic {SYNTHETIC_VALUE_BYTES}-byte "
                   "values. Set RAYCONF_CORPUS to a folder of configuration files")
        log(message)
        items = synthetic_items()
        load.update({"source": "synthetic", "message": message})
    sizes = [len(value) for _, value in items]
    load.update({"keys": len(items), "payload_bytes": sum(sizes),
                 "value_bytes_mean": round(statistics.fmean(sizes)), "value_bytes_max": max(sizes)})
    return items, load


def run() -> dict[str, Any]:
    """Start a local cluster, load the corpus, measure reads and writes, stop everything."""
    corpus = Path(os.environ.get("RAYCONF_CORPUS", DEFAULT_CORPUS))
    items, load = prepare_items(corpus)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rayconf-bench-") as data_directory:
        spec = cluster.default_spec(data_directory, namespace=NAMESPACE, tick_ms=TICK_MS, lease_reads=LEASE_READS,
                                    store_leases=STORE_LEASES)
        started = time.perf_counter()
        leader = final_leader = node_address = ""
        load_average_at_start = os.getloadavg()[0]
        cluster.start_local_ray(spec, num_cpus=RAY_CPUS)
        try:
            # NOTE: ray.init in Ray 2.60 replaces the node address 127.0.0.1 that start_local_ray
            # requests with the address of the outward interface (services.resolve_ip_for_localhost),
            # so on a machine with a network interface Ray is not bound to loopback.
            node_address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            if node_address != "127.0.0.1":
                log(f"Ray runs on {node_address}, not on 127.0.0.1 as start_local_ray requests")
            leader = cluster.up(spec)["leader"]
            log(f"cluster up in {time.perf_counter() - started:.1f} s, leader {leader}")
            load["duration_s"] = round(load_keys(spec, items), 3)
            log(f"loaded {load['keys']} keys ({load['payload_bytes']} bytes) in {load['duration_s']:.1f} s")
            results["load"] = load
            results["floor"] = measure_floor(spec, leader)
            results["one_caller_sync"] = measure_sync(spec, items)
            results["one_caller_async"] = measure_async(spec, items, 1)
            results["concurrent_async"] = measure_async(spec, items, CONCURRENT_CALLERS)
            final_leader = cluster.status(spec)["leader"]
        finally:
            try:
                cluster.down(spec)
            except RayconfError as error:
                log(f"stopping the cluster actors failed: {error}. "
                    "ray.shutdown() stops them with the local Ray instance")
            ray.shutdown()
    results["settings"] = {
        "tick_ms": TICK_MS,
        "lease_reads": LEASE_READS,
        "store_leases": STORE_LEASES,
        "read_channel": READ_CHANNEL,
        "replicas": len(spec.members()),
        "shard_stores": len(spec.stores()),
        "ray_cpus": RAY_CPUS,
        "callers": {"one_caller_sync": 1, "one_caller_async": 1, "concurrent_async": CONCURRENT_CALLERS},
        "warmup_s": WARMUP_S,
        "measure_s": MEASURE_S,
        "floor_calls": FLOOR_CALLS,
        "read_data_center": spec.data_centers[0].name,
        "leader_at_start": leader,
        "leader_at_end": final_leader,
        "ray_version": ray.__version__,
        "ray_node_address": node_address,
        # A 1-minute load average above the CPU count means other jobs competed for the CPUs.
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": round(load_average_at_start, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    results["goals"] = check_goals(results)
    return results
