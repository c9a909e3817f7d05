"""What the serving clients and the local server share on the wire: TF Serving's status names
(and their HTTP statuses), the errors that carry them, gRPC's message-size options and the
reading of tensor protos. Imports neither grpc nor tensorflow-serving-api (see
`require_serving_extra`)."""

import math
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
# The most dimensions a request's tensor may claim (the signatures' inputs have at most 5).
MAX_RANK = 8
# The TensorProto value fields that hold two numbers per element.
_COMPLEX_VALUES = ("scomplex_val", "dcomplex_val")

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
    rank = len(proto.tensor_shape.dim)
    if rank > MAX_RANK:  # before the dimensions are read: a request may claim millions
        raise status_error("INVALID_ARGUMENT", (
            f"Input `{key}` claims {rank} dimensions; the signatures' inputs have at most "
            f"{MAX_RANK}."))
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise status_error("INVALID_ARGUMENT", f"Input `{key}` claims shape {shape}.")
    return dtype, shape


def count_fields(data, descriptor, limit, depth=32):
    """The number of fields in the serialized protobuf message `data` of type `descriptor`, at
    every level of its nested messages, read from the wire format without parsing it and
    counted up to `limit` + 1 (more than `limit` is all that matters): parsing makes an object
    of each field, and a 63 MB request that repeats a name 9 million times took gigabytes.
    Packed values and bytes are one field each (their memory is their size). Nesting deeper
    than `depth` counts as too many; malformed data is left to the parser."""
    return _count_fields(memoryview(data), 0, len(data), descriptor, limit, depth)


def _count_fields(data, position, end, descriptor, limit, depth):
    if depth < 0:
        return limit + 1
    count = 0
    while position < end and count <= limit:
        key, position = _varint(data, position, end)
        count += 1
        wire_type = key & 7
        if wire_type == 0:
            _, position = _varint(data, position, end)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length, position = _varint(data, position, end)
            field = descriptor.fields_by_number.get(key >> 3) if descriptor else None
            if field is not None and field.message_type is not None:
                count += _count_fields(data, position, min(position + length, end),
                                       field.message_type, limit - count, depth - 1)
            position += length
        else:  # a group (deprecated) or malformed: the parser decides
            break
    return count


def _varint(data, position, end):
    """The varint at `position` of `data` and the position after it (`end` if it is cut)."""
    value = shift = 0
    while position < end and shift < 70:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return value, end


def check_values(key, proto, dtype, shape):
    """INVALID_ARGUMENT if the TensorProto `proto` of the input `key`, checked to claim `dtype`
    and `shape`, holds more values than `shape` has elements (a repeated `*_val` field), or more
    `tensor_content` bytes than they take: counted without reading them, so that parsing costs
    what the checked shape says and no more."""
    elements = math.prod(shape)
    for field, values in proto.ListFields():
        if field.name == "tensor_content":
            count, allowed, what = len(values), elements * dtype.size, "bytes of tensor_content"
        elif field.name.endswith("_val"):
            per_element = 2 if field.name in _COMPLEX_VALUES else 1
            count, allowed, what = len(values), elements * per_element, f"values in {field.name}"
        else:
            continue
        if count > allowed:
            raise status_error("INVALID_ARGUMENT", (
                f"Input `{key}` holds {count} {what}, more than its shape {list(shape)} of "
                f"{dtype.name} takes ({allowed})."))


def parse_tensor(key, proto):
    """The ndarray of a TensorProto; INVALID_ARGUMENT if it is malformed."""
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 (a malformed TensorProto)
        raise status_error("INVALID_ARGUMENT", f"tensor parsing error: {e}") from None
