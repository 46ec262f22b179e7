"""Model adapter: TimeSformer's divided space-time attention as per-step token-mixing matrices.

The pure explainers of this package take a list of [B, H, N, N] attention matrices over one token
set. TimeSformer (divided space-time) has no such matrix: each block runs a temporal attention per
patch ([B, P, H, T, T], no class token) and then a spatial attention per frame
([B, T, H, 1+P, 1+P], the class token copied into every frame). Both are linear token mixings of
the same N = 1 + T*P tokens, so each is written exactly as an N x N matrix and the block becomes two
rollout steps, temporal then spatial (each with its own residual, hence its own "+ I"):

* tokens are numbered frame-major here: 0 is the class token, 1 + t*P + p is patch p of frame t
  (transformers orders them patch-major internally; the adapter reorders);
* temporal step: the class token is not attended (row 0 = e_0); row (t, p) holds the temporal
  attention of patch p from frame t to every frame t' at the same patch p;
* spatial step: row (t, p) holds frame t's spatial attention of patch p (to the class token and the
  patches of frame t); the class token's output is the mean over frames of its per-frame outputs
  (that is what TimeSformer computes), so row 0 is mean_t of the class rows: column 0 gets
  mean_t a_t[0, 0] and column (t, q) gets a_t[0, 1+q] / T. The class token's value is the same in
  every frame, so this matrix reproduces the block's mixing exactly.

Gradients are mapped by the chain rule onto the same entries: d/dD[0, (t,q)] = T * d/da_t[0, 1+q]
and d/dD[0, 0] = sum_t d/da_t[0, 0]; every other entry is copied. Hence A * dA (Rollout-Grad, TIBAV)
is the same whether computed on the blocks or on the composed matrices.

Both matrices are block-diagonal (per patch, per frame) plus the class row and column: at most
1 + T*T*P (temporal) and 1 + 2*T*P + T*P*P (spatial) of their N^2 entries can be non-zero.
`divided_steps` gives the same steps as `compose_divided` in that form (`TemporalMixing` and
`SpatialMixing`, the `Mixing` of `harness.explain.attention`: the values of those entries, mostly
views of the captured attentions, propagating the class row block by block). The explainers run on
them unchanged, give the same result and never form an N x N matrix: the TimeSformer adapter
(`harness.models.video.TimeSformerAdapter`) uses them, and `compose_divided` with its dense
matrices is the reference they are tested against.

The result of every explainer is one relevance per (frame, patch): [B, T, h, w].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .attention import Mixing, discard_lowest
from .mixing import CapturedAttention


@dataclass
class DividedAttention(CapturedAttention):
    """Attention probabilities of every TimeSformer block, as the blocks computed them.

    `captured` holds the tensors used in the forward graph (temporal then spatial, block by block):
    take gradients with respect to them (`gradients`). Regrouped per clip:
    temporal[l]: [B, P, H, T, T]  (query frame, key frame) for each spatial patch p;
    spatial[l]:  [B, T, H, 1+P, 1+P]  (class token first) for each frame t.
    Patches are numbered row-major on the (h, w) grid: p = row * w + col.
    """

    grid: tuple[int, int, int]  # (T, h, w)

    @property
    def temporal(self) -> list[torch.Tensor]:
        T, h, w = self.grid
        return [a.reshape(-1, h * w, *a.shape[1:]) for a in self.captured[0::2]]

    @property
    def spatial(self) -> list[torch.Tensor]:
        return [a.reshape(-1, self.grid[0], *a.shape[1:]) for a in self.captured[1::2]]


def compose_temporal(temporal: torch.Tensor, *, gradient: bool = False) -> torch.Tensor:
    """[B, P, H, T, T] temporal attention -> [B, H, N, N] mixing matrix (class row = e_0).

    For a gradient the class corner is 0: the class token's pass-through is not an attention
    weight, so the score has no gradient with respect to it."""
    B, P, H, T, _ = temporal.shape
    blocks = temporal.permute(0, 2, 3, 1, 4)  # [B, H, t, p, t']
    eye_p = torch.eye(P, dtype=temporal.dtype, device=temporal.device)
    patches = (blocks.unsqueeze(-1) * eye_p[:, None, :]).reshape(B, H, T * P, T * P)
    out = temporal.new_zeros(B, H, 1 + T * P, 1 + T * P)
    out[:, :, 0, 0] = 0.0 if gradient else 1.0
    out[:, :, 1:, 1:] = patches
    return out


def compose_spatial(spatial: torch.Tensor, *, gradient: bool = False) -> torch.Tensor:
    """[B, T, H, 1+P, 1+P] spatial attention (or its gradient) -> [B, H, N, N]."""
    B, T, H, _, Q = spatial.shape
    P = Q - 1
    s = spatial.permute(0, 2, 1, 3, 4)  # [B, H, T, 1+P, 1+P]
    eye_t = torch.eye(T, dtype=spatial.dtype, device=spatial.device)
    patches = s[..., 1:, 1:]  # [B, H, t, p, q], block-diagonal over frames
    patches = (patches.unsqueeze(-2) * eye_t[:, None, :, None]).reshape(B, H, T * P, T * P)
    out = spatial.new_zeros(B, H, 1 + T * P, 1 + T * P)
    out[:, :, 1:, 1:] = patches
    out[:, :, 1:, 0] = s[..., 1:, 0].reshape(B, H, T * P)
    cls_row = s[..., 0, 1:].reshape(B, H, T * P)
    if gradient:
        out[:, :, 0, 0] = s[..., 0, 0].sum(-1)
        out[:, :, 0, 1:] = cls_row * T
    else:
        out[:, :, 0, 0] = s[..., 0, 0].mean(-1)
        out[:, :, 0, 1:] = cls_row / T
    return out


def compose_divided(attention: DividedAttention, *, gradient: bool = False) -> list[torch.Tensor]:
    """Per block [temporal, spatial] mixing matrices, first block first: 2L tensors [B,H,N,N]."""
    steps: list[torch.Tensor] = []
    for temporal, spatial in zip(attention.temporal, attention.spatial):
        steps.append(compose_temporal(temporal, gradient=gradient))
        steps.append(compose_spatial(spatial, gradient=gradient))
    return steps


@dataclass(frozen=True)
class TemporalMixing:
    """The temporal step of `compose_temporal` as a `Mixing`, without its N x N matrix.

    parts: X[0, 0] [..., 1]; the per-patch blocks [..., P, T, T], X[(t, p), (u, p)] at [p, t, u]
    (patch p attending from frame t to frame u). Every other entry is 0.
    """

    frames: int
    patches: int
    parts: tuple[Tensor, Tensor]

    @property
    def n(self) -> int:
        return 1 + self.frames * self.patches

    def with_parts(self, parts: Sequence[Tensor]) -> TemporalMixing:
        return TemporalMixing(self.frames, self.patches, tuple(parts))

    def first_row(self) -> Tensor:
        corner = self.parts[0]
        return torch.cat([corner, corner.new_zeros((*corner.shape[:-1], self.n - 1))], -1)

    def propagate(self, r: Tensor, normalise: bool) -> Tensor:
        corner, blocks = self.parts
        rp = r[..., 1:].unflatten(-1, (self.frames, self.patches)).transpose(-1, -2)  # [..., P, T]
        if normalise:
            rp = rp / blocks.sum(-1).add_(1)
        rp = rp + (rp.unsqueeze(-1) * blocks).sum(-2)
        # Row and column 0 of X are X[0, 0] e_0: normalised, r[0] (1 + X[0, 0]) / (1 + X[0, 0]).
        r0 = r[..., :1] if normalise else r[..., :1] * (1 + corner)
        return torch.cat([r0, rp.transpose(-1, -2).flatten(-2)], -1)

    def discard(self, ratio: float) -> TemporalMixing:
        """Each patch's T x T temporal map on its own; no class token, nothing spared (the
        corner is the class token's pass-through, not an attention weight: never dropped)."""
        corner, blocks = self.parts
        kept = discard_lowest(blocks.flatten(-2), ratio, spare_first=False).view_as(blocks)
        return self.with_parts((corner, kept))


@dataclass(frozen=True)
class SpatialMixing:
    """The spatial step of `compose_spatial` as a `Mixing`, without its N x N matrix.

    parts: X's row 0 [..., N] (X[0, 0], then the class row X[0, (t, q)] at 1 + t*P + q); the rows
    of the patches [..., T, P, 1+P], [t, p, 0] = X[(t, p), 0] (class column) and [t, p, 1 + q] =
    X[(t, p), (t, q)] (frame t's block). Every other entry is 0. A third part, each frame's class
    self-attention a_t[0, 0] [..., T] (X[0, 0] is their mean), is no entry of X: it completes frame
    t's own map for `discard`, which ranks each frame's map as vit-explain ranks a ViT's.
    """

    frames: int
    patches: int
    parts: tuple[Tensor, Tensor, Tensor]

    @property
    def n(self) -> int:
        return 1 + self.frames * self.patches

    def with_parts(self, parts: Sequence[Tensor]) -> SpatialMixing:
        return SpatialMixing(self.frames, self.patches, tuple(parts))

    def first_row(self) -> Tensor:
        return self.parts[0]

    def propagate(self, r: Tensor, normalise: bool) -> Tensor:
        first, rows, _ = self.parts
        if normalise:
            sums = torch.cat([first.sum(-1, keepdim=True), rows.sum(-1).flatten(-2)], -1)
            r = r / sums.add_(1)
        rp = r[..., 1:].unflatten(-1, (self.frames, self.patches))
        if self.patches > 32:  # batched matmul over (B, T[, H]): the model's order, no copy
            mixed = rp.movedim(-2, 1).unsqueeze(-2) @ rows.movedim(-3, 1)
            mixed = mixed.squeeze(-2).movedim(1, -2)
        else:  # small blocks: cheaper than a batched matmul of many tiny products
            mixed = (rp.unsqueeze(-1) * rows).sum(-2)
        # mixed [..., T, 1+P]: r X through the class column, then through the blocks
        out = torch.cat([mixed[..., 0].sum(-1, keepdim=True), mixed[..., 1:].flatten(-2)], -1)
        return out.addcmul_(r[..., :1], first).add_(r)  # + r[0] X[0, :] + r

    def discard(self, ratio: float) -> SpatialMixing:
        """Each frame's (1+P) x (1+P) spatial map on its own, as vit-explain treats a ViT's map
        (class self-attention a_t[0, 0] first and spared), then composed again."""
        first, rows, corners = self.parts
        T, P = self.frames, self.patches
        cls_rows = first[..., 1:].unflatten(-1, (T, P)) * T  # a_t[0, 1 + q]
        maps = torch.cat([corners.unsqueeze(-1), cls_rows, rows.flatten(-2)], -1)  # [..., T, E]
        kept = discard_lowest(maps, ratio)
        first = torch.cat([first[..., :1], kept[..., 1 : 1 + P].flatten(-2) / T], -1)
        return self.with_parts((first, kept[..., 1 + P :].view_as(rows), corners))


def temporal_step(temporal: Tensor, *, gradient: bool = False) -> TemporalMixing:
    """[B, P, H, T, T] temporal attention (or its gradient) -> the step of `compose_temporal`
    (its blocks a view of `temporal`)."""
    B, P, H, T, _ = temporal.shape
    corner = temporal.new_zeros(B, H, 1) if gradient else temporal.new_ones(B, H, 1)
    return TemporalMixing(T, P, (corner, temporal.transpose(1, 2)))


def spatial_step(spatial: Tensor, *, gradient: bool = False) -> SpatialMixing:
    """[B, T, H, 1+P, 1+P] spatial attention (or its gradient, as in `compose_spatial`) -> the step
    of `compose_spatial` (its patches' rows a view of `spatial`)."""
    T = spatial.shape[1]
    s = spatial.transpose(1, 2)  # [B, H, T, 1+P, 1+P]
    cls = s[..., 0, :]  # each frame's class row, [B, H, T, 1+P]
    corners, row = cls[..., 0], cls[..., 1:]
    if gradient:
        corner, row = corners.sum(-1, keepdim=True), row * T
    else:
        corner, row = corners.mean(-1, keepdim=True), row / T
    first = torch.cat([corner, row.flatten(2)], -1)
    return SpatialMixing(T, s.shape[-1] - 1, (first, s[..., 1:, :], corners))


def divided_steps(attention: DividedAttention, *, gradient: bool = False) -> list[Mixing]:
    """The steps of `compose_divided` (same order, same entries) as `Mixing`s: 2L of them."""
    steps: list[Mixing] = []
    for temporal, spatial in zip(attention.temporal, attention.spatial):
        steps.append(temporal_step(temporal, gradient=gradient))
        steps.append(spatial_step(spatial, gradient=gradient))
    return steps


def tokens_to_grid(features: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """TimeSformer tokens [B, 1 + P*T, C] (patch-major, class first) -> [B, C, T, h, w]."""
    T, h, w = grid
    B, N, C = features.shape
    if N != 1 + T * h * w:
        raise ValueError(f"expected 1 + {T}*{h}*{w} tokens for grid {grid}, got {N}")
    return features[:, 1:].reshape(B, h * w, T, C).permute(0, 3, 2, 1).reshape(B, C, T, h, w)
