"""Watch benchmarks: delivery latency, fan-out rate and resume time of one watch hub.

`run` starts a local Ray instance with `start_local_ray` and the embedded
default cluster (`default_spec`: dc-a, dc-b and dc-c with one voter, shard
store and watch hub each) in a temporary data directory. Every watch is opened
in this process, through its dc-a stream, so all of them share one session
and one poll loop on hub-dc-a-h1, the way the watches of one client process
do. The 10,000 watches therefore come from one process, not from 10,000
clients.

- `latency`: one probe watch on the single key PROBE_KEY, with 0, 999 and
  9,999 more watches open on FAN_PREFIX, which the probe writes do not touch,
  so 1, 1,000 and 10,000 watches are open on the hub. One synchronous `Client`
  puts the probe key LATENCY_WRITES times, one put at a time. Arrival is when
  a thread blocked in `Watch.get` on the probe watch returns the batch.
  `from_ack` is the time from the put's return to the arrival, and is negative
  when the event arrives before the acknowledgement. `from_call` is the time
  from just before the put call to the arrival.
- `fan_out`: the 999 and then the 9,999 watches on FAN_PREFIX all match a
  stream of puts under FAN_PREFIX from FAN_CALLERS concurrent `AsyncClient`
  callers, FAN_EVENTS_TARGET events in all. The rate is events delivered to
  the watches' buffers over the time from the first put to the last delivery.
  It includes this process's own delivery work, on the same CPUs as the hub.
- `resume`: with the 10,000 watches open, kill hub-dc-a-h1 with
  `no_restart=False`, at once write one revision that every watch matches (a
  put under FAN_PREFIX and a put of PROBE_KEY), and time until every watch
  has received it. Each watch resumes from the revision after its last
  delivered one. The write usually commits before the hub has restarted, so
  the hub serves it to every watch through its catch-up path
  (`hub_catch_ups_served`).

Other jobs on the machine inflate every figure, so the settings record the
load average. Run it with `python -m bench.bench_watch`, which prints the
figures as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.actors.watch_hub import find_hub, hub_actor_name
from rayconf.clients.async_client import AsyncClient
from rayconf.clients.client import Client
from rayconf.clients.watch import Watch, close_streams, watch
from rayconf.errors import RayconfError
from rayconf.store.records import Put, Txn

NAMESPACE = "rayconf-bench-watch"
TICK_MS = 50
RAY_CPUS = 2
DATA_CENTER = "dc-a"
HUB = hub_actor_name(DATA_CENTER, 1)
PROBE_KEY = "/bench-watch/probe"
FAN_PREFIX = "/bench-watch/fan"
# Total watches open on the hub in each latency phase, the probe watch included.
WATCH_COUNTS = (1, 1_000, 10_000)
# Phases of these totals also measure the fan-out rate.
FAN_OUT_COUNTS = (1_000, 10_000)
LATENCY_WARMUP_WRITES = 20
LATENCY_WRITES = 200
FAN_EVENTS_TARGET = 300_000
FAN_CALLERS = 8
VALUE_BYTES = 64
# Threads that create watches at once, because each `watch` call waits for its own create call.
CREATE_THREADS = 32
CLIENT_TIMEOUT_S = 30.0
DELIVERY_TIMEOUT_S = 60.0
RESUME_TIMEOUT_S = 90.0
# Interval at which the main thread checks whether every watch has received a revision.
COMPLETION_CHECK_S = 0.005


def log(message: str) -> None:
    print(f"bench_watch: {message}", file=sys.stderr, flush=True)


def value_of(number: int) -> bytes:
    return f"{number:08d}".encode().ljust(VALUE_BYTES, b".")


def percentiles_ms(samples_s: list[float]) -> dict[str, Any]:
    """Return the count and the p50, p99, min and max (ms) of `samples_s`."""
    if len(samples_s) < 2:
        return {"samples": len(samples_s)}
    # 99 cut points: index 49 is the median, index 98 the 99th percentile.
    cuts = statistics.quantiles(samples_s, n=100, method="inclusive")
    return {"samples": len(samples_s), "p50_ms": round(cuts[49] * 1000, 3), "p99_ms": round(cuts[98] * 1000, 3),
            "min_ms": round(min(samples_s) * 1000, 3), "max_ms": round(max(samples_s) * 1000, 3)}


def hub_counters(spec: ClusterSpec) -> dict[str, Any]:
    return ray.get(find_hub(spec, HUB).statistics.remote(), timeout=CLIENT_TIMEOUT_S)


# --- Watches. ---


def open_fan_watches(spec: ClusterSpec, count: int) -> tuple[list[Watch], float]:
    """Open `count` watches on FAN_PREFIX from CREATE_THREADS threads; return them and the wall time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        opened = list(pool.map(lambda _: watch(spec, FAN_PREFIX, data_center=DATA_CENTER,
                                               timeout_s=CLIENT_TIMEOUT_S), range(count)))
    return opened, time.perf_counter() - started


def drain(watches: list[Watch]) -> None:
    """Read every buffered batch, so that no watch comes near its buffer bound in a later phase."""
    for watched in watches:
        while watched.get(0) is not None:
            pass


class ProbeReader(threading.Thread):
    """A thread that reads the probe watch and records when each revision arrived (perf_counter seconds)."""

    def __init__(self, watched: Watch) -> None:
        super().__init__(name="bench-watch-probe", daemon=True)
        self.watched = watched
        self.arrivals: dict[int, float] = {}
        self.condition = threading.Condition()
        self.stopped = False
        self.error: RayconfError | None = None

    def run(self) -> None:
        while not self.stopped:
            try:
                batch = self.watched.get(0.2)
            except RayconfError as error:
                self.error = error
                return
            if batch is None or batch.progress:
                continue
            arrived = time.perf_counter()
            with self.condition:
                self.arrivals[batch.revision] = arrived
                self.condition.notify_all()

    def wait_arrival(self, revision: int, timeout_s: float) -> float | None:
        """Return the arrival time of `revision`, or None when it does not arrive within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self.condition:
            while revision not in self.arrivals:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    return None
                self.condition.wait(remaining)
            return self.arrivals[revision]


def wait_all_received(watches: list[Watch], revision: int, timeout_s: float) -> float | None:
    """Return the perf_counter time once every watch has received `revision`, or None on timeout.

    A watch has received a revision once its next revision is above it.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(watched.next_revision > revision for watched in watches):
            return time.perf_counter()
        time.sleep(COMPLETION_CHECK_S)
    return None


# --- Phases. ---


def measure_latency(client: Client, reader: ProbeReader, watches_open: int) -> dict[str, Any]:
    """Put the probe key one write at a time and time each event's arrival at the probe watch."""
    from_ack: list[float] = []
    from_call: list[float] = []
    lost = 0
    for number in range(LATENCY_WARMUP_WRITES + LATENCY_WRITES):
        before_call = time.perf_counter()
        revision = client.put(PROBE_KEY, value_of(number)).revision
        acknowledged = time.perf_counter()
        arrived = reader.wait_arrival(revision, DELIVERY_TIMEOUT_S)
        if arrived is None:
            lost += 1
            continue
        if number >= LATENCY_WARMUP_WRITES:
            from_ack.append(arrived - acknowledged)
            from_call.append(arrived - before_call)
    figures = {"watches_open": watches_open, "from_ack": percentiles_ms(from_ack),
               "from_call": percentiles_ms(from_call), "not_delivered": lost}
    log(f"latency with {watches_open} watches: from ack p50 {figures['from_ack'].get('p50_ms')} ms, "
        f"p99 {figures['from_ack'].get('p99_ms')} ms; from call p50 {figures['from_call'].get('p50_ms')} ms, "
        f"p99 {figures['from_call'].get('p99_ms')} ms")
    return figures


def measure_fan_out(spec: ClusterSpec, fan_watches: list[Watch]) -> dict[str, Any]:
    """Put keys under FAN_PREFIX until about FAN_EVENTS_TARGET events are due, and time their delivery.

    A poll reply carries at most the hub's `reply_events_max` events. A run
    whose stream still timed out shows `session_failures` above 0 and a lower
    rate, because every watch then resumes and the hub queues the events again.
    """
    writes = max(1, -(-FAN_EVENTS_TARGET // len(fan_watches)))
    stream = fan_watches[0].stream
    batches_before = sum(watched.statistics["batches"] for watched in fan_watches)
    lagging_before = stream.statistics["lagging_cancels"]
    failures_before = stream.statistics["session_failures"]
    duplicates_before = sum(watched.statistics["duplicates_dropped"] for watched in fan_watches)
    hub_before = hub_counters(spec)
    revisions: list[int] = []

    async def write_all() -> None:
        client = AsyncClient(spec, timeout_s=CLIENT_TIMEOUT_S, data_center=DATA_CENTER)
        numbers = iter(range(writes))

        async def caller() -> None:
            for number in numbers:
                response = await client.put(f"{FAN_PREFIX}/k{number % 100}", value_of(number))
                revisions.append(response.revision)

        await asyncio.gather(*(caller() for _ in range(FAN_CALLERS)))

    started = time.perf_counter()
    asyncio.run(write_all())
    writes_done = time.perf_counter()
    finished = wait_all_received(fan_watches, max(revisions), DELIVERY_TIMEOUT_S)
    if finished is None:
        raise RuntimeError(f"timed out after {DELIVERY_TIMEOUT_S} s: the {len(fan_watches)} fan-out watches did "
                           f"not all receive revision {max(revisions)}; check the log of {HUB}")
    delivered = sum(watched.statistics["batches"] for watched in fan_watches) - batches_before
    hub_after = hub_counters(spec)
    elapsed_s = finished - started
    figures = {
        "matching_watches": len(fan_watches),
        "writes": writes,
        "events_due": writes * len(fan_watches),
        "events_delivered": delivered,
        "duration_s": round(elapsed_s, 3),
        "events_per_s": round(delivered / elapsed_s),
        "writes_per_s": round(writes / (writes_done - started), 1),
        "writes_done_s": round(writes_done - started, 3),
        "hub_events_queued": hub_after["events_queued"] - hub_before["events_queued"],
        "lagging_cancels": stream.statistics["lagging_cancels"] - lagging_before,
        # A session failure resumes every watch, so the hub queues their events again.
        "session_failures": stream.statistics["session_failures"] - failures_before,
        "duplicates_dropped": sum(watched.statistics["duplicates_dropped"] for watched in fan_watches)
        - duplicates_before,
    }
    log(f"fan-out to {len(fan_watches)} watches: {delivered} events in {elapsed_s:.2f} s, "
        f"{figures['events_per_s']} events/s ({writes} writes at {figures['writes_per_s']}/s, "
        f"{figures['session_failures']} session failures)")
    return figures


def measure_resume(spec: ClusterSpec, client: Client, watches: list[Watch]) -> dict[str, Any]:
    """Kill the hub, write one revision that every watch matches, and time until all received it."""
    stream = watches[0].stream
    sessions_before = stream.statistics["sessions_opened"]
    hub_alive: dict[str, float] = {}

    def wait_hub(killed_s: float) -> None:
        deadline = time.monotonic() + RESUME_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                handle = find_hub(spec, HUB)
                uptime_s = ray.get(handle.statistics.remote(), timeout=5.0)["uptime_s"] if handle else None
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                uptime_s = None
            if uptime_s is not None and uptime_s <= time.perf_counter() - killed_s:
                hub_alive["answered"] = time.perf_counter()
                return
            time.sleep(0.02)

    killed = time.perf_counter()
    ray.kill(find_hub(spec, HUB), no_restart=False)
    watcher = threading.Thread(target=wait_hub, args=(killed,), name="bench-watch-hub-restart", daemon=True)
    watcher.start()
    response = client.txn(Txn(success=(Put(f"{FAN_PREFIX}/resume".encode(), value_of(0)),
                                      Put(PROBE_KEY.encode(), value_of(0)))))
    acknowledged = time.perf_counter()
    finished = wait_all_received(watches, response.revision, RESUME_TIMEOUT_S)
    watcher.join(timeout=RESUME_TIMEOUT_S)
    if finished is None:
        behind = sum(1 for watched in watches if watched.next_revision <= response.revision)
        raise RuntimeError(f"timed out after {RESUME_TIMEOUT_S} s: {behind} of {len(watches)} watches did not "
                           f"receive revision {response.revision} after the restart of {HUB}; check its log")
    hub = hub_counters(spec)
    figures = {
        "watches": len(watches),
        "kill_to_all_received_s": round(finished - killed, 3),
        "kill_to_write_ack_s": round(acknowledged - killed, 3),
        "kill_to_hub_answering_s": round(hub_alive["answered"] - killed, 3) if hub_alive else None,
        "sessions_opened": stream.statistics["sessions_opened"] - sessions_before,
        "hub_catch_ups_served": hub["catch_ups_served"],
        "hub_history_reads": hub["history_reads"],
    }
    log(f"resume of {len(watches)} watches after a hub kill: all received the next write "
        f"{figures['kill_to_all_received_s']:.2f} s after the kill (hub answering after "
        f"{figures['kill_to_hub_answering_s']} s)")
    return figures


# --- Entry point. ---


def run() -> dict[str, Any]:
    """Start a local cluster, open up to 10,000 watches on one hub, measure, stop everything."""
    results: dict[str, Any] = {"latency": [], "fan_out": [], "watch_creation": []}
    load_average_at_start = os.getloadavg()[0]
    node_address = ""
    with tempfile.TemporaryDirectory(prefix="rayconf-bench-watch-") as data_directory:
        spec = cluster.default_spec(data_directory, namespace=NAMESPACE, tick_ms=TICK_MS)
        started = time.perf_counter()
        cluster.start_local_ray(spec, num_cpus=RAY_CPUS)
        try:
            node_address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            leader = cluster.up(spec)["leader"]
            log(f"cluster up in {time.perf_counter() - started:.1f} s, leader {leader}, "
                f"hubs {sorted(cluster.status(spec)['hubs'])}")
            client = Client(spec, timeout_s=CLIENT_TIMEOUT_S, data_center=DATA_CENTER)
            probe = watch(spec, PROBE_KEY, prefix=False, data_center=DATA_CENTER)
            reader = ProbeReader(probe)
            reader.start()
            fan_watches: list[Watch] = []
            try:
                for total in WATCH_COUNTS:
                    added, create_s = open_fan_watches(spec, total - 1 - len(fan_watches))
                    if added:
                        fan_watches.extend(added)
                        results["watch_creation"].append(
                            {"watches": len(added), "duration_s": round(create_s, 3),
                             "watches_per_s": round(len(added) / create_s, 1)})
                        log(f"opened {len(added)} watches in {create_s:.1f} s; {total} open")
                    results["latency"].append(measure_latency(client, reader, total))
                    if total in FAN_OUT_COUNTS:
                        results["fan_out"].append(measure_fan_out(spec, fan_watches))
                        drain(fan_watches)
                results["resume"] = measure_resume(spec, client, [probe, *fan_watches])
                results["stream"] = dict(probe.stream.statistics)
            finally:
                reader.stopped = True
                reader.join(timeout=5)
        finally:
            close_streams()
            try:
                cluster.down(spec)
            except RayconfError as error:
                log(f"stopping the cluster actors failed: {error}. "
                    "ray.shutdown() stops them with the local Ray instance")
            ray.shutdown()
    results["settings"] = {
        "tick_ms": TICK_MS,
        "ray_cpus": RAY_CPUS,
        "hub": HUB,
        "watch_process": "one process (this one) with one shared poll stream",
        "latency_writes": LATENCY_WRITES,
        "latency_warmup_writes": LATENCY_WARMUP_WRITES,
        "fan_callers": FAN_CALLERS,
        "value_bytes": VALUE_BYTES,
        "ray_version": ray.__version__,
        "ray_node_address": node_address,
        # A 1-minute load average above the CPU count means other jobs competed for the CPUs.
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": round(load_average_at_start, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
