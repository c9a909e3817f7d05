"""Masks saved as 0/255 (255 is the ignore label) are refused by every entry point where masks
come in, with the conversion in the message; the same masks as 0/1 pass."""

import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfprobunet
from tfprobunet.data import checks, pipeline, synthetic
from conftest import tiny_model

REFUSED = r"0/255.*masks > 127"


def _graders(scale, count=8, size=16):
    """*graders* images and their 4 masks per image, foreground saved as `scale` (1 or 255)."""
    images, annotations = synthetic.graders_arrays(count, size, seed=0)
    assert annotations.max() == 1 and (annotations == 1).any()
    return images, (annotations * scale).astype(np.int32)


def _dataset(scale):
    return tf.data.Dataset.from_tensor_slices(_graders(scale))


def _batches(scale):
    images, annotations = _graders(scale)
    return tf.data.Dataset.from_tensor_slices((images, annotations[:, 0])).batch(4)


@pytest.mark.parametrize("scale", [1, 255])
def test_npz_loader(tmp_path, scale):
    images, annotations = _graders(scale)
    np.savez(tmp_path / "train.npz", images=images, annotations=annotations.astype(np.uint8))
    if scale == 255:
        with pytest.raises(ValueError, match=REFUSED):
            tfprobunet.data.load("npz", "train", data_dir=str(tmp_path))
    else:
        assert tfprobunet.data.load("npz", "train", data_dir=str(tmp_path)).num_classes == 2


@pytest.mark.parametrize("value", [128, 2])
def test_npz_loader_refuses_0_and_another_single_value(tmp_path, value):
    images, annotations = _graders(value)
    np.savez(tmp_path / "train.npz", images=images, annotations=annotations)
    with pytest.raises(ValueError, match=rf"0/{value}.*masks > {value // 2}"):
        tfprobunet.data.load("npz", "train", data_dir=str(tmp_path))


@pytest.mark.parametrize("scale", [1, 255])
@pytest.mark.parametrize("entry", ["check_source", "training_pipeline", "evaluation_pipeline",
                                   "as_source"])
def test_sources_and_pipelines(scale, entry):
    call = {
        "check_source": lambda d: tfprobunet.data.check_source(
            tfprobunet.data.Source(d, 2, None, None)),
        "training_pipeline": lambda d: pipeline.training_pipeline(d, 4, num_classes=2),
        "evaluation_pipeline": lambda d: pipeline.evaluation_pipeline(d, 4, num_classes=2),
        "as_source": lambda d: tfprobunet.data.as_source(d, num_classes=2),
    }[entry]
    if scale == 255:
        with pytest.raises(ValueError, match=REFUSED):
            call(_dataset(scale))
    else:
        call(_dataset(scale))


def test_pipelines_refuse_0_255_even_without_num_classes():
    with pytest.raises(ValueError, match=REFUSED):
        pipeline.training_pipeline(_dataset(255), 4)


def test_labels_above_num_classes_are_refused_by_the_pipelines_too():
    images, annotations = _graders(1)
    annotations[0, 0, 0, 0] = 2
    dataset = tf.data.Dataset.from_tensor_slices((images, annotations))
    with pytest.raises(ValueError, match=r"labels in \[0, 1\] \(num_classes=2\) or 255 "
                                         r"\(ignore\); they hold \[2\]"):
        pipeline.evaluation_pipeline(dataset, 4, num_classes=2)
    with pytest.raises(ValueError, match=r"labels in \[0, 1\]"):
        tfprobunet.data.check_source(tfprobunet.data.Source(dataset, 2, None, None))


@pytest.mark.parametrize("scale", [1, 255])
def test_fit_on_a_dataset_arrays_and_validation_data(scale):
    model = tiny_model()
    model.compile(optimizer="adam")
    batches = _batches(scale)
    images, annotations = _graders(scale)
    calls = [
        lambda: model.fit(batches, epochs=1, verbose=0),
        lambda: model.fit(images, annotations[:, 0], batch_size=4, epochs=1, verbose=0),
        lambda: model.fit(_batches(1), validation_data=batches, epochs=1, verbose=0),
    ]
    for call in calls:
        if scale == 255:
            with pytest.raises(ValueError, match=REFUSED):
                call()
        else:
            call()
    if scale == 255:
        assert not model.optimizer.iterations.numpy(), "a step ran on 0/255 masks"


@pytest.mark.parametrize("scale", [1, 255])
def test_train_and_evaluate(tmp_path, scale):
    model = tiny_model()
    model.build((None, 16, 16, 1))
    if scale == 255:
        with pytest.raises(ValueError, match=REFUSED):
            tfprobunet.train(str(tmp_path / "run"), dataset=_dataset(scale), num_classes=2,
                             epochs=1, steps_per_epoch=1, batch_size=4, verbose=0, **_tiny())
        assert not os.path.exists(tmp_path / "run" / "model.keras")
        with pytest.raises(ValueError, match=REFUSED):
            tfprobunet.evaluate(model, _dataset(scale), sample_counts=(2,), verbose=0)
    else:
        report = tfprobunet.evaluate(model, _dataset(scale), sample_counts=(2,), verbose=0)
        assert report["num_images"] == 8


def _tiny():
    return dict(num_channels=[8, 16, 32], convs_per_block=2, latent_dim=2, fcomb_layers=2)


def test_check_labels_worked_examples():
    # Hand-made: 0/1 with an ignored border passes; 0/255 alone is refused.
    mask = np.zeros((6, 6), np.int32)
    mask[2:4, 2:4] = 1
    mask[0] = 255
    checks.check_labels(mask, 2)
    with pytest.raises(ValueError, match=REFUSED):
        checks.check_labels(np.where(mask == 1, 255, 0), 2)
    with pytest.raises(ValueError, match=r"labels in \[0, 1\].*they hold \[-1\]"):
        checks.check_labels(np.where(mask == 1, -1, mask), 2)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\].*they hold \[3, 7\]"):
        checks.check_labels(np.array([0, 1, 2, 3, 7]), 3)
    with pytest.raises(ValueError, match=r"only the labels 0 and 128.*masks > 64"):
        checks.check_labels(np.where(mask == 1, 128, 0), 2)


def test_mostly_ignored_labels_warn_with_the_count():
    mask = np.full((4, 5), 255)
    mask[0, :3] = (0, 1, 1)  # 3 labelled pixels of 20
    with pytest.warns(UserWarning, match=r"17 of 20 label pixels \(85%\)"):
        checks.check_labels(mask, 2)
    mask[:2] = 1  # 10 of 20 ignored: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checks.check_labels(mask, 2)


@pytest.mark.parametrize("labels, expected", [
    ([[0, 1], [1, 0]], 2), ([[0, 0], [0, 0]], 2), ([[0, 2], [255, 1]], 3),
    ([[255, 255]], 2), ([[4, 255]], 5)])
def test_the_classes_labels_imply_ignore_255_and_are_at_least_two(labels, expected):
    """Hand-worked: the largest label but 255, plus one, at least 2 (what the npz and folder
    loaders assume when nothing states `num_classes`)."""
    assert checks.implied_num_classes(np.array(labels)) == expected
