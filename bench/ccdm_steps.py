"""CCDM's quality against its number of denoising steps: each CCDM run that `bench/compare.py`
trained (`<out>/<dataset>/ccdm-seed<N>/model.keras`) evaluated again on the comparison's test
images with chains of fewer steps than its T, the reference's way of skipping steps
(`ccdm.denoising_steps`). Prints JSON: per step count, GED(1/16) and HM-IoU per seed with
their mean, and the evaluation's seconds (what the chains cost, about proportional to the
steps); `--figure` writes GED(16) against the steps.

    python bench/compare.py --dataset graders --steps 1500 --warmup-steps 500 \
        --models ccdm --seeds 0,1,2
    python bench/ccdm_steps.py --dataset graders --seeds 0,1,2 --steps 10,25,50,250 \
        --figure docs/results/graders/ccdm_steps.png > docs/results/graders/ccdm_steps.json

The runs are the comparison's, so the GED at T steps is the comparison's own (the same test
images and evaluation seed).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import IMAGE_SIZES  # noqa: E402
from train_step import cpu  # noqa: E402

SAMPLE_COUNTS = (1, 16)


def evaluate_steps(path, dataset, steps):
    """The comparison's evaluation of the CCDM at `path` sampled with `steps` denoising steps:
    `{"ged": {k: mean}, "hm_iou": mean, "seconds": s}`."""
    import tfprobunet
    from tfprobunet import comparison, saving

    model = saving.load_model(path)
    model.sampling_steps = steps  # `sample` checks it against T
    start = time.monotonic()
    report = tfprobunet.evaluate(model, dataset, image_size=IMAGE_SIZES[dataset],
                                 sample_counts=SAMPLE_COUNTS, seed=comparison.EVALUATION_SEED,
                                 num_figure_examples=0, verbose=0)
    return {"ged": {str(k): report["ged"][str(k)]["mean"] for k in SAMPLE_COUNTS},
            "hm_iou": report["hm_iou"]["mean"], "seconds": time.monotonic() - start,
            "time_steps": model.time_steps}


def figure(summary, path):
    """GED(16) against the denoising steps, a line per seed and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(s) for s in summary["steps"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for seed in summary["seeds"]:
        ax.plot(steps, [summary["runs"][str(seed)][str(s)]["ged"]["16"] for s in steps],
                color="0.7", marker=".", label=f"seed {seed}")
    ax.plot(steps, [summary["mean"][str(s)]["ged16"] for s in steps], color="k", marker="o",
            label="mean")
    ax.set_xscale("log")
    ax.set_xlabel("denoising steps")
    ax.set_ylabel("GED(16)")
    ax.set_title(f"CCDM on {summary['dataset']}: quality against steps")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(IMAGE_SIZES), default="graders")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", default="10,25,50,250",
                        help="denoising step counts, comma-separated (at most the runs' T)")
    parser.add_argument("--out", default="runs/compare", help="bench/compare.py's --out")
    parser.add_argument("--figure", help="write GED(16) against the steps here (PNG)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(s) for s in args.steps.split(",")]
    runs = {}
    for seed in seeds:
        path = os.path.join(args.out, args.dataset, f"ccdm-seed{seed}", "model.keras")
        if not os.path.exists(path):
            parser.error(f"no trained CCDM at {path}: run bench/compare.py --models ccdm "
                         f"--dataset {args.dataset} --seeds {args.seeds} first")
        runs[str(seed)] = {str(s): evaluate_steps(path, args.dataset, s) for s in counts}
    mean = {str(s): {"ged16": sum(runs[str(n)][str(s)]["ged"]["16"] for n in seeds) / len(seeds),
                     "ged1": sum(runs[str(n)][str(s)]["ged"]["1"] for n in seeds) / len(seeds),
                     "seconds": sum(runs[str(n)][str(s)]["seconds"] for n in seeds) / len(seeds)}
            for s in counts}
    summary = {"dataset": args.dataset, "image_size": IMAGE_SIZES[args.dataset],
               "seeds": seeds, "steps": counts, "runs": runs, "mean": mean, "cpu": cpu()}
    if args.figure:
        figure(summary, args.figure)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
