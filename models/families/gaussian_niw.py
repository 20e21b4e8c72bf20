"""Full-covariance Gaussian components with a Normal-inverse-Wishart prior.

Prior: Sigma ~ IW(nu, Psi), mu | Sigma ~ N(mu0, Sigma / kappa).  With cluster
statistics n, s = sum x_i, S = sum x_i x_i^T the posterior is NIW with
(Murphy 2007, "Conjugate Bayesian analysis of the Gaussian distribution", eq. 250-254)

    kappa_n = kappa + n,   nu_n = nu + n,   mu_n = (kappa mu0 + s) / kappa_n,
    Psi_n   = Psi + S + kappa mu0 mu0^T - kappa_n mu_n mu_n^T.

Every determinant, quadratic form and trace goes through Cholesky factors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as pdist
import torch

from bnpdeep.linalg import (
    DTYPE,
    as_tensor,
    cholesky,
    grouped_mahalanobis,
    log_2pi,
    log_pi,
    logdet_from_chol,
    mahalanobis_points,
    mahalanobis_sq,
    multidigamma,
    multigammaln,
    scatter_outer,
    weighted_outer,
)

from ..distributions import InverseWishart, inverse_wishart_root
from .base import ConjugateFamily, SuffStats, volume_scale


class GaussianParams(NamedTuple):
    """Point parameters of K Gaussian components: means (K, d), covariances (K, d, d)."""

    mean: torch.Tensor
    cov: torch.Tensor


class NIWPosterior(NamedTuple):
    mu: torch.Tensor      # (K, d)
    kappa: torch.Tensor   # (K,)
    nu: torch.Tensor      # (K,)
    psi: torch.Tensor     # (K, d, d)
    chol: torch.Tensor    # (K, d, d) lower Cholesky factor of psi


def niw_predictive(post: NIWPosterior, X: torch.Tensor, w: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """log p(x_i | X_k), (N, K), for x_i ~ N(mu, Sigma / w_i) under the NIW posterior
    ``post``: a multivariate t with df = nu_n - d + 1, location mu_n and scale
    Psi_n (kappa_n + w_i) / (kappa_n w_i df) (Murphy 2007, eq. 258, at w_i = 1:
    x_i - mu_n ~ N(0, Sigma (1 / w_i + 1 / kappa_n)) given Sigma ~ IW(nu_n, Psi_n))."""
    d = X.shape[1]
    df = post.nu - d + 1                                                  # (K,)
    c = (post.kappa + 1) / (post.kappa * df) if w is None else \
        (post.kappa[None] + w[:, None]) / (post.kappa[None] * w[:, None] * df[None])
    maha = mahalanobis_points(post.chol, X, post.mu) / c
    logdet = logdet_from_chol(post.chol) + d * torch.log(c)
    return (torch.lgamma(0.5 * (df + d)) - torch.lgamma(0.5 * df)
            - 0.5 * d * torch.log(df * math.pi) - 0.5 * logdet
            - 0.5 * (df + d) * torch.log1p(maha / df))


class GaussianNIW(ConjugateFamily):
    """Gaussian likelihood, Normal-inverse-Wishart prior NIW(mu0, kappa, nu, psi).

    Parameters
    ----------
    mu0 : (d,) prior mean of the component means.
    kappa : prior pseudo-count on the mean (> 0).
    nu : degrees of freedom of the inverse-Wishart (> d - 1).
    psi : (d, d) positive-definite scale matrix; E[Sigma] = psi / (nu - d - 1).
    """

    param_sites = ("cov", "loc")
    full_covariance = True

    def __init__(self, mu0, kappa, nu, psi, device=None):
        self.mu0 = as_tensor(mu0, device=device).reshape(-1)
        self._device = self.mu0.device
        d = self.mu0.shape[0]
        self.dim = d
        self.kappa = as_tensor(kappa, device=self._device).reshape(())
        self.nu = as_tensor(nu, device=self._device).reshape(())
        self.psi = as_tensor(psi, device=self._device).reshape(d, d)
        if float(self.kappa) <= 0:
            raise ValueError(f"kappa must be positive, got {float(self.kappa)}")
        if float(self.nu) <= d - 1:
            raise ValueError(f"nu must exceed d - 1 = {d - 1}, got {float(self.nu)}")
        if not torch.allclose(self.psi, self.psi.T, rtol=1e-10, atol=0.0):
            raise ValueError("psi must be symmetric positive definite (it is not symmetric)")
        try:
            self.psi_chol = cholesky(self.psi, max_tries=0)
        except ValueError:
            raise ValueError("psi must be symmetric positive definite") from None
        self._psi_logdet = logdet_from_chol(self.psi_chol)
        # psi = psi_scale * Psi0, Psi0 the psi the family was first built with
        self.psi_scale, self._psi_base = 1.0, self.psi
        # the prior's share of the posterior statistics, used by every update
        self._kappa_mu0 = self.kappa * self.mu0
        self._psi_plus = self.psi + self.kappa * torch.outer(self.mu0, self.mu0)
        # the prior-only terms of log_marginal: -log G_d(nu/2) + nu/2 log|Psi| + d/2 log kappa
        self._log_marginal_prior = float(
            -multigammaln(0.5 * self.nu, d) + 0.5 * self.nu * self._psi_logdet
            + 0.5 * d * torch.log(self.kappa))

    @classmethod
    def weak(cls, X, kappa: float = 0.01, nu_offset: float = 2.0, scale: float | None = None,
             expected_clusters: float = 10.0, device=None) -> "GaussianNIW":
        """Weak data-driven prior: mu0 = mean(X), nu = d + ``nu_offset``,
        psi = ``scale`` * cov(X), so E[Sigma] = psi / (nu - d - 1) is a fraction of the
        data covariance, and small ``kappa``.  ``scale=None`` takes the volume rule
        :func:`~bnpdeep.models.families.base.volume_scale` (0.1 on uncorrelated 2-d
        data, larger in higher effective dimension).  Zero-variance columns get a
        variance floor so that psi stays positive definite.  Outside such columns the
        prior is equivariant: for y = (x - m) / s per column, ``weak(Y)`` is
        ``weak(X).standardized(m, s)``, so no fit depends on the columns' units.
        """
        from bnpdeep.data import check_covariance_memory

        # cov, psi and its Cholesky factor, and the clusters' scatter matrices
        check_covariance_memory(X.shape[1], what="a Gaussian-NIW prior")
        X = as_tensor(X, device=device)
        d = X.shape[1]
        cov = torch.cov(X.T).reshape(d, d) if X.shape[0] > 1 else torch.eye(d, dtype=DTYPE)
        return cls.weak_from_moments(X.mean(0), cov, kappa, nu_offset, scale,
                                     expected_clusters, device)

    @classmethod
    def weak_from_moments(cls, mean, cov, kappa: float = 0.01, nu_offset: float = 2.0,
                          scale: float | None = None, expected_clusters: float = 10.0,
                          device=None) -> "GaussianNIW":
        """:meth:`weak` from the data's mean and (unbiased) covariance, for data held
        in pieces (a data-parallel run reduces the moments first)."""
        mean, cov = as_tensor(mean, device=device), as_tensor(cov, device=device)
        d = mean.shape[0]
        var = cov.diagonal()
        floor = 1e-6 * (float(var.mean()) if float(var.mean()) > 0 else 1.0)
        cov = cov + torch.diag(torch.where(var > 0, 0.0, floor))
        # keep psi well-conditioned when d is large relative to N: a ridge of 1e-6 of
        # each column's own variance, so that the prior follows any change of units
        cov = cov + 1e-6 * torch.diag(cov.diagonal())
        if scale is None:
            scale = volume_scale(cov, expected_clusters)
        return cls(mean, kappa, d + nu_offset, scale * cov, device=device)

    def _like(self, mu0=None, kappa=None, nu=None, psi=None, device=None) -> "GaussianNIW":
        """A family of this kind with some of its parameters replaced."""
        return GaussianNIW(self.mu0 if mu0 is None else mu0,
                           self.kappa if kappa is None else kappa,
                           self.nu if nu is None else nu, self.psi if psi is None else psi,
                           device=self._device if device is None else device)

    def to(self, device) -> "GaussianNIW":
        out = self._like(device=device)
        out.psi_scale, out._psi_base = self.psi_scale, self._psi_base.to(device)
        return out

    def standardized(self, shift, scale) -> "GaussianNIW":
        """For y = S^-1 (x - shift), S = diag(scale): Sigma_y = S^-1 Sigma S^-1 ~
        IW(nu, S^-1 Psi S^-1) and mu_y | Sigma_y ~ N(S^-1 (mu0 - shift), Sigma_y / kappa)
        (kappa, nu and, for Student-t, df unchanged)."""
        shift, scale = self._affine_args(shift, scale)
        outer = (1.0 / scale)[:, None] / scale[None, :]
        out = self._like(mu0=(self.mu0 - shift) / scale, psi=self.psi * outer)
        # psi = psi_scale * Psi0 in either coordinates (the hyperprior on psi_scale
        # is free of units)
        out.psi_scale, out._psi_base = self.psi_scale, self._psi_base * outer
        return out

    def params_from_standardized(self, params: GaussianParams, shift, scale) -> GaussianParams:
        shift, s = self._affine_args(shift, scale)
        return GaussianParams(params.mean * s + shift, params.cov * s[:, None] * s[None, :])

    # ---- hyperparameters (models/hyperpriors.py) --------------------------------
    hyperparameter_names = ("kappa", "psi_scale", "nu", "mu0")

    def hyperparameter_value(self, name: str):
        if name == "mu0":
            return self.mu0.clone()
        return float(getattr(self, name))

    def with_hyperparameters(self, kappa=None, psi_scale=None, nu=None, mu0=None
                             ) -> "GaussianNIW":
        """This family with some hyperparameters replaced; ``psi_scale`` scales the
        Psi0 this family was built from (not its current psi)."""
        scale = self.psi_scale if psi_scale is None else float(psi_scale)
        out = self._like(mu0=mu0, kappa=kappa, nu=nu, psi=self._psi_base * scale)
        out.psi_scale, out._psi_base = scale, self._psi_base
        return out

    def _row_stats(self, X):
        return {"n": torch.ones(X.shape[0], dtype=X.dtype, device=X.device),
                "sx": X, "sxx": X[:, :, None] * X[:, None, :]}

    def suff_stats(self, X, weights=None) -> SuffStats:
        # avoid materialising the N x d x d outer products for soft weights
        X = self._as_data(X)
        if weights is None:
            return SuffStats(n=torch.tensor([X.shape[0]], dtype=DTYPE, device=X.device),
                             sx=X.sum(0, keepdim=True), sxx=(X.T @ X)[None])
        w = as_tensor(weights, device=X.device)
        if w.dim() == 1:
            w = w[:, None]
        return SuffStats(n=w.sum(0), sx=w.T @ X, sxx=weighted_outer(X, w))

    def suff_stats_labels(self, X, labels, k=None, weights=None) -> SuffStats:
        X = self._as_data(X)
        z = torch.as_tensor(labels, device=X.device, dtype=torch.long)
        k = int(z.max()) + 1 if k is None else k
        d = self.dim
        if weights is None:
            n = torch.bincount(z, minlength=k).to(X.dtype)
            wx = X
        else:
            w = as_tensor(weights, device=X.device).reshape(-1)
            n = torch.zeros(k, dtype=X.dtype, device=X.device).index_add_(0, z, w)
            wx = X * w[:, None]
        sx = torch.zeros((k, d), dtype=X.dtype, device=X.device).index_add_(0, z, wx)
        return SuffStats(n=n, sx=sx, sxx=scatter_outer(X, z, k, wx))

    # ---- conjugate algebra ------------------------------------------------
    def _mean_count(self, stats: SuffStats) -> torch.Tensor:
        """The pseudo-count the data add to kappa: n (a scale mixture's sum of scales)."""
        return stats.n

    def posterior(self, stats: SuffStats) -> NIWPosterior:
        n, sx, sxx = stats.n, stats.sx, stats.sxx
        kappa_n = self.kappa + self._mean_count(stats)
        nu_n = self.nu + n
        sum_n = self._kappa_mu0 + sx                     # kappa_n mu_n
        mu_n = sum_n / kappa_n[:, None]
        # Psi + S + kappa mu0 mu0^T - kappa_n mu_n mu_n^T, the last term as one
        # batched outer product (symmetric up to round-off; cholesky reads the lower part)
        psi_n = torch.baddbmm(self._psi_plus + sxx, sum_n[:, :, None], mu_n[:, None, :],
                              alpha=-1.0)
        return NIWPosterior(mu_n, kappa_n, nu_n, psi_n, cholesky(psi_n))

    def log_marginal(self, stats: SuffStats) -> torch.Tensor:
        """log p(X_k) = -n d/2 log pi + log G_d(nu_n/2) - log G_d(nu/2)
        + nu/2 log|Psi| - nu_n/2 log|Psi_n| + d/2 (log kappa - log kappa_n)
        (Murphy 2007, eq. 266)."""
        d = self.dim
        post = self.posterior(stats)
        return (
            (-0.5 * d * log_pi()) * stats.n + multigammaln(0.5 * post.nu, d)
            - 0.5 * post.nu * logdet_from_chol(post.chol) - (0.5 * d) * torch.log(post.kappa)
            + self._log_marginal_prior
        )

    def log_predictive(self, X, stats: SuffStats) -> torch.Tensor:
        """Multivariate Student-t: df = nu_n - d + 1, location mu_n,
        scale Psi_n (kappa_n + 1) / (kappa_n df) (Murphy 2007, eq. 258)."""
        return niw_predictive(self.posterior(stats), self._as_data(X))

    def map_estimate(self, stats: SuffStats) -> GaussianParams:
        """Joint NIW mode: mu = mu_n, Sigma = Psi_n / (nu_n + d + 2)."""
        post = self.posterior(stats)
        return GaussianParams(post.mu, post.psi / (post.nu + self.dim + 2)[:, None, None])

    def posterior_mean(self, stats: SuffStats) -> GaussianParams:
        post = self.posterior(stats)
        return GaussianParams(post.mu, post.psi / (post.nu - self.dim - 1)[:, None, None])

    def sample_posterior(self, stats: SuffStats) -> GaussianParams:
        """Sigma ~ IW(nu_n, Psi_n), mu | Sigma ~ N(mu_n, Sigma / kappa_n)."""
        post = self.posterior(stats)
        with torch.no_grad():
            root = inverse_wishart_root(post.nu, post.chol)
            cov = root @ root.transpose(-1, -2)
            cov = 0.5 * (cov + cov.transpose(-1, -2))
            eps = torch.randn_like(post.mu)
            mean = post.mu + (root @ eps[..., None])[..., 0] / post.kappa.sqrt()[:, None]
        return GaussianParams(mean, cov)

    def _expected_logdet(self, post: NIWPosterior) -> torch.Tensor:
        d = self.dim
        return logdet_from_chol(post.chol) - multidigamma(0.5 * post.nu, d) - d * math.log(2.0)

    def expected_log_likelihood(self, X, stats: SuffStats) -> torch.Tensor:
        """E[log N(x | mu, Sigma)] = -d/2 log 2pi - E[log|Sigma|]/2
        - (nu_n (x - mu_n)^T Psi_n^{-1} (x - mu_n) + d / kappa_n) / 2."""
        X = self._as_data(X)
        post = self.posterior(stats)
        maha = mahalanobis_points(post.chol, X, post.mu)
        return (-0.5 * self.dim * log_2pi() - 0.5 * self._expected_logdet(post)
                - 0.5 * (post.nu * maha + self.dim / post.kappa))

    def kl_to_prior(self, stats: SuffStats) -> torch.Tensor:
        """KL(NIW_n || NIW_0): the inverse-Wishart KL plus the expected KL of the
        conditional Gaussians of the mean."""
        d = self.dim
        post = self.posterior(stats)
        nu0, nu1 = self.nu, post.nu
        e_logdet = self._expected_logdet(post)
        # tr(Psi_0 Psi_1^{-1}) = ||L_1^{-1} C_0||_F^2
        sol = torch.linalg.solve_triangular(post.chol, self.psi_chol.expand_as(post.chol),
                                            upper=False)
        trace = sol.pow(2).sum((-2, -1))
        kl_iw = (0.5 * nu1 * logdet_from_chol(post.chol) - 0.5 * nu0 * self._psi_logdet
                 - 0.5 * (nu1 - nu0) * d * math.log(2.0)
                 - multigammaln(0.5 * nu1, d) + multigammaln(0.5 * nu0, d)
                 - 0.5 * (nu1 - nu0) * e_logdet - 0.5 * nu1 * (d - trace))
        diff = (post.mu - self.mu0)[:, None, :]
        maha = mahalanobis_sq(post.chol, diff.transpose(0, 1)).reshape(-1)
        ratio = self.kappa / post.kappa
        kl_mean = 0.5 * (d * ratio - d - d * torch.log(ratio) + self.kappa * nu1 * maha)
        return kl_iw + kl_mean

    def log_likelihood(self, X, params: GaussianParams) -> torch.Tensor:
        X = self._as_data(X)
        chol = cholesky(as_tensor(params.cov, device=X.device))
        mean = as_tensor(params.mean, device=X.device)
        maha = mahalanobis_points(chol, X, mean)         # a fresh (N, K) table: in place
        return maha.add_(self.dim * log_2pi() + logdet_from_chol(chol)).mul_(-0.5)

    def log_likelihood_at(self, X, params: GaussianParams, comps: torch.Tensor) -> torch.Tensor:
        """log N(x_i | mu_c, Sigma_c) for c = comps[i, j] only, (N, m).  With
        W_c = L_c^{-1}, the Mahalanobis term is |W_c x_i - W_c mu_c|^2.

        Three evaluations of the same quantity, by cost: for d >= 8 the (row, j)
        pairs sorted by component, one GEMM per component against its rows
        (N m d^2 multiply-adds in BLAS, against N K d^2 for the full table: 4x faster
        than the table at N=20,000, d=128, K=20, m=2, and 8x faster than per-row
        gathers at N=100,000, d=32, K=40); below d = 8, the full (N, K) table when
        3 K <= max(m d, 18 m) (its two GEMMs beat per-row gathers up to K = 6 m),
        else per row from the gathered (m, d, d) factors."""
        X = self._as_data(X)
        comps = torch.as_tensor(comps, dtype=torch.long, device=X.device)
        k, (n, m), d = int(params.mean.shape[0]), comps.shape, self.dim
        if d < 8 and 3 * k <= max(m * d, 18 * m):
            return super().log_likelihood_at(X, params, comps)
        chol = cholesky(as_tensor(params.cov, device=X.device))
        mean = as_tensor(params.mean, device=X.device)
        eye = torch.eye(d, dtype=chol.dtype, device=chol.device).expand_as(chol)
        w = torch.linalg.solve_triangular(chol, eye, upper=False)           # (K, d, d)
        wm = (w @ mean[..., None])[..., 0]                                   # (K, d)
        const = -0.5 * (d * log_2pi() + logdet_from_chol(chol))
        if d >= 8:
            maha = grouped_mahalanobis(X, w, wm, comps)
        else:
            ones = torch.ones(d, dtype=X.dtype, device=X.device)
            maha = torch.empty((n, m), dtype=X.dtype, device=X.device)
            step = max(1, (1 << 18) // (m * d * d))
            for start in range(0, n, step):
                c = comps[start:start + step]
                y = (w[c] * X[start:start + step, None, None, :]) @ ones - wm[c]  # (rows, m, d)
                maha[start:start + step] = y.square_() @ ones
        return const[comps] - 0.5 * maha

    # ---- Pyro ---------------------------------------------------------------
    def prior_distribution(self) -> InverseWishart:
        return InverseWishart(self.nu, self.psi)

    def pyro_sample_params(self) -> GaussianParams:
        cov = pyro.sample("cov", InverseWishart(self.nu, self.psi))
        loc = pyro.sample("loc", pdist.MultivariateNormal(
            self.mu0, scale_tril=cholesky(cov / self.kappa)))
        return GaussianParams(loc, cov)

    def params_from_sites(self, values):
        return GaussianParams(values["loc"], values["cov"])

    def sites_from_params(self, params):
        return {"loc": params.mean, "cov": params.cov}

    def likelihood(self, params: GaussianParams) -> pdist.MultivariateNormal:
        return pdist.MultivariateNormal(params.mean, scale_tril=cholesky(params.cov))

    def __repr__(self) -> str:
        return (f"GaussianNIW(dim={self.dim}, kappa={float(self.kappa):.4g}, "
                f"nu={float(self.nu):.4g})")

