"""Bootstrap intervals, the paired permutation test and Holm's adjustment, against independent
references: the binomial normal approximation, exact enumeration of sign flips, Holm's p-values
worked by hand, and the coverage of the interval on simulated pairs of classifiers."""

import itertools

import numpy as np
import pytest

from harness.evaluate.statistics import (
    bootstrap_accuracy,
    holm,
    paired_bootstrap_difference,
    paired_permutation_p,
)


def test_one_seed_interval_matches_the_binomial_one():
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.4
    interval = bootstrap_accuracy(correct, draws=4000, seed=1)
    p = correct.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / correct.size)
    assert interval.estimate == pytest.approx(p)
    assert interval.low == pytest.approx(p - half, abs=0.01)
    assert interval.high == pytest.approx(p + half, abs=0.01)
    assert bootstrap_accuracy(correct, draws=500, seed=1) == bootstrap_accuracy(
        correct, draws=500, seed=1
    )  # seeded: deterministic
    with pytest.raises(ValueError, match="seeds, clips"):
        bootstrap_accuracy(np.zeros((2, 3, 4)))


def test_seed_spread_widens_the_interval():
    clips = np.random.default_rng(0).random(200) < 0.5
    same = np.stack([clips] * 3)  # three seeds that agree: only the clips vary
    spread = same.copy()
    spread[0, :40], spread[2, :40] = True, False  # seeds that disagree on 40 clips
    assert paired_bootstrap_difference(same, same).high == 0.0
    narrow, wide = bootstrap_accuracy(same, seed=0), bootstrap_accuracy(spread, seed=0)
    assert wide.high - wide.low > narrow.high - narrow.low


def test_permutation_p_equals_exact_enumeration():
    rng = np.random.default_rng(3)
    a = (rng.random((2, 10)) < 0.7).astype(float)
    b = (rng.random((2, 10)) < 0.4).astype(float)
    d = (a - b).mean(0)
    observed = abs(d.mean())
    flips = np.array(list(itertools.product((-1.0, 1.0), repeat=10)))
    exact = np.mean(np.abs(flips @ d) / 10 >= observed - 1e-12)
    assert paired_permutation_p(a, b, draws=20000, seed=0) == pytest.approx(exact, abs=0.01)
    assert paired_permutation_p(a, a) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        paired_permutation_p(a, b[:1])


def test_holm_on_known_p_values():
    # sorted 0.01, 0.02, 0.03, 0.04 (m = 4): 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1 (0.6 * 2 = 1.2)
    adjusted = holm([float("nan"), 0.01, 0.04])  # NaN (the baseline's row) is not in the family
    assert np.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.02, 0.04])


def _simulated_pair(rng, clips, seeds):
    """Two classifiers on the same clips: p(correct) = sigmoid(skill + clip ease + seed effect)."""
    ease = rng.normal(0.0, 1.5, size=clips)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    a = rng.random((seeds, clips)) < sigmoid(0.3 + ease + rng.normal(0, 0.2, (seeds, 1)))
    b = rng.random((seeds, clips)) < sigmoid(-0.2 + ease + rng.normal(0, 0.2, (seeds, 1)))
    return a, b


def test_paired_interval_covers_the_true_difference_at_about_its_rate():
    """The population difference (clip ease and seed effects integrated out by a large sample)
    is covered by about 95% of the intervals of 200 simulated studies of 120 clips x 3 seeds."""
    truth_rng = np.random.default_rng(123)
    a, b = _simulated_pair(truth_rng, 50_000, 20)
    truth = a.mean() - b.mean()
    rng = np.random.default_rng(0)
    covered = []
    for study in range(200):
        a, b = _simulated_pair(rng, 120, 3)
        interval = paired_bootstrap_difference(a, b, draws=500, seed=study)
        covered.append(interval.low <= truth <= interval.high)
    assert 0.90 <= np.mean(covered) <= 0.99
