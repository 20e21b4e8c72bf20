"""The Dirichlet-process mixture as a Pyro program.

Generative model (truncated stick-breaking representation, truncation T):

    v_j ~ Beta(a_j, b_j),  j = 1..T-1          (weights prior; v_T = 1)
    pi  = stick_breaking(v)
    theta_k ~ p(theta),     k = 1..T            (the family's conjugate prior)
    z_i ~ Categorical(pi),  x_i ~ p(x | theta_{z_i}),  i = 1..N.

Site names: ``v`` (plate ``sticks``), the family's parameter sites (plate
``components``; e.g. ``cov`` and ``loc`` for GaussianNIW), ``z`` and ``obs``
(plate ``data``, which supports subsampling).  Guides -- autoguides, the
mean-field guide, DeepDPM's networks -- use these names.
"""

from __future__ import annotations

import pyro
import pyro.distributions as pdist
import torch
from pyro import poutine

from bnpdeep.linalg import as_tensor

from .families.base import ConjugateFamily
from .weights import DirichletProcess, FiniteDirichlet, WeightPrior, stick_breaking


def gather_params(params, z: torch.Tensor):
    """Index every field of a batched parameter tuple by labels z (any shape)."""
    return type(params)(*(p[z] for p in params))


class DPMixture:
    """A mixture with a nonparametric (or finite) weight prior and a conjugate family.

    Parameters
    ----------
    family : ConjugateFamily
        Component likelihood and conjugate prior (GaussianNIW, DiagonalGaussian,
        Multinomial).
    weights : WeightPrior, default DirichletProcess(alpha=1)
        DirichletProcess, PitmanYor or FiniteDirichlet.
    truncation : int, default 30
        Number of components T of the Pyro program's stick-breaking
        representation.  Algorithms that do not need a truncation (the
        samplers, moVB, DeepDPM) change it as K changes; for FiniteDirichlet it
        is the number of components k.
    """

    def __init__(self, family: ConjugateFamily, weights: WeightPrior | None = None,
                 truncation: int = 30):
        if not isinstance(family, ConjugateFamily):
            raise TypeError(f"family must be a ConjugateFamily, got {type(family).__name__}")
        self.family = family
        self.weights = DirichletProcess(1.0) if weights is None else weights
        if not isinstance(self.weights, WeightPrior):
            raise TypeError(f"weights must be a WeightPrior, got {type(weights).__name__}")
        if isinstance(self.weights, FiniteDirichlet):
            truncation = self.weights.k
        if int(truncation) < 1:
            raise ValueError(f"truncation must be at least 1, got {truncation}")
        self.truncation = int(truncation)

    def with_truncation(self, truncation: int) -> "DPMixture":
        return DPMixture(self.family, self.weights, truncation)

    # -- the Pyro program ---------------------------------------------------------
    def model(self, X=None, n: int | None = None, subsample_size: int | None = None):
        """The generative program.  Pass data ``X`` to condition on it, or ``n`` to
        simulate n points.  Returns the labels drawn for the (sub)sampled points."""
        if X is None and n is None:
            raise ValueError("give data X or a number of points n")
        if X is not None:
            X = as_tensor(X, device=self.family.device)
            n = X.shape[0]
        t = self.truncation
        pi = self.weights.pyro_sample_weights(t) if t > 1 else torch.ones(
            1, dtype=torch.float64, device=self.family.device)
        with pyro.plate("components", t):
            params = self.family.pyro_sample_params()
        with pyro.plate("data", n, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", pdist.Categorical(pi))
            obs = None if X is None else X[idx]
            pyro.sample("obs", self.family.likelihood(gather_params(params, z)), obs=obs)
        return z

    __call__ = model

    # -- utilities ---------------------------------------------------------------
    def sample_prior_predictive(self, n: int, seed: int | None = None) -> dict:
        """Simulate a data set with known labels from the prior.

        Returns a dict with ``X`` (n, d), ``z`` (n,), ``weights`` (T,) and
        ``params`` (the T components' parameters).
        """
        if seed is not None:
            pyro.set_rng_seed(seed)
        tr = poutine.trace(self.model).get_trace(n=n)
        t = self.truncation
        v = tr.nodes["v"]["value"] if t > 1 else torch.empty(0, dtype=torch.float64)
        params = self.family.params_from_sites({k: tr.nodes[k]["value"]
                                                for k in self.family.param_sites})
        return {"X": tr.nodes["obs"]["value"], "z": tr.nodes["z"]["value"],
                "weights": stick_breaking(v), "params": params}

    def log_joint(self, X, z, v, params) -> float:
        """log p(X, z, v, theta) of the Pyro program at the given values."""
        X = as_tensor(X, device=self.family.device)
        data = {"z": torch.as_tensor(z, dtype=torch.long), "v": as_tensor(v)}
        data.update(self.family.sites_from_params(params))
        conditioned = poutine.condition(self.model, data=data)
        tr = poutine.trace(conditioned).get_trace(X)
        return float(tr.log_prob_sum())

    def log_joint_collapsed(self, X, z) -> float:
        """log p(X, z) with weights and parameters integrated out:
        log EPPF(n_1..n_K) + sum_k log p(X_k)."""
        z = torch.as_tensor(z, dtype=torch.long)
        _, z = torch.unique(z, return_inverse=True)
        k = int(z.max()) + 1
        stats = self.family.suff_stats_labels(X, z, k)
        return float(self.weights.log_eppf(stats.n) + self.family.log_marginal(stats).sum())

    def __repr__(self):
        return f"DPMixture({self.family!r}, {self.weights!r}, truncation={self.truncation})"
