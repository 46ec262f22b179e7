"""How the training methods treat each kind of input, one adapter per modality.

An adapter says, for its input: what the model sees of it (`view`), its explanation (relevance per
input region: video [B, T, h, w], signal [B, n]), how ET restricts it to that explanation
(`restrict`, policy from the method config's `policy_key`), which attention IFI supervises
(`attention`), and how the occlusion test hides its regions (`occlude`). What depends on the
architecture of the branch reading the input (its explanation, its supervised attentions, its
region grid) comes from that branch's architecture adapter (harness/models/base.py). The methods
loop over a model's modalities; nothing in them is specific to one input or one architecture.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from harness.explain import Explanation, explain_input
from harness.methods.crop import CROP_POLICIES, downsample
from harness.methods.window import WINDOW_POLICIES
from harness.models.base import AttentionPairs


class Modality(Protocol):
    name: str
    policy_key: str  # the method-config key naming ET's restriction policy for this input
    policies: Mapping[str, Callable[..., Tensor]]  # ET's restriction policies, by name
    default_policy: str

    def view(self, x: Tensor) -> Tensor: ...
    def explain(
        self, branch: nn.Module, view: Tensor, explainer: str, target: Tensor | None = None,
        generator: torch.Generator | None = None, **params: Any,
    ) -> Explanation: ...  # fmt: skip
    def restrict(self, x: Tensor, relevance: Tensor, policy: str, **kwargs: float) -> Tensor: ...
    def attention(self, output: Any, score: Tensor, class_rows: bool) -> AttentionPairs: ...
    def occlude(self, x: Tensor, mask: Tensor, value: str) -> Tensor: ...


class _Input:
    """What every input shares: its branch's explanation and IFI attentions, from the branch's
    architecture adapter."""

    def __init__(self, branch: nn.Module) -> None:
        self.adapter = branch.adapter

    def explain(
        self, branch, view, explainer, target=None, generator=None, **params
    ) -> Explanation:
        return explain_input(branch, view, explainer, target=target, generator=generator, **params)

    def attention(self, output, score: Tensor, class_rows: bool) -> AttentionPairs:
        return self.adapter.supervised_attention(output, score, class_rows)


class VideoInput(_Input):
    """Clips [B, T, 3, H, W] at storage resolution, seen by the video model area-downsampled to its
    `image_size`; relevance per (frame, patch) [B, T, h, w] (`grid`: the patch grid of the model's
    input regions); ET crops (harness/methods/crop.py)."""

    name = "video"
    policy_key = "crop_policy"
    policies = CROP_POLICIES
    default_policy = "largest_region"

    def __init__(self, branch: nn.Module) -> None:
        super().__init__(branch)
        self.size = int(branch.image_size)
        self.grid = tuple(branch.grid)  # (T, h, w)

    def view(self, x: Tensor) -> Tensor:
        return downsample(x, self.size)

    def restrict(self, x: Tensor, relevance: Tensor, policy: str, **kwargs: float) -> Tensor:
        fn = self.policies[policy]
        return fn(x, relevance, self.size, **accepted(fn, kwargs))

    def occlude(self, x: Tensor, mask: Tensor, value: str) -> Tensor:
        from harness.evaluate.occlusion import apply_occlusion  # evaluate imports the methods

        T, h, w = self.grid
        return apply_occlusion(x, mask.reshape(len(x), T, h * w), (h, w), value)


class SignalInput(_Input):
    """Standardised signals [B, L, C], seen whole by the Linformer; relevance per time token
    [B, n]; ET weights or cuts them (harness/methods/window.py).

    IFI on a Linformer supervises P = softmax(Q (E K)^T), the attention over the k projected keys
    [B, H, N, k]: it is Linformer's only row-stochastic attention (the token mixing M = P F is a
    signed matrix), and its class-specific relevance (P * dP)^+ is defined exactly as for any
    attention (dP the true gradient)."""

    name = "signal"
    policy_key = "signal_policy"
    policies = WINDOW_POLICIES
    default_policy = "soft"

    def __init__(self, branch: nn.Module) -> None:
        super().__init__(branch)
        self.tokens = int(branch.num_patches)

    def view(self, x: Tensor) -> Tensor:
        return x

    def restrict(self, x: Tensor, relevance: Tensor, policy: str, **kwargs: float) -> Tensor:
        fn = self.policies[policy]
        return fn(x, relevance, **accepted(fn, kwargs))

    def occlude(self, x: Tensor, mask: Tensor, value: str) -> Tensor:
        from harness.evaluate.occlusion import apply_signal_occlusion

        return apply_signal_occlusion(x, mask.reshape(len(x), -1), value)


def accepted(policy: Callable[..., Tensor], options: Mapping[str, float]) -> dict[str, float]:
    """The options a policy takes (ET passes every policy option; `keep` is prune's alone)."""
    names = inspect.signature(policy).parameters
    return {key: value for key, value in options.items() if key in names}


_ADAPTERS: dict[str, type] = {"video": VideoInput, "signal": SignalInput}
# input -> the method-config key of ET's policy for it (what the config checks read)
POLICY_KEYS: dict[str, str] = {name: adapter.policy_key for name, adapter in _ADAPTERS.items()}
# input -> ET's policy for it when the method config names none
DEFAULT_POLICIES: dict[str, str] = {name: a.default_policy for name, a in _ADAPTERS.items()}


def modalities_of(model: nn.Module) -> dict[str, Modality]:
    """One adapter per input the model reads, built from the branch that reads it."""
    return {name: _ADAPTERS[name](model.branch(name)) for name in model.modalities}


def views(modalities: Mapping[str, Modality], inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: modalities[name].view(x) for name, x in inputs.items()}
