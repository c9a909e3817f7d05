"""Training: MirroredStrategy equivalence over epochs (one step is the harness's), learning,
resume after a kill (even mid-save), damaged checkpoints, continuing a finished run, the
non-finite guard."""

import csv
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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

    # KILL="end:E": SIGKILL once epoch E (1-based) is over: its log row and checkpoint written.
    # KILL="save:E": SIGKILL inside epoch E's checkpoint write, 96 bytes of the file on disk
    # (every weights file is written by `Model.save_weights`, whatever the checkpoint scheme).
    moment, _, at = os.environ.get("KILL", "").partition(":")
    current = {"epoch": 0}

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            current["epoch"] = epoch + 1

        def on_epoch_end(self, epoch, logs=None):
            if moment == "end" and epoch + 1 == int(at):
                os.kill(os.getpid(), signal.SIGKILL)

    save_weights = keras.Model.save_weights

    def save_weights_and_die(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if moment == "save" and current["epoch"] == int(at):
            with open(filepath, "r+b") as f:
                f.truncate(96)
            os.kill(os.getpid(), signal.SIGKILL)

    keras.Model.save_weights = save_weights_and_die
    training.train(sys.argv[1], dataset="graders", epochs=3, steps_per_epoch=3, batch_size=4,
                   image_size=16, num_examples=12, learning_rate=1e-3, verbose=2,
                   callbacks=[Kill()], num_channels=[8, 16, 32],
                   convs_per_block=2, latent_dim=2, fcomb_layers=2)
    print("EPOCHS-DONE")
""")


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_or_losing_epochs(tmp_path):
    """Five runs of one training: the first four are killed, inside the first checkpoint's
    write, after epoch 1, inside the writes of epochs 2 and 3; each resumes from the last
    complete checkpoint, and log.csv ends with each epoch once."""
    workdir = str(tmp_path / "run")
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    checkpointed = 0  # epochs whose checkpoint is complete
    for kill in ["save:1", "end:1", "save:2", "save:3", ""]:
        env = dict(os.environ, KILL=kill, PYTHONUNBUFFERED="1")  # keep a killed run's output
        run = subprocess.run([sys.executable, str(script), workdir], env=env, capture_output=True,
                             text=True, timeout=300)
        # Keras prints "Epoch k/3" for each epoch it runs.
        ran = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("Epoch ")]
        if not kill:
            break
        moment, _, at = kill.partition(":")
        assert run.returncode == -signal.SIGKILL, (kill, run.stderr[-3000:])
        assert ran == [f"{e}/3" for e in range(checkpointed + 1, int(at) + 1)], (kill, ran)
        # The killed epoch's row is logged before its checkpoint; a resume drops it.
        assert _logged_epochs(workdir) == list(range(int(at))), kill
        assert not os.path.exists(os.path.join(workdir, "model.keras"))
        checkpointed = int(at) if moment == "end" else int(at) - 1
    assert run.returncode == 0, run.stderr[-3000:]
    assert "EPOCHS-DONE" in run.stdout
    assert ran == [f"{e}/3" for e in range(checkpointed + 1, 4)]
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
        str(tmp_path), dataset="graders", epochs=2, steps_per_epoch=50, batch_size=8,
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


SMALL = dict(dataset="graders", steps_per_epoch=1, batch_size=2, image_size=16, num_examples=4,
             num_channels=[8, 16], convs_per_block=1, latent_dim=2, verbose=0)


class CrashAfterEpoch(keras.callbacks.Callback):
    """Raise at the end of epoch `at` (1-based), once its log row and checkpoint are written."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise RuntimeError(f"crash after epoch {self.at}")


def _crash_after(workdir, at, epochs=3):
    with pytest.raises(RuntimeError, match="crash"):
        training.train(workdir, epochs=epochs, callbacks=[CrashAfterEpoch(at)], **SMALL)


def test_a_crashed_non_chief_worker_leaves_neither_its_temporary_folder_nor_files(
        tmp_path, monkeypatch):
    """A multi-worker worker other than the chief writes to a temporary folder of its own; an
    error mid-training must not leave it behind (one more per crash), nor write to the
    chief's workdir. The role is forced here; tests/test_multi_worker.py runs real workers."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    # (`tfprobunet.training.train` is the function; its module is `training/train.py`.)
    monkeypatch.setattr(importlib.import_module("tfprobunet.training.train"), "is_chief",
                        lambda strategy: False)
    workdir = str(tmp_path / "run")
    _crash_after(workdir, at=1)
    # (TensorFlow's autograph keeps its own files there.)
    assert [n for n in os.listdir(scratch) if n.startswith("tfprobunet-worker-")] == []
    assert os.listdir(workdir) == []


def _weights_files(workdir):
    backup = os.path.join(workdir, "backup")
    return sorted(os.path.join(backup, name) for name in os.listdir(backup)
                  if name.endswith(".weights.h5") and not name.startswith("."))


def _truncate(path, size=96):
    with open(path, "r+b") as f:
        f.truncate(size)


def _read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def test_resuming_with_other_settings_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    args = {**SMALL, "epochs": 2}
    _crash_after(workdir, 1, epochs=2)
    assert os.path.isdir(os.path.join(workdir, "backup"))
    with pytest.raises(ValueError, match=r"learning_rate: 0\.0001 before, 0\.001 now.*"
                                         r"same arguments"):
        training.train(workdir, **{**args, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"latent_dim: 2 before, 3 now"):
        training.train(workdir, **{**args, "latent_dim": 3})
    # More epochs is a legitimate resume: epochs 2 and 3 run.
    _, history = training.train(workdir, **{**args, "epochs": 3})
    assert history.epoch == [1, 2]


def test_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path):
    workdir = str(tmp_path / "run")
    _crash_after(workdir, 2, epochs=2)
    files = _weights_files(workdir)
    assert len(files) == 2  # epochs 1 and 2: the previous checkpoint stays until the next is in
    _truncate(files[-1])
    with pytest.warns(UserWarning, match=rf"{os.path.basename(files[-1])} is unreadable.*"
                                         r"resuming from .*after epoch 1"):
        _, history = training.train(workdir, epochs=2, **SMALL)
    assert history.epoch == [1]
    assert _logged_epochs(workdir) == [0, 1]


def test_unreadable_checkpoint_error_names_the_folder_and_the_fix(tmp_path):
    workdir = str(tmp_path / "run")
    backup = os.path.join(workdir, "backup")
    _crash_after(workdir, 1)
    [checkpoint] = _weights_files(workdir)
    _truncate(checkpoint)
    with pytest.raises(training.WorkdirError) as error:
        training.train(workdir, epochs=3, **SMALL)
    message = str(error.value)
    assert os.path.basename(checkpoint) in message and "truncated" in message, message
    assert f"Delete {backup}" in message and "from epoch 1" in message, message

    # The layout of `keras.callbacks.BackupAndRestore` (earlier tfprobunet versions), its
    # epoch record emptied.
    os.replace(checkpoint, os.path.join(backup, "latest.weights.h5"))
    with open(os.path.join(backup, "training_metadata.json"), "w"):
        pass
    with pytest.raises(training.WorkdirError) as error:
        training.train(workdir, epochs=3, **SMALL)
    message = str(error.value)
    assert "training_metadata.json" in message and f"Delete {backup}" in message, message

    # The advice works: a new start, logged from epoch 0.
    shutil.rmtree(backup)
    _, history = training.train(workdir, epochs=2, **SMALL)
    assert history.epoch == [0, 1]
    assert _logged_epochs(workdir) == [0, 1]


def test_finished_run_continues_with_more_epochs_and_refuses_otherwise(tmp_path):
    workdir = str(tmp_path / "run")
    model_path = os.path.join(workdir, "model.keras")
    log_path = os.path.join(workdir, "log.csv")
    first, _ = training.train(workdir, epochs=2, **SMALL)
    finished, log = _read(model_path), _read(log_path, "r")
    for epochs in (1, 2):
        with pytest.raises(training.WorkdirError,
                           match=rf"finished run of 2 epochs.*epochs={epochs}.*epochs > 2.*"
                                 r"new workdir"):
            training.train(workdir, epochs=epochs, **SMALL)
    with pytest.raises(training.WorkdirError, match=r"learning_rate: 0\.0001 before, 0\.001 now"):
        training.train(workdir, epochs=3, **{**SMALL, "learning_rate": 1e-3})
    assert _read(model_path) == finished and _read(log_path, "r") == log

    class FromTheFinishedModel(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            assert int(self.model.optimizer.iterations) == 2  # its optimizer state too
            for a, b in zip(self.model.get_weights(), first.get_weights()):
                np.testing.assert_array_equal(a, b)

        def on_epoch_end(self, epoch, logs=None):
            assert _read(model_path) == finished  # replaced only at the end

    model, history = training.train(workdir, epochs=4, callbacks=[FromTheFinishedModel()],
                                    **SMALL)
    assert history.epoch == [2, 3]
    assert int(model.optimizer.iterations) == 4
    assert _read(log_path, "r").startswith(log) and _logged_epochs(workdir) == [0, 1, 2, 3]
    assert _read(model_path) != finished
    assert not os.path.exists(os.path.join(workdir, "backup"))

    # A model.keras whose epochs are not on record is never overwritten.
    config_path = os.path.join(workdir, "train_config.json")
    config = json.loads(_read(config_path, "r"))
    del config["finished_epochs"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(training.WorkdirError, match=r"model\.keras.*new workdir"):
        training.train(workdir, epochs=5, **SMALL)
    with open(config_path, "w"):
        pass
    with pytest.raises(training.WorkdirError, match=r"train_config\.json is unreadable"):
        training.train(workdir, epochs=5, **SMALL)


def _snapshot(workdir):
    """Every file under `workdir`: {relative path: (bytes, mtime)}."""
    files = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, workdir)] = (_read(path), os.stat(path).st_mtime_ns)
    return files


def test_python_and_cli_spellings_of_the_same_settings_continue_one_run(tmp_path):
    """The CLI passes the model's defaults explicitly (beta, kl, reconstruction); Python callers
    usually leave them out. Both are the same run."""
    workdir = str(tmp_path / "run")
    training.train(workdir, epochs=1, **SMALL)
    _, history = training.train(workdir, epochs=2, beta=1.0, kl="analytic",
                                reconstruction="sum", **SMALL)
    assert history.epoch == [1]
    with pytest.raises(training.WorkdirError, match=r"beta: 1\.0 before, 2\.0 now"):
        training.train(workdir, epochs=3, beta=2.0, **SMALL)


def test_refusals_write_nothing_and_a_missing_finished_model_is_not_retrained(tmp_path):
    workdir = str(tmp_path / "run")
    # No readable checkpoint: refused before train_config.json (or anything) is written.
    _crash_after(workdir, 1)
    for path in _weights_files(workdir):
        _truncate(path)
    before = _snapshot(workdir)
    with pytest.raises(training.WorkdirError, match="No readable checkpoint"):
        training.train(workdir, epochs=5, **SMALL)
    assert _snapshot(workdir) == before

    # A finished run whose model.keras was moved away is refused, not trained from scratch.
    shutil.rmtree(os.path.join(workdir, "backup"))
    training.train(workdir, epochs=1, **SMALL)
    moved = str(tmp_path / "elsewhere.keras")
    os.replace(os.path.join(workdir, "model.keras"), moved)
    before = _snapshot(workdir)
    for epochs in (1, 2):
        with pytest.raises(training.WorkdirError, match=r"finished run of 1 epoch.*model\.keras "
                                                        r"is missing.*put it back"):
            training.train(workdir, epochs=epochs, **SMALL)
    assert _snapshot(workdir) == before

    # A folder where model.keras goes is refused up front, not after training.
    os.makedirs(os.path.join(workdir, "model.keras"))
    with pytest.raises(training.WorkdirError, match=r"model\.keras is a folder, not a file"):
        training.train(workdir, epochs=2, **SMALL)
    assert _snapshot(workdir) == before


def test_unusable_run_records_are_named(tmp_path):
    workdir = str(tmp_path / "run")
    _crash_after(workdir, 1)
    config = os.path.join(workdir, "train_config.json")
    with open(config, "w") as f:
        f.write("[]")
    with pytest.raises(training.WorkdirError, match=r"train_config\.json.*not a JSON object"):
        training.train(workdir, epochs=3, **SMALL)
    # Checkpoints whose settings are unknown are not resumed with whatever is asked now.
    os.remove(config)
    with pytest.raises(training.WorkdirError, match=r"train_config\.json is missing.*delete "):
        training.train(workdir, epochs=3, **{**SMALL, "learning_rate": 0.5})


def test_checkpoint_with_non_finite_weights_falls_back_to_the_previous_one(tmp_path):
    workdir = str(tmp_path / "run")
    _crash_after(workdir, 2, epochs=2)
    newest = _weights_files(workdir)[-1]
    import h5py
    with h5py.File(newest, "r+") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(obj)
                     if isinstance(obj, h5py.Dataset) and obj.size > 1 else None)
        datasets[0][...] = np.nan
    with pytest.warns(UserWarning, match=rf"{os.path.basename(newest)} is unreadable.*"
                                         r"non-finite.*after epoch 1"):
        _, history = training.train(workdir, epochs=2, **SMALL)
    assert history.epoch == [1]


def test_a_checkpoint_changed_after_it_was_written_falls_back_to_the_previous_one(tmp_path):
    """Issue 40, point 2: two kernels overwritten with finite noise were resumed without a word
    (the KL went from 1.1 to 6.3 million); only NaN and Inf were noticed."""
    workdir = str(tmp_path / "run")
    _crash_after(workdir, 2, epochs=2)
    # What `sha256sum -c` reads: each checkpoint's record matches its bytes.
    for path in _weights_files(workdir):
        digest, name = _read(path + ".sha256", "r").split()
        assert name == os.path.basename(path)
        assert digest == hashlib.sha256(_read(path)).hexdigest()
    newest = _weights_files(workdir)[-1]
    import h5py
    with h5py.File(newest, "r+") as f:
        kernels = []
        f.visititems(lambda name, obj: kernels.append(obj)
                     if isinstance(obj, h5py.Dataset) and obj.ndim == 4 else None)
        for kernel in kernels[:2]:
            kernel[...] = np.random.default_rng(0).normal(0, 30, kernel.shape)
    with pytest.warns(UserWarning, match=rf"{os.path.basename(newest)} is unreadable \(its "
                                         r"bytes differ from its checksum.*after epoch 1"):
        _, history = training.train(workdir, epochs=2, **SMALL)
    assert history.epoch == [1]


def test_a_resume_that_fails_leaves_log_csv_as_it_was(tmp_path):
    """Issue 40, point 3: a resume dropped the log rows of the epochs it was to run again before
    running any; when it failed, their history was gone."""
    workdir = str(tmp_path / "run")
    _crash_after(workdir, 2, epochs=3)
    _truncate(_weights_files(workdir)[-1])  # the resume falls back to epoch 1's checkpoint
    log = _read(os.path.join(workdir, "log.csv"))

    class CrashAtFirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise RuntimeError("crash at the first step")

    with pytest.warns(UserWarning, match="resuming from"):
        with pytest.raises(RuntimeError, match="crash at the first step"):
            training.train(workdir, epochs=3, callbacks=[CrashAtFirstStep()], **SMALL)
    assert _read(os.path.join(workdir, "log.csv")) == log
    with pytest.warns(UserWarning, match="resuming from"):
        _, history = training.train(workdir, epochs=3, **SMALL)
    assert history.epoch == [1, 2] and _logged_epochs(workdir) == [0, 1, 2]


def test_kill_after_the_finish_was_recorded_leaves_no_stale_checkpoints(tmp_path):
    workdir = str(tmp_path / "run")
    training.train(workdir, epochs=2, **SMALL)
    # What a kill between recording the finish and deleting backup/ leaves behind.
    _crash_after(str(tmp_path / "other"), 2, epochs=2)
    shutil.copytree(os.path.join(tmp_path, "other", "backup"), os.path.join(workdir, "backup"))
    with pytest.raises(training.WorkdirError, match="finished run of 2 epochs"):
        training.train(workdir, epochs=2, **SMALL)
    assert not os.path.exists(os.path.join(workdir, "backup"))
    _, history = training.train(workdir, epochs=3, **SMALL)
    assert history.epoch == [2]


def test_killed_mirrored_run_resumes_on_one_device(tmp_path):
    """Checkpoints written under MirroredStrategy resume without it (strategy may change)."""
    workdir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="crash"):
        training.train(workdir, epochs=2, strategy="mirrored", callbacks=[CrashAfterEpoch(1)],
                       **SMALL)
    expected = tfprobunet.ProbabilisticUNet(num_classes=2, **{
        k: SMALL[k] for k in ("num_channels", "convs_per_block", "latent_dim")})
    expected.build((None, 16, 16, 1))
    expected.compile(optimizer="adam")
    expected.optimizer.build(expected.trainable_variables)
    expected.load_weights(_weights_files(workdir)[-1])

    class FromTheCheckpoint(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            for a, b in zip(self.model.get_weights(), expected.get_weights()):
                np.testing.assert_array_equal(a, b)

    _, history = training.train(workdir, epochs=2, callbacks=[FromTheCheckpoint()], **SMALL)
    assert history.epoch == [1] and _logged_epochs(workdir) == [0, 1]


def _rate(schedule, step):
    return float(schedule(step)) if callable(schedule) else schedule


def test_schedules_give_the_hand_computed_learning_rates():
    assert training.learning_rate_schedule("constant", 1e-3, 300) == 1e-3
    # The official 1e-4 -> 5e-5 -> 1e-5 (-> 5e-7) at 80k/160k/240k of 240k, scaled to 300 steps:
    # Keras' PiecewiseConstantDecay keeps a value up to and including its boundary.
    piecewise = training.learning_rate_schedule("piecewise", 1e-3, 300)
    for step, expected in [(0, 1e-3), (100, 1e-3), (101, 5e-4), (200, 5e-4), (201, 1e-4),
                           (300, 1e-4), (301, 5e-6)]:
        assert _rate(piecewise, step) == pytest.approx(expected), step
    # 105 steps: round(0.05 * 105) = 5 warm-up steps from 0, then half a cosine over 100 steps.
    cosine = training.learning_rate_schedule("cosine", 1e-3, 105)
    for step, expected in [(0, 0.0), (1, 2e-4), (5, 1e-3), (30, 1e-3 * (1 + np.cos(np.pi / 4)) / 2),
                           (55, 5e-4), (105, 0.0)]:
        assert _rate(cosine, step) == pytest.approx(expected, abs=1e-9), step
    # Warm-up over round(0.05 * 300) = 15 steps, 1e-3 until step 200, half a cosine to 300.
    wsd = training.learning_rate_schedule("wsd", 1e-3, 300)
    for step, expected in [(0, 0.0), (3, 2e-4), (15, 1e-3), (200, 1e-3), (250, 5e-4),
                           (300, 0.0), (400, 0.0)]:
        assert _rate(wsd, step) == pytest.approx(expected, abs=1e-9), step
    # Saved with the optimizer in .keras files: the config round-trips.
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(wsd))
    assert [_rate(restored, t) for t in (3, 250)] == [_rate(wsd, t) for t in (3, 250)]
    with pytest.raises(ValueError, match="`schedule` must be one of"):
        training.learning_rate_schedule("linear", 1e-3, 10)


def test_schedules_of_runs_too_short_to_warm_up_start_at_the_peak_rate():
    """A run of 1 to 10 steps warms up over round(0.05 * steps) = 0 steps: its first step is at
    the full rate (a 1-step run must train), for every schedule; `wsd` keeps it to 2/3 of the
    run. (A 1-step `wsd` run used to raise ValueError, and a 0-step warm-up gave rate 0.)"""
    for name in ("piecewise", "cosine", "wsd"):
        for total in (1, 2, 3, 10):
            schedule = training.learning_rate_schedule(name, 1e-3, total)
            assert _rate(schedule, 0) == pytest.approx(1e-3), (name, total)
    wsd = training.learning_rate_schedule("wsd", 1e-3, 3)  # decay from step 2 to 3
    assert [_rate(wsd, t) for t in (0, 1, 2, 3)] == pytest.approx([1e-3, 1e-3, 1e-3, 0.0])
    assert _rate(training.WarmupStableDecay(1e-3, 10, 0, 5), 0) == pytest.approx(1e-3)


def test_a_resumed_run_continues_the_schedule_where_it_stopped(tmp_path):
    workdir = str(tmp_path)
    kwargs = dict(SMALL, steps_per_epoch=3, schedule="piecewise", learning_rate=1e-2)
    with pytest.raises(RuntimeError, match="crash"):
        training.train(workdir, epochs=3, callbacks=[CrashAfterEpoch(1)], **kwargs)
    model, history = training.train(workdir, epochs=3, **kwargs)
    assert history.epoch == [1, 2]
    # Restored at step 3, then 6 more: a restarted schedule would stand at 6.
    assert int(model.optimizer.iterations) == 9
    # 9 steps: boundaries at 3, 6, 9, so step 9 is in the third piece, 0.1 x 1e-2.
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    loaded = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert int(loaded.optimizer.iterations) == 9
    assert float(loaded.optimizer.learning_rate) == pytest.approx(1e-3)


def test_max_minutes_stops_at_an_epoch_end_and_the_run_continues(tmp_path):
    workdir = str(tmp_path)
    # A budget spent before the first epoch ends: training stops after that epoch, whole.
    model, history = training.train(workdir, epochs=4, max_minutes=1e-6, **SMALL)
    assert history.epoch == [0]
    assert _logged_epochs(workdir) == [0]
    with open(os.path.join(workdir, training.CONFIG)) as f:
        assert json.load(f)["finished_epochs"] == 1
    assert int(model.optimizer.iterations) == SMALL["steps_per_epoch"]
    # The same call continues from there; without a budget it trains to `epochs`.
    _, history = training.train(workdir, epochs=4, max_minutes=1e-6, **SMALL)
    assert history.epoch == [1]
    _, history = training.train(workdir, epochs=4, **SMALL)
    assert history.epoch == [2, 3] and _logged_epochs(workdir) == [0, 1, 2, 3]


def test_train_and_evaluate_take_your_own_source_with_its_annotation_weights(tmp_path):
    flips = (0.5, 0.2)  # 4 modes: 0.4, 0.1, 0.4, 0.1
    _, probabilities = synthetic.flip_modes(flips)
    num_classes = synthetic.flips_num_classes(flips)

    def source(n, seed):
        return tfprobunet.data.Source(synthetic.flips(n, 16, flips, seed=seed), num_classes,
                                      probabilities, None)

    model, history = training.train(
        str(tmp_path), dataset=source(8, 0), validation_data=source(4, 1), epochs=1,
        steps_per_epoch=2, batch_size=4, num_channels=[8, 16], convs_per_block=1,
        latent_dim=2, verbose=0)
    assert model.num_classes == num_classes and "val_ged" in history.history
    with open(os.path.join(str(tmp_path), training.CONFIG)) as f:
        assert json.load(f)["dataset"] == "custom"
    # The calibration of the last epoch's weights on the validation images, logged: the same as
    # evaluating the final model on them with the same seed.
    with open(os.path.join(str(tmp_path), "log.csv"), newline="") as f:
        logged = list(csv.DictReader(f))[-1]
    check = tfprobunet.evaluate(model, source(4, 1), sample_counts=(16,), verbose=0)["modes"]
    assert float(logged["val_mode_r"]) == pytest.approx(check["pearson_r"], abs=1e-6)
    assert float(logged["val_mode_log_r"]) == pytest.approx(check["log_pearson_r"], abs=1e-6)
    assert float(logged["val_flip_2_4"]) == pytest.approx(check["flips"][1]["sampled"], abs=1e-6)
    report = tfprobunet.evaluate(model, source(6, 2), sample_counts=(2,), verbose=0)
    assert report["modes"]["num_modes"] == 4
    np.testing.assert_allclose(report["modes"]["true_probabilities"], [0.4, 0.1, 0.4, 0.1])
    assert sum(report["modes"]["frequencies"]) == pytest.approx(1.0)
    # Per-class flip frequencies against the flip probabilities: class 1 -> 3 and 2 -> 4.
    assert [(f["class"], f["twin"]) for f in report["modes"]["flips"]] == [(1, 3), (2, 4)]
    np.testing.assert_allclose([f["true"] for f in report["modes"]["flips"]], flips)


def test_your_own_dataset_needs_num_classes_and_consistent_weights(tmp_path):
    dataset = synthetic.flips(4, 16, (0.5,), seed=0)
    with pytest.raises(ValueError, match="needs `num_classes=`"):
        training.train(str(tmp_path), dataset=dataset)
    with pytest.raises(ValueError, match="one probability per annotation"):
        training.train(str(tmp_path), dataset=tfprobunet.data.Source(dataset, 3, [0.2, 0.3, 0.5],
                                                                     None))
    with pytest.raises(ValueError, match=r"\(image \(h, w, c\) float, annotations"):
        training.train(str(tmp_path), dataset=dataset.map(lambda image, annotations: image),
                       num_classes=3)
    assert not os.listdir(str(tmp_path))


def test_a_run_recorded_before_schedules_existed_resumes(tmp_path):
    """Settings added later (`schedule`, `mixed_precision`) read as their defaults in an older
    train_config.json: its run resumes instead of being refused as one with other settings."""
    workdir = str(tmp_path)
    _crash_after(workdir, 1)
    path = os.path.join(workdir, training.CONFIG)
    with open(path) as f:
        record = json.load(f)
    for key in ("schedule", "mixed_precision"):
        del record[key]
    with open(path, "w") as f:
        json.dump(record, f)
    _, history = training.train(workdir, epochs=3, **SMALL)
    assert history.epoch == [1, 2]
    with pytest.raises(training.WorkdirError, match="schedule: 'constant' before, 'cosine' now"):
        training.train(workdir, epochs=4, schedule="cosine", **SMALL)
