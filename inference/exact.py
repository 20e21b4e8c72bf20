"""Exact posterior over partitions by enumeration, for tiny data sets.

p(z | X) is proportional to EPPF(n_1..n_K) prod_k p(X_k) (weights and component
parameters integrated out).  Enumerating every set partition (Bell(n) of
them: 203 for n = 6) gives the exact posterior against which samplers are
tested.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def set_partitions(n: int) -> Iterator[tuple[int, ...]]:
    """All set partitions of n points as canonical label tuples (restricted growth
    strings: the first point is in block 0, each new block takes the next label)."""
    if n == 0:
        yield ()
        return

    def grow(prefix: list[int], k: int):
        if len(prefix) == n:
            yield tuple(prefix)
            return
        for label in range(k + 1):
            prefix.append(label)
            yield from grow(prefix, max(k, label + 1))
            prefix.pop()

    yield from grow([0], 1)


def canonical(labels) -> tuple[int, ...]:
    """Relabel by order of first appearance, so equal partitions compare equal."""
    seen: dict[int, int] = {}
    return tuple(seen.setdefault(int(x), len(seen)) for x in np.asarray(labels).ravel())


def exact_partition_posterior(mixture, X) -> dict[tuple[int, ...], float]:
    """Exact p(partition | X) for every partition of the rows of X (n <= 8)."""
    X = torch.as_tensor(np.asarray(X, dtype=float), dtype=torch.float64)
    n = X.shape[0]
    if n > 8:
        raise ValueError(f"enumeration is for tiny data (n <= 8), got n = {n}")
    parts = list(set_partitions(n))
    logp = np.array([mixture.log_joint_collapsed(X, p) for p in parts])
    logp -= logp.max()
    prob = np.exp(logp)
    prob /= prob.sum()
    return dict(zip(parts, prob, strict=True))


def total_variation(p: dict, q: dict) -> float:
    """Total-variation distance between two distributions given as dicts."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def empirical_partition_distribution(label_draws) -> dict[tuple[int, ...], float]:
    """Frequencies of the (canonicalised) partitions in an array of draws x N labels."""
    counts: dict[tuple[int, ...], int] = {}
    for row in np.asarray(label_draws):
        key = canonical(row)
        counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def bell_number(n: int) -> int:
    """Number of set partitions of n points."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for v in row:
            nxt.append(nxt[-1] + v)
        row = nxt
    return row[0]


__all__ = ["set_partitions", "canonical", "exact_partition_posterior", "total_variation",
           "empirical_partition_distribution", "bell_number"]
