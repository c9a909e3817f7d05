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
`max_sample_pixels`, `max_message_bytes`) are checked before anything runs; a version that fails
to load, or whose variables hold NaN or Inf, is logged and skipped while the previous one keeps
serving (clients are told NOT_FOUND and the model's name, never paths or loader errors); every
malformed REST body gets a JSON 4xx; clients that stop sending are dropped after
`request_timeout` seconds.

Loading a SavedModel runs its init ops (`main_op`), as TF Serving's loader does: the base path
must be as trusted as the code the server runs.
"""

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import re
import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

from tfprobunet.defaults import (MAX_BODY_BYTES, MAX_MESSAGE_BYTES, MAX_PIXELS,
                                 MAX_SAMPLE_PIXELS, MAX_SAMPLES)
from tfprobunet.saving import NonFiniteWeightsError
from tfprobunet.serving.client import (INIT_OP_SIGNATURE, ServingError, grpc_options,
                                       require_serving_extra, status_error)
from tfprobunet.serving.export import version_folders

try:  # the `serving` extra
    import grpc
    from google.protobuf import json_format
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)
except ImportError:
    grpc = None

logger = logging.getLogger("tfprobunet.serving")

# HTTP statuses of the REST API for the gRPC status names (TF Serving's mapping).
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
               "DEADLINE_EXCEEDED": 408, "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503}
# Bytes per output value in a response: 4 in a TensorProto, up to about 20 as JSON text.
GRPC_BYTES_PER_VALUE, JSON_BYTES_PER_VALUE = 4, 20
# The bodies being read or waiting for a slot, in bytes, at most this many times
# `max_body_bytes` (and twice that in memory for the one being parsed per REST worker).
BODY_BUDGET = 4
# What a gRPC response carries beyond its values (framing, names, shapes), with a margin.
RESPONSE_OVERHEAD = 2**16
# gRPC drops status messages beyond 16 KB of trailers, turning the status into
# RESOURCE_EXHAUSTED: messages that echo what a client sent are cut at this length.
MAX_STATUS_CHARS = 4000


def _status_name(code):
    names = {tf.errors.INVALID_ARGUMENT: "INVALID_ARGUMENT", tf.errors.NOT_FOUND: "NOT_FOUND",
             tf.errors.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
             tf.errors.FAILED_PRECONDITION: "FAILED_PRECONDITION",
             tf.errors.OUT_OF_RANGE: "OUT_OF_RANGE"}
    return names.get(code, "INTERNAL")


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server; beyond it, the request is refused before it runs.

    Attributes:
        max_samples: samples per image (`num_samples`, or the samples of `z`).
        max_pixels: image pixels per request, b * h * w of `images` or `features`.
        max_sample_pixels: sampled pixels per request, b * m * h * w.
        max_message_bytes: the largest gRPC message, and the largest response.
    """

    max_samples: int = MAX_SAMPLES
    max_pixels: int = MAX_PIXELS
    max_sample_pixels: int = MAX_SAMPLE_PIXELS
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{field.name}` must be an integer >= 1. Received: {value!r}")

    def check(self, signature, shapes, num_samples, output_names, bytes_per_value):
        """Raise INVALID_ARGUMENT for a request beyond the sample and pixel limits, and
        RESOURCE_EXHAUSTED for one whose response would exceed `max_message_bytes`.

        Args:
            signature: the `SignatureDef` the request runs.
            shapes: input name -> shape, already checked against the signature's.
            num_samples: the `num_samples` input's value, or None.
            output_names: the outputs the response carries.
            bytes_per_value: the response's size per output value.
        """
        key = "images" if "images" in shapes else "features"
        if key not in shapes:
            return
        b, h, w = shapes[key][:3]
        if b * h * w > self.max_pixels:
            raise status_error("INVALID_ARGUMENT", (
                f"`{key}` holds {b} x {h} x {w} = {b * h * w} pixels, above max_pixels = "
                f"{self.max_pixels} (a limit of this server): send fewer or smaller images per "
                "request (`tfprobunet serve --max-pixels` raises it)."))
        m = None
        if num_samples is not None:
            m, what = max(int(num_samples), 0), "`num_samples` is"
        elif "z" in shapes:
            m, what = shapes["z"][1], "`z` holds samples per image:"
        if m is not None and m > self.max_samples:
            raise status_error("INVALID_ARGUMENT", (
                f"{what} {m}, above max_samples = {self.max_samples} (a limit of this server): "
                "ask in several requests (`tfprobunet serve --max-samples` raises it)."))
        if m is not None and b * m * h * w > self.max_sample_pixels:
            raise status_error("INVALID_ARGUMENT", (
                f"The request asks for {b} x {m} x {h} x {w} = {b * m * h * w} sample pixels, "
                f"above max_sample_pixels = {self.max_sample_pixels} (a limit of this server): "
                "ask for fewer samples or images per request (`tfprobunet serve "
                "--max-sample-pixels` raises it)."))
        # Unknown output dimensions are, in order, b, m (when sampling), h and w.
        sizes = [b, m, h, w] if m is not None else [b, h, w]
        values = sum(math.prod(sizes[i] if d == -1 and i < len(sizes) else max(d, 1)
                               for i, d in enumerate(_dims(signature.outputs[name])))
                     for name in output_names)
        if values * bytes_per_value + RESPONSE_OVERHEAD > self.max_message_bytes:
            raise status_error("RESOURCE_EXHAUSTED", (
                f"The response would take about {values * bytes_per_value / 2**20:.0f} MiB, "
                f"above max_message_bytes = {self.max_message_bytes} "
                f"({self.max_message_bytes / 2**20:.0f} MiB, a limit of this server): ask for "
                "fewer samples or images per request, or for masks alone (gRPC "
                "`output_filter=['masks']`)."))


def _dims(tensor_info):
    return [d.size for d in tensor_info.tensor_shape.dim]


class Servable:
    """One version of a model: a TF1 session on its SavedModel, run by SignatureDef tensor names.

    Args:
        name: the model's name. version: its integer version.
        path: the version folder (`<base_path>/<name>/<version>`).

    Raises whatever the loader raises for a folder that is not a complete SavedModel, and
    `NonFiniteWeightsError` (a ValueError) if its variables hold NaN or Inf: what a diverged run
    leaves, whose answers would mean nothing.
    """

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        tf_logger = tf.get_logger()
        level = tf_logger.level
        tf_logger.setLevel("ERROR")  # the TF1 loader's deprecation notice: we mean to use it
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
            # After the load, whose errors say more about a folder that is not a SavedModel.
            _check_finite_variables(name, version, path)
        except BaseException:
            self.session.close()
            raise
        finally:
            tf_logger.setLevel(level)
        self.signatures = {k: v for k, v in meta_graph.signature_def.items()
                           if k != INIT_OP_SIGNATURE}

    def run(self, signature_name, inputs, output_filter=(), limits=None,
            bytes_per_value=GRPC_BYTES_PER_VALUE):
        """Feed `inputs` (name -> ndarray) to the signature's tensors.

        Args:
            signature_name: e.g. `"serving_default"`.
            inputs: name -> ndarray.
            output_filter: the outputs to fetch; empty: all.
            limits: a `RequestLimits` checked before running, or None.
            bytes_per_value: the response's size per value, for `limits.max_message_bytes`.

        Returns:
            name -> ndarray. Raises `ServingError` with TF Serving's status codes.
        """
        signature = self.signature(signature_name)
        inputs = {**self.defaults(signature, inputs), **inputs}
        self.check_inputs(signature, {k: (tf.dtypes.as_dtype(v.dtype), list(v.shape))
                                      for k, v in inputs.items()})
        names = self.output_names(signature, output_filter)
        if limits is not None:
            num_samples = inputs["num_samples"] if "num_samples" in inputs else None
            limits.check(signature, {k: v.shape for k, v in inputs.items()}, num_samples, names,
                         bytes_per_value)
        feed = {signature.inputs[k].name: v for k, v in inputs.items()}
        try:
            fetched = self.session.run([signature.outputs[k].name for k in names], feed)
        except tf.errors.OpError as e:
            message = e.message.replace("Graph execution error:", "").strip()
            raise status_error(_status_name(e.error_code), message) from None
        return dict(zip(names, fetched))

    def signature(self, name):
        """The `SignatureDef` named `name`; FAILED_PRECONDITION if there is none."""
        if name not in self.signatures:
            raise status_error("FAILED_PRECONDITION", (
                f"Serving signature key \"{name}\" not found. Signatures: "
                f"{sorted(self.signatures)}."))
        return self.signatures[name]

    @staticmethod
    def defaults(signature, sent):
        """The signature's default values (its `defaults`, as TF Serving fills them in) of the
        inputs not in `sent`: name -> ndarray."""
        return {k: tf.make_ndarray(v) for k, v in signature.defaults.items() if k not in sent}

    @staticmethod
    def check_inputs(signature, specs):
        """INVALID_ARGUMENT unless `specs` (input name -> (tf.DType, shape)) has the signature's
        names (those with defaults may be left out), dtypes and compatible shapes: checked
        before any tensor is parsed."""
        expected, sent = set(signature.inputs), set(specs)
        if sent - expected or expected - sent - set(signature.defaults):
            raise status_error("INVALID_ARGUMENT", (
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. Missing but required: "
                f"{{{','.join(sorted(expected - sent - set(signature.defaults)))}}}."))
        for key, (dtype, shape) in specs.items():
            info = signature.inputs[key]
            expected_dtype = tf.dtypes.as_dtype(info.dtype)
            if dtype != expected_dtype:
                raise status_error("INVALID_ARGUMENT", (
                    f"Expects input `{key}` to be {expected_dtype.name} but {dtype.name} is "
                    "provided."))
            dims = _dims(info)
            if not info.tensor_shape.unknown_rank and (
                    len(dims) != len(shape) or any(d not in (-1, v)
                                                   for d, v in zip(dims, shape))):
                raise status_error("INVALID_ARGUMENT", (
                    f"Input `{key}` has shape {list(shape)}, which is not compatible with the "
                    f"signature's {dims} (-1: any size)."))
        # Per-image inputs (a free batch dimension and more) must agree on the batch size.
        batches = {key: shape[0] for key, (_, shape) in sorted(specs.items())
                   if len(_dims(signature.inputs[key])) >= 2
                   and _dims(signature.inputs[key])[0] == -1}
        if len(set(batches.values())) > 1:
            (first, size), *others = batches.items()
            other, other_size = next((k, b) for k, b in others if b != size)
            raise status_error("INVALID_ARGUMENT", (
                f"`{first}` and `{other}` must have the same batch size; received {size} and "
                f"{other_size}."))

    @staticmethod
    def output_names(signature, output_filter=()):
        """The outputs a request fetches: `output_filter`'s, checked, or all of them."""
        for alias in output_filter:
            if alias not in signature.outputs:
                raise status_error("INVALID_ARGUMENT", (
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}."))
        return list(output_filter) or sorted(signature.outputs)

    def close(self):
        self.session.close()


def _check_finite_variables(name, version, path):
    """Raise `NonFiniteWeightsError` if a floating-point variable in the checkpoint of the
    SavedModel at `path` holds NaN or Inf, naming how many and the first (by the name the
    checkpoint records for it)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = os.path.join(path, "variables", "variables")
    if not tf.io.gfile.exists(prefix + ".index"):  # a model without variables
        return
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    floats = sorted(k for k, dtype in dtypes.items() if dtype.is_floating)
    bad = [k for k in floats if not np.all(np.isfinite(reader.get_tensor(k)))]
    if not bad:
        return
    names = {}
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in dtypes:
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        names = {a.checkpoint_key: a.full_name for node in graph.nodes for a in node.attributes}
    raise NonFiniteWeightsError(
        f"Version {version} of model {name!r} has non-finite (NaN or infinite) values in "
        f"{len(bad)} of its {len(floats)} variables, e.g. {names.get(bad[0], bad[0])}: it comes "
        "from a run that diverged, and its answers would mean nothing. Export a model trained "
        "again, or from an earlier checkpoint, as a new version.")


def _fingerprint(path):
    """The names, sizes and modification times of the files a SavedModel loads from (the folder,
    `saved_model.pb`, `variables/*`): a copy that completes, or a fix, changes it. Not a walk of
    the whole tree, which a large folder would make slow at every poll."""
    entries = []
    for folder in (path, os.path.join(path, "variables")):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:  # removed meanwhile
                continue
            entries.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size,
                            stat.st_mtime_ns))
    return tuple(sorted(entries))


class _Registry:
    """The latest loadable version of every model under `base_path` (TF Serving's default
    version policy). A version folder counts once it holds `saved_model.pb`; one that fails to
    load is logged, skipped (an older version keeps serving) and tried again only when its
    folder changes."""

    def __init__(self, base_path):
        self.base_path = base_path
        self._servables = {}  # name -> the Servable of its latest version
        self._failed = {}  # path -> the fingerprint of a version that failed to load
        self._lock = threading.Lock()  # guards _servables; held only briefly
        self._reload_lock = threading.Lock()  # one scan at a time

    def _versions_on_disk(self, name):
        """`(version, path)` of the model's complete-looking versions, newest first."""
        folder = os.path.join(self.base_path, name)
        versions = [(v, os.path.join(folder, f)) for v, f in version_folders(folder).items()]
        return sorted(((v, path) for v, path in versions
                       if os.path.exists(os.path.join(path, "saved_model.pb"))), reverse=True)

    def reload(self, wait=True):
        """Load what changed on disk. Never raises: a model whose scan fails is logged and left
        as it was, the others are scanned. Not `wait`ing, return at once if a scan is running."""
        if not self._reload_lock.acquire(blocking=wait):
            return
        try:
            try:
                names = sorted(os.listdir(self.base_path))
            except OSError as e:
                logger.warning("Cannot list the model base path %s: %s", self.base_path, e)
                return
            for name in names:
                try:
                    self._reload_model(name)
                except Exception:  # noqa: BLE001 (one model's trouble must not stop the others)
                    logger.exception("Scanning model %r under %s failed", name, self.base_path)
        finally:
            self._reload_lock.release()

    def _reload_model(self, name):
        with self._lock:
            served = self._servables.get(name)
        removed = served is not None and not os.path.isdir(served.path)
        if removed:  # as TF Serving: unloaded, the newest version left is served instead
            logger.warning("%s was removed: version %d of model %r is no longer served.",
                           served.path, served.version, name)
            served = None
        attempts = []  # the versions it tried to load
        try:
            loaded = self._load_newest(name, served, attempts)
        finally:
            if attempts or removed:
                # A load leaves its graph in reference cycles (a failed one too), which only
                # a full collection frees, and the previous version's session with it.
                gc.collect()
        if removed and loaded is None:
            with self._lock:
                self._servables.pop(name, None)

    def _load_newest(self, name, served, attempts):
        """Serve the newest loadable version newer than `served` (any, if None); returns its
        Servable, or None if there is none. Appends the versions it tries to `attempts`."""
        for version, path in self._versions_on_disk(name):  # newest first
            if served is not None and version <= served.version:
                return None
            fingerprint = _fingerprint(path)
            if self._failed.get(path) == fingerprint:
                continue  # failed before, unchanged since
            attempts.append(version)
            try:
                # Loading takes a while: requests keep being served by the older version.
                servable = Servable(name, version, path)
            except Exception as e:  # noqa: BLE001 (any loader failure: log, skip, go on)
                self._failed[path] = fingerprint
                still = (f"version {served.version} keeps serving" if served is not None
                         else "no version of it is served")
                # The error as text: a log record holding it would keep its traceback's
                # frames, and the graph they hold, alive.
                logger.warning("Could not load %s (version %d of model %r): %s. Skipped, %s; it "
                               "is tried again when its folder changes.", path, version, name,
                               f"{type(e).__name__}: {e}", still)
                continue
            self._failed.pop(path, None)
            with self._lock:
                # The older version stops being served; requests running on it finish.
                self._servables[name] = servable
            return servable
        return None

    def versions(self, name):
        with self._lock:
            servable = self._servables.get(name)
        return [servable.version] if servable is not None else []

    def get(self, name, version=None):
        """The servable, the latest version by default (TF Serving's default policy); NOT_FOUND
        for unknown models and versions."""
        servable = self._find(name, version)
        if servable is None:
            # Exported since the last scan? Requests never queue behind a running scan.
            self.reload(wait=False)
            servable = self._find(name, version)
        if servable is None:
            # The model's name only, as TF Serving answers: which versions failed to load, where
            # and why was logged when they did, for the operator, not the client.
            request = (f"Specific({name}, {version})" if version is not None
                       else f"Latest({name})")
            raise status_error("NOT_FOUND", f"Servable not found for request: {request}")
        return servable

    def _find(self, name, version):
        """The servable of `name` if it is `version` (None: any); version 0 never is."""
        with self._lock:
            servable = self._servables.get(name)
        if servable is None or (version is not None and servable.version != version):
            return None
        return servable

    def close(self):
        with self._lock:
            for servable in self._servables.values():
                servable.close()
            self._servables.clear()


# ---------------------------------------------------------------------- gRPC
def _proto_spec(key, proto):
    """`(tf.DType, shape)` a TensorProto claims, read without parsing its values."""
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


def _parse_tensor(key, proto):
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 (a malformed TensorProto)
        raise status_error("INVALID_ARGUMENT", f"tensor parsing error: {e}") from None


def _answer(context, method, request):
    """`method(request)`, or the request aborted with its status: TF Serving's for a
    `ServingError`, INTERNAL (logged) for anything else, never UNKNOWN. The exception is not
    kept: its traceback would hold the request's inputs until the next garbage collection."""
    try:
        return method(request)
    except ServingError as e:
        code, message = e.code, e.message
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
        specs = {k: _proto_spec(k, v) for k, v in request.inputs.items()}
        servable.check_inputs(signature, specs)
        defaults = servable.defaults(signature, specs)
        specs.update({k: (tf.dtypes.as_dtype(v.dtype), list(v.shape))
                      for k, v in defaults.items()})
        claimed = sum(math.prod(shape) * dtype.size for dtype, shape in specs.values())
        if claimed > self.limits.max_message_bytes:
            raise status_error("INVALID_ARGUMENT", (
                f"The inputs claim {claimed} bytes, above max_message_bytes = "
                f"{self.limits.max_message_bytes} (a limit of this server)."))
        num_samples = (_parse_tensor("num_samples", request.inputs["num_samples"])
                       if "num_samples" in request.inputs else defaults.get("num_samples"))
        output_filter = list(request.output_filter)
        self.limits.check(signature, {k: shape for k, (_, shape) in specs.items()}, num_samples,
                          servable.output_names(signature, output_filter), GRPC_BYTES_PER_VALUE)
        inputs = {**defaults, **{k: _parse_tensor(k, v) for k, v in request.inputs.items()}}
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


# ---------------------------------------------------------------------- REST
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?P<rest>/metadata|:predict)?$")
_REST_KEYS = {"signature_name", "inputs", "instances"}


def _rest_tensor(key, value, dtype):
    """A JSON value as an ndarray of `dtype`: rectangular, numbers, integers for integer
    inputs, within the dtype's range."""
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise status_error("INVALID_ARGUMENT",
                           f"Input `{key}` is not a rectangular array: {e}") from None
    integer = np.issubdtype(dtype, np.integer)
    kinds = "iu" if integer else "iuf"
    if array.dtype.kind not in kinds:
        wanted = "integers" if integer else "numbers"
        raise status_error("INVALID_ARGUMENT", (
            f"Input `{key}` must hold {wanted} ({np.dtype(dtype).name}); received "
            f"{json.dumps(value)[:80]}."))
    if integer and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise status_error("INVALID_ARGUMENT", (
                f"Input `{key}` is out of the {np.dtype(dtype).name} range [{info.min}, "
                f"{info.max}]; received {json.dumps(value)[:80]}."))
    return array.astype(dtype)


def _rest_predict_request(servable, body):
    """The signature name and inputs of a REST predict body, or INVALID_ARGUMENT saying what
    is wrong with it."""
    if not isinstance(body, dict):
        raise status_error("INVALID_ARGUMENT", (
            "The request body must be a JSON object, {\"signature_name\": ..., \"inputs\": "
            f"{{name: value}}}}; received a {type(body).__name__}."))
    unknown = sorted(set(body) - _REST_KEYS)
    if "output_filter" in unknown:
        raise status_error("INVALID_ARGUMENT", (
            "`output_filter` is not part of TF Serving's REST API, which returns every output; "
            "over gRPC, `PredictRequest.output_filter` selects them."))
    if unknown:
        raise status_error("INVALID_ARGUMENT", f"Unknown key(s) {unknown}: the body takes "
                                               "`signature_name` and `inputs`.")
    if "inputs" not in body:
        raise status_error("INVALID_ARGUMENT", (
            "Missing 'inputs' key: these signatures take scalar inputs (num_samples), so use "
            "the columnar format {\"signature_name\": ..., \"inputs\": {name: value}}."))
    signature_name = body.get("signature_name", "serving_default")
    if not isinstance(signature_name, str):
        raise status_error("INVALID_ARGUMENT", "`signature_name` must be a string; received "
                                               f"a {type(signature_name).__name__}.")
    if not isinstance(body["inputs"], dict):
        raise status_error("INVALID_ARGUMENT", (
            "`inputs` must be an object {name: value} (the columnar format); received a "
            f"{type(body['inputs']).__name__}."))
    signature = servable.signatures.get(signature_name)
    if signature is None:
        servable.run(signature_name, {})  # raises the unknown-signature error
    inputs = {}
    for key, value in body["inputs"].items():
        info = signature.inputs.get(key)
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype if info else np.float32
        inputs[key] = _rest_tensor(key, value, dtype)
    return signature_name, inputs


def _parse_json(data):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise status_error("INVALID_ARGUMENT", f"JSON Parse error: {e}") from None


class _RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST endpoints; every request gets a JSON answer. One request per
    connection (HTTP/1.0), which must arrive whole within the server's `request_timeout`."""

    def setup(self):
        self.timeout = self.server.request_timeout  # per read; the server's reaper per request
        super().setup()
        self.server.expect(self.connection)

    def finish(self):
        self.server.received(self.connection)
        super().finish()

    def send_error(self, code, message=None, explain=None):
        """What http.server refuses itself (a bad request line, another method, a too long
        header) is answered in JSON too."""
        if self.request_version == "HTTP/0.9":  # unparsed: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        error = message or self.responses.get(code, ("Error",))[0]
        self._send_json(code, {"error": f"{error}: {self.requestline[:200]!r}"})

    def _send_json(self, status, body):
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client is gone
            self.close_connection = True

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _handle(self, method):
        # What the request holds (its body's bytes in the budget, a worker slot) until its
        # answer is sent: an encoded answer and its client count against the slot too.
        with contextlib.ExitStack() as held:
            self._answer(method, held)

    def _answer(self, method, held):
        try:
            status, body = 200, self._route(method, held)
        except ServingError as e:
            status, body = HTTP_STATUS.get(e.code, 500), {"error": e.message}
        except TimeoutError:
            status, body = 408, {"error": (
                f"The request did not arrive within the server's request_timeout of "
                f"{self.server.request_timeout} s.")}
        except Exception as e:  # noqa: BLE001 (answered, and logged for the operator)
            logger.exception("Internal error answering a REST request")
            status, body = 500, {"error": f"Internal error: {type(e).__name__}: {e}"}
        if status != 200:
            self.close_connection = True  # the body may be unread
        self._send_json(status, body)

    def _route(self, method, held):
        self._check_framing()
        match = _REST_PATH.match(self.path)
        if not match or (method == "POST") != (match["rest"] == ":predict"):
            raise status_error("NOT_FOUND", f"Malformed request: {method} {self.path}")
        version = int(match["version"]) if match["version"] is not None else None
        if method == "GET":
            self.server.received(self.connection)
        if method == "POST":
            data = self._read_body(held)
            # Parsing, answering and sending take memory; reading slowly does not.
            held.enter_context(self.server.slot())
            body = _parse_json(data)
            del data
            servable = self.server.registry.get(match["name"], version)
            signature_name, inputs = _rest_predict_request(servable, body)
            outputs = servable.run(signature_name, inputs, limits=self.server.limits,
                                   bytes_per_value=JSON_BYTES_PER_VALUE)
            return {"outputs": {k: v.tolist() for k, v in outputs.items()}}
        servable = self.server.registry.get(match["name"], version)
        if match["rest"] == "/metadata":
            return {"model_spec": {"name": servable.name, "version": str(servable.version)},
                    "metadata": {"signature_def": {"signature_def": {
                        k: json_format.MessageToDict(v)
                        for k, v in servable.signatures.items()}}}}
        return {"model_version_status": [
            {"version": str(servable.version), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]}

    def _check_framing(self):
        """INVALID_ARGUMENT for a request whose end is ambiguous (RFC 9112, section 6.3): with
        both Transfer-Encoding and Content-Length, or Content-Lengths that differ. A proxy in
        front of the server could read it as another request than the server does."""
        lengths = self.headers.get_all("Content-Length") or []
        if lengths and self.headers.get_all("Transfer-Encoding"):
            raise status_error("INVALID_ARGUMENT", (
                "The request has both Transfer-Encoding and Content-Length headers, which RFC "
                "9112 (section 6.3) forbids: send Content-Length alone."))
        if len({length.strip() for length in lengths}) > 1:
            raise status_error("INVALID_ARGUMENT", (
                f"The request has Content-Length headers that differ, {lengths[:4]}, which RFC "
                "9112 (section 6.3) forbids: send one."))

    def _read_body(self, held):
        limit = self.server.max_body_bytes
        length = self.headers.get("Content-Length")
        if length is None or not re.fullmatch(r"[0-9]+", length.strip()):
            raise status_error("INVALID_ARGUMENT", "A predict request needs a Content-Length "
                                                   f"header with its size; received {length!r}.")
        if int(length) > limit:
            raise status_error("RESOURCE_EXHAUSTED", (
                f"The body's Content-Length of {int(length)} bytes is above max_body_bytes = "
                f"{limit} (a limit of this server: `tfprobunet serve --max-body-bytes`; JSON "
                "takes about 34 times its size in memory once parsed)."))
        held.enter_context(self.server.body_bytes(int(length)))
        data = self.rfile.read(int(length))
        self.server.received(self.connection)
        if len(data) < int(length):
            raise TimeoutError  # the client closed, or the reaper did, before it all came
        return data


class _RestServer(ThreadingHTTPServer):
    """The REST server: a thread per connection, and a reaper that closes the reading side of
    connections whose request has not arrived whole within `request_timeout` seconds (a per-read
    socket timeout alone lets a client that sends a byte now and then hold a thread forever)."""

    daemon_threads = True

    def __init__(self, address, registry, limits, max_body_bytes, request_timeout, rest_workers):
        self.registry, self.limits = registry, limits
        self.max_body_bytes, self.request_timeout = max_body_bytes, request_timeout
        # Requests parsed, answered and sent at once: each may take about 1 GB at the default
        # limits.
        self.rest_workers = rest_workers
        self._slots = threading.BoundedSemaphore(rest_workers)
        self.body_budget = BODY_BUDGET * max_body_bytes
        self._body_bytes = 0  # of the bodies being read or waiting for a slot
        self._budget = threading.Condition()
        self._deadlines = {}  # connection -> when its request must have arrived
        self._deadlines_lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__(address, _RestHandler)
        threading.Thread(target=self._reap, daemon=True, name="rest-reaper").start()

    @contextlib.contextmanager
    def slot(self):
        """One of the `rest_workers` slots for parsing, answering and sending the answer of a
        request whose body has arrived; UNAVAILABLE (503) if none frees up within
        `request_timeout` seconds."""
        if not self._slots.acquire(timeout=self.request_timeout):
            raise status_error("UNAVAILABLE", (
                f"The server is busy: {self.rest_workers} REST requests are being answered "
                f"(rest_workers, `tfprobunet serve --rest-workers`) and none finished within "
                f"{self.request_timeout} s; try again."))
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def body_bytes(self, size):
        """`size` bytes of the `body_budget` for a body about to be read; UNAVAILABLE (503) if
        they do not free up within `request_timeout` seconds."""
        deadline = time.monotonic() + self.request_timeout
        with self._budget:
            while self._body_bytes + size > self.body_budget:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._budget.wait(remaining):
                    raise status_error("UNAVAILABLE", (
                        f"The server is busy: {self._body_bytes} bytes of request bodies are "
                        f"being read or waiting to be answered, and this one's {size} would "
                        f"exceed {BODY_BUDGET} x max_body_bytes = {self.body_budget} "
                        "(`tfprobunet serve --max-body-bytes`); try again."))
            self._body_bytes += size
        try:
            yield
        finally:
            with self._budget:
                self._body_bytes -= size
                self._budget.notify_all()

    def expect(self, connection):
        with self._deadlines_lock:
            self._deadlines[connection] = time.monotonic() + self.request_timeout

    def received(self, connection):
        with self._deadlines_lock:
            self._deadlines.pop(connection, None)

    def _reap(self):
        while not self._closed.wait(min(0.25, self.request_timeout / 4)):
            now = time.monotonic()
            with self._deadlines_lock:
                late = [c for c, deadline in self._deadlines.items() if deadline < now]
                for connection in late:
                    del self._deadlines[connection]
            for connection in late:
                try:  # a blocked read returns: the handler answers 408 or drops the connection
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def server_close(self):
        self._closed.set()
        super().server_close()


class ModelServer:
    """A local TF Serving stand-in: gRPC on `port`, REST on `rest_port` (0: a free port; None:
    no REST). The base path is scanned every `poll_seconds` for new versions, as TF Serving does.

    Args:
        base_path: the model base folder, holding `<name>/<version>/`.
        port, rest_port, host: where to listen.
        max_workers: gRPC requests answered at once (TF Serving: `--grpc_max_threads`); more
            wait. Each may take about 1 GB at the default limits.
        rest_workers: REST requests parsed, answered and sent at once (TF Serving:
            `--rest_api_num_threads`); more wait up to `request_timeout`, then get 503. The
            bodies being read or waiting total at most `BODY_BUDGET` x `max_body_bytes`.
        poll_seconds: seconds between scans (TF Serving: `--file_system_poll_wait_seconds`);
            0 scans only when a request names an unknown model.
        max_samples, max_pixels, max_sample_pixels: per-request limits (`RequestLimits`), on
            top of those each export records; the defaults are the export's.
        max_message_bytes: the largest gRPC message, both ways, and REST response (default
            256 MiB; TF Serving: `--grpc_channel_arguments=grpc.max_receive_message_length=...`).
        max_body_bytes: the largest REST request body (default 32 MiB: parsed JSON takes about
            34 times its size in memory).
        request_timeout: seconds a REST client may take to send its whole request (TF
            Serving: `--rest_api_timeout_in_ms`).

    Example:

    ```python
    with ModelServer("saved_models", port=0, rest_port=0) as server:
        client = GrpcClient(f"localhost:{server.port}", "probunet")
        masks = client.predict(images, 16)["masks"]
    ```
    """

    def __init__(self, base_path, port=8500, rest_port=8501, host="127.0.0.1", max_workers=4,
                 rest_workers=2, poll_seconds=1.0, max_samples=MAX_SAMPLES, max_pixels=MAX_PIXELS,
                 max_sample_pixels=MAX_SAMPLE_PIXELS, max_message_bytes=MAX_MESSAGE_BYTES,
                 max_body_bytes=MAX_BODY_BYTES, request_timeout=30.0):
        require_serving_extra()
        if not os.path.isdir(base_path):
            raise FileNotFoundError(f"No model base path {base_path!r}: export a model there "
                                    "first (`tfprobunet export`).")
        self.limits = RequestLimits(max_samples, max_pixels, max_sample_pixels,
                                    max_message_bytes)
        self.registry = _Registry(base_path)
        self.registry.reload()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                 options=grpc_options(max_message_bytes))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.registry, self.limits), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.registry),
                                                                  self._grpc)
        self.port = self._grpc.add_insecure_port(f"{host}:{port}")
        self.host, self.poll_seconds = host, poll_seconds
        self._stopped = threading.Event()
        self._http = None
        self.rest_port = None
        if rest_port is not None:
            self._http = _RestServer((host, rest_port), self.registry, self.limits,
                                     max_body_bytes, request_timeout, rest_workers)
            self.rest_port = self._http.server_address[1]

    def _poll(self):
        # Like TF Serving's --file_system_poll_wait_seconds: new versions are picked up. The
        # loop never ends on an error: it is logged and the next scan runs.
        while not self._stopped.wait(self.poll_seconds):
            try:
                self.registry.reload()
            except Exception:  # noqa: BLE001
                logger.exception("Scanning %s failed", self.registry.base_path)

    def start(self):
        self._grpc.start()
        if self.poll_seconds:
            threading.Thread(target=self._poll, daemon=True, name="model-poll").start()
        if self._http is not None:
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self._stopped.set()
        self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.registry.close()

    def wait(self):
        """Block until interrupted (for `tfprobunet serve`)."""
        self._grpc.wait_for_termination()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
