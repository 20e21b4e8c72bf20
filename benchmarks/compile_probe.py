"""Does torch.compile speed up the sampler's label step?  A probe for the
architecture question the speed targets raise (benchmarks/README.md, "Speed").

The label step of an exact iteration -- log N(x_n | mu_k, Sigma_k) + log pi_k for
all points and clusters, then one inverse-CDF categorical draw per row -- is the
largest single piece of a sampler iteration at d = 2 and the most fusible one: pure
tensor arithmetic, no data-dependent shapes.  This script times it three ways on
the speed benchmark's sizes:

* ``project``: the code the sampler runs (``GaussianNIW.log_likelihood``,
  ``categorical_cdf_``, ``sample_from_cdf``);
* ``eager``: the same arithmetic as one self-contained function, unfused;
* ``compiled``: that function through ``torch.compile(dynamic=True)`` (inductor's
  C++ backend on the CPU; dynamic shapes because K changes from one iteration to
  the next, and a recompilation per K would cost far more than it saves), written
  two ways: an einsum over (N, K, d), and the project's GEMM form.

It checks that the three give the same labels for the same uniforms, and prints
the first call's time (compilation included) and the median time per call.

    python benchmarks/compile_probe.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnpdeep.inference.mcmc import categorical_cdf_  # noqa: E402
from bnpdeep.models import GaussianNIW  # noqa: E402
from bnpdeep.models.families.gaussian_niw import GaussianParams  # noqa: E402


def label_step(X, w, wm, const, u):
    """Labels drawn from softmax_k(const_k - |W_k x_n - W_k mu_k|^2 / 2), W_k = L_k^{-1},
    by inverse CDF with the uniforms ``u`` (N, 1)."""
    y = torch.einsum("kij,nj->nki", w, X) - wm
    logits = const - 0.5 * (y * y).sum(-1)
    cdf = (logits - logits.amax(-1, keepdim=True)).exp().cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return idx.clamp_max(cdf.shape[1] - 1)


def label_step_gemm(X, a, m, const, u):
    """:func:`label_step` with the whitened points of all clusters from one GEMM,
    ``a`` = [W_1^T .. W_K^T] (d, K d), ``m`` = (W_k mu_k) (K, d), as the project does."""
    n, k = X.shape[0], m.shape[0]
    y = (X @ a).view(n, k, -1) - m
    logits = const - 0.5 * (y * y).sum(-1)
    cdf = (logits - logits.amax(-1, keepdim=True)).exp().cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return idx.clamp_max(cdf.shape[1] - 1)


def project_step(fam, X, params, log_w, u):
    cdf = categorical_cdf_(fam.log_likelihood(X, params).add_(log_w))
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return idx.clamp_max_(cdf.shape[1] - 1)


def median_us(repeats: int, fn, *args) -> float:
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    compiled = torch.compile(label_step, dynamic=True)
    compiled_gemm = torch.compile(label_step_gemm, dynamic=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| N, K (d = 2) | first compiled calls s | project us | einsum: eager / compiled us "
          "| GEMM: eager / compiled us | best compiled / project |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for n, k in [(10_000, 10), (3_000, 20), (20_000, 50), (3_000, 19)]:
            X = torch.randn(n, 2, dtype=torch.float64)
            fam = GaussianNIW.weak(X)
            a = torch.randn(k, 2, 2, dtype=torch.float64)
            params = GaussianParams(torch.randn(k, 2, dtype=torch.float64),
                                    a @ a.transpose(1, 2) + 0.1 * torch.eye(2, dtype=torch.float64))
            log_w = torch.log_softmax(torch.randn(k, dtype=torch.float64), 0)
            chol = torch.linalg.cholesky(params.cov)
            w = torch.linalg.inv(chol)
            wm = (w @ params.mean[..., None])[..., 0]
            const = log_w - 0.5 * (2 * np.log(2 * np.pi)
                                   + 2 * chol.diagonal(dim1=1, dim2=2).log().sum(-1))
            u = torch.rand(n, 1, dtype=torch.float64)
            a = w.transpose(1, 2).permute(1, 0, 2).reshape(2, 2 * k)
            t = time.perf_counter()
            z_c = compiled(X, w, wm, const, u)
            z_cg = compiled_gemm(X, a, wm, const, u)
            first = time.perf_counter() - t
            z_e = label_step(X, w, wm, const, u)
            z_p = project_step(fam, X, params, log_w, u)
            agree = [float((z == z_e).double().mean()) for z in (z_c, z_cg, z_p)]
            if min(agree) < 0.999:   # ties in round-off may move a rare draw, no more
                raise AssertionError(f"labels disagree at N={n}, K={k}: {agree}")
            t_p = median_us(args.repeats, project_step, fam, X, params, log_w, u)
            t_e = median_us(args.repeats, label_step, X, w, wm, const, u)
            t_c = median_us(args.repeats, compiled, X, w, wm, const, u)
            t_ge = median_us(args.repeats, label_step_gemm, X, a, wm, const, u)
            t_gc = median_us(args.repeats, compiled_gemm, X, a, wm, const, u)
            print(f"| {n}, {k} | {first:.2f} | {t_p:.0f} | {t_e:.0f} / {t_c:.0f} "
                  f"| {t_ge:.0f} / {t_gc:.0f} | {min(t_c, t_gc) / t_p:.2f} |", flush=True)


if __name__ == "__main__":
    main()
