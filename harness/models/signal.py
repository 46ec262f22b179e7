"""Linformer classifier for multichannel wearable-style signals, with its attention captured.

Linformer (Wang, Li, Khabsa, Fang, Ma, "Linformer: Self-Attention with Linear Complexity", 2020,
https://arxiv.org/abs/2006.04768) projects the keys and values of self-attention along the
sequence with learned E, F in R^{k x N} (k << N), so that per head

    P = softmax(Q (E K)^T / sqrt(d))    [N, k]      (rows sum to 1)
    out = P (F V)                        [N, d]

This is the ET poster's signal branch. Here, as a small self-contained timm-style model:

* input: float signals [B, L, C] (e.g. L = 256 samples of C = 6 accelerometer/gyroscope channels),
  used as they are (no per-channel standardisation inside the model: it would be data-dependent);
* tokens: non-overlapping patches of p samples (p * C values each, time-major) embedded linearly,
  N - 1 = L / p time tokens, a class token first, learned positional embeddings;
* pre-norm blocks: x + Attn(LN(x)), x + MLP(LN(x)); final LayerNorm; linear head on the class token;
* one E and one F per layer, shared by the heads (Linformer's "headwise sharing"); ``share_kv``
  also ties F = E ("key-value sharing").

Exposed attention. The k columns of P are not tokens, so P is not a token-mixing matrix; its
composition with the value projection is: out_i = sum_j (P F)[i, j] v_j. The attention is therefore
computed through the explicit mixing matrix M = P F ([B, H, N, N], cost N^2 k per head, negligible
for N <= 33) as out = M V. That is the same function as P (F V) (up to rounding), and it makes M a
tensor of the forward graph: ``forward(x, capture=True)`` returns P, F and M of every layer, and
gradients of a score with respect to P and M are true gradients (dP = dM F^T). No attention
dropout is applied, so the captured maps are exactly the ones that mixed the tokens. M is a real
matrix, not row-stochastic: rowsum(M)_i = sum_k P[i, k] rowsum(F)_k, and its entries can be
negative (see ``harness.explain.signal`` for how the explainers treat that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.models.base import SingleInput

__all__ = [
    "Block",
    "LinformerAttention",
    "LinformerAttentionMaps",
    "Mlp",
    "SignalOutput",
    "SignalTransformer",
]


@dataclass
class LinformerAttentionMaps:
    """Every layer's Linformer attention, as the forward pass used it (first layer first).

    probabilities[l]: P  [B, H, N, k]  softmax over the k projected keys (rows sum to 1);
    projections[l]:   F  [k, N]        the value projection (a parameter, shared by the heads);
    mixing[l]:        M = P F  [B, H, N, N]  the token mixing: output i = sum_j M[i, j] v_j.
    Tokens: 0 is the class token, 1 + t is the t-th patch of time.
    """

    probabilities: list[Tensor]
    projections: list[Tensor]
    mixing: list[Tensor]

    def gradients(self, score: Tensor, retain_graph: bool = False) -> LinformerAttentionMaps:
        """d score / dP and d score / dM of every layer, in the same layout (detached).

        ``projections`` holds F itself (detached), not a gradient. P acts only through M, so
        dP = dM F^T.
        """
        n = len(self.probabilities)
        grads = torch.autograd.grad(
            score, [*self.probabilities, *self.mixing], retain_graph=retain_graph
        )
        return LinformerAttentionMaps(
            probabilities=[g.detach() for g in grads[:n]],
            projections=[f.detach() for f in self.projections],
            mixing=[g.detach() for g in grads[n:]],
        )


@dataclass
class SignalOutput:
    logits: Tensor  # [B, num_classes]
    attention: LinformerAttentionMaps | None = None
    features: Tensor | None = None  # last block's tokens [B, N, D] (before the final norm)


class LinformerAttention(nn.Module):
    """Multi-head Linformer self-attention over a fixed number of tokens N, through M = P F."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        seq_len: int,
        proj_dim: int,
        *,
        share_kv: bool = False,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.seq_len = seq_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        # Sequence projections as in the Linformer reference code (nn.Linear(N, k) weights,
        # Xavier-uniform): E for the keys, F for the values, each [k, N].
        self.E = nn.Parameter(torch.empty(proj_dim, seq_len))
        self.F = None if share_kv else nn.Parameter(torch.empty(proj_dim, seq_len))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_projections()

    def reset_projections(self) -> None:
        nn.init.xavier_uniform_(self.E)
        if self.F is not None:
            nn.init.xavier_uniform_(self.F)

    @property
    def value_projection(self) -> Tensor:
        """F [k, N] (E itself when key-value sharing is on)."""
        return self.E if self.F is None else self.F

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, N, D] -> (out [B, N, D], P [B, H, N, k], M [B, H, N, N])."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, d]
        keys = self.E @ k  # [k, N] @ [B, H, N, d] -> [B, H, k, d]
        p = ((q * self.scale) @ keys.transpose(-2, -1)).softmax(-1)  # [B, H, N, k]
        m = p @ self.value_projection  # [B, H, N, N]
        out = (m @ v).transpose(1, 2).reshape(B, N, D)  # = P (F V)
        return self.proj_drop(self.proj(out)), p, m


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block with Linformer self-attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        seq_len: int,
        proj_dim: int,
        *,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        share_kv: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LinformerAttention(
            dim, num_heads, seq_len, proj_dim, share_kv=share_kv, proj_drop=dropout
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, N, D] -> (x' [B, N, D], P [B, H, N, k], M [B, H, N, N])."""
        out, p, m = self.attn(self.norm1(x))
        x = x + out
        x = x + self.mlp(self.norm2(x))
        return x, p, m


class SignalTransformer(SingleInput, nn.Module):
    """Linformer classifier of signals [B, L, C]; ``forward(x, capture=True)`` also returns every
    layer's attention (P, F, M) and the last block's tokens, all in the forward graph."""

    modalities = ("signal",)

    def __init__(
        self,
        num_classes: int,
        *,
        signal_length: int = 256,
        channels: int = 6,
        patch_length: int = 16,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        proj_dim: int = 8,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        share_kv: bool = False,
    ) -> None:
        super().__init__()
        checks = [
            (num_classes >= 1, f"num_classes must be >= 1, got {num_classes}"),
            (channels >= 1, f"channels must be >= 1, got {channels}"),
            (patch_length >= 1, f"patch_length must be >= 1, got {patch_length}"),
            (
                signal_length >= patch_length and signal_length % patch_length == 0,
                f"signal_length ({signal_length}) must be a positive multiple of patch_length "
                f"({patch_length})",
            ),
            (num_layers >= 1, f"num_layers must be >= 1, got {num_layers}"),
            (proj_dim >= 1, f"proj_dim must be >= 1, got {proj_dim}"),
            (
                num_heads >= 1 and hidden_size % num_heads == 0,
                f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.signal_length = signal_length
        self.channels = channels
        self.patch_length = patch_length
        self.num_patches = signal_length // patch_length  # N - 1 time tokens
        self.num_tokens = 1 + self.num_patches  # N
        self.grid: tuple[int] = (self.num_patches,)
        self.num_heads = num_heads
        self.proj_dim = proj_dim

        self.patch_embed = nn.Linear(patch_length * channels, hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, hidden_size))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                hidden_size,
                num_heads,
                self.num_tokens,
                proj_dim,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                share_kv=share_kv,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT init: truncated normal (std 0.02) for the embeddings and Linear weights,
        zero biases, unit LayerNorms; E and F keep their Xavier-uniform init."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def tokenize(self, x: Tensor) -> Tensor:
        """Signals [B, L, C] -> tokens [B, N, D] (class token first, positions added)."""
        if x.dim() != 3 or x.shape[1] != self.signal_length or x.shape[2] != self.channels:
            raise ValueError(
                f"signals must be [B, L, C] = [B, {self.signal_length}, {self.channels}] for this "
                f"model (model.signal_length, model.channels), got {list(x.shape)}"
            )
        B = x.shape[0]
        patches = x.reshape(B, self.num_patches, self.patch_length * self.channels)  # [B, N-1, pC]
        tokens = self.patch_embed(patches)  # [B, N-1, D]
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # [B, N, D]
        return self.pos_drop(tokens + self.pos_embed)

    def forward(self, x: Tensor, capture: bool = False) -> SignalOutput:
        """x [B, L, C] -> logits [B, num_classes] (+ attention maps and features if capture)."""
        h = self.tokenize(x)
        probabilities: list[Tensor] = []
        mixing: list[Tensor] = []
        for block in self.blocks:
            h, p, m = block(h)
            probabilities.append(p)
            mixing.append(m)
        logits = self.head(self.norm(h)[:, 0])
        if not capture:
            return SignalOutput(logits=logits)
        maps = LinformerAttentionMaps(
            probabilities=probabilities,
            projections=[block.attn.value_projection for block in self.blocks],
            mixing=mixing,
        )
        return SignalOutput(logits=logits, attention=maps, features=h)
