"""Explainers against naive references (full N x N products, explicit loops), hand-computed cases,
planted salient tokens, and error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from harness.explain import (
    ATTENTION_EXPLAINERS,
    NEEDS_GRADIENTS,
    eigencam,
    explainer_names,
    fem,
    get_attention_explainer,
    gradcam,
    gradcam_pp,
    random_relevance,
    reshape_tokens,
    rollout,
    rollout_fem,
    rollout_grad,
    tibav,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}
B, H, N, L = 3, 4, 9, 3


def _attentions(b=B, h=H, n=N, layers=L, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.softmax(2 * torch.randn(b, h, n, n, generator=gen, dtype=torch.float64), -1)
        for _ in range(layers)
    ]


def _gradients(atts, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(a.shape, generator=gen, dtype=torch.float64) for a in atts]


def _features(b=2, c=5, grid=(3, 4, 5), seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, *grid, generator=gen, dtype=torch.float64)


# ---------------------------------------------------------------- naive references


def _naive_rollout(atts, fusion="mean", ratio=0.0):
    n = atts[0].shape[-1]
    out = []
    for b in range(atts[0].shape[0]):
        r = torch.eye(n, dtype=torch.float64)
        for a in atts:
            f = {"mean": a[b].mean(0), "min": a[b].min(0).values, "max": a[b].max(0).values}[fusion]
            flat = f.flatten().clone()
            idx = flat.topk(int(n * n * ratio), largest=False).indices
            flat[idx[idx != 0]] = 0
            m = flat.view(n, n) + torch.eye(n, dtype=torch.float64)
            r = (m / m.sum(-1, keepdim=True)) @ r
        out.append(r[0, 1:])
    return torch.stack(out)


def _naive_product(atts, grads, layer_matrix):
    n = atts[0].shape[-1]
    out = []
    for b in range(atts[0].shape[0]):
        r = torch.eye(n, dtype=torch.float64)
        for a, g in zip(atts, grads, strict=True):
            r = r + layer_matrix(a[b], g[b]) @ r
        out.append(r[0, 1:])
    return torch.stack(out)


def _naive_head_rollouts(atts, normalise=True, with_class=False):
    """[B, H, N-1] per-head class rows (or [B, H, N] with the class token), full matrix products."""
    bsz, heads, n, _ = atts[0].shape
    eye = torch.eye(n, dtype=torch.float64)
    out = torch.zeros(bsz, heads, n, dtype=torch.float64)
    for b in range(bsz):
        for h in range(heads):
            r = eye
            for a in atts:
                m = a[b, h] + eye
                r = (m / m.sum(-1, keepdim=True) if normalise else m) @ r
            out[b, h] = r[0]
    return out if with_class else out[..., 1:]


def _naive_rollout_fem(atts, k=2.0, heads="all", head_weight="mean", normalise=True):
    a = _naive_head_rollouts(atts, normalise)
    bsz, n_heads, _ = a.shape
    out = torch.zeros(bsz, a.shape[-1], dtype=torch.float64)
    for b in range(bsz):
        w = [a[b, h].mean() if head_weight == "mean" else a[b, h].max() for h in range(n_heads)]
        maps = [
            (a[b, h] >= a[b, h].mean() + k * a[b, h].std(correction=0)).double()
            for h in range(n_heads)
        ]
        if heads == "all":
            chosen = range(n_heads)
        elif heads == "nonempty":
            chosen = [h for h in range(n_heads) if 1 <= maps[h].sum() <= len(maps[h]) / 2]
        elif isinstance(heads, str):
            chosen = sorted(range(n_heads), key=lambda h: -w[h])[: int(heads[3:])]
        else:
            chosen = heads
        s = sum((w[h] * maps[h] for h in chosen), torch.zeros_like(out[b]))
        out[b] = s / s.max() if s.max() > 0 else s
    return out


def _naive_fem(x, k):
    out = []
    for sample in x:
        s = torch.zeros_like(sample[0])
        for ch in sample:
            s += ch.mean() * (ch >= ch.mean() + k * ch.std(correction=0)).double()
        out.append((s - s.min()) / (s.max() - s.min()))
    return torch.stack(out)


def _naive_cam(x, weights):
    maps = [sum(w * ch for w, ch in zip(ws, xs, strict=True)) for ws, xs in zip(weights, x)]
    return torch.stack(maps).clamp(min=0)


def _naive_gradcam_pp(x, g):
    weights = []
    for xs, gs in zip(x, g, strict=True):
        ws = []
        for a, d in zip(xs, gs, strict=True):
            alpha = d**2 / (2 * d**2 + a.sum() * d**3 + 1e-6)
            alpha = torch.where(d != 0, alpha, torch.zeros_like(alpha))
            ws.append((d.clamp(min=0) * alpha).sum())
        weights.append(ws)
    return _naive_cam(x, weights)


def _naive_eigencam(x):
    out = []
    for sample in x.numpy():
        flat = sample.reshape(sample.shape[0], -1).T  # [P, C]
        centred = flat - flat.mean(0)
        v = np.linalg.svd(centred)[2][0]
        v = v if flat.mean(0) @ v > 0 else -v
        out.append(np.maximum(centred @ v, 0).reshape(sample.shape[1:]))
    return torch.from_numpy(np.stack(out))


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("fusion", ["mean", "min", "max"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9])
def test_rollout_matches_naive(fusion, ratio):
    atts = _attentions()
    assert_close(rollout(atts, fusion, ratio), _naive_rollout(atts, fusion, ratio), **TOL)


@pytest.mark.parametrize("heads", ["all", "top1", "top3", "nonempty", [0, 2], (3,)])
@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("head_weight", ["mean", "max"])
def test_rollout_fem_matches_naive(heads, k, head_weight):
    atts = _attentions(n=12)
    assert_close(
        rollout_fem(atts, k, heads, head_weight),
        _naive_rollout_fem(atts, k, heads, head_weight),
        **TOL,
    )


def test_rollout_fem_unnormalised_matches_naive_and_off_row_stochastic_differs():
    # Maps whose rows do not sum to 1 (an offset): normalise decides the result.
    atts = [a + 0.05 * torch.rand_like(a) for a in _attentions(n=12)]
    for normalise in (True, False):
        assert_close(
            rollout_fem(atts, 0.5, "top2", "max", normalise),
            _naive_rollout_fem(atts, 0.5, "top2", "max", normalise),
            **TOL,
        )
    assert not torch.allclose(rollout_fem(atts, 0.5), rollout_fem(atts, 0.5, normalise=False))


@pytest.mark.parametrize("head_weight", ["mean", "max"])
@pytest.mark.parametrize("heads", ["all", "top2", "nonempty"])
def test_rollout_fem_normalise_is_a_no_op_on_row_stochastic_attention(head_weight, heads):
    """Rows of I + A sum to 2: the unnormalised rollout is the normalised one times 2^L."""
    atts = _attentions(n=12, layers=4)
    assert_close(
        _naive_head_rollouts(atts, normalise=False), 2**4 * _naive_head_rollouts(atts), **TOL
    )
    for k in (0.5, 1.0, 2.0):
        plain = rollout_fem(atts, k, heads, head_weight)
        assert_close(rollout_fem(atts, k, heads, head_weight, normalise=False), plain, **TOL)


def test_rollout_fem_mean_weight_is_the_class_tokens_leftover():
    """w_h = mean_j a_h[j] = (1 - r_h[cls]) / (N - 1): the normalised rollout is row-stochastic."""
    n = 12
    atts = _attentions(n=n)
    rows = _naive_head_rollouts(atts, with_class=True)  # [B, H, N]
    assert_close(rows.sum(-1), torch.ones(rows.shape[:2], dtype=torch.float64), **TOL)
    assert_close(rows[..., 1:].mean(-1), (1 - rows[..., 0]) / (n - 1), **TOL)
    # So top1 by the mean weight is the head keeping the least on the class token ...
    top1 = rollout_fem(atts, 1.0, "top1")
    for b, h in enumerate(rows[..., 0].argmin(-1).tolist()):
        assert_close(top1[b : b + 1], rollout_fem([a[b : b + 1] for a in atts], 1.0, [h]), **TOL)
    # ... and by the max weight the one with the highest peak, here another head for a sample.
    peak = rows[..., 1:].amax(-1).argmax(-1)
    assert (peak != rows[..., 0].argmin(-1)).any()


def test_rollout_grad_and_tibav_match_naive():
    atts = _attentions()
    grads = _gradients(atts)
    assert_close(
        rollout_grad(atts, grads), _naive_product(atts, grads, lambda a, g: (a * g).mean(0)), **TOL
    )
    assert_close(
        tibav(atts, grads),
        _naive_product(atts, grads, lambda a, g: (a * g).clamp(min=0).mean(0)),
        **TOL,
    )


def test_cam_explainers_match_naive():
    x, g = _features(), _features(seed=3)
    assert_close(fem(x, 1.0), _naive_fem(x, 1.0), **TOL)
    assert_close(gradcam(x, g), _naive_cam(x, g.flatten(2).mean(-1)), **TOL)
    assert_close(gradcam_pp(x, g), _naive_gradcam_pp(x, g), **TOL)
    assert_close(eigencam(x), _naive_eigencam(x), **TOL)


def test_one_layer_and_2d_grids():
    atts = _attentions(layers=1)
    assert_close(rollout(atts), _naive_rollout(atts), **TOL)
    x, g = _features(grid=(6, 7)), _features(grid=(6, 7), seed=4)
    assert fem(x).shape == gradcam(x, g).shape == eigencam(x).shape == (2, 6, 7)
    assert_close(gradcam_pp(x, g), _naive_gradcam_pp(x, g), **TOL)


# ---------------------------------------------------------------- hand-computed cases


def test_rollout_by_hand():
    a1 = torch.tensor([[0.2, 0.5, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    a2 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    # A'_1 class row = ([0.2, .5, .3] + e_0) / 2 = [.6, .25, .15]
    assert_close(rollout([a1[None, None]]), torch.tensor([[0.25, 0.15]], dtype=torch.float64))
    # A'_2 class row = [.5, 0, .5]; rows 1, 2 of A'_1 are e_1, e_2 -> .5 [.6, .25, .15] + .5 e_2
    assert_close(
        rollout([a1[None, None], a2[None, None]]),
        torch.tensor([[0.125, 0.575]], dtype=torch.float64),
    )


def test_fem_by_hand():
    x = torch.tensor([[[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 3.0, 3.0]]], dtype=torch.float64)
    # k=1: channel 0: mu=1, sigma=sqrt(3) -> B=[0,0,0,1], w=1
    #      channel 1: mu=2, sigma=1 -> B=[0,0,1,1], w=2
    # S = [0, 0, 2, 3] -> min-max -> [0, 0, 2/3, 1]
    expected = torch.tensor([[0.0, 0.0, 2 / 3, 1.0]], dtype=torch.float64)
    assert_close(fem(x, k=1.0), expected)
    assert_close(fem(x.view(1, 2, 2, 2), k=1.0), expected.view(1, 2, 2))
    assert_close(fem(x, k=0.0), torch.tensor([[0.0, 0.0, 2 / 3, 1.0]], dtype=torch.float64))
    assert_close(fem(torch.ones(1, 2, 4)), torch.zeros(1, 4))  # constant map -> zeros


# ---------------------------------------------------------------- planted salient token / position


def test_planted_token_ranks_first_for_every_attention_explainer():
    j, n = 5, 12
    gen = torch.Generator().manual_seed(5)
    logits = [torch.randn(2, 3, n, n, generator=gen) for _ in range(4)]
    for z in logits:
        z[..., j] += 6.0
    atts = [torch.softmax(z, -1) for z in logits]
    ones = [torch.ones_like(a) for a in atts]
    for name, explain in ATTENTION_EXPLAINERS.items():
        out = explain(atts, ones) if name in NEEDS_GRADIENTS else explain(atts)
        assert out.shape == (2, n - 1)
        assert (out.argmax(-1) == j - 1).all(), name
    for fusion in ("min", "max"):
        assert (rollout(atts, fusion, 0.5).argmax(-1) == j - 1).all()


def test_planted_position_ranks_first_for_every_cam():
    gen = torch.Generator().manual_seed(6)
    x = 0.1 * torch.rand(2, 8, 4, 5, 6, generator=gen)
    x[:, :, 2, 3, 1] += 5.0
    g = torch.ones_like(x)
    pos = np.ravel_multi_index((2, 3, 1), (4, 5, 6))
    for out in (fem(x), gradcam(x, g), gradcam_pp(x, g), eigencam(x)):
        assert out.shape == (2, 4, 5, 6)
        assert (out.flatten(1).argmax(-1) == pos).all()


# ---------------------------------------------------------------- rollout_fem behaviour


def test_rollout_fem_degenerate_maps():
    # identity attention: rollout class row is e_0, every token 0 -> all-zero map stays zero
    eye = torch.eye(N).expand(2, H, N, N)
    assert_close(rollout_fem([eye, eye]), torch.zeros(2, N - 1))
    # uniform attention: all tokens equal, sigma = 0, a >= mu holds everywhere -> all ones
    for n in (N, 1569):
        uniform = torch.full((1, 2, n, n), 1.0 / n)
        out = rollout_fem([uniform] * 3)
        assert not out.isnan().any()
        assert_close(out, torch.ones(1, n - 1))


def test_rollout_fem_range_and_head_selection():
    atts = _attentions(n=12)
    out = rollout_fem(atts, k=1.0)
    assert set(out.amax(-1).tolist()) <= {0.0, 1.0} and (out >= 0).all()
    weights = _naive_head_rollouts(atts).mean(-1)  # [B, H]
    top1 = rollout_fem(atts, k=1.0, heads="top1")
    for b, h in enumerate(weights.argmax(-1).tolist()):
        single = [a[b : b + 1] for a in atts]
        assert_close(top1[b : b + 1], rollout_fem(single, k=1.0, heads=[h]), **TOL)
    assert_close(rollout_fem(atts, heads=f"top{H}"), rollout_fem(atts), **TOL)
    assert_close(rollout_fem(atts, heads=list(range(H))), rollout_fem(atts), **TOL)


# ---------------------------------------------------------------- misc


def test_differentiable_and_float32():
    atts = [a.float().requires_grad_() for a in _attentions()]
    grads = [g.float() for g in _gradients(atts)]
    (rollout(atts).sum() + tibav(atts, grads).sum() + rollout_grad(atts, grads).sum()).backward()
    assert all(a.grad is not None and a.grad.isfinite().all() for a in atts)
    assert rollout(atts).dtype == torch.float32


def test_reshape_tokens_and_random_relevance():
    tokens = torch.arange(2 * 25 * 3, dtype=torch.float32).view(2, 25, 3)
    maps = reshape_tokens(tokens, (2, 3, 4))
    assert maps.shape == (2, 3, 2, 3, 4)
    assert_close(maps[1, 2, 1, 2, 3], tokens[1, 24, 2])  # last token -> last grid cell
    assert_close(reshape_tokens(tokens[:, 1:], (2, 3, 4)), maps)
    r1 = random_relevance((2, 7), torch.Generator().manual_seed(0))
    r2 = random_relevance([2, 7], torch.Generator().manual_seed(0))
    assert r1.shape == (2, 7) and ((r1 >= 0) & (r1 < 1)).all()
    assert_close(r1, r2)


def test_registry():
    assert explainer_names() == (
        "rollout", "rollout_fem", "rollout_grad", "tibav",
        "fem", "gradcam", "gradcam_pp", "eigencam", "random",
    )  # fmt: skip
    assert get_attention_explainer("tibav") is tibav
    assert NEEDS_GRADIENTS == {"rollout_grad", "tibav", "gradcam", "gradcam_pp"}
    with pytest.raises(ValueError, match="unknown explainer 'gradcam'; expected one of: rollout"):
        get_attention_explainer("gradcam")


# ---------------------------------------------------------------- error messages


def test_attention_validation_errors():
    atts = _attentions()
    with pytest.raises(ValueError, match="non-empty sequence"):
        rollout([])
    with pytest.raises(ValueError, match=r"attentions\[0\] must have shape \[B, H, N, N\]"):
        rollout([torch.ones(2, 3, 4)])
    with pytest.raises(ValueError, match=r"attentions\[1\] has shape \(3, 4, 8, 8\); expected"):
        rollout([atts[0], atts[1][..., :8, :8]])
    bad = [a.clone() for a in atts]
    bad[2][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"attentions\[2\] contains NaN or inf"):
        rollout(bad)
    grads = _gradients(atts)
    with pytest.raises(ValueError, match="one gradient per attention layer"):
        tibav(atts, grads[:2])
    with pytest.raises(ValueError, match=r"gradients\[1\] has shape"):
        rollout_grad(atts, [grads[0], grads[1][:1]] + grads[2:])
    grads[0][0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"gradients\[0\] contains NaN or inf"):
        tibav(atts, grads)
    with pytest.raises(ValueError, match="head_fusion must be one of mean, min, max"):
        rollout(atts, "median")
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        rollout(atts, discard_ratio=1.0)


def test_fem_argument_errors():
    atts = _attentions()
    with pytest.raises(ValueError, match="k must be >= 0"):
        rollout_fem(atts, k=-1.0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        fem(_features(), k=-0.5)
    with pytest.raises(ValueError, match="head_weight must be one of mean, max; got 'sum'"):
        rollout_fem(atts, head_weight="sum")
    for heads in ("best", "top0", f"top{H + 1}"):
        with pytest.raises(ValueError, match="heads must be 'all', 'nonempty', 'top<n>'"):
            rollout_fem(atts, heads=heads)
    with pytest.raises(ValueError, match=r"head indices must be a non-empty sequence in \[0, 4\)"):
        rollout_fem(atts, heads=[0, 4])


def test_cam_errors():
    x = _features()
    with pytest.raises(ValueError, match=r"features must be \[B, C, \*grid\]"):
        gradcam(x.flatten(1), x.flatten(1))
    with pytest.raises(ValueError, match="gradients must have the features' shape"):
        gradcam_pp(x, x[:1])
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        eigencam(x.masked_fill(x > 2, float("nan")))
    with pytest.raises(ValueError, match=r"25 tokens do not fit grid \(2, 3, 3\): expected 18"):
        reshape_tokens(torch.zeros(1, 25, 4), (2, 3, 3))
