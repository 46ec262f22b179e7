"""Structured token-mixing steps (`harness.explain.attention.Mixing`) that model adapters build.

Token 0 is the readout token (a real class token, or a virtual one standing for a pooled readout),
tokens 1..N-1 are the model's tokens in an order its adapter fixes.

* `GroupMixing`: attention inside groups of tokens (a frame's tokens, a shifted window of a Swin
  block, the frame tokens of a temporal attention): X[index[g, i], index[g, j]] = blocks[g, i, j]
  and X[0, 0] = corner, every other entry 0. A token in no group keeps only its residual.
* `ReadoutMixing`: the readout into token 0, X[0, :] = row (a pooling's weights over the tokens),
  every other row 0.
`CapturedAttention` is what a model's captured forward holds them from.

Both propagate the class row r <- r D^-1 (I + X) without an N x N matrix; the dense X they stand
for is what the tests build entry by entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .attention import discard_lowest


@dataclass
class CapturedAttention:
    """The attention tensors of one forward as the model computed them (`captured`: take
    gradients with respect to them); subclasses add what places them (grids, layers)."""

    captured: list[Tensor]

    def gradients(self, score: Tensor, retain_graph: bool = False):  # -> same type
        """d score / d attention for every captured attention, in the same layout (detached)."""
        grads = torch.autograd.grad(score, self.captured, retain_graph=retain_graph)
        return replace(self, captured=[g.detach() for g in grads])

    def detached(self):  # -> same type
        return replace(self, captured=[a.detach() for a in self.captured])


@dataclass(frozen=True)
class GroupMixing:
    """parts: (corner [..., 1], blocks [..., G, m, m]); index [G, m] token ids in 1..N-1, each at
    most once. Each block is one attention map (a frame's, a window's), unless `attention` is
    False (a fixed mixing such as a patch merge); `class_first`: each group's first token is a
    class token (a Pool-T frame token), whose self-attention `discard` spares (vit-explain)."""

    n: int
    index: Tensor
    parts: tuple[Tensor, Tensor]
    class_first: bool = False
    attention: bool = True

    def with_parts(self, parts: Sequence[Tensor]) -> GroupMixing:
        return replace(self, parts=tuple(parts))

    def discard(self, ratio: float) -> GroupMixing:
        """vit-explain's rule on each group's map on its own (`discard_lowest` over its m x m
        entries); a fixed mixing is left as it is."""
        if not self.attention:
            return self
        corner, blocks = self.parts
        kept = discard_lowest(blocks.flatten(-2), ratio, spare_first=self.class_first)
        return replace(self, parts=(corner, kept.view_as(blocks)))

    def first_row(self) -> Tensor:
        corner = self.parts[0]
        return torch.cat([corner, corner.new_zeros((*corner.shape[:-1], self.n - 1))], -1)

    def propagate(self, r: Tensor, normalise: bool) -> Tensor:
        corner, blocks = self.parts
        flat = self.index.flatten()
        grouped = r[..., flat].unflatten(-1, tuple(self.index.shape))  # [..., G, m]
        r0 = r[..., :1]
        if normalise:  # rows of I + X sum to 1 + their block row, 1 + corner, or 1 (no group)
            grouped = grouped / (1 + blocks.sum(-1))
            r0 = r0 / (1 + corner)
            r = torch.cat([r0, r[..., 1:]], -1).index_copy(-1, flat, grouped.flatten(-2))
        mixed = (grouped.unsqueeze(-2) @ blocks).squeeze(-2)  # [..., G, m]
        out = r.index_add(-1, flat, mixed.flatten(-2))
        return torch.cat([out[..., :1] + r0 * corner, out[..., 1:]], -1)


@dataclass(frozen=True)
class ReadoutMixing:
    """parts: (row [..., N],), X's row 0 (row[..., 0] = X[0, 0])."""

    n: int
    parts: tuple[Tensor]

    def with_parts(self, parts: Sequence[Tensor]) -> ReadoutMixing:
        return ReadoutMixing(self.n, tuple(parts))

    def discard(self, ratio: float) -> ReadoutMixing:
        """A readout (a pooling's weights) is no attention map: rollout's discard leaves it."""
        return self

    def first_row(self) -> Tensor:
        return self.parts[0]

    def propagate(self, r: Tensor, normalise: bool) -> Tensor:
        (row,) = self.parts
        r0 = r[..., :1] / (1 + row.sum(-1, keepdim=True)) if normalise else r[..., :1]
        return torch.cat([r0, r[..., 1:]], -1) + r0 * row


def group_index(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> Tensor:
    """Token ids (1 + row-major position on `grid`) of each window of a grid cyclically shifted by
    -`shift` and cut into `window`s (Swin's partition): [G, prod(window)], windows and the tokens
    in each in row-major order."""
    ids = 1 + torch.arange(int(torch.tensor(grid).prod())).view(*grid)
    if any(shift):
        ids = torch.roll(ids, shifts=[-s for s in shift], dims=tuple(range(len(grid))))
    shape: list[int] = []
    for size, w in zip(grid, window):
        shape += [size // w, w]
    d = len(grid)
    ids = ids.view(*shape).permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
    return ids.reshape(-1, int(torch.tensor(window).prod()))
