"""Matplotlib figures for comparing clusterings (``bnpdeep compare`` and the notebooks).

Every function takes plain arrays or InferenceData and returns a
``matplotlib.figure.Figure``; nothing is shown or saved here.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _grid(n: int, width: float = 4.0, height: float = 3.6):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def k_traces(traces: dict) -> plt.Figure:
    """K per iteration / epoch / lap of every method on one axis.

    ``traces``: method -> (x label, K values) or method -> list of chains of K values.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, (unit, ks) in traces.items():
        chains = ks if ks and isinstance(ks[0], (list, tuple, np.ndarray)) else [ks]
        for c, k in enumerate(chains):
            ax.plot(np.arange(1, len(k) + 1), k, drawstyle="steps-post", lw=1.4,
                    label=f"{name} ({unit})" if c == 0 else None,
                    color=f"C{list(traces).index(name)}", alpha=1.0 if c == 0 else 0.5)
    ax.set_xlabel("iteration / epoch / lap")
    ax.set_ylabel("K")
    ax.set_title("Number of clusters during the fit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def k_posterior(k_draws: dict) -> plt.Figure:
    """The posterior (or approximate-posterior) distribution of K per method:
    ``k_draws``: method -> array of K draws."""
    fig, axes = _grid(len(k_draws))
    for ax, (name, ks) in zip(axes, k_draws.items(), strict=True):
        ks = np.asarray(ks).ravel().astype(int)
        values, counts = np.unique(ks, return_counts=True)
        ax.bar(values, counts / counts.sum(), width=0.8, color="C0")
        ax.set_xlim(values.min() - 1, values.max() + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.set_xlabel("K")
        ax.set_ylabel("posterior probability")
    fig.tight_layout()
    return fig


def project_2d(X: np.ndarray) -> tuple[np.ndarray, str]:
    """The data itself when d <= 2, else its first two principal components."""
    X = np.asarray(X, dtype=float)
    if X.shape[1] == 1:
        return np.c_[X, np.zeros(len(X))], "x"
    if X.shape[1] == 2:
        return X, "x"
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(X), "PCA"


def _ellipse(ax, pts: np.ndarray, color):
    """2-sigma ellipse of the points' empirical covariance."""
    if len(pts) < 3:
        return
    cov = np.cov(pts.T)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0, None)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    ax.add_patch(Ellipse(pts.mean(0), 4 * np.sqrt(vals[-1]), 4 * np.sqrt(vals[0]), angle=angle,
                         fill=False, color=color, lw=1.2))


def clusters_2d(X: np.ndarray, labels: dict, max_points: int = 5000, seed: int = 0
                ) -> plt.Figure:
    """The data in 2-D (PCA when d > 2), coloured by each method's labels, with the
    2-sigma ellipse of every cluster.  ``labels``: method -> labels; negative labels
    (DBSCAN's noise) are drawn grey, without an ellipse, and not counted in K."""
    Z, how = project_2d(X)
    rng = np.random.default_rng(seed)
    show = rng.choice(len(Z), min(len(Z), max_points), replace=False)
    fig, axes = _grid(len(labels))
    cmap = plt.get_cmap("tab20")
    for ax, (name, lab) in zip(axes, labels.items(), strict=True):
        lab = np.asarray(lab)
        ids = np.unique(lab[lab >= 0])
        colour = {c: cmap(i % 20) for i, c in enumerate(ids)}
        colour.update({c: (0.7, 0.7, 0.7, 1.0) for c in np.unique(lab[lab < 0])})
        ax.scatter(Z[show, 0], Z[show, 1], s=4, c=[colour[c] for c in lab[show]],
                   linewidths=0)
        for c in ids:
            _ellipse(ax, Z[lab == c], colour[c])
        ax.set_title(f"{name} (K={len(ids)})")
        ax.set_xlabel(f"{how} 1")
        ax.set_ylabel(f"{how} 2")
    fig.tight_layout()
    return fig


def coclustering(label_draws: np.ndarray, order=None, max_points: int = 400, seed: int = 0
                 ) -> tuple[plt.Figure, np.ndarray]:
    """Posterior co-clustering matrix P(z_i = z_j | X) from label draws (draws x N), on at
    most ``max_points`` points ordered by ``order`` (e.g. the point estimate's labels).
    Returns the figure and the matrix."""
    draws = np.asarray(label_draws)
    n = draws.shape[1]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, min(n, max_points), replace=False))
    if order is not None:
        idx = idx[np.argsort(np.asarray(order)[idx], kind="stable")]
    sub = draws[:, idx]
    sim = (sub[:, :, None] == sub[:, None, :]).mean(0)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(sim, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="P(same cluster)")
    ax.set_title(f"co-clustering ({len(idx)} points)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig, sim


def confusion(y_true, labels: dict) -> plt.Figure:
    """Row-normalised contingency tables of true classes against each method's clusters,
    clusters ordered by their best-matching class (Hungarian)."""
    import pandas as pd
    from scipy.optimize import linear_sum_assignment

    y_true = np.asarray(y_true)
    fig, axes = _grid(len(labels))
    for ax, (name, lab) in zip(axes, labels.items(), strict=True):
        table = pd.crosstab(y_true, np.asarray(lab)).to_numpy(dtype=float)
        clusters = range(table.shape[1])
        rows, cols = linear_sum_assignment(-table)
        rest = [c for c in clusters if c not in set(cols)]
        order = list(cols[np.argsort(rows)]) + rest
        table = table[:, order] / table.sum(1, keepdims=True)
        ax.imshow(table, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        ax.set_title(name)
        ax.set_xlabel("cluster (matched order)")
        ax.set_ylabel("true class")
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path) -> str:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


__all__ = ["k_traces", "k_posterior", "clusters_2d", "coclustering", "confusion",
           "project_2d", "save"]
