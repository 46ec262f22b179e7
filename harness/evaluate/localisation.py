"""Ground-truth localisation of token relevance: the share of relevance on the evidence, and the
pointing game.

The synthetic generator knows where the class evidence is: the actor's box in every stored frame
(``Dataset.actor_box``, full-resolution pixels, bottom/right exclusive) and the signal event's
window (``Dataset.event_start``, ``event_length`` samples). Both become a per-token coverage
``c`` in [0, 1] (the share of each token's pixels or samples inside the evidence), on the grid the
relevance lives on (video [B, T, h, w], signal [B, n]).

* Energy pointing game (relevance mass accuracy; Wang et al. 2020, Score-CAM; Quantus'
  RelevanceMassAccuracy): ``sum_t r+_t c_t / sum_t r+_t`` with ``r+ = max(r, 0)``, every token
  the same area. A map with no positive relevance is read as uniform (it points nowhere), so it
  scores the evidence's share of the input, as a constant map does.
* Pointing game (Zhang et al. 2018): the maximal token hits when it touches the evidence
  (``c > 0``). Per video frame (the actor moves), averaged over frames; ties at the maximum count
  as the share of the tied tokens that hit (the expected hit under a random pick).

Reference rows: ``random`` relevance (the chance floor) and ``motion_oracle``, a model-free map
(the frame-difference energy pooled to the token grid, ``motion_relevance``), which finds the
moving actor without any model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def box_coverage(boxes: Tensor, frame_size: int, grid: tuple[int, int]) -> Tensor:
    """float [B, T, h, w]: the share of each (frame, cell)'s pixels inside that frame's box
    (``boxes`` [B, T, 4] = top, left, bottom, right in pixels of a ``frame_size`` square frame,
    bottom/right exclusive)."""
    h, w = grid
    pixels = torch.arange(frame_size, device=boxes.device)
    rows = (pixels >= boxes[..., 0:1]) & (pixels < boxes[..., 2:3])  # [B, T, H]
    cols = (pixels >= boxes[..., 1:2]) & (pixels < boxes[..., 3:4])  # [B, T, W]
    inside = (rows[..., :, None] & cols[..., None, :]).float()  # [B, T, H, W]
    return F.adaptive_avg_pool2d(inside.flatten(0, 1), (h, w)).view(*boxes.shape[:2], h, w)


def window_coverage(start: Tensor, length: int, signal_length: int, tokens: int) -> Tensor:
    """float [B, n]: the share of each time token's samples inside ``[start, start + length)``."""
    samples = torch.arange(signal_length, device=start.device)
    inside = ((samples >= start[:, None]) & (samples < start[:, None] + length)).float()
    return inside.view(len(start), tokens, signal_length // tokens).mean(-1)


def relevance_mass(relevance: Tensor, coverage: Tensor) -> Tensor:
    """float [B]: the energy pointing game, the share of positive relevance on the evidence (an
    all-non-positive map is read as uniform)."""
    positive = relevance.clamp_min(0).flatten(1)
    cover = coverage.flatten(1).to(positive.dtype)
    total = positive.sum(1)
    uniform = cover.mean(1)
    mass = (positive * cover).sum(1) / total.clamp_min(torch.finfo(positive.dtype).tiny)
    return torch.where(total > 0, mass, uniform)


def pointing_hit(relevance: Tensor, coverage: Tensor) -> Tensor:
    """float [B]: the pointing game, per frame for video ([B, T, h, w]: the mean over frames), once
    for a signal ([B, n]); ties at the maximum count as the share of them that hit."""
    frames = relevance.flatten(2) if relevance.dim() > 2 else relevance[:, None]  # [B, F, N]
    cover = coverage.flatten(2) if coverage.dim() > 2 else coverage[:, None]
    top = frames == frames.amax(-1, keepdim=True)
    hits = (top & (cover > 0)).sum(-1).float() / top.sum(-1).float()
    return hits.mean(1)


def motion_relevance(clips: Tensor, grid: tuple[int, int]) -> Tensor:
    """float [B, T, h, w]: the model-free motion oracle, the mean absolute frame difference
    (to the next frame; the last frame repeats the previous difference) pooled to the grid, less
    the clip's median cell (the pixel-noise floor) and clamped at 0."""
    motion = (clips[:, 1:] - clips[:, :-1]).abs().mean(2)  # [B, T-1, H, W]
    motion = torch.cat([motion, motion[:, -1:]], 1)
    b, t = motion.shape[:2]
    pooled = F.adaptive_avg_pool2d(motion.flatten(0, 1), grid).view(b, t, *grid)
    floor = pooled.flatten(1).median(1).values.view(b, 1, 1, 1)
    return (pooled - floor).clamp_min(0)
