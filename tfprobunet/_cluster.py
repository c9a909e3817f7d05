"""The multi-worker cluster as `TF_CONFIG` describes it: read and checked (`read_tf_config`), and
joined within a time limit (`connect_watchdog`). Imports nothing heavy.

TensorFlow's `MultiWorkerMirroredStrategy()` waits for every task of the cluster to connect,
without a time limit, holding the GIL (no Python thread or signal handler of the process runs),
deaf to SIGTERM (its preemption watcher takes the signal) and printing nothing. The watchdog is
therefore a small process of its own: it probes the other tasks' addresses while the strategy
is made and, when the limit passes first, prints one line naming the tasks that never answered
and kills the stuck process.
"""

import contextlib
import json
import os
import subprocess
import sys

from tfprobunet import _console

CONNECT_TIMEOUT = 300.0  # seconds; `train(connect_timeout=...)`, `--connect-timeout`


def _refuse(problem):
    raise ValueError(f"TF_CONFIG {problem}. It must be a JSON object such as "
                     '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                     '"task": {"type": "worker", "index": 0}} (see TensorFlow\'s multi-worker '
                     "guide); every process gets the same cluster and its own task.")


def read_tf_config(text=None):
    """The `TF_CONFIG` environment variable (or `text`), checked: returns `(cluster, task)`,
    `cluster` a dict of task type -> list of "host:port", `task` a `(type, index)` pair; or
    `(None, None)` when it is unset or empty (one worker). Raises `ValueError` naming
    `TF_CONFIG` and what is wrong with it."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        return None, None
    try:
        config = json.loads(text)
    except ValueError as error:
        _refuse(f"is not valid JSON ({error}): received {text[:80]!r}")
    if not isinstance(config, dict):
        _refuse(f"must be a JSON object, received a {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        _refuse(f"has no \"cluster\" object of task types and addresses (received {cluster!r})")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            _refuse(f"cluster {kind!r} must be a non-empty list of \"host:port\" addresses, "
                    f"received {addresses!r}")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not isinstance(address, str) or not host or not port.isdigit():
                _refuse(f"cluster {kind!r} has the address {address!r}, not \"host:port\"")
    if not isinstance(task, dict) or "type" not in task:
        _refuse(f"has no \"task\" object with the type and index of this process (received "
                f"{task!r})")
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        _refuse(f"task type {kind!r} is not in the cluster, whose types are {sorted(cluster)}")
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        _refuse(f"task index {index!r} is out of range: the cluster has {len(cluster[kind])} "
                f"{kind!r} task(s), indices 0 to {len(cluster[kind]) - 1}")
    return cluster, (kind, index)


# The watchdog process: argv = timeout, parent pid, message prefix, JSON {name: "host:port"}.
# It ends quietly when its stdin closes (the strategy was made, or the parent died).
_WATCHDOG = """
import json, os, select, signal, socket, sys, time
timeout, parent, prefix, others = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(
    sys.argv[4])
deadline = time.monotonic() + timeout
while True:
    for name, address in list(others.items()):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            del others[name]
        except OSError:
            pass
    left = deadline - time.monotonic()
    if select.select([sys.stdin], [], [], max(0.0, min(0.5, left)))[0]:
        sys.exit(0)
    if left <= 0:
        break
why = ("no answer from " + ", ".join(others) if others else "every task's address answered, "
       "but not all of them joined: do they all run tfprobunet with the same TF_CONFIG cluster?")
sys.stderr.write(prefix.replace("WHY", why) + "\\n")
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def connect_watchdog(timeout, config_text=None):
    """Within the block (making the multi-worker strategy), a watchdog process probes the other
    tasks of the `TF_CONFIG` cluster; if the block has not ended after `timeout` seconds, it
    prints one line to stderr naming the tasks that never answered, and kills this process
    (SIGKILL: TensorFlow's wait holds the GIL, and takes SIGTERM). Does nothing without a
    cluster, or with `timeout` None."""
    cluster, task = read_tf_config(config_text)
    if cluster is None or timeout is None:
        yield
        return
    others = {f"{kind} {i} ({address})": address for kind, addresses in cluster.items()
              for i, address in enumerate(addresses) if (kind, i) != task}
    prefix = (f"tfprobunet: error: the multi-worker cluster did not form within {timeout:g} s "
              f"({task[0]} {task[1]} here): WHY. Start every task of TF_CONFIG's cluster, or "
              "give them longer (--connect-timeout, train(connect_timeout=...)).")
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(timeout), str(os.getpid()), prefix,
         json.dumps(others)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=_console.real_stderr())
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()
