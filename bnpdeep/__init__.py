"""bnpdeep: Dirichlet-process mixture models in Pyro, with interchangeable inference.

The flat public API::

    from bnpdeep import DPMixture, GaussianNIW, DirichletProcess, SubclusterSampler
    model = DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0))
    est = SubclusterSampler(model=model).fit(X)
    est.labels_, est.n_clusters_, est.to_inference_data()
"""

__version__ = "0.1.0"

from bnpdeep.compare import Comparison, compare
from bnpdeep.data import (
    DataError,
    DataWarning,
    check_array,
    check_counts,
    demo_data,
    images_to_rows,
    load,
    load_benchmark,
    load_dataset,
    load_idx,
    load_image_dataset,
    load_images,
    load_labels,
    make_mixture,
    standardize,
)
from bnpdeep.diagnostics import k_summary, save_inference_data, to_inference_data
from bnpdeep.inference import (
    DBSCAN,
    DCN,
    DEC,
    DEPICT,
    IDEC,
    Autoencoder,
    BayesianGMM,
    CollapsedGibbs,
    DeepDPM,
    DeepDPMAE,
    DistributedDeepDPM,
    DistributedSubclusterSampler,
    GaussianMixtureEM,
    KMeans,
    MeanFieldSVI,
    MemoizedVB,
    SamplerOptions,
    SubclusterSampler,
    exact_partition_posterior,
    fit_on_ranks,
)
from bnpdeep.methods import METHODS, make_estimator
from bnpdeep.metrics import accuracy, ari, evaluate, k_error, nmi
from bnpdeep.models import (
    DiagonalGaussian,
    DirichletProcess,
    DPMixture,
    FiniteDirichlet,
    GaussianNIW,
    Hyperpriors,
    InverseWishart,
    Multinomial,
    NormalInverseWishart,
    PitmanYor,
    StudentNIW,
    stick_breaking,
)
from bnpdeep.results import ClusteringResult
from bnpdeep.runs import RunFolder

__all__ = [
    "__version__",
    "DataError", "DataWarning", "check_array", "check_counts", "demo_data", "load",
    "load_benchmark", "load_dataset", "load_labels", "make_mixture", "standardize",
    "load_idx", "load_images", "load_image_dataset", "images_to_rows",
    "accuracy", "ari", "evaluate", "k_error", "nmi",
    "DPMixture", "Hyperpriors", "GaussianNIW", "StudentNIW", "DiagonalGaussian", "Multinomial",
    "NormalInverseWishart",
    "InverseWishart", "DirichletProcess", "PitmanYor", "FiniteDirichlet", "stick_breaking",
    "KMeans", "GaussianMixtureEM", "DBSCAN", "BayesianGMM", "CollapsedGibbs",
    "SubclusterSampler", "SamplerOptions", "DeepDPM", "MemoizedVB", "MeanFieldSVI",
    "exact_partition_posterior",
    "DistributedSubclusterSampler", "DistributedDeepDPM", "fit_on_ranks",
    "Autoencoder", "DEC", "IDEC", "DCN", "DEPICT", "DeepDPMAE",
    "to_inference_data", "k_summary", "save_inference_data", "compare", "Comparison",
    "METHODS", "make_estimator", "ClusteringResult", "RunFolder",
]
