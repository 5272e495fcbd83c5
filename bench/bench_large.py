"""Large-value benchmarks: 10 MiB puts and gets, and small reads while large puts run.

`run` starts a local Ray instance with `start_local_ray` and the embedded
default cluster (three voters, one shard store and one watch hub per data
center) in a temporary data directory, with the default limits: values above
64 KiB are split into 1 MiB chunks. Phases:

- `put_10mib`: `SEQUENTIAL_OPERATIONS` puts of distinct random 10 MiB values
  from one synchronous `Client`, one after the other.
- `get_10mib`: as many linearizable gets of those keys by a client without
  a chunk cache, so each value is fetched from the replicas, checked and
  reassembled.
- `concurrent_puts`: `CONCURRENT_ROUNDS` rounds in which `CONCURRENT_PUTS`
  threads, each with its own `Client`, put one distinct 10 MiB value at the
  same moment. Meanwhile two other processes read a small key in a loop
  (one linearizable, one serializable), and a sampler reads each replica
  process's resident memory (VmRSS and RssAnon in /proc) every
  `MEMORY_SAMPLE_INTERVAL_S`. Only reads that began during a round count,
  pooled over the rounds and also given per round.

Latency is the time one caller waits for one operation. Throughput in MiB/s
is value bytes moved over the phase's wall time. With 30 samples, p99 is close
to the maximum; the JSON keeps min and max too.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import find_replica, find_store
from rayconf.clients.client import Client
from rayconf.store.limits import MIB

NAMESPACE = "rayconf-bench-large"
RAY_CPUS = 2
VALUE_BYTES = 10 * MIB
SEQUENTIAL_OPERATIONS = 30
CONCURRENT_PUTS = 20
# Rounds of the concurrent puts; the small reads of all rounds are pooled,
# so that their p99 rests on more samples than one round gives.
CONCURRENT_ROUNDS = 3
MEMORY_SAMPLE_INTERVAL_S = 0.05
TIMEOUT_S = 120.0
# The small readers use the stores' TCP read channels by default;
# RAYCONF_BENCH_READ_CHANNEL=0 sends their reads over Ray actor calls.
READ_CHANNEL = os.environ.get("RAYCONF_BENCH_READ_CHANNEL", "1") != "0"


def log(message: str) -> None:
    print(f"  [large] {message}", file=sys.stderr, flush=True)


def percentiles_ms(samples_s: list[float]) -> dict[str, Any]:
    """Return the count and the p50, p99, min and max (ms) of `samples_s`."""
    if len(samples_s) < 2:
        return {"samples": len(samples_s)}
    cuts = statistics.quantiles(samples_s, n=100, method="inclusive")
    return {"samples": len(samples_s), "p50_ms": round(cuts[49] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1),
            "min_ms": round(min(samples_s) * 1000, 1), "max_ms": round(max(samples_s) * 1000, 1)}


def resident_mib(pid: int, field: str = "VmRSS") -> float:
    """Return a memory field of /proc/<pid>/status in MiB.

    VmRSS is all resident memory. RssAnon is the process's own heap, and
    RssShmem includes the pages of Ray's shared-memory object store that the
    process has mapped, which the object store owns and bounds.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rayconf-bench-large-") as data:
        spec = cluster.default_spec(data, namespace=NAMESPACE)
        with cluster.local_cluster(spec, num_cpus=RAY_CPUS):
            return measure(spec)


def measure(spec: cluster.ClusterSpec) -> dict[str, Any]:
    client = Client(spec, timeout_s=TIMEOUT_S, principal="bench", read_channel=READ_CHANNEL)
    rng = random.Random(7)
    figures: dict[str, Any] = {"settings": {
        "value_bytes": VALUE_BYTES, "chunk_bytes": spec.limits.chunk_bytes,
        "inline_value_bytes_max": spec.limits.inline_value_bytes_max,
        "sequential_operations": SEQUENTIAL_OPERATIONS, "concurrent_puts": CONCURRENT_PUTS,
        "concurrent_rounds": CONCURRENT_ROUNDS,
        "load_average_at_start": os.getloadavg(), "read_channel": READ_CHANNEL,
        # Nice values of the stores' and replicas' serving threads and of the chunk threads.
        "store_nice": {store: ray.get(find_store(spec, store).status.remote())["nice"] for store in spec.stores()},
        "replica_nice": {member: ray.get(find_replica(spec, member).status.remote())["nice"]
                         for member in spec.members()},
        "chunk_io_nice": spec.settings.chunk_io_nice,
    }}
    client.put("/bench/small", b"warm")
    client.put("/bench/large/warm", rng.randbytes(VALUE_BYTES))

    log(f"{SEQUENTIAL_OPERATIONS} sequential 10 MiB puts")
    put_latencies = []
    started = time.perf_counter()
    for number in range(SEQUENTIAL_OPERATIONS):
        value = rng.randbytes(VALUE_BYTES)
        began = time.perf_counter()
        client.put(f"/bench/large/{number}", value)
        put_latencies.append(time.perf_counter() - began)
    wall_s = time.perf_counter() - started
    figures["put_10mib"] = {**percentiles_ms(put_latencies),
                            "mib_per_s": round(SEQUENTIAL_OPERATIONS * VALUE_BYTES / MIB / sum(put_latencies), 1),
                            "wall_s": round(wall_s, 1)}

    log(f"{SEQUENTIAL_OPERATIONS} linearizable 10 MiB gets")
    # Without a chunk cache, so every get fetches and checks all its chunks.
    reader = Client(spec, timeout_s=TIMEOUT_S, chunk_cache_bytes=0)
    get_latencies = []
    for number in range(SEQUENTIAL_OPERATIONS):
        began = time.perf_counter()
        kv = reader.get(f"/bench/large/{number}")
        get_latencies.append(time.perf_counter() - began)
        assert kv is not None and len(kv.value) == VALUE_BYTES
    figures["get_10mib"] = {**percentiles_ms(get_latencies),
                            "mib_per_s": round(SEQUENTIAL_OPERATIONS * VALUE_BYTES / MIB / sum(get_latencies), 1)}

    log("small reads alone, for comparison")
    for consistency in ("linearizable", "serializable"):
        figures[f"small_read_idle_{consistency}"] = percentiles_ms(small_reads(client, consistency, duration_s=5.0))
    figures["concurrent_puts"] = concurrent_phase(spec, client, rng)
    figures["replica_chunks"] = {member: ray.get(find_replica(spec, member).chunk_statistics.remote())
                                 for member in spec.members()}
    return figures


def small_reads(client: Client, consistency: str, *, duration_s: float | None = None,
                stop: threading.Event | None = None) -> list[float]:
    latencies = []
    deadline = time.perf_counter() + (duration_s or 0.0)
    while (stop is not None and not stop.is_set()) or (duration_s is not None and time.perf_counter() < deadline):
        began = time.perf_counter()
        client.get("/bench/small", consistency=consistency)
        latencies.append(time.perf_counter() - began)
    return latencies


def concurrent_phase(spec: cluster.ClusterSpec, client: Client, rng: random.Random) -> dict[str, Any]:
    log(f"{CONCURRENT_ROUNDS} rounds of {CONCURRENT_PUTS} concurrent 10 MiB puts with small reads and memory "
        "sampling")
    pids = {member: ray.get(find_replica(spec, member).status.remote())["pid"] for member in spec.members()}
    baseline = {member: round(resident_mib(pid), 1) for member, pid in pids.items()}
    writers = [Client(spec, timeout_s=TIMEOUT_S) for _ in range(CONCURRENT_PUTS)]
    peak = dict(baseline)
    peak_anonymous = {member: round(resident_mib(pid, "RssAnon"), 1) for member, pid in pids.items()}
    baseline_anonymous = dict(peak_anonymous)
    stop = threading.Event()
    put_latencies: list[float] = []
    errors: list[str] = []

    def sample() -> None:
        while not stop.is_set():
            for member, pid in pids.items():
                peak[member] = max(peak[member], round(resident_mib(pid), 1))
                peak_anonymous[member] = max(peak_anonymous[member], round(resident_mib(pid, "RssAnon"), 1))
            time.sleep(MEMORY_SAMPLE_INTERVAL_S)

    def put(key: str, number: int, value: bytes) -> None:
        began = time.perf_counter()
        try:
            writers[number].put(key, value)
        except Exception as error:  # counted in the figures
            errors.append(f"{type(error).__name__}: {error}")
            return
        put_latencies.append(time.perf_counter() - began)

    # The small readers run in their own process, so the writers' threads in
    # this one do not hold them up on the GIL.
    context = multiprocessing.get_context("spawn")
    reader_stop = context.Event()
    results = context.Queue()
    readers = [context.Process(target=read_small_in_process,
                               args=(ray.get_runtime_context().gcs_address, spec, mode, reader_stop, results))
               for mode in ("linearizable", "serializable")]
    for reader in readers:
        reader.start()
    ready = [results.get(timeout=TIMEOUT_S) for _ in readers]
    assert ready == ["ready", "ready"], ready
    sampler = threading.Thread(target=sample)
    sampler.start()
    # The monotonic clock is the same in every process on one machine, so
    # the readers' samples are matched to the rounds by when they began.
    windows: list[tuple[float, float]] = []
    for round_number in range(CONCURRENT_ROUNDS):
        values = [rng.randbytes(VALUE_BYTES) for _ in range(CONCURRENT_PUTS)]
        threads = [threading.Thread(target=put, args=(f"/bench/concurrent/{round_number}/{number}", number,
                                                      values[number]))
                   for number in range(CONCURRENT_PUTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        windows.append((started, time.monotonic()))
    stop.set()
    reader_stop.set()
    sampler.join()
    reads: dict[str, list[tuple[float, float]]] = {}
    for _ in readers:
        mode, samples = results.get(timeout=TIMEOUT_S)
        reads[mode] = samples
    for reader in readers:
        reader.join(timeout=TIMEOUT_S)
    wall_s = sum(end - start for start, end in windows)
    during = {mode: [[latency for began, latency in samples if start <= began < end] for start, end in windows]
              for mode, samples in reads.items()}
    return {
        "rounds": CONCURRENT_ROUNDS,
        "wall_s_per_round": [round(end - start, 2) for start, end in windows],
        "mib_per_s": round(len(put_latencies) * VALUE_BYTES / MIB / wall_s, 1),
        "put_latency": percentiles_ms(put_latencies),
        "errors": errors[:5],
        "small_read_during_load_linearizable": percentiles_ms(sum(during["linearizable"], [])),
        "small_read_during_load_serializable": percentiles_ms(sum(during["serializable"], [])),
        "small_read_p99_ms_per_round": {mode: [percentiles_ms(samples).get("p99_ms") for samples in rounds]
                                        for mode, rounds in during.items()},
        "replica_rss_mib_before": baseline,
        "replica_rss_mib_peak_sampled": peak,
        "replica_anonymous_rss_mib_before": baseline_anonymous,
        "replica_anonymous_rss_mib_peak_sampled": peak_anonymous,
    }


def read_small_in_process(gcs_address: str, spec: cluster.ClusterSpec, consistency: str, stop: Any,
                          results: Any) -> None:
    """Read the small key at `consistency` until `stop` is set; send the latencies to `results`."""
    cluster.use_loopback()
    # Ray sends its token to an explicit address only with RAY_AUTH_MODE=token.
    os.environ["RAY_AUTH_MODE"] = "token"
    ray.init(address=gcs_address, namespace=spec.namespace, log_to_driver=False)
    client = Client(spec, timeout_s=TIMEOUT_S, session=False, read_channel=READ_CHANNEL)
    client.get("/bench/small", consistency=consistency)
    results.put("ready")
    samples = []
    while not stop.is_set():
        began = time.monotonic()
        client.get("/bench/small", consistency=consistency)
        samples.append((began, time.monotonic() - began))
    results.put((consistency, samples))
    ray.shutdown()
