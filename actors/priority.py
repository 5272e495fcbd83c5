"""CPU priority of rayconf's actors and of the threads that move chunks.

On a machine whose cores are all busy, the kernel shares them by weight, and
the nice value sets the weight: each step changes it by a factor of about 1.25.

- Ray 2.60 starts the threads that run an actor's Python code at nice 15
  unless its `worker_niceness` setting is changed (seen in /proc).
  rayconf's actors are servers: at nice 15 every client and every other
  program at nice 0 runs before them. So the Ray instances rayconf starts
  set `worker_niceness` to 0 (`cluster.ray_system_config`), and each store
  and replica logs a warning when it finds itself above nice 0.
- A replica copies, hashes, fsyncs and serves chunks of large values on
  threads at `ReplicaSettings.chunk_io_nice` (10), so that a burst of large
  puts yields the cores to small reads and to Raft. Raising a nice value
  needs no privilege.

Linux keeps a nice value per thread, and a new thread starts with its
creator's. Elsewhere the value belongs to the process, so `set_thread_nice`
does nothing there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from rayconf.errors import InvalidRequest

logger = logging.getLogger(__name__)

NICE_MIN = -20
NICE_MAX = 19


def check_nice(name: str, value: object) -> None:
    """Raise `InvalidRequest` naming `name` unless `value` is an integer nice value."""
    if type(value) is not int or not NICE_MIN <= value <= NICE_MAX:
        raise InvalidRequest(f"{name} is {value!r}; give an integer nice value from {NICE_MIN} to {NICE_MAX}")


def current_nice() -> int:
    """Return the nice value of the calling thread (on Linux; elsewhere of the process)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id() if _per_thread() else 0)


def warn_if_deprioritized(server: str) -> int:
    """Log a warning when the calling thread runs above nice 0; return its nice value."""
    nice = current_nice()
    if nice > 0:
        logger.warning("%s runs at nice %d, so it waits for the cores behind every process at nice 0. Ray runs "
                       "its workers at nice 15 by default: start Ray with the system config "
                       "{\"worker_niceness\": 0} (rayconf.actors.cluster.ray_system_config)", server, nice)
    return nice


def set_thread_nice(nice: int) -> None:
    """Give the calling thread the nice value `nice` on Linux; elsewhere do nothing.

    Meant as the initializer of a thread pool for background work, so it logs
    a rejected change instead of raising.
    """
    if not _per_thread():
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except PermissionError:
        logger.info("a background thread stays at nice %d: the kernel rejected nice %d, which needs "
                    "CAP_SYS_NICE", current_nice(), nice)


def _per_thread() -> bool:
    return sys.platform.startswith("linux")
