"""The comparison report: numbers, intervals and paired tests against independent
computations, the like-for-like table, failed trials, the SYNTHETIC label."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.evaluate.statistics import (
    bootstrap_accuracy,
    holm,
    paired_bootstrap_difference,
    paired_permutation_p,
)
from reports.comparison import (
    MethodSummary,
    comparison_table,
    failures_table,
    faithfulness_summary,
    write_comparison,
)


def _summary(method, accuracy, seeds=(1000, 1001, 1002), clips=50, trials=4, rng_seed=0):
    """A method whose seed s gets clip i right with probability `accuracy`; its predictions,
    metrics (test accuracy = the predictions' accuracy) and a like-for-like table."""
    rng = np.random.default_rng(rng_seed)
    summary = MethodSummary(method, trials, 0, 0.5, {"train.lr": 1e-3})
    for k, seed in enumerate(seeds):
        labels = np.arange(clips) % 4
        right = rng.random(clips) < accuracy
        predicted = np.where(right, labels, (labels + 1) % 4)
        summary.predictions[seed] = pd.DataFrame(
            {"row": np.arange(clips)[::-1], "label": labels[::-1], "predicted": predicted[::-1]}
        )  # rows in another order than sorted: the table aligns them
        summary.final_runs.append(
            {"seed": seed, "test_accuracy": right.mean(), "occ_gap": 0.1 * (k + 1)}
        )
        summary.faithfulness[seed] = pd.DataFrame({
            "explainer": ["rollout", "random"], "clean_accuracy": [right.mean()] * 2,
            "gap": [0.2 + 0.1 * k, 0.0], "gap_rel": [0.5, 0.0],
            "distinct_video": [128.0, 128.0], "tokens_video": [128.0, 128.0],
            "energy_video": [0.4, 0.1], "hit_video": [0.6, 0.15],
        })  # fmt: skip
    return summary


def _correct(summary):
    return np.stack([
        (frame.sort_values("row").predicted == frame.sort_values("row").label).to_numpy(float)
        for _, frame in sorted(summary.predictions.items())
    ])  # fmt: skip


def test_table_intervals_paired_tests_and_holm(tmp_path):
    vanilla = _summary("vanilla", 0.5, rng_seed=0)
    et = _summary("et", 0.8, rng_seed=1)
    ifi = _summary("ifi", 0.55, rng_seed=2)
    et.failures = [("train_video_1", "FloatingPointError: non-finite training loss nan")]
    table = comparison_table([vanilla, ifi, et], "birds_synthetic", synthetic=True)
    rows = table.set_index("method")
    row = rows.loc["et"]
    accuracies = [r["test_accuracy"] for r in et.final_runs]
    assert row.test_acc_mean == pytest.approx(np.mean(accuracies))
    assert row.test_acc_std == pytest.approx(stats.tstd(accuracies))
    assert int(row.seeds) == 3 and int(row.test_clips) == 50
    interval = bootstrap_accuracy(_correct(et))
    assert (row.test_acc_low, row.test_acc_high) == pytest.approx((interval.low, interval.high))
    assert row.test_acc_low < row.test_acc_mean < row.test_acc_high
    difference = paired_bootstrap_difference(_correct(et), _correct(vanilla))
    assert row.diff_vs_vanilla == pytest.approx(
        row.test_acc_mean - rows.loc["vanilla"].test_acc_mean
    )
    assert (row.diff_low, row.diff_high) == pytest.approx((difference.low, difference.high))
    assert row.p_vs_vanilla == pytest.approx(paired_permutation_p(_correct(et), _correct(vanilla)))
    p = [rows.loc[m].p_vs_vanilla for m in ("ifi", "et")]
    assert [rows.loc[m].p_holm for m in ("ifi", "et")] == pytest.approx(holm(p))
    assert math.isnan(rows.loc["vanilla"].p_vs_vanilla) and math.isnan(rows.loc["vanilla"].p_holm)
    assert row.occ_gap == pytest.approx(0.2)  # the mean of 0.1, 0.2, 0.3 over seeds
    assert row.ff_rollout_gap == pytest.approx(0.3) and row.ff_random_gap == 0.0
    faithfulness = faithfulness_summary([vanilla, ifi, et])
    assert list(faithfulness.method) == ["vanilla"] * 2 + ["ifi"] * 2 + ["et"] * 2
    assert list(faithfulness.explainer[:2]) == ["rollout", "random"]
    assert (faithfulness.seeds == 3).all()
    paths = write_comparison(
        table, tmp_path, "birds_video", {"data": "x"}, failures_table([vanilla, ifi, et]),
        faithfulness=faithfulness,
    )  # fmt: skip
    markdown = paths["md"].read_text()
    shown = f"{row.test_acc_mean:.3f} [{row.test_acc_low:.3f}, {row.test_acc_high:.3f}]"
    assert "SYNTHETIC DATA" in markdown and shown in markdown
    assert f"{row.diff_vs_vanilla:+.3f} [" in markdown
    assert "do not cover the search's own variance" in markdown and "2 comparison(s)" in markdown
    assert "## Like-for-like faithfulness" in markdown and "128.0 / 128" in markdown
    assert "## Failed trials" in markdown and "non-finite training loss" in markdown
    assert (tmp_path / "failed_trials.csv").read_text().count("\n") == 2
    assert len(pd.read_csv(tmp_path / "faithfulness.csv")) == 6
    assert "SYNTHETIC" in paths["tex"].read_text()
    # et's 0.8 against vanilla's 0.5 over 50 clips: below the permutation test's resolution
    assert row.p_vs_vanilla < 0.001 and "| < 0.001 " in markdown
    assert "flips clips, not seeds" in markdown


@pytest.mark.parametrize(
    ("columns", "said", "not_said"),
    [({"energy_video": [0.4, 0.1]}, "inside the actor's box", "event's time window"),
     ({"energy_signal": [0.4, 0.1]}, "inside the event's time window", "actor's box"),
     ({"energy_video": [0.4, 0.1], "hit_signal": [0.5, 0.2]}, "actor's box", "frame-difference!"),
     ({"energy_video": [math.nan, math.nan]}, "", "Ground truth")],
)
def test_the_ground_truth_sentence_names_what_the_table_scores(tmp_path, columns, said, not_said):
    table = comparison_table([_summary("vanilla", 0.5)], "birds_synthetic", synthetic=True)
    faithfulness = pd.DataFrame({"method": ["vanilla"] * 2, "explainer": ["rollout", "random"],
                                 "gap": [0.2, 0.0], **columns})  # fmt: skip
    markdown = write_comparison(table, tmp_path, "t", {}, faithfulness=faithfulness)["md"]
    text = markdown.read_text()
    assert said in text and not_said not in text
    # both inputs scored: both sentences, in one ground-truth note
    signal = any(name.endswith("_signal") for name in columns)
    assert ("most relevant time patch touches the window" in text) == signal


def test_one_seed_still_has_an_interval():
    table = comparison_table([_summary("vanilla", 0.5, seeds=(1000,))], "x", synthetic=True)
    row = table.iloc[0]
    assert row.test_acc_low < row.test_acc_mean < row.test_acc_high
    assert math.isnan(row.test_acc_std)


def test_a_method_without_finished_runs_shows_na(tmp_path):
    table = comparison_table([MethodSummary("ifi", 2, 2, math.nan, {})], "real", synthetic=False)
    markdown = write_comparison(table, tmp_path, "t", {})["md"].read_text()
    assert "n/a" in markdown and "SYNTHETIC" not in markdown
