"""A training run neither poisons nor collides: non-finite settings are refused, weights are
checked after the last update of every epoch, one run holds a workdir at a time, temporary files
are unique per process and never left behind, and what goes wrong prints one line."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import keras
import numpy as np
import pytest

from conftest import cli_error, tiny_model
from tfprobunet import _io, cli, training

SMALL = dict(dataset="graders", steps_per_epoch=2, batch_size=2, image_size=16, num_examples=4,
             num_channels=[8, 16], convs_per_block=1, latent_dim=2, verbose=0)
CLI_SMALL = ["--dataset", "graders", "--steps-per-epoch", "2", "--batch-size", "2",
             "--image-size", "16", "--num-examples", "4", "--num-channels", "8,16",
             "--convs-per-block", "1", "--latent-dim", "2"]


def _strict_json(path):
    """The JSON at `path`, refusing NaN and Infinity (which `json.load` accepts, and which are
    not JSON)."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


@pytest.mark.parametrize("setting, value", [
    ("learning_rate", float("nan")), ("learning_rate", float("inf")), ("learning_rate", -1.0),
    ("learning_rate", 0.0), ("learning_rate", 1e39), ("beta", float("nan")),
    ("beta", float("inf")), ("weight_decay", float("nan")), ("weight_decay", -1e-5),
    ("max_minutes", float("nan")), ("epochs", 0), ("steps_per_epoch", 0), ("batch_size", 0),
    ("geco_target", float("inf")), ("energy_weight", float("nan"))])
def test_non_finite_or_senseless_settings_are_refused_before_anything_is_written(
        tmp_path, setting, value):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"`{setting}` must be .*Received: {setting}="):
        training.train(str(workdir), **{**SMALL, "epochs": 1, setting: value})
    assert not workdir.exists()


def test_learning_rate_nan_from_the_cli_is_one_line_and_leaves_no_model(tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--workdir", str(workdir), "--epochs", "1", "--learning-rate", "nan",
                  *CLI_SMALL])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("tfprobunet train: error: argument --learning-rate") and \
        "'nan'" in lines[0], lines
    assert not (workdir / "model.keras").exists()
    if (workdir / training.CONFIG).exists():
        _strict_json(workdir / training.CONFIG)


class PoisonAfterLastUpdate(keras.callbacks.Callback):
    """After the last step of epoch `at` (1-based), a kernel goes NaN, as a diverging update
    leaves it: the loss of that step, computed before the update, was finite."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch + 1 == self.at and batch + 1 == self.params["steps"]:
            kernel = self.model.trainable_weights[0]
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


def test_weights_gone_non_finite_in_the_last_update_of_an_epoch_stop_the_run(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(training.NonFiniteLossError, match=r"epoch 2.*weights"):
        training.train(str(workdir), **{**SMALL, "epochs": 2},
                       callbacks=[PoisonAfterLastUpdate(2)])
    assert not (workdir / "model.keras").exists()
    _strict_json(workdir / training.CONFIG)
    # What is on disk is epoch 1, finite, and the run resumes from it.
    checkpoints = training.EpochCheckpoint(str(workdir / "backup")).epochs()
    assert checkpoints == [1]
    with open(workdir / "log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0]
    model, history = training.train(str(workdir), **{**SMALL, "epochs": 2})
    assert history.epoch == [1]
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_a_dict_of_ged_classes_is_refused_with_what_works():
    with pytest.raises(ValueError, match=r"`ged_classes` must be .*class indices.*Received"):
        tiny_model(ged_classes={"foreground": 1}).build((None, 16, 16, 1))


def test_replacing_the_same_file_from_two_threads_never_collides(tmp_path):
    path = str(tmp_path / "log.csv")
    errors = []

    def write(text):
        try:
            for _ in range(200):
                with _io.replacing(path) as tmp, open(tmp, "w") as f:
                    f.write(text)
        except Exception as error:  # noqa: BLE001 -- collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=write, args=(c * 100_000,)) for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open(path) as f:
        assert f.read() in ("a" * 100_000, "b" * 100_000)
    assert os.listdir(tmp_path) == ["log.csv"]


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temporary_one(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("the previous model")
    with pytest.raises(OSError, match="disk"):
        with _io.replacing(str(path)) as tmp, open(tmp, "w") as f:
            f.write("half a mod")
            raise OSError(28, "No space left on disk")
    assert os.listdir(tmp_path) == ["model.keras"]
    assert path.read_text() == "the previous model"


HOLDER = textwrap.dedent("""
    import os, sys, time
    import keras
    from tfprobunet import training

    class WaitFor(keras.callbacks.Callback):
        # Hold the run inside its first epoch until the file sys.argv[2] exists.
        def on_train_batch_begin(self, batch, logs=None):
            print("TRAINING", flush=True)
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.05)

    training.train(sys.argv[1], dataset="graders", epochs=2, steps_per_epoch=2, batch_size=2,
                   image_size=16, num_examples=4, num_channels=[8, 16], convs_per_block=1,
                   latent_dim=2, verbose=2, callbacks=[WaitFor()])
    print("EPOCHS-DONE", flush=True)
""")


@pytest.mark.slow
def test_a_second_run_on_a_held_workdir_is_refused_naming_the_holder(tmp_path):
    script, go = tmp_path / "holder.py", tmp_path / "go"
    script.write_text(HOLDER)
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, str(script), str(workdir), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in holder.stdout:
            if line.strip() == "TRAINING":
                break
        else:
            pytest.fail("the first run never started training")
        second = subprocess.run(
            [sys.executable, "-m", "tfprobunet.cli", "train", "--workdir", str(workdir),
             "--epochs", "2", *CLI_SMALL], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], second.stderr
        go.touch()
        out = holder.communicate(timeout=300)[0]
    finally:
        holder.kill()
    assert "EPOCHS-DONE" in out, out
    with open(workdir / "log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]


def test_the_workdir_lock_is_refused_while_held_and_free_once_released(tmp_path):
    workdir = str(tmp_path)
    with _io.exclusive(workdir, "train"):
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from tfprobunet import _io\n"
             "with _io.exclusive(sys.argv[1], 'train'): pass", workdir],
            capture_output=True, text=True, timeout=120)
        assert child.returncode != 0
        assert f"pid {os.getpid()}" in child.stderr, child.stderr
    # A holder that dies, even by SIGKILL, releases it.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tfprobunet import _io\n"
         "with _io.exclusive(sys.argv[1], 'train'):\n"
         "    print('HELD', flush=True); time.sleep(600)", workdir],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "HELD"
    with pytest.raises(_io.WorkdirBusyError, match=f"pid {holder.pid}"):
        with _io.exclusive(workdir, "train"):
            pass
    holder.kill()
    holder.wait(timeout=60)
    with _io.exclusive(workdir, "train"):
        pass


def test_a_symlinked_workdir_lock_is_refused_and_its_target_left_untouched(tmp_path, capsys):
    """Issue 40, point 1: `train` followed `runs/x/.tfprobunet.lock` when it was a symlink and
    wrote "pid N on host" into its target, outside the workdir."""
    workdir, target = tmp_path / "run", tmp_path / "precious.txt"
    workdir.mkdir()
    target.write_text("keep me")
    os.symlink(target, workdir / _io.LOCK_NAME)
    with pytest.raises(_io.WorkdirError, match=r"\.tfprobunet\.lock is a symbolic link"):
        with _io.exclusive(str(workdir), "train"):
            pass
    line = cli_error(capsys, ["train", "--workdir", str(workdir), "--epochs", "1", *CLI_SMALL])
    assert "symbolic link" in line and str(target) in line
    assert target.read_text() == "keep me"


def _snapshot(path):
    """The names and bytes under `path` (a file or a folder), to compare before and after."""
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("name", ["log.csv", "train_config.json", "model.keras", "backup",
                                  "backup/epoch-0001.weights.h5"])
def test_a_symlinked_run_file_or_folder_is_refused_and_its_target_left_untouched(
        tmp_path, capsys, name):
    """Issue 40, point 1: a run's log, settings, model, checkpoint folder or checkpoint that is a
    symbolic link led reads or writes outside the workdir (a `backup` link got the checkpoints)."""
    workdir, outside = tmp_path / "run", tmp_path / "outside"
    training.train(str(workdir), epochs=1, **SMALL)
    outside.mkdir()
    is_folder = name == "backup"
    target = outside / ("folder" if is_folder else os.path.basename(name))
    if is_folder:
        target.mkdir()
        (target / "keep.txt").write_text("keep me")
    else:
        target.write_text("keep me")
    link = workdir / name
    link.parent.mkdir(exist_ok=True)
    if link.exists():
        link.unlink()
    os.symlink(target, link)
    before = _snapshot(outside)
    line = cli_error(capsys, ["train", "--workdir", str(workdir), "--epochs", "2", *CLI_SMALL])
    assert f"{link} is a symbolic link (to {target})" in line, line
    assert _snapshot(outside) == before
    assert os.path.islink(link)


def test_a_run_file_of_the_wrong_kind_is_refused_before_anything_changes(tmp_path, capsys):
    """Issue 40, point 3: with `backup` a file, `train` started again at epoch 1, cut log.csv
    from 3 rows to 1, then crashed."""
    workdir = tmp_path / "run"
    training.train(str(workdir), epochs=3, **SMALL)
    (workdir / "backup").write_text("not a folder")
    before = _snapshot(workdir)
    line = cli_error(capsys, ["train", "--workdir", str(workdir), "--epochs", "4", *CLI_SMALL])
    assert f"{workdir / 'backup'} is a file" in line and "folder" in line, line
    after = _snapshot(workdir)
    after.pop(_io.LOCK_NAME), before.pop(_io.LOCK_NAME)
    assert after == before
    (workdir / "backup").unlink()
    for name in ("log.csv", "train_config.json"):  # a folder where a file belongs
        path = workdir / name
        saved = path.read_bytes()
        path.unlink()
        path.mkdir()
        line = cli_error(capsys, ["train", "--workdir", str(workdir), "--epochs", "4",
                                  *CLI_SMALL])
        assert f"{path} is a folder" in line, line
        path.rmdir()
        path.write_bytes(saved)


@pytest.mark.parametrize("text,problem", [
    ("epoch,loss\n0,1.5\nzero,1.2\n", "row 3"),
    ("loss,kl\n1.5,0.1\n", "no `epoch` column"),
    ("epoch,loss\n0,1.5,7\n", "row 2"),
])
def test_a_malformed_log_csv_is_refused_naming_the_file(tmp_path, capsys, text, problem):
    """Issue 40, point 10: a damaged log.csv failed with a bare KeyError or ValueError."""
    workdir = tmp_path / "run"
    training.train(str(workdir), epochs=1, **SMALL)
    (workdir / "log.csv").write_text(text)
    line = cli_error(capsys, ["train", "--workdir", str(workdir), "--epochs", "2", *CLI_SMALL])
    assert str(workdir / "log.csv") in line and problem in line, line
    assert (workdir / "log.csv").read_text() == text


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.write_text("not a folder")
    line = cli_error(capsys, ["train", "--workdir", str(workdir), "--epochs", "1", *CLI_SMALL])
    assert str(workdir) in line and "not a folder" in line.lower()


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_training_at_a_step_with_one_line_and_the_run_resumes(tmp_path, sent):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "tfprobunet.cli", "train", "--workdir", str(workdir),
               "--epochs", "40", *CLI_SMALL]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    checkpoint = training.EpochCheckpoint(str(workdir / "backup"))
    deadline = time.monotonic() + 240
    while not checkpoint.epochs() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(sent)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + sent, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfprobunet: stopped by "), err
    assert "Traceback" not in err
    done = checkpoint.epochs()
    assert done and not (workdir / "model.keras").exists()
    with open(workdir / "log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(done[-1]))
    resumed = subprocess.run([*command[:command.index("40")], str(done[-1] + 1),
                              *CLI_SMALL], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with open(workdir / "log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(done[-1] + 1))


# Run inside a mount namespace (`unshare -rm`): a 64 MiB tmpfs at argv[1] filled to leave
# argv[2] bytes free, and a read-only tmpfs at argv[3]. Prints a JSON record of what happened.
FULL_DISK = textwrap.dedent("""
    import json, os, subprocess, sys
    disk, free, readonly = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    filler = os.path.join(disk, "filler")
    stat = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"x" * (stat.f_bavail * stat.f_frsize - free))
    train = [sys.executable, "-m", "tfprobunet.cli", "train", "--epochs", "2", *sys.argv[4:]]
    record = {}
    def run(name, workdir):
        done = subprocess.run([*train, "--workdir", workdir], capture_output=True, text=True)
        files = sorted(os.path.relpath(os.path.join(root, n), workdir)
                       for root, _, names in os.walk(workdir) for n in names)
        record[name] = dict(status=done.returncode, stderr=done.stderr, files=files)
    run("full", os.path.join(disk, "run"))
    os.remove(filler)
    run("freed", os.path.join(disk, "run"))
    run("readonly", os.path.join(readonly, "run"))
    print(json.dumps(record))
""")


@pytest.mark.slow
def test_a_full_disk_or_a_read_only_workdir_is_one_line_and_leaves_nothing_partial(tmp_path):
    disk, readonly = tmp_path / "disk", tmp_path / "readonly"
    disk.mkdir()
    readonly.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    # A model whose checkpoint (weights and Adam's two moments) takes about 2.5 MiB.
    flags = [*CLI_SMALL[:-6], "--num-channels", "32,64", "--convs-per-block", "2",
             "--latent-dim", "2"]
    shell = (f"mount -t tmpfs -o size=64m tmpfs {disk} && "
             f"mount -t tmpfs -o ro,size=1m tmpfs {readonly} && "
             f"exec {sys.executable} {script} {disk} {1 << 20} {readonly} {' '.join(flags)}")
    try:
        done = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True,
                              text=True, timeout=900)
    except FileNotFoundError:
        pytest.skip("no `unshare` here to mount a small tmpfs (util-linux)")
    if done.returncode != 0 and "mount" in done.stderr:
        pytest.skip(f"mounting a tmpfs is not allowed here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    full = record["full"]
    assert full["status"] == 2, full  # not a segfault (139), not 0
    lines = full["stderr"].strip().splitlines()
    assert len(lines) == 1, full["stderr"]
    assert "Not enough disk space" in lines[0] and "backup" in lines[0], lines[0]
    # Nothing partial or temporary: the run's record, its log and no checkpoint file at all.
    assert all(not name.split("/")[-1].startswith(".") or name == _io.LOCK_NAME
               for name in full["files"]), full["files"]
    assert "model.keras" not in full["files"]
    freed = record["freed"]
    assert freed["status"] == 0, freed["stderr"]
    assert "model.keras" in freed["files"]
    readonly = record["readonly"]
    assert readonly["status"] == 2
    lines = readonly["stderr"].strip().splitlines()
    assert len(lines) == 1 and "cannot be written (Read-only file system)" in lines[0], lines
