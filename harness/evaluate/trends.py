"""Per-class trends of an explainer's relevance: where (which regions of the frame) and when (which
frames) the explanations of each class put their mass. The 001 seed asks this per emotion (which
face regions the explanation uses); here it is per class of the dataset.

Pure functions of tensors:

* ``class_mean_maps(relevance [N, T, h, w], labels [N], K) -> [K, T, h, w]``: each clip's map is
  made a distribution first (negative relevance, e.g. Eigen-CAM's signed projection, is clipped to
  0, then the map is divided by its sum, so every clip weighs the same whatever its explainer's
  scale; a map with no positive mass counts as uniform), then the clips of each class are averaged.
  A class without clips gets NaN maps. Each class map thus sums to 1.
* ``region_shares(maps [K, T, h, w], (rows, cols)) -> [K, rows * cols]``: the share of each class's
  relevance in each region of a rows x cols grid laid over the h x w patch grid (regions in
  row-major order: top-left first). A patch cell belongs to the region that contains its centre;
  a centre on a boundary goes to the lower/right region. Works for any h, w (e.g. h = 3, rows = 2:
  rows 0 | 1, 2).
* ``frame_shares(maps [K, T, h, w]) -> [K, T]``: the share of each class's relevance per frame.

Shares are fractions of each map's total, so they sum to 1 per class (NaN for empty classes).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_mean_maps", "frame_shares", "parse_regions", "region_names", "region_shares"]


def class_mean_maps(relevance: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[K, T, h, w]: per class, the mean of its clips' maps, each normalised to sum 1 first."""
    if relevance.dim() != 4:
        raise ValueError(f"relevance must be [N, T, h, w], got {list(relevance.shape)}")
    labels = torch.as_tensor(labels, device=relevance.device).long().view(-1)
    if labels.numel() != relevance.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {relevance.shape[0]} maps")
    maps = relevance.detach().double().clamp(min=0)
    flat = maps.flatten(1)
    total = flat.sum(1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    flat = torch.where(total > 0, flat / total.clamp(min=1e-300), uniform)
    sums = flat.new_zeros(num_classes, flat.shape[1]).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=num_classes).to(flat.dtype)[:, None]
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan)
    return means.view(num_classes, *relevance.shape[1:]).to(relevance.dtype)


def _region_index(size: int, parts: int) -> Tensor:
    """Region of each of `size` cells cut into `parts` by centre: floor((i + 1/2) parts / size)."""
    return (torch.arange(size) * 2 + 1) * parts // (2 * size)


def region_shares(maps: Tensor, regions: tuple[int, int] = (2, 2)) -> Tensor:
    """[K, rows * cols]: each map's share of relevance per region (row-major, top-left first)."""
    rows, cols = (int(x) for x in regions)
    if rows < 1 or cols < 1:
        raise ValueError(f"regions must be at least 1 x 1, got {rows} x {cols}")
    K, _, h, w = maps.shape
    cell_region = _region_index(h, rows)[:, None] * cols + _region_index(w, cols)[None, :]
    per_cell = maps.sum(1).reshape(K, h * w)  # over frames
    sums = per_cell.new_zeros(K, rows * cols).index_add_(
        1, cell_region.view(-1).to(maps.device), per_cell
    )
    return sums / per_cell.sum(1, keepdim=True)


def frame_shares(maps: Tensor) -> Tensor:
    """[K, T]: each map's share of relevance per frame."""
    per_frame = maps.flatten(2).sum(2)
    return per_frame / per_frame.sum(1, keepdim=True)


def parse_regions(text: str) -> tuple[int, int]:
    """'2x2' -> (2, 2); ValueError naming the expectation otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"regions {text!r}: expected ROWSxCOLS with positive integers, e.g. 2x2")
    return int(parts[0]), int(parts[1])


_ROW_NAMES = {1: ("",), 2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
_COL_NAMES = {1: ("",), 2: ("left", "right"), 3: ("left", "centre", "right")}


def region_names(regions: tuple[int, int]) -> list[str]:
    """Names of the regions in `region_shares`' order: 'top-left', ... for up to 3 x 3, else
    'r0c0', 'r0c1', ...; a 1 x 1 grid is 'all'."""
    rows, cols = regions
    if rows in _ROW_NAMES and cols in _COL_NAMES:
        names = [
            "-".join(part for part in (r, c) if part) or "all"
            for r in _ROW_NAMES[rows]
            for c in _COL_NAMES[cols]
        ]
        return names
    return [f"r{r}c{c}" for r in range(rows) for c in range(cols)]
