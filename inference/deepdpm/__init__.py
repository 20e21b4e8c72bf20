"""DeepDPM: clustering and sub-clustering nets as the guide of the DP mixture, their
surgery on split/merge, and the trainer (Ronen, Finder & Freifeld, CVPR 2022)."""

from .distributed import DistributedDeepDPM, ShardedGuideSplitMerge
from .guide import DeepDPMGuide, Mixture, Surgery, stick_fractions
from .loss import DeepDPMLoss
from .nets import ClusterNet, SubclusterNets
from .trainer import DeepDPM

__all__ = ["ClusterNet", "DeepDPM", "DeepDPMGuide", "DeepDPMLoss", "DistributedDeepDPM",
           "Mixture", "ShardedGuideSplitMerge", "SubclusterNets", "Surgery", "stick_fractions"]
