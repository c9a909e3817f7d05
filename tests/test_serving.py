"""The gRPC and REST clients against the local server that runs signatures as TF Serving does:
round trips, twenty bad requests, concurrent load, retries, and the CLI."""

import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfprobunet import cli, serving
from conftest import (SERVED, cli_error, raw_request, serve_process, served_images,
                      served_model)

K, C, N, F = (SERVED[k] for k in "KCNF")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = served_model(11)
    base = str(tmp_path_factory.mktemp("saved_models"))
    path = serving.export_for_serving(model, base, "pun")
    with serving.ModelServer(base, port=0, rest_port=0) as running:
        running.model, running.base, running.path = model, base, path
        yield running



def _grpc(server, **kwargs):
    return serving.GrpcClient(f"127.0.0.1:{server.port}", "pun", **kwargs)


def test_grpc_round_trip_equals_the_session_path_and_the_model(server):
    images = served_images()
    servable = serving.Servable("pun", 1, server.path)
    with _grpc(server) as client:
        features = client.features(images)
        expected = servable.run("features", {"images": images})
        for key in expected:
            np.testing.assert_array_equal(features[key], expected[key])
        sampled = client.sample(features, 5, seed=[1, 2])
        expected = servable.run("sample", {**expected, "num_samples": np.int32(5),
                                           "seed": np.int32([1, 2])})
        for key in ("masks", "probabilities", "z"):
            np.testing.assert_array_equal(sampled[key], expected[key])
        default = client.predict(images, 5, seed=[1, 2])
        model_probabilities = tf.nn.softmax(
            server.model.sample(images, 5, seed=tf.constant([1, 2]))).numpy()
        np.testing.assert_allclose(default["probabilities"], model_probabilities, atol=1e-5)
        np.testing.assert_array_equal(default["masks"], sampled["masks"])
        decoded = client.decode(features, sampled["z"])
        np.testing.assert_allclose(decoded["probabilities"], sampled["probabilities"], atol=1e-6)
        assert set(client.predict(images, 2, output_filter=["masks"])) == {"masks"}
        metadata = client.metadata()
    servable.close()
    assert set(metadata) == {"serving_default", "features", "sample", "decode", "info"}
    assert metadata["sample"]["inputs"]["features"] == ("float32", (None, None, None, F))
    assert metadata["serving_default"]["outputs"]["masks"] == ("int32", (None,) * 4)


def test_rest_round_trip_equals_grpc(server):
    images = served_images(seed=3)
    rest = serving.RestClient(f"http://127.0.0.1:{server.rest_port}", "pun")
    with _grpc(server) as client:
        features = client.features(images)
        expected = client.sample(features, 3, seed=[4, 4])
    for got in (rest.sample(features, 3, seed=[4, 4]), rest.predict(images, 3, seed=[4, 4])):
        np.testing.assert_array_equal(got["masks"], expected["masks"])
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-6)
    status = rest.status()["model_version_status"]
    assert status == [{"version": "1", "state": "AVAILABLE",
                       "status": {"error_code": "OK", "error_message": ""}}]
    with pytest.raises(serving.InvalidRequestError, match="num_samples` must be >= 1"):
        rest.predict(images, 0)
    with pytest.raises(serving.ServingError, match="Servable not found"):
        serving.RestClient(f"http://127.0.0.1:{server.rest_port}", "nope").status()
    # The row format cannot carry the scalar inputs: a 400 that says which format works.
    rows = json.dumps({"instances": [{"images": images[0].tolist()}]}).encode()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{server.rest_port}/v1/models/pun:predict", data=rows), timeout=30)
    assert caught.value.code == 400 and "columnar format" in caught.value.read().decode()


def test_num_samples_and_seed_are_optional_as_tf_serving_clients_expect(server):
    images = served_images(seed=5)
    body = json.dumps({"inputs": {"images": images.tolist()}}).encode()  # no num_samples, seed
    answers = []
    for _ in range(2):
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{server.rest_port}/v1/models/pun:predict", data=body),
                timeout=30) as response:
            answers.append(json.loads(response.read())["outputs"])
    masks = [np.asarray(a["masks"]) for a in answers]
    assert masks[0].shape == (2, 1, 16, 16)  # one sample per image
    probabilities = [np.asarray(a["probabilities"]) for a in answers]
    assert not np.allclose(probabilities[0], probabilities[1])  # a fresh seed each time
    with _grpc(server) as client:  # over gRPC: a raw request without them
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        features = client.features(images)
        response = stub.Predict(raw_request("sample", features), timeout=30)
        channel.close()
        assert tf.make_ndarray(response.outputs["z"]).shape == (2, 1, N)
        # An explicit seed is still reproducible.
        seeded = client.predict(images, 2, seed=[3, 3])["masks"]
        np.testing.assert_array_equal(seeded, client.predict(images, 2, seed=[3, 3])["masks"])


def _bad_requests():
    images = served_images()
    good = {"images": images, "num_samples": np.int32(2), "seed": np.int32([1, 2])}
    feats = {"features": np.zeros((2, 16, 16, F), np.float32),
             "prior_loc": np.zeros((2, N), np.float32), "prior_scale": np.ones((2, N), np.float32),
             "num_samples": np.int32(2), "seed": np.int32([1, 2])}
    nan = images.copy()
    nan[0, 3, 3, 0] = np.nan
    inf = images.copy()
    inf[1, 0, 0, 0] = np.inf
    return [
        ("num_samples 0", "serving_default", {**good, "num_samples": np.int32(0)},
         "`num_samples` must be >= 1"),
        ("num_samples < 0 in sample", "sample", {**feats, "num_samples": np.int32(-3)},
         "`num_samples` must be >= 1"),
        ("images rank 3", "serving_default", {**good, "images": images[..., 0]},
         "`images` has shape [2, 16, 16]"),
        ("images rank 5", "features", {"images": images[None]}, "`images` has shape [1, 2,"),
        ("images 3 channels", "serving_default", {**good, "images": np.repeat(images, 3, -1)},
         "not compatible with the signature's [-1, -1, -1, 1]"),
        ("images float64", "serving_default", {**good, "images": images.astype(np.float64)},
         "`images` to be float32 but float64"),
        ("images int32", "features", {"images": (images * 255).astype(np.int32)},
         "`images` to be float32 but int32"),
        ("size not divisible", "serving_default", {**good, "images": served_images(size=17)},
         "`images` are 17x17 pixels (height x width); this model needs both divisible by 2: "
         "the nearest sizes that work are 16x16 and 18x18"),
        ("size not divisible in features", "features",
         {"images": served_images(size=16)[:, :15]},
         "`images` are 15x16 pixels (height x width); this model needs both divisible by 2: "
         "the nearest sizes that work are 14x16 and 16x16"),
        ("pixels 0..255", "serving_default", {**good, "images": images * 255},
         "outside the range [0, 1] this model was exported for (image_range): scale them as in "
         "training, e.g. 8-bit pixels divided by 255"),
        ("negative pixels", "features", {"images": images - 2},
         "outside the range [0, 1]"),
        ("NaN pixel", "serving_default", {**good, "images": nan}, "NaN or Inf"),
        ("Inf pixel", "features", {"images": inf}, "NaN or Inf"),
        ("missing images", "serving_default", {k: good[k] for k in ("num_samples", "seed")},
         "Missing but required: {images}"),
        ("extra input", "features", {"images": images, "mask": images},
         "Sent extra: {mask}"),
        ("seed of 3", "serving_default", {**good, "seed": np.int32([1, 2, 3])},
         "`seed` has shape [3]"),
        ("num_samples vector", "serving_default", {**good, "num_samples": np.int32([2, 2])},
         "`num_samples` has shape [2]"),
        ("num_samples float", "serving_default", {**good, "num_samples": np.float32(2)},
         "`num_samples` to be int32 but float32"),
        ("features 4 channels", "sample", {**feats, "features": np.zeros((2, 16, 16, 4),
                                                                         np.float32)},
         "`features` has shape [2, 16, 16, 4]"),
        ("batch mismatch", "sample", {**feats, "prior_loc": np.zeros((3, N), np.float32),
                                      "prior_scale": np.ones((3, N), np.float32)},
         "same batch size"),
        ("prior_scale 0", "sample", {**feats, "prior_scale": np.zeros((2, N), np.float32)},
         "`prior_scale` must be > 0"),
        ("z latent dim", "decode", {"features": feats["features"],
                                    "z": np.zeros((2, 1, N + 1), np.float32)},
         "`z` has shape [2, 1, 3]"),
        ("z rank 2", "decode", {"features": feats["features"], "z": np.zeros((2, N), np.float32)},
         "`z` has shape [2, 2]"),
        ("unknown output", "serving_default", good, "output tensor alias not found in "
                                                    "signature: logits"),
        ("prior_scale batch 1 of 2", "sample", {**feats, "prior_scale": np.ones((1, N),
                                                                                np.float32)},
         "same batch size"),
        ("prior_scale batch 2 of 1", "sample", {
            **feats, "features": feats["features"][:1], "prior_loc": feats["prior_loc"][:1]},
         "same batch size"),
        ("NaN features", "sample", {**feats, "features": np.full((2, 16, 16, F), np.nan,
                                                                 np.float32)},
         "`features` contain NaN or Inf"),
        ("NaN prior_loc", "sample", {**feats, "prior_loc": np.full((2, N), np.nan, np.float32)},
         "`prior_loc` contain NaN or Inf"),
        ("Inf prior_scale", "sample", {**feats, "prior_scale": np.full((2, N), np.inf,
                                                                       np.float32)},
         "`prior_scale` contain NaN or Inf"),
        ("NaN z", "decode", {"features": feats["features"],
                             "z": np.full((2, 1, N), np.nan, np.float32)},
         "`z` contain NaN or Inf"),
        ("empty batch", "serving_default", {**good, "images": images[:0]},
         "`images` is empty"),
        ("0x0 image", "features", {"images": np.zeros((2, 0, 0, C), np.float32)},
         "`images` is empty"),
        ("huge pixel values", "serving_default", {**good, "images": np.full_like(images, 3e38)},
         "outside the range [0, 1]"),
        ("z without samples", "decode", {"features": feats["features"],
                                         "z": np.zeros((2, 0, N), np.float32)},
         "`z` holds 0 samples per image"),
        ("empty features", "sample", {**feats, "features": feats["features"][:0],
                                      "prior_loc": feats["prior_loc"][:0],
                                      "prior_scale": feats["prior_scale"][:0]},
         "`features` is empty"),
    ]


def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    cases = _bad_requests()
    assert len(cases) >= 20
    for name, signature, inputs, message in cases:
        output_filter = ["logits"] if name == "unknown output" else []
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(raw_request(signature, inputs, output_filter), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert message in caught.value.details(), (name, caught.value.details())
    channel.close()
    # Our client turns the same status into a ValueError with the message (it pads sizes the
    # U-Net cannot divide: tests/test_serving_padding.py).
    with _grpc(server) as client:
        with pytest.raises(serving.InvalidRequestError, match="num_samples` must be >= 1"):
            client.predict(served_images(), 0)
        # And the server still answers a good request correctly.
        images = served_images(seed=9)
        got = client.predict(images, 3, seed=[7, 7])["probabilities"]
    expected = tf.nn.softmax(server.model.sample(images, 3, seed=tf.constant([7, 7]))).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unknown_model_and_signature(server):
    with serving.GrpcClient(f"127.0.0.1:{server.port}", "nope") as client:
        with pytest.raises(serving.ServingError) as caught:
            client.features(served_images())
    assert caught.value.code == "NOT_FOUND" and "Latest(nope)" in caught.value.message
    with _grpc(server) as client, pytest.raises(serving.ServingError, match="FAILED_PRECONDITION"):
        client._predict("classify", {"images": served_images()})


def test_version_0_and_versions_not_loaded_are_not_found(server):
    """`/versions/0` answered with the latest version (0 was read as "none given"): every
    version but the one loaded is NOT_FOUND, over REST (404) and gRPC, as in TF Serving."""
    url = f"http://127.0.0.1:{server.rest_port}"
    assert serving.RestClient(url, "pun", version=1).status()["model_version_status"][0][
        "version"] == "1"
    for version in (0, 2):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{url}/v1/models/pun/versions/{version}", timeout=30)
        assert caught.value.code == 404
        assert json.loads(caught.value.read()) == {
            "error": f"Servable not found for request: Specific(pun, {version})"}
        with pytest.raises(serving.ServingError) as caught:
            serving.RestClient(url, "pun", version=version).features(served_images())
        assert caught.value.code == "NOT_FOUND", caught.value
        with _grpc(server, version=version) as client:
            for call in (client.metadata, lambda: client.features(served_images())):
                with pytest.raises(serving.ServingError) as caught:
                    call()
                assert caught.value.code == "NOT_FOUND", caught.value
                assert f"Specific(pun, {version})" in caught.value.message
    with _grpc(server, version=1) as client:
        assert client.features(served_images())["features"].shape == (2, 16, 16, F)


def test_concurrent_mixed_requests_match_single_threaded_answers(server):
    """8 threads x 25 requests over gRPC and REST, one in six of them bad: every good answer
    equals the single-threaded one, every bad one is INVALID_ARGUMENT, nothing else fails."""
    images = [served_images(batch=1 + i % 2, seed=i) for i in range(4)]
    nan = served_images()
    nan[0, 0, 0, 0] = np.nan

    def request(client, rest, i):
        kind = i % 6
        x = images[i % 4]
        if kind == 0:
            return client.predict(x, 1 + i % 3, seed=[i, 1])
        if kind == 1:
            return client.features(x)
        if kind == 4:
            return rest.predict(x, 1 + i % 2, seed=[i, 3])
        if kind == 5:
            try:
                if i % 2:
                    rest.predict(nan, 2)
                else:
                    client.predict(x, 0)
            except serving.InvalidRequestError as e:
                return {"error": np.array(e.code)}
            raise AssertionError("a bad request was answered")
        features = client.features(x)
        if kind == 2:
            return client.sample(features, 2 + i % 5, seed=[i, 2])
        return client.decode(features, np.full((len(x), 2, N), 0.1 * i, np.float32))

    def rest_client():
        return serving.RestClient(f"http://127.0.0.1:{server.rest_port}", "pun")

    plan = [(t, i) for t in range(8) for i in range(25)]
    with _grpc(server) as client:
        expected = {key: request(client, rest_client(), key[0] * 25 + key[1]) for key in plan}
    results, errors = {}, []

    def worker(t):
        with _grpc(server) as client:
            for i in range(25):
                try:
                    results[(t, i)] = request(client, rest_client(), t * 25 + i)
                except Exception as e:  # noqa: BLE001 (counted and reported below)
                    errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 200
    assert sum("error" in answer for answer in results.values()) >= 30
    for key, answer in expected.items():
        assert results[key].keys() == answer.keys()
        for name in answer:
            np.testing.assert_array_equal(results[key][name], answer[name])


def test_client_retries_until_the_server_is_up(server, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late = serving.ModelServer(server.base, port=port, rest_port=None)
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        with serving.GrpcClient(f"127.0.0.1:{port}", "pun", retries=6, backoff=0.2) as client:
            assert client.features(served_images())["features"].shape == (2, 16, 16, F)
    finally:
        starter.join()
        late.stop()


def test_cli_export_predict_and_serve(server, tmp_path, capsys):
    model_path = str(tmp_path / "model.keras")
    server.model.save(model_path)
    base = str(tmp_path / "saved_models")
    assert cli.main(["export", "--model", model_path, "--base-dir", base, "--name", "pun"]) == 0
    assert os.path.isfile(os.path.join(base, "pun", "1", "saved_model.pb"))
    os.makedirs(os.path.join(base, "pun", ".tmp-2-killed", "variables"))  # a kill -9 leaves it
    assert cli.main(["export", "--clean", "--base-dir", base, "--name", "pun"]) == 0
    assert "removed 1 temporary folder(s) of killed exports of 'pun'" in capsys.readouterr().out
    assert os.listdir(os.path.join(base, "pun")) == ["1"]
    assert re.search("--model PATH .* is required unless --clean",
                     cli_error(capsys, ["export", "--base-dir", base, "--name", "pun"]))
    image = tmp_path / "x.png"
    Image.fromarray((served_images(batch=1)[0, ..., 0] * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out"
    assert cli.main(["predict", "--target", f"127.0.0.1:{server.port}", "--name", "pun",
                     "--image", str(image), "-n", "4", "--out", str(out), "--seed", "3"]) == 0
    assert "wrote 4 sample masks" in capsys.readouterr().out
    assert sorted(os.listdir(out / "x")) == [f"sample_{i:02d}.png" for i in range(4)] + [
        "uncertainty.png"]
    with Image.open(out / "x" / "sample_00.png") as png:
        assert png.size == (16, 16)

    with serve_process(base) as (_, port, _), \
            serving.GrpcClient(f"127.0.0.1:{port}", "pun") as client:
        assert client.predict(served_images(), 2, seed=1)["masks"].shape == (2, 2, 16, 16)

