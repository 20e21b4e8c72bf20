"""The sub-cluster sampler data-parallel on torch.distributed (gloo: CPU ranks).

Each of R ranks (processes, launched by ``torchrun`` or any other way that sets
up ``torch.distributed``) holds a contiguous range of the N rows, with their
labels and sub-labels; per iteration it exchanges only cluster-level
quantities.

Layout.  The rows are cut into ``n_slots`` consecutive slots of equal size (the
last may be shorter), and rank r holds slots [r S / R, (r + 1) S / R)
(:func:`shard_range`), so at most S ranks take part.

Exact reductions.  Every sufficient statistic is a sum over rows.  A rank
computes the statistics of each of its slots, writes them into its rows of an
(S, L) buffer of zeros and all-reduces it; every rank then sums the S rows with
one ``sum(0)``.  A slot's statistics come from the same rows whichever rank holds
them, the all-reduce only adds exact zeros, and the last sum sees the same buffer,
so R ranks get bit for bit the statistics one rank gets (the float64 summation
order is fixed by the layout, not by R).  The bytes moved per reduction are
S L 8, independent of N.

Draws.  Global draws -- weights, cluster and sub-cluster parameters, split and
merge decisions, new atoms, hyperparameters -- are functions of the reduced
statistics and of torch's generator, which is seeded alike on every rank; after
each, rank 0's values are broadcast, so ranks cannot drift apart.  Per-row draws
-- labels, sub-labels, slice variables -- use uniforms keyed by (seed, chain,
iteration, stream, global row index): SplitMix64 (Steele, Lea & Flood 2014,
"Fast splittable pseudorandom number generators") applied to a counter, a
counter-based stream, so a row's draws do not depend on which rank holds it.
A run on R ranks therefore gives the draws of the same run on one.

Kernel (:class:`DistributedSubclusterSampler`).  Every step below is one where
the rows only enter through statistics and row-local draws:

* warm-up (draws discarded): Chang & Fisher's (2013) parallel sub-cluster moves
  as :class:`~bnpdeep.inference.subcluster.SubclusterSampler` runs them -- labels
  and persistent sub-labels from the instantiated weights and parameters, every
  cluster proposing to split along its sub-clusters (their eq. 15), merges on the
  posterior ratio after a burn-out, new clusters' sub-labels from a 2-means split
  whose group sums are reduced like the statistics, then max(3, K // 2) of the
  anchored moves below;
* sampling (kept draws): (1) weights and parameters from their conditionals given
  the partition, (2) the K-preserving restricted Gibbs step over all labels
  (rejection on an emptied cluster, counted over all ranks), (3) every
  ``slice_every``-th iteration the slice step of Kalli, Griffin & Walker (2011,
  Sec. 2), which empties and opens clusters (min_i u_i reduced over ranks), (4)
  anchored split/merge moves with 2-means sub-partitions (anchors drawn over all
  rows, the Hastings ratios from reduced statistics and reduced log Q), (5)
  collapsed Gibbs updates of ``gibbs_points`` rows drawn at random, whose data and
  labels are gathered so that every rank runs the same sequential updates, (6) the
  model's hyperparameters and alpha given the partition.  Each leaves the
  posterior invariant, for the reasons given in :mod:`.subcluster`.  Of the
  single-process sampler's proposals, carving and the whitened 2-means (which look
  at a cluster's nearest rows or a row sample) are not part of this kernel, nor
  are families with per-point latent variables.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..models import DirichletProcess, DPMixture, GaussianNIW
from . import moves
from .gibbs import collapsed_updates
from .mcmc import (
    MCMCClusterer,
    categorical_cdf_,
    conditional_log_weights,
    dirichlet_log,
    sample_from_cdf,
)
from .moves import disjoint_pairs
from .subcluster import log_split_proposal
from .subcluster_settings import (
    GIBBS_POINTS_TORCH,
    KernelSettings,
    resolve_common,
    sampler_options,
)
from .subpartition import LocalSums, own_pair_loglik, select_groups, two_means_groups

N_SLOTS = 64
# SamplerOptions fields the data-parallel kernel does not have
_UNSUPPORTED = ("refine_iter", "refine_rows", "resplit_prob", "warmup_moves")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def stream_key(*counters: int) -> int:
    """A 64-bit key from integer counters (seed, chain, iteration, stream, ...), each
    mixed in by SplitMix64."""
    h = np.zeros(1, dtype=np.uint64)
    for c in counters:
        h = _mix(h ^ np.array([int(c) & _MASK], dtype=np.uint64)) + _GOLDEN
    return int(h[0])


def keyed_uniforms(key: int, rows: np.ndarray) -> torch.Tensor:
    """U(0, 1) draws, one per global row index in ``rows`` (uint64), from the stream
    ``key``: SplitMix64 at counter key + (row + 1) * golden gamma, its top 53 bits
    as a float64 in (0, 1).  A row's draw depends on its index and the key only."""
    with np.errstate(over="ignore"):
        x = _mix(np.uint64(key) + (rows + np.uint64(1)) * _GOLDEN)
    return torch.from_numpy(((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53)


def shard_range(n_total: int, world: int, rank: int, n_slots: int = N_SLOTS
                ) -> tuple[int, int]:
    """The rows [start, stop) rank ``rank`` of ``world`` holds: slots of
    ceil(n_total / n_slots) rows, split evenly over the ranks."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank}")
    slot = max(1, -(-int(n_total) // int(n_slots)))
    slots = -(-int(n_total) // slot)
    if slots < world:
        raise ValueError(f"{n_total} rows in {slots} slots cannot be shared by {world} ranks "
                         "(each needs a slot); use fewer ranks")
    return rank * slots // world * slot, min((rank + 1) * slots // world * slot, int(n_total))


def rank_checkpoint_name(method_name: str, comm) -> str:
    """The checkpoint file of this rank in the folder all ranks share: one per rank
    (``<method>_rank<r>of<R>_checkpoint.pt``); the plain name on one rank."""
    if comm is None or comm.world == 1:
        return f"{method_name}_checkpoint.pt"
    return f"{method_name}_rank{comm.rank}of{comm.world}_checkpoint.pt"


class RankFailure(RuntimeError):
    """A collective operation failed: a rank ended or lost its connection."""


class ShardComm:
    """This rank's rows (global [start, stop) of ``n_total``) and the collectives over
    all ranks: exact slot-ordered sums, integer sums, minima, broadcasts from rank 0
    and keyed uniforms.  Without an initialised process group it is the one-rank
    run (no communication)."""

    def __init__(self, n_total: int, start: int, stop: int, n_slots: int = N_SLOTS):
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        expected = shard_range(n_total, self.world, self.rank, n_slots)
        if (start, stop) != expected:
            raise ValueError(f"rank {self.rank} of {self.world} holds rows [{start}, {stop}) "
                             f"of {n_total}; with n_slots={n_slots} it must hold "
                             f"[{expected[0]}, {expected[1]}) (shard_range)")
        self.n_total, self.start, self.stop = int(n_total), int(start), int(stop)
        self.slot = max(1, -(-self.n_total // int(n_slots)))
        self.n_slots = -(-self.n_total // self.slot)
        self.rows = np.arange(start, stop, dtype=np.uint64)
        self.bytes_reduced = 0
        self.collectives = 0
        self.seconds = 0.0       # in collectives, waiting for the other ranks included

    @classmethod
    def for_local_rows(cls, n_local: int, n_slots: int = N_SLOTS) -> "ShardComm":
        """The communicator of a rank holding ``n_local`` rows: the ranks' row counts are
        gathered, and rank r holds the rows after those of ranks 0..r-1."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls(int(n_local), 0, int(n_local), n_slots)
        n = torch.tensor([int(n_local)])
        sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        start = sum(sizes[:dist.get_rank()])
        return cls(sum(sizes), start, start + int(n_local), n_slots)

    # -- collectives ------------------------------------------------------------------
    def _collective(self, op, tensor, *args):
        if not self.distributed:
            return tensor
        self.bytes_reduced += tensor.numel() * tensor.element_size()
        self.collectives += 1
        tic = time.perf_counter()
        try:
            op(tensor, *args)
            self.seconds += time.perf_counter() - tic
        except RuntimeError as err:
            raise RankFailure(
                f"rank {self.rank} of {self.world}: a collective operation failed ({err}). "
                "Another rank has ended or lost its connection; fit again with the same "
                "number of ranks and resume=True to continue from the last checkpoint"
            ) from err
        return tensor

    def slot_sum(self, fn, *row_tensors: torch.Tensor, rows: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """sum over all rows of all ranks of ``fn(rows of one slot)``, a tensor of a fixed
        shape (every rank gets the same bits, whatever the number of ranks).  The
        tensors hold this rank's rows, or, with ``rows`` (a mask of them), those rows
        only, in order."""
        first, last = self.start // self.slot, -(-self.stop // self.slot)
        bounds = [min(s * self.slot, self.stop) - self.start for s in range(first, last + 1)]
        bounds[0] = 0
        if rows is not None:
            bounds = torch.cat([torch.zeros(1, dtype=torch.long),
                                torch.cumsum(rows.long(), 0)])[bounds].tolist()
        parts = [fn(*(t[a:b] for t in row_tensors))
                 for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        shape = parts[0].shape
        buf = torch.zeros((self.n_slots, parts[0].numel()), dtype=parts[0].dtype,
                          device=parts[0].device)
        buf[first:last] = torch.stack([p.reshape(-1) for p in parts])
        return self._collective(dist.all_reduce, buf).sum(0).reshape(shape)

    def stats(self, family, X: torch.Tensor, z: torch.Tensor, k: int,
              rows: torch.Tensor | None = None):
        """The family's statistics of clusters 0..k-1 over all ranks' rows (with
        ``rows``, X and z hold only the masked rows of this rank)."""
        total = self.slot_sum(lambda Xs, zs: _flat_fields(family.suff_stats_labels(Xs, zs, k)),
                              X, z, rows=rows)
        return _from_flat(family.empty_stats(k), total)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (integer tensors: exact in any order)."""
        return self._collective(dist.all_reduce, t.clone())

    def min(self, t: torch.Tensor) -> torch.Tensor:
        return self._collective(dist.all_reduce, t.clone(), dist.ReduceOp.MIN)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self._collective(dist.all_reduce, t.clone(), dist.ReduceOp.MAX)

    def gather(self, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` (one entry per row of this rank) at the global rows ``idx``, on
        every rank: each row's owner writes it into zeros, then a sum (exact: one
        term is not zero)."""
        out = torch.zeros((idx.shape[0],) + values.shape[1:], dtype=values.dtype)
        mine = (idx >= self.start) & (idx < self.stop)
        out[mine] = values[idx[mine] - self.start]
        return self.sum(out)

    def gather_rows(self, mask: torch.Tensor, *tensors: torch.Tensor):
        """The rows of ``tensors`` (this rank's rows) where ``mask`` holds, of all ranks,
        on every rank, in global row order; also the position of this rank's first
        masked row among them."""
        n = torch.tensor([int(mask.sum())])
        if not self.distributed:
            return tuple(t[mask] for t in tensors), 0
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        self._collective(lambda t: dist.all_gather(sizes, t), n)
        sizes = [int(s) for s in sizes]
        out = []
        for t in tensors:
            part = torch.zeros((max(sizes),) + t.shape[1:], dtype=t.dtype)
            part[:sizes[self.rank]] = t[mask]
            parts = [torch.empty_like(part) for _ in range(self.world)]
            self._collective(lambda x, ps=parts: dist.all_gather(ps, x), part)
            out.append(torch.cat([p[:m] for p, m in zip(parts, sizes, strict=True)]))
        return tuple(out), sum(sizes[:self.rank])

    def sum_stats(self, stats):
        """Sufficient statistics summed over ranks (every field in one all-reduce; the
        summation order depends on the number of ranks, unlike :meth:`stats`)."""
        return _from_flat(stats, self.sum(_flat_fields(stats)))

    def moments(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance (divisor N - 1) of all ranks' rows, slot-exact, in two
        passes: the mean, then the sums of centred outer products.  One pass's
        sum x x^T - N mean mean^T would cancel the digits of a column whose mean is
        far larger than its spread."""
        d = X.shape[1]
        s = self.slot_sum(_row_sums, X)
        n, mean = s[0], s[1:] / s[0]
        scatter = self.slot_sum(lambda xs: _centred_outer(xs, mean), X).reshape(d, d)
        return mean, scatter / max(float(n) - 1, 1)

    def column_moments(self, X, moments=None) -> tuple[np.ndarray, np.ndarray, int]:
        """All ranks' columns' mean and standard deviation (divisor N; 1 for a constant
        column), slot-exact, and N: :func:`~bnpdeep.inference.units.column_moments`
        of the whole data.  ``moments``: X's (mean, cov) from :meth:`moments`, if
        already reduced."""
        mean, cov = self.moments(torch.as_tensor(np.asarray(X), dtype=torch.float64)) \
            if moments is None else moments
        n = self.n_total
        std = (cov.diagonal().clamp_min(0) * (max(n - 1, 1) / n)).sqrt().cpu().numpy()
        return mean.cpu().numpy(), np.where(std > 0, std, 1.0), n

    def agree(self, *tensors):
        """Rank 0's values of tensors every rank computed alike, in place."""
        for t in tensors:
            if torch.is_tensor(t):
                self._collective(dist.broadcast, t, 0)
        return tensors

    def agree_params(self, params):
        self.agree(*(params if isinstance(params, tuple) else (params,)))
        return params

    def uniforms(self, key: int) -> torch.Tensor:
        """One keyed uniform per row of this rank (:func:`keyed_uniforms`)."""
        return keyed_uniforms(key, self.rows)

    def relabel(self, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels of clusters occupied on some rank mapped onto 0..K'-1 in order;
        (labels, old ids kept)."""
        present = self.sum(torch.bincount(z, minlength=k)) > 0
        return (torch.cumsum(present, 0) - 1)[z], present.nonzero().flatten()

    def counts(self, z: torch.Tensor, k: int) -> torch.Tensor:
        return self.sum(torch.bincount(z, minlength=k))

    def group_sums(self, rows: torch.Tensor):
        """Group aggregates over all ranks for :func:`two_means_groups` and
        :func:`log_split_proposal` on the rows ``rows`` (a mask of this rank's rows)."""
        comm = self

        class Sums(LocalSums):
            @staticmethod
            def group_sum(values, g, n_groups):
                return comm.slot_sum(lambda v, h: LocalSums.group_sum(v, h, n_groups),
                                     values, g, rows=rows)

            @staticmethod
            def group_outer(X, g, n_groups):
                return comm.slot_sum(lambda v, h: LocalSums.group_outer(v, h, n_groups),
                                     X, g, rows=rows)

            @staticmethod
            def all_true(flag):
                return bool(comm.min(torch.tensor([int(flag)]))[0])

        return Sums


@dataclass
class ShardState:
    """A data-parallel chain's state on one rank: its rows ``X`` and their labels
    ``z`` (0..k-1 over all ranks) and warm-up sub-labels ``zs``; the rest is global."""

    X: torch.Tensor
    z: torch.Tensor
    k: int
    alpha: float
    iteration: int = 0
    zs: torch.Tensor | None = None
    born: torch.Tensor | None = None
    stats: object | None = None        # SuffStats of the K clusters over all ranks
    sub_stats: object | None = None    # warm-up: of the 2K sub-clusters
    hyper: dict | None = None


class DistributedSubclusterSampler(MCMCClusterer):
    """The sub-cluster sampler data-parallel over the ranks of ``torch.distributed``.

    Every rank constructs it alike and calls ``fit(X_rank)`` with its own rows,
    ``X[start:stop]`` for ``(start, stop) = shard_range(N, world, rank, n_slots)``;
    without a process group it is the one-rank run.  The fitted ``labels_``,
    ``label_draws_`` and pointwise log-likelihoods are this rank's rows'; K, the
    log joint, weights, hyperparameters and acceptance rates are global and the
    same on every rank.  Draws do not depend on the number of ranks (module
    docstring).

    Parameters are those of :class:`~bnpdeep.inference.subcluster.SubclusterSampler`
    that apply (in ``options``: ``proposal_weights`` two numbers, for the
    principal-axis and the random-axis 2-means; "auto" ``gibbs_points`` is 32, as
    the torch backend's; ``refine_iter``, ``refine_rows``, ``resplit_prob`` and
    ``warmup_moves`` are not options of this sampler), plus ``n_slots`` (the
    reduction layout: at most that many ranks, S L 8 bytes per reduction).  The
    kernel is the module docstring's: the warm-up runs Chang & Fisher's parallel
    moves; the kept draws the restricted Gibbs step, a slice step
    every ``slice_every``-th iteration, ``moves_per_iter`` anchored split/merge
    proposals, the collapsed Gibbs updates and the hyperparameter updates.
    ``fit(X, checkpoint_dir=..., resume=True)`` resumes every rank from its own
    checkpoint file in the shared folder (the same number of ranks).
    ``bytes_reduced_``, ``collectives_``, ``collective_seconds_``: the bytes this rank
    passed to collective operations, their number, and the seconds spent in them
    (waiting for the other ranks included).
    """

    method_name = "subcluster-dp"
    _stat_names = ("split_acceptance", "merge_acceptance")
    _chain_attributes = ("label_rejections_",)

    def __init__(self, model=None, init_k: int = 1, max_iter: int = 400, burn_in=None,
                 thin: int = 1, n_chains: int = 1, warmup=None, options=None,
                 n_slots: int = N_SLOTS, store_log_likelihood: bool = True,
                 random_state=0, device="cpu", progress: bool = False,
                 checkpoint_every: int = 10):
        self.model = model
        self.init_k = init_k
        self.max_iter = max_iter
        self.burn_in = burn_in
        self.thin = thin
        self.n_chains = n_chains
        self.warmup = warmup
        self.options = options
        self.n_slots = n_slots
        self.store_log_likelihood = store_log_likelihood
        self.random_state = random_state
        self.device = device
        self.progress = progress
        self.checkpoint_every = checkpoint_every

    # -- the layout --------------------------------------------------------------------
    @property
    def _CHECKPOINT(self) -> str:
        return rank_checkpoint_name(self.method_name, getattr(self, "_comm", None))

    def _fit(self, X):
        if str(self.device) != "cpu":
            raise ValueError(f"the data-parallel sampler runs its ranks on the CPU (gloo); "
                             f"device={self.device!r} is not supported")
        if int(self.n_slots) < 1:
            raise ValueError(f"n_slots must be at least 1, got {self.n_slots}")
        sampler_options(self.options).check(_UNSUPPORTED)
        self._comm = ShardComm.for_local_rows(X.shape[0], int(self.n_slots))
        # all ranks' moments of the data, reduced once: the default prior and the fit's
        # coordinates read them
        self._data_moments = self._comm.moments(torch.as_tensor(np.asarray(X),
                                                                 dtype=torch.float64))
        super()._fit(X)
        self.bytes_reduced_ = self._comm.bytes_reduced
        self.collectives_ = self._comm.collectives
        self.collective_seconds_ = self._comm.seconds
        return self

    def _resolve_model(self, X) -> DPMixture:
        if self.model is not None:
            return super()._resolve_model(X)
        # GaussianNIW.weak from the moments of all ranks' rows
        return DPMixture(GaussianNIW.weak_from_moments(*self._data_moments),
                         DirichletProcess(1.0))

    def _column_moments(self, X: np.ndarray):
        return self._comm.column_moments(X, self._data_moments)

    # -- kernel --------------------------------------------------------------------------
    def _key(self, it: int, stream: int, extra: int = 0) -> int:
        seed = 0 if self.random_state is None else int(self.random_state)
        return stream_key(seed, self._chain, it, stream, extra)

    def _init_state(self, X, model, chain) -> ShardState:
        if self.init_k < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        if model.family.latent_columns:
            raise ValueError("the data-parallel sampler does not take families with "
                             f"per-point latent variables ({type(model.family).__name__})")
        self._model, self._chain = model, chain
        hyper = self._setup_hyperparameters(model)
        weights = model.weights
        comm = self._comm
        self.label_rejections_ = 0
        opts = sampler_options(self.options)
        common = resolve_common(self.warmup, opts, weights, self._burn_in(), (1.0, 1.0),
                                _UNSUPPORTED)
        self.warmup_ = common["warmup"]
        # kernel bandwidth of the local anchor choice: a tenth of the data's scale (the
        # single-process sampler's rule, from all ranks' rows)
        var = comm.moments(model.family.features(X))[1].diagonal().clamp_min(0)
        self._settings = KernelSettings(
            **common, gibbs_points=GIBBS_POINTS_TORCH if opts.gibbs_points == "auto"
            else int(opts.gibbs_points),
            bandwidth2=max(float(var.mean()) * 0.01, 1e-12))
        k0 = min(int(self.init_k), comm.n_total)
        u = comm.uniforms(self._key(-1, 0))
        z, kept = comm.relabel((u * k0).long().clamp_max_(k0 - 1), k0)
        k = int(kept.numel())
        zs = self._two_means_sublabels(X, z, torch.ones(k, dtype=torch.bool),
                                       torch.zeros_like(z))
        born = torch.full((k,), -self._settings.burnout, dtype=torch.long)
        fam = self._family
        sub = comm.stats(fam, X, 2 * z + zs, 2 * k)
        return ShardState(X, z, k, float(getattr(weights, "alpha", 1.0)), zs=zs, born=born,
                          stats=sub.pair_sums(), sub_stats=sub, hyper=hyper)

    def _two_means_sublabels(self, X, z, clusters, zs):
        """Sub-labels of the flagged clusters from a 2-means split of their rows on all
        ranks (:func:`two_means_groups` with reduced group sums)."""
        zs = zs.clone()
        rows, g, n_groups = select_groups(clusters, z)
        if n_groups:
            zs[rows] = two_means_groups(self._family.features(X)[rows], g, n_groups,
                                        sums=self._comm.group_sums(rows))
        return zs

    def _labels(self, logits: torch.Tensor, key: int) -> torch.Tensor:
        """One categorical draw per row from its logits (overwritten), keyed uniforms."""
        return sample_from_cdf(categorical_cdf_(logits), self._comm.uniforms(key))

    def _step(self, state: ShardState):
        self._family = self._hyper.family(state.hyper or {})
        if state.iteration < self.warmup_:
            return self._warmup_step(state)
        return self._exact_step(state)

    def _warmup_step(self, state: ShardState):
        fam, comm = self._family, self._comm
        weights = self._weights_for(state.alpha)
        X, k, it, born = state.X, state.k, state.iteration, state.born
        sub = state.sub_stats
        stats = sub.pair_sums()
        log_pi = conditional_log_weights(weights, stats.n)[:k]
        log_pibar = dirichlet_log(sub.n.reshape(k, 2) + self._settings.sub_alpha / 2)
        comm.agree(log_pi, log_pibar)
        params = comm.agree_params(fam.sample_posterior(stats))
        sub_params = comm.agree_params(fam.sample_posterior(sub))
        z = self._labels(fam.log_likelihood(X, params).add_(log_pi), self._key(it, 1))
        zs = self._labels(own_pair_loglik(fam, X, z, k, sub_params).add_(log_pibar[z]),
                          self._key(it, 2))
        z, kept = comm.relabel(z, k)                  # empty clusters are dropped
        born, k = born[kept], int(kept.numel())
        sub = comm.stats(fam, X, 2 * z + zs, 2 * k)
        stats = sub.pair_sums()
        # parallel splits along the sub-clusters (Chang & Fisher eq. 15)
        split = comm.agree(moves.parallel_split_decisions(weights, fam, stats, sub))[0]
        n_split = int(split.sum())
        if n_split:
            z, fresh = moves.apply_parallel_splits(z, zs, split)
            zs = self._two_means_sublabels(X, z, fresh, zs)
            born = torch.cat([torch.where(split, it, born), torch.full((n_split,), it)])
        n_merged = 0
        eligible = ~split & (it - born[:k] >= self._settings.burnout)
        if int(eligible.sum()) > 1:
            target, used = moves.warmup_merge_targets(fam, weights, stats, eligible,
                                                      k + n_split, born.shape[0])
            comm.agree(target, used)
            if bool(used.any()):
                # the merged pair's old clusters become its two sub-clusters
                zs = torch.where(used[z], (target[z] != z).long(), zs)
                z = target[z]
                born = torch.where(used, it, born)
                z, kept = comm.relabel(z, born.shape[0])
                born = born[kept]
                n_merged = int(used.sum()) // 2
        k = int(born.shape[0])
        # the exact anchored moves too (as the single-process warm-up runs them)
        if comm.n_total >= 2:
            z, k, counts, touched, kept = self._move_batch(X, z, k, weights, it,
                                                           n_moves=max(3, k // 2))
            if bool(touched.any()):
                born = torch.cat([born, torch.full((counts["split"][1],), it)])[kept]
                born = torch.where(touched, it, born)
                zs = self._two_means_sublabels(X, z, touched, zs)
        sub = comm.stats(fam, X, 2 * z + zs, 2 * k)
        stats = sub.pair_sums()
        hyper, alpha, lp = self._update_global(state.hyper, state.alpha, stats)
        new = ShardState(X, z, k, alpha, it + 1, zs, born, stats, sub, hyper)
        return new, {"k": k, "lp": lp,
                     "split_acceptance": n_split / max(int(split.numel()), 1),
                     "merge_acceptance": float(n_merged > 0)}

    def _exact_step(self, state: ShardState):
        fam, comm = self._family, self._comm
        weights = self._weights_for(state.alpha)
        X, k, it = state.X, state.k, state.iteration
        stats = state.stats
        # 1. weights and parameters from their conditionals
        log_w = comm.agree(conditional_log_weights(weights, stats.n))[0]
        params = comm.agree_params(fam.sample_posterior(stats))
        # 2. K-preserving restricted Gibbs step (rejection on an emptied cluster)
        loglik = fam.log_likelihood(X, params)
        slice_now = self._settings.slice_due(it)
        cdf = categorical_cdf_(loglik + log_w[:k])
        z = state.z
        for attempt in range(self._settings.max_label_tries):
            draw = sample_from_cdf(cdf, comm.uniforms(self._key(it, 3, attempt)))
            if int(comm.counts(draw, k).min()) > 0:
                z = draw
                break
        else:
            self.label_rejections_ += 1
        # 3. the slice step, which empties and opens clusters
        if slice_now:
            z, k = self._slice_labels(X, z, log_w, weights, loglik, it)
        # 3. anchored split/merge moves
        counts = {"split": [0, 0], "merge": [0, 0]}
        if self._settings.moves_per_iter and comm.n_total >= 2:
            z, k, counts, _, _ = self._move_batch(X, z, k, weights, it)
        stats = comm.stats(fam, X, z, k)
        # 4. collapsed Gibbs updates of gibbs_points labels drawn at random
        if self._settings.gibbs_points:
            z, stats = self._collapsed_updates(X, z, stats, weights)
            k = stats.k
        # 4. hyperparameters and concentration given the partition
        hyper, alpha, lp = self._update_global(state.hyper, state.alpha, stats)
        new = ShardState(X, z, k, alpha, it + 1, hyper=hyper, stats=stats)
        return new, {"k": k, "lp": lp,
                     "split_acceptance": counts["split"][1] / max(counts["split"][0], 1),
                     "merge_acceptance": counts["merge"][1] / max(counts["merge"][0], 1)}

    def _collapsed_updates(self, X, z, stats, weights):
        """:func:`~bnpdeep.inference.gibbs.collapsed_updates` of ``gibbs_points`` rows
        drawn uniformly whatever the state: their data and labels are gathered on
        every rank, which runs the same sequential updates against the global
        statistics (the same draws from torch's generator); the owners keep the new
        labels, and every other row's cluster takes its new id (an emptied cluster
        held only updated rows)."""
        comm = self._comm
        idx = torch.randperm(comm.n_total)[:self._settings.gibbs_points]
        k_old = stats.k
        new, stats, ids = collapsed_updates(self._family, weights, comm.gather(idx, X),
                                            comm.gather(idx, z), stats, range(idx.numel()),
                                            return_ids=True)
        remap = torch.full((k_old,), -1, dtype=torch.long)
        kept = (ids >= 0).nonzero().flatten()
        remap[ids[kept]] = kept
        z = remap[z]
        mine = (idx >= comm.start) & (idx < comm.stop)
        z[idx[mine] - comm.start] = new[mine]
        return z, stats

    def _anchor_pairs(self, F, m: int, it: int) -> torch.Tensor:
        """:meth:`SubclusterSampler._anchor_pairs` over all ranks: i uniform; j uniform
        or, with probability 1/2, proportional to a Gaussian kernel around x_i -- a
        Gumbel-max draw with keyed uniforms, the maximum reduced over ranks.  The
        selection depends on the data only, so it drops out of the Hastings ratio."""
        comm = self._comm
        n = comm.n_total
        i = torch.randint(n, (m,))
        j = torch.randint(n - 1, (m,))
        j = j + (j >= i)
        local = (torch.rand(m) >= 0.5).nonzero().flatten() if n > 2 else torch.zeros(0)
        if local.numel():
            xi = comm.gather(i[local], F)
            rows = torch.arange(comm.start, comm.stop)
            # one column of Gumbel-perturbed log kernels per local anchor; the maxima and
            # the rows attaining them are reduced for all anchors at once
            val = torch.stack([
                (F - x).square_().sum(1).mul_(-0.5 / self._settings.bandwidth2)
                .masked_fill_(rows == i[c], -math.inf)
                .sub_(torch.log(-torch.log(comm.uniforms(self._key(it, 6, c)))))
                for c, x in zip(local.tolist(), xi, strict=True)], 1)
            best = comm.max(val.max(0).values)
            mine = torch.where(val == best, rows[:, None], n).min(0).values
            j[local] = comm.min(mine)
        return torch.stack([i, j], 1)

    def _move_batch(self, X, z, k: int, weights, it: int, n_moves=None):
        """:meth:`SubclusterSampler._move_batch` over all ranks, with the 2-means
        sub-partitions (principal or random axis, ``proposal_weights``): anchor pairs,
        kept on disjoint clusters; per group the sub-partition, sub-cluster weights and
        parameters (global draws from reduced statistics), responsibilities q and a
        split drawn from them (keyed uniforms, anchors apart); H_split / H_merge from
        the reduced statistics and the reduced log Q, decided in sequence.  Returns
        (z, K, counts, the clusters a move made or changed, the old ids kept)."""
        fam, comm = self._family, self._comm
        F = fam.features(X)
        m = self._settings.moves_per_iter if n_moves is None else int(n_moves)
        pairs = self._anchor_pairs(F, m, it)
        anchor_z = comm.gather(pairs.reshape(-1), z).reshape(m, 2)
        keep = disjoint_pairs(anchor_z.reshape(-1), torch.arange(2 * m).reshape(m, 2))
        pairs, anchor_z = pairs[keep], anchor_z[keep]
        n_groups = pairs.shape[0]
        ca, cb = anchor_z.unbind(1)
        group_of = torch.full((k,), -1, dtype=torch.long)
        group_of[cb] = torch.arange(n_groups)
        group_of[ca] = torch.arange(n_groups)
        gid = group_of[z]
        rows = gid >= 0
        g = gid[rows]
        sums = comm.group_sums(rows)
        # sub-clusters of every group: a 2-means sub-partition of its rows, then
        # weights and parameters from their conditionals given it
        kind = int(torch.multinomial(self._settings.kind_weights, 1))
        axes = torch.randn(n_groups, fam.dim, dtype=F.dtype)
        h = two_means_groups(F[rows], g, n_groups, axes if kind == 1 else None, sums=sums)
        Xr = X[rows]
        sub = comm.stats(fam, Xr, 2 * g + h, 2 * n_groups, rows=rows)
        sub_alpha = self._settings.sub_alpha
        log_w = comm.agree(dirichlet_log(sub.n.reshape(n_groups, 2) + sub_alpha / 2))[0]
        sub_params = comm.agree_params(fam.sample_posterior(sub))
        ll = own_pair_loglik(fam, Xr, g, n_groups, sub_params) + log_w[g]
        log_q = ll - torch.logsumexp(ll, 1, keepdim=True)
        side = sample_from_cdf(categorical_cdf_(log_q.clone()),
                               comm.uniforms(self._key(it, 7))[rows]) == 1
        q_full = torch.zeros((z.shape[0], 2), dtype=log_q.dtype)
        q_full[rows] = log_q
        q_i, q_j = comm.gather(pairs.reshape(-1), q_full).reshape(n_groups, 2, 2).unbind(1)
        anchor_terms = torch.stack([q_i[:, 0] + q_j[:, 1], q_i[:, 1] + q_j[:, 0]], 1)
        flip = comm.agree(sample_from_cdf(categorical_cdf_(anchor_terms.clone())) == 1)[0]
        # the anchors apart: i on side flip, j on the other
        local_pos = torch.full((z.shape[0],), -1, dtype=torch.long)
        local_pos[rows] = torch.arange(int(rows.sum()))
        anchors, values = pairs.reshape(-1), torch.stack([flip, ~flip], 1).reshape(-1)
        mine = (anchors >= comm.start) & (anchors < comm.stop)
        side[local_pos[anchors[mine] - comm.start]] = values[mine]
        new_b = side != flip[g]
        is_split = ca == cb
        side_b = torch.where(is_split[g], new_b, z[rows] == cb[g])
        s_ab = comm.stats(fam, Xr, 2 * g + side_b.long(), 2 * n_groups, rows=rows)
        s_a, s_b = s_ab[0::2], s_ab[1::2]
        terms = moves.log_split_terms(weights, fam, s_a + s_b, s_a, s_b)
        log_prop = log_split_proposal(log_q, side_b, g, n_groups, None, None, sums=sums,
                                      anchor_q=(q_i, q_j))
        log_terms = torch.where(is_split, terms - log_prop, log_prop - terms)
        accepted = comm.agree(moves.accept_in_sequence(weights, k, log_terms, is_split))[0]
        n_split = int((accepted & is_split).sum())
        counts = {"split": [int(is_split.sum()), n_split],
                  "merge": [int((~is_split).sum()), int((accepted & ~is_split).sum())]}
        touched = torch.zeros(k + n_split, dtype=torch.bool)
        kept = torch.arange(k + n_split)
        if bool(accepted.any()):
            new_label = torch.where(is_split, k + torch.cumsum(accepted & is_split, 0) - 1, ca)
            moving = side_b & accepted[g]
            idx = rows.nonzero().flatten()[moving]
            z = z.clone()
            z[idx] = new_label[g[moving]]
            touched[ca[accepted]] = True
            touched[k:] = True
            if counts["merge"][1]:
                z, kept = comm.relabel(z, k + n_split)
        return z, int(kept.numel()), counts, touched[kept], kept

    def _slice_labels(self, X, z, log_w, weights, loglik, it):
        """:meth:`SubclusterSampler._slice_labels` over all ranks: u_i from keyed
        uniforms, min_i u_i reduced, the new atoms drawn once; returns (z, K)."""
        fam, comm = self._family, self._comm
        k = log_w.shape[0] - 1
        log_u = log_w[z] + torch.log(comm.uniforms(self._key(it, 4)).clamp_min(1e-300))
        floor = comm.min(log_u.min().reshape(1))
        log_new = comm.agree(weights.sample_rest_log_weights(k, float(log_w[k]),
                                                             float(floor[0])))[0]
        m = int(log_new.numel())
        logits = loglik.masked_fill_(log_w[None, :k] <= log_u[:, None], -math.inf)
        if m:
            new_ll = fam.log_likelihood(X, comm.agree_params(
                fam.sample_posterior(fam.empty_stats(m))))
            new_ll.masked_fill_(log_new[None] <= log_u[:, None], -math.inf)
            logits = torch.cat([logits, new_ll], 1)
        z = self._labels(logits, self._key(it, 5))
        z, kept = comm.relabel(z, k + m)
        return z, int(kept.numel())

    def _update_global(self, hyper, alpha, stats):
        """Hyperparameters and alpha given the partition (global draws), rank 0's kept."""
        hyper, alpha, lp = self._update_hyperparameters(hyper, alpha, stats)
        if self._comm.distributed:
            values = torch.tensor([float(alpha), float(lp)], dtype=torch.float64)
            self._comm.agree(values, *(hyper or {}).values())
            alpha, lp = float(values[0]), float(values[1])
            self._family = self._hyper.family(hyper or {})
        return hyper, alpha, lp

    def _draw(self, state) -> dict:
        fam, comm = self._family, self._comm
        log_w = comm.agree(conditional_log_weights(self._weights_for(state.alpha),
                                                   state.stats.n))[0]
        return {"labels": state.z, "log_pi": log_w[:-1], "log_pi_rest": log_w[-1],
                "params": comm.agree_params(fam.sample_posterior(state.stats)),
                "alpha": state.alpha}

    def _best_labels(self, labels: np.ndarray, k: int):
        # global cluster ids already: renumbering this rank's would break the agreement
        return np.asarray(labels, dtype=np.int64), int(k)

    def _label_stats(self, family, X, labels: np.ndarray, k: int):
        return self._comm.stats(family, X, torch.as_tensor(labels), k)

    def _merge_rank_fits(self, fits: list) -> "DistributedSubclusterSampler":
        """This fit (rank 0's) with the per-row results of every rank's fit in
        ``fits`` joined in row order: the one-rank fit (:func:`fit_on_ranks`)."""
        self.labels_ = np.concatenate([f.labels_ for f in fits])
        self.label_draws_ = np.concatenate([f.label_draws_ for f in fits], 1)
        for c, rec in enumerate(self.chains_):
            rec.labels = [np.concatenate(parts) for parts in
                          zip(*(f.chains_[c].labels for f in fits), strict=True)]
            rec.log_lik = [np.concatenate(parts) for parts in
                           zip(*(f.chains_[c].log_lik for f in fits), strict=True)]
        self._X_train = torch.cat([f._X_train for f in fits])
        n = self._X_train.shape[0]
        self._comm = ShardComm(n, 0, n, int(self.n_slots))
        return self

def _fit_rank(rank: int, world: int, init: str, est, X: np.ndarray, n_slots: int,
              fit_kw: dict, out: str, threads: int):
    """One rank of :func:`fit_on_ranks`: its rows' fit, saved to ``out``/rank<r>.pt."""
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        a, b = shard_range(X.shape[0], world, rank, n_slots)
        est.fit(X[a:b], **fit_kw)
        est._comm = None
        torch.save(est, f"{out}/rank{rank}.pt")
        dist.barrier()          # no rank tears the group down while a peer still uses it
    finally:
        dist.destroy_process_group()


def fit_on_ranks(est, X, n_ranks: int, checkpoint_dir=None, resume: bool = False,
                 threads: int | None = None):
    """Fit ``est`` (a :class:`DistributedSubclusterSampler` or a
    :class:`~bnpdeep.inference.deepdpm.DistributedDeepDPM`) on ``n_ranks`` local
    processes (spawned, gloo), each holding its :func:`shard_range` of the rows of
    X; returns rank 0's fitted estimator with the per-row results (``labels_``; the
    sampler's ``label_draws_``, the records' labels and pointwise log-likelihoods)
    gathered over the ranks in row order, as ``est.fit(X)`` on one rank has them.
    ``threads``: torch threads per process (default: this process's shared out).  A
    rank that fails ends the fit with :class:`RankFailure` naming it; ``resume=True``
    continues from the checkpoints
    in ``checkpoint_dir``."""
    import tempfile

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    from bnpdeep.data import check_array

    X = check_array(X, min_rows=1)
    if int(n_ranks) < 1:
        raise ValueError(f"n_ranks must be at least 1, got {n_ranks}")
    shard_range(X.shape[0], int(n_ranks), 0, int(est.n_slots))      # enough slots?
    threads = threads or max(1, torch.get_num_threads() // int(n_ranks))
    fit_kw = {"checkpoint_dir": checkpoint_dir, "resume": resume}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mp.spawn(_fit_rank, args=(int(n_ranks), f"file://{tmp}/rendezvous", est, X,
                                      int(est.n_slots), fit_kw, tmp, threads),
                     nprocs=int(n_ranks))
        except ProcessException as err:
            raise RankFailure(f"rank {err.error_index} of {n_ranks} ended: {err}") from err
        fits = [torch.load(f"{tmp}/rank{r}.pt", weights_only=False) for r in range(n_ranks)]
    return fits[0]._merge_rank_fits(fits)


def _flat_fields(stats) -> torch.Tensor:
    """A SuffStats' fields, flattened into one vector in field order."""
    return torch.cat([v.reshape(-1) for v in stats.fields.values()])


def _from_flat(template, flat: torch.Tensor):
    """The SuffStats of ``template``'s type and shapes holding the values ``flat``."""
    out, at = {}, 0
    for name, v in template.fields.items():
        out[name] = flat[at:at + v.numel()].reshape(v.shape)
        at += v.numel()
    return type(template)(**out)


def _row_sums(xs: torch.Tensor) -> torch.Tensor:
    """(n, sum x) of the rows xs."""
    return torch.cat([torch.tensor([float(xs.shape[0])], dtype=xs.dtype), xs.sum(0)])


def _centred_outer(xs: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """sum (x - mean)(x - mean)^T of the rows xs, flattened."""
    c = xs - mean
    return (c.T @ c).reshape(-1)


__all__ = ["DistributedSubclusterSampler", "fit_on_ranks", "ShardComm", "ShardState", "RankFailure",
           "keyed_uniforms", "shard_range", "stream_key", "N_SLOTS"]
