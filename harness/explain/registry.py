"""The explainer registries: a config's explainer name -> its pure function (see __init__)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor

from .attention import rollout, rollout_fem, rollout_grad, tibav
from .cam import eigencam, fem, gradcam, gradcam_pp

# name -> fn(attentions, **kwargs), or fn(attentions, gradients) for the names in NEEDS_GRADIENTS
ATTENTION_EXPLAINERS: Mapping[str, Callable[..., Tensor]] = MappingProxyType(
    {"rollout": rollout, "rollout_fem": rollout_fem, "rollout_grad": rollout_grad, "tibav": tibav}
)
# name -> fn(features, **kwargs), or fn(features, gradients) for the names in NEEDS_GRADIENTS
FEATURE_EXPLAINERS: Mapping[str, Callable[..., Tensor]] = MappingProxyType(
    {"fem": fem, "gradcam": gradcam, "gradcam_pp": gradcam_pp, "eigencam": eigencam}
)
NEEDS_GRADIENTS = frozenset({"rollout_grad", "tibav", "gradcam", "gradcam_pp"})
# Attention explainers whose map is a statistic over its tokens: they take `tokens=` (the input
# tokens of a model with other tokens, e.g. Pool-T's frame tokens); the others' maps are cut after.
TAKES_TOKENS = frozenset({"rollout_fem"})
# Every explainer a config may name ("random" is the chance baseline).
EXPLAINERS: tuple[str, ...] = (*ATTENTION_EXPLAINERS, *FEATURE_EXPLAINERS, "random")
