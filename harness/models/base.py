"""What the rest of the harness asks of a model: its architecture's adapter.

Every architecture has one `Adapter`, registered once in `harness.models.ARCHITECTURES`, and every
module it builds points back to it (`model.adapter`). The adapter is the one place where an
architecture is described to the harness:

* `inputs`: what the model reads ("video", "signal"); `build`: the module from its config;
  `check`: the config checked against the data before Ray starts (a `need(ok, key, expected)`
  callback raises the config error);
* `explainers`: the explainers it can serve (any other is refused at config time, naming both);
* `attention_steps`: the forward pass as the token-mixing steps that the rollout-type explainers
  propagate (`harness.explain.attention.Mixing`, first step first, the readout included), and the
  target score's gradient on them; `feature_grid`: the CAM explainers' token features as a map
  [B, C, *grid]; `input_tokens`: which tokens stand for input regions; `to_regions`: relevance
  over those tokens or over the feature grid -> one value per
  input region ([B, T, h, w] per frame and patch for clips, [B, n] per time patch for signals:
  `model.grid`), what ET's restriction, the occlusion test and the galleries read;
* `supervised_attention`: the attentions IFI supervises and their gradients;
* `prunes` / `pruning`: whether the model runs on a subset of its input tokens (ET's `prune`
  policy, `crop_policy` for clips and `signal_policy` for signals: `forward(x, keep=...)`, see
  `Pruned`) and how, or why it cannot (a model that cannot refuses the policy at config time,
  harness/config.py); `prunes_in_forward` / `prune_depth`: whether it can also prune inside its
  forward, after its first blocks, on a ranking made from those blocks' attentions
  (`forward(x, keep=select, after=d)`, ET's `method.prune_after`), and how many blocks that count
  is taken in; `reader`: the adapter of the architecture reading one input (the hybrid's branches
  each answer for their own).

The module itself keeps `modalities`, `branch` and `fuse` (`SingleInput` for one input) and a
`forward(x, capture=False)` whose captured output carries `logits`, the attention the adapter reads
and `features`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from harness.explain import EXPLAINERS, reshape_tokens
from harness.explain.attention import Mixing

Need = Callable[[bool, str, str], None]  # need(ok, key, expected): raises the config error
AttentionPairs = list[tuple[Tensor, Tensor]]  # (attention A, d score / dA), heads on dim -3


class Adapter:
    """One architecture as the harness sees it (see the module docstring). Single-input
    architectures override the explaining methods; `to_regions` defaults to `model.grid`."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    explainers: ClassVar[tuple[str, ...]] = EXPLAINERS
    # Token pruning: `prunes` True when `forward(x, keep=...)` runs on the kept input tokens only;
    # `pruning` says how it prunes (or why it cannot), for the docs and the config error.
    prunes: ClassVar[bool] = False
    pruning: ClassVar[str] = "it has no pruned forward"
    # In-forward pruning: `prunes_in_forward` True when `forward(x, keep=select, after=d)` runs its
    # first d blocks on every token, ranks the input regions with `select` from those blocks'
    # captured attentions and runs the other blocks on the kept tokens only (see `Pruned`).
    prunes_in_forward: ClassVar[bool] = False

    def build(self, num_classes: int, signal_channels: int | None, **cfg: Any) -> nn.Module:
        raise NotImplementedError

    def check(
        self, need: Need, data: Mapping[str, Any], cfg: Mapping[str, Any], where: str
    ) -> None:
        """Check model config `cfg` (at key `where`) against the data config, through `need`."""

    def reader(self, cfg: Mapping[str, Any], modality: str) -> Adapter:
        """The adapter of the architecture that reads input `modality` of a model of config
        `cfg`: this one (a multi-input model: its branch's)."""
        return self

    def prune_depth(self, cfg: Mapping[str, Any]) -> int | None:
        """The blocks of the stage a forward of a model of config `cfg` can prune inside
        (`after` must be smaller); None: known only from the built model (a pretrained
        checkpoint; its forward refuses a larger `after`)."""
        return None

    def supported(self, cfg: Mapping[str, Any]) -> tuple[str, ...]:
        """The explainers a model of config `cfg` can serve (default: `explainers`)."""
        return self.explainers

    def attention_steps(
        self, output: Any, explainer: str, score: Tensor | None = None
    ) -> tuple[list[Mixing | Tensor], list[Mixing | Tensor] | None]:
        """(steps, gradient steps) of a captured forward; gradient steps only with `score`."""
        raise NotImplementedError

    def input_tokens(self, model: nn.Module, device: torch.device) -> Tensor | None:
        """Which of the steps' tokens 1..N-1 (0-based indices) stand for input regions, in the
        order of `model.grid`; None: all of them (e.g. Pool-T's frame tokens are not)."""
        return None

    def feature_grid(self, model: nn.Module, tokens: Tensor) -> Tensor:
        """Token features (or their gradient) [B, n, C] -> [B, C, *grid]."""
        return reshape_tokens(tokens, model.grid)

    def to_regions(self, model: nn.Module, relevance: Tensor) -> Tensor:
        """Relevance over the input tokens [B, n] or over the feature grid -> [B, *model.grid]."""
        return relevance.reshape(len(relevance), *model.grid)

    def supervised_attention(self, output: Any, score: Tensor, class_rows: bool) -> AttentionPairs:
        raise NotImplementedError

# select(partial) -> keep: the kept input regions int64 [B, k] (ascending), ranked from `partial`,
# an output of the model's type holding the attentions its first `after` blocks captured (its
# logits None). A model pruning inside its forward calls it between those blocks and the others.
Selector = Callable[[Any], Tensor]


@dataclass
class Pruned:
    """A model input restricted to some of its tokens (ET's `prune` policy): the branch runs as
    `branch(view, keep=keep, tokens=tokens)` (with `after=after` when `after` > 0).

    view: what the model would see of the whole input (clips [B, T, 3, S, S], signals [B, L, C]);
    keep: int64 [B, k], ascending: the kept input regions of each sample (for clips the spatial
    patches p = row * w + col, the same in every frame; for signals the time tokens t), dropped
    before the first block; or, with `after` = d > 0 (in-forward pruning, `prunes_in_forward`), a
    `Selector` the model calls on its first d blocks' attentions: those blocks run on every
    token, the others on the block-d outputs of the kept regions' tokens only;
    tokens: the embedding of `view` from an earlier forward of the same model (the explaining
    forward's `embedded`), reused instead of embedding the view again; None: embed it."""

    view: Tensor
    keep: Tensor | Selector
    tokens: Tensor | None = None
    after: int = 0


def run_branch(branch: nn.Module, x: Tensor | Pruned, capture: bool = False) -> Any:
    """`branch(x, capture=...)`, or its pruned forward for a `Pruned` input."""
    if isinstance(x, Pruned):
        inside = {"after": x.after} if x.after else {}
        return branch(x.view, capture=capture, keep=x.keep, tokens=x.tokens, **inside)
    return branch(x, capture=capture)


# gate(i, A) -> A': re-weights the i-th attention map of a forward pass (first layer first, in the
# order the model captures its maps) before it mixes the values; same shape, heads on dim -3.
# Every model has an `attention_gate` attribute applied this way (None: plain attention); IFI's
# `gate` reading sets it for a training pass (harness/methods/ifi.py).
AttentionGate = Callable[[int, torch.Tensor], torch.Tensor]


class SingleInput:
    """Mixin of a classifier of one input: it is its own (only) branch, its logits that branch's."""

    modalities: tuple[str, ...]
    adapter: ClassVar[Adapter]

    def branch(self, modality: str) -> SingleInput:
        if modality not in self.modalities:
            raise KeyError(f"no {modality!r} branch; this model reads {list(self.modalities)}")
        return self

    def fuse(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        return logits[self.modalities[0]]


def check_clip_shape(clips: Tensor, frames: int, size: int) -> None:
    """ValueError unless clips are [B, frames, 3, size, size] (what a video model was built for)."""
    B, T, C, H, W = clips.shape if clips.dim() == 5 else (None,) * 5
    if T != frames or C != 3 or H != size or W != size:
        raise ValueError(
            f"clips must be [B, {frames}, 3, {size}, {size}] for this model (model.num_frames, "
            f"model.image_size), got {list(clips.shape)}"
        )


def check_clips(need: Need, data: Mapping[str, Any], cfg: Mapping[str, Any], where: str) -> None:
    """What every video model needs of the data: its `image_size` (what it sees of a frame, ET
    crops the stored frames down to it) and its `num_frames` (the data's frame count)."""
    if data.get("root"):
        need(int(data.get("frame_size", 0)) >= int(cfg.get("image_size", 0)), "data.frame_size",
             f"at least {where}.image_size ({cfg.get('image_size')}), ET crops it")  # fmt: skip
    elif data.get("synthetic"):
        synthetic = data["synthetic"]
        size = synthetic["frame_size"] // synthetic["downsample_factor"]
        need(cfg.get("pretrained") or cfg.get("image_size") == size, f"{where}.image_size",
             f"data.synthetic.frame_size / downsample_factor = {size}")  # fmt: skip
    frames = data.get("num_frames", data.get("synthetic", {}).get("num_frames"))
    need(cfg.get("pretrained") or cfg.get("num_frames") == frames, f"{where}.num_frames",
         f"data.num_frames = {frames}")  # fmt: skip


def spatial_temporal_pairs(attention: Any, score: Tensor, class_rows: bool) -> AttentionPairs:
    """IFI's pairs of a separable space-time model (attention with `spatial` maps, class token
    first, and `temporal` maps, and `gradients`): every spatial map, and unless `class_rows`
    every temporal one (the class rows are the spatial maps' first rows)."""
    grads = attention.gradients(score, retain_graph=True)
    pairs = list(zip(attention.spatial, grads.spatial))
    if not class_rows:
        pairs += list(zip(attention.temporal, grads.temporal))
    return pairs
