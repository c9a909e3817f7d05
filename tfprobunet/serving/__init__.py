"""Serve a Probabilistic U-Net with TensorFlow Serving (DESIGN section 6).

- `export` writes a trained model as a TF Serving version with four signatures
  (`export_for_serving`), under request limits it records.
- `client` talks to a served model: `GrpcClient` and `RestClient` (`features` once per image,
  then `sample` as often as needed; `tfprobunet.prediction.predict_files` takes one for image
  files).
- `local_server` is a stand-in for `tensorflow_model_server`, for tests and development:
  `ModelServer` (gRPC and REST), `Servable` (runs a signature as TF Serving does).
"""

from tfprobunet.serving.client import (GrpcClient, InvalidRequestError, RestClient,
                                       ServingError, read_image)
from tfprobunet.serving.export import (clean_stale_exports, export_for_serving,
                                       serving_functions, write_models_config)
from tfprobunet.serving.local_server import ModelServer, RequestLimits, Servable

__all__ = ["GrpcClient", "InvalidRequestError", "ModelServer", "RequestLimits", "RestClient",
           "Servable", "ServingError", "clean_stale_exports", "export_for_serving",
           "read_image", "serving_functions", "write_models_config"]
