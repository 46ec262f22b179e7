"""Model adapter: Linformer attention (`harness.models.signal`) as per-layer token-mixing matrices.

The pure explainers of this package take per-layer [B, H, N, N] token-mixing matrices. Linformer's
attention P = softmax(Q (E K)^T / sqrt(d)) is [B, H, N, k]: its k columns are projections of the
sequence, not tokens. Composed with the value projection F [k, N] it is a token mixing, exactly:

    out_i = sum_k P[i, k] (F V)[k] = sum_j (P F)[i, j] v_j,     M = P F   [B, H, N, N].

The model computes its attention through M (out = M V), so M is a tensor of the forward graph and
d score / dM is a true gradient (no choice of how to spread dP over M is needed; dP = dM F^T).

M is not an attention matrix in rollout's sense: F is a learned real matrix, so M's entries can be
negative and its rows sum to rowsum(M)_i = sum_k P[i, k] rowsum(F)_k (any real number, possibly ~0).
Rollout's step A' = (A + I) / rowsum(A + I) reads each row as the proportions in which a token's
output is made of its inputs; with signed rows those "proportions" are meaningless (a row sum near
-1 divides by ~0; negative entries subtract flow). The treatment here:

* rollout, rollout_fem (flow explainers, no gradients): each head's mixing is replaced by its
  **magnitude shares**  S = |M| / rowsum(|M|)  (``mixing_shares``): S[i, j] is the share of the
  total mixing weight of output i that comes from token j, whatever its sign. Token j's
  contribution to output i is the vector M[i, j] v_j, whose norm is |M[i, j]| ||v_j||; rollout
  ignores the values (it treats them as equal), so under the same assumption S is the fraction of
  output i contributed by token j (the norm-based reading of attention of Kobayashi et al.,
  "Attention is not only a weight", EMNLP 2020). S is row-stochastic and non-negative, so
  rollout's "+ I, renormalise" is well defined; heads are fused (mean/min/max) after the shares,
  as rollout fuses row-stochastic heads. For an ordinary attention (F non-negative with rows
  summing to 1, e.g. k = N and F = I) S = M, and this is plain rollout. A row of M that is all
  zero (F = 0) gives a zero row: that token keeps only its residual. Sign information is dropped
  on purpose: a flow explainer answers "where did the information come from", not "for or
  against".
* rollout_grad, tibav (gradient explainers): the signed M and its true gradient dM. M * dM is the
  first-order (Taylor) contribution of each entry to the target score whatever the signs, so it
  needs no rectification: tibav keeps E_h((dM * M)^+) (entries that raised the score; the clamp
  already handles negative products), rollout_grad E_h(M * dM) unnormalised, as for any attention.
* feature explainers (fem, gradcam, gradcam_pp, eigencam): the time tokens entering the last
  block (``SignalOutput.features``; the last block's own output reaches the head only through its
  class token, so its time tokens have zero gradient) as a 1-D grid [B, D, N-1];
  random: U[0, 1).

Every explainer gives one relevance per time token: [B, N-1]. Token t is the patch of samples
[t p, (t+1) p); through the model's convolutional stem it sees h = ``model.stem_reach`` more
samples on each side (``model.receptive_field(t)``), a window centred on the patch's centre
t p + (p - 1) / 2, which is where ``relevance_over_time`` places its value when it upsamples the
relevance to the signal's samples for ET's weighting.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FLOW_EXPLAINERS", "mixing_matrices", "mixing_shares", "relevance_over_time"]

# Attention explainers that read M as a flow (proportions): they get the magnitude shares.
FLOW_EXPLAINERS = frozenset({"rollout", "rollout_fem"})


def mixing_matrices(maps: Any) -> list[torch.Tensor]:
    """Per-layer token-mixing matrices M = P F [B, H, N, N] (signed), first layer first, of
    captured Linformer maps (`harness.models.signal.LinformerAttentionMaps`).

    These are the captured tensors of the forward graph (gradients w.r.t. them exist). A gradient
    container (``maps.gradients(score)``) gives dM in the same layout.
    """
    return list(maps.mixing)


def mixing_shares(mixing: torch.Tensor) -> torch.Tensor:
    """Magnitude shares S = |M| / rowsum(|M|) of a mixing matrix [..., N, N] (row-stochastic,
    non-negative; an all-zero row stays zero). Equals M when M is already row-stochastic."""
    magnitude = mixing.abs()
    total = magnitude.sum(-1, keepdim=True)
    return magnitude / torch.where(total > 0, total, torch.ones_like(total))


def relevance_over_time(relevance: torch.Tensor, signal_length: int) -> torch.Tensor:
    """Token relevance [B, N-1] -> per-sample weights [B, signal_length] in [0, 1].

    Negative relevance (evidence against the class, e.g. signed Eigen-CAM or Rollout-Grad) counts
    as 0; the values are interpolated linearly between the tokens' centres (token t's centre is
    sample t p + (p - 1) / 2, p = signal_length / (N-1); constant beyond the first and last
    centres) and divided by their maximum per signal, as the video ``soft`` policy does. A map with
    no positive value (no information) gives all ones: weighting by it leaves the signal as is.
    Multiply a signal [B, L, C] by ``relevance_over_time(r, L)[..., None]`` to weight it.
    """
    if relevance.dim() != 2 or relevance.shape[1] < 1:
        raise ValueError(
            f"relevance must be [B, N-1] (one value per time token); got {list(relevance.shape)}"
        )
    if signal_length < 1:
        raise ValueError(f"signal_length must be >= 1, got {signal_length}")
    r = relevance.detach()
    r = (r if r.is_floating_point() else r.float()).relu()
    r = F.interpolate(r[:, None], size=signal_length, mode="linear", align_corners=False)[:, 0]
    peak = r.amax(-1, keepdim=True)
    return torch.where(peak > 0, r / peak.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(r))
