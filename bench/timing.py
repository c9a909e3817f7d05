"""What the benchmarks share: the training-step configuration and the timing loop. Plain numpy,
so the PyTorch reference can use it too."""

import time


def add_step_arguments(parser):
    """The configuration bench/train_step.py and bench/pytorch_reference.py both measure."""
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs")
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--batch", type=int, default=8)


def run_times(fn, repeats, warmup=True):
    """Seconds taken by each of `repeats` calls of `fn`, after one untimed call if `warmup`."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
