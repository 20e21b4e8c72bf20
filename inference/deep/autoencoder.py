"""Autoencoders that learn the features the deep clustering methods cluster.

Two architectures, both mapping a row of pixels (flattened) to an embedding of
``embedding_dim`` numbers and back:

* ``"mlp"``: the fully connected stack of DEC (Xie et al. 2016, section 4.1:
  d-500-500-2000-10, ReLU, linear embedding and output), used by IDEC and DCN too;
* ``"conv"``: three strided convolutions (5x5, 5x5, 3x3; 32, 64, 128 channels) and
  a linear embedding, mirrored by transposed convolutions -- the small convolutional
  autoencoder of DEPICT (Ghasedi Dizaji et al. 2017) and of the conv-DEC variants.

Pretraining minimises the mean squared reconstruction error of each pixel with Adam;
with ``corruption > 0`` a fraction of each input's pixels is set to zero and the clean
row is the target (a denoising autoencoder, Vincent et al. 2008).  The estimator
:class:`Autoencoder` is a scikit-learn transformer: ``fit`` pretrains (resumable
from checkpoints), ``transform`` embeds.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch
from bnpdeep.inference.base import Checkpointing, ValidatedEstimator, resolve_device
from sklearn.base import TransformerMixin
from sklearn.exceptions import NotFittedError
from torch import nn
from tqdm.auto import tqdm

from bnpdeep.data import DataWarning


class MLPAutoencoder(nn.Module):
    """x (n, d) -> z (n, embedding_dim) -> x_hat (n, d), fully connected with ReLU."""

    def __init__(self, n_features: int, embedding_dim: int = 10,
                 hidden=(500, 500, 2000)):
        super().__init__()
        sizes = [int(n_features), *map(int, hidden)]
        enc, dec = [], []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.append(nn.Linear(sizes[-1], embedding_dim))
        dec.append(nn.Linear(embedding_dim, sizes[-1]))
        for a, b in zip(sizes[:0:-1], sizes[-2::-1], strict=True):
            dec += [nn.ReLU(), nn.Linear(a, b)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x):
        z = self.encoder(x)
        return z, self.decoder(z)


class ConvAutoencoder(nn.Module):
    """Rows of C*H*W pixels, read as (C, H, W) images: three stride-2 convolutions, a
    linear embedding, and their transposes back to the input's exact size."""

    CHANNELS = (32, 64, 128)
    KERNELS = (5, 5, 3)

    def __init__(self, image_shape, embedding_dim: int = 10):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        self.image_shape = (c, h, w)
        convs, deconvs, self.sizes = [], [], [(h, w)]
        chans = [c, *self.CHANNELS]
        for a, b, k in zip(chans[:-1], chans[1:], self.KERNELS, strict=True):
            convs.append(nn.Conv2d(a, b, k, stride=2, padding=k // 2))
            hh, ww = self.sizes[-1]
            self.sizes.append(((hh + 2 * (k // 2) - k) // 2 + 1, (ww + 2 * (k // 2) - k) // 2 + 1))
        for a, b, k in zip(chans[:0:-1], chans[-2::-1], self.KERNELS[::-1], strict=True):
            deconvs.append(nn.ConvTranspose2d(a, b, k, stride=2, padding=k // 2))
        self.convs = nn.ModuleList(convs)
        self.deconvs = nn.ModuleList(deconvs)
        hh, ww = self.sizes[-1]
        flat = self.CHANNELS[-1] * hh * ww
        self.to_embedding = nn.Linear(flat, embedding_dim)
        self.from_embedding = nn.Linear(embedding_dim, flat)

    def encode(self, x):
        h = x.reshape(-1, *self.image_shape)
        for conv in self.convs:
            h = torch.relu(conv(h))
        return self.to_embedding(h.flatten(1))

    def decode(self, z):
        hh, ww = self.sizes[-1]
        h = torch.relu(self.from_embedding(z)).reshape(-1, self.CHANNELS[-1], hh, ww)
        out_sizes = self.sizes[-2::-1]
        for i, (deconv, size) in enumerate(zip(self.deconvs, out_sizes, strict=True)):
            h = deconv(h, output_size=size)
            if i < len(self.deconvs) - 1:
                h = torch.relu(h)
        return h.flatten(1)

    # the two halves as the deep clustering methods call them
    @property
    def encoder(self):
        return self.encode

    @property
    def decoder(self):
        return self.decode

    def forward(self, x):
        z = self.encode(x)
        return z, self.decode(z)


def build_autoencoder(architecture: str, n_features: int, embedding_dim: int, hidden,
                      image_shape) -> nn.Module:
    """The network an ``architecture`` name stands for, checked against the data."""
    if architecture == "mlp":
        return MLPAutoencoder(n_features, embedding_dim, hidden)
    if architecture == "conv":
        if image_shape is None:
            side = math.isqrt(n_features)
            if side * side != n_features:
                raise ValueError(
                    f"architecture='conv' needs image_shape=(channels, height, width): rows of "
                    f"{n_features} pixels are not square single-channel images")
            image_shape = (1, side, side)
        shape = tuple(int(s) for s in image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or int(np.prod(shape)) != n_features:
            raise ValueError(f"image_shape {tuple(image_shape)} does not hold the rows' "
                             f"{n_features} pixels")
        return ConvAutoencoder(shape, embedding_dim)
    raise ValueError(f"architecture must be 'mlp' or 'conv', got {architecture!r}")


def corrupt(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Masking noise: each pixel set to zero with probability ``fraction``."""
    if fraction <= 0:
        return x
    keep = torch.rand(x.shape, generator=gen, device="cpu").to(x.device) >= fraction
    return x * keep


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Index tensors of one shuffled pass over n rows."""
    return torch.split(torch.randperm(n, generator=gen), int(batch_size))


def embed(net: nn.Module, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The encoder's embedding of every row, without gradients."""
    with torch.no_grad():
        return torch.cat([net.encoder(X[i:i + batch_size])
                          for i in range(0, X.shape[0], batch_size)])


class Autoencoder(TransformerMixin, Checkpointing, ValidatedEstimator):
    """An autoencoder pretrained on the rows of X (pixels, flattened), as a transformer.

    Parameters
    ----------
    architecture : {"mlp", "conv"}, default "mlp"
        See the module docstring.
    embedding_dim : int, default 10
        Size of the embedding (DEC's 10).
    hidden : tuple of int, default (500, 500, 2000)
        Widths of the MLP's encoder layers (the decoder mirrors them).
    image_shape : tuple, optional
        (channels, height, width) of a row for ``"conv"``; default: one square channel.
    corruption : float, default 0.0
        Fraction of pixels zeroed in each training input (denoising); 0: plain.
    epochs : int, default 100
        Passes over the data.
    batch_size : int, default 256
    lr : float, default 1e-3
        Adam's learning rate.
    checkpoint_every : int, default 10
        Epochs between checkpoints when ``fit(..., checkpoint_dir=...)``.
    device : {"auto", "cpu", "cuda", ...}, default "auto"
    random_state : int, default 0
    progress : bool, default False

    Attributes
    ----------
    net_ : nn.Module
        The trained autoencoder (``net_.encoder`` and ``net_.decoder``).
    loss_curve_ : list of float
        Mean reconstruction error per epoch.
    """

    _data_warnings = False

    method_name = "autoencoder"
    _CHECKPOINT = "autoencoder_checkpoint.pt"

    def __init__(self, architecture: str = "mlp", embedding_dim: int = 10,
                 hidden=(500, 500, 2000), image_shape=None, corruption: float = 0.0,
                 epochs: int = 100, batch_size: int = 256, lr: float = 1e-3,
                 checkpoint_every: int = 10, device="auto", random_state=0,
                 progress: bool = False):
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        self.hidden = hidden
        self.image_shape = image_shape
        self.corruption = corruption
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.checkpoint_every = checkpoint_every
        self.device = device
        self.random_state = random_state
        self.progress = progress

    def _check_params(self):
        for name in ("embedding_dim", "epochs", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= float(self.corruption) < 1:
            raise ValueError(f"corruption must be in [0, 1), got {self.corruption}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def _fit(self, X):
        self._check_params()
        _warn_unless_unit_scale(X)
        self._device = resolve_device(self.device)
        with torch.random.fork_rng():
            torch.manual_seed(0 if self.random_state is None else int(self.random_state))
            self.net_ = build_autoencoder(self.architecture, X.shape[1],
                                          int(self.embedding_dim), self.hidden,
                                          self.image_shape).to(self._device)
            Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
            self.loss_curve_ = pretrain(self, Xt)
        self.embedding_ = embed(self.net_, Xt).cpu().double().numpy()

    def _check_is_fitted(self):
        if not hasattr(self, "net_"):
            raise NotFittedError("This Autoencoder instance is not fitted yet; call fit(X) "
                                 "first.")


    def transform(self, X) -> np.ndarray:
        X = self._validate_predict_data(X)
        Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        return embed(self.net_, Xt).cpu().numpy().astype(np.float64)

    def reconstruct(self, X) -> np.ndarray:
        """decoder(encoder(x)) for each row."""
        X = self._validate_predict_data(X)
        Xt = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        with torch.no_grad():
            return self.net_(Xt)[1].cpu().numpy().astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags


# the range of max |x| the nets' defaults (weight initialisation, Adam's learning rate
# and epsilon) are made for: inputs of order 1, such as images scaled to [0, 1]
UNIT_RANGE = (1e-2, 1e2)


def _warn_unless_unit_scale(X) -> None:
    """A :class:`~bnpdeep.data.DataWarning` when X's largest absolute value lies
    outside :data:`UNIT_RANGE`: the reconstruction loss and its gradients scale with
    the square of the values, so the same learning rate diverges on pixel values of
    0-255 and stalls below Adam's epsilon on values of 1e-3."""
    top = float(np.abs(X).max()) if X.size else 0.0
    if top > 0 and not UNIT_RANGE[0] <= top <= UNIT_RANGE[1]:
        warnings.warn(f"X's largest absolute value is {top:.3g}; the autoencoders are made "
                      f"for inputs of order 1 (images in [0, 1]): divide X by {top:.3g}",
                      DataWarning, stacklevel=5)


def pretrain(est, X: torch.Tensor, net: nn.Module | None = None, epochs=None,
             checkpoint_tag: str = "pretrain") -> list[float]:
    """Train ``net`` (default ``est.net_``) to reconstruct X for ``epochs`` passes with
    the estimator's batch size, learning rate and corruption; resumes from and saves
    to the estimator's checkpoint (entries under ``checkpoint_tag``).  Returns the
    mean reconstruction error of each epoch."""
    net = est.net_ if net is None else net
    epochs = int(est.epochs if epochs is None else epochs)
    gen = torch.Generator().manual_seed(0 if est.random_state is None
                                        else int(est.random_state))
    optim = torch.optim.Adam(net.parameters(), lr=float(est.lr))
    curve, start = [], 0
    saved = est._saved_state()
    if saved is not None and checkpoint_tag in saved:
        state = saved[checkpoint_tag]
        net.load_state_dict(state["net"])
        optim.load_state_dict(state["optim"])
        gen.set_state(state["rng"])
        curve, start = list(state["curve"]), int(state["epoch"])
    bar = tqdm(range(start, epochs), desc=checkpoint_tag, unit="epoch", file=sys.stderr,
               disable=not est.progress, leave=False)
    for epoch in bar:
        total = 0.0
        for idx in batches(X.shape[0], est.batch_size, gen):
            x = X[idx.to(X.device)]
            _, x_hat = net(corrupt(x, float(est.corruption), gen))
            loss = ((x_hat - x) ** 2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += float(loss.detach()) * idx.numel()
        curve.append(total / X.shape[0])
        if not math.isfinite(curve[-1]):
            raise FloatingPointError(
                f"autoencoder pretraining diverged at epoch {epoch + 1} (reconstruction "
                f"error {curve[-1]}); lower lr (now {est.lr}) or rescale X to [0, 1]")
        bar.set_postfix(loss=f"{curve[-1]:.4g}", refresh=False)
        if est._checkpointing and ((epoch + 1) % int(est.checkpoint_every) == 0
                                   or epoch + 1 == epochs):
            est._save_state({checkpoint_tag: {"net": net.state_dict(),
                                              "optim": optim.state_dict(),
                                              "rng": gen.get_state(), "curve": curve,
                                              "epoch": epoch + 1}})
    return curve
