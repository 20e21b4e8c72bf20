"""Accuracy and speed benchmarks (``make bench``); results go to benchmarks/README.md.

    python benchmarks/run_benchmarks.py                       # everything
    python benchmarks/run_benchmarks.py accuracy --sets r15 wine
    python benchmarks/run_benchmarks.py speed
    python benchmarks/run_benchmarks.py accuracy --methods bgm movb svi
    python benchmarks/run_benchmarks.py movb-speed
    python benchmarks/run_benchmarks.py scale
    python benchmarks/run_benchmarks.py mixing
    python benchmarks/run_benchmarks.py deep               # deep features on raw images

Each section prints its markdown table and saves its rows with their provenance
(date, machine, commit, command) as a record in benchmarks/results/, from which
``python benchmarks/report.py`` renders benchmarks/README.md.  Every method runs
in the same process, one after the other, so ratios between them are measured
under the same load.
"""

from __future__ import annotations

import argparse
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
import warnings
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import report
import torch
from bnpdeep.inference import (
    DBSCAN,
    BayesianGMM,
    CollapsedGibbs,
    DeepDPM,
    GaussianMixtureEM,
    KMeans,
    MeanFieldSVI,
    MemoizedVB,
    SubclusterSampler,
)
from bnpdeep.inference.base import resolve_device
from bnpdeep.inference.deepdpm import DistributedDeepDPM
from bnpdeep.inference.distributed import DistributedSubclusterSampler, fit_on_ranks
from bnpdeep.inference.subcluster import compile_kernels
from bnpdeep.models import (
    DiagonalGaussian,
    DirichletProcess,
    DPMixture,
    GaussianNIW,
    Hyperpriors,
)
from report import SPEED_SAMPLERS

from bnpdeep import data
from bnpdeep.diagnostics import k_summary
from bnpdeep.methods import STUDENT_DF, family_model
from bnpdeep.metrics import evaluate

HERE = Path(__file__).resolve().parent


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
            f"threads, Python {platform.python_version()}, torch {torch.__version__}")


# Idle time before every timed fit.  OpenBLAS's worker threads spin for about 0.1 s
# after a BLAS call returns (their sleep timeout); a fit started in that window shares
# the two cores with them.  Measured 2026-11-26 on a1, per-thread CPU from
# /proc/self/task: a sampler fit started right after a BGM fit lost 50-60 ms of its
# 120 ms to BGM's BLAS worker, and the paired a1 ratio was 2.6-3.1x back to back
# against 4.2-4.4x with this pause before every fit (both samplers and BGM alike).
SETTLE_SECONDS = 0.3


def timed_fit(est, X):
    """Fit after a quiet pause (:data:`SETTLE_SECONDS`); returns (est, seconds)."""
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    est.fit(X)
    return est, time.perf_counter() - start


def accuracy_methods(X, k_true: int, seed: int, iters: int | None,
                     backend: str = "auto", device: str = "cpu"):
    n, d = X.shape
    methods = {
        "kmeans (K given)": KMeans(n_clusters=k_true, random_state=seed),
        "gmm (K given)": GaussianMixtureEM(n_clusters=k_true, random_state=seed),
        "dbscan": DBSCAN(),
        "bgm": BayesianGMM(truncation=max(2 * k_true, 30), random_state=seed),
        "subcluster": SubclusterSampler(**({} if iters is None else {"max_iter": iters}),
                                        random_state=seed,
                                        store_log_likelihood=False, backend=backend),
        # Student-t components: the torch backend (the compiled one is Gaussian only)
        "subcluster-t": SubclusterSampler(model=family_model("student-t", X),
                                          **({} if iters is None else {"max_iter": iters}),
                                          random_state=seed, store_log_likelihood=False),
    }
    methods["deepdpm"] = DeepDPM(random_state=seed, device=device)
    methods["deepdpm (init 3K)"] = DeepDPM(init_k=3 * k_true, random_state=seed, device=device)
    methods["deepdpm-t"] = DeepDPM(model=family_model("student-t", X), random_state=seed,
                                   device=device)
    methods["movb"] = MemoizedVB(random_state=seed)
    methods["movb-t"] = MemoizedVB(model=family_model("student-t", X), random_state=seed)
    methods["svi"] = MeanFieldSVI(random_state=seed)
    methods["svi-t"] = MeanFieldSVI(model=family_model("student-t", X), random_state=seed)
    methods["gibbs"] = CollapsedGibbs(max_iter=60, random_state=seed,
                                      store_log_likelihood=False)
    return methods


def hierarchical_model(X) -> DPMixture:
    """The default model with Gamma(1, 1) hyperpriors on kappa, on the scale of Psi
    and on alpha (Rasmussen 2000; Goerur & Rasmussen 2010): each centred on the
    default's own value of that scale (``GaussianNIW.weak``: psi_scale 1; alpha 1),
    kappa's mean at 1."""
    def gamma(shape, rate):
        return torch.distributions.Gamma(torch.tensor(float(shape), dtype=torch.float64),
                                         torch.tensor(float(rate), dtype=torch.float64))

    return DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0), hyperpriors=Hyperpriors(
        kappa=gamma(1, 1), psi_scale=gamma(1, 1), alpha=gamma(1, 1)))


HYPER_METHODS = ("subcluster", "movb", "deepdpm")
# the hyperparameter a collapse warning names (bnpdeep.inference.hyperparameters)
COLLAPSED = re.compile(r"^(?:the point estimate of (\w+) .* not a maximum|(\w+) was drawn at .* "
                       r"improper)")


def collapse_warnings(caught) -> list[str]:
    """The hyperparameters that caught collapse warnings name."""
    found = (COLLAPSED.search(str(w.message)) for w in caught)
    return sorted({m.group(1) or m.group(2) for m in found if m})


def run_hyperpriors(seed: int, sets) -> list[dict]:
    """Each Bayesian method under the default fixed prior and under
    :func:`hierarchical_model` (the samplers sample the hyperparameters, moVB and
    DeepDPM take point estimates), on the benchmark sets and on 128-d clusters of
    rank 8 where the fixed prior's scale is off (``make_mixture(3000, 128, 10,
    rank=8)``, standardised)."""
    cases = [(name, *data.load_benchmark(name)) for name in sets]
    X, y = data.make_mixture(3000, 128, 10, rank=8, separation=6.0, seed=seed)
    cases.append(("synthetic 128-d", (X - X.mean(0)) / X.std(0), y))
    rows = []
    for name, X, y in cases:
        for method in HYPER_METHODS:
            for model in ("fixed", "hierarchical"):
                m = hierarchical_model(X) if model == "hierarchical" else None
                est = {"subcluster": partial(SubclusterSampler, store_log_likelihood=False),
                       "movb": MemoizedVB, "deepdpm": DeepDPM}[method](m, random_state=seed)
                row = {"data": name, "N": X.shape[0], "d": X.shape[1],
                       "k_true": int(np.unique(y).size), "method": method, "model": model}
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", RuntimeWarning)
                        est, secs = timed_fit(est, X)
                except Exception as err:        # a failed fit is a row, not a crash
                    rows.append({**row, "k": None, "nmi": 0.0, "seconds": float("nan"),
                                 "hyper": {}, "error": str(err).splitlines()[0]})
                    print(f"  {name:<16} {method:<10} {model:<12} failed: {rows[-1]['error']}",
                          file=sys.stderr, flush=True)
                    continue
                if model == "fixed":
                    hyper = {}
                elif method == "subcluster":     # posterior means over the kept draws
                    post = est.posterior_arrays()["posterior"]
                    hyper = {n: float(np.mean(post[n])) for n in ("kappa", "psi_scale", "alpha")}
                else:                            # point estimates
                    hyper = est.hyperparameters_
                m_ = evaluate(y, est.labels_)
                rows.append({**row, "k": int(est.n_clusters_), "nmi": m_["nmi"],
                             "seconds": secs,
                             "hyper": {k: float(v) for k, v in hyper.items()
                                       if np.ndim(v) == 0},
                             "warned": collapse_warnings(caught)})
                print(f"  {name:<16} {method:<10} {model:<12} K={est.n_clusters_:<3d} "
                      f"NMI={m_['nmi']:.3f} {secs:6.1f} s {rows[-1]['hyper']}",
                      file=sys.stderr, flush=True)
    return rows


def run_accuracy(sets, seed: int, iters: int | None, only=None,
                 backend: str = "auto", device: str = "cpu") -> list[dict]:
    rows = []
    for name in sets:
        X, y = data.load_benchmark(name)
        k_true = int(np.unique(y).size)
        for method, est in accuracy_methods(X, k_true, seed, iters, backend, device).items():
            if only and method not in only:
                continue
            row = {"data": name, "method": method, "N": X.shape[0], "d": X.shape[1],
                   "k_true": k_true}
            try:
                est, secs = timed_fit(est, X)
            except Exception as err:        # a failed method is a row, not a crash
                rows.append({**row, "k": None, "nmi": 0.0, "ari": 0.0, "acc": 0.0,
                             "seconds": float("nan"), "error": str(err).splitlines()[0]})
                print(f"  {name:<12} {method:<18} failed: {rows[-1]['error']}",
                      file=sys.stderr, flush=True)
                continue
            m = evaluate(y, est.labels_)
            rows.append({**row, "k": int(est.n_clusters_), "nmi": m["nmi"], "ari": m["ari"],
                         "acc": m["acc"], "seconds": secs})
            if hasattr(est, "label_draws_"):
                # a sampler's labels_ is one posterior draw, random at the boundaries of
                # overlapping clusters; predict(X) assigns every point to its most
                # probable cluster of that draw (posterior predictive), as BGM's and
                # EM's argmax labels do
                rows[-1]["nmi_predict"] = evaluate(y, est.predict(X))["nmi"]
            print(f"  {name:<12} {method:<18} K={est.n_clusters_:<3d} (true {k_true:<3d}) "
                  f"NMI={m['nmi']:.3f} {secs:7.2f} s", file=sys.stderr, flush=True)
    return rows






def run_speed(seed: int, repeats: int) -> list[dict]:
    """Sub-cluster sampler (100 iterations; compiled and torch backends) against BGM on
    the same data, same run, paired repeats."""
    cases = {"synthetic N=10000 d=2 K=10": data.make_mixture(10_000, 2, 10, seed=seed),
             "a1 (N=3000, K=20)": data.load_benchmark("a1"),
             "synthetic N=20000 d=2 K=50": data.make_mixture(20_000, 2, 50, seed=seed)}
    rows = [{"case": "kernel load", "method": "compiled", "seconds": compile_kernels()}]
    print(f"  compiled kernels loaded in {rows[0]['seconds']:.2f} s", file=sys.stderr)
    for case, (X, y) in cases.items():
        k_true = int(np.unique(y).size)
        for rep in range(repeats):
            methods = {name: SubclusterSampler(max_iter=100, random_state=seed + rep,
                                               store_log_likelihood=False, backend=backend)
                       for name, backend in SPEED_SAMPLERS.items()}
            methods["bgm"] = BayesianGMM(truncation=max(2 * k_true, 30), random_state=seed + rep)
            for method, est in methods.items():
                est, secs = timed_fit(est, X)
                m = evaluate(y, est.labels_)
                row = {"case": case, "method": method, "rep": rep, "seconds": secs,
                       "k": int(est.n_clusters_), "k_true": k_true, "nmi": m["nmi"]}
                if method.startswith("subcluster"):
                    row.update(step_profile(est, k_true))
                rows.append(row)
                print(f"  {case:<28} {method:<26} {secs:7.2f} s K={est.n_clusters_}",
                      file=sys.stderr, flush=True)
    return rows


def step_profile(est, k_true: int) -> dict:
    """Where a sampler fit's time goes: median milliseconds of a warm-up and of an
    exact iteration, and the seconds and iterations until the chain first reaches
    the true K (None if it never does)."""
    secs, ks = est.seconds_trace_[0], est.k_trace_[0]
    warm = est.warmup_
    hit = np.flatnonzero(ks == k_true)
    first = int(hit[0]) if hit.size else None
    return {"warmup_ms": float(np.median(secs[:warm])) * 1e3 if warm else None,
            "exact_ms": float(np.median(secs[warm:])) * 1e3 if warm < secs.size else None,
            "iter_to_k": first + 1 if first is not None else None,
            "s_to_k": float(secs[:first + 1].sum()) if first is not None else None}






def run_movb_speed(seed: int, repeats: int) -> list[dict]:
    """moVB (5 batches) to convergence and for 50 fixed laps, against BGM, paired runs at
    N=10,000, d=2, K=10 (bnpy's moVB: about 99 s for 50 laps there, issue #5)."""
    X, y = data.make_mixture(10_000, 2, 10, seed=seed)
    rows = []
    for rep in range(repeats):
        for method, est in {
            "movb": MemoizedVB(n_batches=5, random_state=seed + rep),
            "movb (50 laps)": MemoizedVB(n_batches=5, max_laps=50, tol=0.0,
                                         patience=10**9, random_state=seed + rep),
            "bgm": BayesianGMM(truncation=30, random_state=seed + rep),
        }.items():
            est, secs = timed_fit(est, X)
            m = evaluate(y, est.labels_)
            rows.append({"method": method, "rep": rep, "seconds": secs,
                         "k": int(est.n_clusters_), "nmi": m["nmi"],
                         "laps": getattr(est, "n_laps_", None)})
            print(f"  movb speed {method:<16} {secs:7.2f} s K={est.n_clusters_}",
                  file=sys.stderr, flush=True)
    return rows




def synchronize(device) -> None:
    """Wait for the device's queued work (timings on a GPU end only when it is done)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 2048, repeats: int = 5, device="cpu") -> float:
    """The device's float32 matrix-multiply rate (median of ``repeats``)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / np.median(times) / 1e9


def run_deepdpm_speed(seed: int, n: int = 100_000, d: int = 32, k: int = 20,
                      target: float = 0.95, device: str = "cpu", repeats: int = 1) -> dict:
    """Seconds to NMI >= target, DeepDPM against the sub-cluster sampler, and the
    E-step's rate as a fraction of the float32 matmul rate.  The sampler's length is
    found once (fresh fits of 10, 20, 40, 80 iterations until the target is met); then
    ``repeats`` rounds time DeepDPM and the sampler at that length one after the other
    (paired), and the figures are the medians over the rounds.  Before any of them, each
    method fits a 2,000-row slice twice: a process's first fit pays one-time costs (the
    modules torch's optimisers import, numba's on-disk cache, torch's lazy set-up) that
    no later fit pays; the rounds then time the fits alone, and the record keeps the
    first fit's extra seconds."""
    from bnpdeep.metrics import nmi

    X, y = data.make_mixture(n, d, k, seed=seed)
    out = {"N": n, "d": d, "k_true": k, "target_nmi": target, "device": device}
    warm = X[:2000]
    first = {}
    for name, make in (("deepdpm", lambda: DeepDPM(random_state=seed, device=device,
                                                    max_epochs=2)),
                       ("subcluster", lambda: SubclusterSampler(max_iter=2, random_state=seed,
                                                                store_log_likelihood=False))):
        cold, hot = (timed_fit(make(), warm)[1] for _ in range(2))
        first[name] = max(cold - hot, 0.0)
    out["first_fit_extra_seconds"] = first

    def deepdpm_round():
        # wall time at the end of each epoch (the NMI evaluation is excluded)
        clock = {"spent": 0.0, "hit": None, "t0": time.perf_counter()}

        def callback(est, epoch, Xt):
            synchronize(device)
            now = time.perf_counter()
            clock["spent"] += now - clock["t0"]
            if clock["hit"] is None and nmi(y, est.current_labels(Xt)) >= target:
                clock["hit"] = (epoch, clock["spent"])
            clock["t0"] = time.perf_counter()

        est = DeepDPM(random_state=seed, device=device, callback=callback)
        est.fit(X)
        res = {"epochs_to_target": clock["hit"][0] if clock["hit"] else None,
               "seconds_to_target": clock["hit"][1] if clock["hit"] else None,
               "seconds_total": clock["spent"], "epochs": len(est.history_),
               "k": int(est.n_clusters_), "nmi": nmi(y, est.labels_)}
        print(f"  deepdpm N={n}: {res}", file=sys.stderr, flush=True)
        return est, res

    def sampler_round(iters):
        sc, secs = timed_fit(SubclusterSampler(max_iter=iters, random_state=seed,
                                               store_log_likelihood=False), X)
        score = nmi(y, sc.labels_)
        print(f"  subcluster {iters} it: {secs:.1f} s NMI {score:.3f} K={sc.n_clusters_}",
              file=sys.stderr, flush=True)
        return {"iters": iters, "seconds": secs, "nmi": score, "k": int(sc.n_clusters_),
                "seconds_to_target": secs if score >= target else None}

    est, dd = deepdpm_round()
    sampler = {"seconds_to_target": None}
    for iters in (10, 20, 40, 80):
        sampler = sampler_round(iters)
        if sampler["seconds_to_target"] is not None:
            break
    rounds = [(dd["seconds_to_target"], sampler["seconds_to_target"])]
    for _ in range(int(repeats) - 1):
        est, dd = deepdpm_round()
        sampler = sampler_round(sampler["iters"])
        rounds.append((dd["seconds_to_target"], sampler["seconds_to_target"]))
    out["rounds"] = rounds

    def median(i):
        vals = [r[i] for r in rounds]
        return None if any(v is None for v in vals) else float(np.median(vals))

    out["deepdpm"] = {**dd, "seconds_to_target": median(0)}
    out["subcluster"] = {**sampler, "seconds_to_target": median(1),
                         "seconds": float(np.median([r[1] or np.nan for r in rounds]))}
    # E-step rate: log pi_k + log N(x_i | theta_k) over all rows, K components
    times = []
    Xt = torch.as_tensor(X, device=resolve_device(device))
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            est.guide_.log_targets(Xt)
        synchronize(device)
        times.append(time.perf_counter() - start)
    kk = est.guide_.k
    flops = 2.0 * n * kk * d * d      # the GEMM-based Mahalanobis terms dominate
    out["estep"] = {"seconds": float(np.median(times)), "k": kk,
                    "gflops": flops / np.median(times) / 1e9,
                    "matmul_f32_gflops": matmul_gflops(device=device)}
    out["estep"]["fraction_of_matmul"] = out["estep"]["gflops"] / out["estep"]["matmul_f32_gflops"]
    return out


def run_scale(seed: int, n: int, iters: int) -> dict:
    """N=1e6, d=16, K=32: time per iteration and peak resident memory."""
    X, y = data.make_mixture(n, 16, 32, seed=seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    est = SubclusterSampler(max_iter=iters, random_state=seed, store_log_likelihood=False,
                            progress=True)
    est, secs = timed_fit(est, X)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    m = evaluate(y, est.labels_)
    return {"N": n, "d": 16, "k_true": 32, "iters": iters, "seconds": secs,
            "s_per_iter": secs / iters, "k": int(est.n_clusters_), "nmi": m["nmi"],
            "peak_rss_gib": peak, "rss_before_fit_gib": before}


def _communication(est, count: int, unit: str) -> dict:
    """Rank 0's bytes all-reduced, collectives and seconds in them per ``unit``
    (``count`` of them), for a data-parallel fit; nothing for another."""
    if not hasattr(est, "bytes_reduced_"):
        return {}
    return {f"bytes_per_{unit}": est.bytes_reduced_ / count,
            f"collectives_per_{unit}": est.collectives_ / count,
            f"collective_s_per_{unit}": est.collective_seconds_ / count}


def run_distributed(seed: int, n: int, iters: int) -> list[dict]:
    """The data-parallel sampler on the scale section's data (N=1e6, d=16, K=32) on one
    rank (this process, all torch threads) and on two (spawned gloo processes, the
    threads shared out), beside the single-process default sampler: seconds per
    iteration (all, and the median of the kept kernel's), collectives and bytes
    all-reduced per iteration by rank 0, the seconds rank 0 spent in collectives."""
    X, y = data.make_mixture(n, 16, 32, seed=seed)
    rows = []
    kw = {"max_iter": iters, "random_state": seed, "store_log_likelihood": False}
    fits = {"subcluster (single process)": lambda: timed_fit(SubclusterSampler(**kw), X),
            "data-parallel, 1 rank": lambda: timed_fit(DistributedSubclusterSampler(**kw), X)}
    for ranks in (2,):
        def on_ranks(r=ranks):
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            est = fit_on_ranks(DistributedSubclusterSampler(**kw), X, r)
            return est, time.perf_counter() - start
        fits[f"data-parallel, {ranks} ranks"] = on_ranks
    for method, fit in fits.items():
        est, secs = fit()
        trace = est.seconds_trace_[0]
        kept = trace[est._burn_in() // 2:]         # after the warm-up: the kept kernel
        row = {"N": n, "d": 16, "k_true": 32, "iters": iters, "method": method,
               "ranks": 2 if "2 ranks" in method else 1, "seconds": secs,
               "s_per_iter": float(trace.sum()) / iters,
               "s_per_exact_iter": float(np.median(kept)), "k": int(est.n_clusters_),
               "nmi": evaluate(y, est.labels_)["nmi"]}
        row.update(_communication(est, iters, "iter"))
        rows.append(row)
        print(f"  distributed {method:<30} {secs:7.1f} s K={est.n_clusters_}",
              file=sys.stderr, flush=True)
    return rows


def run_distributed_deepdpm(seed: int, repeats: int = 3, n: int = 100_000, d: int = 32,
                            k: int = 20) -> list[dict]:
    """DeepDPM data-parallel on the DeepDPM speed section's data (N=1e5, d=32, K=20):
    the single-process DeepDPM, the data-parallel one on one rank (this process, all
    torch threads) and on two (spawned gloo processes, the threads shared out), each
    from K = 1 to its convergence stop, in ``repeats`` rounds that alternate the three:
    seconds (each round's, and their median), epochs, K, NMI, and rank 0's
    collectives, bytes and seconds in collectives per epoch."""
    X, y = data.make_mixture(n, d, k, seed=seed)

    def on_two_ranks():
        time.sleep(SETTLE_SECONDS)
        start = time.perf_counter()
        est = fit_on_ranks(DistributedDeepDPM(random_state=seed), X, 2)
        return est, time.perf_counter() - start

    fits = {"deepdpm (single process)": lambda: timed_fit(DeepDPM(random_state=seed), X),
            "data-parallel, 1 rank": lambda: timed_fit(DistributedDeepDPM(random_state=seed),
                                                       X),
            "data-parallel, 2 ranks": on_two_ranks}
    runs = {method: [] for method in fits}
    for _ in range(int(repeats)):
        for method, fit in fits.items():
            runs[method].append(fit())
    rows = []
    for method, done in runs.items():
        est = done[-1][0]
        secs = float(np.median([t for _, t in done]))
        epochs = len(est.history_)
        row = {"N": n, "d": d, "k_true": k, "method": method,
               "ranks": 2 if "2 ranks" in method else 1, "seconds": secs,
               "seconds_runs": [t for _, t in done], "epochs": epochs,
               "s_per_epoch": secs / epochs, "k": int(est.n_clusters_),
               "nmi": evaluate(y, est.labels_)["nmi"]}
        row.update(_communication(est, epochs, "epoch"))
        rows.append(row)
        print(f"  distributed deepdpm {method:<26} {secs:7.1f} s K={est.n_clusters_}",
              file=sys.stderr, flush=True)
    return rows


# high dimensions: (N, d, K, rank of each cluster's covariance above the noise); the
# last two have fewer rows per cluster than a full covariance has parameters
HIGHDIM_CASES = [(2500, 64, 5, 5), (10_000, 128, 10, 8), (2500, 64, 5, None),
                 (150, 60, 3, None), (600, 60, 3, None)]


def run_highdim(seed: int, iters: int | None = None) -> list[dict]:
    """The sampler (both backends; ``backend="auto"`` is the default's choice) against
    BGM on high-dimensional mixtures: clusters of low intrinsic dimension (``rank``,
    as embeddings have) and, for contrast, full-rank ones; and the sampler with
    diagonal-covariance components (``DiagonalGaussian.weak``), d parameters of scale
    per cluster instead of d (d + 1) / 2."""
    rows = []
    for n, d, k, rank in HIGHDIM_CASES:
        X, y = data.make_mixture(n, d, k, rank=rank, separation=6.0, seed=seed)
        X = (X - X.mean(0)) / X.std(0)
        methods = {f"subcluster {b}": SubclusterSampler(
            **({} if iters is None else {"max_iter": iters}), backend=b,
            random_state=seed, store_log_likelihood=False) for b in ("compiled", "torch")}
        methods["subcluster diagonal"] = SubclusterSampler(
            DPMixture(DiagonalGaussian.weak(X), DirichletProcess(1.0)),
            **({} if iters is None else {"max_iter": iters}), random_state=seed,
            store_log_likelihood=False)
        methods["bgm"] = BayesianGMM(truncation=max(2 * k, 30), random_state=seed)
        for method, est in methods.items():
            est, secs = timed_fit(est, X)
            rows.append({"N": n, "d": d, "k_true": k, "rank": rank, "method": method,
                         "seconds": secs, "k": int(est.n_clusters_),
                         "nmi": evaluate(y, est.labels_)["nmi"],
                         "iters": getattr(est, "max_iter", None)})
            if hasattr(est, "model_"):
                # the model's verdict: collapsed log joint of the truth and of labels_
                rows[-1]["lp_truth"] = est.model_.log_joint_collapsed(X, y)
                rows[-1]["lp_found"] = est.model_.log_joint_collapsed(X, est.labels_)
            print(f"  highdim N={n} d={d} K={k} rank={rank} {method:<20} {secs:7.1f} s "
                  f"K={est.n_clusters_}", file=sys.stderr, flush=True)
    return rows


def run_highdim_large(seed: int, iters: int | None = None, n: int = 100_000, d: int = 128,
                      k: int = 80) -> list[dict]:
    """The sampler at the size DPMMSubClusters publishes for its 128-d ImageNet features
    (100,000 x 128, 79 classes): 80 clusters of rank 8 (``make_mixture``), the default
    backend, ``iters`` iterations (default 100), progress on stderr; BGM is not run (the
    published BGM time there is 6,108 s)."""
    X, y = data.make_mixture(n, d, k, rank=8, separation=6.0, seed=seed)
    X = (X - X.mean(0)) / X.std(0)
    est = SubclusterSampler(max_iter=iters or 100, random_state=seed,
                            store_log_likelihood=False, progress=True)
    est, secs = timed_fit(est, X)
    ks = est.k_trace_[0]
    hit = np.flatnonzero(np.abs(ks - k) <= max(1, 0.1 * k))
    return [{"N": n, "d": d, "k_true": k, "rank": 8, "iters": est.max_iter,
             "backend": est.backend_,
             "seconds": secs, "s_per_iter": secs / est.max_iter, "k": int(est.n_clusters_),
             "nmi": evaluate(y, est.labels_)["nmi"],
             "iter_to_k": int(hit[0]) + 1 if hit.size else None,
             "k_trace": ks[:: max(1, ks.size // 20)].tolist()}]


MIXING_SETS = ("ecoli", "wine", "wdbc")     # the benchmark sets with d >= 7 besides g2mg


def run_mixing(seed: int, chains: int, iters: int) -> list[dict]:
    """Mixing of the sampler at its defaults: ``chains`` chains from K=1 on the demo
    data (digits, PCA 10) and on the benchmark sets with d >= 7; R-hat (rank-
    normalised) and bulk ESS of K and lp, the chains' mean K and log joint, and the
    clusters of at most 3 points in each chain's last draw; the chains run in one
    worker process per core (``n_jobs=-1``), and the seconds are wall-clock, worker
    start-up included.  The demo data also run
    without the collapsed Gibbs updates (``gibbs_points=0``), for contrast, and
    every set under Student-t components (``family_model("student-t", X)``)."""
    digits = data.demo_data()[0]
    cases = [("digits (PCA 10)", digits, {}), ("digits (PCA 10)", digits,
                                                    {"options": {"gibbs_points": 0}})]
    cases += [(name, data.load_benchmark(name)[0], {}) for name in MIXING_SETS
              if data.benchmark_root() is not None]
    # the same data under Student-t components (torch backend)
    cases += [(f"{name}, t {STUDENT_DF:g} df", X, {"model": family_model("student-t", X)})
              for name, X, options in cases if not options]
    rows = []
    for name, X, options in cases:
        est = SubclusterSampler(max_iter=iters, n_chains=chains, n_jobs=-1,
                                random_state=seed, store_log_likelihood=False, **options)
        est, secs = timed_fit(est, X)
        idata = est.to_inference_data()
        last = est.label_draws_.reshape(chains, -1, X.shape[0])[:, -1]
        acc = idata.sample_stats
        rows.append({"data": name, "gibbs_points": est.gibbs_points_, "seconds": secs,
                     **k_summary(idata),
                     "k_per_chain": est.k_draws_.mean(1).round(2).tolist(),
                     "lp_mean": float(acc["lp"].mean()),
                     "split_acc": float(acc["split_acceptance"].mean()),
                     "merge_acc": float(acc["merge_acceptance"].mean()),
                     "small_clusters": [int((np.bincount(z) <= 3).sum()) for z in last]})
        print(f"  {name:<16} gibbs_points={est.gibbs_points_:<4} R-hat K "
              f"{rows[-1]['rhat_K']:.2f} ESS K {rows[-1]['ess_K']:.0f} {secs:.1f} s",
              file=sys.stderr, flush=True)
    return rows




# fresh simulated data (not the 12 sets the defaults were developed on): (d, K, N,
# separation, Student-t degrees of freedom of the clusters or None for Gaussian)
FRESH_CASES = [(2, 8, 2000, 4.0, None), (5, 12, 3000, 4.0, None), (10, 6, 2000, 3.0, None),
               (16, 20, 5000, 4.0, None), (8, 10, 2000, 2.5, None), (2, 8, 2000, 6.0, 3.0),
               (5, 6, 2000, 6.0, 5.0)]
FRESH_SEEDS = (101, 102, 103)


DEEP_SETS = ("digits-raw", "mnist5000")
DEEP_SEEDS = 3


def _deep_row(rows, name, seed, y, method, labels, seconds, pretrain_s=0.0, **extra):
    rows.append({"data": name, "seed": seed, "method": method, **evaluate(y, labels),
                 "seconds": round(seconds, 2), "pretrain_s": round(pretrain_s, 2), **extra})
    r = rows[-1]
    print(f"  {name} seed {seed} {method}: K {r['k_found']} NMI {r['nmi']:.3f} "
          f"{r['seconds']:.1f} s", flush=True)


def run_deep(seed: int, device="cpu") -> list[dict]:
    """Deep features on raw images (``DEEP_SEEDS`` seeds from ``seed``), every method at
    its defaults: k-means on the pixels and on the pretrained MLP autoencoder's
    embedding, DEC, IDEC and DCN on that embedding's autoencoder (one pretraining
    shared), k-means on the embedding of DEPICT's own convolutional denoising
    autoencoder and DEPICT on it (all told K),
    DeepDPM on the embedding and DeepDPM end to end (K inferred).  ``seconds`` is the
    method's own fit; ``pretrain_s`` the autoencoder it starts from."""
    from bnpdeep.inference.deep import DCN, DEC, DEPICT, IDEC, Autoencoder, DeepDPMAE
    from sklearn.cluster import KMeans as SkKMeans

    rows = []
    for name in DEEP_SETS:
        X, y, shape = data.load_image_dataset(name)
        k = int(np.unique(y).size)
        for s in range(seed, seed + DEEP_SEEDS):
            add = partial(_deep_row, rows, name, s, y)
            t = time.perf_counter()
            add("k-means, pixels", SkKMeans(k, n_init=10, random_state=s).fit_predict(X),
                time.perf_counter() - t)
            ae, pre = timed_fit(Autoencoder(random_state=s, device=device), X)
            t = time.perf_counter()
            add("k-means, AE embedding", SkKMeans(k, n_init=10, random_state=s)
                .fit_predict(ae.embedding_), time.perf_counter() - t, pre)
            for cls in (DEC, IDEC, DCN):
                est, secs = timed_fit(cls(k, autoencoder=ae, random_state=s, device=device), X)
                add(cls.method_name.upper(), est.labels_, secs, pre, epochs=est.n_epochs_)
            conv = Autoencoder(architecture="conv", image_shape=shape, corruption=0.2,
                               random_state=s, device=device)
            conv, conv_pre = timed_fit(conv, X)
            t = time.perf_counter()
            add("k-means, conv AE embedding", SkKMeans(k, n_init=10, random_state=s)
                .fit_predict(conv.embedding_), time.perf_counter() - t, conv_pre)
            est, secs = timed_fit(DEPICT(k, autoencoder=conv, random_state=s, device=device), X)
            add("DEPICT", est.labels_, secs, conv_pre, epochs=est.n_epochs_)
            est, secs = timed_fit(DeepDPM(random_state=s, device=device), ae.embedding_)
            add("DeepDPM, AE embedding", est.labels_, secs, pre)
            est, secs = timed_fit(DeepDPMAE(autoencoder=ae, random_state=s, device=device), X)
            add("DeepDPM end to end", est.labels_, secs, pre,
                k_rounds=[h["K"] for h in est.history_])
    return rows


def fresh_data(d, k, n, separation, df, seed):
    """``make_mixture`` at a seed the defaults never saw; with ``df`` each point's
    offset from its cluster mean is scaled by sqrt(df / chi2_df) (Student-t clusters,
    heavier tails than the model's Gaussians).  Standardised."""
    X, y = data.make_mixture(n, d, k, separation=separation, seed=seed)
    if df is not None:
        g = np.random.default_rng(seed)
        means = np.stack([X[y == j].mean(0) for j in range(k)])
        X = means[y] + (X - means[y]) * np.sqrt(df / g.chisquare(df, size=n))[:, None]
    return (X - X.mean(0)) / X.std(0), y


def run_fresh(seed: int) -> list[dict]:
    """The sampler, moVB and BGM at their defaults on :data:`FRESH_CASES`, three data
    seeds; the sampler and moVB also with Student-t components."""
    rows = []
    for d, k, n, sep, df in FRESH_CASES:
        for data_seed in FRESH_SEEDS:
            X, y = fresh_data(d, k, n, sep, df, data_seed)
            row = {"d": d, "k_true": k, "N": n, "separation": sep, "t_df": df,
                   "data_seed": data_seed}
            for name, est in [("subcluster", SubclusterSampler(
                    random_state=seed, store_log_likelihood=False)),
                    ("subcluster-t", SubclusterSampler(
                        model=family_model("student-t", X), random_state=seed,
                        store_log_likelihood=False)),
                    ("movb", MemoizedVB(random_state=seed)),
                    ("movb-t", MemoizedVB(model=family_model("student-t", X),
                                          random_state=seed)),
                    ("bgm", BayesianGMM(truncation=max(2 * k, 30), random_state=seed))]:
                est, secs = timed_fit(est, X)
                row[name] = {"k": int(est.n_clusters_), "nmi": evaluate(y, est.labels_)["nmi"],
                             "seconds": secs}
            rows.append(row)
            print(f"  fresh d={d} K={k} t={df} seed={data_seed}: sampler K "
                  f"{row['subcluster']['k']}, bgm K {row['bgm']['k']}", file=sys.stderr)
    return rows




SECTIONS = ("accuracy", "speed", "movb-speed", "deepdpm", "scale", "mixing", "fresh",
            "highdim", "highdim-large", "deep", "hyperpriors", "distributed",
            "distributed-deepdpm")
MIXING_CHAINS, MIXING_ITERS = 4, 400


def commit() -> str:
    """The repository's commit, marked ``+changes`` when a tracked file differs from it
    (the records and the report they render excepted: a run that follows another
    in ``make bench`` measures the same code)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True,
                              text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--",
                                     ":/", ":(top,exclude)benchmarks/results",
                                     ":(top,exclude)benchmarks/README.md")
                   else "")


def record_name(section: str, args) -> str:
    """The record a section's run is saved as: the section, then what the run's
    options select (methods, sets, seed, device) where they differ from the defaults."""
    parts = [section]
    if section == "accuracy":
        if args.methods:
            parts.append("-".join(m.split()[0] for m in args.methods))
        if list(args.sets) != list(data.BENCHMARK_NAMES):
            parts.append("-".join(args.sets))
        if args.backend != "auto":
            parts.append(args.backend)
    if args.seed != 0:
        parts.append(f"seed{args.seed}")
    if section in ("accuracy", "deepdpm", "deep") and args.device != "cpu":
        parts.append(args.device.replace(":", ""))
    return "_".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sections", nargs="*",
                   help=f"sections to run, of {', '.join(SECTIONS)} (none: the runs of the "
                        "report, report.REPORT_RUNS, then the report is rendered)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="accuracy: run only these methods (names as in the table)")
    p.add_argument("--sets", nargs="+", default=data.BENCHMARK_NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=None,
                   help="sampler iterations (accuracy; default: the sampler's max_iter)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "compiled"],
                   help="accuracy: the sub-cluster sampler's backend")
    p.add_argument("--repeats", type=int, default=3, help="paired repeats (speed)")
    p.add_argument("--device", default="cpu",
                   help="DeepDPM's device (accuracy, deepdpm): cpu, cuda, auto")
    p.add_argument("--scale-n", type=int, default=1_000_000)
    p.add_argument("--scale-iters", type=int, default=20)
    p.add_argument("--results", type=Path, default=report.RESULTS,
                   help="folder of the result records (default benchmarks/results)")
    args = p.parse_args(argv)
    unknown = [x for x in args.sections if x not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if not args.sections:
        for run_args in report.REPORT_RUNS:
            main(run_args + ([] if args.results == report.RESULTS
                             else ["--results", str(args.results)]))
        report.main([])
        return
    if data.benchmark_root() is None:
        sys.exit("benchmark data not found: set BNPDEEP_DATASETS (a clone has them in "
                 "benchmarks/data)")
    meta = {"date": date.today().isoformat(), "machine": machine(), "commit": commit(),
            "command": "python benchmarks/run_benchmarks.py " + shlex.join(
                sys.argv[1:] if argv is None else argv)}
    print(f"# bnpdeep benchmarks, {meta['date']}, {meta['machine']}, commit "
          f"{meta['commit']}\n")

    def run(section, rows, **extra):
        path, record = report.save_record(record_name(section, args), section, rows,
                                          {**meta, **extra}, args.results)
        print(f"## {section} ({path})\n\n{report.render_record(record)}\n", flush=True)

    if "accuracy" in args.sections:
        run("accuracy", run_accuracy(args.sets, args.seed, args.iters, args.methods,
                                     args.backend, args.device),
            seed=args.seed, iters=args.iters or SubclusterSampler().max_iter)
    if "speed" in args.sections:
        run("speed", run_speed(args.seed, args.repeats), repeats=args.repeats)
    if "movb-speed" in args.sections:
        run("movb-speed", run_movb_speed(args.seed, args.repeats), repeats=args.repeats)
    if "deepdpm" in args.sections:
        run("deepdpm", run_deepdpm_speed(args.seed, device=args.device,
                                         repeats=args.repeats), repeats=args.repeats)
    if "mixing" in args.sections:
        run("mixing", run_mixing(args.seed, MIXING_CHAINS, MIXING_ITERS),
            chains=MIXING_CHAINS, iters=MIXING_ITERS)
    if "fresh" in args.sections:
        run("fresh", run_fresh(args.seed), data_seeds=list(FRESH_SEEDS))
    if "deep" in args.sections:
        run("deep", run_deep(args.seed, args.device), seeds=DEEP_SEEDS)
    if "highdim" in args.sections:
        run("highdim", run_highdim(args.seed, args.iters))
    if "highdim-large" in args.sections:
        run("highdim-large", run_highdim_large(args.seed, args.iters))
    if "scale" in args.sections:
        run("scale", run_scale(args.seed, args.scale_n, args.scale_iters))
    if "distributed" in args.sections:
        run("distributed", run_distributed(args.seed, args.scale_n, args.scale_iters))
    if "distributed-deepdpm" in args.sections:
        run("distributed-deepdpm", run_distributed_deepdpm(args.seed, args.repeats),
            repeats=args.repeats)
    if "hyperpriors" in args.sections:
        run("hyperpriors", run_hyperpriors(args.seed, args.sets), seed=args.seed)


if __name__ == "__main__":
    main()
