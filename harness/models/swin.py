"""Video Swin-T: 3D shifted-window attention with relative position bias, patch merging, pooling.

Liu, Ning, Cao, Wei, Zhang, Lin, Hu, "Video Swin Transformer", CVPR 2022
(https://arxiv.org/abs/2106.13230). Clips are cut into 3D patches (`patch_size`, (2, 4, 4) in the
paper), embedded and normalised; each stage is a sequence of blocks, x + attn(norm1(x)) then
x + mlp(norm2(x)), whose attention runs inside 3D windows (`window_size`, (8, 7, 7) in the paper)
with a learned relative position bias, every second block on the grid cyclically shifted by half a
window (tokens that the roll brought from different regions are masked apart with -100, as the
reference implementation); between stages, patch merging concatenates each 2 x 2 spatial
neighbourhood and projects it (4C -> 2C); the last stage's tokens are normalised, averaged and
classified. Parameters are named as torchvision's `swin3d_t` names them (`patch_embed.proj`,
`features.<i>.<j>.attn.qkv`, `features.<i>.reduction`, `head`, ...), so a Kinetics-400 state dict
saved from torchvision loads with `model.pretrained=<file>` (weights_only; the head is replaced
when the class count differs). Windows must tile the grid (no padding; a window larger than the
grid shrinks to it and is not shifted, as in torchvision). The default config is tiny (random
weights); `embed_dim=96, depths=[2,2,6,2], num_heads=[3,6,12,24], window_size=[8,7,7]` and
224-pixel frames give Swin-T.

Explained exactly (`VideoSwinAdapter`) on the union of every stage's tokens: token 0 is the pooled
readout (virtual), then the stage-1 tokens (row-major over the patch grid (t, i, j)), the stage-2
tokens, ... Each block is a `GroupMixing` whose groups are its windows on the shifted grid (the
block-diagonal token mixing of shifted windows, masked entries included as the probabilities they
are); each patch merging a `GroupMixing` whose groups are (parent, its 4 children) with weight 1
from the parent to each child (the linearised merge sums its children); the readout a
`ReadoutMixing` of weight 1 / N_L on the last stage's tokens. A token of a later stage has no state
before its merge, so the relevance its own column collects is dropped, with the readout's: the
explanation is the relevance of the stage-1 tokens, each covering `patch_size[0]` frames (repeated
over them: relevance per frame and patch [B, T, h, w]). Merges and the readout are fixed mixings:
the gradient explainers take them as they are (gradient part 1, so A * dA = A). Stages have
different head counts: every step is given the last stage's H heads, head i of stage s being head
i // (H / h_s) (means, minima and maxima over heads are unchanged; Rollout-FEM rolls head i out
through those). The CAM features are the stage-1 tokens entering the last stage-1 block, at the
resolution of the explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.explain.mixing import CapturedAttention, GroupMixing, ReadoutMixing, group_index
from harness.models.base import (
    Adapter,
    AttentionGate,
    AttentionPairs,
    Need,
    SingleInput,
    check_clip_shape,
    check_clips,
)
from harness.models.layers import Attention, DropPath, capturing, gating, mlp, normalise_clips


def window_and_shift(grid, window, shift) -> tuple[list[int], list[int]]:
    """torchvision's rule: a window not smaller than the grid becomes the grid, unshifted."""
    window, shift = list(window), list(shift)
    for i in range(3):
        if grid[i] <= window[i]:
            window[i], shift[i] = grid[i], 0
    return window, shift


def shift_mask(grid, window, shift) -> Tensor:
    """[nW, m, m] additive mask of a shifted partition: -100 between tokens of different regions."""
    ids = torch.zeros(*grid)
    count = 0
    cuts = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
    for d in cuts[0]:
        for h in cuts[1]:
            for w in cuts[2]:
                ids[d[0] : d[1], h[0] : h[1], w[0] : w[1]] = count
                count += 1
    windows = group_index(grid, window, [0, 0, 0]) - 1  # unshifted partition of the rolled grid
    region = ids.flatten()[windows]  # [nW, m]
    return (region[:, None, :] - region[:, :, None]).ne(0).float() * -100.0


class ShiftedWindowAttention3d(Attention):
    """Window attention with relative position bias (`relative_position_bias_table`,
    `relative_position_index`, as torchvision) over tokens [B, T, H, W, C]."""

    def __init__(self, dim: int, window_size, shift_size, num_heads: int) -> None:
        super().__init__(dim, num_heads)
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        wd, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in self.window_size),
                                            indexing="ij")).flatten(1)  # fmt: skip
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
        rel = rel * torch.tensor([(2 * wh - 1) * (2 * ww - 1), 2 * ww - 1, 1])
        self.register_buffer("relative_position_index", rel.sum(-1))

    def windows(self, grid) -> tuple[list[int], list[int]]:
        return window_and_shift(grid, self.window_size, self.shift_size)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        B, T, H, W, C = x.shape
        window, shift = self.windows((T, H, W))
        m = math.prod(window)
        bias = self.relative_position_bias_table[
            self.relative_position_index[:m, :m].flatten()  # torchvision's slice
        ].view(m, m, -1).permute(2, 0, 1)  # [heads, m, m]
        if any(shift):
            x = torch.roll(x, shifts=[-s for s in shift], dims=(1, 2, 3))
            bias = bias + shift_mask((T, H, W), window, shift).to(x)[:, None]  # [nW, h, m, m]
        nw = [n // w for n, w in zip((T, H, W), window)]
        windows = x.view(B, nw[0], window[0], nw[1], window[1], nw[2], window[2], C)
        windows = windows.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, m, C)  # [B*nW, m, C]
        bias = bias.expand(B, math.prod(nw), self.heads, m, m).reshape(-1, self.heads, m, m)
        out = super().forward(windows, bias)
        out = out.view(B, *nw, *window, C).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, T, H, W, C)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        return out


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim, heads, window, shift, mlp_ratio, dropout, drop_path) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention3d(dim, window, shift, heads)
        self.stochastic_depth = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """[B, T, H, W, C] -> [B, T, H/2, W/2, 2C]: each 2 x 2 neighbourhood concatenated (torchvision's
    order x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]), normalised, projected."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                       x[..., 1::2, 1::2, :]], -1)  # fmt: skip
        return self.reduction(self.norm(x))


class PatchEmbed3d(nn.Module):
    def __init__(self, patch_size, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, T, H, W] -> [B, T', H', W', C]
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


@dataclass
class SwinAttention(CapturedAttention):
    """Every block's window attention as computed, [B*nW, h_s, m, m] in block order (`captured`:
    take gradients with respect to them), with the geometry of each: its stage's grid, windows and
    shift (`layout`) and the heads of every stage."""

    layout: list[tuple[int, tuple[int, int, int], list[int], list[int]]]  # (stage, grid, w, s)
    batch: int

    @property
    def stage_grids(self) -> list[tuple[int, int, int]]:
        grids: dict[int, tuple[int, int, int]] = {}
        for stage, grid, _, _ in self.layout:
            grids.setdefault(stage, grid)
        return [grids[s] for s in sorted(grids)]


@dataclass
class SwinOutput:
    logits: Tensor
    attention: SwinAttention | None = None
    features: Tensor | None = None  # stage-1 tokens entering its last block [B, T', H', W', C]


class VideoSwinClassifier(SingleInput, nn.Module):
    """Video Swin over clips [B, T, 3, S, S] in [0, 1] (ImageNet-standardised here)."""

    modalities = ("video",)
    attention_gate: AttentionGate | None = None  # IFI's gate reading (layers.gating)

    def __init__(
        self,
        num_classes: int,
        *,
        num_frames: int = 8,
        image_size: int = 32,
        patch_size: tuple[int, int, int] = (2, 4, 4),
        embed_dim: int = 32,
        depths: tuple[int, ...] = (2, 2),
        num_heads: tuple[int, ...] = (2, 4),
        window_size: tuple[int, int, int] = (2, 4, 4),
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_frames, self.image_size = num_frames, image_size
        self.patch_size = tuple(patch_size)
        self.token_grid = (num_frames // patch_size[0], image_size // patch_size[1],
                           image_size // patch_size[2])  # fmt: skip
        self.grid: tuple[int, int, int] = (num_frames, *self.token_grid[1:])
        self.heads = tuple(num_heads)
        self.patch_embed = PatchEmbed3d(self.patch_size, embed_dim)
        self.pos_drop = nn.Dropout(dropout)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        layers: list[nn.Module] = []
        for s, depth in enumerate(depths):
            dim = embed_dim * 2**s
            blocks = [
                SwinTransformerBlock(
                    dim, num_heads[s], window_size,
                    [0 if i % 2 == 0 else w // 2 for w in window_size], mlp_ratio, dropout,
                    rates[sum(depths[:s]) + i],
                )  # fmt: skip
                for i in range(depth)
            ]
            layers.append(nn.Sequential(*blocks))
            if s < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, clips: Tensor, *, capture: bool = False) -> SwinOutput:
        check_clip_shape(clips, self.num_frames, self.image_size)
        B, T, _, S, _ = clips.shape
        x = self.pos_drop(self.patch_embed(normalise_clips(clips).transpose(1, 2)))
        layout, features, stage = [], None, 0
        with capturing(self, capture) as kept, gating(self):
            for layer in self.features:
                if isinstance(layer, PatchMerging):
                    x, stage = layer(x), stage + 1
                    continue
                for i, block in enumerate(layer):
                    if stage == 0 and i == len(layer) - 1:
                        features = x
                    grid = tuple(x.shape[1:4])
                    layout.append((stage, grid, *block.attn.windows(grid)))
                    x = block(x)
        logits = self.head(self.norm(x).mean((1, 2, 3)))
        if not capture:
            return SwinOutput(logits)
        return SwinOutput(logits, SwinAttention(list(kept), layout, B), features)


class VideoSwinAdapter(Adapter):
    name = "video_swin_t"
    inputs = ("video",)
    pruning = "its shifted 3D windows and 2 x 2 patch merging need every token of the grid"

    def build(self, num_classes: int, signal_channels: int | None, **cfg: Any) -> nn.Module:
        pretrained = cfg.pop("pretrained", None)
        model = VideoSwinClassifier(num_classes, **cfg)
        if pretrained:
            load_pretrained(model, pretrained)
        return model

    def check(self, need: Need, data, cfg, where: str) -> None:
        check_clips(need, data, {**cfg, "pretrained": None}, where)
        patch, window = list(cfg["patch_size"]), list(cfg["window_size"])
        depths, heads = list(cfg["depths"]), list(cfg["num_heads"])
        need(len(patch) == 3 and len(window) == 3, f"{where}.patch_size",
             "3 sizes (frames, height, width), like window_size")  # fmt: skip
        need(len(depths) == len(heads) >= 1, f"{where}.num_heads",
             f"one per stage ({where}.depths)")  # fmt: skip
        sizes = (cfg["num_frames"], cfg["image_size"], cfg["image_size"])
        need(all(n % p == 0 for n, p in zip(sizes, patch)), f"{where}.patch_size",
             f"divisors of ({where}.num_frames, image_size, image_size) = {sizes}")  # fmt: skip
        grid = [n // p for n, p in zip(sizes, patch)]
        merges = 2 ** (len(depths) - 1)
        need(grid[1] % merges == 0, f"{where}.image_size",
             f"image_size / patch_size divisible by 2^(stages - 1) = {merges} (patch merging)")
        for s in range(len(depths)):
            stage = (grid[0], grid[1] // 2**s, grid[2] // 2**s)
            w, _ = window_and_shift(stage, window, [0, 0, 0])
            need(all(n % k == 0 for n, k in zip(stage, w)), f"{where}.window_size",
                 f"windows that tile stage {s + 1}'s token grid {stage} (no padding)")  # fmt: skip
            need(int(cfg["embed_dim"]) * 2**s % heads[s] == 0, f"{where}.num_heads",
                 "divisors of each stage's width (embed_dim * 2^stage)")  # fmt: skip
            need(heads[-1] % heads[s] == 0, f"{where}.num_heads",
                 "head counts dividing the last stage's (explainers pair heads across stages)")
        if cfg.get("pretrained"):
            need(Path(cfg["pretrained"]).is_file(), f"{where}.pretrained",
                 "a state dict file saved from torchvision's swin3d_t (or null)")  # fmt: skip

    def attention_steps(self, output: SwinOutput, explainer: str, score=None):
        attention = output.attention
        if score is None:
            return swin_steps(attention), None
        gradients = swin_steps(attention.gradients(score), gradient=True)
        return swin_steps(attention.detached()), gradients

    def input_tokens(self, model: VideoSwinClassifier, device: torch.device) -> Tensor:
        return torch.arange(math.prod(model.token_grid), device=device)

    def feature_grid(self, model: VideoSwinClassifier, tokens: Tensor) -> Tensor:
        return tokens.permute(0, 4, 1, 2, 3)  # [B, C, T', H', W']

    def to_regions(self, model: VideoSwinClassifier, relevance: Tensor) -> Tensor:
        """Stage-1 token relevance (flat or as the feature grid) -> per frame and patch: each
        token's value repeated over the `patch_size[0]` frames it covers."""
        relevance = relevance.reshape(len(relevance), *model.token_grid)
        return relevance.repeat_interleave(model.patch_size[0], dim=1)

    def supervised_attention(
        self, output: SwinOutput, score: Tensor, class_rows: bool
    ) -> AttentionPairs:
        """Every block's window attention; with `class_rows` (there is no class token) the last
        block's, whose every row the pooled readout reads: each row then given as a one-row map
        [B*nW, m, heads, 1, m], so that a class-row selection keeps all of them."""
        grads = output.attention.gradients(score, retain_graph=True)
        pairs = list(zip(output.attention.captured, grads.captured))
        if class_rows:
            return [tuple(t.transpose(1, 2).unsqueeze(-2) for t in pairs[-1])]
        return pairs


VideoSwinClassifier.adapter = VideoSwinAdapter()


def swin_steps(
    attention: SwinAttention, gradient: bool = False
) -> list[GroupMixing | ReadoutMixing]:
    """The token-mixing steps of a Video Swin forward on the union of its stages' tokens, first
    first (see the module docstring); `gradient`: the gradient steps (fixed mixings as 1)."""
    grids, B = attention.stage_grids, attention.batch
    heads = max(a.shape[1] for a in attention.captured)
    sizes = [math.prod(g) for g in grids]
    offsets = [1 + sum(sizes[:s]) for s in range(len(grids))]
    n = 1 + sum(sizes)
    first = attention.captured[0]
    corner = first.new_zeros(B, heads, 1)
    steps: list[GroupMixing | ReadoutMixing] = []
    stage_seen = 0
    for a, (stage, grid, window, shift) in zip(attention.captured, attention.layout):
        if stage != stage_seen:  # the patch merging before this stage
            steps.append(_merge_step(grids[stage - 1], offsets[stage - 1], offsets[stage], n,
                                     corner))  # fmt: skip
            stage_seen = stage
        index = group_index(grid, window, shift) + offsets[stage] - 1
        blocks = a.unflatten(0, (B, -1)).transpose(1, 2)  # [B, h_s, nW, m, m]
        blocks = blocks.repeat_interleave(heads // blocks.shape[1], dim=1)
        steps.append(GroupMixing(n, index.to(a.device), (corner, blocks)))
    last = offsets[-1] + torch.arange(sizes[-1], device=first.device)
    value = 1.0 if gradient else 1.0 / sizes[-1]
    row = first.new_zeros(B, n).index_fill(1, last, value)
    steps.append(ReadoutMixing(n, (row[:, None].expand(B, heads, n),)))
    return steps


def _merge_step(grid, child_offset: int, parent_offset: int, n: int, corner: Tensor) -> GroupMixing:
    """Patch merging as groups (parent, its 4 children), weight 1 from parent to each child."""
    T, H, W = grid
    ids = child_offset + torch.arange(T * H * W).view(T, H, W)
    children = torch.stack([ids[:, 0::2, 0::2], ids[:, 1::2, 0::2], ids[:, 0::2, 1::2],
                            ids[:, 1::2, 1::2]], -1).reshape(-1, 4)  # fmt: skip
    parents = parent_offset + torch.arange(len(children))
    index = torch.cat([parents[:, None], children], 1).to(corner.device)  # [G, 5]
    block = corner.new_zeros(5, 5)
    block[0, 1:] = 1.0
    B, heads, _ = corner.shape
    merge = block.expand(B, heads, len(index), 5, 5)
    return GroupMixing(n, index, (corner, merge), attention=False)


def load_pretrained(model: VideoSwinClassifier, path: str | Path) -> None:
    """Load a state dict saved from torchvision's `swin3d_t` (or this model), weights_only. The
    head is kept from `model` when its shape differs (another class count); any other missing,
    unexpected or mis-shaped key is an error naming it."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    own = model.state_dict()
    head = state.get("head.weight")
    if head is not None and head.shape != own["head.weight"].shape:
        state = {**state, "head.weight": own["head.weight"], "head.bias": own["head.bias"]}
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        raise ValueError(
            f"{path}: not a state dict of this Video Swin config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shapes {mismatched[:5]}"
        )
    model.load_state_dict(state)
