"""What a file can make the library spend: npz and `.keras` archives are sized from their
headers before anything is inflated or built, images from their headers before they are
decoded, and a model with non-finite weights is refused. Memory is measured in a child process
(its own peak RSS, `ru_maxrss`), against the same child refusing a missing path: importing
the library alone takes 0.85 to 1.15 GiB there, by machine."""

import json
import os
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import cli_error, tiny_model
from tfprobunet import prediction, saving
from tfprobunet.data import arrays
from tfprobunet.defaults import MAX_SAMPLES

GIB = 2**30
# A child whose peak stays within this of the baseline's (the same child refusing a path that
# does not exist: importing the library, 0.85 to 1.15 GiB by machine) refused the file before
# inflating, building or decoding it; the bombs below would add gigabytes.
PEAK_MARGIN = GIB // 4
# The child's address space is capped, so that code which does inflate a bomb fails there
# instead of taking the machine's memory.
CHILD = f"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({8 * GIB}, {8 * GIB}))
start = time.monotonic()
import tfprobunet
from tfprobunet import cli
try:
    if sys.argv[1] == "npz":
        try:
            tfprobunet.data.load("npz", "train", data_dir=sys.argv[2])
            code = 0
        except Exception as error:
            print(f"error: {{type(error).__name__}}: " + " ".join(str(error).split()),
                  file=sys.stderr)
            code = 2
    else:
        code = cli.main(sys.argv[2:])
except SystemExit as exit_:
    code = exit_.code
import keras
# A symbolic call initialises the variables Keras holds deferred: none may be left behind.
keras.layers.Dense(2)(keras.Input((3,)))
print(f"peak_kib={{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}} "
      f"seconds={{time.monotonic() - start:.1f}}", file=sys.stderr)
sys.exit(code)
"""


def measured(*argv):
    """Run `CHILD argv` (`cli ARGS...` or `npz DIR`): (exit status, the `error:` lines of its
    stderr, its peak RSS in bytes, seconds)."""
    result = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    found = re.search(r"peak_kib=(\d+) seconds=([\d.]+)", result.stderr)
    assert found, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    return result.returncode, errors, int(found[1]) * 1024, float(found[2])


@pytest.fixture(scope="module")
def baseline_peak(tmp_path_factory):
    """The peak RSS of the child refusing a model path that does not exist."""
    missing = str(tmp_path_factory.mktemp("baseline") / "missing.keras")
    status, errors, peak, _ = measured("cli", "inspect", "--model", missing, "--image", missing)
    assert status == 2 and len(errors) == 1, errors
    return peak


def deflated_member(archive, name, size, head=b"", fill=b"\0"):
    """Write `head` then `fill` up to `size` bytes into `archive` as a deflated member, 16 MiB
    at a time."""
    chunk = fill * (2**24 // len(fill))
    with archive.open(zip_info(name), "w", force_zip64=True) as f:
        f.write(head)
        left = size - len(head)
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)


def zip_info(name):
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


# ---------------------------------------------------------------------- npz files
def npy_header(shape, dtype):
    """The bytes `numpy.save` writes before the data of an array of `shape` and `dtype`."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(shape)})
    return buffer.getvalue()


def write_npz(path, members):
    """An npz of `{name: (shape, dtype, data bytes)}`: each header followed by `data`, deflated,
    whatever the header says."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (shape, dtype, data) in members.items():
            archive.writestr(zip_info(f"{name}.npy"), npy_header(shape, dtype) + data)


@pytest.mark.slow
def test_a_compressed_npz_bomb_is_refused_before_it_is_inflated(tmp_path, baseline_peak):
    # 600 MB of zero pixels (and as many labels) deflated to about 1 MB: 2.4 GB once read as
    # float32, beyond the default limit of 2 GiB.
    shape = (600, 1000, 1000, 1)
    path = tmp_path / "train.npz"
    with zipfile.ZipFile(path, "w") as archive:
        header = npy_header(shape, np.uint8)
        deflated_member(archive, "images.npy", len(header) + int(np.prod(shape)), head=header)
        header = npy_header(shape[:-1], np.uint8)
        deflated_member(archive, "annotations.npy", len(header) + int(np.prod(shape)),
                        head=header)
    assert os.path.getsize(path) < 5e6

    status, errors, peak, seconds = measured("npz", str(tmp_path))
    assert status == 2 and len(errors) == 1, errors
    message = errors[0]
    for part in ("ValueError", str(path), "`images`", "(600, 1000, 1000, 1)", "uint8",
                 "600,000,000 bytes", "2,400,000,000", arrays.MAX_ARRAY_BYTES_VARIABLE,
                 "max_bytes"):
        assert part in message, (part, message)
    assert peak < baseline_peak + PEAK_MARGIN, (peak / GIB, baseline_peak / GIB)


@pytest.mark.parametrize("declared, stored", [((2**20, 2**20), 64), ((4,), 64)],
                         ids=["header-claims-more", "member-holds-more"])
def test_an_npz_array_whose_header_disagrees_with_its_size_is_refused(tmp_path, declared,
                                                                      stored):
    write_npz(tmp_path / "train.npz",
              {"images": (declared, "<f4", bytes(stored)),
               "annotations": ((1, 4, 4), "<i4", bytes(64))})
    with pytest.raises(ValueError, match=r"`images` declares .*disagree") as error:
        arrays.npz_split(str(tmp_path), "train")
    assert str(tmp_path / "train.npz") in str(error.value)


def test_the_npz_limit_names_itself_and_is_raised_by_argument_or_environment(tmp_path,
                                                                            monkeypatch):
    images = np.zeros((4, 16, 16, 1), np.float32)  # 4096 bytes
    np.savez(tmp_path / "train.npz", images=images, annotations=np.zeros((4, 16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"4,096 bytes.*above the limit of 1,000 bytes"):
        arrays.npz_split(str(tmp_path), "train", max_bytes=1000)
    monkeypatch.setenv(arrays.MAX_ARRAY_BYTES_VARIABLE, "1000")
    with pytest.raises(ValueError, match=arrays.MAX_ARRAY_BYTES_VARIABLE):
        arrays.npz_split(str(tmp_path), "train")
    assert arrays.npz_split(str(tmp_path), "train", max_bytes=10**6)[1] == 2
    monkeypatch.setenv(arrays.MAX_ARRAY_BYTES_VARIABLE, "1e6")
    assert arrays.npz_split(str(tmp_path), "train")[1] == 2
    monkeypatch.setenv(arrays.MAX_ARRAY_BYTES_VARIABLE, "lots")
    with pytest.raises(ValueError, match=r"a number of bytes.*'lots'"):
        arrays.npz_split(str(tmp_path), "train")


def test_an_npz_member_that_is_not_an_array_is_refused_unread(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 1)), annotations=np.zeros((2, 8, 8), np.uint8))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "not an array")
    with pytest.raises(ValueError, match=r"notes\.txt is not a \.npy array"):
        arrays.npz_split(str(tmp_path), "train")


# ---------------------------------------------------------------------- .keras files
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny built model's `.keras` file and its members, {name: bytes}."""
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    path = str(tmp_path_factory.mktemp("saved") / "model.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        return path, {name: archive.read(name) for name in archive.namelist()}


def rezipped(path, members, bomb=None):
    """`members` written to `path` (stored, as Keras writes them), but `bomb` (name, size)
    deflated: its bytes followed by zeros (spaces for a JSON file) up to `size`."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if bomb and name == bomb[0]:
                deflated_member(archive, name, bomb[1], head=data,
                                fill=b" " if name.endswith(".json") else b"\0")
            else:
                archive.writestr(name, data)
    return str(path)


EVALUATE = ["evaluate", "--dataset", "graders", "--image-size", "16", "--num-examples", "2",
            "--samples", "1", "--batch-size", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("member, size", [("config.json", GIB), ("model.weights.h5", 2 * GIB)])
def test_a_keras_zip_bomb_is_refused_before_it_is_inflated(saved, tmp_path, member, size,
                                                            baseline_peak):
    path = rezipped(tmp_path / "bomb.keras", saved[1], (member, size))
    assert os.path.getsize(path) < size / 100
    status, errors, peak, seconds = measured("cli", *EVALUATE, "--model", path,
                                             "--out", str(tmp_path / "out"))
    assert status == 2 and len(errors) == 1, errors
    assert errors[0].startswith("tfprobunet: error: ") and path in errors[0], errors
    assert member in errors[0] and "decompression bomb" in errors[0], errors
    assert peak < baseline_peak + PEAK_MARGIN, (peak / GIB, baseline_peak / GIB)


@pytest.mark.slow
@pytest.mark.compat  # sizing weights relies on how Keras defers variables
def test_a_config_asking_for_huge_weights_is_refused_before_building(saved, tmp_path,
                                                                    baseline_peak):
    config = json.loads(saved[1]["config.json"])
    # Within the size limits (4096 channels a level), 3x3 kernels of 0.56 and 1.1 GiB.
    config["config"]["num_channels"] = [4096, 4096]
    path = rezipped(tmp_path / "huge.keras",
                    {**saved[1], "config.json": json.dumps(config).encode()})
    assert os.path.getsize(path) < 1e6
    status, errors, peak, seconds = measured("cli", *EVALUATE, "--model", path,
                                             "--out", str(tmp_path / "out"))
    assert status == 2 and len(errors) == 1, errors
    for part in (path, "ProbabilisticUNet", "GiB", "(3, 3, 8192, 4096)", "max_bytes",
                 saving.MAX_MODEL_BYTES_VARIABLE):
        assert part in errors[0], (part, errors[0])
    assert peak < baseline_peak + PEAK_MARGIN, (peak / GIB, baseline_peak / GIB)


@pytest.mark.compat
def test_load_model_loads_what_was_saved_within_the_limit_it_names(saved, monkeypatch):
    path, _ = saved
    loaded = saving.load_model(path)
    reference = keras.saving.load_model(path)
    assert len(loaded.weights) == len(reference.weights) > 0
    for a, b in zip(loaded.weights, reference.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(saving.ModelFileError, match=r"above the limit of .*max_bytes"):
        saving.load_model(path, max_bytes=1000)
    monkeypatch.setenv(saving.MAX_MODEL_BYTES_VARIABLE, "1000")
    with pytest.raises(saving.ModelFileError, match=saving.MAX_MODEL_BYTES_VARIABLE):
        saving.load_model(path)
    assert len(saving.load_model(path, max_bytes=GIB).weights) == len(loaded.weights)


# What a config asks Keras to build: a 128 KB file with convs_per_block=1000 built for 9 min 23 s
# (2.7 GB) before `load_model` refused it in a 290 KB line (its weights, sized by building the
# model, were small: the cost is in the number of layers, not their bytes).
@pytest.mark.parametrize("argument, value", [
    ("convs_per_block", 1000), ("convs_per_block", 100000), ("num_channels", [8] * 100000),
    ("num_channels", [2**20, 8]), ("latent_dim", 10**6), ("ged_samples", 10**9),
    ("fcomb_layers", 5000)])
def test_a_config_asking_for_a_costly_model_is_refused_before_building(saved, tmp_path,
                                                                       argument, value):
    config = json.loads(saved[1]["config.json"])
    config["config"][argument] = value
    path = rezipped(tmp_path / "costly.keras",
                    {**saved[1], "config.json": json.dumps(config).encode()})
    with pytest.raises(saving.ModelFileError) as error:
        saving.load_model(path)
    line = str(error.value)
    assert len(line) < len(path) + 300 and "\n" not in line, line[:1000]
    for part in (path, "'ProbabilisticUNet' beyond the size limits; nothing was built",
                 f"`{argument}` must be"):
        assert part in line, (part, line)
    # The constructor refuses the same values in the same words.
    with pytest.raises(ValueError) as direct:
        tiny_model(2, **{argument: value})
    assert line.endswith(str(direct.value)), (line, str(direct.value))


def test_a_nested_layer_asking_for_many_convolutions_is_refused_before_building(tmp_path):
    from tfprobunet import layers

    model = keras.Sequential([keras.Input((16, 16, 1)), layers.Container(4, 2, name="block")])
    path = tmp_path / "sequential.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    (block,) = [layer for layer in config["config"]["layers"]
                if layer["class_name"] == "Container"]
    block["config"]["num_convs"] = 100000
    path = rezipped(tmp_path / "costly.keras",
                    {**members, "config.json": json.dumps(config).encode()})
    with pytest.raises(saving.ModelFileError, match=r"'Container' beyond the size limits.*"
                                                    r"`num_convs` must be an integer from 1 to 32"):
        saving.load_model(path)


@pytest.mark.parametrize("name, arguments", [
    ("probunet", {}), ("dropout", {}), ("ensemble", dict(num_members=2)),
    ("mheads", dict(num_heads=2)), ("i2ivae", {}), ("ssn", {}),
    ("hpunet", dict(num_channels=[8, 8, 8]))])
def test_sample_refuses_probabilities_beyond_the_byte_limit(name, arguments):
    """255 classes at 64 x 64: one sample of one image takes 64 * 64 * 255 * 4 = 4,177,920
    bytes, so `MAX_SAMPLE_BYTES` (2**29) holds 128 of them; 140 (557.8 MiB) are refused before
    anything is drawn, by every model."""
    from tfprobunet import models

    model = models.get(name)(num_classes=255, **arguments)
    images = np.zeros((1, 64, 64, 1), np.float32)
    with pytest.raises(ValueError) as error:
        model.sample(images, 140)
    for part in ("140 samples of 1 image(s) of 64 x 64 pixels with 255 classes", "557.8 MiB",
                 "above the limit of 512.0 MiB", "at most 128 samples of 1 image(s)"):
        assert part in str(error.value), (part, str(error.value))
    assert not model.built


def test_sample_in_a_graph_is_left_to_the_graph():
    """Inside a `tf.function` (the serving signatures, `fit`'s validation) the check cannot
    know the batch: tracing is not refused."""
    import tensorflow as tf

    model = tiny_model(255)
    model.build((None, 64, 64, 1))
    tf.function(lambda images: model.sample(images, 140)).get_concrete_function(
        tf.TensorSpec((None, 64, 64, 1), tf.float32))


def test_predict_files_refuses_samples_whose_classes_exceed_the_byte_limit(tmp_path):
    """128 x 128 with 255 classes: 128 * 128 * 255 * 4 = 16,711,680 bytes a sample, 32 of them
    in 2**29; 40 (637.5 MiB) pass every pixel limit but this one."""
    model = tiny_model(255)
    model.build((None, 16, 16, 1))
    path = write_png(tmp_path / "scan.png", 128, 128)
    with pytest.raises(ValueError) as error:
        prediction.predict_files(model, [path], 40, str(tmp_path / "out"))
    for part in (path, "40 samples of 1 image(s) of 128 x 128 pixels with 255 classes",
                 "637.5 MiB", "at most 32 samples", "max_sample_bytes", "It was not decoded"):
        assert part in str(error.value), (part, str(error.value))
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_predict_of_a_255_class_model_is_refused_before_sampling(tmp_path, baseline_peak):
    """The finding: 1000 samples of 128 x 128 for a 255-class model (15.6 GiB of
    probabilities) peaked at 6.3 GB in local predict."""
    model = tiny_model(255)
    model.build((None, 16, 16, 1))
    saved_path = str(tmp_path / "k255.keras")
    model.save(saved_path)
    path = write_png(tmp_path / "scan.png", 128, 128)
    status, errors, peak, _ = measured("cli", "predict", "--model", saved_path, "--image", path,
                                       "-n", "1000", "--out", str(tmp_path / "out"))
    assert status == 2 and len(errors) == 1, errors
    assert "15.6 GiB" in errors[0] and "at most 32 samples" in errors[0], errors
    assert peak < baseline_peak + PEAK_MARGIN, (peak / GIB, baseline_peak / GIB)


@pytest.mark.slow
def test_a_training_batch_beyond_memory_is_refused_with_an_estimate(tmp_path, baseline_peak):
    """The finding: `train --batch-size 100000` aborted with std::bad_alloc (exit 134)."""
    status, errors, peak, _ = measured("cli", "train", "--workdir", str(tmp_path / "run"),
                                       "--batch-size", "100000", "--epochs", "1",
                                       "--steps-per-epoch", "1")
    assert status == 2 and len(errors) == 1, errors
    for part in ("batch_size=100000 of 64 x 64 images needs at least", "per example",
                 "use batch_size <= ", "TFPROBUNET_MAX_TRAIN_BYTES"):
        assert part in errors[0], (part, errors[0])
    assert not os.path.exists(tmp_path / "run")
    assert peak < baseline_peak + PEAK_MARGIN, (peak / GIB, baseline_peak / GIB)


# Peak RSS of a child after one training step on a batch of each size, after a first step of 2
# (which builds and traces): the slope between them is what an example costs.
STEP_PEAKS = """
import sys
import numpy as np, keras, tfprobunet
model = tfprobunet.ProbabilisticUNet()
model.compile(optimizer=keras.optimizers.Adam(1e-4))
def peak():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
for b in (2, *map(int, sys.argv[1:])):
    model.train_on_batch(np.zeros((b, 64, 64, 1), "float32"), np.zeros((b, 64, 64), "int32"))
    print(peak())
"""


def flags_defaults(model):
    """The constructor defaults of the model named `model`."""
    from tfprobunet import models
    from tfprobunet.cli import flags

    return flags.inspected_defaults(models.get(model))


@pytest.mark.slow
def test_the_batch_estimate_stays_below_what_a_training_step_takes():
    """`checks.training_bytes` is a lower bound: the default model at 64 x 64 (measured 18.3
    MiB an example when written, estimated 13.1)."""
    from tfprobunet.models import checks

    result = subprocess.run([sys.executable, "-c", STEP_PEAKS, "8", "24"], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    _, small, large = map(int, result.stdout.split()[-3:])
    per_example = (large - small) / 16
    estimate = checks.training_bytes(flags_defaults("probunet"), 64, 64)
    assert estimate == 11 * 64 * 64 * (59 * 3 + 32 * 4)  # U-Net channels, f_comb's
    assert estimate < per_example, (estimate / 2**20, per_example / 2**20)


def test_evaluate_refuses_a_model_with_nan_weights(tmp_path, capsys):
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, np.float32))
    path = str(tmp_path / "diverged.keras")
    model.save(path)
    line = cli_error(capsys, [*EVALUATE, "--model", path, "--out", str(tmp_path / "out")])
    assert path in line and "non-finite" in line and model.weights[0].path in line, line
    assert not os.path.exists(tmp_path / "out" / "report.json")


def _broken(tmp_path, saved, kind):
    path = tmp_path / "model.keras"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        with open(saved[0], "rb") as f:
            path.write_bytes(f.read()[:5000])
    elif kind == "not-a-zip":
        path.write_text("hello")
    elif kind == "directory":
        path.mkdir()
    return str(path)


@pytest.mark.parametrize("kind, says", [
    ("empty", "is empty (0 bytes)"), ("truncated", "not a complete .keras archive"),
    ("not-a-zip", "not a complete .keras archive"), ("directory", "is a directory"),
    ("missing", "No model at")])
def test_a_model_path_that_is_no_keras_file_gets_one_line_saying_what_it_is(tmp_path, capsys,
                                                                             saved, kind, says):
    path = _broken(tmp_path, saved, kind)
    line = cli_error(capsys, [*EVALUATE, "--model", path, "--out", str(tmp_path / "out")])
    assert says in line and path in line and "File not found" not in line, line


@pytest.mark.parametrize("command", ["inspect", "predict"])
def test_inspect_and_predict_say_the_same_of_a_truncated_model(tmp_path, capsys, saved, command):
    path = _broken(tmp_path, saved, "truncated")
    image = str(tmp_path / "scan.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    out = str(tmp_path / ("out.png" if command == "inspect" else "out"))
    line = cli_error(capsys, [command, "--model", path, "--image", image, "--out", out])
    assert "not a complete .keras archive" in line and path in line, line


# ---------------------------------------------------------------------- images to predict
def write_png(path, height, width):
    Image.fromarray(np.zeros((height, width), np.uint8)).save(path)
    return str(path)


@pytest.mark.slow
def test_predict_refuses_a_huge_png_from_its_header(saved, tmp_path, baseline_peak):
    path = write_png(tmp_path / "huge.png", 10000, 10000)
    assert os.path.getsize(path) < 1e6
    status, errors, peak, seconds = measured("cli", "predict", "--model", saved[0], "--image",
                                             path, "--out", str(tmp_path / "out"))
    assert status == 2 and len(errors) == 1, errors
    for part in (path, "10000 x 10000", "max_pixels"):
        assert part in errors[0], (part, errors[0])
    assert peak < baseline_peak + PEAK_MARGIN, (peak / GIB, baseline_peak / GIB)


@pytest.mark.parametrize("size, num_samples, limit", [
    ((1100, 1000), 2, "max_pixels"), ((300, 300), 200, "max_sample_pixels"),
    ((16, 16), MAX_SAMPLES + 1, "max_samples")])
def test_predict_files_refuses_requests_beyond_the_default_limits(saved, tmp_path, size,
                                                                 num_samples, limit):
    path = write_png(tmp_path / "scan.png", *size)
    with pytest.raises(ValueError, match=limit) as error:
        prediction.predict_files(saved[0], [path], num_samples, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    if limit != "max_samples":
        assert path in str(error.value)


def test_predict_through_a_server_checks_the_image_before_any_request(tmp_path):
    from tfprobunet import serving

    path = write_png(tmp_path / "scan.png", 1100, 1000)
    # Nothing listens there: a request would fail UNAVAILABLE.
    with serving.GrpcClient("127.0.0.1:1", "probunet", retries=0, timeout=5) as client:
        with pytest.raises(ValueError, match=r"1100 x 1000 pixels .*max_pixels"):
            prediction.predict_files(client, [path], 2, str(tmp_path / "out"))


@pytest.mark.parametrize("side", [1, 17])
def test_predict_pads_images_smaller_than_the_unet_divides(saved, tmp_path, capsys, side):
    # A pin, not a fix: pad_to_multiple already pads a 1x1 or 17x17 image up to the U-Net's
    # multiple, and the masks are cropped back to the image's size.
    path = write_png(tmp_path / "tiny.png", side, side)
    from tfprobunet import cli

    assert cli.main(["predict", "--model", saved[0], "--image", path, "-n", "2",
                     "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "tiny" / "sample_00.png") as mask:
        assert mask.size == (side, side)


@pytest.mark.parametrize("kind, says", [
    ("directory", r"is a directory: pass image files"), ("missing", "No image at"),
    ("text", "not an image")])
def test_predict_says_what_an_image_path_is_instead(saved, tmp_path, capsys, kind, says):
    path = tmp_path / "scans"
    if kind == "directory":
        path.mkdir()
        write_png(path / "a.png", 16, 16)
    elif kind == "text":
        path.write_text("hello")
    line = cli_error(capsys, ["predict", "--model", saved[0], "--image", str(path),
                              "--out", str(tmp_path / "out")])
    assert says in line and str(path) in line, line
