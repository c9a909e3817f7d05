"""How long the command line and the package take to start: `tfprobunet --help` (built from the
catalog and `cli/signatures.json`, without TensorFlow), `import tfprobunet` (which loads nothing
until a name is used) and `import tfprobunet; tfprobunet.train` (the library and TensorFlow).
Each command runs `--runs` times, interleaved; prints the wall seconds (median, min, max) as
JSON with the CPU's flags.

    python bench/startup.py --runs 10 > docs/results/speed/startup.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import cpu  # noqa: E402

COMMANDS = {
    # The console script installed beside this Python.
    "tfprobunet --help": [os.path.join(os.path.dirname(sys.executable), "tfprobunet"), "--help"],
    "import tfprobunet": [sys.executable, "-c", "import tfprobunet"],
    "import tfprobunet; tfprobunet.train": [sys.executable, "-c",
                                            "import tfprobunet; tfprobunet.train"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    seconds = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # interleaved: a drift of the machine's speed hits each alike
        for name, command in COMMANDS.items():
            start = time.monotonic()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            seconds[name].append(time.monotonic() - start)
    print(json.dumps({
        "runs": args.runs,
        "wall_seconds": {name: {"median": round(statistics.median(v), 3),
                                "min": round(min(v), 3), "max": round(max(v), 3)}
                         for name, v in seconds.items()},
        "cpu": cpu(),
    }, indent=2))


if __name__ == "__main__":
    main()
