"""Pyro distributions the conjugate families need.

* :class:`InverseWishart` -- IW(nu, Psi) over d x d covariance matrices.
* :class:`NormalInverseWishart` -- the joint NIW(mu0, kappa, nu, Psi) over
  (mu, Sigma): Sigma ~ IW(nu, Psi), mu | Sigma ~ N(mu0, Sigma / kappa).  Its value
  packs mu and Sigma into one (..., d + 1, d) tensor (row 0 is mu, rows 1..d are
  Sigma); :meth:`NormalInverseWishart.pack` and ``unpack`` convert.
* :class:`MultinomialCounts` -- a multinomial whose total count is read off each
  row, so that rows with different totals share one distribution.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from bnpdeep.linalg import cholesky, logdet_from_chol, multigammaln


class _CovarianceMatrix(type(constraints.positive_definite)):
    """Positive-definite matrices, with a registered bijection so that autoguides
    (which need ``biject_to``) can place a covariance site."""


covariance_matrix = _CovarianceMatrix()


class UnconstrainedToCovariance(torch.distributions.Transform):
    """Bijection from R^{d(d+1)/2} to d x d positive-definite matrices.

    The vector fills, row by row, a unit lower-triangular U (below the diagonal) and
    log-scales u_jj (on it): L = U diag(exp(u_jj)) and S = L L^T, the LDL^T
    factorisation S = U D^2 U^T.  An off-diagonal coordinate is a regression
    coefficient, free of column j's scale, so a fixed step in u changes S relatively
    even where S is nearly singular (a step on L_ij itself would swamp a small L_jj).
    log|dS/du| = d log 2 + sum_j 2 (d - j + 1) u_jj (j = 1..d): u -> L has Jacobian
    prod_j exp(u_jj)^(d - j + 1) (column j of L is column j of U times exp(u_jj)), and
    L -> L L^T has 2^d prod_j L_jj^(d - j + 1).
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = covariance_matrix
    bijective = True

    def __eq__(self, other):
        return isinstance(other, UnconstrainedToCovariance)

    @staticmethod
    def _dim(m: int) -> int:
        d = int((math.isqrt(8 * m + 1) - 1) // 2)
        if d * (d + 1) // 2 != m:
            raise ValueError(f"{m} is not a triangular number")
        return d

    def _call(self, u):
        d = self._dim(u.shape[-1])
        rows, cols = torch.tril_indices(d, d, device=u.device)
        low = u.new_zeros(u.shape[:-1] + (d, d))
        low[..., rows, cols] = u
        scale = low.diagonal(dim1=-2, dim2=-1).exp()
        low = (low.tril(-1) + torch.eye(d, dtype=u.dtype, device=u.device)) * scale[..., None, :]
        return low @ low.transpose(-1, -2)

    def _inverse(self, s):
        d = s.shape[-1]
        low = cholesky(s)
        diag = low.diagonal(dim1=-2, dim2=-1)
        low = (low / diag[..., None, :]).tril(-1) + torch.diag_embed(diag.log())
        rows, cols = torch.tril_indices(d, d, device=s.device)
        return low[..., rows, cols]

    def log_abs_det_jacobian(self, u, s):
        d = s.shape[-1]
        rows, cols = torch.tril_indices(d, d, device=u.device)
        log_diag = u[..., rows == cols]
        power = 2.0 * torch.arange(d, 0, -1, dtype=u.dtype, device=u.device)
        return d * math.log(2.0) + (power * log_diag).sum(-1)

    def forward_shape(self, shape):
        d = self._dim(shape[-1])
        return torch.Size(shape[:-1]) + (d, d)

    def inverse_shape(self, shape):
        d = shape[-1]
        return torch.Size(shape[:-2]) + (d * (d + 1) // 2,)


@torch.distributions.biject_to.register(_CovarianceMatrix)
@torch.distributions.transform_to.register(_CovarianceMatrix)
def _covariance_bijection(constraint):
    return UnconstrainedToCovariance()


def _bartlett_factor(df: torch.Tensor, d: int, batch_shape, dtype, device) -> torch.Tensor:
    """Lower-triangular A with A A^T ~ Wishart(df, I) (Bartlett decomposition)."""
    shape = tuple(batch_shape) + (d, d)
    a = torch.randn(shape, dtype=dtype, device=device).tril(-1)
    dof = df[..., None] - torch.arange(d, dtype=dtype, device=device)
    # chi-square(k) = 2 Gamma(k / 2, 1)
    chi2 = 2.0 * torch._standard_gamma(0.5 * dof.expand(tuple(batch_shape) + (d,)).contiguous())
    return a + torch.diag_embed(chi2.sqrt())


def inverse_wishart_root(df: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """F with F F^T ~ IW(df, C C^T), batched over leading dimensions of ``scale_tril``.

    F = C A^{-T} with Bartlett's A (one triangular solve).  F is a square root of
    the draw, not its Cholesky factor; F eps with eps ~ N(0, I) has covariance
    F F^T, which is all a Gaussian draw needs.  The fast path the samplers use:
    no distribution object, no broadcasting checks.
    """
    d = scale_tril.shape[-1]
    shape = scale_tril.shape[:-2]
    a = _bartlett_factor(df.expand(shape), d, shape, scale_tril.dtype, scale_tril.device)
    f = torch.linalg.solve_triangular(a, scale_tril.transpose(-1, -2), upper=False)
    return f.transpose(-1, -2)


class InverseWishart(TorchDistribution):
    """Inverse-Wishart IW(df, scale) with density

    p(S) = |Psi|^{nu/2} / (2^{nu d/2} Gamma_d(nu/2)) |S|^{-(nu+d+1)/2} exp(-tr(Psi S^{-1})/2).

    Sampling: if W ~ Wishart(nu, Psi^{-1}) then W^{-1} ~ IW(nu, Psi).  With
    Psi = C C^T and Bartlett's A, S = (C A^{-T})(C A^{-T})^T -- one triangular
    solve, no explicit inverse.
    """

    arg_constraints = {"df": constraints.positive, "scale": constraints.positive_definite}
    support = covariance_matrix
    has_rsample = False

    def __init__(self, df, scale, validate_args=None):
        scale = torch.as_tensor(scale)
        df = torch.as_tensor(df, dtype=scale.dtype, device=scale.device)
        d = scale.shape[-1]
        batch_shape = torch.broadcast_shapes(df.shape, scale.shape[:-2])
        self.df = df.expand(batch_shape)
        self.scale = scale.expand(batch_shape + (d, d))
        self._scale_tril = cholesky(self.scale)
        super().__init__(batch_shape, (d, d), validate_args=validate_args)

    @property
    def mean(self):
        d = self.event_shape[-1]
        return self.scale / (self.df - d - 1)[..., None, None]

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return InverseWishart(self.df.expand(batch_shape),
                              self.scale.expand(batch_shape + self.event_shape))

    def sample(self, sample_shape=torch.Size()):
        d = self.event_shape[-1]
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            f = inverse_wishart_root(self.df.expand(shape),
                                     self._scale_tril.expand(shape + (d, d)))
            s = f @ f.transpose(-1, -2)
            return 0.5 * (s + s.transpose(-1, -2))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        d = self.event_shape[-1]
        nu = self.df
        chol_s = cholesky(value)
        # tr(Psi S^{-1}) = ||L_S^{-1} C||_F^2
        sol = torch.linalg.solve_triangular(
            chol_s, self._scale_tril.expand(chol_s.shape), upper=False
        )
        trace = sol.pow(2).sum((-2, -1))
        return (
            0.5 * nu * logdet_from_chol(self._scale_tril)
            - 0.5 * nu * d * math.log(2.0)
            - multigammaln(0.5 * nu, d)
            - 0.5 * (nu + d + 1) * logdet_from_chol(chol_s)
            - 0.5 * trace
        )


class NormalInverseWishart(TorchDistribution):
    """Normal-inverse-Wishart NIW(loc, kappa, df, scale) over (mu, Sigma).

    Sigma ~ IW(df, scale); mu | Sigma ~ N(loc, Sigma / kappa).  Values are
    packed as (..., d + 1, d): row 0 is mu and rows 1..d are Sigma.
    """

    arg_constraints = {
        "loc": constraints.real_vector,
        "kappa": constraints.positive,
        "df": constraints.positive,
        "scale": constraints.positive_definite,
    }
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(self, loc, kappa, df, scale, validate_args=None):
        scale = torch.as_tensor(scale)
        loc = torch.as_tensor(loc, dtype=scale.dtype, device=scale.device)
        kappa = torch.as_tensor(kappa, dtype=scale.dtype, device=scale.device)
        df = torch.as_tensor(df, dtype=scale.dtype, device=scale.device)
        d = scale.shape[-1]
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], kappa.shape, df.shape,
                                             scale.shape[:-2])
        self.loc = loc.expand(batch_shape + (d,))
        self.kappa = kappa.expand(batch_shape)
        self.df = df.expand(batch_shape)
        self.scale = scale.expand(batch_shape + (d, d))
        self._iw = InverseWishart(self.df, self.scale)
        super().__init__(batch_shape, (d + 1, d), validate_args=validate_args)

    @staticmethod
    def pack(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.cat([mu.unsqueeze(-2), sigma], dim=-2)

    @staticmethod
    def unpack(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return value[..., 0, :], value[..., 1:, :]

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        d = self.loc.shape[-1]
        return NormalInverseWishart(self.loc.expand(batch_shape + (d,)),
                                    self.kappa.expand(batch_shape), self.df.expand(batch_shape),
                                    self.scale.expand(batch_shape + (d, d)))

    def _conditional_mean(self, sigma):
        cov = sigma / self.kappa[..., None, None]
        return torch.distributions.MultivariateNormal(self.loc, scale_tril=cholesky(cov))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            sigma = self._iw.sample(sample_shape)
            mu = self._conditional_mean(sigma).sample()
            return self.pack(mu, sigma)

    def log_prob(self, value):
        mu, sigma = self.unpack(value)
        return self._iw.log_prob(sigma) + self._conditional_mean(sigma).log_prob(mu)


class MultinomialCounts(TorchDistribution):
    """Multinomial over count vectors whose total is taken from each value.

    log p(x | p) = log (n! / prod_v x_v!) + sum_v x_v log p_v with n = sum_v x_v,
    so rows with different totals share one distribution.  ``total_count`` is
    only needed to sample.
    """

    arg_constraints = {"probs": constraints.simplex}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, probs, total_count=1, validate_args=None):
        self.probs = torch.as_tensor(probs)
        self.total_count = int(total_count)
        super().__init__(self.probs.shape[:-1], self.probs.shape[-1:],
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return MultinomialCounts(self.probs.expand(batch_shape + self.event_shape),
                                 self.total_count)

    @property
    def mean(self):
        return self.total_count * self.probs

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return torch.distributions.Multinomial(self.total_count, probs=self.probs).sample(
                sample_shape)

    def log_prob(self, value):
        n = value.sum(-1)
        log_coef = torch.lgamma(n + 1) - torch.lgamma(value + 1).sum(-1)
        # xlogy gives 0 log 0 = 0 for categories with zero probability and zero count
        return log_coef + torch.xlogy(value, self.probs).sum(-1)
