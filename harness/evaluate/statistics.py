"""Intervals and tests for test accuracies measured over seeds and test clips.

A method's final stage gives a 0/1 matrix ``correct[s, i]``: seed ``s``'s re-trained model right
or wrong on test clip ``i``. Two sources of variation matter to a reader: the test clips are a
sample (about 0.04 of accuracy at 160 clips and accuracy 0.4), and so are the training seeds.

* ``bootstrap_accuracy``: the mean of ``correct`` with a percentile interval from a two-way
  bootstrap that resamples seeds and clips independently (each with replacement; the "pigeonhole"
  bootstrap of a crossed design, Owen 2007, mildly conservative). With one seed it resamples the
  clips only, so there is still an interval.
* ``paired_bootstrap_difference``: the same for the paired difference of two methods (the same
  resampled clips and seed positions for both), ``mean(a) - mean(b)``.
* ``paired_permutation_p``: a two-sided paired permutation (sign-flip) test of that difference:
  under "no difference", each clip's mean difference over seeds ``d_i`` is as likely to have
  either sign; the p-value is ``(1 + #{|mean(flipped d)| >= |mean(d)|}) / (1 + draws)``. Flipping
  whole clips (not single cells) keeps the correlation of one clip's seeds.
* ``holm``: Holm's step-down adjustment of a family of p-values (controls the family-wise error).

Not covered: the variation of the search itself (which configuration the search would select
with another sampler seed or budget). All randomness comes from ``numpy`` generators seeded by the
caller, so every number is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_DRAWS = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def _as_matrix(correct: np.ndarray) -> np.ndarray:
    matrix = np.asarray(correct, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"expected a non-empty [seeds, clips] matrix, got shape {matrix.shape}")
    return matrix


def _resampled_means(
    matrix: np.ndarray, draws: int, rng: np.random.Generator, chunk: int = 1000
) -> np.ndarray:
    """[draws]: the mean of ``matrix`` [S, n] under resampled seeds and clips (multinomial
    counts, so each draw is ``w^T M v / (S n)``)."""
    seeds, clips = matrix.shape
    out = np.empty(draws)
    for start in range(0, draws, chunk):
        b = min(chunk, draws - start)
        w = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=b)  # [b, S]
        v = rng.multinomial(clips, np.full(clips, 1 / clips), size=b)  # [b, n]
        out[start : start + b] = np.einsum("bs,sn,bn->b", w, matrix, v) / (seeds * clips)
    return out


def _interval(matrix: np.ndarray, draws: int, seed: int, confidence: float) -> Interval:
    rng = np.random.default_rng(seed)
    means = _resampled_means(matrix, draws, rng)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(matrix.mean()), float(low), float(high))


def bootstrap_accuracy(
    correct: np.ndarray,
    *,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Mean accuracy of ``correct`` [seeds, clips] (or [clips]) and its percentile interval
    over seeds and clips (see the module docstring)."""
    return _interval(_as_matrix(correct), draws, seed, confidence)


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"paired matrices differ in shape: {a.shape} vs {b.shape}")
    return a - b


def paired_bootstrap_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """``mean(a) - mean(b)`` of two [seeds, clips] matrices on the same clips (seed positions
    paired) and its paired percentile interval (the same resampled seeds and clips for both)."""
    return _interval(_paired(a, b), draws, seed, confidence)


def paired_permutation_p(
    a: np.ndarray, b: np.ndarray, *, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> float:
    """Two-sided sign-flip permutation p-value of ``mean(a) - mean(b)``, flipping whole clips
    (see the module docstring). 1.0 when every clip's difference is 0."""
    per_clip = _paired(a, b).mean(0)  # [n]
    observed = abs(per_clip.mean())
    if not np.any(per_clip):
        return 1.0
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, draws, 1000):
        signs = rng.choice((-1.0, 1.0), size=(min(1000, draws - start), per_clip.size))
        exceed += int(np.sum(np.abs(signs @ per_clip) / per_clip.size >= observed - 1e-12))
    return (1 + exceed) / (1 + draws)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input order; NaN entries are not part of
    the family and stay NaN. Sorted ascending, p_(j) is multiplied by (m - j) (j from 0), then
    made monotone (a running maximum) and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = present.size
    running = 0.0
    for rank, index in enumerate(present[np.argsort(p[present], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
