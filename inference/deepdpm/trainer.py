"""DeepDPM (Ronen, Finder & Freifeld, CVPR 2022): amortized clustering with unknown K.

Each epoch alternates, as in the paper's Sec. 3:

* **network step** (every minibatch).  E-step targets from the current mixture,
  r^E_ik = pi_k p(x_i | theta_k) / sum_l pi_l p(x_i | theta_l) (eq. 2, log space,
  float64), and the clustering loss KL(r^E || r) between them and the net's
  r = f_cl(x) (or the reverse KL, or Pyro's ELBO with the nets as the guide).
  Each sub-clustering net minimises the isotropic loss
  sum_i sum_j r~_ij ||x_i - mu~_{z_i j}||^2 over the points of its cluster
  (eq. 5), z_i = argmax_k r_ik.
* **M-step** (end of epoch).  Weighted MAP of the component parameters under
  the family's conjugate prior, weighted by the net's own r (eq. 3), weights
  pi_k = (N_k + alpha / K) / (N + alpha); the same for the two sub-clusters of
  every cluster, weighted by 1[z_i = k] r~_ij.
* **split / merge** (after ``burn_in_epochs``, every ``move_every`` epochs,
  alternating).  Split every cluster into its sub-clusters with probability
  min(1, H_s), H_s the DP posterior ratio of the hard partitions (eq. 7,
  :func:`bnpdeep.inference.moves.log_split_ratio`); merge pairs among each
  cluster's 3 nearest neighbours, in random order, each cluster at most once per
  step, with H_m = 1 / H_s of the reverse split.  The nets change shape
  (:mod:`.nets`) and the optimiser restarts.

Three additions to the paper, each switchable, each there because a start from
one cluster otherwise stalls on the benchmark data (benchmarks/README.md):

* ``split_refine``: before a split step every cluster's sub-clusters are refined
  by EM of its two-component sub-mixture with the family's own likelihood
  (:func:`~bnpdeep.inference.subpartition.refine_subclusters`); the isotropic
  sub-net loss only ever proposes 2-means-like halves.
* ``carve``: a cluster whose split is rejected proposes carving local groups
  around random members, judged by the same H_s.
* ``settle_max``: after an accepted move the mixture is held (no M-step, moves
  wait) until the net's argmax has picked up the new clusters.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from bnpdeep.models import DPMixture
from bnpdeep.models.dpmm import gather_params
from pyro.infer import TraceEnum_ELBO
from tqdm.auto import tqdm

from bnpdeep.linalg import DTYPE, as_tensor

from .. import moves
from ..base import CheckpointedEstimator, resolve_device
from ..draws import approximate_posterior_arrays
from ..mcmc import default_model, relabel
from ..subpartition import carve, refine_subclusters, two_means
from .guide import DeepDPMGuide
from .nets import ClusterNet, SubclusterNets

_CHUNK = 16384          # rows per chunk of full-data passes (M-step, predict)


@dataclass
class Mixture:
    """The point-estimate mixture the nets are trained against."""

    log_pi: torch.Tensor          # (K,)
    params: tuple                 # the family's parameters of K components
    sub_log_pi: torch.Tensor      # (K, 2)
    sub_params: tuple             # 2K sub-components, ordered (k, 0), (k, 1)
    sub_centres: torch.Tensor     # (K, 2, d) for the isotropic loss

    @property
    def k(self) -> int:
        return self.log_pi.shape[0]


def _centres(stats) -> torch.Tensor:
    """Weighted mean of the rows of each group (the isotropic loss's centres)."""
    total = stats.fields["sx"] if "sx" in stats.fields else stats.fields["counts"]
    return total / stats.n.clamp_min(1e-12)[:, None]


def _take(params, index):
    return gather_params(params, torch.as_tensor(index, dtype=torch.long))


def _cat(a, b):
    return type(a)(*(torch.cat([x, y]) for x, y in zip(a, b, strict=True)))


class DeepDPM(CheckpointedEstimator):
    """DeepDPM: a clustering net and per-cluster sub-clustering nets trained against a
    DP mixture, with split/merge moves that change K (Ronen et al. 2022).

    Parameters
    ----------
    model : DPMixture, optional
        Default: DP(alpha=1) mixture of full Gaussians with ``GaussianNIW.weak(X)``.
    init_k : int, default 1
        Clusters of the k-means initialisation.
    max_epochs : int, default 100
        Passes over the data.  The reference code trains 500 epochs at batch 128
        and learning rate 5e-4; ten times the learning rate lets 100 epochs do
        (timings and accuracy in benchmarks/README.md).
    batch_size : int, default 128
    loss : {"deepdpm", "elbo"}, default "deepdpm"
        "deepdpm": the paper's KL between E-step targets and the net's r.
        "elbo": Pyro's ``TraceEnum_ELBO`` of the model with the nets as guide.
    kl_direction : {"forward", "reverse"}, default "forward"
        KL(r^E || r) as in the reference code, or KL(r || r^E).
    hidden : int, default 50
        Hidden units of the clustering net and of each sub-clustering net.
    lr, sub_lr : float, default 0.005
        Adam learning rates of the clustering and sub-clustering nets.
    burn_in_epochs : int, default 5
        Epochs in which the nets learn the k-means start (no M-step), before
        M-steps begin; moves start ``move_every`` epochs later.
    move_every : int, default 4
        Epochs between move steps, which alternate split, merge, split, ...
        A due move waits while the mixture is held (``settle_max``); no moves in
        the last ``move_every`` epochs.
    min_steps : int, default 25
        Fewest minibatch steps per epoch: on small data an epoch makes several
        passes, so that the nets can follow a split before the next M-step.
    checkpoint_every : int, default 5
        Epochs between checkpoints when ``fit(..., checkpoint_dir=...)``.
    n_samples : int, default 100
        Draws kept by :meth:`to_inference_data`.
    settle_epochs : int, default 2
        Epochs after an accepted split or merge without M-step: the clustering
        net starts the new clusters from duplicated (or averaged) rows, and an
        M-step weighted by its not-yet-separated r would pull the new clusters'
        parameters back together.
    settle_max : int, default 12
        After ``settle_epochs`` the mixture stays held (no M-step, and a due move
        waits) until every cluster holds by the net's argmax at least half the
        points the E-step targets give it, for at most ``settle_max`` epochs after
        the move.  Small new clusters take the net longer to learn than two epochs;
        an M-step before that merges them back and the next prune drops them.
    split_refine : int, default 20
        EM iterations that refine every cluster's sub-clusters before a split step
        (:func:`bnpdeep.inference.subpartition.refine_subclusters`): the sub-nets'
        isotropic loss halves a cluster like 2-means, and the refinement moves the
        halves to the two-component full-likelihood mixture the M-step fits, the
        proposal then judged by the same H_s.  Not in the paper; 0 proposes the
        sub-nets' split as it is.  From K = 1 it takes wine and s3, whose every
        2-means halving the DP posterior rejects, past K = 1
        (benchmarks/README.md).
    carve : bool, default True
        When a cluster's sub-net split is rejected, also propose carving a local
        group around a random member out of it (accepted on the same H_s).  Not in
        the paper: without it a start from one cluster stays there on data whose
        coarse 2-way split the DP posterior rejects (s1, r15; benchmarks/README.md).
    carves_per_step : int, default 3
        Carved groups a cluster may shed in one split step (each accepted on its
        own H_s; the first rejection ends the cluster's turn).
    callback : callable, optional
        ``callback(estimator, epoch, X)`` after every epoch (e.g. to log or time);
        ``estimator.current_labels(X)`` gives the labels at that point.
    device : {"auto", "cpu", "cuda", ...}, default "auto"
        "auto" uses a GPU when one is present.
    random_state : int, default 0
    progress : bool, default False
        A progress bar over epochs (K and loss) on stderr.
    """

    method_name = "deepdpm"
    _CHECKPOINT = "deepdpm_checkpoint.pt"     # file name in the checkpoint folder

    def __init__(self, model=None, init_k: int = 1, max_epochs: int = 100,
                 batch_size: int = 128, loss: str = "deepdpm",
                 kl_direction: str = "forward", hidden: int = 50, lr: float = 0.005,
                 sub_lr: float = 0.005, burn_in_epochs: int = 5, move_every: int = 4,
                 min_steps: int = 25, checkpoint_every: int = 5, n_samples: int = 100,
                 settle_epochs: int = 2, settle_max: int = 12, split_refine: int = 20,
                 carve: bool = True, carves_per_step: int = 3, carve_tries: int = 5,
                 callback=None, device="auto",
                 random_state=0, progress: bool = False):
        self.model = model
        self.init_k = init_k
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.loss = loss
        self.kl_direction = kl_direction
        self.hidden = hidden
        self.lr = lr
        self.sub_lr = sub_lr
        self.burn_in_epochs = burn_in_epochs
        self.move_every = move_every
        self.min_steps = min_steps
        self.checkpoint_every = checkpoint_every
        self.n_samples = n_samples
        self.settle_epochs = settle_epochs
        self.settle_max = settle_max
        self.split_refine = split_refine
        self.carve = carve
        self.carves_per_step = carves_per_step
        self.carve_tries = carve_tries
        self.callback = callback
        self.device = device
        self.random_state = random_state
        self.progress = progress

    # -- public API ----------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """r = f_cl(x) on new data: one forward pass of the clustering net."""
        X = self._validate_predict_data(X)
        return self._log_r(as_tensor(X, device=self._device)).exp().cpu().numpy()

    def to_inference_data(self):
        from bnpdeep.diagnostics import to_inference_data

        return to_inference_data(self)

    # -- set-up ----------------------------------------------------------------
    def _check_options(self):
        if self.loss not in ("deepdpm", "elbo"):
            raise ValueError(f"loss must be 'deepdpm' or 'elbo', got {self.loss!r}")
        if self.kl_direction not in ("forward", "reverse"):
            raise ValueError(f"kl_direction must be 'forward' or 'reverse', got "
                             f"{self.kl_direction!r}")
        if int(self.init_k) < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        for name in ("max_epochs", "batch_size", "move_every", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def _resolve_device(self) -> torch.device:
        return resolve_device(self.device)

    def _setup(self, X):
        self._check_options()
        self._device = self._resolve_device()
        model = self.model if self.model is not None else default_model(X)
        if not isinstance(model, DPMixture):
            raise TypeError(f"model must be a DPMixture, got {type(model).__name__}")
        self._model = model
        self._family = model.family.to(self._device) if hasattr(model.family, "to") \
            else model.family
        self._weights = model.weights
        self._alpha = float(getattr(self._weights, "alpha", 1.0))
        Xt = as_tensor(X, device=self._device)
        mean, std = Xt.mean(0), Xt.std(0)
        self._net_shift = mean.float()
        self._net_scale = torch.where(std > 0, std, torch.ones_like(std)).float()
        return Xt

    def _scale(self, X: torch.Tensor) -> torch.Tensor:
        """The nets' input: standardised float32 rows."""
        return (X.float() - self._net_shift) / self._net_scale

    def _seed(self):
        seed = 0 if self.random_state is None else int(self.random_state)
        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        self._gen = torch.Generator().manual_seed(seed)

    def _init_mixture(self, X: torch.Tensor):
        from sklearn.cluster import KMeans as SkKMeans

        k0 = min(int(self.init_k), X.shape[0])
        seed = 0 if self.random_state is None else int(self.random_state)
        if k0 > 1:
            z = SkKMeans(k0, n_init=3, random_state=seed).fit_predict(X.cpu().numpy())
            z, _ = relabel(torch.as_tensor(z, device=self._device))
        else:
            z = torch.zeros(X.shape[0], dtype=torch.long, device=self._device)
        k = int(z.max()) + 1
        zs = torch.zeros_like(z)
        for c in range(k):
            rows = (z == c).nonzero().flatten()
            zs[rows] = two_means(X[rows]).to(self._device)
        fam = self._family
        sub = fam.suff_stats_labels(X, 2 * z + zs, 2 * k)
        stats = sub.pair_sums()
        self._mixture = self._mixture_from_stats(stats, sub)
        self._cluster_net = ClusterNet(X.shape[1], k, self.hidden).to(self._device)
        self._sub_nets = SubclusterNets(X.shape[1], k, self.hidden).to(self._device)
        self._make_optimisers()

    def _make_optimisers(self):
        self._opt = torch.optim.Adam(self._cluster_net.parameters(), lr=self.lr)
        self._sub_opt = torch.optim.Adam(self._sub_nets.parameters(), lr=self.sub_lr)

    def _mixture_from_stats(self, stats, sub) -> Mixture:
        fam = self._family
        k = stats.k
        n_k = stats.n
        log_pi = torch.log(n_k + self._alpha / k) - math.log(float(n_k.sum()) + self._alpha)
        sub_n = sub.n.reshape(k, 2)
        sub_log_pi = torch.log(sub_n + 0.5) - torch.log(sub_n.sum(1, keepdim=True) + 1.0)
        return Mixture(log_pi, fam.map_estimate(stats), sub_log_pi, fam.map_estimate(sub),
                       _centres(sub).reshape(k, 2, -1))

    # -- the nets' outputs -----------------------------------------------------------
    def _log_r(self, X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self._cluster_net(self._scale(c)).to(DTYPE)
                              for c in torch.split(X, _CHUNK)])

    def _log_targets(self, X: torch.Tensor) -> torch.Tensor:
        """log r^E: E-step responsibilities under the current mixture, (N, K)."""
        m = self._mixture
        ll = self._family.log_likelihood(X, m.params) + m.log_pi[None]
        return torch.log_softmax(ll, -1)

    # -- training --------------------------------------------------------------
    def _cluster_loss(self, X, log_r) -> torch.Tensor:
        """The clustering net's loss on a batch X whose net output is log_r."""
        if self.loss == "elbo":
            return self._elbo(X)
        log_t = self._log_targets(X).to(log_r.dtype)
        if self.kl_direction == "forward":
            kl = (log_t.exp() * (log_t - log_r)).sum(1)
        else:
            kl = (log_r.exp() * (log_r - log_t)).sum(1)
        return kl.mean()

    def _elbo(self, X) -> torch.Tensor:
        """Pyro's TraceEnum_ELBO of the model (truncation K) with the nets as guide,
        per point; the batch is the data plate (prior terms are constants here)."""
        m = self._mixture
        model = self._model.with_truncation(m.k)
        model.family = self._family
        guide = DeepDPMGuide(self._family, self._cluster_net, m.log_pi, m.params, self._scale)
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, guide, X)
        return loss / X.shape[0]

    def _sub_loss(self, X, Xs, z) -> torch.Tensor:
        log_rs = self._sub_nets(Xs, z)
        c = self._mixture.sub_centres[z].to(Xs.dtype)               # (B, 2, d)
        dist = (X.to(Xs.dtype)[:, None, :] - c).pow(2).sum(-1)      # (B, 2)
        return (log_rs.exp() * dist).sum(1).mean()

    def _train_epoch(self, X: torch.Tensor) -> float:
        n = X.shape[0]
        passes = max(1, math.ceil(self.min_steps * int(self.batch_size) / n))
        order = torch.cat([torch.randperm(n, generator=self._gen) for _ in range(passes)])
        order = order.to(self._device)
        total = 0.0
        for idx in torch.split(order, int(self.batch_size)):
            xb = X[idx]
            xs = self._scale(xb)
            log_r = self._cluster_net(xs)
            loss = self._cluster_loss(xb, log_r)
            self._opt.zero_grad()
            loss.backward()
            self._opt.step()
            z = log_r.detach().argmax(1)            # each point's sub-net
            sub_loss = self._sub_loss(xb, xs, z)
            self._sub_opt.zero_grad()
            sub_loss.backward()
            self._sub_opt.step()
            total += float(loss.detach()) * idx.numel()
        return total / order.numel()

    def _soft_stats(self, X: torch.Tensor):
        """Cluster statistics weighted by r and sub-cluster statistics weighted by
        1[z_i = k] r~_ij, over all rows in chunks; also the hard labels."""
        fam, k = self._family, self._cluster_net.k
        stats = sub = None
        zs_all, z_all = [], []
        for c in torch.split(X, _CHUNK):
            cs = self._scale(c)
            with torch.no_grad():
                log_r = self._cluster_net(cs)
                z = log_r.argmax(1)
                rs = self._sub_nets(cs, z).exp().to(DTYPE)
            w_sub = torch.zeros(c.shape[0], 2 * k, dtype=DTYPE, device=c.device)
            w_sub.scatter_(1, torch.stack([2 * z, 2 * z + 1], 1), rs)
            s, ss = fam.suff_stats(c, weights=log_r.exp().to(DTYPE)), fam.suff_stats(c, w_sub)
            stats = s if stats is None else stats + s
            sub = ss if sub is None else sub + ss
            z_all.append(z)
            zs_all.append(rs.argmax(1))
        return stats, sub, torch.cat(z_all), torch.cat(zs_all)

    def _m_step(self, X, prune: bool):
        stats, sub, z, zs = self._soft_stats(X)
        self._mixture = self._mixture_from_stats(stats, sub)
        self._soft = stats
        # a cluster no point is assigned to is removed (its soft mass goes to the rest)
        empty = torch.bincount(z, minlength=self._mixture.k) == 0
        if prune and bool(empty.any()) and not bool(empty.all()):
            self._remove(empty)
            stats, sub, z, zs = self._soft_stats(X)
            self._mixture = self._mixture_from_stats(stats, sub)
            self._soft = stats
        return z, zs

    # -- moves -----------------------------------------------------------------
    def _hard_stats(self, X, z, zs):
        k = self._mixture.k
        sub = self._family.suff_stats_labels(X, 2 * z + zs, 2 * k)
        stats = sub.pair_sums()
        return stats, sub

    def _split_step(self, X, z, zs) -> int:
        refined = int(self.split_refine) > 0
        if refined:
            zs = refine_subclusters(self._family, X, z, zs, self._mixture.k,
                                    int(self.split_refine))
        stats, sub = self._hard_stats(X, z, zs)
        k = stats.k
        log_h = moves.log_split_ratio(self._weights, self._family, float(k), stats,
                                      sub[0::2], sub[1::2])
        ok = (sub.n[0::2] >= 2) & (sub.n[1::2] >= 2)
        accept = moves.mh_accept(log_h) & ok
        for c in accept.nonzero().flatten().tolist():
            # refined halves start from their own MAP, the paper's from the sub-nets'
            self._split(X, z, zs, c, sub_stats=sub[[2 * c, 2 * c + 1]] if refined else None)
        n_carved = 0
        if self.carve:
            # clusters whose sub-net split was rejected: up to carves_per_step local
            # groups carved out of each, one after the other
            for c in (~accept).nonzero().flatten().tolist():
                carved = 0
                for _ in range(int(self.carve_tries)):
                    if carved >= int(self.carves_per_step):
                        break
                    h = self._carve_proposal(X, z, c, self._mixture.k)
                    if h is None:
                        continue
                    carved += 1
                    # the carved group (h = 0) becomes the new cluster, c keeps the rest
                    rows = (z == c).nonzero().flatten()
                    zs[rows] = 1 - h
                    self._split(X, z, zs, c,
                                sub_stats=self._family.suff_stats_labels(X[rows], 1 - h, 2))
                    n_carved += 1
        return int(accept.sum()) + n_carved

    def _carve_proposal(self, X, z, c: int, k: int):
        """A carved sub-partition of cluster c around a random member (see
        :func:`bnpdeep.inference.subpartition.carve`), accepted with probability
        min(1, H_s) of the same DP posterior ratio; None when rejected."""
        rows = (z == c).nonzero().flatten()
        if rows.numel() < 4 * (X.shape[1] + 2):
            return None
        anchor = int(torch.randint(rows.numel(), (1,), generator=self._gen))
        h = carve(self._family, X[rows], anchor).to(self._device)
        sub = self._family.suff_stats_labels(X[rows], h, 2)
        if bool((sub.n < 2).any()):
            return None
        whole = sub[[0]] + sub[[1]]
        log_h = moves.log_split_ratio(self._weights, self._family, float(k), whole,
                                      sub[[0]], sub[[1]])
        return h if bool(moves.mh_accept(log_h)[0]) else None

    def _split(self, X, z, zs, c: int, sub_stats=None):
        """Cluster c -> c (sub-cluster 0) and K (sub-cluster 1); z and zs are updated.
        The halves start from the sub-clusters' parameters, or from the MAP of
        ``sub_stats`` when given (a carved split)."""
        m, fam = self._mixture, self._family
        if sub_stats is not None:
            n_sub = sub_stats.n
            sub_log_pi = m.sub_log_pi.clone()
            sub_log_pi[c] = torch.log(n_sub) - torch.log(n_sub.sum())
            sub_params = type(m.sub_params)(*(p.clone() for p in m.sub_params))
            for p, q in zip(sub_params, fam.map_estimate(sub_stats), strict=True):
                p[2 * c:2 * c + 2] = q
            m = Mixture(m.log_pi, m.params, sub_log_pi, sub_params, m.sub_centres)
        new = m.k
        rows = (z == c).nonzero().flatten()
        moving = rows[zs[rows] == 1]
        z[moving] = new
        log_pi = torch.cat([m.log_pi, (m.log_pi[c] + m.sub_log_pi[c, 1]).reshape(1)])
        log_pi[c] = m.log_pi[c] + m.sub_log_pi[c, 0]
        order = list(range(m.k))
        params = _cat(_take(m.params, order), _take(m.sub_params, [2 * c + 1]))
        params = type(params)(*(p.clone() for p in params))
        for p, q in zip(params, _take(m.sub_params, [2 * c]), strict=True):
            p[c] = q[0]
        # sub-clusters of both halves from 2-means of their rows
        sub_pairs, sub_lp, centres = [], [], []
        for cluster in (c, new):
            r = (z == cluster).nonzero().flatten()
            h = two_means(X[r]).to(self._device)
            zs[r] = h
            s = fam.suff_stats_labels(X[r], h, 2)
            sub_pairs.append(fam.map_estimate(s))
            sub_lp.append(torch.log(s.n + 0.5) - math.log(float(s.n.sum()) + 1.0))
            centres.append(_centres(s))
        sub_params = _cat(m.sub_params, sub_pairs[1])
        sub_params = type(sub_params)(*(p.clone() for p in sub_params))
        for p, q in zip(sub_params, sub_pairs[0], strict=True):
            p[2 * c:2 * c + 2] = q
        sub_log_pi = torch.cat([m.sub_log_pi, sub_lp[1][None]])
        sub_log_pi[c] = sub_lp[0]
        sub_centres = torch.cat([m.sub_centres, centres[1][None]])
        sub_centres[c] = centres[0]
        self._mixture = Mixture(log_pi, params, sub_log_pi, sub_params, sub_centres)
        self._cluster_net.split(c)
        self._sub_nets.split(c)

    def _merge_step(self, X, z, zs) -> int:
        stats, _ = self._hard_stats(X, z, zs)
        k = stats.k
        if k < 2:
            return 0
        centres = _centres(stats)
        dist = torch.cdist(centres, centres)
        dist.fill_diagonal_(float("inf"))
        nn = dist.topk(min(3, k - 1), largest=False).indices
        pairs = torch.stack([torch.arange(k).repeat_interleave(nn.shape[1]), nn.flatten().cpu()])
        pairs = torch.unique(pairs.sort(0).values, dim=1)          # (2, P), a < b
        a_idx, b_idx = pairs[0].to(self._device), pairs[1].to(self._device)
        # every candidate's ratio and MH draw at once; then each cluster merges at most
        # once, candidates taken in random order
        log_h = moves.log_merge_ratio(self._weights, self._family, float(k),
                                      stats[a_idx], stats[b_idx])
        accept = moves.mh_accept(log_h).tolist()
        order = torch.randperm(pairs.shape[1], generator=self._gen).tolist()
        used: set[int] = set()
        merges = []
        for p in order:
            a, b = int(pairs[0, p]), int(pairs[1, p])
            if accept[p] and a not in used and b not in used:
                used.update((a, b))
                merges.append((a, b))
        # apply from the highest removed index down so that indices stay valid
        for a, b in sorted(merges, key=lambda ab: -ab[1]):
            self._merge(a, b)
        return len(merges)

    def _merge(self, a: int, b: int):
        """Clusters a < b -> a; the merged cluster is the MAP of the union of their
        r-weighted statistics and its sub-clusters are the two old clusters."""
        m, fam = self._mixture, self._family
        soft = self._soft
        union = soft[[a]] + soft[[b]]
        log_pi = m.log_pi.clone()
        log_pi[a] = torch.logaddexp(m.log_pi[a], m.log_pi[b])
        params = type(m.params)(*(p.clone() for p in m.params))
        for p, q in zip(params, fam.map_estimate(union), strict=True):
            p[a] = q[0]
        sub_params = type(m.sub_params)(*(p.clone() for p in m.sub_params))
        for p, q in zip(sub_params, _take(m.params, [a, b]), strict=True):
            p[2 * a:2 * a + 2] = q
        sub_log_pi = m.sub_log_pi.clone()
        sub_log_pi[a] = torch.log_softmax(torch.stack([m.log_pi[a], m.log_pi[b]]), 0)
        centres = _centres(soft)
        sub_centres = m.sub_centres.clone()
        sub_centres[a] = centres[[a, b]]
        keep = [i for i in range(m.k) if i != b]
        sub_keep = [j for i in keep for j in (2 * i, 2 * i + 1)]
        self._mixture = Mixture(log_pi[keep], _take(params, keep), sub_log_pi[keep],
                                _take(sub_params, sub_keep), sub_centres[keep])
        self._soft = soft.merge(a, b)
        self._cluster_net.merge(a, b)
        self._sub_nets.merge(a, b)

    def _remove(self, empty: torch.Tensor):
        keep = (~empty).nonzero().flatten()
        self._cluster_net.remove(keep)
        self._sub_nets.remove(keep)
        self._make_optimisers()

    # -- the loop ----------------------------------------------------------------
    def _fit(self, X):
        Xt = self._setup(X)
        self._seed()
        start = 0
        self.history_ = []
        state = self._saved_state()
        if state is not None:
            start = self._restore(state)
        else:
            self._init_mixture(Xt)
        bar = tqdm(range(start, int(self.max_epochs)), desc="deepdpm", unit="epoch",
                   file=sys.stderr, disable=not self.progress, leave=False)
        for epoch in bar:
            loss = self._train_epoch(Xt)
            splits = merges = 0
            kind = None
            hold = self._holding(Xt, epoch + 1)
            move = (not hold and self._move_due(epoch + 1)
                    and epoch < int(self.max_epochs) - int(self.move_every))
            if epoch + 1 >= int(self.burn_in_epochs) and not hold:
                # before the burn-in ends, and while the nets learn a moved mixture,
                # the mixture is held
                z, zs = self._m_step(Xt, prune=move)
            if move:
                done = [h["move"] for h in self.history_ if h.get("move")]
                kind = "merge" if done and done[-1] == "split" else "split"
                k_before = self._mixture.k
                if kind == "split":
                    splits = self._split_step(Xt, z, zs)
                else:
                    merges = self._merge_step(Xt, z, zs)
                if self._mixture.k != k_before:
                    self._make_optimisers()
            self.history_.append({"epoch": epoch + 1, "K": self._mixture.k, "loss": loss,
                                  "splits": splits, "merges": merges, "move": kind})
            bar.set_postfix(K=self._mixture.k, loss=f"{loss:.4f}", refresh=False)
            if self.callback is not None:
                self.callback(self, epoch + 1, Xt)
            if self._checkpointing and (epoch + 1) % int(self.checkpoint_every) == 0:
                self._save_checkpoint(epoch + 1)
        self._finish(Xt)

    def _move_due(self, epoch: int) -> bool:
        """A move step is due ``move_every`` epochs after the last one (the first
        ``move_every`` epochs after the burn-in)."""
        steps = [h["epoch"] for h in self.history_ if h.get("move")]
        last = steps[-1] if steps else int(self.burn_in_epochs)
        return epoch - last >= int(self.move_every)

    def _holding(self, X, epoch: int) -> bool:
        """Whether the mixture is held (no M-step, no move) after the last accepted
        split or merge: for ``settle_epochs`` epochs, then until the clustering net
        has learned the new clusters (:meth:`_net_settled`), at most ``settle_max``
        epochs in all."""
        changed = [h["epoch"] for h in self.history_ if h["splits"] or h["merges"]]
        if not changed:
            return False
        age = epoch - changed[-1]
        if age <= int(self.settle_epochs):
            return True
        return age <= int(self.settle_max) and not self._net_settled(X)

    def _net_settled(self, X) -> bool:
        """True when every cluster holds, by the net's argmax, at least half the points
        the E-step targets give it; clusters the targets give fewer than a tenth of
        the mean cluster size are not waited for (the net may never learn a group of
        a few dozen outliers, and the next prune drops it).  A new cluster starts as a
        duplicated output row that shares its parent's r; an M-step weighted by r
        before the net tells the two apart would average them back into one."""
        k = self._mixture.k
        net = torch.zeros(k, dtype=torch.long, device=X.device)
        tgt = torch.zeros_like(net)
        for c in torch.split(X, _CHUNK):
            net += torch.bincount(self._log_r(c).argmax(1), minlength=k)
            tgt += torch.bincount(self._log_targets(c).argmax(1), minlength=k)
        small = 10 * k * tgt < X.shape[0]
        return bool(((2 * net >= tgt) | small).all())

    def _finish(self, X):
        """Drop components that no point is assigned to, so that labels are 0..K-1 and
        ``predict`` uses the same numbering."""
        log_r = self._log_r(X)
        if not bool(torch.isfinite(log_r).all()):
            raise FloatingPointError("DeepDPM produced non-finite responsibilities")
        used = torch.bincount(log_r.argmax(1), minlength=self._mixture.k) > 0
        if not bool(used.all()):
            keep = used.nonzero().flatten()
            self._cluster_net.remove(keep)
            self._sub_nets.remove(keep)
            m = self._mixture
            sub_keep = torch.stack([2 * keep, 2 * keep + 1], 1).flatten()
            self._mixture = Mixture(m.log_pi[keep], _take(m.params, keep),
                                    m.sub_log_pi[keep], _take(m.sub_params, sub_keep),
                                    m.sub_centres[keep])
            log_r = self._log_r(X)
        self.labels_ = log_r.argmax(1).cpu().numpy()
        self.n_clusters_ = int(np.unique(self.labels_).size)
        self._X = X

    def current_labels(self, X) -> np.ndarray:
        """argmax_k r_ik of the clustering net as it is now (usable mid-training)."""
        return self._log_r(as_tensor(X, device=self._device)).argmax(1).cpu().numpy()

    def _predict(self, X):
        return self._log_r(as_tensor(X, device=self._device)).argmax(1).cpu().numpy()

    # -- checkpoints -----------------------------------------------------------------
    def _save_checkpoint(self, epoch: int):
        m = self._mixture
        state = {"epoch": epoch, "k": m.k, "history": self.history_,
                 "cluster_net": self._cluster_net.state_dict(),
                 "sub_nets": self._sub_nets.state_dict(),
                 "opt": self._opt.state_dict(), "sub_opt": self._sub_opt.state_dict(),
                 "mixture": {"log_pi": m.log_pi, "params": tuple(m.params),
                             "sub_log_pi": m.sub_log_pi, "sub_params": tuple(m.sub_params),
                             "sub_centres": m.sub_centres},
                 "soft": dict(self._soft.fields),
                 "torch_rng": torch.get_rng_state(), "gen": self._gen.get_state(),
                 "pyro_rng": pyro.util.get_rng_state()}
        self._save_state(state)

    def _restore(self, state) -> int:
        d, k = self.n_features_in_, int(state["k"])
        self._cluster_net = ClusterNet(d, k, self.hidden).to(self._device)
        self._sub_nets = SubclusterNets(d, k, self.hidden).to(self._device)
        self._cluster_net.load_state_dict(state["cluster_net"])
        self._sub_nets.load_state_dict(state["sub_nets"])
        self._make_optimisers()
        self._opt.load_state_dict(state["opt"])
        self._sub_opt.load_state_dict(state["sub_opt"])
        mx = state["mixture"]
        kind = type(self._family.map_estimate(self._family.empty_stats(1)))
        self._mixture = Mixture(mx["log_pi"], kind(*mx["params"]), mx["sub_log_pi"],
                                kind(*mx["sub_params"]), mx["sub_centres"])
        self._soft = type(self._family.empty_stats(1))(**state["soft"])
        self.history_ = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        self._gen.set_state(state["gen"])
        pyro.util.set_rng_state(state["pyro_rng"])
        return int(state["epoch"])

    # -- posterior summaries --------------------------------------------------------
    def posterior_arrays(self) -> dict:
        """Draws (``sample``): parameters from their conjugate posterior given the
        net's soft statistics, weights from Dirichlet(N_k + alpha / K), z from r;
        pointwise log-likelihood with z summed out."""
        self._check_is_fitted()
        X, fam = self._X, self._family
        log_r = self._log_r(X)
        stats = fam.empty_stats(log_r.shape[1])
        for c, lr in zip(torch.split(X, _CHUNK), torch.split(log_r, _CHUNK), strict=True):
            stats = stats + fam.suff_stats(c, weights=lr.exp())
        k = stats.k
        conc = stats.n + self._alpha / k

        def sample_log_pi():
            pi = torch.distributions.Dirichlet(conc).sample().clamp_min(1e-300)
            return torch.log(pi), None

        return approximate_posterior_arrays(
            fam, self._weights, X, log_r, sample_log_pi, lambda: fam.sample_posterior(stats),
            self.n_samples, self.random_state, self._alpha)

