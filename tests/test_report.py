"""The comparison report: numbers, the paired test, failed trials, the SYNTHETIC label."""

import math

import pytest
from scipy import stats

from reports.comparison import MethodSummary, comparison_table, failures_table, write_comparison


def _runs(accuracies):
    return [{"seed": i, "test_accuracy": a, "occ_gap": 0.1 * a} for i, a in enumerate(accuracies)]


def test_table_means_stds_and_paired_test(tmp_path):
    vanilla = MethodSummary("vanilla", 4, 0, 0.5, {"train.lr": 1e-3}, _runs([0.50, 0.55, 0.60]))
    et = MethodSummary("et", 4, 1, 0.7, {"method.k": 1.5}, _runs([0.70, 0.72, 0.81]))
    et.failures = [("train_video_1", "FloatingPointError: non-finite training loss nan")]
    table = comparison_table([vanilla, et], "birds_synthetic", synthetic=True)
    row = table.set_index("method").loc["et"]
    assert row.test_acc_mean == pytest.approx((0.70 + 0.72 + 0.81) / 3)
    assert row.test_acc_std == pytest.approx(stats.tstd([0.70, 0.72, 0.81]))
    expected_p = stats.ttest_rel([0.70, 0.72, 0.81], [0.50, 0.55, 0.60]).pvalue
    assert row.p_vs_vanilla == pytest.approx(expected_p)
    assert math.isnan(table.set_index("method").loc["vanilla"].p_vs_vanilla)
    assert row.occ_gap == pytest.approx(0.1 * (0.70 + 0.72 + 0.81) / 3)
    paths = write_comparison(
        table, tmp_path, "birds_video", {"data": "x"}, failures_table([vanilla, et])
    )
    markdown = paths["md"].read_text()
    assert "SYNTHETIC DATA" in markdown and "0.743 ± 0.059" in markdown
    assert "## Failed trials" in markdown and "non-finite training loss" in markdown
    assert (tmp_path / "failed_trials.csv").read_text().count("\n") == 2
    assert "SYNTHETIC" in paths["tex"].read_text()


def test_a_method_without_finished_runs_shows_na(tmp_path):
    table = comparison_table([MethodSummary("ifi", 2, 2, math.nan, {})], "real", synthetic=False)
    markdown = write_comparison(table, tmp_path, "t", {})["md"].read_text()
    assert "n/a" in markdown and "SYNTHETIC" not in markdown
