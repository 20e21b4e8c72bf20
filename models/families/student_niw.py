"""Multivariate Student-t components with a Normal-inverse-Wishart prior.

The t distribution is a Gaussian scale mixture (Andrews & Mallows 1974; Liu &
Rubin 1995; Peel & McLachlan 2000, "Robust mixture modelling using the t
distribution"):

    x_i | mu, Sigma, w_i ~ N(mu, Sigma / w_i),   w_i ~ Gamma(df / 2, rate df / 2),

so that x_i | mu, Sigma ~ t_df(mu, Sigma).  With (mu, Sigma) ~ NIW(mu0, kappa, nu,
Psi) and the precision scales w_i kept in the chain as latent variables, the
family is conjugate given w.  A cluster's statistics are the count n, W = sum w_i,
s = sum w_i x_i, S = sum w_i x_i x_i^T and l = sum log w_i, and

    kappa_n = kappa + W,   nu_n = nu + n,   mu_n = (kappa mu0 + s) / kappa_n,
    Psi_n   = Psi + S + kappa mu0 mu0^T - kappa_n mu_n mu_n^T,

    log p(X_k, w_k) = [GaussianNIW's log marginal at these] + d/2 l
                      + sum_i log Gamma(w_i; df/2, df/2).

The family's rows are therefore pairs (x_i, w_i): ``augment`` appends the w column
the samplers carry, ``update_latent`` draws it from its conditional

    w_i | x_i, mu, Sigma ~ Gamma((df + d) / 2, rate (df + delta_i) / 2),
    delta_i = (x_i - mu)^T Sigma^{-1} (x_i - mu),

with (mu, Sigma) drawn from their conditional given the cluster first (a Gibbs
step on w given the partition).  Rows without the w column are plain data: their
likelihood is the t density, and their posterior predictive integrates w_i over
its prior by generalised Gauss-Laguerre quadrature.  ``df`` is a hyperparameter
(a prior on it is sampled from p(df | w) through the log marginal above).
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as pdist
import torch
from scipy.special import digamma, roots_genlaguerre

from bnpdeep.linalg import (
    DTYPE,
    as_tensor,
    cholesky,
    log_2pi,
    logdet_from_chol,
    mahalanobis_points,
)

from .base import ConjugateFamily, SuffStats
from .gaussian_niw import GaussianNIW, GaussianParams, niw_predictive

# quadrature nodes of the plain-row predictive's integral over w
QUADRATURE_NODES = 48


class StudentNIW(GaussianNIW):
    """Student-t likelihood with ``df`` degrees of freedom, NIW(mu0, kappa, nu, psi)
    prior on its location and scale matrix (the module's scale mixture).

    Parameters
    ----------
    mu0, kappa, nu, psi : as :class:`GaussianNIW`; E[Sigma] = psi / (nu - d - 1)
        is the prior mean of the t's scale matrix (its covariance is
        Sigma df / (df - 2)).
    df : degrees of freedom of the components (> 0; 4 is Lange, Little & Taylor's
        1989 robust default); large ``df`` approaches GaussianNIW.
    """

    #: columns of latent variables the chain carries beside each row (w_i)
    latent_columns = 1
    hyperparameter_names = GaussianNIW.hyperparameter_names + ("df",)

    def __init__(self, mu0, kappa, nu, psi, df: float = 4.0, device=None):
        super().__init__(mu0, kappa, nu, psi, device=device)
        df = float(df)
        if not (math.isfinite(df) and df > 0):
            raise ValueError(f"df must be positive and finite, got {df}")
        self.df = df
        a = 0.5 * df
        # log Gamma(w; a, rate a) = _w_const + (a - 1) log w - a w
        self._w_const = a * math.log(a) - math.lgamma(a)

    @classmethod
    def weak(cls, X, df: float = 4.0, **kwargs) -> "StudentNIW":
        """:meth:`GaussianNIW.weak`'s data-driven prior, with ``df``."""
        g = GaussianNIW.weak(X, **kwargs)
        return cls(g.mu0, g.kappa, g.nu, g.psi, df=df, device=g.device)

    def _like(self, mu0=None, kappa=None, nu=None, psi=None, df=None, device=None):
        return StudentNIW(self.mu0 if mu0 is None else mu0, self.kappa if kappa is None else kappa,
                         self.nu if nu is None else nu, self.psi if psi is None else psi,
                         df=self.df if df is None else df,
                         device=self._device if device is None else device)

    def hyperparameter_value(self, name: str):
        return self.df if name == "df" else super().hyperparameter_value(name)

    def with_hyperparameters(self, kappa=None, psi_scale=None, nu=None, mu0=None, df=None
                             ) -> "StudentNIW":
        g = super().with_hyperparameters(kappa=kappa, psi_scale=psi_scale, nu=nu, mu0=mu0)
        out = self._like(g.mu0, g.kappa, g.nu, g.psi, df=df)
        out.psi_scale, out._psi_base = g.psi_scale, g._psi_base
        return out

    # ---- rows (x_i, w_i) ------------------------------------------------------
    def augment(self, X, latent=None) -> torch.Tensor:
        """The chain's rows (x_i, w_i): ``latent`` (N,) or (N, 1) scales, default 1."""
        X = self._as_data(X)
        w = torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device) if latent is None \
            else as_tensor(latent, device=X.device).reshape(-1, 1)
        return torch.cat([X, w], 1)

    def split_rows(self, X):
        """(x, w) of augmented rows; w is None for plain rows."""
        X = self._as_data(X)
        if X.shape[-1] == self.dim + 1:
            return X[:, :self.dim], X[:, self.dim]
        return X, None

    def latent(self, X) -> torch.Tensor:
        """The w column of augmented rows."""
        return self.split_rows(X)[1]

    def _log_w_prior(self, w: torch.Tensor) -> torch.Tensor:
        a = 0.5 * self.df
        return self._w_const + (a - 1.0) * torch.log(w) - a * w

    def update_latent(self, X, labels, stats: SuffStats) -> torch.Tensor:
        """New augmented rows: (mu_k, Sigma_k) ~ p(. | X_k, w_k) for each cluster, then
        every w_i from Gamma((df + d)/2, rate (df + delta_i)/2) given its own cluster's
        draw (the module's conditional)."""
        x, _ = self.split_rows(X)
        z = torch.as_tensor(labels, dtype=torch.long, device=x.device)
        params = self.sample_posterior(stats)
        chol = cholesky(params.cov)
        delta = mahalanobis_points(chol, x, params.mean).gather(1, z[:, None])[:, 0]
        a = torch.full_like(delta, 0.5 * (self.df + self.dim))
        w = torch.distributions.Gamma(a, 0.5 * (self.df + delta)).sample()
        return torch.cat([x, w.clamp_min(1e-300)[:, None]], 1)

    def plugin_latent(self, X, labels, k: int | None = None, iterations: int = 20,
                      reduce=None) -> torch.Tensor:
        """Augmented rows with w_i at its conditional mean (df + d) / (df + delta_i)
        under each cluster's posterior-mean parameters, iterated to a fixed point
        (the EM scales of Peel & McLachlan): the scales ``predict`` conditions on,
        and those :meth:`log_evidence` is evaluated at."""
        x, _ = self.split_rows(X)
        z = torch.as_tensor(labels, dtype=torch.long, device=x.device)
        k = int(z.max()) + 1 if k is None else int(k)
        Xa = self.augment(x)
        for _ in range(iterations):
            stats = self.suff_stats_labels(Xa, z, k)
            stats = stats if reduce is None else reduce(stats)
            Xa = self.expected_rows(x, self.posterior_mean(stats), z)
        return Xa

    def expected_scales(self, X, params: GaussianParams) -> torch.Tensor:
        """u_ik = E[w_i | x_i, mu_k, Sigma_k] = (df + d) / (df + delta_ik), (N, K): the
        E-step of the t's EM (Peel & McLachlan 2000, eq. 30)."""
        x, _ = self.split_rows(X)
        chol = cholesky(as_tensor(params.cov, device=x.device))
        delta = mahalanobis_points(chol, x, as_tensor(params.mean, device=x.device))
        return (self.df + self.dim) / (self.df + delta)

    def expected_rows(self, X, params, comps) -> torch.Tensor:
        """Rows (x_i, u_i) with u_i = E[w_i | x_i, theta_{comps[i]}]."""
        x, _ = self.split_rows(X)
        comps = torch.as_tensor(comps, dtype=torch.long, device=x.device)
        return self.augment(x, self.expected_scales(x, params).gather(1, comps[:, None]))

    def expected_suff_stats(self, X, weights, params) -> SuffStats:
        """Responsibilities r (N, K), scales u_ik under each component: n_k = sum_i
        r_ik, W_k = sum_i r_ik u_ik, s_k = sum_i r_ik u_ik x_i, S_k likewise, and
        l_k = sum_i r_ik E[log w_i] with E[log w_i] = log u_ik + psi(a) - log a,
        a = (df + d) / 2 (the conditional Gamma's mean log).  The MAP of these
        (``map_estimate``) is the conditional M-step of the t mixture's ECM (Peel &
        McLachlan 2000, eqs. 31-32) under the NIW prior: mu_k = (kappa mu0 + s_k) /
        (kappa + W_k), Sigma_k = Psi_k' / (nu + n_k + d + 2); and the df-dependent
        part of ``log_marginal`` at them, n_k (df/2 log df/2 - lgamma(df/2)) + (df/2
        - 1) l_k - df/2 W_k, is the expected complete-data log-likelihood that the
        ECM maximises in df (their eq. 33; a hyperparameter step maximising
        ``log_marginal`` in df is that step).  These are :meth:`variational_stats`
        with each w_i's factor its conditional Gamma(a, rate (df + delta_ik) / 2)."""
        x, _ = self.split_rows(X)
        rate = self._gamma_shape() / self.expected_scales(x, params)    # (df + delta) / 2
        return self.variational_stats(x, weights, rate)

    def _weighted_stats(self, x, w, r) -> SuffStats:
        """Statistics of rows x with scales w (N, K) or (N, 1), each row counted
        r_ik times in component k (r (N, K))."""
        g = GaussianNIW.suff_stats(self, x, weights=r * w)
        return SuffStats(n=r.sum(0), w=g.n, sx=g.sx, sxx=g.sxx,
                         slw=(r * torch.log(w)).sum(0))

    # ---- statistics ---------------------------------------------------------
    def _scaled_rows(self, X):
        x, w = self.split_rows(X)
        if w is None:
            raise ValueError(
                "StudentNIW's statistics need each row's scale w_i: pass augment(X, w) "
                "rows (a sampler's chain carries them); the collapsed likelihood of plain "
                "rows integrates the scales out and has no closed form")
        return x, w

    def _row_stats(self, X):
        x, w = self._scaled_rows(X)
        wx = x * w[:, None]
        return {"n": torch.ones_like(w), "w": w, "sx": wx, "sxx": wx[:, :, None] * x[:, None, :],
                "slw": torch.log(w)}

    def _no_soft_weights(self, X, weights):
        if weights is not None and self.split_rows(X)[1] is None:
            raise TypeError("StudentNIW's soft-weighted statistics need each row's scale "
                            "w_i (augment(X, w) rows, expected_suff_stats for an EM step "
                            "or variational_stats for VB factors of the scales)")

    def suff_stats(self, X, weights=None) -> SuffStats:
        """Weights (N,) or (N, K) count row i weights[i, k] times in component k (the
        rows must be augmented)."""
        self._no_soft_weights(X, weights)
        if weights is None:
            return ConjugateFamily.suff_stats(self, X)
        x, w = self._scaled_rows(X)
        r = as_tensor(weights, device=x.device)
        return self._weighted_stats(x, w[:, None], r[:, None] if r.dim() == 1 else r)

    def suff_stats_labels(self, X, labels, k=None, weights=None) -> SuffStats:
        self._no_soft_weights(X, weights)
        x, w = self._scaled_rows(X)
        z = torch.as_tensor(labels, device=x.device, dtype=torch.long)
        k = int(z.max()) + 1 if k is None else k
        r = torch.ones_like(w) if weights is None \
            else as_tensor(weights, device=x.device).reshape(-1)
        # GaussianNIW's statistics of the rows weighted by r w: n = W, sx, sxx
        g = super().suff_stats_labels(x, z, k, weights=r * w)
        zeros = torch.zeros(k, dtype=x.dtype, device=x.device)
        return SuffStats(n=zeros.index_add(0, z, r), w=g.n, sx=g.sx, sxx=g.sxx,
                         slw=zeros.index_add(0, z, r * torch.log(w)))

    def empty_stats(self, k: int = 1) -> SuffStats:
        z = torch.zeros(k, dtype=DTYPE, device=self.device)
        zd = torch.zeros((k, self.dim), dtype=DTYPE, device=self.device)
        return SuffStats(n=z, w=z.clone(), sx=zd, sxx=zd[:, :, None] * zd[:, None, :],
                         slw=z.clone())

    def _mean_count(self, stats: SuffStats) -> torch.Tensor:
        return stats.w

    # ---- conjugate algebra --------------------------------------------------
    def log_marginal(self, stats: SuffStats) -> torch.Tensor:
        """log p(X_k, w_k): the Gaussian-NIW marginal given the scales (kappa from W,
        nu and pi's exponent from n), the Jacobian d/2 sum log w_i of the scaled
        covariances, and the scales' Gamma(df/2, df/2) prior."""
        a = 0.5 * self.df
        return (super().log_marginal(stats) + 0.5 * self.dim * stats.slw
                + self._w_const * stats.n + (a - 1.0) * stats.slw - a * stats.w)

    def log_evidence(self, stats: SuffStats) -> torch.Tensor:
        """log p(X_k) with the scales integrated out, by Chib's (1995) identity
        log p(X) = log p(X, w*) - log p(w* | X) at the scales w*_i = u_i of
        :meth:`plugin_latent`, with p(w | X) approximated by the conditional
        prod_i Gamma(w_i; a, a / u_i), a = (df + d) / 2, at the fitted (mu, Sigma):
        log Gamma(u_i; a, a / u_i) = a log a - lgamma(a) - a - log u_i, so

            log p(X_k) ~ log_marginal(stats) - n (a log a - lgamma(a) - a) + l.

        The (mu, Sigma) left out of p(w | X) cost O(d^2 / n) nats per row: on 400
        t(3) rows in 2-d it agrees with the Laplace approximation of log p(X_k)
        within 1 nat (tests)."""
        a = 0.5 * (self.df + self.dim)
        c = a * math.log(a) - math.lgamma(a) - a
        return self.log_marginal(stats) - c * stats.n + stats.slw

    def log_predictive(self, X, stats: SuffStats) -> torch.Tensor:
        """Augmented rows: log p(x_i, w_i | X_k, w_k), the t of a point with precision
        scale w_i (:func:`~.gaussian_niw.niw_predictive`) plus log Gamma(w_i), so that
        it is the difference of log marginals.  Plain rows:
        log p(x_i | X_k, w_k) = log E_{w ~ Gamma(df/2, df/2)} p(x_i | X_k, w_k, w),
        by generalised Gauss-Laguerre quadrature in u = w df / 2."""
        x, w = self.split_rows(X)
        post = self.posterior(stats)
        if w is not None:
            return niw_predictive(post, x, w) + self._log_w_prior(w)[:, None]
        a = 0.5 * self.df
        u, lam = roots_genlaguerre(QUADRATURE_NODES, a - 1.0)
        keep = lam > 0
        nodes = torch.as_tensor(u[keep] / a, dtype=DTYPE, device=x.device)
        log_lam = torch.as_tensor(np.log(lam[keep]) - math.lgamma(a), dtype=DTYPE,
                                  device=x.device)
        terms = torch.stack([niw_predictive(post, x, wq.expand(x.shape[0])) + lq
                             for wq, lq in zip(nodes, log_lam, strict=True)], 0)
        return torch.logsumexp(terms, 0)

    def log_likelihood(self, X, params: GaussianParams) -> torch.Tensor:
        """Plain rows: log t_df(x_i | mu_k, Sigma_k).  Augmented rows: the row's joint
        density log N(x_i | mu_k, Sigma_k / w_i) + log Gamma(w_i; df/2, df/2)."""
        x, w = self.split_rows(X)
        d = self.dim
        chol = cholesky(as_tensor(params.cov, device=x.device))
        maha = mahalanobis_points(chol, x, as_tensor(params.mean, device=x.device))
        logdet = logdet_from_chol(chol)[None]
        if w is not None:
            return (-0.5 * (d * log_2pi() + logdet) + 0.5 * d * torch.log(w)[:, None]
                    - 0.5 * w[:, None] * maha + self._log_w_prior(w)[:, None])
        nu = self.df
        return (math.lgamma(0.5 * (nu + d)) - math.lgamma(0.5 * nu)
                - 0.5 * d * math.log(nu * math.pi) - 0.5 * logdet
                - 0.5 * (nu + d) * torch.log1p(maha / nu))

    def log_likelihood_at(self, X, params: GaussianParams, comps: torch.Tensor) -> torch.Tensor:
        # the table of log_likelihood in row chunks, gathered (GaussianNIW's per-row
        # path evaluates the Gaussian density, not this row's)
        return ConjugateFamily.log_likelihood_at(self, X, params, comps)

    # ---- mean-field VB (MemoizedVB) ---------------------------------------------
    def _gamma_shape(self) -> float:
        """a = (df + d) / 2, the shape of w_i's conditional and of its VB factor."""
        return 0.5 * (self.df + self.dim)

    def variational_local(self, X, stats: SuffStats):
        """The VB local step of the t as a scale mixture (Svensen & Bishop 2005;
        Archambeau & Verleysen 2007): given q(mu_k, Sigma_k) = NIW(stats), the optimal
        q(w_i | z_i = k) is Gamma(a, rate b_ik), a = (df + d) / 2, b_ik = (df +
        E[delta_ik]) / 2 with E[delta_ik] = nu_k (x_i - mu_k)^T Psi_k^{-1} (x_i - mu_k)
        + d / kappa_k, and integrating w_i against it gives

            ell_ik = -d/2 log 2 pi - E[log|Sigma_k|] / 2 + df/2 log(df/2)
                     - lgamma(df/2) + lgamma(a) - a log b_ik,

        the t's log density with delta and log|Sigma| replaced by their expectations
        (a lower bound on E_q[log t(x_i | theta_k)]).  Returns (ell, b)."""
        x, _ = self.split_rows(X)
        post = self.posterior(stats)
        e_delta = post.nu * mahalanobis_points(post.chol, x, post.mu) + self.dim / post.kappa
        a = self._gamma_shape()
        rate = 0.5 * (self.df + e_delta)
        ell = (-0.5 * self.dim * log_2pi() - 0.5 * self._expected_logdet(post)
               + self._w_const + math.lgamma(a) - a * torch.log(rate))
        return ell, rate

    def variational_stats(self, X, weights, local=None) -> SuffStats:
        """Statistics under w_i's factors Gamma(a, rate b_ik) (``local``; None: rate a,
        E[w] = 1): W_k = sum_i r_ik E[w_ik], s_k, S_k weighted likewise, n_k = sum_i
        r_ik and l_k = sum_i r_ik E[log w_ik], E[w] = a / b, E[log w] = psi(a) - log b.
        ``log_marginal`` of them is the bound log Z(S_k) of the module's scale mixture:
        every term of log p(x, w | mu, Sigma) + log Gamma(w) is linear in w and log w."""
        x, _ = self.split_rows(X)
        r = as_tensor(weights, device=x.device)
        a = self._gamma_shape()
        rate = torch.full_like(r, a) if local is None else as_tensor(local, device=x.device)
        g = GaussianNIW.suff_stats(self, x, weights=r * (a / rate))
        return SuffStats(n=r.sum(0), w=g.n, sx=g.sx, sxx=g.sxx,
                         slw=(r * (float(digamma(a)) - torch.log(rate))).sum(0))

    def variational_entropy(self, weights, local=None) -> torch.Tensor:
        """sum_k r_ik H[Gamma(a, b_ik)] of each row (N,), with H = a - log b + lgamma(a)
        + (1 - a) psi(a)."""
        r = as_tensor(weights, device=self.device)
        a = self._gamma_shape()
        rate = torch.full_like(r, a) if local is None else as_tensor(local, device=r.device)
        const = a + math.lgamma(a) + (1.0 - a) * float(digamma(a))
        return (r * (const - torch.log(rate))).sum(1)

    def expected_log_likelihood(self, X, stats):
        """The local step's ell of :meth:`variational_local` (the bound on
        E_q[log t(x_i | theta_k)] that the VB responsibilities use)."""
        return self.variational_local(X, stats)[0]

    # ---- Pyro ---------------------------------------------------------------
    def likelihood(self, params: GaussianParams) -> pdist.MultivariateStudentT:
        return pdist.MultivariateStudentT(torch.tensor(self.df, dtype=params.mean.dtype),
                                          params.mean, cholesky(params.cov))

    def __repr__(self) -> str:
        return (f"StudentNIW(dim={self.dim}, df={self.df:.4g}, kappa={float(self.kappa):.4g}, "
                f"nu={float(self.nu):.4g})")


__all__ = ["StudentNIW", "QUADRATURE_NODES"]
