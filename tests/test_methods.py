"""Training methods: IFI's relevance alignment against a hand computation; ET's explanation
cache, restriction and test-time pipeline; the method registry."""

import math

import pytest
import torch

from harness.data import Batch
from harness.methods import METHODS, build_method
from harness.methods.ifi import relevance_alignment
from harness.methods.modality import modalities_of
from harness.models.hybrid import HybridClassifier
from harness.models.signal import SignalTransformer
from harness.models.video import TimeSformerClassifier


def test_relevance_alignment_matches_hand_computation():
    # one map, one head, two query rows over two keys
    attention = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])
    gradient = torch.tensor([[[[1.0, 3.0], [-1.0, 2.0]]]])
    # relevance (A*G)^+ = [[0.5, 1.5], [0, 0.2]] -> targets [[.25, .75], [0, 1]]
    kl_row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl_row1 = 1.0 * math.log(1.0 / 0.1)
    expected = (kl_row0 + kl_row1) / 2
    assert relevance_alignment(attention, gradient, False).item() == pytest.approx(expected)
    assert relevance_alignment(attention, gradient, True).item() == pytest.approx(kl_row0)


def test_relevance_alignment_skips_rows_without_relevance_and_is_zero_when_aligned():
    attention = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    gradient = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]])  # row 1: no positive relevance
    assert relevance_alignment(attention, gradient, False).item() == pytest.approx(0.0, abs=1e-6)
    negative = relevance_alignment(attention, -torch.ones_like(gradient), False)
    assert negative.item() == 0.0


def test_alignment_gradient_flows_into_the_attention_only():
    attention = torch.softmax(torch.randn(2, 3, 4, 4), -1).requires_grad_()
    gradient = torch.randn(2, 3, 4, 4)
    relevance_alignment(attention, gradient, False).backward()
    assert attention.grad is not None and attention.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TimeSformerClassifier.from_config(
        3, num_frames=4, image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2
    )


def _signal_model():
    torch.manual_seed(0)
    return SignalTransformer(
        3, signal_length=64, channels=2, patch_length=8, hidden_size=16, num_layers=2,
        num_heads=2, proj_dim=4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hybrid(model):
    return HybridClassifier(model, _signal_model())


def _batch(n=4, size=48, inputs=("video",)):
    torch.manual_seed(1)
    data = {"video": torch.rand(n, 4, 3, size, size), "signal": torch.randn(n, 64, 2)}
    return Batch({m: data[m] for m in inputs}, torch.arange(n) % 3, torch.arange(10, 10 + n))


def _method(cfg, model, epochs=2):
    return build_method(cfg, modalities=modalities_of(model), epochs=epochs)


@pytest.mark.parametrize("kind", ["video", "signal", "hybrid"])
def test_every_method_gives_a_finite_loss_with_gradients(model, hybrid, kind):
    net = {"video": model, "signal": _signal_model(), "hybrid": hybrid}[kind]
    batch = _batch(inputs=net.modalities)
    for name in METHODS:
        method = _method({"name": name}, net)
        method.start_epoch(net, 1, lambda: [batch])
        net.zero_grad()
        loss, logits = method.loss(net, batch)
        loss.backward()
        assert torch.isfinite(loss) and logits.shape == (4, 3)
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad), name


def test_hybrid_loss_is_fused_plus_weighted_branch_losses(hybrid):
    batch = _batch(inputs=("video", "signal"))
    method = build_method(
        {"name": "vanilla"}, modalities=modalities_of(hybrid), epochs=1, branch_weight=0.5
    )
    loss, logits = method.loss(hybrid, batch)
    views = method.view(batch.inputs)
    z_v = hybrid.video(views["video"]).logits
    z_s = hybrid.signal(views["signal"]).logits
    w = hybrid.fusion.softmax(0)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(logits, w[0] * z_v + w[1] * z_s)
    expected = ce(logits, batch.labels) + 0.5 * (ce(z_v, batch.labels) + ce(z_s, batch.labels))
    torch.testing.assert_close(loss, expected)


def test_ifi_on_a_signal_model_supervises_linformer_p():
    net = _signal_model()
    method = _method({"name": "ifi", "weight": 2.0}, net)
    batch = _batch(inputs=("signal",))
    loss, logits = method.loss(net, batch)
    out = net(batch.inputs["signal"], capture=True)
    score = out.logits.gather(1, batch.labels[:, None]).sum()
    grads = out.attention.gradients(score, retain_graph=True)
    alignment = torch.stack(
        [relevance_alignment(p, g, False) for p, g in zip(out.attention.probabilities,
                                                          grads.probabilities)]
    ).mean()  # fmt: skip
    expected = torch.nn.functional.cross_entropy(out.logits, batch.labels) + 2.0 * alignment
    torch.testing.assert_close(loss, expected)


def test_et_warms_up_then_trains_on_its_cached_restricted_clips(model):
    batch = _batch()
    cfg = {"name": "et", "explainer": "rollout_fem", "k": 1.0, "heads": "all",
           "crop_policy": "largest_region", "warmup_fraction": 0.5, "refresh_every": 2}  # fmt: skip
    et = _method(cfg, model, epochs=4)
    assert et.warmup_epochs == 2
    et.start_epoch(model, 0, lambda: [batch])
    assert not et.active and not et.relevance  # vanilla during warm-up
    et.start_epoch(model, 2, lambda: [batch])
    assert et.active and sorted(et.relevance) == [10, 11, 12, 13]
    cached = {k: v["video"].clone() for k, v in et.relevance.items()}
    et.start_epoch(model, 3, lambda: [_batch()])  # not a refresh epoch: the cache is kept
    assert all(torch.equal(cached[k], et.relevance[k]["video"]) for k in cached)
    relevance = {"video": torch.stack([cached[i] for i in range(10, 14)])}
    restricted = et.restrict(batch.inputs, relevance)["video"]
    assert restricted.shape == (4, 4, 3, 16, 16)
    loss, _ = et.loss(model, batch)
    expected = torch.nn.functional.cross_entropy(model(restricted).logits, batch.labels)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("kind", ["video", "hybrid"])
def test_et_predicts_through_explain_then_restrict(model, hybrid, kind):
    net = model if kind == "video" else hybrid
    batch = _batch(inputs=net.modalities)
    cfg = {"name": "et", "explainer": "rollout", "crop_policy": "largest_region",
           "signal_policy": "largest_region"}  # fmt: skip
    et = _method(cfg, net, epochs=1)
    et.start_epoch(net, 0, lambda: [batch])
    relevance = et.explain(net, batch.inputs)
    assert relevance["video"].shape == (4, 4, 2, 2)
    restricted = et.restrict(batch.inputs, relevance)
    expected = net.fuse({m: net.branch(m)(x).logits for m, x in restricted.items()})
    torch.testing.assert_close(et.predict(net, batch.inputs), expected)
    vanilla = _method({"name": "vanilla"}, net, epochs=1)
    views = vanilla.view(batch.inputs)
    torch.testing.assert_close(
        vanilla.predict(net, batch.inputs),
        net.fuse({m: net.branch(m)(x).logits for m, x in views.items()}),
    )


def test_hybrid_explains_both_branches_for_the_fused_prediction(hybrid):
    batch = _batch(inputs=("video", "signal"))
    method = _method({"name": "vanilla", "explainer": "tibav"}, hybrid)
    target = method.predict(hybrid, batch.inputs).argmax(1)
    relevance = method.explain(hybrid, batch.inputs)
    assert relevance["video"].shape == (4, 4, 2, 2) and relevance["signal"].shape == (4, 8)
    explicit = method.explain(hybrid, batch.inputs, target=target)
    for m in relevance:
        torch.testing.assert_close(relevance[m], explicit[m])


def test_unknown_method_and_policy_are_named(model):
    with pytest.raises(
        ValueError, match="unknown method 'boost'; expected one of: vanilla, ifi, et"
    ):
        _method({"name": "boost"}, model)
    with pytest.raises(ValueError, match="method.signal_policy: unknown policy 'crop'"):
        _method({"name": "et", "signal_policy": "crop"}, _signal_model())
