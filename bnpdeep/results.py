"""One result type shared by every clustering method."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClusteringResult:
    """What a fit produced, in a form every method shares.

    ``labels`` are 0..K-1 (-1 marks noise for DBSCAN); ``metrics`` holds nmi, ari
    and acc when true labels were given; ``info`` holds method-specific scalars
    (acceptance rates, ELBO, eps ...); ``idata`` an ArviZ InferenceData for the
    Bayesian methods.
    """

    method: str
    labels: np.ndarray
    n_clusters: int
    time_s: float
    metrics: dict | None = None
    info: dict = field(default_factory=dict)
    idata: object | None = None

    def summary(self) -> dict:
        """JSON-ready summary: method, n_clusters, time_s, n_points, metrics, info."""
        out = {"method": self.method, "n_clusters": int(self.n_clusters),
               "time_s": round(float(self.time_s), 4), "n_points": int(np.size(self.labels))}
        if self.metrics:
            for key in ("nmi", "ari", "acc", "k_true"):
                if key in self.metrics:
                    val = self.metrics[key]
                    out[key] = int(val) if key == "k_true" else round(float(val), 6)
        for key, val in self.info.items():
            out[key] = val.item() if isinstance(val, np.generic) else val
        return out

    def row(self) -> str:
        """One line of a results table."""
        s = self.summary()
        cells = [f"{s['method']:<10}", f"K={s['n_clusters']:<4d}"]
        for key in ("nmi", "ari", "acc"):
            cells.append(f"{key.upper()}={s[key]:.3f}" if key in s else f"{key.upper()}=  -  ")
        cells.append(f"{s['time_s']:8.2f} s")
        return "  ".join(cells)
