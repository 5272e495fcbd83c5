"""Command-line input that must fail with a typed error before anything connects, and safe output."""

from __future__ import annotations

import pytest

from rayconf.__main__ import build_parser, main
from rayconf.clients.commands import printable, spec_of
from rayconf.errors import InvalidRequest
from rayconf.store.mvcc import MVCC
from rayconf.store.validation import check_note


def test_non_utf8_key_rejected_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # The shell hands bytes that are not UTF-8 to Python as lone surrogates.
    # The address is one nothing listens on, so reaching it would fail differently.
    status = main(["put", "/a/\udcff", "1", "--address", "127.0.0.1:9"])

    assert status == 1
    error = capsys.readouterr().err
    assert error.startswith("rayconf put: InvalidKey: invalid key path '/a/\\udcff'")
    assert "UTF-8" in error


def test_non_utf8_argument_named(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["put", "/a/b", "1", "--note", "bad \udcff", "--address", "127.0.0.1:9"])

    assert status == 1
    assert "rayconf put: InvalidRequest: note 'bad \\udcff' is not valid UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("note", ["two\nlines", "escape \x1b[31mred", "tab\there", "nul\x00"])
def test_note_with_unprintable_character_is_rejected(note: str) -> None:
    with pytest.raises(InvalidRequest, match=r"note has the unprintable character U\+00"):
        check_note(note)


def test_printable_notes_pass() -> None:
    check_note("raise the timeout: INC-4411 (approved by Zoë) ✓")
    check_note("")


def test_history_text_escapes_unprintable_characters() -> None:
    assert printable("tuning\n 999 root") == "tuning\\n 999 root"
    assert printable("a\x1b[31m") == "a\\x1b[31m"
    assert printable("plain text") == "plain text"


def test_negative_history_limit_names_what_zero_means() -> None:
    with pytest.raises(InvalidRequest, match="give 0 for no limit"):
        MVCC().history(b"/a", limit=-1)


@pytest.mark.parametrize("command", ["serve", "up"])
def test_no_store_leases_flag_reaches_settings(command: str) -> None:
    default = spec_of(build_parser().parse_args([command]))
    assert default.settings.store_leases
    assert default.settings.lease_reads
    turned_off = spec_of(build_parser().parse_args([command, "--no-store-leases"]))
    assert not turned_off.settings.store_leases
    assert turned_off.settings.lease_reads
