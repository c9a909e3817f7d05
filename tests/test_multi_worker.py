"""Multi-worker training on loopback: worker processes with `TF_CONFIG` train exactly as one
process on the same global batch, and a killed worker's run resumes from the last checkpoint."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tfprobunet import _io, saving, training

RUN = """
import faulthandler, json, os, signal, sys, threading, time
import keras
faulthandler.register(signal.SIGUSR1)  # `_outputs` asks a stuck worker where it is
from tfprobunet import training

class KillAtEpochStart(keras.callbacks.Callback):
    # Kill this worker as epoch `at` (1-based) begins, once the chief's checkpoint of the epoch
    # before is in place.
    def __init__(self, at, checkpoint):
        super().__init__()
        self.at, self.checkpoint = at, checkpoint

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.at:
            while not os.path.exists(self.checkpoint):
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)

class TermDuringStep(keras.callbacks.Callback):
    # SIGTERM from another thread `delay` s into the first step of epoch 2: Python handles it
    # only when the step returns, after the step has shared this worker's "no request".
    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 1 and batch == 0:
            threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGTERM)).start()

workdir, strategy, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
kill_at = int(os.environ.get("KILL_AT", 0))
callbacks = [KillAtEpochStart(kill_at, training.EpochCheckpoint(os.path.join(
    workdir, "backup")).path(kill_at - 1))] if kill_at else []
if float(os.environ.get("TERM_DELAY", 0)):
    callbacks.append(TermDuringStep(float(os.environ["TERM_DELAY"])))
training.train(workdir, **json.loads(os.environ["SETTINGS"]), epochs=epochs,
               validation_examples=int(os.environ["VAL"]), strategy=strategy, verbose=2,
               callbacks=callbacks)
print("EPOCHS-DONE")
"""
SETTINGS = dict(dataset="flips", steps_per_epoch=2, batch_size=4, image_size=16, num_examples=8,
                learning_rate=1e-3, num_channels=[8, 16], convs_per_block=1, latent_dim=2,
                fcomb_layers=1, use_posterior_mean=True, seed=0)


def _ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(script, workdir, epochs, tmp, kill_at=None, validation_examples=0,
             term_delay=0, settings=None):
    ports = _ports(2)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TMPDIR=str(tmp),
                   PYTHONUNBUFFERED="1", KILL_AT=str(kill_at if index == 1 and kill_at else 0),
                   VAL=str(validation_examples), SETTINGS=json.dumps(settings or SETTINGS),
                   TERM_DELAY=str(term_delay if index == 1 else 0))
        processes.append(subprocess.Popen(
            [sys.executable, str(script), workdir, "multi_worker", str(epochs)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return processes


def _outputs(processes, timeout):
    """The processes' outputs once all have ended, within one deadline of `timeout` seconds for
    all; past it, each prints its threads' stacks and is killed, and the test fails with every
    output (a worker left running would also slow the tests that run after)."""
    deadline = time.monotonic() + timeout
    try:
        return [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
                for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)
        time.sleep(2)  # the stacks are written: no condition to wait on in a dying process
        for p in processes:
            p.kill()
        outputs = [p.communicate()[0] for p in processes]
        pytest.fail(f"not ended within {timeout} s:\n" + "\n=====\n".join(
            out[-6000:] for out in outputs))


def _epochs_run(output):
    return [line.split()[1] for line in output.splitlines() if line.startswith("Epoch ")]


def _logged_epochs(workdir):
    with open(os.path.join(workdir, "log.csv")) as f:
        return [int(line.split(",")[0]) for line in f.readlines()[1:]]


@pytest.mark.slow
def test_two_workers_train_as_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    (tmp_path / "tmp").mkdir()
    # With validation: val_ged and the calibration log of every epoch, as one process has them.
    workers = _workers(script, str(tmp_path / "multi"), 2, tmp_path / "tmp",
                       validation_examples=2)
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), "default",
                             "2"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, VAL="2", SETTINGS=json.dumps(SETTINGS)))
    outputs = _outputs(workers, 300)
    assert [p.returncode for p in workers] == [0, 0], outputs
    assert single.returncode == 0, single.stderr[-3000:]
    multi = saving.load_model(str(tmp_path / "multi" / "model.keras"))
    one = saving.load_model(str(tmp_path / "single" / "model.keras"))
    for a, b in zip(multi.weights, one.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    logged = [np.genfromtxt(tmp_path / run / "log.csv", delimiter=",", names=True)
              for run in ("multi", "single")]
    assert logged[0].dtype.names == logged[1].dtype.names
    assert {"val_ged", "val_loss", "kl", "loss"} <= set(logged[0].dtype.names)
    # Training's terms (and the calibration log, sampled by a callback) are the same. The val_
    # terms draw an annotation and the GED samples per replica, so they are other draws of
    # the same estimates.
    differ = [name for name in logged[0].dtype.names if not name.startswith("val_")
              and not np.allclose(logged[0][name], logged[1][name], rtol=1e-5, atol=0)]
    assert differ == [], [(n, logged[0][n], logged[1][n]) for n in differ]
    assert np.all((logged[0]["val_ged"] > 0) & (logged[0]["val_ged"] < 2)), logged[0]["val_ged"]
    np.testing.assert_allclose(logged[0]["val_ged"], logged[1]["val_ged"], atol=0.2)
    # Only the chief wrote the run's files; the other worker's folder is gone.
    # (and the chief's lock, which the system released when it ended)
    assert sorted(os.listdir(tmp_path / "multi")) == [_io.LOCK_NAME, "log.csv",
                                                      "model.keras", "train_config.json"]
    assert os.listdir(tmp_path / "tmp") == []
    with open(tmp_path / "multi" / training.CONFIG) as f:
        assert json.load(f)["strategy"] == "multi_worker"


@pytest.mark.slow
def test_a_killed_worker_resumes_without_repeating_or_losing_epochs(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    (tmp_path / "tmp").mkdir()
    workdir = str(tmp_path / "run")
    chief, worker = _workers(script, workdir, 3, tmp_path / "tmp", kill_at=3)
    try:
        worker.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        _outputs((chief, worker), 1)  # fails with both outputs
    assert worker.returncode == -signal.SIGKILL
    # The chief now waits for the dead worker in the next collective: stop it as a cluster
    # manager would, then start both again.
    time.sleep(1)
    chief.kill()
    first = chief.communicate(timeout=60)[0]
    assert _epochs_run(first)[:2] == ["1/3", "2/3"], first
    assert _logged_epochs(workdir)[:2] == [0, 1]
    outputs = _outputs(_workers(script, workdir, 3, tmp_path / "tmp"), 300)
    assert all("EPOCHS-DONE" in out for out in outputs), outputs
    assert [_epochs_run(out) for out in outputs] == [["3/3"], ["3/3"]]
    assert _logged_epochs(workdir) == [0, 1, 2]
    assert os.path.exists(os.path.join(workdir, "model.keras"))
    assert not os.path.exists(os.path.join(workdir, "backup"))


@pytest.mark.parametrize("tf_config, problem", [
    ('{"cluster": ', r"not valid JSON"),
    ("[]", r"must be a JSON object, received a list"),
    ('{"task": {"type": "worker", "index": 0}}', r'no "cluster"'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     r"'localhost', not \"host:port\""),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     r"index 2 is out of range.*indices 0 to 1"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     r"'chief' is not in the cluster"),
])
def test_a_malformed_tf_config_is_one_line_naming_it(capsys, monkeypatch, tf_config, problem):
    from conftest import cli_error

    monkeypatch.setenv("TF_CONFIG", tf_config)
    line = cli_error(capsys, ["train", "--strategy", "multi_worker", "--dataset", "graders",
                              "--workdir", "unused", "--epochs", "1"])
    assert re.search(rf"TF_CONFIG .*{problem}", line), line
    assert not os.path.exists("unused")


@pytest.mark.slow
@pytest.mark.parametrize("missing", [0, 1], ids=["chief-missing", "worker-missing"])
def test_a_task_whose_peer_never_starts_exits_within_the_connect_timeout_naming_it(
        tmp_path, missing):
    ports = _ports(2)
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                 "task": {"type": "worker", "index": 1 - missing}}
    start = time.monotonic()
    worker = subprocess.run(
        [sys.executable, "-m", "tfprobunet.cli", "train", "--strategy", "multi_worker",
         "--connect-timeout", "5", "--dataset", "graders", "--workdir", str(tmp_path / "run"),
         "--epochs", "1", "--image-size", "16", "--num-examples", "4"],
        env=dict(os.environ, TF_CONFIG=json.dumps(tf_config)), capture_output=True, text=True,
        timeout=240)
    seconds = time.monotonic() - start
    # Killed by its watchdog: TensorFlow's wait holds the GIL and takes SIGTERM.
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    lines = worker.stderr.strip().splitlines()
    assert len(lines) == 1, worker.stderr
    assert re.search(rf"did not form within 5 s .*no answer from worker {missing} "
                     rf"\(127\.0\.0\.1:{ports[missing]}\)", lines[0]), lines[0]
    assert seconds < 120, seconds


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_the_run_resumes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    (tmp_path / "tmp").mkdir()
    workdir = str(tmp_path / "run")
    chief, worker = _workers(script, workdir, 50, tmp_path / "tmp")
    checkpoint = training.EpochCheckpoint(os.path.join(workdir, "backup"))
    deadline = time.monotonic() + 240
    while not checkpoint.epochs() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)  # TensorFlow's own watcher used to swallow it
    outputs = _outputs((chief, worker), 120)
    assert chief.returncode != 0 and worker.returncode != 0, outputs
    assert all("TrainingInterrupted: stopped by SIGTERM" in out for out in outputs), outputs
    stopped = [re.search(r"stopped by SIGTERM at epoch (\d+), step (\d+)", out).groups()
               for out in outputs]
    assert stopped[0] == stopped[1], stopped
    done = checkpoint.epochs()[-1]
    assert _logged_epochs(workdir) == list(range(done))
    outputs = _outputs(_workers(script, workdir, done + 1, tmp_path / "tmp"), 300)
    assert all("EPOCHS-DONE" in out for out in outputs), outputs
    assert _logged_epochs(workdir) == list(range(done + 1))


@pytest.mark.slow
def test_a_signal_that_arrives_during_a_step_stops_every_worker_after_the_next(tmp_path):
    """A signal that arrives while a step runs is handled when the step returns, after that step
    shared "no request" from this worker: the worker used to stop at once, alone, and the chief,
    waiting for it in the next step's collective, failed with another error. Now both stop after
    the next step, which carries the request to all."""
    script = tmp_path / "run.py"
    script.write_text(RUN)
    (tmp_path / "tmp").mkdir()
    # Steps of ~0.1-0.3 s (128x128, batch 16), the signal 0.03 s into the first of epoch 2.
    settings = {**SETTINGS, "image_size": 128, "batch_size": 16, "num_examples": 32}
    outputs = _outputs(_workers(script, str(tmp_path / "run"), 6, tmp_path / "tmp",
                                term_delay=0.03, settings=settings), 300)
    stopped = [re.search(r"TrainingInterrupted: stopped by SIGTERM at epoch (\d+), step (\d+)",
                         out) for out in outputs]
    assert all(stopped), "\n=====\n".join(out[-3000:] for out in outputs)
    # Epoch 2, step 2 when the signal lands inside step 1, as it does but on a loaded machine,
    # where it may come earlier or later: the same step always.
    assert stopped[0].groups() == stopped[1].groups(), [m.group(0) for m in stopped]
