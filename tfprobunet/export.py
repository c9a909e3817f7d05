"""Deprecated: `tfprobunet.export` became `tfprobunet.serving.export`. Its names stay importable
from here, with a `DeprecationWarning`."""

import warnings

from tfprobunet.serving import export as _new
from tfprobunet.serving import signatures as _signatures

warnings.warn("tfprobunet.export is deprecated and will be removed in tfprobunet 0.3.0: import "
              "from tfprobunet.serving.export (or export_for_serving from tfprobunet.serving)",
              DeprecationWarning, stacklevel=2)


# Names this module had that live in `tfprobunet.serving.signatures` now.
_MOVED = ("RANDOM_SEED", "SIGNATURES", "samples_cheaply")


def __getattr__(name):
    return getattr(_signatures if name in _MOVED else _new, name)
