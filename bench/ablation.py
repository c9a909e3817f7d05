"""The calibration ablation on *flips*: which training recipe makes the samples' mode
frequencies match the annotators' at CPU budgets. Each configuration is trained for a fixed
number of steps (so every machine reproduces it) on several seeds and evaluated on held-out
images; one JSON line per run is appended to `--out`, and a summary (median and range over
seeds) is printed as JSON.

    python bench/ablation.py --configs baseline,cosine --seeds 0,1,2 [--steps 6000]

`--stop-after N` trains the first N steps of the `--steps` schedule only: a screen of which
recipes get every mode decoded early (a flip still missing at 2000 of 6000 steps stayed missing
in every full run measured), at a third of the cost.
"""

import argparse
import json

import quality

SMALL = dict(num_channels=[16, 32, 64], convs_per_block=2)
# name: train() arguments on top of SMALL (the `cpu` preset's model) and --batch-size.
CONFIGS = {
    "baseline": dict(learning_rate=1e-3),
    "beta10": dict(learning_rate=1e-3, beta=10.0),
    "cosine": dict(learning_rate=1e-3, schedule="cosine"),
    "beta10-cosine": dict(learning_rate=1e-3, beta=10.0, schedule="cosine"),
    "beta30-cosine": dict(learning_rate=1e-3, beta=30.0, schedule="cosine"),
    "beta3-cosine": dict(learning_rate=1e-3, beta=3.0, schedule="cosine"),
    "piecewise": dict(learning_rate=1e-3, schedule="piecewise"),
    "wsd": dict(learning_rate=1e-3, schedule="wsd"),
    "wsd-latent8": dict(learning_rate=1e-3, schedule="wsd", latent_dim=8),
    "geco": dict(learning_rate=1e-3, geco_target=0.01),
    "geco-cosine": dict(learning_rate=1e-3, geco_target=0.01, schedule="cosine"),
    "geco.03-cosine": dict(learning_rate=1e-3, geco_target=0.03, schedule="cosine"),
}
# Variations of the old `cpu` preset (the first is today's).
WARMUP = dict(learning_rate=1e-3, schedule="wsd", latent_dim=8, beta_warmup_steps=2000)
CONFIGS.update({
    "wsd-latent8-warmup": WARMUP,
    "wsd-latent8-warmup-fcomb64": {**WARMUP, "fcomb_channels": 64},
    "wsd-latent8-warmup-fcomb1": {**WARMUP, "fcomb_layers": 1},
    "wsd-latent16-warmup": {**WARMUP, "latent_dim": 16},
    "wsd-latent8-warmup4000": {**WARMUP, "beta_warmup_steps": 4000},
    "wsd3e-4-latent8-warmup": {**WARMUP, "learning_rate": 3e-4},
    "wsd-latent8-warmup-nowd": {**WARMUP, "weight_decay": 0.0},
})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="baseline")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--stop-after", type=int, help="stop after this many steps")
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--out", default="ablation.jsonl")
    args = parser.parse_args()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:  # seeds outermost: configs interleave
        for name in args.configs.split(","):
            recipe = {**SMALL, **CONFIGS[name], "batch_size": args.batch_size}
            row = quality.run("flips", recipe, args.steps, seed, args.eval_examples, name,
                              stop_after=args.stop_after)
            rows.append(row)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(json.dumps({name: quality.summary([r for r in rows if r["recipe"] == name])
                      for name in args.configs.split(",")}, indent=2))


if __name__ == "__main__":
    main()
