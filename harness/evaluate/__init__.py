"""Evaluation of a trained model: accuracy, and the occlusion (deletion) test of its explainer.

The occlusion test (du Toit's TimeSformer study, the 001 seed): occlude the most relevant
(frame, patch) tokens by the method's own explainer and measure accuracy (MoRF), repeat with the
least relevant first (LeRF); report both curves, their areas and the gap, plus the seed's protocol
(30% of the spatial patches and 2 frames). Occlusion is applied to the full-resolution clip and the
method's whole prediction pipeline runs on it (for ET: explain, crop, classify), so the curve at 0%
is the method's test accuracy. Relevance comes from the unoccluded clip, explaining the predicted
class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.data import VideoDataset, iterate_batches
from harness.evaluate.occlusion import OcclusionCurve, occlusion_curve, seed_protocol_accuracy
from harness.methods import TrainingMethod
from harness.models import TimeSformerClassifier


@dataclass(frozen=True)
class Accuracy:
    loss: float
    accuracy: float


@dataclass(frozen=True)
class OcclusionResult:
    curve: OcclusionCurve
    seed_morf_accuracy: float
    seed_lerf_accuracy: float

    def as_metrics(self, prefix: str = "occ") -> dict[str, float]:
        metrics = self.curve.as_metrics(prefix)
        metrics[f"{prefix}_seed_morf_acc"] = self.seed_morf_accuracy
        metrics[f"{prefix}_seed_lerf_acc"] = self.seed_lerf_accuracy
        metrics[f"{prefix}_seed_gap"] = self.seed_lerf_accuracy - self.seed_morf_accuracy
        return metrics


@torch.no_grad()
def evaluate_accuracy(
    model: TimeSformerClassifier,
    method: TrainingMethod,
    dataset: VideoDataset,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> Accuracy:
    model.eval()
    loss_sum, correct = 0.0, 0
    for batch in iterate_batches(dataset, indices, batch_size, device=device):
        with torch.enable_grad():  # ET's gradient explainers need it; no parameter is updated
            logits = method.predict(model, batch.clips).detach()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum").item()
        correct += (logits.argmax(1) == batch.labels).sum().item()
    n = max(len(indices), 1)
    return Accuracy(loss=loss_sum / n, accuracy=correct / n)


def evaluate_occlusion(
    model: TimeSformerClassifier,
    method: TrainingMethod,
    dataset: VideoDataset,
    indices: np.ndarray,
    cfg: Mapping[str, Any],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> OcclusionResult:
    """Occlusion curves and the seed protocol on `indices`, with `method.explainer`'s maps."""
    model.eval()
    _, h, w = model.grid
    levels: Sequence[float] = [float(x) for x in cfg["occlusion_levels"]]
    value = str(cfg["occlusion_value"])
    seed = cfg["seed_protocol"]

    def predict_proba(clips: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return method.predict(model, clips).detach().softmax(-1)

    curves, seed_morf, seed_lerf = [], 0.0, 0.0
    for batch in iterate_batches(dataset, indices, batch_size, device=device):
        relevance = method.explain(model, batch.clips).flatten(2)  # [B, T, P]
        curves.append(
            occlusion_curve(
                predict_proba, batch.clips, batch.labels, relevance, (h, w), levels, value
            )
        )
        morf, lerf = seed_protocol_accuracy(
            predict_proba, batch.clips, batch.labels, relevance, (h, w),
            float(seed["spatial_fraction"]), int(seed["frames"]), value,
        )  # fmt: skip
        seed_morf += morf * len(batch.labels)
        seed_lerf += lerf * len(batch.labels)
    n = max(len(indices), 1)
    return OcclusionResult(OcclusionCurve.merge(curves), seed_morf / n, seed_lerf / n)
