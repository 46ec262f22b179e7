"""Transformer parts shared by the plain-torch video models (Pool-T, Video Swin-T).

`Attention` is multi-head self-attention whose probabilities are computed in one place,
`Attention.probabilities(logits)` (softmax over the keys): the one method to override or hook to
change how an attention is formed. While a model is `gating` (its `attention_gate` set, IFI's
gate reading), the i-th `Attention` to run passes its probabilities A through
`attention_gate(i, A)`. While a model is `capturing`, every `Attention` appends the probabilities
it used (gated or not), the very tensors of the forward graph (no attention dropout), so the
gradients of a score with respect to them are true gradients.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """softmax(q k^T / sqrt(d) + bias) v over tokens [B, N, C], `heads` heads; `qkv` and `proj`
    named as in timm and torchvision."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the width ({dim}) must be a multiple of the heads ({heads})")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.kept: list[Tensor] | None = None  # set by `capturing`
        self.gate: Callable[[Tensor], Tensor] | None = None  # set by `gating`

    def probabilities(self, logits: Tensor) -> Tensor:
        """Attention logits [..., N, N] -> probabilities (softmax over the keys), through the
        model's gate while it is `gating`."""
        attention = logits.softmax(-1)
        return attention if self.gate is None else self.gate(attention)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
        if bias is not None:
            logits = logits + bias
        attention = self.probabilities(logits)
        if self.kept is not None:
            self.kept.append(attention)
        return self.proj((attention @ v).transpose(1, 2).reshape(B, N, C))


def mlp(dim: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear-GELU-Dropout-Linear-Dropout, indexed as torchvision's MLP (mlp.0, mlp.3)."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
        nn.Dropout(dropout),
    )  # fmt: skip


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): the residual branch is dropped with
    probability p in training, scaled by 1 / (1 - p) when kept."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@contextmanager
def gating(model: nn.Module) -> Iterator[None]:
    """Within it, with `model.attention_gate` set (an `AttentionGate`, harness/models/base.py),
    the i-th `Attention` of `model` to run (in this forward, the order they are captured in)
    returns attention_gate(i, A) for its probabilities A; nothing changes when it is None."""
    gate = getattr(model, "attention_gate", None)
    modules = [m for m in model.modules() if isinstance(m, Attention)] if gate is not None else []
    order = itertools.count()
    for m in modules:
        m.gate = lambda attention: gate(next(order), attention)
    try:
        yield
    finally:
        for m in modules:
            m.gate = None


@contextmanager
def capturing(model: nn.Module, on: bool = True) -> Iterator[list[Tensor]]:
    """Within it, every `Attention` of `model` appends its probabilities to the yielded list, in
    the order they run (nothing is kept with `on=False`)."""
    kept: list[Tensor] = []
    modules = [m for m in model.modules() if isinstance(m, Attention)] if on else []
    for m in modules:
        m.kept = kept
    try:
        yield kept
    finally:
        for m in modules:
            m.kept = None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_clips(clips: Tensor) -> Tensor:
    """Clips [B, T, 3, S, S] in [0, 1] -> ImageNet-standardised (as video processors do)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=clips.dtype, device=clips.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=clips.dtype, device=clips.device).view(1, 1, 3, 1, 1)
    return (clips - mean) / std
