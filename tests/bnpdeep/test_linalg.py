"""Batched linear algebra of bnpdeep.linalg against scipy."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from bnpdeep.linalg import cholesky, mahalanobis_points


@pytest.mark.parametrize("d,k", [(2, 3), (2, 50), (4, 30), (5, 40), (16, 32)])
def test_mahalanobis_points_matches_scipy(d, k):
    """Both paths (the whitened product for few clusters or larger d, the expanded
    quadratic form for d <= 4 and K >= 24) against scipy's Gaussian log-density,
    on data far from the origin relative to the clusters' spread (the expanded
    form's cancellation is at its worst there)."""
    rng = np.random.default_rng(d * 100 + k)
    X = rng.normal(size=(300, d)) * 0.2 + 3.0
    means = rng.normal(size=(k, d)) * 0.2 + 3.0
    A = rng.normal(size=(k, d, d)) * 0.1
    covs = A @ A.transpose(0, 2, 1) + 0.01 * np.eye(d)
    maha = mahalanobis_points(cholesky(torch.as_tensor(covs)), torch.as_tensor(X),
                              torch.as_tensor(means)).numpy()
    assert maha.shape == (300, k)
    for c in range(k):
        dist = multivariate_normal(means[c], covs[c])
        # log N = -0.5 (maha + log det(2 pi Sigma))
        expect = -2.0 * (dist.logpdf(X) - dist.logpdf(means[c]))
        np.testing.assert_allclose(maha[:, c], expect, rtol=1e-9, atol=1e-9)
    assert (maha >= 0).all()


def test_mahalanobis_zero_at_the_mean():
    """A point at a cluster's mean has distance 0, not a tiny negative number."""
    means = torch.randn(30, 2, dtype=torch.float64) * 5
    covs = torch.eye(2, dtype=torch.float64).mul(1e-4).expand(30, 2, 2).contiguous()
    maha = mahalanobis_points(cholesky(covs), means.clone(), means)
    assert (maha >= 0).all()
    assert float(maha.diagonal().abs().max()) < 1e-6


@pytest.mark.parametrize("d, n", [(1, 200), (2, 200), (4, 200), (5, 200), (16, 1000),
                                  (64, 200), (64, 1000), (24, 70_000)])
def test_scatter_outer_matches_a_loop(d, n):
    """Weighted outer-product sums per group (feature-major for d <= 4, row chunks
    above, per-group GEMMs from d = 24 with enough rows per group, over three blocks
    of rows at N = 70,000) against a plain loop over groups; an empty group gives
    zeros."""
    from bnpdeep.linalg import scatter_outer

    rng = np.random.default_rng(d)
    X = rng.normal(size=(n, d))
    w = rng.uniform(size=n)
    z = rng.integers(0, 6, size=n)
    z[z == 3] = 4                                    # group 3 is empty
    outer = scatter_outer(torch.as_tensor(X), torch.as_tensor(z), 7,
                          torch.as_tensor(X * w[:, None])).numpy()
    for c in range(7):
        rows = z == c
        np.testing.assert_allclose(outer[c], (X[rows] * w[rows, None]).T @ X[rows], atol=1e-12)


@pytest.mark.parametrize("d, n, k", [(3, 300, 5), (3, 300, 20), (40, 700, 16)])
def test_weighted_outer_matches_a_loop(d, n, k):
    """sum_i w_ik x_i x_i^T per column of w, against a loop: K batched products
    (K < 16) and the rows' outer products in 2 MiB chunks (K >= 16; at d = 40 a
    chunk is 163 rows, so 700 rows span several)."""
    from bnpdeep.linalg import weighted_outer

    rng = np.random.default_rng(k)
    X = rng.normal(size=(n, d))
    w = rng.uniform(size=(n, k))
    got = weighted_outer(torch.as_tensor(X), torch.as_tensor(w)).numpy()
    for c in range(k):
        np.testing.assert_allclose(got[c], (X * w[:, c:c + 1]).T @ X, atol=1e-10)

