"""Split/merge Hastings ratios: reverse moves cancel, and match the EPPF and marginals."""

import math

import numpy as np
import pytest
import torch
from bnpdeep.inference import moves
from bnpdeep.inference.mcmc import relabel
from bnpdeep.inference.moves import disjoint_pairs
from bnpdeep.inference.subcluster import log_split_proposal
from bnpdeep.inference.subpartition import two_means
from bnpdeep.models import (
    DiagonalGaussian,
    DirichletProcess,
    FiniteDirichlet,
    GaussianNIW,
    PitmanYor,
)

PRIORS = [DirichletProcess(0.8), PitmanYor(0.4, 1.5), FiniteDirichlet(6, 2.0)]


def _setup(seed=0):
    g = np.random.default_rng(seed)
    X = np.concatenate([g.normal(-2, 1, size=(7, 3)), g.normal(2, 1, size=(5, 3))])
    return X, np.r_[np.zeros(7, int), np.ones(5, int)]


@pytest.mark.parametrize("weights", PRIORS, ids=repr)
@pytest.mark.parametrize("family", [GaussianNIW, DiagonalGaussian], ids=lambda f: f.__name__)
def test_split_then_merge_cancels(weights, family):
    X, side = _setup()
    fam = family.weak(X)
    s = fam.suff_stats_labels(X, side, 2)
    whole = s[0] + s[1]
    k = 3                                   # the split cluster lives among 3 clusters
    up = moves.log_split_ratio(weights, fam, k, whole, s[0], s[1])
    down = moves.log_merge_ratio(weights, fam, k + 1, s[0], s[1])
    assert float(up + down) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("weights", PRIORS, ids=repr)
def test_split_ratio_is_the_posterior_ratio(weights):
    """log H_split equals log p(z') - log p(z) computed from the EPPF and marginals."""
    X, side = _setup(1)
    fam = GaussianNIW.weak(X)
    others = np.array([4.0, 2.0])          # two more clusters in the partition
    s = fam.suff_stats_labels(X, side, 2)
    lm = fam.log_marginal(s)
    whole = s[0] + s[1]
    before = weights.log_eppf(np.r_[others, 12.0]) + float(fam.log_marginal(whole)[0])
    after = weights.log_eppf(np.r_[others, 7.0, 5.0]) + float(lm.sum())
    got = moves.log_split_ratio(weights, fam, 3, whole, s[0], s[1])
    assert float(got) == pytest.approx(after - before, abs=1e-10)


@pytest.mark.parametrize("weights", PRIORS, ids=repr)
@pytest.mark.parametrize("family", [GaussianNIW, DiagonalGaussian], ids=lambda f: f.__name__)
def test_merge_ratio_is_the_posterior_ratio(weights, family):
    """log H_merge equals log p(z') - log p(z) from the EPPF and marginals, where z'
    merges two of the four clusters of z (with the block count off by one it failed
    for Pitman-Yor and the finite Dirichlet by 0.14-0.41 nats; the DP's factor is
    alpha whatever K)."""
    X, side = _setup(2)
    fam = family.weak(X)
    others = np.array([4.0, 2.0])
    s = fam.suff_stats_labels(X, side, 2)
    before = weights.log_eppf(np.r_[others, 7.0, 5.0]) + float(fam.log_marginal(s).sum())
    after = weights.log_eppf(np.r_[others, 12.0]) + float(fam.log_marginal(s[0] + s[1])[0])
    got = moves.log_merge_ratio(weights, fam, 4, s[0:1], s[1:2])
    assert float(got) == pytest.approx(after - before, abs=1e-10)


def _one_group_proposal(log_q, side_b, i, j):
    g = torch.zeros(log_q.shape[0], dtype=torch.long)
    return log_split_proposal(log_q, side_b, g, 1, torch.tensor([i]), torch.tensor([j]))[0]


def test_subcluster_split_and_merge_hastings_ratios_cancel():
    """With the same sub-cluster responsibilities, the sampler's full split ratio
    (posterior ratio minus log proposal) and its reverse merge ratio sum to zero."""
    X, side = _setup(2)
    fam = GaussianNIW.weak(X)
    w = DirichletProcess(1.0)
    log_q = torch.log_softmax(torch.randn(12, 2, dtype=torch.float64), 1)
    side_b = torch.as_tensor(side == 1)
    i, j = 0, 11
    lq = _one_group_proposal(log_q, side_b, i, j)
    s = fam.suff_stats_labels(X, side, 2)
    split = moves.log_split_ratio(w, fam, 2, s[0] + s[1], s[0], s[1]) - lq
    merge = moves.log_merge_ratio(w, fam, 3, s[0], s[1]) + lq
    assert float(split + merge) == pytest.approx(0.0, abs=1e-10)


def test_split_proposal_probabilities_sum_to_one():
    """Q over every split that puts the anchors apart is a distribution."""
    n = 6
    log_q = torch.log_softmax(torch.randn(n, 2, dtype=torch.float64), 1)
    i, j = 1, 4
    total = 0.0
    for mask in range(2 ** n):
        b = torch.tensor([(mask >> t) & 1 for t in range(n)], dtype=torch.bool)
        if b[i] or not b[j]:
            continue                        # i on side A, j on side B
        total += math.exp(float(_one_group_proposal(log_q, b, i, j)))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_two_means_is_order_invariant_and_separates_blobs():
    X, side = _setup(3)
    Xt = torch.as_tensor(X)
    h = two_means(Xt)
    perm = torch.randperm(12)
    h_perm = two_means(Xt[perm])
    same = torch.equal(h[perm], h_perm) or torch.equal(h[perm], 1 - h_perm)
    assert same
    assert torch.equal(h, torch.as_tensor(side)) or torch.equal(h, 1 - torch.as_tensor(side))


def test_mh_accept():
    assert bool(moves.mh_accept(0.0, uniform=0.999))
    assert not bool(moves.mh_accept(math.log(0.5), uniform=0.6))
    assert bool(moves.mh_accept(math.log(0.5), uniform=0.4))
    g = torch.Generator().manual_seed(0)
    acc = moves.mh_accept(torch.full((20000,), math.log(0.3)), generator=g)
    assert abs(float(acc.double().mean()) - 0.3) < 0.015


@pytest.mark.parametrize("weights", PRIORS, ids=repr)
def test_accept_in_sequence_matches_the_one_move_ratios(weights):
    """A batch of split and merge moves on disjoint clusters, decided in sequence, takes
    the decisions that the one-move ratios (log_split_ratio / log_merge_ratio at the
    number of blocks the earlier accepted moves left) take with the same uniforms."""
    g = np.random.default_rng(4)
    X = g.normal(size=(200, 2))
    fam = GaussianNIW.weak(X)
    labels = g.integers(0, 16, size=200)
    s = fam.suff_stats_labels(X, labels, 16)
    s1, s2 = s[0::2], s[1::2]
    is_split = torch.as_tensor(g.random(8) < 0.5)
    log_prop = torch.as_tensor(g.normal(size=8))
    terms = moves.log_split_terms(weights, fam, s1 + s2, s1, s2)
    log_terms = torch.where(is_split, terms - log_prop, log_prop - terms)
    for k0 in (3, 5):                     # FiniteDirichlet(6): splits at K = 6 are refused
        u = torch.as_tensor(g.random(8))
        got = moves.accept_in_sequence(weights, k0, log_terms, is_split, uniform=u)
        k = k0
        for m in range(8):
            a, b = s1[m], s2[m]
            if is_split[m]:
                ratio = moves.log_split_ratio(weights, fam, k, a + b, a, b)[0] - log_prop[m]
            else:
                ratio = moves.log_merge_ratio(weights, fam, k, a, b)[0] + log_prop[m]
            want = bool(moves.mh_accept(ratio, uniform=u[m]))
            assert bool(got[m]) == want
            k += (1 if is_split[m] else -1) * int(want)


def test_disjoint_pairs_are_unchanged_by_their_own_moves():
    """The kept anchor pairs of a batch are the same after any subset of their moves
    (splits with the anchors apart, merges) is applied: what makes the batch a
    composition of exact Metropolis-Hastings steps."""
    g = np.random.default_rng(5)
    for _ in range(300):
        n = 30
        z, _ = relabel(torch.as_tensor(g.integers(0, g.integers(1, 7), size=n)))
        pairs = torch.as_tensor(np.stack([g.choice(n, 2, replace=False) for _ in range(6)]))
        kept = disjoint_pairs(z, pairs)
        z2, fresh = z.clone(), int(z.max()) + 1
        for m in kept:
            i, j = pairs[m].tolist()
            if g.random() < 0.5:
                continue
            if z[i] == z[j]:                 # split: a random side per row, anchors apart
                rows = torch.nonzero(z == z[i]).flatten()
                side = torch.as_tensor(g.random(rows.numel()) < 0.5)
                side[rows == i], side[rows == j] = False, True
                z2[rows[side]] = fresh
                fresh += 1
            else:                            # merge
                z2[z == z[j]] = int(z[i])
        z2, _ = relabel(z2)
        assert disjoint_pairs(z2, pairs) == kept
        for m in set(range(6)) - set(kept):  # a dropped pair shares a cluster with a kept one
            taken = {int(c) for k in kept for c in z[pairs[k]]}
            assert {int(c) for c in z[pairs[m]]} & taken


def test_relabel_matches_sorted_unique():
    """relabel keeps the order of the labels in use and returns the old ids kept, as
    torch.unique does (by counting instead of sorting)."""
    g = np.random.default_rng(5)
    for _ in range(50):
        z = torch.as_tensor(g.integers(0, 9, size=g.integers(1, 40)) * g.integers(1, 4))
        new, kept = relabel(z)
        ids, inverse = torch.unique(z, return_inverse=True)
        assert torch.equal(new, inverse) and torch.equal(kept, ids)


def test_warmup_merge_pairs_are_all_pairs_within_the_budget_and_near_pairs_beyond(monkeypatch):
    """Within the budget: every pair of eligible clusters, row-major (the order the
    warm-up draws in).  Beyond: exactly the pairs in which one cluster is among the
    other's m nearest eligible clusters, m = max(8, budget // (K size))."""
    g = torch.Generator().manual_seed(0)
    k = 40
    means = torch.randn(k, 3, generator=g, dtype=torch.float64)
    eligible = torch.rand(k, generator=g) < 0.8
    eligible[:2] = True
    i, j = moves.warmup_merge_pairs(means, eligible, 10)
    e = eligible.nonzero().flatten().tolist()
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == \
        [(a, b) for a in e for b in e if a < b]
    monkeypatch.setattr(moves, "WARMUP_MERGE_BUDGET", 10 * k * 9)   # m = max(8, 9) = 9
    i, j = moves.warmup_merge_pairs(means, eligible, 10)
    dist = torch.cdist(means, means)
    expected = []
    for a in e:
        for b in e:
            if a < b:
                rank_ab = sum(float(dist[a, c]) < float(dist[a, b]) for c in e if c != a)
                rank_ba = sum(float(dist[b, c]) < float(dist[b, a]) for c in e if c != b)
                if rank_ab < 9 or rank_ba < 9:
                    expected.append((a, b))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == expected
    assert len(expected) < len(e) * (len(e) - 1) // 2
