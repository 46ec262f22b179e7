"""IFI's three readings (harness/methods/ifi.py): the per-head alignment by hand, the gate's
re-weighting by hand, the gate applied inside both models' attention, and the gated training pass
rebuilt from the models' own capture API."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_methods import _signal_model  # the same small Linformer

from harness.config import ConfigError, validate_trial_config
from harness.data import Batch
from harness.methods import build_method
from harness.methods.ifi import (
    attention_gates,
    gate_relevance,
    gated_attention,
    relevance_alignment,
)
from harness.methods.modality import modalities_of
from harness.models.pool_t import PoolTClassifier
from harness.models.swin import VideoSwinClassifier
from harness.models.video import TimeSformerClassifier


def _video_model(architecture="timesformer"):
    """A tiny model of 4-frame 16 x 16 clips (TimeSformer, Pool-T or Video Swin-T)."""
    torch.manual_seed(0)
    if architecture == "pool_t":
        return PoolTClassifier(3, num_frames=4, image_size=16, patch_size=8, hidden_size=16,
                               spatial_layers=1, temporal_layers=1, num_heads=2, pool_hidden=8)
    if architecture == "video_swin_t":
        return VideoSwinClassifier(3, num_frames=4, image_size=16, patch_size=(2, 4, 4),
                                   embed_dim=16, depths=(2,), num_heads=(2,),
                                   window_size=(2, 2, 2), drop_path=0.0)  # fmt: skip
    return TimeSformerClassifier.from_config(
        3, num_frames=4, image_size=16, patch_size=8, hidden_size=16, num_layers=2, num_heads=2
    )


def _model(kind):
    return _signal_model() if kind == "signal" else _video_model(kind)


def _maps(kind, attention):
    """The attention maps a model's capture holds (Pool-T's last one is its pooling's weights)."""
    if kind == "signal":
        return attention.probabilities
    return attention.captured[:-1] if kind == "pool_t" else attention.captured


def _batch(kind, n=4):
    torch.manual_seed(1)
    if kind == "signal":
        return Batch({"signal": torch.randn(n, 64, 2)}, torch.arange(n) % 3, torch.arange(n))
    return Batch({"video": torch.rand(n, 4, 3, 16, 16)}, torch.arange(n) % 3, torch.arange(n))


def _method(cfg, model):
    return build_method(cfg, modalities=modalities_of(model), epochs=2)


# ---------------------------------------------------------------- by hand


def test_align_heads_is_the_term_per_head():
    # one map, two heads, one query row over two keys
    attention = torch.tensor([[[[0.5, 0.5]], [[0.8, 0.2]]]])
    gradient = torch.tensor([[[[1.0, 3.0]], [[1.0, 0.0]]]])
    # head 0: (A*G)^+ = [.5, 1.5] -> Q_0 = [.25, .75]; head 1: [.8, 0] -> Q_1 = [1, 0]
    kl0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl1 = 1.0 * math.log(1.0 / 0.8)
    per_head = relevance_alignment(attention, gradient, False, per_head=True)
    assert per_head.item() == pytest.approx((kl0 + kl1) / 2)
    # the head-mean reading: Q = [1.3, 1.5] / 2.8 against E_h A = [.65, .35]
    q = torch.tensor([1.3, 1.5]) / 2.8
    mean = (q * (q / torch.tensor([0.65, 0.35])).log()).sum()
    assert relevance_alignment(attention, gradient, False).item() == pytest.approx(mean.item())


def test_heads_offsetting_each_other_satisfy_align_but_not_align_heads():
    # Two heads mirror each other: their mean is uniform, as is the mean relevance; each head's
    # own relevance is uniform too, so only the per-head term sees the heads are off target.
    attention = torch.tensor([[[[0.9, 0.1]], [[0.1, 0.9]]]])
    gradient = torch.tensor([[[[1 / 0.9, 1 / 0.1]], [[1 / 0.1, 1 / 0.9]]]])
    assert relevance_alignment(attention, gradient, False).item() == pytest.approx(0, abs=1e-6)
    assert relevance_alignment(attention, gradient, False, per_head=True).item() > 0.5


def test_gate_relevance_and_reweighting_by_hand():
    attention = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]]], [[[0.4, 0.6], [0.5, 0.5]]]])
    attention = attention.transpose(0, 1)  # [B=1, H=2, n=2, m=2]
    gradient = torch.tensor([[[[0.0, 2.0], [-1.0, -1.0]], [[1.0, 1.0], [-1.0, -1.0]]]])
    r = gate_relevance(attention, gradient)
    # row 0: heads' (A*G)^+ = [0, 1] and [.4, .6]: mean [.2, .8], / max -> [.25, 1]
    # row 1: no positive relevance -> 0 (the gate leaves the row as it is)
    torch.testing.assert_close(r, torch.tensor([[[[0.25, 1.0], [0.0, 0.0]]]]))
    gated = gated_attention(attention, r, 2.0)
    # head 0, row 0: [.5 * 1.5, .5 * 3] / 2.25 = [1/3, 2/3]; rows 1 are unchanged
    torch.testing.assert_close(gated[0, 0, 0], torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(gated[0, :, 1], attention[0, :, 1])
    torch.testing.assert_close(gated.sum(-1), torch.ones(1, 2, 2))


# ---------------------------------------------------------------- the gate inside the models


KINDS = ["video", "pool_t", "video_swin_t", "signal"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_gate_replaces_every_attention_map_the_model_uses(kind):
    model = _model(kind)
    x = _batch(kind).inputs["signal" if kind == "signal" else "video"]
    plain = model(x, capture=True)
    maps = _maps(kind, plain.attention)
    seen = []

    def uniform(i, a):
        seen.append((i, a.shape))
        return torch.full_like(a, 1 / a.shape[-1])

    with attention_gates({model: uniform}):
        gated = model(x, capture=True)
    assert model.attention_gate is None
    assert seen == [(i, a.shape) for i, a in enumerate(maps)]  # every map, in capture order
    for a in _maps(kind, gated.attention):  # the captured maps are the ones that mixed the values
        torch.testing.assert_close(a, torch.full_like(a, 1 / a.shape[-1]))
    assert not torch.allclose(gated.logits, plain.logits)
    torch.testing.assert_close(model(x).logits, plain.logits)  # and no gate afterwards


def test_gate_is_removed_when_the_pass_fails():
    model = _signal_model()

    def broken(i, a):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), attention_gates({model: broken}):
        model(_batch("signal").inputs["signal"])
    assert model.attention_gate is None


# ---------------------------------------------------------------- the gated training pass


@pytest.mark.parametrize("kind", KINDS)
def test_gated_loss_rebuilt_from_the_capture_api(kind):
    model = _model(kind).eval()
    batch = _batch(kind)
    method = _method({"name": "ifi", "variant": "gate", "gate_strength": 3.0}, model)
    loss, logits = method.loss(model, batch)
    # Reference: R from the model's own capture API and gradients, then a gated forward.
    view = method.view(batch.inputs)["signal" if kind == "signal" else "video"]
    out = model(view, capture=True)
    score = out.logits.gather(1, batch.labels[:, None]).sum()
    maps, grads = _maps(kind, out.attention), _maps(kind, out.attention.gradients(score))
    relevance = [gate_relevance(a, g) for a, g in zip(maps, grads)]
    assert all(r.amax() == 1 for r in relevance)  # the relevance is not vacuous
    with attention_gates({model: lambda i, a: gated_attention(a, relevance[i], 3.0)}):
        expected = model(view).logits
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(loss, F.cross_entropy(expected, batch.labels))
    assert not torch.allclose(logits, model(view).logits)  # the gate changed the prediction
    # Gradients reach every parameter through the re-weighted attention; prediction is plain.
    model.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(method.predict(model, batch.inputs), model(view).logits)


def test_gate_strength_zero_is_vanilla():
    model = _video_model().eval()
    batch = _batch("video")
    gated = _method({"name": "ifi", "variant": "gate", "gate_strength": 0.0}, model)
    vanilla = _method({"name": "vanilla"}, model)
    torch.testing.assert_close(gated.loss(model, batch)[0], vanilla.loss(model, batch)[0])


def test_align_heads_loss_uses_the_per_head_term():
    model = _signal_model().eval()
    batch = _batch("signal")
    loss, _ = _method({"name": "ifi", "variant": "align_heads", "weight": 2.0}, model).loss(
        model, batch
    )
    out = model(batch.inputs["signal"], capture=True)
    score = out.logits.gather(1, batch.labels[:, None]).sum()
    grads = out.attention.gradients(score, retain_graph=True).probabilities
    term = torch.stack(
        [relevance_alignment(p, g, False, True) for p, g in zip(out.attention.probabilities, grads)]
    ).mean()
    torch.testing.assert_close(loss, F.cross_entropy(out.logits, batch.labels) + 2.0 * term)


def test_unknown_variant_is_named():
    model = _signal_model()
    with pytest.raises(ValueError, match="method.variant: unknown IFI variant 'boost'; expected"):
        _method({"name": "ifi", "variant": "boost"}, model)


def test_config_validation_names_the_new_keys():
    from harness.config import compose, trial_config

    cfg = compose("birds_video", [])
    for method, key, value, expected in [
        ("ifi", "variant", "boost", "one of align, align_heads, gate"),
        ("ifi", "gate_strength", -1.0, "a number >= 0"),
        ("et", "head_weight", "sum", "one of mean, max"),
        ("et", "normalise", "yes", "true or false"),
        ("et", "discard_ratio", 1.0, r"a fraction in \[0, 1\)"),
    ]:
        trial = trial_config(cfg, method)
        trial["method"][key] = value
        with pytest.raises(ConfigError, match=f"method.{key}: expected {expected}"):
            validate_trial_config(trial)


@pytest.mark.parametrize("variant", ["align_heads", "gate"])
def test_hybrid_guides_both_branches(variant):
    from harness.models.hybrid import HybridClassifier

    model = HybridClassifier(_video_model(), _signal_model())
    torch.manual_seed(1)
    batch = Batch(
        {"video": torch.rand(4, 4, 3, 16, 16), "signal": torch.randn(4, 64, 2)},
        torch.arange(4) % 3,
        torch.arange(4),
    )
    method = _method({"name": "ifi", "variant": variant, "gate_strength": 2.0}, model)
    loss, logits = method.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (4, 3)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.video.attention_gate is None and model.signal.attention_gate is None
    if variant == "gate":  # the fused prediction of the gated pass is not the plain one
        assert not torch.allclose(logits, method.predict(model, batch.inputs))
