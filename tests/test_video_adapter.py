"""The TimeSformer adapter: captured attentions and their exact composition into N x N steps."""

import pytest
import torch

from harness.explain.video import (
    VIDEO_EXPLAINERS,
    compose_divided,
    explain_video,
    tokens_to_grid,
)
from harness.models.video import TimeSformerClassifier


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


@pytest.mark.parametrize("name", VIDEO_EXPLAINERS)
def test_every_explainer_gives_a_finite_map_per_frame_and_patch(model, name):
    clips = torch.rand(2, 4, 3, 16, 16)
    explanation = explain_video(model, clips, name)
    assert explanation.relevance.shape == (2, 4, 2, 2)
    assert torch.isfinite(explanation.relevance).all()
    assert not explanation.relevance.requires_grad


def test_unknown_explainer_is_named(model):
    with pytest.raises(ValueError, match="unknown explainer 'nope'; expected one of"):
        explain_video(model, torch.rand(1, 4, 3, 16, 16), "nope")
