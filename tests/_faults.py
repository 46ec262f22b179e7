"""Fault injection for a real study (test-only; tests/ must be on PYTHONPATH, so that Ray's trial
workers import this module too):

    FAULTS_DIR=<folder> python -c "import sys, _faults; sys.exit(_faults.main())" <sweep args>

runs `python -m harness.sweep <sweep args>` with the trainable wrapped: the first trial to
start runs out of memory (raises MemoryError) on every attempt, the second trains with a learning
rate of 1e30, so its loss really becomes non-finite in the real training loop; every other trial
runs as it is. Each attempt of a faulty trial is appended to `<FAULTS_DIR>/<fault>` (one trial id
a line). Product code is not touched: only this driver's registry entry points elsewhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

FAULTS = ("oom", "nan")


def _fault_of(trial_id: str) -> str | None:
    """The fault this trial got (claimed by the first trials to start, one fault each)."""
    folder = Path(os.environ["FAULTS_DIR"])
    for fault in FAULTS:
        claim = folder / f"{fault}.owner"
        try:
            with open(claim, "x") as f:  # exclusive create: one owner per fault
                f.write(trial_id)
        except FileExistsError:
            pass
        else:
            return fault
        if claim.read_text() == trial_id:
            return fault
    return None


def flaky_trial(config: dict[str, Any]) -> None:
    from ray import tune

    from trainables.trial import run_trial

    trial_id = tune.get_context().get_trial_id()
    fault = _fault_of(trial_id)
    if fault is not None:
        with open(Path(os.environ["FAULTS_DIR"]) / fault, "a") as f:
            f.write(trial_id + "\n")
    if fault == "oom":
        raise MemoryError("injected: out of memory")
    if fault == "nan":
        config = {**config, "train": {**config["train"], "lr": 1e30}}
    run_trial(config)


def main(argv: list[str] | None = None) -> int:
    import trainables
    from harness.sweep import main as sweep

    trainables.TRAINABLES["video"] = flaky_trial
    return sweep(sys.argv[1:] if argv is None else argv)
