"""`lidc-phiseg`: PHiSeg's data_lidc.hdf5, written here as its `lidc_data_loader.prepare_data`
writes it (baumgach/PHiSeg-code), read back exactly; a malformed file is named with its key."""

import h5py
import numpy as np
import pytest

from fixtures import write_phiseg_hdf5 as _write_phiseg_hdf5
from tfprobunet import data
from tfprobunet.data import phiseg


def test_reads_back_the_arrays_phiseg_wrote(tmp_path):
    path = str(tmp_path / "data_lidc.hdf5")
    written = _write_phiseg_hdf5(path)
    for split, (images, masks, uids) in written.items():
        got_images, got_masks, got_uids = phiseg.read(path, split)
        np.testing.assert_allclose(got_images[..., 0], images, atol=1e-7)
        np.testing.assert_array_equal(got_masks, masks)
        np.testing.assert_array_equal(got_uids, uids)
        assert got_images.dtype == np.float32 and got_masks.dtype == np.int32
    source = data.load("lidc-phiseg", "val", data_dir=path)
    examples = list(source.dataset.as_numpy_iterator())
    assert len(examples) == 2 and source.num_classes == 2
    np.testing.assert_array_equal(examples[1][1], written["val"][1][1])


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.pop("val"), r"has no group 'val'"),
    (lambda f: f["val"].pop("labels"), r"has no dataset 'val/labels'"),
    (lambda f: (f["val"].pop("images"), f["val"].create_dataset("images", data=np.zeros(
        (2, 16), np.float64))), r"'val/images' is float64 of shape \(2, 16\)"),
    (lambda f: (f["val"].pop("labels"), f["val"].create_dataset("labels", data=np.zeros(
        (2, 16, 16, 4), np.float32))), r"'val/labels' is float32"),
    (lambda f: (f["val"].pop("labels"), f["val"].create_dataset("labels", data=np.zeros(
        (2, 16, 16, 3), np.uint8))), r"labels \(2, 16, 16, 3\)"),
])
def test_a_malformed_file_names_the_file_and_the_key(tmp_path, damage, message):
    path = str(tmp_path / "data_lidc.hdf5")
    _write_phiseg_hdf5(path)
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(ValueError, match=message) as caught:
        phiseg.read(path, "val")
    assert path in str(caught.value)
