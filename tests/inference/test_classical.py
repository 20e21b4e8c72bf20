"""Classical baselines: estimator conventions and results on known mixtures."""

import numpy as np
import pytest
from bnpdeep.inference.classical import (
    CLASSICAL_METHODS,
    DBSCAN,
    BayesianGMM,
    GaussianMixtureEM,
    KMeans,
    knee_eps,
)
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from bnpdeep.data import make_mixture
from bnpdeep.metrics import ari


@pytest.fixture(scope="module")
def blobs():
    return make_mixture(600, 2, 4, separation=8.0, seed=3)


@pytest.mark.parametrize("cls", [KMeans, GaussianMixtureEM])
def test_given_k_methods_recover_separated_blobs(cls, blobs):
    X, y = blobs
    est = cls(n_clusters=4, random_state=0)
    assert est.fit(X) is est
    assert est.n_clusters_ == 4 and ari(y, est.labels_) > 0.98
    assert np.array_equal(est.predict(X), est.labels_)
    assert est.fit_time_ > 0 and est.n_features_in_ == 2


def test_dbscan_finds_k_and_marks_noise(blobs):
    X, y = blobs
    est = DBSCAN().fit(X)
    assert est.n_clusters_ == 4
    kept = est.labels_ >= 0
    assert est.noise_fraction_ < 0.1 and ari(y[kept], est.labels_[kept]) > 0.98
    assert est.eps_ == pytest.approx(knee_eps(X, est.min_samples_))
    # new points: the label of the nearest core point, -1 far away
    pred = est.predict(np.vstack([X[:20], [[1e3, 1e3]]]))
    assert pred[-1] == -1 and np.mean(pred[:-1] == est.labels_[:20]) > 0.9


def test_knee_eps_lies_between_within_and_between_cluster_distances(blobs):
    X, _ = blobs
    eps = knee_eps(X, 4)
    assert 0.1 < eps < 3.0


def test_bayesian_gmm_prunes_components(blobs):
    X, y = blobs
    est = BayesianGMM(random_state=0).fit(X)
    assert est.n_clusters_ == 4 and ari(y, est.labels_) > 0.98
    assert set(np.unique(est.labels_)) == set(range(est.n_clusters_))
    assert np.array_equal(est.predict(X), est.labels_)


def test_conventions_and_errors(blobs):
    X, _ = blobs
    for cls in CLASSICAL_METHODS.values():
        est = cls()
        clone(est)                                  # constructor stores arguments only
        with pytest.raises(NotFittedError):
            est.predict(X)
    with pytest.raises(ValueError, match="needs n_clusters"):
        KMeans(n_clusters=None).fit(X)
    with pytest.raises(ValueError, match="exceeds the 600 rows"):
        GaussianMixtureEM(n_clusters=601).fit(X)


def test_result_carries_metrics(blobs):
    X, y = blobs
    r = KMeans(n_clusters=4, random_state=0).fit(X).result(y)
    s = r.summary()
    assert s["method"] == "kmeans" and s["n_clusters"] == 4 and s["nmi"] > 0.95
    assert "ACC=" in r.row()


def test_mixture_baselines_predict_proba_columns_are_the_labels(blobs):
    """Rows sum to 1, argmax is predict, and BGM's columns follow labels_ (the
    components the training rows took first): on the training rows the mass outside
    the first n_clusters_ columns is what scikit-learn leaves on unused components."""
    X, _ = blobs
    for est in (BayesianGMM(truncation=12, random_state=0), GaussianMixtureEM(4, random_state=0)):
        est.fit(X)
        proba = est.predict_proba(X)
        np.testing.assert_allclose(proba.sum(1), 1.0)
        np.testing.assert_array_equal(proba.argmax(1), est.predict(X))
        np.testing.assert_array_equal(proba.argmax(1), est.labels_)
    bgm = BayesianGMM(truncation=12, random_state=0).fit(X)
    proba = bgm.predict_proba(X)
    assert proba.shape == (X.shape[0], 12)
    np.testing.assert_allclose(np.sort(proba, 1), np.sort(bgm.estimator_.predict_proba(X), 1))
    far = X[:3] + 100.0
    np.testing.assert_array_equal(bgm.predict(far), bgm.predict_proba(far).argmax(1))
