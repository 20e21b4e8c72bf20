"""The benchmark report: result records (JSON) in, ``benchmarks/README.md`` out.

``run_benchmarks.py`` saves each section's run as one record in
``benchmarks/results/NAME.json``: the rows it measured and how (date, machine,
commit, the exact command).  This module renders those records as markdown tables
and fills them into ``benchmarks/report_template.md``, whose prose says what the
tables show:

    python benchmarks/report.py            # rewrite benchmarks/README.md
    python benchmarks/report.py --check    # exit 1 if README.md is not the rendering

In the template, a line ``{{result NAME}}`` becomes the record's provenance line and
its table; ``{{seeds NAME NAME ...}}`` becomes a per-seed summary of accuracy
records.  The README is never edited by hand: edit the template or rerun a section.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from bnpdeep.data import BENCHMARK_NAMES
from bnpdeep.metrics import k_within

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TEMPLATE = HERE / "report_template.md"
README = HERE / "README.md"
PAPER_SETS = ("mnist_umap", "fashion_umap")
# The runs whose records the template shows, in the order ``make bench`` runs them
# (``python benchmarks/run_benchmarks.py --report``).
REPORT_RUNS = (
    ["accuracy", "--methods", "subcluster", "bgm"],
    ["accuracy", "--methods", "subcluster", "bgm", "--seed", "1"],
    ["accuracy", "--methods", "subcluster", "bgm", "--seed", "2"],
    ["fresh"],
    ["accuracy", "--methods", "subcluster-t"],
    ["accuracy", "--methods", "subcluster-t", "--seed", "1"],
    ["accuracy", "--methods", "subcluster-t", "--seed", "2"],
    ["hyperpriors"],
    ["accuracy", "--methods", "kmeans (K given)", "gmm (K given)", "dbscan", "gibbs"],
    ["accuracy", "--methods", "deepdpm"],
    *(["accuracy", "--methods", "deepdpm", "--seed", str(s)] for s in range(1, 5)),
    ["accuracy", "--methods", "deepdpm-t"],
    *(["accuracy", "--methods", "deepdpm-t", "--seed", str(s)] for s in range(1, 5)),
    ["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "deepdpm",
     "subcluster", "bgm"],
    *(["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "deepdpm",
       "--seed", str(s)] for s in range(1, 5)),
    ["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "deepdpm-t"],
    *(["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "deepdpm-t",
       "--seed", str(s)] for s in range(1, 5)),
    ["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "subcluster-t"],
    *(["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "subcluster-t",
       "--seed", str(s)] for s in range(1, 3)),
    ["accuracy", "--methods", "movb", "svi"],
    ["accuracy", "--methods", "movb", "movb-t"],
    ["accuracy", "--methods", "svi", "svi-t"],
    ["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "movb", "movb-t"],
    *(["accuracy", "--sets", "mnist_umap", "fashion_umap", "--methods", "movb", "movb-t",
       "--seed", str(s)] for s in range(1, 3)),
    *(["accuracy", "--methods", "movb", "movb-t", "--seed", str(s)] for s in range(1, 5)),
    ["movb-speed", "--repeats", "5"],
    ["speed", "--repeats", "5"],
    ["mixing"],
    ["highdim"],
    ["highdim-large", "--iters", "100"],
    ["deep"],
    ["deepdpm", "--repeats", "3"],
    ["scale"],
    ["distributed"],
    ["distributed-deepdpm", "--repeats", "3"],
)
_MARKER = re.compile(r"^\{\{(result|seeds) ([^}]+)\}\}$")


# -- records ---------------------------------------------------------------------------
def save_record(name: str, section: str, rows, meta: dict, folder: Path = RESULTS
                ) -> tuple[Path, dict]:
    """Write one section's run as ``folder/NAME.json`` (``meta``: date, machine, commit,
    command); returns the path and the record written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    record = {"name": name, "section": section, **meta, "rows": rows}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path, record


def load_record(name: str, folder: Path = RESULTS) -> dict:
    path = folder / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no benchmark record {path}: run the section that makes "
                                f"it (see the template's command for it)")
    return json.loads(path.read_text())


def provenance(record: dict) -> str:
    return (f"{record['date']}, commit {record['commit']}, {record['machine']}: "
            f"`{record['command']}`")


SPEED_SAMPLERS = {"subcluster (100 it)": "compiled", "subcluster torch (100 it)": "torch"}


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


def fresh_table(rows) -> str:
    student = all("subcluster-t" in r for r in rows)
    extra = " t-model K | t-model NMI | t-model median s |" if student else ""
    out = ["| clusters | d | N | true K | separation | sampler K (3 seeds) | sampler NMI | "
           "BGM K | BGM NMI | sampler / BGM median s |" + extra,
           "|---|---|---|---|---|---|---|---|---|---|" + ("---|" * 3 if student else "")]
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
            f"{np.median([r['bgm']['seconds'] for r in rs]):.2f} |"
            + (f" {'/'.join(str(r['subcluster-t']['k']) for r in rs)} | "
               f"{np.mean([r['subcluster-t']['nmi'] for r in rs]):.3f} | "
               f"{np.median([r['subcluster-t']['seconds'] for r in rs]):.2f} |"
               if student else ""))
    return "\n".join(out) + _fresh_extra(rows, groups)


def _fresh_extra(rows, groups) -> str:
    """moVB's columns (Gaussian and Student-t components), where the record has them."""
    names = [m for m in ("movb", "movb-t") if all(m in r for r in rows)]
    if not names:
        return ""
    out = ["", "", "| clusters | d | N | true K | " + " | ".join(
        f"{m} K (3 seeds) | {m} NMI | {m} median s" for m in names) + " |",
           "|---|---|---|---|" + "---|---|---|" * len(names)]
    for (d, k, n, _, df), rs in groups.items():
        kind = "Gaussian" if df is None else f"Student-t, {df:g} df"
        cells = [f"{'/'.join(str(r[m]['k']) for r in rs)} | "
                 f"{np.mean([r[m]['nmi'] for r in rs]):.3f} | "
                 f"{np.median([r[m]['seconds'] for r in rs]):.2f}" for m in names]
        out.append(f"| {kind} | {d} | {n} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def highdim_table(rows) -> str:
    """Per case: each method's K, NMI and seconds, and BGM's time over the sampler's."""
    out = ["| N | d | true K | cluster rank | method | iterations | K | NMI | s | BGM s / s "
           "| log p(X, z): truth / found |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bgm = next(b for b in rows if b["method"] == "bgm" and
                   (b["N"], b["d"], b["rank"]) == (r["N"], r["d"], r["rank"]))
        out.append(f"| {r['N']} | {r['d']} | {r['k_true']} | "
                   f"{'full' if r['rank'] is None else r['rank']} | {r['method']} | "
                   f"{r['iters'] if r['method'].startswith('subcluster') else '-'} | "
                   f"{r['k']} | {r['nmi']:.3f} | {r['seconds']:.1f} | "
                   f"{bgm['seconds'] / r['seconds']:.1f}x | "
                   + (f"{r['lp_truth']:.0f} / {r['lp_found']:.0f} |" if "lp_truth" in r
                      else "- |"))
    return "\n".join(out)


def highdim_large_text(rows) -> str:
    r = rows[0]
    return (f"N={r['N']}, d={r['d']}, K={r['k_true']} (rank {r['rank']}), {r['backend']} "
            f"backend: {r['iters']} iterations in {r['seconds']:.0f} s "
            f"({r['s_per_iter']:.2f} s per iteration), K found {r['k']}, NMI {r['nmi']:.3f}; "
            f"K within tolerance from iteration {r['iter_to_k'] or 'never'}; K every "
            f"{max(1, r['iters'] // 20)} iterations: "
            f"{', '.join(map(str, r['k_trace']))}")


def paper_table(rows) -> str:
    """Accuracy on the paper's embeddings: one row per set and method, with ARI and ACC."""
    out = ["| data | method | K | NMI | ARI | ACC | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["k"] is None:
            out.append(f"| {r['data']} | {r['method']} | failed | | | | |")
            continue
        out.append(f"| {r['data']} | {r['method']} | {r['k']} | {r['nmi']:.3f} | "
                   f"{r['ari']:.3f} | {r['acc']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(out)


def paper_seeds_table(records) -> str:
    """Per set and method on the paper's embeddings: K / NMI at each seed, then the
    medians over the seeds of K, NMI, ARI, ACC and seconds."""
    out = ["| data | method | " + " | ".join(f"seed {rec['seed']}" for rec in records)
           + " | median K | median NMI | median ARI | median ACC | median s |",
           "|---|---|" + "---|" * (len(records) + 5)]
    keys = dict.fromkeys((r["data"], r["method"]) for rec in records for r in rec["rows"])
    for data_name, m in keys:
        cells, runs = [], []
        for rec in records:
            rs = [r for r in rec["rows"] if (r["data"], r["method"]) == (data_name, m)
                  and r["k"] is not None]
            cells.append(f"{rs[0]['k']} / {rs[0]['nmi']:.3f}" if rs else "-")
            runs += rs
        med = {f: np.median([r[f] for r in runs]) for f in ("k", "nmi", "ari", "acc",
                                                           "seconds")}
        out.append(f"| {data_name} | {m} | " + " | ".join(cells)
                   + f" | {med['k']:g} | {med['nmi']:.3f} | {med['ari']:.3f} | "
                   f"{med['acc']:.3f} | {med['seconds']:.1f} |")
    return "\n".join(out)


def seeds_table(records) -> str:
    """Per seed and method of accuracy records (on the paper's embeddings:
    :func:`paper_seeds_table`): sets with K within tolerance, mean NMI;
    with three records or more, also per set the median K and median NMI over the
    seeds, counted the same way."""
    if all(r["data"] in PAPER_SETS for rec in records for r in rec["rows"]):
        return paper_seeds_table(records)
    methods = list(dict.fromkeys(r["method"] for rec in records for r in rec["rows"]))
    median = len(records) >= 3
    out = ["| method | " + " | ".join(f"seed {rec['seed']}" for rec in records)
           + (" | per-set medians over the seeds |" if median else " |"),
           "|---|" + "---|" * (len(records) + median)]
    for m in methods:
        cells = []
        for rec in records:
            rs = [r for r in rec["rows"] if r["method"] == m]
            if not rs:                 # the method did not run at this seed
                cells.append("-")
                continue
            hits = sum(r["k"] is not None and k_within(r["k"], r["k_true"]) for r in rs)
            cells.append(f"{hits}/{len(rs)}, NMI {np.mean([r['nmi'] for r in rs]):.3f}")
        if median:
            per_set: dict = {}
            for rec in records:
                for r in rec["rows"]:
                    if r["method"] == m and r["k"] is not None:
                        per_set.setdefault(r["data"], []).append(r)
            hits = sum(k_within(np.median([r["k"] for r in rs]), rs[0]["k_true"])
                       for rs in per_set.values())
            nmi = np.mean([np.median([r["nmi"] for r in rs]) for rs in per_set.values()])
            cells.append(f"{hits}/{len(per_set)}, NMI {nmi:.3f}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def deepdpm_text(res: dict) -> str:
    dd, sc, es = res["deepdpm"], res["subcluster"], res["estep"]
    return (f"- DeepDPM on {res.get('device', 'cpu')}: NMI >= {res['target_nmi']} after "
            f"{dd['epochs_to_target']} epochs, {_secs(dd['seconds_to_target'])}; stopped after "
            f"{dd['epochs']} epochs, {dd['seconds_total']:.1f} s, K {dd['k']}, NMI "
            f"{dd['nmi']:.3f}\n"
            f"- sub-cluster sampler: {sc.get('iters')} iterations, "
            f"{sc.get('seconds', 0):.1f} s, NMI {sc.get('nmi', 0):.3f}, K {sc.get('k')} "
            f"(target met: {sc['seconds_to_target'] is not None})\n"
            f"- DeepDPM's time to the target / the sampler's: "
            f"{_ratio(dd['seconds_to_target'], sc['seconds_to_target'])}\n"
            + _rounds_text(res.get("rounds")) + _first_fit_text(res) +
            f"- E-step (float64, K={es['k']}): {es['seconds']:.3f} s per pass, "
            f"{es['gflops']:.1f} GFLOP/s = {100 * es['fraction_of_matmul']:.1f}% of the "
            f"float32 matmul rate ({es['matmul_f32_gflops']:.1f} GFLOP/s)")


def _first_fit_text(res: dict) -> str:
    """The one-time seconds of a process's first fit, which the rounds exclude."""
    first = res.get("first_fit_extra_seconds")
    if not first:
        return ""
    return (f"- not in the rounds: a process's first fit takes {first['deepdpm']:.1f} s "
            f"longer for DeepDPM and {first['subcluster']:.1f} s for the sampler (one-time "
            f"imports and caches; each method fits a 2,000-row slice twice first)\n")


def _rounds_text(rounds) -> str:
    """The paired rounds of a timed section, when it has more than one."""
    if not rounds or len(rounds) < 2:
        return ""
    pairs = ", ".join(f"{_secs(a)} / {_secs(b)}" for a, b in rounds)
    return (f"- {len(rounds)} paired rounds (DeepDPM / sampler seconds to the target; the "
            f"figures above are their medians): {pairs}\n")


def scale_text(res: dict) -> str:
    return (f"N={res['N']}, d={res['d']}, K={res['k_true']}: {res['s_per_iter']:.2f} s per "
            f"iteration over {res['iters']} iterations, K found {res['k']}, NMI "
            f"{res['nmi']:.3f}, peak RSS {res['peak_rss_gib']:.2f} GiB "
            f"({res['rss_before_fit_gib']:.2f} GiB before the fit, data included)")


# the network assumed for the projection to many machines (not measured here)
PROJECTION_MACHINES, PROJECTION_ROWS = 50, 10 ** 8
LINK_BYTES_PER_S, LINK_LATENCY_S = 1.25e9, 50e-6      # 10 Gb/s, 50 us per message


def distributed_table(rows) -> str:
    """Per run: seconds per iteration, collectives and bytes per iteration, K, NMI; then
    the time per iteration at 1e8 rows over 50 machines projected from the measured
    one-rank compute and rank 0's collectives (ring all-reduce: 2 (R - 1) messages of
    B / R bytes each way per collective)."""
    out = ["| method | ranks | s / iteration | kept kernel s / iteration (median) | K | NMI "
           "| collectives / iteration | MB reduced / iteration | s in collectives / "
           "iteration |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comm = ("- | - | -" if "bytes_per_iter" not in r else
                f"{r['collectives_per_iter']:.0f} | {r['bytes_per_iter'] / 1e6:.2f} | "
                f"{r['collective_s_per_iter']:.3f}")
        out.append(f"| {r['method']} | {r['ranks']} | {r['s_per_iter']:.2f} | "
                   f"{r['s_per_exact_iter']:.2f} | {r['k']} | {r['nmi']:.3f} | {comm} |")
    one = next((r for r in rows if r["method"] == "data-parallel, 1 rank"), None)
    two = next((r for r in rows if r["ranks"] == 2), None)
    if one is None or two is None:
        return "\n".join(out)
    m, n_rows = PROJECTION_MACHINES, PROJECTION_ROWS
    compute = one["s_per_exact_iter"] * (n_rows / m) / one["N"]
    per_coll = 2 * (m - 1) * LINK_LATENCY_S
    comm = (two["collectives_per_iter"] * per_coll
            + 2 * (m - 1) / m * two["bytes_per_iter"] / LINK_BYTES_PER_S)
    out += ["", f"Projected on paper from these figures: {n_rows:.0e} rows over {m} machines "
            f"like this one ({n_rows // m:,} rows each) take about {compute:.1f} s of compute "
            f"per kept iteration (the one-rank kernel's time, scaled by rows), plus "
            f"{comm:.2f} s of communication ({two['collectives_per_iter']:.0f} ring "
            f"all-reduces at {2 * (m - 1)} messages of {LINK_LATENCY_S * 1e6:.0f} us, and "
            f"{two['bytes_per_iter'] / 1e6:.2f} MB at {LINK_BYTES_PER_S * 8 / 1e9:.0f} Gb/s): "
            f"communication {comm / (compute + comm):.0%} of {compute + comm:.1f} s. The "
            "network figures are assumptions; the bytes do not grow with N (slot "
            "layout), and the number of collectives per iteration is bounded whatever N and R."]
    return "\n".join(out)


def distributed_deepdpm_table(rows) -> str:
    """Per method: median seconds over the rounds (and each round's), epochs, seconds
    per epoch, K, NMI, and rank 0's collectives, megabytes reduced and seconds in
    collectives per epoch (of the last round)."""
    out = ["| method | ranks | seconds (median) | each round | epochs | s / epoch | K | NMI "
           "| collectives / epoch | MB reduced / epoch | s in collectives / epoch |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comm = ("- | - | -" if "bytes_per_epoch" not in r else
                f"{r['collectives_per_epoch']:.0f} | {r['bytes_per_epoch'] / 1e6:.2f} | "
                f"{r['collective_s_per_epoch']:.3f}")
        each = ", ".join(f"{t:.1f}" for t in r.get("seconds_runs", [r["seconds"]]))
        out.append(f"| {r['method']} | {r['ranks']} | {r['seconds']:.1f} | {each} | "
                   f"{r['epochs']} | "
                   f"{r['s_per_epoch']:.2f} | {r['k']} | {r['nmi']:.3f} | {comm} |")
    return "\n".join(out)


def deep_table(rows) -> str:
    """Per image set and method: K per seed, median NMI / ARI / ACC, median seconds of the
    method's own fit and of the autoencoder pretraining it starts from; then the deep
    features issue's targets, as measured."""
    out = []
    for name in dict.fromkeys(r["data"] for r in rows):
        rs = [r for r in rows if r["data"] == name]
        seeds = sorted({r["seed"] for r in rs})
        out += [f"{name} (true K {rs[0]['k_true']}; seeds {', '.join(map(str, seeds))}):", "",
                "| method | K per seed | NMI | ARI | ACC | fit s | pretraining s |",
                "|---|---|---|---|---|---|---|"]
        by = {}
        for r in rs:
            by.setdefault(r["method"], []).append(r)
        for m, ms in by.items():
            med = {key: float(np.median([r[key] for r in ms]))
                   for key in ("nmi", "ari", "acc", "seconds", "pretrain_s")}
            out.append(f"| {m} | {'/'.join(str(r['k_found']) for r in ms)} | {med['nmi']:.3f} | "
                       f"{med['ari']:.3f} | {med['acc']:.3f} | {med['seconds']:.1f} | "
                       + (f"{med['pretrain_s']:.1f} |" if med["pretrain_s"] else "- |"))
        e2e, base = by.get("DeepDPM end to end"), by.get("k-means, AE embedding")
        if e2e and base:
            k = rs[0]["k_true"]
            hits = sum(abs(r["k_found"] - k) <= 2 for r in e2e)
            margin = (float(np.median([r["nmi"] for r in e2e]))
                      - float(np.median([r["nmi"] for r in base])))
            total = float(np.median([r["seconds"] + r["pretrain_s"] for r in e2e]))
            rounds = "; ".join(" > ".join(map(str, r["k_rounds"])) for r in e2e)
            out += ["", f"- DeepDPM end to end: K within {k} +- 2 on {hits}/{len(e2e)} seeds "
                    f"(K per round: {rounds}); "
                    f"median NMI {margin:+.3f} against k-means on the pretrained embedding "
                    f"told K (target +0.03); median {total:.0f} s with the pretraining"]
        depict, conv = by.get("DEPICT"), by.get("k-means, conv AE embedding")
        if depict and conv:
            margin = (float(np.median([r["nmi"] for r in depict]))
                      - float(np.median([r["nmi"] for r in conv])))
            out.append(f"- DEPICT: median NMI {margin:+.3f} against k-means on the embedding "
                       "of its own pretrained convolutional autoencoder")
        out.append("")
    return "\n".join(out).rstrip()


def hyperpriors_table(rows) -> str:
    """Per data set and method: K and NMI under the fixed prior -> under the
    hierarchical model, and the hierarchical fits' psi_scale; then per method and
    model the count of sets with K within max(1, 10%) and the mean NMI (the 12
    benchmark sets only)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sets = list(dict.fromkeys(r["data"] for r in rows))

    def get(s, m, model):
        return next(r for r in rows if (r["data"], r["method"], r["model"]) == (s, m, model))

    lines = ["| data | true K | " + " | ".join(f"{m} K: fixed -> hier. | {m} NMI"
                                             for m in methods)
             + " | psi_scale (" + " / ".join(methods) + ") |",
             "|" + "---|" * (2 * len(methods) + 3)]
    for s in sets:
        cells = []
        for m in methods:
            f, h = get(s, m, "fixed"), get(s, m, "hierarchical")
            cells.append(f"{_k(f)} -> {_k(h)} | {f['nmi']:.3f} -> {h['nmi']:.3f}")
        scales = " / ".join(_scale(get(s, m, "hierarchical")) for m in methods)
        lines.append(f"| {s} | {get(s, methods[0], 'fixed')['k_true']} | "
                     + " | ".join(cells) + f" | {scales} |")
    lines.append("")
    bench = [s for s in sets if s in BENCHMARK_NAMES]
    for m in methods:
        parts = []
        for model in ("fixed", "hierarchical"):
            rs = [get(s, m, model) for s in bench]
            hits = sum(r["k"] is not None and k_within(r["k"], r["k_true"]) for r in rs)
            parts.append(f"{model} {hits}/{len(rs)}, mean NMI "
                         f"{np.mean([r['nmi'] for r in rs]):.3f}, median "
                         f"{np.nanmedian([r['seconds'] for r in rs]):.1f} s")
        lines.append(f"- {m} on the {len(bench)} benchmark sets: " + "; ".join(parts))
    failed = [f"{r['method']} on {r['data']} ({r['model']}): {r['error']}"
              for r in rows if r["k"] is None]
    warned = [f"{r['method']} on {r['data']}: {', '.join(r['warned'])}"
              for r in rows if r.get("warned")]
    if failed:
        lines.append("- failed (counted as misses with NMI 0): " + "; ".join(failed))
    if warned:
        lines.append("- warned that a hyperparameter collapsed (a conditional without a "
                     "maximum or proper law): " + "; ".join(warned))
    return "\n".join(lines)


def _k(r) -> str:
    return "failed" if r["k"] is None else str(r["k"])


def _scale(r) -> str:
    v = r["hyper"].get("psi_scale")
    return "-" if v is None else f"{v:.3g}"


def _secs(s) -> str:
    return "never" if s is None else f"{s:.1f} s"


def _ratio(a, b) -> str:
    return "-" if a is None or b is None else f"{a / b:.1f}x"


def speed_tables(rows) -> str:
    return (f"{speed_table(rows)}\n\nPer iteration (medians over the repeats):\n\n"
            f"{step_table(rows)}")


def accuracy_tables(rows) -> str:
    return paper_table(rows) if all(r["data"] in PAPER_SETS for r in rows) \
        else accuracy_table(rows)


RENDERERS = {"accuracy": accuracy_tables, "speed": speed_tables,
             "movb-speed": movb_speed_table, "mixing": mixing_table, "fresh": fresh_table,
             "deepdpm": deepdpm_text, "scale": scale_text, "highdim": highdim_table,
             "highdim-large": highdim_large_text, "deep": deep_table,
             "hyperpriors": hyperpriors_table, "distributed": distributed_table,
             "distributed-deepdpm": distributed_deepdpm_table}


def render_record(record: dict) -> str:
    """A record's provenance line and its table."""
    return f"{provenance(record)}\n\n{RENDERERS[record['section']](record['rows'])}"


def render(template: str, folder: Path = RESULTS) -> str:
    """The template with every marker line replaced by its rendering."""
    out = []
    for line in template.split("\n"):
        m = _MARKER.match(line.strip())
        if m is None:
            out.append(line)
        elif m.group(1) == "result":
            out.append(render_record(load_record(m.group(2).strip(), folder)))
        else:
            records = [load_record(n, folder) for n in m.group(2).split()]
            out.append("\n".join(provenance(r) for r in records) + "\n\n"
                       + seeds_table(records))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="exit 1 if README.md differs from the rendering")
    args = p.parse_args(argv)
    text = render(TEMPLATE.read_text())
    if args.check:
        if README.read_text() != text:
            print("benchmarks/README.md is not the rendering of the template and records: "
                  "run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
