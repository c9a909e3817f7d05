"""`tfprobunet.export` is `tfprobunet.serving.export`, where the export now lives; this alias keeps
`from tfprobunet import export` working."""

import sys

from tfprobunet.serving import export as _export

sys.modules[__name__] = _export
