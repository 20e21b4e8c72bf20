"""Compiled (numba) kernels of the sub-cluster sampler for full-covariance Gaussian
components with a Normal-inverse-Wishart prior.

The torch implementation of :class:`~bnpdeep.inference.subcluster.SubclusterSampler`
is generic over families and runs about a thousand small tensor operations per
iteration; on a few thousand points their dispatch costs, not the arithmetic,
set its speed.  These kernels do the same arithmetic in compiled loops, one call
per piece, for the backend in :mod:`.subcluster_compiled`:

* statistics per group: n, sum x, sum x x^T (float64);
* the NIW posterior (Murphy 2007, eq. 250-254), its log marginal likelihood
  (eq. 266) and posterior draws by Bartlett's decomposition: with
  Psi_n = C C^T and A lower triangular, A_ii = sqrt(chi2(nu_n - i)), A_ij ~ N(0, 1),
  Sigma = C A^{-T} A^{-1} C^T ~ IW(nu_n, Psi_n) and mu = mu_n + C A^{-T} eps /
  sqrt(kappa_n).  A component is kept as (W, b, c) with W = A^T C^{-1}, so that
  Sigma^{-1} = W^T W and log N(x | mu, Sigma) = c - |W x - b|^2 / 2, b = W mu;
* categorical draws by inverse CDF, the label and slice steps over an N x K table,
  the anchor-local partner draw, and the sub-partitions of :mod:`.subpartition`
  (2-means, carving around an anchor, whitened 2-means) group by group.

* the anchored split/merge batch fused into one call: proposals, Hastings ratios,
  sequential acceptance and the relabelling.

Every kernel is deterministic given its inputs.  The random numbers come either
from the caller or, for the fused ones (``draw_*``, :func:`pair_proposals`,
:func:`split_merge_batch`), from the chain's numpy Generator passed in, drawn in
the order of the numpy calls they replace (numba's Generator reproduces numpy's
streams); a fit is reproducible and resumable either way.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

LOG_2PI = math.log(2.0 * math.pi)
LOG_PI = math.log(math.pi)


# -- statistics and the NIW posterior ------------------------------------------------
@njit(cache=True)
def group_stats(X, lab, n_groups):
    """n (G,), sum x (G, d), sum x x^T (G, d, d) of the rows of X by label.  From
    :data:`GEMM_MIN_D` on, each group's rows are gathered and their scatter is one
    matrix product (BLAS)."""
    n_rows, d = X.shape
    if d >= GEMM_MIN_D:
        return _group_stats_gemm(X, lab, n_groups)
    n = np.zeros(n_groups)
    s1 = np.zeros((n_groups, d))
    s2 = np.zeros((n_groups, d, d))
    for i in range(n_rows):
        g = lab[i]
        n[g] += 1.0
        for a in range(d):
            xa = X[i, a]
            s1[g, a] += xa
            for b in range(a + 1):
                s2[g, a, b] += xa * X[i, b]
    for g in range(n_groups):
        for a in range(d):
            for b in range(a):
                s2[g, b, a] = s2[g, a, b]
    return n, s1, s2


@njit(cache=True)
def _group_stats_gemm(X, lab, n_groups):
    d = X.shape[1]
    order, start = group_index(lab, n_groups)
    n = np.zeros(n_groups)
    s1 = np.zeros((n_groups, d))
    s2 = np.zeros((n_groups, d, d))
    for g in range(n_groups):
        if start[g + 1] == start[g]:
            continue
        rows = X[order[start[g]:start[g + 1]]]
        n[g] = rows.shape[0]
        s1[g] = rows.sum(0)
        s2[g] = rows.T @ rows
    return n, s1, s2


@njit(cache=True)
def pair_sums(n, s1, s2):
    """Statistics of groups 2g and 2g + 1 added: a cluster's from its two
    sub-clusters'."""
    k = n.shape[0] // 2
    nk = np.empty(k)
    s1k = np.empty((k, s1.shape[1]))
    s2k = np.empty((k, s1.shape[1], s1.shape[1]))
    for g in range(k):
        nk[g] = n[2 * g] + n[2 * g + 1]
        s1k[g] = s1[2 * g] + s1[2 * g + 1]
        s2k[g] = s2[2 * g] + s2[2 * g + 1]
    return nk, s1k, s2k


@njit(cache=True)
def relabel(z):
    """Labels renumbered 0..K'-1 in order, the empty ones dropped; and the old ids
    of the kept labels."""
    present = np.zeros(z.max() + 1, dtype=np.bool_)
    for i in range(z.shape[0]):
        present[z[i]] = True
    kept = np.flatnonzero(present)
    new_id = np.empty(present.shape[0], dtype=np.int64)
    for j in range(kept.shape[0]):
        new_id[kept[j]] = j
    out = np.empty_like(z)
    for i in range(z.shape[0]):
        out[i] = new_id[z[i]]
    return out, kept


@njit(cache=True)
def _cholesky_into(A, L):
    """Lower Cholesky factor of A into L; False when A is not positive definite."""
    d = A.shape[0]
    for j in range(d):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not s > 0.0:
            return False
        ljj = math.sqrt(s)
        L[j, j] = ljj
        for i in range(j + 1, d):
            t = A[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / ljj
        for i in range(j):
            L[i, j] = 0.0
    return True


@njit(cache=True)
def cholesky_jitter(A, L):
    """Cholesky with the jitter rule of :func:`bnpdeep.linalg.cholesky`: on failure add
    1e-10, 1e-9, ... (six tries) times the mean |diagonal| to the diagonal."""
    if _cholesky_into(A, L):
        return
    d = A.shape[0]
    scale = 0.0
    for a in range(d):
        scale += abs(A[a, a])
    scale = max(scale / d, 1e-300)
    eps = 1e-10
    B = A.copy()
    for _ in range(6):
        for a in range(d):
            B[a, a] = A[a, a] + eps * scale
        if _cholesky_into(B, L):
            return
        eps *= 10.0
    raise ValueError("matrix is not positive definite even after adding jitter")


@njit(cache=True)
def niw_posterior(n, s1, s2, mu0, kappa0, nu0, psi0):
    """kappa_n (G,), mu_n (G, d), nu_n (G,) and the lower Cholesky factor of
    Psi_n = Psi + S + kappa mu0 mu0^T - kappa_n mu_n mu_n^T (G, d, d)."""
    n_groups, d = s1.shape
    kap = kappa0 + n
    nu = nu0 + n
    mu = np.empty((n_groups, d))
    chol = np.zeros((n_groups, d, d))
    psi = np.empty((d, d))
    for g in range(n_groups):
        _posterior_into(n, s1, s2, g, mu0, kappa0, psi0, mu, chol, psi)
    return kap, mu, nu, chol


@njit(cache=True)
def _posterior_into(n, s1, s2, g, mu0, kappa0, psi0, mu, chol, psi):
    """mu_n and the Cholesky factor of Psi_n of group g (:func:`niw_posterior`) into
    ``mu[g]`` and ``chol[g]``; ``psi`` is (d, d) scratch."""
    d = s1.shape[1]
    kap = kappa0 + n[g]
    for a in range(d):
        mu[g, a] = (kappa0 * mu0[a] + s1[g, a]) / kap
    for a in range(d):
        for b in range(a + 1):
            v = (psi0[a, b] + s2[g, a, b] + kappa0 * mu0[a] * mu0[b]
                 - kap * mu[g, a] * mu[g, b])
            psi[a, b] = v
            psi[b, a] = v
    cholesky_jitter(psi, chol[g])


@njit(cache=True)
def multigammaln(a, d):
    out = 0.25 * d * (d - 1) * LOG_PI
    for j in range(d):
        out += math.lgamma(a - 0.5 * j)
    return out


@njit(cache=True)
def log_marginal(n, kap, nu, chol, prior_const):
    """log p(X_g) = -n d/2 log pi + log G_d(nu_n/2) - nu_n/2 log|Psi_n|
    - d/2 log kappa_n + [log G_d(nu/2)^-1 + nu/2 log|Psi| + d/2 log kappa]
    (Murphy 2007, eq. 266); ``prior_const`` is the bracket."""
    n_groups, d = chol.shape[0], chol.shape[1]
    out = np.empty(n_groups)
    for g in range(n_groups):
        logdet = 0.0
        for a in range(d):
            logdet += 2.0 * math.log(chol[g, a, a])
        out[g] = (-0.5 * d * LOG_PI * n[g] + multigammaln(0.5 * nu[g], d)
                  - 0.5 * nu[g] * logdet - 0.5 * d * math.log(kap[g]) + prior_const)
    return out


@njit(cache=True)
def sample_components(kap, mu_n, nu, chol, normals, gammas, eps):
    """Posterior draws (Sigma, mu) ~ NIW(mu_n, kappa_n, nu_n, C C^T) by Bartlett's
    decomposition, returned as (W, b, c) with W lower triangular, W^T W = Sigma^-1,
    b = W mu and c = -d/2 log 2 pi + log|W| (= -log|Sigma|^{1/2} - d/2 log 2pi); also mu.

    Sigma^-1 ~ Wishart(nu_n, C^-T C^-1) is drawn as C^-T B B^T C^-1 with B the
    Bartlett factor in reversed index order (upper triangular: B_ii^2 ~
    chi^2(nu_n - (d - 1 - i)), N(0, 1) above the diagonal; the reversal P A P of the
    usual lower factor A, and P W(nu, I) P = W(nu, I)), so that W = B^T C^-1 is a
    product of two lower-triangular matrices.  ``normals`` (G, d, d) fill A below
    the diagonal, ``gammas`` (G, d) are Gamma((nu_n - i)/2, 1) draws (A_ii =
    sqrt(2 gamma_i)), ``eps`` (G, d) N(0, I); mu = mu_n + W^-1 eps / sqrt(kappa_n)."""
    n_groups, d = mu_n.shape
    W = np.zeros((n_groups, d, d))
    b = np.empty((n_groups, d))
    c = np.empty(n_groups)
    mean = np.empty((n_groups, d))
    B = np.zeros((d, d))
    cinv = np.empty((d, d))
    v = np.empty(d)
    for g in range(n_groups):
        C = chol[g]
        logdet = 0.0
        for i in range(d):
            B[i, i] = math.sqrt(2.0 * max(gammas[g, d - 1 - i], 1e-300))
            for j in range(i + 1, d):
                B[i, j] = normals[g, d - 1 - i, d - 1 - j]
            logdet += math.log(B[i, i]) - math.log(C[i, i])
        # C^{-1} by forward substitution (lower triangular)
        for j in range(d):
            for i in range(d):
                if i < j:
                    cinv[i, j] = 0.0
                    continue
                t = 1.0 if i == j else 0.0
                for k in range(j, i):
                    t -= C[i, k] * cinv[k, j]
                cinv[i, j] = t / C[i, i]
        # W = B^T C^{-1}, lower triangular
        for i in range(d):
            for j in range(i + 1):
                t = 0.0
                for k in range(j, i + 1):
                    t += B[k, i] * cinv[k, j]
                W[g, i, j] = t
        # mu = mu_n + C B^{-T} eps / sqrt(kappa_n): B^T v = eps (lower), then C v
        for i in range(d):
            t = eps[g, i]
            for k in range(i):
                t -= B[k, i] * v[k]
            v[i] = t / B[i, i]
        scale = 1.0 / math.sqrt(kap[g])
        for i in range(d):
            t = 0.0
            for k in range(i + 1):
                t += C[i, k] * v[k]
            mean[g, i] = mu_n[g, i] + t * scale
        for i in range(d):
            t = 0.0
            for j in range(i + 1):
                t += W[g, i, j] * mean[g, j]
            b[g, i] = t
        c[g] = -0.5 * d * LOG_2PI + logdet
    return W, b, c, mean


@njit(cache=True)
def sample_niw(n, s1, s2, mu0, kappa0, nu0, psi0, normals, gammas, eps):
    """:func:`niw_posterior` then :func:`sample_components`, in one call."""
    kap, mu, nu, chol = niw_posterior(n, s1, s2, mu0, kappa0, nu0, psi0)
    return sample_components(kap, mu, nu, chol, normals, gammas, eps)


@njit(cache=True)
def map_components(kap, mu_n, nu, chol):
    """(W, b, c) of the NIW mode: mu = mu_n, Sigma = Psi_n / (nu_n + d + 2), with
    W = sqrt(nu_n + d + 2) C^{-1}."""
    n_groups, d = mu_n.shape
    W = np.zeros((n_groups, d, d))
    b = np.empty((n_groups, d))
    c = np.empty(n_groups)
    for g in range(n_groups):
        C = chol[g]
        r = math.sqrt(nu[g] + d + 2.0)
        logdet = 0.0
        for i in range(d):
            logdet += math.log(C[i, i] / r)
        for j in range(d):
            for i in range(j, d):
                t = 1.0 if i == j else 0.0
                for k in range(j, i):
                    t -= C[i, k] * W[g, k, j] / r
                W[g, i, j] = t / C[i, i] * r
        for i in range(d):
            t = 0.0
            for j in range(i + 1):
                t += W[g, i, j] * mu_n[g, j]
            b[g, i] = t
        c[g] = -0.5 * d * LOG_2PI - logdet
    return W, b, c


# -- log-likelihoods and categorical draws --------------------------------------------
@njit(cache=True, inline="always")
def _quad(X, i, W, b, k):
    """|W_k x_i - b_k|^2, W_k lower triangular."""
    d = X.shape[1]
    q = 0.0
    for a in range(d):
        t = -b[k, a]
        for j in range(a + 1):
            t += W[k, a, j] * X[i, j]
        q += t * t
    return q


@njit(cache=True)
def label_cdf(X, W, b, c):
    """Unnormalised cumulative probabilities of the categorical of every row,
    p(z_i = k) proportional to exp(c_k - |W_k x_i - b_k|^2 / 2), (N, K): the label
    step's N x K table (:func:`slice_cdf` with every atom above every slice)."""
    return slice_cdf(X, W, b, c, np.zeros(c.shape[0]), np.full(X.shape[0], -np.inf))


@njit(cache=True)
def pair_loglik(X, grp, W, b, c):
    """log N(x_i | component 2 g_i + h) for h = 0, 1: each row against the two
    sub-components of its own group, (N, 2).  From :data:`GEMM_MIN_D` the quadratic
    forms are matrix products, group by group (:func:`pair_quad`)."""
    n_rows = X.shape[0]
    out = np.empty((n_rows, 2))
    if X.shape[1] >= GEMM_MIN_D:
        q = pair_quad(X, grp, W, b)
        for i in range(n_rows):
            for h in range(2):
                out[i, h] = c[2 * grp[i] + h] - 0.5 * q[i, h]
        return out
    for i in range(n_rows):
        for h in range(2):
            k = 2 * grp[i] + h
            out[i, h] = c[k] - 0.5 * _quad(X, i, W, b, k)
    return out


@njit(cache=True)
def pair_quad(X, grp, W, b):
    """|W_{2 g_i + h} x_i - b_{2 g_i + h}|^2 for h = 0, 1, (N, 2): each group's rows
    gathered and passed to :func:`quad_table` with the group's two components."""
    n_rows = X.shape[0]
    out = np.empty((n_rows, 2))
    order, start = group_index(grp, W.shape[0] // 2)
    for g in range(W.shape[0] // 2):
        idx = order[start[g]:start[g + 1]]
        if idx.shape[0] == 0:
            continue
        q = quad_table(X[idx], W[2 * g:2 * g + 2], b[2 * g:2 * g + 2])
        for r in range(idx.shape[0]):
            out[idx[r], 0] = q[r, 0]
            out[idx[r], 1] = q[r, 1]
    return out


@njit(cache=True)
def two_loglik(X, W, b, c):
    """log N(x_i | component h) + c_h for h = 0, 1 of every row, (N, 2): the loops of
    :func:`_quad` below :data:`GEMM_MIN_D`, :func:`quad_table` from it."""
    n_rows = X.shape[0]
    out = np.empty((n_rows, 2))
    if X.shape[1] >= GEMM_MIN_D:
        q = quad_table(X, W[:2], b[:2])
        for r in range(n_rows):
            for h in range(2):
                out[r, h] = c[h] - 0.5 * q[r, h]
        return out
    for r in range(n_rows):
        for h in range(2):
            out[r, h] = c[h] - 0.5 * _quad(X, r, W, b, h)
    return out


@njit(cache=True)
def draw_from_cdf(cdf, u):
    """One draw per row from the unnormalised CDF of :func:`label_cdf`: the first
    column whose cumulative mass exceeds u_i times the row total (binary search);
    a column that adds no mass is never drawn."""
    out = np.empty(cdf.shape[0], dtype=np.int64)
    for i in range(cdf.shape[0]):
        out[i] = _draw_row(cdf, i, u[i])
    return out


@njit(cache=True, inline="always")
def _draw_row(cdf, i, u):
    k = cdf.shape[1]
    t = u * cdf[i, k - 1]
    lo, hi = 0, k - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf[i, mid] > t:
            hi = mid
        else:
            lo = mid + 1
    if not cdf[i, lo] > t:      # u * total rounded up to the total: the last column
        while lo > 0 and cdf[i, lo - 1] == cdf[i, lo]:      # that has mass
            lo -= 1
    return lo


ROW_CHUNK = 256      # rows per task of the parallel tables
# Serial work (multiply-adds, about a millisecond) below which a table is computed on
# the calling thread: entering a parallel region costs microseconds on idle cores but
# up to a scheduler time slice per call when the cores are busy (other chains, other
# processes), which made small fits ten times slower.
PARALLEL_MIN_WORK = 1_000_000
# From this dimension the tables' quadratic forms are matrix products (BLAS): the
# loops below cost N K d^2 scalar multiply-adds, a GEMM does the same at several
# times the rate once d is past a few dozen.
GEMM_MIN_D = 24
GEMM_CHUNK = 1 << 19  # elements of one (rows, K d) product block: 4 MiB of float64
TRI_BLOCK = 32       # coordinates of W x per product of the triangular quadratic forms


@njit(cache=True, inline="always")
def _cdf_row(out, i, q, c, log_w, log_u):
    """Row i of the slice table from its quadratic forms ``q``: the running sums of
    exp(c_j - q_j / 2) over the atoms above the slice, relative to the row's largest
    term, terms below e^-50 of it left out."""
    k = c.shape[0]
    m = -np.inf
    for g in range(k):
        v = c[g] - 0.5 * q[g] if log_w[g] > log_u[i] else -np.inf
        out[i, g] = v
        if v > m:
            m = v
    acc = 0.0
    for g in range(k):
        e = out[i, g] - m
        if e > -50.0:
            acc += math.exp(e)
        out[i, g] = acc


@njit(cache=True)
def quad_table(X, W, b):
    """|W_k x_i - b_k|^2 for every row and component, (N, K), W_k lower triangular, by
    matrix products (BLAS) that skip W's zero upper triangle: the coordinates a of
    W_k x go in blocks [lo, hi) of :data:`TRI_BLOCK`, and a block needs only x's first
    hi columns, one (rows, hi) x (hi, K (hi - lo)) product for all K components; about
    (d + TRI_BLOCK) / 2d of a full product's multiply-adds.  Each block's part of
    W_k x is shifted by b_k and its squares summed.  Rows go in blocks of at most
    :data:`GEMM_CHUNK` / (K d), so no (N, K d) array is formed."""
    n_rows, d = X.shape
    k = W.shape[0]
    n_blocks = (d + TRI_BLOCK - 1) // TRI_BLOCK
    # block c: [j, g (hi - lo) + a - lo] = W[g, a, j] for lo <= a < hi, j <= a
    parts = []
    for blk in range(n_blocks):
        lo, hi = blk * TRI_BLOCK, min(d, (blk + 1) * TRI_BLOCK)
        part = np.zeros((hi, k * (hi - lo)))
        for g in range(k):
            for a in range(lo, hi):
                for j in range(a + 1):
                    part[j, g * (hi - lo) + a - lo] = W[g, a, j]
        parts.append(part)
    out = np.zeros((n_rows, k))
    step = max(1, GEMM_CHUNK // (k * d))
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        for blk in range(n_blocks):
            lo, hi = blk * TRI_BLOCK, min(d, (blk + 1) * TRI_BLOCK)
            p = np.ascontiguousarray(X[start:stop, :hi]) @ parts[blk]
            w = hi - lo
            for r in range(stop - start):
                for g in range(k):
                    q = 0.0
                    for a in range(w):
                        v = p[r, g * w + a] - b[g, lo + a]
                        q += v * v
                    out[start + r, g] += q
    return out


@njit(cache=True)
def _cdf_rows_from_quad(out, q, c, log_w, log_u, start, stop):
    for i in range(start, stop):
        _cdf_row(out, i, q[i], c, log_w, log_u)


@njit(cache=True, parallel=True)
def _cdf_from_quad_threads(out, q, c, log_w, log_u):
    n_rows = q.shape[0]
    for chunk in prange((n_rows + ROW_CHUNK - 1) // ROW_CHUNK):
        _cdf_rows_from_quad(out, q, c, log_w, log_u, chunk * ROW_CHUNK,
                            min(n_rows, (chunk + 1) * ROW_CHUNK))


@njit(cache=True)
def _slice_rows(out, X, Wt, bt, c, log_w, log_u, start, stop):
    """Rows [start, stop) of :func:`slice_cdf`'s table by loops (W, b transposed)."""
    d = X.shape[1]
    k = c.shape[0]
    q, t = np.empty(k), np.empty(k)
    for i in range(start, stop):
        q[:] = 0.0
        for a in range(d):
            t[:] = -bt[a]
            for j in range(a + 1):
                xj = X[i, j]
                for g in range(k):
                    t[g] += Wt[a, j, g] * xj
            for g in range(k):
                q[g] += t[g] * t[g]
        _cdf_row(out, i, q, c, log_w, log_u)


@njit(cache=True, parallel=True)
def _slice_rows_threads(out, X, Wt, bt, c, log_w, log_u):
    n_rows = X.shape[0]
    for chunk in prange((n_rows + ROW_CHUNK - 1) // ROW_CHUNK):
        _slice_rows(out, X, Wt, bt, c, log_w, log_u, chunk * ROW_CHUNK,
                    min(n_rows, (chunk + 1) * ROW_CHUNK))


@njit(cache=True)
def slice_cdf(X, W, b, c, log_w, log_u):
    """The slice step's table: unnormalised cumulative probabilities of
    p(z_i = j) proportional to 1[log pi_j > log u_i] f(x_i | theta_j) over all atoms j
    (occupied and new, ``log_w`` their log weights; log f = c_j - |W_j x - b_j|^2 / 2
    with W_j lower triangular, as the component draws give), (N, J), in one pass over
    the rows; atoms at or below the slice add nothing, so :func:`draw_from_cdf` never
    picks them.  Terms below e^-50 of the row's largest are left out of the sums:
    each would change the row's probabilities by less than 1e-21, below float64
    resolution of a sum that holds the largest term, 1.

    Below :data:`GEMM_MIN_D` the quadratic forms |W_j x_i - b_j|^2 are summed in
    :func:`_quad`'s order, with the atoms innermost (W and b transposed so that the
    loop over j is contiguous and vectorises); from it they come from
    :func:`quad_table`'s matrix products.  Rows go to numba's threads in chunks of
    :data:`ROW_CHUNK` only when the table's work reaches :data:`PARALLEL_MIN_WORK`
    multiply-adds; below it the rows run on the calling thread (the same numbers)."""
    n_rows, d = X.shape
    k = c.shape[0]
    out = np.empty((n_rows, k))
    threads = n_rows * k * (d * (d + 1) // 2 + 8) >= PARALLEL_MIN_WORK
    if d >= GEMM_MIN_D:
        q = quad_table(X, W, b)
        if threads:
            _cdf_from_quad_threads(out, q, c, log_w, log_u)
        else:
            _cdf_rows_from_quad(out, q, c, log_w, log_u, 0, n_rows)
        return out
    Wt = np.ascontiguousarray(W.transpose(1, 2, 0))          # (d, d, K)
    bt = np.ascontiguousarray(b.T)                           # (d, K)
    if threads:
        _slice_rows_threads(out, X, Wt, bt, c, log_w, log_u)
    else:
        _slice_rows(out, X, Wt, bt, c, log_w, log_u, 0, n_rows)
    return out


@njit(cache=True)
def local_partners(X, anchors, inv_bw2, u):
    """For each anchor i, a partner j != i drawn with probability proportional to
    exp(-|x_j - x_i|^2 / (2 bw^2)), by inverse CDF after shifting by the largest term
    (terms below e^-50 of it left out, as in :func:`label_cdf`)."""
    n_rows, d = X.shape
    m = anchors.shape[0]
    out = np.empty(m, dtype=np.int64)
    w = np.empty(n_rows)
    for p in range(m):
        i = anchors[p]
        best = -np.inf
        for j in range(n_rows):
            s = 0.0
            for a in range(d):
                t = X[j, a] - X[i, a]
                s += t * t
            w[j] = -0.5 * inv_bw2 * s
            if j != i and w[j] > best:
                best = w[j]
        w[i] = -np.inf
        acc = 0.0
        for j in range(n_rows):
            t = w[j] - best
            if t > -50.0:
                acc += math.exp(t)
            w[j] = acc
        t = u[p] * acc
        pick = -1
        for j in range(n_rows):
            if w[j] > t:
                pick = j
                break
        if pick < 0:                 # u * acc rounded up to acc: the last atom with mass
            for j in range(n_rows - 1, -1, -1):
                if j != i and (j == 0 or w[j] > w[j - 1]):
                    pick = j
                    break
        out[p] = pick
    return out


# -- sub-partitions, group by group ---------------------------------------------------
@njit(cache=True)
def group_index(grp, n_groups):
    """Rows of each group in data order: (order, start), group g's rows being
    order[start[g]:start[g + 1]]."""
    count = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(grp.shape[0]):
        count[grp[i] + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    order = np.empty(grp.shape[0], dtype=np.int64)
    for i in range(grp.shape[0]):
        g = grp[i]
        order[fill[g]] = i
        fill[g] += 1
    return order, start


@njit(cache=True)
def _moments(X, idx):
    """Mean and biased covariance of the rows idx of X (from :data:`GEMM_MIN_D` the
    scatter of the centred rows is one matrix product)."""
    d = X.shape[1]
    m = idx.shape[0]
    if d >= GEMM_MIN_D and m > 0:
        rows = X[idx]
        mean = rows.sum(0) / m
        rows -= mean
        return mean, (rows.T @ rows) / m
    mean = np.zeros(d)
    for r in range(m):
        for a in range(d):
            mean[a] += X[idx[r], a]
    for a in range(d):
        mean[a] /= max(m, 1)
    cov = np.zeros((d, d))
    for r in range(m):
        for a in range(d):
            ta = X[idx[r], a] - mean[a]
            for bb in range(a + 1):
                cov[a, bb] += ta * (X[idx[r], bb] - mean[bb])
    for a in range(d):
        for bb in range(a + 1):
            cov[a, bb] /= max(m, 1)
            cov[bb, a] = cov[a, bb]
    return mean, cov


@njit(cache=True)
def _two_means_one(X, idx, axis, use_axis, n_iter, h_out):
    """2-means of the rows idx of X (labels into h_out at those rows), started at
    mean -/+ v: v the principal axis scaled by the root of its eigenvalue, or the
    unit ``axis`` scaled by the standard deviation of the projections on it; then up
    to ``n_iter`` Lloyd iterations (:func:`.subpartition.two_means_groups`)."""
    d = X.shape[1]
    m = idx.shape[0]
    if m == 0:
        return
    mean, cov = _moments(X, idx)
    v = np.empty(d)
    if use_axis:
        norm = 0.0
        for a in range(d):
            norm += axis[a] * axis[a]
        norm = max(math.sqrt(norm), 1e-300)
        spread = 0.0
        for a in range(d):
            for bb in range(d):
                spread += axis[a] * cov[a, bb] * axis[bb]
        spread = math.sqrt(max(spread, 0.0)) / (norm * norm)
        for a in range(d):
            v[a] = axis[a] * spread
    else:
        evals, evecs = np.linalg.eigh(cov)
        s = math.sqrt(max(evals[d - 1], 0.0))
        for a in range(d):
            v[a] = evecs[a, d - 1] * s
    c0 = mean - v
    c1 = mean + v
    total = mean * m
    for it in range(n_iter):
        thr = 0.0
        for a in range(d):
            thr += c1[a] * c1[a] - c0[a] * c0[a]
        thr *= 0.5
        changed = False
        n1 = 0
        s1 = np.zeros(d)
        for r in range(m):
            i = idx[r]
            p = 0.0
            for a in range(d):
                p += X[i, a] * (c1[a] - c0[a])
            new = 1 if p > thr else 0
            if it == 0 or new != h_out[i]:
                changed = True
            h_out[i] = new
            if new:
                n1 += 1
                for a in range(d):
                    s1[a] += X[i, a]
        if it > 0 and not changed:
            break
        if 0 < n1 < m:
            for a in range(d):
                c0[a] = (total[a] - s1[a]) / (m - n1)
                c1[a] = s1[a] / n1


@njit(cache=True)
def two_means_groups(X, grp, n_groups, axes, use_axes):
    """:func:`.subpartition.two_means_groups` (5 Lloyd iterations), group by group."""
    order, start = group_index(grp, n_groups)
    h = np.zeros(X.shape[0], dtype=np.int64)
    for g in range(n_groups):
        _two_means_one(X, order[start[g]:start[g + 1]], axes[g], use_axes, 5, h)
    return h


@njit(cache=True)
def _map_loglik_two(X, idx, h, mu0, kappa0, nu0, psi0, out):
    """log N(x | MAP of side s) + log n_s for s = 0, 1 at the rows idx; returns False
    when a side is empty."""
    d = X.shape[1]
    lab = np.empty(idx.shape[0], dtype=np.int64)
    sub = np.empty((idx.shape[0], d))
    for r in range(idx.shape[0]):
        lab[r] = h[idx[r]]
        for a in range(d):
            sub[r, a] = X[idx[r], a]
    n, s1, s2 = group_stats(sub, lab, 2)
    if n[0] < 1.0 or n[1] < 1.0:
        return False
    kap, mu, nu, chol = niw_posterior(n, s1, s2, mu0, kappa0, nu0, psi0)
    W, b, c = map_components(kap, mu, nu, chol)
    ll = two_loglik(sub, W, b, c)
    for r in range(idx.shape[0]):
        for s in range(2):
            out[r, s] = ll[r, s] + math.log(n[s])
    return True


@njit(cache=True)
def carve_groups(X, grp, n_groups, anchors, mu0, kappa0, nu0, psi0, n_iter):
    """:func:`.subpartition.carve_groups`, group by group: the m = max(d + 2, n/20) rows
    nearest the anchor (label 0), then up to ``n_iter`` hard reassignments under the
    two MAP components weighted by size, stopping when nothing changes or a side
    would empty; groups of fewer than 2 m rows get principal-axis 2-means."""
    n_rows, d = X.shape
    order, start = group_index(grp, n_groups)
    h = np.zeros(n_rows, dtype=np.int64)
    dummy = np.zeros(d)
    for g in range(n_groups):
        idx = order[start[g]:start[g + 1]]
        cnt = idx.shape[0]
        m = max(d + 2, cnt // 20)
        if cnt < 2 * m:
            _two_means_one(X, idx, dummy, False, 5, h)
            continue
        a = anchors[g]
        dist = np.empty(cnt)
        for r in range(cnt):
            s = 0.0
            for k in range(d):
                t = X[idx[r], k] - X[a, k]
                s += t * t
            dist[r] = s
        rank_order = np.argsort(dist, kind="mergesort")
        for q in range(cnt):
            h[idx[rank_order[q]]] = 0 if q < m else 1
        ll = np.empty((cnt, 2))
        for _ in range(n_iter):
            if not _map_loglik_two(X, idx, h, mu0, kappa0, nu0, psi0, ll):
                break
            n1 = 0
            changed = False
            for r in range(cnt):
                new = 1 if ll[r, 1] > ll[r, 0] else 0
                n1 += new
                if new != h[idx[r]]:
                    changed = True
            if not changed or n1 == 0 or n1 == cnt:
                break
            for r in range(cnt):
                h[idx[r]] = 1 if ll[r, 1] > ll[r, 0] else 0
    return h


@njit(cache=True)
def whitened_two_means_groups(X, grp, n_groups, axes, keys, max_rows, mu0, kappa0, nu0,
                              psi0):
    """:func:`.subpartition.refined_two_means_groups` with no EM iterations, group by
    group: 2-means along ``axes[g]`` in the group's whitened coordinates
    L^{-1}(x - mean), L L^T its covariance plus a ridge of 1e-6 of its mean variance,
    fitted on the ``max_rows`` rows of smallest key when the group is larger; every
    row then goes to the side of higher (n_s + 1/2) x MAP density."""
    n_rows, d = X.shape
    order, start = group_index(grp, n_groups)
    h = np.zeros(n_rows, dtype=np.int64)
    L = np.zeros((d, d))
    for g in range(n_groups):
        idx = order[start[g]:start[g + 1]]
        cnt = idx.shape[0]
        if cnt == 0:
            continue
        if cnt > max_rows:
            kk = np.empty(cnt)
            for r in range(cnt):
                kk[r] = keys[idx[r]]
            sample = idx[np.sort(np.argsort(kk, kind="mergesort")[:max_rows])]
        else:
            sample = idx
        ms = sample.shape[0]
        mean, cov = _moments(X, sample)
        ridge = 0.0
        for a in range(d):
            ridge += cov[a, a]
        ridge = max(1e-6 * ridge / d, 1e-300)
        for a in range(d):
            cov[a, a] += ridge
        if not _cholesky_into(cov, L):
            raise ValueError("a group's covariance is not positive definite")
        if d >= GEMM_MIN_D:                 # L^-1 (x - mean) as one matrix product
            xw = X[sample] - mean
            xw = xw @ np.ascontiguousarray(np.linalg.inv(L).T)
        else:
            xw = np.empty((ms, d))
            for r in range(ms):
                for a in range(d):
                    t = X[sample[r], a] - mean[a]
                    for k in range(a):
                        t -= L[a, k] * xw[r, k]
                    xw[r, a] = t / L[a, a]
        hs = np.zeros(ms, dtype=np.int64)
        _two_means_one(xw, np.arange(ms), axes[g], True, 5, hs)
        for r in range(ms):
            h[sample[r]] = hs[r]
        if ms == cnt:
            continue
        # every row to the side of higher posterior weight x MAP density of the sample
        sub = np.empty((ms, d))
        for r in range(ms):
            for a in range(d):
                sub[r, a] = X[sample[r], a]
        n, s1, s2 = group_stats(sub, hs, 2)
        kap, mu, nu, chol = niw_posterior(n, s1, s2, mu0, kappa0, nu0, psi0)
        W, b, c = map_components(kap, mu, nu, chol)
        lw0 = math.log(n[0] + 0.5)
        lw1 = math.log(n[1] + 0.5)
        ll = two_loglik(X[idx], W, b, c)
        for r in range(cnt):
            h[idx[r]] = 1 if ll[r, 1] + lw1 > ll[r, 0] + lw0 else 0
    return h


@njit(cache=True)
def log_split_proposal(log_q, side_b, grp, n_groups, li, lj):
    """log Q of each group's split (A = ~side_b, B = side_b), anchors li in A and lj in
    B (:func:`.subcluster.log_split_proposal`)."""
    same = np.zeros(n_groups)
    swapped = np.zeros(n_groups)
    for i in range(grp.shape[0]):
        g = grp[i]
        if side_b[i]:
            same[g] += log_q[i, 1]
            swapped[g] += log_q[i, 0]
        else:
            same[g] += log_q[i, 0]
            swapped[g] += log_q[i, 1]
    out = np.empty(n_groups)
    for g in range(n_groups):
        a0 = log_q[li[g], 0] + log_q[lj[g], 1]
        a1 = log_q[li[g], 1] + log_q[lj[g], 0]
        out[g] = _logaddexp(same[g], swapped[g]) - _logaddexp(a0, a1)
    return out


@njit(cache=True)
def _logaddexp(a, b):
    """log(e^a + e^b), numpy's formula (log1p of the smaller term's ratio)."""
    if a == b:
        return a + math.log(2.0)
    t = a - b
    if t > 0:
        return a + math.log1p(math.exp(-t))
    if t <= 0:
        return b + math.log1p(math.exp(t))
    return np.nan


# -- draws from the chain's generator ----------------------------------------------
# These take the chain's numpy Generator and draw from it in the order of the numpy
# calls they replace (numba's Generator methods reproduce numpy's streams), so that
# several numpy steps cost one call.
@njit(cache=True)
def _log_uniform(rng):
    return math.log(max(rng.random(), 1e-300))


@njit(cache=True)
def draw_niw(rng, n, s1, s2, mu0, kappa0, nu0, psi0):
    """:func:`sample_niw` with its random numbers drawn here: N(0, 1) (G, d, d), then
    Gamma((nu_n - i) / 2, 1) (G, d), then N(0, 1) (G, d), each in C order."""
    n_groups, d = s1.shape
    normals = np.empty((n_groups, d, d))
    for g in range(n_groups):
        for i in range(d):
            for j in range(d):
                normals[g, i, j] = rng.standard_normal()
    gammas = np.empty((n_groups, d))
    for g in range(n_groups):
        for i in range(d):
            gammas[g, i] = rng.standard_gamma(max(0.5 * (nu0 + n[g] - i), 1e-300))
    eps = np.empty((n_groups, d))
    for g in range(n_groups):
        for i in range(d):
            eps[g, i] = rng.standard_normal()
    return sample_niw(n, s1, s2, mu0, kappa0, nu0, psi0, normals, gammas, eps)


@njit(cache=True)
def draw_dirichlet_log(rng, conc):
    """log of one Dirichlet draw per row of ``conc`` (G, J) via Gamma variables
    (floored at 1e-300); a zero concentration gives -inf (its Gamma(1) variable is
    drawn and dropped, as the numpy form does)."""
    n_groups, n_cols = conc.shape
    out = np.empty((n_groups, n_cols))
    for g in range(n_groups):
        for j in range(n_cols):
            v = max(rng.standard_gamma(conc[g, j] if conc[g, j] > 0 else 1.0), 1e-300)
            out[g, j] = v if conc[g, j] > 0 else 0.0
    for g in range(n_groups):
        total = 0.0
        for j in range(n_cols):
            total += out[g, j]
        log_total = math.log(total)
        for j in range(n_cols):
            out[g, j] = (math.log(out[g, j]) if conc[g, j] > 0 else -np.inf) - log_total
    return out


@njit(cache=True)
def anchor_pairs(rng, X, m, inv_bw2):
    """m anchor pairs (i, j), i != j: i uniform over the rows; j uniform or, with
    probability 1/2 (when N > 2), from the Gaussian kernel around x_i
    (:func:`local_partners`)."""
    n_rows = X.shape[0]
    pairs = np.empty((m, 2), dtype=np.int64)
    for p in range(m):
        pairs[p, 0] = min(int(rng.random() * n_rows), n_rows - 1)
    for p in range(m):
        j = min(int(rng.random() * (n_rows - 1)), n_rows - 2)
        pairs[p, 1] = j + 1 if j >= pairs[p, 0] else j
    if n_rows > 2:
        local = np.empty(m, dtype=np.bool_)
        for p in range(m):
            local[p] = rng.random() >= 0.5
        idx = np.flatnonzero(local)
        if idx.shape[0]:
            u = np.empty(idx.shape[0])
            for p in range(idx.shape[0]):
                u[p] = rng.random()
            partners = local_partners(X, pairs[idx, 0].copy(), inv_bw2, u)
            for p in range(idx.shape[0]):
                pairs[idx[p], 1] = partners[p]
    return pairs


@njit(cache=True)
def pair_proposals(rng, X, z, k, pairs, kind_cdf, sub_alpha, keys, max_rows, mu0, kappa0,
                   nu0, psi0):
    """The proposals of one batch of anchored moves on the disjoint anchor pairs (m, 2)
    (:meth:`.subcluster.SubclusterSampler._pair_proposals`).  Group g holds the rows of
    the clusters of pair g's anchors (one cluster for a split, two for a merge).  A
    sub-partition kind is drawn for the batch from ``kind_cdf`` (2-means along a
    random axis, along the principal axis, carving around the anchor, whitened
    2-means), each group is split by it, sub-cluster weights are drawn from
    Dir(n_h + a/2) and parameters from their NIW posterior, and each row's
    log-responsibilities log q_l(h) against its own group's two are returned with a
    split drawn from them, the anchors on opposite sides (the flip of the pair drawn
    from q_i(0) q_j(1) against q_i(1) q_j(0)).

    Returns (rows, their data X[rows], group of each row, anchor positions li, lj in
    rows, log_q (n, 2), new_b: the row is on anchor j's side)."""
    n_pairs = pairs.shape[0]
    d = X.shape[1]
    group_of = np.full(k, -1, dtype=np.int64)
    for m in range(n_pairs):
        group_of[z[pairs[m, 1]]] = m
    for m in range(n_pairs):
        group_of[z[pairs[m, 0]]] = m
    n_rows = 0
    for i in range(z.shape[0]):
        if group_of[z[i]] >= 0:
            n_rows += 1
    rows = np.empty(n_rows, dtype=np.int64)
    grp = np.empty(n_rows, dtype=np.int64)
    position = np.empty(z.shape[0], dtype=np.int64)
    r = 0
    for i in range(z.shape[0]):
        if group_of[z[i]] >= 0:
            rows[r], grp[r], position[i] = i, group_of[z[i]], r
            r += 1
    li = np.empty(n_pairs, dtype=np.int64)
    lj = np.empty(n_pairs, dtype=np.int64)
    for m in range(n_pairs):
        li[m], lj[m] = position[pairs[m, 0]], position[pairs[m, 1]]
    Xr = np.empty((n_rows, d))
    for r in range(n_rows):
        for a in range(d):
            Xr[r, a] = X[rows[r], a]
    # the batch's sub-partition kind and the groups' sub-partitions
    u = rng.random()
    kind = 0
    while kind < kind_cdf.shape[0] and kind_cdf[kind] <= u:
        kind += 1
    kind = min(kind, 3)
    axes = np.empty((n_pairs, d))
    for m in range(n_pairs):
        for a in range(d):
            axes[m, a] = rng.standard_normal()
    if kind <= 1:
        h = two_means_groups(Xr, grp, n_pairs, axes, kind == 1)
    elif kind == 2:
        h = carve_groups(Xr, grp, n_pairs, li, mu0, kappa0, nu0, psi0, 3)
    else:
        if keys.shape[0] != X.shape[0]:
            raise ValueError("the whitened 2-means kind needs one key per row")
        h = whitened_two_means_groups(Xr, grp, n_pairs, axes, keys[rows], max_rows, mu0,
                                      kappa0, nu0, psi0)
    n, s1, s2 = group_stats(Xr, 2 * grp + h, 2 * n_pairs)
    log_w = draw_dirichlet_log(rng, n.reshape(n_pairs, 2) + sub_alpha / 2)
    W, b, c, _ = draw_niw(rng, n, s1, s2, mu0, kappa0, nu0, psi0)
    log_q = pair_loglik(Xr, grp, W, b, c)
    for r in range(n_rows):
        l0 = log_q[r, 0] + log_w[grp[r], 0]
        l1 = log_q[r, 1] + log_w[grp[r], 1]
        norm = _logaddexp(l0, l1)
        log_q[r, 0], log_q[r, 1] = l0 - norm, l1 - norm
    # a split from the responsibilities, the anchors apart
    side = np.empty(n_rows, dtype=np.bool_)
    for r in range(n_rows):
        side[r] = _log_uniform(rng) < log_q[r, 1]
    for m in range(n_pairs):
        t0 = log_q[li[m], 0] + log_q[lj[m], 1]
        t1 = log_q[li[m], 1] + log_q[lj[m], 0]
        side[li[m]] = _log_uniform(rng) < t1 - _logaddexp(t0, t1)
    for m in range(n_pairs):
        side[lj[m]] = not side[li[m]]
    new_b = np.empty(n_rows, dtype=np.bool_)
    for r in range(n_rows):
        new_b[r] = side[r] != side[li[grp[r]]]
    return rows, Xr, grp, li, lj, log_q, new_b


# -- Hastings ratios of a Gibbs-type EPPF: log W(n) = lgamma(n - sigma) - lgamma(1 - sigma),
# V(N, K+1) / V(N, K) = alpha + K sigma (zero from max_clusters blocks on) --------------
@njit(cache=True)
def log_new_block_ratio(alpha, sigma, max_clusters, k):
    v = alpha + k * sigma
    return math.log(v) if v > 0 and k < max_clusters else -np.inf


@njit(cache=True)
def split_terms(n_a, s1_a, s2_a, n_b, s1_b, s2_b, mu0, kappa0, nu0, psi0, prior_const,
                sigma, log_w1):
    """log W(n_a) + log W(n_b) - log W(n) + log f(X_a) + log f(X_b) - log f(X) of every
    pair of groups (a, b) and their union (:func:`.moves.log_split_terms`)."""
    g_n = n_a.shape[0]
    n = np.concatenate((n_a + n_b, n_a, n_b))
    s1 = np.concatenate((s1_a + s1_b, s1_a, s1_b))
    s2 = np.concatenate((s2_a + s2_b, s2_a, s2_b))
    kap, _, nu, chol = niw_posterior(n, s1, s2, mu0, kappa0, nu0, psi0)
    lm = log_marginal(n, kap, nu, chol, prior_const)
    out = np.empty(g_n)
    for g in range(g_n):
        out[g] = (math.lgamma(n_a[g] - sigma) - log_w1 + math.lgamma(n_b[g] - sigma) - log_w1
                  - (math.lgamma(n[g] - sigma) - log_w1) + lm[g_n + g] + lm[2 * g_n + g]
                  - lm[g])
    return out


@njit(cache=True)
def split_merge_batch(rng, X, z, k, pairs, kind_cdf, sub_alpha, keys, max_rows, mu0, kappa0,
                      nu0, psi0, prior_const, alpha, sigma, max_clusters, log_w1):
    """One batch of anchored splits (both anchors in one cluster) and merges (in two)
    on the disjoint pairs (m, 2) (:meth:`.subcluster.SubclusterSampler._move_batch`):
    the proposals of :func:`pair_proposals`, the Hastings ratios
    [split terms - log Q] for a split and [log Q - split terms] for the merge of the
    anchors' two clusters, accepted in sequence so that each move sees the K its
    predecessors left (:func:`.moves.accept_in_sequence`).  An accepted split gives
    the anchor-j side the label K, K+1, ... in order; a merge relabels the anchor-j
    cluster to the anchor-i one (empty labels are left for the caller to drop).

    Returns (labels, accepted (m,), is_split (m,))."""
    n_pairs = pairs.shape[0]
    ca = np.empty(n_pairs, dtype=np.int64)
    cb = np.empty(n_pairs, dtype=np.int64)
    for m in range(n_pairs):
        ca[m], cb[m] = z[pairs[m, 0]], z[pairs[m, 1]]
    rows, Xr, grp, li, lj, log_q, new_b = pair_proposals(
        rng, X, z, k, pairs, kind_cdf, sub_alpha, keys, max_rows, mu0, kappa0, nu0, psi0)
    n_rows = rows.shape[0]
    side_b = np.empty(n_rows, dtype=np.bool_)
    lab = np.empty(n_rows, dtype=np.int64)
    for r in range(n_rows):
        g = grp[r]
        side_b[r] = new_b[r] if ca[g] == cb[g] else z[rows[r]] == cb[g]
        lab[r] = 2 * g + (1 if side_b[r] else 0)
    n, s1, s2 = group_stats(Xr, lab, 2 * n_pairs)
    terms = split_terms(n[0::2], s1[0::2], s2[0::2], n[1::2], s1[1::2], s2[1::2], mu0,
                        kappa0, nu0, psi0, prior_const, sigma, log_w1)
    log_prop = log_split_proposal(log_q, side_b, grp, n_pairs, li, lj)
    log_u = np.empty(n_pairs)
    for m in range(n_pairs):
        log_u[m] = _log_uniform(rng)
    accepted = np.zeros(n_pairs, dtype=np.bool_)
    is_split = ca == cb
    k_now = k
    for m in range(n_pairs):
        if is_split[m]:
            log_h = terms[m] - log_prop[m] + log_new_block_ratio(alpha, sigma, max_clusters,
                                                                 k_now)
        else:
            log_h = log_prop[m] - terms[m] - log_new_block_ratio(alpha, sigma, max_clusters,
                                                                 k_now - 1)
        if log_u[m] < log_h:
            accepted[m] = True
            k_now += 1 if is_split[m] else -1
    z = z.copy()
    new_label = np.empty(n_pairs, dtype=np.int64)
    fresh = k
    for m in range(n_pairs):
        new_label[m] = ca[m]
        if accepted[m] and is_split[m]:
            new_label[m] = fresh
            fresh += 1
    for r in range(n_rows):
        if side_b[r] and accepted[grp[r]]:
            z[rows[r]] = new_label[grp[r]]
    return z, accepted, is_split


@njit(cache=True)
def _log_block_weight(n, sigma, log_w1):
    return math.lgamma(n - sigma) - log_w1


@njit(cache=True)
def warmup_labels(rng, X, n, s1, s2, conc, sub_alpha, mu0, kappa0, nu0, psi0, prior_const,
                  alpha, sigma, max_clusters, log_w1):
    """The draws of a warm-up iteration of Chang & Fisher's sampler given the
    sub-cluster statistics (n, s1, s2) of K clusters (2K groups, sub-cluster h of
    cluster k at 2k + h): weights pi ~ Dir(``conc``) and sub-weights
    pibar_k ~ Dir(n_k0 + a/2, n_k1 + a/2), cluster and sub-cluster parameters from
    their NIW posteriors; labels z_i ~ pi_k N(x_i | theta_k) over all K, sub-labels
    zbar_i ~ pibar_{z_i h} N(x_i | theta_{z_i h}); empty clusters dropped; then each
    cluster's split into its two sub-clusters drawn on Chang & Fisher's eq. 15,
    H = V-ratio W(n_0) W(n_1) / W(n) f(X_0) f(X_1) / f(X) (sub-clusters of one
    point floored at one, a split needs both non-empty).

    Returns (labels, sub-labels, old ids of the kept clusters, split (K',), and the
    kept clusters' sub-cluster and cluster statistics (n, s1, s2))."""
    n_rows = X.shape[0]
    k = n.shape[0] // 2
    nk, s1k, s2k = pair_sums(n, s1, s2)
    log_pi = draw_dirichlet_log(rng, conc.reshape(1, -1))[0]
    log_pibar = draw_dirichlet_log(rng, n.reshape(k, 2) + sub_alpha / 2)
    W, b, c, _ = draw_niw(rng, nk, s1k, s2k, mu0, kappa0, nu0, psi0)
    Ws, bs, cs, _ = draw_niw(rng, n, s1, s2, mu0, kappa0, nu0, psi0)
    u = np.empty(n_rows)
    for i in range(n_rows):
        u[i] = rng.random()
    z = draw_from_cdf(label_cdf(X, W, b, c + log_pi[:k]), u)
    pair = pair_loglik(X, z, Ws, bs, cs)
    zs = np.empty(n_rows, dtype=np.int64)
    for i in range(n_rows):
        l0 = pair[i, 0] + log_pibar[z[i], 0]
        l1 = pair[i, 1] + log_pibar[z[i], 1]
        zs[i] = 1 if _log_uniform(rng) < l1 - _logaddexp(l0, l1) else 0
    z, kept = relabel(z)                    # the clusters left empty are dropped
    k = kept.shape[0]
    lab = 2 * z + zs
    n, s1, s2 = group_stats(X, lab, 2 * k)
    nk, s1k, s2k = pair_sums(n, s1, s2)
    kap, _, nu, chol = niw_posterior(n, s1, s2, mu0, kappa0, nu0, psi0)
    lm_sub = log_marginal(n, kap, nu, chol, prior_const)
    kap, _, nu, chol = niw_posterior(nk, s1k, s2k, mu0, kappa0, nu0, psi0)
    lm = log_marginal(nk, kap, nu, chol, prior_const)
    ratio = log_new_block_ratio(alpha, sigma, max_clusters, k)
    split = np.zeros(k, dtype=np.bool_)
    for g in range(k):
        n1, n2 = n[2 * g], n[2 * g + 1]
        log_h = (ratio + _log_block_weight(max(n1, 1.0), sigma, log_w1)
                 + _log_block_weight(max(n2, 1.0), sigma, log_w1)
                 - _log_block_weight(n1 + n2, sigma, log_w1)
                 + lm_sub[2 * g] + lm_sub[2 * g + 1] - lm[g])
        split[g] = _log_uniform(rng) < log_h and n1 > 0 and n2 > 0
    return z, zs, kept, split, (n, s1, s2), (nk, s1k, s2k)


@njit(cache=True)
def restricted_labels(rng, X, z_old, n, s1, s2, conc, mu0, kappa0, nu0, psi0, max_tries):
    """The exact phase's restricted Gibbs step on K clusters with statistics (n, s1, s2):
    weights (pi_1..pi_K, pi_rest) ~ Dir(``conc``), parameters from their NIW
    posteriors, then labels z_i ~ pi_k N(x_i | theta_k) over the K clusters given no
    cluster empties, by rejection (at most ``max_tries`` draws; the old labels if all
    empty one); half of the time only a random half of the rows is redrawn.

    Returns (labels, log weights (K+1,), W, b, c of the drawn components, accepted)."""
    n_rows = X.shape[0]
    k = n.shape[0]
    log_w = draw_dirichlet_log(rng, conc.reshape(1, -1))[0]
    W, b, c, _ = draw_niw(rng, n, s1, s2, mu0, kappa0, nu0, psi0)
    cdf = label_cdf(X, W, b, c + log_w[:k])
    if rng.random() < 0.5:
        block = np.empty(n_rows, dtype=np.bool_)
        for i in range(n_rows):
            block[i] = rng.random() < 0.5
        rows = np.flatnonzero(block)
    else:
        rows = np.arange(n_rows)
    counts = np.empty(k, dtype=np.int64)
    for _ in range(max_tries):
        z = z_old.copy()
        for r in range(rows.shape[0]):
            z[rows[r]] = _draw_row(cdf, rows[r], rng.random())
        counts[:] = 0
        for i in range(n_rows):
            counts[z[i]] += 1
        if counts.min() > 0:
            return z, log_w, W, b, c, True
    return z_old, log_w, W, b, c, False


# -- collapsed Gibbs updates (Neal 2000, algorithm 3) ----------------------------------
@njit(cache=True)
def _predictive_terms(n, s1, s2, g, mu0, kappa0, nu0, psi0, mu, chol, const, scale, half,
                      psi):
    """The NIW posterior predictive of group g, a multivariate Student-t with
    df = nu_n - d + 1, location mu_n and scale Psi_n (kappa_n + 1) / (kappa_n df)
    (Murphy 2007, eq. 258), stored as mu_n, the Cholesky factor of Psi_n (the
    posterior of :func:`niw_posterior`), the log normaliser, c df (the divisor of the
    Psi_n-Mahalanobis distance) and (df + d) / 2; ``psi`` is (d, d) scratch."""
    d = s1.shape[1]
    kap = kappa0 + n[g]
    _posterior_into(n, s1, s2, g, mu0, kappa0, psi0, mu, chol, psi)
    _student_terms(g, kap, nu0 + n[g] - d + 1.0, chol, const, scale, half)


@njit(cache=True)
def _student_terms(g, kap, df, chol, const, scale, half):
    """Group g's Student-t predictive terms from kappa_n, its df and the Cholesky factor
    of Psi_n: the log normaliser, c df with c = (kappa_n + 1) / (kappa_n df), and
    (df + d) / 2 (Murphy 2007, eq. 258)."""
    d = chol.shape[1]
    c = (kap + 1.0) / (kap * df)
    logdet = 0.0
    for a in range(d):
        logdet += 2.0 * math.log(chol[g, a, a])
    const[g] = (math.lgamma(0.5 * (df + d)) - math.lgamma(0.5 * df)
                - 0.5 * d * math.log(df * math.pi) - 0.5 * (logdet + d * math.log(c)))
    scale[g] = c * df
    half[g] = 0.5 * (df + d)


@njit(cache=True)
def _chol_rank1(L, w, sign):
    """L L^T + sign w w^T into the lower factor L in O(d^2) (the rotation form of the
    rank-one Cholesky update; Golub & Van Loan, sec. 6.5.4); ``w`` is overwritten.
    False, with L part-updated, when a pivot would shrink by more than 1e4 (a downdate to a
    nearly singular matrix, where the rotations lose the digits a fresh
    factorisation keeps)."""
    d = w.shape[0]
    for a in range(d):
        l_aa = L[a, a]
        r2 = l_aa * l_aa + sign * w[a] * w[a]
        if not r2 > 1e-8 * l_aa * l_aa:
            return False
        r = math.sqrt(r2)
        cs = r / l_aa
        sn = w[a] / l_aa
        L[a, a] = r
        for i in range(a + 1, d):
            L[i, a] = (L[i, a] + sign * sn * w[i]) / cs
            w[i] = cs * w[i] - sn * L[i, a]
    return True


@njit(cache=True)
def _predictive_moved(x, g, sign, n, s1, s2, mu0, kappa0, nu0, psi0, mu, chol, const, scale,
                      half, psi, w):
    """:func:`_predictive_terms` of group g after x joined (sign 1) or left (-1) it,
    from its terms before, in O(d^2): with kappa the smaller and kappa' = kappa + 1
    the larger count's kappa_n and mu_n, mu' the larger mean, Psi' = Psi +
    kappa'/kappa (x - mu')(x - mu')^T (the NIW posterior update of Murphy 2007 with
    one observation added or taken out), a rank-one update of the Cholesky factor;
    recomputed from the statistics (already updated) when the downdate loses
    positive definiteness.  ``w`` is (d,) scratch."""
    d = x.shape[0]
    kap_new = kappa0 + n[g]
    kap_old = kap_new - sign
    big = max(kap_new, kap_old)
    f = math.sqrt(big / (big - 1.0))
    if sign < 0:                            # x - mu': the mean before x left
        for a in range(d):
            w[a] = f * (x[a] - mu[g, a])
    for a in range(d):
        mu[g, a] = (kap_old * mu[g, a] + sign * x[a]) / kap_new
    if sign > 0:                            # the mean after x joined
        for a in range(d):
            w[a] = f * (x[a] - mu[g, a])
    if not _chol_rank1(chol[g], w, sign):
        _predictive_terms(n, s1, s2, g, mu0, kappa0, nu0, psi0, mu, chol, const, scale, half,
                          psi)
        return
    _student_terms(g, kap_new, nu0 + n[g] - d + 1.0, chol, const, scale, half)


@njit(cache=True)
def _log_predictive(x, g, mu, chol, const, scale, half, y):
    """log t(x | group g) from :func:`_predictive_terms` (``y`` is scratch, (d,))."""
    d = x.shape[0]
    maha = 0.0
    for a in range(d):
        v = x[a] - mu[g, a]
        for b in range(a):
            v -= chol[g, a, b] * y[b]
        y[a] = v / chol[g, a, a]
        maha += y[a] * y[a]
    return const[g] - half[g] * math.log1p(maha / scale[g])


@njit(cache=True)
def _add_row(x, g, sign, n, s1, s2):
    d = x.shape[0]
    n[g] += sign
    for a in range(d):
        s1[g, a] += sign * x[a]
        for b in range(d):
            s2[g, a, b] += sign * x[a] * x[b]


@njit(cache=True)
def _grow(a, rows):
    """``a`` with its first axis zero-padded to ``rows``."""
    out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


@njit(cache=True)
def collapsed_labels(rng, X, z, k, idx, n, s1, s2, mu0, kappa0, nu0, psi0, alpha, sigma,
                     max_clusters):
    """Neal's (2000) algorithm 3 on the rows ``idx``, one after another: x_i leaves its
    cluster (an emptied cluster is dropped) and joins cluster k with probability
    proportional to (n_k,-i - sigma) t(x_i | X_k,-i), or a new one with
    (alpha + K_-i sigma) t(x_i) -- the predictive rule of a Gibbs-type EPPF
    (:func:`log_new_block_ratio`) times the NIW posterior predictive.  Weights and
    parameters are integrated out, so each update leaves p(z | X) invariant.

    (n, s1, s2) are the statistics of the K clusters of ``z``; returns the new labels
    (renumbered 0..K'-1) and their statistics.  One ``rng.random()`` per row."""
    d = X.shape[1]
    cap = k + min(idx.shape[0], 8)          # slots; doubled when the new clusters fill them
    cn = np.zeros(cap)
    cs1 = np.zeros((cap, d))
    cs2 = np.zeros((cap, d, d))
    cn[:k] = n
    cs1[:k] = s1
    cs2[:k] = s2
    alive = np.zeros(cap, dtype=np.bool_)
    alive[:k] = True
    psi = np.empty((d, d))
    mu = np.empty((cap, d))
    chol = np.zeros((cap, d, d))
    const = np.empty(cap)
    scale = np.empty(cap)
    half = np.empty(cap)
    for g in range(k):
        _predictive_terms(cn, cs1, cs2, g, mu0, kappa0, nu0, psi0, mu, chol, const, scale, half,
                          psi)
    pmu = np.empty((1, d))
    pchol = np.zeros((1, d, d))
    pconst = np.empty(1)
    pscale = np.empty(1)
    phalf = np.empty(1)
    _predictive_terms(np.zeros(1), np.zeros((1, d)), np.zeros((1, d, d)), 0, mu0, kappa0, nu0,
                      psi0, pmu, pchol, pconst, pscale, phalf, psi)
    # the leaving row's cluster as it was, restored when the row comes back
    keep_mu = np.empty(d)
    keep_chol = np.empty((d, d))
    y = np.empty(d)
    w = np.empty(d)
    logits = np.empty(cap + 1)
    slots = np.empty(cap + 1, dtype=np.int64)
    z = z.copy()
    k_live = k
    n_slots = k
    for t in range(idx.shape[0]):
        i = idx[t]
        x = X[i]
        old = z[i]
        keep_mu[:] = mu[old]
        keep_chol[:, :] = chol[old]
        keep = (const[old], scale[old], half[old])
        _add_row(x, old, -1.0, cn, cs1, cs2)
        emptied = cn[old] < 0.5
        if emptied:
            alive[old] = False
            k_live -= 1
            cn[old] = 0.0
            cs1[old] = 0.0
            cs2[old] = 0.0
        else:
            _predictive_moved(x, old, -1.0, cn, cs1, cs2, mu0, kappa0, nu0, psi0, mu, chol,
                              const, scale, half, psi, w)
        m = 0
        top = -np.inf
        for g in range(n_slots):
            if alive[g]:
                logits[m] = math.log(cn[g] - sigma) + _log_predictive(
                    x, g, mu, chol, const, scale, half, y)
                slots[m] = g
                top = max(top, logits[m])
                m += 1
        logits[m] = log_new_block_ratio(alpha, sigma, max_clusters, k_live) + _log_predictive(
            x, 0, pmu, pchol, pconst, pscale, phalf, y)
        slots[m] = -1
        top = max(top, logits[m])
        m += 1
        total = 0.0
        for j in range(m):
            total += math.exp(logits[j] - top)
            logits[j] = total
        u = rng.random() * total
        pick = m - 1
        for j in range(m):
            if u < logits[j]:
                pick = j
                break
        new = slots[pick]
        if new < 0:                                  # a new cluster: the first free slot
            new = old if emptied else n_slots
            if not emptied:
                for g in range(n_slots):
                    if not alive[g]:
                        new = g
                        break
            if new == n_slots:
                n_slots += 1
            if n_slots > cap:
                cap *= 2
                cn, cs1, cs2, alive = _grow(cn, cap), _grow(cs1, cap), _grow(cs2, cap), \
                    _grow(alive, cap)
                mu, chol, const, scale, half = _grow(mu, cap), _grow(chol, cap), \
                    _grow(const, cap), _grow(scale, cap), _grow(half, cap)
                logits, slots = _grow(logits, cap + 1), _grow(slots, cap + 1)
            alive[new] = True
            k_live += 1
        _add_row(x, new, 1.0, cn, cs1, cs2)
        if new == old and not emptied:
            mu[old] = keep_mu
            chol[old] = keep_chol
            const[old], scale[old], half[old] = keep
        elif cn[new] < 1.5:                         # a new cluster
            _predictive_terms(cn, cs1, cs2, new, mu0, kappa0, nu0, psi0, mu, chol, const,
                              scale, half, psi)
        else:
            _predictive_moved(x, new, 1.0, cn, cs1, cs2, mu0, kappa0, nu0, psi0, mu, chol,
                              const, scale, half, psi, w)
        z[i] = new
    z, kept = relabel(z)
    return z, cn[kept], cs1[kept], cs2[kept]
