"""Image files, in one place: their sizes read from their headers (nothing decoded) and their
pixels decoded to arrays. The loaders (`folders`, `lidc`, `cityscapes`),
`tfprobunet.prediction` and the serving client (`tfprobunet.serving.read_image`) read images
through these functions.

- `header_size(path, formats=None)`: `(height, width)` of any image PIL opens (PNG, JPEG, BMP,
  TIFF, GIF, WebP, ...), from its header; `ValueError` naming the file otherwise. `header`
  adds PIL's mode (`"L"`, `"RGB"`, `"I;16"`, ...), which says the bytes a pixel takes.
- `check_pixels(path, height, width)`: refuse an image file whose header claims more than
  `MAX_IMAGE_PIXELS` (2**26, 8192 x 8192) before it is decoded: a PNG file of 65 bytes can claim
  13000 x 13000, which PIL only warns about (`TFPROBUNET_MAX_IMAGE_PIXELS` raises the limit).
- `png_size(path)`: `(height, width)` of a PNG from its first 24 and last 12 bytes, refusing an
  empty, foreign or truncated file before anything is decoded (the LIDC crops' check).
- `decode(path, mode=None)`: the pixels as numpy, with PIL: grey or RGB, uint8 or (16-bit
  files) uint16, or a label map with its values (8-, 16- or 32-bit); `to_unit` scales pixels to
  [0, 1] by `SCALE_RULE`, each value divided by its type's maximum.
- `decode_png(path, channels)`: the pixels as a uint8 tensor, with TensorFlow (in `tf.data`
  graphs).
- `read_image(path, channels, intensity=None)`: an image file as a batch of one in [0, 1], as a
  model takes it: decoded as the folder dataset decodes (`decode`, 16-bit files at their full
  range) and scaled by `SCALE_RULE` or a run's intensity rule (`tfprobunet.data.intensity`).
"""

import os
import struct
import warnings
import zlib

import numpy as np
import tensorflow as tf

# The file types read from image folders (`tfprobunet.data.folders`), decoded by PIL.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# What `tf.io.decode_image` decodes (PIL's format names): the formats `read_image` reads.
TF_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = struct.pack(">I4sI", 0, b"IEND", zlib.crc32(b"IEND"))  # the last 12 bytes of a PNG
# The most pixels (height x width) an image file read by the loaders may have, checked from its
# header before it is decoded: 2**26, 8192 x 8192 (64 MiB a channel at 8 bits). PIL warns only
# above 89 million pixels and refuses above twice that (`PIL.Image.MAX_IMAGE_PIXELS`), whatever
# this limit says.
MAX_IMAGE_PIXELS = 2**26
MAX_IMAGE_PIXELS_VARIABLE = "TFPROBUNET_MAX_IMAGE_PIXELS"


def _names(formats):
    return f"{', '.join(formats[:-1])} or {formats[-1]}" if len(formats) > 1 else formats[0]


def header_size(path, formats=None):
    """The `(height, width)` of an image file, read from its header: nothing is decoded.

    Args:
        path: the image file.
        formats: PIL format names accepted (e.g. `TF_FORMATS`); None accepts any image PIL
            opens.

    Returns:
        `(height, width)` ints.

    Raises:
        ValueError: as `header`.
    """
    return header(path, formats)[:2]


def header(path, formats=None):
    """The `(height, width, mode)` of an image file, read from its header: nothing is decoded.
    `mode` is PIL's (`"1"`, `"L"`, `"P"`, `"RGB"`, `"I;16"`, `"I"`, `"F"`, ...; `DEEP_MODES` are
    those of more than 8 bits).

    Args:
        path: the image file.
        formats: PIL format names accepted (e.g. `TF_FORMATS`); None accepts any image PIL
            opens.

    Raises:
        ValueError: `path` is missing, not an image (a directory, a text file, a damaged
            header), above PIL's decompression-bomb limit, or of a format not in `formats`;
            the message names the file and says which.
    """
    from PIL import Image

    wanted = _names(formats) if formats else "image"
    if not os.path.exists(path):
        raise ValueError(f"No image at {path}: pass {wanted} files.")
    try:
        with warnings.catch_warnings():
            # Above 89 million pixels PIL warns; the callers' limits say more.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                kind, mode = image.format, image.mode
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: {error}. Resize it, or split it into tiles.") from None
    except (OSError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path} is not an image that can be read ({error}): pass {wanted} "
                         "files.") from None
    if formats and kind not in formats:
        raise ValueError(f"{path} is a {kind} image: pass a {_names(formats)} file.")
    return height, width, mode


def pixel_limit(max_pixels=None):
    """The most pixels one image file may have, in force: `max_pixels` if given, else
    `TFPROBUNET_MAX_IMAGE_PIXELS` if set (e.g. `2e8`), else `MAX_IMAGE_PIXELS`."""
    given = max_pixels
    if given is None:
        given = os.environ.get(MAX_IMAGE_PIXELS_VARIABLE, "").strip() or MAX_IMAGE_PIXELS
    try:
        limit = int(float(given)) if isinstance(given, str) else int(given)
    except (ValueError, OverflowError):
        limit = 0
    if limit < 1:
        where = "max_pixels" if max_pixels is not None else MAX_IMAGE_PIXELS_VARIABLE
        raise ValueError(f"{where} must be a positive number of pixels, e.g. 200000000 or 2e8. "
                         f"Received {given!r}.")
    return limit


def check_pixels(path, height, width, limit=None, option="max_pixels=..."):
    """Refuse the image file `path` whose header claims `height` x `width` pixels if that is
    more than `limit` (None: `pixel_limit()`): a `ValueError` in one line naming the file, the
    size, the limit and how to raise it (`TFPROBUNET_MAX_IMAGE_PIXELS`, or the Python argument
    `option`)."""
    limit = pixel_limit() if limit is None else limit
    if height * width > limit:
        raise ValueError(
            f"{path}: its header claims {height} x {width} pixels ({height * width:,}), above "
            f"the limit of {limit:,} pixels an image. It was not decoded. If the file is yours "
            f"and the machine has the memory, raise the limit: {MAX_IMAGE_PIXELS_VARIABLE}="
            f"{height * width} (the command line, tfprobunet.data.load) or {option}; or cut "
            "the image into tiles.")


def png_size(path):
    """`(height, width)` from the header of the PNG at `path`, reading its first 24 and last
    12 bytes.

    Raises:
        ValueError: naming `path`, if it is empty, not a PNG, or cut short (no end chunk).
            Damage between the header and the end (say, bytes flipped inside the image data) is
            found only when the file is decoded, in an error that does not name it.
    """
    with open(path, "rb") as f:
        head = f.read(24)
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - len(_PNG_END), 0))
        tail = f.read()
    if not size:
        problem = "it is empty"
    elif not head.startswith(_PNG_SIGNATURE):
        problem = f"it does not start with the PNG signature but with {head[:8]!r}"
    elif len(head) < 24 or head[12:16] != b"IHDR":
        problem = f"its header is cut short or has no IHDR chunk ({size} bytes)"
    elif tail != _PNG_END:
        problem = f"it does not end with the PNG end chunk (IEND): it is cut short ({size} bytes)"
    else:
        width, height = struct.unpack(">II", head[16:24])
        if width and height:
            return height, width
        problem = f"its header gives a size of {height}x{width} pixels"
    raise ValueError(f"{path} is not a readable PNG: {problem}. Replace it with an intact copy "
                     "(download or export it again).")


# PIL's modes of grey images deeper than 8 bits: 16-bit (PNG, TIFF), 32-bit integer and float.
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# How images become what a model takes, for every reader of image files: each value divided by
# its data type's maximum (255 for 8-bit files, 65535 for 16-bit ones), so [0, 1] spans the
# file's whole range and a 16-bit image is never clipped to white.
SCALE_RULE = "each value divided by its data type's maximum (255 for 8 bits, 65535 for 16)"


def _deep_grey(path, image, any_values=False):
    """A grey image of more than 8 bits as `(h, w)` uint16; refuses what holds more, unless
    `any_values` (a window or percentiles will scale it): then 32-bit integers and floats come
    as they are (int32, float32)."""
    if any_values and image.mode in ("F", "I"):
        return np.asarray(image)
    if image.mode == "F":
        raise ValueError(f"{path} is a 32-bit float image, whose range has no fixed maximum to "
                         "scale by: pass a window in its units (--window LOW,HIGH) or "
                         "percentiles (--percentiles 0.5,99.5), or save it as an 8- or 16-bit "
                         "PNG or TIFF.")
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"{path} is a 32-bit integer image with values in [{values.min()}, "
                         f"{values.max()}]: pass a window in its units (--window LOW,HIGH) or "
                         "percentiles (--percentiles 0.5,99.5), or save it as an 8- or 16-bit "
                         "PNG or TIFF.")
    return values.astype(np.uint16)


def to_unit(pixels):
    """`pixels` (uint8 or uint16 numpy) as float32 in [0, 1], by `SCALE_RULE`."""
    pixels = np.asarray(pixels)
    return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)


def decode(path, mode=None, any_values=False):
    """The pixels of an image file, decoded by PIL.

    Args:
        path: any image PIL reads (PNG, JPEG, BMP, TIFF, ...).
        mode: `"L"`: grey `(h, w)` (colour converted); `"RGB"`: `(h, w, 3)` (grey repeated);
            both uint8, or uint16 for a 16-bit grey file (`to_unit` scales either); None: a
            label map `(h, w)` with the file's values, uint8 (1-bit files too), uint16
            (`I;16`) or int32 (`I`), from a grey or palette image only; `"mask"`: the same
            label map, or a colour image as grey (`"L"`), for a binary mask.
        any_values: with `mode`, a 32-bit integer or float grey file comes as it is (int32,
            float32), for a window or percentiles to scale (`tfprobunet.data.intensity`).

    Raises:
        ValueError: naming `path`, if it cannot be decoded, is a colour image read as a label
            map, or a grey image that 16 bits cannot hold (32-bit float, or integers above
            65535) without `any_values`.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if mode == "mask":  # a binary mask: palette indices as they are, colour as grey
                mode = None if image.mode in ("1", "L", "P", "I", "I;16") else "L"
            if mode is not None and image.mode in DEEP_MODES:
                grey = _deep_grey(path, image, any_values)
                return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=-1)
            if mode is None:
                if image.mode not in ("1", "L", "P", "I", "I;16"):
                    raise ValueError(f"{path} is a {image.mode} image: label masks "
                                     "(binarize=False) must be grey or palette images whose "
                                     "values are the class indices.")
                labels = np.asarray(image)  # uint8, uint16 (I;16) or int32 (I)
                return labels.astype(np.uint8) if labels.dtype == bool else labels
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} cannot be read as an image ({error}).") from None


def decode_png(path, channels):
    """`(h, w, channels)` uint8 tensor of the PNG at `path` (a string tensor in a `tf.data`
    map, or a str): grey (1, colour converted) or RGB (3). 16-bit PNGs are scaled to 8 bits."""
    return tf.io.decode_png(tf.io.read_file(path), channels=channels)


def read_image(path, channels, intensity=None):
    """An image file (PNG, JPEG, BMP, TIFF, GIF's first frame, WebP: any image PIL reads) as
    `(1, h, w, channels)` float32 in [0, 1], decoded as the folder dataset decodes its images
    (`decode`, at the file's full depth) and scaled by the rule `intensity`
    (`tfprobunet.data.intensity`; None: `SCALE_RULE`, a 16-bit file at its full range): so
    `predict` sees an image as training saw it. Grey (1) or RGB (3), converted from what the
    file holds."""
    from tfprobunet.data import intensity as intensity_lib

    rule = intensity_lib.check(intensity)
    header_size(path)  # any image PIL reads, refused by name otherwise
    pixels = decode(path, "L" if channels == 1 else "RGB", any_values=rule["rule"] != "dtype")
    pixels = pixels[..., None] if channels == 1 else pixels
    return intensity_lib.scale(pixels, rule, path)[None]
