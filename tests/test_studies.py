"""Several studies side by side (reports/studies.py): the settings they differ in, found from
their configs, and the paired difference of an arm against the first study's, against numbers
computed by hand."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from harness.evaluate.statistics import paired_bootstrap_difference
from reports.studies import differing_settings, studies_table
from reports.study_folder import StudyFolder

CLIPS = np.arange(10, 30)


def _study(name, config, correct, seeds=(1000, 1001)):
    """A finished study's folder as the readers hold it: its config, comparison.csv (one arm,
    et) and predictions.csv, where `correct[s, c]` says whether seed s got clip c right."""
    correct = np.asarray(correct, dtype=bool)
    rows = []
    for s, seed in enumerate(seeds):
        for c, row in enumerate(CLIPS):
            rows.append({"method": "et", "seed": seed, "row": row, "label": 1,
                         "predicted": 1 if correct[s, c] else 0})  # fmt: skip
    comparison = pd.DataFrame([{
        "method": "et", "test_acc_mean": correct.mean(), "test_acc_low": 0.1,
        "test_acc_high": 0.9, "seeds": len(seeds), "best_val_acc": 0.5,
        "best_params": "method.crop_policy=prune",
    }])  # fmt: skip
    state = SimpleNamespace(config=config)
    return StudyFolder(Path(name), state, ["et"], {}, [], [],
                       {"comparison": comparison, "predictions": pd.DataFrame(rows)})  # fmt: skip


def _config(choices, seed, extra=None):
    space = {"method": {"crop_policy": {"type": "categorical", "choices": choices}}}
    if extra:
        space["method"]["prune_after"] = extra
    return {"space": {"et": space}, "sweep": {"sampler_seed": seed, "optuna_storage": seed},
            "study": {"output_dir": f"out/{seed}"}, "train": {"epochs": 8}}  # fmt: skip


def test_the_settings_the_studies_differ_in_come_from_their_configs():
    added = {"type": "int", "low": 0, "high": 1}
    studies = [_study("a", _config(["soft", "mask"], 0), np.ones((2, 20))),
               _study("b", _config(["prune"], 0, added), np.ones((2, 20))),
               _study("c", _config(["prune"], 1, added), np.ones((2, 20)))]  # fmt: skip
    assert differing_settings(studies) == {
        "space.et.method.crop_policy.choices": ["['soft', 'mask']", "['prune']", "['prune']"],
        "space.et.method.prune_after": ["—", *["{type: int, low: 0, high: 1}"] * 2],
        "sweep.sampler_seed": ["0", "0", "1"],
    }  # where a study writes (output_dir, the Optuna storage) is not a setting


def test_an_arm_is_paired_with_the_first_studys_on_the_same_seeds_and_clips():
    rng = np.random.default_rng(0)
    first = rng.random((2, 20)) < 0.5
    better = first | (rng.random((2, 20)) < 0.5)  # right wherever the first is, and more
    studies = [_study("first", _config(["soft"], 0), first),
               _study("better", _config(["prune"], 0), better),
               _study("other seeds", _config(["prune"], 1), better, seeds=(1000, 1002))]
    table = studies_table(studies).set_index("study")
    column = "Δ vs first [95% CI]"
    assert table.loc["first", column] == "—" and table.loc["other seeds", column] == "not paired"
    by_hand = better.mean() - first.mean()
    interval = paired_bootstrap_difference(better.astype(float), first.astype(float))
    assert interval.estimate == pytest.approx(by_hand)
    assert table.loc["better", column] == (
        f"{by_hand:+.3f} [{interval.low:.3f}, {interval.high:.3f}]")
    assert 0 < interval.low <= by_hand  # never worse on any clip: the interval is above 0
    assert table.loc["better", "space.et.method.crop_policy.choices"] == "['prune']"
    assert list(table.columns[:2]) == ["space.et.method.crop_policy.choices",
                                       "sweep.sampler_seed"]  # fmt: skip


def test_a_study_without_its_final_stage_is_refused_by_name():
    unfinished = _study("unfinished", _config(["soft"], 0), np.ones((2, 20)))
    unfinished.tables.pop("comparison")
    with pytest.raises(ValueError, match="unfinished: no report/comparison.csv"):
        studies_table([_study("a", _config(["soft"], 0), np.ones((2, 20))), unfinished])
