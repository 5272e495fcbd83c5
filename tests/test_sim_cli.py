"""`rayconf sim`: options, summary table, exit status and saved evidence of failing seeds."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from rayconf.__main__ import main
from rayconf.sims.config import FaultKind, SimConfig, parse_faults
from rayconf.sims.history import load_history
from rayconf.sims.node import BUG_STALE_READ
from rayconf.errors import InvalidRequest
from rayconf.sims.cli import PROGRESS_BAR_WIDTH, ProgressBar, render_summary
from rayconf.sims.runner import RunSummary, run_seeds


def test_sim_command_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["sim", "--seeds", "3", "--seed-start", "40", "--nodes", "3", "--operations", "30",
                   "--out", str(tmp_path)])
    logging.getLogger("rayconf").setLevel(logging.CRITICAL)

    captured = capsys.readouterr()
    assert status == 0
    assert "seeds              3 (from 40), 3 nodes, faults all, reads safe" in captured.out
    assert "violations         none" in captured.out
    assert "3/3 seeds" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_sim_command_rejects_unknown_fault(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["sim", "--seeds", "1", "--faults", "crash,meteor"])
    logging.getLogger("rayconf").setLevel(logging.CRITICAL)

    assert status == 2
    assert "unknown fault kind 'meteor'" in capsys.readouterr().err


def test_parse_faults() -> None:
    assert parse_faults("none") == ()
    assert parse_faults("all") == tuple(FaultKind)
    assert parse_faults("crash, lossy,crash") == (FaultKind.CRASH, FaultKind.LOSSY)
    with pytest.raises(InvalidRequest):
        parse_faults("")


def test_failing_seed_saved_with_reproduce_command(tmp_path: Path) -> None:
    logging.getLogger("rayconf").setLevel(logging.CRITICAL)
    config = SimConfig(injected_bug=BUG_STALE_READ)

    summary = run_seeds(config, range(10), tmp_path)

    assert summary.failed_seeds, "no seed caught the planted stale read"
    failed = summary.failed_seeds[0]
    assert failed.history_path is not None and failed.report_path is not None
    assert load_history(failed.history_path)
    assert "linearizability" in failed.report_path.read_text()
    assert failed.command.startswith(f"rayconf sim --seeds 1 --seed-start {failed.seed} --nodes 5 --faults all")
    table = render_summary(summary, config, 0)
    assert f"FAILED seed {failed.seed}: linearizability 1" in table
    assert f"reproduce: {failed.command}" in table
    assert str(failed.history_path) in table


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_one_line_on_terminal() -> None:
    stream = TerminalStream()
    bar = ProgressBar(total=2, stream=stream)
    summary = RunSummary(seeds=2, wall_time_s=1.5)

    bar.update(summary, seed=1)

    text = stream.getvalue()
    assert text.startswith("\r[" + "#" * PROGRESS_BAR_WIDTH + "]")
    assert "2/2 seeds, 0 failing, seed 1, 1.5 s" in text
    assert text.endswith("\n")
