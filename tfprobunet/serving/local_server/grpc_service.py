"""The local server's gRPC services, TF Serving's: `PredictionService` (`Predict`,
`GetModelMetadata`) and `ModelService` (`GetModelStatus`), on a `Registry`'s servables. What a
request's protos claim (names, dtypes, shapes, bytes, `RequestLimits`) is checked before any
tensor is parsed; every failure is answered with TF Serving's status, never UNKNOWN."""

import logging
import math

import tensorflow as tf

from tfprobunet.serving.local_server.limits import GRPC_BYTES_PER_VALUE
from tfprobunet.serving.wire import ServingError, parse_tensor, proto_spec, status_error

try:  # the `serving` extra
    import grpc
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)
except ImportError:
    grpc = None

logger = logging.getLogger("tfprobunet.serving")

# gRPC drops status messages beyond 16 KB of trailers, turning the status into
# RESOURCE_EXHAUSTED: messages that echo what a client sent are cut at this length.
MAX_STATUS_CHARS = 4000


def _answer(context, method, request):
    """`method(request)`, or the request aborted with its status: TF Serving's for a
    `ServingError` (logged as one line, the problem), INTERNAL (logged with its traceback) for
    anything else, never UNKNOWN. The exception is not kept: its traceback would hold the
    request's inputs until the next garbage collection."""
    try:
        return method(request)
    except ServingError as e:
        code, message = e.code, e.message
        spec = request.model_spec
        logger.warning("Refused a gRPC %s (model %.100r, signature %.100r): %s",
                       type(request).__name__, spec.name, spec.signature_name, e.headline)
    except Exception as e:  # noqa: BLE001 (answered, and logged for the operator)
        logger.exception("Internal error answering a request")
        code, message = "INTERNAL", f"{type(e).__name__}: {e}"
    context.abort(getattr(grpc.StatusCode, code), _shortened(message))


def _shortened(message):
    """`message`, cut to `MAX_STATUS_CHARS` (it may echo a client's long names)."""
    if len(message) <= MAX_STATUS_CHARS:
        return message
    return f"{message[:MAX_STATUS_CHARS]}... ({len(message) - MAX_STATUS_CHARS} more characters)"


def _spec(request):
    """The model name and version a request asks for: a version set to 0 is version 0 (not
    found), as in TF Serving; only one left unset means the latest."""
    spec = request.model_spec
    return spec.name, spec.version.value if spec.HasField("version") else None


_PredictionBase = prediction_service_pb2_grpc.PredictionServiceServicer if grpc else object
_ModelBase = model_service_pb2_grpc.ModelServiceServicer if grpc else object


class PredictionServicer(_PredictionBase):
    """`PredictionService`: `Predict` and `GetModelMetadata` on a registry's servables."""

    def __init__(self, registry, limits):
        self.registry, self.limits = registry, limits

    def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
        return _answer(context, self._predict, request)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, self._metadata, request)

    def _predict(self, request):
        if request.model_spec.version_label:
            raise status_error("INVALID_ARGUMENT", (
                "The local server has no version labels; ask for a version number, or none for "
                f"the latest. Received: version_label={request.model_spec.version_label!r}."))
        servable = self.registry.get(*_spec(request))
        signature_name = request.model_spec.signature_name or "serving_default"
        # Everything the protos claim is checked before any tensor is parsed: a few bytes can
        # claim a tensor of gigabytes, which parsing would allocate.
        signature = servable.signature(signature_name)
        specs = {k: proto_spec(k, v) for k, v in request.inputs.items()}
        servable.check_inputs(signature, specs)
        defaults = servable.defaults(signature, specs)
        specs.update({k: (tf.dtypes.as_dtype(v.dtype), list(v.shape))
                      for k, v in defaults.items()})
        claimed = sum(math.prod(shape) * dtype.size for dtype, shape in specs.values())
        if claimed > self.limits.max_message_bytes:
            raise status_error("INVALID_ARGUMENT", (
                f"The inputs claim {claimed} bytes, above max_message_bytes = "
                f"{self.limits.max_message_bytes} (a limit of this server)."))
        num_samples = (parse_tensor("num_samples", request.inputs["num_samples"])
                       if "num_samples" in request.inputs else defaults.get("num_samples"))
        output_filter = list(request.output_filter)
        self.limits.check(signature, {k: shape for k, (_, shape) in specs.items()}, num_samples,
                          servable.output_names(signature, output_filter), GRPC_BYTES_PER_VALUE)
        inputs = {**defaults, **{k: parse_tensor(k, v) for k, v in request.inputs.items()}}
        outputs = servable.run(signature_name, inputs, output_filter, self.limits)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def _metadata(self, request):
        if list(request.metadata_field) != ["signature_def"]:
            raise status_error("INVALID_ARGUMENT",
                               "Metadata field(s) other than signature_def are not supported.")
        servable = self.registry.get(*_spec(request))
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signatures.items():
            signatures.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelServicer(_ModelBase):
    """`ModelService.GetModelStatus`: the served versions, AVAILABLE."""

    def __init__(self, registry):
        self.registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC's naming)
        return _answer(context, self._status, request)

    def _status(self, request):
        servable = self.registry.get(*_spec(request))
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = servable.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response
