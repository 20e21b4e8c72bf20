"""Collapsed Gibbs sampling for conjugate mixtures (Neal 2000, algorithm 3).

Weights and component parameters are integrated out.  Each point in turn is
removed from its cluster and reassigned with probability

    p(z_i = k | z_-i, X) proportional to  w_k(n_-i) p(x_i | X_{k,-i})       (existing k)
    p(z_i = new | z_-i, X) proportional to w_new(n_-i) p(x_i)               (a new cluster)

where w are the weight prior's predictive-rule weights (n_k and alpha for the
DP, n_k - d and alpha + K d for Pitman-Yor) and p(x_i | X_k) the family's
posterior predictive.  The generic implementation (``backend="torch"``,
:func:`collapsed_updates`) is a Python loop over points, simple enough to be the
reference the other samplers are checked against; for Gaussian-NIW components on
the CPU the same sweep runs in numba (:func:`.kernels.collapsed_labels`, the
sub-cluster sampler's compiled Gibbs step), tens of times faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models import SuffStats
from .mcmc import MCMCClusterer, relabel, update_latent


@dataclass
class GibbsState:
    X: torch.Tensor
    z: torch.Tensor
    k: int
    alpha: float
    hyper: dict | None = None
    rng: object | None = None         # compiled backend: the chain's numpy Generator
    stats: object | None = None       # compiled backend: the statistics of z


class CollapsedGibbs(MCMCClusterer):
    """Neal's algorithm 3 for any conjugate family and weight prior.

    Parameters are those of :class:`SubclusterSampler` (``model``, ``init_k``,
    ``max_iter``, ``burn_in``, ``thin``, ``n_chains``, ``n_jobs``, ``store_log_likelihood``,
    ``random_state``, ``progress``, ``checkpoint_every``); one iteration is one sweep
    over all points.  ``backend`` ("auto", "torch" or "compiled") as the sampler's:
    "compiled" runs each sweep in one numba kernel (GaussianNIW components, a weight
    prior of Gibbs type, the CPU), "auto" takes it where it applies; ``backend_``
    after the fit says which ran.  A seed gives other draws in each.
    """

    method_name = "gibbs"
    _chain_attributes = ("backend_",)

    def __init__(self, model=None, init_k: int = 1, max_iter: int = 100, burn_in=None,
                 thin: int = 1, n_chains: int = 1, n_jobs: int = 1,
                 store_log_likelihood: bool = True,
                 random_state=0, device="cpu", backend: str = "auto", progress: bool = False,
                 checkpoint_every: int = 10):
        self.model = model
        self.init_k = init_k
        self.max_iter = max_iter
        self.burn_in = burn_in
        self.thin = thin
        self.n_chains = n_chains
        self.n_jobs = n_jobs
        self.store_log_likelihood = store_log_likelihood
        self.random_state = random_state
        self.device = device
        self.backend = backend
        self.progress = progress
        self.checkpoint_every = checkpoint_every

    def _init_state(self, X, model, chain) -> GibbsState:
        if self.init_k < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        self._model = model
        hyper = self._setup_hyperparameters(model)
        n = X.shape[0]
        z, _ = relabel(torch.randint(0, min(int(self.init_k), n), (n,)))
        state = GibbsState(X, z, int(z.max()) + 1, float(getattr(model.weights, "alpha", 1.0)),
                           hyper)
        from .subcluster import compile_kernels
        from .subcluster_compiled import choose_backend, ensure_kernels

        self.backend_ = choose_backend(self.backend, model, X.device)
        if self.backend_ == "compiled":
            ensure_kernels(compile_kernels)
            self._X_np = np.ascontiguousarray(X.cpu().numpy(), dtype=np.float64)
            state.rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        return state

    def _step(self, state: GibbsState):
        """A sweep of algorithm 3 over every point, the family's latent variables given
        the partition (``StudentNIW``'s scales), then the hyperparameters and alpha
        given both (:mod:`.hyperparameters`)."""
        self._family = fam = self._hyper.family(state.hyper or {})
        weights = self._weights_for(state.alpha)
        X = state.X
        if state.rng is not None:
            z, stats = self._compiled_sweep(state, fam, weights)
        else:
            stats = fam.suff_stats_labels(X, state.z, state.k)
            z, stats = collapsed_updates(fam, weights, X, state.z, stats, range(X.shape[0]))
        X, stats = update_latent(fam, X, z, stats)
        hyper, alpha, lp = self._update_hyperparameters(state.hyper, state.alpha, stats)
        state = GibbsState(X, z, stats.k, alpha, hyper, state.rng,
                           stats if state.rng is not None else None)
        return state, {"k": state.k, "lp": lp}

    def _compiled_sweep(self, state: GibbsState, fam, weights):
        """The sweep over rows 0..N-1 in order by :func:`.kernels.collapsed_labels`,
        from the statistics the previous sweep returned."""
        from . import kernels as kn
        from .subcluster_compiled import eppf_kernel_args, niw_arrays

        X = self._X_np
        z = state.z.numpy()
        stats = (kn.group_stats(X, z.astype(np.int64), int(state.k)) if state.stats is None
                 else tuple(v.numpy() for v in (state.stats.n, state.stats.sx,
                                                state.stats.sxx)))
        z, n, s1, s2 = kn.collapsed_labels(state.rng, X, z, int(state.k),
                                           np.arange(X.shape[0]), *stats, *niw_arrays(fam),
                                           *eppf_kernel_args(weights)[:3])
        return torch.from_numpy(z), SuffStats(n=torch.from_numpy(n), sx=torch.from_numpy(s1),
                                              sxx=torch.from_numpy(s2))


def collapsed_updates(fam, weights, X, z, stats, idx, return_ids: bool = False):
    """Algorithm 3's update of z_i for each i of ``idx`` in turn (the module's
    predictive rule); ``stats`` are the statistics of the clusters of ``z`` (labels
    0..K-1).  Returns the new labels (0..K'-1: an emptied cluster's id is dropped, a
    new cluster is the last) and their statistics, and with ``return_ids`` each new
    cluster's old id (-1 for one the updates opened).  The rows' own statistics and
    prior predictive densities are computed once for all of ``idx``; each update
    then costs one posterior predictive over the K clusters.  ``stats`` may cover
    more rows than X holds (a data-parallel run passes only the updated rows)."""
    idx = [int(i) for i in idx]
    z = z.clone()
    stats = stats.clone()                              # updated in place below
    ids = list(range(stats.k))
    rows = fam.suff_stats_labels(X[idx], torch.arange(len(idx), device=X.device), len(idx))
    log_prior = fam.log_predictive(X[idx], fam.empty_stats(1))[:, 0].tolist()
    for t, i in enumerate(idx):
        k_old = int(z[i])
        _add_at(stats, k_old, rows, t, -1.0)
        if float(stats.n[k_old]) < 0.5:             # the cluster emptied: drop it
            keep = [c for c in range(stats.k) if c != k_old]
            stats = stats[keep]
            z[z > k_old] -= 1
            del ids[k_old]
        log_w_old, log_w_new = weights.log_crp_weights(stats.n)
        logits = (fam.log_predictive(X[i:i + 1], stats)[0] + log_w_old).tolist()
        logits.append(log_prior[t] + float(log_w_new))
        k_new = _draw(np.asarray(logits))
        if k_new == stats.k:
            stats = type(stats).cat([stats, rows[t]])
            ids.append(-1)
        else:
            _add_at(stats, k_new, rows, t, 1.0)
        z[i] = k_new
    return (z, stats, torch.tensor(ids, dtype=torch.long)) if return_ids else (z, stats)


def _draw(logits: np.ndarray) -> int:
    """A categorical draw from unnormalised log-probabilities, by inverse CDF with a
    uniform from torch's generator (the chain's seed)."""
    cdf = np.cumsum(np.exp(logits - logits.max()))
    u = float(torch.rand((), dtype=torch.float64)) * cdf[-1]
    return min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)


def _add_at(stats, k, rows, t, sign):
    """Row t of ``rows`` added to (sign 1) or taken from (-1) cluster k, in place."""
    for name, v in stats.fields.items():
        v[k].add_(rows.fields[name][t], alpha=sign)
