"""Helpers the test modules share that are not the model harness (`harness.py`): bench scripts
as modules, and writers of tiny data sets in the layouts the loaders read."""

import functools
import importlib.util
import os
import struct
import zlib

import h5py
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def bench_module(name):
    """The script `bench/NAME.py` as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_png(path, array):
    """Write `array` (grey `(h, w)` or RGB `(h, w, 3)`) as an 8-bit PNG, making its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def center_crop(array, size):
    """The central `size x size` window of the last two axes of `array`."""
    top = (array.shape[-2] - size) // 2
    left = (array.shape[-1] - size) // 2
    return array[..., top:top + size, left:left + size]


def write_lidc_crops(root, split, first_grader=0, size=20, seed=0,
                     patients=("LIDC-IDRI-0001", "LIDC-IDRI-0002")):
    """The LIDC crops' layout (`tfprobunet.data.lidc.crops`): two slices of each patient, 4
    graders (the first empty) as 0/255 PNGs; returns {(patient, slice): (image, [masks])}."""
    rng = np.random.default_rng(seed)
    written = {}
    for patient in patients:
        for name in ("z-105.0_c0", "z-110.5_c1"):
            image = rng.integers(0, 256, (size, size))
            masks = [(rng.random((size, size)) < 0.3) * 255 for _ in range(4)]
            masks[0][:] = 0  # an empty grader
            save_png(os.path.join(root, split, "images", patient, name + ".png"), image)
            for g, mask in enumerate(masks):
                save_png(os.path.join(root, split, "gt", patient,
                                      f"{name}_l{g + first_grader}.png"), mask)
            written[(patient, name)] = (image, masks)
    return written


def lidc_entries(num_series=10, slices=3, seed=0):
    """The entries of the LIDC pickle (`tfprobunet.data.lidc.pickle_arrays`): 16x16 images and
    4 masks each, `slices` per series."""
    rng = np.random.default_rng(seed)
    entries = {}
    for s in range(num_series):
        for k in range(slices):
            entries[f"series{s}_slice{k}.png"] = {
                "image": rng.random((16, 16)).astype(np.float32),
                "masks": [(rng.random((16, 16)) < 0.3).astype(np.uint8) for _ in range(4)],
                "series_uid": f"1.3.6.1.{s}",
            }
    return entries


def write_cityscapes(root):
    """The Cityscapes layout (`tfprobunet.data.cityscapes`), one 8x8 image per city; the labels,
    returned, hold every flippable class, another class and 255."""
    rng = np.random.default_rng(0)
    cities = {"train": ("aachen", "ulm", "darmstadt"), "val": ("frankfurt",)}
    labels = np.array([[1, 11, 13, 8, 0, 5, 255, 2]] * 8, np.uint8)
    for official, names in cities.items():
        for city in names:
            stem = f"{city}_000000_000019"
            save_png(os.path.join(root, "leftImg8bit", official, city,
                                  stem + "_leftImg8bit.png"), rng.integers(0, 256, (8, 8, 3)))
            save_png(os.path.join(root, "gtFine", official, city,
                                  stem + "_gtFine_labelTrainIds.png"), labels)
    return labels


def write_npz_splits(root, count=3, size=8, annotators=2, seed=0):
    """`root/{train,val,test}.npz` (`tfprobunet.data.arrays`): `count` grey uint8 images and
    binary annotations `(count, annotators, size, size)` each; returns {split: (images,
    annotations)}."""
    rng = np.random.default_rng(seed)
    written = {}
    os.makedirs(root, exist_ok=True)
    for split in ("train", "val", "test"):
        images = rng.integers(0, 256, (count, size, size, 1)).astype(np.uint8)
        annotations = (rng.random((count, annotators, size, size)) < 0.3).astype(np.uint8)
        np.savez(os.path.join(root, f"{split}.npz"), images=images, annotations=annotations)
        written[split] = (images, annotations)
    return written


def write_image_folders(root, names, size=(8, 8), raters=2, seed=0):
    """`root/images/NAME.png` (grey) and `root/masks/NAME_R.png` (0/255) for each name and rater
    (`tfprobunet.data.folders`); returns {name: (image uint8, masks (raters, h, w) in {0, 1})}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in names:
        image = rng.integers(0, 256, size).astype(np.uint8)
        save_png(os.path.join(root, "images", f"{name}.png"), image)
        masks = (rng.random((raters, *size)) < 0.3).astype(np.uint8)
        for r, mask in enumerate(masks):
            save_png(os.path.join(root, "masks", f"{name}_{r}.png"), mask * 255)
        written[name] = (image, masks)
    return written


def write_folder_cases(root, names, size=(75, 90), raters=3, rgb=(), seed=0):
    """Grey images (RGB for the names in `rgb`) and 0/255 masks; returns {name: (grey image
    uint8, masks (raters, h, w) in {0, 1})}."""
    rng = np.random.default_rng(seed)
    written = {}
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for name in names:
        grey = rng.integers(0, 256, size).astype(np.uint8)
        if name in rgb:  # the same grey value on the three channels: converts back exactly
            Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(
                os.path.join(root, "images", f"{name}.png"))
        else:
            Image.fromarray(grey).save(os.path.join(root, "images", f"{name}.png"))
        masks = rng.random((raters, *size)) < 0.3
        masks[0] = False  # an empty mask, as raters who see nothing draw
        for r, mask in enumerate(masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                os.path.join(root, "masks", f"{name}_{r}.png"))
        written[name] = (grey, masks.astype(np.int32))
    return written


def write_phiseg_hdf5(path, sizes=(("train", 5), ("val", 2), ("test", 3)), side=16, seed=0,
                      per_patient=1):
    """As `prepare_data` does: per split a group with `uids` (int, `per_patient` images with
    each), `labels` (uint8, graders on the last axis) and `images` (float, the pickle's image
    minus 0.5). Returns what it wrote: `{split: (images in [0, 1], masks (n, 4, h, w), uids)}`."""
    rng = np.random.default_rng(seed)
    written = {}
    with h5py.File(path, "w") as f:
        for split, n in sizes:
            images = rng.random((n, side, side))
            masks = (rng.random((n, 4, side, side)) < 0.3).astype(np.uint8)
            uids = np.repeat(rng.integers(-2**62, 2**62, -(-n // per_patient)), per_patient)[:n]
            group = f.create_group(split)
            group.create_dataset("uids", data=np.asarray(uids, dtype=int))
            group.create_dataset("labels", data=np.asarray(masks.transpose(0, 2, 3, 1),
                                                          dtype=np.uint8))
            group.create_dataset("images", data=np.asarray(images - 0.5, dtype=float))
            written[split] = (images, masks, uids)
    return written


# DICOM series (tests/test_volumes.py, the volumes dataset of tests/test_source.py): sagittal,
# rows run along y, columns down z; the slice normal is row x column = -x, so the slices' order
# is that of decreasing x, not of any coordinate increasing.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ROW, COLUMN = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)


def write_dicom_series(folder, pixels, intercept, slope, order, bits=12):
    """`pixels (rows, columns, n)` uint16 as a DICOM series (pydicom), slice k at x = 10 -
    2.5 k, the files written (and named) in the order `order`."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder)
    series = generate_uid()
    for written, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series, "CT"
        ds.ImagePositionPatient = [10.0 - 2.5 * k, 5.0, 7.0]
        ds.ImageOrientationPatient = [*ROW, *COLUMN]
        ds.PixelSpacing = [0.9, 0.6]
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k], np.uint16).tobytes()
        ds.save_as(os.path.join(folder, f"IM{written:03d}.dcm"), enforce_file_format=True)


def write_nifti(path, array, affine=None):
    """`array` as a NIfTI file (nibabel), with `affine` (default: the identity)."""
    import nibabel

    os.makedirs(os.path.dirname(path), exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4) if affine is None else affine), path)


def write_volume_cases(root, count=6, shape=(16, 16, 4), raters=2, seed=0):
    """`count` CT-like int16 volumes (Hounsfield units) `root/images/case{v}.nii.gz` with a
    bright blob on every slice, and `raters` label volumes `root/masks/case{v}_{r}.nii.gz` (0/1)
    each; returns `root`."""
    rng = np.random.default_rng(seed)
    for v in range(count):
        image = rng.normal(-700, 100, shape).astype(np.int16)
        image[4:10, 5:11] = 40
        write_nifti(os.path.join(root, "images", f"case{v}.nii.gz"), image)
        for r in range(raters):
            mask = np.zeros(shape, np.uint8)
            mask[4 + r:10, 5:11] = 1
            write_nifti(os.path.join(root, "masks", f"case{v}_{r}.nii.gz"), mask)
    return root


def write_png_header(path, height, width, rows=0):
    """A grey 8-bit PNG written by hand whose header (IHDR) claims `height` x `width` pixels and
    whose data (IDAT) holds `rows` rows of zeros, deflated a row at a time: `rows=0` gives a file
    of 65 bytes that PIL opens (its size read from the header) but cannot decode; `rows=height`
    a whole image (13000 x 13000 takes about 170 KB)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    deflate, row = zlib.compressobj(9), bytes(width + 1)  # a filter byte, then the pixels
    data = b"".join(deflate.compress(row) for _ in range(rows)) + deflate.flush()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                   0, 0, 0))
                + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return str(path)


def write_phiseg_unwritten(path, count, side=128, compression="gzip"):
    """PHiSeg's layout (`write_phiseg_hdf5`) whose `images` and `labels` datasets are declared
    `(count, side, side)` and `(count, side, side, 4)`, chunked and compressed (contiguous with
    `compression=None`), but never written (HDF5 reads them as zeros): a file of a few kB that
    claims `count * side**2 * 12` bytes. Only the uids are stored."""
    layout = dict(chunks=True, compression=compression) if compression else {}
    with h5py.File(path, "w") as f:
        for split in ("train", "val", "test"):
            group = f.create_group(split)
            group.create_dataset("uids", data=np.arange(count, dtype=np.int64))
            group.create_dataset("labels", (count, side, side, 4), np.uint8, **layout)
            group.create_dataset("images", (count, side, side), np.float64, **layout)
    return str(path)


def plant_link(folder, name, outside):
    """A symbolic link `folder/name` (its parents made) to a new file, or to a new folder
    holding one, in `outside`, as an attacker would plant it where a command writes: a folder
    when `name` has no extension. Returns `(link, target, snapshot)`, `snapshot()` the names
    and bytes under `outside`, to compare before and after."""
    os.makedirs(outside, exist_ok=True)
    target = os.path.join(outside, "folder" if "." not in name else os.path.basename(name))
    if "." in name:
        with open(target, "w") as f:
            f.write("keep me")
    else:
        os.makedirs(target)
        with open(os.path.join(target, "keep.txt"), "w") as f:
            f.write("keep me")
    link = os.path.join(folder, name)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)

    def snapshot():
        found = {}
        for root, _, files in os.walk(outside):
            for file in files:
                with open(os.path.join(root, file), "rb") as f:
                    found[os.path.relpath(os.path.join(root, file), outside)] = f.read()
        return found
    return link, target, snapshot
