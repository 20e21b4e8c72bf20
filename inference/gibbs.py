"""Collapsed Gibbs sampling for conjugate mixtures (Neal 2000, algorithm 3).

Weights and component parameters are integrated out.  Each point in turn is
removed from its cluster and reassigned with probability

    p(z_i = k | z_-i, X) proportional to  w_k(n_-i) p(x_i | X_{k,-i})       (existing k)
    p(z_i = new | z_-i, X) proportional to w_new(n_-i) p(x_i)               (a new cluster)

where w are the weight prior's predictive-rule weights (n_k and alpha for the
DP, n_k - d and alpha + K d for Pitman-Yor) and p(x_i | X_k) the family's
posterior predictive.  It is slow -- a Python loop over points -- and simple,
which makes it the exact reference the other samplers are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mcmc import MCMCClusterer, relabel, sample_categorical


@dataclass
class GibbsState:
    X: torch.Tensor
    z: torch.Tensor
    k: int
    alpha: float


class CollapsedGibbs(MCMCClusterer):
    """Neal's algorithm 3 for any conjugate family and weight prior.

    Parameters are those of :class:`SubclusterSampler` (``model``, ``init_k``,
    ``max_iter``, ``burn_in``, ``thin``, ``n_chains``, ``store_log_likelihood``,
    ``random_state``, ``progress``, ``checkpoint_every``); one iteration is one sweep
    over all points.
    """

    method_name = "gibbs"

    def __init__(self, model=None, init_k: int = 1, max_iter: int = 100, burn_in=None,
                 thin: int = 1, n_chains: int = 1, store_log_likelihood: bool = True,
                 random_state=0, device="cpu", progress: bool = False,
                 checkpoint_every: int = 10):
        self.model = model
        self.init_k = init_k
        self.max_iter = max_iter
        self.burn_in = burn_in
        self.thin = thin
        self.n_chains = n_chains
        self.store_log_likelihood = store_log_likelihood
        self.random_state = random_state
        self.device = device
        self.progress = progress
        self.checkpoint_every = checkpoint_every

    def _init_state(self, X, model, chain) -> GibbsState:
        if self.init_k < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        self._model = model
        n = X.shape[0]
        z, _ = relabel(torch.randint(0, min(int(self.init_k), n), (n,)))
        return GibbsState(X, z, int(z.max()) + 1, float(getattr(model.weights, "alpha", 1.0)))

    def _step(self, state: GibbsState):
        fam, weights = self._model.family, self._model.weights
        X = state.X
        stats = fam.suff_stats_labels(X, state.z, state.k)
        if getattr(self, "_rows", (None,))[0] is not X:
            self._rows = (X, [fam.suff_stats(X[i:i + 1]) for i in range(X.shape[0])])
        z, stats = collapsed_updates(fam, weights, X, state.z, stats, range(X.shape[0]),
                                     self._rows[1])
        state = GibbsState(X, z, stats.k, state.alpha)
        lp = float(weights.log_eppf(stats.n) + fam.log_marginal(stats).sum())
        return state, {"k": state.k, "lp": lp}


def collapsed_updates(fam, weights, X, z, stats, idx, rows=None):
    """Algorithm 3's update of z_i for each i of ``idx`` in turn (the module's
    predictive rule); ``stats`` are the statistics of the clusters of ``z`` (labels
    0..K-1), ``rows`` optionally each row's own statistics.  Returns the new labels
    (0..K'-1, in order of first appearance of the surviving ids) and statistics."""
    z = z.clone()
    prior = fam.empty_stats(1)
    for i in idx:
        i = int(i)
        row = rows[i] if rows is not None else fam.suff_stats(X[i:i + 1])
        k_old = int(z[i])
        stats = _add_at(stats, k_old, row, -1.0)
        if float(stats.n[k_old]) < 0.5:             # the cluster emptied: drop it
            keep = [c for c in range(stats.k) if c != k_old]
            stats = stats[keep]
            z[z > k_old] -= 1
        log_w_old, log_w_new = weights.log_crp_weights(stats.n)
        cand = type(stats).cat([stats, prior])
        logits = fam.log_predictive(X[i:i + 1], cand)[0]
        logits = logits + torch.cat([log_w_old, log_w_new.reshape(1)])
        k_new = int(sample_categorical(logits))
        if k_new == stats.k:
            stats = type(stats).cat([stats, row])
        else:
            stats = _add_at(stats, k_new, row, 1.0)
        z[i] = k_new
    return z, stats


def _add_at(stats, k, row, sign):
    out = stats._map(lambda v: v.clone())
    for name, v in out.fields.items():
        v[k] = v[k] + sign * row.fields[name][0]
    return out
