"""Deprecated: `tfprobunet.model` became `tfprobunet.models.probabilistic_unet` (the model lives
beside the baselines). Its names stay importable from here, with a `DeprecationWarning`."""

import importlib
import warnings

from tfprobunet.models import probabilistic_unet as _new

warnings.warn("tfprobunet.model is deprecated and will be removed in tfprobunet 0.3.0: import "
              "ProbabilisticUNet from tfprobunet.models (the module is "
              "tfprobunet.models.probabilistic_unet)", DeprecationWarning, stacklevel=2)


# Names this module had that live elsewhere now (imported when asked for: `models.base` first
# would import the package from inside itself).
_MOVED = {"GED_SEED": "tfprobunet.models.base", "GECO_DECAY": "tfprobunet.models.geco"}


def __getattr__(name):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    return getattr(_new, name)
