"""Your own scans as volumes: NIfTI files (`.nii`, `.nii.gz`, read with nibabel) or DICOM series
(a folder of `.dcm` slices, read with pydicom), with one label volume per rater. `from_volumes`
slices them along one axis into 2-D examples, and the dataset `"volumes"`
(`tfprobunet.data.load("volumes", split, data_dir=D)`, `--dataset volumes --data-dir D`) reads
`D/images` and `D/masks`. `predict_volume` segments a volume slice by slice and writes the
samples back as volumes with the input's geometry.

Layout (`{stem}`: a NIfTI file's name without `.nii.gz` or `.nii`; a DICOM series' folder name)::

    images/case01.nii.gz   masks/case01_0.nii.gz  masks/case01_1.nii.gz  masks/case01_2.nii.gz
    images/case02/*.dcm    masks/case02_0.nii.gz  ...  (or masks/case02_0/*.dcm: a label series)

A DICOM series' slices are sorted by their position along the slice normal
(`ImagePositionPatient` . (row x column direction of `ImageOrientationPatient`)) and rescaled
(`RescaleSlope`, `RescaleIntercept`: CT in Hounsfield units). Volumes are split by volume (a
patient), never by slice. Needs the `medical` extra: `pip install "tfprobunet[medical]"`.
"""

import importlib
import logging
import os
import zlib

import numpy as np
import tensorflow as tf

from tfprobunet import layers
from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.data import checks, crops, folders, manifests
from tfprobunet.data import intensity as intensity_lib
from tfprobunet.data.source import Source, check_split
from tfprobunet.defaults import MAX_SAMPLE_BYTES

NIFTI = (".nii.gz", ".nii")
DICOM = ".dcm"
FRACTIONS = folders.FRACTIONS  # train, val, test shares of the volumes
MULTIPLE = folders.MULTIPLE  # sides padded to a multiple of it (U-Nets of up to 5 levels)
# The share of the slices without any rater's label that is kept. Empty slices are most of a
# scan; kept all, they make GED look excellent (two empty masks are at distance 0) while the
# model learns little about lesions; dropped all, it never sees a scan without one.
EMPTY_SHARE = 0.1
# Slices segmented at once by `predict_volume`: bounds the memory of the samples'
# probabilities (batch x samples x h x w x K float32).
BATCH_SLICES = 8
EXTRA = 'pip install "tfprobunet[medical]"'
_log = logging.getLogger(__name__)


def _import(name):
    """nibabel or pydicom, imported when first needed: they are the `medical` extra."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"Reading NIfTI and DICOM volumes needs nibabel and pydicom ({name} is "
                          f"missing): {EXTRA}") from error


def is_volume(path):
    """Whether `path` is a NIfTI file or a folder holding `.dcm` files (a DICOM series)."""
    if os.path.isdir(path):
        return bool(_dicom_files(path))
    return os.path.isfile(path) and path.lower().endswith(NIFTI)


def _dicom_files(folder):
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(DICOM)
                  and os.path.isfile(os.path.join(folder, n)))


def read_volume(path):
    """A NIfTI file or a DICOM series folder as `(values (X, Y, Z), affine (4, 4), header)`.

    `values` are in the file's own units after its rescaling (NIfTI's `scl_slope`/`scl_inter`,
    DICOM's `RescaleSlope`/`RescaleIntercept`), in the stored integer type when there is none.
    `affine` maps a voxel index to RAS millimetres: NIfTI's own; for a DICOM series, built from
    its geometry with voxels indexed `(row, column, slice)`: column 0 is the column direction
    times the row spacing (`PixelSpacing[0]`), column 1 the row direction times
    `PixelSpacing[1]`, column 2 the step between the sorted slices' positions, the translation
    the first slice's `ImagePositionPatient`, then DICOM's LPS turned to RAS (x and y negated),
    as NIfTI converters do. `header` is the NIfTI header (None for DICOM).
    """
    if os.path.isdir(path):
        return _read_series(path)
    nibabel = _import("nibabel")
    image = nibabel.load(path)
    values = np.asanyarray(image.dataobj)
    while values.ndim > 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3:
        raise ValueError(f"{path} holds a {values.ndim}-D image of shape {values.shape}: a "
                         "volume (X, Y, Z) is read (split a time series into volumes).")
    return values, image.affine, image.header


def _read_series(folder):
    pydicom = _import("pydicom")
    names = _dicom_files(folder)
    if not names:
        raise FileNotFoundError(f"{folder} holds no .dcm file: a DICOM series is a folder of "
                                "its slices' .dcm files.")
    slices = [pydicom.dcmread(os.path.join(folder, n)) for n in names]
    for name, ds in zip(names, slices):
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if key not in ds:
                raise ValueError(f"{os.path.join(folder, name)} has no {key}: the slices of a "
                                 "series are ordered and placed by their geometry.")
    orientation = np.array(slices[0].ImageOrientationPatient, np.float64)
    if any(not np.allclose(np.array(ds.ImageOrientationPatient, np.float64), orientation,
                           atol=1e-4) for ds in slices):
        raise ValueError(f"The slices of {folder} have different ImageOrientationPatient: one "
                         "series (one orientation) per folder.")
    row, column = orientation[:3], orientation[3:]
    positions = np.array([ds.ImagePositionPatient for ds in slices], np.float64)
    depth = positions @ np.cross(row, column)
    order = np.argsort(depth, kind="stable")
    if len(set(np.round(depth, 4))) != len(depth):
        raise ValueError(f"{folder} holds slices at the same position: one series per folder.")
    slices, positions = [slices[k] for k in order], positions[order]
    pixels = [ds.pixel_array for ds in slices]
    if len({p.shape for p in pixels}) != 1 or pixels[0].ndim != 2:
        raise ValueError(f"The slices of {folder} differ in size or are not grey: "
                         f"{sorted({p.shape for p in pixels})}.")
    slopes = [float(getattr(ds, "RescaleSlope", 1)) for ds in slices]
    intercepts = [float(getattr(ds, "RescaleIntercept", 0)) for ds in slices]
    if all(s == 1 for s in slopes) and all(i == 0 for i in intercepts):
        values = np.stack(pixels, axis=-1)
    else:
        integral = all(v.is_integer() for v in slopes + intercepts)
        kind = np.int32 if integral else np.float32
        values = np.stack([p.astype(kind) * kind(s) + kind(i)
                           for p, s, i in zip(pixels, slopes, intercepts)], axis=-1)
    row_spacing, column_spacing = (float(v) for v in slices[0].PixelSpacing)
    step = ((positions[-1] - positions[0]) / (len(slices) - 1) if len(slices) > 1 else
            np.cross(row, column) * float(getattr(slices[0], "SliceThickness", 1) or 1))
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = column * row_spacing, row * column_spacing, step
    lps[:3, 3] = positions[0]
    return values, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, None


def _volumes(folder):
    """`{stem: path}` of the volumes in `folder`: NIfTI files and DICOM series folders."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No folder {folder}: from_volumes reads volumes from one "
                                "folder and their raters' label volumes from another.")
    found = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not is_volume(path):
            continue
        stem = folders.name_stem(name, NIFTI)
        if stem in found:
            raise ValueError(f"{found[stem]} and {path} are both volume {stem!r}: keep one.")
        found[stem] = path
    return found


def _entries(folder):
    """The sorted names of the volumes in `folder` (NIfTI files, DICOM series folders)."""
    return sorted(n for n in os.listdir(folder) if is_volume(os.path.join(folder, n)))


def _cases(images, masks, split, pattern, missing_mask, fractions, seed, split_manifest):
    """`(stems, image paths, mask paths (n, A))` of the split's volumes."""
    check_split(split)
    volumes = _volumes(images)
    stems = sorted(volumes)
    if not stems:
        raise FileNotFoundError(f"No volume in {images}: NIfTI files ({', '.join(NIFTI)}) or "
                                "folders of .dcm files (DICOM series).")
    if split_manifest is None:
        index = manifests.indices(manifests.split_ids(stems, seed, fractions), stems, split)
        how = f"{len(stems)} volumes split by fractions {tuple(fractions)}"
    else:
        manifest = manifests.read(split_manifest, folders.data_root(images, masks), "volumes",
                                  files=_data_files(images, masks))
        index = manifests.indices(manifest["splits"], stems, split)
        how = "the split manifest lists none of its volumes"
    if not len(index):
        raise ValueError(f"Split {split!r} is empty: {how}.")
    stems = [stems[k] for k in index]
    paths, _ = folders.match_masks(stems, masks, pattern, missing_mask, NIFTI,
                                   entries=_entries)
    return stems, [volumes[s] for s in stems], [
        [p and os.path.join(masks, p) for p in case] for case in paths]


def _data_files(images, masks):
    """The files a manifest's sha256 covers: every NIfTI file and series slice of both."""
    files = []
    for folder in (images, masks):
        for path in _volumes(folder).values():
            files += ([os.path.join(path, n) for n in _dicom_files(path)]
                      if os.path.isdir(path) else [path])
    return files


def split_manifest(images, masks, seed=0, fractions=FRACTIONS):
    """The split manifest (see `tfprobunet.data.manifests`) of the volumes in `images`: their
    stems split by `seed` and `fractions`; its sha256 covers the paths (relative to the folder
    holding both) and sizes of every volume and label file."""
    return manifests.make("volumes", folders.data_root(images, masks), sorted(_volumes(images)),
                          seed, fractions, files=_data_files(images, masks))


def _labels(path, shape, image_path, binarize):
    """A rater's label volume as uint8 (zeros for None), checked against its image's shape;
    with `binarize`, every label but 0 and the ignore label read as 1."""
    if path is None:
        return np.zeros(shape, np.uint8)
    values = read_volume(path)[0]
    if values.shape != shape:
        raise ValueError(f"{path} is {values.shape} voxels but its volume {image_path} is "
                         f"{shape}: every label volume must have its image's shape.")
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise ValueError(f"{path} holds fractional values: label volumes hold class labels.")
    if values.size and (values.min() < 0 or values.max() > IGNORE_LABEL):
        raise ValueError(f"{path} holds labels in [{values.min():g}, {values.max():g}]: class "
                         f"labels are 0 to 254 ({IGNORE_LABEL} ignored).")
    values = values.astype(np.uint8)
    return folders.binary(values, path) if binarize else values


def _kept(annotations, empty_share, seed, stem):
    """`(indices, counts)`: the slices of `annotations (n, A, h, w)` kept, every one a rater
    labelled and `round(empty_share * empty)` of the empty ones, drawn by `seed` and the
    volume's stem (the same whatever else is in the split); `counts` labelled, kept and
    dropped empty slices."""
    labelled = ((annotations > 0) & (annotations != IGNORE_LABEL)).any(axis=(1, 2, 3))
    empty = np.flatnonzero(~labelled)
    count = int(np.floor(empty_share * len(empty) + 0.5))
    drawn = np.random.default_rng([seed, zlib.crc32(stem.encode())]).choice(empty, count,
                                                                              replace=False)
    kept = np.sort(np.concatenate([np.flatnonzero(labelled), drawn]))
    return kept, {"labelled": int(labelled.sum()), "empty_kept": count,
                  "empty_dropped": len(empty) - count}


def _slices(values, axis):
    if axis not in (0, 1, 2):
        raise ValueError(f"`axis` must be 0, 1 or 2 (a volume's axis). Received: {axis!r}")
    return np.moveaxis(values, axis, 0)


def _read_case(image_path, mask_paths, stem, rule, axis, empty_share, seed, binarize=False):
    """`(images (k, h, w) uint16, annotations (k, A, h, w) uint8, counts)`: the kept slices of
    one volume (images None when `rule` is None: counting only)."""
    values = read_volume(image_path)[0]
    annotations = np.stack([_slices(_labels(p, values.shape, image_path, binarize), axis)
                            for p in mask_paths], axis=1)
    kept, counts = _kept(annotations, empty_share, seed, stem)
    if rule is None:
        return None, annotations[kept], counts
    # Scaled as a whole volume (a percentile rule takes the volume's percentiles), as
    # `predict_volume` scales it.
    images = _slices(intensity_lib.to_uint16(values, rule, image_path), axis)[kept]
    return images, annotations[kept], counts


def slice_counts(images, masks, split="train", axis=2, empty_share=EMPTY_SHARE, pattern=None,
                 missing_mask="error", fractions=FRACTIONS, seed=0, split_manifest=None):
    """`{stem: {"labelled": n, "empty_kept": n, "empty_dropped": n}}`: the slices of each
    volume of the split that `from_volumes` (same arguments) keeps and drops."""
    _check_share(empty_share)
    stems, image_paths, mask_paths = _cases(images, masks, split, pattern, missing_mask,
                                            fractions, seed, split_manifest)
    return {stem: _read_case(i, m, stem, None, axis, empty_share, seed)[2]
            for stem, i, m in zip(stems, image_paths, mask_paths)}


def _check_share(empty_share):
    if not 0 <= empty_share <= 1:
        raise ValueError(f"`empty_share` is the share of empty slices kept, in [0, 1]. "
                         f"Received: {empty_share!r}")


def from_volumes(images, masks, split="train", axis=2, empty_share=EMPTY_SHARE, window=None,
                 percentiles=None, pattern=None, missing_mask="error", binarize=True,
                 num_classes=None, crop=None, multiple=MULTIPLE, fractions=FRACTIONS, seed=0,
                 split_manifest=None):
    """Read a split of your volumes and their raters' label volumes, sliced, into memory.

    Each volume is scaled to [0, 1] as a whole by the intensity rule (`window`, `percentiles`
    or, by default, its data type's range: CT in Hounsfield units is refused, with the advice
    to pass a window; see `tfprobunet.data.intensity`), sliced along `axis`, and its kept
    slices stored as uint16 (2 bytes a pixel, within 1/131070 of the float) with their masks
    as uint8; the dataset yields float32 and int32. The counts of slices kept and dropped are
    logged (`logging`, INFO) and given by `slice_counts`.

    Args:
        images: folder of volumes: NIfTI files, or folders of a DICOM series' `.dcm` slices.
        masks: folder of label volumes, one per volume and rater (NIfTI or DICOM series).
        split: `"train"`, `"val"` or `"test"`.
        axis: the array axis sliced along (2: the third, the slice axis of most scans), as
            stored, not reoriented; a DICOM series is indexed `(row, column, slice)`.
        empty_share: the share of slices that no rater labelled kept (drawn by `seed` and the
            volume); every labelled slice is kept.
        window: `(low, high)` in the volume's units mapped to [0, 1], clipped (CT: `(-1000,
            400)` HU).
        percentiles: `(low, high)` percentiles of each volume mapped to [0, 1], clipped.
        pattern: the label volumes of `{stem}`, matched against their stems, `*` the rater
            (default `{stem}_*`).
        missing_mask: `"error"` refuses a volume without a label volume of a rater the others
            have; `"empty"` reads it as all background.
        binarize: True reads label volumes of 0 and 1 (or 0 and 255) as background and lesion,
            and refuses any other, naming it (as `from_folders` does); False keeps the values as
            class labels (a map of several structures).
        num_classes: K of class labels (default: the largest label + 1, at least 2).
        crop: `(height, width)`: the train split yields random windows of the slices (see
            `from_folders`); the other splits keep whole slices.
        multiple: slices are padded at the bottom and right (images repeating their last row
            and column, masks with the ignore label) to the split's largest slice, rounded up to
            a multiple of this.
        fractions: train, val and test shares of the volumes, split by `seed`.
        seed: seeds the split (by volume) and the empty slices kept.
        split_manifest: a manifest (`split_manifest`; its JSON file or dict) whose stems make
            the split instead of `seed`.

    Returns:
        A `Source` of `(image (H, W, 1) float32 in [0, 1], annotations (A, H, W) int32)`,
        volumes in sorted order, slices in array order.
    """
    _check_share(empty_share)
    if crop is not None:
        crops.check_multiple(crop, multiple)
    rule = intensity_lib.rule(window=window, percentiles=percentiles)
    stems, image_paths, mask_paths = _cases(images, masks, split, pattern, missing_mask,
                                            fractions, seed, split_manifest)
    cases, totals = [], {"labelled": 0, "empty_kept": 0, "empty_dropped": 0}
    for stem, image_path, paths in zip(stems, image_paths, mask_paths):
        image, annotations, counts = _read_case(image_path, paths, stem, rule, axis,
                                                empty_share, seed, binarize)
        cases.append((image_path, image, annotations))
        totals = {k: totals[k] + counts[k] for k in totals}
    _log.info("%s: %d volumes, %d labelled slices, %d empty kept, %d empty dropped",
              split, len(stems), totals["labelled"], totals["empty_kept"],
              totals["empty_dropped"])
    if num_classes is None:
        num_classes = max(checks.implied_num_classes(a) for _, _, a in cases)
        checks.check_implied_classes([a for _, _, a in cases], num_classes,
                                     f"The label volumes in {masks}")
    for path, _, annotations in cases:
        checks.check_labels(annotations, num_classes, f"The label volumes of {path}")
    stored_images, stored_masks = _padded(cases, len(mask_paths[0]), multiple)
    if not len(stored_images):
        raise ValueError(f"Split {split!r} keeps no slice: its volumes are all empty and "
                         f"empty_share={empty_share} keeps none of their slices.")
    dataset = tf.data.Dataset.from_tensor_slices((stored_images, stored_masks)).map(_for_model)
    if crop is not None and split == "train":
        dataset = crops.random_windows(dataset, crop, seed=seed)
    return Source(checks.mark_checked(dataset), 2 if binarize else int(num_classes), None, None)


def _padded(cases, raters, multiple):
    """`(images (n, H, W, 1) uint16, masks (n, A, H, W) uint8)`: the cases' slices padded."""
    height = layers.padded_size(max(i.shape[1] for _, i, _ in cases), multiple)
    width = layers.padded_size(max(i.shape[2] for _, i, _ in cases), multiple)
    count = sum(len(i) for _, i, _ in cases)
    images = np.empty((count, height, width, 1), np.uint16)
    masks = np.full((count, raters, height, width), IGNORE_LABEL, np.uint8)
    start = 0
    for _, image, annotations in cases:
        k, h, w = image.shape
        images[start:start + k, :h, :w, 0] = image
        images[start:start + k, h:, :w, 0] = image[:, -1:]  # last row, then last column
        images[start:start + k, :, w:] = images[start:start + k, :, w - 1:w]
        masks[start:start + k, :, :h, :w] = annotations
        start += k
    return images, masks


def _for_model(image, annotations):
    """A stored example as the model takes it: float32 in [0, 1] and int32."""
    return tf.cast(image, tf.float32) / 65535.0, tf.cast(annotations, tf.int32)


def load(data_dir, split, image_size=None, seed=0, split_manifest=None, *, axis=2,
         empty_share=EMPTY_SHARE, window=None, percentiles=None, pattern=None,
         missing_mask="error", binarize=True, num_classes=None, crop=None, multiple=MULTIPLE,
         fractions=FRACTIONS):
    """The dataset `"volumes"`: `from_volumes(data_dir/images, data_dir/masks, split, ...)`.

    Args:
        data_dir: the folder holding `images/` and `masks/`.
        split: `"train"`, `"val"` or `"test"`.
        image_size: unused: slices keep their size (padded, see `from_volumes`' `multiple`).
        seed, split_manifest, axis, empty_share, window, percentiles, pattern, missing_mask,
            binarize, num_classes, crop, multiple, fractions: as in `from_volumes` (the
            dataset's options: `train(data_options=...)`).
    """
    return from_volumes(os.path.join(data_dir, "images"), os.path.join(data_dir, "masks"),
                        split, axis=axis, empty_share=empty_share, window=window,
                        percentiles=percentiles, pattern=pattern, missing_mask=missing_mask,
                        binarize=binarize, num_classes=num_classes, crop=crop, multiple=multiple,
                        fractions=fractions, seed=seed, split_manifest=split_manifest)


def predict_volume(model, path, out_dir, num_samples=16, seed=None, axis=None, intensity=None,
                   batch_size=BATCH_SLICES, max_sample_bytes=MAX_SAMPLE_BYTES):
    """Segment a volume slice by slice and write the samples back as volumes.

    Args:
        model: a `SegmentationSampler`, or the path of a `.keras` file.
        path: a NIfTI file or a DICOM series folder.
        out_dir: gets `sample_00.nii.gz`, ... (uint8 labels) and `uncertainty.nii.gz` (float32:
            per voxel, the entropy in nats of the samples' mean probabilities), with the input's
            shape and affine (and, for NIfTI, its header; for DICOM, the affine `read_volume`
            builds from the series' geometry).
        num_samples: segmentations per slice.
        seed: an int makes the samples reproducible.
        axis: the axis sliced along, as in `from_volumes`; None: the training run's (its
            `data_options`, for a model path), else 2.
        intensity: the intensity rule (`tfprobunet.data.intensity`); None: the training run's
            (`intensity.of_run`) for a model path, else the data type's range.
        batch_size: slices segmented at once (each holds num_samples x h x w x K floats).
        max_sample_bytes: the most bytes those floats may take, batch_size x num_samples x h x
            w x K x 4 (`prediction.predict`).

    Returns:
        The paths written.
    """
    from tfprobunet import _io, metrics, prediction, saving

    axis, intensity = _as_trained(model, axis, intensity)
    if isinstance(model, (str, os.PathLike)):
        model = saving.load_model(model)
    values, affine, header = read_volume(path)
    scaled = _slices(intensity_lib.scale(values, intensity, path), axis)
    del values
    masks = np.empty((num_samples,) + scaled.shape, np.uint8)
    entropy = np.empty(scaled.shape, np.float32)
    for start in range(0, len(scaled), batch_size):
        batch = scaled[start:start + batch_size, ..., None]
        batch = np.repeat(batch, model.image_channels or 1, axis=-1)
        outputs = prediction.predict(model, batch, num_samples, seed, max_sample_bytes)
        masks[:, start:start + len(batch)] = np.moveaxis(outputs["masks"], 1, 0)
        entropy[start:start + len(batch)] = metrics.uncertainty_maps(
            outputs["probabilities"])[0]
    nibabel = _import("nibabel")
    kind = nibabel.Nifti2Image if isinstance(header, nibabel.Nifti2Header) else \
        nibabel.Nifti1Image
    os.makedirs(out_dir, exist_ok=True)
    written = []
    outputs = [(f"sample_{i:02d}.nii.gz", m) for i, m in enumerate(masks)]
    for name, data in outputs + [("uncertainty.nii.gz", entropy)]:
        image = kind(np.moveaxis(data, 0, axis), affine,
                     None if header is None else header.copy())
        image.set_data_dtype(data.dtype)
        written.append(os.path.join(out_dir, name))
        with _io.replacing(written[-1]) as tmp:
            nibabel.save(image, tmp)
    return written


def _as_trained(model, axis, intensity):
    """`axis` and `intensity`, those of the training run of the `.keras` path `model` where
    None (`intensity.run_options`), else 2 and the data type's range."""
    options = intensity_lib.run_options(model) if isinstance(model, (str, os.PathLike)) else {}
    if axis is None:
        axis = options.get("axis", 2)
    if intensity is None:
        intensity = intensity_lib.rule(window=options.get("window"),
                                       percentiles=options.get("percentiles"))
    return axis, intensity


def predict_volumes(model, paths, out_dir, num_samples=16, seed=None, axis=None,
                    intensity=None, max_sample_bytes=MAX_SAMPLE_BYTES):
    """`predict_volume` of each of `paths` into `out_dir/<stem>/` (`tfprobunet predict --model
    X.keras --image case.nii.gz --out OUT`, `--max-sample-bytes`); the model is loaded once.
    Returns the paths written."""
    axis, intensity = _as_trained(model, axis, intensity)
    not_volumes = [p for p in paths if not is_volume(p)]
    if not_volumes:
        raise ValueError(f"{not_volumes[0]} is neither a NIfTI file ({', '.join(NIFTI)}) nor a "
                         "folder of .dcm files: predict volumes and image files separately.")
    if isinstance(model, (str, os.PathLike)):
        from tfprobunet import saving

        model = saving.load_model(model)
    written = []
    for path in paths:
        stem = folders.name_stem(os.path.basename(os.path.normpath(path)), NIFTI)
        written += predict_volume(model, path, os.path.join(out_dir, stem), num_samples, seed,
                                  axis, intensity, max_sample_bytes=max_sample_bytes)
    return written
