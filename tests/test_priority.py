"""Nice values of rayconf's threads (actors/priority.py), without Ray."""

from __future__ import annotations

import logging
import os
import sys
import threading

import pytest

from rayconf.actors import priority
from rayconf.actors.cluster import ClusterSpec, DataCenter, ray_system_config
from rayconf.actors.replica_core import ReplicaSettings
from rayconf.errors import InvalidRequest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread are Linux's")


@pytest.mark.parametrize("value", [20, -21, "5", 5.0, True, None])
def test_bad_chunk_io_nice_named_in_error(value: object) -> None:
    with pytest.raises(InvalidRequest, match=r"settings.chunk_io_nice is .*from -20 to 19"):
        ClusterSpec(data_centers=(DataCenter("dc-a", voters=("a-1",)),),
                    settings=ReplicaSettings(chunk_io_nice=value))  # type: ignore[arg-type]


def test_system_config_sets_worker_niceness() -> None:
    assert ray_system_config()["worker_niceness"] == 0


def run_in_thread(function):  # type: ignore[no-untyped-def]
    """Run `function` in a new thread and return its result."""
    results = []
    thread = threading.Thread(target=lambda: results.append(function()))
    thread.start()
    thread.join()
    return results[0]


@linux_only
def test_thread_nice_only_calling_thread() -> None:
    before = priority.current_nice()
    if before + 3 > priority.NICE_MAX:
        pytest.skip(f"the test process runs at nice {before}, with no room to raise it by 3")

    def lowered() -> tuple[int, int]:
        priority.set_thread_nice(before + 3)
        return priority.current_nice(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert run_in_thread(lowered) == (before + 3, before + 3)
    assert priority.current_nice() == before


@linux_only
def test_warning_names_nice_and_fix(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=priority.logger.name)
    before = priority.current_nice()
    if before + 2 > priority.NICE_MAX:
        pytest.skip(f"the test process runs at nice {before}, with no room to raise it by 2")
    assert priority.warn_if_deprioritized("store s") == before
    assert not caplog.records or before > 0

    def lowered() -> int:
        priority.set_thread_nice(before + 2)
        return priority.warn_if_deprioritized("store s")

    assert run_in_thread(lowered) == before + 2
    message = caplog.records[-1].getMessage()
    assert f"store s runs at nice {before + 2}" in message
    assert '"worker_niceness": 0' in message
