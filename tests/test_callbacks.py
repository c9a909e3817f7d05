"""TensorBoardSamples: the grid it draws, hand-checked pixel by pixel, and the summaries it
writes during `train(tensorboard=...)`, read back from the event files beside Keras' own.
ProgressLog: the lines a log file gets between Keras' lines per epoch."""

import glob
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import callbacks, training


def test_grid_tiles_are_the_image_annotations_samples_and_entropy():
    image = np.array([[[0.0], [0.25]], [[0.5], [1.0]]], np.float32)  # (2, 2, 1)
    annotations = np.array([[[[0, 1], [1, 0]]]])  # (b=1, A=1, 2, 2)
    # Two samples, K = 2: the first labels everything 1, the second only pixel (0, 0); pixel
    # (1, 1) has equal logits in both (entropy log 2: white), the others are confident.
    logits = np.zeros((1, 2, 2, 2, 2), np.float32)
    logits[0, 0, ..., 1] = 20.0
    logits[0, 1, ..., 0] = 20.0
    logits[0, 1, 0, 0] = [0.0, 20.0]
    logits[0, :, 1, 1] = 0.0
    grid = callbacks.sample_grid_image(image[None], annotations, logits)
    assert grid.shape == (3, 5 * 3, 3)  # one row; 5 tiles of 2x2, each with a 1-pixel border
    tiles = [grid[:2, 3 * t:3 * t + 2] for t in range(5)]
    np.testing.assert_allclose(tiles[0][..., 0], image[..., 0])
    np.testing.assert_allclose(tiles[1][..., 0], [[0, 1], [1, 0]])  # two classes: black/white
    np.testing.assert_allclose(tiles[2][..., 0], [[1, 1], [1, 0]])  # pixel (1, 1): a tie -> 0
    np.testing.assert_allclose(tiles[3][..., 0], [[1, 0], [0, 0]])
    entropy = tiles[4][..., 0]
    # (0, 0): both samples say 1; (0, 1) and (1, 0): the samples disagree, mean (0.5, 0.5);
    # (1, 1): both tie. Entropy in units of log 2, to float precision of softmax(20).
    np.testing.assert_allclose(entropy, [[0, 1], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(grid[2], 0.5)  # the border line
    np.testing.assert_allclose(grid[:, 2], 0.5)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"a batch \(b, h, w, c\). Received shape \(16, 16, 1\)"):
        callbacks.TensorBoardSamples("logs", np.zeros((16, 16, 1)))
    with pytest.raises(ValueError, match=r"\(b, A, h, w\) for the b images. Received shape "
                                         r"\(3, 4, 16, 16\) for 2 images"):
        callbacks.TensorBoardSamples("logs", np.zeros((2, 16, 16, 1)),
                                     np.zeros((3, 4, 16, 16)))
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        callbacks.TensorBoardSamples("logs", np.zeros((2, 16, 16, 1)), every_n_epochs=0)


def _events(folder):
    """{tag: [(step, value)]} from every event file under `folder`."""
    found = {}
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found


@pytest.mark.slow
def test_train_with_tensorboard_writes_samples_scalars_and_keras_logs(tmp_path):
    logs = str(tmp_path / "logs")
    training.train(str(tmp_path / "run"), dataset="flips", epochs=2, steps_per_epoch=2,
                   batch_size=2, image_size=16, num_examples=4, validation_examples=3,
                   num_channels=[8, 16], convs_per_block=1, latent_dim=2, verbose=0,
                   tensorboard=logs)
    samples = _events(os.path.join(logs, "samples"))
    images = samples["samples"]
    assert [step for step, _ in images] == [0, 1]
    width, height, png = images[0][1].tensor.string_val
    picture = tf.io.decode_png(png).numpy()
    # 3 val images; image, 4 of the 32 modes, 4 samples, entropy: 10 tiles of 17 pixels.
    assert picture.shape == (3 * 17, 10 * 17, 3)
    assert (int(width), int(height)) == (10 * 17, 3 * 17)
    for tag in ("calibration/val_ged", "calibration/val_mode_r", "calibration/val_modes_found"):
        assert [step for step, _ in samples[tag]] == [0, 1], sorted(samples)
    assert any(tag.startswith("calibration/val_flip_") for tag in samples)
    val_ged = [float(tf.make_ndarray(v.tensor)) for _, v in samples["calibration/val_ged"]]
    with open(tmp_path / "run" / "log.csv") as f:
        header, *rows = [line.strip().split(",") for line in f]
    logged = [float(row[header.index("val_ged")]) for row in rows]
    np.testing.assert_allclose(val_ged, logged, rtol=1e-5)
    # Keras' own TensorBoard callback, beside it.
    assert "epoch_loss" in _events(os.path.join(logs, "train"))
    assert "epoch_ged" in _events(os.path.join(logs, "validation"))


@pytest.mark.slow
def test_output_to_a_file_gets_step_lines_before_the_epoch_line(tmp_path, capsys):
    # capsys: standard output is not a terminal, as with `tfprobunet train ... > log.txt`.
    training.train(str(tmp_path / "run"), dataset="flips", epochs=1, steps_per_epoch=101,
                   batch_size=2, image_size=16, num_examples=4, num_channels=[8, 16],
                   convs_per_block=1, latent_dim=2)
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("epoch ")]
    # The default interval, 100 steps (or a minute, whichever first); the last step is left
    # to Keras' line per epoch, which comes after.
    assert steps and steps[-1].startswith("epoch 1/1 step 100/101 - kl ")
    assert all(re.fullmatch(r"epoch 1/1 step \d+/101 - kl \S+ - loss \S+ - reconstruction \S+"
                            r" - [\d.]+ m?s/step - epoch ends in \d+:\d\d", s) for s in steps)
    epoch_line = next(i for i, line in enumerate(lines) if line.startswith("101/101 - "))
    assert lines.index(steps[-1]) < epoch_line
    assert not re.search(r"[\x1b\r\x08]", "\n".join(lines))


def test_a_progress_log_of_your_own_replaces_the_default_one():
    assert [type(c) for c in callbacks.progress_callbacks(2)] == [callbacks.ProgressLog]
    assert callbacks.progress_callbacks(2, [callbacks.ProgressLog(every_steps=5)]) == []
    assert callbacks.progress_callbacks(1) == [] and callbacks.progress_callbacks(0) == []
    with pytest.raises(ValueError, match="every_steps=0"):
        callbacks.ProgressLog(every_steps=0)
    with pytest.raises(ValueError, match="every_seconds=0"):
        callbacks.ProgressLog(every_seconds=0)


def test_progress_log_prints_every_n_steps_but_not_the_last(capsys):
    log = callbacks.ProgressLog(every_steps=2)
    log.set_params({"epochs": 3, "steps": 5})
    log.on_epoch_begin(1)
    for batch in range(5):
        log.on_train_batch_end(batch, {"loss": np.float32(1.5), "kl": 0.25})
    lines = capsys.readouterr().out.splitlines()
    # Steps 2 and 4; step 5 ends the epoch, which Keras' own line reports.
    assert [line.split(" - ")[:3] for line in lines] == [
        ["epoch 2/3 step 2/5", "kl 0.25", "loss 1.5"],
        ["epoch 2/3 step 4/5", "kl 0.25", "loss 1.5"]]
    assert all(re.search(r" - [\d.e-]+ ms/step - epoch ends in 0:00$", line) for line in lines)
