"""Split/merge Metropolis-Hastings steps on a DeepDPM guide (Ronen, Finder & Freifeld
2022, Sec. 3.3).

The state is the hard partition the guide's nets give, z_i = argmax_k r_ik and
zs_i = argmax_j r~_ij.  A split of cluster k into the two halves a proposal names
is accepted with probability min(1, H_s), H_s the DP posterior ratio of the two
hard partitions (paper eq. 7, :func:`.moves.log_split_ratio`); a merge of k and l
with min(1, H_m), H_m the posterior ratio of the merged partition to the current
one (:func:`.moves.log_merge_ratio`).  An accepted move calls the guide's surgery
(:meth:`~bnpdeep.inference.deepdpm.DeepDPMGuide.split` / ``merge``), which changes
the point parameters and both nets together.

Proposal kinds of a split, each judged by the same H_s:

* ``"subnets"`` (the paper): the sub-clustering nets' halves, zs;
* ``refine_iter > 0``: those halves refined first by EM of the cluster's
  two-component sub-mixture under the family's own likelihood
  (:func:`.subpartition.refine_subclusters`): the sub-nets' isotropic loss only
  proposes 2-means-like halves, which the posterior rejects where a cluster is a
  tight core inside a wide halo;
* ``carve``: for a cluster whose split was rejected, a local group carved around
  a random member (:func:`.subpartition.carve`), up to ``carves_per_step``
  groups per cluster.

For a family with per-row latent variables (``StudentNIW``'s scales) f is the
marginal likelihood of the rows with them integrated out
(``family.log_evidence``), each block of either partition at its own fitted
scales; the geometric proposals read the rows completed at their cluster's
expected scales.

As in the paper these are deterministic-proposal heuristics judged by the DP
posterior ratio, not a reversible MCMC kernel: DeepDPM is a point-estimate
method, and the exact sampler is :class:`~bnpdeep.inference.SubclusterSampler`.
"""

from __future__ import annotations

import torch

from . import moves
from .subpartition import carve, rank_within_groups, refine_subclusters, two_means


class GuideSplitMerge:
    """Split and merge steps acting on a :class:`~bnpdeep.inference.deepdpm.DeepDPMGuide`.

    Parameters
    ----------
    weights : WeightPrior
        The model's weight prior (its EPPF enters H_s and H_m).
    family : ConjugateFamily
        The model's component family (its marginal likelihood enters H_s, H_m).
    refine_iter : int, default 20
        EM iterations refining the sub-nets' halves before they are proposed; 0
        proposes the sub-nets' halves as they are (the paper).
    refine_rows : int or None, default 1000
        The EM of a larger cluster runs on this many of its rows, drawn at random
        for each split step, and every row then goes to the sub-component fitted to
        them that explains it better: a step's cost stays bounded on large data
        (the sampler's proposals do the same).  None: all rows.
    carve : bool, default True
        Propose carved local groups for clusters whose split was rejected.
    carves_per_step, carve_tries : int, default 3, 5
        Carved groups a cluster may shed in one step, and carving attempts per
        cluster (the first rejected attempt after an accepted one does not end
        the turn; ``carve_tries`` bounds the attempts).
    neighbours : int, default 3
        Merge candidates: each cluster with its ``neighbours`` nearest clusters
        (distance of their means).
    """

    def __init__(self, weights, family, refine_iter: int = 20, carve: bool = True,
                 carves_per_step: int = 3, carve_tries: int = 5, neighbours: int = 3,
                 refine_rows: int | None = 1000):
        self.weights = weights
        self.family = family
        self.refine_iter = int(refine_iter)
        self.refine_rows = None if refine_rows is None else int(refine_rows)
        self.carve = bool(carve)
        self.carves_per_step = int(carves_per_step)
        self.carve_tries = int(carve_tries)
        self.neighbours = int(neighbours)

    def _stats(self, X, labels, n_groups: int):
        """The family's statistics of the groups 0..n_groups-1 of the rows, a family's
        per-row latent variables at each group's own fitted values
        (``family.plugin_latent``: the t's EM scales; a data-parallel step sums the
        statistics over its ranks)."""
        fam = self.family
        return fam.suff_stats_labels(fam.plugin_latent(X, labels, n_groups), labels, n_groups)

    def _log_f(self, stats) -> torch.Tensor:
        """log f(X_g) of groups: ``family.log_evidence`` (the log marginal likelihood
        of the rows, latent variables integrated out)."""
        return self.family.log_evidence(stats)

    def _union(self, X, labels, groups: int, sub):
        """Statistics of each group's rows as one group: the pair sums of ``sub`` (2
        groups per union), or, for a family with latent variables (fitted to each
        grouping), the rows' statistics recomputed as one group."""
        if not self.family.latent_columns:
            return sub.pair_sums()
        return self._stats(X, labels, groups)

    def _accept(self, log_h, generator) -> torch.Tensor:
        """Metropolis-Hastings decisions: u < exp(log_h), one per proposal."""
        return moves.mh_accept(log_h, generator=generator)

    def hard_stats(self, X, z, zs, k):
        """Statistics of the hard partition: the K clusters of z and their 2K
        sub-clusters 2 z + zs, as (cluster stats, sub-cluster stats)."""
        sub = self._stats(X, 2 * z + zs, 2 * k)
        return self._union(X, z, k, sub), sub

    def children(self, X, z, zs, clusters):
        """Sub-clusters of the given clusters from 2-means of their rows (zs is
        updated in place); one 2-group SuffStats per cluster."""
        out = []
        for c in clusters:
            rows = (z == c).nonzero().flatten()
            h = two_means(X[rows]).to(z.device)
            zs[rows] = h
            out.append(self._stats(X[rows], h, 2))
        return out

    def _apply_split(self, guide, X, z, zs, c: int, halves=None):
        """Cluster c -> c (zs = 0) and K (zs = 1) in z, then the guide's surgery."""
        new = guide.k
        rows = (z == c).nonzero().flatten()
        z[rows[zs[rows] == 1]] = new
        return guide.split(c, halves=halves, children=self.children(X, z, zs, (c, new)))

    def log_split_ratios(self, X, z, zs, k: int):
        """(log H_s of splitting each cluster k into its halves 2k and 2k + 1 of
        2 z + zs, the sub-clusters' statistics): paper eq. 7 with f the marginal
        likelihood of the rows (``family.log_evidence``: latent variables integrated
        out, each grouping with its own fitted ones)."""
        stats, sub = self.hard_stats(X, z, zs, k)
        return moves.log_split_ratio(self.weights, self.family, float(k), stats, sub[0::2],
                                     sub[1::2], log_f=self._log_f), sub

    def split(self, guide, X, z, zs, generator=None) -> list:
        """One split step over every cluster; z and zs (the nets' hard labels) are
        updated in place.  Returns the guide's :class:`Surgery` records."""
        fam, k = self.family, guide.k
        # the rows the geometric proposals read: X with a family's latent variables
        # at their expectation under each row's cluster
        rows_in = fam.expected_rows(X, guide.mixture.params, z)
        if self.refine_iter > 0:
            zs = self._refined(rows_in, z, zs, k, generator)
        log_h, sub = self.log_split_ratios(X, z, zs, k)
        ok = (sub.n[0::2] >= 2) & (sub.n[1::2] >= 2)
        accept = self._accept(log_h, generator) & ok
        done = []
        for c in accept.nonzero().flatten().tolist():
            # refined halves start from their own MAP, the sub-nets' from their components
            halves = sub[[2 * c, 2 * c + 1]] if self.refine_iter > 0 else None
            done.append(self._apply_split(guide, X, z, zs, c, halves))
        if self.carve:
            for c in (~accept).nonzero().flatten().tolist():
                carved = 0
                for _ in range(self.carve_tries):
                    if carved >= self.carves_per_step:
                        break
                    h = self._carve_proposal(guide, X, rows_in, z, c, generator)
                    if h is None:
                        continue
                    carved += 1
                    # the carved group (h = 0) becomes the new cluster, c keeps the rest
                    rows = (z == c).nonzero().flatten()
                    zs[rows] = 1 - h
                    done.append(self._apply_split(
                        guide, X, z, zs, c, self._stats(X[rows], 1 - h, 2)))
        return done

    def _refined(self, X, z, zs, k: int, generator):
        """The sub-labels after the EM refinement (on ``refine_rows`` rows per cluster
        drawn at random, every row then assigned)."""
        sample = None
        if self.refine_rows is not None:
            keys = torch.rand(X.shape[0], generator=generator, dtype=torch.float64)
            sample = rank_within_groups(keys.to(X.device), z, k) < self.refine_rows
        return refine_subclusters(self.family, X, z, zs, k, self.refine_iter, sample=sample)

    def _carve_proposal(self, guide, X, rows_in, z, c: int, generator):
        """A carved sub-partition of cluster c around a random member (carved on
        ``rows_in``), accepted with probability min(1, H_s); None when rejected or
        too small."""
        rows = (z == c).nonzero().flatten()
        h = self._carved(rows_in, rows, generator)
        if h is None:
            return None
        sub = self._stats(X[rows], h, 2)
        if bool((sub.n < 2).any()):
            return None
        whole = self._union(X[rows], torch.zeros_like(h), 1, sub)
        log_h = moves.log_split_ratio(self.weights, self.family, float(guide.k),
                                      whole, sub[[0]], sub[[1]], log_f=self._log_f)
        return h if bool(self._accept(log_h, generator)[0]) else None

    def _carved(self, X, rows, generator):
        """The carving of the rows ``rows`` (one cluster) around a random one of them;
        None for a cluster too small to carve."""
        if rows.numel() < 4 * (self.family.dim + 2):
            return None
        anchor = int(torch.randint(rows.numel(), (1,), generator=generator))
        return carve(self.family, X[rows], anchor).to(rows.device)

    def _pair_unions(self, X, z, stats, a_idx, b_idx):
        """Statistics of the union of clusters a and b for each candidate pair (the
        sums, or for a family with latent variables each union's rows fitted as one
        group)."""
        if not self.family.latent_columns:
            return stats[a_idx] + stats[b_idx]
        # every pair's rows as one group of a stacked table, all fitted at once
        in_pair = (z[None, :] == a_idx[:, None]) | (z[None, :] == b_idx[:, None])  # (P, N)
        pair, row = in_pair.nonzero(as_tuple=True)
        return self._stats(X[row], pair, a_idx.numel())

    def merge(self, guide, X, z, zs, soft, generator=None) -> list:
        """One merge step: candidate pairs among each cluster's nearest neighbours,
        all ratios and MH draws at once, then taken in random order with each
        cluster merged at most once.  ``soft`` are the last M-step's r-weighted
        statistics (the merged components' MAP).  Returns the Surgery records."""
        k = guide.k
        if k < 2:
            return []
        stats, _ = self.hard_stats(X, z, zs, k)
        cent = moves.group_means(stats)
        dist = torch.cdist(cent, cent)
        dist.fill_diagonal_(float("inf"))
        nn = dist.topk(min(self.neighbours, k - 1), largest=False).indices.cpu()
        pairs = torch.stack([torch.arange(k).repeat_interleave(nn.shape[1]), nn.flatten()])
        pairs = torch.unique(pairs.sort(0).values, dim=1)          # (2, P), a < b
        a_idx, b_idx = pairs[0].to(z.device), pairs[1].to(z.device)
        log_h = moves.log_merge_ratio(self.weights, self.family, float(k),
                                      stats[a_idx], stats[b_idx], log_f=self._log_f,
                                      merged=self._pair_unions(X, z, stats, a_idx, b_idx))
        accept = self._accept(log_h, generator).tolist()
        order = torch.randperm(pairs.shape[1], generator=generator).tolist()
        used: set[int] = set()
        chosen = []
        for p in order:
            a, b = int(pairs[0, p]), int(pairs[1, p])
            if accept[p] and a not in used and b not in used:
                used.update((a, b))
                chosen.append((a, b))
        done = []
        # from the highest removed index down, so that the other indices stay valid
        for a, b in sorted(chosen, key=lambda ab: -ab[1]):
            done.append(guide.merge(a, b, soft[[a, b]]))
            soft = soft.merge(a, b)
            z[z == b] = a
            z[z > b] -= 1
        return done
