"""Deprecated: `tfprobunet.export` became `tfprobunet.serving.export`. Its names stay importable
from here, with a `DeprecationWarning`."""

import warnings

from tfprobunet.serving import export as _new

warnings.warn("tfprobunet.export is deprecated: import from tfprobunet.serving.export (or "
              "export_for_serving from tfprobunet.serving)", DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_new, name)
