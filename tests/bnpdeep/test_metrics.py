"""Metrics against hand-computed cases."""

import math

import numpy as np
import pytest

from bnpdeep.metrics import accuracy, ari, evaluate, k_error, k_within, nmi


def test_accuracy_uses_best_matching():
    y = [0, 0, 0, 1, 1, 2]
    pred = [2, 2, 1, 0, 0, 1]          # best map 2->0, 0->1, 1->2: 5 of 6 right
    assert accuracy(y, pred) == pytest.approx(5 / 6)
    assert accuracy(y, [5, 5, 5, 7, 7, 9]) == 1.0


def test_accuracy_with_more_clusters_than_classes():
    # 4 clusters, 2 classes: only two clusters can be matched
    assert accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == pytest.approx(0.5)


def test_nmi_and_ari_hand_computed():
    y, p = [0, 0, 1, 1], [0, 0, 0, 1]
    # H(Y)=ln2, H(P)=-(3/4 ln 3/4 + 1/4 ln 1/4), I = H(Y) - H(Y|P) with H(Y|P)=3/4 * H(1/3,2/3)
    hy = math.log(2)
    hp = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    hyp = 0.75 * -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert nmi(y, p) == pytest.approx((hy - hyp) / ((hy + hp) / 2))
    # ARI: pair counts: sum_ij C(n_ij,2)=1, sum_a C(a,2)=2, sum_b C(b,2)=3, C(4,2)=6
    expected = (1 - 2 * 3 / 6) / (0.5 * (2 + 3) - 2 * 3 / 6)
    assert ari(y, p) == pytest.approx(expected)
    assert nmi(y, y) == pytest.approx(1.0) and ari(y, [1, 1, 0, 0]) == pytest.approx(1.0)


def test_k_error_and_evaluate():
    assert k_error(12, 15) == 3 and k_within(14, 15) and not k_within(12, 15)
    out = evaluate([0, 0, 1, 1], np.array([1, 1, 0, 2]))
    assert out["k_true"] == 2 and out["k_found"] == 3 and out["acc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="4 labels but y_pred has 3"):
        accuracy([0, 1, 1, 0], [0, 1, 1])
