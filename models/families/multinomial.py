"""Multinomial count vectors with a Dirichlet prior on the category probabilities.

Each row x_i is a vector of V nonnegative integer counts with total n_i;
p ~ Dirichlet(alpha), x_i | p ~ Multinomial(n_i, p).  With cluster totals
c = sum_i x_i the posterior is Dirichlet(alpha + c) and the marginal likelihood
is the Dirichlet-multinomial

    log p(X) = sum_i log(n_i! / prod_v x_iv!) + log B(alpha + c) - log B(alpha),

with B the multivariate Beta function.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import pyro.distributions as pdist
import torch

from bnpdeep.linalg import as_tensor

from ..distributions import MultinomialCounts
from .base import ConjugateFamily, SuffStats


class MultinomialParams(NamedTuple):
    probs: torch.Tensor   # (K, V)


def _log_beta(alpha: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))


class Multinomial(ConjugateFamily):
    """Multinomial likelihood with a Dirichlet(concentration) prior."""

    param_sites = ("probs",)

    def __init__(self, concentration, sample_total_count: int = 20, device=None):
        self.sample_total_count = int(sample_total_count)
        self.concentration = as_tensor(concentration, device=device).reshape(-1)
        self._device = self.concentration.device
        self.dim = self.concentration.shape[0]
        if bool((self.concentration <= 0).any()):
            raise ValueError("concentration must be positive")

    @classmethod
    def weak(cls, X, strength: float = 1.0, device=None) -> "Multinomial":
        """Dirichlet centred on the smoothed overall category frequencies, with total
        concentration ``strength * V`` (one pseudo-count per category on average)."""
        X = as_tensor(X, device=device)
        v = X.shape[1]
        freq = (X.sum(0) + 1.0) / (X.sum() + v)
        return cls(strength * v * freq, device=device)

    def to(self, device) -> "Multinomial":
        return Multinomial(self.concentration, self.sample_total_count, device=device)

    def validate(self, X, name: str = "X", min_rows: int = 1, warn: bool = True):
        from bnpdeep.data import DataError, check_counts

        X = check_counts(X, name=name, min_rows=min_rows)
        if X.shape[1] != self.dim:
            raise DataError(f"{name} has {X.shape[1]} categories but the Multinomial prior "
                            f"has {self.dim}")
        return X

    @staticmethod
    def _log_coef(X: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(X.sum(-1) + 1) - torch.lgamma(X + 1).sum(-1)

    def _row_stats(self, X):
        return {"n": torch.ones(X.shape[0], dtype=X.dtype, device=X.device),
                "counts": X, "log_coef": self._log_coef(X)}

    def posterior(self, stats: SuffStats) -> torch.Tensor:
        """Dirichlet posterior concentrations alpha + c, (K, V)."""
        return self.concentration + stats.counts

    def log_marginal(self, stats: SuffStats) -> torch.Tensor:
        return stats.log_coef + _log_beta(self.posterior(stats)) - _log_beta(self.concentration)

    def log_predictive(self, X, stats: SuffStats) -> torch.Tensor:
        """Dirichlet-multinomial of one row given the cluster's posterior."""
        X = self._as_data(X)
        alpha = self.posterior(stats)                          # (K, V)
        joint = torch.lgamma(alpha[None] + X[:, None, :]).sum(-1)   # (N, K)
        total = torch.lgamma(alpha.sum(-1)[None] + X.sum(-1)[:, None])
        return (self._log_coef(X)[:, None] + joint - torch.lgamma(alpha).sum(-1)[None]
                + torch.lgamma(alpha.sum(-1))[None] - total)

    def map_estimate(self, stats: SuffStats) -> MultinomialParams:
        """Dirichlet mode (alpha_n - 1) / (A_n - V) for clusters whose posterior
        concentrations all exceed 1; the posterior mean for the others (no interior mode)."""
        alpha = self.posterior(stats)
        mean = alpha / alpha.sum(-1, keepdim=True)
        mode = (alpha - 1) / (alpha.sum(-1, keepdim=True) - self.dim)
        has_mode = (alpha > 1).all(-1, keepdim=True)
        return MultinomialParams(torch.where(has_mode, mode, mean))

    def posterior_mean(self, stats: SuffStats) -> MultinomialParams:
        alpha = self.posterior(stats)
        return MultinomialParams(alpha / alpha.sum(-1, keepdim=True))

    def sample_posterior(self, stats: SuffStats) -> MultinomialParams:
        probs = torch.distributions.Dirichlet(self.posterior(stats)).sample()
        return MultinomialParams(probs.clamp_min(torch.finfo(probs.dtype).tiny))

    def expected_log_likelihood(self, X, stats: SuffStats) -> torch.Tensor:
        """log coef + sum_v x_v (psi(alpha_nv) - psi(A_n))."""
        X = self._as_data(X)
        alpha = self.posterior(stats)
        elog = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
        return self._log_coef(X)[:, None] + X @ elog.T

    def kl_to_prior(self, stats: SuffStats) -> torch.Tensor:
        alpha = self.posterior(stats)
        return torch.distributions.kl_divergence(
            torch.distributions.Dirichlet(alpha),
            torch.distributions.Dirichlet(self.concentration.expand_as(alpha)))

    def log_likelihood(self, X, params: MultinomialParams) -> torch.Tensor:
        X = self._as_data(X)
        probs = as_tensor(params.probs, device=X.device)
        return self._log_coef(X)[:, None] + torch.xlogy(X[:, None, :], probs[None]).sum(-1)

    def pyro_sample_params(self) -> MultinomialParams:
        return MultinomialParams(pyro.sample("probs", pdist.Dirichlet(self.concentration)))

    def params_from_sites(self, values):
        return MultinomialParams(values["probs"])

    def sites_from_params(self, params):
        return {"probs": params.probs}

    def likelihood(self, params: MultinomialParams):
        """Multinomial rows; ``sample_total_count`` sets the total when simulating."""
        return MultinomialCounts(params.probs, total_count=self.sample_total_count)
