"""Per-class trends of an explainer's relevance: where (which regions of the frame) and when (which
frames, which time segments of a signal) the explanations of each class put their mass. The 001
seed asks this per emotion (which face regions the explanation uses); here it is per class of the
dataset, for every input.

Pure functions of tensors:

* ``class_mean_maps(relevance [N, ...], labels [N], K) -> [K, ...]`` (video [N, T, h, w], signal
  [N, n] time tokens): each clip's map is
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
* ``segment_shares(maps [K, n], segments) -> [K, segments]``: the share of each class's signal
  relevance per time segment: the window cut into ``segments`` consecutive parts
  (``SIGNAL_SEGMENTS`` = 4 by default: quarters, as coarse as the 2 x 2 regions of a frame; the
  synthetic signals' 16 time tokens give 4 tokens a segment, and their 32-sample event spans 2
  tokens, so it falls in one or two segments). A token belongs to the segment holding its centre,
  as a patch to its region (``region_shares`` on a 1 x n grid): with n not a multiple of
  ``segments`` the segments hold unequal token counts, and ``segment_token_shares`` says what a
  uniform map gets in each.
* ``face_region_shares(maps [K, T, h, w], margin) -> [K, 4]``: on face crops (harness/data/
  faces.py), the share of each class's relevance on the eyes, the nose, the mouth and the rest of
  the crop (``FACE_REGIONS``, below): the 001 seed's per-emotion reading of facial regions.

**Facial regions.** The 001 seed named regions (eyes, nose, mouth) without saying how it drew
them; no landmark model ships in a package we can use (dlib's and MediaPipe's models are separate
downloads), so the regions here are fixed boxes of the face box, ``FACE_REGIONS`` as (x0, y0, x1,
y1) in units of the detector's square face box (0, 0 its top-left corner, 1, 1 its bottom-right):

* eyes (0.10, 0.20) - (0.90, 0.50), nose (0.30, 0.50) - (0.70, 0.68), mouth (0.20, 0.68) - (0.80,
  0.95); ``rest``: everything else of the crop (forehead, cheeks, the margin around the box).

They were read off OpenCV's frontal-face Haar box, which runs from mid-forehead to just below the
lower lip: on scikit-image's astronaut photograph OpenCV's own eye cascade finds the eyes at
x 0.11-0.43 and 0.59-0.89, y 0.19-0.54 of the box, and its smile cascade the mouth at x 0.18-0.81,
y 0.63-0.95 (tests/test_faces.py checks the eye and mouth centres fall in their regions). The crop
is the face box widened by ``margin`` x side on each side (one box per clip: a moving face is only
approximately where the regions assume). Relevance is taken as constant over each patch (the map
upsampled nearest-neighbour to the crop) and integrated over each region, so a patch that straddles
a border gives each region its area's share. ``face_region_areas(margin)`` are the shares a uniform
map gets: the floor a region's share is read against.

Shares are fractions of each map's total, so they sum to 1 per class (NaN for empty classes).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FACE_REGIONS",
    "FACE_REGION_NAMES",
    "SIGNAL_SEGMENTS",
    "class_mean_maps",
    "face_region_areas",
    "face_region_shares",
    "face_region_weights",
    "frame_shares",
    "parse_regions",
    "region_names",
    "region_shares",
    "segment_index",
    "segment_names",
    "segment_shares",
    "segment_token_shares",
]

#: Time segments of a signal's per-class trends (module docstring).
SIGNAL_SEGMENTS = 4

#: Facial regions, (x0, y0, x1, y1) in units of the detector's face box (module docstring).
FACE_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "eyes": (0.10, 0.20, 0.90, 0.50),
    "nose": (0.30, 0.50, 0.70, 0.68),
    "mouth": (0.20, 0.68, 0.80, 0.95),
}
FACE_REGION_NAMES: tuple[str, ...] = (*FACE_REGIONS, "rest")


def class_mean_maps(relevance: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[K, ...]: per class, the mean of its clips' maps (relevance [N, ...]: video [N, T, h, w],
    signal [N, n]), each normalised to sum 1 first."""
    if relevance.dim() < 2:
        raise ValueError(
            f"relevance must be [N, T, h, w] (video) or [N, n] (signal), got "
            f"{list(relevance.shape)}"
        )
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


def segment_shares(maps: Tensor, segments: int = SIGNAL_SEGMENTS) -> Tensor:
    """[K, segments]: each signal map's (maps [K, n]) share of relevance per time segment, a
    token in the segment that holds its centre (`region_shares` on a 1 x n grid)."""
    if maps.dim() != 2:
        raise ValueError(f"signal maps must be [K, n], got {list(maps.shape)}")
    if not 1 <= int(segments) <= maps.shape[1]:
        raise ValueError(f"segments must be between 1 and the {maps.shape[1]} time tokens, "
                         f"got {segments}")  # fmt: skip
    return region_shares(maps[:, None, None, :], (1, int(segments)))


def segment_index(tokens: int, segments: int = SIGNAL_SEGMENTS) -> Tensor:
    """int64 [tokens]: the time segment of each token (the one holding its centre)."""
    return _region_index(int(tokens), int(segments))


def segment_token_shares(tokens: int, segments: int = SIGNAL_SEGMENTS) -> Tensor:
    """float64 [segments]: each segment's share of the `tokens` time tokens (what a uniform map
    puts there)."""
    counts = torch.bincount(segment_index(tokens, segments), minlength=int(segments))
    return counts.double() / int(tokens)


def segment_names(segments: int = SIGNAL_SEGMENTS) -> list[str]:
    """'segment_1', ... in `segment_shares`' order (the first segment: the window's start)."""
    return [f"segment_{s + 1}" for s in range(int(segments))]


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


def _overlap(cells: int, lo: float, hi: float) -> Tensor:
    """[cells]: the share of each of `cells` equal cells of [0, 1] that lies in [lo, hi]."""
    edges = torch.arange(cells + 1, dtype=torch.float64) / cells
    inside = torch.minimum(edges[1:], torch.tensor(hi)) - torch.maximum(
        edges[:-1], torch.tensor(lo)
    )
    return inside.clamp(min=0) * cells


def face_region_weights(h: int, w: int, margin: float) -> Tensor:
    """float64 [4, h, w]: the share of each patch cell's area in the eyes, nose, mouth and rest
    of a face crop of margin `margin` (each cell's shares sum to 1)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    span = 1 + 2 * float(margin)  # the crop, in face-box units, runs from -margin to 1 + margin

    def crop(u: float) -> float:
        return (u + margin) / span

    weights = [
        _overlap(h, crop(y0), crop(y1))[:, None] * _overlap(w, crop(x0), crop(x1))[None, :]
        for x0, y0, x1, y1 in FACE_REGIONS.values()
    ]
    weights.append(1 - sum(weights))
    return torch.stack(weights)


def face_region_areas(margin: float) -> Tensor:
    """float64 [4]: each region's share of the crop's area (what a uniform map puts there)."""
    return face_region_weights(1, 1, margin)[:, 0, 0]


def face_region_shares(maps: Tensor, margin: float) -> Tensor:
    """[K, 4]: each map's share of relevance on the eyes, nose, mouth and rest of a face crop of
    margin `margin` (maps [K, T, h, w] over the crop's patch grid, summed over frames)."""
    K, _, h, w = maps.shape
    weights = face_region_weights(h, w, margin).to(maps)
    per_cell = maps.sum(1)  # over frames
    return torch.einsum("khw,rhw->kr", per_cell, weights) / per_cell.sum((1, 2))[:, None]
