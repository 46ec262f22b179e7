"""Video Swin-T and its adapter: explainers through shifted windows, patch merging and the pooled
readout equal a dense float64 reference built entry by entry from the model's geometry; the
composed steps equal the linearised forward's token Jacobian; a planted region is ranked first;
torchvision-named state dicts load (weights_only)."""

import math

import pytest
import torch

from harness.explain import ATTENTION_EXPLAINERS, EXPLAINERS, NEEDS_GRADIENTS, explain_input
from harness.models import build_model
from harness.models.swin import VideoSwinClassifier

EXACT = {"atol": 1e-10, "rtol": 1e-9}
CFG = dict(num_frames=8, image_size=32, patch_size=(2, 4, 4), embed_dim=16, depths=(2, 2),
           num_heads=(2, 4), window_size=(2, 4, 4), drop_path=0.0)  # fmt: skip
GRIDS = [(4, 8, 8), (4, 4, 4)]  # stage token grids of CFG
SIZES = [math.prod(g) for g in GRIDS]
N = 1 + sum(SIZES)


def tiny(**kw):
    return VideoSwinClassifier(3, **(CFG | kw))


def _token(stage, t, i, j):
    T, H, W = GRIDS[stage]
    return 1 + sum(SIZES[:stage]) + (t * H + i) * W + j


def dense_steps(attention, gradient=False):
    """Every step as a dense [B, H, N, N] matrix, from the geometry alone: windows of each block
    on its grid rolled by -shift (torchvision's cyclic shift), merges, the mean-pool readout."""
    B, heads = attention.batch, 4
    steps, stage_seen = [], 0
    for a, (stage, grid, window, shift) in zip(attention.captured, attention.layout):
        if stage != stage_seen:
            x = torch.zeros(B, heads, N, N, dtype=a.dtype)
            T, H, W = GRIDS[stage - 1]
            for t in range(T):
                for i in range(H):
                    for j in range(W):
                        x[:, :, _token(stage, t, i // 2, j // 2), _token(stage - 1, t, i, j)] = 1
            steps.append(x)
            stage_seen = stage
        T, H, W = grid
        nw = [n // w for n, w in zip(grid, window)]
        a = a.view(B, *nw, a.shape[1], math.prod(window), math.prod(window))
        x = torch.zeros(B, heads, N, N, dtype=a.dtype)
        positions = [(t, i, j) for t in range(T) for i in range(H) for j in range(W)]
        for p in positions:  # p, q: positions on the rolled grid
            for q in positions:
                if any(p[d] // window[d] != q[d] // window[d] for d in range(3)):
                    continue
                w = tuple(p[d] // window[d] for d in range(3))
                ip, iq = (((r[0] % window[0]) * window[1] + r[1] % window[1]) * window[2]
                          + r[2] % window[2] for r in (p, q))  # fmt: skip
                src = [(p[d] + shift[d]) % grid[d] for d in range(3)]
                dst = [(q[d] + shift[d]) % grid[d] for d in range(3)]
                for head in range(heads):
                    original = head // (heads // a.shape[4])
                    x[:, head, _token(stage, *src), _token(stage, *dst)] = a[
                        :, w[0], w[1], w[2], original, ip, iq
                    ]
        steps.append(x)
    x = torch.zeros(B, heads, N, N, dtype=attention.captured[0].dtype)
    x[:, :, 0, 1 + SIZES[0]:] = 1.0 if gradient else 1.0 / SIZES[1]
    return [*steps, x]


def per_frame(flat):
    """Stage-1 token relevance [B, 4*8*8] -> per frame and patch [B, 8, 8, 8] (2 frames a token)."""
    return flat[..., : SIZES[0]].reshape(-1, *GRIDS[0]).repeat_interleave(2, dim=1)


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    return tiny().double().eval()


@pytest.mark.parametrize("name", list(ATTENTION_EXPLAINERS))
def test_explainers_equal_the_dense_reference(model64, name):
    torch.manual_seed(1)
    clips = torch.rand(2, 8, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 2])
    relevance = explain_input(model64, clips, name, target=target).relevance
    out = model64(clips, capture=True)
    steps = [s.detach() for s in dense_steps(out.attention)]
    fn = ATTENTION_EXPLAINERS[name]
    if name in NEEDS_GRADIENTS:
        score = out.logits.gather(1, target[:, None]).sum()
        grads = dense_steps(out.attention.gradients(score), gradient=True)
        reference = per_frame(fn(steps, grads))
    elif name == "rollout_fem":
        reference = per_frame(fn(steps, tokens=torch.arange(SIZES[0])))
    else:
        reference = per_frame(fn(steps))
    assert relevance.shape == (2, 8, 8, 8)
    torch.testing.assert_close(relevance, reference, **EXACT)
    assert relevance[0].std() > 0


@pytest.mark.parametrize("name", EXPLAINERS)
def test_every_explainer_gives_a_finite_map_per_frame_and_patch(name):
    torch.manual_seed(2)
    relevance = explain_input(tiny().eval(), torch.rand(2, 8, 3, 32, 32), name).relevance
    assert relevance.shape == (2, 8, 8, 8) and bool(torch.isfinite(relevance).all())
    torch.testing.assert_close(relevance[:, 0::2], relevance[:, 1::2])  # one token, two frames


def test_composed_steps_equal_the_token_jacobian_of_the_linearised_model():
    """Linearised: norms removed, value and output projections the identity, MLPs zero, attention
    fixed; the merge sums the 4 children of stage-1 head j into stage-2 head 2j (the heads the
    explainers pair). d pooled[c] / d stage-1 token[c] is then row 0 of the product of (I + X)."""
    torch.manual_seed(3)
    model = tiny().double().eval()
    C, identity = 16, torch.nn.Identity()
    with torch.no_grad():
        model.patch_embed.norm = identity
        model.norm = identity
        for layer in model.features:
            if hasattr(layer, "reduction"):
                layer.norm = identity
                layer.reduction.weight.zero_()
                for head in range(2):  # stage-1 head j (8 channels) -> stage-2 head 2j
                    for o in range(8):
                        for k in range(4):
                            layer.reduction.weight[2 * head * 8 + o, k * C + head * 8 + o] = 1
                continue
            for block in layer:
                dim = block.attn.proj.in_features
                block.norm1, block.norm2 = identity, identity
                block.attn.qkv.weight[2 * dim :] = torch.eye(dim)
                block.attn.qkv.bias[2 * dim :] = 0
                block.attn.proj.weight.copy_(torch.eye(dim))
                block.attn.proj.bias.zero_()
                block.mlp[3].weight.zero_()
                block.mlp[3].bias.zero_()
                block.attn.probabilities = lambda logits: logits.softmax(-1).detach()
    leaf, seen = {}, {}

    def embed_hook(module, args, output):
        leaf["x"] = output.detach().requires_grad_()
        return leaf["x"]

    handles = [
        model.patch_embed.register_forward_hook(embed_hook),
        model.head.register_forward_hook(lambda m, a, o: seen.update(pooled=a[0])),
    ]
    out = model(torch.rand(1, 8, 3, 32, 32, dtype=torch.float64), capture=True)
    for handle in handles:
        handle.remove()
    steps = [s.detach() for s in dense_steps(out.attention)]
    for head in (0, 2):
        product = torch.eye(N, dtype=torch.float64)
        for x in steps:
            product = (torch.eye(N, dtype=torch.float64) + x[0, head]) @ product
        c = (head // 2) * 8
        (grad,) = torch.autograd.grad(seen["pooled"][0, head * 8], leaf["x"], retain_graph=True)
        jacobian = grad[0, ..., c].flatten()  # over the stage-1 tokens (t, i, j)
        torch.testing.assert_close(jacobian, product[0, 1 : 1 + SIZES[0]], **EXACT)
        assert jacobian.abs().min() > 0


def test_a_planted_region_is_ranked_first_by_rollout():
    """Brightness-driven attention (q constant, k reading the patch's mean brightness, outputs
    zero): the 2 x 2 tokens of a bright square must be the top 4 of every frame."""
    torch.manual_seed(4)
    model = tiny().eval()
    identity = torch.nn.Identity()
    with torch.no_grad():
        model.patch_embed.norm = identity
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.weight[0] = 1.0 / (3 * 2 * 4 * 4)
        model.patch_embed.proj.bias.zero_()
        for layer in model.features:
            if hasattr(layer, "reduction"):
                layer.norm = identity
                layer.reduction.weight.zero_()
                layer.reduction.weight[0, [0, 16, 32, 48]] = 1.0  # brightness: sum of children
                continue
            for block in layer:
                dim, heads = block.attn.proj.in_features, block.attn.heads
                block.norm1 = identity
                block.attn.relative_position_bias_table.zero_()
                block.attn.qkv.weight[: 2 * dim].zero_()
                block.attn.qkv.bias[: 2 * dim].zero_()
                for head in range(heads):
                    block.attn.qkv.bias[head * (dim // heads)] = 20.0
                    block.attn.qkv.weight[dim + head * (dim // heads), 0] = 1.0
                block.attn.proj.weight.zero_()
                block.attn.proj.bias.zero_()
                block.mlp[3].weight.zero_()
                block.mlp[3].bias.zero_()
    clips = torch.zeros(1, 8, 3, 32, 32)
    clips[..., 8:16, 20:28] = 1.0  # tokens (2..3, 5..6) of the 8 x 8 patch grid
    planted = sorted([2 * 8 + 5, 2 * 8 + 6, 3 * 8 + 5, 3 * 8 + 6])
    for name, params in (("rollout", {}), ("rollout_fem", {"k": 1.0})):
        relevance = explain_input(model, clips, name, **params).relevance[0].flatten(1)
        for frame in relevance:
            assert sorted(frame.topk(4).indices.tolist()) == planted, name


def _torchvision_state(embed, depths, heads, window, classes, generator):
    """A state dict with torchvision swin3d_t's key names and shapes (written from its layout)."""
    m = math.prod(window)
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    shapes = {"patch_embed.proj.weight": (embed, 3, 2, 4, 4), "patch_embed.proj.bias": (embed,),
              "patch_embed.norm.weight": (embed,), "patch_embed.norm.bias": (embed,)}  # fmt: skip
    for s, depth in enumerate(depths):
        dim = embed * 2**s
        for i in range(depth):
            p = f"features.{2 * s}.{i}."
            shapes |= {
                p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                p + "attn.relative_position_bias_table": (table, heads[s]),
                p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                p + "mlp.0.weight": (4 * dim, dim), p + "mlp.0.bias": (4 * dim,),
                p + "mlp.3.weight": (dim, 4 * dim), p + "mlp.3.bias": (dim,),
            }  # fmt: skip
        if s < len(depths) - 1:
            p = f"features.{2 * s + 1}."
            shapes |= {p + "norm.weight": (4 * dim,), p + "norm.bias": (4 * dim,),
                       p + "reduction.weight": (2 * dim, 4 * dim)}  # fmt: skip
    last = embed * 2 ** (len(depths) - 1)
    shapes |= {"norm.weight": (last,), "norm.bias": (last,), "head.weight": (classes, last),
               "head.bias": (classes,)}  # fmt: skip
    state = {k: torch.randn(v, generator=generator) for k, v in shapes.items()}
    for s, depth in enumerate(depths):  # the index buffer: the window's geometry
        for i in range(depth):
            index = VideoSwinClassifier(2, **CFG).features[0][0].attn.relative_position_index
            assert index.shape == (m, m)
            state[f"features.{2 * s}.{i}.attn.relative_position_index"] = index.clone()
    return state


def test_a_torchvision_state_dict_loads_with_weights_only(tmp_path):
    g = torch.Generator().manual_seed(5)
    state = _torchvision_state(16, (2, 2), (2, 4), (2, 4, 4), 400, g)  # a Kinetics-400 head
    path = tmp_path / "swin3d.pt"
    torch.save(state, path)
    cfg = {"name": "video_swin_t", "pretrained": str(path), **CFG}
    model = build_model(cfg, num_classes=3)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        if not key.startswith("head."):
            torch.testing.assert_close(loaded[key], value)
    assert loaded["head.weight"].shape == (3, 32)  # a new head for 3 classes
    del state["features.1.reduction.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['features.1.reduction.weight'\]"):
        build_model(cfg, num_classes=3)
