"""A local stand-in for TensorFlow Serving's `tensorflow_model_server`, for tests and development.

TF Serving is the production server (docs/serving.md); this one answers the same APIs on loopback so that
the clients, the exported signatures and the demo can be tested where the TF Serving binary
cannot be installed:

- `Servable` runs a signature the way TF Serving does: the version's SavedModel loaded into a
  TF1 session (`tf.compat.v1.saved_model.loader.load`, tag `serve`), fed and fetched by the
  tensor names of its SignatureDef, never through the Python objects.
- `ModelServer` serves the latest version of every model under `<base_path>/<name>/<version>/`
  over gRPC (`PredictionService.Predict`, `GetModelMetadata`; `ModelService.GetModelStatus`) and
  REST (`GET /v1/models/NAME[/versions/N][/metadata]`, `POST /v1/models/NAME[/versions/N]:predict`
  in the columnar `inputs` format), and picks up new versions by polling.

It cannot be knocked over by one request: request limits (`max_samples`, `max_pixels`,
`max_sample_pixels`, `max_sample_bytes`, `max_message_bytes`) are checked before anything runs,
a gRPC request's fields are counted before it is parsed; a version folder is loaded once it is
complete and settled, and one that fails to load, or whose variables hold NaN or Inf, is logged
once and skipped while the previous one keeps serving (clients are told NOT_FOUND and the
model's name, never paths or loader errors); every malformed REST body gets a JSON 4xx; clients
that stop sending are dropped after `request_timeout` seconds. Nor by many: requests beyond
`rest_queue` or `grpc_queue` in flight are answered 503 or RESOURCE_EXHAUSTED at once, and an
internal error is answered with a request id, its text only in the server's log.

Loading a SavedModel runs its init ops (`main_op`), as TF Serving's loader does: the base path
must be as trusted as the code the server runs.

One module per component: `limits` (`RequestLimits`), `servable` (`Servable`), `registry`
(`Registry`: the versions served, found by polling), `grpc_service` and `rest_service` (the two
APIs), `errors` (what a failed request leaves: a request id, memory given back), `server`
(`ModelServer`, both on one registry). Imported only when used: `import
tfprobunet` imports neither this package nor grpc.
"""

from tfprobunet.serving.local_server.grpc_service import (MAX_STATUS_CHARS, ModelServicer,
                                                          PredictionServicer)
from tfprobunet.serving.local_server.limits import (GRPC_BYTES_PER_VALUE, JSON_BYTES_PER_VALUE,
                                                    RESPONSE_OVERHEAD, RequestLimits)
from tfprobunet.serving.local_server.registry import Registry, logger
from tfprobunet.serving.local_server.rest_service import BODY_BUDGET, RestServer
from tfprobunet.serving.local_server.servable import Servable
from tfprobunet.serving.local_server.server import ModelServer
from tfprobunet.serving.wire import HTTP_STATUS

__all__ = ["BODY_BUDGET", "GRPC_BYTES_PER_VALUE", "HTTP_STATUS", "JSON_BYTES_PER_VALUE",
           "MAX_STATUS_CHARS", "ModelServer", "ModelServicer", "PredictionServicer",
           "RESPONSE_OVERHEAD", "Registry", "RequestLimits", "RestServer", "Servable", "logger"]
