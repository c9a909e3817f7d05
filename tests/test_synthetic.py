"""The synthetic benchmarks (`tfprobunet.data.synthetic`: *flips* and *graders*, their modes and
truths) and the training pipeline that draws their annotations (`data/pipeline.py`)."""

import numpy as np
import pytest

from tfprobunet.data import pipeline, synthetic


def test_flip_modes_are_the_papers_32_with_closed_form_probabilities():
    modes, probabilities = synthetic.flip_modes()
    assert modes.shape == (32, 5) and len(set(map(tuple, modes))) == 32
    np.testing.assert_allclose(probabilities.sum(), 1.0)
    p = np.array([8, 7, 6, 5, 4]) / 17
    np.testing.assert_allclose(probabilities[0], np.prod(1 - p))      # nothing flipped
    np.testing.assert_allclose(probabilities[31], np.prod(p))         # everything flipped
    # Mode 0b10100: classes 1 and 3 flipped.
    np.testing.assert_allclose(probabilities[0b10100],
                               p[0] * (1 - p[1]) * p[2] * (1 - p[3]) * (1 - p[4]))
    # The paper quotes modes from 10.9 % down to 0.5 %.
    assert round(100 * probabilities.max(), 1) == 10.9
    assert round(100 * probabilities.min(), 1) == 0.5
    assert synthetic.flip_modes([0.5, 0.25])[1].tolist() == [0.375, 0.125, 0.375, 0.125]


def test_flips_annotations_relabel_exactly_the_flipped_classes():
    images, base = synthetic.flips_arrays(6, 32, seed=1)
    (image, annotations), = synthetic.flips(6, 32, seed=1).take(1).as_numpy_iterator()
    np.testing.assert_array_equal(image, images[0])
    modes, _ = synthetic.flip_modes()
    assert annotations.shape == (32, 32, 32) and annotations.dtype == np.int32
    for j, mode in enumerate(modes):
        expected = base[0].copy()
        for c in range(1, 6):
            if mode[c - 1]:
                expected[base[0] == c] = 5 + c
        np.testing.assert_array_equal(annotations[j], expected)
    # Every image shows every flippable class and the background.
    for labels in base:
        assert set(np.unique(labels)) == set(range(6))


def test_flips_classes_are_recognisable_from_the_image():
    """Nearest class-mean colour recovers the unflipped labels: the only ambiguity is the flip."""
    images, labels = synthetic.flips_arrays(40, 32, seed=2)
    means = np.stack([images[labels == c].mean(0) for c in range(6)])
    predicted = np.argmin(((images[..., None, :] - means) ** 2).sum(-1), axis=-1)
    assert np.mean(predicted == labels) > 0.97


def test_synthetic_data_is_seeded():
    a, b, c = (synthetic.flips_arrays(3, 16, seed=s)[0] for s in (4, 4, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    g1, g2 = synthetic.graders_arrays(3, 16, seed=7), synthetic.graders_arrays(3, 16, seed=7)
    np.testing.assert_array_equal(g1[1], g2[1])


def test_graders_truth_draws_masks_as_the_graders_do():
    """Fresh draws from `graders_truth` are empty at each image's rate of empty masks, and
    otherwise nested with the graders' masks (one blob, cut at another radius)."""
    _, annotations = synthetic.graders_arrays(20, 32, seed=3)
    draws = synthetic.graders_truth(20, 32, seed=3)(2000, np.random.default_rng(0))
    assert draws.shape == (20, 2000, 32, 32) and draws.dtype == np.int32
    rate = (annotations.sum(axis=(2, 3)) == 0).mean(axis=1)
    drawn_rate = (draws.sum(axis=(2, 3)) == 0).mean(axis=1)
    np.testing.assert_allclose(drawn_rate, rate, atol=4 * np.sqrt(0.25 / 2000))
    for i in range(20):
        masks = [m for m in annotations[i] if m.any()]
        for draw in draws[i, :50]:
            for mask in masks:
                assert np.all(draw <= mask) or np.all(mask <= draw)


def test_graders_have_four_binary_masks_and_up_to_three_empty():
    images, annotations = synthetic.graders_arrays(200, 32, seed=0)
    assert images.shape == (200, 32, 32, 1) and annotations.shape == (200, 4, 32, 32)
    assert set(np.unique(annotations)) == {0, 1}
    empty = (annotations.sum(axis=(2, 3)) == 0).sum(axis=1)
    assert empty.max() == 3 and empty.min() == 0
    assert set(empty) == {0, 1, 2, 3}
    # Non-empty graders disagree on the extent.
    sizes = annotations.sum(axis=(2, 3))
    full = sizes[empty == 0]
    assert np.mean(full.max(1) > full.min(1)) > 0.9
    # The lesion is where the graders draw it: brighter inside their union.
    union = annotations.max(1).astype(bool)
    has = union.any(axis=(1, 2))
    inside = np.array([images[i, ..., 0][union[i]].mean() for i in np.flatnonzero(has)])
    outside = np.array([images[i, ..., 0][~union[i]].mean() for i in np.flatnonzero(has)])
    assert np.all(inside > outside)


def test_training_pipeline_draws_annotations_with_the_given_probabilities():
    _, probabilities = synthetic.flip_modes()
    batches = pipeline.training_pipeline(synthetic.flips(4, 16, seed=0), batch_size=4,
                                         annotation_weights=probabilities, seed=0)
    base = synthetic.flips_arrays(4, 16, seed=0)[1]
    images = synthetic.flips_arrays(4, 16, seed=0)[0]
    counts = np.zeros(32)
    for batch_images, segmentations in batches.take(1000).as_numpy_iterator():
        assert batch_images.shape == (4, 16, 16, 3) and segmentations.shape == (4, 16, 16)
        for image, seg in zip(batch_images, segmentations):
            index = int(np.argmin(np.abs(images - image).sum(axis=(1, 2, 3))))
            counts[synthetic.identify_flip_modes(seg[None], base[index], 5)[0]] += 1
    frequencies = counts / counts.sum()
    # 4000 draws: every frequency within 4 standard errors of its probability.
    standard_error = np.sqrt(probabilities * (1 - probabilities) / counts.sum())
    assert np.all(np.abs(frequencies - probabilities) < 4 * standard_error + 1e-3)


def test_training_pipeline_uniform_for_graders_and_same_batches_per_iterator():
    data = synthetic.graders(3, 16, seed=0)
    batches = pipeline.training_pipeline(data, batch_size=3, shuffle=False, seed=1)
    first = [s for _, s in batches.take(20).as_numpy_iterator()]
    second = [s for _, s in batches.take(20).as_numpy_iterator()]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    _, annotations = synthetic.graders_arrays(3, 16, seed=0)
    picks = np.zeros((3, 4))
    for segmentations in [s for _, s in batches.take(400).as_numpy_iterator()]:
        for i, seg in enumerate(segmentations):
            matches = [g for g in range(4) if np.array_equal(annotations[i, g], seg)]
            picks[i, matches] += 1 / len(matches)
    assert np.all(np.abs(picks / 400 - 0.25) < 0.1)


@pytest.mark.parametrize("dataset", ["flips", "graders"])
def test_training_pipeline_of_all_annotations_gives_each_example_whole(dataset):
    """`all_annotations` (MoSE's training): every annotation of each example, in its order,
    and the weights of *flips*' modes beside them; *graders*' are equally likely (no weights).
    The examples come back whole after the shuffle."""
    if dataset == "flips":
        weights = synthetic.flip_modes()[1]
        data, (images, base) = synthetic.flips(6, 16, seed=0), synthetic.flips_arrays(6, 16)
        annotations = np.stack([synthetic.mode_label_maps(b, synthetic.flip_modes()[0])
                                for b in base])
    else:
        weights = None
        data, (images, annotations) = (synthetic.graders(6, 16, seed=0),
                                       synthetic.graders_arrays(6, 16, seed=0))
    batches = pipeline.training_pipeline(data, batch_size=3, annotation_weights=weights, seed=2,
                                         all_annotations=True)
    seen = []
    for batch in batches.take(4).as_numpy_iterator():
        assert len(batch) == (3 if dataset == "flips" else 2)
        assert batch[1].shape == (3, annotations.shape[1], 16, 16)
        if dataset == "flips":
            np.testing.assert_allclose(batch[2], np.tile(weights, (3, 1)), rtol=1e-6)
        for image, example in zip(batch[0], batch[1]):
            index = int(np.argmin(np.abs(images - image).sum(axis=(1, 2, 3))))
            np.testing.assert_array_equal(example, annotations[index])
            seen.append(index)
    assert sorted(set(seen)) == list(range(6)) and seen[:6] != list(range(6))  # shuffled


def test_the_pipelines_run_without_tf_datas_autotuning_thread():
    # Keras' `fit` and `evaluate` wait for that thread's next wake-up after their last step
    # (up to 2.5 s a call: bench/fit_overhead.py measures it; no timing is asserted here).
    data = synthetic.graders(3, 16, seed=0)
    for batches in (pipeline.training_pipeline(data, batch_size=3, seed=1),
                    pipeline.evaluation_pipeline(data, batch_size=3)):
        assert batches.options().autotune.enabled is False
        images, _ = next(iter(batches))  # and they still yield
        assert images.shape[0] == 3


def test_identify_flip_modes_reads_back_every_mode():
    (_, annotations), = synthetic.flips(1, 32, seed=3).take(1).as_numpy_iterator()
    base = synthetic.flips_arrays(1, 32, seed=3)[1][0]
    np.testing.assert_array_equal(synthetic.identify_flip_modes(annotations, base, 5),
                                  np.arange(32))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        synthetic.flip_modes([0.5, 1.0])
    with pytest.raises(ValueError, match="image_size"):
        synthetic.flips_arrays(1, 4)


def test_shuffle_buffer_stays_within_its_memory_budget():
    import tensorflow as tf

    # A drawn Cityscapes example: 256*512*3 float32 + 256*512 int32 = 2 MiB; 512 fit in 1 GiB.
    cityscapes = (tf.TensorSpec((256, 512, 3), tf.float32), tf.TensorSpec((256, 512), tf.int32))
    assert pipeline.shuffle_buffer_size(cityscapes) == 512
    flips = (tf.TensorSpec((64, 64, 3), tf.float32), tf.TensorSpec((64, 64), tf.int32))
    assert pipeline.shuffle_buffer_size(flips) == 4096
    # Unknown sizes count as 1024: 1024*1024*16 bytes = 16 MiB -> 64 examples.
    unknown = (tf.TensorSpec((None, None, 3), tf.float32), tf.TensorSpec((None, None), tf.int32))
    assert pipeline.shuffle_buffer_size(unknown) == 64


def test_flips_test_split_has_the_official_500_images_by_default():
    from tfprobunet import data

    assert int(data.load("flips", "test", image_size=16).dataset.cardinality()) == 500
    assert int(data.load("graders", "test", image_size=16).dataset.cardinality()) == 100
    assert int(data.load("flips", "val", image_size=16).dataset.cardinality()) == 100
