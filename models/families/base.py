"""The interface every conjugate component family implements.

A family pairs a component likelihood p(x | theta) with its conjugate prior
p(theta).  Everything is batched over K clusters: sufficient statistics carry a
leading cluster dimension, and every method returns one value per cluster (or
an N x K table for per-point quantities).  Statistics are float64.
"""

from __future__ import annotations

from typing import Iterable

import torch

from bnpdeep.linalg import DTYPE, as_tensor


def volume_scale(cov: torch.Tensor, expected_clusters: float = 10.0) -> float:
    """Default ratio of a cluster's prior covariance to the data covariance.

    If ``expected_clusters`` = K0 clusters share the data's volume, each one's linear
    extent is K0**(-1/d) of the data's, so its variance is K0**(-2/d) of the data's.
    ``d`` is the effective dimension, the participation ratio
    (sum lambda)**2 / sum lambda**2 of the eigenvalues of the correlation matrix, so
    that many correlated features do not count as many independent directions, and
    a column's units (one feature in grams among others in tonnes) do not decide it.
    Gives 0.1 for uncorrelated 2-d data and grows towards 1 as the effective
    dimension grows, which keeps the per-cluster Occam penalty of the marginal
    likelihood (it grows with nu * d) from forbidding every split in higher
    dimensions.
    """
    cov = cov.double()
    sd = cov.diagonal().clamp_min(0.0).sqrt()
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    lam = torch.linalg.eigvalsh(cov / sd[:, None] / sd[None, :]).clamp_min(0.0)
    total = float(lam.sum())
    if total <= 0.0:
        return 1.0 / expected_clusters
    d_eff = total ** 2 / float(lam.pow(2).sum())
    return float(expected_clusters) ** (-2.0 / d_eff)


class SuffStats:
    """Additive sufficient statistics of K clusters.

    A thin container of named tensors that share a leading cluster dimension.
    Because every statistic is a sum over points, adding, removing and
    merging clusters are additions and subtractions.
    """

    __slots__ = ("fields",)

    def __init__(self, **fields: torch.Tensor):
        self.fields = fields

    def __getattr__(self, name):
        try:
            return self.__getattribute__("fields")[name]
        except KeyError as err:
            raise AttributeError(name) from err

    @property
    def n(self) -> torch.Tensor:
        """Number of points (or total responsibility) of each cluster, shape (K,)."""
        return self.fields["n"]

    @property
    def k(self) -> int:
        return int(self.fields["n"].shape[0])

    def _map(self, fn, other=None) -> "SuffStats":
        if other is None:
            return SuffStats(**{k: fn(v) for k, v in self.fields.items()})
        return SuffStats(**{k: fn(v, other.fields[k]) for k, v in self.fields.items()})

    def __add__(self, other: "SuffStats") -> "SuffStats":
        return self._map(torch.add, other)

    def __sub__(self, other: "SuffStats") -> "SuffStats":
        return self._map(torch.sub, other)

    def __getitem__(self, index) -> "SuffStats":
        """Select clusters; an integer index keeps the cluster dimension."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return self._map(lambda v: v[index])

    def total(self) -> "SuffStats":
        """Statistics of the union of all clusters, as a single cluster."""
        return self._map(lambda v: v.sum(0, keepdim=True))

    def pair_sums(self) -> "SuffStats":
        """Statistics of K clusters from those of their 2K sub-clusters, ordered
        (k, 0), (k, 1)."""
        return self._map(lambda v: v.reshape((-1, 2) + v.shape[1:]).sum(1))

    def merge(self, i: int, j: int) -> "SuffStats":
        """Statistics with cluster j merged into cluster i (j removed)."""
        keep = [c for c in range(self.k) if c != j]
        merged = self._map(lambda v: v.clone())
        for v, src in zip(merged.fields.values(), self.fields.values(), strict=True):
            v[i] = v[i] + src[j]
        return merged[keep]

    @staticmethod
    def cat(stats: Iterable["SuffStats"]) -> "SuffStats":
        stats = list(stats)
        return SuffStats(
            **{k: torch.cat([s.fields[k] for s in stats], 0) for k in stats[0].fields}
        )

    def clone(self) -> "SuffStats":
        return self._map(lambda v: v.clone())

    def to(self, device) -> "SuffStats":
        return self._map(lambda v: v.to(device))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.fields.items())
        return f"SuffStats({shapes})"


class ConjugateFamily:
    """Base class: a component likelihood with its conjugate prior.

    Subclasses define ``_row_stats`` (per-point statistics, summed by the base
    class into cluster statistics with hard labels or soft responsibilities)
    and the conjugate algebra: posterior hyperparameters, exact log marginal
    likelihood, log posterior predictive, MAP, posterior sampling, expected
    log-likelihood and KL for variational Bayes, log-likelihood under point
    parameters, and the Pyro prior/likelihood.
    """

    #: names of the Pyro sample sites this family's prior creates
    param_sites: tuple[str, ...] = ()
    #: whether this family has an exact log marginal likelihood (collapsed samplers need it)
    has_log_marginal = True
    #: columns of per-row latent variables a sampler's chain carries after the data
    #: (``StudentNIW``'s scales; its ``augment``, ``update_latent``), 0 for none
    latent_columns = 0
    #: whether each component has a full covariance matrix (``validate`` then warns of
    #: collinear columns, :func:`bnpdeep.data.near_collinear`)
    full_covariance = False

    dim: int

    # ---- data -------------------------------------------------------------
    def validate(self, X, name: str = "X", min_rows: int = 1, warn: bool = True):
        """Check data for this family; returns a float64 numpy array."""
        from bnpdeep.data import check_array

        X = check_array(X, name=name, min_rows=min_rows, warn=warn,
                        collinear=self.full_covariance)
        if X.shape[1] != self.dim:
            from bnpdeep.data import DataError

            raise DataError(
                f"{name} has {X.shape[1]} features but the {type(self).__name__} prior "
                f"has dimension {self.dim}"
            )
        return X

    def _as_data(self, X) -> torch.Tensor:
        return as_tensor(X, device=self.device)

    @property
    def device(self):
        return self._device

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """The data columns of a chain's rows (without a family's latent columns,
        ``StudentNIW``'s scales): what geometric proposals look at."""
        return X[:, :self.dim] if X.shape[1] > self.dim else X

    def _row_stats(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def suff_stats(self, X, weights=None) -> SuffStats:
        """Sufficient statistics of the rows of X.

        ``weights`` None gives one cluster holding every row; a vector (N,)
        gives one cluster with per-row weights; a matrix (N, K) of
        responsibilities gives K clusters, cluster k weighting row i by
        ``weights[i, k]``.
        """
        X = self._as_data(X)
        rows = self._row_stats(X)
        if weights is None:
            return SuffStats(**{k: v.sum(0, keepdim=True) for k, v in rows.items()})
        w = as_tensor(weights, device=X.device)
        if w.dim() == 1:
            w = w[:, None]
        return SuffStats(
            **{k: torch.tensordot(w, v, dims=([0], [0])) for k, v in rows.items()}
        )

    def suff_stats_labels(self, X, labels, k: int | None = None, weights=None) -> SuffStats:
        """Statistics of K clusters from hard labels 0..K-1 (index_add, no one-hot);
        with ``weights`` (N,) row i counts ``weights[i]`` times in its cluster."""
        X = self._as_data(X)
        z = torch.as_tensor(labels, device=X.device, dtype=torch.long)
        k = int(z.max()) + 1 if k is None else k
        rows = self._row_stats(X)
        w = None if weights is None else as_tensor(weights, device=X.device)
        out = {}
        for name, v in rows.items():
            if w is not None:
                v = v * w.reshape((-1,) + (1,) * (v.dim() - 1))
            acc = torch.zeros((k,) + v.shape[1:], dtype=v.dtype, device=v.device)
            out[name] = acc.index_add_(0, z, v)
        return SuffStats(**out)

    def expected_suff_stats(self, X, weights, params) -> SuffStats:
        """An EM E-step's statistics of plain rows for K components: those of
        :meth:`suff_stats` with responsibilities ``weights`` (N, K), the family's
        per-row latent variables (if any) at their conditional expectation under
        each component's ``params``.  A family without latent variables ignores
        ``params``."""
        return self.suff_stats(X, weights=weights)

    def plugin_latent(self, X, labels, k: int | None = None, iterations: int = 20,
                      reduce=None) -> torch.Tensor:
        """Rows completed with the family's per-row latent variables fitted to the
        groups ``labels`` (0..k-1); X itself for a family without latent variables.
        ``reduce`` maps the groups' statistics of these rows to those of all the
        data's rows (a data-parallel fit's sum over ranks)."""
        return self._as_data(X)

    def log_evidence(self, stats: SuffStats) -> torch.Tensor:
        """log p(X_k) of each group, the family's latent variables integrated out, from
        the statistics of :meth:`plugin_latent`'s rows: :meth:`log_marginal` for a
        family without latent variables."""
        return self.log_marginal(stats)

    def expected_rows(self, X, params, comps) -> torch.Tensor:
        """Plain rows completed with the family's per-row latent variables at their
        conditional expectation under the component ``comps[i]`` of ``params``
        (the rows whose statistics :meth:`expected_suff_stats` sums); X itself for
        a family without latent variables."""
        return self._as_data(X)

    def empty_stats(self, k: int = 1) -> SuffStats:
        """Statistics of K empty clusters (the prior)."""
        X = torch.zeros((1, self.dim), dtype=DTYPE, device=self.device)
        rows = self._row_stats(X)
        return SuffStats(**{n: torch.zeros((k,) + v.shape[1:], dtype=v.dtype, device=v.device)
                            for n, v in rows.items()})

    # ---- conjugate algebra (subclasses) -------------------------------------
    def posterior(self, stats: SuffStats):
        """Posterior hyperparameters of each cluster given its statistics."""
        raise NotImplementedError

    def log_marginal(self, stats: SuffStats) -> torch.Tensor:
        """Exact log p(X_k) = log of the integral of prod_i p(x_i|theta) p(theta), shape (K,)."""
        raise NotImplementedError

    def log_predictive(self, X, stats: SuffStats) -> torch.Tensor:
        """Log posterior predictive log p(x_i | X_k) for every row and cluster, (N, K)."""
        raise NotImplementedError

    def map_estimate(self, stats: SuffStats):
        """Joint posterior mode of the component parameters, batched over K."""
        raise NotImplementedError

    def sample_posterior(self, stats: SuffStats):
        """One draw of the parameters of each cluster from its conjugate posterior."""
        raise NotImplementedError

    def expected_log_likelihood(self, X, stats: SuffStats) -> torch.Tensor:
        """E_q[log p(x_i | theta_k)] with q the conjugate posterior of cluster k, (N, K)."""
        raise NotImplementedError

    def kl_to_prior(self, stats: SuffStats) -> torch.Tensor:
        """KL(p(theta | X_k) || p(theta)) per cluster, (K,)."""
        raise NotImplementedError

    # ---- mean-field VB of the per-row latent variables (MemoizedVB) ---------------
    # A family whose rows carry latent variables u_i (StudentNIW's scales) factorises
    # q(z_i, u_i) = q(z_i) q(u_i | z_i) and keeps one factor q(u_i | z_i = k) per row and
    # component, described by a (N, K) table ``local``.  Without latent variables these
    # are the plain conjugate updates and ``local`` is None.
    def variational_local(self, X, stats: SuffStats):
        """The local step's terms given q(theta_k) = p(theta | S_k): (ell, local) with
        ell_ik = max over q(u_i | k) of E_q[log p(x_i, u_i | theta_k)] + H[q(u_i | k)]
        (N, K) -- E_q[log p(x_i | theta_k)] without latent variables -- and the
        maximising factors (None without latent variables)."""
        return self.expected_log_likelihood(X, stats), None

    def variational_stats(self, X, weights, local=None) -> SuffStats:
        """Soft statistics with responsibilities ``weights`` (N, K) and the latent
        factors ``local`` (N, K): the statistics whose :meth:`log_marginal` is
        log Z(S_k) = max over q(theta_k) of sum_i r_ik E_q[log p(x_i, u_i | theta_k)]
        - KL(q(theta_k) || p(theta))."""
        return self.suff_stats(X, weights=weights)

    def variational_entropy(self, weights, local=None) -> torch.Tensor:
        """sum_k r_ik H[q(u_i | z_i = k)] of each row (N,): the latent factors' share
        of the ELBO's entropy (0 without latent variables)."""
        return torch.zeros(weights.shape[0], dtype=DTYPE, device=self.device)

    def log_likelihood(self, X, params) -> torch.Tensor:
        """log p(x_i | theta_k) under point parameters, (N, K)."""
        raise NotImplementedError

    def log_likelihood_at(self, X, params, comps: torch.Tensor) -> torch.Tensor:
        """log p(x_i | theta_{comps[i, j]}): each row under its own components only,
        (N, m) for ``comps`` (N, m).  Default: the (N, K) table of
        :meth:`log_likelihood` in row chunks of 2^20 entries, then a gather; families
        override it with a per-row evaluation where that is cheaper."""
        X = self._as_data(X)
        comps = torch.as_tensor(comps, dtype=torch.long, device=X.device)
        k = int(next(iter(params)).shape[0])
        out = torch.empty(comps.shape, dtype=X.dtype, device=X.device)
        step = max(1, (1 << 20) // max(k, 1))
        for start in range(0, X.shape[0], step):
            rows = slice(start, start + step)
            out[rows] = self.log_likelihood(X[rows], params).gather(1, comps[rows])
        return out

    def sample_prior(self, k: int):
        """K independent draws of the parameters from the prior."""
        return self.sample_posterior(self.empty_stats(k))

    def pyro_sample_params(self):
        """Sample the component parameters as Pyro sites (call inside a components plate)."""
        raise NotImplementedError

    def params_from_sites(self, values: dict):
        """Parameter tuple from the values of this family's Pyro sites."""
        raise NotImplementedError

    def sites_from_params(self, params) -> dict:
        """Values of this family's Pyro sites for a parameter tuple."""
        raise NotImplementedError

    def likelihood(self, params) -> torch.distributions.Distribution:
        """The observation distribution p(x | theta) for batched point parameters."""
        raise NotImplementedError

    def param_event_dims(self) -> tuple:
        """Event dimensions of each field of a parameter tuple (those right of the
        component axis): 1 for a mean vector, 2 for a covariance matrix."""
        if getattr(self, "_event_dims", None) is None:
            one = self.map_estimate(self.empty_stats(1))
            self._event_dims = tuple(p.dim() - 1 for p in one)
        return self._event_dims

    # ---- change of units --------------------------------------------------------
    def standardized(self, shift, scale) -> "ConjugateFamily":
        """The prior this one implies for y = (x - shift) / scale, per column (scale > 0).

        Under the affine map the likelihood changes by the constant Jacobian
        -sum_j log scale_j, so the posterior over partitions is the same in either
        coordinates; methods whose optimiser works in the parameters' own units (SVI)
        fit in y and map the parameters back with :meth:`params_from_standardized`.
        Families of data that have no units (counts) raise ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no change of units")

    def params_from_standardized(self, params, shift, scale):
        """Point parameters in x's units from those of y = (x - shift) / scale."""
        raise NotImplementedError(f"{type(self).__name__} has no change of units")

    def _affine_args(self, shift, scale) -> tuple[torch.Tensor, torch.Tensor]:
        shift = as_tensor(shift, device=self.device).reshape(self.dim)
        scale = as_tensor(scale, device=self.device).reshape(self.dim)
        if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ValueError("every column's scale must be positive and finite")
        return shift, scale

    # ---- conveniences --------------------------------------------------------
    def log_marginal_likelihood(self, X) -> float:
        """Log marginal likelihood of all rows of X as one cluster."""
        return float(self.log_marginal(self.suff_stats(self.validate(X, warn=False)))[0])

    @classmethod
    def weak(cls, X, **kwargs) -> "ConjugateFamily":
        """A weakly informative, data-driven default prior for data X."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"
