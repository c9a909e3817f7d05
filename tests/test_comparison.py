"""`tfprobunet compare` (the paper's Figs. 4 and 5) end to end on a tiny budget, its Wilcoxon
tests against an exact enumeration, its reuse of finished runs, and `train(model=...)` for the
baselines it trains."""

import itertools
import json
import os

import numpy as np
import pytest

from conftest import cli_error
from fixtures import plant_link
from tfprobunet import cli, comparison, data, training

TINY_RUN = ["--dataset", "flips", "--image-size", "16", "--num-examples", "64", "--steps", "20",
            "--steps-per-epoch", "10", "--test-examples", "12", "--seeds", "0"]


def _exact_wilcoxon_p(a, b):
    """Two-sided exact p of the signed-rank statistic, by enumerating all 2^n sign patterns
    (no ties, no zero differences)."""
    d = np.asarray(a) - np.asarray(b)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    n = len(d)
    total = n * (n + 1) / 2
    signs = np.array(list(itertools.product([0, 1], repeat=n)), bool)
    statistics = (signs * ranks).sum(axis=1)
    extreme = min(observed, total - observed)
    return min(1.0, 2 * np.mean(statistics <= extreme))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare"))
    assert cli.main(["compare", "--out", out, "--models", "probunet,mheads",
                     "--set", "mheads.num_heads=4", *TINY_RUN]) == 0
    return out


@pytest.mark.slow
def test_compare_writes_results_and_both_figures(compared, capsys):
    with open(os.path.join(compared, "results.json")) as f:
        results = json.load(f)
    assert sorted(results["figures"]) == ["ged.png", "mode_frequencies.png"]
    for figure in results["figures"]:
        with open(os.path.join(compared, figure), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert list(results["models"]) == ["probunet", "mheads"]
    assert results["sample_counts"] == [1, 4, 8, 16] and results["num_test_images"] == 12
    reports = {}
    for name in ("probunet", "mheads"):
        with open(os.path.join(compared, f"{name}-seed0", "evaluation", "report.json")) as f:
            reports[name] = json.load(f)
        with open(os.path.join(compared, f"{name}-seed0", training.CONFIG)) as f:
            config = json.load(f)
        # The same recipe and budget for both; each takes the model arguments it has.
        assert config["model"] == name and config["finished_epochs"] == 2
        assert config["batch_size"] == 16 and config["schedule"] == "wsd"
        assert config["num_channels"] == [16, 32, 64]
        # ... the recipe's latent_dim and f_comb go to the Probabilistic U-Net alone.
        assert ("latent_dim" in config) == (name == "probunet")
        for k in ("1", "4", "8", "16"):
            assert results["models"][name]["ged"][k]["mean"] == reports[name]["ged"][k]["mean"]
    assert reports["mheads"]["ged_per_image"]["16"] != reports["probunet"]["ged_per_image"]["16"]
    # The same test images and the same ground-truth noise floor for both models.
    assert reports["mheads"]["ged_noise_floor"] == reports["probunet"]["ged_noise_floor"]
    assert results["models"]["mheads"]["modes_found"]["mean"] <= 32
    # Wilcoxon signed-rank at 16 samples against an exact enumeration over 2^12 sign patterns.
    test = results["wilcoxon_16"]["mheads"]
    expected = _exact_wilcoxon_p(reports["probunet"]["ged_per_image"]["16"],
                                 reports["mheads"]["ged_per_image"]["16"])
    assert test["p"] == pytest.approx(expected, rel=1e-9)
    means = {n: results["models"][n]["ged"]["16"]["mean"] for n in results["models"]}
    assert results["reference_best"]["16"] == (means["probunet"] < means["mheads"])
    # The same test on the other per-image metrics, each against the exact enumeration.
    assert sorted(results["wilcoxon"]) == ["ece", "hm_iou", "ncc"]
    for metric, tests in results["wilcoxon"].items():
        expected = _exact_wilcoxon_p(reports["probunet"]["per_image"][metric],
                                     reports["mheads"]["per_image"][metric])
        assert tests["mheads"]["p"] == pytest.approx(expected, rel=1e-9), metric
        assert results["models"]["mheads"][metric]["seeds"] == [
            reports["mheads"][metric] if metric == "ece" else reports["mheads"][metric]["mean"]]


@pytest.mark.slow
def test_a_second_compare_reuses_the_finished_runs(compared):
    model_file = os.path.join(compared, "mheads-seed0", "model.keras")
    before = os.stat(model_file).st_mtime_ns
    with open(os.path.join(compared, "results.json")) as f:
        first = json.load(f)
    again = comparison.compare(compared, "flips", models=["probunet", "mheads"], steps=20,
                            steps_per_epoch=10, image_size=16, num_examples=64,
                            test_examples=12, model_overrides={"mheads": {"num_heads": 4}},
                            verbose=0)
    assert os.stat(model_file).st_mtime_ns == before  # not trained again
    assert again["models"] == first["models"]
    # A finished run of other settings is not reused as if it were the run asked for.
    with pytest.raises(ValueError, match="num_heads: 4 before, 8 now"):
        comparison.compare(compared, "flips", models=["mheads"], steps=20, steps_per_epoch=10,
                           image_size=16, num_examples=64, test_examples=12,
                           model_overrides={"mheads": {"num_heads": 8}}, verbose=0)


def test_bad_arguments_are_refused_with_what_would_work(tmp_path):
    with pytest.raises(ValueError, match="must be one of probunet, dropout"):
        comparison.compare(str(tmp_path), models=["probunet", "unet"])
    with pytest.raises(ValueError, match="num_heads"):
        comparison.compare(str(tmp_path), models=["mheads"],
                        model_overrides={"mheads": {"num_members": 4}})
    with pytest.raises(ValueError, match="multiple of `steps_per_epoch`"):
        comparison.compare(str(tmp_path), steps=30, steps_per_epoch=20)
    with pytest.raises(ValueError, match="test_data"):
        comparison.compare(str(tmp_path), dataset=data.load("flips", "train", image_size=16,
                                                         num_examples=4))
    with pytest.raises(SystemExit):
        cli.main(["compare", "--out", str(tmp_path), "--models", "probunet,resnet"])
    assert os.listdir(tmp_path) == []


def test_recipe_settings_give_each_model_the_arguments_it_takes():
    probunet = comparison.recipe_settings("cpu", "probunet")
    vae = comparison.recipe_settings("cpu", "i2ivae")
    heads = comparison.recipe_settings("cpu", "mheads", num_heads=4)
    for settings in (probunet, vae, heads):
        assert settings["learning_rate"] == 1e-3 and settings["num_channels"] == [16, 32, 64]
    assert probunet["fcomb_channels"] == 64 and probunet["beta_warmup_steps"] == 2000
    assert vae["latent_dim"] == 8 and "fcomb_channels" not in vae
    assert heads["num_heads"] == 4 and "latent_dim" not in heads


@pytest.mark.slow
def test_train_trains_a_baseline_and_refuses_to_resume_it_as_another(tmp_path):
    workdir = str(tmp_path / "run")
    args = dict(dataset="graders", epochs=1, steps_per_epoch=2, batch_size=2, image_size=16,
                num_examples=8, num_channels=[8, 16], convs_per_block=1, verbose=0)
    model, history = training.train(workdir, model="ensemble", num_members=2, **args)
    assert type(model).__name__ == "UNetEnsemble" and model.num_members == 2
    assert history.epoch == [0]
    with open(os.path.join(workdir, training.CONFIG)) as f:
        config = json.load(f)
    assert config["model"] == "ensemble" and config["num_members"] == 2
    with pytest.raises(training.WorkdirError, match="model: 'ensemble' before, 'dropout' now"):
        training.train(workdir, model="dropout", **{**args, "epochs": 2})
    with pytest.raises(ValueError, match="takes no argument 'latent_dim'"):
        training.train(str(tmp_path / "other"), model="dropout", latent_dim=3, **args)
    assert not os.path.exists(tmp_path / "other" / training.CONFIG)


@pytest.mark.parametrize("name", ["results.json", "ged.png", "mode_frequencies.png",
                                  "probunet-seed0", "probunet-seed0/evaluation"])
def test_a_symlink_where_compare_writes_is_refused_before_anything_trains(tmp_path, capsys,
                                                                          name):
    """`compare` wrote its figures through symbolic links (and replaced a `results.json` link
    without a word), and a run folder that is a link got the run."""
    out = tmp_path / "out"
    link, target, snapshot = plant_link(str(out), name, str(tmp_path / "outside"))
    before = snapshot()
    line = cli_error(capsys, ["compare", "--out", str(out), "--models", "probunet", *TINY_RUN])
    assert f"{link} is a symbolic link (to {target})" in line, line
    assert snapshot() == before and os.path.islink(link)
    assert sorted(os.listdir(out)) == [name.split("/")[0]]  # nothing was trained
