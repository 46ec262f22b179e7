"""Mixed precision of the training steps (`train.precision`): fp32 on CPU is what it always was,
bf16 and fp16 (with loss scaling) really change the arithmetic, bad values are named."""

import pytest
import torch

from harness.config import (
    ConfigError,
    compose,
    resolve_paths,
    trial_config,
    validate_study,
    validate_trial_config,
)
from harness.train import autocast_dtype, train_and_evaluate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose(
        "birds_video",
        ["sweep=smoke", f"data.cache_dir={cache}", "model.hidden_size=16", "model.num_layers=1",
         "evaluation.occlusion_levels=[0.0]", "data.synthetic.train_per_class=8",
         "data.synthetic.val_per_class=4", "data.synthetic.test_per_class=4"],
    )  # fmt: skip
    resolve_paths(cfg)
    return cfg


def _train(cfg, method: str, precision: str) -> dict[str, float]:
    config = trial_config(cfg, method)
    config["train"]["precision"] = precision
    metrics = train_and_evaluate(config, lambda metrics, artifacts: None)
    return {k: v for k, v in metrics.items() if k != "epoch_seconds"}


def test_auto_is_fp32_on_cpu_and_bf16_only_on_cuda():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda")) is torch.float16


def test_cpu_auto_trains_exactly_as_fp32(tiny):
    assert _train(tiny, "vanilla", "auto") == _train(tiny, "vanilla", "fp32")


@pytest.mark.parametrize("method", ["vanilla", "ifi", "et"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_changes_the_training_steps_only(tiny, method, precision):
    reference, reduced = _train(tiny, method, "fp32"), _train(tiny, method, precision)
    assert torch.isfinite(torch.tensor(list(reduced.values()))).all()
    # the steps ran in reduced precision: the training loss moves, a little
    assert reduced["train_loss"] != reference["train_loss"]
    assert reduced["train_loss"] == pytest.approx(reference["train_loss"], abs=0.05)


def test_bad_precision_is_named(tiny):
    config = trial_config(tiny, "et")
    config["train"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match=r"x.yaml: train.precision: expected one of auto, fp32, "
                       r"bf16, fp16, got 'fp8'"):  # fmt: skip
        validate_trial_config(config, source="x.yaml")
    cfg = compose("birds_video", ["train.precision=half"])
    resolve_paths(cfg)
    with pytest.raises(ConfigError, match="methods.vanilla: train.precision: expected one of"):
        validate_study(cfg)
