"""Run many seeds, add up what they did, and save the evidence of every failing seed.

For a failing seed the runner writes two files into the output directory:
`seed-<S>-history.json` (the client history, readable by
`rayconf.sims.history.load_history`) and `seed-<S>-report.txt` (the violations,
the settings, the fault log and the counters). `reproduce_command` gives the one
command line that reruns that seed alone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from rayconf.sims.config import ALL_FAULTS, SimConfig
from rayconf.sims.history import save_history
from rayconf.sims.result import SimResult
from rayconf.sims.simulator import Simulation

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FailedSeed:
    seed: int
    violation_kinds: dict[str, int]
    command: str
    history_path: Path | None
    report_path: Path | None


@dataclass(slots=True)
class RunSummary:
    """Totals over the seeds run so far."""

    seeds: int = 0
    operations: int = 0
    operations_ok: int = 0
    operations_failed: int = 0
    operations_unknown: int = 0
    # Seeds whose linearizability search stopped at its bound without a verdict.
    checks_unknown: int = 0
    elections: int = 0
    simulated_time_ms: int = 0
    wall_time_s: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    failed_seeds: list[FailedSeed] = field(default_factory=list)

    def add(self, result: SimResult) -> None:
        statistics = result.statistics
        self.seeds += 1
        self.operations += len(result.operations)
        self.operations_ok += statistics["operations_ok"]
        self.operations_failed += statistics["operations_failed"]
        self.operations_unknown += statistics["operations_unknown"]
        self.elections += statistics["elections"]
        self.simulated_time_ms += result.simulated_time_ms
        self.faults.update({kind: count for kind, count in result.faults.items() if not kind.endswith("_skipped")})
        self.violations.update(result.violation_kinds())
        if result.linearizability is not None and result.linearizability.outcome.value == "unknown":
            self.checks_unknown += 1


def faults_argument(config: SimConfig) -> str:
    if not config.faults:
        return "none"
    if set(config.faults) == set(ALL_FAULTS):
        return "all"
    return ",".join(kind.value for kind in config.faults)


def reproduce_command(config: SimConfig) -> str:
    """Return the `rayconf sim` command that reruns `config`'s seed alone.

    It carries the settings that the command line exposes. A run with other
    non-default settings shows them all in its report.
    """
    command = (
        f"rayconf sim --seeds 1 --seed-start {config.seed} --nodes {config.node_count} "
        f"--faults {faults_argument(config)} --operations {config.operation_count} "
        f"--clients {config.client_count}"
    )
    if config.read_only_option != SimConfig().read_only_option:
        command += f" --reads {config.read_only_option}"
    return command


def render_settings(config: SimConfig) -> str:
    values = {field.name: getattr(config, field.name) for field in fields(config)}
    values["faults"] = faults_argument(config)
    return ", ".join(f"{name}={value}" for name, value in values.items())


def render_report(result: SimResult) -> str:
    config = result.config
    lines = [
        f"rayconf simulation, seed {config.seed}: {len(result.violations)} violation(s)",
        f"reproduce: {reproduce_command(config)}",
        f"settings: {render_settings(config)}",
        f"simulated time {result.simulated_time_ms} ms, wall time {result.wall_time_s:.2f} s",
        "",
        "violations:",
    ]
    lines += [f"- {violation.describe()}" for violation in result.violations]
    lines += ["", "faults:"] + [f"  {line}" for line in result.fault_log]
    lines += ["", "counters:"] + [f"  {name}: {value}" for name, value in sorted(result.statistics.items())]
    lines += ["", "final state hashes:"]
    lines += [f"  {node_id}: {state_hash:#018x}" for node_id, state_hash in sorted(result.state_hashes.items())]
    lines += ["", "client attempts (which node got each attempt, and its outcome):"]
    lines += [f"  {line}" for line in result.attempt_log]
    return "\n".join(lines) + "\n"


def save_failure(result: SimResult, out_directory: Path) -> tuple[Path, Path]:
    """Write the history and the report of a failing seed; return their paths."""
    out_directory.mkdir(parents=True, exist_ok=True)
    seed = result.config.seed
    history_path = out_directory / f"seed-{seed}-history.json"
    report_path = out_directory / f"seed-{seed}-report.txt"
    save_history(history_path, result.operations)
    report_path.write_text(render_report(result), encoding="utf-8")
    return history_path, report_path


ProgressCallback = Callable[[RunSummary, int], None]


def run_seeds(
    base: SimConfig,
    seeds: Iterable[int],
    out_directory: Path | None,
    progress: ProgressCallback | None = None,
) -> RunSummary:
    """Run `base` once per seed; save failing seeds under `out_directory` when it is set.

    `progress` is called after each seed with the summary so far and the seed.
    """
    summary = RunSummary()
    started = time.perf_counter()
    for seed in seeds:
        config = replace(base, seed=seed)
        result = Simulation(config).run()
        summary.add(result)
        if result.violations:
            logger.warning("seed %d failed: %s", seed, result.violations[0].describe())
            paths: tuple[Path | None, Path | None] = (None, None)
            if out_directory is not None:
                paths = save_failure(result, out_directory)
            summary.failed_seeds.append(
                FailedSeed(seed, result.violation_kinds(), reproduce_command(config), *paths)
            )
        summary.wall_time_s = time.perf_counter() - started
        if progress is not None:
            progress(summary, seed)
    return summary
