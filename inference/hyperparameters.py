"""Exact updates of hyperparameters given the partition, for every sampler.

With the component parameters and weights integrated out, a hyperparameter h of
the family has the conditional

    p(h | z, X, rest) proportional to p(h) prod_k p(X_k | h),

the collapsed marginal likelihood of every cluster at h (Rasmussen 2000, Sec. 3,
samples the same conditionals with instantiated parameters).  Each hyperparameter
is updated in turn by a kernel that leaves its conditional invariant:

* a grid prior (``pyro.distributions.Empirical``): the conditional is enumerated
  over the grid and drawn exactly (a Gibbs step);
* a continuous prior on the positive reals: slice sampling (Neal 2003, Fig. 3 and 5:
  stepping out, then shrinkage) of u = log h, whose density is the conditional
  times the Jacobian h;
* a Gaussian prior (``mu0``): elliptical slice sampling (Murray, Adams & MacKay
  2010, Fig. 2), exact for a Gaussian prior times any likelihood.

alpha of a DP given K under a Gamma prior is Escobar & West's (1995, eq. 13)
auxiliary-variable draw; under a grid it is enumerated with the Ewens EPPF.

The variational methods take point estimates instead (type-II maximum a
posteriori, as in variational EM): :meth:`HyperparameterStep.maximize` sets each
hyperparameter in turn to the maximiser of log p(h) + sum_k log Z(S_k; h), the
same conditional evaluated at soft statistics S_k.  Where the objective is the
ELBO's only dependence on h (memoized VB: L = sum_k log Z(S_k) + terms free of
h), each such update raises L + log p(h) with the responsibilities fixed.

Random numbers come from torch's generator (the chain's seed).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar

from bnpdeep.linalg import DTYPE

from ..models import DirichletProcess
from ..models.hyperpriors import grid_values, is_grid, log_prob


def slice_log_scale(log_density, x0: float, width: float = 1.0, max_steps: int = 32
                    ) -> float:
    """One slice-sampling update of a positive scalar x with unnormalised log density
    ``log_density(x)``, run on u = log x (target log_density(e^u) + u): a level
    below the current density, an interval of ``width`` placed at random around u
    and stepped out (at most ``max_steps`` steps a side), then shrunk towards u until
    a point lies above the level (Neal 2003, Fig. 3 and 5)."""
    def target(u):
        return log_density(math.exp(u)) + u

    u0 = math.log(x0)
    level = target(u0) + math.log(float(torch.rand((), dtype=DTYPE)) or 1e-300)
    left = u0 - width * float(torch.rand((), dtype=DTYPE))
    right = left + width
    j = int(float(torch.rand((), dtype=DTYPE)) * max_steps)
    k = max_steps - 1 - j
    while j > 0 and target(left) > level:
        left -= width
        j -= 1
    while k > 0 and target(right) > level:
        right += width
        k -= 1
    while True:
        u = left + (right - left) * float(torch.rand((), dtype=DTYPE))
        if target(u) > level:
            return math.exp(u)
        if u < u0:
            left = u
        else:
            right = u


def elliptical_slice(log_lik, x0: torch.Tensor, mean: torch.Tensor, scale_tril: torch.Tensor
                     ) -> torch.Tensor:
    """One elliptical slice-sampling update of x with prior N(mean, L L^T) and
    log-likelihood ``log_lik(x)`` (Murray, Adams & MacKay 2010, Fig. 2)."""
    nu = scale_tril @ torch.randn(mean.shape[0], dtype=mean.dtype)
    level = log_lik(x0) + math.log(float(torch.rand((), dtype=DTYPE)) or 1e-300)
    theta = 2 * math.pi * float(torch.rand((), dtype=DTYPE))
    low, high = theta - 2 * math.pi, theta
    f = x0 - mean
    while True:
        x = mean + f * math.cos(theta) + nu * math.sin(theta)
        if log_lik(x) > level:
            return x
        if theta < 0:
            low = theta
        else:
            high = theta
        theta = low + (high - low) * float(torch.rand((), dtype=DTYPE))


def draw_grid(log_conditional, prior):
    """An exact draw from a conditional over a grid prior's values."""
    values, logw = grid_values(prior)
    logits = torch.tensor([float(logw[i]) + log_conditional(values[i])
                           for i in range(values.shape[0])], dtype=DTYPE)
    i = int(torch.multinomial(torch.softmax(logits, 0), 1))
    v = values[i]
    return float(v) if v.numel() == 1 else v.clone()


def escobar_west(alpha: float, k: int, n: int, shape: float, rate: float) -> float:
    """alpha | K, N under a Gamma(shape, rate) prior (Escobar & West 1995, eq. 13):
    eta ~ Beta(alpha + 1, N), then alpha from a two-component Gamma mixture."""
    eta = float(torch.distributions.Beta(alpha + 1.0, float(n)).sample())
    r = rate - math.log(eta)
    odds = (shape + k - 1) / (n * r)
    a = shape + k if float(torch.rand(())) < odds / (1 + odds) else shape + k - 1
    return float(torch.distributions.Gamma(a, r).sample())


# a positive hyperparameter below this fraction of the family's own value is taken to
# have collapsed onto the boundary of an improper conditional (warned of)
COLLAPSE = 1e-8


def maximize_log_scale(objective, x0: float) -> float:
    """argmax over x > 0 of ``objective(x)``: Brent's method on u = log x from a
    bracket grown downhill around log x0 (scipy's ``minimize_scalar``); x0 itself
    unless the point found is at least as high (so a step never lowers it)."""
    f0 = objective(x0)

    def neg(u):
        v = objective(math.exp(min(u, 700.0)))
        return -v if math.isfinite(v) else 1e300

    u0 = math.log(x0)
    try:
        res = minimize_scalar(neg, bracket=(u0 - 0.5, u0 + 0.5), method="brent",
                              options={"xtol": 1e-8, "maxiter": 200})
    except (ValueError, RuntimeError, OverflowError):
        return x0
    x = math.exp(float(res.x))
    return x if objective(x) >= f0 else x0


def maximize_vector(objective, x0: torch.Tensor) -> torch.Tensor:
    """argmax of ``objective`` over vectors (L-BFGS-B from x0, finite-difference
    gradients); x0 unless the point found is at least as high."""
    f0 = objective(x0)

    def neg(x):
        v = objective(torch.as_tensor(x, dtype=DTYPE))
        return -v if math.isfinite(v) else 1e300

    res = minimize(neg, x0.detach().cpu().numpy().astype(np.float64), method="L-BFGS-B")
    x = torch.as_tensor(res.x, dtype=DTYPE, device=x0.device)
    return x if objective(x) >= f0 else x0


def maximize_grid(objective, prior):
    """The grid value of largest ``objective``."""
    values, _ = grid_values(prior)
    scores = [objective(values[i]) for i in range(values.shape[0])]
    v = values[int(np.argmax(scores))]
    return float(v) if v.numel() == 1 else v.clone()


class HyperparameterStep:
    """Updates of a model's hyperparameters given a partition (the module's
    kernels); ``values`` is a dict name -> value, the chain's state."""

    def __init__(self, model):
        self.model = model
        self.hyperpriors = model.hyperpriors
        self._warned: set[str] = set()         # hyperparameters warned of (once each)

    @property
    def active(self) -> bool:
        return self.hyperpriors is not None and bool(self.hyperpriors.names)

    def initial(self) -> dict:
        return self.hyperpriors.initial(self.model.family) if self.active else {}

    def family(self, values: dict):
        """The family at ``values``."""
        return self.hyperpriors.family_at(self.model.family, values) if values \
            else self.model.family

    def log_prior(self, values: dict) -> float:
        return self.hyperpriors.log_prob(values) if values else 0.0

    def _conditional(self, values: dict, name: str, log_marginal):
        """h -> sum_k log p(X_k | h, the others at ``values``) for hyperparameter
        ``name``: -inf outside the family's domain (nu <= d - 1), or so far out that
        a posterior scale matrix is not positive definite in float64 (psi_scale near 0
        beside a one-point cluster)."""
        def log_lik(v):
            try:
                return log_marginal(self.family({**values, name: v}))
            except (ValueError, np.linalg.LinAlgError):
                return -math.inf
        return log_lik

    @staticmethod
    def _log_marginal_of(stats, log_marginal):
        if log_marginal is not None:
            return log_marginal
        return lambda family: float(family.log_marginal(stats).sum())

    def update(self, values: dict, stats, log_marginal=None) -> dict:
        """Each family hyperparameter in turn from p(h | z, X, the others): ``stats``
        are the statistics of the partition's clusters; ``log_marginal(family)``, when
        given, is sum_k log p(X_k) under ``family`` for those clusters (a compiled
        backend's), else the family's own."""
        log_marginal = self._log_marginal_of(stats, log_marginal)
        values = dict(values)
        for name in self.hyperpriors.names:
            prior = self.hyperpriors.priors[name]
            log_lik = self._conditional(values, name, log_marginal)
            if is_grid(prior):
                values[name] = draw_grid(log_lik, prior)
            elif isinstance(prior, torch.distributions.MultivariateNormal):
                values[name] = elliptical_slice(log_lik, torch.as_tensor(values[name], dtype=DTYPE),
                                                prior.loc.to(DTYPE), prior.scale_tril.to(DTYPE))
            else:
                values[name] = slice_log_scale(_with_prior(log_lik, prior), float(values[name]))
                own = float(self.model.family.hyperparameter_value(name))
                if values[name] < COLLAPSE * own and name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(
                        f"{name} was drawn at {values[name]:.3g}, below {COLLAPSE:g} of the "
                        f"family's own value: its conditional is probably improper (a "
                        "cluster's scatter is singular, e.g. a column constant within a "
                        "cluster), so the chain has no stationary law in it; remove or jitter "
                        "such columns, or fix this hyperparameter", RuntimeWarning, stacklevel=3)
        return values

    def objective(self, values: dict, stats, log_marginal=None) -> float:
        """log p(h) + sum_k log p(X_k | h) at ``values``."""
        log_marginal = self._log_marginal_of(stats, log_marginal)
        return self.log_prior(values) + log_marginal(self.family(values)) if values \
            else log_marginal(self.model.family)

    def maximize(self, values: dict, stats, log_marginal=None) -> dict:
        """Each family hyperparameter in turn set to the maximiser of
        log p(h) + sum_k log Z(S_k; h) with the others fixed (coordinate ascent; no
        step lowers the objective).  ``stats`` may be soft statistics."""
        log_marginal = self._log_marginal_of(stats, log_marginal)
        values = dict(values)
        for name in self.hyperpriors.names:
            prior = self.hyperpriors.priors[name]
            target = _with_prior(self._conditional(values, name, log_marginal), prior)
            if is_grid(prior):
                values[name] = maximize_grid(target, prior)
            elif isinstance(prior, torch.distributions.MultivariateNormal):
                values[name] = maximize_vector(target, torch.as_tensor(values[name], dtype=DTYPE))
            else:
                values[name] = maximize_log_scale(target, float(values[name]))
                _warn_if_unbounded(name, target, values[name],
                                   float(self.model.family.hyperparameter_value(name)))
        return values


def _warn_if_unbounded(name: str, objective, x: float, own: float) -> None:
    """Warn when a positive hyperparameter's point estimate is not an attained
    maximum: its objective still rises at the point found, the family cannot be
    evaluated just beyond it, or it fell below 1e-8 of the family's own value (where
    float64 determinants of nearly singular matrices no longer resolve the rise).
    A scale whose objective grows without bound as it shrinks means a cluster's
    scatter matrix is singular (a column constant within the cluster, or fewer
    distinct rows than dimensions): the marginal likelihood has no maximum there."""
    f, below = objective(x), objective(x * 0.5)
    if below > f or not math.isfinite(below) or objective(x * 2.0) > f or x < COLLAPSE * own:
        warnings.warn(
            f"the point estimate of {name} ({x:.3g}) is not a maximum: its objective "
            "keeps rising towards the boundary. Probably a cluster's scatter is singular "
            "(a column constant within a cluster, e.g. a discrete column); remove or "
            "jitter such columns, or fix this hyperparameter", RuntimeWarning, stacklevel=3)


def maximize_alpha(prior, alpha: float, log_lik) -> float:
    """alpha's point estimate: the maximiser of log p(alpha) + ``log_lik(alpha)``
    under a Gamma or grid prior (the variational methods' counterpart of
    :func:`update_alpha`)."""
    target = _with_prior(log_lik, prior)
    return maximize_grid(target, prior) if is_grid(prior) else maximize_log_scale(target, alpha)


def plain_values(values: dict) -> dict:
    """Hyperparameter values as Python floats (scalars) and lists (vectors): what a
    fitted ``hyperparameters_`` attribute holds."""
    return {n: float(v) if torch.as_tensor(v).numel() == 1 else torch.as_tensor(v).tolist()
            for n, v in values.items()}


def _with_prior(log_lik, prior):
    """v -> log p(v) + log_lik(v) (-inf where the prior has no mass)."""
    def log_density(v):
        lp = float(log_prob(prior, v))
        return lp + log_lik(v) if math.isfinite(lp) else -math.inf
    return log_density


def update_alpha(prior, alpha: float, counts: torch.Tensor) -> float:
    """alpha of a DP given the block sizes ``counts`` (K, N): Escobar & West under a
    Gamma prior, an exact draw over a grid prior (Ewens EPPF)."""
    k, n = int(counts.numel()), float(counts.sum())
    if is_grid(prior):
        return draw_grid(lambda a: DirichletProcess(float(a)).log_eppf(counts), prior)
    return escobar_west(alpha, k, int(n), float(prior.concentration), float(prior.rate))


__all__ = ["HyperparameterStep", "slice_log_scale", "elliptical_slice", "draw_grid",
           "escobar_west", "update_alpha", "maximize_log_scale", "maximize_vector",
           "maximize_grid", "maximize_alpha", "plain_values"]
