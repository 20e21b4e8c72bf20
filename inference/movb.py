"""Memoized online variational Bayes for DP mixtures, with birth, merge and delete moves
(Hughes & Sudderth, "Memoized online variational inference for Dirichlet process
mixture models", NeurIPS 2013).

The variational family is mean-field over K active components (a nested
truncation: q(z_i = k) = 0 for k > K, sticks beyond K keep their prior):

    q(v_k) = Beta(a_k, b_k),  q(theta_k) = the family's conjugate posterior,
    q(z_i) = Categorical(r_i),  k = 1..K.

Given r, the optimal global factors are closed-form in the soft sufficient
statistics S_k = sum_i r_ik t(x_i): q(theta_k) = p(theta | S_k), and
a_k = a0_k + N_k, b_k = b0_k + sum_{l>k} N_l (Blei & Jordan 2006, eq. 19 for
the DP; the same with Pitman-Yor's stick priors).  At these optima the ELBO
reduces to quantities of S and of the assignment entropy alone:

    L = sum_k log Z(S_k) + sum_k N_k E[log pi_k] - sum_k KL(q(v_k) || p(v_k)) + H[r],

where log Z(S_k) = E_q[log p(X | theta_k)^r] - KL(q(theta_k) || p(theta_k)) is the
family's log marginal likelihood evaluated at the soft statistics, and
E[log pi_k] = E[log v_k] + sum_{l<k} E[log(1 - v_l)].  (The test suite checks this
identity against the family's expected log-likelihood and KL terms.)

Memoization (Hughes & Sudderth, Sec. 3): the data are split once into B batches;
each batch b keeps its statistics S^b and entropy H^b.  Visiting a batch computes
new responsibilities under the current q (the local step), replaces S^b and H^b
in the global totals S = sum_b S^b, and re-optimises q from S (the global step).
Every visit is an exact coordinate-ascent step on L, so L never decreases, and
one lap over all batches equals one full-batch VB iteration.

Moves, proposed at the end of every lap and accepted iff L increases, all
evaluated exactly from statistics:

* **birth** (split-style, as the later bnpy births): the mass r_ik of a target
  component is divided between two children by a restricted VB on its members,
  initialised by 2-means (and, if that is rejected, by a local group carved
  around a random member, :func:`~bnpdeep.inference.subpartition.carve`);
* **merge**: components j and l become one with r_ij + r_il; candidate pairs are
  ranked by the gain in log Z (an upper bound on the gain in L, since merging
  lowers the entropy);
* **delete**: a small component's mass is reassigned to the others by the local
  step without it (an empty one -- mass below 1e-8 -- is pruned when L does not
  drop by more than 1e-8 relative: its removal changes L only by round-off);
* **reorder**: components sorted by decreasing size (the stick-breaking prior is
  not exchangeable).

Hyperpriors (``DPMixture(..., hyperpriors=Hyperpriors(...))``) get point estimates,
updated after every lap's moves (variational EM, type-II MAP): each of the
family's hyperparameters h in turn maximises log p(h) + sum_k log Z(S_k; h), the
only part of L + log p(h) that depends on it
(:meth:`~bnpdeep.inference.hyperparameters.HyperparameterStep.maximize`), and a
DP's alpha maximises log p(alpha) + sum_k N_k E[log pi_k] - KL(q(v) || p(v | alpha))
with q(v) at its optimum for each alpha.  With r fixed each update raises
L + log p(h) + log p(alpha), the objective ``elbo_history_`` records.

The responsibilities of every batch are kept (N x K float64), so that moves
change them exactly and the memoized statistics always equal a fresh
recomputation from them (tested).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from bnpdeep.linalg import DTYPE, as_tensor

from ..models import ConjugateFamily, DirichletProcess, FiniteDirichlet, SuffStats, WeightPrior
from ..models.hyperpriors import log_prob
from .base import CheckpointedEstimator, warn_not_converged
from .draws import approximate_posterior_arrays
from .hyperparameters import (
    HyperparameterStep,
    maximize_alpha,
    plain_values,
)
from .mcmc import default_model
from .subpartition import carve, two_means

_MIN_MASS = 1e-8     # rows whose responsibility for a birth target is below this stay put
_EMPTY = 1e-8        # components with less mass are pruned when the ELBO does not drop


def stick_terms(weights: WeightPrior, n: torch.Tensor):
    """Stick-breaking terms of the ELBO at the optimal q(v) for expected counts n (K,):
    (E[log pi_k] for k <= K, E[log pi_rest] of the mass beyond K,
    sum_k KL(q(v_k) || p(v_k)))."""
    counts = torch.cat([n, n.new_zeros(1)])
    a, b = weights.stick_posterior(counts)
    a0, b0 = weights.stick_prior(counts.shape[0])
    elog = WeightPrior.expected_log_weights(a, b)
    beta = torch.distributions.Beta
    kl = torch.distributions.kl_divergence(beta(a, b, validate_args=False),
                                           beta(a0, b0, validate_args=False)).sum()
    return elog[:-1], elog[-1], kl


def elbo_from_stats(family, weights: WeightPrior, stats: SuffStats, entropy) -> torch.Tensor:
    """L = sum_k log Z(S_k) + sum_k N_k E[log pi_k] - KL(q(v) || p(v)) + H[r], with q(theta)
    and q(v) at their optima given the soft statistics S (module docstring)."""
    elog, _, kl = stick_terms(weights, stats.n)
    return family.log_marginal(stats).sum() + (stats.n * elog).sum() - kl + entropy


def _entropy(r: torch.Tensor) -> torch.Tensor:
    """-sum r log r over all entries (0 log 0 = 0)."""
    return -torch.special.xlogy(r, r).sum()


class MemoizedVB(CheckpointedEstimator):
    """Memoized online VB for DP (and Pitman-Yor) mixtures with birth/merge/delete moves.

    Parameters
    ----------
    model : DPMixture, optional
        Default: DP(alpha=1) mixture of full Gaussians with ``GaussianNIW.weak(X)``.
        Any conjugate family (GaussianNIW, DiagonalGaussian, Multinomial) with a
        DirichletProcess or PitmanYor weight prior; its hyperpriors, if any, get
        point estimates that maximise L + log p(hyperparameters) (module docstring).
    n_batches : int, default 5
        Fixed batches of the data (a random partition, drawn once).
    max_laps : int, default 100
        Passes over all batches.
    init_k : int, default 1
        Components at the start: 1, or a k-means++ hard partition into ``init_k``.
    tol : float, default 1e-7
        Stop when a lap raises L by less than ``tol * |L|`` and no move was accepted
        in the last ``patience`` laps.
    patience : int, default 3
    births, merges, deletes : bool, default True
        Which moves to propose.  With all three off this is plain memoized VB.
    birth_iters : int, default 10
        Most restricted VB iterations that refine a birth proposal (it stops earlier
        once no share moves by 1e-3).
    birth_proposals : int, default 4
        Kinds of initial split, tried two per visit of a target (the next two at its
        next visit, cycling), the first ``birth_proposals`` of: 2-means along the
        principal axis, 2-means in whitened coordinates, k-means++ into
        ``birth_children`` groups, 2-means along a random axis, a local group carved
        around a random member, another random axis, ...  A component is visited
        every lap until each kind has failed on it once, then after 2, 4, 8 and 16
        laps; the fit does not stop while a component has kinds left untried.
    birth_children : int, default 4
        Groups of the k-means++ birth proposal.
    birth_subsample : int, default 500
        Larger targets are split and refined on this many of their rows (drawn by
        their mass); 3 restricted iterations on all rows follow, and the decision
        uses the exact L of the whole proposal.
    max_merge_pairs : int, optional
        Merge candidates evaluated per lap; default 2 K.
    max_deletes : int, default 2
        Delete candidates (the smallest components) per lap.
    checkpoint_every : int, default 10
        Laps between checkpoints when ``fit(..., checkpoint_dir=...)``.
    n_samples : int, default 100
        Draws from q kept by :meth:`to_inference_data`.
    random_state : int, default 0
    progress : bool, default False
        A progress bar over laps (K and L) on stderr.

    Attributes
    ----------
    labels_, n_clusters_, elbo_history_ (L after each lap's moves and hyperparameter
    updates, plus log p(hyperparameters) when the model has hyperpriors, in X's units:
    the fit runs in standardised coordinates, :mod:`~bnpdeep.inference.units`), history_
    (per lap: K, that objective, accepted births / merges / deletes, the
    hyperparameters), moves_ (every accepted move with L before and after), resp_
    (N, K) final responsibilities, hyperparameters_ (the point estimates, alpha
    included when it has a prior; empty without hyperpriors), n_laps_, converged_.
    """

    method_name = "movb"
    _CHECKPOINT = "movb_checkpoint.pt"     # file name in the checkpoint folder

    def __init__(self, model=None, n_batches: int = 5, max_laps: int = 100, init_k: int = 1,
                 tol: float = 1e-7, patience: int = 3, births: bool = True, merges: bool = True,
                 deletes: bool = True, birth_iters: int = 10, birth_proposals: int = 4,
                 birth_children: int = 4, birth_subsample: int = 500,
                 max_merge_pairs: int | None = None,
                 max_deletes: int = 2, checkpoint_every: int = 10, n_samples: int = 100,
                 random_state=0, progress: bool = False):
        self.model = model
        self.n_batches = n_batches
        self.max_laps = max_laps
        self.init_k = init_k
        self.tol = tol
        self.patience = patience
        self.births = births
        self.merges = merges
        self.deletes = deletes
        self.birth_iters = birth_iters
        self.birth_proposals = birth_proposals
        self.birth_children = birth_children
        self.birth_subsample = birth_subsample
        self.max_merge_pairs = max_merge_pairs
        self.max_deletes = max_deletes
        self.checkpoint_every = checkpoint_every
        self.n_samples = n_samples
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ the objective
    def _stick_terms(self, n: torch.Tensor):
        return stick_terms(self._weights, n)

    def _elog_of(self, n: torch.Tensor) -> torch.Tensor:
        """E[log pi_k], k <= K, at the optimal q(v) for counts n."""
        a, b = self._weights.stick_posterior(torch.cat([n, n.new_zeros(1)]))
        return WeightPrior.expected_log_weights(a, b)[:-1]

    def _elbo_parts(self, stats: SuffStats, entropy) -> torch.Tensor:
        return elbo_from_stats(self._family, self._weights, stats, entropy)

    def elbo(self) -> float:
        """L at the current memoized statistics, with q at its optimum given them, for
        the rows the fit runs on (standardised: ``elbo_history_`` and ``moves_`` add
        the Jacobian N log |dy/dx| that puts L in X's units)."""
        if self._elbo_value is None:
            self._log_z = self._family.log_marginal(self._stats)
            elog, _, kl = self._stick_terms(self._stats.n)
            self._elbo_value = float(self._log_z.sum() + (self._stats.n * elog).sum() - kl
                                     + self._entropy)
        return self._elbo_value

    def objective(self) -> float:
        """L + log p(h) + log p(alpha): what the lap, its moves and the hyperparameter
        updates never lower (L alone without hyperpriors)."""
        return self.elbo() + self._log_hyperprior

    def _elbo_with(self, n: torch.Tensor, log_z_sum, entropy) -> float:
        """L of a proposal from its counts, its total log Z and its entropy."""
        elog, _, kl = self._stick_terms(n)
        return float(log_z_sum + (n * elog).sum() - kl + entropy)

    def _birth_elbo(self, k: int, children: SuffStats, entropy) -> float:
        """L of a birth proposal: only the children's log Z are new."""
        self.elbo()
        n = torch.cat([self._stats.n, children.n[1:]])
        n[k] = children.n[0]
        log_z = self._log_z.sum() - self._log_z[k] + self._family.log_marginal(children).sum()
        return self._elbo_with(n, log_z, entropy)

    def _local(self, X: torch.Tensor, stats: SuffStats, elog: torch.Tensor):
        """Local step: log r_ik = E[log pi_k] + ell_ik - normaliser, with ell_ik =
        E[log p(x_i | theta_k)] (a family with per-row latent variables: the bound of
        ``variational_local`` at their optimal factors, returned as ``local``)."""
        ell, local = self._family.variational_local(X, stats)
        return torch.log_softmax(ell + elog[None], 1), local

    def _log_resp(self, X: torch.Tensor, stats: SuffStats, elog: torch.Tensor) -> torch.Tensor:
        return self._local(X, stats, elog)[0]

    def _batch_terms(self, X: torch.Tensor, r: torch.Tensor, local, log_r=None):
        """Statistics and entropy share (H[r] plus the latent factors' entropies) of
        rows X with responsibilities r and latent factors ``local``."""
        h = _entropy(r) if log_r is None else -(r * log_r).sum()
        if local is not None:
            h = h + self._family.variational_entropy(r, local).sum()
        return self._family.variational_stats(X, r, local), h

    # ------------------------------------------------------------------ set-up
    def _check_model(self, X):
        model = default_model(X) if self.model is None else self.model
        if isinstance(model.weights, FiniteDirichlet):
            raise ValueError("MemoizedVB needs a DirichletProcess or PitmanYor weight prior "
                             "(its truncation grows through birth moves); for a finite "
                             "Dirichlet use BayesianGMM or GaussianMixtureEM")
        fam = model.family
        for name in ("expected_log_likelihood", "log_marginal"):
            if getattr(type(fam), name) is getattr(ConjugateFamily, name):
                raise ValueError(f"MemoizedVB needs a conjugate family with {name}; "
                                 f"{type(fam).__name__} has none")
        if int(self.n_batches) < 1:
            raise ValueError(f"n_batches must be at least 1, got {self.n_batches}")
        if int(self.init_k) < 1:
            raise ValueError(f"init_k must be at least 1, got {self.init_k}")
        if int(self.checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if int(self.max_laps) < 0:
            raise ValueError(f"max_laps must be non-negative, got {self.max_laps}")
        return model

    def _setup(self, X):
        self.model_ = model = self._check_model(X)
        self._observed = X
        # the fit runs in standardised coordinates and reports in X's units (units.py)
        model, X, self._units = self._fit_coordinates(model, X)
        self._weights = model.weights
        self._alpha = float(getattr(model.weights, "alpha", 1.0))
        self._hyper = HyperparameterStep(model)
        self._alpha_prior = model.hyperpriors.alpha if model.hyperpriors is not None else None
        self._set_hyperparameters(self._hyper.initial(), self._alpha)
        self._gen = np.random.default_rng(self.random_state)
        torch.manual_seed(int(self._gen.integers(2**31)))
        self._X = X = as_tensor(X, device=self._family.device)
        n = X.shape[0]
        b = min(int(self.n_batches), n)
        perm = torch.as_tensor(self._gen.permutation(n), device=X.device)
        self._batches = list(torch.tensor_split(perm, b))
        k = min(int(self.init_k), n)
        if k == 1:
            labels = np.zeros(n, dtype=np.int64)
        else:
            from sklearn.cluster import KMeans as SkKMeans

            labels = SkKMeans(k, n_init=3, random_state=int(self._gen.integers(2**31))
                              ).fit_predict(X.cpu().numpy())
            labels = np.unique(labels, return_inverse=True)[1]
        self._resp = torch.nn.functional.one_hot(
            torch.as_tensor(labels, device=X.device), int(labels.max()) + 1).to(DTYPE)
        # a family's per-row latent factors (N, K): the optimal ones given q(theta) of
        # the starting partition with each row's latent variable at its prior mean
        fam = self._family
        self._latent = fam.variational_local(X, fam.variational_stats(X, self._resp))[1] \
            if fam.latent_columns else None
        self._ids = list(range(self._resp.shape[1]))
        self._next_id = len(self._ids)
        self._cooldown: dict[int, int] = {}
        self._failures: dict[int, int] = {}
        self._elbo_value = None
        self._rebuild_memos()

    def _rebuild_memos(self):
        """Per-batch statistics and entropies from the stored responsibilities."""
        self._memo_stats, self._memo_entropy = [], []
        for idx in self._batches:
            stats, h = self._batch_terms(self._X[idx], self._resp[idx],
                                         None if self._latent is None else self._latent[idx])
            self._memo_stats.append(stats)
            self._memo_entropy.append(h)
        self._resync()

    def _resync(self):
        """Global totals as the sum of the batch memos (removes round-off drift)."""
        total = self._memo_stats[0]
        for s in self._memo_stats[1:]:
            total = total + s
        self._stats = total
        self._entropy = torch.stack(self._memo_entropy).sum()
        self._elog = self._stick_terms(self._stats.n)[0]
        self._elbo_value = None

    def fresh_statistics(self) -> tuple[SuffStats, float]:
        """Statistics and entropy recomputed from scratch over all batches with the
        stored responsibilities (the memoized totals must equal these)."""
        stats, h = self._batch_terms(self._X, self._resp, self._latent)
        return stats, float(h)

    # ------------------------------------------------------------------ the lap
    def _visit(self, b: int):
        """Local step on batch b, memo replacement, global step."""
        idx = self._batches[b]
        log_r, local = self._local(self._X[idx], self._stats, self._elog)
        r = log_r.exp()
        new_stats, new_h = self._batch_terms(self._X[idx], r, local, log_r)
        self._stats = self._stats - self._memo_stats[b] + new_stats
        self._entropy = self._entropy - self._memo_entropy[b] + new_h
        self._memo_stats[b], self._memo_entropy[b] = new_stats, new_h
        self._resp[idx] = r
        if local is not None:
            self._latent[idx] = local
        self._elog = self._stick_terms(self._stats.n)[0]       # global step (sticks)
        self._elbo_value = None

    def lap(self):
        """One pass over all batches (no moves)."""
        for b in range(len(self._batches)):
            self._visit(b)
        self._resync()

    # ------------------------------------------------------------------ hyperparameters
    def _set_hyperparameters(self, values: dict, alpha: float):
        """Adopt hyperparameter values: the family and weights at them, and the
        log hyperprior density that joins L in :meth:`objective`."""
        self._hyper_values, self._alpha = values, float(alpha)
        self._family = self._hyper.family(values)
        self._log_hyperprior = self._hyper.log_prior(values)
        if self._alpha_prior is not None:
            self._weights = DirichletProcess(self._alpha)
            self._log_hyperprior += float(log_prob(self._alpha_prior, self._alpha))
        self._elbo_value = None

    def _stick_objective(self, alpha) -> float:
        """sum_k N_k E[log pi_k] - KL(q(v) || p(v | alpha)), q(v) optimal for alpha."""
        elog, _, kl = stick_terms(DirichletProcess(float(alpha)), self._stats.n)
        return float((self._stats.n * elog).sum() - kl)

    def _update_hyperparameters(self):
        """Coordinate ascent on L + log p(h) + log p(alpha) over the hyperparameters,
        r fixed (module docstring)."""
        if not self._hyper.active and self._alpha_prior is None:
            return
        values = self._hyper.maximize(self._hyper_values, self._stats) if self._hyper.active \
            else self._hyper_values
        alpha = self._alpha if self._alpha_prior is None \
            else maximize_alpha(self._alpha_prior, self._alpha, self._stick_objective)
        self._set_hyperparameters(values, alpha)
        self._elog = self._stick_terms(self._stats.n)[0]

    def _hyperparameter_record(self) -> dict:
        out = {n: self._units.hyper_value(n, v) for n, v in self._hyper_values.items()}
        if self._alpha_prior is not None:
            out["alpha"] = self._alpha
        return plain_values(out)

    # ------------------------------------------------------------------ moves
    def _record(self, kind: str, before: float):
        after = self.elbo()
        rows = self._X.shape[0] * self._units.log_jacobian      # L in X's units
        self.moves_.append({"lap": self._lap, "move": kind, "elbo_before": before + rows,
                            "elbo_after": after + rows, "K": self._stats.k})
        return after

    def _replace_columns(self, resp: torch.Tensor, cols: list[int], ids: list[int],
                         latent=None):
        """Adopt responsibilities (and, for a family with latent variables, their
        factors ``latent``) that differ from the current ones only in ``cols`` (and
        possibly in K); memos of the other columns are kept."""
        fam = self._family
        keep = [c for c in range(resp.shape[1]) if c not in cols]
        for b, idx in enumerate(self._batches):
            r = resp[idx]
            local = None if latent is None else latent[idx]
            new = fam.variational_stats(self._X[idx], r[:, cols],
                                        None if local is None else local[:, cols])
            fields = {}
            for name, v in self._memo_stats[b].fields.items():
                out = torch.empty((resp.shape[1],) + v.shape[1:], dtype=v.dtype, device=v.device)
                out[keep] = v[keep]
                out[cols] = new.fields[name]
                fields[name] = out
            self._memo_stats[b] = SuffStats(**fields)
            self._memo_entropy[b] = _entropy(r) if local is None \
                else _entropy(r) + fam.variational_entropy(r, local).sum()
        self._resp = resp
        self._latent = latent
        self._ids = ids
        self._resync()

    def _children(self, k: int, X: torch.Tensor, w: torch.Tensor, s: torch.Tensor,
                  exact: bool = True, local=None, rows=None) -> SuffStats:
        """Statistics of the m children that divide component k's mass by shares s
        (rows X, mass w; ``local``: the children's latent factors of these rows, (n,
        m)).  ``exact``: child 0 keeps the rest of k's statistics (rows outside X
        included; X = self._X[rows]); otherwise every child comes from the rows X
        alone (a subsample)."""
        fam = self._family
        if not exact:
            return fam.variational_stats(X, w[:, None] * s, local)
        if self._latent is None:
            born = fam.suff_stats(X, weights=w[:, None] * s[:, 1:])
            return SuffStats.cat([self._stats[k] - born.total(), born])
        # the rows' mass leaves k with k's own factors and enters each child with its own
        own = fam.variational_stats(X, w[:, None], self._latent[rows, k:k + 1])
        born = fam.variational_stats(X, w[:, None] * s, local)
        return SuffStats.cat([self._stats[k] - own + born[0], born[1:]])

    def _children_entropy(self, k: int, w: torch.Tensor, s: torch.Tensor, local, rows):
        """The entropy share of a birth: H[r] of k's mass divided by s, and the
        children's latent factors in place of k's own for the rows ``rows``."""
        entropy = self._entropy + (w * _entropy_rows(s)).sum()
        if self._latent is None:
            return entropy
        fam = self._family
        return (entropy + fam.variational_entropy(w[:, None] * s, local).sum()
                - fam.variational_entropy(w[:, None], self._latent[rows, k:k + 1]).sum())

    def _with_children(self, k: int, children: SuffStats) -> SuffStats:
        """The model's statistics with child 0 in place of k and the others appended."""
        stats = SuffStats.cat([self._stats, children[1:]])
        for name, v in stats.fields.items():
            v[k] = children.fields[name][0]
        return stats

    def _refine(self, k: int, X: torch.Tensor, w: torch.Tensor, s: torch.Tensor,
                iters: int, exact: bool = True, local=None, rows=None):
        """Restricted VB on a birth's children: the local step restricted to them, then
        their global step, until no share moves by 1e-3.  Returns the shares and the
        children's latent factors of the rows (None without latent variables;
        ``local`` None at the start: k's own factors for every child)."""
        m = s.shape[1]
        pos = torch.tensor([k] + list(range(self._stats.k, self._stats.k + m - 1)))
        n = torch.cat([self._stats.n, self._stats.n.new_zeros(m - 1)])
        if local is None and self._latent is not None:
            local = self._latent[rows, k:k + 1].expand(-1, m)
        for _ in range(iters):
            children = self._children(k, X, w, s, exact, local, rows)
            n[pos] = children.n
            log_s, local = self._local(X, children, self._elog_of(n)[pos])
            s_new = log_s.exp()
            done = torch.allclose(s_new, s, atol=1e-3, rtol=0)
            s = s_new
            if done:
                break
        return s, local

    def _birth_split(self, k: int, labels: torch.Tensor, sel: torch.Tensor,
                     sub: torch.Tensor | None):
        """Divide component k's mass among m children (the first at k, the others
        appended), starting from hard labels 0..m-1.  Without ``sub`` the labels are
        those of the rows ``sel`` and restricted VB refines on all of them; with it
        they are those of the subsample ``sel[sub]``, refinement runs there (its mass
        scaled up to the target's), and a few restricted iterations on all rows
        finish.  Rows outside ``sel`` stay with the first child.  Returns (children's
        statistics, entropy, s, local) of the proposal, s the shares of the rows
        ``sel`` (n_sel, m) and local their latent factors (None without)."""
        X, w = self._X[sel], self._resp[sel, k]
        s = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).to(DTYPE)
        if sub is None:
            s, local = self._refine(k, X, w, s, int(self.birth_iters), rows=sel)
        else:
            ws = w[sub] * (w.sum() / w[sub].sum())
            s, local = self._refine(k, X[sub], ws, s, int(self.birth_iters), exact=False,
                                    rows=sel[sub])
            children = self._children(k, X[sub], ws, s, exact=False, local=local)
            stats = self._with_children(k, children)
            m = s.shape[1]
            pos = torch.tensor([k] + list(range(self._stats.k, self._stats.k + m - 1)))
            log_s, local = self._local(X, children, self._elog_of(stats.n)[pos])
            s, local = self._refine(k, X, w, log_s.exp(), 3, local=local, rows=sel)
        children = self._children(k, X, w, s, local=local, rows=sel)
        entropy = self._children_entropy(k, w, s, local, sel)
        return children, entropy, s, local

    def _birth_labels(self, Xs: torch.Tensor, w: torch.Tensor, attempt: int) -> torch.Tensor:
        """Initial hard split of a birth target's rows, by attempt: 2-means along the
        principal axis; 2-means in the coordinates whitened by the target's own
        covariance; k-means++ into ``birth_children`` groups (the paper's fresh
        components); then alternately 2-means along a random axis and a local group
        carved around a random member (drawn by its mass)."""
        if attempt == 0:
            return two_means(Xs)
        if attempt == 1:
            return two_means(_whiten(Xs, w))
        if attempt == 2:
            from sklearn.cluster import KMeans as SkKMeans

            m = min(int(self.birth_children), Xs.shape[0])
            labels = SkKMeans(m, n_init=1, random_state=int(self._gen.integers(2**31))
                              ).fit_predict(Xs.cpu().numpy(), sample_weight=w.cpu().numpy())
            labels = np.unique(labels, return_inverse=True)[1]
            return torch.as_tensor(labels, device=Xs.device)
        if attempt % 2 == 1:
            axis = torch.as_tensor(self._gen.standard_normal(Xs.shape[1]), dtype=Xs.dtype)
            return two_means(Xs, axis=axis.to(Xs.device))
        p = (w / w.sum()).cpu().numpy()
        return carve(self._family, Xs, int(self._gen.choice(len(w), p=p / p.sum())))

    def _try_birth(self, k: int, attempt: int) -> bool:
        d = self._X.shape[1]
        rk = self._resp[:, k]
        if float(self._stats.n[k]) < 2 * (d + 2):
            return False
        sel = (rk > _MIN_MASS).nonzero().squeeze(1)
        sub = None
        if len(sel) > int(self.birth_subsample):       # rows drawn by their mass
            p = rk[sel].cpu().numpy()
            sub = torch.as_tensor(self._gen.choice(len(sel), int(self.birth_subsample),
                                                   replace=False, p=p / p.sum()),
                                  device=sel.device)
        rows = sel if sub is None else sel[sub]
        labels = self._birth_labels(self._X[rows], rk[rows], attempt)
        if int(labels.max()) < 1:
            return False
        children, entropy, s, local = self._birth_split(k, labels, sel, sub)
        if float(children.n.min()) < _EMPTY:
            return False        # an empty child: L changes by round-off only (a prune undoes it)
        before = self.elbo()
        if not self._birth_elbo(k, children, entropy) > before:
            return False
        m = s.shape[1]
        resp = torch.cat([self._resp, rk.new_zeros(rk.shape[0], m - 1)], 1)
        resp[sel, k] = rk[sel] * s[:, 0]
        resp[sel, -(m - 1):] = rk[sel, None] * s[:, 1:]
        latent = None
        if self._latent is not None:
            # the new columns' factors of rows without mass in them: the optimal ones
            latent = torch.cat([self._latent, self._family.variational_local(
                self._X, children[1:])[1]], 1)
            latent[sel, k] = local[:, 0]
            latent[sel, -(m - 1):] = local[:, 1:]
        k_old = self._stats.k
        ids = list(self._ids)
        ids[k] = self._next_id
        ids.extend(range(self._next_id + 1, self._next_id + m))
        self._next_id += m
        self._replace_columns(resp, [k] + list(range(k_old, k_old + m - 1)), ids, latent)
        self._born.update([ids[k]] + ids[k_old:])
        self._record("birth", before)
        return True

    def _birth_step(self) -> int:
        accepted = 0
        order = torch.argsort(self._stats.n, descending=True).tolist()
        targets = [self._ids[k] for k in order
                   if self._cooldown.get(self._ids[k], -1) < self._lap]
        for cid in targets:
            if cid in self._born or cid not in self._ids:
                continue
            # two proposal kinds per visit, the next two at the next visit, ...
            fails = self._failures.get(cid, 0)
            kinds = [(2 * fails + i) % int(self.birth_proposals) for i in range(2)]
            if any(self._try_birth(self._ids.index(cid), a) for a in dict.fromkeys(kinds)):
                accepted += 1
            else:     # next lap until every kind failed once, then rest 2, 4, 8, 16 laps
                self._failures[cid] = fails + 1
                rounds = (fails + 1) * 2 // int(self.birth_proposals)
                self._cooldown[cid] = self._lap + (2 ** min(rounds, 4) if rounds else 0)
        return accepted

    def _births_exhausted(self) -> bool:
        """Every component large enough to split has failed every proposal kind once."""
        d = self._X.shape[1]
        need = -(-int(self.birth_proposals) // 2)
        return all(self._failures.get(cid, 0) >= need or float(n) < 2 * (d + 2)
                   for cid, n in zip(self._ids, self._stats.n.tolist(), strict=True))

    def _merge_step(self) -> int:
        k = self._stats.k
        if k < 2:
            return 0
        self.elbo()                                    # caches log Z of every component
        i, j = torch.triu_indices(k, k, 1)
        pair = SuffStats(**{name: v[i] + v[j] for name, v in self._stats.fields.items()})
        gain = self._family.log_marginal(pair) - self._log_z[i] - self._log_z[j]
        n_pairs = int(self.max_merge_pairs) if self.max_merge_pairs is not None else 2 * k
        order = torch.argsort(gain, descending=True)[:n_pairs].tolist()
        # by component id: an accepted merge renumbers the others but leaves their log Z
        candidates = [(self._ids[int(i[o])], self._ids[int(j[o])], gain[o]) for o in order]
        used: set[int] = set()
        accepted = 0
        latents: dict = {}       # the candidates' merged factors, computed in chunks
        for c, (ci, cj, g) in enumerate(candidates):
            if ci in used or cj in used:
                continue
            a, b = self._ids.index(ci), self._ids.index(cj)
            ra, rb = self._resp[:, a], self._resp[:, b]
            # change of each row's entropy term when r_a and r_b are pooled
            d_rows = (torch.special.xlogy(ra, ra) + torch.special.xlogy(rb, rb)
                      - torch.special.xlogy(ra + rb, ra + rb))
            merged = None
            if self._latent is not None:
                if (ci, cj) not in latents:
                    latents = self._merged_latents([
                        (x, y) for x, y, _ in candidates[c:]
                        if x not in used and y not in used][:self._merge_chunk()])
                merged = latents[ci, cj]
            if merged is not None:
                memo_ab, total, local, d_local = merged
                g = self._family.log_marginal(total)[0] - self._log_z[a] - self._log_z[b]
                d_rows = d_rows + d_local
            keep = [c for c in range(k) if c != b]
            n = self._stats.n.clone()
            n[a] += n[b]
            before = self.elbo()
            after = self._elbo_with(n[keep], self._log_z.sum() + g,
                                    self._entropy + d_rows.sum())
            if not after > before:
                continue
            self._resp[:, a] += rb
            self._resp = self._resp[:, keep]
            if merged is not None:
                self._latent[:, a] = local
                self._latent = self._latent[:, keep]
            self._ids = [self._ids[c] for c in keep]
            self._ids[keep.index(a)] = self._next_id
            self._next_id += 1
            self._memo_stats = [s.merge(a, b) for s in self._memo_stats]
            if merged is not None:      # the pooled mass under the merged factors
                for memo, m_ab in zip(self._memo_stats, memo_ab, strict=True):
                    for name, v in memo.fields.items():
                        v[a] = m_ab.fields[name][0]
            self._memo_entropy = [h + d_rows[idx].sum()
                                  for h, idx in zip(self._memo_entropy, self._batches,
                                                    strict=True)]
            self._resync()
            self._record("merge", before)
            used.update((ci, cj))
            accepted += 1
            k -= 1
        return accepted

    def _merge_chunk(self) -> int:
        """Merge candidates whose latent factors are computed together: (N, P) tables
        of at most 2^23 entries."""
        return max(1, (1 << 23) // max(1, self._X.shape[0]))

    def _merged_latents(self, pairs: list[tuple[int, int]]) -> dict:
        """Merges' latent factors, for candidate pairs of component ids, all at once:
        each row's factor of the merged component, optimal under q(theta) of S_a + S_b
        (any factor gives a valid bound, and L is then evaluated exactly).  Returns,
        by pair, the merged column's statistics per batch and in total, the factors
        (N,) and each row's change of the factors' entropy term.  A merge leaves the
        columns and statistics of the other components as they were, so the result
        of a pair stays valid while neither of its components has been merged."""
        fam = self._family
        a = torch.tensor([self._ids.index(ci) for ci, _ in pairs])
        b = torch.tensor([self._ids.index(cj) for _, cj in pairs])
        r = self._resp[:, a] + self._resp[:, b]                          # (N, P)
        local = fam.variational_local(self._X, self._stats[a] + self._stats[b])[1]
        memo = [fam.variational_stats(self._X[idx], r[idx], local[idx])
                for idx in self._batches]
        total = memo[0]
        for m in memo[1:]:
            total = total + m
        n, m_pairs = r.shape

        def entropy(weights, factors):      # each row's term, column by column
            return fam.variational_entropy(weights.reshape(-1, 1),
                                           factors.reshape(-1, 1)).reshape(n, -1)

        d_local = (entropy(r, local) - entropy(self._resp[:, a], self._latent[:, a])
                   - entropy(self._resp[:, b], self._latent[:, b]))
        return {pair: ([mb[p] for mb in memo], total[p], local[:, p], d_local[:, p])
                for p, pair in enumerate(pairs)}

    def _delete_step(self) -> int:
        accepted = 0
        n_total = float(self._stats.n.sum())
        order = torch.argsort(self._stats.n).tolist()[:int(self.max_deletes)]
        for cid in [self._ids[c] for c in order]:
            k = self._stats.k
            c = self._ids.index(cid)
            if k < 2 or float(self._stats.n[c]) > 0.05 * n_total:
                continue
            keep = [x for x in range(k) if x != c]
            rest = self._stats[keep]
            rc = self._resp[:, c]
            rows = (rc > 0).nonzero().squeeze(1)
            log_p, local = self._local(self._X[rows], rest, self._stick_terms(rest.n)[0])
            moved = rc[rows, None] * log_p.exp()
            resp = self._resp[:, keep].clone()
            resp[rows] += moved
            latent = None
            if self._latent is None:
                stats = rest + self._family.suff_stats(self._X[rows], weights=moved)
                entropy = _entropy(resp)
            else:       # the rows' factors of every remaining column: the optimal ones
                fam = self._family
                stats = (rest - fam.variational_stats(self._X[rows], self._resp[rows][:, keep],
                                                      self._latent[rows][:, keep])
                         + fam.variational_stats(self._X[rows], resp[rows], local))
                latent = self._latent[:, keep].clone()
                latent[rows] = local
                entropy = _entropy(resp) + fam.variational_entropy(resp, latent).sum()
            before = self.elbo()
            after = float(self._elbo_parts(stats, entropy))
            empty = float(self._stats.n[c]) < _EMPTY
            if not (after > before or (empty and after >= before - _EMPTY * abs(before))):
                continue
            self._replace_columns(resp, list(range(k - 1)), [self._ids[x] for x in keep],
                                  latent)
            self._record("prune" if empty else "delete", before)
            accepted += 1
        return accepted

    def _reorder(self):
        perm = torch.argsort(self._stats.n, descending=True)
        if torch.equal(perm, torch.arange(self._stats.k, device=perm.device)):
            return
        before = self.elbo()
        if not float(self._elbo_parts(self._stats[perm], self._entropy)) > before:
            return
        self._memo_stats = [s[perm] for s in self._memo_stats]
        self._resp = self._resp[:, perm]
        if self._latent is not None:
            self._latent = self._latent[:, perm]
        self._ids = [self._ids[int(p)] for p in perm]
        self._resync()
        self._record("reorder", before)

    # ------------------------------------------------------------------ fit
    def _fit(self, X):
        self._setup(X)
        self.elbo_history_, self.history_, self.moves_ = [], [], []
        self.converged_ = False
        quiet, prev, start = 0, self.objective(), 0
        state = self._saved_state()
        if state is not None:
            quiet, prev, start = self._restore(state)
        self._lap = start
        bar = tqdm(range(start, int(self.max_laps)), desc="movb", unit="lap", file=sys.stderr,
                   disable=not self.progress, leave=False)
        for lap in bar:
            if self.converged_:
                break
            self._lap = lap
            self._born: set[int] = set()
            self.lap()
            births = self._birth_step() if self.births else 0
            merges = self._merge_step() if self.merges else 0
            deletes = self._delete_step() if self.deletes else 0
            if self.births or self.merges or self.deletes:
                self._reorder()
            self._update_hyperparameters()
            value = self.objective()
            self.elbo_history_.append(value + self._units.lp_offset)
            self.history_.append({"lap": lap, "K": self._stats.k,
                                  "elbo": self.elbo_history_[-1],
                                  "births": births, "merges": merges, "deletes": deletes,
                                  "hyperparameters": self._hyperparameter_record()})
            bar.set_postfix(K=self._stats.k, L=f"{value:.6g}", refresh=False)
            moved = births + merges + deletes
            quiet = 0 if moved or (self.births and not self._births_exhausted()) else quiet + 1
            if abs(value - prev) <= float(self.tol) * abs(value) and quiet >= int(self.patience):
                self.converged_ = True
            prev = value
            if self._checkpointing and (lap + 1) % int(self.checkpoint_every) == 0:
                self._save_checkpoint(lap + 1, quiet, prev)
        self.n_laps_ = len(self.elbo_history_)
        if not self.converged_ and float(self.tol) > 0:
            warn_not_converged(self, "max_laps", f"relative change of the objective at most "
                               f"tol={self.tol} with no move for patience={self.patience} laps")
        self._finish()

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, laps: int, quiet: int, prev: float):
        state = {"laps": laps, "quiet": quiet, "prev": prev, "converged": self.converged_,
                 "resp": self._resp, "latent": self._latent, "ids": self._ids,
                 "next_id": self._next_id,
                 "cooldown": self._cooldown, "failures": self._failures,
                 "memo_stats": [dict(m.fields) for m in self._memo_stats],
                 "memo_entropy": self._memo_entropy,
                 "elbo_history": self.elbo_history_, "history": self.history_,
                 "moves": self.moves_, "gen": self._gen.bit_generator.state,
                 "torch_rng": torch.get_rng_state(),
                 "hyperparameters": self._hyper_values, "alpha": self._alpha}
        self._save_state(state)

    def _restore(self, state) -> tuple[int, float, int]:
        if state["resp"].shape[0] != self._X.shape[0]:
            raise ValueError(f"the checkpoint in {self._checkpoint_dir} is of data with "
                             f"{state['resp'].shape[0]} rows, not {self._X.shape[0]}")
        self._resp, self._latent = state["resp"], state.get("latent")
        self._ids, self._next_id = list(state["ids"]), int(state["next_id"])
        self._cooldown, self._failures = dict(state["cooldown"]), dict(state["failures"])
        self._memo_stats = [SuffStats(**f) for f in state["memo_stats"]]
        self._memo_entropy = list(state["memo_entropy"])
        self.elbo_history_ = list(state["elbo_history"])
        self.history_ = list(state["history"])
        self.moves_ = list(state["moves"])
        self.converged_ = bool(state["converged"])
        self._gen.bit_generator.state = state["gen"]
        torch.set_rng_state(state["torch_rng"])
        self._set_hyperparameters(dict(state["hyperparameters"]), float(state["alpha"]))
        self._resync()
        return int(state["quiet"]), float(state["prev"]), int(state["laps"])

    def _finish(self):
        log_r = self._log_resp(self._X, self._stats, self._elog)
        labels = log_r.argmax(1)
        self.resp_ = self._resp.cpu().numpy()
        # component indices, as predict gives them (components no point takes leave gaps)
        self.labels_ = labels.cpu().numpy()
        self.n_clusters_ = int(np.unique(self.labels_).size)
        self.weights_ = self._elog.exp().cpu().numpy()
        self.hyperparameters_ = self._hyperparameter_record()

    # ------------------------------------------------------------------ public
    def predict_proba(self, X) -> np.ndarray:
        """q(z = k | x) under the fitted q: softmax of E[log pi_k] + E[log p(x | theta_k)]."""
        X = self._validate_predict_data(X)
        X = as_tensor(self._units.rows(X), device=self._X.device)
        return self._log_resp(X, self._stats, self._elog).exp().cpu().numpy()

    def _predict(self, X):
        X = as_tensor(self._units.rows(X), device=self._X.device)
        return self._log_resp(X, self._stats, self._elog).argmax(1).cpu().numpy()

    def posterior_arrays(self) -> dict:
        """Draws (``sample``) from q: sticks from their Beta factors (the mass beyond K
        goes to the prior predictive), parameters from their conjugate posteriors,
        z from r; pointwise log-likelihood with z summed out."""
        self._check_is_fitted()
        a, b = self._weights.stick_posterior(torch.cat([self._stats.n,
                                                        self._stats.n.new_zeros(1)]))
        beta = torch.distributions.Beta(a, b)

        def sample_log_pi():
            v = beta.sample().clamp(1e-300, 1 - 1e-16)
            log_rest = torch.cat([torch.zeros(1, dtype=DTYPE), torch.log1p(-v).cumsum(0)])
            return torch.log(v) + log_rest[:-1], log_rest[-1]

        log_r = self._log_resp(self._X, self._stats, self._elog)
        return approximate_posterior_arrays(
            self._family, self._weights, self._X, log_r, sample_log_pi,
            lambda: self._family.sample_posterior(self._stats), self.n_samples,
            self.random_state, self._alpha, self._units, self._observed)

    def to_inference_data(self):
        from bnpdeep.diagnostics import to_inference_data

        return to_inference_data(self)


def _whiten(X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rows in coordinates whitened by their w-weighted covariance (ridge 1e-6 of its
    mean variance, so that constant columns stay finite)."""
    w = w / w.sum()
    xc = X - w @ X
    cov = (xc * w[:, None]).T @ xc
    ridge = 1e-6 * float(cov.diagonal().mean().clamp_min(1e-300))
    chol = torch.linalg.cholesky(cov + ridge * torch.eye(X.shape[1], dtype=X.dtype,
                                                         device=X.device))
    return torch.linalg.solve_triangular(chol, xc.T, upper=False).T


def _entropy_rows(s: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of a probability table."""
    return -torch.special.xlogy(s, s).sum(1)


__all__ = ["MemoizedVB", "elbo_from_stats", "stick_terms"]
