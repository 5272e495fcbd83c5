"""The command line against a cluster that `rayconf serve` runs in a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "helm-charts"
RAYCONF = [sys.executable, "-m", "rayconf"]


class Server:
    def __init__(self, data: Path) -> None:
        self.process = subprocess.Popen(
            RAYCONF + ["serve", "--data-dir", str(data), "--namespace", "cli-test", "--tick-ms", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.address = ""
        self.output: list[str] = []
        deadline = time.monotonic() + 120
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("Ray address:"):
                self.address = line.split(":", 1)[1].strip()
            if line.startswith("Press Ctrl-C"):
                return
        self.stop()
        raise AssertionError("rayconf serve did not start:\n" + "".join(self.output))

    def run(self, *arguments: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        # An explicit address keeps the commands on this server even when other
        # Ray instances run on the machine; Ray sends its token for an explicit
        # address only with RAY_AUTH_MODE=token.
        environment = dict(os.environ, RAY_AUTH_MODE="token")
        result = subprocess.run(
            RAYCONF + list(arguments[:1]) + ["--address", self.address, "--namespace", "cli-test", "--timeout", "30"]
            + list(arguments[1:]),
            input=stdin, capture_output=True, text=True, timeout=120, env=environment,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        assert self.process.stdout is not None
        return "".join(self.output) + self.process.stdout.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = Server(tmp_path_factory.mktemp("cli-data"))
    yield started
    output = started.stop()
    assert "stopped" in output


def test_put_get_history_ls(server: Server) -> None:
    assert server.run("put", "/app/db/timeout", "30", "--note", "first").stdout.startswith("OK revision")
    server.run("put", "/app/db/timeout", "45", "--note", "second", "--user", "alice")
    server.run("put", "/app/cache/size", "512")
    assert server.run("get", "/app/db/timeout").stdout == "45\n"
    record = json.loads(server.run("get", "/app/db/timeout", "-o", "json").stdout)
    assert {"key", "value", "create_revision", "mod_revision", "version"} <= set(record)
    assert record["value"] == "45"
    assert record["version"] == 2
    assert server.run("ls", "/app/").stdout.split() == ["cache/", "db/"]
    history = server.run("history", "/app/db/timeout", "-o", "json").stdout.splitlines()
    entries = [json.loads(line) for line in history]
    assert [entry["note"] for entry in entries] == ["first", "second"]
    assert entries[1]["principal"] == "alice"


def test_txn_and_cas(server: Server) -> None:
    server.run("put", "/deploy/color", "blue")
    document = json.dumps({
        "compare": [{"key": "/deploy/color", "target": "value", "op": "=", "value": "blue"}],
        "success": [{"put": "/deploy/color", "value": "green"}],
        "failure": [{"get": "/deploy/color"}],
    })
    result = json.loads(server.run("txn", "-o", "json", stdin=document).stdout)
    assert result["succeeded"] is True
    failed = server.run("txn", "-o", "json", stdin=document, check=False)
    assert failed.returncode == 2
    assert json.loads(failed.stdout)["responses"][0]["kvs"][0]["value"] == "green"
    server.run("cas", "/deploy/color", "green", "red")
    conflict = server.run("cas", "/deploy/color", "green", "black", check=False)
    assert conflict.returncode == 1
    assert "TxnFailed" in conflict.stderr
    assert server.run("get", "/deploy/color").stdout == "red\n"


def test_bad_input_is_rejected(server: Server) -> None:
    bad_path = server.run("put", "/bad//path", "x", check=False)
    assert bad_path.returncode == 1
    assert "InvalidKey" in bad_path.stderr
    bad_txn = server.run("txn", stdin="{not json", check=False)
    assert bad_txn.returncode == 1
    assert "InvalidRequest" in bad_txn.stderr
    missing = server.run("get", "/never/written", check=False)
    assert missing.returncode == 1
    assert "not found" in missing.stderr


def test_large_file_put_and_get_out(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "routing.bin"
    source.write_bytes(os.urandom(10 * 1024 * 1024))
    assert server.run("put", "/docs/routing", "--file", str(source)).stdout.startswith("OK revision")
    target = tmp_path / "copy.bin"
    server.run("get", "/docs/routing", "--out", str(target))
    assert target.read_bytes() == source.read_bytes()
    too_big = tmp_path / "too-big.bin"
    too_big.write_bytes(b"x" * (10 * 1024 * 1024 + 1))
    rejected = server.run("put", "/docs/too-big", "--file", str(too_big), check=False)
    assert rejected.returncode == 1
    assert "ValueTooLarge" in rejected.stderr
    assert "max_value_bytes" in rejected.stderr


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus folder {CORPUS} not found")
def test_import_export_revert(server: Server, tmp_path: Path) -> None:
    imported = server.run("import", str(CORPUS), "--prefix", "/charts").stdout
    assert "imported" in imported
    server.run("export", "/charts", str(tmp_path / "out"))
    originals = sorted(p.relative_to(CORPUS) for p in CORPUS.rglob("*") if p.is_file())
    exported = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert exported == originals
    for relative in originals:
        assert (tmp_path / "out" / relative).read_bytes() == (CORPUS / relative).read_bytes(), relative

    key = "/charts/" + originals[0].as_posix()
    before = json.loads(server.run("get", key, "-o", "json").stdout)
    server.run("put", key, "overwritten by mistake")
    server.run("revert", key, "--to-revision", str(before["mod_revision"]))
    restored = json.loads(server.run("get", key, "-o", "json").stdout)
    assert restored["value"] == before["value"]
    assert restored["mod_revision"] > before["mod_revision"]
    notes = [json.loads(line)["note"] for line in server.run("history", key, "-o", "json").stdout.splitlines()]
    assert notes[-1] == f"revert {key} to revision {before['mod_revision']}"


def test_status_lists_members(server: Server) -> None:
    status = json.loads(server.run("status", "-o", "json").stdout)
    assert status["leader"]
    assert set(status["members"]) == {"dc-a-1", "dc-b-1", "dc-c-1"}
    assert status["auth"] == "disabled"
    text = server.run("status").stdout
    assert "leader: " + status["leader"] in text
    # Stores renew their read leases every tenth of a second or so, so one
    # of them holds a lease at any moment the leader is known.
    assert f"read lease from {status['leader']}" in text
    for store, info in status["stores"].items():
        assert f", reads on {info['read_channel']}" in text, f"status names the read channel of {store}"


def test_watch_prints_changes(server: Server) -> None:
    start = json.loads(server.run("put", "/watch/cli/a", "0", "-o", "json").stdout)["revision"]
    server.run("put", "/watch/cli/a", "1")
    server.run("del", "/watch/cli/a")
    watched = server.run("watch", "/watch/cli/", "--from-revision", str(start), "--prev-kv", "--max-events", "3",
                         "-o", "json")
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [event["type"] for event in events] == ["put", "put", "delete"]
    assert [event["revision"] for event in events] == [start, start + 1, start + 2]
    assert events[1]["prev_kv"]["value"] == "0"
    assert events[2]["prev_kv"]["value"] == "1"


def test_import_checks_every_file_first(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for number in range(5):
        (source / f"ok-{number}.yaml").write_text(f"value: {number}\n")
    (source / "bad\x01name").write_text("x")
    (source / "link.yaml").symlink_to(source / "ok-0.yaml")
    failed = server.run("import", str(source), "--prefix", "/imp", check=False)
    assert failed.returncode == 1
    assert "InvalidKey" in failed.stderr
    assert "Nothing was imported" in failed.stderr
    assert server.run("get", "/imp/", "--prefix").stdout == ""
    (source / "bad\x01name").unlink()
    imported = server.run("import", str(source), "--prefix", "/imp").stdout
    assert "imported 5 keys" in imported
    assert "skipped 1 symbolic links" in imported


def test_export_refuses_file_and_directory_clash(server: Server, tmp_path: Path) -> None:
    server.run("put", "/clash/a", "file")
    server.run("put", "/clash/a/b", "nested")
    failed = server.run("export", "/clash", str(tmp_path / "out"), check=False)
    assert failed.returncode == 1
    assert "both a file and a directory" in failed.stderr
    assert not (tmp_path / "out").exists()


def test_local_file_errors_are_reported(server: Server, tmp_path: Path) -> None:
    missing = server.run("put", "/f/x", "--file", str(tmp_path / "missing"), check=False)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    directory = server.run("put", "/f/x", "--file", str(tmp_path), check=False)
    assert directory.returncode == 1
    assert "Traceback" not in directory.stderr


def test_unreachable_address_fails_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(RAYCONF + ["get", "/x", "--address", "127.0.0.1:1", "--namespace", "nobody"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Unavailable" in result.stderr
    assert time.monotonic() - started < 30
