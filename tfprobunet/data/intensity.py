"""How pixel values become what a model takes, [0, 1]: one rule per dataset, recorded with the
run (`train_config.json`'s `data_options`) and the export (`assets.extra/tfprobunet_config.json`,
`"intensity"`), and applied the same way when training, evaluating, predicting and serving.

The rules, as JSON-able dicts (`rule(...)` makes and checks one):

- `{"rule": "dtype"}` (the default): each value divided by its data type's maximum, 255 for
  8-bit files and 65535 for 16-bit ones, so [0, 1] spans the file's whole range and a 16-bit
  image is never clipped to white. Images of signed integers (CT in Hounsfield units) or floats
  outside [0, 1] have no such range: they need one of the two rules below.
- `{"rule": "window", "low": L, "high": H}`: `(value - L) / (H - L)`, clipped to [0, 1], in the
  units the file holds after its own rescaling (DICOM's slope and intercept: Hounsfield units
  for CT). `--window -1000,400` keeps lung to soft tissue; `-160,240` soft tissue.
- `{"rule": "percentiles", "low": p, "high": q}`: a window from each image's own p-th and q-th
  percentiles (e.g. 0.5 and 99.5, for MR, whose values have no fixed unit).

Importable without TensorFlow (numpy only).
"""

import numpy as np

RULES = ("dtype", "window", "percentiles")
DTYPE = {"rule": "dtype"}


def rule(window=None, percentiles=None):
    """The intensity rule of these arguments, checked.

    Args:
        window: `(low, high)` values mapped to 0 and 1 (clipped), e.g. `(-1000, 400)` HU.
        percentiles: `(low, high)` percentiles of each image mapped to 0 and 1 (clipped), e.g.
            `(0.5, 99.5)`.

    Returns:
        A rule dict (see the module's docstring): `DTYPE` when neither is given.

    Raises:
        ValueError: both given, or a pair that is not two finite numbers, low below high
            (percentiles within [0, 100]).
    """
    if window is not None and percentiles is not None:
        raise ValueError("Pass `window` or `percentiles`, not both: each is a whole rule for "
                         f"the intensities. Received: window={window!r}, "
                         f"percentiles={percentiles!r}")
    if window is not None:
        return check({"rule": "window", "low": _pair(window, "window")[0],
                      "high": _pair(window, "window")[1]})
    if percentiles is not None:
        low, high = _pair(percentiles, "percentiles")
        return check({"rule": "percentiles", "low": low, "high": high})
    return dict(DTYPE)


def _pair(values, name):
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be two numbers (low, high), e.g. "
                         f"{'(-1000, 400)' if name == 'window' else '(0.5, 99.5)'}. "
                         f"Received: {values!r}") from None
    return low, high


def check(intensity):
    """`intensity` (a rule dict, e.g. read from a run's JSON; None: `DTYPE`) if it is one.

    Raises:
        ValueError: saying what a rule looks like.
    """
    if intensity is None:
        return dict(DTYPE)
    kind = intensity.get("rule") if isinstance(intensity, dict) else None
    if kind not in RULES or (kind == "dtype" and len(intensity) != 1) or (
            kind != "dtype" and set(intensity) != {"rule", "low", "high"}):
        raise ValueError(f"An intensity rule is {{'rule': 'dtype'}}, {{'rule': 'window', "
                         f"'low': L, 'high': H}} or {{'rule': 'percentiles', 'low': p, "
                         f"'high': q}}. Received: {intensity!r}")
    if kind == "dtype":
        return dict(DTYPE)
    low, high = float(intensity["low"]), float(intensity["high"])
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"The {kind} needs finite low < high. Received: low={low}, "
                         f"high={high}")
    if kind == "percentiles" and not 0 <= low < high <= 100:
        raise ValueError(f"Percentiles lie in [0, 100]. Received: low={low}, high={high}")
    return {"rule": kind, "low": low, "high": high}


def describe(intensity):
    """One line saying what the rule does, for logs, reports and errors."""
    intensity = check(intensity)
    if intensity["rule"] == "dtype":
        return "each value divided by its data type's maximum (255 for 8 bits, 65535 for 16)"
    low, high = _shown(intensity["low"]), _shown(intensity["high"])
    if intensity["rule"] == "window":
        return f"the window [{low}, {high}] mapped to [0, 1], clipped"
    return f"each image's {low}th to {high}th percentiles mapped to [0, 1], clipped"


def _shown(value):
    return f"{value:g}"


def scale(values, intensity=None, where="the image"):
    """`values` (numpy, any numeric dtype) as float32 in [0, 1] by the rule `intensity`.

    Args:
        values: the pixels (or voxels) of one image, as its file holds them after the file's
            own rescaling (DICOM's slope and intercept).
        intensity: a rule dict (None: `DTYPE`).
        where: names the image in errors (its path).

    Raises:
        ValueError: under the `"dtype"` rule, signed integers, or floats outside [0, 1]: the
            message names the range found and the rules that would read it.
    """
    intensity = check(intensity)
    values = np.asarray(values)
    if intensity["rule"] == "dtype":
        if values.dtype == bool:
            return values.astype(np.float32)
        if np.issubdtype(values.dtype, np.unsignedinteger):
            return values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
        low, high = (values.min(), values.max()) if values.size else (0, 0)
        if np.issubdtype(values.dtype, np.floating) and 0 <= low and high <= 1:
            return values.astype(np.float32)
        raise ValueError(
            f"{where} holds {values.dtype} values in [{low:g}, {high:g}], which have no fixed "
            "range to divide by: pass a window in its units (--window LOW,HIGH, e.g. "
            "-1000,400 for CT in Hounsfield units; window=(low, high) in Python) or "
            "percentiles of each image (--percentiles 0.5,99.5; percentiles=(0.5, 99.5)).")
    if intensity["rule"] == "window":
        low, high = intensity["low"], intensity["high"]
    else:
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        low, high = (np.percentile(finite, [intensity["low"], intensity["high"]])
                     if finite.size else (0.0, 1.0))
        if high <= low:  # a flat image: all 0
            high = low + 1
    scaled = (values.astype(np.float64) - low) / (high - low)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 1).astype(np.float32)


def to_uint16(values, intensity=None, where="the image"):
    """`scale(values, intensity)` stored as uint16 (`round(x * 65535)`): half the bytes of
    float32, within 1 / 131070 of it; a model reads it back divided by 65535."""
    return np.round(scale(values, intensity, where) * 65535).astype(np.uint16)


# A training run's settings file (`tfprobunet.training.workdir.CONFIG`; named here to keep this
# module free of TensorFlow).
_RUN_CONFIG = "train_config.json"


def run_options(path):
    """The dataset options (`data_options`) recorded by the training run that wrote `path` (its
    workdir, or a file in it, e.g. its `model.keras`): `{}` when there are none."""
    import json
    import os

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    try:
        with open(os.path.join(folder, _RUN_CONFIG)) as f:
            return dict(json.load(f).get("data_options") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def of_run(path):
    """The intensity rule of the training run that wrote `path` (its workdir, or a file in it,
    e.g. its `model.keras`): from `data_options`' `window` or `percentiles` in the run's
    `train_config.json` (`run_options`); `DTYPE` when there is no such file or neither
    option."""
    options = run_options(path)
    return rule(window=options.get("window"), percentiles=options.get("percentiles"))
