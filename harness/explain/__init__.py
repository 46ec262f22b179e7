"""Explainers as pure functions of tensors (no model): exact, batched, differentiable.

Attention-based, on per-layer attentions [B, H, N, N] (token 0 = class token) -> [B, N-1]:
  rollout       attention rollout; Abnar & Zuidema, "Quantifying attention flow in
                transformers", ACL 2020.
  rollout_fem   FEM's k-sigma rule on per-head rollouts; Ayyar, Benois-Pineau & Zemmari (ET
                poster).
  rollout_grad  gradient-weighted rollout, E_h(A * dA); du Toit's TimeSformer study.
  tibav         E_h((dA * A)^+) relevance propagation; Chefer, Gur & Wolf, "Transformer
                interpretability beyond attention visualization", CVPR 2021 (gradient-attention
                form of "Generic attention-model explainability", ICCV 2021).
Feature-map (CAM family), on features [B, C, *grid] -> [B, *grid]:
  fem           Fuad et al., "Features understanding in 3D CNNs for actions recognition in
                video", IPTA 2020.
  gradcam       Selvaraju et al., "Grad-CAM", ICCV 2017.
  gradcam_pp    Chattopadhay et al., "Grad-CAM++", WACV 2018.
  eigencam      Muhammad & Yeasin, "Eigen-CAM", IJCNN 2020.
  reshape_tokens  token features [B, (1+)prod(grid), C] -> [B, C, *grid].
random_relevance: the uniform random baseline every faithfulness evaluation compares against.

On a model: `explain(model, inputs, explainer, target=None, **params)` gives relevance per input
region of any model of harness/models, through its architecture's adapter
(harness/explain/model.py); `explain_input` explains one input and also returns the logits and the
explained class (`Explanation`); `explain_output` does the same from a captured forward already run;
`attention_relevance` is its attention-explainer part (ET's in-forward pruning ranks with it).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .attention import random_relevance, rollout, rollout_fem, rollout_grad, tibav
from .cam import eigencam, fem, gradcam, gradcam_pp, reshape_tokens
from .model import (
    Explanation,
    attention_relevance,
    check_explainer,
    explain,
    explain_input,
    explain_output,
)
from .registry import ATTENTION_EXPLAINERS, EXPLAINERS, FEATURE_EXPLAINERS, NEEDS_GRADIENTS

__all__ = [
    "ATTENTION_EXPLAINERS",
    "EXPLAINERS",
    "FEATURE_EXPLAINERS",
    "NEEDS_GRADIENTS",
    "Explanation",
    "attention_relevance",
    "check_explainer",
    "eigencam",
    "explain",
    "explain_input",
    "explain_output",
    "explainer_names",
    "fem",
    "get_attention_explainer",
    "gradcam",
    "gradcam_pp",
    "random_relevance",
    "reshape_tokens",
    "rollout",
    "rollout_fem",
    "rollout_grad",
    "tibav",
]


def explainer_names() -> tuple[str, ...]:
    """Names of every explainer, as used in configs."""
    return EXPLAINERS


def get_attention_explainer(name: str) -> Callable[..., Tensor]:
    """The attention explainer registered under ``name``; ValueError for unknown names."""
    try:
        return ATTENTION_EXPLAINERS[name]
    except KeyError:
        raise ValueError(
            f"unknown explainer {name!r}; expected one of: {', '.join(ATTENTION_EXPLAINERS)}"
        ) from None
