"""ET's `prune` policy: the pruned forward of each architecture that prunes against its full
forward with the pruned tokens' attention masked out (video) or their keys and values zeroed
(Linformer, the hybrid's signal branch); the kept patches and time tokens are the top-ranked ones
(ties in the seeded order of the occlusion test); a model that cannot prune is refused at config
time; ET's free refresh from the whole-view training forward, its prediction pipeline, and a
training step on pruned signals. In-forward pruning (`prune_after`): the forward pruned after d
blocks against the full one masked from block d + 1 on, its kept patches against a dense rollout
of the first d blocks, ET's step and prediction without a cache, and its refusals."""

from contextlib import contextmanager

import pytest
import torch

from harness.config import ConfigError, compose, search_params, validate_study
from harness.data import Batch
from harness.evaluate.occlusion import tie_order
from harness.explain import explain_input
from harness.explain.video import DividedAttention, compose_divided
from harness.methods import build_method
from harness.methods.crop import downsample, get_crop_policy, top_patches, top_regions
from harness.methods.modality import modalities_of
from harness.methods.window import get_window_policy
from harness.models import build_model
from harness.models.base import Pruned
from harness.models.signal import LinformerAdapter

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


def masked_gate(name: str, model, keep: torch.Tensor, after: int = 0):
    """gate(i, A): every spatial attention of block `after` + 1 on (0: every block) with the keys
    of the pruned patches masked out (the softmax over the kept keys only: A * mask / row sum);
    the temporal attentions unchanged (a pruned patch's temporal rows mix pruned tokens only,
    which nothing kept reads)."""
    B, P = len(keep), (SIDE // PATCH) ** 2
    mask = torch.zeros(B, 1 + P).index_fill_(1, torch.tensor([0]), 1.0)
    mask.scatter_(1, keep + 1, 1.0)
    mask = mask.repeat_interleave(FRAMES, 0)[:, None, None, :]  # [B*T, 1, 1, 1+P]

    def spatial(i: int) -> bool:  # TimeSformer: temporal, spatial per block; Pool-T: spatial first
        if name == "timesformer":
            return i % 2 == 1 and i // 2 >= after
        return after <= i < len(model.spatial)

    def gate(i: int, attention: torch.Tensor) -> torch.Tensor:
        if not spatial(i):
            return attention
        masked = attention * mask
        return masked / masked.sum(-1, keepdim=True)

    return gate


@contextmanager
def gated(model, gate):
    model.attention_gate = gate
    try:
        yield
    finally:
        model.attention_gate = None


@pytest.mark.parametrize("name", list(TINY))
def test_pruned_forward_equals_the_full_forward_with_the_pruned_tokens_masked_out(name):
    model = tiny(name)
    clips = torch.rand(3, FRAMES, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    keep = torch.tensor([[0, 5, 6, 15], [1, 2, 3, 4], [7, 8, 9, 10]])
    with torch.no_grad():
        pruned = model(clips, keep=keep, capture=True)
        with gated(model, masked_gate(name, model, keep)):
            masked = model(clips).logits
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


def counted(data):
    """(passes, train_batches): train_batches() iterates `data` and adds 1 to `passes` (one per
    explaining pass)."""
    passes = []

    def train_batches():
        passes.append(1)
        return iter(data)

    return passes, train_batches


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
    passes, train_batches = counted(data)

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


# Signals: the Linformer and the hybrid's signal branch (ET's signal_policy=prune)
SIGNAL = {"name": "linformer", "signal_length": 64, "channels": 3, "patch_length": 8,
          "hidden_size": 16, "num_layers": 2, "num_heads": 2, "proj_dim": 4, "stem_channels": 8,
          "stem_kernel": 3}  # 8 time tokens  # fmt: skip
TOKENS = 8


def tiny_signal(**changes) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({**SIGNAL, **changes}, 3).eval()


def tiny_hybrid() -> torch.nn.Module:
    torch.manual_seed(0)
    video = {"name": "timesformer", "num_frames": FRAMES, "image_size": SIDE, "patch_size": PATCH,
             **TINY["timesformer"]}  # fmt: skip
    return build_model({"name": "hybrid", "video": video, "signal": SIGNAL}, 3).eval()


@contextmanager
def zeroed_keys_and_values(model, keep: torch.Tensor):
    """The Linformer's full forward with the pruned time tokens' keys and values zeroed in every
    block: a forward hook on each block's qkv projection (output [q | k | v]) zeroes the k and v
    rows of the pruned positions; the attention code itself is not touched."""
    kept = torch.zeros(len(keep), 1 + TOKENS, 1)
    kept[:, 0] = 1.0  # the class token
    kept.scatter_(1, keep[..., None] + 1, 1.0)
    width = model.blocks[0].attn.qkv.out_features // 3

    def hook(module, args, out):
        return torch.cat([out[..., :width], out[..., width:] * kept], -1)

    handles = [block.attn.qkv.register_forward_hook(hook) for block in model.blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def signals(batch: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, SIGNAL["signal_length"], 3, generator=generator)


SIGNAL_KEEP = torch.tensor([[0, 2, 3, 7], [1, 4, 5, 6], [0, 1, 2, 3]])


@pytest.mark.parametrize("changes", [{}, {"projection_init": "xavier"}, {"share_kv": True}])
def test_pruned_linformer_equals_the_full_forward_with_the_pruned_keys_and_values_zeroed(changes):
    model = tiny_signal(**changes)
    x, keep = signals(), SIGNAL_KEEP
    with torch.no_grad():
        pruned = model(x, keep=keep, capture=True)
        with zeroed_keys_and_values(model, keep):
            zeroed = model(x).logits
        full = model(x, capture=True)
        everything = model(x, keep=torch.arange(TOKENS).expand(3, TOKENS)).logits
        reused = model(x, keep=keep, tokens=full.embedded).logits
    torch.testing.assert_close(pruned.logits, zeroed, atol=1e-5, rtol=0)
    assert (pruned.logits - full.logits).abs().max() > 1e-3  # the pruned tokens mattered
    torch.testing.assert_close(everything, full.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(reused, pruned.logits, atol=1e-6, rtol=0)
    # every block mixes the class token and the 4 kept tokens only, through F's kept columns
    maps = pruned.attention
    assert maps.mixing[0].shape == (3, 2, 5, 5) and maps.probabilities[0].shape == (3, 2, 5, 4)
    F = model.blocks[0].attn.value_projection
    torch.testing.assert_close(maps.projections[0][1, 0], F[:, [0, 2, 5, 6, 7]])


def test_hybrid_prunes_its_signal_branch_its_video_branch_or_both():
    model = tiny_hybrid()
    method = et(model, signal_policy="prune")
    view = downsample(batches(1)[0].clips, SIDE)
    x, video_keep = signals(), torch.tensor([[0, 5, 6, 15], [1, 2, 3, 4], [7, 8, 9, 10]])
    with torch.no_grad():
        logits, outputs = method.forward(model, {"video": view, "signal": Pruned(x, SIGNAL_KEEP)})
        with zeroed_keys_and_values(model.signal, SIGNAL_KEEP):
            zeroed = model(view, x)
        both, _ = method.forward(
            model, {"video": Pruned(view, video_keep), "signal": Pruned(x, SIGNAL_KEEP)}
        )
        with gated(model.video, masked_gate("timesformer", model.video, video_keep)):
            with zeroed_keys_and_values(model.signal, SIGNAL_KEEP):
                masked = model(view, x).logits
        full = model(view, x).logits
    torch.testing.assert_close(outputs["signal"].logits, zeroed.branches["signal"].logits,
                               atol=1e-5, rtol=0)  # fmt: skip
    torch.testing.assert_close(outputs["video"].logits, zeroed.branches["video"].logits)
    torch.testing.assert_close(logits, zeroed.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(both, masked, atol=1e-5, rtol=0)
    assert (logits - full).abs().max() > 1e-4 and (both - logits).abs().max() > 1e-4


def test_kept_time_tokens_are_the_top_ranked_ones_ties_in_the_seeded_occlusion_order():
    relevance = torch.rand(3, TOKENS, generator=torch.Generator().manual_seed(0))
    x = signals()
    policy = get_window_policy("prune")
    pruned = policy(x, relevance, keep=0.5)
    assert isinstance(pruned, Pruned) and pruned.view is x and pruned.tokens is None
    assert torch.equal(pruned.keep, relevance.argsort(1, descending=True)[:, :4].sort(1).values)
    assert torch.equal(policy(x, relevance, keep=0.01).keep[:, 0], relevance.argmax(1))  # >= 1
    assert torch.equal(policy(x, torch.ones(3, TOKENS), keep=0.5).keep,
                       tie_order(torch.ones(3, TOKENS))[:, :4].sort(1).values)  # fmt: skip
    # ET passes its `keep` to the signal's prune (and to no policy that does not take it)
    method = et(tiny_signal(), signal_policy="prune", keep=0.25)
    restricted = method.restrict({"signal": x}, {"signal": relevance})["signal"]
    assert torch.equal(restricted.keep, relevance.argsort(1, descending=True)[:, :2].sort(1).values)


def test_a_signal_model_that_cannot_prune_is_refused_at_config_time(monkeypatch):
    """Every signal architecture here prunes: the refusal path is shown on the Linformer with its
    `prunes` switched off (the one flag the config check and ET read)."""
    searching = ["space.et.method.signal_policy.choices=[soft,prune]",  # not in the default space
                 "+space.et.method.keep={type: float, low: 0.25, high: 0.75, "
                 "when: {method.signal_policy: prune}}"]  # fmt: skip
    prunes_all = search_params(compose("birds_signal", searching), "et")
    policy = next(p for p in prunes_all.params if p.path == "method.signal_policy")
    assert "prune" in policy.candidates and prunes_all.left_out == []
    monkeypatch.setattr(LinformerAdapter, "prunes", False)
    monkeypatch.setattr(LinformerAdapter, "pruning", "switched off")
    space = "space.et.method.signal_policy.choices=[soft,mask]"
    message = (r"methods\.et: method\.signal_policy: model linformer cannot prune tokens "
               r"\(switched off\); expected another signal policy, got 'prune'")  # fmt: skip
    for experiment in ("birds_signal", "birds_hybrid"):
        with pytest.raises(ConfigError, match=message):
            validate_study(compose(experiment, ["methods.et.signal_policy=prune", space]))
    searched = search_params(compose("birds_signal", searching), "et")
    (why,) = searched.left_out
    assert why.startswith("space.et.method.signal_policy = 'prune'") and "linformer" in why
    with pytest.raises(ValueError, match=r"method\.signal_policy: model linformer cannot prune"):
        et(tiny_signal(), signal_policy="prune")


def test_the_hybrid_refuses_the_policy_of_the_branch_that_cannot_prune():
    swin = ["model@model.video=video_swin_t", "methods.et.crop_policy=prune",
            "space.et.method.crop_policy.choices=[mask]"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"method\.crop_policy: model video_swin_t cannot prune"):
        validate_study(compose("birds_hybrid", swin))
    signal_only = [swin[0], "methods.et.signal_policy=prune", "methods.et.crop_policy=mask",
                   "space.et.method.signal_policy.choices=[prune]", swin[2]]  # fmt: skip
    validate_study(compose("birds_hybrid", signal_only))  # its Linformer prunes


@pytest.mark.parametrize("kind", ["linformer", "hybrid"])
def test_an_et_step_with_signal_prune_trains_only_on_the_kept_tokens(kind):
    model = tiny_signal() if kind == "linformer" else tiny_hybrid()
    method = et(model, signal_policy="prune", crop_policy="mask", keep=0.25)  # 2 of 8 tokens
    generator = torch.Generator().manual_seed(3)
    inputs = {"signal": signals(3, seed=4)}
    if kind == "hybrid":
        inputs["video"] = torch.rand(3, FRAMES, 3, 2 * SIDE, 2 * SIDE, generator=generator)
    batch = Batch(inputs, torch.tensor([0, 1, 2]), torch.arange(3))
    method.start_epoch(model, 0, lambda: iter([batch]))  # the explaining pass fills the cache
    kept = torch.stack([method.relevance[i]["signal"] for i in range(3)])
    kept = get_window_policy("prune")(inputs["signal"], kept, keep=0.25).keep
    model.train()
    loss, _ = method.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    signal = model.branch("signal")
    never = sorted(set(range(TOKENS)) - set(kept.flatten().tolist()))
    assert len(never) >= 2  # 3 signals keep at most 6 of the 8 tokens
    for block in signal.blocks:  # E, F get gradient at kept positions only (1 + t)
        for projection in (block.attn.E, block.attn.F):
            grad = projection.grad.abs().sum(0)
            assert (grad[[1 + t for t in never]] == 0).all()
            assert (grad[[1 + t for t in kept.flatten().unique().tolist()]] > 0).all()
    assert (signal.pos_embed.grad[0, [1 + t for t in never]] == 0).all()
    assert signal.patch_embed.stem[0].weight.grad.abs().sum() > 0
    if kind == "hybrid":
        assert model.video.model.classifier.weight.grad.abs().sum() > 0


def test_et_predicts_on_the_explained_signal_pruned_to_its_top_tokens():
    model = tiny_signal()
    method = et(model, signal_policy="prune")
    x = signals()
    batch = Batch({"signal": x}, torch.tensor([0, 1, 2]), torch.arange(3))
    method.start_epoch(model, 0, lambda: iter([batch]))
    with torch.no_grad():
        relevance = explain_input(model, x, "rollout_fem").relevance
        expected = model(x, keep=top_regions(relevance, 0.25)).logits
        torch.testing.assert_close(method.predict(model, {"signal": x}), expected)


# In-forward pruning (ET's prune_after): the first d blocks on every token, the rest on the kept
KEEP = torch.tensor([[0, 5, 6, 15], [1, 2, 3, 4], [7, 8, 9, 10]])


def clips_of(seed: int = 1, batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, FRAMES, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(TINY))
def test_a_forward_pruned_after_d_blocks_equals_the_full_one_masked_from_block_d_plus_1(name):
    model, clips = tiny(name), clips_of()
    seen = []

    def select(partial):
        seen.append(partial)
        return KEEP

    with torch.no_grad():
        inside = model(clips, keep=select, after=1).logits
        with gated(model, masked_gate(name, model, KEEP, after=1)):
            masked = model(clips).logits
        before = model(clips, keep=KEEP).logits  # the input pruned before the first block
        full = model(clips, capture=True)
    torch.testing.assert_close(inside, masked, atol=1e-5, rtol=0)
    assert (inside - before).abs().max() > 1e-3 and (inside - full.logits).abs().max() > 1e-3
    # the selector saw the first block's attentions only, on the whole grid, as the full forward's
    (partial,) = seen
    assert partial.logits is None
    first = full.attention.captured[: 2 if name == "timesformer" else 1]
    assert len(partial.attention.captured) == len(first) + (name == "pool_t")  # + its readout
    for a, b in zip(partial.attention.captured, first):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    blocks = len(model.model.timesformer.encoder.layer) if name == "timesformer" else 2
    for bad in ({"after": blocks}, {"after": 1, "capture": True}):
        with pytest.raises(ValueError, match=r"in-forward pruning needs 0 < after < the model's"):
            model(clips, keep=select, **bad)


def naive_partial_rollout(name: str, model, view: torch.Tensor, blocks: int) -> torch.Tensor:
    """Relevance per patch [B, P], up to a positive factor per clip: attention rollout (heads
    averaged, A' = (A + I) / row sum) of the first `blocks` blocks, as dense matrices multiplied
    out. TimeSformer: `compose_divided`'s N x N steps, the class row, averaged over frames;
    Pool-T: each frame's (1+P) x (1+P) spatial maps, its frame token's row, averaged over frames
    (a uniform readout over the frame tokens)."""
    with torch.no_grad():
        attention = model(view, capture=True).attention
    if name == "timesformer":
        partial = DividedAttention(attention.captured[: 2 * blocks], attention.grid)
        maps = compose_divided(partial)  # [B, H, N, N], tokens frame-major
    else:
        maps = attention.captured[:blocks]  # [B*T, H, 1+P, 1+P]
    product = None
    for a in maps:
        fused = a.double().mean(1)
        step = fused + torch.eye(fused.shape[-1], dtype=fused.dtype)
        step = step / step.sum(-1, keepdim=True)
        product = step if product is None else step @ product
    row = product[:, 0, 1:]
    return row.reshape(len(view), FRAMES, -1).mean(1)  # Pool-T: [B*T, P] -> [B, T, P] alike


@pytest.mark.parametrize("name", list(TINY))
def test_the_patches_kept_inside_the_forward_are_the_top_of_the_first_blocks_rollout(name):
    model = tiny(name)
    method = et(model, explainer="rollout", prune_after=1, keep=0.25)  # 4 of 16 patches
    data = batches(1)
    clips = data[0].clips
    (pruned,) = method.pruned_inside(model, {"video": clips}).values()
    kept = []

    def recording(partial):
        kept.append(pruned.keep(partial))
        return kept[-1]

    view = downsample(clips, SIDE)
    torch.testing.assert_close(pruned.view, view)
    with torch.no_grad():
        model(pruned.view, keep=recording, after=pruned.after)
    expected = naive_partial_rollout(name, model, view, 1).argsort(1, descending=True)[:, :4]
    assert torch.equal(kept[0], expected.sort(1).values)
    full = naive_partial_rollout(name, model, view, 2).argsort(1, descending=True)[:, :4]
    assert not torch.equal(full.sort(1).values, expected.sort(1).values)  # d blocks, not all


@pytest.mark.parametrize("name", list(TINY))
def test_an_et_step_and_prediction_pruned_inside_the_forward_use_no_cache(name):
    model = tiny(name)
    method = et(model, prune_after=1)
    data = batches()
    passes, train_batches = counted(data)

    method.start_epoch(model, 0, train_batches)
    assert method.active and passes == [] and method.relevance == {}  # no explaining pass
    model.train()
    loss, logits = method.loss(model, data[0])
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (3, 3)
    assert method.relevance == {} and method.state_dict()["relevance"] == {}
    first = model.model.timesformer.encoder.layer[0] if name == "timesformer" else model.spatial[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters())
    model.eval()
    clips = data[1].clips
    with torch.no_grad():
        predicted = method.predict(model, {"video": clips})
        view = downsample(clips, SIDE)
        relevance = explain_input(model, view, "rollout_fem").relevance  # a whole forward
        whole = model(view, keep=top_patches(relevance, 0.25)).logits
    assert torch.isfinite(predicted).all()
    (pruned,) = method.pruned_inside(model, {"video": clips}).values()
    with torch.no_grad():
        expected = model(view, keep=pruned.keep, after=1).logits
    torch.testing.assert_close(predicted, expected)
    assert (predicted - whole).abs().max() > 1e-4  # not the input pruning's prediction
    assert method.relevance == {}
    # the study's chance control (`et (random relevance)`): a random ranking in each forward
    control = et(model, prune_after=1, explainer="random")
    control.start_epoch(model, 0, train_batches)
    (pruned,) = control.pruned_inside(model, {"video": clips}).values()
    drawn = [pruned.keep(None) for _ in range(2)]
    assert drawn[0].shape == (3, 4) and not torch.equal(drawn[0], drawn[1])
    assert torch.isfinite(control.predict(model, {"video": clips})).all() and passes == []


def test_in_forward_pruning_is_refused_where_it_cannot_run():
    prune = ["methods.et.crop_policy=prune", "methods.et.prune_after=1"]
    validate_study(compose("birds_video", prune))
    for extra, message in [
        (["methods.et.explainer=tibav"],
         r"method\.prune_after: in-forward pruning ranks on the first blocks' attentions alone; "
         r"expected method\.explainer one of rollout, rollout_fem, random, got 'tibav'"),
        (["methods.et.explainer=fem"], r"method\.prune_after: .*got 'fem'"),
        (["methods.et.prune_after=2"],
         r"method\.prune_after: expected an integer in 1\.\.1 \(fewer than the 2 blocks the "
         r"model prunes in\), got 2"),
        (["model=pool_t", "methods.et.prune_after=2"], r"method\.prune_after: .* in 1\.\.1 "),
        (["methods.et.prune_after=-1"],
         r"method\.prune_after: expected an integer >= 0 \(0: prune the input\), got -1"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=r"methods\.et: " + message):
            validate_study(compose("birds_video", [*prune, *extra]))
    # a search over the explainers leaves the gradient ones out, and says why
    searched = search_params(compose("birds_video", prune), "et")
    (explainer,) = [p for p in searched.params if p.path == "method.explainer"]
    assert explainer.candidates == ["rollout_fem", "rollout"]
    assert searched.left_out[0].startswith("space.et.method.explainer = 'tibav'")
    # another policy ignores prune_after (as it ignores keep)
    validate_study(compose("birds_video", ["methods.et.prune_after=1"]))
    # the README's search of it: drawn only with prune and a gradient-free explainer
    searching = ("+space.et.method.prune_after={type: int, low: 0, high: 1, when: {"
                 "method.crop_policy: prune, method.explainer: [rollout_fem, rollout]}}")
    searched = search_params(compose("birds_video", [searching]), "et")
    assert "method.prune_after" in [p.path for p in searched.params] and not searched.left_out
    signal = ["methods.et.signal_policy=prune", "methods.et.prune_after=1",
              "space.et.method.signal_policy.choices=[soft,prune]"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"method\.prune_after: model linformer cannot prune "
                       r"inside its forward; expected method\.prune_after=0"):  # fmt: skip
        validate_study(compose("birds_signal", signal))
    with pytest.raises(ConfigError, match=r"in-forward pruning prunes every input in one forward;"
                       r" expected method\.signal_policy=prune, got 'soft'"):  # fmt: skip
        validate_study(compose("birds_hybrid", prune))
    with pytest.raises(ValueError, match=r"method\.prune_after: .*got 'gradcam'"):
        et(tiny("timesformer"), prune_after=1, explainer="gradcam")
    with pytest.raises(ValueError, match=r"method\.prune_after: model linformer cannot prune"):
        et(tiny_signal(), signal_policy="prune", prune_after=1)
