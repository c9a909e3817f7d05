"""What multi-worker training costs on one machine: examples/s of `train(strategy=
"multi_worker")` with 2 worker processes on loopback against 1 process (`strategy="default"`),
the same global batch and model, interleaved over `--rounds`. On one 2-core box the workers
share the cores and add an all-reduce per step, so this shows the communication cost, not a
speed-up. Prints JSON: every run, medians, the ratio, the CPU.

    python bench/multi_worker.py --rounds 3
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

from train_step import cpu

HERE = os.path.dirname(os.path.abspath(__file__))
# One run: train, timing the epochs after the first (tracing), print examples/s.
RUN = """
import json, sys, time
import keras
from tfprobunet import training

class EpochTimes(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.ends = getattr(self, "ends", []) + [time.monotonic()]

workdir, strategy, steps, batch, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
times = EpochTimes()
training.train(workdir, dataset="graders", epochs=3, steps_per_epoch=steps, image_size=size,
               num_examples=256, strategy=strategy, verbose=0, callbacks=[times],
               **training.preset("cpu", batch_size=batch))
print(json.dumps({"examples_per_s": 2 * steps * batch / (times.ends[-1] - times.ends[0])}))
"""


def _free_ports(count):
    """`count` distinct ports that are free now (held open together while they are picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        return [s.bind(("127.0.0.1", 0)) or s.getsockname()[1] for s in sockets]


def run(workers, args):
    """examples/s of one training run with `workers` processes (1: no distribution)."""
    script = os.path.join(tempfile.mkdtemp(prefix="bench-mw-"), "run.py")
    with open(script, "w") as f:
        f.write(RUN)
    workdir = os.path.join(os.path.dirname(script), "run")
    common = [str(args.steps), str(args.batch), str(args.size)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if workers == 1:
        out = subprocess.run([sys.executable, script, workdir, "default", *common], env=env,
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"the run failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["examples_per_s"]
    ports = _free_ports(workers)
    processes = []
    for index in range(workers):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                  "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, script, workdir, "multi_worker", *common],
            env={**env, "TF_CONFIG": json.dumps(config)}, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise RuntimeError(f"a worker failed: {[p.returncode for p in processes]}")
    return json.loads(outputs[0].strip().splitlines()[-1])["examples_per_s"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (3 epochs)")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    runs = {"1_process": [], "2_workers": []}
    for _ in range(args.rounds):  # interleaved
        runs["1_process"].append(run(1, args))
        runs["2_workers"].append(run(2, args))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({
        "config": {"preset": "cpu", "dataset": "graders", "image_size": args.size,
                   "global_batch": args.batch, "steps_timed": 2 * args.steps},
        "examples_per_s": runs, "medians": medians,
        "2_workers_over_1_process": round(medians["2_workers"] / medians["1_process"], 3),
        "cpu": cpu()}, indent=2))


if __name__ == "__main__":
    main()
