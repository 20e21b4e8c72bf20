"""scikit-learn's own estimator checks (``parametrize_with_checks``) on the estimators
that pass all of them, at settings small enough for the suite."""

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from bnpdeep import (
    DBSCAN,
    BayesianGMM,
    CollapsedGibbs,
    GaussianMixtureEM,
    KMeans,
    MemoizedVB,
    SubclusterSampler,
)

ESTIMATORS = [KMeans(n_clusters=3, n_init=1), GaussianMixtureEM(n_clusters=3), DBSCAN(),
              BayesianGMM(truncation=5), CollapsedGibbs(max_iter=10),
              SubclusterSampler(max_iter=20), MemoizedVB(max_laps=5)]


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
