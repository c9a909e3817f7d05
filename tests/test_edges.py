"""Numbers at the edge: every numeric flag of the commands is parsed by one typed helper
(`flags.number`, on `defaults.check_number`), so that NaN, infinities, zero, negative and huge
values are argparse's one-line refusal naming the flag (exit 2) while the edge values that work
still parse; and what only the library can judge (a seed TensorFlow cannot take, a join limit
that never ends, an image size the U-Net cannot divide, a model too costly to build) is refused
by `train` before it writes anything."""

import argparse
import itertools
import math
import os

import numpy as np
import pytest

from conftest import cli_error, tiny_model
from fixtures import save_png, write_nifti
from tfprobunet import cli, models, training
from tfprobunet.cli import flags
from tfprobunet.models import checks
from tfprobunet.models.presets import PRESETS

NAN, INF, HUGE = "nan", "inf", str(2**70)
BAD_COUNT = [NAN, INF, "0", "-5", HUGE, "1.5", "1e3"]  # each invalid for a count
TRAIN = ["train", "--workdir", "never-written"]
EVALUATE = ["evaluate", "--model", "m.keras", "--out", "o"]
INSPECT = ["inspect", "--model", "m.keras", "--out", "o.png"]
SEED = (BAD_COUNT[:2] + ["-5", HUGE, str(2**31)], ["0", str(2**31 - 1)])
COUNT = (BAD_COUNT, ["1", str(2**31 - 1)])
PREDICT = ["predict", "--image", "x.png", "--out", "o"]
# TF Serving's versions are int64; ports 0 (any free one) to 65535; byte limits compared in int64.
VERSION_BAD, VERSION_GOOD = [NAN, INF, "0", "-5", str(2**63), "1.5", "1e3"], ["1", "12"]
PORT_BAD, PORT_GOOD = [NAN, INF, "-5", "65536", HUGE, "1.5"], ["0", "65535"]
WORKERS = ([NAN, INF, "0", "-5", "1025", HUGE, "1.5"], ["1", "1024"])
QUEUE = ([NAN, INF, "0", "-5", "65536", HUGE, "1.5"], ["1", "65535"])
SECONDS = ([NAN, INF, "0", "-5", "3600.5", HUGE], ["0.01", "3600"])
BYTES = ([NAN, INF, "0", "-5", str(2**63), "1.5", "1e3"], ["1", str(2**40)])

# (argv before the flag, flag, invalid values, valid values and what they parse to): every
# numeric flag of train, tune, compare, demo, evaluate and inspect, and the request limits.
FLAGS = [
    (TRAIN, "--connect-timeout", [NAN, INF, "0", "-5", "3600.5", HUGE], ["0.5", "3600"]),
    (TRAIN, "--epochs", *COUNT), (TRAIN, "--steps-per-epoch", *COUNT),
    (TRAIN, "--batch-size", *COUNT), (TRAIN, "--num-examples", *COUNT),
    (TRAIN, "--validation-examples", [NAN, INF, "-5", HUGE], ["0", "100"]),
    (TRAIN, "--learning-rate", [NAN, INF, "0", "-5", "1.5", HUGE], ["1e-12", "1"]),
    (TRAIN, "--max-minutes", [NAN, INF, "0", "-5"], ["0.01", "1e6"]),
    (TRAIN, "--seed", *SEED),
    (TRAIN, "--image-size", [NAN, INF, "0", "-5", "8193", HUGE, "64,0", "1,2,3"],
     ["1", "8192", "256,512"]),
    (TRAIN, "--num-channels", [NAN, "0", "8,-5", "8,inf", HUGE], ["8", "32,64,128,192"]),
    (TRAIN, "--latent-dims", [NAN, "0", "1,-5", HUGE], ["1,1,1"]),
    (TRAIN, "--ged-classes", [NAN, "-5", HUGE], ["0", "1,2"]),
    *[(TRAIN, f"--{name}", *COUNT) for name in (
        "convs-per-block", "latent-dim", "fcomb-layers", "fcomb-channels", "ged-samples",
        "blocks-per-level", "dropout-blocks", "num-members", "num-heads", "rank",
        "num-mc-samples")],
    (TRAIN, "--beta-warmup-steps", [NAN, INF, "-5", HUGE], ["0", "2000"]),
    (TRAIN, "--energy-samples", [NAN, INF, "1", "-5", HUGE], ["2", "16"]),
    (TRAIN, "--beta", [NAN, INF, "-5", "1e7"], ["0", "1000000"]),
    (TRAIN, "--weight-decay", [NAN, INF, "-5", "2"], ["0", "1"]),
    (TRAIN, "--geco-target", [NAN, INF, "0", "-5"], ["none", "0.05"]),
    (TRAIN, "--geco-rate", [NAN, INF, "0", "-5", "11"], ["0.01", "10"]),
    (TRAIN, "--energy-weight", [NAN, INF, "-5", "1e10"], ["0", "1000"]),
    (TRAIN, "--top-k-fraction", [NAN, INF, "0", "-5", "1.5"], ["0.02", "1"]),
    (TRAIN, "--dropout-rate", [NAN, INF, "0", "-5", "1.5"], ["0.5"]),
    (TRAIN, "--epsilon", [NAN, INF, "-5", "1.5"], ["0", "0.05"]),
    (TRAIN, "--num-experts", *COUNT), (TRAIN, "--samples-per-expert", *COUNT),
    (TRAIN, "--gamma", [NAN, INF, "0", "-5", "1.5"], ["0.03125", "1"]),
    (TRAIN, "--gamma-switch-steps", [NAN, INF, "-5", HUGE, "1.5"], ["none", "0", "1000"]),
    (TRAIN, "--time-steps", [NAN, INF, "0", "-5", "10001", "1.5"], ["1", "250", "10000"]),
    (TRAIN, "--sampling-steps", [NAN, INF, "0", "-5", "10001", "1.5"], ["none", "1", "25"]),
    (["tune", "--directory", "d"], "--max-trials", *COUNT),
    (["tune", "--directory", "d"], "--epochs", *COUNT),
    (["tune", "--directory", "d"], "--steps-per-epoch", *COUNT),
    (["tune", "--directory", "d"], "--validation-examples", *COUNT),
    (["tune", "--directory", "d"], "--seed", *SEED),
    (["tune", "--directory", "d"], "--worker", [NAN, INF, "-5", HUGE], ["0", "3"]),
    (["tune", "--directory", "d"], "--show", *COUNT),
    (["compare", "--out", "o"], "--steps", *COUNT),
    (["compare", "--out", "o"], "--test-examples", *COUNT),
    (["compare", "--out", "o"], "--steps-per-epoch", *COUNT),
    (["compare", "--out", "o"], "--seeds", [NAN, "0,-5", "0,inf", HUGE], ["0", "0,1,2"]),
    (["demo"], "--steps", *COUNT), (["demo"], "--seed", *SEED),
    (EVALUATE, "--samples", [NAN, INF, "0", "-5", "1,1001", "1000000", HUGE], ["1", "1,4,1000"]),
    (EVALUATE, "--batch-size", *COUNT), (EVALUATE, "--seed", *SEED),
    (EVALUATE, "--image-size", [NAN, "0", "-5", HUGE], ["16"]),
    (INSPECT, "--index", [NAN, INF, "-5", HUGE], ["0", "7"]),
    (INSPECT, "--axes", [NAN, "0,-5", HUGE], ["0,3"]),
    (INSPECT, "--extent", [NAN, INF, "0", "-5", "1e9"], ["0.1", "100"]),
    (INSPECT, "--steps", [NAN, INF, "1", "-5", "32", HUGE], ["2", "31"]),
    (PREDICT, "--max-samples", *COUNT),
    (["export"], "--max-pixels", *COUNT),
    (["serve"], "--max-sample-pixels", *COUNT),
    # the serving and data commands, and the dataset options (`flags.DATA_OPTION_FLAGS`)
    (["export"], "--version", VERSION_BAD, VERSION_GOOD),
    (["export"], "--max-samples", *COUNT), (["export"], "--max-sample-pixels", *COUNT),
    (["export"], "--max-sample-bytes", *BYTES),
    (["serve"], "--port", PORT_BAD, PORT_GOOD), (["serve"], "--rest-port", PORT_BAD, PORT_GOOD),
    (["serve"], "--workers", *WORKERS), (["serve"], "--rest-workers", *WORKERS),
    (["serve"], "--poll-seconds", *SECONDS), (["serve"], "--request-timeout", *SECONDS),
    (["serve"], "--max-samples", *COUNT), (["serve"], "--max-pixels", *COUNT),
    (["serve"], "--max-sample-bytes", *BYTES),
    (["serve"], "--max-message-bytes", *COUNT), (["serve"], "--max-body-bytes", *COUNT),
    (["serve"], "--rest-queue", *QUEUE), (["serve"], "--rest-backlog", *QUEUE),
    (["serve"], "--grpc-queue", *QUEUE),
    (PREDICT, "--version", VERSION_BAD, VERSION_GOOD), (PREDICT, "--num-samples", *COUNT),
    (PREDICT, "--seed", *SEED), (PREDICT, "--max-pixels", *COUNT),
    (PREDICT, "--max-sample-pixels", *COUNT), (PREDICT, "--max-sample-bytes", *BYTES),
    (["data", "manifest", "--dataset", "folder", "--data-dir", "d"], "--seed", *SEED),
    (TRAIN, "--num-classes", [NAN, INF, "0", "1", "-5", "256", HUGE, "2.5"], ["2", "255"]),
    (EVALUATE, "--num-classes", [NAN, "1", "256"], ["2"]),
    (TRAIN, "--axis", [NAN, INF, "-1", "3", HUGE, "1.5"], ["0", "2"]),
    (INSPECT, "--axis", [NAN, "3"], ["1"]),
    (TRAIN, "--empty-share", [NAN, INF, "-0.1", "1.5", HUGE], ["0", "0.25", "1"]),
]
CASES = [(argv, flag, value) for argv, flag, bad, _ in FLAGS for value in bad]
VALID = [(argv, flag, value) for argv, flag, _, good in FLAGS for value in good]


def _command(argv):
    """`train`, `data manifest`: the words of `argv` before its first flag."""
    return " ".join(itertools.takewhile(lambda word: not word.startswith("-"), argv))


@pytest.mark.parametrize("argv, flag, value", CASES,
                         ids=[f"{a[0]} {f} {v[:12]}" for a, f, v in CASES])
def test_an_invalid_number_is_one_usage_line_naming_the_flag(capsys, argv, flag, value):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"tfprobunet {_command(argv)}: error: argument "
    assert lines[0].startswith(prefix), lines[0]
    assert flag in lines[0][len(prefix):].split(":")[0].split("/"), lines[0]  # -n/--num-samples
    assert repr(value) in lines[0] and "--help" in lines[0], lines[0]


def _parsed(argv, flag, value):
    args = vars(cli.build_parser().parse_args([*argv, f"{flag}={value}"]))
    name = flag.lstrip("-").replace("-", "_")
    return args[name] if name in args else args[f"data_{name}"]  # a dataset option's


@pytest.mark.parametrize("argv, flag, value", VALID,
                         ids=[f"{a[0]} {f} {v}" for a, f, v in VALID])
def test_edge_values_that_work_still_parse(argv, flag, value):
    parsed = _parsed(argv, flag, value)
    expected = [float(v) for v in value.split(",")] if value != "none" else [None]
    got = list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
    assert got == expected, (flag, value, parsed)


def _numeric_actions():
    """`(command, flag, action)` of every flag whose value is a number or numbers."""
    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*prefix, name])
            elif (action.option_strings and action.type is not None and action.choices is None
                  and action.type not in (flags.fixed, flags.override, flags.model_list,
                                          flags.json_or_text)):
                yield " ".join(prefix), action.option_strings[-1], action

    return list(walk(cli.build_parser(), []))


# Flags of two or three numbers, read by parsers of their own (their loaders check them).
PAIRS = {"--crop", "--window", "--percentiles", "--image-range", "--fractions"}


def test_every_numeric_flag_is_parsed_by_a_checked_type_and_tested_here():
    """No flag of any command reads a bare `int` or `float` (which take nan, inf and any
    sign), and each is in `FLAGS` above (a dataset option's flag, the same type wherever it
    is, under one command or two)."""
    tested = {(_command(argv), flag) for argv, flag, _, _ in FLAGS}
    options = {f"--{name.replace('_', '-')}" for name, _, _ in flags.DATA_OPTION_FLAGS}
    for command, flag, action in _numeric_actions():
        assert action.type not in (int, float), (command, flag)
        assert ((command, flag) in tested or flag in ("--image-size", "--num-examples")
                or flag in options and any(f == flag for _, f in tested)
                or flag in PAIRS), (command, flag)


# ---------------------------------------------------------------------- train refuses first
@pytest.mark.parametrize("settings, says", [
    (dict(seed=2**70), "`seed` must be a finite integer >= 0 and <= 2147483647"),
    (dict(seed=-1), "Received: seed=-1"),
    (dict(connect_timeout=math.nan), "`connect_timeout` must be a finite number > 0.0 and <= "
                                     "3600.0"),
    (dict(connect_timeout=math.inf), "Received: connect_timeout=inf"),
    (dict(connect_timeout=0.0), "Received: connect_timeout=0.0"),
    (dict(connect_timeout=-5.0), "Received: connect_timeout=-5.0"),
    (dict(image_size=0), "`image_size` must be a positive integer or (height, width)"),
    (dict(image_size=(64, -8)), "Received: image_size=(64, -8)"),
    (dict(image_size=50), "the nearest sizes that work are 48 and 56"),
    (dict(image_size=(16, 18), num_channels=[8, 16, 32]), "width=18; the nearest sizes that "
                                                          "work are 16 and 20"),
    (dict(convs_per_block=1000), "`convs_per_block` must be an integer from 1 to 32"),
])
def test_train_refuses_settings_before_it_writes_anything(tmp_path, settings, says):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        training.train(str(workdir), epochs=1, steps_per_epoch=1, batch_size=2,
                       num_examples=4, **settings)
    assert says in str(error.value), str(error.value)
    assert not os.path.exists(workdir)


def test_image_size_zero_on_the_command_line_is_refused_not_trained_at_64(tmp_path, capsys):
    workdir = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--workdir", str(workdir), "--image-size", "0"])
    assert exit_.value.code == 2
    assert "argument --image-size: expected SIZE or HEIGHT,WIDTH, positive integers" in \
        capsys.readouterr().err
    assert not os.path.exists(workdir)


def test_a_batch_beyond_the_memory_limit_is_refused_with_the_estimate(tmp_path, monkeypatch):
    """num_channels [8, 16], one convolution per block, 16 x 16 images: 8 + 16 / 4 = 12
    channels per pixel in the U-Net, and f_comb's 8 channels x (3 layers + 1) = 32: 44, at 11
    bytes each, 11 * 256 * 44 = 123,904 bytes (121.0 KiB) per example. With a limit of 300,000
    bytes (293.0 KiB), 2 examples fit (247,808) and 3 do not (371,712: 363.0 KiB)."""
    kwargs = dict(dataset="graders", image_size=16, num_channels=[8, 16], convs_per_block=1,
                  latent_dim=2, epochs=1, steps_per_epoch=1)
    monkeypatch.setenv("TFPROBUNET_MAX_TRAIN_BYTES", "300000")
    with pytest.raises(ValueError) as error:
        training.train(str(tmp_path / "run"), batch_size=3, **kwargs)
    for part in ("batch_size=3 of 16 x 16 images", "363.0 KiB", "121.0 KiB per example",
                 "293.0 KiB of memory available (TFPROBUNET_MAX_TRAIN_BYTES)",
                 "use batch_size <= 2 (--batch-size)"):
        assert part in str(error.value), (part, str(error.value))
    assert not os.path.exists(tmp_path / "run")
    assert checks.training_bytes(dict(num_channels=[8, 16], convs_per_block=1, fcomb_layers=3,
                                      fcomb_channels=None), 16, 16) == 123904
    checks.check_training("probunet", dict(num_channels=[8, 16], convs_per_block=1), "graders",
                          16, 2, 0, None)  # 2 fit


def test_the_default_models_and_presets_are_far_within_the_size_limits():
    """Hand-counted convolutions (4 x levels x members x blocks x convs): 48 for the default
    model, 288 for the HPU-Net's reference configuration, 768 for the ensemble of 16."""
    for name in models.MODELS:
        defaults = flags.inspected_defaults(models.get(name))
        checks.check_model_sizes(defaults)
        for preset in PRESETS.values():
            checks.check_model_sizes({**defaults, **preset})
    assert checks.convolutions(flags.inspected_defaults(models.get("probunet"))) == 48
    assert checks.convolutions(flags.inspected_defaults(models.get("hpunet"))) == 288
    assert checks.convolutions(flags.inspected_defaults(models.get("ensemble"))) == 768
    assert 768 * 4 <= checks.MAX_CONVOLUTIONS


@pytest.mark.parametrize("name, arguments, says", [
    ("ensemble", dict(num_members=100, convs_per_block=4),
     "builds about 6,400 convolutions (4 x levels x num_members x blocks_per_level x "
     "convs_per_block), above 4,096"),  # 4 x 4 levels x 100 x 4
    ("hpunet", dict(blocks_per_level=100), "`blocks_per_level` must be an integer from 1 to 32"),
    ("hpunet", dict(num_channels=[8] * 17), "`num_channels` must be a list of 1 to 16"),
    ("mheads", dict(num_heads=10**6), "`num_heads` must be an integer from 1 to 256"),
    ("ssn", dict(rank=300), "`rank` must be an integer from 1 to 256"),
    ("ssn", dict(num_mc_samples=5000), "`num_mc_samples` must be an integer from 1 to 1,000"),
    ("i2ivae", dict(latent_dim=2000), "`latent_dim` must be an integer from 1 to 1,024"),
])
def test_every_model_refuses_a_configuration_too_costly_to_build(name, arguments, says):
    with pytest.raises(ValueError) as error:
        models.get(name)(**arguments)
    assert says in str(error.value), str(error.value)


# ---------------------------------------------------------------------- predict's byte limit
@pytest.fixture(scope="module")
def two_class_model(tmp_path_factory):
    """A tiny 2-class model's `.keras` file, and a 16 x 16 PNG and a 16 x 16 x 4 NIfTI volume
    beside it (sides its U-Net of 3 levels divides)."""
    folder = tmp_path_factory.mktemp("predict")
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    model.save(str(folder / "model.keras"))
    save_png(str(folder / "scan.png"), np.zeros((16, 16), np.uint8))
    write_nifti(str(folder / "case.nii.gz"), np.zeros((16, 16, 4), np.float32))
    return folder


def test_predict_takes_max_sample_bytes_and_names_it_when_it_refuses(two_class_model, capsys):
    """4 samples of one 16 x 16 image with 2 classes take 4 * 4 * 16 * 16 * 2 = 8,192 bytes of
    probabilities: 8,191 refuses them, naming the flag (3 samples fit), 8,192 writes them."""
    argv = ["predict", "--model", str(two_class_model / "model.keras"), "--image",
            str(two_class_model / "scan.png"), "-n", "4", "--out", str(two_class_model / "out")]
    line = cli_error(capsys, [*argv, "--max-sample-bytes", "8191"])
    for part in ("4 samples of 1 image(s) of 16 x 16 pixels with 2 classes take 8.0 KiB",
                 "at most 3 samples", "--max-sample-bytes", "It was not decoded"):
        assert part in line, (part, line)
    assert not os.path.exists(two_class_model / "out")
    assert cli.main([*argv, "--max-sample-bytes", "8192"]) in (0, None)
    assert sorted(os.listdir(two_class_model / "out" / "scan")) == [
        "sample_00.png", "sample_01.png", "sample_02.png", "sample_03.png", "uncertainty.png"]


def test_predict_of_volumes_takes_max_sample_bytes(two_class_model, capsys):
    """The 4 slices of the volume are segmented in one batch: 2 samples take 4 * 4 * 2 * 16 *
    16 * 2 = 16,384 bytes; at 16,383 nothing is written."""
    out = two_class_model / "volumes"
    line = cli_error(capsys, ["predict", "--model", str(two_class_model / "model.keras"),
                              "--image", str(two_class_model / "case.nii.gz"), "-n", "2",
                              "--max-sample-bytes", "16383", "--out", str(out)])
    assert "2 samples of 4 image(s) of 16 x 16 pixels with 2 classes take 16.0 KiB" in line, line
    assert not os.path.exists(out)


def test_predict_refuses_more_samples_than_max_samples_before_reading(tmp_path, capsys):
    """`-n` above `--max-samples` (a volume's path checks no image header) is refused by the
    command, naming both flags, before a model is loaded."""
    line = cli_error(capsys, ["predict", "--model", str(tmp_path / "none.keras"), "--image",
                              str(tmp_path / "case.nii.gz"), "-n", "1001", "--out",
                              str(tmp_path / "out")])
    assert "--num-samples 1001" in line and "--max-samples 1000" in line, line
