"""DeepDPM end to end: an autoencoder's embedding and a DeepDPM clustering of it,
trained in alternation so that the encoder is shaped by the clustering while K
stays inferred (Ronen, Finder & Freifeld 2022, section 4, "end-to-end" mode).

1. Pretrain the autoencoder on reconstruction; embed; fit DeepDPM (K inferred).
2. ``alternations`` times: fine-tune the autoencoder for ``finetune_epochs`` on DCN's
   loss (Yang et al. 2017, eq. 5) with the current clusters as its k-means clusters;
   re-embed; re-fit DeepDPM warm-started from the current labels
   (``DeepDPM(init_labels=...)``), its split/merge moves free to change K.

The fine-tuning loss of a point, as in the DeepDPM reference code's alternation::

    rec_weight * |g(f(x_i)) - x_i|^2  +  beta/2 * |f(x_i) - m_{s_i}|^2

with s_i the nearest centre, the centres starting at the DeepDPM clusters' means of
the embedding and moving as DCN's running means (eq. 8; :mod:`.dcn`).  The defaults,
rec_weight 0.005 on the squared error summed over the pixels and beta 1, are the
reference code's.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from bnpdeep.inference.base import CheckpointedEstimator, resolve_device
from bnpdeep.inference.deep.autoencoder import Autoencoder, batches, corrupt, embed
from bnpdeep.inference.deep.dcn import kmeans_term, running_mean_update
from sklearn.base import TransformerMixin, clone
from tqdm.auto import tqdm


class DeepDPMAE(TransformerMixin, CheckpointedEstimator):
    """DeepDPM end to end on raw inputs: autoencoder and DeepDPM in alternation, K
    inferred.

    Parameters
    ----------
    autoencoder : Autoencoder, optional
        Pretrained (cloned) first; default ``Autoencoder()`` (DEC's MLP).  Its
        random_state, device and progress are this estimator's.
    deepdpm : DeepDPM, optional
        The clustering fitted on each embedding (cloned); default ``DeepDPM()``.
    alternations : int, default 3
        Fine-tune / re-cluster rounds after the first clustering.
    finetune_epochs : int, default 10
        Autoencoder epochs per round.
    rec_weight : float, default 0.005
        Weight of the squared reconstruction error (summed over a row's pixels).
    beta : float, default 1.0
        Weight of the k-means term beta/2 |f(x) - m_s|^2.
    batch_size : int, default 256
    lr : float, default 1e-3
        Adam's learning rate for the fine-tuning.
    device, random_state, progress : as every bnpdeep estimator.

    Attributes
    ----------
    labels_, n_clusters_, autoencoder_ (fine-tuned), deepdpm_ (the last clustering),
    history_ (K and the fine-tuning loss per round), embedding_ (the last embedding).

    ``fit(X, checkpoint_dir=..., resume=True)`` resumes at the last finished round
    (the pretraining resumes on the autoencoder's own checkpoint).
    """

    _data_warnings = False

    method_name = "deepdpm-ae"
    _CHECKPOINT = "deepdpm_ae_checkpoint.pt"

    def __init__(self, autoencoder=None, deepdpm=None, alternations: int = 3,
                 finetune_epochs: int = 10, rec_weight: float = 0.005, beta: float = 1.0,
                 batch_size: int = 256,
                 lr: float = 1e-3, device="auto", random_state=0, progress: bool = False):
        self.autoencoder = autoencoder
        self.deepdpm = deepdpm
        self.alternations = alternations
        self.finetune_epochs = finetune_epochs
        self.rec_weight = rec_weight
        self.beta = beta
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.random_state = random_state
        self.progress = progress

    def _default_autoencoder(self) -> Autoencoder:
        return Autoencoder()

    def _check_params(self):
        for name in ("alternations", "finetune_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("rec_weight", "beta"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def _fit(self, X):
        from bnpdeep.inference.deep.base import fit_autoencoder

        self._check_params()
        self._device = resolve_device(self.device)
        seed = 0 if self.random_state is None else int(self.random_state)
        self.autoencoder_ = fit_autoencoder(self, X)
        net = self.autoencoder_.net_
        Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        gen = torch.Generator().manual_seed(seed)
        optim = torch.optim.Adam(net.parameters(), lr=float(self.lr))
        saved = self._saved_state()
        if saved is not None:
            net.load_state_dict(saved["net"])
            optim.load_state_dict(saved["optim"])
            gen.set_state(saved["rng"])
            self.history_, labels = list(saved["history"]), saved["labels"].numpy()
            start = len(self.history_) - 1
            self.deepdpm_ = saved["deepdpm"]
        else:
            self.history_, labels, start = [], None, -1
        bar = tqdm(range(start, int(self.alternations)), desc=self.method_name,
                   unit="round", file=sys.stderr, disable=not self.progress, leave=False)
        for round_ in bar:
            loss = None
            if round_ >= 0:
                loss = self._finetune(net, Xt, torch.as_tensor(labels, device=self._device),
                                      optim, gen)
            Z = embed(net, Xt).cpu().double().numpy()
            self.deepdpm_ = self._cluster(Z, labels)
            labels = np.asarray(self.deepdpm_.labels_)
            self.history_.append({"round": round_ + 1, "K": int(self.deepdpm_.n_clusters_),
                                  "finetune_loss": loss})
            bar.set_postfix(K=self.history_[-1]["K"], refresh=False)
            if self._checkpointing:
                self._save_state({"net": net.state_dict(), "optim": optim.state_dict(),
                                  "rng": gen.get_state(), "history": self.history_,
                                  "labels": torch.as_tensor(labels),
                                  "deepdpm": self.deepdpm_})
        self.embedding_ = embed(net, Xt).cpu().double().numpy()
        self.labels_ = labels.astype(np.int64)
        self.n_clusters_ = int(self.deepdpm_.n_clusters_)

    def _cluster(self, Z: np.ndarray, labels):
        from bnpdeep.inference.deepdpm import DeepDPM

        dp = DeepDPM() if self.deepdpm is None else clone(self.deepdpm)
        dp.set_params(random_state=self.random_state, device=self.device, progress=False,
                      init_labels=None if labels is None else np.asarray(labels, np.int64))
        return dp.fit(Z)

    def _finetune(self, net, X, labels, optim, gen) -> float:
        """DCN steps (network, then assignments and running-mean centres) for
        ``finetune_epochs`` passes, from the centres of ``labels``; the mean loss."""
        k = int(labels.max()) + 1
        Z = embed(net, X).double()
        # the running mean from nothing: each cluster's mean and size
        centres, counts = running_mean_update(
            torch.zeros(k, Z.shape[1], dtype=torch.float64, device=Z.device),
            torch.zeros(k, dtype=torch.float64, device=Z.device), Z, labels)
        assign = labels.clone()
        total = 0.0
        for _ in range(int(self.finetune_epochs)):
            for idx in batches(X.shape[0], self.batch_size, gen):
                idx = idx.to(X.device)
                x = X[idx]
                z, x_hat = net(corrupt(x, float(self.autoencoder_.corruption), gen))
                rec = ((x_hat - x) ** 2).sum(1)
                dist = kmeans_term(z, centres.to(z.dtype), assign[idx])
                loss = (float(self.rec_weight) * rec + float(self.beta) * dist).mean()
                optim.zero_grad()
                loss.backward()
                optim.step()
                zd = z.detach().double()
                assign[idx] = torch.cdist(zd, centres).argmin(1)
                centres, counts = running_mean_update(centres, counts, zd, assign[idx])
                total += float(loss.detach()) * idx.numel()
        return total / max(1, X.shape[0] * int(self.finetune_epochs))

    def transform(self, X) -> np.ndarray:
        """The fine-tuned encoder's embedding of the rows of X."""
        return self._embed(self._validate_predict_data(X))

    def _embed(self, X) -> np.ndarray:
        Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        return embed(self.autoencoder_.net_, Xt).cpu().double().numpy()

    def _predict(self, X):
        return self.deepdpm_.predict(self._embed(X))

