"""Figures: what they count and compute, not how they look."""

import numpy as np

from bnpdeep import plots


def test_coclustering_is_the_frequency_of_sharing_a_cluster():
    draws = np.array([[0, 0, 1, 1],
                      [0, 1, 1, 1],
                      [2, 2, 2, 0],
                      [0, 0, 1, 2]])
    fig, sim = plots.coclustering(draws, max_points=4)
    expected = np.array([[np.mean(draws[:, i] == draws[:, j]) for j in range(4)]
                         for i in range(4)])
    np.testing.assert_allclose(sim, expected)
    assert sim[0, 1] == 0.75 and sim[2, 3] == 0.5
    np.testing.assert_allclose(np.diag(sim), 1.0)


def test_noise_labels_are_not_clusters():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) + 6, [[20.0, 20, 20]]]
    labels = np.r_[np.zeros(30, int), np.ones(30, int), [-1]]
    fig = plots.clusters_2d(X, {"dbscan": labels})
    assert fig.axes[0].get_title() == "dbscan (K=2)"
    assert fig.axes[0].get_xlabel() == "PCA 1"


def test_k_posterior_and_traces_accept_chains():
    fig = plots.k_posterior({"a": np.array([[3, 3, 4], [3, 4, 4]])})
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    np.testing.assert_allclose(heights, [0.5, 0.5])
    fig = plots.k_traces({"sampler": ("iteration", [[1, 2, 3], [1, 3, 3]]),
                          "vb": ("lap", [1, 2])})
    assert len(fig.axes[0].lines) == 3
