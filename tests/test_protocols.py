"""`evaluate(protocol=...)`: what each protocol fixes and refuses, and that its conventions
reach the numbers (against the metrics recomputed on the same samples)."""

import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import data, evaluation, metrics, protocols
from conftest import tiny_model


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
