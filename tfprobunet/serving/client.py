"""Clients of a served Probabilistic U-Net: TF Serving's gRPC and REST APIs.

`GrpcClient` speaks TF Serving's gRPC API (`tensorflow_serving.apis`): `features(images)` once
per image, then `sample(features, num_samples)` as often as needed; `predict` is both in one
call (`serving_default`), `decode` runs f_comb on given latents, `metadata` lists the
signatures. `RestClient` does the same over TF Serving's REST API. Both talk to
`tensorflow_model_server` (docs/serving.md) and to the local stand-in, `tfprobunet.serving.ModelServer`.
`tfprobunet.prediction.predict_files` segments image files through either (`read_image`, from
`tfprobunet.data.images`, reads them). The errors they raise, `ServingError` and
`InvalidRequestError`, live in `wire` with the status names.

Images of any height and width: the signatures refuse sides the U-Net cannot divide, so the
clients pad images as local prediction does (`tfprobunet.prediction.pad_to_multiple`: the last
row and column repeated, up to the multiple) and crop the masks and probabilities back. They
learn the multiple from the export's `info` signature, asked once per client; an export made
before it existed has none, and images are then sent as they are (the server refuses sizes it
cannot divide, saying which would work).
"""

import json
import time
from urllib import error as urllib_error
from urllib import request as urllib_request

import numpy as np
import tensorflow as tf

# `read_image` (image files in, as the signatures take them) lives with the other image readers.
from tfprobunet.data.images import read_image
from tfprobunet.defaults import MAX_MESSAGE_BYTES
from tfprobunet.prediction import pad_to_multiple
from tfprobunet.serving.signatures import INFO
from tfprobunet.serving.wire import (INIT_OP_SIGNATURE, STATUS_OF_HTTP,  # noqa: F401
                                     InvalidRequestError, ServingError, grpc_options,
                                     require_serving_extra, status_error, tensor_infos)

try:  # the `serving` extra
    import grpc
    from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                         prediction_service_pb2_grpc)
except ImportError:
    grpc = None

__all__ = ["Features", "GrpcClient", "InvalidRequestError", "RestClient", "ServingError",
           "read_image"]


# ---------------------------------------------------------------------- clients
def _seed(seed):
    if seed is None:
        seed = np.random.randint(0, 2**31 - 1, size=2)
    seed = np.asarray([seed, 0] if np.ndim(seed) == 0 else seed, np.int32)
    if seed.shape != (2,):
        raise ValueError(f"`seed` must be an int or 2 ints. Received shape {seed.shape}.")
    return seed


def _features_inputs(features):
    """The `sample` signature's feature inputs from what `features()` returned: a Probabilistic
    U-Net's `features`, `prior_loc`, `prior_scale`, an SSN's `mean`, `diagonal`, `factor`, or
    MoSE's `features`, `expert_weights`."""
    if "mean" in features:
        keys = ("mean", "diagonal", "factor")
    elif "expert_weights" in features:
        keys = ("features", "expert_weights")
    else:
        keys = ("features", "prior_loc", "prior_scale")
    missing = set(keys) - set(features)
    if missing:
        raise ValueError(f"`features` must be the dict returned by `features()`; missing "
                         f"{sorted(missing)}.")
    return {k: np.asarray(features[k], np.float32) for k in keys}


_NOT_ASKED = object()


class Features(dict):
    """What `features()` returns: the `features` signature's outputs by name, computed on the
    images padded to the served multiple (so at the padded size), and `image_size`, the
    images' own `(h, w)` (None when they were sent as they are), which `sample` and `decode`
    crop their outputs to. As a dict it holds the outputs alone: it can be sent as it is."""

    def __init__(self, outputs, image_size=None):
        super().__init__(outputs)
        self.image_size = image_size


def _cropped(outputs, size):
    """`outputs` with `masks (b, m, h', w')` and `probabilities (b, m, h', w', K)` cropped to
    `size = (h, w)`; as they are when `size` is None."""
    if size is None:
        return outputs
    h, w = (int(v) for v in size)
    return {k: v[:, :, :h, :w] if k in ("masks", "probabilities") else v
            for k, v in outputs.items()}


def _signatures(signature_map):
    """`{name: {"inputs": {key: (dtype, shape)}, "outputs": {...}}}` of a `SignatureDefMap`."""
    return {name: {"inputs": tensor_infos(sig.inputs), "outputs": tensor_infos(sig.outputs)}
            for name, sig in signature_map.signature_def.items() if name != INIT_OP_SIGNATURE}


class _Client:
    """The signature calls shared by the gRPC and REST clients, with the padding of images to
    the served model's multiple and the cropping of what comes back."""

    _info = _NOT_ASKED  # the `info` signature's answer, once asked

    def info(self):
        """The served export's `info` signature, asked once and kept: `{"multiple": m,
        "config": {...}}`, the side divisor of its images and its
        `assets.extra/tfprobunet_config.json` (`"limits"`, `"intensity"`, the model's config).
        None for an export made before the signature existed."""
        if self._info is _NOT_ASKED:
            try:
                answer = self._predict(INFO, {"size": np.int32([1, 1])})
            except ServingError as e:
                # TF Serving: FAILED_PRECONDITION over gRPC, INVALID_ARGUMENT (400) over REST.
                if f'"{INFO}" not found' not in e.message:
                    raise
                self._info = None
            else:
                config = np.asarray(answer["config"]).item()
                config = json.loads(config.decode() if isinstance(config, bytes) else config)
                self._info = {"multiple": int(answer["multiple"]), "config": config}
        return self._info

    def _padded(self, images):
        """`images` as float32, padded at the bottom and right to the served multiple, and
        their own `(h, w)`; as they are, and None, when the export records no multiple (or
        the array is not `(b, h, w, c)`, which the server refuses in its words)."""
        images = np.asarray(images, np.float32)
        info = self.info() if images.ndim == 4 else None
        if info is None:
            return images, None
        return pad_to_multiple(images, info["multiple"])

    def features(self, images):
        """`features` signature for `images (b, h, w, c)` float32 of any height and width:
        `{"features", "prior_loc", "prior_scale"}` (an SSN's `{"mean", "diagonal", "factor"}`,
        MoSE's `{"features", "expert_weights"}`)
        as `Features`, computed on the images padded to the served multiple, so at the padded
        size; its `image_size`, the images' own `(h, w)`, is what `sample` and `decode` crop
        their outputs to."""
        images, size = self._padded(images)
        return Features(self._predict("features", {"images": images}), size)

    def sample(self, features, num_samples, seed=None, output_filter=None):
        """`sample` signature: `{"masks" (b, m, h, w), "probabilities" (b, m, h, w, K),
        "z" (b, m, N)}` from the dict `features()` returned; only f_comb runs (an SSN's:
        masks and probabilities, a matrix product per sample). Masks and probabilities are
        cropped to the images' own size when `features` is the `Features` that `features()`
        returned; a plain dict gives them at the size of its `features`."""
        inputs = {**_features_inputs(features), "num_samples": np.int32(num_samples),
                  "seed": _seed(seed)}
        return _cropped(self._predict("sample", inputs, output_filter),
                        getattr(features, "image_size", None))

    def predict(self, images, num_samples, seed=None, output_filter=None):
        """`serving_default`: features and `num_samples` samples in one call, for `images`
        of any height and width (padded to the served multiple, outputs cropped back)."""
        images, size = self._padded(images)
        inputs = {"images": images, "num_samples": np.int32(num_samples), "seed": _seed(seed)}
        return _cropped(self._predict("serving_default", inputs, output_filter), size)

    def decode(self, features, z, output_filter=None):
        """`decode` signature: masks and probabilities for latents `z (b, m, N)`, cropped to
        the images' own size when `features` is the `Features` that `features()` returned."""
        size = getattr(features, "image_size", None)
        if isinstance(features, dict):
            features = features["features"]
        inputs = {"features": np.asarray(features, np.float32), "z": np.asarray(z, np.float32)}
        return _cropped(self._predict("decode", inputs, output_filter), size)


class GrpcClient(_Client):
    """A TF Serving gRPC client for an exported Probabilistic U-Net.

    Args:
        target: `host:port` of `tensorflow_model_server` (or `ModelServer`).
        model_name: the served model's name.
        version: a specific version; None serves the latest.
        timeout: seconds per request.
        retries: attempts on UNAVAILABLE (server starting, a restart), with exponential
            backoff from `backoff` seconds.
        max_message_bytes: the largest message sent or received (default 256 MiB, as
            `ModelServer`'s).

    Every method returns a dict of numpy arrays keyed by the signature's output names;
    `output_filter=["masks"]` asks for masks only. A rejected request raises
    `InvalidRequestError` (a `ValueError`) with the server's message.
    """

    def __init__(self, target, model_name, version=None, timeout=30.0, retries=5, backoff=0.1,
                 max_message_bytes=MAX_MESSAGE_BYTES):
        require_serving_extra()
        self.model_name, self.version, self.timeout = model_name, version, timeout
        self.retries, self.backoff = retries, backoff
        self._channel = grpc.insecure_channel(target, options=grpc_options(max_message_bytes))
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _spec(self, message):
        message.model_spec.name = self.model_name
        if self.version is not None:
            message.model_spec.version.value = self.version

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise status_error(code.name, e.details()) from None

    def _predict(self, signature, inputs, output_filter=None):
        request = predict_pb2.PredictRequest()
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
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request)
        request.metadata_field.append("signature_def")
        response = self._call(self._stub.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return _signatures(signatures)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RestClient(_Client):
    """A TF Serving REST client (columnar `inputs` format), with the methods of `GrpcClient`.

    TF Serving's REST API has no `output_filter`: the server computes and sends every output,
    and `output_filter` here only selects what the methods return. To fetch masks alone for
    many samples, use `GrpcClient`.

    Args:
        url: `http://host:port` of the REST API (TF Serving's `--rest_api_port`).
        model_name, version, timeout: as for `GrpcClient`.
    """

    _DTYPES = {"masks": np.int32, "multiple": np.int32, "padded_size": np.int32,
               "config": object}
    # HTTP statuses back to the gRPC status names of `ServingError.code`.
    _STATUS = STATUS_OF_HTTP

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
            raise status_error(self._STATUS.get(e.code, "INTERNAL"), message) from None

    def _predict(self, signature, inputs, output_filter=None):
        body = {"signature_name": signature,
                "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}
        outputs = self._request(self._model_url() + ":predict", body)["outputs"]
        arrays = {k: np.asarray(v, self._DTYPES.get(k, np.float32)) for k, v in outputs.items()}
        return {k: arrays[k] for k in output_filter} if output_filter else arrays

    def status(self):
        """`GET /v1/models/NAME`: the versions and their states."""
        return self._request(self._model_url())

    def metadata(self):
        """`GET /v1/models/NAME[/versions/N]/metadata`: the signatures, as
        `GrpcClient.metadata` gives them."""
        require_serving_extra()
        from google.protobuf import json_format

        answer = self._request(self._model_url() + "/metadata")
        signatures = json_format.ParseDict(answer["metadata"]["signature_def"],
                                           get_model_metadata_pb2.SignatureDefMap(),
                                           ignore_unknown_fields=True)
        return _signatures(signatures)
