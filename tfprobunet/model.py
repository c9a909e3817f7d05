"""Deprecated: `tfprobunet.model` became `tfprobunet.models.probabilistic_unet` (the model lives
beside the baselines). Its names stay importable from here, with a `DeprecationWarning`."""

import warnings

from tfprobunet.models import probabilistic_unet as _new

warnings.warn("tfprobunet.model is deprecated: import ProbabilisticUNet from tfprobunet.models "
              "(the module is tfprobunet.models.probabilistic_unet)", DeprecationWarning,
              stacklevel=2)


def __getattr__(name):
    return getattr(_new, name)
