"""The training pipeline's shuffle buffer stays within the budget it is sized for
(`pipeline.shuffle_buffer_size`, 1 GiB by default): measured in a child process, whose peak RSS
is compared with the buffer's bytes worked out from the element shapes."""

import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource
import tensorflow as tf
from tfprobunet.data import pipeline, synthetic

dataset = pipeline.training_pipeline(synthetic.flips(64, image_size=64), batch_size=4,
                                     annotation_weights=synthetic.flip_modes()[1])
element = dataset.element_spec
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
next(iter(dataset))  # the buffer is full before the first batch comes out
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
image, label = [(s.shape[1:].as_list(), s.dtype.size) for s in element]
print(json.dumps([grown, image, label]))
"""


def test_the_shuffle_buffer_holds_one_label_map_per_example():
    """*flips* has 32 label maps per image; the pipeline draws one before the shuffle buffer so
    that the buffer holds one. The drawn map was a slice that kept all 32 alive (TensorFlow's
    first-axis slices share their parent's memory): at 128x128 a training run took 9.5 GB
    instead of 1.1, and two multi-worker processes on one machine swapped for minutes."""
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    grown, (image_shape, image_bytes), (label_shape, label_bytes) = json.loads(
        run.stdout.splitlines()[-1])
    assert image_shape == [64, 64, 3] and label_shape == [64, 64]
    # 4096 examples (the most a buffer holds; 1 GiB allows more at this size) of one image and
    # one label map: 4096 x (48 + 16) KiB = 256 MiB. All 32 maps would be 4096 x 560 KiB.
    buffer_bytes = 4096 * (64 * 64 * 3 * image_bytes + 64 * 64 * label_bytes)
    assert buffer_bytes == 256 * 2**20
    assert grown < 1.5 * buffer_bytes + 150 * 2**20, (grown / 2**20, "MiB")
