"""Loaders check before they allocate (issue 40): what PHiSeg's hdf5, an image folder or an npz
file will take is read from the files' metadata (HDF5 dataset shapes and stored sizes, image
headers, `.npy` headers) and refused in one line before any array is read, decoded or
allocated. Memory is measured in a child process around each refused load, against that
child's own state just before it: its peak RSS (`ru_maxrss`) and the peak of numpy's
allocations (`tracemalloc`, which sees `np.empty` even before its pages are touched)."""

import json
import os
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest

from fixtures import write_phiseg_hdf5, write_phiseg_unwritten, write_png_header
from tfprobunet.data import arrays, folders, phiseg
from tfprobunet.data import images as images_lib

MB = 10**6
# A refusal made from headers costs what opening the files and formatting the message take.
REFUSAL_MB = 50
CHILD = r"""
import json, resource, sys, tracemalloc
import h5py, numpy, zipfile
from PIL import Image, PngImagePlugin
from tfprobunet.data import arrays, folders, phiseg

results = []
for call in json.loads(sys.argv[1]):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        eval(call)
        outcome = ["loaded", ""]
    except Exception as error:
        outcome = [type(error).__name__, str(error)]
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    results.append([*outcome, traced, grown * 1024])
print(json.dumps(results))
"""


def refused_in_child(calls, **environment):
    """Run each Python expression of `calls` in one child process, in turn: `[(error type,
    message, numpy's peak bytes, peak RSS growth in bytes)]`."""
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(calls)], capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **environment})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def _one_line(message, *parts):
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.slow
def test_each_bomb_is_refused_from_its_headers_before_anything_is_allocated(tmp_path):
    # PHiSeg: 1000 images of 128 x 128 declared, never written (HDF5 reads zeros): 131 MB of
    # float64 images and 66 MB of labels in a file of a few kB.
    hdf5 = write_phiseg_unwritten(tmp_path / "data_lidc.hdf5", 1000)
    assert os.path.getsize(hdf5) < 100_000
    # A folder whose one image (and its mask) is a valid 164 KB PNG of 13000 x 13000 zeros:
    # 169 million pixels, 338 MB to hold padded, decoded in PIL, copied and stored.
    big = tmp_path / "big"
    write_png_header(big / "images" / "scan.png", 13000, 13000, rows=13000)
    os.makedirs(big / "masks")
    os.link(big / "images" / "scan.png", big / "masks" / "scan_0.png")
    # A folder of 12 images and 3 masks each whose 65-byte headers claim 8000 x 8000 each (under
    # the pixel limit): 12 * 8000 * 8000 * (1 + 3) bytes, 3.1 GB, to allocate.
    many = tmp_path / "many"
    for k in range(12):
        write_png_header(many / "images" / f"s{k:02d}.png", 8000, 8000)
        for rater in range(3):
            write_png_header(many / "masks" / f"s{k:02d}_{rater}.png", 8000, 8000)
    # An npz whose 67 MB of images (deflated zeros: 65 KB) and 3 annotations disagree.
    npz = tmp_path / "npz"
    os.makedirs(npz)
    np.savez_compressed(npz / "train.npz", images=np.zeros((256, 256, 256, 1), np.float32),
                        annotations=np.zeros((3, 2, 256, 256), np.uint8))
    assert os.path.getsize(npz / "train.npz") < 500_000

    results = refused_in_child([
        f"phiseg.dataset({hdf5!r}, 'train')",
        f"folders.from_folders({str(big / 'images')!r}, {str(big / 'masks')!r}, "
        "fractions=(1, 0, 0))",
        f"folders.from_folders({str(many / 'images')!r}, {str(many / 'masks')!r}, "
        "fractions=(1, 0, 0))",
        f"arrays.npz_split({str(npz)!r}, 'train')"])
    for (error, message, traced, grown), parts in zip(results, [
            (hdf5, "'train/images'", "float64 (1000, 128, 128)", "decompression bomb",
             "h5repack"),
            (str(big / "images" / "scan.png"), "13000 x 13000", "67,108,864 pixels",
             images_lib.MAX_IMAGE_PIXELS_VARIABLE, "max_pixels"),
            ("The 12 images", "3 masks", "3,072,000,000 bytes", "8000 x 8000",
             str(many / "images" / "s00.png"), "2,147,483,648", arrays.MAX_ARRAY_BYTES_VARIABLE,
             "max_bytes"),
            (str(npz / "train.npz"), "same n, h and w", "(256, 256, 256, 1)", "(3, 2, 256, 256)",
             "Nothing was read")]):
        assert error == "ValueError", (error, message)
        _one_line(message, *parts)
        assert traced < REFUSAL_MB * MB, (message, traced / MB)
        assert grown < REFUSAL_MB * MB, (message, grown / MB)


@pytest.mark.parametrize("compression", ["gzip", None])
def test_a_phiseg_dataset_that_would_inflate_100_times_is_refused(tmp_path, compression):
    # 300 rows of 128 x 128: 39 MB of images, 20 MB of labels, past the 16 MiB floor; the file
    # stores nothing of either.
    path = write_phiseg_unwritten(tmp_path / "data_lidc.hdf5", 300, compression=compression)
    with pytest.raises(ValueError) as refused:
        phiseg.read(path, "val")
    _one_line(str(refused.value), path, "'val/images'", "(300, 128, 128)", "37.5 MiB",
              "stores 0 bytes", f"({compression or 'uncompressed'}", "decompression bomb")
    # The same shapes written (stored 1:1 without compression) load.
    if compression is None:
        with h5py.File(path, "a") as f:
            f["val/labels"][...] = np.ones((300, 128, 128, 4), np.uint8)
            f["val/images"][...] = np.full((300, 128, 128), 0.25)
        images, annotations, _ = phiseg.read(path, "val")
        assert images.shape == (300, 128, 128, 1) and np.all(images == 0.75)
        assert annotations.shape == (300, 4, 128, 128) and np.all(annotations == 1)


def test_the_phiseg_limit_counts_what_the_loader_holds_and_is_raised(tmp_path, monkeypatch):
    # 1024 images of 16 x 16: float32 images 1,048,576 bytes once read (2,097,152 stored as
    # float64), uint8 labels 1,048,576 bytes, held as stored until the dataset yields them.
    path = str(tmp_path / "data_lidc.hdf5")
    written = write_phiseg_hdf5(path, sizes=(("train", 1024), ("val", 1), ("test", 1)))
    with pytest.raises(ValueError) as refused:
        phiseg.dataset(path, "train", max_bytes=10**6)
    _one_line(str(refused.value), path, "`train/images` is float64 (1024, 16, 16)",
              "2,097,152 bytes stored, 1,048,576 once read as 4-byte values",
              "limit of 1,000,000 bytes", f"{arrays.MAX_ARRAY_BYTES_VARIABLE}=1048576",
              "max_bytes=")
    monkeypatch.setenv(arrays.MAX_ARRAY_BYTES_VARIABLE, "1e6")
    with pytest.raises(ValueError, match="limit of 1,000,000 bytes"):
        phiseg.dataset(path, "train")
    monkeypatch.setenv(arrays.MAX_ARRAY_BYTES_VARIABLE, "1.1e6")  # labels counted at 1 byte
    phiseg.dataset(path, "val")  # what the first dataset costs once (TensorFlow's own)
    tracemalloc.start()
    try:
        dataset = phiseg.dataset(path, "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The images and labels as held (2 MiB), a block of float64 rows read and shifted (2 MiB):
    # not the whole float64 images twice beside int32 labels (10 MiB before).
    assert peak < 6 * 2**20, peak / 2**20
    examples = list(dataset.as_numpy_iterator())
    assert len(examples) == 1024 and examples[5][1].dtype == np.int32
    np.testing.assert_array_equal(examples[5][1], written["train"][1][5])
    np.testing.assert_allclose(examples[5][0][..., 0], written["train"][0][5], atol=1e-7)


def test_folder_limits_are_raised_by_argument_or_environment(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_png_header(root / "images" / "a.png", 40, 50, rows=40)
    write_png_header(root / "masks" / "a_0.png", 40, 50, rows=40)
    images, masks = str(root / "images"), str(root / "masks")
    with pytest.raises(ValueError) as refused:
        folders.from_folders(images, masks, fractions=(1, 0, 0), max_pixels=1999)
    _one_line(str(refused.value), str(root / "images" / "a.png"), "40 x 50 pixels (2,000)",
              "limit of 1,999 pixels", f"{images_lib.MAX_IMAGE_PIXELS_VARIABLE}=2000",
              "from_folders(..., max_pixels=...)")
    # Padded to 48 x 64: 3072 bytes of image and as many of mask.
    with pytest.raises(ValueError, match=r"6,144 bytes .* above the limit of 6,143 bytes: "
                                         r"padded to 48 x 64 \(the largest, .*a\.png, is "
                                         r"40 x 50\)"):
        folders.from_folders(images, masks, fractions=(1, 0, 0), max_bytes=6143)
    source = folders.from_folders(images, masks, fractions=(1, 0, 0), max_pixels=2000,
                                  max_bytes=6144)
    assert next(iter(source.dataset))[0].shape == (48, 64, 1)
    monkeypatch.setenv(images_lib.MAX_IMAGE_PIXELS_VARIABLE, "1999")
    monkeypatch.setenv(arrays.MAX_ARRAY_BYTES_VARIABLE, "6144")
    with pytest.raises(ValueError, match=images_lib.MAX_IMAGE_PIXELS_VARIABLE):
        folders.load(str(root), "train", fractions=(1, 0, 0))
    monkeypatch.setenv(images_lib.MAX_IMAGE_PIXELS_VARIABLE, "2e3")
    assert len(list(folders.load(str(root), "train", fractions=(1, 0, 0)).dataset)) == 1
    monkeypatch.setenv(images_lib.MAX_IMAGE_PIXELS_VARIABLE, "many")
    with pytest.raises(ValueError, match=r"TFPROBUNET_MAX_IMAGE_PIXELS must be a positive "
                                         r"number of pixels.*'many'"):
        folders.load(str(root), "train", fractions=(1, 0, 0))


def test_a_mask_whose_header_differs_from_its_image_is_refused_undecoded(tmp_path):
    root = tmp_path / "data"
    write_png_header(root / "images" / "a.png", 40, 50, rows=40)
    write_png_header(root / "masks" / "a_0.png", 4000, 5000)  # a header only: not decodable
    with pytest.raises(ValueError) as refused:
        folders.load(str(root), "train", fractions=(1, 0, 0))
    assert str(refused.value) == (f"{root / 'masks' / 'a_0.png'} is 4000x5000 pixels (height x "
                                  f"width) but its image {root / 'images' / 'a.png'} is 40x50: "
                                  "every mask must have its image's size.")


def test_16_bit_files_are_counted_at_2_bytes_a_pixel(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "a_0.png")
    # 16 * 16 * (2 + 1) = 768 bytes.
    with pytest.raises(ValueError, match=r"768 bytes .*2 bytes an image pixel and 1 a mask"):
        folders.from_folders(str(root / "images"), str(root / "masks"), multiple=1,
                             fractions=(1, 0, 0), max_bytes=767)
    source = folders.from_folders(str(root / "images"), str(root / "masks"), multiple=1,
                                  fractions=(1, 0, 0), max_bytes=768)
    image = next(iter(source.dataset))[0].numpy()
    np.testing.assert_allclose(image, 40000 / 65535, rtol=1e-6)


def test_lidc_tiles_beyond_the_pixel_limit_are_refused_from_their_headers(tmp_path):
    from fixtures import write_lidc_crops
    from tfprobunet.data import lidc

    write_lidc_crops(str(tmp_path), "train", size=20)
    with pytest.raises(ValueError, match=r"20 x 20 pixels \(400\), above the limit of 399 "
                                         r"pixels.*lidc\.crops\(\.\.\., max_pixels=\.\.\.\)"):
        lidc.crops(str(tmp_path), "train", image_size=16, max_pixels=399)
    assert len(list(lidc.crops(str(tmp_path), "train", image_size=16, max_pixels=400))) == 4


def test_cityscapes_files_beyond_the_pixel_limit_are_refused_from_their_headers(
        tmp_path, monkeypatch):
    """The Cityscapes loader decoded its PNGs without the folder loader's pixel budget: a
    65-byte image claiming 13000 x 13000 was only found (and allocated for) when decoded."""
    from fixtures import write_cityscapes
    from tfprobunet import data

    write_cityscapes(str(tmp_path))
    big = tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    write_png_header(big, 13000, 13000)
    with pytest.raises(ValueError) as refused:
        data.load("cityscapes", "train", data_dir=str(tmp_path))
    _one_line(str(refused.value), str(big), "13000 x 13000 pixels (169,000,000)",
              "limit of 67,108,864 pixels", f"{images_lib.MAX_IMAGE_PIXELS_VARIABLE}=169000000",
              "cityscapes.dataset(..., max_pixels=...)")
    # The label maps are checked too, and the limit is raised as the folder loader's is.
    label = tmp_path / "gtFine" / "val" / "frankfurt" / \
        "frankfurt_000000_000019_gtFine_labelTrainIds.png"
    write_png_header(label, 9, 9)
    monkeypatch.setenv(images_lib.MAX_IMAGE_PIXELS_VARIABLE, "64")  # the 8 x 8 images pass
    with pytest.raises(ValueError, match=rf"{label}: its header claims 9 x 9 pixels \(81\), "
                                         r"above the limit of 64"):
        data.load("cityscapes", "test", data_dir=str(tmp_path))
    assert len(list(data.load("cityscapes", "val", data_dir=str(tmp_path)).dataset)) == 2
    monkeypatch.setenv(images_lib.MAX_IMAGE_PIXELS_VARIABLE, "63")
    with pytest.raises(ValueError, match="8 x 8 pixels"):
        data.load("cityscapes", "val", data_dir=str(tmp_path))


def test_npz_arrays_that_disagree_are_refused_from_their_headers(tmp_path):
    images = np.zeros((2, 8, 8, 1), np.float32)
    annotations = np.zeros((2, 3, 8, 8), np.uint8)
    for extra, message in [
            (dict(annotation_weights=np.ones(2)), r"`annotation_weights` must be of shape "
                                                  r"\(3,\) .*Received shape \(2,\)"),
            (dict(num_classes=np.array([2, 3])), r"`num_classes` must be a single number"),
            (dict(classes=np.ones((2, 2), int)), r"`classes` must be a list")]:
        np.savez(tmp_path / "train.npz", images=images, annotations=annotations, **extra)
        with pytest.raises(ValueError, match=message) as refused:
            arrays.npz_split(str(tmp_path), "train")
        assert str(tmp_path / "train.npz") in str(refused.value)
    np.savez(tmp_path / "train.npz", images=images, annotations=annotations.astype(bool))
    with pytest.raises(ValueError, match=r"`annotations` int\. Received float32 and bool"):
        arrays.npz_split(str(tmp_path), "train")
    np.savez(tmp_path / "train.npz", images=images, annotations=annotations,
             annotation_weights=np.array([0.5, 0.25, 0.25]), num_classes=np.array(2))
    _, num_classes, weights, _ = arrays.npz_split(str(tmp_path), "train")
    assert num_classes == 2 and weights.tolist() == [0.5, 0.25, 0.25]
