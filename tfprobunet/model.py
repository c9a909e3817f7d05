"""`tfprobunet.model` is `tfprobunet.models.probabilistic_unet`, where the model now lives beside
the baselines; this alias keeps `from tfprobunet.model import ProbabilisticUNet` working."""

import sys

from tfprobunet.models import probabilistic_unet as _probabilistic_unet

sys.modules[__name__] = _probabilistic_unet
