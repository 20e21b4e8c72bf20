"""Classical baselines behind the bnpdeep estimator interface.

* :class:`KMeans` and :class:`GaussianMixtureEM` are told K (``n_clusters``);
* :class:`DBSCAN` finds K from density; its radius ``eps`` defaults to the knee
  of the sorted k-distance curve (Ester et al. 1996, section 4.2);
* :class:`BayesianGMM` is scikit-learn's truncated variational DP mixture
  (Blei & Jordan 2006), which finds K by emptying components.

All four follow scikit-learn's conventions (see :mod:`bnpdeep.inference.base`)
and delegate the numerics to scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn import cluster as skcluster
from sklearn import mixture as skmixture
from sklearn.neighbors import NearestNeighbors

from .base import ClusterEstimator


def _check_k(k, n_rows: int, name: str) -> int:
    if k is None or int(k) != k or int(k) < 1:
        raise ValueError(f"{name} needs n_clusters, a positive integer; got {k!r}")
    if int(k) > n_rows:
        raise ValueError(f"{name}: n_clusters={int(k)} exceeds the {n_rows} rows of X")
    return int(k)


class KMeans(ClusterEstimator):
    """Lloyd's k-means with k-means++ seeding (scikit-learn), given K."""

    method_name = "kmeans"

    def __init__(self, n_clusters: int = 8, n_init: int = 10, max_iter: int = 300,
                 random_state=None):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def _fit(self, X):
        k = _check_k(self.n_clusters, X.shape[0], "KMeans")
        self.estimator_ = skcluster.KMeans(n_clusters=k, n_init=self.n_init,
                                           max_iter=self.max_iter,
                                           random_state=self.random_state).fit(X)
        self.labels_ = self.estimator_.labels_.astype(int)
        self.cluster_centers_ = self.estimator_.cluster_centers_
        self.n_clusters_ = int(np.unique(self.labels_).size)
        self.inertia_ = float(self.estimator_.inertia_)
        self.n_iter_ = int(self.estimator_.n_iter_)

    def _predict(self, X):
        return self.estimator_.predict(X)


def _check_covariance_memory(covariance_type: str, n_components: int, d: int, name: str):
    """scikit-learn's mixtures hold a covariance and a precision Cholesky factor per
    component ("full") or one of each ("tied"), d x d each."""
    from bnpdeep.data import check_covariance_memory

    matrices = {"full": 2 * n_components + 1, "tied": 3}.get(covariance_type)
    if matrices is not None:
        check_covariance_memory(d, matrices=matrices,
                                what=f"{name} (covariance_type={covariance_type!r})")


class GaussianMixtureEM(ClusterEstimator):
    """Maximum-likelihood Gaussian mixture by EM (scikit-learn), given K."""

    method_name = "gmm"

    def _full_covariance(self) -> bool:
        return self.covariance_type in ("full", "tied")

    def __init__(self, n_clusters: int = 8, covariance_type: str = "full", n_init: int = 1,
                 max_iter: int = 200, reg_covar: float = 1e-6, random_state=None):
        self.n_clusters = n_clusters
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.reg_covar = reg_covar
        self.random_state = random_state

    def _fit(self, X):
        k = _check_k(self.n_clusters, X.shape[0], "GaussianMixtureEM")
        _check_covariance_memory(self.covariance_type, k, X.shape[1], "GaussianMixtureEM")
        self.estimator_ = skmixture.GaussianMixture(
            n_components=k, covariance_type=self.covariance_type, n_init=self.n_init,
            max_iter=self.max_iter, reg_covar=self.reg_covar,
            random_state=self.random_state).fit(X)
        self.labels_ = self.estimator_.predict(X).astype(int)
        self.n_clusters_ = int(np.unique(self.labels_).size)
        self.weights_ = self.estimator_.weights_
        self.means_ = self.estimator_.means_
        self.converged_ = bool(self.estimator_.converged_)
        self.n_iter_ = int(self.estimator_.n_iter_)

    def _predict(self, X):
        return self.estimator_.predict(X)

    def predict_proba(self, X) -> np.ndarray:
        """Responsibilities under the fitted mixture, one column per component."""
        X = self._validate_predict_data(X)
        return self.estimator_.predict_proba(X)

    def score_samples(self, X):
        """Per-point log density under the fitted mixture."""
        return self.estimator_.score_samples(self._validate_predict_data(X))


def knee_eps(X, min_samples: int) -> float:
    """DBSCAN radius from the k-distance curve (k = ``min_samples``).

    Sort every point's distance to its k-th neighbour; the knee is the point of
    the curve farthest from the chord joining its ends (the "Kneedle" rule).
    """
    k = min(int(min_samples), X.shape[0] - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    kd = np.sort(dist[:, -1])
    n = kd.size
    if n < 3 or kd[-1] == kd[0]:
        return float(max(kd[-1], 1e-12))
    x = np.linspace(0.0, 1.0, n)
    y = (kd - kd[0]) / (kd[-1] - kd[0])
    return float(max(kd[int(np.argmax(x - y))], 1e-12))


class DBSCAN(ClusterEstimator):
    """Density-based clustering (scikit-learn); noise points get label -1.

    ``eps=None`` picks the radius with :func:`knee_eps`; ``min_samples=None``
    uses max(5, 2 d): scikit-learn's default in low dimensions, Sander et al.'s
    (1998) 2 d rule above.  ``n_clusters_`` counts clusters, not noise.
    """

    method_name = "dbscan"

    def __init__(self, eps: float | None = None, min_samples: int | None = None):
        self.eps = eps
        self.min_samples = min_samples

    def _fit(self, X):
        m = int(self.min_samples) if self.min_samples is not None else max(5, 2 * X.shape[1])
        m = max(2, min(m, X.shape[0] - 1))
        eps = float(self.eps) if self.eps is not None else knee_eps(X, m)
        if eps <= 0:
            raise ValueError(f"DBSCAN needs eps > 0, got {eps}")
        self.eps_, self.min_samples_ = eps, m
        self.estimator_ = skcluster.DBSCAN(eps=eps, min_samples=m).fit(X)
        self.labels_ = self.estimator_.labels_.astype(int)
        self.n_clusters_ = int(np.unique(self.labels_[self.labels_ >= 0]).size)
        self.noise_fraction_ = float(np.mean(self.labels_ < 0))
        core = self.estimator_.core_sample_indices_
        self._core_X, self._core_labels = X[core], self.labels_[core]

    def _predict(self, X):
        """Label of the nearest core point if within eps, else -1 (noise)."""
        if self._core_X.shape[0] == 0:
            return np.full(X.shape[0], -1)
        dist, idx = NearestNeighbors(n_neighbors=1).fit(self._core_X).kneighbors(X)
        out = self._core_labels[idx[:, 0]].copy()
        out[dist[:, 0] > self.eps_] = -1
        return out


class BayesianGMM(ClusterEstimator):
    """scikit-learn's variational DP Gaussian mixture (stick-breaking, truncated).

    ``truncation`` caps the number of components (default max(30, 2 ``k_hint``)
    when a hint is given); K found is the number of non-empty clusters under the
    MAP assignment.
    """

    method_name = "bgm"

    def __init__(self, truncation: int = 30, weight_concentration: float | None = None,
                 covariance_type: str = "full", max_iter: int = 500, n_init: int = 1,
                 random_state=None):
        self.truncation = truncation
        self.weight_concentration = weight_concentration
        self.covariance_type = covariance_type
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    def _fit(self, X):
        t = int(min(self.truncation, X.shape[0]))
        if t < 1:
            raise ValueError(f"truncation must be positive, got {self.truncation}")
        _check_covariance_memory(self.covariance_type, t, X.shape[1], "BayesianGMM")
        self.estimator_ = skmixture.BayesianGaussianMixture(
            n_components=t, weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=self.weight_concentration,
            covariance_type=self.covariance_type, max_iter=self.max_iter,
            n_init=self.n_init, random_state=self.random_state).fit(X)
        raw = self.estimator_.predict(X)
        used, self.labels_ = np.unique(raw, return_inverse=True)
        self.n_clusters_ = int(used.size)
        # components as labels: those the training rows use, then the others
        self._order = np.concatenate([used, np.setdiff1d(np.arange(t), used)])
        self.weights_ = self.estimator_.weights_
        self.converged_ = bool(self.estimator_.converged_)
        self.n_iter_ = int(self.estimator_.n_iter_)

    def predict_proba(self, X) -> np.ndarray:
        """Responsibilities under the fitted q, one column per component (truncation
        columns): first the ``n_clusters_`` of ``labels_``, then the components no
        training row took, which :meth:`predict` labels from ``n_clusters_`` on."""
        X = self._validate_predict_data(X)
        return self.estimator_.predict_proba(X)[:, self._order]

    def _predict(self, X):
        return self.estimator_.predict_proba(X)[:, self._order].argmax(1)


CLASSICAL_METHODS = {"kmeans": KMeans, "gmm": GaussianMixtureEM, "dbscan": DBSCAN,
                     "bgm": BayesianGMM}
NEEDS_K = {"kmeans", "gmm"}
