"""Pool-T: separable spatial and temporal attention and a learned importance pooling over time.

Mallick, Benois-Pineau, Zemmari, "Pooling Transformer for Detection of Risk Events in In-The-Wild
Video Ego Data" (ICPR 2022). The paper's exact layer list is not at hand; what it states is
separable spatial and temporal attention and a pooling over time that learns each frame's
importance (+3% on BIRDS from the pooling). Our reading, a factorised encoder:

    frame t:   z_t = [c; E x_t^1 .. E x_t^P] + pos      a class token and the P patch embeddings
               z_t <- spatial blocks (pre-norm ViT, attention over the 1+P tokens of frame t)
    time:      f = [z_1[c] .. z_T[c]] + time pos        the frame tokens
               f <- temporal blocks (attention over the T frame tokens)
    pooling:   s_t = v^T tanh(U LN(f_t)),  w = softmax_t(s),  clip = sum_t w_t LN(f_t)
    logits  =  head(clip)

The importance pooling is the attention-based pooling of Ilse, Tomczak & Welling ("Attention-based
deep multiple instance learning", ICML 2018): one learned weight per frame, a softmax over time.

Explained exactly (`PoolTAdapter`): tokens are numbered frame-major, 0 the clip (readout) token,
1 + t(1+P) the class token of frame t, 1 + t(1+P) + 1 + p its patch p. Each spatial block is a
`GroupMixing` over the frames (block-diagonal, one (1+P) x (1+P) block per frame), each temporal
block a `GroupMixing` over the T frame tokens (the patch tokens keep their residual only), and the
importance pooling the last step, a `ReadoutMixing` whose row holds w at the frame tokens: the
readout is a token mixing like any attention, so rollout, Rollout-FEM, Rollout-Grad and TIBAV pass
through it (the gradient explainers with its true gradient dw). The relevance of the patch tokens
is the explanation, per (frame, patch) [B, T, h, w]; the frame class tokens' own share (their
learned start) is not an input region and is dropped (`input_tokens`; Rollout-FEM's k-sigma
statistics are taken over the patch tokens only). The CAM features are the tokens entering the
last spatial block (their patch tokens reach the class through its frame token).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from harness.explain.mixing import CapturedAttention, GroupMixing, ReadoutMixing
from harness.models.base import (
    Adapter,
    AttentionGate,
    AttentionPairs,
    Need,
    Selector,
    SingleInput,
    check_clip_shape,
    check_clips,
    spatial_temporal_pairs,
)
from harness.models.layers import Block, capturing, gating, normalise_clips


@dataclass
class PoolTAttention(CapturedAttention):
    """What one forward attended with, as computed (take gradients with respect to `captured`).

    captured: the spatial blocks' attentions [B*T, H, 1+P, 1+P], then the temporal blocks'
    [B, H, T, T], then the importance weights [B, T]; `spatial`, `temporal`, `pooling` regroup them
    per clip (spatial [B, T, H, 1+P, 1+P])."""

    frames: int
    spatial_layers: int

    @property
    def spatial(self) -> list[Tensor]:
        return [a.unflatten(0, (-1, self.frames)) for a in self.captured[: self.spatial_layers]]

    @property
    def temporal(self) -> list[Tensor]:
        return self.captured[self.spatial_layers : -1]

    @property
    def pooling(self) -> Tensor:
        return self.captured[-1]


@dataclass
class PoolTOutput:
    logits: Tensor  # [B, num_classes]
    attention: PoolTAttention | None = None
    features: Tensor | None = None  # tokens entering the last spatial block [B*T, 1+P, C]
    embedded: Tensor | None = None  # the embedding output [B*T, 1+P, C] (before pruning)


class ImportancePooling(nn.Module):
    """w = softmax_t(v^T tanh(U f_t)) over frame tokens f [B, T, C]; returns (sum_t w_t f_t, w)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.score(frames).squeeze(-1).softmax(-1)  # [B, T]
        return (weights.unsqueeze(-1) * frames).sum(1), weights


class PoolTClassifier(SingleInput, nn.Module):
    """Pool-T over clips [B, T, 3, S, S] in [0, 1] (ImageNet-standardised here); T and S must be
    the config's `num_frames` and `image_size`. Random init (truncated normal 0.02 for positions
    and class token, PyTorch defaults elsewhere)."""

    modalities = ("video",)
    attention_gate: AttentionGate | None = None  # IFI's gate reading (layers.gating)

    def __init__(
        self,
        num_classes: int,
        *,
        num_frames: int = 8,
        image_size: int = 32,
        patch_size: int = 8,
        hidden_size: int = 64,
        spatial_layers: int = 2,
        temporal_layers: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        pool_hidden: int = 32,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide image_size ({image_size})")
        if spatial_layers < 1 or temporal_layers < 0:
            raise ValueError("Pool-T needs spatial_layers >= 1 and temporal_layers >= 0")
        side = image_size // patch_size
        self.num_frames, self.image_size = num_frames, image_size
        self.grid: tuple[int, int, int] = (num_frames, side, side)
        P, C = side * side, hidden_size
        self.patch_embed = nn.Conv2d(3, C, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + P, C))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, C))
        rates = torch.linspace(0, drop_path, spatial_layers + temporal_layers).tolist()
        self.spatial = nn.ModuleList(
            Block(C, num_heads, mlp_ratio, dropout, rate) for rate in rates[:spatial_layers]
        )
        self.temporal = nn.ModuleList(
            Block(C, num_heads, mlp_ratio, dropout, rate) for rate in rates[spatial_layers:]
        )
        self.norm = nn.LayerNorm(C)
        self.pool = ImportancePooling(C, pool_hidden)
        self.head = nn.Linear(C, num_classes)
        for p in (self.cls_token, self.pos_embed, self.time_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(
        self,
        clips: Tensor,
        *,
        capture: bool = False,
        keep: Tensor | Selector | None = None,
        tokens: Tensor | None = None,
        after: int = 0,
    ) -> PoolTOutput:
        """Logits (and with `capture` the attentions and CAM features) of clips.

        `keep` (int64 [B, k], ascending; ET's `prune` policy): the spatial patches kept in every
        frame; each frame's class token and kept patch tokens (position embeddings added) are all
        the spatial blocks see, so the frame tokens read the kept patches only. `tokens`: this
        clip's embedding from an earlier forward (`PoolTOutput.embedded`) instead of `clips`.

        `after` = d in 1..(spatial blocks - 1) (ET's `method.prune_after`): spatial blocks 1..d
        run on every token with their attentions captured, `keep` is a `Selector` called on them
        and spatial blocks d+1.. run on each frame's class token and the block-d outputs of its
        kept patches (not with `capture`). The `PoolTOutput` it is called on holds the d blocks'
        attentions and, for the temporal blocks and the importance pooling not yet run, a
        uniform pooling over the frames (w_t = 1/T): the clip read as the mean of its frame
        tokens, the only readout those blocks give without the later ones.
        """
        if after and (capture or not callable(keep) or not 0 < after < len(self.spatial)):
            raise ValueError(
                f"after={after}: in-forward pruning needs 0 < after < the model's "
                f"{len(self.spatial)} spatial blocks, a keep selector, and no capture"
            )
        if tokens is None:
            check_clip_shape(clips, self.num_frames, self.image_size)
            x = self.patch_embed(normalise_clips(clips).flatten(0, 1)).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        T = self.num_frames
        B = len(tokens) // T
        x, features = tokens, None
        with capturing(self, capture or bool(after)) as kept, gating(self):
            for block in self.spatial[:after]:
                features, x = x, block(x)
            if keep is not None:  # the frame token and the kept patches of every frame
                if after:  # rank on the first blocks' attentions; the rest are not kept
                    uniform = x.new_full((B, T), 1 / T)
                    keep = keep(PoolTOutput(None, PoolTAttention([*kept, uniform], T, after)))
                    kept.clear()
                index = torch.cat([keep.new_zeros(B, 1), keep + 1], 1).repeat_interleave(T, 0)
                x = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
            for block in self.spatial[after:]:
                features, x = x, block(x)
            frames = x[:, 0].unflatten(0, (B, T)) + self.time_embed  # [B, T, C]
            for block in self.temporal:
                frames = block(frames)
            clip, weights = self.pool(self.norm(frames))
        logits = self.head(clip)
        if not capture:
            return PoolTOutput(logits)
        attention = PoolTAttention([*kept, weights], T, len(self.spatial))
        return PoolTOutput(logits, attention, features, tokens)


class PoolTAdapter(Adapter):
    name = "pool_t"
    inputs = ("video",)
    prunes = True
    pruning = "the same spatial patches in every frame (the spatial blocks; frame tokens kept)"
    prunes_in_forward = True  # after its first spatial blocks, on their attentions

    def prune_depth(self, cfg: Mapping[str, Any]) -> int | None:
        """The spatial blocks (the temporal ones see the frame tokens only)."""
        return int(cfg.get("spatial_layers", 2))

    def build(self, num_classes: int, signal_channels: int | None, **cfg: Any) -> nn.Module:
        return PoolTClassifier(num_classes, **cfg)

    def check(self, need: Need, data, cfg, where: str) -> None:
        check_clips(need, data, cfg, where)
        need(cfg["image_size"] % cfg["patch_size"] == 0, f"{where}.patch_size",
             f"a divisor of {where}.image_size ({cfg['image_size']})")  # fmt: skip
        need(int(cfg["hidden_size"]) % int(cfg["num_heads"]) == 0, f"{where}.num_heads",
             f"a divisor of {where}.hidden_size ({cfg['hidden_size']})")  # fmt: skip

    def attention_steps(self, output: PoolTOutput, explainer: str, score=None):
        attention = output.attention
        if score is None:
            return pool_t_steps(attention), None
        gradients = pool_t_steps(attention.gradients(score))
        return pool_t_steps(attention.detached()), gradients

    def feature_grid(self, model: PoolTClassifier, tokens: Tensor) -> Tensor:
        T, h, w = model.grid
        patches = tokens[:, 1:].unflatten(0, (-1, T))  # [B, T, P, C]
        return patches.permute(0, 3, 1, 2).unflatten(-1, (h, w))

    def input_tokens(self, model: PoolTClassifier, device: torch.device) -> Tensor:
        """The patch tokens (frame-major), without the frame tokens."""
        T, h, w = model.grid
        return torch.arange(T * (1 + h * w), device=device).view(T, -1)[:, 1:].flatten()

    def supervised_attention(
        self, output: PoolTOutput, score: Tensor, class_rows: bool
    ) -> AttentionPairs:
        """Every spatial block's attention (only its frame-token rows with `class_rows`) and,
        unless `class_rows`, every temporal block's."""
        return spatial_temporal_pairs(output.attention, score, class_rows)


PoolTClassifier.adapter = PoolTAdapter()


def pool_t_steps(attention: PoolTAttention) -> list[GroupMixing | ReadoutMixing]:
    """The token-mixing steps of a Pool-T forward, first first (see the module docstring):
    spatial blocks, temporal blocks, the importance pooling. Values or gradients alike."""
    spatial, temporal, weights = attention.spatial, attention.temporal, attention.pooling
    B, T, H, Q, _ = spatial[0].shape
    n = 1 + T * Q
    frames = torch.arange(1, n, device=weights.device).view(T, Q)  # frame t's tokens
    frame_tokens = frames[:, :1].T  # [1, T]: the frame class tokens
    corner = weights.new_zeros(B, H, 1)
    steps: list[GroupMixing | ReadoutMixing] = [
        GroupMixing(n, frames, (corner, a.transpose(1, 2)), class_first=True)
        for a in spatial
    ]
    steps += [GroupMixing(n, frame_tokens, (corner, a.unsqueeze(2))) for a in temporal]
    row = weights.new_zeros(B, n).index_copy(1, frame_tokens[0], weights)
    steps.append(ReadoutMixing(n, (row[:, None].expand(B, H, n),)))
    return steps
