"""The generalized energy distance in TensorFlow: `pairwise_distances_tf`,
`generalized_energy_distance_tf`, and `GeneralizedEnergyDistance`, the Keras metric that the
models' `test_step` updates (`val_ged`). Same conventions as `distances.py`."""

import keras
import tensorflow as tf

from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.losses import class_indicators
from tfprobunet.metrics.distances import scored_classes


def pairwise_distances_tf(a, b, num_classes, classes=None, ignore_label=IGNORE_LABEL):
    """`pairwise_distances` in TensorFlow (float32; runs inside `tf.function`).

    Args:
        a: `(batch, m, h, w)`; b: `(batch, n, h, w)` int label maps.

    Returns:
        `(batch, m, n)` float32.
    """
    classes = scored_classes(num_classes, classes)
    # (batch, maps, pixels, scored classes) indicators; label 255 matches no class.
    in_a, valid_a = class_indicators(a, classes, ignore_label)
    in_b, valid_b = class_indicators(b, classes, ignore_label)
    intersection = tf.einsum("bmpk,bnpk->bmnk", in_a, in_b)
    union = (tf.einsum("bmpk,bnp->bmnk", in_a, valid_b)
             + tf.einsum("bmp,bnpk->bmnk", valid_a, in_b) - intersection)
    present = tf.cast(union > 0, tf.float32)
    iou_sum = tf.reduce_sum(tf.math.divide_no_nan(intersection, union), axis=-1)
    count = tf.reduce_sum(present, axis=-1)
    return 1.0 - tf.where(count > 0, tf.math.divide_no_nan(iou_sum, count), 1.0)


def generalized_energy_distance_tf(samples, annotations, num_classes, classes=None,
                                   annotation_weights=None, ignore_label=IGNORE_LABEL):
    """`generalized_energy_distance` in TensorFlow: `(b,)` float32."""
    args = dict(num_classes=num_classes, classes=classes, ignore_label=ignore_label)
    count = tf.shape(annotations)[1]
    if annotation_weights is None:
        weights = tf.fill(tf.stack([tf.shape(annotations)[0], count]),
                          1.0 / tf.cast(count, tf.float32))
    else:
        weights = tf.broadcast_to(tf.cast(annotation_weights, tf.float32),
                                  tf.shape(annotations)[:2])
        weights = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
    cross = tf.reduce_mean(tf.einsum(
        "bma,ba->bm", pairwise_distances_tf(samples, annotations, **args), weights), axis=-1)
    diversity = tf.reduce_mean(pairwise_distances_tf(samples, samples, **args), axis=[1, 2])
    truth = tf.einsum("bij,bi,bj->b", pairwise_distances_tf(annotations, annotations, **args),
                      weights, weights)
    return 2.0 * cross - diversity - truth


@keras.saving.register_keras_serializable(package="tfprobunet")
class GeneralizedEnergyDistance(keras.metrics.Mean):
    """D²_GED averaged over images, as a Keras metric.

    `update_state(samples, annotations, annotation_weights=None)` takes label maps
    `samples (b, m, h, w)` and `annotations (b, a, h, w)` and optional `(b, a)` or `(a,)`
    annotation probabilities; `result()` is the mean GED over every image seen since the last
    reset. Same conventions as `generalized_energy_distance`.

    Args:
        num_classes: K.
        classes: the scored classes (default: `[1]` for K = 2, all K otherwise).
        name: metric name (default `"ged"`, so validation logs `val_ged`).
    """

    def __init__(self, num_classes, classes=None, name="ged", dtype=None):
        super().__init__(name=name, dtype=dtype)
        scored_classes(num_classes, classes)  # validates
        self.num_classes = num_classes
        self.classes = None if classes is None else [int(c) for c in classes]

    def update_state(self, samples, annotations, annotation_weights=None):
        values = generalized_energy_distance_tf(samples, annotations, self.num_classes,
                                                self.classes, annotation_weights)
        return super().update_state(values)

    def get_config(self):
        return {"num_classes": self.num_classes, "classes": self.classes, "name": self.name,
                "dtype": self.dtype}
