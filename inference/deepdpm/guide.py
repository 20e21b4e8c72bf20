"""DeepDPM's networks as the guide of the Pyro program :class:`bnpdeep.models.DPMixture`.

Site for site, the guide mirrors the model at truncation K (the current number of
clusters):

* ``v`` (plate ``sticks``): a point mass at the stick fractions of the M-step's
  weights pi, v_j = pi_j / (1 - sum_{l<j} pi_l);
* the family's parameter sites (plate ``components``): point masses at the
  M-step's (MAP) parameters;
* ``z`` (plate ``data``, subsampling allowed): Categorical(f_cl(x_i)), the
  clustering net's responsibilities, marked for parallel enumeration so that
  ``TraceEnum_ELBO`` sums z out exactly.

The nets are registered with ``pyro.module``; the point masses are not Pyro
parameters (the M-step, not gradient descent, moves them), as in the paper.
"""

from __future__ import annotations

import pyro
import pyro.distributions as pdist
import torch

from bnpdeep.linalg import as_tensor


def stick_fractions(pi: torch.Tensor) -> torch.Tensor:
    """v_1..v_{K-1} with stick_breaking(v) = pi (pi normalised, K >= 2)."""
    pi = pi / pi.sum()
    rest = 1.0 - torch.cumsum(pi, 0)[:-1]
    before = torch.cat([torch.ones(1, dtype=pi.dtype, device=pi.device), rest[:-1]])
    return (pi[:-1] / before.clamp_min(1e-300)).clamp(1e-12, 1.0 - 1e-12)


class DeepDPMGuide:
    """Callable guide ``guide(X=None, n=None, subsample_size=None)`` for a
    ``DPMixture`` at truncation K.

    Parameters
    ----------
    family : ConjugateFamily
    cluster_net : ClusterNet
    log_pi : (K,) tensor, params : the family's point parameters of K components
    scale : callable mapping data rows to the nets' (standardised, float32) input
    """

    def __init__(self, family, cluster_net, log_pi, params, scale):
        self.family = family
        self.cluster_net = cluster_net
        self.log_pi = log_pi
        self.params = params
        self.scale = scale

    def __call__(self, X=None, n: int | None = None, subsample_size: int | None = None):
        X = as_tensor(X, device=self.family.device)
        n = X.shape[0]
        pyro.module("deepdpm_cluster_net", self.cluster_net)
        k = self.log_pi.shape[0]
        if k > 1:
            with pyro.plate("sticks", k - 1):
                pyro.sample("v", pdist.Delta(stick_fractions(self.log_pi.exp())))
        with pyro.plate("components", k):
            for name, value in self.family.sites_from_params(self.params).items():
                pyro.sample(name, pdist.Delta(value, event_dim=value.dim() - 1))
        with pyro.plate("data", n, subsample_size=subsample_size) as idx:
            logits = self.cluster_net(self.scale(X[idx])).to(X.dtype)
            z = pyro.sample("z", pdist.Categorical(logits=logits),
                            infer={"enumerate": "parallel"})
        return z
