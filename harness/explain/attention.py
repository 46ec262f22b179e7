"""Attention-based explainers as pure functions of tensors.

``attentions``: sequence over layers (first layer first) of ``[B, H, N, N]`` row-stochastic
attention maps, token 0 the class token; ``gradients``: the target score's gradient w.r.t. each
attention, same shapes. Every explainer returns the class token's relevance over the other tokens,
``[B, N-1]`` (``rollout_fem`` works per head internally).

All of them are the class row of a layer product  e_0^T M_L ... M_1  with M_l = D_l^-1 (I + X_l)
(D_l the row sums of I + X_l, or I when unnormalised). Only that row is needed, so it is computed
by propagating a row vector r <- r M_l from the last layer down: L vector-matrix products,
O(L N^2), never the O(L N^3) matrix product. Everything is differentiable where the maths is.

A layer may also be given as a structured :class:`Mixing` instead of a dense tensor: the values of
the entries of X_l that can be non-zero, with its own propagation step. Every per-layer step of the
explainers (head fusion, A * dA, relu, discarding) is entry-wise or over heads, so it runs on those
values unchanged, and the result is the dense one exactly without ever forming an N x N matrix
(``harness.explain.video.divided_steps``: TimeSformer's divided space-time attention, whose
N x N steps are block-diagonal).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .cam import _ksigma_maps

_FUSIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda a: a.mean(1),
    "min": lambda a: a.amin(1),
    "max": lambda a: a.amax(1),
}


class Mixing(Protocol):
    """A token-mixing matrix X [..., N, N] (``...`` = B, H as given; B once heads are fused) held
    as the values of the entries that can be non-zero, every other entry being 0.

    parts: those values, each entry once, in tensors [..., *shape_i] (any strides, e.g. views of
    the model's own attention tensors); the first entry of parts[0] is X[0, 0]; a mixing may carry
    further parts that are no entries of X but that its `discard` needs (they go through the same
    entry-wise steps);
    with_parts(parts): the same structure holding other values (other leading dims allowed);
    first_row(): X[0, :] [..., N];
    propagate(r, normalise): r [..., N] -> r D^-1 (I + X) [..., N], D = diag(rowsum(I + X)) if
    normalise else I: one step of the class-row propagation;
    discard(ratio): rollout's discard ratio, applied to each raw attention map X is composed of
    (one map for a plain ViT layer; one per frame and one per patch for TimeSformer's steps).
    """

    n: int  # N, the number of tokens
    parts: tuple[Tensor, ...]

    def with_parts(self, parts: Sequence[Tensor]) -> Mixing: ...

    def first_row(self) -> Tensor: ...

    def propagate(self, r: Tensor, normalise: bool) -> Tensor: ...

    def discard(self, ratio: float) -> Mixing:
        """The same mixing with `discard_lowest` applied to each attention map it is made of
        (heads fused: parts [B, ...]), before those maps are composed into X."""
        ...


@dataclass(frozen=True)
class DenseMixing:
    """X as a dense matrix: one part, X itself [..., N, N]."""

    n: int
    parts: tuple[Tensor]

    def with_parts(self, parts: Sequence[Tensor]) -> DenseMixing:
        return DenseMixing(self.n, tuple(parts))

    def first_row(self) -> Tensor:
        return self.parts[0][..., 0, :]

    def propagate(self, r: Tensor, normalise: bool) -> Tensor:
        # r D^-1 (I + X) = r' + r' X with r' = r / rowsum, so I is never materialised.
        (x,) = self.parts
        if normalise:
            r = r / (1 + x.sum(-1))
        return r + (r.unsqueeze(-2) @ x).squeeze(-2)

    def discard(self, ratio: float) -> DenseMixing:
        """X is one attention map, the class token first (a ViT layer): vit-explain's rule on it."""
        (x,) = self.parts
        return DenseMixing(self.n, (discard_lowest(x.flatten(-2), ratio).view_as(x),))


def discard_lowest(maps: Tensor, ratio: float, spare_first: bool = True) -> Tensor:
    """Rollout's discard ratio as jacobgil/vit-explain applies it (``vit_rollout.py``: the fused
    map flattened, its ``int(ratio * size)`` lowest entries set to 0 except the flat index 0, the
    class token's attention to itself).

    maps: [..., E], each row the E entries one attention map can have (for an n x n map over the
    class token and n - 1 others, its n^2 entries; the class token's self-attention first). Each
    row drops its own int(ratio * E) lowest entries; entry 0 is ranked but never dropped when
    ``spare_first`` (so one fewer entry goes when it is among the lowest, as in vit-explain), which
    is how a map without a class token (``spare_first=False``) differs. Ties at the cut are all
    dropped (vit-explain's topk breaks them arbitrarily; ties do not occur in softmax maps).
    """
    n_drop = int(maps.shape[-1] * ratio)
    if n_drop == 0:
        return maps
    cut = maps.kthvalue(n_drop, -1, keepdim=True).values
    drop = maps <= cut
    if spare_first:
        drop[..., 0] = False
    return maps.masked_fill(drop, 0)


def _as_mixing(name: str, i: int, a: Tensor | Mixing) -> Mixing:
    if not isinstance(a, Tensor):
        return a
    shape = a.shape
    if len(shape) != 4 or shape[-1] != shape[-2] or shape[-1] < 2:
        raise ValueError(
            f"{name}[{i}] must have shape [B, H, N, N] with N >= 2; got {tuple(shape)}"
        )
    return DenseMixing(shape[-1], (a,))


def _shape(m: Mixing) -> tuple[int, ...] | str:
    """How a layer shows in messages: [B, H, N, N] if dense, else the shapes of its parts."""
    if isinstance(m, DenseMixing):
        return tuple(m.parts[0].shape)
    return f"{type(m).__name__} of N={m.n} with parts {[tuple(p.shape) for p in m.parts]}"


def _validate(
    attentions: Sequence[Tensor | Mixing], gradients: Sequence[Tensor | Mixing] | None = None
) -> list[tuple[Mixing, ...]]:
    """Check shapes/values; return the per-layer tuples (A_l,) or (A_l, dA_l), first layer first.

    Every layer has the same B, H and N; dense layers are wrapped as :class:`DenseMixing`; a
    gradient has the structure and shapes of its attention.
    """
    atts = [_as_mixing("attentions", i, a) for i, a in enumerate(attentions)]
    if not atts:
        raise ValueError("attentions must be a non-empty sequence of [B, H, N, N] tensors")
    lead, n = atts[0].parts[0].shape[:2], atts[0].n
    for i, m in enumerate(atts):
        if n < 2 or any(p.dim() < 2 or p.shape[:2] != lead for p in m.parts) or m.n != n:
            raise ValueError(
                f"attentions[{i}] has shape {_shape(m)}; expected {_shape(atts[0])} "
                f"(the B, H and N >= 2 of attentions[0])"
            )
    named = {"attentions": atts}
    if gradients is not None:
        grads = [_as_mixing("gradients", i, g) for i, g in enumerate(gradients)]
        if len(grads) != len(atts):
            raise ValueError(
                f"expected one gradient per attention layer ({len(atts)}); got {len(grads)}"
            )
        for i, (g, a) in enumerate(zip(grads, atts)):
            shapes = [p.shape for p in g.parts], [p.shape for p in a.parts]
            if type(g) is not type(a) or g.n != a.n or shapes[0] != shapes[1]:
                raise ValueError(
                    f"gradients[{i}] has shape {_shape(g)}; expected {_shape(a)} "
                    f"(the shape of attentions[{i}])"
                )
        named["gradients"] = grads
    for name, layers in named.items():
        # NaN and inf make a sum non-finite, so finite sums clear every value at one pass each
        # and one sync per sequence; a non-finite sum (NaN, inf or an overflow) is checked exactly.
        sums = torch.stack([p.sum() for m in layers for p in m.parts])
        if not bool(sums.isfinite().all()):
            for i, m in enumerate(layers):
                if not all(
                    bool(torch.stack([p.amin(), p.amax()]).isfinite().all()) for p in m.parts
                ):
                    raise ValueError(f"{name}[{i}] contains NaN or inf; expected finite values")
    return list(zip(*named.values(), strict=True))


def _class_row(
    layers: list[tuple[Mixing, ...]],
    build: Callable[..., Tensor] | None,
    normalise: bool,
    finish: Callable[[Mixing], Mixing] | None = None,
) -> Tensor:
    """e_0^T M_L ... M_1 over tokens 1..N-1, M_l = D_l^-1 (I + X_l).

    X_l has the structure of layers[l][0] and, part by part, the values build(*(the part of each
    of layers[l])) (``...`` = B or B, H; layers[l][0] itself when build is None), then is
    finish(X_l) if given;
    D_l = diag(rowsum(I + X_l)) if normalise else I. Returns [..., N-1].
    """
    r = None
    for layer in reversed(layers):
        x = layer[0]
        if build is not None:
            x = x.with_parts([build(*same) for same in zip(*(m.parts for m in layer))])
        if finish is not None:
            x = finish(x)
        if r is None:  # e_0 (I + X_L) = e_0 + X_L[0, :], whose sum is row 0's sum of I + X_L
            r = x.first_row().clone()
            r[..., 0].add_(1)
            if normalise:
                r = r / r.sum(-1, keepdim=True)
        else:
            r = x.propagate(r, normalise)
    return r[..., 1:]


def rollout(
    attentions: Sequence[Tensor | Mixing], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> Tensor:
    """Attention rollout (Abnar & Zuidema, "Quantifying attention flow in transformers", ACL 2020).

    Per layer: F_l = fuse_h(A_l) (mean | min | max over heads), optionally with the lowest
    ``discard_ratio`` fraction of each of its attention maps' entries set to 0 (vit-explain's
    rule, `discard_lowest`: a ViT layer is one map, its class self-attention spared; a
    TimeSformer block's steps are composed of one map per patch and one per frame, each discarded
    on its own before composing, see `Mixing.discard`); A'_l = (F_l + I) / rowsum;
    rollout = A'_L ... A'_1. Returns its class row over tokens 1..N-1, unnormalised: [B, N-1].
    """
    if head_fusion not in _FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(_FUSIONS)}; got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1); got {discard_ratio}")
    finish = (lambda m: m.discard(discard_ratio)) if discard_ratio > 0 else None
    return _class_row(_validate(attentions), _FUSIONS[head_fusion], normalise=True, finish=finish)


def _head_mask(heads: str | Sequence[int], w: Tensor, binary: Tensor) -> Tensor:
    """Which heads take part: bool [B, H] from the head weights w [B, H] and maps [B, H, N-1]."""
    n_heads = w.shape[1]
    if isinstance(heads, str):
        if heads == "all":
            return torch.ones_like(w, dtype=torch.bool)
        if heads == "nonempty":
            count = binary.sum(-1)
            return (count >= 1) & (2 * count <= binary.shape[-1])
        top = re.fullmatch(r"top(\d+)", heads)
        if top and 1 <= int(top[1]) <= n_heads:
            idx = w.topk(int(top[1]), -1).indices
            return torch.zeros_like(w, dtype=torch.bool).scatter_(1, idx, True)
        raise ValueError(
            f"heads must be 'all', 'nonempty', 'top<n>' with 1 <= n <= {n_heads} (e.g. 'top2') "
            f"or a sequence of head indices; got {heads!r}"
        )
    idx = [int(h) for h in heads]
    if not idx or not all(0 <= h < n_heads for h in idx):
        raise ValueError(
            f"head indices must be a non-empty sequence in [0, {n_heads}); got {heads!r}"
        )
    mask = torch.zeros(n_heads, dtype=torch.bool, device=w.device)
    mask[idx] = True
    return mask.expand_as(w)


# Rollout-FEM head weights w_h from a head's rolled-out class row a_h [B, H, N-1].
HEAD_WEIGHTS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda a: a.mean(-1),  # the ET poster (FEM's channel weight, the mean activation)
    "max": lambda a: a.amax(-1),  # the RFEM paper (arXiv 2510.06070)
}


def head_rollouts(attentions: Sequence[Tensor | Mixing], normalise: bool = True) -> Tensor:
    """Each head rolled out on its own (Rollout-FEM's first step): the class row of
    A'_{L,h} ... A'_{1,h}, A'_{l,h} = D^-1 (I + A_{l,h}) (D the row sums if ``normalise``, else
    I), over tokens 1..N-1: [B, H, N-1]."""
    return _class_row(_validate(attentions), None, normalise=bool(normalise))


def rollout_fem(
    attentions: Sequence[Tensor | Mixing],
    k: float = 2.0,
    heads: str | Sequence[int] = "all",
    head_weight: str = "mean",
    normalise: bool = True,
    tokens: Tensor | None = None,
) -> Tensor:
    """Rollout-FEM: FEM's k-sigma rule on per-head rollouts. The ET poster (Ayyar, Benois-Pineau &
    Zemmari), and RFEM (the same authors, "There is More to Attention: Statistical Filtering
    Enhances Explanations in Vision Transformers", arXiv 2510.06070).

    Per head h: A'_{l,h} = D^-1 (I + A_{l,h}) (D the row sums when ``normalise``, else I), rolled
    out across layers with the same head index, class row a_h over the N-1 tokens.
    b_h = 1[a_h >= mu_h + k sigma_h] (mean and population std over the tokens, per sample and head;
    sigma_h = 0 up to rounding, e.g. uniform attention, makes every token pass). Head weight
    ``head_weight``: "mean", w_h = mu_h (the poster, after FEM's mean-activation weight) or "max",
    w_h = max_j a_h[j] (RFEM). Saliency S = sum_{h in heads} w_h b_h, divided by its max per sample
    (max is 1, or an all-zero map stays 0).

    What the weights carry. With row-stochastic attention (softmax maps, the divided steps, the
    Linformer shares) each normalised rollout is row-stochastic, so a_h sums to 1 - r_h[cls]
    (r_h[cls] the relevance the class token keeps on itself) and the mean weight is exactly
    w_h = (1 - r_h[cls]) / (N - 1): it ranks heads by how little relevance stays on the class
    token, not by the shape of their maps, and differs little between heads. The max weight ranks
    them by their peak, i.e. by how concentrated their map is.

    ``normalise``: every row of I + A sums to 2 for row-stochastic A, so D = 2I and the
    unnormalised rollout is the normalised one times 2^L, for every head alike. The k-sigma rule,
    both weights, the head selections and the final division by the max are invariant to that one
    factor: for such attention ``normalise`` changes nothing (it matters only for maps whose rows
    do not sum to 1, e.g. an all-zero Linformer share row).

    heads: "all"; "top<n>" (e.g. "top2"): the n heads with the largest w_h, per sample (with
    "mean": the heads keeping the least relevance on the class token; with "max": the most peaked
    ones); "nonempty": heads whose binary map has at least one and at most half of the tokens set
    (plain "non-empty" would equal "all", since empty maps add 0); or explicit head indices.
    tokens: the tokens the map is over (indices into 1..N-1, 0-based), when some tokens are not
    input regions (e.g. Pool-T's frame tokens): the statistics and the result are over them only.
    Returns [B, N-1], or [B, len(tokens)].
    """
    if head_weight not in HEAD_WEIGHTS:
        raise ValueError(
            f"head_weight must be one of {', '.join(HEAD_WEIGHTS)}; got {head_weight!r}"
        )
    a = head_rollouts(attentions, normalise)  # [B, H, N-1]
    if tokens is not None:
        a = a[..., tokens]
    binary, means = _ksigma_maps(a, k)  # [B, H, N-1], [B, H]
    w = means if head_weight == "mean" else HEAD_WEIGHTS[head_weight](a)  # [B, H]
    if heads != "all":
        w = w * _head_mask(heads, w, binary)
    s = (w.unsqueeze(-1) * binary).sum(1)  # [B, N-1]
    peak = s.amax(-1, keepdim=True)
    return s / torch.where(peak > 0, peak, 1)


def rollout_grad(
    attentions: Sequence[Tensor | Mixing], gradients: Sequence[Tensor | Mixing]
) -> Tensor:
    """Rollout-Grad (du Toit's TimeSformer study): gradient-weighted rollout, unnormalised.

    R_0 = I; Abar_l = E_h(A_l * dA_l); R_l = (I + Abar_l) R_{l-1}. Returns R_L's class row over
    tokens 1..N-1: [B, N-1].
    """
    return _class_row(
        _validate(attentions, gradients), lambda a, g: (a * g).mean(1), normalise=False
    )


def tibav(attentions: Sequence[Tensor | Mixing], gradients: Sequence[Tensor | Mixing]) -> Tensor:
    """Chefer, Gur & Wolf, "Transformer interpretability beyond attention visualization" (CVPR
    2021), in its gradient-attention form ("Generic attention-model explainability", ICCV 2021).

    R_0 = I; Abar_l = E_h((dA_l * A_l)^+); R_l = R_{l-1} + Abar_l R_{l-1} = (I + Abar_l) R_{l-1}.
    Returns R_L's class row over tokens 1..N-1: [B, N-1].
    """
    return _class_row(
        _validate(attentions, gradients),
        lambda a, g: (a * g).relu_().mean(1),  # in place on the fresh product
        normalise=False,
    )


def random_relevance(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform U[0, 1) relevance: the chance floor every faithfulness evaluation compares against.

    Any shape, e.g. [B, N-1] like the attention explainers or [B, *grid] like the CAM ones.
    """
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)
