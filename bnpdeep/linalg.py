"""Batched linear-algebra and special-function helpers shared by the families.

Everything works on leading batch dimensions and relies on Cholesky factors:
no explicit matrix inverse is formed anywhere.
"""

from __future__ import annotations

import math

import torch

DTYPE = torch.float64

_LOG_PI = math.log(math.pi)
_LOG_2PI = math.log(2.0 * math.pi)
# up to this d, per-row outer products are formed feature-major
# (:func:`_outer_rows_feature_major`)
_FEATURE_MAJOR_MAX_D = 4
# from this d on, and with this many rows per group on average, the per-group sums
# are GEMMs over the rows sorted by group, in blocks of _GROUP_GEMM_BLOCK rows: the
# row-chunk loop costs d^2 scattered adds per row, the GEMMs a gather of the rows
# (16,384 x 32 in 40 groups: 3.4 against 6.1 ms; 100,000 x 64 in 40 groups: 42
# against 68 ms; at d = 16 the two tie)
_GROUP_GEMM_MIN_D = 24
_GROUP_GEMM_MIN_ROWS = 64
_GROUP_GEMM_BLOCK = 1 << 15


def as_tensor(x, dtype=DTYPE, device=None) -> torch.Tensor:
    """Convert arrays, lists, scalars or tensors to a tensor of ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(x, dtype=dtype, device=device)


def cholesky(a: torch.Tensor, jitter: float = 1e-10, max_tries: int = 6) -> torch.Tensor:
    """Lower Cholesky factor of symmetric positive-definite ``a`` (batched).

    Reads the lower triangle only (as LAPACK does), so a round-off asymmetry of
    ``a`` does not matter; if the factorisation fails (round-off on a nearly
    singular matrix), adds ``jitter * mean(diag)`` to the diagonal and retries
    with ten times more jitter each time.
    """
    chol, info = torch.linalg.cholesky_ex(a)
    if not bool(info.any()):
        return chol
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1, keepdim=True).clamp_min(1e-300)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    eps = jitter
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(a + (eps * scale)[..., None] * eye)
        if not bool(info.any()):
            return chol
        eps *= 10.0
    raise ValueError("matrix is not positive definite even after adding jitter")


def logdet_from_chol(chol: torch.Tensor) -> torch.Tensor:
    """log|A| from the lower Cholesky factor of A."""
    return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def mahalanobis_sq(chol: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance diff^T A^{-1} diff with A = L L^T.

    ``chol`` has shape (K, d, d), ``diff`` (N, K, d); returns (N, K).
    Solved with one batched triangular solve per cluster.
    """
    # (K, d, N) right-hand sides
    rhs = diff.permute(1, 2, 0)
    sol = torch.linalg.solve_triangular(chol, rhs, upper=False)
    return sol.pow(2).sum(-2).transpose(0, 1)


def mahalanobis_points(chol: torch.Tensor, X: torch.Tensor, mean: torch.Tensor,
                       chunk_elems: int = 1 << 18) -> torch.Tensor:
    """(x_n - m_k)^T A_k^{-1} (x_n - m_k) for all points and clusters, (N, K).

    With W_k = L_k^{-1} (a triangular solve against I on the small (K, d, d)
    factors), W_k x_n for every k is one (N, d) x (d, K d) product, and the
    squared norms a second one; no (N, K, d) difference tensor is built for all
    N at once: rows go in chunks of at most ``chunk_elems / (K d)``.  This is
    several times faster than a batched triangular solve with N right-hand sides.
    The default chunk (2 MiB of float64) stays in cache: 4x faster than 32 MiB
    chunks at N=300,000, K=32, d=16 on a 2-core x86 CPU.
    """
    k, d = mean.shape
    eye = torch.eye(d, dtype=chol.dtype, device=chol.device).expand_as(chol)
    w = torch.linalg.solve_triangular(chol, eye, upper=False)           # (K, d, d)
    if d <= _FEATURE_MAJOR_MAX_D and k >= 24:
        return _mahalanobis_quadratic(w, X, mean)
    a = w.transpose(1, 2).permute(1, 0, 2).reshape(d, k * d)            # [i, k d + j] = W_k[j, i]
    m = (w @ mean[..., None])[..., 0]                                    # (K, d)
    ones = torch.ones(d, dtype=X.dtype, device=X.device)
    n = X.shape[0]
    step = max(1, chunk_elems // max(k * d, 1))
    out = torch.empty((n, k), dtype=X.dtype, device=X.device)
    for start in range(0, n, step):
        y = (X[start:start + step] @ a).view(-1, k, d).sub_(m)
        out[start:start + step] = y.square_() @ ones
    return out


def grouped_mahalanobis(X: torch.Tensor, w: torch.Tensor, wm: torch.Tensor,
                         comps: torch.Tensor) -> torch.Tensor:
    """|W_c x_i - W_c mu_c|^2 for c = comps[i, j], (N, m), given ``w`` (K, d, d) the
    inverse Cholesky factors W_c = L_c^{-1} and ``wm`` (K, d) the products W_c mu_c:
    the (i, j) pairs sorted by component, each component's rows in one GEMM with
    W_c^T (N m d^2 work, where the full table of :func:`mahalanobis_points` is
    N K d^2)."""
    n, m = comps.shape
    flat = comps.reshape(-1)
    order = torch.argsort(flat)
    counts = torch.bincount(flat, minlength=w.shape[0]).tolist()
    rows = X[torch.div(order, m, rounding_mode="floor")]
    parts = [(xc @ w[c].T).sub_(wm[c]).square_().sum(1)
             for c, xc in enumerate(torch.split(rows, counts)) if counts[c]]
    out = torch.empty(n * m, dtype=X.dtype, device=X.device)
    out[order] = torch.cat(parts) if parts else out[:0]
    return out.view(n, m)


def _mahalanobis_quadratic(w: torch.Tensor, X: torch.Tensor, mean: torch.Tensor,
                           chunk_rows: int = 1 << 16) -> torch.Tensor:
    """:func:`mahalanobis_points` for small d and many clusters, from the expanded form

        (x - m_k)^T P_k (x - m_k) = vec(x x^T) . vec(P_k) - 2 x . P_k m_k + m_k^T P_k m_k,

    P_k = W_k^T W_k: one (N, d^2 + d) x (d^2 + d, K) product with a bias per cluster,
    instead of a (N, K d) intermediate that is shifted, squared and summed; the
    features are built feature-major.  At d = 2, N = 20,000 that is 3.1x faster at
    K = 50 and 3.3x at K = 24 (d = 4, K = 30: 1.8x); at K = 20 it ties and at K = 10
    building the features costs more than it saves (0.6x), hence the caller's K >= 24.  The
    cancellation of the expanded form costs about 1e-14 relative accuracy in float64
    (tests/bnpdeep/test_linalg.py checks both paths against scipy)."""
    k, d = mean.shape
    prec = w.transpose(1, 2) @ w                                          # (K, d, d)
    pm = prec @ mean[..., None]                                           # (K, d, 1)
    coef = torch.cat([prec.reshape(k, d * d), pm[..., 0].mul(-2.0)], 1).T  # (d^2 + d, K)
    bias = (mean[:, None, :] @ pm).reshape(k)
    n = X.shape[0]
    out = torch.empty((n, k), dtype=X.dtype, device=X.device)
    for start in range(0, n, chunk_rows):
        xt = X[start:start + chunk_rows].T.contiguous()
        feats = torch.cat([_outer_rows_feature_major(xt, xt), xt], 0)    # (d^2 + d, rows)
        torch.addmm(bias, feats.T, coef, out=out[start:start + chunk_rows])
    # the expanded form can round a zero distance to a tiny negative number
    return out.clamp_min_(0.0)


def _outer_rows_feature_major(at: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """a_i b_i^T for every row i, laid out feature-major as (d^2, N) from the
    feature-major (d, N) ``at``, ``bt``: the products broadcast over long contiguous
    rows.  The row-major (N, d, d) broadcast product, with its short inner axes, runs
    about 10x slower in torch at d = 2."""
    d = at.shape[0]
    return (at[:, None, :] * bt[None]).reshape(d * d, -1)


def _grouped_gemm_outer(X, labels, k, wx) -> torch.Tensor:
    """sum_{i in c} w_i x_i x_i^T as one GEMM per group, (W X_c)^T X_c, on the rows
    sorted by group, block by block of ``_GROUP_GEMM_BLOCK`` rows (the gathered
    block stays in cache)."""
    out = torch.zeros((k, X.shape[1], X.shape[1]), dtype=X.dtype, device=X.device)
    for begin in range(0, X.shape[0], _GROUP_GEMM_BLOCK):
        block = slice(begin, begin + _GROUP_GEMM_BLOCK)
        order = torch.argsort(labels[block], stable=True)
        counts = torch.bincount(labels[block], minlength=k).tolist()
        xs, ws = X[block][order], wx[block][order]
        start = 0
        for c, n in enumerate(counts):
            if n:
                out[c].addmm_(ws[start:start + n].T, xs[start:start + n])
            start += n
    return out


def scatter_outer(X: torch.Tensor, labels: torch.Tensor, k: int,
                  weighted: torch.Tensor | None = None) -> torch.Tensor:
    """sum_{i: z_i = c} w_i x_i x_i^T for every group c, (K, d, d).

    ``weighted`` holds the rows w_i x_i (default: X itself, w = 1).  For d >= 48 with
    at least 64 rows per group on average, one GEMM per group on the rows sorted by
    group; otherwise the outer products go in row chunks of 2 MiB: never an
    N x d x d tensor, and the chunk stays in cache (11x faster than 32 MiB chunks
    at N=1e6, d=16).
    """
    d = X.shape[1]
    wx = X if weighted is None else weighted
    if d <= _FEATURE_MAJOR_MAX_D:
        # summed along the last axis of the feature-major products: 2.5x faster for
        # the whole call at N=10,000, d=2 than the row chunks below
        prod = _outer_rows_feature_major(wx.T.contiguous(), X.T.contiguous())
        out = torch.zeros((d * d, k), dtype=X.dtype, device=X.device)
        return out.index_add_(1, labels, prod).T.reshape(k, d, d)
    if d >= _GROUP_GEMM_MIN_D and X.shape[0] >= _GROUP_GEMM_MIN_ROWS * k:
        return _grouped_gemm_outer(X, labels, k, wx)
    out = torch.zeros((k, d * d), dtype=X.dtype, device=X.device)
    step = max(1, (1 << 18) // (d * d))
    for start in range(0, X.shape[0], step):
        xs, ws = X[start:start + step], wx[start:start + step]
        out.index_add_(0, labels[start:start + step],
                       (ws[:, :, None] * xs[:, None, :]).reshape(-1, d * d))
    return out.reshape(k, d, d)


def weighted_outer(X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_i w_ik x_i x_i^T for every column k of the weights w (N, K), (K, d, d).

    With K >= 16, the rows' outer products vec(x_i x_i^T) in chunks of 2 MiB, each
    chunk one GEMM with its weights: 2-6x faster than K batched (d, N) x (N, d)
    products at d = 16-128, K = 20-40 (16,384 rows); with fewer columns those
    products, which win at K = 5 and at d = 128, K = 10."""
    n, d = X.shape
    k = w.shape[1]
    if k < 16:
        return (w.T[:, :, None] * X[None]).transpose(1, 2) @ X
    out = torch.zeros((k, d * d), dtype=X.dtype, device=X.device)
    step = max(1, (1 << 18) // (d * d))
    for start in range(0, n, step):
        xs = X[start:start + step]
        out.addmm_(w[start:start + step].T, (xs[:, :, None] * xs[:, None, :]).reshape(-1, d * d))
    return out.reshape(k, d, d)


def multigammaln(a: torch.Tensor, d: int) -> torch.Tensor:
    """Log multivariate gamma function log Gamma_d(a) (elementwise in ``a``)."""
    return torch.special.multigammaln(a, d) if a.dim() == 0 else _multigammaln_batched(a, d)


def _multigammaln_batched(a: torch.Tensor, d: int) -> torch.Tensor:
    j = torch.arange(d, dtype=a.dtype, device=a.device)
    return d * (d - 1) / 4.0 * _LOG_PI + torch.lgamma(a[..., None] - j / 2.0).sum(-1)


def multidigamma(a: torch.Tensor, d: int) -> torch.Tensor:
    """sum_{j=0}^{d-1} digamma(a - j/2), the derivative of log Gamma_d."""
    j = torch.arange(d, dtype=a.dtype, device=a.device)
    return torch.digamma(a[..., None] - j / 2.0).sum(-1)


def log_2pi() -> float:
    return _LOG_2PI


def log_pi() -> float:
    return _LOG_PI
