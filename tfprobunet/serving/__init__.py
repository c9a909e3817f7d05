"""Serve a Probabilistic U-Net with TensorFlow Serving (DESIGN section 6).

- `signatures` builds the four signatures (`serving_functions`) and checks every request inside
  the graph, where TF Serving runs them, under the limits an export records.
- `export` writes a trained model as a TF Serving version with them (`export_for_serving`).
- `client` talks to a served model: `GrpcClient` and `RestClient` (`features` once per image,
  then `sample` as often as needed; `tfprobunet.prediction.predict_files` takes one for image
  files).
- `local_server` is a stand-in for `tensorflow_model_server`, for tests and development:
  `ModelServer` (gRPC and REST), `Servable` (runs a signature as TF Serving does).
- `wire` is what the clients and the server share: status names, errors, gRPC options.

Only the export is imported with the package: the clients, the errors and the server are
imported when first used (so `import tfprobunet` imports neither grpc nor the server).
"""

import importlib

from tfprobunet.serving.export import (clean_stale_exports, export_for_serving,
                                       serving_functions, write_models_config)

# The names imported when first used, and the module of each.
_LAZY = {"GrpcClient": "client", "InvalidRequestError": "client", "RestClient": "client",
         "ServingError": "client", "read_image": "client", "ModelServer": "local_server",
         "RequestLimits": "local_server", "Servable": "local_server"}
_SUBMODULES = ("client", "local_server", "wire")

__all__ = ["GrpcClient", "InvalidRequestError", "ModelServer", "RequestLimits", "RestClient",
           "Servable", "ServingError", "clean_stale_exports", "export_for_serving",
           "read_image", "serving_functions", "write_models_config"]


def __getattr__(name):  # PEP 562: the first use of a lazy name imports its module
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
