"""DeepDPM: clustering and sub-clustering nets as the guide of the DP mixture, their
surgery on split/merge, and the trainer (Ronen, Finder & Freifeld, CVPR 2022)."""

from .guide import DeepDPMGuide, stick_fractions
from .nets import ClusterNet, SubclusterNets
from .trainer import DeepDPM

__all__ = ["ClusterNet", "DeepDPM", "DeepDPMGuide", "SubclusterNets", "stick_fractions"]
