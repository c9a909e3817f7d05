"""`tfprobunet.data.from_folders` and `--dataset folder` on folders written here: sizes that are
not powers of two, an RGB image among grey ones, 0/255 masks, a missing rater file, splits by
seed and by subfolder; the values it yields against ones computed here from the arrays written,
the memory it holds them in, the file named when several are bad."""

import os
import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tfprobunet
from conftest import cli_error
from fixtures import write_folder_cases as _write
from tfprobunet import cli
from tfprobunet.data import folders, pipeline


def test_reads_odd_sizes_rgb_among_grey_and_0_255_masks_padded_for_the_model(tmp_path):
    root = str(tmp_path)
    written = _write(root, [f"scan{i:02d}" for i in range(10)], rgb=("scan03",))
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1, 0, 0), multiple=8)
    assert source.num_classes == 2
    examples = list(source.dataset.as_numpy_iterator())
    assert len(examples) == 10
    for (image, annotations), name in zip(examples, sorted(written)):
        grey, masks = written[name]
        assert image.shape == (80, 96, 1) and annotations.shape == (3, 80, 96)
        np.testing.assert_allclose(image[:75, :90, 0], grey / 255.0, atol=1e-6)
        np.testing.assert_allclose(image[75:, :90, 0], np.repeat(grey[-1:] / 255.0, 5, 0),
                                   atol=1e-6)
        np.testing.assert_array_equal(annotations[:, :75, :90], masks)  # 255 became 1
        assert (annotations[:, 75:] == 255).all() and (annotations[:, :, 90:] == 255).all()
    assert folders.image_sizes(os.path.join(root, "images"), os.path.join(root, "masks"),
                               "train", fractions=(1, 0, 0)) == [(75, 90)] * 10
    # Kept as labels, the same 0/255 masks are refused with the fix in the message.
    with pytest.raises(ValueError, match=r"0/255.*binarize=True"):
        tfprobunet.data.from_folders(os.path.join(root, "images"), os.path.join(root, "masks"),
                                     "train", binarize=False, fractions=(1, 0, 0))


def test_rgb_channels_and_label_masks(tmp_path):
    root = str(tmp_path)
    _write(root, ["a", "b"], size=(8, 12))
    Image.fromarray(np.full((8, 12), 2, np.uint8)).save(tmp_path / "masks" / "a_1.png")
    source = tfprobunet.data.from_folders(str(tmp_path / "images"), str(tmp_path / "masks"),
                                          channels=3, binarize=False, multiple=4,
                                          fractions=(1, 0, 0))
    image, annotations = next(source.dataset.as_numpy_iterator())
    assert image.shape == (8, 12, 3) and np.array_equal(image[..., 0], image[..., 2])
    assert source.num_classes == 3 and (annotations[1] == 2).all()


def test_a_missing_rater_file_is_named(tmp_path):
    root = str(tmp_path)
    _write(root, ["a", "b", "c"], size=(8, 8))
    os.remove(tmp_path / "masks" / "b_1.png")
    with pytest.raises(FileNotFoundError, match=r"b.png has no mask for rater\(s\) \['1'\]: "
                                                r"expected .*b_1.png"):
        tfprobunet.data.from_folders(str(tmp_path / "images"), str(tmp_path / "masks"),
                                     fractions=(1, 0, 0))
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "masks" / "b_1.png")
    with pytest.raises(ValueError, match=r"b_1.png is 8x9 pixels .* its image .*b.png is 8x8"):
        tfprobunet.data.from_folders(str(tmp_path / "images"), str(tmp_path / "masks"),
                                     fractions=(1, 0, 0))


def test_splits_by_seed_partition_the_images(tmp_path):
    root = str(tmp_path)
    names = [f"s{i:02d}" for i in range(20)]
    written = _write(root, names, size=(8, 8))
    by_image = {grey.tobytes(): name for name, (grey, _) in written.items()}

    def names_of(split, seed):
        source = tfprobunet.data.from_folders(str(tmp_path / "images"),
                                              str(tmp_path / "masks"), split, seed=seed)
        # Padded to 16x16 (the default multiple): the 8x8 written is the top-left corner.
        return [by_image[np.round(image[:8, :8, 0] * 255).astype(np.uint8).tobytes()]
                for image, _ in source.dataset.as_numpy_iterator()]

    splits = {split: names_of(split, 0) for split in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [16, 2, 2]
    assert sorted(sum(splits.values(), [])) == names  # a partition
    assert names_of("val", 0) == splits["val"] and names_of("val", 1) != splits["val"]


def test_splits_by_subfolder(tmp_path):
    for split, names in (("train", ["a", "b"]), ("val", ["c"]), ("test", ["d"])):
        _write(str(tmp_path / "split"), names, size=(8, 8))
        for kind in ("images", "masks"):
            os.makedirs(tmp_path / kind / split)
            for name in os.listdir(tmp_path / "split" / kind):
                os.rename(tmp_path / "split" / kind / name, tmp_path / kind / split / name)
    counts = {split: len(list(tfprobunet.data.from_folders(
        str(tmp_path / "images"), str(tmp_path / "masks"), split).dataset))
        for split in ("train", "val", "test")}
    assert counts == {"train": 2, "val": 1, "test": 1}
    os.rename(tmp_path / "masks" / "val", tmp_path / "masks" / "other")
    with pytest.raises(FileNotFoundError, match=r"has no mask folder .*masks/val"):
        tfprobunet.data.from_folders(str(tmp_path / "images"), str(tmp_path / "masks"), "val")


def test_cli_trains_and_predicts_on_a_folder_at_the_original_size(tmp_path, capsys):
    root = tmp_path / "data"
    _write(str(root), [f"scan{i:02d}" for i in range(10)], rgb=("scan07",))
    workdir = str(tmp_path / "run")
    assert "--image-size is not used by --dataset folder" in cli_error(
        capsys, ["train", "--dataset", "folder", "--data-dir", str(root), "--workdir", workdir,
                 "--image-size", "64"])
    assert cli.main(["train", "--dataset", "folder", "--data-dir", str(root), "--workdir",
                     workdir, "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                     "--num-channels", "8,16", "--convs-per-block", "1", "--latent-dim",
                     "2"]) == 0
    out = tmp_path / "out"
    assert cli.main(["predict", "--model", os.path.join(workdir, "model.keras"), "--image",
                     str(root / "images" / "scan07.png"), "-n", "2", "--out", str(out)]) == 0
    with Image.open(out / "scan07" / "sample_01.png") as png:
        assert png.size == (90, 75)


def _write_cases(root, cases):
    """`{name: (image, [mask per rater])}` as images/{name}.png and masks/{name}_{r}.png; each an
    array (uint16 masks are saved 16-bit) or a PIL image (palette masks)."""
    for kind in ("images", "masks"):
        os.makedirs(os.path.join(root, kind), exist_ok=True)
    for name, (image, masks) in cases.items():
        Image.fromarray(image).save(os.path.join(root, "images", f"{name}.png"))
        for r, mask in enumerate(masks):
            mask = mask if isinstance(mask, Image.Image) else Image.fromarray(mask)
            mask.save(os.path.join(root, "masks", f"{name}_{r}.png"))


def _reference(cases, channels=1, binarize=True, multiple=16):
    """What `from_folders` yields, worked out here from the arrays written: `(images (n, H, W,
    channels) float32, annotations (n, A, H, W) int32)` in sorted name order; grey values / 255,
    colour read as grey by PIL's conversion, grey repeated for RGB; masks foreground where above
    127 (0/255) or 0 (0/1), or their labels; padded at the bottom and right to multiples of
    `multiple`, images repeating their last row and column, masks with 255."""
    named = [cases[name] for name in sorted(cases)]
    height = -(-max(image.shape[0] for image, _ in named) // multiple) * multiple
    width = -(-max(image.shape[1] for image, _ in named) // multiple) * multiple
    images = np.zeros((len(named), height, width, channels), np.float32)
    annotations = np.full((len(named), len(named[0][1]), height, width), 255, np.int32)
    for n, (image, masks) in enumerate(named):
        h, w = image.shape[:2]
        if image.ndim == 3 and channels == 1:
            image = np.asarray(Image.fromarray(image).convert("L"))
        if image.ndim == 2:
            image = np.repeat(image[..., None], channels, axis=-1)
        rows, columns = np.minimum(np.arange(height), h - 1), np.minimum(np.arange(width), w - 1)
        images[n] = image[rows][:, columns].astype(np.float32) / np.float32(255)
        for a, mask in enumerate(masks):
            mask = np.asarray(mask).astype(np.int64)
            if binarize:
                mask = mask > (127 if mask.max() > 1 else 0)
            annotations[n, a, :h, :w] = mask
    return images, annotations


def _odd_cases(seed=0):
    """Four cases of different sizes, none a multiple of 16: every grey value from 0 to 255, a
    colour image, 0/255 masks, an empty one and a 0/1 one."""
    rng = np.random.default_rng(seed)
    cases = {}
    for name, size in (("a", (20, 30)), ("b", (33, 17, 3)), ("c", (8, 40)), ("d", (33, 40))):
        image = rng.integers(0, 256, size).astype(np.uint8)
        masks = [(rng.random(size[:2]) < 0.3).astype(np.uint8) * 255 for _ in range(3)]
        cases[name] = (image, masks)
    cases["a"][0].reshape(-1)[:256] = rng.permutation(256)
    cases["a"][1][1][:] = 0
    cases["c"][1][2] //= 255
    return cases


@pytest.mark.parametrize("channels, multiple", [(1, 16), (3, 16), (1, 1)])
def test_yields_the_values_of_the_files_bit_for_bit_as_float32_and_int32(tmp_path, channels,
                                                                          multiple):
    cases = _odd_cases()
    _write_cases(str(tmp_path), cases)
    source = tfprobunet.data.from_folders(str(tmp_path / "images"), str(tmp_path / "masks"),
                                          channels=channels, multiple=multiple,
                                          fractions=(1, 0, 0))
    images, annotations = _reference(cases, channels, multiple=multiple)
    assert images.shape[1:3] == ((48, 48) if multiple == 16 else (33, 40))
    assert source.dataset.element_spec == (
        tf.TensorSpec(images.shape[1:], tf.float32), tf.TensorSpec(annotations.shape[1:],
                                                                   tf.int32))
    examples = list(source.dataset.as_numpy_iterator())
    assert len(examples) == 4
    for (image, annotation), expected_image, expected_annotation in zip(examples, images,
                                                                          annotations):
        assert image.dtype == np.float32 and annotation.dtype == np.int32
        # Exact: the very float32 of x / 255, not within a tolerance.
        np.testing.assert_array_equal(image.view(np.uint32), expected_image.view(np.uint32))
        np.testing.assert_array_equal(annotation, expected_annotation)


def test_label_masks_yield_their_labels_narrow_or_wide(tmp_path):
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 3, (20, 30)).astype(np.uint8) for _ in range(4)]
    labels[0][:2, :3] = 255  # ignored pixels
    palette = Image.fromarray(labels[3]).convert("P")  # palette images hold the labels too
    # A 16-bit mask whose labels fit in a byte among 8-bit ones.
    cases = {"a": (rng.integers(0, 256, (20, 30)).astype(np.uint8),
                   [labels[0], labels[1].astype(np.uint16)]),
             "b": (rng.integers(0, 256, (17, 26)).astype(np.uint8),
                   [np.ascontiguousarray(labels[2][:17, :26]), palette.crop((0, 0, 26, 17))])}
    _write_cases(str(tmp_path / "narrow"), cases)
    source = tfprobunet.data.from_folders(str(tmp_path / "narrow" / "images"),
                                          str(tmp_path / "narrow" / "masks"), binarize=False,
                                          fractions=(1, 0, 0))
    images, annotations = _reference(cases, binarize=False)
    assert source.num_classes == 3
    got = list(source.dataset.as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([a for _, a in got]), annotations)
    np.testing.assert_array_equal(np.stack([i for i, _ in got]), images)
    # 16-bit masks with labels beyond 255 keep them (in a wider type than uint8).
    wide = labels[1].astype(np.uint16)
    wide[5, 5], wide[6, 6] = 300, 1000
    cases["b"] = (cases["b"][0], [labels[2][:17, :26].astype(np.uint16) * 100, palette.crop(
        (0, 0, 26, 17))])
    cases["a"] = (cases["a"][0], [labels[0], wide])
    _write_cases(str(tmp_path / "wide"), cases)
    # Sparse labels (an atlas's ids) imply 1001 classes of which 7 appear: stated, not implied.
    with pytest.raises(ValueError, match=r"994 of the 1001 classes never appear"):
        tfprobunet.data.from_folders(str(tmp_path / "wide" / "images"),
                                     str(tmp_path / "wide" / "masks"), binarize=False,
                                     fractions=(1, 0, 0))
    source = tfprobunet.data.from_folders(str(tmp_path / "wide" / "images"),
                                          str(tmp_path / "wide" / "masks"), binarize=False,
                                          fractions=(1, 0, 0), num_classes=1001)
    _, annotations = _reference(cases, binarize=False)
    assert source.num_classes == 1001 and source.dataset.element_spec[1].dtype == tf.int32
    np.testing.assert_array_equal(np.stack([a for _, a in source.dataset.as_numpy_iterator()]),
                                  annotations)


def test_holds_the_files_in_memory_as_bytes_not_floats(tmp_path):
    # 128 cases of 96x128 (multiples of 16: no padding), 3 raters: 4 bytes a pixel as uint8 (an
    # image and 3 masks), against 16 as float32 images and int32 masks.
    names = [f"s{i:03d}" for i in range(128)]
    _write(str(tmp_path), names, size=(96, 128))
    stored = len(names) * 96 * 128 * (1 + 3)
    tracemalloc.start()  # numpy's arrays report to it, TensorFlow's tensors do not
    try:
        source = tfprobunet.data.from_folders(str(tmp_path / "images"),
                                              str(tmp_path / "masks"), fractions=(1, 0, 0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(list(source.dataset)) == 128
    # The arrays, allocated once, and the numpy copy TensorFlow makes of them to make its tensors
    # (2 * stored), plus the few files being decoded and the objects of the dataset's graph: no
    # list of the cases beside the arrays, no float32 images (at least 3.5 * stored).
    assert stored <= peak < 2.75 * stored, (peak / stored, stored)


def test_the_first_bad_file_in_order_is_named_though_files_are_decoded_together(tmp_path):
    names = [f"s{i:02d}" for i in range(40)]
    written = _write(str(tmp_path), names, size=(8, 8))
    images, masks = tmp_path / "images", tmp_path / "masks"
    png = (images / "s09.png").read_bytes()
    (masks / "s05_2.png").write_bytes(b"not a png")
    (images / "s09.png").write_bytes(png[:-30])  # its header read, its pixels cut short
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(masks / "s20_1.png")
    (images / "s30.png").write_bytes(b"")

    def error():
        with pytest.raises(ValueError) as raised:
            tfprobunet.data.from_folders(str(images), str(masks), fractions=(1, 0, 0))
        return str(raised.value)

    assert error() == (f"{masks / 's05_2.png'} cannot be read as an image (cannot identify "
                       f"image file '{masks / 's05_2.png'}').")
    Image.fromarray(written["s05"][1][2].astype(np.uint8) * 255).save(masks / "s05_2.png")
    assert error() == f"{images / 's09.png'} cannot be read as an image (image file is truncated)."
    (images / "s09.png").write_bytes(png)
    assert error() == (f"{masks / 's20_1.png'} is 8x9 pixels (height x width) but its image "
                       f"{images / 's20.png'} is 8x8: every mask must have its image's size.")
    os.remove(masks / "s20_1.png")
    Image.fromarray(written["s20"][1][1].astype(np.uint8) * 255).save(masks / "s20_1.png")
    assert error().startswith(f"{images / 's30.png'} cannot be read as an image (")


def test_the_same_seed_gives_the_same_training_batches(tmp_path):
    cases = {f"s{i:02d}": (image, masks) for i, (image, masks) in enumerate(
        list(_odd_cases(0).values()) + list(_odd_cases(1).values()) + list(
            _odd_cases(2).values()))}
    _write_cases(str(tmp_path), cases)
    source = tfprobunet.data.from_folders(str(tmp_path / "images"), str(tmp_path / "masks"),
                                          multiple=1, fractions=(1, 0, 0))
    # The dataset as from_folders built it when it held float32 images and int32 masks.
    before = tf.data.Dataset.from_tensor_slices(_reference(cases, multiple=1))

    def batches(dataset):
        return [(images.numpy(), segmentations.numpy()) for images, segmentations in
                pipeline.training_pipeline(dataset, 4, seed=0).take(3)]

    first = batches(source.dataset)
    for other in (batches(source.dataset), batches(before)):
        for (images, segmentations), (other_images, other_segmentations) in zip(first, other):
            np.testing.assert_array_equal(images, other_images)
            np.testing.assert_array_equal(segmentations, other_segmentations)


@pytest.mark.parametrize("pattern, mask_name", [
    ("{stem}_*.png", "{stem}_{rater}.png"),
    ("seg-{stem}-r*.png", "seg-{stem}-r{rater}.png"),
    ("*{stem}.png", "{rater}{stem}.png"),  # the rater first: no literal start to look up
])
def test_masks_are_matched_to_their_image_when_names_share_starts_and_hold_glob_characters(
        tmp_path, pattern, mask_name):
    # "a" is the start of "a1" and "a[1]"; "[" is a glob character in a file name. Each image
    # gets its own masks, told apart by their values, whatever the pattern.
    names = ["a", "a1", "a[1]", "b"]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        for rater in ("x", "y"):
            mask = np.zeros((8, 8), np.uint8)
            mask[:i + (rater == "y")] = 255  # rows of ones: which image, which rater
            Image.fromarray(mask).save(
                tmp_path / "masks" / mask_name.format(stem=name, rater=rater))
    source = tfprobunet.data.from_folders(str(tmp_path / "images"), str(tmp_path / "masks"),
                                          "train", pattern=pattern, fractions=(1, 0, 0),
                                          multiple=1)
    for (image, annotations), name in zip(source.dataset.as_numpy_iterator(), sorted(names)):
        i = names.index(name)
        assert round(float(image[0, 0, 0]) * 255) == 10 * i
        np.testing.assert_array_equal(annotations.sum(axis=(1, 2)) // 8, [i, i + 1])


def test_fit_on_a_source_is_refused_in_one_line_naming_the_pipelines(tmp_path):
    """Keras would unpack the `Source` namedtuple as (x, y) and fail on its fields ("they
    hold [2]"); `fit` names the pipeline that turns a Source into batches instead."""
    root = str(tmp_path)
    _write(root, [f"scan{i}" for i in range(5)], size=(16, 16))
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train")
    model = tfprobunet.ProbabilisticUNet(num_channels=[4, 8], convs_per_block=1, latent_dim=2)
    model.compile(optimizer="adam")
    with pytest.raises(TypeError) as refused:
        model.fit(source, epochs=1)
    message = str(refused.value)
    assert "\n" not in message and "tfprobunet.data.Source" in message
    assert "training_pipeline(source.dataset, batch_size=" in message
    batches = pipeline.evaluation_pipeline(source.dataset, 2, source.annotation_weights)
    with pytest.raises(TypeError, match=r"validation_data.*evaluation_pipeline"):
        model.fit(pipeline.training_pipeline(source.dataset, 2, repeat=False),
                  validation_data=source)
    # The pipelines' batches train and validate.
    history = model.fit(pipeline.training_pipeline(source.dataset, 2, repeat=False),
                        validation_data=batches, epochs=1, verbose=0)
    assert np.isfinite(history.history["val_ged"][0])


def test_padding_mixed_sizes_is_not_taken_for_ignored_labels(tmp_path, recwarn):
    """Most pixels of a small image padded to a large one's size are padding (labelled 255 so
    that nothing scores them): that is no reason for the warning about 0/255 masks, through
    training and evaluation alike."""
    root = str(tmp_path)
    _write(root, [f"small{i}" for i in range(4)], size=(8, 8), raters=2)
    _write(root, ["large"], size=(40, 40), raters=2, seed=1)
    source = tfprobunet.data.from_folders(os.path.join(root, "images"),
                                          os.path.join(root, "masks"), "train",
                                          fractions=(1.0, 0.0, 0.0))
    padded = np.concatenate([np.ravel(a) for _, a in source.dataset.as_numpy_iterator()])
    assert np.mean(padded == 255) > 0.5  # the case the warning used to take for 0/255 masks
    tfprobunet.train(str(tmp_path / "run"), dataset=source, validation_data=source, epochs=1,
                     steps_per_epoch=1, batch_size=2, num_channels=[4, 8], convs_per_block=1,
                     latent_dim=2, verbose=0)
    tfprobunet.evaluate(str(tmp_path / "run" / "model.keras"), source, sample_counts=(1, 2),
                        verbose=0)
    assert not [w for w in recwarn if "ignore label" in str(w.message)]


def test_a_multiclass_label_map_is_not_binarised_into_background(tmp_path):
    """Masks of labels 0, 1 and 2 read as binary would all be background (`> 127`): refused,
    naming the file, its values and `binarize=False`, which reads them as three classes."""
    root = str(tmp_path)
    _write(root, [f"scan{i}" for i in range(3)], size=(8, 8), raters=1)
    for i in range(3):
        labels = np.tile(np.array([0, 1, 2, 0], np.uint8), (8, 2))
        Image.fromarray(labels).save(os.path.join(root, "masks", f"scan{i}_0.png"))
    folders_args = (os.path.join(root, "images"), os.path.join(root, "masks"), "train")
    with pytest.raises(ValueError) as refused:
        tfprobunet.data.from_folders(*folders_args, fractions=(1.0, 0.0, 0.0))
    message = str(refused.value)
    assert "scan0_0.png" in message and "[0, 1, 2]" in message and "binarize=False" in message
    assert "0/255" not in message.split("binarize=False")[0]
    source = tfprobunet.data.from_folders(*folders_args, fractions=(1.0, 0.0, 0.0),
                                          binarize=False)
    assert source.num_classes == 3
