"""The `rayconf sim` command: run seeds of the deterministic simulator and summarize them."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from rayconf.errors import InvalidRequest
from rayconf.sims.chaos_topology import TOPOLOGY_NAMES
from rayconf.sims.config import FaultKind, SimConfig, parse_faults
from rayconf.sims.runner import RunSummary, faults_argument, run_seeds

logger = logging.getLogger(__name__)

PROGRESS_BAR_WIDTH = 30
# Minimum time between two redraws of the progress bar on a terminal.
PROGRESS_REDRAW_S = 0.2


def add_sim_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = SimConfig()
    kinds = ", ".join(kind.value for kind in FaultKind)
    parser = subparsers.add_parser(
        "sim",
        help="run the deterministic cluster simulator over many seeds",
        description=(
            "Run the deterministic simulator: Raft nodes, MVCC state machines, a faulty "
            "network, crashing disks and clients in one process. Each seed reproduces one "
            "run. Exits with status 1 when any seed breaks a safety property, durability "
            "or linearizability."
        ),
    )
    parser.add_argument("--seeds", type=int, default=100, help="number of seeds to run (default: 100)")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed; seeds run from it upwards (default: 0)")
    parser.add_argument(
        "--nodes", type=int, choices=(3, 5, 7), default=defaults.node_count,
        help=f"founding voters per run (default: {defaults.node_count})",
    )
    parser.add_argument(
        "--faults", default="all",
        help=f"fault kinds to inject: none, all, or a comma list of: {kinds} (default: all)",
    )
    parser.add_argument(
        "--operations", type=int, default=defaults.operation_count,
        help=f"client operations per seed (default: {defaults.operation_count})",
    )
    parser.add_argument(
        "--clients", type=int, default=defaults.client_count,
        help=f"concurrent simulated clients per seed (default: {defaults.client_count})",
    )
    parser.add_argument(
        "--reads", choices=("safe", "lease_based"), default=defaults.read_only_option,
        help=(
            "how leaders confirm linearizable reads: safe (a heartbeat round per batch) or "
            f"lease_based (the leader lease) (default: {defaults.read_only_option})"
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=Path("sim-failures"),
        help="directory for the history (JSON) and report of each failing seed (default: ./sim-failures)",
    )
    ray_options = parser.add_argument_group(
        "Ray runs", "with --ray, fault injection on a real multi-node Ray cluster on this machine instead of the "
                    "simulator; --faults then takes partition, kill, pause, slow-fsync and dc-loss, and "
                    "--seed-start seeds the choice of faults")
    ray_options.add_argument("--ray", action="store_true",
                             help="run the Ray nemesis against real replica, store and hub actors")
    ray_options.add_argument("--duration", type=float, default=120.0,
                             help="length of the Ray run in seconds, before the checks (default: 120)")
    ray_options.add_argument("--topology", choices=TOPOLOGY_NAMES, default="triangle",
                             help="data centers of the Ray run: triangle (3 data centers, 1 voter each), "
                                  "witness (2 data centers with 2 voters and a witness with 1), ring (5 data "
                                  "centers, 1 voter each) (default: triangle)")
    ray_options.add_argument("--clients-per-dc", type=int, default=1,
                             help="workload clients in each data center of the Ray run (default: 1)")
    parser.add_argument(
        "--log-level", default="critical", choices=("debug", "info", "warning", "error", "critical"),
        help="level of the simulator's and Raft core's log on stderr (default: critical)",
    )


class ProgressBar:
    """A one-line text bar on a terminal, or a line per tenth of the seeds otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.interactive = stream.isatty()
        self.last_draw_s = 0.0
        self.last_tenth = 0

    def update(self, summary: RunSummary, seed: int) -> None:
        done = summary.seeds
        failing = len(summary.failed_seeds)
        text = (
            f"{done}/{self.total} seeds, {failing} failing, seed {seed}, {summary.wall_time_s:.1f} s"
        )
        if self.interactive:
            now_s = time.monotonic()
            if done < self.total and now_s - self.last_draw_s < PROGRESS_REDRAW_S:
                return
            self.last_draw_s = now_s
            filled = PROGRESS_BAR_WIDTH * done // max(self.total, 1)
            bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
            end = "\n" if done == self.total else ""
            self.stream.write(f"\r[{bar}] {text}{end}")
            self.stream.flush()
            return
        tenth = 10 * done // max(self.total, 1)
        if tenth > self.last_tenth or done == self.total:
            self.last_tenth = tenth
            self.stream.write(f"{text}\n")
            self.stream.flush()


def render_summary(summary: RunSummary, config: SimConfig, seed_start: int) -> str:
    wall_s = max(summary.wall_time_s, 1e-9)
    faults = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.faults.items())) or "none"
    violations = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.violations.items())) or "none"
    rows = [
        (
            "seeds",
            f"{summary.seeds} (from {seed_start}), {config.node_count} nodes, faults "
            f"{faults_argument(config)}, reads {config.read_only_option}",
        ),
        (
            "operations",
            f"{summary.operations} (ok {summary.operations_ok}, failed {summary.operations_failed}, "
            f"unknown {summary.operations_unknown})",
        ),
        ("elections", str(summary.elections)),
        ("faults injected", faults),
        ("violations", violations),
        ("checks unfinished", f"{summary.checks_unknown} seeds hit the linearizability search bound"),
        ("simulated time", f"{summary.simulated_time_ms / 1000:.1f} s"),
        (
            "wall time",
            f"{summary.wall_time_s:.1f} s ({summary.seeds / wall_s:.1f} seeds/s, "
            f"{summary.operations / wall_s:.0f} operations/s)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for failed in summary.failed_seeds:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(failed.violation_kinds.items()))
        lines.append(f"FAILED seed {failed.seed}: {kinds}")
        lines.append(f"  reproduce: {failed.command}")
        if failed.history_path is not None:
            lines.append(f"  history:   {failed.history_path}")
            lines.append(f"  report:    {failed.report_path}")
    return "\n".join(lines)


def run_sim_command(arguments: argparse.Namespace) -> int:
    """Run `rayconf sim`; return the exit status."""
    logging.basicConfig(level=arguments.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rayconf").setLevel(arguments.log_level.upper())
    if arguments.ray:
        return run_ray_command(arguments)
    try:
        faults = parse_faults(arguments.faults)
        if arguments.seeds < 1:
            raise InvalidRequest(f"--seeds is {arguments.seeds}; run at least 1 seed")
        config = SimConfig(
            seed=arguments.seed_start,
            node_count=arguments.nodes,
            faults=faults,
            operation_count=arguments.operations,
            client_count=arguments.clients,
            read_only_option=arguments.reads,
        )
        config.validate()
    except InvalidRequest as error:
        print(f"rayconf sim: {error}", file=sys.stderr)
        return 2
    seeds = range(arguments.seed_start, arguments.seed_start + arguments.seeds)
    bar = ProgressBar(arguments.seeds, sys.stderr)
    summary = run_seeds(config, seeds, arguments.out, progress=bar.update)
    print(render_summary(summary, config, arguments.seed_start))
    return 1 if summary.failed_seeds else 0


def run_ray_command(arguments: argparse.Namespace) -> int:
    """Run `rayconf sim --ray`: one fault-injection run on a local multi-node Ray cluster."""
    from rayconf.sims.chaos_nemesis import parse_chaos_faults
    from rayconf.sims.chaos_run import ChaosConfig, render_report, run_chaos, save_failure

    try:
        config = ChaosConfig(duration_s=arguments.duration, faults=parse_chaos_faults(arguments.faults),
                             topology=arguments.topology, seed=arguments.seed_start,
                             clients_per_data_center=arguments.clients_per_dc)
        config.validate()
    except InvalidRequest as error:
        print(f"rayconf sim: {error}", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_chaos(config, progress)
    print(render_report(report))
    if report.ok:
        return 0
    history_path, report_path = save_failure(report, arguments.out)
    print(f"history: {history_path}")
    print(f"report:  {report_path}")
    return 1
