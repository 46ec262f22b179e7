"""The architecture registry and its adapters: config-time checks and refusals naming the model and
the explainer, the one `explain` entry point on single- and multi-input models."""

import pytest
import torch

from harness import explain as explain_package
from harness.config import ConfigError, compose, resolve_paths, validate_study
from harness.explain import EXPLAINERS, explain
from harness.models import ARCHITECTURES, adapter_of, build_model, model_inputs
from harness.models.base import EXPLAINERS as ADAPTER_EXPLAINERS
from harness.models.pool_t import PoolTAdapter


class CamOnlyPoolT(PoolTAdapter):
    """A Pool-T that serves the CAM explainers only (a model without usable attention)."""

    name = "cam_only"
    explainers = ("gradcam", "eigencam", "random")


def _study(tmp_path, experiment, *overrides):
    cfg = compose(experiment, [f"study.output_dir={tmp_path}", *overrides])
    resolve_paths(cfg)
    return cfg


def test_every_registered_architecture_declares_its_inputs():
    assert {name: adapter_of({"name": name}).inputs for name in ARCHITECTURES} == {
        "timesformer": ("video",), "pool_t": ("video",), "video_swin_t": ("video",),
        "linformer": ("signal",), "hybrid": ("video", "signal"),
    }  # fmt: skip
    assert model_inputs({"name": "pool_t"}) == ("video",)
    assert ADAPTER_EXPLAINERS == EXPLAINERS
    with pytest.raises(ValueError, match=r"model.name: unknown model 'vit'; expected one of: "):
        adapter_of({"name": "vit"})


def test_an_unsupported_explainer_is_refused_at_config_time_naming_both(tmp_path, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "cam_only", "test_model_adapters:CamOnlyPoolT")
    cfg = _study(tmp_path, "birds_video", "model=pool_t", "model.name=cam_only")
    with pytest.raises(ConfigError, match=(
        r"methods.vanilla: evaluation.explainer: model cam_only does not support explainer "
        r"'rollout_fem'; it supports: gradcam, eigencam, random"
    )):  # fmt: skip
        validate_study(cfg)
    cfg = _study(tmp_path, "birds_video", "model=pool_t", "model.name=cam_only",
                 "evaluation.explainer=gradcam", "study.methods=[et]",
                 "methods.et.explainer=tibav")  # fmt: skip
    with pytest.raises(ConfigError, match=r"methods.et: method.explainer: model cam_only does not "
                                          r"support explainer 'tibav'"):  # fmt: skip
        validate_study(cfg)
    with pytest.raises(ValueError, match="model cam_only does not support explainer 'rollout'"):
        model = build_model({"name": "cam_only", "num_frames": 2, "image_size": 8,
                             "patch_size": 4, "hidden_size": 8, "num_heads": 2}, 2)  # fmt: skip
        model.adapter = CamOnlyPoolT()
        explain(model, torch.rand(1, 2, 3, 8, 8), "rollout")


def test_model_configs_are_checked_against_the_data_before_anything_runs(tmp_path):
    for experiment, overrides, message in (
        ("birds_video", ["model=pool_t", "model.image_size=24"],
         r"model.image_size: expected data.synthetic.frame_size / downsample_factor = 32"),
        ("birds_video", ["model=pool_t", "model.num_heads=5"],
         r"model.num_heads: expected a divisor of model.hidden_size \(64\)"),
        ("birds_hybrid", ["model@model.video=pool_t", "model.video.num_frames=4"],
         r"model.video.num_frames: expected data.num_frames = 8"),
        ("birds_hybrid", ["model.video.name=linformer"],
         r"model.video.name: expected a model reading video only, got 'linformer'"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            validate_study(_study(tmp_path, experiment, *overrides))
    validate_study(_study(tmp_path, "birds_hybrid", "model@model.video=pool_t"))


def test_explain_gives_relevance_per_input_for_any_model():
    torch.manual_seed(0)
    video = {"name": "pool_t", "num_frames": 2, "image_size": 8, "patch_size": 4,
             "hidden_size": 8, "num_heads": 2}  # fmt: skip
    signal = {"name": "linformer", "signal_length": 32, "channels": 2, "patch_length": 8,
              "hidden_size": 8, "num_heads": 2, "proj_dim": 2}  # fmt: skip
    hybrid = build_model({"name": "hybrid", "video": video, "signal": signal}, 3).eval()
    inputs = {"video": torch.rand(2, 2, 3, 8, 8), "signal": torch.randn(2, 32, 2)}
    relevance = explain(hybrid, inputs, "tibav")
    assert {m: r.shape for m, r in relevance.items()} == {"video": (2, 2, 2, 2), "signal": (2, 4)}
    with torch.no_grad():
        fused = hybrid(**inputs).logits.argmax(-1)
    for m, r in relevance.items():  # each branch explained for the fused prediction
        single = explain_package.explain_input(hybrid.branch(m), inputs[m], "tibav", target=fused)
        torch.testing.assert_close(r, single.relevance)
    single = explain(hybrid.video, inputs["video"], "rollout")
    assert isinstance(single, torch.Tensor) and single.shape == (2, 2, 2, 2)


def test_discard_ratio_applies_to_each_window_or_frame_map_on_its_own():
    """vit-explain's rule per attention map: each group's block loses its own lowest entries
    (a Pool-T frame map spares its frame token's self-attention); merges and readouts are no
    attention maps and are left alone."""
    from harness.explain.mixing import GroupMixing, ReadoutMixing

    maps = [[[0.5, 0.3], [0.2, 0.9]], [[0.1, 0.6], [0.7, 0.4]]]
    blocks = torch.tensor(maps, dtype=torch.float64)[None]  # [1, G, m, m]
    corner = torch.zeros(1, 1, dtype=torch.float64)
    mixing = GroupMixing(5, torch.tensor([[1, 2], [3, 4]]), (corner, blocks))
    kept = mixing.discard(0.5).parts[1]  # 2 of each map's 4 entries go
    assert kept.tolist() == [[[[0.5, 0.0], [0.0, 0.9]], [[0.0, 0.6], [0.7, 0.0]]]]
    spared = GroupMixing(5, mixing.index, (corner, blocks), class_first=True).discard(0.5)
    assert spared.parts[1][0, 1].tolist() == [[0.1, 0.6], [0.7, 0.0]]  # first entry spared
    merge = GroupMixing(5, mixing.index, (corner, blocks), attention=False)
    assert merge.discard(0.5) is merge
    readout = ReadoutMixing(5, (torch.rand(1, 5),))
    assert readout.discard(0.5) is readout


@pytest.mark.parametrize("name", ["pool_t", "video_swin_t"])
def test_rollout_with_a_discard_ratio_runs_on_every_video_model(name):
    torch.manual_seed(0)
    cfg = {"name": name, "num_frames": 4, "image_size": 16}
    cfg |= {"patch_size": 8, "hidden_size": 8, "num_heads": 2} if name == "pool_t" else {
        "patch_size": [2, 4, 4], "embed_dim": 8, "depths": [2], "num_heads": [2],
        "window_size": [2, 2, 2]}  # fmt: skip
    model = build_model(cfg, 3).eval()
    clips = torch.rand(2, 4, 3, 16, 16)
    plain, discarded = (explain(model, clips, "rollout", discard_ratio=r) for r in (0.0, 0.5))
    assert plain.shape == discarded.shape and torch.isfinite(discarded).all()
    assert not torch.allclose(plain, discarded)
