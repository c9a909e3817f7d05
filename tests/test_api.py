"""The public API, pinned: every name the README, the notebook and `bench/` use, the signatures of
the functions users call, and every CLI command with its flags and their effective defaults.

Written before the package was reshaped into `training/`, `serving/local_server/` and `cli/`
(issue 26), and passed unchanged before and after: a move may change where code lives, not what
a user imports or types. New names and new flags may be added; none of these may go or change.
"""

import argparse
import importlib
import inspect
import json
import warnings
from unittest import mock

import pytest

import tfprobunet

# What the `__all__` of the package and its subpackages hold (new names may join them).
ALL = {
    "tfprobunet": [
        "AxisAlignedGaussian", "FComb", "ProbabilisticUNet", "UNet", "baselines", "callbacks",
        "catalog", "compare", "data", "evaluate", "export_for_serving", "latent", "losses",
        "metrics", "models", "prediction", "saving", "serving", "train", "training"],
    "tfprobunet.data": [
        "DATASETS", "Source", "arrays", "as_source", "check_source", "checks", "cityscapes",
        "evaluation_pipeline", "flip_modes", "flips", "folders", "from_folders", "graders",
        "lidc", "load", "synthetic", "training_pipeline"],
    "tfprobunet.models": [
        "MODELS", "DropoutUNet", "HierarchicalProbabilisticUNet", "Image2ImageVAE", "MHeads",
        "ProbabilisticUNet", "SegmentationSampler", "StochasticSegmentationNetwork",
        "UNetEnsemble", "get", "register"],
    "tfprobunet.serving": [
        "GrpcClient", "InvalidRequestError", "ModelServer", "RequestLimits", "RestClient",
        "Servable", "ServingError", "clean_stale_exports", "export_for_serving", "read_image",
        "serving_functions", "write_models_config"],
}

# Names that must stay importable from these modules (they may hold more).
NAMES = {
    "tfprobunet.training": [
        "CHECKPOINT", "CONFIG", "EpochCheckpoint", "EpochLog", "MIXED_PRECISION",
        "NonFiniteLossError", "PRESETS", "SCHEDULES", "STRATEGIES", "StopOnNonFiniteLoss",
        "StopOnSignal", "WarmupStableDecay", "fit_distributed", "is_chief",
        "learning_rate_schedule", "make_strategy", "model_arguments", "preset",
        "setting_differences", "state_bytes", "train"],
    "tfprobunet.callbacks": ["CalibrationLog", "TensorBoardSamples", "TimeBudget",
                             "sample_grid_image"],
    "tfprobunet.losses": ["analytic_kl", "elbo_loss", "energy_score", "oracle_set_loss",
                          "pixel_cross_entropy", "sampled_kl", "ssn_loss"],
    "tfprobunet.metrics": [
        "GeneralizedEnergyDistance", "energy_distance", "flip_frequencies",
        "generalized_energy_distance", "hungarian_iou", "log_pearson_r", "mode_frequencies",
        "pairwise_distances", "uncertainty_maps"],
    "tfprobunet.saving": ["ModelFileError", "NonFiniteWeightsError", "check_finite",
                          "load_model", "nonfinite_weights"],
    "tfprobunet.prediction": ["check_image_files", "predict", "predict_files", "write_masks"],
    "tfprobunet.latent": ["inspect"],
    "tfprobunet.plots": ["MODEL_LABELS", "latent_space", "write_comparison_figures",
                         "write_figures"],
    "tfprobunet.evaluation": ["SAMPLE_COUNTS", "evaluate"],
    "tfprobunet.comparison": ["EVALUATION_SEED", "RUN_RECORD", "compare", "recipe_settings"],
    "tfprobunet.tuning": ["BEST_HYPERPARAMETERS", "BEST_MODEL", "ORACLE_IP", "ORACLE_PORT",
                          "ProbabilisticUNetHyperModel", "TUNER_ID", "TuningError", "tune"],
    "tfprobunet.layers": ["AxisAlignedGaussian", "FComb", "UNet"],
    "tfprobunet.serving.export": ["MODELS_CONFIG", "check_model_name", "clean_stale_exports",
                                  "export_for_serving"],
    "tfprobunet.data.synthetic": ["flip_modes", "flips", "graders"],
}

# Parameter names and defaults (repr) of the functions users call.
SIGNATURES = {
    "tfprobunet.train": [
        "workdir", "dataset='flips'", "data_dir=None", "epochs=10", "steps_per_epoch=100",
        "batch_size=8", "image_size=None", "num_examples=None", "validation_examples=0",
        "learning_rate=0.0001", "schedule='constant'", "max_minutes=None", "strategy='default'",
        "seed=0", "jit_compile=False", "mixed_precision=None", "verbose=None", "callbacks=None",
        "validation_data=None", "tensorboard=None", "connect_timeout=300.0", "model='probunet'",
        "**model_kwargs"],
    "tfprobunet.evaluate": [
        "model", "dataset='flips'", "out_dir=None", "split='test'", "data_dir=None",
        "image_size=None", "num_examples=None", "sample_counts=(1, 4, 8, 16)", "batch_size=8",
        "num_figure_examples=4", "seed=0", "per_image=False", "verbose=None", "num_classes=None"],
    "tfprobunet.compare": [
        "out_dir", "dataset='flips'",
        "models=('probunet', 'dropout', 'ensemble', 'mheads', 'i2ivae')", "steps=2000",
        "seeds=(0,)", "recipe='cpu'", "steps_per_epoch=None", "data_dir=None", "image_size=None",
        "num_examples=None", "test_data=None", "test_examples=None",
        "sample_counts=(1, 4, 8, 16)", "model_overrides=None", "verbose=None"],
    "tfprobunet.export_for_serving": [
        "model", "base_dir", "name", "version=None", "config_base_path='/models'",
        "max_samples=1000", "max_pixels=1048576", "max_sample_pixels=16777216",
        "image_range=(0.0, 1.0)"],
    "tfprobunet.data.load": ["name", "split='train'", "data_dir=None", "image_size=None",
                             "num_examples=None", "seed=0", "split_manifest=None", "**options"],
    "tfprobunet.data.from_folders": [
        "images", "masks", "split='train'", "pattern=None", "channels=1",
        "binarize=True", "num_classes=None", "multiple=16", "fractions=(0.8, 0.1, 0.1)",
        "seed=0"],
    "tfprobunet.prediction.predict": ["model", "images", "num_samples=16", "seed=None"],
    "tfprobunet.prediction.predict_files": [
        "model", "paths", "num_samples", "out_dir", "seed=None", "max_samples=1000",
        "max_pixels=1048576", "max_sample_pixels=16777216"],
    "tfprobunet.saving.load_model": ["path", "max_bytes=None"],
    "tfprobunet.training.preset": ["name", "**overrides"],
    "tfprobunet.training.learning_rate_schedule": ["name", "learning_rate", "total_steps",
                                                   "warmup_fraction=0.05"],
    "tfprobunet.training.make_strategy": ["name", "connect_timeout=300.0"],
    "tfprobunet.training.fit_distributed": [
        "model", "dataset", "epochs", "steps_per_epoch", "initial_epoch=0",
        "validation_data=None", "callbacks=None", "verbose=1", "stop=None"],
    "tfprobunet.tuning.tune": [
        "directory", "dataset='flips'", "data_dir=None", "tuner='random'", "max_trials=10",
        "epochs=5", "steps_per_epoch=100", "image_size=None", "num_examples=None",
        "validation_examples=100", "validation_data=None", "strategy='default'", "seed=0",
        "verbose=None", "**fixed"],
    "tfprobunet.serving.ModelServer": [
        "base_path", "port=8500", "rest_port=8501", "host='127.0.0.1'", "max_workers=4",
        "rest_workers=2", "poll_seconds=1.0", "max_samples=1000", "max_pixels=1048576",
        "max_sample_pixels=16777216", "max_message_bytes=268435456",
        "max_body_bytes=33554432", "request_timeout=30.0"],
    "tfprobunet.models.SegmentationSampler.sample": ["images", "num_samples=1", "seed=None"],
    "tfprobunet.models.ProbabilisticUNet": [
        "num_classes=2", "num_channels=(32, 64, 128, 192)", "convs_per_block=3", "latent_dim=6",
        "fcomb_layers=3", "fcomb_channels=None", "beta=1.0", "reconstruction='sum'",
        "kl='analytic'", "use_posterior_mean=False", "weight_decay=1e-05", "seed=None",
        "ged_samples=16", "ged_classes=None", "geco_target=None", "geco_rate=0.01",
        "beta_warmup_steps=0", "energy_weight=0.0", "energy_samples=4", "**kwargs"],
    "tfprobunet.models.DropoutUNet": [
        "num_classes=2", "num_channels=(32, 64, 128, 192)", "convs_per_block=3",
        "dropout_rate=0.5", "dropout_blocks=3", "reconstruction='sum'", "weight_decay=1e-05",
        "seed=None", "ged_samples=16", "ged_classes=None", "**kwargs"],
    "tfprobunet.models.UNetEnsemble": [
        "num_classes=2", "num_channels=(32, 64, 128, 192)", "convs_per_block=3",
        "num_members=16", "reconstruction='sum'", "weight_decay=1e-05", "seed=None",
        "ged_samples=16", "ged_classes=None", "**kwargs"],
    "tfprobunet.models.MHeads": [
        "num_classes=2", "num_channels=(32, 64, 128, 192)", "convs_per_block=3", "num_heads=16",
        "epsilon=0.05", "reconstruction='sum'", "weight_decay=1e-05", "seed=None",
        "ged_samples=16", "ged_classes=None", "**kwargs"],
    "tfprobunet.models.HierarchicalProbabilisticUNet": [
        "num_classes=2", "num_channels=(24, 48, 96, 192, 192, 192, 192, 192)",
        "convs_per_block=3", "blocks_per_level=3", "latent_dims=None", "top_k_fraction=0.02",
        "top_k_mode='stochastic'", "geco_target=0.05", "geco_rate=0.01", "beta=1.0",
        "weight_decay=1e-05", "seed=None", "ged_samples=16", "ged_classes=None", "**kwargs"],
    "tfprobunet.models.Image2ImageVAE": [
        "num_classes=2", "num_channels=(32, 64, 128, 192)", "convs_per_block=3", "latent_dim=6",
        "beta=1.0", "reconstruction='sum'", "weight_decay=1e-05", "seed=None", "ged_samples=16",
        "ged_classes=None", "**kwargs"],
    "tfprobunet.models.StochasticSegmentationNetwork": [
        "num_classes=2", "num_channels=(32, 64, 128, 192)", "convs_per_block=3", "rank=10",
        "num_mc_samples=20", "weight_decay=1e-05", "seed=None", "ged_samples=16",
        "ged_classes=None", "**kwargs"],
    "tfprobunet.losses.ssn_loss": ["labels", "logit_samples", "ignore_label=255"],
}

DATASETS = ["flips", "graders", "lidc", "lidc-pickle", "cityscapes", "npz", "folder"]
DATA_FLAGS = {"--dataset": ("flips", False, DATASETS), "--data-dir": (None, False, None),
              "--image-size": (None, False, None), "--num-examples": (None, False, None)}
LIMIT_FLAGS = {"--max-samples": (1000, False, None), "--max-pixels": (1048576, False, None),
               "--max-sample-pixels": (16777216, False, None)}
PRESET_NAMES = ["cpu", "cpu-energy", "paper"]
# `compare` runs the paper's five by default; the later models join MODEL_NAMES.
PAPER_MODELS = ["probunet", "dropout", "ensemble", "mheads", "i2ivae"]
MODEL_NAMES = [*PAPER_MODELS, "ssn"]

# Every command, and for each flag: (effective default, required, choices). The effective
# default is what the library receives when the flag is left out (see `_effective_default`).
CLI = {
    "train": {
        **DATA_FLAGS,
        "--workdir": (None, True, None),
        "--strategy": ("default", False, ["default", "mirrored", "multi_worker"]),
        "--connect-timeout": (300.0, False, None),
        "--epochs": (10, False, None),
        "--steps-per-epoch": (100, False, None),
        "--batch-size": (8, False, None),
        "--validation-examples": (0, False, None),
        "--learning-rate": (0.0001, False, None),
        "--schedule": ("constant", False, ["constant", "piecewise", "cosine", "wsd"]),
        "--max-minutes": (None, False, None),
        "--tensorboard": (None, False, None),
        "--mixed-precision": (None, False, ["mixed_float16", "mixed_bfloat16"]),
        "--seed": (0, False, None),
        "--num-channels": ([32, 64, 128, 192], False, None),
        "--convs-per-block": (3, False, None),
        "--latent-dim": (6, False, None),
        "--fcomb-layers": (3, False, None),
        "--fcomb-channels": (None, False, None),
        "--beta": (1.0, False, None),
        "--beta-warmup-steps": (0, False, None),
        "--geco-target": (None, False, None),
        "--energy-weight": (0.0, False, None),
        "--energy-samples": (4, False, None),
        "--reconstruction": ("sum", False, ["sum", "mean"]),
        "--kl": ("analytic", False, ["analytic", "sampled"]),
        "--jit-compile": (False, False, None),
        "--preset": (None, False, PRESET_NAMES),
    },
    "evaluate": {
        "--model": (None, True, None),
        **{**DATA_FLAGS, "--dataset": (None, False, DATASETS)},  # default: the training run's
        "--out": (None, True, None),
        "--split": ("test", False, ["train", "val", "test"]),
        "--samples": ([1, 4, 8, 16], False, None),
        "--batch-size": (8, False, None),
        "--seed": (None, False, None),
    },
    "inspect": {
        "--model": (None, True, None),
        "--image": (None, False, None),
        **{**DATA_FLAGS, "--dataset": (None, False, DATASETS)},
        "--split": ("test", False, ["train", "val", "test"]),
        "--index": (0, False, None),
        "--axes": (None, False, None),
        "--extent": (2.0, False, None),
        "--steps": (5, False, None),
        "--out": (None, True, None),
    },
    "export": {
        "--model": (None, False, None),
        "--clean": (False, False, None),
        "--base-dir": ("saved_models", False, None),
        "--name": ("probunet", False, None),
        "--version": (None, False, None),
        **LIMIT_FLAGS,
        "--image-range": ([0.0, 1.0], False, None),
    },
    "serve": {
        "--model-base-path": ("saved_models", False, None),
        "--port": (8500, False, None),
        "--rest-port": (8501, False, None),
        "--host": ("127.0.0.1", False, None),
        "--workers": (4, False, None),
        "--rest-workers": (2, False, None),
        "--poll-seconds": (1.0, False, None),
        **LIMIT_FLAGS,
        "--max-message-bytes": (268435456, False, None),
        "--max-body-bytes": (33554432, False, None),
        "--request-timeout": (30.0, False, None),
    },
    "predict": {
        "--model": (None, False, None),
        "--target": (None, False, None),
        "--name": (None, False, None),
        "--version": (None, False, None),
        "--image": (None, True, None),
        "-n/--num-samples": (16, False, None),
        "--seed": (None, False, None),
        **LIMIT_FLAGS,
        "--out": (None, True, None),
    },
    "tune": {
        **DATA_FLAGS,
        "--directory": (None, True, None),
        "--tuner": ("random", False, ["random", "bayesian", "hyperband"]),
        "--max-trials": (10, False, None),
        "--epochs": (5, False, None),
        "--steps-per-epoch": (100, False, None),
        "--validation-examples": (100, False, None),
        "--strategy": ("default", False, ["default", "mirrored"]),
        "--seed": (0, False, None),
        "--fixed": ([], False, None),
        "--chief": (False, False, None),
        "--worker": (None, False, None),
        "--oracle": (None, False, None),
        "--show": (5, False, None),
        "--verbose": (None, False, [0, 1, 2]),
    },
    "compare": {
        **DATA_FLAGS,
        "--out": (None, True, None),
        "--models": (PAPER_MODELS, False, None),
        "--steps": (2000, False, None),
        "--steps-per-epoch": (None, False, None),
        "--seeds": ([0], False, None),
        "--recipe": ("cpu", False, PRESET_NAMES),
        "--test-examples": (None, False, None),
        "--set": ([], False, None),
    },
    "demo": {
        "--workdir": ("runs/demo", False, None),
        "--steps": (6000, False, None),
        "--seed": (0, False, None),
        "--base-dir": ("saved_models", False, None),
    },
}


def _resolve(dotted):
    """The object at `dotted`: a module, a module attribute, or `Class.method`."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for part in parts[split:]:
            target = getattr(target, part)
        return target
    raise ImportError(dotted)


def _parameters(function):
    if inspect.isclass(function):
        function = function.__init__
    shown = []
    for p in inspect.signature(function).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            shown.append(f"**{p.name}")
        elif p.kind is p.VAR_POSITIONAL:
            shown.append(f"*{p.name}")
        else:
            shown.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return shown


@pytest.mark.parametrize("module", sorted(ALL))
@pytest.mark.filterwarnings("ignore:tfprobunet.baselines is deprecated:DeprecationWarning")
def test_all_is_pinned(module):
    assert set(ALL[module]) <= set(importlib.import_module(module).__all__)
    for name in ALL[module]:
        assert getattr(importlib.import_module(module), name) is not None, name


@pytest.mark.parametrize("module", sorted(NAMES))
def test_names_are_importable(module):
    imported = importlib.import_module(module)
    missing = [name for name in NAMES[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lost {missing}"


@pytest.mark.parametrize("dotted", sorted(SIGNATURES))
def test_signatures_are_pinned(dotted):
    """Every pinned parameter, in its order and with its default; a new parameter may only be
    added with a default, after the pinned ones (before `**kwargs`)."""
    now = _parameters(_resolve(dotted))
    pinned = SIGNATURES[dotted]
    assert [p for p in now if p in pinned] == pinned, now
    added = [p for p in now if p not in pinned]
    assert all("=" in p for p in added), added
    assert now[:len(pinned) - pinned[-1].startswith("**")] == [
        p for p in pinned if not p.startswith("**")], now


def test_top_level_names_are_the_library_objects():
    from tfprobunet import comparison, evaluation, layers, models, serving, training

    assert tfprobunet.train is training.train
    assert tfprobunet.evaluate is evaluation.evaluate
    assert tfprobunet.compare is comparison.compare
    assert tfprobunet.export_for_serving is serving.export_for_serving
    assert tfprobunet.ProbabilisticUNet is models.ProbabilisticUNet
    assert (tfprobunet.UNet, tfprobunet.FComb) == (layers.UNet, layers.FComb)
    # The HPU-Net joined after the paper's five (compare's default stays those five).
    assert sorted(models.MODELS) == sorted([*MODEL_NAMES, "hpunet", "ccdm", "mose"])


def test_old_module_paths_still_import():
    """`tfprobunet.model`, `tfprobunet.export` and `tfprobunet.baselines` predate `models/` and
    `serving/`; code written against them keeps working (with a deprecation warning)."""
    from tfprobunet import models, serving

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tfprobunet.baselines import DropoutUNet, Image2ImageVAE, MHeads, UNetEnsemble
        from tfprobunet.export import export_for_serving
        from tfprobunet.model import ProbabilisticUNet
    assert ProbabilisticUNet is models.ProbabilisticUNet
    assert export_for_serving is serving.export_for_serving
    assert (DropoutUNet, UNetEnsemble, MHeads, Image2ImageVAE) == (
        models.DropoutUNet, models.UNetEnsemble, models.MHeads, models.Image2ImageVAE)


class _Parsed(Exception):
    """Raised in place of parsing: the parser `main` built is all these tests want."""


def _cli_parser():
    """The parser `tfprobunet` builds (argparse's `parse_args` stopped before it parses)."""
    from tfprobunet import cli

    built = {}

    def capture(parser, args=None, namespace=None):
        built["parser"] = parser
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        with pytest.raises(_Parsed):
            cli.main(["demo"])
    return built["parser"]


def _library_defaults(command):
    """What the library call of `command` takes when a flag is left out: `train`, `tune` and
    `compare` forward their flags to functions whose defaults are the defaults."""
    from tfprobunet import comparison, models, training, tuning

    functions = {"train": [training.train, *models.MODELS.values()], "tune": [tuning.tune],
                 "compare": [comparison.compare]}.get(command, [])
    defaults = {}
    for function in functions:
        function = function.__init__ if inspect.isclass(function) else function
        for p in inspect.signature(function).parameters.values():
            if p.default is not p.empty:
                defaults.setdefault(p.name, p.default)
    return defaults


def _effective_default(command, action):
    """The flag's default; where argparse has none (None, or SUPPRESS: only the flags given
    are passed), the library's. As JSON has it (tuples as lists)."""
    default = action.default
    if default is None or default is argparse.SUPPRESS:
        default = _library_defaults(command).get(action.dest)
    return json.loads(json.dumps(default, default=list))


def _commands():
    parser = _cli_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices


def test_cli_has_every_command():
    assert set(CLI) <= set(_commands())


@pytest.mark.parametrize("command", sorted(CLI))
def test_cli_flags_and_defaults_are_pinned(command):
    actions = {"/".join(a.option_strings): a for a in _commands()[command]._actions
               if not isinstance(a, argparse._HelpAction)}
    for flag, (default, required, choices) in CLI[command].items():
        assert flag in actions, f"tfprobunet {command} lost {flag}"
        action = actions[flag]
        assert _effective_default(command, action) == json.loads(json.dumps(default)), flag
        assert action.required == required, flag
        # Choices may be added, none removed.
        assert (action.choices is None) == (choices is None), flag
        assert set(choices or ()) <= set(action.choices or ()), flag


def test_importing_the_package_loads_nothing_until_a_name_is_used(tmp_path):
    """`import tfprobunet` behaves the same whoever imports it: no TensorFlow until the first
    public name; then every model class is registered with Keras. A `.keras` file loads
    through `tfprobunet.saving` even when only that module was imported."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, tfprobunet\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
        "tfprobunet.catalog.model_names()\n"
        "print('tensorflow' in sys.modules)\n"
        "tfprobunet.train\n"
        "import keras\n"
        "print(all(keras.saving.get_registered_object(f'tfprobunet>{e.class_name}') is not None"
        " for e in tfprobunet.catalog.BUILTIN_MODELS.values()))\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True, timeout=600).stdout.split()
    assert out == ["False", "False", "False", "True"]
    path = os.path.join(os.path.dirname(__file__), "data", "v0_1_mheads.keras")
    script = ("import tfprobunet.saving as s\n"
              f"print(type(s.load_model({path!r})).__name__)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True, timeout=600).stdout.split()
    assert out == ["MHeads"]
