"""The paper's comparison study (section 4, Figs. 4 and 5) on the synthetic benchmarks:
`tfprobunet.compare` trains the Probabilistic U-Net and the four baselines with the same recipe
(`cpu`), step budget, data and seeds, evaluates them on the same test images and samples, and
this prints the summary as JSON: GED(1/4/8/16) per model, mode r and modes found (*flips*), the
Wilcoxon signed-rank p-values at 16 samples (and which side is lower), whether the
Probabilistic U-Net has the lowest GED at each sample count, the GED of the 16 most probable
modes as a fixed set (*flips*), the wall time and the CPU.

The configuration below is the one the results pages (docs/results/) quote: the U-Net Ensemble with 4
members (16 U-Nets cost 16 steps each; at 4, 8 and 16 samples its samples cycle the 4 members).

    python bench/compare.py --seeds 0,1,2 --publish docs/results/flips
    python bench/compare.py --dataset graders --steps 1500 --warmup-steps 500 --seeds 0,1,2 \
        --publish docs/results/graders

MoSE (`--models ...,mose`) is trained with its reference's settings for the kind of data
(`MOSE_SETTINGS`: its Cityscapes experiment's on *flips*, its LIDC experiment's on *graders*).

The HPU-Net's U-Net continues the recipe's channels down to a 1x1 level (`--hpunet-levels
global`, the default), so that its coarsest latent is global as its reference's;
`--hpunet-levels recipe` trains it on the recipe's 3 levels, as the comparisons published
before the option did.

`minutes` and `cpu` in the JSON are this invocation's: a run reused from an earlier one (on
another machine, say) adds nothing to `minutes`; each run's own training time is its report's
`train_seconds`.

`--publish DIR` copies what the results pages quote into DIR: `results.json` and the figures of
`compare`, this script's JSON (`bench.json`), and each run's record and evaluation report
(`runs/<model>-seed<seed>/`), with which `compare` reuses the run instead of training it again
(copy `runs/` back under `--out`'s dataset folder to add seeds to a published comparison).
`--publish DIR --finished-runs-only` copies only the records and reports of the runs finished
so far, without training: a comparison stopped midway continues on another machine or day
from them.
"""

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import tfprobunet  # noqa: E402
from tfprobunet import comparison, data, metrics  # noqa: E402
from tfprobunet.models import hpunet  # noqa: E402
from train_step import cpu  # noqa: E402

IMAGE_SIZES = {"flips": 32, "graders": 64}
# MoSE as its reference trains it on each kind of data: *flips* (the Cityscapes protocol, 11
# classes) with its Cityscapes experiment's settings, *graders* (binary, 4 graders, as LIDC)
# with its LIDC ones (`experiments/cityscapes_proposed.py`, `lidc_proposed.py`). The LIDC
# settings' IoU cost does not train on flips' 11 classes within the step budget.
MOSE_SETTINGS = {
    "flips": dict(cost="ce", num_experts=35, latent_dim=5, samples_per_expert=1, gamma=1 / 32),
    "graders": dict(cost="iou", num_experts=4, latent_dim=1, samples_per_expert=4, gamma=0.5),
}


def most_probable_modes_ged(image_size, num_images, sample_counts):
    """GED(k) of a fixed set, the k most probable modes of each *flips* test image, as a
    reference: what a model with k fixed, well-spread outputs can score (compare the noise
    floor, k independent draws from the truth). Returns `(ged, ged_unbiased)`, the second
    without self-pairs (k >= 2)."""
    source = data.load("flips", "test", None, image_size, num_images, comparison.EVALUATION_SEED)
    weights = np.asarray(source.annotation_weights)
    order = np.argsort(weights)[::-1]
    args = dict(num_classes=source.num_classes, classes=source.classes)
    values = {(k, self_pairs): [] for self_pairs in (True, False) for k in sample_counts
              if self_pairs or k > 1}  # without self-pairs one sample has no pair
    for _, annotations in source.dataset.batch(50):
        annotations = annotations.numpy()
        truth = metrics.pairwise_distances(annotations, annotations, **args)
        for (k, self_pairs), ged in values.items():
            # The fixed set is the k most probable annotations: its distances are truth's.
            cross = truth[:, order[:k]]
            ged.extend(metrics.energy_distance(
                cross, cross[:, :, order[:k]], truth,
                annotation_weights=source.annotation_weights, self_pairs=self_pairs))
    return tuple({str(k): round(float(np.mean(ged)), 4)
                  for (k, self_pairs), ged in values.items() if self_pairs == wanted}
                 for wanted in (True, False))


HPUNET_LEVELS = ("global", "recipe")


def hpunet_channels(levels, image_size):
    """The HPU-Net's U-Net in the comparisons. `"global"`: the recipe's channels continued
    until the coarsest level is 1x1, so that its coarsest latent is global as the reference's
    is (`hpunet.global_latent_channels`); `"recipe"`: the recipe's 3 levels, which leave its
    coarsest latent at a quarter of the image side (8x8 on *flips*), as the comparisons
    published before this option trained it."""
    channels = tfprobunet.models.preset("cpu")["num_channels"]
    return hpunet.global_latent_channels(channels, image_size) if levels == "global" \
        else channels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(IMAGE_SIZES), default="flips")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--models", default=",".join(comparison.MODELS),
                        help="comma-separated names of tfprobunet.models.MODELS (default: the "
                             "paper's five; the successors hpunet and ssn join with "
                             "probunet,...,hpunet,ssn)")
    parser.add_argument("--members", type=int, default=4, help="U-Net Ensemble members")
    parser.add_argument("--hpunet-levels", choices=HPUNET_LEVELS, default="global",
                        help="the HPU-Net's U-Net: global (default), the recipe's channels "
                             "continued to a 1x1 level, so that its coarsest latent is global "
                             "as its reference's; recipe, the recipe's 3 levels (no global "
                             "latent)")
    parser.add_argument("--warmup-steps", type=int,
                        help="the Probabilistic U-Net's KL warm-up (default: the recipe's, 2000 "
                             "steps, for runs of about 6000)")
    parser.add_argument("--mixed-precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "auto"],
                        help="every model's precision (default: float32, which every machine "
                             "reproduces; auto: bfloat16 on CPUs with AMX or AVX-512-BF16; "
                             "docs/results/bf16 is the study)")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--publish", help="copy the results, figures and run reports here")
    parser.add_argument("--finished-runs-only", action="store_true",
                        help="with --publish: copy the runs finished so far, train nothing")
    args = parser.parse_args()
    if args.finished_runs_only:
        if not args.publish:
            parser.error("--finished-runs-only needs --publish DIR")
        print(json.dumps(publish_runs(os.path.join(args.out, args.dataset), args.publish)))
        return
    start = time.monotonic()
    overrides = {"ensemble": {"num_members": args.members},
                 "hpunet": {"num_channels": hpunet_channels(args.hpunet_levels,
                                                            IMAGE_SIZES[args.dataset])}}
    if args.warmup_steps is not None:
        overrides["probunet"] = {"beta_warmup_steps": args.warmup_steps}
    overrides["mose"] = dict(MOSE_SETTINGS[args.dataset])
    for name in args.models.split(","):
        overrides.setdefault(name, {})["mixed_precision"] = args.mixed_precision
    results = tfprobunet.compare(
        os.path.join(args.out, args.dataset), args.dataset, models=args.models.split(","),
        steps=args.steps,
        seeds=[int(s) for s in args.seeds.split(",")], image_size=IMAGE_SIZES[args.dataset],
        model_overrides=overrides, verbose=2)
    counts = [str(k) for k in results["sample_counts"]]
    summary = {
        "dataset": args.dataset, "image_size": IMAGE_SIZES[args.dataset], "steps": args.steps,
        "seeds": results["seeds"], "recipe": results["recipe"],
        "models": list(results["models"]), "ensemble_members": args.members,
        "hpunet_num_channels": overrides["hpunet"]["num_channels"],
        "mixed_precision": args.mixed_precision,
        "probunet_warmup_steps": args.warmup_steps,
        "test_images": results["num_test_images"],
        "noise_floor": {c: round(results["ged_noise_floor"][c], 4) for c in counts},
        "ged": {name: {c: round(entry["ged"][c]["mean"], 4) for c in counts}
                for name, entry in results["models"].items()},
        "ged_unbiased": {name: {c: round(v["mean"], 4) for c, v in entry["ged_unbiased"].items()}
                         for name, entry in results["models"].items()},
        "pearson_r": {name: round(entry["pearson_r"]["mean"], 3)
                      for name, entry in results["models"].items() if "pearson_r" in entry},
        "modes_found": {name: entry["modes_found"]["mean"]
                        for name, entry in results["models"].items() if "modes_found" in entry},
        "train_seconds": {name: entry["train_seconds"]["mean"]
                          for name, entry in results["models"].items()},
        "wilcoxon_16": {name: {"p": test["p"], "probunet_lower": test["reference_lower"]}
                        for name, test in results.get(f"wilcoxon_{counts[-1]}", {}).items()},
        "probunet_best": results.get("reference_best"),
        "minutes": round((time.monotonic() - start) / 60, 1),
        **(dict(zip(("most_probable_modes_ged", "most_probable_modes_ged_unbiased"),
                    most_probable_modes_ged(IMAGE_SIZES["flips"], results["num_test_images"],
                                            results["sample_counts"])))
           if args.dataset == "flips" else {}),
        "cpu": cpu(),
    }
    print(json.dumps(summary, indent=2))
    if args.publish:
        publish(os.path.join(args.out, args.dataset), args.publish, results, summary)


def publish(out_dir, target, results, summary):
    """Copy `compare`'s results and figures, this summary and each run's record and report."""
    os.makedirs(target, exist_ok=True)
    for name in ["results.json", *results["figures"]]:
        shutil.copy(os.path.join(out_dir, os.path.basename(name)), target)
    with open(os.path.join(target, "bench.json"), "w") as f:
        json.dump(summary, f, indent=2)
    publish_runs(out_dir, target)


def publish_runs(out_dir, target):
    """Copy the record and evaluation report of every finished run in `out_dir` to
    `target/runs/`; returns the runs copied."""
    report = os.path.join("evaluation", "report.json")
    runs = sorted(run for run in os.listdir(out_dir)
                  if os.path.exists(os.path.join(out_dir, run, report)))
    for run in runs:
        os.makedirs(os.path.join(target, "runs", run, "evaluation"), exist_ok=True)
        for path in (comparison.RUN_RECORD, report):
            shutil.copy(os.path.join(out_dir, run, path), os.path.join(target, "runs", run, path))
    return runs


if __name__ == "__main__":
    main()
