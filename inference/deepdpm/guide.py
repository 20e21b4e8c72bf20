"""DeepDPM's guide: the clustering net, the sub-clustering nets and the M-step's point
parameters, as the Pyro guide of :class:`bnpdeep.models.DPMixture` (Ronen, Finder &
Freifeld 2022, Sec. 3).

Site for site, the guide mirrors the model at truncation K (the current number of
clusters):

* ``v`` (plate ``sticks``): a point mass at the stick fractions of the M-step's
  weights pi, v_j = pi_j / (1 - sum_{l<j} pi_l);
* the family's parameter sites (plate ``components``): point masses at the
  M-step's (MAP) parameters;
* ``z`` (plate ``data``, subsampling allowed): Categorical(f_cl(x_i)), the
  clustering net's responsibilities, marked for parallel enumeration so that
  ``TraceEnum_ELBO`` sums z out exactly.

As submodules of a ``PyroModule`` the two nets enter Pyro's parameter store under
``<name>.cluster_net`` and ``<name>.sub_nets`` whenever the guide runs (the name is
unique per guide, so two fitted guides never share entries); the point masses are
not Pyro parameters (the M-step, not gradient descent, moves them), as in the
paper.  The sub-clustering nets have no site in the model: they exist for the
split proposals, and the guide touches them so that SVI trains them too.

:meth:`DeepDPMGuide.split`, :meth:`~DeepDPMGuide.merge` and
:meth:`~DeepDPMGuide.remove` are the surgery a move performs when it changes K: the
point parameters and both nets change shape together (:mod:`.nets` keeps what the
nets learned), and each returns a :class:`Surgery` that says what changed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as pdist
import torch
from bnpdeep.models.dpmm import gather_params
from pyro.nn import PyroModule

from bnpdeep.linalg import DTYPE, as_tensor

from ..moves import group_means as centres
from ..subpartition import sub_log_weights
from .nets import ClusterNet, SubclusterNets

CHUNK = 16384           # rows per chunk of full-data passes (E-step, statistics, predict)
_NAMES = itertools.count()


def stick_fractions(pi: torch.Tensor) -> torch.Tensor:
    """v_1..v_{K-1} with stick_breaking(v) = pi (pi normalised, K >= 2)."""
    pi = pi / pi.sum()
    rest = 1.0 - torch.cumsum(pi, 0)[:-1]
    before = torch.cat([torch.ones(1, dtype=pi.dtype, device=pi.device), rest[:-1]])
    return (pi[:-1] / before.clamp_min(1e-300)).clamp(1e-12, 1.0 - 1e-12)


@dataclass
class Mixture:
    """The M-step's point parameters, which the nets are trained against."""

    log_pi: torch.Tensor          # (K,)
    params: tuple                 # the family's parameters of K components
    sub_log_pi: torch.Tensor      # (K, 2)
    sub_params: tuple             # 2K sub-components, ordered (k, 0), (k, 1)
    sub_centres: torch.Tensor     # (K, 2, d), the centres of the isotropic loss

    @property
    def k(self) -> int:
        return self.log_pi.shape[0]

    def take(self, keep: torch.Tensor) -> "Mixture":
        """The clusters at ``keep`` (with their sub-clusters), in that order."""
        keep = torch.as_tensor(keep, dtype=torch.long, device=self.log_pi.device)
        sub_keep = torch.stack([2 * keep, 2 * keep + 1], 1).flatten()
        return Mixture(self.log_pi[keep], _take(self.params, keep), self.sub_log_pi[keep],
                       _take(self.sub_params, sub_keep), self.sub_centres[keep])

    def state(self) -> dict:
        return {"log_pi": self.log_pi, "params": tuple(self.params),
                "sub_log_pi": self.sub_log_pi, "sub_params": tuple(self.sub_params),
                "sub_centres": self.sub_centres}


@dataclass(frozen=True)
class Surgery:
    """What a split, merge or removal changed.

    ``kind`` is "split", "merge" or "remove"; ``k_before``/``k_after`` the number
    of clusters; ``index`` maps each old cluster to its new index (-1: removed);
    ``born`` lists the new indices whose component is new (a split's two halves,
    a merge's union)."""

    kind: str
    k_before: int
    k_after: int
    index: tuple
    born: tuple


def _take(params, index):
    return gather_params(params, torch.as_tensor(index, dtype=torch.long))


def _cat(a, b):
    return type(a)(*(torch.cat([x, y]) for x, y in zip(a, b, strict=True)))


def _put(params, index: int, value):
    """A copy of ``params`` whose entries from ``index`` on are ``value``'s."""
    out = type(params)(*(p.clone() for p in params))
    for p, q in zip(out, value, strict=True):
        p[index:index + q.shape[0]] = q
    return out


class DeepDPMGuide(PyroModule):
    """The guide ``guide(X=None, n=None, subsample_size=None)`` of a ``DPMixture`` at
    truncation K, owning DeepDPM's nets and point parameters.

    Parameters
    ----------
    family : ConjugateFamily
        The model's component family (MAP estimates and likelihoods).
    dim : int
    k : int
        Clusters to start with.
    hidden : int, default 50
        Hidden units of the clustering net and of each sub-clustering net.
    shift, scale : (d,) tensors, optional
        The nets' input is (x - shift) / scale in float32 (default 0 and 1).
    name : str, optional
        Prefix of the nets' names in Pyro's parameter store; default a fresh
        ``deepdpm_<n>`` per guide.
    """

    def __init__(self, family, dim: int, k: int, hidden: int = 50, shift=None, scale=None,
                 name: str | None = None):
        super().__init__(f"deepdpm_{next(_NAMES)}" if name is None else name)
        self.family = family
        self.cluster_net = ClusterNet(dim, k, hidden)
        self.sub_nets = SubclusterNets(dim, k, hidden)
        shift = torch.zeros(dim) if shift is None else torch.as_tensor(shift)
        scale = torch.ones(dim) if scale is None else torch.as_tensor(scale)
        self.register_buffer("input_shift", shift.float())
        self.register_buffer("input_scale", torch.where(scale > 0, scale, 1.0).float())
        self.mixture: Mixture | None = None
        # point estimates of the model's hyperparameters (alpha included when it has a
        # prior), Delta sites of the guide; ``family`` is the family at them
        self.hyperparameters: dict = {}

    def set_hyperparameters(self, values: dict, family) -> None:
        """Adopt hyperparameter point estimates and the family at them."""
        self.hyperparameters = dict(values)
        self.family = family

    @property
    def k(self) -> int:
        return self.cluster_net.k

    @property
    def name(self) -> str:
        return self._pyro_name

    def pyro_names(self) -> tuple[str, str]:
        """The module names of the two nets in Pyro's parameter store."""
        return f"{self._pyro_name}.cluster_net", f"{self._pyro_name}.sub_nets"

    # -- the Pyro guide ----------------------------------------------------------
    def forward(self, X=None, n: int | None = None, subsample_size: int | None = None):
        if self.mixture is None:
            raise RuntimeError("the guide has no point parameters yet: run an M-step "
                               "(DeepDPMGuide.m_step) or fit a DeepDPM first")
        X = as_tensor(X, device=self.family.device)
        _ = self.sub_nets        # registers the sub-nets' parameters (they have no site)
        m = self.mixture
        for site, value in self.hyperparameters.items():
            value = torch.as_tensor(value, dtype=DTYPE, device=self.family.device)
            pyro.sample(site, pdist.Delta(value, event_dim=value.dim()))
        if m.k > 1:
            with pyro.plate("sticks", m.k - 1):
                pyro.sample("v", pdist.Delta(stick_fractions(m.log_pi.exp())))
        with pyro.plate("components", m.k):
            for site, value in self.family.sites_from_params(m.params).items():
                pyro.sample(site, pdist.Delta(value, event_dim=value.dim() - 1))
        with pyro.plate("data", X.shape[0], subsample_size=subsample_size) as idx:
            logits = self.cluster_net(self.net_input(X[idx])).to(X.dtype)
            z = pyro.sample("z", pdist.Categorical(logits=logits),
                            infer={"enumerate": "parallel"})
        return z

    # -- the nets' outputs ---------------------------------------------------------
    def net_input(self, X: torch.Tensor) -> torch.Tensor:
        """Standardised float32 rows, what both nets take (standardised in the
        moments' precision: float32 while training, float64 once the guide takes
        rows in the data's units, :meth:`in_units`)."""
        return ((X.to(self.input_shift.dtype) - self.input_shift) / self.input_scale).float()

    @torch.no_grad()
    def log_r(self, X: torch.Tensor) -> torch.Tensor:
        """log f_cl(x): the clustering net's responsibilities, (N, K), float64."""
        return torch.cat([self.cluster_net(self.net_input(c)).to(DTYPE)
                          for c in torch.split(X, CHUNK)])

    def sub_log_r(self, X: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log r~: each row through the sub-clustering net of its cluster z_i, (N, 2)."""
        return self.sub_nets(self.net_input(X), z)

    def log_joint(self, X: torch.Tensor) -> torch.Tensor:
        """log pi_k + log p(x_i | theta_k) under the point parameters, (N, K); its
        log-sum-exp over k is the mixture's log-likelihood of x_i."""
        m = self.mixture
        return self.family.log_likelihood(X, m.params) + m.log_pi[None]

    def log_targets(self, X: torch.Tensor) -> torch.Tensor:
        """log r^E, the E-step responsibilities under the point parameters (paper
        eq. 2): :meth:`log_joint` normalised over k."""
        return torch.log_softmax(self.log_joint(X), -1)

    def sub_loss(self, X: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The sub-clustering nets' isotropic loss (paper eq. 5), mean over rows:
        sum_j r~_ij ||x_i - mu~_{z_i j}||^2 / s^2, with s^2 the mean over the features
        of the nets' input variances (``input_scale`` squared).  Dividing by one
        number keeps the loss isotropic in the data's own coordinates (the geometry
        of eq. 5) while making it free of the data's units: on raw values it scales
        with their square, and Adam's epsilon stalls the sub-nets on data measured in
        small units."""
        log_rs = self.sub_log_r(X, z)
        c = self.mixture.sub_centres[z].to(log_rs.dtype)            # (B, 2, d)
        dist = (X.to(log_rs.dtype)[:, None, :] - c).pow(2).sum(-1)  # (B, 2)
        unit = self.input_scale.to(log_rs.dtype).pow(2).mean()
        return (log_rs.exp() * dist).sum(1).mean() / unit

    @torch.no_grad()
    def soft_stats(self, X: torch.Tensor):
        """The M-step's statistics over all rows, in chunks: cluster statistics
        weighted by r, sub-cluster statistics weighted by 1[z_i = k] r~_ij, a
        family's per-row latent variables at their expectation under the current
        (sub-)components (``expected_suff_stats``, ``expected_rows``: the t's
        scales); also the hard labels z = argmax r and zs = argmax r~."""
        fam, k, m = self.family, self.k, self.mixture
        stats = sub = None
        z_all, zs_all = [], []
        for c in torch.split(X, CHUNK):
            log_r = self.cluster_net(self.net_input(c))
            z = log_r.argmax(1)
            rs = self.sub_log_r(c, z).exp().to(DTYPE)
            s = fam.expected_suff_stats(c, log_r.exp().to(DTYPE), m.params)
            # row i has weight only in sub-clusters 2 z_i and 2 z_i + 1: two labelled
            # passes, not a dense (N, 2K) weighting
            zj = [2 * z, 2 * z + 1]
            ss = (fam.suff_stats_labels(fam.expected_rows(c, m.sub_params, zj[0]), zj[0],
                                        2 * k, weights=rs[:, 0])
                  + fam.suff_stats_labels(fam.expected_rows(c, m.sub_params, zj[1]), zj[1],
                                          2 * k, weights=rs[:, 1]))
            stats = s if stats is None else stats + s
            sub = ss if sub is None else sub + ss
            z_all.append(z)
            zs_all.append(rs.argmax(1))
        return stats, sub, torch.cat(z_all), torch.cat(zs_all)

    # -- the M-step ----------------------------------------------------------------
    def m_step(self, stats, sub, alpha: float) -> None:
        """Point parameters from (weighted) statistics (paper eq. 3): MAP of every
        component and sub-component under the family's conjugate prior, weights
        pi_k = (N_k + alpha / K) / (N + alpha), sub-weights (n_kj + 1/2) / (N_k + 1)."""
        fam, k = self.family, stats.k
        log_pi = torch.log(stats.n + alpha / k) - math.log(float(stats.n.sum()) + alpha)
        self.mixture = Mixture(log_pi, fam.map_estimate(stats),
                               sub_log_weights(sub.n.reshape(k, 2)), fam.map_estimate(sub),
                               centres(sub).reshape(k, 2, -1))

    # -- surgery -------------------------------------------------------------------
    @torch.no_grad()
    def split(self, k: int, halves=None, children=None) -> Surgery:
        """Cluster k -> k (its sub-cluster 0) and K (its sub-cluster 1).

        The halves' components are the sub-components' parameters, or the MAP of
        ``halves`` (a 2-group SuffStats) when the proposal was not the sub-nets'
        own (refined or carved); their weights pi_k pi~_k0 and pi_k pi~_k1.
        ``children`` (two 2-group SuffStats, of the rows now in k and in K) give
        the halves' own sub-clusters; without it both halves start with the
        parent's sub-cluster parameters.  The clustering net's row k is
        duplicated (each copy with bias b_k - log 2) and both halves get fresh
        sub-nets."""
        m, fam = self.mixture, self.family
        sub_params, sub_log_pi = m.sub_params, m.sub_log_pi
        if halves is not None:
            sub_params = _put(sub_params, 2 * k, fam.map_estimate(halves))
            sub_log_pi = sub_log_pi.clone()
            sub_log_pi[k] = torch.log(halves.n) - torch.log(halves.n.sum())
        new = m.k
        log_pi = torch.cat([m.log_pi, (m.log_pi[k] + sub_log_pi[k, 1]).reshape(1)])
        log_pi[k] = m.log_pi[k] + sub_log_pi[k, 0]
        params = _put(_cat(m.params, _take(sub_params, [2 * k + 1])), k,
                      _take(sub_params, [2 * k]))
        if children is None:
            pairs = [_take(sub_params, [2 * k, 2 * k + 1])] * 2
            lps = [sub_log_pi[k]] * 2
            cents = [m.sub_centres[k]] * 2
        else:
            pairs = [fam.map_estimate(s) for s in children]
            lps = [sub_log_weights(s.n) for s in children]
            cents = [centres(s) for s in children]
        sub_params = _put(_cat(sub_params, pairs[1]), 2 * k, pairs[0])
        sub_log_pi = torch.cat([sub_log_pi, lps[1][None]])
        sub_log_pi[k] = lps[0]
        sub_centres = torch.cat([m.sub_centres, cents[1][None]])
        sub_centres[k] = cents[0]
        self.mixture = Mixture(log_pi, params, sub_log_pi, sub_params, sub_centres)
        self.cluster_net.split(k)
        self.sub_nets.split(k)
        return Surgery("split", new, new + 1, tuple(range(new)), (k, new))

    @torch.no_grad()
    def merge(self, k: int, l: int, stats) -> Surgery:
        """Clusters k and l -> one at min(k, l) (max(k, l) removed, later indices
        shift down).  ``stats`` are the two clusters' statistics (a 2-group
        SuffStats, those of the last M-step): the union's component is the MAP of
        their sum, its sub-clusters are the two old components, with weights in
        proportion to pi_k and pi_l.  The clustering net's rows are averaged
        with bias logsumexp(b_k, b_l), the inverse of a split; the union gets a
        fresh sub-net."""
        m, fam = self.mixture, self.family
        a, b = min(k, l), max(k, l)
        log_pi = m.log_pi.clone()
        log_pi[a] = torch.logaddexp(m.log_pi[a], m.log_pi[b])
        params = _put(m.params, a, fam.map_estimate(stats[[0]] + stats[[1]]))
        sub_params = _put(m.sub_params, 2 * a, _take(m.params, [a, b]))
        sub_log_pi = m.sub_log_pi.clone()
        sub_log_pi[a] = torch.log_softmax(torch.stack([m.log_pi[a], m.log_pi[b]]), 0)
        sub_centres = m.sub_centres.clone()
        sub_centres[a] = centres(stats) if a == k else centres(stats).flip(0)
        keep = [i for i in range(m.k) if i != b]
        self.mixture = Mixture(log_pi, params, sub_log_pi, sub_params, sub_centres).take(
            torch.tensor(keep, device=log_pi.device))
        self.cluster_net.merge(a, b)
        self.sub_nets.merge(a, b)
        index = tuple(a if i == b else (i if i < b else i - 1) for i in range(m.k))
        return Surgery("merge", m.k, m.k - 1, index, (a,))

    @torch.no_grad()
    def remove(self, keep) -> Surgery:
        """Keep only the clusters at ``keep`` (in order): components, weights
        (renormalised) and the nets' rows."""
        m = self.mixture
        keep = torch.as_tensor(keep, dtype=torch.long, device=m.log_pi.device)
        taken = m.take(keep)
        taken.log_pi = taken.log_pi - torch.logsumexp(taken.log_pi, 0)
        self.mixture = taken
        self.cluster_net.remove(keep)
        self.sub_nets.remove(keep)
        where = {int(old): new for new, old in enumerate(keep.tolist())}
        index = tuple(where.get(i, -1) for i in range(m.k))
        return Surgery("remove", m.k, int(keep.numel()), index, ())

    # -- units -----------------------------------------------------------------------
    @torch.no_grad()
    def in_units(self, shift, scale, family, hyperparameters: dict) -> None:
        """Turn this guide of y = (x - shift) / scale into the same guide of x: the nets
        see the same input ((x - shift') / scale' with the composed moments), the point
        parameters and sub-cluster centres map as the points do
        (``family.params_from_standardized``), and ``family`` and ``hyperparameters``
        are x's."""
        shift = torch.as_tensor(shift, dtype=DTYPE, device=self.input_shift.device)
        scale = torch.as_tensor(scale, dtype=DTYPE, device=self.input_shift.device)
        # in float64: x's columns may sit far from 0 relative to their spread, where
        # float32 rows would lose the digits that the standardised input keeps
        self.input_shift = shift + scale * self.input_shift.to(DTYPE)
        self.input_scale = scale * self.input_scale.to(DTYPE)
        m = self.mixture
        self.mixture = Mixture(m.log_pi, family.params_from_standardized(m.params, shift, scale),
                               m.sub_log_pi,
                               family.params_from_standardized(m.sub_params, shift, scale),
                               m.sub_centres * scale + shift)
        self.set_hyperparameters(hyperparameters, family)

    # -- state -----------------------------------------------------------------------
    def guide_state(self) -> dict:
        """Everything that defines the guide: the nets' weights and the point
        parameters (for checkpoints)."""
        return {"k": self.k, "name": self.name, "nets": self.state_dict(),
                "mixture": self.mixture.state(), "hyperparameters": self.hyperparameters}

    def load_guide_state(self, state: dict) -> None:
        k = int(state["k"])
        dim, hidden = self.cluster_net.hidden.in_features, self.cluster_net.hidden.out_features
        dev = self.input_shift.device
        self.cluster_net = ClusterNet(dim, k, hidden).to(dev)
        self.sub_nets = SubclusterNets(dim, k, hidden).to(dev)
        self.load_state_dict(state["nets"])
        mx = state["mixture"]
        kind = type(self.family.map_estimate(self.family.empty_stats(1)))
        self.mixture = Mixture(mx["log_pi"], kind(*mx["params"]), mx["sub_log_pi"],
                               kind(*mx["sub_params"]), mx["sub_centres"])
