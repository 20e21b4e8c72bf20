"""Accuracy and speed benchmarks (``make bench``); results go to benchmarks/README.md.

    python benchmarks/run_benchmarks.py                       # everything
    python benchmarks/run_benchmarks.py accuracy --sets r15 wine
    python benchmarks/run_benchmarks.py speed
    python benchmarks/run_benchmarks.py accuracy --methods bgm movb svi
    python benchmarks/run_benchmarks.py movb-speed
    python benchmarks/run_benchmarks.py scale
    python benchmarks/run_benchmarks.py mixing

Each section prints a markdown table and writes JSON into bench_out/.  Every
method runs in the same process, one after the other, so ratios between them
are measured under the same load.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
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
from bnpdeep.inference.subcluster_compiled import load_kernels

from bnpdeep import data
from bnpdeep.diagnostics import k_summary
from bnpdeep.metrics import evaluate, k_within

OUT = Path("bench_out")
GIBBS_MAX_ND = 5000        # collapsed Gibbs sweeps point by point: small N x d only


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


def accuracy_methods(k_true: int, n: int, d: int, seed: int, iters: int | None,
                     backend: str = "auto", device: str = "cpu"):
    methods = {
        "kmeans (K given)": KMeans(n_clusters=k_true, random_state=seed),
        "gmm (K given)": GaussianMixtureEM(n_clusters=k_true, random_state=seed),
        "dbscan": DBSCAN(),
        "bgm": BayesianGMM(truncation=max(2 * k_true, 30), random_state=seed),
        "subcluster": SubclusterSampler(**({} if iters is None else {"max_iter": iters}),
                                        random_state=seed,
                                        store_log_likelihood=False, backend=backend),
    }
    methods["deepdpm"] = DeepDPM(random_state=seed, device=device)
    methods["deepdpm (init 3K)"] = DeepDPM(init_k=3 * k_true, random_state=seed, device=device)
    methods["movb"] = MemoizedVB(random_state=seed)
    methods["svi"] = MeanFieldSVI(random_state=seed)
    if n * d <= GIBBS_MAX_ND:
        methods["gibbs"] = CollapsedGibbs(max_iter=60, random_state=seed,
                                          store_log_likelihood=False)
    return methods


def run_accuracy(sets, seed: int, iters: int | None, only=None,
                 backend: str = "auto", device: str = "cpu") -> list[dict]:
    rows = []
    for name in sets:
        X, y = data.load_benchmark(name)
        k_true = int(np.unique(y).size)
        for method, est in accuracy_methods(k_true, X.shape[0], X.shape[1], seed, iters,
                                            backend, device).items():
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


def accuracy_table(rows) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sets = list(dict.fromkeys(r["data"] for r in rows))
    head = "| data | true K | " + " | ".join(f"{m} K / NMI / s" for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for s in sets:
        cells = []
        k_true = next(r["k_true"] for r in rows if r["data"] == s)
        for m in methods:
            r = next((r for r in rows if r["data"] == s and r["method"] == m), None)
            if r is None:
                cells.append("-")
            elif r["k"] is None:
                cells.append("failed")
            else:
                cells.append(f"{r['k']} / {r['nmi']:.3f} / {r['seconds']:.1f}")
        lines.append(f"| {s} | {k_true} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        hits = sum(r["k"] is not None and k_within(r["k"], r["k_true"]) for r in rs)
        failed = [r["data"] for r in rs if r["k"] is None]
        note = f" ({len(failed)} failed, counted as misses with NMI 0: {', '.join(failed)})" \
            if failed else ""
        lines.append(f"- {m}: K within max(1, 10%) on {hits}/{len(rs)} sets, mean NMI "
                     f"{np.mean([r['nmi'] for r in rs]):.3f}, median time "
                     f"{np.nanmedian([r['seconds'] for r in rs]):.2f} s{note}")
        if all("nmi_predict" in r for r in rs):
            lines[-1] += (f"; mean NMI of predict(X), the modal assignment given labels_'s "
                          f"clusters: {np.mean([r['nmi_predict'] for r in rs]):.3f}")
    return "\n".join(lines)


SPEED_SAMPLERS = {"subcluster (100 it)": "compiled", "subcluster torch (100 it)": "torch"}


def run_speed(seed: int, repeats: int) -> list[dict]:
    """Sub-cluster sampler (100 iterations; compiled and torch backends) against BGM on
    the same data, same run, paired repeats."""
    cases = {"synthetic N=10000 d=2 K=10": data.make_mixture(10_000, 2, 10, seed=seed),
             "a1 (N=3000, K=20)": data.load_benchmark("a1"),
             "synthetic N=20000 d=2 K=50": data.make_mixture(20_000, 2, 50, seed=seed)}
    rows = [{"case": "kernel load", "method": "compiled", "seconds": load_kernels()}]
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


def step_table(rows) -> str:
    """The samplers' per-iteration costs and time to the true K, per speed case."""
    lines = ["| case | sampler | warm-up ms/iter | exact ms/iter | iterations to true K "
             "| s to true K |", "|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows if "k_true" in r):
        for name in SPEED_SAMPLERS:
            sc = [r for r in rows if r["case"] == case and r["method"] == name]
            med = {key: np.median([r[key] for r in sc if r.get(key) is not None] or [np.nan])
                   for key in ("warmup_ms", "exact_ms", "iter_to_k", "s_to_k")}
            never = sum(r.get("iter_to_k") is None for r in sc)
            lines.append(f"| {case} | {SPEED_SAMPLERS[name]} | {med['warmup_ms']:.1f} | "
                         f"{med['exact_ms']:.1f} | {med['iter_to_k']:.0f} | "
                         f"{med['s_to_k']:.2f}"
                         + (f" ({never} of {len(sc)} never)" if never else "") + " |")
    return "\n".join(lines)


def speed_table(rows) -> str:
    lines = ["| case | sampler | sampler median s | bgm median s | speed-up | sampler K / NMI "
             "| bgm K / NMI | true K |", "|---|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows if "k_true" in r):
        bg = [r for r in rows if r["case"] == case and r["method"] == "bgm"]
        tb = np.median([r["seconds"] for r in bg])
        for name in SPEED_SAMPLERS:
            sc = [r for r in rows if r["case"] == case and r["method"] == name]
            ts = np.median([r["seconds"] for r in sc])
            # the median of the ratios of paired runs
            ratio = np.median([b["seconds"] / s["seconds"] for s, b in zip(sc, bg, strict=True)])
            lines.append(
                f"| {case} | {SPEED_SAMPLERS[name]} | {ts:.3f} | {tb:.2f} | {ratio:.1f}x | "
                f"{'/'.join(str(r['k']) for r in sc)} / "
                f"{np.median([r['nmi'] for r in sc]):.3f} | "
                f"{'/'.join(str(r['k']) for r in bg)} / "
                f"{np.median([r['nmi'] for r in bg]):.3f} | {sc[0]['k_true']} |")
    load = [r["seconds"] for r in rows if r["case"] == "kernel load"]
    if load:
        lines.append(f"\nCompiled kernels loaded (or compiled) in {load[0]:.2f} s before the "
                     "timed fits (once per process).")
    return "\n".join(lines)


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


def movb_speed_table(rows) -> str:
    def pick(name):
        return [r for r in rows if r["method"] == name]
    mv, m50, bg = pick("movb"), pick("movb (50 laps)"), pick("bgm")
    ratio = np.median([b["seconds"] / m["seconds"] for m, b in zip(mv, bg, strict=True)])
    lines = ["| method | median s | K per repeat | median NMI | laps |", "|---|---|---|---|---|"]
    for name, rs in (("movb (to convergence)", mv), ("movb (50 laps)", m50), ("bgm", bg)):
        laps = "/".join(str(r["laps"]) for r in rs) if rs[0]["laps"] is not None else "-"
        lines.append(f"| {name} | {np.median([r['seconds'] for r in rs]):.2f} | "
                     f"{'/'.join(str(r['k']) for r in rs)} | "
                     f"{np.median([r['nmi'] for r in rs]):.3f} | {laps} |")
    lines.append("")
    lines.append(f"- BGM / moVB time, median of paired ratios: {ratio:.1f}x; bnpy's 50 laps "
                 f"(99 s) / moVB's 50 laps: "
                 f"{99.0 / np.median([r['seconds'] for r in m50]):.0f}x")
    return "\n".join(lines)


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
                      target: float = 0.95, device: str = "cpu") -> dict:
    """Seconds to NMI >= target, DeepDPM against the sub-cluster sampler, and the
    E-step's rate as a fraction of the float32 matmul rate."""
    from bnpdeep.metrics import nmi

    X, y = data.make_mixture(n, d, k, seed=seed)
    out = {"N": n, "d": d, "k_true": k, "target_nmi": target, "device": device}
    # DeepDPM: wall time at the end of each epoch (the NMI evaluation is excluded)
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
    out["deepdpm"] = {"epochs_to_target": clock["hit"][0] if clock["hit"] else None,
                      "seconds_to_target": clock["hit"][1] if clock["hit"] else None,
                      "seconds_total": clock["spent"], "epochs": len(est.history_),
                      "k": int(est.n_clusters_),
                      "nmi": nmi(y, est.labels_)}
    print(f"  deepdpm N={n}: {out['deepdpm']}", file=sys.stderr, flush=True)
    # sampler: fresh fits of growing length until the target is met
    sampler = {"seconds_to_target": None}
    for iters in (10, 20, 40, 80):
        sc, secs = timed_fit(SubclusterSampler(max_iter=iters, random_state=seed,
                                               store_log_likelihood=False), X)
        score = nmi(y, sc.labels_)
        print(f"  subcluster {iters} it: {secs:.1f} s NMI {score:.3f} K={sc.n_clusters_}",
              file=sys.stderr, flush=True)
        sampler = {"iters": iters, "seconds": secs, "nmi": score, "k": int(sc.n_clusters_),
                   "seconds_to_target": secs if score >= target else None}
        if score >= target:
            break
    out["subcluster"] = sampler
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


MIXING_SETS = ("ecoli", "wine", "wdbc")     # the benchmark sets with d >= 7 besides g2mg


def run_mixing(seed: int, chains: int, iters: int) -> list[dict]:
    """Mixing of the sampler at its defaults: ``chains`` chains from K=1 on the demo
    data (digits, PCA 10) and on the benchmark sets with d >= 7; R-hat (rank-
    normalised) and bulk ESS of K and lp, the chains' mean K and log joint, and the
    clusters of at most 3 points in each chain's last draw; the chains run in one
    worker process per core (``n_jobs=-1``), and the seconds are wall-clock, worker
    start-up included.  The demo data also run
    without the collapsed Gibbs updates (``gibbs_points=0``), for contrast."""
    digits = data.demo_data()[0]
    cases = [("digits (PCA 10)", digits, {}), ("digits (PCA 10)", digits, {"gibbs_points": 0})]
    cases += [(name, data.load_benchmark(name)[0], {}) for name in MIXING_SETS
              if data.benchmark_root() is not None]
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


def mixing_table(rows) -> str:
    out = ["| data | gibbs_points | seconds | R-hat K | ESS K | R-hat lp | ESS lp | "
           "split / merge acceptance | mean K per chain | mean lp | clusters of <= 3 "
           "points (last draw per chain) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['data']} | {r['gibbs_points']} | {r['seconds']:.1f} | "
                   f"{r['rhat_K']:.2f} | {r['ess_K']:.0f} | {r['rhat_lp']:.2f} | "
                   f"{r['ess_lp']:.0f} | {r['split_acc']:.3f} / {r['merge_acc']:.3f} | "
                   f"{', '.join(f'{k:g}' for k in r['k_per_chain'])} | {r['lp_mean']:.1f} | "
                   f"{', '.join(map(str, r['small_clusters']))} |")
    return "\n".join(out)


# fresh simulated data (not the 12 sets the defaults were developed on): (d, K, N,
# separation, Student-t degrees of freedom of the clusters or None for Gaussian)
FRESH_CASES = [(2, 8, 2000, 4.0, None), (5, 12, 3000, 4.0, None), (10, 6, 2000, 3.0, None),
               (16, 20, 5000, 4.0, None), (8, 10, 2000, 2.5, None), (2, 8, 2000, 6.0, 3.0),
               (5, 6, 2000, 6.0, 5.0)]
FRESH_SEEDS = (101, 102, 103)


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
    """The sampler and BGM at their defaults on :data:`FRESH_CASES`, three data seeds."""
    rows = []
    for d, k, n, sep, df in FRESH_CASES:
        for data_seed in FRESH_SEEDS:
            X, y = fresh_data(d, k, n, sep, df, data_seed)
            row = {"d": d, "k_true": k, "N": n, "separation": sep, "t_df": df,
                   "data_seed": data_seed}
            for name, est in [("subcluster", SubclusterSampler(
                    random_state=seed, store_log_likelihood=False)),
                    ("bgm", BayesianGMM(truncation=max(2 * k, 30), random_state=seed))]:
                est, secs = timed_fit(est, X)
                row[name] = {"k": int(est.n_clusters_), "nmi": evaluate(y, est.labels_)["nmi"],
                             "seconds": secs}
            rows.append(row)
            print(f"  fresh d={d} K={k} t={df} seed={data_seed}: sampler K "
                  f"{row['subcluster']['k']}, bgm K {row['bgm']['k']}", file=sys.stderr)
    return rows


def fresh_table(rows) -> str:
    out = ["| clusters | d | N | true K | separation | sampler K (3 seeds) | sampler NMI | "
           "BGM K | BGM NMI | sampler / BGM median s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["d"], r["k_true"], r["N"], r["separation"], r["t_df"]), []).append(r)
    for (d, k, n, sep, df), rs in groups.items():
        kind = "Gaussian" if df is None else f"Student-t, {df:g} df"
        out.append(
            f"| {kind} | {d} | {n} | {k} | {sep:g} | "
            f"{'/'.join(str(r['subcluster']['k']) for r in rs)} | "
            f"{np.mean([r['subcluster']['nmi'] for r in rs]):.3f} | "
            f"{'/'.join(str(r['bgm']['k']) for r in rs)} | "
            f"{np.mean([r['bgm']['nmi'] for r in rs]):.3f} | "
            f"{np.median([r['subcluster']['seconds'] for r in rs]):.2f} / "
            f"{np.median([r['bgm']['seconds'] for r in rs]):.2f} |")
    return "\n".join(out)


SECTIONS = ("accuracy", "speed", "movb-speed", "deepdpm", "scale", "mixing", "fresh")
MIXING_CHAINS, MIXING_ITERS = 4, 400


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sections", nargs="*",
                   default=list(SECTIONS), choices=SECTIONS)
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
    args = p.parse_args(argv)
    if data.benchmark_root() is None:
        sys.exit("benchmark data not found: set BNPDEEP_DATASETS or place it in "
                 "../shared/datasets")
    OUT.mkdir(exist_ok=True)
    header = f"{date.today().isoformat()}, {machine()}"
    print(f"# bnpdeep benchmarks, {header}\n")
    if "accuracy" in args.sections:
        rows = run_accuracy(args.sets, args.seed, args.iters, args.methods, args.backend,
                            args.device)
        name = "accuracy.json" if not args.methods else "accuracy_" + "_".join(
            m.split()[0] for m in args.methods) + ".json"
        (OUT / name).write_text(json.dumps(rows, indent=1))
        iters = args.iters or SubclusterSampler().max_iter
        print(f"## Accuracy (standardised, init_k=1, seed {args.seed}, sampler "
              f"{iters} iterations)\n\n{accuracy_table(rows)}\n")
    if "speed" in args.sections:
        rows = run_speed(args.seed, args.repeats)
        (OUT / "speed.json").write_text(json.dumps(rows, indent=1))
        print(f"## Speed (paired runs, {args.repeats} repeats)\n\n{speed_table(rows)}\n")
        print(f"Sampler iterations (medians over the repeats)\n\n{step_table(rows)}\n")
    if "movb-speed" in args.sections:
        rows = run_movb_speed(args.seed, args.repeats)
        (OUT / "movb_speed.json").write_text(json.dumps(rows, indent=1))
        print(f"## moVB speed (N=10000, d=2, K=10, 5 batches, paired runs, {args.repeats} "
              f"repeats)\n\n{movb_speed_table(rows)}\n")
    if "deepdpm" in args.sections:
        res = run_deepdpm_speed(args.seed, device=args.device)
        (OUT / "deepdpm_speed.json").write_text(json.dumps(res, indent=1))
        dd, sc, es = res["deepdpm"], res["subcluster"], res["estep"]
        print(f"## DeepDPM speed (N={res['N']}, d={res['d']}, K={res['k_true']}, "
              f"DeepDPM on {res['device']})\n\n"
              f"- DeepDPM: NMI >= {res['target_nmi']} after {dd['epochs_to_target']} epochs, "
              f"{dd['seconds_to_target']} s; all {dd['epochs']} epochs "
              f"{dd['seconds_total']:.1f} s, K "
              f"{dd['k']}, NMI {dd['nmi']:.3f}\n"
              f"- sub-cluster sampler: {sc.get('iters')} iterations, {sc.get('seconds', 0):.1f} s, "
              f"NMI {sc.get('nmi', 0):.3f}, K {sc.get('k')} (target met: "
              f"{sc['seconds_to_target'] is not None})\n"
              f"- E-step (float64, K={es['k']}): {es['seconds']:.3f} s per pass, "
              f"{es['gflops']:.1f} GFLOP/s = {100 * es['fraction_of_matmul']:.1f}% of the "
              f"float32 matmul rate ({es['matmul_f32_gflops']:.1f} GFLOP/s)\n")
    if "mixing" in args.sections:
        rows = run_mixing(args.seed, MIXING_CHAINS, MIXING_ITERS)
        (OUT / "mixing.json").write_text(json.dumps(rows, indent=1))
        print(f"## Mixing at the defaults ({MIXING_CHAINS} chains of {MIXING_ITERS} "
              f"iterations from K=1, seed {args.seed})\n\n{mixing_table(rows)}\n")
    if "fresh" in args.sections:
        rows = run_fresh(args.seed)
        (OUT / "fresh.json").write_text(json.dumps(rows, indent=1))
        print(f"## Fresh simulated data (data seeds {', '.join(map(str, FRESH_SEEDS))}, "
              f"method seed {args.seed})\n\n{fresh_table(rows)}\n")
    if "scale" in args.sections:
        res = run_scale(args.seed, args.scale_n, args.scale_iters)
        (OUT / "scale.json").write_text(json.dumps(res, indent=1))
        print(f"## Scale\n\nN={res['N']}, d=16, K=32: {res['s_per_iter']:.2f} s per iteration "
              f"over {res['iters']} iterations, K found {res['k']}, NMI {res['nmi']:.3f}, peak "
              f"RSS {res['peak_rss_gib']:.2f} GiB ({res['rss_before_fit_gib']:.2f} GiB before "
              f"the fit, data included)\n")


if __name__ == "__main__":
    main()
