"""Hyperpriors: priors on the component prior's own parameters and on alpha.

A fixed component prior decides the scale of a cluster before any data are seen;
on real data no fixed choice suits every set.  The hierarchical answer
(Rasmussen 2000, "The infinite Gaussian mixture model", Sec. 2; Görür & Rasmussen
2010, Sec. 3) puts vague priors on those parameters and lets the posterior set
them.  For the Normal-inverse-Wishart family the hyperparameters are

    kappa     ~ p(kappa)        mu_k | Sigma_k ~ N(mu0, Sigma_k / kappa)
    psi_scale ~ p(psi_scale)    Sigma_k ~ IW(nu, psi_scale * Psi0)
    mu0       ~ N(m, S)         (optional)
    alpha     ~ Gamma(a, b)     the DP concentration

with ``Psi0`` the family's own ``psi`` (so ``psi_scale = 1`` is the family as
given).  Each prior is a torch/Pyro distribution: a continuous one on the positive
reals (``Gamma``, ``LogNormal``), a discrete grid (``pyro.distributions.Empirical``
over values, which the exact-posterior tests use), or for ``mu0`` a
``MultivariateNormal``.

:class:`Hyperpriors` composes with a family and a weight prior:
``DPMixture(family, weights, hyperpriors=Hyperpriors(kappa=..., psi_scale=...))``
samples them as sites of the Pyro program; the samplers update them given the
partition (:mod:`bnpdeep.inference.hyperparameters`).
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as pdist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin

from bnpdeep.linalg import DTYPE, as_tensor

from .weights import DirichletProcess


def is_grid(prior) -> bool:
    """Whether ``prior`` is a discrete grid (``pyro.distributions.Empirical``)."""
    return isinstance(prior, pdist.Empirical)


def grid_values(prior) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, log probabilities) of a grid prior, values (G,) or (G, d)."""
    return (prior.enumerate_support().to(DTYPE),
            torch.log_softmax(prior.log_weights.to(DTYPE), 0))


class Hyperpriors:
    """Priors on named hyperparameters of a family, and optionally on ``alpha``.

    Parameters
    ----------
    **priors : torch distributions
        Keyword per hyperparameter: a family's names (``GaussianNIW``: ``kappa``,
        ``psi_scale``, ``nu``, ``mu0``) and ``alpha`` (a ``Gamma`` or a grid, for the
        Dirichlet process).
    """

    def __init__(self, **priors):
        if not priors:
            raise ValueError("Hyperpriors needs at least one prior")
        for name, prior in priors.items():
            if not isinstance(prior, torch.distributions.Distribution):
                raise TypeError(f"the prior on {name} must be a torch distribution, got "
                                f"{type(prior).__name__}")
        self.priors = dict(priors)

    @property
    def names(self) -> tuple[str, ...]:
        """The family's hyperparameters (``alpha`` excluded), in update order."""
        return tuple(n for n in self.priors if n != "alpha")

    @property
    def alpha(self):
        return self.priors.get("alpha")

    def check(self, family, weights) -> None:
        """Raise a clear error where a name is not a hyperparameter of the model."""
        known = tuple(getattr(family, "hyperparameter_names", ()))
        for name in self.names:
            if name not in known:
                raise ValueError(
                    f"{type(family).__name__} has no hyperparameter {name!r}"
                    + (f" (it has {', '.join(known)})" if known else " (it takes none)"))
        if self.alpha is not None and not isinstance(weights, DirichletProcess):
            raise ValueError("a prior on alpha needs DirichletProcess weights, got "
                             f"{type(weights).__name__}")
        if self.alpha is not None and not (is_grid(self.alpha) or isinstance(
                self.alpha, torch.distributions.Gamma)):
            raise ValueError("the prior on alpha must be a Gamma or a grid (Empirical), got "
                             f"{type(self.alpha).__name__}")

    def initial(self, family) -> dict:
        """The family's own values of the hyperparameters: the chain's start."""
        return {n: family.hyperparameter_value(n) for n in self.names}

    def log_prob(self, values: dict) -> float:
        """log p(values) of the family's hyperparameters (alpha not included)."""
        return float(sum(float(log_prob(self.priors[n], values[n])) for n in self.names))

    def family_at(self, family, values: dict):
        """``family`` with its hyperparameters set to ``values``."""
        return family.with_hyperparameters(**values) if values else family

    def standardized(self, shift, scale) -> "Hyperpriors":
        """The priors these imply for y = (x - shift) / scale per column: only ``mu0``
        has units, and its prior maps as the points do (a ``MultivariateNormal`` to
        N((m - shift) / scale, S^-1 C S^-1), a grid value by value); kappa, psi_scale,
        nu, df and alpha are free of units.  Another prior on ``mu0`` raises
        ``NotImplementedError``."""
        prior = self.priors.get("mu0")
        if prior is None:
            return self
        shift, scale = as_tensor(shift), as_tensor(scale)
        if is_grid(prior):
            values, logw = grid_values(prior)
            mapped = pdist.Empirical((values - shift) / scale, logw)
        elif isinstance(prior, torch.distributions.MultivariateNormal):
            loc, tril = prior.loc.to(DTYPE), prior.scale_tril.to(DTYPE)
            mapped = pdist.MultivariateNormal((loc - shift) / scale,
                                              scale_tril=tril / scale[:, None])
        else:
            raise NotImplementedError(f"no change of units for a {type(prior).__name__} "
                                      "prior on mu0")
        return Hyperpriors(**{**self.priors, "mu0": mapped})

    @staticmethod
    def value_from_standardized(name: str, value, shift, scale):
        """A hyperparameter's value in x's units from its value for y = (x - shift) /
        scale (only ``mu0`` changes)."""
        if name != "mu0":
            return value
        value = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
        return value * np.asarray(scale) + np.asarray(shift)

    def pyro_sample(self, family, weights):
        """Sample every hyperparameter as a Pyro site; returns (family, weights) at the
        drawn values."""
        values = {n: pyro.sample(n, as_pyro(self.priors[n])) for n in self.names}
        if self.alpha is not None:
            weights = DirichletProcess(float(pyro.sample("alpha", as_pyro(self.alpha))))
        return self.family_at(family, {n: _plain(v) for n, v in values.items()}), weights

    def __repr__(self):
        return "Hyperpriors(" + ", ".join(f"{n}={p}" for n, p in self.priors.items()) + ")"


def as_pyro(prior):
    """A torch distribution as the Pyro distribution of the same name (Pyro's sites
    take only its own)."""
    if isinstance(prior, TorchDistributionMixin):
        return prior
    cls = getattr(pdist, type(prior).__name__, None)
    if cls is None:
        raise TypeError(f"no Pyro distribution named {type(prior).__name__}")
    params = {name: getattr(prior, name) for name in prior.arg_constraints}
    if "scale_tril" in params:         # MultivariateNormal: one parametrisation only
        params = {"loc": params["loc"], "scale_tril": params["scale_tril"]}
    elif "probs" in params and "logits" in params:
        params.pop("logits")
    return cls(**params)


def log_prob(prior, value) -> torch.Tensor:
    """log p(value) under a hyperprior (grids: the log weight of the matching value)."""
    value = as_tensor(value)
    if is_grid(prior):
        values, logw = grid_values(prior)
        match = (values.reshape(values.shape[0], -1) - value.reshape(1, -1)).abs().amax(1)
        i = int(match.argmin())
        return logw[i] if float(match[i]) < 1e-9 * (1 + float(value.abs().max())) \
            else torch.tensor(-math.inf, dtype=DTYPE)
    return prior.log_prob(value.to(prior.mean.dtype)).to(DTYPE).sum()


def _plain(v):
    v = torch.as_tensor(v)
    return float(v) if v.numel() == 1 else v.to(DTYPE)


__all__ = ["Hyperpriors", "is_grid", "grid_values", "log_prob"]
