"""Hybrid (multimodal) classifier: a video branch and a signal branch with late fusion.

The ET poster's multimodal model: a video model (TimeSformer by default; any video architecture by
`model.video.name`) reads the clip, a Linformer reads the wearable signal, each ends in its own
classifier head, and their decisions are fused late:

    z_v = video(clip),  z_s = signal(signal)                 branch logits [B, K]
    z   = w_v z_v + w_s z_s,   (w_v, w_s) = softmax(a)       fused logits, a learned (init 0: mean)

Each branch stays a complete classifier, so each is explained on its own (its own attention, its
own class score) and guided on its own input; the training methods add each branch's
cross-entropy to the fused one (`branch_weight`, see harness/methods/base.py), the combined loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.models import adapter_of, build_model
from harness.models.base import Adapter, Need


@dataclass
class HybridOutput:
    logits: torch.Tensor  # fused [B, K]
    branches: dict[str, Any]  # each branch's own captured output


class HybridAdapter(Adapter):
    """Two branches, each a model of its own architecture (`model.video`, `model.signal`), each
    explained by its own adapter: the hybrid serves the explainers both branches serve, and each
    branch prunes its input (ET's `crop_policy`, `signal_policy`) if its architecture can."""

    name = "hybrid"
    inputs = ("video", "signal")

    def build(
        self, num_classes: int, signal_channels: int | None, *, video: Mapping, signal: Mapping
    ) -> nn.Module:
        return HybridClassifier(
            build_model(video, num_classes, signal_channels),
            build_model(signal, num_classes, signal_channels),
        )

    def check(self, need: Need, data, cfg, where: str) -> None:
        for modality in self.inputs:
            branch = cfg.get(modality)
            need(isinstance(branch, Mapping), f"{where}.{modality}", "a mapping")
            adapter = adapter_of(branch, f"{where}.{modality}")
            need(adapter.inputs == (modality,), f"{where}.{modality}.name",
                 f"a model reading {modality} only")  # fmt: skip
            adapter.check(need, data, branch, f"{where}.{modality}")

    def reader(self, cfg: Mapping[str, Any], modality: str) -> Adapter:
        return adapter_of(cfg[modality], f"model.{modality}")

    def supported(self, cfg: Mapping[str, Any]) -> tuple[str, ...]:
        video, signal = (adapter_of(cfg[m]).supported(cfg[m]) for m in self.inputs)
        return tuple(name for name in video if name in signal)


class HybridClassifier(nn.Module):
    modalities = ("video", "signal")
    adapter = HybridAdapter()

    def __init__(self, video: nn.Module, signal: nn.Module) -> None:
        super().__init__()
        self.video = video
        self.signal = signal
        self.fusion = nn.Parameter(torch.zeros(2))  # softmax -> (w_video, w_signal)

    def branch(self, modality: str) -> nn.Module:
        if modality not in self.modalities:
            raise KeyError(f"no {modality!r} branch; this model has {list(self.modalities)}")
        return getattr(self, modality)

    def fuse(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = self.fusion.softmax(0)
        return weights[0] * logits["video"] + weights[1] * logits["signal"]

    def forward(
        self, video: torch.Tensor, signal: torch.Tensor, *, capture: bool = False
    ) -> HybridOutput:
        outputs = {
            "video": self.video(video, capture=capture),
            "signal": self.signal(signal, capture=capture),
        }
        return HybridOutput(self.fuse({m: o.logits for m, o in outputs.items()}), outputs)
