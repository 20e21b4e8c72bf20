"""The settings of a sub-cluster sampler's kernel: the expert options a user may set,
and the constants they resolve to once per fit.

Both sub-cluster samplers (:class:`~bnpdeep.inference.subcluster.SubclusterSampler`
and its data-parallel form :class:`~bnpdeep.inference.distributed.
DistributedSubclusterSampler`) take their expert knobs as one :class:`SamplerOptions`
(the constructors keep what a statistician sets: iterations, burn-in, thinning,
chains, the model, device, seed).  The steps, the compiled ones
(:class:`~bnpdeep.inference.subcluster_compiled.CompiledGaussianSteps`) included,
read the kernel's constants from one :class:`KernelSettings`, built by
:func:`resolve_common`: the defaults and the checks are written once, and no step
object reads an estimator's private fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Labels given a collapsed Gibbs update per exact iteration when gibbs_points="auto".
GIBBS_POINTS_COMPILED = 256
GIBBS_POINTS_TORCH = 32


@dataclass(frozen=True)
class SamplerOptions:
    """Expert settings of the sub-cluster samplers.  Whatever their values, every kept
    step leaves the posterior invariant (each is an exact Gibbs or Metropolis-Hastings
    step with a state-independent schedule), so they change the cost of an iteration
    and how far it moves the chain, not what the chain converges to.  The warm-up's
    settings act only on discarded draws.

    moves_per_iter : int, default 4
        Anchor pairs drawn per exact iteration, each proposing a split or a merge
        accepted by its Metropolis-Hastings ratio (Jain & Neal 2004; the sub-partition
        kinds below).  Fixed for the chain: a number read from the state would make
        the kernel a state-dependent composition of Metropolis-Hastings steps, which
        in general does not leave the posterior invariant.
    gibbs_points : int or "auto", default "auto"
        Labels given a collapsed Gibbs update (Neal 2000, algorithm 3) per exact
        iteration, drawn uniformly whatever the state (all of them on fewer points);
        "auto": 256 on the compiled backend, 32 on the torch one (a Python loop).
        They let small clusters empty and open, which the restricted Gibbs step
        cannot and the split/merge moves rarely do.  0 turns them off.
    slice_every : int, default 2
        Every ``slice_every``-th exact iteration follows the restricted Gibbs step with
        a slice step (Kalli, Griffin & Walker 2011), which can empty and open clusters
        given the same weights and parameters.  0: never.
    proposal_weights : sequence of non-negative numbers, optional
        Probabilities (normalised) of the sub-partition kinds a split proposal draws,
        whatever the state.  ``SubclusterSampler``: four, default (1, 1, 1, 0.5) --
        2-means from the principal axis, from a random axis, a group carved around
        the anchor, and 2-means along a random axis in the cluster's whitened
        coordinates (which finds splits along a nearly constant column).
        ``DistributedSubclusterSampler``: two, default (1, 1), the first two kinds.
    refine_iter : int, default 0
        EM iterations of the full-covariance sub-mixture after the whitened 2-means
        (``SubclusterSampler``'s torch backend only).
    refine_rows : int, default 1000
        A whitened sub-partition of a larger cluster is fitted on this many of its
        rows (those of smallest key; keys are drawn once per chain, independently of
        the partition), then every row goes to the sub-component that explains it
        better: the cost of a proposal stays bounded on large clusters.
    resplit_prob : float, default 0
        Probability that a batch of anchored moves is a batch of re-splits:
        K-preserving redraws of the boundary between the anchors' two clusters,
        which a merge-then-split cannot make when the merged state is improbable
        (``SubclusterSampler`` only).
    max_label_tries : int, default 10
        Rejection attempts of the K-preserving restricted Gibbs label step before
        the labels are kept for that iteration (counted in ``label_rejections_``).
        Given the weights and parameters the chance of success does not depend on
        the current labels, so the step is a mixture of the exact conditional and
        staying put.
    warmup_moves : int, optional
        Anchored proposals per warm-up iteration, on top of Chang & Fisher's
        parallel sub-cluster splits and merges (default max(3, K // 2);
        ``SubclusterSampler`` only).
    burnout : int, optional
        Warm-up iterations after a cluster is created by a split or merge before it
        may merge again (the clusters of the start may merge at once), so that a
        mildly favoured coarse split is not undone at once.  Default: 15% of the
        warm-up, at least 5.
    """

    moves_per_iter: int = 4
    gibbs_points: int | str = "auto"
    slice_every: int = 2
    proposal_weights: tuple | None = None
    refine_iter: int = 0
    refine_rows: int = 1000
    resplit_prob: float = 0.0
    max_label_tries: int = 10
    warmup_moves: int | None = None
    burnout: int | None = None

    def check(self, unsupported: tuple = ()) -> None:
        """A clear error for a value out of range, or for an option set away from its
        default that the sampler does not have (``unsupported``: field names)."""
        for name in unsupported:
            if getattr(self, name) != getattr(SamplerOptions, name):
                raise ValueError(f"SamplerOptions.{name} is not an option of this sampler "
                                 f"(got {getattr(self, name)!r})")
        check_count(self.moves_per_iter, "moves_per_iter")
        check_count(self.gibbs_points, "gibbs_points", allow_auto=True)
        check_count(self.refine_iter, "refine_iter")
        check_count(self.max_label_tries, "max_label_tries")
        if not (isinstance(self.refine_rows, (int, np.integer)) and self.refine_rows >= 1):
            raise ValueError(f"refine_rows must be a positive integer, got {self.refine_rows!r}")
        if self.warmup_moves is not None:
            check_count(self.warmup_moves, "warmup_moves")
        if not 0.0 <= float(self.resplit_prob) <= 1.0:
            raise ValueError(f"resplit_prob must lie in [0, 1], got {self.resplit_prob}")


def sampler_options(options) -> SamplerOptions:
    """``options`` as a :class:`SamplerOptions` (None: the defaults; a dict: its keys)."""
    if options is None:
        return SamplerOptions()
    if isinstance(options, dict):
        try:
            return SamplerOptions(**options)
        except TypeError as err:
            raise ValueError(f"options: {err}") from None
    if not isinstance(options, SamplerOptions):
        raise ValueError(f"options must be a SamplerOptions, a dict of its fields or None, "
                         f"got {type(options).__name__}")
    return options


@dataclass(frozen=True)
class KernelSettings:
    """Constants of one chain's kernel (none depends on the chain's state).

    warmup : iterations of the warm-up (Chang & Fisher's moves; draws discarded).
    burnout : iterations a new cluster waits before a warm-up merge may take it.
    sub_alpha : Dirichlet concentration of a cluster's two sub-cluster weights.
    kind_weights : probabilities of the sub-partition kinds of the anchored proposals.
    moves_per_iter : anchor pairs drawn per exact iteration (fixed for the chain).
    warmup_moves : anchor pairs per warm-up iteration (None: max(3, K // 2)).
    gibbs_points : collapsed Gibbs updates per exact iteration.
    slice_every : every how many exact iterations the slice step runs (0: never).
    resplit_prob : probability that a batch of anchored moves is one of re-splits.
    refine_rows : rows a refined or whitened sub-partition is fitted on, at most.
    refine_iter : EM iterations refining the whitened 2-means sub-partition.
    max_label_tries : rejection-sampling tries of the K-preserving restricted Gibbs.
    bandwidth2 : squared kernel bandwidth of the local anchor choice.
    row_keys : fixed per-row uniforms that choose those rows (None: not needed).
    """

    warmup: int
    burnout: int
    sub_alpha: float
    kind_weights: torch.Tensor
    moves_per_iter: int = 0
    warmup_moves: int | None = None
    gibbs_points: int = 0
    slice_every: int = 2
    resplit_prob: float = 0.0
    refine_rows: int = 1000
    refine_iter: int = 0
    max_label_tries: int = 10
    bandwidth2: float = 1.0
    row_keys: torch.Tensor | None = None

    @property
    def kind_cdf(self) -> np.ndarray:
        """Cumulative ``kind_weights`` as a float64 array (the compiled kernels' form)."""
        return np.cumsum(self.kind_weights.numpy()).astype(np.float64)

    def slice_due(self, iteration: int) -> bool:
        """Whether exact iteration ``iteration`` (counted from the chain's start) ends
        with the slice step: every ``slice_every``-th iteration after the warm-up."""
        return bool(self.slice_every) and (
            (iteration - self.warmup) % self.slice_every == self.slice_every - 1)


def resolve_common(warmup, options: SamplerOptions, weights, burn: int,
                   default_kinds: tuple, unsupported: tuple = ()) -> dict:
    """The settings every sub-cluster sampler shares, checked: ``warmup`` (half the
    burn-in by default), ``burnout`` (max(5, 3 warmup / 20) by default), ``sub_alpha``
    (the weight prior's alpha, or 1), ``kind_weights`` (``options.proposal_weights``,
    default ``default_kinds``, as many as it has, normalised), and the options both
    samplers have; ``unsupported`` names the options the sampler lacks."""
    options.check(unsupported)
    warmup = burn // 2 if warmup is None else int(warmup)
    if not 0 <= warmup <= burn:
        raise ValueError(f"warmup must lie in [0, burn_in={burn}], got {warmup}")
    burnout = max(5, 3 * warmup // 20) if options.burnout is None else int(options.burnout)
    if burnout < 0:
        raise ValueError(f"burnout must be non-negative, got {options.burnout}")
    given = default_kinds if options.proposal_weights is None else options.proposal_weights
    w = torch.as_tensor(given, dtype=torch.float64)
    n_kinds = len(default_kinds)
    if w.shape != (n_kinds,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
            or float(w.sum()) <= 0:
        raise ValueError(f"proposal_weights must be {n_kinds} non-negative numbers, not "
                         f"all zero, got {given!r}")
    if not (isinstance(options.slice_every, (int, np.integer)) and options.slice_every >= 0):
        raise ValueError(f"slice_every must be a non-negative integer, got "
                         f"{options.slice_every!r}")
    alpha = getattr(weights, "alpha", 0)
    return {"warmup": warmup, "burnout": burnout,
            "sub_alpha": alpha if alpha > 0 else 1.0, "kind_weights": w / w.sum(),
            "slice_every": int(options.slice_every),
            "moves_per_iter": int(options.moves_per_iter),
            "max_label_tries": int(options.max_label_tries)}


def check_count(value, name: str, allow_auto: bool = False) -> None:
    """A clear error unless ``value`` is a non-negative integer (or "auto")."""
    if allow_auto and value == "auto":
        return
    if not (isinstance(value, (int, np.integer)) and value >= 0):
        alternative = " or 'auto'" if allow_auto else ""
        raise ValueError(f"{name} must be a non-negative integer{alternative}, got {value!r}")


__all__ = ["GIBBS_POINTS_COMPILED", "GIBBS_POINTS_TORCH", "KernelSettings", "SamplerOptions",
           "check_count", "resolve_common", "sampler_options"]
