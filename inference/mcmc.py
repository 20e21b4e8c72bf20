"""Shared machinery of the MCMC clusterers (sub-cluster sampler, collapsed Gibbs).

A sampler is written BlackJAX-style: ``init(X) -> state`` and
``step(state) -> (state, info)``; ``info`` fields use ArviZ's sample_stats
names.  :class:`MCMCClusterer` runs chains of it, keeps the draws after burn-in
and exposes them with scikit-learn conventions and as ArviZ InferenceData.

What a draw records is label-invariant (K, log joint, alpha, weights sorted by
size), plus the labels themselves (``label_draws_``) and the pointwise
log-likelihood log p(x_i | pi, theta) with z summed out, which is what
``az.loo`` needs.  The mass of the components no point occupies (pi_rest under
a DP) enters that sum through the prior predictive density.

Every iteration, burn-in included, also leaves K, the log joint and its wall-clock
seconds in ``k_trace_``, ``lp_trace_`` and ``seconds_trace_`` (chain x iteration),
so K or lp can be plotted against time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from bnpdeep.linalg import as_tensor

from ..models import DirichletProcess, DPMixture, GaussianNIW
from ..models.hyperpriors import log_prob
from .base import CheckpointedEstimator, resolve_device
from .hyperparameters import HyperparameterStep, update_alpha


def _chain_in_worker(est, X, model, chain: int, burn: int, seed: int, threads: int):
    """One chain of ``est`` in a worker process (:meth:`MCMCClusterer._run_chains_in_workers`);
    returns its record and its chain attributes."""
    import numba

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    Xt = torch.from_numpy(X)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed * 1000 + chain)
        rec = est._run_chain(Xt, model, chain, burn)
    return rec, {a: getattr(est, a) for a in est._chain_attributes}


# Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021, Bayesian Analysis 16(2)),
# section 4: use the draws when the rank-normalised split R-hat is below 1.01 and the
# bulk ESS above 100 per chain
RHAT_LIMIT = 1.01
ESS_PER_CHAIN = 100
MIN_DRAWS = 4           # ArviZ's least number of draws per chain for R-hat and ESS
TIE_TOLERANCE = 1e-9    # relative: draws closer than this are equal (round-off)


def chain_diagnostics(draws) -> tuple[float, float]:
    """Rank-normalised split R-hat and bulk ESS (Vehtari et al. 2021; ArviZ's
    ``rhat`` and ``ess``) of a scalar's draws, shape (chains, draws).  R-hat needs
    two chains and is NaN for one; both are NaN below 4 draws a chain.  Draws within
    1e-9 relative of each other count as ties: the log joints of one partition differ
    in their last bits, and rank normalisation would otherwise turn that round-off
    into spurious between-chain differences.  When every draw holds the same value
    R-hat is NaN (undefined) and the ESS the number of draws.  When each chain holds
    one value but the chains disagree (within-chain variance W = 0), R-hat is
    infinite, as Gelman & Rubin's sqrt(((n-1)/n W + B/n) / W) gives: ArviZ returns
    NaN there, which would read as "no variation"."""
    values = np.asarray(draws, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"draws must have shape (chains, draws), got {values.shape}")
    if values.shape[1] < MIN_DRAWS:
        return float("nan"), float("nan")
    tol = TIE_TOLERANCE * max(1.0, float(np.abs(values).max()))
    values = np.round(values / tol) * tol
    if np.ptp(values) == 0:
        return float("nan"), float(values.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = float("nan")
        if values.shape[0] > 1:
            rhat = float(az.rhat(values))
            if np.isnan(rhat) and np.ptp(values, axis=1).max() == 0:
                rhat = math.inf                # chains each stuck at their own value
        ess = float(az.ess(values, method="bulk"))
    return rhat, ess


def convergence_problems(diagnostics: dict, n_chains: int) -> list[str]:
    """What fails Vehtari et al.'s (2021) thresholds among ``rhat_<name>`` and
    ``ess_<name>`` entries (R-hat above 1.01, bulk ESS below 100 per chain)."""
    out = []
    for key, value in diagnostics.items():
        kind, name = key.split("_", 1)
        if kind == "rhat" and value > RHAT_LIMIT:          # NaN compares False
            out.append(f"R-hat of {name} {value:.3g} > {RHAT_LIMIT}")
        elif kind == "ess" and value < ESS_PER_CHAIN * n_chains:
            out.append(f"bulk ESS of {name} {value:.0f} < {ESS_PER_CHAIN * n_chains}")
    return out


def default_model(X) -> DPMixture:
    """The default model: DP(alpha = 1) mixture of full Gaussians, weak NIW prior."""
    return DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0))


def chain_rows(family, X, latent=None) -> torch.Tensor:
    """The rows a chain works on: X, with the family's per-row latent variables
    appended when it has some (``StudentNIW``'s scales; ``latent`` restores saved ones)."""
    return family.augment(X, latent) if family.latent_columns else X


def latent_columns(family, rows):
    """The latent columns of a chain's rows (None for a family without any)."""
    return rows[:, family.dim:].clone() if family.latent_columns else None


def update_latent(family, X, z, stats):
    """A Gibbs step on the family's per-row latent variables given the partition, and
    the statistics of the new rows; a family without latent variables returns both
    unchanged."""
    if not family.latent_columns:
        return X, stats
    X = family.update_latent(X, z, stats)
    return X, family.suff_stats_labels(X, z, stats.k)


def relabel(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map the labels in use onto 0..K-1, keeping their order; returns (new labels, old
    ids kept).  A count and a cumulative sum instead of a sort of the N labels."""
    present = torch.bincount(z) > 0
    return (torch.cumsum(present, 0) - 1)[z], present.nonzero().flatten()


def prior_predictive(family, X) -> torch.Tensor:
    """log p0(x_i) = log integral f(x_i | theta) dG0(theta), (N,): the prior predictive
    of a new cluster, the same for every draw under one family."""
    return family.log_predictive(X, family.empty_stats(1))[:, 0]


def pointwise_log_likelihood(family, X, log_pi, params, log_pi_rest=None,
                             prior_pred=None) -> torch.Tensor:
    """log p(x_i | pi, theta) = log [sum_k pi_k f(x_i | theta_k) + pi_rest p0(x_i)], (N,);
    ``prior_pred``: :func:`prior_predictive` of ``family`` and X, when the caller
    keeps it between draws."""
    terms = family.log_likelihood(X, params) + log_pi[None]
    if log_pi_rest is not None and math.isfinite(float(log_pi_rest)):
        if prior_pred is None:
            prior_pred = prior_predictive(family, X)
        terms = torch.cat([terms, (prior_pred + log_pi_rest)[:, None]], 1)
    return torch.logsumexp(terms, 1)


def categorical_cdf_(logits: torch.Tensor) -> torch.Tensor:
    """Unnormalised cumulative probabilities of each row's categorical, computed in
    place in ``logits`` (which it overwrites): shift by the row maximum, exponentiate,
    cumulate.  Draw from it with :func:`sample_from_cdf`, as often as needed."""
    return logits.sub_(logits.amax(-1, keepdim=True)).exp_().cumsum_(-1)


def sample_from_cdf(cdf: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row from the unnormalised CDF of :func:`categorical_cdf_`: a uniform
    scaled to the row total, located by binary search (inverse CDF).  ``uniform`` (one
    per row) supplies the U(0, 1) draws, else torch's generator does."""
    if uniform is None:
        u = torch.rand(cdf.shape[:-1] + (1,), dtype=cdf.dtype, device=cdf.device)
    else:
        u = uniform.to(cdf.dtype).reshape(cdf.shape[:-1] + (1,)).clone()
    u.mul_(cdf[..., -1:])
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return idx.clamp_max_(cdf.shape[-1] - 1)


def sample_categorical(logits: torch.Tensor) -> torch.Tensor:
    """One categorical draw per row from unnormalised log-probabilities (``logits`` is
    left unchanged)."""
    return sample_from_cdf(categorical_cdf_(logits.clone()))


def dirichlet_log(conc: torch.Tensor) -> torch.Tensor:
    """log of a Dirichlet draw (last axis), via Gamma variables; zero concentration -> -inf."""
    pos = conc > 0
    g = torch._standard_gamma(torch.where(pos, conc, torch.ones_like(conc)).contiguous())
    g = torch.where(pos, g.clamp_min(1e-300), torch.zeros_like(g))
    return torch.log(g) - torch.log(g.sum(-1, keepdim=True))


def conditional_log_weights(weights, counts: torch.Tensor) -> torch.Tensor:
    """log (pi_1..pi_K, pi_rest), (K + 1,), drawn from their conditional given a
    partition with block sizes ``counts``: Dirichlet(:meth:`weight_concentration`)."""
    conc, rest = weights.weight_concentration(counts)
    return dirichlet_log(torch.cat([conc, rest.reshape(1)]))


@dataclass
class ChainRecord:
    """Per-iteration trace and kept draws of one chain."""

    k_trace: list = field(default_factory=list)
    lp_trace: list = field(default_factory=list)
    seconds_trace: list = field(default_factory=list)
    k: list = field(default_factory=list)
    lp: list = field(default_factory=list)
    alpha: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    log_lik: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    hyper: dict = field(default_factory=dict)      # name -> kept draws of a hyperparameter
    # (start, stop) of the kept draws whose labels and log-likelihoods are already in
    # files beside the checkpoint
    draw_files: list = field(default_factory=list)


class MCMCClusterer(CheckpointedEstimator):
    """Base estimator for samplers.  Subclasses provide ``_init_state(X, model, chain)``
    and ``_step(state) -> (state, info)``; states are dataclasses that carry ``X``,
    ``z``, ``k``, ``alpha``.

    ``fit(X, checkpoint_dir=...)`` saves every ``checkpoint_every`` iterations (and at
    the end of every chain) the chains finished so far, the running chain's state and
    record, and the random generator's state; ``fit(X, checkpoint_dir=...,
    resume=True)`` continues from there and ends with exactly the draws an
    uninterrupted fit of the same seed gives.  The kept draws' labels and pointwise
    log-likelihoods are written once each, to ``.npz`` files beside the checkpoint, so
    a save costs the same late in a long run as early (on a1, 2000 iterations
    saved every 10: 3.9 s against 2.9 s unsaved; 20.9 s when every save rewrote all
    draws).  A checkpoint written for other data
    or other settings is refused, naming what differs.
    """

    _stat_names: tuple[str, ...] = ()
    # per-chain attributes a step updates (besides the state), saved with it
    _chain_attributes: tuple[str, ...] = ()

    @property
    def _CHECKPOINT(self) -> str:      # one file per method: samplers can share a folder
        return f"{self.method_name}_checkpoint.pt"

    def _resolve_model(self, X) -> DPMixture:
        model = default_model(X) if self.model is None else self.model
        if not isinstance(model, DPMixture):
            raise TypeError(f"model must be a DPMixture, got {type(model).__name__}")
        if not getattr(model.family, "has_log_marginal", False):
            raise TypeError(f"{type(self).__name__} needs a conjugate family with an exact "
                            f"log marginal likelihood; {type(model.family).__name__} has none")
        return model

    def _burn_in(self) -> int:
        return self.max_iter // 2 if self.burn_in is None else int(self.burn_in)

    def _fit(self, X):
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {self.max_iter}")
        if self.n_chains < 1:
            raise ValueError(f"n_chains must be at least 1, got {self.n_chains}")
        burn = self._burn_in()
        if burn >= self.max_iter:
            raise ValueError(f"burn_in ({burn}) must be smaller than max_iter ({self.max_iter})")
        device = resolve_device(getattr(self, "device", "cpu"))
        model = self._resolve_model(X)
        model.family.validate(X)
        if model.family.device != device:
            model = model.with_family(model.family.to(device))
        self.model_ = model
        self._X_train = as_tensor(X, device=device)
        # the chains run in standardised coordinates (fit_coordinates)
        X = np.asarray(X)
        model, Y, self._units = self._fit_coordinates(model, X)
        Xt = as_tensor(Y, device=device)
        every = int(getattr(self, "checkpoint_every", 10))
        if self._checkpointing and every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {every}")
        # what a checkpoint must match (a pass over the data: only when checkpointing)
        fingerprint = self._fingerprint(self._X_train) if self._checkpointing else None
        saved = self._saved_state()
        if saved is not None:
            self._check_fingerprint(saved["fingerprint"], fingerprint)
        seed = 0 if self.random_state is None else int(self.random_state)
        self.chains_, running = [], None
        if saved is not None:
            self.chains_ = [self._restored(r, c) for c, r in enumerate(saved["chains"])]
            running = saved["running"]
            if running is not None:
                running["record"] = self._restored(running["record"], running["chain"])
        elif self._checkpointing and self._checkpoint_dir.is_dir():
            self._clear_checkpoint()
        on_gpu = device.type == "cuda"
        workers = self._workers(self.n_chains - len(self.chains_), on_gpu)
        if workers > 1:
            self.chains_ = self._run_chains_in_workers(Xt, model, burn, seed, workers)
        for chain in range(len(self.chains_), self.n_chains):
            # no autograd anywhere in a chain: inference mode saves the per-operation
            # version-counter and autograd bookkeeping (about 8% of a fit at N=10,000).
            # On a GPU every tensor a step creates goes there (torch.device as a
            # context; not entered on the CPU, where its per-call hook would cost time)
            with torch.random.fork_rng(devices=[device] if on_gpu else []), \
                    torch.inference_mode(), \
                    (device if on_gpu else contextlib.nullcontext()):
                torch.manual_seed(seed * 1000 + chain)
                self.chains_.append(self._run_chain(Xt, model, chain, burn, fingerprint,
                                                    running, every))
                running = None
                if self._checkpointing:
                    self._save_state({"fingerprint": fingerprint, "running": None,
                                      "chains": self._stored_chains()})
        self._collect(Xt)
        return self

    def _workers(self, n_left: int, on_gpu: bool) -> int:
        """Worker processes for the chains left: ``n_jobs`` (-1: one per CPU core),
        at most one per chain; 1 runs them in this process."""
        n_jobs = int(getattr(self, "n_jobs", 1))
        if n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs must be a positive integer or -1, got {n_jobs}")
        n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else n_jobs
        workers = min(n_jobs, n_left)
        if workers > 1 and (self._checkpointing or on_gpu):
            raise ValueError("n_jobs > 1 runs chains in worker processes, which do not "
                             "checkpoint or share a GPU; fit with n_jobs=1 to use "
                             + ("checkpoint_dir" if self._checkpointing else "a GPU"))
        return max(workers, 1)

    def _run_chains_in_workers(self, X, model, burn: int, seed: int, workers: int):
        """Every chain in one of ``workers`` spawned processes, each with torch's
        threads shared out between them; chain c is seeded ``seed * 1000 + c`` as in
        this process, so its draws are the ones ``n_jobs=1`` gives (on the CPU, at
        the same number of threads per chain).  The chain attributes are the last
        chain's, as in this process."""
        threads = max(1, torch.get_num_threads() // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            unfitted, data = clone(self), X.cpu().numpy()
            unfitted._units = self._units
            jobs = [pool.submit(_chain_in_worker, unfitted, data, model, chain, burn, seed,
                                threads) for chain in range(self.n_chains)]
            results = [job.result() for job in jobs]
        for name, value in results[-1][1].items():
            setattr(self, name, value)
        # this process's per-fit settings (warm-up length, Gibbs points, hyperparameter
        # step, ...), set up as a chain's start does, without touching its generator
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            self._init_state(chain_rows(model.family, X), model, 0)
        return [rec for rec, _ in results]

    # -- checkpoints -------------------------------------------------------------------
    def _fingerprint(self, X) -> dict:
        """What a checkpoint must match to be resumed: the data (shape and two sums)
        and every constructor argument but the model object and the progress bar."""
        params = {k: repr(v) for k, v in self.get_params(deep=False).items()
                  if k not in ("model", "progress", "checkpoint_every")}
        x = X.detach().double()
        return {"shape": tuple(X.shape), "sum": float(x.sum()),
                "sum_sq": float(x.square().sum()), "params": params,
                "model": type(self.model_.family).__name__ + "/"
                + type(self.model_.weights).__name__}

    @staticmethod
    def _check_fingerprint(saved: dict, now: dict):
        if saved["shape"] != now["shape"] or not (
                math.isclose(saved["sum"], now["sum"], rel_tol=1e-12, abs_tol=1e-9)
                and math.isclose(saved["sum_sq"], now["sum_sq"], rel_tol=1e-12,
                                 abs_tol=1e-9)):
            raise ValueError(f"the checkpoint was written for other data (shape "
                             f"{saved['shape']}, not {now['shape']}, or other values)")
        differ = sorted(k for k in set(saved["params"]) | set(now["params"])
                        if saved["params"].get(k) != now["params"].get(k))
        if differ:
            raise ValueError("the checkpoint was written with other settings: " + ", ".join(
                f"{k}={saved['params'].get(k)} there, {now['params'].get(k)} here"
                for k in differ))
        if saved["model"] != now["model"]:
            raise ValueError(f"the checkpoint was written for model {saved['model']}, "
                             f"not {now['model']}")

    # The kept draws' labels and pointwise log-likelihoods (N numbers each) go to files
    # beside the checkpoint, each draw written once (a checkpoint that held them all
    # would rewrite the whole history every few iterations: quadratic in the run's
    # length); the checkpoint keeps the rest of each record and the files' ranges.
    def _draw_file(self, chain: int, start: int, stop: int) -> str:
        return f"{self._CHECKPOINT}.chain{chain}.draws{start}-{stop}.npz"

    def _stored(self, rec: ChainRecord, chain: int) -> ChainRecord:
        """``rec`` as the checkpoint keeps it, after writing its draws not yet on disk."""
        from bnpdeep.runs import RunFolder

        done = rec.draw_files[-1][1] if rec.draw_files else 0
        stop = len(rec.labels)
        if stop > done:
            arrays = {"labels": np.stack(rec.labels[done:])}
            if rec.log_lik:
                arrays["log_lik"] = np.stack(rec.log_lik[done:])
            RunFolder(self._checkpoint_dir).save_arrays(self._draw_file(chain, done, stop),
                                                        **arrays)
            rec.draw_files.append((done, stop))
        return dataclasses.replace(rec, labels=[], log_lik=[], draw_files=list(rec.draw_files))

    def _restored(self, rec: ChainRecord, chain: int) -> ChainRecord:
        """A checkpointed record with its draws read back from their files."""
        from bnpdeep.runs import RunFolder

        labels, log_lik = [], []
        for start, stop in rec.draw_files:
            arrays = RunFolder(self._checkpoint_dir).load_arrays(
                self._draw_file(chain, start, stop))
            if arrays["labels"].shape[0] != stop - start:
                raise ValueError(f"the checkpoint's draw file for draws {start}-{stop} of "
                                 f"chain {chain} holds {arrays['labels'].shape[0]} draws")
            labels.extend(arrays["labels"])
            log_lik.extend(arrays.get("log_lik", ()))
        return dataclasses.replace(rec, labels=labels, log_lik=log_lik,
                                   draw_files=list(rec.draw_files))

    def _stored_chains(self) -> list[ChainRecord]:
        return [self._stored(r, c) for c, r in enumerate(self.chains_)]

    def _clear_checkpoint(self):
        """A fresh checkpointed fit drops the checkpoint and draw files a previous one
        left (a checkpoint must never outlive the draw files it names)."""
        from bnpdeep.runs import RunFolder

        RunFolder(self._checkpoint_dir).clear_checkpoint(self._CHECKPOINT)
        for path in self._checkpoint_dir.glob(f"{self._CHECKPOINT}.chain*.draws*.npz"):
            path.unlink()

    def _checkpoint(self, fingerprint, chain, it, state, rec):
        """Save the fit after iteration ``it`` of ``chain`` (the data tensor is not
        saved: the resumed fit is given it again)."""
        self._save_state({
            "fingerprint": fingerprint,
            "chains": self._stored_chains(),
            "running": {"chain": chain, "iteration": it + 1,
                        "state": dataclasses.replace(state, X=None),
                        "latent": latent_columns(self.model_.family, state.X),
                        "record": self._stored(rec, chain),
                        "attributes": {a: getattr(self, a) for a in self._chain_attributes},
                        "rng": torch.get_rng_state(),
                        "cuda_rng": (torch.cuda.get_rng_state(state.z.device)
                                     if state.z.device.type == "cuda" else None)}})

    def _run_chain(self, X, model, chain, burn, fingerprint=None, running=None,
                   every: int = 10) -> ChainRecord:
        """One chain of ``max_iter`` steps (from ``running``, a checkpoint's chain, when
        resuming), saved every ``every`` iterations when checkpointing."""
        rec = ChainRecord()
        state = self._init_state(chain_rows(model.family, X), model, chain)
        start = 0
        if running is not None:          # resume: the saved state replaces the fresh one
            rec, start = running["record"], int(running["iteration"])
            state = dataclasses.replace(
                running["state"], X=chain_rows(model.family, X, running.get("latent")))
            for name, value in running["attributes"].items():
                setattr(self, name, value)
            torch.set_rng_state(running["rng"])
            if running.get("cuda_rng") is not None and X.device.type == "cuda":
                torch.cuda.set_rng_state(running["cuda_rng"], X.device)
        desc = f"{self.method_name} chain {chain + 1}/{self.n_chains}"
        bar = tqdm(range(start, self.max_iter), desc=desc, disable=not self.progress,
                   leave=False, initial=start, total=self.max_iter)
        p0 = (None, None)           # the current family's prior predictive of the rows
        for it in bar:
            tic = time.perf_counter()
            try:
                state, info = self._step(state)
            except (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as err:
                if not state.hyper:
                    raise
                values = ", ".join(f"{n}={float(v):.3g}" for n, v in state.hyper.items()
                                   if np.ndim(v) == 0)
                raise ValueError(
                    f"chain {chain + 1}, iteration {it + 1}: {err}, with the hyperparameters "
                    f"at {values}. A scale far below the family's own value means its "
                    "conditional is improper on these data (see the RuntimeWarning); remove "
                    "or jitter columns constant within a cluster, or fix that "
                    "hyperparameter") from err
            rec.seconds_trace.append(time.perf_counter() - tic)
            rec.k_trace.append(int(info["k"]))
            lp = float(info["lp"]) + self._units.lp_offset       # log p(x, ...)
            rec.lp_trace.append(lp)
            for name in self._stat_names:
                rec.stats.setdefault(name, []).append(float(info[name]))
            if it >= burn and (it - burn) % self.thin == 0:
                draw = self._draw(state)
                rec.k.append(int(info["k"]))
                rec.lp.append(lp)
                rec.alpha.append(float(draw["alpha"]))
                for name, value in (getattr(state, "hyper", None) or {}).items():
                    rec.hyper.setdefault(name, []).append(self._units.hyper_value(
                        name, np.asarray(value.cpu() if torch.is_tensor(value) else value,
                                         dtype=np.float64)))
                w = torch.exp(draw["log_pi"]).cpu().numpy()
                rec.weights.append(np.sort(w)[::-1])
                rec.labels.append(draw["labels"].cpu().numpy().astype(np.int32))
                if self.store_log_likelihood:
                    if p0[0] is not self._family:     # a new family (hyperparameters)
                        p0 = (self._family, prior_predictive(self._family, X))
                    rec.log_lik.append(pointwise_log_likelihood(
                        self._family, X, draw["log_pi"], draw["params"],
                        draw["log_pi_rest"], p0[1]).cpu().numpy() + self._units.log_jacobian)
            if self.progress:
                bar.set_postfix(K=int(info["k"]), lp=f"{lp:.1f}", refresh=False)
            if self._checkpointing and (it + 1) % every == 0 and it + 1 < self.max_iter:
                self._checkpoint(fingerprint, chain, it, state, rec)
        return rec

    def _weights_for(self, alpha):
        """The weight prior at the chain's current alpha (a DP's is sampled when it has
        a prior)."""
        w = self._model.weights
        if isinstance(w, DirichletProcess) and alpha != w.alpha:
            return DirichletProcess(alpha)
        return w

    # -- hyperparameters (inference/hyperparameters.py) ------------------------------
    def _setup_hyperparameters(self, model) -> dict:
        """The chain's hyperparameter kernel and the starting values; ``_family`` is
        the family at the current values, which every step uses."""
        self._hyper = HyperparameterStep(model)
        self._alpha_hyperprior = model.hyperpriors.alpha \
            if model.hyperpriors is not None else None
        values = self._hyper.initial()
        self._family = self._hyper.family(values)
        return values

    def _update_hyperparameters(self, hyper, alpha, stats, log_marginal=None, log_eppf=None):
        """The hyperparameters, then alpha, each from its conditional given the
        partition whose cluster statistics are ``stats``; returns (hyper, alpha, lp)
        with lp = log p(X, z, hyper, alpha), the log joint of the collapsed state.
        ``log_marginal(family)`` (sum_k log p(X_k)) and ``log_eppf(weights)``, when
        given, are a compiled backend's own for these clusters, else the models'."""
        if log_marginal is None:
            def log_marginal(family):
                return float(family.log_marginal(stats).sum())
        if log_eppf is None:
            def log_eppf(weights):
                return float(weights.log_eppf(stats.n))
        if self._hyper.active:
            hyper = self._hyper.update(hyper, stats, log_marginal)
            self._family = self._hyper.family(hyper)
        lp = self._hyper.log_prior(hyper) if hyper else 0.0
        if self._alpha_hyperprior is not None:
            alpha = update_alpha(self._alpha_hyperprior, alpha, stats.n)
            lp += float(log_prob(self._alpha_hyperprior, alpha))
        return hyper, alpha, lp + log_eppf(self._weights_for(alpha)) + log_marginal(self._family)

    def _draw(self, state) -> dict:
        """Weights and parameters drawn from their conditionals given the labels."""
        fam = self._family
        weights = self._weights_for(state.alpha)
        # the statistics of the current labels, when the step left them in the state
        stats = getattr(state, "stats", None)
        if stats is None:
            stats = fam.suff_stats_labels(state.X, state.z, state.k)
        log_w = conditional_log_weights(weights, stats.n)
        return {"labels": state.z, "log_pi": log_w[:-1], "log_pi_rest": log_w[-1],
                "params": fam.sample_posterior(stats), "alpha": state.alpha}

    def _collect(self, rows: torch.Tensor):
        """The fit's attributes from the chains' records; ``rows`` are the rows the
        chains ran on."""
        recs = self.chains_
        lp = np.array([r.lp for r in recs])
        c, d = np.unravel_index(np.argmax(lp), lp.shape)
        self.labels_, self.n_clusters_ = self._best_labels(recs[c].labels[d], recs[c].k[d])
        self.n_iter_ = int(self.max_iter)                     # iterations of each chain
        self.label_draws_ = np.concatenate([np.stack(r.labels) for r in recs])
        self.k_draws_ = np.array([r.k for r in recs])
        self.lp_draws_ = lp
        self.k_trace_ = np.array([r.k_trace for r in recs])
        self.lp_trace_ = np.array([r.lp_trace for r in recs])
        self.seconds_trace_ = np.array([r.seconds_trace for r in recs])
        self._check_convergence()
        # the hyperparameters of the highest-posterior draw
        self.hyper_ = {name: (float(v[d]) if v[d].ndim == 0 else v[d])
                       for name, v in ((n, np.asarray(vals)) for n, vals in recs[c].hyper.items())}
        fam = HyperparameterStep(self.model_).family(self.hyper_)
        units = self._units
        if units.scale is not None:      # predict in the chains' coordinates
            fam = fam.standardized(units.shift, units.scale)
        self._predict_family = fam
        Xt = rows
        if fam.latent_columns:
            # predict conditions on the scales' conditional means given labels_
            Xt = fam.plugin_latent(Xt, torch.as_tensor(self.labels_))
        self._predict_stats = self._label_stats(fam, Xt, self.labels_, self.n_clusters_)

    def _check_convergence(self):
        """``convergence_``: R-hat and bulk ESS of K and lp over the kept draws
        (:func:`chain_diagnostics`); a ``ConvergenceWarning`` when they fail Vehtari et
        al.'s (2021) thresholds, since the draws are then not yet a sample of the
        posterior, and neither are the summaries built on them."""
        diag = {}
        for name, draws in (("K", self.k_draws_), ("lp", self.lp_draws_)):
            diag[f"rhat_{name}"], diag[f"ess_{name}"] = chain_diagnostics(draws)
        self.convergence_ = diag
        problems = convergence_problems(diag, self.k_draws_.shape[0])
        if self.k_draws_.shape[1] < MIN_DRAWS:
            problems.append(f"fewer than {MIN_DRAWS} kept draws per chain to diagnose")
        if problems:
            chains = self.k_draws_.shape[0]
            advice = ("compare several chains (n_chains) and run them longer (max_iter, "
                      "burn_in)" if chains == 1 else "run the chains longer (max_iter, burn_in)")
            warnings.warn(
                f"{type(self).__name__}: the kept draws ({chains} chain"
                f"{'s' if chains > 1 else ''} of {self.k_draws_.shape[1]}) fail the "
                f"convergence checks of Vehtari et al. (2021): {'; '.join(problems)}. They "
                f"are not yet a sample of the posterior; {advice}.",
                ConvergenceWarning, stacklevel=6)

    def _best_labels(self, labels: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        """``labels_`` and ``n_clusters_`` from the highest-posterior draw's labels."""
        _, labels = np.unique(labels, return_inverse=True)
        return labels, int(labels.max()) + 1

    def _label_stats(self, family, X, labels: np.ndarray, k: int):
        """The statistics of ``labels_`` that ``predict`` conditions on."""
        return family.suff_stats_labels(X, torch.as_tensor(labels), k)

    def _predictive_scores(self, X) -> torch.Tensor:
        """log N_k + log p(x | X_k) for the clusters k of ``labels_`` (X_k its rows),
        under the hyperparameters of the highest-posterior draw: the CRP's predictive
        assignment of a new row (Neal 2000, eq. 3.7) given that partition, without the
        new-cluster term alpha p(x).  Evaluated in the chains' coordinates, which
        shifts every score of a row by the same Jacobian."""
        stats = self._predict_stats
        return torch.log(stats.n)[None] + self._predict_family.log_predictive(
            as_tensor(self._units.rows(X), device=stats.n.device), stats)

    def _predict(self, X):
        """Posterior predictive assignment: argmax_k log N_k + log p(x | X_k)."""
        return self._predictive_scores(X).argmax(1).cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        """p(z = k | x, labels_) proportional to N_k p(x | X_k), over the clusters of
        ``labels_`` (columns as its labels; the new-cluster term left out and the rest
        renormalised): the probabilities whose argmax is :meth:`predict`."""
        X = self._validate_predict_data(X)
        return torch.softmax(self._predictive_scores(X), 1).cpu().numpy()

    def posterior_arrays(self) -> dict:
        """Draws as chain x draw arrays for :func:`bnpdeep.diagnostics.to_inference_data`."""
        self._check_is_fitted()
        recs = self.chains_
        kmax = max(max(len(w) for w in r.weights) for r in recs)
        weights = np.zeros((len(recs), len(recs[0].weights), kmax))
        for c, r in enumerate(recs):
            for d, w in enumerate(r.weights):
                weights[c, d, :len(w)] = w
        out = {
            "posterior": {"K": self.k_draws_, "alpha": np.array([r.alpha for r in recs]),
                          "log_joint": self.lp_draws_, "weights": weights},
            "sample_stats": {"lp": self.lp_draws_},
            "observed_data": self._X_train.cpu().numpy(),
            "dims": {"weights": ["component"]},
        }
        for name in recs[0].hyper:
            out["posterior"][name] = np.array([np.stack(r.hyper[name]) for r in recs])
            if out["posterior"][name].ndim == 3:
                out["dims"][name] = ["feature"]
        for name in self._stat_names:
            burn = self._burn_in()
            out["sample_stats"][name] = np.array(
                [r.stats[name][burn::self.thin] for r in recs])
        if self.store_log_likelihood:
            out["log_likelihood"] = np.array([np.stack(r.log_lik) for r in recs])
        return out

    def to_inference_data(self):
        """The fit as ArviZ InferenceData (chain/draw dims)."""
        from bnpdeep.diagnostics import to_inference_data

        return to_inference_data(self)


__all__ = ["MCMCClusterer", "ChainRecord", "default_model", "relabel", "chain_rows",
           "latent_columns", "update_latent",
           "pointwise_log_likelihood", "sample_categorical", "categorical_cdf_",
           "sample_from_cdf", "dirichlet_log", "conditional_log_weights"]
