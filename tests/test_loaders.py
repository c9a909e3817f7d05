"""The real-data readers on tiny files written here in the published layouts."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from tfprobunet import data
from tfprobunet.data import cityscapes, lidc


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _write_lidc_crops(root, split, first_grader=0, size=20, seed=0):
    """Two patients, two slices each; returns {(patient, slice): (image, [masks])}."""
    rng = np.random.default_rng(seed)
    written = {}
    for patient in ("LIDC-IDRI-0001", "LIDC-IDRI-0002"):
        for name in ("z-105.0_c0", "z-110.5_c1"):
            image = rng.integers(0, 256, (size, size))
            masks = [(rng.random((size, size)) < 0.3) * 255 for _ in range(4)]
            masks[0][:] = 0  # an empty grader
            _png(os.path.join(root, split, "images", patient, name + ".png"), image)
            for g, mask in enumerate(masks):
                _png(os.path.join(root, split, "gt", patient,
                                  f"{name}_l{g + first_grader}.png"), mask)
            written[(patient, name)] = (image, masks)
    return written


def _crop(array, size):
    top = (array.shape[-2] - size) // 2
    left = (array.shape[-1] - size) // 2
    return array[..., top:top + size, left:left + size]


@pytest.mark.parametrize("first_grader", [0, 1])
def test_lidc_crops_read_every_grader_and_center_crop(tmp_path, first_grader):
    written = _write_lidc_crops(str(tmp_path), "val", first_grader)
    source = data.load("lidc", "val", data_dir=str(tmp_path), image_size=16)
    examples = list(source.dataset.as_numpy_iterator())
    assert source.num_classes == 2 and len(examples) == 4
    for (image, annotations), key in zip(examples, sorted(written)):
        expected_image, expected_masks = written[key]
        assert image.shape == (16, 16, 1) and annotations.shape == (4, 16, 16)
        np.testing.assert_allclose(image[..., 0], _crop(expected_image, 16) / 255.0, atol=1e-6)
        np.testing.assert_array_equal(annotations, _crop(np.stack(expected_masks) > 0, 16))
        assert not annotations[0].any()


def test_lidc_crops_explain_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.*images"):
        data.load("lidc", "train", data_dir=str(tmp_path))
    _write_lidc_crops(str(tmp_path), "train")
    os.remove(tmp_path / "train" / "gt" / "LIDC-IDRI-0002" / "z-105.0_c0_l3.png")
    with pytest.raises(ValueError, match="same number of grader masks"):
        data.load("lidc", "train", data_dir=str(tmp_path))
    for g in range(3):
        os.remove(tmp_path / "train" / "gt" / "LIDC-IDRI-0002" / f"z-105.0_c0_l{g}.png")
    with pytest.raises(FileNotFoundError, match="No grader masks.*z-105.0_c0"):
        data.load("lidc", "train", data_dir=str(tmp_path))


def _lidc_entries(num_series=10, slices=3, seed=0):
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


def test_lidc_pickle_splits_by_series(tmp_path):
    entries = _lidc_entries()
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(entries))
    images, annotations, series = lidc.pickle_arrays(str(path))
    keys = sorted(entries)
    np.testing.assert_array_equal(images[3, ..., 0], entries[keys[3]]["image"])
    np.testing.assert_array_equal(annotations[3], np.stack(entries[keys[3]]["masks"]))
    splits = {s: lidc.split_series(series, s, seed=0) for s in lidc.SPLITS}
    assert sorted(np.concatenate(list(splits.values()))) == list(range(len(keys)))
    series_of = {s: set(series[i]) for s, i in splits.items()}
    assert not (series_of["train"] & series_of["val"]) and not (series_of["train"]
                                                                 & series_of["test"])
    assert len(series_of["train"]) == 7  # 70 % of 10 series
    assert not np.array_equal(lidc.split_series(series, "train", seed=1), splits["train"])
    # Through `load`, with a center crop, from a folder of pickles.
    source = data.load("lidc-pickle", "test", data_dir=str(tmp_path), image_size=8, seed=0)
    (image, masks), *_ = source.dataset.as_numpy_iterator()
    first = keys[splits["test"][0]]
    np.testing.assert_array_equal(image[..., 0], _crop(entries[first]["image"], 8))
    np.testing.assert_array_equal(masks, _crop(np.stack(entries[first]["masks"]), 8))


def test_lidc_pickle_written_by_numpy_1_loads(tmp_path):
    entries = _lidc_entries(num_series=1, slices=1)
    # numpy 1.x names its reconstructors numpy.core.*; protocol 2 spells module names as text.
    raw = pickle.dumps(entries, protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in raw
    (tmp_path / "old.pickle").write_bytes(raw)
    images, _, _ = lidc.pickle_arrays(str(tmp_path / "old.pickle"))
    np.testing.assert_array_equal(images[0, ..., 0], next(iter(entries.values()))["image"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    entries = _lidc_entries(num_series=1, slices=1)
    entries["evil"] = {"image": _Payload(marker), "masks": [], "series_uid": "x"}
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(entries))
    with pytest.raises(lidc.UnsafePickleError, match=r"Refusing to load .*(posix|os)\.system"):
        data.load("lidc-pickle", "train", data_dir=str(path))
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the unrestricted unpickler does run it: the test can fail
    assert marker.exists()


def _write_cityscapes(root):
    """One image per city; labels hold every flippable class, another class and 255."""
    rng = np.random.default_rng(0)
    cities = {"train": ("aachen", "ulm", "darmstadt"), "val": ("frankfurt",)}
    labels = np.array([[1, 11, 13, 8, 0, 5, 255, 2]] * 8, np.uint8)
    for official, names in cities.items():
        for city in names:
            stem = f"{city}_000000_000019"
            _png(os.path.join(root, "leftImg8bit", official, city, stem + "_leftImg8bit.png"),
                 rng.integers(0, 256, (8, 8, 3)))
            _png(os.path.join(root, "gtFine", official, city, stem + "_gtFine_labelTrainIds.png"),
                 labels)
    return labels


def test_cityscapes_splits_and_flip_protocol(tmp_path):
    labels = _write_cityscapes(str(tmp_path))
    split_cities = {split: [os.path.basename(os.path.dirname(p))
                            for p in cityscapes.files(str(tmp_path), split)[0]]
                    for split in cityscapes.SPLITS}
    assert split_cities == {"train": ["aachen"], "val": ["darmstadt", "ulm"],
                            "test": ["frankfurt"]}
    source = data.load("cityscapes", "test", data_dir=str(tmp_path))
    (image, annotations), = cityscapes.dataset(str(tmp_path), "test",
                                               image_size=None).as_numpy_iterator()
    assert source.num_classes == 24 and image.shape == (8, 8, 3) and annotations.shape == (32, 8, 8)
    np.testing.assert_array_equal(annotations[0], labels)  # mode 0: nothing flipped
    # All flipped: sidewalk 1->19, person 11->20, car 13->21, vegetation 8->22, road 0->23.
    np.testing.assert_array_equal(annotations[31][0], [19, 20, 21, 22, 23, 5, 255, 2])
    # Mode 0b00010: only vegetation (the 4th flip; the 1st is the top bit) relabelled.
    np.testing.assert_array_equal(annotations[0b00010][0], [1, 11, 13, 22, 0, 5, 255, 2])
    np.testing.assert_allclose(source.annotation_weights[0], (9 / 17) * (10 / 17) * (11 / 17)
                               * (12 / 17) * (13 / 17))
    assert source.classes == [0, 1, 8, 11, 13, 19, 20, 21, 22, 23]
    (small, small_annotations), = data.load("cityscapes", "test", data_dir=str(tmp_path),
                                            image_size=(4, 4)).dataset.as_numpy_iterator()
    assert small.shape == (4, 4, 3) and small_annotations.shape == (32, 4, 4)
    assert set(np.unique(small_annotations[0])) <= set(np.unique(labels))  # nearest: no new ids


def test_load_explains_bad_names_and_missing_data_dir(tmp_path):
    with pytest.raises(ValueError, match="one of .*flips"):
        data.load("lidc2")
    with pytest.raises(ValueError, match="data_dir"):
        data.load("cityscapes")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        data.load("cityscapes", data_dir=str(tmp_path))
    train = next(data.load("flips", "train", image_size=16).dataset.as_numpy_iterator())[0]
    test = next(data.load("flips", "test", image_size=16).dataset.as_numpy_iterator())[0]
    assert not np.array_equal(train, test)


def test_lidc_training_crops_are_random_windows_shared_by_image_and_masks(tmp_path):
    written = _write_lidc_crops(str(tmp_path), "train")
    dataset = data.load("lidc", "train", data_dir=str(tmp_path), image_size=16).dataset
    offsets = []
    for image, annotations in dataset.repeat(3).as_numpy_iterator():
        # Which written tile and which window of it (20x20 tiles, 16x16 windows)?
        found = [(key, dy, dx) for key, (tile, _) in written.items()
                 for dy in range(5) for dx in range(5)
                 if np.allclose(image[..., 0], tile[dy:dy + 16, dx:dx + 16] / 255.0)]
        assert len(found) == 1
        key, dy, dx = found[0]
        masks = np.stack(written[key][1])[:, dy:dy + 16, dx:dx + 16] > 0
        np.testing.assert_array_equal(annotations, masks)
        offsets.append((dy, dx))
    assert len(set(offsets)) > 3  # windows differ between examples and passes
