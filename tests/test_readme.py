"""Every code block of README.md and docs/**/*.md runs as written, on a step budget cut to a few
steps (the only change made to them, but for `compare`, which runs two of its five models; each
cut is listed with its block and must apply), on data written here.

Python blocks are executed; fragments get the few names they use from what they follow (a tiny
model, a few batches). Shell blocks run through `cli.main` in this process. A block that needs a
server runs against the local server on free ports (the only other change: the port). A block
that needs several machines (multi-worker training, a distributed search) has its every command
parsed by the real `tfprobunet` parser and its `TF_CONFIG` read by the library's reader; the
comparisons' hours-long `bench/compare.py` runs up to `tfprobunet.compare`, whose arguments are
checked against the published `bench.json`. `test_every_block_has_a_runner` fails on a block
that no test runs."""

import glob
import inspect
import json
import os
import re
import runpy
import shlex
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import tfprobunet
from tfprobunet import cli, comparison, tuning
from tfprobunet.cli import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))]
# The budgets written in the own-data snippets, and the cut ones they run with here.
BUDGETS = [("--epochs 12 --steps-per-epoch 500", "--epochs 1 --steps-per-epoch 2"),
           ("epochs=12, steps_per_epoch=500", "epochs=1, steps_per_epoch=2")]


def _blocks():
    """`{(document, section, language, index): code}`: every fenced block, keyed by the heading
    it is under (its text without the #s) and its place among that section's blocks."""
    found = {}
    for document in DOCUMENTS:
        with open(os.path.join(ROOT, document)) as f:
            lines = f.read().split("\n")
        section, counts, i = "", {}, 0
        while i < len(lines):
            heading = re.match(r"^#{1,6} (.+)$", lines[i])
            fence = re.match(r"^```(\S*)$", lines[i])
            if heading:
                section = heading.group(1).strip()
            elif fence:
                end = lines.index("```", i + 1)
                key = (document, section, fence.group(1))
                counts[key] = counts.get(key, -1) + 1
                found[(*key, counts[key])] = "\n".join(lines[i + 1:end]) + "\n"
                i = end
            i += 1
    return found


BLOCKS = _blocks()
RUNNERS = {}


def runs(*keys):
    """Register the test below as the runner of the blocks `keys`:
    `(document, section, language[, index])`."""
    keys = [key if len(key) == 4 else (*key, 0) for key in keys]

    def register(test):
        for key in keys:
            assert key not in RUNNERS, key
            RUNNERS[key] = test.__name__
        return test
    return register


def _block(document, section, language, index=0):
    return BLOCKS[(document, section, language, index)]


def _cut(code, cuts):
    """`code` with each `(written, cut)` replaced; every written text must be there."""
    for written, cut in cuts:
        assert written in code, f"the block no longer says {written!r}: update its cut"
        code = code.replace(written, cut)
    return code


def _commands(code):
    """The commands of a shell block: continuation lines joined, comments dropped, quoted
    newlines kept inside their argument."""
    commands, pending = [], ""
    for line in code.replace("\\\n", " ").split("\n"):
        pending += line + "\n"
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:  # an open quotation: the command goes on
            continue
        pending = ""
        if argv:
            commands.append(argv)
    assert not pending.strip(), pending
    return commands


def _tfprobunet(argv):
    assert argv[0] == "tfprobunet", argv
    assert cli.main(argv[1:]) == 0, argv


def _parsed(argv, monkeypatch):
    """`argv` through the real `tfprobunet` parser and its flag checks, stopped before the
    command runs: the parsed arguments."""
    assert argv[0] == "tfprobunet", argv
    captured = []
    with monkeypatch.context() as patch:
        # (`tfprobunet.cli.main` is the function; its module is `cli/main.py`.)
        patch.setattr(sys.modules["tfprobunet.cli.main"], "_run", captured.append)
        assert cli.main([a for a in argv[1:] if a != "..."]) == 0, argv
    return captured[0]


def _exec(code, namespace=None, name="README.md"):
    namespace = {} if namespace is None else namespace
    exec(compile(code, name, "exec"), namespace)
    return namespace


def _write_folder(root, count=12, size=(90, 75)):
    """A user's folder: grey scans (one saved as RGB), 3 raters' 0/255 masks, some empty."""
    rng = np.random.default_rng(0)
    for kind in ("images", "masks"):
        os.makedirs(os.path.join(root, kind))
    yy, xx = np.mgrid[:size[0], :size[1]]
    for i in range(count):
        center = rng.uniform(20, 55, 2)
        blob = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 < 100
        image = np.clip(rng.normal(60, 20, size) + 120 * blob, 0, 255).astype(np.uint8)
        name = f"scan{i + 1:02d}"
        picture = Image.fromarray(image)
        (picture.convert("RGB") if i == 6 else picture).save(
            os.path.join(root, "images", f"{name}.png"))
        for rater in range(3):
            mask = blob if rng.random() < 0.7 else np.zeros_like(blob)
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                os.path.join(root, "masks", f"{name}_{rater}.png"))
    return image


def _flips_batches(size=32, count=4, seed=0):
    """A few batches of *flips* `(images, segmentations)`, and the same images with all their
    annotations."""
    from tfprobunet.data import synthetic

    examples = list(synthetic.flips(count, size, seed=seed).as_numpy_iterator())
    images = np.stack([image for image, _ in examples])
    annotations = np.stack([annotation for _, annotation in examples])
    batches = tfprobunet.data.training_pipeline(synthetic.flips(count, size, seed=seed),
                                                batch_size=2).take(2)
    return batches, np.asarray(images), np.asarray(annotations)


def _tiny_flips_model(latent_dim=3):
    model = tfprobunet.ProbabilisticUNet(num_classes=11, num_channels=[8, 16], convs_per_block=1,
                                         latent_dim=latent_dim, fcomb_layers=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


@pytest.fixture(scope="module")
def flips_run(tmp_path_factory):
    """`runs/flips`: a tiny finished run on *flips* at 32x32 (latent 3), what the evaluation
    page's commands read."""
    root = tmp_path_factory.mktemp("flips_run")
    tfprobunet.train(str(root / "runs" / "flips"), dataset="flips", image_size=32, epochs=1,
                     steps_per_epoch=1, batch_size=2, num_channels=[8, 16], convs_per_block=1,
                     latent_dim=3, fcomb_layers=1, verbose=0)
    return root / "runs"


def test_every_block_has_a_runner():
    assert BLOCKS, "no code blocks found"
    assert sorted(set(BLOCKS) - set(RUNNERS)) == [], "blocks that no test runs"
    assert sorted(set(RUNNERS) - set(BLOCKS)) == [], "runners of blocks that are gone"


# README.md

@runs(("README.md", "Install", "sh"), ("docs/install.md", "With pip", "sh"))
def test_the_install_commands_name_real_extras_and_the_pinned_tf_keras_minor():
    with open(os.path.join(ROOT, "setup.py")) as f:
        extras = set(re.findall(r'^\s+"(\w+)": \[', f.read().split("extras_require")[1], re.M))
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        tensorflow = re.search(r"^tensorflow==(\d+\.\d+)", f.read(), re.M).group(1)
    for key in RUNNERS:
        if RUNNERS[key] != "test_the_install_commands_name_real_extras_and_the_pinned_tf_keras_minor":
            continue
        for argv in _commands(BLOCKS[key]):
            assert argv[:2] == ["pip", "install"] and len(argv) == 3, argv
            target = argv[2]
            if target.startswith("tf-keras"):
                assert target == f"tf-keras~={tensorflow}.0", (key, target)
            else:
                match = re.fullmatch(r"\.(?:\[(\w+)\])?", target)
                assert match and (match.group(1) is None or match.group(1) in extras), target


@runs(("README.md", "The two commands", "sh"))
def test_the_two_commands_are_make_targets_and_ci_runs_the_test_command():
    commands = _commands(_block("README.md", "The two commands", "sh"))
    assert commands == [["make", "demo"], ["make", "test"]]
    for argv in commands:  # a dry run: the target exists and has a recipe
        result = subprocess.run([*argv, "-n"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "tfprobunet demo" in result.stdout or "pytest tests" in result.stdout
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert "\nmake test\n" in f.read()


@runs(("README.md", "Python", "python"))
def test_the_python_section_snippet_runs_as_written(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace = _exec(_cut(_block("README.md", "Python", "python"), BUDGETS[1:]))
    assert tuple(namespace["logits"].shape) == (4, 16, 32, 32, 11)
    assert tuple(namespace["masks"].shape) == (4, 16, 32, 32)


# docs/data.md

@runs(("docs/data.md", "Your own data", "text"), ("docs/data.md", "Your own data", "sh"))
def test_the_own_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = _write_folder("data")
    for path in _block("docs/data.md", "Your own data", "text").split():  # the layout shown
        assert path == "..." or os.path.exists(path), path
    Image.fromarray(image).save("new.png")
    commands = _commands(_cut(_block("docs/data.md", "Your own data", "sh"), BUDGETS[:1]))
    assert len(commands) == 3
    for argv in commands:
        _tfprobunet(argv)
    out = capsys.readouterr().out
    assert "model saved to runs/mine/model.keras" in out
    assert os.path.exists("runs/mine/evaluation/report.json")
    files = sorted(os.listdir("masks/new"))
    assert files == [f"sample_{i:02d}.png" for i in range(16)] + ["uncertainty.png"]
    with Image.open("masks/new/sample_00.png") as png:
        assert png.size == (75, 90)  # (width, height) of new.png


@runs(("docs/data.md", "Your own data", "python"))
def test_the_own_data_python_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_folder("data")
    _exec(_cut(_block("docs/data.md", "Your own data", "python"), BUDGETS[1:]))
    assert "(1, 16, 90, 75)" in capsys.readouterr().out


def _write_volumes(root):
    """The volumes page's layout: a NIfTI CT and a DICOM series, each with two raters' NIfTI
    label volumes, a few more NIfTI cases to split, and `new.nii.gz` to predict."""
    import nibabel

    from fixtures import write_dicom_series, write_nifti, write_volume_cases

    write_volume_cases(os.path.join(root, "data"), count=8)
    os.rename(os.path.join(root, "data", "images", "case1.nii.gz"),
              os.path.join(root, "data", "images", "case01.nii.gz"))
    for r in range(2):
        os.rename(os.path.join(root, "data", "masks", f"case1_{r}.nii.gz"),
                  os.path.join(root, "data", "masks", f"case01_{r}.nii.gz"))
    ct = nibabel.load(os.path.join(root, "data", "images", "case2.nii.gz")).get_fdata()
    write_dicom_series(os.path.join(root, "data", "images", "case02"),
                       (ct + 1024).astype(np.uint16), -1024, 1, [3, 1, 0, 2])
    os.remove(os.path.join(root, "data", "images", "case2.nii.gz"))
    for r in range(2):
        os.rename(os.path.join(root, "data", "masks", f"case2_{r}.nii.gz"),
                  os.path.join(root, "data", "masks", f"case02_{r}.nii.gz"))
    ct[:4] = -1000
    write_nifti(os.path.join(root, "new.nii.gz"), ct.astype(np.int16), np.diag([0.7, 0.7, 2.5, 1]))


@runs(("docs/data.md", "Volumes: NIfTI and DICOM", "text"),
      ("docs/data.md", "Volumes: NIfTI and DICOM", "python"),
      ("docs/data.md", "Volumes: NIfTI and DICOM", "sh"))
def test_the_volumes_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    import nibabel

    monkeypatch.chdir(tmp_path)
    _write_volumes(str(tmp_path))
    for path in _block("docs/data.md", "Volumes: NIfTI and DICOM", "text").split():
        if path.startswith("data/") and not path.endswith(")"):  # not the alternative shown
            assert glob.glob(path), path
    _exec(_cut(_block("docs/data.md", "Volumes: NIfTI and DICOM", "python"), BUDGETS[1:]))
    assert "'labelled'" in capsys.readouterr().out
    new = nibabel.load("new.nii.gz")
    for folder in ("masks/new", "masks/new_cli"):
        if folder == "masks/new_cli":
            commands = _commands(_cut(_block("docs/data.md", "Volumes: NIfTI and DICOM", "sh"),
                                      BUDGETS[:1]))
            assert len(commands) == 2
            commands[0][commands[0].index("runs/ct")] = "runs/ct_cli"
            _tfprobunet(commands[0])
            commands[1][commands[1].index("runs/ct/model.keras")] = "runs/ct_cli/model.keras"
            commands[1][commands[1].index("masks/")] = "masks_cli/"
            _tfprobunet(commands[1])
            folder = "masks_cli/new"
        written = nibabel.load(os.path.join(folder, "sample_00.nii.gz"))
        assert written.shape == new.shape
        np.testing.assert_allclose(written.affine, new.affine)
        assert os.path.exists(os.path.join(folder, "uncertainty.nii.gz"))


@runs(("docs/model.md", "`fit` on your own data", "python"))
def test_fit_on_your_own_data_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_folder("data")
    namespace = {}
    _exec(_cut(_block("docs/model.md", "`fit` on your own data", "python"),
               [("epochs=20, steps_per_epoch=500", "epochs=2, steps_per_epoch=1")]), namespace)
    history = namespace["model"].history.history
    assert len(history["val_ged"]) == 2 and all(np.isfinite(history["val_ged"]))


# docs/training.md, docs/recipes.md, docs/distributed.md

@runs(("docs/training.md", "What it prints, on a terminal and in a log file", "text"))
def test_the_log_lines_shown_are_those_train_prints_to_a_file(tmp_path, capsys):
    """Each `epoch E/N step S/M ...` line of the page has the shape of one `train` prints when
    its output is not a terminal (captured here), numbers aside."""
    tfprobunet.train(str(tmp_path / "run"), dataset="graders", image_size=16, epochs=2,
                     steps_per_epoch=5, batch_size=2, num_channels=[4, 8], convs_per_block=1,
                     latent_dim=2, callbacks=[tfprobunet.callbacks.ProgressLog(every_steps=2)])
    printed = capsys.readouterr().out.splitlines()
    number = r"\d+(?:\.\d+)?"
    shown = [line for line in _block("docs/training.md", "What it prints, on a terminal and in "
                                     "a log file", "text").splitlines()
             if line.startswith(("epoch ", "Epoch "))]
    assert len(shown) == 3
    for line in shown:
        shape = re.sub(r"\d+(?:\\\.\d+)?", lambda _: number, re.escape(line))
        shape = shape.replace(r"\ s/step", r"\ m?s/step")  # fast steps are in ms
        assert any(re.fullmatch(shape, p) for p in printed), (line, printed)


@runs(("docs/training.md", "From the command line", "sh"))
def test_the_training_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [argv] = _commands(_cut(_block("docs/training.md", "From the command line", "sh"),
                            [("--epochs 20", "--epochs 1 --steps-per-epoch 1 --num-examples 8")]))
    _tfprobunet(argv)
    assert os.path.exists("runs/flips/model.keras")


@runs(("docs/training.md", "TensorBoard", "python"))
def test_the_tensorboard_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    batches, images, annotations = _flips_batches()
    val_batches = tfprobunet.data.evaluation_pipeline(
        tfprobunet.data.synthetic.flips(2, 32, seed=1), 2)
    namespace = dict(keras=keras, tfprobunet=tfprobunet, model=_tiny_flips_model(),
                     batches=batches, val_batches=val_batches, images=images[:2],
                     annotations=annotations[:2])
    _exec(_cut(_block("docs/training.md", "TensorBoard", "python"),
               [("epochs=10", "epochs=1")]), namespace)
    assert os.listdir("logs/samples")
    assert "val_ged" in namespace["model"].history.history


@runs(("docs/recipes.md", "Presets", "sh"), ("docs/recipes.md", "Presets", "python"))
def test_the_preset_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [argv] = _commands(_cut(_block("docs/recipes.md", "Presets", "sh"), BUDGETS[:1]))
    _tfprobunet(argv)
    with open("runs/flips/train_config.json") as f:
        from_cli = json.load(f)
    os.rename("runs/flips", "runs/flips-cli")
    _exec(_cut(_block("docs/recipes.md", "Presets", "python"), BUDGETS[1:]),
          dict(tfprobunet=tfprobunet))
    with open("runs/flips/train_config.json") as f:
        from_python = json.load(f)
    assert from_python["finished_epochs"] == 1 and from_python["latent_dim"] == 8
    assert {k: v for k, v in from_cli.items() if k != "verbose"} == \
        {k: v for k, v in from_python.items() if k != "verbose"}


@runs(("docs/distributed.md", "Several machines: `--strategy multi_worker`", "sh"))
def test_the_multi_worker_commands_parse_and_their_tf_config_is_read(monkeypatch):
    """Two machines are not at hand (tests/test_multi_worker.py runs workers on loopback): the
    `TF_CONFIG` is read by the reader `train` uses and the command by the real parser."""
    from tfprobunet import _cluster

    export, train = _commands(
        _block("docs/distributed.md", "Several machines: `--strategy multi_worker`", "sh"))
    assert export[0] == "export" and export[1].startswith("TF_CONFIG=")
    cluster, task = _cluster.read_tf_config(export[1].split("=", 1)[1])
    assert len(cluster["worker"]) == 2 and task == ("worker", 0)
    args = _parsed(train, monkeypatch)
    assert args.strategy == "multi_worker" and args.batch_size == 16


# docs/tuning.md

@runs(("docs/tuning.md", "From the command line", "sh"))
def test_the_tuning_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    """Parsed, then run as the Python snippet below runs (a search costs ~40 s here;
    tests/test_tuning.py runs one from the command line)."""
    [argv] = _commands(_block("docs/tuning.md", "From the command line", "sh"))
    args = _parsed(argv, monkeypatch)
    assert (args.max_trials, args.epochs, args.steps_per_epoch) == (8, 5, 200)
    assert set(flags.given(args, flags.TUNE)) <= set(inspect.signature(tuning.tune).parameters)


@runs(("docs/tuning.md", "From Python", "python"))
def test_the_tuning_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _cut(_block("docs/tuning.md", "From Python", "python"),
                [("max_trials=8", "max_trials=1"),
                 ("epochs=5, steps_per_epoch=200", "epochs=1, steps_per_epoch=1")])
    namespace = _exec(code)
    assert len(namespace["trials"]) == 1 and namespace["model"] is not None


@runs(("docs/tuning.md", "Several machines", "sh"))
def test_the_distributed_tuning_commands_parse(monkeypatch):
    """Several machines are not at hand (tests/test_tuning.py runs a chief and workers on
    loopback): each command is read by the real parser."""
    commands = _commands(_block("docs/tuning.md", "Several machines", "sh"))
    roles = []
    for argv in commands:
        args = _parsed(argv, monkeypatch)
        assert args.oracle == "10.0.0.1:8000" and args.max_trials == 32
        roles.append("chief" if args.chief else args.worker)
    assert roles == ["chief", 0, 1]


# docs/evaluation.md

@runs(("docs/evaluation.md", "Evaluation", "python"), ("docs/evaluation.md", "Evaluation", "sh"))
def test_the_evaluation_commands_run(flips_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.symlink(flips_run, "runs")
    namespace = _exec(_cut(_block("docs/evaluation.md", "Evaluation", "python"),
                           [("image_size=32)", "image_size=32, num_examples=4)")]),
                     dict(tfprobunet=tfprobunet))
    assert set(namespace["report"]["ged"]) == {"1", "4", "8", "16"}
    assert "modes" in namespace["report"]
    [argv] = _commands(_cut(_block("docs/evaluation.md", "Evaluation", "sh"),
                            [("--out runs/flips/eval", "--out runs/flips/eval --num-examples 4")]))
    _tfprobunet(argv)
    assert "report and figures" in capsys.readouterr().out


@runs(("docs/evaluation.md", "Published protocols", "sh"))
def test_the_protocol_commands_print_the_published_tables(tmp_path, monkeypatch, capsys):
    """Both protocols end to end on files in the published formats: a LIDC crops folder (its
    test split, and a train split the model learns from) and PHiSeg's hdf5."""
    from fixtures import write_lidc_crops as _write_lidc_crops
    from fixtures import write_phiseg_hdf5 as _write_phiseg_hdf5
    from tfprobunet.data.lidc import SplitCountWarning

    monkeypatch.chdir(tmp_path)
    for split, patients in (("train", ("LIDC-IDRI-0001",)), ("test", ("LIDC-IDRI-0002",
                                                                    "LIDC-IDRI-0003"))):
        _write_lidc_crops("data/lidc_crops", split, patients=patients)  # 20x20 tiles
    _write_phiseg_hdf5("data/data_lidc.hdf5", side=16)
    with pytest.warns(SplitCountWarning, match="published"):  # 4 images, not 8843
        tfprobunet.train("runs/lidc", dataset="lidc", data_dir="data/lidc_crops", image_size=16,
                         epochs=1, steps_per_epoch=1, batch_size=2, num_channels=[8, 16],
                         convs_per_block=1, latent_dim=2, verbose=0)
    kohl, phiseg = _commands(_block("docs/evaluation.md", "Published protocols", "sh"))
    capsys.readouterr()
    with pytest.warns(SplitCountWarning):
        _tfprobunet(kohl)
    printed = capsys.readouterr().out
    assert "| Method | Split | D²_GED (16) ↓ | HM-IoU (16) ↑ |" in printed
    assert "| this model | lidc test (4 images) |" in printed
    assert "Conventions: protocol kohl: 16 samples; GED over all pairs, self-pairs included" \
        in printed
    _tfprobunet(phiseg)
    printed = capsys.readouterr().out
    assert "| Method | Split | D²_GED (100) ↓ | S_NCC (100) ↑ |" in printed
    assert "| this model | lidc-phiseg test (3 images) |" in printed
    with open("runs/lidc/phiseg/report.json") as f:
        report = json.load(f)
    assert report["sample_counts"] == [1, 16, 100] and report["protocol"]["samples"] == 100
    assert report["table"][2].split(" | ")[2].startswith(f"{report['ged']['100']['mean']:.4f}")


@runs(("docs/evaluation.md", "During training", "python"))
def test_the_validation_snippet_logs_val_ged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, _, _ = _flips_batches()
    namespace = dict(tfprobunet=tfprobunet, model=_tiny_flips_model(), train=train.repeat())
    _exec(_cut(_block("docs/evaluation.md", "During training", "python"),
               [("num_examples=100", "num_examples=4"),
                ("epochs=15, steps_per_epoch=100", "epochs=1, steps_per_epoch=1")]), namespace)
    assert "val_ged" in namespace["model"].history.history


@runs(("docs/evaluation.md", "Inside the latent space", "python"),
      ("docs/evaluation.md", "Inside the latent space", "sh"))
def test_the_latent_space_commands_run(flips_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(flips_run, "runs")
    _, images, annotations = _flips_batches(count=1)
    model = keras.saving.load_model("runs/flips/model.keras")
    _exec(_block("docs/evaluation.md", "Inside the latent space", "python"),
          dict(tfprobunet=tfprobunet, model=model, image=images[0], annotations=annotations[0]))
    assert os.path.exists("latent.png")
    os.remove("latent.png")
    Image.fromarray((images[0] * 255).astype(np.uint8)).save("scan.png")
    for argv in _commands(_block("docs/evaluation.md", "Inside the latent space", "sh")):
        _tfprobunet(argv)
        assert os.path.exists("latent.png")
        os.remove("latent.png")


# docs/baselines.md

@runs(("docs/baselines.md", "Baselines", "python"))
def test_the_baseline_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from tfprobunet.data import synthetic

    train_ds = tfprobunet.data.training_pipeline(synthetic.graders(2, 64), 2).take(1)
    namespace = _exec(_cut(_block("docs/baselines.md", "Baselines", "python"),
                           [("epochs=10", "epochs=1"),
                            ('"graders")', '"graders", num_examples=2)')]),
                      dict(keras=keras, tfprobunet=tfprobunet, train_ds=train_ds))
    assert set(namespace["report"]["ged"]) == {"1", "4", "8", "16"}


@runs(("docs/baselines.md", "Comparing them: `tfprobunet compare`", "sh"),
      ("docs/baselines.md", "Comparing them: `tfprobunet compare`", "python"))
def test_the_comparison_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    section = "Comparing them: `tfprobunet compare`"
    [argv] = _commands(_cut(_block("docs/baselines.md", section, "sh"),
                            [("--models probunet,dropout,ensemble,mheads,i2ivae",
                              "--models probunet,mheads"),
                             ("--steps 4000 --seeds 0,1", "--steps 1 --seeds 0 --test-examples 2")]))
    _tfprobunet(argv)
    with open("runs/compare/flips/results.json") as f:
        assert len(json.load(f)["models"]) == 2
    namespace = _exec(_cut(_block("docs/baselines.md", section, "python"),
                           [("runs/compare/flips", "runs/compare/flips-python"),
                            ("steps=4000, seeds=(0, 1), image_size=32)",
                             "steps=1, seeds=(0,), image_size=32, test_examples=2, "
                             "models=['probunet', 'dropout'])")]),
                      dict(tfprobunet=tfprobunet))
    assert len(namespace["results"]["models"]) == 2


# docs/successors.md

@runs(("docs/successors.md", "The successors: HPU-Net, SSN, MoSE and CCDM", "sh"))
def test_the_successors_commands_parse(monkeypatch):
    """Parsed only: training either model is run by the tests of `train` and of each model,
    a comparison by `test_the_comparison_commands_run`."""
    hpunet, ssn, compare = [_parsed(argv, monkeypatch) for argv in _commands(
        _block("docs/successors.md", "The successors: HPU-Net, SSN, MoSE and CCDM", "sh"))]
    assert (hpunet.model, ssn.model) == ("hpunet", "ssn")
    assert compare.models == ["probunet", "hpunet", "ssn"]
    assert ("hpunet", "num_channels", [16, 32, 64, 64, 64, 64]) in compare.set


# docs/development.md

@runs(("docs/development.md", "Adding a part", "toml"))
def test_the_entry_point_declaration_names_the_group_and_a_class(tmp_path):
    """The `pyproject.toml` lines declare an entry point of the group the catalog reads, whose
    value `module:Class` is what `importlib.metadata` loads (the toy model of
    tests/test_catalog.py is declared the same way and trained from a new process)."""
    import importlib.metadata
    import tomllib

    from tfprobunet import catalog

    declared = tomllib.loads(_block("docs/development.md", "Adding a part", "toml"))
    (group, points), = declared["project"]["entry-points"].items()
    assert group == catalog.ENTRY_POINT_GROUP
    (name, value), = points.items()
    point = importlib.metadata.EntryPoint(name, value, group)
    assert (point.module, point.attr) == ("my_package.toy", "ToySampler")


# docs/serving.md

@runs(("docs/serving.md", "Serving", "sh"), ("docs/serving.md", "Serving", "sh", 1),
      ("docs/serving.md", "Serving", "python"), ("docs/serving.md", "Request limits", "python"))
def test_the_serving_commands_and_clients_run_against_a_server(tmp_path, monkeypatch, capsys):
    """The export, the local server (as `tfprobunet serve` starts it, on free ports), `predict`
    through it, `curl` on its REST port and both client snippets. The TF Serving container is
    not run here: its command must mount the folder the export wrote `models.config` into."""
    from conftest import served_images, served_model
    from tfprobunet import serving

    monkeypatch.chdir(tmp_path)
    os.makedirs("runs/demo")
    served_model(3).save("runs/demo/model.keras")
    export, docker, serve, predict = _commands(_block("docs/serving.md", "Serving", "sh"))
    _tfprobunet(export)
    with open("saved_models/models.config") as f:
        assert "base_path: '/models/probunet'" in f.read().replace('"', "'")
    assert docker[:2] == ["docker", "run"] and '$PWD/saved_models:/models' in docker
    assert "--model_config_file=/models/models.config" in docker
    args = _parsed(serve, monkeypatch)
    Image.fromarray((served_images(1)[0, ..., 0] * 255).astype(np.uint8)).save("x.png")
    with serving.ModelServer(args.model_base_path, port=0, rest_port=0) as server:
        grpc, rest = f"127.0.0.1:{server.port}", f"127.0.0.1:{server.rest_port}"
        _tfprobunet([a.replace("localhost:8500", grpc) for a in predict])
        assert len(os.listdir("masks/x")) == 17
        [curl] = _commands(_block("docs/serving.md", "Serving", "sh", 1))
        body = json.dumps({"inputs": {"images": served_images(1).tolist(), "num_samples": 16,
                                      "seed": [1, 2]}})
        curl = [body if a.startswith('{"inputs"') else a.replace("localhost:8501", rest)
                for a in curl]
        assert '{"inputs": {"images": [[[[0.1], [0.2], ...]]], "num_samples": 16' in \
            _block("docs/serving.md", "Serving", "sh", 1)
        answer = json.loads(subprocess.run(curl, capture_output=True, text=True,
                                           check=True).stdout)
        assert np.asarray(answer["outputs"]["masks"]).shape == (1, 16, 16, 16)
        for section in ("Serving", "Request limits"):
            code = _block("docs/serving.md", section, "python")
            code = code.replace("localhost:8500", grpc).replace("http://localhost:8501",
                                                                 f"http://{rest}")
            namespace = _exec(code, {"images": served_images()})
            if section == "Serving":
                assert namespace["first"]["masks"].shape == (2, 16, 16, 16)
                assert namespace["more"]["masks"].shape == (2, 1000, 16, 16)
            else:
                assert namespace["masks"].shape == (2, 100, 16, 16)
                assert namespace["more"]["z"].shape == (2, 16, 2)
                assert isinstance(namespace["rest"], serving.RestClient)


# docs/results/*/README.md

def _results_keys():
    """The blocks of the comparisons' pages (a `bench.json` beside them)."""
    return [(page, section, "sh", 0) for page, section, _, _ in BLOCKS if page.startswith(
        "docs/results/") and os.path.exists(os.path.join(ROOT, os.path.dirname(page),
                                                         "bench.json"))]


@runs(("docs/results/bf16/README.md", "bfloat16 or float32: the study", "sh"))
def test_the_precision_study_table_is_what_its_script_prints(monkeypatch, capsys):
    page = os.path.join(ROOT, "docs", "results", "bf16", "README.md")
    (command,) = _commands(BLOCKS[("docs/results/bf16/README.md",
                                   "bfloat16 or float32: the study", "sh", 0)])
    assert command[:2] == ["python", "bench/precision_study.py"]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", command[1:])
    runpy.run_path(command[1], run_name="__main__")
    with open(page) as f:
        assert capsys.readouterr().out.strip() in f.read()
    with open(os.path.join(ROOT, "docs", "results", "bf16", "study.json")) as f:
        study = json.load(f)
    monkeypatch.setattr(sys, "argv", command[1:2])
    runpy.run_path(command[1], run_name="__main__")
    assert json.loads(capsys.readouterr().out) == study


@runs(*_results_keys())
@pytest.mark.parametrize("key", _results_keys(), ids=lambda key: key[0])
def test_the_results_commands_are_the_ones_that_wrote_the_json(key, monkeypatch, capsys):
    """`bench/results_table.py` prints the page's table; `bench/compare.py` (hours) runs up to
    `tfprobunet.compare`, whose arguments must be those its committed `bench.json` records."""
    page = os.path.join(ROOT, key[0])
    folder = os.path.dirname(page)
    compare, table = _commands(BLOCKS[key])
    monkeypatch.chdir(ROOT)
    with open(os.path.join(folder, "bench.json")) as f:
        bench = json.load(f)

    class Started(Exception):
        pass

    def compare_stub(out_dir, dataset, **kwargs):
        raise Started(dataset, kwargs)

    monkeypatch.setattr(tfprobunet, "compare", compare_stub)
    monkeypatch.setattr(sys, "argv", compare[1:])
    assert compare[:2] == ["python", "bench/compare.py"]
    with pytest.raises(Started) as started:
        runpy.run_path(compare[1], run_name="__main__")
    dataset, kwargs = started.value.args
    assert dataset == bench["dataset"] and kwargs["steps"] == bench["steps"]
    assert kwargs["seeds"] == bench["seeds"] and kwargs["image_size"] == bench["image_size"]
    # Comparisons published before `--models` ran the default, the paper's five.
    assert kwargs["models"] == bench.get("models", list(comparison.MODELS))
    assert kwargs["model_overrides"]["ensemble"]["num_members"] == bench["ensemble_members"]
    warmup = kwargs["model_overrides"].get("probunet", {}).get("beta_warmup_steps")
    assert warmup == bench["probunet_warmup_steps"]
    # Comparisons published before `--hpunet-levels` trained the HPU-Net on the recipe's U-Net.
    if "hpunet" in kwargs["models"]:
        recipe = tfprobunet.models.preset("cpu")["num_channels"]
        assert kwargs["model_overrides"]["hpunet"].get("num_channels", recipe) == \
            bench.get("hpunet_num_channels", recipe)
    # Comparisons published before `--mixed-precision` were trained in float32.
    assert {kwargs["model_overrides"][name]["mixed_precision"] for name in kwargs["models"]} \
        == {bench.get("mixed_precision", "float32")}
    assert compare[compare.index("--publish") + 1] == os.path.relpath(folder, ROOT)
    assert table[:2] == ["python", "bench/results_table.py"]
    monkeypatch.setattr(sys, "argv", table[1:])
    capsys.readouterr()
    runpy.run_path(table[1], run_name="__main__")
    with open(page) as f:
        assert capsys.readouterr().out.strip() in f.read()
