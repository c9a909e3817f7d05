"""Split manifests (issue 27) of every loader with patient ids (the LIDC pickle, the LIDC crops,
PHiSeg's hdf5, your folders): deterministic, disjoint, bound to their data, used by
`load(..., split_manifest=)`, written by `tfprobunet data manifest`; and the LIDC crops' counts
checked against the published ones."""

import json
import os
import pickle
import re
import sys
import warnings

import numpy as np
import pytest

from conftest import cli_error
from fixtures import write_folder_cases as _write_folder
from fixtures import center_crop as _crop
from fixtures import lidc_entries as _lidc_entries
from fixtures import write_lidc_crops as _write_lidc_crops
from fixtures import write_phiseg_hdf5 as _write_phiseg_hdf5
from tfprobunet import cli, data
from tfprobunet.data import folders, lidc, manifests, phiseg

# The tiny crops are not the published split; the tests that check the warning catch it.
pytestmark = pytest.mark.filterwarnings("ignore::tfprobunet.data.lidc.SplitCountWarning")


@pytest.fixture
def pickle_path(tmp_path):
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(_lidc_entries(num_series=25)))
    return str(path)


def _series(path):
    return set(lidc.pickle_arrays(path)[2].tolist())


def test_same_file_and_seed_same_manifest_other_seed_other_split(pickle_path):
    first = lidc.split_manifest(pickle_path, seed=3)
    assert first == lidc.split_manifest(pickle_path, seed=3)
    assert first["splits"] != lidc.split_manifest(pickle_path, seed=4)["splits"]
    assert first["dataset"] == "lidc-pickle" and first["seed"] == 3
    assert first["fractions"] == [0.64, 0.16, 0.2]
    splits = [set(first["splits"][s]) for s in manifests.SPLITS]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert set().union(*splits) == _series(pickle_path)
    assert [len(s) for s in splits] == [16, 4, 5]  # 64/16/20 % of 25 series
    import hashlib
    with open(pickle_path, "rb") as f:
        assert first["sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_load_takes_the_split_from_a_manifest(pickle_path, tmp_path):
    manifest = lidc.split_manifest(pickle_path, seed=3)
    moved = manifest["splits"]["train"][0]  # by hand: one train series to test
    manifest["splits"]["train"].remove(moved)
    manifest["splits"]["test"].append(moved)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    images, _, series = lidc.pickle_arrays(pickle_path)
    expected = [i for i, s in enumerate(series) if s in manifest["splits"]["test"]]
    source = data.load("lidc-pickle", "test", data_dir=pickle_path, split_manifest=str(path))
    got = np.stack([image for image, _ in source.dataset.as_numpy_iterator()])
    np.testing.assert_array_equal(got, images[expected])
    assert any(series[i] == moved for i in expected)


def test_a_manifest_of_other_data_or_with_a_shared_patient_is_refused(pickle_path, tmp_path):
    manifest = lidc.split_manifest(pickle_path)
    other = tmp_path / "other.pickle"
    other.write_bytes(pickle.dumps(_lidc_entries(num_series=25, seed=1)))
    with pytest.raises(ValueError, match=r"made for other data: its sha256 [0-9a-f]{64} does "
                                         r"not match [0-9a-f]{64}, the sha256 of the data"):
        lidc.pickle_dataset(str(other), "train", split_manifest=manifest)
    shared = json.loads(json.dumps(manifest))
    shared["splits"]["val"].append(shared["splits"]["train"][0])
    with pytest.raises(ValueError, match="is in both train and val"):
        lidc.pickle_dataset(pickle_path, "train", split_manifest=shared)
    with pytest.raises(ValueError, match="not a split manifest"):
        lidc.pickle_dataset(pickle_path, "train", split_manifest={"splits": {}})
    for name in ("npz", "cityscapes", "flips", "graders"):
        with pytest.raises(ValueError, match=f"fixes the split of lidc, lidc-pickle, "
                                             f"lidc-phiseg, folder, volumes; '{name}' is split by"):
            data.load(name, "train", data_dir=str(tmp_path), split_manifest=manifest)


def test_the_data_manifest_command_prints_or_writes_it(pickle_path, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert cli.main(["data", "manifest", "--dataset", "lidc-pickle", "--data-dir", pickle_path,
                     "--seed", "7", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == lidc.split_manifest(pickle_path, seed=7)
    assert "16 train, 4 val, 5 test ids (seed 7)" in capsys.readouterr().out
    assert cli.main(["data", "manifest", "--dataset", "lidc-pickle", "--data-dir",
                     pickle_path]) == 0
    assert json.loads(capsys.readouterr().out) == lidc.split_manifest(pickle_path, seed=0)
    line = cli_error(capsys, ["data", "manifest", "--dataset", "lidc-pickle", "--data-dir",
                              str(tmp_path / "missing.pickle")])
    assert "missing.pickle" in line, line


def test_the_command_line_offers_the_datasets_that_have_manifests(capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "manifest", "--help"])
    shown = re.search(r"--dataset \{([^}]*)\}", capsys.readouterr().out).group(1)
    assert tuple(shown.split(",")) == manifests.DATASETS == ("lidc", "lidc-pickle",
                                                             "lidc-phiseg", "folder", "volumes")


def _assert_partition(manifest, ids):
    """The manifest's splits hold every id of `ids` once, and no other."""
    splits = [manifest["splits"][s] for s in manifests.SPLITS]
    assert sorted(sum(splits, [])) == sorted(set(ids))
    assert all(s == sorted(set(s)) for s in splits)


def _moved(manifest, id_, to):
    """A copy of `manifest` with `id_` moved (by hand) to split `to`."""
    moved = json.loads(json.dumps(manifest))
    for ids in moved["splits"].values():
        if id_ in ids:
            ids.remove(id_)
    moved["splits"][to].append(id_)
    return moved


def _sorted_bytes(arrays):
    return sorted(np.asarray(a).tobytes() for a in arrays)


# The LIDC crops: patient folders, published split as the folders hold it.

CROPS_PATIENTS = {"train": ("LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"),
                  "val": ("LIDC-IDRI-0004",), "test": ("LIDC-IDRI-0005",)}


@pytest.fixture
def crops_dir(tmp_path):
    """Tiny crops, two 20x20 slices per patient; returns (folder, {(patient, slice): (image,
    masks)})."""
    root, written = str(tmp_path / "crops"), {}
    for k, (split, patients) in enumerate(CROPS_PATIENTS.items()):
        written.update(_write_lidc_crops(root, split, seed=k, patients=patients))
    return root, written


def test_lidc_crops_manifest_is_the_split_of_the_folders_and_bound_to_their_files(crops_dir):
    root, _ = crops_dir
    manifest = lidc.crops_manifest(root)
    assert manifest == lidc.crops_manifest(root)
    assert manifest["dataset"] == "lidc" and manifest["seed"] is None
    assert manifest["splits"] == {s: sorted(p) for s, p in CROPS_PATIENTS.items()}
    assert manifest["fractions"] == [0.6, 0.2, 0.2]
    _assert_partition(manifest, sum(CROPS_PATIENTS.values(), ()))
    # The same files at another place hash the same: paths are relative to the folder.
    os.rename(root, root + "-moved")
    assert lidc.crops_manifest(root + "-moved") == manifest
    os.rename(root + "-moved", root)
    # One more slice: the files are not those the manifest was made from.
    extra = os.path.join(root, "val", "images", "LIDC-IDRI-0004", "z-120.0_c2.png")
    with open(os.path.join(root, "val", "images", "LIDC-IDRI-0004", "z-105.0_c0.png"),
              "rb") as f:
        png = f.read()
    with open(extra, "wb") as f:
        f.write(png)
    for g in range(4):
        with open(extra.replace("images", "gt").replace(".png", f"_l{g}.png"), "wb") as f:
            f.write(png)
    with pytest.raises(ValueError, match=r"sha256 [0-9a-f]{64} does not match [0-9a-f]{64}, "
                                         r"the sha256 of the data at .*crops \(the paths and "
                                         r"sizes of its files\)"):
        data.load("lidc", "val", data_dir=root, split_manifest=manifest)
    assert lidc.crops_manifest(root)["sha256"] != manifest["sha256"]


def test_lidc_crops_with_a_manifest_pool_the_folders_and_take_its_patients(crops_dir, tmp_path):
    root, written = crops_dir
    manifest = _moved(lidc.crops_manifest(root), "LIDC-IDRI-0001", "test")
    path = tmp_path / "split.json"
    path.write_text(json.dumps(manifest))
    test = data.load("lidc", "test", data_dir=root, image_size=16, split_manifest=str(path))
    got = list(test.dataset.as_numpy_iterator())
    chosen = [key for key in written if key[0] in ("LIDC-IDRI-0001", "LIDC-IDRI-0005")]
    assert len(got) == len(chosen) == 4
    assert _sorted_bytes(np.round(image[..., 0] * 255).astype(np.uint8) for image, _ in got) \
        == _sorted_bytes(_crop(written[key][0], 16).astype(np.uint8) for key in chosen)
    # Training keeps its random windows: each example a 16x16 window of a train patient's tile.
    train = data.load("lidc", "train", data_dir=root, image_size=16, split_manifest=manifest)
    tiles = [written[key][0] for key in written if key[0] in ("LIDC-IDRI-0002", "LIDC-IDRI-0003")]
    examples = list(train.dataset.as_numpy_iterator())
    assert len(examples) == 4
    for image, _ in examples:
        assert any(np.allclose(image[..., 0], tile[dy:dy + 16, dx:dx + 16] / 255.0)
                   for tile in tiles for dy in range(5) for dx in range(5))


def test_lidc_says_when_a_split_is_not_the_published_one(crops_dir, monkeypatch):
    root, _ = crops_dir
    assert lidc.crops_summary(root) == {
        split: {"images": 2 * len(p), "patients": len(p), "published": lidc.PUBLISHED_CROPS[split]}
        for split, p in CROPS_PATIENTS.items()}
    with pytest.warns(lidc.SplitCountWarning, match=r"'val' split has 2 images of 1 patients, "
                                                    r"the published one 1993 images of 111 "
                                                    r"patients .*not be comparable"):
        data.load("lidc", "val", data_dir=root, image_size=16)
    assert lidc.PUBLISHED_CROPS == {"train": {"images": 8843, "patients": 530},
                                    "val": {"images": 1993, "patients": 111},
                                    "test": {"images": 1980, "patients": 103}}
    for split, published in lidc.PUBLISHED_CROPS.items():
        assert lidc.count_difference(split, published["images"], published["patients"]) is None
    assert "529 patients, the published one 8843 images of 530 patients" in \
        lidc.count_difference("train", 8843, 529)
    # A folder with the published counts (here: published as written) loads without a word.
    monkeypatch.setitem(lidc.PUBLISHED_CROPS, "val", {"images": 2, "patients": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error", lidc.SplitCountWarning)
        data.load("lidc", "val", data_dir=root, image_size=16)


# PHiSeg's hdf5: uids (hashed patients), split as the file's groups hold it.

@pytest.fixture
def hdf5_path(tmp_path):
    path = str(tmp_path / "data_lidc.hdf5")
    return path, _write_phiseg_hdf5(path, (("train", 6), ("val", 2), ("test", 4)), per_patient=2)


def test_phiseg_manifest_is_the_files_split_and_bound_to_its_bytes(hdf5_path, tmp_path):
    path, written = hdf5_path
    manifest = phiseg.split_manifest(path)
    assert manifest == phiseg.split_manifest(path)
    assert manifest["dataset"] == "lidc-phiseg" and manifest["seed"] is None
    assert manifest["splits"] == {s: sorted(set(str(u) for u in written[s][2]))
                                  for s in manifests.SPLITS}
    assert manifest["fractions"] == [0.5, 0.1667, 0.3333]  # 3, 1 and 2 patients
    _assert_partition(manifest, [str(u) for s in written for u in written[s][2]])
    other = str(tmp_path / "other.hdf5")
    _write_phiseg_hdf5(other, (("train", 6), ("val", 2), ("test", 4)), per_patient=2, seed=1)
    with pytest.raises(ValueError, match=r"sha256 [0-9a-f]{64} does not match .*its bytes"):
        data.load("lidc-phiseg", "val", data_dir=other, split_manifest=manifest)


def test_phiseg_with_a_manifest_pools_the_groups_and_takes_its_patients(hdf5_path):
    path, written = hdf5_path
    moved = str(written["train"][2][0])
    manifest = _moved(phiseg.split_manifest(path), moved, "val")
    got = list(data.load("lidc-phiseg", "val", data_dir=path,
                         split_manifest=manifest).dataset.as_numpy_iterator())
    # By hand: the first train patient's two images, then the val group.
    expected = [(written[s][0][k], written[s][1][k]) for s in manifests.SPLITS
                for k, uid in enumerate(written[s][2]) if str(uid) in manifest["splits"]["val"]]
    assert len(got) == len(expected) == 4
    for (image, masks), (want_image, want_masks) in zip(got, expected):
        np.testing.assert_allclose(image[..., 0], want_image, atol=1e-6)
        np.testing.assert_array_equal(masks, want_masks)
    assert len(list(data.load("lidc-phiseg", "train", data_dir=path,
                              split_manifest=manifest).dataset)) == 4


# Your folders: image file names, split by a seed or by subfolders.

NAMES = [f"case{i:02d}" for i in range(10)]


def _folder_names(source, written):
    """The written names of a source's images (8x8, padded to 16x16), in its order."""
    by_image = {grey.tobytes(): name for name, (grey, _) in written.items()}
    return [by_image[np.round(image[:8, :8, 0] * 255).astype(np.uint8).tobytes()]
            for image, _ in source.dataset.as_numpy_iterator()]


def test_folder_manifest_records_the_seed_split_and_replaces_it(tmp_path):
    root = str(tmp_path)
    written = _write_folder(root, NAMES, size=(8, 8))
    images, masks = str(tmp_path / "images"), str(tmp_path / "masks")
    manifest = folders.split_manifest(images, masks, seed=3)
    assert manifest == folders.split_manifest(images, masks, seed=3)
    assert manifest["splits"] != folders.split_manifest(images, masks, seed=4)["splits"]
    assert manifest["dataset"] == "folder" and manifest["seed"] == 3
    assert manifest["fractions"] == [0.8, 0.1, 0.1]
    _assert_partition(manifest, [f"{n}.png" for n in NAMES])
    for split in manifests.SPLITS:  # the manifest is the split that seed draws
        seeded = _folder_names(data.load("folder", split, data_dir=root, seed=3), written)
        assert [f"{n}.png" for n in seeded] == manifest["splits"][split]
    moved = _moved(manifest, manifest["splits"]["train"][0], "val")
    got = _folder_names(data.load("folder", "val", data_dir=root, split_manifest=moved), written)
    assert [f"{n}.png" for n in got] == sorted(moved["splits"]["val"]) and len(got) == 2
    _write_folder(root, ["zz"], size=(8, 8))  # one more image: other data
    with pytest.raises(ValueError, match=r"sha256 [0-9a-f]{64} does not match"):
        data.load("folder", "val", data_dir=root, split_manifest=moved)


def test_folder_manifest_of_subfolders_is_their_split_and_a_manifest_pools_them(tmp_path):
    root = tmp_path / "data"
    written = {}
    for k, (split, names) in enumerate((("train", NAMES[:6]), ("val", NAMES[6:8]),
                                        ("test", NAMES[8:]))):
        written.update(_write_folder(str(tmp_path / split), names, size=(8, 8), seed=k))
        for kind in ("images", "masks"):
            os.makedirs(root / kind, exist_ok=True)
            os.rename(tmp_path / split / kind, root / kind / split)
    manifest = data.make_manifest("folder", str(root), seed=5)
    assert manifest["seed"] is None and manifest["fractions"] == [0.6, 0.2, 0.2]
    assert manifest["splits"]["val"] == ["case06.png", "case07.png"]
    _assert_partition(manifest, [f"{n}.png" for n in NAMES])
    moved = _moved(manifest, "case00.png", "test")
    got = _folder_names(data.load("folder", "test", data_dir=str(root), split_manifest=moved),
                        written)
    assert sorted(got) == ["case00", "case08", "case09"]
    os.remove(root / "masks" / "test" / "case09_2.png")
    with pytest.raises(ValueError, match="sha256"):
        data.load("folder", "test", data_dir=str(root), split_manifest=moved)


def test_the_data_manifest_command_takes_every_dataset_with_manifests(crops_dir, tmp_path,
                                                                      capsys):
    root, _ = crops_dir
    assert cli.main(["data", "manifest", "--dataset", "lidc", "--data-dir", root]) == 0
    assert json.loads(capsys.readouterr().out) == lidc.crops_manifest(root)
    _write_folder(str(tmp_path / "folder"), NAMES, size=(8, 8))
    out = tmp_path / "folder.json"
    assert cli.main(["data", "manifest", "--dataset", "folder", "--data-dir",
                     str(tmp_path / "folder"), "--seed", "2", "--out", str(out)]) == 0
    assert "8 train, 1 val, 1 test ids (seed 2)" in capsys.readouterr().out
    assert json.loads(out.read_text()) == folders.split_manifest(
        str(tmp_path / "folder" / "images"), str(tmp_path / "folder" / "masks"), seed=2)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="file names of any bytes: Linux file systems")
def test_a_file_name_that_is_not_utf_8_is_in_the_manifest_and_loads(tmp_path, capsys):
    root = tmp_path / "folder"
    written = _write_folder(str(root), NAMES, size=(8, 8))
    folder = os.fsencode(root)  # case03 renamed to the byte 0xff: no UTF-8 text
    os.rename(folder + b"/images/case03.png", folder + b"/images/\xff.png")
    for rater in range(3):
        os.rename(folder + b"/masks/case03_%d.png" % rater, folder + b"/masks/\xff_%d.png" % rater)
    written[os.fsdecode(b"\xff")] = written.pop("case03")
    out = tmp_path / "split.json"
    assert cli.main(["data", "manifest", "--dataset", "folder", "--data-dir", str(root),
                     "--out", str(out)]) == 0
    assert "8 train, 1 val, 1 test ids (seed 0)" in capsys.readouterr().out
    manifest = json.loads(out.read_text())
    _assert_partition(manifest, [f"{n}.png" for n in NAMES if n != "case03"] + ["\udcff.png"])
    split = next(s for s in manifests.SPLITS if "\udcff.png" in manifest["splits"][s])
    got = _folder_names(data.load("folder", split, data_dir=str(root), split_manifest=str(out)),
                        written)
    assert [f"{n}.png" for n in got] == manifest["splits"][split]
    assert cli.main(["data", "manifest", "--dataset", "folder", "--data-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out) == manifest


def test_a_folder_of_pickles_whose_name_holds_glob_characters_has_a_manifest(tmp_path):
    folder = tmp_path / "lidc[1]*"  # glob would read [1] as a set of characters, * as any
    folder.mkdir()
    (folder / "part.pickle").write_bytes(pickle.dumps(_lidc_entries(num_series=5)))
    assert manifests.data_files(str(folder)) == [str(folder / "part.pickle")]
    _assert_partition(lidc.split_manifest(str(folder)), [f"1.3.6.1.{s}" for s in range(5)])


@pytest.mark.parametrize("text, problem", [
    ("{", r"it is not JSON text \(JSONDecodeError: Expecting property name"),
    ("\xff\xfe", r"it is not JSON text \(UnicodeDecodeError"),
    ("[]", r"it holds a JSON list, not an object"),
    ('{"dataset": "folder"}', r"it has no \['seed', 'fractions', 'sha256', 'splits'\]"),
    ('{"dataset": 3, "seed": 0, "fractions": [1, 0, 0], "sha256": "", "splits": {}}',
     r"its 'dataset' must be a dataset's name \(a string\); it holds 3\."),
    ('{"dataset": "folder", "seed": "0", "fractions": [1, 0, 0], "sha256": "", "splits": {}}',
     r"its 'seed' must be an integer, or null; it holds \"0\""),
    ('{"dataset": "folder", "seed": 0, "fractions": 1, "sha256": "", "splits": {}}',
     r"its 'fractions' must be three shares"),
    ('{"dataset": "folder", "seed": 0, "fractions": [1, 0, 0], "sha256": [], "splits": {}}',
     r"its 'sha256' must be a hex digest"),
    ('{"dataset": "folder", "seed": 0, "fractions": [1, 0, 0], "sha256": "", "splits": '
     '{"train": 5, "val": [], "test": []}}', r"its 'splits' must be an object of \['train', "
                                             r"'val', 'test'\], each a list of ids \(strings\); "
                                             r"it holds \{\"train\": 5"),
    ('{"dataset": "folder", "seed": 0, "fractions": [1, 0, 0], "sha256": "", "splits": '
     '{"train": [1], "val": [], "test": []}}', r"its 'splits' must be"),
])
def test_a_malformed_manifest_file_is_named_with_what_is_wrong(tmp_path, text, problem):
    root = str(tmp_path / "folder")
    _write_folder(root, NAMES, size=(8, 8))
    path = tmp_path / "split.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError) as refused:
        data.load("folder", "train", data_dir=root, split_manifest=str(path))
    message = str(refused.value)
    assert message.startswith(f"{path} is not a split manifest: ") and "\n" not in message
    assert re.search(problem, message), message
    assert message.endswith("Write one with tfprobunet data manifest.")


def test_as_source_passes_a_manifest_to_load_and_refuses_it_for_a_split_dataset(tmp_path):
    _write_folder(str(tmp_path), NAMES, size=(16, 16))  # no padding
    manifest = _moved(folders.split_manifest(str(tmp_path / "images"), str(tmp_path / "masks")),
                      "case00.png", "test")
    source = data.as_source("folder", "test", data_dir=str(tmp_path), split_manifest=manifest)
    assert len(list(source.dataset)) == len(manifest["splits"]["test"])
    for dataset in (source, source.dataset):
        with pytest.raises(ValueError, match=r"chooses the examples of a dataset loaded by name"):
            data.as_source(dataset, num_classes=2, split_manifest=manifest)


def test_the_sha256_of_a_folder_dataset_covers_its_files_paths_and_sizes(tmp_path):
    for name in ("a.png", "sub/b.png"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_bytes(b"0123")
    files = [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.png")]
    digest = manifests.sha256(str(tmp_path), files)
    assert digest == manifests.sha256(str(tmp_path), files[::-1])
    (tmp_path / "sub" / "b.png").write_bytes(b"3210")  # same size: its bytes are not read
    assert manifests.sha256(str(tmp_path), files) == digest
    (tmp_path / "sub" / "b.png").write_bytes(b"01234")
    assert manifests.sha256(str(tmp_path), files) != digest
    (tmp_path / "sub" / "b.png").write_bytes(b"0123")
    os.rename(tmp_path / "a.png", tmp_path / "c.png")
    assert manifests.sha256(str(tmp_path), [str(tmp_path / "c.png"), files[1]]) != digest


@pytest.mark.slow
def test_train_records_the_manifest_and_evaluate_tests_its_patients(pickle_path, tmp_path,
                                                                     capsys):
    """`train --split-manifest` trains on the manifest's train patients and records the file
    in train_config.json; `evaluate` of that run tests the manifest's test patients."""
    manifest = lidc.split_manifest(pickle_path, seed=5)
    manifest_path = str(tmp_path / "split.json")
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", "lidc-pickle", "--data-dir", pickle_path,
                     "--split-manifest", manifest_path, "--workdir", workdir, "--epochs", "1",
                     "--steps-per-epoch", "1", "--batch-size", "2", "--num-channels", "8,16",
                     "--convs-per-block", "1", "--latent-dim", "2"]) == 0
    with open(os.path.join(workdir, "train_config.json")) as f:
        assert json.load(f)["split_manifest"] == manifest_path
    out = str(tmp_path / "eval")
    assert cli.main(["evaluate", "--model", os.path.join(workdir, "model.keras"), "--out", out,
                     "--samples", "2"]) == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    series = lidc.pickle_arrays(pickle_path)[2]
    assert report["num_images"] == sum(s in manifest["splits"]["test"] for s in series)
    # Another manifest for the same run is another run: refused.
    manifest["splits"]["train"], manifest["splits"]["test"] = (manifest["splits"]["test"],
                                                               manifest["splits"]["train"])
    other = str(tmp_path / "other.json")
    with open(other, "w") as f:
        json.dump(manifest, f)
    message = cli_error(capsys, ["train", "--dataset", "lidc-pickle", "--data-dir", pickle_path,
                                 "--split-manifest", other, "--workdir", workdir, "--epochs", "2",
                                 "--steps-per-epoch", "1", "--batch-size", "2",
                                 "--num-channels", "8,16", "--convs-per-block", "1",
                                 "--latent-dim", "2"])
    assert "split_manifest" in message


# MoSE's split of the LIDC pickle (gaozhitong/MoSE-AUSeg, data/preprocess/lidc_data_loader.py):
#     unique_subjects = np.unique(series_uid)
#     train_and_val_ids, test = train_test_split(unique_subjects, test_size=0.2, random_state=0)
#     train, val = train_test_split(train_and_val_ids, test_size=0.2, random_state=0)
# Transcribed from scikit-learn 1.9.1 (numpy 2.4.6), running exactly those two calls on
# np.unique([f"s{i:02d}" for i in range(n)]) for n = 25 and n = 37; lists in sklearn's order.
SKLEARN_MOSE = {
    25: {"train_and_val": ["s22", "s17", "s24", "s23", "s14", "s01", "s10", "s13", "s08", "s06",
                           "s18", "s04", "s09", "s07", "s20", "s03", "s00", "s21", "s15", "s12"],
         "train": ["s18", "s21", "s10", "s07", "s14", "s24", "s01", "s20", "s06", "s13", "s00",
                   "s04", "s23", "s22", "s03", "s09"],
         "val": ["s15", "s17", "s12", "s08"],
         "test": ["s05", "s02", "s19", "s16", "s11"]},
    37: {"train_and_val": ["s02", "s25", "s30", "s32", "s36", "s34", "s29", "s33", "s08", "s13",
                           "s05", "s17", "s14", "s07", "s27", "s01", "s12", "s26", "s24", "s06",
                           "s23", "s04", "s18", "s21", "s19", "s09", "s35", "s03", "s00"],
         "train": ["s03", "s35", "s34", "s27", "s08", "s12", "s18", "s26", "s25", "s05", "s00",
                   "s29", "s36", "s24", "s06", "s13", "s33", "s19", "s32", "s02", "s04", "s01",
                   "s14"],
         "val": ["s30", "s23", "s21", "s07", "s17", "s09"],
         "test": ["s22", "s20", "s16", "s10", "s31", "s28", "s15", "s11"]},
}


@pytest.mark.parametrize("n", sorted(SKLEARN_MOSE))
def test_train_test_split_gives_sklearns_output(n):
    expected = SKLEARN_MOSE[n]
    ids = np.unique([f"s{i:02d}" for i in range(n)])
    rest, test = manifests.train_test_split(ids, test_size=0.2, random_state=0)
    assert (rest.tolist(), test.tolist()) == (expected["train_and_val"], expected["test"])
    train, val = manifests.train_test_split(rest, test_size=0.2, random_state=0)
    assert (train.tolist(), val.tolist()) == (expected["train"], expected["val"])
    assert manifests.mose_split(ids[::-1]) == {
        s: sorted(expected[s]) for s in manifests.SPLITS}  # np.unique first: order read is moot
    # As sklearn: "the resulting train set will be empty" is refused.
    with pytest.raises(ValueError, match="train set would be empty"):
        manifests.train_test_split(["a"], test_size=0.2, random_state=0)


@pytest.fixture
def mose_pickle(tmp_path):
    """A pickle whose 25 series (`s00`..`s24`, 2 slices each) are read in the reverse of their
    sorted order."""
    rng = np.random.default_rng(0)
    entries = {f"key{24 - i:02d}_{k}": {
        "image": rng.random((8, 8)).astype(np.float32),
        "masks": [(rng.random((8, 8)) < 0.3).astype(np.uint8) for _ in range(4)],
        "series_uid": f"s{i:02d}"} for i in range(25) for k in range(2)}
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(entries))
    return str(path)


def test_the_mose_manifest_is_moses_split_of_the_series(mose_pickle, tmp_path, capsys):
    manifest = data.make_manifest("lidc-pickle", mose_pickle, split="mose")
    assert manifest["splits"] == {s: sorted(SKLEARN_MOSE[25][s]) for s in manifests.SPLITS}
    assert manifest["split"] == "mose" and manifest["seed"] == 0
    assert manifest["fractions"] == [0.64, 0.16, 0.2]
    assert manifest["sha256"] == lidc.split_manifest(mose_pickle)["sha256"]
    test = data.load("lidc-pickle", "test", data_dir=mose_pickle, split_manifest=manifest)
    assert len(list(test.dataset)) == 2 * len(SKLEARN_MOSE[25]["test"])
    out = tmp_path / "mose.json"
    assert cli.main(["data", "manifest", "--dataset", "lidc-pickle", "--split", "mose",
                     "--data-dir", mose_pickle, "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == manifest
    assert "16 train, 4 val, 5 test ids (MoSE's split" in capsys.readouterr().out
    # The default stays the library's seeded split, without a "split" key.
    assert "split" not in data.make_manifest("lidc-pickle", mose_pickle)
    for argv, expected in (
            (["--dataset", "lidc-pickle", "--seed", "3"], "random_state 0. Received seed=3"),
            (["--dataset", "lidc-pickle", "--fractions", "0.8,0.1,0.1"], "Received fractions="),
            (["--dataset", "lidc-phiseg"], "MoSE's split is of lidc-pickle (the PyTorch "
                                           "port's pickle: its series uids). Received "
                                           "dataset 'lidc-phiseg'")):
        line = cli_error(capsys, ["data", "manifest", "--split", "mose", "--data-dir",
                                  mose_pickle, *argv])
        assert expected in line, line


def test_the_manifest_command_documents_its_splits(capsys):
    with pytest.raises(SystemExit):
        cli.main(["data", "manifest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--split {seed,mose}" in text and "gaozhitong/MoSE-AUSeg" in text, text
