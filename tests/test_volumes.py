"""`tfprobunet.data.from_volumes`, the dataset `"volumes"` and `predict_volume` on NIfTI files and
DICOM series written here: a 12-bit CT series written out of order, rescaled and windowed;
slices kept and dropped by hand count; splits by volume; a NIfTI round trip through `train`,
`tfprobunet predict` and back with the input's affine; the missing extra and the CT refused
without a window."""

import json
import math
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import nibabel  # the `medical` extra: requirements.txt and requirements-oldest.txt pin it
import tfprobunet
from fixtures import COLUMN, ROW, write_dicom_series as _write_series, write_nifti
from tfprobunet import cli
from tfprobunet.data import intensity, volumes

AFFINE = np.array([[0.0, -0.8, 0.0, 12.0], [0.7, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 41.0],
                   [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.compat  # the oldest nibabel and pydicom the medical extra admits
def test_a_12_bit_ct_series_written_out_of_order_reaches_the_model_windowed_in_hu(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (10, 12, 5)).astype(np.uint16)  # 12 bits stored
    labels = (rng.random((10, 12, 5)) < 0.3).astype(np.uint16)
    _write_series(str(tmp_path / "images" / "ct1"), raw, -1024, 1, [3, 0, 4, 1, 2])
    _write_series(str(tmp_path / "masks" / "ct1_0"), labels, 0, 1, [1, 4, 2, 0, 3], bits=8)
    source = tfprobunet.data.from_volumes(str(tmp_path / "images"), str(tmp_path / "masks"),
                                          window=(-1000, 400), empty_share=1.0, multiple=1,
                                          fractions=(1, 0, 0))
    examples = list(source.dataset.as_numpy_iterator())
    assert len(examples) == 5
    expected = np.clip((raw.astype(np.float64) - 1024 + 1000) / 1400, 0, 1)
    for k, (image, annotations) in enumerate(examples):  # slice k: the k-th along the normal
        assert image.shape == (10, 12, 1) and image.dtype == np.float32
        np.testing.assert_allclose(image[..., 0], expected[:, :, k], atol=1 / 65535, rtol=0)
        np.testing.assert_array_equal(annotations[0], labels[:, :, k])
    values, affine, _ = volumes.read_volume(str(tmp_path / "images" / "ct1"))
    assert values.dtype == np.int32 and values.min() >= -1024
    np.testing.assert_array_equal(values, raw.astype(np.int32) - 1024)  # Hounsfield units
    # Voxel (row 2, column 3, slice 4): LPS = first position + 3 * 0.6 * row direction +
    # 2 * 0.9 * column direction + 4 * (-2.5, 0, 0); RAS negates x and y.
    lps = np.array([10.0, 5.0, 7.0]) + 1.8 * np.array(ROW) + 1.8 * np.array(COLUMN) + [-10, 0, 0]
    np.testing.assert_allclose(affine @ [2, 3, 4, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)


def _write_nifti(path, array, affine=AFFINE):
    write_nifti(path, array, affine)


def _labelled_cases(root, count=8, slices=10):
    """`count` uint16 volumes 8x6xslices whose every voxel of slice k of volume v holds
    v * 100 + k + 1; three raters: rater "a" labels slices 2 and 3, rater "c" slice 7, rater
    "b" nothing; the other 7 slices are empty."""
    for v in range(count):
        image = np.broadcast_to(np.arange(slices) + v * 100 + 1, (8, 6, slices)).astype(np.uint16)
        _write_nifti(os.path.join(root, "images", f"case{v}.nii.gz"), image)
        for rater, labelled in (("a", (2, 3)), ("b", ()), ("c", (7,))):
            mask = np.zeros((8, 6, slices), np.uint8)
            for k in labelled:
                mask[1:4, 2:5, k] = 1
            _write_nifti(os.path.join(root, "masks", f"case{v}_{rater}.nii.gz"), mask)


def _slices_of(source):
    """`{(volume, slice)}` of the examples, read back from their pixel values."""
    found = []
    for image, annotations in source.dataset.as_numpy_iterator():
        value = int(round(float(image[0, 0, 0]) * 65535)) - 1
        found.append((value // 100, value % 100))
        assert annotations.shape[0] == 3
        assert annotations[:, 1:4, 2:5].any() == (value % 100 in (2, 3, 7))
    return found


@pytest.mark.compat
def test_every_labelled_slice_is_kept_empty_ones_at_the_share_split_by_volume(tmp_path, capsys):
    root = str(tmp_path)
    _labelled_cases(root)
    arguments = dict(empty_share=0.5, fractions=(0.5, 0.25, 0.25), seed=3)
    by_split = {}
    for split in ("train", "val", "test"):
        source = tfprobunet.data.load("volumes", split, data_dir=root, **arguments)
        by_split[split] = found = _slices_of(source)
        volumes_ = sorted({v for v, _ in found})
        for v in volumes_:
            kept = sorted(k for w, k in found if w == v)
            # 3 labelled slices (any rater), round(0.5 * 7) = 4 of the 7 empty ones.
            assert {2, 3, 7} <= set(kept) and len(kept) == 7, kept
        counts = volumes.slice_counts(os.path.join(root, "images"), os.path.join(root, "masks"),
                                      split, **arguments)
        assert sorted(counts) == [f"case{v}" for v in volumes_]
        assert all(c == {"labelled": 3, "empty_kept": 4, "empty_dropped": 3}
                   for c in counts.values())
    owners = [{v for v, _ in found} for found in by_split.values()]
    assert [len(o) for o in owners] == [4, 2, 2]  # 8 volumes: 50/25/25 %
    assert set.union(*owners) == set(range(8)) and sum(map(len, owners)) == 8  # disjoint
    # Another seed draws other empty slices of the same volume.
    other = _slices_of(tfprobunet.data.load("volumes", "train", data_dir=root,
                                            **{**arguments, "seed": 4}))
    assert other != by_split["train"]
    # The split written down by `tfprobunet data manifest` and read back.
    out = str(tmp_path / "split.json")
    cli.main(["data", "manifest", "--dataset", "volumes", "--data-dir", root, "--seed", "3",
              "--fractions", "0.5,0.25,0.25", "--out", out])
    with open(out) as f:
        manifest = json.load(f)
    assert manifest["dataset"] == "volumes"
    assert manifest["splits"]["val"] == [f"case{v}" for v in sorted(owners[1])]
    by_manifest = tfprobunet.data.load("volumes", "val", data_dir=root, split_manifest=out,
                                       empty_share=0.5, seed=3)
    assert _slices_of(by_manifest) == by_split["val"]
    # A rater's missing label volume: named, or read as empty when asked.
    os.remove(os.path.join(root, "masks", "case1_c.nii.gz"))
    with pytest.raises(FileNotFoundError, match=r"case1 has no mask for rater\(s\) "
                                                r"\['c'\]: expected .*case1_c.nii.gz"):
        tfprobunet.data.load("volumes", "train", data_dir=root, fractions=(1, 0, 0))
    source = tfprobunet.data.load("volumes", "train", data_dir=root, fractions=(1, 0, 0),
                                  missing_mask="empty", empty_share=0.0)
    assert sorted(k for v, k in _slices_of(source) if v == 1) == [2, 3]


class _Threshold:
    """A stand-in sampler whose every sample is `image > 0.5`, with logits (0, 20 (x - 0.5))."""
    num_channels, image_channels = [4, 8], 1

    def sample(self, images, num_samples, seed=None):
        x = tf.repeat(tf.convert_to_tensor(images, tf.float32)[:, None, ..., 0], num_samples, 1)
        return tf.stack([tf.zeros_like(x), 20 * (x - 0.5)], axis=-1)


@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.compat
def test_predict_volume_writes_each_slice_back_where_it_came_from(tmp_path, axis):
    values = np.random.default_rng(1).integers(0, 65536, (7, 9, 5)).astype(np.uint16)
    _write_nifti(str(tmp_path / "v.nii.gz"), values)
    written = volumes.predict_volume(_Threshold(), str(tmp_path / "v.nii.gz"),
                                     str(tmp_path / "out"), num_samples=2, axis=axis,
                                     batch_size=2)
    assert [os.path.basename(p) for p in written] == ["sample_00.nii.gz", "sample_01.nii.gz",
                                                      "uncertainty.nii.gz"]
    x = values / 65535.0
    sample, uncertainty = nibabel.load(written[0]), nibabel.load(written[2])
    np.testing.assert_array_equal(np.asanyarray(sample.dataobj), x > 0.5)
    p = 1 / (1 + np.exp(-20 * (x - 0.5)))
    entropy = -(p * np.log(np.clip(p, 1e-12, None)) + (1 - p) * np.log(np.clip(1 - p, 1e-12,
                                                                                  None)))
    np.testing.assert_allclose(np.asanyarray(uncertainty.dataobj), entropy, atol=1e-5)
    np.testing.assert_allclose(sample.affine, AFFINE)


@pytest.mark.slow
def test_nifti_round_trip_train_predict_keeps_the_affine_and_shape(tmp_path):
    root = str(tmp_path / "data")
    rng = np.random.default_rng(2)
    for v in range(4):
        ct = rng.integers(-1100, 500, (24, 20, 6)).astype(np.int16)  # Hounsfield units
        _write_nifti(os.path.join(root, "images", f"p{v}.nii.gz"), ct)
        for rater in range(3):
            mask = np.zeros((24, 20, 6), np.uint8)
            mask[4 + rater:12, 5:12, 1:4] = 1
            _write_nifti(os.path.join(root, "masks", f"p{v}_{rater}.nii.gz"), mask)
    workdir = str(tmp_path / "run")
    tfprobunet.train(workdir, dataset="volumes", data_dir=root, epochs=1, steps_per_epoch=2,
                     batch_size=2, num_channels=[4, 8], convs_per_block=1, latent_dim=2,
                     fcomb_layers=1, verbose=0,
                     data_options={"window": [-1000, 400], "fractions": [0.5, 0.25, 0.25],
                                   "axis": 0})
    model_path = os.path.join(workdir, "model.keras")
    assert intensity.of_run(model_path) == {"rule": "window", "low": -1000.0, "high": 400.0}
    out = str(tmp_path / "out")
    # The command line finds the run's window (the default rule would refuse signed HU) and
    # axis: the same samples as passing both.
    cli.main(["predict", "--model", model_path, "--image",
              os.path.join(root, "images", "p3.nii.gz"), "-n", "3", "--seed", "1", "--out", out])
    direct = volumes.predict_volume(tfprobunet.saving.load_model(model_path),
                                    os.path.join(root, "images", "p3.nii.gz"),
                                    str(tmp_path / "direct"), 3, seed=1, axis=0,
                                    intensity=intensity.rule(window=(-1000, 400)))
    np.testing.assert_array_equal(np.asanyarray(nibabel.load(direct[0]).dataobj),
                                  np.asanyarray(nibabel.load(
                                      os.path.join(out, "p3", "sample_00.nii.gz")).dataobj))
    for name in ("sample_00.nii.gz", "sample_02.nii.gz", "uncertainty.nii.gz"):
        written = nibabel.load(os.path.join(out, "p3", name))
        assert written.shape == (24, 20, 6)
        np.testing.assert_allclose(written.affine, AFFINE, atol=1e-6)
    uncertainty = np.asanyarray(nibabel.load(os.path.join(out, "p3", "uncertainty.nii.gz"))
                                .dataobj)
    assert np.isfinite(uncertainty).all() and 0 <= uncertainty.min() <= uncertainty.max() \
        <= math.log(2) + 1e-6
    assert set(np.unique(np.asanyarray(nibabel.load(
        os.path.join(out, "p3", "sample_00.nii.gz")).dataobj))) <= {0, 1}


def test_signed_ct_without_a_window_is_refused_with_the_advice(tmp_path):
    _write_nifti(str(tmp_path / "images" / "ct.nii.gz"),
                 np.full((4, 4, 2), -1000, np.int16))
    _write_nifti(str(tmp_path / "masks" / "ct_0.nii.gz"), np.ones((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"ct.nii.gz holds int16 values in \[-1000, -1000\].*"
                                         r"pass a window"):
        tfprobunet.data.from_volumes(str(tmp_path / "images"), str(tmp_path / "masks"),
                                     fractions=(1, 0, 0))
    source = tfprobunet.data.from_volumes(str(tmp_path / "images"), str(tmp_path / "masks"),
                                          fractions=(1, 0, 0), window=(-1000, 400))
    assert float(next(source.dataset.as_numpy_iterator())[0].max()) == 0.0
    assert source.num_classes == 2
    # Label 3 (a map of several structures): kept as a class, or refused as a binary mask.
    _write_nifti(str(tmp_path / "masks" / "ct_0.nii.gz"), np.full((4, 4, 2), 3, np.uint8))
    source = tfprobunet.data.from_volumes(str(tmp_path / "images"), str(tmp_path / "masks"),
                                          fractions=(1, 0, 0), window=(-1000, 400),
                                          binarize=False)
    assert source.num_classes == 4
    assert (next(source.dataset.as_numpy_iterator())[1][:, :4, :4] == 3).all()
    with pytest.raises(ValueError, match=r"ct_0.nii.gz holds the values \[3\].*binarize=False"):
        tfprobunet.data.from_volumes(str(tmp_path / "images"), str(tmp_path / "masks"),
                                     fractions=(1, 0, 0), window=(-1000, 400))


@pytest.mark.parametrize("module", ["nibabel", "pydicom"])
def test_without_the_medical_extra_the_error_names_it(tmp_path, monkeypatch, module):
    _write_nifti(str(tmp_path / "v.nii.gz"), np.zeros((2, 2, 2), np.uint8))
    os.makedirs(tmp_path / "series")
    (tmp_path / "series" / "a.dcm").write_bytes(b"")
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it fails
    path = str(tmp_path / ("v.nii.gz" if module == "nibabel" else "series"))
    with pytest.raises(ImportError, match=r'pip install "tfprobunet\[medical\]"'):
        volumes.read_volume(path)
