"""Sanity check of explainers: model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks
for Saliency Maps"; Quantus' MPRT).

An explanation that describes the model must change when the model's learnt weights are
destroyed. Adebayo et al. randomise the weights layer by layer from the output down (cascading
randomisation) and measure how similar the maps stay; we report the end of that cascade, every
layer re-initialised (each module's own ``reset_parameters``, top module first, from a seeded
generator), as one number per explainer: the Spearman rank correlation between a clip's map on the
trained model and on the randomised one, for the class the trained model predicts, the mean over
clips. An explainer whose maps keep a rank correlation of at least ``MPRT_THRESHOLD`` is flagged:
its maps depend on the input (or nothing) more than on what the model learnt. ``random``, whose
maps come from a seeded generator, is flagged by construction (correlation 1): the check works.
The threshold is our choice (Adebayo et al. read the similarity curves by eye); say so with it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy import stats
from torch import nn

MPRT_THRESHOLD = 0.5


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every module that has ``reset_parameters`` re-initialised, the
    last registered (top) module first, from a generator seeded with ``seed``; the model is left
    as it is."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in reversed(list(clone.modules())):
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not clone:
                reset()
    return clone.eval()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """float [N]: the Spearman rank correlation of each pair of maps (``a``, ``b`` [N, ...];
    ties ranked by their mean rank); NaN where a map is constant."""
    x, y = a.flatten(1).double().cpu().numpy(), b.flatten(1).double().cpu().numpy()
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            out[i] = stats.spearmanr(x[i], y[i]).statistic
    return out
