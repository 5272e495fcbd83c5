"""Settings of one simulation run and the fault kinds it can inject.

Times are simulated milliseconds. The defaults size one run for the 200-seed test
in `make test`: a few hundred simulated milliseconds per fault, elections of
100 to 200 ms, and enough operations per seed to cross several faults.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rayconf.errors import InvalidRequest


class FaultKind(str, enum.Enum):
    CRASH = "crash"  # a node crashes, loses unsynced writes, and restarts later
    PARTITION = "partition"  # symmetric split into two groups
    ASYMMETRIC = "asymmetric"  # one direction between two groups is cut
    BRIDGE = "bridge"  # two groups cut apart except one node that reaches both
    ISOLATE_LEADER = "isolate_leader"  # the leader is cut from every other node
    LOSSY = "lossy"  # drops, duplicates, delays and reordering on every link or one node's links
    MEMBERSHIP = "membership"  # add a learner, promote it, remove a voter, joint changes
    TRANSFER = "transfer"  # leader transfer to another voter
    COMPACT = "compact"  # MVCC snapshot and Raft log compaction on one node


ALL_FAULTS: tuple[FaultKind, ...] = tuple(FaultKind)

# Values drawn per run for the Raft limits of the same names. One byte means one
# entry per append message or per Ready, and 2**62 bytes means no limit in practice.
FLOW_CONTROL_CHOICES: dict[str, tuple[int, ...]] = {
    "max_size_per_msg_bytes": (1, 256, 1024 * 1024),
    "max_inflight_msgs": (1, 4, 256),
    "max_committed_size_per_ready_bytes": (1, 512, 2**62),
}


def parse_faults(text: str) -> tuple[FaultKind, ...]:
    """Parse `none`, `all` or a comma-separated list of fault kinds."""
    text = text.strip()
    if text == "none":
        return ()
    if text == "all":
        return ALL_FAULTS
    kinds = []
    for name in text.split(","):
        name = name.strip()
        try:
            kinds.append(FaultKind(name))
        except ValueError:
            choices = ", ".join(kind.value for kind in FaultKind)
            raise InvalidRequest(
                f"unknown fault kind {name!r}; use none, all or a comma list of: {choices}"
            ) from None
    return tuple(dict.fromkeys(kinds))


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int = 0
    node_count: int = 5
    faults: tuple[FaultKind, ...] = ALL_FAULTS
    # Client operations in the whole run, spread over the clients.
    operation_count: int = 200
    client_count: int = 6
    # Key groups of two keys each (see `workload.py`).
    key_group_count: int = 4
    tick_interval_ms: int = 10
    # Each node ticks every tick_interval_ms plus or minus up to this much, drawn
    # per start: 1 ms of 10 is a clock drift of up to 10%.
    tick_drift_ms: int = 1
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    client_timeout_ms: int = 400
    client_attempts_max: int = 3
    client_think_time_ms_max: int = 20
    client_retry_backoff_ms_max: int = 50
    # Delay between two faults, drawn from [fault_interval_ms_min, fault_interval_ms_max].
    fault_interval_ms_min: int = 50
    fault_interval_ms_max: int = 300
    # How long a crash, partition or lossy period lasts, drawn from this range.
    fault_duration_ms_min: int = 100
    fault_duration_ms_max: int = 800
    # Upper bound on simulated time for the workload phase. Operations still
    # running after it are recorded as unknown.
    workload_time_ms_max: int = 60_000
    # After the workload, faults stop and the cluster has this long to converge.
    settle_time_ms_max: int = 20_000
    hash_interval_entries: int = 1
    # How leaders confirm linearizable reads: "safe" (ReadIndex with a heartbeat
    # round) or "lease_based" (the Raft core's leader lease).
    read_only_option: str = "safe"
    # Draw the Raft flow-control limits per run (see `FLOW_CONTROL_CHOICES`)
    # instead of using the core's defaults.
    vary_flow_control: bool = True
    # Wall-clock bound on the linearizability search per run. A search that
    # reaches it ends with the outcome "unknown", which is not a violation.
    check_timeout_s: float = 20.0
    # Test-only planted bug, one of `node.INJECTED_BUGS`.
    injected_bug: str | None = None

    def validate(self) -> None:
        if self.node_count not in (3, 5, 7):
            raise InvalidRequest(f"node_count is {self.node_count}; simulate 3, 5 or 7 nodes")
        if self.operation_count < 0 or self.client_count < 1:
            raise InvalidRequest(
                f"operation_count ({self.operation_count}) must be at least 0 and "
                f"client_count ({self.client_count}) at least 1"
            )
        if self.key_group_count < 1:
            raise InvalidRequest(f"key_group_count is {self.key_group_count}; use at least 1")
        if not 0 <= self.tick_drift_ms < self.tick_interval_ms:
            raise InvalidRequest(
                f"tick_drift_ms is {self.tick_drift_ms}; it must be in [0, tick_interval_ms="
                f"{self.tick_interval_ms})"
            )
        if self.read_only_option not in ("safe", "lease_based"):
            raise InvalidRequest(
                f"read_only_option is {self.read_only_option!r}; use 'safe' or 'lease_based'"
            )
        if self.hash_interval_entries < 1:
            raise InvalidRequest(f"hash_interval_entries is {self.hash_interval_entries}; use at least 1")
