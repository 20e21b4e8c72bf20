"""Deep Embedded Clustering (DEC; Xie, Girshick & Farhadi, ICML 2016) and Improved DEC
(IDEC; Guo, Gao, Liu & Yin, IJCAI 2017).

Soft assignment of embedded point z_i to centre mu_j by a Student-t kernel with
alpha degrees of freedom (DEC eq. 1)::

    q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2) / sum_j' (same for j')

Target distribution, sharpened and normalised by the soft cluster frequencies
f_j = sum_i q_ij (eq. 3)::

    p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')

DEC minimises KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij) (eq. 2) over the encoder
and the centres, with P recomputed from the whole data set every epoch (the paper:
every T iterations) and held fixed in between.  The gradients (eq. 4, 5) are::

    dL/dz_i  =  (alpha+1)/alpha sum_j (1 + |z_i - mu_j|^2/alpha)^-1 (p_ij - q_ij)(z_i - mu_j)
    dL/dmu_j = -(alpha+1)/alpha sum_i (1 + |z_i - mu_j|^2/alpha)^-1 (p_ij - q_ij)(z_i - mu_j)

DEC discards the decoder after pretraining.  IDEC keeps it: its loss is the
reconstruction error plus gamma times DEC's KL (IDEC eq. 7, gamma = 0.1), so the
embedding keeps the local structure the clustering loss would distort.
"""

from __future__ import annotations

import torch
from bnpdeep.inference.deep.base import DeepClustering, kmeans_start
from torch import nn


def student_t_assign(z: torch.Tensor, centres: torch.Tensor, alpha: float = 1.0):
    """q (n, K): DEC eq. 1, computed in log space."""
    d2 = torch.cdist(z, centres).pow(2)
    logits = -(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha)
    return torch.softmax(logits, dim=1)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """p (n, K): DEC eq. 3."""
    w = q.pow(2) / q.sum(0)
    return w / w.sum(1, keepdim=True)


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_j p_ij log(p_ij / q_ij) for each row i (0 log 0 = 0)."""
    return (torch.xlogy(p, p) - p * torch.log(q.clamp_min(1e-30))).sum(1)


class Centres(nn.Module):
    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.centres = nn.Parameter(centres.clone())


class DEC(DeepClustering):
    """DEC: an encoder and K centres trained by KL(P || Q) (Xie et al. 2016).

    Parameters
    ----------
    n_clusters : int, default 10
    autoencoder : Autoencoder, optional
        The autoencoder to pretrain (cloned); default ``Autoencoder()``, DEC's
        d-500-500-2000-10 stack.  Its random_state, device and progress are this
        estimator's.
    alpha : float, default 1.0
        Degrees of freedom of the Student-t kernel (DEC fixes 1).
    max_epochs : int, default 100
        Passes over the data after pretraining; P is recomputed before each.
    batch_size : int, default 256
    lr : float, default 1e-3
        Adam's learning rate for the encoder and the centres (the paper uses SGD
        with momentum; Adam is the common choice of later implementations).
    tol : float, default 1e-3
        Stop when fewer than this fraction of the labels changed over an epoch
        (DEC's 0.1%).
    checkpoint_every : int, default 5
    device, random_state, progress : as every bnpdeep estimator.

    Attributes
    ----------
    labels_, n_clusters_, autoencoder_, net_ (the fine-tuned autoencoder),
    cluster_centers_ (K, embedding_dim), history_ (loss and changed labels per epoch).
    """

    method_name = "dec"
    _CHECKPOINT = "dec_checkpoint.pt"

    def __init__(self, n_clusters: int = 10, autoencoder=None, alpha: float = 1.0,
                 max_epochs: int = 100, batch_size: int = 256, lr: float = 1e-3,
                 tol: float = 1e-3, checkpoint_every: int = 5, device="auto",
                 random_state=0, progress: bool = False):
        super().__init__(n_clusters=n_clusters, autoencoder=autoencoder, max_epochs=max_epochs,
                         batch_size=batch_size, lr=lr, tol=tol,
                         checkpoint_every=checkpoint_every, device=device,
                         random_state=random_state, progress=progress)
        self.alpha = alpha

    @property
    def _gamma(self) -> float | None:
        """Weight of the clustering term against reconstruction; None: no decoder."""
        return None

    def _init_head(self, Z, gen):
        if not float(self.alpha) > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        centres, _ = kmeans_start(Z, self.n_clusters, gen)
        return Centres(centres.to(Z.dtype))

    def _epoch_start(self, Z):
        with torch.no_grad():
            q = student_t_assign(Z, self.head_.centres, float(self.alpha))
            self._target = target_distribution(q)

    def _loss(self, x, idx, gen):
        gamma = self._gamma
        if gamma is None:
            z = self.net_.encoder(x)
            rec = 0.0
        else:
            z, rec = self._reconstruction(x, x)
        q = student_t_assign(z, self.head_.centres, float(self.alpha))
        kl = kl_rows(self._target[idx], q).mean()
        return (kl if gamma is None else rec + gamma * kl), z

    def _labels(self, Z):
        return torch.cdist(Z, self.head_.centres.detach()).argmin(1)

    def predict_proba(self, X):
        """q, the Student-t soft assignments (eq. 1) of the embedded rows."""
        Z = torch.as_tensor(self.transform(X), dtype=torch.float32, device=self._device)
        with torch.no_grad():
            return student_t_assign(Z, self.head_.centres, float(self.alpha)).cpu().numpy()

    @property
    def cluster_centers_(self):
        self._check_is_fitted()
        return self.head_.centres.detach().cpu().double().numpy()


class IDEC(DEC):
    """IDEC: DEC's clustering loss plus the autoencoder's reconstruction error,
    L = L_rec + gamma L_KL (Guo et al. 2017, eq. 7).

    Parameters are DEC's, plus ``gamma`` (default 0.1, the paper's).
    """

    method_name = "idec"
    _CHECKPOINT = "idec_checkpoint.pt"

    def __init__(self, n_clusters: int = 10, autoencoder=None, gamma: float = 0.1,
                 alpha: float = 1.0, max_epochs: int = 100, batch_size: int = 256,
                 lr: float = 1e-3, tol: float = 1e-3, checkpoint_every: int = 5,
                 device="auto", random_state=0, progress: bool = False):
        super().__init__(n_clusters=n_clusters, autoencoder=autoencoder, alpha=alpha,
                         max_epochs=max_epochs, batch_size=batch_size, lr=lr, tol=tol,
                         checkpoint_every=checkpoint_every, device=device,
                         random_state=random_state, progress=progress)
        self.gamma = gamma

    @property
    def _gamma(self):
        if not float(self.gamma) >= 0:
            raise ValueError(f"gamma must be non-negative, got {self.gamma}")
        return float(self.gamma)
