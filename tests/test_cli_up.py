"""`rayconf up` with no Ray running starts a background server, and `down` stops it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

RAYCONF = [sys.executable, "-m", "rayconf"]


def run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(RAYCONF + list(arguments), capture_output=True, text=True, timeout=300)


def test_up_then_down_in_background(tmp_path: Path) -> None:
    options = ["--data-dir", str(tmp_path / "data"), "--namespace", "up-test"]
    probe = run("status", *options)
    if "no running Ray instance" not in probe.stderr:
        pytest.skip("another Ray instance is running on this machine, and up would join it")
    started = run("up", *options, "--tick-ms", "20")
    assert started.returncode == 0, started.stderr + started.stdout
    assert "in the background" in started.stdout
    pid = int((tmp_path / "data" / "serve.pid").read_text())
    try:
        assert run("put", "/bg/key", "v", *options).returncode == 0
        again = run("up", *options)
        assert again.returncode == 0, again.stderr
        assert "rayconf is up" in again.stdout
        got = run("get", "/bg/key", *options)
        assert got.stdout == "v\n", got.stderr
    finally:
        stopped = run("down", *options)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the background server (process {pid})" in stopped.stdout
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the background server is still running"
        time.sleep(0.2)
    assert not (tmp_path / "data" / "serve.pid").exists()


def test_every_command_has_handler_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from rayconf.__main__ import build_parser
    from rayconf.clients import auth_commands, commands
    from rayconf.clients.cli import AUTH_COMMANDS, COMMANDS

    for name in COMMANDS:
        module = auth_commands if name in AUTH_COMMANDS else commands
        assert hasattr(module, "command_" + name), name
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([name, "--help"])
        assert exited.value.code == 0
        assert "usage: rayconf " + name in capsys.readouterr().out
