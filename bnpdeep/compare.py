"""Amortized, sampling, variational and classical inference side by side on one data set.

``compare(X, methods, y)`` fits every method on the same data (and, for the
Bayesian ones, the same default model), and tabulates what a statistician
checks: K found (posterior mean and 90% interval where there is a posterior),
NMI / ARI / ACC against labels, seconds, ELPD-LOO with its standard error and
the ``az.compare`` ranking, R-hat and bulk ESS of K and lp across chains for
the samplers, and the count of Pareto k > 0.7.  With ``out`` it also writes
``report.md``, a self-contained ``report.html``, the figures as PNG and
``idata_<method>.nc`` for every Bayesian method.

Every number of a Bayesian method's row is computed from its InferenceData --
the object that is saved -- so reloading ``idata_<method>.nc`` and recomputing
gives the same row (tested).
"""

from __future__ import annotations

import base64
import html
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_METHODS = ("deepdpm", "subcluster", "movb", "bgm", "kmeans")


@dataclass
class Comparison:
    """What :func:`compare` returns: the table, each method's InferenceData and fitted
    estimator, and the report's paths (when written)."""

    table: "object"                     # pandas.DataFrame, one row per method
    idata: dict = field(default_factory=dict)
    estimators: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    report: dict = field(default_factory=dict)
    compare_df: "object" = None         # az.compare's table (two or more Bayesian methods)

    def __iter__(self):                 # df, idata = compare(...)
        return iter((self.table, self.idata))


def loo(idata):
    """PSIS-LOO of a fit with pointwise log-likelihood (``az.loo``), or None."""
    import arviz as az

    if "log_likelihood" not in idata.groups():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.loo(idata, pointwise=True)


def idata_row(idata, hdi_prob: float = 0.9, loo_result=None) -> dict:
    """The Bayesian columns of a row, from InferenceData alone: K mean and interval,
    ELPD-LOO and its SE, Pareto k > 0.7 count, and (several chains) R-hat and bulk ESS
    of K and lp.  ``loo_result``: the idata's :func:`loo`, when already computed."""
    from bnpdeep.diagnostics import k_summary

    row = dict(k_summary(idata, hdi_prob))
    loo_result = loo(idata) if loo_result is None else loo_result
    if loo_result is not None:
        row["elpd_loo"] = float(loo_result.elpd_loo)
        row["elpd_se"] = float(loo_result.se)
        row["pareto_k_bad"] = int((np.asarray(loo_result.pareto_k) > 0.7).sum())
    return row


def _trace(est):
    """(unit, K per step) of a fitted estimator; per chain for samplers."""
    if hasattr(est, "chains_"):
        return "iteration", [list(c.k_trace) for c in est.chains_]
    hist = getattr(est, "history_", None)
    if hist:
        unit = "epoch" if "epoch" in hist[0] else "lap"
        return unit, [h["K"] for h in hist]
    return None


def compare(X, methods=DEFAULT_METHODS, y=None, *, chains: int = 4, seed: int = 0,
            iters: dict | None = None, out=None, progress: bool = True,
            data_name: str = "data", jobs: int = 1, family: str = "full") -> Comparison:
    """Fit ``methods`` (names from :data:`bnpdeep.METHODS`) on X and compare them.

    Methods that need K (k-means, EM-GMM) are told the true K when labels ``y`` are
    given, else the K of the first Bayesian method that ran (the report says which).
    MCMC methods run ``chains`` chains, in ``jobs`` worker processes (their
    ``n_jobs``; -1: one per core; the draws do not depend on it).  A method that
    fails gets a row with its error; the others still run.  ``iters``: method ->
    iterations / epochs / laps.  ``family`` (:data:`bnpdeep.methods.FAMILIES`): the
    components of the Bayesian methods' model (:func:`bnpdeep.methods.family_model`).
    Returns a :class:`Comparison` (unpacks as ``table, idata``); with ``out`` writes the
    report there.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from bnpdeep.data import check_array
    from bnpdeep.methods import METHODS, family_model, make_estimator
    from bnpdeep.metrics import evaluate

    X = check_array(X)
    model = family_model(family, X)
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(METHODS)}")
    y = None if y is None else np.asarray(y)
    if y is not None and len(y) != len(X):
        raise ValueError(f"labels have {len(y)} entries but X has {len(X)} rows")
    iters = iters or {}
    # methods that find K first, so that the others can borrow it
    order = [m for m in methods if not METHODS[m].needs_k] + \
        [m for m in methods if METHODS[m].needs_k]
    result = Comparison(table=None)
    if model is not None:
        result.notes.append(f"the Bayesian methods' components: {family} "
                            f"({type(model.family).__name__}.weak(X))")
    rows, loos, k_found = {}, {}, None
    bar = tqdm(order, desc="compare", file=sys.stderr, disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        method = METHODS[name]
        row = {"method": name}
        k = None
        if method.needs_k:
            if y is not None:
                k, row["k_source"] = int(np.unique(y).size), "true K (labels)"
            elif k_found is not None:
                k, row["k_source"] = k_found
            else:
                rows[name] = {**row, "error": "needs K: give labels or a method that finds K"}
                continue
        try:
            est = make_estimator(name, k=k, seed=seed, iters=iters.get(name),
                                 progress=progress, model=model if method.bayesian else None)
            if method.mcmc and "n_chains" in est.get_params():
                est.set_params(n_chains=int(chains))
            if method.mcmc and "n_jobs" in est.get_params():
                est.set_params(n_jobs=int(jobs))
            start = time.perf_counter()
            est.fit(X)
            row["seconds"] = time.perf_counter() - start
            row["K"] = int(est.n_clusters_)
            if y is not None:
                row.update({m: v for m, v in evaluate(y, est.labels_).items()
                            if m in ("nmi", "ari", "acc")})
            result.estimators[name] = est
            if method.bayesian:
                idata = est.to_inference_data()
                result.idata[name] = idata
                loos[name] = loo(idata)
                row.update(idata_row(idata, loo_result=loos[name]))
                if k_found is None:
                    k_found = (row["K"], f"K found by {name}")
        except Exception as err:          # one failing method does not stop the others
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        rows[name] = row
    table = pd.DataFrame([rows[m] for m in methods]).set_index("method")
    ranked = {m: r for m, r in loos.items() if r is not None}
    if len(ranked) >= 2:
        import arviz as az

        with warnings.catch_warnings():          # the LOO of each fit, computed once
            warnings.simplefilter("ignore")
            ranking = az.compare(ranked, ic="loo")
        result.compare_df = ranking
        table.loc[ranking.index, "loo_rank"] = ranking["rank"].astype(int) + 1
        table.loc[ranking.index, "elpd_diff"] = ranking["elpd_diff"]
    if "rhat_K" in table:
        from bnpdeep.inference.mcmc import RHAT_LIMIT

        table["rhat_flag"] = (table[["rhat_K", "rhat_lp"]] > RHAT_LIMIT).any(axis=1)
        for name in table.index[table["rhat_flag"].fillna(False).astype(bool)]:
            result.notes.append(f"{name}: R-hat above {RHAT_LIMIT} (K or lp): the chains "
                                f"disagree; run longer or more chains")
    for name in table.index:
        src = table.loc[name].get("k_source") if "k_source" in table else None
        if isinstance(src, str):
            result.notes.append(f"{name} was told K: {src}")
    result.table = table
    if out is not None:
        result.report = write_report(result, X, y, out, data_name=data_name)
    return result


# -- the report ---------------------------------------------------------------------------
_COLUMNS = [("K", "K", "{:d}"), ("k_mean", "K mean", "{:.2f}"),
            ("k_interval", "K 90% interval", "{}"), ("nmi", "NMI", "{:.3f}"),
            ("ari", "ARI", "{:.3f}"), ("acc", "ACC", "{:.3f}"), ("seconds", "seconds", "{:.1f}"),
            ("elpd", "ELPD-LOO (SE)", "{}"), ("loo_rank", "LOO rank", "{:d}"),
            ("pareto_k_bad", "Pareto k > 0.7", "{:d}"), ("rhat_K", "R-hat K", "{:.3f}"),
            ("ess_K", "ESS K", "{:.0f}"), ("rhat_lp", "R-hat lp", "{:.3f}"),
            ("ess_lp", "ESS lp", "{:.0f}"), ("error", "error", "{}")]


def _cells(table) -> tuple[list[str], list[list[str]]]:
    t = table.copy()
    if "k_low" in t:
        t["k_interval"] = [f"[{lo:.0f}, {hi:.0f}]" if not (math.isnan(lo) or math.isnan(hi))
                           else "" for lo, hi in zip(t["k_low"], t["k_high"], strict=True)]
    if "elpd_loo" in t:
        t["elpd"] = [f"{e:.1f} ({s:.1f})" if not math.isnan(e) else ""
                     for e, s in zip(t["elpd_loo"], t["elpd_se"], strict=True)]
    cols = [(c, h, f) for c, h, f in _COLUMNS if c in t and t[c].notna().any()]
    head = ["method"] + [h for _, h, _ in cols]
    body = []
    for name, r in t.iterrows():
        cells = [name]
        for c, _, fmt in cols:
            v = r[c]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("")
            else:
                v = int(v) if fmt == "{:d}" else v
                cells.append(fmt.format(v))
        if "rhat_flag" in t and bool(r.get("rhat_flag", False)):
            cells[0] += " (R-hat!)"
        body.append(cells)
    return head, body


def _figures(result: Comparison, X, y, out: Path) -> list[tuple[str, str]]:
    from bnpdeep import plots

    figs = []
    traces = {m: tr for m, e in result.estimators.items() if (tr := _trace(e)) is not None}
    if traces:
        figs.append(("k_traces.png", "K per iteration, epoch or lap",
                     plots.k_traces(traces)))
    if result.idata:
        figs.append(("k_posterior.png", "Posterior of K (draws of each method)",
                     plots.k_posterior({m: d.posterior["K"].values
                                        for m, d in result.idata.items()})))
    if result.compare_df is not None:
        import arviz as az

        ax = az.plot_compare(result.compare_df, figsize=(7, 1.6 + 0.5 * len(result.compare_df)))
        ax.figure.tight_layout()
        figs.append(("loo_compare.png", "ArviZ compare plot (ELPD-LOO)", ax.figure))
    labels = {m: e.labels_ for m, e in result.estimators.items()}
    if labels:
        figs.append(("clusters_2d.png", "Data in 2-D (PCA when d > 2) by each method's "
                     "clusters, 2-sigma ellipses", plots.clusters_2d(X, labels)))
    for m, e in result.estimators.items():
        draws = getattr(e, "label_draws_", None)
        if draws is not None and len(draws):
            fig, _ = plots.coclustering(draws, order=e.labels_)
            figs.append((f"coclustering_{m}.png", f"Posterior co-clustering matrix ({m})",
                         fig))
    if y is not None and labels:
        figs.append(("confusion.png", "True classes against clusters (row-normalised)",
                     plots.confusion(y, labels)))
    out_list = []
    for fname, title, fig in figs:
        plots.save(fig, out / fname)
        out_list.append((fname, title))
    return out_list


def write_report(result: Comparison, X, y, out, data_name: str = "data") -> dict:
    """Write report.md, report.html (figures inline), the PNGs and idata_<method>.nc."""
    from bnpdeep.diagnostics import save_inference_data

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, idata in result.idata.items():
        save_inference_data(idata, out / f"idata_{name}.nc")
    figs = _figures(result, np.asarray(X), y, out)
    head, body = _cells(result.table)
    title = f"bnpdeep comparison: {data_name} ({X.shape[0]} x {X.shape[1]})"
    intro = ("Labels given: NMI, ARI and ACC against them." if y is not None
             else "No labels: no NMI, ARI or ACC.")
    md = [f"# {title}", "", intro, "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in body]
    md += ["", "K mean and interval, ELPD-LOO, R-hat and ESS come from each method's "
           "InferenceData (`idata_<method>.nc`); R-hat and ESS need several chains, and R-hat "
           "of K is blank when every draw has the same K.", ""]
    md += [f"- {n}" for n in result.notes]
    for fname, ftitle in figs:
        md += ["", f"## {ftitle}", "", f"![{ftitle}]({fname})"]
    (out / "report.md").write_text("\n".join(md) + "\n")

    esc = html.escape
    rows_html = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                        for r in body)
    parts = [f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>",
             "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
             + f"</tr></thead><tbody>{rows_html}</tbody></table>",
             "<p>K mean and interval, ELPD-LOO, R-hat and ESS come from each method's "
             "InferenceData (idata_&lt;method&gt;.nc); R-hat and ESS need several chains, and "
             "R-hat of K is blank when every draw has the same K.</p>"]
    if result.notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>")
    for fname, ftitle in figs:
        data = base64.b64encode((out / fname).read_bytes()).decode("ascii")
        parts.append(f"<h2>{esc(ftitle)}</h2><img alt=\"{esc(ftitle)}\" "
                     f"src=\"data:image/png;base64,{data}\">")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" + esc(title)
            + "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
            "collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
            "td:first-child{text-align:left}img{max-width:100%}</style></head><body>"
            + "".join(parts)
            # lets a headless browser report whether every figure decoded
            + "<script>window.addEventListener('load',function(){var i=document.images,"
              "ok=i.length>0;for(var j=0;j<i.length;j++){ok=ok&&i[j].complete&&"
              "i[j].naturalWidth>0}document.body.setAttribute('data-figures-loaded',"
              "ok?'yes':'no')});</script></body></html>")
    (out / "report.html").write_text(page)
    return {"md": str(out / "report.md"), "html": str(out / "report.html"),
            "figures": [str(out / f) for f, _ in figs],
            "idata": {m: str(out / f"idata_{m}.nc") for m in result.idata}}


def format_table(table) -> str:
    """The comparison table as fixed-width text (the CLI and the demo print it)."""
    head, body = _cells(table)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


__all__ = ["compare", "Comparison", "idata_row", "loo", "write_report", "format_table",
           "DEFAULT_METHODS"]
