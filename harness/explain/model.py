"""Explaining a model: any explainer of this package on any model, through its adapter.

A model's adapter (`model.adapter`, see harness/models/base.py) turns its captured forward into
what the pure explainers take: the token-mixing steps of the forward (attention explainers), the
token features as a map (CAM explainers); and maps their result back to the input's regions
(`model.grid`: per frame and patch for clips, per time patch for signals). Nothing here knows an
architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import random_relevance
from .registry import (
    ATTENTION_EXPLAINERS,
    EXPLAINERS,
    FEATURE_EXPLAINERS,
    NEEDS_GRADIENTS,
    TAKES_TOKENS,
)


@dataclass
class Explanation:
    relevance: Tensor  # [B, *model.grid] per input region, detached
    logits: Tensor  # [B, num_classes], detached
    target: Tensor  # [B] the class that was explained
    embedded: Tensor | None = None  # the explained forward's embedding (`output.embedded`)


def check_explainer(model: nn.Module, name: str) -> None:
    """ValueError for an unknown explainer, or one the model's architecture cannot serve."""
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; expected one of: {', '.join(EXPLAINERS)}")
    adapter = model.adapter
    if name not in adapter.explainers:
        raise ValueError(
            f"model {adapter.name} does not support explainer {name!r}; it supports: "
            + ", ".join(adapter.explainers)
        )


def explain_input(
    model: nn.Module,
    x: Tensor,
    explainer: str,
    *,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
    **params: object,
) -> Explanation:
    """Explain input `x` of a single-input model with `explainer`; relevance [B, *model.grid].

    `target` is the class to explain (default: the predicted class); only the class-specific
    (gradient) explainers use it. `params` go to the explainer (e.g. k, heads); `generator`
    seeds `random`.
    """
    check_explainer(model, explainer)
    with torch.enable_grad() if explainer in NEEDS_GRADIENTS else torch.no_grad():
        out = model(x, capture=True)
        return explain_output(model, out, explainer, target=target, generator=generator, **params)


def explain_output(
    model: nn.Module,
    out: object,
    explainer: str,
    *,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
    **params: object,
) -> Explanation:
    """`explain_input` on a forward already run: `out = model(x, capture=True)` (with its graph,
    for the gradient explainers). ET refreshes its explanations this way from the training
    forward's captured attentions, at no extra forward."""
    check_explainer(model, explainer)
    adapter = model.adapter
    needs_grad = explainer in NEEDS_GRADIENTS
    with torch.enable_grad() if needs_grad else torch.no_grad():
        logits = out.logits
        device = logits.device
        if target is None:
            target = logits.argmax(-1)
        score = logits.gather(1, target[:, None]).sum() if needs_grad else None
        if explainer == "random":  # one value per token, mapped to the regions it covers
            tokens = adapter.input_tokens(model, device)  # None: every token is an input region
            count = math.prod(model.grid) if tokens is None else len(tokens)
            relevance = random_relevance((len(logits), count), generator).to(device)
            relevance = adapter.to_regions(model, relevance)
        elif explainer in ATTENTION_EXPLAINERS:
            relevance = attention_relevance(model, out, explainer, device, score, **params)
        else:
            features = adapter.feature_grid(model, out.features.detach())
            fn = FEATURE_EXPLAINERS[explainer]
            if needs_grad:
                (grad,) = torch.autograd.grad(score, out.features)
                cam = fn(features, adapter.feature_grid(model, grad), **params)
            else:
                cam = fn(features, **params)
            relevance = adapter.to_regions(model, cam)
    embedded = getattr(out, "embedded", None)
    embedded = None if embedded is None else embedded.detach()
    return Explanation(relevance.detach(), logits.detach(), target.detach(), embedded)


def attention_relevance(
    model: nn.Module,
    out: object,
    explainer: str,
    device: torch.device,
    score: Tensor | None = None,
    **params: object,
) -> Tensor:
    """Relevance [B, *model.grid] of attention explainer `explainer` on the attentions a forward
    captured (`out`, the model's output type; `score` the target score, for the gradient
    explainers): its adapter's token-mixing steps through the pure explainer, mapped to the input
    regions. `out` may hold the attentions of a forward's first blocks only (ET's in-forward
    pruning ranks on them): the explanation of those blocks alone."""
    adapter = model.adapter
    tokens = adapter.input_tokens(model, device)  # None: every token is an input region
    steps, gradients = adapter.attention_steps(out, explainer, score)
    fn = ATTENTION_EXPLAINERS[explainer]
    if tokens is not None and explainer in TAKES_TOKENS:
        params = {**params, "tokens": tokens}
    flat = fn(steps, gradients, **params) if score is not None else fn(steps, **params)
    if tokens is not None and explainer not in TAKES_TOKENS:
        flat = flat[..., tokens]
    return adapter.to_regions(model, flat)


def explain(
    model: nn.Module,
    inputs: Tensor | Mapping[str, Tensor],
    explainer: str,
    target: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    **params: object,
) -> Tensor | dict[str, Tensor]:
    """Relevance per input region of any model: the one public entry point.

    `inputs`: the model's input (a tensor, for a single-input model) or a mapping input name ->
    tensor (every input of a multi-input model, e.g. {"video": clips, "signal": signals}), as the
    model reads them. Returns the relevance in the same form: [B, *grid] for a tensor, a dict of
    them for a mapping (each branch explained on its own input, for the class `target`, default:
    the model's predicted class, fused over the branches).
    """
    if isinstance(inputs, Tensor):
        return explain_input(
            model, inputs, explainer, target=target, generator=generator, **params
        ).relevance
    if target is None and len(inputs) > 1:
        with torch.no_grad():
            logits = {m: model.branch(m)(x).logits for m, x in inputs.items()}
            target = model.fuse(logits).argmax(-1)
    return {
        m: explain_input(
            model.branch(m), x, explainer, target=target, generator=generator, **params
        ).relevance
        for m, x in inputs.items()
    }
