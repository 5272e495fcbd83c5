"""Implementations of the cluster commands; `cli.py` declares their options."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ray

from rayconf.actors import cluster
from rayconf.actors.cluster import ClusterSpec
from rayconf.clients import transfer
from rayconf.clients.cli import encode_value, print_record, wait_for_interrupt
from rayconf.clients.client import Client
from rayconf.clients.large_values import manifest_of
from rayconf.clients.txn_document import parse_txn_document
from rayconf.errors import InvalidRequest, Unavailable
from rayconf.store.keys import validate_directory
from rayconf.store.records import DeleteRangeResponse, KeyValue, PutResponse, RangeResponse


SERVE_PID_FILE = "serve.pid"


def spec_of(arguments: argparse.Namespace) -> ClusterSpec:
    return cluster.default_spec(arguments.data_dir, arguments.namespace, getattr(arguments, "tick_ms", 50),
                                getattr(arguments, "lease_reads", True), getattr(arguments, "store_leases", True))


def join_ray(address: str, namespace: str) -> None:
    """Connect this process to the running Ray instance at `address`."""
    # Ray 2.60 loads the token of ~/.ray/auth_token only for address "auto". With
    # an explicit address it sends a token only when RAY_AUTH_MODE=token is set
    # in the environment before Ray is imported (ray/_private/worker.py).
    if cluster.is_local_address(address):
        cluster.use_loopback()
    if address != "auto":
        check_reachable(address)
    ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.ERROR)


def check_reachable(address: str, timeout_s: float = 2.0) -> None:
    """Raise `ConnectionError` unless something accepts TCP connections at `address`.

    Ray retries an unreachable address for minutes, and this check fails at once.
    """
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        raise ConnectionError(f"no server accepts connections at {address}: {error}") from error


def connect(arguments: argparse.Namespace) -> Client:
    spec = spec_of(arguments)
    if not ray.is_initialized():
        try:
            join_ray(arguments.address, spec.namespace)
        except ConnectionError as error:
            hint = ""
            if arguments.address != "auto" and os.environ.get("RAY_AUTH_MODE") != "token":
                hint = ". If Ray runs there with token authentication, set RAY_AUTH_MODE=token and retry"
            raise Unavailable(
                f"no running Ray instance at {arguments.address!r} ({error}); start the cluster with "
                f"`rayconf serve` or `rayconf up`{hint}"
            ) from error
    password, token = credentials_of(arguments)
    return Client(spec, timeout_s=arguments.timeout, principal=arguments.user, user=arguments.user,
                  password=password, token=token)


def credentials_of(arguments: argparse.Namespace) -> tuple[str | None, str | None]:
    """Return (password, token) from --password-file and --token, else RAYCONF_PASSWORD and RAYCONF_TOKEN.

    A token, when given, is used alone.
    """
    token = arguments.token or os.environ.get("RAYCONF_TOKEN") or None
    if token:
        return None, token
    if arguments.password_file is not None:
        lines = arguments.password_file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise InvalidRequest(f"password file {arguments.password_file} is empty; put the password on its "
                                 "first line")
        return lines[0], token
    return os.environ.get("RAYCONF_PASSWORD") or None, token


def kv_record(kv: KeyValue) -> dict[str, Any]:
    manifest = manifest_of(kv.value)
    # A watch event for a large value carries its manifest; show its size and hash instead.
    value: dict[str, Any] = encode_value(kv.value) if manifest is None else {
        "value_size_bytes": manifest.size_bytes, "value_sha256": manifest.value_hex()}
    return {"key": kv.key.decode("utf-8", errors="backslashreplace"), **value,
            "create_revision": kv.create_revision, "mod_revision": kv.mod_revision, "version": kv.version}


def printable(text: str) -> str:
    """Return `text` with every unprintable character escaped, so one record stays one line."""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)


def show_value(value: bytes) -> str:
    manifest = manifest_of(value)
    if manifest is not None:
        return (f"<large value of {manifest.size_bytes} bytes, sha256 {manifest.value_hex()}; "
                "read it with rayconf get --out FILE>")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(value)} bytes of binary data; use -o json or --out FILE>"


# --- Life cycle. ---


def command_serve(arguments: argparse.Namespace) -> int:
    spec = spec_of(arguments)
    cluster.start_local_ray(spec, num_cpus=arguments.num_cpus)
    try:
        state = cluster.up(spec, wait_for_leader_s=arguments.timeout * 3)
        address = ray.get_runtime_context().gcs_address
        print(f"rayconf is serving: {len(spec.members())} replicas in namespace {spec.namespace!r}, "
              f"leader {state['leader']}, data in {spec.data_directory}")
        print(f"Ray address: {address}")
        options = "" if spec.namespace == cluster.DEFAULT_NAMESPACE else f" --namespace {spec.namespace}"
        print("Try, in another terminal:")
        print(f"  rayconf put /app/db/timeout 30 --note 'first value'{options}")
        print(f"  rayconf get /app/db/timeout{options}")
        print(f"  rayconf status{options}")
        print(f"When other Ray instances run on this machine, add --address {address} to each command "
              "and set RAY_AUTH_MODE=token in its environment.")
        print("Press Ctrl-C to stop; the data stays for the next start.", flush=True)
        wait_for_interrupt()
        print("stopping rayconf ...", flush=True)
        cluster.down(spec)
    finally:
        ray.shutdown()
    print("stopped")
    return 0


def command_up(arguments: argparse.Namespace) -> int:
    spec = spec_of(arguments)
    try:
        join_ray(arguments.address, spec.namespace)
    except ConnectionError:
        return start_background_server(arguments, spec)
    state = cluster.up(spec, wait_for_leader_s=arguments.timeout * 3)
    print(f"rayconf is up: leader {state['leader']}, term {state['term']}, data in {spec.data_directory}")
    return 0


def start_background_server(arguments: argparse.Namespace, spec: ClusterSpec) -> int:
    """Run `rayconf serve` as a background process and wait until it serves.

    Its process id goes to `<data dir>/serve.pid` and its output to
    `<data dir>/serve.log`, so `down` can stop exactly that process.
    """
    data = Path(spec.data_directory)
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "serve.log"
    command = [sys.executable, "-m", "rayconf", "serve", "--data-dir", str(data), "--namespace",
               spec.namespace, "--tick-ms", str(arguments.tick_ms), "--num-cpus", str(arguments.num_cpus),
               *([] if arguments.lease_reads else ["--no-lease-reads"]),
               *([] if arguments.store_leases else ["--no-store-leases"]),
               "--timeout", str(arguments.timeout)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    (data / SERVE_PID_FILE).write_text(str(process.pid))
    deadline = time.monotonic() + arguments.timeout * 6
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"the background server exited with code {process.returncode}; see {log_path}")
        if b"Press Ctrl-C" in log_path.read_bytes():
            print(f"rayconf is up in the background (process {process.pid}); data in {data}, log in {log_path}. "
                  "Stop it with `rayconf down`.")
            return 0
        time.sleep(0.2)
    raise Unavailable(f"the background server did not start within {arguments.timeout * 6:.0f} s; see {log_path}")


def command_down(arguments: argparse.Namespace) -> int:
    spec = spec_of(arguments)
    pid_path = Path(spec.data_directory) / SERVE_PID_FILE
    connect(arguments)
    stopped = cluster.down(spec)
    print(f"stopped {len(stopped)} replicas ({', '.join(stopped) or 'none were running'}) with the shard "
          "stores and watch hubs; the data stays")
    if pid_path.exists():
        stop_background_server(pid_path)
    return 0


def stop_background_server(pid_path: Path) -> None:
    """Stop the `rayconf serve` process that `up` started, by its recorded id."""
    try:
        pid = int(pid_path.read_text())
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        pid_path.unlink(missing_ok=True)
        return
    if b"rayconf" not in command_line or b"serve" not in command_line:
        pid_path.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    pid_path.unlink(missing_ok=True)
    print(f"stopped the background server (process {pid})")


def command_status(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    state = client.status()
    if arguments.output == "json":
        print(json.dumps(state, sort_keys=True, default=str))
        return 0 if state["leader"] else 1
    print(f"leader: {state['leader'] or 'none'}   term: {state['term']}   auth: {state['auth']}")
    print(f"{'member':<12} {'health':<12} {'role':<14} {'term':>5} {'commit':>8} {'applied':>8} {'revision':>9}")
    for member, info in sorted(state["members"].items()):
        print(f"{member:<12} {info.get('health', '?'):<12} {info.get('role', '-'):<14} {info.get('term', '-'):>5} "
              f"{info.get('commit_index', '-'):>8} {info.get('applied_index', '-'):>8} {info.get('revision', '-'):>9}")
    for store, info in sorted(state.get("stores", {}).items()):
        print(f"{store:<12} {info.get('health', '?'):<12} {'store':<14} {'':>5} {'':>8} "
              f"{info.get('applied_index', '-'):>8} {info.get('revision', '-'):>9}   age {info.get('age_ms', '-')} ms"
              f"{describe_lease(info)}{describe_channel(info)}")
    for hub, info in sorted(state.get("hubs", {}).items()):
        print(f"{hub:<12} {info.get('health', '?'):<12} {'watch hub':<14}")
    return 0 if state["leader"] else 1


def describe_lease(store_status: dict[str, Any]) -> str:
    """Return the status text of a store's read lease, or "" when it holds none."""
    remaining_ms = store_status.get("lease_remaining_ms", 0)
    if not remaining_ms:
        return ""
    return f", read lease from {store_status.get('lease_leader')} for {remaining_ms} ms"


def describe_channel(store_status: dict[str, Any]) -> str:
    """Return the status text of a store's read channel, or "" when it has none."""
    if not store_status.get("read_channel"):
        return ""
    return f", reads on {store_status['read_channel']}"


# --- Writes. ---


def command_put(arguments: argparse.Namespace) -> int:
    if (arguments.value is None) == (arguments.file is None):
        raise InvalidRequest("give the value either as an argument or with --file PATH, not both")
    client = connect(arguments)
    if arguments.file:
        # Read one chunk at a time, so a 10 MiB file is never held whole here.
        response = client.put_file(arguments.key, arguments.file, note=arguments.note)
    else:
        response = client.put(arguments.key, arguments.value.encode("utf-8"), note=arguments.note)
    print_record(arguments, {"key": arguments.key, "revision": response.revision}, f"OK revision {response.revision}")
    return 0


def command_del(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    result: DeleteRangeResponse = client.delete(arguments.key, prefix=arguments.prefix, note=arguments.note)
    print_record(arguments, {"deleted": result.deleted}, f"deleted {result.deleted}")
    return 0


def command_cas(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    expected = None if arguments.absent else arguments.expected.encode("utf-8")
    response = client.cas(arguments.key, expected, arguments.value.encode("utf-8"), note=arguments.note)
    print_record(arguments, {"key": arguments.key, "revision": response.revision}, f"OK revision {response.revision}")
    return 0


def command_txn(arguments: argparse.Namespace) -> int:
    text = arguments.file.read_text() if arguments.file else sys.stdin.read()
    txn = parse_txn_document(text)
    client = connect(arguments)
    response = client.txn(txn, note=arguments.note)
    results: list[dict[str, Any]] = []
    for item in response.responses:
        if isinstance(item, RangeResponse):
            results.append({"kvs": [kv_record(kv) for kv in item.kvs], "count": item.count})
        elif isinstance(item, DeleteRangeResponse):
            results.append({"deleted": item.deleted})
        elif isinstance(item, PutResponse):
            results.append({"put": True})
    record = {"succeeded": response.succeeded, "revision": response.revision, "responses": results}
    print_record(arguments, record, json.dumps(record, indent=2))
    return 0 if response.succeeded else 2


def command_compact(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    response = client.compact(arguments.revision)
    print_record(arguments, {"compact_revision": response.compact_revision},
                 f"compacted: revisions below {response.compact_revision} are gone")
    return 0


# --- Reads. ---


def command_get(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    if arguments.out and not arguments.prefix:
        # Written chunk by chunk, each checked, so a large value is never held whole here.
        written = client.get_to_file(arguments.key, arguments.out, revision=arguments.revision,
                                     consistency=arguments.consistency)
        if written is None:
            print(f"rayconf get: key {arguments.key} not found", file=sys.stderr)
            return 1
        return 0
    if arguments.prefix:
        kvs = list(client.range(arguments.key, limit=arguments.limit, revision=arguments.revision,
                                consistency=arguments.consistency).kvs)
    else:
        kv = client.get(arguments.key, revision=arguments.revision, consistency=arguments.consistency)
        kvs = [kv] if kv is not None else []
        if not kvs:
            print(f"rayconf get: key {arguments.key} not found", file=sys.stderr)
            return 1
    if arguments.out:
        if len(kvs) != 1:
            raise InvalidRequest("--out writes one value; drop --prefix or use `rayconf export`")
        arguments.out.write_bytes(kvs[0].value)
        return 0
    for kv in kvs:
        text = show_value(kv.value) if not arguments.prefix else f"{kv.key.decode(errors='replace')} = " \
            f"{show_value(kv.value)}"
        print_record(arguments, kv_record(kv), text)
    return 0


def command_ls(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    directory = validate_directory(arguments.directory)
    response = client.range(directory, keys_only=True, revision=arguments.revision)
    from sortedcontainers import SortedList

    from rayconf.store.keys import iter_children

    for entry in iter_children(SortedList(kv.key for kv in response.kvs), directory):
        name = entry.name.decode("utf-8", errors="backslashreplace")
        print_record(arguments, {"name": name, "key": entry.key.decode(errors="backslashreplace"),
                                 "directory": entry.is_directory}, name)
    return 0


def command_history(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    for entry in client.history(arguments.key, limit=arguments.limit):
        change = entry.change
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(change.time_ms / 1000)) if change else "?"
        kind = entry.event.type.name.lower()
        record = {"revision": entry.event.kv.mod_revision, "type": kind, "time_ms": change.time_ms if change else 0,
                  "principal": change.principal if change else "", "note": change.note if change else "",
                  **kv_record(entry.event.kv)}
        value = "" if kind == "delete" else show_value(entry.event.kv.value)
        text = (f"{entry.event.kv.mod_revision:>8}  {when}Z  {kind:<6}  {printable(record['principal']) or '-':<12} "
                f"{value!r}  {printable(record['note'])}")
        print_record(arguments, record, text)
    return 0


# --- Bulk. ---


def command_import(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    summary = transfer.import_directory(client, arguments.directory, arguments.prefix, note=arguments.note,
                                        progress=sys.stderr.isatty())
    skipped = f", skipped {summary.skipped_links} symbolic links" if summary.skipped_links else ""
    print(f"imported {summary.keys} keys ({summary.bytes} bytes) in {summary.txns} txns, revisions "
          f"{summary.first_revision}..{summary.last_revision}, in {summary.elapsed_s:.1f} s{skipped}")
    return 0


def command_export(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    summary = transfer.export_prefix(client, arguments.prefix, arguments.directory, progress=sys.stderr.isatty())
    print(f"exported {summary.keys} keys ({summary.bytes} bytes) to {arguments.directory} "
          f"in {summary.elapsed_s:.1f} s")
    return 0


def command_revert(arguments: argparse.Namespace) -> int:
    client = connect(arguments)
    revision = transfer.revert(client, arguments.key, arguments.to_revision, prefix=arguments.prefix)
    if revision:
        print(f"reverted {arguments.key} to its values at revision {arguments.to_revision}: new revision {revision}")
    else:
        print(f"{arguments.key} already has its values of revision {arguments.to_revision}; nothing written")
    return 0



# --- Watches. ---


def command_watch(arguments: argparse.Namespace) -> int:
    """Print one line per event: text for people, or one JSON object per event."""
    from rayconf.clients.watch import close_streams, watch

    client = connect(arguments)
    printed = 0
    changes = watch(client.spec, arguments.prefix, prefix=not arguments.key, start_revision=arguments.from_revision,
                    prev_kv=arguments.prev_kv, data_center=client.data_center, token_source=client.current_token)
    try:
        with changes:
            for batch in changes:
                for event in batch.events:
                    kind = event.type.name.lower()
                    record: dict[str, Any] = {"revision": batch.revision, "type": kind, **kv_record(event.kv)}
                    if arguments.prev_kv:
                        record["prev_kv"] = kv_record(event.prev_kv) if event.prev_kv else None
                    value = "" if kind == "delete" else show_value(event.kv.value)
                    text = f"{batch.revision:>8}  {kind:<6}  {record['key']}  {value}"
                    print_record(arguments, record, text)
                    sys.stdout.flush()
                    printed += 1
                    if arguments.max_events and printed >= arguments.max_events:
                        return 0
    except KeyboardInterrupt:
        pass
    finally:
        close_streams()
    return 0
