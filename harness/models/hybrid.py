"""Hybrid (multimodal) classifier: a video branch and a signal branch with late fusion.

The ET poster's multimodal model: a TimeSformer reads the clip, a Linformer reads the wearable
signal, each ends in its own classifier head, and their decisions are fused late:

    z_v = video(clip),  z_s = signal(signal)                 branch logits [B, K]
    z   = w_v z_v + w_s z_s,   (w_v, w_s) = softmax(a)       fused logits, a learned (init 0: mean)

Each branch stays a complete classifier, so each is explained on its own (its own attention, its
own class score) and guided on its own input; the training methods add each branch's
cross-entropy to the fused one (`branch_weight`, see harness/methods/base.py), the combined loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.models.signal import SignalOutput, SignalTransformer
from harness.models.video import TimeSformerClassifier, VideoOutput


@dataclass
class HybridOutput:
    logits: torch.Tensor  # fused [B, K]
    branches: dict[str, VideoOutput | SignalOutput]


class HybridClassifier(nn.Module):
    modalities = ("video", "signal")

    def __init__(self, video: TimeSformerClassifier, signal: SignalTransformer) -> None:
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
