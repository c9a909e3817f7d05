"""Prediction without a server, at any image size: padded for the U-Net, cropped back."""

import os

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_model
from tfprobunet import cli, prediction


@pytest.fixture(scope="module")
def model():
    model = tiny_model(num_classes=2)  # 3 levels: sides must be multiples of 4
    model.build((None, 16, 16, 1))
    return model


def test_pad_to_multiple_repeats_the_last_row_and_column():
    image = np.arange(6).reshape(1, 2, 3, 1)
    padded, size = prediction.pad_to_multiple(image, 4)
    assert size == (2, 3) and padded.shape == (1, 4, 4, 1)
    np.testing.assert_array_equal(padded[0, :, :, 0], [[0, 1, 2, 2], [3, 4, 5, 5],
                                                       [3, 4, 5, 5], [3, 4, 5, 5]])
    labels, _ = prediction.pad_to_multiple(image[..., 0], 4, value=255)
    np.testing.assert_array_equal(labels[0], [[0, 1, 2, 255], [3, 4, 5, 255],
                                              [255] * 4, [255] * 4])


def test_predict_crops_back_what_the_padded_image_gives(model):
    rng = np.random.default_rng(0)
    image = rng.random((1, 75, 90, 1), dtype=np.float32)
    outputs = prediction.predict(model, image, 3, seed=5)
    assert outputs["masks"].shape == (1, 3, 75, 90)
    assert outputs["probabilities"].shape == (1, 3, 75, 90, 2)
    np.testing.assert_allclose(outputs["probabilities"].sum(-1), 1.0, atol=1e-5)
    # The same image padded by hand to 76 x 92, a size the U-Net takes as it is.
    by_hand = np.concatenate([image, image[:, -1:]], axis=1)
    by_hand = np.concatenate([by_hand, np.repeat(by_hand[:, :, -1:], 2, axis=2)], axis=2)
    whole = prediction.predict(model, by_hand, 3, seed=5)
    np.testing.assert_array_equal(outputs["masks"], whole["masks"][:, :, :75, :90])
    # uint8 images are scaled as the loaders scale them.
    pixels = rng.integers(0, 256, (1, 16, 20, 1)).astype(np.uint8)
    np.testing.assert_array_equal(
        prediction.predict(model, pixels, 2, seed=1)["masks"],
        prediction.predict(model, pixels.astype(np.float32) / 255, 2, seed=1)["masks"])


def test_a_request_beyond_one_calls_bytes_is_drawn_in_seeded_calls(model, monkeypatch):
    """Beyond `CALL_BYTES` of probabilities (512 MiB; lowered here to two samples' worth),
    `predict` draws the samples in several `model.sample` calls, the i-th seeded `[seed, i]`:
    the first call's are those of a request that fits in one, the others come from their own
    seeds, and the whole is as reproducible as one call."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    images = rng.random((2, 16, 16, 1), dtype=np.float32)
    one_sample = 2 * 16 * 16 * model.num_classes * 4  # bytes of one sample of both images
    two_samples = prediction.predict(model, images, 2, seed=7)  # one call
    monkeypatch.setattr(prediction, "CALL_BYTES", 2 * one_sample + 1)
    chunked = prediction.predict(model, images, 5, seed=7)  # calls of 2, 2 and 1 samples
    assert chunked["masks"].shape == (2, 5, 16, 16)
    assert chunked["probabilities"].shape == (2, 5, 16, 16, 2)
    for name in ("masks", "probabilities"):
        np.testing.assert_array_equal(chunked[name][:, :2], two_samples[name])
        np.testing.assert_array_equal(chunked[name], prediction.predict(model, images, 5,
                                                                        seed=7)[name])
    for i, start in ((1, 2), (2, 4)):
        logits = model.sample(images, min(2, 5 - start), seed=tf.constant([7, i], tf.int32))
        np.testing.assert_allclose(chunked["probabilities"][:, start:start + 2],
                                   tf.nn.softmax(logits).numpy(), atol=1e-6)
        np.testing.assert_array_equal(chunked["masks"][:, start:start + 2],
                                      np.argmax(logits, axis=-1))
    # Each call draws its own latents: no call repeats the first one's samples.
    assert not np.allclose(chunked["probabilities"][:, 2:4], chunked["probabilities"][:, :2])
    assert prediction.predict(model, images, 5)["masks"].shape == (2, 5, 16, 16)  # unseeded


def test_cli_predicts_locally_at_each_images_own_size(model, tmp_path, capsys):
    path = str(tmp_path / "model.keras")
    model.save(path)
    rng = np.random.default_rng(1)
    sizes = {"scan": (75, 90), "photo": (48, 64)}  # (height, width); the photo is RGB
    Image.fromarray(rng.integers(0, 256, sizes["scan"]).astype(np.uint8)).save(
        tmp_path / "scan.png")
    Image.fromarray(rng.integers(0, 256, (*sizes["photo"], 3)).astype(np.uint8)).save(
        tmp_path / "photo.png")
    out = tmp_path / "out"
    assert cli.main(["predict", "--model", path, "--image", str(tmp_path / "scan.png"),
                     str(tmp_path / "photo.png"), "-n", "3", "--seed", "2",
                     "--out", str(out)]) == 0
    assert "wrote 6 sample masks and 2 uncertainty map(s)" in capsys.readouterr().out
    for stem, (height, width) in sizes.items():
        files = sorted(os.listdir(out / stem))
        assert files == ["sample_00.png", "sample_01.png", "sample_02.png", "uncertainty.png"]
        for name in files:
            with Image.open(out / stem / name) as png:
                assert png.size == (width, height)


def test_uncertainty_png_maps_entropy_to_grey_as_documented(tmp_path):
    # Two samples, K = 2; their mean at the three pixels: certain, (0.9, 0.1) and (0.5, 0.5).
    probabilities = np.array([[[[1.0, 0.0], [0.8, 0.2], [1.0, 0.0]]],
                              [[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]])  # (m, h, w, K)
    written = prediction.write_masks(probabilities.argmax(-1), probabilities, str(tmp_path))
    assert written[-1] == str(tmp_path / "uncertainty.png")
    with Image.open(written[-1]) as png:
        grey, description = np.asarray(png), png.text["Description"]
    entropy = [0.0, -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), np.log(2)]  # 0, 0.325, 0.693
    # docs/evaluation.md: grey = round(255 * H / log K), white at log K.
    np.testing.assert_array_equal(grey, [[0, 120, 255]])
    np.testing.assert_allclose(grey[0] / 255 * np.log(2), entropy, atol=0.5 / 255 * np.log(2))
    assert "round(255 * H / log 2)" in description and "log 2 = 0.6931 nats" in description
    # K = 3: white is log 3 nats, all three classes equally likely.
    uniform = np.full((3, 1, 1, 3), 1 / 3)
    prediction.write_masks(np.zeros((3, 1, 1), int), uniform, str(tmp_path / "three"))
    with Image.open(tmp_path / "three" / "uncertainty.png") as png:
        assert np.asarray(png).tolist() == [[255]] and "log 3 = 1.0986 nats" in png.text[
            "Description"]


def test_masks_written_over_symbolic_links_replace_the_links_not_their_targets(tmp_path):
    """Issue 40, point 1: nothing the library writes goes through a link, which could lead
    outside the folder it was given (PIL's `save` opened `sample_00.png` following it)."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("sample_00.png", "uncertainty.png"):
        os.symlink(outside, out / name)
    probabilities = np.full((1, 4, 4, 2), 0.5)
    written = prediction.write_masks(np.zeros((1, 4, 4), int), probabilities, str(out))
    assert outside.read_bytes() == b"keep me"
    for path in written:
        assert not os.path.islink(path)
        with Image.open(path) as png:
            assert png.size == (4, 4)
