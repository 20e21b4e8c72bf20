"""Where the sampler's ``labels_`` (one posterior draw) sits among other partitions.

    python benchmarks/draw_vs_modes.py s4 [seed]

Prints the log posterior of a partition, log p(z | X) up to a constant (the weight
prior's log EPPF plus the family's log marginal likelihoods), and its NMI, for: the
sampler's ``labels_`` (200 iterations, defaults), ``predict(X)`` (the modal
assignment given those clusters), EM started from the draw's clusters, EM with the
true K from k-means++, and the true labels.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from bnpdeep.inference import SubclusterSampler
from bnpdeep.inference.classical import GaussianMixtureEM
from bnpdeep.inference.mcmc import default_model
from sklearn.mixture import GaussianMixture

from bnpdeep import data
from bnpdeep.metrics import evaluate


def main(name: str, seed: int = 0):
    X, y = data.load_benchmark(name)
    X = data.standardize(X)[0]
    model = default_model(X)
    Xt = torch.as_tensor(X)

    def log_post(z):
        _, z = np.unique(z, return_inverse=True)
        stats = model.family.suff_stats_labels(Xt, torch.as_tensor(z), int(z.max()) + 1)
        return float(model.weights.log_eppf(stats.n) + model.family.log_marginal(stats).sum())

    est = SubclusterSampler(max_iter=200, random_state=seed, store_log_likelihood=False).fit(X)
    draw = est.labels_
    k = int(draw.max()) + 1
    d = X.shape[1]
    # biased covariances plus a small ridge (the features are standardised), so that a
    # one- or two-point cluster still gives EM a positive-definite start
    covs = np.stack([np.cov(X[draw == c].T, bias=True).reshape(d, d) + 1e-3 * np.eye(d)
                     for c in range(k)])
    polished = GaussianMixture(k, means_init=np.stack([X[draw == c].mean(0) for c in range(k)]),
                               precisions_init=np.linalg.inv(covs),
                               weights_init=np.bincount(draw) / len(draw),
                               random_state=seed).fit(X).predict(X)
    k_true = int(np.unique(y).size)
    em = GaussianMixtureEM(n_clusters=k_true, random_state=seed).fit(X).labels_
    rows = [("labels_ (a posterior draw)", draw), ("predict(X)", est.predict(X)),
            ("EM from the draw's clusters", polished), (f"EM, K={k_true}, k-means++", em),
            ("true labels", y)]
    for label, z in rows:
        print(f"{label:<30} K={np.unique(z).size:<3d} log p(z | X) = {log_post(z):10.1f}  "
              f"NMI {evaluate(y, z)['nmi']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "s4", int(sys.argv[2]) if len(sys.argv) > 2 else 0)
