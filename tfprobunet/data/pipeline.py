"""tf.data pipelines from `(image, annotations)` datasets to what `ProbabilisticUNet.fit` and
`evaluate` take."""

import math
import warnings

import tensorflow as tf

from tfprobunet.data import checks


def training_pipeline(dataset, batch_size, annotation_weights=None, shuffle=True,
                      repeat=True, seed=0, num_classes=None, *, all_annotations=False,
                      annotation_probabilities=None):
    """Batches of `(images, segmentations)` with one annotation drawn per example and step
    (or of every annotation, `all_annotations`).

    Args:
        dataset: yields `(image (h, w, c), annotations (A, h, w))`.
        batch_size: global batch size (a distribution strategy splits it over replicas).
        annotation_weights: `(A,)` probabilities of the annotations (the *flips* mode
            probabilities, a `Source`'s `annotation_weights`); None draws them uniformly
            (graders are equally likely).
        shuffle: shuffle the examples.
        repeat: repeat forever (use with `steps_per_epoch`).
        seed: seeds the shuffling and the draws. With `repeat`, every iterator of the result
            yields the same batches for the same seed, provided `dataset` itself does (random
            crops, like the LIDC training crops, differ on each pass and each iterator).
        num_classes: K, to refuse labels >= K other than 255 (ignore); None checks only for
            negative labels and 0/255 masks. The first examples are read to check them
            (`tfprobunet.data.checks.check_dataset`).
        all_annotations: batches of every annotation of each example instead, for models
            trained on them all (`SegmentationSampler.TRAINS_ON_ALL_ANNOTATIONS`: MoSE), with
            `annotation_weights` per example when given.
        annotation_probabilities: deprecated, the old name of `annotation_weights` (it warns;
            removed in tfprobunet 0.3.0).

    Returns:
        `tf.data.Dataset` of `(images (b, h, w, c) float32, segmentations (b, h, w) int32)`;
        with `all_annotations`, `(images, annotations (b, A, h, w) int32)` and, with
        `annotation_weights`, `weights (b, A) float32` third.
    """
    if annotation_probabilities is not None:
        if annotation_weights is not None:
            raise TypeError("training_pipeline got both annotation_weights and its deprecated "
                            "name annotation_probabilities: pass only annotation_weights.")
        warnings.warn("tfprobunet.data.training_pipeline(annotation_probabilities=...) is "
                      "deprecated and will be removed in tfprobunet 0.3.0: pass "
                      "annotation_weights=... (the name the rest of tfprobunet uses)",
                      DeprecationWarning, stacklevel=2)
        annotation_weights = annotation_probabilities
    checks.check_dataset(dataset, num_classes, "The annotations of the training dataset")
    if all_annotations:
        dataset = _with_weights(dataset.repeat() if repeat else dataset, annotation_weights)
        return _shuffled_batches(dataset, batch_size, shuffle, repeat, seed)
    logits = None
    if annotation_weights is not None:
        logits = tf.math.log(tf.constant(annotation_weights, tf.float32))[None]
    if repeat:
        dataset = dataset.repeat()
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=not repeat)

    def draw(example, key):
        image, annotations = example
        key = tf.stack([tf.cast(seed, tf.int64), key])
        if logits is None:
            count = tf.shape(annotations, out_type=tf.int64)[0]
            index = tf.random.stateless_uniform((), key, 0, count, dtype=tf.int64)
        else:
            index = tf.random.stateless_categorical(logits, 1, key)[0, 0]
        # A copy: a first-axis slice (`annotations[index]`) shares the memory of all A maps,
        # which the shuffle buffer would then hold (9.5 GB at flips' 128x128, not 1.1).
        return image, tf.gather(annotations, index)

    # Drawn before the shuffle, so that the buffer holds one label map per example rather than
    # all A (32 Cityscapes modes at 256x512 would need 16 MB each).
    dataset = tf.data.Dataset.zip(dataset, draws).map(
        draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _shuffled_batches(dataset, batch_size, shuffle, repeat, seed)


def _shuffled_batches(dataset, batch_size, shuffle, repeat, seed):
    """`dataset` shuffled (within `shuffle_buffer_size`) and batched, the last partial batch
    dropped. With `repeat`, the endless stream is shuffled once with a fixed seed rather than
    per epoch: every fresh iterator, e.g. the one a distribution strategy makes, gives the same
    batches."""
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer_size(dataset.element_spec), seed=seed,
                                  reshuffle_each_iteration=not repeat)
    return checks.mark_checked(_without_autotune(
        dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)))


def _with_weights(dataset, annotation_weights):
    """`(image, annotations)` examples with the `(A,)` `annotation_weights` third, if given."""
    if annotation_weights is None:
        return dataset
    weights = tf.constant(annotation_weights, tf.float32)
    return dataset.map(lambda image, annotations: (image, annotations, weights))


def _without_autotune(dataset):
    """`dataset` without tf.data's autotuning thread. Its wake-ups come at periods that double
    (10 ms, 20 ms, ... 2.56 s), and Keras' `fit` and `evaluate` return only once the thread has
    woken up after the last step: up to 2.5 s lost per call, per epoch with validation (25 % of
    a 10-second `fit`: docs/benchmarks.md). Without it `AUTOTUNE` parallelism is the number of
    cores, and the pipelines still keep well ahead of the training step (bench/pipeline.py)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def shuffle_buffer_size(element_spec, budget_bytes=1 << 30, most=4096):
    """Examples a shuffle buffer holds: `most`, or fewer so that it stays within `budget_bytes`
    (unknown dimensions, e.g. of full-size PNGs, count as 1024)."""
    size = 0
    for spec in tf.nest.flatten(element_spec):
        size += math.prod(d if d is not None else 1024 for d in spec.shape) * spec.dtype.size
    return int(max(16, min(most, budget_bytes // max(size, 1))))


def evaluation_pipeline(dataset, batch_size, annotation_weights=None, num_classes=None):
    """Batches of every annotation of each image, for `evaluate` and `validation_data`.

    Args:
        dataset: yields `(image (h, w, c), annotations (A, h, w))`.
        batch_size: images per batch (the last batch may be smaller).
        annotation_weights: `(A,)` probabilities of the annotations, or None (equally likely).
        num_classes: K, as in `training_pipeline` (the labels are checked the same way).

    Returns:
        `tf.data.Dataset` of `(images (b, h, w, c), annotations (b, A, h, w))`, plus
        `weights (b, A)` when `annotation_weights` is given: what `ProbabilisticUNet.test_step`
        reads to report `ged`.
    """
    checks.check_dataset(dataset, num_classes, "The annotations of the evaluation dataset")
    return checks.mark_checked(_without_autotune(
        _with_weights(dataset, annotation_weights).batch(batch_size).prefetch(tf.data.AUTOTUNE)))
