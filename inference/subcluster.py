"""The sub-cluster split/merge sampler (after Chang & Fisher, NeurIPS 2013), made exact.

Chang & Fisher pair every cluster with two sub-clusters and propose to split a
cluster along its sub-clusters, in parallel, with H_split the posterior ratio
(their eq. 15).  Taken literally, two parts of that recipe do not leave the DP
posterior invariant, which an exact enumeration on six points exposes:

* a restricted Gibbs step that lets a cluster empty (and drops it) moves K down
  without a matching move up: given the weights, p(z | pi) is proportional to
  prod_i pi_{z_i} / prod_{occupied k} pi_k, so the product of categoricals is the
  right conditional only while the set of occupied clusters stays fixed;
* sub-cluster labels that evolve with the chain make the split proposal depend on
  the chain's history, and its probability never enters the Hastings ratio.

This sampler runs in two phases.

Warm-up (the burn-in iterations): Chang & Fisher's moves, which find K fast
from any start -- persistent sub-cluster labels resampled with the labels,
restricted Gibbs that may empty clusters, every cluster proposing to split along
its sub-clusters in parallel, merges of pairs of clusters -- with three changes
that make it robust from a bad start:

* new clusters get their sub-labels from a 2-means split of their data instead
  of at random, so they can split again at once;
* merges are accepted on the posterior ratio alone (the published sub-cluster
  term, about -(N1 + N2) log 2, all but forbids merging the halves of an
  over-split cluster), and only between clusters past a burn-out of ``burnout``
  iterations since they were created (a coarse split of many overlapping blobs
  is only mildly favoured and would otherwise be undone at once);
* the exact anchored moves below run as well: on such data they make progress
  where the parallel sub-cluster splits stall.

Its draws are discarded.

Sampling (the kept draws): a kernel in which every step leaves the posterior
exactly invariant, with the same structure -- instantiated weights and
parameters, a batched restricted Gibbs step over an N x K table, two
sub-clusters per cluster proposing splits, merges:

1. (pi_1..pi_K, pi_rest) ~ Dir(weight concentration | partition) and
   theta_k ~ p(theta | X_k): the exact conditionals.
2. z_i ~ pi_k f(x_i | theta_k) for all i at once (or, every other iteration on
   average, for a random half of the points), conditioned on no cluster emptying
   (rejection sampling): exact for the K-preserving restricted update.
3. Split/merge moves with anchors (Jain & Neal 2004): two distinct points i, j are
   drawn by a rule that depends on the data only (uniform, or j near x_i).  If
   they share cluster c, propose splitting c; otherwise propose merging their
   clusters.  The sub-clusters of a cluster are drawn from a
   distribution that depends on its data alone: a 2-means sub-partition
   (initialised on the principal axis or, half the time, on a random axis),
   sub-cluster weights and parameters drawn from their conjugate
   posterior given it.  A split draws each point's side from the sub-cluster
   responsibilities q_l(h), with i and j on different sides; its proposal
   probability is

       Q = [prod_{l in A} q_l(0) prod_{l in B} q_l(1) + (sides swapped)]
           / [q_i(0) q_j(1) + q_i(1) q_j(0)],

   and log H_split = log p(z' | X) - log p(z | X) - log Q.  A merge has
   log H_merge = log p(z' | X) - log p(z | X) + log Q(the split that undoes it),
   with the merged cluster's sub-clusters drawn the same way.  Because the
   sub-cluster variables are drawn from a distribution that depends only on the
   cluster's data, they cancel from the ratio: each move is a valid
   Metropolis-Hastings step on the partition.
4. Optionally alpha | K ~ the Escobar & West (1995) auxiliary-variable update.

The posterior ratios come from :mod:`bnpdeep.inference.moves`, so any weight
prior with a Gibbs-type EPPF (DP, Pitman-Yor, finite Dirichlet) and any conjugate
family work.  There is no burn-out period: sub-clusters are re-derived from the
cluster's data at every proposal, so a new cluster needs no time to settle.
The exact-posterior tests (tests/inference/test_exact_posterior.py) run both
phases and compare the kept draws with the enumerated posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models import DirichletProcess, gather_params
from . import moves
from .mcmc import MCMCClusterer, dirichlet_log, relabel, sample_categorical


@dataclass
class SubclusterState:
    X: torch.Tensor
    z: torch.Tensor          # (N,) labels 0..K-1, every cluster occupied
    alpha: float
    iteration: int = 0
    zs: torch.Tensor | None = None   # (N,) warm-up sub-labels 0/1
    born: torch.Tensor | None = None  # (K,) warm-up: iteration each cluster was created

    @property
    def k(self) -> int:
        return int(self.z.max()) + 1


def two_means(X: torch.Tensor, n_iter: int = 5, axis: torch.Tensor | None = None
              ) -> torch.Tensor:
    """2-means sub-partition of the rows of X (0/1 labels).

    Initialised at mean -/+ one standard deviation along ``axis`` (default: the
    principal axis), then Lloyd iterations.  Depends only on the set of rows (not
    their order) and the axis; flipping the axis only swaps the two labels.
    """
    n = X.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.long, device=X.device)
    mean = X.mean(0)
    xc = X - mean
    cov = xc.T @ xc / n
    if axis is None:
        evals, evecs = torch.linalg.eigh(cov)
        v = evecs[:, -1] * evals[-1].clamp_min(0).sqrt()
    else:
        u = axis / axis.norm().clamp_min(1e-300)
        v = u * (u @ cov @ u).clamp_min(0).sqrt()
    c0, c1 = mean - v, mean + v
    total = X.sum(0)
    h = torch.zeros(n, dtype=X.dtype, device=X.device)
    for it in range(n_iter):
        # nearer to c1 than c0  <=>  x . (c1 - c0) > (|c1|^2 - |c0|^2) / 2
        new_h = (X @ (c1 - c0) > 0.5 * (c1.dot(c1) - c0.dot(c0))).to(X.dtype)
        if it > 0 and torch.equal(new_h, h):
            break
        h = new_h
        n1 = float(h.sum())
        if 0 < n1 < n:
            s1 = h @ X
            c0, c1 = (total - s1) / (n - n1), s1 / n1
    return h.long()


def carve(family, Xc: torch.Tensor, li: int, n_iter: int = 3) -> torch.Tensor:
    """Sub-partition that carves a local group around anchor row ``li`` out of a
    cluster's rows Xc: start from its max(d + 2, n / 20) nearest rows (label 0), then a
    few hard reassignments by the two MAP components' likelihood.  A deterministic
    function of the rows (as a set) and the anchor, so a proposal built on it has a
    computable probability for the split and for the reverse of a merge.

    Coarse 2-means halves of many tight clusters are barely favoured by the DP
    posterior (the partition's entropy cost eats the likelihood gain); carving one
    tight group out is, so this is what leaves K = 1 on data such as r15."""
    n = Xc.shape[0]
    m = max(Xc.shape[1] + 2, n // 20)
    if n < 2 * m:
        return two_means(Xc)
    dist = (Xc - Xc[li]).pow(2).sum(1)
    h = torch.ones(n, dtype=torch.long, device=Xc.device)
    h[torch.topk(dist, m, largest=False).indices] = 0
    for _ in range(n_iter):
        stats = family.suff_stats_labels(Xc, h, 2)
        if bool((stats.n < 1).any()):
            break
        ll = family.log_likelihood(Xc, family.map_estimate(stats)) + torch.log(stats.n)[None]
        new_h = ll.argmax(1)
        if torch.equal(new_h, h) or int(new_h.sum()) in (0, n):
            break
        h = new_h
    return h


_BATCHED_PAIR_FLOPS = 5e7    # above this an N x 2K density table costs more than K calls


def own_pair_loglik(family, X: torch.Tensor, z: torch.Tensor, k: int, sub_params
                    ) -> torch.Tensor:
    """log f(x_i | theta_{z_i, h}) for h = 0, 1: each row against the two sub-clusters
    of its own cluster only, (N, 2); ``sub_params`` holds 2K components ordered
    (k, 0), (k, 1).  Small problems: one batched N x 2K table; large ones: one call
    per cluster on its rows (N x 2 densities instead of N x 2K)."""
    n, d = X.shape
    if 2 * k * n * d * d <= _BATCHED_PAIR_FLOPS:
        full = family.log_likelihood(X, sub_params)
        return full.gather(1, torch.stack([2 * z, 2 * z + 1], 1))
    order = torch.argsort(z, stable=True)
    out = torch.empty((n, 2), dtype=X.dtype, device=X.device)
    counts = torch.bincount(z, minlength=k).tolist()
    for c, members in enumerate(torch.split(order, counts)):
        if members.numel():
            pair = torch.tensor([2 * c, 2 * c + 1], device=X.device)
            out[members] = family.log_likelihood(X[members], gather_params(sub_params, pair))
    return out


def refine_subclusters(family, X: torch.Tensor, z: torch.Tensor, zs: torch.Tensor, k: int,
                       n_iter: int = 20, tol: float = 1e-4) -> torch.Tensor:
    """EM on every cluster's two-component sub-mixture at once, started from the
    sub-labels ``zs``; returns the refined hard sub-labels (argmax).

    Each iteration is the weighted-MAP M-step of the 2K sub-components (weights
    pi~_kh = (n_kh + 1/2) / (n_k + 1), parameters the mode of the conjugate posterior
    given the r~-weighted statistics) and the E-step
    r~_ih = pi~_{z_i h} f(x_i | theta_{z_i h}) / sum_h' (...), in log space; clusters
    never exchange rows.  Full-covariance sub-components find splits along the
    clusters' real structure where an isotropic 2-means halving does not (on wine at
    K = 1: log H_s = -51 for 2-means, +55 after 30 iterations).  Stops early when no
    responsibility moves by more than ``tol``."""
    r = torch.nn.functional.one_hot(zs, 2).to(X.dtype)
    for _ in range(int(n_iter)):
        sub = (family.suff_stats_labels(X, 2 * z, 2 * k, weights=r[:, 0])
               + family.suff_stats_labels(X, 2 * z + 1, 2 * k, weights=r[:, 1]))
        n_pair = sub.n.reshape(k, 2)
        log_w = torch.log(n_pair + 0.5) - torch.log(n_pair.sum(1, keepdim=True) + 1.0)
        ll = own_pair_loglik(family, X, z, k, family.map_estimate(sub)) + log_w[z]
        new_r = torch.softmax(ll, 1)
        done = bool((new_r - r).abs().max() <= tol)
        r = new_r
        if done:
            break
    return r.argmax(1)


class SubclusterSampler(MCMCClusterer):
    """Sub-cluster split/merge sampler for DP (and Pitman-Yor, finite Dirichlet) mixtures.

    Parameters
    ----------
    model : DPMixture, optional
        Default: DP(alpha=1) mixture of full Gaussians with ``GaussianNIW.weak(X)``.
    init_k : int, default 1
        Initial number of clusters (random labels).
    max_iter : int, default 200
        Iterations per chain.
    burn_in : int, optional
        Iterations discarded before draws are kept (default ``max_iter // 2``).
    thin : int, default 1
    n_chains : int, default 1
    moves_per_iter : int, optional
        Exact-phase anchored split/merge proposals per iteration (default
        max(2, K // 8)).
    warmup_moves : int, optional
        Anchored proposals per warm-up iteration (default max(3, K // 2)), on top of
        Chang & Fisher's parallel splits and merges: they carve out tight groups
        that coarse splits miss, and resolve overlapping clusters (s3, s4).
    warmup : int, optional
        Iterations of Chang & Fisher's fast warm-up moves (default: all of the
        burn-in).  Must not exceed the burn-in: kept draws come from the exact kernel.
    burnout : int, default 5
        Warm-up iterations after a cluster is created by a split or merge before it
        may merge again: on data whose coarse splits are only mildly favoured (15
        blobs split in two), an immediate merge would undo them.
    alpha_prior : (shape, rate), optional
        Gamma hyperprior on the DP concentration, updated by Escobar & West.
    store_log_likelihood : bool, default True
        Keep the N pointwise log-likelihoods of every draw (for LOO).
    max_label_tries : int, default 10
        Rejection attempts of the K-preserving label step before the labels are
        kept unchanged for that iteration (counted in ``label_rejections_``).  The
        cap keeps the step exact: given (pi, theta) the chance of success does not
        depend on the current labels, so the step is a mixture of the exact
        conditional and staying put, and both leave the posterior invariant.
    random_state : int, default 0
    device : str, default "cpu"
    progress : bool, default False
        tqdm progress bar on stderr.
    """

    method_name = "subcluster"
    _stat_names = ("split_acceptance", "merge_acceptance")

    def __init__(self, model=None, init_k: int = 1, max_iter: int = 200, burn_in=None,
                 thin: int = 1, n_chains: int = 1, moves_per_iter=None, warmup_moves=None,
                 warmup=None,
                 burnout: int = 5, alpha_prior=None,
                 store_log_likelihood: bool = True, max_label_tries: int = 10,
                 random_state=0, device="cpu", progress: bool = False):
        self.model = model
        self.init_k = init_k
        self.max_iter = max_iter
        self.burn_in = burn_in
        self.thin = thin
        self.n_chains = n_chains
        self.moves_per_iter = moves_per_iter
        self.warmup_moves = warmup_moves
        self.warmup = warmup
        self.burnout = burnout
        self.alpha_prior = alpha_prior
        self.store_log_likelihood = store_log_likelihood
        self.max_label_tries = max_label_tries
        self.random_state = random_state
        self.device = device
        self.progress = progress

    # -- BlackJAX-style kernel -----------------------------------------------------
    def _init_state(self, X, model, chain) -> SubclusterState:
        if self.init_k < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        self._model = model
        weights = model.weights
        self._sub_alpha = weights.alpha if getattr(weights, "alpha", 0) > 0 else 1.0
        n = X.shape[0]
        z, _ = relabel(torch.randint(0, min(int(self.init_k), n), (n,)))
        self.label_rejections_ = 0
        burn = self._burn_in()
        self._warmup = burn if self.warmup is None else int(self.warmup)
        if not 0 <= self._warmup <= burn:
            raise ValueError(f"warmup must lie in [0, burn_in={burn}], got {self._warmup}")
        # kernel bandwidth of the local anchor choice: a tenth of the data's scale
        self._bandwidth2 = max(float(X.var(0).mean()) * 0.01, 1e-12)
        zs = self._warmup_sublabels(X, z, torch.ones(int(z.max()) + 1, dtype=torch.bool),
                                    torch.zeros(n, dtype=torch.long))
        born = torch.zeros(int(z.max()) + 1, dtype=torch.long)
        return SubclusterState(X, z, float(getattr(weights, "alpha", 1.0)), zs=zs, born=born)

    def _weights_for(self, alpha):
        w = self._model.weights
        if isinstance(w, DirichletProcess) and alpha != w.alpha:
            return DirichletProcess(alpha)
        return w

    def _step(self, state: SubclusterState):
        if state.iteration < self._warmup:
            return self._warmup_step(state)
        return self._exact_step(state)

    def _exact_step(self, state: SubclusterState):
        fam = self._model.family
        weights = self._weights_for(state.alpha)
        X = state.X
        k = state.k
        stats = fam.suff_stats_labels(X, state.z, k)

        # 1. weights and parameters from their conditionals
        conc, rest = weights.weight_concentration(stats.n)
        log_pi = dirichlet_log(torch.cat([conc, rest.reshape(1)]))[:k]
        params = fam.sample_posterior(stats)

        # 2. K-preserving restricted Gibbs over all labels at once
        logits = fam.log_likelihood(X, params) + log_pi[None]
        z = self._sample_labels(logits, state.z, k)
        state = SubclusterState(X, z, state.alpha, state.iteration)

        # 3. anchored split/merge moves
        state, counts = self._anchored_moves(state, weights)
        n = X.shape[0]

        # 4. concentration
        if self.alpha_prior is not None and isinstance(self._model.weights, DirichletProcess):
            state.alpha = self._escobar_west(state.alpha, state.k, n)
            weights = self._weights_for(state.alpha)

        stats = fam.suff_stats_labels(X, state.z, state.k)
        lp = float(weights.log_eppf(stats.n) + fam.log_marginal(stats).sum())
        state.iteration += 1
        info = {"k": state.k, "lp": lp,
                "split_acceptance": counts["split"][1] / max(counts["split"][0], 1),
                "merge_acceptance": counts["merge"][1] / max(counts["merge"][0], 1)}
        return state, info

    def _anchored_moves(self, state: SubclusterState, weights, on_accept=None, n_moves=None):
        """``n_moves`` anchored split/merge proposals (default ``moves_per_iter``, else
        max(2, K // 8)),
        each an exact Metropolis-Hastings step; returns the state and, per kind of
        move, [proposed, accepted].  ``on_accept(kind, state, (a, b))`` is called after
        each accepted move: (parent, new cluster) for a split, (kept, removed) for a
        merge."""
        k = state.k
        if n_moves is None:
            n_moves = self.moves_per_iter if self.moves_per_iter is not None else max(2, k // 8)
        counts = {"split": [0, 0], "merge": [0, 0]}
        for _ in range(int(n_moves) if state.X.shape[0] > 1 else 0):
            i, j = self._anchors(state.X)
            kind, accepted, state, pair = self._move(state, i, j, weights)
            counts[kind][0] += 1
            counts[kind][1] += int(accepted)
            if accepted and on_accept is not None:
                on_accept(kind, state, pair)
        return state, counts

    def _sample_labels(self, logits, z_old, k):
        """Labels from prod_i pi_{z_i} f(x_i | theta_{z_i}) conditioned on every cluster
        keeping at least one point (exact rejection sampling).  With probability 1/2
        only a random half of the points is resampled (the block is chosen without
        looking at the labels), which lets the step succeed when a cluster is at risk
        of emptying."""
        n = z_old.shape[0]
        block = torch.rand(n) < 0.5 if float(torch.rand(())) < 0.5 else None
        for _ in range(self.max_label_tries):
            z = sample_categorical(logits if block is None else logits[block])
            if block is not None:
                z = z_old.clone().index_put_((block,), z)
            if int(torch.bincount(z, minlength=k).min()) > 0:
                return z
        self.label_rejections_ += 1
        return z_old

    # -- warm-up: Chang & Fisher's moves as published (draws discarded) -----------
    def _warmup_step(self, state: SubclusterState):
        fam = self._model.family
        weights = self._weights_for(state.alpha)
        X, k = state.X, state.k
        zs = state.zs if state.zs is not None else torch.randint(0, 2, (X.shape[0],))
        born = state.born if state.born is not None else torch.zeros(k, dtype=torch.long)
        it = state.iteration
        sub = fam.suff_stats_labels(X, 2 * state.z + zs, 2 * k)
        stats = sub.pair_sums()
        conc, rest = weights.weight_concentration(stats.n)
        log_pi = dirichlet_log(torch.cat([conc, rest.reshape(1)]))[:k]
        log_pibar = dirichlet_log(sub.n.reshape(k, 2) + self._sub_alpha / 2)
        params, sub_params = fam.sample_posterior(stats), fam.sample_posterior(sub)
        z = sample_categorical(fam.log_likelihood(X, params) + log_pi[None])
        zs = sample_categorical(own_pair_loglik(fam, X, z, k, sub_params) + log_pibar[z])
        z, kept = relabel(z)                       # empty clusters are dropped
        born = born[kept]
        k = int(z.max()) + 1
        sub = fam.suff_stats_labels(X, 2 * z + zs, 2 * k)
        stats = sub.pair_sums()
        # parallel splits along the sub-clusters (Chang & Fisher eq. 15)
        n1, n2 = sub.n.reshape(k, 2).unbind(1)
        log_h = (moves.log_eppf_split_ratio(weights, torch.tensor(float(k)), n1, n2)
                 + moves.log_marginal_split_terms(fam, stats, sub))
        split = moves.mh_accept(log_h) & (n1 > 0) & (n2 > 0)
        n_split = int(split.sum())
        if n_split:
            target = torch.full((k,), -1, dtype=torch.long)
            target[split] = torch.arange(k, k + n_split)
            moving = split[z] & (zs == 1)
            z = z.clone()
            z[moving] = target[z[moving]]
            fresh_clusters = torch.zeros(k + n_split, dtype=torch.bool)
            fresh_clusters[split.nonzero().flatten()] = True
            fresh_clusters[k:] = True
            zs = self._warmup_sublabels(X, z, fresh_clusters, zs)
            born = torch.cat([torch.where(split, it, born), torch.full((n_split,), it)])
        # clusters that did not split and are past their burn-out may merge
        eligible = ~split & (it - born[:k] >= self.burnout)
        if int(eligible.sum()) > 1:
            z, zs, born = self._warmup_merges(z, zs, born, stats, weights, eligible,
                                              k + n_split, it)
        state = SubclusterState(X, z, state.alpha, state.iteration, zs, born)
        # the exact anchored moves too: they make progress where the posterior gains
        # little from coarse splits (many overlapping blobs)
        state, counts = self._anchored_moves(state, weights, self._warmup_bookkeeping,
                                             n_moves=self.warmup_moves if self.warmup_moves
                                             is not None else max(3, state.k // 2))
        if self.alpha_prior is not None and isinstance(self._model.weights, DirichletProcess):
            state.alpha = self._escobar_west(state.alpha, state.k, X.shape[0])
            weights = self._weights_for(state.alpha)
        stats = fam.suff_stats_labels(X, state.z, state.k)
        lp = float(weights.log_eppf(stats.n) + fam.log_marginal(stats).sum())
        state.iteration += 1
        return state, {"k": state.k, "lp": lp,
                       "split_acceptance": (n_split + counts["split"][1])
                       / (k + counts["split"][0]),
                       "merge_acceptance": counts["merge"][1] / max(counts["merge"][0], 1)}

    def _warmup_bookkeeping(self, kind, state, pair):
        """Keep the warm-up sub-labels and birth iterations in step with an accepted
        anchored move (the moves build a fresh state without them)."""
        a, b = pair
        it = state.iteration
        zs, born = state.zs, state.born.clone()       # as they were before the move
        if kind == "split":
            born = torch.cat([born, torch.tensor([it])])
            born[a] = it
            flags = torch.zeros(state.k, dtype=torch.bool)
            flags[[a, b]] = True
        else:
            born = torch.cat([born[:b], born[b + 1:]])
            a = a - int(b < a)
            born[a] = it
            flags = torch.zeros(state.k, dtype=torch.bool)
            flags[a] = True
        state.zs = self._warmup_sublabels(state.X, state.z, flags, zs)
        state.born = born

    @staticmethod
    def _warmup_sublabels(X, z, clusters, zs):
        """Warm-up sub-labels of the flagged clusters from a 2-means split of their data.

        Chang & Fisher start new sub-clusters at random, and a symmetric start takes
        many iterations to break; a 2-means start lets the next split be proposed at
        once.  (Warm-up only: its draws are discarded.)"""
        zs = zs.clone()
        for c in clusters.nonzero().flatten().tolist():
            members = (z == c).nonzero().flatten()
            if members.numel():
                zs[members] = two_means(X[members])
        return zs

    def _warmup_merges(self, z, zs, born, stats, weights, eligible, k_now, it):
        """All pairs of eligible clusters in random order, each cluster merging at most
        once, accepted on the posterior ratio."""
        fam = self._model.family
        k = stats.k
        i, j = torch.triu_indices(k, k, 1)
        keep = eligible[i] & eligible[j]
        i, j = i[keep], j[keep]
        s1, s2 = stats[i], stats[j]
        # The posterior ratio alone: Chang & Fisher's sub-cluster proposal term
        # (moves.log_subcluster_merge_proposal) is about -(n1 + n2) log 2 and all but
        # forbids merging two large halves of one true cluster, which a random or
        # over-split start produces.  Warm-up draws are discarded, so this heuristic
        # costs no exactness.
        log_h = moves.log_merge_ratio(weights, fam, float(k_now), s1, s2)
        accept = moves.mh_accept(log_h)
        used = torch.zeros(born.shape[0], dtype=torch.bool)
        z, zs = z.clone(), zs.clone()
        for p in torch.randperm(i.shape[0]).tolist():
            a, b = int(i[p]), int(j[p])
            if accept[p] and not used[a] and not used[b]:
                used[a] = used[b] = True
                zs[z == a], zs[z == b] = 0, 1
                z[z == b] = a
        born = torch.where(used, it, born)
        z, kept = relabel(z)
        return z, zs, born[kept]

    # -- moves -------------------------------------------------------------------
    def _anchors(self, X) -> tuple[int, int]:
        """Two distinct anchor points.  i is uniform; j is, with probability 1/2,
        uniform and otherwise drawn from a Gaussian kernel around x_i.  The selection
        probability depends on the data only, never on the labels, so it is the same
        for a move and its reverse and drops out of the Hastings ratio."""
        n = X.shape[0]
        i = int(torch.randint(n, ()))
        if n == 2 or float(torch.rand(())) < 0.5:
            j = int(torch.randint(n - 1, ()))
            return i, j + (j >= i)
        w = torch.exp(-0.5 * (X - X[i]).pow(2).sum(1) / self._bandwidth2)
        w[i] = 0.0
        if float(w.sum()) <= 0:
            j = int(torch.randint(n - 1, ()))
            return i, j + (j >= i)
        return i, int(torch.multinomial(w, 1))


    def _subcluster_responsibilities(self, Xc: torch.Tensor, li: int) -> torch.Tensor:
        """log q_l(h): sub-cluster responsibilities of the rows of one cluster, (n, 2).

        Sub-clusters: a deterministic sub-partition -- 2-means from the principal
        axis, 2-means from a random axis, or a group carved around anchor ``li``
        (:func:`carve`), each with probability 1/3 whatever the state -- then
        weights Dir(n_h + a/2) and parameters from their conjugate posterior."""
        fam = self._model.family
        u = float(torch.rand(()))
        if u < 1 / 3:
            h = two_means(Xc)
        elif u < 2 / 3:
            h = two_means(Xc, axis=torch.randn(Xc.shape[1], dtype=Xc.dtype))
        else:
            h = carve(self._model.family, Xc, li)
        sub = fam.suff_stats_labels(Xc, h, 2)
        log_w = dirichlet_log(sub.n + self._sub_alpha / 2)
        ll = fam.log_likelihood(Xc, fam.sample_posterior(sub)) + log_w[None]
        return ll - torch.logsumexp(ll, 1, keepdim=True)

    @staticmethod
    def _log_split_proposal(log_q, side_b, i, j) -> torch.Tensor:
        """log Q of the split (A = ~side_b, B = side_b) with anchors i in A, j in B."""
        a = (~side_b).to(log_q.dtype)
        b = side_b.to(log_q.dtype)
        keep = torch.logsumexp(torch.stack([(a * log_q[:, 0] + b * log_q[:, 1]).sum(),
                                            (a * log_q[:, 1] + b * log_q[:, 0]).sum()]), 0)
        anchors = torch.logsumexp(torch.stack([log_q[i, 0] + log_q[j, 1],
                                               log_q[i, 1] + log_q[j, 0]]), 0)
        return keep - anchors

    def _move(self, state, i, j, weights):
        fam = self._model.family
        X, z = state.X, state.z
        zi, zj = int(z[i]), int(z[j])
        k = state.k
        if zi == zj:
            members = torch.nonzero(z == zi).flatten()
            Xc = X[members]
            li = int((members == i).nonzero()[0, 0])
            lj = int((members == j).nonzero()[0, 0])
            log_q = self._subcluster_responsibilities(Xc, li)
            side = sample_categorical(log_q) == 1
            # anchors on opposite sides: (i, j) = (0, 1) or (1, 0)
            pair = torch.stack([log_q[li, 0] + log_q[lj, 1], log_q[li, 1] + log_q[lj, 0]])
            flip = bool(sample_categorical(pair[None])[0] == 1)
            side[li], side[lj] = flip, not flip
            side_b = side != side[li]           # B is the side of j
            s_ab = fam.suff_stats_labels(Xc, side_b.long(), 2)
            s_a, s_b = s_ab[0], s_ab[1]
            log_h = moves.log_split_ratio(weights, fam, float(k), s_a + s_b, s_a, s_b)[0]
            log_h = log_h - self._log_split_proposal(log_q, side_b, li, lj)
            if bool(moves.mh_accept(log_h)):
                z = z.clone()
                z[members[side_b]] = k
                return ("split", True, SubclusterState(X, z, state.alpha, state.iteration,
                                                       state.zs, state.born), (zi, k))
            return "split", False, state, None
        members = torch.nonzero((z == zi) | (z == zj)).flatten()
        Xc = X[members]
        side_b = z[members] == zj
        li = int((members == i).nonzero()[0, 0])
        lj = int((members == j).nonzero()[0, 0])
        log_q = self._subcluster_responsibilities(Xc, li)
        s_ab = fam.suff_stats_labels(Xc, side_b.long(), 2)
        s_a, s_b = s_ab[0], s_ab[1]
        log_h = moves.log_merge_ratio(weights, fam, float(k), s_a, s_b)[0]
        log_h = log_h + self._log_split_proposal(log_q, side_b, li, lj)
        if bool(moves.mh_accept(log_h)):
            z = z.clone()
            z[z == zj] = zi
            z, _ = relabel(z)
            return ("merge", True, SubclusterState(X, z, state.alpha, state.iteration,
                                                   state.zs, state.born), (zi, zj))
        return "merge", False, state, None

    def _escobar_west(self, alpha, k, n):
        """alpha | K, N under a Gamma(a, b) prior (Escobar & West 1995, eq. 13)."""
        a, b = (float(v) for v in self.alpha_prior)
        eta = float(torch.distributions.Beta(alpha + 1.0, float(n)).sample())
        rate = b - math.log(eta)
        odds = (a + k - 1) / (n * rate)
        shape = a + k if float(torch.rand(())) < odds / (1 + odds) else a + k - 1
        return float(torch.distributions.Gamma(shape, rate).sample())


__all__ = ["SubclusterSampler", "SubclusterState", "two_means"]
