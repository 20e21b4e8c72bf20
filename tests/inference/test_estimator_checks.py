"""scikit-learn's own estimator checks (``parametrize_with_checks``) on every estimator,
at settings small enough for the suite.  DeepDPM gets 25 epochs: its first split
step comes after the burn-in, and check_clustering asks it to find three blobs
from one cluster (ARI > 0.4)."""

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from bnpdeep import (
    DBSCAN,
    BayesianGMM,
    CollapsedGibbs,
    DeepDPM,
    GaussianMixtureEM,
    KMeans,
    MeanFieldSVI,
    MemoizedVB,
    SubclusterSampler,
)

ESTIMATORS = [KMeans(n_clusters=3, n_init=1), GaussianMixtureEM(n_clusters=3), DBSCAN(),
              BayesianGMM(truncation=5), CollapsedGibbs(max_iter=10),
              SubclusterSampler(max_iter=20), MemoizedVB(max_laps=5),
              MeanFieldSVI(truncation=5, max_epochs=10), DeepDPM(max_epochs=25)]


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
