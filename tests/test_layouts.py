"""Medical data as it comes (issue 39): the rater layouts annotation tools and challenges ship,
masks missing for a rater, multi-class label maps from the command line, intensity rules
(windows, percentiles) recorded with the run, and the dataset options that carry all of these
from `train` to `evaluate`. Each layout is written here file by file, and what the loader
yields is checked against the masks written."""

import json
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image

import tfprobunet
from conftest import cli_error
from tfprobunet import cli
from tfprobunet.data import folders, intensity

NAMES = ["scan01", "scan02", "scan03", "scan04", "scan05"]
RATERS = ["anna", "ben", "carl"]
TINY = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--num-channels", "4,8",
        "--convs-per-block", "1", "--latent-dim", "2"]


def _mask(case, rater, size=(12, 10)):
    """A 0/255 mask that says whose it is: `case + 1` rows for rater 0, one more per rater."""
    mask = np.zeros(size, np.uint8)
    mask[:case + 1 + rater] = 255
    return mask


def _write(root, layout, raters=RATERS, skip=(), names=NAMES):
    """Images and masks in `layout` (a format of the mask path, `{stem}` and `{rater}`); the
    (case, rater) pairs in `skip` are not written."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for n, stem in enumerate(names):
        Image.fromarray(np.full((12, 10), 20 * n, np.uint8)).save(
            os.path.join(root, "images", f"{stem}.png"))
        for r, rater in enumerate(raters):
            if (n, r) in skip:
                continue
            path = os.path.join(root, "masks", layout.format(stem=stem, rater=rater))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(_mask(n, r)).save(path)


def _rows(root, **options):
    """Per case (sorted), the number of foreground rows of each rater's mask."""
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1.0, 0.0, 0.0), multiple=1, **options)
    return [list((a == 1).any(axis=2).sum(axis=1)) for _, a in source.dataset.as_numpy_iterator()]


@pytest.mark.parametrize("layout, raters, pattern", [
    ("{stem}_{rater}.png", RATERS, None),               # scan01_anna.png
    ("{rater}/{stem}.png", RATERS, None),                # anna/scan01.png
    ("{stem}.png", [""], None),                          # one rater, the image's name
    ("seg-{rater}-{stem}.png", RATERS, "seg-*-{stem}"),  # a layout of one's own, any extension
    ("{rater}/{stem}_mask.png", RATERS, "*/{stem}_mask.png"),
])
def test_each_rater_layout_reads_each_raters_mask(tmp_path, layout, raters, pattern):
    root = str(tmp_path)
    _write(root, layout, raters)
    expected = [[n + 1 + r for r in range(len(raters))] for n in range(len(NAMES))]
    assert _rows(root, pattern=pattern) == expected


def test_rater_layouts_through_the_command_line_and_one_that_matches_nothing(tmp_path, capsys):
    for layout, pattern in (("{rater}/{stem}.png", []), ("{stem}.png", []),
                            ("seg_{stem}_{rater}.png", ["--pattern", "seg_{stem}_*.png"])):
        root = str(tmp_path / layout.replace("/", "_"))
        _write(root, layout, RATERS if "rater" in layout else [""])
        workdir = os.path.join(root, "run")
        assert cli.main(["train", "--dataset", "folder", "--data-dir", root, "--workdir",
                         workdir, *pattern, *TINY]) == 0
        with open(os.path.join(workdir, "train_config.json")) as f:
            recorded = json.load(f)["data_options"]
        assert recorded == ({"pattern": pattern[1]} if pattern else None)
    root = str(tmp_path / "nothing")
    _write(root, "labels-{stem}-{rater}.png")
    line = cli_error(capsys, ["train", "--dataset", "folder", "--data-dir", root, "--workdir",
                              os.path.join(root, "run"), *TINY])
    for tried in ("{stem}_*", "*/{stem}", "{stem}", "scan01.png", "--pattern",
                  "labels-scan01-anna.png"):
        assert tried in line, line


def test_a_missing_mask_is_read_as_empty_when_asked(tmp_path, capsys):
    root = str(tmp_path)
    _write(root, "{stem}_{rater}.png", skip={(1, 2), (3, 0)})
    with pytest.raises(FileNotFoundError, match=r"scan02.png has no mask for rater\(s\) "
                                                r"\['carl'\].*--missing-mask empty"):
        _rows(root)
    rows = _rows(root, missing_mask="empty")
    expected = [[n + 1 + r for r in range(3)] for n in range(len(NAMES))]
    expected[1][2] = expected[3][0] = 0
    assert rows == expected
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", "folder", "--data-dir", root, "--workdir", workdir,
                     "--missing-mask", "empty", *TINY]) == 0


def test_an_image_without_any_mask_is_all_empty_with_missing_mask_empty(tmp_path):
    root = str(tmp_path)
    _write(root, "{rater}/{stem}.png", skip={(2, 0), (2, 1), (2, 2)})
    rows = _rows(root, missing_mask="empty")
    assert rows[2] == [0, 0, 0] and rows[0] == [1, 2, 3]


def test_a_mask_two_images_patterns_match_belongs_to_the_longer_name(tmp_path):
    """`a_1_x.png` is rater `x` of image `a_1`, not rater `1_x` of image `a`."""
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    for n, stem in enumerate(["a", "a_1"]):
        Image.fromarray(np.zeros((12, 10), np.uint8)).save(
            os.path.join(root, "images", f"{stem}.png"))
        for r, rater in enumerate(["x", "y"]):
            Image.fromarray(_mask(n, r)).save(os.path.join(root, "masks", f"{stem}_{rater}.png"))
    assert _rows(root) == [[1, 2], [2, 3]]


@pytest.mark.skipif(os.name == "nt", reason="Windows file names cannot hold *")
@pytest.mark.parametrize("layout, pattern", [("{stem}_{rater}.png", None),
                                             ("{rater}/{stem}.png", None),
                                             ("seg-{rater}-{stem}.png", "seg-*-{stem}")])
def test_an_image_named_with_a_star_finds_its_masks(tmp_path, layout, pattern):
    """`*` in a pattern is the rater; in an image's name it is a character like any other."""
    root = str(tmp_path)
    _write(root, layout, names=["scan01", "scan*2", "scan03"])  # "*" sorts before "0"
    assert _rows(root, pattern=pattern) == [[2, 3, 4], [1, 2, 3], [3, 4, 5]]
    os.remove(os.path.join(root, "masks", layout.format(stem="scan*2", rater="ben")))
    with pytest.raises(FileNotFoundError) as missing:
        _rows(root, pattern=pattern)
    expected = os.path.join(root, "masks", layout.format(stem="scan*2", rater="ben"))
    assert f"scan*2.png has no mask for rater(s) ['ben']: expected {expected} " in str(
        missing.value)


def _write_labels(root, values):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for n, stem in enumerate(NAMES):
        Image.fromarray(np.full((8, 8), 40 * n, np.uint8)).save(
            os.path.join(root, "images", f"{stem}.png"))
        labels = np.tile(np.array(values, np.uint8), (8, 8 // len(values) + 1))[:, :8]
        for r in range(2):
            Image.fromarray(labels).save(os.path.join(root, "masks", f"{stem}_{r}.png"))


def test_multiclass_label_maps_from_the_command_line(tmp_path, capsys):
    """0/1/2 maps: the default (binary) refuses them naming --labels multiclass; `--labels
    multiclass` and `--num-classes 4` keep the values as classes."""
    root = str(tmp_path)
    _write_labels(root, [0, 1, 2, 0])
    line = cli_error(capsys, ["train", "--dataset", "folder", "--data-dir", root, "--workdir",
                              str(tmp_path / "refused"), *TINY])
    assert "[0, 1, 2]" in line and "--labels multiclass" in line, line
    for flag, classes in ((["--labels", "multiclass"], 3), (["--num-classes", "4"], 4)):
        workdir = str(tmp_path / f"run{classes}")
        assert cli.main(["train", "--dataset", "folder", "--data-dir", root, "--workdir",
                         workdir, *flag, *TINY]) == 0
        model = tfprobunet.saving.load_model(os.path.join(workdir, "model.keras"))
        assert model.num_classes == classes


@pytest.mark.parametrize("values", [[0, 128, 255], [0, 3], [0, 254]])
def test_binarisation_refuses_masks_that_are_not_0_255_or_0_1(tmp_path, values):
    root = str(tmp_path)
    _write_labels(root, values)
    with pytest.raises(ValueError, match=r"not those of a binary mask .*binarize=False"):
        _rows(root)


@pytest.mark.parametrize("values", [[0, 255], [0, 1], [0]])
def test_binarisation_reads_0_255_and_0_1_masks(tmp_path, values):
    root = str(tmp_path)
    _write_labels(root, values)
    expected = (np.tile(np.array(values) > 0, 8)[:8].sum() > 0) * 8
    assert all(row == [expected, expected] for row in _rows(root))


def _write_16bit(root, values):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for n, stem in enumerate(NAMES):
        Image.fromarray((values + 10 * n).astype(np.uint16)).save(
            os.path.join(root, "images", f"{stem}.png"))
        Image.fromarray(_mask(n, 0, values.shape)).save(
            os.path.join(root, "masks", f"{stem}_0.png"))


def test_a_window_and_percentiles_scale_16_bit_images_as_documented(tmp_path):
    """Values 1000 + 24 k (a CT exported with an offset): the window [1000, 3000] maps v to
    (v - 1000) / 2000, clipped; percentiles (0, 100) map each image's own range to [0, 1]."""
    root = str(tmp_path)
    values = (1000 + 24 * np.arange(96)).reshape(12, 8)
    _write_16bit(root, values)
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1.0, 0.0, 0.0), multiple=1,
                                          window=(1000, 3000))
    for n, (image, _) in enumerate(source.dataset.as_numpy_iterator()):
        expected = np.clip((values + 10 * n - 1000) / 2000, 0, 1)
        np.testing.assert_allclose(image[..., 0], expected, atol=1 / 65535)
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1.0, 0.0, 0.0), multiple=1,
                                          percentiles=(0, 100))
    for image, _ in source.dataset.as_numpy_iterator():
        np.testing.assert_allclose(image[..., 0], (values - values.min()) / np.ptp(values),
                                   atol=1 / 65535)


def test_a_float_tiff_is_read_with_a_window_and_refused_without_one(tmp_path):
    """32-bit float images (a CT saved as float TIFF, in Hounsfield units): refused by the
    data type's rule, naming --window; read at their values with one, by the folder loader
    and by `read_image` (predict) alike."""
    from tfprobunet.data import images as images_lib

    root = str(tmp_path)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    hu = np.linspace(-1200, 600, 80, dtype=np.float32).reshape(10, 8)
    for n, stem in enumerate(NAMES):
        Image.fromarray(hu + n).save(os.path.join(root, "images", f"{stem}.tif"))
        Image.fromarray(_mask(n, 0, (10, 8))).save(os.path.join(root, "masks", f"{stem}_0.png"))
    with pytest.raises(ValueError, match=r"scan01.tif is a 32-bit float image.*--window"):
        _rows(root)
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1.0, 0.0, 0.0), multiple=1,
                                          window=(-1000, 400))
    for n, (image, _) in enumerate(source.dataset.as_numpy_iterator()):
        np.testing.assert_allclose(image[..., 0], np.clip((hu + n + 1000) / 1400, 0, 1),
                                   atol=1 / 65535)
    read = images_lib.read_image(os.path.join(root, "images", "scan01.tif"), 1,
                                 intensity.rule(window=(-1000, 400)))
    np.testing.assert_allclose(read[0, ..., 0], np.clip((hu + 1000) / 1400, 0, 1), atol=1e-6)


def test_the_runs_intensity_rule_is_recorded_and_evaluate_reads_the_data_as_trained(tmp_path):
    """The window given to `train` is in train_config.json (`intensity.of_run` reads it back),
    and `evaluate` without data flags reads the data with it: a window that clips every pixel
    of these images to 0 gives other samples than the data type's rule would."""
    root = str(tmp_path / "data")
    _write_16bit(root, (1000 + 24 * np.arange(96)).reshape(12, 8))
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", "folder", "--data-dir", root, "--workdir", workdir,
                     "--window", "1000,3000", *TINY]) == 0
    model_path = os.path.join(workdir, "model.keras")
    assert intensity.of_run(model_path) == {"rule": "window", "low": 1000.0, "high": 3000.0}
    assert intensity.of_run(str(tmp_path)) == intensity.DTYPE
    from tfprobunet.cli import evaluation as cli_evaluation

    # A run with no rule, evaluated with none: nothing to warn about.
    plain = str(tmp_path / "plain")
    assert cli.main(["train", "--dataset", "folder", "--data-dir", root, "--workdir", plain,
                     *TINY]) == 0
    args = cli.build_parser().parse_args(["evaluate", "--model", os.path.join(
        plain, "model.keras"), "--out", str(tmp_path / "eval")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "data_options" not in cli_evaluation.data_settings(args)

    args = cli.build_parser().parse_args(["evaluate", "--model", model_path, "--out",
                                          str(tmp_path / "eval")])
    assert cli_evaluation.data_settings(args)["data_options"] == {"window": [1000.0, 3000.0]}
    args = cli.build_parser().parse_args(["evaluate", "--model", model_path, "--out",
                                          str(tmp_path / "eval"), "--percentiles", "1,99"])
    with pytest.warns(UserWarning, match=r"scaled by --percentiles 1,99, the training run by "
                                         r"--window 1000,3000"):
        assert cli_evaluation.data_settings(args)["data_options"] == {
            "percentiles": [1.0, 99.0]}


def test_predict_and_an_export_use_the_runs_intensity_rule(tmp_path):
    """A run trained with a window: `predict_files` of its .keras path reads images with that
    window (the same masks and maps as passing the rule, others than the data type's rule),
    and its export records the rule for the serving clients."""
    from tfprobunet import prediction
    from tfprobunet.data import images as images_lib
    from tfprobunet.serving import export

    root = str(tmp_path / "data")
    values = (1000 + 24 * np.arange(96)).reshape(12, 8)
    _write_16bit(root, values)
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", "folder", "--data-dir", root, "--workdir", workdir,
                     "--window", "1000,3000", *TINY]) == 0
    model_path = os.path.join(workdir, "model.keras")
    image = os.path.join(root, "images", "scan01.png")
    window = intensity.rule(window=(1000, 3000))
    np.testing.assert_allclose(images_lib.read_image(image, 1, window)[0, ..., 0],
                               np.clip((values - 1000) / 2000, 0, 1), atol=1e-6)
    model = tfprobunet.saving.load_model(model_path)

    def maps(model, out, **rule):
        prediction.predict_files(model, [image], 4, str(tmp_path / out), seed=1, **rule)
        with Image.open(tmp_path / out / "scan01" / "uncertainty.png") as png:
            return np.asarray(png)

    by_run = maps(model_path, "by_run")
    np.testing.assert_array_equal(by_run, maps(model, "given", intensity=window))
    assert not np.array_equal(by_run, maps(model, "dtype", intensity=intensity.DTYPE))
    version = export.export_for_serving(model_path, str(tmp_path / "exports"), "ct")
    with open(os.path.join(version, export.CONFIG_ASSET)) as f:
        assert json.load(f)["intensity"] == window


def test_intensity_rules_scale_by_hand_worked_values():
    np.testing.assert_allclose(intensity.scale(np.array([0, 255], np.uint8)), [0, 1])
    np.testing.assert_allclose(intensity.scale(np.array([0, 32768, 65535], np.uint16)),
                               [0, 32768 / 65535, 1])
    window = intensity.rule(window=(-1000, 400))
    np.testing.assert_allclose(intensity.scale(np.array([-2000, -1000, -300, 400, 3000],
                                                        np.int16), window),
                               [0, 0, 0.5, 1, 1])
    percentiles = intensity.rule(percentiles=(25, 75))
    np.testing.assert_allclose(intensity.scale(np.arange(5.0), percentiles),
                               [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError, match=r"int16 values in \[-1024, 3000\].*--window"):
        intensity.scale(np.array([-1024, 3000], np.int16))
    for bad in (dict(window=(400, -1000)), dict(percentiles=(0, 101)),
                dict(window=(0, 1), percentiles=(0, 1)), dict(window="lung")):
        with pytest.raises(ValueError):
            intensity.rule(**bad)


def test_options_a_dataset_does_not_take_are_refused_naming_its_options(tmp_path):
    with pytest.raises(ValueError, match=r"'flips' takes no option crop: its options are none"):
        tfprobunet.data.load("flips", "train", num_examples=2, crop=(8, 8))
    with pytest.raises(ValueError, match=r"takes no option windw: its options are .*window"):
        tfprobunet.data.load("folder", "train", data_dir=str(tmp_path), windw=(0, 1))
    assert set(tfprobunet.data.dataset_options("folder")) >= {
        "pattern", "crop", "window", "percentiles", "binarize", "missing_mask"}


def test_a_crop_windows_the_train_split_only(tmp_path):
    root = str(tmp_path)
    _write(root, "{stem}_{rater}.png")
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    train = tfprobunet.data.from_folders(images, masks, "train", fractions=(0.6, 0.4, 0.0),
                                         multiple=1, crop=(8, 6))
    val = tfprobunet.data.from_folders(images, masks, "val", fractions=(0.6, 0.4, 0.0),
                                       multiple=1, crop=(8, 6))
    assert {i.shape for i, _ in train.dataset.as_numpy_iterator()} == {(8, 6, 1)}
    assert {i.shape for i, _ in val.dataset.as_numpy_iterator()} == {(12, 10, 1)}


def test_match_masks_refuses_a_malformed_pattern():
    for pattern in ("{stem}_**.png", "masks_*.png", "*/*_{stem}.png", "a/b/{stem}.png"):
        with pytest.raises(ValueError, match="holds {stem}"):
            folders._check_pattern(pattern)


# What a hostile probe of the layouts found (each of these tests fails on the code before it).

def test_a_palette_mask_is_read_by_its_indices_not_its_colours(tmp_path):
    """Index 0 = background drawn white, 1 = lesion drawn black: the grey conversion read it
    inside out."""
    root = str(tmp_path)
    _write(root, "{stem}_{rater}.png", raters=["0"])
    for n, stem in enumerate(NAMES):
        mask = Image.fromarray((_mask(n, 0) > 0).astype(np.uint8), mode="P")
        mask.putpalette([255, 255, 255, 0, 0, 0])
        mask.save(os.path.join(root, "masks", f"{stem}_0.png"))
    assert _rows(root) == [[n + 1] for n in range(len(NAMES))]


def test_hidden_files_and_folders_are_no_images_or_raters(tmp_path):
    root = str(tmp_path)
    _write(root, "{rater}/{stem}.png")
    _write(os.path.join(root, "hidden"), "{stem}.png", raters=[""])
    os.rename(os.path.join(root, "hidden", "masks"), os.path.join(root, "masks",
                                                                    ".ipynb_checkpoints"))
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(os.path.join(root, "images",
                                                                    "._scan01.png"))
    assert _rows(root) == [[n + 1 + r for r in range(3)] for n in range(len(NAMES))]


@pytest.mark.parametrize("case, message", [
    ("split_named_rater", r"subfolder 'train', a split's name"),
    ("two_layouts", r"fit several layouts, each with masks for every image: \{stem\}_\*, "
                    r"\*/\{stem\}"),
    ("two_files_one_rater", r"scan01_0.png and scan01_0.tif are both rater '0'"),
    ("two_images_one_stem", r"scan01.png and scan01.tif are both image 'scan01'"),
])
def test_layouts_that_would_be_read_wrongly_are_refused(tmp_path, case, message):
    root = str(tmp_path)
    _write(root, "{stem}_{rater}.png", raters=["0"])
    if case == "split_named_rater":
        _write(root, "train/{stem}.png", raters=[""])
    elif case == "two_layouts":
        _write(root, "{rater}/{stem}.png", raters=["r1"])
    elif case == "two_files_one_rater":
        Image.fromarray(_mask(0, 0)).save(os.path.join(root, "masks", "scan01_0.tif"))
    else:
        Image.fromarray(np.zeros((12, 10), np.uint8)).save(os.path.join(root, "images",
                                                                        "scan01.tif"))
    with pytest.raises(ValueError, match=message):
        _rows(root)


def test_a_stray_file_that_adds_a_rater_with_missing_mask_empty_is_warned_about(tmp_path):
    root = str(tmp_path)
    _write(root, "{stem}_{rater}.png", raters=["0"])
    Image.fromarray(_mask(0, 0)).save(os.path.join(root, "masks", "scan01_0 copy.png"))
    with pytest.warns(UserWarning, match=r"Rater '0 copy' has masks for 1 of 5 images"):
        rows = _rows(root, missing_mask="empty")
    assert rows[1] == [2, 0]  # rater 0's mask, then the stray rater's empty one


@pytest.mark.parametrize("values, labels", [([0, 128, 255], "[0, 128]"), ([0, 3, 200],
                                                                             "[0, 3, 200]")])
def test_grey_levels_read_as_classes_are_refused_unless_k_is_given(tmp_path, values, labels):
    """{0, 128, 255} as classes would be K = 129 (the lesion, 255, ignored); K stated is
    taken as stated."""
    root = str(tmp_path)
    _write_labels(root, values)
    with pytest.raises(ValueError, match=rf"hold the labels {re.escape(labels)}.* never appear"):
        _rows(root, binarize=False)
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1.0, 0.0, 0.0), binarize=False,
                                          num_classes=max(values[:2] + values[2:3]) + 1
                                          if 255 not in values else 129)
    assert source.num_classes in (129, 201)


def test_predict_reads_an_image_as_training_does(tmp_path):
    """An RGB JPEG and a 16-bit TIFF: `read_image` (predict, the serving clients) gives the
    very floats the folder dataset trains on (TensorFlow's JPEG decoder and grey conversion
    differed by 1/255)."""
    from tfprobunet.data import images as images_lib

    root = str(tmp_path)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (12, 10, 3), np.uint8)
    Image.fromarray(colour).save(os.path.join(root, "images", "a.jpg"), quality=70)
    Image.fromarray(rng.integers(0, 65536, (12, 10)).astype(np.uint16)).save(
        os.path.join(root, "images", "b.tif"))
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((12, 10), np.uint8)).save(
            os.path.join(root, "masks", f"{stem}_0.png"))
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1.0, 0.0, 0.0), multiple=1)
    for (image, _), name in zip(source.dataset.as_numpy_iterator(), ("a.jpg", "b.tif")):
        read = images_lib.read_image(os.path.join(root, "images", name), 1)
        np.testing.assert_array_equal(read[0], image)


def test_command_line_option_values_are_refused_by_their_flags(tmp_path, capsys):
    root = str(tmp_path)
    _write(root, "{stem}_{rater}.png")
    base = ["train", "--dataset", "folder", "--data-dir", root, "--workdir",
            str(tmp_path / "run"), *TINY]
    with pytest.raises(SystemExit):  # argparse's own refusal: usage, then the error
        cli.main([*base, "--crop", "0"])
    assert re.search(r"argument --crop: expected .*positive", capsys.readouterr().err)
    assert "--crop 16,16" in cli_error(capsys, [*base, "--crop", "9,9"])
    # `-inf,0` and `-.5,1` are values, not flags: the first is refused by the rule, the
    # second trains.
    assert "finite low < high" in cli_error(capsys, [*base, "--window", "-inf,0"])
    assert cli.main([*base, "--window", "-.5,1"]) == 0
    assert "`pattern` holds {stem}" in cli_error(capsys, [*base, "--pattern", "{stem}_{x}*"])
