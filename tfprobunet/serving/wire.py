"""What the serving clients and the local server share on the wire: TF Serving's status names
(and their HTTP statuses), the errors that carry them, gRPC's message-size options and the
reading of tensor protos. Imports neither grpc nor tensorflow-serving-api (see
`require_serving_extra`)."""

import re

import tensorflow as tf

from tfprobunet.defaults import MAX_MESSAGE_BYTES

# The signature every SavedModel has for its init ops; not one a client can run.
INIT_OP_SIGNATURE = "__saved_model_init_op"

# HTTP statuses of the REST API for the gRPC status names (TF Serving's mapping) ...
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
               "DEADLINE_EXCEEDED": 408, "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503}
# ... and back, for a REST client (400 is read as INVALID_ARGUMENT; others as INTERNAL).
STATUS_OF_HTTP = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
                  413: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
# The status names of TensorFlow's error codes that a signature's run raises; others: INTERNAL.
_TF_STATUS = {tf.errors.INVALID_ARGUMENT: "INVALID_ARGUMENT", tf.errors.NOT_FOUND: "NOT_FOUND",
              tf.errors.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
              tf.errors.FAILED_PRECONDITION: "FAILED_PRECONDITION",
              tf.errors.OUT_OF_RANGE: "OUT_OF_RANGE"}


def require_serving_extra():
    """Raise an ImportError naming the extra when grpcio or tensorflow-serving-api is missing."""
    try:
        import grpc  # noqa: F401
        import tensorflow_serving.apis  # noqa: F401
    except ImportError:
        raise ImportError("Serving needs grpcio and tensorflow-serving-api: "
                          "pip install 'tfprobunet[serving]'") from None


def grpc_options(max_message_bytes=MAX_MESSAGE_BYTES):
    """gRPC channel and server options bounding message sizes."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


class ServingError(RuntimeError):
    """A request failed on the server. `code` is the gRPC status name (e.g. `"NOT_FOUND"`)."""

    # The longest `headline`: messages may echo what a client sent.
    HEADLINE_CHARS = 500

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def headline(self):
        """`code: ` and the message's first line, at most `HEADLINE_CHARS` of it: one line
        for a log."""
        first = self.message.strip().split("\n", 1)[0]
        if len(first) > self.HEADLINE_CHARS:
            first = f"{first[:self.HEADLINE_CHARS]}..."
        return f"{self.code}: {first}"


class InvalidRequestError(ServingError, ValueError):
    """The server rejected the request's inputs (INVALID_ARGUMENT); `message` says why."""


def status_error(code, message):
    """The `ServingError` for a status name: `InvalidRequestError` for INVALID_ARGUMENT."""
    cls = InvalidRequestError if code == "INVALID_ARGUMENT" else ServingError
    return cls(code, message)


def status_name(error_code):
    """The status name of a TensorFlow error code (`tf.errors.OpError.error_code`)."""
    return _TF_STATUS.get(error_code, "INTERNAL")


# The lines of a TensorFlow error that name graph nodes (`[[{{node Assert_4/Assert}}]]`).
_NODE_LINE = re.compile(r"^\s*\[\[.*\]\]\s*$")


def op_error_message(error):
    """The message of a `tf.errors.OpError` a signature's run raised, as a client and a log
    should read it: what the check says, without the graph's node names."""
    message = error.message.replace("Graph execution error:", "")
    return "\n".join(line for line in message.strip().splitlines()
                     if not _NODE_LINE.match(line)).strip()


# ---------------------------------------------------------------------- tensor protos
def dims(tensor_info):
    """The dimensions of a SignatureDef's `TensorInfo`, -1 where any size goes."""
    return [d.size for d in tensor_info.tensor_shape.dim]


def tensor_infos(infos):
    """`{key: (dtype name, shape)}` of a SignatureDef's inputs or outputs, None for the
    dimensions where any size goes."""
    return {key: (tf.dtypes.as_dtype(info.dtype).name,
                  tuple(None if d.size == -1 else d.size for d in info.tensor_shape.dim))
            for key, info in infos.items()}


def proto_spec(key, proto):
    """`(tf.DType, shape)` a TensorProto claims, read without parsing its values; INVALID_ARGUMENT
    for an unsupported dtype or a negative dimension. `key` names the input."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        dtype.size  # noqa: B018 (raises for dtypes without a size)
    except (TypeError, ValueError):
        raise status_error("INVALID_ARGUMENT", f"Input `{key}` has an unsupported dtype "
                                               f"({proto.dtype}).") from None
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise status_error("INVALID_ARGUMENT", f"Input `{key}` claims shape {shape}.")
    return dtype, shape


def parse_tensor(key, proto):
    """The ndarray of a TensorProto; INVALID_ARGUMENT if it is malformed."""
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 (a malformed TensorProto)
        raise status_error("INVALID_ARGUMENT", f"tensor parsing error: {e}") from None
