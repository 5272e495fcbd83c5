"""One seed reproduces one run: the same history, faults and state hashes, in any process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from rayconf.sims.config import SimConfig
from rayconf.sims.history import history_to_json
from rayconf.sims.simulator import Simulation

logging.getLogger("rayconf").setLevel(logging.CRITICAL)

DIGEST_SCRIPT = """
import logging
logging.getLogger("rayconf").setLevel(logging.CRITICAL)
from rayconf.sims.config import SimConfig
from rayconf.sims.simulator import Simulation
print(Simulation(SimConfig(seed={seed})).run().digest())
"""


def test_same_seed_gives_same_run() -> None:
    first = Simulation(SimConfig(seed=11)).run()
    second = Simulation(SimConfig(seed=11)).run()

    assert history_to_json(first.operations) == history_to_json(second.operations)
    assert first.fault_log == second.fault_log
    assert first.state_hashes == second.state_hashes
    assert first.statistics == second.statistics
    assert first.simulated_time_ms == second.simulated_time_ms
    assert first.digest() == second.digest()


def test_different_seeds_give_different_runs() -> None:
    digests = {Simulation(SimConfig(seed=seed)).run().digest() for seed in range(4)}

    assert len(digests) == 4


def test_same_seed_same_digest_across_hash_seeds() -> None:
    """String hashing differs between processes, so set iteration order must not leak in."""
    in_process = Simulation(SimConfig(seed=5)).run().digest()
    for hash_seed in ("1", "2"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        completed = subprocess.run(
            [sys.executable, "-c", DIGEST_SCRIPT.format(seed=5)],
            env=environment, capture_output=True, text=True, check=True, timeout=120,
        )
        assert completed.stdout.strip() == in_process, f"PYTHONHASHSEED={hash_seed} changed the run"
