"""Deep Clustering Network (DCN; Yang, Fu, Sidiropoulos & Hong, ICML 2017).

The autoencoder is trained on the reconstruction error plus a k-means term on its
embedding (DCN eq. 5)::

    L = sum_i  |g(f(x_i)) - x_i|^2  +  lambda/2 |f(x_i) - M s_i|^2

with the centres M and the one-hot assignments s_i held fixed during a network step.
After each minibatch step the batch's assignments are updated to the nearest centre
and each centre moves towards its new members with the step 1/c_k, c_k the number of
assignments it has received so far (eq. 8) -- so a centre is the running mean of
every embedding ever assigned to it.  Here the running mean starts from the k-means
centres of the pretrained embedding, each counted as the mean of its k-means members.
"""

from __future__ import annotations

import torch
from bnpdeep.inference.deep.base import DeepClustering, kmeans_start
from torch import nn


def kmeans_term(z: torch.Tensor, centres: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """1/2 |z_i - m_{s_i}|^2 for each row i."""
    return 0.5 * (z - centres[s]).pow(2).sum(1)


def running_mean_update(centres: torch.Tensor, counts: torch.Tensor, z: torch.Tensor,
                        s: torch.Tensor):
    """DCN eq. 8 for a batch: applying m_k <- m_k - (m_k - z_i)/c_k point by point, with
    c_k counting the assignments, equals m_k <- (c_k m_k + sum_{s_i=k} z_i)/(c_k + n_k).
    Returns the new (centres, counts)."""
    k = centres.shape[0]
    n_k = torch.bincount(s, minlength=k).to(centres.dtype)
    sums = torch.zeros_like(centres).index_add_(0, s, z.to(centres.dtype))
    new_counts = counts + n_k
    moved = n_k > 0
    out = centres.clone()
    out[moved] = (counts[moved, None] * centres[moved] + sums[moved]) / new_counts[moved, None]
    return out, new_counts


class KMeansState(nn.Module):
    """DCN's centres and counts: buffers, set in closed form, not by gradients."""

    def __init__(self, centres: torch.Tensor, counts: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres.clone())
        self.register_buffer("counts", counts.clone())


class DCN(DeepClustering):
    """DCN: an autoencoder trained with a k-means loss on its embedding, the network,
    the assignments and the centres updated in turn (Yang et al. 2017).

    Parameters
    ----------
    n_clusters : int, default 10
    autoencoder : Autoencoder, optional
        Pretrained (cloned) before clustering; default ``Autoencoder()``.  Its
        random_state, device and progress are this estimator's.
    lam : float, default 1.0
        lambda, the weight of the k-means term against the reconstruction error
        (the paper sets it per data set).
    max_epochs : int, default 50
    batch_size : int, default 256
    lr : float, default 1e-3
        Adam's learning rate (the paper uses SGD).
    tol : float, default 1e-3
        Stop when fewer than this fraction of the labels changed over an epoch.
    checkpoint_every : int, default 5
    device, random_state, progress : as every bnpdeep estimator.
    """

    method_name = "dcn"
    _CHECKPOINT = "dcn_checkpoint.pt"

    def __init__(self, n_clusters: int = 10, autoencoder=None, lam: float = 1.0,
                 max_epochs: int = 50, batch_size: int = 256, lr: float = 1e-3,
                 tol: float = 1e-3, checkpoint_every: int = 5, device="auto",
                 random_state=0, progress: bool = False):
        super().__init__(n_clusters=n_clusters, autoencoder=autoencoder, max_epochs=max_epochs,
                         batch_size=batch_size, lr=lr, tol=tol,
                         checkpoint_every=checkpoint_every, device=device,
                         random_state=random_state, progress=progress)
        self.lam = lam

    def _init_head(self, Z, gen):
        if not float(self.lam) >= 0:
            raise ValueError(f"lam must be non-negative, got {self.lam}")
        centres, labels = kmeans_start(Z, self.n_clusters, gen)
        counts = torch.bincount(labels, minlength=int(self.n_clusters)).to(torch.float64)
        self._assign = labels.to(self._device)
        return KMeansState(centres, counts)

    def _loss(self, x, idx, gen):
        z, rec = self._reconstruction(x, x)
        centres = self.head_.centres.to(z.dtype)
        return rec + float(self.lam) * kmeans_term(z, centres, self._assign[idx]).mean(), z

    def _after_step(self, z, idx):
        s = self._labels(z)
        self._assign[idx] = s
        self.head_.centres, self.head_.counts = running_mean_update(
            self.head_.centres, self.head_.counts, z.double(), s)

    def _labels(self, Z):
        return torch.cdist(Z.double(), self.head_.centres).argmin(1)

    def _extra_state(self):
        return {"assign": self._assign.cpu()}

    def _load_extra_state(self, state):
        self._assign = state["assign"].to(self._device)

    @property
    def cluster_centers_(self):
        self._check_is_fitted()
        return self.head_.centres.cpu().numpy()
