"""Explainers and the occlusion fill against implementations someone else wrote.

* Captum (installed as a test dependency): ``LayerGradCam`` on the TimeSformer's own token
  features for Grad-CAM; ``Occlusion`` and ``FeatureAblation`` for what occluding a (frame, patch)
  cell of a clip means.
* jacobgil/vit-explain, ``vit_rollout.py`` (MIT; not installable: a script), transcribed below for
  rollout with its head fusion and discard ratio on a plain ViT (transformers' ``ViTModel``).
* jacobgil/pytorch-grad-cam (MIT; it needs torchvision, which does not install beside this CPU
  torch build), its formulas transcribed below, not vendored: ``grad_cam_plusplus.py``
  (``get_cam_weights``), ``utils/svd_on_activations.py`` (``get_2d_projection``, Eigen-CAM),
  ``fem.py``, and ``base_cam.py`` / ``utils/image.py`` (every CAM clamped at 0, then
  ``scale_cam_image``: minus its min, over 1e-7 + its max).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, LayerGradCam, Occlusion
from torch import nn
from transformers import ViTConfig, ViTModel

from harness.evaluate.occlusion import apply_occlusion, get_occlusion_fill
from harness.explain import eigencam, explain_input, fem, gradcam_pp, rollout
from harness.explain.video import tokens_to_grid
from harness.models.video import TimeSformerClassifier

# ---------------------------------------------------------------- vit-explain's rollout


def _vit_explain_rollout(attentions, discard_ratio, head_fusion):
    """vit_rollout.py's ``rollout`` for one image (its own batch of 1), transcribed line by line,
    up to its last lines (the mask reshaped to a square and divided by its max: a positive scale).

    One line is fixed: its ``a / a.sum(dim=-1)`` divides column j by row j's sum (broadcasting of
    a [1, N] sum over [1, N, N]; jacobgil/vit-explain issue #16); rollout's rows are normalised,
    ``keepdim=True``. Without discarding every row of (A + I) / 2 sums to 1 and the line is exact.
    """
    result = torch.eye(attentions[0].size(-1), dtype=attentions[0].dtype)
    with torch.no_grad():
        for attention in attentions:
            if head_fusion == "mean":
                attention_heads_fused = attention.mean(axis=1)
            elif head_fusion == "max":
                attention_heads_fused = attention.max(axis=1)[0]
            else:
                attention_heads_fused = attention.min(axis=1)[0]
            # Drop the lowest attentions, but don't drop the class token
            flat = attention_heads_fused.view(attention_heads_fused.size(0), -1)
            _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
            indices = indices[indices != 0]
            flat[0, indices] = 0
            eye = torch.eye(attention_heads_fused.size(-1), dtype=flat.dtype)
            a = (attention_heads_fused + 1.0 * eye) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = torch.matmul(a, result)
    return result[0, 0, 1:]


@pytest.fixture(scope="module")
def vit_attentions():
    """Attentions of a small random plain ViT (12 x 12 image, 3 x 3 patches: N = 17), 3 layers."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=12, patch_size=3, num_channels=3, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=64, attn_implementation="eager",
    )  # fmt: skip
    model = ViTModel(config, add_pooling_layer=False).double().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 12, 12, dtype=torch.float64), output_attentions=True)
    assert [a.shape for a in out.attentions] == [(2, 4, 17, 17)] * 3
    return list(out.attentions)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_rollout_equals_vit_explain_on_a_plain_vit(vit_attentions, head_fusion, ratio):
    ours = rollout(vit_attentions, head_fusion, ratio)
    for b in range(2):
        reference = _vit_explain_rollout([a[b : b + 1].clone() for a in vit_attentions], ratio,
                                         head_fusion)  # fmt: skip
        torch.testing.assert_close(ours[b], reference, atol=1e-12, rtol=1e-10)
    if ratio:  # not vacuous: the ratio changes the map
        assert not torch.allclose(ours, rollout(vit_attentions, head_fusion))


# ---------------------------------------------------------------- Captum: Grad-CAM


class _GridView(nn.Module):
    """Identity on TimeSformer's tokens, seen as the CAM feature map [B, C, T, h, w] in between:
    the layer Captum attributes to (`LayerGradCam` averages the gradient over dims >= 2)."""

    def __init__(self, layer: nn.Module, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.layer, self.grid = layer, grid
        self.features = nn.Identity()

    def forward(self, hidden_states, output_attentions=False):
        T, h, w = self.grid
        maps = self.features(tokens_to_grid(hidden_states, self.grid))  # [B, C, T, h, w]
        B, C = maps.shape[:2]
        patches = maps.reshape(B, C, T, h * w).permute(0, 3, 2, 1).reshape(B, h * w * T, C)
        return self.layer(torch.cat([hidden_states[:, :1], patches], 1), output_attentions)


def test_gradcam_equals_captum_layer_gradcam_on_the_token_features():
    torch.manual_seed(0)
    model = TimeSformerClassifier.from_config(
        3, num_frames=4, image_size=16, patch_size=8, hidden_size=16, num_layers=2, num_heads=2
    )
    model = model.double().eval()
    layers = model.model.timesformer.encoder.layer
    view = _GridView(layers[-1], model.grid)
    layers[-1] = view  # the tokens entering the last block, as the adapter reads them
    clips = torch.rand(3, 4, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    ours = explain_input(model, clips, "gradcam", target=target).relevance  # [B, T, h, w]
    captum = LayerGradCam(lambda x: model(x).logits, view.features)
    reference = captum.attribute(clips, target=target, relu_attributions=True)  # [B, 1, T, h, w]
    assert reference.shape == (3, 1, *model.grid) and reference.abs().sum() > 0
    torch.testing.assert_close(ours, reference[:, 0], atol=1e-12, rtol=1e-9)


# ---------------------------------------------------------------- Captum: occlusion semantics


def _scorer():
    """A fixed non-linear score of clips [B, T, 3, 16, 16] (any function does: Captum calls it)."""
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(4 * 3 * 16 * 16, 5, generator=gen, dtype=torch.float64)
    return lambda x: torch.tanh(x.flatten(1) @ weights / 10).exp()


def _cell_drops(f, clips, target, value):
    """f(x) - f(x with cell (t, j) occluded by `apply_occlusion`): [B, T, h*w]."""
    B, T = clips.shape[:2]
    base = f(clips)[range(B), target]
    drops = torch.zeros(B, T, 4, dtype=clips.dtype)
    for t in range(T):
        for j in range(4):
            mask = torch.zeros(B, T, 4, dtype=torch.bool)
            mask[:, t, j] = True
            drops[:, t, j] = base - f(apply_occlusion(clips, mask, (2, 2), value))[range(B), target]
    return drops


def _pixel_cells(x):
    """[B, T, 3, 16, 16] per-pixel values, constant over each 8 x 8 cell -> [B, T, 4] per cell."""
    cells = x[:, :, :, ::8, ::8]  # one pixel per cell, row-major (h, w)
    assert torch.equal(x, cells.repeat_interleave(8, -1).repeat_interleave(8, -2))
    return cells[:, :, 0].flatten(2)  # every channel carries the same attribution


def test_zero_occlusion_of_a_cell_equals_captum_occlusion():
    f, target = _scorer(), torch.tensor([1, 4])
    clips = torch.rand(2, 4, 3, 16, 16, dtype=torch.float64)
    attributions = Occlusion(f).attribute(
        clips, sliding_window_shapes=(1, 3, 8, 8), strides=(1, 3, 8, 8), baselines=0.0,
        target=target,
    )  # fmt: skip
    ours = _cell_drops(f, clips, target, "zero")
    assert ours.abs().min() > 0
    # Captum accumulates occlusion attributions in float32
    torch.testing.assert_close(_pixel_cells(attributions).double(), ours, atol=1e-6, rtol=1e-5)


def test_mean_fill_of_a_cell_equals_captum_feature_ablation():
    f, target = _scorer(), torch.tensor([0, 3])
    clips = torch.rand(2, 4, 3, 16, 16, dtype=torch.float64)
    # one feature group per (frame, cell): its pixels are ablated to the fill together
    cell = torch.arange(4).view(2, 2).repeat_interleave(8, 0).repeat_interleave(8, 1)
    groups = (torch.arange(4).view(4, 1, 1) * 4 + cell).view(1, 4, 1, 16, 16)
    fill = get_occlusion_fill("mean")(clips, (8, 8)).expand_as(clips)
    attributions = FeatureAblation(f).attribute(
        clips, baselines=fill, target=target, feature_mask=groups.expand_as(clips)
    )
    torch.testing.assert_close(_pixel_cells(attributions), _cell_drops(f, clips, target, "mean"))


# ---------------------------------------------------------------- pytorch-grad-cam's formulas


def _scale_cam_image(cam):
    """pytorch-grad-cam utils/image.py scale_cam_image, without resizing."""
    result = []
    for img in cam:
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        result.append(img)
    return np.float64(result)


def _pgc_gradcam_pp(activations, grads):
    """grad_cam_plusplus.py get_cam_weights, then base_cam.py get_cam_image / its clamp."""
    grads_power_2 = grads**2
    grads_power_3 = grads_power_2 * grads
    sum_activations = np.sum(activations, axis=(2, 3))
    eps = 0.000001
    aij = grads_power_2 / (2 * grads_power_2 + sum_activations[:, :, None, None] * grads_power_3
                           + eps)  # fmt: skip
    aij = np.where(grads != 0, aij, 0)
    weights = np.maximum(grads, 0) * aij
    weights = np.sum(weights, axis=(2, 3))
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    return _scale_cam_image(np.maximum(cam, 0))


def _pgc_eigencam(activation_batch, flip):
    """utils/svd_on_activations.py get_2d_projection (the SVD's sign optionally flipped), then
    base_cam.py's clamp and scale_cam_image."""
    projections = []
    for activations, sign in zip(activation_batch, flip):
        reshaped = activations.reshape(activations.shape[0], -1).transpose()
        reshaped = reshaped - reshaped.mean(axis=0)
        U, S, VT = np.linalg.svd(reshaped, full_matrices=True)
        projection = reshaped @ (sign * VT[0, :])
        projections.append(projection.reshape(activations.shape[1:]))
    return _scale_cam_image(np.maximum(np.float64(projections), 0))


def _pgc_fem(activations, k):
    """fem.py get_cam_image (2-D), then base_cam.py's clamp and scale_cam_image."""
    axis = (2, 3)
    means = np.mean(activations, axis=axis)
    stds = np.std(activations, axis=axis)
    th = means + k * stds
    weights_shape = list(means.shape) + [1] * len(axis)
    th = th.reshape(weights_shape)
    binary_mask = activations > th
    weights = binary_mask.mean(axis=axis)
    cam = (weights.reshape(weights_shape) * activations).sum(axis=1)
    return _scale_cam_image(np.maximum(cam, 0))


def _min_max(x):
    flat = x.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (1e-7 + hi - lo)).view_as(x)


def _image_features(seed, b=3, c=6, grid=(5, 7)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, *grid, generator=gen, dtype=torch.float64)


def test_gradcam_pp_equals_pytorch_grad_cam():
    x, g = _image_features(0), _image_features(1)
    ours = _min_max(gradcam_pp(x, g))
    torch.testing.assert_close(ours, torch.from_numpy(_pgc_gradcam_pp(x.numpy(), g.numpy())))


def test_eigencam_equals_pytorch_grad_cam_up_to_the_svd_sign():
    x = _image_features(2) + 0.3  # a non-zero mean, so the orientation is decided
    ours = _min_max(eigencam(x))
    as_is = torch.from_numpy(_pgc_eigencam(x.numpy(), [1, 1, 1]))
    flipped = torch.from_numpy(_pgc_eigencam(x.numpy(), [-1, -1, -1]))
    # Per sample ours is one of the two, the one whose uncentred projection has a positive sum.
    for b in range(len(x)):
        flat = x[b].flatten(1).T.numpy()
        v = np.linalg.svd(flat - flat.mean(0))[2][0]
        expected = as_is[b] if flat.mean(0) @ v > 0 else flipped[b]
        torch.testing.assert_close(ours[b], expected)
        assert not torch.allclose(as_is[b], flipped[b])  # the sign matters after the clamp


def test_fem_equals_pytorch_grad_cam_where_the_readings_coincide_and_not_elsewhere():
    k = 2.0
    # Channels v_c 1[support_c], v_c > 0, supports under 1 / (1 + k^2) = 20% of the 35 positions.
    gen = torch.Generator().manual_seed(4)
    x = torch.zeros(3, 6, 5, 7, dtype=torch.float64)
    for b in range(3):
        for c in range(6):
            cells = torch.randperm(35, generator=gen)[: 1 + c % 6]
            x[b, c].view(-1)[cells] = 0.5 + torch.rand((), generator=gen, dtype=torch.float64)
    reference = torch.from_numpy(_pgc_fem(x.numpy(), k))
    torch.testing.assert_close(_min_max(fem(x, k)), reference, atol=1e-6, rtol=1e-6)
    # General (signed, graded) activations: the two readings give different maps.
    y = _image_features(5)
    assert not np.allclose(_min_max(fem(y, k)).numpy(), _pgc_fem(y.numpy(), k), atol=1e-3)
