"""`evaluate()` and `tfprobunet evaluate`: the report against independent recomputation, and
the samples figure's rows on their images' own extent."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfprobunet import cli, data, evaluation, metrics, plots
from conftest import cli_error, tiny_model


def _recompute(model, source, batch_size, counts, seed=0):
    """GED per count and mode frequencies, sample by sample with the public metrics."""
    ged = {k: [] for k in counts}
    assignments = []
    for step, (images, annotations) in enumerate(source.dataset.batch(batch_size)):
        masks = np.argmax(model.sample(images, max(counts), seed=tf.constant([seed, step])), -1)
        for k in counts:
            ged[k].extend(metrics.generalized_energy_distance(
                masks[:, :k], annotations.numpy(), source.num_classes, source.classes,
                annotation_weights=source.annotation_weights))
        assignments.append(metrics.assign_modes(masks, annotations.numpy(), source.num_classes,
                                                source.classes))
    return ged, np.concatenate(assignments)


def test_report_matches_the_metrics_on_the_same_samples(tmp_path):
    source = data.load("flips", "test", image_size=16, num_examples=6)
    model = tiny_model(source.num_classes)
    report = evaluation.evaluate(model, source, out_dir=str(tmp_path), sample_counts=(1, 4),
                                 batch_size=4, verbose=0)
    ged, assignments = _recompute(model, source, 4, (1, 4))
    for k in (1, 4):
        assert report["ged"][str(k)]["mean"] == pytest.approx(np.mean(ged[k]), abs=1e-9)
        assert report["ged"][str(k)]["sem"] == pytest.approx(
            np.std(ged[k], ddof=1) / np.sqrt(6), abs=1e-9)
    modes = report["modes"]
    expected = metrics.mode_frequencies(assignments, 32)
    np.testing.assert_allclose(modes["frequencies"], expected)
    assert modes["modes_found"] == np.count_nonzero(expected) and modes["num_modes"] == 32
    np.testing.assert_allclose(modes["true_probabilities"], data.flip_modes()[1])
    assert report["num_images"] == 6 and "presence" not in report
    with open(tmp_path / "report.json") as f:
        assert json.load(f) == report
    assert report["figures"] == ["ged.png", "mode_frequencies.png", "samples.png"]
    for name in report["figures"]:
        with Image.open(tmp_path / name) as png:
            assert png.size[0] > 100 and png.size[1] > 100


def test_sample_grid_shows_a_padded_example_on_its_own_extent(tmp_path):
    # A 10 x 12 image padded to 16 x 16, as `from_folders` pads mixed sizes: its masks are 255
    # below and right; the model samples the padding as anything (here all of class 1).
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 1))
    padded = np.full((2, 16, 16), 255)
    padded[:, :10, :12] = 0
    padded[0, 2:5, 2:5] = 1
    samples = rng.integers(0, 2, (3, 16, 16))
    samples[:, 10:], samples[:, :, 12:] = 1, 1
    entropy = rng.random((16, 16)) * np.log(2)
    whole = np.zeros((2, 16, 16), int)  # an image of the full size: nothing to crop
    assert (plots.labelled_extent(padded), plots.labelled_extent(whole)) == ((10, 12), (16, 16))
    assert plots.labelled_extent(np.full((1, 4, 5), 255)) == (4, 5)  # all ignored: all shown

    rows = [(image, padded, samples, entropy), (image, whole, samples, entropy)]
    figure = plots.sample_grid(rows, 2, str(tmp_path / "samples.png"))
    tiles = [axes.images[0] for axes in figure.axes if axes.images]
    assert len(tiles) == 2 * 7  # image, 2 annotations, 3 samples, entropy
    expected = [image[..., 0], *padded, *samples, entropy]
    for tile, full in zip(tiles[:7], expected):
        np.testing.assert_array_equal(np.ma.getdata(tile.get_array()), full[:10, :12])
    for tile, full in zip(tiles[7:], [image[..., 0], *whole, *samples, entropy]):
        np.testing.assert_array_equal(np.ma.getdata(tile.get_array()), full)
    # The entropy on one scale for every row, 0 to log K nats, labelled by a colour bar.
    assert {tiles[6].get_clim(), tiles[13].get_clim()} == {(0.0, np.log(2))}
    assert any(axes.get_ylabel() == "entropy (nats)" for axes in figure.axes)


def _one_hot(masks, source):
    """Label maps as the class probabilities of samples that are certain of them."""
    return np.eye(source.num_classes)[masks]


def test_noise_floor_has_its_closed_form_mean():
    # k draws from the truth against the truth: E[GED_k] = E[d(Y, Y')] / k (self-pairs count).
    source = data.load("flips", "test", image_size=16, num_examples=40)
    annotations = np.stack([a for _, a in source.dataset.as_numpy_iterator()])
    accumulator = evaluation._Accumulator(source, (1, 4), seed=0)
    for _ in range(5):
        accumulator.add(annotations[:, :4], annotations, _one_hot(annotations[:, :4], source))
    w = source.annotation_weights
    pairwise = metrics.pairwise_distances(annotations, annotations, source.num_classes,
                                          source.classes)
    expected = np.einsum("bij,i,j->b", pairwise, w, w).mean()
    for k in (1, 4):
        floor = np.array(accumulator.noise_floor[k])
        sem = floor.std(ddof=1) / np.sqrt(len(floor))
        assert abs(floor.mean() - expected / k) < 4 * sem + 1e-3


def test_unbiased_ged_of_draws_from_the_truth_is_zero_on_average():
    """`ged_unbiased` (self-pairs left out) of k draws from the known flips distribution has
    mean 0 at every k, where `ged` has mean E[d(Y, Y')] / k; k = 1 has no pair to leave out."""
    source = data.load("flips", "test", image_size=16, num_examples=40)
    annotations = np.stack([a for _, a in source.dataset.as_numpy_iterator()])
    w = np.asarray(source.annotation_weights)
    rng = np.random.default_rng(0)
    accumulator = evaluation._Accumulator(source, (1, 4), seed=0)
    for _ in range(10):
        draws = rng.choice(len(w), size=(len(annotations), 4), p=w)
        masks = np.take_along_axis(annotations, draws[:, :, None, None], axis=1)
        accumulator.add(masks, annotations, _one_hot(masks, source))
    report = accumulator.report()
    assert set(report["ged_unbiased"]) == {"4"}
    unbiased = np.array(accumulator.ged_unbiased[4])
    assert abs(unbiased.mean()) < 4 * unbiased.std(ddof=1) / np.sqrt(len(unbiased))
    assert report["ged"]["4"]["mean"] > report["ged_unbiased"]["4"]["mean"] + 0.05


def test_graders_report_lesion_presence_disagreement():
    source = data.load("graders", "test", image_size=16, num_examples=8)
    report = evaluation.evaluate(tiny_model(2), source, sample_counts=(2,), verbose=0)
    annotations = np.stack([a for _, a in source.dataset.as_numpy_iterator()])
    empty = ~annotations.any(axis=(2, 3))
    presence = report["presence"]
    assert presence["graders_disagree"] == np.mean(empty.any(1) & ~empty.all(1))
    assert presence["empty_fraction_graders"] == empty.mean()
    assert 0 <= presence["samples_disagree"] <= 1 and "modes" not in report


def test_evaluate_rejects_a_model_for_other_classes():
    with pytest.raises(ValueError, match="predicts 2 classes but the dataset has 11"):
        evaluation.evaluate(tiny_model(2), "flips", image_size=16, num_examples=2, verbose=0)


@pytest.mark.compat
def test_evaluate_command_reads_the_training_run(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    cli.main(["train", "--dataset", "graders", "--workdir", workdir, "--epochs", "1",
              "--steps-per-epoch", "2", "--batch-size", "2", "--image-size", "16",
              "--num-examples", "4", "--num-channels", "8,16", "--convs-per-block", "1",
              "--latent-dim", "2"])
    out = str(tmp_path / "eval")
    assert cli.main(["evaluate", "--model", os.path.join(workdir, "model.keras"), "--out", out,
                     "--num-examples", "3", "--samples", "1,2"]) == 0
    printed = capsys.readouterr().out
    assert "report and figures" in printed and "presence" in printed
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    # The dataset and image size came from the run's train_config.json.
    assert report["dataset"] == "graders" and report["num_images"] == 3
    assert report["sample_counts"] == [1, 2]
    assert os.path.exists(os.path.join(out, "samples.png"))
    # Every command's --dataset offers the library's datasets.
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    for command in ("train", "evaluate", "inspect", "tune", "compare"):
        (action,) = [a for a in commands[command]._actions if a.dest == "dataset"]
        assert tuple(action.choices) == tuple(data.DATASETS), command


# ---------------------------------------------------------------------- bounds and whole writes
def test_evaluate_refuses_more_samples_than_a_batch_may_hold(tmp_path, capsys):
    """8 images of 128 x 128 with 2 classes, 1000 samples each: 8 * 1000 * 128 * 128 * 2 * 4 =
    1,048,576,000 bytes (1000.0 MiB) of probabilities per batch, above 2**29: 512 samples of 8
    images fit, or 4 images of 1000 samples. Refused before any sample is drawn (the finding:
    `--samples 1000000` still ran after 15 minutes)."""
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    path = str(tmp_path / "model.keras")
    model.save(path)
    out = tmp_path / "out"
    line = cli_error(capsys, ["evaluate", "--model", path, "--out", str(out), "--dataset",
                              "graders", "--image-size", "128", "--num-examples", "8",
                              "--batch-size", "8", "--samples", "1,1000"])
    for part in ("1000 samples of 8 image(s) of 128 x 128 pixels with 2 classes",
                 "1000.0 MiB", "above the limit of 512.0 MiB",
                 "at most 512 samples of 8 image(s) or at most 4 image(s) of 1000 samples",
                 "--samples", "--batch-size"):
        assert part in line, (part, line)
    assert not os.path.exists(out)


def test_evaluate_draws_at_most_max_samples():
    with pytest.raises(ValueError, match=r"`sample_counts` must be a finite integer >= 1 and "
                                         r"<= 1000 .*Received: sample_counts=1001"):
        evaluation.evaluate(tiny_model(2), "graders", image_size=16, num_examples=2,
                            sample_counts=(1, 1001), verbose=0)


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_a_full_disk_while_writing_leaves_the_previous_report_and_figures(tmp_path,
                                                                          monkeypatch):
    """A second evaluation whose second figure hits a full disk (a fault injected into
    matplotlib's writer) leaves the first evaluation's files, byte for byte; run again, it
    replaces them all."""
    import errno

    import matplotlib.figure

    source = data.load("flips", "test", image_size=16, num_examples=4)
    model = tiny_model(source.num_classes)
    out = tmp_path / "out"
    settings = dict(out_dir=str(out), sample_counts=(1, 4), batch_size=4, verbose=0)
    evaluation.evaluate(model, source, seed=0, **settings)
    before = _files(out)
    assert sorted(before) == ["ged.png", "mode_frequencies.png", "report.json", "samples.png"]

    save, written = matplotlib.figure.Figure.savefig, []

    def full_disk(figure, path, *args, **kwargs):
        written.append(os.path.basename(path))
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        evaluation.evaluate(model, source, seed=1, **settings)
    assert written == ["ged.png", "mode_frequencies.png"]
    assert _files(out) == before
    monkeypatch.undo()
    report = evaluation.evaluate(model, source, seed=1, **settings)
    after = _files(out)
    assert sorted(after) == sorted(before) and after["ged.png"] != before["ged.png"]
    assert json.loads(after["report.json"]) == report


def test_figures_the_new_report_does_not_list_are_removed_and_other_files_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"figures": ["old.png", "../outside.png"]}))
    for name in ("old.png", "notes.txt"):
        (out / name).write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    report = evaluation.evaluate(tiny_model(2), "graders", out_dir=str(out), image_size=16,
                                 num_examples=2, sample_counts=(1, 2), batch_size=2, verbose=0)
    assert sorted(os.listdir(out)) == sorted([*report["figures"], "notes.txt", "report.json"])
    assert os.path.exists(tmp_path / "outside.png")


def test_staging_folders_that_killed_evaluations_left_are_removed_by_the_next(tmp_path):
    """`evaluate` stages its outputs in `--out/.evaluation-*` and removes that folder when done;
    a SIGKILL left it there for ever. The next evaluation into the folder removes what killed
    ones left, and keeps what a live one holds and any symbolic link."""
    from tfprobunet import _io

    out = tmp_path / "out"
    out.mkdir()
    left = {".evaluation-k3x9q1_a": ["ged.png"],  # from before the lock files: a folder alone
            ".evaluation-999999-0f0f": ["ged.png", "report.json"], ".evaluation-999999-0f0f.lock":
            None, ".evaluation-7-cafe.lock": None}  # a lock file alone: killed after the rmtree
    for name, files in left.items():
        if files is None:
            (out / name).write_text("")
            continue
        (out / name).mkdir()
        for file in files:
            (out / name / file).write_bytes(b"partial")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / ".evaluation-link")
    live = out / ".evaluation-1-live"
    with _io.locked(f"{live}.lock"):  # another evaluation, still writing (`_io.claimed`)
        live.mkdir()
        report = evaluation.evaluate(tiny_model(2), "graders", out_dir=str(out), image_size=16,
                                     num_examples=2, sample_counts=(1, 2), batch_size=2,
                                     num_figure_examples=0, verbose=0)
        assert sorted(os.listdir(out)) == sorted([
            *report["figures"], "report.json", ".evaluation-link", live.name, f"{live.name}.lock"])
    assert json.loads((out / "report.json").read_text()) == report
    assert all(os.path.getsize(out / name) > 0 for name in report["figures"])
    assert os.listdir(tmp_path / "elsewhere") == []
