"""ET's `prune` policy: the pruned forward of each architecture that prunes against its full
forward with the pruned tokens' attention masked out; the kept patches are the top-ranked ones
(ties in the seeded order of the occlusion test); a model that cannot prune is refused at config
time; ET's free refresh from the whole-view training forward and its prediction pipeline."""

import pytest
import torch

from harness.config import ConfigError, compose, search_params, validate_study
from harness.data import Batch
from harness.evaluate.occlusion import tie_order
from harness.explain import explain_input
from harness.methods import build_method
from harness.methods.crop import downsample, get_crop_policy, top_patches
from harness.methods.modality import modalities_of
from harness.models import build_model
from harness.models.base import Pruned

FRAMES, SIDE, PATCH = 4, 16, 4  # 16 patches per frame
TINY = {
    "timesformer": {"hidden_size": 16, "num_layers": 2, "num_heads": 2},
    "pool_t": {"hidden_size": 16, "spatial_layers": 2, "temporal_layers": 1, "num_heads": 2,
               "pool_hidden": 8},
}  # fmt: skip


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"name": name, "num_frames": FRAMES, "image_size": SIDE, "patch_size": PATCH}
    return build_model({**cfg, **TINY[name]}, 3).eval()


def masked_gate(name: str, model, keep: torch.Tensor):
    """gate(i, A): every spatial attention with the keys of the pruned patches masked out (the
    softmax over the kept keys only: A * mask / row sum); the temporal attentions unchanged (a
    pruned patch's temporal rows mix pruned tokens only, which nothing kept reads)."""
    B, P = len(keep), (SIDE // PATCH) ** 2
    mask = torch.zeros(B, 1 + P).index_fill_(1, torch.tensor([0]), 1.0)
    mask.scatter_(1, keep + 1, 1.0)
    mask = mask.repeat_interleave(FRAMES, 0)[:, None, None, :]  # [B*T, 1, 1, 1+P]

    def spatial(i: int) -> bool:  # TimeSformer: temporal, spatial per block; Pool-T: spatial first
        return i % 2 == 1 if name == "timesformer" else i < len(model.spatial)

    def gate(i: int, attention: torch.Tensor) -> torch.Tensor:
        if not spatial(i):
            return attention
        masked = attention * mask
        return masked / masked.sum(-1, keepdim=True)

    return gate


@pytest.mark.parametrize("name", list(TINY))
def test_pruned_forward_equals_the_full_forward_with_the_pruned_tokens_masked_out(name):
    model = tiny(name)
    clips = torch.rand(3, FRAMES, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    keep = torch.tensor([[0, 5, 6, 15], [1, 2, 3, 4], [7, 8, 9, 10]])
    with torch.no_grad():
        pruned = model(clips, keep=keep, capture=True)
        model.attention_gate = masked_gate(name, model, keep)
        try:
            masked = model(clips).logits
        finally:
            model.attention_gate = None
        full = model(clips, capture=True)
        everything = model(clips, keep=torch.arange(16).expand(3, 16)).logits
        reused = model(clips, keep=keep, tokens=full.embedded).logits
    torch.testing.assert_close(pruned.logits, masked, atol=1e-5, rtol=0)
    assert (pruned.logits - full.logits).abs().max() > 1e-3  # the pruned patches mattered
    torch.testing.assert_close(everything, full.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(reused, pruned.logits, atol=1e-6, rtol=0)
    # the class (frame) token attends to itself and the 4 kept patches of each frame only
    spatial = pruned.attention.spatial[0]
    assert spatial.shape[-2:] == (5, 5)


def test_kept_patches_are_the_top_ranked_ones_ties_in_the_seeded_occlusion_order():
    relevance = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    means = relevance.mean(1).flatten(1)
    expected = means.argsort(1, descending=True)[:, :8].sort(1).values
    assert torch.equal(top_patches(relevance, 0.5), expected)
    assert top_patches(relevance, 0.01).shape == (2, 1)  # at least one
    assert torch.equal(top_patches(relevance, 0.01)[:, 0], means.argmax(1))
    # a flat map: every patch tied; the kept ones are tie_order's seeded draw, not the first 8
    flat = torch.ones(2, 3, 4, 4)
    drawn = top_patches(flat, 0.5)
    assert torch.equal(drawn, tie_order(torch.ones(2, 16))[:, :8].sort(1).values)
    assert not torch.equal(drawn[0], torch.arange(8))
    # ties below the cut do not matter: the strictly larger ones are always kept
    stepped = torch.zeros(1, 1, 4, 4)
    stepped[0, 0, 0, :3] = 1.0  # 3 top patches, 13 tied at 0, keep 4
    assert {0, 1, 2} <= set(top_patches(stepped, 0.25)[0].tolist())
    policy = get_crop_policy("prune")(torch.rand(2, 3, 3, 32, 32), relevance, 16, keep=0.5)
    assert isinstance(policy, Pruned) and torch.equal(policy.keep, expected)


def test_a_model_that_cannot_prune_is_refused_at_config_time():
    space = "space.et.method.crop_policy.choices=[largest_region,mask]"
    overrides = ["model=video_swin_t", "methods.et.crop_policy=prune", space]
    message = r"methods\.et: method\.crop_policy: model video_swin_t cannot prune tokens \(its"
    with pytest.raises(ConfigError, match=message):
        validate_study(compose("birds_video", overrides))
    # the default search space tries prune: a search on Video Swin leaves it out, and says why
    searched = search_params(compose("birds_video", ["model=video_swin_t"]), "et")
    (policy,) = [p for p in searched.params if p.path == "method.crop_policy"]
    assert policy.candidates == ["largest_region", "union_box", "mask", "soft"]
    (why,) = searched.left_out
    assert why.startswith("space.et.method.crop_policy = 'prune'") and "video_swin_t" in why
    on_pool_t = search_params(compose("birds_video", ["model=pool_t"]), "et")
    assert "prune" in next(p for p in on_pool_t.params if p.path == "method.crop_policy").candidates
    assert on_pool_t.left_out == []
    # in a models study each model's search has its own choices
    models = compose("birds_video", ["study.models=[pool_t,video_swin_t]"])
    assert [len(search_params(models, "et", m).left_out) for m in ("pool_t", "video_swin_t")] == [
        0, 1
    ]
    only_prune = "space.et.method.crop_policy.choices=[prune]"
    with pytest.raises(ConfigError, match=r"crop_policy: no choice the model can serve: .*prune"):
        validate_study(compose("birds_video", ["model=video_swin_t", only_prune]))
    validate_study(compose("birds_video", ["model=video_swin_t", space]))
    validate_study(compose("birds_video", ["model=pool_t", "methods.et.crop_policy=prune"]))
    with pytest.raises(ConfigError, match=r"method\.keep: expected a share in \(0, 1\], got 0"):
        validate_study(compose("birds_video", ["methods.et.keep=0"]))


def et(model, **changes):
    cfg = {"name": "et", "explainer": "rollout_fem", "crop_policy": "prune", "keep": 0.25,
           "warmup_fraction": 0.0, **changes}  # fmt: skip
    return build_method(cfg, modalities=modalities_of(model), epochs=4)


def batches(n=2, size=3):
    generator = torch.Generator().manual_seed(2)
    return [
        Batch({"video": torch.rand(size, FRAMES, 3, 2 * SIDE, 2 * SIDE, generator=generator)},
              torch.randint(0, 3, (size,), generator=generator),
              torch.arange(b * size, (b + 1) * size))
        for b in range(n)
    ]  # fmt: skip


def test_et_predicts_on_the_explained_clip_pruned_to_its_top_patches():
    model = tiny("timesformer")
    method = et(model)
    data = batches(1)
    method.start_epoch(model, 0, lambda: iter(data))
    clips = data[0].clips
    with torch.no_grad():
        view = downsample(clips, SIDE)
        relevance = explain_input(model, view, "rollout_fem").relevance
        expected = model(view, keep=top_patches(relevance, 0.25)).logits
        torch.testing.assert_close(method.predict(model, {"video": clips}), expected)


def test_free_refresh_from_the_whole_view_training_forward():
    """With full_input_weight > 0 the step's whole-view forward refreshes the cache (the same
    explanation the pass gives, dropout being off), and the next epoch runs no explaining pass."""
    model = tiny("timesformer")
    method = et(model, full_input_weight=0.5)
    data = batches()
    passes = []

    def train_batches():
        passes.append(1)
        return iter(data)

    method.start_epoch(model, 0, train_batches)  # the first ET epoch: the pass
    assert passes == [1] and method.step_refresh
    for row in method.relevance:  # a flat map, so that the refreshed ones show
        method.relevance[row] = {"video": torch.ones(FRAMES, 4, 4)}
    model.train()
    for batch in data:
        method.loss(model, batch)
    model.eval()
    for batch in data:
        expected = method.explain(model, batch.inputs, target=batch.labels)["video"]
        cached = torch.stack([method.relevance[i]["video"] for i in batch.index.tolist()])
        torch.testing.assert_close(cached, expected, atol=1e-6, rtol=0)
    method.start_epoch(model, 1, train_batches)
    assert passes == [1]  # refreshed by the steps: no pass
    gradient = et(model, full_input_weight=0.5, explainer="tibav")
    gradient.start_epoch(model, 0, train_batches)
    assert not gradient.step_refresh  # the gradient explainers always take the pass
