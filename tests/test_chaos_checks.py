"""The checks and figures of a chaos run, on hand-made logs, samples and fault records."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayconf.__main__ import main
from rayconf.sims import chaos_checks as checks
from rayconf.sims import history as h
from rayconf.sims.history import HistoryRecorder, load_history
from rayconf.sims.chaos_nemesis import FaultRecord
from rayconf.sims.chaos_run import (
    ChaosConfig,
    ChaosReport,
    availability_by_fault,
    availability_during_quorum_loss,
    p99_latency_ms,
    save_failure,
)
from rayconf.sims.chaos_workload import AcknowledgedWrite, OpSample
from rayconf.store.mvcc import MVCC
from rayconf.store.records import Command, EventType, Put, Txn


def replica_with(*writes: tuple[bytes, bytes]) -> MVCC:
    state = MVCC()
    for index, (key, value) in enumerate(writes, start=1):
        state.apply(index, [Command(Txn(success=(Put(key, value),)), request_id=f"r{index}")])
    return state


def test_durability_flags_lost_write_per_replica() -> None:
    complete = replica_with((b"/k", b"1"), (b"/k", b"2"))
    lagging = replica_with((b"/k", b"1"))
    acknowledged = [AcknowledgedWrite(2, ((EventType.PUT, b"/k", b"1"),), "put 1"),
                    AcknowledgedWrite(3, ((EventType.PUT, b"/k", b"2"),), "put 2")]
    violations = checks.check_durability({"dc-a-1": complete, "dc-b-1": lagging}, acknowledged)
    assert list(violations) == ["durability"]
    assert violations["durability"] == ["dc-b-1 lacks acknowledged put 2 at revision 3"]


def test_durability_flags_wrong_revision() -> None:
    state = replica_with((b"/k", b"1"))
    acknowledged = [AcknowledgedWrite(5, ((EventType.PUT, b"/k", b"1"),), "put 1")]
    assert "durability" in checks.check_durability({"dc-a-1": state}, acknowledged)


def test_durability_passes_complete_log() -> None:
    state = replica_with((b"/k", b"1"))
    acknowledged = [AcknowledgedWrite(2, ((EventType.PUT, b"/k", b"1"),), "put 1")]
    assert checks.check_durability({"dc-a-1": state}, acknowledged) == {}


def test_violation_messages_are_bounded() -> None:
    violations: checks.Violations = {}
    for number in range(20):
        checks.add_violation(violations, "durability", f"lost {number}")
    assert len(violations["durability"]) == checks.MESSAGES_PER_KIND_MAX


def test_availability_counts_only_data_centers_without_quorum() -> None:
    report = ChaosReport(ChaosConfig())
    report.faults = [FaultRecord("partition/isolate", "dc-c cut off", 10.0, 20.0, frozenset({"dc-c"}))]
    report.samples = [
        OpSample("dc-c", "serializable", 12.0, 0.01, True),
        OpSample("dc-c", "linearizable", 13.0, 2.0, False),
        OpSample("dc-a", "linearizable", 13.0, 0.02, True),
        OpSample("dc-c", "serializable", 25.0, 0.01, True),
    ]
    assert availability_during_quorum_loss(report) == {"linearizable": (0, 1), "serializable": (1, 1)}
    assert availability_by_fault(report) == {"partition/isolate": {"linearizable": (0, 1), "serializable": (1, 1)}}


def test_p99_latency_splits_by_fault_window() -> None:
    report = ChaosReport(ChaosConfig())
    report.faults = [FaultRecord("kill/replica", "leader killed", 10.0, 20.0)]
    report.samples = [OpSample("dc-a", "write", 11.0, 0.9, True), OpSample("dc-a", "write", 30.0, 0.1, True),
                      OpSample("dc-a", "write", 12.0, 5.0, False)]
    during_ms, outside_ms = p99_latency_ms(report)
    assert round(during_ms) == 900
    assert round(outside_ms) == 100


def test_failing_run_saves_history_and_report(tmp_path: Path) -> None:
    recorder = HistoryRecorder()
    put = recorder.invoke(0, h.Put(b"/chaos/g0/k0", b"0:1"))
    recorder.complete(put, h.WriteResult())
    read = recorder.invoke(1, h.Get(b"/chaos/g0/k0"))
    recorder.complete(read, h.ReadResult(None))
    report = ChaosReport(ChaosConfig(duration_s=30.0, seed=5))
    report.history = recorder.history()
    report.faults = [FaultRecord("dc-loss", "Ray node of dc-b removed with its actors", 1.0, 4.0, frozenset({"dc-b"}))]
    violations, _ = checks.check_linearizability(report.history, timeout_s=10.0)
    report.violations.update(violations)

    history_path, report_path = save_failure(report, tmp_path)

    assert not report.ok
    assert load_history(history_path) == report.history
    text = report_path.read_text()
    assert "VIOLATION linearizability: keys [b'/chaos/g0/k0'] are not linearizable" in text
    assert "dc-loss" in text
    assert "seed 5" in text


def test_ray_sim_command_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--ray", "--faults", "partition,meteor"]) == 2
    assert "fault kind 'meteor' is unknown for a Ray run" in capsys.readouterr().err
    assert main(["sim", "--ray", "--duration", "0"]) == 2
    assert "duration 0.0 s is not positive" in capsys.readouterr().err
    assert main(["sim", "--ray", "--clients-per-dc", "0"]) == 2
    assert "clients per data center is 0" in capsys.readouterr().err
