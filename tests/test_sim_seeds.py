"""Seed sweeps: every seed must keep Raft's safety properties, durability and linearizability.

The 200-seed sweep with 5 nodes and every fault kind is part of `make test`; the
wider sweeps are marked slow. A failure lists the command that reproduces each
failing seed and the saved history and report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rayconf.sims.config import ALL_FAULTS, SimConfig
from rayconf.sims.runner import RunSummary, run_seeds

logging.getLogger("rayconf").setLevel(logging.CRITICAL)


def describe_failures(summary: RunSummary) -> str:
    lines = [f"{len(summary.failed_seeds)} of {summary.seeds} seeds failed:"]
    for failed in summary.failed_seeds:
        lines.append(f"seed {failed.seed}: {failed.violation_kinds}; {failed.command}; report {failed.report_path}")
    return "\n".join(lines)


def test_200_seeds_5_nodes_every_fault(tmp_path: Path) -> None:
    summary = run_seeds(SimConfig(node_count=5, faults=ALL_FAULTS), range(200), tmp_path)

    assert summary.failed_seeds == [], describe_failures(summary)
    assert summary.seeds == 200
    for kind in ALL_FAULTS:
        assert summary.faults[kind.value] > 0, f"no {kind.value} fault was injected in 200 seeds"
    assert summary.operations_ok > summary.operations // 2
    assert summary.checks_unknown == 0


@pytest.mark.slow
@pytest.mark.parametrize("node_count, seed_count", [(3, 1_000), (5, 1_000), (7, 500)])
def test_wide_sweep(tmp_path: Path, node_count: int, seed_count: int) -> None:
    seeds = range(100_000, 100_000 + seed_count)
    summary = run_seeds(SimConfig(node_count=node_count, faults=ALL_FAULTS), seeds, tmp_path)

    assert summary.failed_seeds == [], describe_failures(summary)
