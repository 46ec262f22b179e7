"""Fault injection and synchronisation points for a real study (test-only; tests/ must be on
PYTHONPATH, so that Ray's trial workers import this module too):

    FAULTS_DIR=<folder> python -c "import sys, _faults; sys.exit(_faults.main())" <sweep args>

runs `python -m harness.sweep <sweep args>` with the trainable wrapped: the first trial to
start runs out of memory (raises MemoryError) on every attempt, the second trains with a learning
rate of 1e30, so its loss really becomes non-finite in the real training loop; every other trial
runs as it is. Each attempt of a faulty trial is appended to `<FAULTS_DIR>/<fault>` (one trial id
a line).

    GATE_DIR=<folder> GATE_EPOCH=<n> [GATE_STAGE=<stage>] [GATE_QUORUM=<k>] python -c ... <args>

instead wraps it with a gate: a trial of `GATE_STAGE` (a stage's Ray Tune experiment name, e.g.
`search-vanilla` or `final`; every stage when unset) that has reported epoch `GATE_EPOCH` (its
checkpoint and result handed to Tune) writes `<GATE_DIR>/arrived-<trial id>` and waits until
`<GATE_DIR>/open` exists, or until `GATE_QUORUM` trials have arrived (a barrier). So a test
holds a study "in the middle" until it has done what it needs, by an event, never by a time.
The wait is bounded (`GATE_TIMEOUT_S`, default 900 s) and then fails the trial saying what it
waited for. Product code is not touched: only this driver's registry entry points elsewhere.
"""

from __future__ import annotations

import os
import sys
import time
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


GATE_SETTINGS = ("GATE_DIR", "GATE_EPOCH", "GATE_STAGE", "GATE_QUORUM", "GATE_TIMEOUT_S")


def _gate(epoch: int, settings: dict[str, str]) -> None:
    """Hold the calling trial at the gate `settings` describe (the GATE_* variables, see above)."""
    from ray import tune

    context = tune.get_context()
    stage = settings.get("GATE_STAGE")
    if epoch != int(settings["GATE_EPOCH"]) or stage not in (None, context.get_experiment_name()):
        return
    folder = Path(settings["GATE_DIR"])
    (folder / f"arrived-{context.get_trial_id()}").touch()
    quorum = int(settings.get("GATE_QUORUM", 0))
    bound = float(settings.get("GATE_TIMEOUT_S", 900))
    deadline = time.monotonic() + bound
    while not (folder / "open").exists():
        if quorum and len(list(folder.glob("arrived-*"))) >= quorum:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate at epoch {epoch}: nobody created {folder / 'open'}"
                               + (f" and fewer than {quorum} trials arrived" if quorum else "")
                               + f" within {bound:g} s")  # fmt: skip
        time.sleep(0.2)


def gated(settings: dict[str, str]):
    """The trainable held at the gate `settings` describe (read in the driver: the trial may run
    on a node whose processes have another environment)."""

    def gated_trial(config: dict[str, Any]) -> None:
        from trainables.trial import _TuneTrial, run_trial

        report = _TuneTrial.report

        def report_then_gate(self, metrics, artifacts):
            report(self, metrics, artifacts)
            _gate(int(metrics["epoch"]), settings)

        _TuneTrial.report = report_then_gate
        try:
            run_trial(config)
        finally:
            _TuneTrial.report = report

    return gated_trial


def main(argv: list[str] | None = None) -> int:
    import trainables
    from harness.sweep import main as sweep

    if "FAULTS_DIR" in os.environ:
        wrapped = flaky_trial
    else:
        wrapped = gated({key: os.environ[key] for key in GATE_SETTINGS if key in os.environ})
    for modality in trainables.TRAINABLES:
        trainables.TRAINABLES[modality] = wrapped
    return sweep(sys.argv[1:] if argv is None else argv)
