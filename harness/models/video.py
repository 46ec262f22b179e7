"""TimeSformer video classifier with both of its attentions captured.

TimeSformer (Bertasius, Wang, Torresani, "Is Space-Time Attention All You Need for Video
Understanding?", ICML 2021, https://arxiv.org/abs/2102.05095) with divided space-time attention:
each block runs a temporal attention per spatial patch (over the T frames, no class token), then a
spatial attention per frame (over the class token and the P patches of that frame).

The implementation is `transformers`' `TimesformerForVideoClassification`. Its
`output_attentions` returns only the spatial attentions, so this wrapper captures both with hooks
on each block's `TimesformerSelfAttention` modules: a forward pre-hook asks the module for its
attention probabilities and a forward hook keeps them. The captured tensors are the ones used in
the forward graph, so gradients with respect to them are available (Rollout-Grad, TIBAV, IFI).

`TimeSformerAdapter` describes it to the harness (harness/models/base.py): its forward as two
token-mixing steps per block (harness/explain/video.py: temporal then spatial, the class token
read out as it is), its CAM features the tokens entering the last block, its relevance per (frame,
patch), and IFI on both attentions of every block.

The blocks run one by one (`_blocks`), so that a forward can prune its patch tokens before the
first block (ET's `prune`) or after the first d (ET's `prune_after`, ranked on those blocks'
captured attentions).

`attention_gate` (harness/models/base.py), when set, re-weights each attention's probabilities
through a forward hook on its `attn_drop` (the output replaces them before they mix the values).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.explain.video import DividedAttention, divided_steps, tokens_to_grid
from harness.models.base import (
    Adapter,
    AttentionGate,
    AttentionPairs,
    Need,
    Selector,
    SingleInput,
    check_clip_shape,
    check_clips,
    spatial_temporal_pairs,
)
from harness.models.layers import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # transformers is imported when a model is built (about 4 s): not to read the
    # adapter (the driver reads it to check the config and the data) nor to run other models
    from transformers import TimesformerConfig, TimesformerForVideoClassification


@dataclass
class VideoOutput:
    logits: torch.Tensor  # [B, num_classes]
    attention: DividedAttention | None = None
    # Tokens entering the last block [B, 1 + P*T, C] (TimeSformer order): the CAM explainers'
    # feature map. Not the last block's output: only its class token reaches the classifier, so
    # the gradient on its patch tokens is zero (pytorch-grad-cam targets blocks[-1].norm1 too).
    features: torch.Tensor | None = None
    embedded: torch.Tensor | None = None  # the embedding output [B, 1 + P*T, C] (before pruning)


class TimeSformerClassifier(SingleInput, nn.Module):
    """`TimesformerForVideoClassification` that can return its temporal and spatial attentions.

    Input clips are [B, T, 3, S, S] floats in [0, 1], normalised here with the ImageNet mean and
    std (as TimeSformer's image processor does); T and S must equal the config's `num_frames` and
    `image_size` (the transformers model silently mis-reshapes other frame counts).
    """

    modalities = ("video",)
    attention_gate: AttentionGate | None = None

    def __init__(self, model: TimesformerForVideoClassification) -> None:
        super().__init__()
        config = model.config
        if config.attention_type != "divided_space_time":
            raise ValueError(
                f"TimeSformer attention_type must be 'divided_space_time', got "
                f"{config.attention_type!r}"
            )
        self.model = model
        self.num_frames: int = config.num_frames
        self.image_size: int = config.image_size
        side = config.image_size // config.patch_size
        self.grid: tuple[int, int, int] = (config.num_frames, side, side)
        self._captured: list[torch.Tensor] | None = None
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False
        )
        for layer in model.timesformer.encoder.layer:
            for module in (layer.temporal_attention.attention, layer.attention.attention):
                module.register_forward_pre_hook(self._ask_for_probabilities)
                module.register_forward_hook(self._keep_probabilities)
                module.attn_drop.register_forward_hook(self._gate_probabilities)
        self._gated = 0  # maps gated so far in this forward pass

    @classmethod
    def from_config(
        cls,
        num_classes: int,
        *,
        pretrained: str | None = None,
        num_frames: int = 8,
        image_size: int = 32,
        patch_size: int = 8,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> TimeSformerClassifier:
        """A small randomly initialised TimeSformer, or `pretrained` (a local path or hub name)
        with a new classification head for `num_classes`."""
        from transformers import TimesformerConfig, TimesformerForVideoClassification
        from transformers.models.timesformer.modeling_timesformer import TimesformerDropPath

        if pretrained:
            model = TimesformerForVideoClassification.from_pretrained(
                pretrained,
                num_labels=num_classes,
                ignore_mismatched_sizes=True,
                attn_implementation="eager",
            )
            return cls(model)
        config = TimesformerConfig(
            image_size=image_size,
            patch_size=patch_size,
            num_frames=num_frames,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=int(hidden_size * mlp_ratio),
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=0.0,
            num_labels=num_classes,
            attention_type="divided_space_time",
        )
        config._attn_implementation = "eager"
        model = TimesformerForVideoClassification(config)
        # Stochastic depth with TimeSformer's linear decay rule, set on the modules: transformers 5
        # annotates `drop_path_rate` as int, so a config holding 0.1 would not load back.
        for rate, layer in zip(
            torch.linspace(0, drop_path, num_layers).tolist(), model.timesformer.encoder.layer
        ):
            layer.drop_path = TimesformerDropPath(rate) if rate > 0 else nn.Identity()
        return cls(model)

    def _ask_for_probabilities(self, module: nn.Module, args: tuple[Any, ...]) -> tuple | None:
        if self._captured is None:
            return None
        return (args[0], True)

    def _gate_probabilities(self, module: nn.Module, args: tuple, output: torch.Tensor):
        if self.attention_gate is None:
            return None
        self._gated += 1
        return self.attention_gate(self._gated - 1, output)

    def _keep_probabilities(self, module: nn.Module, args: tuple, output: tuple) -> None:
        if self._captured is not None:
            self._captured.append(output[1])

    def forward(
        self,
        clips: torch.Tensor,
        *,
        capture: bool = False,
        keep: torch.Tensor | Selector | None = None,
        tokens: torch.Tensor | None = None,
        after: int = 0,
    ) -> VideoOutput:
        """Logits (and with `capture` both attentions and the CAM features) of clips.

        `keep` (int64 [B, k], ascending; ET's `prune` policy): the spatial patches the model runs
        on, the same k in every frame. The embedded tokens of the other patches (their position
        and time embeddings added, as in the full forward) are dropped before the first block, so
        every temporal attention runs over the k kept patches' T frames, every spatial attention
        over the class token and the k kept patches of a frame, every MLP over 1 + k*T tokens,
        and the class token reads the kept patches only. `tokens`: this clip's embedding from an
        earlier forward (`VideoOutput.embedded`), used instead of embedding `clips` again.

        `after` = d in 1..L-1 (ET's `method.prune_after`): blocks 1..d run on every token with
        their attentions captured, `keep` is a `Selector` called on them (a `VideoOutput` with the
        d blocks' `DividedAttention` and no logits), and blocks d+1..L run on the class token and
        the block-d outputs of the kept patches, every frame (not with `capture`: such a forward
        has no one token grid to explain; explain the full forward).
        """
        layers = self.model.timesformer.encoder.layer
        if after and (capture or not callable(keep) or not 0 < after < len(layers)):
            raise ValueError(
                f"after={after}: in-forward pruning needs 0 < after < the model's {len(layers)} "
                "blocks, a keep selector, and no capture"
            )
        self._gated = 0
        if tokens is None:
            check_clip_shape(clips, self.num_frames, self.image_size)
            tokens = self.model.timesformer.embeddings((clips - self.mean) / self.std)
        embedded, grid, T = tokens, self.grid, self.num_frames
        self._captured = [] if capture or after else None
        try:
            x, features = self._blocks(tokens, layers[:after], grid, None)
            if keep is not None:
                if after:  # rank on the first blocks' attentions; the rest are not kept
                    keep = keep(VideoOutput(None, DividedAttention(self._captured, grid)))
                    self._captured = None
                x, grid = keep_patches(x, keep, T), (T, 1, keep.shape[1])
            x, features = self._blocks(x, layers[after:], grid, features)
            probs = self._captured
        finally:
            self._captured = None
        logits = self.model.classifier(self.model.timesformer.layernorm(x)[:, 0])
        if not capture:
            return VideoOutput(logits=logits)
        return VideoOutput(
            logits=logits,
            attention=DividedAttention(probs, grid),
            features=features,
            embedded=embedded,
        )

    def _blocks(
        self, x: torch.Tensor, layers: nn.ModuleList, grid: tuple[int, int, int],
        entering: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """`layers` in turn on tokens x of a clip with `grid`'s patches per frame: (their output,
        the tokens entering the last of them; `entering` when there are none)."""
        with patches_per_frame(self.model.config, grid[1] * grid[2]):
            for layer in layers:
                entering, x = x, layer(x)[0]
        return x, entering


def keep_patches(tokens: torch.Tensor, keep: torch.Tensor, frames: int) -> torch.Tensor:
    """TimeSformer tokens [B, 1 + P*T, C] (class first, patch-major) -> [B, 1 + k*T, C]: the class
    token and every frame's token of the patches `keep` [B, k], in their order."""
    B, _, C = tokens.shape
    patches = tokens[:, 1:].unflatten(1, (-1, frames))  # [B, P, T, C]
    kept = patches.gather(1, keep[:, :, None, None].expand(-1, -1, frames, C))
    return torch.cat([tokens[:, :1], kept.flatten(1, 2)], 1)


@contextmanager
def patches_per_frame(config: TimesformerConfig, count: int) -> Iterator[None]:
    """transformers' TimesformerLayer reads the patches per frame from the config, as
    (image_size // patch_size) per row; within this block a frame has `count` patches (one row of
    `count`: the blocks only flatten the patch grid, so one row reshapes as any other grid)."""
    size = config.image_size
    if count != (size // config.patch_size) ** 2:
        config.image_size = count * config.patch_size
    try:
        yield
    finally:
        config.image_size = size


class TimeSformerAdapter(Adapter):
    name = "timesformer"
    inputs = ("video",)
    prunes = True
    pruning = "the same spatial patches in every frame (both divided attentions, every MLP)"
    prunes_in_forward = True

    def prune_depth(self, cfg: Mapping[str, Any]) -> int | None:
        return None if cfg.get("pretrained") else int(cfg.get("num_layers", 2))

    def build(self, num_classes: int, signal_channels: int | None, **cfg: Any) -> nn.Module:
        return TimeSformerClassifier.from_config(num_classes, **cfg)

    def check(self, need: Need, data, cfg, where: str) -> None:
        check_clips(need, data, cfg, where)
        if not cfg.get("pretrained"):
            need(cfg["image_size"] % cfg["patch_size"] == 0, f"{where}.patch_size",
                 f"a divisor of {where}.image_size ({cfg['image_size']})")  # fmt: skip

    def attention_steps(self, output: VideoOutput, explainer: str, score=None):
        attention = output.attention
        if score is None:
            return divided_steps(attention), None
        gradients = divided_steps(attention.gradients(score), gradient=True)
        return divided_steps(attention.detached()), gradients

    def feature_grid(self, model: TimeSformerClassifier, tokens: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(tokens, model.grid)

    def supervised_attention(
        self, output: VideoOutput, score: torch.Tensor, class_rows: bool
    ) -> AttentionPairs:
        """Every block's spatial attention (only its class-token rows with `class_rows`) and,
        unless `class_rows`, its temporal attention."""
        return spatial_temporal_pairs(output.attention, score, class_rows)


TimeSformerClassifier.adapter = TimeSformerAdapter()
