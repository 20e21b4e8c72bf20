"""Deep features: autoencoders, the deep clustering baselines with a given K (DEC,
IDEC, DCN, DEPICT) and DeepDPM end to end (K inferred)."""

from bnpdeep.inference.deep.autoencoder import Autoencoder, ConvAutoencoder, MLPAutoencoder
from bnpdeep.inference.deep.dcn import DCN
from bnpdeep.inference.deep.dec import DEC, IDEC
from bnpdeep.inference.deep.deepdpm_ae import DeepDPMAE
from bnpdeep.inference.deep.depict import DEPICT

__all__ = ["Autoencoder", "ConvAutoencoder", "DCN", "DEC", "DeepDPMAE", "DEPICT", "IDEC",
           "MLPAutoencoder"]
