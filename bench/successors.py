"""The Probabilistic U-Net's successors against it, at the LIDC configuration (128x128x1, each
model's defaults, which are its reference's LIDC ones): training examples/s, the cost of 16
samples over one forward pass, and the serving milliseconds per extra sample. Prints JSON.

    python bench/successors.py [--models probunet,hpunet,ssn,mose,ccdm] [--rounds 3]

- `examples_per_s`: `fit` on random images and masks (batch 8, float32), each model in a fresh
  process per round, the models interleaved round by round (the machine's slow and fast phases
  hit them all alike); medians and ranges over every timed run, and each model's ratio to the
  Probabilistic U-Net's median.
- `sample16_over_forward`: `sample(images, 16)` over `sample(images, 1)` (batch 1): what 16
  segmentations cost in forward passes.
- `serving_ms_per_extra_sample`: on the exported SavedModel, run as TF Serving runs it
  (`serving.Servable`): `(t(1 + n) - t(1)) / n` of the cheapest path to more samples of one
  image, `sample` after `features` where the model has them (f_comb per sample for the
  Probabilistic U-Net, a matrix product for the SSN, the decoder for MoSE), else
  `serving_default`.

A diffusion model's sample runs its network once per denoising step (CCDM: T = 250 at its
reference's defaults): its `sample(16)` is timed `--sample-repeats` // 3 times, its serving
with at most 4 extra samples, exported with `max_sample_pixels` raised by its steps.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import run_times  # noqa: E402
from train_step import cpu  # noqa: E402

MODELS = ("probunet", "hpunet", "ssn")  # --models probunet,hpunet,ssn,mose,ccdm for all
# At most this many extra samples of a diffusion model per serving request (each costs T
# U-Net passes).
DIFFUSION_EXTRA = 4


def _median(values):
    import numpy as np

    return float(np.median(values))


def _train_rates(model, images, labels, batch, steps, repeats):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(images[:batch * 2], labels[:batch * 2], batch_size=batch, epochs=1, verbose=0)
    times = run_times(lambda: model.fit(images, labels, batch_size=batch, epochs=1, verbose=0,
                                        shuffle=False), repeats, warmup=False)
    return [batch * steps / t for t in times]


def _sample_ratio(model, image, repeats):
    import tensorflow as tf

    one = tf.function(lambda x: model.sample(x, 1, seed=0))
    sixteen = tf.function(lambda x: model.sample(x, 16, seed=0))
    t1 = _median(run_times(lambda: one(image).numpy(), repeats))
    t16 = _median(run_times(lambda: sixteen(image).numpy(), repeats))
    return {"forward_ms": 1e3 * t1, "sample16_ms": 1e3 * t16, "ratio": t16 / t1}


def _serving_per_sample(model, name, image, extra, repeats):
    import numpy as np

    from tfprobunet import serving
    from tfprobunet.defaults import MAX_SAMPLE_PIXELS

    passes = getattr(model, "passes_per_sample", 1)
    if passes > 1:
        extra = min(extra, DIFFUSION_EXTRA)
    with tempfile.TemporaryDirectory() as base:
        path = serving.export_for_serving(model, base, name,
                                          max_sample_pixels=MAX_SAMPLE_PIXELS * passes)
        servable = serving.Servable(name, int(os.path.basename(path)), path)
        seed = np.array([1, 2], np.int32)
        if "features" in servable.signatures:
            features = servable.run("features", {"images": image})
            signature, inputs = "sample", dict(features)
        else:
            signature, inputs = "serving_default", {"images": image}

        def run(count):
            return servable.run(signature, {**inputs, "num_samples": np.int32(count),
                                            "seed": seed})

        t1 = _median(run_times(lambda: run(1), repeats))
        t_more = _median(run_times(lambda: run(1 + extra), repeats))
        servable.close()
    return {"signature": signature, "one_ms": 1e3 * t1, f"{1 + extra}_ms": 1e3 * t_more,
            "ms_per_extra_sample": 1e3 * (t_more - t1) / extra}


def measure(name, args):
    """One model in this process."""
    import keras
    import numpy as np

    import tfprobunet

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((args.batch * args.steps, args.size, args.size, 1), dtype=np.float32)
    labels = rng.integers(0, 2, (args.batch * args.steps, args.size, args.size)).astype(np.int32)
    model = tfprobunet.models.get(name)(num_classes=2)  # its defaults: the reference's LIDC ones
    rates = _train_rates(model, images, labels, args.batch, args.steps, args.repeats)
    result = {"examples_per_s_runs": rates,
              "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables))}
    if args.samples:
        image = images[:1]
        repeats = args.sample_repeats
        if getattr(model, "passes_per_sample", 1) > 1:
            repeats = max(1, repeats // 3)
        result["sample16"] = _sample_ratio(model, image, repeats)
        result["serving"] = _serving_per_sample(model, name, image, args.extra_samples,
                                                repeats)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _run(name, args, samples):
    command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--size", str(args.size), "--batch",
               str(args.batch), "--sample-repeats", str(args.sample_repeats),
               "--extra-samples", str(args.extra_samples)] + (["--samples"] if samples else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per process")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sample-repeats", type=int, default=9)
    parser.add_argument("--extra-samples", type=int, default=64)
    parser.add_argument("--samples", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    names = args.models.split(",")
    rates = {n: [] for n in names}
    sampling, serving, sizes = {}, {}, {}
    for round_ in range(args.rounds):
        for name in names:
            result = _run(name, args, samples=round_ == 0)
            rates[name].extend(result["examples_per_s_runs"])
            sizes[name] = result["parameters"]
            if round_ == 0:
                sampling[name], serving[name] = result["sample16"], result["serving"]
    medians = {n: _median(r) for n, r in rates.items()}
    reference = medians.get("probunet")
    print(json.dumps({
        "config": {"image": [args.size, args.size, 1], "batch": args.batch,
                   "steps_per_run": args.steps, "runs_per_process": args.repeats,
                   "rounds": args.rounds, "models": "each model's defaults (its reference's "
                                                   "LIDC configuration)"},
        "cpu": cpu(),
        "parameters": sizes,
        "examples_per_s": {n: {"median": round(medians[n], 3), "worst": round(min(r), 3),
                               "best": round(max(r), 3), "runs": [round(v, 3) for v in r]}
                           for n, r in rates.items()},
        "over_probunet": ({n: round(medians[n] / reference, 3) for n in names}
                          if reference else None),
        "sample16_over_forward": sampling,
        "serving_ms_per_extra_sample": serving,
    }, indent=2))


if __name__ == "__main__":
    main()
