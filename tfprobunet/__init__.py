"""tfprobunet: the Probabilistic U-Net (Kohl et al., NeurIPS 2018) for TensorFlow 2 / Keras 3.

Public API: `ProbabilisticUNet`, its layers (`UNet`, `AxisAlignedGaussian`, `FComb`), `train`,
`evaluate`, `export_for_serving`, and the modules `losses`, `metrics`, `data` and `serving`.
"""

from tfprobunet import data, losses, metrics, serving
from tfprobunet.evaluation import evaluate
from tfprobunet.export import export_for_serving
from tfprobunet.layers import AxisAlignedGaussian, FComb, UNet
from tfprobunet.model import ProbabilisticUNet
from tfprobunet.training import train

__version__ = "0.1.0"

__all__ = ["AxisAlignedGaussian", "FComb", "ProbabilisticUNet", "UNet", "data", "evaluate",
           "export_for_serving", "losses", "metrics", "serving", "train"]
