"""Training methods: IFI's relevance alignment against a hand computation; ET's explanation
cache, restriction and test-time pipeline; the method registry."""

import math

import pytest
import torch

from harness.data import Batch
from harness.methods import METHODS, build_method
from harness.methods.ifi import relevance_alignment
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


def _batch(n=4, size=48):
    torch.manual_seed(1)
    return Batch(torch.rand(n, 4, 3, size, size), torch.arange(n) % 3, torch.arange(10, 10 + n))


def test_every_method_gives_a_finite_loss_with_gradients(model):
    batch = _batch()
    for name in METHODS:
        method = build_method({"name": name}, input_size=16, epochs=2)
        method.start_epoch(model, 1, lambda: [batch])
        model.zero_grad()
        loss, logits = method.loss(model, batch)
        loss.backward()
        assert torch.isfinite(loss) and logits.shape == (4, 3)
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_et_warms_up_then_trains_on_its_cached_restricted_clips(model):
    batch = _batch()
    cfg = {"name": "et", "explainer": "rollout_fem", "k": 1.0, "heads": "all",
           "crop_policy": "largest_region", "warmup_fraction": 0.5, "refresh_every": 2}  # fmt: skip
    et = build_method(cfg, input_size=16, epochs=4)
    assert et.warmup_epochs == 2
    et.start_epoch(model, 0, lambda: [batch])
    assert not et.active and not et.relevance  # vanilla during warm-up
    et.start_epoch(model, 2, lambda: [batch])
    assert et.active and sorted(et.relevance) == [10, 11, 12, 13]
    cached = {k: v.clone() for k, v in et.relevance.items()}
    et.start_epoch(model, 3, lambda: [_batch()])  # not a refresh epoch: the cache is kept
    assert all(torch.equal(cached[k], et.relevance[k]) for k in cached)
    restricted = et.restrict(batch.clips, torch.stack([cached[i] for i in range(10, 14)]))
    assert restricted.shape == (4, 4, 3, 16, 16)
    loss, _ = et.loss(model, batch)
    expected = torch.nn.functional.cross_entropy(model(restricted).logits, batch.labels)
    torch.testing.assert_close(loss, expected)


def test_et_predicts_through_explain_then_restrict(model):
    batch = _batch()
    et = build_method({"name": "et", "explainer": "rollout", "crop_policy": "largest_region"},
                      input_size=16, epochs=1)  # fmt: skip
    et.start_epoch(model, 0, lambda: [batch])
    relevance = et.explain(model, batch.clips)
    expected = model(et.restrict(batch.clips, relevance)).logits
    torch.testing.assert_close(et.predict(model, batch.clips), expected)
    vanilla = build_method({"name": "vanilla"}, input_size=16, epochs=1)
    torch.testing.assert_close(
        vanilla.predict(model, batch.clips), model(vanilla.view(batch.clips)).logits
    )


def test_unknown_method_is_named():
    with pytest.raises(
        ValueError, match="unknown method 'boost'; expected one of: vanilla, ifi, et"
    ):
        build_method({"name": "boost"}, input_size=16, epochs=1)
