"""Saliency-driven restriction of signals for explanation-guided training (ET), the 1-D
counterparts of the video crop policies (harness/methods/crop.py), under the same names.

Every policy maps signals ``[B, L, C]`` and a time-token relevance ``[B, n]`` (token t covers
samples ``[t p, (t+1) p)``, ``p = L / n``) to model inputs ``[B, L, C]`` (``prune``: a `Pruned`
one):

    soft            x * w,  w = relevance_over_time(r, L)     the ET poster's signal weighting:
                    the relevance interpolated to the samples and divided by its max
    largest_region  the largest run of salient tokens (r / max r >= threshold), widened by
                    ``margin`` times its length on each side, cut out and resampled (linear) to L
    union_box       the same from the first to the last salient token
    mask            x * 1[token salient] (non-salient samples set to 0, the training mean of
                    standardised signals)
    none            x
    prune           the signal whole, run on its top ``keep`` share of time tokens only (a
                    `Pruned` input: the model drops the other tokens, harness/models/signal.py),
                    the same ranking as the video's `prune` (`top_regions`)

Resampling a window changes the signal's time scale (an event's cycles per sample), unlike the
video crop whose resize only changes the spatial scale the model reads at: where frequency is the
class cue (the synthetic data; often real sensors too), prefer ``soft`` or ``mask``.

The salient window reuses the video's region logic on a one-row grid (``salient_box`` on
``[1, n]``: on one row, 8-connected is run-connected), so both modalities pick regions alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.explain.signal import relevance_over_time
from harness.methods.crop import salient_box, salient_cells, top_regions
from harness.models.base import Pruned

# (signals, relevance, *, threshold, margin[, keep]) -> [B, L, C] (or Pruned)
WindowPolicy = Callable[..., Tensor | Pruned]


def salient_window(
    relevance: Tensor, length: int, threshold: float = 0.5, margin: float = 0.1,
    region: str = "largest",
) -> tuple[int, int]:  # fmt: skip
    """Half-open sample interval ``[start, stop)`` of the salient window of one map [n]
    (the whole signal when no token is salient)."""
    _, left, _, right = salient_box(relevance[None], threshold, margin, region)
    samples = length / relevance.shape[0]
    eps = 1e-6
    return math.floor(left * samples + eps), math.ceil(right * samples - eps)


def window_crop(
    signals: Tensor, relevance: Tensor, *, threshold: float = 0.5, margin: float = 0.1,
    region: str = "largest",
) -> Tensor:  # fmt: skip
    """Cut each signal to its salient window and resample it (linear) to the full length L."""
    length = signals.shape[1]
    maps = relevance.detach().float().cpu()
    crops = []
    for signal, m in zip(signals, maps, strict=True):  # signal [L, C]
        start, stop = salient_window(m, length, threshold, margin, region)
        window = signal[start:stop].T[None]  # [1, C, stop - start]
        crops.append(F.interpolate(window, size=length, mode="linear", align_corners=False)[0].T)
    return torch.stack(crops)


def soft_weight(
    signals: Tensor, relevance: Tensor, *, threshold: float = 0.5, margin: float = 0.1
) -> Tensor:
    """``x * relevance_over_time(r, L)``: each sample weighted by its normalised relevance."""
    return signals * relevance_over_time(relevance, signals.shape[1]).to(signals.dtype)[..., None]


def mask_salient(
    signals: Tensor, relevance: Tensor, *, threshold: float = 0.5, margin: float = 0.1
) -> Tensor:
    """``x * 1[token salient]``: the samples of non-salient tokens set to 0."""
    keep = salient_cells(relevance[:, None], threshold)[:, 0]  # [B, n]
    keep = keep.repeat_interleave(signals.shape[1] // relevance.shape[1], dim=1)
    return signals * keep[..., None].to(signals.dtype)


def no_window(
    signals: Tensor, relevance: Tensor, *, threshold: float = 0.5, margin: float = 0.1
) -> Tensor:
    return signals


def prune_tokens(
    signals: Tensor, relevance: Tensor, *, threshold: float = 0.5, margin: float = 0.1,
    keep: float = 0.5,
) -> Pruned:  # fmt: skip
    """The whole signal, to be run on its `top_regions` time tokens only (``keep`` share, at
    least one): attention and MLP costs fall with ``keep``; nothing is resampled or zeroed."""
    return Pruned(signals, top_regions(relevance, keep).to(signals.device))


WINDOW_POLICIES: dict[str, WindowPolicy] = {
    "largest_region": partial(window_crop, region="largest"),
    "union_box": partial(window_crop, region="union"),
    "mask": mask_salient,
    "soft": soft_weight,
    "none": no_window,
    "prune": prune_tokens,
}


def get_window_policy(name: str) -> WindowPolicy:
    """Look up a signal restriction policy by name."""
    if name not in WINDOW_POLICIES:
        raise ValueError(
            f"unknown signal policy '{name}'; expected one of: {', '.join(WINDOW_POLICIES)}"
        )
    return WINDOW_POLICIES[name]
