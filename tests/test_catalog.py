"""`tfprobunet.catalog`: the house's nouns in one place, read by name everywhere; models of your
own joining `train`, the CLI and `compare` through `tfprobunet.models.register` and the
`tfprobunet.models` entry-point group."""

import ast
import importlib
import json
import os
import re
import subprocess
import sys

import keras
import pytest

from tfprobunet import catalog, cli, comparison, losses, models, plots, protocols
from tfprobunet.cli import flags
from tfprobunet.serving import signatures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model of your own, outside the package: one 3x3 convolution's logits plus learned-scale
# noise per sample. It takes the shared constructor arguments, so every recipe applies to it.
TOY_SOURCE = '''
import keras
import tensorflow as tf

from tfprobunet import losses
from tfprobunet.models import SegmentationSampler


@keras.saving.register_keras_serializable(package="toy")
class ToySampler(SegmentationSampler):
    """A convolution's logits plus `noise` times standard normal noise per sample."""

    LABEL = "Toy sampler"

    def __init__(self, num_classes=2, num_channels=(8,), convs_per_block=1, weight_decay=0.0,
                 seed=None, ged_samples=4, ged_classes=None, noise=0.5, **kwargs):
        super().__init__(num_classes, num_channels, convs_per_block, weight_decay, seed,
                         ged_samples, ged_classes, **kwargs)
        self.conv = keras.layers.Conv2D(num_classes, 3, padding="same", name="conv")
        self._create_trackers()
        self.noise = float(noise)

    def build(self, input_shape):
        self.image_channels = input_shape[-1]
        self.conv.build(input_shape)
        self.built = True

    def call(self, images):
        return self.conv(images)

    def sample(self, images, num_samples=1, seed=None):
        images = self._check_images(images)
        self._ensure_built(images)
        logits = self.conv(images)[:, None]
        shape = tf.concat([tf.shape(logits)[:1], [num_samples], tf.shape(logits)[2:]], 0)
        return logits + self.noise * self._noise(shape, seed)

    def _loss_terms(self, images, segmentations):
        return {"loss": losses.pixel_cross_entropy(segmentations, self.conv(images), "mean")}

    def get_config(self):
        return {**super().get_config(), "noise": self.noise}
'''


@pytest.fixture(scope="module")
def toy_module(tmp_path_factory):
    """`toy_models.py` written outside the package, importable, and its class."""
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy_models.py").write_text(TOY_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        yield folder, importlib.import_module("toy_models").ToySampler
    finally:
        sys.path.remove(str(folder))


@pytest.fixture
def toy(toy_module):
    """The toy model registered as "toy" for one test."""
    _, cls = toy_module
    models.register("toy", cls)
    try:
        yield cls
    finally:
        catalog.remove_model("toy")


def test_catalog_imports_only_the_standard_library():
    """The command line builds its parser from the catalog before TensorFlow loads."""
    with open(os.path.join(ROOT, "tfprobunet", "catalog.py")) as f:
        tree = ast.parse(f.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names), imported


@pytest.mark.parametrize("name", list(catalog.BUILTIN_MODELS))
def test_each_model_is_found_by_name_not_by_position(name):
    entry = catalog.BUILTIN_MODELS[name]
    cls = models.MODELS[name]
    assert (cls.__name__, cls.__module__) == (entry.class_name, entry.module)
    assert models.get(name) is cls is getattr(models, entry.class_name)
    assert plots.MODEL_LABELS[name] == entry.label == catalog.model_label(name)


@pytest.mark.parametrize("name", list(catalog.BUILTIN_MODELS))
def test_each_models_serving_signatures_are_the_catalogs(name):
    model = models.get(name)(num_channels=(4, 8), convs_per_block=1)
    model.build((None, 8, 8, 1))
    assert tuple(signatures.serving_functions(model)) == catalog.BUILTIN_MODELS[name].serving


def test_the_paper_models_come_first_with_the_reference():
    assert catalog.PAPER_MODELS == ("probunet", "dropout", "ensemble", "mheads", "i2ivae")
    assert catalog.PAPER_MODELS[0] == catalog.REFERENCE_MODEL == comparison.REFERENCE
    assert comparison.MODELS == catalog.PAPER_MODELS


def test_protocols_metrics_and_the_ignore_label_are_the_catalogs():
    assert protocols.NAMES == catalog.PROTOCOL_NAMES
    assert protocols.COLUMNS["ged"] == ("D²_GED", False)
    assert protocols.COLUMNS["hm_iou"] == ("HM-IoU", True)
    assert set(protocols.COLUMNS) == set(catalog.METRICS)
    for protocol in protocols.PROTOCOLS.values():
        assert set(protocol.columns) <= set(catalog.METRICS)
    assert losses.IGNORE_LABEL == catalog.IGNORE_LABEL == 255


def test_every_dataset_has_its_loader_module():
    for name, entry in catalog.DATASETS.items():
        module = importlib.import_module(f"tfprobunet.data.{entry.module}")
        assert module.__name__.endswith(entry.module), name
    assert set(catalog.SYNTHETIC_DATASETS) == {"flips", "graders"}
    assert set(catalog.OWN_SIZE_DATASETS) == {"npz", "folder", "lidc-phiseg", "volumes"}


def test_the_stored_signatures_are_the_librarys():
    """`--help` shows defaults from signatures.json (no TensorFlow): it must equal what
    `inspect` finds now; after changing a signature, rewrite it with
    `python -c "from tfprobunet.cli import flags; flags.write_signatures()"`."""
    with open(flags.SIGNATURES) as f:
        stored = json.load(f)
    assert stored == flags.library_signatures(), \
        "signatures.json is stale: run flags.write_signatures()"


def test_every_data_file_of_the_package_is_installed_with_it():
    """A file the package reads at run time (signatures.json) is in setup.py's package_data,
    or an installed `tfprobunet --help` fails."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        declared = ast.literal_eval(re.search(r"package_data=(\{.*?\})", f.read()).group(1))
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "tfprobunet")):
        package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for name in files:
            if not name.endswith((".py", ".pyc")):
                found.setdefault(package, []).append(name)
    assert found == declared


def test_register_refuses_what_would_not_work(toy_module):
    _, cls = toy_module
    with pytest.raises(ValueError, match=r"`name` must be lower case.*Received: 'Toy Model'"):
        models.register("Toy Model", cls)
    with pytest.raises(TypeError, match=r"subclass of tfprobunet.models.SegmentationSampler"):
        models.register("toy", keras.Model)
    with pytest.raises(ValueError, match=r"named 'probunet' exists already"):
        models.register("probunet", cls)
    with pytest.raises(ValueError, match=r"`model` must be one of probunet, .*Received: 'toy'"):
        models.get("toy")
    with pytest.raises(ValueError, match=r"No model was registered as 'toy'"):
        catalog.remove_model("toy")


def test_a_registered_model_trains_and_compares_from_the_command_line(toy, tmp_path, capsys):
    """The toy model, defined outside the package, joins `train --model` with its own
    constructor argument as a flag, and `compare --models probunet,toy` with the same
    protocol and metrics: results.json has its row, under its label."""
    assert catalog.model_names()[-1] == "toy" and models.get("toy") is toy
    workdir = str(tmp_path / "train")
    assert cli.main(["train", "--model", "toy", "--noise", "0.25", "--workdir", workdir,
                     "--image-size", "16", "--num-examples", "8", "--epochs", "1",
                     "--steps-per-epoch", "2", "--batch-size", "2"]) == 0
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert isinstance(model, toy) and model.noise == 0.25
    out = str(tmp_path / "compare")
    capsys.readouterr()
    assert cli.main(["compare", "--out", out, "--models", "probunet,toy", "--steps", "2",
                     "--seeds", "0", "--image-size", "32", "--num-examples", "8",
                     "--test-examples", "4"]) == 0
    assert "toy" in capsys.readouterr().out
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert list(results["models"]) == ["probunet", "toy"]
    assert results["models"]["toy"]["label"] == "Toy sampler"
    assert set(results["models"]["toy"]["ged"]) == {"1", "4", "8", "16"}
    assert "toy" in results["wilcoxon_16"]
    with open(os.path.join(out, "toy-seed0", comparison.RUN_RECORD)) as f:
        record = json.load(f)
    # The recipe's U-Net arguments reached it, as every model's do.
    assert record["model"] == "toy" and record["num_channels"] == [16, 32, 64]


def test_an_entry_point_makes_a_model_known_to_a_new_process(toy_module, tmp_path):
    """An installed package declares its model in the `tfprobunet.models` entry-point group:
    a fresh `tfprobunet` process lists it, trains it and loads its model file."""
    folder, _ = toy_module
    dist = folder / "toy_models-1.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[tfprobunet.models]\ntoy = toy_models:ToySampler\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), ROOT]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    workdir = str(tmp_path / "run")
    command = [sys.executable, "-m", "tfprobunet.cli", "train", "--model", "toy", "--noise",
               "0.1", "--workdir", workdir, "--image-size", "16", "--num-examples", "4",
               "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "model saved to" in done.stdout
    help_text = subprocess.run([sys.executable, "-m", "tfprobunet.cli", "train", "--help"],
                               capture_output=True, text=True, env=env, check=True).stdout
    assert "toy}" in help_text.replace("\n", "").replace(" ", "")
    # The library's loader imports the class its entry point declares; Keras' own needs the
    # package imported first, as for any class of your own.
    check = ("import tfprobunet; m = tfprobunet.saving.load_model(%r); "
             "print(type(m).__name__, m.noise)" % os.path.join(workdir, "model.keras"))
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            env=env, check=True, timeout=600)
    assert loaded.stdout.split() == ["ToySampler", "0.1"]
