"""`tfprobunet.data.from_folders` and `--dataset folder` on folders written here: sizes that are
not powers of two, an RGB image among grey ones, 0/255 masks, a missing rater file, splits by
seed and by subfolder."""

import os

import numpy as np
import pytest
from PIL import Image

import tfprobunet
from conftest import cli_error
from tfprobunet import cli
from tfprobunet.data import folders


def _write(root, names, size=(75, 90), raters=3, rgb=(), seed=0):
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
