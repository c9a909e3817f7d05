"""Your own data as image files: a folder of images and a folder of masks, one mask file per
rater, read by `from_folders(images, masks, split)`, and by `load(FOLDER, split)` (the dataset
`"folder"`: `tfprobunet.data.load("folder", ...)`, `tfprobunet train|evaluate --dataset folder
--data-dir FOLDER`) from `FOLDER/images` and `FOLDER/masks`. The files are decoded by
`tfprobunet.data.images`.

Layout (any names; PNG, JPEG, BMP or TIFF; `{stem}` is an image's file name without extension)::

    images/scan01.png            masks/scan01_0.png  masks/scan01_1.png  masks/scan01_2.png
    images/scan02.png            masks/scan02_0.png  ...

Every image has the same raters (the part of the mask name that `*` stands for), so that each
image has A masks, in the sorted order of those parts. With subfolders `train/`, `val/` and
`test/` in both folders, those are the splits; otherwise the images are split by a seed. A
split manifest (`split_manifest`: the image file names of each split) replaces either: the
images of all subfolders are pooled and each split takes the names the manifest lists.
"""

import bisect
import collections
import concurrent.futures
import itertools
import os
import string
import warnings

import numpy as np
import tensorflow as tf

from tfprobunet import layers
from tfprobunet.catalog import IGNORE_LABEL, SPLITS
from tfprobunet.data import arrays, checks, crops, intensity, manifests
from tfprobunet.data import images as images_lib
from tfprobunet.data.source import Source, check_split
from tfprobunet.saving import readable

# The image files read (`tfprobunet.data.images` decodes them).
EXTENSIONS = images_lib.EXTENSIONS
FRACTIONS = (0.8, 0.1, 0.1)
# Sides are padded to a multiple of this by default: U-Nets of up to 5 levels take them.
MULTIPLE = 16
# Files decoded at the same time (PIL lets go of the GIL while it decodes). Twice as many cases
# are read ahead of the one being stored, no more: the decoded files do not pile up.
_WORKERS = min(8, (os.cpu_count() or 1) + 2)
# The pixels of the files being decoded at once (one case at least): decoding a file takes a few
# times its pixels' bytes, above what the arrays hold.
_DECODING_PIXELS = 2**26
# x / 255 in float32 for each 8-bit value x: the dataset looks the pixels up here, so that they
# are the very floats that numpy's `image / 255.0` gives (as they were before the images were
# kept as bytes), whatever TensorFlow's division does.
_FLOATS = np.arange(256, dtype=np.float32) / 255.0


def _files(folder, extensions=EXTENSIONS):
    """The image files of `folder`, sorted; hidden ones (`.name`, as macOS's `._scan01.png`
    copies of resource forks) left out."""
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and name.lower().endswith(tuple(extensions))
                  and os.path.isfile(os.path.join(folder, name)))


def _split_folders(images, masks, split):
    """The split's image and mask folders if `images` has split subfolders, else None."""
    present = [s for s in SPLITS if os.path.isdir(os.path.join(images, s))]
    if not present:
        return None
    if split not in present:
        raise FileNotFoundError(f"{images} has split subfolders {present} but no {split!r}: "
                                f"add {os.path.join(images, split)}, or remove the subfolders "
                                "to split by a seed.")
    mask_folder = os.path.join(masks, split)
    if not os.path.isdir(mask_folder):
        raise FileNotFoundError(f"{os.path.join(images, split)} has no mask folder "
                                f"{mask_folder}: the masks are split as the images are.")
    return os.path.join(images, split), mask_folder


def match_masks(stems, masks, pattern=None, missing_mask="error", extensions=EXTENSIONS,
                names=None, entries=None):
    """Each image's mask files, one per rater, found in the folder `masks`.

    Args:
        stems: the images' names without their extension.
        masks: the folder of masks (a split's, with split subfolders).
        pattern: where the masks of image `{stem}` are, relative to `masks`: `{stem}` stands
            for the image's name, `*` (at most one) for the rater, one `/` at most (a subfolder
            per rater: `*/{stem}.png`); everything else is literal. Without an extension it
            matches any of `extensions` (`{stem}_*` matches `scan01_0.png` and `scan01_0.tif`).
            None tries the `LAYOUTS` in turn and takes the one that finds masks for the most
            images.
        missing_mask: `"error"` refuses an image without a mask for a rater the other images
            have, naming the file expected; `"empty"` reads it as an empty mask (all
            background; a tool that saves nothing for an image without a lesion).
        extensions: the mask files read (lower case, with the dot).
        names: the images' file names, for messages (default: `stems`).
        entries: `entries(folder)`: the sorted names of the masks in a folder (default: its
            files with one of `extensions`); a subfolder that is no entry of `masks` is a
            rater's. Volumes pass theirs (NIfTI files and DICOM series folders).

    Returns:
        `(paths, raters)`: `paths[i][a]` the mask of image i by rater a (None for an empty one,
        with `missing_mask="empty"`), raters in sorted order of their names (`raters`; `""`
        for the single rater of a `{stem}` layout).

    Raises:
        FileNotFoundError: no mask matches any image (naming the layouts tried, the first
            image's expected masks and files the folder holds), or a rater's mask is missing.
        ValueError: a malformed `pattern` or `missing_mask`.
    """
    if missing_mask not in MISSING_MASKS:
        raise ValueError(f"`missing_mask` must be one of {MISSING_MASKS}: 'empty' reads a "
                         f"missing mask as all background. Received: {missing_mask!r}")
    index = _mask_index(masks, extensions, entries)
    if pattern is None:
        found = [_find(stems, index, layout, extensions) for layout, _ in LAYOUTS]
        best = max(range(len(found)), key=lambda k: sum(map(bool, found[k])))
        if not any(found[best]):
            raise FileNotFoundError(_unmatched((names or stems)[0], stems[0], masks, index,
                                               [p for p, _ in LAYOUTS]))
        whole = [LAYOUTS[k][0] for k in range(len(found)) if all(found[k])]
        if len(whole) > 1:
            raise ValueError(f"The masks in {masks} fit several layouts, each with masks for "
                             f"every image: {', '.join(whole)}. Say which with pattern= "
                             "(command line: --pattern), or remove the other files.")
        pattern, found = LAYOUTS[best][0], found[best]
    else:
        _check_pattern(pattern)
        found = _find(stems, index, pattern, extensions)
        if not any(found):
            raise FileNotFoundError(_unmatched((names or stems)[0], stems[0], masks, index,
                                               [pattern]))
    raters = sorted(set().union(*found))
    if missing_mask == "empty":  # a stray file is a rater of its own: say so
        for rater in raters:
            count = sum(rater in by_rater for by_rater in found)
            if count * 2 < len(stems):
                warnings.warn(f"Rater {rater!r} has masks for {count} of {len(stems)} images in "
                              f"{masks} (e.g. {next(b[rater] for b in found if rater in b)}); "
                              "with missing_mask='empty' the others count as empty masks of "
                              "theirs. A stray file? Remove it, or pass a pattern= that leaves "
                              "it out.", stacklevel=2)
    paths = []
    for stem, name, by_rater in zip(stems, names or stems, found):
        missing = [r for r in raters if r not in by_rater]
        if missing and missing_mask == "error":
            expected = os.path.join(masks, _filled(_shown_pattern(pattern, extensions), stem,
                                                   missing[0]))
            raise FileNotFoundError(
                f"{name} has no mask for rater(s) {missing}: expected {expected} (the other "
                f"images have masks for raters {raters}). If no mask means no lesion, pass "
                "missing_mask='empty' (command line: --missing-mask empty).")
        paths.append([by_rater.get(r) for r in raters])
    return paths, raters


# The rater layouts that `match_masks` recognises by itself (`pattern=None`), in the order
# tried: (pattern, what it reads).
LAYOUTS = (("{stem}_*", "a file per rater after the image's name: scan01_0.png, scan01_1.png"),
           ("*/{stem}", "a subfolder per rater: rater1/scan01.png, rater2/scan01.png"),
           ("{stem}", "a single rater, the mask named as its image: scan01.png"))
MISSING_MASKS = ("error", "empty")


def _check_pattern(pattern):
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    except (ValueError, TypeError, AttributeError):
        fields = None
    if (not isinstance(pattern, str) or fields != {"stem"} or pattern.count("*") > 1
            or pattern.count("/") > 1 or ("*" in pattern.partition("/")[0]
                                          and "/" in pattern and "*" in pattern.split("/")[1])):
        raise ValueError(
            "`pattern` holds {stem} (the image's name without extension), at most one * (the "
            "rater) and at most one / (a subfolder), e.g. '{stem}_*.png', '*/{stem}.png' or "
            f"'{{stem}}.png'. Received: {pattern!r}")


def name_stem(name, extensions):
    """`name` without the longest of `extensions` it ends with (`.nii.gz`, not `.gz`)."""
    lower = name.lower()
    cut = max((len(e) for e in extensions if lower.endswith(e)), default=0)
    return name[:len(name) - cut] if cut else name


def _mask_index(masks, extensions, entries=None):
    """`{subfolder: sorted mask names}` of `masks` (subfolder `""`) and of its subfolders but
    the split ones and the masks themselves (one level)."""
    entries = entries or (lambda folder: _files(folder, extensions))
    index = {"": entries(masks)}
    for name in sorted(os.listdir(masks)):
        path = os.path.join(masks, name)
        if name.startswith(".") or name in index[""] or not os.path.isdir(path):
            continue  # hidden folders (.ipynb_checkpoints) are no raters
        if name in SPLITS:
            raise ValueError(
                f"{masks} has a subfolder {name!r}, a split's name, but is read as one split's "
                f"masks: with split subfolders, images/ needs them too ({name}/ in both); as a "
                "rater's folder, rename it.")
        index[name] = entries(path)
    return index


def _find(stems, index, pattern, extensions):
    """`[{rater: mask path relative to the mask folder}]` per stem, for `pattern`. A mask that
    two images' patterns match belongs to the longer name (`a_1_x.png`: image `a_1`, rater
    `x`, not image `a`, rater `1_x`)."""
    folder, _, name_pattern = pattern.rpartition("/")
    whole = name_pattern.lower().endswith(tuple(extensions))  # else: any extension
    found = [{} for _ in stems]
    if "*" in folder:  # a subfolder per rater
        head, _, tail = folder.partition("*")
        for sub, names in index.items():
            if sub and sub.startswith(head) and sub.endswith(tail) and len(sub) >= len(
                    head) + len(tail):
                keys = {}
                for n in names:
                    key = n if whole else name_stem(n, extensions)
                    if key in keys:
                        raise ValueError(f"{os.path.join(sub, keys[key])} and "
                                         f"{os.path.join(sub, n)} are both mask {key!r}: keep "
                                         "one.")
                    keys[key] = n
                for stem, masks in zip(stems, found):
                    name = keys.get(name_pattern.format(stem=stem))
                    if name is not None:
                        _add(masks, sub[len(head):len(sub) - len(tail)], os.path.join(sub, name),
                             stem)
        return found
    names = index.get(folder, [])
    keys = sorted(((n if whole else name_stem(n, extensions)), n) for n in names)
    claimed = {}
    for k in sorted(range(len(stems)), key=lambda k: -len(stems[k])):
        head, star, tail = (part.format(stem=stems[k]) for part in name_pattern.partition("*"))
        start = bisect.bisect_left(keys, (head,))
        while start < len(keys) and keys[start][0].startswith(head):
            key, name = keys[start]
            start += 1
            rest = key[len(head):]
            if name in claimed or not (rest == "" if not star else rest.endswith(tail)
                                       and len(rest) >= len(tail)):
                continue
            claimed[name] = k
            _add(found[k], rest[:len(rest) - len(tail)] if star else "",
                 os.path.join(folder, name), stems[k])
    return found


def _add(masks, rater, path, stem):
    """`masks[rater] = path`, refusing a second mask of one rater (`scan01_0.png` and
    `scan01_0.tif`)."""
    if rater in masks:
        raise ValueError(f"{masks[rater]} and {path} are both rater {rater!r}'s mask of image "
                         f"{stem!r}: keep one.")
    masks[rater] = path


def _shown_pattern(pattern, extensions):
    """`pattern` as a file name (an extension added where it has none)."""
    has = pattern.lower().endswith(tuple(extensions))
    return pattern if has else pattern + (".png" if ".png" in extensions else extensions[0])


def _filled(pattern, stem, rater):
    """`pattern` with `{stem}` replaced by `stem` and its `*` by `rater`: a `*` in the image's
    name stays as it is."""
    return rater.join(part.format(stem=stem) for part in pattern.split("*"))


def _unmatched(name, stem, masks, index, patterns):
    examples = [_filled(_shown_pattern(p, EXTENSIONS), stem, "RATER") for p in patterns]
    tried = "; ".join(f"{p} (e.g. {e})" for p, e in zip(patterns, examples))
    held = [os.path.join(sub, n) for sub, files in index.items() for n in files[:3]][:5]
    return (f"No mask in {masks} matches any image. Tried: {tried}; the first image, {name}, "
            f"has none. The folder holds {', '.join(held) if held else 'no image files'}. "
            "Pass the layout as pattern= (command line: --pattern), with {stem} for the "
            "image's name and * for the rater, e.g. 'seg_{stem}_*.png'.")


def from_folders(images, masks, split="train", pattern=None, channels=1, binarize=True,
                 num_classes=None, multiple=MULTIPLE, fractions=FRACTIONS, seed=0,
                 split_manifest=None, missing_mask="error", window=None, percentiles=None,
                 crop=None, *, max_bytes=None, max_pixels=None):
    """Read a split of your images and their raters' masks from two folders into memory.

    The files are decoded a few at a time, in threads, and held in bytes, as stored: a case of
    H x W pixels (padded) with A masks takes `H * W * channels + A * H * W` bytes (2 bytes an
    image pixel when a file of the split is 16-bit, or with `window` or `percentiles`; 4 bytes
    a mask pixel for labels outside 0-255, with `binarize=False`); the dataset makes float32
    and int32 of each example as it yields it. 9000 cases of 180x180, padded to 192x192, with
    4 masks take 184 KB each, 1.7 GB, where they took 737 KB (6.6 GB) as the float32 images and
    int32 masks held before, and several times that while being read. A pipeline reading the
    dataset holds a second copy (tf.data copies the tensors it starts from).

    What the split will take is computed from the files' headers before anything is decoded or
    allocated, and refused in one line above `max_bytes`; so is a file whose header claims more
    than `max_pixels` (a PNG file of 65 bytes can claim 13000 x 13000 pixels). Files are decoded
    a few at a time, at most `_DECODING_PIXELS` of them at once (one case at least).

    Args:
        images: folder of image files, one per case (or with `train/`, `val/`, `test/`).
        masks: folder of mask files, one per case and rater, split the same way.
        split: `"train"`, `"val"` or `"test"`.
        pattern: where the masks of image `{stem}` are, `*` standing for the rater:
            `'{stem}_*.png'` (`scan01_0.png`, `scan01_1.png`), `'*/{stem}.png'` (a subfolder per
            rater), `'{stem}.png'` (one rater); None (the default) tries those layouts
            (`LAYOUTS`) and takes the one that finds the most masks. See `match_masks`.
        channels: 1 reads every image as grey (RGB converted), 3 as RGB (grey repeated).
        binarize: True reads each mask as foreground (1) / background (0): masks whose values
            are exactly 0 and 255 (as annotation tools save them) or 0 and 1 (or 0 and 65535);
            any other mask is refused, naming it (a label map of several classes, or grey
            levels from resizing or JPEG). False keeps the values as class labels (grey or
            palette images; 255 is the ignore label).
        num_classes: with `binarize=False`, K (default: the largest label + 1).
        multiple: every image is padded at the bottom and right, repeating its last row and
            column, to the largest height and width in the split rounded up to a multiple of
            this (the U-Net needs sides divisible by `2 ** (levels - 1)`); the masks are padded
            with the ignore label, which the loss and the metrics leave out. 1 pads only to a
            common size.
        fractions: shares of train, val and test when splitting by `seed`.
        seed: seeds the split (without split subfolders) and the crops.
        split_manifest: a manifest (its JSON file, or the dict; see `split_manifest`) whose
            image file names make the split instead of `seed` or the subfolders; refused
            unless made from these files (its sha256 covers their paths and sizes).
        missing_mask: `"error"` (the default) refuses an image without a mask for a rater the
            other images have; `"empty"` reads it as all background.
        window: `(low, high)`: intensities scaled by this window instead of by their data
            type's range (see `tfprobunet.data.intensity`).
        percentiles: `(low, high)`: by each image's own percentiles instead.
        crop: `(height, width)`: the train split yields a random window of this size of each
            image and its masks, another one each pass, a share of them centred on labelled
            pixels (`tfprobunet.data.crops.random_windows`); the other splits keep whole
            images (evaluation and prediction run on the whole image). For images larger than
            the network needs to see: a step costs in proportion to its pixels.
        max_bytes: the most bytes the split's padded images and masks may take as held (above);
            None: `TFPROBUNET_MAX_ARRAY_BYTES` if set, else `arrays.MAX_ARRAY_BYTES` (2 GiB).
        max_pixels: the most pixels (height x width) of one image or mask file; None:
            `TFPROBUNET_MAX_IMAGE_PIXELS` if set, else `images.MAX_IMAGE_PIXELS` (2**26).

    Returns:
        A `tfprobunet.data.Source` of `(image (H, W, channels) float32 in [0, 1], annotations
        (A, H, W) int32)`, images in sorted file order (`(crop[0], crop[1], ...)` with a crop);
        `image_sizes` gives their original sizes, to crop outputs back
        (`tfprobunet.prediction.predict` pads and crops by itself).

    Raises:
        FileNotFoundError: a folder, split, or rater mask that is missing (named), or masks
            in no layout (the layouts tried named).
        ValueError: an unreadable file, a mask of another size than its image, a mask that is
            not binary with `binarize=True`, labels out of range, or 0/255 masks with
            `binarize=False` (`checks.check_labels`); a file or a split beyond `max_pixels` or
            `max_bytes`.
    """
    check_split(split)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grey) or 3 (RGB). Received: {channels!r}")
    if crop is not None:
        crops.check_multiple(crop, multiple)
    rule = intensity.rule(window, percentiles)
    cases = _cases(images, masks, split, pattern, fractions, seed, split_manifest, missing_mask)
    limits = (arrays.array_limit(max_bytes), images_lib.pixel_limit(max_pixels))
    stored_images, stored_masks, sizes = _load(*cases, channels, binarize, multiple, rule,
                                               limits)
    if not binarize:
        labels = _unpadded(stored_masks, sizes)
        if num_classes is None:
            num_classes = checks.implied_num_classes(labels)
            checks.check_labels(labels, num_classes, f"The masks in {masks}")
            checks.check_implied_classes(labels, num_classes, f"The masks in {masks}")
        else:
            checks.check_labels(labels, num_classes, f"The masks in {masks}")
        del labels
    dataset = tf.data.Dataset.from_tensor_slices((stored_images, stored_masks)).map(_for_model)
    if crop is not None and split == "train":
        dataset = crops.random_windows(dataset, crop, seed=seed)
    # Checked above without the padding (binarised masks hold 0 and 1 only): the pipelines
    # would count the padding's 255 as ignored labels, and warn about 0/255 masks.
    return Source(checks.mark_checked(dataset), 2 if binarize else int(num_classes), None, None)


def load(data_dir, split, image_size=None, seed=0, split_manifest=None, *, pattern=None,
         channels=1, binarize=True, num_classes=None, multiple=MULTIPLE, fractions=FRACTIONS,
         missing_mask="error", window=None, percentiles=None, crop=None):
    """The dataset `"folder"`: `from_folders(data_dir/images, data_dir/masks, split, ...)`.

    Args:
        data_dir: the folder holding `images/` and `masks/`.
        split: `"train"`, `"val"` or `"test"`.
        image_size: unused: every image keeps its size (padded to a common one, see
            `from_folders`' `multiple`; `crop` trains on windows).
        seed, split_manifest, pattern, channels, binarize, num_classes, multiple, fractions,
            missing_mask, window, percentiles, crop: as in `from_folders` (the dataset's
            options: `train(data_options=...)`, and flags of the command line).

    Returns:
        A `Source` of `(image (H, W, channels) float32 in [0, 1], annotations (A, H, W) int32)`.
    """
    return from_folders(os.path.join(data_dir, "images"), os.path.join(data_dir, "masks"),
                        split, pattern=pattern, channels=channels, binarize=binarize,
                        num_classes=num_classes, missing_mask=missing_mask, window=window,
                        percentiles=percentiles, crop=crop, multiple=multiple,
                        fractions=fractions, seed=seed, split_manifest=split_manifest)


def image_sizes(images, masks, split="train", pattern=None, fractions=FRACTIONS, seed=0,
                split_manifest=None):
    """The original `(height, width)` of each image of the split, in `from_folders`' order
    (same arguments): crop its outputs back with `[:h, :w]`."""
    return [images_lib.header_size(path)
            for path in _cases(images, masks, split, pattern, fractions, seed, split_manifest)[0]]


def split_manifest(images, masks, seed=0, fractions=FRACTIONS):
    """The split manifest (see `tfprobunet.data.manifests`) of the images in `images`: their
    file names split by `seed` and `fractions`, or, with split subfolders, as the subfolders
    split them (`"seed": None`); its sha256 covers the paths (relative to the folder holding
    both) and sizes of the image and mask files."""
    folders = _all_folders(images, masks)
    files = _data_files(folders)
    if None in folders:
        return manifests.make("folder", data_root(images, masks), _names(images), seed, fractions,
                              files=files)
    return manifests.found("folder", data_root(images, masks),
                           {split: _names(pair[0]) for split, pair in folders.items()},
                           files=files)


def data_root(images, masks):
    """The folder holding both `images` and `masks`: a manifest's paths are relative to it."""
    return os.path.commonpath([os.path.abspath(images), os.path.abspath(masks)])


def _all_folders(images, masks):
    """`{split: (image folder, mask folder)}` of every split subfolder, or `{None: (images,
    masks)}` without them."""
    present = [s for s in SPLITS if os.path.isdir(os.path.join(images, s))]
    if not present:
        return {None: (images, masks)}
    return {split: _split_folders(images, masks, split) for split in present}


def _data_files(folders):
    """The image files and mask files (those in rater subfolders too) of `folders`."""
    files = []
    for images, masks in folders.values():
        files += [os.path.join(images, name) for name in _files(images)]
        files += [os.path.join(masks, sub, name) for sub, names in
                  _mask_index(masks, EXTENSIONS).items() for name in names]
    return files


def _names(folder):
    names = _files(folder)
    if not names:
        raise FileNotFoundError(f"No image files ({', '.join(EXTENSIONS)}) in {folder}.")
    stems = {}
    for name in names:  # one case per name: its masks are found by the name without extension
        other = stems.setdefault(os.path.splitext(name)[0], name)
        if other != name:
            raise ValueError(f"{os.path.join(folder, other)} and {name} are both image "
                             f"{os.path.splitext(name)[0]!r}, and would share its masks: keep "
                             "one.")
    return names


def _cases(images, masks, split, pattern, fractions, seed, split_manifest=None,
           missing_mask="error"):
    """`(image paths, mask paths (n, A))` of the split."""
    for folder in (images, masks):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"No folder {folder}: from_folders reads images from one "
                                    "folder and their masks from another.")
    if pattern is not None:
        _check_pattern(pattern)
    if split_manifest is None:
        folders = _split_folders(images, masks, split)
        image_folder, mask_folder = folders or (images, masks)
        names = _names(image_folder)
        how = f"{len(names)} images split by fractions {tuple(fractions)}"
        if folders is None:
            names = [names[i] for i in manifests.indices(manifests.split_ids(
                names, seed, fractions), names, split)]
        cases = [(image_folder, mask_folder, name) for name in names]
    else:
        folders = _all_folders(images, masks)
        cases = [(i, m, name) for i, m in folders.values() for name in _names(i)]
        manifest = manifests.read(split_manifest, data_root(images, masks), "folder",
                                  files=_data_files(folders))
        index = manifests.indices(manifest["splits"], [name for *_, name in cases], split)
        cases = [cases[k] for k in index]
        how = "the split manifest lists none of its images"
    if not cases:
        raise ValueError(f"Split {split!r} is empty: {how}.")
    image_paths, mask_paths = [], []
    for (image_folder, mask_folder), group in itertools.groupby(cases, lambda c: c[:2]):
        names = [name for *_, name in group]
        image_paths += [os.path.join(image_folder, name) for name in names]
        paths, _ = match_masks([os.path.splitext(n)[0] for n in names], mask_folder, pattern,
                               missing_mask, names=names)
        mask_paths += [[p and os.path.join(mask_folder, p) for p in case] for case in paths]
    return image_paths, mask_paths


def _load(image_paths, mask_paths, channels, binarize, multiple, rule=intensity.DTYPE,
          limits=None):
    """`(images (n, H, W, channels) uint8, or uint16 if any file is 16-bit or `rule` is not
    the data type's (then scaled by it, `intensity.to_uint16`), masks (n, A, H, W), sizes)`:
    the cases read, padded as `from_folders` says, masks in uint8 (int32 if labels do not fit),
    `sizes` the images' `(h, w)`. Every file's header is read first: the arrays are sized from
    them and checked against `limits`, `(bytes, pixels a file)` (`_planned`), then allocated
    once, and each case is stored as its files are decoded, in order: the first bad file is
    the one named."""
    count, raters = len(image_paths), len(mask_paths[0])
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        files = [*image_paths, *(p for case in mask_paths for p in case if p is not None)]
        headers = dict(zip(files, pool.map(_header, files)))
        height, width, deep = _planned(image_paths, mask_paths, headers, channels, binarize,
                                       multiple, rule, limits)
        images = np.empty((count, height, width, channels), np.uint16 if deep else np.uint8)
        masks = np.empty((count, raters, height, width), np.uint8)
        sizes = []
        arguments = [(i, m, channels, binarize, rule, [headers.get(p) for p in m])
                     for i, m in zip(image_paths, mask_paths)]
        weights = [_pixels(headers[i]) * (1 + raters) for i in image_paths]
        for n, (image, annotations) in enumerate(_in_order(pool, _decode, arguments, weights)):
            # 8 and 16 bits in one folder: all held in 16, an 8-bit v as v * 257 (v / 255 still)
            if image.dtype == np.uint16 and images.dtype == np.uint8:
                images = images.astype(np.uint16) * np.uint16(257)
            elif image.dtype == np.uint8 and images.dtype == np.uint16:
                image = image.astype(np.uint16) * np.uint16(257)
            h, w = image.shape[:2]
            sizes.append((h, w))
            images[n, :h, :w] = image
            images[n, h:, :w] = image[-1]  # the last row, then the last column (and corner)
            images[n, :, w:] = images[n, :, w - 1:w]
            if masks.dtype == np.uint8 and annotations.dtype != np.uint8 and (
                    annotations.min() < 0 or annotations.max() > np.iinfo(np.uint8).max):
                masks = masks.astype(np.int32)  # 16- or 32-bit labels that need it
            masks[n, :, :h, :w] = annotations
            masks[n, :, h:] = IGNORE_LABEL
            masks[n, :, :h, w:] = IGNORE_LABEL
    return images, masks, sizes


def _planned(image_paths, mask_paths, headers, channels, binarize, multiple, rule, limits):
    """`(H, W, deep)`: the padded size of the split and whether its images are held in 16 bits,
    from the files' `headers` (`{path: (h, w, mode) or None}`, None for a file decoding will
    name). Refuses, in one line and before anything is allocated, a file of more pixels than
    `limits[1]`, or a split whose arrays would take more bytes than `limits[0]`: images of
    `channels` x 1 or 2 bytes (16-bit files, a window or percentiles), masks of 1 byte, or 4
    for 16- and 32-bit label files with `binarize=False` (labels past 255 are held in int32)."""
    max_bytes, max_pixels = limits or (arrays.array_limit(), images_lib.pixel_limit())
    for path in (p for case in zip(image_paths, mask_paths) for p in (case[0], *case[1])):
        if headers.get(path):
            images_lib.check_pixels(path, *headers[path][:2], max_pixels,
                                    "from_folders(..., max_pixels=...)")
    found = [(headers[path], path) for path in image_paths if headers[path]]
    (tallest, _, _), tall = max(found, key=lambda found: found[0][0], default=((1, 1, ""), None))
    (_, widest, _), wide = max(found, key=lambda found: found[0][1], default=((1, 1, ""), None))
    height, width = layers.padded_size(tallest, multiple), layers.padded_size(widest, multiple)
    deep = rule["rule"] != "dtype" or any(h[2] in images_lib.DEEP_MODES for h, _ in found)
    wide_labels = not binarize and any(headers[p] and headers[p][2] in images_lib.DEEP_MODES
                                       for case in mask_paths for p in case if p)
    image_bytes, mask_bytes = channels * (2 if deep else 1), 4 if wide_labels else 1
    total = len(image_paths) * height * width * (image_bytes + len(mask_paths[0]) * mask_bytes)
    if total > max_bytes:
        largest = (f"the largest, {tall}, is {tallest} x {widest}" if tall == wide else
                   f"the tallest, {tall}, is {tallest} high, the widest, {wide}, {widest} wide")
        raise ValueError(
            f"The {len(image_paths)} images of the split and their {len(mask_paths[0])} masks "
            f"each would take {total:,} bytes ({readable(total)}) in memory, above the limit "
            f"of {max_bytes:,} bytes: padded to {height} x {width} ({largest}), "
            f"{image_bytes} bytes an image pixel and {mask_bytes} a mask pixel. Nothing was "
            "decoded. If the files are yours and the machine has the memory (about twice "
            f"that), raise the limit: {arrays.MAX_ARRAY_BYTES_VARIABLE}={total} (the command "
            "line, tfprobunet.data.load) or from_folders(..., max_bytes=...); or cut large "
            "images into tiles.")
    return height, width, deep


def _header(path):
    """`(height, width, mode)` from the file's header, or None if it cannot be opened: decoding
    it then raises the error, in the files' order."""
    try:
        return images_lib.header(path)
    except Exception:  # noqa: BLE001 -- `_decode` raises it, in the files' order
        return None


def _pixels(header):
    return header[0] * header[1] if header else 0


def _in_order(pool, function, arguments, weights=None):
    """`function(*a) for a in arguments`, run in `pool` and yielded in order, at most
    `2 * _WORKERS` ahead of the consumer and, with `weights` (the pixels of each call's files),
    at most `_DECODING_PIXELS` of them at once (one call at least); the first error in order is
    raised, the calls still waiting are then cancelled."""
    pending, arguments = collections.deque(), list(arguments)
    weights = [0] * len(arguments) if weights is None else weights
    submitted = held = 0
    try:
        while True:
            while submitted < len(arguments) and len(pending) < 2 * _WORKERS and (
                    not pending or held + weights[submitted] <= _DECODING_PIXELS):
                pending.append((pool.submit(function, *arguments[submitted]),
                                weights[submitted]))
                held += weights[submitted]
                submitted += 1
            if not pending:
                return
            future, weight = pending.popleft()
            held -= weight
            yield future.result()
    finally:
        for future, _ in pending:
            future.cancel()


def _decode(image_path, mask_paths, channels, binarize, rule, mask_headers=None):
    """`(image (h, w, channels) uint8 or uint16, annotations (A, h, w))` of one case, from its
    files; a mask path None (missing, read as empty) gives zeros. A mask whose header
    (`mask_headers`, `(h, w, mode)` or None) gives another size than the image's is refused
    before it is decoded."""
    scaled = rule["rule"] != "dtype"  # a window or percentiles: any values, 32-bit too
    image = images_lib.decode(image_path, "L" if channels == 1 else "RGB", any_values=scaled)
    if scaled:
        image = intensity.to_uint16(image, rule, image_path)
    image = image[..., None] if channels == 1 else image
    annotations = []
    for path, header in zip(mask_paths, mask_headers or [None] * len(mask_paths)):
        if path is None:
            annotations.append(np.zeros(image.shape[:2], np.uint8))
            continue
        size = tuple(header[:2]) if header else image.shape[:2]
        if size == image.shape[:2]:  # else refused unread
            mask = images_lib.decode(path, "mask" if binarize else None)
            size = mask.shape[:2]
        if size != image.shape[:2]:
            raise ValueError(f"{path} is {size[0]}x{size[1]} pixels (height x "
                             f"width) but its image {image_path} is {image.shape[0]}x"
                             f"{image.shape[1]}: every mask must have its image's size.")
        annotations.append(binary(mask, path) if binarize else mask)
    return image, np.stack(annotations)


def _unpadded(masks, sizes):
    """The pixels of `masks` without their padding, flat (`masks` itself if none is padded)."""
    if all(size == masks.shape[2:] for size in sizes):
        return masks
    labels = np.empty(sum(masks.shape[1] * h * w for h, w in sizes), masks.dtype)
    start = 0
    for mask, (h, w) in zip(masks, sizes):
        labels[start:start + mask.shape[0] * h * w].reshape(mask.shape[0], h, w)[:] = mask[
            :, :h, :w]
        start += mask.shape[0] * h * w
    return labels


def _for_model(image, annotations):
    """A stored example as the model takes it: float32 in [0, 1] and int32."""
    if image.dtype == tf.uint16:  # by images.SCALE_RULE, as the 8-bit table
        return tf.cast(image, tf.float32) / 65535.0, tf.cast(annotations, tf.int32)
    return tf.gather(_FLOATS, tf.cast(image, tf.int32)), tf.cast(annotations, tf.int32)


def binary(mask, path):
    """Foreground (1) where a binary mask is not 0: a mask whose values are 0 and one other,
    1 or its data type's largest (255 as annotation tools save them, 65535). Any other mask is
    refused, naming its values and what would read it."""
    top = int(mask.max()) if mask.size else 0
    if top in (0, 1, 255, np.iinfo(mask.dtype).max) and (top <= 1 or not np.any(
            (mask != 0) & (mask != top))):
        return (mask > 0).astype(np.uint8)
    values = np.unique(mask)
    shown = f"{values[:8].tolist()}{' ...' if len(values) > 8 else ''}"
    raise ValueError(
        f"{path} holds the values {shown}, not those of a binary mask (0 and 255, or 0 and 1). "
        f"A label map of {top + 1} classes? Keep the values as classes: binarize=False "
        "(command line: --labels multiclass, or --num-classes K). Grey levels between 0 and "
        "255 (a mask resized with interpolation, or saved as JPEG)? Save the masks as 0/255 "
        "PNGs, thresholded where you mean.")
