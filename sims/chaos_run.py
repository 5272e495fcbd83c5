"""One fault-injection run on a real multi-node Ray cluster, from start to report.

The run:
1. starts a `RayChaosCluster` for the topology (or uses one the caller started);
2. starts one watch per data center on the workload's keys and the workload
   clients, spread over the data centers;
3. injects faults one at a time, cycling through the requested kinds: inject,
   hold 2 to 5 s, heal, wait 1 to 3 s. Each kind is injected at least once,
   even when that takes longer than the requested duration;
4. heals everything, stops the clients, waits for the replicas to converge,
   then runs every check in `rayconf.sims.chaos_checks`.

Wall-clock time drives the faults, so a seed fixes the choice of faults and
targets, not the interleaving: a Ray run is not reproducible the way a
simulator seed is. A failing run keeps its history and report instead.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rayconf.actors.cluster import ClusterSpec
from rayconf.clients.client import Client
from rayconf.clients.watch import close_streams, watch
from rayconf.errors import InvalidRequest, Unavailable
from rayconf.sims import chaos_checks as checks
from rayconf.sims import chaos_topology as topo
from rayconf.sims.chaos_cluster import RayChaosCluster, chaos_spec
from rayconf.sims.chaos_nemesis import ChaosFault, FaultRecord, RayNemesis
from rayconf.sims.chaos_workload import KEY_ROOT, OpSample, WorkloadClient, WorkloadResults
from rayconf.sims.history import HistoryRecorder, Operation, OpStatus, save_history

logger = logging.getLogger(__name__)

FAULT_HOLD_S = (2.0, 5.0)
FAULT_GAP_S = (1.0, 3.0)
# Time the workload runs before the first fault and after the last heal.
WARM_UP_S = 2.0
LINEARIZABILITY_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    duration_s: float = 120.0
    faults: tuple[ChaosFault, ...] = tuple(ChaosFault)
    topology: str = "triangle"
    seed: int = 0
    clients_per_data_center: int = 1
    # A short client timeout turns a fault into failed operations rather than long waits.
    client_timeout_s: float = 2.0
    data_directory: str = ""

    def validate(self) -> None:
        if self.duration_s <= 0:
            raise InvalidRequest(f"duration {self.duration_s} s is not positive; give a run length in seconds")
        if self.clients_per_data_center < 1:
            raise InvalidRequest(f"clients per data center is {self.clients_per_data_center}; give at least 1")
        topo.build_topology(self.topology)


@dataclass(slots=True)
class ChaosReport:
    """Everything a run found; `ok` when no check reported a violation."""

    config: ChaosConfig
    faults: list[FaultRecord] = field(default_factory=list)
    history: list[Operation] = field(default_factory=list)
    samples: list[OpSample] = field(default_factory=list)
    acknowledged_writes: int = 0
    violations: checks.Violations = field(default_factory=dict)
    linearizability: str = "not checked"
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations


Progress = Callable[[str], None]


def run_chaos(config: ChaosConfig, progress: Progress = lambda line: None,
              chaos: RayChaosCluster | None = None) -> ChaosReport:
    """Run the workload under faults for `config.duration_s`, then check; see the module docstring.

    With `chaos`, the run uses that started cluster and leaves it running.
    Otherwise it starts one in `config.data_directory` (a temporary folder when empty) and stops it.
    """
    config.validate()
    started = time.monotonic()
    topology = topo.build_topology(config.topology)
    owned = chaos is None
    scratch = None
    if chaos is None:
        directory = config.data_directory
        if not directory:
            scratch = tempfile.TemporaryDirectory(prefix="rayconf-chaos-")
            directory = scratch.name
        chaos = RayChaosCluster(chaos_spec(topology, directory))
        progress(f"starting a Ray cluster: head plus {len(topology.data_centers())} data-center nodes")
        chaos.start()
    report = ChaosReport(config)
    try:
        _run(config, chaos, topology, report, progress)
    finally:
        if owned:
            chaos.stop()
        if scratch is not None:
            scratch.cleanup()
    report.wall_time_s = time.monotonic() - started
    return report


def _run(config: ChaosConfig, chaos: RayChaosCluster, topology: topo.Topology, report: ChaosReport,
         progress: Progress) -> None:
    spec = chaos.spec
    nemesis = RayNemesis(chaos, topology, config.seed)
    recorder = HistoryRecorder()
    results = WorkloadResults(recorder)
    stop_clients = threading.Event()
    stop_watches = threading.Event()
    start_revision = Client(spec, timeout_s=30.0).put(f"{KEY_ROOT}/start", b"0").revision + 1
    readers = {dc: checks.WatchReader(dc, watch(spec, KEY_ROOT, prev_kv=True, start_revision=start_revision,
                                                data_center=dc), stop_watches)
               for dc in topology.data_centers()}
    clients = [WorkloadClient(spec, number, dc, results, stop_clients, config.seed * 1000 + number,
                              config.client_timeout_s)
               for number, dc in enumerate(dc for dc in topology.data_centers()
                                           for _ in range(config.clients_per_data_center))]
    try:
        for thread in [*readers.values(), *clients]:
            thread.start()
        _inject_faults(config, nemesis, results, progress)
    finally:
        nemesis.heal_all()
        stop_clients.set()
        for client in clients:
            client.join(timeout=config.client_timeout_s * 3 + 10)
    report.faults = nemesis.log
    report.history = recorder.history()
    report.samples = list(results.samples)
    report.acknowledged_writes = len(results.acknowledged)
    for message in results.unexpected:
        checks.add_violation(report.violations, "unexpected-error", message)
    report.violations.update(results.violations)
    try:
        _check(spec, report, results, readers, progress)
    finally:
        stop_watches.set()
        for reader in readers.values():
            reader.join(timeout=5)
            reader.watched.close()
        close_streams()


def _inject_faults(config: ChaosConfig, nemesis: RayNemesis, results: WorkloadResults, progress: Progress) -> None:
    rng = nemesis.rng
    began = time.monotonic()
    deadline = began + config.duration_s - WARM_UP_S
    time.sleep(WARM_UP_S)
    number = 0
    # A run too short for every kind goes over its duration until each kind was injected once.
    while config.faults and (time.monotonic() + FAULT_HOLD_S[0] < deadline or number < len(config.faults)):
        kind = config.faults[number % len(config.faults)]
        number += 1
        record = nemesis.inject(kind)
        progress(f"[{time.monotonic() - began:6.1f} s] {record.kind}: {record.description}")
        # Every fault lasts at least the shortest hold, even one injected after the deadline.
        time.sleep(max(FAULT_HOLD_S[0], min(rng.uniform(*FAULT_HOLD_S), deadline - time.monotonic())))
        nemesis.heal(record)
        try:
            nemesis.chaos.wait_until_running()
        except Unavailable as error:
            checks.add_violation(results.violations, "recovery", f"after {record.kind}: {error}")
            return
        with results.lock:
            served = sum(1 for sample in results.samples if sample.served)
            total = len(results.samples)
        progress(f"[{time.monotonic() - began:6.1f} s] healed; {served}/{total} operations served so far")
        time.sleep(min(rng.uniform(*FAULT_GAP_S), max(0.0, deadline - time.monotonic())))
    time.sleep(max(0.0, began + config.duration_s - time.monotonic()))


def _check(spec: ClusterSpec, report: ChaosReport, results: WorkloadResults,
           readers: dict[str, checks.WatchReader], progress: Progress) -> None:
    progress("faults healed; waiting for the replicas to converge")
    try:
        _, members = checks.wait_for_convergence(spec)
    except Unavailable as error:
        checks.add_violation(report.violations, "convergence", str(error))
        return
    revision = min(info["revision"] for info in members.values())
    progress(f"converged at revision {revision}; checking state hashes, durability, watches, linearizability")
    report.violations.update(checks.check_state_hashes(spec, revision))
    replayed = checks.replay_all(spec)
    report.violations.update(checks.check_durability(replayed, results.acknowledged))
    report.violations.update(checks.check_watches(readers, next(iter(replayed.values()))))
    violations, result = checks.check_linearizability(report.history, LINEARIZABILITY_TIMEOUT_S)
    report.violations.update(violations)
    report.linearizability = f"{result.outcome.value} ({result.operation_count} operations, {result.elapsed_s:.1f} s)"


# --- Figures and the report table. ---


def _fault_windows(report: ChaosReport) -> list[tuple[float, float, frozenset[str]]]:
    return [(record.started_s, record.healed_s or math.inf, record.no_quorum) for record in report.faults]


def availability_during_quorum_loss(report: ChaosReport) -> dict[str, tuple[int, int]]:
    """Return (served, total) per consistency mode, over operations that started while their data center had no quorum."""
    windows = _fault_windows(report)
    counts: dict[str, list[int]] = {}
    for sample in report.samples:
        if any(start <= sample.started_s < end and sample.data_center in cut for start, end, cut in windows):
            served_total = counts.setdefault(sample.mode, [0, 0])
            served_total[0] += int(sample.served)
            served_total[1] += 1
    return {mode: (served, total) for mode, (served, total) in sorted(counts.items())}


def availability_by_fault(report: ChaosReport) -> dict[str, dict[str, tuple[int, int]]]:
    """Return (served, total) per fault kind and consistency mode, counted as in `availability_during_quorum_loss`."""
    counts: dict[str, dict[str, list[int]]] = {}
    for record in report.faults:
        end = record.healed_s or math.inf
        for sample in report.samples:
            if record.started_s <= sample.started_s < end and sample.data_center in record.no_quorum:
                served_total = counts.setdefault(record.kind, {}).setdefault(sample.mode, [0, 0])
                served_total[0] += int(sample.served)
                served_total[1] += 1
    return {kind: {mode: (served, total) for mode, (served, total) in sorted(modes.items())}
            for kind, modes in sorted(counts.items())}


def p99_latency_ms(report: ChaosReport) -> tuple[float, float]:
    """Return the p99 latency in ms of served operations that started during a fault and outside every fault."""
    windows = _fault_windows(report)
    during: list[float] = []
    outside: list[float] = []
    for sample in report.samples:
        if not sample.served:
            continue
        inside = any(start <= sample.started_s < end for start, end, _ in windows)
        (during if inside else outside).append(sample.latency_s * 1000)
    return _percentile(during, 0.99), _percentile(outside, 0.99)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def render_report(report: ChaosReport) -> str:
    config = report.config
    by_status = Counter(operation.status.value for operation in report.history)
    by_type = Counter((type(operation.input).__name__.lower(), operation.status) for operation in report.history)
    serializable = [sample for sample in report.samples if sample.mode == "serializable"]
    operation_rows = [f"{name}: ok {by_type[(name, OpStatus.OK)]}, failed {by_type[(name, OpStatus.FAILED)]}, "
                      f"unknown {by_type[(name, OpStatus.UNKNOWN)]}"
                      for name in ("get", "txn", "put", "delete", "cas")]
    operation_rows.append(f"serializable get: served {sum(s.served for s in serializable)}, "
                          f"unavailable {sum(not s.served for s in serializable)}")

    fault_counts = Counter(record.kind for record in report.faults)
    during_ms, outside_ms = p99_latency_ms(report)
    availability = availability_during_quorum_loss(report)

    rows = [
        ("run", f"{config.duration_s:.0f} s, topology {config.topology}, seed {config.seed}, "
                f"faults {','.join(kind.value for kind in config.faults) or 'none'}"),
        ("operations", f"{len(report.history)} recorded (ok {by_status['ok']}, failed {by_status['failed']}, "
                       f"unknown {by_status['unknown']}), {report.acknowledged_writes} acknowledged writes"),
        *[("", row) for row in operation_rows],
        ("faults injected", ", ".join(f"{kind} {count}" for kind, count in sorted(fault_counts.items())) or "none"),
        ("violations", ", ".join(f"{kind} {len(messages)}" for kind, messages in sorted(report.violations.items()))
         or "none"),
        ("linearizability", report.linearizability),
        ("p99 latency", f"{during_ms:.0f} ms during faults, {outside_ms:.0f} ms outside them"),
        ("without quorum", ", ".join(f"{mode} {served}/{total} served" for mode, (served, total)
                                     in availability.items()) or "no operation ran in a data center without quorum"),
        *[("", f"{kind}: " + ", ".join(f"{mode} {served}/{total}" for mode, (served, total) in modes.items()))
          for kind, modes in availability_by_fault(report).items()],
        ("wall time", f"{report.wall_time_s:.1f} s"),
    ]

    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for kind, messages in sorted(report.violations.items()):
        for message in messages:
            lines.append(f"VIOLATION {kind}: {message}")
    return "\n".join(lines)


def render_fault_log(report: ChaosReport) -> str:
    if not report.faults:
        return "no faults"
    origin = report.faults[0].started_s
    return "\n".join(f"{record.started_s - origin:7.1f} s  {record.healed_s - record.started_s if record.healed_s else math.nan:5.1f} s  "
                     f"{record.kind:<22} {record.description}" for record in report.faults)


def save_failure(report: ChaosReport, out: Path) -> tuple[Path, Path]:
    """Save the history (JSON) and the report with its fault log under `out`; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ray-seed-{report.config.seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    history_path = out / f"{stem}-history.json"
    report_path = out / f"{stem}-report.txt"
    save_history(history_path, report.history)
    report_path.write_text(f"{render_report(report)}\n\nfaults (start, held, kind, what):\n"
                           f"{render_fault_log(report)}\n")
    return history_path, report_path
