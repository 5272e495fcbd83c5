"""The cluster commands of the `rayconf` command line.

`serve` starts a local Ray instance and the cluster in the foreground. `up`
creates the cluster on the running Ray instance, or runs `serve` in the
background when none is running. Every other command connects to the running Ray instance
(`--address`, default "auto"), finds the replicas by name in `--namespace`,
and prints its result. With `-o json` the output is one JSON object per line.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rayconf.errors import InvalidRequest, RayconfError
from rayconf.store.keys import validate_path

logger = logging.getLogger(__name__)

COMMANDS = ("serve", "up", "down", "status", "put", "get", "ls", "del", "history", "txn", "cas",
            "import", "export", "revert", "compact", "watch", "auth", "user", "role")
AUTH_COMMANDS = ("auth", "user", "role")


def add_cluster_parsers(subparsers: Any) -> None:
    """Register every cluster command on the `rayconf` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--namespace", default="rayconf", help="Ray namespace of the cluster (default: rayconf)")
    common.add_argument("--address", default="auto",
                        help="Ray address to connect to (default: auto, the local running instance)")
    common.add_argument("--data-dir", default="./rayconf-data",
                        help="data directory of the replicas, for serve and up (default: ./rayconf-data)")
    common.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the cluster before failing (default: 10)")
    common.add_argument("-o", "--output", choices=("text", "json"), default="text",
                        help="output format: text for people, json for one object per line")
    common.add_argument("--user", default=os.environ.get("RAYCONF_USER") or getpass.getuser(),
                        help="user to authenticate as when auth is enabled, and the principal recorded in "
                             "change records (default: $RAYCONF_USER, else the login name)")
    common.add_argument("--password-file", type=Path,
                        help="file whose first line is the password of --user (default: $RAYCONF_PASSWORD)")
    common.add_argument("--token", default=None,
                        help="token to send instead of a password, such as a service token (default: "
                             "$RAYCONF_TOKEN; prefer the variable, because arguments show in process lists)")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, parents=[common], help=help_text,
                                                                description=help_text)
        return parser

    serve = add("serve", "start a local Ray instance and the cluster in the foreground until Ctrl-C")
    up = add("up", "start the cluster on the running Ray instance, or `rayconf serve` in the background")
    for parser in (serve, up):
        parser.add_argument("--tick-ms", type=int, default=50, help="Raft tick interval in milliseconds (default: 50)")
        parser.add_argument("--no-lease-reads", dest="lease_reads", action="store_false",
                            help="confirm every batch of linearizable reads with a heartbeat round to a quorum "
                                 "instead of the leader's lease; this also turns store read leases off")
        parser.add_argument("--no-store-leases", dest="store_leases", action="store_false",
                            help="grant shard stores no read leases: their linearizable reads request a ReadIndex "
                                 "from the leader, and writes no longer wait for the stores to confirm each commit")
    serve.add_argument("--num-cpus", type=int, default=2, help="CPUs the local Ray instance offers (default: 2)")
    up.add_argument("--num-cpus", type=int, default=2, help="CPUs a new local Ray instance offers (default: 2)")
    add("down", "stop the replica and store actors, and a background server that up started; the data stays")
    add("status", "print the leader, term and per-member state of the cluster, with each store's read lease")

    put = add("put", "write a value")
    put.add_argument("key", help="key path, such as /app/db/timeout")
    put.add_argument("value", nargs="?", help="the value, as text; omit it with --file")
    put.add_argument("--file", type=Path, help="read the value from this file, byte for byte")
    put.add_argument("--note", default="", help="why the change is made; kept in the history")

    get = add("get", "read a key, or every key under a prefix with --prefix")
    get.add_argument("key", help="key path, or directory path with --prefix")
    get.add_argument("--prefix", action="store_true", help="read every key under the path")
    get.add_argument("--revision", type=int, default=0, help="read at this revision (default: current)")
    get.add_argument("--consistency", choices=("linearizable", "serializable"), default="linearizable",
                     help="linearizable (default) confirms with a quorum; serializable reads locally")
    get.add_argument("--limit", type=int, default=0, help="at most this many keys with --prefix (0: all)")
    get.add_argument("--out", type=Path, help="write the value to this file instead of printing it")

    ls = add("ls", "list the immediate children of a directory")
    ls.add_argument("directory", help="directory path, such as /app/")
    ls.add_argument("--revision", type=int, default=0, help="list at this revision (default: current)")

    delete = add("del", "delete a key, or every key under a prefix with --prefix")
    delete.add_argument("key", help="key path, or directory path with --prefix")
    delete.add_argument("--prefix", action="store_true", help="delete every key under the path")
    delete.add_argument("--note", default="", help="why the change is made; kept in the history")

    history = add("history", "list the versions of a key with who changed it, when and why")
    history.add_argument("key", help="key path")
    history.add_argument("--limit", type=int, default=0, help="only the newest versions (0: all)")

    txn = add("txn", "run a transaction described by a JSON document (see docs/cli.md)")
    txn.add_argument("--file", type=Path, help="read the JSON document from this file (default: stdin)")
    txn.add_argument("--note", default="", help="why the change is made; kept in the history")

    cas = add("cas", "write a value only if the key holds the expected value")
    cas.add_argument("key", help="key path")
    cas.add_argument("expected", help="the value the key must hold; use --absent for a missing key")
    cas.add_argument("value", help="the new value, as text")
    cas.add_argument("--absent", action="store_true", help="the key must not exist (expected is ignored)")
    cas.add_argument("--note", default="", help="why the change is made; kept in the history")

    import_ = add("import", "load every file under a directory as keys under a prefix")
    import_.add_argument("directory", type=Path, help="directory of files to load")
    import_.add_argument("--prefix", required=True, help="key prefix, such as /charts")
    import_.add_argument("--note", default="", help="note for the change records")

    export = add("export", "write every key under a prefix back as files")
    export.add_argument("prefix", help="key prefix, such as /charts")
    export.add_argument("directory", type=Path, help="directory to write the files into")

    revert = add("revert", "write the values a key or prefix had at a revision as one new revision")
    revert.add_argument("key", help="key path, or directory path with --prefix")
    revert.add_argument("--to-revision", type=int, required=True, help="revision whose values to restore")
    revert.add_argument("--prefix", action="store_true", help="revert every key under the path")

    compact = add("compact", "drop history below a revision")
    compact.add_argument("revision", type=int, help="oldest revision to keep readable")

    watch = add("watch", "print changes under a prefix (or of one key with --key) as they happen, until Ctrl-C")
    watch.add_argument("prefix", help="directory path such as /app/, or a key path with --key")
    watch.add_argument("--key", action="store_true", help="watch exactly this key instead of a prefix")
    watch.add_argument("--from-revision", type=int, default=0,
                       help="replay changes from this revision first (default: only new changes)")
    watch.add_argument("--prev-kv", action="store_true", help="include the previous value of each changed key")
    watch.add_argument("--max-events", type=int, default=0,
                       help="stop after this many events (default: 0, run until Ctrl-C)")

    from rayconf.clients.auth_commands import add_auth_parsers

    add_auth_parsers(add)


def run_cluster_command(arguments: argparse.Namespace) -> int:
    """Run one cluster command; print a typed error and return 1 when it fails."""
    from rayconf.clients import auth_commands, commands

    module = auth_commands if arguments.command in AUTH_COMMANDS else commands
    handler = getattr(module, "command_" + arguments.command.replace("-", "_"))
    try:
        check_text_arguments(arguments)
        result: int = handler(arguments)
        return result
    except RayconfError as error:
        print(f"rayconf {arguments.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of the output went away (`| head`); stop quietly, as cat does.
        sys.stdout = open(os.devnull, "w")
        return 1
    except (OSError, UnicodeError) as error:
        # Local files: a missing --file, a directory given as a file, an unwritable --out.
        print(f"rayconf {arguments.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def check_text_arguments(arguments: argparse.Namespace) -> None:
    """Raise a typed error for an argument that is not valid UTF-8, before anything connects.

    The shell passes undecodable bytes through as lone surrogates, which Ray
    cannot encode when it records the command line, so the check comes first.
    """
    for name, value in vars(arguments).items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                if name == "key":
                    validate_path(text)  # raises InvalidKey, which names the rule and the fix
                raise InvalidRequest(f"{name.replace('_', '-')} {text!r} is not valid UTF-8; pass UTF-8 "
                                     "text") from None


def print_record(arguments: argparse.Namespace, record: dict[str, Any], text: str) -> None:
    if arguments.output == "json":
        print(json.dumps(record, sort_keys=True))
    else:
        print(text)


def encode_value(value: bytes) -> dict[str, str]:
    """Return a JSON field for `value`: text when it is UTF-8, base64 otherwise."""
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode("ascii")}


def wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
