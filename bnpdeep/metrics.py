"""Clustering metrics against ground-truth labels.

ACC uses the optimal one-to-one matching of clusters to classes (Hungarian
algorithm, scipy's ``linear_sum_assignment``); NMI and ARI are scikit-learn's.
Labels may be any integers (-1 for noise is one more cluster).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _pair(y_true, y_pred):
    a, b = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y_true has {a.size} labels but y_pred has {b.size}")
    return a, b


def accuracy(y_true, y_pred) -> float:
    """Fraction of points correctly labelled under the best one-to-one matching."""
    a, b = _pair(y_true, y_pred)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((bi.max() + 1, ai.max() + 1))
    np.add.at(table, (bi, ai), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / a.size)


def nmi(y_true, y_pred) -> float:
    a, b = _pair(y_true, y_pred)
    return float(normalized_mutual_info_score(a, b))


def ari(y_true, y_pred) -> float:
    a, b = _pair(y_true, y_pred)
    return float(adjusted_rand_score(a, b))


def k_error(k_found: int, k_true: int) -> int:
    return abs(int(k_found) - int(k_true))


def k_within(k_found: int, k_true: int, rel: float = 0.1) -> bool:
    """|K found - K true| <= max(1, rel * K true)."""
    return k_error(k_found, k_true) <= max(1.0, rel * k_true)


def evaluate(y_true, y_pred) -> dict:
    a, b = _pair(y_true, y_pred)
    return {"nmi": nmi(a, b), "ari": ari(a, b), "acc": accuracy(a, b),
            "k_true": int(np.unique(a).size), "k_found": int(np.unique(b).size)}
