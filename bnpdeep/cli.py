"""The ``bnpdeep`` command: fit, compare, datasets, demo.

Bad input becomes one line on stderr and exit code 2; progress goes to stderr,
results to stdout.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

EXIT_USAGE = 2


def _log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def _load_input(spec: str, labels: str | None, standardize: bool, delimiter=None,
                images: bool = False):
    """DATA is a file (with ``images``: an IDX, .npy or .npz file of images, read as rows
    of pixels in [0, 1]), or the name of an embedded, image or benchmark data set."""
    from bnpdeep import data

    y = None
    path = Path(spec)
    if path.exists() and images:
        X, _ = data.load_images(path)
    elif path.exists():
        X = data.load(path, delimiter=delimiter, warn=False)
    elif spec in data.IMAGE_DATASETS:
        X, y, _ = data.load_image_dataset(spec)
    elif spec in data.EMBEDDED_DATASETS:
        X, y = data.load_dataset(spec)
    elif spec in data.BENCHMARK_NAMES + data.PAPER_NAMES:
        X, y = data.load_benchmark(spec, standardize=False)
    else:
        raise data.DataError(f"'{spec}' is neither a file nor a known data set "
                             f"(see `bnpdeep datasets`)")
    if labels is not None:
        y = data.load_labels(labels)
    if y is not None and y.shape[0] != X.shape[0]:
        raise data.DataError(f"the labels hold {y.shape[0]} entries but the data has "
                             f"{X.shape[0]} rows")
    if standardize:
        X = data.standardize(X)[0]
    return X, y


def fit_one(name: str, X, y=None, *, k=None, seed: int = 0, iters=None, progress=False,
            return_estimator: bool = False, checkpoint_dir=None, resume: bool = False,
            family: str = "full"):
    """Fit method ``name`` on X and return its :class:`ClusteringResult` (and the
    fitted estimator if ``return_estimator``).  ``family``: a Bayesian method's
    components (:func:`bnpdeep.methods.family_model`).  With ``checkpoint_dir``, methods that
    checkpoint (the samplers, DeepDPM, moVB) save their state there as they go, and
    ``resume`` continues from it."""
    from bnpdeep.inference.base import CheckpointedEstimator
    from bnpdeep.methods import METHODS, family_model, make_estimator

    if k is None and y is not None and METHODS[name].needs_k:
        k = int(np.unique(y).size)
    est = make_estimator(name, k=k, seed=seed, iters=iters, progress=progress,
                         model=family_model(family, X))
    checkpointed = isinstance(est, CheckpointedEstimator) and checkpoint_dir is not None
    if resume and not checkpointed:
        raise ValueError(f"'{name}' keeps no checkpoints to resume from")
    if resume and not est.checkpoint_path(checkpoint_dir).exists():
        raise FileNotFoundError(f"nothing to resume: no {name} checkpoint in {checkpoint_dir} "
                                f"(looked for {est.checkpoint_path(checkpoint_dir).name}); "
                                "run without --resume to start afresh")
    if checkpointed:
        est.fit(X, checkpoint_dir=checkpoint_dir, resume=resume)
    else:
        est.fit(X)
    result = est.result(y)
    if METHODS[name].bayesian:
        result.idata = est.to_inference_data()
    for attr in ("eps_", "noise_fraction_", "converged_"):
        if hasattr(est, attr):
            result.info[attr.rstrip("_")] = getattr(est, attr)
    return (result, est) if return_estimator else result


def _launched_ranks() -> int:
    """The number of ranks a launcher such as ``torchrun`` started (WORLD_SIZE), 1 if none."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _cmd_fit_ranks(args) -> int:
    """``torchrun --nproc-per-node R -m bnpdeep fit DATA --method subcluster --out DIR``
    (or ``--method deepdpm``): each rank reads its rows of DATA (a file, or a folder
    of shard files in name order; .npy files are memory-mapped) and runs its part of
    the data-parallel sampler (:mod:`bnpdeep.inference.distributed`) or DeepDPM
    (:mod:`bnpdeep.inference.deepdpm.distributed`); every rank checkpoints into DIR,
    and rank 0 gathers the labels and writes the run."""
    import torch.distributed as dist

    from bnpdeep import data
    from bnpdeep.inference.deepdpm import DistributedDeepDPM
    from bnpdeep.inference.distributed import DistributedSubclusterSampler, shard_range
    from bnpdeep.metrics import evaluate
    from bnpdeep.results import ClusteringResult
    from bnpdeep.runs import RunFolder

    if args.method not in ("subcluster", "deepdpm"):
        raise ValueError(f"under a launcher ({_launched_ranks()} ranks) only --method "
                         f"subcluster and deepdpm run data-parallel, not '{args.method}'")
    if args.draws and args.method != "subcluster":
        raise ValueError(f"--draws needs a sampler; '{args.method}' has no posterior draws")
    if args.standardize or args.images or args.k is not None:
        raise ValueError("--standardize, --images and --k do not apply to a data-parallel "
                         "fit; standardise the data files beforehand")
    path = Path(args.data)
    if not path.exists():
        raise data.DataError(f"a data-parallel fit reads DATA by row range: '{args.data}' "
                             "must be a file or a folder of shard files")
    dist.init_process_group("gloo")         # the sampler's ranks run on the CPU
    try:
        if args.family != "full":
            raise ValueError("--family: the data-parallel fit takes the default family "
                             "(full-covariance Gaussians) only")
        rank, world = dist.get_rank(), dist.get_world_size()
        total = sum(data.count_rows(path, args.delimiter))
        start, stop = shard_range(total, world, rank)
        X = data.load_rows(path, start, stop, args.delimiter)
        if rank == 0:
            _log(f"fitting {args.method} on {total} x {X.shape[1]} over {world} ranks")
        if args.method == "subcluster":
            cls, kw = DistributedSubclusterSampler, {"max_iter": args.iters}
        else:
            cls, kw = DistributedDeepDPM, {"max_epochs": args.iters}
        kw = {n: v for n, v in kw.items() if v is not None}
        est = cls(random_state=args.seed, progress=rank == 0 and not args.quiet, **kw)
        est.fit(X, checkpoint_dir=args.out, resume=args.resume)
        parts = [None] * world if rank == 0 else None
        dist.gather_object((est.labels_, est.label_draws_ if args.draws else None), parts)
        if rank == 0:
            labels = np.concatenate([p[0] for p in parts])
            y = None if args.labels is None else data.load_labels(args.labels)
            result = ClusteringResult(
                method=args.method, labels=labels, n_clusters=est.n_clusters_,
                time_s=est.fit_time_, metrics=None if y is None else evaluate(y, labels),
                info={"ranks": world, "bytes_reduced_rank0": est.bytes_reduced_})
            folder = RunFolder(args.out).save(result, extra={"data": str(args.data)})
            if args.draws:
                np.save(folder / "label_draws.npy", np.concatenate([p[1] for p in parts], 1))
            print(result.row())
            _log(f"wrote {folder}")
        # every rank leaves together: a rank that tears the group down while its peer
        # still waits on it can abort the peer ("terminate called without an active
        # exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def _cmd_fit(args) -> int:
    from bnpdeep.methods import METHODS
    from bnpdeep.runs import RunFolder

    if _launched_ranks() > 1:
        return _cmd_fit_ranks(args)

    _log(f"loading {args.data}")
    X, y = _load_input(args.data, args.labels, args.standardize, args.delimiter,
                       args.images)
    _log(f"fitting {args.method} on {X.shape[0]} x {X.shape[1]}")
    if args.draws and not METHODS[args.method].mcmc:
        raise ValueError(f"--draws needs a sampler; '{args.method}' has no posterior draws")
    result, est = fit_one(args.method, X, y, k=args.k, seed=args.seed, iters=args.iters,
                          progress=not args.quiet, return_estimator=True,
                          checkpoint_dir=args.out, resume=args.resume, family=args.family)
    folder = RunFolder(args.out).save(result, extra={"data": str(args.data)})
    if args.draws:
        np.save(folder / "label_draws.npy", est.label_draws_)
    print(result.row())
    _log(f"wrote {folder}")
    return 0


def _cmd_datasets(args) -> int:
    from bnpdeep import data

    print("embedded (no download):")
    for name, desc in data.EMBEDDED_DATASETS.items():
        print(f"  {name:<14} {desc}")
    print("images (rows of pixels, for the deep methods):")
    for name, desc in data.IMAGE_DATASETS.items():
        print(f"  {name:<14} {desc}")
    root = data.benchmark_root()
    if root is None:
        print("benchmark sets: not found (set BNPDEEP_DATASETS)")
        return 0
    print(f"benchmark sets in {root}:")
    for name in data.BENCHMARK_NAMES + data.PAPER_NAMES:
        folder = root / "paper" if name in data.PAPER_NAMES else root
        mark = "" if (folder / f"{name}.data.gz").exists() else "  (missing)"
        print(f"  {name}{mark}")
    return 0


DEMO_METHODS = ("deepdpm", "subcluster", "movb", "bgm", "kmeans", "gmm", "dbscan")


def run_compare(X, y, methods, *, chains: int, seed: int, out, iters=None, quiet=False,
                data_name="data", stream=None, jobs: int = 1, family: str = "full"):
    """Run :func:`bnpdeep.compare.compare`, print its table and where the report lies."""
    from bnpdeep.compare import compare, format_table

    stream = sys.stdout if stream is None else stream
    result = compare(X, methods=methods, y=y, chains=chains, seed=seed, out=out,
                     iters=iters, progress=not quiet, data_name=data_name, jobs=jobs,
                     family=family)
    print(format_table(result.table), file=stream)
    for note in result.notes:
        print(f"- {note}", file=stream)
    if result.report:
        print(f"report: {result.report['html']} (and report.md, figures, idata_<method>.nc)",
              file=stream)
    return result


def run_demo(methods=DEMO_METHODS, seed: int = 0, out="demo_report", chains: int = 4,
             stream=None, jobs: int = 1):
    """Compare the methods on the embedded demo data (digits, PCA 10) and write a report."""
    from bnpdeep import data

    stream = sys.stdout if stream is None else stream
    X, y = data.demo_data()
    print(f"digits (scikit-learn), standardised, PCA to 10 dims: {X.shape[0]} x "
          f"{X.shape[1]}, true K = {np.unique(y).size}", file=stream, flush=True)
    return run_compare(X, y, list(methods), chains=chains, seed=seed, out=out,
                       data_name="digits (PCA 10)", stream=stream, jobs=jobs)


def _method_list(values) -> list[str]:
    """``--methods``: names separated by spaces, commas or both, each a known method."""
    from bnpdeep.methods import METHODS

    names = [m.strip() for v in values for m in v.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(METHODS)}")
    if not names:
        raise ValueError("--methods names no method")
    return list(dict.fromkeys(names))


def _cmd_demo(args) -> int:
    run_demo(methods=_method_list(args.methods) if args.methods else DEMO_METHODS,
             seed=args.seed, out=args.out, chains=args.chains, jobs=args.jobs)
    return 0


def _cmd_compare(args) -> int:
    _log(f"loading {args.data}")
    X, y = _load_input(args.data, args.labels, args.standardize, args.delimiter)
    methods = _method_list(args.methods) if args.methods else list(DEMO_METHODS)
    run_compare(X, y, methods, chains=args.chains, seed=args.seed, out=args.out,
                quiet=args.quiet, data_name=str(args.data), jobs=args.jobs,
                family=args.family)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bnpdeep.methods import FAMILIES, METHODS

    p = argparse.ArgumentParser(prog="bnpdeep", description="Clustering with an unknown "
                                "number of clusters: Dirichlet-process mixtures and baselines.")
    p.add_argument("--debug", action="store_true",
                   help="on an error, print the full traceback instead of one line")
    sub = p.add_subparsers(dest="command", required=True)
    delim_help = ("text files: the column separator (default: sniffed from the file; "
                  "'\\t' for tab)")

    f = sub.add_parser("fit", help="fit one method to a data file",
                       description="Fit one method; writes labels.npy and summary.json "
                       "(and idata.nc for Bayesian methods) into --out.")
    f.add_argument("data", help="a .npy/.npz/.csv/.txt file (optionally .gz), or the name "
                   "of an embedded or benchmark data set")
    f.add_argument("--method", required=True, choices=list(METHODS),
                   help="; ".join(f"{m.name}: {m.description}" for m in METHODS.values()))
    f.add_argument("--out", required=True, help="run folder to write")
    f.add_argument("--labels", help="true labels, one integer per row (adds NMI/ARI/ACC)")
    f.add_argument("--k", type=int, help="number of clusters, for methods told K")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--iters", type=int, help="iterations for the samplers (epochs for the "
                   "net-based methods)")
    f.add_argument("--draws", action="store_true",
                   help="samplers: also write the kept label draws to label_draws.npy")
    f.add_argument("--standardize", action="store_true", help="zero mean, unit variance")
    f.add_argument("--delimiter", help=delim_help)
    f.add_argument("--images", action="store_true",
                   help="DATA is a file of images (IDX as MNIST ships it, or .npy/.npz of "
                   "shape (n, h, w) or (n, c, h, w)), read as rows of pixels in [0, 1]")
    family_help = ("components of the Bayesian methods' mixture: full (full-covariance "
                   "Gaussians, the default), diagonal (diagonal-covariance Gaussians: many "
                   "columns, few rows per cluster) or student-t (4 degrees of freedom, "
                   "heavy-tailed clusters); each under its weak prior set from the data")
    f.add_argument("--family", choices=FAMILIES, default="full", help=family_help)
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoint in --out (the "
                   "samplers, deepdpm and movb checkpoint there as they go)")
    f.set_defaults(run=_cmd_fit)

    d = sub.add_parser("datasets", help="list embedded and benchmark data sets")
    d.set_defaults(run=_cmd_datasets)

    c = sub.add_parser("compare", help="compare methods on one data set, with a report",
                       description="Fit several methods on the same data and write "
                       "report.md, report.html, figures and idata_<method>.nc into --out.")
    c.add_argument("data", help="a data file, or the name of an embedded or benchmark set")
    c.add_argument("--labels", help="true labels, one integer per row (adds NMI/ARI/ACC)")
    methods_help = (f"methods separated by spaces (or commas), from: {', '.join(METHODS)} "
                    f"(default: {' '.join(DEMO_METHODS)})")
    c.add_argument("--methods", nargs="+", metavar="METHOD", help=methods_help)
    c.add_argument("--chains", type=int, default=4, help="chains of the MCMC methods")
    c.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the MCMC chains (-1: one per core)")
    c.add_argument("--out", required=True, help="report folder")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--standardize", action="store_true", help="zero mean, unit variance")
    c.add_argument("--delimiter", help=delim_help)
    c.add_argument("--family", choices=FAMILIES, default="full", help=family_help)
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(run=_cmd_compare)

    m = sub.add_parser("demo", help="compare methods on the embedded digits data")
    m.add_argument("--methods", nargs="+", metavar="METHOD", help=methods_help)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--chains", type=int, default=4)
    m.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the MCMC chains (-1: one per core)")
    m.add_argument("--out", default="demo_report", help="report folder")
    m.set_defaults(run=_cmd_demo)
    return p


class _WarnOnce:
    """``warnings.showwarning`` for the command: each distinct message once, one line."""

    def __init__(self):
        self.seen = set()

    def __call__(self, message, category, *args, **kwargs):
        key = (category, str(message))
        if key not in self.seen:
            self.seen.add(key)
            _log(f"warning: {message}")


def main(argv=None) -> int:
    from bnpdeep.data import DataWarning

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        # "always" so a data warning seen earlier in the process is not hidden;
        # _WarnOnce prints each distinct message once
        warnings.simplefilter("always", DataWarning)
        warnings.showwarning = _WarnOnce()
        try:
            return args.run(args)
        except MemoryError:
            if args.debug:
                raise
            _log(f"bnpdeep {args.command}: error: out of memory (try fewer rows or "
                 "features, e.g. PCA first, or a diagonal-covariance family)")
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            if args.debug:
                raise
            _log(f"bnpdeep {args.command}: error: {err} (--debug for the traceback)")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
