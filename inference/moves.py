"""Split and merge Metropolis-Hastings ratios, shared by every algorithm that changes K.

For a weight prior with EPPF p(n_1..n_K) and a conjugate family with marginal
likelihood f, splitting cluster k (N points) into k1 and k2 (N1 + N2 = N) has
posterior ratio

    log H_split = [log EPPF(.., N1, N2, ..) - log EPPF(.., N, ..)]
                  + log f(X_k1) + log f(X_k2) - log f(X_k).

For the Dirichlet process the EPPF term is log alpha + lgamma(N1) + lgamma(N2)
- lgamma(N) (Chang & Fisher 2013, eq. 15; Ronen et al. 2022, eq. 7); for
Pitman-Yor and the finite Dirichlet it follows from their EPPFs, with no special
cases here.  A merge is the reverse move, with the reverse ratio (written out in
:func:`log_merge_ratio`) plus -- for the sub-cluster sampler -- the probability
of the sub-cluster split that would undo the merge (Chang & Fisher 2013, Sec. 5.2).

Every function is vectorised over candidate moves.
"""

from __future__ import annotations

import math

import torch

from bnpdeep.linalg import DTYPE


def group_means(stats) -> torch.Tensor:
    """Weighted mean of the rows of each group of a SuffStats, (K, d) (a scale
    mixture's rows weighted by their scales w_i: s / W)."""
    total = stats.fields["sx"] if "sx" in stats.fields else stats.fields["counts"]
    mass = stats.fields.get("w", stats.n)
    return total / mass.clamp_min(1e-12)[:, None]


def log_eppf_split_ratio(weights, k_blocks, n1, n2) -> torch.Tensor:
    """log EPPF after splitting a block of n1 + n2 points into n1 and n2, minus before,
    in a partition of ``k_blocks`` blocks (vectorised over candidate splits):
    log V(N, K+1) - log V(N, K) + log W(n1) + log W(n2) - log W(n1 + n2)."""
    n1, n2 = torch.as_tensor(n1, dtype=DTYPE), torch.as_tensor(n2, dtype=DTYPE)
    return (weights.log_new_block_ratio(torch.as_tensor(k_blocks, dtype=DTYPE))
            + weights.log_block_weight(n1) + weights.log_block_weight(n2)
            - weights.log_block_weight(n1 + n2))


def log_split_terms(weights, family, stats, stats_1, stats_2, log_f=None) -> torch.Tensor:
    """log H_split without the factor log V(N, K+1) - log V(N, K), the only part that
    depends on the number of blocks: log W(n1) + log W(n2) - log W(n) + log f(X_1)
    + log f(X_2) - log f(X), batched over candidate splits.  ``log_f`` (default
    ``family.log_marginal``) maps statistics to log f."""
    b = stats.k
    log_f = family.log_marginal if log_f is None else log_f
    lm = log_f(type(stats).cat([stats, stats_1, stats_2]))
    lm = lm[b:2 * b] + lm[2 * b:] - lm[:b]
    return (weights.log_block_weight(stats_1.n) + weights.log_block_weight(stats_2.n)
            - weights.log_block_weight(stats.n) + lm)


def log_split_ratio(weights, family, k_blocks, stats, stats_1, stats_2, log_f=None
                    ) -> torch.Tensor:
    """log H_split for splitting clusters with statistics ``stats`` into ``stats_1`` and
    ``stats_2`` (batched over candidates), in a partition of ``k_blocks`` blocks."""
    return (weights.log_new_block_ratio(torch.as_tensor(k_blocks, dtype=DTYPE))
            + log_split_terms(weights, family, stats, stats_1, stats_2, log_f))


def log_merge_ratio(weights, family, k_blocks, stats_1, stats_2, log_f=None, merged=None
                    ) -> torch.Tensor:
    """log H_merge for merging clusters 1 and 2 of a partition of ``k_blocks`` blocks
    into one (batched over candidate pairs), from the merged and the current state:
    log V(N, K-1) - log V(N, K) + log W(n1 + n2) - log W(n1) - log W(n2)
    + log f(X_1 u X_2) - log f(X_1) - log f(X_2).  ``merged``: the unions'
    statistics (default ``stats_1 + stats_2``); ``log_f`` as in
    :func:`log_split_terms`."""
    b = stats_1.k
    log_f = family.log_marginal if log_f is None else log_f
    merged = stats_1 + stats_2 if merged is None else merged
    lm = log_f(type(stats_1).cat([merged, stats_1, stats_2]))
    k_after = torch.as_tensor(k_blocks, dtype=DTYPE) - 1
    return (-weights.log_new_block_ratio(k_after)
            + weights.log_block_weight(stats_1.n + stats_2.n)
            - weights.log_block_weight(stats_1.n) - weights.log_block_weight(stats_2.n)
            + lm[:b] - lm[b:2 * b] - lm[2 * b:])


def log_marginal_split_terms(family, stats, sub_stats) -> torch.Tensor:
    """log f(X_k1) + log f(X_k2) - log f(X_k) for every cluster k at once.

    ``stats``: K clusters; ``sub_stats``: 2K sub-clusters ordered (k, 0), (k, 1).
    """
    sub = family.log_marginal(sub_stats).reshape(-1, 2).sum(-1)
    return sub - family.log_marginal(stats)


def log_subcluster_merge_proposal(alpha: float, n1: torch.Tensor, n2: torch.Tensor):
    """Log probability term of the sub-cluster proposal in the merge ratio of
    Chang & Fisher (2013): with sub-cluster weights Dirichlet(alpha/2, alpha/2), the
    Dirichlet-multinomial probability of the sub-cluster sizes (n1, n2) that the
    reverse split would propose, up to the binomial coefficient:

        lgamma(alpha) - 2 lgamma(alpha/2) + lgamma(n1 + alpha/2) + lgamma(n2 + alpha/2)
        - lgamma(n1 + n2 + alpha).
    """
    a = torch.as_tensor(alpha, dtype=DTYPE)
    half = a / 2
    return (torch.lgamma(a) - 2 * torch.lgamma(half) + torch.lgamma(n1 + half)
            + torch.lgamma(n2 + half) - torch.lgamma(n1 + n2 + a))


def mh_accept(log_ratio, uniform=None, generator: torch.Generator | None = None):
    """Metropolis-Hastings accept: True with probability min(1, exp(log_ratio)).

    Works elementwise on tensors.  ``uniform`` supplies the U(0, 1) draws (for
    reproducible tests); otherwise they come from ``generator``.
    """
    log_ratio = torch.as_tensor(log_ratio, dtype=DTYPE)
    if uniform is None:
        # drawn on the CPU (where the generator lives), then moved: the same stream on
        # every device
        uniform = torch.rand(log_ratio.shape, dtype=DTYPE, generator=generator)
    uniform = torch.as_tensor(uniform, dtype=DTYPE).to(log_ratio.device)
    return torch.log(uniform.clamp_min(1e-300)) < log_ratio


def accept_in_sequence(weights, k_blocks: int, log_terms, is_split, uniform=None
                       ) -> torch.Tensor:
    """Metropolis-Hastings accepts of moves on disjoint clusters, applied one after
    another in the given order.

    ``log_terms[m]`` is move m's log Hastings ratio without the block-count factor
    (for a split: :func:`log_split_terms` minus the log proposal; for a merge, its
    negation plus the log proposal).  Move m sees the number of blocks K that the
    accepted moves before it left, and adds log V(N, K+1) - log V(N, K) for a split
    or subtracts log V(N, K) - log V(N, K-1) for a merge: the same decisions as
    running the moves one at a time (their other terms involve only their own
    clusters).  For the DP the factor is log alpha whatever K is.
    """
    terms = torch.as_tensor(log_terms, dtype=DTYPE).cpu().tolist()
    splits = torch.as_tensor(is_split).cpu().tolist()
    m = len(terms)
    if uniform is None:
        uniform = torch.rand(m, dtype=DTYPE)
    log_u = torch.log(torch.as_tensor(uniform, dtype=DTYPE).clamp_min(1e-300)).tolist()
    low = max(0, int(k_blocks) - m - 1)
    ratio = weights.log_new_block_ratio(
        torch.arange(low, int(k_blocks) + m + 1, dtype=DTYPE)).tolist()
    k, out = int(k_blocks), []
    for t, split, lu in zip(terms, splits, log_u, strict=True):
        log_h = t + ratio[k - low] if split else t - ratio[k - 1 - low]
        ok = lu < log_h
        out.append(ok)
        if ok:
            k += 1 if split else -1
    return torch.tensor(out, dtype=torch.bool)


# Statistics entries a warm-up merge round may gather for all pairs of clusters
# (pairs x entries per cluster) before its candidates are limited to near pairs.
WARMUP_MERGE_BUDGET = 1 << 24


def warmup_merge_pairs(means: torch.Tensor, eligible: torch.Tensor, stat_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate pairs (i < j, both eligible, in row-major order) for the warm-up's
    merges: every pair while their statistics (pairs x ``stat_size`` entries, about
    d^2 for full Gaussians) fit in :data:`WARMUP_MERGE_BUDGET`; beyond it, each
    eligible cluster with its m nearest eligible clusters by the distance of their
    ``means``, m = max(8, budget // (K stat_size)), so that a round's cost grows as K
    rather than K^2 (at K = 80, d = 128 every pair costs about 10 s a round).  The
    warm-up's draws are discarded, so the choice costs no exactness."""
    k = means.shape[0]
    i, j = torch.triu_indices(k, k, 1, device=means.device)
    keep = eligible[i] & eligible[j]
    i, j = i[keep], j[keep]
    idx = eligible.nonzero().flatten()
    m = max(8, WARMUP_MERGE_BUDGET // max(k * int(stat_size), 1))
    if i.numel() * int(stat_size) <= WARMUP_MERGE_BUDGET or m >= idx.numel() - 1:
        return i, j
    dist = torch.cdist(means[idx], means[idx])
    dist.fill_diagonal_(math.inf)
    nearest = idx[dist.topk(m, largest=False).indices]              # (n, m)
    near = torch.zeros((k, k), dtype=torch.bool, device=means.device)
    near[idx[:, None].expand_as(nearest), nearest] = True
    near |= near.T.clone()
    keep = near[i, j]
    return i[keep], j[keep]


def parallel_split_decisions(weights, family, stats, sub_stats) -> torch.Tensor:
    """Chang & Fisher's parallel splits (their eq. 15): every cluster proposes to split
    along its two sub-clusters, accepted on the posterior ratio; (K,) booleans (a
    cluster with an empty sub-cluster does not split).  ``stats``: K clusters;
    ``sub_stats``: their 2K sub-clusters ordered (k, 0), (k, 1)."""
    k = stats.k
    n1, n2 = sub_stats.n.reshape(k, 2).unbind(1)
    log_h = (log_eppf_split_ratio(weights, torch.tensor(float(k)), n1, n2)
             + log_marginal_split_terms(family, stats, sub_stats))
    return mh_accept(log_h) & (n1 > 0) & (n2 > 0)


def apply_parallel_splits(z: torch.Tensor, zs: torch.Tensor, split: torch.Tensor):
    """The rows of sub-cluster 1 of every split cluster move to a new cluster K, K+1, ...
    (in cluster order); returns the labels and the clusters the splits made or
    changed, (K + splits,) booleans."""
    k, n_split = split.shape[0], int(split.sum())
    target = torch.full((k,), -1, dtype=torch.long)
    target[split] = torch.arange(k, k + n_split)
    moving = split[z] & (zs == 1)
    z = z.clone()
    z[moving] = target[z[moving]]
    fresh = torch.zeros(k + n_split, dtype=torch.bool)
    fresh[split.nonzero().flatten()] = True
    fresh[k:] = True
    return z, fresh


def warmup_merge_targets(family, weights, stats, eligible: torch.Tensor, k_now: int,
                         n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The warm-up's merges: candidate pairs of eligible clusters
    (:func:`warmup_merge_pairs`) accepted on the posterior ratio, then taken in random
    order, each cluster merging at most once; returns ``target`` (``n_clusters``,), the
    cluster each one merges into (itself when it does not), and ``used``, the
    clusters in an accepted merge.  ``stats``: the first K clusters' statistics in a
    partition of ``k_now`` blocks.  A function of the statistics and torch's
    generator only, so every rank of a data-parallel run takes the same merges.

    The posterior ratio alone: Chang & Fisher's sub-cluster proposal term
    (:func:`log_subcluster_merge_proposal`) is about -(n1 + n2) log 2 and all but
    forbids merging two large halves of one true cluster, which a random or
    over-split start produces.  Warm-up draws are discarded, so this heuristic costs
    no exactness."""
    size = sum(v.numel() // max(v.shape[0], 1) for v in stats.fields.values())
    i, j = warmup_merge_pairs(group_means(stats), eligible, size)
    log_h = log_merge_ratio(weights, family, float(k_now), stats[i], stats[j])
    accept = mh_accept(log_h)
    order = torch.randperm(i.shape[0])
    order = order[accept[order]]
    target = torch.arange(n_clusters)
    used = torch.zeros(n_clusters, dtype=torch.bool)
    taken = set()
    for a, b in torch.stack([i[order], j[order]], 1).tolist():
        if a not in taken and b not in taken:
            taken.update((a, b))
            target[b] = a
            used[a] = used[b] = True
    return target, used


def disjoint_pairs(z, pairs) -> list[int]:
    """Indices of the anchor pairs (m, 2) kept for one batch of moves: in order, each
    pair whose clusters no kept pair has taken yet.

    A pair is dropped exactly when one of its anchors lies in the rows of an earlier
    kept pair's clusters, and a move maps the rows of its own clusters onto
    themselves; so the kept set is the same before and after any of the kept moves
    (tests/inference/test_moves.py checks this on random partitions)."""
    taken, keep = set(), []
    for m, (a, b) in enumerate(z[pairs].tolist()):
        if a not in taken and b not in taken:
            taken.update((a, b))
            keep.append(m)
    return keep


__all__ = ["disjoint_pairs", "log_eppf_split_ratio", "log_split_terms", "log_split_ratio",
           "log_merge_ratio", "log_marginal_split_terms", "log_subcluster_merge_proposal",
           "mh_accept", "accept_in_sequence", "warmup_merge_pairs", "warmup_merge_targets",
           "parallel_split_decisions", "apply_parallel_splits"]
