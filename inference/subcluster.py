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

Warm-up (the first ``warmup`` iterations, half the burn-in by default): Chang &
Fisher's moves, which find K fast
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

Its draws are discarded; the rest of the burn-in runs the exact kernel.

Sampling (the kept draws): a kernel in which every step leaves the posterior
exactly invariant, with the same structure -- instantiated weights and
parameters, a batched restricted Gibbs step over an N x K table, two
sub-clusters per cluster proposing splits, merges:

1. (pi_1..pi_K, pi_rest) ~ Dir(weight concentration | partition) and
   theta_k ~ p(theta | X_k): the exact conditionals.
2. z_i ~ pi_k f(x_i | theta_k) for all i at once (or, every other iteration on
   average, for a random half of the points), conditioned on no cluster emptying
   (rejection sampling): exact for the K-preserving restricted update.  Every
   ``slice_every``-th iteration then a slice step (Walker 2007; Kalli, Griffin &
   Walker 2011) given the same weights and parameters: the rest mass split over
   new atoms by the prior's sticks, u_i ~ U(0, pi_{z_i}), and z_i proportional to
   1[pi_j > u_i] f(x_i | theta_j) -- a Gibbs step on the random measure that can
   empty and open clusters.
3. Split/merge moves with anchors (Jain & Neal 2004): two distinct points i, j are
   drawn by a rule that depends on the data only (uniform, or j near x_i).  If
   they share cluster c, propose splitting c; otherwise propose merging their
   clusters.  The sub-clusters of a cluster are drawn from a
   distribution that depends on its data alone: a sub-partition (2-means from the
   principal axis or from a random axis, a group carved around the anchor, or
   2-means in the cluster's whitened coordinates, optionally refined by EM of
   its full-covariance sub-mixture; the kind drawn with fixed probabilities,
   ``proposal_weights``), sub-cluster weights and parameters drawn from their
   conjugate posterior given it.  A split draws each point's side from the sub-cluster
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

   The moves of one iteration run as a batch: of the anchor pairs drawn, those
   whose clusters no earlier pair has taken are kept (:func:`disjoint_pairs`), and
   all their sub-partitions, sub-cluster draws, statistics and ratios are computed
   by one pass of grouped tensor operations (:mod:`.subpartition`).  A move maps
   its own clusters' rows onto themselves, so the kept set is the same before and
   after any of its moves; the batch is then the composition of the kept moves,
   decided one after another (only the EPPF's block-count factor, which for
   Pitman-Yor depends on K, differs from the one-move ratio:
   :func:`~bnpdeep.inference.moves.accept_in_sequence`).
   Optionally (``resplit_prob``) a batch is instead one of re-splits: for a pair
   across clusters A and B, a new split of A + B drawn the same way, accepted with
   log H = log p(z' | X) - log p(z | X) + log Q(A, B) - log Q(A', B'), K unchanged.
4. ``gibbs_points`` collapsed Gibbs updates (Neal 2000, algorithm 3;
   :func:`.gibbs.collapsed_updates`, compiled :func:`.kernels.collapsed_labels`)
   of labels drawn uniformly at random, independently of the state, one after
   another: z_i given z_-i with weights and parameters integrated out, so a point
   may leave a small cluster (which then empties) or open one.  Each update leaves
   p(z | X) invariant, and step 1 of the next iteration redraws the weights and
   parameters from the new partition.  Steps 2-3 rarely remove a small cluster:
   the restricted step cannot empty one, the slice step redraws a one-point
   cluster's parameters around its point, and a merge of a few outlying points
   needs a reverse split that isolates them.
5. A family with per-point latent variables (``StudentNIW``: the scales w_i of its
   Gaussian scale mixture) has them drawn given the partition
   (``family.update_latent``: the clusters' parameters from their conditional, then
   each w_i from its own); every other step conditions on them, so each is an
   exact update of (z, w).  Then the model's hyperparameters given the partition
   (:mod:`.hyperparameters`:
   grid enumeration, slice sampling on the log scale, elliptical slice sampling),
   and alpha | K by the Escobar & West (1995) auxiliary-variable update when it has
   a prior: each a Gibbs-type update of one coordinate of (z, h, alpha).

The posterior ratios come from :mod:`bnpdeep.inference.moves`, so any weight
prior with a Gibbs-type EPPF (DP, Pitman-Yor, finite Dirichlet) and any conjugate
family work.  There is no burn-out period: sub-clusters are re-derived from the
cluster's data at every proposal, so a new cluster needs no time to settle.
The exact-posterior tests (tests/inference/test_exact_posterior.py) run both
phases and compare the kept draws with the enumerated posterior.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from . import moves
from .gibbs import collapsed_updates
from .mcmc import (
    MCMCClusterer,
    categorical_cdf_,
    conditional_log_weights,
    dirichlet_log,
    relabel,
    sample_categorical,
    sample_from_cdf,
    update_latent,
)
from .moves import disjoint_pairs
from .subcluster_settings import (
    GIBBS_POINTS_COMPILED,
    GIBBS_POINTS_TORCH,
    KernelSettings,
    SamplerOptions,
    resolve_common,
    sampler_options,
)
from .subpartition import (
    LocalSums,
    carve_groups,
    own_pair_loglik,
    refined_two_means_groups,
    select_groups,
    two_means_groups,
)


@dataclass
class SubclusterState:
    X: torch.Tensor
    z: torch.Tensor          # (N,) labels 0..K-1, every cluster occupied
    alpha: float
    iteration: int = 0
    zs: torch.Tensor | None = None   # (N,) warm-up sub-labels 0/1
    born: torch.Tensor | None = None  # (K,) warm-up: iteration each cluster was created
    stats: object | None = None       # SuffStats of z, when the step that made z computed them
    sub_stats: object | None = None   # warm-up: SuffStats of the 2K sub-clusters (z, zs)
    rng: object | None = None         # compiled backend: the chain's numpy Generator
    hyper: dict | None = None         # values of the family's hyperparameters

    @property
    def k(self) -> int:
        return int(self.z.max()) + 1


@dataclass
class MoveBatch:
    """Outcome of one batch of anchored moves: the new labels, per kind of move
    [proposed, accepted], the old labels (after the accepted splits' new ones,
    numbered K, K+1, ...) that the new labels 0..K'-1 keep, and which new clusters
    an accepted move created or changed."""

    z: torch.Tensor
    counts: dict
    kept: torch.Tensor
    touched: torch.Tensor


class PairProposals(NamedTuple):
    """The groups of one batch of anchored moves and the split drawn for each
    (:meth:`SubclusterSampler._pair_proposals`)."""

    ca: torch.Tensor      # (m,) cluster of anchor i
    cb: torch.Tensor      # (m,) cluster of anchor j
    rows: torch.Tensor    # (n,) rows of the groups' clusters, in data order
    Xr: torch.Tensor      # (n, d) their data
    g: torch.Tensor       # (n,) group of each row
    li: torch.Tensor      # (m,) position of anchor i among ``rows``
    lj: torch.Tensor      # (m,) position of anchor j
    log_q: torch.Tensor   # (n, 2) sub-cluster log-responsibilities
    new_b: torch.Tensor   # (n,) the drawn split: True on the side that holds j


def log_split_proposal(log_q, side_b, g, n_groups, li, lj, sums=LocalSums,
                       anchor_q=None) -> torch.Tensor:
    """log Q of each group's split (A = ~side_b, B = side_b) with anchors li in A and
    lj in B, given its rows' sub-cluster log-responsibilities ``log_q`` (n, 2):

        Q = [prod_{l in A} q_l(0) prod_{l in B} q_l(1) + (sides swapped)]
            / [q_i(0) q_j(1) + q_i(1) q_j(0)].

    ``sums`` forms the per-group sums (:class:`~.subpartition.LocalSums`); a
    data-parallel run passes the anchors' rows of log_q as ``anchor_q`` = (q_i, q_j)."""
    same = torch.where(side_b, log_q[:, 1], log_q[:, 0])
    swapped = torch.where(side_b, log_q[:, 0], log_q[:, 1])
    sums = sums.group_sum(torch.stack([same, swapped], 1), g, n_groups)
    q_i, q_j = (log_q[li], log_q[lj]) if anchor_q is None else anchor_q
    anchors = torch.stack([q_i[:, 0] + q_j[:, 1], q_i[:, 1] + q_j[:, 0]], 1)
    return torch.logsumexp(sums, 1) - torch.logsumexp(anchors, 1)


class SubclusterSampler(MCMCClusterer):
    """Sub-cluster split/merge sampler for DP (and Pitman-Yor, finite Dirichlet) mixtures.

    Parameters
    ----------
    model : DPMixture, optional
        The model, its hyperpriors included (``DPMixture(..., hyperpriors=...)``).
        Default: DP(alpha=1) mixture of full Gaussians with ``GaussianNIW.weak(X)``.
    init_k : int, default 1
        Initial number of clusters (random labels).
    max_iter : int, default 400
        Iterations per chain.
    burn_in : int, optional
        Iterations discarded before draws are kept (default ``max_iter // 2``): the
        warm-up, then the exact kernel's own burn-in.
    thin : int, default 1
        Keep every ``thin``-th iteration after the burn-in.
    n_chains : int, default 1
    n_jobs : int, default 1
        Worker processes the chains run in (-1: one per CPU core; at most one per
        chain).  Chain c is seeded from ``random_state`` and c wherever it runs, so
        the draws do not depend on ``n_jobs``; each worker takes its share of torch's
        threads and pays a process start (about 2-4 s).  Not with checkpoints or a
        GPU (one process holds those).
    warmup : int, optional
        Iterations of Chang & Fisher's fast moves at the start of each chain, which
        find K from a bad start quickly; their draws are discarded (default: half of
        the burn-in; ``warmup_`` after ``fit``).  Must not exceed the burn-in.
    options : SamplerOptions or dict, optional
        The kernels' expert settings (:class:`~.subcluster_settings.SamplerOptions`:
        moves per iteration, collapsed Gibbs updates, the slice schedule, proposal
        kinds, the warm-up's moves); a dict gives some of its fields.  None: the
        defaults.  Each keeps the kept draws exact whatever its value.
    store_log_likelihood : bool, default True
        Keep the N pointwise log-likelihoods of every draw (for LOO): 8 bytes per
        point and kept draw; turn it off on large data.
    random_state : int, default 0
    device : {"cpu", "cuda", "cuda:<i>", "auto"}, default "cpu"
        Where the chains run: the data and the model's family are moved there, and
        every tensor a step creates goes there (random draws then come from that
        device's generator, so a seed gives other chains on a GPU than on the CPU).
        "auto": CUDA when torch sees a GPU.
    backend : {"auto", "torch", "compiled"}, default "auto"
        "torch": the generic implementation, any conjugate family (``StudentNIW``
        included) and device.
        "compiled": the same kernel with its loops in numba (:mod:`.subcluster_compiled`),
        for GaussianNIW components with a DP, Pitman-Yor or finite Dirichlet prior on
        the CPU without ``options.refine_iter``; on a few thousand points a torch iteration's
        cost is the dispatch of its small tensor operations, not the arithmetic.
        "auto": "compiled" where it applies (its quadratic forms are loops below d = 24
        and triangular matrix products from there), else "torch"; ``backend_`` after
        the fit says which ran.  A seed gives other draws in each.  The kernels compile
        once into numba's on-disk cache (``make venv`` does it, else the first fit, which
        says so on stderr).
    progress : bool, default False
        tqdm progress bar on stderr.
    checkpoint_every : int, default 10
        Iterations between checkpoints when ``fit(X, checkpoint_dir=...)``; resume
        with ``fit(X, checkpoint_dir=..., resume=True)``.

    The model's hyperparameters (``Hyperpriors``; alpha under a Gamma prior by
    Escobar & West 1995) are updated after step 4 of every iteration, each
    from its conditional given the partition (:mod:`.hyperparameters`); their draws
    are in ``to_inference_data()``.

    After the fit ``convergence_`` holds the rank-normalised split R-hat (two or more
    chains) and bulk ESS of K and of the log joint over the kept draws
    (:func:`~.mcmc.chain_diagnostics`), and a ``sklearn.exceptions.ConvergenceWarning``
    says when they fail Vehtari et al.'s (2021) thresholds (R-hat above 1.01, bulk
    ESS below 100 per chain).
    """

    method_name = "subcluster"
    _stat_names = ("split_acceptance", "merge_acceptance", "resplit_acceptance")
    _chain_attributes = ("label_rejections_", "backend_")

    def __init__(self, model=None, init_k: int = 1, max_iter: int = 400, burn_in=None,
                 thin: int = 1, n_chains: int = 1, n_jobs: int = 1, warmup=None,
                 options=None, store_log_likelihood: bool = True, random_state=0,
                 device="cpu", backend: str = "auto", progress: bool = False,
                 checkpoint_every: int = 10):
        self.model = model
        self.init_k = init_k
        self.max_iter = max_iter
        self.burn_in = burn_in
        self.thin = thin
        self.n_chains = n_chains
        self.n_jobs = n_jobs
        self.warmup = warmup
        self.options = options
        self.store_log_likelihood = store_log_likelihood
        self.random_state = random_state
        self.device = device
        self.backend = backend
        self.progress = progress
        self.checkpoint_every = checkpoint_every

    # -- BlackJAX-style kernel -----------------------------------------------------
    def _init_state(self, X, model, chain) -> SubclusterState:
        if self.init_k < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        self._model = model
        hyper = self._setup_hyperparameters(model)
        weights = model.weights
        n = X.shape[0]
        z, _ = relabel(torch.randint(0, min(int(self.init_k), n), (n,)))
        self.label_rejections_ = 0
        opts = sampler_options(self.options)
        common = resolve_common(self.warmup, opts, weights, self._burn_in(), (1.0, 1.0, 1.0, 0.5))
        # fixed per-row keys (independent of the partition) that pick the rows a refined
        # sub-partition fits on when a cluster has more than refine_rows of them; drawn
        # only when that kind can be proposed
        row_keys = torch.rand(n, dtype=torch.float64).to(X.device) \
            if float(common["kind_weights"][3]) > 0 else None
        backend = self._backend_for(X, model, opts)
        default = GIBBS_POINTS_COMPILED if backend == "compiled" else GIBBS_POINTS_TORCH
        self._settings = KernelSettings(
            **common, warmup_moves=opts.warmup_moves,
            gibbs_points=min(n, default if opts.gibbs_points == "auto"
                             else int(opts.gibbs_points)),
            resplit_prob=float(opts.resplit_prob), refine_rows=int(opts.refine_rows),
            refine_iter=int(opts.refine_iter),
            # kernel bandwidth of the local anchor choice: a tenth of the data's scale
            bandwidth2=max(float(model.family.features(X).var(0).mean()) * 0.01, 1e-12),
            row_keys=row_keys)
        cfg = self._settings
        self.warmup_, self.moves_per_iter_, self.gibbs_points_ = \
            cfg.warmup, cfg.moves_per_iter, cfg.gibbs_points
        self.backend_ = backend
        self._compiled = None
        # the clusters of the start may merge at once: a random start's clusters are
        # interleaved pieces of the data, not splits to protect
        born = torch.full((int(z.max()) + 1,), -cfg.burnout, dtype=torch.long)
        if backend == "compiled":
            from .subcluster_compiled import CompiledGaussianSteps, ensure_kernels

            ensure_kernels(compile_kernels)
            self._compiled = CompiledGaussianSteps(cfg, X, model.family,
                                                   self._update_hyperparameters)
            zs = torch.from_numpy(self._compiled.warmup_sublabels(
                z.numpy(), np.ones(int(z.max()) + 1, dtype=bool), np.zeros(n, dtype=np.int64)))
            return self._compiled.seed_state(SubclusterState(
                X, z, float(getattr(weights, "alpha", 1.0)), zs=zs, born=born, hyper=hyper))
        zs = self._warmup_sublabels(model.family.features(X), z,
                                    torch.ones(int(z.max()) + 1, dtype=torch.bool),
                                    torch.zeros(n, dtype=torch.long))
        return SubclusterState(X, z, float(getattr(weights, "alpha", 1.0)), zs=zs, born=born,
                               hyper=hyper)

    def _backend_for(self, X, model, opts: SamplerOptions) -> str:
        """"compiled" or "torch": the backend this fit runs (``backend``, and for "auto"
        the compiled one where it covers the model)."""
        from .subcluster_compiled import choose_backend

        return choose_backend(self.backend, model, X.device, opts.refine_iter)

    def _step(self, state: SubclusterState):
        self._family = self._hyper.family(state.hyper or {})
        if self._compiled is not None:
            self._compiled.set_family(self._family)
            weights = self._weights_for(state.alpha)
            if state.iteration < self.warmup_:
                return self._compiled.warmup_step(state, weights)
            state, info = self._compiled.exact_step(state, weights)
            if info.pop("label_rejected"):
                self.label_rejections_ += 1
            return state, info
        if state.iteration < self.warmup_:
            return self._warmup_step(state)
        return self._exact_step(state)

    def _draw(self, state) -> dict:
        if self._compiled is None:
            return super()._draw(state)
        return self._compiled.draw(state, self._weights_for(state.alpha),
                                   with_params=self.store_log_likelihood)

    def _exact_step(self, state: SubclusterState):
        fam = self._family
        weights = self._weights_for(state.alpha)
        X = state.X
        k = state.k
        stats = state.stats if state.stats is not None else fam.suff_stats_labels(X, state.z, k)

        # 1. weights and parameters from their conditionals
        log_w = conditional_log_weights(weights, stats.n)
        params = fam.sample_posterior(stats)

        # 2. K-preserving restricted Gibbs over all labels at once, then, every
        # slice_every-th exact iteration, the slice step that can empty and open
        # clusters.  Both update z given the same (pi, theta): in the space of labels,
        # weights and parameters each is an exact update of z alone (the restricted
        # one within the labelings that keep every cluster, a set the current labels
        # lie in), so the slice step reuses the log-likelihood table.
        loglik = fam.log_likelihood(X, params)
        slice_now = self._settings.slice_due(state.iteration)
        logits = loglik + log_w[:k] if slice_now else loglik.add_(log_w[:k])
        z = self._sample_labels(logits, state.z, k)
        if slice_now:
            z = self._slice_labels(X, z, log_w, weights, loglik)
        state = SubclusterState(X, z, state.alpha, state.iteration, hyper=state.hyper)

        # 3. anchored split/merge moves
        state, counts, _ = self._anchored_moves(state, weights)
        n = X.shape[0]

        # 4. collapsed Gibbs updates of gibbs_points_ labels drawn at random
        stats = fam.suff_stats_labels(X, state.z, state.k)
        if self._settings.gibbs_points:
            idx = torch.randperm(n)[:self._settings.gibbs_points]
            z, stats = collapsed_updates(fam, weights, X, state.z, stats, idx)
            state = SubclusterState(X, z, state.alpha, state.iteration, hyper=state.hyper)
        # the family's latent variables given the partition (StudentNIW's scales)
        state.X, stats = update_latent(fam, X, state.z, stats)

        # 5. hyperparameters and concentration given the partition
        state.hyper, state.alpha, lp = self._update_hyperparameters(state.hyper, state.alpha,
                                                                    stats)
        state.iteration += 1
        state.stats = stats
        info = {"k": state.k, "lp": lp,
                "split_acceptance": counts["split"][1] / max(counts["split"][0], 1),
                "merge_acceptance": counts["merge"][1] / max(counts["merge"][0], 1),
                "resplit_acceptance": counts["resplit"][1] / max(counts["resplit"][0], 1)}
        return state, info

    def _anchored_moves(self, state: SubclusterState, weights, n_moves=None):
        """One batch of anchored proposals from ``n_moves`` anchor pairs (default
        ``moves_per_iter_``, a number fixed for the chain), each an exact Metropolis-Hastings
        step: splits and merges (:meth:`_move_batch`) or, with probability
        ``resplit_prob``, re-splits (:meth:`_resplit_batch`); returns the new state, per
        kind of move [proposed, accepted], and the :class:`MoveBatch` (None when no
        move was proposed)."""
        if n_moves is None:
            n_moves = self._settings.moves_per_iter
        if state.X.shape[0] < 2 or int(n_moves) < 1:
            return state, {"split": [0, 0], "merge": [0, 0], "resplit": [0, 0]}, None
        pairs = self._anchor_pairs(self._family.features(state.X), int(n_moves))
        # which kernel this batch runs is drawn whatever the state (a mixture of exact
        # kernels); no draw at all when re-splits are off, so those chains are unchanged
        resplit = self._settings.resplit_prob
        if resplit > 0 and float(torch.rand(())) < resplit:
            batch = self._resplit_batch(state, pairs, weights)
        else:
            batch = self._move_batch(state, pairs, weights)
        new = SubclusterState(state.X, batch.z, state.alpha, state.iteration, state.zs,
                              state.born, hyper=state.hyper)
        return new, batch.counts, batch

    def _slice_labels(self, X, z, log_w, weights, loglik):
        """Labels by the slice sampler of Walker (2007) and Kalli, Griffin & Walker
        (2011, Sec. 2), a Gibbs step on the random measure: given the partition, the
        weights of its K atoms and of the rest, ``log_w`` = log (pi_1..pi_K, pi_rest) ~
        Dir(weight concentration), and their parameters theta (behind ``loglik``, the
        (N, K) table log f(x_i | theta_k), which is overwritten) are the current
        state (step 1); pi_rest splits over unoccupied atoms by the prior's sticks
        (:meth:`~bnpdeep.models.weights.WeightPrior.sample_rest_log_weights`), whose
        parameters are prior draws; u_i ~ U(0, pi_{z_i}); then every label at once,

            p(z_i = j | u, pi, theta) proportional to 1[pi_j > u_i] f(x_i | theta_j),

        over the finitely many atoms with pi_j > min_i u_i.  Unlike the restricted
        Gibbs step, clusters may empty and new ones open, so a one-point cluster that no
        split/merge proposal isolates can still dissolve (its u_i is below every
        weight) and the chain mixes over K.  Only rows with u_i below the largest new
        weight are scored against the new atoms."""
        fam = self._family
        k = log_w.shape[0] - 1
        log_u = log_w[z] + torch.log(torch.rand(z.shape[0], dtype=log_w.dtype)
                                     .clamp_min(1e-300)).to(log_w.device)
        log_new = weights.sample_rest_log_weights(k, float(log_w[k]), float(log_u.min())
                                                  ).to(log_w.device)
        # every row against the K occupied atoms (its own always has pi > u_i) ...
        logits = loglik.masked_fill_(log_w[None, :k] <= log_u[:, None], -math.inf)
        m = int(log_new.numel())
        reach = (log_u < log_new.max()).nonzero().flatten() if m else None
        wide = None
        if reach is not None and reach.numel():
            # ... and only the rows whose slice reaches a new atom against all K + m
            new_ll = fam.log_likelihood(X[reach], fam.sample_posterior(fam.empty_stats(m)))
            new_ll.masked_fill_(log_new[None] <= log_u[reach, None], -math.inf)
            wide = torch.cat([logits[reach], new_ll], 1)
        z = sample_from_cdf(categorical_cdf_(logits))
        if wide is not None:
            z[reach] = sample_from_cdf(categorical_cdf_(wide))
        z, _ = relabel(z)
        return z

    def _sample_labels(self, logits, z_old, k):
        """Labels from prod_i pi_{z_i} f(x_i | theta_{z_i}) conditioned on every cluster
        keeping at least one point (exact rejection sampling).  With probability 1/2
        only a random half of the points is resampled (the block is chosen without
        looking at the labels), which lets the step succeed when a cluster is at risk
        of emptying.  ``logits`` (N, K) is overwritten."""
        n = z_old.shape[0]
        block = torch.rand(n) < 0.5 if float(torch.rand(())) < 0.5 else None
        cdf = categorical_cdf_(logits if block is None else logits[block])
        for _ in range(self._settings.max_label_tries):
            z = sample_from_cdf(cdf)
            if block is not None:
                z = z_old.clone().index_put_((block,), z)
            if int(torch.bincount(z, minlength=k).min()) > 0:
                return z
        self.label_rejections_ += 1
        return z_old

    # -- warm-up: Chang & Fisher's moves as published (draws discarded) -----------
    def _warmup_step(self, state: SubclusterState):
        fam = self._family
        weights = self._weights_for(state.alpha)
        X, k = state.X, state.k
        zs = state.zs if state.zs is not None else torch.randint(0, 2, (X.shape[0],))
        born = state.born if state.born is not None else torch.zeros(k, dtype=torch.long)
        it = state.iteration
        sub = state.sub_stats if state.sub_stats is not None \
            else fam.suff_stats_labels(X, 2 * state.z + zs, 2 * k)
        stats = sub.pair_sums()
        log_pi = conditional_log_weights(weights, stats.n)[:k]
        log_pibar = dirichlet_log(sub.n.reshape(k, 2) + self._settings.sub_alpha / 2)
        params, sub_params = fam.sample_posterior(stats), fam.sample_posterior(sub)
        z = sample_from_cdf(categorical_cdf_(fam.log_likelihood(X, params).add_(log_pi)))
        zs = sample_from_cdf(categorical_cdf_(own_pair_loglik(fam, X, z, k, sub_params)
                                              .add_(log_pibar[z])))
        z, kept = relabel(z)                       # empty clusters are dropped
        born = born[kept]
        k = int(z.max()) + 1
        sub = fam.suff_stats_labels(X, 2 * z + zs, 2 * k)
        stats = sub.pair_sums()
        # parallel splits along the sub-clusters (Chang & Fisher eq. 15)
        split = moves.parallel_split_decisions(weights, fam, stats, sub)
        n_split = int(split.sum())
        if n_split:
            z, fresh_clusters = moves.apply_parallel_splits(z, zs, split)
            zs = self._warmup_sublabels(fam.features(X), z, fresh_clusters, zs)
            born = torch.cat([torch.where(split, it, born), torch.full((n_split,), it)])
        # clusters that did not split and are past their burn-out may merge
        eligible = ~split & (it - born[:k] >= self._settings.burnout)
        if int(eligible.sum()) > 1:
            z, zs, born = self._warmup_merges(z, zs, born, stats, weights, eligible,
                                              k + n_split, it)
        state = SubclusterState(X, z, state.alpha, state.iteration, zs, born,
                                hyper=state.hyper)
        # the exact anchored moves too: they make progress where the posterior gains
        # little from coarse splits (many overlapping blobs)
        n_moves = self._settings.warmup_moves
        n_moves = max(3, state.k // 2) if n_moves is None else n_moves
        state, counts, batch = self._anchored_moves(state, weights, n_moves=n_moves)
        if batch is not None and bool(batch.touched.any()):
            # clusters an accepted move made start their burn-out and get 2-means sub-labels
            born = torch.cat([state.born, torch.full((counts["split"][1],), it)])[batch.kept]
            state.born = torch.where(batch.touched, it, born)
            state.zs = self._warmup_sublabels(fam.features(X), state.z, batch.touched, state.zs)
        # the family's latent variables given the partition (StudentNIW's scales)
        if fam.latent_columns:
            X = state.X = fam.update_latent(X, state.z,
                                            fam.suff_stats_labels(X, state.z, state.k))
        # the sub-cluster statistics serve this lp and the next step's start
        state.sub_stats = fam.suff_stats_labels(X, 2 * state.z + state.zs, 2 * state.k)
        stats = state.sub_stats.pair_sums()
        state.hyper, state.alpha, lp = self._update_hyperparameters(state.hyper, state.alpha,
                                                                    stats)
        state.iteration += 1
        state.stats = stats
        return state, {"k": state.k, "lp": lp,
                       "split_acceptance": (n_split + counts["split"][1])
                       / (k + counts["split"][0]),
                       "merge_acceptance": counts["merge"][1] / max(counts["merge"][0], 1),
                       "resplit_acceptance": counts["resplit"][1]
                       / max(counts["resplit"][0], 1)}

    @staticmethod
    def _warmup_sublabels(X, z, clusters, zs):
        """Warm-up sub-labels of the flagged clusters from a 2-means split of their data
        (all flagged clusters in one batched call).

        Chang & Fisher start new sub-clusters at random, and a symmetric start takes
        many iterations to break; a 2-means start lets the next split be proposed at
        once.  (Warm-up only: its draws are discarded.)"""
        zs = zs.clone()
        rows, g, n_groups = select_groups(clusters, z)
        if n_groups:
            zs[rows] = two_means_groups(X[rows], g, n_groups)
        return zs

    def _warmup_merges(self, z, zs, born, stats, weights, eligible, k_now, it):
        """Pairs of eligible clusters (all of them, or on many large clusters the near
        ones: :func:`~bnpdeep.inference.moves.warmup_merge_pairs`) in random order,
        each cluster merging at most once, accepted on the posterior ratio."""
        target, used = moves.warmup_merge_targets(self._family, weights, stats, eligible,
                                                  k_now, born.shape[0])
        if not bool(used.any()):
            return z, zs, born
        # the merged pair's old clusters become its two sub-clusters
        zs = torch.where(used[z], (target[z] != z).long(), zs)
        z = target[z]
        born = torch.where(used, it, born)
        z, kept = relabel(z)
        return z, zs, born[kept]

    # -- moves -------------------------------------------------------------------
    def _anchor_pairs(self, X, m: int) -> torch.Tensor:
        """m pairs of distinct anchor points, (m, 2).  i is uniform; j is, with
        probability 1/2, uniform and otherwise drawn with probability proportional to
        a Gaussian kernel around x_i (an inverse-CDF draw after shifting each row's log
        kernel by its maximum, so no weight underflows; one exponential per point
        where a Gumbel-max draw costs a uniform and two logarithms).  The selection
        probability depends on the data only, never on the labels, so it is the same
        for a move and its reverse and drops out of the Hastings ratio."""
        n = X.shape[0]
        i = torch.randint(n, (m,))
        j = torch.randint(n - 1, (m,))
        j = j + (j >= i)
        local = (torch.rand(m) >= 0.5).nonzero().flatten() if n > 2 else torch.zeros(0)
        step = max(1, (1 << 21) // (n * X.shape[1]))
        ones = torch.ones(X.shape[1], dtype=X.dtype)
        scale = -0.5 / self._settings.bandwidth2
        for chunk in torch.split(local, step):
            logits = ((X[None] - X[i[chunk], None]).square_() @ ones).mul_(scale)
            logits[torch.arange(chunk.numel()), i[chunk]] = -math.inf
            j[chunk] = sample_from_cdf(categorical_cdf_(logits))
        return torch.stack([i, j], 1)

    def _move_batch(self, state: SubclusterState, pairs: torch.Tensor, weights) -> "MoveBatch":
        """Anchored split/merge proposals on disjoint clusters, evaluated together.

        Pairs are taken in order and kept when none of their clusters is already
        taken by a kept pair (a pair whose anchors share a cluster proposes to split
        it, otherwise to merge the two).  The kept set is the same before and after
        any of its moves -- a move maps the rows of its own clusters onto
        themselves, and a pair is dropped exactly when an anchor lies in the rows of
        an earlier kept pair -- so the batch is a composition of exact
        Metropolis-Hastings steps, each on its own clusters; the sub-partitions,
        sub-cluster draws, statistics and ratios of all of them are computed in one
        pass of batched operations, and only the block-count factor of the EPPF is
        applied in sequence (:func:`moves.accept_in_sequence`)."""
        fam = self._family
        X, z, k = state.X, state.z, state.k
        pairs = pairs[disjoint_pairs(z, pairs)]
        n_groups = pairs.shape[0]
        p = self._pair_proposals(X, z, k, pairs)
        ca, cb, rows, Xr, g, li, lj, log_q = p.ca, p.cb, p.rows, p.Xr, p.g, p.li, p.lj, p.log_q
        is_split = ca == cb
        # side B holds j: for a split the side j landed on, for a merge j's cluster
        side_b = torch.where(is_split[g], p.new_b, z[rows] == cb[g])
        s_ab = fam.suff_stats_labels(Xr, 2 * g + side_b.long(), 2 * n_groups)
        s_a, s_b = s_ab[0::2], s_ab[1::2]
        terms = moves.log_split_terms(weights, fam, s_a + s_b, s_a, s_b)
        log_prop = log_split_proposal(log_q, side_b, g, n_groups, li, lj)
        log_terms = torch.where(is_split, terms - log_prop, log_prop - terms)
        accepted = moves.accept_in_sequence(weights, k, log_terms, is_split)

        n_split = int((accepted & is_split).sum())
        counts = {"split": [int(is_split.sum()), n_split],
                  "merge": [int((~is_split).sum()), int((accepted & ~is_split).sum())],
                  "resplit": [0, 0]}
        touched = torch.zeros(k + n_split, dtype=torch.bool)
        kept = torch.arange(k + n_split)
        if bool(accepted.any()):
            new_label = torch.where(is_split, k + torch.cumsum(accepted & is_split, 0) - 1, ca)
            moving = side_b & accepted[g]
            z = z.clone()
            z[rows[moving]] = new_label[g[moving]]
            touched[ca[accepted]] = True
            touched[k:] = True
            if counts["merge"][1]:
                z, kept = relabel(z)
        return MoveBatch(z, counts, kept, touched[kept])

    def _resplit_batch(self, state: SubclusterState, pairs: torch.Tensor, weights
                       ) -> "MoveBatch":
        """Anchored re-splits: K-preserving moves that redraw the boundary between two
        clusters (the split-merge "restricted" move of Jain & Neal 2004, Sec. 3, with
        this sampler's sub-cluster proposal).

        Pairs are kept as in :meth:`_move_batch` (:func:`disjoint_pairs`); a kept pair
        whose anchors i, j share a cluster does nothing.  For one whose anchors lie in
        clusters A (holding i) and B (holding j), the union's rows get sub-cluster
        responsibilities q from the union's data alone, exactly as a merge of A and B
        would (:meth:`_subcluster_responsibilities`), a new split (A', B') is drawn
        from them with i and j apart (i in A'), and

            log H = log p(z' | X) - log p(z | X) + log Q(A, B) - log Q(A', B'),

        Q the proposal probability of :func:`log_split_proposal`: the reverse move
        is a re-split of the same union with the same anchors, under the same
        distribution of q.  K does not change, so the EPPF contributes only
        log W(n_A') + log W(n_B') - log W(n_A) - log W(n_B), and the moves of a batch
        (on disjoint clusters) are accepted independently.  A merge followed by a
        split needs an intermediate state the posterior may make all but
        unreachable (one cluster too few); a re-split moves a misplaced boundary
        between two overlapping clusters in one step."""
        fam = self._family
        X, z, k = state.X, state.z, state.k
        keep = disjoint_pairs(z, pairs)
        pairs = pairs[keep]
        # only pairs across two clusters act; the others hold their cluster, as kept
        pairs = pairs[z[pairs[:, 0]] != z[pairs[:, 1]]]
        n_groups = pairs.shape[0]
        counts = {"split": [0, 0], "merge": [0, 0], "resplit": [n_groups, 0]}
        kept = torch.arange(k)
        touched = torch.zeros(k, dtype=torch.bool)
        if not n_groups:
            return MoveBatch(z, counts, kept, touched)
        p = self._pair_proposals(X, z, k, pairs)
        ca, cb, rows, Xr, g, li, lj, log_q, new_b = p    # B' = new_b holds j
        old_b = z[rows] == cb[g]
        # statistics of the old and the new two-cluster partitions of each union
        sides = fam.suff_stats_labels(torch.cat([Xr, Xr]),
                                      torch.cat([2 * g + old_b.long(),
                                                 2 * n_groups + 2 * g + new_b.long()]),
                                      4 * n_groups)
        s_a, s_b = sides[0::2], sides[1::2]
        # log p(z' | X) - log p(z | X): the split terms of the new sides minus the old
        terms = moves.log_split_terms(weights, fam, s_a + s_b, s_a, s_b)
        log_h = (terms[n_groups:] - terms[:n_groups]
                 + log_split_proposal(log_q, old_b, g, n_groups, li, lj)
                 - log_split_proposal(log_q, new_b, g, n_groups, li, lj))
        accepted = moves.mh_accept(log_h)
        counts["resplit"][1] = int(accepted.sum())
        if counts["resplit"][1]:
            moving = accepted[g]
            z = z.clone()
            z[rows[moving]] = torch.where(new_b[moving], cb[g[moving]], ca[g[moving]])
            touched[ca[accepted]] = True
            touched[cb[accepted]] = True
        return MoveBatch(z, counts, kept, touched)

    def _pair_proposals(self, X, z, k: int, pairs: torch.Tensor) -> "PairProposals":
        """What a batch of moves on the kept anchor ``pairs`` (m, 2) proposes: group c
        holds the rows of the clusters of pair c (one cluster or two), ``rows`` in
        data order with ``g`` their group and ``li``, ``lj`` the positions of the
        anchors among them; ``log_q`` the sub-cluster responsibilities of
        :meth:`_subcluster_responsibilities`; and a split of every group drawn from
        them, each row's side from q and then the anchors put apart (the pair of
        sides from q_i(0) q_j(1) : q_i(1) q_j(0)), ``new_b`` marking the side of j."""
        n_groups = pairs.shape[0]
        ca, cb = z[pairs[:, 0]], z[pairs[:, 1]]
        group_of = torch.full((k,), -1, dtype=torch.long)
        group_of[cb] = torch.arange(n_groups)
        group_of[ca] = torch.arange(n_groups)
        gid = group_of[z]
        rows = (gid >= 0).nonzero().flatten()
        g, Xr = gid[rows], X[rows]
        li, lj = torch.searchsorted(rows, pairs.contiguous()).unbind(1)
        log_q = self._subcluster_responsibilities(Xr, g, n_groups, li, rows)
        side = sample_categorical(log_q) == 1
        anchor_terms = torch.stack([log_q[li, 0] + log_q[lj, 1], log_q[li, 1] + log_q[lj, 0]], 1)
        flip = sample_categorical(anchor_terms) == 1
        side[li], side[lj] = flip, ~flip
        return PairProposals(ca, cb, rows, Xr, g, li, lj, log_q, side != side[li][g])

    def _subcluster_responsibilities(self, Xr: torch.Tensor, g: torch.Tensor, n_groups: int,
                                     anchors: torch.Tensor, rows_of_x: torch.Tensor
                                     ) -> torch.Tensor:
        """log q_l(h): sub-cluster responsibilities of the rows of every group, (n, 2);
        ``Xr`` holds the rows ``rows_of_x`` of the data.

        Sub-clusters of each group: a deterministic sub-partition of a kind drawn
        with the probabilities ``proposal_weights``, whatever the state -- 2-means
        from the principal axis, 2-means
        from a random axis, a group carved around its anchor row
        (:func:`~bnpdeep.inference.subpartition.carve_groups`), or 2-means from a random
        axis in the group's whitened coordinates, refined by ``refine_iter`` EM
        iterations of its full-covariance sub-mixture
        (:func:`~bnpdeep.inference.subpartition.refined_two_means_groups`) -- then
        weights Dir(n_h + a/2) and parameters drawn from their conjugate
        posterior.

        One kind serves every group of the batch (drawn whatever the state, so each
        move is still an exact Metropolis-Hastings step given it, and their
        composition and the mixture over kinds leave the posterior invariant): one
        sub-partition pass per batch instead of one per kind present (11% fewer torch
        operations per iteration on a1)."""
        fam = self._family
        kind = int(torch.multinomial(self._settings.kind_weights, 1))
        axes = torch.randn(n_groups, fam.dim, dtype=Xr.dtype)
        if kind == 0:
            h = two_means_groups(fam.features(Xr), g, n_groups)
        elif kind == 1:
            h = two_means_groups(fam.features(Xr), g, n_groups, axes)
        elif kind == 2:
            h = carve_groups(fam, Xr, g, n_groups, anchors)
        else:
            cfg = self._settings
            h = refined_two_means_groups(fam, Xr, g, n_groups, axes, n_iter=cfg.refine_iter,
                                         keys=cfg.row_keys[rows_of_x],
                                         max_rows=cfg.refine_rows)
        sub = fam.suff_stats_labels(Xr, 2 * g + h, 2 * n_groups)
        log_w = dirichlet_log(sub.n.reshape(n_groups, 2) + self._settings.sub_alpha / 2)
        ll = own_pair_loglik(fam, Xr, g, n_groups, fam.sample_posterior(sub)) + log_w[g]
        return ll - torch.logsumexp(ll, 1, keepdim=True)



def compile_kernels() -> float:
    """Compile the compiled backend's kernels (or load them from numba's on-disk cache)
    with short fits on 50 points; returns its seconds.  A fresh install compiles them
    in about 45 s (2026-11-26, 2-core CPU); ``make venv`` does it once, later processes
    load them in 0.1-0.3 s.  A compiled fit calls it once per process
    (:func:`.subcluster_compiled.ensure_kernels`)."""
    import time

    from . import kernels as kn
    from . import subcluster_compiled

    subcluster_compiled.mark_kernels_ready()       # its own fits skip ensure_kernels
    X = np.random.default_rng(0).normal(size=(50, 2))
    start = time.perf_counter()
    with warnings.catch_warnings():          # 2-draw fits: nothing to diagnose
        warnings.simplefilter("ignore", ConvergenceWarning)
        SubclusterSampler(max_iter=4, backend="compiled").fit(X)
        SubclusterSampler(max_iter=4, backend="compiled",
                          options=SamplerOptions(resplit_prob=1.0)).fit(X)
    stats = kn.group_stats(X, np.arange(50) % 2, 2)          # the warm-up's merges
    kn.split_terms(*stats, *stats, np.zeros(2), 1.0, 4.0, np.eye(2), 0.0, 0.0, 0.0)
    return time.perf_counter() - start


__all__ = ["SubclusterSampler", "SubclusterState", "MoveBatch", "compile_kernels",
           "log_split_proposal"]
