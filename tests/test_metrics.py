import math

import numpy as np
import pytest

from domainlm.metrics import compute, concordance_index, pearson, rm2, spearman


def brute_force_ci(y, p):
    """Every ordered pair with y_i > y_j: 1 if p_i > p_j, 0.5 on a prediction tie."""
    score = pairs = 0
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] > y[j]:
                pairs += 1
                score += 1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0
    return score / pairs if pairs else float("nan")


def deepdta_cindex(Y, P):
    """Transcription of DeepDTA source/emetrics.py get_cindex: returns (ci, pairs counted)."""
    summ = pair = 0
    for i in range(1, len(Y)):
        for j in range(0, i):
            if Y[i] > Y[j]:
                pair += 1
                summ += 1 * (P[i] > P[j]) + 0.5 * (P[i] == P[j])
    return summ / pair, pair


def deepdta_rm2(ys_orig, ys_line):
    """Transcription of DeepDTA source/emetrics.py get_rm2 and its helpers."""
    y_obs, y_pred = np.array(ys_orig), np.array(ys_line)
    y_obs_mean, y_pred_mean = np.mean(y_obs), np.mean(y_pred)
    mult = sum((y_pred - y_pred_mean) * (y_obs - y_obs_mean)) ** 2
    r2 = mult / float(sum((y_obs - y_obs_mean) ** 2) * sum((y_pred - y_pred_mean) ** 2))
    k = sum(y_obs * y_pred) / float(sum(y_pred * y_pred))
    r02 = 1 - sum((y_obs - k * y_pred) ** 2) / float(sum((y_obs - y_obs_mean) ** 2))
    return r2 * (1 - np.sqrt(np.absolute(r2 * r2 - r02 * r02)))


def test_concordance_index_equals_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 40))
        y = rng.integers(0, int(rng.integers(1, 6)), n).astype(float)  # few distinct values: many ties
        p = rng.integers(0, int(rng.integers(1, 6)), n).astype(float)
        got, want = concordance_index(y, p), brute_force_ci(y, p)
        assert (math.isnan(got) and math.isnan(want)) or got == want, (y, p)
    for _ in range(3):
        y, noise = rng.normal(size=600).round(1), rng.normal(size=600)
        p = (y + noise).round(1)
        assert concordance_index(y, p) == brute_force_ci(y, p)


def test_concordance_index_hand_computed():
    assert concordance_index([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 3)  # (2,1) ok, (3,1) ok, (3,2) wrong
    assert concordance_index([1, 2, 3], [1, 1, 2]) == pytest.approx(2.5 / 3)  # (2,1) is a prediction tie
    assert concordance_index([1, 1, 2], [3, 2, 1]) == 0.0  # the y tie is not comparable
    assert concordance_index([3, 1], [0, 1]) == 0.0
    assert concordance_index([1, 2, 3], [5, 5, 5]) == 0.5
    assert math.isnan(concordance_index([2, 2, 2], [1, 2, 3]))


def test_deepdta_cindex_counts_about_half_the_pairs():
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=300), rng.normal(size=300)
    deepdta, pairs = deepdta_cindex(y, p)
    assert 0.4 < pairs / (300 * 299 / 2) < 0.6
    assert deepdta != concordance_index(y, p)
    order = np.argsort(y)  # sorted by y, every comparable pair has i > j and Y[i] > Y[j]
    assert deepdta_cindex(y[order], p[order])[0] == pytest.approx(concordance_index(y, p))


def test_rm2_matches_deepdta_and_hand_values():
    rng = np.random.default_rng(2)
    for _ in range(5):
        y = rng.normal(7, 1, size=200)
        p = 0.6 * y + rng.normal(2, 0.7, size=200)
        assert rm2(y, p) == pytest.approx(deepdta_rm2(y, p), rel=1e-12)
    assert rm2([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert rm2([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)  # slope k = 0.5 fits exactly, r2 = 1
    # y = (1, 2, 3), p = (1, 3, 2): Pearson 0.5 so r2 = 1/4; k = 13/14, r02 = 1 - (378/196) / 2 = 1/28
    assert rm2([1, 2, 3], [1, 3, 2]) == pytest.approx(0.25 * (1 - math.sqrt(1 / 16 - 1 / 784)))
    assert math.isnan(rm2([1, 2, 3], [5, 5, 5]))


@pytest.mark.filterwarnings("error")
def test_constant_predictions_give_nan_correlations():
    constant = np.full(3, 0.1)  # np.std of this is 1.4e-17, not 0
    for metric in (pearson, spearman, rm2):
        assert math.isnan(metric([1.0, 2.0, 3.0], constant))


def test_compute_knows_ci_and_rm2():
    out = compute(["mse", "ci", "rm2", "pearson"], [1, 2, 3], [1, 3, 2])
    assert out["ci"] == pytest.approx(2 / 3)
    assert out["mse"] == pytest.approx(2 / 3)
    assert out["rm2"] == pytest.approx(rm2([1, 2, 3], [1, 3, 2]))
    with pytest.raises(ValueError):
        concordance_index([1, float("nan")], [1, 2])
