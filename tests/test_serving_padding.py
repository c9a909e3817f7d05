"""A served model takes images of any size, as local prediction does: the export records the
side divisor (`multiple`) and serves it (`info`), the clients pad to it and crop back, so
`predict --target`, the REST client and `predict --model` give the same masks; and a refused
request is one line in the server's log."""

import json
import os
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from conftest import raw_request, tiny_model
from tfprobunet import cli, prediction, serving
from tfprobunet.serving import export

HEIGHT, WIDTH = 111, 137  # divisible by neither 2 nor 4
SEED, SAMPLES = 3, 4


def _model():
    """A tiny built model of 3 levels: sides must be multiples of 4."""
    model = tiny_model(num_classes=2, num_channels=[4, 8, 8], convs_per_block=1)
    model.build((None, 16, 16, 1))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`(model, .keras path, base folder, version path, PNG path, image)`."""
    folder = tmp_path_factory.mktemp("padding")
    model = _model()
    keras_path = str(folder / "model.keras")
    model.save(keras_path)
    base = str(folder / "saved_models")
    version = export.export_for_serving(keras_path, base, "pun")
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    png = str(folder / "odd.png")
    Image.fromarray(pixels).save(png)
    image = (pixels / np.float32(255))[None, :, :, None].astype(np.float32)
    return model, keras_path, base, version, png, image


def _config(version):
    with open(os.path.join(version, export.CONFIG_ASSET)) as f:
        return json.load(f)


def test_the_export_records_and_serves_the_multiple_and_the_intensity_rule(saved, tmp_path):
    model, keras_path, _, version, _, _ = saved
    config = _config(version)
    assert config["multiple"] == 4
    assert config["intensity"] == {"rule": "dtype"}
    servable = serving.Servable("pun", 1, version)
    try:
        info = servable.run("info", {"size": np.int32([HEIGHT, WIDTH])})
        assert int(info["multiple"]) == 4
        np.testing.assert_array_equal(info["padded_size"], [112, 140])
        assert json.loads(np.asarray(info["config"]).item()) == config
        assert int(servable.run("info", {})["multiple"]) == 4  # `size` is optional
        with pytest.raises(serving.InvalidRequestError, match=r"`size` must be .* >= 1"):
            servable.run("info", {"size": np.int32([0, 5])})
    finally:
        servable.close()
    # Passed, or read from the training run beside the .keras file.
    window = {"rule": "window", "low": -1000.0, "high": 400.0}
    path = export.export_for_serving(model, str(tmp_path), "a", intensity=window)
    assert _config(path)["intensity"] == window
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "train_config.json", "w") as f:
        json.dump({"data_options": {"percentiles": [0.5, 99.5]}}, f)
    shutil.copy(keras_path, run / "model.keras")
    path = export.export_for_serving(str(run / "model.keras"), str(tmp_path), "b")
    assert _config(path)["intensity"] == {"rule": "percentiles", "low": 0.5, "high": 99.5}


def test_the_clients_pad_and_crop_as_local_prediction_does(saved):
    model, _, base, _, _, image = saved
    local = prediction.predict(model, image, SAMPLES, seed=SEED)
    assert local["masks"].shape == (1, SAMPLES, HEIGHT, WIDTH)
    with serving.ModelServer(base, port=0, rest_port=0, poll_seconds=0) as running:
        rest = serving.RestClient(f"http://127.0.0.1:{running.rest_port}", "pun")
        with serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
            assert client.info()["multiple"] == rest.info()["multiple"] == 4
            features = client.features(image)
            assert features["features"].shape[1:3] == (112, 140)  # at the padded size
            assert features.image_size == (HEIGHT, WIDTH)
            sampled = client.sample(features, SAMPLES, seed=SEED)
            answers = [client.predict(image, SAMPLES, seed=SEED), sampled,
                       client.decode(features, sampled["z"]), rest.predict(image, SAMPLES, SEED),
                       rest.sample(rest.features(image), SAMPLES, SEED)]
    for answer in answers:
        np.testing.assert_array_equal(answer["masks"], local["masks"])
        np.testing.assert_allclose(answer["probabilities"], local["probabilities"], atol=1e-5)


def test_an_export_without_info_gets_images_as_they_are(saved, tmp_path):
    """Exports made before the `info` signature: the client sends the image unpadded, and the
    server's refusal says which sizes would work."""
    _, _, base, version, _, image = saved
    old = tmp_path / "pun" / "1"
    os.makedirs(old.parent)
    subprocess.run(["cp", "-r", version, str(old)], check=True)
    graph = saved_model_pb2.SavedModel()
    with open(old / "saved_model.pb", "rb") as f:
        graph.ParseFromString(f.read())
    del graph.meta_graphs[0].signature_def["info"]
    with open(old / "saved_model.pb", "wb") as f:
        f.write(graph.SerializeToString())
    with serving.ModelServer(str(tmp_path), port=0, rest_port=0, poll_seconds=0) as running:
        rest = serving.RestClient(f"http://127.0.0.1:{running.rest_port}", "pun")
        with serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
            for each in (client, rest):
                assert each.info() is None
                with pytest.raises(serving.InvalidRequestError,
                                   match="111x137 pixels .* divisible by 4"):
                    each.predict(image, 2, seed=SEED)
            assert client.predict(image[:, :108, :136], 2)["masks"].shape == (1, 2, 108, 136)


def _masks(folder):
    """The sample masks and the uncertainty map `predict` wrote for `odd.png`."""
    names = sorted(os.listdir(folder / "odd"))
    assert names == [f"sample_{i:02d}.png" for i in range(SAMPLES)] + ["uncertainty.png"]
    arrays = []
    for name in names:
        with Image.open(folder / "odd" / name) as png:
            arrays.append(np.asarray(png))
    return arrays


@pytest.mark.slow
def test_predict_target_and_rest_give_the_masks_of_predict_model(saved, tmp_path):
    _, keras_path, base, _, png, _ = saved
    common = ["--image", png, "-n", str(SAMPLES), "--seed", str(SEED)]
    assert cli.main(["predict", "--model", keras_path, "--out", str(tmp_path / "local"),
                     *common]) == 0
    log = tmp_path / "serve.log"
    # C++ logging on (TF_CPP_MIN_LOG_LEVEL=0): a failed assert op logs a warning and a line
    # naming its graph node, which `tfprobunet serve` once passed on.
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tfprobunet.cli", "serve", "--model-base-path", base,
             "--port", "0", "--rest-port", "0"], stdout=subprocess.PIPE, stderr=stderr,
            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    try:
        line = process.stdout.readline()  # once it listens (empty if it died)
        assert "gRPC 127.0.0.1:" in line, log.read_text()
        port = int(line.split("gRPC 127.0.0.1:")[1].split(",")[0])
        rest_port = int(line.split("REST http://127.0.0.1:")[1].split()[0])
        assert cli.main(["predict", "--target", f"127.0.0.1:{port}", "--name", "pun",
                         "--out", str(tmp_path / "served"), *common]) == 0
        rest = serving.RestClient(f"http://127.0.0.1:{rest_port}", "pun")
        prediction.predict_files(rest, [png], SAMPLES, str(tmp_path / "rest"), SEED)

        # A request the signatures refuse, sent as is.
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(raw_request("features", {"images": np.zeros((1, 15, 17, 1),
                                                                     np.float32)}), timeout=60)
        channel.close()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "{{node" not in refused.value.details(), refused.value.details()
        deadline = time.monotonic() + 60
        while "divisible by 4" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stdout.close()
    local = _masks(tmp_path / "local")
    for served in (_masks(tmp_path / "served"), _masks(tmp_path / "rest")):
        for expected, got in zip(local[:-1], served[:-1]):
            np.testing.assert_array_equal(got, expected)
        # The uncertainty map, from probabilities equal to float32 round-off: within a grey level.
        assert np.abs(served[-1].astype(int) - local[-1]).max() <= 1
    lines = log.read_text().splitlines()
    about = [line for line in lines if "15x17" in line]
    assert len(about) == 1, lines
    assert about[0].startswith("Refused a gRPC PredictRequest (model 'pun', signature "
                               "'features'): INVALID_ARGUMENT:"), about[0]
    assert "divisible by 4" in about[0]
    assert not [line for line in lines if "{{node" in line or "Assert" in line], lines


def test_a_hidden_tensorflow_warning_takes_its_node_lines_with_it(capfd):
    """A failed assert op logs `W... local_rendezvous.cc:412] ... INVALID_ARGUMENT: ...` and
    a line naming its graph node: the commands hold both back, and pass on what follows."""
    from tfprobunet import _console

    capfd.readouterr()
    with _console.filtered_stderr():
        os.write(2, b"W0000 00:00:1796647982.607560   21686 local_rendezvous.cc:412] Local "
                    b"rendezvous is aborting with status: INVALID_ARGUMENT: assertion failed\n"
                    b"\t [[{{function_node __inference_features_1}}{{node Assert_4/Assert}}]]\n"
                    b"Refused a gRPC PredictRequest: INVALID_ARGUMENT: assertion failed\n"
                    b"\tan indented line of its own\n")
    assert capfd.readouterr().err == ("Refused a gRPC PredictRequest: INVALID_ARGUMENT: "
                                      "assertion failed\n\tan indented line of its own\n")
