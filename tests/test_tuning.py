"""Keras Tuner searches over the model: the hyper-model's space and defaults, trials that save,
reload and report `val_ged`, searches that fail loudly, and their output in a log file."""

import json
import os
import re
import socket
import subprocess
import sys

import keras
import keras_tuner
import numpy as np
import pytest

from tfprobunet import data, tuning
from conftest import TINY, cli_error
from fixtures import plant_link

LISTED = ("latent_dim", "beta", "learning_rate", "num_levels", "base_channels",
          "convs_per_block", "fcomb_layers")


def test_default_hyperparameters_build_the_default_compiled_model():
    model = tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1)).build(
        keras_tuner.HyperParameters())
    config = model.get_config()
    # The default configuration of ProbabilisticUNet and train().
    assert config["num_channels"] == [32, 64, 128, 192]
    assert (config["latent_dim"], config["beta"]) == (6, 1.0)
    assert (config["convs_per_block"], config["fcomb_layers"]) == (3, 3)
    assert model.built and model.compiled
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)


def test_fixed_hyperparameters_override_and_the_space_lists_every_one():
    hypermodel = tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1), steps=100)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("latent_dim", 3)
    assert hypermodel.build(hp).latent_dim == 3
    assert {p.name for p in hp.space} >= {*LISTED, "schedule"}

    fixed = tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1), latent_dim=4, num_levels=3,
                                               base_channels=16, weight_decay=0.0)
    hp = keras_tuner.HyperParameters()
    model = fixed.build(hp)
    assert (model.latent_dim, model.get_config()["weight_decay"]) == (4, 0.0)
    assert model.get_config()["num_channels"] == [16, 32, 64]
    assert {type(p).__name__ for p in hp.space if p.name == "latent_dim"} == {"Fixed"}
    # No steps: the schedule is not searched (it needs the run's length).
    assert "schedule" not in {p.name for p in hp.space}


def test_schedule_hyperparameter_gives_the_schedule_over_the_trial_steps():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("schedule", "piecewise")
    hp.Fixed("learning_rate", 1e-3)
    model = tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1), steps=90, **TINY).build(hp)
    rate = keras.optimizers.schedules.deserialize(model.optimizer.get_config()["learning_rate"])
    # The official schedule scaled to 90 steps: x1, then x0.5 after 30, x0.1 after 60.
    assert [float(rate(s)) for s in (0, 31, 61)] == pytest.approx([1e-3, 5e-4, 1e-4])


def test_channels_per_level_and_bad_settings():
    assert tuning.num_channels(4, 32) == [32, 64, 128, 192]
    assert tuning.num_channels(5, 16) == [16, 32, 64, 96, 96]
    with pytest.raises(ValueError, match="num_levels"):
        tuning.num_channels(0, 32)
    with pytest.raises(ValueError, match=r"Unknown fixed settings \['latent_size'\]"):
        tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1), latent_size=3)
    with pytest.raises(ValueError, match="must be one of"):
        tuning.make_tuner("grid", tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1)), "x")
    with pytest.raises(ValueError, match="max_epochs"):
        tuning.make_tuner("hyperband", tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1)), "x")
    own = data.load("flips", "train", image_size=16, num_examples=4)
    with pytest.raises(ValueError, match="needs `validation_data=`"):
        tuning.tune("x", dataset=own)
    with pytest.raises(ValueError, match="chief and workers instead. Received: strategy="):
        tuning.tune("x", strategy="multi_worker")


@pytest.mark.compat
@pytest.mark.slow
def test_two_trial_search_reports_val_ged_and_returns_a_working_best_model(tmp_path):
    train = data.load("flips", "train", image_size=16, num_examples=8)
    val = data.load("flips", "val", image_size=16, num_examples=4)
    hypermodel = tuning.ProbabilisticUNetHyperModel(
        train.num_classes, (16, 16, 3), ged_classes=train.classes, ged_samples=2, **TINY)
    tuner = tuning.make_tuner("random", hypermodel, str(tmp_path), max_trials=2, seed=0)
    # Sources: batched in the hyper-model's fit, with the searched batch size.
    trials = tuning.search(tuner, train, epochs=1, steps_per_epoch=2, validation_data=val,
                           verbose=0)
    assert len(trials) == 2
    assert all(t.status == "COMPLETED" and np.isfinite(t.score) for t in trials)
    assert trials[0].score <= trials[1].score
    assert "batch_size" in trials[0].hyperparameters.values
    best_hp = tuner.get_best_hyperparameters()[0]
    assert best_hp.values == trials[0].hyperparameters.values

    # The best model comes back from the trial's files with its weights and its val_ged.
    best = tuner.get_best_models(1)[0]
    val_ds = data.evaluation_pipeline(val.dataset, 8, val.annotation_weights)
    logs = best.evaluate(val_ds, verbose=0, return_dict=True)
    assert logs["ged"] == pytest.approx(trials[0].score, abs=1e-5)
    images = next(iter(val.dataset.batch(2)))[0]
    assert best.sample(images, 4, seed=1).shape == (2, 4, 16, 16, train.num_classes)

    # The JSON the CLI writes rebuilds the same model.
    again = tuning.hyperparameters_from_json(tuning.hyperparameters_json(best_hp))
    assert again.values == best_hp.values
    config = {k: v for k, v in best.get_config().items() if k != "name"}
    assert {k: v for k, v in hypermodel.build(again).get_config().items() if k != "name"} == config


@pytest.mark.slow
def test_a_search_into_a_log_file_prints_plain_lines_with_step_progress(tmp_path, capfd):
    # capfd: standard output is not a terminal, as with `tfprobunet tune ... > tune.log`.
    trials = tuning.tune(str(tmp_path), max_trials=1, epochs=1, steps_per_epoch=101,
                         image_size=16, num_examples=8, validation_examples=2,
                         num_channels=[8, 16], convs_per_block=1, ged_samples=2)
    assert len(trials) == 1
    out, err = capfd.readouterr()
    log = out + err
    # Keras Tuner's summary of the trial, without the escape codes of IPython's clear_output.
    assert "Trial 1 Complete" in log
    assert not re.search(r"[\x1b\r\x08]", log), repr(log[-600:])
    # The trial's own progress: a line at step 100 (the default interval), then Keras' epoch.
    lines = log.splitlines()
    step = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1 step 100/101"))
    assert lines[step + 1].startswith("101/101 - ")


class _Broken(tuning.ProbabilisticUNetHyperModel):
    """Every trial fails in training, as with a callback whose package is missing."""

    def fit(self, hp, model, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorboard'")


def test_a_search_whose_trials_all_fail_raises_the_first_error(tmp_path):
    tuner = tuning.make_tuner("random", _Broken(2, (16, 16, 1), **TINY), str(tmp_path),
                              max_trials=2)
    # Keras Tuner alone returns quietly from two failed trials (it raises after 3 in a row).
    expected = r"(?s)All 2 trials .* first one \(0\).*No module named 'tensorboard'"
    with pytest.raises(tuning.TuningError, match=expected):
        tuning.search(tuner, np.zeros((1, 16, 16, 1)), epochs=1, verbose=0)


TINY_SEARCH = ["--image-size", "16", "--num-examples", "8", "--validation-examples", "4",
               "--epochs", "1", "--steps-per-epoch", "2", "--fixed", "num_channels=[8,16]",
               "--fixed", "convs_per_block=1", "--fixed", "ged_samples=2", "--verbose", "0"]


def _tune(*args, wait=True):
    command = [sys.executable, "-m", "tfprobunet.cli", "tune", *TINY_SEARCH, *args]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _best_trials(stdout):
    return json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])["best_trials"]


@pytest.mark.slow
def test_distributed_search_on_loopback_then_resumed_in_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--directory", str(tmp_path), "--max-trials", "4"]
    oracle = ["--oracle", f"127.0.0.1:{port}"]
    chief = _tune(*common, *oracle, "--chief", wait=False)
    workers = [_tune(*common, *oracle, "--worker", str(i), wait=False) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in [chief, *workers]]
    assert [p.returncode for p in [chief, *workers]] == [0, 0, 0], outputs
    trials = _best_trials(outputs[0])
    assert len(trials) == 4
    assert [t["score"] for t in trials] == sorted(t["score"] for t in trials)
    # Both workers took part; the chief saved the best one and its hyper-parameters.
    assert {"tuner0.json", "tuner1.json"} <= set(os.listdir(tmp_path / "search"))
    with open(tmp_path / tuning.BEST_HYPERPARAMETERS) as f:
        hp = tuning.hyperparameters_from_json(f.read())
    assert hp.values == trials[0]["values"]
    assert keras.saving.load_model(tmp_path / tuning.BEST_MODEL).latent_dim == hp["latent_dim"]
    assert len(os.listdir(tmp_path / "tensorboard")) == 4  # a log folder per trial

    # The same command, alone and with a larger budget, continues the search: 1 new trial.
    run = _tune(*common[:-1], "5")
    assert run.returncode == 0, run.stderr
    again = _best_trials(run.stdout)
    assert len(again) == 5
    assert {t["trial_id"]: t["score"] for t in trials}.items() <= {
        t["trial_id"]: t["score"] for t in again}.items()


@pytest.mark.parametrize("name", sorted(tuning.TUNERS))
def test_every_tuner_the_library_makes_minimises_val_ged(tmp_path, name):
    tuner = tuning.make_tuner(name, tuning.ProbabilisticUNetHyperModel(2, (16, 16, 1)),
                              str(tmp_path), max_trials=2, max_epochs=2)
    assert isinstance(tuner, tuning.TUNERS[name])
    objective = tuner.oracle.objective
    assert (objective.name, objective.direction) == ("val_ged", "min")


def test_cli_refuses_a_distributed_role_without_the_oracle_and_a_bad_fixed_setting(tmp_path,
                                                                                    capsys):
    from tfprobunet import cli

    assert re.search(r"--chief and --worker need --oracle HOST:PORT.*Received: --oracle "
                     r"'10.0.0.1'", cli_error(capsys, ["tune", "--directory", str(tmp_path),
                                                       "--chief", "--oracle", "10.0.0.1"]))
    with pytest.raises(SystemExit):
        cli.main(["tune", "--directory", str(tmp_path), "--fixed", "latent_dim"])
    assert "expected NAME=VALUE, got 'latent_dim'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["tune", "--directory", str(tmp_path), "--chief", "--worker", "0"])
    assert os.listdir(tmp_path) == []  # nothing was started


@pytest.mark.parametrize("name", ["search", "search/trial_0/checkpoint.weights.h5",
                                  "tensorboard", "best_model.keras", "best_hyperparameters.json"])
def test_a_symlink_where_the_search_writes_is_refused_before_it_starts(tmp_path, capsys, name):
    """Keras Tuner's project, the TensorBoard logs and the best model's files were written
    without the symlink refusal of `train`'s workdir: a planted `search` link got the trials,
    a `best_model.keras` link was replaced without a word."""
    directory = tmp_path / "tune"
    link, target, snapshot = plant_link(str(directory), name, str(tmp_path / "outside"))
    before = snapshot()
    line = cli_error(capsys, ["tune", "--directory", str(directory), *TINY_SEARCH])
    assert f"{link} is a symbolic link (to {target})" in line, line
    assert snapshot() == before and os.path.islink(link)
    assert sorted(os.listdir(directory)) == [name.split("/")[0]]  # nothing was started
