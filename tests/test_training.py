"""Training: MirroredStrategy equivalence, learning, resume after a kill, the non-finite guard."""

import csv
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprobunet
from conftest import TINY, random_batch, tiny_model
from tfprobunet import training
from tfprobunet.data import pipeline, synthetic


def _two_replicas():
    strategy = training.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, "conftest configures 2 logical CPU devices"
    return strategy


def _fit_from(initial_weights, strategy, data, optimizer, epochs=1, **fit_kwargs):
    with strategy.scope():
        model = tiny_model(3, use_posterior_mean=True, seed=0)
        model.build((None, 16, 16, 1))
        model.set_weights(initial_weights)
        model.compile(optimizer=optimizer())
    history = model.fit(*data, epochs=epochs, verbose=0, **fit_kwargs)
    return model, history


def test_one_mirrored_step_equals_one_step_without_strategy():
    images, segmentations = random_batch(3, batch=4, seed=5)
    reference = tiny_model(3)
    reference.build((None, 16, 16, 1))
    initial = reference.get_weights()
    data = (images, segmentations)
    kwargs = dict(batch_size=4, shuffle=False)
    single, _ = _fit_from(initial, tf.distribute.get_strategy(), data,
                          lambda: keras.optimizers.SGD(0.05), **kwargs)
    mirrored, _ = _fit_from(initial, _two_replicas(), data,
                            lambda: keras.optimizers.SGD(0.05), **kwargs)
    moved = 0
    for a, b, w0 in zip(single.get_weights(), mirrored.get_weights(), initial):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
        moved += np.any(a != w0)
    assert moved == len(initial)  # every weight moved


def test_two_epoch_fit_logs_the_same_losses_with_and_without_mirroring():
    def batches():
        _, probabilities = synthetic.flip_modes()
        data = synthetic.flips(16, 16, seed=3)
        return pipeline.training_pipeline(data, 4, probabilities, seed=3)

    reference = tiny_model(11)
    reference.build((None, 16, 16, 3))
    initial = reference.get_weights()

    def run(strategy):
        with strategy.scope():
            model = tiny_model(11, use_posterior_mean=True, seed=0)
            model.build((None, 16, 16, 3))
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model.fit(batches(), epochs=2, steps_per_epoch=3, shuffle=False,
                         verbose=0).history

    single, mirrored = run(tf.distribute.get_strategy()), run(_two_replicas())
    assert set(single) == {"loss", "reconstruction", "kl"}
    for key in single:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-4)
    assert single["loss"][1] < single["loss"][0]


def test_random_path_trains_under_mirrored_strategy():
    strategy = _two_replicas()
    images, segmentations = random_batch(2, batch=4)
    with strategy.scope():
        model = tiny_model(2)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images, segmentations, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_non_finite_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(tmp_path):
    class PoisonPrior(keras.callbacks.Callback):
        """At epoch 2, step 3, make the prior's log-scale NaN: only the KL term can go bad."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 1 and batch == 2:
                bias = self.model.prior.head.bias
                bias.assign(np.full(bias.shape, np.nan, np.float32))

    workdir = str(tmp_path)
    kwargs = dict(dataset="flips", epochs=3, steps_per_epoch=4, batch_size=4, image_size=16,
                  num_examples=16, learning_rate=1e-3, verbose=0, **TINY)
    with pytest.raises(training.NonFiniteLossError,
                       match=r"epoch 2, step 3: .*kl=nan") as error:
        training.train(workdir, callbacks=[PoisonPrior()], **kwargs)
    assert "reconstruction" not in str(error.value)
    assert not os.path.exists(os.path.join(workdir, "model.keras"))
    # The checkpoint is the end of epoch 1: finite, and a restart resumes from epoch 2.
    model, history = training.train(workdir, **kwargs)
    assert history.epoch == [1, 2]
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert _logged_epochs(workdir) == [0, 1, 2]


def _logged_epochs(workdir):
    with open(os.path.join(workdir, "log.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import keras
    from tfprobunet import training

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0 and os.environ.get("KILL") == "1":
                os.kill(os.getpid(), signal.SIGKILL)

    training.train(sys.argv[1], dataset="graders", epochs=3, steps_per_epoch=3, batch_size=4,
                   image_size=16, num_examples=12, learning_rate=1e-3, verbose=2,
                   callbacks=[KillAfterFirstEpoch()], num_channels=[8, 16, 32],
                   convs_per_block=2, latent_dim=2, fcomb_layers=2)
    print("EPOCHS-DONE")
""")


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_or_losing_epochs(tmp_path):
    workdir = str(tmp_path / "run")
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    env = dict(os.environ, KILL="1")
    killed = subprocess.run([sys.executable, str(script), workdir], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _logged_epochs(workdir) == [0]
    assert not os.path.exists(os.path.join(workdir, "model.keras"))

    env["KILL"] = "0"
    resumed = subprocess.run([sys.executable, str(script), workdir], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "EPOCHS-DONE" in resumed.stdout
    # Keras prints "Epoch k/3" for each epoch it runs: the resumed run ran 2 and 3 only.
    ran = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("Epoch ")]
    assert ran == ["2/3", "3/3"]
    assert _logged_epochs(workdir) == [0, 1, 2]
    assert os.path.exists(os.path.join(workdir, "model.keras"))


@pytest.mark.slow
def test_learning_on_tiny_flips_without_posterior_collapse():
    """Two flippable classes with p = 0.5: four equally likely modes per image."""
    flip_probabilities = (0.5, 0.5)
    _, probabilities = synthetic.flip_modes(flip_probabilities)
    batches = pipeline.training_pipeline(
        synthetic.flips(500, 16, flip_probabilities, seed=0), 16, probabilities, seed=0)
    model = tfprobunet.ProbabilisticUNet(num_classes=5, num_channels=[16, 32], convs_per_block=2,
                                         latent_dim=2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(batches, epochs=4, steps_per_epoch=100, shuffle=False,
                        verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    # The posterior must carry information: KL clearly above 0 at the end.
    assert history["kl"][-1] > 1.0, history["kl"]

    images, base = synthetic.flips_arrays(8, 16, flip_probabilities, seed=99)
    masks = np.argmax(model.sample(images, 16, seed=0), axis=-1)
    modes = [synthetic.identify_flip_modes(masks[i], base[i], 2) for i in range(8)]
    # A collapsed posterior gives one mode per image, whatever the seed.
    assert min(len(set(m)) for m in modes) >= 3, modes
    frequencies = np.bincount(np.concatenate(modes), minlength=4) / (8 * 16)
    assert np.all((frequencies > 0.1) & (frequencies < 0.4)), frequencies  # true: 0.25 each
    # The samples are segmentations of the scene, not noise: the background is right.
    background = np.broadcast_to(base[:, None] == 0, masks.shape)
    assert np.mean(masks[background] == 0) > 0.9


@pytest.mark.slow
def test_official_defaults_stay_finite_on_graders(tmp_path):
    """The official architecture and loss (beta = 1, summed cross-entropy, analytic KL) on the
    LIDC-like benchmark, with a 10x learning rate to stress it within the test's budget."""
    model, history = training.train(
        str(tmp_path), dataset="graders", epochs=3, steps_per_epoch=100, batch_size=8,
        image_size=32, num_examples=800, learning_rate=1e-3, verbose=0)
    for key in ("loss", "reconstruction", "kl"):
        assert np.all(np.isfinite(history.history[key])), history.history
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_train_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        training.train(str(tmp_path), dataset="mnist")
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        training.make_strategy("tpu")


def test_resuming_with_other_settings_is_refused(tmp_path):
    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("crash after the checkpoint")

    workdir = str(tmp_path / "run")
    args = dict(dataset="graders", epochs=2, steps_per_epoch=1, batch_size=2, image_size=16,
                num_examples=4, num_channels=[8, 16], convs_per_block=1, latent_dim=2, verbose=0)
    with pytest.raises(RuntimeError, match="crash"):
        training.train(workdir, callbacks=[Crash()], **args)
    assert os.path.isdir(os.path.join(workdir, "backup"))
    with pytest.raises(ValueError, match=r"learning_rate: 0\.0001 in the checkpointed run, "
                                         r"0\.001 now.*same arguments"):
        training.train(workdir, **{**args, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"latent_dim: 2 in the checkpointed run, 3 now"):
        training.train(workdir, **{**args, "latent_dim": 3})
    # More epochs is a legitimate resume: epochs 2 and 3 run.
    _, history = training.train(workdir, **{**args, "epochs": 3})
    assert history.epoch == [1, 2]
