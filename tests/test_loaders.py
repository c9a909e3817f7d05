"""The real-data readers on tiny files written here in the published layouts."""

import codecs
import json
import os
import pickle
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

# Under the names test_manifests and test_readme import them from here.
from fixtures import center_crop as _crop
from fixtures import lidc_entries as _lidc_entries
from fixtures import save_png as _png
from fixtures import write_cityscapes as _write_cityscapes
from fixtures import write_lidc_crops as _write_lidc_crops
from tfprobunet import data
from tfprobunet.data import cityscapes, lidc

# The tiny crops written here are not the published split, which `load` says once per split.
pytestmark = pytest.mark.filterwarnings("ignore::tfprobunet.data.lidc.SplitCountWarning")


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


def test_lidc_crops_refuse_tiles_smaller_than_the_crop_and_take_height_and_width(tmp_path):
    written = _write_lidc_crops(str(tmp_path), "val")  # 20x20 tiles
    with pytest.raises(ValueError, match=r"z-105.0_c0.png is 20x20 pixels .* smaller than the "
                                         r"32x24 crop.*--image-size 20,20"):
        data.load("lidc", "val", data_dir=str(tmp_path), image_size=(32, 24))
    source = data.load("lidc", "val", data_dir=str(tmp_path), image_size=(16, 12))
    for (image, annotations), key in zip(source.dataset.as_numpy_iterator(), sorted(written)):
        tile, masks = written[key]
        assert image.shape == (16, 12, 1) and annotations.shape == (4, 16, 12)
        np.testing.assert_allclose(image[..., 0], tile[2:18, 4:16] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(annotations, np.stack(masks)[:, 2:18, 4:16] > 0)


def test_lidc_crops_explain_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.*images"):
        data.load("lidc", "train", data_dir=str(tmp_path))
    _write_lidc_crops(str(tmp_path), "train")
    os.remove(tmp_path / "train" / "gt" / "LIDC-IDRI-0002" / "z-105.0_c0_l3.png")
    with pytest.raises(ValueError, match="same grader masks.*z-105.0_c0.*_l0, _l1, _l2 "):
        data.load("lidc", "train", data_dir=str(tmp_path))
    for g in range(3):
        os.remove(tmp_path / "train" / "gt" / "LIDC-IDRI-0002" / f"z-105.0_c0_l{g}.png")
    with pytest.raises(FileNotFoundError, match="No grader masks.*z-105.0_c0"):
        data.load("lidc", "train", data_dir=str(tmp_path))


_DAMAGE = {
    "empty": lambda raw: b"",
    "garbage": lambda raw: bytes(range(256)) * 4,
    "truncated-header": lambda raw: raw[:20],
    "truncated": lambda raw: raw[:len(raw) // 2],
}


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
@pytest.mark.parametrize("folder, name", [("images", "z-110.5_c1.png"),
                                          ("gt", "z-110.5_c1_l2.png")], ids=["image", "mask"])
def test_lidc_crops_name_a_damaged_png_before_reading_any(tmp_path, damage, folder, name):
    _write_lidc_crops(str(tmp_path), "train")
    path = tmp_path / "train" / folder / "LIDC-IDRI-0002" / name
    path.write_bytes(_DAMAGE[damage](path.read_bytes()))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        lidc.crops(str(tmp_path), "train")


def test_lidc_crops_name_a_mask_of_another_size_and_its_image(tmp_path):
    _write_lidc_crops(str(tmp_path), "train")  # 20x20 tiles
    mask = tmp_path / "train" / "gt" / "LIDC-IDRI-0001" / "z-105.0_c0_l1.png"
    _png(str(mask), np.zeros((18, 20)))
    image = tmp_path / "train" / "images" / "LIDC-IDRI-0001" / "z-105.0_c0.png"
    with pytest.raises(ValueError) as refused:
        data.load("lidc", "train", data_dir=str(tmp_path))
    for part in (str(mask), "18x20", str(image), "20x20"):
        assert part in str(refused.value)


@pytest.mark.parametrize("renames, found", [({3: 7}, "_l0, _l1, _l2, _l7"),
                                            ({3: 4, 2: 3, 1: 2, 0: 1}, "_l1, _l2, _l3, _l4")],
                         ids=["a-stray-suffix", "the-other-numbering"])
def test_lidc_crops_refuse_grader_suffixes_that_differ_between_images(tmp_path, renames, found):
    _write_lidc_crops(str(tmp_path), "train")
    folder = tmp_path / "train" / "gt" / "LIDC-IDRI-0002"
    for old, new in renames.items():
        os.rename(folder / f"z-110.5_c1_l{old}.png", folder / f"z-110.5_c1_l{new}.png")
    with pytest.raises(ValueError) as refused:
        lidc.crops_files(str(tmp_path), "train")
    image = tmp_path / "train" / "images" / "LIDC-IDRI-0002" / "z-110.5_c1.png"
    for part in (str(image), found, "_l0, _l1, _l2, _l3"):
        assert part in str(refused.value)


def test_lidc_crops_need_consecutive_grader_suffixes(tmp_path):
    written = _write_lidc_crops(str(tmp_path), "train")
    for patient, name in written:  # the same gap in every image
        folder = tmp_path / "train" / "gt" / patient
        os.rename(folder / f"{name}_l3.png", folder / f"{name}_l7.png")
    with pytest.raises(ValueError, match=r"_l0, _l1, _l2, _l7.*_l0, _l1, _l2, _l3"):
        lidc.crops_files(str(tmp_path), "train")


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
    assert len(series_of["train"]) == 6  # 64 % of 10 series (PHiSeg's 64/16/20)
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


class _Reduce:
    """Pickles as `func(*args)`, then `BUILD state` if given: hand-made pickles."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) + (() if self.state is None else (self.state,))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    entries = _lidc_entries(num_series=1, slices=1)
    entries["evil"] = {"image": _Reduce(os.system, (f"touch {marker}",)), "masks": [],
                       "series_uid": "x"}
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(entries))
    with pytest.raises(lidc.UnsafePickleError, match=r"Refusing to load .*(posix|os)\.system"):
        data.load("lidc-pickle", "train", data_dir=str(path))
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the unrestricted unpickler does run it: the test can fail
    assert marker.exists()


_RECONSTRUCT = np.arange(1).__reduce__()[0]  # numpy's own names, numpy.core or numpy._core
_FROMBUFFER = np.arange(1).__reduce_ex__(5)[0]
_DOUBLED = b"a"
for _ in range(40):  # hex doubles the bytes at each step: 2**40 bytes from 40 small calls
    _DOUBLED = _Reduce(codecs.encode, (_DOUBLED, "hex"))
# What a hostile pickle of a few hundred bytes may ask numpy (or pickle) to build, and what the
# refusal says; each would take far more memory than the 1 GB the reading process is allowed.
_HUGE = {
    "reconstruct": (_Reduce(_RECONSTRUCT, (np.ndarray, (2**20, 2**20), b"b")),
                    r"\(1048576, 1048576\) int8 .*1,099,511,627,776 bytes"),
    "reconstruct-dtype": (_Reduce(_RECONSTRUCT, (np.ndarray, (10**6, 10**6), np.dtype("f8"))),
                          r"float64 .*8,000,000,000,000 bytes"),
    "ndarray": (_Reduce(np.ndarray, ((10**6, 10**6), "f8")), r"numpy\.ndarray"),
    "setstate": (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                         (1, (2**20, 2**20), np.dtype("f8"), False, b"")),
                 r"\(1048576, 1048576\) float64 .*8,796,093,022,208 bytes"),
    "setstate-object": (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                                (1, (2**17, 2**17), np.dtype(object), False, [])), r"'O8'"),
    "subarray-dtype": (_Reduce(_RECONSTRUCT, (np.ndarray, (4,), np.dtype(("f8", (2**14, 2**13))))),
                       r"'V1073741824'"),
    "frombuffer": (_Reduce(_FROMBUFFER, (b"12345678", np.dtype("f8"), (2**20, 2**20), "C")),
                   r"\(1048576, 1048576\) float64 .*8,796,093,022,208 bytes"),
    "doubling-bytes": (_DOUBLED, r"_codecs\.encode.*'hex'"),
}
# Pickle's memo: index 2**30 made CPython's unpickler allocate and zero 16 GB for this 10-byte file.
_MEMO_AT_2_30 = b"\x80\x02K\x01r" + struct.pack("<I", 2**30) + b"."
_READ_IN_1_GB = """
import json, resource, sys
from tfprobunet.data import lidc

with open("/proc/self/status") as status:
    in_use = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (in_use + 2**30, resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcomes = []
for path in sys.argv[1:]:
    try:
        outcomes.append(["loaded", repr(lidc.read_pickle(path))])
    except Exception as error:
        outcomes.append([type(error).__name__, str(error)])
print(json.dumps([outcomes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_lidc_pickle_cannot_make_the_reader_allocate_more_than_the_file_holds(tmp_path):
    """Each hostile pickle is refused before numpy allocates: read in a process allowed 1 GB
    more address space (so that a failure here is a MemoryError, not a swapping machine)."""
    paths = []
    for name, (attack, _) in _HUGE.items():
        paths.append(tmp_path / f"{name}.pickle")
        paths[-1].write_bytes(pickle.dumps(attack))
        assert paths[-1].stat().st_size < 1000
    paths.append(tmp_path / "memo.pickle")
    paths[-1].write_bytes(_MEMO_AT_2_30)
    run = subprocess.run([sys.executable, "-c", _READ_IN_1_GB, *map(str, paths)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outcomes, grown_kb = json.loads(run.stdout.splitlines()[-1])
    for (name, (_, expected)), path, (error, message) in zip(_HUGE.items(), paths, outcomes):
        assert error == "UnsafePickleError", (name, error, message)
        assert str(path) in message and re.search(expected, message), (name, message)
    assert outcomes[-1] == ["loaded", "1"]
    assert grown_kb < 200 * 1024


def test_lidc_pickle_arrays_are_bounded_by_the_file_size(tmp_path):
    """An honest pickle stores the bytes of its arrays; one asking for more is refused."""
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(_Reduce(_RECONSTRUCT, (np.ndarray, (100, 1000), b"d"))))
    with pytest.raises(lidc.UnsafePickleError) as refused:
        lidc.read_pickle(str(path))
    for part in (str(path), "(100, 1000) float64", "800,000 bytes",
                 f"{path.stat().st_size:,}-byte file"):
        assert part in str(refused.value)
    array = np.arange(100_000, dtype=np.float64).reshape(100, 1000)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):  # the same array, stored: loads
        path.write_bytes(pickle.dumps({"a": array, "t": array.T, "x": np.float32(2)}, protocol))
        loaded = lidc.read_pickle(str(path))
        np.testing.assert_array_equal(loaded["t"], array.T)
        assert type(loaded["a"]) is np.ndarray and loaded["x"] == np.float32(2)
    # A dtype whose state changes its item size would misdescribe arrays already made with it.
    path.write_bytes(pickle.dumps(_Reduce(np.dtype, ("S8", False, True),
                                          (3, "|", None, None, None, 10**6, 1, 0))))
    with pytest.raises(lidc.UnsafePickleError, match="item size"):
        lidc.read_pickle(str(path))


def test_lidc_pickle_entries_sharing_arrays_cannot_multiply_memory(tmp_path):
    entry = next(iter(_lidc_entries(num_series=1, slices=1).values()))
    path = tmp_path / "data_lidc.pickle"
    # One entry stored once and referenced 5000 times: 5000 copies once stacked.
    path.write_bytes(pickle.dumps({f"slice{k}": entry for k in range(5000)}))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*5000 entries.*share"):
        lidc.pickle_arrays(str(path))
    entry["masks"][2] = entry["masks"][2][:8]
    path.write_bytes(pickle.dumps({"slice0": entry}))
    with pytest.raises(ValueError, match=r"'slice0'.*\(8, 16\).*\(16, 16\)"):
        lidc.pickle_arrays(str(path))


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


@pytest.mark.parametrize("cache", [True, "file"])
def test_lidc_crops_give_the_same_batches_with_their_tiles_cached(tmp_path, cache):
    from tfprobunet.data import pipeline

    _write_lidc_crops(str(tmp_path / "crops"), "train", size=20)
    cache = str(tmp_path / "tiles.cache") if cache == "file" else cache

    def batches(cache):
        dataset = lidc.crops(str(tmp_path / "crops"), "train", 12, random_crop=True, seed=3,
                             cache=cache)
        # 4 tiles, batches of 3 over 5 passes: the later passes read the cache.
        stream = pipeline.training_pipeline(dataset, 3, seed=0, num_classes=2)
        return [(images.numpy(), labels.numpy()) for images, labels in stream.take(7)]

    plain, cached = batches(False), batches(cache)
    for (images, labels), (cached_images, cached_labels) in zip(plain, cached):
        np.testing.assert_array_equal(cached_images, images)
        np.testing.assert_array_equal(cached_labels, labels)
