"""Resuming: a training run continued from a saved state is the run never stopped, and a whole
study killed with SIGKILL and run again finishes with the trials and MLflow runs of one
uninterrupted study."""

import math

import pytest

from harness.config import compose, resolve_paths, trial_config
from harness.train import STATE_FILE, train_and_evaluate


@pytest.fixture
def et_config(tmp_path):
    cfg = compose(
        "birds_video",
        ["sweep=smoke", f"data.cache_dir={tmp_path / 'cache'}", "model.hidden_size=16",
         "model.num_layers=1", "evaluation.occlusion_levels=[0.0,0.5]", "train.epochs=3",
         # ET from the first epoch, explanations refreshed at epochs 0 and 2: a run resumed at
         # epoch 1 needs the cached ones
         "methods.et.warmup_fraction=0.0", "methods.et.refresh_every=2"],
    )  # fmt: skip
    resolve_paths(cfg)
    return trial_config(cfg, "et")


def _run(config, folder, resume_from=None):
    """Train, saving the state of every epoch to folder/<epoch>; returns the reports."""
    reports = []

    def save(state, artifacts):
        state.save(folder / str(state.epoch))

    train_and_evaluate(
        config, lambda m, a: reports.append(m), checkpoint=save, resume_from=resume_from
    )
    return reports


def _same(a, b):
    keys = set(a) - {"epoch_seconds"}
    assert keys == set(b) - {"epoch_seconds"}
    for key in keys:
        assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key


def test_a_resumed_run_continues_exactly_where_it_stopped(et_config, tmp_path):
    straight = _run(et_config, tmp_path / "straight")
    assert [r["epoch"] for r in straight] == [1, 2, 3]
    assert (tmp_path / "straight" / "1" / STATE_FILE).is_file()

    resumed = _run(et_config, tmp_path / "resumed", resume_from=tmp_path / "straight" / "1")
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(resumed, straight[1:]):
        _same(a, b)

    # restored after its last epoch (the driver died before it recorded the end): the same
    # final report again, from the restored model
    again = _run(et_config, tmp_path / "again", resume_from=tmp_path / "straight" / "3")
    assert len(again) == 1
    _same(again[0], straight[-1])
    assert "test_accuracy" in again[0]
