"""The local server's gRPC services, TF Serving's: `PredictionService` (`Predict`,
`GetModelMetadata`) and `ModelService` (`GetModelStatus`), on a `Registry`'s servables. What a
request's protos claim (names, dtypes, shapes, bytes, `RequestLimits`) is checked before any
tensor is parsed; every failure is answered with TF Serving's status, never UNKNOWN."""

import functools
import logging
import math

import tensorflow as tf

from tfprobunet.serving.local_server.errors import internal_error, release_freed_memory
from tfprobunet.serving.local_server.limits import GRPC_BYTES_PER_VALUE
from tfprobunet.serving.wire import (ServingError, check_values, count_fields, parse_tensor,
                                     proto_spec, status_error)

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
# The most fields a request may hold at all levels (a Predict request of three inputs holds
# about 40), counted before it is parsed (`count_fields`).
MAX_REQUEST_FIELDS = 1024
_TOO_MANY_FIELDS = (
    f"The request holds more than {MAX_REQUEST_FIELDS} fields (inputs, dimensions, "
    "output_filter or metadata_field names, values sent one by one), counted before it is "
    "parsed: send each input and output name once, and tensors as tensor_content or packed "
    "values, as tf.make_tensor_proto does.")


def _answer(context, method, request):
    """`method(request)`, or the request aborted with its status: TF Serving's for a
    `ServingError` (logged as one line, the problem), INTERNAL with a request id for anything
    else (`errors.internal_error`: its text in the log, never in the answer), never UNKNOWN.
    The exception is not kept: its traceback would hold the request's inputs until the next
    garbage collection."""
    try:
        return method(request)
    except ServingError as e:
        code, message = e.code, e.message
        spec = request.model_spec
        logger.warning("Refused a gRPC %s (model %.100r, signature %.100r): %s",
                       type(request).__name__, spec.name, spec.signature_name, e.headline)
    except Exception as e:  # noqa: BLE001 (answered, and logged for the operator)
        code = "INTERNAL"
        _, message = internal_error(f"a gRPC {type(request).__name__}", e)
    if code == "INTERNAL":  # after the exception and the frames it held are gone
        release_freed_memory()
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
_GenericBase = grpc.GenericRpcHandler if grpc else object


# What `_parse_bounded` returns for a request of too many fields (grpc takes None for a parse
# that failed, and answers INTERNAL).
_TOO_MANY = object()


def _parse_bounded(message_class, data):
    """`data` parsed as a `message_class`, or `_TOO_MANY` if it holds more than
    `MAX_REQUEST_FIELDS` fields: then nothing is parsed."""
    if count_fields(data, message_class.DESCRIPTOR, MAX_REQUEST_FIELDS) > MAX_REQUEST_FIELDS:
        return _TOO_MANY
    return message_class.FromString(data)


class BoundedParsing(_GenericBase):
    """The methods of `PredictionServicer` and `ModelServicer`, with requests parsed by
    `_parse_bounded`: one of too many fields is answered INVALID_ARGUMENT unparsed. Added to
    the server before the generated handlers, which then answer the other methods
    (UNIMPLEMENTED)."""

    def __init__(self, prediction, model):
        self._methods = {
            "/tensorflow.serving.PredictionService/Predict": (
                prediction.Predict, predict_pb2.PredictRequest, predict_pb2.PredictResponse),
            "/tensorflow.serving.PredictionService/GetModelMetadata": (
                prediction.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest,
                get_model_metadata_pb2.GetModelMetadataResponse),
            "/tensorflow.serving.ModelService/GetModelStatus": (
                model.GetModelStatus, get_model_status_pb2.GetModelStatusRequest,
                get_model_status_pb2.GetModelStatusResponse)}

    def service(self, handler_call_details):
        if handler_call_details.method not in self._methods:
            return None
        behavior, request_class, response_class = self._methods[handler_call_details.method]

        def answer(request, context):
            if request is _TOO_MANY:
                logger.warning("Refused a gRPC %s: INVALID_ARGUMENT: more than %d fields",
                               request_class.__name__, MAX_REQUEST_FIELDS)
                release_freed_memory()  # what receiving it took
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _TOO_MANY_FIELDS)
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=functools.partial(_parse_bounded, request_class),
            response_serializer=response_class.SerializeToString)


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
        # claim a tensor of gigabytes, which parsing would allocate. Repeated fields are counted
        # before they are read: a request may repeat a name or a value millions of times.
        signature = servable.signature(signature_name)
        servable.check_names(signature, request.inputs)
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
        for key, proto in request.inputs.items():
            check_values(key, proto, *specs[key])
        output_filter = servable.output_names(signature, request.output_filter)
        num_samples = (parse_tensor("num_samples", request.inputs["num_samples"])
                       if "num_samples" in request.inputs else defaults.get("num_samples"))
        self.limits.check(signature, {k: shape for k, (_, shape) in specs.items()}, num_samples,
                          output_filter, GRPC_BYTES_PER_VALUE)
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
        fields = request.metadata_field  # counted before it is read
        if len(fields) != 1 or fields[0] != "signature_def":
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
