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
sites, which the guide trace records; :class:`JointAdam` is the optimiser.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.optim import PyroOptim
from pyro.params.param_store import module_from_param_with_module_name


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
        # the last call's two terms and the summed mixture log-likelihood
        # sum_i log sum_k pi_k p(x_i | theta_k) of its rows, as floats
        self.last = {}

    def cluster_term(self, model, guide, X) -> tuple[torch.Tensor, torch.Tensor]:
        """(clustering term, the net's log r of the batch)."""
        if self.cluster == "elbo":
            term = self._elbo.differentiable_loss(model, guide, X) / X.shape[0]
            with torch.no_grad():
                log_r = guide.cluster_net(guide.net_input(X)).to(X.dtype)
                self.last["log_lik"] = float(torch.logsumexp(guide.log_joint(X), 1).sum())
            return term, log_r
        # z conditioned on a placeholder: the loss needs its distribution, not a draw
        blank = torch.zeros(X.shape[0], dtype=torch.long, device=X.device)
        trace = poutine.trace(poutine.condition(guide, data={"z": blank})).get_trace(X)
        log_r = trace.nodes["z"]["fn"].logits                     # normalised, (B, K)
        with torch.no_grad():
            joint = guide.log_joint(X)
            self.last["log_lik"] = float(torch.logsumexp(joint, 1).sum())
            log_t = torch.log_softmax(joint, 1).to(log_r.dtype)
        if self.kl_direction == "forward":
            kl = (log_t.exp() * (log_t - log_r)).sum(1)
        else:
            kl = (log_r.exp() * (log_r - log_t)).sum(1)
        return kl.mean(), log_r

    def __call__(self, model, guide, X, *args, **kwargs) -> torch.Tensor:
        term, log_r = self.cluster_term(model, guide, X)
        sub = guide.sub_loss(X, log_r.detach().argmax(1))
        self.last.update(cluster=float(term.detach()), sub=float(sub.detach()))
        return term + sub


class NetRates:
    """A picklable ``lr_of`` for :class:`JointAdam`: ``lr`` for the Pyro module named
    ``net_name``, ``other_lr`` for every other."""

    def __init__(self, net_name: str, lr: float, other_lr: float):
        self.net_name, self.lr, self.other_lr = net_name, float(lr), float(other_lr)

    def __call__(self, module_name: str) -> float:
        return self.lr if module_name == self.net_name else self.other_lr


class JointAdam(PyroOptim):
    """Adam over all the parameters SVI hands it, as one ``torch.optim.Adam`` with a
    learning rate per Pyro module (``lr_of(module_name) -> float``).

    Pyro's own ``pyro.optim.Adam`` keeps one torch optimiser per tensor, which on
    small nets costs more per step than the nets' arithmetic; the update is the
    same.  The parameter set is fixed at the first step (a move that changes the
    nets' shapes starts a new SVI and optimiser); ``get_state``/``set_state`` carry
    the optimiser state through checkpoints, keyed by parameter name.

    ``reduce_grads(params)``, when given, is called on the parameters (in name
    order) before every step: a data-parallel run averages its ranks' gradients
    there."""

    def __init__(self, lr_of, betas=(0.9, 0.999), reduce_grads=None):
        self.lr_of = lr_of
        self.betas = tuple(betas)
        self.reduce_grads = reduce_grads
        self._opt = None
        self._names: list[str] = []
        self._params: list = []
        self._pending = None

    def _build(self, params):
        store = pyro.get_param_store()
        named = sorted((store.param_name(p), p) for p in params)
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        groups: dict[float, list] = {}
        for name, p in named:
            groups.setdefault(float(self.lr_of(module_from_param_with_module_name(name))),
                              []).append(p)
        self._opt = torch.optim.Adam([{"params": ps, "lr": lr} for lr, ps in groups.items()],
                                     betas=self.betas)
        if self._pending is not None:
            if self._pending["names"] != self._names:
                raise ValueError("optimiser state of other parameters than the guide's")
            self._opt.load_state_dict(self._pending["state"])
            self._pending = None

    def __call__(self, params, *args, **kwargs) -> None:
        if self._opt is None:
            self._build(list(params))
        if self.reduce_grads is not None:
            self.reduce_grads(self._params)
        self._opt.step()

    def get_state(self) -> dict:
        return {"names": self._names,
                "state": None if self._opt is None else self._opt.state_dict()}

    def set_state(self, state_dict: dict) -> None:
        if state_dict.get("state") is not None:
            self._pending = state_dict
