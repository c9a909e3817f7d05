import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfprobunet
from tfprobunet import cli


def test_train_command_writes_checkpointed_run(tmp_path, capsys):
    """Under MirroredStrategy over the 2 logical CPUs of conftest."""
    workdir = str(tmp_path / "run")
    command = ["train", "--dataset", "graders", "--workdir", workdir, "--epochs", "2",
               "--strategy", "mirrored",
               "--steps-per-epoch", "2", "--batch-size", "2", "--image-size", "16",
               "--num-examples", "8", "--num-channels", "8,16", "--convs-per-block", "1",
               "--latent-dim", "2", "--learning-rate", "1e-3"]
    assert cli.main(command) == 0
    assert "model saved to" in capsys.readouterr().out
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert isinstance(model, tfprobunet.ProbabilisticUNet)
    assert model.num_channels == (8, 16) and model.latent_dim == 2 and model.num_classes == 2
    with open(os.path.join(workdir, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    # The same command again has nothing to do: refused with the way out, the model untouched.
    with open(os.path.join(workdir, "model.keras"), "rb") as f:
        saved = f.read()
    with pytest.raises(SystemExit, match=r"^tfprobunet train: .*finished run of 2 epochs.*"
                                         r"epochs > 2.*new workdir"):
        cli.main(command)
    with open(os.path.join(workdir, "model.keras"), "rb") as f:
        assert f.read() == saved


def test_cli_rejects_unknown_choices_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", "mnist", "--workdir", "x"])


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "tfprobunet.cli", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "demo" in out.stdout
