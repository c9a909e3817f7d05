import argparse
import csv
import inspect
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfprobunet
from tfprobunet import cli, comparison, models, training, tuning
from tfprobunet.cli import flags
from tfprobunet.cli import training as cli_training
from conftest import cli_error


def test_train_command_writes_checkpointed_run(tmp_path, capsys):
    """Under MirroredStrategy over the 2 logical CPUs of conftest, with the energy term."""
    workdir = str(tmp_path / "run")
    command = ["train", "--dataset", "graders", "--workdir", workdir, "--epochs", "2",
               "--strategy", "mirrored",
               "--steps-per-epoch", "2", "--batch-size", "2", "--image-size", "16",
               "--num-examples", "8", "--num-channels", "8,16", "--convs-per-block", "1",
               "--latent-dim", "2", "--learning-rate", "1e-3", "--energy-weight", "10"]
    assert cli.main(command) == 0
    assert "model saved to" in capsys.readouterr().out
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert isinstance(model, tfprobunet.ProbabilisticUNet)
    assert model.num_channels == (8, 16) and model.latent_dim == 2 and model.num_classes == 2
    assert (model.energy_weight, model.energy_samples) == (10.0, 4)
    with open(os.path.join(workdir, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r[term])) for r in rows for term in ("loss", "energy"))
    # The same command again has nothing to do: refused with the way out, the model untouched.
    with open(os.path.join(workdir, "model.keras"), "rb") as f:
        saved = f.read()
    assert re.search(r"^tfprobunet: error: .*finished run of 2 epochs.*epochs > 2.*new workdir",
                     cli_error(capsys, command))
    with open(os.path.join(workdir, "model.keras"), "rb") as f:
        assert f.read() == saved


def test_cli_rejects_unknown_choices_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", "mnist", "--workdir", "x"])


def test_help_lists_the_commands(capsys):
    # `python -m tfprobunet.cli` itself runs in the clean-output test below.
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "train" in out and "demo" in out and "inspect" in out


def _write_npz_splits(folder, rng):
    """Two-class data of 16x16 grey images, 3 graders each, one file per split."""
    os.makedirs(folder)
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        images = rng.integers(0, 256, (n, 16, 16, 1)).astype(np.uint8)
        annotations = rng.integers(0, 2, (n, 3, 16, 16)).astype(np.int64)
        np.savez(os.path.join(folder, f"{split}.npz"), images=images, annotations=annotations)
        yield images, annotations


@pytest.mark.parametrize("preset", ["paper", "cpu-energy"])
def test_train_and_evaluate_read_your_own_npz_folder_with_a_preset(tmp_path, capsys, preset):
    data = str(tmp_path / "data")
    (train_images, train_annotations), *_ = _write_npz_splits(data, np.random.default_rng(0))
    # Read back as written: uint8 images scaled to [0, 1], all annotations, 2 classes.
    source = tfprobunet.data.load("npz", "train", data_dir=data)
    images, annotations = next(iter(source.dataset.batch(8)))
    np.testing.assert_allclose(images, train_images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(annotations, train_annotations)
    assert source.num_classes == 2 and source.annotation_weights is None

    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--preset", preset, "--dataset", "npz", "--data-dir", data,
                     "--workdir", workdir, "--epochs", "1", "--steps-per-epoch", "1",
                     "--batch-size", "2", "--num-channels", "8,16", "--convs-per-block", "1",
                     "--latent-dim", "2", "--fcomb-channels", "4",
                     "--validation-examples", "4"]) == 0
    with open(os.path.join(workdir, "train_config.json")) as f:
        config = json.load(f)
    # The preset's settings, except where a flag said otherwise.
    flags = dict(num_channels=[8, 16], batch_size=2, convs_per_block=1, latent_dim=2,
                 fcomb_channels=4)
    expected = {**tfprobunet.training.preset(preset), **flags}
    assert {k: config[k] for k in expected} == expected
    assert config["fcomb_layers"] == 3
    out = str(tmp_path / "eval")
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", os.path.join(workdir, "model.keras"), "--out",
                     out]) == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["num_images"] == 4 and "presence" in report


def test_npz_errors_name_the_file_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train.npz, val.npz and test.npz"):
        tfprobunet.data.load("npz", "train", data_dir=str(tmp_path))
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 8, 8, 1)), labels=np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"Missing: \['annotations'\]; unknown: \['labels'\]"):
        tfprobunet.data.load("npz", "train", data_dir=str(tmp_path))
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 8, 8, 1)),
             annotations=np.full((2, 8, 8), 7), num_classes=3)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\] \(num_classes=3\) or 255"):
        tfprobunet.data.load("npz", "train", data_dir=str(tmp_path))
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 8, 8, 1)),
             annotations=np.zeros((2, 2, 4, 4), int))
    with pytest.raises(ValueError, match=r"same n, h and w"):
        tfprobunet.data.load("npz", "train", data_dir=str(tmp_path))


STARTUP_LINES = re.compile(r"oneDNN custom operations|cuda drivers|cuInit|cudart_stub|"
                           r"absl::InitializeLog")


def _command(args, **env):
    """Run `tfprobunet ...` as a user would, output captured: no TF_CPP_MIN_LOG_LEVEL."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFPROBUNET_VERBOSE")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=600, env={**environment, **env})


@pytest.mark.slow
def test_captured_output_has_no_escape_codes_and_no_start_up_lines_unless_asked(tmp_path):
    train = ["train", "--dataset", "graders", "--epochs", "2", "--steps-per-epoch", "2",
             "--batch-size", "2", "--image-size", "16", "--num-examples", "8",
             "--num-channels", "8,16", "--convs-per-block", "1", "--latent-dim", "2"]
    quiet = _command(["-m", "tfprobunet.cli", *train, "--workdir", str(tmp_path / "a")])
    assert quiet.returncode == 0, quiet.stderr
    assert "\x1b" not in quiet.stdout + quiet.stderr  # one line per epoch, no progress bar
    assert not STARTUP_LINES.search(quiet.stdout + quiet.stderr), quiet.stderr
    assert re.findall(r"^Epoch \d/2$", quiet.stdout, re.M) == ["Epoch 1/2", "Epoch 2/2"]
    assert "model saved to" in quiet.stdout

    # --debug shows what was held back (here before a command that fails at once).
    loud = _command(["-m", "tfprobunet.cli", "--debug", "export", "--model",
                     str(tmp_path / "missing.keras"), "--base-dir", str(tmp_path / "served")])
    assert loud.returncode != 0 and "missing.keras" in loud.stderr
    assert STARTUP_LINES.search(loud.stderr), loud.stderr
    # So does the environment switch, for the library itself (loaded by its first name used).
    imported = _command(["-c", "import tfprobunet; tfprobunet.train"], TFPROBUNET_VERBOSE="1")
    assert STARTUP_LINES.search(imported.stderr), imported.stderr


def _console_script():
    return os.path.join(os.path.dirname(sys.executable), "tfprobunet")


def _imported_modules(stderr):
    """The modules `python -X importtime` reports."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("command", [[_console_script(), "--help"],
                                     [_console_script(), "train", "--help"],
                                     [_console_script(), "predict", "--help"],
                                     ["-m", "tfprobunet.cli", "evaluate", "--help"],
                                     [_console_script(), "data", "manifest", "--help"]])
def test_help_answers_without_importing_tensorflow(command):
    result = _command(["-X", "importtime", *command])
    assert result.returncode == 0 and "usage: tfprobunet" in result.stdout, result.stderr
    imported = _imported_modules(result.stderr)
    assert "tfprobunet.defaults" in imported  # the parser was built
    heavy = sorted(m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "numpy"))
    assert not heavy, heavy[:5]


def test_cli_errors_are_one_line_with_the_traceback_only_under_debug(tmp_path):
    missing = str(tmp_path / "missing.keras")
    predict = ["predict", "--model", missing, "--image", "a.png", "--out", str(tmp_path)]
    quiet = _command([_console_script(), *predict])
    assert quiet.returncode == 2, quiet.stderr
    assert quiet.stderr.count("\n") == 1 and "Traceback" not in quiet.stderr
    assert quiet.stderr.startswith("tfprobunet: error: ") and missing in quiet.stderr
    loud = _command([_console_script(), "--debug", *predict])
    assert loud.returncode != 0 and "Traceback" in loud.stderr and missing in loud.stderr


@pytest.mark.parametrize("argv, message", [
    (["train", "--workdir", "w", "--data-dir", "d"], r"--data-dir d needs --dataset"),
    (["train", "--workdir", "w", "--dataset", "graders", "--data-dir", "d"],
     r"--data-dir is not read by the synthetic dataset graders"),
    (["train", "--workdir", "w", "--dataset", "npz", "--data-dir", "d", "--image-size", "64"],
     r"--image-size is not used by --dataset npz"),
    (["tune", "--directory", "t", "--data-dir", "d"], r"--data-dir d needs --dataset"),
    (["evaluate", "--model", "m.keras", "--out", "o", "--dataset", "flips", "--data-dir", "d"],
     r"--data-dir is not read by the synthetic dataset flips"),
    (["predict", "--image", "a.png", "--out", "o"], r"either --model PATH .* or --target"),
    (["predict", "--model", "m.keras", "--name", "pun", "--image", "a.png", "--out", "o"],
     r"--name and --version select a served model"),
])
def test_flags_the_command_would_ignore_are_refused_by_name(tmp_path, capsys, monkeypatch,
                                                            argv, message):
    monkeypatch.chdir(tmp_path)
    assert re.search(message, cli_error(capsys, argv))
    assert os.listdir(tmp_path) == []  # nothing was started


@pytest.mark.parametrize("text, parsed", [
    ("num_channels=8,16,32", ("num_channels", [8, 16, 32])),
    ("num-channels=[8, 16]", ("num_channels", [8, 16])),
    ("latent_dim=8", ("latent_dim", 8)),
    ("beta=0.5", ("beta", 0.5)),
    ("schedule=wsd", ("schedule", "wsd")),
])
def test_fixed_settings_parse_lists_as_the_matching_flags_do(text, parsed):
    assert flags.fixed(text) == parsed
    name, value = parsed
    if name == "num_channels" and "," in text and "[" not in text:
        assert value == flags.int_list(text.partition("=")[2])  # as --num-channels reads it


def test_the_library_prints_no_tensorflow_line_on_import_nor_on_its_first_operation():
    script = ("import tfprobunet\nimport keras\nimport tensorflow as tf\n"
              "tf.constant(1.0) + 1\n"
              "model = tfprobunet.ProbabilisticUNet(num_channels=[8, 16], latent_dim=2)\n"
              "model.sample(tf.zeros((1, 16, 16, 1)), 2, seed=0)\n")
    result = _command(["-c", script])
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == "", result.stderr


def test_fit_writes_no_progress_bar_escape_codes_when_output_is_not_a_terminal(capfd):
    from conftest import random_batch, tiny_model

    model = tiny_model()
    model.compile(optimizer="adam")
    images, segmentations = random_batch(batch=4)
    model.fit(images, segmentations, batch_size=2, epochs=2)
    out = capfd.readouterr().out
    assert "\x1b" not in out and "\r" not in out, repr(out[:200])
    assert re.findall(r"^Epoch \d/2$", out, re.M) == ["Epoch 1/2", "Epoch 2/2"]


@pytest.mark.parametrize("line, held", [
    (b"I0000 00:00:1796225003.589694   32274 mlir_graph_optimization_pass.cc:437] MLIR V1 "
     b"optimization pass is not enabled\n", True),
    (b"W0000 00:00:1796225003.5   32274 onednn_ops_util.cc:120] oneDNN supports DT_UINT8 only "
     b"on platforms with AVX-512\n", True),
    (b"E0000 00:00:1796221995.448322   26648 cuda_platform.cc:52] failed call to cuInit\n", True),
    (b"F0000 00:00:1796225003.5   32274 op.cc:1] Check failed: ...\n", False),  # before a crash
    (b"Epoch 1/2\n", False),
    (b"tfprobunet: error: no model at 'm.keras'\n", False),
])
def test_tensorflow_log_lines_are_held_back_and_nothing_else(line, held):
    from tfprobunet import _console

    assert bool(_console.NOISE.search(line)) == held


def test_ipykernel_imported_without_a_running_kernel_is_not_a_notebook(monkeypatch):
    """A process that imported ipykernel (the notebook test's client does) but runs no kernel
    writes to a pipe or a file: one line per epoch, not a progress bar."""
    import io

    import ipykernel  # noqa: F401
    from tfprobunet import _console

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert _console.progress_verbosity() == 2


def _train_flags():
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a for a in commands.choices["train"]._actions}


def test_every_train_and_model_argument_has_a_flag_without_a_second_default():
    """Each default has one home, the library's signature: every argument of `train()` and of
    every model's constructor is a `train` flag, and none of those flags has a default of its
    own (argparse.SUPPRESS: only the flags given are passed)."""
    # data_options: the flags of DATA_OPTION_FLAGS (--crop, --pattern, ...) make it.
    python_only = {"verbose", "callbacks", "validation_data", "model_kwargs", "data_options"}
    arguments = {n for n in inspect.signature(training.train).parameters} - python_only
    for model in models.MODELS.values():
        arguments |= set(inspect.signature(model.__init__).parameters) - {
            "self", "kwargs", "num_classes"}
    actions = _train_flags()
    assert sorted(arguments - set(actions)) == []
    for name in arguments - {"workdir"}:
        assert actions[name].default is argparse.SUPPRESS, name
    assert actions["workdir"].required


@pytest.mark.parametrize("command, function", [
    ("train", lambda: training.train), ("tune", lambda: tuning.tune),
    ("compare", lambda: comparison.compare)])
def test_the_defaults_shown_in_help_are_the_librarys(command, function):
    """`--help` reads the library's defaults from signatures.json (no TensorFlow): each shown
    value equals what `inspect` finds on the imported function (or model constructor)."""
    shown = flags.signature_defaults(command)
    real = {n: p.default for n, p in inspect.signature(function()).parameters.items()
            if p.default is not p.empty}
    assert json.dumps(shown, sort_keys=True) == json.dumps(real, sort_keys=True)
    for model, cls in models.MODELS.items():
        real = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not p.empty}
        assert json.dumps(flags.signature_defaults(model)) == json.dumps(real), model


@pytest.mark.parametrize("argv, expected", [
    ([], {}),
    (["--epochs", "3", "--num-channels", "8,16"], {"epochs": 3, "num_channels": [8, 16]}),
    (["--jit-compile", "--use-posterior-mean"], {"jit_compile": True,
                                                 "use_posterior_mean": True}),
    (["--preset", "cpu", "--batch-size", "4"],
     {**tfprobunet.training.preset("cpu"), "batch_size": 4}),
    # A baseline takes the preset's values it has arguments for; flags it has none for are
    # passed on, for `train` to refuse by name.
    (["--model", "dropout", "--preset", "cpu"],
     {"model": "dropout", "num_channels": [16, 32, 64], "convs_per_block": 2,
      "learning_rate": 1e-3, "schedule": "wsd", "batch_size": 16}),
    (["--model", "dropout", "--latent-dim", "3"], {"model": "dropout", "latent_dim": 3}),
])
def test_train_passes_the_flags_given_over_the_preset(argv, expected):
    args = cli.build_parser().parse_args(["train", "--workdir", "w", *argv])
    assert cli_training.train_arguments(args) == expected


def test_a_model_flag_the_model_does_not_take_is_refused_by_name(tmp_path, capsys):
    line = cli_error(capsys, ["train", "--workdir", str(tmp_path / "w"), "--model", "dropout",
                              "--latent-dim", "3", "--epochs", "1", "--steps-per-epoch", "1"])
    assert "DropoutUNet" in line and "'latent_dim'" in line, line
    assert not os.path.exists(tmp_path / "w" / "train_config.json")


def test_a_warning_is_one_line_without_a_source_path(tmp_path):
    """Most labels of these masks are the ignore label (a real warning): the command says so
    in one line of its own, not Python's `file.py:LINE: UserWarning` and a code line."""
    rng = np.random.default_rng(0)
    images = rng.random((4, 16, 16, 1), dtype=np.float32)
    shape = (4, 1, 16, 16)
    annotations = np.where(rng.random(shape) < 0.8, 255, rng.integers(0, 2, shape))
    for split in ("train", "val", "test"):
        np.savez(tmp_path / f"{split}.npz", images=images,
                 annotations=annotations.astype(np.uint8))
    done = _command(["-m", "tfprobunet.cli", "train", "--dataset", "npz", "--data-dir",
                     str(tmp_path), "--workdir", str(tmp_path / "run"), "--epochs", "1",
                     "--steps-per-epoch", "1", "--batch-size", "2", "--num-channels", "4,8",
                     "--convs-per-block", "1", "--latent-dim", "2"])
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert lines and all(re.fullmatch(r"tfprobunet: warning: .*ignore label 255.*", line)
                         for line in lines), lines
    assert not any(".py:" in line for line in lines)
