"""The TimeSformer adapter: captured attentions and their exact composition into N x N steps."""

import pytest
import torch

from harness.explain import ATTENTION_EXPLAINERS, EXPLAINERS, NEEDS_GRADIENTS, explain_input
from harness.explain.video import compose_divided, divided_steps, tokens_to_grid
from harness.models.video import DividedAttention, TimeSformerClassifier

EXACT = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TimeSformerClassifier.from_config(
        3, num_frames=4, image_size=16, patch_size=8, hidden_size=16, num_layers=2, num_heads=2
    ).eval()


def test_captures_both_attentions_with_their_shapes(model):
    clips = torch.rand(2, 4, 3, 16, 16)
    out = model(clips, capture=True)
    T, h, w = model.grid
    assert (T, h, w) == (4, 2, 2)
    assert [a.shape for a in out.attention.temporal] == [(2, 4, 2, 4, 4)] * 2
    assert [a.shape for a in out.attention.spatial] == [(2, 4, 2, 5, 5)] * 2
    for a in out.attention.captured:
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    # Capturing changes nothing in the prediction.
    torch.testing.assert_close(out.logits, model(clips).logits)


def test_the_block_by_block_forward_equals_transformers_own(model):
    """The wrapper runs transformers' layers one by one (so a forward can prune between them):
    its logits and CAM features are those of `TimesformerForVideoClassification` itself on the
    normalised clips (its logits, and its hidden state entering the last block)."""
    clips = torch.rand(2, 4, 3, 16, 16)
    reference = model.model(pixel_values=(clips - model.mean) / model.std,
                            output_hidden_states=True)  # fmt: skip
    out = model(clips, capture=True)
    torch.testing.assert_close(out.logits, reference.logits, **EXACT)
    torch.testing.assert_close(out.features, reference.hidden_states[-2], **EXACT)


def test_wrong_frame_count_is_rejected(model):
    with pytest.raises(ValueError, match=r"clips must be \[B, 4, 3, 16, 16\]"):
        model(torch.rand(1, 3, 3, 16, 16))


def _naive_block_mixing(temporal, spatial):
    """Token mixing of one block built entry by entry (frame-major tokens 1 + t*P + p)."""
    B, P, H, T, _ = temporal.shape
    N = 1 + T * P
    tm = torch.zeros(B, H, N, N, dtype=temporal.dtype)
    sm = torch.zeros(B, H, N, N, dtype=temporal.dtype)
    tm[:, :, 0, 0] = 1
    for t in range(T):
        for p in range(P):
            for s in range(T):
                tm[:, :, 1 + t * P + p, 1 + s * P + p] = temporal[:, p, :, t, s]
            sm[:, :, 1 + t * P + p, 0] = spatial[:, t, :, 1 + p, 0]
            for q in range(P):
                sm[:, :, 1 + t * P + p, 1 + t * P + q] = spatial[:, t, :, 1 + p, 1 + q]
                sm[:, :, 0, 1 + t * P + q] = spatial[:, t, :, 0, 1 + q] / T
    sm[:, :, 0, 0] = spatial[:, :, :, 0, 0].mean(1)
    return tm, sm


def test_composition_matches_entrywise_construction(model):
    out = model(torch.rand(2, 4, 3, 16, 16), capture=True)
    steps = compose_divided(out.attention)
    assert len(steps) == 4
    for layer in range(2):
        tm, sm = _naive_block_mixing(out.attention.temporal[layer], out.attention.spatial[layer])
        torch.testing.assert_close(steps[2 * layer], tm)
        torch.testing.assert_close(steps[2 * layer + 1], sm)
        torch.testing.assert_close(steps[2 * layer + 1].sum(-1), torch.ones(2, 2, 17))


def test_composed_gradient_is_the_chain_rule(model):
    """d score / d D computed through a differentiable composition equals the mapped gradient."""
    out = model(torch.rand(2, 4, 3, 16, 16), capture=True)
    score = out.logits[:, 1].sum()
    mapped = compose_divided(out.attention.gradients(score, retain_graph=True), gradient=True)
    # A * dA is invariant: sum over the composed entries equals the sum over the blocks.
    steps = compose_divided(out.attention)
    grads = out.attention.gradients(score)
    for layer in range(2):
        block = (out.attention.spatial[layer] * grads.spatial[layer]).sum()
        composed = (steps[2 * layer + 1] * mapped[2 * layer + 1]).sum()
        torch.testing.assert_close(composed, block)


def test_tokens_to_grid_reorders_patch_major_tokens():
    T, h, w, C = 3, 2, 2, 5
    tokens = torch.zeros(1, 1 + T * h * w, C)
    for p in range(h * w):
        for t in range(T):
            tokens[0, 1 + p * T + t] = 10 * t + p  # transformers orders tokens patch-major
    grid = tokens_to_grid(tokens, (T, h, w))
    assert grid.shape == (1, C, T, h, w)
    assert grid[0, 0, 2, 1, 0] == 10 * 2 + 2
    with pytest.raises(ValueError, match="expected 1 \\+ 3\\*2\\*2 tokens"):
        tokens_to_grid(tokens[:, :-1], (T, h, w))


@pytest.mark.parametrize("name", EXPLAINERS)
def test_every_explainer_gives_a_finite_map_per_frame_and_patch(model, name):
    clips = torch.rand(2, 4, 3, 16, 16)
    explanation = explain_input(model, clips, name)
    assert explanation.relevance.shape == (2, 4, 2, 2)
    assert torch.isfinite(explanation.relevance).all()
    assert not explanation.relevance.requires_grad


def test_unknown_explainer_is_named(model):
    with pytest.raises(ValueError, match="unknown explainer 'nope'; expected one of"):
        explain_input(model, torch.rand(1, 4, 3, 16, 16), "nope")


# ------------------------------------------------- the block path equals the dense one


def _divided(seed, *, B=2, H=3, T=4, h=2, w=3, layers=2, offset=0.0):
    """Random float64 divided attentions (and gradients) with the captured layout; `offset` shifts
    the attentions (signed values, to exercise the discarding's ranking with negatives)."""
    gen = torch.Generator().manual_seed(seed)
    P = h * w

    def softmax(*shape):
        return torch.softmax(2 * torch.randn(*shape, generator=gen, dtype=torch.float64), -1)

    captured = []
    for _ in range(layers):
        captured += [softmax(B * P, H, T, T) - offset, softmax(B * T, H, 1 + P, 1 + P) - offset]
    grads = [torch.randn(a.shape, generator=gen, dtype=torch.float64) for a in captured]
    return DividedAttention(captured, (T, h, w)), DividedAttention(grads, (T, h, w))


GRIDS = [(4, 2, 3), (2, 6, 6)]  # (T, h, w): small blocks; P = 36 > 32, the batched-matmul branch


@pytest.mark.parametrize("grid", GRIDS)
def test_divided_steps_hold_the_composed_matrices(grid):
    T, h, w = grid
    att, grad = _divided(0, T=T, h=h, w=w)
    for gradient, attention in ((False, att), (True, grad)):
        dense = compose_divided(attention, gradient=gradient)
        steps = divided_steps(attention, gradient=gradient)
        assert len(steps) == len(dense) == 4
        for m, d in zip(steps, dense):
            assert m.n == d.shape[-1] == 1 + T * h * w
            torch.testing.assert_close(m.first_row(), d[..., 0, :])
            r = torch.randn(d.shape[:-1], dtype=torch.float64)
            plain = r + (r.unsqueeze(-2) @ d).squeeze(-2)  # r (I + X)
            torch.testing.assert_close(m.propagate(r, normalise=False), plain)
            normalised = r / (1 + d.sum(-1))
            normalised = normalised + (normalised.unsqueeze(-2) @ d).squeeze(-2)
            torch.testing.assert_close(m.propagate(r, normalise=True), normalised)
            # Every entry off the structure is 0: the parts carry the whole sum (the spatial
            # step's third part, the per-frame corners for `discard`, is no entry of X).
            total = sum(p.sum(tuple(range(2, p.dim()))) for p in m.parts[:2])
            torch.testing.assert_close(total, d.sum((-2, -1)))


CASES = [
    ("rollout", {}),
    ("rollout", {"head_fusion": "min"}),
    ("rollout", {"head_fusion": "max"}),
    ("rollout_fem", {}),
    ("rollout_fem", {"k": 0.5, "heads": "top2"}),
    ("rollout_fem", {"k": 1.0, "heads": "nonempty"}),
    ("rollout_fem", {"heads": [0, 2]}),
    ("rollout_fem", {"k": 0.75, "heads": "top2", "head_weight": "max"}),
    ("rollout_grad", {}),
    ("tibav", {}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
@pytest.mark.parametrize("offset", [0.0, 0.1])
@pytest.mark.parametrize("grid", GRIDS)
def test_block_path_equals_the_dense_reference(name, params, offset, grid):
    T, h, w = grid
    att, grad = _divided(1, offset=offset, T=T, h=h, w=w)
    fn = ATTENTION_EXPLAINERS[name]
    args = [compose_divided(att)], [divided_steps(att)]
    if name in NEEDS_GRADIENTS:
        args = (
            [*args[0], compose_divided(grad, gradient=True)],
            [*args[1], divided_steps(grad, gradient=True)],
        )
    dense, fast = fn(*args[0], **params), fn(*args[1], **params)
    assert dense.shape == (2, T * h * w) and dense.abs().sum() > 0
    torch.testing.assert_close(fast, dense, **EXACT)


def _discard_raw_maps(att, ratio):
    """Each raw map (a patch's T x T temporal one, a frame's (1+P) x (1+P) spatial one, heads
    fused by their mean) with vit-explain's discard rule applied on its own, one loop per map."""
    T, h, w = att.grid
    out = []
    for i, a in enumerate(att.captured):  # [B*P, H, T, T] or [B*T, H, 1+P, 1+P]
        fused = a.mean(1, keepdim=True).clone()
        for m in range(len(fused)):
            flat = fused[m, 0].flatten()
            indices = flat.topk(int(flat.numel() * ratio), largest=False).indices
            if i % 2:  # spatial: the class token's self-attention is spared
                indices = indices[indices != 0]
            flat[indices] = 0
            fused[m, 0] = flat.view_as(fused[m, 0])
        out.append(fused)
    return DividedAttention(out, att.grid)


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("grid", GRIDS)
def test_discard_applies_to_each_raw_map_before_composing(ratio, grid):
    """rollout's discard on the divided steps = vit-explain's rule on each raw attention map, then
    composed and rolled out without discarding (head fusion mean, so fusing first is exact)."""
    T, h, w = grid
    att, _ = _divided(4, T=T, h=h, w=w)
    rollout = ATTENTION_EXPLAINERS["rollout"]
    reference = rollout(compose_divided(_discard_raw_maps(att, ratio)))
    torch.testing.assert_close(rollout(divided_steps(att), discard_ratio=ratio), reference, **EXACT)
    # Not vacuous: every ratio here changes the map, and the dense (composed) reading differs.
    assert not torch.allclose(reference, rollout(divided_steps(att)), **EXACT)
    dense = rollout(compose_divided(att), discard_ratio=ratio)
    assert not torch.allclose(reference, dense, **EXACT)


@pytest.mark.parametrize("name", list(ATTENTION_EXPLAINERS))
def test_explain_video_equals_the_dense_reference(name):
    torch.manual_seed(1)
    model = TimeSformerClassifier.from_config(
        3, num_frames=4, image_size=16, patch_size=8, hidden_size=16, num_layers=2, num_heads=2
    )
    model = model.double().eval()
    clips = torch.rand(3, 4, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    explanation = explain_input(model, clips, name, target=target)
    out = model(clips, capture=True)
    fn = ATTENTION_EXPLAINERS[name]
    steps = [s.detach() for s in compose_divided(out.attention)]
    if name in NEEDS_GRADIENTS:
        score = out.logits.gather(1, target[:, None]).sum()
        reference = fn(steps, compose_divided(out.attention.gradients(score), gradient=True))
    else:
        reference = fn(steps)
    torch.testing.assert_close(explanation.relevance, reference.reshape(3, 4, 2, 2), **EXACT)


def test_cam_features_receive_gradient_on_patch_tokens(model):
    """The CAM feature map is the last block's input: its patch tokens still reach the class."""
    out = model(torch.rand(2, 4, 3, 16, 16), capture=True)
    (grad,) = torch.autograd.grad(out.logits[:, 0].sum(), out.features)
    assert grad[:, 1:].abs().sum() > 0
    assert explain_input(model, torch.rand(2, 4, 3, 16, 16), "gradcam").relevance.abs().sum() > 0


@pytest.mark.parametrize("grid", GRIDS)
def test_block_path_is_differentiable_like_the_dense_one(grid):
    T, h, w = grid
    att, grad = _divided(2, T=T, h=h, w=w)
    leaves = [a.clone().requires_grad_() for a in att.captured]
    attention = DividedAttention(leaves, att.grid)
    grads = []
    for compose in (compose_divided, divided_steps):
        relevance = ATTENTION_EXPLAINERS["rollout"](compose(attention), head_fusion="max")
        tibav = ATTENTION_EXPLAINERS["tibav"](compose(attention), compose(grad, gradient=True))
        grads.append(torch.autograd.grad((relevance + tibav).square().sum(), leaves))
    for dense, fast in zip(*grads):
        torch.testing.assert_close(fast, dense, **EXACT)


def test_block_steps_are_validated_like_dense_ones():
    att, grad = _divided(3)
    rollout, tibav = ATTENTION_EXPLAINERS["rollout"], ATTENTION_EXPLAINERS["tibav"]
    bad = [a.clone() for a in att.captured]
    bad[1][0, 0, 2, 3] = float("nan")  # a patch's row of the first spatial step
    with pytest.raises(ValueError, match=r"attentions\[1\] contains NaN or inf"):
        rollout(divided_steps(DividedAttention(bad, att.grid)))
    steps, dsteps = divided_steps(att), divided_steps(grad, gradient=True)
    with pytest.raises(ValueError, match=r"gradients\[0\] has shape SpatialMixing"):
        tibav(steps, dsteps[1:] + dsteps[:1])
    # Finite values whose float32 sum overflows are not mistaken for inf.
    huge = [(a * 1e37).float() for a in grad.captured]
    steps32 = divided_steps(DividedAttention([a.float() for a in att.captured], att.grid))
    tibav(steps32, divided_steps(DividedAttention(huge, att.grid), gradient=True))


def test_gradient_steps_carry_no_gradient_on_the_class_pass_through(model):
    out = model(torch.rand(2, 4, 3, 16, 16), capture=True)
    grads = out.attention.gradients(out.logits[:, 0].sum())
    temporal, spatial = compose_divided(grads, gradient=True)[:2]
    assert (temporal[:, :, 0, 0] == 0).all() and (
        compose_divided(out.attention)[0][:, :, 0, 0] == 1
    ).all()


def _fixed_attention(module):
    """TimesformerSelfAttention.forward with its probabilities detached (fixed)."""

    def forward(hidden_states, output_attentions=False):
        B, N, C = hidden_states.shape
        qkv = module.qkv(hidden_states).reshape(B, N, 3, module.num_heads, C // module.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        probs = ((q @ k.transpose(-2, -1)) * module.scale).softmax(-1).detach()
        context = (probs @ v).transpose(1, 2).reshape(B, N, C)
        return (context, probs) if output_attentions else (context,)

    return forward


def test_composed_steps_equal_the_token_jacobian_of_the_linearised_model():
    """Value and output projections the identity, norms and MLPs removed, attention fixed: the
    class token's Jacobian with respect to the embedded tokens is the product of the composed
    steps (I + X), the temporal step's class corner 0 (the class token skips that attention; the
    corner 1 of `compose_temporal` is rollout's, whose renormalisation brings it back to 1)."""
    torch.manual_seed(5)
    model = TimeSformerClassifier.from_config(
        3, num_frames=4, image_size=16, patch_size=8, hidden_size=16, num_layers=2, num_heads=2
    ).double().eval()
    C, heads, eye = 16, 2, torch.eye(16, dtype=torch.float64)
    inner = model.model.timesformer
    with torch.no_grad():
        for layer in inner.encoder.layer:
            for name in ("layernorm_before", "layernorm_after", "temporal_layernorm"):
                setattr(layer, name, torch.nn.Identity())
            for attention in (layer.attention, layer.temporal_attention):
                attention.attention.qkv.weight[2 * C :] = eye
                attention.attention.qkv.bias[2 * C :] = 0
                attention.output.dense.weight.copy_(eye)
                attention.output.dense.bias.zero_()
                attention.attention.forward = _fixed_attention(attention.attention)
            layer.temporal_dense.weight.copy_(eye)
            layer.temporal_dense.bias.zero_()
            layer.output.dense.weight.zero_()
            layer.output.dense.bias.zero_()
    inner.layernorm = torch.nn.Identity()
    leaf, seen = {}, {}

    def embed_hook(module, args, output):
        leaf["x"] = output.detach().requires_grad_()
        return leaf["x"]

    handles = [
        inner.embeddings.register_forward_hook(embed_hook),
        model.model.classifier.register_forward_hook(lambda m, a, o: seen.update(cls=a[0])),
    ]
    out = model(torch.rand(1, 4, 3, 16, 16, dtype=torch.float64), capture=True)
    for handle in handles:
        handle.remove()
    steps = [s.detach().clone() for s in compose_divided(out.attention)]
    for temporal in steps[0::2]:
        temporal[:, :, 0, 0] = 0
    T, P, n = 4, 4, 17
    for head in range(heads):
        product = torch.eye(n, dtype=torch.float64)
        for x in steps:
            product = (torch.eye(n, dtype=torch.float64) + x[0, head]) @ product
        c = head * (C // heads)
        (grad,) = torch.autograd.grad(seen["cls"][0, c], leaf["x"], retain_graph=True)
        # transformers orders the tokens patch-major (1 + p*T + t), the steps frame-major
        jacobian = torch.cat([grad[0, :1, c], grad[0, 1:, c].view(P, T).T.flatten()])
        torch.testing.assert_close(jacobian, product[0], atol=1e-10, rtol=1e-9)
        assert jacobian[1:].abs().min() > 0


def _naive_divided_matrices(att, b, h):
    """Block by block, the temporal then the spatial N x N matrix of sample b, head h, entry by
    entry from the module's definition (frame-major tokens, 0 the class token)."""
    T, hh, ww = att.grid
    P, n = hh * ww, 1 + T * hh * ww
    out = []
    for temporal, spatial in zip(att.temporal, att.spatial):
        x = torch.zeros(n, n, dtype=torch.float64)
        x[0, 0] = 1.0
        for p in range(P):
            for t in range(T):
                for u in range(T):
                    x[1 + t * P + p, 1 + u * P + p] = temporal[b, p, h, t, u]
        out.append(x)
        x = torch.zeros(n, n, dtype=torch.float64)
        x[0, 0] = spatial[b, :, h, 0, 0].mean()
        for t in range(T):
            for p in range(P):
                x[0, 1 + t * P + p] = spatial[b, t, h, 0, 1 + p] / T
                x[1 + t * P + p, 0] = spatial[b, t, h, 1 + p, 0]
                for q in range(P):
                    x[1 + t * P + p, 1 + t * P + q] = spatial[b, t, h, 1 + p, 1 + q]
        out.append(x)
    return out


@pytest.mark.parametrize(
    "params", [{}, {"k": 0.5, "head_weight": "max"}, {"k": 1.0, "heads": "top2"}]
)
def test_rollout_fem_on_the_block_steps_equals_a_per_head_per_layer_loop(params):
    """Rollout-FEM on `divided_steps` against the plainest reading of it: for each sample and
    head, the full product of that head's normalised N x N matrices layer by layer, then the
    k-sigma rule, the head weights and the max-normalised sum, one head at a time."""
    att, _ = _divided(5)
    k, heads, weight = params.get("k", 2.0), params.get("heads", "all"), params.get("head_weight")
    B, H, n = 2, 3, 1 + 4 * 2 * 3
    expected = torch.zeros(B, n - 1, dtype=torch.float64)
    for b in range(B):
        rows, weights, maps = [], [], []
        for h in range(H):
            r = torch.eye(n, dtype=torch.float64)
            for x in _naive_divided_matrices(att, b, h):
                m = torch.eye(n, dtype=torch.float64) + x
                r = (m / m.sum(-1, keepdim=True)) @ r
            a = r[0, 1:]
            rows.append(a)
            weights.append(float(a.max() if weight == "max" else a.mean()))
            maps.append((a >= a.mean() + k * a.std(correction=0)).double())
        chosen = range(H) if heads == "all" else sorted(range(H), key=lambda h: -weights[h])[:2]
        s = sum(weights[h] * maps[h] for h in chosen)
        expected[b] = s / s.max()
    got = ATTENTION_EXPLAINERS["rollout_fem"](divided_steps(att), **params)
    assert (expected > 0).any() and (expected < 1).any()  # some tokens pass, not all
    torch.testing.assert_close(got, expected, **EXACT)
