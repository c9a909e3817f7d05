"""Split manifests (issue 27): deterministic, disjoint, bound to their data file, used by
`load(..., split_manifest=)`, written by `tfprobunet data manifest`."""

import json
import pickle

import numpy as np
import pytest

from conftest import cli_error
from test_loaders import _lidc_entries
from tfprobunet import cli, data
from tfprobunet.cli import data as cli_data
from tfprobunet.data import lidc, manifests


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
    with pytest.raises(ValueError, match=r"made for other data: its sha256 is [0-9a-f]{64}"):
        lidc.pickle_dataset(str(other), "train", split_manifest=manifest)
    shared = json.loads(json.dumps(manifest))
    shared["splits"]["val"].append(shared["splits"]["train"][0])
    with pytest.raises(ValueError, match="is in both train and val"):
        lidc.pickle_dataset(pickle_path, "train", split_manifest=shared)
    with pytest.raises(ValueError, match="not a split manifest"):
        lidc.pickle_dataset(pickle_path, "train", split_manifest={"splits": {}})
    with pytest.raises(ValueError, match="fixes the split of lidc-pickle; 'lidc' is split by"):
        data.load("lidc", "train", data_dir=str(tmp_path), split_manifest=manifest)


def test_the_data_manifest_command_prints_or_writes_it(pickle_path, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert cli.main(["data", "manifest", "--dataset", "lidc-pickle", "--data-dir", pickle_path,
                     "--seed", "7", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == lidc.split_manifest(pickle_path, seed=7)
    assert "16 train, 4 val, 5 test series" in capsys.readouterr().out
    assert cli.main(["data", "manifest", "--dataset", "lidc-pickle", "--data-dir",
                     pickle_path]) == 0
    assert json.loads(capsys.readouterr().out) == lidc.split_manifest(pickle_path, seed=0)
    line = cli_error(capsys, ["data", "manifest", "--dataset", "lidc-pickle", "--data-dir",
                              str(tmp_path / "missing.pickle")])
    assert "missing.pickle" in line, line


def test_the_command_line_offers_the_datasets_that_have_manifests():
    assert cli_data.MANIFEST_DATASETS == manifests.DATASETS
