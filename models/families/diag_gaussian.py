"""Diagonal-covariance Gaussian components with a Normal-Gamma prior per dimension.

For each dimension j independently: precision lambda_j ~ Gamma(a_j, b_j) (rate
b_j), mean mu_j | lambda_j ~ N(mu0_j, 1 / (kappa_j lambda_j)).  Posterior
(Murphy 2007, eq. 85-89), per dimension:

    kappa_n = kappa + n,  mu_n = (kappa mu0 + s) / kappa_n,  a_n = a + n / 2,
    b_n = b + (S + kappa mu0^2 - kappa_n mu_n^2) / 2,

with s = sum x_ij and S = sum x_ij^2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as pdist
import torch

from bnpdeep.linalg import as_tensor, log_2pi

from .base import ConjugateFamily, SuffStats, volume_scale


class DiagGaussianParams(NamedTuple):
    """Point parameters: means (K, d) and per-dimension variances (K, d)."""

    mean: torch.Tensor
    var: torch.Tensor


class NormalGammaPosterior(NamedTuple):
    mu: torch.Tensor      # (K, d)
    kappa: torch.Tensor   # (K, d)
    a: torch.Tensor       # (K, d)
    b: torch.Tensor       # (K, d)


class DiagonalGaussian(ConjugateFamily):
    """Gaussian likelihood with diagonal covariance, Normal-Gamma prior NG(mu0, kappa, a, b).

    ``kappa``, ``a`` and ``b`` may be scalars or length-d vectors.
    """

    param_sites = ("precision", "loc")

    def __init__(self, mu0, kappa, a, b, device=None):
        self.mu0 = as_tensor(mu0, device=device).reshape(-1)
        self._device = self.mu0.device
        d = self.mu0.shape[0]
        self.dim = d
        self.kappa = as_tensor(kappa, device=self._device).expand(d).clone()
        self.a = as_tensor(a, device=self._device).expand(d).clone()
        self.b = as_tensor(b, device=self._device).expand(d).clone()
        for name, v in (("kappa", self.kappa), ("a", self.a), ("b", self.b)):
            if bool((v <= 0).any()):
                raise ValueError(f"{name} must be positive, got {v.tolist()}")

    @classmethod
    def weak(cls, X, kappa: float = 0.01, a: float = 1.5, scale: float | None = None,
             expected_clusters: float = 10.0, device=None) -> "DiagonalGaussian":
        """Weak data-driven prior: mu0 = mean(X), a = 1.5, b = scale * var(X) / 2, small
        kappa.  In one dimension this is GaussianNIW.weak's prior: IW(3, psi) on a
        variance is InvGamma(3/2, psi/2).  ``scale=None`` takes the volume rule of
        :func:`~bnpdeep.models.families.base.volume_scale` on the diagonal covariance
        (independent dimensions: the effective dimension is d).  Zero-variance columns
        get a variance floor."""
        X = as_tensor(X, device=device)
        var = X.var(0) if X.shape[0] > 1 else torch.ones(X.shape[1], dtype=X.dtype)
        floor = 1e-6 * (float(var.mean()) if float(var.mean()) > 0 else 1.0)
        var = torch.where(var > 0, var, floor)
        if scale is None:
            scale = volume_scale(torch.diag(var), expected_clusters)
        return cls(X.mean(0), kappa, a, 0.5 * scale * var, device=device)

    def to(self, device) -> "DiagonalGaussian":
        return DiagonalGaussian(self.mu0, self.kappa, self.a, self.b, device=device)

    def standardized(self, shift, scale) -> "DiagonalGaussian":
        """For y_j = (x_j - shift_j) / scale_j: precision_y = scale^2 precision ~
        Gamma(a, b / scale^2) and mu_y | precision_y ~ N((mu0 - shift) / scale,
        1 / (kappa precision_y)), per dimension."""
        shift, scale = self._affine_args(shift, scale)
        return DiagonalGaussian((self.mu0 - shift) / scale, self.kappa, self.a,
                                self.b / scale.square(), device=self._device)

    def params_from_standardized(self, params: DiagGaussianParams, shift, scale
                                 ) -> DiagGaussianParams:
        shift, scale = self._affine_args(shift, scale)
        return DiagGaussianParams(params.mean * scale + shift, params.var * scale.square())

    def _row_stats(self, X):
        return {"n": torch.ones(X.shape[0], dtype=X.dtype, device=X.device),
                "sx": X, "sxx": X * X}

    def posterior(self, stats: SuffStats) -> NormalGammaPosterior:
        n = stats.n[:, None]
        kappa_n = self.kappa + n
        mu_n = (self.kappa * self.mu0 + stats.sx) / kappa_n
        a_n = self.a + 0.5 * n
        b_n = self.b + 0.5 * (stats.sxx + self.kappa * self.mu0**2 - kappa_n * mu_n**2)
        # round-off can push b_n below b when a cluster holds one repeated value
        b_n = torch.maximum(b_n, self.b.expand_as(b_n))
        return NormalGammaPosterior(mu_n, kappa_n, a_n, b_n)

    def log_marginal(self, stats: SuffStats) -> torch.Tensor:
        """Sum over dimensions of lgamma(a_n) - lgamma(a) + a log b - a_n log b_n
        + (log kappa - log kappa_n)/2 - n/2 log 2pi (Murphy 2007, eq. 95)."""
        p = self.posterior(stats)
        per_dim = (torch.lgamma(p.a) - torch.lgamma(self.a) + self.a * torch.log(self.b)
                   - p.a * torch.log(p.b) + 0.5 * (torch.log(self.kappa) - torch.log(p.kappa)))
        return per_dim.sum(-1) - 0.5 * stats.n * self.dim * log_2pi()

    def log_predictive(self, X, stats: SuffStats) -> torch.Tensor:
        """Product over dimensions of Student-t(2 a_n, mu_n, b_n (kappa_n + 1) / (a_n kappa_n))."""
        X = self._as_data(X)
        p = self.posterior(stats)
        df = 2 * p.a
        scale2 = p.b * (p.kappa + 1) / (p.a * p.kappa)
        z2 = (X[:, None, :] - p.mu[None]) ** 2 / scale2[None]
        per_dim = (torch.lgamma(0.5 * (df + 1)) - torch.lgamma(0.5 * df)
                   - 0.5 * torch.log(df * math.pi * scale2)
                   - 0.5 * (df + 1) * torch.log1p(z2 / df))
        return per_dim.sum(-1)

    def map_estimate(self, stats: SuffStats) -> DiagGaussianParams:
        """Joint mode in (mu, sigma^2): mu = mu_n, sigma^2 = b_n / (a_n + 3/2)."""
        p = self.posterior(stats)
        return DiagGaussianParams(p.mu, p.b / (p.a + 1.5))

    def posterior_mean(self, stats: SuffStats) -> DiagGaussianParams:
        p = self.posterior(stats)
        return DiagGaussianParams(p.mu, p.b / (p.a - 1).clamp_min(1e-12))

    def sample_posterior(self, stats: SuffStats) -> DiagGaussianParams:
        p = self.posterior(stats)
        prec = (torch._standard_gamma(p.a.contiguous()) / p.b).clamp_min(1e-300)
        mean = p.mu + torch.randn_like(p.mu) / torch.sqrt(p.kappa * prec)
        return DiagGaussianParams(mean, 1.0 / prec)

    def expected_log_likelihood(self, X, stats: SuffStats) -> torch.Tensor:
        """Sum over dimensions of (psi(a_n) - log b_n)/2 - log(2pi)/2
        - (a_n / b_n (x - mu_n)^2 + 1 / kappa_n) / 2."""
        X = self._as_data(X)
        p = self.posterior(stats)
        sq = (X[:, None, :] - p.mu[None]) ** 2
        per_dim = (0.5 * (torch.digamma(p.a) - torch.log(p.b)) - 0.5 * log_2pi()
                   - 0.5 * (p.a / p.b * sq + 1.0 / p.kappa))
        return per_dim.sum(-1)

    def kl_to_prior(self, stats: SuffStats) -> torch.Tensor:
        """KL of the Gamma precisions plus the expected KL of the conditional means."""
        p = self.posterior(stats)
        a0, b0 = self.a, self.b
        kl_gamma = ((p.a - a0) * torch.digamma(p.a) - torch.lgamma(p.a) + torch.lgamma(a0)
                    + a0 * (torch.log(p.b) - torch.log(b0)) + p.a * (b0 - p.b) / p.b)
        ratio = self.kappa / p.kappa
        kl_mean = 0.5 * (ratio - 1 - torch.log(ratio)
                         + self.kappa * p.a / p.b * (p.mu - self.mu0) ** 2)
        return (kl_gamma + kl_mean).sum(-1)

    def log_likelihood(self, X, params: DiagGaussianParams) -> torch.Tensor:
        X = self._as_data(X)
        mean, var = as_tensor(params.mean), as_tensor(params.var)
        sq = (X[:, None, :] - mean[None]) ** 2 / var[None]
        return -0.5 * (self.dim * log_2pi() + torch.log(var).sum(-1)[None] + sq.sum(-1))

    def log_likelihood_at(self, X, params: DiagGaussianParams, comps: torch.Tensor
                          ) -> torch.Tensor:
        """log p(x_i | theta_c) for c = comps[i, j] only, (N, m): per row, m d terms."""
        X = self._as_data(X)
        comps = torch.as_tensor(comps, dtype=torch.long, device=X.device)
        mean, var = as_tensor(params.mean), as_tensor(params.var)
        ones = torch.ones(self.dim, dtype=X.dtype, device=X.device)
        sq = (X[:, None, :] - mean[comps]).square_().div_(var[comps]) @ ones
        return -0.5 * (self.dim * log_2pi() + torch.log(var) @ ones)[comps] - 0.5 * sq

    def pyro_sample_params(self) -> DiagGaussianParams:
        prec = pyro.sample("precision", pdist.Gamma(self.a, self.b).to_event(1))
        loc = pyro.sample("loc", pdist.Normal(self.mu0, torch.rsqrt(self.kappa * prec))
                          .to_event(1))
        return DiagGaussianParams(loc, 1.0 / prec)

    def params_from_sites(self, values):
        return DiagGaussianParams(values["loc"], 1.0 / values["precision"])

    def sites_from_params(self, params):
        return {"loc": params.mean, "precision": 1.0 / params.var}

    def likelihood(self, params: DiagGaussianParams):
        return pdist.Normal(params.mean, params.var.sqrt()).to_event(1)
