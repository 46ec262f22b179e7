"""Saliency-driven input restriction for explanation-guided training (ET).

ET (Ayyar et al., "Explain to Train") crops the input frames dynamically to "retain the salient
region with highest area". Every policy maps full-resolution clips ``[B, T, C, H, W]`` and a
non-negative patch-grid relevance ``[B, T, h, w]`` to model inputs ``[B, T, C, S, S]``, except
``prune``, which keeps the clip whole and gives the model the top ``keep`` share of its patches
to run on (a `Pruned` input: the model drops the other tokens, harness/models/base.py).

Common steps, with ``r`` the relevance:
    m = mean_t r[:, t]                      spatial map per clip   [B, h, w]
    m_hat = m / max(m)                      (all-zero m -> m_hat = 1: fall back to the full frame)
    salient = m_hat >= threshold            binary map on the patch grid

Boxes are ``(top, left, bottom, right)`` half-open intervals: ``salient_box`` returns them in float
patch-grid units, ``pixel_box`` maps them to integer full-resolution pixels (patch ``(i, j)`` covers
rows ``i*H/h .. (i+1)*H/h``), rounding outwards, and squares them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.models.base import Pruned

Box = tuple[float, float, float, float]  # (top, left, bottom, right), bottom/right exclusive
PixelBox = tuple[int, int, int, int]
# (clips, relevance, size, *, threshold, margin[, keep][, view]) -> [B, T, C, S, S] (or Pruned)
CropPolicy = Callable[..., Tensor | Pruned]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def normalise(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``x / max_dims(x)``; a slice whose max is 0 becomes all ones (no information -> keep all)."""
    peak = x.amax(dim=dims, keepdim=True)
    return torch.where(peak > 0, x / peak.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(x))


def salient_cells(spatial_map: Tensor, threshold: float = 0.5) -> Tensor:
    """Binary map ``m / max(m) >= threshold`` over the last two dims: [..., h, w] -> bool."""
    return normalise(spatial_map, (-2, -1)) >= threshold


def salient_box(
    spatial_map: Tensor, threshold: float = 0.5, margin: float = 0.1, region: str = "largest"
) -> Box:
    """Box around the salient cells of one map [h, w], in float patch-grid units.

    ``region="largest"``: the largest 8-connected component (ties: larger summed relevance, then
    raster order); ``"union"``: all salient cells. The box grows by ``margin`` times its side on
    each side, clamped to ``[0, h] x [0, w]``. No salient cell -> the full grid ``(0, 0, h, w)``.
    """
    if region not in ("largest", "union"):
        raise ValueError(f"unknown region '{region}'; expected one of: largest, union")
    m = spatial_map.detach().float().cpu()
    keep = salient_cells(m, threshold).numpy()
    h, w = keep.shape
    if region == "largest" and keep.any():
        # here, not at the top: its 0.35 s import is paid only where a largest-region box is drawn
        from scipy import ndimage

        labels, n = ndimage.label(keep, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        mass = np.bincount(labels.ravel(), weights=m.numpy().ravel(), minlength=n + 1)[1:]
        keep = labels == 1 + max(range(n), key=lambda i: (sizes[i], mass[i]))
    if not keep.any():
        return 0.0, 0.0, float(h), float(w)
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = margin * (bottom - top), margin * (right - left)
    return (
        float(max(top - dy, 0)), float(max(left - dx, 0)),
        float(min(bottom + dy, h)), float(min(right + dx, w)),
    )  # fmt: skip


def _fit(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` about its centre to length ``min(side, limit)``, shifted into the frame."""
    side = min(side, limit)
    lo = min(max(lo - (side - (hi - lo)) // 2, 0), limit - side)
    return lo, lo + side


def pixel_box(box: Box, grid: tuple[int, int], frame: tuple[int, int]) -> PixelBox:
    """Patch-grid box -> square integer pixel box in an ``H x W`` frame.

    Scales by ``H/h, W/w``, rounds outwards, then expands the shorter side to
    ``side = max(height, width)`` (clamped and shifted into the frame) so that resizing to
    ``S x S`` keeps the aspect ratio. Only when ``side`` exceeds a frame dimension (non-square
    frames) does the box stay non-square.
    """
    (h, w), (fh, fw) = grid, frame
    sy, sx, eps = fh / h, fw / w, 1e-6
    top, left = math.floor(box[0] * sy + eps), math.floor(box[1] * sx + eps)
    bottom, right = math.ceil(box[2] * sy - eps), math.ceil(box[3] * sx - eps)
    side = max(bottom - top, right - left)
    (top, bottom), (left, right) = _fit(top, bottom, side, fh), _fit(left, right, side, fw)
    return top, left, bottom, right


def downsample(clips: Tensor, size: int) -> Tensor:
    """Area (box-filter) resize ``[B, T, C, H, W] -> [B, T, C, S, S]`` (what vanilla sees)."""
    return F.interpolate(clips.flatten(0, 1), size=(size, size), mode="area").unflatten(
        0, clips.shape[:2]
    )


def box_crop(
    clips: Tensor,
    relevance: Tensor,
    size: int,
    *,
    threshold: float = 0.5,
    margin: float = 0.1,
    region: str = "largest",
) -> Tensor:
    """Crop each clip to its square salient box (same box for all T frames), resize to S x S.

    Boxes are computed on CPU (tiny grids). The resize is one antialiased bilinear
    ``F.interpolate`` per clip (the T frames batched): boxes differ per clip and are usually
    larger than S, and a single batched ``grid_sample`` would point-sample (alias) when
    downsampling, an area pre-pool only approximately fixing that for integer factors.
    Antialias is a no-op when upsampling, so it is always on.
    """
    grid, frame = tuple(relevance.shape[-2:]), tuple(clips.shape[-2:])
    maps = relevance.detach().float().mean(1).cpu()  # [B, h, w]
    crops = []
    for clip, m in zip(clips, maps, strict=True):  # clip: [T, C, H, W]
        top, left, bottom, right = pixel_box(salient_box(m, threshold, margin, region), grid, frame)
        crops.append(
            F.interpolate(
                clip[..., top:bottom, left:right], size=(size, size),
                mode="bilinear", align_corners=False, antialias=True,
            )
        )  # fmt: skip
    return torch.stack(crops)


def _viewed(clips: Tensor, size: int, view: Tensor | None) -> Tensor:
    """``downsample(clips, size)``, or ``view`` when the caller has it already (ET's prediction:
    the view it explained)."""
    return downsample(clips, size) if view is None else view


def mask_salient(
    clips: Tensor, relevance: Tensor, size: int, *, threshold: float = 0.5, margin: float = 0.1,
    view: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """``downsample(clips) * nearest_upsample(salient)``: non-salient cells set to 0 (no margin)."""
    keep = salient_cells(relevance.mean(1), threshold)[:, None].to(clips.dtype)  # [B, 1, h, w]
    keep = F.interpolate(keep, size=(size, size), mode="nearest")  # [B, 1, S, S]
    return _viewed(clips, size, view) * keep[:, None]


def soft_weight(
    clips: Tensor, relevance: Tensor, size: int, *, threshold: float = 0.5, margin: float = 0.1,
    view: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """``downsample(clips) * bilinear_upsample(r / max_clip r)`` per frame (soft weighting)."""
    weight = normalise(relevance.to(clips.dtype), (1, 2, 3))  # [B, T, h, w], T as channels
    weight = F.interpolate(weight, size=(size, size), mode="bilinear", align_corners=False)
    return _viewed(clips, size, view) * weight[:, :, None]


def no_crop(
    clips: Tensor, relevance: Tensor, size: int, *, threshold: float = 0.5, margin: float = 0.1,
    view: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The full frames, area-downsampled: ``downsample(clips, size)``."""
    return _viewed(clips, size, view)


def top_regions(scores: Tensor, keep: float, generator: torch.Generator | None = None) -> Tensor:
    """int64 [B, k], ascending: each row's ``k = max(1, round(keep * P))`` regions of highest
    ``scores`` [B, P], ties in the seeded random order of the occlusion test (`tie_order`: never
    by position). ET's `prune` policy for every input (the signal's time tokens too)."""
    from harness.evaluate.occlusion import tie_order  # evaluate imports the methods

    scores = scores.detach().float()
    count = max(1, round(keep * scores.shape[1]))
    return tie_order(scores, generator)[:, :count].sort(1).values


def top_patches(relevance: Tensor, keep: float, generator: torch.Generator | None = None) -> Tensor:
    """int64 [B, k], ascending: each clip's `top_regions` of the spatial map ``mean_t r[:, t]``
    (patch p = row * w + col)."""
    return top_regions(relevance.float().mean(1).flatten(1), keep, generator)


def prune_tokens(
    clips: Tensor, relevance: Tensor, size: int, *, threshold: float = 0.5, margin: float = 0.1,
    keep: float = 0.5, view: Tensor | None = None,
) -> Pruned:  # fmt: skip
    """The whole clip downsampled, to be run on its `top_patches` only (the same in every frame):
    attention and MLP costs fall with the kept share ``keep``; nothing is resized or zeroed."""
    return Pruned(_viewed(clips, size, view), top_patches(relevance, keep).to(clips.device))


CROP_POLICIES: dict[str, CropPolicy] = {
    "largest_region": partial(box_crop, region="largest"),
    "union_box": partial(box_crop, region="union"),
    "mask": mask_salient,
    "soft": soft_weight,
    "none": no_crop,
    "prune": prune_tokens,
}


def get_crop_policy(name: str) -> CropPolicy:
    """Look up a crop policy by name."""
    if name not in CROP_POLICIES:
        raise ValueError(
            f"unknown crop policy '{name}'; expected one of: {', '.join(CROP_POLICIES)}"
        )
    return CROP_POLICIES[name]
