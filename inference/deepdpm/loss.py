"""DeepDPM's training loss as a Pyro loss callable, ``loss(model, guide, X)``, for
``pyro.infer.SVI(model, guide, optim, DeepDPMLoss(...))`` with a
:class:`~.guide.DeepDPMGuide` (Ronen, Finder & Freifeld 2022, Sec. 3.2).

On a minibatch X of B rows the loss is the mean over rows of

* the clustering term, either ``"kl"``: KL(r^E_i || r_i) (the reference code's
  direction; ``kl_direction="reverse"`` gives KL(r_i || r^E_i)), with r = f_cl(x)
  the net's responsibilities read off the guide's ``z`` site and r^E the E-step
  responsibilities p(z_i = k | x_i, pi, theta) at the guide's point values of the
  model's global sites (paper eq. 2); or ``"elbo"``: the negative ELBO of the
  model with the guide, z summed out exactly (``TraceEnum_ELBO``), divided by B;
* plus the sub-clustering nets' isotropic loss (paper eq. 5),
  sum_j r~_ij ||x_i - mu~_{z_i j}||^2 with z_i = argmax_k r_ik.

The nets' parameters reach SVI's optimiser through the guide's ``pyro.module``
sites, which the guide trace records.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO


class DeepDPMLoss:
    """``loss(model, guide, X) -> tensor``: clustering term plus sub-cluster term.

    Parameters
    ----------
    cluster : {"kl", "elbo"}, default "kl"
    kl_direction : {"forward", "reverse"}, default "forward"
    """

    def __init__(self, cluster: str = "kl", kl_direction: str = "forward"):
        if cluster not in ("kl", "elbo"):
            raise ValueError(f"cluster must be 'kl' or 'elbo', got {cluster!r}")
        if kl_direction not in ("forward", "reverse"):
            raise ValueError(f"kl_direction must be 'forward' or 'reverse', got "
                             f"{kl_direction!r}")
        self.cluster = cluster
        self.kl_direction = kl_direction
        self._elbo = TraceEnum_ELBO(max_plate_nesting=1)
        self.last = {}          # the two terms of the last call, as floats

    def cluster_term(self, model, guide, X) -> tuple[torch.Tensor, torch.Tensor]:
        """(clustering term, the net's log r of the batch)."""
        if self.cluster == "elbo":
            term = self._elbo.differentiable_loss(model, guide, X) / X.shape[0]
            with torch.no_grad():
                log_r = guide.cluster_net(guide.net_input(X)).to(X.dtype)
            return term, log_r
        trace = poutine.trace(guide).get_trace(X)
        log_r = trace.nodes["z"]["fn"].logits                     # normalised, (B, K)
        with torch.no_grad():
            log_t = guide.log_targets(X).to(log_r.dtype)
        if self.kl_direction == "forward":
            kl = (log_t.exp() * (log_t - log_r)).sum(1)
        else:
            kl = (log_r.exp() * (log_r - log_t)).sum(1)
        return kl.mean(), log_r

    def __call__(self, model, guide, X, *args, **kwargs) -> torch.Tensor:
        term, log_r = self.cluster_term(model, guide, X)
        sub = guide.sub_loss(X, log_r.detach().argmax(1))
        self.last = {"cluster": float(term.detach()), "sub": float(sub.detach())}
        return term + sub
