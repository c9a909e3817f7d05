"""Talk to a served Probabilistic U-Net, and serve one locally the way TF Serving does.

- `GrpcClient` speaks TF Serving's gRPC API (`tensorflow_serving.apis`): `features(images)` once
  per image, then `sample(features, num_samples)` as often as needed; `predict` is both in one
  call (`serving_default`), `decode` runs f_comb on given latents, `metadata` lists the
  signatures. `RestClient` does the same over TF Serving's REST API.
- `ModelServer` is a local stand-in for `tensorflow_model_server`, for tests and the demo. It
  loads every version under `<base_path>/<name>/<version>/` into a TF1 session
  (`tf.compat.v1.saved_model.loader.load`, tag `serve`) and runs a signature by feeding and
  fetching the tensor names of its SignatureDef, never the Python objects, as TF Serving does.
  It answers the gRPC `PredictionService` (`Predict`, `GetModelMetadata`) and `ModelService`
  (`GetModelStatus`), and the REST endpoints `GET /v1/models/NAME[/versions/N][/metadata]` and
  `POST /v1/models/NAME[/versions/N]:predict` (columnar `inputs`/`outputs` JSON).

Both clients talk to both servers: in production, run the `tensorflow/serving` image (README).
"""

import json
import os
import re
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib import error as urllib_error
from urllib import request as urllib_request

import numpy as np
import tensorflow as tf

_GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
INIT_OP_SIGNATURE = "__saved_model_init_op"


def _serving_apis():
    try:
        import grpc
        from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                             model_service_pb2_grpc, predict_pb2,
                                             prediction_service_pb2_grpc)
    except ImportError as e:
        raise ImportError("Serving needs grpcio and tensorflow-serving-api: "
                          "pip install 'tfprobunet[serving]'") from e
    return (grpc, get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
            predict_pb2, prediction_service_pb2_grpc)


class ServingError(RuntimeError):
    """A request failed on the server. `code` is the gRPC status name (e.g. `"NOT_FOUND"`)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class InvalidRequestError(ServingError, ValueError):
    """The server rejected the request's inputs (INVALID_ARGUMENT); `message` says why."""


def _error(code, message):
    cls = InvalidRequestError if code == "INVALID_ARGUMENT" else ServingError
    return cls(code, message)


# ---------------------------------------------------------------------- the servables
class _Servable:
    """One version of a model: a TF1 session on its SavedModel and its SignatureDefs."""

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")  # the TF1 loader's deprecation notice: we mean to use it
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        finally:
            logger.setLevel(level)
        self.signatures = {k: v for k, v in meta_graph.signature_def.items()
                           if k != INIT_OP_SIGNATURE}

    def run(self, signature_name, inputs, output_filter=()):
        """Feed `inputs` (name -> ndarray) to the signature's tensors; returns name -> ndarray.
        Raises `ServingError` with TF Serving's status codes."""
        if signature_name not in self.signatures:
            raise _error("FAILED_PRECONDITION", f"Serving signature key \"{signature_name}\" not "
                         f"found. Signatures: {sorted(self.signatures)}.")
        signature = self.signatures[signature_name]
        expected, sent = set(signature.inputs), set(inputs)
        if expected != sent:
            raise _error("INVALID_ARGUMENT", (
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. Missing but required: "
                f"{{{','.join(sorted(expected - sent))}}}."))
        for alias in output_filter:
            if alias not in signature.outputs:
                raise _error("INVALID_ARGUMENT", (
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}."))
        feed = {}
        for key, value in inputs.items():
            info = signature.inputs[key]
            dtype = tf.dtypes.as_dtype(info.dtype)
            if value.dtype != dtype.as_numpy_dtype:
                raise _error("INVALID_ARGUMENT", f"Expects input `{key}` to be {dtype.name} but "
                             f"{tf.dtypes.as_dtype(value.dtype).name} is provided.")
            dims = [d.size for d in info.tensor_shape.dim]
            if not info.tensor_shape.unknown_rank and (
                    len(dims) != value.ndim or any(d not in (-1, v)
                                                   for d, v in zip(dims, value.shape))):
                raise _error("INVALID_ARGUMENT", f"Input `{key}` has shape {list(value.shape)}, "
                             f"which is not compatible with the signature's {dims} (-1: any "
                             "size).")
            feed[info.name] = value
        names = list(output_filter) or sorted(signature.outputs)
        try:
            fetched = self.session.run([signature.outputs[k].name for k in names], feed)
        except tf.errors.OpError as e:
            message = e.message.replace("Graph execution error:", "").strip()
            raise _error(_status_name(e.error_code), message) from None
        return dict(zip(names, fetched))

    def close(self):
        self.session.close()


def _status_name(code):
    names = {tf.errors.INVALID_ARGUMENT: "INVALID_ARGUMENT", tf.errors.NOT_FOUND: "NOT_FOUND",
             tf.errors.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
             tf.errors.FAILED_PRECONDITION: "FAILED_PRECONDITION",
             tf.errors.OUT_OF_RANGE: "OUT_OF_RANGE"}
    return names.get(code, "INTERNAL")


class _Registry:
    """The latest version of every model under `base_path` (TF Serving's default version
    policy), loaded when it appears; a version folder counts once it holds `saved_model.pb`."""

    def __init__(self, base_path):
        self.base_path = base_path
        self._servables = {}
        self._lock = threading.Lock()  # guards _servables; held only briefly
        self._reload_lock = threading.Lock()  # one scan at a time
        self.reload()

    def _latest_on_disk(self):
        for name in sorted(os.listdir(self.base_path)):
            folder = os.path.join(self.base_path, name)
            versions = [int(v) for v in os.listdir(folder) if v.isdigit() and os.path.exists(
                os.path.join(folder, v, "saved_model.pb"))] if os.path.isdir(folder) else []
            if versions:
                yield name, max(versions), os.path.join(folder, str(max(versions)))

    def reload(self):
        with self._reload_lock:
            for name, version, path in self._latest_on_disk():
                with self._lock:
                    if (name, version) in self._servables:
                        continue
                # Loading takes a while: requests keep being served by the older version.
                servable = _Servable(name, version, path)
                with self._lock:
                    # Older versions stop being served; requests running on them finish.
                    for key in [k for k in self._servables if k[0] == name]:
                        del self._servables[key]
                    self._servables[(name, version)] = servable

    def versions(self, name):
        with self._lock:
            return sorted(v for n, v in self._servables if n == name)

    def get(self, name, version=None):
        """The servable, the latest version by default (TF Serving's default policy)."""
        servable = self._find(name, version)
        if servable is None:
            self.reload()  # exported since the last scan
            servable = self._find(name, version)
        if servable is None:
            request = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise _error("NOT_FOUND", f"Servable not found for request: {request}")
        return servable

    def _find(self, name, version):
        with self._lock:
            loaded = {v: s for (n, v), s in self._servables.items() if n == name}
        if not loaded:
            return None
        return loaded.get(version) if version else loaded[max(loaded)]

    def close(self):
        for servable in self._servables.values():
            servable.close()


# ---------------------------------------------------------------------- gRPC services
def _make_services(registry):
    (grpc, metadata_pb2, status_pb2, model_service_grpc, predict_pb2,
     prediction_grpc) = _serving_apis()

    def abort(context, error):
        context.abort(getattr(grpc.StatusCode, error.code), error.message)

    class PredictionService(prediction_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            try:
                servable = registry.get(request.model_spec.name,
                                        request.model_spec.version.value or None)
                signature = request.model_spec.signature_name or "serving_default"
                try:
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                except Exception as e:  # a malformed TensorProto
                    raise _error("INVALID_ARGUMENT", f"tensor parsing error: {e}") from None
                outputs = servable.run(signature, inputs, list(request.output_filter))
            except ServingError as e:
                return abort(context, e)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

        def GetModelMetadata(self, request, context):
            try:
                if list(request.metadata_field) != ["signature_def"]:
                    raise _error("INVALID_ARGUMENT", "Metadata field(s) other than "
                                 "signature_def are not supported.")
                servable = registry.get(request.model_spec.name,
                                        request.model_spec.version.value or None)
            except ServingError as e:
                return abort(context, e)
            signatures = metadata_pb2.SignatureDefMap()
            for key, value in servable.signatures.items():
                signatures.signature_def[key].CopyFrom(value)
            response = metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(signatures)
            return response

    class ModelService(model_service_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            try:
                servable = registry.get(request.model_spec.name,
                                        request.model_spec.version.value or None)
            except ServingError as e:
                return abort(context, e)
            response = status_pb2.GetModelStatusResponse()
            versions = ([servable.version] if request.model_spec.version.value
                        else registry.versions(servable.name))
            for version in versions:
                status = response.model_version_status.add()
                status.version = version
                status.state = status_pb2.ModelVersionStatus.AVAILABLE
            return response

    return PredictionService(), ModelService()


# ---------------------------------------------------------------------- REST
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?P<rest>/metadata|:predict)?$")


def _rest_handler(registry):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method):
            match = _REST_PATH.match(self.path)
            if not match or (method == "POST") != (match["rest"] == ":predict"):
                return self._reply(404, {"error": f"Malformed request: {method} {self.path}"})
            try:
                version = int(match["version"]) if match["version"] else None
                servable = registry.get(match["name"], version)
                if method == "POST":
                    return self._reply(200, self._predict(servable))
                if match["rest"] == "/metadata":
                    return self._reply(200, _rest_metadata(servable))
                versions = [version] if version else registry.versions(servable.name)
                return self._reply(200, {"model_version_status": [
                    {"version": str(v), "state": "AVAILABLE",
                     "status": {"error_code": "OK", "error_message": ""}} for v in versions]})
            except ServingError as e:
                return self._reply(404 if e.code == "NOT_FOUND" else 400, {"error": e.message})

        def _predict(self, servable):
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError as e:
                raise _error("INVALID_ARGUMENT", f"JSON Parse error: {e}") from None
            if not isinstance(body, dict) or "inputs" not in body:
                raise _error("INVALID_ARGUMENT", "Missing 'inputs' key: these signatures take "
                             "scalar inputs (num_samples), so use the columnar format "
                             "{\"signature_name\": ..., \"inputs\": {name: value}}.")
            signature_name = body.get("signature_name", "serving_default")
            signature = servable.signatures.get(signature_name)
            if signature is None or not isinstance(body["inputs"], dict):
                return servable.run(signature_name, {})  # raises the signature/inputs error
            inputs = {}
            for key, value in body["inputs"].items():
                info = signature.inputs.get(key)
                dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype if info else np.float32
                try:
                    inputs[key] = np.asarray(value, dtype=dtype)
                except (TypeError, ValueError) as e:
                    raise _error("INVALID_ARGUMENT", f"Input `{key}`: {e}") from None
            outputs = servable.run(signature_name, inputs)
            return {"outputs": {k: v.tolist() for k, v in outputs.items()}}

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._route("GET")

        def do_POST(self):  # noqa: N802
            self._route("POST")

    return Handler


def _rest_metadata(servable):
    from google.protobuf import json_format

    return {"model_spec": {"name": servable.name, "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": {
                k: json_format.MessageToDict(v) for k, v in servable.signatures.items()}}}}


class ModelServer:
    """A local TF Serving stand-in: gRPC on `port`, REST on `rest_port` (0: a free port; None:
    no REST). The base path is scanned every `poll_seconds` for new versions, as TF Serving does.

    Example:

    ```python
    with ModelServer("saved_models", port=0, rest_port=0) as server:
        client = GrpcClient(f"localhost:{server.port}", "probunet")
        masks = client.predict(images, 16)["masks"]
    ```
    """

    def __init__(self, base_path, port=8500, rest_port=8501, host="127.0.0.1", max_workers=8,
                 poll_seconds=1.0):
        if not os.path.isdir(base_path):
            raise FileNotFoundError(f"No model base path {base_path!r}: export a model there "
                                    "first (`tfprobunet export`).")
        grpc, _, _, model_service_grpc, _, prediction_grpc = _serving_apis()
        self.registry = _Registry(base_path)
        prediction, model_service = _make_services(self.registry)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                 options=_GRPC_OPTIONS)
        prediction_grpc.add_PredictionServiceServicer_to_server(prediction, self._grpc)
        model_service_grpc.add_ModelServiceServicer_to_server(model_service, self._grpc)
        self.port = self._grpc.add_insecure_port(f"{host}:{port}")
        self.poll_seconds = poll_seconds
        self._stopped = threading.Event()
        self.host = host
        self._http = None
        self.rest_port = None
        if rest_port is not None:
            self._http = ThreadingHTTPServer((host, rest_port), _rest_handler(self.registry))
            self.rest_port = self._http.server_address[1]

    def _poll(self):
        # Like TF Serving's --file_system_poll_wait_seconds: new versions are picked up.
        while not self._stopped.wait(self.poll_seconds):
            self.registry.reload()

    def start(self):
        self._grpc.start()
        if self.poll_seconds:
            threading.Thread(target=self._poll, daemon=True).start()
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


# ---------------------------------------------------------------------- clients
def _seed(seed):
    if seed is None:
        seed = np.random.randint(0, 2**31 - 1, size=2)
    seed = np.asarray([seed, 0] if np.ndim(seed) == 0 else seed, np.int32)
    if seed.shape != (2,):
        raise ValueError(f"`seed` must be an int or 2 ints. Received shape {seed.shape}.")
    return seed


def _features_inputs(features):
    """The `sample` signature's feature inputs from what `features()` returned."""
    missing = {"features", "prior_loc", "prior_scale"} - set(features)
    if missing:
        raise ValueError(f"`features` must be the dict returned by `features()`; missing "
                         f"{sorted(missing)}.")
    return {k: np.asarray(features[k], np.float32)
            for k in ("features", "prior_loc", "prior_scale")}


class _Client:
    """The signature calls shared by the gRPC and REST clients."""

    def features(self, images):
        """`features` signature: `{"features", "prior_loc", "prior_scale"}` for `images
        (b, h, w, c)` float32."""
        return self._predict("features", {"images": np.asarray(images, np.float32)})

    def sample(self, features, num_samples, seed=None, output_filter=None):
        """`sample` signature: `{"masks" (b, m, h, w), "probabilities" (b, m, h, w, K),
        "z" (b, m, N)}` from the dict `features()` returned; only f_comb runs."""
        inputs = {**_features_inputs(features), "num_samples": np.int32(num_samples),
                  "seed": _seed(seed)}
        return self._predict("sample", inputs, output_filter)

    def predict(self, images, num_samples, seed=None, output_filter=None):
        """`serving_default`: features and `num_samples` samples in one call."""
        inputs = {"images": np.asarray(images, np.float32), "num_samples": np.int32(num_samples),
                  "seed": _seed(seed)}
        return self._predict("serving_default", inputs, output_filter)

    def decode(self, features, z, output_filter=None):
        """`decode` signature: masks and probabilities for latents `z (b, m, N)`."""
        if isinstance(features, dict):
            features = features["features"]
        inputs = {"features": np.asarray(features, np.float32), "z": np.asarray(z, np.float32)}
        return self._predict("decode", inputs, output_filter)


class GrpcClient(_Client):
    """A TF Serving gRPC client for an exported Probabilistic U-Net.

    Args:
        target: `host:port` of `tensorflow_model_server` (or `ModelServer`).
        model_name: the served model's name.
        version: a specific version; None serves the latest.
        timeout: seconds per request.
        retries: attempts on UNAVAILABLE (server starting, a restart), with exponential
            backoff from `backoff` seconds.

    Every method returns a dict of numpy arrays keyed by the signature's output names;
    `output_filter=["masks"]` asks for masks only. A rejected request raises
    `InvalidRequestError` (a `ValueError`) with the server's message.
    """

    def __init__(self, target, model_name, version=None, timeout=30.0, retries=5, backoff=0.1):
        grpc, _, _, _, self._predict_pb2, prediction_grpc = _serving_apis()
        self._grpc = grpc
        self.model_name, self.version, self.timeout = model_name, version, timeout
        self.retries, self.backoff = retries, backoff
        self._channel = grpc.insecure_channel(target, options=_GRPC_OPTIONS)
        self._stub = prediction_grpc.PredictionServiceStub(self._channel)

    def _spec(self, message):
        message.model_spec.name = self.model_name
        if self.version is not None:
            message.model_spec.version.value = self.version

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except self._grpc.RpcError as e:
                code = e.code()
                if code == self._grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise _error(code.name, e.details()) from None

    def _predict(self, signature, inputs, output_filter=None):
        request = self._predict_pb2.PredictRequest()
        self._spec(request)
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter or [])
        response = self._call(self._stub.Predict, request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def metadata(self):
        """The signatures: `{name: {"inputs": {key: (dtype, shape)}, "outputs": {...}}}` with
        `None` for unknown dimensions (TF Serving's `__saved_model_init_op` left out)."""
        _, metadata_pb2, _, _, _, _ = _serving_apis()
        request = metadata_pb2.GetModelMetadataRequest()
        self._spec(request)
        request.metadata_field.append("signature_def")
        response = self._call(self._stub.GetModelMetadata, request)
        signatures = metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {name: {"inputs": _tensor_infos(sig.inputs), "outputs": _tensor_infos(sig.outputs)}
                for name, sig in signatures.signature_def.items() if name != INIT_OP_SIGNATURE}

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tensor_infos(infos):
    return {key: (tf.dtypes.as_dtype(info.dtype).name,
                  tuple(None if d.size == -1 else d.size for d in info.tensor_shape.dim))
            for key, info in infos.items()}


class RestClient(_Client):
    """A TF Serving REST client (columnar `inputs` format), with the methods of `GrpcClient`.

    Args:
        url: `http://host:port` of the REST API (TF Serving's `--rest_api_port`).
        model_name, version, timeout: as for `GrpcClient`.
    """

    _DTYPES = {"masks": np.int32}

    def __init__(self, url, model_name, version=None, timeout=30.0):
        self.url, self.model_name, self.version, self.timeout = (url.rstrip("/"), model_name,
                                                                  version, timeout)

    def _model_url(self):
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.url}/v1/models/{self.model_name}{version}"

    def _request(self, url, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib_request.Request(url, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib_request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib_error.HTTPError as e:
            message = e.read().decode(errors="replace")
            try:
                message = json.loads(message)["error"]
            except (ValueError, KeyError):
                pass
            raise _error("INVALID_ARGUMENT" if e.code == 400 else
                         "NOT_FOUND" if e.code == 404 else "INTERNAL", message) from None

    def _predict(self, signature, inputs, output_filter=None):
        body = {"signature_name": signature,
                "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}
        outputs = self._request(self._model_url() + ":predict", body)["outputs"]
        arrays = {k: np.asarray(v, self._DTYPES.get(k, np.float32)) for k, v in outputs.items()}
        return {k: arrays[k] for k in output_filter} if output_filter else arrays

    def status(self):
        """`GET /v1/models/NAME`: the versions and their states."""
        return self._request(self._model_url())


# ---------------------------------------------------------------------- files in, files out
def read_image(path, channels):
    """A PNG or JPEG as `(1, h, w, channels)` float32 in [0, 1]."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    return tf.image.convert_image_dtype(image, tf.float32)[None].numpy()


def predict_files(client, image_path, num_samples, out_dir, seed=None):
    """Segment one image file through a served model: `features` once, then `sample`.

    Writes `sample_00.png`, ... (labels scaled to 0..255) and `uncertainty.png` (entropy of the
    mean probabilities, scaled by its maximum log K) to `out_dir`.

    Returns:
        The list of files written.
    """
    from PIL import Image

    from tfprobunet import metrics

    channels = client.metadata()["features"]["inputs"]["images"][1][-1]
    outputs = client.sample(client.features(read_image(image_path, channels)), num_samples, seed)
    masks, probabilities = outputs["masks"][0], outputs["probabilities"]
    num_classes = probabilities.shape[-1]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, mask in enumerate(masks):
        path = os.path.join(out_dir, f"sample_{i:02d}.png")
        Image.fromarray((mask * (255 // (num_classes - 1))).astype(np.uint8)).save(path)
        written.append(path)
    entropy, _ = metrics.uncertainty_maps(probabilities)
    path = os.path.join(out_dir, "uncertainty.png")
    Image.fromarray(np.uint8(np.clip(entropy[0] / np.log(num_classes), 0, 1) * 255)).save(path)
    return written + [path]
