"""DeepDPM's networks (Ronen, Finder & Freifeld 2022, Sec. 3.2) and their surgery.

* :class:`ClusterNet` f_cl: x -> r_i = softmax(W2 relu(W1 x + b1) + b2), K outputs.
* :class:`SubclusterNets`: one small net per cluster with two softmax outputs, held
  as batched (block-diagonal) weights of shape (K, ...) and evaluated for all
  clusters in one ``einsum``; a point uses the net of its own cluster.

When a split or merge changes K, the nets change shape without losing what they
learned (the paper's Sec. 3.3):

* split of cluster k: its output row is duplicated (both copies get bias
  b_k - log 2, so every other cluster's r is unchanged and the two halves share
  r_k); the two new clusters get fresh sub-nets;
* merge of k and l: the rows are averaged and the bias becomes
  logsumexp(b_k, b_l) -- the exact inverse of a split -- and the merged cluster
  gets a fresh sub-net.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _init_linear(w: torch.Tensor, b: torch.Tensor, fan_in: int):
    """PyTorch's default nn.Linear initialisation, for batched weights."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        w.uniform_(-bound, bound)
        b.uniform_(-bound, bound)


class ClusterNet(nn.Module):
    """The clustering net: MLP with one hidden layer and K softmax outputs."""

    def __init__(self, dim: int, k: int, hidden: int = 50):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, k)

    @property
    def k(self) -> int:
        return self.out.out_features

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log r, (N, K)."""
        return torch.log_softmax(self.logits(x), -1)

    def _set_out(self, weight: torch.Tensor, bias: torch.Tensor):
        out = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device,
                        dtype=weight.dtype)
        with torch.no_grad():
            out.weight.copy_(weight)
            out.bias.copy_(bias)
        self.out = out

    @torch.no_grad()
    def split(self, k: int):
        """Cluster k becomes clusters k and K (appended): row k duplicated, each copy
        with bias b_k - log 2."""
        w, b = self.out.weight.detach(), self.out.bias.detach().clone()
        b[k] -= math.log(2.0)
        self._set_out(torch.cat([w, w[k:k + 1]]), torch.cat([b, b[k:k + 1]]))

    @torch.no_grad()
    def merge(self, k: int, l: int):
        """Clusters k and l become one, at index min(k, l) after removing max(k, l):
        weights averaged, bias logsumexp(b_k, b_l)."""
        k, l = min(k, l), max(k, l)
        w, b = self.out.weight.detach().clone(), self.out.bias.detach().clone()
        w[k] = 0.5 * (w[k] + w[l])
        b[k] = torch.logaddexp(b[k], b[l])
        keep = torch.arange(w.shape[0], device=w.device) != l
        self._set_out(w[keep], b[keep])


    @torch.no_grad()
    def remove(self, keep: torch.Tensor):
        """Keep only the output rows at ``keep`` (clusters that emptied are dropped)."""
        self._set_out(self.out.weight.detach()[keep], self.out.bias.detach()[keep])


class SubclusterNets(nn.Module):
    """K sub-clustering nets (one hidden layer, 2 softmax outputs each), batched."""

    def __init__(self, dim: int, k: int, hidden: int = 50):
        super().__init__()
        self.dim, self.width = dim, hidden
        self.w1 = nn.Parameter(torch.empty(k, dim, hidden))
        self.b1 = nn.Parameter(torch.empty(k, hidden))
        self.w2 = nn.Parameter(torch.empty(k, hidden, 2))
        self.b2 = nn.Parameter(torch.empty(k, 2))
        for c in range(k):
            self._reset(c)

    @property
    def k(self) -> int:
        return self.w1.shape[0]

    @torch.no_grad()
    def _reset(self, c: int):
        _init_linear(self.w1[c], self.b1[c], self.dim)
        _init_linear(self.w2[c], self.b2[c], self.width)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log r~, (N, 2): each point through the sub-net of its cluster z_i.

        The rows are sorted by cluster and each cluster's rows go through its own net
        (two small GEMMs per cluster): N d H work in all, where evaluating every
        net on every row and gathering each row's block costs K times that."""
        order = torch.argsort(z)
        counts = torch.bincount(z, minlength=self.k).tolist()
        parts = [torch.addmm(self.b2[c], torch.relu(torch.addmm(self.b1[c], xc, self.w1[c])),
                             self.w2[c])
                 for c, xc in enumerate(torch.split(x[order], counts)) if counts[c]]
        if not parts:
            return x.new_zeros((0, 2))
        logits = torch.empty((x.shape[0], 2), dtype=parts[0].dtype, device=x.device)
        logits = logits.index_copy(0, order, torch.cat(parts))
        return torch.log_softmax(logits, -1)

    def _replace(self, keep: torch.Tensor, n_new: int):
        """Keep the nets at ``keep`` and append ``n_new`` fresh ones."""
        fresh = SubclusterNets(self.dim, n_new, self.width).to(self.w1.device, self.w1.dtype)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                new = torch.cat([getattr(self, name).detach()[keep],
                                 getattr(fresh, name).detach()])
                setattr(self, name, nn.Parameter(new))

    def split(self, k: int):
        """Cluster k becomes k and K: both get fresh sub-nets."""
        keep = torch.arange(self.k, device=self.w1.device)
        self._replace(keep, 1)
        self._reset(k)

    def merge(self, k: int, l: int):
        """Clusters k and l become one at min(k, l), with a fresh sub-net."""
        k, l = min(k, l), max(k, l)
        keep = torch.arange(self.k, device=self.w1.device) != l
        self._replace(keep, 0)
        self._reset(k)

    def remove(self, keep: torch.Tensor):
        """Keep only the sub-nets at ``keep``."""
        self._replace(keep, 0)
