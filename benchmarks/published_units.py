"""The Bayesian estimators at their defaults on benchmark sets in their published
units (``load_benchmark(name, standardize=False)``), seeds 0-2: K and NMI per fit.

    python benchmarks/published_units.py [--sets wine wdbc ecoli] [--seeds 0 1 2]

Run at two commits to compare (benchmarks/README.md, "Columns in their published
units").
"""

import argparse
import warnings

from bnpdeep import DeepDPM, MemoizedVB, SubclusterSampler, data, evaluate

METHODS = {"subcluster": SubclusterSampler, "movb": MemoizedVB, "deepdpm": DeepDPM}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["wine", "wdbc", "ecoli"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    for name in args.sets:
        X, y = data.load_benchmark(name, standardize=False)
        for method, cls in METHODS.items():
            fits = [cls(random_state=s).fit(X) for s in args.seeds]
            print(f"{name:<8} {method:<11} " + ", ".join(
                f"{e.n_clusters_} / {evaluate(y, e.labels_)['nmi']:.3f}" for e in fits),
                flush=True)


if __name__ == "__main__":
    main()
