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
from pyro.ops.indexing import Vindex

from bnpdeep.linalg import as_tensor

from .families.base import ConjugateFamily
from .hyperpriors import Hyperpriors, log_prob
from .weights import DirichletProcess, FiniteDirichlet, WeightPrior, stick_breaking


def gather_params(params, z: torch.Tensor):
    """Index every field of a parameter tuple of K components (component axis
    first) by labels z (any shape)."""
    return type(params)(*(p[z] for p in params))


def select_components(params, z: torch.Tensor, event_dims) -> tuple:
    """theta_{z_i} for every label, with batch dimensions (vectorised particles,
    parallel Predictive) and enumerated z broadcast as Pyro's plates require.

    A field of shape batch + (T,) + event (the ``components`` plate at dim -1)
    gets a singleton axis left of its component axis, so that its batch dims line
    up with z's leading dims and the singleton with z's ``data`` dim; the
    component axis is then indexed by z (``Vindex``)."""
    out = []
    for p, e in zip(params, event_dims, strict=True):
        q = p.unsqueeze(-2 - e)
        out.append(Vindex(q)[(Ellipsis, z) + (slice(None),) * e])
    return type(params)(*out)


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
    hyperpriors : Hyperpriors, optional
        Priors on the family's hyperparameters (e.g. ``kappa``, ``psi_scale``) and on
        ``alpha``: sites of the program, drawn before the weights and components;
        ``family`` and ``weights`` then give the hyperparameters' starting values
        and, for ``psi_scale``, the fixed matrix Psi0 it scales.
    """

    def __init__(self, family: ConjugateFamily, weights: WeightPrior | None = None,
                 truncation: int = 30, hyperpriors: Hyperpriors | None = None):
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
        if hyperpriors is not None:
            if not isinstance(hyperpriors, Hyperpriors):
                raise TypeError("hyperpriors must be a Hyperpriors, got "
                                f"{type(hyperpriors).__name__}")
            hyperpriors.check(family, self.weights)
        self.hyperpriors = hyperpriors

    def with_truncation(self, truncation: int) -> "DPMixture":
        return DPMixture(self.family, self.weights, truncation, self.hyperpriors)

    def standardized(self, shift, scale) -> "DPMixture":
        """The same model for y = (x - shift) / scale per column (the family's and the
        hyperpriors' ``standardized``; the weights have no units).  Its posterior over
        partitions is this model's, and log p(y, z) = log p(x, z) + N sum_j log scale_j.
        Raises ``NotImplementedError`` where a part has no change of units."""
        hp = None if self.hyperpriors is None else self.hyperpriors.standardized(shift, scale)
        return DPMixture(self.family.standardized(shift, scale), self.weights,
                         self.truncation, hp)

    def with_family(self, family: ConjugateFamily) -> "DPMixture":
        """The same model with another family (e.g. moved to another device)."""
        return DPMixture(family, self.weights, self.truncation, self.hyperpriors)

    # -- the Pyro program ---------------------------------------------------------
    def model(self, X=None, n: int | None = None, subsample_size: int | None = None,
              marginal: bool = False):
        """The generative program.  Pass data ``X`` to condition on it, or ``n`` to
        simulate n points.  Returns the labels drawn for the (sub)sampled points.

        With ``marginal=True`` there is no ``z`` site: ``obs`` is the mixture
        sum_k pi_k p(x_i | theta_k) itself (z summed out in closed form), and None is
        returned.  The posterior of the other sites is the same as with z enumerated,
        but ``obs``'s log-density is log p(x_i | pi, theta) point by point, which is
        what tools that replay the program without enumerating z (``Predictive``,
        ``arviz.from_pyro(..., log_likelihood=True)`` and so ``az.loo``) read: with a
        ``z`` site they would draw z from the prior and read log p(x_i | theta_{z_i})."""
        if X is None and n is None:
            raise ValueError("give data X or a number of points n")
        if X is not None:
            X = as_tensor(X, device=self.family.device)
            n = X.shape[0]
        t = self.truncation
        family, weights = self.family, self.weights
        if self.hyperpriors is not None:
            family, weights = self.hyperpriors.pyro_sample(family, weights)
        pi = weights.pyro_sample_weights(t) if t > 1 else torch.ones(
            1, dtype=torch.float64, device=family.device)
        with pyro.plate("components", t):
            params = family.pyro_sample_params()
        with pyro.plate("data", n, subsample_size=subsample_size) as idx:
            obs = None if X is None else X[idx]
            if marginal:
                # components at dim -1 of the likelihood's batch, a singleton for data
                comp = family.likelihood(type(params)(*(
                    p.unsqueeze(-2 - e) for p, e in zip(params, family.param_event_dims(),
                                                        strict=True))))
                pyro.sample("obs", pdist.MixtureSameFamily(
                    pdist.Categorical(pi.unsqueeze(-2)), comp), obs=obs)
                return None
            # pi's batch dims (particles) stay left of the data plate's dim
            z = pyro.sample("z", pdist.Categorical(pi.unsqueeze(-2)))
            theta = select_components(params, z, family.param_event_dims())
            pyro.sample("obs", family.likelihood(theta), obs=obs)
        return z

    __call__ = model

    # -- utilities ---------------------------------------------------------------
    def sample_prior_predictive(self, n: int, seed: int | None = None) -> dict:
        """Simulate a data set with known labels from the prior.

        Returns a dict with ``X`` (n, d), ``z`` (n,), ``weights`` (T,) and
        ``params`` (the T components' parameters).
        """
        if seed is None:
            tr = poutine.trace(self.model).get_trace(n=n)
        else:
            # a seed of its own: torch's generator is left as the caller had it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
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

    def log_joint_collapsed(self, X, z, hyper: dict | None = None) -> float:
        """log p(X, z) with weights and parameters integrated out:
        log EPPF(n_1..n_K) + sum_k log p(X_k); with ``hyper`` (values of the
        hyperparameters, ``alpha`` among them if it has a prior), log p(X, z, hyper):
        the same at those values plus their log prior density."""
        z = torch.as_tensor(z, dtype=torch.long)
        _, z = torch.unique(z, return_inverse=True)
        k = int(z.max()) + 1
        family, weights, extra = self.family, self.weights, 0.0
        if hyper:
            hp = self.hyperpriors
            values = {n: v for n, v in hyper.items() if n != "alpha"}
            family = hp.family_at(family, values)
            extra = hp.log_prob(values)
            if "alpha" in hyper:
                weights = DirichletProcess(float(hyper["alpha"]))
                extra += float(log_prob(hp.alpha, float(hyper["alpha"])))
        stats = family.suff_stats_labels(X, z, k)
        return float(weights.log_eppf(stats.n) + family.log_marginal(stats).sum()) + extra

    def __repr__(self):
        hp = "" if self.hyperpriors is None else f", {self.hyperpriors!r}"
        return (f"DPMixture({self.family!r}, {self.weights!r}, truncation={self.truncation}"
                f"{hp})")
