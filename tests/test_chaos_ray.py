"""Fault injection on a real multi-node Ray cluster: one Ray node per data center.

The cluster is the triangle topology: dc-a, dc-b and dc-c with one voter,
shard store and watch hub each, on three Ray nodes beside the head node.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from rayconf.__main__ import main
from rayconf.actors import cluster
from rayconf.actors.transport import replica_actor_name
from rayconf.clients.client import Client
from rayconf.errors import NotLeader, Unavailable
from rayconf.sims import chaos_checks as checks
from rayconf.sims import chaos_topology as topo
from rayconf.sims.chaos_cluster import RayChaosCluster, chaos_spec
from rayconf.sims.chaos_nemesis import ChaosFault, RayNemesis
from rayconf.sims.chaos_run import ChaosConfig, availability_during_quorum_loss, render_report, run_chaos
from rayconf.sims.chaos_workload import AcknowledgedWrite
from rayconf.store.records import Command, EventType, Put, Txn

# Writes and linearizable reads made in each data-center loss.
OPERATIONS_PER_LOSS = 5
# Long enough for an election and a retry after the leader's node is removed.
CLIENT_TIMEOUT_S = 20.0
SHORT_RUN_S = 60.0
RECOVERY_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayChaosCluster]:
    started = RayChaosCluster(chaos_spec(topo.triangle(), str(tmp_path_factory.mktemp("rayconf-chaos"))))
    try:
        started.start()
        yield started
    finally:
        started.stop()


def surviving_data_center(lost: str) -> str:
    return next(dc for dc in ("dc-a", "dc-b", "dc-c") if dc != lost)


@pytest.mark.timeout(300)
def test_losing_any_data_center_keeps_service(chaos: RayChaosCluster) -> None:
    """Losing any one of three data centers keeps writes and linearizable reads available and loses no write."""
    nemesis = RayNemesis(chaos, topo.triangle(), seed=0)
    acknowledged: list[AcknowledgedWrite] = []
    try:
        for lost in ("dc-a", "dc-b", "dc-c"):
            writer = Client(chaos.spec, data_center=surviving_data_center(lost), timeout_s=CLIENT_TIMEOUT_S)
            before = writer.put(f"/seed/{lost}/before", b"written before the loss")
            acknowledged.append(AcknowledgedWrite(before.revision, ((EventType.PUT, f"/seed/{lost}/before".encode(),
                                                                     b"written before the loss"),), "before"))
            record = nemesis.lose_data_center(lost)
            for number in range(OPERATIONS_PER_LOSS):
                key, value = f"/seed/{lost}/k{number}", f"during loss of {lost}".encode()
                response = writer.put(key, value)
                acknowledged.append(AcknowledgedWrite(response.revision, ((EventType.PUT, key.encode(), value),), key))
                read = writer.get(key)
                assert read is not None, f"{key} written at {response.revision} is absent while {lost} is lost"
                assert read.value == value
                assert read.mod_revision == response.revision
            assert chaos.leader() != f"{lost}-1", f"the replica of the lost {lost} still counts as leader"
            nemesis.heal(record)
            chaos.wait_until_running()
    finally:
        nemesis.heal_all()

    checks.wait_for_convergence(chaos.spec)
    replayed = checks.replay_all(chaos.spec)
    assert checks.check_durability(replayed, acknowledged) == {}
    revision = min(state.revision for state in replayed.values())
    assert checks.check_state_hashes(chaos.spec, revision) == {}
    assert [record.kind for record in nemesis.log] == ["dc-loss"] * 3


@pytest.mark.timeout(200)
def test_read_during_replica_restart_raises_typed_error(chaos: RayChaosCluster) -> None:
    """A linearizable read whose store loses its replica mid-call raises `Unavailable`, never a raw Ray error."""
    reader = Client(chaos.spec, data_center="dc-a", timeout_s=2.0, session=False)
    reader.put("/restart/read", b"1")
    errors: list[Exception] = []
    served_after_restart = []
    stop = threading.Event()

    def read_until_stopped() -> None:
        while not stop.is_set():
            try:
                reader.get("/restart/read")
            except Exception as error:  # noqa: BLE001 - every error type is the finding
                errors.append(error)
                continue
            served_after_restart.append(time.monotonic())

    thread = threading.Thread(target=read_until_stopped, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            time.sleep(1.0)
            ray.kill(chaos.actor_handle("replica", "dc-a-1"), no_restart=False)
        killed_s = time.monotonic()
        chaos.wait_until_running()
        # The store follows another replica or waits for the restarted one, which can take seconds under load.
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while not any(served_s > killed_s for served_s in served_after_restart) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=10)
    untyped = [f"{type(error).__name__}: {error}" for error in errors if not isinstance(error, Unavailable)]
    assert not untyped, untyped[:3]
    assert any(served_s > killed_s for served_s in served_after_restart), "no read was served after the restarts"


@pytest.mark.timeout(400)
def test_short_run_with_every_fault_kind(chaos: RayChaosCluster) -> None:
    config = ChaosConfig(duration_s=SHORT_RUN_S, faults=tuple(ChaosFault), seed=3)
    report = run_chaos(config, chaos=chaos)
    print("\n" + render_report(report))
    assert report.ok, render_report(report)
    assert report.linearizability.startswith("linearizable"), report.linearizability
    injected = {record.kind.split("/")[0] for record in report.faults}
    assert injected == {kind.value for kind in ChaosFault}
    assert all(record.healed_s > record.started_s for record in report.faults)
    assert report.acknowledged_writes > 100
    # The checks had something to find: writes happened during faults too.
    writes_during_faults = [sample for sample in report.samples
                            if sample.mode == "write" and sample.served
                            and any(record.started_s <= sample.started_s < record.healed_s for record in report.faults)]
    assert writes_during_faults, "no write was acknowledged while a fault was in effect"
    availability = availability_during_quorum_loss(report)
    if "serializable" in availability:
        served, total = availability["serializable"]
        assert served > 0, f"no serializable read was served in a data center without quorum ({total} tried)"


@pytest.mark.timeout(300)
def test_head_loss_keeps_running_actors_serving(chaos: RayChaosCluster) -> None:
    """With the GCS stopped, replicas keep replicating for callers that hold handles; restarts wait for it."""
    spec = chaos.spec
    leader = chaos.wait_for_leader()
    handles = {member: cluster.find_replica(spec, member) for member in spec.members()}
    victim = next(member for member in spec.members() if member != leader)
    victim_pid = chaos.actor_pid("replica", victim)
    gcs_pid = chaos.gcs_pid()
    killed_s = time.monotonic()
    os.kill(gcs_pid, signal.SIGSTOP)
    try:
        os.kill(victim_pid, signal.SIGKILL)
        written = propose_through_handles(handles, leader, Command(
            Txn(success=(Put(b"/head/loss", b"served"),)), request_id="head-loss-1"))
        assert written.revision > 0
        time.sleep(3.0)
    finally:
        os.kill(gcs_pid, signal.SIGCONT)
    # Ray restarts the killed replica only now that the GCS runs again.
    deadline = time.monotonic() + 60
    while True:
        info = cluster.status(spec)["members"][victim]
        if info.get("health") == "ok" and info["revision"] >= written.revision:
            break
        assert time.monotonic() < deadline, f"{victim} did not restart and catch up after the GCS resumed: {info}"
        time.sleep(0.2)
    assert info["uptime_s"] < time.monotonic() - killed_s - 2.5, "the replica restarted while the GCS was stopped"


def propose_through_handles(handles: dict[str, Any], leader: str, command: Command) -> Any:
    """Propose on the leader through a handle held from before, without a name lookup."""
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    member = leader
    while True:
        try:
            return ray.get(handles[member].propose.remote(command), timeout=5.0)
        except ray.exceptions.RayTaskError as error:
            if not isinstance(error.cause, (NotLeader, Unavailable)):
                raise
            hint = getattr(error.cause, "leader_hint", None)
            member = hint if hint in handles else next(m for m in handles if m != member)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            member = next(m for m in handles if m != member)
        assert time.monotonic() < deadline, f"no replica accepted {command.request_id} with the GCS stopped"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("topology", ["witness", "ring"])
def test_other_topologies_under_every_fault(topology: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two data centers plus a witness (five voters), and five data centers in a ring, each on its own cluster."""
    config = ChaosConfig(duration_s=120.0, faults=tuple(ChaosFault), topology=topology, seed=5,
                         data_directory=str(tmp_path_factory.mktemp(f"rayconf-chaos-{topology}")))
    report = run_chaos(config)
    print("\n" + render_report(report))
    assert report.ok, render_report(report)
    assert report.linearizability.startswith("linearizable"), report.linearizability
    injected = {record.kind.split("/")[0] for record in report.faults}
    assert injected == {kind.value for kind in ChaosFault}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_sim_command_prints_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rayconf sim --ray` starts its own cluster, prints progress and the table, and saves nothing when it passes."""
    status = main(["sim", "--ray", "--duration", "30", "--faults", "kill,pause", "--seed-start", "2",
                   "--out", str(tmp_path / "failures")])
    logging.getLogger("rayconf").setLevel(logging.CRITICAL)

    captured = capsys.readouterr()
    assert status == 0, captured.out[-3000:]
    assert "faults kill,pause" in captured.out
    assert "violations       none" in captured.out
    assert "linearizability  linearizable" in captured.out
    assert "kill/" in captured.err
    assert "pause/" in captured.err
    assert "converged at revision" in captured.err
    assert not (tmp_path / "failures").exists()
