"""What the deep clustering estimators with a given K (DEC, IDEC, DCN, DEPICT) share.

Each pretrains an :class:`~bnpdeep.inference.deep.autoencoder.Autoencoder` on the
rows of X, initialises its clustering from k-means on the embedding, and then
trains the encoder (and, where the loss has one, the decoder and a clustering
head) by minibatch Adam on its own loss, one pass over the data per epoch.  At the
start of every epoch the method may recompute a target from the whole data set
(DEC's and DEPICT's auxiliary distributions).  Training stops when fewer than
``tol`` of the points changed their label over an epoch (DEC, section 3.2) or after
``max_epochs``.

A subclass implements ``_init_head(Z, gen)``, ``_loss(x, idx, gen)``, ``_labels(Z)``
and, optionally, ``_epoch_start(Z)`` (Z: the embedding of every row, computed once
per epoch) and ``_after_step(z, idx)``.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
from bnpdeep.inference.base import CheckpointedEstimator, resolve_device
from bnpdeep.inference.deep.autoencoder import Autoencoder, batches, embed
from sklearn.base import TransformerMixin, clone
from sklearn.cluster import KMeans as SkKMeans
from torch import nn
from tqdm.auto import tqdm


def fit_autoencoder(est, X: np.ndarray) -> Autoencoder:
    """The estimator's autoencoder, pretrained on X: a fitted ``est.autoencoder`` is
    copied and used as it is (so that several methods can share one pretraining);
    otherwise a clone of it (default ``est._default_autoencoder()``) is pretrained with
    the estimator's ``random_state``, ``device`` and ``progress`` and its checkpoint
    folder (the pretraining resumes on its own file there)."""
    if est.autoencoder is not None and hasattr(est.autoencoder, "net_"):
        if est.autoencoder.n_features_in_ != X.shape[1]:
            raise ValueError(f"the fitted autoencoder takes {est.autoencoder.n_features_in_} "
                             f"features; X has {X.shape[1]}")
        ae = copy.deepcopy(est.autoencoder)
        ae._device = resolve_device(est.device)
        ae.net_.to(ae._device)
        return ae
    ae = est._default_autoencoder() if est.autoencoder is None else clone(est.autoencoder)
    ae.set_params(random_state=est.random_state, device=est.device, progress=est.progress)
    return ae.fit(X, checkpoint_dir=est._checkpoint_dir, resume=est._resume)


def kmeans_start(Z: torch.Tensor, k: int, gen: torch.Generator):
    """k-means on the embedding (20 restarts, as DEC), seeded from ``gen``: centres
    (float64 tensor) and labels (long tensor)."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    km = SkKMeans(int(k), n_init=20, random_state=seed).fit(Z.cpu().double().numpy())
    return (torch.as_tensor(km.cluster_centers_, dtype=torch.float64),
            torch.as_tensor(km.labels_, dtype=torch.long))


class DeepClustering(TransformerMixin, CheckpointedEstimator):
    """Base of the estimators that train an autoencoder's encoder for a given K."""

    _data_warnings = False

    _CHECKPOINT = "deep_clustering_checkpoint.pt"

    def __init__(self, n_clusters: int = 10, autoencoder=None, max_epochs: int = 100,
                 batch_size: int = 256, lr: float = 1e-3, tol: float = 1e-3,
                 checkpoint_every: int = 5, device="auto", random_state=0,
                 progress: bool = False):
        self.n_clusters = n_clusters
        self.autoencoder = autoencoder
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.tol = tol
        self.checkpoint_every = checkpoint_every
        self.device = device
        self.random_state = random_state
        self.progress = progress

    # -- the subclass's part --------------------------------------------------------
    def _default_autoencoder(self) -> Autoencoder:
        return Autoencoder()

    def _init_head(self, Z: torch.Tensor, gen: torch.Generator) -> nn.Module:
        raise NotImplementedError

    def _loss(self, x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator):
        raise NotImplementedError

    def _labels(self, Z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _epoch_start(self, Z: torch.Tensor):
        pass

    def _after_step(self, z: torch.Tensor, idx: torch.Tensor):
        pass

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict):
        pass

    # -- shared -------------------------------------------------------------------
    def _check_common(self, X):
        if int(self.n_clusters) < 1:
            raise ValueError(f"n_clusters must be at least 1, got {self.n_clusters}")
        if int(self.n_clusters) > X.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} is more than the {X.shape[0]} rows")
        for name in ("max_epochs", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < (0 if name == "max_epochs" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= float(self.tol) < 1:
            raise ValueError(f"tol must be in [0, 1), got {self.tol}")

    def _fit(self, X):
        self._check_common(X)
        self._device = resolve_device(self.device)
        seed = 0 if self.random_state is None else int(self.random_state)
        self.autoencoder_ = fit_autoencoder(self, X)
        self.net_ = self.autoencoder_.net_
        Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            self.head_ = self._init_head(embed(self.net_, Xt), gen).to(self._device)
            params = list(self.head_.parameters()) + list(self.net_.parameters())
            optim = torch.optim.Adam(params, lr=float(self.lr))
            self._train(Xt, optim, gen)
        Z = embed(self.net_, Xt)
        self.labels_ = self._labels(Z).cpu().numpy().astype(np.int64)
        self.n_clusters_ = int(self.n_clusters)

    def _train(self, X: torch.Tensor, optim, gen: torch.Generator):
        self.history_, start = [], 0
        saved = self._saved_state()
        if saved is not None:
            self.net_.load_state_dict(saved["net"])
            self.head_.load_state_dict(saved["head"])
            optim.load_state_dict(saved["optim"])
            gen.set_state(saved["rng"])
            self._load_extra_state(saved["extra"])
            self.history_, start = list(saved["history"]), int(saved["epoch"])
        Z = embed(self.net_, X)
        labels = self._labels(Z) if saved is None else saved["labels"].to(X.device)
        self.converged_ = bool(self.history_ and self.history_[-1]["changed"] < self.tol)
        bar = tqdm(range(start, int(self.max_epochs)), desc=self.method_name, unit="epoch",
                   file=sys.stderr, disable=not self.progress or self.converged_, leave=False)
        for epoch in bar:
            if self.converged_:
                break
            self._epoch_start(Z)
            total = 0.0
            for idx in batches(X.shape[0], self.batch_size, gen):
                idx = idx.to(X.device)
                loss, z = self._loss(X[idx], idx, gen)
                optim.zero_grad()
                loss.backward()
                optim.step()
                self._after_step(z.detach(), idx)
                total += float(loss.detach()) * idx.numel()
            Z = embed(self.net_, X)
            new = self._labels(Z)
            changed = float((new != labels).double().mean())
            labels = new
            self.history_.append({"epoch": epoch + 1, "loss": total / X.shape[0],
                                  "changed": changed})
            if not np.isfinite(self.history_[-1]["loss"]):
                raise FloatingPointError(f"{type(self).__name__} diverged at epoch {epoch + 1}; "
                                         f"lower lr (now {self.lr})")
            bar.set_postfix(loss=f"{self.history_[-1]['loss']:.4g}", changed=f"{changed:.4f}",
                            refresh=False)
            self.converged_ = changed < float(self.tol)
            if self._checkpointing and ((epoch + 1) % int(self.checkpoint_every) == 0
                                        or self.converged_):
                self._save_state({"net": self.net_.state_dict(),
                                  "head": self.head_.state_dict(),
                                  "optim": optim.state_dict(), "rng": gen.get_state(),
                                  "extra": self._extra_state(), "history": self.history_,
                                  "epoch": epoch + 1, "labels": labels.cpu()})
        self.n_epochs_ = len(self.history_)

    def transform(self, X) -> np.ndarray:
        """The trained encoder's embedding of the rows of X."""
        X = self._validate_predict_data(X)
        Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        return embed(self.net_, Xt).cpu().numpy().astype(np.float64)

    def _predict(self, X):
        Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        return self._labels(embed(self.net_, Xt)).cpu().numpy().astype(np.int64)

    def _reconstruction(self, x_in: torch.Tensor, x_target: torch.Tensor):
        """(embedding, mean squared reconstruction error of x_target from x_in)."""
        z, x_hat = self.net_(x_in)
        return z, ((x_hat - x_target) ** 2).mean()
