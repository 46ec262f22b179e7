"""Feature-map explainers (CAM family) as pure functions of tensors.

``features`` (and ``gradients``, the target score's gradient w.r.t. them) are ``[B, C, *grid]``
with any number of grid dims, e.g. ``(T, h, w)`` for video tokens (see :func:`reshape_tokens`).
Every explainer returns one map per sample, ``[B, *grid]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_EPS = 1e-6  # Grad-CAM++ denominator guard, as in pytorch-grad-cam


def _finite(t: Tensor) -> Tensor:
    """0-d bool: no NaN/inf in t (min and max propagate both; far cheaper than isfinite().all())."""
    return torch.stack(torch.aminmax(t)).isfinite().all()


def _check(features: Tensor, gradients: Tensor | None = None) -> None:
    if features.dim() < 3:
        raise ValueError(
            f"features must be [B, C, *grid] with at least one grid dim; "
            f"got shape {tuple(features.shape)}"
        )
    if gradients is not None and gradients.shape != features.shape:
        raise ValueError(
            f"gradients must have the features' shape {tuple(features.shape)}; "
            f"got {tuple(gradients.shape)}"
        )
    for name, t in (("features", features), ("gradients", gradients)):
        if t is not None and not bool(_finite(t)):
            raise ValueError(f"{name} contains NaN or inf; expected finite values")


def _ksigma_maps(x: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """FEM's k-sigma rule over the last dim: x [..., C, P] -> (binary [..., C, P], means [..., C]).

    b = 1[x >= mu + k*sigma], mu and sigma the mean and population std over P. A channel that is
    constant up to rounding (sigma <= 64 eps max|x|; e.g. uniform attention, sigma = 0 in exact
    arithmetic) passes everywhere, instead of getting a map decided by rounding noise.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0 (threshold mu + k*sigma); got {k}")
    mu = x.mean(-1, keepdim=True)
    sigma = x.std(-1, correction=0, keepdim=True)
    flat = sigma <= 64 * torch.finfo(x.dtype).eps * x.abs().amax(-1, keepdim=True)
    threshold = (mu + k * sigma).masked_fill_(flat, -math.inf)  # a flat channel: every x passes
    return (x >= threshold).to(x.dtype), mu.squeeze(-1)


def _weighted_cam(features: Tensor, weights: Tensor) -> Tensor:
    """relu(sum_c w_c A_c): features [B, C, *grid], weights [B, C] -> [B, *grid]."""
    return torch.einsum("bc,bc...->b...", weights, features).relu()


def fem(features: Tensor, k: float = 2.0) -> Tensor:
    """Feature Explanation Method (Fuad et al., "Features understanding in 3D CNNs for actions
    recognition in video", IPTA 2020), the paper's reading.

    Per channel c over the grid positions: B_c = 1[A_c >= mu_c + k sigma_c] (population std),
    w_c = mu_c = mean(A_c); saliency S = sum_c w_c B_c, min-max normalised to [0, 1] per sample
    (a constant map gives zeros). A channel constant up to rounding has sigma_c = 0, so B_c = 1.

    Signs. The paper's features are post-ReLU CNN activations, so every w_c >= 0. Transformer
    token features are signed: a channel with a negative mean lowers S where it is salient (its
    positions above mu_c + k sigma_c). We keep the paper's formula as written (no clamp of w_c or
    of S before the min-max), so the map's zero is its minimum, whatever the sign of the sum.

    pytorch-grad-cam's fem.py is another reading: it weights the raw activations A_c (not B_c) by
    the fraction of positions strictly above the threshold, sum_c mean(1[A_c > t_c]) A_c, then
    clamps at 0 and min-max scales (base_cam.py). The two coincide when every channel is
    v_c 1[support_c] with v_c > 0 and its support covers less than 1 / (1 + k^2) of the positions
    (then B_c is that support, mu_c = v_c |support_c| / P, and both sums are sum_c mu_c B_c);
    they differ whenever activations vary inside or outside the salient positions.

    features: [B, C, *grid] -> [B, *grid]
    """
    _check(features)
    binary, w = _ksigma_maps(features.flatten(2), k)  # [B, C, P], [B, C]
    s = (w.unsqueeze(-1) * binary).sum(1)  # [B, P]
    lo, hi = s.aminmax(dim=-1, keepdim=True)
    span = hi - lo
    s = (s - lo) / torch.where(span > 0, span, 1)
    return s.view(features.shape[:1] + features.shape[2:])


def gradcam(features: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): relu(sum_c w_c A_c), w_c = mean over the grid of
    dy/dA_c.

    features, gradients: [B, C, *grid] -> [B, *grid]
    """
    _check(features, gradients)
    return _weighted_cam(features, gradients.flatten(2).mean(-1))


def gradcam_pp(features: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018) with the exp-score closed form (eq. 19) as in
    pytorch-grad-cam's grad_cam_plusplus.py:

        alpha = g^2 / (2 g^2 + (sum_grid A_c) g^3 + eps),  alpha = 0 where g = 0,
        w_c = sum_grid relu(g) alpha,  cam = relu(sum_c w_c A_c),  eps = 1e-6.

    features, gradients: [B, C, *grid] -> [B, *grid]
    """
    _check(features, gradients)
    g = gradients.flatten(2)  # [B, C, P]
    g2 = g.square()
    alpha = g2 / (2 * g2 + features.flatten(2).sum(-1, keepdim=True) * g2 * g + _EPS)
    alpha = torch.where(g != 0, alpha, 0)
    return _weighted_cam(features, (g.relu() * alpha).sum(-1))


def eigencam(features: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): projection of the features on their first
    principal component, clamped at 0, as pytorch-grad-cam computes it (utils/svd_on_activations.py
    get_2d_projection, then base_cam.py's np.maximum(cam, 0)).

    Per sample X = features as [P positions, C]; Xc = X - mean_P(X); v = first right-singular
    vector of Xc; map = relu(Xc v). The SVD leaves the sign of v arbitrary, and with the clamp a
    flipped v keeps the other half of the positions; pytorch-grad-cam keeps whatever sign LAPACK
    returns. Here v is oriented so that mean_P(X) . v > 0, i.e. the uncentred projection X v has a
    positive sum (the centred one always sums to 0), falling back to a positive largest-|.| entry
    on an exact tie. Not min-max scaled (pytorch-grad-cam's scale_cam_image): the consumers here
    rank positions or threshold them relative to the maximum, which a positive scale leaves as is.

    features: [B, C, *grid] -> [B, *grid]
    """
    _check(features)
    x = features.flatten(2).transpose(1, 2)  # [B, P, C]
    xc = x - x.mean(1, keepdim=True)
    v = torch.linalg.svd(xc, full_matrices=False).Vh[:, 0]  # [B, C]
    proj = (xc @ v.unsqueeze(-1)).squeeze(-1)  # [B, P]
    orient = (x.sum(1) * v).sum(-1)  # [B] sum of X v
    peak = proj.gather(1, proj.abs().argmax(1, keepdim=True)).squeeze(1)  # [B]
    sign = torch.where(orient != 0, orient, peak).sign()
    proj = (proj * sign.unsqueeze(-1)).relu()
    return proj.view(features.shape[:1] + features.shape[2:])


def reshape_tokens(tokens: Tensor, grid: Sequence[int]) -> Tensor:
    """Token features -> feature-map layout (cf. pytorch-grad-cam's reshape_transform).

    tokens: [B, 1 + prod(grid), C] (leading class token, dropped) or [B, prod(grid), C]
    -> [B, C, *grid]. ``grid`` is given in the tokens' own row-major order (last dim fastest), e.g.
    (T, h, w) for frame-major models; TimeSformer lays its tokens out as (h, w, T).
    """
    grid = tuple(int(n) for n in grid)
    if not grid or min(grid) < 1:
        raise ValueError(f"grid must be a non-empty sequence of positive sizes; got {grid}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be [B, tokens, C]; got shape {tuple(tokens.shape)}")
    b, m, c = tokens.shape
    p = math.prod(grid)
    if m == p + 1:
        tokens = tokens[:, 1:]
    elif m != p:
        raise ValueError(
            f"{m} tokens do not fit grid {grid}: expected {p} (prod(grid)) "
            f"or {p + 1} (with a leading class token)"
        )
    return tokens.transpose(1, 2).reshape(b, c, *grid)
