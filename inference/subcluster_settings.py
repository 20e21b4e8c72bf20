"""The settings of a sub-cluster sampler's kernel, resolved once per fit.

Both sub-cluster samplers (:class:`~bnpdeep.inference.subcluster.SubclusterSampler`
and its data-parallel form :class:`~bnpdeep.inference.distributed.
DistributedSubclusterSampler`) and the compiled steps
(:class:`~bnpdeep.inference.subcluster_compiled.CompiledGaussianSteps`) read the
kernel's constants from one :class:`KernelSettings`, built by :func:`resolve_common`
from the estimator's constructor arguments: the defaults and the checks are written
once, and no step object reads an estimator's private fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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


def resolve_common(est, weights, burn: int, n_kinds: int, kinds_text: str) -> dict:
    """The settings every sub-cluster sampler shares, checked, from ``est``'s
    arguments: ``warmup`` (half the burn-in by default), ``burnout``
    (max(5, 3 warmup / 20) by default), ``sub_alpha`` (the weight prior's alpha, or
    1), ``kind_weights`` (``est.proposal_weights``, ``n_kinds`` of them, normalised)
    and ``slice_every``."""
    warmup = burn // 2 if est.warmup is None else int(est.warmup)
    if not 0 <= warmup <= burn:
        raise ValueError(f"warmup must lie in [0, burn_in={burn}], got {warmup}")
    burnout = max(5, 3 * warmup // 20) if est.burnout is None else int(est.burnout)
    if burnout < 0:
        raise ValueError(f"burnout must be non-negative, got {est.burnout}")
    w = torch.as_tensor(est.proposal_weights, dtype=torch.float64)
    if w.shape != (n_kinds,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
            or float(w.sum()) <= 0:
        raise ValueError(f"proposal_weights must be {kinds_text}, got "
                         f"{est.proposal_weights!r}")
    if int(est.slice_every) < 0:
        raise ValueError(f"slice_every must be a non-negative integer, got {est.slice_every}")
    alpha = getattr(weights, "alpha", 0)
    return {"warmup": warmup, "burnout": burnout,
            "sub_alpha": alpha if alpha > 0 else 1.0, "kind_weights": w / w.sum(),
            "slice_every": int(est.slice_every)}


def check_count(value, name: str, allow_auto: bool = False) -> None:
    """A clear error unless ``value`` is a non-negative integer (or "auto")."""
    if allow_auto and value == "auto":
        return
    if not (isinstance(value, (int, np.integer)) and value >= 0):
        alternative = " or 'auto'" if allow_auto else ""
        raise ValueError(f"{name} must be a non-negative integer{alternative}, got {value!r}")


__all__ = ["KernelSettings", "check_count", "resolve_common"]
