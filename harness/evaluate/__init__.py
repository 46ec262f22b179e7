"""Evaluation of a trained model: accuracy, and the occlusion (deletion) test of its explainer.

The occlusion test (du Toit's TimeSformer study, the 001 seed): occlude the most relevant
(frame, patch) tokens by the method's own explainer and measure accuracy (MoRF), repeat with the
least relevant first (LeRF); report both curves, their areas and the gap, plus the seed's protocol
(30% of the spatial patches and 2 frames). Occlusion is applied to the full-resolution clip and the
method's whole prediction pipeline runs on it (for ET: explain, crop, classify), so the curve at 0%
is the method's test accuracy. Relevance comes from the unoccluded clip, explaining the predicted
class. Signals are occluded per time token the same way (no seed protocol: it is a video
protocol); the hybrid has both inputs occluded, each by its own branch's relevance, at each level
(the joint curve), and with `per_input` also one input at a time, the other left whole (one curve
per input: which input's relevance the model's decision follows).

Any explainer can be put to the test on a trained method (`evaluate_occlusion(...,
explainer="tibav")`): its maps are computed on the method's view of the clip, while the predictions
still go through the method's own pipeline. `python -m harness.evaluate` runs every explainer so,
or like for like (`--protocol like_for_like`, below).

Like for like (`faithfulness_table`, the study's final stage): every method's model is tested with
the same explainers (`evaluation.explainers`, default parameters) on its plain forward of whole
inputs (`plain_predict`), with the gap relative to the clean accuracy, the distinct values of the
maps and, on synthetic data, their ground-truth localisation (harness/evaluate/localisation.py).
Every explainer call of the evaluation goes through `explain_inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.data import Dataset, iterate_batches, open_dataset
from harness.evaluate.localisation import (
    box_coverage,
    motion_relevance,
    pointing_hit,
    relevance_mass,
    window_coverage,
)
from harness.evaluate.occlusion import (
    OcclusionCurve,
    distinct_values,
    occlusion_curve,
    seed_protocol_accuracy,
)
from harness.methods import TrainingMethod, build_method
from harness.methods.modality import modalities_of
from harness.models import build_model, model_inputs


@dataclass(frozen=True)
class Accuracy:
    loss: float
    accuracy: float
    # With `keep_predictions=True`: per clip, its dataset row, label, predicted class and class
    # probabilities (columns row, label, predicted, prob_<class name>)
    predictions: pd.DataFrame | None = None


@dataclass(frozen=True)
class OcclusionResult:
    curve: OcclusionCurve
    seed_morf_accuracy: float | None  # the seed protocol (video inputs only)
    seed_lerf_accuracy: float | None
    # With `keep_relevance=True`: the maps used per input, e.g. video [N, T, h, w] (on the CPU),
    # and their dataset rows [N]
    relevance: dict[str, torch.Tensor] | None = None
    rows: np.ndarray | None = None
    # Per input: the mean number of distinct values of a clip's map, and the tokens per map
    distinct: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    # Per input, the curve with only that input occluded (with `per_input=True`; a single-input
    # model's is `curve` itself)
    by_input: dict[str, OcclusionCurve] = field(default_factory=dict)

    def as_metrics(self, prefix: str = "occ") -> dict[str, float]:
        """The curve's metrics, ``{prefix}_distinct_<input>`` (mean distinct values of a map;
        ``{prefix}_tokens_<input>`` tokens per map) and the seed protocol's (video)."""
        metrics = self.curve.as_metrics(prefix)
        for m, value in self.distinct.items():
            metrics[f"{prefix}_distinct_{m}"] = value
            metrics[f"{prefix}_tokens_{m}"] = float(self.tokens[m])
        if self.seed_morf_accuracy is None:
            return metrics
        metrics[f"{prefix}_seed_morf_acc"] = self.seed_morf_accuracy
        metrics[f"{prefix}_seed_lerf_acc"] = self.seed_lerf_accuracy
        metrics[f"{prefix}_seed_gap"] = self.seed_lerf_accuracy - self.seed_morf_accuracy
        return metrics


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    method: TrainingMethod,
    dataset: Dataset,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    keep_predictions: bool = False,
    plain: bool = False,
) -> Accuracy:
    """Loss and accuracy of the method's prediction pipeline on `indices` (with `plain`: of the
    model's plain forward, `plain_predict`; with `keep_predictions`: every clip's prediction)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for batch in iterate_batches(dataset, indices, batch_size, device=device):
        with torch.set_grad_enabled(not plain):  # ET's gradient explainers; nothing is updated
            logits = predict_logits(method, model, batch.inputs, plain).detach()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum").item()
        correct += (logits.argmax(1) == batch.labels).sum().item()
        if keep_predictions:
            kept.append((batch.index.cpu().numpy(), batch.labels.cpu().numpy(),
                         logits.softmax(-1).cpu().numpy()))  # fmt: skip
    n = max(len(indices), 1)
    predictions = None
    if keep_predictions:
        rows, labels, probs = (np.concatenate(part) for part in zip(*kept, strict=True))
        predictions = pd.DataFrame({"row": rows, "label": labels, "predicted": probs.argmax(1)})
        for k, name in enumerate(dataset.class_names):
            predictions[f"prob_{name}"] = probs[:, k]
    return Accuracy(loss=loss_sum / n, accuracy=correct / n, predictions=predictions)


def evaluate_occlusion(
    model: nn.Module,
    method: TrainingMethod,
    dataset: Dataset,
    indices: np.ndarray,
    cfg: Mapping[str, Any],
    batch_size: int,
    device: torch.device | str = "cpu",
    explainer: str | None = None,
    explainer_params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    keep_relevance: bool = False,
    plain: bool = False,
    per_input: bool = False,
) -> OcclusionResult:
    """Occlusion curves (and, for video, the seed protocol) on `indices`.

    Relevance of the predicted class on the whole inputs from `explainer` (default: the method's
    own, `method.explainer`) with `explainer_params` (see `TrainingMethod.explain`); `random`
    relevance is drawn from a generator seeded with `seed`, so it is deterministic. Predictions:
    the method's whole pipeline (`method.predict`), or with `plain` the model's plain forward on
    the whole inputs (`plain_predict`: the same protocol for every method). Each input loses the
    same share of its tokens; ties in random order, averaged over `cfg["tie_draws"]` draws (from a
    generator seeded with `seed`; see harness/evaluate/occlusion.py). `keep_relevance`: return the
    maps and their rows too (for trends and galleries). `per_input`: also a curve per input with
    only that input occluded (`by_input`; the same maps; its tie orders from a generator of its
    own, so the joint curve is the same with or without it).
    """
    model.eval()
    levels: Sequence[float] = [float(x) for x in cfg["occlusion_levels"]]
    value = str(cfg["occlusion_value"])
    seed_cfg = cfg["seed_protocol"]
    tie_draws = int(cfg.get("tie_draws", 1))
    generator = torch.Generator().manual_seed(int(seed)) if explainer == "random" else None
    ties = torch.Generator().manual_seed(int(seed) + TIE_SEED_OFFSET)
    input_ties = torch.Generator().manual_seed(int(seed) + TIE_SEED_OFFSET + 1)
    separate = per_input and len(method.modalities) > 1

    def predict_proba(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.set_grad_enabled(not plain):  # ET's pipeline explains before it predicts
            return predict_logits(method, model, inputs, plain).detach().softmax(-1)

    curves, seed_morf, seed_lerf = [], 0.0, 0.0
    input_curves: dict[str, list[OcclusionCurve]] = {}
    distinct: dict[str, float] = {}
    kept: dict[str, list[torch.Tensor]] = {}
    rows = []
    for batch in iterate_batches(dataset, indices, batch_size, device=device):
        maps = explain_inputs(method, model, batch.inputs, explainer, explainer_params, generator)
        for m, r in maps.items():
            distinct[m] = distinct.get(m, 0.0) + distinct_values(r).sum().item()

        def occlude(masks, inputs=batch.inputs):
            return {
                m: method.modalities[m].occlude(x, masks[m], value) if m in masks else x
                for m, x in inputs.items()
            }

        curves.append(occlusion_curve(
            predict_proba, batch.inputs, batch.labels, maps, occlude, levels,
            tie_draws=tie_draws, generator=ties,
        ))  # fmt: skip
        for m in maps if separate else ():
            input_curves.setdefault(m, []).append(occlusion_curve(
                predict_proba, batch.inputs, batch.labels, {m: maps[m]}, occlude, levels,
                tie_draws=tie_draws, generator=input_ties,
            ))  # fmt: skip
        if "video" in maps:
            morf, lerf = seed_protocol_accuracy(
                predict_proba, batch.labels, maps["video"].flatten(2),
                lambda mask, occlude=occlude: occlude({"video": mask}),
                float(seed_cfg["spatial_fraction"]), int(seed_cfg["frames"]),
                tie_draws=tie_draws, generator=ties,
            )  # fmt: skip
            seed_morf += morf * len(batch)
            seed_lerf += lerf * len(batch)
        if keep_relevance:
            for m, r in maps.items():
                kept.setdefault(m, []).append(r.detach().cpu())
            rows.append(batch.index.cpu().numpy())
    n = max(len(indices), 1)
    video = "video" in method.modalities
    curve = OcclusionCurve.merge(curves)
    if separate:
        by_input = {m: OcclusionCurve.merge(parts) for m, parts in input_curves.items()}
    else:
        by_input = {m: curve for m in method.modalities} if per_input else {}
    return OcclusionResult(
        curve,
        seed_morf / n if video else None,
        seed_lerf / n if video else None,
        relevance={m: torch.cat(r) for m, r in kept.items()} if keep_relevance else None,
        rows=np.concatenate(rows) if rows else None,
        distinct={m: total / n for m, total in distinct.items()},
        tokens={m: int(r[0].numel()) for m, r in maps.items()} if len(indices) else {},
        by_input=by_input,
    )


def predict_logits(method: TrainingMethod, model: nn.Module, inputs: Any, plain: bool
                   ) -> torch.Tensor:  # fmt: skip
    """Logits of the method's prediction pipeline (`method.predict`; ET explains, restricts,
    classifies), or with `plain` of the model's plain forward (`plain_predict`)."""
    return plain_predict(method, model, inputs) if plain else method.predict(model, inputs)


TIE_SEED_OFFSET = 7919  # tie orders use their own generator, seeded `seed + TIE_SEED_OFFSET`


def plain_predict(
    method: TrainingMethod, model: nn.Module, inputs: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Logits of the model's plain forward on the whole inputs (their views; fused for several
    inputs), whatever the method (ET's restriction is not applied): the like-for-like prediction
    every method is occlusion-tested with."""
    return method.forward(model, method.view(inputs))[0]


def explain_inputs(
    method: TrainingMethod,
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    explainer: str | None = None,
    explainer_params: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    target: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Relevance per input of class `target` (default: the predicted one): the one place the
    evaluation calls an explainer (see `TrainingMethod.explain`)."""
    return method.explain(
        model, inputs, target, explainer=explainer, explainer_params=explainer_params,
        generator=generator,
    )  # fmt: skip


def explain_split(
    model: nn.Module,
    method: TrainingMethod,
    dataset: Dataset,
    indices: np.ndarray,
    explainers: Sequence[str],
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Per explainer, the video relevance [N, T, h, w] (on the CPU, rows in `indices`' sorted
    order, as `iterate_batches` yields them) of the predicted class on the method's view of each
    whole clip; `random` from a generator seeded with `seed`. No occlusion (for trends)."""
    model.eval()
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in explainers}
    for name in explainers:
        generator = torch.Generator().manual_seed(int(seed)) if name == "random" else None
        for batch in iterate_batches(dataset, np.sort(indices), batch_size, device=device):
            relevance = explain_inputs(method, model, batch.inputs, name, generator=generator)
            maps[name].append(relevance["video"].detach().cpu())
    return {name: torch.cat(parts) for name, parts in maps.items()}


def method_for(config: Mapping[str, Any], model: nn.Module) -> TrainingMethod:
    """The training method of a trial config, for `model`."""
    return build_method(
        config["method"], modalities=modalities_of(model), epochs=int(config["train"]["epochs"]),
        evaluation_explainer=str(config["evaluation"]["explainer"]),
        branch_weight=float(config["train"].get("branch_weight", 1.0)),
    )  # fmt: skip


def trained_method(config: Mapping[str, Any], model: nn.Module) -> TrainingMethod:
    """The trial's method built as `harness.train` builds it, in its state at the end of training:
    ET past its warm-up predicts through its explain-and-restrict pipeline (as it did for the
    trial's test accuracy); its cached training explanations are not needed for that."""
    epochs = int(config["train"]["epochs"])
    method = method_for(config, model)
    warmup = getattr(method, "warmup_epochs", None)
    if warmup is not None:  # ET: `start_epoch` of the last epoch set this
        method.active = epochs - 1 >= warmup
    return method


@dataclass
class TrainedModel:
    dataset: Dataset
    model: nn.Module
    method: TrainingMethod


def load_trained(
    config: Mapping[str, Any], weights: Path, device: torch.device | str = "cpu"
) -> TrainedModel:
    """The dataset, the model (its state dict from `weights`, e.g. a trial's model.pt) and the
    trained method of a trial config. ValueError when the weights do not fit the config's model."""
    dataset = open_dataset(config["data"], model_inputs(config["model"]))
    model = build_model(config["model"], dataset.num_classes, dataset.signal_channels)
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


FAITHFULNESS_REFERENCE = "motion_oracle"  # the model-free ground-truth reference row


def ground_truth_scores(
    dataset: Dataset, relevance: Mapping[str, torch.Tensor], rows: np.ndarray
) -> dict[str, float]:
    """Mean energy pointing game (``energy_<input>``) and pointing-game hit rate (``hit_<input>``)
    of maps ``relevance`` (video [N, T, h, w], signal [N, n]) of dataset `rows`, against the
    generator's actor boxes and event windows (harness/evaluate/localisation.py); inputs without
    ground truth (real data) are left out."""
    scores: dict[str, float] = {}
    for m, r in relevance.items():
        r = r.float().cpu()
        if m == "video" and dataset.actor_box is not None:
            boxes = torch.from_numpy(np.asarray(dataset.actor_box[rows], dtype=np.int64))
            coverage = box_coverage(boxes, int(dataset.video.shape[2]), tuple(r.shape[2:]))
        elif m == "signal" and dataset.event_window is not None:
            window = np.asarray(dataset.event_window[rows], dtype=np.int64)
            coverage = window_coverage(
                torch.from_numpy(window[:, 0]), int(window[0, 1] - window[0, 0]),
                int(dataset.signal.shape[1]), int(r.shape[1]),
            )  # fmt: skip
        else:
            continue
        scores[f"energy_{m}"] = relevance_mass(r, coverage).mean().item()
        scores[f"hit_{m}"] = pointing_hit(r, coverage).mean().item()
    return scores


def faithfulness_table(
    model: nn.Module,
    method: TrainingMethod,
    dataset: Dataset,
    indices: np.ndarray,
    cfg: Mapping[str, Any],
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
    results: Mapping[str, OcclusionResult] | None = None,
) -> pd.DataFrame:
    """Like-for-like faithfulness: one row per explainer of ``cfg["explainers"]``, each with its
    default parameters, occlusion-tested on the model's plain forward of whole inputs
    (`plain_predict`), whatever the method, so methods and explainers compare on equal terms.
    `results`: explainer -> its test already run under this protocol, with the same `seed` and
    relevance kept (`python -m harness.evaluate --protocol like_for_like`'s), not run again.

    Columns: ``explainer``, the occlusion metrics (``morf_auc``, ``lerf_auc``, ``gap``, ...),
    ``clean_accuracy`` (the plain forward's accuracy), ``gap_rel`` (gap / clean accuracy: the gap
    is bounded by the clean accuracy), ``distinct_<input>`` / ``tokens_<input>`` (distinct values
    of a map) and, on synthetic data, ``energy_<input>`` / ``hit_<input>`` (ground truth). A last
    row ``motion_oracle`` (video) holds the model-free map's ground-truth scores only.
    """
    clean = evaluate_accuracy(model, method, dataset, indices, batch_size, device, plain=True)
    clean = clean.accuracy
    rows = []
    for name in cfg["explainers"]:
        result = (results or {}).get(str(name)) or evaluate_occlusion(
            model, method, dataset, indices, cfg, batch_size, device, explainer=str(name),
            explainer_params={}, seed=seed, keep_relevance=True, plain=True,
        )  # fmt: skip
        row = {"explainer": str(name), "clean_accuracy": clean}
        metrics = result.as_metrics("occ")  # the curve's summaries, not its points
        row.update({k[4:]: v for k, v in metrics.items() if not _is_curve_point(k)})
        row["gap_rel"] = row["gap"] / clean if clean > 0 else float("nan")
        row.update(ground_truth_scores(dataset, result.relevance, result.rows))
        rows.append(row)
    if "video" in method.modalities and dataset.actor_box is not None:
        maps, kept = [], []
        grid = method.modalities["video"].grid[1:]
        for batch in iterate_batches(dataset, indices, batch_size, device=device):
            maps.append(motion_relevance(batch.clips, grid).cpu())
            kept.append(batch.index.cpu().numpy())
        rows.append({"explainer": FAITHFULNESS_REFERENCE, "clean_accuracy": clean,
                     **ground_truth_scores(dataset, {"video": torch.cat(maps)},
                                           np.concatenate(kept))})  # fmt: skip
    return pd.DataFrame(rows)


def _is_curve_point(key: str) -> bool:
    return ("_acc_" in key or "_prob_" in key) and not key.endswith(("_prob_auc", "_acc"))


def flat_faithfulness(table: pd.DataFrame, prefix: str = "ff") -> dict[str, float]:
    """``{prefix}_<explainer>_<column>`` for every number of a `faithfulness_table`."""
    return {
        f"{prefix}_{row['explainer']}_{column}": float(value)
        for row in table.to_dict("records")
        for column, value in row.items()
        if column != "explainer" and value == value
    }
