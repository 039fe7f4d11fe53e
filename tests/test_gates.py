"""Gated heads: threshold calibration (Clopper–Pearson) and the gate classifier."""
import math

import numpy as np
import pytest
import torch

from netsurgery.errors import UsageError
from netsurgery.surgery.gates import (calibrate_threshold, clopper_pearson_lower,
                                      minimum_positives)
from netsurgery.training.gate_fit import fit_gate, gate_scores


@pytest.mark.parametrize("successes, trials, expected", [
    # scipy.stats.beta.ppf(0.05, x, n - x + 1), computed once by hand
    (9, 10, 0.6058366975634952),
    (95, 100, 0.8977466223567255),
    (290, 300, 0.9441152594854414),
    (1, 20, 0.0025613787765302806),
])
def test_clopper_pearson_matches_the_beta_quantile(successes, trials, expected):
    assert clopper_pearson_lower(successes, trials, 0.95) == pytest.approx(expected, abs=1e-12)


def test_clopper_pearson_edges():
    assert clopper_pearson_lower(0, 10) == 0.0
    assert clopper_pearson_lower(10, 10) == pytest.approx(0.05 ** 0.1)  # (1-c)^(1/n)
    with pytest.raises(ValueError):
        clopper_pearson_lower(11, 10)


def test_minimum_positives():
    # all n pass: bound 0.05^(1/n) ≥ 0.99 first at n = 299 (0.05^(1/298) = 0.98999...)
    assert minimum_positives(0.99) == 299
    assert 0.05 ** (1 / 298) < 0.99 <= 0.05 ** (1 / 299)
    assert minimum_positives(0.9) == 29


def test_calibration_keeps_the_bound_and_is_the_largest_threshold():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 400)
    cal = calibrate_threshold(scores, recall=0.9, confidence=0.95)
    passing = int((scores >= cal.threshold).sum())
    assert passing == cal.passing
    assert clopper_pearson_lower(passing, 400) >= 0.9
    # one step stricter (the next larger score) would break the bound
    stricter = np.min(scores[scores > cal.threshold])
    assert clopper_pearson_lower(int((scores >= stricter).sum()), 400) < 0.9
    # known distribution: with 400 uniform scores and recall 0.9 at 95 %, about 373 pass
    # (the smallest x with the bound ≥ 0.9), so the threshold sits near the 7th percentile
    assert passing == next(x for x in range(400) if clopper_pearson_lower(x, 400) >= 0.9)
    assert 0.04 < cal.threshold < 0.10


def test_calibration_ties_pass_together():
    scores = [0.5] * 50 + [0.9] * 10
    cal = calibrate_threshold(scores, recall=0.9)
    assert cal.threshold == 0.5 and cal.passing == 60


def test_calibration_refuses_too_few_positives():
    with pytest.raises(UsageError, match="needs at least 29"):
        calibrate_threshold(np.linspace(0, 1, 28), recall=0.9)
    with pytest.raises(UsageError, match="--recall"):
        calibrate_threshold([0.5] * 100, recall=1.0)


def test_fit_gate_separates_a_planted_signal():
    """Positives carry a bright spot in channel 3 at a random place; the fitted classifier
    (with its score computed as the Darknet layers compute it) must rank them first."""
    gen = torch.Generator().manual_seed(1)
    n, c, h, w = 200, 8, 6, 6
    features = torch.randn(n, c, h, w, generator=gen) * 0.3
    positive = np.arange(n) % 4 == 0
    for i in np.flatnonzero(positive):
        y, x = int(i * 7 % h), int(i * 5 % w)
        features[i, 3, y, x] += 6.0
    weights = fit_gate(features, positive, hidden=4, epochs=40, seed=0)
    assert weights.hidden_weights.shape == (4, c) and weights.score_weights.shape == (1, 4)
    scores = gate_scores(weights, features)
    auc = (scores[positive][:, None] > scores[~positive][None, :]).mean()
    assert auc > 0.98  # 0.992 measured with these settings
    # the score is the Darknet arithmetic: 1×1 conv, leaky 0.1, global mean, 1×1 conv, logistic
    f = features[0].numpy().reshape(c, -1)
    hidden = weights.hidden_weights @ f + weights.hidden_biases[:, None]
    hidden = np.where(hidden > 0, hidden, 0.1 * hidden).mean(axis=1)
    z = float(weights.score_weights @ hidden + weights.score_bias)
    assert scores[0] == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-5)
