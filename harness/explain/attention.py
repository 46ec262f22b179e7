"""Attention-based explainers as pure functions of tensors.

``attentions``: sequence over layers (first layer first) of ``[B, H, N, N]`` row-stochastic
attention maps, token 0 the class token; ``gradients``: the target score's gradient w.r.t. each
attention, same shapes. Every explainer returns the class token's relevance over the other tokens,
``[B, N-1]`` (``rollout_fem`` works per head internally).

All of them are the class row of a layer product  e_0^T M_L ... M_1  with M_l = D_l^-1 (I + X_l)
(D_l the row sums of I + X_l, or I when unnormalised). Only that row is needed, so it is computed
by propagating a row vector r <- r M_l from the last layer down: L vector-matrix products,
O(L N^2), never the O(L N^3) matrix product. Everything is differentiable where the maths is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .cam import _finite, _ksigma_maps

_FUSIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda a: a.mean(1),
    "min": lambda a: a.amin(1),
    "max": lambda a: a.amax(1),
}


def _validate(
    attentions: Sequence[Tensor], gradients: Sequence[Tensor] | None = None
) -> list[tuple[Tensor, ...]]:
    """Check shapes/values; return the per-layer tuples (A_l,) or (A_l, dA_l), first layer first."""
    atts = list(attentions)
    if not atts:
        raise ValueError("attentions must be a non-empty sequence of [B, H, N, N] tensors")
    shape = atts[0].shape
    if len(shape) != 4 or shape[-1] != shape[-2] or shape[-1] < 2:
        raise ValueError(
            f"attentions[0] must have shape [B, H, N, N] with N >= 2; got {tuple(shape)}"
        )
    named = {"attentions": atts}
    if gradients is not None:
        named["gradients"] = list(gradients)
        if len(named["gradients"]) != len(atts):
            raise ValueError(
                f"expected one gradient per attention layer ({len(atts)}); "
                f"got {len(named['gradients'])}"
            )
    for name, tensors in named.items():
        for i, t in enumerate(tensors):
            if t.shape != shape:
                raise ValueError(
                    f"{name}[{i}] has shape {tuple(t.shape)}; expected {tuple(shape)} "
                    f"(the shape of attentions[0])"
                )
        finite = torch.stack([_finite(t) for t in tensors])  # one sync per sequence
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            raise ValueError(f"{name}[{i}] contains NaN or inf; expected finite values")
    return list(zip(*named.values(), strict=True))


def _class_row(
    layers: list[tuple[Tensor, ...]], build: Callable[..., Tensor], normalise: bool
) -> Tensor:
    """e_0^T M_L ... M_1 over tokens 1..N-1, M_l = D_l^-1 (I + X_l), X_l = build(*layers[l]).

    X_l: [..., N, N] (``...`` = B or B, H); D_l = diag(rowsum(I + X_l)) if normalise else I.
    Uses r D^-1 (I + X) = r' + r' X with r' = r / rowsum, so I is never materialised.
    Returns [..., N-1].
    """
    r = None
    for layer in reversed(layers):
        x = build(*layer)  # [..., N, N]
        if r is None:
            r = x.new_zeros(x.shape[:-1])  # [..., N]
            r[..., 0] = 1
        if normalise:
            r = r / (1 + x.sum(-1))
        r = r + (r.unsqueeze(-2) @ x).squeeze(-2)
    return r[..., 1:]


def _discard_lowest(f: Tensor, ratio: float) -> Tensor:
    """Zero the int(ratio * N^2) lowest entries of each flattened [N, N] matrix of f [B, N, N],
    sparing flat index 0 = [0, 0] (jacobgil/vit-explain convention: the spared entry is not
    replaced). Ties at the cut are all dropped (vit-explain's topk breaks them arbitrarily)."""
    n_drop = int(f[0].numel() * ratio)
    if n_drop == 0:
        return f
    flat = f.flatten(1)  # [B, N*N]
    drop = flat <= flat.kthvalue(n_drop, -1, keepdim=True).values
    drop[:, 0] = False
    return flat.masked_fill(drop, 0).view_as(f)


def rollout(
    attentions: Sequence[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> Tensor:
    """Attention rollout (Abnar & Zuidema, "Quantifying attention flow in transformers", ACL 2020).

    Per layer: F_l = fuse_h(A_l) (mean | min | max over heads), optionally with the lowest
    ``discard_ratio`` fraction of each flattened F_l set to 0 (never F[0, 0], as vit-explain);
    A'_l = (F_l + I) / rowsum; rollout = A'_L ... A'_1. Returns its class row over tokens 1..N-1,
    unnormalised: [B, N-1].
    """
    if head_fusion not in _FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(_FUSIONS)}; got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1); got {discard_ratio}")
    fuse = _FUSIONS[head_fusion]
    return _class_row(
        _validate(attentions), lambda a: _discard_lowest(fuse(a), discard_ratio), normalise=True
    )


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


def rollout_fem(
    attentions: Sequence[Tensor], k: float = 2.0, heads: str | Sequence[int] = "all"
) -> Tensor:
    """Rollout-FEM (Ayyar, Benois-Pineau & Zemmari, ET poster): FEM's k-sigma rule on per-head
    rollouts.

    Per head h: A'_{l,h} = (I + A_{l,h}) / rowsum, rolled out across layers with the same head
    index, class row a_h over the N-1 tokens. b_h = 1[a_h >= mu_h + k sigma_h] (mean and
    population std over the tokens, per sample and head; sigma_h = 0 up to rounding, e.g. uniform
    attention, makes every token pass), w_h = mu_h. Saliency S = sum_{h in heads} w_h b_h,
    divided by its max per sample (max is 1, or an all-zero map stays 0).

    heads: "all"; "top<n>" (e.g. "top2"): the n heads with the largest w_h, per sample;
    "nonempty": heads whose binary map has at least one and at most half of the tokens set (plain
    "non-empty" would equal "all", since empty maps add 0); or explicit head indices.
    Returns [B, N-1].
    """
    a = _class_row(_validate(attentions), lambda x: x, normalise=True)  # [B, H, N-1]
    binary, w = _ksigma_maps(a, k)  # [B, H, N-1], [B, H]
    w = w * _head_mask(heads, w, binary)
    s = (w.unsqueeze(-1) * binary).sum(1)  # [B, N-1]
    peak = s.amax(-1, keepdim=True)
    return s / torch.where(peak > 0, peak, 1)


def rollout_grad(attentions: Sequence[Tensor], gradients: Sequence[Tensor]) -> Tensor:
    """Rollout-Grad (du Toit's TimeSformer study): gradient-weighted rollout, unnormalised.

    R_0 = I; Abar_l = E_h(A_l * dA_l); R_l = (I + Abar_l) R_{l-1}. Returns R_L's class row over
    tokens 1..N-1: [B, N-1].
    """
    return _class_row(
        _validate(attentions, gradients), lambda a, g: (a * g).mean(1), normalise=False
    )


def tibav(attentions: Sequence[Tensor], gradients: Sequence[Tensor]) -> Tensor:
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
