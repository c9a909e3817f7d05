"""Does the input pipeline keep up with training? Examples/s of the data pipelines alone, against
the examples/s a training step consumes, on a synthetic dataset of LIDC's size, in one run.

- `lidc`: the LIDC crops as published (180x180 PNG tiles with 4 grader masks, in
  `<split>/images/<patient>/<slice>.png` and `<split>/gt/<patient>/<slice>_l0..3.png`), read by
  `tfprobunet.data.lidc.crops(..., random_crop=True)` (PNG decode, a random 128x128 window) and
  `training_pipeline` (the annotation draw, shuffle, batch 8): decoded on every pass
  (`cache=False`, the default) and from the decoded tiles kept in memory (`cache=True`, timed
  after the pass that fills the cache).
- `folder`: the same files as an own-data folder (`images/<name>.png`, `masks/<name>_<g>.png`),
  read by `tfprobunet.data.from_folders` (every file decoded into memory up front, padded to
  192x192; the 80 % train split) and `training_pipeline`: its load seconds and its batches.
- `step`: `ProbabilisticUNet.train_step`, the default configuration, batch 8 at 128x128, in
  float32 and mixed_bfloat16 (bench/train_step.py's measurement).

Each measurement runs in a fresh process (peak RSS is that process's, i.e. the memory the
pipeline costs on top of TensorFlow's), interleaved over `--rounds`. Prints JSON: every run,
medians, each pipeline's rate over the float32 and bfloat16 step rates (the goal is >= 3), and the
CPU's flags. The synthetic folder (about 45k PNGs, 0.9 GB with these images) is written once
to `--data-dir` and reused.

    python bench/pipeline.py [--images 9000] [--rounds 3] [--data-dir runs/pipeline-data]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from train_step import _run as step_run, cpu  # noqa: E402

GRADERS = 4
TILE = 180
SLICES_PER_PATIENT = 17  # the published training split: 8843 images of 530 patients
BATCH = 8
PIPELINES = ("lidc", "lidc-cache", "folder")


def _tile(rng):
    """A CT-like 180x180 uint8 tile (smooth structure plus noise) and 4 grader masks: discs
    of different radii around one centre, some graders seeing nothing."""
    coarse = rng.random((12, 12))
    smooth = np.kron(coarse, np.ones((15, 15)))
    image = np.clip(smooth * 180 + rng.normal(0, 12, (TILE, TILE)) + 30, 0, 255).astype(np.uint8)
    y, x = np.mgrid[:TILE, :TILE]
    centre = rng.integers(60, 120, 2)
    distance = np.hypot(y - centre[0], x - centre[1])
    masks = [((distance < r) * 255).astype(np.uint8) if r > 0 else np.zeros((TILE, TILE),
                                                                            np.uint8)
             for r in rng.choice([0, 0, 6, 9, 12, 15], GRADERS)]
    return image, masks


def make_data(root, count, seed=0):
    """Write `count` tiles as LIDC crops under `root/lidc/train` and link the same files as an
    own-data folder under `root/folder`; reused when `root` is complete."""
    from PIL import Image

    done = os.path.join(root, f"complete-{count}")
    if os.path.exists(done):
        return
    rng = np.random.default_rng(seed)
    for i in range(count):
        patient, name = f"LIDC-IDRI-{i // SLICES_PER_PATIENT:04d}", f"z-{i % SLICES_PER_PATIENT}"
        image, masks = _tile(rng)
        for folder, array, suffix in [("images", image, ""),
                                      *[("gt", m, f"_l{g}") for g, m in enumerate(masks)]]:
            path = os.path.join(root, "lidc", "train", folder, patient, name + suffix + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(array).save(path)
            own = os.path.join(root, "folder", "masks" if suffix else "images",
                               f"{patient}_{name}{suffix.replace('_l', '_')}.png")
            os.makedirs(os.path.dirname(own), exist_ok=True)
            if not os.path.exists(own):
                os.link(path, own)
    open(done, "w").close()


def measure(pipeline, root, batches, count):
    """One pipeline in this process: setup seconds (file checks, or the folder's decoding)
    and examples/s over `batches` batches after 4 untimed ones (`lidc-cache`: after the pass
    over the `count` tiles that fills the cache, timed on its own)."""
    import warnings

    from tfprobunet import data
    from tfprobunet.data import lidc, pipeline as pipeline_lib

    warnings.simplefilter("ignore", lidc.SplitCountWarning)
    start = time.perf_counter()
    if pipeline == "folder":
        source = data.from_folders(os.path.join(root, "folder", "images"),
                                   os.path.join(root, "folder", "masks"), "train")
        dataset, weights = source.dataset, source.annotation_weights
    else:
        dataset = lidc.crops(os.path.join(root, "lidc"), "train", 128, random_crop=True,
                             cache=pipeline == "lidc-cache")
        weights = None
    setup = time.perf_counter() - start
    stream = iter(pipeline_lib.training_pipeline(dataset, BATCH, weights, seed=0,
                                                 num_classes=2))
    filled = None
    if pipeline == "lidc-cache":  # one pass fills the cache
        start = time.perf_counter()
        for _ in range(-(-count // BATCH)):
            next(stream)
        filled = time.perf_counter() - start
    for _ in range(4):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches * BATCH / (time.perf_counter() - start)
    return {"examples_per_s": rate, "setup_seconds": setup, "cache_fill_seconds": filled,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure_in_process(pipeline, args):
    command = [sys.executable, __file__, "--one", pipeline, "--data-dir", args.data_dir,
               "--batches", str(args.batches), "--images", str(args.images)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=9000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=200, help="timed batches of 8")
    parser.add_argument("--data-dir", default="runs/pipeline-data")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--one", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.data_dir, args.batches, args.images)))
        return
    start = time.perf_counter()
    make_data(args.data_dir, args.images)
    written = time.perf_counter() - start
    pipelines = args.pipelines.split(",")
    runs = {name: [] for name in (*pipelines, "step_float32", "step_mixed_bfloat16")}
    step_args = argparse.Namespace(steps=8, repeats=2, size=128, batch=BATCH)
    for _ in range(args.rounds):
        for name in pipelines:
            runs[name].append(_measure_in_process(name, args))
        for policy in ("float32", "mixed_bfloat16"):
            rates, memory = step_run(policy, step_args)
            runs[f"step_{policy}"].append({"examples_per_s": float(np.median(rates)),
                                           "peak_rss_mib": memory})

    def median(name, key="examples_per_s"):
        values = [r[key] for r in runs[name] if r.get(key) is not None]
        return round(float(np.median(values)), 2) if values else None

    def spread(name):
        rates = [r["examples_per_s"] for r in runs[name]]
        return [round(min(rates), 2), round(max(rates), 2)]

    summary = {name: {"examples_per_s_median": median(name),
                      "examples_per_s_range": spread(name),
                      "peak_rss_mib_median": median(name, "peak_rss_mib"),
                      **({"setup_seconds_median": median(name, "setup_seconds")}
                         if name in pipelines else {}),
                      **({"cache_fill_seconds_median": median(name, "cache_fill_seconds")}
                         if name == "lidc-cache" else {})}
               for name in runs}
    ratios = {f"{name}_over_step_{policy}": round(median(name) / median(f"step_{policy}"), 2)
              for name in pipelines for policy in ("float32", "mixed_bfloat16")}
    print(json.dumps({
        "config": {"images": args.images, "tile": [TILE, TILE], "graders": GRADERS,
                   "crop": [128, 128], "batch": BATCH, "timed_batches": args.batches,
                   "rounds": args.rounds, "data_written_seconds": round(written, 1)},
        "cpu": cpu(),
        "summary": summary,
        "ratios": ratios,
        "goal": "every pipeline's examples/s >= 3x the step's",
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
