"""Linformer classifier for multichannel wearable-style signals, with its attention captured.

Linformer (Wang, Li, Khabsa, Fang, Ma, "Linformer: Self-Attention with Linear Complexity", 2020,
https://arxiv.org/abs/2006.04768) projects the keys and values of self-attention along the
sequence with learned E, F in R^{k x N} (k << N), so that per head

    P = softmax(Q (E K)^T / sqrt(d))    [N, k]      (rows sum to 1)
    out = P (F V)                        [N, d]

This is the ET poster's signal branch. Here, as a small self-contained model:

* input: float signals [B, L, C] (e.g. L = 256 samples of C = 6 accelerometer/gyroscope channels),
  standardised per channel by the data pipeline (``harness.data``, training-split statistics); the
  model itself makes only data-independent choices;
* convolutional stem: ``stem_layers`` x [Conv1d(kernel ``stem_kernel`` odd, stride 1, zero "same"
  padding) + GELU] of width ``stem_channels``, a feature per sample; then per patch of p samples
  the **maximum** of each feature over the patch, embedded linearly: token t = W max_{s in
  [t p, (t+1) p)} stem(x)[:, s] + b. N - 1 = L / p time tokens, a class token first, learned
  positional embeddings;
* pre-norm blocks: x + Attn(LN(x)), x + MLP(LN(x)); final LayerNorm; linear head on the class token;
* one E and one F per layer, shared by the heads (Linformer's "headwise sharing"); ``share_kv``
  also ties F = E ("key-value sharing"). ``projection_init="pool"`` (default) starts E and F as
  the mean-pooling projection (row r averages the tokens [floor(r N / k), ceil((r + 1) N / k)):
  mean pooling is one of the paper's "general projections", Sec. 4), learned from there;
  ``"xavier"`` is the reference code's Xavier-uniform start;
* PyTorch's default initialisation of the Conv1d and Linear layers (Kaiming-uniform), truncated
  normal (std 0.02) class token and positions.

Why the stem, the max and the inits. The synthetic task (``harness.data.synthetic``) hides a short
class-specific oscillation (32 of 256 samples, random phase) at a random time in noise: the model
must find it, then read its frequency and channel pattern. The plain Linformer this module first
had (a linear embedding of each flattened patch, Xavier E and F, timm's std-0.02 Linear init)
stayed at chance on it (test accuracy 0.21 to 0.29 over 3 seeds) where a two-layer CNN with a
global max pool reaches 0.94 to 0.96 (4 classes, 400 training signals, 10 epochs). With this stem,
each of the three other choices alone, reverted, costs most of the gain (test accuracy, 3 seeds):
a flattened-patch embedding instead of the max, 0.32 to 0.54; Xavier E and F, 0.33 to 0.46 (a
projection that mixes every position with random signs cannot single one time out); the std-0.02
init, 0.48 to 0.50 (attention stays near uniform, i.e. a mean pool, and the model memorises). All
together: 0.895 to 0.94 (benchmarks/README.md, ``signal_localisation.py``). The stem makes the
token features nonlinear detectors of local oscillations before any mixing; the max makes them
independent of where in its patch the event falls.

Token alignment with time. Stem feature s sees samples [s - h, s + h], h = stem_layers *
(stem_kernel - 1) / 2 (``stem_reach``); token t pools the features of samples [t p, (t+1) p), so
it sees samples [t p - h, (t + 1) p + h) (``receptive_field``, clipped to the signal), centred on
t p + (p - 1) / 2 like the patch itself (h = 6 by default, with p = 16: a token reaches 6 samples
into each neighbouring patch). ``harness.explain.signal.relevance_over_time`` places token t's
relevance at that centre.

Exposed attention. The k columns of P are not tokens, so P is not a token-mixing matrix; its
composition with the value projection is: out_i = sum_j (P F)[i, j] v_j. The attention is therefore
computed through the explicit mixing matrix M = P F ([B, H, N, N], cost N^2 k per head, negligible
for N <= 33) as out = M V. That is the same function as P (F V) (up to rounding), and it makes M a
tensor of the forward graph: ``forward(x, capture=True)`` returns P, F and M of every layer, and
gradients of a score with respect to P and M are true gradients (dP = dM F^T). No attention
dropout is applied, so the captured maps are exactly the ones that mixed the tokens. M is a real
matrix, not row-stochastic: rowsum(M)_i = sum_k P[i, k] rowsum(F)_k, and its entries can be
negative (see ``harness.explain.signal`` for how the explainers treat that). ``attention_gate``
(harness/models/base.py), when set, re-weights each layer's P before it mixes the values.

Pruned forward (ET's ``signal_policy=prune``, ``forward(x, keep=...)``). The tokens are embedded
whole (stem, class token, positions), then only the class token and the kept time tokens S go on:
every block runs on 1 + |S| tokens, its E and F reduced to their columns at the kept positions
(E_S, F_S [k, 1 + |S|], gathered per sample), so the attention costs fall with the kept share and
the class token reads kept tokens only. This is the full forward with the pruned tokens' keys and
values zeroed in every layer: with Z the 0/1 diagonal of the kept positions, E (Z K) = E_S K_S and
F (Z V) = F_S V_S, so every kept token's output is the same function of the kept tokens, and the
pruned ones (zero keys and values, per-token norms and MLPs) never reach a kept one, nor the head.
A projection slot all of whose positions are pruned keeps its softmax share (key 0, score 0) and
gives the value 0: the zeroed reading, not a renormalisation over the remaining slots.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from harness.explain.signal import FLOW_EXPLAINERS, mixing_matrices, mixing_shares
from harness.models.base import Adapter, AttentionGate, AttentionPairs, Need, SingleInput

__all__ = [
    "Block",
    "ConvPatchEmbedding",
    "LinformerAttention",
    "LinformerAttentionMaps",
    "Mlp",
    "SignalOutput",
    "SignalTransformer",
    "kept_columns",
    "mean_pooling_projection",
]

PROJECTION_INITS = ("pool", "xavier")


def mean_pooling_projection(proj_dim: int, seq_len: int) -> Tensor:
    """[k, N] matrix whose row r averages positions [floor(r N / k), ceil((r + 1) N / k)):
    adaptive average pooling of the sequence to k slots (neighbouring slots overlap by at most
    one position when k does not divide N)."""
    rows = torch.arange(proj_dim)
    start = rows * seq_len // proj_dim
    stop = -((-(rows + 1) * seq_len) // proj_dim)
    positions = torch.arange(seq_len)
    inside = (positions >= start[:, None]) & (positions < stop[:, None])
    return inside.float() / (stop - start)[:, None].float()


@dataclass
class LinformerAttentionMaps:
    """Every layer's Linformer attention, as the forward pass used it (first layer first).

    probabilities[l]: P  [B, H, N, k]  softmax over the k projected keys (rows sum to 1);
    projections[l]:   F  [k, N]        the value projection (a parameter, shared by the heads; on a
                                       pruned forward its kept columns [B, 1, k, N'] per sample);
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
    # Tokens entering the last block [B, N, D]: the CAM explainers' feature map. Not the last
    # block's output: only its class token reaches the head, so the gradient on its time tokens
    # is zero (Grad-CAM would see nothing); the video model's convention too.
    features: Tensor | None = None
    embedded: Tensor | None = None  # the embedding output [B, N, D] (before pruning)


def kept_columns(matrix: Tensor, positions: Tensor) -> Tensor:
    """A sequence projection [k, N] reduced to the columns of each sample's kept positions
    `positions` [B, N']: [B, 1, k, N'] (heads on dim 1, broadcast)."""
    return matrix[:, positions].movedim(1, 0)[:, None]


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
        projection_init: str = "pool",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by num_heads {num_heads}")
        if projection_init not in PROJECTION_INITS:
            raise ValueError(
                f"projection_init must be one of {', '.join(PROJECTION_INITS)}, "
                f"got {projection_init!r}"
            )
        self.projection_init = projection_init
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.seq_len = seq_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        # Sequence projections (the reference code's nn.Linear(N, k) weights): E for the keys,
        # F for the values, each [k, N].
        self.E = nn.Parameter(torch.empty(proj_dim, seq_len))
        self.F = None if share_kv else nn.Parameter(torch.empty(proj_dim, seq_len))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_projections()

    def reset_projections(self) -> None:
        """E and F as the mean-pooling projection ("pool") or Xavier-uniform ("xavier")."""
        for projection in (self.E, self.F):
            if projection is None:
                continue
            if self.projection_init == "pool":
                with torch.no_grad():
                    projection.copy_(mean_pooling_projection(*projection.shape))
            else:
                nn.init.xavier_uniform_(projection)

    @property
    def value_projection(self) -> Tensor:
        """F [k, N] (E itself when key-value sharing is on)."""
        return self.E if self.F is None else self.F

    def forward(
        self,
        x: Tensor,
        gate: Callable[[Tensor], Tensor] | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, N, D] -> (out [B, N, D], P [B, H, N, k], M [B, H, N, N]); `gate` re-weights P.
        `positions` [B, N'] (a pruned forward): x holds the tokens at those positions only, and
        E, F are reduced to their columns (the module docstring says why that is exact)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, d]
        E, F = self.E, self.value_projection
        if positions is not None:
            E, F = kept_columns(E, positions), kept_columns(F, positions)
        keys = E @ k  # [k, N] @ [B, H, N, d] -> [B, H, k, d]
        p = ((q * self.scale) @ keys.transpose(-2, -1)).softmax(-1)  # [B, H, N, k]
        if gate is not None:
            p = gate(p)
        m = p @ F  # [B, H, N, N]
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
        projection_init: str = "pool",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LinformerAttention(
            dim, num_heads, seq_len, proj_dim, share_kv=share_kv, proj_drop=dropout,
            projection_init=projection_init,
        )  # fmt: skip
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(
        self,
        x: Tensor,
        gate: Callable[[Tensor], Tensor] | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, N, D] -> (x' [B, N, D], P [B, H, N, k], M [B, H, N, N]); `positions`: see
        `LinformerAttention.forward`."""
        out, p, m = self.attn(self.norm1(x), gate, positions)
        x = x + out
        x = x + self.mlp(self.norm2(x))
        return x, p, m


class ConvPatchEmbedding(nn.Module):
    """Signals [B, L, C] -> time tokens [B, L / p, D]: a convolutional stem ([Conv1d + GELU] x
    ``layers``, stride 1, zero "same" padding), the maximum of each stem feature over each patch
    of p samples, a linear embedding. Token t sees samples [t p - reach, (t + 1) p - 1 + reach]."""

    def __init__(
        self, channels: int, patch_length: int, dim: int, layers: int, width: int, kernel: int
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = []
        for i in range(layers):
            stem += [nn.Conv1d(channels if i == 0 else width, width, kernel, padding=kernel // 2)]
            stem += [nn.GELU()]
        self.stem = nn.Sequential(*stem)
        self.pool = nn.MaxPool1d(patch_length)  # stride = kernel = p: one window per patch
        self.proj = nn.Linear(width, dim)
        self.reach = layers * (kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stem(x.transpose(1, 2))  # [B, width, L]
        return self.proj(self.pool(features).transpose(1, 2))  # [B, L / p, D]


class SignalTransformer(SingleInput, nn.Module):
    """Linformer classifier of signals [B, L, C]; ``forward(x, capture=True)`` also returns every
    layer's attention (P, F, M) and the tokens entering the last block, all in the forward graph."""

    modalities = ("signal",)
    attention_gate: AttentionGate | None = None

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
        projection_init: str = "pool",
        stem_layers: int = 2,
        stem_channels: int = 32,
        stem_kernel: int = 7,
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
            (stem_layers >= 1, f"stem_layers must be >= 1, got {stem_layers}"),
            (stem_channels >= 1, f"stem_channels must be >= 1, got {stem_channels}"),
            (
                stem_kernel >= 1 and stem_kernel % 2 == 1,
                f'stem_kernel must be odd (centred, "same" padding), got {stem_kernel}',
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

        self.patch_embed = ConvPatchEmbedding(
            channels, patch_length, hidden_size, stem_layers, stem_channels, stem_kernel
        )
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
                projection_init=projection_init,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def stem_reach(self) -> int:
        """h: how many samples beyond its own patch a time token sees on each side."""
        return self.patch_embed.reach

    def receptive_field(self, token: int) -> tuple[int, int]:
        """Samples [start, stop) that time token `token` (0-based, class token excluded) sees:
        [t p - h, (t + 1) p + h) clipped to [0, L)."""
        if not 0 <= token < self.num_patches:
            raise ValueError(f"token must be in [0, {self.num_patches}), got {token}")
        p, h = self.patch_length, self.stem_reach
        return max(token * p - h, 0), min((token + 1) * p + h, self.signal_length)

    def tokenize(self, x: Tensor) -> Tensor:
        """Signals [B, L, C] -> tokens [B, N, D] (class token first, positions added)."""
        if x.dim() != 3 or x.shape[1] != self.signal_length or x.shape[2] != self.channels:
            raise ValueError(
                f"signals must be [B, L, C] = [B, {self.signal_length}, {self.channels}] for this "
                f"model (model.signal_length, model.channels), got {list(x.shape)}"
            )
        tokens = self.patch_embed(x)  # [B, N-1, D]
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)  # [B, N, D]
        return self.pos_drop(tokens + self.pos_embed)

    def forward(
        self,
        x: Tensor,
        capture: bool = False,
        *,
        keep: Tensor | None = None,
        tokens: Tensor | None = None,
    ) -> SignalOutput:
        """x [B, L, C] -> logits [B, num_classes] (+ attention maps and features if capture).

        `keep` (int64 [B, k], ascending; ET's `prune` policy): the time tokens the model runs on.
        The other tokens (embedded, positions added, as in the full forward) are dropped before
        the first block, and every block's E and F are reduced to the kept positions' columns:
        the full forward with the pruned tokens' keys and values zeroed (module docstring); the
        captured maps are then over the class token and the kept tokens. `tokens`: this signal's
        embedding from an earlier forward (`SignalOutput.embedded`), used instead of embedding
        `x` again.
        """
        h = embedded = self.tokenize(x) if tokens is None else tokens
        positions = None
        if keep is not None:  # the class token (position 0) and the kept time tokens 1 + t
            positions = torch.cat([keep.new_zeros(len(keep), 1), keep + 1], 1)
            h = h.gather(1, positions[..., None].expand(-1, -1, h.shape[-1]))
        probabilities: list[Tensor] = []
        mixing: list[Tensor] = []
        gate = self.attention_gate
        for i, block in enumerate(self.blocks):
            features = h
            h, p, m = block(h, None if gate is None else functools.partial(gate, i), positions)
            probabilities.append(p)
            mixing.append(m)
        logits = self.head(self.norm(h)[:, 0])
        if not capture:
            return SignalOutput(logits=logits)
        projections = [block.attn.value_projection for block in self.blocks]
        if positions is not None:
            projections = [kept_columns(f, positions) for f in projections]
        maps = LinformerAttentionMaps(probabilities, projections, mixing)
        return SignalOutput(logits=logits, attention=maps, features=features, embedded=embedded)


class LinformerAdapter(Adapter):
    """The Linformer to the harness: its mixing M = P F per block as the explainers' steps (the
    magnitude shares for the flow explainers, see harness/explain/signal.py), its class token read
    out as it is, relevance per time patch, IFI on P (harness/methods/modality.py says why); it
    prunes time tokens (`SignalTransformer.forward`'s `keep`)."""

    name = "linformer"
    inputs = ("signal",)
    prunes = True
    pruning = "the kept time tokens, every block's E and F reduced to their positions' columns"

    def build(self, num_classes: int, signal_channels: int | None, **cfg: Any) -> nn.Module:
        if cfg.get("channels") is None:  # from the data unless the config names it
            cfg["channels"] = signal_channels
        return SignalTransformer(num_classes, **cfg)

    def check(self, need: Need, data, cfg, where: str) -> None:
        length = data.get("signal_length")
        need(cfg.get("signal_length") == length, f"{where}.signal_length",
             f"data.signal_length = {length}")  # fmt: skip
        patch = cfg.get("patch_length", 16)
        need(isinstance(length, int) and length % int(patch) == 0, f"{where}.patch_length",
             f"a divisor of data.signal_length ({length})")  # fmt: skip
        channels = cfg.get("channels")
        if channels is not None and not data.get("root"):
            expected = data.get("synthetic", {}).get("signal_channels", 6)
            need(channels == expected, f"{where}.channels",
                 f"null (from the data) or data.synthetic.signal_channels = {expected}")

    def attention_steps(self, output: SignalOutput, explainer: str, score=None):
        mixing = mixing_matrices(output.attention)
        if score is not None:
            grads = mixing_matrices(output.attention.gradients(score))
            return [m.detach() for m in mixing], grads
        if explainer in FLOW_EXPLAINERS:
            return [mixing_shares(m) for m in mixing], None
        return mixing, None  # an attention explainer registered later: the signed mixing

    def supervised_attention(
        self, output: SignalOutput, score: Tensor, class_rows: bool
    ) -> AttentionPairs:
        grads = output.attention.gradients(score, retain_graph=True)
        return list(zip(output.attention.probabilities, grads.probabilities))


SignalTransformer.adapter = LinformerAdapter()
