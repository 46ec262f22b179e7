"""Evaluation of a trained model: accuracy, and the occlusion (deletion) test of its explainer.

The occlusion test (du Toit's TimeSformer study, the 001 seed): occlude the most relevant
(frame, patch) tokens by the method's own explainer and measure accuracy (MoRF), repeat with the
least relevant first (LeRF); report both curves, their areas and the gap, plus the seed's protocol
(30% of the spatial patches and 2 frames). Occlusion is applied to the full-resolution clip and the
method's whole prediction pipeline runs on it (for ET: explain, crop, classify), so the curve at 0%
is the method's test accuracy. Relevance comes from the unoccluded clip, explaining the predicted
class.

Any explainer can be put to the test on a trained method (`evaluate_occlusion(...,
explainer="tibav")`): its maps are computed on the method's view of the clip, while the predictions
still go through the method's own pipeline. `python -m harness.evaluate` runs every explainer so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data import VideoDataset, iterate_batches, open_dataset
from harness.evaluate.occlusion import OcclusionCurve, occlusion_curve, seed_protocol_accuracy
from harness.explain.video import explain_video
from harness.methods import TrainingMethod, build_method
from harness.methods.base import explainer_kwargs as config_explainer_kwargs
from harness.models import TimeSformerClassifier, build_model


@dataclass(frozen=True)
class Accuracy:
    loss: float
    accuracy: float


@dataclass(frozen=True)
class OcclusionResult:
    curve: OcclusionCurve
    seed_morf_accuracy: float
    seed_lerf_accuracy: float
    # With `keep_relevance=True`: the maps used [N, T, h, w] (on the CPU) and their dataset rows [N]
    relevance: torch.Tensor | None = None
    rows: np.ndarray | None = None

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


def explain_clips(
    model: TimeSformerClassifier,
    method: TrainingMethod,
    clips: torch.Tensor,
    explainer: str | None = None,
    explainer_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Relevance [B, T, h, w] of the predicted class of whole clips.

    `explainer=None`: the method's own (`method.explain`). Otherwise explainer `explainer` on the
    method's view of the clips, with `explainer_kwargs` (default: the explainer's parameters found
    in the method's config, e.g. ET's k and heads for rollout_fem and fem, else the explainer's
    defaults); `generator` seeds `random`.
    """
    if explainer is None:
        return method.explain(model, clips)
    if explainer_kwargs is None:
        explainer_kwargs = config_explainer_kwargs(explainer, method.cfg)
    explanation = explain_video(
        model, method.view(clips), explainer, generator=generator, **dict(explainer_kwargs)
    )
    return explanation.relevance.to(clips.device)


def evaluate_occlusion(
    model: TimeSformerClassifier,
    method: TrainingMethod,
    dataset: VideoDataset,
    indices: np.ndarray,
    cfg: Mapping[str, Any],
    batch_size: int,
    device: torch.device | str = "cpu",
    explainer: str | None = None,
    explainer_kwargs: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    keep_relevance: bool = False,
) -> OcclusionResult:
    """Occlusion curves and the seed protocol on `indices`.

    Relevance from `explainer` (default: the method's own, `method.explainer`) with
    `explainer_kwargs` (see `explain_clips`); `random` relevance is drawn from a generator seeded
    with `seed`, so it is deterministic. Predictions: the method's whole pipeline
    (`method.predict`). `keep_relevance`: return the maps and their rows too (for trends and
    galleries).
    """
    model.eval()
    _, h, w = model.grid
    levels: Sequence[float] = [float(x) for x in cfg["occlusion_levels"]]
    value = str(cfg["occlusion_value"])
    seed_cfg = cfg["seed_protocol"]
    generator = torch.Generator().manual_seed(int(seed)) if explainer == "random" else None

    def predict_proba(clips: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return method.predict(model, clips).detach().softmax(-1)

    curves, seed_morf, seed_lerf = [], 0.0, 0.0
    kept, rows = [], []
    for batch in iterate_batches(dataset, indices, batch_size, device=device):
        maps = explain_clips(model, method, batch.clips, explainer, explainer_kwargs, generator)
        relevance = maps.flatten(2)  # [B, T, P]
        curves.append(
            occlusion_curve(
                predict_proba, batch.clips, batch.labels, relevance, (h, w), levels, value
            )
        )
        morf, lerf = seed_protocol_accuracy(
            predict_proba, batch.clips, batch.labels, relevance, (h, w),
            float(seed_cfg["spatial_fraction"]), int(seed_cfg["frames"]), value,
        )  # fmt: skip
        seed_morf += morf * len(batch.labels)
        seed_lerf += lerf * len(batch.labels)
        if keep_relevance:
            kept.append(maps.detach().cpu())
            rows.append(batch.index.cpu().numpy())
    n = max(len(indices), 1)
    return OcclusionResult(
        OcclusionCurve.merge(curves),
        seed_morf / n,
        seed_lerf / n,
        relevance=torch.cat(kept) if kept else None,
        rows=np.concatenate(rows) if rows else None,
    )


def trained_method(config: Mapping[str, Any], model: TimeSformerClassifier) -> TrainingMethod:
    """The trial's method built as `harness.train` builds it, in its state at the end of training:
    ET past its warm-up predicts through its explain-and-restrict pipeline (as it did for the
    trial's test accuracy); its cached training explanations are not needed for that."""
    epochs = int(config["train"]["epochs"])
    method = build_method(
        config["method"], input_size=model.image_size, epochs=epochs,
        evaluation_explainer=str(config["evaluation"]["explainer"]),
    )  # fmt: skip
    warmup = getattr(method, "warmup_epochs", None)
    if warmup is not None:  # ET: `start_epoch` of the last epoch set this
        method.active = epochs - 1 >= warmup
    return method


@dataclass
class TrainedModel:
    dataset: VideoDataset
    model: TimeSformerClassifier
    method: TrainingMethod


def load_trained(
    config: Mapping[str, Any], weights: Path, device: torch.device | str = "cpu"
) -> TrainedModel:
    """The dataset, the model (its state dict from `weights`, e.g. a trial's model.pt) and the
    trained method of a trial config. ValueError when the weights do not fit the config's model."""
    dataset = open_dataset(config["data"])
    model = build_model(config["model"], dataset.num_classes)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ValueError(
            f"{weights}: the weights do not fit the config's model: {' '.join(first[:3])}"
        ) from None
    model.to(device).eval()
    return TrainedModel(dataset, model, trained_method(config, model))
