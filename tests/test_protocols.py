"""`evaluate(protocol=...)`: what each protocol fixes and refuses, and that its conventions
reach the numbers (against the metrics recomputed on the same samples)."""

import pickle
import warnings

import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import data, evaluation, metrics, protocols
from tfprobunet.data import lidc
from conftest import tiny_model
from fixtures import lidc_entries as _lidc_entries
from fixtures import write_phiseg_hdf5 as _write_phiseg_hdf5


def test_a_published_protocol_refuses_other_data_splits_and_sample_counts():
    kohl = protocols.get("kohl")
    assert protocols.resolve(kohl, "lidc", "test", evaluation.SAMPLE_COUNTS,
                             evaluation.SAMPLE_COUNTS) == ("test", (1, 4, 8, 16))
    # The default counts give way to the protocol's; others are refused.
    assert protocols.resolve(protocols.get("phiseg"), "lidc-pickle", "test", (1, 4, 8, 16),
                             evaluation.SAMPLE_COUNTS) == ("test", (1, 16, 100))
    with pytest.raises(ValueError, match="defined on lidc .* Received dataset 'graders'"):
        protocols.resolve(kohl, "graders", "test", (16,), evaluation.SAMPLE_COUNTS)
    with pytest.raises(ValueError, match="evaluates the 'test' split. Received split='val'"):
        protocols.resolve(kohl, "lidc", "val", (16,), evaluation.SAMPLE_COUNTS)
    with pytest.raises(ValueError, match=r"scores \[1, 4, 8, 16\] samples. Received "
                                         r"sample_counts=\[2, 32\]"):
        protocols.resolve(kohl, "lidc", "test", (2, 32), evaluation.SAMPLE_COUNTS)
    with pytest.raises(ValueError, match="`protocol` must be one of"):
        protocols.get("hpunet")
    # custom takes what it is given.
    assert protocols.resolve(protocols.get("custom"), "graders", "val", (3, 2, 3),
                             evaluation.SAMPLE_COUNTS) == ("val", (2, 3))


def test_the_table_prints_the_reports_numbers_in_the_protocols_columns():
    report = {"dataset": "lidc-phiseg", "split": "test", "num_images": 3,
              "ged": {"100": {"mean": 0.25, "sem": 0.0125}}, "ncc": {"mean": 0.5, "sem": 0.01},
              "hm_iou": {"mean": 0.6, "sem": 0.02}, "ece": 0.03,
              "protocol": protocols.conventions(protocols.get("phiseg"), (1, 16, 100))}
    assert protocols.table(report) == [
        "| Method | Split | D²_GED (100) ↓ | S_NCC (100) ↑ |",
        "|---|---|---|---|",
        "| this model | lidc-phiseg test (3 images) | 0.2500 ± 0.0125 | 0.5000 ± 0.0100 |",
        "",
        "Conventions: protocol phiseg: 100 samples; GED over all pairs, self-pairs included; "
        "d = 0 for two empty masks; HM-IoU: annotations tiled to the sample count, every sample "
        "matched."]


def test_a_protocols_conventions_reach_the_report():
    """A protocol of one's own, D-Persona's d = 1 for two empty masks, GED without self-pairs
    and one sample per annotation in HM-IoU: the report equals the metrics with those
    arguments on the same samples, and differs from the default where the conventions do."""
    source = data.load("graders", "test", image_size=16, num_examples=6)
    model = tiny_model(2)
    own = protocols.Protocol("mine", None, None, None, 4, False, 1.0, "one_per_annotation",
                             ("ged", "hm_iou"), "")
    report = evaluation.evaluate(model, source, sample_counts=(4,), batch_size=6, verbose=0,
                                 protocol=own, per_image=True, num_figure_examples=0)
    default = evaluation.evaluate(model, source, sample_counts=(4,), batch_size=6, verbose=0,
                                  per_image=True, num_figure_examples=0)
    images, annotations = next(iter(source.dataset.batch(6)))
    masks = np.argmax(model.sample(images, 4, seed=tf.constant([0, 0])), -1)
    annotations = annotations.numpy()
    ged = metrics.generalized_energy_distance(masks, annotations, 2, self_pairs=False,
                                              empty_pair=1.0)
    np.testing.assert_allclose(report["ged_per_image"]["4"], ged)
    np.testing.assert_allclose(report["per_image"]["hm_iou"], metrics.hungarian_iou(
        masks, annotations, 2, form="one_per_annotation", empty_pair=1.0))
    np.testing.assert_allclose(default["ged_per_image"]["4"],
                               metrics.generalized_energy_distance(masks, annotations, 2))
    assert report["protocol"] == {"name": "mine", "papers": "", "samples": 4,
                                  "self_pairs": False, "empty_pair": 1.0,
                                  "hm_iou": "one_per_annotation"}
    # graders has empty masks: d = 1 for two of them moves the GED.
    assert report["ged"]["4"]["mean"] != default["ged"]["4"]["mean"]


def test_the_phiseg_protocol_on_the_pickle_without_a_manifest_says_its_split_is_no_papers(
        tmp_path):
    """lidc-pickle without a split manifest is split by the library's own seed, which no paper
    used: evaluate says so in one line, with the commands that give a published split; with a
    manifest, or on PHiSeg's own hdf5 (which comes split), it says nothing."""
    pickle_path = str(tmp_path / "data_lidc.pickle")
    with open(pickle_path, "wb") as f:
        pickle.dump(_lidc_entries(num_series=10), f)
    hdf5_path = str(tmp_path / "data_lidc.hdf5")
    _write_phiseg_hdf5(hdf5_path)
    model = tiny_model(2)
    settings = dict(protocol="phiseg", num_examples=1, batch_size=1, verbose=0,
                    num_figure_examples=0)
    with pytest.warns(UserWarning, match="seeded split") as caught:
        evaluation.evaluate(model, "lidc-pickle", data_dir=pickle_path, **settings)
    [warning] = [w for w in caught if "seeded split" in str(w.message)]
    assert warning.category is protocols.UnpublishedSplitWarning
    message = str(warning.message)
    assert "\n" not in message
    assert ("tfprobunet data manifest --dataset lidc-pickle --split mose --data-dir "
            f"{pickle_path} --out FILE" in message), message
    assert "--split-manifest FILE" in message, message
    manifest = lidc.split_manifest(pickle_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", protocols.UnpublishedSplitWarning)
        evaluation.evaluate(model, "lidc-pickle", data_dir=pickle_path,
                            split_manifest=manifest, **settings)
        evaluation.evaluate(model, "lidc-phiseg", data_dir=hdf5_path, **settings)
        # Other protocols do not claim a published split of the pickle.
        evaluation.evaluate(model, "lidc-pickle", data_dir=pickle_path, sample_counts=(2,),
                            **{**settings, "protocol": "custom"})
