"""scikit-learn's own estimator checks (``parametrize_with_checks``) on the estimators
that pass all of them, at settings small enough for the suite; DeepDPM, whose
every fit takes seconds, on scikit-learn's clustering check alone."""

import warnings

from sklearn.utils.estimator_checks import check_clustering, parametrize_with_checks

from bnpdeep import (
    DBSCAN,
    BayesianGMM,
    CollapsedGibbs,
    DeepDPM,
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


def test_deepdpm_finds_the_three_blobs_of_scikit_learns_clustering_check():
    """check_clustering: 50 points in three blobs, ARI > 0.4 from the labels, the same
    labels from fit_predict, integer labels 0..K-1, and more (it refits several
    times)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_clustering("DeepDPM", DeepDPM())
