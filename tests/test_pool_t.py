"""Pool-T and its adapter: explainers equal a dense float64 reference (every token-mixing step an
N x N matrix built entry by entry), the composed steps equal the forward's token Jacobian in a
linearised model, a planted region is ranked first, IFI's attentions have the documented shapes."""

import pytest
import torch

from harness.explain import ATTENTION_EXPLAINERS, EXPLAINERS, NEEDS_GRADIENTS, explain_input
from harness.models import build_model
from harness.models.pool_t import PoolTClassifier

EXACT = {"atol": 1e-10, "rtol": 1e-9}
T, S, PATCH = 4, 16, 8  # 2 x 2 patches per frame: Q = 1 + P = 5 tokens per frame


def tiny(**kw):
    cfg = dict(num_frames=T, image_size=S, patch_size=PATCH, hidden_size=16, spatial_layers=2,
               temporal_layers=1, num_heads=2, pool_hidden=8) | kw  # fmt: skip
    return PoolTClassifier(3, **cfg)


def dense_steps(attention):
    """Every step of a Pool-T forward as a dense [B, H, N, N] matrix, entry by entry."""
    spatial, temporal, w = attention.spatial, attention.temporal, attention.pooling
    B, _, H, Q, _ = spatial[0].shape
    n = 1 + T * Q
    steps = []
    for a in spatial:
        x = torch.zeros(B, H, n, n, dtype=a.dtype)
        for t in range(T):
            for i in range(Q):
                for j in range(Q):
                    x[:, :, 1 + t * Q + i, 1 + t * Q + j] = a[:, t, :, i, j]
        steps.append(x)
    for a in temporal:
        x = torch.zeros(B, H, n, n, dtype=a.dtype)
        for t in range(T):
            for u in range(T):
                x[:, :, 1 + t * Q, 1 + u * Q] = a[:, :, t, u]
        steps.append(x)
    x = torch.zeros(B, H, n, n, dtype=w.dtype)
    for t in range(T):
        x[:, :, 0, 1 + t * Q] = w[:, None, t]
    return [*steps, x]


def patch_columns(flat):
    """[..., N-1] over tokens 1.. -> [..., T, h, w]: the patch tokens (frame tokens dropped)."""
    return flat.unflatten(-1, (T, 1 + (S // PATCH) ** 2))[..., 1:].unflatten(-1, (2, 2))


@pytest.mark.parametrize("name", list(ATTENTION_EXPLAINERS))
def test_explainers_equal_the_dense_reference(name):
    torch.manual_seed(0)
    model = tiny().double().eval()
    clips = torch.rand(3, T, 3, S, S, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    relevance = explain_input(model, clips, name, target=target).relevance
    out = model(clips, capture=True)
    steps = [s.detach() for s in dense_steps(out.attention)]
    fn = ATTENTION_EXPLAINERS[name]
    if name in NEEDS_GRADIENTS:
        score = out.logits.gather(1, target[:, None]).sum()
        reference = patch_columns(fn(steps, dense_steps(out.attention.gradients(score))))
    elif name == "rollout_fem":  # its k-sigma statistics are over the patch tokens only
        patches = patch_columns(torch.arange(T * 5)).flatten()
        reference = fn(steps, tokens=patches).reshape(3, T, 2, 2)
    else:
        reference = patch_columns(fn(steps))
    assert relevance.shape == (3, T, 2, 2)
    torch.testing.assert_close(relevance, reference, **EXACT)
    assert not torch.allclose(relevance[0], relevance[1])


@pytest.mark.parametrize("name", EXPLAINERS)
def test_every_explainer_gives_a_finite_map_per_frame_and_patch(name):
    torch.manual_seed(1)
    model = tiny().eval()
    relevance = explain_input(model, torch.rand(2, T, 3, S, S), name).relevance
    assert relevance.shape == (2, T, 2, 2) and bool(torch.isfinite(relevance).all())


def _linearised(model):
    """Value and output projections the identity, norms and MLPs removed, attention probabilities
    and importance weights fixed (detached): the forward is then the product of the steps."""
    C = model.head.in_features
    eye = torch.eye(C, dtype=torch.float64)
    with torch.no_grad():
        for block in [*model.spatial, *model.temporal]:
            block.norm1, block.norm2 = torch.nn.Identity(), torch.nn.Identity()
            block.attn.qkv.weight[2 * C :] = eye
            block.attn.qkv.bias[2 * C :] = 0
            block.attn.proj.weight.copy_(eye)
            block.attn.proj.bias.zero_()
            block.mlp[3].weight.zero_()
            block.mlp[3].bias.zero_()
            block.attn.probabilities = lambda logits: logits.softmax(-1).detach()
    model.norm = torch.nn.Identity()
    score = model.pool.score
    model.pool.forward = lambda f: (
        (score(f).squeeze(-1).softmax(-1).detach().unsqueeze(-1) * f).sum(1),
        score(f).squeeze(-1).softmax(-1).detach(),
    )
    return model


def test_composed_steps_equal_the_token_jacobian_of_the_linearised_model():
    torch.manual_seed(2)
    model = _linearised(tiny().double().eval())
    clips = torch.rand(1, T, 3, S, S, dtype=torch.float64)
    leaf = {}

    def embed_hook(module, args, output):  # the patch tokens become the leaf of the Jacobian
        leaf["x"] = output.detach().requires_grad_()
        return leaf["x"]

    seen = {}
    handles = [
        model.patch_embed.register_forward_hook(embed_hook),
        model.head.register_forward_hook(lambda m, args, out: seen.update(clip=args[0])),
    ]
    out = model(clips, capture=True)
    for h in handles:
        h.remove()
    steps = [s.detach() for s in dense_steps(out.attention)]
    n = steps[0].shape[-1]
    C, heads = model.head.in_features, 2
    for head in range(heads):
        product = torch.eye(n, dtype=torch.float64)
        for x in steps:  # first step first: J = (I + X_L) ... (I + X_1)
            product = (torch.eye(n, dtype=torch.float64) + x[0, head]) @ product
        c = head * (C // heads)
        (grad,) = torch.autograd.grad(seen["clip"][0, c], leaf["x"], retain_graph=True)
        jacobian = grad[:, c].reshape(T, 2, 2)  # d clip[c] / d patch token (t, p)[c]
        torch.testing.assert_close(jacobian, patch_columns(product[0, 1:]), **EXACT)
        assert jacobian.abs().min() > 0


def test_a_planted_region_is_ranked_first_by_rollout():
    """Attention driven by brightness: q is a constant, k reads channel 0 of the patch embedding
    (the patch's mean brightness), the attention output is zero (tokens never change). Every
    spatial attention then reads the bright patch; rollout must rank it first in every frame."""
    torch.manual_seed(3)
    model = tiny().eval()
    C, d = 16, 8
    with torch.no_grad():
        model.patch_embed.weight.zero_()
        model.patch_embed.weight[0] = 1.0 / (3 * PATCH * PATCH)
        model.patch_embed.bias.zero_()
        for p in (model.pos_embed, model.cls_token, model.time_embed):
            p.zero_()
        for block in [*model.spatial, *model.temporal]:
            block.norm1 = torch.nn.Identity()
            block.attn.qkv.weight[: 2 * C].zero_()
            block.attn.qkv.bias[: 2 * C].zero_()
            for head in range(2):
                block.attn.qkv.bias[head * d] = 20.0  # q: a constant
                block.attn.qkv.weight[C + head * d, 0] = 1.0  # k: the brightness
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
            block.mlp[3].weight.zero_()
            block.mlp[3].bias.zero_()
    clips = torch.zeros(2, T, 3, S, S)
    clips[0, :, :, PATCH:, PATCH:] = 1.0  # patch (1, 1)
    clips[1, :, :, :PATCH, PATCH:] = 1.0  # patch (0, 1)
    # (k = 1: the planted patch is a quarter of each frame's tokens, above mu + sigma only)
    for name, params in (("rollout", {}), ("rollout_fem", {"k": 1.0})):
        relevance = explain_input(model, clips, name, **params).relevance.flatten(2)  # [B, T, P]
        assert relevance.argmax(-1).tolist() == [[3] * T, [1] * T], name


def test_ifi_supervises_spatial_and_temporal_attention():
    torch.manual_seed(4)
    model = tiny()
    out = model(torch.rand(2, T, 3, S, S), capture=True)
    score = out.logits[:, 0].sum()
    pairs = model.adapter.supervised_attention(out, score, class_rows=False)
    assert [a.shape for a, _ in pairs] == [(2, T, 2, 5, 5)] * 2 + [(2, 2, T, T)]
    assert all(g.shape == a.shape and g.abs().sum() > 0 for a, g in pairs)
    assert len(model.adapter.supervised_attention(out, score, class_rows=True)) == 2


def test_built_from_its_config_and_capture_changes_nothing():
    model = build_model({"name": "pool_t", "num_frames": T, "image_size": S, "patch_size": PATCH,
                         "hidden_size": 16, "num_heads": 2}, 3).eval()  # fmt: skip
    clips = torch.rand(2, T, 3, S, S)
    out = model(clips, capture=True)
    torch.testing.assert_close(out.logits, model(clips).logits)
    assert out.attention.pooling.sum(-1).allclose(torch.ones(2))
    with pytest.raises(ValueError, match=r"clips must be \[B, 4, 3, 16, 16\]"):
        model(torch.rand(1, 3, 3, S, S))
