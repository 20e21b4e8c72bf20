"""The registry of clustering methods the CLI, the demo and the benchmarks share.

Each entry builds an estimator from a few common options, so that a new method
(DeepDPM, moVB, SVI ...) joins the command line and the demo by adding one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: Callable          # (k, seed, iters, progress) -> estimator
    needs_k: bool = False
    bayesian: bool = False
    mcmc: bool = False       # keeps label draws (--draws)


def _classical(cls_name):
    def build(k=None, seed=0, iters=None, progress=False):
        from bnpdeep.inference import classical

        cls = getattr(classical, cls_name)
        if cls_name == "DBSCAN":
            return cls()
        if cls_name == "BayesianGMM":
            return cls(random_state=seed)
        return cls(n_clusters=k, random_state=seed)
    return build


def _subcluster(k=None, seed=0, iters=None, progress=False):
    from bnpdeep.inference import SubclusterSampler

    kw = {} if iters is None else {"max_iter": iters}
    return SubclusterSampler(random_state=seed, progress=progress, **kw)


def _gibbs(k=None, seed=0, iters=None, progress=False):
    from bnpdeep.inference import CollapsedGibbs

    return CollapsedGibbs(max_iter=iters or 50, random_state=seed, progress=progress)


def _deepdpm(k=None, seed=0, iters=None, progress=False):
    from bnpdeep.inference import DeepDPM

    return DeepDPM(max_epochs=iters or 100, random_state=seed, progress=progress)


def _movb(k=None, seed=0, iters=None, progress=False):
    from bnpdeep.inference import MemoizedVB

    return MemoizedVB(max_laps=iters or 100, random_state=seed, progress=progress)


def _svi(k=None, seed=0, iters=None, progress=False):
    from bnpdeep.inference import MeanFieldSVI

    return MeanFieldSVI(max_epochs=iters or 100, random_state=seed, progress=progress)


def _deep(cls_name):
    def build(k=None, seed=0, iters=None, progress=False):
        from bnpdeep.inference import deep

        kw = {} if iters is None else {"max_epochs": iters}
        return getattr(deep, cls_name)(n_clusters=k, random_state=seed, progress=progress,
                                       **kw)
    return build


def _deepdpm_ae(k=None, seed=0, iters=None, progress=False):
    from bnpdeep.inference import DeepDPM, DeepDPMAE

    return DeepDPMAE(deepdpm=DeepDPM(max_epochs=iters or 100), random_state=seed,
                     progress=progress)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("kmeans", "k-means, k-means++ seeding (given K)", _classical("KMeans"), needs_k=True),
    Method("gmm", "EM Gaussian mixture, full covariances (given K)",
           _classical("GaussianMixtureEM"), needs_k=True),
    Method("dbscan", "DBSCAN, eps from the k-distance knee", _classical("DBSCAN")),
    Method("bgm", "scikit-learn variational DP Gaussian mixture (truncation 30)",
           _classical("BayesianGMM")),
    Method("subcluster", "DP mixture, sub-cluster split/merge sampler (Chang & Fisher 2013)",
           _subcluster, bayesian=True, mcmc=True),
    Method("gibbs", "DP mixture, collapsed Gibbs (Neal 2000, algorithm 3)", _gibbs,
           bayesian=True, mcmc=True),
    Method("deepdpm", "DP mixture, DeepDPM nets with split/merge (Ronen et al. 2022)",
           _deepdpm, bayesian=True),
    Method("movb", "DP mixture, memoized online VB with birth/merge/delete (Hughes & "
           "Sudderth 2013)", _movb, bayesian=True),
    Method("svi", "DP mixture at truncation 30, mean-field SVI in Pyro (AutoNormal, z "
           "enumerated)", _svi, bayesian=True),
    Method("dec", "DEC: autoencoder + Student-t soft assignments sharpened (Xie et al. "
           "2016; given K; raw pixels)", _deep("DEC"), needs_k=True),
    Method("idec", "IDEC: DEC plus reconstruction (Guo et al. 2017; given K; raw pixels)",
           _deep("IDEC"), needs_k=True),
    Method("dcn", "DCN: autoencoder with a k-means loss (Yang et al. 2017; given K; raw "
           "pixels)", _deep("DCN"), needs_k=True),
    Method("depict", "DEPICT: conv. denoising autoencoder + softmax head (Ghasedi Dizaji et "
           "al. 2017; given K; square images)", _deep("DEPICT"), needs_k=True),
    Method("deepdpm-ae", "DeepDPM end to end: autoencoder and DeepDPM in alternation (K "
           "inferred; raw pixels)", _deepdpm_ae),
]}


#: component families the command line offers (``--family``), each with its weak
#: data-driven prior; "full" is the Bayesian estimators' own default
FAMILIES = ("full", "diagonal", "student-t")
#: degrees of freedom of the "student-t" family: Lange, Little & Taylor's (1989)
#: robust default
STUDENT_DF = 4.0


def family_model(family: str, X):
    """The DP(alpha = 1) mixture of ``family`` components under the family's weak prior
    set from X: full-covariance Gaussians (``GaussianNIW.weak``; None, the estimators'
    default model), diagonal-covariance Gaussians (``DiagonalGaussian.weak``: d
    variances per cluster instead of d (d + 1) / 2 covariances, for many columns and
    few rows per cluster) or multivariate Student-t with 4 degrees of freedom
    (``StudentNIW.weak(X, df=4)``: heavy-tailed clusters)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}'; choose from {', '.join(FAMILIES)}")
    if family == "full":
        return None
    from bnpdeep.models import DiagonalGaussian, DirichletProcess, DPMixture, StudentNIW

    comp = DiagonalGaussian.weak(X) if family == "diagonal" else StudentNIW.weak(X, df=STUDENT_DF)
    return DPMixture(comp, DirichletProcess(1.0))


def make_estimator(name: str, *, k: int | None = None, seed: int = 0, iters: int | None = None,
                   progress: bool = False, model=None):
    """An unfitted estimator for method ``name`` (with ``model``, a Bayesian method's
    model); raises ValueError for unknown names, a missing K or a model given to a
    method without one."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    method = METHODS[name]
    if method.needs_k and k is None:
        raise ValueError(f"method '{name}' needs the number of clusters: pass --k "
                         f"(or true labels with --labels to use their K)")
    est = method.build(k=k, seed=seed, iters=iters, progress=progress)
    if model is not None:
        if not method.bayesian:
            bayesian = ", ".join(m.name for m in METHODS.values() if m.bayesian)
            raise ValueError(f"method '{name}' takes no mixture model (a component family "
                             f"applies to {bayesian})")
        est.set_params(model=model)
    return est
