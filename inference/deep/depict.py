"""DEPICT (Ghasedi Dizaji, Herandi, Deng, Cai & Huang, ICCV 2017): a convolutional
denoising autoencoder with a softmax clustering head on its embedding.

The head gives p_ik = softmax_k(theta_k . z_i + b_k).  DEPICT's clustering objective
(eq. 3-4) is KL(Q || P) plus a KL from the cluster frequencies q_k = mean_i q_ik to the
uniform prior, so that clusters stay balanced.  Its minimiser over Q satisfies
q_ik proportional to p_ik / q_k; with q_k approximated by sqrt(sum_i p_ik) this gives
the auxiliary targets of the paper (eq. 7, ``target="balanced"``)::

    q_ik = (p_ik / sqrt(f_k)) / sum_k' (p_ik' / sqrt(f_k')),   f_k = sum_i p_ik

The authors' released code (herandy/DEPICT, ``functions.train_RLC``) normalises
instead p_ik^2 / f_k over k, with the square-root form commented out: DEC's target
distribution (Xie et al. 2016, eq. 3), which balances the clusters and also sharpens
each row towards its most probable cluster (``target="sharpened"``, the default).
Without the sharpening the self-training has no pull towards confident assignments:
a row's target is its own p reweighted by the cluster sizes alone.

Training alternates: the targets are computed from the clean pathway (uncorrupted
input) over the whole data at the start of every epoch; the network is then trained
on minibatches to minimise KL(Q || P~), P~ the head's output for a corrupted input,
plus the reconstruction error of the clean input from the corrupted one (DEPICT
reconstructs every layer; here the output, as in its single-loss variant).

The head starts as the posterior of an equal-weight isotropic Gaussian mixture at
the k-means centres mu_k of the pretrained embedding: theta_k = mu_k / s^2,
b_k = -|mu_k|^2 / (2 s^2), s^2 the within-cluster variance per dimension, so that
its first argmax is the k-means partition.
"""

from __future__ import annotations

import torch
from bnpdeep.inference.deep.autoencoder import Autoencoder, corrupt
from bnpdeep.inference.deep.base import DeepClustering, kmeans_start
from bnpdeep.inference.deep.dec import kl_rows, target_distribution
from torch import nn


def balanced_targets(p: torch.Tensor) -> torch.Tensor:
    """q (n, K) from p (n, K): DEPICT eq. 7."""
    w = p / p.sum(0).sqrt()
    return w / w.sum(1, keepdim=True)


TARGETS = {"sharpened": target_distribution, "balanced": balanced_targets}


def gaussian_softmax_head(Z: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor):
    """A linear layer whose softmax is the isotropic equal-weight Gaussian posterior."""
    resid = Z - centres[labels]
    s2 = resid.pow(2).mean().clamp_min(1e-12)
    head = nn.Linear(Z.shape[1], centres.shape[0])
    with torch.no_grad():
        head.weight.copy_(centres / s2)
        head.bias.copy_(-centres.pow(2).sum(1) / (2 * s2))
    return head


class DEPICT(DeepClustering):
    """DEPICT: a denoising (by default convolutional) autoencoder and a softmax head
    trained on balanced auxiliary targets plus reconstruction (Ghasedi Dizaji et al. 2017).

    Parameters
    ----------
    n_clusters : int, default 10
    autoencoder : Autoencoder, optional
        Default ``Autoencoder(architecture="conv", corruption=0.2)``: square
        single-channel images; pass ``Autoencoder(architecture="conv",
        image_shape=...)`` for others, or an MLP.
    corruption : float, default 0.2
        Fraction of pixels zeroed on the noisy pathway during clustering.
    target : {"sharpened", "balanced"}, default "sharpened"
        The auxiliary targets recomputed at every epoch: q_ik proportional to
        p_ik^2 / f_k (the authors' code; DEC's target distribution) or to
        p_ik / sqrt(f_k) (the paper's eq. 7).
    max_epochs : int, default 50
    batch_size : int, default 256
    lr : float, default 1e-3
    tol : float, default 1e-3
        Stop when fewer than this fraction of the labels changed over an epoch.
    checkpoint_every : int, default 5
    device, random_state, progress : as every bnpdeep estimator.
    """

    method_name = "depict"
    _CHECKPOINT = "depict_checkpoint.pt"

    def __init__(self, n_clusters: int = 10, autoencoder=None, corruption: float = 0.2,
                 target: str = "sharpened", max_epochs: int = 50, batch_size: int = 256,
                 lr: float = 1e-3, tol: float = 1e-3, checkpoint_every: int = 5, device="auto",
                 random_state=0, progress: bool = False):
        super().__init__(n_clusters=n_clusters, autoencoder=autoencoder, max_epochs=max_epochs,
                         batch_size=batch_size, lr=lr, tol=tol,
                         checkpoint_every=checkpoint_every, device=device,
                         random_state=random_state, progress=progress)
        self.corruption = corruption
        self.target = target

    def _default_autoencoder(self):
        return Autoencoder(architecture="conv", corruption=0.2)

    def _init_head(self, Z, gen):
        if not 0 <= float(self.corruption) < 1:
            raise ValueError(f"corruption must be in [0, 1), got {self.corruption}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {sorted(TARGETS)}, got {self.target!r}")
        centres, labels = kmeans_start(Z, self.n_clusters, gen)
        return gaussian_softmax_head(Z.cpu(), centres.to(Z.dtype), labels)

    def _epoch_start(self, Z):
        with torch.no_grad():
            self._target = TARGETS[self.target](torch.softmax(self.head_(Z), 1))

    def _loss(self, x, idx, gen):
        z_noisy, rec = self._reconstruction(corrupt(x, float(self.corruption), gen), x)
        p_noisy = torch.softmax(self.head_(z_noisy), 1)
        return kl_rows(self._target[idx], p_noisy).mean() + rec, z_noisy

    def _labels(self, Z):
        with torch.no_grad():
            return self.head_(Z).argmax(1)

    def predict_proba(self, X):
        """p, the softmax head's output for the embedded (clean) rows."""
        Z = torch.as_tensor(self.transform(X), dtype=torch.float32, device=self._device)
        with torch.no_grad():
            return torch.softmax(self.head_(Z), 1).cpu().numpy()
