"""Occlusion (deletion) test of token relevance: the pure, batch-level parts.

Relevance is per token of each input: video per (frame, patch) ``[B, T, P]`` with ``P = h * w``
(clips full resolution ``[B, T, C, H, W]``), signal per time token ``[B, n]`` (signals
``[B, L, C]``, token t = samples ``[t L/n, (t+1) L/n)``). A model with several inputs (the
hybrid) has each input occluded by its own relevance at the same level. MoRF occludes the most
relevant tokens first, LeRF the least relevant first; a faithful explanation makes accuracy fall
fast under MoRF and slowly under LeRF, so
``gap = AUC_LeRF - AUC_MoRF`` is large.

Tokens are ranked by ONE total order (relevance descending, then token index ascending, via a
stable sort): MoRF takes its first k tokens, LeRF its last k. Ties are thus deterministic, and the
two masks are disjoint whenever ``2k <= N`` and complementary when ``2k = N``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

PredictProba = Callable[[Any], Tensor]  # model inputs (e.g. {"video": clips}) -> probs [B, K]
Occlude = Callable[[Mapping[str, Tensor]], Any]  # bool token masks per input -> occluded inputs
Fill = Callable[[Tensor, tuple[int, int]], Tensor]  # (clips, patch px) -> broadcastable fill

DEFAULT_LEVELS: tuple[float, ...] = tuple(i / 10 for i in range(10))  # 0.0, 0.1, ..., 0.9


def _rank_mask(scores: Tensor, k: int, most_relevant_first: bool) -> Tensor:
    """bool [B, N]: first (MoRF) or last (LeRF) ``k`` of the order (score desc, index asc)."""
    order = scores.argsort(dim=1, descending=True, stable=True)  # [B, N]
    n = order.shape[1]
    picked = order[:, :k] if most_relevant_first else order[:, n - k :]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, picked, True)


def occlusion_mask(relevance: Tensor, fraction: float, most_relevant_first: bool = True) -> Tensor:
    """bool, the shape of ``relevance`` [B, ...]: the ``k = round(fraction * n)`` top (MoRF) or
    bottom (LeRF) of each sample's ``n`` tokens."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    flat = relevance.flatten(1)
    k = round(fraction * flat.shape[1])
    return _rank_mask(flat, k, most_relevant_first).view(relevance.shape)


def seed_protocol_mask(
    relevance: Tensor,
    spatial_fraction: float = 0.3,
    frames: int = 2,
    most_relevant_first: bool = True,
) -> Tensor:
    """bool [B, T, P]: the seed's "30% spatial and 2 frames occluded" protocol (du Toit).

    Read as the union of a spatial and a temporal occlusion:
      spatial:  rank patches by ``sum_t r[t, p]``, occlude the top (MoRF) or bottom (LeRF)
                ``round(spatial_fraction * P)`` patches in every frame;
      temporal: rank frames by ``sum_p r[t, p]``, occlude the top/bottom ``frames`` frames whole.
    """
    _, t, p = relevance.shape
    spatial = _rank_mask(relevance.sum(1), round(spatial_fraction * p), most_relevant_first)
    temporal = _rank_mask(relevance.sum(2), min(frames, t), most_relevant_first)
    return spatial[:, None, :] | temporal[:, :, None]  # [B, 1, P] | [B, T, 1]


def _zero_fill(clips: Tensor, patch: tuple[int, int]) -> Tensor:
    return clips.new_zeros(())


def _mean_fill(clips: Tensor, patch: tuple[int, int]) -> Tensor:
    return clips.mean(dim=(1, 3, 4), keepdim=True)  # per clip and channel: [B, 1, C, 1, 1]


def _blur_fill(clips: Tensor, patch: tuple[int, int]) -> Tensor:
    """Box blur, stride 1, odd kernel ~ patch size. It sees the occluded pixels too, so it keeps
    their low frequencies: the mildest (least off-distribution) fill."""
    kernel = tuple(2 * (s // 2) + 1 for s in patch)
    blurred = F.avg_pool2d(
        clips.flatten(0, 1), kernel, stride=1,
        padding=tuple(s // 2 for s in kernel), count_include_pad=False,
    )  # fmt: skip
    return blurred.view_as(clips)


OCCLUSION_FILLS: dict[str, Fill] = {"zero": _zero_fill, "mean": _mean_fill, "blur": _blur_fill}


def get_occlusion_fill(name: str) -> Fill:
    """Look up an occlusion fill by name."""
    if name not in OCCLUSION_FILLS:
        raise ValueError(
            f"unknown occlusion value '{name}'; expected one of: {', '.join(OCCLUSION_FILLS)}"
        )
    return OCCLUSION_FILLS[name]


def apply_occlusion(
    clips: Tensor, mask: Tensor, grid: tuple[int, int], value: str = "zero"
) -> Tensor:
    """Replace the pixels of masked (frame, patch) cells by the fill ``value``.

    ``mask`` [B, T, P] is upsampled nearest from the ``h x w`` grid to ``H x W`` pixels;
    fills: "zero" -> 0, "mean" -> the clip's per-channel mean, "blur" -> a box-blurred frame.
    """
    b, t, _, H, W = clips.shape
    h, w = grid
    if mask.shape != (b, t, h * w):
        raise ValueError(f"mask shape {tuple(mask.shape)} != {(b, t, h * w)} for grid {grid}")
    pixels = F.interpolate(mask.reshape(b * t, 1, h, w).float(), size=(H, W), mode="nearest")
    pixels = pixels.view(b, t, 1, H, W).bool()
    return torch.where(pixels, get_occlusion_fill(value)(clips, (H // h, W // w)), clips)


def _signal_blur(signals: Tensor, token: int) -> Tensor:
    width = 2 * (token // 2) + 1
    blurred = F.avg_pool1d(
        signals.transpose(1, 2), width, stride=1, padding=width // 2, count_include_pad=False
    )
    return blurred.transpose(1, 2)


SIGNAL_FILLS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "zero": lambda signals, token: signals.new_zeros(()),  # the training mean (standardised)
    "mean": lambda signals, token: signals.mean(dim=1, keepdim=True),  # per signal and channel
    "blur": _signal_blur,  # moving average over one token's length
}


def apply_signal_occlusion(signals: Tensor, mask: Tensor, value: str = "zero") -> Tensor:
    """Replace the samples of masked time tokens (``mask`` [B, n], ``L / n`` samples each) by the
    fill ``value``: the signal counterpart of ``apply_occlusion`` (``SIGNAL_FILLS``)."""
    b, length, _ = signals.shape
    if mask.dim() != 2 or mask.shape[0] != b or length % mask.shape[1]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not tile signals {tuple(signals.shape)}"
        )
    if value not in SIGNAL_FILLS:
        raise ValueError(
            f"unknown occlusion value '{value}'; expected one of: {', '.join(SIGNAL_FILLS)}"
        )
    token = length // mask.shape[1]
    samples = mask.repeat_interleave(token, dim=1)[..., None]  # [B, L, 1]
    return torch.where(samples, SIGNAL_FILLS[value](signals, token), signals)


def _auc(levels: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values(levels)`` divided by the level range (a single level: its
    value), so an accuracy curve gives an AUC in [0, 1]."""
    if len(levels) == 1:
        return float(values[0])
    area = sum(
        (x1 - x0) * (y0 + y1) / 2
        for x0, x1, y0, y1 in zip(levels, levels[1:], values, values[1:], strict=False)
    )
    return area / (levels[-1] - levels[0])


@dataclass(frozen=True)
class OcclusionCurve:
    """MoRF/LeRF deletion curves as running sums over ``count`` samples.

    Sums (not means) make batches combine exactly: ``OcclusionCurve.merge(per_batch_curves)``.
    ``*_correct[i]``: number of top-1 correct predictions at ``levels[i]``; ``*_prob_sum[i]``: sum
    of the target-class probability.
    """

    levels: list[float]
    count: int
    morf_correct: list[float]
    lerf_correct: list[float]
    morf_prob_sum: list[float]
    lerf_prob_sum: list[float]

    @classmethod
    def merge(cls, curves: Sequence[OcclusionCurve]) -> OcclusionCurve:
        """Sum the curves of several batches (same levels)."""
        if any(c.levels != curves[0].levels for c in curves):
            raise ValueError("cannot merge occlusion curves with different levels")

        def total(field: str) -> list[float]:
            return [sum(v) for v in zip(*(getattr(c, field) for c in curves), strict=True)]

        return cls(
            levels=list(curves[0].levels),
            count=sum(c.count for c in curves),
            morf_correct=total("morf_correct"),
            lerf_correct=total("lerf_correct"),
            morf_prob_sum=total("morf_prob_sum"),
            lerf_prob_sum=total("lerf_prob_sum"),
        )

    @property
    def morf_accuracy(self) -> list[float]:
        return [v / self.count for v in self.morf_correct]

    @property
    def lerf_accuracy(self) -> list[float]:
        return [v / self.count for v in self.lerf_correct]

    @property
    def morf_probability(self) -> list[float]:
        return [v / self.count for v in self.morf_prob_sum]

    @property
    def lerf_probability(self) -> list[float]:
        return [v / self.count for v in self.lerf_prob_sum]

    @property
    def morf_auc(self) -> float:
        return _auc(self.levels, self.morf_accuracy)

    @property
    def lerf_auc(self) -> float:
        return _auc(self.levels, self.lerf_accuracy)

    @property
    def gap(self) -> float:
        """``lerf_auc - morf_auc``: higher = more faithful relevance."""
        return self.lerf_auc - self.morf_auc

    def as_metrics(self, prefix: str = "occ") -> dict[str, float]:
        """Flat keys: ``{p}_morf_auc, {p}_lerf_auc, {p}_gap``, ``{p}_{dir}_prob_auc`` and per
        level (percent) ``{p}_{dir}_acc_30, {p}_{dir}_prob_30``, dir in (morf, lerf)."""
        out = {f"{prefix}_morf_auc": self.morf_auc, f"{prefix}_lerf_auc": self.lerf_auc}
        out[f"{prefix}_gap"] = self.gap
        for name, acc, prob in (
            ("morf", self.morf_accuracy, self.morf_probability),
            ("lerf", self.lerf_accuracy, self.lerf_probability),
        ):
            out[f"{prefix}_{name}_prob_auc"] = _auc(self.levels, prob)
            for level, a, q in zip(self.levels, acc, prob, strict=True):
                out[f"{prefix}_{name}_acc_{round(100 * level)}"] = a
                out[f"{prefix}_{name}_prob_{round(100 * level)}"] = q
        return out


def _score(predict_proba: PredictProba, inputs: Any, labels: Tensor) -> tuple[float, float]:
    """(number of top-1 correct, sum of target-class probability) over the batch."""
    with torch.no_grad():
        probs = predict_proba(inputs)  # [B, K]
    correct = (probs.argmax(1) == labels).sum().item()
    return float(correct), probs.gather(1, labels[:, None]).sum().item()


def occlusion_curve(
    predict_proba: PredictProba,
    inputs: Any,
    labels: Tensor,
    relevance: Mapping[str, Tensor],
    occlude: Occlude,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> OcclusionCurve:
    """MoRF/LeRF curves of one batch: one ``predict_proba`` call per (level, direction).

    ``relevance`` maps each input to its token relevance; at each level every input loses the same
    share of its tokens (``occlusion_mask``) and ``occlude(masks)`` gives the occluded inputs.
    A level whose token count rounds to 0 (e.g. 0.0) is the clean input: predicted once and shared
    by both directions and all such levels, so ``levels = (0.0, ...)`` costs
    ``1 + 2 * (len(levels) - 1)`` calls. Combine batches with ``OcclusionCurve.merge``.
    """
    clean: tuple[float, float] | None = None
    morf: list[tuple[float, float]] = []
    lerf: list[tuple[float, float]] = []
    for level in levels:
        for most_relevant_first, scores in ((True, morf), (False, lerf)):
            masks = {
                name: occlusion_mask(r, level, most_relevant_first) for name, r in relevance.items()
            }
            if any(mask.any() for mask in masks.values()):
                scores.append(_score(predict_proba, occlude(masks), labels))
            else:
                clean = clean if clean is not None else _score(predict_proba, inputs, labels)
                scores.append(clean)
    return OcclusionCurve(
        levels=[float(x) for x in levels],
        count=len(labels),
        morf_correct=[c for c, _ in morf],
        lerf_correct=[c for c, _ in lerf],
        morf_prob_sum=[q for _, q in morf],
        lerf_prob_sum=[q for _, q in lerf],
    )


def seed_protocol_accuracy(
    predict_proba: PredictProba,
    labels: Tensor,
    relevance: Tensor,
    occlude: Callable[[Tensor], Any],
    spatial_fraction: float = 0.3,
    frames: int = 2,
) -> tuple[float, float]:
    """(MoRF, LeRF) top-1 accuracy of this batch under ``seed_protocol_mask`` of the video
    relevance [B, T, P] (two calls; ``occlude(mask)`` gives the inputs with those tokens hidden).

    Batch means: to combine batches, weight each by its batch size.
    """
    accuracy = []
    for most_relevant_first in (True, False):
        mask = seed_protocol_mask(relevance, spatial_fraction, frames, most_relevant_first)
        correct, _ = _score(predict_proba, occlude(mask), labels)
        accuracy.append(correct / len(labels))
    return accuracy[0], accuracy[1]
