"""The SavedModel for TF Serving: signatures as DESIGN section 6 fixes them, equal to the model
in process and through a TF1 session, versioned atomic export and models.config."""

import errno
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfprobunet import _io, serving
from tfprobunet.serving import export
from tfprobunet.saving import NonFiniteWeightsError
from conftest import SERVED, cli_error, served_images, served_model, tiny_model

K, C, N, F = (SERVED[k] for k in "KCNF")
FLOAT, INT = tf.float32.as_datatype_enum, tf.int32.as_datatype_enum
EXPECTED = {
    "serving_default": (
        {"images": (FLOAT, [-1, -1, -1, C]), "num_samples": (INT, []), "seed": (INT, [2])},
        {"masks": (INT, [-1, -1, -1, -1]), "probabilities": (FLOAT, [-1, -1, -1, -1, K])}),
    "features": (
        {"images": (FLOAT, [-1, -1, -1, C])},
        {"features": (FLOAT, [-1, -1, -1, F]), "prior_loc": (FLOAT, [-1, N]),
         "prior_scale": (FLOAT, [-1, N])}),
    "sample": (
        {"features": (FLOAT, [-1, -1, -1, F]), "prior_loc": (FLOAT, [-1, N]),
         "prior_scale": (FLOAT, [-1, N]), "num_samples": (INT, []), "seed": (INT, [2])},
        {"masks": (INT, [-1, -1, -1, -1]), "probabilities": (FLOAT, [-1, -1, -1, -1, K]),
         "z": (FLOAT, [-1, -1, N])}),
    "decode": (
        {"features": (FLOAT, [-1, -1, -1, F]), "z": (FLOAT, [-1, -1, N])},
        {"masks": (INT, [-1, -1, -1, -1]), "probabilities": (FLOAT, [-1, -1, -1, -1, K])}),
    "info": (
        {"size": (INT, [2])},
        {"multiple": (INT, []), "padded_size": (INT, [2]),
         "config": (tf.string.as_datatype_enum, [])}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = served_model(7)
    base = str(tmp_path_factory.mktemp("saved_models"))
    return model, base, export.export_for_serving(model, base, "pun")



def test_signatures_are_exactly_the_contract(exported):
    _, _, path = exported
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    signatures = dict(saved.meta_graphs[0].signature_def)
    signatures.pop("__saved_model_init_op", None)
    assert set(signatures) == set(EXPECTED)

    def infos(tensor_infos):
        return {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in
                tensor_infos.items()}

    for name, (inputs, outputs) in EXPECTED.items():
        assert infos(signatures[name].inputs) == inputs, name
        assert infos(signatures[name].outputs) == outputs, name
    assert set(saved.meta_graphs[0].meta_info_def.tags) == {"serve"}
    # Optional inputs: one sample and a fresh seed (RANDOM_SEED) when a request leaves them out.
    for name in ("serving_default", "sample"):
        defaults = {k: tf.make_ndarray(v).tolist() for k, v in signatures[name].defaults.items()}
        assert defaults == {"num_samples": 1, "seed": [-1, -1]}, name
    assert not signatures["features"].defaults and not signatures["decode"].defaults
    assert tf.make_ndarray(signatures["info"].defaults["size"]).tolist() == [1, 1]
    # The fingerprint on disk is that of the graph file with the defaults.
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    fresh = fingerprint_pb2.FingerprintDef.FromString(fingerprinting.CreateFingerprintDef(path))
    on_disk = tf.saved_model.experimental.read_fingerprint(path)
    assert on_disk.saved_model_checksum == fresh.saved_model_checksum


def test_signatures_equal_the_model_in_process_and_through_a_tf1_session(exported):
    model, _, path = exported
    images = served_images()
    seed = tf.constant([5, 6])
    expected = tf.nn.softmax(model.sample(images, 4, seed=seed)).numpy()
    call = tf.nn.softmax(model(images)).numpy()

    loaded = tf.saved_model.load(path).signatures
    servable = serving.Servable("pun", 1, path)
    for run in (lambda name, **kw: {k: v.numpy() for k, v in loaded[name](**kw).items()},
                lambda name, **kw: servable.run(name, {k: np.asarray(v) for k, v in kw.items()})):
        features = run("features", images=images)
        sampled = run("sample", **features, num_samples=np.int32(4), seed=seed.numpy())
        default = run("serving_default", images=images, num_samples=np.int32(4),
                      seed=seed.numpy())
        np.testing.assert_allclose(sampled["probabilities"], expected, atol=1e-5)
        np.testing.assert_allclose(default["probabilities"], expected, atol=1e-5)
        np.testing.assert_array_equal(default["masks"], expected.argmax(-1))
        np.testing.assert_array_equal(sampled["masks"], default["masks"])
        # decode at the prior mean is what `call` returns.
        decoded = run("decode", features=features["features"],
                      z=features["prior_loc"][:, None])
        np.testing.assert_allclose(decoded["probabilities"][:, 0], call, atol=1e-5)
        # The same seed gives the same masks; another seed other ones.
        again = run("sample", **features, num_samples=np.int32(4), seed=seed.numpy())
        other = run("sample", **features, num_samples=np.int32(4), seed=np.int32([5, 7]))
        np.testing.assert_array_equal(again["z"], sampled["z"])
        assert not np.allclose(other["z"], sampled["z"])
    servable.close()


def test_versions_config_asset_and_models_config(exported, tmp_path):
    model, _, _ = exported
    base = str(tmp_path)
    with open(os.path.join(base, "models.config"), "w") as f:
        f.write('model_config_list { config { name: "other" base_path: "/models/other" '
                'model_platform: "tensorflow" } }')
    first = export.export_for_serving(model, base, "pun")
    second = export.export_for_serving(model, base, "pun")
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    assert export.export_for_serving(model, base, "pun", version=10).endswith("10")
    with pytest.raises(FileExistsError, match="Version 2 of 'pun' already exists"):
        export.export_for_serving(model, base, "pun", version=2)
    with pytest.raises(ValueError, match="`name`"):
        export.export_for_serving(model, base, "a/b")
    assert sorted(os.listdir(os.path.join(base, "pun"))) == ["1", "10", "2"]  # no leftovers
    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(base, "models.config")) as f:
        text_format.Parse(f.read(), config)
    entries = {c.name: (c.base_path, c.model_platform) for c in config.model_config_list.config}
    assert entries == {"other": ("/models/other", "tensorflow"),
                       "pun": ("/models/pun", "tensorflow")}
    with open(os.path.join(second, export.CONFIG_ASSET)) as f:
        asset = json.load(f)
    assert asset["config"] == json.loads(json.dumps(model.get_config()))
    assert asset["image_channels"] == C


def test_a_poller_never_sees_a_half_written_version(exported, tmp_path):
    model, _, _ = exported
    model_dir = tmp_path / "pun"
    seen, incomplete, done = set(), [], threading.Event()

    def poll():
        finished = False
        while not finished:
            # Read the flag before scanning: the last scan starts after both exports ended, so
            # it sees version 2 however the threads were scheduled.
            finished = done.is_set()
            if model_dir.is_dir():
                for version in os.listdir(model_dir):
                    if version.isdigit():
                        seen.add(version)
                        folder = model_dir / version
                        if not ((folder / "saved_model.pb").is_file()
                                and (folder / "variables").is_dir()):
                            incomplete.append(version)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for _ in range(2):
            export.export_for_serving(model, str(tmp_path), "pun")
    finally:
        done.set()
        poller.join()
    assert seen == {"1", "2"} and incomplete == []


def test_export_needs_a_built_model(tmp_path):
    with pytest.raises(ValueError, match="Build the model"):
        export.export_for_serving(tiny_model(2), str(tmp_path), "pun")


def _config_names(base):
    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(base, export.MODELS_CONFIG)) as f:
        text_format.Parse(f.read(), config)
    return sorted(entry.name for entry in config.model_config_list.config)


def test_concurrent_registrations_all_end_up_in_models_config(tmp_path):
    """Two exports finishing together must not drop each other's model (read-modify-write
    without a lock kept 2 of 16 threads' models, 1 of 6 processes')."""
    base = str(tmp_path / "saved_models")
    names = [f"model{i}" for i in range(16)]
    start = threading.Barrier(len(names))

    def register(name):
        start.wait()
        export.write_models_config(base, name)

    threads = [threading.Thread(target=register, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _config_names(base) == sorted(names)

    # Four processes, imported, say they are ready, then register 10 models each at once.
    go = tmp_path / "go"
    script = ("import os, sys, time; from tfprobunet.serving import export\n"
              "open(sys.argv[3] + '-' + sys.argv[2], 'w').close()\n"
              "while not os.path.exists(sys.argv[3]): time.sleep(0.01)\n"
              "for i in range(10): export.write_models_config(sys.argv[1], f'{sys.argv[2]}-{i}')")
    processes = [subprocess.Popen([sys.executable, "-c", script, base, f"p{k}", str(go)],
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                 for k in range(4)]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("go-p*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    assert [p.wait(timeout=300) for p in processes] == [0] * 4
    expected = sorted(names + [f"p{k}-{i}" for k in range(4) for i in range(10)])
    assert _config_names(base) == expected
    assert [n for n in os.listdir(base) if n != export.MODELS_CONFIG and
            not n.endswith(".lock")] == []  # no temporary files left


def test_stale_temporary_exports_are_removed_and_live_ones_kept(exported, tmp_path):
    """A killed export leaves `.tmp-<version>-<id>`; the next export (or `tfprobunet export
    --clean`) removes those whose writer is gone, never one still being written."""
    model, _, _ = exported
    model_dir = tmp_path / "pun"
    stale = model_dir / ".tmp-1-0123abcd"  # as a kill -9 mid-export leaves it
    (stale / "variables").mkdir(parents=True)
    (stale / "saved_model.pb").write_bytes(b"partial")
    live = model_dir / ".tmp-2-4567ef01"  # another process is writing it right now
    live.mkdir()
    with export._writing(str(live)):
        path = export.export_for_serving(model, str(tmp_path), "pun")
        assert os.path.basename(path) == "1"
        assert not stale.exists() and live.exists()
    # Once its writer is gone, the next clean removes it too.
    assert export.clean_stale_exports(str(tmp_path), "pun") == [str(live)]
    assert sorted(os.listdir(model_dir)) == ["1"]


def test_the_export_enforces_its_recorded_request_limits(exported, tmp_path):
    """TF Serving bounds neither the sample count nor the image size: the signatures do, with
    the limits the export recorded (overridable at export time)."""
    model, _, default_path = exported
    with open(os.path.join(default_path, export.CONFIG_ASSET)) as f:
        assert json.load(f)["limits"] == {"max_samples": 1000, "max_pixels": 2**20,
                                          "max_sample_pixels": 2**24, "max_sample_bytes": 2**29,
                                          "image_range": [0, 1]}
    path = export.export_for_serving(model, str(tmp_path), "pun", max_samples=4, max_pixels=600,
                                     max_sample_pixels=2000, image_range=None)
    with open(os.path.join(path, export.CONFIG_ASSET)) as f:
        assert json.load(f)["limits"] == {"max_samples": 4, "max_pixels": 600,
                                          "max_sample_pixels": 2000, "max_sample_bytes": 2**29,
                                          "image_range": None}
    signatures = tf.saved_model.load(path).signatures
    images = served_images()  # 2 x 16 x 16 = 512 pixels
    seed = np.int32([1, 2])
    answer = signatures["serving_default"](images=images, num_samples=np.int32(3), seed=seed)
    assert answer["masks"].shape == (2, 3, 16, 16)  # 3 x 512 = 1536 sample pixels <= 2000
    # image_range=None: pixel values of any range are taken.
    answer = signatures["serving_default"](images=images * 255, num_samples=np.int32(1),
                                           seed=seed)
    assert answer["masks"].shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"`image_range` must be \(low, high\) with low < high"):
        export.export_for_serving(model, str(tmp_path), "pun", image_range=(1, 0))
    features = {k: v for k, v in signatures["features"](images=images).items()}
    one = served_images(batch=1)  # 5 samples of it: 1280 sample pixels, only max_samples fails
    refused = [
        ("serving_default", dict(images=one, num_samples=np.int32(5), seed=seed),
         "`num_samples` is 5, above max_samples = 4 (recorded in this export)"),
        ("sample", dict(**signatures["features"](images=one), num_samples=np.int32(5),
                        seed=seed),
         "`num_samples` is 5, above max_samples = 4 (recorded in this export)"),
        ("features", dict(images=served_images(batch=3)),
         "3 x 16 x 16 = 768 pixels, above max_pixels = 600 (recorded in this export)"),
        ("serving_default", dict(images=images, num_samples=np.int32(4), seed=seed),
         "2 x 4 x 16 x 16 = 2048 sample pixels, above max_sample_pixels = 2000 (recorded in "
         "this export)"),
        ("decode", dict(features=features["features"][:1], z=np.zeros((1, 5, N), np.float32)),
         "`z` holds 5 samples per image, above max_samples = 4 (recorded in this export)"),
    ]
    for name, inputs, message in refused:
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            signatures[name](**inputs)
        assert message in caught.value.message, (name, caught.value.message)
    with pytest.raises(ValueError, match="`max_samples` must be an integer >= 1. Received: 0"):
        export.export_for_serving(model, str(tmp_path), "pun", max_samples=0)


def test_the_export_bounds_the_bytes_of_the_samples_by_the_class_count(exported, tmp_path):
    """The pixel limits do not see the class count: a 255-class model's samples cost 255 times
    a pixel's. Hand-worked: 2 images of 16x16, K = 3 classes, 3 samples take 4 x 2 x 3 x 16 x
    16 x 3 = 18,432 bytes of probabilities and pass a limit of 18,432; 4 samples (24,576) are
    refused by every signature that samples."""
    model, _, _ = exported
    path = export.export_for_serving(model, str(tmp_path), "pun", max_sample_bytes=18_432)
    with open(os.path.join(path, export.CONFIG_ASSET)) as f:
        assert json.load(f)["limits"]["max_sample_bytes"] == 18_432
    signatures = tf.saved_model.load(path).signatures
    images, seed = served_images(), np.int32([1, 2])
    answer = signatures["serving_default"](images=images, num_samples=np.int32(3), seed=seed)
    assert answer["probabilities"].shape == (2, 3, 16, 16, K)
    features = signatures["features"](images=images)
    message = ("2 x 4 x 16 x 16 samples of 3 classes: 24576 bytes of probabilities (float32), "
               "above max_sample_bytes = 18432 (recorded in this export)")
    for name, inputs in [
            ("serving_default", dict(images=images, num_samples=np.int32(4), seed=seed)),
            ("sample", dict(**features, num_samples=np.int32(4), seed=seed)),
            ("decode", dict(features=features["features"], z=np.zeros((2, 4, N), np.float32)))]:
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            signatures[name](**inputs)
        assert message in caught.value.message, (name, caught.value.message)
    with pytest.raises(ValueError, match="`max_sample_bytes` must be an integer >= 1"):
        export.export_for_serving(model, str(tmp_path), "pun", max_sample_bytes=0)


def _tree(root):
    """Everything under `root`: relative path -> ("dir",), ("link", target) or ("file", bytes)."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = os.path.join(folder, entry)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                tree[key] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                tree[key] = ("dir",)
            else:
                with open(path, "rb") as f:
                    tree[key] = ("file", f.read())
    return tree


def test_model_names_are_checked_in_one_place(tmp_path):
    """One rule for the export, the clean-up and models.config: a name is a folder directly
    inside the base, never `.`, `..`, a path or a hidden folder."""
    for good in ("pun", "probunet-v2.1", "A_b-0", "x" * 255):
        assert export.check_model_name(good) == good
    for bad in ("", ".", "..", "../x", "a/b", "/abs", ".hidden", ".tmp-1-abc", "a\\b",
                "x" * 256, "a b", "caf\u00e9", "a\nb", None, 7):
        with pytest.raises(ValueError) as caught:
            export.check_model_name(bad)
        message = str(caught.value)
        assert f"Received: {bad!r}" in message and "letters, digits" in message, message
    base = str(tmp_path / "base")
    for call in (lambda: export.write_models_config(base, ".."),
                 lambda: export.clean_stale_exports(base, "../x")):
        with pytest.raises(ValueError, match="Received: '..'|Received: '../x'"):
            call()
    assert not os.path.exists(base)
    # A models.config listing a name that leaves the base (as older exports wrote) is refused
    # when read, naming the file, rather than kept.
    os.makedirs(base)
    with open(os.path.join(base, export.MODELS_CONFIG), "w") as f:
        f.write('model_config_list { config { name: ".." base_path: "/models/.." '
                'model_platform: "tensorflow" } }')
    with pytest.raises(ValueError, match=r"models\.config.*Received: '\.\.'"):
        export.write_models_config(base, "pun")


def test_the_cli_never_writes_or_removes_outside_the_base(exported, tmp_path, capsys):
    """`export --name ..` wrote `base/../1` and listed `/models/..` in models.config; `--clean
    --name ../victim` removed the victim's `.tmp-*` folders. Both are refused, one line each,
    and nothing beside the base changes."""
    model, _, _ = exported
    model_path = str(tmp_path / "model.keras")
    model.save(model_path)
    parent = tmp_path / "parent"
    base = parent / "saved_models"
    base.mkdir(parents=True)
    stale = parent / "victim" / ".tmp-1-0123abcd"  # looks like a killed export's folder
    stale.mkdir(parents=True)
    (stale / "data").write_text("keep me")
    before = _tree(parent)
    for argv in (["--model", model_path, "--name", ".."],
                 ["--model", model_path, "--name", "."],
                 ["--model", model_path, "--name", "../victim"],
                 ["--model", model_path, "--name", str(parent / "victim")],
                 ["--clean", "--name", "../victim"],
                 ["--clean", "--name", str(parent / "victim")]):
        line = cli_error(capsys, ["export", "--base-dir", str(base), *argv])
        name = argv[argv.index("--name") + 1]
        assert f"Received: {name!r}" in line and "letters, digits" in line, line
    assert _tree(parent) == before


def test_links_out_of_the_base_are_not_followed(exported, tmp_path):
    """A model folder that is a symbolic link to elsewhere is refused (exports write and clean
    inside the base only); a `.tmp-*` folder or lock file that is a link is left alone."""
    model, _, _ = exported
    outside = tmp_path / "outside"
    (outside / ".tmp-1-0123abcd").mkdir(parents=True)
    (outside / ".tmp-1-0123abcd" / "data").write_text("keep me")
    base = tmp_path / "base"
    base.mkdir()
    (base / "pun").symlink_to(outside)
    before = _tree(outside)
    for call in (lambda: export.export_for_serving(model, str(base), "pun"),
                 lambda: export.clean_stale_exports(str(base), "pun")):
        with pytest.raises(ValueError, match="symbolic link"):
            call()
    assert _tree(outside) == before and os.listdir(base) == ["pun"]
    # Inside a real model folder: links named like an export's leftovers are not touched, nor
    # followed (opening a dangling lock link would create its target outside).
    (base / "pun").unlink()
    (base / "pun").mkdir()
    (base / "pun" / ".tmp-2-4567ef01").symlink_to(outside / ".tmp-1-0123abcd")
    (base / "pun" / ".tmp-3-89abcdef.lock").symlink_to(outside / "created")
    assert export.clean_stale_exports(str(base), "pun") == []
    assert _tree(outside) == before
    assert sorted(os.listdir(base / "pun")) == [".tmp-2-4567ef01", ".tmp-3-89abcdef.lock"]


def test_a_model_with_non_finite_weights_is_not_exported(tmp_path, capsys):
    """A run that diverged leaves NaN weights: its export is refused before anything is
    written, through the API and the CLI (one line)."""
    model = served_model(3)
    kernel = next(v for v in model.weights if v.path.endswith("kernel"))
    values = kernel.numpy()
    values.flat[0] = np.nan
    kernel.assign(values)
    base = tmp_path / "saved_models"
    with pytest.raises(NonFiniteWeightsError, match=kernel.path):
        export.export_for_serving(model, str(base), "pun")
    assert not base.exists()
    model_path = str(tmp_path / "diverged.keras")
    model.save(model_path)
    line = cli_error(capsys, ["export", "--model", model_path, "--base-dir", str(base)])
    assert "non-finite" in line and model_path in line, line
    assert not base.exists()


class _FullDisk:
    """Writes to the files whose path matches `pattern` fail as on a full disk: the file is
    created, empty, and writing it raises ENOSPC (as the write or the close does when the disk
    fills)."""

    def __init__(self, monkeypatch, pattern):
        import builtins

        self.pattern, self.real_open, self.hits = pattern, builtins.open, []
        monkeypatch.setattr(builtins, "open", self.open)

    def open(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wa+") and re.search(self.pattern, os.fspath(file)):
            self.hits.append(os.fspath(file))

            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))

            f.write = write
        return f


# The temporary file `models.config` is written to before its rename (`_io.replacing`'s name).
MODELS_CONFIG_TMP = r"\.\d+-[0-9a-f]{8}\.models\.config$"


def _leftovers(base):
    """Temporary files and folders anywhere under `base`."""
    return [path for path in _tree(base)
            if ".tmp-" in path or _io.is_temporary(os.path.basename(path))]


@pytest.mark.parametrize("failing", [
    MODELS_CONFIG_TMP,  # the version was written, models.config not updated
    r"assets\.extra/tfprobunet_config\.json$",
    r"\.tmp-1-[0-9a-f]+/saved_model\.pb$",  # the SignatureDefs' defaults written in
])
def test_an_export_that_fails_leaves_nothing_behind(exported, tmp_path, monkeypatch, failing):
    """A disk that fills during an export once left version 1 written but not in models.config,
    and an empty `models.config.tmp-<id>` for good. Wherever it fails, there is now neither a
    version nor a temporary file, models.config is as it was, and the error names the path."""
    model, _, _ = exported
    base = str(tmp_path)
    with open(os.path.join(base, export.MODELS_CONFIG), "w") as f:
        f.write('model_config_list { config { name: "other" base_path: "/models/other" '
                'model_platform: "tensorflow" } }')
    before = _tree(base)
    full = _FullDisk(monkeypatch, failing)
    with pytest.raises(OSError) as caught:
        export.export_for_serving(model, base, "pun")
    assert full.hits, "the failure was not reached"
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC, message
    assert os.path.join(base, "pun", "1") in message and "No space left" in message, message
    after = _tree(base)
    assert _leftovers(base) == [] and not os.path.exists(os.path.join(base, "pun", "1"))
    assert after[export.MODELS_CONFIG] == before[export.MODELS_CONFIG]
    monkeypatch.undo()
    assert export.export_for_serving(model, base, "pun").endswith(os.path.join("pun", "1"))
    assert _config_names(base) == ["other", "pun"] and _leftovers(base) == []


def test_models_config_is_unchanged_when_its_write_fails(tmp_path, monkeypatch, capsys):
    """`write_models_config` removes its temporary file whatever fails, and the CLI says what
    failed in one line."""
    base = str(tmp_path / "saved_models")
    export.write_models_config(base, "other")
    before = _tree(base)
    _FullDisk(monkeypatch, MODELS_CONFIG_TMP)
    with pytest.raises(OSError) as caught:
        export.write_models_config(base, "pun")
    assert os.path.join(base, export.MODELS_CONFIG) in str(caught.value), caught.value
    assert _tree(base) == before and _leftovers(base) == []
    # Already listed: nothing to write, nothing to fail.
    assert export.write_models_config(base, "other") == os.path.join(base, export.MODELS_CONFIG)
    model_path = str(tmp_path / "model.keras")
    monkeypatch.undo()
    served_model(3).save(model_path)
    _FullDisk(monkeypatch, MODELS_CONFIG_TMP)
    line = cli_error(capsys, ["export", "--model", model_path, "--base-dir", base,
                              "--name", "pun"])
    assert "No space left on device" in line and os.path.join(base, "pun", "1") in line, line
    assert {k: v for k, v in _tree(base).items() if k != "pun"} == before


def test_a_real_write_failure_during_export_is_one_clear_error(tmp_path):
    """A file-system failure inside TensorFlow's SavedModel writer (here the file size limit,
    RLIMIT_FSIZE: writes beyond it fail with EFBIG) raised `OutOfRangeError()`, with no
    message; it is one OSError naming the version's path, and nothing is left."""
    base = str(tmp_path / "saved_models")
    script = (
        "import os, resource, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from conftest import served_model\n"
        "from tfprobunet.serving import export\n"
        "model = served_model(3)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    export.export_for_serving(model, sys.argv[1], 'pun')\n"
        "except Exception as e:\n"
        "    print('RESULT', type(e).__name__, '|', e)\n")
    result = subprocess.run([sys.executable, "-c", script, base, os.path.dirname(__file__)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout + result.stderr[-2000:]
    kind, _, message = lines[0][len("RESULT "):].partition(" | ")
    assert kind == "OSError", result.stdout + result.stderr[-2000:]
    assert os.path.join(base, "pun", "1") in message, message
    assert _leftovers(base) == [] and not os.path.exists(os.path.join(base, "pun", "1"))
