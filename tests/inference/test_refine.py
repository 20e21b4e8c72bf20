"""Sub-cluster refinement by EM of each cluster's two-component sub-mixture."""

import numpy as np
import torch
from bnpdeep.inference import moves
from bnpdeep.inference.mcmc import default_model
from bnpdeep.inference.subpartition import own_pair_loglik, refine_subclusters, two_means
from sklearn.metrics import adjusted_rand_score

from bnpdeep.linalg import as_tensor

_CENTRE, _TIGHT = np.array([1.5, 0.0]), 0.15


def _tight_and_wide(seed=0, n=300):
    """A tight round cluster inside the edge of a wide one: 2-means cuts the wide one
    in the middle, a two-Gaussian mixture with full covariances does not."""
    g = np.random.default_rng(seed)
    a = g.normal(size=(n, 2)) * _TIGHT
    b = g.normal(size=(n, 2)) + _CENTRE
    return np.vstack([a, b]), np.repeat([0, 1], n)


def _bayes_labels(X):
    """The classification under the true densities and equal weights."""
    from scipy.stats import multivariate_normal as mvn

    return (mvn.logpdf(X, _CENTRE, np.eye(2)) > mvn.logpdf(X, np.zeros(2), _TIGHT ** 2 * np.eye(2))
            ).astype(int)


def _log_h(fam, weights, X, h):
    sub = fam.suff_stats_labels(X, h, 2)
    return float(moves.log_split_ratio(weights, fam, 1.0, sub[[0]] + sub[[1]],
                                       sub[[0]], sub[[1]])[0])


def test_refinement_finds_the_full_covariance_split_that_2means_misses():
    X, y = _tight_and_wide()
    model = default_model(X)
    fam, Xt = model.family, as_tensor(X)
    z = torch.zeros(len(X), dtype=torch.long)
    start = two_means(Xt)
    refined = refine_subclusters(fam, Xt, z, start, 1, n_iter=50)
    bayes = _bayes_labels(X)
    assert adjusted_rand_score(bayes, start.numpy()) < 0.6
    # refined: the optimal classifier's partition up to a few boundary points
    agree = np.mean(refined.numpy() == bayes)
    assert max(agree, 1 - agree) > 0.97
    assert _log_h(fam, model.weights, Xt, refined) > _log_h(fam, model.weights, Xt, start)


def test_refinement_is_per_cluster_and_batched_equals_one_at_a_time():
    """Clusters never exchange rows, and refining K clusters at once gives each
    cluster what refining it alone gives."""
    X1, _ = _tight_and_wide(1, 150)
    X2, _ = _tight_and_wide(2, 150)
    X = np.vstack([X1, X2 + np.array([0.0, 1.0])])      # overlapping on purpose
    fam = default_model(X).family
    Xt = as_tensor(X)
    z = torch.repeat_interleave(torch.tensor([0, 1]), 300)
    zs = torch.cat([two_means(Xt[:300]), two_means(Xt[300:])])
    both = refine_subclusters(fam, Xt, z, zs, 2, n_iter=10)
    for rows in (slice(0, 300), slice(300, 600)):
        alone = refine_subclusters(fam, Xt[rows], torch.zeros(300, dtype=torch.long),
                                   zs[rows], 1, n_iter=10)
        assert torch.equal(both[rows], alone)


def test_own_pair_loglik_reads_each_rows_own_two_subclusters():
    X, _ = _tight_and_wide(3, 100)
    fam = default_model(X).family
    Xt = as_tensor(X)
    z = torch.tensor(np.random.default_rng(0).integers(0, 3, size=len(X)))
    sub = fam.sample_posterior(fam.suff_stats_labels(Xt, 2 * z + two_means(Xt), 6))
    full = fam.log_likelihood(Xt, sub)
    rows = torch.arange(len(X))
    got = own_pair_loglik(fam, Xt, z, 3, sub)
    torch.testing.assert_close(got, torch.stack([full[rows, 2 * z], full[rows, 2 * z + 1]], 1))


def test_grouped_subpartitions_equal_one_group_at_a_time():
    """Every grouped sub-partition gives each group exactly what the one-group call
    gives on that group's rows alone, and does not depend on the rows' order within
    the batch: what makes a batch of moves a composition of exact steps."""
    from bnpdeep.inference.subpartition import (
        carve_groups,
        refined_two_means_groups,
        two_means_groups,
        whitened_two_means_groups,
    )

    g = np.random.default_rng(7)
    X = as_tensor(np.vstack([g.normal(size=(120, 3)) @ g.normal(size=(3, 3)) + 4 * c
                             for c in range(3)]))
    fam = default_model(X).family
    grp = torch.as_tensor(g.integers(0, 3, size=360))
    axes = torch.as_tensor(g.normal(size=(3, 3)))
    anchors = torch.stack([torch.nonzero(grp == c)[0, 0] for c in range(3)])
    row_keys = torch.as_tensor(g.random(360))

    def keys_of(rows_x):          # each row keeps its own key wherever it appears
        return row_keys[torch.cdist(rows_x, X).argmin(1)]
    calls = {
        "two_means": lambda X, gg, k, sel, anc: two_means_groups(X, gg, k, axes[sel]),
        "principal": lambda X, gg, k, sel, anc: two_means_groups(X, gg, k),
        "whitened": lambda X, gg, k, sel, anc: whitened_two_means_groups(X, gg, k, axes[sel]),
        "refined": lambda X, gg, k, sel, anc: refined_two_means_groups(fam, X, gg, k, axes[sel]),
        "refined on 60 rows": lambda X, gg, k, sel, anc: refined_two_means_groups(
            fam, X, gg, k, axes[sel], keys=keys_of(X), max_rows=60),
        "carve": lambda X, gg, k, sel, anc: carve_groups(fam, X, gg, k, anc),
    }
    perm = torch.as_tensor(g.permutation(360))
    inv = torch.argsort(perm)
    for name, call in calls.items():
        both = call(X, grp, 3, slice(None), anchors)
        shuffled = call(X[perm], grp[perm], 3, slice(None), inv[anchors])[inv]
        assert torch.equal(both, shuffled), name
        for c in range(3):
            rows = grp == c
            alone = call(X[rows], torch.zeros(int(rows.sum()), dtype=torch.long), 1,
                         slice(c, c + 1), torch.zeros(1, dtype=torch.long))
            assert torch.equal(both[rows], alone), (name, c)


def test_refinement_on_a_row_sample_assigns_every_row():
    """EM on a sample of 400 of 6,000 rows, then every row to the better of the two
    fitted sub-components: the sampled rows keep the sample's own refinement up to a
    few boundary points, and all rows agree with the optimal classifier nearly as
    well as refining on every row does."""
    X, _ = _tight_and_wide(4, 3000)
    fam = default_model(X).family
    Xt = as_tensor(X)
    z = torch.zeros(len(X), dtype=torch.long)
    start = two_means(Xt)
    sample = torch.zeros(len(X), dtype=torch.bool)
    sample[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:400]] = True
    got = refine_subclusters(fam, Xt, z, start, 1, n_iter=50, sample=sample)
    alone = refine_subclusters(fam, Xt[sample], z[sample], start[sample], 1, n_iter=50)
    assert float((got[sample] == alone).double().mean()) > 0.98
    bayes = _bayes_labels(X)
    agree = np.mean(got.numpy() == bayes)
    assert max(agree, 1 - agree) > 0.97
    assert adjusted_rand_score(bayes, start.numpy()) < 0.6
