"""How the posterior is approximated: samplers, split/merge moves, baselines."""

from .base import ClusterEstimator
from .classical import CLASSICAL_METHODS, DBSCAN, BayesianGMM, GaussianMixtureEM, KMeans
from .deep import DCN, DEC, DEPICT, IDEC, Autoencoder, DeepDPMAE
from .deepdpm import DeepDPM, DistributedDeepDPM
from .distributed import DistributedSubclusterSampler, fit_on_ranks, shard_range
from .exact import exact_partition_posterior, set_partitions, total_variation
from .gibbs import CollapsedGibbs
from .mcmc import MCMCClusterer
from .movb import MemoizedVB
from .subcluster import SubclusterSampler
from .subcluster_settings import SamplerOptions
from .svi import MeanFieldSVI

__all__ = [
    "ClusterEstimator", "MCMCClusterer",
    "KMeans", "GaussianMixtureEM", "DBSCAN", "BayesianGMM", "CLASSICAL_METHODS",
    "CollapsedGibbs", "SubclusterSampler", "SamplerOptions", "DistributedSubclusterSampler",
    "fit_on_ranks",
    "shard_range", "DeepDPM", "DistributedDeepDPM", "MemoizedVB", "MeanFieldSVI",
    "Autoencoder", "DEC", "IDEC", "DCN", "DEPICT", "DeepDPMAE",
    "exact_partition_posterior", "set_partitions", "total_variation",
]
