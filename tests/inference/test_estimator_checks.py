"""scikit-learn's own estimator checks (``parametrize_with_checks``) on every estimator,
at settings small enough for the suite (the deep methods with a one-layer
autoencoder).  DeepDPM gets 25 epochs: its first split
step comes after the burn-in, and check_clustering asks it to find three blobs
from one cluster (ARI > 0.4)."""

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from bnpdeep import (
    DBSCAN,
    DCN,
    DEC,
    DEPICT,
    IDEC,
    Autoencoder,
    BayesianGMM,
    CollapsedGibbs,
    DeepDPM,
    DeepDPMAE,
    DistributedDeepDPM,
    DistributedSubclusterSampler,
    GaussianMixtureEM,
    KMeans,
    MeanFieldSVI,
    MemoizedVB,
    SubclusterSampler,
)

ESTIMATORS = [KMeans(n_clusters=3, n_init=1), GaussianMixtureEM(n_clusters=3), DBSCAN(),
              BayesianGMM(truncation=5), CollapsedGibbs(max_iter=10),
              SubclusterSampler(max_iter=20), DistributedSubclusterSampler(max_iter=20),
              MemoizedVB(max_laps=5),
              MeanFieldSVI(truncation=5, max_epochs=10), DeepDPM(max_epochs=25),
              DistributedDeepDPM(max_epochs=25)]


def _tiny_autoencoder():
    return Autoencoder(hidden=(16,), embedding_dim=2, epochs=10, batch_size=32)


# the deep methods with an autoencoder small enough for the checks' data
ESTIMATORS += [Autoencoder(hidden=(16,), embedding_dim=2, epochs=3)] + [
    cls(3, autoencoder=_tiny_autoencoder(), max_epochs=5) for cls in (DEC, IDEC, DCN, DEPICT)
] + [DeepDPMAE(autoencoder=_tiny_autoencoder(), deepdpm=DeepDPM(max_epochs=25),
               alternations=1, finetune_epochs=1)]


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
