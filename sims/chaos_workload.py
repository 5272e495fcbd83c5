"""Clients in several data centers that run a recorded workload against a real cluster.

Each `WorkloadClient` is a thread with its own `Client`, bound to one data
center, so its reads go to that data center's shard store. It runs put, get,
range, delete, compare-and-swap and two-key txns on a small key set, and a
serializable get every fourth operation, until its stop event is set.

What it records:
- every linearizable operation, in the shared `HistoryRecorder`, for the
  linearizability checker. A range over a key group becomes a read-only txn
  of gets on the group's keys, which the checker's model understands.
- every acknowledged write with its revision and changes, for the
  durability check;
- one `OpSample` per operation (serializable reads included): data center,
  consistency mode, start time, latency and whether it was served, for the
  availability and latency figures.

Outcomes. A write that raised `Unavailable` may still be applied later
(the client retried it under one request id), so it is `unknown`. A read
that raised changed nothing, so it is `failed` and the checker drops it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rayconf.actors.cluster import ClusterSpec
from rayconf.clients.client import Client
from rayconf.errors import RayconfError, Unavailable
from rayconf.sims import history as h
from rayconf.store import records as r

logger = logging.getLogger(__name__)

KEY_GROUPS = 3
KEYS_PER_GROUP = 2
KEY_ROOT = "/chaos"
# Pause between two operations of one client, so that a 2-core machine keeps up.
THINK_TIME_S = 0.05
# One operation in this many is a serializable get, which is not part of the history.
SERIALIZABLE_EVERY = 4
# Characters of an unexpected error's message kept in the report.
UNEXPECTED_MESSAGE_CHARS_MAX = 400


def group_prefix(group: int) -> bytes:
    return f"{KEY_ROOT}/g{group}/".encode()


def group_keys(group: int) -> tuple[bytes, ...]:
    return tuple(group_prefix(group) + f"k{number}".encode() for number in range(KEYS_PER_GROUP))


ALL_KEYS = tuple(key for group in range(KEY_GROUPS) for key in group_keys(group))


@dataclass(frozen=True, slots=True)
class OpSample:
    """Timing and outcome of one client operation."""

    data_center: str
    # "write", "linearizable" or "serializable".
    mode: str
    started_s: float
    latency_s: float
    served: bool


@dataclass(frozen=True, slots=True)
class AcknowledgedWrite:
    """A write the cluster acknowledged, with the (event type, key, value) changes it made at `revision`."""

    revision: int
    changes: tuple[tuple[r.EventType, bytes, bytes], ...]
    request: str


@dataclass(slots=True)
class WorkloadResults:
    """Records of every client, appended under `lock`."""

    recorder: h.HistoryRecorder
    acknowledged: list[AcknowledgedWrite] = field(default_factory=list)
    samples: list[OpSample] = field(default_factory=list)
    # Errors that no outcome rule covers, with the operation; each one is a finding.
    unexpected: list[str] = field(default_factory=list)
    # Violations found while the run goes on, by kind (for example a data center that never came back).
    violations: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class WorkloadClient(threading.Thread):
    """One client thread bound to one data center."""

    def __init__(self, spec: ClusterSpec, number: int, data_center: str, results: WorkloadResults,
                 stop: threading.Event, seed: int, timeout_s: float) -> None:
        super().__init__(name=f"chaos-client-{number}", daemon=True)
        self.client = Client(spec, data_center=data_center, timeout_s=timeout_s, session=False,
                             principal=f"chaos-{number}")
        self.number = number
        self.data_center = data_center
        self.results = results
        self.stop = stop
        self.rng = random.Random(seed)
        # The value this client last read or wrote per key, the guess for its next CAS.
        self.seen: dict[bytes, bytes | None] = {}
        self.sequence = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.sequence += 1
            try:
                self.step()
            except Exception as error:  # noqa: BLE001 - a workload thread must report, not die silently
                logger.exception("chaos client %d failed an operation", self.number)
                with self.results.lock:
                    self.results.unexpected.append(
                        f"client {self.number} in {self.data_center} raised {type(error).__name__}: "
                        f"{str(error)[:UNEXPECTED_MESSAGE_CHARS_MAX]}")
            time.sleep(THINK_TIME_S * (0.5 + self.rng.random()))

    def step(self) -> None:
        if self.sequence % SERIALIZABLE_EVERY == 0:
            self.serializable_get()
            return
        choice = self.rng.random()
        if choice < 0.25:
            self.get()
        elif choice < 0.35:
            self.range()
        elif choice < 0.6:
            self.put()
        elif choice < 0.7:
            self.delete()
        elif choice < 0.85:
            self.cas()
        else:
            self.txn()

    def value(self) -> bytes:
        return f"{self.number}:{self.sequence}".encode()

    # --- Reads. ---

    def get(self) -> None:
        key = self.rng.choice(ALL_KEYS)

        def call() -> h.Output:
            kv = self.client.get(key)
            value = kv.value if kv is not None else None
            self.seen[key] = value
            return h.ReadResult(value)
        self.record_read(h.Get(key), call)

    def range(self) -> None:
        group = self.rng.randrange(KEY_GROUPS)
        keys = group_keys(group)

        def call() -> h.Output:
            response = self.client.range(group_prefix(group))
            found = {kv.key: kv.value for kv in response.kvs}
            return h.TxnResult(True, tuple(found.get(key) for key in keys))
        self.record_read(h.Txn((), tuple(h.Get(key) for key in keys)), call)

    def serializable_get(self) -> None:
        key = self.rng.choice(ALL_KEYS)
        started = time.monotonic()
        served = True
        try:
            self.client.get(key, consistency="serializable")
        except Unavailable:
            served = False
        self.sample("serializable", started, served)

    def record_read(self, op_input: h.Input, call: Callable[[], h.Output]) -> None:
        op_id = self.results.recorder.invoke(self.number, op_input)
        started = time.monotonic()
        try:
            output = call()
        except Unavailable:
            self.results.recorder.fail(op_id)
            self.sample("linearizable", started, False)
            return
        self.results.recorder.complete(op_id, output)
        self.sample("linearizable", started, True)

    # --- Writes. ---

    def put(self) -> None:
        key, value = self.rng.choice(ALL_KEYS), self.value()
        self.write(h.Put(key, value), r.Txn(success=(r.Put(key, value),)))

    def delete(self) -> None:
        key = self.rng.choice(ALL_KEYS)
        self.write(h.Delete(key), r.Txn(success=(r.DeleteRange(key, None),)))

    def cas(self) -> None:
        key, value = self.rng.choice(ALL_KEYS), self.value()
        expected = self.seen.get(key)
        guard = _compare(key, expected)
        txn = r.Txn(compares=(guard,), success=(r.Put(key, value),), failure=())
        self.write(h.Cas(key, expected, value), txn)

    def txn(self) -> None:
        """Write both keys of a group if the first contains the value last seen, else read both."""
        keys = group_keys(self.rng.randrange(KEY_GROUPS))
        value = self.value()
        expected = self.seen.get(keys[0])
        op_input = h.Txn((h.Compare(keys[0], "=", expected),), tuple(h.Put(key, value) for key in keys),
                         tuple(h.Get(key) for key in keys))
        txn = r.Txn(compares=(_compare(keys[0], expected),), success=tuple(r.Put(key, value) for key in keys),
                    failure=tuple(r.RangeRequest(key) for key in keys))
        self.write(op_input, txn)

    def write(self, op_input: h.Input, txn: r.Txn) -> None:
        op_id = self.results.recorder.invoke(self.number, op_input)
        started = time.monotonic()
        try:
            response = self.client.txn(txn)
        except Unavailable:
            self.results.recorder.unknown(op_id)
            self.sample("write", started, False)
            return
        except RayconfError as error:
            self.results.recorder.unknown(op_id)
            with self.results.lock:
                self.results.unexpected.append(f"{h.format_input(op_input)}: {type(error).__name__}: {error}")
            self.sample("write", started, False)
            return
        self.sample("write", started, True)
        output = _output(op_input, response)
        if output is None:
            # A retried request whose first reply is lost: its reads are unknown.
            self.results.recorder.unknown(op_id)
        else:
            self.results.recorder.complete(op_id, output)
        self.remember(op_input, response)

    def remember(self, op_input: h.Input, response: r.TxnResponse) -> None:
        """Note what the write did: the values this client now expects and, when acknowledged, its changes."""
        changes: list[tuple[r.EventType, bytes, bytes]] = []
        if isinstance(op_input, h.Put):
            changes.append((r.EventType.PUT, op_input.key, op_input.value))
        elif isinstance(op_input, h.Cas) and response.succeeded:
            changes.append((r.EventType.PUT, op_input.key, op_input.new))
        elif isinstance(op_input, h.Txn) and response.succeeded:
            changes.extend((r.EventType.PUT, item.key, item.value) for item in op_input.success
                           if isinstance(item, h.Put))
        elif isinstance(op_input, h.Delete) and not response.duplicate:
            result = response.responses[0]
            assert isinstance(result, r.DeleteRangeResponse)
            if result.deleted:
                changes.append((r.EventType.DELETE, op_input.key, b""))
        for _, key, value in changes:
            self.seen[key] = value or None
        if isinstance(op_input, h.Txn) and not response.succeeded and response.responses:
            for key, read in zip((item.key for item in op_input.failure), response.responses):
                assert isinstance(read, r.RangeResponse)
                self.seen[key] = read.kvs[0].value if read.kvs else None
        if changes:
            with self.results.lock:
                self.results.acknowledged.append(
                    AcknowledgedWrite(response.revision, tuple(changes), h.format_input(op_input)))

    def sample(self, mode: str, started_s: float, served: bool) -> None:
        latency_s = time.monotonic() - started_s
        with self.results.lock:
            self.results.samples.append(OpSample(self.data_center, mode, started_s, latency_s, served))


def _compare(key: bytes, expected: bytes | None) -> r.Compare:
    if expected is None:
        return r.Compare(key, r.CompareTarget.VERSION, r.CompareOp.EQUAL, 0)
    return r.Compare(key, r.CompareTarget.VALUE, r.CompareOp.EQUAL, expected)


def _output(op_input: h.Input, response: r.TxnResponse) -> h.Output | None:
    """Return the history output of a write's response, or None when the response cannot tell it."""
    if isinstance(op_input, (h.Put, h.Delete)):
        return h.WriteResult()
    if isinstance(op_input, h.Cas):
        return h.CasResult(response.succeeded)
    assert isinstance(op_input, h.Txn)
    if response.succeeded:
        return h.TxnResult(True, ())
    if response.duplicate:
        return None
    reads = []
    for read in response.responses:
        assert isinstance(read, r.RangeResponse)
        reads.append(read.kvs[0].value if read.kvs else None)
    return h.TxnResult(False, tuple(reads))


def run_clients(spec: ClusterSpec, duration_s: float, *, clients_per_data_center: int = 2,
                timeout_s: float = 20.0) -> WorkloadResults:
    """Run workload clients in every data center for `duration_s`, then stop them; return what they recorded.

    The history is in the result's `recorder`. Tests use it to check a
    cluster's history under a given setting; the nemesis runs its own clients.
    """
    results = WorkloadResults(h.HistoryRecorder())
    stop = threading.Event()
    clients = [WorkloadClient(spec, number, data_center.name, results, stop, seed=number, timeout_s=timeout_s)
               for number, data_center in enumerate(spec.data_centers * clients_per_data_center)]
    for client in clients:
        client.start()
    time.sleep(duration_s)
    stop.set()
    for client in clients:
        client.join(timeout=60)
    return results
