"""`tfprobunet.data.images`: image sizes from headers, which must be the sizes the decoders give,
and the decoders' values, on small files of every format written here."""

import os

import numpy as np
import pytest
from PIL import Image

from tfprobunet import prediction
from tfprobunet.data import folders, images
from tfprobunet.serving import client

HEIGHT, WIDTH = 5, 7  # unequal, so that a swap shows


def _write(path, kind):
    """A HEIGHT x WIDTH image of `kind` at `path`; returns the array written."""
    rng = np.random.default_rng(0)
    if kind == "png16":
        array = rng.integers(0, 2**16, (HEIGHT, WIDTH)).astype(np.uint16)
    elif kind == "jpeg":
        array = rng.integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    else:
        array = rng.integers(0, 256, (HEIGHT, WIDTH)).astype(np.uint8)
    Image.fromarray(array).save(path, format="PNG" if kind.startswith("png") else kind.upper())
    return array


@pytest.mark.parametrize("kind, suffix", [("png8", ".png"), ("png16", ".png"), ("jpeg", ".jpg"),
                                          ("bmp", ".bmp"), ("tiff", ".tif")])
def test_the_header_size_is_the_decoded_size(tmp_path, kind, suffix):
    path = str(tmp_path / f"image{suffix}")
    _write(path, kind)
    with Image.open(path) as image:
        decoded = np.asarray(image.convert("L") if kind == "png16" else image)
    assert decoded.shape[:2] == (HEIGHT, WIDTH)
    assert images.header_size(path) == decoded.shape[:2]
    assert images.decode(path, "L").shape == (HEIGHT, WIDTH)
    assert images.decode(path, "RGB").shape == (HEIGHT, WIDTH, 3)
    if suffix == ".png":
        assert images.png_size(path) == (HEIGHT, WIDTH)
        assert tuple(images.decode_png(path, 1).shape) == (HEIGHT, WIDTH, 1)


def test_decoders_give_the_values_written(tmp_path):
    grey, wide, rgb = (str(tmp_path / name) for name in ("grey.png", "wide.png", "rgb.png"))
    grey_values = _write(grey, "png8")
    wide_values = _write(wide, "png16")
    Image.fromarray(np.repeat(grey_values[..., None], 3, axis=-1)).save(rgb)
    np.testing.assert_array_equal(images.decode(grey, "L"), grey_values)
    np.testing.assert_array_equal(images.decode(rgb, "L"), grey_values)  # equal channels
    np.testing.assert_array_equal(images.decode(grey, "RGB")[..., 2], grey_values)
    labels = images.decode(wide)  # a label map keeps its 16-bit values
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, wide_values)
    np.testing.assert_array_equal(images.decode_png(grey, 1)[..., 0], grey_values)
    np.testing.assert_array_equal(images.decode_png(grey, 3)[..., 1], grey_values)
    # As a model takes them: 8-bit values over 255; 16-bit ones at 8 bits, within 1/255.
    np.testing.assert_allclose(images.read_image(grey, 1), grey_values[None, ..., None] / 255,
                               atol=1e-6)
    np.testing.assert_allclose(images.read_image(wide, 1), wide_values[None, ..., None] / 65535,
                               atol=1 / 255)
    assert images.read_image(grey, 3).shape == (1, HEIGHT, WIDTH, 3)
    with pytest.raises(ValueError, match="is a RGB image: label masks"):
        images.decode(rgb)


def test_unreadable_files_are_named_with_what_they_are(tmp_path):
    tiff, text, png = (str(tmp_path / name) for name in ("a.tif", "a.txt", "a.png"))
    _write(tiff, "tiff")
    with open(text, "w") as f:
        f.write("hello")
    _write(png, "png8")
    with pytest.raises(ValueError, match="a.tif is a TIFF image: pass a PNG, JPEG, GIF, BMP"):
        images.header_size(tiff, images.TF_FORMATS)
    with pytest.raises(ValueError, match="a.txt is not an image that can be read"):
        images.header_size(text)
    with pytest.raises(ValueError, match="No image at .*missing.png"):
        images.header_size(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="a.txt cannot be read as an image"):
        images.decode(text, "L")
    with pytest.raises(ValueError, match="does not start with the PNG signature"):
        images.png_size(text)
    with open(png, "rb") as f:
        whole = f.read()
    with open(png, "wb") as f:
        f.write(whole[:-5])
    assert images.header_size(png) == (HEIGHT, WIDTH)  # the header is intact: PIL reads it
    with pytest.raises(ValueError, match="a.png is not a readable PNG: .* cut short"):
        images.png_size(png)


def test_prediction_and_the_client_read_images_here(tmp_path):
    path = str(tmp_path / "a.png")
    values = _write(path, "png8")
    assert prediction.image_size(path) == images.header_size(path) == (HEIGHT, WIDTH)
    assert prediction.IMAGE_FORMATS is None  # what the folder dataset reads, TIFF too
    assert client.read_image is images.read_image
    with pytest.raises(ValueError, match="is a directory: pass image files"):
        prediction.image_size(str(tmp_path))
    np.testing.assert_array_equal(  # as the folder dataset: each value / 255 in float32
        client.read_image(path, 1)[0, ..., 0], values.astype(np.float32) / np.float32(255))


# 16-bit grey values, as CT and MR slices exported to PNG or TIFF hold them.
VALUES_16 = np.array([[0, 1000, 4095], [30000, 50000, 65535]], np.uint16)


def _write_16bit_case(root, name, suffix=".png"):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    image = np.tile(VALUES_16, (4, 4))[:8, :8]  # 8x8, every value present
    Image.fromarray(image).save(os.path.join(root, "images", f"{name}{suffix}"))
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(os.path.join(root, "masks", f"{name}_0.png"))
    return image


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16bit_image_reaches_the_model_at_its_full_range(tmp_path, suffix):
    """Each value divided by its data type's maximum (65535): never clipped to white."""
    root = str(tmp_path)
    written = {f"scan{i}": _write_16bit_case(root, f"scan{i}", suffix) for i in range(5)}
    source = folders.from_folders(os.path.join(root, "images"), os.path.join(root, "masks"),
                                  "train", fractions=(1.0, 0.0, 0.0), pattern="{stem}_*.png")
    seen = [image.numpy()[:8, :8, 0] for image, _ in source.dataset]  # padded to a multiple
    assert len(seen) == 5
    for image in seen:
        np.testing.assert_allclose(image, written["scan0"] / 65535.0, atol=1e-6)
    assert len(np.unique(seen[0])) == 6  # not one value (white)


def test_an_8bit_image_beside_16bit_ones_keeps_its_scale(tmp_path):
    """Mixed depths in one folder: each image by its own type's maximum (255 or 65535)."""
    root = str(tmp_path)
    _write_16bit_case(root, "deep")
    eight = np.array([[0, 51, 255, 128] * 2] * 8, np.uint8)
    Image.fromarray(eight).save(os.path.join(root, "images", "flat.png"))
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(os.path.join(root, "masks", "flat_0.png"))
    source = folders.from_folders(os.path.join(root, "images"), os.path.join(root, "masks"),
                                  "train", fractions=(1.0, 0.0, 0.0))
    by_max = sorted((image.numpy()[:8, :8, 0] for image, _ in source.dataset),
                    key=lambda a: len(np.unique(a)))
    np.testing.assert_allclose(by_max[0], eight / 255.0, atol=1e-6)


def test_predict_and_the_serving_client_read_16bit_pngs_at_their_full_range(tmp_path):
    path = str(tmp_path / "scan.png")
    Image.fromarray(VALUES_16).save(path)
    for read in (images.read_image, client.read_image):
        np.testing.assert_allclose(read(path, 1)[0, ..., 0], VALUES_16 / 65535.0, atol=1e-6)
    eight = str(tmp_path / "eight.png")
    Image.fromarray(np.array([[0, 51, 255]], np.uint8)).save(eight)
    np.testing.assert_allclose(images.read_image(eight, 1)[0, ..., 0], [[0, 0.2, 1.0]],
                               atol=1e-6)


def test_images_of_a_kind_that_cannot_be_scaled_are_refused_by_name(tmp_path):
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"float.tif.*32-bit float.*8- or 16-bit"):
        images.decode(path, "L")
