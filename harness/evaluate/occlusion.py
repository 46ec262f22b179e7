"""Occlusion (deletion) test of token relevance: the pure, batch-level parts.

Relevance is per token of each input: video per (frame, patch) ``[B, T, P]`` with ``P = h * w``
(clips full resolution ``[B, T, C, H, W]``), signal per time token ``[B, n]`` (signals
``[B, L, C]``, token t = samples ``[t L/n, (t+1) L/n)``). A model with several inputs (the
hybrid) has each input occluded by its own relevance at the same level. MoRF occludes the most
relevant tokens first, LeRF the least relevant first; a faithful explanation makes accuracy fall
fast under MoRF and slowly under LeRF, so ``gap = AUC_LeRF - AUC_MoRF`` is large (pixel flipping,
Bach et al. 2015; region perturbation, Samek et al. 2017; Quantus' PixelFlipping).

Ties. Tokens are ranked by ONE total order per draw: relevance descending, tokens of equal
relevance in a uniformly random order (a random permutation, then a stable sort by relevance).
MoRF takes its first k tokens, LeRF its last k, so the two masks are disjoint whenever
``2k <= N``. Sparse or binary maps (Rollout-FEM: a weighted sum of per-head binary maps, often a
handful of distinct values over 128 tokens) have large tied groups; any fixed tie order (e.g. the
token index, frame-major) would make MoRF occlude the first frames and LeRF the last ones, and the
curves would measure token position. With random tie order, the mask of a constant map is a
uniformly random k-subset: it scores exactly like ``random`` in expectation.

The expected mask over tie orders is exact and cheap (each token of the tied group at the cut is
occluded with weight (k - tokens above the group) / group size), but the model is not linear in its
input, so the expected accuracy is not the accuracy at the expected mask: the curves are averaged
over ``tie_draws`` independent draws. Each clip already gets its own independent draw, so one draw
is unbiased over a test set; more draws lower the Monte Carlo variance. A (level, direction) whose
cut falls inside no tied group in any clip has one possible mask: it is predicted once, whatever
``tie_draws`` (a continuous map such as rollout costs one draw).
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


def tie_order(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """int64 [B, N]: each row's token order, ``scores`` descending, ties in a uniformly random
    order drawn from ``generator`` (on the CPU; a fixed seed 0 when None, so results are
    reproducible and still free of index order)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    shuffle = torch.rand(scores.shape, generator=generator).argsort(dim=1).to(scores.device)
    ranked = scores.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)
    return shuffle.gather(1, ranked)


def _mask_of(order: Tensor, k: int, most_relevant_first: bool) -> Tensor:
    """bool [B, N]: the first (MoRF) or last (LeRF) ``k`` tokens of ``order``."""
    n = order.shape[1]
    picked = order[:, :k] if most_relevant_first else order[:, n - k :]
    return torch.zeros(order.shape, dtype=torch.bool, device=order.device).scatter_(1, picked, True)


def cut_is_tied(scores: Tensor, k: int, most_relevant_first: bool) -> Tensor:
    """bool [B]: whether the ``k``-token MoRF (LeRF) cut of each row falls inside a group of equal
    scores, i.e. whether the mask depends on the tie order."""
    n = scores.shape[1]
    cut = k if most_relevant_first else n - k
    if cut <= 0 or cut >= n:
        return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    ranked = scores.sort(dim=1, descending=True).values
    return ranked[:, cut - 1] == ranked[:, cut]


def distinct_values(relevance: Tensor) -> Tensor:
    """int64 [B]: the number of distinct values of each sample's map (exact equality: what the
    ranking sees as ties)."""
    ranked = relevance.flatten(1).sort(dim=1).values
    return 1 + (ranked[:, 1:] != ranked[:, :-1]).sum(1)


def _rank_mask(
    scores: Tensor, k: int, most_relevant_first: bool, generator: torch.Generator | None
) -> Tensor:
    return _mask_of(tie_order(scores, generator), k, most_relevant_first)


def _count(fraction: float, n: int) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return round(fraction * n)


def occlusion_mask(
    relevance: Tensor,
    fraction: float,
    most_relevant_first: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """bool, the shape of ``relevance`` [B, ...]: the ``k = round(fraction * n)`` top (MoRF) or
    bottom (LeRF) of each sample's ``n`` tokens, ties in random order (``tie_order``; MoRF and
    LeRF masks of generators in the same state come from the same order)."""
    flat = relevance.flatten(1)
    k = _count(fraction, flat.shape[1])
    return _rank_mask(flat, k, most_relevant_first, generator).view(relevance.shape)


def seed_protocol_mask(
    relevance: Tensor,
    spatial_fraction: float = 0.3,
    frames: int = 2,
    most_relevant_first: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """bool [B, T, P]: the seed's "30% spatial and 2 frames occluded" protocol (du Toit).

    Read as the union of a spatial and a temporal occlusion:
      spatial:  rank patches by ``sum_t r[t, p]``, occlude the top (MoRF) or bottom (LeRF)
                ``round(spatial_fraction * P)`` patches in every frame;
      temporal: rank frames by ``sum_p r[t, p]``, occlude the top/bottom ``frames`` frames whole.
    Ties in random order (``tie_order``).
    """
    _, t, p = relevance.shape
    spatial = _rank_mask(
        relevance.sum(1), round(spatial_fraction * p), most_relevant_first, generator
    )
    temporal = _rank_mask(relevance.sum(2), min(frames, t), most_relevant_first, generator)
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
    *,
    tie_draws: int = 1,
    generator: torch.Generator | None = None,
) -> OcclusionCurve:
    """MoRF/LeRF curves of one batch, each point the mean over ``tie_draws`` random tie orders.

    ``relevance`` maps each input to its token relevance; at each level every input loses the same
    share of its tokens and ``occlude(masks)`` gives the occluded inputs. One tie order per input
    and draw (``tie_order``, from ``generator``) serves every level and both directions, so a
    draw's masks are nested over levels and MoRF and LeRF are disjoint. A (level, direction) whose
    cut is tied in no sample is predicted once (its mask is the same in every draw); a level whose
    token count rounds to 0 (e.g. 0.0) is the clean input: predicted once and shared by both
    directions and all such levels. So a map without ties costs ``1 + 2 * (len(levels) - 1)``
    ``predict_proba`` calls for ``levels = (0.0, ...)``, a tied one up to ``tie_draws`` times the
    occluded ones. Combine batches with ``OcclusionCurve.merge``.
    """
    if tie_draws < 1:
        raise ValueError(f"tie_draws must be >= 1, got {tie_draws}")
    flat = {name: r.flatten(1) for name, r in relevance.items()}
    orders = [{name: tie_order(r, generator) for name, r in flat.items()} for _ in range(tie_draws)]
    clean: tuple[float, float] | None = None
    morf: list[tuple[float, float]] = []
    lerf: list[tuple[float, float]] = []
    for level in levels:
        for most_relevant_first, scores in ((True, morf), (False, lerf)):
            ks = {name: _count(level, r.shape[1]) for name, r in flat.items()}
            if not any(ks.values()):
                clean = clean if clean is not None else _score(predict_proba, inputs, labels)
                scores.append(clean)
                continue
            tied = any(
                cut_is_tied(r, ks[name], most_relevant_first).any() for name, r in flat.items()
            )
            draws = [
                _score(predict_proba, occlude({
                    name: _mask_of(order[name], ks[name], most_relevant_first).view(
                        relevance[name].shape
                    ) for name in flat
                }), labels)
                for order in (orders if tied else orders[:1])
            ]  # fmt: skip
            scores.append(_mean_score(draws))
    return OcclusionCurve(
        levels=[float(x) for x in levels],
        count=len(labels),
        morf_correct=[c for c, _ in morf],
        lerf_correct=[c for c, _ in lerf],
        morf_prob_sum=[q for _, q in morf],
        lerf_prob_sum=[q for _, q in lerf],
    )


def _mean_score(draws: Sequence[tuple[float, float]]) -> tuple[float, float]:
    return (sum(c for c, _ in draws) / len(draws), sum(q for _, q in draws) / len(draws))


def seed_protocol_accuracy(
    predict_proba: PredictProba,
    labels: Tensor,
    relevance: Tensor,
    occlude: Callable[[Tensor], Any],
    spatial_fraction: float = 0.3,
    frames: int = 2,
    *,
    tie_draws: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """(MoRF, LeRF) top-1 accuracy of this batch under ``seed_protocol_mask`` of the video
    relevance [B, T, P] (``occlude(mask)`` gives the inputs with those tokens hidden), each the
    mean over ``tie_draws`` random tie orders of patches and frames (one draw, i.e. two calls,
    when neither ranking's cut is tied in any sample).

    Batch means: to combine batches, weight each by its batch size.
    """
    _, t, p = relevance.shape
    patches, frame_scores = relevance.sum(1), relevance.sum(2)
    k_patches, k_frames = round(spatial_fraction * p), min(frames, t)
    accuracy = []
    for most_relevant_first in (True, False):
        tied = bool(cut_is_tied(patches, k_patches, most_relevant_first).any()
                    or cut_is_tied(frame_scores, k_frames, most_relevant_first).any())  # fmt: skip
        draws = []
        for _ in range(tie_draws if tied else 1):
            mask = seed_protocol_mask(
                relevance, spatial_fraction, frames, most_relevant_first, generator
            )
            draws.append(_score(predict_proba, occlude(mask), labels))
        accuracy.append(_mean_score(draws)[0] / len(labels))
    return accuracy[0], accuracy[1]
