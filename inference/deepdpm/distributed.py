"""DeepDPM data-parallel on torch.distributed (gloo: CPU ranks).

Each of R ranks holds a contiguous range of the N rows (the layout of
:func:`~bnpdeep.inference.distributed.shard_range`) and a replica of the guide --
the clustering net, the sub-clustering nets and the point parameters -- which
stays the same on every rank:

* **nets** (data-parallel SGD, what ``DistributedDataParallel`` does): every SVI
  step takes a minibatch of b_r rows on each rank (together the single-process
  batch), and before the optimiser's step the gradients are averaged over the
  ranks with weights b_r / sum_r b_r -- the gradient of the mean loss over the
  union of the minibatches.  Every rank then takes the same Adam step.  The nets
  are broadcast from rank 0 at the start and after every surgery.
* **E- and M-steps**: the E-step targets are row-local; the M-step's soft
  statistics (cluster statistics weighted by r, sub-cluster statistics weighted
  by 1[z_i = k] r~_ij) are sums over rows, all-reduced in float64, and every rank
  takes the same M-step, hyperparameter estimates included.
* **moves**: the Hastings ratios H_s and H_m (paper eq. 7) are functions of the
  hard statistics of the proposed partitions, all-reduced; the MH draws use
  torch's generator, seeded alike on every rank.  Proposals that read rows
  (:class:`ShardedGuideSplitMerge`) gather a keyed random sample of at most
  ``refine_rows`` rows per cluster onto every rank, fit the proposal there
  identically, and every rank assigns its own rows to the fitted sub-components.

Only the minibatch order is rank-local.  So a fit on R ranks is the fit on one
up to the gradient's float summation order and which rows share a minibatch:
the same algorithm, not the same bits (tests compare K and NMI).
"""

from __future__ import annotations

import torch

from bnpdeep.linalg import DTYPE

from ...models import DirichletProcess, DPMixture, GaussianNIW
from ..distributed import N_SLOTS, ShardComm, rank_checkpoint_name, stream_key
from ..guide_moves import GuideSplitMerge
from ..subpartition import (
    assign_to_sub_mixture,
    carve,
    refine_subclusters,
    select_groups,
    two_means_groups,
)
from .trainer import DeepDPM

SAMPLE_INIT = 20_000        # rows gathered for the k-means start (init_k > 1)


def _key_from(generator: torch.Generator) -> int:
    """A 62-bit stream key drawn from the generator every rank holds alike."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


class ShardedGuideSplitMerge(GuideSplitMerge):
    """:class:`~bnpdeep.inference.guide_moves.GuideSplitMerge` over the ranks' rows:
    statistics summed over ranks, proposals that read a cluster's rows fitted on a
    gathered sample of them (module docstring).  ``comm`` is the
    :class:`~bnpdeep.inference.distributed.ShardComm` of this rank."""

    def __init__(self, comm: ShardComm, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.comm = comm

    def _stats(self, X, labels, n_groups: int):
        fam, total = self.family, self.comm.sum_stats
        rows = fam.plugin_latent(X, labels, n_groups, reduce=total)
        return total(fam.suff_stats_labels(rows, labels, n_groups))

    def _accept(self, log_h, generator) -> torch.Tensor:
        """The decisions every rank drew alike (same ratios, same generator), rank 0's
        broadcast so that the replicas cannot part."""
        accept = super()._accept(log_h, generator)
        return self.comm.agree(accept.to(torch.uint8))[0].bool()

    def _sample(self, mask: torch.Tensor, n_rows: torch.Tensor, key: int | None):
        """Rows of ``mask`` kept for a proposal: with probability refine_rows / n_c in
        a cluster of n_c rows (``n_rows``: n_c per row), by uniforms keyed by the global
        row index, so the sample does not depend on the number of ranks."""
        if self.refine_rows is None or key is None:
            return mask
        p = (self.refine_rows / n_rows.to(DTYPE).clamp_min(1)).clamp_max(1.0)
        return mask & (self.comm.uniforms(key) < p)

    def _refined(self, X, z, zs, k: int, generator):
        comm = self.comm
        counts = comm.counts(z, k)
        sampled = self.refine_rows is not None and bool((counts > self.refine_rows).any())
        take = self._sample(torch.ones_like(z, dtype=torch.bool), counts[z],
                            _key_from(generator) if sampled else None)
        (Xs, z_s, zs_s), offset = comm.gather_rows(take, X, z, zs)
        hs = refine_subclusters(self.family, Xs, z_s, zs_s, k, self.refine_iter)
        if Xs.shape[0] == comm.n_total:         # every row gathered: its own refined label
            return hs[offset:offset + X.shape[0]]
        return assign_to_sub_mixture(self.family, X, z, k, Xs, z_s, hs)

    def _carved(self, X, rows, generator):
        comm = self.comm
        n_c = int(comm.sum(torch.tensor([rows.numel()]))[0])
        if n_c < 4 * (self.family.dim + 2):
            return None
        mask = torch.zeros(X.shape[0], dtype=torch.bool)
        mask[rows] = True
        sampled = self.refine_rows is not None and n_c > self.refine_rows
        take = self._sample(mask, torch.full((X.shape[0],), n_c),
                            _key_from(generator) if sampled else None)
        (Xs,), offset = comm.gather_rows(take, X)
        if Xs.shape[0] < 4 * (self.family.dim + 2):
            return None
        anchor = int(torch.randint(Xs.shape[0], (1,), generator=generator))
        hs = carve(self.family, Xs, anchor)
        if not sampled:
            return hs[offset:offset + rows.numel()]
        one = torch.zeros(rows.numel(), dtype=torch.long)
        return assign_to_sub_mixture(self.family, X[rows], one, 1, Xs,
                                     torch.zeros(Xs.shape[0], dtype=torch.long), hs)

    def children(self, X, z, zs, clusters):
        """2-means sub-clusters of the given clusters over all ranks' rows (the group
        sums of :func:`two_means_groups` reduced); zs updated in place."""
        chosen = torch.zeros(max(clusters) + 1, dtype=torch.bool)
        chosen[list(clusters)] = True
        rows, g, n_groups = select_groups(chosen, z)
        h = two_means_groups(X[rows], g, n_groups, sums=self.comm.group_sums(rows))
        zs[rows] = h
        sub = self._stats(X[rows], 2 * g + h, 2 * n_groups)
        return [sub[[2 * i, 2 * i + 1]] for i in range(n_groups)]


class DistributedDeepDPM(DeepDPM):
    """DeepDPM data-parallel over the ranks of ``torch.distributed`` (module docstring).

    Every rank constructs it alike and calls ``fit(X_rank)`` with its own rows,
    ``X[start:stop]`` for ``(start, stop) = shard_range(N, world, rank)``; without a
    process group it is the one-rank run.  :func:`~bnpdeep.inference.distributed.
    fit_on_ranks` spawns local ranks and joins their results; ``torchrun ... -m
    bnpdeep fit DATA --method deepdpm`` launches it on files.

    The parameters are :class:`DeepDPM`'s.  ``batch_size`` is the batch over all
    ranks (each rank takes its share); ``init_labels``, if given, holds all N rows'
    labels.  With ``init_k > 1`` the k-means start is fitted on a keyed random sample
    of at most 20,000 rows gathered onto every rank, and every row takes its
    nearest centre.  Proposals that read rows use at most ``refine_rows`` (1,000) rows
    per cluster (:class:`ShardedGuideSplitMerge`).  After the fit, ``guide_``,
    ``model_``, ``history_`` and ``hyperparameters_`` are global (the same on every
    rank); ``labels_`` holds this rank's rows.  ``fit(X, checkpoint_dir=...,
    resume=True)`` resumes every rank from its own file in the shared folder (the
    same number of ranks).  Ranks run on the CPU (gloo).
    """

    method_name = "deepdpm-dp"
    n_slots = N_SLOTS          # the row layout of shard_range: at most 64 ranks

    @property
    def _CHECKPOINT(self) -> str:
        return rank_checkpoint_name(self.method_name, getattr(self, "_comm", None))

    def _fit(self, X):
        self._comm = ShardComm.for_local_rows(X.shape[0], int(self.n_slots))
        # all ranks' moments of the data, reduced once (default prior, fit coordinates)
        self._data_moments = self._comm.moments(torch.as_tensor(X, dtype=DTYPE))
        seed = 0 if self.random_state is None else int(self.random_state)
        self._order_gen = torch.Generator().manual_seed(stream_key(seed, self._comm.rank)
                                                        % 2 ** 63)
        super()._fit(X)
        self.bytes_reduced_ = self._comm.bytes_reduced
        self.collectives_ = self._comm.collectives
        self.collective_seconds_ = self._comm.seconds
        return self

    # -- the hooks of DeepDPM: sums over ranks ---------------------------------------
    def _resolved_device(self) -> torch.device:
        if str(self.device) not in ("cpu", "auto"):
            raise ValueError(f"the data-parallel DeepDPM runs its ranks on the CPU (gloo); "
                             f"device={self.device!r} is not supported")
        return torch.device("cpu")

    def _total(self, t: torch.Tensor) -> torch.Tensor:
        return self._comm.sum(t)

    def _default_model(self, X) -> DPMixture:
        return DPMixture(GaussianNIW.weak_from_moments(*self._data_moments),
                         DirichletProcess(1.0))

    def _make_moves(self) -> GuideSplitMerge:
        return ShardedGuideSplitMerge(self._comm, self._weights, self._family,
                                      self.split_refine, self.carve, self.carves_per_step,
                                      self.carve_tries)

    def _column_moments(self, X):
        return self._comm.column_moments(X, self._data_moments)

    def _input_moments(self, X):
        mean, cov = self._comm.moments(X)
        std = cov.diagonal().sqrt() if self._comm.n_total > 1 else torch.ones_like(mean)
        return mean, std

    def _initial_partition(self, X):
        from sklearn.cluster import KMeans as SkKMeans

        comm = self._comm
        k0 = min(int(self.init_k), comm.n_total)
        seed = 0 if self.random_state is None else int(self.random_state)
        if self.init_labels is not None:
            z = torch.as_tensor(self._checked_init_labels(comm.n_total)[comm.start:comm.stop])
            k = int(comm.max(z.max().reshape(1) if z.numel() else torch.zeros(1, dtype=z.dtype)))
            z, kept = comm.relabel(z, k + 1)
        elif k0 > 1:
            p = min(1.0, SAMPLE_INIT / comm.n_total)
            (Xs,), _ = comm.gather_rows(comm.uniforms(stream_key(seed, 1)) < p, X)
            km = SkKMeans(k0, n_init=3, random_state=seed).fit(Xs.numpy())
            z = torch.as_tensor(km.predict(X.numpy()), dtype=torch.long)
            z, kept = comm.relabel(z, k0)
        else:
            z = torch.zeros(X.shape[0], dtype=torch.long)
            kept = torch.zeros(1, dtype=torch.long)
        k = int(kept.numel())
        zs = torch.zeros_like(z)
        self._moves.children(X, z, zs, tuple(range(k)))
        return z, zs, k

    def _soft_stats(self, X):
        stats, sub, z, zs = self.guide_.soft_stats(X)
        return self._comm.sum_stats(stats), self._comm.sum_stats(sub), z, zs

    # -- the nets: equal replicas, averaged gradients ----------------------------------
    def _make_svi(self):
        super()._make_svi()
        for t in list(self.guide_.parameters()) + list(self.guide_.buffers()):
            with torch.no_grad():
                self._comm.agree(t.data)
        self._svi.optim.reduce_grads = self._average_grads

    def _epoch_batches(self, n: int):
        """This rank's share of every minibatch: as many steps on every rank as the
        single-process epoch over all N rows has, each taking about b n / N rows."""
        total = self._comm.n_total
        batch = self._batch_rows(total)
        passes = max(1, -(-int(self.min_steps) * batch // total))
        steps = -(-passes * total // batch)
        if passes * n < steps:
            raise ValueError(f"rank {self._comm.rank} holds {n} rows, fewer than the {steps} "
                             f"minibatch steps of an epoch take (batch {batch} over all "
                             "ranks); use a larger batch_size or fewer ranks")
        order = torch.cat([torch.randperm(n, generator=self._order_gen)
                           for _ in range(passes)])
        return torch.tensor_split(order, steps)

    def _svi_step(self, Xb: torch.Tensor) -> float:
        self._step_rows = Xb.shape[0]
        return super()._svi_step(Xb)

    def _average_grads(self, params) -> None:
        """sum_r b_r g_r / sum_r b_r for every parameter, in one all-reduce (float64);
        a parameter no rank has a gradient for keeps none (Adam skips it)."""
        b = float(self._step_rows)
        parts = [torch.zeros(p.numel(), dtype=DTYPE) if p.grad is None
                 else p.grad.detach().reshape(-1).to(DTYPE) * b for p in params]
        has = torch.tensor([p.grad is not None for p in params], dtype=DTYPE)
        flat = self._comm.sum(torch.cat(parts + [has, torch.tensor([b], dtype=DTYPE)]))
        total, has = flat[-1], flat[-1 - len(params):-1]
        at = 0
        for p, part, seen in zip(params, parts, has.tolist(), strict=True):
            if seen:
                g = (flat[at:at + part.numel()] / total).to(p.dtype).reshape(p.shape)
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.copy_(g)
            at += part.numel()

    # -- checkpoints and results --------------------------------------------------------
    def _save_state(self, state):
        state["order_gen"] = self._order_gen.get_state()
        super()._save_state(state)

    def _restore(self, state) -> int:
        self._order_gen.set_state(state["order_gen"])
        return super()._restore(state)

    def _merge_rank_fits(self, fits: list) -> "DistributedDeepDPM":
        """This fit (rank 0's) with every rank's rows joined in row order: ``labels_``
        and the rows ``posterior_arrays`` reads.  Raises if the ranks' guides differ
        (the replicas must be equal bit for bit)."""
        import numpy as np

        mine = _replica(self.guide_)
        for r, f in enumerate(fits[1:], 1):
            theirs = _replica(f.guide_)
            if len(mine) != len(theirs) or not all(
                    torch.equal(a, b) for a, b in zip(mine, theirs, strict=True)):
                raise RuntimeError(f"the guide of rank {r} differs from rank 0's: the "
                                   "replicas drifted apart")
        self.labels_ = np.concatenate([f.labels_ for f in fits])
        self._X = torch.cat([f._X for f in fits])
        n = self._X.shape[0]
        self._comm = ShardComm(n, 0, n, int(self.n_slots))
        return self


def _replica(guide) -> list:
    """Every tensor that defines a guide: the nets' weights and buffers, the point
    parameters and the hyperparameter estimates."""
    m = guide.mixture.state()
    flat = [m["log_pi"], m["sub_log_pi"], m["sub_centres"], *m["params"], *m["sub_params"]]
    flat += [torch.as_tensor(v, dtype=DTYPE) for _, v in sorted(guide.hyperparameters.items())]
    return list(guide.state_dict().values()) + flat


__all__ = ["DistributedDeepDPM", "ShardedGuideSplitMerge"]
