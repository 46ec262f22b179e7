"""What a study costs beyond its trials, and what ASHA early stopping saves.

Runs the same study twice, as a user would (`python -m harness.sweep ...`, a fresh process each),
once without early stopping (`sweep.scheduler=none`) and once with ASHA (`sweep.scheduler=asha`),
after building the dataset cache both share, and prints:

1. Overhead (the study without early stopping): its wall time, command start to exit, against
   the ideal, the sum of its trials' own times (Tune's `time_total_s`: the trainable from its
   start to its last report, checkpoint upload included) divided by the number of trials run at
   once. The gap is split into the driver's time outside the Tuners (imports, Ray and MLflow
   start-up, the report) and the time inside the Tuners beyond the ideal (actor start-up,
   scheduling, an uneven last wave of trials). Target: under 10% for the default study.
2. ASHA against none, per method: search trials, trial-epochs (the epochs the search trained),
   the best validation accuracy the search selected (trials that ran every epoch), search time.

    python benchmarks/study_overhead.py                          # the default study (~2 x 10 min)
    python benchmarks/study_overhead.py --preset smoke           # a quick check of the script
    python benchmarks/study_overhead.py study.methods=[vanilla,et] final.seeds=2 --skip-asha

Trailing key=value arguments are overrides for both studies (as for `python -m harness.sweep`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.config import compose, resolve_paths
from harness.data import prepare_dataset


@dataclass(frozen=True)
class Trial:
    stage: str  # the Tuner: search-<method> or final
    seconds: float  # Tune's time_total_s
    epochs: int
    start: float  # unix time: last report's timestamp - time_total_s (1 s resolution)
    end: float


@dataclass(frozen=True)
class Study:
    scheduler: str
    wall: float
    concurrent: int
    trials: list[Trial]
    report: Path

    @property
    def ideal(self) -> float:
        return sum(t.seconds for t in self.trials) / self.concurrent

    def span(self, stage: str) -> float:
        """Seconds from the stage's first trial start to its last trial end."""
        trials = [t for t in self.trials if t.stage == stage]
        return max(t.end for t in trials) - min(t.start for t in trials) if trials else 0.0

    @property
    def stages(self) -> list[str]:
        return sorted({t.stage for t in self.trials})


def _trials(ray_folder: Path) -> list[Trial]:
    trials = []
    for results in sorted(ray_folder.glob("*/*/result.json")):
        lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        last = lines[-1]
        trials.append(Trial(
            stage=results.parent.parent.name, seconds=float(last["time_total_s"]),
            epochs=int(last["training_iteration"]),
            start=float(last["timestamp"]) - float(last["time_total_s"]),
            end=float(last["timestamp"]),
        ))  # fmt: skip
    return trials


def run_study(experiment: str, overrides: list[str], scheduler: str, folder: Path) -> Study:
    """One study as a fresh `python -m harness.sweep` process, timed from start to exit."""
    command = [sys.executable, "-m", "harness.sweep", experiment, *overrides,
               f"sweep.scheduler={scheduler}", f"study.output_dir={folder}"]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    print(f"running: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    (folder / "stdout.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"the study failed ({folder / 'stdout.log'}):\n{done.stderr[-2000:]}")
    concurrent = int(re.search(r"up to (\d+) trials at once", done.stdout).group(1))
    return Study(scheduler, wall, concurrent, _trials(folder / "ray"), folder / "report")


def overhead_table(study: Study) -> pd.DataFrame:
    inside = sum(study.span(stage) for stage in study.stages)
    rows = [
        ("study wall time (command start to exit)", study.wall),
        (f"ideal: sum of {len(study.trials)} trials' own times / {study.concurrent}", study.ideal),
        ("driver outside the Tuners (start-up, data check, report)", study.wall - inside),
        ("inside the Tuners beyond the ideal", inside - study.ideal),
    ]
    table = pd.DataFrame(rows, columns=["", "seconds"])
    table["share of wall"] = (table["seconds"] / study.wall).map("{:.1%}".format)
    table["seconds"] = table["seconds"].map("{:.1f}".format)
    return table


def asha_table(studies: list[Study]) -> pd.DataFrame:
    """Per method (then all methods), per scheduler: the search's trials, trial-epochs, selected
    best validation accuracy and time (first trial start to last trial end)."""
    best = {
        s.scheduler: pd.read_csv(s.report / "comparison.csv").set_index("method") for s in studies
    }
    methods = list(best[studies[0].scheduler].index)
    rows = []
    for method in [*methods, "all"]:
        stages = [f"search-{m}" for m in (methods if method == "all" else [method])]
        for study in studies:
            search = [t for t in study.trials if t.stage in stages]
            accuracy = best[study.scheduler]["best_val_acc"].get(method, float("nan"))
            rows.append({
                "method": method, "scheduler": study.scheduler, "trials": len(search),
                "trial-epochs": sum(t.epochs for t in search), "best val acc": accuracy,
                "search s": round(sum(study.span(stage) for stage in stages), 1),
            })  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/study_overhead.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--experiment", default="birds_video")
    parser.add_argument("--preset", default="default", help="the sweep preset (default, smoke)")
    parser.add_argument("--skip-asha", action="store_true", help="only the overhead study")
    parser.add_argument("--output", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both studies")
    args = parser.parse_args(argv)
    overrides = [f"sweep={args.preset}", *args.overrides]
    cfg = compose(args.experiment, overrides)
    resolve_paths(cfg)
    prepare_dataset(cfg.data)  # the cache both studies open, built before any clock starts
    output = args.output or Path(tempfile.mkdtemp(prefix="study-overhead-"))
    studies = []
    for scheduler in ["none"] if args.skip_asha else ["none", "asha"]:
        folder = output / scheduler
        folder.mkdir(parents=True, exist_ok=True)
        studies.append(run_study(args.experiment, overrides, scheduler, folder))
    none = studies[0]
    print(f"\n{args.experiment} {' '.join(overrides)}: {none.concurrent} trials at once; "
          f"outputs in {output}\n")  # fmt: skip
    print(overhead_table(none).to_markdown(index=False))
    print(f"\noverhead: wall / ideal - 1 = {none.wall / none.ideal - 1:.1%} (target < 10%)")
    if len(studies) > 1:
        print("\n" + asha_table(studies).to_markdown(index=False))
        epochs = [sum(t.epochs for t in s.trials if t.stage != "final") for s in studies]
        print(f"\nASHA saved {1 - epochs[1] / epochs[0]:.0%} of the search's trial-epochs.")


if __name__ == "__main__":
    main()
