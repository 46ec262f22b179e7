"""The final-training command and model loading from a local checkpoint."""

import pytest
import torch
import yaml
from transformers import TimesformerForVideoClassification

from harness.config import ConfigError, compose, resolve_paths, trial_config
from harness.models.video import TimeSformerClassifier
from harness.train import load_config, main, train_and_evaluate


@pytest.fixture
def tiny_config(tmp_path):
    cfg = compose(
        "birds_video",
        ["sweep=smoke", f"data.cache_dir={tmp_path / 'cache'}", "model.hidden_size=16",
         "model.num_layers=1", "evaluation.occlusion_levels=[0.0,0.5]"],
    )  # fmt: skip
    resolve_paths(cfg)
    return trial_config(cfg, "et")


def test_training_reports_every_epoch_and_finishes_with_test_metrics(tiny_config, tmp_path):
    tiny_config["train"]["epochs"] = 2
    reports = []
    metrics = train_and_evaluate(tiny_config, lambda m, a: reports.append((m, a)), tmp_path / "out")
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert reports[0][1] is None and reports[1][1] == tmp_path / "out"
    assert "test_accuracy" not in reports[0][0]
    assert {"test_accuracy", "occ_morf_auc", "occ_lerf_auc", "occ_gap"} <= set(metrics)
    # accuracy at 0% occlusion is the test accuracy (same pipeline, same clips)
    assert metrics["occ_morf_acc_0"] == pytest.approx(metrics["test_accuracy"])
    assert (tmp_path / "out" / "model.pt").is_file()
    assert (tmp_path / "out" / "gallery_rollout_fem.png").is_file()
    assert (tmp_path / "out" / "occlusion_curves.png").is_file()
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text()) == tiny_config


def test_same_seed_same_result(tiny_config):
    first = train_and_evaluate(tiny_config, lambda m, a: None)
    second = train_and_evaluate(tiny_config, lambda m, a: None)
    assert first["val_loss"] == second["val_loss"]


def test_cli_reads_an_exported_config_with_overrides(tiny_config, tmp_path, capsys):
    path = tmp_path / "et.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main([str(path), "seed=1", "train.batch_size=32"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")


def test_bad_exported_config_is_named(tiny_config, tmp_path):
    tiny_config["method"]["k"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    with pytest.raises(ConfigError, match=r"bad.yaml: method.k: expected K >= 0"):
        load_config(path, [])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml", [])


def test_pretrained_local_checkpoint_is_loaded_with_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = TimeSformerClassifier.from_config(
        5, num_frames=4, image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2
    )
    source.model.save_pretrained(tmp_path / "ckpt")
    loaded = TimeSformerClassifier.from_config(3, pretrained=str(tmp_path / "ckpt"))
    assert isinstance(loaded.model, TimesformerForVideoClassification)
    assert loaded.model.classifier.out_features == 3
    name = "timesformer.encoder.layer.0.attention.attention.qkv.weight"
    torch.testing.assert_close(loaded.model.state_dict()[name], source.model.state_dict()[name])
    assert loaded.grid == (4, 2, 2)
    assert loaded(torch.rand(1, 4, 3, 16, 16), capture=True).attention.temporal[0].shape[1] == 4


def test_non_finite_loss_fails_the_trial_with_its_reason(tiny_config, monkeypatch):
    from harness.methods import METHODS, TrainingMethod

    class Diverging(TrainingMethod):  # a method whose loss blows up: the fault to inject
        def loss(self, model, batch):
            loss, logits = super().loss(model, batch)
            return loss * float("inf"), logits

    monkeypatch.setitem(METHODS, "diverging", Diverging)
    tiny_config["method"] = {"name": "diverging"}
    with pytest.raises(FloatingPointError, match="non-finite training loss inf at epoch 0"):
        train_and_evaluate(tiny_config, lambda m, a: None)
