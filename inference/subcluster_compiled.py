"""The compiled backend of :class:`~bnpdeep.inference.subcluster.SubclusterSampler`:
the same two-phase sampler, step for step, for full-covariance Gaussian components
(:class:`~bnpdeep.models.GaussianNIW`) under any weight prior of Gibbs type with
V(N, K+1) / V(N, K) = alpha + K sigma and W(n) = Gamma(n - sigma) / Gamma(1 - sigma)
(the DP: sigma = 0; Pitman-Yor: sigma = the discount; the finite symmetric Dirichlet
of k components with concentration alpha: sigma = -alpha/k).

Every step of :mod:`.subcluster` -- the warm-up's persistent sub-clusters, parallel
splits and burn-out-gated merges, the exact phase's restricted Gibbs, slice step
and anchored split/merge/re-split batches with the four sub-partition kinds -- is
written here on numpy arrays, with the loops over points and groups in the numba
kernels of :mod:`.kernels`; the hot parts of a step (the warm-up's draws and
parallel split decisions, the exact phase's restricted Gibbs labels, a whole
anchored split/merge batch) are one kernel call each, since on a few thousand
points the cost of a call, not its arithmetic, sets the speed.  Random numbers
come from a numpy Generator seeded from torch's per-chain seed and kept in the
chain's state (checkpoints resume it); the fused kernels draw from it in the
order of the numpy calls they replaced.  The Hastings ratios are the same
expressions; a seed gives other draws than the torch backend (the
exact-posterior tests check both).

Not covered (the torch backend runs instead): other families or weight priors,
``refine_iter > 0``, and devices other than the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..models import GaussianNIW, SuffStats
from ..models.families.gaussian_niw import GaussianParams
from . import kernels as kn
from .moves import disjoint_pairs, warmup_merge_pairs


def compiled_supported(model, refine_iter: int, device) -> bool:
    """Whether the compiled backend covers this model and these settings."""
    return (type(model.family) is GaussianNIW
            and model.weights.gibbs_parameters() is not None
            and int(refine_iter) == 0 and torch.device(device).type == "cpu")


def choose_backend(backend: str, model, device, refine_iter: int = 0) -> str:
    """"compiled" or "torch": the backend a fit runs for its ``backend`` argument
    ("auto": the compiled one where :func:`compiled_supported` covers the model)."""
    if backend not in ("auto", "torch", "compiled"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'compiled', got {backend!r}")
    if backend == "torch":
        return "torch"
    supported = compiled_supported(model, refine_iter, device)
    if backend == "compiled" and not supported:
        raise ValueError(
            "backend='compiled' covers GaussianNIW components with a DP, Pitman-Yor "
            "or finite Dirichlet prior on the CPU with refine_iter=0; got "
            f"{type(model.family).__name__}, {type(model.weights).__name__}, "
            f"device {torch.device(device)}, refine_iter={refine_iter}")
    return "compiled" if supported else "torch"


def eppf_kernel_args(weights) -> tuple[float, float, float, float]:
    """What the kernels take of a weight prior of Gibbs type
    (:meth:`~bnpdeep.models.weights.WeightPrior.gibbs_parameters`): (alpha, sigma,
    largest K, log Gamma(1 - sigma)), the last the normaliser of W(n) =
    Gamma(n - sigma) / Gamma(1 - sigma)."""
    params = weights.gibbs_parameters()
    if params is None:
        raise TypeError(f"no compiled form of {type(weights).__name__}")
    alpha, sigma, max_clusters = (float(p) for p in params)
    return alpha, sigma, max_clusters, math.lgamma(1.0 - sigma)


def weight_concentration(weights, n: np.ndarray) -> np.ndarray:
    """Dirichlet parameters of (pi_1..pi_K, pi_rest) given block sizes ``n``, as one
    array (the prior's :meth:`~bnpdeep.models.weights.WeightPrior.weight_concentration`)."""
    conc, rest = weights.weight_concentration(torch.from_numpy(n))
    return np.append(conc.numpy(), float(rest))


def dirichlet_log(rng: np.random.Generator, conc: np.ndarray) -> np.ndarray:
    """log of a Dirichlet draw along the last axis, via Gamma variables; zero
    concentration -> -inf (:func:`.kernels.draw_dirichlet_log`)."""
    conc = np.asarray(conc, dtype=np.float64)
    flat = np.ascontiguousarray(conc.reshape(-1, conc.shape[-1]))
    return kn.draw_dirichlet_log(rng, flat).reshape(conc.shape)


def niw_arrays(family: GaussianNIW) -> tuple:
    """(mu0, kappa, nu, Psi) of a GaussianNIW as the kernels take them: float64 numpy
    arrays and floats."""
    return (family.mu0.cpu().numpy().astype(np.float64), float(family.kappa),
            float(family.nu), family.psi.cpu().numpy().astype(np.float64))


class CompiledGaussianSteps:
    """The warm-up and exact steps of one chain of a sub-cluster sampler on numpy
    arrays, with the kernel's constants ``settings``
    (:class:`~bnpdeep.inference.subcluster_settings.KernelSettings`) and the
    sampler's hyperparameter and concentration update ``update_hyperparameters``
    (:meth:`~bnpdeep.inference.mcmc.MCMCClusterer._update_hyperparameters`, shared
    with the torch backend)."""

    def __init__(self, settings, X: torch.Tensor, family: GaussianNIW,
                 update_hyperparameters):
        self.cfg = settings
        self.update_hyperparameters = update_hyperparameters
        self.X = np.ascontiguousarray(X.detach().cpu().numpy(), dtype=np.float64)
        self._family = None
        self.set_family(family)
        self.kind_cdf = settings.kind_cdf
        self.keys = (np.zeros(0) if settings.row_keys is None
                     else settings.row_keys.cpu().numpy().astype(np.float64))

    def set_family(self, family: GaussianNIW) -> None:
        """Take the NIW prior (mu0, kappa, nu, Psi) every kernel is given from
        ``family`` (its hyperparameters change along the chain)."""
        if family is self._family:
            return
        self._family = family
        self.prior = niw_arrays(family)
        _, kappa0, nu0, psi0 = self.prior
        d = self.X.shape[1]
        self.prior_const = (-kn.multigammaln(0.5 * nu0, d)
                            + nu0 * np.log(np.diag(np.linalg.cholesky(psi0))).sum()
                            + 0.5 * d * math.log(kappa0))

    def _log_rand(self, n) -> np.ndarray:
        return np.log(np.maximum(self.rng.random(n), 1e-300))

    def seed_state(self, state):
        """Give a chain's first state its numpy generator, seeded from torch's (which the
        sampler seeds per chain); it travels in the state, checkpoints included."""
        state.rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        self.rng = state.rng
        return state

    # -- conjugate algebra on (n, s1, s2) --------------------------------------------
    def stats(self, X, lab, k):
        return kn.group_stats(X, np.ascontiguousarray(lab, dtype=np.int64), int(k))

    def posterior(self, stats):
        n, s1, s2 = stats
        return kn.niw_posterior(n, s1, s2, *self.prior)

    def log_marginal(self, stats) -> np.ndarray:
        kap, _, nu, chol = self.posterior(stats)
        return kn.log_marginal(stats[0], kap, nu, chol, self.prior_const)

    def sample_components(self, stats):
        """(W, b, c, mean) of draws theta_k ~ p(theta | X_k) for every group
        (:func:`.kernels.draw_niw`)."""
        return kn.draw_niw(self.rng, *stats, *self.prior)

    def split_terms(self, eppf, s_a, s_b) -> np.ndarray:
        """log W(n_a) + log W(n_b) - log W(n) + log f(X_a) + log f(X_b) - log f(X)
        (:func:`.moves.log_split_terms`, :func:`.kernels.split_terms`)."""
        return kn.split_terms(*s_a, *s_b, *self.prior, self.prior_const, eppf[1], eppf[3])

    # -- the exact kernel ------------------------------------------------------------
    def exact_step(self, state, weights):
        """One exact iteration; ``info["label_rejected"]`` says whether the restricted
        Gibbs step kept the labels after ``max_label_tries`` rejections."""
        s, X = self.cfg, self.X
        self.rng = state.rng
        eppf = eppf_kernel_args(weights)
        z = state.z.numpy()
        k = int(z.max()) + 1
        stats = state.stats if state.stats is not None else self.stats(X, z, k)
        # 1-2. weights and parameters from their conditionals, restricted Gibbs (K kept);
        # every slice_every-th iteration the slice step
        z, log_w, W, b, c, moved = kn.restricted_labels(
            self.rng, X, z, *stats, weight_concentration(weights, stats[0]), *self.prior,
            int(s.max_label_tries))
        if s.slice_due(state.iteration):
            z = self.slice_labels(z, log_w, weights, (W, b, c))
        # 3. anchored split/merge moves
        z, counts, _ = self.anchored_moves(z, eppf, s.moves_per_iter)
        # 4. collapsed Gibbs updates of gibbs_points labels drawn at random
        k = int(z.max()) + 1
        stats = self.stats(X, z, k)
        if s.gibbs_points:
            idx = self.rng.choice(X.shape[0], s.gibbs_points, replace=False)
            z, *stats = kn.collapsed_labels(
                self.rng, X, z, k, idx, *stats, *self.prior, *eppf[:3])
        new, info = self._finish(state, z, None, counts, None, tuple(stats))
        info["label_rejected"] = not moved
        return new, info

    def slice_labels(self, z, log_w, weights, comps):
        """:meth:`SubclusterSampler._slice_labels`: u_i ~ U(0, pi_{z_i}), the rest mass
        over new prior atoms by the prior's sticks, z_i proportional to
        1[pi_j > u_i] f(x_i | theta_j)."""
        k = log_w.shape[0] - 1
        log_u = log_w[z] + self._log_rand(z.shape[0])
        log_new = weights.sample_rest_log_weights(k, float(log_w[k]), float(log_u.min())
                                                  ).numpy()
        W, b, c = comps[:3]
        m = log_new.shape[0]
        if m:
            d = self.X.shape[1]
            new = self.sample_components((np.zeros(m), np.zeros((m, d)), np.zeros((m, d, d))))
            W, b, c = (np.concatenate([W, new[0]]), np.concatenate([b, new[1]]),
                       np.concatenate([c, new[2]]))
        cdf = kn.slice_cdf(self.X, W, b, c, np.concatenate([log_w[:k], log_new]), log_u)
        z = kn.draw_from_cdf(cdf, self.rng.random(z.shape[0]))
        return kn.relabel(z)[0]

    def _finish(self, state, z, zs, counts, born, stats=None):
        """Statistics (``stats`` when the step has them), the hyperparameter and
        concentration updates given them (the sampler's, shared with the torch
        backend), the log joint and the info of a step."""
        X = self.X
        k = int(z.max()) + 1
        if zs is None:
            stats, sub = (self.stats(X, z, k) if stats is None else stats), None
        else:
            sub = self.stats(X, 2 * z + zs, 2 * k)
            stats = kn.pair_sums(*sub)
        n, s1, s2 = (torch.from_numpy(a) for a in stats)

        def log_marginal(family):
            self.set_family(family)
            return float(self.log_marginal(stats).sum())

        hyper, alpha, lp = self.update_hyperparameters(
            state.hyper, state.alpha, SuffStats(n=n, sx=s1, sxx=s2), log_marginal)
        new = type(state)(state.X, torch.from_numpy(z), alpha, state.iteration + 1,
                          None if zs is None else torch.from_numpy(zs),
                          None if born is None else torch.from_numpy(born), stats, sub,
                          state.rng, hyper)
        info = {"k": k, "lp": lp,
                "merge_acceptance": counts["merge"][1] / max(counts["merge"][0], 1),
                "resplit_acceptance": counts["resplit"][1] / max(counts["resplit"][0], 1),
                "split_acceptance": counts["split"][1] / max(counts["split"][0], 1)}
        return new, info

    # -- anchored moves --------------------------------------------------------------
    def anchor_pairs(self, m: int) -> np.ndarray:
        """:meth:`SubclusterSampler._anchor_pairs` (:func:`.kernels.anchor_pairs`)."""
        return kn.anchor_pairs(self.rng, self.X, int(m), 1.0 / self.cfg.bandwidth2)

    def anchored_moves(self, z, eppf, n_moves):
        """One batch of anchored proposals: split/merge or, with probability
        ``resplit_prob``, re-splits; returns (labels, counts, batch or None)."""
        s = self.cfg
        if self.X.shape[0] < 2 or int(n_moves) < 1:
            return z, {"split": [0, 0], "merge": [0, 0], "resplit": [0, 0]}, None
        pairs = self.anchor_pairs(int(n_moves))
        if s.resplit_prob > 0 and self.rng.random() < s.resplit_prob:
            batch = self.resplit_batch(z, pairs, eppf)
        else:
            batch = self.move_batch(z, pairs, eppf)
        return batch[0], batch[1], batch

    def pair_proposals(self, z, k, pairs):
        """:meth:`SubclusterSampler._pair_proposals` (:func:`.kernels.pair_proposals`):
        the groups of the kept pairs, their sub-cluster log-responsibilities and a
        drawn split of each (anchors apart)."""
        s = self.cfg
        rows, Xr, g, li, lj, log_q, new_b = kn.pair_proposals(
            self.rng, self.X, z, int(k), np.ascontiguousarray(pairs), self.kind_cdf,
            float(s.sub_alpha), self.keys, int(s.refine_rows), *self.prior)
        return z[pairs[:, 0]], z[pairs[:, 1]], rows, Xr, g, li, lj, log_q, new_b

    def move_batch(self, z, pairs, eppf):
        """:meth:`SubclusterSampler._move_batch` (:func:`.kernels.split_merge_batch`):
        anchored splits and merges on disjoint clusters; returns (labels, counts, kept
        old ids, touched)."""
        s = self.cfg
        k = int(z.max()) + 1
        pairs = np.ascontiguousarray(pairs[disjoint_pairs(z, pairs)])
        z, accepted, is_split = kn.split_merge_batch(
            self.rng, self.X, z, k, pairs, self.kind_cdf, float(s.sub_alpha), self.keys,
            int(s.refine_rows), *self.prior, self.prior_const, *eppf)
        n_split = int((accepted & is_split).sum())
        counts = {"split": [int(is_split.sum()), n_split],
                  "merge": [int((~is_split).sum()), int((accepted & ~is_split).sum())],
                  "resplit": [0, 0]}
        touched = np.zeros(k + n_split, dtype=bool)
        kept = np.arange(k + n_split)
        if accepted.any():
            touched[z[pairs[accepted, 0]]] = True
            touched[k:] = True
            if counts["merge"][1]:
                z, kept = kn.relabel(z)
        return z, counts, kept, touched[kept]

    def resplit_batch(self, z, pairs, eppf):
        """:meth:`SubclusterSampler._resplit_batch`: K-preserving redraws of the boundary
        between the anchors' two clusters."""
        k = int(z.max()) + 1
        pairs = pairs[disjoint_pairs(z, pairs)]
        pairs = pairs[z[pairs[:, 0]] != z[pairs[:, 1]]]
        g_n = pairs.shape[0]
        counts = {"split": [0, 0], "merge": [0, 0], "resplit": [g_n, 0]}
        kept, touched = np.arange(k), np.zeros(k, dtype=bool)
        if not g_n:
            return z, counts, kept, touched
        ca, cb, rows, Xr, g, li, lj, log_q, new_b = self.pair_proposals(z, k, pairs)
        old_b = z[rows] == cb[g]
        sides = self.stats(np.concatenate([Xr, Xr]),
                           np.concatenate([2 * g + old_b, 2 * g_n + 2 * g + new_b]), 4 * g_n)
        s_a = tuple(a[0::2] for a in sides)
        s_b = tuple(a[1::2] for a in sides)
        terms = self.split_terms(eppf, s_a, s_b)
        log_h = (terms[g_n:] - terms[:g_n]
                 + kn.log_split_proposal(log_q, old_b, g, g_n, li, lj)
                 - kn.log_split_proposal(log_q, new_b, g, g_n, li, lj))
        accepted = self._log_rand(g_n) < log_h
        counts["resplit"][1] = int(accepted.sum())
        if counts["resplit"][1]:
            moving = accepted[g]
            z = z.copy()
            z[rows[moving]] = np.where(new_b[moving], cb[g[moving]], ca[g[moving]])
            touched[ca[accepted]] = True
            touched[cb[accepted]] = True
        return z, counts, kept, touched

    # -- the warm-up: Chang & Fisher's moves -----------------------------------------
    def warmup_sublabels(self, z, clusters, zs):
        """2-means sub-labels (principal axis) of the flagged clusters' rows."""
        zs = zs.copy()
        rows = np.flatnonzero(clusters[z])
        if rows.size:
            remap = np.cumsum(clusters) - 1
            g_n = int(clusters.sum())
            zs[rows] = kn.two_means_groups(np.ascontiguousarray(self.X[rows]), remap[z[rows]],
                                           g_n, np.zeros((g_n, self.X.shape[1])), False)
        return zs

    def warmup_step(self, state, weights):
        s, X = self.cfg, self.X
        self.rng = state.rng
        eppf = eppf_kernel_args(weights)
        z, zs, born = state.z.numpy(), state.zs.numpy(), state.born.numpy()
        it = state.iteration
        k = int(z.max()) + 1
        sub = state.sub_stats if state.sub_stats is not None \
            else self.stats(X, 2 * z + zs, 2 * k)
        stats = kn.pair_sums(*sub)
        z, zs, kept, split, sub, stats = kn.warmup_labels(
            self.rng, X, *sub, weight_concentration(weights, stats[0]), float(s.sub_alpha),
            *self.prior, self.prior_const, *eppf)
        born = born[kept]
        k = kept.shape[0]
        n_split = int(split.sum())
        if n_split:
            target = np.full(k, -1, dtype=np.int64)
            target[split] = np.arange(k, k + n_split)
            moving = split[z] & (zs == 1)
            z = z.copy()
            z[moving] = target[z[moving]]
            fresh = np.zeros(k + n_split, dtype=bool)
            fresh[np.flatnonzero(split)] = True
            fresh[k:] = True
            zs = self.warmup_sublabels(z, fresh, zs)
            born = np.concatenate([np.where(split, it, born), np.full(n_split, it)])
        eligible = ~split & (it - born[:k] >= s.burnout)
        if int(eligible.sum()) > 1:
            z, zs, born = self.warmup_merges(z, zs, born, stats, eppf, eligible, k + n_split,
                                             it)
        n_moves = s.warmup_moves if s.warmup_moves is not None \
            else max(3, (int(z.max()) + 1) // 2)
        z, counts, batch = self.anchored_moves(z, eppf, n_moves)
        if batch is not None and batch[3].any():
            _, _, kept, touched = batch
            born = np.concatenate([born, np.full(counts["split"][1], it)])[kept]
            born = np.where(touched, it, born)
            zs = self.warmup_sublabels(z, touched, zs)
        new, info = self._finish(state, z, zs, counts, born.astype(np.int64))
        info["split_acceptance"] = (n_split + counts["split"][1]) / (k + counts["split"][0])
        return new, info

    def warmup_merges(self, z, zs, born, stats, eppf, eligible, k_now, it):
        """:meth:`SubclusterSampler._warmup_merges`: pairs of eligible clusters (all,
        or the near ones: :func:`.moves.warmup_merge_pairs`) in random order, each
        cluster merging at most once, on the posterior ratio."""
        n, s1 = stats[0], stats[1]
        d = s1.shape[1]
        i, j = warmup_merge_pairs(torch.from_numpy(s1 / np.maximum(n, 1e-12)[:, None]),
                                  torch.from_numpy(np.asarray(eligible, dtype=bool)),
                                  1 + d + d * d)
        i, j = i.numpy(), j.numpy()
        s_i = tuple(a[i] for a in stats)
        s_j = tuple(a[j] for a in stats)
        log_h = -(kn.log_new_block_ratio(*eppf[:3], k_now - 1)
                  + self.split_terms(eppf, s_i, s_j))
        accept = self._log_rand(i.shape[0]) < log_h
        order = self.rng.permutation(i.shape[0])
        order = order[accept[order]]
        target = np.arange(born.shape[0])
        used = np.zeros(born.shape[0], dtype=bool)
        taken = set()
        for a, b in zip(i[order].tolist(), j[order].tolist(), strict=True):
            if a not in taken and b not in taken:
                taken.update((a, b))
                target[b] = a
                used[a] = used[b] = True
        if not taken:
            return z, zs, born
        zs = np.where(used[z], (target[z] != z).astype(np.int64), zs)
        z = target[z]
        born = np.where(used, it, born)
        z, kept = kn.relabel(z)
        return z, zs, born[kept]

    # -- draws -------------------------------------------------------------------------
    def draw(self, state, weights, with_params: bool):
        """Weights (and, for the pointwise log-likelihood, parameters as torch
        GaussianParams) drawn from their conditionals given the labels."""
        self.rng = state.rng
        z = state.z.numpy()
        stats = state.stats if state.stats is not None \
            else self.stats(self.X, z, int(z.max()) + 1)
        conc = weight_concentration(weights, stats[0])
        log_w = torch.from_numpy(dirichlet_log(self.rng, conc))
        params = None
        if with_params:
            W, _, _, mean = self.sample_components(stats)
            prec = np.einsum("kji,kjl->kil", W, W)
            params = GaussianParams(torch.from_numpy(mean), torch.from_numpy(np.linalg.inv(prec)))
        return {"labels": state.z, "log_pi": log_w[:-1], "log_pi_rest": log_w[-1],
                "params": params, "alpha": state.alpha}


# Seconds a first kernel load may take before ensure_kernels says it is compiling.
COMPILE_NOTICE_AFTER = 2.0
_kernels_ready = False


def mark_kernels_ready() -> None:
    """Record that this process has loaded the kernels (:func:`ensure_kernels` then
    returns at once)."""
    global _kernels_ready
    _kernels_ready = True


def ensure_kernels(load_kernels) -> None:
    """Load the kernels once per process before a compiled fit, by ``load_kernels()``
    (:func:`.subcluster.compile_kernels`: short fits that compile them).  Where numba's
    cache holds them this takes 0.1-0.3 s; where it does not (a fresh ``pip install``)
    the compile takes about 45 s, and a line on stderr says so once the load has run
    past ``COMPILE_NOTICE_AFTER`` seconds, so that a first fit does not look hung."""
    global _kernels_ready
    if _kernels_ready:
        return
    _kernels_ready = True
    import sys
    import threading

    notice = threading.Timer(COMPILE_NOTICE_AFTER, lambda: print(
        "bnpdeep: compiling the sub-cluster sampler's numba kernels into numba's cache "
        "(once per install, about 45 s on 2 cores; backend='torch' skips them)",
        file=sys.stderr, flush=True))
    notice.daemon = True
    notice.start()
    try:
        load_kernels()
    except BaseException:
        _kernels_ready = False
        raise
    finally:
        notice.cancel()


__all__ = ["CompiledGaussianSteps", "choose_backend", "compiled_supported", "eppf_kernel_args",
           "ensure_kernels", "mark_kernels_ready", "weight_concentration"]
