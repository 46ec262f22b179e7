"""Signals and the hybrid through the data, ET's signal policies, the signal occlusion test and the
config checks: numbers against hand computations."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.config import ConfigError, compose, resolve_paths, trial_config, validate_study
from harness.data import iterate_batches, open_dataset
from harness.evaluate.occlusion import apply_signal_occlusion, occlusion_curve
from harness.explain.signal import relevance_over_time
from harness.methods.window import get_window_policy, salient_window

SMALL = {"train_per_class": 6, "val_per_class": 2, "test_per_class": 2}


def _tokens(*salient, n=8, low=0.1):
    r = torch.full((1, n), low)
    r[0, list(salient)] = 1.0
    return r


def test_window_crop_cuts_the_largest_salient_run_and_resamples_it():
    x = torch.randn(1, 64, 2)
    relevance = _tokens(2, 3, 6)  # runs {2, 3} and {6}; 8 samples per token
    assert salient_window(relevance[0], 64, margin=0.0) == (16, 32)
    out = get_window_policy("largest_region")(x, relevance, margin=0.0)
    expected = F.interpolate(x[:, 16:32].transpose(1, 2), size=64, mode="linear")
    torch.testing.assert_close(out, expected.transpose(1, 2))
    union = get_window_policy("union_box")(x, relevance, margin=0.0)
    expected = F.interpolate(x[:, 16:56].transpose(1, 2), size=64, mode="linear")
    torch.testing.assert_close(union, expected.transpose(1, 2))
    # a margin of 0.5 widens the 2-token run by one token on each side
    assert salient_window(relevance[0], 64, margin=0.5) == (8, 40)


def test_mask_soft_and_none_policies():
    x = torch.randn(2, 64, 3)
    relevance = torch.cat([_tokens(1), torch.zeros(1, 8)])  # second: no information
    masked = get_window_policy("mask")(x, relevance)
    keep = torch.zeros(64, dtype=torch.bool)
    keep[8:16] = True
    torch.testing.assert_close(masked[0], x[0] * keep[:, None])
    torch.testing.assert_close(masked[1], x[1])  # nothing salient -> everything kept
    soft = get_window_policy("soft")(x, relevance)
    torch.testing.assert_close(soft, x * relevance_over_time(relevance, 64)[..., None])
    assert get_window_policy("none")(x, relevance) is x
    with pytest.raises(ValueError, match="unknown signal policy 'crop'; expected one of"):
        get_window_policy("crop")


def test_signal_occlusion_fills_only_the_masked_tokens():
    x = torch.arange(2 * 16 * 1, dtype=torch.float32).view(2, 16, 1)
    mask = torch.tensor([[False, True, False, False], [False, False, False, True]])  # 4 samples
    zero = apply_signal_occlusion(x, mask, "zero")
    assert zero[0, 4:8].eq(0).all() and zero[1, 12:].eq(0).all()
    untouched = ~mask.repeat_interleave(4, dim=1)
    assert torch.equal(zero[untouched], x[untouched])
    mean = apply_signal_occlusion(x, mask, "mean")
    assert mean[0, 4:8].eq(x[0].mean()).all()
    blur = apply_signal_occlusion(x, mask, "blur")  # a ramp is its own moving average
    assert torch.equal(blur[0, 4:8], x[0, 4:8])
    with pytest.raises(ValueError, match="does not tile"):
        apply_signal_occlusion(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown occlusion value 'noise'"):
        apply_signal_occlusion(x, mask, "noise")


def test_each_input_loses_the_same_share_of_its_tokens():
    inputs = {"a": torch.ones(1, 10), "b": torch.ones(1, 4)}
    relevance = {"a": torch.arange(10.0)[None], "b": torch.arange(4.0)[None]}
    seen = []

    def occlude(masks):
        seen.append({m: int(k.sum()) for m, k in masks.items()})
        return {m: x.masked_fill(masks[m], 0) for m, x in inputs.items()}

    def predict_proba(x):  # right while the most relevant token of each input is intact
        ok = (x["a"][:, 9] > 0) & (x["b"][:, 3] > 0)
        return torch.stack([(~ok).float(), ok.float()], 1)

    curve = occlusion_curve(predict_proba, inputs, torch.ones(1, dtype=torch.long), relevance,
                            occlude, levels=(0.0, 0.5))  # fmt: skip
    assert seen == [{"a": 5, "b": 2}, {"a": 5, "b": 2}]
    assert curve.morf_accuracy == [1.0, 0.0] and curve.lerf_accuracy == [1.0, 1.0]


def _data_cfg(tmp_path, **overrides):
    cfg = compose("birds_signal", [f"data.cache_dir={tmp_path}"]
                  + [f"data.synthetic.{k}={v}" for k, v in SMALL.items()])  # fmt: skip
    data = trial_config(cfg, "vanilla")["data"]
    return {**data, **overrides}


def test_signals_are_standardised_with_training_statistics(tmp_path):
    dataset = open_dataset(_data_cfg(tmp_path), ("signal",))
    assert dataset.video is None and dataset.inputs == ("signal",)
    assert dataset.signal.shape == (40, 256, 6) and dataset.signal_channels == 6
    train = dataset.indices("train")
    batch = next(iterate_batches(dataset, train, len(train)))
    x = batch.inputs["signal"].double()
    torch.testing.assert_close(x.mean((0, 1)), torch.zeros(6, dtype=torch.float64), atol=1e-5,
                               rtol=0)  # fmt: skip
    std = x.std((0, 1), unbiased=False)
    torch.testing.assert_close(std, torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0)
    raw = torch.from_numpy(np.asarray(dataset.signal[train]))
    expected = (raw - raw.mean((0, 1))) / raw.std((0, 1), unbiased=False)
    torch.testing.assert_close(x.float(), expected, atol=1e-4, rtol=1e-4)
    both = open_dataset(_data_cfg(tmp_path), ("video", "signal"))
    assert set(next(iterate_batches(both, train, 2)).inputs) == {"video", "signal"}


def test_a_signal_only_birds_folder(tmp_path):
    root = tmp_path / "BIRDS"
    (root / "signal").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        clip_id, label = f"c{i}", ("fall", "no_risk")[i % 2]
        length = 100 + 10 * i  # other lengths than the model's: resampled
        if i % 2:
            np.save(root / "signal" / f"{clip_id}.npy", rng.normal(size=(length, 3)))
        else:
            with (root / "signal" / f"{clip_id}.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["ax", "ay", "az"])
                writer.writerows(rng.normal(size=(length, 3)).round(4).tolist())
        rows.append([clip_id, label, split])
    with (root / "annotations.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["clip_id", "label", "split"], *rows])
    data = _data_cfg(tmp_path / "cache", root=str(root), signal_length=64)
    dataset = open_dataset(data, ("signal",))
    assert dataset.signal.shape == (8, 64, 3) and not dataset.synthetic
    assert dataset.class_names == ("fall", "no_risk")
    assert dataset.labels.tolist() == [0, 1] * 4


def test_signal_and_hybrid_configs_name_the_bad_key(tmp_path):
    def check(experiment, overrides):
        cfg = compose(experiment, [f"study.output_dir={tmp_path}", *overrides])
        resolve_paths(cfg)
        validate_study(cfg)

    check("birds_signal", [])
    check("birds_hybrid", [])
    with pytest.raises(ConfigError, match="model.signal_length: expected data.signal_length"):
        check("birds_signal", ["model.signal_length=128"])
    with pytest.raises(ConfigError, match="model.video.image_size: expected data.synthetic"):
        check("birds_hybrid", ["model.video.image_size=48"])
    with pytest.raises(ConfigError, match="model.signal.patch_length: expected a divisor"):
        check("birds_hybrid", ["model.signal.patch_length=48"])
    with pytest.raises(ConfigError, match="method.signal_policy: expected one of"):
        check("birds_signal", ["methods.et.signal_policy=crop"])
