"""tfprobunet: the Probabilistic U-Net (Kohl et al., NeurIPS 2018) for TensorFlow 2 / Keras 3."""

from tfprobunet.layers import AxisAlignedGaussian, FComb, UNet
from tfprobunet.model import ProbabilisticUNet

__version__ = "0.1.0"
