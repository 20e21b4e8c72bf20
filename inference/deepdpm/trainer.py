"""DeepDPM (Ronen, Finder & Freifeld, CVPR 2022): amortized clustering with unknown K.

Each epoch alternates, as in the paper's Sec. 3:

* **network step** (every minibatch).  E-step targets from the current mixture,
  r^E_ik = pi_k p(x_i | theta_k) / sum_l pi_l p(x_i | theta_l) (eq. 2, log space,
  float64), and the clustering loss KL(r^E || r) between them and the net's
  r = f_cl(x) (or the reverse KL, or Pyro's ELBO with the nets as the guide).
  Each sub-clustering net minimises the isotropic loss
  sum_i sum_j r~_ij ||x_i - mu~_{z_i j}||^2 over the points of its cluster
  (eq. 5), z_i = argmax_k r_ik.
* **M-step** (end of epoch).  Weighted MAP of the component parameters under
  the family's conjugate prior, weighted by the net's own r (eq. 3), weights
  pi_k = (N_k + alpha / K) / (N + alpha); the same for the two sub-clusters of
  every cluster, weighted by 1[z_i = k] r~_ij.
* **split / merge** (after ``burn_in_epochs``, every ``move_every`` epochs,
  alternating).  Split every cluster into its sub-clusters with probability
  min(1, H_s), H_s the DP posterior ratio of the hard partitions (eq. 7,
  :func:`bnpdeep.inference.moves.log_split_ratio`); merge pairs among each
  cluster's 3 nearest neighbours, in random order, each cluster at most once per
  step, with H_m = 1 / H_s of the reverse split.  The nets change shape
  (:mod:`.nets`) and the optimiser restarts.

Three additions to the paper, each switchable, each there because a start from
one cluster otherwise stalls on the benchmark data (benchmarks/README.md):

* ``split_refine``: before a split step every cluster's sub-clusters are refined
  by EM of its two-component sub-mixture with the family's own likelihood
  (:func:`~bnpdeep.inference.subpartition.refine_subclusters`); the isotropic
  sub-net loss only ever proposes 2-means-like halves.
* ``carve``: a cluster whose split is rejected proposes carving local groups
  around random members, judged by the same H_s.
* ``settle_max``: after an accepted move the mixture is held (no M-step, moves
  wait) until the net's argmax has picked up the new clusters.

Student-t components (``StudentNIW``, a Gaussian scale mixture) fit as the t
mixture's ECM (Peel & McLachlan 2000): the M-step's statistics weight row i in
component k by r_ik u_ik, u_ik = E[w_i | x_i, theta_k] = (df + d) / (df + delta_ik)
(``family.expected_suff_stats``), and H_s / H_m compare the marginal likelihoods of
the rows with the scales integrated out, each grouping with its own fitted scales
(``family.log_evidence``, Chib's identity).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pyro
import torch
from bnpdeep.models import DirichletProcess, DPMixture
from pyro.infer import SVI
from tqdm.auto import tqdm

from bnpdeep.linalg import DTYPE, as_tensor

from ..base import (
    CheckpointedEstimator,
    own_pyro_state,
    resolve_device,
    warn_not_converged,
)
from ..draws import approximate_posterior_arrays
from ..guide_moves import GuideSplitMerge
from ..hyperparameters import (
    HyperparameterStep,
    maximize_alpha,
    plain_values,
)
from ..mcmc import default_model, relabel
from ..subpartition import two_means
from .guide import CHUNK, DeepDPMGuide
from .loss import DeepDPMLoss, JointAdam, NetRates


class DeepDPM(CheckpointedEstimator):
    """DeepDPM: a clustering net and per-cluster sub-clustering nets trained against a
    DP mixture, with split/merge moves that change K (Ronen et al. 2022).

    Parameters
    ----------
    model : DPMixture, optional
        Default: DP(alpha=1) mixture of full Gaussians with ``GaussianNIW.weak(X)``.
        Any conjugate family: Gaussian (full or diagonal) or ``StudentNIW`` (module
        docstring).  Its hyperpriors, if any, get point estimates in every M-step (as moVB's:
        each family hyperparameter maximises log p(h) + sum_k log Z(S_k; h) at the
        nets' soft statistics, alpha its conditional given the labels); they are
        Delta sites of ``guide_`` and ``hyperparameters_`` after the fit.
    init_k : int, default 1
        Clusters of the k-means initialisation.
    init_labels : array of n ints, optional
        A partition of the rows to start from instead of k-means (a warm start, e.g.
        from a previous fit on a changed embedding); K still moves.
    max_epochs : int, default 100
        Passes over the data.  The reference code trains 500 epochs at batch 128
        and learning rate 5e-4; ten times the learning rate lets 100 epochs do
        (timings and accuracy in benchmarks/README.md).
    batch_size : int or "auto", default "auto"
        Rows per SVI step.  "auto": N // min_steps, between 128 (the reference
        code's batch) and 4096, so that an epoch on large data is one pass in
        about ``min_steps`` steps: on a CPU a step's fixed cost, not its rows,
        dominates below a few thousand rows.
    loss : {"deepdpm", "elbo"}, default "deepdpm"
        "deepdpm": the paper's KL between E-step targets and the net's r.
        "elbo": Pyro's ``TraceEnum_ELBO`` of the model with the nets as guide.
    kl_direction : {"forward", "reverse"}, default "forward"
        KL(r^E || r) as in the reference code, or KL(r || r^E).
    hidden : int, default 50
        Hidden units of the clustering net and of each sub-clustering net.
    lr, sub_lr : float, default 0.005
        Adam learning rates of the clustering and sub-clustering nets.
    burn_in_epochs : int, default 5
        Epochs in which the nets learn the k-means start (no M-step), before
        M-steps begin; moves start ``move_every`` epochs later.
    move_every : int, default 2
        Epochs between move steps, which alternate split, merge, split, ...
        A due move waits while the mixture is held (``settle_epochs``,
        ``settle_max``), so the nets have learned the last move's clusters before
        the next move is judged; the interval adds no waiting beyond that, and 2
        lets a split be followed by a merge step just after its settle epochs.  No
        moves in the last ``move_every`` epochs.
    tol : float, default 1e-3
        Convergence stop: training ends before ``max_epochs`` at an epoch where the
        last ``patience`` split steps and merge steps all accepted nothing, K has
        not changed since, and the mixture's mean log-likelihood per row,
        (1/N) sum_i log sum_k pi_k p(x_i | theta_k) at the M-step's point
        parameters (``history_[e]["log_lik"]``), changed by less than ``tol`` nats
        over the last epoch -- the rule of scikit-learn's ``GaussianMixture``.  The
        fraction of labels that changed (``"changed"``) is no such test: where
        clusters overlap, the minibatch noise of the nets keeps moving the argmax of
        rows on the boundaries after the mixture has stopped moving.  0 runs all
        ``max_epochs``.
    patience : int, default 2
        Split steps (and merge steps) without an accepted move before the
        convergence stop: one rejected round is weak evidence, since the
        sub-nets keep learning and carving proposes from random members.
    min_steps : int, default 25
        Fewest minibatch steps per epoch: on small data an epoch makes several
        passes, so that the nets can follow a split before the next M-step.
    checkpoint_every : int, default 5
        Epochs between checkpoints when ``fit(..., checkpoint_dir=...)``.
    n_samples : int, default 100
        Draws kept by :meth:`to_inference_data`.
    settle_epochs : int, default 2
        Epochs after an accepted split or merge without M-step: the clustering
        net starts the new clusters from duplicated (or averaged) rows, and an
        M-step weighted by its not-yet-separated r would pull the new clusters'
        parameters back together.
    settle_max : int, default 12
        After ``settle_epochs`` the mixture stays held (no M-step, and a due move
        waits) until every cluster holds by the net's argmax at least half the
        points the E-step targets give it, for at most ``settle_max`` epochs after
        the move.  Small new clusters take the net longer to learn than two epochs;
        an M-step before that merges them back and the next prune drops them.
    split_refine : int, default 20
        EM iterations that refine every cluster's sub-clusters before a split step
        (:func:`bnpdeep.inference.subpartition.refine_subclusters`): the sub-nets'
        isotropic loss halves a cluster like 2-means, and the refinement moves the
        halves to the two-component full-likelihood mixture the M-step fits, the
        proposal then judged by the same H_s.  The EM of a cluster of more than
        1,000 rows runs on 1,000 of them drawn at random, every row then going to
        the better of the two fitted sub-components (``GuideSplitMerge.refine_rows``).
        Not in the paper; 0 proposes the
        sub-nets' split as it is.  From K = 1 it takes wine and s3, whose every
        2-means halving the DP posterior rejects, past K = 1
        (benchmarks/README.md).
    carve : bool, default True
        When a cluster's sub-net split is rejected, also propose carving a local
        group around a random member out of it (accepted on the same H_s).  Not in
        the paper: without it a start from one cluster stays there on data whose
        coarse 2-way split the DP posterior rejects (s1, r15; benchmarks/README.md).
    carves_per_step : int, default 3
        Carved groups a cluster may shed in one split step (each accepted on its
        own H_s).
    carve_tries : int, default 5
        Carving attempts per cluster and split step.
    callback : callable, optional
        ``callback(estimator, epoch, X)`` after every epoch (e.g. to log or time);
        ``estimator.current_labels(X)`` gives the labels at that point.
    device : {"auto", "cpu", "cuda", ...}, default "auto"
        "auto" uses a GPU when one is present.
    random_state : int, default 0
    progress : bool, default False
        A progress bar over epochs (K and loss) on stderr.
    """

    method_name = "deepdpm"
    _CHECKPOINT = "deepdpm_checkpoint.pt"     # file name in the checkpoint folder

    def __init__(self, model=None, init_k: int = 1, init_labels=None, max_epochs: int = 100,
                 batch_size="auto", loss: str = "deepdpm",
                 kl_direction: str = "forward", hidden: int = 50, lr: float = 0.005,
                 sub_lr: float = 0.005, burn_in_epochs: int = 5, move_every: int = 2,
                 tol: float = 1e-3, patience: int = 2, min_steps: int = 25,
                 checkpoint_every: int = 5,
                 n_samples: int = 100,
                 settle_epochs: int = 2, settle_max: int = 12, split_refine: int = 20,
                 carve: bool = True, carves_per_step: int = 3, carve_tries: int = 5,
                 callback=None, device="auto",
                 random_state=0, progress: bool = False):
        self.model = model
        self.init_k = init_k
        self.init_labels = init_labels
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.loss = loss
        self.kl_direction = kl_direction
        self.hidden = hidden
        self.lr = lr
        self.sub_lr = sub_lr
        self.burn_in_epochs = burn_in_epochs
        self.move_every = move_every
        self.tol = tol
        self.patience = patience
        self.min_steps = min_steps
        self.checkpoint_every = checkpoint_every
        self.n_samples = n_samples
        self.settle_epochs = settle_epochs
        self.settle_max = settle_max
        self.split_refine = split_refine
        self.carve = carve
        self.carves_per_step = carves_per_step
        self.carve_tries = carve_tries
        self.callback = callback
        self.device = device
        self.random_state = random_state
        self.progress = progress

    # -- public API ----------------------------------------------------------------
    def __getstate__(self):
        """Pickling keeps the fitted guide, model and history; the training's
        ``pyro.infer.SVI`` (closures Pyro does not make picklable) is left out and
        rebuilt whenever training starts."""
        state = self.__dict__.copy()
        state.pop("_svi", None)
        return state

    def predict_proba(self, X) -> np.ndarray:
        """r = f_cl(x) on new data: one forward pass of the guide's clustering net."""
        X = self._validate_predict_data(X)
        return self.guide_.log_r(as_tensor(X, device=self._device)).exp().cpu().numpy()

    def to_inference_data(self):
        from bnpdeep.diagnostics import to_inference_data

        return to_inference_data(self)

    # -- set-up ----------------------------------------------------------------
    def _check_options(self):
        if self.loss not in ("deepdpm", "elbo"):
            raise ValueError(f"loss must be 'deepdpm' or 'elbo', got {self.loss!r}")
        if self.kl_direction not in ("forward", "reverse"):
            raise ValueError(f"kl_direction must be 'forward' or 'reverse', got "
                             f"{self.kl_direction!r}")
        if int(self.init_k) < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, str)
                                          or int(self.batch_size) < 1):
            raise ValueError(f"batch_size must be 'auto' or at least 1, got "
                             f"{self.batch_size!r}")
        for name in ("max_epochs", "move_every", "hidden", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not float(self.tol) >= 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol}")

    def _setup(self, X):
        self._check_options()
        self._device = self._resolved_device()
        model = self.model if self.model is not None else self._default_model(X)
        if not isinstance(model, DPMixture):
            raise TypeError(f"model must be a DPMixture, got {type(model).__name__}")
        self._data_model = model
        # the fit runs in standardised coordinates; _finish turns the guide into X's
        X = np.asarray(X)
        model, X, self._units = self._fit_coordinates(model, X)
        self._family = model.family.to(self._device) if hasattr(model.family, "to") \
            else model.family
        self._model = model.with_family(self._family)
        self._weights = model.weights
        self._loss = DeepDPMLoss("kl" if self.loss == "deepdpm" else "elbo",
                                 self.kl_direction)
        self._moves = self._make_moves()
        self._hyper = HyperparameterStep(self._model)
        self._alpha_prior = model.hyperpriors.alpha if model.hyperpriors is not None else None
        self.guide_ = None
        self._set_hyperparameters(self._hyper.initial(),
                                  float(getattr(self._weights, "alpha", 1.0)))
        return as_tensor(X, device=self._device)

    def _resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def _default_model(self, X) -> DPMixture:
        return default_model(X)

    def _make_moves(self) -> GuideSplitMerge:
        return GuideSplitMerge(self._weights, self._family, self.split_refine, self.carve,
                               self.carves_per_step, self.carve_tries)

    def _total(self, t: torch.Tensor) -> torch.Tensor:
        """A per-row sum (counts, tallies) over all the rows of the fit: here, this
        process's; a data-parallel fit sums it over its ranks."""
        return t

    # -- hyperparameters ---------------------------------------------------------
    def _set_hyperparameters(self, values: dict, alpha: float) -> None:
        """Adopt hyperparameter point estimates: the family and weights at them, in
        the trainer, the moves and the guide (whose Delta sites they are)."""
        self._hyper_values, self._alpha = dict(values), float(alpha)
        self._family = self._hyper.family(values)
        if self._alpha_prior is not None:
            self._weights = DirichletProcess(self._alpha)
        self._moves.family, self._moves.weights = self._family, self._weights
        if self.guide_ is not None:
            self.guide_.set_hyperparameters(self._hyperparameter_record(), self._family)

    def _hyperparameter_record(self) -> dict:
        out = dict(self._hyper_values)
        if self._alpha_prior is not None:
            out["alpha"] = self._alpha
        return out

    def _update_hyperparameters(self, stats, z: torch.Tensor) -> None:
        """Point estimates in the M-step (type-II MAP, as moVB's): each family
        hyperparameter maximises log p(h) + sum_k log Z(S_k; h) at the nets' soft
        statistics S; alpha maximises log p(alpha) + log EPPF(block sizes of z | alpha),
        its conditional given the partition (Escobar & West's target)."""
        values = self._hyper.maximize(self._hyper_values, stats) if self._hyper.active \
            else self._hyper_values
        alpha = self._alpha
        if self._alpha_prior is not None:
            counts = self._total(torch.bincount(z, minlength=self.guide_.k)).to(DTYPE)
            counts = counts[counts > 0].cpu()
            alpha = maximize_alpha(self._alpha_prior, self._alpha, lambda a: float(
                DirichletProcess(float(a)).log_eppf(counts)))
        self._set_hyperparameters(values, alpha)

    def _init_guide(self, X: torch.Tensor):
        """The guide at the initial partition (:meth:`_initial_partition`), its point
        parameters from the partition's hard statistics."""
        z, zs, k = self._initial_partition(X)
        shift, scale = self._input_moments(X)
        self.guide_ = DeepDPMGuide(self._family, X.shape[1], k, self.hidden,
                                   shift=shift, scale=scale).to(self._device)
        self.guide_.set_hyperparameters(self._hyperparameter_record(), self._family)
        stats, sub = self._moves.hard_stats(X, z, zs, k)
        self.guide_.m_step(stats, sub, self._alpha)

    def _initial_partition(self, X: torch.Tensor):
        """(z, zs, K): ``init_labels``, else k-means with ``init_k`` clusters (one
        cluster: all rows); 2-means sub-clusters in each."""
        from sklearn.cluster import KMeans as SkKMeans

        k0 = min(int(self.init_k), X.shape[0])
        seed = 0 if self.random_state is None else int(self.random_state)
        if self.init_labels is not None:
            z, _ = relabel(torch.as_tensor(self._checked_init_labels(X.shape[0]),
                                           device=self._device))
        elif k0 > 1:
            z = SkKMeans(k0, n_init=3, random_state=seed).fit_predict(X.cpu().numpy())
            z, _ = relabel(torch.as_tensor(z, device=self._device))
        else:
            z = torch.zeros(X.shape[0], dtype=torch.long, device=self._device)
        k = int(z.max()) + 1
        zs = torch.zeros_like(z)
        for c in range(k):
            rows = (z == c).nonzero().flatten()
            zs[rows] = two_means(X[rows]).to(self._device)
        return z, zs, k

    def _input_moments(self, X: torch.Tensor):
        """The nets' input shift and scale: the rows' mean and standard deviation."""
        std = X.std(0) if X.shape[0] > 1 else torch.ones(X.shape[1], dtype=X.dtype)
        return X.mean(0), std

    def _checked_init_labels(self, n: int) -> np.ndarray:
        labels = np.asarray(self.init_labels)
        if (labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer)
                or labels.min() < 0):
            raise ValueError(f"init_labels must be {n} integer labels >= 0, one per row of X; got "
                             f"an array of shape {labels.shape} and dtype {labels.dtype}")
        return labels.astype(np.int64)

    def _make_svi(self):
        """A fresh ``pyro.infer.SVI`` for the guide at its current K: the model at that
        truncation, Adam with ``lr`` for the clustering net and ``sub_lr`` for the
        sub-nets.  The nets' old entries leave the (fit-local) parameter store: a
        move replaced their tensors."""
        store = pyro.get_param_store()
        names = self.guide_.pyro_names()
        for name in [n for n in store.keys() if n.startswith(names)]:
            del store[name]
        optim = JointAdam(NetRates(names[0], self.lr, self.sub_lr))
        self.model_ = self._model.with_truncation(self.guide_.k)
        self._svi = SVI(self.model_.model, self.guide_, optim, self._loss)

    # -- training --------------------------------------------------------------
    def _train_epoch(self, X: torch.Tensor) -> tuple[float, float]:
        """Minibatch SVI steps over the data (several passes on small data, at least
        ``min_steps`` steps); returns the mean loss and the mean over the epoch's rows
        of log sum_k pi_k p(x_i | theta_k) under the point parameters the epoch
        trained against (the last M-step's)."""
        total = rows = log_lik = 0.0
        for idx in self._epoch_batches(X.shape[0]):
            total += self._svi_step(X[idx])
            log_lik += self._loss.last["log_lik"]
            rows += idx.numel()
        tally = self._total(torch.tensor([total, log_lik, rows], dtype=DTYPE))
        return float(tally[0] / tally[2]), float(tally[1] / tally[2])

    def _epoch_batches(self, n: int):
        """The minibatches of an epoch: row indices, ``passes`` random permutations
        of the rows cut into batches of ``_batch_rows(n)``."""
        batch = self._batch_rows(n)
        passes = max(1, math.ceil(self.min_steps * batch / n))
        order = torch.cat([torch.randperm(n, generator=self._gen) for _ in range(passes)])
        return torch.split(order.to(self._device), batch)

    def _svi_step(self, Xb: torch.Tensor) -> float:
        """One SVI step on the rows Xb; their summed loss (the step's mean times rows)."""
        return self._svi.step(Xb) * Xb.shape[0]

    def _batch_rows(self, n: int) -> int:
        if self.batch_size == "auto":
            return int(min(4096, max(128, n // max(int(self.min_steps), 1))))
        return int(self.batch_size)

    def _m_step(self, X, prune: bool):
        """The guide's M-step from the nets' soft statistics; with ``prune``, a cluster
        no point is assigned to is removed (its soft mass goes to the rest)."""
        guide = self.guide_
        z, zs = self._m_step_at(self._soft_stats(X))
        empty = self._total(torch.bincount(z, minlength=guide.k)) == 0
        if prune and bool(empty.any()) and not bool(empty.all()):
            guide.remove((~empty).nonzero().flatten())
            self._make_svi()
            z, zs = self._m_step_at(self._soft_stats(X))
        return z, zs

    def _soft_stats(self, X):
        """The guide's M-step statistics and hard labels over the rows (a data-parallel
        fit sums the statistics over its ranks)."""
        return self.guide_.soft_stats(X)

    def _m_step_at(self, soft):
        """Hyperparameters (if the model has hyperpriors), then the guide's point
        parameters, from the statistics ``soft`` = (stats, sub, z, zs)."""
        stats, sub, z, zs = soft
        if self._hyper.active or self._alpha_prior is not None:
            self._update_hyperparameters(stats, z)
        self.guide_.m_step(stats, sub, self._alpha)
        self._soft = stats
        return z, zs

    # -- the loop ----------------------------------------------------------------
    def _fit(self, X):
        with own_pyro_state(self._resolved_device()):
            self._fit_scoped(X)

    def _fit_scoped(self, X):
        Xt = self._setup(X)
        seed = 0 if self.random_state is None else int(self.random_state)
        torch.manual_seed(seed)
        self._gen = torch.Generator().manual_seed(seed)
        start = 0
        self.history_ = []
        self._last_z = None
        state = self._saved_state()
        if state is not None:
            start = self._restore(state)
        else:
            self._init_guide(Xt)
            self._make_svi()
        self.converged_ = False
        bar = tqdm(range(start, int(self.max_epochs)), desc="deepdpm", unit="epoch",
                   file=sys.stderr, disable=not self.progress, leave=False)
        for epoch in bar:
            loss, log_lik = self._train_epoch(Xt)
            splits = merges = 0
            kind = None
            hold = self._holding(Xt, epoch + 1)
            move = (not hold and self._move_due(epoch + 1)
                    and epoch < int(self.max_epochs) - int(self.move_every))
            changed = None
            if epoch + 1 >= int(self.burn_in_epochs) and not hold:
                # before the burn-in ends, and while the nets learn a moved mixture,
                # the mixture is held
                z, zs = self._m_step(Xt, prune=move)
                if self._last_z is not None and self._last_z.shape == z.shape:
                    tally = self._total(torch.tensor([float((z != self._last_z).sum()),
                                                      float(z.numel())], dtype=DTYPE))
                    changed = float(tally[0] / tally[1])
                self._last_z = z.clone()
            if move:
                done = [h["move"] for h in self.history_ if h.get("move")]
                kind = "merge" if done and done[-1] == "split" else "split"
                if kind == "split":
                    surgery = self._moves.split(self.guide_, Xt, z, zs, self._gen)
                    splits = len(surgery)
                else:
                    surgery = self._moves.merge(self.guide_, Xt, z, zs, self._soft, self._gen)
                    merges = len(surgery)
                if surgery:
                    self._make_svi()
                    self._last_z = None
            k = self.guide_.k
            self.history_.append({"epoch": epoch + 1, "K": k, "loss": loss,
                                  # mean per row, in X's units
                                  "log_lik": log_lik + self._units.log_jacobian,
                                  "splits": splits, "merges": merges, "move": kind,
                                  "changed": changed})
            bar.set_postfix(K=k, loss=f"{loss:.4f}", refresh=False)
            if self.callback is not None:
                self.callback(self, epoch + 1, Xt)
            if self._checkpointing and (epoch + 1) % int(self.checkpoint_every) == 0:
                self._save_checkpoint(epoch + 1)
            if self._converged():
                self.converged_ = True
                break
        self.n_epochs_ = len(self.history_)
        if not self.converged_ and float(self.tol) > 0:
            warn_not_converged(self, "max_epochs", f"no accepted move and a change of the "
                               f"mean log-likelihood per row below tol={self.tol} over "
                               f"patience={self.patience} split and merge steps")
        self._finish(Xt)

    def _converged(self) -> bool:
        """The convergence stop (``tol``, ``patience``): the last ``patience`` split
        steps and merge steps accepted nothing, K has not changed since, this epoch
        ended with an M-step, and the mean log-likelihood per row changed by less
        than ``tol`` over the last epoch."""
        h = self.history_
        if not float(self.tol) > 0 or len(h) < 2 or h[-1]["changed"] is None:
            return False
        # a checkpoint of an older version has epochs without the likelihood
        last, before = h[-1].get("log_lik"), h[-2].get("log_lik")
        if last is None or before is None or abs(last - before) >= float(self.tol):
            return False
        rounds = 2 * int(self.patience)
        steps = [i for i, e in enumerate(h) if e["move"]]
        if len(steps) < rounds:
            return False
        return all(e["splits"] == e["merges"] == 0 and e["K"] == h[-1]["K"]
                   for e in h[steps[-rounds]:])

    def _move_due(self, epoch: int) -> bool:
        """A move step is due ``move_every`` epochs after the last one (the first
        ``move_every`` epochs after the burn-in)."""
        steps = [h["epoch"] for h in self.history_ if h.get("move")]
        last = steps[-1] if steps else int(self.burn_in_epochs)
        return epoch - last >= int(self.move_every)

    def _holding(self, X, epoch: int) -> bool:
        """Whether the mixture is held (no M-step, no move) after the last accepted
        split or merge: for ``settle_epochs`` epochs, then until the clustering net
        has learned the new clusters (:meth:`_net_settled`), at most ``settle_max``
        epochs in all."""
        changed = [h["epoch"] for h in self.history_ if h["splits"] or h["merges"]]
        if not changed:
            return False
        age = epoch - changed[-1]
        if age <= int(self.settle_epochs):
            return True
        return age <= int(self.settle_max) and not self._net_settled(X)

    def _net_settled(self, X) -> bool:
        """True when every cluster holds, by the net's argmax, at least half the points
        the E-step targets give it; clusters the targets give fewer than a tenth of
        the mean cluster size are not waited for (the net may never learn a group of
        a few dozen outliers, and the next prune drops it).  A new cluster starts as a
        duplicated output row that shares its parent's r; an M-step weighted by r
        before the net tells the two apart would average them back into one."""
        guide, k = self.guide_, self.guide_.k
        net = torch.zeros(k, dtype=torch.long, device=X.device)
        tgt = torch.zeros_like(net)
        for c in torch.split(X, CHUNK):
            net += torch.bincount(guide.log_r(c).argmax(1), minlength=k)
            with torch.no_grad():
                tgt += torch.bincount(guide.log_targets(c).argmax(1), minlength=k)
        net, tgt = self._total(torch.stack([net, tgt]))
        small = 10 * k * tgt < tgt.sum()
        return bool(((2 * net >= tgt) | small).all())

    def _finish(self, X):
        """Drop components that no point is assigned to, so that labels are 0..K-1 and
        ``predict`` uses the same numbering; ``model_`` is the model at the final K."""
        guide = self.guide_
        log_r = guide.log_r(X)
        if not bool(torch.isfinite(log_r).all()):
            raise FloatingPointError("DeepDPM produced non-finite responsibilities")
        used = self._total(torch.bincount(log_r.argmax(1), minlength=guide.k)) > 0
        if not bool(used.all()):
            guide.remove(used.nonzero().flatten())
            log_r = guide.log_r(X)
        self.labels_ = log_r.argmax(1).cpu().numpy()
        self.n_clusters_ = guide.k          # every cluster is some row's argmax
        units = self._units
        record = {n: units.hyper_value(n, v) for n, v in self._hyperparameter_record().items()}
        if units.scale is not None:          # the guide, the model and the rows of X
            model = self._data_model
            model = model.with_family(model.family.to(self._device)) \
                if hasattr(model.family, "to") else model
            self._hyper = HyperparameterStep(model)
            self._model = model
            self._set_hyperparameters({n: record[n] for n in self._hyper_values},
                                      self._alpha)
            guide.in_units(units.shift, units.scale, self._family, guide.hyperparameters)
            X = X * torch.as_tensor(units.scale, dtype=X.dtype, device=X.device) \
                + torch.as_tensor(units.shift, dtype=X.dtype, device=X.device)
        self.model_ = self._model.with_truncation(guide.k)
        self.hyperparameters_ = plain_values(record)
        self._X = X

    def current_labels(self, X) -> np.ndarray:
        """argmax_k r_ik of the clustering net as it is now (usable mid-training)."""
        return self.guide_.log_r(as_tensor(X, device=self._device)).argmax(1).cpu().numpy()

    def _predict(self, X):
        return self.current_labels(X)

    # -- checkpoints -----------------------------------------------------------------
    def _save_checkpoint(self, epoch: int):
        state = {"epoch": epoch, "history": self.history_, "guide": self.guide_.guide_state(),
                 "optim": self._svi.optim.get_state(), "soft": dict(self._soft.fields),
                 "last_z": self._last_z,
                 "torch_rng": torch.get_rng_state(), "gen": self._gen.get_state()}
        self._save_state(state)

    def _restore(self, state) -> int:
        X_dim = self.n_features_in_
        self.guide_ = DeepDPMGuide(self._family, X_dim, int(state["guide"]["k"]), self.hidden,
                                   name=state["guide"]["name"]).to(self._device)
        self.guide_.load_guide_state(state["guide"])
        saved = dict(state["guide"]["hyperparameters"])
        self._set_hyperparameters({n: saved[n] for n in self._hyper_values},
                                  saved.get("alpha", self._alpha))
        self._make_svi()
        self._svi.optim.set_state(state["optim"])
        self._soft = type(self._family.empty_stats(1))(**state["soft"])
        self.history_ = list(state["history"])
        self._last_z = state["last_z"]
        torch.set_rng_state(state["torch_rng"])
        self._gen.set_state(state["gen"])
        return int(state["epoch"])

    # -- posterior summaries --------------------------------------------------------
    def posterior_arrays(self) -> dict:
        """Draws (``sample``): parameters from their conjugate posterior given the
        net's soft statistics, weights from Dirichlet(N_k + alpha / K), z from r;
        pointwise log-likelihood with z summed out."""
        self._check_is_fitted()
        X, fam = self._X, self._family
        log_r = self.guide_.log_r(X)
        stats, params = fam.empty_stats(log_r.shape[1]), self.guide_.mixture.params
        for c, lr in zip(torch.split(X, CHUNK), torch.split(log_r, CHUNK), strict=True):
            stats = stats + fam.expected_suff_stats(c, lr.exp(), params)
        k = stats.k
        conc = stats.n + self._alpha / k

        def sample_log_pi():
            pi = torch.distributions.Dirichlet(conc).sample().clamp_min(1e-300)
            return torch.log(pi), None

        return approximate_posterior_arrays(
            fam, self._weights, X, log_r, sample_log_pi, lambda: fam.sample_posterior(stats),
            self.n_samples, self.random_state, self._alpha)
